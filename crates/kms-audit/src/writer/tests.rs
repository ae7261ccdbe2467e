//! Tests of the audit log writer: group commit, recovery, pins.

use std::collections::HashSet;

use super::*;
use kms_core::audit::line::{encode_event, line_hash};
use kms_core::audit::{GENESIS_PREV, verify};
use kms_core::testing::audit_logs::{LOG_ID, build_log, event};
use kms_core::testing::{MemoryStore, SoftCheckpointSigner};

/// A scratch directory (kept while it is held), the path of a log in it, and a signer.
fn scratch() -> (tempfile::TempDir, PathBuf, Arc<SoftCheckpointSigner>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    (dir, path, Arc::new(SoftCheckpointSigner::new()))
}

fn open(path: &Path, signer: &Arc<SoftCheckpointSigner>) -> AuditLog {
    open_pinned(path, signer, &Arc::new(MemoryStore::default())).unwrap()
}

/// Opens the log with `pins` as the metadata store that pins its seals.
fn open_pinned(
    path: &Path,
    signer: &Arc<SoftCheckpointSigner>,
    pins: &Arc<MemoryStore>,
) -> Result<AuditLog, AuditError> {
    AuditLog::open(
        path,
        LOG_ID,
        Arc::clone(signer) as Arc<dyn CheckpointSigner>,
        Arc::clone(pins) as Arc<dyn MetadataStore>,
    )
}

/// Opens with a new, empty metadata store, and `log_id`.
fn open_as(
    path: &Path,
    log_id: [u8; 16],
    signer: Arc<dyn CheckpointSigner>,
) -> Result<AuditLog, AuditError> {
    AuditLog::open(path, log_id, signer, Arc::new(MemoryStore::default()))
}

/// The files beside `path` whose names start with its name and `.quarantine-`.
fn quarantined(path: &Path) -> Vec<Vec<u8>> {
    let prefix = format!(
        "{}.quarantine-",
        path.file_name().unwrap().to_string_lossy()
    );
    let mut found = Vec::new();
    for entry in std::fs::read_dir(path.parent().unwrap()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            found.push(std::fs::read(entry.path()).unwrap());
        }
    }
    found
}

