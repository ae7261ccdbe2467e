//! Aliases: friendly names that point at a key and can be moved to another.

use serde::{Deserialize, Serialize};

use crate::error::KmsError;
use crate::ids::{AliasName, KeyId};

/// Names under this prefix are reserved for the service.
pub const RESERVED_PREFIX: &str = "alias/kms/";

/// An alias and the key it points at.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct AliasRecord {
    /// `alias/...`.
    pub name: AliasName,
    /// The key it points at.
    pub key_id: KeyId,
    /// When it was created, in Unix milliseconds.
    pub created_at_ms: i64,
    /// When it was last pointed at a key, in Unix milliseconds.
    pub updated_at_ms: i64,
}

/// Fails for names callers may not create, move or delete.
pub fn check_not_reserved(name: &AliasName) -> Result<(), KmsError> {
    if name.as_str().starts_with(RESERVED_PREFIX) {
        return Err(KmsError::Validation(format!(
            "alias names starting with {RESERVED_PREFIX:?} are reserved"
        )));
    }
    Ok(())
}
