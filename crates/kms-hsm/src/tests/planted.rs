//! A PIN holder plants domain keys of their own on the token, with the CKA_ID kmsd looks
//! for, so that new key versions get wrapped under a key whose unwrapped copies they can
//! read. kmsd must refuse such a domain rather than wrap under it.

use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use kms_core::key::{KeyMaterial, WrappedMaterial};
use kms_core::{KeyId, KeyStore};

use super::{NAMESPACE, PIN, admin, config, fresh_token, ok, version};
use crate::domain::{
    self, BoolTemplate, DomainCustody, DomainRole, domain_key_template, unwrap_template,
};

/// The PIN holder's own logged-in session.
fn pin_holder(slot: Slot) -> Session {
    let session = ok(admin().open_rw_session(slot));
    match session.login(UserType::User, Some(&AuthPin::from(PIN))) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {
        }
        Err(e) => panic!("login: {e}"),
    }
    session
}

/// The CKA_ID of kmsd's current wrap key.
fn wrap_id() -> Vec<u8> {
    domain::domain_id(NAMESPACE, domain::FIRST_DOMAIN, DomainRole::Wrap)
}

/// Whether the PIN holder, with `key` (a domain key or a twin of it), unwraps `wrapped` into
/// a copy whose value they can read.
fn readable_under(session: &Session, key: ObjectHandle, wrapped: &WrappedMaterial) -> bool {
    let request = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
    ];
    let Ok(copy) = session.unwrap_key(&Mechanism::AesKeyWrapPad, key, &wrapped.wrapped, &request)
    else {
        return false;
    };
    matches!(
        session.get_attributes(copy, &[AttributeType::Value]).as_deref(),
        Ok([Attribute::Value(v)]) if v.len() == 32
    )
}

/// A wrap key generated on the token, custody as kmsd's but without the unwrap template.
fn plant_without_template(session: &Session, id: Vec<u8>) -> ObjectHandle {
    let unwrapped = unwrap_template(DomainCustody::Sealed);
    let mut template = domain_key_template(
        id,
        "kms/domain/1/wrap".into(),
        &unwrapped,
        None,
        crate::domain::DEFAULT_WRAP,
    );
    template.retain(|a| !matches!(a, Attribute::VendorDefined(_)));
    ok(session.generate_key(&Mechanism::AesKeyGen, &template))
}

/// Makes a master secret through kmsd's key store: the wrapped material, or `None` when the
/// store refused.
fn make_version(label: &str) -> Option<WrappedMaterial> {
    let store = ok(crate::tests::open_store_with(config(label, PIN), NAMESPACE));
    store
        .create_wrapped_version(version(KeyId::random(), 1), KeyMaterial::MasterSecret)
        .ok()
        .map(|(wrapped, _)| wrapped)
}

#[test]
fn a_planted_wrap_key_without_the_unwrap_template_is_never_used() {
    let (label, slot) = fresh_token();
    let session = pin_holder(slot);
    let planted = plant_without_template(&session, wrap_id());
    if let Some(wrapped) = make_version(&label) {
        assert!(
            !readable_under(&session, planted, &wrapped),
            "a version was wrapped under the PIN holder's key and read back"
        );
    }
}

#[test]
fn a_planted_wrap_key_of_a_known_value_is_never_used() {
    let (label, slot) = fresh_token();
    let session = pin_holder(slot);
    // The value is the PIN holder's: the planted key has kmsd's template, unwrap template
    // included, but a twin without it (or software AES key wrap) reads what it wraps.
    let value = vec![0x5a; 32];
    let unwrapped = unwrap_template(DomainCustody::Sealed);
    let mut template = domain_key_template(
        wrap_id(),
        "kms/domain/1/wrap".into(),
        &unwrapped,
        None,
        crate::domain::DEFAULT_WRAP,
    );
    template.retain(|a| !matches!(a, Attribute::ValueLen(_)));
    template.push(Attribute::Value(value.clone()));
    ok(session.create_object(&template));
    let twin = ok(session.create_object(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Unwrap(true),
        Attribute::Value(value),
    ]));
    if let Some(wrapped) = make_version(&label) {
        assert!(
            !readable_under(&session, twin, &wrapped),
            "a version was wrapped under a key of known value and read back"
        );
    }
}

#[test]
fn a_second_wrap_key_planted_beside_the_genuine_one_is_never_used() {
    let (label, slot) = fresh_token();
    // kmsd makes its domain first...
    let genuine = make_version(&label);
    assert!(genuine.is_some());
    // ...then the PIN holder adds a twin of the id; kmsd restarts.
    let session = pin_holder(slot);
    let planted = plant_without_template(&session, wrap_id());
    for _ in 0..3 {
        if let Some(wrapped) = make_version(&label) {
            assert!(
                !readable_under(&session, planted, &wrapped),
                "a version was wrapped under the planted twin and read back"
            );
        }
    }
}

