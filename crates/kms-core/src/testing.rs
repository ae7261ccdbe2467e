//! In-memory backends for tests: a [`MetadataStore`] in a map, a [`KeyStore`] that computes
//! the HMAC in software with known master secrets, and a software [`CheckpointSigner`]. Never
//! used by kmsd.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::alias::AliasRecord;
use crate::asymmetric::HashAlg;
use crate::audit::{AuditPublicKey, CheckpointSigner, SealPin};
use crate::clock::Clock;
use crate::hsm::{
    HsmError, KeyStore, KeyVersionRef, MessageKey, SignMechanism, VersionObject, WrappingKeyRef,
};
use crate::ids::{AliasName, KeyId};
use crate::key::{KeyMaterial, KeyRecord, MacAlgorithm, WrappedMaterial, WrappingAlgorithm};
use crate::store::{MetadataStore, StoreError};

pub mod audit_logs;
pub mod fault_load;
mod faults;
pub use faults::{Fault, FaultyKeyStore};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Key records, aliases and audit pins in maps.
#[derive(Default)]
pub struct MemoryStore {
    keys: Mutex<BTreeMap<KeyId, KeyRecord>>,
    aliases: Mutex<BTreeMap<AliasName, AliasRecord>>,
    audit_pins: Mutex<HashMap<[u8; 16], SealPin>>,
    fail_pins: AtomicBool,
    crl_numbers: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
    current_domain: Mutex<Option<u32>>,
    rewrapped_domain: Mutex<Option<u32>>,
}

impl MemoryStore {
    /// Makes the next audit pin writes fail, as a broken disk would.
    pub fn set_fail_pins(&self, fail: bool) {
        self.fail_pins.store(fail, Ordering::SeqCst);
    }
}

impl MetadataStore for MemoryStore {
    fn instance_id(&self) -> [u8; 16] {
        [7; 16]
    }
    fn get_key(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        Ok(lock(&self.keys).get(&id).cloned())
    }
    fn put_key(&self, record: &KeyRecord) -> Result<(), StoreError> {
        lock(&self.keys).insert(record.id, record.clone());
        Ok(())
    }
    fn delete_key(&self, id: KeyId) -> Result<(), StoreError> {
        lock(&self.keys).remove(&id);
        Ok(())
    }
    fn list_keys(&self, after: Option<KeyId>, limit: usize) -> Result<Vec<KeyRecord>, StoreError> {
        let keys = lock(&self.keys);
        Ok(keys
            .values()
            .filter(|r| after.is_none_or(|a| r.id > a))
            .take(limit)
            .cloned()
            .collect())
    }
    fn get_alias(&self, name: &AliasName) -> Result<Option<AliasRecord>, StoreError> {
        Ok(lock(&self.aliases).get(name).cloned())
    }
    fn put_alias(&self, alias: &AliasRecord) -> Result<(), StoreError> {
        lock(&self.aliases).insert(alias.name.clone(), alias.clone());
        Ok(())
    }
    fn delete_alias(&self, name: &AliasName) -> Result<(), StoreError> {
        lock(&self.aliases).remove(name);
        Ok(())
    }
    fn list_aliases(
        &self,
        after: Option<&AliasName>,
        limit: usize,
    ) -> Result<Vec<AliasRecord>, StoreError> {
        let aliases = lock(&self.aliases);
        Ok(aliases
            .values()
            .filter(|a| after.is_none_or(|after| &a.name > after))
            .take(limit)
            .cloned()
            .collect())
    }
    fn audit_pin(&self, log_id: [u8; 16]) -> Result<Option<SealPin>, StoreError> {
        Ok(lock(&self.audit_pins).get(&log_id).copied())
    }
    fn put_audit_pin(&self, log_id: [u8; 16], pin: SealPin) -> Result<(), StoreError> {
        if self.fail_pins.load(Ordering::SeqCst) {
            return Err(StoreError::new("write the audit pin", "injected failure"));
        }
        lock(&self.audit_pins).insert(log_id, pin);
        Ok(())
    }
    fn crl_number(&self, issuer: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(lock(&self.crl_numbers).get(issuer).cloned())
    }
    fn put_crl_number(&self, issuer: &[u8], number: &[u8]) -> Result<(), StoreError> {
        lock(&self.crl_numbers).insert(issuer.to_vec(), number.to_vec());
        Ok(())
    }
    fn current_domain(&self) -> Result<Option<u32>, StoreError> {
        Ok(*lock(&self.current_domain))
    }
    fn put_current_domain(&self, version: u32) -> Result<(), StoreError> {
        *lock(&self.current_domain) = Some(version);
        Ok(())
    }
    fn rewrapped_domain(&self) -> Result<Option<u32>, StoreError> {
        Ok(*lock(&self.rewrapped_domain))
    }
    fn put_rewrapped_domain(&self, version: u32) -> Result<(), StoreError> {
        *lock(&self.rewrapped_domain) = Some(version);
        Ok(())
    }
}

