//! One line of the log: its canonical encoding and its strict parsing.
//!
//! The writer and the verifier share these functions, so the verifier can re-encode what it
//! parsed and demand byte equality: a line has exactly one valid spelling.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::time::{format_time, parse_rfc3339};
use super::{AuditEvent, AuditKey, Outcome};

/// A parsed line.
// Lines are parsed one at a time and dropped: boxing the event would cost an allocation per
// line for no gain.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Line {
    /// An event line.
    Event {
        seq: u64,
        prev: [u8; 32],
        event: AuditEvent,
    },
    /// A checkpoint line.
    Checkpoint {
        seq: u64,
        prev: [u8; 32],
        log_id: [u8; 16],
        /// The signature's bytes (see the file format for their scheme).
        signature: Vec<u8>,
    },
}

impl Line {
    /// The line's `seq`.
    pub fn seq(&self) -> u64 {
        match self {
            Line::Event { seq, .. } | Line::Checkpoint { seq, .. } => *seq,
        }
    }

    /// The line's `prev`.
    pub fn prev(&self) -> &[u8; 32] {
        match self {
            Line::Event { prev, .. } | Line::Checkpoint { prev, .. } => prev,
        }
    }
}

/// SHA-256 of a line's bytes (without its '\n'): the next line's `prev`.
pub fn line_hash(line: &[u8]) -> [u8; 32] {
    Sha256::digest(line).into()
}

/// The event line as it is written; the field order here is the order in the file.
#[derive(Serialize)]
struct EventOut<'a> {
    seq: u64,
    prev: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    time: &'a str,
    request_id: &'a str,
    principal: Option<&'a str>,
    peer: Option<&'a str>,
    operation: &'a str,
    keys: &'a [AuditKey],
    encryption_context: Option<&'a BTreeMap<String, String>>,
    destination_encryption_context: Option<&'a BTreeMap<String, String>>,
    outcome: Outcome,
    error: Option<&'a str>,
    policy_statement: Option<&'a str>,
}

/// The checkpoint line as it is written.
#[derive(Serialize)]
struct CheckpointOut<'a> {
    seq: u64,
    prev: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    log_id: &'a str,
    signature: &'a str,
}

/// The `type` of a line, read first to choose the struct that reads the whole line. (Two typed
/// passes rather than a tagged enum: serde buffers a tagged enum's content, which misreads
/// numbers when serde_json's `arbitrary_precision` feature is on anywhere in a build.)
#[derive(Deserialize)]
struct KindIn {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventIn {
    seq: u64,
    prev: String,
    #[serde(rename = "type")]
    _kind: IgnoredAny,
    time: String,
    request_id: String,
    principal: Option<String>,
    peer: Option<String>,
    operation: String,
    keys: Vec<AuditKey>,
    encryption_context: Option<BTreeMap<String, String>>,
    destination_encryption_context: Option<BTreeMap<String, String>>,
    outcome: Outcome,
    error: Option<String>,
    policy_statement: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointIn {
    seq: u64,
    prev: String,
    #[serde(rename = "type")]
    _kind: IgnoredAny,
    log_id: String,
    signature: String,
}

/// The canonical bytes of an event line (without '\n').
pub fn encode_event(
    seq: u64,
    prev: &[u8; 32],
    event: &AuditEvent,
) -> Result<Vec<u8>, serde_json::Error> {
    let prev = hex::encode(prev);
    let time = format_time(event.time_ms);
    serde_json::to_vec(&EventOut {
        seq,
        prev: &prev,
        kind: "event",
        time: &time,
        request_id: &event.request_id,
        principal: event.principal.as_deref(),
        peer: event.peer.as_deref(),
        operation: &event.operation,
        keys: &event.keys,
        encryption_context: event.encryption_context.as_ref(),
        destination_encryption_context: event.destination_encryption_context.as_ref(),
        outcome: event.outcome,
        error: event.error.as_deref(),
        policy_statement: event.policy_statement.as_deref(),
    })
}

/// The canonical bytes of a checkpoint line (without '\n').
pub fn encode_checkpoint(
    seq: u64,
    prev: &[u8; 32],
    log_id: &[u8; 16],
    signature: &[u8],
) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&CheckpointOut {
        seq,
        prev: &hex::encode(prev),
        kind: "checkpoint",
        log_id: &hex::encode(log_id),
        signature: &hex::encode(signature),
    })
}

