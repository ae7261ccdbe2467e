//! A typed async client for the key management service.
//!
//! Wraps the generated `kms.v1` client: each call takes plain Rust values, returns the
//! response or a [`ClientError`] carrying the server's error reason (the AWS exception name),
//! and hands plaintexts back in zeroizing buffers. Used by kmsctl and the end-to-end tests.
#![forbid(unsafe_code)]

mod aliases;
mod connection;
mod crypto;
mod domain;
mod error;
mod import;
mod keys;
mod resource_tags;
mod rotation;
mod sign;

use std::collections::HashMap;

use kms_proto::v1::key_management_service_client::KeyManagementServiceClient;
use tonic::transport::Channel;

pub use kms_proto::v1;

pub use crate::connection::ClientTls;
pub use crate::crypto::{DataKey, DataKeySize, Decrypted};
pub use crate::error::ClientError;

/// An encryption context: pairs of UTF-8 strings bound to a ciphertext.
pub type Context = HashMap<String, String>;

/// A connected client.
#[derive(Clone)]
pub struct KmsClient {
    inner: KeyManagementServiceClient<Channel>,
}
