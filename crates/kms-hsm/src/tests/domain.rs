//! Domain keys on SoftHSM2: what the module enforces of their custody and unwrap template,
//! found by trying what a PIN holder would try.

use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use super::{PIN, admin, fresh_token, ok};
use crate::domain::{
    DomainCustody, create_domain_key, domain_key_template, generate_wrapped_secret, unwrap_secret,
    unwrap_template,
};

/// A read-write session of the user on a fresh token: the PIN holder's view.
fn user_session() -> (Session, Slot) {
    let (_, slot) = fresh_token();
    let session = ok(admin().open_rw_session(slot));
    ok(session.login(UserType::User, Some(&AuthPin::from(PIN))));
    (session, slot)
}

fn hmac_only() -> Vec<MechanismType> {
    vec![MechanismType::SHA256_HMAC]
}

/// A request for an unwrapped generic secret with `changes` on top of a harmless base.
fn unwrap_request(changes: &[Attribute]) -> Vec<Attribute> {
    let mut template = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Sign(true),
    ];
    template.extend_from_slice(changes);
    template
}

#[test]
fn a_secret_wrapped_under_a_domain_key_unwraps_to_the_same_hmac_key() {
    let (session, _) = user_session();
    let domain = ok(create_domain_key(
        &session,
        b"domain-1".to_vec(),
        "domain 1".into(),
        crate::domain::DEFAULT_WRAP,
    ));
    let (fresh, wrapped) = ok(generate_wrapped_secret(
        &session,
        domain,
        DomainCustody::Sealed,
        32,
        hmac_only(),
    ));
    assert_eq!(
        wrapped.len(),
        40,
        "AES key wrap with padding adds 8 bytes to 32"
    );
    let copy = ok(unwrap_secret(
        &session,
        domain,
        DomainCustody::Sealed,
        crate::domain::DEFAULT_WRAP,
        &wrapped,
        hmac_only(),
    ));
    let input = b"derivation input";
    assert_eq!(
        ok(session.sign(&Mechanism::Sha256Hmac, fresh, input)),
        ok(session.sign(&Mechanism::Sha256Hmac, copy, input))
    );
    // Altered wrapped bytes do not unwrap (AES key wrap's integrity check).
    let mut altered = wrapped.clone();
    altered[5] ^= 1;
    assert!(
        unwrap_secret(
            &session,
            domain,
            DomainCustody::Sealed,
            crate::domain::DEFAULT_WRAP,
            &altered,
            hmac_only()
        )
        .is_err()
    );
    // The unwrapped copy is a session object, sensitive and never extractable.
    let attributes = ok(session.get_attributes(
        copy,
        &[
            AttributeType::Token,
            AttributeType::Sensitive,
            AttributeType::Extractable,
        ],
    ));
    assert!(
        attributes.contains(&Attribute::Token(false)),
        "{attributes:?}"
    );
    assert!(
        attributes.contains(&Attribute::Sensitive(true)),
        "{attributes:?}"
    );
    assert!(
        attributes.contains(&Attribute::Extractable(false)),
        "{attributes:?}"
    );
}

