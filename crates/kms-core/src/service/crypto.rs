//! SYMMETRIC_DEFAULT and RSAES-OAEP encryption: Encrypt, Decrypt, ReEncrypt, data keys
//! and random bytes.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::debug;

use crate::asymmetric::{self, HashAlg, SigningAlgorithm};
use crate::blob;
use crate::caller::Caller;
use crate::context::EncryptionContext;
use crate::error::KmsError;
use crate::hsm::{HsmError, KeyVersionRef, SignMechanism, VersionObject};
use crate::ids::KeyRef;
use crate::key::{EncryptionAlgorithm, KeyMaterial, KeyRecord, KeyState};
use crate::policy::Action;
use crate::secret::SecretBytes;
use crate::symmetric;

use super::{
    DataKey, DataKeyLength, Decrypted, Encrypted, Kms, Plaintext, RandomLength, ReEncryptInput,
    ReEncrypted,
};

impl Kms {
    /// Encrypts with the key's current version, SYMMETRIC_DEFAULT: one HSM operation.
    pub fn encrypt(
        &self,
        caller: &Caller,
        key: &KeyRef,
        plaintext: &Plaintext,
        context: &EncryptionContext,
    ) -> Result<Encrypted, KmsError> {
        self.encrypt_with(caller, key, plaintext, context, None)
    }
    /// Encrypts with the key's current version and `algorithm`. SYMMETRIC_DEFAULT (the
    /// default): one HSM operation. RSAES_OAEP_*: with the RSA key's public key, in software;
    /// no context.
    pub fn encrypt_with(
        &self,
        caller: &Caller,
        key: &KeyRef,
        plaintext: &Plaintext,
        context: &EncryptionContext,
        algorithm: Option<EncryptionAlgorithm>,
    ) -> Result<Encrypted, KmsError> {
        caller.note_context(context, false);
        let record = self.usable(caller, key, Action::Encrypt, Some(context))?;
        let algorithm = algorithm.unwrap_or(EncryptionAlgorithm::SymmetricDefault);
        let ciphertext_blob = match algorithm.oaep_hash() {
            // seal checks that the key is SYMMETRIC_DEFAULT.
            None => self.seal(caller, &record, context, plaintext.0.expose_secret())?,
            Some(hash) => {
                check_encryption_algorithm(&record, algorithm)?;
                check_no_context(context, algorithm)?;
                caller.note_key(record.id, Some(record.current_version()));
                let public_key = self.public_key_of(&record)?;
                crate::asymmetric::oaep_encrypt(public_key, hash, plaintext.0.expose_secret())?
            }
        };
        debug!(key_id = %record.id, version = record.current_version(), "encrypted");
        Ok(Encrypted {
            ciphertext_blob,
            key_id: record.id,
            algorithm,
        })
    }
    /// Decrypts a blob: one HSM operation. `key`, when given, must be the blob's key.
    pub fn decrypt(
        &self,
        caller: &Caller,
        ciphertext_blob: &[u8],
        context: &EncryptionContext,
        key: Option<&KeyRef>,
    ) -> Result<Decrypted, KmsError> {
        self.decrypt_with(caller, ciphertext_blob, context, key, None)
    }
    /// Decrypts with `algorithm`: a blob when it is SYMMETRIC_DEFAULT or `None`, as
    /// [`Kms::decrypt`]. With an RSAES_OAEP_* algorithm, `key` is required and the HSM
    /// decrypts the bare ciphertext: one HSM operation.
    pub fn decrypt_with(
        &self,
        caller: &Caller,
        ciphertext_blob: &[u8],
        context: &EncryptionContext,
        key: Option<&KeyRef>,
        algorithm: Option<EncryptionAlgorithm>,
    ) -> Result<Decrypted, KmsError> {
        caller.note_context(context, false);
        match algorithm {
            Some(algorithm) if algorithm.oaep_hash().is_some() => {
                let key = key.ok_or_else(|| {
                    KmsError::validation(format!(
                        "key_id is required to decrypt with {}",
                        algorithm.as_str()
                    ))
                })?;
                self.rsa_decrypt(caller, ciphertext_blob, context, key, algorithm)
            }
            _ => self.open(caller, Action::Decrypt, ciphertext_blob, context, key),
        }
    }
    /// Decrypts an RSAES-OAEP ciphertext in the HSM: one HSM operation.
    pub(super) fn rsa_decrypt(
        &self,
        caller: &Caller,
        ciphertext: &[u8],
        context: &EncryptionContext,
        key: &KeyRef,
        algorithm: EncryptionAlgorithm,
    ) -> Result<Decrypted, KmsError> {
        let record = self.usable(caller, key, Action::Decrypt, Some(context))?;
        check_encryption_algorithm(&record, algorithm)?;
        check_no_context(context, algorithm)?;
        let version = current_version(&record)?;
        caller.note_key(record.id, Some(version.key.version));
        let hash = algorithm.oaep_hash().ok_or(KmsError::InvalidCiphertext)?;
        let plaintext = match self.hsm.rsa_decrypt(version, hash, ciphertext) {
            Ok(plaintext) => plaintext,
            Err(HsmError::Rejected { .. }) => return Err(KmsError::InvalidCiphertext),
            Err(error) => return Err(error.into()),
        };
        debug!(key_id = %record.id, "decrypted with RSA");
        Ok(Decrypted {
            plaintext: SecretBytes::from(plaintext),
            key_id: record.id,
            algorithm,
        })
    }
    /// Decrypt's work, authorized as `action` (Decrypt, or ReEncryptFrom).
    pub(super) fn open(
        &self,
        caller: &Caller,
        action: Action,
        ciphertext_blob: &[u8],
        context: &EncryptionContext,
        key: Option<&KeyRef>,
    ) -> Result<Decrypted, KmsError> {
        let parsed = blob::parse(ciphertext_blob)?;
        let blob_key = parsed.header.key;
        // A blob naming no key of this service is as invalid as any other bad blob. Anything
        // else the caller learns (whether the key was deleted, what the key_id it named is,
        // the key's spec) waits until the caller may use the blob's key.
        let record = match self
            .store
            .get_key(blob_key.key_id)?
            .map(|r| r.as_seen_at(self.clock.now_millis()))
        {
            Some(r) if r.is_visible() || r.state() == KeyState::Deleted => r,
            _ => return Err(KmsError::InvalidCiphertext),
        };
        caller.note_key(record.id, Some(blob_key.version));
        self.authorize(caller, action, &record, Some(context))?;
        if record.state() == KeyState::Deleted {
            return Err(KmsError::NotFound(format!(
                "key {} was deleted; its ciphertexts cannot be decrypted",
                record.id
            )));
        }
        if let Some(key) = key {
            // Only the id it names matters: the blob's record, read above, is the one in use
            // (and it is visible, a deleted key having been refused).
            let named = match key {
                KeyRef::Id(id) => Some(*id),
                KeyRef::Alias(alias) => self.store.get_alias(alias)?.map(|a| a.key_id),
            };
            if named != Some(blob_key.key_id) {
                return Err(KmsError::IncorrectKey(format!(
                    "the ciphertext was not encrypted under key {key}"
                )));
            }
        }
        // Only a SYMMETRIC_DEFAULT key seals blobs. One naming any other key was not made by
        // this service: with an HMAC key, its MAC of the derivation input would be a message
        // key, and the blob a forgery.
        if !record
            .encryption_algorithms()
            .contains(&EncryptionAlgorithm::SymmetricDefault)
        {
            return Err(KmsError::InvalidCiphertext);
        }
        record.check_usable()?;
        let version = record
            .version_object(blob_key.version)
            .ok_or(KmsError::InvalidCiphertext)?;
        let k_msg = self
            .hsm
            .derive_message_key(version, &symmetric::derivation_input(&parsed.header.nonce))?;
        let plaintext = symmetric::open(&k_msg, &parsed, context)?;
        debug!(key_id = %record.id, version = version.key.version, "decrypted");
        Ok(Decrypted {
            plaintext: SecretBytes::from(plaintext),
            key_id: record.id,
            algorithm: EncryptionAlgorithm::SymmetricDefault,
        })
    }
    /// Decrypts a blob and encrypts its plaintext under `destination` (its current version);
    /// the plaintext never leaves this call. Needs kms:ReEncryptFrom on the source key and
    /// kms:ReEncryptTo on the destination.
    pub fn re_encrypt(
        &self,
        caller: &Caller,
        input: &ReEncryptInput,
    ) -> Result<ReEncrypted, KmsError> {
        caller.note_context(&input.source_context, false);
        caller.note_context(&input.destination_context, true);
        let decrypted = self.open(
            caller,
            Action::ReEncryptFrom,
            &input.ciphertext_blob,
            &input.source_context,
            input.source_key.as_ref(),
        )?;
        let destination = self.usable(
            caller,
            &input.destination,
            Action::ReEncryptTo,
            Some(&input.destination_context),
        )?;
        let ciphertext_blob = self.seal(
            caller,
            &destination,
            &input.destination_context,
            decrypted.plaintext.expose_secret(),
        )?;
        Ok(ReEncrypted {
            ciphertext_blob,
            source_key_id: decrypted.key_id,
            key_id: destination.id,
        })
    }
    /// A fresh data key from the operating system's CSPRNG, and its blob: one HSM operation.
    pub fn generate_data_key(
        &self,
        caller: &Caller,
        key: &KeyRef,
        context: &EncryptionContext,
        length: DataKeyLength,
    ) -> Result<DataKey, KmsError> {
        self.data_key(caller, Action::GenerateDataKey, key, context, length)
    }
    /// GenerateDataKeyWithoutPlaintext: the blob of a fresh data key; the data key itself
    /// is wiped before this returns.
    pub fn generate_data_key_without_plaintext(
        &self,
        caller: &Caller,
        key: &KeyRef,
        context: &EncryptionContext,
        length: DataKeyLength,
    ) -> Result<Encrypted, KmsError> {
        let data_key = self.data_key(
            caller,
            Action::GenerateDataKeyWithoutPlaintext,
            key,
            context,
            length,
        )?;
        Ok(Encrypted {
            ciphertext_blob: data_key.ciphertext_blob,
            key_id: data_key.key_id,
            algorithm: EncryptionAlgorithm::SymmetricDefault,
        })
    }
    pub(super) fn data_key(
        &self,
        caller: &Caller,
        action: Action,
        key: &KeyRef,
        context: &EncryptionContext,
        length: DataKeyLength,
    ) -> Result<DataKey, KmsError> {
        caller.note_context(context, false);
        let record = self.usable(caller, key, action, Some(context))?;
        let mut data_key = vec![0u8; length.0];
        getrandom::fill(&mut data_key).map_err(|e| KmsError::Internal(Box::new(e)))?;
        let plaintext = SecretBytes::new(data_key);
        let ciphertext_blob = self.seal(caller, &record, context, plaintext.expose_secret())?;
        debug!(key_id = %record.id, "generated a data key");
        Ok(DataKey {
            ciphertext_blob,
            plaintext,
            key_id: record.id,
        })
    }
    /// Random bytes from the HSM.
    pub fn generate_random(
        &self,
        caller: &Caller,
        length: RandomLength,
    ) -> Result<SecretBytes, KmsError> {
        self.authorize_server(caller, Action::GenerateRandom)?;
        Ok(SecretBytes::from(self.hsm.random_bytes(length.0)?))
    }
    pub(super) fn seal(
        &self,
        caller: &Caller,
        record: &KeyRecord,
        context: &EncryptionContext,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, KmsError> {
        check_encryption_algorithm(record, EncryptionAlgorithm::SymmetricDefault)?;
        let version = current_version(record)?;
        caller.note_key(record.id, Some(version.key.version));
        let nonce = symmetric::random_nonce()?;
        let k_msg = self
            .hsm
            .derive_message_key(version, &symmetric::derivation_input(&nonce))?;
        symmetric::seal(&k_msg, version.key, nonce, context, plaintext)
    }
}

/// The current version's HSM object.
pub(super) fn current_version(record: &KeyRecord) -> Result<VersionObject<'_>, KmsError> {
    record
        .version_object(record.current_version())
        .ok_or_else(|| {
            KmsError::Internal(format!("key {} has no current version", record.id).into())
        })
}