/// A key the software HSM holds. A secret knows its kind (master secret or HMAC key), as
/// the HSM's object identity does: a lookup for one kind never finds the other.
enum SoftKey {
    Secret(KeyMaterial, Zeroizing<Vec<u8>>),
    EcP256(SigningKey),
}

/// A software stand-in for the HSM: secrets (master and HMAC) and P-256 key pairs. It has no
/// RSA (tested on SoftHSM2 in kms-hsm and the end-to-end tests): such calls fail with
/// [`HsmError::Unsupported`]. Its import "wrapping" is the identity — the wrapped material is
/// the material — so the service's import rules can be tested without RSA; real unwrapping is
/// tested on SoftHSM2. Master secrets are random unless set with
/// [`SoftKeyStore::insert_secret`]; every derivation is counted.
#[derive(Default)]
pub struct SoftKeyStore {
    keys: Mutex<HashMap<KeyVersionRef, SoftKey>>,
    wrapping_keys: Mutex<std::collections::BTreeSet<WrappingKeyRef>>,
    derivations: AtomicUsize,
    fail_creation: Mutex<bool>,
    /// The domain keys (AES-256-GCM here) with their authenticator keys, by version, made on
    /// first use.
    domains: Mutex<std::collections::BTreeMap<u32, Zeroizing<[u8; 64]>>>,
    /// The current domain version (0 stands for 1, a deployment's first).
    current_domain: std::sync::atomic::AtomicU32,
    /// Whether domain keys are sealed (never rewrapped), as kmsd's default on a real HSM.
    sealed_domains: std::sync::atomic::AtomicBool,
}

impl SoftKeyStore {
    /// Sets the master secret of a key version (for known-answer tests).
    pub fn insert_secret(&self, key: KeyVersionRef, secret: [u8; 32]) {
        lock(&self.keys).insert(
            key,
            SoftKey::Secret(KeyMaterial::MasterSecret, Zeroizing::new(secret.to_vec())),
        );
    }

    /// How many derivations have run.
    pub fn derivations(&self) -> usize {
        self.derivations.load(Ordering::SeqCst)
    }

    /// Whether an object exists for the key version.
    pub fn contains(&self, key: KeyVersionRef) -> bool {
        lock(&self.keys).contains_key(&key)
    }

    /// Makes the next key creations fail, as an HSM that refuses would.
    pub fn set_fail_creation(&self, fail: bool) {
        *lock(&self.fail_creation) = fail;
    }

    /// Makes domain keys sealed (their material is never rewrapped), or trusted (the default
    /// here).
    pub fn set_sealed_domains(&self, sealed: bool) {
        self.sealed_domains.store(sealed, Ordering::SeqCst);
    }

    /// Gives domain key `version` to the soft HSM, as the ceremony does on a real one.
    pub fn add_domain(&self, version: u32) -> Result<(), HsmError> {
        let mut keys = Zeroizing::new([0u8; 64]);
        getrandom::fill(keys.as_mut_slice()).map_err(|e| HsmError::Failed {
            operation: "generate domain key",
            source: Box::new(e),
        })?;
        lock(&self.domains).entry(version).or_insert(keys);
        Ok(())
    }

    /// The versions of the domain keys the soft HSM holds.
    pub fn domain_versions(&self) -> Vec<u32> {
        lock(&self.domains).keys().copied().collect()
    }

    fn current(&self) -> u32 {
        self.current_domain.load(Ordering::SeqCst).max(1)
    }

    /// Domain key `version` with its authenticator key; the current one is made on first use.
    fn domain(&self, version: u32) -> Result<Zeroizing<[u8; 64]>, HsmError> {
        if version == self.current() {
            self.add_domain(version)?;
        }
        lock(&self.domains)
            .get(&version)
            .cloned()
            .ok_or_else(|| HsmError::Failed {
                operation: "unwrap key version",
                source: format!("the HSM holds no domain key {version}").into(),
            })
    }

