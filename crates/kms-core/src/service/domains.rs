//! Domain key rotation (README, "The key hierarchy"): a newer domain key is made current, the
//! wrapped material of every key version is wrapped again under it in the background, and the
//! older domain keys are destroyed once no record refers to them. Copies of the store made
//! before then can no longer be unwrapped: this is what makes a key's deletion final.
//!
//! Resumable by construction: a pass reads every record and rewraps what is not under the
//! current domain key, so a restart (or a crash mid-pass) simply runs the pass again.
//! `domain_switch` keeps material made under the old domain key from reaching the store after
//! a pass began: every path that makes material holds it shared until the record is written,
//! and the switch holds it alone.

use std::sync::atomic::Ordering;
use std::sync::{PoisonError, RwLockReadGuard};

use tracing::{info, warn};

use crate::caller::Caller;
use crate::error::KmsError;
use crate::hsm::{DomainKeyInfo, HsmError, KeyVersionRef, VersionObject};
use crate::key::{KeyRecord, KeyStorage};
use crate::policy::Action;

use super::Kms;

/// Where domain key rotation stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DomainStatus {
    /// The domain key new material is wrapped under.
    pub current: u32,
    /// Whether the current domain key lets a newer one rewrap what it wraps (trusted), or
    /// never lets it go (sealed: such a deployment never rotates its domain key).
    pub rewrappable: bool,
    /// The rewrapping of this process.
    pub rewrap: RewrapProgress,
    /// Keys there are (not deleted), which a pass reads.
    pub key_count: u64,
    /// This kmsd instance's id (hex), which names its domain keys on the token.
    pub instance_id: String,
}

/// The progress of rewrapping under the current domain key since kmsd started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RewrapProgress {
    /// A pass is running, or wanted (after a start or a rotation).
    pub running: bool,
    /// The last pass found every version under the current domain key.
    pub finished: bool,
    /// Keys read by the running (or the last) pass.
    pub keys_scanned: u64,
    /// Versions rewrapped since kmsd started.
    pub versions_rewrapped: u64,
    /// Versions the last complete pass could not rewrap (wrapped under a sealed domain key).
    pub versions_left: u64,
    /// Older domain keys destroyed since kmsd started.
    pub destroyed: Vec<u32>,
    /// Why the last pass failed, if it did (it is tried again).
    pub error: Option<String>,
}

/// How many missing domain key versions in a row end the search for older ones to destroy.
const DOMAIN_GAP: u32 = 16;

/// What a rewrapping pass did.
#[derive(Default)]
struct Tally {
    rewrapped: u64,
    /// Versions under a sealed domain key: never rewrapped.
    sealed: u64,
    /// Versions that failed this time; tried again by the next pass.
    failed: u64,
    last_error: Option<String>,
}

impl Kms {
    /// The current domain key, from the store, made current in the HSM: run at startup before
    /// serving. Fails when the HSM does not hold it (with trusted domain keys, the error names
    /// the ceremony that makes it). `None` when new versions are token objects and no domain
    /// key was ever rotated: nothing is then made, and versions wrapped before find their
    /// domain key when used.
    pub fn open_domain(&self) -> Result<Option<DomainKeyInfo>, KmsError> {
        let recorded = self.store.current_domain()?;
        if recorded.is_none() && self.storage == KeyStorage::Token {
            return Ok(None);
        }
        let version = recorded.unwrap_or(1);
        let info = self.hsm.use_domain(version)?;
        self.current_domain.store(version, Ordering::SeqCst);
        self.rewrappable.store(info.rewrappable, Ordering::SeqCst);
        // A pass after each start, unless the last one found everything under this domain
        // key (one at least, for a store made before the mark: it reads every record).
        let finished = self.store.rewrapped_domain()? == Some(version);
        let mut progress = self.rewrap_progress();
        progress.running = !finished;
        progress.finished = finished;
        Ok(Some(info))
    }

