//! A key's record and its state machine.
//!
//! The record is what the metadata store keeps about a key; it holds no secret. Its lifecycle
//! fields (state, versions, deletion, import, schedule, tags, policy, description) are private:
//! they change only through the transition methods below, each of which refuses an illegal
//! move with the error AWS KMS gives for it (KMSInvalidStateException, or the error of the
//! check that failed). The service decides who may make a move and when to write the record;
//! the record decides whether the move is legal.
//!
//! ```text
//!             created                      disable / enable
//!  Creating ────────────► Enabled ◄──────────────────────────► Disabled
//!     │                    ▲  │ forget_material                    │
//!     │ await_import       │  ▼                                    │
//!     └──────────────► PendingImport ◄─────────────────────────────┘
//!                  material_imported          (material expired or deleted)
//!
//!  Enabled, Disabled, PendingImport ── schedule_deletion ──► PendingDeletion
//!  PendingDeletion ── cancel_deletion ──► Disabled (PendingImport without material)
//!  PendingDeletion ── mark_deleted ──► Deleted (a tombstone)
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    EncryptionAlgorithm, ImportParameters, ImportState, KeyMaterial, KeySpec, KeyState, KeyUsage,
    KeyVersion, MacAlgorithm, Origin, PendingDeletion, RotationSchedule, VersionSource,
    WrappedMaterial,
};
use crate::asymmetric::SigningAlgorithm;
use crate::error::KmsError;
use crate::hsm::{KeyVersionRef, VersionObject};
use crate::ids::KeyId;
use crate::policy::KeyPolicy;
use crate::tags::{self, NewTags};

/// Everything the service stores about a key. Holds no secret: the key material is in the HSM.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The key's id.
    pub(crate) id: KeyId,
    /// When the key was created, in Unix milliseconds.
    pub(crate) created_at_ms: i64,
    /// Free text, at most 8192 characters.
    description: String,
    /// What the key is for.
    pub(crate) usage: KeyUsage,
    /// The type of key material.
    pub(crate) spec: KeySpec,
    /// Where the material came from.
    pub(crate) origin: Origin,
    /// The lifecycle state.
    state: KeyState,
    /// The version new encryptions use.
    current_version: u32,
    /// Every version, oldest first; each has an HSM object.
    versions: Vec<KeyVersion>,
    /// The key's tags.
    #[serde(default)]
    tags: BTreeMap<String, String>,
    /// The automatic rotation schedule, when enabled.
    #[serde(default)]
    rotation: Option<RotationSchedule>,
    /// When the key will be deleted, while it is PendingDeletion.
    #[serde(default)]
    deletion: Option<PendingDeletion>,
    /// The text of the key's policy, which the service parses once and keeps parsed. `None`
    /// only for keys made before key policies existed (they get the administrators only) and
    /// for deleted keys.
    #[serde(default)]
    policy: Option<String>,
    /// For EXTERNAL keys: what is known about the imported material.
    #[serde(default)]
    import: Option<ImportState>,
}

/// Reading the record.
impl KeyRecord {
    /// The most characters a description may have.
    pub const MAX_DESCRIPTION_CHARS: usize = 8192;

    /// The most RotateKeyOnDemand calls a key takes in its life, as in AWS KMS.
    pub const MAX_ON_DEMAND_ROTATIONS: usize = 10;

