//! Trusted domain keys on SoftHSM2: what the module enforces of CKA_TRUSTED and
//! CKA_WRAP_WITH_TRUSTED, found by trying what a PIN holder would try, and the rotation of a
//! store's domain key built on them.

use std::sync::PoisonError;

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use kms_core::asymmetric::HashAlg;
use kms_core::hsm::SignMechanism;
use kms_core::hsm::VersionObject;
use kms_core::key::{KeyMaterial, MacAlgorithm};
use kms_core::{HsmError, KeyId, KeyStore};
use zeroize::Zeroizing;

use super::{
    NAMESPACE, PIN, SLOTS, SO_PIN, admin, config, fresh_token, module, ok, open_store_with, version,
};
use crate::domain::{
    self, DomainCustody, DomainKeyMaker, copy_custody, generate_wrapped_secret, unwrap_secret,
};
use crate::{DomainKeyRequest, HsmKeyStore, make_domain_key};

/// The ceremony: the security officer makes trusted domain key `version` on `label`'s token
/// (never while a token is being initialised: it lists the slots, see [`SLOTS`]).
fn ceremony(label: &str, version: u32) {
    let _guard = SLOTS.lock().unwrap_or_else(PoisonError::into_inner);
    ok(make_domain_key(
        &module(),
        label,
        &Zeroizing::new(SO_PIN.to_owned()),
        DomainKeyRequest {
            namespace: NAMESPACE,
            version,
            maker: DomainKeyMaker::SecurityOfficer,
            mechanism: domain::DEFAULT_WRAP,
        },
    ));
}

/// A logged-in user session on `slot`: the PIN holder's.
fn pin_holder(slot: Slot) -> Session {
    let session = ok(admin().open_rw_session(slot));
    ok(session.login(UserType::User, Some(&AuthPin::from(PIN))));
    session
}

/// The handle of trusted domain key `version`'s wrap key, as the PIN holder finds it.
fn trusted_key(session: &Session, version: u32) -> ObjectHandle {
    let id = domain::domain_id(NAMESPACE, version, domain::DomainRole::Wrap);
    let found = ok(session.find_objects(&[Attribute::Id(id)]));
    assert_eq!(found.len(), 1);
    found[0]
}

fn hmac_only() -> Vec<MechanismType> {
    vec![MechanismType::SHA256_HMAC]
}

/// A session AES key of the PIN holder's, whose value they know: where they would wrap to.
fn own_wrap_key(session: &Session) -> ObjectHandle {
    ok(session.generate_key(
        &Mechanism::AesKeyGen,
        &[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32u64.into()),
            Attribute::Token(false),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
            Attribute::Wrap(true),
            Attribute::Unwrap(true),
        ],
    ))
}

fn refused_with(result: Result<impl std::fmt::Debug, CkError>, expected: RvError) {
    match result {
        Err(CkError::Pkcs11(rv, _)) if rv == expected => {}
        other => panic!("expected {expected:?}, got {other:?}"),
    }
}

