//! Human and JSON renderings of key metadata.

use clap::ValueEnum;
use kms_client::v1 as pb;
use serde_json::{Value, json};

/// How results are printed.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned text for people.
    Text,
    /// One JSON object per result, for scripts.
    Json,
}

fn strip<'a>(name: &'a str, prefix: &str) -> &'a str {
    name.strip_prefix(prefix).unwrap_or(name)
}

/// AWS name of an algorithm, e.g. `SYMMETRIC_DEFAULT`.
pub fn algorithm_name(algorithm: pb::EncryptionAlgorithm) -> &'static str {
    strip(algorithm.as_str_name(), "ENCRYPTION_ALGORITHM_")
}

/// AWS name of a signing algorithm, e.g. `ECDSA_SHA_256`.
pub fn signing_algorithm_name(algorithm: pb::SigningAlgorithm) -> &'static str {
    strip(algorithm.as_str_name(), "SIGNING_ALGORITHM_")
}

/// AWS name of a MAC algorithm, e.g. `HMAC_SHA_256`.
pub fn mac_algorithm_name(algorithm: pb::MacAlgorithm) -> &'static str {
    strip(algorithm.as_str_name(), "MAC_ALGORITHM_")
}

/// AWS name of a key spec, e.g. `RSA_2048`.
pub fn key_spec_name(spec: pb::KeySpec) -> &'static str {
    strip(spec.as_str_name(), "KEY_SPEC_")
}

/// AWS name of a key usage, e.g. `SIGN_VERIFY`.
pub fn key_usage_name(usage: pb::KeyUsage) -> &'static str {
    strip(usage.as_str_name(), "KEY_USAGE_")
}

/// AWS name of a key state, e.g. `PendingDeletion`.
pub fn state_name(state: pb::KeyState) -> &'static str {
    match state {
        pb::KeyState::Unspecified => "Unknown",
        pb::KeyState::Enabled => "Enabled",
        pb::KeyState::Disabled => "Disabled",
        pb::KeyState::PendingDeletion => "PendingDeletion",
        pb::KeyState::PendingImport => "PendingImport",
    }
}

/// RFC 3339 UTC rendering of a timestamp.
pub fn rfc3339(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    let ts = ts?;
    let days = ts.seconds.div_euclid(86_400);
    let secs = ts.seconds.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    Some(format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    ))
}

/// Year, month, day of a count of days since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Key metadata as JSON, with AWS names for enum values.
pub fn metadata_json(m: &pb::KeyMetadata) -> Value {
    json!({
        "key_id": m.key_id,
        "creation_date": rfc3339(m.creation_date.as_ref()),
        "enabled": m.enabled,
        "description": m.description,
        "key_usage": key_usage_name(m.key_usage()),
        "key_state": state_name(m.key_state()),
        "deletion_date": rfc3339(m.deletion_date.as_ref()),
        "pending_deletion_window_in_days": m.pending_deletion_window_in_days,
        "key_spec": key_spec_name(m.key_spec()),
        "origin": strip(m.origin().as_str_name(), "ORIGIN_TYPE_"),
        "encryption_algorithms": m.encryption_algorithms().map(algorithm_name).collect::<Vec<_>>(),
        "signing_algorithms": m.signing_algorithms().map(signing_algorithm_name).collect::<Vec<_>>(),
        "mac_algorithms": m.mac_algorithms().map(mac_algorithm_name).collect::<Vec<_>>(),
        "expiration_model": match m.expiration_model() {
            pb::ExpirationModel::Unspecified => None,
            model => Some(strip(model.as_str_name(), "EXPIRATION_MODEL_")),
        },
        "valid_to": rfc3339(m.valid_to.as_ref()),
        "current_key_version": m.current_key_version,
        "key_rotation_enabled": m.key_rotation_enabled,
        "rotation_period_in_days": m.rotation_period_in_days,
        "next_rotation_date": rfc3339(m.next_rotation_date.as_ref()),
    })
}

