//! Scheduled deletion: the waiting period, its cancellation, and the final destruction.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{MutexGuard, PoisonError};

use tracing::info;

use crate::alias::AliasRecord;
use crate::caller::Caller;
use crate::error::KmsError;
use crate::ids::{AliasName, KeyId, KeyRef};
use crate::key::{KeyRecord, PendingDeletion};
use crate::policy::Action;

use super::{DueWork, Kms};

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
        let record = self.update(caller, key, Action::ScheduleKeyDeletion, |record| {
            record.schedule_deletion(deletion)
        })?;
        self.hsm.forget_unwrapped(record.id);
        Ok(record)
    }
    /// Cancels a scheduled deletion; the key becomes Disabled.
    pub fn cancel_key_deletion(
        &self,
        caller: &Caller,
        key: &KeyRef,
    ) -> Result<KeyRecord, KmsError> {
        let now = self.clock.now_millis();
        self.update(caller, key, Action::CancelKeyDeletion, |record| {
            if self.deletions_under_way().contains(&record.id()) {
                return Err(KmsError::InvalidState(format!(
                    "key {} is being deleted: its deletion date has passed",
                    record.id()
                )));
            }
            record.cancel_deletion(now)
        })
    }
    /// How many keys are in each state (deleted keys, kept as tombstones, included), for
    /// metrics. Reads every record: call it seldom.
    pub fn count_keys_by_state(&self) -> Result<BTreeMap<&'static str, usize>, KmsError> {
        let mut counts = BTreeMap::new();
        self.for_each_key(|record| {
            *counts.entry(record.state().as_str()).or_default() += 1;
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
            if record.deletion_due(now) && self.delete_now(record.id, now)? {
                deleted += 1;
            }
            Ok(())
        })?;
        Ok(deleted)
    }

    /// The due deletions, expiries and automatic rotations in one pass over the store (each
    /// record read once): what the scheduler runs. Returns how many of each ran.
    pub fn run_due_work(&self) -> Result<DueWork, KmsError> {
        let now = self.clock.now_millis();
        let mut done = DueWork::default();
        self.for_each_key(|record| {
            if record.deletion_due(now) {
                done.deleted += usize::from(self.delete_now(record.id, now)?);
            } else if self.expire_if_due(&record, now)? {
                done.expired += 1;
            } else {
                done.rotated += usize::from(self.rotate_if_due(&record, now));
            }
            Ok(())
        })?;
        Ok(done)
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
    /// Deletes the key `id` if its deletion is due at `now_ms`, and says whether it did: its
    /// aliases go, every HSM object of every version is destroyed, then the record becomes a
    /// tombstone. Once due, a deletion can no longer be cancelled, so the HSM work runs
    /// without the write lock; each step is idempotent, so a crash anywhere is finished by
    /// the next run.
    ///
    /// A rotation begun before the deletion was scheduled may still be making its version's
    /// HSM object: the deletion waits for the next run, lest that object outlive the key.
    pub(super) fn delete_now(&self, id: KeyId, now_ms: i64) -> Result<bool, KmsError> {
        let record = {
            let _guard = self.write_guard();
            match self.store.get_key(id)?.filter(|r| r.deletion_due(now_ms)) {
                Some(record) if !self.pending_versions_under_way(&record) => record,
                _ => return Ok(false),
            }
        };
        self.deletions_under_way().insert(id);
        let deleted = self.destroy_and_bury(&record, now_ms);
        self.deletions_under_way().remove(&id);
        deleted
    }
    /// The keys whose due deletion is under way in this process.
    fn deletions_under_way(&self) -> MutexGuard<'_, HashSet<KeyId>> {
        self.deletions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
    /// The second half of [`Kms::delete_now`]: removes the aliases of `record`'s key, destroys
    /// its HSM objects, then writes its tombstone.
    fn destroy_and_bury(&self, record: &KeyRecord, now_ms: i64) -> Result<bool, KmsError> {
        let id = record.id;
        self.for_each_alias(|alias| {
            if alias.key_id == id {
                let _guard = self.write_guard();
                // Read again under the lock: the alias may have moved since the scan.
                if self
                    .store
                    .get_alias(&alias.name)?
                    .is_some_and(|a| a.key_id == id)
                {
                    self.store.delete_alias(&alias.name)?;
                    self.uncount_alias();
                }
            }
            Ok(())
        })?;
        for version in record.version_refs() {
            self.hsm.destroy_key_version(version)?;
        }
        if let Some(parameters) = record.import_parameters() {
            self.hsm.destroy_wrapping_key(crate::hsm::WrappingKeyRef {
                key_id: id,
                serial: parameters.serial,
            })?;
        }
        let _guard = self.write_guard();
        let Some(mut record) = self.store.get_key(id)?.filter(|r| r.deletion_due(now_ms)) else {
            return Ok(false);
        };
        record.mark_deleted()?;
        self.store.put_key(&record)?;
        self.key_count.fetch_sub(1, Ordering::SeqCst);
        info!(key_id = %id, "deleted key and destroyed its HSM objects");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use crate::service::test_support::*;

    #[test]
    fn one_pass_runs_due_deletions_and_rotations() {
        let store = Arc::new(crate::testing::MemoryStore::default());
        let hsm = Arc::new(crate::testing::SoftKeyStore::default());
        let clock = Arc::new(crate::testing::ManualClock::default());
        let kms =
            Kms::new(store, hsm, clock.clone()).with_authorization(crate::testing::authorization());
        let day = 86_400_000;
        let doomed = new_key(&kms);
        let rotating = new_key(&kms);
        ok(kms.enable_key_rotation(&admin(), &rotating, Some(90)));
        ok(kms.schedule_key_deletion(&admin(), &doomed, Some(7)));
        clock.set_millis(91 * day);
        let done = ok(kms.run_due_work());
        assert_eq!((done.deleted, done.expired, done.rotated), (1, 0, 1));
        assert_eq!(
            ok(kms.describe_key(&admin(), &rotating)).current_version(),
            2
        );
        assert_eq!(ok(kms.run_due_work()), super::DueWork::default());
    }

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
        assert_eq!(record.state(), KeyState::PendingDeletion);
        assert_eq!(
            record.deletion().map(|d| d.deletion_date_ms),
            Some(107 * day)
        );
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
            ok(kms.describe_key(&admin(), &key)).state(),
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
