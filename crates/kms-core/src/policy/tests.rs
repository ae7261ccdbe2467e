//! Tests of `policy`.

use super::*;

const TENANT_A: &str = "spiffe://kms.test/tenant-a";

fn policy(text: &str) -> KeyPolicy {
    KeyPolicy::parse(text).unwrap_or_else(|e| panic!("valid policy rejected: {e}\n{text}"))
}

fn error(text: &str) -> String {
    match KeyPolicy::parse(text) {
        Err(KmsError::Validation(message)) => message,
        other => panic!("expected a ValidationException, got {other:?}"),
    }
}

fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
    let owned = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
    EncryptionContext::new(owned, "encryption_context").unwrap()
}

fn request<'a>(
    principal: &'a str,
    action: Action,
    context: Option<&'a EncryptionContext>,
) -> AccessRequest<'a> {
    AccessRequest {
        principal,
        action,
        encryption_context: context,
        secure_transport: true,
        administrator: false,
        alias_name: None,
    }
}

/// A one-statement Allow policy for anyone, on kms:Decrypt, with this Condition.
fn with_condition(condition: &str) -> KeyPolicy {
    policy(&format!(
        r#"{{"Statement": {{"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt",
            "Condition": {condition}}}}}"#
    ))
}

fn allows(policy: &KeyPolicy, context: Option<&EncryptionContext>) -> bool {
    policy
        .evaluate(&request("p", Action::Decrypt, context))
        .is_allowed()
}

#[test]
fn action_names_round_trip_and_ignore_case() {
    for (i, action) in Action::ALL.iter().enumerate() {
        assert_eq!(*action as usize, i);
        assert_eq!(Action::parse(action.name()), Some(*action));
        assert_eq!(action.to_string(), action.name());
    }
    assert_eq!(Action::ALL.len(), 39);
    assert_eq!(Action::Encrypt.name(), "kms:Encrypt");
    assert_eq!(Action::parse("KMS:encrypt"), Some(Action::Encrypt));
    assert_eq!(Action::parse("kms:Encrypt*"), None);
    assert_eq!(Action::parse("Encrypt"), None);
    let server: Vec<Action> = Action::ALL
        .iter()
        .copied()
        .filter(|a| a.is_server_level())
        .collect();
    assert_eq!(
        server,
        [
            Action::CreateKey,
            Action::ListKeys,
            Action::GenerateRandom,
            Action::ListAliases,
            Action::RotateDomainKey,
            Action::GetDomainKeyStatus
        ]
    );
}

#[test]
fn default_policy_allows_creator_and_administrators_only() {
    let p = KeyPolicy::default_for("creator");
    for action in Action::ALL {
        let decision = p.evaluate(&request("creator", *action, None));
        assert!(decision.is_allowed(), "creator {action}");
        // Whoever is an administrator now: the name alone is not enough.
        let admin = AccessRequest {
            administrator: true,
            ..request("admin-1", *action, None)
        };
        assert!(p.evaluate(&admin).is_allowed(), "administrator {action}");
    }
    let decision = p.evaluate(&request("admin-1", Action::Decrypt, None));
    assert_eq!(decision, Decision::ImplicitDeny, "a former administrator");
    let decision = p.evaluate(&request(ADMINISTRATORS, Action::Decrypt, None));
    assert_eq!(
        decision,
        Decision::ImplicitDeny,
        "a caller named like the symbol"
    );

    let expected = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "KeyCreatorAndAdministrators",
            "Effect": "Allow",
            "Principal": ["creator", "#administrators"],
            "Action": "kms:*",
        }],
    });
    let text: serde_json::Value = serde_json::from_str(p.text()).unwrap();
    assert_eq!(text, expected);
    assert!(
        p.text()
            .starts_with("{\n  \"Version\": \"2012-10-17\",\n  \"Statement\": [\n")
    );
    assert_eq!(policy(p.text()).statements, p.statements);
}

#[test]
fn default_policy_text_escapes_like_serde_json() {
    let odd = "a\"b\\c\nd\u{1}e\u{7f}é";
    let p = KeyPolicy::default_for(odd);
    let mut expected = String::new();
    push_json_string(&mut expected, odd);
    assert_eq!(expected, serde_json::to_string(odd).unwrap());
    assert_eq!(policy(p.text()).statements, p.statements);
    assert!(
        p.evaluate(&request(odd, Action::Encrypt, None))
            .is_allowed()
    );
}

