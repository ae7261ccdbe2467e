//! Importing key material (origin EXTERNAL): wrapped by Python's `cryptography` with the
//! wrapping key the HSM made, unwrapped in the HSM, and checked against the documented
//! ciphertext format offline.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kms_client::KmsClient;
use kms_client::v1 as pb;
use kms_e2e::TestEnv;
use tonic::Code;

use crate::{ctx, expect_error, python_ops};

async fn external_key(c: &mut KmsClient, spec: pb::KeySpec) -> String {
    let key = c
        .create_key_with(pb::CreateKeyRequest {
            description: "bring your own key".into(),
            key_spec: spec.into(),
            origin: pb::OriginType::External.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(key.key_state(), pb::KeyState::PendingImport);
    assert_eq!(key.origin(), pb::OriginType::External);
    key.key_id
}

/// GetParametersForImport (RSAES_OAEP_SHA_1, which every HSM here unwraps), then the
/// material wrapped by Python; returns (import_token, wrapped material).
async fn wrap(c: &mut KmsClient, key_id: &str, material: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let parameters = c
        .get_parameters_for_import(
            key_id,
            pb::WrappingAlgorithm::RsaesOaepSha1,
            pb::WrappingKeySpec::Rsa3072,
        )
        .await
        .unwrap();
    let valid_to = parameters.parameters_valid_to.unwrap().seconds;
    let now = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    assert!((valid_to - now - 86_400).abs() < 60, "valid for 24 hours");
    let wrapped = python_ops(&[
        "encrypt",
        &hex::encode(&parameters.public_key),
        "sha1",
        &hex::encode(material),
    ])
    .unwrap();
    (parameters.import_token, hex::decode(wrapped).unwrap())
}

fn import_request(key_id: &str, token: Vec<u8>, wrapped: Vec<u8>) -> pb::ImportKeyMaterialRequest {
    pb::ImportKeyMaterialRequest {
        key_id: key_id.to_owned(),
        import_token: token,
        encrypted_key_material: wrapped,
        expiration_model: pb::ExpirationModel::KeyMaterialDoesNotExpire.into(),
        valid_to: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn imported_material_makes_blobs_that_open_offline_and_never_changes() {
    let env = TestEnv::new();
    let kmsd = env.start();
    let mut c = kmsd.client().await;
    let key = external_key(&mut c, pb::KeySpec::SymmetricDefault).await;
    expect_error(
        c.encrypt(&key, b"too early", &ctx(&[])).await,
        Code::FailedPrecondition,
        "KMSInvalidStateException",
    );
    let material: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
    let (token, wrapped) = wrap(&mut c, &key, &material).await;

    // A token that is not the key's, and material that does not unwrap.
    let mut forged = token.clone();
    forged[30] ^= 1;
    expect_error(
        c.import_key_material(import_request(&key, forged, wrapped.clone()))
            .await,
        Code::InvalidArgument,
        "InvalidImportTokenException",
    );
    let mut garbled = wrapped.clone();
    garbled[7] ^= 1;
    expect_error(
        c.import_key_material(import_request(&key, token.clone(), garbled))
            .await,
        Code::InvalidArgument,
        "InvalidCiphertextException",
    );
    assert_eq!(
        c.describe_key(&key).await.unwrap().key_state(),
        pb::KeyState::PendingImport,
        "a refused import leaves no material"
    );

    c.import_key_material(import_request(&key, token.clone(), wrapped.clone()))
        .await
        .unwrap();
    let described = c.describe_key(&key).await.unwrap();
    assert_eq!(described.key_state(), pb::KeyState::Enabled);
    assert_eq!(
        described.expiration_model(),
        pb::ExpirationModel::KeyMaterialDoesNotExpire
    );
    // The token was used up with its wrapping key.
    expect_error(
        c.import_key_material(import_request(&key, token, wrapped))
            .await,
        Code::FailedPrecondition,
        "KMSInvalidStateException",
    );

    // Anyone with the material can open the service's blobs with the README's format.
    let context = ctx(&[("tenant", "acme")]);
    let blob = c
        .encrypt(&key, b"made with my own key", &context)
        .await
        .unwrap()
        .ciphertext_blob;
    let opened = python_ops(&[
        "open-blob",
        &hex::encode(&material),
        &hex::encode(&blob),
        r#"{"tenant": "acme"}"#,
    ])
    .unwrap();
    assert_eq!(hex::decode(opened).unwrap(), b"made with my own key");

    // Deleting the material: PendingImport, nothing decrypts.
    c.delete_imported_key_material(&key).await.unwrap();
    assert_eq!(
        c.describe_key(&key).await.unwrap().key_state(),
        pb::KeyState::PendingImport
    );
    expect_error(
        c.decrypt(&blob, &context, None).await,
        Code::FailedPrecondition,
        "KMSInvalidStateException",
    );
    // Other material is refused; the same material brings the key back.
    let other = [9u8; 32];
    let (token, wrapped) = wrap(&mut c, &key, &other).await;
    expect_error(
        c.import_key_material(import_request(&key, token, wrapped))
            .await,
        Code::InvalidArgument,
        "IncorrectKeyMaterialException",
    );
    let (token, wrapped) = wrap(&mut c, &key, &material).await;
    c.import_key_material(import_request(&key, token, wrapped))
        .await
        .unwrap();
    let plaintext = c.decrypt(&blob, &context, None).await.unwrap();
    assert_eq!(plaintext.plaintext.as_slice(), b"made with my own key");

    // The material is kept wrapped under the domain key: the token holds the domain's two
    // keys, sensitive and never extractable, and nothing of the import; no wrapping key is
    // left.
    let listing = env.pkcs11_tool(&["--list-objects"]);
    let text = String::from_utf8_lossy(&listing.stdout);
    let secrets: Vec<&str> = text.split("Secret Key Object").skip(1).collect();
    assert_eq!(secrets.len(), 2, "{text}");
    assert!(env.hsm_key_labels().is_empty(), "{text}");
    for secret in secrets {
        let access = secret
            .lines()
            .find(|l| l.trim_start().starts_with("Access:"))
            .unwrap();
        assert!(access.contains("sensitive"), "{access}");
        assert!(
            !access
                .trim_start()
                .trim_start_matches("Access:")
                .split(',')
                .any(|flag| flag.trim() == "extractable"),
            "{access}"
        );
    }
    let private: Vec<&str> = text.split("Private Key Object").skip(1).collect();
    assert_eq!(
        private.len(),
        1,
        "only the audit key; wrapping keys are destroyed: {text}"
    );
    let read = env.pkcs11_tool(&[
        "--read-object",
        "--type",
        "secrkey",
        "--label",
        &format!("kms/{key}/v1"),
    ]);
    assert!(!read.status.success(), "pkcs11-tool read imported material");

    // Keys made in the HSM take no material.
    let own = c.create_key("generated").await.unwrap().key_id;
    expect_error(
        c.get_parameters_for_import(
            &own,
            pb::WrappingAlgorithm::RsaesOaepSha1,
            pb::WrappingKeySpec::Rsa3072,
        )
        .await,
        Code::Unimplemented,
        "UnsupportedOperationException",
    );
    // RSAES_OAEP_SHA_256: real HSMs unwrap with it; SoftHSM2 2.6 cannot, and says so.
    let sha256 = external_key(&mut c, pb::KeySpec::SymmetricDefault).await;
    match c
        .get_parameters_for_import(
            &sha256,
            pb::WrappingAlgorithm::RsaesOaepSha256,
            pb::WrappingKeySpec::Rsa4096,
        )
        .await
    {
        Ok(parameters) => assert!(!parameters.public_key.is_empty()),
        Err(e) => {
            assert_eq!(e.code(), Code::Unimplemented, "{e}");
            assert!(e.to_string().contains("RSAES_OAEP_SHA_256"), "{e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn imported_hmac_material_gives_the_macs_python_computes() {
    let env = TestEnv::new();
    let kmsd = env.start();
    let mut c = kmsd.client().await;
    let key = external_key(&mut c, pb::KeySpec::Hmac384).await;
    // Too short for HMAC-SHA-384, wrapped by another client than kmsctl: the HSM's refusal to
    // MAC with it is a ValidationException, and the key stays without material.
    let (token, wrapped) = wrap(&mut c, &key, &[0x42u8; 40]).await;
    let message = expect_error(
        c.import_key_material(import_request(&key, token, wrapped))
            .await,
        Code::InvalidArgument,
        "ValidationException",
    );
    assert!(message.contains("48 to 128"), "{message}");
    assert_eq!(
        c.describe_key(&key).await.unwrap().key_state(),
        pb::KeyState::PendingImport
    );
    let symmetric = external_key(&mut c, pb::KeySpec::SymmetricDefault).await;
    let (token, wrapped) = wrap(&mut c, &symmetric, &[1u8; 16]).await;
    expect_error(
        c.import_key_material(import_request(&symmetric, token, wrapped))
            .await,
        Code::InvalidArgument,
        "ValidationException",
    );

    let material = [0x42u8; 48];
    let (token, wrapped) = wrap(&mut c, &key, &material).await;
    c.import_key_material(import_request(&key, token, wrapped))
        .await
        .unwrap();
    let mac = c
        .generate_mac(&key, b"webhook body", pb::MacAlgorithm::HmacSha384)
        .await
        .unwrap()
        .mac;
    let expected = python_ops(&[
        "hmac",
        "sha384",
        &hex::encode(material),
        &hex::encode(b"webhook body"),
    ])
    .unwrap();
    assert_eq!(hex::encode(mac), expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn imported_material_expires_at_valid_to() {
    let env = TestEnv::new();
    let kmsd = env.start();
    let mut c = kmsd.client().await;
    let key = external_key(&mut c, pb::KeySpec::SymmetricDefault).await;
    let (token, wrapped) = wrap(&mut c, &key, &[3u8; 32]).await;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let mut request = import_request(&key, token.clone(), wrapped.clone());
    request.expiration_model = pb::ExpirationModel::KeyMaterialExpires.into();
    expect_error(
        c.import_key_material(request.clone()).await,
        Code::InvalidArgument,
        "ValidationException",
    );
    let valid_to = now.as_secs() + 3;
    request.valid_to = Some(prost_types::Timestamp {
        seconds: i64::try_from(valid_to).unwrap(),
        nanos: 0,
    });
    c.import_key_material(request).await.unwrap();
    let described = c.describe_key(&key).await.unwrap();
    assert_eq!(
        described.expiration_model(),
        pb::ExpirationModel::KeyMaterialExpires
    );
    assert!(described.valid_to.is_some());
    c.encrypt(&key, b"while it lasts", &ctx(&[])).await.unwrap();

    // The key turns PendingImport at valid_to: Enabled in every answer to a question asked
    // before it, PendingImport in the first answer after it.
    let valid_to = UNIX_EPOCH + Duration::from_secs(valid_to);
    loop {
        let asked = SystemTime::now();
        let state = c.describe_key(&key).await.unwrap().key_state();
        let answered = SystemTime::now();
        match state {
            pb::KeyState::Enabled => assert!(asked < valid_to, "still Enabled after valid_to"),
            pb::KeyState::PendingImport => {
                assert!(answered >= valid_to, "expired before valid_to");
                break;
            }
            other => panic!("{other:?} while waiting for the material to expire"),
        }
        assert!(
            answered < valid_to + Duration::from_secs(10),
            "not expired 10 s after valid_to"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    expect_error(
        c.encrypt(&key, b"too late", &ctx(&[])).await,
        Code::FailedPrecondition,
        "KMSInvalidStateException",
    );
    assert_eq!(
        c.describe_key(&key).await.unwrap().key_state(),
        pb::KeyState::PendingImport
    );
}