#[test]
fn audit_round_trip() {
    let (_dir, path, signer) = scratch();
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
fn audit_round_trip_with_an_rsa_pss_signer() {
    let (_dir, path, _) = scratch();
    let signer = Arc::new(SoftCheckpointSigner::rsa_pss().unwrap());
    let pins = Arc::new(MemoryStore::default());
    let log = open_pinned(&path, &signer, &pins).unwrap();
    for n in 0..3 {
        log.append(event(n)).unwrap();
    }
    log.close().unwrap();
    // Reopening checks the pinned checkpoint's RSA-PSS signature and appends after it.
    let log = open_pinned(&path, &signer, &pins).unwrap();
    log.append(event(3)).unwrap();
    log.close().unwrap();

    let bytes = std::fs::read(&path).unwrap();
    let report = verify(&bytes, &signer.public_key()).unwrap();
    assert_eq!((report.records, report.checkpoints), (4, 4));
    // Another key's log is refused at open, as with ECDSA.
    let other: Arc<dyn CheckpointSigner> = Arc::new(SoftCheckpointSigner::rsa_pss().unwrap());
    assert!(matches!(
        open_as(&path, LOG_ID, other),
        Err(AuditError::KeyMismatch { .. })
    ));
}

#[test]
fn audit_group_commit_signs_each_batch_once() {
    let (_dir, path, signer) = scratch();
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
    let (_dir, path, signer) = scratch();
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
    let (_dir, path, signer) = scratch();
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
    let (_dir, path, signer) = scratch();
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
fn audit_a_torn_batch_is_quarantined_at_open_and_never_signed() {
    let (_dir, path, signer) = scratch();
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

    // The batch was never acknowledged: all of it goes to quarantine, unsigned, and the
    // chain goes on from the last checkpoint.
    let log = open(&path, &signer);
    assert_eq!(log.append(event(4)).unwrap(), 5);
    log.close().unwrap();
    assert_eq!(quarantined(&path), vec![torn[good.len()..].to_vec()]);
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.starts_with(&good));
    let report = verify(&bytes, &signer.public_key()).unwrap();
    assert_eq!(
        (report.records, report.checkpoints, report.last_seq),
        (3, 3, 6)
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
    let (dir, path, signer) = scratch();
    std::fs::write(&path, build_log(&signer, &[2, 1]).unwrap()).unwrap();
    open(&path, &signer).close().unwrap();

    let other_signer = Arc::new(SoftCheckpointSigner::new());
    let error = open_as(&path, LOG_ID, other_signer).unwrap_err();
    assert!(matches!(error, AuditError::KeyMismatch { .. }), "{error}");

    let error = open_as(&path, [1; 16], signer.clone()).unwrap_err();
    assert!(matches!(error, AuditError::LogIdMismatch { .. }), "{error}");

    // Lines without any checkpoint were never sealed by this service.
    let unsealed = dir.path().join("unsealed.log");
    let line = encode_event(1, &GENESIS_PREV, &event(0)).unwrap();
    std::fs::write(&unsealed, [line.as_slice(), b"\n"].concat()).unwrap();
    let error = open_as(&unsealed, LOG_ID, signer.clone()).unwrap_err();
    assert!(matches!(error, AuditError::Unsealed), "{error}");
    std::fs::write(&unsealed, b"not json\n").unwrap();
    let error = open_as(&unsealed, LOG_ID, signer.clone()).unwrap_err();
    assert!(matches!(error, AuditError::Unsealed), "{error}");
}

/// A log of two sealed batches of one event each, with its signer and the store that pins it.
struct Sealed {
    _dir: tempfile::TempDir,
    path: PathBuf,
    signer: Arc<SoftCheckpointSigner>,
    pins: Arc<MemoryStore>,
    bytes: Vec<u8>,
}

fn two_sealed_batches() -> Sealed {
    let (dir, path, signer) = scratch();
    let pins = Arc::new(MemoryStore::default());
    let log = open_pinned(&path, &signer, &pins).unwrap();
    log.append(event(0)).unwrap();
    log.append(event(1)).unwrap();
    log.close().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    Sealed {
        _dir: dir,
        path,
        signer,
        pins,
        bytes,
    }
}

/// The attack the outside review tried: rewrite the lines after the last checkpoint, kill
/// kmsd, and let the restart sign the forgery. The restart must quarantine them instead, so
/// the forged records never get a signature that `verify` accepts.
#[test]
fn audit_a_rewritten_tail_is_never_signed_at_restart() {
    let Sealed {
        _dir,
        path,
        signer,
        pins,
        bytes: sealed,
    } = two_sealed_batches();

    let mut forged_event = event(7);
    forged_event.principal = Some("spiffe://kms.test/someone-else".into());
    let forged = encode_event(5, &line_hash(last_line(&sealed)), &forged_event).unwrap();
    let mut tampered = sealed.clone();
    tampered.extend_from_slice(&forged);
    tampered.push(b'\n');
    tampered.extend_from_slice(b"not json either\n");
    std::fs::write(&path, &tampered).unwrap();

    let log = open_pinned(&path, &signer, &pins).unwrap();
    log.append(event(2)).unwrap();
    log.close().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.starts_with(&sealed));
    assert!(
        !bytes.windows(forged.len()).any(|w| w == forged.as_slice()),
        "the forged line is not in the log"
    );
    assert_eq!(quarantined(&path), vec![tampered[sealed.len()..].to_vec()]);
    let report = verify(&bytes, &signer.public_key()).unwrap();
    assert_eq!((report.records, report.last_seq), (3, 6));
}

/// The outside review's second try: forged lines chained from the last checkpoint, then a
/// byte-for-byte copy of that checkpoint, so the file again ends in a genuinely signed line.
/// The chain read forward from the pinned checkpoint breaks at the copy: the log is refused,
/// never signed on. Without a pin (a first start), the whole file is read, with the same end.
#[test]
fn audit_a_copied_checkpoint_after_forged_lines_is_refused() {
    let Sealed {
        _dir,
        path,
        signer,
        pins,
        bytes: sealed,
    } = two_sealed_batches();
    let checkpoint = last_line(&sealed).to_vec();

    let forged = encode_event(5, &line_hash(&checkpoint), &event(7)).unwrap();
    let mut tampered = sealed.clone();
    for line in [forged.as_slice(), checkpoint.as_slice()] {
        tampered.extend_from_slice(line);
        tampered.push(b'\n');
    }
    std::fs::write(&path, &tampered).unwrap();
    for pins in [pins, Arc::new(MemoryStore::default())] {
        match open_pinned(&path, &signer, &pins) {
            Err(AuditError::Corrupt { offset, .. }) => {
                assert_eq!(offset, (sealed.len() + forged.len() + 1) as u64);
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            tampered,
            "the file is left alone"
        );
        assert!(quarantined(&path).is_empty());
    }

    // An altered line in sealed history is refused too, and nothing is cut.
    let mut altered = sealed.clone();
    let at = altered.iter().position(|&b| b == b'a').unwrap();
    altered[at] = b'b';
    std::fs::write(&path, &altered).unwrap();
    assert!(matches!(
        open_pinned(&path, &signer, &Arc::new(MemoryStore::default())),
        Err(AuditError::Corrupt { .. })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), altered);
}

/// A crash before a batch is synced may leave its pages on disk out of order: a hole of
/// zeros among its events, and its signed checkpoint after. That batch was never
/// acknowledged: past the pinned checkpoint it is quarantined, not taken for tampering.
#[test]
fn audit_a_batch_torn_out_of_order_past_the_pin_is_quarantined() {
    let Sealed {
        _dir,
        path,
        signer,
        pins,
        bytes: sealed,
    } = two_sealed_batches();
    let pinned = pins.audit_pin(LOG_ID).unwrap();
    // A third batch of three events, written as the writer would, then holed.
    let log = open_pinned(&path, &signer, &pins).unwrap();
    let (sender, receiver) = mpsc::channel();
    for n in 2..5 {
        let sender = sender.clone();
        log.submit(event(n), Box::new(move |r| sender.send(r).unwrap()));
    }
    for _ in 2..5 {
        receiver.recv().unwrap().unwrap();
    }
    log.close().unwrap();
    let mut torn = std::fs::read(&path).unwrap();
    let hole = sealed.len() + 40;
    torn[hole..hole + 300].fill(0);
    std::fs::write(&path, &torn).unwrap();
    // The pin as it was before the batch (the write of the new pin was lost too).
    pins.put_audit_pin(LOG_ID, pinned.unwrap()).unwrap();

    open_pinned(&path, &signer, &pins).unwrap().close().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), sealed);
    assert_eq!(quarantined(&path), vec![torn[sealed.len()..].to_vec()]);
}

