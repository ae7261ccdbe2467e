//! Tests against a real SoftHSM2 token. The fixture reads `TEST_PKCS11_MODULE` and
//! `SOFTHSM2_CONF` (tests/run.sh points it at a scratch config) and initialises a fresh token
//! for each test, so tests never share a token. Without SoftHSM2 they fail, loudly.

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use kms_core::key::KeyMaterial;
use kms_core::{HsmError, KeyId, KeyStore, KeyVersionRef};
use zeroize::Zeroizing;

use super::{HsmConfig, HsmKeyStore, ObjectId, ObjectKind, OpenError};

mod domain;
mod faults;
mod planted;
mod trusted;

pub(super) const PIN: &str = "user-pin-1234";
pub(super) const SO_PIN: &str = "so-pin-5678";
pub(super) const NAMESPACE: [u8; 16] = [0x42; 16];

pub(super) fn module() -> PathBuf {
    let module = std::env::var_os("TEST_PKCS11_MODULE").map_or_else(
        || PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
        PathBuf::from,
    );
    assert!(
        module.exists(),
        "SoftHSM2 module {} not found: run deploy/install-deps.sh, or set TEST_PKCS11_MODULE",
        module.display()
    );
    assert!(
        std::env::var_os("SOFTHSM2_CONF").is_some(),
        "SOFTHSM2_CONF is not set: run the tests with tests/run.sh, or point SOFTHSM2_CONF at a \
         scratch softhsm2.conf (hsm-config/init-token.sh writes one)"
    );
    module
}

pub(super) fn admin() -> &'static Pkcs11 {
    static ADMIN: OnceLock<Pkcs11> = OnceLock::new();
    ADMIN.get_or_init(|| {
        let pkcs11 = Pkcs11::new(module()).unwrap_or_else(|e| panic!("load SoftHSM2: {e}"));
        match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => panic!("initialise SoftHSM2: {e}"),
        }
        pkcs11
    })
}

/// Initialises a fresh token in SoftHSM2's free slot; returns its label and slot.
/// Held while a token is initialised or a store lists the slots to open one: SoftHSM2 2.6
/// aborts the process (an assertion in SlotManager::insertToken) when one thread lists the
/// slots while another initialises a token.
pub(super) static SLOTS: Mutex<()> = Mutex::new(());

/// [`HsmKeyStore::open`], never while a token is being initialised (see [`SLOTS`]).
pub(super) fn open_store_with(
    config: HsmConfig,
    namespace: [u8; 16],
) -> Result<HsmKeyStore, OpenError> {
    let _guard = SLOTS.lock().unwrap_or_else(PoisonError::into_inner);
    HsmKeyStore::open(config, namespace)
}

pub(super) fn fresh_token() -> (String, Slot) {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let _guard = SLOTS.lock().unwrap_or_else(PoisonError::into_inner);
    let pkcs11 = admin();
    let slots = pkcs11.get_all_slots().unwrap_or_else(|e| panic!("{e}"));
    let slot = slots
        .into_iter()
        .find(|s| {
            pkcs11
                .get_token_info(*s)
                .is_ok_and(|info| !info.token_initialized())
        })
        .unwrap_or_else(|| panic!("SoftHSM2 has no free slot"));
    let label = format!(
        "kms-hsm-test-{}-{}",
        std::process::id() % 100_000,
        COUNT.fetch_add(1, Ordering::SeqCst)
    );
    let so_pin = AuthPin::from(SO_PIN);
    pkcs11
        .init_token(slot, &so_pin, &label)
        .unwrap_or_else(|e| panic!("init token: {e}"));
    let session = pkcs11
        .open_rw_session(slot)
        .unwrap_or_else(|e| panic!("{e}"));
    session
        .login(UserType::So, Some(&so_pin))
        .unwrap_or_else(|e| panic!("{e}"));
    session
        .init_pin(&AuthPin::from(PIN))
        .unwrap_or_else(|e| panic!("{e}"));
    session.logout().unwrap_or_else(|e| panic!("{e}"));
    (label, slot)
}

pub(super) fn config(label: &str, pin: &str) -> HsmConfig {
    HsmConfig {
        slot: None,
        module: module(),
        token_label: label.to_owned(),
        pin: Zeroizing::new(pin.to_owned()),
        max_sessions: 4,
        session_wait: std::time::Duration::from_secs(10),
    }
}

