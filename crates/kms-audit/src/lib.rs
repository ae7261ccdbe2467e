//! The audit log's file writer: [`AuditLog`] opens the file, recovers its tail after a crash
//! (quarantining what was never sealed, checking the seal the metadata store pins), and appends
//! records in group commits, each synced and sealed with a checkpoint the HSM signs before it
//! is acknowledged. kmsd hands it to the gRPC layer as the service's
//! [`AuditSink`](kms_core::audit::AuditSink).
//!
//! The record format, the chain and the offline verifier are kms-core's
//! ([`kms_core::audit`]): this crate owns the file, its syncing and its recovery.

mod recovery;
mod writer;

pub use writer::{AuditLog, MAX_BATCH};
