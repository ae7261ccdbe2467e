//! Key metadata storage as the service sees it: the [`MetadataStore`] trait that kms-store
//! implements.

use crate::alias::AliasRecord;
use crate::audit::SealPin;
use crate::ids::{AliasName, KeyId};
use crate::key::KeyRecord;

/// A failure of the metadata store, with its cause kept.
#[derive(Debug, thiserror::Error)]
#[error("metadata store: {context}")]
pub struct StoreError {
    context: &'static str,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl StoreError {
    /// An error while doing `context`, caused by `source`.
    pub fn new(
        context: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError {
            context,
            source: source.into(),
        }
    }
}

/// Durable storage of key records. Every method blocks. A write that returns `Ok` is durable
/// (synced to disk) before it returns.
pub trait MetadataStore: Send + Sync {
    /// A random id fixed when the store was first created. It names this service instance's
    /// objects in the HSM, so that two instances sharing a token never touch each other's.
    fn instance_id(&self) -> [u8; 16];

    /// The record of `id`, if any.
    fn get_key(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError>;

    /// Inserts or replaces the record, durably.
    fn put_key(&self, record: &KeyRecord) -> Result<(), StoreError>;

    /// Removes the record, durably. Succeeds when there is none.
    fn delete_key(&self, id: KeyId) -> Result<(), StoreError>;

    /// Up to `limit` records in ascending key id order, starting after `after`.
    fn list_keys(&self, after: Option<KeyId>, limit: usize) -> Result<Vec<KeyRecord>, StoreError>;

    /// The alias named `name`, if any.
    fn get_alias(&self, name: &AliasName) -> Result<Option<AliasRecord>, StoreError>;

    /// Inserts or replaces an alias, durably.
    fn put_alias(&self, alias: &AliasRecord) -> Result<(), StoreError>;

    /// Removes an alias, durably. Succeeds when there is none.
    fn delete_alias(&self, name: &AliasName) -> Result<(), StoreError>;

    /// Up to `limit` aliases in ascending name order, starting after `after`.
    fn list_aliases(
        &self,
        after: Option<&AliasName>,
        limit: usize,
    ) -> Result<Vec<AliasRecord>, StoreError>;

    /// The last sealed checkpoint of the audit log `log_id`, if one was pinned.
    fn audit_pin(&self, log_id: [u8; 16]) -> Result<Option<SealPin>, StoreError>;

    /// Pins the last sealed checkpoint of the audit log `log_id`. Called after the log is
    /// synced, so it need not be synced itself: a pin lost in a power loss only lags the log
    /// (a pin ahead of the log is what open refuses). A failure fails the batch's calls.
    fn put_audit_pin(&self, log_id: [u8; 16], pin: SealPin) -> Result<(), StoreError>;

    /// The highest CRL number put in force for the CRL issuer `issuer` (its DER name), as
    /// big-endian bytes, if any: so that a restart does not take back an older CRL either.
    fn crl_number(&self, issuer: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Records the CRL number put in force for `issuer`, durably.
    fn put_crl_number(&self, issuer: &[u8], number: &[u8]) -> Result<(), StoreError>;

    /// The version of the domain key new material is wrapped under, once a domain key
    /// rotation recorded one (`None`: the first, 1).
    fn current_domain(&self) -> Result<Option<u32>, StoreError>;

    /// Records the current domain key version, durably.
    fn put_current_domain(&self, version: u32) -> Result<(), StoreError>;

    /// The domain key version every key version was last found wrapped under (and the older
    /// domain keys destroyed), if a rewrapping pass ever finished.
    fn rewrapped_domain(&self) -> Result<Option<u32>, StoreError>;

    /// Records that every key version is wrapped under domain key `version`.
    fn put_rewrapped_domain(&self, version: u32) -> Result<(), StoreError>;
}
