//! SIGTERM under load: kmsd finishes what it took, refuses the rest with UNAVAILABLE, exits 0
//! within its drain limit, and every request it acknowledged is durable and audited.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kms_client::{KmsClient, v1 as pb};
use kms_e2e::{Kmsd, TestEnv, bin};
use tonic::{Code, Request, Status};

use crate::ctx;

/// Client tasks, each on its own connection.
const WORKERS: usize = 8;

/// Acknowledged requests before SIGTERM.
const LOAD: usize = 200;

/// kmsd's drain limit (`DRAIN_LIMIT` in crates/kms-server/src/main.rs), plus time to close
/// the audit log and the store on a loaded machine.
const EXIT_LIMIT: Duration = Duration::from_secs(10 + 5);

/// How many errors a client takes before it stops calling.
const ERRORS_PER_WORKER: usize = 3;

/// A request kmsd acknowledged.
enum Acked {
    Created {
        request_id: String,
        key_id: String,
    },
    Encrypted {
        request_id: String,
        plaintext: Vec<u8>,
        blob: Vec<u8>,
    },
}

impl Acked {
    fn request_id(&self) -> &str {
        match self {
            Acked::Created { request_id, .. } | Acked::Encrypted { request_id, .. } => request_id,
        }
    }

    fn operation(&self) -> &'static str {
        match self {
            Acked::Created { .. } => "CreateKey",
            Acked::Encrypted { .. } => "Encrypt",
        }
    }
}

/// What the clients saw.
#[derive(Default)]
struct Seen {
    acked: Vec<Acked>,
    /// Acknowledgements received after SIGTERM was sent.
    acked_after_sigterm: usize,
    /// (request id, code, message, whether SIGTERM had been sent).
    errors: Vec<(String, Code, String, bool)>,
}

/// A request carrying `request_id` in `x-request-id`, which kmsd audits and echoes.
fn with_id<T>(message: T, request_id: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-request-id", request_id.parse().unwrap());
    request
}

/// Checks that kmsd echoed `request_id` and returns the message.
fn echoed<T>(response: tonic::Response<T>, request_id: &str) -> T {
    assert_eq!(
        response
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some(request_id)
    );
    response.into_inner()
}

