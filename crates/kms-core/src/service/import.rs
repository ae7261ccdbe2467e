//! Importing key material (origin EXTERNAL): GetParametersForImport, ImportKeyMaterial,
//! DeleteImportedKeyMaterial, and the expiry of material and of import parameters.
//!
//! The caller wraps its material with an RSA public key whose private half is in the HSM and
//! can only unwrap; the HSM unwraps it straight into an object with the custody of generated
//! material. The service never sees the material. To refuse different material for a key that
//! had material before, the record keeps an HMAC that the HSM computes with the material over
//! [`MATERIAL_CHECK_INPUT`].

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use super::{ImportKeyMaterialInput, Kms};
use crate::caller::Caller;
use crate::error::KmsError;
use crate::hsm::{HsmError, KeyVersionRef, SignMechanism, VersionObject, WrappingKeyRef};
use crate::ids::{KeyId, KeyRef};
use crate::key::{
    ExpirationModel, ImportParameters, KeyMaterial, KeyRecord, KeyState, KeyStorage, MacAlgorithm,
    WrappingAlgorithm,
};
use crate::policy::Action;

/// What the HSM MACs (HMAC-SHA-1, [`SignMechanism::MaterialCheck`]) with imported material to
/// tell one material from another. No other SHA-1 HMAC leaves the service, so the value is
/// never a `k_msg` or a MAC that VerifyMac would accept.
pub const MATERIAL_CHECK_INPUT: &[u8] = b"kms.v1 imported key material check";

/// How long import parameters are valid.
pub const IMPORT_PARAMETERS_VALID_MS: i64 = 24 * 3_600_000;

const TOKEN_MAGIC: &[u8; 4] = b"kit1";
const TOKEN_LEN: usize = 4 + 16 + 4 + 32;

/// GetParametersForImport's answer.
pub struct ImportParametersIssued {
    /// The key's id.
    pub key_id: KeyId,
    /// The token to give back to ImportKeyMaterial.
    pub import_token: Vec<u8>,
    /// The wrapping public key, DER SubjectPublicKeyInfo.
    pub public_key: Vec<u8>,
    /// When the parameters expire, in Unix milliseconds.
    pub valid_to_ms: i64,
}

impl Kms {
    /// Makes a wrapping key pair in the HSM (RSA of `wrapping_bits`, 3072 or 4096) and a token
    /// for an EXTERNAL key. Replaces (and destroys) the key's previous parameters.
    pub fn get_parameters_for_import(
        &self,
        caller: &Caller,
        key: &KeyRef,
        algorithm: WrappingAlgorithm,
        wrapping_bits: u32,
    ) -> Result<ImportParametersIssued, KmsError> {
        if !matches!(wrapping_bits, 3072 | 4096) {
            return Err(KmsError::validation(format!(
                "wrapping_key_spec must be RSA_3072 or RSA_4096, got RSA_{wrapping_bits}"
            )));
        }
        // The serial is taken under the write lock; the HSM makes the key pair (seconds for
        // RSA-4096) without it.
        let (key_id, serial) = {
            let _guard = self.write_guard();
            let mut record = self.authorized(caller, key, Action::GetParametersForImport, None)?;
            let serial = record.reserve_wrapping_serial()?;
            self.store.put_key(&record)?;
            (record.id, serial)
        };
        let wrapping = WrappingKeyRef { key_id, serial };
        let public_key = self
            .hsm
            .create_wrapping_key(wrapping, wrapping_bits, algorithm)?;
        let mut random = [0u8; 32];
        getrandom::fill(&mut random).map_err(|e| KmsError::Internal(Box::new(e)))?;
        let mut import_token = Vec::with_capacity(TOKEN_LEN);
        import_token.extend_from_slice(TOKEN_MAGIC);
        import_token.extend_from_slice(key_id.as_bytes());
        import_token.extend_from_slice(&serial.to_be_bytes());
        import_token.extend_from_slice(&random);
        let valid_to_ms = self
            .clock
            .now_millis()
            .saturating_add(IMPORT_PARAMETERS_VALID_MS);
        let parameters = ImportParameters {
            serial,
            token_sha256: Sha256::digest(&import_token).into(),
            algorithm,
            valid_to_ms,
        };
        let mut previous = None;
        let issued = self.rewrite(key_id, |record| {
            previous = record.issue_import_parameters(parameters)?;
            Ok(())
        });
        if let Err(error) = issued {
            self.destroy_wrapping_key_logged(wrapping);
            return Err(error);
        }
        if let Some(previous) = previous {
            self.destroy_wrapping_key_logged(WrappingKeyRef {
                key_id,
                serial: previous.serial,
            });
        }
        info!(%key_id, serial, algorithm = algorithm.as_str(), "issued import parameters");
        Ok(ImportParametersIssued {
            key_id,
            import_token,
            public_key,
            valid_to_ms,
        })
    }