    /// A key being created (`Creating`: never visible or usable), with its first version,
    /// no description, no tags and no policy yet.
    pub fn new(
        id: KeyId,
        created_at_ms: i64,
        spec: KeySpec,
        usage: KeyUsage,
        origin: Origin,
    ) -> KeyRecord {
        KeyRecord {
            id,
            created_at_ms,
            description: String::new(),
            usage,
            spec,
            origin,
            state: KeyState::Creating,
            current_version: 1,
            versions: vec![KeyVersion {
                version: 1,
                created_at_ms,
                source: VersionSource::Creation,
                pending: false,
                public_key: None,
                wrapped: None,
            }],
            tags: BTreeMap::new(),
            rotation: None,
            deletion: None,
            policy: None,
            import: None,
        }
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// When the key was created, in Unix milliseconds.
    pub fn created_at_ms(&self) -> i64 {
        self.created_at_ms
    }

    /// Free text, at most [`Self::MAX_DESCRIPTION_CHARS`] characters.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// What the key is for.
    pub fn usage(&self) -> KeyUsage {
        self.usage
    }

    /// The type of key material.
    pub fn spec(&self) -> KeySpec {
        self.spec
    }

    /// Where the material came from.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The lifecycle state.
    pub fn state(&self) -> KeyState {
        self.state
    }

    /// The version new encryptions use.
    pub fn current_version(&self) -> u32 {
        self.current_version
    }

    /// Every version, oldest first.
    pub fn versions(&self) -> &[KeyVersion] {
        &self.versions
    }

    /// The key's tags, in tag-key order.
    pub fn tags(&self) -> &BTreeMap<String, String> {
        &self.tags
    }

    /// The automatic rotation schedule, when enabled.
    pub fn rotation(&self) -> Option<RotationSchedule> {
        self.rotation
    }

    /// The scheduled deletion, while the key is PendingDeletion.
    pub fn deletion(&self) -> Option<PendingDeletion> {
        self.deletion
    }

    /// The text of the key's policy; `None` for keys made before key policies existed.
    pub fn policy_text(&self) -> Option<&str> {
        self.policy.as_deref()
    }

    /// For EXTERNAL keys: what is known about the imported material.
    pub fn import(&self) -> Option<&ImportState> {
        self.import.as_ref()
    }

    /// Whether the HSM holds the key's material: always for keys the service made; for
    /// EXTERNAL keys, from an import until the material is deleted or expires.
    pub fn has_material(&self) -> bool {
        self.import.as_ref().is_none_or(|i| i.has_material)
    }

    /// Whether the key is visible to callers (every state but `Creating` and `Deleted`).
    pub fn is_visible(&self) -> bool {
        !matches!(self.state, KeyState::Creating | KeyState::Deleted)
    }

    /// The encryption algorithms the key supports.
    pub fn encryption_algorithms(&self) -> Vec<EncryptionAlgorithm> {
        match (self.usage, self.spec) {
            (KeyUsage::EncryptDecrypt, KeySpec::SymmetricDefault) => {
                vec![EncryptionAlgorithm::SymmetricDefault]
            }
            (KeyUsage::EncryptDecrypt, spec) if spec.rsa_bits().is_some() => vec![
                EncryptionAlgorithm::RsaesOaepSha1,
                EncryptionAlgorithm::RsaesOaepSha256,
            ],
            _ => Vec::new(),
        }
    }

    /// The signing algorithms the key supports.
    pub fn signing_algorithms(&self) -> Vec<SigningAlgorithm> {
        match (self.usage, self.spec) {
            (KeyUsage::SignVerify, KeySpec::EccNistP256) => vec![SigningAlgorithm::EcdsaSha256],
            (KeyUsage::SignVerify, spec) if spec.rsa_bits().is_some() => {
                SigningAlgorithm::RSA.to_vec()
            }
            _ => Vec::new(),
        }
    }

    /// The MAC algorithms the key supports.
    pub fn mac_algorithms(&self) -> Vec<MacAlgorithm> {
        match self.usage {
            KeyUsage::GenerateVerifyMac => self.spec.mac_algorithm().into_iter().collect(),
            _ => Vec::new(),
        }
    }

    /// What the HSM holds for each version of the key.
    pub fn material(&self) -> KeyMaterial {
        self.spec.material(self.usage)
    }

    /// The public key (DER SubjectPublicKeyInfo) of the current version of a key pair.
    pub fn public_key(&self) -> Option<&[u8]> {
        self.versions
            .iter()
            .find(|v| v.version == self.current_version && !v.pending)
            .and_then(|v| v.public_key.as_deref())
    }

    /// The HSM object of `version`, if the key has that version.
    pub fn version_ref(&self, version: u32) -> Option<KeyVersionRef> {
        self.versions
            .iter()
            .any(|v| v.version == version && !v.pending)
            .then_some(KeyVersionRef {
                key_id: self.id,
                version,
            })
    }

    /// The HSM's view of `version`, if the key has that version: its identity and, when its
    /// material is kept outside the token, the wrapped material.
    pub fn version_object(&self, version: u32) -> Option<VersionObject<'_>> {
        self.versions
            .iter()
            .find(|v| v.version == version && !v.pending)
            .map(|v| VersionObject {
                key: KeyVersionRef {
                    key_id: self.id,
                    version,
                },
                wrapped: v.wrapped.as_ref(),
            })
    }

