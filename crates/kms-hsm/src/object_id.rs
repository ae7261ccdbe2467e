//! How a key version's HSM object is named: CKA_ID and CKA_LABEL.
//!
//! The material kind is part of the name (DESIGN §3: one kind is never used as another):
//! a lookup for a master secret never finds an HMAC key of the same key version, whatever the
//! metadata says. Objects made before kinds were named (`"kms1"` ids) are still found, as a
//! fallback, so their blobs keep decrypting; for them the service's own checks are the only
//! guard.

use kms_core::hsm::WrappingKeyRef;
use kms_core::key::{KeyMaterial, MacAlgorithm};
use kms_core::{KeyId, KeyVersionRef};

const LEGACY_MAGIC: &[u8; 4] = b"kms1";
const LEGACY_LEN: usize = 4 + 16 + 16 + 4;
const MAGIC: &[u8; 4] = b"kms2";
const LEN: usize = LEGACY_LEN + 1;

/// The kind of material an object holds, the last byte of its CKA_ID.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ObjectKind {
    /// A SYMMETRIC_DEFAULT master secret.
    MasterSecret,
    /// An HMAC key for HMAC-SHA-256.
    HmacSha256,
    /// An HMAC key for HMAC-SHA-384.
    HmacSha384,
    /// An HMAC key for HMAC-SHA-512.
    HmacSha512,
    /// An RSA private key that only decrypts.
    RsaDecrypt,
    /// An RSA private key that only signs.
    RsaSign,
    /// A P-256 private key that only signs.
    EcP256Sign,
}

impl ObjectKind {
    /// Every kind, for the calls that look for a key version's objects of any kind.
    pub const ALL: [ObjectKind; 7] = [
        ObjectKind::MasterSecret,
        ObjectKind::HmacSha256,
        ObjectKind::HmacSha384,
        ObjectKind::HmacSha512,
        ObjectKind::RsaDecrypt,
        ObjectKind::RsaSign,
        ObjectKind::EcP256Sign,
    ];

    /// The kind of `material`.
    pub fn of(material: KeyMaterial) -> Self {
        match material {
            KeyMaterial::MasterSecret => ObjectKind::MasterSecret,
            KeyMaterial::HmacSecret(MacAlgorithm::HmacSha256) => ObjectKind::HmacSha256,
            KeyMaterial::HmacSecret(MacAlgorithm::HmacSha384) => ObjectKind::HmacSha384,
            KeyMaterial::HmacSecret(MacAlgorithm::HmacSha512) => ObjectKind::HmacSha512,
            KeyMaterial::RsaDecrypt { .. } => ObjectKind::RsaDecrypt,
            KeyMaterial::RsaSign { .. } => ObjectKind::RsaSign,
            KeyMaterial::EcP256Sign => ObjectKind::EcP256Sign,
        }
    }

    pub(crate) fn byte(self) -> u8 {
        match self {
            ObjectKind::MasterSecret => 1,
            ObjectKind::HmacSha256 => 2,
            ObjectKind::HmacSha384 => 3,
            ObjectKind::HmacSha512 => 4,
            ObjectKind::RsaDecrypt => 5,
            ObjectKind::RsaSign => 6,
            ObjectKind::EcP256Sign => 7,
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        ObjectKind::ALL.into_iter().find(|k| k.byte() == byte)
    }

    /// Whether the object is a private key (else a secret key).
    pub fn is_private_key(self) -> bool {
        matches!(
            self,
            ObjectKind::RsaDecrypt | ObjectKind::RsaSign | ObjectKind::EcP256Sign
        )
    }
}

/// CKA_ID of a key version's object: `"kms2"` || instance id (16) || key id (16) || version
/// (u32 big-endian) || kind (1), 41 bytes. The instance id keeps two services that share a
/// token apart. Objects made by earlier releases have the legacy form, `"kms1"` and no kind
/// byte (`kind` is `None`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ObjectId {
    namespace: [u8; 16],
    key: KeyVersionRef,
    kind: Option<ObjectKind>,
}

impl ObjectId {
    /// The id of `key`'s object of `kind` for the instance `namespace`.
    pub fn new(namespace: [u8; 16], key: KeyVersionRef, kind: ObjectKind) -> Self {
        ObjectId {
            namespace,
            key,
            kind: Some(kind),
        }
    }