    fn domain_info(&self, version: u32) -> crate::hsm::DomainKeyInfo {
        crate::hsm::DomainKeyInfo {
            version,
            rewrappable: !self.sealed_domains.load(Ordering::SeqCst),
        }
    }

    /// The authenticator of wrapped material: HMAC-SHA-256 over what it is bound to.
    fn wrapped_tag(
        &self,
        key: KeyVersionRef,
        material: KeyMaterial,
        wrapped: &WrappedMaterial,
    ) -> Result<Vec<u8>, HsmError> {
        let domain = self.domain(wrapped.domain_key)?;
        let mut message = b"kms soft wrapped v1\0".to_vec();
        message.extend_from_slice(key.key_id.as_bytes());
        message.extend_from_slice(&key.version.to_be_bytes());
        message.extend_from_slice(format!("{material:?}").as_bytes());
        message.extend_from_slice(&wrapped.domain_key.to_be_bytes());
        if let Some(hash) = &wrapped.public_key_sha256 {
            message.extend_from_slice(b"public key");
            message.extend_from_slice(hash);
        }
        message.extend_from_slice(&wrapped.wrapped);
        hmac_with::<Hmac<Sha256>>(&domain[32..], &message)
    }

    /// Whether `wrapped` authenticates as `key`'s material of kind `material`.
    fn authenticates(
        &self,
        key: KeyVersionRef,
        material: KeyMaterial,
        wrapped: &WrappedMaterial,
    ) -> Result<bool, HsmError> {
        let expected = self.wrapped_tag(key, material, wrapped)?;
        Ok(bool::from(subtle::ConstantTimeEq::ct_eq(
            expected.as_slice(),
            wrapped.tag.as_slice(),
        )))
    }

    /// The secret of `key`: its token object's, or its wrapped material's once the
    /// authenticator checks; of the kind `material` only.
    fn secret(
        &self,
        key: VersionObject<'_>,
        material: KeyMaterial,
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let Some(wrapped) = key.wrapped else {
            let keys = lock(&self.keys);
            return match keys.get(&key.key) {
                Some(SoftKey::Secret(kind, secret)) if *kind == material => Ok(secret.clone()),
                _ => Err(HsmError::ObjectNotFound(key.key)),
            };
        };
        let authentic = self.authenticates(key.key, material, wrapped)?;
        let refused = || HsmError::Failed {
            operation: "unwrap key version",
            source: format!("the wrapped material of {} does not authenticate", key.key).into(),
        };
        if !authentic {
            return Err(refused());
        }
        let domain = self.domain(wrapped.domain_key)?;
        let (nonce, sealed) = wrapped.wrapped.split_at_checked(12).ok_or_else(refused)?;
        let cipher = <aes_gcm::Aes256Gcm as aes_gcm::KeyInit>::new_from_slice(&domain[..32])
            .map_err(|_| refused())?;
        aes_gcm::aead::Aead::decrypt(&cipher, aes_gcm::Nonce::from_slice(nonce), sealed)
            .map(Zeroizing::new)
            .map_err(|_| refused())
    }

    /// `secret` wrapped under the soft domain key (AES-256-GCM), with its authenticator.
    fn seal(
        &self,
        key: KeyVersionRef,
        material: KeyMaterial,
        secret: &[u8],
        public_key_sha256: Option<[u8; 32]>,
    ) -> Result<WrappedMaterial, HsmError> {
        let failed = |e: String| HsmError::Failed {
            operation: "wrap key",
            source: e.into(),
        };
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|e| failed(e.to_string()))?;
        let version = self.current();
        let domain = self.domain(version)?;
        let cipher = <aes_gcm::Aes256Gcm as aes_gcm::KeyInit>::new_from_slice(&domain[..32])
            .map_err(|e| failed(e.to_string()))?;
        let sealed =
            aes_gcm::aead::Aead::encrypt(&cipher, aes_gcm::Nonce::from_slice(&nonce), secret)
                .map_err(|e| failed(e.to_string()))?;
        let mut wrapped = nonce.to_vec();
        wrapped.extend_from_slice(&sealed);
        let mut material_out = WrappedMaterial {
            domain_key: version,
            wrapped,
            tag: Vec::new(),
            public_key_sha256,
        };
        material_out.tag = self.wrapped_tag(key, material, &material_out)?;
        Ok(material_out)
    }

    fn hmac(
        &self,
        key: VersionObject<'_>,
        material: KeyMaterial,
        mac: MacAlgorithm,
        input: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        let secret = self.secret(key, material)?;
        match mac {
            MacAlgorithm::HmacSha256 => hmac_with::<Hmac<Sha256>>(&secret, input),
            MacAlgorithm::HmacSha384 => hmac_with::<Hmac<sha2::Sha384>>(&secret, input),
            MacAlgorithm::HmacSha512 => hmac_with::<Hmac<sha2::Sha512>>(&secret, input),
        }
    }
}