#[test]
#[allow(clippy::too_many_lines)] // one attempt after another reads best as one script
fn what_a_trusted_domain_key_unwraps_can_be_wrapped_only_under_a_trusted_key() {
    let (label, slot) = fresh_token();
    ceremony(&label, 1);
    ceremony(&label, 2);
    let user = pin_holder(slot);
    let (one, two) = (trusted_key(&user, 1), trusted_key(&user, 2));
    let attributes = ok(user.get_attributes(
        one,
        &[
            AttributeType::Trusted,
            AttributeType::Private,
            AttributeType::NeverExtractable,
        ],
    ));
    assert!(
        attributes.contains(&Attribute::Trusted(true)),
        "{attributes:?}"
    );
    assert!(
        attributes.contains(&Attribute::Private(false)),
        "the officer cannot make private objects"
    );

    let trusted = DomainCustody::Trusted;
    let (_, wrapped) = ok(generate_wrapped_secret(
        &user,
        one,
        trusted,
        32,
        hmac_only(),
    ));
    let copy = ok(unwrap_secret(
        &user,
        one,
        trusted,
        crate::domain::DEFAULT_WRAP,
        &wrapped,
        hmac_only(),
    ));
    let custody = ok(user.get_attributes(
        copy,
        &[
            AttributeType::Extractable,
            AttributeType::WrapWithTrusted,
            AttributeType::Sensitive,
        ],
    ));
    assert_eq!(
        custody,
        [
            Attribute::Extractable(true),
            Attribute::WrapWithTrusted(true),
            Attribute::Sensitive(true)
        ]
    );
    // The next domain key rewraps it, and the result unwraps to the same key.
    let rewrapped = ok(user.wrap_key(&domain::wrap_mechanism(domain::DEFAULT_WRAP), two, copy));
    let again = ok(unwrap_secret(
        &user,
        two,
        trusted,
        crate::domain::DEFAULT_WRAP,
        &rewrapped,
        hmac_only(),
    ));
    assert_eq!(
        ok(user.sign(&Mechanism::Sha256Hmac, copy, b"input")),
        ok(user.sign(&Mechanism::Sha256Hmac, again, b"input"))
    );

    // The PIN holder's own key cannot wrap it, and they cannot make their key trusted, clear
    // CKA_WRAP_WITH_TRUSTED, copy it without, or read it.
    let own = own_wrap_key(&user);
    refused_with(
        user.wrap_key(&domain::wrap_mechanism(domain::DEFAULT_WRAP), own, copy),
        RvError::KeyNotWrappable,
    );
    refused_with(
        user.update_attributes(own, &[Attribute::Trusted(true)]),
        RvError::AttributeReadOnly,
    );
    refused_with(
        user.update_attributes(copy, &[Attribute::WrapWithTrusted(false)]),
        RvError::AttributeReadOnly,
    );
    refused_with(
        user.copy_object(copy, &[Attribute::WrapWithTrusted(false)]),
        RvError::AttributeReadOnly,
    );
    assert!(
        user.get_attributes(copy, &[AttributeType::Value])
            .map_or(true, |v| v.is_empty())
    );

    // Nor can they unwrap a stored blob into a copy that is readable or wrappable anywhere.
    let base = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Sign(true),
    ];
    for (index, change) in [
        (2, Attribute::Sensitive(false)),
        (4, Attribute::WrapWithTrusted(false)),
        (1, Attribute::Private(false)),
        (0, Attribute::Token(true)),
    ] {
        let mut request = copy_custody(trusted);
        request[index] = change;
        let template: Vec<Attribute> = base.iter().cloned().chain(request).collect();
        refused_with(
            user.unwrap_key(
                &domain::wrap_mechanism(domain::DEFAULT_WRAP),
                one,
                &wrapped,
                &template,
            ),
            RvError::TemplateInconsistent,
        );
    }
    ok(user.logout());

    // A session that did not log in finds the public key but cannot unwrap with it: what it
    // unwraps is private.
    let public = ok(admin().open_rw_session(slot));
    let template: Vec<Attribute> = base.iter().cloned().chain(copy_custody(trusted)).collect();
    refused_with(
        public.unwrap_key(
            &domain::wrap_mechanism(domain::DEFAULT_WRAP),
            one,
            &wrapped,
            &template,
        ),
        RvError::UserNotLoggedIn,
    );
}

/// A store with trusted domain keys 1 and 2 made by the ceremony, using domain key 1.
fn trusted_store() -> (HsmKeyStore, String) {
    let (label, _) = fresh_token();
    ceremony(&label, 1);
    ceremony(&label, 2);
    let store = ok(open_store_with(config(&label, PIN), NAMESPACE))
        .with_domain_custody(DomainCustody::Trusted);
    let first = ok(store.use_domain(1));
    assert!(first.rewrappable);
    (store, label)
}

