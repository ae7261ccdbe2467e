//! Who is calling, and what the call touched: the input of authorization and the part of an
//! audit record that only the service knows (which key and version a blob named, which policy
//! statement decided).

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::context::EncryptionContext;
use crate::ids::KeyId;

/// The authenticated caller of one request. Moved into the blocking thread that runs the
/// request, and back out for the audit record.
pub struct Caller {
    principal: String,
    secure_transport: bool,
    note: RefCell<CallNote>,
}

/// What the service noted while running one request, for its audit record.
#[derive(Default, Clone, PartialEq, Eq, Debug)]
pub struct CallNote {
    /// The keys the request used, with the version when one was used, in the order of use.
    pub keys: Vec<(KeyId, Option<u32>)>,
    /// The encryption context of the request (the source context for ReEncrypt).
    pub encryption_context: Option<BTreeMap<String, String>>,
    /// The destination context of a ReEncrypt.
    pub destination_encryption_context: Option<BTreeMap<String, String>>,
    /// The policy statement that decided, e.g. `Sid "AllowApps"`.
    pub policy_statement: Option<String>,
}

impl Caller {
    /// A caller known as `principal`; `secure_transport` is true when it authenticated with
    /// mutual TLS.
    pub fn new(principal: impl Into<String>, secure_transport: bool) -> Self {
        Caller {
            principal: principal.into(),
            secure_transport,
            note: RefCell::new(CallNote::default()),
        }
    }

    /// The principal: a client certificate's URI SAN or subject CN, or `dev`.
    pub fn principal(&self) -> &str {
        &self.principal
    }

    /// Whether the caller authenticated with mutual TLS.
    pub fn secure_transport(&self) -> bool {
        self.secure_transport
    }

    /// What the service noted; the note is left empty.
    pub fn take_note(&self) -> CallNote {
        self.note.take()
    }

    /// Notes that the request used `key` (and `version`, once known).
    pub(crate) fn note_key(&self, key: KeyId, version: Option<u32>) {
        let mut note = self.note.borrow_mut();
        match note.keys.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) if version.is_some() => entry.1 = version,
            Some(_) => {}
            None => note.keys.push((key, version)),
        }
    }

    /// Notes the request's encryption context (`destination` for ReEncrypt's second one).
    pub(crate) fn note_context(&self, context: &EncryptionContext, destination: bool) {
        let pairs = context
            .pairs()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let mut note = self.note.borrow_mut();
        if destination {
            note.destination_encryption_context = Some(pairs);
        } else {
            note.encryption_context = Some(pairs);
        }
    }

    /// Notes the policy statement that decided.
    pub(crate) fn note_statement(&self, statement: String) {
        self.note.borrow_mut().policy_statement = Some(statement);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_noted_once_and_gets_its_version() {
        let caller = Caller::new("p", true);
        let key = KeyId::random();
        caller.note_key(key, None);
        caller.note_key(key, Some(3));
        caller.note_key(key, None);
        assert_eq!(caller.take_note().keys, vec![(key, Some(3))]);
        assert!(caller.take_note().keys.is_empty());
    }
}