#[test]
fn a_pin_holder_cannot_unwrap_a_stored_version_into_a_readable_or_lasting_object() {
    let (session, _) = user_session();
    let domain = ok(create_domain_key(
        &session,
        b"domain-1".to_vec(),
        "domain 1".into(),
        crate::domain::DEFAULT_WRAP,
    ));
    let (_, wrapped) = ok(generate_wrapped_secret(
        &session,
        domain,
        DomainCustody::Sealed,
        32,
        hmac_only(),
    ));
    for (what, change) in [
        ("extractable", Attribute::Extractable(true)),
        ("not sensitive", Attribute::Sensitive(false)),
        ("a token object", Attribute::Token(true)),
    ] {
        let refused = session.unwrap_key(
            &Mechanism::AesKeyWrapPad,
            domain,
            &wrapped,
            &unwrap_request(&[change]),
        );
        assert!(
            refused.is_err(),
            "SoftHSM2 unwrapped a stored version into {what} object"
        );
    }
    // SoftHSM2 2.6 wants the template's attributes in the request, with the same values:
    // leaving them out is refused as well (CKR_TEMPLATE_INCONSISTENT)...
    assert!(
        session
            .unwrap_key(
                &Mechanism::AesKeyWrapPad,
                domain,
                &wrapped,
                &unwrap_request(&[])
            )
            .is_err()
    );
    // ...and what it allows cannot be read.
    let copy = ok(session.unwrap_key(
        &Mechanism::AesKeyWrapPad,
        domain,
        &wrapped,
        &unwrap_request(&[
            Attribute::Token(false),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
        ]),
    ));
    let value = session.get_attributes(copy, &[AttributeType::Value]);
    assert!(
        !matches!(value.as_deref(), Ok([Attribute::Value(_)])),
        "the value of an unwrapped version was readable: {value:?}"
    );
    // Nor can it be wrapped out under a key of the PIN holder's own.
    let own = ok(session.generate_key(
        &Mechanism::AesKeyGen,
        &[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32u64.into()),
            Attribute::Token(false),
            Attribute::Wrap(true),
            Attribute::Unwrap(true),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
        ],
    ));
    assert!(
        session
            .wrap_key(&Mechanism::AesKeyWrapPad, own, copy)
            .is_err()
    );
}

#[test]
fn a_domain_key_cannot_be_read_wrapped_out_or_used_to_encrypt() {
    let (session, _) = user_session();
    let domain = ok(create_domain_key(
        &session,
        b"domain-1".to_vec(),
        "domain 1".into(),
        crate::domain::DEFAULT_WRAP,
    ));
    let value = session.get_attributes(domain, &[AttributeType::Value]);
    assert!(
        !matches!(value.as_deref(), Ok([Attribute::Value(_)])),
        "{value:?}"
    );
    let other = ok(create_domain_key(
        &session,
        b"domain-2".to_vec(),
        "domain 2".into(),
        crate::domain::DEFAULT_WRAP,
    ));
    assert!(
        session
            .wrap_key(&Mechanism::AesKeyWrapPad, other, domain)
            .is_err()
    );
    assert!(
        session
            .encrypt(&Mechanism::AesEcb, domain, &[0; 16])
            .is_err()
    );
    let attributes = ok(session.get_attributes(
        domain,
        &[
            AttributeType::Token,
            AttributeType::Private,
            AttributeType::Sensitive,
            AttributeType::Extractable,
        ],
    ));
    for expected in [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
    ] {
        assert!(attributes.contains(&expected), "{attributes:?}");
    }
}

/// The control: the same key without its CKA_UNWRAP_TEMPLATE lets the PIN holder unwrap an
/// extractable, readable copy. So the refusals above are the template's doing.
#[test]
fn without_the_unwrap_template_a_pin_holder_could_read_a_stored_version() {
    let (session, _) = user_session();
    let unwrapped = unwrap_template(DomainCustody::Sealed);
    let mut template = domain_key_template(
        b"domain-0".to_vec(),
        "no template".into(),
        &unwrapped,
        None,
        crate::domain::DEFAULT_WRAP,
    );
    template.retain(|a| !matches!(a, Attribute::VendorDefined(_)));
    let bare = ok(session.generate_key(&Mechanism::AesKeyGen, &template));
    let (_, wrapped) = ok(generate_wrapped_secret(
        &session,
        bare,
        DomainCustody::Sealed,
        32,
        hmac_only(),
    ));
    let copy = ok(session.unwrap_key(
        &Mechanism::AesKeyWrapPad,
        bare,
        &wrapped,
        &unwrap_request(&[Attribute::Extractable(true), Attribute::Sensitive(false)]),
    ));
    let value = ok(session.get_attributes(copy, &[AttributeType::Value]));
    assert!(matches!(value.as_slice(), [Attribute::Value(v)] if v.len() == 32));
}

