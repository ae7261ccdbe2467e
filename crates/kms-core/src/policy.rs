//! Key policies: who may do what with a key, in the IAM policy language of AWS KMS.
//!
//! A policy is a JSON document of at most 32768 bytes:
//!
//! ```json
//! {
//!   "Version": "2012-10-17",
//!   "Statement": [{
//!     "Sid": "AllowTenantA",
//!     "Effect": "Allow",
//!     "Principal": "spiffe://kms.test/tenant-a",
//!     "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
//!     "Condition": { "StringEquals": { "kms:EncryptionContext:tenant": "a" } }
//!   }]
//! }
//! ```
//!
//! - `Version` (optional) must be `"2012-10-17"`; `Id` (optional) is any string.
//! - `Statement` is one statement or a non-empty array of them. A statement has:
//!   - `Sid` (optional): its name, non-empty and unique within the policy;
//!   - `Effect`: `"Allow"` or `"Deny"`;
//!   - `Principal`: `"*"` (anyone), a principal name, an array of names, or `{"KMS": ...}`
//!     holding one of those. Names are compared exactly, and have 1 to 1024 characters. The
//!     name `"#administrators"` ([`ADMINISTRATORS`]) stands for the administrators kmsd is
//!     configured with *now*: default policies name them so, so that removing an
//!     administrator from the configuration takes their rights on every key;
//!   - `Action`: a pattern or a non-empty array of patterns such as `"kms:Decrypt"`,
//!     `"kms:GenerateDataKey*"` or `"kms:*"`. In a pattern `*` matches any characters and `?`
//!     one; case does not matter. Each pattern must match at least one action;
//!   - `Resource` (optional): `"*"`, the key the policy is attached to;
//!   - `Condition` (optional): `{ "<operator>": { "<condition key>": <value or [values]> } }`.
//! - Any other field is an error, and so is a field given twice.
//!
//! Condition operators: `StringEquals`, `StringNotEquals`, `StringEqualsIgnoreCase`,
//! `StringNotEqualsIgnoreCase`, `StringLike`, `StringNotLike` (case-sensitive patterns with `*`
//! and `?`), and `Bool` (values `true`, `false`, `"true"` or `"false"`). Any of them may end in
//! `IfExists`. Condition keys (their names are case-insensitive):
//!
//! - `kms:AliasName`: the alias a CreateAlias, UpdateAlias or DeleteAlias names (e.g.
//!   `alias/tenant-a/payments`); absent in every other request;
//! - `kms:CallerPrincipal`: the caller's principal name;
//! - `kms:EncryptionContext:<key>`: the value of `<key>` (case-sensitive) in the request's
//!   encryption context; absent when the request carries no context or no such key;
//! - `kms:SecureTransport`: a boolean, true when the caller authenticated with mutual TLS.
//!
//! A condition holds when every operator holds and, within an operator, every key holds. A key
//! with several values holds when any value matches (`...Not...` operators: when none does).
//! When the request has no value for the key, `...IfExists` and `...Not...` operators hold and
//! the others do not.
//!
//! A statement applies to a request when its principal, one of its action patterns and its
//! condition all match. If an applying statement denies, the request is denied (explicitly);
//! otherwise, if one allows, it is allowed; otherwise it is denied (implicitly).
//!
//! The server-level policy of the configuration is in the same language. Its Deny statements
//! bind every action, on every key, administrators included; its Allow statements grant the
//! actions that concern no key ([`Action::is_server_level`]) and the alias-name half of
//! CreateAlias, UpdateAlias and DeleteAlias (which also need the key policy's Allow on the
//! key).

use std::fmt;

use crate::context::EncryptionContext;
use crate::error::KmsError;

macro_rules! actions {
    ($($variant:ident),+ $(,)?) => {
        /// A KMS operation, named in policies `kms:<variant>` (e.g. `kms:Encrypt`).
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        pub enum Action {
            $($variant,)+
        }

        impl Action {
            /// Every action, in declaration order.
            pub const ALL: &'static [Action] = &[$(Action::$variant),+];

            /// The policy name, e.g. `"kms:Encrypt"`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Action::$variant => concat!("kms:", stringify!($variant)),)+
                }
            }
        }
    };
}

