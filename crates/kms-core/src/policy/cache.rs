//! Parsed key policies, kept by their text: a key record stores its policy as text, and every
//! call that reads the key needs it parsed. Parsing once per distinct text (most keys share a
//! few policies) takes the JSON parse off every call's path. The cache is bounded by the
//! bytes of text it holds; a policy it dropped is parsed again when next needed.

use std::sync::Arc;

use quick_cache::Weighter;
use quick_cache::sync::Cache;

use super::{ADMINISTRATORS, KeyPolicy};
use crate::error::KmsError;

/// Parsed policies by their text.
pub struct PolicyCache {
    parsed: Cache<String, Arc<KeyPolicy>, TextWeight>,
    /// The policy of keys made before key policies existed: the administrators only.
    legacy: Arc<KeyPolicy>,
}

/// Weighs an entry by its text (a policy's parsed form is of the same order).
#[derive(Clone)]
struct TextWeight;

impl Weighter<String, Arc<KeyPolicy>> for TextWeight {
    fn weight(&self, text: &String, _: &Arc<KeyPolicy>) -> u64 {
        // Twice: the key and the parsed policy's own copy.
        2 * text.len() as u64 + 1
    }
}

impl PolicyCache {
    /// The bytes of policy text the cache holds by default: 32 MiB, at least a thousand of
    /// the largest policies and tens of thousands of usual ones.
    pub const DEFAULT_BYTES: u64 = 32 << 20;

    /// A cache holding up to `bytes` of policy text.
    pub fn new(bytes: u64) -> Self {
        PolicyCache {
            parsed: Cache::with_weighter(1024, bytes, TextWeight),
            legacy: Arc::new(KeyPolicy::default_for(ADMINISTRATORS)),
        }
    }

    /// The parsed policy of the text `text` (the legacy policy for `None`). Text that does not
    /// parse was stored by no version of this service: KMSInternalException.
    pub fn get(&self, text: Option<&str>) -> Result<Arc<KeyPolicy>, KmsError> {
        let Some(text) = text else {
            return Ok(self.legacy.clone());
        };
        self.parsed.get_or_insert_with(text, || {
            KeyPolicy::parse(text)
                .map(Arc::new)
                .map_err(|error| KmsError::Internal(format!("a stored key policy: {error}").into()))
        })
    }

    /// Keeps `policy`, just parsed from a caller's document, so the next call finds it.
    pub fn insert(&self, policy: &Arc<KeyPolicy>) {
        self.parsed
            .insert(policy.text().to_owned(), Arc::clone(policy));
    }
}

impl Default for PolicyCache {
    fn default() -> Self {
        PolicyCache::new(Self::DEFAULT_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_is_parsed_once_and_bad_stored_text_is_an_internal_error() {
        let cache = PolicyCache::default();
        let policy = KeyPolicy::default_for("app");
        let first = cache.get(Some(policy.text()));
        let second = cache.get(Some(policy.text()));
        match (first, second) {
            (Ok(a), Ok(b)) => assert!(Arc::ptr_eq(&a, &b), "the second read is the cached parse"),
            _ => panic!("a default policy parses"),
        }
        assert!(matches!(cache.get(Some("{")), Err(KmsError::Internal(_))));
        let legacy = cache.get(None).map(|p| p.text().to_owned());
        assert_eq!(
            legacy.ok(),
            Some(KeyPolicy::default_for(ADMINISTRATORS).text().to_owned())
        );
    }

    #[test]
    fn the_cache_stays_within_its_bytes() {
        let cache = PolicyCache::new(64 * 1024);
        for i in 0..2000 {
            let policy = KeyPolicy::default_for(&format!("principal-{i}"));
            assert!(cache.get(Some(policy.text())).is_ok());
        }
        assert!(cache.parsed.weight() <= 64 * 1024);
        assert!(cache.parsed.len() < 2000);
    }
}
