//! Key rotation: on demand (at most ten per key) and automatic, and the list of versions.

use std::collections::HashSet;
use std::sync::{MutexGuard, PoisonError};

use tracing::{info, warn};

use crate::caller::Caller;
use crate::error::KmsError;
use crate::hsm::KeyVersionRef;
use crate::ids::KeyId;
use crate::ids::KeyRef;
use crate::key::{KeyMaterial, KeyRecord, KeyVersion, RotationSchedule, VersionSource};
use crate::policy::Action;

use super::{Kms, PageLimit, RotationPage, page_after};

impl Kms {
    /// Adds a version made inside the HSM and makes it current; old versions still decrypt.
    ///
    /// Crash-safe like creation: the version is recorded as pending before its HSM object
    /// exists and becomes current only after. The HSM makes the object without the write
    /// lock; a second rotation of the key meanwhile is refused (the pending version).
    pub(super) fn rotate_key(
        &self,
        key: &KeyRef,
        source: VersionSource,
    ) -> Result<KeyRecord, KmsError> {
        let (id, next) = {
            let _guard = self.write_guard();
            let record = self.resolve(key)?;
            self.begin_rotation(record, source)?
        };
        self.make_version(id, next)
    }
    /// Records the next version of `record`, read under the write lock, which the caller
    /// holds, as pending, and notes its rotation as under way. A pending version whose
    /// rotation is not under way (its cleanup failed) is removed first, with its HSM object,
    /// so that it does not block the key's rotations until a restart.
    fn begin_rotation(
        &self,
        mut record: KeyRecord,
        source: VersionSource,
    ) -> Result<(KeyId, u32), KmsError> {
        for stale in self.stale_pending_versions(&record) {
            self.hsm.destroy_key_version(stale)?;
            record.abandon_rotation(stale.version);
            info!(key_id = %record.id, version = stale.version,
                "removed a key version whose failed rotation was not cleaned up");
        }
        let next = record.begin_rotation(source, self.clock.now_millis())?;
        self.store.put_key(&record)?;
        self.rotations_under_way().insert(KeyVersionRef {
            key_id: record.id,
            version: next,
        });
        Ok((record.id, next))
    }
    /// The set of pending versions whose rotation is under way in this process.
    fn rotations_under_way(&self) -> MutexGuard<'_, HashSet<KeyVersionRef>> {
        self.rotations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
    /// Whether a pending version of `record` has its rotation under way.
    pub(super) fn pending_versions_under_way(&self, record: &KeyRecord) -> bool {
        let under_way = self.rotations_under_way();
        record.versions().iter().filter(|v| v.pending).any(|v| {
            under_way.contains(&KeyVersionRef {
                key_id: record.id,
                version: v.version,
            })
        })
    }
    /// The pending versions of `record` whose rotation is not under way: left by a rotation
    /// whose cleanup failed.
    fn stale_pending_versions(&self, record: &KeyRecord) -> Vec<KeyVersionRef> {
        let under_way = self.rotations_under_way();
        record
            .versions()
            .iter()
            .filter(|v| v.pending)
            .map(|v| KeyVersionRef {
                key_id: record.id,
                version: v.version,
            })
            .filter(|v| !under_way.contains(v))
            .collect()
    }
    /// Makes the HSM object of the pending version `next` of key `id`, then makes the
    /// version current; if the HSM fails, forgets the version. The rotation is no longer
    /// under way once this returns, whatever the outcome.
    pub(super) fn make_version(&self, id: KeyId, next: u32) -> Result<KeyRecord, KmsError> {
        let object = KeyVersionRef {
            key_id: id,
            version: next,
        };
        let made = self.make_version_under_way(object);
        self.rotations_under_way().remove(&object);
        made
    }
    fn make_version_under_way(&self, object: KeyVersionRef) -> Result<KeyRecord, KmsError> {
        let (id, next) = (object.key_id, object.version);
        let _making = self.making_material();
        let wrapped = match self.make_material(object, KeyMaterial::MasterSecret) {
            Ok((_, wrapped)) => wrapped,
            Err(error) => {
                let cleanup = self
                    .hsm
                    .destroy_key_version(object)
                    .map_err(KmsError::from)
                    .and_then(|()| {
                        self.rewrite(id, |record| {
                            record.abandon_rotation(next);
                            Ok(())
                        })
                    });
                if let Err(cleanup) = cleanup {
                    warn!(key_id = %id, error = %cleanup,
                    "a failed rotation is left for the next rotation or startup reconciliation");
                }
                return Err(error.into());
            }
        };
        let now = self.clock.now_millis();
        let mut refused = false;
        let finished = self.rewrite(id, |record| {
            let finished = record.finish_rotation(next, wrapped, now);
            refused = finished.is_err();
            finished
        });
        if refused {
            // The record takes the version no more (the key was deleted meanwhile): its
            // object must not outlive it. On a store error the record may have taken it, so
            // the object is kept for reconciliation.
            if let Err(cleanup) = self.hsm.destroy_key_version(object) {
                warn!(key_id = %id, error = %cleanup,
                    "could not destroy the object of a refused rotation");
            }
        }
        let record = finished?;
        info!(key_id = %id, version = next, "rotated key");
        Ok(record)
    }
    /// RotateKeyOnDemand: a new version now.
    pub fn rotate_key_on_demand(
        &self,
        caller: &Caller,
        key: &KeyRef,
    ) -> Result<KeyRecord, KmsError> {
        let (id, next) = {
            let _guard = self.write_guard();
            let record = self.authorized(caller, key, Action::RotateKeyOnDemand, None)?;
            self.begin_rotation(record, VersionSource::OnDemand)?
        };
        caller.note_key(id, Some(next));
        self.make_version(id, next)
    }
    /// Turns on automatic rotation every `period_days` (default 365), first due one period
    /// from now.
    pub fn enable_key_rotation(
        &self,
        caller: &Caller,
        key: &KeyRef,
        period_days: Option<u32>,
    ) -> Result<KeyRecord, KmsError> {
        let schedule = RotationSchedule::new(period_days, self.clock.now_millis())?;
        self.update(caller, key, Action::EnableKeyRotation, |record| {
            record.enable_rotation(schedule)
        })
    }
    /// Turns off automatic rotation.
    pub fn disable_key_rotation(
        &self,
        caller: &Caller,
        key: &KeyRef,
    ) -> Result<KeyRecord, KmsError> {
        self.update(
            caller,
            key,
            Action::DisableKeyRotation,
            KeyRecord::disable_rotation,
        )
    }
    /// The record, for GetKeyRotationStatus.
    pub fn get_key_rotation_status(
        &self,
        caller: &Caller,
        key: &KeyRef,
    ) -> Result<KeyRecord, KmsError> {
        self.authorized(caller, key, Action::GetKeyRotationStatus, None)
    }
    /// Rotates every Enabled key whose automatic rotation is due, and returns how many. Keys
    /// that are not Enabled wait until they are. A failure is logged and retried next time.
    pub fn run_due_rotations(&self) -> Result<usize, KmsError> {
        let now = self.clock.now_millis();
        let mut rotated = 0;
        self.for_each_key(|record| {
            rotated += usize::from(self.rotate_if_due(&record, now));
            Ok(())
        })?;
        Ok(rotated)
    }