fn open_store() -> (HsmKeyStore, Slot) {
    let (label, slot) = fresh_token();
    let store =
        open_store_with(config(&label, PIN), NAMESPACE).unwrap_or_else(|e| panic!("open: {e}"));
    (store, slot)
}

/// A logged-in session of the test's own, to inspect the token from outside the store.
pub(super) fn inspector(slot: Slot) -> Session {
    let session = admin()
        .open_ro_session(slot)
        .unwrap_or_else(|e| panic!("{e}"));
    match session.login(UserType::User, Some(&AuthPin::from(PIN))) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => session,
        Err(e) => panic!("login: {e}"),
    }
}

pub(super) fn version(key_id: KeyId, version: u32) -> KeyVersionRef {
    KeyVersionRef { key_id, version }
}

pub(super) fn ok<T, E: std::fmt::Display + std::fmt::Debug>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}: {e:?}"))
}

#[test]
fn master_secrets_are_sensitive_and_never_leave_the_hsm() {
    let (store, slot) = open_store();
    let key = version(KeyId::random(), 1);
    ok(store.create_key_version(key, KeyMaterial::MasterSecret));

    let session = inspector(slot);
    let id = ObjectId::new(NAMESPACE, key, ObjectKind::MasterSecret).to_bytes();
    let handles = ok(session.find_objects(&[Attribute::Id(id)]));
    assert_eq!(handles.len(), 1, "one HSM object per key version");
    let handle = handles[0];

    // CKA_VALUE cannot be read: CKR_ATTRIBUTE_SENSITIVE.
    let info = ok(session.get_attribute_info(handle, &[AttributeType::Value]));
    assert!(matches!(info[..], [AttributeInfo::Sensitive]), "{info:?}");

    let attributes = ok(session.get_attributes(
        handle,
        &[
            AttributeType::Token,
            AttributeType::Private,
            AttributeType::Sensitive,
            AttributeType::AlwaysSensitive,
            AttributeType::Extractable,
            AttributeType::NeverExtractable,
            AttributeType::Modifiable,
            AttributeType::Sign,
            AttributeType::Encrypt,
            AttributeType::Decrypt,
            AttributeType::Wrap,
            AttributeType::Unwrap,
            AttributeType::Derive,
        ],
    ));
    let expected = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::AlwaysSensitive(true),
        Attribute::Extractable(false),
        Attribute::NeverExtractable(true),
        Attribute::Modifiable(false),
        Attribute::Sign(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
    ];
    assert_eq!(attributes, expected);

    // C_WrapKey with a wrapping key of our own fails.
    let rw = ok(admin().open_rw_session(slot));
    let wrapping = ok(rw.generate_key(
        &Mechanism::AesKeyGen,
        &[
            Attribute::Token(false),
            Attribute::ValueLen(32.into()),
            Attribute::Wrap(true),
            Attribute::Encrypt(true),
        ],
    ));
    let wrapped = rw.wrap_key(&Mechanism::AesKeyWrapPad, wrapping, handle);
    assert!(
        matches!(wrapped, Err(CkError::Pkcs11(RvError::KeyUnextractable, _))),
        "{wrapped:?}"
    );
}

#[test]
fn the_hsm_derivation_matches_the_published_vectors() {
    #[derive(serde::Deserialize)]
    struct Vector {
        master_secret_hex: String,
        key_id: String,
        key_version: u32,
        derivation_input_hex: String,
        k_msg_hex: String,
    }
    let vectors: Vec<Vector> = ok(serde_json::from_str(include_str!(
        "../../../tests/data/symmetric_default_v1.json"
    )));
    let (store, slot) = open_store();
    let session = ok(admin().open_rw_session(slot));
    let _ = session.login(UserType::User, Some(&AuthPin::from(PIN)));
    for v in vectors {
        let key = version(ok(v.key_id.parse::<KeyId>()), v.key_version);
        let id = ObjectId::new(NAMESPACE, key, ObjectKind::MasterSecret);
        // Test only: a master secret with a known value, imported with the custody template.
        let mut template = super::master_secret_template(&id, id.label());
        template.retain(|a| !matches!(a, Attribute::ValueLen(_)));
        template.push(Attribute::Value(ok(hex::decode(&v.master_secret_hex))));
        ok(session.create_object(&template));

        let input = ok(hex::decode(&v.derivation_input_hex));
        let k_msg = ok(store.derive_message_key(key.into(), &input));
        assert_eq!(hex::encode(k_msg.expose_secret()), v.k_msg_hex);
    }
}

