//! The audit log: one tamper-evident record of every RPC, allowed or denied, successful or
//! failed.
//!
//! A record says when, who (principal and peer address), what (operation, keys and versions,
//! encryption contexts) and how it ended (outcome, error reason, deciding policy statement).
//! It never holds a plaintext, a data key, a ciphertext or a PIN: [`AuditEvent`] has no field
//! that could carry one.
//!
//! Records are hash-chained, and the chain is checkpointed with signatures made by a key the HSM
//! holds ([`CheckpointSigner`]): ECDSA P-256, or RSA-PSS on an HSM without elliptic curves
//! ([`AuditPublicKey`]). [`verify`] needs only the file and the public key:
//! it detects any altered, removed, inserted or reordered line and names the line. The service
//! hands its records to an [`AuditSink`]; kmsd's is the file writer of the kms-audit crate, which
//! acknowledges a record once it is on disk (`fdatasync`) and covered by a signed checkpoint.
//! This module keeps the record format ([`line`], [`encode_batch`]) and the verifier.
//!
//! # File format
//!
//! The log is a UTF-8 text file of JSON Lines: one JSON object per line, each line terminated
//! by `\n` (no `\r`). The writer emits every line in one canonical form: compact JSON (no
//! whitespace), the fields in the order listed below, strings escaped as `serde_json` escapes
//! them, every field present (an absent value is `null`). The verifier re-encodes each line it
//! reads and rejects a line that differs in any byte, so a line has exactly one valid spelling.
//!
//! Every line starts with two fields:
//!
//! - `seq`: the line number in the chain, a decimal integer (u64): 1 for the first line, then
//!   +1 for each line, checkpoints included.
//! - `prev`: the SHA-256 of the previous line's bytes (without its `\n`), 64 lowercase hex
//!   digits; for the line with `seq` 1, 64 zeros.
//!
//! The chain hash covers the raw bytes of the line, so verifying it needs no JSON
//! canonicalisation. The third field, `type`, says which of two kinds the line is.
//!
//! An **event** line records one RPC:
//!
//! ```text
//! {"seq":1,"prev":"0000…0000","type":"event","time":"2026-11-23T10:00:00.123Z",
//!  "request_id":"…","principal":"spiffe://kms.test/app","peer":"127.0.0.1:51234",
//!  "operation":"Decrypt","keys":[{"key_id":"<uuid>","version":2}],
//!  "encryption_context":{"tenant":"a"},"destination_encryption_context":null,
//!  "outcome":"denied","error":"AccessDeniedException","policy_statement":"Sid \"DenyB\""}
//! ```
//!
//! (shown wrapped; it is one line in the file.)
//!
//! | field | value |
//! | --- | --- |
//! | `time` | when the RPC was handled: RFC 3339 UTC with milliseconds and `Z`, years 0000–9999 |
//! | `request_id` | the request id (string) |
//! | `principal` | the authenticated caller, or `null` when the caller was not authenticated |
//! | `peer` | the peer address, or `null` when unknown |
//! | `operation` | the RPC name, e.g. `"Encrypt"` |
//! | `keys` | the keys the RPC named or used, in order: `{"key_id":…,"version":n or null}` (possibly `[]`) |
//! | `encryption_context` | the request's encryption context as an object with keys in ascending byte order, or `null` when the RPC has none |
//! | `destination_encryption_context` | the destination context of a ReEncrypt, or `null` |
//! | `outcome` | `"success"`, `"denied"` (refused by authorization) or `"failed"` (any other error) |
//! | `error` | the error reason, e.g. `"AccessDeniedException"`, or `null` on success |
//! | `policy_statement` | the policy statement that decided, e.g. `"Sid \"X\""`, or `null` |
//!
//! A **checkpoint** line signs the chain up to the line before it:
//!
//! ```text
//! {"seq":8,"prev":"<64 hex>","type":"checkpoint","log_id":"<32 hex>","signature":"<128 hex>"}
//! ```
//!
//! - `log_id`: the 16-byte id of the service instance that writes the log, 32 lowercase hex
//!   digits. It is the same in every checkpoint of a file.
//! - `signature`: an ECDSA P-256 signature with SHA-256, raw `r || s` (32 bytes each,
//!   big-endian), 128 lowercase hex digits, with `s` in the lower half of the group order
//!   ("low-S"); or, where the HSM has no elliptic curves, an RSASSA-PSS signature with SHA-256,
//!   MGF1-SHA-256 and a 32-byte salt, as long as the modulus (768 hex digits for RSA 3072). The
//!   public key's type says which. Either is over the message (see [`checkpoint_message`])
//!
//!   ```text
//!   "kms audit checkpoint v1" 0x00  ||  log_id (16 bytes)
//!     ||  seq (u64 big-endian: the checkpoint line's own seq)
//!     ||  prev (32 bytes: the SHA-256 of the line before the checkpoint)
//!   ```
//!
//! A checkpoint has no `time` field: nothing in the checkpoint line is left uncovered by its
//! signature, so no byte of the file can change without [`verify`] noticing — the last line
//! included, which no later `prev` covers.
//!
//! # Writing
//!
//! The writer (kms-audit's `AuditLog`) commits in groups, led by a submitting thread (there is
//! no writer thread): the leader takes every event queued, appends them and one checkpoint
//! signed over the new head ([`encode_batch`]) in a single write, fsyncs, and only then
//! acknowledges the events. So every acknowledged event is followed by a signed checkpoint,
//! and a valid log ends with a checkpoint. Whatever a crash leaves after the last checkpoint
//! was never acknowledged: opening the log moves it to a quarantine file and never signs it.
//!
//! # What verification proves
//!
//! A log that [`verify`] accepts is, line for line, what a holder of the signing key wrote,
//! except that whole batches may be missing from the end: a file cut just after a checkpoint is
//! still a valid log. Compare [`VerifyReport::last_seq`] with a value seen earlier (or exported
//! elsewhere) to detect that. The verifier does not know the expected `log_id`; it reports it
//! for the caller to compare.