/// What the template costs: an unwrapped version cannot be wrapped again, under another
/// domain key either, so rotating domain keys on SoftHSM2 cannot rewrap stored versions from
/// their unwrapped copies. (Where the HSM honours CKA_TRUSTED and CKA_WRAP_WITH_TRUSTED, the
/// template can allow extraction under trusted keys only.)
#[test]
fn an_unwrapped_version_cannot_be_rewrapped_under_the_next_domain_key() {
    let (session, _) = user_session();
    let old = ok(create_domain_key(
        &session,
        b"domain-1".to_vec(),
        "domain 1".into(),
        crate::domain::DEFAULT_WRAP,
    ));
    let new = ok(create_domain_key(
        &session,
        b"domain-2".to_vec(),
        "domain 2".into(),
        crate::domain::DEFAULT_WRAP,
    ));
    let (_, wrapped) = ok(generate_wrapped_secret(
        &session,
        old,
        DomainCustody::Sealed,
        32,
        hmac_only(),
    ));
    let copy = ok(unwrap_secret(
        &session,
        old,
        DomainCustody::Sealed,
        crate::domain::DEFAULT_WRAP,
        &wrapped,
        hmac_only(),
    ));
    assert!(
        session
            .wrap_key(&Mechanism::AesKeyWrapPad, new, copy)
            .is_err()
    );
}

#[test]
fn softhsm2_offers_what_wrapped_storage_needs_and_a_module_without_it_is_named() {
    let (label, _) = fresh_token();
    let store = ok(crate::tests::open_store_with(
        super::config(&label, PIN),
        super::NAMESPACE,
    ));
    assert!(ok(store.missing_for_wrapped_storage()).is_empty());
    // A vendor's wrap mechanism SoftHSM2 lacks is named, so kmsd refuses to start with it.
    let vendor = crate::domain::parse_wrap_mechanism("0x80000102");
    let store = store.with_wrap_mechanism(vendor.unwrap_or(crate::domain::DEFAULT_WRAP));
    assert_eq!(
        ok(store.missing_for_wrapped_storage()),
        ["vendor mechanism 0x80000102"]
    );
    assert_eq!(
        crate::domain::missing_for_wrapped_storage(
            &[MechanismType::AES_KEY_GEN],
            MechanismType::AES_KEY_WRAP_PAD
        ),
        ["CKM_AES_KEY_WRAP_PAD", "CKM_SHA256_HMAC"]
    );
    let vendor = crate::domain::parse_wrap_mechanism("0x80000102");
    assert!(vendor.is_some());
    assert_eq!(
        crate::domain::missing_for_wrapped_storage(
            &[
                MechanismType::AES_KEY_GEN,
                MechanismType::AES_KEY_WRAP_PAD,
                MechanismType::SHA256_HMAC
            ],
            vendor.unwrap_or(MechanismType::AES_KEY_WRAP_PAD)
        ),
        ["vendor mechanism 0x80000102"]
    );
    // Below CKM_VENDOR_DEFINED a number names no vendor's mechanism.
    assert!(crate::domain::parse_wrap_mechanism("0x210b").is_none());
    assert!(crate::domain::parse_wrap_mechanism("ckm_aes_key_wrap_pad").is_some());
}

/// The handle cache's premise: a version unwrapped in one session (kept open) serves the
/// pool's other sessions of the process, and goes when that session closes.
#[test]
fn an_unwrapped_version_serves_other_sessions_while_its_session_lives() {
    let (holder, slot) = user_session();
    let domain = ok(create_domain_key(
        &holder,
        b"domain-1".to_vec(),
        "domain 1".into(),
        crate::domain::DEFAULT_WRAP,
    ));
    let (_, wrapped) = ok(generate_wrapped_secret(
        &holder,
        domain,
        DomainCustody::Sealed,
        32,
        hmac_only(),
    ));
    let copy = ok(unwrap_secret(
        &holder,
        domain,
        DomainCustody::Sealed,
        crate::domain::DEFAULT_WRAP,
        &wrapped,
        hmac_only(),
    ));
    let other = ok(admin().open_rw_session(slot));
    let mac = ok(other.sign(&Mechanism::Sha256Hmac, copy, b"x"));
    assert_eq!(mac, ok(holder.sign(&Mechanism::Sha256Hmac, copy, b"x")));
    drop(holder);
    assert!(other.sign(&Mechanism::Sha256Hmac, copy, b"x").is_err());
}

