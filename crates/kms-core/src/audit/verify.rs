//! Offline checks and reads of a log's bytes: [`verify`] for `kmsctl audit verify`,
//! [`read_events`] and [`EventFilter`] for tail and search. Pure functions, no I/O.

use super::line::{Line, line_hash, parse_line};
use super::{AuditEvent, AuditPublicKey, GENESIS_PREV, Outcome, checkpoint_message};

/// What a successful [`verify`] found.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct VerifyReport {
    /// Event lines (records of RPCs).
    pub records: u64,
    /// Checkpoint lines.
    pub checkpoints: u64,
    /// The seq of the last line; 0 for an empty log.
    pub last_seq: u64,
    /// The log id of the checkpoints; `None` for an empty log.
    pub log_id: Option<[u8; 16]>,
}

/// Why a log failed verification, or a line could not be read: the line and a sentence.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct VerifyFailure {
    /// The 1-based line number in the file.
    pub line: usize,
    /// What is wrong, and what it suggests was done to the log.
    pub message: String,
}

impl VerifyFailure {
    fn new(line: usize, message: impl Into<String>) -> Self {
        VerifyFailure {
            line,
            message: message.into(),
        }
    }
}

/// An event line read back from a log.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ParsedEvent {
    /// The line's seq.
    pub seq: u64,
    /// The event.
    pub event: AuditEvent,
}

/// Checks a whole log against the public key of its checkpoint signer.
///
/// Fails, naming the first bad line, when a line is not a record in canonical form, the file
/// does not end with '\n', a seq is not the previous one + 1, a `prev` is not the SHA-256 of the
/// line before, a checkpoint's signature does not verify with `public_key` (or is not low-S),
/// the log id changes, or events follow the last checkpoint. An empty file is a valid, empty
/// log.
///
/// Removing whole batches from the end of the file cannot be detected from the file alone:
/// compare [`VerifyReport::last_seq`] with a value recorded earlier.
pub fn verify(bytes: &[u8], public_key: &AuditPublicKey) -> Result<VerifyReport, VerifyFailure> {
    let mut report = VerifyReport::default();
    let mut prev_hash = GENESIS_PREV;
    let mut last_checkpoint_line = 0;
    let mut first_uncovered_line = 0;
    let mut uncovered = 0u64;

    for (number, line, complete) in lines(bytes) {
        let fail = |message: String| VerifyFailure::new(number, message);
        if !complete {
            return Err(fail(
                "the last line is incomplete (the file does not end with a newline): the file was \
                 cut, or a write was torn and the log has not been reopened since"
                    .to_owned(),
            ));
        }
        let parsed = parse_line(line).map_err(fail)?;
        let expected_seq = report.last_seq.checked_add(1).ok_or_else(|| {
            fail("the previous line's sequence number is the largest possible".to_owned())
        })?;
        if parsed.seq() != expected_seq {
            return Err(fail(format!(
                "sequence number {} where {expected_seq} was expected: a record was removed, \
                 inserted or moved",
                parsed.seq()
            )));
        }
        if *parsed.prev() != prev_hash {
            return Err(fail(if number == 1 {
                "`prev` is not 64 zeros, as the first line's must be: lines were removed from the \
                 start of the log, or this line was altered"
                    .to_owned()
            } else {
                format!(
                    "`prev` does not match the SHA-256 of line {0}: line {0} was altered, or a \
                     line was removed or inserted between them",
                    number - 1
                )
            }));
        }
        match parsed {
            Line::Event { .. } => {
                report.records += 1;
                if uncovered == 0 {
                    first_uncovered_line = number;
                }
                uncovered += 1;
            }
            Line::Checkpoint {
                seq,
                prev,
                log_id,
                signature,
            } => {
                if let Some(earlier) = report.log_id.filter(|earlier| *earlier != log_id) {
                    return Err(fail(format!(
                        "log id {} differs from {} in the earlier checkpoints: lines from another \
                         log were mixed in",
                        hex::encode(log_id),
                        hex::encode(earlier)
                    )));
                }
                public_key
                    .verify(&checkpoint_message(&log_id, seq, &prev), &signature)
                    .map_err(|m| fail(m.to_owned()))?;
                report.log_id = Some(log_id);
                report.checkpoints += 1;
                last_checkpoint_line = number;
                uncovered = 0;
            }
        }
        report.last_seq = expected_seq;
        prev_hash = line_hash(line);
    }

    if uncovered > 0 {
        let records = if uncovered == 1 {
            "1 record".to_owned()
        } else {
            format!("{uncovered} records")
        };
        let verb = if uncovered == 1 { "is" } else { "are" };
        let message = if last_checkpoint_line == 0 {
            format!(
                "{records} from line 1 on {verb} not covered by a signed checkpoint (the log has \
                 none)"
            )
        } else {
            format!(
                "{records} after line {last_checkpoint_line} {verb} not covered by a signed \
                 checkpoint: the last checkpoint was removed, or records were appended"
            )
        };
        return Err(VerifyFailure::new(first_uncovered_line, message));
    }
    Ok(report)
}

