//! The RocksDB backend of the kms-core [`MetadataStore`] trait.
//!
//! Layout (one column family): `meta/instance_id` holds the 16-byte instance id made when the
//! store is created; `key/<16-byte key id>` holds a key record as JSON; `als/<alias name>`
//! holds an alias record as JSON; `meta/audit_pin/<log id>` pins the audit log's last sealed
//! checkpoint; `meta/crl_number/<issuer>` the client CA's last CRL number;
//! `meta/current_domain` the current domain key version and `meta/rewrapped_domain` the one
//! every key version was last found under (u32 big-endian each). Every write but the
//! audit pin's goes through the WAL with `sync = true`, so an acknowledged change survives a
//! crash or a power loss. The database's LOCK file keeps a second kmsd off the same data dir.
//!
//! Depends on kms-core and rocksdb only.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use kms_core::audit::SealPin;
use kms_core::{AliasName, AliasRecord, KeyId, KeyRecord, MetadataStore, StoreError};
use rocksdb::{DB, Direction, IteratorMode, Options, WriteOptions};

const INSTANCE_ID: &[u8] = b"meta/instance_id";
const KEY_PREFIX: &[u8] = b"key/";
const ALIAS_PREFIX: &[u8] = b"als/";
const HEALTH_MARK: &[u8] = b"meta/health";
const AUDIT_PIN_PREFIX: &[u8] = b"meta/audit_pin/";
const CRL_NUMBER_PREFIX: &[u8] = b"meta/crl_number/";
const CURRENT_DOMAIN: &[u8] = b"meta/current_domain";
const REWRAPPED_DOMAIN: &[u8] = b"meta/rewrapped_domain";

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data dir could not be created or is not a directory.
    #[error("data dir {path} is not usable: {source}")]
    DataDir {
        /// The data dir.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// RocksDB refused to open (another kmsd holds the lock, permissions, corruption).
    #[error("cannot open the metadata store in {path} (is another kmsd using it?)")]
    Open {
        /// The data dir.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rocksdb::Error,
    },
    /// The stored instance id is damaged.
    #[error("the metadata store in {0} has a damaged instance id")]
    Damaged(PathBuf),
    /// Reading or writing the instance id failed.
    #[error("cannot read or write the instance id in {path}")]
    Io {
        /// The data dir.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rocksdb::Error,
    },
}

/// Key metadata in RocksDB.
pub struct RocksStore {
    db: DB,
    instance_id: [u8; 16],
}

impl RocksStore {
    /// Opens the store in `dir`, creating the directory and the database if missing.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::DataDir {
            path: dir.to_owned(),
            source,
        })?;
        let mut options = Options::default();
        options.create_if_missing(true);
        let db = DB::open(&options, dir).map_err(|source| OpenError::Open {
            path: dir.to_owned(),
            source,
        })?;
        let io = |source| OpenError::Io {
            path: dir.to_owned(),
            source,
        };
        let instance_id = if let Some(bytes) = db.get(INSTANCE_ID).map_err(io)? {
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| OpenError::Damaged(dir.to_owned()))?
        } else {
            let id = *uuid::Uuid::new_v4().as_bytes();
            db.put_opt(INSTANCE_ID, id, &synced()).map_err(io)?;
            id
        };
        Ok(RocksStore { db, instance_id })
    }

    /// Writes and syncs a marker record: whether the store takes writes now (the health
    /// check's question; a full or read-only disk fails it).
    pub fn check_writable(&self) -> Result<(), StoreError> {
        self.db
            .put_opt(HEALTH_MARK, [], &synced())
            .map_err(|e| StoreError::new("write the health mark", e))
    }

    /// Flushes memtables to SST files (for a clean shutdown; the WAL already made every write
    /// durable).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(|e| StoreError::new("flush", e))
    }
}

fn synced() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(true);
    options
}

fn record_key(id: KeyId) -> Vec<u8> {
    let mut key = KEY_PREFIX.to_vec();
    key.extend_from_slice(id.as_bytes());
    key
}

fn alias_key(name: &AliasName) -> Vec<u8> {
    let mut key = ALIAS_PREFIX.to_vec();
    key.extend_from_slice(name.as_str().as_bytes());
    key
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::new("decode record", e))
}

impl RocksStore {
    fn put<T: serde::Serialize>(&self, key: Vec<u8>, value: &T) -> Result<(), StoreError> {
        let value = serde_json::to_vec(value).map_err(|e| StoreError::new("encode record", e))?;
        self.db
            .put_opt(key, value, &synced())
            .map_err(|e| StoreError::new("write record", e))
    }

    /// Up to `limit` records under `prefix`, in key order, starting after `after`.
    fn scan<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<T>, StoreError> {
        let start = after.unwrap_or(prefix);
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(start, Direction::Forward))
        {
            let (key, value) = item.map_err(|e| StoreError::new("list records", e))?;
            if !key.starts_with(prefix) || out.len() == limit {
                break;
            }
            if after == Some(&*key) {
                continue;
            }
            out.push(decode(&value)?);
        }
        Ok(out)
    }
}

