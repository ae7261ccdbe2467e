//! Conversions between the proto messages and the kms-core types: requests into the core's
//! inputs ([`FromRequest`], each field checked and named in its error), the core's answers
//! into responses.

use std::collections::HashMap;

use kms_core::asymmetric::{MessageType, SigningAlgorithm};
use kms_core::key::{ExpirationModel, MacAlgorithm, WrappingAlgorithm};
use kms_core::service::{
    CreateKeyInput, DataKeyLength, DataKeySpec, DomainStatus, ImportKeyMaterialInput,
    ReEncryptInput, RewrapProgress, VerifyInput,
};
use kms_core::tags::NewTags;
use kms_core::{
    EncryptionAlgorithm, EncryptionContext, KeyRecord, KeyRef, KeySpec, KeyState, KeyUsage,
    KmsError, Origin, VersionSource,
};
use kms_proto::v1 as pb;
use prost_types::Timestamp;

/// A request converted into the core's input for its call. (A local trait: `TryFrom` between
/// the proto crate's and the core's types cannot be implemented here.)
pub(crate) trait FromRequest<R>: Sized {
    /// Checks and converts each field; a bad one is a ValidationException naming it.
    fn from_request(request: R) -> Result<Self, KmsError>;
}

impl FromRequest<pb::CreateKeyRequest> for CreateKeyInput {
    fn from_request(req: pb::CreateKeyRequest) -> Result<Self, KmsError> {
        Ok(CreateKeyInput {
            description: req.description,
            usage: key_usage(req.key_usage)?,
            spec: key_spec(req.key_spec)?,
            origin: origin(req.origin)?,
            tags: new_tags(req.tags)?,
            policy: (!req.policy.is_empty()).then_some(req.policy),
            bypass_policy_lockout_safety_check: req.bypass_policy_lockout_safety_check,
        })
    }
}

impl FromRequest<pb::ReEncryptRequest> for ReEncryptInput {
    fn from_request(req: pb::ReEncryptRequest) -> Result<Self, KmsError> {
        Ok(ReEncryptInput {
            source_key: KeyRef::parse_optional(&req.source_key_id, "source_key_id")?,
            destination: KeyRef::parse(&req.destination_key_id, "destination_key_id")?,
            source_context: context(req.source_encryption_context, "source_encryption_context")?,
            destination_context: context(
                req.destination_encryption_context,
                "destination_encryption_context",
            )?,
            ciphertext_blob: req.ciphertext_blob,
        })
    }
}

impl FromRequest<pb::VerifyRequest> for VerifyInput {
    fn from_request(req: pb::VerifyRequest) -> Result<Self, KmsError> {
        Ok(VerifyInput {
            key: KeyRef::parse(&req.key_id, "key_id")?,
            message_type: message_type(req.message_type)?,
            algorithm: signing_algorithm(req.signing_algorithm)?,
            message: req.message,
            signature: req.signature,
        })
    }
}

impl FromRequest<pb::ImportKeyMaterialRequest> for ImportKeyMaterialInput {
    fn from_request(req: pb::ImportKeyMaterialRequest) -> Result<Self, KmsError> {
        Ok(ImportKeyMaterialInput {
            key: KeyRef::parse(&req.key_id, "key_id")?,
            expiration: expiration_model(req.expiration_model)?,
            valid_to_ms: req.valid_to.as_ref().map(millis),
            import_token: req.import_token,
            encrypted_key_material: req.encrypted_key_material,
        })
    }
}

pub(crate) fn new_tags(tags: Vec<pb::Tag>) -> Result<NewTags, KmsError> {
    NewTags::new(tags.into_iter().map(|t| (t.tag_key, t.tag_value)))
}

pub(crate) fn context(
    map: HashMap<String, String>,
    field: &str,
) -> Result<EncryptionContext, KmsError> {
    EncryptionContext::new(map, field)
}

fn unknown_enum(field: &str, value: i32, allowed: &str) -> KmsError {
    KmsError::Validation(format!(
        "{field} {value} is not supported; use one of {allowed}"
    ))
}

