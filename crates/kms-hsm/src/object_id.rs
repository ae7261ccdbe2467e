//! How a key version's HSM object is named: CKA_ID and CKA_LABEL.

use kms_core::hsm::WrappingKeyRef;
use kms_core::{KeyId, KeyVersionRef};

const MAGIC: &[u8; 4] = b"kms1";
const LEN: usize = 4 + 16 + 16 + 4;

/// CKA_ID of a key version's object: `"kms1"` || instance id (16) || key id (16) ||
/// version (u32 big-endian), 40 bytes. The instance id keeps two services that share a token
/// apart.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ObjectId {
    namespace: [u8; 16],
    key: KeyVersionRef,
}

impl ObjectId {
    /// The id of `key`'s object for the instance `namespace`.
    pub fn new(namespace: [u8; 16], key: KeyVersionRef) -> Self {
        ObjectId { namespace, key }
    }

    /// The CKA_ID bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.namespace);
        out.extend_from_slice(self.key.key_id.as_bytes());
        out.extend_from_slice(&self.key.version.to_be_bytes());
        out
    }

    /// A CKA_ID this service made, or `None` for any other object's.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != LEN || !bytes.starts_with(MAGIC) {
            return None;
        }
        let namespace = bytes.get(4..20)?.try_into().ok()?;
        let key_id = KeyId::from_bytes(bytes.get(20..36)?.try_into().ok()?);
        let version = u32::from_be_bytes(bytes.get(36..40)?.try_into().ok()?);
        Some(ObjectId {
            namespace,
            key: KeyVersionRef { key_id, version },
        })
    }

    /// The CKA_LABEL: `kms/<key id>/v<version>`, for people reading the token.
    pub fn label(&self) -> String {
        format!("kms/{}/v{}", self.key.key_id, self.key.version)
    }

    /// The instance id.
    pub fn namespace(&self) -> [u8; 16] {
        self.namespace
    }

    /// The key version.
    pub fn key(&self) -> KeyVersionRef {
        self.key
    }
}

const WRAPPING_MAGIC: &[u8; 4] = b"kmsw";

/// CKA_ID of both halves of an import wrapping key pair: `"kmsw"` || instance id (16) ||
/// key id (16) || serial (u32 big-endian).
pub fn wrapping_id(namespace: [u8; 16], key: WrappingKeyRef) -> Vec<u8> {
    let mut out = Vec::with_capacity(LEN);
    out.extend_from_slice(WRAPPING_MAGIC);
    out.extend_from_slice(&namespace);
    out.extend_from_slice(key.key_id.as_bytes());
    out.extend_from_slice(&key.serial.to_be_bytes());
    out
}

/// The wrapping key a CKA_ID names, with its instance id, or `None` for any other object's.
pub fn parse_wrapping_id(bytes: &[u8]) -> Option<([u8; 16], WrappingKeyRef)> {
    if bytes.len() != LEN || !bytes.starts_with(WRAPPING_MAGIC) {
        return None;
    }
    let namespace = bytes.get(4..20)?.try_into().ok()?;
    let key_id = KeyId::from_bytes(bytes.get(20..36)?.try_into().ok()?);
    let serial = u32::from_be_bytes(bytes.get(36..40)?.try_into().ok()?);
    Some((namespace, WrappingKeyRef { key_id, serial }))
}

/// The CKA_LABEL of a wrapping key: `kms/<key id>/wrap<serial>`.
pub fn wrapping_label(key: WrappingKeyRef) -> String {
    format!("kms/{}/wrap{}", key.key_id, key.serial)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_foreign_ids() {
        let id = ObjectId::new(
            [9; 16],
            KeyVersionRef {
                key_id: KeyId::random(),
                version: 7,
            },
        );
        assert_eq!(ObjectId::parse(&id.to_bytes()), Some(id));
        assert_eq!(ObjectId::parse(b"someone else's key"), None);
        let mut other = id.to_bytes();
        other[0] = b'x';
        assert_eq!(ObjectId::parse(&other), None);
    }
}