mod key_store {
    //! The wrapped storage through the KeyStore calls kmsd makes.

    use kms_core::hsm::VersionObject;
    use kms_core::key::{KeyMaterial, MacAlgorithm, WrappedMaterial};
    use kms_core::{HsmError, KeyId, KeyStore, KeyVersionRef};

    use super::super::{NAMESPACE, config, fresh_token, inspector, ok, version};
    use cryptoki::object::{Attribute, ObjectClass};

    fn object(key: KeyVersionRef, wrapped: &WrappedMaterial) -> VersionObject<'_> {
        VersionObject {
            key,
            wrapped: Some(wrapped),
        }
    }

    /// Token objects of the secret-key class: the domain's two, whatever the versions.
    fn token_secrets(slot: cryptoki::slot::Slot) -> usize {
        let session = inspector(slot);
        ok(session.find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Token(true),
        ]))
        .len()
    }

    #[test]
    fn wrapped_versions_serve_after_a_restart_and_the_token_holds_only_the_domain() {
        let (label, slot) = fresh_token();
        let store = ok(crate::tests::open_store_with(
            config(&label, super::PIN),
            NAMESPACE,
        ));
        let keys: Vec<KeyVersionRef> = (1..=5).map(|v| version(KeyId::random(), v)).collect();
        let wrapped: Vec<WrappedMaterial> = keys
            .iter()
            .map(|k| ok(store.create_wrapped_version(*k, KeyMaterial::MasterSecret)).0)
            .collect();
        let mac_key = version(KeyId::random(), 1);
        let (mac_wrapped, _) = ok(store
            .create_wrapped_version(mac_key, KeyMaterial::HmacSecret(MacAlgorithm::HmacSha384)));
        assert_eq!(
            token_secrets(slot),
            2,
            "the domain's wrap and authenticator keys only"
        );
        assert!(ok(store.list_key_versions()).is_empty());
        let before: Vec<_> = keys
            .iter()
            .zip(&wrapped)
            .map(|(k, w)| *ok(store.derive_message_key(object(*k, w), b"input")).expose_secret())
            .collect();
        let mac = ok(store.sign(
            object(mac_key, &mac_wrapped),
            KeyMaterial::HmacSecret(MacAlgorithm::HmacSha384),
            kms_core::hsm::SignMechanism::Hmac(MacAlgorithm::HmacSha384),
            b"m",
        ));
        drop(store);

        // A new process: the domain is found on the token, the versions unwrap, two at a time.
        let store = ok(crate::tests::open_store_with(
            config(&label, super::PIN),
            NAMESPACE,
        ))
        .with_unwrapped_capacity(2);
        for ((k, w), expected) in keys.iter().zip(&wrapped).zip(&before) {
            assert_eq!(
                ok(store.derive_message_key(object(*k, w), b"input")).expose_secret(),
                expected
            );
        }
        assert_eq!(store.unwrapped_versions(), 2);
        assert_eq!(
            ok(store.sign(
                object(mac_key, &mac_wrapped),
                KeyMaterial::HmacSecret(MacAlgorithm::HmacSha384),
                kms_core::hsm::SignMechanism::Hmac(MacAlgorithm::HmacSha384),
                b"m",
            )),
            mac
        );
        assert_eq!(token_secrets(slot), 2);
    }

    #[test]
    fn wrapped_material_is_bound_to_its_key_version_and_kind() {
        let (label, _) = fresh_token();
        let store = ok(crate::tests::open_store_with(
            config(&label, super::PIN),
            NAMESPACE,
        ));
        let a = version(KeyId::random(), 1);
        let b = version(KeyId::random(), 1);
        let (wrapped, _) = ok(store.create_wrapped_version(a, KeyMaterial::MasterSecret));
        // A fresh process, so that nothing is unwrapped yet (an unwrapped version is used by
        // its key and version, as it was checked when unwrapped).
        drop(store);
        let store = ok(crate::tests::open_store_with(
            config(&label, super::PIN),
            NAMESPACE,
        ));
        let refused = |key, wrapped: &WrappedMaterial| {
            matches!(
                store.derive_message_key(object(key, wrapped), b"x"),
                Err(HsmError::Failed { .. })
            )
        };
        assert!(refused(b, &wrapped), "another key");
        assert!(refused(version(a.key_id, 2), &wrapped), "another version");
        let mut altered = wrapped.clone();
        altered.wrapped[3] ^= 1;
        assert!(refused(a, &altered), "altered bytes");
        let mut other_domain = wrapped.clone();
        other_domain.domain_key = 7;
        assert!(refused(a, &other_domain), "another domain key");
        // The kind: an HMAC key's material is never a master secret.
        let mac = version(KeyId::random(), 1);
        let (mac_wrapped, _) =
            ok(store
                .create_wrapped_version(mac, KeyMaterial::HmacSecret(MacAlgorithm::HmacSha256)));
        assert!(refused(mac, &mac_wrapped), "an HMAC key as a master secret");
        // The genuine one still serves, and a deleted version's object is gone at once.
        assert_eq!(store.unwrapped_versions(), 1, "the HMAC key, as made");
        ok(store.derive_message_key(object(a, &wrapped), b"x"));
        assert_eq!(store.unwrapped_versions(), 2);
        ok(store.destroy_key_version(a));
        assert_eq!(store.unwrapped_versions(), 1);
    }

    #[test]
    fn forgetting_a_key_destroys_its_unwrapped_versions_and_the_next_use_unwraps_again() {
        let (label, _) = fresh_token();
        let store = ok(crate::tests::open_store_with(
            config(&label, super::PIN),
            NAMESPACE,
        ));
        let key = KeyId::random();
        let first = version(key, 1);
        let second = version(key, 2);
        let other = version(KeyId::random(), 1);
        let wrapped: Vec<_> = [first, second, other]
            .iter()
            .map(|k| ok(store.create_wrapped_version(*k, KeyMaterial::MasterSecret)).0)
            .collect();
        let before =
            *ok(store.derive_message_key(object(first, &wrapped[0]), b"x")).expose_secret();
        assert_eq!(store.unwrapped_versions(), 3);
        store.forget_unwrapped(key);
        assert_eq!(
            store.unwrapped_versions(),
            1,
            "the other key's version stays"
        );
        assert_eq!(
            *ok(store.derive_message_key(object(first, &wrapped[0]), b"x")).expose_secret(),
            before
        );
        assert_eq!(store.unwrapped_versions(), 2);
    }
    #[test]
    fn wrapped_key_pairs_sign_and_decrypt_after_a_restart_and_leave_no_token_object() {
        use kms_core::asymmetric::{self, HashAlg, SigningAlgorithm};
        use kms_core::hsm::SignMechanism;

        let (label, slot) = fresh_token();
        let store = ok(crate::tests::open_store_with(
            config(&label, super::PIN),
            NAMESPACE,
        ));
        let rsa_decrypt = version(KeyId::random(), 1);
        let rsa_sign = version(KeyId::random(), 1);
        let ec_sign = version(KeyId::random(), 1);
        let decrypting = KeyMaterial::RsaDecrypt { bits: 2048 };
        let signing = KeyMaterial::RsaSign { bits: 2048 };
        let (decrypt_wrapped, decrypt_spki) =
            ok(store.create_wrapped_version(rsa_decrypt, decrypting));
        let (sign_wrapped, sign_spki) = ok(store.create_wrapped_version(rsa_sign, signing));
        let (ec_wrapped, ec_spki) =
            ok(store.create_wrapped_version(ec_sign, KeyMaterial::EcP256Sign));
        let session = inspector(slot);
        assert!(
            ok(session.find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Token(true),
            ]))
            .is_empty(),
            "no private key on the token (the audit key is kmsd's, not made here)"
        );
        drop(store);

        let store = ok(crate::tests::open_store_with(
            config(&label, super::PIN),
            NAMESPACE,
        ));
        let spki = decrypt_spki.unwrap_or_else(|| panic!("an RSA key has a public key"));
        let ciphertext = ok(asymmetric::oaep_encrypt(
            &spki,
            HashAlg::Sha1,
            b"wrapped pair",
        ));
        let plaintext = ok(store.rsa_decrypt(
            object(rsa_decrypt, &decrypt_wrapped),
            HashAlg::Sha1,
            &ciphertext,
        ));
        assert_eq!(plaintext.as_slice(), b"wrapped pair");

        let digest = ok(asymmetric::message_digest(
            SigningAlgorithm::RsassaPssSha256,
            kms_core::asymmetric::MessageType::Raw,
            b"message",
        ));
        let signature = ok(store.sign(
            object(rsa_sign, &sign_wrapped),
            signing,
            SignMechanism::RsaPss(HashAlg::Sha256),
            &digest,
        ));
        let spki = sign_spki.unwrap_or_else(|| panic!("an RSA key has a public key"));
        assert!(ok(asymmetric::verify(
            &spki,
            SigningAlgorithm::RsassaPssSha256,
            &digest,
            &signature
        )));

        let digest = ok(asymmetric::message_digest(
            SigningAlgorithm::EcdsaSha256,
            kms_core::asymmetric::MessageType::Raw,
            b"message",
        ));
        let raw = ok(store.sign(
            object(ec_sign, &ec_wrapped),
            KeyMaterial::EcP256Sign,
            SignMechanism::Ecdsa,
            &digest,
        ));
        let der = ok(asymmetric::ecdsa_raw_to_der(&raw));
        let spki = ec_spki.unwrap_or_else(|| panic!("a P-256 key has a public key"));
        assert!(ok(asymmetric::verify(
            &spki,
            SigningAlgorithm::EcdsaSha256,
            &digest,
            &der
        )));
        // A decrypting key's material is never a signing key's.
        assert!(
            store
                .sign(
                    object(rsa_decrypt, &decrypt_wrapped),
                    signing,
                    SignMechanism::RsaPss(HashAlg::Sha256),
                    &digest,
                )
                .is_err()
        );
    }
}

