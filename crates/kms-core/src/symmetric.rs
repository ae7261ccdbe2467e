//! SYMMETRIC_DEFAULT: an HSM-derived key per message, AES-256-GCM with key commitment.
//!
//! 1. `nonce` = 32 random bytes.
//! 2. `k_msg` = HMAC-SHA256(master secret, [`DERIVATION_LABEL`] || nonce), computed by the HSM.
//! 3. HKDF-SHA256 with no salt and `k_msg` as input key material gives two 32-byte outputs:
//!    the AES-256-GCM key (info [`AES_KEY_INFO`]) and the key commitment (info
//!    [`COMMITMENT_INFO`]).
//! 4. AES-256-GCM with a 96-bit all-zero IV (each AES key encrypts exactly one message) and a
//!    128-bit tag; AAD = the blob header (see [`crate::blob`]) || the canonical encoding of the
//!    encryption context.
//!
//! Opening recomputes `k_msg` in the HSM, compares the commitment in constant time, then
//! checks the tag. Every failure is the same [`KmsError::InvalidCiphertext`].

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::blob::{COMMITMENT_LEN, HEADER_LEN, Header, NONCE_LEN, ParsedBlob, TAG_LEN};
use crate::context::EncryptionContext;
use crate::error::KmsError;
use crate::hsm::{KeyVersionRef, MessageKey};
use crate::kdf;

/// The label the HSM's HMAC input starts with; the nonce follows it.
pub const DERIVATION_LABEL: &[u8] = b"kms.v1 SYMMETRIC_DEFAULT message key\0";
/// HKDF info of the AES-256-GCM key.
pub const AES_KEY_INFO: &[u8] = b"kms.v1 SYMMETRIC_DEFAULT aes-256-gcm key";
/// HKDF info of the key commitment.
pub const COMMITMENT_INFO: &[u8] = b"kms.v1 SYMMETRIC_DEFAULT key commitment";
const GCM_IV: [u8; 12] = [0; 12];

/// The input the HSM signs (HMAC) to give `k_msg` for `nonce`.
pub fn derivation_input(nonce: &[u8; NONCE_LEN]) -> Vec<u8> {
    let mut input = Vec::with_capacity(DERIVATION_LABEL.len() + NONCE_LEN);
    input.extend_from_slice(DERIVATION_LABEL);
    input.extend_from_slice(nonce);
    input
}

/// A fresh random nonce from the operating system's CSPRNG.
pub fn random_nonce() -> Result<[u8; NONCE_LEN], KmsError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| KmsError::Internal(Box::new(e)))?;
    Ok(nonce)
}

struct DerivedKeys {
    cipher: Aes256Gcm,
    commitment: [u8; COMMITMENT_LEN],
}

fn derive(k_msg: &MessageKey) -> Result<DerivedKeys, KmsError> {
    // Every intermediate (the PRK above all) is wiped: see crate::kdf.
    let aes_key = kdf::hkdf_sha256_32(k_msg.expose_secret(), AES_KEY_INFO);
    let commitment = *kdf::hkdf_sha256_32(k_msg.expose_secret(), COMMITMENT_INFO);
    let cipher = Aes256Gcm::new_from_slice(aes_key.as_slice())
        .map_err(|e| KmsError::Internal(format!("AES key: {e}").into()))?;
    Ok(DerivedKeys { cipher, commitment })
}

fn aad(header: &[u8], context: &EncryptionContext) -> Vec<u8> {
    let mut aad = header.to_vec();
    aad.extend_from_slice(&context.encode());
    aad
}

/// Encrypts `plaintext` into a v1 blob under the key version whose `k_msg` for `nonce` is given.
pub fn seal(
    k_msg: &MessageKey,
    key: KeyVersionRef,
    nonce: [u8; NONCE_LEN],
    context: &EncryptionContext,
    plaintext: &[u8],
) -> Result<Vec<u8>, KmsError> {
    let derived = derive(k_msg)?;
    let header = Header {
        key,
        nonce,
        commitment: derived.commitment,
    }
    .to_bytes();
    // Holds the plaintext until it is encrypted in place: wiped if encryption fails. Sized
    // for the tag, so it never reallocates and leaves a copy behind.
    let mut blob = Zeroizing::new(Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN));
    blob.extend_from_slice(&header);
    blob.extend_from_slice(plaintext);
    let tag = derived
        .cipher
        .encrypt_in_place_detached(
            Nonce::from_slice(&GCM_IV),
            &aad(&header, context),
            &mut blob[HEADER_LEN..],
        )
        .map_err(|_| KmsError::Internal("AES-GCM encryption failed".into()))?;
    blob.extend_from_slice(&tag);
    Ok(std::mem::take(&mut *blob))
}

