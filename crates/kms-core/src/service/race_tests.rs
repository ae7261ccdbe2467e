//! Adversarial races and crashes on one key: a call that runs its HSM work without the write
//! lock (rotation, GetParametersForImport, a due deletion) against the calls that may run
//! meanwhile. Each test holds the slow call inside its HSM call with [`FaultyKeyStore`]'s
//! delay, makes the other moves, then checks the record and the HSM agree.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{CreateKeyInput, Kms};
use crate::error::KmsError;
use crate::hsm::{KeyStore, KeyVersionRef, WrappingKeyRef};
use crate::ids::KeyRef;
use crate::key::{KeySpec, KeyState, KeyStorage, Origin, WrappingAlgorithm};
use crate::store::MetadataStore;
use crate::testing::{
    Fault, FaultyKeyStore, ManualClock, MemoryStore, SoftKeyStore, admin, authorization,
};

const DAY: i64 = 86_400_000;

/// A service whose HSM runs every call `pick` names through `fault`, over a soft HSM the
/// test can inspect, with a clock the test sets. Versions are token objects, whose life
/// alongside the records is what these races are about.
struct Rig {
    kms: Arc<Kms>,
    store: Arc<MemoryStore>,
    soft: Arc<SoftKeyStore>,
    hsm: Arc<FaultyKeyStore>,
    clock: Arc<ManualClock>,
}

fn rig(pick: fn(&str) -> bool, fault: Fault) -> Rig {
    rig_every(pick, fault, 1)
}

/// As [`rig`], the fault applied to every `every`-th call `pick` names only.
fn rig_every(pick: fn(&str) -> bool, fault: Fault, every: u64) -> Rig {
    let store = Arc::new(MemoryStore::default());
    let soft = Arc::new(SoftKeyStore::default());
    let clock = Arc::new(ManualClock::default());
    clock.set_millis(1_000 * DAY);
    let hsm = Arc::new(FaultyKeyStore::new(
        soft.clone() as Arc<dyn KeyStore>,
        pick,
        fault,
        every,
    ));
    let kms = Arc::new(
        Kms::new(store.clone(), hsm.clone(), clock.clone())
            .with_authorization(authorization())
            .with_key_storage(KeyStorage::Token),
    );
    Rig {
        kms,
        store,
        soft,
        hsm,
        clock,
    }
}

fn slow(pick: fn(&str) -> bool) -> Rig {
    rig(pick, Fault::Delay(Duration::from_millis(800)))
}

fn ok<T>(r: Result<T, KmsError>) -> T {
    r.unwrap_or_else(|e| panic!("unexpected {}: {e}", e.reason()))
}

fn symmetric(kms: &Kms) -> KeyRef {
    KeyRef::Id(ok(kms.create_key(&admin(), CreateKeyInput::new(KeySpec::SymmetricDefault))).id())
}

fn external(kms: &Kms) -> KeyRef {
    let input = CreateKeyInput {
        origin: Origin::External,
        ..CreateKeyInput::new(KeySpec::SymmetricDefault)
    };
    KeyRef::Id(ok(kms.create_key(&admin(), input)).id())
}

fn id_of(key: &KeyRef) -> crate::ids::KeyId {
    match key {
        KeyRef::Id(id) => *id,
        KeyRef::Alias(_) => unreachable!("the tests name keys by id"),
    }
}

/// Runs `slow` on another thread until its HSM call has begun (the fault counter moved), then
/// `meanwhile`, then waits for `slow` and returns what it returned.
fn while_the_hsm_works<T: Send + 'static>(
    hsm: &FaultyKeyStore,
    slow: impl FnOnce() -> T + Send + 'static,
    meanwhile: impl FnOnce(),
) -> T {
    let before = hsm.injected();
    let worker = std::thread::spawn(slow);
    while hsm.injected() == before {
        std::thread::yield_now();
    }
    meanwhile();
    worker
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A RotateKeyOnDemand of `key`, to run on another thread.
fn rotation(
    kms: &Arc<Kms>,
    key: &KeyRef,
) -> impl FnOnce() -> Result<(), KmsError> + Send + 'static {
    let (kms, key) = (kms.clone(), key.clone());
    move || kms.rotate_key_on_demand(&admin(), &key).map(|_| ())
}

/// A GetParametersForImport of `key` (RSA-3072, OAEP-SHA-256), to run on another thread.
fn import_parameters(
    kms: &Arc<Kms>,
    key: &KeyRef,
) -> impl FnOnce() -> Result<(), KmsError> + Send + 'static {
    let (kms, key) = (kms.clone(), key.clone());
    move || {
        kms.get_parameters_for_import(&admin(), &key, WrappingAlgorithm::RsaesOaepSha256, 3072)
            .map(|_| ())
    }
}

