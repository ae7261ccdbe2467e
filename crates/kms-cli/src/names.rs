//! The AWS names kmsctl takes for key specs, usages, origins and algorithms (clap values), and
//! the protobuf enum each stands for.

use clap::ValueEnum;
use kms_client::v1 as pb;
use kms_core::asymmetric::HashAlg;

/// `create-key --key-spec`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeySpecName {
    /// A 256-bit secret for the service's envelope encryption (its blob format).
    #[value(name = "SYMMETRIC_DEFAULT")]
    SymmetricDefault,
    #[value(name = "RSA_2048")]
    Rsa2048,
    #[value(name = "RSA_3072")]
    Rsa3072,
    #[value(name = "RSA_4096")]
    Rsa4096,
    #[value(name = "ECC_NIST_P256")]
    EccNistP256,
    #[value(name = "HMAC_256")]
    Hmac256,
    #[value(name = "HMAC_384")]
    Hmac384,
    #[value(name = "HMAC_512")]
    Hmac512,
}

impl From<KeySpecName> for pb::KeySpec {
    fn from(name: KeySpecName) -> Self {
        match name {
            KeySpecName::SymmetricDefault => pb::KeySpec::SymmetricDefault,
            KeySpecName::Rsa2048 => pb::KeySpec::Rsa2048,
            KeySpecName::Rsa3072 => pb::KeySpec::Rsa3072,
            KeySpecName::Rsa4096 => pb::KeySpec::Rsa4096,
            KeySpecName::EccNistP256 => pb::KeySpec::EccNistP256,
            KeySpecName::Hmac256 => pb::KeySpec::Hmac256,
            KeySpecName::Hmac384 => pb::KeySpec::Hmac384,
            KeySpecName::Hmac512 => pb::KeySpec::Hmac512,
        }
    }
}

/// `create-key --key-usage`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyUsageName {
    #[value(name = "ENCRYPT_DECRYPT")]
    EncryptDecrypt,
    #[value(name = "SIGN_VERIFY")]
    SignVerify,
    #[value(name = "GENERATE_VERIFY_MAC")]
    GenerateVerifyMac,
}

impl From<KeyUsageName> for pb::KeyUsage {
    fn from(name: KeyUsageName) -> Self {
        match name {
            KeyUsageName::EncryptDecrypt => pb::KeyUsage::EncryptDecrypt,
            KeyUsageName::SignVerify => pb::KeyUsage::SignVerify,
            KeyUsageName::GenerateVerifyMac => pb::KeyUsage::GenerateVerifyMac,
        }
    }
}

/// `create-key --origin`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OriginName {
    /// The HSM generates the key material.
    #[value(name = "KMS")]
    Kms,
    /// The key waits in PendingImport for import-key-material.
    #[value(name = "EXTERNAL")]
    External,
}

impl From<OriginName> for pb::OriginType {
    fn from(name: OriginName) -> Self {
        match name {
            OriginName::Kms => pb::OriginType::Kms,
            OriginName::External => pb::OriginType::External,
        }
    }
}

/// `encrypt` / `decrypt --encryption-algorithm`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EncryptionAlgorithmName {
    /// Symmetric keys: the service's blob format.
    #[value(name = "SYMMETRIC_DEFAULT")]
    SymmetricDefault,
    /// RSA ENCRYPT_DECRYPT keys: bare RSAES-OAEP with SHA-1 and MGF1-SHA-1.
    #[value(name = "RSAES_OAEP_SHA_1")]
    RsaesOaepSha1,
    /// RSA ENCRYPT_DECRYPT keys: bare RSAES-OAEP with SHA-256 and MGF1-SHA-256.
    #[value(name = "RSAES_OAEP_SHA_256")]
    RsaesOaepSha256,
}

impl EncryptionAlgorithmName {
    /// The RSA algorithm, or `None` for SYMMETRIC_DEFAULT.
    pub fn rsa(self) -> Option<pb::EncryptionAlgorithm> {
        match self {
            EncryptionAlgorithmName::SymmetricDefault => None,
            EncryptionAlgorithmName::RsaesOaepSha1 => Some(pb::EncryptionAlgorithm::RsaesOaepSha1),
            EncryptionAlgorithmName::RsaesOaepSha256 => {
                Some(pb::EncryptionAlgorithm::RsaesOaepSha256)
            }
        }
    }
}

/// `sign` / `verify --algorithm`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SigningAlgorithmName {
    #[value(name = "RSASSA_PSS_SHA_256")]
    RsassaPssSha256,
    #[value(name = "RSASSA_PSS_SHA_384")]
    RsassaPssSha384,
    #[value(name = "RSASSA_PSS_SHA_512")]
    RsassaPssSha512,
    #[value(name = "RSASSA_PKCS1_V1_5_SHA_256")]
    RsassaPkcs1V15Sha256,
    #[value(name = "RSASSA_PKCS1_V1_5_SHA_384")]
    RsassaPkcs1V15Sha384,
    #[value(name = "RSASSA_PKCS1_V1_5_SHA_512")]
    RsassaPkcs1V15Sha512,
    #[value(name = "ECDSA_SHA_256")]
    EcdsaSha256,
}

impl From<SigningAlgorithmName> for pb::SigningAlgorithm {
    fn from(name: SigningAlgorithmName) -> Self {
        match name {
            SigningAlgorithmName::RsassaPssSha256 => pb::SigningAlgorithm::RsassaPssSha256,
            SigningAlgorithmName::RsassaPssSha384 => pb::SigningAlgorithm::RsassaPssSha384,
            SigningAlgorithmName::RsassaPssSha512 => pb::SigningAlgorithm::RsassaPssSha512,
            SigningAlgorithmName::RsassaPkcs1V15Sha256 => {
                pb::SigningAlgorithm::RsassaPkcs1V15Sha256
            }
            SigningAlgorithmName::RsassaPkcs1V15Sha384 => {
                pb::SigningAlgorithm::RsassaPkcs1V15Sha384
            }
            SigningAlgorithmName::RsassaPkcs1V15Sha512 => {
                pb::SigningAlgorithm::RsassaPkcs1V15Sha512
            }
            SigningAlgorithmName::EcdsaSha256 => pb::SigningAlgorithm::EcdsaSha256,
        }
    }
}

