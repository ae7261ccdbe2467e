//! Key ids and the references callers use to name a key.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::KmsError;

/// The id of a KMS key: a random (v4) UUID, shown in its hyphenated lower-case form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct KeyId(Uuid);

impl KeyId {
    /// A fresh random id.
    pub fn random() -> Self {
        KeyId(Uuid::new_v4())
    }

    /// The id whose 16 bytes (RFC 4122 order) are `bytes`.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        KeyId(Uuid::from_bytes(bytes))
    }

    /// The 16 bytes of the UUID in RFC 4122 order, as they appear in a ciphertext blob.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.as_hyphenated().fmt(f)
    }
}

/// A string that is not a key UUID.
#[derive(Debug, thiserror::Error)]
#[error("not a key id (UUID)")]
pub struct ParseKeyIdError;

impl FromStr for KeyId {
    type Err = ParseKeyIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::try_parse(s).map(KeyId).map_err(|_| ParseKeyIdError)
    }
}

impl From<KeyId> for String {
    fn from(id: KeyId) -> Self {
        id.to_string()
    }
}

impl TryFrom<String> for KeyId {
    type Error = ParseKeyIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// An alias name: `alias/` followed by 1..=250 characters of `[A-Za-z0-9/_-]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct AliasName(String);

impl AliasName {
    /// The prefix every alias name starts with.
    pub const PREFIX: &'static str = "alias/";
    const MAX_SUFFIX: usize = 250;

    /// Parses an alias name, with a message saying what is wrong with a bad one.
    pub fn parse(s: &str) -> Result<Self, KmsError> {
        let suffix = s.strip_prefix(Self::PREFIX).ok_or_else(|| {
            KmsError::validation(format!("an alias name must start with {:?}", Self::PREFIX))
        })?;
        if suffix.is_empty() || suffix.len() > Self::MAX_SUFFIX {
            return Err(KmsError::validation(format!(
                "an alias name must have 1 to {} characters after {:?}",
                Self::MAX_SUFFIX,
                Self::PREFIX
            )));
        }
        if !suffix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'))
        {
            return Err(KmsError::validation(
                "an alias name may contain only letters, digits, '/', '_' and '-'",
            ));
        }
        Ok(AliasName(s.to_owned()))
    }

    /// The full name, `alias/...`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<AliasName> for String {
    fn from(alias: AliasName) -> Self {
        alias.0
    }
}

impl TryFrom<String> for AliasName {
    type Error = KmsError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        AliasName::parse(&s)
    }
}

impl fmt::Display for AliasName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a caller names a key: its UUID or one of its aliases.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum KeyRef {
    /// The key's UUID.
    Id(KeyId),
    /// An alias that points at the key.
    Alias(AliasName),
}

impl KeyRef {
    /// Parses a `key_id` request field; `field` names it in the error message.
    pub fn parse(s: &str, field: &str) -> Result<Self, KmsError> {
        if s.is_empty() {
            return Err(KmsError::validation(format!("{field} is required")));
        }
        if s.starts_with(AliasName::PREFIX) {
            return AliasName::parse(s).map(KeyRef::Alias);
        }
        s.parse().map(KeyRef::Id).map_err(|_| {
            KmsError::validation(format!(
                "{field} must be a key id (UUID) or an alias name (alias/...)"
            ))
        })
    }

    /// Parses an optional `key_id` field: empty means not given.
    pub fn parse_optional(s: &str, field: &str) -> Result<Option<Self>, KmsError> {
        if s.is_empty() {
            Ok(None)
        } else {
            Self::parse(s, field).map(Some)
        }
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRef::Id(id) => id.fmt(f),
            KeyRef::Alias(alias) => alias.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ref_accepts_uuid_and_alias() {
        let id = KeyId::random();
        assert_eq!(
            KeyRef::parse(&id.to_string(), "key_id").ok(),
            Some(KeyRef::Id(id))
        );
        assert!(matches!(
            KeyRef::parse("alias/app/prod-1_x", "key_id"),
            Ok(KeyRef::Alias(_))
        ));
    }

    #[test]
    fn key_ref_rejects_garbage_with_validation() {
        for bad in ["", "nope", "alias/", "alias/has space", "alias/ü"] {
            let err = KeyRef::parse(bad, "key_id").err();
            assert!(
                matches!(err, Some(KmsError::Validation(_))),
                "{bad:?} gave {err:?}"
            );
        }
        let long = format!("alias/{}", "a".repeat(251));
        assert!(KeyRef::parse(&long, "key_id").is_err());
        let max = format!("alias/{}", "a".repeat(250));
        assert!(KeyRef::parse(&max, "key_id").is_ok());
    }

    #[test]
    fn key_id_round_trips_through_bytes_and_text() {
        let id = KeyId::random();
        assert_eq!(KeyId::from_bytes(*id.as_bytes()), id);
        assert_eq!(id.to_string().parse::<KeyId>().ok(), Some(id));
    }
}