mod batch;
mod key;
pub mod line;
mod time;
mod verify;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::hsm::HsmError;

pub use batch::{Tail, check_signer, encode_batch};
pub use key::{AUDIT_RSA_BITS, AuditPublicKey, EncodeAuditKey, UnknownAuditKey};
pub use time::{MAX_TIME_MS, MIN_TIME_MS, format_time, parse_time};
pub use verify::{EventFilter, ParsedEvent, VerifyFailure, VerifyReport, read_events, verify};

/// Where the service's records of RPCs go: kms-audit's file writer (`AuditLog`) in kmsd.
pub trait AuditSink: Send + Sync {
    /// Queues `event`. `done` is called once: with the record's seq when it is durable and
    /// sealed, or with why it is not (the call must then fail: kmsd never answers an RPC it
    /// could not audit).
    fn submit(&self, event: AuditEvent, done: Box<dyn FnOnce(Result<u64, AuditError>) + Send>);

    /// Whether the sink has failed for good (a write or sync failed), for readiness probes.
    fn is_failed(&self) -> bool;
}

/// The first bytes of every signed checkpoint message (domain separation).
pub const CHECKPOINT_DOMAIN: &[u8] = b"kms audit checkpoint v1\0";

/// The `prev` of the first line: 32 zero bytes.
pub const GENESIS_PREV: [u8; 32] = [0; 32];

/// The message a checkpoint signs: [`CHECKPOINT_DOMAIN`] `|| log_id || seq (u64 big-endian) ||
/// prev`, where `seq` is the checkpoint line's own seq and `prev` the SHA-256 of the line before
/// it. The signature (ECDSA P-256 or RSA-PSS) is over SHA-256 of this message.
pub fn checkpoint_message(log_id: &[u8; 16], seq: u64, prev: &[u8; 32]) -> Vec<u8> {
    let mut message = Vec::with_capacity(CHECKPOINT_DOMAIN.len() + 16 + 8 + 32);
    message.extend_from_slice(CHECKPOINT_DOMAIN);
    message.extend_from_slice(log_id);
    message.extend_from_slice(&seq.to_be_bytes());
    message.extend_from_slice(prev);
    message
}

/// How an RPC ended.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The RPC succeeded.
    Success,
    /// Authorization refused the RPC.
    Denied,
    /// The RPC failed for any other reason.
    Failed,
}

impl Outcome {
    /// The name used in the log: `success`, `denied` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not `success`, `denied` or `failed`.
#[derive(Debug, thiserror::Error)]
#[error("unknown outcome `{0}`: expected success, denied or failed")]
pub struct UnknownOutcome(pub String);

impl FromStr for Outcome {
    type Err = UnknownOutcome;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "success" => Ok(Outcome::Success),
            "denied" => Ok(Outcome::Denied),
            "failed" => Ok(Outcome::Failed),
            other => Err(UnknownOutcome(other.to_owned())),
        }
    }
}

/// A key an RPC named or used, with the version when one is known.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditKey {
    /// The key id (a UUID), or what the caller named when it resolved to no key.
    pub key_id: String,
    /// The key version, when the RPC used one.
    pub version: Option<u32>,
}