actions! {
    CreateKey, DescribeKey, ListKeys, EnableKey, DisableKey, UpdateKeyDescription,
    Encrypt, Decrypt, ReEncryptFrom, ReEncryptTo, GenerateDataKey, GenerateDataKeyWithoutPlaintext,
    GenerateRandom, CreateAlias, UpdateAlias, DeleteAlias, ListAliases, TagResource, UntagResource,
    ListResourceTags, RotateKeyOnDemand, ListKeyRotations, EnableKeyRotation, DisableKeyRotation,
    GetKeyRotationStatus, ScheduleKeyDeletion, CancelKeyDeletion, GetKeyPolicy, PutKeyPolicy,
    GetPublicKey, Sign, Verify, GenerateMac, VerifyMac, GetParametersForImport, ImportKeyMaterial,
    DeleteImportedKeyMaterial, RotateDomainKey, GetDomainKeyStatus,
}

// `ActionSet` keeps one bit per action.
const _: () = assert!(Action::ALL.len() <= 64);

impl Action {
    /// The action named `name` (e.g. `"kms:Encrypt"`), ignoring case as IAM does.
    pub fn parse(name: &str) -> Option<Action> {
        Action::ALL
            .iter()
            .copied()
            .find(|a| a.name().eq_ignore_ascii_case(name))
    }

    /// Whether the action involves no key (it is governed by the server-level policy).
    pub fn is_server_level(self) -> bool {
        matches!(
            self,
            Action::CreateKey
                | Action::ListKeys
                | Action::ListAliases
                | Action::GenerateRandom
                | Action::RotateDomainKey
                | Action::GetDomainKeyStatus
        )
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of actions, one bit each: what a statement's action patterns match, computed once at
/// parse time so evaluation is a bit test.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
struct ActionSet(u64);

impl ActionSet {
    fn bit(action: Action) -> u64 {
        1 << (action as u32)
    }

    fn contains(self, action: Action) -> bool {
        self.0 & Self::bit(action) != 0
    }

    fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn union(self, other: ActionSet) -> ActionSet {
        ActionSet(self.0 | other.0)
    }

    fn matching(filter: impl Fn(Action) -> bool) -> ActionSet {
        let bits = Action::ALL
            .iter()
            .filter(|a| filter(**a))
            .fold(0, |bits, a| bits | Self::bit(*a));
        ActionSet(bits)
    }
}

/// The principal name that stands for the configured administrators.
pub const ADMINISTRATORS: &str = "#administrators";

/// A parsed, validated key policy (or the server-level policy), with its text exactly as given.
#[derive(Clone)]
pub struct KeyPolicy {
    text: String,
    statements: Vec<Statement>,
}

#[derive(Clone, PartialEq, Eq, Debug)]
struct Statement {
    sid: Option<String>,
    effect: Effect,
    principals: Principals,
    actions: ActionSet,
    conditions: Vec<Condition>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Effect {
    Allow,
    Deny,
}

#[derive(Clone, PartialEq, Eq, Debug)]
enum Principals {
    Anyone,
    Named(Vec<String>),
}

impl Principals {
    fn from_names(names: Vec<String>) -> Principals {
        if names.iter().any(|n| n == "*") {
            Principals::Anyone
        } else {
            Principals::Named(names)
        }
    }
}

/// One key of one operator of a statement's `Condition`.
#[derive(Clone, PartialEq, Eq, Debug)]
enum Condition {
    /// `Bool` on kms:SecureTransport (which every request has): holds for these values.
    SecureTransport(Vec<bool>),
    /// A `String...` operator on a string key.
    Strings {
        key: StringKey,
        op: StringOp,
        negated: bool,
        if_exists: bool,
        values: Vec<String>,
    },
}

#[derive(Clone, PartialEq, Eq, Debug)]
enum ConditionKey {
    SecureTransport,
    String(StringKey),
}

#[derive(Clone, PartialEq, Eq, Debug)]
enum StringKey {
    AliasName,
    CallerPrincipal,
    EncryptionContext(String),
}

/// A condition operator, without its `IfExists` suffix.
#[derive(Clone, Copy)]
enum Operator {
    Bool,
    Strings(StringOp, bool),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum StringOp {
    Equals,
    EqualsIgnoreCase,
    Like,
}

/// What a policy is asked: may `principal` perform `action`, in these circumstances?
#[derive(Clone, Copy, Debug)]
pub struct AccessRequest<'a> {
    /// The caller's authenticated principal name.
    pub principal: &'a str,
    /// The operation requested.
    pub action: Action,
    /// The request's encryption context, for operations that carry one.
    pub encryption_context: Option<&'a EncryptionContext>,
    /// Whether the caller authenticated with mutual TLS.
    pub secure_transport: bool,
    /// Whether the caller is one of the configured administrators (matches the principal
    /// [`ADMINISTRATORS`]).
    pub administrator: bool,
    /// The alias a CreateAlias, UpdateAlias or DeleteAlias names (kms:AliasName).
    pub alias_name: Option<&'a str>,
}

/// The outcome of evaluating a policy.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Decision {
    /// An Allow statement matched and no Deny did.
    Allow(StatementRef),
    /// A Deny statement matched (wins over any Allow).
    ExplicitDeny(StatementRef),
    /// No statement matched.
    ImplicitDeny,
}

/// The statement that decided, for audit logs and error messages.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StatementRef {
    /// Its position in the policy, from 1.
    pub index: usize,
    /// Its Sid, if it has one.
    pub sid: Option<String>,
}

impl fmt::Display for StatementRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.sid {
            Some(sid) => write!(f, "Sid {sid:?}"),
            None => write!(f, "Statement[{}]", self.index),
        }
    }
}

