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

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Serialize, Serializer};

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
    DeleteImportedKeyMaterial,
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
            Action::CreateKey | Action::ListKeys | Action::ListAliases | Action::GenerateRandom
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

impl Serialize for KeyPolicy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for KeyPolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        KeyPolicy::parse(&text).map_err(de::Error::custom)
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

// ---- Parsing ----

/// A JSON value that keeps object fields in document order and refuses a field given twice
/// (which parsers disagree about: the first or the last?).
enum Json {
    Null,
    Bool(bool),
    Number,
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn string(&self) -> Result<&str, &Json> {
        match self {
            Json::String(s) => Ok(s),
            other => Err(other),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }
}

/// For error messages: a string quoted, anything else by its kind.
impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Json::String(s) => write!(f, "{s:?}"),
            other => f.write_str(other.kind()),
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Json, E> {
        Ok(Json::Number)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Json, E> {
        Ok(Json::Number)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Json, E> {
        Ok(Json::Number)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut fields: Vec<(String, Json)> = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            if fields.iter().any(|(n, _)| *n == name) {
                return Err(de::Error::custom(format_args!(
                    "field {name:?} is given twice"
                )));
            }
            let value = map.next_value()?;
            fields.push((name, value));
        }
        Ok(Json::Object(fields))
    }
}

fn policy_error(message: impl fmt::Display) -> KmsError {
    KmsError::Validation(format!("policy: {message}"))
}

/// Where an error is: a statement, by index (from 1) and Sid.
#[derive(Clone, Copy)]
struct At<'a> {
    index: usize,
    sid: Option<&'a str>,
}

impl At<'_> {
    fn error(self, message: impl fmt::Display) -> KmsError {
        match self.sid {
            Some(sid) => policy_error(format_args!(
                "Statement[{}] (Sid {sid:?}): {message}",
                self.index
            )),
            None => policy_error(format_args!("Statement[{}]: {message}", self.index)),
        }
    }
}

fn parse_policy(text: &str) -> Result<KeyPolicy, KmsError> {
    if text.len() > KeyPolicy::MAX_LEN {
        return Err(policy_error(format_args!(
            "is {} bytes long; at most {} are allowed",
            text.len(),
            KeyPolicy::MAX_LEN
        )));
    }
    let json: Json = serde_json::from_str(text)
        .map_err(|e| policy_error(format_args!("not valid JSON: {e}")))?;
    let Json::Object(fields) = json else {
        return Err(policy_error(format_args!(
            "must be a JSON object, not {json}"
        )));
    };
    let mut statement_list = None;
    for (name, value) in &fields {
        match (name.as_str(), value) {
            ("Version", Json::String(v)) if v == KeyPolicy::VERSION => {}
            ("Version", other) => {
                let version = KeyPolicy::VERSION;
                return Err(policy_error(format_args!(
                    "Version must be {version:?}, not {other}"
                )));
            }
            ("Id", Json::String(_)) => {}
            ("Id", other) => {
                return Err(policy_error(format_args!(
                    "Id must be a string, not {other}"
                )));
            }
            ("Statement", _) => statement_list = Some(value),
            (other, _) => return Err(policy_error(format_args!("unknown field {other:?}"))),
        }
    }
    let items = match statement_list {
        None => return Err(policy_error("Statement is missing")),
        Some(Json::Array(items)) => items.as_slice(),
        Some(single @ Json::Object(_)) => std::slice::from_ref(single),
        Some(other) => {
            return Err(policy_error(format_args!(
                "Statement must be an object or an array of objects, not {other}"
            )));
        }
    };
    if items.is_empty() {
        return Err(policy_error("Statement must hold at least one statement"));
    }
    let mut statements: Vec<Statement> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let statement = parse_statement(i + 1, item)?;
        if let Some(sid) = &statement.sid
            && let Some(first) = statements.iter().position(|s| s.sid.as_ref() == Some(sid))
        {
            let at = At {
                index: i + 1,
                sid: Some(sid),
            };
            return Err(at.error(format_args!(
                "Sid is already used by Statement[{}]",
                first + 1
            )));
        }
        statements.push(statement);
    }
    Ok(KeyPolicy {
        text: text.to_owned(),
        statements,
    })
}