/// One RPC as the audit log records it. Holds no plaintext, data key, ciphertext or PIN.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AuditEvent {
    /// When the RPC was handled, in Unix milliseconds. Rendered as RFC 3339 UTC; values outside
    /// years 0000–9999 are clamped to that range.
    pub time_ms: i64,
    /// The request id.
    pub request_id: String,
    /// The authenticated caller; `None` when the caller was not authenticated.
    pub principal: Option<String>,
    /// The peer address.
    pub peer: Option<String>,
    /// The RPC name, e.g. `"Encrypt"`.
    pub operation: String,
    /// The keys the RPC named or used.
    pub keys: Vec<AuditKey>,
    /// The request's encryption context, when the RPC has one.
    pub encryption_context: Option<BTreeMap<String, String>>,
    /// The destination encryption context of a ReEncrypt.
    pub destination_encryption_context: Option<BTreeMap<String, String>>,
    /// How the RPC ended.
    pub outcome: Outcome,
    /// The error reason, e.g. `"AccessDeniedException"`; `None` on success.
    pub error: Option<String>,
    /// The policy statement that decided, e.g. `Sid "X"`.
    pub policy_statement: Option<String>,
}

impl AuditEvent {
    /// An event with the required fields set and every optional one empty.
    pub fn new(
        time_ms: i64,
        request_id: impl Into<String>,
        operation: impl Into<String>,
        outcome: Outcome,
    ) -> Self {
        AuditEvent {
            time_ms,
            request_id: request_id.into(),
            principal: None,
            peer: None,
            operation: operation.into(),
            keys: Vec::new(),
            encryption_context: None,
            destination_encryption_context: None,
            outcome,
            error: None,
            policy_statement: None,
        }
    }
}

/// Signs checkpoints; the HSM implements it (kms-hsm), tests use a software key.
pub trait CheckpointSigner: Send + Sync {
    /// The signature over SHA-256(`message`) of the scheme of [`Self::public_key`]: ECDSA
    /// P-256 as raw `r || s` (64 bytes), or RSA-PSS.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, HsmError>;

    /// The public key, to check at open that it matches what the verifier will be given.
    fn public_key(&self) -> AuditPublicKey;
}

/// The last sealed checkpoint of a log: its seq, the SHA-256 of its line, and where the line
/// ends in the file. kmsd pins it in the metadata store with every seal: at open, a log rolled
/// back or truncated behind it is refused, and the chain is checked forward from it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SealPin {
    /// The checkpoint's seq.
    pub seq: u64,
    /// The SHA-256 of the checkpoint's line (without its '\n').
    pub hash: [u8; 32],
    /// The file offset just past the line's '\n'.
    pub end: u64,
}

