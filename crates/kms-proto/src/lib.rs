//! Generated gRPC code for the `kms.v1` API in `proto/kms/v1`.
//!
//! Generated code, plus two hand-written things: the `Debug` impls of the messages that carry
//! plaintext or data keys, which print the length of those fields instead of their bytes, so
//! that no `{:?}` of a request or response can leak a secret; and the codec, which answers a
//! message that does not decode with INVALID_ARGUMENT. This crate depends on nothing of the
//! project.
#![forbid(unsafe_code)]

pub mod codec;

pub use codec::ERROR_DOMAIN;

/// Package `kms.v1`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("kms.v1");
}

use std::fmt;

/// The encoded `FileDescriptorSet` of `kms.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kms_descriptor");

/// Shows a secret field as its length only.
struct Redacted(usize);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes redacted>", self.0)
    }
}

impl fmt::Debug for v1::EncryptRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptRequest")
            .field("key_id", &self.key_id)
            .field("plaintext", &Redacted(self.plaintext.len()))
            .field("encryption_context", &self.encryption_context)
            .field("encryption_algorithm", &self.encryption_algorithm)
            .finish()
    }
}

// Messages to sign or MAC may be secrets of the caller's: shown as lengths too.

impl fmt::Debug for v1::SignRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignRequest")
            .field("key_id", &self.key_id)
            .field("message", &Redacted(self.message.len()))
            .field("message_type", &self.message_type)
            .field("signing_algorithm", &self.signing_algorithm)
            .finish()
    }
}

impl fmt::Debug for v1::VerifyRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyRequest")
            .field("key_id", &self.key_id)
            .field("message", &Redacted(self.message.len()))
            .field("message_type", &self.message_type)
            .field("signature", &self.signature.len())
            .field("signing_algorithm", &self.signing_algorithm)
            .finish()
    }
}

impl fmt::Debug for v1::GenerateMacRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenerateMacRequest")
            .field("key_id", &self.key_id)
            .field("message", &Redacted(self.message.len()))
            .field("mac_algorithm", &self.mac_algorithm)
            .finish()
    }
}

impl fmt::Debug for v1::VerifyMacRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyMacRequest")
            .field("key_id", &self.key_id)
            .field("message", &Redacted(self.message.len()))
            .field("mac", &Redacted(self.mac.len()))
            .field("mac_algorithm", &self.mac_algorithm)
            .finish()
    }
}

impl fmt::Debug for v1::DecryptResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptResponse")
            .field("plaintext", &Redacted(self.plaintext.len()))
            .field("key_id", &self.key_id)
            .field("encryption_algorithm", &self.encryption_algorithm)
            .finish()
    }
}

impl fmt::Debug for v1::GenerateDataKeyResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenerateDataKeyResponse")
            .field("ciphertext_blob", &self.ciphertext_blob.len())
            .field("plaintext", &Redacted(self.plaintext.len()))
            .field("key_id", &self.key_id)
            .finish()
    }
}

impl fmt::Debug for v1::GenerateRandomResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenerateRandomResponse")
            .field("plaintext", &Redacted(self.plaintext.len()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::v1;

    #[test]
    fn debug_never_prints_plaintext() {
        let secret = b"SECRET-BYTES".to_vec();
        let printed = [
            format!(
                "{:?}",
                v1::EncryptRequest {
                    key_id: "k".into(),
                    plaintext: secret.clone(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                v1::DecryptResponse {
                    plaintext: secret.clone(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                v1::GenerateDataKeyResponse {
                    plaintext: secret.clone(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                v1::GenerateRandomResponse {
                    plaintext: secret.clone(),
                }
            ),
            format!(
                "{:?}",
                v1::SignRequest {
                    message: secret.clone(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                v1::VerifyRequest {
                    message: secret.clone(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                v1::GenerateMacRequest {
                    message: secret.clone(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                v1::VerifyMacRequest {
                    message: secret.clone(),
                    ..Default::default()
                }
            ),
        ];
        for p in printed {
            assert!(p.contains("12 bytes redacted"), "{p}");
            assert!(!p.contains("83, 69, 67"), "{p}");
        }
    }
}
