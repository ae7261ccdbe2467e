//! The key model: what a key is (spec, usage, origin, algorithms), its versions, and (in
//! [`record`]) the record the service stores, which owns the key's state machine.

use serde::{Deserialize, Serialize};

use crate::asymmetric::HashAlg;
use crate::error::KmsError;

mod record;

pub use record::KeyRecord;

/// The states of a key. `Creating` is internal: such a key is never visible or usable.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum KeyState {
    /// Being created: its HSM object may not exist yet. Removed by startup reconciliation.
    Creating,
    /// Usable.
    Enabled,
    /// Kept, but refused for cryptographic operations.
    Disabled,
    /// Waiting for its deletion date.
    PendingDeletion,
    /// An imported key before its key material arrives.
    PendingImport,
    /// Deleted: its HSM objects are destroyed. Kept as a tombstone so that its blobs get
    /// NotFoundException rather than InvalidCiphertextException; never visible.
    Deleted,
}

impl KeyState {
    /// The AWS name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Creating => "Creating",
            KeyState::Deleted => "Deleted",
            KeyState::Enabled => "Enabled",
            KeyState::Disabled => "Disabled",
            KeyState::PendingDeletion => "PendingDeletion",
            KeyState::PendingImport => "PendingImport",
        }
    }
}

/// What a key is for.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum KeyUsage {
    /// Encrypt, Decrypt, ReEncrypt and GenerateDataKey (symmetric); Encrypt and Decrypt (RSA).
    EncryptDecrypt,
    /// Sign, Verify and GetPublicKey.
    SignVerify,
    /// GenerateMac and VerifyMac.
    GenerateVerifyMac,
}

impl KeyUsage {
    /// The AWS name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyUsage::EncryptDecrypt => "ENCRYPT_DECRYPT",
            KeyUsage::SignVerify => "SIGN_VERIFY",
            KeyUsage::GenerateVerifyMac => "GENERATE_VERIFY_MAC",
        }
    }
}

/// The type of key material.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum KeySpec {
    /// A 256-bit HSM-held secret used with the scheme of [`crate::symmetric`].
    SymmetricDefault,
    /// An RSA key pair with a 2048-bit modulus.
    Rsa2048,
    /// An RSA key pair with a 3072-bit modulus.
    Rsa3072,
    /// An RSA key pair with a 4096-bit modulus.
    Rsa4096,
    /// An ECDSA key pair on NIST P-256 (secp256r1).
    EccNistP256,
    /// An HMAC key for HMAC-SHA-256.
    Hmac256,
    /// An HMAC key for HMAC-SHA-384.
    Hmac384,
    /// An HMAC key for HMAC-SHA-512.
    Hmac512,
}

impl KeySpec {
    /// The AWS name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeySpec::SymmetricDefault => "SYMMETRIC_DEFAULT",
            KeySpec::Rsa2048 => "RSA_2048",
            KeySpec::Rsa3072 => "RSA_3072",
            KeySpec::Rsa4096 => "RSA_4096",
            KeySpec::EccNistP256 => "ECC_NIST_P256",
            KeySpec::Hmac256 => "HMAC_256",
            KeySpec::Hmac384 => "HMAC_384",
            KeySpec::Hmac512 => "HMAC_512",
        }
    }

    /// The RSA modulus size in bits, for RSA specs.
    pub fn rsa_bits(self) -> Option<u32> {
        match self {
            KeySpec::Rsa2048 => Some(2048),
            KeySpec::Rsa3072 => Some(3072),
            KeySpec::Rsa4096 => Some(4096),
            _ => None,
        }
    }

    /// The MAC algorithm of an HMAC spec.
    pub fn mac_algorithm(self) -> Option<MacAlgorithm> {
        match self {
            KeySpec::Hmac256 => Some(MacAlgorithm::HmacSha256),
            KeySpec::Hmac384 => Some(MacAlgorithm::HmacSha384),
            KeySpec::Hmac512 => Some(MacAlgorithm::HmacSha512),
            _ => None,
        }
    }

    /// The usages a key of this spec may have; the first is the default.
    pub fn usages(self) -> &'static [KeyUsage] {
        match self {
            KeySpec::SymmetricDefault => &[KeyUsage::EncryptDecrypt],
            KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => {
                &[KeyUsage::EncryptDecrypt, KeyUsage::SignVerify]
            }
            KeySpec::EccNistP256 => &[KeyUsage::SignVerify],
            KeySpec::Hmac256 | KeySpec::Hmac384 | KeySpec::Hmac512 => {
                &[KeyUsage::GenerateVerifyMac]
            }
        }
    }

    /// Whether the material is a key pair (it has a public key).
    pub fn is_asymmetric(self) -> bool {
        self.rsa_bits().is_some() || self == KeySpec::EccNistP256
    }

    /// The usage of a new key: `usage` if this spec allows it, else a ValidationException;
    /// the spec's default usage when none is given.
    pub fn usage(self, usage: Option<KeyUsage>) -> Result<KeyUsage, KmsError> {
        let allowed = self.usages();
        match usage {
            None => Ok(allowed[0]),
            Some(usage) if allowed.contains(&usage) => Ok(usage),
            Some(usage) => Err(KmsError::validation(format!(
                "key_usage {} is not valid for key_spec {}; it takes {}",
                usage.as_str(),
                self.as_str(),
                allowed
                    .iter()
                    .map(|u| u.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ))),
        }
    }

    /// What the HSM must make for a key of this spec and usage.
    pub fn material(self, usage: KeyUsage) -> KeyMaterial {
        match (self, self.rsa_bits(), self.mac_algorithm()) {
            (_, Some(bits), _) if usage == KeyUsage::SignVerify => KeyMaterial::RsaSign { bits },
            (_, Some(bits), _) => KeyMaterial::RsaDecrypt { bits },
            (_, _, Some(mac)) => KeyMaterial::HmacSecret(mac),
            (KeySpec::EccNistP256, _, _) => KeyMaterial::EcP256Sign,
            _ => KeyMaterial::MasterSecret,
        }
    }
}