    /// Makes the next domain key current and starts rewrapping every version under it. The
    /// HSM must hold the next domain key (the ceremony makes it), and both domain keys must
    /// be trusted: what a sealed one unwraps can never be wrapped again.
    pub fn rotate_domain(&self, caller: &Caller) -> Result<DomainStatus, KmsError> {
        self.authorize_server(caller, Action::RotateDomainKey)?;
        let _switch = self
            .domain_switch
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.current_domain();
        let sealed = |version: u32| {
            KmsError::UnsupportedOperation(format!(
                "domain key {version} is sealed: what it unwraps can never be wrapped again, so \
                 a deployment with sealed domain keys cannot rotate them (see the README's key \
                 hierarchy: trusted domain keys)"
            ))
        };
        if !self.hsm.domain_key(current)?.is_some_and(|d| d.rewrappable) {
            return Err(sealed(current));
        }
        let next = current.checked_add(1).ok_or_else(|| {
            KmsError::LimitExceeded("no domain key version after this one".into())
        })?;
        match self.hsm.domain_key(next)? {
            Some(domain) if domain.rewrappable => {}
            Some(_) => return Err(sealed(next)),
            None => {
                let instance = hex::encode(self.store.instance_id());
                return Err(KmsError::InvalidState(format!(
                    "the HSM holds no domain key {next}: the token's security officer makes it \
                     first (kmsctl hsm make-domain-key --instance {instance} --version {next})"
                )));
            }
        }
        let info = self.hsm.use_domain(next)?;
        if let Err(error) = self.store.put_current_domain(next) {
            // Back to the recorded one, so that no material is wrapped under an unrecorded one.
            self.hsm.use_domain(current)?;
            return Err(error.into());
        }
        self.current_domain.store(next, Ordering::SeqCst);
        self.rewrappable.store(info.rewrappable, Ordering::SeqCst);
        {
            let mut progress = self.rewrap_progress();
            progress.running = true;
            progress.finished = false;
            progress.error = None;
        }
        info!(
            from = current,
            to = next,
            "rotated the domain key; rewrapping every key version"
        );
        Ok(self.domain_status_now())
    }

    /// Where domain key rotation stands.
    pub fn domain_status(&self, caller: &Caller) -> Result<DomainStatus, KmsError> {
        self.authorize_server(caller, Action::GetDomainKeyStatus)?;
        Ok(self.domain_status_now())
    }

    /// Where domain key rotation stands, from memory: a status call never waits for the HSM,
    /// which a running pass keeps busy.
    fn domain_status_now(&self) -> DomainStatus {
        DomainStatus {
            current: self.current_domain(),
            rewrappable: self.rewrappable.load(Ordering::SeqCst),
            rewrap: self.rewrap_progress().clone(),
            key_count: self.key_count.load(Ordering::SeqCst) as u64,
            instance_id: hex::encode(self.store.instance_id()),
        }
    }

    /// Whether a rewrapping pass is wanted (after a start or a rotation, or a failed pass).
    pub fn rewrap_wanted(&self) -> bool {
        self.rewrap_progress().running
    }

    /// One rewrapping pass: every version wrapped under an older domain key is rewrapped under
    /// the current one; deleted keys' leftover material is dropped; when nothing refers to an
    /// older domain key any more, it is destroyed. A version that fails (an HSM error, a
    /// record whose material does not authenticate) does not stop the pass: it is counted,
    /// the older domain keys are kept, and the pass is wanted again (the pass then fails).
    /// Returns the versions rewrapped.
    pub fn run_rewrap_pass(&self) -> Result<u64, KmsError> {
        let current = self.current_domain();
        self.rewrap_progress().keys_scanned = 0;
        let mut tally = Tally::default();
        let pass = self.for_each_key(|record| {
            self.rewrap_progress().keys_scanned += 1;
            self.rewrap_record(&record, current, &mut tally)
        });
        let outcome = pass.and_then(|()| {
            if tally.failed == 0 && tally.sealed == 0 {
                let destroyed = self.destroy_older_domains(current)?;
                if self.current_domain() == current {
                    self.store.put_rewrapped_domain(current)?;
                }
                Ok(destroyed)
            } else {
                Ok(Vec::new())
            }
        });
        let mut progress = self.rewrap_progress();
        let destroyed = match outcome {
            Ok(destroyed) => destroyed,
            Err(error) => {
                warn!(error = %error, "rewrapping under the current domain key failed; will retry");
                progress.error = Some(error.to_string());
                return Err(error);
            }
        };
        progress.destroyed.extend(destroyed);
        progress.versions_left = tally.sealed + tally.failed;
        progress.error = tally.last_error.take();
        // A rotation while this pass ran wants a pass of its own; so does a failed version.
        let rotated_meanwhile = self.current_domain() != current;
        progress.running = rotated_meanwhile || tally.failed > 0;
        progress.finished = !progress.running && tally.sealed == 0;
        if tally.sealed > 0 {
            warn!(
                versions = tally.sealed,
                "key versions stay under sealed domain keys, which are kept"
            );
        }
        if tally.rewrapped > 0 {
            info!(
                rewrapped = tally.rewrapped,
                domain = current,
                "rewrapped key versions under the current domain key"
            );
        }
        if tally.failed > 0 {
            return Err(KmsError::Internal(
                format!(
                    "{} key versions could not be rewrapped; the pass is tried again",
                    tally.failed
                )
                .into(),
            ));
        }
        Ok(tally.rewrapped)
    }