#[test]
fn destroy_is_idempotent_and_list_sees_only_this_instance() {
    let (store, _) = open_store();
    let a = version(KeyId::random(), 1);
    let b = version(KeyId::random(), 2);
    ok(store.create_key_version(a, KeyMaterial::MasterSecret));
    ok(store.create_key_version(b, KeyMaterial::MasterSecret));
    let mut listed = ok(store.list_key_versions());
    listed.sort();
    let mut expected = vec![a, b];
    expected.sort();
    assert_eq!(listed, expected);

    ok(store.destroy_key_version(a));
    ok(store.destroy_key_version(a));
    assert_eq!(ok(store.list_key_versions()), vec![b]);
    assert!(matches!(
        store.derive_message_key(a.into(), b"x"),
        Err(HsmError::ObjectNotFound(_))
    ));
    assert_eq!(
        ok(store.derive_message_key(b.into(), b"x"))
            .expose_secret()
            .len(),
        32
    );
}

#[test]
fn another_instance_never_sees_these_objects() {
    let (label, _) = fresh_token();
    let mine = ok(open_store_with(config(&label, PIN), NAMESPACE));
    let theirs = ok(open_store_with(config(&label, PIN), [0x24; 16]));
    let key = version(KeyId::random(), 1);
    ok(mine.create_key_version(key, KeyMaterial::MasterSecret));
    assert!(ok(theirs.list_key_versions()).is_empty());
    ok(theirs.destroy_key_version(key));
    assert_eq!(ok(mine.list_key_versions()), vec![key]);
}

#[test]
fn random_bytes_come_in_the_length_asked() {
    let (store, _) = open_store();
    let a = ok(store.random_bytes(1024));
    let b = ok(store.random_bytes(1024));
    assert_eq!(a.len(), 1024);
    assert_ne!(*a, *b);
    assert_eq!(ok(store.random_bytes(1)).len(), 1);
}

#[test]
fn a_lost_session_is_reopened_and_an_idempotent_call_retried_once() {
    let (store, _) = open_store();
    let calls = Cell::new(0);
    let lost = || {
        CkError::Pkcs11(
            RvError::SessionHandleInvalid,
            cryptoki::context::Function::Sign,
        )
    };
    let result = store.with_session("test", true, |_| {
        calls.set(calls.get() + 1);
        if calls.get() == 1 { Err(lost()) } else { Ok(7) }
    });
    assert_eq!(result.ok(), Some(7));
    assert_eq!(calls.get(), 2);

    // Not idempotent: no retry, and the caller learns the HSM is unavailable.
    calls.set(0);
    let result = store.with_session("test", false, |_| {
        calls.set(calls.get() + 1);
        Err::<(), _>(lost())
    });
    assert!(matches!(result, Err(HsmError::Unavailable(_))));
    assert_eq!(calls.get(), 1);

    // Lost twice: one retry only.
    calls.set(0);
    let result = store.with_session("test", true, |_| {
        calls.set(calls.get() + 1);
        Err::<(), _>(lost())
    });
    assert!(matches!(result, Err(HsmError::Unavailable(_))));
    assert_eq!(calls.get(), 2);

    // The pool still works after discarding sessions.
    assert_eq!(ok(store.random_bytes(8)).len(), 8);
}

#[test]
fn wrong_pin_label_or_module_are_refused_with_a_clear_message() {
    let (label, _) = fresh_token();
    let wrong_pin = open_store_with(config(&label, "not-the-pin"), NAMESPACE).err();
    let message = wrong_pin
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(matches!(wrong_pin, Some(OpenError::Login(_))), "{message}");
    assert!(message.contains("PIN is wrong"), "{message}");

    let missing = open_store_with(config("no-such-token", PIN), NAMESPACE)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        missing.contains("no token labelled \"no-such-token\""),
        "{missing}"
    );
    assert!(
        missing.contains(&label),
        "lists the tokens present: {missing}"
    );

    let mut bad_module = config(&label, PIN);
    bad_module.module = PathBuf::from("/nonexistent/libpkcs11.so");
    let error = open_store_with(bad_module, NAMESPACE)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        error.contains("cannot load the PKCS#11 module /nonexistent/libpkcs11.so"),
        "{error}"
    );
}

