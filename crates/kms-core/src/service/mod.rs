//! The service logic: every operation of the API, on top of a [`KeyStore`] and a
//! [`MetadataStore`]. Transports (gRPC today) only convert requests into the inputs below and
//! results back.
//!
//! This module holds key management and symmetric encryption; [`sign`] holds the public-key
//! and MAC operations, [`import`] the import of key material.

mod import;
mod sign;

pub use import::{ImportParametersIssued, MATERIAL_CHECK_INPUT};
pub use sign::{MacOutput, PublicKeyInfo, SignatureOutput};

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tracing::{debug, info, warn};

use crate::alias::{self, AliasRecord};
use crate::blob;
use crate::caller::Caller;
use crate::clock::Clock;
use crate::context::EncryptionContext;
use crate::error::KmsError;
use crate::hsm::{HsmError, KeyStore, KeyVersionRef};
use crate::ids::{AliasName, KeyId, KeyRef};
use crate::key::{
    EncryptionAlgorithm, ImportState, KeyMaterial, KeyRecord, KeySpec, KeyState, KeyUsage,
    KeyVersion, Origin, PendingDeletion, RotationSchedule, VersionSource,
};
use crate::policy::{AccessRequest, Action, Decision, KeyPolicy};
use crate::secret::SecretBytes;
use crate::store::MetadataStore;
use crate::symmetric;
use crate::tags::{self, NewTags};

/// A plaintext for Encrypt: 1..=4096 bytes.
pub struct Plaintext(SecretBytes);

impl Plaintext {
    /// The most bytes Encrypt takes.
    pub const MAX_LEN: usize = 4096;

    /// Checks the length; the message never shows the bytes.
    pub fn new(bytes: SecretBytes) -> Result<Self, KmsError> {
        if bytes.is_empty() || bytes.len() > Self::MAX_LEN {
            return Err(KmsError::validation(format!(
                "plaintext must be 1 to {} bytes, got {}",
                Self::MAX_LEN,
                bytes.len()
            )));
        }
        Ok(Plaintext(bytes))
    }
}

/// The AES key sizes GenerateDataKey names.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DataKeySpec {
    /// 16 bytes.
    Aes128,
    /// 32 bytes.
    Aes256,
}

/// The length of a data key: 1..=1024 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DataKeyLength(usize);

impl DataKeyLength {
    /// The most bytes a data key may have.
    pub const MAX: u32 = 1024;

    /// From the request's `key_spec` and `number_of_bytes`: exactly one must be given.
    pub fn new(spec: Option<DataKeySpec>, number_of_bytes: Option<u32>) -> Result<Self, KmsError> {
        match (spec, number_of_bytes) {
            (Some(DataKeySpec::Aes128), None) => Ok(DataKeyLength(16)),
            (Some(DataKeySpec::Aes256), None) => Ok(DataKeyLength(32)),
            (None, Some(n)) if (1..=Self::MAX).contains(&n) => Ok(DataKeyLength(n as usize)),
            (None, Some(n)) => Err(KmsError::validation(format!(
                "number_of_bytes must be 1 to {}, got {n}",
                Self::MAX
            ))),
            (Some(_), Some(_)) => Err(KmsError::validation(
                "give either key_spec or number_of_bytes, not both",
            )),
            (None, None) => Err(KmsError::validation(
                "one of key_spec (AES_128, AES_256) or number_of_bytes is required",
            )),
        }
    }
}

/// The number of bytes GenerateRandom returns: 1..=1024.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RandomLength(usize);

impl RandomLength {
    /// The most bytes GenerateRandom returns.
    pub const MAX: u32 = 1024;

    /// Checks the range.
    pub fn new(number_of_bytes: u32) -> Result<Self, KmsError> {
        if (1..=Self::MAX).contains(&number_of_bytes) {
            Ok(RandomLength(number_of_bytes as usize))
        } else {
            Err(KmsError::validation(format!(
                "number_of_bytes must be 1 to {}, got {number_of_bytes}",
                Self::MAX
            )))
        }
    }
}

/// A validated CreateKey request.
pub struct CreateKeyInput {
    /// At most 8192 characters.
    pub description: String,
    /// What the key is for; `None` gives the spec's default (ENCRYPT_DECRYPT, or SIGN_VERIFY
    /// for ECC, GENERATE_VERIFY_MAC for HMAC).
    pub usage: Option<KeyUsage>,
    /// The type of key material.
    pub spec: KeySpec,
    /// Where the material comes from.
    pub origin: Origin,
    /// Tags to attach.
    pub tags: NewTags,
    /// The key policy document (JSON), parsed once the caller may create keys; `None` gives
    /// the default policy (the creator and the administrators have full access).
    pub policy: Option<String>,
    /// Accept a policy that would not let the creator call PutKeyPolicy.
    pub bypass_policy_lockout_safety_check: bool,
}

impl CreateKeyInput {
    /// A key of `spec` made in the HSM, with the spec's default usage, no description, no
    /// tags and the default policy.
    pub fn new(spec: KeySpec) -> Self {
        CreateKeyInput {
            description: String::new(),
            usage: None,
            spec,
            origin: Origin::Kms,
            tags: NewTags::default(),
            policy: None,
            bypass_policy_lockout_safety_check: false,
        }
    }
}

/// A ListKeys page size: 1..=1000, 100 by default.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PageLimit(usize);

impl PageLimit {
    /// The page size when none is given.
    pub const DEFAULT: u32 = 100;
    /// The largest page.
    pub const MAX: u32 = 1000;

    /// 0 means the default.
    pub fn new(limit: u32) -> Result<Self, KmsError> {
        match limit {
            0 => Ok(PageLimit(Self::DEFAULT as usize)),
            1..=Self::MAX => Ok(PageLimit(limit as usize)),
            _ => Err(KmsError::validation(format!(
                "limit must be 1 to {}, got {limit}",
                Self::MAX
            ))),
        }
    }
}

/// One page of ListKeys.
pub struct KeyPage {
    /// Key ids in ascending order.
    pub keys: Vec<KeyId>,
    /// The token of the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// One page of ListKeyRotations.
pub struct RotationPage {
    /// The key.
    pub key_id: KeyId,
    /// Versions after the first, oldest first.
    pub rotations: Vec<KeyVersion>,
    /// The token of the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// One page of ListResourceTags.
pub struct TagPage {
    /// (tag key, tag value) in tag-key order.
    pub tags: Vec<(String, String)>,
    /// The token of the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// One page of ListAliases.
pub struct AliasPage {
    /// Aliases in name order.
    pub aliases: Vec<AliasRecord>,
    /// The token of the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// The result of Encrypt.
pub struct Encrypted {
    /// The v1 blob.
    pub ciphertext_blob: Vec<u8>,
    /// The key's id.
    pub key_id: KeyId,
    /// The algorithm used.
    pub algorithm: EncryptionAlgorithm,
}

/// The result of Decrypt.
pub struct Decrypted {
    /// The plaintext.
    pub plaintext: SecretBytes,
    /// The key the blob was made under.
    pub key_id: KeyId,
    /// The algorithm used.
    pub algorithm: EncryptionAlgorithm,
}

/// The result of ReEncrypt.
pub struct ReEncrypted {
    /// The new blob.
    pub ciphertext_blob: Vec<u8>,
    /// The key the old blob was made under.
    pub source_key_id: KeyId,
    /// The key of the new blob.
    pub key_id: KeyId,
}

/// The result of GenerateDataKey.
pub struct DataKey {
    /// The data key encrypted under the KMS key.
    pub ciphertext_blob: Vec<u8>,
    /// The data key itself.
    pub plaintext: SecretBytes,
    /// The KMS key's id.
    pub key_id: KeyId,
}

/// What startup reconciliation found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Keys whose creation never finished; removed with their HSM objects.
    pub abandoned_keys: usize,
    /// HSM objects of this instance that no key record names. Kept, not destroyed: key
    /// creation records a key before making its object, so only a store restored from an old
    /// backup leaves such objects, and destroying them would destroy keys that blobs need.
    pub unreferenced_objects: Vec<KeyVersionRef>,
    /// Key versions whose HSM object is missing (the key cannot be used).
    pub missing_objects: Vec<KeyVersionRef>,
}

/// The key management service.
pub struct Kms {
    store: Arc<dyn MetadataStore>,
    hsm: Arc<dyn KeyStore>,
    clock: Arc<dyn Clock>,
    /// Serialises read-modify-write of key records.
    write_lock: Mutex<()>,
    /// The most keys (not deleted) there may be.
    max_keys: usize,
    /// Keys that count against `max_keys`; set by `reconcile`, kept by create and delete.
    key_count: AtomicUsize,
    /// Aliases, which count against `max_keys` too (alias names are global: each takes a
    /// place in the store and in every scan of it); kept like `key_count`.
    alias_count: AtomicUsize,
    /// Who are administrators, and who else may call the server-level actions.
    authorization: Authorization,
}

/// The server-level part of authorization, from the configuration.
#[derive(Clone, Debug, Default)]
pub struct Authorization {
    /// Principals in every default key policy, allowed every server-level action.
    pub administrators: Vec<String>,
    /// Who else may call the server-level actions (CreateKey, ListKeys, ListAliases,
    /// GenerateRandom). An explicit Deny here binds administrators too.
    pub server_policy: Option<KeyPolicy>,
}

impl Kms {
    /// A service on these backends.
    pub fn new(
        store: Arc<dyn MetadataStore>,
        hsm: Arc<dyn KeyStore>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Kms {
            store,
            hsm,
            clock,
            write_lock: Mutex::new(()),
            max_keys: Self::DEFAULT_MAX_KEYS,
            key_count: AtomicUsize::new(0),
            alias_count: AtomicUsize::new(0),
            authorization: Authorization::default(),
        }
    }

    /// Sets the administrators and the server-level policy.
    #[must_use]
    pub fn with_authorization(mut self, authorization: Authorization) -> Self {
        self.authorization = authorization;
        self
    }

    /// The key limit when none is configured.
    pub const DEFAULT_MAX_KEYS: usize = 100_000;

