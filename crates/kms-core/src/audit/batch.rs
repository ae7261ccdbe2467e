//! A batch of the log as it is appended: its event lines, then one checkpoint signed over the
//! new end of the chain. The file writer (kms-audit) appends what [`encode_batch`] returns; the
//! tests build whole logs in memory with it.

use super::line::{encode_checkpoint, encode_event, line_hash};
use super::{AuditError, AuditEvent, AuditPublicKey, CheckpointSigner, checkpoint_message};

/// The end of the chain: the last seq written and the hash of the last line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tail {
    /// The last line's seq (0 before the first line).
    pub seq: u64,
    /// The SHA-256 of the last line (the next line's `prev`).
    pub prev: [u8; 32],
}

/// Encodes `events` after `tail`, then one checkpoint signed over the new head. Returns the
/// bytes to append ('\n'-terminated lines) and the new tail. With no events, just a checkpoint.
pub fn encode_batch(
    tail: Tail,
    events: &[&AuditEvent],
    log_id: &[u8; 16],
    signer: &dyn CheckpointSigner,
) -> Result<(Vec<u8>, Tail), AuditError> {
    let mut bytes = Vec::new();
    let mut tail = tail;
    for event in events {
        tail.seq += 1;
        let line = encode_event(tail.seq, &tail.prev, event).map_err(AuditError::Encode)?;
        tail.prev = line_hash(&line);
        bytes.extend_from_slice(&line);
        bytes.push(b'\n');
    }
    tail.seq += 1;
    let signature = sign_checkpoint(log_id, tail.seq, &tail.prev, signer)?;
    let line =
        encode_checkpoint(tail.seq, &tail.prev, log_id, &signature).map_err(AuditError::Encode)?;
    tail.prev = line_hash(&line);
    bytes.extend_from_slice(&line);
    bytes.push(b'\n');
    Ok((bytes, tail))
}

/// Has the checkpoint signed, with an ECDSA signature normalised to low-S (so the line has one
/// valid form).
fn sign_checkpoint(
    log_id: &[u8; 16],
    seq: u64,
    prev: &[u8; 32],
    signer: &dyn CheckpointSigner,
) -> Result<Vec<u8>, AuditError> {
    let message = checkpoint_message(log_id, seq, prev);
    sign_normalized(&message, signer, &signer.public_key())
}

/// The signer's signature of `message` in the form a checkpoint carries (see
/// [`AuditPublicKey::normalize`]), for the scheme of `key`.
fn sign_normalized(
    message: &[u8],
    signer: &dyn CheckpointSigner,
    key: &AuditPublicKey,
) -> Result<Vec<u8>, AuditError> {
    let raw = signer.sign(message).map_err(AuditError::Sign)?;
    key.normalize(&raw).ok_or(AuditError::BadSignature)
}

/// Refuses, at open, a signer whose signatures do not verify with the public key it gives
/// verifiers. Checked once: verifying every checkpoint in software cost more CPU than the
/// rest of a request (issue 6's profile); `kmsctl audit verify` checks them all offline.
pub fn check_signer(
    log_id: &[u8; 16],
    signer: &dyn CheckpointSigner,
    public_key: &AuditPublicKey,
) -> Result<(), AuditError> {
    let mut message = b"kms audit signer self-test ".to_vec();
    message.extend_from_slice(log_id);
    let signature = sign_normalized(&message, signer, public_key)?;
    public_key
        .verify(&message, &signature)
        .map_err(|_| AuditError::BadSignature)
}
