//! The service under HSM faults (kms-core's `FaultyKeyStore`): calls failing before the HSM,
//! timing out, losing their session after the HSM did the work, or slowed down, under
//! concurrent load. Every answered call must be right, every failed one must carry a status
//! a client can act on, and a restart must leave nothing half-made.

use std::sync::Arc;
use std::time::Duration;

use super::Kms;
use crate::hsm::KeyStore;
use crate::testing::{
    Fault, FaultyKeyStore, ManualClock, MemoryStore, SoftKeyStore, authorization, fault_load,
};

#[test]
fn under_hsm_faults_answers_are_right_failures_are_clear_and_restarts_leave_nothing_half_made() {
    type Pick = fn(&str) -> bool;
    let plans: [(&str, Pick); 3] = [
        ("key creation", |op| op == "create_key_version"),
        ("derivations", |op| op == "derive_message_key"),
        ("every call", |_| true),
    ];
    let faults = [
        Fault::Unavailable,
        Fault::Timeout,
        Fault::LostAfter,
        Fault::Delay(Duration::from_millis(1)),
    ];
    for (what, pick) in plans {
        for fault in faults {
            let store = Arc::new(MemoryStore::default());
            let soft = Arc::new(SoftKeyStore::default());
            let clock = Arc::new(ManualClock::default());
            let hsm = Arc::new(FaultyKeyStore::new(
                soft.clone() as Arc<dyn KeyStore>,
                pick,
                fault,
                3,
            ));
            let kms = Arc::new(
                Kms::new(store.clone(), hsm.clone(), clock.clone())
                    .with_authorization(authorization()),
            );
            let seen = fault_load::run(&kms, 4, 12);
            assert!(hsm.injected() > 0, "{what}, {fault:?}: no fault injected");
            seen.check_errors(&format!("{what}, {fault:?}"));
            if fault != Fault::Delay(Duration::from_millis(1)) {
                assert!(!seen.errors.is_empty(), "{what}, {fault:?}: no call failed");
            }

            // Restart on the same store and HSM, without faults.
            drop(kms);
            let restarted =
                Kms::new(store.clone(), soft.clone(), clock).with_authorization(authorization());
            fault_load::check_restart(&restarted, store.as_ref(), soft.as_ref(), &seen);
        }
    }
}

/// A service whose HSM takes `delay` over every call `pick` names, and its fault counter.
fn slow_hsm_kms(pick: fn(&str) -> bool, delay: Duration) -> (Arc<Kms>, Arc<FaultyKeyStore>) {
    let hsm = Arc::new(FaultyKeyStore::new(
        Arc::new(SoftKeyStore::default()) as Arc<dyn KeyStore>,
        pick,
        Fault::Delay(delay),
        1,
    ));
    let kms = Kms::new(
        Arc::new(MemoryStore::default()),
        hsm.clone(),
        Arc::new(ManualClock::default()),
    )
    .with_authorization(authorization());
    (Arc::new(kms), hsm)
}

fn ok<T>(r: Result<T, crate::KmsError>) -> T {
    r.unwrap_or_else(|e| panic!("unexpected {}: {e}", e.reason()))
}

/// Runs `slow` on another thread until its HSM call has begun (the fault counter moved), then
/// `meanwhile`; returns whether `slow` was still running when `meanwhile` returned.
fn while_the_hsm_works(
    hsm: &FaultyKeyStore,
    slow: impl FnOnce() + Send + 'static,
    meanwhile: impl FnOnce(),
) -> bool {
    let before = hsm.injected();
    let worker = std::thread::spawn(slow);
    while hsm.injected() == before {
        std::thread::yield_now();
    }
    meanwhile();
    let overlapped = !worker.is_finished();
    assert!(worker.join().is_ok(), "the slow call panicked");
    overlapped
}

#[test]
fn a_slow_hsm_rotation_holds_no_lock_other_keys_wait_for() {
    let (kms, hsm) = slow_hsm_kms(|op| op == "create_key_version", Duration::from_millis(1500));
    let admin = crate::testing::admin();
    let input = || super::CreateKeyInput::new(crate::key::KeySpec::SymmetricDefault);
    let rotated = crate::ids::KeyRef::Id(ok(kms.create_key(&admin, input())).id());
    let other = crate::ids::KeyRef::Id(ok(kms.create_key(&admin, input())).id());
    let rotating = {
        let (kms, key) = (kms.clone(), rotated.clone());
        move || {
            ok(kms.rotate_key_on_demand(&crate::testing::admin(), &key));
        }
    };
    let overlapped = while_the_hsm_works(&hsm, rotating, || {
        ok(kms.disable_key(&admin, &other));
        // A second rotation of the same key meanwhile is refused, not queued.
        assert!(matches!(
            kms.rotate_key_on_demand(&admin, &rotated),
            Err(crate::KmsError::InvalidState(_))
        ));
    });
    assert!(overlapped, "DisableKey waited for another key's rotation");
    assert_eq!(ok(kms.describe_key(&admin, &rotated)).current_version(), 2);
}

#[test]
fn a_slow_wrapping_key_generation_holds_no_lock_other_keys_wait_for() {
    let (kms, hsm) = slow_hsm_kms(
        |op| op == "create_wrapping_key",
        Duration::from_millis(1500),
    );
    let admin = crate::testing::admin();
    let external = super::CreateKeyInput {
        origin: crate::key::Origin::External,
        ..super::CreateKeyInput::new(crate::key::KeySpec::SymmetricDefault)
    };
    let importing = crate::ids::KeyRef::Id(ok(kms.create_key(&admin, external)).id());
    let other = crate::ids::KeyRef::Id(
        ok(kms.create_key(
            &admin,
            super::CreateKeyInput::new(crate::key::KeySpec::SymmetricDefault),
        ))
        .id(),
    );
    let issuing = {
        let (kms, key) = (kms.clone(), importing.clone());
        move || {
            ok(kms.get_parameters_for_import(
                &crate::testing::admin(),
                &key,
                crate::key::WrappingAlgorithm::RsaesOaepSha256,
                3072,
            ));
        }
    };
    let overlapped = while_the_hsm_works(&hsm, issuing, || {
        ok(kms.disable_key(&admin, &other));
    });
    assert!(
        overlapped,
        "DisableKey waited for another key's import parameters"
    );
    let record = ok(kms.describe_key(&admin, &importing));
    assert_eq!(record.import_parameters().map(|p| p.serial), Some(1));
}