    /// The most RotateKeyOnDemand calls a key takes in its life, as in AWS KMS.
    pub const MAX_ON_DEMAND_ROTATIONS: usize = 10;

    /// Sets the most keys there may be (LimitExceededException beyond).
    #[must_use]
    pub fn with_max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// Brings the store and the HSM into agreement after a crash; run before serving.
    ///
    /// Keys left in `Creating` are removed with any HSM object they got. Versions without an
    /// HSM object, and HSM objects of this instance that no record names, are reported and
    /// logged, never deleted: neither can be repaired automatically without losing keys.
    pub fn reconcile(&self) -> Result<ReconcileReport, KmsError> {
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut report = ReconcileReport::default();
        let mut in_hsm: HashSet<KeyVersionRef> =
            self.hsm.list_key_versions()?.into_iter().collect();
        let mut referenced = HashSet::new();
        let mut wrapping_referenced = HashSet::new();
        let mut count = 0;
        self.for_each_key(|record| {
            if record.state == KeyState::Creating {
                for version in record.version_refs() {
                    self.hsm.destroy_key_version(version)?;
                    in_hsm.remove(&version);
                }
                self.store.delete_key(record.id)?;
                info!(key_id = %record.id, "removed a key whose creation did not finish");
                report.abandoned_keys += 1;
                return Ok(());
            }
            if record.state == KeyState::Deleted {
                return Ok(());
            }
            count += 1;
            let record = self.drop_pending_versions(record, &mut in_hsm)?;
            if let Some(parameters) = record.import.as_ref().and_then(|i| i.parameters.as_ref()) {
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
            for version in record.version_refs() {
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
    fn drop_pending_versions(
        &self,
        mut record: KeyRecord,
        in_hsm: &mut HashSet<KeyVersionRef>,
    ) -> Result<KeyRecord, KmsError> {
        let pending: Vec<u32> = record
            .versions
            .iter()
            .filter(|v| v.pending)
            .map(|v| v.version)
            .collect();
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
        record.versions.retain(|v| !v.pending);
        self.store.put_key(&record)?;
        Ok(record)
    }

    /// Adds a version made inside the HSM and makes it current; old versions still decrypt.
    ///
    /// Crash-safe like creation: the version is recorded as pending before its HSM object
    /// exists and becomes current only after.
    fn rotate_key(&self, key: &KeyRef, source: VersionSource) -> Result<KeyRecord, KmsError> {
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut record = self.resolve(key)?;
        record.check_usable()?;
        check_rotatable(&record)?;
        let on_demand = record
            .versions
            .iter()
            .filter(|v| v.source == VersionSource::OnDemand)
            .count();
        if source == VersionSource::OnDemand && on_demand >= Self::MAX_ON_DEMAND_ROTATIONS {
            return Err(KmsError::LimitExceeded(format!(
                "key {} has been rotated on demand {on_demand} times, the most a key allows \
                 (each rotation adds an HSM object); automatic rotation has no such limit",
                record.id
            )));
        }
        let next = record
            .versions
            .iter()
            .map(|v| v.version)
            .max()
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| {
                KmsError::LimitExceeded(format!("key {} has no versions left", record.id))
            })?;
        let now = self.clock.now_millis();
        record.versions.push(KeyVersion {
            version: next,
            created_at_ms: now,
            source,
            pending: true,
            public_key: None,
        });
        self.store.put_key(&record)?;
        let object = KeyVersionRef {
            key_id: record.id,
            version: next,
        };
        if let Err(error) = self
            .hsm
            .create_key_version(object, KeyMaterial::MasterSecret)
        {
            record.versions.retain(|v| v.version != next);
            let cleanup = self
                .hsm
                .destroy_key_version(object)
                .map_err(KmsError::from)
                .and_then(|()| self.store.put_key(&record).map_err(KmsError::from));
            if let Err(cleanup) = cleanup {
                warn!(key_id = %record.id, error = %cleanup,
                    "a failed rotation is left for startup reconciliation");
            }
            return Err(error.into());
        }
        for version in &mut record.versions {
            version.pending = false;
        }
        record.current_version = next;
        if source == VersionSource::Automatic {
            record.rotation = record.rotation.map(|r| r.after_rotation(now));
        }
        self.store.put_key(&record)?;
        info!(key_id = %record.id, version = next, "rotated key");
        Ok(record)
    }

    /// RotateKeyOnDemand: a new version now.
    pub fn rotate_key_on_demand(
        &self,
        caller: &Caller,
        key: &KeyRef,
    ) -> Result<KeyRecord, KmsError> {
        let record = self.authorized(caller, key, Action::RotateKeyOnDemand, None)?;
        let rotated = self.rotate_key(&KeyRef::Id(record.id), VersionSource::OnDemand)?;
        caller.note_key(rotated.id, Some(rotated.current_version));
        Ok(rotated)
    }

    /// Turns on automatic rotation every `period_days` (default 365), first due one period
    /// from now.
    pub fn enable_key_rotation(
        &self,
        caller: &Caller,
        key: &KeyRef,
        period_days: Option<u32>,
    ) -> Result<(), KmsError> {
        let schedule = RotationSchedule::new(period_days, self.clock.now_millis())?;
        self.update(caller, key, Action::EnableKeyRotation, |record| {
            record.check_usable()?;
            check_rotatable(record)?;
            record.rotation = Some(schedule);
            Ok(())
        })
        .map(drop)
    }

    /// Turns off automatic rotation.
    pub fn disable_key_rotation(&self, caller: &Caller, key: &KeyRef) -> Result<(), KmsError> {
        self.update(caller, key, Action::DisableKeyRotation, |record| {
            record.check_usable()?;
            record.rotation = None;
            Ok(())
        })
        .map(drop)
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
            let due = record.state == KeyState::Enabled
                && record.rotation.is_some_and(|r| r.next_rotation_ms <= now);
            if due {
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
    fn for_each_key(
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
    fn uncount_alias(&self) {
        let _ = self
            .alias_count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    /// Runs `f` on every alias, in name order, a page at a time.
    fn for_each_alias(
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

    fn delete_now(&self, mut record: KeyRecord) -> Result<(), KmsError> {
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
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
        let after = page_token
            .map(|t| {
                t.parse::<u32>().map_err(|_| {
                    KmsError::validation("page_token is not a token ListKeyRotations returned")
                })
            })
            .transpose()?
            .unwrap_or(1);
        let mut rotations: Vec<KeyVersion> = record
            .versions
            .into_iter()
            .filter(|v| !v.pending && v.version > after)
            .take(limit.0 + 1)
            .collect();
        let next_page_token = if rotations.len() > limit.0 {
            rotations.truncate(limit.0);
            rotations.last().map(|v| v.version.to_string())
        } else {
            None
        };
        Ok(RotationPage {
            key_id,
            rotations,
            next_page_token,
        })
    }

    /// Creates a key and its first version inside the HSM.
    ///
    /// Crash-safe: the record is stored as `Creating` before the HSM object exists and becomes
    /// `Enabled` only after; [`Kms::reconcile`] removes what a crash left in between.
    pub fn create_key(
        &self,
        caller: &Caller,
        input: CreateKeyInput,
    ) -> Result<KeyRecord, KmsError> {
        self.authorize_server(caller, Action::CreateKey)?;
        let policy = input.policy.as_deref().map(KeyPolicy::parse).transpose()?;
        KeyRecord::validate_description(&input.description)?;
        let usage = input.spec.usage(input.usage)?;
        if input.origin == Origin::External && input.spec.is_asymmetric() {
            return Err(KmsError::UnsupportedOperation(format!(
                "key material of {} keys cannot be imported; only SYMMETRIC_DEFAULT and HMAC keys \
                 take origin EXTERNAL",
                input.spec.as_str()
            )));
        }
        if let Some(policy) = &policy
            && !input.bypass_policy_lockout_safety_check
        {
            check_no_lockout(
                &self.access_request(caller, Action::PutKeyPolicy, None, None),
                policy,
            )?;
        }
        // Reserve a place under the limit; given back if creation fails.
        self.key_count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max_keys).then_some(n + 1)
            })
            .map_err(|_| {
                KmsError::LimitExceeded(format!("the limit of {} keys is reached", self.max_keys))
            })?;
        let created = self.create_key_reserved(caller, input, usage, policy);
        if created.is_err() {
            self.key_count.fetch_sub(1, Ordering::SeqCst);
        }
        created
    }

    fn create_key_reserved(
        &self,
        caller: &Caller,
        input: CreateKeyInput,
        usage: KeyUsage,
        policy: Option<KeyPolicy>,
    ) -> Result<KeyRecord, KmsError> {
        let now = self.clock.now_millis();
        let policy = policy.unwrap_or_else(|| KeyPolicy::default_for(caller.principal()));
        let mut record = KeyRecord {
            id: KeyId::random(),
            created_at_ms: now,
            description: input.description,
            usage,
            spec: input.spec,
            origin: input.origin,
            state: KeyState::Creating,
            current_version: 1,
            versions: vec![KeyVersion {
                version: 1,
                created_at_ms: now,
                source: VersionSource::Creation,
                pending: false,
                public_key: None,
            }],
            tags: BTreeMap::new(),
            rotation: None,
            deletion: None,
            policy: Some(policy),
            import: None,
        };
        input.tags.merge_into(&mut record.tags)?;
        caller.note_key(record.id, Some(1));
        if input.origin == Origin::External {
            // No material until ImportKeyMaterial: nothing in the HSM yet.
            record.state = KeyState::PendingImport;
            record.import = Some(ImportState::default());
            self.store.put_key(&record)?;
            info!(key_id = %record.id, "created key awaiting imported material");
            return Ok(record);
        }
        self.store.put_key(&record)?;
        let first = KeyVersionRef {
            key_id: record.id,
            version: 1,
        };
        let public_key = match self.hsm.create_key_version(first, record.material()) {
            Ok(public_key) => public_key,
            Err(error) => {
                // The HSM may have made the object before failing (a lost session). Destroy it,
                // then drop the record; if either step fails, the `Creating` record stays and
                // startup reconciliation finishes the job.
                let cleanup = self
                    .hsm
                    .destroy_key_version(first)
                    .map_err(KmsError::from)
                    .and_then(|()| self.store.delete_key(record.id).map_err(KmsError::from));
                if let Err(cleanup) = cleanup {
                    warn!(key_id = %record.id, error = %cleanup,
                        "a failed key creation is left for startup reconciliation");
                }
                return Err(error.into());
            }
        };
        if let Some(first) = record.versions.first_mut() {
            first.public_key = public_key;
        }
        record.state = KeyState::Enabled;
        self.store.put_key(&record)?;
        info!(key_id = %record.id, spec = record.spec.as_str(), "created key");
        Ok(record)
    }

    /// The record of a visible key.
    pub fn describe_key(&self, caller: &Caller, key: &KeyRef) -> Result<KeyRecord, KmsError> {
        self.authorized(caller, key, Action::DescribeKey, None)
    }

    /// The key's id and policy (the legacy policy for keys made before policies existed).
    pub fn get_key_policy(
        &self,
        caller: &Caller,
        key: &KeyRef,
    ) -> Result<(KeyId, KeyPolicy), KmsError> {
        let record = self.authorized(caller, key, Action::GetKeyPolicy, None)?;
        Ok((record.id, Self::policy_of(&record).into_owned()))
    }

    /// Replaces the key's policy with the document `policy` (JSON), parsed once the caller
    /// may call PutKeyPolicy on the key. Refused, unless `bypass_lockout_check`, when the new
    /// policy would not let the caller call PutKeyPolicy again.
    pub fn put_key_policy(
        &self,
        caller: &Caller,
        key: &KeyRef,
        policy: &str,
        bypass_lockout_check: bool,
    ) -> Result<(), KmsError> {
        self.authorized(caller, key, Action::PutKeyPolicy, None)?;
        let policy = KeyPolicy::parse(policy)?;
        if !bypass_lockout_check {
            check_no_lockout(
                &self.access_request(caller, Action::PutKeyPolicy, None, None),
                &policy,
            )?;
        }
        self.update(caller, key, Action::PutKeyPolicy, |record| {
            record.policy = Some(policy);
            Ok(())
        })
        .map(drop)
    }

    /// A page of key ids, ascending. `page_token` is the previous page's `next_page_token`.
    pub fn list_keys(
        &self,
        caller: &Caller,
        limit: PageLimit,
        page_token: Option<&str>,
    ) -> Result<KeyPage, KmsError> {
        self.authorize_server(caller, Action::ListKeys)?;
        let after = page_token
            .map(|t| {
                t.parse::<KeyId>().map_err(|_| {
                    KmsError::validation("page_token is not a token ListKeys returned")
                })
            })
            .transpose()?;
        let mut scanned = self.store.list_keys(after, limit.0 + 1)?;
        let next_page_token = if scanned.len() > limit.0 {
            scanned.truncate(limit.0);
            scanned.last().map(|r| r.id.to_string())
        } else {
            None
        };
        let keys = scanned
            .iter()
            .filter(|r| r.is_visible())
            .map(|r| r.id)
            .collect();
        Ok(KeyPage {
            keys,
            next_page_token,
        })
    }

    /// Makes a Disabled key Enabled (a no-op on an Enabled key).
    pub fn enable_key(&self, caller: &Caller, key: &KeyRef) -> Result<(), KmsError> {
        self.set_enabled(caller, key, Action::EnableKey, KeyState::Enabled, "enabled")
    }

    /// Makes an Enabled key Disabled (a no-op on a Disabled key).
    pub fn disable_key(&self, caller: &Caller, key: &KeyRef) -> Result<(), KmsError> {
        self.set_enabled(
            caller,
            key,
            Action::DisableKey,
            KeyState::Disabled,
            "disabled",
        )
    }

    /// Moves a key between Enabled and Disabled; other states refuse.
    fn set_enabled(
        &self,
        caller: &Caller,
        key: &KeyRef,
        action: Action,
        target: KeyState,
        verb: &str,
    ) -> Result<(), KmsError> {
        self.update(caller, key, action, |record| match record.state {
            KeyState::Enabled | KeyState::Disabled => {
                record.state = target;
                Ok(())
            }
            _ => Err(invalid_state(record, verb)),
        })
        .map(drop)
    }

    /// Replaces the description.
    pub fn update_key_description(
        &self,
        caller: &Caller,
        key: &KeyRef,
        description: String,
    ) -> Result<(), KmsError> {
        KeyRecord::validate_description(&description)?;
        self.update(caller, key, Action::UpdateKeyDescription, |record| {
            if record.state == KeyState::PendingDeletion {
                return Err(invalid_state(record, "updated"));
            }
            record.description = description;
            Ok(())
        })
        .map(drop)
    }

    /// Creates an alias pointing at `target` (a key id). Needs kms:CreateAlias on the name from
    /// the server policy (administrators have it) and on the target from its key policy.
    pub fn create_alias(
        &self,
        caller: &Caller,
        name: &AliasName,
        target: &KeyRef,
    ) -> Result<AliasRecord, KmsError> {
        alias::check_not_reserved(name)?;
        self.authorize_alias_name(caller, Action::CreateAlias, name)?;
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key_id = self.alias_target(caller, Action::CreateAlias, target)?;
        if self.store.get_alias(name)?.is_some() {
            return Err(KmsError::AlreadyExists(format!(
                "alias {name} already exists"
            )));
        }
        if self.alias_count.load(Ordering::SeqCst) >= self.max_keys {
            return Err(KmsError::LimitExceeded(format!(
                "the limit of {} aliases (the key limit) is reached",
                self.max_keys
            )));
        }
        let now = self.clock.now_millis();
        let record = AliasRecord {
            name: name.clone(),
            key_id,
            created_at_ms: now,
            updated_at_ms: now,
        };
        self.store.put_alias(&record)?;
        self.alias_count.fetch_add(1, Ordering::SeqCst);
        info!(alias = %name, key_id = %key_id, "created alias");
        Ok(record)
    }

    /// Points an existing alias at another key. The caller needs kms:UpdateAlias on the name
    /// (server policy) and on both keys (their key policies).
    pub fn update_alias(
        &self,
        caller: &Caller,
        name: &AliasName,
        target: &KeyRef,
    ) -> Result<AliasRecord, KmsError> {
        alias::check_not_reserved(name)?;
        self.authorize_alias_name(caller, Action::UpdateAlias, name)?;
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut record = self
            .store
            .get_alias(name)?
            .ok_or_else(|| KmsError::NotFound(format!("alias {name} not found")))?;
        self.authorized(
            caller,
            &KeyRef::Id(record.key_id),
            Action::UpdateAlias,
            None,
        )?;
        let key_id = self.alias_target(caller, Action::UpdateAlias, target)?;
        record.key_id = key_id;
        record.updated_at_ms = self.clock.now_millis();
        self.store.put_alias(&record)?;
        info!(alias = %name, key_id = %key_id, "moved alias");
        Ok(record)
    }

    /// Deletes an alias; the key is untouched. Needs kms:DeleteAlias on the name (server
    /// policy) and on its key (key policy).
    pub fn delete_alias(&self, caller: &Caller, name: &AliasName) -> Result<(), KmsError> {
        alias::check_not_reserved(name)?;
        self.authorize_alias_name(caller, Action::DeleteAlias, name)?;
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(existing) = self.store.get_alias(name)? else {
            return Err(KmsError::NotFound(format!("alias {name} not found")));
        };
        self.authorized(
            caller,
            &KeyRef::Id(existing.key_id),
            Action::DeleteAlias,
            None,
        )?;
        self.store.delete_alias(name)?;
        self.uncount_alias();
        info!(alias = %name, "deleted alias");
        Ok(())
    }

    /// A page of aliases in name order, of every key or of `key` only.
    pub fn list_aliases(
        &self,
        caller: &Caller,
        key: Option<&KeyRef>,
        limit: PageLimit,
        page_token: Option<&str>,
    ) -> Result<AliasPage, KmsError> {
        self.authorize_server(caller, Action::ListAliases)?;
        let key_id = key.map(|k| self.resolve(k).map(|r| r.id)).transpose()?;
        let after = page_token
            .map(|t| {
                AliasName::parse(t).map_err(|_| {
                    KmsError::validation("page_token is not a token ListAliases returned")
                })
            })
            .transpose()?;
        let mut scanned = self.store.list_aliases(after.as_ref(), limit.0 + 1)?;
        let next_page_token = if scanned.len() > limit.0 {
            scanned.truncate(limit.0);
            scanned.last().map(|a| a.name.to_string())
        } else {
            None
        };
        scanned.retain(|a| key_id.is_none_or(|k| a.key_id == k));
        Ok(AliasPage {
            aliases: scanned,
            next_page_token,
        })
    }

    /// Adds tags to a key, replacing the values of keys it already has.
    pub fn tag_resource(
        &self,
        caller: &Caller,
        key: &KeyRef,
        new: NewTags,
    ) -> Result<(), KmsError> {
        self.update(caller, key, Action::TagResource, |record| {
            if record.state == KeyState::PendingDeletion {
                return Err(invalid_state(record, "tagged"));
            }
            new.merge_into(&mut record.tags)
        })
        .map(drop)
    }

    /// Removes tags from a key; keys it does not have are ignored.
    pub fn untag_resource(
        &self,
        caller: &Caller,
        key: &KeyRef,
        tag_keys: &[String],
    ) -> Result<(), KmsError> {
        for tag_key in tag_keys {
            tags::check_key(tag_key)?;
        }
        self.update(caller, key, Action::UntagResource, |record| {
            if record.state == KeyState::PendingDeletion {
                return Err(invalid_state(record, "untagged"));
            }
            for tag_key in tag_keys {
                record.tags.remove(tag_key);
            }
            Ok(())
        })
        .map(drop)
    }

    /// A page of a key's tags in tag-key order.
    pub fn list_resource_tags(
        &self,
        caller: &Caller,
        key: &KeyRef,
        limit: PageLimit,
        page_token: Option<&str>,
    ) -> Result<TagPage, KmsError> {
        let record = self.authorized(caller, key, Action::ListResourceTags, None)?;
        let mut tags: Vec<(String, String)> = record
            .tags
            .into_iter()
            .filter(|(k, _)| page_token.is_none_or(|after| k.as_str() > after))
            .take(limit.0 + 1)
            .collect();
        let next_page_token = if tags.len() > limit.0 {
            tags.truncate(limit.0);
            tags.last().map(|(k, _)| k.clone())
        } else {
            None
        };
        Ok(TagPage {
            tags,
            next_page_token,
        })
    }

    /// Encrypts with the key's current version, SYMMETRIC_DEFAULT: one HSM operation.
    pub fn encrypt(
        &self,
        caller: &Caller,
        key: &KeyRef,
        plaintext: &Plaintext,
        context: &EncryptionContext,
    ) -> Result<Encrypted, KmsError> {
        self.encrypt_with(caller, key, plaintext, context, None)
    }

    /// Encrypts with the key's current version and `algorithm`. SYMMETRIC_DEFAULT (the
    /// default): one HSM operation. RSAES_OAEP_*: with the RSA key's public key, in software;
    /// no context.
    pub fn encrypt_with(
        &self,
        caller: &Caller,
        key: &KeyRef,
        plaintext: &Plaintext,
        context: &EncryptionContext,
        algorithm: Option<EncryptionAlgorithm>,
    ) -> Result<Encrypted, KmsError> {
        caller.note_context(context, false);
        let record = self.usable(caller, key, Action::Encrypt, Some(context))?;
        let algorithm = algorithm.unwrap_or(EncryptionAlgorithm::SymmetricDefault);
        check_encryption_algorithm(&record, algorithm)?;
        let ciphertext_blob = match algorithm.oaep_hash() {
            None => self.seal(caller, &record, context, plaintext.0.expose_secret())?,
            Some(hash) => {
                check_no_context(context, algorithm)?;
                caller.note_key(record.id, Some(record.current_version));
                let public_key = public_key_of(&record)?;
                crate::asymmetric::oaep_encrypt(public_key, hash, plaintext.0.expose_secret())?
            }
        };
        debug!(key_id = %record.id, version = record.current_version, "encrypted");
        Ok(Encrypted {
            ciphertext_blob,
            key_id: record.id,
            algorithm,
        })
    }

    /// Decrypts a blob: one HSM operation. `key`, when given, must be the blob's key.
    pub fn decrypt(
        &self,
        caller: &Caller,
        ciphertext_blob: &[u8],
        context: &EncryptionContext,
        key: Option<&KeyRef>,
    ) -> Result<Decrypted, KmsError> {
        self.decrypt_with(caller, ciphertext_blob, context, key, None)
    }

    /// Decrypts with `algorithm`: a blob when it is SYMMETRIC_DEFAULT or `None`, as
    /// [`Kms::decrypt`]. With an RSAES_OAEP_* algorithm, `key` is required and the HSM
    /// decrypts the bare ciphertext: one HSM operation.
    pub fn decrypt_with(
        &self,
        caller: &Caller,
        ciphertext_blob: &[u8],
        context: &EncryptionContext,
        key: Option<&KeyRef>,
        algorithm: Option<EncryptionAlgorithm>,
    ) -> Result<Decrypted, KmsError> {
        caller.note_context(context, false);
        match algorithm {
            Some(algorithm) if algorithm.oaep_hash().is_some() => {
                let key = key.ok_or_else(|| {
                    KmsError::validation(format!(
                        "key_id is required to decrypt with {}",
                        algorithm.as_str()
                    ))
                })?;
                self.rsa_decrypt(caller, ciphertext_blob, context, key, algorithm)
            }
            _ => self.open(caller, Action::Decrypt, ciphertext_blob, context, key),
        }
    }

    /// Decrypts an RSAES-OAEP ciphertext in the HSM: one HSM operation.
    fn rsa_decrypt(
        &self,
        caller: &Caller,
        ciphertext: &[u8],
        context: &EncryptionContext,
        key: &KeyRef,
        algorithm: EncryptionAlgorithm,
    ) -> Result<Decrypted, KmsError> {
        let record = self.usable(caller, key, Action::Decrypt, Some(context))?;
        check_encryption_algorithm(&record, algorithm)?;
        check_no_context(context, algorithm)?;
        let version = current_version(&record)?;
        caller.note_key(record.id, Some(version.version));
        let hash = algorithm.oaep_hash().ok_or(KmsError::InvalidCiphertext)?;
        let plaintext = match self.hsm.rsa_decrypt(version, hash, ciphertext) {
            Ok(plaintext) => plaintext,
            Err(HsmError::Rejected { .. }) => return Err(KmsError::InvalidCiphertext),
            Err(error) => return Err(error.into()),
        };
        debug!(key_id = %record.id, "decrypted with RSA");
        Ok(Decrypted {
            plaintext: SecretBytes::from(plaintext),
            key_id: record.id,
            algorithm,
        })
    }

    /// Decrypt's work, authorized as `action` (Decrypt, or ReEncryptFrom).
    fn open(
        &self,
        caller: &Caller,
        action: Action,
        ciphertext_blob: &[u8],
        context: &EncryptionContext,
        key: Option<&KeyRef>,
    ) -> Result<Decrypted, KmsError> {
        let parsed = blob::parse(ciphertext_blob)?;
        let blob_key = parsed.header.key;
        // A blob naming no key of this service is as invalid as any other bad blob. Anything
        // else the caller learns (whether the key was deleted, what the key_id it named is,
        // the key's spec) waits until the caller may use the blob's key.
        let record = match self
            .store
            .get_key(blob_key.key_id)?
            .map(|r| self.current_view(r))
        {
            Some(r) if r.is_visible() || r.state == KeyState::Deleted => r,
            _ => return Err(KmsError::InvalidCiphertext),
        };
        caller.note_key(record.id, Some(blob_key.version));
        self.authorize(caller, action, &record, Some(context))?;
        if record.state == KeyState::Deleted {
            return Err(KmsError::NotFound(format!(
                "key {} was deleted; its ciphertexts cannot be decrypted",
                record.id
            )));
        }
        if let Some(key) = key {
            let named = match self.resolve(key) {
                Ok(named) => Some(named.id),
                Err(KmsError::NotFound(_)) => None,
                Err(error) => return Err(error),
            };
            if named != Some(blob_key.key_id) {
                return Err(KmsError::IncorrectKey(format!(
                    "the ciphertext was not encrypted under key {key}"
                )));
            }
        }
        // Only a SYMMETRIC_DEFAULT key seals blobs. One naming any other key was not made by
        // this service: with an HMAC key, its MAC of the derivation input would be a message
        // key, and the blob a forgery.
        if !record
            .encryption_algorithms()
            .contains(&EncryptionAlgorithm::SymmetricDefault)
        {
            return Err(KmsError::InvalidCiphertext);
        }
        record.check_usable()?;
        let version = record
            .version_ref(blob_key.version)
            .ok_or(KmsError::InvalidCiphertext)?;
        let k_msg = self
            .hsm
            .derive_message_key(version, &symmetric::derivation_input(&parsed.header.nonce))?;
        let plaintext = symmetric::open(&k_msg, &parsed, context)?;
        debug!(key_id = %record.id, version = version.version, "decrypted");
        Ok(Decrypted {
            plaintext: SecretBytes::from(plaintext),
            key_id: record.id,
            algorithm: EncryptionAlgorithm::SymmetricDefault,
        })
    }

    /// Decrypts a blob and encrypts its plaintext under `destination` (its current version);
    /// the plaintext never leaves this call. Needs kms:ReEncryptFrom on the source key and
    /// kms:ReEncryptTo on the destination.
    pub fn re_encrypt(
        &self,
        caller: &Caller,
        ciphertext_blob: &[u8],
        source_context: &EncryptionContext,
        source_key: Option<&KeyRef>,
        destination: &KeyRef,
        destination_context: &EncryptionContext,
    ) -> Result<ReEncrypted, KmsError> {
        caller.note_context(source_context, false);
        caller.note_context(destination_context, true);
        let decrypted = self.open(
            caller,
            Action::ReEncryptFrom,
            ciphertext_blob,
            source_context,
            source_key,
        )?;
        let destination = self.usable(
            caller,
            destination,
            Action::ReEncryptTo,
            Some(destination_context),
        )?;
        let ciphertext_blob = self.seal(
            caller,
            &destination,
            destination_context,
            decrypted.plaintext.expose_secret(),
        )?;
        Ok(ReEncrypted {
            ciphertext_blob,
            source_key_id: decrypted.key_id,
            key_id: destination.id,
        })
    }

    /// A fresh data key from the operating system's CSPRNG, and its blob: one HSM operation.
    pub fn generate_data_key(
        &self,
        caller: &Caller,
        key: &KeyRef,
        context: &EncryptionContext,
        length: DataKeyLength,
    ) -> Result<DataKey, KmsError> {
        self.data_key(caller, Action::GenerateDataKey, key, context, length)
    }

    /// GenerateDataKeyWithoutPlaintext: the blob of a fresh data key; the data key itself
    /// is wiped before this returns.
    pub fn generate_data_key_without_plaintext(
        &self,
        caller: &Caller,
        key: &KeyRef,
        context: &EncryptionContext,
        length: DataKeyLength,
    ) -> Result<Encrypted, KmsError> {
        let data_key = self.data_key(
            caller,
            Action::GenerateDataKeyWithoutPlaintext,
            key,
            context,
            length,
        )?;
        Ok(Encrypted {
            ciphertext_blob: data_key.ciphertext_blob,
            key_id: data_key.key_id,
            algorithm: EncryptionAlgorithm::SymmetricDefault,
        })
    }

    fn data_key(
        &self,
        caller: &Caller,
        action: Action,
        key: &KeyRef,
        context: &EncryptionContext,
        length: DataKeyLength,
    ) -> Result<DataKey, KmsError> {
        caller.note_context(context, false);
        let record = self.usable(caller, key, action, Some(context))?;
        let mut data_key = vec![0u8; length.0];
        getrandom::fill(&mut data_key).map_err(|e| KmsError::Internal(Box::new(e)))?;
        let plaintext = SecretBytes::new(data_key);
        let ciphertext_blob = self.seal(caller, &record, context, plaintext.expose_secret())?;
        debug!(key_id = %record.id, "generated a data key");
        Ok(DataKey {
            ciphertext_blob,
            plaintext,
            key_id: record.id,
        })
    }

    /// Random bytes from the HSM.
    pub fn generate_random(
        &self,
        caller: &Caller,
        length: RandomLength,
    ) -> Result<SecretBytes, KmsError> {
        self.authorize_server(caller, Action::GenerateRandom)?;
        Ok(SecretBytes::from(self.hsm.random_bytes(length.0)?))
    }

    fn seal(
        &self,
        caller: &Caller,
        record: &KeyRecord,
        context: &EncryptionContext,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, KmsError> {
        check_encryption_algorithm(record, EncryptionAlgorithm::SymmetricDefault)?;
        let version = current_version(record)?;
        caller.note_key(record.id, Some(version.version));
        let nonce = symmetric::random_nonce()?;
        let k_msg = self
            .hsm
            .derive_message_key(version, &symmetric::derivation_input(&nonce))?;
        symmetric::seal(&k_msg, version, nonce, context, plaintext)
    }

    /// The record of a key the caller named, in any visible state.
    fn resolve(&self, key: &KeyRef) -> Result<KeyRecord, KmsError> {
        match key {
            KeyRef::Id(id) => self
                .store
                .get_key(*id)?
                .filter(KeyRecord::is_visible)
                .map(|r| self.current_view(r))
                .ok_or_else(|| KmsError::NotFound(format!("key {id} not found"))),
            KeyRef::Alias(alias) => {
                let target = self
                    .store
                    .get_alias(alias)?
                    .ok_or_else(|| KmsError::NotFound(format!("alias {alias} not found")))?;
                self.resolve(&KeyRef::Id(target.key_id))
            }
        }
    }

    /// `record` as callers see it now: an EXTERNAL key whose material has expired is
    /// PendingImport at once, before [`Kms::run_due_expirations`] destroys the material.
    fn current_view(&self, mut record: KeyRecord) -> KeyRecord {
        let expired = record.import.as_ref().is_some_and(|i| {
            i.has_material && i.valid_to_ms.is_some_and(|t| t <= self.clock.now_millis())
        });
        if expired && matches!(record.state, KeyState::Enabled | KeyState::Disabled) {
            record.state = KeyState::PendingImport;
        }
        record
    }

    /// The key an alias may point at: named by its id, visible, not pending deletion, and
    /// `action` allowed on it.
    fn alias_target(
        &self,
        caller: &Caller,
        action: Action,
        target: &KeyRef,
    ) -> Result<KeyId, KmsError> {
        let KeyRef::Id(_) = target else {
            return Err(KmsError::validation(
                "target_key_id must be a key id, not an alias",
            ));
        };
        let record = self.authorized(caller, target, action, None)?;
        if record.state == KeyState::PendingDeletion {
            return Err(invalid_state(&record, "the target of an alias"));
        }
        Ok(record.id)
    }

    /// The record of a key that `action` with `context` is allowed on and that may be used
    /// for cryptography now.
    fn usable(
        &self,
        caller: &Caller,
        key: &KeyRef,
        action: Action,
        context: Option<&EncryptionContext>,
    ) -> Result<KeyRecord, KmsError> {
        let record = self.authorized(caller, key, action, context)?;
        record.check_usable()?;
        Ok(record)
    }

    /// The record of a visible key that `action` is allowed on.
    fn authorized(
        &self,
        caller: &Caller,
        key: &KeyRef,
        action: Action,
        context: Option<&EncryptionContext>,
    ) -> Result<KeyRecord, KmsError> {
        let record = self.resolve(key)?;
        caller.note_key(record.id, None);
        self.authorize(caller, action, &record, context)?;
        Ok(record)
    }

    /// Applies `change` to the record of a key that `action` is allowed on, and stores it.
    fn update(
        &self,
        caller: &Caller,
        key: &KeyRef,
        action: Action,
        change: impl FnOnce(&mut KeyRecord) -> Result<(), KmsError>,
    ) -> Result<KeyRecord, KmsError> {
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut record = self.authorized(caller, key, action, None)?;
        change(&mut record)?;
        self.store.put_key(&record)?;
        info!(key_id = %record.id, state = record.state.as_str(), "updated key");
        Ok(record)
    }

    /// The policy that governs `record`.
    fn policy_of(record: &KeyRecord) -> Cow<'_, KeyPolicy> {
        match &record.policy {
            Some(policy) => Cow::Borrowed(policy),
            // Keys made before key policies existed: the administrators only.
            None => Cow::Owned(KeyPolicy::default_for(crate::policy::ADMINISTRATORS)),
        }
    }

    /// What a policy is asked about `caller` doing `action`.
    fn access_request<'a>(
        &self,
        caller: &'a Caller,
        action: Action,
        context: Option<&'a EncryptionContext>,
        alias_name: Option<&'a str>,
    ) -> AccessRequest<'a> {
        AccessRequest {
            principal: caller.principal(),
            action,
            encryption_context: context,
            secure_transport: caller.secure_transport(),
            administrator: self
                .authorization
                .administrators
                .iter()
                .any(|a| a == caller.principal()),
            alias_name,
        }
    }

    /// Allows `action` on `record` for `caller` unless the server policy denies it, then per
    /// the key's policy; or AccessDenied.
    fn authorize(
        &self,
        caller: &Caller,
        action: Action,
        record: &KeyRecord,
        context: Option<&EncryptionContext>,
    ) -> Result<(), KmsError> {
        let request = self.access_request(caller, action, context, None);
        if let Some(server_policy) = &self.authorization.server_policy
            && let Decision::ExplicitDeny(statement) = server_policy.evaluate(&request)
        {
            caller.note_statement(format!("server policy {statement}"));
            return Err(KmsError::AccessDenied(format!(
                "{} is not allowed {action} on key {}: a statement of the server policy denies it",
                caller.principal(),
                record.id
            )));
        }
        let decision = Self::policy_of(record).evaluate(&request);
        if let Some(statement) = decision.statement() {
            caller.note_statement(statement.to_string());
        }
        match decision {
            Decision::Allow(_) => Ok(()),
            Decision::ExplicitDeny(_) => Err(KmsError::AccessDenied(format!(
                "{} is not allowed {action} on key {}: a statement of the key policy denies it",
                caller.principal(),
                record.id
            ))),
            Decision::ImplicitDeny => Err(KmsError::AccessDenied(format!(
                "{} is not allowed {action} on key {}: no statement of the key policy allows it",
                caller.principal(),
                record.id
            ))),
        }
    }

    /// Allows a server-level action: an explicit Deny of the server policy refuses, then
    /// administrators and the server policy's Allows pass.
    fn authorize_server(&self, caller: &Caller, action: Action) -> Result<(), KmsError> {
        self.authorize_server_for(caller, action, None)
    }

    /// Allows the alias-name half of CreateAlias, UpdateAlias or DeleteAlias: alias names are
    /// global, so who may take or change one is the server policy's to say (with a condition
    /// on kms:AliasName), not the target key's.
    fn authorize_alias_name(
        &self,
        caller: &Caller,
        action: Action,
        name: &AliasName,
    ) -> Result<(), KmsError> {
        self.authorize_server_for(caller, action, Some(name.as_str()))
    }

    fn authorize_server_for(
        &self,
        caller: &Caller,
        action: Action,
        alias_name: Option<&str>,
    ) -> Result<(), KmsError> {
        let request = self.access_request(caller, action, None, alias_name);
        let decision = self
            .authorization
            .server_policy
            .as_ref()
            .map(|policy| policy.evaluate(&request));
        if let Some(statement) = decision.as_ref().and_then(Decision::statement) {
            caller.note_statement(format!("server policy {statement}"));
        }
        let explicit_deny = matches!(decision, Some(Decision::ExplicitDeny(_)));
        if !explicit_deny && (request.administrator || decision.is_some_and(|d| d.is_allowed())) {
            return Ok(());
        }
        let what =
            alias_name.map_or_else(|| action.to_string(), |name| format!("{action} on {name}"));
        Err(KmsError::AccessDenied(format!(
            "{} is not allowed {what}: it is not an administrator and the server policy {}",
            caller.principal(),
            if explicit_deny {
                "denies it"
            } else {
                "does not allow it"
            }
        )))
    }
}

/// The current version's HSM object.
fn current_version(record: &KeyRecord) -> Result<KeyVersionRef, KmsError> {
    record.version_ref(record.current_version).ok_or_else(|| {
        KmsError::Internal(format!("key {} has no current version", record.id).into())
    })
}

/// The public key of a key pair.
fn public_key_of(record: &KeyRecord) -> Result<&[u8], KmsError> {
    record.public_key().ok_or_else(|| {
        KmsError::Internal(format!("key {} has no public key on record", record.id).into())
    })
}

/// Fails with InvalidKeyUsageException unless the key supports `algorithm`.
fn check_encryption_algorithm(
    record: &KeyRecord,
    algorithm: EncryptionAlgorithm,
) -> Result<(), KmsError> {
    let supported = record.encryption_algorithms();
    if supported.contains(&algorithm) {
        return Ok(());
    }
    let names: Vec<&str> = supported.iter().map(|a| a.as_str()).collect();
    Err(KmsError::InvalidKeyUsage(if names.is_empty() {
        format!(
            "key {} is {} with usage {} and cannot encrypt or decrypt",
            record.id,
            record.spec.as_str(),
            record.usage.as_str()
        )
    } else {
        format!(
            "key {} is {} and does not support {}; give encryption_algorithm {}",
            record.id,
            record.spec.as_str(),
            algorithm.as_str(),
            names.join(" or ")
        )
    }))
}

/// RSA encryption takes no encryption context (AWS refuses one too).
fn check_no_context(
    context: &EncryptionContext,
    algorithm: EncryptionAlgorithm,
) -> Result<(), KmsError> {
    if context.is_empty() {
        Ok(())
    } else {
        Err(KmsError::validation(format!(
            "{} takes no encryption context",
            algorithm.as_str()
        )))
    }
}

/// Only SYMMETRIC_DEFAULT keys made in the HSM rotate.
fn check_rotatable(record: &KeyRecord) -> Result<(), KmsError> {
    if record.spec == KeySpec::SymmetricDefault && record.origin == Origin::Kms {
        return Ok(());
    }
    Err(KmsError::UnsupportedOperation(format!(
        "key {} is {} with origin {}: only SYMMETRIC_DEFAULT keys generated by the service \
         rotate",
        record.id,
        record.spec.as_str(),
        if record.origin == Origin::External {
            "EXTERNAL"
        } else {
            "KMS"
        }
    )))
}

/// Refuses a policy that would not let `caller` call PutKeyPolicy.
fn check_no_lockout(request: &AccessRequest<'_>, policy: &KeyPolicy) -> Result<(), KmsError> {
    let decision = policy.evaluate(request);
    if decision.is_allowed() {
        return Ok(());
    }
    Err(KmsError::Validation(format!(
        "the policy would not allow you ({}) to call PutKeyPolicy, so you could never change \
         it again; set bypass_policy_lockout_safety_check to apply it anyway",
        request.principal
    )))
}

fn invalid_state(record: &KeyRecord, verb: &str) -> KmsError {
    KmsError::InvalidState(format!(
        "key {} is {} and cannot be {verb}",
        record.id,
        record.state.as_str()
    ))
}

#[cfg(test)]
mod faults_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::admin;

    /// A SYMMETRIC_DEFAULT key without description, tags or policy.
    fn plain_input() -> CreateKeyInput {
        CreateKeyInput::new(KeySpec::SymmetricDefault)
    }
    use crate::testing::memory_kms;

    fn ok<T>(r: Result<T, KmsError>) -> T {
        r.unwrap_or_else(|e| panic!("unexpected {}: {e}", e.reason()))
    }

    fn new_key(kms: &Kms) -> KeyRef {
        let record = ok(kms.create_key(
            &admin(),
            CreateKeyInput {
                description: "test".into(),
                ..plain_input()
            },
        ));
        KeyRef::Id(record.id)
    }

    fn plaintext(bytes: &[u8]) -> Plaintext {
        ok(Plaintext::new(SecretBytes::new(bytes.to_vec())))
    }

    fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
        ok(EncryptionContext::new(
            pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())),
            "encryption_context",
        ))
    }

