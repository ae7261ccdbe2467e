//! The state machine, move by move: what each transition allows and what it refuses with.

use super::*;
use crate::key::WrappingAlgorithm;

fn ok<T>(r: Result<T, KmsError>) -> T {
    r.unwrap_or_else(|e| panic!("unexpected {}: {e}", e.reason()))
}

fn creating(origin: Origin) -> KeyRecord {
    KeyRecord::new(
        KeyId::random(),
        1_000,
        KeySpec::SymmetricDefault,
        KeyUsage::EncryptDecrypt,
        origin,
    )
}

fn enabled() -> KeyRecord {
    let mut record = creating(Origin::Kms);
    ok(record.created(None, None));
    record
}

fn invalid_state<T: std::fmt::Debug>(r: Result<T, KmsError>) -> String {
    match r {
        Err(KmsError::InvalidState(message)) => message,
        other => panic!("expected KMSInvalidStateException, got {other:?}"),
    }
}

const DAY: i64 = 86_400_000;

#[test]
fn a_key_is_created_once_and_only_an_external_key_awaits_import() {
    let mut record = creating(Origin::Kms);
    assert!(!record.is_visible());
    assert!(record.await_import().is_err(), "a KMS key has material");
    ok(record.created(Some(vec![1, 2]), None));
    assert_eq!(record.state(), KeyState::Enabled);
    assert_eq!(
        record.versions()[0].public_key.as_deref(),
        Some(&[1, 2][..])
    );
    invalid_state(record.created(None, None));

    let mut external = creating(Origin::External);
    invalid_state(external.created(None, None));
    ok(external.await_import());
    assert_eq!(external.state(), KeyState::PendingImport);
    assert!(!external.has_material());
}

#[test]
fn enable_and_disable_move_only_between_enabled_and_disabled() {
    let mut record = enabled();
    ok(record.disable());
    ok(record.disable());
    assert_eq!(record.state(), KeyState::Disabled);
    ok(record.enable());
    assert_eq!(record.state(), KeyState::Enabled);
    ok(record.schedule_deletion(ok(PendingDeletion::new(Some(7), 0))));
    let message = invalid_state(record.enable());
    assert!(
        message.contains("PendingDeletion and cannot be enabled"),
        "{message}"
    );
    invalid_state(record.disable());
}

#[test]
fn deletion_is_scheduled_once_cancelled_until_due_and_then_final() {
    let mut record = enabled();
    ok(record.schedule_deletion(ok(PendingDeletion::new(Some(7), 0))));
    invalid_state(record.schedule_deletion(ok(PendingDeletion::new(Some(7), 0))));
    invalid_state(record.set_description("x".into()));
    invalid_state(record.tag(NewTags::default()));
    invalid_state(record.untag(&[]));
    assert!(!record.deletion_due(7 * DAY - 1));
    assert!(record.deletion_due(7 * DAY));
    let message = invalid_state(record.cancel_deletion(7 * DAY));
    assert!(message.contains("being deleted"), "{message}");
    ok(record.cancel_deletion(DAY));
    assert_eq!(record.state(), KeyState::Disabled);
    assert_eq!(record.deletion(), None);
    invalid_state(record.cancel_deletion(DAY));
    invalid_state(record.mark_deleted());

    ok(record.schedule_deletion(ok(PendingDeletion::new(Some(7), 0))));
    ok(record.mark_deleted());
    assert_eq!(record.state(), KeyState::Deleted);
    assert!(!record.is_visible());
    assert_eq!(record.policy_text(), None);
    invalid_state(record.schedule_deletion(ok(PendingDeletion::new(Some(7), 0))));
}

