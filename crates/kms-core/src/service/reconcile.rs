//! Startup reconciliation: the store and the HSM brought into agreement after a crash.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use tracing::{info, warn};

use crate::error::KmsError;
use crate::hsm::KeyVersionRef;
use crate::ids::KeyId;
use crate::key::{KeyRecord, KeyState};

use super::{Kms, ReconcileReport};

impl Kms {
    /// Marks the key and alias counts unknown until [`Kms::reconcile`] has counted them:
    /// meanwhile CreateKey and CreateAlias are refused (ThrottlingException: retry). kmsd
    /// calls it before it serves, since reconciliation of a large store may finish after.
    pub fn begin_counting(&self) {
        self.counted.store(false, Ordering::SeqCst);
    }

    /// Whether the key and alias counts are known (reconciliation finished).
    pub fn counted(&self) -> bool {
        self.counted.load(Ordering::SeqCst)
    }

    /// Refuses a call that needs the counts while they are unknown.
    pub(super) fn check_counted(&self) -> Result<(), KmsError> {
        if self.counted() {
            Ok(())
        } else {
            Err(KmsError::Throttling(
                "kmsd is counting its keys after a start; retry in a few seconds".into(),
            ))
        }
    }

    /// Brings the store and the HSM into agreement after a crash, and counts the keys and
    /// aliases. Safe while kmsd serves: every change is decided again on the record read
    /// under the write lock, rotations under way are left alone, and CreateKey waits for the
    /// counts (see [`Kms::begin_counting`]), so a `Creating` record is a crash's.
    ///
    /// Keys left in `Creating` are removed with any HSM object they got. Versions without an
    /// HSM object, and HSM objects of this instance that no record names, are reported and
    /// logged, never deleted: neither can be repaired automatically without losing keys.
    pub fn reconcile(&self) -> Result<ReconcileReport, KmsError> {
        let mut report = ReconcileReport::default();
        // Listed before the scan: an object made later belongs to a call in flight.
        let mut in_hsm: HashSet<KeyVersionRef> =
            self.hsm.list_key_versions()?.into_iter().collect();
        let wrapping_keys = self.hsm.list_wrapping_keys()?;
        let mut referenced = HashSet::new();
        let mut count = 0;
        self.for_each_key(|record| {
            let unfinished = record.state() == KeyState::Creating
                || record.versions().iter().any(|v| v.pending)
                || (!record.has_material() && record.version_refs().any(|v| in_hsm.contains(&v)));
            let record = if unfinished {
                match self.finish_unfinished(record.id, &mut in_hsm, &mut report)? {
                    Some(record) => record,
                    None => return Ok(()),
                }
            } else {
                record
            };
            if record.state() == KeyState::Deleted {
                return Ok(());
            }
            count += 1;
            if !record.has_material() {
                // An EXTERNAL key without material has no object to miss.
                return Ok(());
            }
            for version in record.token_version_refs() {
                if !in_hsm.contains(&version) {
                    warn!(key_id = %version.key_id, version = version.version,
                        "key version has no HSM object; it cannot be used");
                    report.missing_objects.push(version);
                }
                referenced.insert(version);
            }
            Ok(())
        })?;
        self.key_count.store(count, Ordering::SeqCst);
        let mut aliases = 0;
        self.for_each_alias(|_| {
            aliases += 1;
            Ok(())
        })?;
        self.alias_count.store(aliases, Ordering::SeqCst);
        self.counted.store(true, Ordering::SeqCst);
        for wrapping in wrapping_keys {
            // Import parameters a crash left half-made, or that were used or replaced:
            // decided on the key's record read under the lock.
            let _guard = self.write_guard();
            let current = self
                .store
                .get_key(wrapping.key_id)?
                .and_then(|r| r.import_parameters().map(|p| p.serial));
            if current != Some(wrapping.serial) {
                self.hsm.destroy_wrapping_key(wrapping)?;
            }
        }
        for unreferenced in in_hsm.difference(&referenced) {
            warn!(key_id = %unreferenced.key_id, version = unreferenced.version,
                "an HSM object of this instance has no key record (was the data dir restored \
                 from an old backup?); it is kept");
            report.unreferenced_objects.push(*unreferenced);
        }
        Ok(report)
    }

