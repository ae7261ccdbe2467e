//! What the token holds, seen with OpenSC's pkcs11-tool, and what kmsd's logs never hold.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kms_client::DataKeySize;
use kms_e2e::TestEnv;

use crate::ctx;

/// Key versions kept wrapped (the default): however many keys and versions, the token holds
/// the domain's two keys, sensitive and never extractable, and the audit key; every key still
/// works after a restart, from its wrapped material in the metadata store.
#[tokio::test(flavor = "multi_thread")]
async fn the_token_holds_only_the_domain_keys_whatever_the_number_of_keys() {
    let env = TestEnv::new();
    let kmsd = env.start();
    let mut c = kmsd.client().await;
    let mut blobs = Vec::new();
    for i in 0..5 {
        let key = c.create_key(&format!("k{i}")).await.unwrap().key_id;
        c.rotate_key_on_demand(&key).await.unwrap();
        let blob = c.encrypt(&key, b"wrapped", &ctx(&[])).await.unwrap();
        blobs.push(blob.ciphertext_blob);
    }
    assert!(env.hsm_key_labels().is_empty(), "no object per key version");
    let mut domain = env.hsm_domain_labels();
    domain.sort();
    assert_eq!(domain, ["kms/domain/1/authenticate", "kms/domain/1/wrap"]);
    let listing = env.pkcs11_tool(&["--list-objects", "--type", "secrkey"]);
    let text = String::from_utf8_lossy(&listing.stdout);
    for block in text.split("Secret Key Object").skip(1) {
        let access = block
            .lines()
            .find(|l| l.trim_start().starts_with("Access:"))
            .unwrap_or_else(|| panic!("no Access line in {block}"));
        for attribute in ["sensitive", "always sensitive", "never extractable"] {
            assert!(access.contains(attribute), "{access}");
        }
    }
    let everything = env.pkcs11_tool(&["--list-objects"]);
    let everything = String::from_utf8_lossy(&everything.stdout);
    assert_eq!(
        everything.matches("Private Key Object").count(),
        1,
        "the audit key only: {everything}"
    );
    drop(c);
    drop(kmsd);
    let kmsd = env.start();
    let mut c = kmsd.client().await;
    for blob in &blobs {
        let back = c.decrypt(blob, &ctx(&[]), None).await.unwrap();
        assert_eq!(*back.plaintext, *b"wrapped");
    }
    assert_eq!(
        env.hsm_domain_labels().len(),
        2,
        "the domain is found, not made again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_holds_one_sensitive_never_extractable_object_per_key() {
    let env = TestEnv::new().with_token_storage();
    let kmsd = env.start();
    let mut c = kmsd.client().await;
    let mut keys = Vec::new();
    for i in 0..3 {
        keys.push(c.create_key(&format!("k{i}")).await.unwrap().key_id);
    }
    let mut labels = env.hsm_key_labels();
    labels.sort();
    let mut expected: Vec<String> = keys.iter().map(|k| format!("kms/{k}/v1")).collect();
    expected.sort();
    assert_eq!(labels, expected);

    let listing = env.pkcs11_tool(&["--list-objects", "--type", "secrkey"]);
    let text = String::from_utf8_lossy(&listing.stdout);
    let blocks: Vec<&str> = text.split("Secret Key Object").skip(1).collect();
    assert_eq!(blocks.len(), 3, "{text}");
    for block in blocks {
        let access = block
            .lines()
            .find(|l| l.trim_start().starts_with("Access:"))
            .unwrap_or_else(|| panic!("no Access line in {block}"));
        for attribute in ["sensitive", "always sensitive", "never extractable"] {
            assert!(access.contains(attribute), "{access}");
        }
        let usage = block
            .lines()
            .find(|l| l.trim_start().starts_with("Usage:"))
            .unwrap_or_else(|| panic!("no Usage line in {block}"));
        for usage_flag in ["encrypt", "decrypt", "wrap", "unwrap", "derive"] {
            assert!(!usage.contains(usage_flag), "{usage}");
        }
    }
    // Reading the value fails because it is sensitive.
    let read = env.pkcs11_tool(&[
        "--read-object",
        "--type",
        "secrkey",
        "--label",
        &expected[0],
    ]);
    assert!(!read.status.success(), "pkcs11-tool read a master secret");
    let stderr = String::from_utf8_lossy(&read.stderr);
    assert!(stderr.contains("CKR_ATTRIBUTE_SENSITIVE"), "{stderr}");
}

#[test]
fn the_audit_signing_key_is_an_hsm_private_key_that_only_signs() {
    let env = TestEnv::new();
    let kmsd = env.start();
    let listing = env.pkcs11_tool(&["--list-objects", "--type", "privkey"]);
    let text = String::from_utf8_lossy(&listing.stdout);
    let blocks: Vec<&str> = text.split("Private Key Object").skip(1).collect();
    assert_eq!(blocks.len(), 1, "{text}");
    let block = blocks[0];
    assert!(block.contains("EC"), "{block}");
    let line = |name: &str| {
        block
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no {name} line in {block}"))
            .to_owned()
    };
    assert!(line("label:").contains("kms/audit/"), "{block}");
    let access = line("Access:");
    for attribute in ["sensitive", "always sensitive", "never extractable"] {
        assert!(access.contains(attribute), "{access}");
    }
    let usage = line("Usage:");
    assert_eq!(usage.trim(), "Usage:      sign", "{block}");
    // The public half, on the token, matches the PEM kmsd wrote for verifiers.
    let pem = std::fs::read_to_string(env.data_dir().join("audit.pub.pem")).unwrap();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    drop(kmsd);
    // A restart reuses the pair rather than making a second one.
    let _again = env.start();
    let listing = env.pkcs11_tool(&["--list-objects", "--type", "privkey"]);
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout)
            .matches("Private Key Object")
            .count(),
        1
    );
    assert_eq!(
        std::fs::read_to_string(env.data_dir().join("audit.pub.pem")).unwrap(),
        pem
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_marker_plaintext_never_reaches_the_trace_log() {
    let env = TestEnv::new();
    let mut args = env.kmsd_args();
    args.extend(["--log-level".to_owned(), "trace".to_owned()]);
    let kmsd = env
        .start_with(&args, &[("RUST_LOG", "trace")])
        .unwrap_or_else(|log| panic!("{log}"));
    let mut c = kmsd.client().await;
    let key = c.create_key("log test").await.unwrap().key_id;
    let marker = b"MARKER-7f3a9c-plaintext-that-must-never-be-logged";
    let context = ctx(&[("purpose", "log-test")]);
    let blob = c
        .encrypt(&key, marker, &context)
        .await
        .unwrap()
        .ciphertext_blob;
    let back = c.decrypt(&blob, &context, None).await.unwrap();
    assert_eq!(*back.plaintext, marker);
    let _ = c.decrypt(&blob, &ctx(&[("purpose", "wrong")]), None).await;
    let _ = c.encrypt(&key, &[b'M'; 4097], &context).await;
    let data_key = c
        .generate_data_key(&key, &context, DataKeySize::Aes256)
        .await
        .unwrap();

    let log = kmsd.log();
    assert!(log.contains("TRACE"), "kmsd did not log at trace level");
    assert!(log.contains(&key), "the log should name the key id");
    for secret in [&marker[..], &data_key.plaintext[..]] {
        let forms = [
            String::from_utf8_lossy(secret).into_owned(),
            hex(secret),
            STANDARD.encode(secret),
            format!("{secret:?}"),
        ];
        for form in forms {
            assert!(
                !log.contains(&form),
                "a secret appears in kmsd's log as {form}"
            );
        }
    }
    assert!(!log.contains("MARKER"), "part of the marker is in the log");
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
