//! The forgeries an outside review found, tried as an attacker would, against a real kmsd.

use kms_client::v1 as pb;
use kms_core::hsm::{KeyVersionRef, MessageKey};
use kms_core::symmetric;
use kms_e2e::{Kmsd, TestEnv};
use sha2::Digest as _;
use tonic::Code;
use zeroize::Zeroizing;

use crate::{ctx, expect_error};

/// Finding 1: with GenerateMac on an HMAC_256 key, `HMAC(key, label || nonce)` is exactly a
/// message key under the published derivation. A blob sealed with it and naming the HMAC key
/// must not decrypt, nor be laundered by ReEncrypt into a valid ciphertext of another key.
#[tokio::test(flavor = "multi_thread")]
async fn a_blob_sealed_with_an_hmac_keys_mac_is_refused() {
    let env = TestEnv::new();
    let kmsd = env.start();
    let mut c = kmsd.client().await;
    let hmac = c
        .create_key_with(pb::CreateKeyRequest {
            key_spec: pb::KeySpec::Hmac256.into(),
            key_usage: pb::KeyUsage::GenerateVerifyMac.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let target = c.create_key("laundering target").await.unwrap().key_id;

    let nonce = [0x5a; 32];
    let mac = c
        .generate_mac(
            &hmac.key_id,
            &symmetric::derivation_input(&nonce),
            pb::MacAlgorithm::HmacSha256,
        )
        .await
        .unwrap()
        .mac;
    let k_msg = MessageKey::new(Zeroizing::new(mac.as_slice().try_into().unwrap()));
    let version = KeyVersionRef {
        key_id: hmac.key_id.parse().unwrap(),
        version: 1,
    };
    let context = ctx(&[]);
    let empty = kms_core::EncryptionContext::empty();
    let forged = symmetric::seal(&k_msg, version, nonce, &empty, b"forged plaintext").unwrap();

    for named in [None, Some(hmac.key_id.as_str())] {
        let message = expect_error(
            c.decrypt(&forged, &context, named).await,
            Code::InvalidArgument,
            "InvalidCiphertextException",
        );
        assert!(!message.contains("forged"), "{message}");
        expect_error(
            c.re_encrypt(pb::ReEncryptRequest {
                ciphertext_blob: forged.clone(),
                source_key_id: named.unwrap_or_default().to_owned(),
                destination_key_id: target.clone(),
                ..Default::default()
            })
            .await,
            Code::InvalidArgument,
            "InvalidCiphertextException",
        );
    }
    // The key is named in the HSM by its kind too: its MAC stays what it was.
    c.generate_mac(
        &hmac.key_id,
        b"still a MAC key",
        pb::MacAlgorithm::HmacSha256,
    )
    .await
    .unwrap();
}

/// Finding 6: RotateKeyOnDemand makes an HSM object each time; a key takes ten, as in AWS.
#[tokio::test(flavor = "multi_thread")]
async fn on_demand_rotations_are_capped_per_key() {
    let env = TestEnv::new();
    let kmsd = env.start();
    let mut c = kmsd.client().await;
    let key = c.create_key("rotated").await.unwrap().key_id;
    for expected in 2..=11 {
        assert_eq!(c.rotate_key_on_demand(&key).await.unwrap(), expected);
    }
    let message = expect_error(
        c.rotate_key_on_demand(&key).await,
        Code::ResourceExhausted,
        "LimitExceededException",
    );
    assert!(message.contains("10 times"), "{message}");
    // The key still works, under its last version.
    let blob = c
        .encrypt(&key, b"still usable", &ctx(&[]))
        .await
        .unwrap()
        .ciphertext_blob;
    c.decrypt(&blob, &ctx(&[]), None).await.unwrap();
}

fn kmsctl_offline(args: &[&str]) -> std::process::Output {
    std::process::Command::new(kms_e2e::bin("kmsctl"))
        .args(args)
        .output()
        .unwrap()
}

/// The audit log's restart rule: lines written after the last checkpoint while kmsd was
/// down (here: a forged record) are quarantined, never signed; a log cut back behind the
/// pinned checkpoint is refused; `verify` pins the log id, a minimum seq and the key.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_never_signs_a_forged_tail_and_refuses_a_rolled_back_log() {
    let env = TestEnv::new();
    let mut kmsd = env.start();
    let mut c = kmsd.client().await;
    let key = c.create_key("audited").await.unwrap().key_id;
    c.encrypt(&key, b"one", &ctx(&[])).await.unwrap();
    drop(c);
    kmsd.kill9();

    let (log, public_key) = Kmsd::audit_files(&env.data_dir());
    let sealed = std::fs::read(&log).unwrap();
    let first_batch_end = sealed
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| i + 1)
        .and_then(|first| {
            // Past the first batch's checkpoint (the second line).
            sealed[first..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| first + i + 1)
        })
        .unwrap();
    let last_line = std::str::from_utf8(&sealed)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned();
    let last: serde_json::Value = serde_json::from_str(&last_line).unwrap();
    let seq = last["seq"].as_u64().unwrap();
    let forged = format!(
        r#"{{"seq":{},"prev":"{}","type":"event","time":"2026-11-29T00:00:00.000Z","request_id":"forged","principal":"spiffe://kms.test/someone-else","peer":null,"operation":"Decrypt","keys":[],"encryption_context":null,"destination_encryption_context":null,"outcome":"success","error":null,"policy_statement":null}}"#,
        seq + 1,
        hex::encode(sha2::Sha256::digest(last_line.as_bytes()))
    );
    let mut tampered = sealed.clone();
    tampered.extend_from_slice(forged.as_bytes());
    tampered.push(b'\n');
    std::fs::write(&log, &tampered).unwrap();

    let mut kmsd = env.start();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("someone-else"), "the forged line was kept");
    assert!(
        kmsd.log().contains("quarantine"),
        "the quarantine is not in kmsd's log:\n{}",
        kmsd.log()
    );
    let quarantined: Vec<_> = std::fs::read_dir(env.data_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("audit.log.quarantine-")
        })
        .collect();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(
        std::fs::read_to_string(quarantined[0].path()).unwrap(),
        forged + "\n"
    );
    let mut c = kmsd.client().await;
    c.encrypt(&key, b"two", &ctx(&[])).await.unwrap();
    drop(c);
    assert!(kmsd.terminate());

    let log_arg = log.to_string_lossy().into_owned();
    let key_arg = public_key.to_string_lossy().into_owned();
    let verify = |extra: &[&str]| {
        let mut args = vec![
            "--output",
            "json",
            "audit",
            "verify",
            "--log",
            &log_arg,
            "--public-key",
            &key_arg,
        ];
        args.extend_from_slice(extra);
        kmsctl_offline(&args)
    };
    let out = verify(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let log_id = report["log_id"].as_str().unwrap().to_owned();
    let last_seq = report["last_seq"].as_u64().unwrap();
    let fingerprint = report["public_key_sha256"].as_str().unwrap();
    let pem = std::fs::read_to_string(&public_key).unwrap();
    let der = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        pem.lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>(),
    )
    .unwrap();
    assert_eq!(fingerprint, hex::encode(sha2::Sha256::digest(&der)));
    assert!(
        verify(&[
            "--expect-log-id",
            &log_id,
            "--min-seq",
            &last_seq.to_string()
        ])
        .status
        .success()
    );
    assert!(
        !verify(&["--expect-log-id", &"0".repeat(32)])
            .status
            .success()
    );
    assert!(
        !verify(&["--min-seq", &(last_seq + 1).to_string()])
            .status
            .success()
    );

    // Cut back to the first batch: kmsd refuses the log, naming both sequence numbers.
    let whole = std::fs::read(&log).unwrap();
    std::fs::write(&log, &whole[..first_batch_end]).unwrap();
    let (_, refusal) = env.expect_refusal(&env.kmsd_args(), &[]);
    assert!(
        refusal.contains("ends at sequence number 2") && refusal.contains(&format!("{last_seq}")),
        "{refusal}"
    );
    // And the whole log, put back, opens.
    std::fs::write(&log, &whole).unwrap();
    let mut kmsd = env.start();
    assert!(kmsd.terminate());
}