/// `None` when unspecified: the key spec decides.
pub(crate) fn key_usage(value: i32) -> Result<Option<KeyUsage>, KmsError> {
    match pb::KeyUsage::try_from(value) {
        Ok(pb::KeyUsage::Unspecified) => Ok(None),
        Ok(pb::KeyUsage::EncryptDecrypt) => Ok(Some(KeyUsage::EncryptDecrypt)),
        Ok(pb::KeyUsage::SignVerify) => Ok(Some(KeyUsage::SignVerify)),
        Ok(pb::KeyUsage::GenerateVerifyMac) => Ok(Some(KeyUsage::GenerateVerifyMac)),
        Err(_) => Err(unknown_enum(
            "key_usage",
            value,
            "ENCRYPT_DECRYPT, SIGN_VERIFY, GENERATE_VERIFY_MAC",
        )),
    }
}

pub(crate) fn key_spec(value: i32) -> Result<KeySpec, KmsError> {
    match pb::KeySpec::try_from(value) {
        Ok(pb::KeySpec::Unspecified | pb::KeySpec::SymmetricDefault) => {
            Ok(KeySpec::SymmetricDefault)
        }
        Ok(pb::KeySpec::Rsa2048) => Ok(KeySpec::Rsa2048),
        Ok(pb::KeySpec::Rsa3072) => Ok(KeySpec::Rsa3072),
        Ok(pb::KeySpec::Rsa4096) => Ok(KeySpec::Rsa4096),
        Ok(pb::KeySpec::EccNistP256) => Ok(KeySpec::EccNistP256),
        Ok(pb::KeySpec::Hmac256) => Ok(KeySpec::Hmac256),
        Ok(pb::KeySpec::Hmac384) => Ok(KeySpec::Hmac384),
        Ok(pb::KeySpec::Hmac512) => Ok(KeySpec::Hmac512),
        Err(_) => Err(unknown_enum(
            "key_spec",
            value,
            "SYMMETRIC_DEFAULT, RSA_2048, RSA_3072, RSA_4096, ECC_NIST_P256, HMAC_256, HMAC_384, \
             HMAC_512",
        )),
    }
}

fn pb_key_spec(spec: KeySpec) -> pb::KeySpec {
    match spec {
        KeySpec::SymmetricDefault => pb::KeySpec::SymmetricDefault,
        KeySpec::Rsa2048 => pb::KeySpec::Rsa2048,
        KeySpec::Rsa3072 => pb::KeySpec::Rsa3072,
        KeySpec::Rsa4096 => pb::KeySpec::Rsa4096,
        KeySpec::EccNistP256 => pb::KeySpec::EccNistP256,
        KeySpec::Hmac256 => pb::KeySpec::Hmac256,
        KeySpec::Hmac384 => pb::KeySpec::Hmac384,
        KeySpec::Hmac512 => pb::KeySpec::Hmac512,
    }
}

fn pb_key_usage(usage: KeyUsage) -> pb::KeyUsage {
    match usage {
        KeyUsage::EncryptDecrypt => pb::KeyUsage::EncryptDecrypt,
        KeyUsage::SignVerify => pb::KeyUsage::SignVerify,
        KeyUsage::GenerateVerifyMac => pb::KeyUsage::GenerateVerifyMac,
    }
}

pub(crate) fn origin(value: i32) -> Result<Origin, KmsError> {
    match pb::OriginType::try_from(value) {
        Ok(pb::OriginType::Unspecified | pb::OriginType::Kms) => Ok(Origin::Kms),
        Ok(pb::OriginType::External) => Ok(Origin::External),
        Err(_) => Err(unknown_enum("origin", value, "KMS, EXTERNAL")),
    }
}

/// `None` when unspecified.
pub(crate) fn encryption_algorithm(value: i32) -> Result<Option<EncryptionAlgorithm>, KmsError> {
    match pb::EncryptionAlgorithm::try_from(value) {
        Ok(pb::EncryptionAlgorithm::Unspecified) => Ok(None),
        Ok(pb::EncryptionAlgorithm::SymmetricDefault) => {
            Ok(Some(EncryptionAlgorithm::SymmetricDefault))
        }
        Ok(pb::EncryptionAlgorithm::RsaesOaepSha1) => Ok(Some(EncryptionAlgorithm::RsaesOaepSha1)),
        Ok(pb::EncryptionAlgorithm::RsaesOaepSha256) => {
            Ok(Some(EncryptionAlgorithm::RsaesOaepSha256))
        }
        Err(_) => Err(unknown_enum(
            "encryption_algorithm",
            value,
            "SYMMETRIC_DEFAULT, RSAES_OAEP_SHA_1, RSAES_OAEP_SHA_256",
        )),
    }
}

