//! Every RPC over gRPC, with the documented codes and reasons.

use kms_client::DataKeySize;
use kms_client::v1 as pb;
use kms_e2e::TestEnv;
use tonic::Code;

use crate::{ctx, expect_error};

#[tokio::test(flavor = "multi_thread")]
async fn encrypt_limits_and_every_decrypt_failure_look_the_same() {
    let env = TestEnv::new();
    let kmsd = env.start();
    let mut c = kmsd.client().await;
    let key = c.create_key("limits").await.unwrap().key_id;
    let context = ctx(&[("tenant", "acme")]);

    let max = vec![0xA5u8; 4096];
    let blob = c
        .encrypt(&key, &max, &context)
        .await
        .unwrap()
        .ciphertext_blob;
    assert_eq!(
        *c.decrypt(&blob, &context, None).await.unwrap().plaintext,
        max
    );
    expect_error(
        c.encrypt(&key, &[0u8; 4097], &context).await,
        Code::InvalidArgument,
        "ValidationException",
    );
    expect_error(
        c.encrypt(&key, &[], &context).await,
        Code::InvalidArgument,
        "ValidationException",
    );

    let small = c
        .encrypt(&key, b"attack at dawn", &context)
        .await
        .unwrap()
        .ciphertext_blob;
    let reference = expect_error(
        c.decrypt(&small, &ctx(&[("tenant", "evil")]), None).await,
        Code::InvalidArgument,
        "InvalidCiphertextException",
    );
    let mut failures = vec![
        c.decrypt(&small, &ctx(&[]), None).await,
        c.decrypt(&small, &ctx(&[("tenant", "acme"), ("x", "y")]), None)
            .await,
        c.decrypt(&small[..small.len() - 1], &context, None).await,
        c.decrypt(&small[..10], &context, None).await,
        c.decrypt(&[], &context, None).await,
    ];
    for i in 0..small.len() {
        let mut altered = small.clone();
        altered[i] ^= 0x01;
        failures.push(c.decrypt(&altered, &context, None).await);
    }
    for failure in failures {
        let message = expect_error(failure, Code::InvalidArgument, "InvalidCiphertextException");
        assert_eq!(
            message, reference,
            "every decrypt failure has the same message"
        );
    }
    expect_error(
        c.decrypt(&vec![1u8; 6145], &context, None).await,
        Code::InvalidArgument,
        "InvalidCiphertextException",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn key_states_not_found_and_incorrect_key() {
    let env = TestEnv::new();
    let kmsd = env.start();
    let mut c = kmsd.client().await;
    let a = c.create_key("a").await.unwrap().key_id;
    let b = c.create_key("b").await.unwrap().key_id;
    let none = ctx(&[]);
    let blob = c.encrypt(&a, b"x", &none).await.unwrap().ciphertext_blob;

    c.disable_key(&a).await.unwrap();
    let described = c.describe_key(&a).await.unwrap();
    assert_eq!(described.key_state(), pb::KeyState::Disabled);
    assert!(!described.enabled);
    let disabled = |r| expect_error(r, Code::FailedPrecondition, "DisabledException");
    disabled(c.encrypt(&a, b"x", &none).await.map(drop));
    disabled(c.decrypt(&blob, &none, None).await.map(drop));
    disabled(
        c.re_encrypt(pb::ReEncryptRequest {
            ciphertext_blob: blob.clone(),
            destination_key_id: b.clone(),
            ..Default::default()
        })
        .await
        .map(drop),
    );
    disabled(
        c.generate_data_key(&a, &none, DataKeySize::Aes256)
            .await
            .map(drop),
    );
    disabled(
        c.generate_data_key_without_plaintext(&a, &none, DataKeySize::Aes256)
            .await
            .map(drop),
    );
    c.enable_key(&a).await.unwrap();
    assert_eq!(
        *c.decrypt(&blob, &none, Some(&a)).await.unwrap().plaintext,
        b"x"
    );

    let unknown = "00000000-0000-4000-8000-000000000000";
    let not_found = |r| expect_error(r, Code::NotFound, "NotFoundException");
    not_found(c.describe_key(unknown).await.map(drop));
    not_found(c.encrypt(unknown, b"x", &none).await.map(drop));
    not_found(c.disable_key(unknown).await);
    not_found(
        c.generate_data_key(unknown, &none, DataKeySize::Aes128)
            .await
            .map(drop),
    );
    not_found(c.describe_key("alias/nothing-here").await.map(drop));

    expect_error(
        c.decrypt(&blob, &none, Some(&b)).await,
        Code::InvalidArgument,
        "IncorrectKeyException",
    );
    expect_error(
        c.describe_key("not-a-key").await,
        Code::InvalidArgument,
        "ValidationException",
    );
    expect_error(
        c.describe_key("").await,
        Code::InvalidArgument,
        "ValidationException",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn re_encrypt_moves_a_blob_to_another_key() {
    let env = TestEnv::new();
    let kmsd = env.start();
    let mut c = kmsd.client().await;
    let a = c.create_key("source").await.unwrap().key_id;
    let b = c.create_key("destination").await.unwrap().key_id;
    let blob = c
        .encrypt(&a, b"the plaintext", &ctx(&[("from", "a")]))
        .await
        .unwrap()
        .ciphertext_blob;
    let moved = c
        .re_encrypt(pb::ReEncryptRequest {
            ciphertext_blob: blob,
            source_encryption_context: ctx(&[("from", "a")]),
            source_key_id: a.clone(),
            destination_key_id: b.clone(),
            destination_encryption_context: ctx(&[("to", "b")]),
        })
        .await
        .unwrap();
    assert_eq!(moved.source_key_id, a);
    assert_eq!(moved.key_id, b);
    let out = c
        .decrypt(&moved.ciphertext_blob, &ctx(&[("to", "b")]), None)
        .await
        .unwrap();
    assert_eq!(out.key_id, b);
    assert_eq!(*out.plaintext, b"the plaintext");
    expect_error(
        c.decrypt(&moved.ciphertext_blob, &ctx(&[("to", "b")]), Some(&a))
            .await,
        Code::InvalidArgument,
        "IncorrectKeyException",
    );
    // A wrong source context fails like any decrypt.
    let blob = c
        .encrypt(&a, b"y", &ctx(&[]))
        .await
        .unwrap()
        .ciphertext_blob;
    expect_error(
        c.re_encrypt(pb::ReEncryptRequest {
            ciphertext_blob: blob,
            source_encryption_context: ctx(&[("wrong", "1")]),
            destination_key_id: b,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "InvalidCiphertextException",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn data_keys_and_random_bytes() {
    let env = TestEnv::new();
    let kmsd = env.start();
    let mut c = kmsd.client().await;
    let key = c.create_key("dk").await.unwrap().key_id;
    let context = ctx(&[("file", "backup.tar")]);
    for (size, len) in [
        (DataKeySize::Aes128, 16),
        (DataKeySize::Aes256, 32),
        (DataKeySize::Bytes(1), 1),
        (DataKeySize::Bytes(1024), 1024),
    ] {
        let dk = c.generate_data_key(&key, &context, size).await.unwrap();
        assert_eq!(dk.plaintext.len(), len);
        assert_eq!(dk.key_id, key);
        let back = c
            .decrypt(&dk.ciphertext_blob, &context, None)
            .await
            .unwrap();
        assert_eq!(*back.plaintext, *dk.plaintext);
    }
    let without = c
        .generate_data_key_without_plaintext(&key, &context, DataKeySize::Bytes(48))
        .await
        .unwrap();
    assert_eq!(without.key_id, key);
    assert_eq!(
        c.decrypt(&without.ciphertext_blob, &context, None)
            .await
            .unwrap()
            .plaintext
            .len(),
        48
    );

    let invalid = |r| expect_error(r, Code::InvalidArgument, "ValidationException");
    invalid(
        c.generate_data_key(&key, &context, DataKeySize::Bytes(0))
            .await
            .map(drop),
    );
    invalid(
        c.generate_data_key(&key, &context, DataKeySize::Bytes(1025))
            .await
            .map(drop),
    );
    invalid(
        c.raw()
            .generate_data_key(pb::GenerateDataKeyRequest {
                key_id: key.clone(),
                key_spec: pb::DataKeySpec::Aes256.into(),
                number_of_bytes: Some(32),
                ..Default::default()
            })
            .await
            .map(drop)
            .map_err(Into::into),
    );
    invalid(
        c.raw()
            .generate_data_key(pb::GenerateDataKeyRequest {
                key_id: key.clone(),
                ..Default::default()
            })
            .await
            .map(drop)
            .map_err(Into::into),
    );

    let random = c.generate_random(1024).await.unwrap();
    assert_eq!(random.len(), 1024);
    assert_ne!(*random, *c.generate_random(1024).await.unwrap());
    invalid(c.generate_random(0).await.map(drop));
    invalid(c.generate_random(1025).await.map(drop));
}

#[tokio::test(flavor = "multi_thread")]
async fn key_metadata_listing_and_descriptions() {
    let env = TestEnv::new();
    let kmsd = env.start();
    let mut c = kmsd.client().await;
    let created = c.create_key("first key").await.unwrap();
    assert_eq!(created.key_state(), pb::KeyState::Enabled);
    assert!(created.enabled);
    assert_eq!(created.key_spec(), pb::KeySpec::SymmetricDefault);
    assert_eq!(created.key_usage(), pb::KeyUsage::EncryptDecrypt);
    assert_eq!(created.origin(), pb::OriginType::Kms);
    assert_eq!(created.current_key_version, 1);
    assert_eq!(
        created.encryption_algorithms().collect::<Vec<_>>(),
        [pb::EncryptionAlgorithm::SymmetricDefault]
    );
    assert!(
        created
            .creation_date
            .is_some_and(|t| t.seconds > 1_700_000_000)
    );

    let mut all = vec![created.key_id.clone()];
    for i in 0..4 {
        all.push(c.create_key(&format!("key {i}")).await.unwrap().key_id);
    }
    all.sort();
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c.list_keys(2, &token).await.unwrap();
        assert!(page.keys.len() <= 2);
        seen.extend(page.keys.into_iter().map(|k| k.key_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, all);
    expect_error(
        c.list_keys(1001, "").await,
        Code::InvalidArgument,
        "ValidationException",
    );
    expect_error(
        c.list_keys(10, "bogus").await,
        Code::InvalidArgument,
        "ValidationException",
    );

    c.update_key_description(&created.key_id, "renamed")
        .await
        .unwrap();
    assert_eq!(
        c.describe_key(&created.key_id).await.unwrap().description,
        "renamed"
    );
    expect_error(
        c.update_key_description(&created.key_id, &"x".repeat(8193))
            .await,
        Code::InvalidArgument,
        "ValidationException",
    );
    expect_error(
        c.raw()
            .create_key(pb::CreateKeyRequest {
                key_spec: 42,
                ..Default::default()
            })
            .await
            .map_err(Into::into),
        Code::InvalidArgument,
        "ValidationException",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sixty_four_concurrent_clients_see_no_errors() {
    let seconds: u64 = std::env::var("KMS_E2E_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let env = TestEnv::new();
    let kmsd = env.start();
    let key = kmsd.client().await.create_key("load").await.unwrap().key_id;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for worker in 0..64u32 {
        let mut c = kmsd.client().await;
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let context = ctx(&[("worker", &worker.to_string())]);
            let mut done = 0u64;
            while tokio::time::Instant::now() < deadline {
                let plaintext = format!("worker {worker} message {done}").into_bytes();
                let blob = c.encrypt(&key, &plaintext, &context).await?.ciphertext_blob;
                let back = c.decrypt(&blob, &context, None).await?;
                assert_eq!(*back.plaintext, plaintext);
                done += 1;
            }
            Ok::<u64, kms_client::ClientError>(done)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("a client saw an error: {e}"));
    }
    assert!(total > 64, "only {total} round trips in {seconds} s");
    println!("64 clients, {seconds} s: {total} encrypt+decrypt round trips, 0 errors");
}
