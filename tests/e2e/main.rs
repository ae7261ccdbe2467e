//! End-to-end tests: every test starts real kmsd processes on a fresh SoftHSM2 token and
//! talks to them over gRPC (the Rust client), through kmsctl, and with pkcs11-tool.
#![forbid(unsafe_code)]
// A test reads best as one script, top to bottom.
#![allow(clippy::too_many_lines)]
// Helpers of a test binary are test code: a failed assumption is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod aliases;
mod api;
mod asymmetric;
mod auth;
mod bench;
mod cli;
mod cli_import;
mod cli_keys;
mod custody;
mod domains;
mod durability;
mod hardening;
mod import;
mod interop;
mod metrics;
mod opencryptoki;
mod production;
mod rotation;
mod shutdown;
mod tags;
mod tls;

use kms_client::ClientError;
use tonic::Code;

/// Asserts that `result` failed with `code` and `reason`; returns the message.
fn expect_error<T>(result: Result<T, ClientError>, code: Code, reason: &str) -> String {
    match result {
        Ok(_) => panic!("expected {reason}, got success"),
        Err(e) => {
            assert_eq!(e.code(), code, "{e}");
            assert_eq!(e.reason(), Some(reason), "{e}");
            match e {
                ClientError::Status { message, .. } => message,
                ClientError::Connect { .. } => unreachable!(),
            }
        }
    }
}

fn ctx(pairs: &[(&str, &str)]) -> kms_client::Context {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Runs tests/interop/public_key_ops.py (Python's `cryptography`) with `args`; returns its
/// trimmed stdout, or `None` when it exits 1 (an invalid signature). Any other failure fails
/// the test.
fn python_ops(args: &[&str]) -> Option<String> {
    // Debian's python3-cryptography lives with the system interpreter.
    let python = if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let script = kms_e2e::tests_dir().join("interop/public_key_ops.py");
    let out = std::process::Command::new(python)
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {python}: {e}"));
    match out.status.code() {
        Some(0) => Some(String::from_utf8_lossy(&out.stdout).trim().to_owned()),
        Some(1) if out.stderr.is_empty() => None,
        _ => panic!(
            "{} {args:?} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}