/// Prints key metadata as an aligned table or JSON.
pub fn print_metadata(format: Format, m: &pb::KeyMetadata) {
    let value = metadata_json(m);
    match format {
        Format::Json => println!("{value}"),
        Format::Text => {
            let rows = [
                ("KeyId", "key_id"),
                ("State", "key_state"),
                ("Description", "description"),
                ("Created", "creation_date"),
                ("KeySpec", "key_spec"),
                ("KeyUsage", "key_usage"),
                ("Origin", "origin"),
                ("ExpirationModel", "expiration_model"),
                ("ValidTo", "valid_to"),
                ("CurrentVersion", "current_key_version"),
                ("Rotation", "key_rotation_enabled"),
                ("RotationPeriod", "rotation_period_in_days"),
                ("NextRotation", "next_rotation_date"),
                ("DeletionDate", "deletion_date"),
            ];
            for (label, field) in rows {
                match &value[field] {
                    Value::Null => {}
                    Value::String(s) => println!("{label:<16}{s}"),
                    other => println!("{label:<16}{other}"),
                }
            }
            // Each usage has its own list; the other two are empty.
            let lists = [
                ("EncryptionAlgs", "encryption_algorithms"),
                ("SigningAlgs", "signing_algorithms"),
                ("MacAlgs", "mac_algorithms"),
            ];
            for (label, field) in lists {
                let names: Vec<&str> = value[field]
                    .as_array()
                    .map(|list| list.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if !names.is_empty() {
                    println!("{label:<16}{}", names.join(", "));
                }
            }
        }
    }
}

/// Prints aliases as a table or a JSON object `{"aliases": [...]}`.
pub fn print_aliases(format: Format, aliases: &[pb::AliasListEntry]) {
    match format {
        Format::Json => {
            let list: Vec<Value> = aliases
                .iter()
                .map(|a| {
                    json!({
                        "alias_name": a.alias_name,
                        "target_key_id": a.target_key_id,
                        "creation_date": rfc3339(a.creation_date.as_ref()),
                        "last_updated_date": rfc3339(a.last_updated_date.as_ref()),
                    })
                })
                .collect();
            println!("{}", json!({ "aliases": list }));
        }
        Format::Text => {
            for a in aliases {
                println!("{:<40} {}", a.alias_name, a.target_key_id);
            }
        }
    }
}

/// Prints tags as `KEY<TAB>VALUE` lines or a JSON object `{"tags": [...]}`.
pub fn print_tags(format: Format, tags: &[(String, String)]) {
    match format {
        Format::Json => {
            let list: Vec<Value> = tags
                .iter()
                .map(|(k, v)| json!({ "tag_key": k, "tag_value": v }))
                .collect();
            println!("{}", json!({ "tags": list }));
        }
        Format::Text => {
            for (k, v) in tags {
                println!("{k}\t{v}");
            }
        }
    }
}

/// Prints key metadata with every version: the first (made with the key) and each rotation.
pub fn print_description(format: Format, m: &pb::KeyMetadata, rotations: &[pb::KeyRotation]) {
    let mut versions = vec![json!({
        "key_version": 1,
        "created": rfc3339(m.creation_date.as_ref()),
        "rotation_type": Value::Null,
    })];
    versions.extend(rotations.iter().map(|r| {
        json!({
            "key_version": r.key_version,
            "created": rfc3339(r.rotation_date.as_ref()),
            "rotation_type": strip(r.rotation_type().as_str_name(), "ROTATION_TYPE_"),
        })
    }));
    match format {
        Format::Json => {
            let mut value = metadata_json(m);
            value["versions"] = Value::Array(versions);
            println!("{value}");
        }
        Format::Text => {
            print_metadata(format, m);
            for v in &versions {
                println!(
                    "{:<16}v{} {} {}",
                    "Version",
                    v["key_version"],
                    v["created"].as_str().unwrap_or_default(),
                    v["rotation_type"]
                        .as_str()
                        .unwrap_or("(created with the key)")
                );
            }
        }
    }
}

/// Prints rotations as a table or a JSON object `{"rotations": [...]}`.
pub fn print_rotations(format: Format, rotations: &[pb::KeyRotation]) {
    let rows: Vec<Value> = rotations
        .iter()
        .map(|r| {
            json!({
                "key_id": r.key_id,
                "key_version": r.key_version,
                "rotation_date": rfc3339(r.rotation_date.as_ref()),
                "rotation_type": strip(r.rotation_type().as_str_name(), "ROTATION_TYPE_"),
            })
        })
        .collect();
    match format {
        Format::Json => println!("{}", json!({ "rotations": rows })),
        Format::Text => {
            for r in &rows {
                println!(
                    "v{:<6} {}  {}",
                    r["key_version"],
                    r["rotation_date"].as_str().unwrap_or_default(),
                    r["rotation_type"].as_str().unwrap_or_default()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_render_in_utc() {
        let ts = prost_types::Timestamp {
            seconds: 1_795_000_000,
            nanos: 0,
        };
        assert_eq!(rfc3339(Some(&ts)).as_deref(), Some("2026-11-18T11:06:40Z"));
        let epoch = prost_types::Timestamp::default();
        assert_eq!(
            rfc3339(Some(&epoch)).as_deref(),
            Some("1970-01-01T00:00:00Z")
        );
    }
}