#[test]
fn explicit_deny_overrides_allow() {
    let p = policy(
        r#"{"Version": "2012-10-17", "Statement": [
            {"Sid": "All", "Effect": "Allow", "Principal": "*", "Action": "kms:*"},
            {"Effect": "Deny", "Principal": ["x", "mallory"], "Action": "kms:Decrypt"}
        ]}"#,
    );
    let denied = p.evaluate(&request("mallory", Action::Decrypt, None));
    assert_eq!(
        denied,
        Decision::ExplicitDeny(StatementRef {
            index: 2,
            sid: None
        })
    );
    assert!(!denied.is_allowed());
    assert_eq!(denied.statement().map(|s| s.index), Some(2));
    let allowed = p.evaluate(&request("mallory", Action::Encrypt, None));
    assert_eq!(
        allowed.statement().and_then(|s| s.sid.as_deref()),
        Some("All")
    );
}

#[test]
fn tenant_policy_requires_the_tenant_context() {
    let p = policy(&format!(
        r#"{{"Statement": [{{"Sid": "AllowTenantA", "Effect": "Allow",
            "Principal": {{"KMS": "{TENANT_A}"}}, "Action": "kms:Decrypt", "Resource": "*",
            "Condition": {{"StringEquals": {{"kms:EncryptionContext:tenant": "a"}}}}}}]}}"#
    ));
    let (a, b) = (ctx(&[("tenant", "a")]), ctx(&[("tenant", "b")]));
    assert!(
        p.evaluate(&request(TENANT_A, Action::Decrypt, Some(&a)))
            .is_allowed()
    );
    assert!(
        !p.evaluate(&request(TENANT_A, Action::Decrypt, Some(&b)))
            .is_allowed()
    );
    assert!(
        !p.evaluate(&request(TENANT_A, Action::Decrypt, None))
            .is_allowed()
    );
    assert!(
        !p.evaluate(&request(TENANT_A, Action::Encrypt, Some(&a)))
            .is_allowed()
    );
    assert!(
        !p.evaluate(&request(
            "spiffe://kms.test/tenant-b",
            Action::Decrypt,
            Some(&a)
        ))
        .is_allowed()
    );
    // The context key is case-sensitive; the condition key prefix is not.
    let upper = ctx(&[("Tenant", "a")]);
    assert!(
        !p.evaluate(&request(TENANT_A, Action::Decrypt, Some(&upper)))
            .is_allowed()
    );
    let p = with_condition(r#"{"StringEquals": {"KMS:encryptioncontext:tenant": "a"}}"#);
    assert!(allows(&p, Some(&a)));
    assert!(!allows(&p, Some(&upper)));
}