/// `generate-mac` / `verify-mac --algorithm`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MacAlgorithmName {
    #[value(name = "HMAC_SHA_256")]
    HmacSha256,
    #[value(name = "HMAC_SHA_384")]
    HmacSha384,
    #[value(name = "HMAC_SHA_512")]
    HmacSha512,
}

impl From<MacAlgorithmName> for pb::MacAlgorithm {
    fn from(name: MacAlgorithmName) -> Self {
        match name {
            MacAlgorithmName::HmacSha256 => pb::MacAlgorithm::HmacSha256,
            MacAlgorithmName::HmacSha384 => pb::MacAlgorithm::HmacSha384,
            MacAlgorithmName::HmacSha512 => pb::MacAlgorithm::HmacSha512,
        }
    }
}

/// `sign` / `verify --message-type`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MessageTypeName {
    /// The message itself (1..4096 bytes); the service hashes it.
    #[value(name = "RAW")]
    Raw,
    /// The message's digest, exactly as long as the algorithm's hash.
    #[value(name = "DIGEST")]
    Digest,
}

impl From<MessageTypeName> for pb::MessageType {
    fn from(name: MessageTypeName) -> Self {
        match name {
            MessageTypeName::Raw => pb::MessageType::Raw,
            MessageTypeName::Digest => pb::MessageType::Digest,
        }
    }
}

/// `--wrapping-algorithm` of key material import.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WrappingAlgorithmName {
    /// RSAES-OAEP with SHA-256 and MGF1-SHA-256.
    #[value(name = "RSAES_OAEP_SHA_256")]
    RsaesOaepSha256,
    /// RSAES-OAEP with SHA-1 and MGF1-SHA-1 (for HSMs that cannot unwrap with SHA-256,
    /// SoftHSM2 2.6 among them).
    #[value(name = "RSAES_OAEP_SHA_1")]
    RsaesOaepSha1,
}

impl WrappingAlgorithmName {
    /// The OAEP hash (also the MGF1 hash).
    pub fn hash(self) -> HashAlg {
        match self {
            WrappingAlgorithmName::RsaesOaepSha256 => HashAlg::Sha256,
            WrappingAlgorithmName::RsaesOaepSha1 => HashAlg::Sha1,
        }
    }

    /// The name of the hash as OpenSSL's `-pkeyopt rsa_oaep_md:` takes it.
    pub fn openssl_md(self) -> &'static str {
        match self {
            WrappingAlgorithmName::RsaesOaepSha256 => "sha256",
            WrappingAlgorithmName::RsaesOaepSha1 => "sha1",
        }
    }
}

impl From<WrappingAlgorithmName> for pb::WrappingAlgorithm {
    fn from(name: WrappingAlgorithmName) -> Self {
        match name {
            WrappingAlgorithmName::RsaesOaepSha256 => pb::WrappingAlgorithm::RsaesOaepSha256,
            WrappingAlgorithmName::RsaesOaepSha1 => pb::WrappingAlgorithm::RsaesOaepSha1,
        }
    }
}

/// `--wrapping-key-spec` of key material import.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WrappingKeySpecName {
    #[value(name = "RSA_3072")]
    Rsa3072,
    #[value(name = "RSA_4096")]
    Rsa4096,
}

impl From<WrappingKeySpecName> for pb::WrappingKeySpec {
    fn from(name: WrappingKeySpecName) -> Self {
        match name {
            WrappingKeySpecName::Rsa3072 => pb::WrappingKeySpec::Rsa3072,
            WrappingKeySpecName::Rsa4096 => pb::WrappingKeySpec::Rsa4096,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output;

    /// The name clap takes for `value`.
    fn flag<T: ValueEnum>(value: &T) -> String {
        value
            .to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }

    #[test]
    fn flag_values_are_the_names_kmsctl_prints() {
        // A script can feed one command's output to the next command's flag.
        for v in KeySpecName::value_variants() {
            assert_eq!(flag(v), output::key_spec_name((*v).into()));
        }
        for v in KeyUsageName::value_variants() {
            assert_eq!(flag(v), output::key_usage_name((*v).into()));
        }
        for v in SigningAlgorithmName::value_variants() {
            assert_eq!(flag(v), output::signing_algorithm_name((*v).into()));
        }
        for v in MacAlgorithmName::value_variants() {
            assert_eq!(flag(v), output::mac_algorithm_name((*v).into()));
        }
        for v in EncryptionAlgorithmName::value_variants() {
            let algorithm = v.rsa().unwrap_or(pb::EncryptionAlgorithm::SymmetricDefault);
            assert_eq!(flag(v), output::algorithm_name(algorithm));
        }
        for v in OriginName::value_variants() {
            let origin: pb::OriginType = (*v).into();
            assert_eq!(
                Some(flag(v).as_str()),
                origin.as_str_name().strip_prefix("ORIGIN_TYPE_")
            );
        }
        for v in WrappingAlgorithmName::value_variants() {
            let algorithm: pb::WrappingAlgorithm = (*v).into();
            let name = algorithm.as_str_name().strip_prefix("WRAPPING_ALGORITHM_");
            assert_eq!(Some(flag(v).as_str()), name);
        }
    }
}