    /// Finishes, under the write lock, what a crash left of key `id`: a `Creating` key is
    /// removed with its objects (`None`); versions whose rotation did not finish (and is not
    /// under way in this process) are dropped with theirs; an EXTERNAL key without material
    /// loses the objects an import or a deletion of material left. Returns the record as it
    /// then is.
    fn finish_unfinished(
        &self,
        id: KeyId,
        in_hsm: &mut HashSet<KeyVersionRef>,
        report: &mut ReconcileReport,
    ) -> Result<Option<KeyRecord>, KmsError> {
        let _guard = self.write_guard();
        let Some(record) = self.store.get_key(id)? else {
            return Ok(None);
        };
        if record.state() == KeyState::Creating {
            for version in record.version_refs() {
                self.hsm.destroy_key_version(version)?;
                in_hsm.remove(&version);
            }
            self.store.delete_key(record.id)?;
            info!(key_id = %record.id, "removed a key whose creation did not finish");
            report.abandoned_keys += 1;
            return Ok(None);
        }
        let record = if self.pending_versions_under_way(&record) {
            record
        } else {
            self.drop_pending_versions(record, in_hsm)?
        };
        if !record.has_material() {
            for version in record.version_refs() {
                if in_hsm.remove(&version) {
                    self.hsm.destroy_key_version(version)?;
                    info!(key_id = %record.id, "removed key material whose import or deletion did not finish");
                }
            }
        }
        Ok(Some(record))
    }

