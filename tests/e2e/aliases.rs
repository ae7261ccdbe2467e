//! Aliases: created, used wherever a key id is taken, moved, listed and deleted, over gRPC
//! and through kmsctl, and kept across a restart.

use kms_e2e::TestEnv;
use tonic::Code;

use crate::{ctx, expect_error};

#[tokio::test(flavor = "multi_thread")]
async fn aliases_work_wherever_a_key_id_is_taken() {
    let env = TestEnv::new();
    let kmsd = env.start();
    let mut c = kmsd.client().await;
    let a = c.create_key("a").await.unwrap().key_id;
    let b = c.create_key("b").await.unwrap().key_id;
    c.create_alias("alias/app/prod", &a).await.unwrap();

    let blob = c
        .encrypt("alias/app/prod", b"via alias", &ctx(&[]))
        .await
        .unwrap();
    assert_eq!(blob.key_id, a, "responses name the key, not the alias");
    let out = c
        .decrypt(&blob.ciphertext_blob, &ctx(&[]), Some("alias/app/prod"))
        .await
        .unwrap();
    assert_eq!(*out.plaintext, b"via alias");
    assert_eq!(c.describe_key("alias/app/prod").await.unwrap().key_id, a);

    expect_error(
        c.create_alias("alias/app/prod", &b).await,
        Code::AlreadyExists,
        "AlreadyExistsException",
    );
    expect_error(
        c.create_alias("alias/kms/mine", &a).await,
        Code::InvalidArgument,
        "ValidationException",
    );
    expect_error(
        c.create_alias("no-prefix", &a).await,
        Code::InvalidArgument,
        "ValidationException",
    );
    expect_error(
        c.create_alias("alias/x", "00000000-0000-4000-8000-000000000000")
            .await,
        Code::NotFound,
        "NotFoundException",
    );

    c.update_alias("alias/app/prod", &b).await.unwrap();
    expect_error(
        c.decrypt(&blob.ciphertext_blob, &ctx(&[]), Some("alias/app/prod"))
            .await,
        Code::InvalidArgument,
        "IncorrectKeyException",
    );
    let listed = c.list_all_aliases(Some(&b)).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].alias_name, "alias/app/prod");
    assert!(c.list_all_aliases(Some(&a)).await.unwrap().is_empty());

    // Aliases are durable.
    drop(c);
    drop(kmsd);
    let kmsd = env.start();
    let mut c = kmsd.client().await;
    assert_eq!(c.describe_key("alias/app/prod").await.unwrap().key_id, b);

    c.delete_alias("alias/app/prod").await.unwrap();
    expect_error(
        c.describe_key("alias/app/prod").await,
        Code::NotFound,
        "NotFoundException",
    );
    expect_error(
        c.delete_alias("alias/app/prod").await,
        Code::NotFound,
        "NotFoundException",
    );
    // The key itself is untouched.
    assert_eq!(c.describe_key(&b).await.unwrap().key_id, b);
}

#[tokio::test(flavor = "multi_thread")]
async fn kmsctl_manages_aliases() {
    let env = TestEnv::new();
    let kmsd = env.start();
    let key = kmsd.client().await.create_key("k").await.unwrap().key_id;

    let out = kmsd.kmsctl(
        &[
            "--output",
            "json",
            "create-alias",
            "--alias-name",
            "alias/payroll",
            "--target-key-id",
            &key,
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["aliases"][0]["alias_name"], "alias/payroll");
    assert_eq!(listed["aliases"][0]["target_key_id"], key.as_str());

    let enc = kmsd.kmsctl(&["encrypt", "--key-id", "alias/payroll"], b"salary");
    assert!(enc.status.success());
    let b64 = String::from_utf8(enc.stdout).unwrap();
    let dec = kmsd.kmsctl(
        &[
            "decrypt",
            "--key-id",
            "alias/payroll",
            "--ciphertext",
            b64.trim(),
        ],
        b"",
    );
    assert_eq!(dec.stdout, b"salary");

    let text = kmsd.kmsctl(&["list-aliases"], b"");
    assert!(String::from_utf8_lossy(&text.stdout).contains("alias/payroll"));
    let deleted = kmsd.kmsctl(&["delete-alias", "--alias-name", "alias/payroll"], b"");
    assert!(deleted.status.success());
    let again = kmsd.kmsctl(&["delete-alias", "--alias-name", "alias/payroll"], b"");
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("NotFoundException"));
}
