//! [`AuditLog`]: opens the file, recovers its tail, and appends in group commits.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};

use super::line::{Line, encode_checkpoint, encode_event, line_hash, parse_line};
use super::{AuditError, AuditEvent, CheckpointSigner, GENESIS_PREV, checkpoint_message};

/// The most events one group commit takes.
pub const MAX_BATCH: usize = 1024;

/// How far back [`line_start`] reads at a time.
const CHUNK: usize = 8192;

/// Called once with the event's seq when it is durable, or with why it is not.
type Done = Box<dyn FnOnce(Result<u64, AuditError>) + Send>;

/// One queued event.
struct Job {
    event: AuditEvent,
    done: Done,
}

/// The events waiting for a commit, and whether a thread is committing.
#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    leading: bool,
}

/// An open audit log: a file, appended to in group commits by the threads that submit events.
///
/// Share it (`Arc<AuditLog>`) among request handlers. There is no writer thread: the first
/// thread to submit while no commit is running leads. It commits every queued event in one
/// batch, then keeps committing what was queued meanwhile until the queue is empty; events
/// submitted during a commit join the next batch, and their threads return at once. So a lone
/// caller pays no thread hand-off, and concurrent callers share one write, sync and signature.
///
/// Once a write or sync fails, the log is failed: every event queued or submitted afterwards
/// gets [`AuditError::Failed`], so the service fails closed.
pub struct AuditLog {
    path: PathBuf,
    queue: Mutex<Queue>,
    /// Locked only by the leading thread.
    writer: Mutex<Writer>,
    failure: OnceLock<Arc<AuditError>>,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .field("failed", &self.failure.get().is_some())
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (creating if absent, mode 0600 on unix) the log at `path`.
    ///
    /// Recovers the tail: a last line without '\n' was torn by a crash and never acknowledged;
    /// it is truncated, with a warning. The last complete line gives the next seq and prev
    /// (read from the end of the file, never the whole file). If it is an event, its batch's
    /// checkpoint was torn, and a checkpoint is signed and appended at once.
    ///
    /// Refuses a file whose last complete line is not a record ([`AuditError::Corrupt`]), whose
    /// last checkpoint carries another `log_id` ([`AuditError::LogIdMismatch`]) or does not
    /// verify with `signer`'s public key ([`AuditError::KeyMismatch`]): appending to it would
    /// make it unverifiable. Only the tail is checked; [`verify`](super::verify) checks the rest.
    ///
    /// One `AuditLog` per file: two writers on one file would break the chain.
    pub fn open(
        path: &Path,
        log_id: [u8; 16],
        signer: Arc<dyn CheckpointSigner>,
    ) -> Result<AuditLog, AuditError> {
        let io_error = |what: &str| {
            let context = format!("{what} {}", path.display());
            move |source| AuditError::Io { context, source }
        };
        let mut options = OpenOptions::new();
        options.read(true).append(true).create(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let existed = path.exists();
        let file = options.open(path).map_err(io_error("opening"))?;
        if !existed {
            sync_parent_dir(path).map_err(io_error("syncing the directory of"))?;
        }
        let verifying_key = VerifyingKey::from(signer.public_key());
        check_signer(&log_id, signer.as_ref(), &verifying_key)?;
        let chain = Chain {
            file: &file,
            log_id,
            signer: signer.as_ref(),
            verifying_key: &verifying_key,
        };
        let tail = chain.recover(path).map_err(|e| match e {
            Recovery::Io(what, source) => io_error(what)(source),
            Recovery::Audit(e) => e,
        })?;
        Ok(AuditLog {
            path: path.to_owned(),
            queue: Mutex::new(Queue::default()),
            writer: Mutex::new(Writer {
                path: path.to_owned(),
                file,
                tail,
                log_id,
                signer,
            }),
            failure: OnceLock::new(),
        })
    }

    /// The file this log writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the log has failed for good (a write or sync failed): every later event is
    /// refused until kmsd restarts.
    pub fn is_failed(&self) -> bool {
        self.failure.get().is_some()
    }

    /// Queues the event and returns, unless no commit is running: then this thread commits it,
    /// and whatever others queue meanwhile, before returning. `done` runs on the committing
    /// thread once the event is durable and covered by a signed checkpoint (`Ok(seq)`), or with
    /// the error that stopped it; if the log has already failed, at once, with
    /// [`AuditError::Failed`]. So call it where blocking on a write and a sync is fine (not on
    /// an async worker), and keep `done` short: it holds up the next batch.
    pub fn submit(&self, event: AuditEvent, done: Box<dyn FnOnce(Result<u64, AuditError>) + Send>) {
        if let Some(cause) = self.failure.get() {
            done(Err(AuditError::Failed(Arc::clone(cause))));
            return;
        }
        {
            let mut queue = self.lock_queue();
            queue.jobs.push_back(Job { event, done });
            if queue.leading {
                return;
            }
            queue.leading = true;
        }
        self.lead();
    }

    /// Submits the event and waits until it is durable: the blocking form of
    /// [`AuditLog::submit`]. Returns the event's seq.
    pub fn append(&self, event: AuditEvent) -> Result<u64, AuditError> {
        let (sender, receiver) = mpsc::sync_channel(1);
        self.submit(
            event,
            Box::new(move |result| {
                // The receiver waits below; if it is gone there is nobody left to tell.
                let _ = sender.send(result);
            }),
        );
        receiver
            .recv()
            .unwrap_or_else(|_| Err(self.stopped_error()))
    }

    /// Closes the log. Every event submitted so far is already durable (a submit returns only
    /// once its event is committed or queued behind a running commit, and nobody can close the
    /// log while another thread uses it). Returns the failure that stopped the log, if one did.
    pub fn close(self) -> Result<(), AuditError> {
        match self.failure.get() {
            Some(cause) => Err(AuditError::Failed(Arc::clone(cause))),
            None => Ok(()),
        }
    }

    /// Commits batches until the queue is empty, then steps down.
    fn lead(&self) {
        let _step_down = StepDown(&self.queue);
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let batch: Vec<Job> = {
                let mut queue = self.lock_queue();
                if queue.jobs.is_empty() {
                    queue.leading = false;
                    return;
                }
                let n = queue.jobs.len().min(MAX_BATCH);
                queue.jobs.drain(..n).collect()
            };
            writer.commit(batch, &self.failure);
        }
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stopped_error(&self) -> AuditError {
        self.failure.get().map_or(AuditError::Closed, |cause| {
            AuditError::Failed(Arc::clone(cause))
        })
    }
}

/// Hands leadership back if a completion callback panics in the middle of a commit, so the
/// next submitter leads and the queue does not stall. (A normal step-down happens under the
/// queue's lock, once the queue is empty.)
struct StepDown<'a>(&'a Mutex<Queue>);