    #[test]
    fn encrypt_decrypt_round_trip_with_one_hsm_operation_each() {
        let (kms, _, hsm) = memory_kms();
        let key = new_key(&kms);
        let context = ctx(&[("app", "billing")]);
        let before = hsm.derivations();
        let encrypted = ok(kms.encrypt(&admin(), &key, &plaintext(b"secret"), &context));
        assert_eq!(hsm.derivations(), before + 1);
        let decrypted = ok(kms.decrypt(&admin(), &encrypted.ciphertext_blob, &context, None));
        assert_eq!(hsm.derivations(), before + 2);
        assert_eq!(decrypted.plaintext.expose_secret(), b"secret");
        assert_eq!(KeyRef::Id(decrypted.key_id), key);
        ok(kms.generate_data_key(
            &admin(),
            &key,
            &context,
            ok(DataKeyLength::new(Some(DataKeySpec::Aes256), None)),
        ));
        assert_eq!(hsm.derivations(), before + 3);
    }

    #[test]
    fn plaintext_limits() {
        assert!(Plaintext::new(SecretBytes::new(vec![0; 4096])).is_ok());
        assert!(matches!(
            Plaintext::new(SecretBytes::new(vec![0; 4097])),
            Err(KmsError::Validation(_))
        ));
        assert!(matches!(
            Plaintext::new(SecretBytes::new(Vec::new())),
            Err(KmsError::Validation(_))
        ));
    }