const SIGNING_ALGORITHMS: [(pb::SigningAlgorithm, SigningAlgorithm); 7] = [
    (
        pb::SigningAlgorithm::RsassaPssSha256,
        SigningAlgorithm::RsassaPssSha256,
    ),
    (
        pb::SigningAlgorithm::RsassaPssSha384,
        SigningAlgorithm::RsassaPssSha384,
    ),
    (
        pb::SigningAlgorithm::RsassaPssSha512,
        SigningAlgorithm::RsassaPssSha512,
    ),
    (
        pb::SigningAlgorithm::RsassaPkcs1V15Sha256,
        SigningAlgorithm::RsassaPkcs1V15Sha256,
    ),
    (
        pb::SigningAlgorithm::RsassaPkcs1V15Sha384,
        SigningAlgorithm::RsassaPkcs1V15Sha384,
    ),
    (
        pb::SigningAlgorithm::RsassaPkcs1V15Sha512,
        SigningAlgorithm::RsassaPkcs1V15Sha512,
    ),
    (
        pb::SigningAlgorithm::EcdsaSha256,
        SigningAlgorithm::EcdsaSha256,
    ),
];

/// Required: unspecified is a ValidationException.
pub(crate) fn signing_algorithm(value: i32) -> Result<SigningAlgorithm, KmsError> {
    SIGNING_ALGORITHMS
        .iter()
        .find(|(pb, _)| *pb as i32 == value)
        .map(|(_, core)| *core)
        .ok_or_else(|| {
            let names: Vec<&str> = SIGNING_ALGORITHMS.iter().map(|(_, a)| a.as_str()).collect();
            KmsError::Validation(format!(
                "signing_algorithm is required; use one of {}",
                names.join(", ")
            ))
        })
}

pub(crate) fn pb_signing_algorithm(algorithm: SigningAlgorithm) -> pb::SigningAlgorithm {
    SIGNING_ALGORITHMS
        .iter()
        .find(|(_, core)| *core == algorithm)
        .map_or(pb::SigningAlgorithm::Unspecified, |(pb, _)| *pb)
}

pub(crate) fn message_type(value: i32) -> Result<MessageType, KmsError> {
    match pb::MessageType::try_from(value) {
        Ok(pb::MessageType::Unspecified | pb::MessageType::Raw) => Ok(MessageType::Raw),
        Ok(pb::MessageType::Digest) => Ok(MessageType::Digest),
        Err(_) => Err(unknown_enum("message_type", value, "RAW, DIGEST")),
    }
}

/// Required: unspecified is a ValidationException.
pub(crate) fn mac_algorithm(value: i32) -> Result<MacAlgorithm, KmsError> {
    match pb::MacAlgorithm::try_from(value) {
        Ok(pb::MacAlgorithm::HmacSha256) => Ok(MacAlgorithm::HmacSha256),
        Ok(pb::MacAlgorithm::HmacSha384) => Ok(MacAlgorithm::HmacSha384),
        Ok(pb::MacAlgorithm::HmacSha512) => Ok(MacAlgorithm::HmacSha512),
        Ok(pb::MacAlgorithm::Unspecified) | Err(_) => Err(KmsError::Validation(
            "mac_algorithm is required; use one of HMAC_SHA_256, HMAC_SHA_384, HMAC_SHA_512"
                .to_owned(),
        )),
    }
}

pub(crate) fn pb_mac_algorithm(algorithm: MacAlgorithm) -> pb::MacAlgorithm {
    match algorithm {
        MacAlgorithm::HmacSha256 => pb::MacAlgorithm::HmacSha256,
        MacAlgorithm::HmacSha384 => pb::MacAlgorithm::HmacSha384,
        MacAlgorithm::HmacSha512 => pb::MacAlgorithm::HmacSha512,
    }
}

pub(crate) fn wrapping_algorithm(value: i32) -> Result<WrappingAlgorithm, KmsError> {
    match pb::WrappingAlgorithm::try_from(value) {
        Ok(pb::WrappingAlgorithm::RsaesOaepSha256) => Ok(WrappingAlgorithm::RsaesOaepSha256),
        Ok(pb::WrappingAlgorithm::RsaesOaepSha1) => Ok(WrappingAlgorithm::RsaesOaepSha1),
        Ok(pb::WrappingAlgorithm::Unspecified) | Err(_) => Err(KmsError::Validation(
            "wrapping_algorithm is required; use RSAES_OAEP_SHA_256 or RSAES_OAEP_SHA_1".to_owned(),
        )),
    }
}

