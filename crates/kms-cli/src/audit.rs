//! `kmsctl audit`: verify, tail and search the audit log file, offline. The log is JSON Lines
//! on kmsd's host (by default `DATA_DIR/audit.log`); see kms-core's `audit` module for its
//! format.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use kms_core::audit::{self, EventFilter, Outcome, ParsedEvent};
use serde_json::json;

use crate::output::Format;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain and every checkpoint signature; names the first bad line.
    Verify {
        #[command(flatten)]
        log: LogArg,
        /// The audit public key (PEM): a copy made at install and kept off the log's host.
        /// kmsd rewrites `audit.pub.pem` beside the log at every start, so that file proves
        /// nothing to a verifier; check the fingerprint printed here against the one you
        /// pinned.
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
        /// Fail unless the log's checkpoints carry this log id (32 hex digits).
        #[arg(long, value_name = "HEX")]
        expect_log_id: Option<String>,
        /// Fail unless the log reaches this sequence number: the last one you recorded, so a
        /// log cut back at a batch boundary is caught.
        #[arg(long, value_name = "SEQ")]
        min_seq: Option<u64>,
    },
    /// The last records.
    Tail {
        #[command(flatten)]
        log: LogArg,
        /// How many.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
    },
    /// The records that match every filter given.
    Search {
        #[command(flatten)]
        log: LogArg,
        /// Records that used this key id.
        #[arg(long = "key", value_name = "KEY_ID")]
        key_id: Option<String>,
        /// Records of this principal.
        #[arg(long)]
        principal: Option<String>,
        /// Records at or after this time: RFC 3339 (2026-11-23T10:00:00Z) or an age (90s,
        /// 15m, 2h, 7d).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Records of this RPC, e.g. Decrypt.
        #[arg(long)]
        operation: Option<String>,
        /// success, denied or failed.
        #[arg(long)]
        outcome: Option<String>,
    },
}

#[derive(Args)]
pub struct LogArg {
    /// The audit log file.
    #[arg(long = "log", env = "KMS_AUDIT_LOG", value_name = "FILE")]
    path: PathBuf,
}

/// The SHA-256 of the key's DER SubjectPublicKeyInfo, in hex: what an operator pins.
fn fingerprint(key: &audit::AuditPublicKey) -> anyhow::Result<String> {
    use sha2::Digest as _;
    let der = key
        .to_public_key_der()
        .context("cannot encode the public key")?;
    Ok(hex::encode(sha2::Sha256::digest(der)))
}

fn parse_log_id(text: &str) -> anyhow::Result<[u8; 16]> {
    hex::decode(text)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .with_context(|| format!("--expect-log-id {text:?} is not 32 hex digits"))
}

/// Fails, as a verification failure of the last line, when the log is not the expected one
/// or ends before `min_seq`.
fn check_expectations(
    report: &audit::VerifyReport,
    log_id: Option<[u8; 16]>,
    min_seq: Option<u64>,
) -> Result<(), audit::VerifyFailure> {
    let last_line = usize::try_from(report.last_seq).unwrap_or(usize::MAX);
    if let Some(expected) = log_id
        && report.log_id != Some(expected)
    {
        return Err(audit::VerifyFailure {
            line: last_line,
            message: format!(
                "the log id is {}, not the expected {}: this is another log",
                report.log_id.map_or_else(|| "none".to_owned(), hex::encode),
                hex::encode(expected)
            ),
        });
    }
    if let Some(min_seq) = min_seq
        && report.last_seq < min_seq
    {
        return Err(audit::VerifyFailure {
            line: last_line,
            message: format!(
                "the log ends at sequence number {}, before the expected {min_seq}: it was cut \
                 back or replaced",
                report.last_seq
            ),
        });
    }
    Ok(())
}