fn parse_statement(index: usize, item: &Json) -> Result<Statement, KmsError> {
    let Json::Object(fields) = item else {
        let at = At { index, sid: None };
        return Err(at.error(format_args!("must be an object, not {item}")));
    };
    // The Sid first, so that every later error can name it.
    let sid = match fields.iter().find(|(name, _)| name == "Sid") {
        None => None,
        Some((_, Json::String(sid))) if !sid.is_empty() => Some(sid.as_str()),
        Some(_) => return Err(At { index, sid: None }.error("Sid must be a non-empty string")),
    };
    let at = At { index, sid };
    let (mut effect, mut principals, mut actions) = (None, None, None);
    let mut conditions = Vec::new();
    for (name, value) in fields {
        match name.as_str() {
            "Sid" => {}
            "Effect" => effect = Some(parse_effect(at, value)?),
            "Principal" => principals = Some(parse_principal(at, value)?),
            "Action" => actions = Some(parse_actions(at, value)?),
            "Resource" => match value {
                Json::String(r) if r == "*" => {}
                other => return Err(at.error(format_args!("Resource must be \"*\", not {other}"))),
            },
            "Condition" => conditions = parse_condition(at, value)?,
            other => return Err(at.error(format_args!("unknown field {other:?}"))),
        }
    }
    Ok(Statement {
        sid: sid.map(str::to_owned),
        effect: effect.ok_or_else(|| at.error("Effect is missing"))?,
        principals: principals.ok_or_else(|| at.error("Principal is missing"))?,
        actions: actions.ok_or_else(|| at.error("Action is missing"))?,
        conditions,
    })
}

fn parse_effect(at: At<'_>, value: &Json) -> Result<Effect, KmsError> {
    match value {
        Json::String(e) if e == "Allow" => Ok(Effect::Allow),
        Json::String(e) if e == "Deny" => Ok(Effect::Deny),
        other => Err(at.error(format_args!(
            "Effect must be \"Allow\" or \"Deny\", not {other}"
        ))),
    }
}

fn parse_principal(at: At<'_>, value: &Json) -> Result<Principals, KmsError> {
    let names = match value {
        Json::Object(fields) => match fields.as_slice() {
            [(name, inner)] if name == "KMS" => principal_names(at, inner)?,
            _ => {
                let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
                return Err(at.error(format_args!(
                    "Principal as an object must have exactly one field, \"KMS\", not {names:?}"
                )));
            }
        },
        other => principal_names(at, other)?,
    };
    for (i, name) in names.iter().enumerate() {
        let chars = name.chars().count();
        if chars == 0 || chars > KeyPolicy::MAX_PRINCIPAL_CHARS {
            return Err(at.error(format_args!(
                "Principal #{} must have 1 to {} characters, not {chars}",
                i + 1,
                KeyPolicy::MAX_PRINCIPAL_CHARS
            )));
        }
    }
    Ok(Principals::from_names(names))
}

fn principal_names(at: At<'_>, value: &Json) -> Result<Vec<String>, KmsError> {
    let names = strings(value).map_err(|kind| {
        at.error(format_args!(
            "Principal must be \"*\", a principal name, an array of them, or {{\"KMS\": ...}}, not {kind}"
        ))
    })?;
    if names.is_empty() {
        return Err(at.error("Principal must not be an empty array"));
    }
    Ok(names.into_iter().map(str::to_owned).collect())
}

/// A string or an array of strings; else the value found instead.
fn strings(value: &Json) -> Result<Vec<&str>, &Json> {
    match value {
        Json::Array(items) => items.iter().map(Json::string).collect(),
        other => other.string().map(|s| vec![s]),
    }
}

fn parse_actions(at: At<'_>, value: &Json) -> Result<ActionSet, KmsError> {
    let patterns = strings(value).map_err(|found| {
        at.error(format_args!(
            "Action must be a pattern or an array of patterns, not {found}"
        ))
    })?;
    if patterns.is_empty() {
        return Err(at.error("Action must not be an empty array"));
    }
    let mut actions = ActionSet::default();
    for pattern in patterns {
        let matched = ActionSet::matching(|a| glob_match(pattern, a.name(), true));
        if matched.is_empty() {
            return Err(at.error(format_args!("Action {pattern:?} matches no KMS action")));
        }
        actions = actions.union(matched);
    }
    Ok(actions)
}

fn parse_condition(at: At<'_>, value: &Json) -> Result<Vec<Condition>, KmsError> {
    let Json::Object(operators) = value else {
        return Err(at.error(format_args!("Condition must be an object, not {value}")));
    };
    if operators.is_empty() {
        return Err(at.error("Condition must not be empty"));
    }
    let mut conditions = Vec::new();
    for (operator, block) in operators {
        let (op, if_exists) = parse_operator(operator)
            .ok_or_else(|| at.error(format_args!("Condition operator {operator:?} is unknown")))?;
        let Json::Object(keys) = block else {
            return Err(at.error(format_args!(
                "Condition {operator:?} must be an object of condition keys, not {block}"
            )));
        };
        if keys.is_empty() {
            return Err(at.error(format_args!("Condition {operator:?} must not be empty")));
        }
        for (name, values) in keys {
            let key = parse_condition_key(name).map_err(|problem| {
                at.error(format_args!(
                    "Condition {operator:?}: key {name:?} {problem}"
                ))
            })?;
            let condition = make_condition(op, if_exists, key, values).map_err(|problem| {
                at.error(format_args!(
                    "Condition {operator:?}: key {name:?} {problem}"
                ))
            })?;
            conditions.push(condition);
        }
    }
    Ok(conditions)
}

