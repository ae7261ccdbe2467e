//! RSA, ECC and HMAC keys over gRPC: signatures and encryptions that Python's `cryptography`
//! checks and makes, and the errors of wrong usages and algorithms.

use kms_client::KmsClient;
use kms_client::v1 as pb;
use kms_e2e::TestEnv;
use tonic::Code;

use crate::{ctx, expect_error, python_ops};

async fn create(c: &mut KmsClient, spec: pb::KeySpec, usage: pb::KeyUsage) -> pb::KeyMetadata {
    c.create_key_with(pb::CreateKeyRequest {
        description: format!("{spec:?} {usage:?}"),
        key_spec: spec.into(),
        key_usage: usage.into(),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn name(algorithm: pb::SigningAlgorithm) -> String {
    algorithm
        .as_str_name()
        .trim_start_matches("SIGNING_ALGORITHM_")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn signatures_verify_with_python_and_tampering_is_caught() {
    let env = TestEnv::new();
    let kmsd = env.start();
    let mut c = kmsd.client().await;
    let message = b"an artifact to sign".as_slice();
    let cases = [
        (
            pb::KeySpec::EccNistP256,
            vec![pb::SigningAlgorithm::EcdsaSha256],
        ),
        (
            pb::KeySpec::Rsa2048,
            vec![
                pb::SigningAlgorithm::RsassaPssSha256,
                pb::SigningAlgorithm::RsassaPssSha384,
                pb::SigningAlgorithm::RsassaPssSha512,
                pb::SigningAlgorithm::RsassaPkcs1V15Sha256,
                pb::SigningAlgorithm::RsassaPkcs1V15Sha384,
                pb::SigningAlgorithm::RsassaPkcs1V15Sha512,
            ],
        ),
        (
            pb::KeySpec::Rsa3072,
            vec![pb::SigningAlgorithm::RsassaPssSha384],
        ),
        (
            pb::KeySpec::Rsa4096,
            vec![pb::SigningAlgorithm::RsassaPkcs1V15Sha512],
        ),
    ];
    for (spec, algorithms) in cases {
        let key = create(&mut c, spec, pb::KeyUsage::SignVerify).await;
        assert_eq!(key.key_usage(), pb::KeyUsage::SignVerify);
        let mut listed = key.signing_algorithms().collect::<Vec<_>>();
        listed.sort();
        let public = c.get_public_key(&key.key_id).await.unwrap();
        assert_eq!(public.key_spec(), spec);
        let spki = hex::encode(&public.public_key);
        for algorithm in algorithms {
            assert!(listed.contains(&algorithm), "{spec:?} lists {listed:?}");
            let raw = c
                .sign(&key.key_id, message, pb::MessageType::Raw, algorithm)
                .await
                .unwrap();
            assert_eq!(raw.signing_algorithm(), algorithm);
            let alg = name(algorithm);
            let signature = hex::encode(&raw.signature);
            assert!(
                python_ops(&["verify", &spki, &alg, &hex::encode(message), &signature]).is_some(),
                "Python rejects the {alg} signature of a {spec:?} key"
            );
            assert!(
                python_ops(&["verify", &spki, &alg, &hex::encode(b"another"), &signature])
                    .is_none(),
                "Python accepts a {alg} signature over another message"
            );
            let verified = c
                .verify(
                    &key.key_id,
                    message,
                    pb::MessageType::Raw,
                    &raw.signature,
                    algorithm,
                )
                .await
                .unwrap();
            assert!(verified.signature_valid);
            let mut bad = raw.signature.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            expect_error(
                c.verify(&key.key_id, message, pb::MessageType::Raw, &bad, algorithm)
                    .await,
                Code::InvalidArgument,
                "KMSInvalidSignatureException",
            );
        }
    }

    // DIGEST: the caller hashes; Python checks the signature over the digest.
    let ec = create(&mut c, pb::KeySpec::EccNistP256, pb::KeyUsage::SignVerify).await;
    let spki = hex::encode(c.get_public_key(&ec.key_id).await.unwrap().public_key);
    let digest = <sha2::Sha256 as sha2::Digest>::digest(message).to_vec();
    let signed = c
        .sign(
            &ec.key_id,
            &digest,
            pb::MessageType::Digest,
            pb::SigningAlgorithm::EcdsaSha256,
        )
        .await
        .unwrap();
    let args = [
        "verify-digest",
        &spki,
        "ECDSA_SHA_256",
        &hex::encode(&digest),
        &hex::encode(&signed.signature),
    ];
    assert!(python_ops(&args).is_some());
    assert!(
        c.verify(
            &ec.key_id,
            message,
            pb::MessageType::Raw,
            &signed.signature,
            pb::SigningAlgorithm::EcdsaSha256
        )
        .await
        .is_ok(),
        "a signature over the digest is one over the message"
    );
    let message_text = expect_error(
        c.sign(
            &ec.key_id,
            &digest[..31],
            pb::MessageType::Digest,
            pb::SigningAlgorithm::EcdsaSha256,
        )
        .await,
        Code::InvalidArgument,
        "ValidationException",
    );
    assert!(message_text.contains("32"), "{message_text}");

    // Wrong algorithm for the key, and keys that do not sign.
    expect_error(
        c.sign(
            &ec.key_id,
            message,
            pb::MessageType::Raw,
            pb::SigningAlgorithm::RsassaPssSha256,
        )
        .await,
        Code::InvalidArgument,
        "InvalidKeyUsageException",
    );
    let symmetric = c.create_key("symmetric").await.unwrap();
    expect_error(
        c.sign(
            &symmetric.key_id,
            message,
            pb::MessageType::Raw,
            pb::SigningAlgorithm::EcdsaSha256,
        )
        .await,
        Code::InvalidArgument,
        "InvalidKeyUsageException",
    );
    expect_error(
        c.get_public_key(&symmetric.key_id).await,
        Code::Unimplemented,
        "UnsupportedOperationException",
    );
    expect_error(
        c.encrypt(&ec.key_id, b"x", &ctx(&[])).await,
        Code::InvalidArgument,
        "InvalidKeyUsageException",
    );
    // A disabled key signs nothing, and a symmetric key does not rotate into an RSA one.
    c.disable_key(&ec.key_id).await.unwrap();
    expect_error(
        c.sign(
            &ec.key_id,
            message,
            pb::MessageType::Raw,
            pb::SigningAlgorithm::EcdsaSha256,
        )
        .await,
        Code::FailedPrecondition,
        "DisabledException",
    );
    expect_error(
        c.enable_key_rotation(&ec.key_id, None).await,
        Code::FailedPrecondition,
        "DisabledException",
    );
    c.enable_key(&ec.key_id).await.unwrap();
    expect_error(
        c.rotate_key_on_demand(&ec.key_id).await,
        Code::Unimplemented,
        "UnsupportedOperationException",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rsa_keys_decrypt_in_the_hsm_what_python_encrypts() {
    let env = TestEnv::new();
    let kmsd = env.start();
    let mut c = kmsd.client().await;
    let key = create(&mut c, pb::KeySpec::Rsa2048, pb::KeyUsage::EncryptDecrypt).await;
    let mut algorithms = key.encryption_algorithms().collect::<Vec<_>>();
    algorithms.sort();
    assert_eq!(
        algorithms,
        [
            pb::EncryptionAlgorithm::RsaesOaepSha1,
            pb::EncryptionAlgorithm::RsaesOaepSha256
        ]
    );
    let spki = hex::encode(c.get_public_key(&key.key_id).await.unwrap().public_key);
    let secret = b"a database password";
    for (hash, algorithm) in [
        ("sha1", pb::EncryptionAlgorithm::RsaesOaepSha1),
        ("sha256", pb::EncryptionAlgorithm::RsaesOaepSha256),
    ] {
        let ciphertext =
            hex::decode(python_ops(&["encrypt", &spki, hash, &hex::encode(secret)]).unwrap())
                .unwrap();
        let plain = c
            .decrypt_rsa(&key.key_id, &ciphertext, algorithm)
            .await
            .unwrap();
        assert_eq!(plain.plaintext.as_slice(), secret, "{hash}");
        assert_eq!(plain.encryption_algorithm, algorithm);

        let ours = c.encrypt_rsa(&key.key_id, secret, algorithm).await.unwrap();
        assert_eq!(ours.ciphertext_blob.len(), 256);
        let plain = c
            .decrypt_rsa(&key.key_id, &ours.ciphertext_blob, algorithm)
            .await
            .unwrap();
        assert_eq!(plain.plaintext.as_slice(), secret);

        let mut altered = ciphertext.clone();
        altered[100] ^= 1;
        let message = expect_error(
            c.decrypt_rsa(&key.key_id, &altered, algorithm).await,
            Code::InvalidArgument,
            "InvalidCiphertextException",
        );
        assert!(!message.contains("password"), "{message}");
    }
    // SHA-1 ciphertext, SHA-256 named: one and the same error.
    let sha1 = hex::decode(python_ops(&["encrypt", &spki, "sha1", "00"]).unwrap()).unwrap();
    expect_error(
        c.decrypt_rsa(&key.key_id, &sha1, pb::EncryptionAlgorithm::RsaesOaepSha256)
            .await,
        Code::InvalidArgument,
        "InvalidCiphertextException",
    );
    // Too long for the key (2048 bits, SHA-256: at most 190 bytes).
    let message = expect_error(
        c.encrypt_rsa(
            &key.key_id,
            &[7; 191],
            pb::EncryptionAlgorithm::RsaesOaepSha256,
        )
        .await,
        Code::InvalidArgument,
        "ValidationException",
    );
    assert!(message.contains("190"), "{message}");
    // RSA keys take an algorithm, no context, and make no data keys.
    expect_error(
        c.encrypt(&key.key_id, secret, &ctx(&[])).await,
        Code::InvalidArgument,
        "InvalidKeyUsageException",
    );
    expect_error(
        c.raw()
            .encrypt(pb::EncryptRequest {
                key_id: key.key_id.clone(),
                plaintext: secret.to_vec(),
                encryption_context: ctx(&[("a", "b")]),
                encryption_algorithm: pb::EncryptionAlgorithm::RsaesOaepSha256.into(),
            })
            .await
            .map_err(kms_client::ClientError::from),
        Code::InvalidArgument,
        "ValidationException",
    );
    expect_error(
        c.raw()
            .decrypt(pb::DecryptRequest {
                ciphertext_blob: sha1.clone(),
                encryption_algorithm: pb::EncryptionAlgorithm::RsaesOaepSha1.into(),
                ..Default::default()
            })
            .await
            .map_err(kms_client::ClientError::from),
        Code::InvalidArgument,
        "ValidationException",
    );
    expect_error(
        c.generate_data_key(&key.key_id, &ctx(&[]), kms_client::DataKeySize::Aes256)
            .await,
        Code::InvalidArgument,
        "InvalidKeyUsageException",
    );
    // A symmetric key refuses RSA algorithms.
    let symmetric = c.create_key("symmetric").await.unwrap();
    expect_error(
        c.encrypt_rsa(
            &symmetric.key_id,
            secret,
            pb::EncryptionAlgorithm::RsaesOaepSha1,
        )
        .await,
        Code::InvalidArgument,
        "InvalidKeyUsageException",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hmac_keys_mac_in_the_hsm_and_refuse_wrong_macs() {
    let env = TestEnv::new();
    let kmsd = env.start();
    let mut c = kmsd.client().await;
    for (spec, algorithm, len) in [
        (pb::KeySpec::Hmac256, pb::MacAlgorithm::HmacSha256, 32),
        (pb::KeySpec::Hmac384, pb::MacAlgorithm::HmacSha384, 48),
        (pb::KeySpec::Hmac512, pb::MacAlgorithm::HmacSha512, 64),
    ] {
        // The usage defaults to GENERATE_VERIFY_MAC for HMAC specs.
        let key = c
            .create_key_with(pb::CreateKeyRequest {
                key_spec: spec.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(key.key_usage(), pb::KeyUsage::GenerateVerifyMac);
        assert_eq!(key.mac_algorithms().collect::<Vec<_>>(), [algorithm]);
        let mac = c
            .generate_mac(&key.key_id, b"session=42", algorithm)
            .await
            .unwrap()
            .mac;
        assert_eq!(mac.len(), len);
        assert!(
            c.verify_mac(&key.key_id, b"session=42", &mac, algorithm)
                .await
                .unwrap()
                .mac_valid
        );
        let mut bad = mac.clone();
        bad[0] ^= 0x80;
        for wrong in [bad.as_slice(), &mac[..len - 1], b""] {
            expect_error(
                c.verify_mac(&key.key_id, b"session=42", wrong, algorithm)
                    .await,
                Code::InvalidArgument,
                "KMSInvalidMacException",
            );
        }
        expect_error(
            c.verify_mac(&key.key_id, b"session=43", &mac, algorithm)
                .await,
            Code::InvalidArgument,
            "KMSInvalidMacException",
        );
    }
    let key = create(
        &mut c,
        pb::KeySpec::Hmac256,
        pb::KeyUsage::GenerateVerifyMac,
    )
    .await;
    expect_error(
        c.generate_mac(&key.key_id, b"m", pb::MacAlgorithm::HmacSha512)
            .await,
        Code::InvalidArgument,
        "InvalidKeyUsageException",
    );
    expect_error(
        c.generate_mac(&key.key_id, &[0; 4097], pb::MacAlgorithm::HmacSha256)
            .await,
        Code::InvalidArgument,
        "ValidationException",
    );
    let symmetric = c.create_key("symmetric").await.unwrap();
    expect_error(
        c.generate_mac(&symmetric.key_id, b"m", pb::MacAlgorithm::HmacSha256)
            .await,
        Code::InvalidArgument,
        "InvalidKeyUsageException",
    );
    // Spec and usage must fit.
    let message = expect_error(
        c.create_key_with(pb::CreateKeyRequest {
            key_spec: pb::KeySpec::EccNistP256.into(),
            key_usage: pb::KeyUsage::EncryptDecrypt.into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "ValidationException",
    );
    assert!(message.contains("SIGN_VERIFY"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn private_keys_on_the_token_are_sensitive_and_never_extractable() {
    // Token objects for every version, so that the HMAC key's object is here to inspect.
    let env = TestEnv::new().with_token_storage();
    let kmsd = env.start();
    let mut c = kmsd.client().await;
    create(&mut c, pb::KeySpec::Rsa2048, pb::KeyUsage::SignVerify).await;
    create(&mut c, pb::KeySpec::Rsa2048, pb::KeyUsage::EncryptDecrypt).await;
    create(&mut c, pb::KeySpec::EccNistP256, pb::KeyUsage::SignVerify).await;
    create(
        &mut c,
        pb::KeySpec::Hmac384,
        pb::KeyUsage::GenerateVerifyMac,
    )
    .await;
    let listing = env.pkcs11_tool(&["--list-objects"]);
    let text = String::from_utf8_lossy(&listing.stdout);
    // Three key pairs' private halves plus the audit key; no public halves are kept.
    let private: Vec<&str> = text.split("Private Key Object").skip(1).collect();
    assert_eq!(private.len(), 4, "{text}");
    let public: Vec<&str> = text.split("Public Key Object").skip(1).collect();
    assert_eq!(public.len(), 1, "only the audit key's public half: {text}");
    assert!(public[0].contains("kms/audit/"), "{text}");
    let secret: Vec<&str> = text.split("Secret Key Object").skip(1).collect();
    assert_eq!(secret.len(), 1, "{text}");
    for block in private.iter().chain(&secret) {
        let block = block.split("Object").next().unwrap_or(block);
        let line = |name: &str| {
            block
                .lines()
                .find(|l| l.trim_start().starts_with(name))
                .unwrap_or_else(|| panic!("no {name} line in {block}"))
                .to_owned()
        };
        let access = line("Access:");
        for attribute in ["sensitive", "always sensitive", "never extractable"] {
            assert!(access.contains(attribute), "{access}");
        }
        let usage = line("Usage:");
        assert!(!usage.contains("wrap"), "{usage}");
        assert!(
            !(usage.contains("decrypt") && usage.contains("sign")),
            "one use per key: {usage}"
        );
    }
}
