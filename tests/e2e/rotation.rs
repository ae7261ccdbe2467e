//! On-demand rotation: a new HSM object per version, old blobs keep decrypting.

use kms_client::v1 as pb;
use kms_e2e::TestEnv;
use tonic::Code;

use crate::{ctx, expect_error};

fn blob_version(blob: &[u8]) -> u32 {
    u32::from_be_bytes(blob[17..21].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_adds_a_version_and_old_blobs_still_decrypt() {
    let env = TestEnv::new();
    let kmsd = env.start();
    let mut c = kmsd.client().await;
    let key = c.create_key("rotating").await.unwrap().key_id;
    let old = c
        .encrypt(&key, b"before", &ctx(&[]))
        .await
        .unwrap()
        .ciphertext_blob;
    assert_eq!(blob_version(&old), 1);

    assert_eq!(c.rotate_key_on_demand(&key).await.unwrap(), 2);
    assert_eq!(c.describe_key(&key).await.unwrap().current_key_version, 2);
    let new = c
        .encrypt(&key, b"after", &ctx(&[]))
        .await
        .unwrap()
        .ciphertext_blob;
    assert_eq!(blob_version(&new), 2);
    assert_eq!(
        *c.decrypt(&old, &ctx(&[]), None).await.unwrap().plaintext,
        b"before"
    );
    assert_eq!(
        *c.decrypt(&new, &ctx(&[]), None).await.unwrap().plaintext,
        b"after"
    );

    // ReEncrypt to the same key moves a blob to the current version.
    let moved = c
        .re_encrypt(pb::ReEncryptRequest {
            ciphertext_blob: old.clone(),
            destination_key_id: key.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(blob_version(&moved.ciphertext_blob), 2);

    let rotations = c.list_all_key_rotations(&key).await.unwrap();
    assert_eq!(rotations.len(), 1);
    assert_eq!(rotations[0].key_version, 2);
    assert_eq!(rotations[0].rotation_type(), pb::RotationType::OnDemand);

    let mut labels = env.hsm_key_labels();
    labels.sort();
    assert_eq!(labels, [format!("kms/{key}/v1"), format!("kms/{key}/v2")]);

    c.disable_key(&key).await.unwrap();
    expect_error(
        c.rotate_key_on_demand(&key).await,
        Code::FailedPrecondition,
        "DisabledException",
    );
    c.enable_key(&key).await.unwrap();

    // Versions survive a restart.
    drop(c);
    drop(kmsd);
    let kmsd = env.start();
    let mut c = kmsd.client().await;
    assert_eq!(
        *c.decrypt(&old, &ctx(&[]), None).await.unwrap().plaintext,
        b"before"
    );
    let again = c
        .encrypt(&key, b"x", &ctx(&[]))
        .await
        .unwrap()
        .ciphertext_blob;
    assert_eq!(blob_version(&again), 2);

    // Through kmsctl.
    let out = kmsd.kmsctl(
        &["--output", "json", "rotate-key-on-demand", "--key-id", &key],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(meta["current_key_version"], 3);
    let out = kmsd.kmsctl(
        &["--output", "json", "list-key-rotations", "--key-id", &key],
        b"",
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["rotations"].as_array().map(Vec::len), Some(2));
    assert_eq!(listed["rotations"][1]["rotation_type"], "ON_DEMAND");
}