/// The modulus size; unspecified is RSA_4096.
pub(crate) fn wrapping_key_bits(value: i32) -> Result<u32, KmsError> {
    match pb::WrappingKeySpec::try_from(value) {
        Ok(pb::WrappingKeySpec::Rsa3072) => Ok(3072),
        Ok(pb::WrappingKeySpec::Unspecified | pb::WrappingKeySpec::Rsa4096) => Ok(4096),
        Err(_) => Err(unknown_enum(
            "wrapping_key_spec",
            value,
            "RSA_3072, RSA_4096",
        )),
    }
}

pub(crate) fn expiration_model(value: i32) -> Result<ExpirationModel, KmsError> {
    match pb::ExpirationModel::try_from(value) {
        Ok(pb::ExpirationModel::KeyMaterialExpires) => Ok(ExpirationModel::KeyMaterialExpires),
        Ok(pb::ExpirationModel::Unspecified | pb::ExpirationModel::KeyMaterialDoesNotExpire) => {
            Ok(ExpirationModel::KeyMaterialDoesNotExpire)
        }
        Err(_) => Err(unknown_enum(
            "expiration_model",
            value,
            "KEY_MATERIAL_EXPIRES, KEY_MATERIAL_DOES_NOT_EXPIRE",
        )),
    }
}

/// Unix milliseconds of a timestamp (its nanoseconds rounded down to milliseconds).
pub(crate) fn millis(timestamp: &Timestamp) -> i64 {
    timestamp
        .seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(timestamp.nanos.clamp(0, 999_999_999) / 1_000_000))
}

pub(crate) fn data_key_length(
    spec: i32,
    number_of_bytes: Option<u32>,
) -> Result<DataKeyLength, KmsError> {
    let spec = match pb::DataKeySpec::try_from(spec) {
        Ok(pb::DataKeySpec::Unspecified) => None,
        Ok(pb::DataKeySpec::Aes128) => Some(DataKeySpec::Aes128),
        Ok(pb::DataKeySpec::Aes256) => Some(DataKeySpec::Aes256),
        Err(_) => return Err(unknown_enum("key_spec", spec, "AES_128, AES_256")),
    };
    DataKeyLength::new(spec, number_of_bytes)
}

pub(crate) fn rotation_type(source: VersionSource) -> pb::RotationType {
    match source {
        VersionSource::Creation => pb::RotationType::Unspecified,
        VersionSource::Automatic => pb::RotationType::Automatic,
        VersionSource::OnDemand => pb::RotationType::OnDemand,
    }
}

pub(crate) fn algorithm(algorithm: EncryptionAlgorithm) -> pb::EncryptionAlgorithm {
    match algorithm {
        EncryptionAlgorithm::SymmetricDefault => pb::EncryptionAlgorithm::SymmetricDefault,
        EncryptionAlgorithm::RsaesOaepSha1 => pb::EncryptionAlgorithm::RsaesOaepSha1,
        EncryptionAlgorithm::RsaesOaepSha256 => pb::EncryptionAlgorithm::RsaesOaepSha256,
    }
}

/// Where domain key rotation stands, for GetDomainKeyStatus and RotateDomainKey.
pub(crate) fn domain_status(status: DomainStatus) -> pb::DomainKeyStatus {
    let RewrapProgress {
        running,
        finished,
        keys_scanned,
        versions_rewrapped,
        versions_left,
        destroyed,
        error,
    } = status.rewrap;
    pb::DomainKeyStatus {
        current_version: status.current,
        rewrappable: status.rewrappable,
        rewrap_running: running,
        rewrap_finished: finished,
        keys_scanned,
        key_count: status.key_count,
        versions_rewrapped,
        versions_left,
        destroyed_versions: destroyed,
        error: error.unwrap_or_default(),
        instance_id: status.instance_id,
    }
}

