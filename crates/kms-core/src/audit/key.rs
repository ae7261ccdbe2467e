//! The public key of a log's checkpoint signer, as verifiers are given it (a PEM
//! SubjectPublicKeyInfo beside the log), and the checking of one checkpoint signature with it.
//!
//! kmsd makes an ECDSA P-256 key where the HSM has elliptic curves, and an RSA-PSS key where
//! it has none (Debian's opencryptoki soft token): the key's type in the SubjectPublicKeyInfo
//! says which signatures the checkpoints carry.

use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use rsa::pkcs8::{DecodePublicKey as _, EncodePublicKey as _, LineEnding};
use rsa::traits::PublicKeyParts as _;
use rsa::{Pss, RsaPublicKey};
use sha2::{Digest as _, Sha256};

/// The modulus size of the RSA-PSS audit keys kmsd makes.
pub const AUDIT_RSA_BITS: u32 = 3072;

/// The public key of a checkpoint signer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditPublicKey {
    /// ECDSA P-256 with SHA-256; a signature is raw `r || s` (64 bytes), `s` in the low half.
    P256(p256::PublicKey),
    /// RSASSA-PSS with SHA-256, MGF1 with SHA-256 and a 32-byte salt; a signature is as long as
    /// the modulus.
    RsaPss(RsaPublicKey),
}

/// A public key file that holds neither a P-256 nor an RSA SubjectPublicKeyInfo.
#[derive(Debug, thiserror::Error)]
#[error("not a P-256 or RSA public key (PEM SubjectPublicKeyInfo)")]
pub struct UnknownAuditKey;

/// The key could not be encoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode the audit public key: {0}")]
pub struct EncodeAuditKey(String);

impl AuditPublicKey {
    /// The key of a PEM SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_public_key_pem(pem: &str) -> Result<Self, UnknownAuditKey> {
        if let Ok(key) = p256::pkcs8::DecodePublicKey::from_public_key_pem(pem) {
            return Ok(AuditPublicKey::P256(key));
        }
        RsaPublicKey::from_public_key_pem(pem)
            .map(AuditPublicKey::RsaPss)
            .map_err(|_| UnknownAuditKey)
    }

    /// The key of a DER SubjectPublicKeyInfo.
    pub fn from_public_key_der(der: &[u8]) -> Result<Self, UnknownAuditKey> {
        if let Ok(key) = p256::pkcs8::DecodePublicKey::from_public_key_der(der) {
            return Ok(AuditPublicKey::P256(key));
        }
        RsaPublicKey::from_public_key_der(der)
            .map(AuditPublicKey::RsaPss)
            .map_err(|_| UnknownAuditKey)
    }

    /// The DER SubjectPublicKeyInfo: what an operator's fingerprint hashes.
    pub fn to_public_key_der(&self) -> Result<Vec<u8>, EncodeAuditKey> {
        let der = match self {
            AuditPublicKey::P256(key) => p256::pkcs8::EncodePublicKey::to_public_key_der(key),
            AuditPublicKey::RsaPss(key) => key.to_public_key_der(),
        };
        der.map(|der| der.as_bytes().to_vec())
            .map_err(|e| EncodeAuditKey(e.to_string()))
    }

    /// The PEM SubjectPublicKeyInfo (LF line endings), as kmsd writes it beside the log.
    pub fn to_public_key_pem(&self) -> Result<String, EncodeAuditKey> {
        let pem = match self {
            AuditPublicKey::P256(key) => {
                p256::pkcs8::EncodePublicKey::to_public_key_pem(key, LineEnding::LF)
            }
            AuditPublicKey::RsaPss(key) => key.to_public_key_pem(LineEnding::LF),
        };
        pem.map_err(|e| EncodeAuditKey(e.to_string()))
    }

    /// The signature scheme, for people: `ECDSA P-256` or `RSA-PSS 3072`.
    pub fn scheme(&self) -> String {
        match self {
            AuditPublicKey::P256(_) => "ECDSA P-256".to_owned(),
            AuditPublicKey::RsaPss(key) => format!("RSA-PSS {}", key.size() * 8),
        }
    }

    /// `signature` in the one form a checkpoint carries it: an ECDSA signature with `s`
    /// normalised to the low half; an RSA-PSS one as it is. `None` when it is malformed.
    pub fn normalize(&self, signature: &[u8]) -> Option<Vec<u8>> {
        match self {
            AuditPublicKey::P256(_) => {
                let signature = Signature::from_slice(signature).ok()?;
                let low = signature.normalize_s().unwrap_or(signature);
                Some(low.to_bytes().to_vec())
            }
            AuditPublicKey::RsaPss(_) => Some(signature.to_vec()),
        }
    }

    /// Checks a checkpoint signature over `message`: well formed (low-S for ECDSA) and valid.
    /// The error is a sentence for the verifier's report.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), &'static str> {
        const INVALID: &str = "the checkpoint signature does not verify with the public key: the \
                               checkpoint or a line before it was altered, or the log was \
                               signed with another key";
        match self {
            AuditPublicKey::P256(key) => {
                let signature = Signature::from_slice(signature)
                    .map_err(|_| "the checkpoint signature is malformed (r or s out of range)")?;
                if signature.normalize_s().is_some() {
                    return Err(
                        "the checkpoint signature is not in low-S form, as the writer emits it: \
                         it was altered",
                    );
                }
                VerifyingKey::from(key)
                    .verify(message, &signature)
                    .map_err(|_| INVALID)
            }
            AuditPublicKey::RsaPss(key) => {
                if signature.len() != key.size() {
                    return Err(
                        "the checkpoint signature is not as long as the RSA key's modulus: it \
                         was altered, or the log was signed with another key",
                    );
                }
                // One spelling per signature: rsa's PSS check takes s + n as s whenever it
                // fits the modulus' length.
                if rsa::BigUint::from_bytes_be(signature) >= *key.n() {
                    return Err(
                        "the checkpoint signature is not below the RSA modulus, as the writer \
                         emits it: it was altered",
                    );
                }
                key.verify(Pss::new::<Sha256>(), &Sha256::digest(message), signature)
                    .map_err(|_| INVALID)
            }
        }
    }
}

impl From<p256::PublicKey> for AuditPublicKey {
    fn from(key: p256::PublicKey) -> Self {
        AuditPublicKey::P256(key)
    }
}