/// What key pairs need of the module: an RSA private key made as an extractable session
/// object wraps under a domain key with CKM_AES_KEY_WRAP_PAD and unwraps (within the unwrap
/// template) into a private key that signs the same.
#[test]
fn an_rsa_private_key_wraps_and_unwraps_with_aes_key_wrap_pad() {
    use crate::templates::{PrivateUse, private_template, rsa_public_template};
    let (session, _) = user_session();
    let domain = ok(create_domain_key(
        &session,
        b"domain-1".to_vec(),
        "domain 1".into(),
        crate::domain::DEFAULT_WRAP,
    ));
    let public = rsa_public_template(b"p".to_vec(), "p".into(), 2048);
    let mut private = private_template(
        KeyType::RSA,
        b"p".to_vec(),
        "p".into(),
        PrivateUse::Sign,
        vec![MechanismType::RSA_PKCS],
    );
    for attribute in &mut private {
        match attribute {
            Attribute::Token(t) => *t = false,
            Attribute::Extractable(e) => *e = true,
            _ => {}
        }
    }
    let (_, key) = ok(session.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private));
    let wrapped = ok(session.wrap_key(&Mechanism::AesKeyWrapPad, domain, key));
    let request = [
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(KeyType::RSA),
        Attribute::Token(false),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::AllowedMechanisms(vec![MechanismType::RSA_PKCS]),
    ];
    let copy = ok(session.unwrap_key(&Mechanism::AesKeyWrapPad, domain, &wrapped, &request));
    let digest_info = [0x42u8; 51];
    assert_eq!(
        ok(session.sign(&Mechanism::RsaPkcs, key, &digest_info)),
        ok(session.sign(&Mechanism::RsaPkcs, copy, &digest_info))
    );
}