pub(crate) fn timestamp(millis: i64) -> Timestamp {
    Timestamp {
        seconds: millis.div_euclid(1000),
        // rem_euclid(1000) is in 0..1000, so the product fits an i32.
        nanos: i32::try_from(millis.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

pub(crate) fn key_state(state: KeyState) -> pb::KeyState {
    match state {
        // Never returned: `Creating` keys are invisible.
        KeyState::Creating | KeyState::Deleted => pb::KeyState::Unspecified,
        KeyState::Enabled => pb::KeyState::Enabled,
        KeyState::Disabled => pb::KeyState::Disabled,
        KeyState::PendingDeletion => pb::KeyState::PendingDeletion,
        KeyState::PendingImport => pb::KeyState::PendingImport,
    }
}

pub(crate) fn key_metadata(record: &KeyRecord) -> pb::KeyMetadata {
    pb::KeyMetadata {
        key_id: record.id().to_string(),
        creation_date: Some(timestamp(record.created_at_ms())),
        enabled: record.state() == KeyState::Enabled,
        description: record.description().to_owned(),
        key_usage: pb_key_usage(record.usage()).into(),
        key_state: key_state(record.state()).into(),
        deletion_date: record.deletion().map(|d| timestamp(d.deletion_date_ms)),
        pending_deletion_window_in_days: record.deletion().map(|d| d.window_days),
        key_spec: pb_key_spec(record.spec()).into(),
        origin: match record.origin() {
            Origin::Kms => pb::OriginType::Kms,
            Origin::External => pb::OriginType::External,
        }
        .into(),
        encryption_algorithms: record
            .encryption_algorithms()
            .into_iter()
            .map(|a| algorithm(a).into())
            .collect(),
        current_key_version: record.current_version(),
        key_rotation_enabled: record.rotation().is_some(),
        rotation_period_in_days: record.rotation().map(|r| r.period_days),
        next_rotation_date: record.rotation().map(|r| timestamp(r.next_rotation_ms)),
        signing_algorithms: record
            .signing_algorithms()
            .into_iter()
            .map(|a| pb_signing_algorithm(a).into())
            .collect(),
        mac_algorithms: record
            .mac_algorithms()
            .into_iter()
            .map(|a| pb_mac_algorithm(a).into())
            .collect(),
        expiration_model: match record.import() {
            Some(import) if record.has_material() => if import.valid_to_ms.is_some() {
                pb::ExpirationModel::KeyMaterialExpires
            } else {
                pb::ExpirationModel::KeyMaterialDoesNotExpire
            }
            .into(),
            _ => pb::ExpirationModel::Unspecified.into(),
        },
        valid_to: record.import().and_then(|i| i.valid_to_ms).map(timestamp),
    }
}

pub(crate) fn public_key(info: kms_core::service::PublicKeyInfo) -> pb::GetPublicKeyResponse {
    let record = &info.record;
    pb::GetPublicKeyResponse {
        key_id: record.id().to_string(),
        public_key: info.public_key,
        key_spec: pb_key_spec(record.spec()).into(),
        key_usage: pb_key_usage(record.usage()).into(),
        encryption_algorithms: record
            .encryption_algorithms()
            .into_iter()
            .map(|a| algorithm(a).into())
            .collect(),
        signing_algorithms: record
            .signing_algorithms()
            .into_iter()
            .map(|a| pb_signing_algorithm(a).into())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_split_into_seconds_and_nanos() {
        assert_eq!(
            timestamp(1_500),
            Timestamp {
                seconds: 1,
                nanos: 500_000_000
            }
        );
        assert_eq!(
            timestamp(-1),
            Timestamp {
                seconds: -1,
                nanos: 999_000_000
            }
        );
    }

    #[test]
    fn unknown_enum_values_are_validation_errors() {
        assert!(matches!(key_spec(99), Err(KmsError::Validation(_))));
        assert!(matches!(key_usage(-1), Err(KmsError::Validation(_))));
        assert!(matches!(signing_algorithm(0), Err(KmsError::Validation(_))));
        assert!(matches!(mac_algorithm(0), Err(KmsError::Validation(_))));
        assert!(matches!(
            wrapping_algorithm(0),
            Err(KmsError::Validation(_))
        ));
        assert!(matches!(
            encryption_algorithm(42),
            Err(KmsError::Validation(_))
        ));
        assert!(matches!(origin(7), Err(KmsError::Validation(_))));
        assert!(matches!(
            data_key_length(5, None),
            Err(KmsError::Validation(_))
        ));
    }
}
