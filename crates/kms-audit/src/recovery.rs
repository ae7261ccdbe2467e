//! Opening an audit log: where its sealed chain ends, and what follows it.
//!
//! The chain is read forward from a trusted start: the checkpoint the metadata store pins (or,
//! with no pin, the start of the file), checking every `seq`, every `prev` and every
//! checkpoint's signature. Where the chain ends at its last valid checkpoint, whatever follows
//! was never acknowledged (a batch torn by a crash, or lines someone else wrote): it goes to a
//! quarantine file and is never signed. A break in the chain *before* a validly signed
//! checkpoint means sealed history was altered (or a genuine checkpoint copied after forged
//! lines): the log is refused, never cut.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use kms_core::audit::line::{Line, line_hash, parse_line};
use kms_core::audit::{AuditError, AuditPublicKey, GENESIS_PREV, SealPin, checkpoint_message};

/// How far back [`line_start`] reads at a time.
const CHUNK: usize = 8192;

/// The end of the sealed chain: the last seq, the hash of its line (a checkpoint's), and the
/// file offset just past it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sealed {
    pub(crate) seq: u64,
    pub(crate) prev: [u8; 32],
    pub(crate) end: u64,
}

impl Sealed {
    const GENESIS: Sealed = Sealed {
        seq: 0,
        prev: GENESIS_PREV,
        end: 0,
    };

    /// The pin of this end.
    pub(crate) fn pin(self) -> SealPin {
        SealPin {
            seq: self.seq,
            hash: self.prev,
            end: self.end,
        }
    }
}

/// Why recovery failed: an I/O error (with what was being done) or a refusal.
pub(crate) enum Recovery {
    Io(&'static str, io::Error),
    Audit(AuditError),
}

impl From<AuditError> for Recovery {
    fn from(error: AuditError) -> Self {
        Recovery::Audit(error)
    }
}

fn io(what: &'static str) -> impl FnOnce(io::Error) -> Recovery {
    move |e| Recovery::Io(what, e)
}

/// What recovery needs: the file, and how to check checkpoints.
pub(crate) struct Chain<'a> {
    pub(crate) file: &'a File,
    pub(crate) log_id: [u8; 16],
    pub(crate) public_key: &'a AuditPublicKey,
}