/// A batch whose seal cannot be pinned could be cut off the log unnoticed: its calls fail,
/// and the next batch that is pinned covers it.
#[test]
fn audit_a_batch_that_cannot_be_pinned_fails_its_calls() {
    let Sealed {
        _dir,
        path,
        signer,
        pins,
        bytes: _,
    } = two_sealed_batches();
    let log = open_pinned(&path, &signer, &pins).unwrap();
    pins.set_fail_pins(true);
    assert!(matches!(log.append(event(2)), Err(AuditError::Failed(_))));
    assert_eq!(pins.audit_pin(LOG_ID).unwrap().unwrap().seq, 4);
    pins.set_fail_pins(false);
    assert_eq!(log.append(event(3)).unwrap(), 7);
    assert_eq!(pins.audit_pin(LOG_ID).unwrap().unwrap().seq, 8);
    log.close().unwrap();
}

/// A log cut back to an earlier checkpoint, or replaced by another log of the same signer,
/// is refused: the metadata store pins the last seal.
#[test]
fn audit_open_refuses_a_log_behind_or_beside_its_pin() {
    let (_dir, path, signer) = scratch();
    let pins = Arc::new(MemoryStore::default());
    let log = open_pinned(&path, &signer, &pins).unwrap();
    log.append(event(0)).unwrap();
    let first_batch = std::fs::read(&path).unwrap();
    log.append(event(1)).unwrap();
    log.close().unwrap();
    let whole = std::fs::read(&path).unwrap();
    let earlier_pin = pins.audit_pin(LOG_ID).unwrap().unwrap();
    assert_eq!(earlier_pin.seq, 4, "every seal is pinned");

    std::fs::write(&path, &first_batch).unwrap();
    match open_pinned(&path, &signer, &pins) {
        Err(AuditError::RolledBack {
            log_seq: 2,
            pinned_seq: 4,
        }) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(
        open_pinned(&path, &signer, &pins),
        Err(AuditError::RolledBack { .. })
    ));

    // Another log of the same signer and log id, as long: refused at the pinned line.
    std::fs::write(&path, build_log(&signer, &[3]).unwrap()).unwrap();
    assert!(matches!(
        open_pinned(&path, &signer, &pins),
        Err(AuditError::PinMismatch { seq: 4 })
    ));

    // The real log opens, and so does the real log grown past the pin.
    std::fs::write(&path, &whole).unwrap();
    let log = open_pinned(&path, &signer, &pins).unwrap();
    log.append(event(2)).unwrap();
    log.close().unwrap();
    assert_eq!(pins.audit_pin(LOG_ID).unwrap().unwrap().seq, 6);
    pins.put_audit_pin(LOG_ID, earlier_pin).unwrap();
    open_pinned(&path, &signer, &pins).unwrap().close().unwrap();
}