#[test]
fn the_master_secret_template_never_combines_wrap_with_decrypt() {
    let id = ObjectId::new(
        NAMESPACE,
        version(KeyId::random(), 1),
        ObjectKind::MasterSecret,
    );
    let template = super::master_secret_template(&id, id.label());
    let has = |a: &Attribute| template.contains(a);
    assert!(has(&Attribute::Sensitive(true)) && has(&Attribute::Extractable(false)));
    assert!(!(has(&Attribute::Wrap(true)) && has(&Attribute::Decrypt(true))));
    assert!(!(has(&Attribute::Unwrap(true)) && has(&Attribute::Encrypt(true))));
    assert!(
        template
            .iter()
            .any(|a| matches!(a, Attribute::KeyType(k) if *k == KeyType::GENERIC_SECRET))
    );
    assert!(
        template
            .iter()
            .any(|a| matches!(a, Attribute::Class(c) if *c == ObjectClass::SECRET_KEY))
    );
}

#[test]
fn a_call_that_finds_every_session_busy_times_out() {
    let (label, _) = fresh_token();
    let mut one = config(&label, PIN);
    one.max_sessions = 1;
    one.session_wait = std::time::Duration::from_millis(200);
    let store = ok(open_store_with(one, NAMESPACE));
    let connection = store
        .connection
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let held = connection
        .as_ref()
        .map(|pool| pool.get().map_err(|e| format!("{e:?}")));
    assert!(matches!(held, Some(Ok(_))));
    assert_eq!(
        store.session_stats(),
        crate::SessionStats {
            open: 1,
            in_use: 1,
            max: 1,
            connected: true
        }
    );
    assert!(matches!(store.random_bytes(4), Err(HsmError::Timeout)));
    drop(held);
    drop(connection);
    assert_eq!(ok(store.random_bytes(4)).len(), 4);
}

/// The attributes of the one private or secret object the store keeps for `key`.
fn custody(session: &Session, id: Vec<u8>, class: ObjectClass) -> Vec<Attribute> {
    let handles = ok(session.find_objects(&[Attribute::Id(id.clone())]));
    assert_eq!(
        handles.len(),
        1,
        "exactly one object per key version (public halves are not kept)"
    );
    let handle = ok(session.find_objects(&[Attribute::Class(class), Attribute::Id(id)]))[0];
    let secret = if class == ObjectClass::PRIVATE_KEY {
        AttributeType::PrivateExponent
    } else {
        AttributeType::Value
    };
    let info = ok(session.get_attribute_info(handle, &[secret]));
    assert!(
        matches!(
            info[..],
            [AttributeInfo::Sensitive | AttributeInfo::TypeInvalid]
        ),
        "{info:?}"
    );
    ok(session.get_attributes(
        handle,
        &[
            AttributeType::Token,
            AttributeType::Private,
            AttributeType::Sensitive,
            AttributeType::Extractable,
            AttributeType::Modifiable,
            AttributeType::Sign,
            AttributeType::Decrypt,
            AttributeType::Unwrap,
            AttributeType::Derive,
        ],
    ))
}

fn expected_custody(sign: bool, decrypt: bool, unwrap: bool) -> Vec<Attribute> {
    vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Modifiable(false),
        Attribute::Sign(sign),
        Attribute::Decrypt(decrypt),
        Attribute::Unwrap(unwrap),
        Attribute::Derive(false),
    ]
}