/// The HSM objects of `key` the soft HSM holds.
fn objects_of(soft: &SoftKeyStore, key: &KeyRef) -> Vec<KeyVersionRef> {
    let id = id_of(key);
    let mut objects: Vec<_> = ok(soft.list_key_versions().map_err(KmsError::from))
        .into_iter()
        .filter(|v| v.key_id == id)
        .collect();
    objects.sort_by_key(|v| v.version);
    objects
}

fn wrapping_keys_of(soft: &SoftKeyStore, key: &KeyRef) -> Vec<WrappingKeyRef> {
    let id = id_of(key);
    ok(soft.list_wrapping_keys().map_err(KmsError::from))
        .into_iter()
        .filter(|w| w.key_id == id)
        .collect()
}

/// A rotation whose HSM object is made while the key's deletion falls due: the deletion
/// waits for the rotation, then destroys every object, the new version's included.
#[test]
fn a_due_deletion_waits_for_a_rotation_under_way_and_leaves_no_hsm_object() {
    let r = slow(|op| op == "create_key_version");
    let key = symmetric(&r.kms);
    let rotating = rotation(&r.kms, &key);
    let rotated = while_the_hsm_works(&r.hsm, rotating, || {
        ok(r.kms.schedule_key_deletion(&admin(), &key, Some(7)));
        r.clock.set_millis(1_008 * DAY);
        assert_eq!(
            ok(r.kms.run_due_deletions()),
            0,
            "the deletion ran while a rotation was making an object"
        );
    });
    ok(rotated);
    assert_eq!(objects_of(&r.soft, &key).len(), 2);
    assert_eq!(ok(r.kms.run_due_deletions()), 1);
    assert!(
        objects_of(&r.soft, &key).is_empty(),
        "a deleted key's HSM objects survive: {:?}",
        objects_of(&r.soft, &key)
    );
    let tombstone = ok(r.store.get_key(id_of(&key)).map_err(KmsError::from));
    assert_eq!(tombstone.map(|t| t.state()), Some(KeyState::Deleted));
    let report = ok(r.kms.reconcile());
    assert!(report.unreferenced_objects.is_empty(), "{report:?}");
}

/// A rotation's second half on a key deleted meanwhile (its pending version was left by a
/// failed cleanup, so the deletion did not wait): the tombstone takes no version and the
/// object made for it is destroyed.
#[test]
fn a_rotation_finishing_on_a_deleted_key_is_refused_and_destroys_its_object() {
    let r = rig(|_| false, Fault::Unavailable);
    let key = symmetric(&r.kms);
    let mut record = ok(r.kms.describe_key(&admin(), &key));
    let next = ok(record.begin_rotation(crate::key::VersionSource::OnDemand, 0));
    ok(r.store.put_key(&record).map_err(KmsError::from));
    ok(r.kms.schedule_key_deletion(&admin(), &key, Some(7)));
    r.clock.set_millis(1_008 * DAY);
    assert_eq!(ok(r.kms.run_due_deletions()), 1);
    assert!(matches!(
        r.kms.make_version(id_of(&key), next),
        Err(KmsError::InvalidState(_))
    ));
    assert!(objects_of(&r.soft, &key).is_empty());
    let tombstone = ok(r.store.get_key(id_of(&key)).map_err(KmsError::from));
    assert!(tombstone.is_some_and(|t| t.state() == KeyState::Deleted && t.current_version() == 1));
}

/// A rotation whose HSM call fails, and whose cleanup fails too, must not block every later
/// rotation of the key until a restart.
#[test]
fn a_failed_rotation_whose_cleanup_failed_does_not_block_later_rotations() {
    // Every second destruction fails: the rotation's cleanup, not the next one.
    let r = rig_every(|op| op == "destroy_key_version", Fault::Unavailable, 2);
    let key = symmetric(&r.kms);
    let unrelated = KeyVersionRef {
        key_id: crate::ids::KeyId::random(),
        version: 1,
    };
    ok(r.hsm.destroy_key_version(unrelated).map_err(KmsError::from));
    r.soft.set_fail_creation(true);
    assert!(r.kms.rotate_key_on_demand(&admin(), &key).is_err());
    assert_eq!(r.hsm.injected(), 1, "the cleanup did not fail");
    let stuck = ok(r.kms.describe_key(&admin(), &key));
    assert!(stuck.versions().iter().any(|v| v.pending));
    r.soft.set_fail_creation(false);
    // The HSM is back: the key rotates without waiting for a restart.
    let again = r.kms.rotate_key_on_demand(&admin(), &key);
    assert!(
        again.is_ok(),
        "the key cannot rotate until a restart: {:?}",
        again.err().map(|e| e.to_string())
    );
    let record = ok(r.kms.describe_key(&admin(), &key));
    // The stale version's number is taken again: no blob names a version that was pending.
    assert_eq!(record.current_version(), 2);
    assert_eq!(record.versions().len(), 2, "the stale version is gone");
    assert!(record.versions().iter().all(|v| !v.pending));
    assert_eq!(objects_of(&r.soft, &key).len(), 2);
}

