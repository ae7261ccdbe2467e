//! Key rotation: on demand (at most ten per key) and automatic, and the list of versions.

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
    /// holds, as pending.
    fn begin_rotation(
        &self,
        mut record: KeyRecord,
        source: VersionSource,
    ) -> Result<(KeyId, u32), KmsError> {
        let next = record.begin_rotation(source, self.clock.now_millis())?;
        self.store.put_key(&record)?;
        Ok((record.id, next))
    }
    /// Makes the HSM object of the pending version `next` of key `id`, then makes the
    /// version current; if the HSM fails, forgets the version.
    fn make_version(&self, id: KeyId, next: u32) -> Result<KeyRecord, KmsError> {
        let object = KeyVersionRef {
            key_id: id,
            version: next,
        };
        if let Err(error) = self
            .hsm
            .create_key_version(object, KeyMaterial::MasterSecret)
        {
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
                    "a failed rotation is left for startup reconciliation");
            }
            return Err(error.into());
        }
        let now = self.clock.now_millis();
        let record = self.rewrite(id, |record| record.finish_rotation(next, now))?;
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
            if record.rotation_due(now) {
                match self.rotate_key(&KeyRef::Id(record.id), VersionSource::Automatic) {
                    Ok(_) => rotated += 1,
                    Err(error) => warn!(key_id = %record.id, error = %error,
                        reason = error.reason(), "automatic rotation failed; will retry"),
                }
            }
            Ok(())
        })?;
        Ok(rotated)
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