#[test]
fn a_planted_authenticator_of_a_known_value_is_refused() {
    // With the authenticator's value, one who writes the data dir could bind any wrapped
    // material to any key, version and kind without the HSM.
    let (label, slot) = fresh_token();
    let session = pin_holder(slot);
    ok(session.create_object(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Modifiable(false),
        Attribute::Sign(true),
        Attribute::Verify(true),
        Attribute::Id(domain::domain_id(
            NAMESPACE,
            domain::FIRST_DOMAIN,
            DomainRole::Authenticate,
        )),
        Attribute::Value(vec![0x17; 32]),
    ]));
    assert!(make_version(&label).is_none());
}

/// A wrap key generated on the token whose unwrap template pins only CKA_SENSITIVE: a copy
/// may still be extractable, so the PIN holder wraps it under a key of their own.
fn plant_with_partial_template(session: &Session, id: Vec<u8>) -> ObjectHandle {
    let partial = BoolTemplate::new(&[(0x103, true)]);
    let template = domain_key_template(
        id,
        "kms/domain/1/wrap".into(),
        &partial,
        None,
        crate::domain::DEFAULT_WRAP,
    );
    ok(session.generate_key(&Mechanism::AesKeyGen, &template))
}

/// Whether the PIN holder gets `wrapped`'s value out through `planted`: an extractable,
/// sensitive copy, wrapped under their own AES key and unwrapped readable with it.
fn extracted_through(session: &Session, planted: ObjectHandle, wrapped: &WrappedMaterial) -> bool {
    let copy = session.unwrap_key(
        &Mechanism::AesKeyWrapPad,
        planted,
        &wrapped.wrapped,
        &[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(false),
            Attribute::Sensitive(true),
            Attribute::Extractable(true),
        ],
    );
    let Ok(copy) = copy else {
        return false;
    };
    let own = ok(session.generate_key(
        &Mechanism::AesKeyGen,
        &[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32u64.into()),
            Attribute::Token(false),
            Attribute::Wrap(true),
            Attribute::Unwrap(true),
        ],
    ));
    let Ok(out) = session.wrap_key(&Mechanism::AesKeyWrapPad, own, copy) else {
        return false;
    };
    let material = WrappedMaterial {
        wrapped: out,
        ..wrapped.clone()
    };
    readable_under(session, own, &material)
}

#[test]
fn a_planted_wrap_key_whose_template_pins_only_some_attributes_is_never_used() {
    let (label, slot) = fresh_token();
    let session = pin_holder(slot);
    let planted = plant_with_partial_template(&session, wrap_id());
    // The attack works where the key is used: shown on a version the PIN holder wraps.
    let secret = ok(session.generate_key(
        &Mechanism::GenericSecretKeyGen,
        &domain::fresh_secret_template(32, vec![MechanismType::SHA256_HMAC], DomainCustody::Sealed),
    ));
    let own = WrappedMaterial {
        domain_key: 1,
        wrapped: ok(session.wrap_key(&Mechanism::AesKeyWrapPad, planted, secret)),
        tag: Vec::new(),
        public_key_sha256: None,
    };
    assert!(
        extracted_through(&session, planted, &own),
        "the control extraction failed"
    );
    // kmsd refuses the key, so nothing of its own is ever wrapped under it.
    assert!(make_version(&label).is_none(), "kmsd used the planted key");
    // Nor as a later domain, named by a rewritten store.
    let two = domain::domain_id(NAMESPACE, 2, DomainRole::Wrap);
    plant_with_partial_template(&session, two);
    let store = ok(crate::tests::open_store_with(
        config(&label, PIN),
        NAMESPACE,
    ));
    assert!(
        store.use_domain(2).is_err(),
        "kmsd adopted the planted domain 2"
    );
}

/// A wrap key that may also decrypt (AES-ECB undoes key wrap a block at a time), derive, or
/// use another mechanism: with the genuine key's custody and unwrap template otherwise.
fn plant_with_more_uses(session: &Session, change: &[Attribute]) {
    let unwrapped = unwrap_template(DomainCustody::Sealed);
    let mut template = domain_key_template(
        wrap_id(),
        "kms/domain/1/wrap".into(),
        &unwrapped,
        None,
        domain::DEFAULT_WRAP,
    );
    for attribute in change {
        template.retain(|a| a.attribute_type() != attribute.attribute_type());
        template.push(attribute.clone());
    }
    ok(session.generate_key(&Mechanism::AesKeyGen, &template));
}

#[test]
fn a_planted_wrap_key_that_also_decrypts_derives_or_takes_other_mechanisms_is_never_used() {
    let changes: [&[Attribute]; 3] = [
        &[Attribute::Decrypt(true)],
        &[Attribute::Derive(true)],
        &[Attribute::AllowedMechanisms(vec![
            MechanismType::AES_KEY_WRAP_PAD,
            MechanismType::AES_ECB,
        ])],
    ];
    for change in changes {
        let (label, slot) = fresh_token();
        let session = pin_holder(slot);
        plant_with_more_uses(&session, change);
        assert!(
            make_version(&label).is_none(),
            "kmsd wrapped under a domain key with {change:?}"
        );
    }
}