/// The operator `name` names, and whether it ends in `IfExists`.
fn parse_operator(name: &str) -> Option<(Operator, bool)> {
    let (base, if_exists) = match name.strip_suffix("IfExists") {
        Some(base) => (base, true),
        None => (name, false),
    };
    let op = match base {
        "Bool" => Operator::Bool,
        "StringEquals" => Operator::Strings(StringOp::Equals, false),
        "StringNotEquals" => Operator::Strings(StringOp::Equals, true),
        "StringEqualsIgnoreCase" => Operator::Strings(StringOp::EqualsIgnoreCase, false),
        "StringNotEqualsIgnoreCase" => Operator::Strings(StringOp::EqualsIgnoreCase, true),
        "StringLike" => Operator::Strings(StringOp::Like, false),
        "StringNotLike" => Operator::Strings(StringOp::Like, true),
        _ => return None,
    };
    Some((op, if_exists))
}

fn parse_condition_key(name: &str) -> Result<ConditionKey, &'static str> {
    const CONTEXT_PREFIX: &str = "kms:EncryptionContext:";
    if name.eq_ignore_ascii_case("kms:AliasName") {
        return Ok(ConditionKey::String(StringKey::AliasName));
    }
    if name.eq_ignore_ascii_case("kms:CallerPrincipal") {
        return Ok(ConditionKey::String(StringKey::CallerPrincipal));
    }
    if name.eq_ignore_ascii_case("kms:SecureTransport") {
        return Ok(ConditionKey::SecureTransport);
    }
    let prefix_len = CONTEXT_PREFIX.len();
    match (name.get(..prefix_len), name.get(prefix_len..)) {
        (Some(prefix), Some(key)) if prefix.eq_ignore_ascii_case(CONTEXT_PREFIX) => {
            if key.is_empty() {
                Err("names no encryption context key")
            } else {
                Ok(ConditionKey::String(StringKey::EncryptionContext(
                    key.to_owned(),
                )))
            }
        }
        _ => Err(
            "is unknown (known keys: kms:AliasName, kms:CallerPrincipal, kms:EncryptionContext:<key>, kms:SecureTransport)",
        ),
    }
}

/// The condition `op` puts on `key`, checked against the key's type.
fn make_condition(
    op: Operator,
    if_exists: bool,
    key: ConditionKey,
    values: &Json,
) -> Result<Condition, String> {
    match (op, key) {
        (Operator::Bool, ConditionKey::SecureTransport) => condition_values(values, true)?
            .into_iter()
            .map(|v| match v {
                "true" => Ok(true),
                "false" => Ok(false),
                other => Err(format!(
                    "has {other:?}; Bool values are \"true\" or \"false\""
                )),
            })
            .collect::<Result<_, _>>()
            .map(Condition::SecureTransport),
        (Operator::Bool, ConditionKey::String(_)) => {
            Err("is a string key; Bool applies only to kms:SecureTransport".to_owned())
        }
        (Operator::Strings(..), ConditionKey::SecureTransport) => {
            Err("is a boolean key; use the Bool operator".to_owned())
        }
        (Operator::Strings(op, negated), ConditionKey::String(key)) => Ok(Condition::Strings {
            key,
            op,
            negated,
            if_exists,
            values: condition_values(values, false)?
                .into_iter()
                .map(str::to_owned)
                .collect(),
        }),
    }
}

/// Condition values: one or a non-empty array of strings (or, with `bools`, JSON booleans,
/// returned as "true"/"false").
fn condition_values(value: &Json, bools: bool) -> Result<Vec<&str>, String> {
    let one = |v| condition_value(v, bools);
    let values = match value {
        Json::Array(items) => items.iter().map(one).collect::<Result<Vec<_>, _>>()?,
        other => vec![one(other)?],
    };
    if values.is_empty() {
        return Err("has no values".to_owned());
    }
    Ok(values)
}

fn condition_value(value: &Json, bools: bool) -> Result<&str, String> {
    match value {
        Json::String(s) => Ok(s.as_str()),
        Json::Bool(true) if bools => Ok("true"),
        Json::Bool(false) if bools => Ok("false"),
        other => Err(format!("has {other}; values are strings")),
    }
}

#[cfg(test)]
mod tests;