#[test]
fn a_rotated_domain_key_rewraps_every_kind_and_the_old_one_then_unwraps_nothing() {
    let (store, _) = trusted_store();
    let kinds = [
        KeyMaterial::MasterSecret,
        KeyMaterial::HmacSecret(MacAlgorithm::HmacSha256),
        KeyMaterial::EcP256Sign,
        KeyMaterial::RsaSign { bits: 2048 },
    ];
    let mut made = Vec::new();
    for material in kinds {
        let key = version(KeyId::random(), 1);
        let (wrapped, _) = ok(store.create_wrapped_version(key, material));
        assert_eq!(wrapped.domain_key, 1);
        made.push((key, material, wrapped));
    }
    // What each version computes: equal before and after for the secrets (signatures are
    // randomised: that they are made at all shows the key pair survived).
    let sign = |key, material, wrapped| {
        let object = VersionObject {
            key,
            wrapped: Some(wrapped),
        };
        match material {
            KeyMaterial::MasterSecret => store
                .derive_message_key(object, b"x")
                .map(|k| k.expose_secret().to_vec()),
            KeyMaterial::HmacSecret(mac) => {
                store.sign(object, material, SignMechanism::Hmac(mac), b"x")
            }
            KeyMaterial::EcP256Sign => store
                .sign(object, material, SignMechanism::Ecdsa, &[7; 32])
                .map(|s| vec![u8::from(s.len() == 64)]),
            _ => store
                .sign(
                    object,
                    material,
                    SignMechanism::RsaPss(HashAlg::Sha256),
                    &[7; 32],
                )
                .map(|s| vec![u8::from(s.len() == 256)]),
        }
    };
    let before: Vec<_> = made.iter().map(|(k, m, w)| ok(sign(*k, *m, w))).collect();

    ok(store.use_domain(2));
    let mut rewrapped = Vec::new();
    for (key, material, wrapped) in &made {
        let object = VersionObject {
            key: *key,
            wrapped: Some(wrapped),
        };
        let new = ok(store.rewrap_version(object, *material));
        assert_eq!(new.domain_key, 2);
        assert_ne!(new.wrapped, wrapped.wrapped);
        rewrapped.push(new);
    }
    assert!(ok(store.destroy_domain(1)));
    for ((key, material, old), new) in made.iter().zip(&rewrapped) {
        store.forget_unwrapped(key.key_id);
        let object = VersionObject {
            key: *key,
            wrapped: Some(old),
        };
        assert!(
            matches!(
                store.rewrap_version(object, *material),
                Err(HsmError::Failed { .. })
            ),
            "material under the destroyed domain key must not unwrap"
        );
        store.forget_unwrapped(key.key_id);
        let _ = new;
    }
    let after: Vec<_> = made
        .iter()
        .zip(&rewrapped)
        .map(|((k, m, _), w)| ok(sign(*k, *m, w)))
        .collect();
    assert_eq!(before, after, "the same keys after rewrapping");
    assert!(
        store.destroy_domain(2).is_err(),
        "the current domain key is never destroyed"
    );
}

#[test]
fn a_sealed_domain_key_is_never_rewrapped() {
    let (label, _) = fresh_token();
    ceremony(&label, 2);
    let store = ok(open_store_with(config(&label, PIN), NAMESPACE));
    let sealed = ok(store.use_domain(1));
    assert!(!sealed.rewrappable);
    let key = version(KeyId::random(), 1);
    let (wrapped, _) = ok(store.create_wrapped_version(key, KeyMaterial::MasterSecret));
    assert!(ok(store.domain_key(2)).is_some_and(|d| d.rewrappable));
    ok(store.use_domain(2));
    let object = VersionObject {
        key,
        wrapped: Some(&wrapped),
    };
    assert!(matches!(
        store.rewrap_version(object, KeyMaterial::MasterSecret),
        Err(HsmError::Unsupported { .. })
    ));
}

#[test]
fn a_trusted_store_without_its_domain_key_names_the_ceremony() {
    let (label, _) = fresh_token();
    let store = ok(open_store_with(config(&label, PIN), NAMESPACE))
        .with_domain_custody(DomainCustody::Trusted);
    let error = store.use_domain(1).err().map(|e| format!("{e} {e:?}"));
    let error = error.unwrap_or_default();
    assert!(error.contains("kmsctl hsm make-domain-key"), "{error}");
    assert!(ok(store.domain_key(1)).is_none(), "nothing was made");
    let key = version(KeyId::random(), 1);
    assert!(
        store
            .create_wrapped_version(key, KeyMaterial::MasterSecret)
            .is_err()
    );
}

