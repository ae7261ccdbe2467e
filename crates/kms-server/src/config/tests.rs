//! Tests of `config`.

use super::*;

/// The required settings, without `--dev`.
const REQUIRED: [&str; 6] = [
    "--data-dir",
    "/d",
    "--pkcs11-module",
    "/m.so",
    "--token-label",
    "t",
];

/// Loads `base` then `extra` as flags; the error as text.
fn load(base: &[&str], extra: &[&str]) -> Result<Config, String> {
    let mut argv = base.to_vec();
    argv.extend_from_slice(extra);
    Config::load(args(&argv)).map_err(|e| e.to_string())
}

fn args(extra: &[&str]) -> Args {
    let mut argv = vec!["kmsd"];
    argv.extend_from_slice(extra);
    Args::parse_from(argv)
}

#[test]
fn flags_override_the_file() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("kmsd.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:6000\"\ndata_dir = \"/from/file\"\npkcs11_module = \"/m.so\"\ntoken_label = \"file\"\n",
    )?;
    let path = file.to_string_lossy().into_owned();
    let config = Config::load(args(&["--config", &path, "--token-label", "flag", "--dev"]))?;
    assert_eq!(config.token_label, "flag");
    assert_eq!(config.data_dir, PathBuf::from("/from/file"));
    assert_eq!(config.listen.port(), 6000);
    assert_eq!(config.pin, PinSource::Env);
    Ok(())
}

#[test]
fn unknown_fields_and_clear_pins_are_refused() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("kmsd.toml");
    std::fs::write(&file, "pin = \"1234\"\n")?;
    let path = file.to_string_lossy().into_owned();
    let error = Config::load(args(&["--config", &path])).err();
    assert!(
        matches!(error, Some(ConfigError::Parse { .. })),
        "{error:?}"
    );
    Ok(())
}

#[test]
fn dev_serves_only_loopback_addresses() {
    for (address, ok) in [
        ("127.0.0.1:1", true),
        ("[::1]:1", true),
        ("0.0.0.0:1", false),
    ] {
        let loaded = load(&REQUIRED, &["--dev", "--listen", address]);
        assert_eq!(loaded.is_ok(), ok, "{address}");
    }
}

#[test]
fn without_dev_tls_is_required_and_complete() {
    let load = |extra: &[&str]| load(&REQUIRED, extra);
    assert!(load(&[]).is_err_and(|e| e.contains("needs mutual TLS")));
    assert!(
        load(&["--tls-cert", "c", "--tls-key", "k"])
            .is_err_and(|e| e.contains("tls-client-ca is required"))
    );
    assert!(load(&["--dev", "--tls-cert", "c"]).is_err_and(|e| e.contains("--dev")));
    let tls = ["--tls-cert", "c", "--tls-key", "k", "--tls-client-ca", "ca"];
    let config = load(&tls);
    assert!(
        matches!(config.as_ref().map(|c| &c.transport), Ok(Transport::Tls(_))),
        "{:?}",
        config.err()
    );
    let mut public = tls.to_vec();
    public.extend(["--listen", "0.0.0.0:1"]);
    assert!(load(&public).is_ok(), "TLS may listen on any address");
}

#[test]
fn dev_callers_are_administrators() -> Result<(), ConfigError> {
    let config = Config::load(args(&[
        "--dev",
        "--data-dir",
        "/d",
        "--pkcs11-module",
        "/m.so",
        "--token-label",
        "t",
        "--administrator",
        "ops",
    ]))?;
    assert_eq!(config.effective_administrators(), ["dev", "ops"]);
    assert_eq!(config.audit_log, PathBuf::from("/d/audit.log"));
    Ok(())
}

#[test]
fn missing_settings_are_named() {
    let error = Config::load(args(&[
        "--dev",
        "--token-label",
        "t",
        "--pkcs11-module",
        "/m.so",
    ]))
    .err();
    assert_eq!(
        error.map(|e| e.to_string()),
        Some("data-dir is required (flag --data-dir, or `data_dir` in the config file)".into())
    );
}

/// Every TOML file under `dir`, recursively.
fn toml_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            toml_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "toml") {
            found.push(path);
        }
    }
}

#[test]
fn the_shipped_example_configurations_are_valid() {
    // At run time: a test binary shared with another checkout must read this one.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), PathBuf::from);
    let root = manifest_dir.join("../..");
    let mut files = Vec::new();
    toml_files(&root.join("deploy"), &mut files);
    toml_files(&root.join("hsm-config/examples"), &mut files);
    assert!(files.len() >= 5, "{files:?}");
    for file in files {
        let config = Config::load(args(&["--config", &file.to_string_lossy()]));
        let config = config.unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            matches!(config.transport, Transport::Tls(_)),
            "{}: production examples use mutual TLS",
            file.display()
        );
    }
    let policy = root.join("deploy/server-policy.json");
    read_server_policy(&policy).unwrap_or_else(|e| panic!("{}: {e}", policy.display()));
}

#[test]
fn limits_have_defaults_and_refuse_bad_values() {
    let load = |extra: &[&str]| {
        let mut argv = vec!["--dev"];
        argv.extend_from_slice(extra);
        load(&REQUIRED, &argv)
    };
    assert_eq!(load(&[]).map(|c| c.limits), Ok(Limits::default()));
    let defaults = load(&[]).map(|c| (c.limits, c.drain_timeout, c.log_format));
    assert_eq!(
        defaults,
        Ok((
            Limits {
                max_concurrent: 512,
                per_caller: Some(Rate {
                    per_second: 5000.0,
                    burst: 10_000.0
                }),
                request_timeout: Duration::from_secs(30),
                key_generation_per_caller: Some(Rate {
                    per_second: 5.0,
                    burst: 20.0
                }),
                key_generation_concurrent: 4,
            },
            Duration::from_secs(10),
            LogFormat::Text
        ))
    );
    let set = load(&[
        "--request-timeout",
        "250ms",
        "--drain-timeout",
        "1m 60s",
        "--rate-limit-per-principal",
        "0",
        "--key-generation-rate-per-principal",
        "0",
        "--log-format",
        "json",
    ])
    .map(|c| (c.limits, c.drain_timeout, c.log_format));
    assert_eq!(
        set,
        Ok((
            Limits {
                max_concurrent: 512,
                per_caller: None,
                request_timeout: Duration::from_millis(250),
                key_generation_per_caller: None,
                key_generation_concurrent: 4,
            },
            Duration::from_secs(120),
            LogFormat::Json
        ))
    );
    for bad in [
        ["--request-timeout", "30"].as_slice(),
        &["--request-timeout", "0s"],
        &["--drain-timeout", "2d"],
        &["--drain-timeout", "5 fortnights"],
        &["--drain-timeout", "1.5"],
        &["--max-concurrent-requests", "0"],
        &["--rate-limit-burst", "0"],
        &["--rate-limit-per-principal", "0", "--rate-limit-burst", "5"],
    ] {
        assert!(load(bad).is_err(), "{bad:?} is accepted");
    }
}

#[test]
fn pin_file_loses_its_trailing_newline() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("pin");
    std::fs::write(&file, "4321\n")?;
    let config = Config::load(args(&[
        "--dev",
        "--data-dir",
        "/d",
        "--pkcs11-module",
        "/m.so",
        "--token-label",
        "t",
        "--pin-file",
        &file.to_string_lossy(),
    ]))?;
    assert_eq!(config.read_pin()?.as_str(), "4321");
    Ok(())
}