    /// Unwraps `encrypted_key_material` in the HSM into the PendingImport key, which becomes
    /// Enabled. `valid_to_ms` is required with KEY_MATERIAL_EXPIRES and refused without.
    pub fn import_key_material(
        &self,
        caller: &Caller,
        input: &ImportKeyMaterialInput,
    ) -> Result<(), KmsError> {
        let ImportKeyMaterialInput {
            key,
            import_token,
            encrypted_key_material,
            expiration,
            valid_to_ms,
        } = input;
        // Material is made: taken before the write lock, the order of every such path.
        let _making = self.making_material();
        // Under the write lock throughout: the unwrap makes the key's one version object, which
        // a concurrent import or deletion of material would otherwise race for. RSA-OAEP
        // unwrapping takes the HSM milliseconds.
        let _guard = self.write_guard();
        let mut record = self.authorized(caller, key, Action::ImportKeyMaterial, None)?;
        record.check_external()?;
        record.check_importable()?;
        let now = self.clock.now_millis();
        let valid_to_ms = match (*expiration, *valid_to_ms) {
            (ExpirationModel::KeyMaterialExpires, Some(t)) if t > now => Some(t),
            (ExpirationModel::KeyMaterialExpires, Some(_)) => {
                return Err(KmsError::validation("valid_to must be in the future"));
            }
            (ExpirationModel::KeyMaterialExpires, None) => {
                return Err(KmsError::validation(
                    "expiration_model KEY_MATERIAL_EXPIRES needs valid_to",
                ));
            }
            (ExpirationModel::KeyMaterialDoesNotExpire, None) => None,
            (ExpirationModel::KeyMaterialDoesNotExpire, Some(_)) => {
                return Err(KmsError::validation(
                    "valid_to is only for expiration_model KEY_MATERIAL_EXPIRES",
                ));
            }
        };
        let parameters = record.import_parameters().cloned().ok_or_else(|| {
            KmsError::InvalidImportToken(format!(
                "key {} has no import parameters; call GetParametersForImport",
                record.id
            ))
        })?;
        let token_sha256: [u8; 32] = Sha256::digest(import_token).into();
        if !bool::from(token_sha256.ct_eq(&parameters.token_sha256)) {
            return Err(KmsError::InvalidImportToken(format!(
                "the import token is not the one GetParametersForImport last returned for key {}",
                record.id
            )));
        }
        if parameters.valid_to_ms <= now {
            return Err(KmsError::ExpiredImportToken);
        }
        let wrapping = WrappingKeyRef {
            key_id: record.id,
            serial: parameters.serial,
        };
        let version = KeyVersionRef {
            key_id: record.id,
            version: record.current_version(),
        };
        let material = record.material();
        caller.note_key(record.id, Some(version.version));
        let unwrapped = if self.storage == KeyStorage::Wrapped {
            self.hsm
                .import_wrapped_version(
                    version,
                    material,
                    wrapping,
                    parameters.algorithm,
                    encrypted_key_material,
                )
                .map(|(wrapped, length)| (Some(wrapped), length))
        } else {
            self.hsm
                .unwrap_key_version(
                    version,
                    material,
                    wrapping,
                    parameters.algorithm,
                    encrypted_key_material,
                )
                .map(|length| (None, length))
        };
        let (wrapped, length) = match unwrapped {
            Ok(unwrapped) => unwrapped,
            Err(HsmError::Rejected { .. }) => return Err(KmsError::InvalidCiphertext),
            Err(error) => return Err(error.into()),
        };
        let object = VersionObject {
            key: version,
            wrapped: wrapped.as_ref(),
        };
        let checked = self
            .check_material(&record, object, material, length)
            .and_then(|check| record.material_imported(&check, valid_to_ms, wrapped.clone()));
        if let Err(error) = checked {
            self.destroy_material_logged(version);
            return Err(error);
        }
        if let Err(error) = self.store.put_key(&record) {
            // The record still says PendingImport; reconciliation would remove the object.
            self.destroy_material_logged(version);
            return Err(error.into());
        }
        self.destroy_wrapping_key_logged(wrapping);
        info!(key_id = %record.id, "imported key material");
        Ok(())
    }