impl MetadataStore for RocksStore {
    fn instance_id(&self) -> [u8; 16] {
        self.instance_id
    }

    fn get_key(&self, id: KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.db
            .get_pinned(record_key(id))
            .map_err(|e| StoreError::new("read key record", e))?
            .map(|bytes| decode(&bytes))
            .transpose()
    }

    fn put_key(&self, record: &KeyRecord) -> Result<(), StoreError> {
        self.put(record_key(record.id()), record)
    }

    fn delete_key(&self, id: KeyId) -> Result<(), StoreError> {
        self.db
            .delete_opt(record_key(id), &synced())
            .map_err(|e| StoreError::new("delete key record", e))
    }

    fn list_keys(&self, after: Option<KeyId>, limit: usize) -> Result<Vec<KeyRecord>, StoreError> {
        self.scan(KEY_PREFIX, after.map(record_key).as_deref(), limit)
    }

    fn get_alias(&self, name: &AliasName) -> Result<Option<AliasRecord>, StoreError> {
        self.db
            .get_pinned(alias_key(name))
            .map_err(|e| StoreError::new("read alias", e))?
            .map(|bytes| decode(&bytes))
            .transpose()
    }

    fn put_alias(&self, alias: &AliasRecord) -> Result<(), StoreError> {
        self.put(alias_key(&alias.name), alias)
    }

    fn delete_alias(&self, name: &AliasName) -> Result<(), StoreError> {
        self.db
            .delete_opt(alias_key(name), &synced())
            .map_err(|e| StoreError::new("delete alias", e))
    }

    fn list_aliases(
        &self,
        after: Option<&AliasName>,
        limit: usize,
    ) -> Result<Vec<AliasRecord>, StoreError> {
        self.scan(ALIAS_PREFIX, after.map(alias_key).as_deref(), limit)
    }

    fn audit_pin(&self, log_id: [u8; 16]) -> Result<Option<SealPin>, StoreError> {
        let Some(bytes) = self
            .db
            .get(audit_pin_key(log_id))
            .map_err(|e| StoreError::new("read the audit pin", e))?
        else {
            return Ok(None);
        };
        let damaged = || StoreError::new("read the audit pin", "the pin is damaged");
        let (seq, rest) = bytes.split_at_checked(8).ok_or_else(damaged)?;
        let (hash, end) = rest.split_at_checked(32).ok_or_else(damaged)?;
        Ok(Some(SealPin {
            seq: u64::from_be_bytes(seq.try_into().map_err(|_| damaged())?),
            hash: hash.try_into().map_err(|_| damaged())?,
            end: u64::from_be_bytes(end.try_into().map_err(|_| damaged())?),
        }))
    }

    fn put_audit_pin(&self, log_id: [u8; 16], pin: SealPin) -> Result<(), StoreError> {
        let mut value = pin.seq.to_be_bytes().to_vec();
        value.extend_from_slice(&pin.hash);
        value.extend_from_slice(&pin.end.to_be_bytes());
        // Not synced: see the trait. The WAL still keeps it across a kmsd crash.
        self.db
            .put(audit_pin_key(log_id), value)
            .map_err(|e| StoreError::new("write the audit pin", e))
    }

    fn crl_number(&self, issuer: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get(crl_number_key(issuer))
            .map_err(|e| StoreError::new("read a CRL number", e))
    }

    fn put_crl_number(&self, issuer: &[u8], number: &[u8]) -> Result<(), StoreError> {
        self.db
            .put_opt(crl_number_key(issuer), number, &synced())
            .map_err(|e| StoreError::new("write a CRL number", e))
    }

    fn current_domain(&self) -> Result<Option<u32>, StoreError> {
        self.read_u32(CURRENT_DOMAIN, "read the current domain key")
    }

    fn put_current_domain(&self, version: u32) -> Result<(), StoreError> {
        self.db
            .put_opt(CURRENT_DOMAIN, version.to_be_bytes(), &synced())
            .map_err(|e| StoreError::new("write the current domain key", e))
    }

    fn rewrapped_domain(&self) -> Result<Option<u32>, StoreError> {
        self.read_u32(REWRAPPED_DOMAIN, "read the rewrapped domain key")
    }

    fn put_rewrapped_domain(&self, version: u32) -> Result<(), StoreError> {
        self.db
            .put_opt(REWRAPPED_DOMAIN, version.to_be_bytes(), &synced())
            .map_err(|e| StoreError::new("write the rewrapped domain key", e))
    }
}

