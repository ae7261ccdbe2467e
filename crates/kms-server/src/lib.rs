//! kmsd: the gRPC transport of the key management service, its configuration and its
//! process wiring.
//!
//! The handlers (`grpc/handlers.rs`, one entry of a macro table per RPC) only convert: proto
//! request → kms-core input (`convert`'s `FromRequest`), a call of [`kms_core::Kms`] on a
//! blocking thread through one call shell (`grpc.rs`: authentication, admission, the audit
//! record, metrics, the one log line of an internal error), the result → proto response, and
//! every [`kms_core::KmsError`] → one gRPC status with its `google.rpc.ErrorInfo` (`status`).
//! No business rule lives here.
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod connections;
mod convert;
mod crl;
pub mod framing;
pub mod grpc;
pub mod limits;
pub mod metrics;
pub mod status;

/// The largest gRPC message kmsd accepts or sends.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