    /// Checks the length of freshly unwrapped material and returns its check value, which
    /// tells it from other material.
    fn check_material(
        &self,
        record: &KeyRecord,
        version: VersionObject<'_>,
        material: KeyMaterial,
        length: Option<usize>,
    ) -> Result<Vec<u8>, KmsError> {
        let lengths = match material {
            KeyMaterial::HmacSecret(mac) => mac.key_lengths(),
            _ => 32..=32,
        };
        // An HSM that does not report the length (SoftHSM2) cannot be checked here; kmsctl
        // checks the length before wrapping.
        if let Some(length) = length
            && !lengths.contains(&length)
        {
            return Err(KmsError::validation(format!(
                "key material for a {} key must be {} to {} bytes, got {length}",
                record.spec.as_str(),
                lengths.start(),
                lengths.end()
            )));
        }
        // HSMs refuse an HMAC key shorter than the hash's output (CKR_KEY_SIZE_RANGE): one
        // HMAC with the mechanism the key will use proves the lower bound even where the
        // length is not reported. Its value is discarded.
        let mechanism = match material {
            KeyMaterial::HmacSecret(mac) => SignMechanism::Hmac(mac),
            _ => SignMechanism::Hmac(MacAlgorithm::HmacSha256),
        };
        let too_short = || {
            KmsError::validation(format!(
                "key material for a {} key must be {} to {} bytes; this is shorter",
                record.spec.as_str(),
                lengths.start(),
                lengths.end()
            ))
        };
        match self
            .hsm
            .sign(version, material, mechanism, MATERIAL_CHECK_INPUT)
        {
            Ok(_) => {}
            Err(HsmError::Rejected { .. }) => return Err(too_short()),
            Err(error) => return Err(error.into()),
        }
        match self.hsm.sign(
            version,
            material,
            SignMechanism::MaterialCheck,
            MATERIAL_CHECK_INPUT,
        ) {
            Ok(check) => Ok(check),
            Err(HsmError::Rejected { .. }) => Err(too_short()),
            Err(error) => Err(error.into()),
        }
    }

    /// Destroys an EXTERNAL key's material; the key becomes PendingImport until material is
    /// imported again (the same material: a key's material never changes).
    pub fn delete_imported_key_material(
        &self,
        caller: &Caller,
        key: &KeyRef,
    ) -> Result<(), KmsError> {
        // Under the write lock: an import meanwhile would make the object destroyed here.
        let _guard = self.write_guard();
        let mut record = self.authorized(caller, key, Action::DeleteImportedKeyMaterial, None)?;
        record.check_external()?;
        if record.state() == KeyState::PendingDeletion {
            return Err(record.refuse("changed"));
        }
        self.forget_material(&mut record)?;
        info!(key_id = %record.id, "deleted imported key material");
        Ok(())
    }

