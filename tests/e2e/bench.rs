//! kms-bench against a real kmsd: it runs, reports no errors, and kmsd's own counters show
//! one HSM derivation per Encrypt, Decrypt and GenerateDataKey. Also the metrics endpoint
//! and the health service the bench relies on.

use std::process::Command;
use std::time::{Duration, Instant};

use kms_e2e::{TOKEN_LABEL, TestEnv, bin, module};

#[test]
fn the_bench_shows_one_hsm_derivation_per_operation_and_the_limits() {
    let env = TestEnv::new();
    let mut args = env.kmsd_args();
    args.extend(["--metrics-listen".to_owned(), "127.0.0.1:0".to_owned()]);
    let kmsd = env.start_with(&args, &[]).unwrap();
    let metrics = kmsd.metrics_url();

    let json = env.path().join("bench.json");
    let out = Command::new(bin("kms-bench"))
        .args([
            "--endpoint",
            &kmsd.endpoint,
            "--concurrency",
            "1,4",
            "--seconds",
            "1",
        ])
        .args([
            "--warmup",
            "0",
            "--metrics",
            &metrics,
            "--token-label",
            TOKEN_LABEL,
        ])
        .arg("--pkcs11-module")
        .arg(module())
        .arg("--pin-file")
        .arg(env.pin_file())
        .arg("--json")
        .arg(&json)
        .env("SOFTHSM2_CONF", env.softhsm_conf())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let row = |op: &str, concurrency: u64| {
        rows.iter()
            .find(|r| r["op"] == op && r["concurrency"] == concurrency)
            .unwrap_or_else(|| panic!("no {op} at {concurrency} in {rows:?}"))
    };
    for concurrency in [1, 4] {
        for (op, derivations) in [
            ("Empty", 0.0),
            ("Encrypt", 1.0),
            ("Decrypt", 1.0),
            ("GenerateDataKey", 1.0),
            ("ReEncrypt", 2.0),
        ] {
            let r = row(op, concurrency);
            assert_eq!(r["errors"], 0, "{r}");
            assert!(r["ops_per_sec"].as_f64().unwrap() > 0.0, "{r}");
            assert_eq!(
                r["derivations_per_op"].as_f64(),
                Some(derivations),
                "HSM derivations per {op}: {r}"
            );
        }
        assert!(
            row("HsmLimit", concurrency)["ops_per_sec"]
                .as_f64()
                .unwrap()
                > 0.0
        );
        // Audit checkpoints: at most one signature per request, fewer when batched.
        let audit = row("Encrypt", concurrency)["audit_signatures_per_op"]
            .as_f64()
            .unwrap();
        assert!(audit > 0.0 && audit <= 1.0, "{audit}");
    }

    // The metrics endpoint counted the requests, with latency histograms; the exposition
    // parses as Prometheus text.
    let exposition = crate::metrics::scrape(&metrics);
    let encrypts = exposition
        .value(
            "kms_requests_total",
            &[("rpc", "Encrypt"), ("outcome", "success")],
        )
        .unwrap_or(0.0);
    assert!(encrypts > 0.0, "no Encrypt counted");
    assert!(
        exposition
            .histogram("kms_request_duration_seconds", &[("rpc", "Decrypt")])
            .is_some(),
        "no Decrypt latency histogram"
    );
    assert!(
        exposition
            .value("kms_hsm_calls_total", &[("operation", "hmac")])
            .is_some_and(|n| n > 0.0),
        "no HSM derivation counted"
    );
    assert!(
        exposition.labels().all(|(name, _)| name != "key_id"),
        "metrics name RPCs and operations, never keys"
    );
}