    #[test]
    fn disabled_keys_refuse_every_cryptographic_operation() {
        let (kms, _, _) = memory_kms();
        let key = new_key(&kms);
        let other = new_key(&kms);
        let context = ctx(&[]);
        let blob = ok(kms.encrypt(&admin(), &key, &plaintext(b"x"), &context)).ciphertext_blob;
        ok(kms.disable_key(&admin(), &key));
        let length = ok(DataKeyLength::new(None, Some(10)));
        assert!(matches!(
            kms.encrypt(&admin(), &key, &plaintext(b"x"), &context),
            Err(KmsError::Disabled(_))
        ));
        assert!(matches!(
            kms.decrypt(&admin(), &blob, &context, None),
            Err(KmsError::Disabled(_))
        ));
        assert!(matches!(
            kms.re_encrypt(&admin(), &blob, &context, None, &other, &context),
            Err(KmsError::Disabled(_))
        ));
        assert!(matches!(
            kms.generate_data_key(&admin(), &key, &context, length),
            Err(KmsError::Disabled(_))
        ));
        ok(kms.enable_key(&admin(), &key));
        assert!(kms.decrypt(&admin(), &blob, &context, None).is_ok());
    }

    #[test]
    fn decrypt_naming_another_key_is_incorrect_key() {
        let (kms, _, _) = memory_kms();
        let key = new_key(&kms);
        let other = new_key(&kms);
        let blob = ok(kms.encrypt(&admin(), &key, &plaintext(b"x"), &ctx(&[]))).ciphertext_blob;
        assert!(matches!(
            kms.decrypt(&admin(), &blob, &ctx(&[]), Some(&other)),
            Err(KmsError::IncorrectKey(_))
        ));
        assert!(kms.decrypt(&admin(), &blob, &ctx(&[]), Some(&key)).is_ok());
    }

