//! The core of the service on a second PKCS#11 implementation: Debian's opencryptoki soft
//! token, which has no EC mechanism, no AES key wrap and none of CKA_ALLOWED_MECHANISMS,
//! CKA_COPYABLE or CKA_DESTROYABLE. kmsd keeps key versions as token objects there, refuses
//! ECC keys, and signs its audit log with RSA-PSS.
//!
//! The soft token is one per machine: [`TestEnv::opencryptoki`] initialises it afresh and
//! holds it for the test. Where pkcsslotd cannot be started, the test fails with the reason.

use kms_client::v1 as pb;
use kms_e2e::{Kmsd, TestEnv, bin};
use tonic::Code;

use crate::{ctx, expect_error};

#[tokio::test(flavor = "multi_thread")]
async fn opencryptoki_serves_the_core_and_refuses_ecc_keys() {
    let env = TestEnv::opencryptoki();
    let kmsd = env.start();
    let log = kmsd.log();
    assert!(
        log.contains("ECC_NIST_P256") && log.contains("CKM_ECDSA"),
        "kmsd does not say which key specs it refuses:\n{log}"
    );
    let mut c = kmsd.client().await;

    // SYMMETRIC_DEFAULT: create, encrypt, decrypt, rotate; old blobs still decrypt.
    let key = c.create_key("on opencryptoki").await.unwrap().key_id;
    let context = ctx(&[("tenant", "acme")]);
    let old = c
        .encrypt(&key, b"before", &context)
        .await
        .unwrap()
        .ciphertext_blob;
    assert_eq!(
        *c.decrypt(&old, &context, None).await.unwrap().plaintext,
        b"before"
    );
    assert_eq!(c.rotate_key_on_demand(&key).await.unwrap(), 2);
    let new = c
        .encrypt(&key, b"after", &context)
        .await
        .unwrap()
        .ciphertext_blob;
    for (blob, text) in [(&old, &b"before"[..]), (&new, &b"after"[..])] {
        assert_eq!(
            *c.decrypt(blob, &context, None).await.unwrap().plaintext,
            text
        );
    }
    expect_error(
        c.decrypt(&new, &ctx(&[("tenant", "evil")]), None).await,
        Code::InvalidArgument,
        "InvalidCiphertextException",
    );

    // HMAC keys of every size.
    for (spec, algorithm) in [
        (pb::KeySpec::Hmac256, pb::MacAlgorithm::HmacSha256),
        (pb::KeySpec::Hmac384, pb::MacAlgorithm::HmacSha384),
        (pb::KeySpec::Hmac512, pb::MacAlgorithm::HmacSha512),
    ] {
        let mac_key = c
            .create_key_with(pb::CreateKeyRequest {
                description: format!("{spec:?}"),
                key_spec: spec.into(),
                key_usage: pb::KeyUsage::GenerateVerifyMac.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .key_id;
        let mac = c
            .generate_mac(&mac_key, b"message", algorithm)
            .await
            .unwrap()
            .mac;
        c.verify_mac(&mac_key, b"message", &mac, algorithm)
            .await
            .unwrap();
        expect_error(
            c.verify_mac(&mac_key, b"other", &mac, algorithm).await,
            Code::InvalidArgument,
            "KMSInvalidMacException",
        );
    }

    // The module has no elliptic curves: ECC keys are refused, saying why.
    let refused = expect_error(
        c.create_key_with(pb::CreateKeyRequest {
            description: "ecc".to_owned(),
            key_spec: pb::KeySpec::EccNistP256.into(),
            key_usage: pb::KeyUsage::SignVerify.into(),
            ..Default::default()
        })
        .await,
        Code::Unimplemented,
        "UnsupportedOperationException",
    );
    assert!(refused.contains("CKM_EC_KEY_PAIR_GEN"), "{refused}");

    // Deletion: scheduled now, done when due (eight days later by kmsd's clock).
    let doomed = c.create_key("doomed").await.unwrap().key_id;
    let doomed_blob = c
        .encrypt(&doomed, b"gone", &ctx(&[]))
        .await
        .unwrap()
        .ciphertext_blob;
    c.schedule_key_deletion(&doomed, Some(7)).await.unwrap();
    drop(c);
    drop(kmsd);

    let kmsd = env.start_shifted("+8d");
    let mut c = kmsd.client().await;
    expect_error(
        c.describe_key(&doomed).await,
        Code::NotFound,
        "NotFoundException",
    );
    expect_error(
        c.decrypt(&doomed_blob, &ctx(&[]), None).await,
        Code::NotFound,
        "NotFoundException",
    );
    assert_eq!(
        *c.decrypt(&new, &context, None).await.unwrap().plaintext,
        b"after"
    );
    drop(c);
    drop(kmsd);

    // The audit log verifies with the RSA-PSS public key kmsd wrote beside it.
    let (log, public_key) = Kmsd::audit_files(&env.data_dir());
    let pem = std::fs::read_to_string(&public_key).unwrap();
    // An RSA 3072 SubjectPublicKeyInfo; a P-256 one is about 180 characters.
    assert!(
        pem.starts_with("-----BEGIN PUBLIC KEY-----") && pem.len() > 500,
        "not an RSA 3072 key: {pem}"
    );
    let out = std::process::Command::new(bin("kmsctl"))
        .args(["--output", "json", "audit", "verify", "--log"])
        .arg(&log)
        .arg("--public-key")
        .arg(&public_key)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["verified"], true, "{stdout}");
    assert!(report["records"].as_u64().unwrap() >= 15, "{stdout}");
}