/// A rotation and a DisableKey meanwhile: the key stays disabled, the version is made, and
/// the record and the HSM agree.
#[test]
fn a_rotation_and_a_disable_meanwhile_both_hold() {
    let r = slow(|op| op == "create_key_version");
    let key = symmetric(&r.kms);
    let rotating = rotation(&r.kms, &key);
    let rotated = while_the_hsm_works(&r.hsm, rotating, || {
        ok(r.kms.disable_key(&admin(), &key));
    });
    ok(rotated);
    let record = ok(r.kms.describe_key(&admin(), &key));
    assert_eq!(record.state(), KeyState::Disabled);
    assert_eq!(record.current_version(), 2);
    assert_eq!(objects_of(&r.soft, &key).len(), 2);
    assert!(ok(r.kms.reconcile()).missing_objects.is_empty());
}

/// A rotation and a ScheduleKeyDeletion then CancelKeyDeletion meanwhile: the version lands,
/// the key ends Disabled, nothing is left pending.
#[test]
fn a_rotation_with_a_deletion_scheduled_and_cancelled_meanwhile_holds() {
    let r = slow(|op| op == "create_key_version");
    let key = symmetric(&r.kms);
    let rotating = rotation(&r.kms, &key);
    let rotated = while_the_hsm_works(&r.hsm, rotating, || {
        ok(r.kms.schedule_key_deletion(&admin(), &key, Some(7)));
        ok(r.kms.cancel_key_deletion(&admin(), &key));
    });
    ok(rotated);
    let record = ok(r.kms.describe_key(&admin(), &key));
    assert_eq!(record.state(), KeyState::Disabled);
    assert_eq!(record.current_version(), 2);
    assert!(record.versions().iter().all(|v| !v.pending));
}

/// Two GetParametersForImport at once, the first one slower: the second's parameters stand,
/// the first is refused, and only the standing wrapping key is left in the HSM.
#[test]
fn two_concurrent_get_parameters_leave_one_wrapping_key() {
    let r = rig(
        |op| op == "create_wrapping_key",
        Fault::Delay(Duration::from_millis(800)),
    );
    let key = external(&r.kms);
    let first = import_parameters(&r.kms, &key);
    let mut second = None;
    let first = while_the_hsm_works(&r.hsm, first, || {
        second = Some(r.kms.get_parameters_for_import(
            &admin(),
            &key,
            WrappingAlgorithm::RsaesOaepSha256,
            3072,
        ));
    });
    // Both calls are slow; whichever recorded last with the higher serial stands.
    let record = ok(r.kms.describe_key(&admin(), &key));
    let standing = record.import_parameters().map(|p| p.serial);
    assert_eq!(standing, Some(2), "the newer parameters stand");
    // The first either recorded serial 1 before the second replaced it, or was refused
    // because serial 2 was recorded first; anything else is a failure.
    assert!(matches!(first, Ok(()) | Err(KmsError::InvalidState(_))));
    assert_eq!(
        wrapping_keys_of(&r.soft, &key),
        [WrappingKeyRef {
            key_id: id_of(&key),
            serial: 2
        }]
    );
    assert!(second.is_some_and(|s| s.is_ok()));
}

/// GetParametersForImport whose wrapping key is made after the key was deleted must not give
/// the tombstone import parameters, nor leave the wrapping key.
#[test]
fn get_parameters_that_outlive_the_keys_deletion_leave_nothing() {
    let r = slow(|op| op == "create_wrapping_key");
    let key = external(&r.kms);
    let issuing = import_parameters(&r.kms, &key);
    let issued = while_the_hsm_works(&r.hsm, issuing, || {
        ok(r.kms.schedule_key_deletion(&admin(), &key, Some(7)));
        r.clock.set_millis(1_008 * DAY);
        assert_eq!(ok(r.kms.run_due_deletions()), 1);
    });
    assert!(issued.is_err(), "parameters issued for a deleted key");
    let tombstone = ok(r.store.get_key(id_of(&key)).map_err(KmsError::from));
    assert!(tombstone.as_ref().is_some_and(|t| t.import().is_none()));
    assert!(wrapping_keys_of(&r.soft, &key).is_empty());
}

