//! The HSM as the service sees it: the [`KeyStore`] trait that kms-hsm implements.

use std::fmt;

use zeroize::Zeroizing;

use crate::asymmetric::HashAlg;
use crate::ids::KeyId;
use crate::key::{KeyMaterial, MacAlgorithm, WrappedMaterial, WrappingAlgorithm};

/// One key version's HSM object: the key it belongs to and its version number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct KeyVersionRef {
    /// The key.
    pub key_id: KeyId,
    /// The version, from 1.
    pub version: u32,
}

/// A key version as the HSM serves it: its identity, and its wrapped material when it is kept
/// outside the token (the HSM unwraps it on first use and keeps the unwrapped object).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct VersionObject<'a> {
    /// The key version.
    pub key: KeyVersionRef,
    /// Its wrapped material, or `None` for a token object.
    pub wrapped: Option<&'a WrappedMaterial>,
}

impl From<KeyVersionRef> for VersionObject<'_> {
    fn from(key: KeyVersionRef) -> Self {
        VersionObject { key, wrapped: None }
    }
}

impl fmt::Display for KeyVersionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} version {}", self.key_id, self.version)
    }
}

/// A wrapping key pair for import: the key it imports into, and a serial number that
/// GetParametersForImport increases, so each call gets a new HSM object.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct WrappingKeyRef {
    /// The key the material is for.
    pub key_id: KeyId,
    /// From 1.
    pub serial: u32,
}

/// How the HSM signs (or MACs) with a key version's private or secret key.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SignMechanism {
    /// HMAC over the data (CKM_SHA*_HMAC) with a secret key.
    Hmac(MacAlgorithm),
    /// RSASSA-PSS over a digest (CKM_RSA_PKCS_PSS), MGF1 with the same hash, salt as long as
    /// the hash.
    RsaPss(HashAlg),
    /// RSASSA-PKCS1-v1_5 (CKM_RSA_PKCS) over a DER DigestInfo.
    RsaPkcs1,
    /// ECDSA over a digest (CKM_ECDSA); the result is r || s.
    Ecdsa,
    /// HMAC-SHA-1 (CKM_SHA_1_HMAC) with a secret key: the check value of imported material.
    /// The service returns no other SHA-1 HMAC, so the value is never a `k_msg` or a MAC a
    /// caller could use.
    MaterialCheck,
}

/// `k_msg`: the per-message secret the HSM computes with a key version's master secret.
/// Zeroized on drop; no `Debug` or `Clone`.
pub struct MessageKey(Zeroizing<[u8; 32]>);

impl MessageKey {
    /// Wraps the 32 bytes the HSM returned.
    pub fn new(bytes: Zeroizing<[u8; 32]>) -> Self {
        MessageKey(bytes)
    }

    /// The secret bytes.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Why an HSM call failed.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    /// The key version has no object in the HSM.
    #[error("no HSM object for key {0}")]
    ObjectNotFound(KeyVersionRef),
    /// The HSM, token or session is gone and did not come back on a retry.
    #[error("the HSM is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// No HSM session became free in time.
    #[error("timed out waiting for an HSM session")]
    Timeout,
    /// The HSM rejected the data it was given: a ciphertext or wrapped key that does not
    /// decrypt, or material of the wrong size.
    #[error("the HSM rejected the input of {operation}")]
    Rejected {
        /// What was being done.
        operation: &'static str,
    },
    /// The HSM lacks a mechanism or parameter the operation needs.
    #[error("the HSM does not support {operation}: {detail}")]
    Unsupported {
        /// What was being done.
        operation: &'static str,
        /// What is missing.
        detail: String,
    },
    /// The HSM refused or failed the operation.
    #[error("HSM operation {operation} failed")]
    Failed {
        /// What was being done.
        operation: &'static str,
        /// The module's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A domain key the HSM holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainKeyInfo {
    /// Its version (1 for a deployment's first).
    pub version: u32,
    /// Whether what it unwraps can be wrapped again under a newer domain key (a trusted
    /// domain key; a sealed one never lets go of what it unwraps).
    pub rewrappable: bool,
}

/// The HSM that holds the master secrets. Every method blocks; call it from a blocking thread.
///
/// Implementations create key material inside the HSM, non-extractable, and never return it:
/// what leaves is `k_msg` (the HMAC of one message's derivation input), MACs, signatures,
/// public keys and RSA decryptions.
pub trait KeyStore: Send + Sync {
    /// Generates the key material of a key version inside the HSM. For key pairs, returns the
    /// public key as a DER SubjectPublicKeyInfo.
    fn create_key_version(
        &self,
        key: KeyVersionRef,
        material: KeyMaterial,
    ) -> Result<Option<Vec<u8>>, HsmError>;

    /// Signs (or MACs) `data` with the key version's private or secret key of `material`'s
    /// kind: the kind is part of the object's identity in the HSM, so a key version's object
    /// of another kind is never used ([`HsmError::ObjectNotFound`]).
    fn sign(
        &self,
        key: VersionObject<'_>,
        material: KeyMaterial,
        mechanism: SignMechanism,
        data: &[u8],
    ) -> Result<Vec<u8>, HsmError>;

