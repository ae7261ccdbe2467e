//! The HSM as the service sees it: the [`KeyStore`] trait that kms-hsm implements.

use std::fmt;

use zeroize::Zeroizing;

use crate::ids::KeyId;

/// One key version's HSM object: the key it belongs to and its version number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct KeyVersionRef {
    /// The key.
    pub key_id: KeyId,
    /// The version, from 1.
    pub version: u32,
}

impl fmt::Display for KeyVersionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} version {}", self.key_id, self.version)
    }
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

/// The HSM that holds the master secrets. Every method blocks; call it from a blocking thread.
///
/// Implementations create key material inside the HSM, non-extractable, and never return it:
/// the only secret that leaves is `k_msg`, the HMAC of one message's derivation input.
pub trait KeyStore: Send + Sync {
    /// Generates the master secret of a key version inside the HSM.
    fn create_key_version(&self, key: KeyVersionRef) -> Result<(), HsmError>;

    /// HMAC-SHA256 of `input` under the key version's master secret, computed by the HSM.
    fn derive_message_key(&self, key: KeyVersionRef, input: &[u8]) -> Result<MessageKey, HsmError>;

    /// `len` random bytes from the HSM's generator.
    fn random_bytes(&self, len: usize) -> Result<Zeroizing<Vec<u8>>, HsmError>;

    /// Destroys the key version's HSM object. Succeeds when there is none (idempotent).
    fn destroy_key_version(&self, key: KeyVersionRef) -> Result<(), HsmError>;

    /// Every key version that has an HSM object of this service instance.
    fn list_key_versions(&self) -> Result<Vec<KeyVersionRef>, HsmError>;
}