/// HMAC of `input` under `secret` with the MAC `M`.
fn hmac_with<M: Mac + hmac::digest::KeyInit>(
    secret: &[u8],
    input: &[u8],
) -> Result<Vec<u8>, HsmError> {
    let mut m =
        <M as hmac::digest::KeyInit>::new_from_slice(secret).map_err(|e| HsmError::Failed {
            operation: "hmac",
            source: e.to_string().into(),
        })?;
    m.update(input);
    Ok(m.finalize().into_bytes().to_vec())
}

fn unsupported(operation: &'static str) -> HsmError {
    HsmError::Unsupported {
        operation,
        detail: "the software test HSM has no RSA".to_owned(),
    }
}

impl KeyStore for SoftKeyStore {
    fn create_key_version(
        &self,
        key: KeyVersionRef,
        material: KeyMaterial,
    ) -> Result<Option<Vec<u8>>, HsmError> {
        if *lock(&self.fail_creation) {
            return Err(HsmError::Failed {
                operation: "generate key",
                source: "injected failure".into(),
            });
        }
        let fail = |e: getrandom::Error| HsmError::Failed {
            operation: "generate key",
            source: Box::new(e),
        };
        let (soft, public_key) = match material {
            KeyMaterial::MasterSecret | KeyMaterial::HmacSecret(_) => {
                let len = material.secret_len().unwrap_or(32);
                let mut secret = Zeroizing::new(vec![0u8; len]);
                getrandom::fill(secret.as_mut_slice()).map_err(fail)?;
                (SoftKey::Secret(material, secret), None)
            }
            KeyMaterial::EcP256Sign => {
                let mut seed = Zeroizing::new([0u8; 32]);
                let signing = loop {
                    getrandom::fill(seed.as_mut_slice()).map_err(fail)?;
                    if let Ok(k) = SigningKey::from_slice(seed.as_slice()) {
                        break k;
                    }
                };
                let spki = p256::pkcs8::EncodePublicKey::to_public_key_der(&p256::PublicKey::from(
                    signing.verifying_key(),
                ))
                .map_err(|e| HsmError::Failed {
                    operation: "generate key",
                    source: Box::new(e),
                })?;
                (SoftKey::EcP256(signing), Some(spki.as_bytes().to_vec()))
            }
            KeyMaterial::RsaDecrypt { .. } | KeyMaterial::RsaSign { .. } => {
                return Err(unsupported("generate RSA key"));
            }
        };
        lock(&self.keys).insert(key, soft);
        Ok(public_key)
    }

    fn create_wrapped_version(
        &self,
        key: KeyVersionRef,
        material: KeyMaterial,
    ) -> Result<(WrappedMaterial, Option<Vec<u8>>), HsmError> {
        if *lock(&self.fail_creation) {
            return Err(HsmError::Failed {
                operation: "generate key",
                source: "injected failure".into(),
            });
        }
        let fail = |operation| {
            move |e: getrandom::Error| HsmError::Failed {
                operation,
                source: Box::new(e),
            }
        };
        // A secret's bytes, or a P-256 key's scalar (its public key returned).
        let (secret, public_key) = match material {
            KeyMaterial::EcP256Sign => {
                let signing = loop {
                    let mut seed = Zeroizing::new([0u8; 32]);
                    getrandom::fill(seed.as_mut_slice()).map_err(fail("generate key"))?;
                    if let Ok(k) = SigningKey::from_slice(seed.as_slice()) {
                        break k;
                    }
                };
                let spki = p256::pkcs8::EncodePublicKey::to_public_key_der(&p256::PublicKey::from(
                    signing.verifying_key(),
                ))
                .map_err(|e| HsmError::Failed {
                    operation: "generate key",
                    source: Box::new(e),
                })?;
                (
                    Zeroizing::new(signing.to_bytes().to_vec()),
                    Some(spki.as_bytes().to_vec()),
                )
            }
            KeyMaterial::RsaDecrypt { .. } | KeyMaterial::RsaSign { .. } => {
                return Err(unsupported("generate RSA key"));
            }
            _ => {
                let mut secret = Zeroizing::new(vec![0u8; material.secret_len().unwrap_or(32)]);
                getrandom::fill(secret.as_mut_slice()).map_err(fail("generate key"))?;
                (secret, None)
            }
        };
        let bound = public_key
            .as_deref()
            .map(|der| <Sha256 as sha2::Digest>::digest(der).into());
        Ok((self.seal(key, material, &secret, bound)?, public_key))
    }