#[test]
fn key_pairs_and_hmac_keys_keep_custody_and_sign_verifiably() {
    use kms_core::asymmetric::{self, HashAlg, MessageType, SigningAlgorithm};
    use kms_core::hsm::SignMechanism;
    use kms_core::key::MacAlgorithm;

    let (store, slot) = open_store();
    let session = inspector(slot);
    let message = b"sign me in the HSM";

    let rsa = version(KeyId::random(), 1);
    let spki = ok(store.create_key_version(rsa, KeyMaterial::RsaSign { bits: 2048 }))
        .unwrap_or_else(|| panic!("an RSA key has a public key"));
    assert_eq!(ok(asymmetric::rsa_modulus_bits(&spki)), 2048);
    assert_eq!(
        custody(
            &session,
            ObjectId::new(NAMESPACE, rsa, ObjectKind::RsaSign).to_bytes(),
            ObjectClass::PRIVATE_KEY
        ),
        expected_custody(true, false, false)
    );
    for algorithm in SigningAlgorithm::RSA {
        let digest = ok(asymmetric::message_digest(
            algorithm,
            MessageType::Raw,
            message,
        ));
        let (mechanism, data) = match algorithm {
            SigningAlgorithm::RsassaPkcs1V15Sha256
            | SigningAlgorithm::RsassaPkcs1V15Sha384
            | SigningAlgorithm::RsassaPkcs1V15Sha512 => (
                SignMechanism::RsaPkcs1,
                asymmetric::pkcs1_digest_info(algorithm.hash(), &digest),
            ),
            _ => (SignMechanism::RsaPss(algorithm.hash()), digest.clone()),
        };
        let signature = ok(store.sign(
            rsa.into(),
            KeyMaterial::RsaSign { bits: 2048 },
            mechanism,
            &data,
        ));
        assert!(
            ok(asymmetric::verify(&spki, algorithm, &digest, &signature)),
            "{algorithm:?}"
        );
        let other = ok(asymmetric::message_digest(
            algorithm,
            MessageType::Raw,
            b"other",
        ));
        assert!(!ok(asymmetric::verify(
            &spki, algorithm, &other, &signature
        )));
    }

    let ec = version(KeyId::random(), 1);
    let ec_spki = ok(store.create_key_version(ec, KeyMaterial::EcP256Sign))
        .unwrap_or_else(|| panic!("an EC key has a public key"));
    assert_eq!(
        custody(
            &session,
            ObjectId::new(NAMESPACE, ec, ObjectKind::EcP256Sign).to_bytes(),
            ObjectClass::PRIVATE_KEY
        ),
        expected_custody(true, false, false)
    );
    let digest = HashAlg::Sha256.digest(message);
    let der = ok(asymmetric::ecdsa_raw_to_der(&ok(store.sign(
        ec.into(),
        KeyMaterial::EcP256Sign,
        SignMechanism::Ecdsa,
        &digest,
    ))));
    assert!(ok(asymmetric::verify(
        &ec_spki,
        SigningAlgorithm::EcdsaSha256,
        &digest,
        &der
    )));

    let hmac = version(KeyId::random(), 1);
    let hmac384 = KeyMaterial::HmacSecret(MacAlgorithm::HmacSha384);
    assert!(ok(store.create_key_version(hmac, hmac384)).is_none());
    assert_eq!(
        custody(
            &session,
            ObjectId::new(NAMESPACE, hmac, ObjectKind::HmacSha384).to_bytes(),
            ObjectClass::SECRET_KEY
        ),
        expected_custody(true, false, false)
    );
    let mac = || {
        let mechanism = SignMechanism::Hmac(MacAlgorithm::HmacSha384);
        ok(store.sign(hmac.into(), hmac384, mechanism, message))
    };
    assert_eq!(mac().len(), 48);
    assert_eq!(mac(), mac(), "an HMAC is deterministic");

    let mut listed = ok(store.list_key_versions());
    listed.sort();
    let mut expected = vec![rsa, ec, hmac];
    expected.sort();
    assert_eq!(listed, expected, "private keys are listed like secrets");
}