#[test]
fn with_trusted_custody_a_sealed_domain_key_a_pin_holder_made_is_refused() {
    let (label, slot) = fresh_token();
    let user = pin_holder(slot);
    let id = domain::domain_id(NAMESPACE, 1, domain::DomainRole::Wrap);
    ok(domain::create_domain_key(
        &user,
        id,
        "kms/domain/1/wrap".into(),
        crate::domain::DEFAULT_WRAP,
    ));
    ok(user.logout());
    let store = ok(open_store_with(config(&label, PIN), NAMESPACE))
        .with_domain_custody(DomainCustody::Trusted);
    let error = store
        .use_domain(1)
        .err()
        .map(|e| format!("{e:?}"))
        .unwrap_or_default();
    assert!(error.contains("not trusted"), "{error}");
    let key = version(KeyId::random(), 1);
    assert!(
        store
            .create_wrapped_version(key, KeyMaterial::MasterSecret)
            .is_err()
    );
}

#[test]
fn rewrapping_leaves_no_unwrapped_copy_of_a_key_whose_copies_were_destroyed() {
    let (store, _) = trusted_store();
    let key = version(KeyId::random(), 1);
    let (wrapped, _) = ok(store.create_wrapped_version(key, KeyMaterial::MasterSecret));
    store.forget_unwrapped(key.key_id); // the key was disabled
    assert_eq!(store.unwrapped_versions(), 0);
    ok(store.use_domain(2));
    let object = VersionObject {
        key,
        wrapped: Some(&wrapped),
    };
    let new = ok(store.rewrap_version(object, KeyMaterial::MasterSecret));
    assert_eq!(new.domain_key, 2);
    assert_eq!(store.unwrapped_versions(), 0, "the rewrap kept a copy");
}

#[test]
fn a_public_object_planted_without_the_pin_under_a_domain_id_is_ignored() {
    let (label, slot) = fresh_token();
    // A session that never logged in makes public token keys under both domain ids.
    let public = ok(admin().open_rw_session(slot));
    for role in [domain::DomainRole::Wrap, domain::DomainRole::Authenticate] {
        ok(public.create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Value(vec![0x11; 32]),
            Attribute::Id(domain::domain_id(NAMESPACE, 1, role)),
        ]));
    }
    drop(public);
    let store = ok(open_store_with(config(&label, PIN), NAMESPACE));
    let domain = ok(store.use_domain(1));
    assert!(
        !domain.rewrappable,
        "kmsd made its own sealed domain beside them"
    );
    let key = version(KeyId::random(), 1);
    ok(store.create_wrapped_version(key, KeyMaterial::MasterSecret));
}

#[test]
fn a_key_pairs_public_key_is_bound_to_its_material_and_stays_bound_when_rewrapped() {
    use sha2::Digest as _;
    let (store, _) = trusted_store();
    let key = version(KeyId::random(), 1);
    let (wrapped, public_key) = ok(store.create_wrapped_version(key, KeyMaterial::EcP256Sign));
    let public_key = public_key.unwrap_or_else(|| panic!("no public key"));
    let hash: [u8; 32] = sha2::Sha256::digest(&public_key).into();
    assert_eq!(wrapped.public_key_sha256, Some(hash));
    let check = |w: &kms_core::key::WrappedMaterial| {
        store.check_wrapped(
            VersionObject {
                key,
                wrapped: Some(w),
            },
            KeyMaterial::EcP256Sign,
        )
    };
    ok(check(&wrapped));
    // Another public key's hash, or none at all, does not authenticate.
    for swapped in [Some([7u8; 32]), None] {
        let forged = kms_core::key::WrappedMaterial {
            public_key_sha256: swapped,
            ..wrapped.clone()
        };
        assert!(check(&forged).is_err());
    }
    ok(store.use_domain(2));
    let object = VersionObject {
        key,
        wrapped: Some(&wrapped),
    };
    let new = ok(store.rewrap_version(object, KeyMaterial::EcP256Sign));
    assert_eq!(new.public_key_sha256, Some(hash));
    ok(check(&new));
}