/// Why the audit log could not be opened or could not record an event.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Reading, writing or syncing the file failed.
    #[error("audit log I/O failed: {context}")]
    Io {
        /// What was being done, and on which file.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The file's last complete line is not an audit record.
    #[error("the audit log is corrupt at byte offset {offset}: {message}")]
    Corrupt {
        /// Where the bad line starts in the file.
        offset: u64,
        /// What is wrong with it.
        message: String,
    },
    /// The file's checkpoints carry another instance's log id.
    #[error("the audit log at byte offset {offset} belongs to log id {found}, not {expected}")]
    LogIdMismatch {
        /// Where the checkpoint starts in the file.
        offset: u64,
        /// This instance's log id, in hex.
        expected: String,
        /// The checkpoint's log id, in hex.
        found: String,
    },
    /// The file's last checkpoint does not verify with the signer's public key: the file was
    /// signed with another key, and appending to it would make it unverifiable.
    #[error(
        "the audit checkpoint at byte offset {offset} was not signed by the configured signing key"
    )]
    KeyMismatch {
        /// Where the checkpoint starts in the file.
        offset: u64,
    },
    /// The file has records but no valid checkpoint: nothing in it was ever sealed by this
    /// service, and kmsd never signs what it did not write.
    #[error(
        "the audit log has records but no checkpoint signed by this service; kmsd will not sign \
         what it did not write: move the file aside (and keep it for investigation)"
    )]
    Unsealed,
    /// The file ends before the last sealed checkpoint the metadata store pins: it was rolled
    /// back, truncated or replaced.
    #[error(
        "the audit log ends at sequence number {log_seq}, but the metadata store pins a sealed \
         checkpoint at sequence number {pinned_seq}: the log was rolled back, truncated or \
         replaced; restore it from a backup"
    )]
    RolledBack {
        /// The seq of the file's last line.
        log_seq: u64,
        /// The pinned checkpoint's seq.
        pinned_seq: u64,
    },
    /// The line at the pinned seq is not the checkpoint that was sealed there.
    #[error(
        "the audit log's line at sequence number {seq} is not the checkpoint the metadata store \
         pins there: the log was altered or replaced; restore it from a backup"
    )]
    PinMismatch {
        /// The pinned seq.
        seq: u64,
    },
    /// Reading or writing the pinned checkpoint in the metadata store failed.
    #[error("cannot read or write the audit log's pinned checkpoint")]
    Pin(#[source] crate::store::StoreError),
    /// The signer failed.
    #[error("signing an audit checkpoint failed")]
    Sign(#[source] HsmError),
    /// The signer returned a signature that does not verify with its own public key.
    #[error("the checkpoint signer returned a signature that does not verify with its public key")]
    BadSignature,
    /// A record could not be encoded as JSON.
    #[error("encoding an audit record failed")]
    Encode(#[source] serde_json::Error),
    /// The record was not committed (the source says why): the service must not answer an RPC
    /// it cannot audit. After a signing failure only that batch fails; after a failed write or
    /// sync, every later record fails too.
    #[error("the audit record could not be committed")]
    Failed(#[source] Arc<AuditError>),
    /// The commit that held the record stopped before reporting on it (a completion
    /// callback panicked).
    #[error("the audit writer has stopped")]
    Closed,
}

impl From<AuditError> for crate::KmsError {
    /// The error of a call whose record was not committed: KeyUnavailableException or
    /// DependencyTimeoutException (UNAVAILABLE, so clients retry) when the HSM could not sign
    /// the checkpoint because it is unreachable or busy, KMSInternalException otherwise.
    fn from(error: AuditError) -> Self {
        let signer = match &error {
            AuditError::Failed(cause) => match cause.as_ref() {
                AuditError::Sign(hsm) => Some(hsm),
                _ => None,
            },
            AuditError::Sign(hsm) => Some(hsm),
            _ => None,
        };
        match signer {
            Some(HsmError::Unavailable(_)) => {
                crate::KmsError::KeyUnavailable(HsmError::Unavailable(Box::new(error)))
            }
            Some(HsmError::Timeout) => crate::KmsError::DependencyTimeout(HsmError::Timeout),
            _ => crate::KmsError::Internal(Box::new(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_signer_makes_the_call_unavailable_not_internal() {
        let failed = |hsm: HsmError| AuditError::Failed(Arc::new(AuditError::Sign(hsm)));
        let reason = |e: AuditError| crate::KmsError::from(e).reason();
        assert_eq!(
            reason(failed(HsmError::Unavailable("gone".into()))),
            "KeyUnavailableException"
        );
        assert_eq!(
            reason(failed(HsmError::Timeout)),
            "DependencyTimeoutException"
        );
        assert_eq!(reason(AuditError::Closed), "KMSInternalException");
    }

    #[test]
    fn audit_checkpoint_message_layout() {
        let log_id = [0xab; 16];
        let prev = [0xcd; 32];
        let message = checkpoint_message(&log_id, 0x0102_0304_0506_0708, &prev);
        assert_eq!(message.len(), 24 + 16 + 8 + 32);
        assert_eq!(&message[..24], b"kms audit checkpoint v1\0");
        assert_eq!(&message[24..40], &log_id);
        assert_eq!(&message[40..48], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&message[48..], &prev);
    }

    #[test]
    fn audit_outcome_names_round_trip() {
        for outcome in [Outcome::Success, Outcome::Denied, Outcome::Failed] {
            assert_eq!(outcome.as_str().parse::<Outcome>().unwrap(), outcome);
            assert_eq!(
                serde_json::to_string(&outcome).unwrap(),
                format!("\"{outcome}\"")
            );
        }
        assert!("Success".parse::<Outcome>().is_err());
    }

    #[test]
    fn audit_public_key_pem_round_trip() {
        use p256::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};

        let signer = crate::testing::SoftCheckpointSigner::new();
        let key = signer.public_key();
        let pem = key.to_public_key_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        let AuditPublicKey::P256(p256_key) = key else {
            panic!("not a P-256 key");
        };
        // Byte for byte what kmsd wrote before RSA-PSS audit keys existed.
        assert_eq!(p256_key.to_public_key_pem(LineEnding::LF).unwrap(), pem);
        assert_eq!(
            p256::PublicKey::from_public_key_pem(&pem).unwrap(),
            p256_key
        );
        assert_eq!(
            AuditPublicKey::from_public_key_pem(&pem).unwrap(),
            AuditPublicKey::P256(p256_key)
        );

        let rsa = crate::testing::SoftCheckpointSigner::rsa_pss()
            .unwrap()
            .public_key();
        let pem = rsa.to_public_key_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(AuditPublicKey::from_public_key_pem(&pem).unwrap(), rsa);
        assert_eq!(rsa.scheme(), "RSA-PSS 2048");
        assert!(AuditPublicKey::from_public_key_pem("-----BEGIN PUBLIC KEY-----\n").is_err());
    }
}