impl Kms {
    /// The public key of `record`'s current version, proven to be its private key's: once per
    /// version in this process, the HSM signs a random digest with the private key (or, for a
    /// decrypting RSA key, decrypts a random challenge encrypted to the public key), and the
    /// record's public key must check it. So a public key swapped into the record by one who
    /// writes the data dir (to have Verify accept their signatures, or Encrypt encrypt to
    /// them) is refused, whatever the storage and whenever the key was made.
    pub(super) fn public_key_of<'r>(&self, record: &'r KeyRecord) -> Result<&'r [u8], KmsError> {
        let public_key = record.public_key().ok_or_else(|| {
            KmsError::Internal(format!("key {} has no public key on record", record.id).into())
        })?;
        let object = current_version(record)?;
        let material = record.material();
        let proven = (object.key, material, Sha256::digest(public_key).into());
        if self.proven_public_keys().contains(&proven) {
            return Ok(public_key);
        }
        if !self.proves(object, material, public_key)? {
            return Err(KmsError::Internal(
                format!(
                    "the public key on record for key {} is not its private key's",
                    record.id
                )
                .into(),
            ));
        }
        let mut known = self.proven_public_keys();
        if known.len() >= PROVEN_PUBLIC_KEYS {
            known.clear();
        }
        known.insert(proven);
        Ok(public_key)
    }

    /// Whether the private key of `object` (of `material`) answers a random challenge that
    /// `public_key` checks.
    fn proves(
        &self,
        object: VersionObject<'_>,
        material: KeyMaterial,
        public_key: &[u8],
    ) -> Result<bool, KmsError> {
        let challenge = self.hsm.random_bytes(32)?;
        match material {
            KeyMaterial::EcP256Sign => {
                let raw = self
                    .hsm
                    .sign(object, material, SignMechanism::Ecdsa, &challenge)?;
                let signature = asymmetric::ecdsa_raw_to_der(&raw)?;
                asymmetric::verify(
                    public_key,
                    SigningAlgorithm::EcdsaSha256,
                    &challenge,
                    &signature,
                )
            }
            KeyMaterial::RsaSign { .. } => {
                let signature = self.hsm.sign(
                    object,
                    material,
                    SignMechanism::RsaPss(HashAlg::Sha256),
                    &challenge,
                )?;
                asymmetric::verify(
                    public_key,
                    SigningAlgorithm::RsassaPssSha256,
                    &challenge,
                    &signature,
                )
            }
            KeyMaterial::RsaDecrypt { .. } => {
                let sealed = asymmetric::oaep_encrypt(public_key, HashAlg::Sha256, &challenge)?;
                match self.hsm.rsa_decrypt(object, HashAlg::Sha256, &sealed) {
                    Ok(opened) => Ok(bool::from(opened.as_slice().ct_eq(challenge.as_slice()))),
                    Err(HsmError::Rejected { .. }) => Ok(false),
                    Err(error) => Err(error.into()),
                }
            }
            KeyMaterial::MasterSecret | KeyMaterial::HmacSecret(_) => Ok(false),
        }
    }

    fn proven_public_keys(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashSet<ProvenPublicKey>> {
        self.proven_public_keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A version whose public key (by its SHA-256) was proven to be its private key's.
pub(super) type ProvenPublicKey = (KeyVersionRef, KeyMaterial, [u8; 32]);

/// How many proven public keys are remembered (then forgotten all at once).
const PROVEN_PUBLIC_KEYS: usize = 100_000;

/// Fails with InvalidKeyUsageException unless the key supports `algorithm`.
pub(super) fn check_encryption_algorithm(
    record: &KeyRecord,
    algorithm: EncryptionAlgorithm,
) -> Result<(), KmsError> {
    let supported = record.encryption_algorithms();
    if supported.contains(&algorithm) {
        return Ok(());
    }
    let names: Vec<&str> = supported.iter().map(|a| a.as_str()).collect();
    Err(KmsError::InvalidKeyUsage(if names.is_empty() {
        format!(
            "key {} is {} with usage {} and cannot encrypt or decrypt",
            record.id,
            record.spec.as_str(),
            record.usage.as_str()
        )
    } else {
        format!(
            "key {} is {} and does not support {}; give encryption_algorithm {}",
            record.id,
            record.spec.as_str(),
            algorithm.as_str(),
            names.join(" or ")
        )
    }))
}

/// RSA encryption takes no encryption context (AWS refuses one too).
pub(super) fn check_no_context(
    context: &EncryptionContext,
    algorithm: EncryptionAlgorithm,
) -> Result<(), KmsError> {
    if context.is_empty() {
        Ok(())
    } else {
        Err(KmsError::validation(format!(
            "{} takes no encryption context",
            algorithm.as_str()
        )))
    }
}

#[cfg(test)]
mod tests {
    use crate::service::test_support::*;

    #[test]
    fn encrypt_decrypt_round_trip_with_one_hsm_operation_each() {
        let (kms, _, hsm) = memory_kms();
        let key = new_key(&kms);
        let context = ctx(&[("app", "billing")]);
        let before = hsm.derivations();
        let encrypted = ok(kms.encrypt(&admin(), &key, &plaintext(b"secret"), &context));
        assert_eq!(hsm.derivations(), before + 1);
        let decrypted = ok(kms.decrypt(&admin(), &encrypted.ciphertext_blob, &context, None));
        assert_eq!(hsm.derivations(), before + 2);
        assert_eq!(decrypted.plaintext.expose_secret(), b"secret");
        assert_eq!(KeyRef::Id(decrypted.key_id), key);
        ok(kms.generate_data_key(
            &admin(),
            &key,
            &context,
            ok(DataKeyLength::new(Some(DataKeySpec::Aes256), None)),
        ));
        assert_eq!(hsm.derivations(), before + 3);
    }

    #[test]
    fn plaintext_limits() {
        assert!(Plaintext::new(SecretBytes::new(vec![0; 4096])).is_ok());
        assert!(matches!(
            Plaintext::new(SecretBytes::new(vec![0; 4097])),
            Err(KmsError::Validation(_))
        ));
        assert!(matches!(
            Plaintext::new(SecretBytes::new(Vec::new())),
            Err(KmsError::Validation(_))
        ));
    }

    #[test]
    fn disabled_keys_refuse_every_cryptographic_operation() {
        let (kms, _, _) = memory_kms();
        let key = new_key(&kms);
        let other = new_key(&kms);
        let context = ctx(&[]);
        let blob = ok(kms.encrypt(&admin(), &key, &plaintext(b"x"), &context)).ciphertext_blob;
        ok(kms.disable_key(&admin(), &key));
        let length = ok(DataKeyLength::new(None, Some(10)));
        assert!(matches!(
            kms.encrypt(&admin(), &key, &plaintext(b"x"), &context),
            Err(KmsError::Disabled(_))
        ));
        assert!(matches!(
            kms.decrypt(&admin(), &blob, &context, None),
            Err(KmsError::Disabled(_))
        ));
        assert!(matches!(
            kms.re_encrypt(&admin(), &ReEncryptInput::new(&blob, &context, &other)),
            Err(KmsError::Disabled(_))
        ));
        assert!(matches!(
            kms.generate_data_key(&admin(), &key, &context, length),
            Err(KmsError::Disabled(_))
        ));
        ok(kms.enable_key(&admin(), &key));
        assert!(kms.decrypt(&admin(), &blob, &context, None).is_ok());
    }

    #[test]
    fn decrypt_naming_another_key_is_incorrect_key() {
        let (kms, _, _) = memory_kms();
        let key = new_key(&kms);
        let other = new_key(&kms);
        let blob = ok(kms.encrypt(&admin(), &key, &plaintext(b"x"), &ctx(&[]))).ciphertext_blob;
        assert!(matches!(
            kms.decrypt(&admin(), &blob, &ctx(&[]), Some(&other)),
            Err(KmsError::IncorrectKey(_))
        ));
        assert!(kms.decrypt(&admin(), &blob, &ctx(&[]), Some(&key)).is_ok());
    }

    #[test]
    fn unknown_keys_are_not_found_and_blobs_of_unknown_keys_are_invalid() {
        let (kms, _, _) = memory_kms();
        let missing = KeyRef::Id(KeyId::random());
        assert!(matches!(
            kms.describe_key(&admin(), &missing),
            Err(KmsError::NotFound(_))
        ));
        assert!(matches!(
            kms.encrypt(&admin(), &missing, &plaintext(b"x"), &ctx(&[])),
            Err(KmsError::NotFound(_))
        ));
        let key = new_key(&kms);
        let mut blob = ok(kms.encrypt(&admin(), &key, &plaintext(b"x"), &ctx(&[]))).ciphertext_blob;
        blob[5] ^= 1; // the key id
        assert!(matches!(
            kms.decrypt(&admin(), &blob, &ctx(&[]), None),
            Err(KmsError::InvalidCiphertext)
        ));
    }

    /// Finding 1 of the security review: an HMAC_256 key's MAC of the derivation input is a
    /// message key, so a caller allowed GenerateMac could seal a blob naming that key. Decrypt
    /// and ReEncrypt must refuse it as they refuse any altered blob.
    #[test]
    fn a_blob_forged_with_an_hmac_keys_mac_is_refused() {
        let (kms, _, _) = memory_kms();
        let hmac = ok(kms.create_key(&admin(), CreateKeyInput::new(KeySpec::Hmac256)));
        let target = new_key(&kms);
        let nonce = ok(symmetric::random_nonce());
        let mac = ok(kms.generate_mac(
            &admin(),
            &KeyRef::Id(hmac.id),
            &symmetric::derivation_input(&nonce),
            crate::key::MacAlgorithm::HmacSha256,
        ))
        .mac;
        let k_msg = crate::hsm::MessageKey::new(zeroize::Zeroizing::new(
            mac.as_slice()
                .try_into()
                .unwrap_or_else(|_| panic!("32 bytes")),
        ));
        let version = KeyVersionRef {
            key_id: hmac.id,
            version: hmac.current_version(),
        };
        let forged = ok(symmetric::seal(
            &k_msg,
            version,
            nonce,
            &ctx(&[]),
            b"forged",
        ));
        for named in [None, Some(KeyRef::Id(hmac.id))] {
            assert!(matches!(
                kms.decrypt(&admin(), &forged, &ctx(&[]), named.as_ref()),
                Err(KmsError::InvalidCiphertext)
            ));
            assert!(matches!(
                kms.re_encrypt(
                    &admin(),
                    &ReEncryptInput {
                        source_key: named.clone(),
                        ..ReEncryptInput::new(&forged, &ctx(&[]), &target)
                    }
                ),
                Err(KmsError::InvalidCiphertext)
            ));
        }
    }

    #[test]
    fn re_encrypt_moves_a_blob_to_another_key() {
        let (kms, _, _) = memory_kms();
        let a = new_key(&kms);
        let b = new_key(&kms);
        let blob = ok(kms.encrypt(&admin(), &a, &plaintext(b"move me"), &ctx(&[("k", "1")])))
            .ciphertext_blob;
        let moved = ok(kms.re_encrypt(
            &admin(),
            &ReEncryptInput {
                source_key: Some(a.clone()),
                destination_context: ctx(&[("k", "2")]),
                ..ReEncryptInput::new(&blob, &ctx(&[("k", "1")]), &b)
            },
        ));
        assert_eq!(KeyRef::Id(moved.source_key_id), a);
        assert_eq!(KeyRef::Id(moved.key_id), b);
        let decrypted = ok(kms.decrypt(
            &admin(),
            &moved.ciphertext_blob,
            &ctx(&[("k", "2")]),
            Some(&b),
        ));
        assert_eq!(decrypted.plaintext.expose_secret(), b"move me");
    }

    #[test]
    fn data_key_lengths() {
        let (kms, _, _) = memory_kms();
        let key = new_key(&kms);
        for (spec, bytes, len) in [
            (Some(DataKeySpec::Aes128), None, 16),
            (Some(DataKeySpec::Aes256), None, 32),
            (None, Some(1), 1),
            (None, Some(1024), 1024),
        ] {
            let dk = ok(kms.generate_data_key(
                &admin(),
                &key,
                &ctx(&[]),
                ok(DataKeyLength::new(spec, bytes)),
            ));
            assert_eq!(dk.plaintext.len(), len);
            let back = ok(kms.decrypt(&admin(), &dk.ciphertext_blob, &ctx(&[]), None));
            assert_eq!(back.plaintext.expose_secret(), dk.plaintext.expose_secret());
        }
        for (spec, bytes) in [
            (None, None),
            (None, Some(0)),
            (None, Some(1025)),
            (Some(DataKeySpec::Aes128), Some(16)),
        ] {
            assert!(matches!(
                DataKeyLength::new(spec, bytes),
                Err(KmsError::Validation(_))
            ));
        }
    }

    /// Finding 7: Decrypt tells a caller without the right to the blob's key nothing about
    /// the key_id it named (an alias that exists or not, that points elsewhere or not).
    #[test]
    fn decrypt_authorizes_before_it_reveals_anything() {
        let (kms, _, _) = memory_kms();
        let key = new_key(&kms);
        let other = new_key(&kms);
        let KeyRef::Id(other_id) = other else {
            unreachable!()
        };
        ok(kms.create_alias(&admin(), &alias("alias/same"), &key));
        ok(kms.create_alias(&admin(), &alias("alias/other"), &KeyRef::Id(other_id)));
        let blob = ok(kms.encrypt(&admin(), &key, &plaintext(b"x"), &ctx(&[]))).ciphertext_blob;
        let stranger = Caller::new("stranger", true);
        for named in ["alias/same", "alias/other", "alias/missing"] {
            let named = KeyRef::parse(named, "key_id").ok();
            assert!(
                denied(kms.decrypt(&stranger, &blob, &ctx(&[]), named.as_ref())),
                "{named:?}"
            );
        }
        // The caller who may use the key learns that the alias is not the blob's key.
        for named in ["alias/other", "alias/missing"] {
            let named = KeyRef::parse(named, "key_id").ok();
            assert!(matches!(
                kms.decrypt(&admin(), &blob, &ctx(&[]), named.as_ref()),
                Err(KmsError::IncorrectKey(_))
            ));
        }
    }
}