/// Unmounts the small file system of the full-disk test.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A full disk under the audit log makes kmsd refuse calls (it answers nothing it cannot
/// audit), and kmsd takes calls again by itself once there is room: no restart, and the log
/// still verifies. Runs on a 256 KiB tmpfs, so it needs root, as the test command has.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_calls_and_kmsd_recovers_when_space_returns() {
    let env = TestEnv::new();
    let dir = env.path().join("audit-fs");
    std::fs::create_dir_all(&dir).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a tmpfs (the tests run as root)");
    let _mount = Mount(dir.clone());
    let log = dir.join("audit.log");
    let mut args = env.kmsd_args();
    args.extend(["--audit-log".to_owned(), log.to_string_lossy().into_owned()]);
    let mut kmsd = env
        .start_with(&args, &[])
        .unwrap_or_else(|e| panic!("kmsd did not start:\n{e}"));
    let mut c = kmsd.client().await;
    let key = c
        .create_key("audited on a small disk")
        .await
        .unwrap()
        .key_id;
    c.encrypt(&key, b"before", &ctx(&[])).await.unwrap();

    // Fill the disk.
    let filler = dir.join("filler");
    {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&filler).unwrap();
        while file.write_all(&[0u8; 4096]).is_ok() {}
        let _ = file.sync_all();
    }
    // The log's last page still has room for a few records; then no more.
    let mut refused = None;
    for _ in 0..64 {
        if let Err(e) = c.encrypt(&key, b"no room", &ctx(&[])).await {
            refused = Some(e);
            break;
        }
    }
    let message = expect_error(
        Err::<(), _>(refused.expect("a call is refused once the disk is full")),
        Code::Internal,
        "KMSInternalException",
    );
    assert!(!message.contains("no room"), "{message}");
    // Every call is refused while the disk stays full, and none is half-written.
    expect_error(
        c.encrypt(&key, b"still no room", &ctx(&[])).await,
        Code::Internal,
        "KMSInternalException",
    );
    // Each refused call is logged once, with the cause its caller never sees.
    let log_text = kmsd.log();
    let failures: Vec<&str> = log_text
        .lines()
        .filter(|l| l.contains("request failed"))
        .collect();
    assert_eq!(failures.len(), 2, "{log_text}");
    assert!(
        failures.iter().all(|l| l.contains("KMSInternalException")),
        "{log_text}"
    );

    std::fs::remove_file(&filler).unwrap();
    c.encrypt(&key, b"after", &ctx(&[])).await.unwrap();
    drop(c);
    assert!(kmsd.terminate());
    let out = kmsctl_offline(&[
        "audit",
        "verify",
        "--log",
        &log.to_string_lossy(),
        "--public-key",
        &log.with_extension("pub.pem").to_string_lossy(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