    /// The token objects of the versions whose material is one (not kept wrapped), pending
    /// ones included.
    pub fn token_version_refs(&self) -> impl Iterator<Item = KeyVersionRef> + '_ {
        self.versions
            .iter()
            .filter(|v| v.wrapped.is_none())
            .map(|v| KeyVersionRef {
                key_id: self.id,
                version: v.version,
            })
    }

    /// The HSM objects of every version, pending ones included.
    pub fn version_refs(&self) -> impl Iterator<Item = KeyVersionRef> + '_ {
        self.versions.iter().map(|v| KeyVersionRef {
            key_id: self.id,
            version: v.version,
        })
    }

    /// Whether the key's scheduled deletion is due at `now_ms`.
    pub fn deletion_due(&self, now_ms: i64) -> bool {
        self.state == KeyState::PendingDeletion
            && self.deletion.is_some_and(|d| d.deletion_date_ms <= now_ms)
    }

    /// Whether the key's automatic rotation is due at `now_ms` (Enabled keys only: others
    /// wait until they are).
    pub fn rotation_due(&self, now_ms: i64) -> bool {
        self.state == KeyState::Enabled
            && self.rotation.is_some_and(|r| r.next_rotation_ms <= now_ms)
    }

    /// Whether the key's imported material has expired at `now_ms`.
    pub fn material_expired(&self, now_ms: i64) -> bool {
        self.import
            .as_ref()
            .is_some_and(|i| i.has_material && i.valid_to_ms.is_some_and(|t| t <= now_ms))
    }

    /// The import parameters handed out last, while they are unused.
    pub fn import_parameters(&self) -> Option<&ImportParameters> {
        self.import.as_ref().and_then(|i| i.parameters.as_ref())
    }

    /// The record as callers see it at `now_ms`: a key whose deletion date has passed is
    /// Deleted at once, and an EXTERNAL key whose material has expired is PendingImport at
    /// once, before the jobs that destroy them run (after a start, they run in the background
    /// once kmsd serves).
    #[must_use]
    pub fn as_seen_at(mut self, now_ms: i64) -> KeyRecord {
        if self.deletion_due(now_ms) {
            self.state = KeyState::Deleted;
        }
        if self.material_expired(now_ms)
            && matches!(self.state, KeyState::Enabled | KeyState::Disabled)
        {
            self.state = KeyState::PendingImport;
        }
        self
    }
}

/// Checks: each fails with the error a caller acts on.
impl KeyRecord {
    /// KMSInvalidStateException: the key's state does not allow it to be `verb` ("key … is
    /// PendingDeletion and cannot be tagged").
    pub fn refuse(&self, verb: &str) -> KmsError {
        KmsError::InvalidState(format!(
            "key {} is {} and cannot be {verb}",
            self.id,
            self.state.as_str()
        ))
    }

    /// Fails unless the key may be used for a cryptographic operation now.
    pub fn check_usable(&self) -> Result<(), KmsError> {
        match self.state {
            KeyState::Enabled => Ok(()),
            KeyState::Disabled => Err(KmsError::Disabled(format!("key {} is disabled", self.id))),
            KeyState::Creating | KeyState::Deleted => {
                Err(KmsError::NotFound(format!("key {} not found", self.id)))
            }
            state @ (KeyState::PendingDeletion | KeyState::PendingImport) => {
                Err(KmsError::InvalidState(format!(
                    "key {} is {} and cannot be used",
                    self.id,
                    state.as_str()
                )))
            }
        }
    }