    /// Records that the key has no material, then destroys its HSM object. In this order, a
    /// crash in between leaves an object that startup reconciliation removes, never a key
    /// that claims material it lacks.
    fn forget_material(&self, record: &mut KeyRecord) -> Result<(), KmsError> {
        record.forget_material()?;
        self.store.put_key(record)?;
        for version in record.version_refs() {
            self.hsm.destroy_key_version(version)?;
        }
        Ok(())
    }

    /// Destroys the material of EXTERNAL keys whose `valid_to` has passed and the wrapping keys
    /// of import parameters that expired unused; returns how many materials expired.
    pub fn run_due_expirations(&self) -> Result<usize, KmsError> {
        let now = self.clock.now_millis();
        let mut expired = 0;
        self.for_each_key(|record| {
            expired += usize::from(self.expire_if_due(&record, now)?);
            Ok(())
        })?;
        Ok(expired)
    }

    /// Expires `record`'s import parameters and material if they are due at `now`; returns
    /// whether its material expired.
    pub(super) fn expire_if_due(&self, record: &KeyRecord, now: i64) -> Result<bool, KmsError> {
        let parameters_due = record
            .import_parameters()
            .is_some_and(|p| p.valid_to_ms <= now);
        if !record.material_expired(now) && !parameters_due {
            return Ok(false);
        }
        let _guard = self.write_guard();
        // Read again under the lock: a call may have changed the key since.
        let Some(mut record) = self.store.get_key(record.id)? else {
            return Ok(false);
        };
        if let Some(parameters) = record.take_expired_import_parameters(now) {
            self.store.put_key(&record)?;
            self.hsm.destroy_wrapping_key(WrappingKeyRef {
                key_id: record.id,
                serial: parameters.serial,
            })?;
        }
        if !record.material_expired(now) {
            return Ok(false);
        }
        self.forget_material(&mut record)?;
        info!(key_id = %record.id, "imported key material expired and was destroyed");
        Ok(true)
    }

    fn destroy_wrapping_key_logged(&self, wrapping: WrappingKeyRef) {
        if let Err(error) = self.hsm.destroy_wrapping_key(wrapping) {
            warn!(key_id = %wrapping.key_id, serial = wrapping.serial, error = %error,
                "could not destroy a wrapping key; startup reconciliation will");
        }
    }

