//! Crashes, restarts and refusals to start.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kms_e2e::{TOKEN_LABEL, TestEnv, bin, module};

use crate::ctx;

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_under_load_loses_no_acknowledged_blob_or_key() {
    kill_9_under_load(TestEnv::new()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_under_load_loses_no_acknowledged_blob_or_key_with_token_objects() {
    kill_9_under_load(TestEnv::new().with_token_storage()).await;
}

/// Encrypts, creates and rotates keys from several clients, kills kmsd with SIGKILL, and checks
/// after a restart that everything acknowledged is there and the token holds nothing half-made:
/// one object per key version with token objects, none (the domain keys only) when wrapped.
async fn kill_9_under_load(env: TestEnv) {
    let mut kmsd = env.start();
    let key = kmsd
        .client()
        .await
        .create_key("durable")
        .await
        .unwrap()
        .key_id;

    let acknowledged = Arc::new(Mutex::new(Vec::<(Vec<u8>, Vec<u8>)>::new()));
    let created = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for worker in 0..8u32 {
        let mut c = kmsd.client().await;
        let key = key.clone();
        let acknowledged = Arc::clone(&acknowledged);
        tasks.push(tokio::spawn(async move {
            for i in 0u32.. {
                let plaintext = format!("worker {worker} blob {i}").into_bytes();
                match c.encrypt(&key, &plaintext, &ctx(&[("w", "1")])).await {
                    Ok(r) => acknowledged
                        .lock()
                        .unwrap()
                        .push((plaintext, r.ciphertext_blob)),
                    Err(_) => return,
                }
            }
        }));
    }
    let rotating = kmsd
        .client()
        .await
        .create_key("rotating")
        .await
        .unwrap()
        .key_id;
    let acknowledged_version = Arc::new(std::sync::atomic::AtomicU32::new(1));
    {
        let mut c = kmsd.client().await;
        let rotating = rotating.clone();
        let acknowledged_version = Arc::clone(&acknowledged_version);
        tasks.push(tokio::spawn(async move {
            while let Ok(version) = c.rotate_key_on_demand(&rotating).await {
                acknowledged_version.store(version, std::sync::atomic::Ordering::SeqCst);
            }
        }));
    }
    for _ in 0..2 {
        let mut c = kmsd.client().await;
        let created = Arc::clone(&created);
        tasks.push(tokio::spawn(async move {
            while let Ok(m) = c.create_key("made under load").await {
                created.lock().unwrap().push(m.key_id);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    kmsd.kill9();
    for task in tasks {
        let _ = task.await;
    }
    let blobs = acknowledged.lock().unwrap().clone();
    let created = created.lock().unwrap().clone();
    assert!(blobs.len() > 50, "too little load: {} blobs", blobs.len());
    assert!(!created.is_empty(), "no key was created under load");

    let kmsd = env.start();
    let mut c = kmsd.client().await;
    for (plaintext, blob) in &blobs {
        let back = c.decrypt(blob, &ctx(&[("w", "1")]), None).await.unwrap();
        assert_eq!(*back.plaintext, *plaintext);
    }
    let listed = c.list_all_keys().await.unwrap();
    for key in &created {
        assert!(listed.contains(key), "acknowledged key {key} is gone");
    }
    // Every key is usable, and the token holds exactly one object per key: no orphan.
    for key in &listed {
        c.encrypt(key, b"still usable", &ctx(&[])).await.unwrap();
    }
    // SoftHSM2's file backend writes a new object's attributes after the object itself, so a
    // kill -9 inside C_GenerateKey can leave an object with no label and no CKA_ID, which
    // nothing can attribute to a key. Every object that carries an id is accounted for.
    let (mut labels, torn): (Vec<String>, Vec<String>) = env
        .hsm_key_labels()
        .into_iter()
        .partition(|l| !l.is_empty());
    labels.sort();
    let mut expected = Vec::new();
    for key in listed.iter().filter(|_| env.token_storage()) {
        let versions = c.describe_key(key).await.unwrap().current_key_version;
        expected.extend((1..=versions).map(|v| format!("kms/{key}/v{v}")));
    }
    expected.sort();
    assert_eq!(
        labels, expected,
        "one HSM object per version of every key with token objects, none wrapped, no other"
    );
    assert!(
        torn.len() <= 3,
        "a kill tears at most the objects being generated (3 loops)"
    );
    let rotated = c.describe_key(&rotating).await.unwrap().current_key_version;
    let acknowledged = acknowledged_version.load(std::sync::atomic::Ordering::SeqCst);
    assert!(acknowledged > 1, "the key was rotated under load");
    assert!(
        rotated >= acknowledged,
        "acknowledged rotation to v{acknowledged} lost (now v{rotated})"
    );
    assert_eq!(
        env.hsm_key_ids().len(),
        expected.len(),
        "every object with a CKA_ID belongs to a listed key"
    );
    println!(
        "kill -9 after {} blobs, {} keys and {} rotations: all decrypt after restart ({} torn SoftHSM2 object)",
        blobs.len(),
        created.len(),
        rotated - 1,
        torn.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_cleanly_and_keys_survive_a_restart() {
    let env = TestEnv::new();
    let mut kmsd = env.start();
    let mut c = kmsd.client().await;
    let key = c.create_key("restart").await.unwrap().key_id;
    let blob = c
        .encrypt(&key, b"kept", &ctx(&[]))
        .await
        .unwrap()
        .ciphertext_blob;
    drop(c);
    assert!(
        kmsd.terminate(),
        "kmsd did not exit cleanly:\n{}",
        kmsd.log()
    );
    assert!(kmsd.log().contains("kmsd stopped"));

    let kmsd = env.start();
    let mut c = kmsd.client().await;
    assert_eq!(
        *c.decrypt(&blob, &ctx(&[]), None).await.unwrap().plaintext,
        b"kept"
    );
    assert_eq!(c.describe_key(&key).await.unwrap().description, "restart");
}

fn replace(args: &[String], flag: &str, value: &str) -> Vec<String> {
    let mut out = args.to_vec();
    let i = out.iter().position(|a| a == flag).unwrap();
    value.clone_into(&mut out[i + 1]);
    out
}

#[test]
fn kmsd_refuses_to_start_with_a_clear_message() {
    let env = TestEnv::new();
    let args = env.kmsd_args();

    let (_, log) = env.expect_refusal(
        &replace(&args, "--pkcs11-module", "/nope/libpkcs11.so"),
        &[],
    );
    assert!(
        log.contains("cannot load the PKCS#11 module /nope/libpkcs11.so"),
        "{log}"
    );

    let (_, log) = env.expect_refusal(&replace(&args, "--token-label", "wrong-token"), &[]);
    assert!(log.contains("no token labelled \"wrong-token\""), "{log}");
    assert!(log.contains(TOKEN_LABEL), "names the tokens present: {log}");

    let bad_pin = env.path().join("bad-pin");
    std::fs::write(&bad_pin, "000000\n").unwrap();
    let (_, log) = env.expect_refusal(
        &replace(&args, "--pin-file", &bad_pin.to_string_lossy()),
        &[],
    );
    assert!(log.contains("PIN is wrong"), "{log}");

    let (_, log) = env.expect_refusal(&replace(&args, "--pin-file", "/nope/pin"), &[]);
    assert!(log.contains("cannot read PIN file /nope/pin"), "{log}");

    let mut no_pin = args.clone();
    let i = no_pin.iter().position(|a| a == "--pin-file").unwrap();
    no_pin.drain(i..i + 2);
    let (_, log) = env.expect_refusal(&no_pin, &[]);
    assert!(log.contains("KMS_HSM_PIN"), "{log}");
    // ...and the environment variable works.
    let pin = env.pin();
    let kmsd = env
        .start_with(&no_pin, &[("KMS_HSM_PIN", &pin)])
        .unwrap_or_else(|l| panic!("{l}"));
    drop(kmsd);

    let file = env.path().join("a-file");
    std::fs::write(&file, "not a dir").unwrap();
    let (_, log) = env.expect_refusal(&replace(&args, "--data-dir", &file.to_string_lossy()), &[]);
    assert!(log.contains("data dir") && log.contains("a-file"), "{log}");

    // A second kmsd on the same data dir.
    let first = env.start();
    let (_, log) = env.expect_refusal(&args, &[]);
    assert!(log.contains("is another kmsd using it?"), "{log}");
    drop(first);

    let (code, log) = env.expect_refusal(&["--data-dir".into(), "/tmp/x".into()], &[]);
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("--token-label"), "{log}");
    let _ = module();
}

#[test]
fn check_config_says_whether_kmsd_could_start_and_touches_nothing() {
    let env = TestEnv::new();
    let args = env.kmsd_args();
    let check = |args: &[String]| {
        Command::new(bin("kmsd"))
            .args(args)
            .arg("--check-config")
            .env("SOFTHSM2_CONF", env.softhsm_conf())
            .env_remove("KMS_HSM_PIN")
            .output()
            .unwrap()
    };
    let ok = check(&args);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains("the configuration is valid"), "{stdout}");
    assert!(stdout.contains(TOKEN_LABEL), "{stdout}");
    assert!(
        stdout.contains("key storage     wrapped under the domain key"),
        "{stdout}"
    );
    assert!(
        !stdout.contains(&env.pin()),
        "never prints the PIN: {stdout}"
    );
    assert!(
        !env.data_dir().exists(),
        "--check-config must not create the data dir"
    );

    for (bad, expected) in [
        (
            replace(&args, "--token-label", "wrong-token"),
            "no token labelled",
        ),
        (
            replace(&args, "--pin-file", "/nope/pin"),
            "cannot read PIN file",
        ),
        (
            replace(&args, "--pkcs11-module", "/nope/libpkcs11.so"),
            "cannot load the PKCS#11 module",
        ),
    ] {
        let out = check(&bad);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
}