    /// Fails with InvalidKeyUsageException unless the key has `usage` and `spec` matches.
    pub fn check_usage(
        &self,
        usage: KeyUsage,
        spec: impl Fn(KeySpec) -> bool,
        operation: &str,
    ) -> Result<(), KmsError> {
        if self.usage == usage && spec(self.spec) {
            return Ok(());
        }
        Err(KmsError::InvalidKeyUsage(format!(
            "{operation} needs a key whose usage is {}; key {} is {} with usage {}",
            usage.as_str(),
            self.id,
            self.spec.as_str(),
            self.usage.as_str()
        )))
    }

    /// Fails with UnsupportedOperationException unless the key's versions can rotate: only
    /// SYMMETRIC_DEFAULT keys the service generated.
    pub fn check_rotatable(&self) -> Result<(), KmsError> {
        if self.spec == KeySpec::SymmetricDefault && self.origin == Origin::Kms {
            return Ok(());
        }
        Err(KmsError::UnsupportedOperation(format!(
            "key {} is {} with origin {}: only SYMMETRIC_DEFAULT keys generated by the service \
             rotate",
            self.id,
            self.spec.as_str(),
            if self.origin == Origin::External {
                "EXTERNAL"
            } else {
                "KMS"
            }
        )))
    }

    /// Fails with UnsupportedOperationException unless the key is of origin EXTERNAL.
    pub fn check_external(&self) -> Result<(), KmsError> {
        if self.origin == Origin::External {
            return Ok(());
        }
        Err(KmsError::UnsupportedOperation(format!(
            "key {} was not created with origin EXTERNAL; its material was generated in the HSM",
            self.id
        )))
    }

    /// Fails unless key material may be imported into the key now (it is PendingImport).
    pub fn check_importable(&self) -> Result<(), KmsError> {
        if self.state == KeyState::PendingImport {
            return Ok(());
        }
        Err(KmsError::InvalidState(format!(
            "key {} is {}: it already has key material (call DeleteImportedKeyMaterial first \
             to replace it)",
            self.id,
            self.state.as_str()
        )))
    }

    /// Checks a description's length.
    pub fn validate_description(description: &str) -> Result<(), KmsError> {
        if description.chars().count() > Self::MAX_DESCRIPTION_CHARS {
            return Err(KmsError::validation(format!(
                "description must have at most {} characters",
                Self::MAX_DESCRIPTION_CHARS
            )));
        }
        Ok(())
    }
}

/// Transitions: each changes the record only when the move is legal.
impl KeyRecord {
    /// Creating → Enabled, once the first version's material exists; a key pair's public key,
    /// or the wrapped material of a version kept outside the token, is recorded with it.
    pub fn created(
        &mut self,
        public_key: Option<Vec<u8>>,
        wrapped: Option<WrappedMaterial>,
    ) -> Result<(), KmsError> {
        if self.state != KeyState::Creating || self.origin != Origin::Kms {
            return Err(self.refuse("made usable"));
        }
        if let Some(first) = self.versions.first_mut() {
            first.public_key = public_key;
            first.wrapped = wrapped;
        }
        self.state = KeyState::Enabled;
        Ok(())
    }

    /// Creating → PendingImport, for an EXTERNAL key: it has no material yet.
    pub fn await_import(&mut self) -> Result<(), KmsError> {
        if self.state != KeyState::Creating || self.origin != Origin::External {
            return Err(self.refuse("left awaiting key material"));
        }
        self.state = KeyState::PendingImport;
        self.import = Some(ImportState::default());
        Ok(())
    }

    /// Disabled → Enabled; a no-op on an Enabled key.
    pub fn enable(&mut self) -> Result<(), KmsError> {
        self.set_enabled(KeyState::Enabled, "enabled")
    }