/// Where the key material came from.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Origin {
    /// Generated inside the HSM by this service.
    Kms,
    /// Imported by the caller with ImportKeyMaterial.
    External,
}

/// The encryption algorithms.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum EncryptionAlgorithm {
    /// See [`crate::symmetric`].
    SymmetricDefault,
    /// RSAES-OAEP with SHA-1 and MGF1-SHA-1, empty label.
    RsaesOaepSha1,
    /// RSAES-OAEP with SHA-256 and MGF1-SHA-256, empty label.
    RsaesOaepSha256,
}

impl EncryptionAlgorithm {
    /// The AWS name.
    pub fn as_str(self) -> &'static str {
        match self {
            EncryptionAlgorithm::SymmetricDefault => "SYMMETRIC_DEFAULT",
            EncryptionAlgorithm::RsaesOaepSha1 => "RSAES_OAEP_SHA_1",
            EncryptionAlgorithm::RsaesOaepSha256 => "RSAES_OAEP_SHA_256",
        }
    }

    /// The OAEP hash of an RSA algorithm.
    pub fn oaep_hash(self) -> Option<HashAlg> {
        match self {
            EncryptionAlgorithm::SymmetricDefault => None,
            EncryptionAlgorithm::RsaesOaepSha1 => Some(HashAlg::Sha1),
            EncryptionAlgorithm::RsaesOaepSha256 => Some(HashAlg::Sha256),
        }
    }
}

/// The MAC algorithms.
#[derive(Clone, Copy, PartialEq, Hash, Eq, Debug, Serialize, Deserialize)]
pub enum MacAlgorithm {
    /// HMAC with SHA-256.
    HmacSha256,
    /// HMAC with SHA-384.
    HmacSha384,
    /// HMAC with SHA-512.
    HmacSha512,
}

impl MacAlgorithm {
    /// The AWS name.
    pub fn as_str(self) -> &'static str {
        match self {
            MacAlgorithm::HmacSha256 => "HMAC_SHA_256",
            MacAlgorithm::HmacSha384 => "HMAC_SHA_384",
            MacAlgorithm::HmacSha512 => "HMAC_SHA_512",
        }
    }

    /// The hash the HMAC uses.
    pub fn hash(self) -> HashAlg {
        match self {
            MacAlgorithm::HmacSha256 => HashAlg::Sha256,
            MacAlgorithm::HmacSha384 => HashAlg::Sha384,
            MacAlgorithm::HmacSha512 => HashAlg::Sha512,
        }
    }

    /// The lengths imported key material may have, in bytes (AWS's limits).
    pub fn key_lengths(self) -> std::ops::RangeInclusive<usize> {
        match self {
            MacAlgorithm::HmacSha256 => 32..=64,
            MacAlgorithm::HmacSha384 => 48..=128,
            MacAlgorithm::HmacSha512 => 64..=128,
        }
    }
}