    fn forget_unwrapped(&self, _key: KeyId) {
        // Nothing is kept unwrapped: every use checks and opens the wrapped material.
    }

    fn use_domain(&self, version: u32) -> Result<crate::hsm::DomainKeyInfo, HsmError> {
        if version == 1 || self.sealed_domains.load(Ordering::SeqCst) {
            self.add_domain(version)?;
        }
        if !lock(&self.domains).contains_key(&version) {
            return Err(HsmError::Failed {
                operation: "find domain key",
                source: format!("domain key {version} is not on the token").into(),
            });
        }
        self.current_domain.store(version, Ordering::SeqCst);
        Ok(self.domain_info(version))
    }

    fn domain_key(&self, version: u32) -> Result<Option<crate::hsm::DomainKeyInfo>, HsmError> {
        Ok(lock(&self.domains)
            .contains_key(&version)
            .then(|| self.domain_info(version)))
    }

    fn rewrap_version(
        &self,
        key: VersionObject<'_>,
        material: KeyMaterial,
    ) -> Result<WrappedMaterial, HsmError> {
        let Some(wrapped) = key.wrapped else {
            return Err(HsmError::Unsupported {
                operation: "rewrap key version",
                detail: format!("{} is a token object", key.key),
            });
        };
        if wrapped.domain_key == self.current() {
            return Ok(wrapped.clone());
        }
        if self.sealed_domains.load(Ordering::SeqCst) {
            return Err(HsmError::Unsupported {
                operation: "rewrap key version",
                detail: "what a sealed domain key unwraps is never wrapped again".to_owned(),
            });
        }
        let secret = self.secret(key, material)?;
        self.seal(key.key, material, &secret, wrapped.public_key_sha256)
    }

    fn destroy_domain(&self, version: u32) -> Result<bool, HsmError> {
        if version == self.current() {
            return Err(HsmError::Failed {
                operation: "destroy domain key",
                source: format!("domain key {version} is the current one").into(),
            });
        }
        Ok(lock(&self.domains).remove(&version).is_some())
    }

    fn derive_message_key(
        &self,
        key: VersionObject<'_>,
        input: &[u8],
    ) -> Result<MessageKey, HsmError> {
        self.derivations.fetch_add(1, Ordering::SeqCst);
        let mac = Zeroizing::new(self.hmac(
            key,
            KeyMaterial::MasterSecret,
            MacAlgorithm::HmacSha256,
            input,
        )?);
        let bytes: [u8; 32] = mac.as_slice().try_into().map_err(|_| HsmError::Failed {
            operation: "hmac",
            source: "not 32 bytes".into(),
        })?;
        Ok(MessageKey::new(Zeroizing::new(bytes)))
    }

