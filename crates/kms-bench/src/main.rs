//! kms-bench: drives a running kmsd over gRPC with N concurrent clients for T seconds and
//! prints, per operation, throughput, latency percentiles and errors, beside two limits
//! measured in the same run:
//!
//! - the transport limit: an empty RPC (grpc.health.v1 Check) against the same kmsd;
//! - the HSM limit: raw PKCS#11 calls of the SYMMETRIC_DEFAULT derivation (C_Sign with
//!   CKM_SHA256_HMAC over a 69-byte input) on the same token, from this process;
//!
//! and, optionally, the peer: OpenBao's transit engine encrypting the same 4 KiB.
//! With `--metrics`, it reads kmsd's HSM call counter before and after each run and prints the
//! HSM calls per operation. A run with errors is marked FAILED and the exit status is 1.
#![forbid(unsafe_code)]
#![allow(
    clippy::cast_precision_loss,
    reason = "figures for people: counts and microseconds stay far below 2^52"
)]

mod hsm;
mod progress;
mod report;
mod rss;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use clap::{Parser, ValueEnum};
use kms_client::{Context, DataKeySize, KmsClient};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::report::{HsmCalls, Row, Sample};

/// What one request does.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
enum Op {
    /// grpc.health.v1 Check: the transport limit.
    Empty,
    /// Encrypt 4 KiB.
    Encrypt,
    /// Decrypt a 4 KiB blob.
    Decrypt,
    /// GenerateDataKey, 32 bytes.
    GenerateDataKey,
    /// ReEncrypt a 4 KiB blob to another key.
    ReEncrypt,
}

#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// kmsd's gRPC endpoint (a `kmsd --dev`; TLS is not supported by the bench).
    #[arg(long, env = "KMS_ENDPOINT", default_value = "http://127.0.0.1:50051")]
    endpoint: String,
    /// Concurrent clients, each on its own connection; one run per value.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    concurrency: Vec<usize>,
    /// Seconds each run measures.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds each run warms up before measuring.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Operations to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "empty,encrypt,decrypt,generate-data-key,re-encrypt"
    )]
    ops: Vec<Op>,
    /// kmsd's metrics URL (e.g. http://127.0.0.1:9464/metrics), for HSM calls per operation.
    #[arg(long)]
    metrics: Option<String>,
    /// The PKCS#11 module, for the HSM limit (with --token-label and --pin-file).
    #[arg(long)]
    pkcs11_module: Option<PathBuf>,
    /// The token kmsd uses.
    #[arg(long)]
    token_label: Option<String>,
    /// The token's user PIN, in a file.
    #[arg(long)]
    pin_file: Option<PathBuf>,
    /// OpenBao's address (e.g. http://127.0.0.1:8200), to run its transit encrypt of 4 KiB.
    #[arg(long)]
    openbao: Option<String>,
    /// OpenBao's token.
    #[arg(long, env = "BAO_TOKEN", default_value = "root")]
    openbao_token: String,
    /// Use an existing key instead of creating one (e.g. one among 100,000).
    #[arg(long)]
    key_id: Option<String>,
    /// Also write every row as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// First create this many keys (with 8 clients), so the runs use one key among many.
    /// Progress goes to stderr: a bar on a terminal, else a line every 10,000 keys.
    #[arg(long, default_value_t = 0)]
    populate: usize,
    /// Encrypt under a key drawn at random from every key of the store (listed first), not
    /// under one key: with more keys than kmsd keeps unwrapped, nearly every call unwraps
    /// a key version first.
    #[arg(long)]
    spread: bool,
    /// Write the request bodies of a neutral load generator (h2load) to this directory and
    /// exit: `encrypt.grpc` (an Encrypt of 4 KiB under a new key, gRPC-framed; checked once
    /// against kmsd), `health.grpc` (the empty RPC) and `openbao.json` (OpenBao transit's
    /// encrypt of the same 4 KiB).
    #[arg(long)]
    h2load_bodies: Option<PathBuf>,
    /// Sample this process's resident memory (kmsd's pid) every second of every run, and
    /// print its first, highest and last value.
    #[arg(long)]
    rss_pid: Option<u32>,
}