impl Drop for StepDown<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .leading = false;
        }
    }
}

/// The end of the chain: the last seq written and the hash of the last line.
#[derive(Clone, Copy, Debug)]
struct Tail {
    seq: u64,
    prev: [u8; 32],
}

/// The file and the chain's end: what a commit changes.
struct Writer {
    path: PathBuf,
    file: File,
    tail: Tail,
    log_id: [u8; 16],
    signer: Arc<dyn CheckpointSigner>,
}

impl Writer {
    /// Commits one batch and runs its callbacks. A batch that cannot be encoded or signed (the
    /// HSM failed) writes nothing: its events fail and later batches are tried again, so kmsd
    /// recovers when the HSM does. A failed write or sync leaves the file in an unknown state:
    /// then `failure` is set and every event fails, now and later.
    fn commit(&mut self, batch: Vec<Job>, failure: &OnceLock<Arc<AuditError>>) {
        if let Some(cause) = failure.get() {
            fail(batch, cause);
            return;
        }
        let events: Vec<&AuditEvent> = batch.iter().map(|job| &job.event).collect();
        let encoded = encode_batch(self.tail, &events, &self.log_id, self.signer.as_ref());
        let (bytes, tail) = match encoded {
            Ok(encoded) => encoded,
            Err(error) => {
                tracing::error!(error = %error,
                    "an audit batch could not be signed; its calls fail, later ones are tried again");
                fail(batch, &Arc::new(error));
                return;
            }
        };
        if let Err(error) = write_durably(&mut self.file, &bytes, &self.path) {
            tracing::error!(error = %error, "the audit log failed; refusing every further event");
            // Only the leader sets it, so this is the first and only time.
            fail(batch, failure.get_or_init(|| Arc::new(error)));
            return;
        }
        let first_seq = self.tail.seq;
        self.tail = tail;
        for (seq, job) in (first_seq + 1..).zip(batch) {
            (job.done)(Ok(seq));
        }
    }
}