/// The `--populate` arguments of a short bench run against `endpoint`.
fn populate_args(endpoint: &str, keys: usize) -> Vec<String> {
    [
        "--endpoint",
        endpoint,
        "--populate",
        &keys.to_string(),
        "--concurrency",
        "1",
        "--seconds",
        "1",
        "--warmup",
        "0",
        "--ops",
        "empty",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Fails unless `stdout` has exactly one `populate:` line, the total of `keys` created.
fn assert_one_populate_total(stdout: &str, keys: usize) {
    let populate: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("populate:"))
        .collect();
    assert_eq!(populate.len(), 1, "{stdout}");
    assert!(
        populate[0].starts_with(&format!("populate: created {keys} keys in ")),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn populate_shows_progress_on_stderr_and_keeps_stdout_for_the_report() {
    let env = TestEnv::new();
    let kmsd = env
        .start_with(&env.bulk_key_args(), &[])
        .unwrap_or_else(|log| panic!("kmsd did not start:\n{log}"));

    // stderr is not a terminal: no bar and no escape codes anywhere; stdout has the total.
    let out = Command::new(bin("kms-bench"))
        .args(populate_args(&kmsd.endpoint, 30))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_one_populate_total(&stdout, 30);
    assert!(stdout.contains("concurrent client(s)"), "{stdout}");
    assert!(
        !stdout.contains('\x1b') && !stderr.contains('\x1b'),
        "{stderr}"
    );
    // 30 fillers, and the bench's own two keys.
    let mut c = kmsd.client().await;
    assert_eq!(c.list_all_keys().await.unwrap().len(), 32);

    // stderr is a terminal (util-linux `script` gives it a pty; stdout goes to a file): a bar
    // is drawn there, and stdout is the same report as above.
    let stdout_file = env.path().join("bench.out");
    let args: Vec<String> = populate_args(&kmsd.endpoint, 30)
        .iter()
        .map(|a| format!("'{a}'"))
        .collect();
    let out = Command::new("script")
        .args(["--quiet", "--return", "--command"])
        .arg(format!(
            "'{}' {} > '{}'",
            bin("kms-bench").display(),
            args.join(" "),
            stdout_file.display()
        ))
        .arg("/dev/null")
        .env("TERM", "xterm")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let terminal = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{terminal}");
    assert!(
        terminal.contains("populate: ["),
        "no bar on the terminal: {terminal:?}"
    );
    assert!(terminal.contains("/30 keys"), "{terminal:?}");
    let stdout = std::fs::read_to_string(&stdout_file).unwrap();
    assert!(!stdout.contains('\x1b'), "{stdout:?}");
    assert_one_populate_total(&stdout, 30);
    assert_eq!(c.list_all_keys().await.unwrap().len(), 64);
}

/// The HTTP status of a GET of `url`.
fn http_status(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", url])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_reflection_answer_as_grpc_tools_expect() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let env = TestEnv::new();
    let kmsd = env.start();
    let channel = tonic::transport::Endpoint::from_shared(kmsd.endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut health = HealthClient::new(channel.clone());
    for service in ["", "kms.v1.KeyManagementService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in ["kms.v1.KeyManagementService", "grpc.health.v1.Health"] {
        assert!(names.contains(&expected), "{names:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn health_follows_the_hsm_away_and_back_without_a_restart() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let env = TestEnv::new();
    let mut args = env.kmsd_args();
    args.extend(["--metrics-listen".to_owned(), "127.0.0.1:0".to_owned()]);
    let kmsd = env.start_with(&args, &[]).unwrap();
    let readyz = kmsd.metrics_url().replace("/metrics", "/readyz");
    let mut c = kmsd.client().await;
    let key = c.create_key("through an outage").await.unwrap().key_id;
    let before = c
        .encrypt(&key, b"sealed before the outage", &crate::ctx(&[]))
        .await
        .unwrap()
        .ciphertext_blob;
    let channel = tonic::transport::Endpoint::from_shared(kmsd.endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let mut wait_for = async |wanted: ServingStatus| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let status = health
                .check(HealthCheckRequest {
                    service: "kms.v1.KeyManagementService".to_owned(),
                })
                .await
                .unwrap()
                .into_inner()
                .status();
            if status == wanted {
                return;
            }
            assert!(Instant::now() < deadline, "health stayed {status:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    wait_for(ServingStatus::Serving).await;
    assert_eq!(http_status(&readyz), "200");

    // The HSM goes away: SoftHSM2's token directory is moved.
    let tokens = env.path().join("hsm/tokens");
    let away = env.path().join("tokens-away");
    std::fs::rename(&tokens, &away).unwrap();
    wait_for(ServingStatus::NotServing).await;
    assert_eq!(http_status(&readyz), "503");
    // Calls that need it fail with UNAVAILABLE, and kmsd keeps answering.
    crate::expect_error(
        c.encrypt(&key, b"during the outage", &crate::ctx(&[]))
            .await,
        tonic::Code::Unavailable,
        "KeyUnavailableException",
    );
    wait_for(ServingStatus::NotServing).await;

    // The HSM comes back: kmsd reconnects by itself, and old blobs decrypt.
    std::fs::rename(&away, &tokens).unwrap();
    wait_for(ServingStatus::Serving).await;
    assert_eq!(http_status(&readyz), "200");
    let plaintext = c
        .decrypt(&before, &crate::ctx(&[]), None)
        .await
        .unwrap()
        .plaintext;
    assert_eq!(plaintext.as_slice(), b"sealed before the outage");
    c.encrypt(&key, b"after the outage", &crate::ctx(&[]))
        .await
        .unwrap();
    assert!(
        kmsd.log().contains("reconnected to the HSM"),
        "{}",
        kmsd.log()
    );
}

#[test]
fn shutdown_closes_the_hsm_sessions_and_finalizes_pkcs11() {
    let env = TestEnv::new();
    let mut kmsd = env.start();
    assert!(kmsd.terminate(), "kmsd did not exit cleanly");
    let log = kmsd.log();
    let line = log
        .lines()
        .find(|l| l.contains("closed the HSM sessions and finalized PKCS#11"))
        .unwrap_or_else(|| panic!("no closing line:\n{log}"));
    assert!(line.contains("finalized=true"), "{line}");
    assert!(!line.contains("sessions=0"), "{line}");
}
