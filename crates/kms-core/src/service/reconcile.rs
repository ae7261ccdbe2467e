//! Startup reconciliation: the store and the HSM brought into agreement after a crash.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use tracing::{info, warn};

use crate::error::KmsError;
use crate::hsm::KeyVersionRef;
use crate::key::{KeyRecord, KeyState};

use super::{Kms, ReconcileReport};

impl Kms {
    /// Brings the store and the HSM into agreement after a crash; run before serving.
    ///
    /// Keys left in `Creating` are removed with any HSM object they got. Versions without an
    /// HSM object, and HSM objects of this instance that no record names, are reported and
    /// logged, never deleted: neither can be repaired automatically without losing keys.
    pub fn reconcile(&self) -> Result<ReconcileReport, KmsError> {
        let _guard = self.write_guard();
        let mut report = ReconcileReport::default();
        let mut in_hsm: HashSet<KeyVersionRef> =
            self.hsm.list_key_versions()?.into_iter().collect();
        let mut referenced = HashSet::new();
        let mut wrapping_referenced = HashSet::new();
        let mut count = 0;
        self.for_each_key(|record| {
            if record.state() == KeyState::Creating {
                for version in record.version_refs() {
                    self.hsm.destroy_key_version(version)?;
                    in_hsm.remove(&version);
                }
                self.store.delete_key(record.id)?;
                info!(key_id = %record.id, "removed a key whose creation did not finish");
                report.abandoned_keys += 1;
                return Ok(());
            }
            if record.state() == KeyState::Deleted {
                return Ok(());
            }
            count += 1;
            let record = self.drop_pending_versions(record, &mut in_hsm)?;
            if let Some(parameters) = record.import_parameters() {
                wrapping_referenced.insert(crate::hsm::WrappingKeyRef {
                    key_id: record.id,
                    serial: parameters.serial,
                });
            }
            if !record.has_material() {
                // An EXTERNAL key without material: an object can only be an import or a
                // deletion of material that did not finish.
                for version in record.version_refs() {
                    if in_hsm.remove(&version) {
                        self.hsm.destroy_key_version(version)?;
                        info!(key_id = %record.id, "removed key material whose import or deletion did not finish");
                    }
                }
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
        for wrapping in self.hsm.list_wrapping_keys()? {
            if !wrapping_referenced.contains(&wrapping) {
                // Import parameters a crash left half-made, or that were used or replaced.
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
}