impl Decision {
    /// Whether the request may proceed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    /// The statement that decided, unless none matched.
    pub fn statement(&self) -> Option<&StatementRef> {
        match self {
            Decision::Allow(s) | Decision::ExplicitDeny(s) => Some(s),
            Decision::ImplicitDeny => None,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow(s) => write!(f, "Allow ({s})"),
            Decision::ExplicitDeny(s) => write!(f, "Deny (explicit, {s})"),
            Decision::ImplicitDeny => f.write_str("Deny (implicit: no statement allows it)"),
        }
    }
}

impl KeyPolicy {
    /// The longest policy text, in bytes.
    pub const MAX_LEN: usize = 32768;
    /// The longest principal name, in characters.
    pub const MAX_PRINCIPAL_CHARS: usize = 1024;
    /// The only `Version` a policy may state.
    pub const VERSION: &'static str = "2012-10-17";

    /// Parses a key policy: its action patterns may match any [`Action`].
    pub fn parse(text: &str) -> Result<KeyPolicy, KmsError> {
        parse_policy(text)
    }

    /// Parses the server-level policy of the configuration. Its patterns may match any action:
    /// see the module's documentation for what its Allows and Denies do.
    pub fn parse_server(text: &str) -> Result<KeyPolicy, KmsError> {
        parse_policy(text)
    }

    /// The policy of a new key: one statement, Sid "KeyCreatorAndAdministrators", allowing
    /// `kms:*` to the creator and to the administrators, named symbolically
    /// ([`ADMINISTRATORS`]) so that the configuration in force decides who they are.
    ///
    /// The creator is expected to be a valid principal (1 to [`Self::MAX_PRINCIPAL_CHARS`]
    /// characters), as authenticated callers are; the text of a policy made from an invalid
    /// name would not parse back.
    pub fn default_for(creator: &str) -> KeyPolicy {
        // The same text `serde_json::to_string_pretty` gives, written out so that it cannot fail.
        const HEAD: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Sid": "KeyCreatorAndAdministrators",
      "Effect": "Allow",
      "Principal": ["#;
        const TAIL: &str = r#"
      ],
      "Action": "kms:*"
    }
  ]
}"#;
        let mut names = vec![creator.to_owned()];
        if creator != ADMINISTRATORS {
            names.push(ADMINISTRATORS.to_owned());
        }
        let mut text = HEAD.to_owned();
        for (i, name) in names.iter().enumerate() {
            text.push_str(if i == 0 { "\n        " } else { ",\n        " });
            push_json_string(&mut text, name);
        }
        text.push_str(TAIL);
        let statement = Statement {
            sid: Some("KeyCreatorAndAdministrators".to_owned()),
            effect: Effect::Allow,
            principals: Principals::from_names(names),
            actions: ActionSet::matching(|_| true),
            conditions: Vec::new(),
        };
        KeyPolicy {
            text,
            statements: vec![statement],
        }
    }

    /// The policy text, exactly as given.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Decides `request`: the first applying Deny statement, else the first applying Allow
    /// statement, else an implicit deny.
    pub fn evaluate(&self, request: &AccessRequest<'_>) -> Decision {
        let mut allow = None;
        for (i, statement) in self.statements.iter().enumerate() {
            if !statement.applies(request) {
                continue;
            }
            match statement.effect {
                Effect::Deny => return Decision::ExplicitDeny(statement.reference(i)),
                Effect::Allow => {
                    allow.get_or_insert((i, statement));
                }
            }
        }
        match allow {
            Some((i, statement)) => Decision::Allow(statement.reference(i)),
            None => Decision::ImplicitDeny,
        }
    }
}

