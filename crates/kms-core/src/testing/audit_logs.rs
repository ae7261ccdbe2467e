//! Audit logs built in memory, with the record format's own encoder: the verifier's tests
//! and the file writer's (kms-audit) share them.

use super::SoftCheckpointSigner;
use crate::audit::{AuditError, AuditEvent, AuditKey, GENESIS_PREV, Outcome, Tail, encode_batch};

/// The log id of the logs built here.
pub const LOG_ID: [u8; 16] = [0x5a; 16];

/// The `n`th event of a test log: an Encrypt by one principal, a millisecond after the last.
pub fn event(n: u64) -> AuditEvent {
    let mut event = AuditEvent::new(
        1_795_428_000_000 + i64::try_from(n).unwrap_or(i64::MAX),
        format!("req-{n}"),
        "Encrypt",
        Outcome::Success,
    );
    event.principal = Some("spiffe://kms.test/app".into());
    event.peer = Some("127.0.0.1:51234".into());
    event.keys = vec![AuditKey {
        key_id: "0b6a3f52-1c8e-4e43-9d7a-5f0a2b1c3d4e".into(),
        version: Some(1),
    }];
    event.encryption_context = Some([("tenant".to_owned(), "a".to_owned())].into());
    event
}

/// A log of events in batches of the given sizes, built without a file.
pub fn build_log(signer: &SoftCheckpointSigner, batches: &[u64]) -> Result<Vec<u8>, AuditError> {
    let batches: Vec<([u8; 16], u64)> = batches.iter().map(|&size| (LOG_ID, size)).collect();
    build_log_with(signer, &batches)
}

/// A log of events in batches of the given sizes, each checkpoint with the given log id.
pub fn build_log_with(
    signer: &SoftCheckpointSigner,
    batches: &[([u8; 16], u64)],
) -> Result<Vec<u8>, AuditError> {
    let mut tail = Tail {
        seq: 0,
        prev: GENESIS_PREV,
    };
    let mut log = Vec::new();
    let mut n = 0;
    for (log_id, size) in batches {
        let events: Vec<AuditEvent> = (n..n + size).map(event).collect();
        n += size;
        let refs: Vec<&AuditEvent> = events.iter().collect();
        let (bytes, next) = encode_batch(tail, &refs, log_id, signer)?;
        log.extend_from_slice(&bytes);
        tail = next;
    }
    Ok(log)
}