/// Parses one line (without its '\n') and checks it is in canonical form. The error is a
/// sentence for a human, without the line number (the caller knows it).
pub fn parse_line(bytes: &[u8]) -> Result<Line, String> {
    let KindIn { kind } = from_json(bytes)?;
    let line = match kind.as_str() {
        "event" => {
            let e: EventIn = from_json(bytes)?;
            Line::Event {
                seq: e.seq,
                prev: decode_hex(&e.prev, "prev")?,
                event: AuditEvent {
                    time_ms: parse_rfc3339(&e.time).map_err(|m| format!("bad time: {m}"))?,
                    request_id: e.request_id,
                    principal: e.principal,
                    peer: e.peer,
                    operation: e.operation,
                    keys: e.keys,
                    encryption_context: e.encryption_context,
                    destination_encryption_context: e.destination_encryption_context,
                    outcome: e.outcome,
                    error: e.error,
                    policy_statement: e.policy_statement,
                },
            }
        }
        "checkpoint" => {
            let c: CheckpointIn = from_json(bytes)?;
            Line::Checkpoint {
                seq: c.seq,
                prev: decode_hex(&c.prev, "prev")?,
                log_id: decode_hex(&c.log_id, "log_id")?,
                signature: decode_signature(&c.signature)?,
            }
        }
        other => {
            return Err(format!(
                "not a valid audit record: unknown type `{other}`, expected `event` or `checkpoint`"
            ));
        }
    };
    let canonical = match &line {
        Line::Event { seq, prev, event } => encode_event(*seq, prev, event),
        Line::Checkpoint {
            seq,
            prev,
            log_id,
            signature,
        } => encode_checkpoint(*seq, prev, log_id, signature),
    }
    .map_err(|e| format!("the record cannot be re-encoded: {e}"))?;
    if canonical != bytes {
        return Err(
            "the record is not in the canonical form the writer emits (spacing, field \
                    order, escapes, number or time format differ): it was edited"
                .to_owned(),
        );
    }
    Ok(line)
}

/// Reads a line as `T`; the error names the column, not serde_json's "line 1".
fn from_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| {
        let text = e.to_string();
        let reason = text.split(" at line ").next().unwrap_or(&text);
        format!(
            "not a valid audit record: {reason} (at column {})",
            e.column()
        )
    })
}

/// The longest signature a checkpoint carries: RSA-PSS with a 4096-bit modulus.
const MAX_SIGNATURE_LEN: usize = 512;

/// Decodes a checkpoint's signature: 1 to [`MAX_SIGNATURE_LEN`] bytes of hex. Its length for
/// the key's scheme is the verifier's check.
fn decode_signature(text: &str) -> Result<Vec<u8>, String> {
    if text.is_empty() || text.len() > 2 * MAX_SIGNATURE_LEN {
        return Err(format!(
            "`signature` is not 2 to {} hex digits",
            2 * MAX_SIGNATURE_LEN
        ));
    }
    hex::decode(text).map_err(|e| format!("`signature` is not hex: {e}"))
}

