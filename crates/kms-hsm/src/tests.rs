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
use kms_core::{HsmError, KeyId, KeyStore, KeyVersionRef};
use zeroize::Zeroizing;

use super::{HsmConfig, HsmKeyStore, ObjectId, OpenError};

const PIN: &str = "user-pin-1234";
const SO_PIN: &str = "so-pin-5678";
const NAMESPACE: [u8; 16] = [0x42; 16];

fn module() -> PathBuf {
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

fn admin() -> &'static Pkcs11 {
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
fn fresh_token() -> (String, Slot) {
    static LOCK: Mutex<()> = Mutex::new(());
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let _guard = LOCK.lock().unwrap_or_else(PoisonError::into_inner);
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

fn config(label: &str, pin: &str) -> HsmConfig {
    HsmConfig {
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
        HsmKeyStore::open(config(&label, PIN), NAMESPACE).unwrap_or_else(|e| panic!("open: {e}"));
    (store, slot)
}

/// A logged-in session of the test's own, to inspect the token from outside the store.
fn inspector(slot: Slot) -> Session {
    let session = admin()
        .open_ro_session(slot)
        .unwrap_or_else(|e| panic!("{e}"));
    match session.login(UserType::User, Some(&AuthPin::from(PIN))) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => session,
        Err(e) => panic!("login: {e}"),
    }
}

fn version(key_id: KeyId, version: u32) -> KeyVersionRef {
    KeyVersionRef { key_id, version }
}

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn master_secrets_are_sensitive_and_never_leave_the_hsm() {
    let (store, slot) = open_store();
    let key = version(KeyId::random(), 1);
    ok(store.create_key_version(key));

    let session = inspector(slot);
    let id = ObjectId::new(NAMESPACE, key).to_bytes();
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
        let id = ObjectId::new(NAMESPACE, key);
        // Test only: a master secret with a known value, imported with the custody template.
        let mut template = super::master_secret_template(&id, id.label());
        template.retain(|a| !matches!(a, Attribute::ValueLen(_)));
        template.push(Attribute::Value(ok(hex::decode(&v.master_secret_hex))));
        ok(session.create_object(&template));

        let input = ok(hex::decode(&v.derivation_input_hex));
        let k_msg = ok(store.derive_message_key(key, &input));
        assert_eq!(hex::encode(k_msg.expose_secret()), v.k_msg_hex);
    }
}

#[test]
fn destroy_is_idempotent_and_list_sees_only_this_instance() {
    let (store, _) = open_store();
    let a = version(KeyId::random(), 1);
    let b = version(KeyId::random(), 2);
    ok(store.create_key_version(a));
    ok(store.create_key_version(b));
    let mut listed = ok(store.list_key_versions());
    listed.sort();
    let mut expected = vec![a, b];
    expected.sort();
    assert_eq!(listed, expected);

    ok(store.destroy_key_version(a));
    ok(store.destroy_key_version(a));
    assert_eq!(ok(store.list_key_versions()), vec![b]);
    assert!(matches!(
        store.derive_message_key(a, b"x"),
        Err(HsmError::ObjectNotFound(_))
    ));
    assert_eq!(
        ok(store.derive_message_key(b, b"x")).expose_secret().len(),
        32
    );
}

#[test]
fn another_instance_never_sees_these_objects() {
    let (label, _) = fresh_token();
    let mine = ok(HsmKeyStore::open(config(&label, PIN), NAMESPACE));
    let theirs = ok(HsmKeyStore::open(config(&label, PIN), [0x24; 16]));
    let key = version(KeyId::random(), 1);
    ok(mine.create_key_version(key));
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
    let wrong_pin = HsmKeyStore::open(config(&label, "not-the-pin"), NAMESPACE).err();
    let message = wrong_pin
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(matches!(wrong_pin, Some(OpenError::Login(_))), "{message}");
    assert!(message.contains("PIN is wrong"), "{message}");

    let missing = HsmKeyStore::open(config("no-such-token", PIN), NAMESPACE)
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
    let error = HsmKeyStore::open(bad_module, NAMESPACE)
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
    let id = ObjectId::new(NAMESPACE, version(KeyId::random(), 1));
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
    let store = ok(HsmKeyStore::open(one, NAMESPACE));
    let held = store.pool.get().map_err(|e| format!("{e:?}"));
    assert!(held.is_ok());
    assert!(matches!(store.random_bytes(4), Err(HsmError::Timeout)));
    drop(held);
    assert_eq!(ok(store.random_bytes(4)).len(), 4);
}