/// Decrypts a parsed blob with the `k_msg` of its header's key version and nonce.
pub fn open(
    k_msg: &MessageKey,
    blob: &ParsedBlob<'_>,
    context: &EncryptionContext,
) -> Result<Zeroizing<Vec<u8>>, KmsError> {
    let derived = derive(k_msg)?;
    if !bool::from(derived.commitment.ct_eq(&blob.header.commitment)) {
        return Err(KmsError::InvalidCiphertext);
    }
    let split = blob
        .sealed
        .len()
        .checked_sub(TAG_LEN)
        .ok_or(KmsError::InvalidCiphertext)?;
    let (ciphertext, tag) = blob.sealed.split_at(split);
    let mut plaintext = Zeroizing::new(ciphertext.to_vec());
    derived
        .cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(&GCM_IV),
            &aad(blob.header_bytes, context),
            &mut plaintext,
            Tag::from_slice(tag),
        )
        .map_err(|_| KmsError::InvalidCiphertext)?;
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::blob;
    use crate::hsm::KeyStore;
    use crate::ids::KeyId;
    use crate::testing::SoftKeyStore;

    #[derive(Deserialize)]
    struct Vector {
        description: String,
        master_secret_hex: String,
        key_id: String,
        key_version: u32,
        nonce_hex: String,
        encryption_context: std::collections::BTreeMap<String, String>,
        plaintext_hex: String,
        derivation_input_hex: String,
        k_msg_hex: String,
        commitment_hex: String,
        context_encoding_hex: String,
        ciphertext_blob_hex: String,
    }

    fn vectors() -> Vec<Vector> {
        let text = include_str!("../../../tests/data/symmetric_default_v1.json");
        serde_json::from_str(text).unwrap_or_else(|e| panic!("bad vector file: {e}"))
    }

    fn hex32(s: &str) -> [u8; 32] {
        hex::decode(s)
            .ok()
            .and_then(|v| v.try_into().ok())
            .unwrap_or_else(|| panic!("not 32 hex bytes: {s}"))
    }

    /// A software HSM holding the vector's master secret, and the vector's key version.
    fn soft_hsm(v: &Vector) -> (SoftKeyStore, KeyVersionRef) {
        let key = KeyVersionRef {
            key_id: v.key_id.parse::<KeyId>().unwrap_or_else(|e| panic!("{e}")),
            version: v.key_version,
        };
        let hsm = SoftKeyStore::default();
        hsm.insert_secret(key, hex32(&v.master_secret_hex));
        (hsm, key)
    }

    #[test]
    fn known_answer_vectors_seal_and_open() {
        for v in vectors() {
            let (hsm, key) = soft_hsm(&v);
            let nonce = hex32(&v.nonce_hex);
            let input = derivation_input(&nonce);
            assert_eq!(
                hex::encode(&input),
                v.derivation_input_hex,
                "{}",
                v.description
            );
            let k_msg = hsm
                .derive_message_key(key.into(), &input)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                hex::encode(k_msg.expose_secret()),
                v.k_msg_hex,
                "{}",
                v.description
            );

            let context = EncryptionContext::new(v.encryption_context, "encryption_context")
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(hex::encode(context.encode()), v.context_encoding_hex);
            let plaintext = hex::decode(&v.plaintext_hex).unwrap_or_default();
            let sealed =
                seal(&k_msg, key, nonce, &context, &plaintext).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                hex::encode(&sealed),
                v.ciphertext_blob_hex,
                "{}",
                v.description
            );

            let parsed = blob::parse(&sealed).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(hex::encode(parsed.header.commitment), v.commitment_hex);
            let opened = open(&k_msg, &parsed, &context).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(*opened, plaintext);
        }
    }

    /// Every single-bit change anywhere in a blob, and every truncation, fails to open with
    /// the same error.
    #[test]
    fn any_altered_or_truncated_blob_is_rejected() {
        let v = &vectors()[1];
        let (hsm, _) = soft_hsm(v);
        let context = EncryptionContext::new(v.encryption_context.clone(), "c")
            .unwrap_or_else(|e| panic!("{e}"));
        let good = hex::decode(&v.ciphertext_blob_hex).unwrap_or_default();
        let try_open = |bytes: &[u8]| -> Result<(), KmsError> {
            let parsed = blob::parse(bytes)?;
            // A changed key id or version names another key: the HSM has no such object.
            let k_msg = hsm
                .derive_message_key(
                    parsed.header.key.into(),
                    &derivation_input(&parsed.header.nonce),
                )
                .map_err(|_| KmsError::InvalidCiphertext)?;
            open(&k_msg, &parsed, &context).map(drop)
        };
        assert!(try_open(&good).is_ok());
        for i in 0..good.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = good.clone();
                bad[i] ^= bit;
                assert!(
                    matches!(try_open(&bad), Err(KmsError::InvalidCiphertext)),
                    "byte {i} bit {bit:#x} was not detected"
                );
            }
        }
        for len in 0..good.len() {
            assert!(matches!(
                try_open(&good[..len]),
                Err(KmsError::InvalidCiphertext)
            ));
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(matches!(
            try_open(&longer),
            Err(KmsError::InvalidCiphertext)
        ));
    }

    /// Changing, adding or removing any part of the context fails to open.
    #[test]
    fn any_context_change_is_rejected() {
        let v = &vectors()[1];
        let (hsm, key) = soft_hsm(v);
        let blob_bytes = hex::decode(&v.ciphertext_blob_hex).unwrap_or_default();
        let parsed = blob::parse(&blob_bytes).unwrap_or_else(|e| panic!("{e}"));
        let k_msg = hsm
            .derive_message_key(key.into(), &derivation_input(&parsed.header.nonce))
            .unwrap_or_else(|e| panic!("{e}"));
        let pairs = |p: &[(&str, &str)]| {
            EncryptionContext::new(p.iter().map(|(a, b)| ((*a).into(), (*b).into())), "c")
                .unwrap_or_else(|e| panic!("{e}"))
        };
        assert!(
            open(
                &k_msg,
                &parsed,
                &pairs(&[("tenant", "acme"), ("purpose", "backup")])
            )
            .is_ok()
        );
        for wrong in [
            pairs(&[]),
            pairs(&[("tenant", "acme")]),
            pairs(&[("tenant", "acme"), ("purpose", "backuP")]),
            pairs(&[("tenant", "acmE"), ("purpose", "backup")]),
            pairs(&[("Tenant", "acme"), ("purpose", "backup")]),
            pairs(&[("tenant", "acme"), ("purpose", "backup"), ("x", "")]),
            pairs(&[("tenant", "acmepurposebackup")]),
        ] {
            assert!(matches!(
                open(&k_msg, &parsed, &wrong),
                Err(KmsError::InvalidCiphertext)
            ));
        }
    }
}
