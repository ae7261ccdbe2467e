//! Trusted domain keys and their rotation, as an operator runs them: the ceremony with
//! `kmsctl hsm make-domain-key`, `kmsctl hsm rotate-domain`, and what a copy of the store made
//! before the rotation is worth afterwards.

use std::time::{Duration, Instant};

use kms_client::{KmsClient, v1 as pb};
use kms_e2e::{Kmsd, TestEnv};
use tonic::Code;

use crate::{ctx, expect_error};

/// Starts kmsd with trusted domain keys, running the ceremony for domain key 1 first when
/// kmsd refuses for want of it (its refusal names the instance id); returns it with the id.
fn start_trusted(env: &TestEnv) -> (Kmsd, String) {
    let (_, log) = env.expect_refusal(&env.kmsd_args(), &[]);
    let instance = log
        .split("--instance ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the refusal names no instance:\n{log}"))
        .to_owned();
    assert!(log.contains("kmsctl hsm make-domain-key"), "{log}");
    ceremony(env, &instance, 1);
    (env.start(), instance)
}

fn ceremony(env: &TestEnv, instance: &str, version: u32) {
    let out = env.make_domain_key(instance, version);
    assert!(
        out.status.success(),
        "ceremony failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `kmsctl hsm status` until rewrapping finished; returns the last status.
async fn wait_rewrapped(c: &mut KmsClient) -> pb::DomainKeyStatus {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = c.domain_key_status().await.unwrap();
        if status.rewrap_finished && !status.rewrap_running {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "rewrapping did not finish: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn spec_request(spec: pb::KeySpec, usage: pb::KeyUsage) -> pb::CreateKeyRequest {
    pb::CreateKeyRequest {
        description: "domain".into(),
        key_spec: spec.into(),
        key_usage: usage.into(),
        ..Default::default()
    }
}

/// A rotation of the domain key rewraps every kind of key; every blob, MAC and signature
/// key still works; the old domain key is gone from the token; and a copy of the store made
/// before the rotation unwraps nothing, even with the PIN and kmsd at hand.
#[tokio::test(flavor = "multi_thread")]
async fn a_domain_key_rotation_rewraps_every_key_and_old_copies_of_the_store_open_nothing() {
    let env = TestEnv::new().with_trusted_domains();
    let (mut kmsd, instance) = start_trusted(&env);
    let mut c = kmsd.client().await;
    let symmetric = c.create_key("s").await.unwrap().key_id;
    c.rotate_key_on_demand(&symmetric).await.unwrap();
    let blob = c
        .encrypt(&symmetric, b"before", &ctx(&[]))
        .await
        .unwrap()
        .ciphertext_blob;
    let hmac = c
        .create_key_with(spec_request(
            pb::KeySpec::Hmac256,
            pb::KeyUsage::GenerateVerifyMac,
        ))
        .await
        .unwrap()
        .key_id;
    let mac = c
        .generate_mac(&hmac, b"m", pb::MacAlgorithm::HmacSha256)
        .await
        .unwrap()
        .mac;
    let ecc = c
        .create_key_with(spec_request(
            pb::KeySpec::EccNistP256,
            pb::KeyUsage::SignVerify,
        ))
        .await
        .unwrap()
        .key_id;
    let rsa = c
        .create_key_with(spec_request(
            pb::KeySpec::Rsa2048,
            pb::KeyUsage::EncryptDecrypt,
        ))
        .await
        .unwrap()
        .key_id;
    let rsa_blob = c
        .encrypt_rsa(&rsa, b"rsa", pb::EncryptionAlgorithm::RsaesOaepSha256)
        .await
        .unwrap()
        .ciphertext_blob;
    let status = c.domain_key_status().await.unwrap();
    assert_eq!((status.current_version, status.rewrappable), (1, true));
    assert_eq!(status.instance_id, instance);

    // A backup of the store, taken with kmsd stopped.
    drop(c);
    assert!(kmsd.terminate());
    let backup = env.path().join("backup");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(env.data_dir())
        .arg(&backup)
        .status()
        .unwrap();
    assert!(copied.success());
    let kmsd = env.start();

    // Without the next domain key, the rotation is refused and says what to do.
    let refused = kmsd.kmsctl(&["hsm", "rotate-domain"], b"");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("KMSInvalidStateException") && stderr.contains("make-domain-key"),
        "{stderr}"
    );

    ceremony(&env, &instance, 2);
    let rotated = kmsd.kmsctl(&["--output", "json", "hsm", "rotate-domain", "--wait"], b"");
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    let mut c = kmsd.client().await;
    let status = wait_rewrapped(&mut c).await;
    assert_eq!(status.current_version, 2);
    assert_eq!(status.versions_rewrapped, 5, "{status:?}");
    assert_eq!(status.destroyed_versions, [1]);
    let mut domain = env.hsm_domain_labels();
    domain.sort();
    assert_eq!(domain, ["kms/domain/2/authenticate", "kms/domain/2/wrap"]);

    // Every key works, unwrapped afresh after a restart.
    drop(c);
    drop(kmsd);
    let kmsd = env.start();
    let mut c = kmsd.client().await;
    let back = c.decrypt(&blob, &ctx(&[]), None).await.unwrap();
    assert_eq!(*back.plaintext, *b"before");
    c.verify_mac(&hmac, b"m", &mac, pb::MacAlgorithm::HmacSha256)
        .await
        .unwrap();
    let signature = c
        .sign(
            &ecc,
            b"x",
            pb::MessageType::Raw,
            pb::SigningAlgorithm::EcdsaSha256,
        )
        .await
        .unwrap()
        .signature;
    c.verify(
        &ecc,
        b"x",
        pb::MessageType::Raw,
        &signature,
        pb::SigningAlgorithm::EcdsaSha256,
    )
    .await
    .unwrap();
    let back = c
        .decrypt_rsa(&rsa, &rsa_blob, pb::EncryptionAlgorithm::RsaesOaepSha256)
        .await
        .unwrap();
    assert_eq!(*back.plaintext, *b"rsa");
    drop(c);
    drop(kmsd);

    // The backup names domain key 1, which no longer exists: kmsd refuses it, and a kmsd
    // told to make a new (sealed) domain key 1 for it opens none of its keys.
    let mut args = env.kmsd_args();
    let dir = args.iter().position(|a| a == "--data-dir").unwrap() + 1;
    args[dir] = backup.to_string_lossy().into_owned();
    let (_, log) = env.expect_refusal(&args, &[]);
    assert!(log.contains("domain key 1 is not on the token"), "{log}");
    let custody = args.iter().position(|a| a == "--domain-custody").unwrap() + 1;
    args[custody] = "sealed".to_owned();
    let stale = env
        .start_with(&args, &[])
        .unwrap_or_else(|log| panic!("{log}"));
    let mut c = stale.client().await;
    expect_error(
        c.decrypt(&blob, &ctx(&[]), None).await,
        Code::Internal,
        "KMSInternalException",
    );
    expect_error(
        c.generate_mac(&hmac, b"m", pb::MacAlgorithm::HmacSha256)
            .await,
        Code::Internal,
        "KMSInternalException",
    );
}

/// kill -9 while kmsd rewraps: the restarted kmsd finds the rotation in the store, rewraps
/// the rest, destroys the old domain key, and every acknowledged key opens its blobs.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_interrupted_by_kill_9_resumes_at_the_restart() {
    let env = TestEnv::new().with_trusted_domains();
    let (_, log) = env.expect_refusal(&env.bulk_key_args(), &[]);
    let instance = log
        .split("--instance ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{log}"))
        .to_owned();
    ceremony(&env, &instance, 1);
    let mut kmsd = env
        .start_with(&env.bulk_key_args(), &[])
        .unwrap_or_else(|l| panic!("{l}"));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let mut c = kmsd.client().await;
        tasks.push(tokio::spawn(async move {
            let mut blobs = Vec::new();
            for i in 0..150 {
                let key = c.create_key(&format!("k{t}-{i}")).await.unwrap().key_id;
                let text = format!("{t}-{i}");
                let blob = c.encrypt(&key, text.as_bytes(), &ctx(&[])).await.unwrap();
                blobs.push((text, blob.ciphertext_blob));
            }
            blobs
        }));
    }
    let mut blobs = Vec::new();
    for task in tasks {
        blobs.extend(task.await.unwrap());
    }
    ceremony(&env, &instance, 2);
    let mut c = kmsd.client().await;
    c.rotate_domain_key().await.unwrap();
    // Killed once the pass has rewrapped some, not all.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = c.domain_key_status().await.unwrap();
        assert!(
            !status.rewrap_finished,
            "the pass ended before the kill: {status:?}"
        );
        if status.versions_rewrapped > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {status:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    kmsd.kill9();
    drop(c);

    let kmsd = env
        .start_with(&env.bulk_key_args(), &[])
        .unwrap_or_else(|l| panic!("{l}"));
    let mut c = kmsd.client().await;
    let status = wait_rewrapped(&mut c).await;
    assert_eq!(status.current_version, 2);
    assert!(
        status.versions_rewrapped > 0 && status.versions_rewrapped < 1200,
        "the restart rewrapped the rest: {status:?}"
    );
    assert_eq!(status.destroyed_versions, [1]);
    for (text, blob) in &blobs {
        let back = c.decrypt(blob, &ctx(&[]), None).await.unwrap();
        assert_eq!(*back.plaintext, *text.as_bytes());
    }
}