    /// RSAES-OAEP decryption (MGF1 with `hash`, empty label) with the key version's private
    /// key. A ciphertext that does not decrypt is [`HsmError::Rejected`].
    fn rsa_decrypt(
        &self,
        key: VersionObject<'_>,
        hash: HashAlg,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError>;

    /// Generates an RSA wrapping key pair whose private half can only unwrap; returns the
    /// public key as a DER SubjectPublicKeyInfo. Fails with [`HsmError::Unsupported`] (and
    /// leaves nothing behind) when the HSM cannot unwrap with `algorithm`.
    fn create_wrapping_key(
        &self,
        key: WrappingKeyRef,
        bits: u32,
        algorithm: WrappingAlgorithm,
    ) -> Result<Vec<u8>, HsmError>;

    /// Unwraps `wrapped` with the wrapping key into the key version's object, with the same
    /// custody as generated material, and returns the material's length in bytes when the
    /// HSM reports it (SoftHSM2 does not). Wrapped data that does not unwrap is
    /// [`HsmError::Rejected`].
    fn unwrap_key_version(
        &self,
        key: KeyVersionRef,
        material: KeyMaterial,
        wrapping: WrappingKeyRef,
        algorithm: WrappingAlgorithm,
        wrapped: &[u8],
    ) -> Result<Option<usize>, HsmError>;

    /// Unwraps imported material as [`KeyStore::unwrap_key_version`] does, but into a session
    /// object that is wrapped at once under the current domain key (then used from an
    /// unwrapped copy): the token gains no object. Returns the wrapped material and the
    /// material's length when the HSM reports it.
    fn import_wrapped_version(
        &self,
        key: KeyVersionRef,
        material: KeyMaterial,
        wrapping: WrappingKeyRef,
        algorithm: WrappingAlgorithm,
        wrapped: &[u8],
    ) -> Result<(WrappedMaterial, Option<usize>), HsmError>;

    /// Destroys a wrapping key pair. Succeeds when there is none.
    fn destroy_wrapping_key(&self, key: WrappingKeyRef) -> Result<(), HsmError>;

    /// Every wrapping key of this service instance.
    fn list_wrapping_keys(&self) -> Result<Vec<WrappingKeyRef>, HsmError>;

    /// HMAC-SHA256 of `input` under the key version's master secret, computed by the HSM.
    /// Only a master secret serves: an HMAC key of the same key version is not found.
    fn derive_message_key(
        &self,
        key: VersionObject<'_>,
        input: &[u8],
    ) -> Result<MessageKey, HsmError>;

    /// Generates a key version's material inside the HSM and wraps it at once under the
    /// current domain key: the token gains no object. Returns the wrapped material and, for
    /// key pairs, the public key as a DER SubjectPublicKeyInfo. The unwrapped object is kept
    /// for use.
    fn create_wrapped_version(
        &self,
        key: KeyVersionRef,
        material: KeyMaterial,
    ) -> Result<(WrappedMaterial, Option<Vec<u8>>), HsmError>;

    /// Makes domain key `version` the one new material is wrapped under, once the HSM is
    /// found to hold it (its authenticator key made where missing; with sealed domain keys
    /// the wrap key too). Fails, naming the ceremony, when a trusted domain key is missing.
    fn use_domain(&self, version: u32) -> Result<DomainKeyInfo, HsmError>;

    /// Domain key `version`, if the HSM holds its wrap key. Makes nothing.
    fn domain_key(&self, version: u32) -> Result<Option<DomainKeyInfo>, HsmError>;

    /// Wraps the version's wrapped material again under the current domain key (the same
    /// material when it already is): only material of a rewrappable domain key can be.
    fn rewrap_version(
        &self,
        key: VersionObject<'_>,
        material: KeyMaterial,
    ) -> Result<WrappedMaterial, HsmError>;

    /// Destroys the objects of domain key `version`, never the current one; returns whether
    /// there were any. Material wrapped under it can never be unwrapped again.
    fn destroy_domain(&self, version: u32) -> Result<bool, HsmError>;

    /// Destroys the unwrapped objects of every version of the key (it was disabled or
    /// scheduled for deletion): its material stays usable in the HSM only while the key is.
    /// The next use unwraps it again. Token objects are untouched.
    fn forget_unwrapped(&self, key: KeyId);

    /// `len` random bytes from the HSM's generator.
    fn random_bytes(&self, len: usize) -> Result<Zeroizing<Vec<u8>>, HsmError>;

    /// Destroys the key version's HSM object. Succeeds when there is none (idempotent).
    fn destroy_key_version(&self, key: KeyVersionRef) -> Result<(), HsmError>;

    /// Every key version that has an HSM object of this service instance.
    fn list_key_versions(&self) -> Result<Vec<KeyVersionRef>, HsmError>;
}