    /// Enabled → Disabled; a no-op on a Disabled key.
    pub fn disable(&mut self) -> Result<(), KmsError> {
        self.set_enabled(KeyState::Disabled, "disabled")
    }

    fn set_enabled(&mut self, target: KeyState, verb: &str) -> Result<(), KmsError> {
        match self.state {
            KeyState::Enabled | KeyState::Disabled => {
                self.state = target;
                Ok(())
            }
            _ => Err(self.refuse(verb)),
        }
    }

    /// Replaces the description (not of a key pending deletion).
    pub fn set_description(&mut self, description: String) -> Result<(), KmsError> {
        Self::validate_description(&description)?;
        if self.state == KeyState::PendingDeletion {
            return Err(self.refuse("updated"));
        }
        self.description = description;
        Ok(())
    }

    /// Replaces the key's policy.
    pub fn set_policy(&mut self, policy: &KeyPolicy) {
        self.policy = Some(policy.text().to_owned());
    }

    /// Adds tags, replacing the values of tag keys the key has (not on a key pending
    /// deletion).
    pub fn tag(&mut self, new: NewTags) -> Result<(), KmsError> {
        if self.state == KeyState::PendingDeletion {
            return Err(self.refuse("tagged"));
        }
        new.merge_into(&mut self.tags)
    }

    /// Removes tags; keys the key does not have are ignored (not on a key pending deletion).
    pub fn untag(&mut self, tag_keys: &[String]) -> Result<(), KmsError> {
        for tag_key in tag_keys {
            tags::check_key(tag_key)?;
        }
        if self.state == KeyState::PendingDeletion {
            return Err(self.refuse("untagged"));
        }
        for tag_key in tag_keys {
            self.tags.remove(tag_key);
        }
        Ok(())
    }

    /// Turns on automatic rotation (a usable key whose versions can rotate).
    pub fn enable_rotation(&mut self, schedule: RotationSchedule) -> Result<(), KmsError> {
        self.check_usable()?;
        self.check_rotatable()?;
        self.rotation = Some(schedule);
        Ok(())
    }

    /// Turns off automatic rotation (of a usable key).
    pub fn disable_rotation(&mut self) -> Result<(), KmsError> {
        self.check_usable()?;
        self.rotation = None;
        Ok(())
    }

