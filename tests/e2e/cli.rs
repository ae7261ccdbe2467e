//! kmsctl, as an operator or a script uses it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kms_e2e::TestEnv;

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "kmsctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread")]
async fn kmsctl_round_trips_a_binary_file() {
    let env = TestEnv::new();
    let kmsd = env.start();
    let created = json(&kmsd.kmsctl(
        &["--output", "json", "create-key", "--description", "cli"],
        b"",
    ));
    let key = created["key_id"].as_str().unwrap().to_owned();
    assert_eq!(created["key_state"], "Enabled");

    // Every byte value, NULs and newlines included.
    let plaintext: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let file = env.path().join("secret.bin");
    let blob = env.path().join("secret.blob");
    let back = env.path().join("secret.out");
    std::fs::write(&file, &plaintext).unwrap();
    let p = |p: &std::path::Path| p.to_string_lossy().into_owned();

    let out = kmsd.kmsctl(
        &[
            "encrypt",
            "--key-id",
            &key,
            "--plaintext-file",
            &p(&file),
            "--context",
            "app=billing",
            "--out",
            &p(&blob),
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kmsd.kmsctl(
        &[
            "decrypt",
            "--ciphertext-file",
            &p(&blob),
            "--context",
            "app=billing",
            "--out",
            &p(&back),
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&back).unwrap(), plaintext);

    // stdin to base64 and back to raw stdout.
    let out = kmsd.kmsctl(&["encrypt", "--key-id", &key], &plaintext[..300]);
    assert!(out.status.success());
    let b64 = String::from_utf8(out.stdout).unwrap();
    assert!(STANDARD.decode(b64.trim()).is_ok());
    let out = kmsd.kmsctl(&["decrypt", "--ciphertext", b64.trim()], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, plaintext[..300]);

    // JSON output carries base64 and the key id.
    let decrypted = json(&kmsd.kmsctl(
        &["--output", "json", "decrypt", "--ciphertext", b64.trim()],
        b"",
    ));
    assert_eq!(decrypted["key_id"], key.as_str());
    assert_eq!(decrypted["encryption_algorithm"], "SYMMETRIC_DEFAULT");
    assert_eq!(
        STANDARD
            .decode(decrypted["plaintext"].as_str().unwrap())
            .unwrap(),
        plaintext[..300]
    );

    // Errors: the reason on stderr, exit status 1, and no plaintext echoed.
    let out = kmsd.kmsctl(
        &[
            "decrypt",
            "--ciphertext-file",
            &p(&blob),
            "--context",
            "app=other",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("InvalidCiphertextException"), "{stderr}");
    assert!(out.stdout.is_empty());
    let out = kmsd.kmsctl(&["encrypt", "--key-id", &key], &[7u8; 4097]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ValidationException"));
}

#[tokio::test(flavor = "multi_thread")]
async fn kmsctl_runs_every_key_operation() {
    let env = TestEnv::new();
    let kmsd = env.start();
    let a = json(&kmsd.kmsctl(&["--output", "json", "create-key"], b""))["key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = json(&kmsd.kmsctl(&["--output", "json", "create-key"], b""))["key_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let listed = json(&kmsd.kmsctl(&["--output", "json", "list-keys"], b""));
    let ids: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["key_id"].as_str())
        .collect();
    assert!(ids.contains(&a.as_str()) && ids.contains(&b.as_str()));

    let described = kmsd.kmsctl(&["describe-key", "--key-id", &a], b"");
    let text = String::from_utf8_lossy(&described.stdout);
    assert!(
        text.contains(&a) && text.contains("Enabled") && text.contains("SYMMETRIC_DEFAULT"),
        "{text}"
    );

    let updated = json(&kmsd.kmsctl(
        &[
            "--output",
            "json",
            "update-key-description",
            "--key-id",
            &a,
            "--description",
            "payroll",
        ],
        b"",
    ));
    assert_eq!(updated["description"], "payroll");
    let disabled = json(&kmsd.kmsctl(&["--output", "json", "disable-key", "--key-id", &a], b""));
    assert_eq!(disabled["key_state"], "Disabled");
    let out = kmsd.kmsctl(&["encrypt", "--key-id", &a], b"x");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DisabledException"));
    let enabled = json(&kmsd.kmsctl(&["--output", "json", "enable-key", "--key-id", &a], b""));
    assert_eq!(enabled["key_state"], "Enabled");

    let dk = json(&kmsd.kmsctl(
        &[
            "--output",
            "json",
            "generate-data-key",
            "--key-id",
            &a,
            "--key-spec",
            "AES_256",
            "--context",
            "f=1",
        ],
        b"",
    ));
    let plaintext = STANDARD.decode(dk["plaintext"].as_str().unwrap()).unwrap();
    assert_eq!(plaintext.len(), 32);
    let blob = dk["ciphertext_blob"].as_str().unwrap().to_owned();

    let moved = json(&kmsd.kmsctl(
        &[
            "--output",
            "json",
            "re-encrypt",
            "--ciphertext",
            &blob,
            "--source-context",
            "f=1",
            "--destination-key-id",
            &b,
            "--destination-context",
            "f=2",
        ],
        b"",
    ));
    assert_eq!(moved["key_id"], b.as_str());
    assert_eq!(moved["source_key_id"], a.as_str());
    let out = kmsd.kmsctl(
        &[
            "decrypt",
            "--ciphertext",
            moved["ciphertext_blob"].as_str().unwrap(),
            "--context",
            "f=2",
        ],
        b"",
    );
    assert_eq!(out.stdout, plaintext);

    let without = json(&kmsd.kmsctl(
        &[
            "--output",
            "json",
            "generate-data-key-without-plaintext",
            "--key-id",
            &a,
            "--number-of-bytes",
            "64",
        ],
        b"",
    ));
    assert!(without.get("plaintext").is_none());
    let out = kmsd.kmsctl(
        &[
            "decrypt",
            "--ciphertext",
            without["ciphertext_blob"].as_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(out.stdout.len(), 64);

    let random = kmsd.kmsctl(&["generate-random", "--number-of-bytes", "100"], b"");
    assert!(random.status.success());
    assert_eq!(random.stdout.len(), 100);

    let missing = kmsd.kmsctl(
        &[
            "describe-key",
            "--key-id",
            "00000000-0000-4000-8000-000000000000",
        ],
        b"",
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NotFoundException"));
}

/// The subcommands `kmsctl --help` lists (without `help`).
fn listed_subcommands() -> Vec<String> {
    let out = std::process::Command::new(kms_e2e::bin("kmsctl"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let commands = help
        .split("Commands:\n")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .unwrap_or_else(|| panic!("no command list in:\n{help}"));
    // A name is indented by two spaces; a wrapped description, by more.
    commands
        .lines()
        .filter(|line| line.starts_with("  ") && !line.starts_with("   "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn kmsctl_prints_a_bash_completion_script_naming_every_subcommand() {
    let out = std::process::Command::new(kms_e2e::bin("kmsctl"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stderr.is_empty());
    let script = String::from_utf8(out.stdout).unwrap();
    let subcommands = listed_subcommands();
    assert!(subcommands.len() > 30, "{subcommands:?}");
    for name in [
        "completions",
        "create-key",
        "schedule-key-deletion",
        "audit",
    ] {
        assert!(subcommands.iter().any(|s| s == name), "{subcommands:?}");
    }
    // What `kmsctl <TAB>` offers: the global options and exactly the subcommands.
    let top_level = script
        .lines()
        .find(|l| l.contains("opts=\"") && l.contains("--endpoint"))
        .unwrap_or_else(|| panic!("no top-level completions in:\n{script}"));
    let offered: Vec<&str> = top_level
        .split('"')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .filter(|w| !w.starts_with('-') && *w != "help")
        .collect();
    assert_eq!(offered, subcommands);

    // bash reads it and registers the completion of kmsctl.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kmsctl.bash");
    std::fs::write(&file, &script).unwrap();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(r#"source "$1" && complete -p kmsctl"#)
        .arg("bash")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let registered = String::from_utf8_lossy(&out.stdout);
    assert!(registered.contains("-F _kmsctl"), "{registered}");
    assert!(registered.trim_end().ends_with(" kmsctl"), "{registered}");
}

#[test]
fn kmsctl_completions_refuses_an_unknown_shell_as_a_usage_error() {
    let out = std::process::Command::new(kms_e2e::bin("kmsctl"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    // clap's usage errors exit with 2 (kmsctl's own errors with 1).
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid value 'tcsh'"), "{stderr}");
    assert!(
        stderr.contains("possible values: bash, elvish, fish, powershell, zsh"),
        "{stderr}"
    );
}