/// While a due deletion runs without the lock, CancelKeyDeletion, CreateAlias and UpdateAlias
/// to the key, and rotation, are all refused; PutKeyPolicy is overwritten by the tombstone.
#[test]
fn a_due_deletion_cannot_be_undone_or_given_new_names_while_it_runs() {
    let r = slow(|op| op == "destroy_key_version");
    let key = symmetric(&r.kms);
    let other = symmetric(&r.kms);
    let name = ok(crate::ids::AliasName::parse("alias/moving"));
    ok(r.kms.create_alias(&admin(), &name, &other));
    ok(r.kms.schedule_key_deletion(&admin(), &key, Some(7)));
    r.clock.set_millis(1_008 * DAY);
    let deleting = {
        let kms = r.kms.clone();
        move || kms.run_due_deletions()
    };
    let deleted = while_the_hsm_works(&r.hsm, deleting, || {
        // Past its deletion date the key is gone to callers, before the job finishes.
        assert!(matches!(
            r.kms.cancel_key_deletion(&admin(), &key),
            Err(KmsError::NotFound(_))
        ));
        let fresh = ok(crate::ids::AliasName::parse("alias/late"));
        assert!(r.kms.create_alias(&admin(), &fresh, &key).is_err());
        assert!(r.kms.update_alias(&admin(), &name, &key).is_err());
        assert!(r.kms.rotate_key_on_demand(&admin(), &key).is_err());
        let policy = crate::policy::KeyPolicy::default_for("someone-else");
        let _ = r.kms.put_key_policy(&admin(), &key, policy.text(), true);
    });
    assert_eq!(ok(deleted), 1);
    let tombstone = ok(r.store.get_key(id_of(&key)).map_err(KmsError::from));
    assert!(tombstone.is_some_and(|t| t.state() == KeyState::Deleted && t.policy_text().is_none()));
    assert!(objects_of(&r.soft, &key).is_empty());
    let page = ok(r
        .kms
        .list_aliases(&admin(), None, ok(super::PageLimit::new(0)), None));
    assert!(page.aliases.iter().all(|a| a.key_id != id_of(&key)));
}

/// A due deletion under way, and the clock stepping back before the deletion date meanwhile
/// (an NTP correction): CancelKeyDeletion must still be refused, or the key comes back
/// without its HSM objects.
#[test]
fn a_due_deletion_cannot_be_cancelled_even_if_the_clock_steps_back() {
    let r = slow(|op| op == "destroy_key_version");
    let key = symmetric(&r.kms);
    ok(r.kms.schedule_key_deletion(&admin(), &key, Some(7)));
    r.clock.set_millis(1_008 * DAY);
    let deleting = {
        let kms = r.kms.clone();
        move || kms.run_due_deletions()
    };
    let deleted = while_the_hsm_works(&r.hsm, deleting, || {
        r.clock.set_millis(1_006 * DAY);
        assert!(matches!(
            r.kms.cancel_key_deletion(&admin(), &key),
            Err(KmsError::InvalidState(_))
        ));
    });
    assert_eq!(ok(deleted), 1);
    assert!(matches!(
        r.kms.describe_key(&admin(), &key),
        Err(KmsError::NotFound(_))
    ));
}

/// Runs `slow` until its HSM call has begun, then DisableKey on another key, then `also`.
/// Fails if DisableKey waited for `slow` to end: the write lock held across its HSM call.
fn others_do_not_wait(
    r: &Rig,
    slow: impl FnOnce() -> Result<(), KmsError> + Send + 'static,
    also: impl FnOnce(),
) {
    let other = symmetric(&r.kms);
    let done = Arc::new(AtomicBool::new(false));
    let slow = {
        let done = done.clone();
        move || {
            let out = slow();
            done.store(true, Ordering::SeqCst);
            out
        }
    };
    let out = while_the_hsm_works(&r.hsm, slow, || {
        ok(r.kms.disable_key(&admin(), &other));
        assert!(
            !done.load(Ordering::SeqCst),
            "DisableKey on another key waited for the HSM call"
        );
        also();
    });
    ok(out);
}

/// While one key's rotation is inside the HSM, a call on another key does not wait for it,
/// and a second rotation of the same key is refused rather than queued.
#[test]
fn a_slow_hsm_rotation_holds_no_lock_other_keys_wait_for() {
    let r = slow(|op| op == "create_key_version");
    let key = symmetric(&r.kms);
    others_do_not_wait(&r, rotation(&r.kms, &key), || {
        assert!(matches!(
            r.kms.rotate_key_on_demand(&admin(), &key),
            Err(KmsError::InvalidState(_))
        ));
    });
    assert_eq!(ok(r.kms.describe_key(&admin(), &key)).current_version(), 2);
}

/// While an RSA wrapping key pair is being generated (seconds on a real token), a call on
/// another key does not wait for it.
#[test]
fn a_slow_wrapping_key_generation_holds_no_lock_other_keys_wait_for() {
    let r = slow(|op| op == "create_wrapping_key");
    let key = external(&r.kms);
    let issuing = import_parameters(&r.kms, &key);
    others_do_not_wait(&r, issuing, || {});
    let record = ok(r.kms.describe_key(&admin(), &key));
    assert_eq!(record.import_parameters().map(|p| p.serial), Some(1));
}