    /// Removes the versions a crash left pending, with any HSM object they got.
    pub(super) fn drop_pending_versions(
        &self,
        mut record: KeyRecord,
        in_hsm: &mut HashSet<KeyVersionRef>,
    ) -> Result<KeyRecord, KmsError> {
        let pending = record.drop_pending_versions();
        if pending.is_empty() {
            return Ok(record);
        }
        for version in &pending {
            let object = KeyVersionRef {
                key_id: record.id,
                version: *version,
            };
            self.hsm.destroy_key_version(object)?;
            in_hsm.remove(&object);
            info!(key_id = %record.id, version, "removed a key version whose rotation did not finish");
        }
        self.store.put_key(&record)?;
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use crate::service::test_support::*;

    #[test]
    fn reconcile_removes_unfinished_keys_and_reports_unreferenced_objects() {
        let (kms, store, hsm) = memory_kms();
        let good = new_key(&kms);
        // A crash between the Creating record and the HSM object...
        let half = KeyRecord::new(
            KeyId::random(),
            0,
            KeySpec::SymmetricDefault,
            KeyUsage::EncryptDecrypt,
            Origin::Kms,
        );
        ok(store.put_key(&half).map_err(KmsError::from));
        ok(hsm
            .create_key_version(
                KeyVersionRef {
                    key_id: half.id,
                    version: 1,
                },
                KeyMaterial::MasterSecret,
            )
            .map_err(KmsError::from));
        // ...and an HSM object whose record never got written.
        let orphan = KeyVersionRef {
            key_id: KeyId::random(),
            version: 1,
        };
        ok(hsm
            .create_key_version(orphan, KeyMaterial::MasterSecret)
            .map_err(KmsError::from));

        let report = ok(kms.reconcile());
        assert_eq!(report.abandoned_keys, 1);
        assert_eq!(report.unreferenced_objects, [orphan]);
        assert!(report.missing_objects.is_empty());
        assert!(hsm.contains(orphan), "an object without a record is kept");
        assert!(!hsm.contains(KeyVersionRef {
            key_id: half.id,
            version: 1
        }));
        assert!(matches!(
            kms.describe_key(&admin(), &KeyRef::Id(half.id)),
            Err(KmsError::NotFound(_))
        ));
        assert!(
            kms.encrypt(&admin(), &good, &plaintext(b"still works"), &ctx(&[]))
                .is_ok()
        );
        let again = ok(kms.reconcile());
        assert_eq!(again.abandoned_keys, 0);
        assert_eq!(again.unreferenced_objects, [orphan]);
    }

    #[test]
    fn reconcile_removes_a_version_a_crash_left_pending() {
        let (kms, store, hsm) = memory_kms();
        let key = new_key(&kms);
        let mut record = ok(kms.describe_key(&admin(), &key));
        assert_eq!(ok(record.begin_rotation(VersionSource::OnDemand, 0)), 2);
        ok(store.put_key(&record).map_err(KmsError::from));
        let pending = KeyVersionRef {
            key_id: record.id,
            version: 2,
        };
        ok(hsm
            .create_key_version(pending, KeyMaterial::MasterSecret)
            .map_err(KmsError::from));

        let report = ok(kms.reconcile());
        assert!(report.unreferenced_objects.is_empty());
        assert!(!hsm.contains(pending));
        let record = ok(kms.describe_key(&admin(), &key));
        assert_eq!(record.versions().len(), 1);
        assert_eq!(record.current_version(), 1);
        assert!(
            kms.encrypt(&admin(), &key, &plaintext(b"x"), &ctx(&[]))
                .is_ok()
        );
    }

    #[test]
    fn until_reconciliation_has_counted_keys_and_aliases_are_not_created() {
        let (kms, _, _) = memory_kms();
        let key = new_key(&kms);
        kms.begin_counting();
        assert!(matches!(
            kms.create_key(&admin(), plain_input()),
            Err(KmsError::Throttling(_))
        ));
        assert!(matches!(
            kms.create_alias(&admin(), &alias("alias/early"), &key),
            Err(KmsError::Throttling(_))
        ));
        // The data plane serves meanwhile.
        ok(kms.encrypt(&admin(), &key, &plaintext(b"x"), &ctx(&[])));
        ok(kms.reconcile());
        assert!(kms.counted());
        new_key(&kms);
        ok(kms.create_alias(&admin(), &alias("alias/later"), &key));
    }

    #[test]
    fn reconciliation_while_serving_leaves_a_rotation_under_way_alone() {
        use crate::testing::{Fault, FaultyKeyStore, ManualClock, MemoryStore, SoftKeyStore};
        let store = Arc::new(MemoryStore::default());
        let soft = Arc::new(SoftKeyStore::default());
        // Every key version creation takes 300 ms: a rotation is under way that long.
        let hsm = Arc::new(FaultyKeyStore::new(
            soft,
            |op| op == "create_key_version",
            Fault::Delay(std::time::Duration::from_millis(300)),
            1,
        ));
        let kms = Arc::new(
            Kms::new(store, hsm, Arc::new(ManualClock::default()))
                .with_authorization(crate::testing::authorization()),
        );
        let key = new_key(&kms);
        let rotation = {
            let (kms, key) = (Arc::clone(&kms), key.clone());
            std::thread::spawn(move || kms.rotate_key_on_demand(&admin(), &key))
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        let pending = ok(kms.describe_key(&admin(), &key)).versions().len();
        assert_eq!(pending, 2, "the rotation has recorded its pending version");
        ok(kms.reconcile());
        ok(rotation
            .join()
            .unwrap_or_else(|_| panic!("the rotation panicked")));
        let record = ok(kms.describe_key(&admin(), &key));
        assert_eq!(record.current_version(), 2, "the rotation finished");
        ok(kms.encrypt(&admin(), &key, &plaintext(b"x"), &ctx(&[])));
    }

    #[test]
    fn a_key_past_its_deletion_date_is_gone_before_the_deletion_job_runs() {
        use crate::testing::{ManualClock, MemoryStore, SoftKeyStore};
        let clock = Arc::new(ManualClock::default());
        let kms = Kms::new(
            Arc::new(MemoryStore::default()),
            Arc::new(SoftKeyStore::default()),
            clock.clone(),
        )
        .with_authorization(crate::testing::authorization());
        let key = new_key(&kms);
        let blob = ok(kms.encrypt(&admin(), &key, &plaintext(b"x"), &ctx(&[]))).ciphertext_blob;
        ok(kms.create_alias(&admin(), &alias("alias/doomed"), &key));
        ok(kms.schedule_key_deletion(&admin(), &key, Some(7)));
        clock.set_millis(7 * 86_400_000 + 1);
        assert!(matches!(
            kms.describe_key(&admin(), &key),
            Err(KmsError::NotFound(_))
        ));
        assert!(matches!(
            kms.describe_key(&admin(), &KeyRef::Alias(alias("alias/doomed"))),
            Err(KmsError::NotFound(_))
        ));
        assert!(kms.decrypt(&admin(), &blob, &ctx(&[]), None).is_err());
        assert!(matches!(
            kms.cancel_key_deletion(&admin(), &key),
            Err(KmsError::NotFound(_))
        ));
        let listed = ok(kms.list_keys(&admin(), ok(PageLimit::new(100)), None));
        assert!(listed.keys.is_empty());
    }
}