/// The event lines of a log, in order, with their line numbers; checkpoints are skipped. The
/// chain is not checked (that is [`verify`]'s job). A line that is not a record yields an
/// error and reading goes on. A last line without '\n' is being written, or was torn and never
/// acknowledged: it is skipped.
pub fn read_events(
    bytes: &[u8],
) -> impl Iterator<Item = Result<(usize, ParsedEvent), VerifyFailure>> + '_ {
    lines(bytes).filter_map(|(number, line, complete)| {
        if !complete {
            return None;
        }
        match parse_line(line) {
            Ok(Line::Event { seq, event, .. }) => Some(Ok((number, ParsedEvent { seq, event }))),
            Ok(Line::Checkpoint { .. }) => None,
            Err(message) => Some(Err(VerifyFailure::new(number, message))),
        }
    })
}

/// The lines of `bytes` without their '\n': (1-based number, bytes, whether a '\n' ended it).
fn lines(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8], bool)> {
    let (body, ends_with_newline) = match bytes.split_last() {
        Some((b'\n', body)) => (body, true),
        _ => (bytes, false),
    };
    let mut rest = (!bytes.is_empty()).then_some(body);
    let mut number = 0;
    std::iter::from_fn(move || {
        let current = rest?;
        number += 1;
        if let Some(i) = current.iter().position(|&b| b == b'\n') {
            rest = Some(&current[i + 1..]);
            Some((number, &current[..i], true))
        } else {
            rest = None;
            Some((number, current, ends_with_newline))
        }
    })
}

/// Which events to show: every condition set must hold.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct EventFilter {
    /// One of the event's keys has this key id.
    pub key_id: Option<String>,
    /// The event's principal is exactly this.
    pub principal: Option<String>,
    /// The event happened at or after this time (Unix ms).
    pub since_ms: Option<i64>,
    /// The event's operation is this RPC name (ASCII case ignored).
    pub operation: Option<String>,
    /// The event ended so.
    pub outcome: Option<Outcome>,
}