/// What the HSM makes for a key version, and how it may be used there.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum KeyMaterial {
    /// SYMMETRIC_DEFAULT: a 256-bit generic secret that only computes HMAC-SHA-256.
    MasterSecret,
    /// An HMAC key (a generic secret; generated ones are as long as the hash's output) that
    /// only computes this MAC.
    HmacSecret(MacAlgorithm),
    /// An RSA key pair whose private half only decrypts (OAEP).
    RsaDecrypt {
        /// Modulus size.
        bits: u32,
    },
    /// An RSA key pair whose private half only signs.
    RsaSign {
        /// Modulus size.
        bits: u32,
    },
    /// A P-256 key pair whose private half only signs (ECDSA).
    EcP256Sign,
}

impl KeyMaterial {
    /// Whether the HSM object is a private key (else a secret key).
    pub fn is_key_pair(self) -> bool {
        matches!(
            self,
            KeyMaterial::RsaDecrypt { .. } | KeyMaterial::RsaSign { .. } | KeyMaterial::EcP256Sign
        )
    }

    /// For secrets the HSM generates: their length in bytes.
    pub fn secret_len(self) -> Option<usize> {
        match self {
            KeyMaterial::MasterSecret => Some(32),
            KeyMaterial::HmacSecret(mac) => Some(mac.hash().output_len()),
            _ => None,
        }
    }
}

/// How imported key material expires. AWS name: ExpirationModelType.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ExpirationModel {
    /// The material is destroyed at `valid_to`; the key becomes PendingImport.
    KeyMaterialExpires,
    /// The material stays until it is deleted.
    KeyMaterialDoesNotExpire,
}

/// What the service knows about an EXTERNAL key's material. Holds no secret.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct ImportState {
    /// Whether the HSM holds material for the key (until it is deleted or expires).
    #[serde(default)]
    pub has_material: bool,
    /// The serial of the last wrapping key made for the key.
    #[serde(default)]
    pub wrapping_serial: u32,
    /// An HMAC the HSM computed with the first material imported, over
    /// [`crate::service::MATERIAL_CHECK_INPUT`]: later imports must give the same value.
    #[serde(default)]
    pub material_check: Option<Vec<u8>>,
    /// When the material in the HSM expires (Unix milliseconds), if it does.
    #[serde(default)]
    pub valid_to_ms: Option<i64>,
    /// The import parameters handed out last, until they are used or expire.
    #[serde(default)]
    pub parameters: Option<ImportParameters>,
}

/// Import parameters: a wrapping key pair in the HSM and the token that names it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ImportParameters {
    /// Numbers the key's wrapping keys, so a new one never reuses an old one's HSM object.
    pub serial: u32,
    /// SHA-256 of the import token.
    pub token_sha256: [u8; 32],
    /// The wrapping algorithm the caller chose.
    pub algorithm: WrappingAlgorithm,
    /// When the parameters expire, in Unix milliseconds.
    pub valid_to_ms: i64,
}

/// How key material is wrapped for import. AWS name: AlgorithmSpec.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum WrappingAlgorithm {
    /// RSAES-OAEP with SHA-256 and MGF1-SHA-256.
    RsaesOaepSha256,
    /// RSAES-OAEP with SHA-1 and MGF1-SHA-1.
    RsaesOaepSha1,
}

impl WrappingAlgorithm {
    /// The AWS name.
    pub fn as_str(self) -> &'static str {
        match self {
            WrappingAlgorithm::RsaesOaepSha256 => "RSAES_OAEP_SHA_256",
            WrappingAlgorithm::RsaesOaepSha1 => "RSAES_OAEP_SHA_1",
        }
    }

    /// The OAEP hash.
    pub fn hash(self) -> HashAlg {
        match self {
            WrappingAlgorithm::RsaesOaepSha256 => HashAlg::Sha256,
            WrappingAlgorithm::RsaesOaepSha1 => HashAlg::Sha1,
        }
    }
}

/// One version of a key: one HSM object.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct KeyVersion {
    /// From 1, increasing.
    pub version: u32,
    /// When the version was created, in Unix milliseconds.
    pub created_at_ms: i64,
    /// How the version came to be.
    #[serde(default)]
    pub source: VersionSource,
    /// Recorded, but its HSM object may not exist yet: never used, and removed with its
    /// object by startup reconciliation if a crash left it so.
    #[serde(default)]
    pub pending: bool,
    /// For key pairs: the public key, as a DER SubjectPublicKeyInfo.
    #[serde(default)]
    pub public_key: Option<Vec<u8>>,
    /// The material, wrapped under a domain key, when it is kept outside the HSM; `None` for
    /// a version whose material is an object on the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapped: Option<WrappedMaterial>,
}

