//! The service under HSM faults (kms-core's `FaultyKeyStore`): calls failing before the HSM,
//! timing out, losing their session after the HSM did the work, or slowed down, under
//! concurrent load. Every answered call must be right, every failed one must carry a status
//! a client can act on, and a restart must leave nothing half-made.

use std::sync::Arc;
use std::time::Duration;

use super::Kms;
use crate::hsm::KeyStore;
use crate::key::KeyStorage;
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
    for (what, pick, fault, storage) in plans.into_iter().flat_map(|(what, pick)| {
        faults.into_iter().flat_map(move |fault| {
            [KeyStorage::Wrapped, KeyStorage::Token].map(|storage| (what, pick, fault, storage))
        })
    }) {
        {
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
                    .with_authorization(authorization())
                    .with_key_storage(storage),
            );
            let what = format!("{what}, {fault:?}, {storage:?}");
            let seen = fault_load::run(&kms, 4, 12);
            assert!(hsm.injected() > 0, "{what}: no fault injected");
            seen.check_errors(&what);
            if fault != Fault::Delay(Duration::from_millis(1)) {
                assert!(!seen.errors.is_empty(), "{what}: no call failed");
            }

            // Restart on the same store and HSM, without faults.
            drop(kms);
            let restarted = Kms::new(store.clone(), soft.clone(), clock)
                .with_authorization(authorization())
                .with_key_storage(storage);
            fault_load::check_restart(&restarted, store.as_ref(), soft.as_ref(), &seen);
        }
    }
}