impl Chain<'_> {
    /// Reads the chain forward from the pinned checkpoint (or the start of the file), moves
    /// what follows its last valid checkpoint to a quarantine file, and returns that end.
    pub(crate) fn recover(&self, path: &Path, pin: Option<SealPin>) -> Result<Sealed, Recovery> {
        let len = self
            .file
            .metadata()
            .map_err(io("reading the size of"))?
            .len();
        let start = match pin {
            Some(pin) => self.pinned(pin, len)?,
            None => Sealed::GENESIS,
        };
        let mut lines = ForwardLines::new(self.file, start.end)?;
        let mut sealed = start;
        let mut chain_seq = start.seq;
        let mut chain_prev = start.prev;
        // The first line that does not continue the chain, if any.
        let mut break_at = None;
        while let Some((offset, bytes)) = lines.next()? {
            let Ok(line) = parse_line(&bytes) else {
                break_at = Some((offset, bytes));
                break;
            };
            if line.seq() != chain_seq + 1 || *line.prev() != chain_prev {
                break_at = Some((offset, bytes));
                break;
            }
            chain_seq = line.seq();
            chain_prev = line_hash(&bytes);
            if matches!(line, Line::Checkpoint { .. }) {
                if let Err(refusal) = self.check_checkpoint(offset, &line) {
                    // The first checkpoint of a file decides whether it is this log, signed
                    // by this key at all; a later bad one is a break like any other.
                    if sealed.end == 0 {
                        return Err(refusal.into());
                    }
                    break_at = Some((offset, bytes));
                    break;
                }
                sealed = Sealed {
                    seq: chain_seq,
                    prev: chain_prev,
                    end: offset + bytes.len() as u64 + 1,
                };
            }
        }
        // A break with a signed checkpoint after it: sealed history was altered, or an old
        // checkpoint copied after forged lines (its seq is not past the chain's). Only past a
        // pin can a newer one be a crash's doing: the pages of a batch never synced (so never
        // acknowledged) reached the disk out of order.
        let signed_after = match &break_at {
            Some((offset, bytes)) => self
                .signed_seq(*offset, bytes)
                .max(self.last_signed_seq(&mut lines)?),
            None => None,
        };
        let torn = signed_after.is_some_and(|seq| pin.is_some() && seq > sealed.seq);
        if let (Some((offset, _)), Some(_)) = (&break_at, signed_after)
            && !torn
        {
            let offset = *offset;
            return Err(AuditError::Corrupt {
                offset,
                message: "the chain breaks here, before a checkpoint this service signed: \
                          the log was altered (or a checkpoint copied after other lines); \
                          find where with `kmsctl audit verify`"
                    .to_owned(),
            }
            .into());
        }
        if sealed.end == 0 && len > 0 {
            return Err(AuditError::Unsealed.into());
        }
        if sealed.end < len {
            self.quarantine(path, sealed.end, len)?;
        }
        Ok(sealed)
    }

    /// The pinned checkpoint, checked against the line that ends where the pin says.
    fn pinned(&self, pin: SealPin, len: u64) -> Result<Sealed, Recovery> {
        if pin.end > len || pin.end == 0 {
            return Err(AuditError::RolledBack {
                log_seq: self.last_seq(len)?,
                pinned_seq: pin.seq,
            }
            .into());
        }
        let line = line_ending_at(self.file, pin.end).map_err(io("reading"))?;
        let matches = line.as_ref().is_some_and(|line| {
            parse_line(line).is_ok_and(|l| l.seq() == pin.seq) && line_hash(line) == pin.hash
        });
        if !matches {
            return Err(AuditError::PinMismatch { seq: pin.seq }.into());
        }
        Ok(Sealed {
            seq: pin.seq,
            prev: pin.hash,
            end: pin.end,
        })
    }

    /// The seq of the last complete line, or 0.
    fn last_seq(&self, len: u64) -> Result<u64, Recovery> {
        let end = line_start(self.file, len).map_err(io("reading"))?;
        let line = line_ending_at(self.file, end).map_err(io("reading"))?;
        Ok(line
            .and_then(|line| parse_line(&line).ok())
            .map_or(0, |l| l.seq()))
    }

    /// The largest seq of the lines left in `lines` that are checkpoints of this log signed
    /// by this key, if any.
    fn last_signed_seq(&self, lines: &mut ForwardLines<'_>) -> Result<Option<u64>, Recovery> {
        let mut last = None;
        while let Some((offset, bytes)) = lines.next()? {
            last = last.max(self.signed_seq(offset, &bytes));
        }
        Ok(last)
    }

    /// The seq of `bytes` if it is a checkpoint of this log signed by this key.
    fn signed_seq(&self, offset: u64, bytes: &[u8]) -> Option<u64> {
        match parse_line(bytes) {
            Ok(line @ Line::Checkpoint { .. }) if self.check_checkpoint(offset, &line).is_ok() => {
                Some(line.seq())
            }
            _ => None,
        }
    }

    /// Copies the bytes `from..to` to a new quarantine file beside the log, syncs it, then cuts
    /// the log at `from`.
    fn quarantine(&self, path: &Path, from: u64, to: u64) -> Result<(), Recovery> {
        let len = usize::try_from(to - from).map_err(|_| {
            Recovery::Io(
                "quarantining the unsealed tail of",
                io::Error::new(io::ErrorKind::InvalidData, "tail too long"),
            )
        })?;
        let bytes = read_at(self.file, from, len).map_err(io("reading"))?;
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".quarantine-{millis}"));
        let quarantine = PathBuf::from(name);
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options
            .open(&quarantine)
            .and_then(|mut q| q.write_all(&bytes).and_then(|()| q.sync_all()))
            .and_then(|()| sync_parent_dir(&quarantine))
            .map_err(io("writing the quarantine file of"))?;
        self.file
            .set_len(from)
            .and_then(|()| self.file.sync_data())
            .map_err(io("cutting the unsealed tail of"))?;
        tracing::warn!(
            path = %path.display(),
            quarantine = %quarantine.display(),
            offset = from,
            bytes = len,
            "the audit log ends in lines after its last checkpoint, which were never \
             acknowledged (a crash mid-write, or lines kmsd did not write); moved them to the \
             quarantine file and never signed them"
        );
        Ok(())
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
        let verified = self
            .public_key
            .verify(&checkpoint_message(log_id, *seq, prev), signature);
        if verified.is_ok() {
            Ok(())
        } else {
            Err(AuditError::KeyMismatch { offset })
        }
    }
}

/// The complete lines of a file from an offset on, each with its offset, without its '\n'.
/// A last line without '\n' (torn) is not returned.
struct ForwardLines<'a> {
    reader: BufReader<&'a File>,
    offset: u64,
}

impl<'a> ForwardLines<'a> {
    fn new(file: &'a File, offset: u64) -> Result<Self, Recovery> {
        let mut reader = BufReader::new(file);
        reader
            .seek(SeekFrom::Start(offset))
            .map_err(io("reading"))?;
        Ok(ForwardLines { reader, offset })
    }

    fn next(&mut self) -> Result<Option<(u64, Vec<u8>)>, Recovery> {
        let mut bytes = Vec::new();
        let read = self
            .reader
            .read_until(b'\n', &mut bytes)
            .map_err(io("reading"))?;
        if read == 0 || bytes.last() != Some(&b'\n') {
            return Ok(None);
        }
        bytes.pop();
        let offset = self.offset;
        self.offset += read as u64;
        Ok(Some((offset, bytes)))
    }
}

/// The complete line whose '\n' ends just before `end`, without it; `None` when the byte
/// before `end` is not a '\n' (or `end` is 0).
fn line_ending_at(file: &File, end: u64) -> io::Result<Option<Vec<u8>>> {
    if end == 0 {
        return Ok(None);
    }
    let start = line_start(file, end - 1)?;
    let len = usize::try_from(end - start)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "line too long"))?;
    let mut bytes = read_at(file, start, len)?;
    Ok((bytes.pop() == Some(b'\n')).then_some(bytes))
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

/// Makes a new file's directory entry durable.
pub(crate) fn sync_parent_dir(path: &Path) -> io::Result<()> {
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
