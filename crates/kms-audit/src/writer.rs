//! [`AuditLog`]: opens the file, recovers its tail, and appends in group commits.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use kms_core::MetadataStore;
use kms_core::audit::{
    AuditError, AuditEvent, AuditSink, CheckpointSigner, SealPin, Tail, check_signer, encode_batch,
};

use crate::recovery::{Chain, Recovery, sync_parent_dir};

/// The most events one group commit takes.
pub const MAX_BATCH: usize = 1024;

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
    /// Recovers the tail without ever signing what kmsd did not write. A record is
    /// acknowledged only once its batch's checkpoint is on disk, so whatever follows the last
    /// checkpoint (a batch torn by a crash, or lines someone else wrote) was never
    /// acknowledged: it is moved to a quarantine file beside the log
    /// (`<log>.quarantine-<unix ms>`, named in a warning) and the log is cut after the
    /// checkpoint. The chain goes on from that checkpoint (read from the end of the file,
    /// never the whole file).
    ///
    /// Refuses a non-empty file with no valid checkpoint ([`AuditError::Unsealed`]); a last
    /// checkpoint that carries another `log_id` ([`AuditError::LogIdMismatch`]) or does not
    /// verify with `signer`'s public key ([`AuditError::KeyMismatch`]); and a file that ends
    /// before, or differs at, the checkpoint `pins` holds for `log_id`
    /// ([`AuditError::RolledBack`], [`AuditError::PinMismatch`]). Every later seal is pinned
    /// there. Only the tail is checked; [`verify`](kms_core::audit::verify) checks the rest.
    ///
    /// One `AuditLog` per file: two writers on one file would break the chain.
    pub fn open(
        path: &Path,
        log_id: [u8; 16],
        signer: Arc<dyn CheckpointSigner>,
        pins: Arc<dyn MetadataStore>,
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
        let public_key = signer.public_key();
        check_signer(&log_id, signer.as_ref(), &public_key)?;
        let chain = Chain {
            file: &file,
            log_id,
            public_key: &public_key,
        };
        let pin = pins.audit_pin(log_id).map_err(AuditError::Pin)?;
        let sealed = chain.recover(path, pin).map_err(|e| match e {
            Recovery::Io(what, source) => io_error(what)(source),
            Recovery::Audit(e) => e,
        })?;
        let writer = Writer {
            path: path.to_owned(),
            file,
            tail: Tail {
                seq: sealed.seq,
                prev: sealed.prev,
            },
            log_id,
            signer,
            pins,
            len: sealed.end,
        };
        if Some(sealed.pin()) != pin && sealed.seq > 0 {
            writer.pin().map_err(AuditError::Pin)?;
        }
        Ok(AuditLog {
            path: path.to_owned(),
            queue: Mutex::new(Queue::default()),
            writer: Mutex::new(writer),
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

/// The file and the chain's end: what a commit changes.
struct Writer {
    path: PathBuf,
    file: File,
    tail: Tail,
    log_id: [u8; 16],
    signer: Arc<dyn CheckpointSigner>,
    /// Where the last seal is pinned.
    pins: Arc<dyn MetadataStore>,
    /// The file's length: just past the last checkpoint.
    len: u64,
}

impl Writer {
    /// Cuts the file back to its last checkpoint, durably.
    fn cut_back(&self) -> io::Result<()> {
        self.file.set_len(self.len)?;
        self.file.sync_data()
    }

    /// Pins the tail, a checkpoint already on disk, in the metadata store.
    fn pin(&self) -> Result<(), kms_core::StoreError> {
        self.pins.put_audit_pin(
            self.log_id,
            SealPin {
                seq: self.tail.seq,
                hash: self.tail.prev,
                end: self.len,
            },
        )
    }

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
            // A full disk, most often. Cut what part of the batch reached the file, so the
            // log ends at its last checkpoint again: then only this batch fails, and the log
            // recovers by itself once writes work again. If even that fails, the file's state
            // is unknown and the log fails for good.
            match self.cut_back() {
                Ok(()) => {
                    tracing::error!(error = %kms_core::error::chain(&error),
                        "an audit batch could not be written (is the disk full?); its calls \
                         fail, later ones are tried again");
                    fail(batch, &Arc::new(error));
                }
                Err(cut) => {
                    tracing::error!(error = %kms_core::error::chain(&error), cut = %cut,
                        "the audit log failed and could not be cut back; refusing every \
                         further event until kmsd restarts");
                    // Only the leader sets it, so this is the first and only time.
                    fail(batch, failure.get_or_init(|| Arc::new(error)));
                }
            }
            return;
        }
        self.len += bytes.len() as u64;
        let first_seq = self.tail.seq;
        self.tail = tail;
        // Unpinned, the batch could be cut off the log unnoticed: its calls fail, as when it
        // cannot be written (their records stay in the log, sealed).
        if let Err(error) = self.pin() {
            tracing::error!(error = %kms_core::error::chain(&error),
                "an audit batch could not be pinned in the metadata store; its calls fail");
            fail(batch, &Arc::new(AuditError::Pin(error)));
            return;
        }
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

impl AuditSink for AuditLog {
    fn submit(&self, event: AuditEvent, done: Box<dyn FnOnce(Result<u64, AuditError>) + Send>) {
        AuditLog::submit(self, event, done);
    }

    fn is_failed(&self) -> bool {
        AuditLog::is_failed(self)
    }
}

#[cfg(test)]
mod tests;