#[test]
fn rsa_keys_decrypt_oaep_with_sha1_and_sha256_in_the_hsm() {
    use kms_core::asymmetric::{self, HashAlg};

    let (store, slot) = open_store();
    let key = version(KeyId::random(), 1);
    let spki = ok(store.create_key_version(key, KeyMaterial::RsaDecrypt { bits: 2048 }))
        .unwrap_or_else(|| panic!("an RSA key has a public key"));
    assert_eq!(
        custody(
            &inspector(slot),
            ObjectId::new(NAMESPACE, key, ObjectKind::RsaDecrypt).to_bytes(),
            ObjectClass::PRIVATE_KEY
        ),
        expected_custody(false, true, false)
    );
    for hash in [HashAlg::Sha1, HashAlg::Sha256] {
        let ciphertext = ok(asymmetric::oaep_encrypt(&spki, hash, b"for the HSM only"));
        let plaintext = ok(store.rsa_decrypt(key.into(), hash, &ciphertext));
        assert_eq!(plaintext.as_slice(), b"for the HSM only", "{hash:?}");
        let mut altered = ciphertext.clone();
        altered[10] ^= 1;
        let result = store.rsa_decrypt(key.into(), hash, &altered);
        assert!(
            matches!(result, Err(HsmError::Rejected { .. })),
            "{hash:?}: {:?}",
            result.map(|p| p.len())
        );
        let short = store.rsa_decrypt(key.into(), hash, &ciphertext[1..]);
        assert!(
            matches!(short, Err(HsmError::Rejected { .. })),
            "{hash:?}: {:?}",
            short.map(|p| p.len())
        );
    }
    let sha1 = ok(asymmetric::oaep_encrypt(&spki, HashAlg::Sha1, b"x"));
    assert!(matches!(
        store.rsa_decrypt(key.into(), HashAlg::Sha256, &sha1),
        Err(HsmError::Rejected { .. })
    ));
}

#[test]
fn imported_material_is_unwrapped_in_the_hsm_with_custody() {
    use kms_core::asymmetric;
    use kms_core::hsm::WrappingKeyRef;
    use kms_core::key::WrappingAlgorithm;

    let (store, slot) = open_store();
    let key_id = KeyId::random();
    let wrapping = WrappingKeyRef { key_id, serial: 1 };
    let public = ok(store.create_wrapping_key(wrapping, 3072, WrappingAlgorithm::RsaesOaepSha1));
    assert_eq!(ok(asymmetric::rsa_modulus_bits(&public)), 3072);
    assert_eq!(ok(store.list_wrapping_keys()), vec![wrapping]);
    let session = inspector(slot);
    assert_eq!(
        custody(
            &session,
            super::object_id::wrapping_id(NAMESPACE, wrapping),
            ObjectClass::PRIVATE_KEY
        ),
        expected_custody(false, false, true),
        "the wrapping key only unwraps"
    );

    // The first published vector's master secret, imported: the derivation must match.
    let vector: serde_json::Value = ok(serde_json::from_str(include_str!(
        "../../../tests/data/symmetric_default_v1.json"
    )));
    let vector = &vector[0];
    let text = |field: &str| vector[field].as_str().unwrap_or_default().to_owned();
    let material = ok(hex::decode(text("master_secret_hex")));
    let wrapped = ok(asymmetric::oaep_encrypt(
        &public,
        kms_core::asymmetric::HashAlg::Sha1,
        &material,
    ));
    let key = version(key_id, 1);
    let length = ok(store.unwrap_key_version(
        key,
        KeyMaterial::MasterSecret,
        wrapping,
        WrappingAlgorithm::RsaesOaepSha1,
        &wrapped,
    ));
    assert!(matches!(length, Some(32) | None), "{length:?}");
    let input = ok(hex::decode(text("derivation_input_hex")));
    assert_eq!(
        hex::encode(ok(store.derive_message_key(key.into(), &input)).expose_secret()),
        text("k_msg_hex")
    );
    assert_eq!(
        custody(
            &session,
            ObjectId::new(NAMESPACE, key, ObjectKind::MasterSecret).to_bytes(),
            ObjectClass::SECRET_KEY
        ),
        expected_custody(true, false, false)
    );

    // Wrapped data that does not unwrap is refused as such.
    let mut altered = wrapped.clone();
    altered[5] ^= 1;
    assert!(matches!(
        store.unwrap_key_version(
            key,
            KeyMaterial::MasterSecret,
            wrapping,
            WrappingAlgorithm::RsaesOaepSha1,
            &altered
        ),
        Err(HsmError::Rejected { .. })
    ));

    ok(store.destroy_wrapping_key(wrapping));
    assert!(ok(store.list_wrapping_keys()).is_empty());

    // SHA-256 unwrapping: either the module supports it, or the wrapping key is refused at
    // once and nothing is left on the token (SoftHSM2 2.6).
    let second = WrappingKeyRef { key_id, serial: 2 };
    match store.create_wrapping_key(second, 3072, WrappingAlgorithm::RsaesOaepSha256) {
        Ok(_) => assert_eq!(ok(store.list_wrapping_keys()), vec![second]),
        Err(HsmError::Unsupported { detail, .. }) => {
            assert!(detail.contains("RSAES_OAEP_SHA_256"), "{detail}");
            assert!(ok(store.list_wrapping_keys()).is_empty());
        }
        Err(e) => panic!("{e}"),
    }
}

