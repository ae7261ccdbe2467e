//! The ciphertext blob, format v1.
//!
//! ```text
//! offset  size  field
//!      0     1  format version: 0x01
//!      1    16  key id (UUID bytes, RFC 4122 order)
//!     17     4  key version (u32, big-endian)
//!     21     1  algorithm id: 0x01 = SYMMETRIC_DEFAULT
//!     22    32  nonce
//!     54    32  key commitment
//!     86     n  AES-256-GCM ciphertext (n = plaintext length)
//!   86+n    16  AES-256-GCM tag
//! ```
//!
//! Bytes 0..86 are the header; the whole header is authenticated as part of the GCM AAD.
//! A later format gets a new version byte; v1 blobs keep decrypting.

use crate::error::KmsError;
use crate::hsm::KeyVersionRef;
use crate::ids::KeyId;

/// The format version byte of v1 blobs.
pub const FORMAT_V1: u8 = 0x01;
/// The algorithm id of SYMMETRIC_DEFAULT.
pub const ALGORITHM_SYMMETRIC_DEFAULT: u8 = 0x01;
/// Length of the nonce.
pub const NONCE_LEN: usize = 32;
/// Length of the key commitment.
pub const COMMITMENT_LEN: usize = 32;
/// Length of the header (everything before the GCM ciphertext).
pub const HEADER_LEN: usize = 1 + 16 + 4 + 1 + NONCE_LEN + COMMITMENT_LEN;
/// Length of the GCM tag.
pub const TAG_LEN: usize = 16;
/// The most bytes a blob may have.
pub const MAX_BLOB_LEN: usize = 6144;

/// The header of a blob.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Header {
    /// The key version the blob was made with.
    pub key: KeyVersionRef,
    /// The per-message nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The key commitment.
    pub commitment: [u8; COMMITMENT_LEN],
}

impl Header {
    /// The header's bytes, as they start a blob.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = FORMAT_V1;
        out[1..17].copy_from_slice(self.key.key_id.as_bytes());
        out[17..21].copy_from_slice(&self.key.version.to_be_bytes());
        out[21] = ALGORITHM_SYMMETRIC_DEFAULT;
        out[22..54].copy_from_slice(&self.nonce);
        out[54..86].copy_from_slice(&self.commitment);
        out
    }
}

/// A blob split into its parts. Parsing checks the structure only; the GCM tag and the
/// commitment are checked when it is opened.
pub struct ParsedBlob<'a> {
    /// The parsed header.
    pub header: Header,
    /// The header's bytes, for the AAD.
    pub header_bytes: &'a [u8],
    /// GCM ciphertext followed by the tag.
    pub sealed: &'a [u8],
}

/// Parses a blob. Every malformation is the same [`KmsError::InvalidCiphertext`].
pub fn parse(blob: &[u8]) -> Result<ParsedBlob<'_>, KmsError> {
    if blob.len() > MAX_BLOB_LEN || blob.len() < HEADER_LEN + TAG_LEN + 1 {
        return Err(KmsError::InvalidCiphertext);
    }
    let (header_bytes, sealed) = blob.split_at(HEADER_LEN);
    if header_bytes[0] != FORMAT_V1 || header_bytes[21] != ALGORITHM_SYMMETRIC_DEFAULT {
        return Err(KmsError::InvalidCiphertext);
    }
    let field = |range: std::ops::Range<usize>| header_bytes.get(range).unwrap_or_default();
    let key_id = KeyId::from_bytes(array(field(1..17))?);
    let version = u32::from_be_bytes(array(field(17..21))?);
    if version == 0 {
        return Err(KmsError::InvalidCiphertext);
    }
    Ok(ParsedBlob {
        header: Header {
            key: KeyVersionRef { key_id, version },
            nonce: array(field(22..54))?,
            commitment: array(field(54..86))?,
        },
        header_bytes,
        sealed,
    })
}

fn array<const N: usize>(bytes: &[u8]) -> Result<[u8; N], KmsError> {
    bytes.try_into().map_err(|_| KmsError::InvalidCiphertext)
}