    #[test]
    fn unknown_keys_are_not_found_and_blobs_of_unknown_keys_are_invalid() {
        let (kms, _, _) = memory_kms();
        let missing = KeyRef::Id(KeyId::random());
        assert!(matches!(
            kms.describe_key(&admin(), &missing),
            Err(KmsError::NotFound(_))
        ));
        assert!(matches!(
            kms.encrypt(&admin(), &missing, &plaintext(b"x"), &ctx(&[])),
            Err(KmsError::NotFound(_))
        ));
        let key = new_key(&kms);
        let mut blob = ok(kms.encrypt(&admin(), &key, &plaintext(b"x"), &ctx(&[]))).ciphertext_blob;
        blob[5] ^= 1; // the key id
        assert!(matches!(
            kms.decrypt(&admin(), &blob, &ctx(&[]), None),
            Err(KmsError::InvalidCiphertext)
        ));
    }

    /// Finding 1 of the security review: an HMAC_256 key's MAC of the derivation input is a
    /// message key, so a caller allowed GenerateMac could seal a blob naming that key. Decrypt
    /// and ReEncrypt must refuse it as they refuse any altered blob.
    #[test]
    fn a_blob_forged_with_an_hmac_keys_mac_is_refused() {
        let (kms, _, _) = memory_kms();
        let hmac = ok(kms.create_key(&admin(), CreateKeyInput::new(KeySpec::Hmac256)));
        let target = new_key(&kms);
        let nonce = ok(symmetric::random_nonce());
        let mac = ok(kms.generate_mac(
            &admin(),
            &KeyRef::Id(hmac.id),
            &symmetric::derivation_input(&nonce),
            crate::key::MacAlgorithm::HmacSha256,
        ))
        .mac;
        let k_msg = crate::hsm::MessageKey::new(zeroize::Zeroizing::new(
            mac.as_slice()
                .try_into()
                .unwrap_or_else(|_| panic!("32 bytes")),
        ));
        let version = KeyVersionRef {
            key_id: hmac.id,
            version: hmac.current_version,
        };
        let forged = ok(symmetric::seal(
            &k_msg,
            version,
            nonce,
            &ctx(&[]),
            b"forged",
        ));
        for named in [None, Some(KeyRef::Id(hmac.id))] {
            assert!(matches!(
                kms.decrypt(&admin(), &forged, &ctx(&[]), named.as_ref()),
                Err(KmsError::InvalidCiphertext)
            ));
            assert!(matches!(
                kms.re_encrypt(
                    &admin(),
                    &forged,
                    &ctx(&[]),
                    named.as_ref(),
                    &target,
                    &ctx(&[])
                ),
                Err(KmsError::InvalidCiphertext)
            ));
        }
    }