#[test]
fn a_rotation_is_pending_until_finished_one_at_a_time_and_capped_on_demand() {
    let mut record = enabled();
    let next = ok(record.begin_rotation(VersionSource::OnDemand, 5));
    assert_eq!(next, 2);
    assert_eq!(
        record.current_version(),
        1,
        "pending until its HSM object exists"
    );
    assert_eq!(record.version_ref(2), None);
    invalid_state(record.begin_rotation(VersionSource::OnDemand, 5));
    ok(record.finish_rotation(2, None, 6));
    assert_eq!(record.current_version(), 2);
    assert!(record.version_ref(2).is_some());
    invalid_state(record.finish_rotation(2, None, 6));

    let next = ok(record.begin_rotation(VersionSource::OnDemand, 7));
    record.abandon_rotation(next);
    assert_eq!(record.versions().len(), 2);
    for _ in 1..KeyRecord::MAX_ON_DEMAND_ROTATIONS {
        let next = ok(record.begin_rotation(VersionSource::OnDemand, 8));
        ok(record.finish_rotation(next, None, 8));
    }
    assert!(matches!(
        record.begin_rotation(VersionSource::OnDemand, 9),
        Err(KmsError::LimitExceeded(_))
    ));
    let next = ok(record.begin_rotation(VersionSource::Automatic, 9));
    assert_eq!(record.drop_pending_versions(), [next]);

    ok(record.disable());
    assert!(matches!(
        record.begin_rotation(VersionSource::Automatic, 10),
        Err(KmsError::Disabled(_))
    ));
    let mut hmac = KeyRecord::new(
        KeyId::random(),
        0,
        KeySpec::Hmac256,
        KeyUsage::GenerateVerifyMac,
        Origin::Kms,
    );
    ok(hmac.created(None, None));
    assert!(matches!(
        hmac.begin_rotation(VersionSource::OnDemand, 0),
        Err(KmsError::UnsupportedOperation(_))
    ));
}

#[test]
fn an_automatic_rotation_moves_the_schedule_on() {
    let mut record = enabled();
    ok(record.enable_rotation(ok(RotationSchedule::new(Some(90), 0))));
    assert!(record.rotation_due(90 * DAY));
    let next = ok(record.begin_rotation(VersionSource::Automatic, 90 * DAY));
    ok(record.finish_rotation(next, None, 91 * DAY));
    assert_eq!(
        record.rotation().map(|r| r.next_rotation_ms),
        Some(181 * DAY)
    );
    assert!(!record.rotation_due(180 * DAY));
}

fn parameters(serial: u32) -> ImportParameters {
    ImportParameters {
        serial,
        token_sha256: [0; 32],
        algorithm: WrappingAlgorithm::RsaesOaepSha256,
        valid_to_ms: 10,
    }
}

#[test]
fn imported_material_moves_an_external_key_and_may_never_change() {
    let mut record = creating(Origin::External);
    ok(record.await_import());
    let first = ok(record.reserve_wrapping_serial());
    let second = ok(record.reserve_wrapping_serial());
    assert_eq!((first, second), (1, 2));
    ok(record.issue_import_parameters(parameters(second)));
    let message = invalid_state(record.issue_import_parameters(parameters(first)));
    assert!(message.contains("newer import parameters"), "{message}");
    assert_eq!(record.import_parameters().map(|p| p.serial), Some(2));

    ok(record.material_imported(b"check", Some(100), None));
    assert_eq!(record.state(), KeyState::Enabled);
    assert_eq!(record.import_parameters(), None, "used up");
    invalid_state(record.material_imported(b"check", None, None));
    assert!(record.material_expired(100));
    assert_eq!(
        record.clone().as_seen_at(100).state(),
        KeyState::PendingImport
    );
    assert_eq!(record.clone().as_seen_at(99).state(), KeyState::Enabled);

    ok(record.forget_material());
    assert_eq!(record.state(), KeyState::PendingImport);
    assert!(matches!(
        record.material_imported(b"other", None, None),
        Err(KmsError::IncorrectKeyMaterial(_))
    ));
    ok(record.material_imported(b"check", None, None));

    let mut generated = enabled();
    assert!(matches!(
        generated.reserve_wrapping_serial(),
        Err(KmsError::UnsupportedOperation(_))
    ));
    assert!(matches!(
        generated.forget_material(),
        Err(KmsError::UnsupportedOperation(_))
    ));
}

#[test]
fn the_stored_form_keeps_its_field_names_and_the_policy_as_text() {
    let mut record = enabled();
    let policy = KeyPolicy::default_for("app");
    record.set_policy(&policy);
    let json = serde_json::to_value(&record).unwrap_or_else(|e| panic!("{e}"));
    for field in [
        "id",
        "created_at_ms",
        "description",
        "usage",
        "spec",
        "origin",
        "state",
        "current_version",
        "versions",
        "tags",
        "rotation",
        "deletion",
        "policy",
        "import",
    ] {
        assert!(json.get(field).is_some(), "field {field}");
    }
    assert_eq!(json["policy"].as_str(), Some(policy.text()));
    let back: KeyRecord = serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, record);
}