/// Finding 1 of the security review: a master secret and an HMAC key had the same template
/// and were found by CKA_ID alone, so an HMAC key could stand in for a master secret. The kind
/// is now part of the CKA_ID, and CKA_ALLOWED_MECHANISMS limits each object to its own MAC.
#[test]
fn a_key_versions_material_kind_is_part_of_its_identity_in_the_hsm() {
    use cryptoki::mechanism::MechanismType;
    use kms_core::hsm::SignMechanism;
    use kms_core::key::MacAlgorithm;

    let (store, slot) = open_store();
    let hmac_material = KeyMaterial::HmacSecret(MacAlgorithm::HmacSha256);
    let hmac = version(KeyId::random(), 1);
    ok(store.create_key_version(hmac, hmac_material));
    let input = b"the derivation input of a forged blob";
    assert!(matches!(
        store.derive_message_key(hmac.into(), input),
        Err(HsmError::ObjectNotFound(_))
    ));
    ok(store.sign(
        hmac.into(),
        hmac_material,
        SignMechanism::Hmac(MacAlgorithm::HmacSha256),
        input,
    ));

    let master = version(KeyId::random(), 1);
    ok(store.create_key_version(master, KeyMaterial::MasterSecret));
    assert!(matches!(
        store.sign(
            master.into(),
            hmac_material,
            SignMechanism::Hmac(MacAlgorithm::HmacSha256),
            input
        ),
        Err(HsmError::ObjectNotFound(_))
    ));
    ok(store.derive_message_key(master.into(), input));

    // The HSM itself refuses any mechanism but the object's own.
    let session = inspector(slot);
    let id = ObjectId::new(NAMESPACE, master, ObjectKind::MasterSecret).to_bytes();
    let handle = ok(session.find_objects(&[Attribute::Id(id)]))[0];
    assert_eq!(
        ok(session.get_attributes(handle, &[AttributeType::AllowedMechanisms])),
        vec![Attribute::AllowedMechanisms(vec![
            MechanismType::SHA256_HMAC
        ])]
    );
    let refused = session.sign(&Mechanism::Sha1Hmac, handle, input);
    assert!(
        matches!(
            refused,
            Err(CkError::Pkcs11(
                RvError::MechanismInvalid | RvError::KeyFunctionNotPermitted,
                _
            ))
        ),
        "{refused:?}"
    );

    // Destruction finds every kind.
    ok(store.destroy_key_version(hmac));
    ok(store.destroy_key_version(master));
    assert!(ok(store.list_key_versions()).is_empty());
}

/// Objects made before kinds were named ("kms1" CKA_IDs) are still found, so the blobs of
/// old keys keep decrypting, and destroyed with the key.
#[test]
fn legacy_objects_without_a_kind_still_serve_and_are_destroyed() {
    let (store, slot) = open_store();
    let key = version(KeyId::random(), 1);
    let id = ObjectId::legacy(NAMESPACE, key);
    let session = ok(admin().open_rw_session(slot));
    let _ = session.login(UserType::User, Some(&AuthPin::from(PIN)));
    let mut template = super::master_secret_template(&id, id.label());
    template.retain(|a| !matches!(a, Attribute::ValueLen(_)));
    template.push(Attribute::Value(vec![7; 32]));
    ok(session.create_object(&template));
    ok(store.derive_message_key(key.into(), b"input"));
    assert_eq!(ok(store.list_key_versions()), vec![key]);
    ok(store.destroy_key_version(key));
    assert!(ok(store.list_key_versions()).is_empty());
}