    #[test]
    fn re_encrypt_moves_a_blob_to_another_key() {
        let (kms, _, _) = memory_kms();
        let a = new_key(&kms);
        let b = new_key(&kms);
        let blob = ok(kms.encrypt(&admin(), &a, &plaintext(b"move me"), &ctx(&[("k", "1")])))
            .ciphertext_blob;
        let moved = ok(kms.re_encrypt(
            &admin(),
            &blob,
            &ctx(&[("k", "1")]),
            Some(&a),
            &b,
            &ctx(&[("k", "2")]),
        ));
        assert_eq!(KeyRef::Id(moved.source_key_id), a);
        assert_eq!(KeyRef::Id(moved.key_id), b);
        let decrypted = ok(kms.decrypt(
            &admin(),
            &moved.ciphertext_blob,
            &ctx(&[("k", "2")]),
            Some(&b),
        ));
        assert_eq!(decrypted.plaintext.expose_secret(), b"move me");
    }

    #[test]
    fn data_key_lengths() {
        let (kms, _, _) = memory_kms();
        let key = new_key(&kms);
        for (spec, bytes, len) in [
            (Some(DataKeySpec::Aes128), None, 16),
            (Some(DataKeySpec::Aes256), None, 32),
            (None, Some(1), 1),
            (None, Some(1024), 1024),
        ] {
            let dk = ok(kms.generate_data_key(
                &admin(),
                &key,
                &ctx(&[]),
                ok(DataKeyLength::new(spec, bytes)),
            ));
            assert_eq!(dk.plaintext.len(), len);
            let back = ok(kms.decrypt(&admin(), &dk.ciphertext_blob, &ctx(&[]), None));
            assert_eq!(back.plaintext.expose_secret(), dk.plaintext.expose_secret());
        }
        for (spec, bytes) in [
            (None, None),
            (None, Some(0)),
            (None, Some(1025)),
            (Some(DataKeySpec::Aes128), Some(16)),
        ] {
            assert!(matches!(
                DataKeyLength::new(spec, bytes),
                Err(KmsError::Validation(_))
            ));
        }
    }