    /// Destroys the domain keys older than `current` that the HSM still holds, newest first,
    /// stopping at the first gap of [`DOMAIN_GAP`] versions (older ones went in earlier
    /// passes); returns the versions destroyed.
    fn destroy_older_domains(&self, current: u32) -> Result<Vec<u32>, KmsError> {
        let mut destroyed = Vec::new();
        let mut missing = 0;
        for version in (1..current).rev() {
            if self.hsm.destroy_domain(version)? {
                info!(
                    domain = version,
                    "destroyed a domain key nothing refers to any more"
                );
                destroyed.push(version);
                missing = 0;
            } else {
                missing += 1;
                if missing == DOMAIN_GAP {
                    break;
                }
            }
        }
        destroyed.reverse();
        Ok(destroyed)
    }

    /// Rewraps `record`'s versions that are not under domain `current`, counting in `tally`.
    fn rewrap_record(
        &self,
        record: &KeyRecord,
        current: u32,
        tally: &mut Tally,
    ) -> Result<(), KmsError> {
        let id = record.id;
        if record.state() == crate::key::KeyState::Deleted {
            if record.versions().iter().any(|v| v.wrapped.is_some()) {
                self.rewrite(id, |r| {
                    r.forget_deleted_material();
                    Ok(())
                })?;
            }
            return Ok(());
        }
        for version in record.versions() {
            let Some(old) = version.wrapped.as_ref().filter(|w| w.domain_key != current) else {
                continue;
            };
            let key = KeyVersionRef {
                key_id: id,
                version: version.version,
            };
            let object = VersionObject {
                key,
                wrapped: Some(old),
            };
            let new = match self.hsm.rewrap_version(object, record.material()) {
                Ok(new) => new,
                Err(HsmError::Unsupported { .. }) => {
                    tally.sealed += 1;
                    continue;
                }
                Err(error) => {
                    warn!(key_id = %id, version = version.version, error = %error,
                        "could not rewrap a key version; its domain key is kept");
                    tally.failed += 1;
                    tally.last_error = Some(format!("{key}: {error}"));
                    continue;
                }
            };
            let mut replaced = false;
            match self.rewrite(id, |r| {
                replaced = r.rewrapped(version.version, old, new);
                Ok(())
            }) {
                // A key deleted meanwhile has nothing left to rewrap.
                Ok(_) | Err(KmsError::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
            if replaced {
                tally.rewrapped += 1;
                self.rewrap_progress().versions_rewrapped += 1;
            } else {
                // The version changed meanwhile (its material deleted, say): read it again.
                tally.failed += 1;
            }
        }
        Ok(())
    }

    /// The domain key new material is wrapped under (1 until a rotation).
    pub(super) fn current_domain(&self) -> u32 {
        self.current_domain.load(Ordering::SeqCst).max(1)
    }

    /// Held while material is made and its record written: a domain key switch waits for it.
    pub(super) fn making_material(&self) -> RwLockReadGuard<'_, ()> {
        self.domain_switch
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn rewrap_progress(&self) -> std::sync::MutexGuard<'_, RewrapProgress> {
        self.rewrap.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use crate::service::test_support::*;
    use crate::testing::{ManualClock, MemoryStore, SoftKeyStore};

    /// The domain key versions of every wrapped version in the store.
    fn domains_in(store: &MemoryStore) -> Vec<u32> {
        let records = ok(store.list_keys(None, 1000).map_err(KmsError::from));
        records
            .iter()
            .flat_map(|r| r.versions().iter())
            .filter_map(|v| v.wrapped.as_ref().map(|w| w.domain_key))
            .collect()
    }

    fn kms_on(store: &Arc<MemoryStore>, hsm: &Arc<SoftKeyStore>, clock: &Arc<ManualClock>) -> Kms {
        let kms = Kms::new(store.clone(), hsm.clone(), clock.clone())
            .with_authorization(crate::testing::authorization());
        ok(kms.open_domain());
        kms
    }

    #[test]
    fn a_rotation_rewraps_every_version_and_then_destroys_the_old_domain_key() {
        let (kms, store, hsm) = memory_kms();
        let key = new_key(&kms);
        let old = ok(kms.encrypt(&admin(), &key, &plaintext(b"old"), &ctx(&[]))).ciphertext_blob;
        ok(kms.rotate_key_on_demand(&admin(), &key));
        let newer =
            ok(kms.encrypt(&admin(), &key, &plaintext(b"newer"), &ctx(&[]))).ciphertext_blob;
        let mac_key =
            KeyRef::Id(ok(kms.create_key(&admin(), CreateKeyInput::new(KeySpec::Hmac256))).id());
        let mac = ok(kms.generate_mac(
            &admin(),
            &mac_key,
            b"m",
            crate::key::MacAlgorithm::HmacSha256,
        ))
        .mac;
        assert_eq!(domains_in(&store), [1, 1, 1]);

        ok(hsm.add_domain(2).map_err(KmsError::from));
        let status = ok(kms.rotate_domain(&admin()));
        assert_eq!((status.current, status.rewrap.running), (2, true));
        assert_eq!(ok(store.current_domain().map_err(KmsError::from)), Some(2));
        // New material goes under domain key 2 at once, before any rewrapping.
        let fresh = new_key(&kms);
        assert_eq!(domains_in(&store).iter().filter(|d| **d == 2).count(), 1);

        assert_eq!(ok(kms.run_rewrap_pass()), 3);
        assert_eq!(domains_in(&store), [2, 2, 2, 2]);
        assert_eq!(hsm.domain_versions(), [2], "domain key 1 is destroyed");
        let status = ok(kms.domain_status(&admin()));
        assert!(
            status.rewrap.finished && !status.rewrap.running,
            "{status:?}"
        );
        assert_eq!(status.rewrap.destroyed, [1]);
        for (blob, text) in [(&old, &b"old"[..]), (&newer, &b"newer"[..])] {
            let back = ok(kms.decrypt(&admin(), blob, &ctx(&[]), None));
            assert_eq!(back.plaintext.expose_secret(), text);
        }
        ok(kms.verify_mac(
            &admin(),
            &mac_key,
            b"m",
            &mac,
            crate::key::MacAlgorithm::HmacSha256,
        ));
        ok(kms.encrypt(&admin(), &fresh, &plaintext(b"x"), &ctx(&[])));
        assert_eq!(
            ok(kms.run_rewrap_pass()),
            0,
            "a second pass has nothing to do"
        );
    }

    #[test]
    fn a_restart_resumes_rewrapping_where_the_store_says() {
        let (store, hsm) = (
            Arc::new(MemoryStore::default()),
            Arc::new(SoftKeyStore::default()),
        );
        let clock = Arc::new(ManualClock::default());
        let kms = kms_on(&store, &hsm, &clock);
        let key = new_key(&kms);
        let blob = ok(kms.encrypt(&admin(), &key, &plaintext(b"x"), &ctx(&[]))).ciphertext_blob;
        ok(hsm.add_domain(2).map_err(KmsError::from));
        ok(kms.rotate_domain(&admin()));
        drop(kms); // a crash before any rewrapping

        let kms = kms_on(&store, &hsm, &clock);
        assert!(kms.rewrap_wanted());
        assert_eq!(ok(kms.domain_status(&admin())).current, 2);
        assert_eq!(ok(kms.run_rewrap_pass()), 1);
        assert_eq!(domains_in(&store), [2]);
        ok(kms.decrypt(&admin(), &blob, &ctx(&[]), None));
        drop(kms);

        // The finished pass is recorded: the next start reads no record for it.
        let kms = kms_on(&store, &hsm, &clock);
        assert!(!kms.rewrap_wanted());
        assert!(ok(kms.domain_status(&admin())).rewrap.finished);
    }

    #[test]
    fn a_rotation_needs_the_next_domain_key_a_trusted_one_and_an_administrator() {
        let (kms, _, hsm) = memory_kms();
        new_key(&kms);
        match kms.rotate_domain(&admin()) {
            Err(KmsError::InvalidState(message)) => {
                assert!(message.contains("kmsctl hsm make-domain-key"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        ok(hsm.add_domain(2).map_err(KmsError::from));
        assert!(denied(
            kms.rotate_domain(&Caller::new("someone-else", true))
        ));
        assert!(denied(
            kms.domain_status(&Caller::new("someone-else", true))
        ));
        hsm.set_sealed_domains(true);
        assert!(matches!(
            kms.rotate_domain(&admin()),
            Err(KmsError::UnsupportedOperation(_))
        ));
        assert_eq!(
            ok(kms.domain_status(&admin())).current,
            1,
            "nothing changed"
        );
    }

    #[test]
    fn a_rotation_while_a_pass_runs_gets_a_pass_of_its_own() {
        use crate::testing::{Fault, FaultyKeyStore};
        let (store, soft) = (
            Arc::new(MemoryStore::default()),
            Arc::new(SoftKeyStore::default()),
        );
        let hsm = Arc::new(FaultyKeyStore::new(
            soft.clone(),
            |op| op == "rewrap_version",
            Fault::Delay(std::time::Duration::from_millis(300)),
            1,
        ));
        let kms = Arc::new(
            Kms::new(store.clone(), hsm, Arc::new(ManualClock::default()))
                .with_authorization(crate::testing::authorization()),
        );
        ok(kms.open_domain());
        let blob = {
            let key = new_key(&kms);
            ok(kms.encrypt(&admin(), &key, &plaintext(b"x"), &ctx(&[]))).ciphertext_blob
        };
        ok(soft.add_domain(2).map_err(KmsError::from));
        ok(kms.rotate_domain(&admin()));
        let pass = {
            let kms = Arc::clone(&kms);
            std::thread::spawn(move || kms.run_rewrap_pass())
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        ok(soft.add_domain(3).map_err(KmsError::from));
        ok(kms.rotate_domain(&admin()));
        let first = pass.join().unwrap_or_else(|_| panic!("the pass panicked"));
        ok(first);
        assert!(kms.rewrap_wanted(), "the rotation to 3 was forgotten");
        assert!(!ok(kms.domain_status(&admin())).rewrap.finished);
        ok(kms.run_rewrap_pass());
        assert_eq!(domains_in(&store), [3]);
        assert_eq!(soft.domain_versions(), [3]);
        ok(kms.decrypt(&admin(), &blob, &ctx(&[]), None));
    }

    #[test]
    fn a_version_that_cannot_be_rewrapped_stops_neither_the_pass_nor_keeps_it_quiet() {
        let (kms, store, hsm) = memory_kms();
        let a = new_key(&kms);
        let b = new_key(&kms);
        // Whichever comes first in the pass, one record's material no longer authenticates.
        let KeyRef::Id(broken) = a.clone() else {
            panic!("the tests name keys by id")
        };
        let mut record = ok(store.get_key(broken).map_err(KmsError::from))
            .unwrap_or_else(|| panic!("no record"));
        let mut json = serde_json::to_value(&record).unwrap_or_else(|e| panic!("{e}"));
        json["versions"][0]["wrapped"]["tag"] = serde_json::json!([0, 1, 2]);
        record = serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"));
        ok(store.put_key(&record).map_err(KmsError::from));

        ok(hsm.add_domain(2).map_err(KmsError::from));
        ok(kms.rotate_domain(&admin()));
        assert!(kms.run_rewrap_pass().is_err(), "the failure is reported");
        let status = ok(kms.domain_status(&admin()));
        assert!(
            status.rewrap.running && !status.rewrap.finished,
            "{status:?}"
        );
        assert_eq!(status.rewrap.versions_left, 1);
        assert!(
            status
                .rewrap
                .error
                .is_some_and(|e| e.contains(&broken.to_string()))
        );
        let mut domains = domains_in(&store);
        domains.sort_unstable();
        assert_eq!(domains, [1, 2], "the good key was rewrapped");
        assert_eq!(hsm.domain_versions(), [1, 2], "domain key 1 is kept");
        ok(kms.encrypt(&admin(), &b, &plaintext(b"x"), &ctx(&[])));
    }

    #[test]
    fn a_deleted_key_keeps_no_wrapped_material() {
        let (store, hsm) = (
            Arc::new(MemoryStore::default()),
            Arc::new(SoftKeyStore::default()),
        );
        let clock = Arc::new(ManualClock::default());
        let kms = kms_on(&store, &hsm, &clock);
        let key = new_key(&kms);
        ok(kms.schedule_key_deletion(&admin(), &key, Some(7)));
        clock.set_millis(8 * 86_400_000);
        assert_eq!(ok(kms.run_due_deletions()), 1);
        assert!(
            domains_in(&store).is_empty(),
            "the tombstone holds no material"
        );
    }
}