/// Alternates CreateKey and Encrypt of a unique plaintext under `key` until it has seen
/// [`ERRORS_PER_WORKER`] errors, recording every answer in `seen`.
async fn work(
    worker: usize,
    mut client: KmsClient,
    key: String,
    sigterm_sent: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) {
    let mut errors = 0;
    for i in 0u32.. {
        let request_id = format!("shutdown-w{worker}-{i}");
        let answer: Result<Acked, Status> = if i % 2 == 0 {
            let request = pb::CreateKeyRequest {
                description: format!("created by {request_id}"),
                ..Default::default()
            };
            client
                .raw()
                .create_key(with_id(request, &request_id))
                .await
                .map(|r| Acked::Created {
                    key_id: echoed(r, &request_id)
                        .key_metadata
                        .unwrap_or_default()
                        .key_id,
                    request_id: request_id.clone(),
                })
        } else {
            let plaintext = format!("plaintext of {request_id}").into_bytes();
            let request = pb::EncryptRequest {
                key_id: key.clone(),
                plaintext: plaintext.clone(),
                encryption_context: ctx(&[("test", "shutdown")]),
                ..Default::default()
            };
            client
                .raw()
                .encrypt(with_id(request, &request_id))
                .await
                .map(|r| Acked::Encrypted {
                    blob: echoed(r, &request_id).ciphertext_blob,
                    plaintext,
                    request_id: request_id.clone(),
                })
        };
        // Read the flag after the answer: an answer seen before SIGTERM was sent is counted
        // before it.
        let after_sigterm = sigterm_sent.load(Ordering::SeqCst);
        let mut seen = seen.lock().unwrap();
        match answer {
            Ok(acked) => {
                seen.acked.push(acked);
                seen.acked_after_sigterm += usize::from(after_sigterm);
            }
            Err(status) => {
                seen.errors.push((
                    request_id,
                    status.code(),
                    status.message().to_owned(),
                    after_sigterm,
                ));
                errors += 1;
                if errors == ERRORS_PER_WORKER {
                    return;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_loses_no_acknowledged_request() {
    let env = TestEnv::new().with_token_storage();
    let mut kmsd = env
        .start_with(&env.bulk_key_args(), &[])
        .unwrap_or_else(|log| panic!("kmsd did not start:\n{log}"));
    let key = kmsd
        .client()
        .await
        .create_key("encrypts during shutdown")
        .await
        .unwrap()
        .key_id;

    let sigterm_sent = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut tasks = Vec::new();
    for worker in 0..WORKERS {
        // One connection per client.
        let client = kmsd.client().await;
        tasks.push(tokio::spawn(work(
            worker,
            client,
            key.clone(),
            Arc::clone(&sigterm_sent),
            Arc::clone(&seen),
        )));
    }
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let s = seen.lock().unwrap();
        assert!(
            s.errors.is_empty(),
            "errors before SIGTERM: {:?}\n{}",
            s.errors,
            kmsd.log()
        );
        if s.acked.len() >= LOAD && started.elapsed() >= Duration::from_secs(1) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {} requests acknowledged in 60 s",
            s.acked.len()
        );
    }
    let before_sigterm = seen.lock().unwrap().acked.len();

    // SIGTERM while the clients keep calling; they stop after a few errors each.
    sigterm_sent.store(true, Ordering::SeqCst);
    let signalled = Instant::now();
    kmsd.sigterm();
    let status = tokio::task::block_in_place(|| kmsd.wait_exit(EXIT_LIMIT));
    let exit_after = signalled.elapsed();
    let log = kmsd.log();
    let status =
        status.unwrap_or_else(|| panic!("kmsd still runs {EXIT_LIMIT:?} after SIGTERM:\n{log}"));
    assert!(status.success(), "kmsd exited with {status}:\n{log}");
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("a client still calls 30 s after kmsd exited")
            .unwrap();
    }
    let seen = Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap();

    // The log: a clean stop, no panic, no error, and the drain did not need its limit.
    assert!(log.contains("shutting down: draining"), "{log}");
    assert!(log.contains("kmsd stopped"), "{log}");
    assert!(!log.contains("panicked"), "kmsd panicked:\n{log}");
    assert!(
        !log.lines().any(|l| l.contains(" ERROR ")),
        "kmsd logged an error:\n{log}"
    );
    assert!(
        !log.contains("stopping anyway"),
        "kmsd hit its drain limit although every client was answered or refused:\n{log}"
    );

    // Every error came after SIGTERM and says kmsd is going away: UNAVAILABLE (kmsd refused
    // the stream, or the connection) or hyper's "operation was canceled", which tonic maps to
    // CANCELLED: the client dropped the request before writing it, its connection closing.
    let mut kinds: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (request_id, code, message, after_sigterm) in &seen.errors {
        assert!(
            *after_sigterm,
            "an error before SIGTERM: {request_id} {code:?} {message}\n{log}"
        );
        *kinds
            .entry((format!("{code:?}"), message.clone()))
            .or_default() += 1;
    }
    println!(
        "SIGTERM after {before_sigterm} acknowledged requests; {} acknowledged after it; \
         kmsd exited 0 {exit_after:?} after SIGTERM; errors: {kinds:?}",
        seen.acked_after_sigterm
    );
    assert!(
        seen.errors
            .iter()
            .all(|(_, code, message, _)| *code == Code::Unavailable
                || (*code == Code::Cancelled && message == "operation was canceled")),
        "errors other than UNAVAILABLE during shutdown: {kinds:?}"
    );
    assert_eq!(seen.errors.len(), WORKERS * ERRORS_PER_WORKER);

    // The audit log verifies as kmsd left it. It has a success record for every acknowledged
    // request, naming the key it created; and none for a request that got an error: kmsd did
    // not carry out any request whose caller was told it failed.
    let (audit_log, public_key) = Kmsd::audit_files(&env.data_dir());
    audit_verify(&audit_log, &public_key);
    let records = audit_records(&audit_log);
    let mut audited = 0;
    for acked in &seen.acked {
        let id = acked.request_id();
        let record = records
            .get(id)
            .unwrap_or_else(|| panic!("acknowledged request {id} is not in the audit log"));
        assert_eq!(record["operation"], acked.operation(), "{record}");
        assert_eq!(record["outcome"], "success", "{record}");
        if let Acked::Created { key_id, .. } = acked {
            assert_eq!(record["keys"][0]["key_id"], key_id.as_str(), "{record}");
        }
        audited += 1;
    }
    for (request_id, code, message, _) in &seen.errors {
        assert!(
            !records.contains_key(request_id),
            "{request_id} got {code:?} {message}, but kmsd carried it out: {}",
            records[request_id]
        );
    }
    // kmsd answered every request it carried out: none succeeded unseen.
    let unanswered: Vec<&String> = records
        .iter()
        .filter(|(id, _)| {
            id.starts_with("shutdown-") && !seen.acked.iter().any(|a| a.request_id() == id.as_str())
        })
        .map(|(id, _)| id)
        .collect();
    assert!(
        unanswered.is_empty(),
        "kmsd carried out requests whose answers never arrived: {unanswered:?}"
    );

    // Restarted on the same data dir and token: every key it acknowledged is there, Enabled
    // and usable; every blob decrypts; startup found nothing to reconcile.
    let mut kmsd = env.start();
    let mut c = kmsd.client().await;
    let (mut created, mut decrypted) = (0, 0);
    for acked in &seen.acked {
        match acked {
            Acked::Created { key_id, .. } => {
                let key = c.describe_key(key_id).await.unwrap_or_else(|e| {
                    panic!("acknowledged key {key_id} is gone after the restart: {e}")
                });
                assert_eq!(key.key_state(), pb::KeyState::Enabled, "{key_id}");
                c.encrypt(key_id, b"after the restart", &ctx(&[]))
                    .await
                    .unwrap_or_else(|e| panic!("acknowledged key {key_id} cannot encrypt: {e}"));
                created += 1;
            }
            Acked::Encrypted {
                plaintext, blob, ..
            } => {
                let back = c
                    .decrypt(blob, &ctx(&[("test", "shutdown")]), None)
                    .await
                    .unwrap_or_else(|e| panic!("an acknowledged blob does not decrypt: {e}"));
                assert_eq!(*back.plaintext, *plaintext);
                decrypted += 1;
            }
        }
    }
    assert!(
        !kmsd.log().contains("reconciled the store with the HSM"),
        "a clean stop left the store and the HSM apart:\n{}",
        kmsd.log()
    );
    // One HSM object per key, and no other: nothing half-created.
    let listed = c.list_all_keys().await.unwrap();
    let mut labels = env.hsm_key_labels();
    labels.sort();
    let mut expected: Vec<String> = listed.iter().map(|k| format!("kms/{k}/v1")).collect();
    expected.sort();
    assert_eq!(labels, expected, "one HSM object per key, and no other");
    drop(c);
    assert!(kmsd.terminate(), "{}", kmsd.log());
    // The restart and the checks above extended the log; it still verifies.
    audit_verify(&audit_log, &public_key);
    println!(
        "after the restart: {created} acknowledged keys usable, {decrypted} acknowledged blobs \
         decrypt, {audited} acknowledged requests audited; kmsd took {exit_after:?} to stop"
    );
}

/// `kmsctl audit verify` succeeds on `log`.
fn audit_verify(log: &std::path::Path, public_key: &std::path::Path) {
    let out = std::process::Command::new(bin("kmsctl"))
        .args(["audit", "verify", "--log"])
        .arg(log)
        .arg("--public-key")
        .arg(public_key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the audit log does not verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every record of the audit log (`kmsctl audit search`), by request id.
fn audit_records(log: &std::path::Path) -> HashMap<String, serde_json::Value> {
    let out = std::process::Command::new(bin("kmsctl"))
        .args(["--output", "json", "audit", "search", "--log"])
        .arg(log)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut records = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = record["request_id"].as_str().unwrap().to_owned();
        assert!(
            records.insert(id.clone(), record).is_none(),
            "request id {id} audited twice"
        );
    }
    records
}
