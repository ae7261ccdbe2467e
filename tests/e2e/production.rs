//! What an operator relies on in production: one caller's flood does not starve another, and
//! JSON logs carry request ids and never a plaintext; a slow startup does not hold back serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kms_e2e::TestEnv;
use tonic::Code;

use crate::ctx;

const FLOOD: &str = "spiffe://test/flood";
const STEADY: &str = "spiffe://test/steady";

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    throttled: AtomicU64,
    other: AtomicU64,
}

impl Tally {
    fn count<T>(&self, result: &Result<T, kms_client::ClientError>) {
        let counter = match result {
            Ok(_) => &self.ok,
            Err(e)
                if e.code() == Code::ResourceExhausted
                    && e.reason() == Some("ThrottlingException") =>
            {
                &self.throttled
            }
            Err(e) => {
                eprintln!("unexpected error: {e}");
                &self.other
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> (u64, u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.throttled.load(Ordering::Relaxed),
            self.other.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_from_one_principal_leaves_another_at_99_percent() {
    const RATE: u64 = 50;
    const SECONDS: u64 = 5;
    let env = TestEnv::new();
    let pki = env.dev_pki("pki", &[("flood", FLOOD), ("steady", STEADY)], 365);
    let mut args = env.tls_args(&pki, &[FLOOD, STEADY]);
    args.extend(
        [
            "--rate-limit-per-principal",
            &RATE.to_string(),
            "--rate-limit-burst",
            &RATE.to_string(),
        ]
        .map(str::to_owned),
    );
    let kmsd = env
        .start_with(&args, &[])
        .unwrap_or_else(|log| panic!("kmsd did not start:\n{log}"));
    let mut steady = kmsd.client_with(&pki.client_tls(Some("steady"))).await;
    let key = steady.create_key("shared").await.unwrap().key_id;

    let flood = Arc::new(Tally::default());
    let end = Instant::now() + Duration::from_secs(SECONDS);
    let mut flooders = Vec::new();
    for _ in 0..16 {
        let mut client = kmsd.client_with(&pki.client_tls(Some("flood"))).await;
        let (flood, key) = (Arc::clone(&flood), key.clone());
        flooders.push(tokio::spawn(async move {
            while Instant::now() < end {
                flood.count(&client.encrypt(&key, b"flood", &ctx(&[])).await);
            }
        }));
    }
    // The steady caller: 20 calls a second, well under its own limit.
    let calm = Tally::default();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while Instant::now() < end {
        tick.tick().await;
        calm.count(&steady.encrypt(&key, b"steady", &ctx(&[])).await);
    }
    for flooder in flooders {
        flooder.await.unwrap();
    }

    let (ok, throttled, other) = calm.get();
    let total = ok + throttled + other;
    eprintln!("steady: {ok} ok of {total}; flood: {:?}", flood.get());
    assert!(total >= 50, "the steady caller made only {total} calls");
    assert!(
        ok * 100 >= total * 99,
        "the steady caller succeeded {ok} times of {total}"
    );
    let (flood_ok, flood_throttled, flood_other) = flood.get();
    assert_eq!(flood_other, 0, "the flood got errors other than throttling");
    assert!(flood_throttled > 0, "the flood was never throttled");
    // The flood gets its burst plus its rate, and no more (a second of slack for timing).
    let allowed = RATE * (SECONDS + 2);
    assert!(
        flood_ok <= allowed,
        "the flood got {flood_ok} calls through, more than {allowed}"
    );
}

fn with_id<T>(id: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-request-id", id.parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_request_ids_and_never_plaintexts() {
    use kms_proto::v1 as pb;
    use kms_proto::v1::key_management_service_client::KeyManagementServiceClient;

    let env = TestEnv::new();
    let mut args = env.kmsd_args();
    args.extend(["--log-format", "json", "--log-level", "debug"].map(str::to_owned));
    let kmsd = env.start_with(&args, &[]).unwrap();
    let mut client = KeyManagementServiceClient::connect(kmsd.endpoint.clone())
        .await
        .unwrap();
    let created = client
        .create_key(with_id("json-log-create", pb::CreateKeyRequest::default()))
        .await
        .unwrap();
    assert_eq!(
        created.metadata().get("x-request-id").unwrap(),
        "json-log-create"
    );
    let key_id = created.into_inner().key_metadata.unwrap().key_id;
    let secret = "the-plaintext-never-logged-4417";
    client
        .encrypt(with_id(
            "json-log-encrypt",
            pb::EncryptRequest {
                key_id: key_id.clone(),
                plaintext: secret.as_bytes().to_vec(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let refused = client
        .encrypt(with_id(
            "json-log-refused",
            pb::EncryptRequest {
                key_id: "alias/missing".into(),
                plaintext: secret.as_bytes().to_vec(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);
    drop(client);
    let mut kmsd = kmsd;
    assert!(kmsd.terminate());

    let log = kmsd.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(!log.contains(secret), "a plaintext reached the log");
    for line in &lines {
        for field in ["timestamp", "level", "message", "target"] {
            assert!(line.get(field).is_some(), "no {field}: {line}");
        }
    }
    let of_request = |id: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["span"]["request_id"] == id)
            .collect()
    };
    let create = of_request("json-log-create");
    assert!(
        create.iter().any(|l| l["message"] == "created key"
            && l["key_id"] == key_id.as_str()
            && l["span"]["rpc"] == "CreateKey"),
        "no 'created key' line with the request id:\n{log}"
    );
    assert!(
        of_request("json-log-encrypt")
            .iter()
            .any(|l| l["message"] == "encrypted" && l["level"] == "DEBUG"),
        "no 'encrypted' line with the request id:\n{log}"
    );
    assert!(
        lines.iter().any(|l| l["message"] == "kmsd stopped"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_message_is_refused_and_kmsd_goes_on() {
    let env = TestEnv::new();
    let kmsd = env.start();
    let mut client = kmsd.client().await;
    let key = client.create_key("size").await.unwrap().key_id;
    let huge = vec![7u8; 70 * 1024];
    let refused = client.encrypt(&key, &huge, &ctx(&[])).await.unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange, "{refused}");
    let fits = client.encrypt(&key, &[7u8; 4096], &ctx(&[])).await;
    assert!(fits.is_ok(), "{:?}", fits.err());
}

/// With `--startup-budget 1ms` kmsd serves before its startup work is done and finishes it in
/// the background: keys are usable at once, and creation comes back once the keys are
/// counted.
#[tokio::test(flavor = "multi_thread")]
async fn past_its_startup_budget_kmsd_serves_and_finishes_startup_in_the_background() {
    let env = TestEnv::new();
    // Enough keys that reading them takes far longer than the budget.
    let kmsd = env
        .start_with(&env.bulk_key_args(), &[])
        .unwrap_or_else(|log| panic!("{log}"));
    let mut tasks = Vec::new();
    for t in 0..6 {
        let mut c = kmsd.client().await;
        tasks.push(tokio::spawn(async move {
            let mut blobs = Vec::new();
            for i in 0..50 {
                let key = c.create_key(&format!("k{t}-{i}")).await.unwrap().key_id;
                blobs.push(
                    c.encrypt(&key, b"early", &ctx(&[]))
                        .await
                        .unwrap()
                        .ciphertext_blob,
                );
            }
            blobs
        }));
    }
    let mut blobs = Vec::new();
    for task in tasks {
        blobs.extend(task.await.unwrap());
    }
    drop(kmsd);

    let mut args = env.bulk_key_args();
    args.extend(["--startup-budget".to_owned(), "1ms".to_owned()]);
    let kmsd = env
        .start_with(&args, &[])
        .unwrap_or_else(|log| panic!("{log}"));
    let mut c = kmsd.client().await;
    for blob in blobs.iter().take(20) {
        let back = c.decrypt(blob, &ctx(&[]), None).await.unwrap();
        assert_eq!(*back.plaintext, *b"early");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !kmsd
        .log()
        .contains("the startup work finished in the background")
    {
        assert!(Instant::now() < deadline, "{}", kmsd.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = kmsd.log();
    let background = log
        .find("continues in the background")
        .unwrap_or_else(|| panic!("{log}"));
    let listening = log
        .find("kmsd listening")
        .unwrap_or_else(|| panic!("{log}"));
    assert!(background < listening, "{log}");
    assert!(
        log.contains("the startup work finished in the background"),
        "{log}"
    );
    // Counted: creation works again, and the count holds the keys.
    c.create_key("after").await.unwrap();
    assert_eq!(c.list_all_keys().await.unwrap().len(), 301);
}