    /// Records a new version as pending, before its HSM object exists, and returns its number.
    /// Refused unless the key is usable and rotatable and, on demand, has rotations left.
    pub fn begin_rotation(&mut self, source: VersionSource, now_ms: i64) -> Result<u32, KmsError> {
        self.check_usable()?;
        self.check_rotatable()?;
        let on_demand = self
            .versions
            .iter()
            .filter(|v| v.source == VersionSource::OnDemand)
            .count();
        if source == VersionSource::OnDemand && on_demand >= Self::MAX_ON_DEMAND_ROTATIONS {
            return Err(KmsError::LimitExceeded(format!(
                "key {} has been rotated on demand {on_demand} times, the most a key allows \
                 (each rotation adds an HSM object); automatic rotation has no such limit",
                self.id
            )));
        }
        if self.versions.iter().any(|v| v.pending) {
            return Err(KmsError::InvalidState(format!(
                "key {} is being rotated; try again",
                self.id
            )));
        }
        let next = self
            .versions
            .iter()
            .map(|v| v.version)
            .max()
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| {
                KmsError::LimitExceeded(format!("key {} has no versions left", self.id))
            })?;
        self.versions.push(KeyVersion {
            version: next,
            created_at_ms: now_ms,
            source,
            pending: true,
            public_key: None,
            wrapped: None,
        });
        Ok(next)
    }

    /// Makes the pending `version`, whose material now exists (`wrapped` when it is kept
    /// outside the token), current; an automatic
    /// rotation moves the schedule on by one period from `now_ms`. Refused on a deleted key
    /// (deleted while the HSM made the object).
    pub fn finish_rotation(
        &mut self,
        version: u32,
        wrapped: Option<WrappedMaterial>,
        now_ms: i64,
    ) -> Result<(), KmsError> {
        if !self.is_visible() {
            return Err(self.refuse("given a new version"));
        }
        let Some(new) = self
            .versions
            .iter_mut()
            .find(|v| v.version == version && v.pending)
        else {
            return Err(KmsError::InvalidState(format!(
                "key {} has no rotation to version {version} under way",
                self.id
            )));
        };
        new.pending = false;
        new.wrapped = wrapped;
        if new.source == VersionSource::Automatic {
            self.rotation = self.rotation.map(|r| r.after_rotation(now_ms));
        }
        self.current_version = version;
        Ok(())
    }

    /// Forgets the pending `version` of a rotation that failed.
    pub fn abandon_rotation(&mut self, version: u32) {
        self.versions.retain(|v| v.version != version || !v.pending);
    }

    /// Forgets every pending version (a crash left them so) and returns their numbers.
    pub fn drop_pending_versions(&mut self) -> Vec<u32> {
        let pending = self
            .versions
            .iter()
            .filter(|v| v.pending)
            .map(|v| v.version)
            .collect();
        self.versions.retain(|v| !v.pending);
        pending
    }

    /// Enabled, Disabled or PendingImport → PendingDeletion.
    pub fn schedule_deletion(&mut self, deletion: PendingDeletion) -> Result<(), KmsError> {
        match self.state {
            KeyState::Enabled | KeyState::Disabled | KeyState::PendingImport => {
                self.state = KeyState::PendingDeletion;
                self.deletion = Some(deletion);
                Ok(())
            }
            KeyState::PendingDeletion => Err(self.refuse("scheduled for deletion again")),
            KeyState::Creating | KeyState::Deleted => Err(self.refuse("scheduled for deletion")),
        }
    }

    /// PendingDeletion → Disabled, or PendingImport for a key without material; refused once
    /// the deletion date has come at `now_ms` (the deletion is then under way, and cannot be
    /// stopped halfway).
    pub fn cancel_deletion(&mut self, now_ms: i64) -> Result<(), KmsError> {
        if self.state != KeyState::PendingDeletion {
            return Err(self.refuse("taken out of deletion"));
        }
        if self.deletion_due(now_ms) {
            return Err(KmsError::InvalidState(format!(
                "key {} is being deleted: its deletion date has passed",
                self.id
            )));
        }
        self.state = if self.has_material() {
            KeyState::Disabled
        } else {
            KeyState::PendingImport
        };
        self.deletion = None;
        Ok(())
    }

    /// PendingDeletion → Deleted, once every HSM object of the key is destroyed: what is left
    /// is a tombstone, so that the key's blobs get NotFoundException rather than
    /// InvalidCiphertextException.
    pub fn mark_deleted(&mut self) -> Result<(), KmsError> {
        if self.state != KeyState::PendingDeletion {
            return Err(self.refuse("deleted"));
        }
        self.state = KeyState::Deleted;
        self.deletion = None;
        self.rotation = None;
        self.tags.clear();
        self.description.clear();
        self.policy = None;
        self.import = None;
        self.forget_deleted_material();
        Ok(())
    }

    /// Drops the wrapped material of a deleted key's versions (tombstones written before
    /// deletion did so kept it); returns whether there was any. A tombstone holds no material.
    pub fn forget_deleted_material(&mut self) -> bool {
        if self.state != KeyState::Deleted {
            return false;
        }
        let mut forgot = false;
        for version in &mut self.versions {
            forgot |= version.wrapped.take().is_some();
        }
        forgot
    }

    /// Replaces version `version`'s wrapped material `old` by `new` (the same material,
    /// wrapped again under a newer domain key); returns false, changing nothing, when the
    /// version no longer holds `old`.
    pub fn rewrapped(&mut self, version: u32, old: &WrappedMaterial, new: WrappedMaterial) -> bool {
        match self
            .versions
            .iter_mut()
            .find(|v| v.version == version && v.wrapped.as_ref() == Some(old))
        {
            Some(v) => {
                v.wrapped = Some(new);
                true
            }
            None => false,
        }
    }

    /// Fails unless the key takes import parameters: EXTERNAL, visible (not deleted while
    /// the HSM made the wrapping key), not pending deletion.
    fn check_takes_import_parameters(&self) -> Result<(), KmsError> {
        self.check_external()?;
        if !self.is_visible() || self.state == KeyState::PendingDeletion {
            return Err(self.refuse("given key material"));
        }
        Ok(())
    }

    /// Takes the serial of the next wrapping key, so that no two wrapping keys of the key ever
    /// share one, before the HSM makes it.
    pub fn reserve_wrapping_serial(&mut self) -> Result<u32, KmsError> {
        self.check_takes_import_parameters()?;
        let import = self.import.get_or_insert_default();
        import.wrapping_serial = import.wrapping_serial.checked_add(1).ok_or_else(|| {
            KmsError::LimitExceeded(format!("key {} has no import parameters left", self.id))
        })?;
        Ok(import.wrapping_serial)
    }

    /// Records newly issued import parameters, whose wrapping key now exists, and returns the
    /// ones they replace. Refused when newer parameters were issued meanwhile.
    pub fn issue_import_parameters(
        &mut self,
        parameters: ImportParameters,
    ) -> Result<Option<ImportParameters>, KmsError> {
        self.check_takes_import_parameters()?;
        let import = self.import.get_or_insert_default();
        if import
            .parameters
            .as_ref()
            .is_some_and(|p| p.serial > parameters.serial)
        {
            return Err(KmsError::InvalidState(format!(
                "newer import parameters for key {} were issued meanwhile; use those",
                self.id
            )));
        }
        Ok(import.parameters.replace(parameters))
    }

    /// Takes the import parameters if they expired by `now_ms`.
    pub fn take_expired_import_parameters(&mut self, now_ms: i64) -> Option<ImportParameters> {
        self.import
            .as_mut()
            .and_then(|i| i.parameters.take_if(|p| p.valid_to_ms <= now_ms))
    }

    /// PendingImport → Enabled, once the HSM holds material (`wrapped` when it is kept outside
    /// the token) whose check value is `check`:
    /// the import parameters are used up, and the first import's check value is kept, so a
    /// later import of different material is refused.
    pub fn material_imported(
        &mut self,
        check: &[u8],
        valid_to_ms: Option<i64>,
        wrapped: Option<WrappedMaterial>,
    ) -> Result<(), KmsError> {
        self.check_external()?;
        self.check_importable()?;
        let import = self.import.get_or_insert_default();
        if let Some(expected) = &import.material_check
            && !bool::from(subtle::ConstantTimeEq::ct_eq(expected.as_slice(), check))
        {
            return Err(KmsError::IncorrectKeyMaterial(format!(
                "this is not the key material key {} had before; a key's material cannot change",
                self.id
            )));
        }
        import.material_check.get_or_insert_with(|| check.to_vec());
        import.has_material = true;
        import.valid_to_ms = valid_to_ms;
        import.parameters = None;
        let current = self.current_version;
        if let Some(version) = self.versions.iter_mut().find(|v| v.version == current) {
            version.wrapped = wrapped;
        }
        self.state = KeyState::Enabled;
        Ok(())
    }

    /// Records that the HSM no longer holds the key's material (deleted, or expired): an
    /// Enabled or Disabled key becomes PendingImport; a key pending deletion stays so.
    pub fn forget_material(&mut self) -> Result<(), KmsError> {
        self.check_external()?;
        if let Some(import) = self.import.as_mut() {
            import.has_material = false;
            import.valid_to_ms = None;
        }
        for version in &mut self.versions {
            version.wrapped = None;
        }
        if matches!(self.state, KeyState::Enabled | KeyState::Disabled) {
            self.state = KeyState::PendingImport;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