    /// Rotates `record`'s key if its automatic rotation is due at `now`; returns whether it
    /// did. A failure is logged and retried next time.
    pub(super) fn rotate_if_due(&self, record: &KeyRecord, now: i64) -> bool {
        if !record.rotation_due(now) {
            return false;
        }
        match self.rotate_key(&KeyRef::Id(record.id), VersionSource::Automatic) {
            Ok(_) => true,
            Err(error) => {
                warn!(key_id = %record.id, error = %error,
                    reason = error.reason(), "automatic rotation failed; will retry");
                false
            }
        }
    }
    /// The rotations of a key (every version after the first), oldest first.
    pub fn list_key_rotations(
        &self,
        caller: &Caller,
        key: &KeyRef,
        limit: PageLimit,
        page_token: Option<&str>,
    ) -> Result<RotationPage, KmsError> {
        let record = self.authorized(caller, key, Action::ListKeyRotations, None)?;
        let key_id = record.id;
        let after = page_after(page_token, "ListKeyRotations", str::parse::<u32>)?.unwrap_or(1);
        let mut rotations: Vec<KeyVersion> = record
            .versions()
            .iter()
            .filter(|v| !v.pending && v.version > after)
            .take(limit.fetch())
            .cloned()
            .collect();
        let next_page_token = limit.cut(&mut rotations, |v| v.version.to_string());
        Ok(RotationPage {
            key_id,
            rotations,
            next_page_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::service::test_support::*;

    #[test]
    fn rotation_makes_a_new_current_version_and_old_blobs_still_decrypt() {
        let (kms, _, hsm) = memory_kms();
        let key = new_key(&kms);
        let old = ok(kms.encrypt(&admin(), &key, &plaintext(b"old"), &ctx(&[]))).ciphertext_blob;
        let rotated = ok(kms.rotate_key(&key, VersionSource::OnDemand));
        assert_eq!(rotated.current_version(), 2);
        let new = ok(kms.encrypt(&admin(), &key, &plaintext(b"new"), &ctx(&[]))).ciphertext_blob;
        assert_eq!(ok(blob::parse(&new)).header.key.version, 2);
        assert_eq!(
            ok(kms.decrypt(&admin(), &old, &ctx(&[]), None))
                .plaintext
                .expose_secret(),
            b"old"
        );
        assert_eq!(
            ok(kms.decrypt(&admin(), &new, &ctx(&[]), None))
                .plaintext
                .expose_secret(),
            b"new"
        );
        // ReEncrypt to the same key moves a blob to the current version.
        let moved = ok(kms.re_encrypt(&admin(), &ReEncryptInput::new(&old, &ctx(&[]), &key)));
        assert_eq!(
            ok(blob::parse(&moved.ciphertext_blob)).header.key.version,
            2
        );

        let page = ok(kms.list_key_rotations(&admin(), &key, ok(PageLimit::new(0)), None));
        assert_eq!(page.rotations.len(), 1);
        assert_eq!(page.rotations[0].source, VersionSource::OnDemand);

        hsm.set_fail_creation(true);
        assert!(kms.rotate_key(&key, VersionSource::OnDemand).is_err());
        let record = ok(kms.describe_key(&admin(), &key));
        assert_eq!(record.current_version(), 2);
        assert_eq!(
            record.versions().len(),
            2,
            "a failed rotation leaves no version"
        );

        hsm.set_fail_creation(false);
        ok(kms.disable_key(&admin(), &key));
        assert!(matches!(
            kms.rotate_key(&key, VersionSource::OnDemand),
            Err(KmsError::Disabled(_))
        ));
    }

    #[test]
    fn automatic_rotation_runs_when_due_and_only_then() {
        let store = Arc::new(crate::testing::MemoryStore::default());
        let hsm = Arc::new(crate::testing::SoftKeyStore::default());
        let clock = Arc::new(crate::testing::ManualClock::default());
        let kms =
            Kms::new(store, hsm, clock.clone()).with_authorization(crate::testing::authorization());
        let day = 86_400_000;
        clock.set_millis(1_000 * day);
        let key = new_key(&kms);
        assert!(matches!(
            kms.enable_key_rotation(&admin(), &key, Some(89)),
            Err(KmsError::Validation(_))
        ));
        assert!(matches!(
            kms.enable_key_rotation(&admin(), &key, Some(2561)),
            Err(KmsError::Validation(_))
        ));
        ok(kms.enable_key_rotation(&admin(), &key, Some(90)));
        let schedule = ok(kms.describe_key(&admin(), &key)).rotation();
        assert_eq!(schedule.map(|s| s.next_rotation_ms), Some(1_090 * day));

        clock.set_millis(1_089 * day);
        assert_eq!(ok(kms.run_due_rotations()), 0);
        clock.set_millis(1_090 * day);
        assert_eq!(ok(kms.run_due_rotations()), 1);
        let record = ok(kms.describe_key(&admin(), &key));
        assert_eq!(record.current_version(), 2);
        assert_eq!(record.versions()[1].source, VersionSource::Automatic);
        assert_eq!(
            record.rotation().map(|s| s.next_rotation_ms),
            Some(1_180 * day)
        );
        assert_eq!(
            ok(kms.run_due_rotations()),
            0,
            "not due again until the next period"
        );

        // A disabled key waits; disabling rotation stops it.
        clock.set_millis(1_200 * day);
        ok(kms.disable_key(&admin(), &key));
        assert_eq!(ok(kms.run_due_rotations()), 0);
        ok(kms.enable_key(&admin(), &key));
        ok(kms.disable_key_rotation(&admin(), &key));
        assert_eq!(ok(kms.run_due_rotations()), 0);
        assert_eq!(ok(kms.describe_key(&admin(), &key)).current_version(), 2);
    }

    /// Finding 6: a key takes ten on-demand rotations in its life.
    #[test]
    fn on_demand_rotations_are_capped() {
        let (kms, _, _) = memory_kms();
        let key = new_key(&kms);
        for _ in 0..KeyRecord::MAX_ON_DEMAND_ROTATIONS {
            ok(kms.rotate_key_on_demand(&admin(), &key));
        }
        assert!(matches!(
            kms.rotate_key_on_demand(&admin(), &key),
            Err(KmsError::LimitExceeded(_))
        ));
        // Automatic rotation is not capped.
        ok(kms.rotate_key(&key, VersionSource::Automatic));
    }
}