    fn sign(
        &self,
        key: VersionObject<'_>,
        material: KeyMaterial,
        mechanism: SignMechanism,
        data: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        match mechanism {
            SignMechanism::Hmac(mac) => self.hmac(key, material, mac, data),
            SignMechanism::MaterialCheck => {
                hmac_with::<Hmac<sha1::Sha1>>(&self.secret(key, material)?, data)
            }
            SignMechanism::Ecdsa if key.wrapped.is_some() => {
                let scalar = self.secret(key, material)?;
                let signing = SigningKey::from_slice(&scalar).map_err(|e| HsmError::Failed {
                    operation: "sign",
                    source: Box::new(e),
                })?;
                let signature: Signature =
                    p256::ecdsa::signature::hazmat::PrehashSigner::sign_prehash(&signing, data)
                        .map_err(|e| HsmError::Failed {
                            operation: "sign",
                            source: Box::new(e),
                        })?;
                Ok(signature.to_bytes().to_vec())
            }
            SignMechanism::Ecdsa => {
                let keys = lock(&self.keys);
                let Some(SoftKey::EcP256(signing)) = keys.get(&key.key) else {
                    return Err(HsmError::ObjectNotFound(key.key));
                };
                let signature: Signature =
                    p256::ecdsa::signature::hazmat::PrehashSigner::sign_prehash(signing, data)
                        .map_err(|e| HsmError::Failed {
                            operation: "sign",
                            source: Box::new(e),
                        })?;
                Ok(signature.to_bytes().to_vec())
            }
            SignMechanism::RsaPss(_) | SignMechanism::RsaPkcs1 => Err(unsupported("RSA sign")),
        }
    }

    fn rsa_decrypt(
        &self,
        _key: VersionObject<'_>,
        _hash: HashAlg,
        _ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        Err(unsupported("RSA decrypt"))
    }

    fn create_wrapping_key(
        &self,
        key: WrappingKeyRef,
        _bits: u32,
        _algorithm: WrappingAlgorithm,
    ) -> Result<Vec<u8>, HsmError> {
        lock(&self.wrapping_keys).insert(key);
        Ok(b"soft wrapping key: the identity".to_vec())
    }

    fn unwrap_key_version(
        &self,
        key: KeyVersionRef,
        material: KeyMaterial,
        wrapping: WrappingKeyRef,
        _algorithm: WrappingAlgorithm,
        wrapped: &[u8],
    ) -> Result<Option<usize>, HsmError> {
        if !lock(&self.wrapping_keys).contains(&wrapping) {
            return Err(HsmError::Failed {
                operation: "unwrap key",
                source: "no such wrapping key".into(),
            });
        }
        if wrapped.is_empty() {
            return Err(HsmError::Rejected {
                operation: "unwrap key",
            });
        }
        lock(&self.keys).insert(
            key,
            SoftKey::Secret(material, Zeroizing::new(wrapped.to_vec())),
        );
        Ok(Some(wrapped.len()))
    }

    fn import_wrapped_version(
        &self,
        key: KeyVersionRef,
        material: KeyMaterial,
        wrapping: WrappingKeyRef,
        _algorithm: WrappingAlgorithm,
        wrapped: &[u8],
    ) -> Result<(WrappedMaterial, Option<usize>), HsmError> {
        if !lock(&self.wrapping_keys).contains(&wrapping) {
            return Err(HsmError::Failed {
                operation: "unwrap key",
                source: "no such wrapping key".into(),
            });
        }
        if wrapped.is_empty() {
            return Err(HsmError::Rejected {
                operation: "unwrap key",
            });
        }
        Ok((
            self.seal(key, material, wrapped, None)?,
            Some(wrapped.len()),
        ))
    }

    fn destroy_wrapping_key(&self, key: WrappingKeyRef) -> Result<(), HsmError> {
        lock(&self.wrapping_keys).remove(&key);
        Ok(())
    }

    fn list_wrapping_keys(&self) -> Result<Vec<WrappingKeyRef>, HsmError> {
        Ok(lock(&self.wrapping_keys).iter().copied().collect())
    }

    fn random_bytes(&self, len: usize) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let mut out = Zeroizing::new(vec![0u8; len]);
        getrandom::fill(&mut out).map_err(|e| HsmError::Failed {
            operation: "random",
            source: Box::new(e),
        })?;
        Ok(out)
    }

    fn destroy_key_version(&self, key: KeyVersionRef) -> Result<(), HsmError> {
        lock(&self.keys).remove(&key);
        Ok(())
    }

    fn list_key_versions(&self) -> Result<Vec<KeyVersionRef>, HsmError> {
        Ok(lock(&self.keys).keys().copied().collect())
    }
}

/// A clock tests set by hand.
#[derive(Default)]
pub struct ManualClock {
    now_ms: Mutex<i64>,
}