    #[test]
    fn list_keys_pages_through_every_key_once() {
        let (kms, _, _) = memory_kms();
        let mut created: Vec<KeyId> = (0..7)
            .map(|_| match new_key(&kms) {
                KeyRef::Id(id) => id,
                KeyRef::Alias(_) => unreachable!(),
            })
            .collect();
        created.sort();
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = ok(kms.list_keys(&admin(), ok(PageLimit::new(3)), token.as_deref()));
            assert!(page.keys.len() <= 3);
            seen.extend(page.keys);
            match page.next_page_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        assert_eq!(seen, created);
        assert!(matches!(
            kms.list_keys(&admin(), ok(PageLimit::new(3)), Some("garbage")),
            Err(KmsError::Validation(_))
        ));
        assert!(matches!(PageLimit::new(1001), Err(KmsError::Validation(_))));
    }

    #[test]
    fn reconcile_removes_unfinished_keys_and_reports_unreferenced_objects() {
        let (kms, store, hsm) = memory_kms();
        let good = new_key(&kms);
        // A crash between the Creating record and the HSM object...
        let half = KeyRecord {
            state: KeyState::Creating,
            ..ok(kms.describe_key(&admin(), &good))
        };
        let half = KeyRecord {
            id: KeyId::random(),
            ..half
        };
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
    fn a_failed_hsm_creation_leaves_no_key() {
        let (kms, store, hsm) = memory_kms();
        hsm.set_fail_creation(true);
        let result = kms.create_key(&admin(), plain_input());
        assert!(matches!(result, Err(KmsError::Internal(_))));
        assert!(ok(store.list_keys(None, 10).map_err(KmsError::from)).is_empty());
        assert!(ok(hsm.list_key_versions().map_err(KmsError::from)).is_empty());
    }

    #[test]
    fn descriptions_are_bounded() {
        let (kms, _, _) = memory_kms();
        let key = new_key(&kms);
        assert!(
            kms.update_key_description(&admin(), &key, "é".repeat(8192))
                .is_ok()
        );
        assert!(matches!(
            kms.update_key_description(&admin(), &key, "x".repeat(8193)),
            Err(KmsError::Validation(_))
        ));
        assert_eq!(
            ok(kms.describe_key(&admin(), &key)).description,
            "é".repeat(8192)
        );
    }

    fn alias(name: &str) -> AliasName {
        ok(AliasName::parse(name))
    }

    #[test]
    fn aliases_name_keys_everywhere_and_can_move() {
        let (kms, _, _) = memory_kms();
        let a = new_key(&kms);
        let b = new_key(&kms);
        let name = alias("alias/billing");
        ok(kms.create_alias(&admin(), &name, &a));
        let via_alias = KeyRef::Alias(name.clone());
        let blob =
            ok(kms.encrypt(&admin(), &via_alias, &plaintext(b"x"), &ctx(&[]))).ciphertext_blob;
        assert_eq!(KeyRef::Id(ok(kms.describe_key(&admin(), &via_alias)).id), a);
        assert!(
            kms.decrypt(&admin(), &blob, &ctx(&[]), Some(&via_alias))
                .is_ok()
        );

        ok(kms.update_alias(&admin(), &name, &b));
        assert!(matches!(
            kms.decrypt(&admin(), &blob, &ctx(&[]), Some(&via_alias)),
            Err(KmsError::IncorrectKey(_))
        ));
        assert_eq!(KeyRef::Id(ok(kms.describe_key(&admin(), &via_alias)).id), b);

        let page = ok(kms.list_aliases(&admin(), Some(&b), ok(PageLimit::new(0)), None));
        assert_eq!(page.aliases.len(), 1);
        assert!(
            ok(kms.list_aliases(&admin(), Some(&a), ok(PageLimit::new(0)), None))
                .aliases
                .is_empty()
        );

        ok(kms.delete_alias(&admin(), &name));
        assert!(matches!(
            kms.describe_key(&admin(), &via_alias),
            Err(KmsError::NotFound(_))
        ));
        assert!(matches!(
            kms.delete_alias(&admin(), &name),
            Err(KmsError::NotFound(_))
        ));
        assert!(matches!(
            kms.update_alias(&admin(), &name, &a),
            Err(KmsError::NotFound(_))
        ));
    }

    #[test]
    fn alias_rules() {
        let (kms, _, _) = memory_kms();
        let a = new_key(&kms);
        let name = alias("alias/app");
        ok(kms.create_alias(&admin(), &name, &a));
        assert!(matches!(
            kms.create_alias(&admin(), &name, &a),
            Err(KmsError::AlreadyExists(_))
        ));
        assert!(matches!(
            kms.create_alias(&admin(), &alias("alias/kms/mine"), &a),
            Err(KmsError::Validation(_))
        ));
        assert!(matches!(
            kms.create_alias(&admin(), &alias("alias/other"), &KeyRef::Alias(name)),
            Err(KmsError::Validation(_))
        ));
        assert!(matches!(
            kms.create_alias(
                &admin(),
                &alias("alias/other"),
                &KeyRef::Id(KeyId::random())
            ),
            Err(KmsError::NotFound(_))
        ));
    }

    #[test]
    fn list_aliases_pages_in_name_order() {
        let (kms, _, _) = memory_kms();
        let a = new_key(&kms);
        for i in [3, 1, 4, 5, 2] {
            ok(kms.create_alias(&admin(), &alias(&format!("alias/a{i}")), &a));
        }
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page =
                ok(kms.list_aliases(&admin(), None, ok(PageLimit::new(2)), token.as_deref()));
            seen.extend(page.aliases.into_iter().map(|r| r.name.to_string()));
            match page.next_page_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        assert_eq!(
            seen,
            ["alias/a1", "alias/a2", "alias/a3", "alias/a4", "alias/a5"]
        );
    }

    #[test]
    fn tags_are_added_replaced_removed_and_paged() {
        let (kms, _, _) = memory_kms();
        let key = new_key(&kms);
        let add = |pairs: &[(&str, &str)]| {
            ok(NewTags::new(
                pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())),
            ))
        };
        ok(kms.tag_resource(
            &admin(),
            &key,
            add(&[("team", "payments"), ("env", "prod"), ("cost", "42")]),
        ));
        ok(kms.tag_resource(&admin(), &key, add(&[("env", "staging")])));
        ok(kms.untag_resource(&admin(), &key, &["cost".into(), "absent".into()]));
        let page = ok(kms.list_resource_tags(&admin(), &key, ok(PageLimit::new(1)), None));
        assert_eq!(page.tags, [("env".to_owned(), "staging".to_owned())]);
        let rest = ok(kms.list_resource_tags(
            &admin(),
            &key,
            ok(PageLimit::new(0)),
            page.next_page_token.as_deref(),
        ));
        assert_eq!(rest.tags, [("team".to_owned(), "payments".to_owned())]);
        assert!(rest.next_page_token.is_none());
        let fifty: Vec<(String, String)> =
            (0..49).map(|i| (format!("t{i}"), String::new())).collect();
        assert!(matches!(
            kms.tag_resource(&admin(), &key, ok(NewTags::new(fifty))),
            Err(KmsError::LimitExceeded(_))
        ));
        assert_eq!(
            ok(kms.describe_key(&admin(), &key)).tags.len(),
            2,
            "a refused change changes nothing"
        );
    }

