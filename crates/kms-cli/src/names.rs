//! The AWS names kmsctl takes for key specs, usages, origins and algorithms (clap values).
//!
//! Each is a protobuf enum taken by its name in the proto, less the enum's prefix
//! (`KEY_SPEC_RSA_2048` is `RSA_2048`): the proto is the one source of the names, for the
//! flags kmsctl takes and for what it prints ([`crate::output`]).

use clap::ValueEnum;
use clap::builder::PossibleValue;
use kms_client::v1 as pb;
use kms_core::asymmetric::HashAlg;

/// Defines each `Name(pb::Enum, "PREFIX_") { Variant, Variant = "help", ... }` as a clap value
/// that takes the listed variants of `pb::Enum` by their proto names less `PREFIX_`.
macro_rules! aws_names {
    ($(
        $(#[$doc:meta])*
        $name:ident($pb:ty, $prefix:literal) { $($variant:ident $(= $help:literal)?),+ $(,)? }
    )*) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        pub struct $name(pub $pb);

        impl ValueEnum for $name {
            fn value_variants<'a>() -> &'a [Self] {
                &[$($name(<$pb>::$variant)),+]
            }

            fn to_possible_value(&self) -> Option<PossibleValue> {
                let value = PossibleValue::new(self.0.as_str_name().strip_prefix($prefix)?);
                let help: Option<&'static str> = match self.0 {
                    $(<$pb>::$variant => None $(.or(Some($help)))?,)+
                    _ => None,
                };
                Some(match help {
                    Some(help) => value.help(help),
                    None => value,
                })
            }
        }

        impl From<$name> for $pb {
            fn from(name: $name) -> Self {
                name.0
            }
        }
    )*};
}

aws_names! {
    /// `create-key --key-spec`.
    KeySpecName(pb::KeySpec, "KEY_SPEC_") {
        SymmetricDefault = "A 256-bit secret for the service's envelope encryption (its blob format)",
        Rsa2048, Rsa3072, Rsa4096, EccNistP256, Hmac256, Hmac384, Hmac512,
    }

    /// `create-key --key-usage`.
    KeyUsageName(pb::KeyUsage, "KEY_USAGE_") { EncryptDecrypt, SignVerify, GenerateVerifyMac }

    /// `create-key --origin`.
    OriginName(pb::OriginType, "ORIGIN_TYPE_") {
        Kms = "The HSM generates the key material",
        External = "The key waits in PendingImport for import-key-material",
    }

    /// `encrypt` / `decrypt --encryption-algorithm`.
    EncryptionAlgorithmName(pb::EncryptionAlgorithm, "ENCRYPTION_ALGORITHM_") {
        SymmetricDefault = "Symmetric keys: the service's blob format",
        RsaesOaepSha1 = "RSA ENCRYPT_DECRYPT keys: bare RSAES-OAEP with SHA-1 and MGF1-SHA-1",
        RsaesOaepSha256 = "RSA ENCRYPT_DECRYPT keys: bare RSAES-OAEP with SHA-256 and MGF1-SHA-256",
    }

    /// `sign` / `verify --algorithm`.
    SigningAlgorithmName(pb::SigningAlgorithm, "SIGNING_ALGORITHM_") {
        RsassaPssSha256, RsassaPssSha384, RsassaPssSha512, RsassaPkcs1V15Sha256,
        RsassaPkcs1V15Sha384, RsassaPkcs1V15Sha512, EcdsaSha256,
    }

    /// `generate-mac` / `verify-mac --algorithm`.
    MacAlgorithmName(pb::MacAlgorithm, "MAC_ALGORITHM_") { HmacSha256, HmacSha384, HmacSha512 }

    /// `sign` / `verify --message-type`.
    MessageTypeName(pb::MessageType, "MESSAGE_TYPE_") {
        Raw = "The message itself (1..4096 bytes); the service hashes it",
        Digest = "The message's digest, exactly as long as the algorithm's hash",
    }

    /// `--wrapping-algorithm` of key material import.
    WrappingAlgorithmName(pb::WrappingAlgorithm, "WRAPPING_ALGORITHM_") {
        RsaesOaepSha256 = "RSAES-OAEP with SHA-256 and MGF1-SHA-256",
        RsaesOaepSha1 = "RSAES-OAEP with SHA-1 and MGF1-SHA-1 (for HSMs that cannot unwrap with \
                         SHA-256, SoftHSM2 2.6 among them)",
    }

    /// `--wrapping-key-spec` of key material import.
    WrappingKeySpecName(pb::WrappingKeySpec, "WRAPPING_KEY_SPEC_") { Rsa3072, Rsa4096 }
}

impl EncryptionAlgorithmName {
    /// The RSA algorithm, or `None` for SYMMETRIC_DEFAULT.
    pub fn rsa(self) -> Option<pb::EncryptionAlgorithm> {
        (self.0 != pb::EncryptionAlgorithm::SymmetricDefault).then_some(self.0)
    }
}

impl WrappingAlgorithmName {
    /// The OAEP hash (also the MGF1 hash).
    pub fn hash(self) -> HashAlg {
        match self.0 {
            pb::WrappingAlgorithm::RsaesOaepSha1 => HashAlg::Sha1,
            _ => HashAlg::Sha256,
        }
    }

    /// The name of the hash as OpenSSL's `-pkeyopt rsa_oaep_md:` takes it.
    pub fn openssl_md(self) -> &'static str {
        match self.0 {
            pb::WrappingAlgorithm::RsaesOaepSha1 => "sha1",
            _ => "sha256",
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