#[test]
fn missing_values_and_if_exists() {
    let (a, other) = (ctx(&[("tenant", "a")]), ctx(&[("x", "y")]));
    let not_equals =
        with_condition(r#"{"StringNotEquals": {"kms:EncryptionContext:tenant": ["b", "c"]}}"#);
    assert!(allows(&not_equals, Some(&a)));
    assert!(allows(&not_equals, Some(&other)));
    assert!(allows(&not_equals, None));
    assert!(!allows(&not_equals, Some(&ctx(&[("tenant", "c")]))));

    let if_exists =
        with_condition(r#"{"StringEqualsIfExists": {"kms:EncryptionContext:tenant": "a"}}"#);
    assert!(allows(&if_exists, Some(&a)));
    assert!(allows(&if_exists, None));
    assert!(allows(&if_exists, Some(&other)));
    assert!(!allows(&if_exists, Some(&ctx(&[("tenant", "b")]))));

    let ignore_case =
        with_condition(r#"{"StringEqualsIgnoreCase": {"kms:EncryptionContext:tenant": "ÉTÉ"}}"#);
    assert!(allows(&ignore_case, Some(&ctx(&[("tenant", "été")]))));
    assert!(!allows(&ignore_case, None));
}

#[test]
fn operators_and_keys_are_anded() {
    let p = with_condition(
        r#"{"StringEquals": {"kms:EncryptionContext:a": "1", "kms:EncryptionContext:b": "2"},
            "StringLike": {"kms:CallerPrincipal": "p"}}"#,
    );
    assert!(allows(&p, Some(&ctx(&[("a", "1"), ("b", "2")]))));
    assert!(!allows(&p, Some(&ctx(&[("a", "1")]))));
    assert!(!allows(&p, Some(&ctx(&[("a", "1"), ("b", "3")]))));
}

#[test]
fn string_like_globs() {
    let cases = [
        ("*", "", true),
        ("*", "anything", true),
        ("a*", "abc", true),
        ("*c", "abc", true),
        ("*b*", "abc", true),
        ("a?c", "abc", true),
        ("a?c", "ac", false),
        ("a?c", "aéc", true),
        ("a*c", "abd", false),
        ("abc", "ABC", false),
        ("", "", true),
        ("", "a", false),
        ("a**b", "ab", true),
        ("*a*b", "xaxxb", true),
        ("*a*b", "xaxxbc", false),
    ];
    for (pattern, text, expected) in cases {
        assert_eq!(
            glob_match(pattern, text, false),
            expected,
            "{pattern:?} ~ {text:?}"
        );
    }
    let long = "a".repeat(100_000);
    let started = std::time::Instant::now();
    assert!(!glob_match("a*a*a*a*a*b", &long, false));
    assert!(glob_match("a*a*a*a*a*", &long, false));
    assert!(started.elapsed() < std::time::Duration::from_secs(2));

    let p =
        with_condition(r#"{"StringLike": {"kms:EncryptionContext:app": ["web-*", "batch-??"]}}"#);
    assert!(allows(&p, Some(&ctx(&[("app", "web-1")]))));
    assert!(allows(&p, Some(&ctx(&[("app", "batch-07")]))));
    assert!(!allows(&p, Some(&ctx(&[("app", "batch-7")]))));
    let p = with_condition(r#"{"StringNotLike": {"kms:EncryptionContext:app": "web-*"}}"#);
    assert!(!allows(&p, Some(&ctx(&[("app", "web-1")]))));
    assert!(allows(&p, Some(&ctx(&[("app", "batch")]))));
    assert!(allows(&p, None));
}

#[test]
fn bool_secure_transport() {
    let p = with_condition(r#"{"Bool": {"kms:SecureTransport": "true"}}"#);
    let mut r = request("p", Action::Decrypt, None);
    assert!(p.evaluate(&r).is_allowed());
    r.secure_transport = false;
    assert!(!p.evaluate(&r).is_allowed());
    let p = with_condition(r#"{"Bool": {"kms:securetransport": [false]}}"#);
    assert!(p.evaluate(&r).is_allowed());
}

#[test]
fn action_patterns() {
    let p = policy(
        r#"{"Statement": {"Effect": "Allow", "Principal": "p", "Action": "KMS:generatedatakey*"}}"#,
    );
    let allowed = |action| p.evaluate(&request("p", action, None)).is_allowed();
    assert!(allowed(Action::GenerateDataKey));
    assert!(allowed(Action::GenerateDataKeyWithoutPlaintext));
    assert!(!allowed(Action::Encrypt));
    let p = policy(
        r#"{"Statement": {"Effect": "Allow", "Principal": "p", "Action": ["kms:ReEncrypt*", "kms:?ncrypt"]}}"#,
    );
    let allowed = |action| p.evaluate(&request("p", action, None)).is_allowed();
    assert!(allowed(Action::ReEncryptFrom) && allowed(Action::ReEncryptTo));
    assert!(allowed(Action::Encrypt));
    assert!(!allowed(Action::Decrypt));
}

/// Second statements of a policy (after a valid one), and the error after "policy: ".
const STATEMENT_ERRORS: &[(&str, &str)] = &[
    (
        r#"{"Sid": "S", "Principal": "*", "Action": "kms:*"}"#,
        r#"Statement[2] (Sid "S"): Effect is missing"#,
    ),
    (
        r#"{"Effect": "Permit", "Principal": "*", "Action": "kms:*"}"#,
        r#"Statement[2]: Effect must be "Allow" or "Deny", not "Permit""#,
    ),
    (
        r#"{"Effect": "Allow", "Principal": "*", "NotAction": "kms:Encrypt"}"#,
        r#"Statement[2]: unknown field "NotAction""#,
    ),
    (
        r#"{"Sid": "AllowTenantA", "Effect": "Allow", "Principal": "*",
            "Action": ["kms:Decrypt", "kms:Encrpt"]}"#,
        r#"Statement[2] (Sid "AllowTenantA"): Action "kms:Encrpt" matches no KMS action"#,
    ),
    (
        r#"{"Sid": "", "Effect": "Allow", "Principal": "*", "Action": "kms:*"}"#,
        "Statement[2]: Sid must be a non-empty string",
    ),
    (
        r#"{"Effect": "Allow", "Principal": [], "Action": "kms:*"}"#,
        "Statement[2]: Principal must not be an empty array",
    ),
    (
        r#"{"Effect": "Allow", "Principal": {"AWS": "x"}, "Action": "kms:*"}"#,
        r#"Statement[2]: Principal as an object must have exactly one field, "KMS", not ["AWS"]"#,
    ),
    (
        r#"{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "arn:x"}"#,
        r#"Statement[2]: Resource must be "*", not "arn:x""#,
    ),
    (
        r#"{"Sid": "F", "Effect": "Allow", "Principal": "*", "Action": "kms:*"}"#,
        r#"Statement[2] (Sid "F"): Sid is already used by Statement[1]"#,
    ),
    (
        r#"{"Effect": "Allow", "Effect": "Deny", "Principal": "*", "Action": "kms:*"}"#,
        r#"not valid JSON: field "Effect" is given twice at line 1 column 113"#,
    ),
];

/// Conditions of a policy's only statement, and the error after "policy: Statement[1]: ".
const CONDITION_ERRORS: &[(&str, &str)] = &[
    (
        r#"{"StringEqualz": {"kms:CallerPrincipal": "x"}}"#,
        r#"Condition operator "StringEqualz" is unknown"#,
    ),
    (
        r#"{"StringEquals": {"aws:SourceIp": "x"}}"#,
        r#"Condition "StringEquals": key "aws:SourceIp" is unknown (known keys: kms:AliasName, kms:CallerPrincipal, kms:EncryptionContext:<key>, kms:SecureTransport)"#,
    ),
    (
        r#"{"Bool": {"kms:CallerPrincipal": "true"}}"#,
        r#"Condition "Bool": key "kms:CallerPrincipal" is a string key; Bool applies only to kms:SecureTransport"#,
    ),
    (
        r#"{"StringLikeIfExists": {"kms:SecureTransport": "true"}}"#,
        r#"Condition "StringLikeIfExists": key "kms:SecureTransport" is a boolean key; use the Bool operator"#,
    ),
    (
        r#"{"Bool": {"kms:SecureTransport": "yes"}}"#,
        r#"Condition "Bool": key "kms:SecureTransport" has "yes"; Bool values are "true" or "false""#,
    ),
    (
        r#"{"StringEquals": {"kms:EncryptionContext:": "x"}}"#,
        r#"Condition "StringEquals": key "kms:EncryptionContext:" names no encryption context key"#,
    ),
    (
        r#"{"StringEquals": {"kms:CallerPrincipal": true}}"#,
        r#"Condition "StringEquals": key "kms:CallerPrincipal" has a boolean; values are strings"#,
    ),
    (
        r#"{"StringEquals": {"kms:CallerPrincipal": []}}"#,
        r#"Condition "StringEquals": key "kms:CallerPrincipal" has no values"#,
    ),
    (
        r#"{"StringEquals": {}}"#,
        r#"Condition "StringEquals" must not be empty"#,
    ),
];

/// Whole documents, and the error.
const DOCUMENT_ERRORS: &[(&str, &str)] = &[
    (
        r#"{"Statement": [}"#,
        "policy: not valid JSON: expected value at line 1 column 16",
    ),
    (
        r#"{"Statement": []}"#,
        "policy: Statement must hold at least one statement",
    ),
    (r#"{"Id": "x"}"#, "policy: Statement is missing"),
    (
        r#"{"Version": "2008-10-17", "Statement": []}"#,
        r#"policy: Version must be "2012-10-17", not "2008-10-17""#,
    ),
    (r#"{"Statment": []}"#, r#"policy: unknown field "Statment""#),
    ("[]", "policy: must be a JSON object, not an array"),
];

#[test]
fn parse_errors_say_where() {
    for (statement, expected) in STATEMENT_ERRORS {
        let text = format!(
            r#"{{"Statement": [{{"Sid": "F", "Effect": "Allow", "Principal": "*", "Action": "kms:*"}}, {statement}]}}"#
        );
        assert_eq!(error(&text), format!("policy: {expected}"));
    }
    for (condition, expected) in CONDITION_ERRORS {
        let text = format!(
            r#"{{"Statement": {{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Condition": {condition}}}}}"#
        );
        assert_eq!(error(&text), format!("policy: Statement[1]: {expected}"));
    }
    for (text, expected) in DOCUMENT_ERRORS {
        assert_eq!(error(text), *expected);
    }
    let long = "p".repeat(KeyPolicy::MAX_PRINCIPAL_CHARS + 1);
    let text = format!(
        r#"{{"Statement": {{"Effect": "Allow", "Principal": ["a", "{long}"], "Action": "kms:*"}}}}"#
    );
    assert_eq!(
        error(&text),
        "policy: Statement[1]: Principal #2 must have 1 to 1024 characters, not 1025"
    );
}

#[test]
fn size_limit() {
    let valid = r#"{"Statement": {"Effect": "Allow", "Principal": "*", "Action": "kms:*"}}"#;
    let padded = format!("{valid:<width$}", width = KeyPolicy::MAX_LEN);
    assert!(KeyPolicy::parse(&padded).is_ok());
    let over = format!("{padded} ");
    assert_eq!(
        error(&over),
        "policy: is 32769 bytes long; at most 32768 are allowed"
    );
}

#[test]
fn a_server_policy_may_name_any_action() {
    let text = |action: &str| {
        format!(r#"{{"Statement": {{"Effect": "Deny", "Principal": "*", "Action": "{action}"}}}}"#)
    };
    for action in ["kms:CreateKey", "kms:*", "kms:List*", "kms:Decrypt"] {
        assert!(KeyPolicy::parse_server(&text(action)).is_ok(), "{action}");
    }
    assert!(KeyPolicy::parse_server(&text("kms:Decrpyt")).is_err());
}

#[test]
fn alias_name_conditions_match_only_alias_requests() {
    let p = policy(
        r#"{"Statement": {"Effect": "Allow", "Principal": "tenant-a", "Action": "kms:CreateAlias",
            "Condition": {"StringLike": {"kms:AliasName": "alias/tenant-a/*"}}}}"#,
    );
    let create = |alias_name| AccessRequest {
        alias_name,
        ..request("tenant-a", Action::CreateAlias, None)
    };
    assert!(
        p.evaluate(&create(Some("alias/tenant-a/payments")))
            .is_allowed()
    );
    assert!(!p.evaluate(&create(Some("alias/payments"))).is_allowed());
    assert!(!p.evaluate(&create(None)).is_allowed());
}

#[test]
fn decision_display() {
    let named = StatementRef {
        index: 1,
        sid: Some("X".to_owned()),
    };
    let unnamed = StatementRef {
        index: 3,
        sid: None,
    };
    assert_eq!(
        Decision::Allow(named.clone()).to_string(),
        r#"Allow (Sid "X")"#
    );
    assert_eq!(
        Decision::Allow(unnamed.clone()).to_string(),
        "Allow (Statement[3])"
    );
    assert_eq!(
        Decision::ExplicitDeny(named).to_string(),
        r#"Deny (explicit, Sid "X")"#
    );
    assert_eq!(
        Decision::ExplicitDeny(unnamed).to_string(),
        "Deny (explicit, Statement[3])"
    );
    assert_eq!(
        Decision::ImplicitDeny.to_string(),
        "Deny (implicit: no statement allows it)"
    );
    assert_eq!(Decision::ImplicitDeny.statement(), None);
}
