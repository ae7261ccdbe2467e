//! The encryption context and its canonical encoding.
//!
//! Canonical encoding (all integers big-endian):
//!
//! ```text
//! u16                 number of pairs (0..=64)
//! then for each pair, in ascending byte order of the key:
//!   u16 key length,   key bytes (UTF-8)
//!   u16 value length, value bytes (UTF-8)
//! ```
//!
//! The count and the length prefixes make the encoding injective: two different maps never
//! encode alike. The empty context encodes as `00 00`.

use std::collections::BTreeMap;

use crate::error::KmsError;

/// A validated encryption context: at most 64 pairs and 8 KiB encoded, non-empty keys.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct EncryptionContext {
    pairs: BTreeMap<String, String>,
}

impl EncryptionContext {
    /// The most pairs a context may have.
    pub const MAX_PAIRS: usize = 64;
    /// The most bytes its canonical encoding may take.
    pub const MAX_ENCODED_LEN: usize = 8192;

    /// The empty context.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Validates `pairs`; `field` names the request field in error messages.
    pub fn new(
        pairs: impl IntoIterator<Item = (String, String)>,
        field: &str,
    ) -> Result<Self, KmsError> {
        let pairs: BTreeMap<String, String> = pairs.into_iter().collect();
        if pairs.len() > Self::MAX_PAIRS {
            return Err(KmsError::validation(format!(
                "{field} has {} pairs; at most {} are allowed",
                pairs.len(),
                Self::MAX_PAIRS
            )));
        }
        if pairs.keys().any(String::is_empty) {
            return Err(KmsError::validation(format!(
                "{field} keys must not be empty"
            )));
        }
        let encoded_len = 2 + pairs
            .iter()
            .map(|(k, v)| 4 + k.len() + v.len())
            .sum::<usize>();
        if encoded_len > Self::MAX_ENCODED_LEN {
            return Err(KmsError::validation(format!(
                "{field} takes {encoded_len} bytes encoded; at most {} are allowed",
                Self::MAX_ENCODED_LEN
            )));
        }
        Ok(EncryptionContext { pairs })
    }

    /// The pairs, in canonical (key byte) order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The value paired with `key`, if the context has that key (keys are case-sensitive).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.get(key).map(String::as_str)
    }

    /// Whether the context has no pairs.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The canonical encoding (see the module documentation).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        // The length checks in `new` bound every count and length by 8192 < u16::MAX.
        push_u16(&mut out, self.pairs.len());
        for (k, v) in &self.pairs {
            push_u16(&mut out, k.len());
            out.extend_from_slice(k.as_bytes());
            push_u16(&mut out, v.len());
            out.extend_from_slice(v.as_bytes());
        }
        out
    }
}

fn push_u16(out: &mut Vec<u8>, n: usize) {
    let n = u16::try_from(n).unwrap_or(u16::MAX);
    out.extend_from_slice(&n.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
        let owned = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        match EncryptionContext::new(owned, "encryption_context") {
            Ok(c) => c,
            Err(e) => panic!("valid context rejected: {e}"),
        }
    }

    #[test]
    fn encoding_is_sorted_and_length_prefixed() {
        let c = ctx(&[("b", "2"), ("a", "1")]);
        assert_eq!(
            c.encode(),
            [0, 2, 0, 1, b'a', 0, 1, b'1', 0, 1, b'b', 0, 1, b'2']
        );
        assert_eq!(EncryptionContext::empty().encode(), [0, 0]);
    }

    #[test]
    fn different_maps_never_encode_alike() {
        // Pairs that a naive "k=v;" or concatenating encoding confuses.
        let cases = [
            ctx(&[("a", "bc")]),
            ctx(&[("ab", "c")]),
            ctx(&[("a", "b"), ("c", "")]),
            ctx(&[("a", ""), ("bc", "")]),
            ctx(&[("a=b", "c")]),
            ctx(&[("a", "b=c")]),
            ctx(&[("a", "b;c=d")]),
            ctx(&[("a", "b"), ("c", "d")]),
            ctx(&[]),
            ctx(&[("a", "")]),
        ];
        for (i, x) in cases.iter().enumerate() {
            for (j, y) in cases.iter().enumerate() {
                if i != j {
                    assert_ne!(x.encode(), y.encode(), "cases {i} and {j}");
                }
            }
        }
    }

    #[test]
    fn sorting_is_by_key_bytes() {
        let c = ctx(&[("é", "1"), ("z", "2"), ("Z", "3")]);
        let keys: Vec<&str> = c.pairs().map(|(k, _)| k).collect();
        assert_eq!(keys, ["Z", "z", "é"]);
    }

    #[test]
    fn limits_are_enforced() {
        let too_many = (0..65).map(|i| (format!("k{i}"), String::new()));
        assert!(matches!(
            EncryptionContext::new(too_many, "encryption_context"),
            Err(KmsError::Validation(_))
        ));
        let max = (0..64).map(|i| (format!("k{i}"), String::new()));
        assert!(EncryptionContext::new(max, "encryption_context").is_ok());

        // 2 + 4 + 1 + 8185 = 8192 bytes: allowed; one more byte is not.
        let fits = [("k".to_owned(), "v".repeat(8185))];
        assert!(EncryptionContext::new(fits, "encryption_context").is_ok());
        let over = [("k".to_owned(), "v".repeat(8186))];
        assert!(matches!(
            EncryptionContext::new(over, "encryption_context"),
            Err(KmsError::Validation(_))
        ));

        let empty_key = [(String::new(), "v".to_owned())];
        assert!(EncryptionContext::new(empty_key, "encryption_context").is_err());
    }
}