#[test]
fn audit_open_checks_the_checkpoint_before_trailing_events() {
    let (_dir, path, signer) = scratch();
    let mut bytes = build_log(&signer, &[2]).unwrap();
    let line = encode_event(4, &line_hash(last_line(&bytes)), &event(9)).unwrap();
    bytes.extend_from_slice(&line);
    bytes.push(b'\n');
    std::fs::write(&path, &bytes).unwrap();
    let error = open_as(&path, [1; 16], signer.clone()).unwrap_err();
    assert!(matches!(error, AuditError::LogIdMismatch { .. }), "{error}");
    // The file was left alone.
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[test]
fn audit_fails_the_calls_of_a_signer_failure_and_recovers_with_the_signer() {
    let (_dir, path, signer) = scratch();
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
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, kms_core::HsmError> {
            self.0.sign(message)
        }
        fn public_key(&self) -> kms_core::audit::AuditPublicKey {
            self.1.public_key()
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let liar = Liar(SoftCheckpointSigner::new(), SoftCheckpointSigner::new());
    let Err(error) = open_as(&path, LOG_ID, Arc::new(liar)) else {
        panic!("a signer whose signatures do not verify is accepted at open");
    };
    assert!(matches!(error, AuditError::BadSignature), "{error}");
    assert!(std::fs::read(&path).unwrap().is_empty());
}

#[test]
fn audit_concurrent_appends_are_all_acknowledged() {
    let (_dir, path, signer) = scratch();
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
    let event_seqs: HashSet<u64> = kms_core::audit::read_events(&bytes)
        .map(|r| r.unwrap().1.seq)
        .collect();
    assert_eq!(event_seqs, seqs);
}
