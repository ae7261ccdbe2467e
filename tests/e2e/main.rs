//! End-to-end tests: every test starts real kmsd processes on a fresh SoftHSM2 token and
//! talks to them over gRPC (the Rust client), through kmsctl, and with pkcs11-tool.
#![forbid(unsafe_code)]
// A test reads best as one script, top to bottom.
#![allow(clippy::too_many_lines)]
// Helpers of a test binary are test code: a failed assumption is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod aliases;
mod api;
mod auth;
mod cli;
mod cli_keys;
mod custody;
mod durability;
mod interop;
mod rotation;
mod tags;

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
