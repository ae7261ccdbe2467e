//! Scheduled deletion: the waiting period, its cancellation, and the final destruction.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use tracing::info;

use crate::alias::AliasRecord;
use crate::caller::Caller;
use crate::error::KmsError;
use crate::ids::{AliasName, KeyRef};
use crate::key::{KeyRecord, KeyState, PendingDeletion};
use crate::policy::Action;

use super::{Kms, invalid_state};

impl Kms {
    /// Schedules the key's deletion in `window_days` (7..=30, default 30). Until then every
    /// cryptographic call fails with KMSInvalidStateException; CancelKeyDeletion undoes it.
    pub fn schedule_key_deletion(
        &self,
        caller: &Caller,
        key: &KeyRef,
        window_days: Option<u32>,
    ) -> Result<KeyRecord, KmsError> {
        let deletion = PendingDeletion::new(window_days, self.clock.now_millis())?;
        self.update(caller, key, Action::ScheduleKeyDeletion, |record| {
            if record.state == KeyState::PendingDeletion {
                return Err(invalid_state(record, "scheduled for deletion again"));
            }
            record.state = KeyState::PendingDeletion;
            record.deletion = Some(deletion);
            Ok(())
        })
    }
    /// Cancels a scheduled deletion; the key becomes Disabled.
    pub fn cancel_key_deletion(
        &self,
        caller: &Caller,
        key: &KeyRef,
    ) -> Result<KeyRecord, KmsError> {
        self.update(caller, key, Action::CancelKeyDeletion, |record| {
            if record.state != KeyState::PendingDeletion {
                return Err(invalid_state(record, "taken out of deletion"));
            }
            record.state = if record.has_material() {
                KeyState::Disabled
            } else {
                KeyState::PendingImport
            };
            record.deletion = None;
            Ok(())
        })
    }
    /// How many keys are in each state (deleted keys, kept as tombstones, included), for
    /// metrics. Reads every record: call it seldom.
    pub fn count_keys_by_state(&self) -> Result<BTreeMap<&'static str, usize>, KmsError> {
        let mut counts = BTreeMap::new();
        self.for_each_key(|record| {
            *counts.entry(record.state.as_str()).or_default() += 1;
            Ok(())
        })?;
        Ok(counts)
    }
    /// Deletes every key whose deletion date has passed, and returns how many: its aliases
    /// go, every HSM object of every version is destroyed, and the record becomes a
    /// tombstone. Each step is idempotent, so a crash anywhere is finished by the next run.
    pub fn run_due_deletions(&self) -> Result<usize, KmsError> {
        let now = self.clock.now_millis();
        let mut deleted = 0;
        self.for_each_key(|record| {
            let due = record.state == KeyState::PendingDeletion
                && record.deletion.is_some_and(|d| d.deletion_date_ms <= now);
            if due {
                self.delete_now(record)?;
                deleted += 1;
            }
            Ok(())
        })?;
        Ok(deleted)
    }
    /// Calls `f` with every key record in the store, in key id order, a page at a time.
    pub(super) fn for_each_key(
        &self,
        mut f: impl FnMut(KeyRecord) -> Result<(), KmsError>,
    ) -> Result<(), KmsError> {
        let mut after = None;
        loop {
            let page = self.store.list_keys(after, 500)?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = Some(last.id);
            for record in page {
                f(record)?;
            }
        }
    }
    /// Takes a deleted alias off the count (which `reconcile` sets; never below zero).
    pub(super) fn uncount_alias(&self) {
        let _ = self
            .alias_count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }
    /// Runs `f` on every alias, in name order, a page at a time.
    pub(super) fn for_each_alias(
        &self,
        mut f: impl FnMut(&AliasRecord) -> Result<(), KmsError>,
    ) -> Result<(), KmsError> {
        let mut after: Option<AliasName> = None;
        loop {
            let page = self.store.list_aliases(after.as_ref(), 500)?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = Some(last.name.clone());
            page.iter().try_for_each(&mut f)?;
        }
    }
    pub(super) fn delete_now(&self, mut record: KeyRecord) -> Result<(), KmsError> {
        let _guard = self.write_guard();
        self.for_each_alias(|alias| {
            if alias.key_id == record.id {
                self.store.delete_alias(&alias.name)?;
                self.uncount_alias();
            }
            Ok(())
        })?;
        for version in record.version_refs() {
            self.hsm.destroy_key_version(version)?;
        }
        if let Some(parameters) = record.import.take().and_then(|i| i.parameters) {
            self.hsm.destroy_wrapping_key(crate::hsm::WrappingKeyRef {
                key_id: record.id,
                serial: parameters.serial,
            })?;
        }
        record.state = KeyState::Deleted;
        record.deletion = None;
        record.rotation = None;
        record.tags.clear();
        record.description.clear();
        record.policy = None;
        self.store.put_key(&record)?;
        self.key_count.fetch_sub(1, Ordering::SeqCst);
        info!(key_id = %record.id, "deleted key and destroyed its HSM objects");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::service::test_support::*;

    #[test]
    fn scheduled_deletion_destroys_the_key_its_objects_and_aliases_when_due() {
        let store = Arc::new(crate::testing::MemoryStore::default());
        let hsm = Arc::new(crate::testing::SoftKeyStore::default());
        let clock = Arc::new(crate::testing::ManualClock::default());
        let kms = Kms::new(store, hsm.clone(), clock.clone())
            .with_authorization(crate::testing::authorization());
        let day = 86_400_000;
        clock.set_millis(100 * day);
        let key = new_key(&kms);
        let other = new_key(&kms);
        ok(kms.rotate_key(&key, VersionSource::OnDemand));
        ok(kms.create_alias(&admin(), &alias("alias/doomed"), &key));
        let blob = ok(kms.encrypt(&admin(), &key, &plaintext(b"x"), &ctx(&[]))).ciphertext_blob;

        assert!(matches!(
            kms.schedule_key_deletion(&admin(), &key, Some(6)),
            Err(KmsError::Validation(_))
        ));
        let record = ok(kms.schedule_key_deletion(&admin(), &key, Some(7)));
        assert_eq!(record.state, KeyState::PendingDeletion);
        assert_eq!(record.deletion.map(|d| d.deletion_date_ms), Some(107 * day));
        assert!(matches!(
            kms.decrypt(&admin(), &blob, &ctx(&[]), None),
            Err(KmsError::InvalidState(_))
        ));
        assert!(matches!(
            kms.enable_key(&admin(), &key),
            Err(KmsError::InvalidState(_))
        ));
        ok(kms.cancel_key_deletion(&admin(), &key));
        assert_eq!(
            ok(kms.describe_key(&admin(), &key)).state,
            KeyState::Disabled
        );
        ok(kms.schedule_key_deletion(&admin(), &key, None));

        clock.set_millis(129 * day);
        assert_eq!(ok(kms.run_due_deletions()), 0);
        clock.set_millis(130 * day);
        assert_eq!(ok(kms.run_due_deletions()), 1);
        assert!(matches!(
            kms.describe_key(&admin(), &key),
            Err(KmsError::NotFound(_))
        ));
        assert!(matches!(
            kms.decrypt(&admin(), &blob, &ctx(&[]), None),
            Err(KmsError::NotFound(_))
        ));
        assert!(matches!(
            kms.describe_key(&admin(), &KeyRef::Alias(alias("alias/doomed"))),
            Err(KmsError::NotFound(_))
        ));
        let KeyRef::Id(id) = key else { unreachable!() };
        assert!(!hsm.contains(KeyVersionRef {
            key_id: id,
            version: 1
        }));
        assert!(!hsm.contains(KeyVersionRef {
            key_id: id,
            version: 2
        }));
        assert!(
            ok(kms.list_keys(&admin(), ok(PageLimit::new(0)), None))
                .keys
                .iter()
                .all(|k| *k != id)
        );
        assert!(
            kms.encrypt(&admin(), &other, &plaintext(b"y"), &ctx(&[]))
                .is_ok(),
            "other keys untouched"
        );
        assert_eq!(ok(kms.run_due_deletions()), 0, "idempotent");
        assert!(ok(kms.reconcile()).unreferenced_objects.is_empty());
    }
}
