//! Reading a policy document: a JSON reader that keeps fields in order and refuses a field
//! given twice, and the checks of each part of the language, with errors that say where.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{
    ActionSet, Condition, ConditionKey, Effect, KeyPolicy, Operator, Principals, Statement,
    StringKey, StringOp, glob_match,
};
use crate::error::KmsError;

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

pub(super) fn parse_policy(text: &str) -> Result<KeyPolicy, KmsError> {
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