/// Tells every event of `batch` that it was not committed, because of `cause`.
fn fail(batch: Vec<Job>, cause: &Arc<AuditError>) {
    for job in batch {
        (job.done)(Err(AuditError::Failed(Arc::clone(cause))));
    }
}

/// Appends `bytes` and syncs the data to disk.
fn write_durably(file: &mut File, bytes: &[u8], path: &Path) -> Result<(), AuditError> {
    file.write_all(bytes).map_err(|source| AuditError::Io {
        context: format!("appending to {}", path.display()),
        source,
    })?;
    file.sync_data().map_err(|source| AuditError::Io {
        context: format!("syncing {}", path.display()),
        source,
    })
}

/// Encodes `events` after `tail`, then one checkpoint signed over the new head. Returns the
/// bytes to append ('\n'-terminated lines) and the new tail. With no events, just a checkpoint.
fn encode_batch(
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

/// Has the checkpoint signed, normalises the signature to low-S (so the line has one valid
/// form), and checks it with the public key the verifier will use.
fn sign_checkpoint(
    log_id: &[u8; 16],
    seq: u64,
    prev: &[u8; 32],
    signer: &dyn CheckpointSigner,
) -> Result<[u8; 64], AuditError> {
    let message = checkpoint_message(log_id, seq, prev);
    Ok(sign_low_s(&message, signer)?.to_bytes().into())
}

/// The signer's signature of `message`, with `s` normalised to the low half.
fn sign_low_s(message: &[u8], signer: &dyn CheckpointSigner) -> Result<Signature, AuditError> {
    let raw = signer.sign(message).map_err(AuditError::Sign)?;
    let signature = Signature::from_slice(&raw).map_err(|_| AuditError::BadSignature)?;
    Ok(signature.normalize_s().unwrap_or(signature))
}

/// Refuses, at open, a signer whose signatures do not verify with the public key it gives
/// verifiers. Checked once: verifying every checkpoint in software cost more CPU than the
/// rest of a request (issue 6's profile); `kmsctl audit verify` checks them all offline.
fn check_signer(
    log_id: &[u8; 16],
    signer: &dyn CheckpointSigner,
    verifying_key: &VerifyingKey,
) -> Result<(), AuditError> {
    let mut message = b"kms audit signer self-test ".to_vec();
    message.extend_from_slice(log_id);
    let signature = sign_low_s(&message, signer)?;
    verifying_key
        .verify(&message, &signature)
        .map_err(|_| AuditError::BadSignature)
}

/// Why recovery failed: an I/O error (with what was being done) or a refusal.
enum Recovery {
    Io(&'static str, io::Error),
    Audit(AuditError),
}

impl From<AuditError> for Recovery {
    fn from(error: AuditError) -> Self {
        Recovery::Audit(error)
    }
}

/// What recovery needs: the file, and how to check and sign checkpoints.
struct Chain<'a> {
    file: &'a File,
    log_id: [u8; 16],
    signer: &'a dyn CheckpointSigner,
    verifying_key: &'a VerifyingKey,
}

impl Chain<'_> {
    /// Cuts a torn last line, reads the tail of the chain, checks the last checkpoint, and
    /// appends a checkpoint if the last line is an event.
    fn recover(&self, path: &Path) -> Result<Tail, Recovery> {
        let file = self.file;
        let mut len = file
            .metadata()
            .map_err(|e| Recovery::Io("reading the size of", e))?
            .len();
        if len > 0 && read_at(file, len - 1, 1).map_err(|e| Recovery::Io("reading", e))? != b"\n" {
            let start = line_start(file, len).map_err(|e| Recovery::Io("reading", e))?;
            tracing::warn!(
                path = %path.display(),
                offset = start,
                bytes = len - start,
                "the audit log ends in a torn line, which was never acknowledged; truncating it"
            );
            file.set_len(start)
                .and_then(|()| file.sync_data())
                .map_err(|e| Recovery::Io("truncating the torn last line of", e))?;
            len = start;
        }
        if len == 0 {
            return Ok(Tail {
                seq: 0,
                prev: GENESIS_PREV,
            });
        }

        let mut lines = BackwardLines { file, end: len };
        let (offset, bytes) = lines
            .next()
            .map_err(|e| Recovery::Io("reading", e))?
            .ok_or(AuditError::Corrupt {
                offset: 0,
                message: "no complete line".to_owned(),
            })?;
        let last = parse_line(&bytes).map_err(|message| AuditError::Corrupt { offset, message })?;
        let tail = Tail {
            seq: last.seq(),
            prev: line_hash(&bytes),
        };
        if matches!(last, Line::Checkpoint { .. }) {
            self.check_checkpoint(offset, &last)?;
            return Ok(tail);
        }

        // The batch's checkpoint was torn off. Check the last checkpoint before it, if any,
        // then sign the events that made it to disk.
        while let Some((offset, bytes)) = lines.next().map_err(|e| Recovery::Io("reading", e))? {
            if let Ok(line @ Line::Checkpoint { .. }) = parse_line(&bytes) {
                self.check_checkpoint(offset, &line)?;
                break;
            }
        }
        tracing::warn!(
            path = %path.display(),
            seq = tail.seq,
            "the audit log ends in events without their checkpoint; signing them now"
        );
        let (bytes, tail) = encode_batch(tail, &[], &self.log_id, self.signer)?;
        let mut writer = self.file;
        writer
            .write_all(&bytes)
            .and_then(|()| writer.sync_data())
            .map_err(|e| Recovery::Io("appending the recovery checkpoint to", e))?;
        Ok(tail)
    }

    /// Refuses a checkpoint of another log or another signing key.
    fn check_checkpoint(&self, offset: u64, line: &Line) -> Result<(), AuditError> {
        let Line::Checkpoint {
            seq,
            prev,
            log_id,
            signature,
        } = line
        else {
            return Ok(());
        };
        if *log_id != self.log_id {
            return Err(AuditError::LogIdMismatch {
                offset,
                expected: hex::encode(self.log_id),
                found: hex::encode(log_id),
            });
        }
        let verified = Signature::from_slice(signature).is_ok_and(|signature| {
            self.verifying_key
                .verify(&checkpoint_message(log_id, *seq, prev), &signature)
                .is_ok()
        });
        if verified {
            Ok(())
        } else {
            Err(AuditError::KeyMismatch { offset })
        }
    }
}