/// What every worker needs: the keys and a blob to decrypt.
struct Fixture {
    key: String,
    /// With `--spread`: every key of the store, for Encrypt.
    spread: Vec<String>,
    other_key: String,
    plaintext: Vec<u8>,
    blob: Vec<u8>,
    context: Context,
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    if args.populate > 0 {
        populate(&args.endpoint, args.populate).await?;
    }
    let rss = args.rss_pid.map(rss::Sampler::start);
    let fixture = Arc::new(fixture(&args).await?);
    if let Some(dir) = &args.h2load_bodies {
        write_h2load_bodies(dir, &fixture)?;
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let hsm = match (&args.pkcs11_module, &args.token_label, &args.pin_file) {
        (Some(module), Some(label), Some(pin)) => Some(Arc::new(
            hsm::Limit::open(module, label, pin).context("opening the token for the HSM limit")?,
        )),
        (None, None, None) => None,
        _ => bail!("give all of --pkcs11-module, --token-label and --pin-file, or none"),
    };
    let mut rows = Vec::new();
    let mut failed = false;
    for &concurrency in &args.concurrency {
        println!(
            "\n== {concurrency} concurrent client(s), {} s per run (after {} s warm-up)",
            args.seconds, args.warmup
        );
        let mut batch = Vec::new();
        for &op in &args.ops {
            let before = hsm_calls(args.metrics.as_deref()).await?;
            let sample = run_op(&args, &fixture, op, concurrency).await?;
            let after = hsm_calls(args.metrics.as_deref()).await?;
            let calls = match (before, after) {
                (Some(b), Some(a)) => Some(HsmCalls {
                    derivations: a.derivations - b.derivations,
                    audit_signatures: a.audit_signatures - b.audit_signatures,
                }),
                _ => None,
            };
            batch.push(Row::new(
                &format!("{op:?}"),
                concurrency,
                args.seconds,
                sample,
                calls,
            ));
        }
        if let Some(hsm) = &hsm {
            let limit = hsm::run(hsm, concurrency, args.warmup, args.seconds)?;
            batch.push(Row::new("HsmLimit", concurrency, args.seconds, limit, None));
        }
        if let Some(bao) = &args.openbao {
            let sample = openbao(bao, &args, concurrency).await?;
            batch.push(Row::new(
                "OpenBaoEncrypt",
                concurrency,
                args.seconds,
                sample,
                None,
            ));
        }
        report::print(&batch);
        failed |= batch.iter().any(|r| r.errors > 0);
        rows.extend(batch);
    }
    if let Some(rss) = rss {
        rss.report();
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if failed {
        println!("\nFAILED: some requests failed (see the errors column)");
        return Ok(std::process::ExitCode::from(1));
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn channel(endpoint: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(endpoint.to_owned())?
        .connect()
        .await
        .with_context(|| format!("connecting to {endpoint}"))
}

async fn fixture(args: &Args) -> anyhow::Result<Fixture> {
    let mut client = KmsClient::from_channel(channel(&args.endpoint).await?);
    let key = match &args.key_id {
        Some(key) => key.clone(),
        None => client.create_key("kms-bench").await?.key_id,
    };
    let other_key = client
        .create_key("kms-bench re-encrypt target")
        .await?
        .key_id;
    let spread = if args.spread {
        let keys = client.list_all_keys().await?;
        println!("spread: Encrypt under a key drawn from {} keys", keys.len());
        keys
    } else {
        Vec::new()
    };
    let plaintext = vec![0x5a; 4096];
    let context: Context = [("bench".to_owned(), "kms".to_owned())].into();
    let blob = client
        .encrypt(&key, &plaintext, &context)
        .await?
        .ciphertext_blob;
    Ok(Fixture {
        key,
        spread,
        other_key,
        plaintext,
        blob,
        context,
    })
}

/// Creates `count` keys with 8 clients, showing progress on stderr and the total on stdout.
async fn populate(endpoint: &str, count: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let progress = Arc::new(progress::Progress::start("populate", "keys", count)?);
    let mut workers = Vec::new();
    for _ in 0..8 {
        let mut client = KmsClient::from_channel(channel(endpoint).await?);
        let next = Arc::clone(&next);
        let progress = Arc::clone(&progress);
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= count {
                    return Ok::<_, anyhow::Error>(());
                }
                client.create_key(&format!("kms-bench filler {n}")).await?;
                progress.inc();
            }
        }));
    }
    let finished = async {
        for worker in workers {
            worker.await??;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    progress.finish();
    finished?;
    println!(
        "populate: created {count} keys in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// kmsd's HSM call counters, when `--metrics` is given.
async fn hsm_calls(url: Option<&str>) -> anyhow::Result<Option<HsmCalls>> {
    let Some(url) = url else { return Ok(None) };
    let text = reqwest::get(url).await?.error_for_status()?.text().await?;
    let counter = |operation: &str| {
        let prefix = format!("kms_hsm_calls_total{{operation=\"{operation}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(Some(HsmCalls {
        derivations: counter("hmac"),
        audit_signatures: counter("sign audit checkpoint"),
    }))
}

/// Runs `op` with `concurrency` workers, each on its own connection.
async fn run_op(
    args: &Args,
    fixture: &Arc<Fixture>,
    op: Op,
    concurrency: usize,
) -> anyhow::Result<Sample> {
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let channel = channel(&args.endpoint).await?;
        let fixture = Arc::clone(fixture);
        let (warmup, seconds) = (args.warmup, args.seconds);
        workers.push(tokio::spawn(async move {
            let mut client = KmsClient::from_channel(channel.clone());
            let mut health = HealthClient::new(channel);
            let window = Window::new(warmup, seconds);
            let mut sample = Sample::default();
            let mut draw = Draw::seeded();
            while let Some(t0) = window.next() {
                let ok = one_call(op, &mut client, &mut health, &fixture, &mut draw).await;
                window.record(&mut sample, t0, ok);
            }
            sample
        }));
    }
    gather(workers).await
}

async fn one_call(
    op: Op,
    client: &mut KmsClient,
    health: &mut HealthClient<Channel>,
    f: &Fixture,
    draw: &mut Draw,
) -> bool {
    match op {
        Op::Empty => health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .is_ok(),
        Op::Encrypt => {
            let key = if f.spread.is_empty() {
                &f.key
            } else {
                &f.spread[draw.below(f.spread.len())]
            };
            client.encrypt(key, &f.plaintext, &f.context).await.is_ok()
        }
        Op::Decrypt => client.decrypt(&f.blob, &f.context, None).await.is_ok(),
        Op::GenerateDataKey => client
            .generate_data_key(&f.key, &f.context, DataKeySize::Aes256)
            .await
            .is_ok(),
        Op::ReEncrypt => client
            .re_encrypt(kms_client::v1::ReEncryptRequest {
                ciphertext_blob: f.blob.clone(),
                source_encryption_context: f.context.clone(),
                destination_key_id: f.other_key.clone(),
                destination_encryption_context: f.context.clone(),
                ..Default::default()
            })
            .await
            .is_ok(),
    }
}

/// Writes the bodies h2load sends (see `--h2load-bodies`). The Encrypt one is the request
/// the fixture already made successfully, so a body kmsd refuses is not measured unnoticed
/// (h2load counts any HTTP 200 as a success, and gRPC reports errors in trailers).
fn write_h2load_bodies(dir: &std::path::Path, f: &Fixture) -> anyhow::Result<()> {
    use prost::Message as _;
    /// A gRPC message frame: uncompressed, 4-byte big-endian length, the message.
    fn frame(message: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut framed = vec![0];
        framed.extend_from_slice(&u32::try_from(message.len())?.to_be_bytes());
        framed.extend_from_slice(message);
        Ok(framed)
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let encrypt = kms_client::v1::EncryptRequest {
        key_id: f.key.clone(),
        plaintext: f.plaintext.clone(),
        encryption_context: f.context.clone().into_iter().collect(),
        ..Default::default()
    };
    let bodies = [
        ("encrypt.grpc", frame(&encrypt.encode_to_vec())?),
        (
            "health.grpc",
            frame(&HealthCheckRequest::default().encode_to_vec())?,
        ),
        (
            "openbao.json",
            serde_json::to_vec(&serde_json::json!({
                "plaintext": base64::engine::general_purpose::STANDARD.encode(&f.plaintext)
            }))?,
        ),
    ];
    for (name, body) in bodies {
        let path = dir.join(name);
        std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("h2load bodies in {} (key {})", dir.display(), f.key);
    Ok(())
}

/// A worker's draws of a key (xorshift64*: uniform enough for picking keys, and no call to
/// the OS per draw).
struct Draw(u64);

impl Draw {
    fn seeded() -> Self {
        let mut seed = [0u8; 8];
        // A failed seed draws from a fixed sequence: still a spread over the keys.
        let _ = getrandom::fill(&mut seed);
        Draw(u64::from_le_bytes(seed) | 1)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        usize::try_from(x % n as u64).unwrap_or(0)
    }
}

/// Waits for every worker and merges their samples.
async fn gather(workers: Vec<tokio::task::JoinHandle<Sample>>) -> anyhow::Result<Sample> {
    let mut sample = Sample::default();
    for worker in workers {
        sample.merge(worker.await?);
    }
    Ok(sample)
}

/// A run's time: `warmup` seconds unrecorded, then `seconds` recorded.
struct Window {
    warm: Instant,
    end: Instant,
}

impl Window {
    fn new(warmup: u64, seconds: u64) -> Self {
        let warm = Instant::now() + Duration::from_secs(warmup);
        Window {
            warm,
            end: warm + Duration::from_secs(seconds),
        }
    }

    /// The start of the next call, or `None` when the run is over.
    fn next(&self) -> Option<Instant> {
        let now = Instant::now();
        (now < self.end).then_some(now)
    }

    /// Records a call that started at `t0`; one that started during the warm-up is only
    /// counted.
    fn record(&self, sample: &mut Sample, t0: Instant, ok: bool) {
        if t0 >= self.warm {
            sample.record(t0.elapsed(), ok);
        } else {
            sample.record_warmup();
        }
    }
}

/// OpenBao transit: encrypt 4 KiB under key `kms-bench`, `concurrency` HTTP connections.
async fn openbao(address: &str, args: &Args, concurrency: usize) -> anyhow::Result<Sample> {
    let setup = reqwest::Client::new();
    let token = args.openbao_token.clone();
    // Mount transit and create the key; both answer an error when they exist already.
    let _ = setup
        .post(format!("{address}/v1/sys/mounts/transit"))
        .header("X-Vault-Token", &token)
        .json(&serde_json::json!({"type": "transit"}))
        .send()
        .await?;
    let _ = setup
        .post(format!("{address}/v1/transit/keys/kms-bench"))
        .header("X-Vault-Token", &token)
        .send()
        .await?;
    let body = Arc::new(serde_json::json!({
        "plaintext": base64::engine::general_purpose::STANDARD.encode([0x5a; 4096]),
    }));
    let url = Arc::new(format!("{address}/v1/transit/encrypt/kms-bench"));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        // One client per worker: its own keep-alive connection.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()?;
        let (url, body, token) = (Arc::clone(&url), Arc::clone(&body), token.clone());
        let (warmup, seconds) = (args.warmup, args.seconds);
        workers.push(tokio::spawn(async move {
            let window = Window::new(warmup, seconds);
            let mut sample = Sample::default();
            while let Some(t0) = window.next() {
                let request = client
                    .post(url.as_str())
                    .header("X-Vault-Token", &token)
                    .json(body.as_ref());
                let ok = match request.send().await {
                    Ok(response) => {
                        response.status().is_success() && response.bytes().await.is_ok()
                    }
                    Err(_) => false,
                };
                window.record(&mut sample, t0, ok);
            }
            sample
        }));
    }
    gather(workers).await
}