impl ManualClock {
    /// Sets the time.
    pub fn set_millis(&self, now_ms: i64) {
        *lock(&self.now_ms) = now_ms;
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> i64 {
        *lock(&self.now_ms)
    }
}

/// A service on in-memory backends, with the backends for inspection.
pub fn memory_kms() -> (crate::Kms, Arc<MemoryStore>, Arc<SoftKeyStore>) {
    let store = Arc::new(MemoryStore::default());
    let hsm = Arc::new(SoftKeyStore::default());
    let kms = crate::Kms::new(store.clone(), hsm.clone(), Arc::new(ManualClock::default()))
        .with_authorization(authorization());
    (kms, store, hsm)
}

/// A software audit checkpoint signer: an ECDSA P-256 key in memory, or an RSA-PSS one
/// ([`SoftCheckpointSigner::rsa_pss`]). No `Debug`: it holds the private key.
pub struct SoftCheckpointSigner {
    key: SoftSigningKey,
    failing: AtomicBool,
}

/// The private key of a [`SoftCheckpointSigner`].
enum SoftSigningKey {
    P256(SigningKey),
    RsaPss(Box<rsa::RsaPrivateKey>),
}

impl SoftCheckpointSigner {
    /// A signer with a fresh key, distinct from every other in the process.
    pub fn new() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut seed = [0u8; 40];
        // Tests need distinct keys, not secret ones: should the OS generator fail, the counter
        // still makes this key differ from the others.
        let _ = getrandom::fill(&mut seed[..32]);
        seed[32..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
        Self::from_seed(&seed)
    }

    /// A signer whose key is derived from `seed`: the same seed, the same key.
    pub fn from_seed(seed: &[u8]) -> Self {
        let mut counter = 0u32;
        let key = loop {
            let candidate = Sha256::new()
                .chain_update(b"kms test checkpoint signer")
                .chain_update(seed)
                .chain_update(counter.to_be_bytes())
                .finalize();
            // Fails only for zero or a value past the group order (probability about 2^-32).
            if let Ok(key) = SigningKey::from_slice(&candidate) {
                break key;
            }
            counter = counter.wrapping_add(1);
        };
        SoftCheckpointSigner {
            key: SoftSigningKey::P256(key),
            failing: AtomicBool::new(false),
        }
    }

    /// A signer with a fresh RSA-PSS key, as kmsd makes on an HSM without elliptic curves
    /// (2048 bits rather than kmsd's 3072, to generate quickly in debug builds).
    pub fn rsa_pss() -> Result<Self, rsa::Error> {
        let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048)?;
        Ok(SoftCheckpointSigner {
            key: SoftSigningKey::RsaPss(Box::new(key)),
            failing: AtomicBool::new(false),
        })
    }

    /// A signer whose every signature fails, as an HSM that refuses would.
    pub fn failing() -> Self {
        let signer = Self::new();
        signer.set_failing(true);
        signer
    }

    /// Makes the next signatures fail (or succeed again).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}

impl Default for SoftCheckpointSigner {
    fn default() -> Self {
        Self::new()
    }
}

impl CheckpointSigner for SoftCheckpointSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(HsmError::Failed {
                operation: "sign audit checkpoint",
                source: "injected failure".into(),
            });
        }
        match &self.key {
            SoftSigningKey::P256(key) => {
                let signature: Signature = key.sign(message);
                Ok(signature.to_bytes().to_vec())
            }
            SoftSigningKey::RsaPss(key) => key
                .sign_with_rng(
                    &mut rand_core::OsRng,
                    rsa::Pss::new::<Sha256>(),
                    &Sha256::digest(message),
                )
                .map_err(|e| HsmError::Failed {
                    operation: "sign audit checkpoint",
                    source: Box::new(e),
                }),
        }
    }

    fn public_key(&self) -> AuditPublicKey {
        match &self.key {
            SoftSigningKey::P256(key) => AuditPublicKey::P256(key.verifying_key().into()),
            SoftSigningKey::RsaPss(key) => AuditPublicKey::RsaPss(key.to_public_key()),
        }
    }
}

/// [`ADMIN`] is the administrator; no server policy.
pub fn authorization() -> crate::service::Authorization {
    crate::service::Authorization {
        administrators: vec![ADMIN.to_owned()],
        server_policy: None,
    }
}

/// The administrator of [`memory_kms`].
pub const ADMIN: &str = "admin";

/// A caller who is [`ADMIN`], over mutual TLS.
pub fn admin() -> crate::Caller {
    crate::Caller::new(ADMIN, true)
}
