//! A concurrent load for [`super::FaultyKeyStore`] tests, and the checks after a restart:
//! shared by kms-core's tests on the software HSM and kms-hsm's on SoftHSM2.
#![allow(
    clippy::panic,
    clippy::missing_panics_doc,
    reason = "test support: a failed check panics, as in a test"
)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use crate::hsm::KeyStore;
use crate::ids::KeyRef;
use crate::key::{KeySpec, KeyState};
use crate::secret::SecretBytes;
use crate::service::{CreateKeyInput, DataKeyLength, Plaintext};
use crate::store::MetadataStore;
use crate::testing::admin;
use crate::{EncryptionContext, Kms};

/// The reasons a failed call may give under HSM faults: the HSM is unavailable or slow, or
/// (rotations) the key's limit is reached.
pub const ALLOWED: [&str; 3] = [
    "KeyUnavailableException",
    "DependencyTimeoutException",
    "LimitExceededException",
];

/// What the workers saw: blobs that Encrypt acknowledged, with their plaintexts, and every
/// error reason.
#[derive(Default)]
pub struct Seen {
    /// Acknowledged blobs and their plaintexts.
    pub blobs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Every failed call: the operation, the reason, and the message with its causes.
    pub errors: Vec<(&'static str, &'static str, String)>,
}

impl Seen {
    /// Panics, naming `what`, if a call failed with a reason outside [`ALLOWED`].
    pub fn check_errors(&self, what: &str) {
        for (operation, reason, message) in &self.errors {
            assert!(
                ALLOWED.contains(reason),
                "{what}: {operation} failed with {reason}: {message}"
            );
        }
    }
}

/// `workers` threads each create `rounds` keys and encrypt, decrypt, rotate and make a data
/// key with each. A decryption that succeeds must give back the plaintext.
pub fn run(kms: &Arc<Kms>, workers: usize, rounds: usize) -> Seen {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let threads: Vec<_> = (0..workers)
        .map(|worker| {
            let kms = Arc::clone(kms);
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || {
                let context = EncryptionContext::empty();
                let note = |operation: &'static str, e: crate::KmsError| {
                    let message = crate::error::chain(&e);
                    seen.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .errors
                        .push((operation, e.reason(), message));
                };
                for round in 0..rounds {
                    let key = match kms
                        .create_key(&admin(), CreateKeyInput::new(KeySpec::SymmetricDefault))
                    {
                        Ok(record) => KeyRef::Id(record.id),
                        Err(e) => {
                            note("CreateKey", e);
                            continue;
                        }
                    };
                    let text = format!("worker {worker} round {round}").into_bytes();
                    let plaintext = Plaintext::new(SecretBytes::new(text.clone()))
                        .unwrap_or_else(|e| panic!("{e}"));
                    match kms.encrypt(&admin(), &key, &plaintext, &context) {
                        Ok(out) => {
                            match kms.decrypt(&admin(), &out.ciphertext_blob, &context, None) {
                                Ok(back) => assert_eq!(back.plaintext.expose_secret(), text),
                                Err(e) => note("Decrypt", e),
                            }
                            seen.lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .blobs
                                .push((out.ciphertext_blob, text));
                        }
                        Err(e) => note("Encrypt", e),
                    }
                    if let Err(e) = kms.rotate_key_on_demand(&admin(), &key) {
                        note("RotateKeyOnDemand", e);
                    }
                    let length =
                        DataKeyLength::new(None, Some(32)).unwrap_or_else(|e| panic!("{e}"));
                    if let Err(e) = kms.generate_data_key(&admin(), &key, &context, length) {
                        note("GenerateDataKey", e);
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        assert!(thread.join().is_ok(), "a worker panicked");
    }
    let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
    std::mem::take(&mut *seen)
}

/// After a restart (`restarted` on the same store and HSM, without faults): reconciliation
/// leaves no half-made key or version, every HSM object belongs to a key version and every
/// key version kept on the token has its object, and every acknowledged blob decrypts.
pub fn check_restart(restarted: &Kms, store: &dyn MetadataStore, hsm: &dyn KeyStore, seen: &Seen) {
    let report = restarted
        .reconcile()
        .unwrap_or_else(|e| panic!("reconcile: {e}"));
    assert!(report.missing_objects.is_empty(), "{report:?}");
    assert!(report.unreferenced_objects.is_empty(), "{report:?}");
    let records = store
        .list_keys(None, 100_000)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut versions = BTreeSet::new();
    for record in &records {
        assert_ne!(record.state(), KeyState::Creating, "a half-made key stays");
        assert!(
            record.versions().iter().all(|v| !v.pending),
            "a half-made version stays"
        );
        versions.extend(record.token_version_refs());
    }
    let objects: BTreeSet<_> = hsm
        .list_key_versions()
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .collect();
    assert_eq!(objects, versions, "HSM objects and key versions differ");
    let context = EncryptionContext::empty();
    for (blob, text) in &seen.blobs {
        let back = restarted
            .decrypt(&admin(), blob, &context, None)
            .unwrap_or_else(|e| panic!("an acknowledged blob does not decrypt: {e}"));
        assert_eq!(back.plaintext.expose_secret(), text.as_slice());
    }
}
