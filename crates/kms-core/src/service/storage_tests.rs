//! Key versions kept wrapped under a domain key (the default storage): the token gains no
//! object, every kind of secret works as before, and wrapped material moved to another key,
//! version or kind is refused.

use crate::service::test_support::*;

/// The stored record of `key`, with `edit` applied to its JSON form, written back.
fn edit_stored(
    store: &crate::testing::MemoryStore,
    key: &KeyRef,
    edit: impl FnOnce(&mut serde_json::Value),
) {
    let KeyRef::Id(id) = key else {
        panic!("the tests name keys by id");
    };
    let record =
        ok(store.get_key(*id).map_err(KmsError::from)).unwrap_or_else(|| panic!("no record"));
    let mut json = serde_json::to_value(&record).unwrap_or_else(|e| panic!("{e}"));
    edit(&mut json);
    let edited: KeyRecord = serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"));
    ok(store.put_key(&edited).map_err(KmsError::from));
}

fn wrapped_of(
    store: &crate::testing::MemoryStore,
    key: &KeyRef,
    version: usize,
) -> serde_json::Value {
    let KeyRef::Id(id) = key else {
        panic!("the tests name keys by id");
    };
    let record =
        ok(store.get_key(*id).map_err(KmsError::from)).unwrap_or_else(|| panic!("no record"));
    let json = serde_json::to_value(&record).unwrap_or_else(|e| panic!("{e}"));
    json["versions"][version]["wrapped"].clone()
}

#[test]
fn secrets_are_kept_wrapped_and_the_token_gains_no_object() {
    let (kms, store, hsm) = memory_kms();
    let key = new_key(&kms);
    let blob = ok(kms.encrypt(&admin(), &key, &plaintext(b"wrapped"), &ctx(&[]))).ciphertext_blob;
    ok(kms.rotate_key_on_demand(&admin(), &key));
    let newer = ok(kms.encrypt(&admin(), &key, &plaintext(b"newer"), &ctx(&[]))).ciphertext_blob;
    let mac_key = ok(kms.create_key(&admin(), CreateKeyInput::new(KeySpec::Hmac256)));
    let mac = ok(kms.generate_mac(
        &admin(),
        &KeyRef::Id(mac_key.id()),
        b"message",
        crate::key::MacAlgorithm::HmacSha256,
    ));
    assert!(ok(hsm.list_key_versions().map_err(KmsError::from)).is_empty());
    assert!(wrapped_of(&store, &key, 0).is_object());
    assert!(wrapped_of(&store, &key, 1).is_object());
    for (blob, text) in [(&blob, &b"wrapped"[..]), (&newer, &b"newer"[..])] {
        let back = ok(kms.decrypt(&admin(), blob, &ctx(&[]), None));
        assert_eq!(back.plaintext.expose_secret(), text);
    }
    ok(kms.verify_mac(
        &admin(),
        &KeyRef::Id(mac_key.id()),
        b"message",
        &mac.mac,
        crate::key::MacAlgorithm::HmacSha256,
    ));
    assert!(ok(kms.reconcile()).missing_objects.is_empty());
}

#[test]
fn wrapped_material_moved_to_another_key_version_or_kind_is_refused() {
    let (kms, store, _) = memory_kms();
    let a = new_key(&kms);
    let b = new_key(&kms);
    let hmac = KeyRef::Id(ok(kms.create_key(&admin(), CreateKeyInput::new(KeySpec::Hmac256))).id());
    let under_one = ok(kms.encrypt(&admin(), &a, &plaintext(b"x"), &ctx(&[]))).ciphertext_blob;
    ok(kms.rotate_key_on_demand(&admin(), &a));
    let refused = |kms: &Kms, key: &KeyRef| {
        matches!(
            kms.encrypt(&admin(), key, &plaintext(b"x"), &ctx(&[])),
            Err(KmsError::Internal(_))
        )
    };

    // Another key's material.
    let from_a = wrapped_of(&store, &a, 0);
    edit_stored(&store, &b, |json| {
        json["versions"][0]["wrapped"] = from_a.clone();
    });
    assert!(refused(&kms, &b), "key A's material served key B");
    // Another version's material, on the same key: blobs of version 1 no longer open.
    let second = wrapped_of(&store, &a, 1);
    edit_stored(&store, &a, |json| {
        json["versions"][0]["wrapped"] = second.clone();
    });
    assert!(
        matches!(
            kms.decrypt(&admin(), &under_one, &ctx(&[]), None),
            Err(KmsError::Internal(_))
        ),
        "version 2's material served version 1"
    );
    // An HMAC key's material where a master secret is expected: the forgery of the review.
    let mac_material = wrapped_of(&store, &hmac, 0);
    let c = new_key(&kms);
    edit_stored(&store, &c, |json| {
        json["versions"][0]["wrapped"] = mac_material.clone();
    });
    assert!(
        refused(&kms, &c),
        "an HMAC key's material served as a master secret"
    );
    // Bytes altered in place.
    edit_stored(&store, &a, |json| {
        let byte = json["versions"][1]["wrapped"]["wrapped"][20]
            .as_u64()
            .unwrap_or(0);
        json["versions"][1]["wrapped"]["wrapped"][20] = serde_json::json!(byte ^ 1);
    });
    assert!(refused(&kms, &a), "altered wrapped bytes served");
}

