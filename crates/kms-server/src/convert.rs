//! Conversions between the proto messages and the kms-core types.

use std::collections::HashMap;

use kms_core::service::{DataKeyLength, DataKeySpec};
use kms_core::{
    EncryptionAlgorithm, EncryptionContext, KeyRecord, KeySpec, KeyState, KeyUsage, KmsError,
    Origin, VersionSource,
};
use kms_proto::v1 as pb;
use prost_types::Timestamp;

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

pub(crate) fn key_usage(value: i32) -> Result<KeyUsage, KmsError> {
    match pb::KeyUsage::try_from(value) {
        Ok(pb::KeyUsage::Unspecified | pb::KeyUsage::EncryptDecrypt) => {
            Ok(KeyUsage::EncryptDecrypt)
        }
        Err(_) => Err(unknown_enum("key_usage", value, "ENCRYPT_DECRYPT")),
    }
}

pub(crate) fn key_spec(value: i32) -> Result<KeySpec, KmsError> {
    match pb::KeySpec::try_from(value) {
        Ok(pb::KeySpec::Unspecified | pb::KeySpec::SymmetricDefault) => {
            Ok(KeySpec::SymmetricDefault)
        }
        Err(_) => Err(unknown_enum("key_spec", value, "SYMMETRIC_DEFAULT")),
    }
}

pub(crate) fn origin(value: i32) -> Result<Origin, KmsError> {
    match pb::OriginType::try_from(value) {
        Ok(pb::OriginType::Unspecified | pb::OriginType::Kms) => Ok(Origin::Kms),
        Err(_) => Err(unknown_enum("origin", value, "KMS")),
    }
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
    }
}

pub(crate) fn timestamp(millis: i64) -> Timestamp {
    Timestamp {
        seconds: millis.div_euclid(1000),
        // rem_euclid(1000) is in 0..1000, so the product fits an i32.
        nanos: i32::try_from(millis.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

pub(crate) fn key_metadata(record: &KeyRecord) -> pb::KeyMetadata {
    let state = match record.state {
        // Never returned: `Creating` keys are invisible.
        KeyState::Creating | KeyState::Deleted => pb::KeyState::Unspecified,
        KeyState::Enabled => pb::KeyState::Enabled,
        KeyState::Disabled => pb::KeyState::Disabled,
        KeyState::PendingDeletion => pb::KeyState::PendingDeletion,
        KeyState::PendingImport => pb::KeyState::PendingImport,
    };
    pb::KeyMetadata {
        key_id: record.id.to_string(),
        creation_date: Some(timestamp(record.created_at_ms)),
        enabled: record.state == KeyState::Enabled,
        description: record.description.clone(),
        key_usage: match record.usage {
            KeyUsage::EncryptDecrypt => pb::KeyUsage::EncryptDecrypt,
        }
        .into(),
        key_state: state.into(),
        deletion_date: record.deletion.map(|d| timestamp(d.deletion_date_ms)),
        pending_deletion_window_in_days: record.deletion.map(|d| d.window_days),
        key_spec: match record.spec {
            KeySpec::SymmetricDefault => pb::KeySpec::SymmetricDefault,
        }
        .into(),
        origin: match record.origin {
            Origin::Kms => pb::OriginType::Kms,
        }
        .into(),
        encryption_algorithms: record
            .encryption_algorithms()
            .into_iter()
            .map(|a| algorithm(a).into())
            .collect(),
        current_key_version: record.current_version,
        key_rotation_enabled: record.rotation.is_some(),
        rotation_period_in_days: record.rotation.map(|r| r.period_days),
        next_rotation_date: record.rotation.map(|r| timestamp(r.next_rotation_ms)),
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
        assert!(matches!(origin(7), Err(KmsError::Validation(_))));
        assert!(matches!(
            data_key_length(5, None),
            Err(KmsError::Validation(_))
        ));
    }
}
