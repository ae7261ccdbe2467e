//! Key tags: free-form key/value pairs operators attach to keys.

use std::collections::BTreeMap;

use crate::error::KmsError;

/// The most tags a key may have.
pub const MAX_TAGS: usize = 50;
/// The longest tag key, in characters.
pub const MAX_KEY_CHARS: usize = 128;
/// The longest tag value, in characters.
pub const MAX_VALUE_CHARS: usize = 256;

/// Tags to add: valid keys and values, no key twice.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct NewTags(BTreeMap<String, String>);

impl NewTags {
    /// Checks each pair's lengths and that no key is given twice.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Result<Self, KmsError> {
        let mut tags = BTreeMap::new();
        for (key, value) in pairs {
            check_key(&key)?;
            if value.chars().count() > MAX_VALUE_CHARS {
                return Err(KmsError::Validation(format!(
                    "the value of tag {key:?} is longer than {MAX_VALUE_CHARS} characters"
                )));
            }
            if tags.insert(key.clone(), value).is_some() {
                return Err(KmsError::Validation(format!("tag {key:?} is given twice")));
            }
        }
        if tags.len() > MAX_TAGS {
            return Err(too_many());
        }
        Ok(NewTags(tags))
    }

    /// Adds these tags to `tags` (replacing values of existing keys), within the limit.
    pub fn merge_into(self, tags: &mut BTreeMap<String, String>) -> Result<(), KmsError> {
        let mut merged = tags.clone();
        merged.extend(self.0);
        if merged.len() > MAX_TAGS {
            return Err(too_many());
        }
        *tags = merged;
        Ok(())
    }
}

/// Checks a tag key: 1 to 128 characters.
pub fn check_key(key: &str) -> Result<(), KmsError> {
    let chars = key.chars().count();
    if chars == 0 || chars > MAX_KEY_CHARS {
        return Err(KmsError::Validation(format!(
            "tag keys must have 1 to {MAX_KEY_CHARS} characters"
        )));
    }
    Ok(())
}

fn too_many() -> KmsError {
    KmsError::LimitExceeded(format!("a key may have at most {MAX_TAGS} tags"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(n: usize) -> Vec<(String, String)> {
        (0..n).map(|i| (format!("k{i}"), format!("v{i}"))).collect()
    }

    #[test]
    fn limits() {
        assert!(NewTags::new(pairs(50)).is_ok());
        assert!(matches!(
            NewTags::new(pairs(51)),
            Err(KmsError::LimitExceeded(_))
        ));
        assert!(NewTags::new([("k".repeat(128), "v".repeat(256))]).is_ok());
        assert!(matches!(
            NewTags::new([("k".repeat(129), String::new())]),
            Err(KmsError::Validation(_))
        ));
        assert!(matches!(
            NewTags::new([("k".into(), "v".repeat(257))]),
            Err(KmsError::Validation(_))
        ));
        assert!(matches!(
            NewTags::new([(String::new(), "v".into())]),
            Err(KmsError::Validation(_))
        ));
        assert!(matches!(
            NewTags::new([("k".into(), "1".into()), ("k".into(), "2".into())]),
            Err(KmsError::Validation(_))
        ));
    }

    #[test]
    fn merging_replaces_values_and_counts_the_union() {
        let mut tags: BTreeMap<String, String> = pairs(49).into_iter().collect();
        let ok = NewTags::new([("k0".into(), "new".into()), ("extra".into(), String::new())]);
        assert!(ok.and_then(|t| t.merge_into(&mut tags)).is_ok());
        assert_eq!(tags.len(), 50);
        assert_eq!(tags["k0"], "new");
        let over = NewTags::new([("one-more".into(), String::new())]);
        assert!(matches!(
            over.and_then(|t| t.merge_into(&mut tags)),
            Err(KmsError::LimitExceeded(_))
        ));
        assert_eq!(tags.len(), 50, "a refused merge changes nothing");
    }
}
