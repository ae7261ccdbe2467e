//! The key model: a key's record, its versions, and its state machine.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::KmsError;
use crate::hsm::KeyVersionRef;
use crate::ids::KeyId;
use crate::policy::KeyPolicy;

/// The states of a key. `Creating` is internal: such a key is never visible or usable.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum KeyState {
    /// Being created: its HSM object may not exist yet. Removed by startup reconciliation.
    Creating,
    /// Usable.
    Enabled,
    /// Kept, but refused for cryptographic operations.
    Disabled,
    /// Waiting for its deletion date.
    PendingDeletion,
    /// An imported key before its key material arrives.
    PendingImport,
    /// Deleted: its HSM objects are destroyed. Kept as a tombstone so that its blobs get
    /// NotFoundException rather than InvalidCiphertextException; never visible.
    Deleted,
}

impl KeyState {
    /// The AWS name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Creating => "Creating",
            KeyState::Deleted => "Deleted",
            KeyState::Enabled => "Enabled",
            KeyState::Disabled => "Disabled",
            KeyState::PendingDeletion => "PendingDeletion",
            KeyState::PendingImport => "PendingImport",
        }
    }
}

/// What a key is for.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum KeyUsage {
    /// Encrypt, Decrypt, ReEncrypt and GenerateDataKey.
    EncryptDecrypt,
}

/// The type of key material.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum KeySpec {
    /// A 256-bit HSM-held secret used with the scheme of [`crate::symmetric`].
    SymmetricDefault,
}

/// Where the key material came from.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Origin {
    /// Generated inside the HSM by this service.
    Kms,
}

/// The encryption algorithms.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum EncryptionAlgorithm {
    /// See [`crate::symmetric`].
    SymmetricDefault,
}

/// One version of a key: one HSM object.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct KeyVersion {
    /// From 1, increasing.
    pub version: u32,
    /// When the version was created, in Unix milliseconds.
    pub created_at_ms: i64,
    /// How the version came to be.
    #[serde(default)]
    pub source: VersionSource,
    /// Recorded, but its HSM object may not exist yet: never used, and removed with its
    /// object by startup reconciliation if a crash left it so.
    #[serde(default)]
    pub pending: bool,
}

/// How a key version came to be.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub enum VersionSource {
    /// The key's first version.
    #[default]
    Creation,
    /// A rotation the key's schedule ran.
    Automatic,
    /// A RotateKeyOnDemand call.
    OnDemand,
}

/// Everything the service stores about a key. Holds no secret: the key material is in the HSM.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The key's id.
    pub id: KeyId,
    /// When the key was created, in Unix milliseconds.
    pub created_at_ms: i64,
    /// Free text, at most 8192 characters.
    pub description: String,
    /// What the key is for.
    pub usage: KeyUsage,
    /// The type of key material.
    pub spec: KeySpec,
    /// Where the material came from.
    pub origin: Origin,
    /// The lifecycle state.
    pub state: KeyState,
    /// The version new encryptions use.
    pub current_version: u32,
    /// Every version, oldest first; each has an HSM object.
    pub versions: Vec<KeyVersion>,
    /// The key's tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// The automatic rotation schedule, when enabled.
    #[serde(default)]
    pub rotation: Option<RotationSchedule>,
    /// When the key will be deleted, while it is PendingDeletion.
    #[serde(default)]
    pub deletion: Option<PendingDeletion>,
    /// Who may do what with the key. `None` only for keys made before key policies existed:
    /// those get [`crate::service::Kms`]'s legacy policy (administrators only).
    #[serde(default)]
    pub policy: Option<KeyPolicy>,
}

/// `days` if it lies in `range`, else a ValidationException naming `field`.
fn days_in_range(
    field: &str,
    days: u32,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, KmsError> {
    if range.contains(&days) {
        Ok(days)
    } else {
        Err(KmsError::validation(format!(
            "{field} must be {} to {}, got {days}",
            range.start(),
            range.end()
        )))
    }
}

/// `days` whole days after `now_ms`, in Unix milliseconds.
fn days_after(now_ms: i64, days: u32) -> i64 {
    now_ms.saturating_add(i64::from(days) * 86_400_000)
}

/// A scheduled deletion.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PendingDeletion {
    /// When the key will be destroyed, in Unix milliseconds.
    pub deletion_date_ms: i64,
    /// The waiting period that was asked for, 7..=30 days.
    pub window_days: u32,
}

impl PendingDeletion {
    /// The shortest waiting period.
    pub const MIN_DAYS: u32 = 7;
    /// The longest (and default) waiting period.
    pub const MAX_DAYS: u32 = 30;

    /// A deletion `window_days` (default 30) after `now_ms`.
    pub fn new(window_days: Option<u32>, now_ms: i64) -> Result<Self, KmsError> {
        let window_days = days_in_range(
            "pending_window_in_days",
            window_days.unwrap_or(Self::MAX_DAYS),
            Self::MIN_DAYS..=Self::MAX_DAYS,
        )?;
        Ok(PendingDeletion {
            deletion_date_ms: days_after(now_ms, window_days),
            window_days,
        })
    }
}

/// When a key rotates by itself.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RotationSchedule {
    /// Days between rotations, 90..=2560.
    pub period_days: u32,
    /// When the next rotation is due, in Unix milliseconds.
    pub next_rotation_ms: i64,
}

impl RotationSchedule {
    /// The shortest period.
    pub const MIN_DAYS: u32 = 90;
    /// The longest period.
    pub const MAX_DAYS: u32 = 2560;
    /// The period when none is given.
    pub const DEFAULT_DAYS: u32 = 365;

    /// A schedule of `period_days` (default 365) whose first rotation is due one period after
    /// `now_ms`.
    pub fn new(period_days: Option<u32>, now_ms: i64) -> Result<Self, KmsError> {
        let period_days = days_in_range(
            "rotation_period_in_days",
            period_days.unwrap_or(Self::DEFAULT_DAYS),
            Self::MIN_DAYS..=Self::MAX_DAYS,
        )?;
        Ok(RotationSchedule {
            period_days,
            next_rotation_ms: days_after(now_ms, period_days),
        })
    }

    /// The schedule after a rotation at `now_ms`.
    #[must_use]
    pub fn after_rotation(self, now_ms: i64) -> Self {
        RotationSchedule {
            next_rotation_ms: days_after(now_ms, self.period_days),
            ..self
        }
    }
}

impl KeyRecord {
    /// The most characters a description may have.
    pub const MAX_DESCRIPTION_CHARS: usize = 8192;

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

    /// Whether the key is visible to callers (every state but `Creating`).
    pub fn is_visible(&self) -> bool {
        !matches!(self.state, KeyState::Creating | KeyState::Deleted)
    }

    /// The encryption algorithms the key supports.
    pub fn encryption_algorithms(&self) -> Vec<EncryptionAlgorithm> {
        match (self.usage, self.spec) {
            (KeyUsage::EncryptDecrypt, KeySpec::SymmetricDefault) => {
                vec![EncryptionAlgorithm::SymmetricDefault]
            }
        }
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

    /// The HSM objects of every version, pending ones included.
    pub fn version_refs(&self) -> impl Iterator<Item = KeyVersionRef> + '_ {
        self.versions.iter().map(|v| KeyVersionRef {
            key_id: self.id,
            version: v.version,
        })
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
}