impl RocksStore {
    /// A u32 (big-endian) under `key`, if any.
    fn read_u32(&self, key: &[u8], context: &'static str) -> Result<Option<u32>, StoreError> {
        let Some(value) = self.db.get(key).map_err(|e| StoreError::new(context, e))? else {
            return Ok(None);
        };
        let bytes: [u8; 4] = value.as_slice().try_into().map_err(|_| {
            StoreError::new(context, format!("{} bytes where 4 belong", value.len()))
        })?;
        Ok(Some(u32::from_be_bytes(bytes)))
    }
}

/// `meta/crl_number/<issuer DER name>`: the highest CRL number put in force for the issuer.
fn crl_number_key(issuer: &[u8]) -> Vec<u8> {
    let mut key = CRL_NUMBER_PREFIX.to_vec();
    key.extend_from_slice(issuer);
    key
}

/// `meta/audit_pin/<log id>`: the seq (u64 big-endian), line hash (32 bytes) and end offset
/// (u64 big-endian) of the last sealed checkpoint of an audit log.
fn audit_pin_key(log_id: [u8; 16]) -> Vec<u8> {
    let mut key = AUDIT_PIN_PREFIX.to_vec();
    key.extend_from_slice(&log_id);
    key
}

#[cfg(test)]
mod tests {
    use kms_core::{KeySpec, KeyUsage, Origin};

    use super::*;

    fn record(id: KeyId) -> KeyRecord {
        let mut record = KeyRecord::new(
            id,
            1,
            KeySpec::SymmetricDefault,
            KeyUsage::EncryptDecrypt,
            Origin::Kms,
        );
        let made = record
            .set_description("d".into())
            .and_then(|()| {
                record.tag(kms_core::tags::NewTags::new([(
                    "team".to_owned(),
                    "payments".to_owned(),
                )])?)
            })
            .and_then(|()| record.created(None, None));
        if let Err(error) = made {
            panic!("{error}");
        }
        record.set_policy(&kms_core::policy::KeyPolicy::default_for("creator"));
        record
    }

    #[test]
    fn records_and_instance_id_survive_reopen() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let id = KeyId::random();
        let instance = {
            let store = RocksStore::open(dir.path())?;
            store.put_key(&record(id))?;
            store.instance_id()
        };
        let store = RocksStore::open(dir.path())?;
        assert_eq!(store.instance_id(), instance);
        assert_eq!(store.get_key(id)?, Some(record(id)));
        store.delete_key(id)?;
        assert_eq!(store.get_key(id)?, None);
        Ok(())
    }

    #[test]
    fn list_pages_in_id_order() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = RocksStore::open(dir.path())?;
        let mut ids: Vec<KeyId> = (0..5).map(|_| KeyId::random()).collect();
        for id in &ids {
            store.put_key(&record(*id))?;
        }
        ids.sort();
        let first: Vec<KeyId> = store
            .list_keys(None, 2)?
            .iter()
            .map(KeyRecord::id)
            .collect();
        assert_eq!(first, ids[..2]);
        let rest: Vec<KeyId> = store
            .list_keys(Some(ids[1]), 10)?
            .iter()
            .map(KeyRecord::id)
            .collect();
        assert_eq!(rest, ids[2..]);
        Ok(())
    }

    #[test]
    fn a_second_open_of_the_same_dir_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let _first = RocksStore::open(dir.path())?;
        assert!(matches!(
            RocksStore::open(dir.path()),
            Err(OpenError::Open { .. })
        ));
        Ok(())
    }

    #[test]
    fn aliases_survive_reopen_and_list_in_name_order() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let key = KeyId::random();
        let alias = |name: &str| -> Result<AliasRecord, kms_core::KmsError> {
            Ok(AliasRecord {
                name: AliasName::parse(name)?,
                key_id: key,
                created_at_ms: 1,
                updated_at_ms: 2,
            })
        };
        {
            let store = RocksStore::open(dir.path())?;
            store.put_key(&record(key))?;
            for name in ["alias/b", "alias/a", "alias/c"] {
                store.put_alias(&alias(name)?)?;
            }
        }
        let store = RocksStore::open(dir.path())?;
        assert_eq!(
            store.get_alias(&AliasName::parse("alias/a")?)?,
            Some(alias("alias/a")?)
        );
        let names: Vec<String> = store
            .list_aliases(None, 10)?
            .into_iter()
            .map(|a| a.name.to_string())
            .collect();
        assert_eq!(names, ["alias/a", "alias/b", "alias/c"]);
        let after_a = store.list_aliases(Some(&AliasName::parse("alias/a")?), 1)?;
        assert_eq!(after_a, [alias("alias/b")?]);
        store.delete_alias(&AliasName::parse("alias/b")?)?;
        assert_eq!(store.get_alias(&AliasName::parse("alias/b")?)?, None);
        // Keys and aliases do not leak into each other's listings.
        assert_eq!(store.list_keys(None, 10)?.len(), 1);
        Ok(())
    }
}