/// Decodes exactly `N` bytes of hex.
fn decode_hex<const N: usize>(text: &str, field: &str) -> Result<[u8; N], String> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out)
        .map_err(|e| format!("`{field}` is not {} hex digits: {e}", 2 * N))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_event() -> AuditEvent {
        AuditEvent {
            time_ms: 1_795_428_000_123,
            request_id: "req-1".into(),
            principal: Some("spiffe://kms.test/app".into()),
            peer: Some("127.0.0.1:51234".into()),
            operation: "Decrypt".into(),
            keys: vec![AuditKey {
                key_id: "0b6a3f52-1c8e-4e43-9d7a-5f0a2b1c3d4e".into(),
                version: Some(2),
            }],
            encryption_context: Some([("tenant".to_owned(), "a".to_owned())].into()),
            destination_encryption_context: None,
            outcome: Outcome::Denied,
            error: Some("AccessDeniedException".into()),
            policy_statement: Some("Sid \"DenyB\"".into()),
        }
    }

    #[test]
    fn audit_event_line_known_answer() {
        let line = encode_event(1, &[0; 32], &sample_event()).unwrap();
        let expected = format!(
            concat!(
                r#"{{"seq":1,"prev":"{}","type":"event","time":"2026-11-23T10:00:00.123Z","#,
                r#""request_id":"req-1","principal":"spiffe://kms.test/app","#,
                r#""peer":"127.0.0.1:51234","operation":"Decrypt","#,
                r#""keys":[{{"key_id":"0b6a3f52-1c8e-4e43-9d7a-5f0a2b1c3d4e","version":2}}],"#,
                r#""encryption_context":{{"tenant":"a"}},"destination_encryption_context":null,"#,
                r#""outcome":"denied","error":"AccessDeniedException","#,
                r#""policy_statement":"Sid \"DenyB\""}}"#
            ),
            "0".repeat(64)
        );
        assert_eq!(String::from_utf8(line.clone()).unwrap(), expected);
        match parse_line(&line).unwrap() {
            Line::Event { seq, prev, event } => {
                assert_eq!((seq, prev), (1, [0; 32]));
                assert_eq!(event, sample_event());
            }
            Line::Checkpoint { .. } => panic!("parsed as a checkpoint"),
        }
    }

    #[test]
    fn audit_checkpoint_line_known_answer() {
        let line = encode_checkpoint(9, &[0x11; 32], &[0x22; 16], &[0x33; 64]).unwrap();
        let expected = format!(
            r#"{{"seq":9,"prev":"{}","type":"checkpoint","log_id":"{}","signature":"{}"}}"#,
            "11".repeat(32),
            "22".repeat(16),
            "33".repeat(64)
        );
        assert_eq!(String::from_utf8(line.clone()).unwrap(), expected);
        let parsed = parse_line(&line).unwrap();
        assert_eq!((parsed.seq(), *parsed.prev()), (9, [0x11; 32]));
    }

    #[test]
    fn audit_line_newlines_and_controls_are_escaped() {
        let mut event = sample_event();
        event.request_id = "a\nb\r\u{0}\u{2028}é".into();
        let line = encode_event(1, &[0; 32], &event).unwrap();
        assert!(!line.contains(&b'\n'));
        assert!(matches!(parse_line(&line).unwrap(), Line::Event { event: e, .. } if e == event));
    }

    #[test]
    fn audit_line_rejects_non_canonical_spellings() {
        let line =
            String::from_utf8(encode_event(1, &[0xab; 32], &sample_event()).unwrap()).unwrap();
        let variants = [
            line.replace(r#""seq":1,"#, r#""seq": 1,"#),
            line.replace(r#""seq":1,"#, r#""seq":1.0,"#),
            line.replacen("abab", "ABAB", 1),
            line.replace(r#""tenant""#, r#""\u0074enant""#),
            line.replace(".123Z", ".123+00:00"),
            line.replace(r#","policy_statement":"Sid \"DenyB\"""#, ""),
            line.replace(r#""version":2"#, r#""version":2,"extra":1"#),
            format!("{line} "),
            format!("{line}\r"),
        ];
        for variant in variants {
            assert_ne!(variant, line);
            assert!(parse_line(variant.as_bytes()).is_err(), "{variant}");
        }
        assert!(parse_line(b"").is_err());
        assert!(parse_line(b"[]").is_err());
        assert!(parse_line(br#"{"seq":1,"prev":"00","type":"other"}"#).is_err());
    }
}