/// A key version's material kept outside the HSM: wrapped inside it under a domain key, and
/// bound to its key, version and kind by an authenticator the HSM computed, so that wrapped
/// bytes moved to another key, version or kind are refused. Holds no secret in the clear.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct WrappedMaterial {
    /// The version of the domain key that wrapped it.
    pub domain_key: u32,
    /// The wrapped material (CKM_AES_KEY_WRAP).
    pub wrapped: Vec<u8>,
    /// The HSM's authenticator over the key id, version, kind, domain key and wrapped bytes,
    /// and, for a key pair made since it is bound, `public_key_sha256`.
    pub tag: Vec<u8>,
    /// For a key pair: the SHA-256 of its public key (the record's DER SubjectPublicKeyInfo),
    /// bound to the material by the tag, so that a public key swapped into the record is
    /// refused. `None` for secrets, and for key pairs made before the binding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_sha256: Option<[u8; 32]>,
}

/// Where new key versions keep their material.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum KeyStorage {
    /// Wrapped under a domain key, in the key's record: the token holds only the domain keys,
    /// whatever the number of keys. Every kind: secrets, key pairs and imported material.
    #[default]
    Wrapped,
    /// One token object per version.
    Token,
}

/// How a key version came to be.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub enum VersionSource {
    /// The key's first version.
    #[default]
    Creation,
    /// A rotation the key's schedule ran.
    Automatic,
    /// A RotateKeyOnDemand call.
    OnDemand,
}

/// `days` if it lies in `range`, else a ValidationException naming `field`.
fn days_in_range(
    field: &str,
    days: u32,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, KmsError> {
    if range.contains(&days) {
        Ok(days)
    } else {
        Err(KmsError::validation(format!(
            "{field} must be {} to {}, got {days}",
            range.start(),
            range.end()
        )))
    }
}

/// `days` whole days after `now_ms`, in Unix milliseconds.
fn days_after(now_ms: i64, days: u32) -> i64 {
    now_ms.saturating_add(i64::from(days) * 86_400_000)
}

/// A scheduled deletion.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PendingDeletion {
    /// When the key will be destroyed, in Unix milliseconds.
    pub deletion_date_ms: i64,
    /// The waiting period that was asked for, 7..=30 days.
    pub window_days: u32,
}

impl PendingDeletion {
    /// The shortest waiting period.
    pub const MIN_DAYS: u32 = 7;
    /// The longest (and default) waiting period.
    pub const MAX_DAYS: u32 = 30;

    /// A deletion `window_days` (default 30) after `now_ms`.
    pub fn new(window_days: Option<u32>, now_ms: i64) -> Result<Self, KmsError> {
        let window_days = days_in_range(
            "pending_window_in_days",
            window_days.unwrap_or(Self::MAX_DAYS),
            Self::MIN_DAYS..=Self::MAX_DAYS,
        )?;
        Ok(PendingDeletion {
            deletion_date_ms: days_after(now_ms, window_days),
            window_days,
        })
    }
}

/// When a key rotates by itself.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RotationSchedule {
    /// Days between rotations, 90..=2560.
    pub period_days: u32,
    /// When the next rotation is due, in Unix milliseconds.
    pub next_rotation_ms: i64,
}

impl RotationSchedule {
    /// The shortest period.
    pub const MIN_DAYS: u32 = 90;
    /// The longest period.
    pub const MAX_DAYS: u32 = 2560;
    /// The period when none is given.
    pub const DEFAULT_DAYS: u32 = 365;

    /// A schedule of `period_days` (default 365) whose first rotation is due one period after
    /// `now_ms`.
    pub fn new(period_days: Option<u32>, now_ms: i64) -> Result<Self, KmsError> {
        let period_days = days_in_range(
            "rotation_period_in_days",
            period_days.unwrap_or(Self::DEFAULT_DAYS),
            Self::MIN_DAYS..=Self::MAX_DAYS,
        )?;
        Ok(RotationSchedule {
            period_days,
            next_rotation_ms: days_after(now_ms, period_days),
        })
    }

    /// The schedule after a rotation at `now_ms`.
    #[must_use]
    pub fn after_rotation(self, now_ms: i64) -> Self {
        RotationSchedule {
            next_rotation_ms: days_after(now_ms, self.period_days),
            ..self
        }
    }
}