#[test]
fn a_record_stripped_of_its_wrapped_material_serves_nothing_and_loses_nothing() {
    let (kms, store, hsm) = memory_kms();
    let key = new_key(&kms);
    let blob = ok(kms.encrypt(&admin(), &key, &plaintext(b"kept"), &ctx(&[]))).ciphertext_blob;
    let wrapped = wrapped_of(&store, &key, 0);
    // A fresh process, so that nothing is unwrapped; the record now says "a token object".
    edit_stored(&store, &key, |json| {
        json["versions"][0]["wrapped"] = serde_json::Value::Null;
    });
    hsm.forget_unwrapped(match key {
        KeyRef::Id(id) => id,
        KeyRef::Alias(_) => unreachable!(),
    });
    assert!(kms.decrypt(&admin(), &blob, &ctx(&[]), None).is_err());
    assert!(
        kms.encrypt(&admin(), &key, &plaintext(b"x"), &ctx(&[]))
            .is_err()
    );
    // Reconciliation reports the version as missing and destroys nothing.
    let report = ok(kms.reconcile());
    assert_eq!(report.missing_objects.len(), 1);
    // Put back, the material serves again.
    edit_stored(&store, &key, |json| {
        json["versions"][0]["wrapped"] = wrapped.clone();
    });
    let back = ok(kms.decrypt(&admin(), &blob, &ctx(&[]), None));
    assert_eq!(back.plaintext.expose_secret(), b"kept");
}

/// One who writes the data dir swaps a key pair's public key for their own (with or without
/// the hash its wrapped material binds, or making the version look like a token object):
/// Verify must not accept their signature, nor GetPublicKey hand out their key.
#[test]
fn a_public_key_swapped_in_the_record_is_refused() {
    use crate::asymmetric::{MessageType, SigningAlgorithm};
    let edits: [fn(&mut serde_json::Value); 3] = [
        |_| {},
        |json| {
            if let Some(wrapped) = json["versions"][0]["wrapped"].as_object_mut() {
                wrapped.remove("public_key_sha256");
            }
        },
        |json| json["versions"][0]["wrapped"] = serde_json::Value::Null,
    ];
    for edit in edits {
        let (kms, store, _) = memory_kms();
        let victim = KeyRef::Id(
            ok(kms.create_key(&admin(), CreateKeyInput::new(KeySpec::EccNistP256))).id(),
        );
        let attacker = KeyRef::Id(
            ok(kms.create_key(&admin(), CreateKeyInput::new(KeySpec::EccNistP256))).id(),
        );
        // The attacker's own signature (here: made by a key whose public key they hold).
        let forged = ok(kms.sign(
            &admin(),
            &attacker,
            b"pay mallory",
            MessageType::Raw,
            SigningAlgorithm::EcdsaSha256,
        ))
        .signature;
        let KeyRef::Id(attacker_id) = attacker else {
            unreachable!()
        };
        let theirs = ok(store.get_key(attacker_id).map_err(KmsError::from))
            .and_then(|r| r.public_key().map(<[u8]>::to_vec))
            .unwrap_or_else(|| panic!("no public key"));
        edit_stored(&store, &victim, |json| {
            json["versions"][0]["public_key"] = serde_json::json!(theirs);
            edit(json);
        });
        let verified = kms.verify(
            &admin(),
            &crate::service::VerifyInput {
                key: victim.clone(),
                message: b"pay mallory".to_vec(),
                message_type: MessageType::Raw,
                signature: forged,
                algorithm: SigningAlgorithm::EcdsaSha256,
            },
        );
        assert!(
            verified.is_err(),
            "the victim key verified the attacker's signature"
        );
        assert!(kms.get_public_key(&admin(), &victim).is_err());
    }
}

#[test]
fn key_specs_the_hsm_cannot_make_are_refused_and_the_others_served() {
    let (kms, store, _hsm) = memory_kms();
    let kms = kms.with_unserved_key_specs(vec![(
        KeySpec::EccNistP256,
        "its module lacks CKM_EC_KEY_PAIR_GEN, CKM_ECDSA".to_owned(),
    )]);
    let refused = kms.create_key(&admin(), CreateKeyInput::new(KeySpec::EccNistP256));
    let Err(KmsError::UnsupportedOperation(message)) = refused else {
        panic!("an ECC key was not refused: {refused:?}");
    };
    assert_eq!(
        message,
        "ECC_NIST_P256 keys cannot be created on this HSM: its module lacks \
         CKM_EC_KEY_PAIR_GEN, CKM_ECDSA"
    );
    // Nothing was recorded.
    assert!(ok(store.list_keys(None, 10).map_err(KmsError::from)).is_empty());
    ok(kms.create_key(&admin(), CreateKeyInput::new(KeySpec::Hmac256)));
    ok(kms.create_key(&admin(), plain_input()));
}