impl EventFilter {
    /// Whether the event passes every condition set.
    pub fn matches(&self, event: &ParsedEvent) -> bool {
        let event = &event.event;
        self.key_id
            .as_ref()
            .is_none_or(|id| event.keys.iter().any(|key| &key.key_id == id))
            && self
                .principal
                .as_ref()
                .is_none_or(|p| event.principal.as_ref() == Some(p))
            && self.since_ms.is_none_or(|since| event.time_ms >= since)
            && self
                .operation
                .as_ref()
                .is_none_or(|op| event.operation.eq_ignore_ascii_case(op))
            && self.outcome.is_none_or(|outcome| event.outcome == outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::line::{encode_checkpoint, encode_event};
    use crate::audit::{AuditKey, CheckpointSigner};
    use crate::testing::SoftCheckpointSigner;
    use crate::testing::audit_logs::{LOG_ID, build_log, build_log_with, event};

    /// 6 events in batches of 2, 1 and 3: events on lines 1-2, 4, 6-8, checkpoints on 3, 5, 9.
    fn sample() -> (Vec<u8>, AuditPublicKey) {
        let signer = SoftCheckpointSigner::new();
        (build_log(&signer, &[2, 1, 3]).unwrap(), signer.public_key())
    }

    fn split(bytes: &[u8]) -> Vec<Vec<u8>> {
        bytes
            .split_inclusive(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect()
    }

    #[test]
    fn audit_verify_accepts_a_good_log() {
        let (log, key) = sample();
        assert_eq!(split(&log).len(), 9);
        assert_eq!(
            verify(&log, &key),
            Ok(VerifyReport {
                records: 6,
                checkpoints: 3,
                last_seq: 9,
                log_id: Some(LOG_ID)
            })
        );
        assert_eq!(verify(b"", &key), Ok(VerifyReport::default()));
    }

    #[test]
    fn audit_verify_detects_every_flipped_byte() {
        let (log, key) = sample();
        // The number of the line holding byte `pos`.
        let line_of = |pos: usize| log[..pos].split(|&b| b == b'\n').count();
        for pos in 0..log.len() {
            let mut tampered = log.clone();
            tampered[pos] ^= 0x01;
            let failure = verify(&tampered, &key).expect_err(&format!("flip at byte {pos}"));
            let line = line_of(pos);
            assert!(
                failure.line == line || failure.line == line + 1,
                "flip at byte {pos} (line {line}) reported as {failure}"
            );
        }
    }

    #[test]
    fn audit_verify_detects_removed_lines() {
        let (log, key) = sample();
        let lines = split(&log);
        for removed in 0..lines.len() {
            let mut tampered = lines.clone();
            tampered.remove(removed);
            let failure = verify(&tampered.concat(), &key).unwrap_err();
            if removed + 1 < lines.len() {
                assert_eq!(failure.line, removed + 1, "{failure}");
                assert!(
                    failure.message.contains("removed, inserted or moved"),
                    "{failure}"
                );
            } else {
                // Without the last checkpoint, the last batch is not signed.
                assert_eq!(
                    failure.to_string(),
                    "line 6: 3 records after line 5 are not covered by a signed checkpoint: \
                     the last checkpoint was removed, or records were appended"
                );
            }
        }
    }

    #[test]
    fn audit_verify_detects_swapped_and_inserted_lines() {
        let (log, key) = sample();
        let lines = split(&log);
        for first in 0..lines.len() - 1 {
            let mut tampered = lines.clone();
            tampered.swap(first, first + 1);
            let failure = verify(&tampered.concat(), &key).unwrap_err();
            assert_eq!(failure.line, first + 1, "{failure}");
        }
        for copied in 0..lines.len() {
            let mut tampered = lines.clone();
            tampered.insert(copied, lines[copied].clone());
            assert_eq!(
                verify(&tampered.concat(), &key).unwrap_err().line,
                copied + 2
            );
        }
    }

    #[test]
    fn audit_verify_detects_a_cut_file() {
        let (log, key) = sample();
        for cut in 1..log.len() {
            let prefix = &log[..cut];
            let at_line_end = log[cut - 1] == b'\n';
            let at_checkpoint = [3, 5].iter().any(|&l| cut == end_of_line(&log, l));
            match verify(prefix, &key) {
                Ok(report) => assert!(at_line_end && at_checkpoint, "cut at {cut}: {report:?}"),
                Err(failure) if !at_line_end => {
                    assert!(failure.message.contains("incomplete"), "{failure}");
                }
                Err(failure) => assert!(failure.message.contains("not covered"), "{failure}"),
            }
        }
    }

    fn end_of_line(log: &[u8], line: usize) -> usize {
        log.iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(line - 1)
            .map(|(i, _)| i + 1)
            .unwrap()
    }

    #[test]
    fn audit_verify_names_bad_lines() {
        let (log, key) = sample();
        let mut lines = split(&log);
        lines[3] = b"{\"seq\":4}\n".to_vec();
        let failure = verify(&lines.concat(), &key).unwrap_err();
        assert_eq!(failure.line, 4);
        assert!(
            failure.message.starts_with("not a valid audit record"),
            "{failure}"
        );

        let mut lines = split(&log);
        lines[4] = b"\n".to_vec();
        assert_eq!(verify(&lines.concat(), &key).unwrap_err().line, 5);

        let mut altered = split(&log);
        altered[0] = [
            encode_event(1, &[0; 32], &event(99)).unwrap(),
            b"\n".to_vec(),
        ]
        .concat();
        let failure = verify(&altered.concat(), &key).unwrap_err();
        assert_eq!(
            failure.to_string(),
            "line 2: `prev` does not match the SHA-256 of line 1: line 1 was altered, or a line \
             was removed or inserted between them"
        );
    }

    #[test]
    fn audit_verify_with_another_key_fails_at_the_first_checkpoint() {
        let (log, _) = sample();
        let other = SoftCheckpointSigner::new().public_key();
        let failure = verify(&log, &other).unwrap_err();
        assert_eq!(failure.line, 3);
        assert!(
            failure
                .message
                .contains("does not verify with the public key"),
            "{failure}"
        );
    }

    #[test]
    fn audit_verify_rejects_a_change_of_log_id() {
        let signer = SoftCheckpointSigner::new();
        let log = build_log_with(&signer, &[(LOG_ID, 1), ([9; 16], 1)]).unwrap();
        let failure = verify(&log, &signer.public_key()).unwrap_err();
        assert_eq!(failure.line, 4);
        assert!(failure.message.contains("log id 0909"), "{failure}");
    }

    #[test]
    fn audit_verify_rejects_high_s_signatures() {
        use p256::ecdsa::signature::Verifier as _;
        use p256::ecdsa::{Signature, VerifyingKey};

        let (log, key) = sample();
        let mut lines = split(&log);
        let last = lines.pop().unwrap();
        let Ok(Line::Checkpoint {
            seq,
            prev,
            log_id,
            signature,
        }) = parse_line(&last[..last.len() - 1])
        else {
            panic!("the last line is not a checkpoint");
        };
        let (r, s) = Signature::from_slice(&signature).unwrap().split_scalars();
        let high = Signature::from_scalars(r, -s).unwrap();
        // The malleated signature is valid ECDSA; only the low-S rule rejects it.
        let message = checkpoint_message(&log_id, seq, &prev);
        let AuditPublicKey::P256(p256_key) = &key else {
            panic!("the sample log is not signed with ECDSA");
        };
        assert!(VerifyingKey::from(p256_key).verify(&message, &high).is_ok());
        let high: [u8; 64] = high.to_bytes().into();
        lines.push(
            [
                encode_checkpoint(seq, &prev, &log_id, &high).unwrap(),
                b"\n".to_vec(),
            ]
            .concat(),
        );
        let failure = verify(&lines.concat(), &key).unwrap_err();
        assert_eq!(failure.line, 9);
        assert!(failure.message.contains("low-S"), "{failure}");
    }

    #[test]
    fn audit_verify_rejects_events_after_the_last_checkpoint() {
        let (mut log, key) = sample();
        let last = &log[end_of_line(&log, 8)..log.len() - 1];
        let line = encode_event(10, &line_hash(last), &event(10)).unwrap();
        log.extend_from_slice(&line);
        log.push(b'\n');
        assert_eq!(
            verify(&log, &key).unwrap_err().to_string(),
            "line 10: 1 record after line 9 is not covered by a signed checkpoint: the last \
             checkpoint was removed, or records were appended"
        );
        let alone = [
            encode_event(1, &[0; 32], &event(1)).unwrap(),
            b"\n".to_vec(),
        ]
        .concat();
        assert_eq!(
            verify(&alone, &key).unwrap_err().to_string(),
            "line 1: 1 record from line 1 on is not covered by a signed checkpoint (the log has \
             none)"
        );
    }

    #[test]
    fn audit_read_events_returns_events_only() {
        let (log, _) = sample();
        let events: Vec<(usize, ParsedEvent)> = read_events(&log).map(Result::unwrap).collect();
        let lines: Vec<(usize, u64)> = events.iter().map(|(l, e)| (*l, e.seq)).collect();
        assert_eq!(lines, [(1, 1), (2, 2), (4, 4), (6, 6), (7, 7), (8, 8)]);
        assert_eq!(events[0].1.event, event(0));
        assert_eq!(events[5].1.event, event(5));

        // A line being written is skipped; a bad line is reported and reading goes on.
        let mut lines = split(&log);
        lines[1] = b"garbage\n".to_vec();
        let mut bytes = lines.concat();
        bytes.extend_from_slice(b"{\"seq\":10,");
        let results: Vec<_> = read_events(&bytes).collect();
        assert_eq!(results.len(), 6);
        assert_eq!(results[1].as_ref().unwrap_err().line, 2);
        assert!(read_events(b"").next().is_none());
    }

    #[test]
    fn audit_filter_matches() {
        let mut parsed = ParsedEvent {
            seq: 1,
            event: event(0),
        };
        parsed.event.keys.push(AuditKey {
            key_id: "second".into(),
            version: None,
        });
        let time = parsed.event.time_ms;
        let yes = [
            EventFilter::default(),
            EventFilter {
                key_id: Some("second".into()),
                ..EventFilter::default()
            },
            EventFilter {
                key_id: Some("0b6a3f52-1c8e-4e43-9d7a-5f0a2b1c3d4e".into()),
                principal: Some("spiffe://kms.test/app".into()),
                since_ms: Some(time),
                operation: Some("encrypt".into()),
                outcome: Some(Outcome::Success),
            },
        ];
        for filter in yes {
            assert!(filter.matches(&parsed), "{filter:?}");
        }
        let no = [
            EventFilter {
                key_id: Some("third".into()),
                ..EventFilter::default()
            },
            EventFilter {
                principal: Some("spiffe://kms.test/other".into()),
                ..EventFilter::default()
            },
            EventFilter {
                since_ms: Some(time + 1),
                ..EventFilter::default()
            },
            EventFilter {
                operation: Some("Decrypt".into()),
                ..EventFilter::default()
            },
            EventFilter {
                outcome: Some(Outcome::Denied),
                ..EventFilter::default()
            },
        ];
        for filter in no {
            assert!(!filter.matches(&parsed), "{filter:?}");
        }
        parsed.event.principal = None;
        assert!(
            !EventFilter {
                principal: Some("spiffe://kms.test/app".into()),
                ..EventFilter::default()
            }
            .matches(&parsed)
        );
    }

    #[test]
    fn audit_verify_checks_rsa_pss_checkpoints() {
        let signer = SoftCheckpointSigner::rsa_pss().unwrap();
        let key = signer.public_key();
        let log = build_log(&signer, &[2, 1]).unwrap();
        assert_eq!(
            verify(&log, &key),
            Ok(VerifyReport {
                records: 3,
                checkpoints: 2,
                last_seq: 5,
                log_id: Some(LOG_ID)
            })
        );
        // Every byte of the last checkpoint's signature is covered.
        let last = split(&log).pop().unwrap();
        let start = log.len() - last.len();
        let hex_start = start
            + last
                .windows(13)
                .position(|w| w == b"\"signature\":\"")
                .unwrap()
            + 13;
        for pos in (hex_start..log.len() - 3).step_by(7) {
            let mut tampered = log.clone();
            tampered[pos] = if tampered[pos] == b'0' { b'1' } else { b'0' };
            let failure = verify(&tampered, &key).expect_err(&format!("flip at byte {pos}"));
            assert_eq!(failure.line, 5, "{failure}");
        }
        // Another RSA key, or an ECDSA key, does not verify it.
        let failure = verify(&log, &SoftCheckpointSigner::new().public_key()).unwrap_err();
        assert_eq!(failure.line, 3, "{failure}");
        let other = SoftCheckpointSigner::rsa_pss().unwrap().public_key();
        let failure = verify(&log, &other).unwrap_err();
        // Refused either way: as a bad signature, or as a number past the other modulus.
        assert!(
            failure.message.contains("does not verify")
                || failure.message.contains("not below the RSA modulus"),
            "{failure}"
        );
        // An ECDSA log does not verify with an RSA key: the signature is too short.
        let (ecdsa_log, _) = sample();
        let failure = verify(&ecdsa_log, &key).unwrap_err();
        assert!(failure.message.contains("as long as"), "{failure}");
    }

    #[test]
    fn an_rsa_pss_signature_has_one_spelling() {
        use crate::audit::{AuditPublicKey, CheckpointSigner as _};
        use rsa::traits::PublicKeyParts as _;
        let signer = SoftCheckpointSigner::rsa_pss().unwrap();
        let key = signer.public_key();
        let AuditPublicKey::RsaPss(rsa_key) = &key else {
            panic!("not an RSA key")
        };
        let size = rsa_key.size();
        // A signature s with s + n still as long as the modulus (a third of them or so).
        for i in 0u32..200 {
            let message = i.to_be_bytes();
            let signature = signer.sign(&message).unwrap();
            assert_eq!(key.verify(&message, &signature), Ok(()));
            let bigger = rsa::BigUint::from_bytes_be(&signature) + rsa_key.n();
            let bytes = bigger.to_bytes_be();
            if bytes.len() > size {
                continue;
            }
            let mut respelled = vec![0; size - bytes.len()];
            respelled.extend_from_slice(&bytes);
            assert!(key.verify(&message, &respelled).is_err(), "s + n verified");
            return;
        }
        panic!("no signature of 200 left room for s + n");
    }
}