    fn destroy_material_logged(&self, version: KeyVersionRef) {
        if let Err(error) = self.hsm.destroy_key_version(version) {
            warn!(key_id = %version.key_id, error = %error,
                "could not destroy refused key material; startup reconciliation will");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::context::EncryptionContext;
    use crate::hsm::KeyStore as _;
    use crate::key::{KeySpec, Origin};
    use crate::secret::SecretBytes;
    use crate::service::{CreateKeyInput, Plaintext};
    use crate::testing::{ManualClock, MemoryStore, SoftKeyStore, admin, authorization};

    /// ImportKeyMaterial of material that does not expire.
    fn import_input(key: &KeyRef, token: &[u8], material: &[u8]) -> ImportKeyMaterialInput {
        ImportKeyMaterialInput {
            key: key.clone(),
            import_token: token.to_vec(),
            encrypted_key_material: material.to_vec(),
            expiration: ExpirationModel::KeyMaterialDoesNotExpire,
            valid_to_ms: None,
        }
    }

    fn ok<T>(r: Result<T, KmsError>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    struct Fixture {
        kms: Kms,
        hsm: Arc<SoftKeyStore>,
        clock: Arc<ManualClock>,
    }

    fn fixture() -> Fixture {
        let hsm = Arc::new(SoftKeyStore::default());
        let clock = Arc::new(ManualClock::default());
        clock.set_millis(1_000_000);
        let kms = Kms::new(Arc::new(MemoryStore::default()), hsm.clone(), clock.clone())
            .with_authorization(authorization());
        Fixture { kms, hsm, clock }
    }

    fn external(kms: &Kms, spec: KeySpec) -> KeyRef {
        let record = ok(kms.create_key(
            &admin(),
            CreateKeyInput {
                origin: Origin::External,
                ..CreateKeyInput::new(spec)
            },
        ));
        assert_eq!(record.state(), KeyState::PendingImport);
        KeyRef::Id(record.id)
    }

    /// Parameters, then an import of `material` (the soft HSM's wrapping is the identity).
    fn import(
        f: &Fixture,
        key: &KeyRef,
        material: &[u8],
        valid_to: Option<i64>,
    ) -> Result<(), KmsError> {
        let parameters = ok(f.kms.get_parameters_for_import(
            &admin(),
            key,
            WrappingAlgorithm::RsaesOaepSha1,
            3072,
        ));
        let expiration = if valid_to.is_some() {
            ExpirationModel::KeyMaterialExpires
        } else {
            ExpirationModel::KeyMaterialDoesNotExpire
        };
        f.kms.import_key_material(
            &admin(),
            &ImportKeyMaterialInput {
                key: key.clone(),
                import_token: parameters.import_token,
                encrypted_key_material: material.to_vec(),
                expiration,
                valid_to_ms: valid_to,
            },
        )
    }

    fn encrypt(kms: &Kms, key: &KeyRef) -> Result<Vec<u8>, KmsError> {
        let plaintext = ok(Plaintext::new(SecretBytes::new(b"x".to_vec())));
        kms.encrypt(&admin(), key, &plaintext, &EncryptionContext::default())
            .map(|e| e.ciphertext_blob)
    }

    #[test]
    fn tokens_expire_and_only_the_latest_counts() {
        let f = fixture();
        let key = external(&f.kms, KeySpec::SymmetricDefault);
        let first = ok(f.kms.get_parameters_for_import(
            &admin(),
            &key,
            WrappingAlgorithm::RsaesOaepSha1,
            4096,
        ));
        assert_eq!(first.valid_to_ms, 1_000_000 + IMPORT_PARAMETERS_VALID_MS);
        let second = ok(f.kms.get_parameters_for_import(
            &admin(),
            &key,
            WrappingAlgorithm::RsaesOaepSha1,
            4096,
        ));
        assert_eq!(
            ok(f.hsm.list_wrapping_keys().map_err(KmsError::from)).len(),
            1,
            "new parameters destroy the old wrapping key"
        );
        let material = [5u8; 32];
        assert!(matches!(
            f.kms.import_key_material(
                &admin(),
                &import_input(&key, &first.import_token, &material)
            ),
            Err(KmsError::InvalidImportToken(_))
        ));
        f.clock.set_millis(second.valid_to_ms);
        assert!(matches!(
            f.kms.import_key_material(
                &admin(),
                &import_input(&key, &second.import_token, &material)
            ),
            Err(KmsError::ExpiredImportToken)
        ));
        assert_eq!(ok(f.kms.run_due_expirations()), 0);
        assert!(
            ok(f.hsm.list_wrapping_keys().map_err(KmsError::from)).is_empty(),
            "expired parameters lose their wrapping key"
        );
        assert!(matches!(
            f.kms.import_key_material(
                &admin(),
                &import_input(&key, &second.import_token, &material)
            ),
            Err(KmsError::InvalidImportToken(_))
        ));
        assert!(matches!(
            f.kms
                .get_parameters_for_import(&admin(), &key, WrappingAlgorithm::RsaesOaepSha1, 2048),
            Err(KmsError::Validation(_))
        ));
    }

    #[test]
    fn material_has_the_right_length_and_never_changes() {
        let f = fixture();
        let key = external(&f.kms, KeySpec::SymmetricDefault);
        assert!(matches!(
            import(&f, &key, &[1; 16], None),
            Err(KmsError::Validation(_))
        ));
        assert!(matches!(
            encrypt(&f.kms, &key),
            Err(KmsError::InvalidState(_))
        ));
        ok(import(&f, &key, &[1; 32], None));
        let blob = ok(encrypt(&f.kms, &key));
        assert!(matches!(
            import(&f, &key, &[1; 32], None),
            Err(KmsError::InvalidState(_))
        ));
        ok(f.kms.delete_imported_key_material(&admin(), &key));
        assert!(matches!(
            encrypt(&f.kms, &key),
            Err(KmsError::InvalidState(_))
        ));
        assert!(matches!(
            import(&f, &key, &[2; 32], None),
            Err(KmsError::IncorrectKeyMaterial(_))
        ));
        ok(import(&f, &key, &[1; 32], None));
        assert!(
            f.kms
                .decrypt(&admin(), &blob, &EncryptionContext::default(), None)
                .is_ok()
        );

        let hmac = external(&f.kms, KeySpec::Hmac512);
        assert!(matches!(
            import(&f, &hmac, &[1; 63], None),
            Err(KmsError::Validation(_))
        ));
        ok(import(&f, &hmac, &[1; 128], None));

        let generated = f.kms.create_key(
            &admin(),
            CreateKeyInput {
                origin: Origin::External,
                ..CreateKeyInput::new(KeySpec::EccNistP256)
            },
        );
        assert!(matches!(generated, Err(KmsError::UnsupportedOperation(_))));
    }

    #[test]
    fn expired_material_is_unusable_at_once_and_destroyed_by_the_scheduler() {
        let f = fixture();
        let key = external(&f.kms, KeySpec::SymmetricDefault);
        assert!(matches!(
            import(&f, &key, &[1; 32], Some(999_999)),
            Err(KmsError::Validation(_))
        ));
        ok(import(&f, &key, &[1; 32], Some(2_000_000)));
        let id = ok(f.kms.describe_key(&admin(), &key)).id;
        let object = KeyVersionRef {
            key_id: id,
            version: 1,
        };
        // Kept wrapped in the record (the default storage), or a token object.
        let material_kept = |f: &Fixture| {
            f.hsm.contains(object)
                || ok(f.kms.describe_key(&admin(), &key)).versions()[0]
                    .wrapped
                    .is_some()
        };
        ok(encrypt(&f.kms, &key));
        f.clock.set_millis(2_000_000);
        assert!(matches!(
            encrypt(&f.kms, &key),
            Err(KmsError::InvalidState(_))
        ));
        assert_eq!(
            ok(f.kms.describe_key(&admin(), &key)).state(),
            KeyState::PendingImport
        );
        assert!(
            material_kept(&f),
            "destroyed by the scheduler, not by a read"
        );
        assert_eq!(ok(f.kms.run_due_expirations()), 1);
        assert!(!material_kept(&f));
        let record = ok(f.kms.describe_key(&admin(), &key));
        assert!(!record.has_material());
        assert_eq!(ok(f.kms.run_due_expirations()), 0);
        // The same material comes back in.
        ok(import(&f, &key, &[1; 32], None));
        ok(encrypt(&f.kms, &key));
    }

    #[test]
    fn reconciliation_removes_half_done_imports_and_orphan_wrapping_keys() {
        let f = fixture();
        let key = external(&f.kms, KeySpec::SymmetricDefault);
        let id = ok(f.kms.describe_key(&admin(), &key)).id;
        ok(f.kms
            .get_parameters_for_import(&admin(), &key, WrappingAlgorithm::RsaesOaepSha1, 3072));
        // A crash after the HSM unwrapped but before the record said so, and a wrapping key
        // whose parameters never reached the store.
        let object = KeyVersionRef {
            key_id: id,
            version: 1,
        };
        f.hsm.insert_secret(object, [4; 32]);
        let orphan = WrappingKeyRef {
            key_id: id,
            serial: 99,
        };
        ok(f.hsm
            .create_wrapping_key(orphan, 3072, WrappingAlgorithm::RsaesOaepSha1)
            .map_err(KmsError::from));
        let report = ok(f.kms.reconcile());
        assert!(report.missing_objects.is_empty());
        assert!(!f.hsm.contains(object));
        assert_eq!(
            ok(f.hsm.list_wrapping_keys().map_err(KmsError::from)),
            vec![WrappingKeyRef {
                key_id: id,
                serial: 1
            }],
            "the key's current parameters survive"
        );
    }
}