    /// The legacy id (no kind) of `key`'s object, as releases before kinds made it.
    pub fn legacy(namespace: [u8; 16], key: KeyVersionRef) -> Self {
        ObjectId {
            namespace,
            key,
            kind: None,
        }
    }

    /// The CKA_ID bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(LEN);
        out.extend_from_slice(if self.kind.is_some() {
            MAGIC
        } else {
            LEGACY_MAGIC
        });
        out.extend_from_slice(&self.namespace);
        out.extend_from_slice(self.key.key_id.as_bytes());
        out.extend_from_slice(&self.key.version.to_be_bytes());
        if let Some(kind) = self.kind {
            out.push(kind.byte());
        }
        out
    }

    /// A CKA_ID this service made, or `None` for any other object's.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let kind = match bytes.len() {
            LEGACY_LEN if bytes.starts_with(LEGACY_MAGIC) => None,
            LEN if bytes.starts_with(MAGIC) => {
                Some(ObjectKind::from_byte(*bytes.get(LEGACY_LEN)?)?)
            }
            _ => return None,
        };
        let namespace = bytes.get(4..20)?.try_into().ok()?;
        let key_id = KeyId::from_bytes(bytes.get(20..36)?.try_into().ok()?);
        let version = u32::from_be_bytes(bytes.get(36..40)?.try_into().ok()?);
        Some(ObjectId {
            namespace,
            key: KeyVersionRef { key_id, version },
            kind,
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

    /// The material kind, or `None` for a legacy id.
    pub fn kind(&self) -> Option<ObjectKind> {
        self.kind
    }
}

const WRAPPING_MAGIC: &[u8; 4] = b"kmsw";
const WRAPPING_LEN: usize = LEGACY_LEN;

/// CKA_ID of both halves of an import wrapping key pair: `"kmsw"` || instance id (16) ||
/// key id (16) || serial (u32 big-endian).
pub fn wrapping_id(namespace: [u8; 16], key: WrappingKeyRef) -> Vec<u8> {
    let mut out = Vec::with_capacity(WRAPPING_LEN);
    out.extend_from_slice(WRAPPING_MAGIC);
    out.extend_from_slice(&namespace);
    out.extend_from_slice(key.key_id.as_bytes());
    out.extend_from_slice(&key.serial.to_be_bytes());
    out
}

/// The wrapping key a CKA_ID names, with its instance id, or `None` for any other object's.
pub fn parse_wrapping_id(bytes: &[u8]) -> Option<([u8; 16], WrappingKeyRef)> {
    if bytes.len() != WRAPPING_LEN || !bytes.starts_with(WRAPPING_MAGIC) {
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
        let key = KeyVersionRef {
            key_id: KeyId::random(),
            version: 7,
        };
        for kind in ObjectKind::ALL {
            let id = ObjectId::new([9; 16], key, kind);
            assert_eq!(ObjectId::parse(&id.to_bytes()), Some(id));
            assert_eq!(id.to_bytes().len(), LEN);
        }
        let legacy = ObjectId::legacy([9; 16], key);
        assert_eq!(ObjectId::parse(&legacy.to_bytes()), Some(legacy));
        assert_eq!(ObjectId::parse(b"someone else's key"), None);
        let id = ObjectId::new([9; 16], key, ObjectKind::MasterSecret);
        let mut other = id.to_bytes();
        other[0] = b'x';
        assert_eq!(ObjectId::parse(&other), None);
        let mut unknown_kind = id.to_bytes();
        unknown_kind[LEGACY_LEN] = 0;
        assert_eq!(ObjectId::parse(&unknown_kind), None);
    }

    #[test]
    fn each_kind_names_a_different_object() {
        let key = KeyVersionRef {
            key_id: KeyId::random(),
            version: 1,
        };
        let mut ids: Vec<Vec<u8>> = ObjectKind::ALL
            .into_iter()
            .map(|kind| ObjectId::new([1; 16], key, kind).to_bytes())
            .collect();
        ids.push(ObjectId::legacy([1; 16], key).to_bytes());
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count);
    }
}
