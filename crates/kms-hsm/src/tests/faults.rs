//! The service on a real SoftHSM2 token behind kms-core's `FaultyKeyStore`: sessions lost
//! after the HSM made a key (the case a retry cannot undo), calls failing before it, and slow
//! calls, under concurrent load; then a restart on the same token.

use std::sync::Arc;
use std::time::Duration;

use kms_core::testing::fault_load;
use kms_core::testing::{Fault, FaultyKeyStore, ManualClock, MemoryStore, authorization};
use kms_core::{KeyStore, Kms};

use super::open_store;

#[test]
fn on_softhsm2_faults_leave_right_answers_and_nothing_half_made_after_a_restart() {
    let plan = [
        (Fault::LostAfter, "create_key_version"),
        (Fault::Unavailable, "create_key_version"),
        (Fault::LostAfter, "destroy_key_version"),
        (Fault::Timeout, "derive_message_key"),
        (Fault::Delay(Duration::from_millis(5)), "derive_message_key"),
    ];
    for (fault, operation) in plan {
        let (store_hsm, _) = open_store();
        let hsm: Arc<dyn KeyStore> = Arc::new(store_hsm);
        let store = Arc::new(MemoryStore::default());
        let clock = Arc::new(ManualClock::default());
        // Every other call of `operation`: which one is picked is fixed per call count.
        let picks: fn(&str) -> bool = match operation {
            "create_key_version" => |op| op == "create_key_version",
            "destroy_key_version" => |op| op == "destroy_key_version" || op == "create_key_version",
            _ => |op| op == "derive_message_key",
        };
        let wrapped = Arc::new(FaultyKeyStore::new(Arc::clone(&hsm), picks, fault, 2));
        let kms = Arc::new(
            Kms::new(store.clone(), wrapped.clone(), clock.clone())
                .with_authorization(authorization()),
        );
        let seen = fault_load::run(&kms, 2, 5);
        assert!(
            wrapped.injected() > 0,
            "{fault:?} on {operation}: none injected"
        );
        seen.check_errors(&format!("{fault:?} on {operation}"));
        drop(kms);
        let restarted =
            Kms::new(store.clone(), Arc::clone(&hsm), clock).with_authorization(authorization());
        fault_load::check_restart(&restarted, store.as_ref(), hsm.as_ref(), &seen);
    }
}

/// What the fault test found: on SoftHSM2 2.6 a key made while another session destroys a
/// token object fails (CKR_TEMPLATE_INCONSISTENT, CKR_GENERAL_ERROR), so a deletion or a
/// failed creation's clean-up made a concurrent CreateKey fail with KMSInternalException.
/// The store now keeps destructions apart from creations.
#[test]
fn keys_are_made_while_others_are_destroyed() {
    use kms_core::key::KeyMaterial;
    use kms_core::{KeyId, KeyVersionRef};
    let (store, _) = open_store();
    let store = Arc::new(store);
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 0..40 {
                    let key = KeyVersionRef {
                        key_id: KeyId::random(),
                        version: 1,
                    };
                    if let Err(e) = store.create_key_version(key, KeyMaterial::MasterSecret) {
                        panic!("thread {t} create {i}: {e:?}");
                    }
                    if t == 0 {
                        store
                            .destroy_key_version(key)
                            .unwrap_or_else(|e| panic!("destroy {i}: {e:?}"));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