/// Runs an audit subcommand.
pub fn run(format: Format, command: &AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify {
            log,
            public_key,
            expect_log_id,
            min_seq,
        } => {
            let pem = std::fs::read_to_string(public_key)
                .with_context(|| format!("cannot read {}", public_key.display()))?;
            let key = audit::AuditPublicKey::from_public_key_pem(&pem).with_context(|| {
                format!("{} is not a P-256 or RSA public key", public_key.display())
            })?;
            let fingerprint = fingerprint(&key)?;
            let expected_log_id = expect_log_id.as_deref().map(parse_log_id).transpose()?;
            let bytes = read(&log.path)?;
            let verified = audit::verify(&bytes, &key).and_then(|report| {
                check_expectations(&report, expected_log_id, *min_seq).map(|()| report)
            });
            match verified {
                Ok(report) => {
                    let log_id = report.log_id.map(hex::encode);
                    match format {
                        Format::Json => println!(
                            "{}",
                            json!({
                                "verified": true,
                                "records": report.records,
                                "checkpoints": report.checkpoints,
                                "last_seq": report.last_seq,
                                "log_id": log_id,
                                "public_key_sha256": fingerprint,
                            })
                        ),
                        Format::Text => println!(
                            "verified: {} records, {} checkpoints, last sequence number {}, log \
                             id {}\npublic key SHA-256 {fingerprint}: check it against the \
                             fingerprint you pinned at install",
                            report.records,
                            report.checkpoints,
                            report.last_seq,
                            log_id.as_deref().unwrap_or("none (empty log)")
                        ),
                    }
                    Ok(())
                }
                Err(failure) => {
                    if format == Format::Json {
                        println!(
                            "{}",
                            json!({
                                "verified": false,
                                "line": failure.line,
                                "message": failure.message,
                            })
                        );
                    }
                    bail!("{} fails verification: {failure}", log.path.display())
                }
            }
        }
        AuditCommand::Tail { log, lines } => {
            let bytes = read(&log.path)?;
            let events = collect(&bytes, &EventFilter::default())?;
            let skip = events.len().saturating_sub(*lines);
            print_events(format, &events[skip..]);
            Ok(())
        }
        AuditCommand::Search {
            log,
            key_id,
            principal,
            since,
            operation,
            outcome,
        } => {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            let filter = EventFilter {
                key_id: key_id.clone(),
                principal: principal.clone(),
                since_ms: since
                    .as_deref()
                    .map(|t| audit::parse_time(t, now_ms))
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--since: {e}"))?,
                operation: operation.clone(),
                outcome: outcome
                    .as_deref()
                    .map(str::parse::<Outcome>)
                    .transpose()
                    .context("--outcome")?,
            };
            let bytes = read(&log.path)?;
            print_events(format, &collect(&bytes, &filter)?);
            Ok(())
        }
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the audit log {}", path.display()))
}

fn collect(bytes: &[u8], filter: &EventFilter) -> anyhow::Result<Vec<ParsedEvent>> {
    let mut events = Vec::new();
    for item in audit::read_events(bytes) {
        let (_, event) = item.context("the audit log holds a line that is not a record")?;
        if filter.matches(&event) {
            events.push(event);
        }
    }
    Ok(events)
}

fn print_events(format: Format, events: &[ParsedEvent]) {
    for parsed in events {
        let e = &parsed.event;
        let keys: Vec<String> = e
            .keys
            .iter()
            .map(|k| match k.version {
                Some(v) => format!("{}:v{v}", k.key_id),
                None => k.key_id.clone(),
            })
            .collect();
        match format {
            Format::Json => println!(
                "{}",
                json!({
                    "seq": parsed.seq,
                    "time": audit::format_time(e.time_ms),
                    "request_id": e.request_id,
                    "principal": e.principal,
                    "peer": e.peer,
                    "operation": e.operation,
                    "keys": e.keys.iter().map(|k| json!({"key_id": k.key_id, "version": k.version})).collect::<Vec<_>>(),
                    "encryption_context": e.encryption_context,
                    "destination_encryption_context": e.destination_encryption_context,
                    "outcome": e.outcome.as_str(),
                    "error": e.error,
                    "policy_statement": e.policy_statement,
                })
            ),
            Format::Text => println!(
                "{}  {:<8} {:<22} {:<32} {}{}{}",
                audit::format_time(e.time_ms),
                e.outcome.as_str(),
                e.operation,
                e.principal.as_deref().unwrap_or("(unauthenticated)"),
                if keys.is_empty() {
                    "-".to_owned()
                } else {
                    keys.join(",")
                },
                e.error
                    .as_deref()
                    .map(|r| format!("  {r}"))
                    .unwrap_or_default(),
                e.policy_statement
                    .as_deref()
                    .map(|s| format!("  by {s}"))
                    .unwrap_or_default(),
            ),
        }
    }
}
