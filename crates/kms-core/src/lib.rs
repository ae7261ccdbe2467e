//! The domain of the key management service.
//!
//! Key ids and references, the key model ([`key`]) and the record that owns each key's state
//! machine ([`KeyRecord`]), key policies ([`policy`], parsed once per text), the
//! encryption-context encoding, the ciphertext format and the symmetric scheme, the public-key
//! work of RSA and ECC keys ([`asymmetric`]: Verify, RSA encryption, key encodings — never a
//! private-key operation), the service logic ([`Kms`], one file per capability under
//! [`service`]), and the traits its backends implement: [`KeyStore`] (the HSM),
//! [`MetadataStore`] (key metadata) and [`AuditSink`] (the audit log).
//! The tamper-evident audit log's record format and its offline verifier live in [`audit`]; the
//! file writer is the kms-audit crate.
//!
//! This crate must not depend on tonic, cryptoki or rocksdb: the adapters depend on it, never
//! the other way round. Every method of [`Kms`] blocks (HSM and store calls); async callers run
//! them on a blocking thread.
#![forbid(unsafe_code)]

pub mod alias;
pub mod asymmetric;
pub mod audit;
pub mod blob;
pub mod caller;
pub mod clock;
pub mod context;
pub mod error;
pub mod hsm;
pub mod ids;
pub mod kdf;
pub mod key;
pub mod policy;
pub mod secret;
pub mod service;
pub mod store;
pub mod symmetric;
pub mod tags;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use alias::AliasRecord;
pub use audit::{AuditError, AuditEvent, AuditSink, CheckpointSigner};
pub use caller::{CallNote, Caller};
pub use clock::{Clock, SystemClock};
pub use context::EncryptionContext;
pub use error::KmsError;
pub use hsm::{HsmError, KeyStore, KeyVersionRef, MessageKey};
pub use ids::{AliasName, KeyId, KeyRef};
pub use key::{
    EncryptionAlgorithm, KeyRecord, KeySpec, KeyState, KeyUsage, KeyVersion, Origin,
    RotationSchedule, VersionSource,
};
pub use secret::SecretBytes;
pub use service::Kms;
pub use store::{MetadataStore, StoreError};