    #[test]
    fn rotation_makes_a_new_current_version_and_old_blobs_still_decrypt() {
        let (kms, _, hsm) = memory_kms();
        let key = new_key(&kms);
        let old = ok(kms.encrypt(&admin(), &key, &plaintext(b"old"), &ctx(&[]))).ciphertext_blob;
        let rotated = ok(kms.rotate_key(&key, VersionSource::OnDemand));
        assert_eq!(rotated.current_version, 2);
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
        let moved = ok(kms.re_encrypt(&admin(), &old, &ctx(&[]), None, &key, &ctx(&[])));
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
        assert_eq!(record.current_version, 2);
        assert_eq!(
            record.versions.len(),
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
    fn reconcile_removes_a_version_a_crash_left_pending() {
        let (kms, store, hsm) = memory_kms();
        let key = new_key(&kms);
        let mut record = ok(kms.describe_key(&admin(), &key));
        record.versions.push(KeyVersion {
            version: 2,
            created_at_ms: 0,
            source: VersionSource::OnDemand,
            pending: true,
            public_key: None,
        });
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
        assert_eq!(record.versions.len(), 1);
        assert_eq!(record.current_version, 1);
        assert!(
            kms.encrypt(&admin(), &key, &plaintext(b"x"), &ctx(&[]))
                .is_ok()
        );
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
        let schedule = ok(kms.describe_key(&admin(), &key)).rotation;
        assert_eq!(schedule.map(|s| s.next_rotation_ms), Some(1_090 * day));

        clock.set_millis(1_089 * day);
        assert_eq!(ok(kms.run_due_rotations()), 0);
        clock.set_millis(1_090 * day);
        assert_eq!(ok(kms.run_due_rotations()), 1);
        let record = ok(kms.describe_key(&admin(), &key));
        assert_eq!(record.current_version, 2);
        assert_eq!(record.versions[1].source, VersionSource::Automatic);
        assert_eq!(
            record.rotation.map(|s| s.next_rotation_ms),
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
        assert_eq!(ok(kms.describe_key(&admin(), &key)).current_version, 2);
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

    #[test]
    fn the_key_limit_is_enforced_and_counts_from_the_store() {
        let store = Arc::new(crate::testing::MemoryStore::default());
        let hsm = Arc::new(crate::testing::SoftKeyStore::default());
        let clock = Arc::new(crate::testing::ManualClock::default());
        let kms = Kms::new(store.clone(), hsm.clone(), clock.clone())
            .with_authorization(crate::testing::authorization())
            .with_max_keys(2);
        new_key(&kms);
        new_key(&kms);
        assert!(matches!(
            kms.create_key(&admin(), plain_input()),
            Err(KmsError::LimitExceeded(_))
        ));
        // A restarted service counts the keys in the store.
        let restarted = Kms::new(store.clone(), hsm.clone(), clock.clone())
            .with_authorization(crate::testing::authorization())
            .with_max_keys(3);
        ok(restarted.reconcile());
        let key = new_key(&restarted);
        assert!(restarted.create_key(&admin(), plain_input()).is_err());

        // Aliases share the limit, counted from the store after a restart too.
        for name in ["alias/a", "alias/b", "alias/c"] {
            ok(restarted.create_alias(&admin(), &alias(name), &key));
        }
        assert!(matches!(
            restarted.create_alias(&admin(), &alias("alias/d"), &key),
            Err(KmsError::LimitExceeded(_))
        ));
        ok(restarted.delete_alias(&admin(), &alias("alias/c")));
        ok(restarted.create_alias(&admin(), &alias("alias/d"), &key));
        let again = Kms::new(store, hsm, clock)
            .with_authorization(crate::testing::authorization())
            .with_max_keys(3);
        ok(again.reconcile());
        assert!(matches!(
            again.create_alias(&admin(), &alias("alias/e"), &key),
            Err(KmsError::LimitExceeded(_))
        ));
    }

    /// Finding 6: a key takes ten on-demand rotations in its life.
    #[test]
    fn on_demand_rotations_are_capped() {
        let (kms, _, _) = memory_kms();
        let key = new_key(&kms);
        for _ in 0..Kms::MAX_ON_DEMAND_ROTATIONS {
            ok(kms.rotate_key_on_demand(&admin(), &key));
        }
        assert!(matches!(
            kms.rotate_key_on_demand(&admin(), &key),
            Err(KmsError::LimitExceeded(_))
        ));
        // Automatic rotation is not capped.
        ok(kms.rotate_key(&key, VersionSource::Automatic));
    }

    /// Finding 7: Decrypt tells a caller without the right to the blob's key nothing about
    /// the key_id it named (an alias that exists or not, that points elsewhere or not).
    #[test]
    fn decrypt_authorizes_before_it_reveals_anything() {
        let (kms, _, _) = memory_kms();
        let key = new_key(&kms);
        let other = new_key(&kms);
        let KeyRef::Id(other_id) = other else {
            unreachable!()
        };
        ok(kms.create_alias(&admin(), &alias("alias/same"), &key));
        ok(kms.create_alias(&admin(), &alias("alias/other"), &KeyRef::Id(other_id)));
        let blob = ok(kms.encrypt(&admin(), &key, &plaintext(b"x"), &ctx(&[]))).ciphertext_blob;
        let stranger = Caller::new("stranger", true);
        for named in ["alias/same", "alias/other", "alias/missing"] {
            let named = KeyRef::parse(named, "key_id").ok();
            assert!(
                denied(kms.decrypt(&stranger, &blob, &ctx(&[]), named.as_ref())),
                "{named:?}"
            );
        }
        // The caller who may use the key learns that the alias is not the blob's key.
        for named in ["alias/other", "alias/missing"] {
            let named = KeyRef::parse(named, "key_id").ok();
            assert!(matches!(
                kms.decrypt(&admin(), &blob, &ctx(&[]), named.as_ref()),
                Err(KmsError::IncorrectKey(_))
            ));
        }
    }

    /// Finding 5: alias names are the server policy's to give, with kms:AliasName.
    #[test]
    fn alias_names_need_the_server_policy() {
        let server_policy = ok(KeyPolicy::parse_server(
            r#"{"Statement":[
                {"Effect":"Allow","Principal":"app","Action":"kms:CreateKey"},
                {"Effect":"Allow","Principal":"app","Action":"kms:CreateAlias",
                 "Condition":{"StringLike":{"kms:AliasName":"alias/app/*"}}}]}"#,
        ));
        let kms = memory_kms().0.with_authorization(Authorization {
            administrators: vec!["admin".into()],
            server_policy: Some(server_policy),
        });
        let app = Caller::new("app", true);
        let key = KeyRef::Id(ok(kms.create_key(&app, plain_input())).id);
        assert!(denied(kms.create_alias(
            &app,
            &alias("alias/payments"),
            &key
        )));
        ok(kms.create_alias(&app, &alias("alias/app/payments"), &key));
        // The key policy still has its say: app cannot name the admin's key.
        let admins_key = new_key(&kms);
        assert!(denied(kms.create_alias(
            &app,
            &alias("alias/app/theirs"),
            &admins_key
        )));
        ok(kms.create_alias(&admin(), &alias("alias/payments"), &admins_key));
    }

    #[allow(clippy::needless_pass_by_value)] // reads best around a call
    fn denied<T>(result: Result<T, KmsError>) -> bool {
        matches!(result, Err(KmsError::AccessDenied(_)))
    }

    #[test]
    fn policies_decide_who_may_use_a_key_and_the_caller_notes_why() {
        let (kms, _, _) = memory_kms();
        let key = new_key(&kms);
        let other = new_key(&kms);
        let app = Caller::new("app", true);
        let empty = EncryptionContext::empty();
        // Not an administrator, no server policy: no server-level action.
        assert!(denied(kms.create_key(&app, plain_input())));
        assert!(denied(kms.generate_random(&app, ok(RandomLength::new(8)))));
        assert!(denied(kms.list_keys(&app, ok(PageLimit::new(0)), None)));
        // The default policy names only the creator (and administrators).
        assert!(denied(kms.encrypt(&app, &key, &plaintext(b"x"), &empty)));
        assert!(denied(kms.describe_key(&app, &key)));
        // Authorization comes first: a caller with no right to the key learns nothing of a
        // policy document's faults, or of the key.
        assert!(denied(kms.put_key_policy(
            &app,
            &key,
            "not a policy",
            false
        )));
        assert!(denied(kms.create_key(
            &app,
            CreateKeyInput {
                policy: Some("not a policy".into()),
                ..plain_input()
            }
        )));

        let policy = r#"{"Statement":[
                {"Effect":"Allow","Principal":"admin","Action":"kms:*"},
                {"Sid":"App","Effect":"Allow","Principal":"app",
                 "Action":["kms:Encrypt","kms:ReEncryptFrom"]}]}"#;
        assert!(matches!(
            kms.put_key_policy(&admin(), &key, "not a policy", false),
            Err(KmsError::Validation(_))
        ));
        ok(kms.put_key_policy(&admin(), &key, policy, false));
        let _ = app.take_note();
        let blob = ok(kms.encrypt(&app, &key, &plaintext(b"x"), &empty)).ciphertext_blob;
        let note = app.take_note();
        assert_eq!(note.policy_statement.as_deref(), Some(r#"Sid "App""#));
        assert_eq!(note.keys.len(), 1);
        assert_eq!(note.keys[0].1, Some(1));
        assert!(denied(kms.decrypt(&app, &blob, &empty, None)));
        // ReEncrypt needs ReEncryptTo on the destination too.
        assert!(denied(
            kms.re_encrypt(&app, &blob, &empty, None, &other, &empty)
        ));
        assert_eq!(app.take_note().keys.len(), 2);

        // A policy that locks the caller out needs the bypass.
        let lockout = r#"{"Statement":[{"Effect":"Allow","Principal":"app","Action":"kms:*"}]}"#;
        assert!(matches!(
            kms.put_key_policy(&admin(), &key, lockout, false),
            Err(KmsError::Validation(_))
        ));
        ok(kms.put_key_policy(&admin(), &key, lockout, true));
        assert!(denied(kms.get_key_policy(&admin(), &key)));
        ok(kms.decrypt(&app, &blob, &empty, None));
    }

    #[test]
    fn the_server_policy_lets_others_create_keys_and_denies_bind_administrators() {
        let server_policy = ok(KeyPolicy::parse_server(
            r#"{"Statement":[
                {"Effect":"Allow","Principal":"app","Action":"kms:CreateKey"},
                {"Sid":"NoRandom","Effect":"Deny","Principal":"*","Action":"kms:GenerateRandom"}]}"#,
        ));
        let kms = memory_kms().0.with_authorization(Authorization {
            administrators: vec!["admin".into()],
            server_policy: Some(server_policy),
        });
        let app = Caller::new("app", true);
        let record = ok(kms.create_key(&app, plain_input()));
        let (_, policy) = ok(kms.get_key_policy(&app, &KeyRef::Id(record.id)));
        assert!(policy.text().contains("\"app\"") && policy.text().contains("\"#administrators\""));
        // The server policy's Deny binds key actions too, administrators included.
        let server_policy = ok(KeyPolicy::parse_server(
            r#"{"Statement":{"Effect":"Deny","Principal":"*","Action":"kms:Decrypt"}}"#,
        ));
        let strict = memory_kms().0.with_authorization(Authorization {
            administrators: vec!["admin".into()],
            server_policy: Some(server_policy),
        });
        let key = new_key(&strict);
        let blob = ok(strict.encrypt(&admin(), &key, &plaintext(b"x"), &ctx(&[]))).ciphertext_blob;
        assert!(denied(strict.decrypt(&admin(), &blob, &ctx(&[]), None)));
        assert!(denied(kms.list_keys(&app, ok(PageLimit::new(0)), None)));
        assert!(denied(
            kms.generate_random(&admin(), ok(RandomLength::new(8)))
        ));
        ok(kms.list_keys(&admin(), ok(PageLimit::new(0)), None));
    }
}