/// The lines of a file from the last to the first, each with its offset, without its '\n'.
struct BackwardLines<'a> {
    file: &'a File,
    /// The end of the next line to return, just past its '\n'.
    end: u64,
}

impl BackwardLines<'_> {
    fn next(&mut self) -> io::Result<Option<(u64, Vec<u8>)>> {
        if self.end == 0 {
            return Ok(None);
        }
        let line_end = self.end - 1;
        let start = line_start(self.file, line_end)?;
        let len = usize::try_from(line_end - start)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "line too long"))?;
        let bytes = read_at(self.file, start, len)?;
        self.end = start;
        Ok(Some((start, bytes)))
    }
}

/// The offset just past the last '\n' before `end`, or 0 if there is none.
fn line_start(file: &File, end: u64) -> io::Result<u64> {
    let mut pos = end;
    while pos > 0 {
        let chunk_start = pos.saturating_sub(CHUNK as u64);
        // At most CHUNK bytes, so it fits in usize.
        let len = usize::try_from(pos - chunk_start).unwrap_or(CHUNK);
        let chunk = read_at(file, chunk_start, len)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(chunk_start + i as u64 + 1);
        }
        pos = chunk_start;
    }
    Ok(0)
}

/// `len` bytes of `file` from `offset`.
fn read_at(mut file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0; len];
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Makes the new file's directory entry durable.
fn sync_parent_dir(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::audit::{AuditKey, Outcome, verify};
    use crate::testing::SoftCheckpointSigner;

    pub(crate) const LOG_ID: [u8; 16] = [0x5a; 16];

    pub(crate) fn event(n: u64) -> AuditEvent {
        let mut event = AuditEvent::new(
            1_795_428_000_000 + i64::try_from(n).unwrap(),
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
    pub(crate) fn build_log(signer: &SoftCheckpointSigner, batches: &[u64]) -> Vec<u8> {
        let batches: Vec<([u8; 16], u64)> = batches.iter().map(|&size| (LOG_ID, size)).collect();
        build_log_with(signer, &batches)
    }

    /// A log of events in batches of the given sizes, each checkpoint with the given log id.
    pub(crate) fn build_log_with(
        signer: &SoftCheckpointSigner,
        batches: &[([u8; 16], u64)],
    ) -> Vec<u8> {
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
            let (bytes, next) = encode_batch(tail, &refs, log_id, signer).unwrap();
            log.extend_from_slice(&bytes);
            tail = next;
        }
        log
    }

    fn open(path: &Path, signer: &Arc<SoftCheckpointSigner>) -> AuditLog {
        AuditLog::open(
            path,
            LOG_ID,
            Arc::clone(signer) as Arc<dyn CheckpointSigner>,
        )
        .unwrap()
    }

    #[test]
    fn audit_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let signer = Arc::new(SoftCheckpointSigner::new());
        let log = open(&path, &signer);
        let seqs: Vec<u64> = (0..5).map(|n| log.append(event(n)).unwrap()).collect();
        // One event per batch when appending one at a time: event, checkpoint, event, ...
        assert_eq!(seqs, [1, 3, 5, 7, 9]);
        log.close().unwrap();

        let bytes = std::fs::read(&path).unwrap();
        let report = verify(&bytes, &signer.public_key()).unwrap();
        assert_eq!(
            (
                report.records,
                report.checkpoints,
                report.last_seq,
                report.log_id
            ),
            (5, 5, 10, Some(LOG_ID))
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn audit_group_commit_signs_each_batch_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let signer = Arc::new(SoftCheckpointSigner::new());
        let log = open(&path, &signer);
        let (sender, receiver) = mpsc::channel();
        for n in 0..50 {
            let sender = sender.clone();
            log.submit(event(n), Box::new(move |r| sender.send(r).unwrap()));
        }
        let mut seqs: Vec<u64> = (0..50).map(|_| receiver.recv().unwrap().unwrap()).collect();
        log.close().unwrap();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs.len(), 50);

        let report = verify(&std::fs::read(&path).unwrap(), &signer.public_key()).unwrap();
        assert_eq!(report.records, 50);
        assert!(report.checkpoints >= 1 && report.checkpoints <= 50);
        assert_eq!(report.last_seq, 50 + report.checkpoints);
    }

    #[test]
    fn audit_a_lone_submit_commits_on_the_callers_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let signer = Arc::new(SoftCheckpointSigner::new());
        let log = open(&path, &signer);
        let done_on = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&done_on);
        log.submit(
            event(0),
            Box::new(move |r| {
                *slot.lock().unwrap() = Some((r.unwrap(), std::thread::current().id()));
            }),
        );
        // No hand-off to another thread: when submit returns, the record is on disk.
        assert_eq!(
            *done_on.lock().unwrap(),
            Some((1, std::thread::current().id()))
        );
        let report = verify(&std::fs::read(&path).unwrap(), &signer.public_key()).unwrap();
        assert_eq!((report.records, report.checkpoints), (1, 1));
    }

    #[test]
    fn audit_a_panicking_callback_does_not_stall_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let signer = Arc::new(SoftCheckpointSigner::new());
        let log = Arc::new(open(&path, &signer));
        let panicking = Arc::clone(&log);
        let joined = std::thread::spawn(move || {
            panicking.submit(event(0), Box::new(|_| panic!("a callback panicked")));
        })
        .join();
        assert!(joined.is_err());
        // The leader stepped down: the next submitter leads, after the committed record.
        let (sender, receiver) = mpsc::channel();
        log.submit(event(1), Box::new(move |r| sender.send(r).unwrap()));
        let seq = receiver.recv_timeout(std::time::Duration::from_secs(10));
        assert_eq!(seq.unwrap().unwrap(), 3);
    }

    #[test]
    fn audit_reopen_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let signer = Arc::new(SoftCheckpointSigner::new());
        let log = open(&path, &signer);
        assert_eq!(log.append(event(0)).unwrap(), 1);
        assert_eq!(log.append(event(1)).unwrap(), 3);
        log.close().unwrap();

        let log = open(&path, &signer);
        assert_eq!(log.append(event(2)).unwrap(), 5);
        drop(log); // Dropping stops the writer too.

        let log = open(&path, &signer);
        assert_eq!(log.append(event(3)).unwrap(), 7);
        log.close().unwrap();

        let report = verify(&std::fs::read(&path).unwrap(), &signer.public_key()).unwrap();
        assert_eq!(
            (report.records, report.checkpoints, report.last_seq),
            (4, 4, 8)
        );
    }

    #[test]
    fn audit_torn_last_line_is_truncated_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let signer = Arc::new(SoftCheckpointSigner::new());
        let log = open(&path, &signer);
        log.append(event(0)).unwrap();
        log.append(event(1)).unwrap();
        log.close().unwrap();
        let good = std::fs::read(&path).unwrap();

        // A batch torn in its second line: one whole event, then half of the next.
        let mut torn = good.clone();
        let line = encode_event(5, &line_hash(last_line(&good)), &event(2)).unwrap();
        torn.extend_from_slice(&line);
        torn.push(b'\n');
        let next = encode_event(6, &line_hash(&line), &event(3)).unwrap();
        torn.extend_from_slice(&next[..next.len() / 2]);
        std::fs::write(&path, &torn).unwrap();

        // The torn line goes, and the surviving event gets its checkpoint.
        let log = open(&path, &signer);
        assert_eq!(log.append(event(4)).unwrap(), 7);
        log.close().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(&good));
        let report = verify(&bytes, &signer.public_key()).unwrap();
        assert_eq!(
            (report.records, report.checkpoints, report.last_seq),
            (4, 4, 8)
        );

        // A tear right after a checkpoint's '\n' plus garbage without one: only the garbage goes.
        let mut torn = bytes.clone();
        torn.extend_from_slice(&[0; 100]);
        std::fs::write(&path, &torn).unwrap();
        open(&path, &signer).close().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    fn last_line(bytes: &[u8]) -> &[u8] {
        let body = &bytes[..bytes.len() - 1];
        let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        &body[start..]
    }

    #[test]
    fn audit_open_refuses_foreign_or_corrupt_logs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let signer = Arc::new(SoftCheckpointSigner::new());
        std::fs::write(&path, build_log(&signer, &[2, 1])).unwrap();
        open(&path, &signer).close().unwrap();

        let other_signer = Arc::new(SoftCheckpointSigner::new());
        let error = AuditLog::open(&path, LOG_ID, other_signer).unwrap_err();
        assert!(matches!(error, AuditError::KeyMismatch { .. }), "{error}");

        let error = AuditLog::open(&path, [1; 16], signer.clone()).unwrap_err();
        assert!(matches!(error, AuditError::LogIdMismatch { .. }), "{error}");

        let mut bytes = std::fs::read(&path).unwrap();
        let len = bytes.len();
        bytes.extend_from_slice(b"not json\n");
        std::fs::write(&path, &bytes).unwrap();
        match AuditLog::open(&path, LOG_ID, signer.clone()).unwrap_err() {
            AuditError::Corrupt { offset, .. } => assert_eq!(offset, len as u64),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn audit_open_checks_the_checkpoint_before_trailing_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let signer = Arc::new(SoftCheckpointSigner::new());
        let mut bytes = build_log(&signer, &[2]);
        let line = encode_event(4, &line_hash(last_line(&bytes)), &event(9)).unwrap();
        bytes.extend_from_slice(&line);
        bytes.push(b'\n');
        std::fs::write(&path, &bytes).unwrap();
        let error = AuditLog::open(&path, [1; 16], signer.clone()).unwrap_err();
        assert!(matches!(error, AuditError::LogIdMismatch { .. }), "{error}");
        // The file was left alone.
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn audit_fails_the_calls_of_a_signer_failure_and_recovers_with_the_signer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let signer = Arc::new(SoftCheckpointSigner::new());
        let log = open(&path, &signer);
        assert_eq!(log.append(event(0)).unwrap(), 1);
        signer.set_failing(true);
        let error = log.append(event(1)).unwrap_err();
        let AuditError::Failed(cause) = &error else {
            panic!("{error}")
        };
        assert!(matches!(**cause, AuditError::Sign(_)), "{cause}");
        let (sender, receiver) = mpsc::channel();
        log.submit(event(2), Box::new(move |r| sender.send(r).unwrap()));
        assert!(matches!(
            receiver.recv().unwrap(),
            Err(AuditError::Failed(_))
        ));
        // The signer works again: so does the log, right after the last committed record.
        signer.set_failing(false);
        assert_eq!(log.append(event(3)).unwrap(), 3);
        log.close().unwrap();

        // Nothing unacknowledged was written: the log verifies, with the two committed records.
        let report = verify(&std::fs::read(&path).unwrap(), &signer.public_key()).unwrap();
        assert_eq!((report.records, report.checkpoints), (2, 2));
    }

    #[test]
    fn audit_refuses_a_signer_whose_signatures_do_not_verify() {
        struct Liar(SoftCheckpointSigner, SoftCheckpointSigner);
        impl CheckpointSigner for Liar {
            fn sign(&self, message: &[u8]) -> Result<[u8; 64], crate::hsm::HsmError> {
                self.0.sign(message)
            }
            fn public_key(&self) -> p256::PublicKey {
                self.1.public_key()
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let liar = Liar(SoftCheckpointSigner::new(), SoftCheckpointSigner::new());
        let Err(error) = AuditLog::open(&path, LOG_ID, Arc::new(liar)) else {
            panic!("a signer whose signatures do not verify is accepted at open");
        };
        assert!(matches!(error, AuditError::BadSignature), "{error}");
        assert!(std::fs::read(&path).unwrap().is_empty());
    }

    #[test]
    fn audit_concurrent_appends_are_all_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let signer = Arc::new(SoftCheckpointSigner::new());
        let log = Arc::new(open(&path, &signer));
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    (0..200)
                        .map(|n| log.append(event(t * 1000 + n)).unwrap())
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        let seqs: HashSet<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(seqs.len(), 1600);
        Arc::into_inner(log).unwrap().close().unwrap();

        let bytes = std::fs::read(&path).unwrap();
        let report = verify(&bytes, &signer.public_key()).unwrap();
        assert_eq!(report.records, 1600);
        assert_eq!(report.last_seq, 1600 + report.checkpoints);
        // Each acknowledged seq is an event line.
        let event_seqs: HashSet<u64> = crate::audit::read_events(&bytes)
            .map(|r| r.unwrap().1.seq)
            .collect();
        assert_eq!(event_seqs, seqs);
    }
}