impl PartialEq for KeyPolicy {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for KeyPolicy {}

impl fmt::Debug for KeyPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyPolicy").field(&self.text).finish()
    }
}

impl Statement {
    fn applies(&self, request: &AccessRequest<'_>) -> bool {
        self.actions.contains(request.action)
            && match &self.principals {
                Principals::Anyone => true,
                // The symbol stands for the administrators only, never for a caller that
                // happens to bear its name.
                Principals::Named(names) => names.iter().any(|n| {
                    if n == ADMINISTRATORS {
                        request.administrator
                    } else {
                        n == request.principal
                    }
                }),
            }
            && self.conditions.iter().all(|c| c.holds(request))
    }

    fn reference(&self, i: usize) -> StatementRef {
        StatementRef {
            index: i + 1,
            sid: self.sid.clone(),
        }
    }
}

impl Condition {
    fn holds(&self, request: &AccessRequest<'_>) -> bool {
        match self {
            Condition::SecureTransport(values) => values.contains(&request.secure_transport),
            Condition::Strings {
                key,
                op,
                negated,
                if_exists,
                values,
            } => {
                let actual = match key {
                    StringKey::AliasName => request.alias_name,
                    StringKey::CallerPrincipal => Some(request.principal),
                    StringKey::EncryptionContext(key) => {
                        request.encryption_context.and_then(|c| c.get(key))
                    }
                };
                match actual {
                    None => *if_exists || *negated,
                    Some(actual) => values.iter().any(|v| op.matches(v, actual)) != *negated,
                }
            }
        }
    }
}

impl StringOp {
    fn matches(self, expected: &str, actual: &str) -> bool {
        match self {
            StringOp::Equals => expected == actual,
            StringOp::EqualsIgnoreCase => expected
                .chars()
                .flat_map(char::to_lowercase)
                .eq(actual.chars().flat_map(char::to_lowercase)),
            StringOp::Like => glob_match(expected, actual, false),
        }
    }
}

/// IAM glob: `*` matches any sequence of characters (including none), `?` exactly one.
///
/// Iterative, remembering only the last `*`: a mismatch lets that star absorb one more
/// character and retries from there. Earlier stars never need revisiting (whatever they could
/// absorb, the last one can), so the cost is at most pattern length × text length.
fn glob_match(pattern: &str, text: &str, ignore_case: bool) -> bool {
    let (mut p, mut t) = (pattern, text);
    // The pattern after the last star seen, and the text its match would resume from.
    let mut star: Option<(&str, &str)> = None;
    loop {
        let mut text_chars = t.chars();
        let Some(tc) = text_chars.next() else { break };
        let mut pattern_chars = p.chars();
        match pattern_chars.next() {
            Some('*') => {
                p = pattern_chars.as_str();
                star = Some((p, t));
            }
            Some(pc) if pc == '?' || pc == tc || (ignore_case && pc.eq_ignore_ascii_case(&tc)) => {
                p = pattern_chars.as_str();
                t = text_chars.as_str();
            }
            _ => {
                let Some((after_star, resume)) = star else {
                    return false;
                };
                let mut resume_chars = resume.chars();
                resume_chars.next();
                star = Some((after_star, resume_chars.as_str()));
                p = after_star;
                t = resume_chars.as_str();
            }
        }
    }
    p.chars().all(|c| c == '*')
}

/// Appends `s` as a JSON string literal, escaped as serde_json escapes it.
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c < ' ' => {
                // Below 0x20: two hex digits, each from_digit'able.
                let n = u32::from(c);
                out.push_str("\\u00");
                out.push(char::from_digit(n >> 4, 16).unwrap_or('0'));
                out.push(char::from_digit(n & 0xf, 16).unwrap_or('0'));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

mod cache;
mod parse;
pub use cache::PolicyCache;
use parse::parse_policy;

#[cfg(test)]
mod tests;
