//! kmsd: opens the metadata store and the HSM, reconciles them, and serves gRPC until SIGTERM
//! or SIGINT.
#![forbid(unsafe_code)]

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use kms_audit::AuditLog;
use kms_core::key::{KeySpec, KeyStorage};
use kms_core::service::Authorization;
use kms_core::{Kms, MetadataStore, SystemClock};
use kms_hsm::DomainCustody;
use kms_hsm::{HsmAuditSigner, HsmConfig, HsmKeyStore};
use kms_proto::v1::key_management_service_server::KeyManagementServiceServer;
use kms_server::auth::{self, Authenticator};
use kms_server::config::{Args, Config, LogFormat, Transport};
use kms_server::connections::Connections;
use kms_server::grpc::KmsGrpc;
use kms_server::limits::Admission;
use kms_server::metrics::{self, Gauge, Metrics};
use kms_server::status::ErrorChain;
use kms_store::RocksStore;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::HealthService;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

/// How often kmsd looks for keys whose deletion or automatic rotation is due.
const SCHEDULER_INTERVAL: Duration = Duration::from_secs(60);

/// The log directive that silences cryptoki's complaints about unnamed mechanisms.
const QUIET_CRYPTOKI: &str = "cryptoki::mechanism=off";

/// How often the health service checks that the HSM answers.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// How often the `kms_keys` gauge counts the keys again (it reads every record).
const KEY_COUNT_INTERVAL: Duration = Duration::from_secs(30);

/// How long a request waits for a free HSM session before DependencyTimeoutException.
const HSM_SESSION_WAIT: Duration = Duration::from_secs(10);

/// HTTP/2 PINGs go to a connection that sent nothing for this long...
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);

/// ...and a peer that does not answer one within this is dropped.
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The most requests under way at once on one client connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 200;

/// How often kmsd looks at the client CRL file's modification time.
const CRL_CHECK_INTERVAL: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let args = Args::parse();
    let check_only = args.check_config;
    let config = match Config::load(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("kmsd: {e}");
            return ExitCode::from(2);
        }
    };
    if check_only {
        return match check_config(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kmsd: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(&config.log_level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"))
        // cryptoki logs an ERROR for every mechanism of the module's list it has no name for
        // (vendor mechanisms, and some standard ones): noise, not kmsd's errors.
        .add_directive(QUIET_CRYPTOKI.parse().unwrap_or_default());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        // One object a line; a request's lines carry its span: {"request_id", "rpc"}.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("kmsd cannot start: {e:#}");
            eprintln!("kmsd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The HSM, logged in, its calls observed by `metrics`; `namespace` is the store's instance id.
fn open_hsm(
    config: &Config,
    namespace: [u8; 16],
    metrics: &Arc<Metrics>,
) -> anyhow::Result<HsmKeyStore> {
    let hsm = open_checked_hsm(config, namespace)?;
    Ok(hsm
        .with_observer(metrics.hsm_observer())
        .with_unwrapped_capacity(config.unwrapped_cache)
        .with_domain_custody(config.domain_custody))
}

/// The HSM, logged in, refused when the configured key storage needs mechanisms its module
/// lacks.
fn open_checked_hsm(config: &Config, namespace: [u8; 16]) -> anyhow::Result<HsmKeyStore> {
    let hsm = HsmKeyStore::open(
        HsmConfig {
            module: config.pkcs11_module.clone(),
            token_label: config.token_label.clone(),
            slot: config.pkcs11_slot,
            pin: config.read_pin()?,
            max_sessions: config.hsm_max_sessions,
            session_wait: HSM_SESSION_WAIT,
        },
        namespace,
    )?
    .with_wrap_mechanism(config.wrap_mechanism);
    if config.key_storage == KeyStorage::Wrapped {
        let missing = hsm.missing_for_wrapped_storage()?;
        if !missing.is_empty() {
            anyhow::bail!(
                "the HSM's module lacks {}, which --key-storage wrapped (the default) needs to \
                 keep key versions wrapped under a domain key; use --key-storage token (one \
                 token object per key version) with this HSM",
                missing.join(", ")
            );
        }
    }
    Ok(hsm)
}

/// `--check-config`: everything kmsd checks before it serves, short of opening the store and
/// the audit log: the PIN, the module, the token and the login, the TLS files, the data dir's
/// place. Prints what kmsd would use.
fn check_config(config: &Config) -> anyhow::Result<()> {
    let capabilities = capability_lines(&open_checked_hsm(config, [0; 16])?);
    if let Transport::Tls(files) = &config.transport {
        auth::mtls(files, None).context("cannot set up TLS")?;
    }
    let data_dir = &config.data_dir;
    if data_dir.exists() && !data_dir.is_dir() {
        anyhow::bail!("the data dir {} is not a directory", data_dir.display());
    }
    let parent = data_dir.parent().filter(|p| !p.as_os_str().is_empty());
    if !data_dir.exists() && parent.is_some_and(|p| !p.is_dir()) {
        anyhow::bail!(
            "the data dir {} cannot be created: its parent is not a directory",
            data_dir.display()
        );
    }
    println!("kmsd: the configuration is valid");
    println!("  listen          {}", config.listen);
    println!("  data dir        {}", data_dir.display());
    println!(
        "  HSM             token {:?} in {} (PIN read, login works)",
        config.token_label,
        config.pkcs11_module.display()
    );
    println!(
        "  transport       {}",
        match &config.transport {
            Transport::Dev => "--dev: no TLS, every caller is the administrator `dev`".to_owned(),
            Transport::Tls(files) => format!(
                "mutual TLS, client certificate required at the handshake; principals from {}; \
                 {}; at most {} connections, closed after {:?} without a request",
                if files.allow_cn_principals {
                    "URI SANs, else CN=<subject CN>"
                } else {
                    "URI SANs only"
                },
                files.client_crl.as_ref().map_or_else(
                    || "no CRL".to_owned(),
                    |crl| format!("CRL {}", crl.display())
                ),
                config.connections.max_connections,
                config.connections.idle_timeout
            ),
        }
    );
    println!(
        "  administrators  {}",
        config.effective_administrators().join(", ")
    );
    for line in capabilities {
        println!("  {line}");
    }
    println!(
        "  key storage     {}",
        match config.key_storage {
            KeyStorage::Wrapped => format!(
                "wrapped under the domain key (the module has AES key wrap); {} kept unwrapped",
                config.unwrapped_cache
            ),
            KeyStorage::Token => "one token object per key version".to_owned(),
        }
    );
    println!(
        "  domain keys     {}",
        match config.domain_custody {
            DomainCustody::Sealed => "sealed: made by kmsd, never rotated",
            DomainCustody::Trusted => {
                "trusted: made by the security officer (kmsctl hsm make-domain-key), rotatable"
            }
        }
    );
    println!("  audit log       {}", config.audit_log.display());
    if let Some(metrics) = config.metrics_listen {
        println!("  metrics         http://{metrics}/metrics (probes: /livez, /readyz)");
    }
    let limits = &config.limits;
    println!(
        "  limits          {} requests at once; {}; timeout {:?}; drain {:?}",
        limits.max_concurrent,
        limits.per_caller.map_or_else(
            || "no per-caller rate limit".to_owned(),
            |rate| format!(
                "{} requests/s per caller (bursts of {})",
                rate.per_second, rate.burst
            )
        ),
        limits.request_timeout,
        config.drain_timeout
    );
    println!(
        "  logs            {:?}, filter {:?}",
        config.log_format, config.log_level
    );
    Ok(())
}

/// What `--check-config` says of the module: the key specs it serves, and the template
/// attributes it does not know (when there are any).
fn capability_lines(hsm: &HsmKeyStore) -> Vec<String> {
    let mut lines = vec![format!("key specs       {}", key_specs_line(hsm))];
    let unknown = hsm.unknown_attributes();
    if !unknown.is_empty() {
        lines.push(format!(
            "attributes      the module does not know {}; kmsd leaves them out of its templates",
            unknown.join(", ")
        ));
    }
    lines
}

/// The key specs the HSM serves, and those it cannot with the mechanisms its module lacks.
fn key_specs_line(hsm: &HsmKeyStore) -> String {
    let unserved = hsm.unserved_key_specs();
    if unserved.is_empty() {
        return "all (the module has every mechanism they need)".to_owned();
    }
    let served: Vec<&str> = ALL_KEY_SPECS
        .iter()
        .filter(|spec| !unserved.iter().any(|u| u.spec == **spec))
        .map(|spec| spec.as_str())
        .collect();
    let refused: Vec<String> = unserved
        .iter()
        .map(|u| format!("{} (lacks {})", u.spec.as_str(), u.missing.join(", ")))
        .collect();
    format!("{}; refused: {}", served.join(", "), refused.join("; "))
}

/// Every key spec, in the order `--check-config` lists them.
const ALL_KEY_SPECS: [KeySpec; 8] = [
    KeySpec::SymmetricDefault,
    KeySpec::Hmac256,
    KeySpec::Hmac384,
    KeySpec::Hmac512,
    KeySpec::Rsa2048,
    KeySpec::Rsa3072,
    KeySpec::Rsa4096,
    KeySpec::EccNistP256,
];

/// The key specs the HSM cannot make, with why, for the service to refuse; logged.
fn unserved_key_specs(hsm: &HsmKeyStore) -> Vec<(KeySpec, String)> {
    hsm.unserved_key_specs()
        .into_iter()
        .map(|u| {
            let why = format!("its module lacks {}", u.missing.join(", "));
            warn!(
                key_spec = u.spec.as_str(),
                why, "the HSM cannot make keys of this spec; CreateKey refuses them"
            );
            (u.spec, why)
        })
        .collect()
}

fn run(config: &Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let metrics = Arc::new(Metrics::new());
    let health = Health::new();
    // From the start, so that /livez answers (and /readyz says 503) while kmsd opens the HSM,
    // reconciles and runs due work, however long that takes.
    if let Some(address) = config.metrics_listen {
        let listener = runtime
            .block_on(TcpListener::bind(address))
            .with_context(|| format!("cannot serve metrics on {address}"))?;
        runtime.spawn(metrics::serve(
            listener,
            Arc::clone(&metrics),
            Arc::clone(&health.ready),
        ));
    }
    let store = Arc::new(RocksStore::open(&config.data_dir)?);
    let hsm = Arc::new(open_hsm(config, store.instance_id(), &metrics)?);
    info!(
        token = hsm.token_label(),
        module = %config.pkcs11_module.display(),
        data_dir = %config.data_dir.display(),
        "opened the HSM token and the metadata store"
    );
    let signer = Arc::new(
        HsmAuditSigner::open(Arc::clone(&hsm)).context("cannot open the audit signing key")?,
    );
    let public_key_file = write_audit_public_key(config, &signer)?;
    let audit = Arc::new(
        AuditLog::open(
            &config.audit_log,
            store.instance_id(),
            signer.clone(),
            Arc::clone(&store) as Arc<dyn kms_core::MetadataStore>,
        )
        .with_context(|| format!("cannot open the audit log {}", config.audit_log.display()))?,
    );
    info!(
        audit_log = %config.audit_log.display(),
        public_key = %public_key_file.display(),
        "audit log open; verify it with `kmsctl audit verify`"
    );
    let administrators = config.effective_administrators();
    if administrators.is_empty() && config.server_policy.is_none() {
        warn!("no administrators and no server policy: nobody can create keys");
    }
    let kms = Arc::new(
        Kms::new(store.clone(), hsm.clone(), Arc::new(SystemClock))
            .with_max_keys(config.max_keys)
            .with_key_storage(config.key_storage)
            .with_unserved_key_specs(unserved_key_specs(&hsm))
            .with_authorization(Authorization {
                administrators,
                server_policy: config.server_policy.clone(),
            }),
    );
    open_domain(&kms)?;
    let unfinished = start_due_work(&runtime, &kms, config.startup_budget)?;

    let admission = Arc::new(Admission::new(config.limits));
    add_gauges(&metrics, &hsm, &kms, &admission);
    let parts = Parts {
        kms,
        audit: Arc::clone(&audit),
        metrics,
        admission,
        health,
        checks: Checks {
            hsm: Arc::clone(&hsm),
            signer,
            store: Arc::clone(&store),
            audit: Arc::clone(&audit),
        },
    };
    runtime.spawn(scheduler(Arc::clone(&parts.kms), unfinished));
    runtime.spawn(rewrapper(Arc::clone(&parts.kms)));
    runtime.block_on(serve(config, parts))?;
    // Waits for blocking work still running (a request past its timeout, scheduled work).
    drop(runtime);
    if let Ok(audit) = Arc::try_unwrap(audit) {
        audit.close().context("closing the audit log")?;
    } else {
        warn!("the audit log is still in use at shutdown; every record is already synced");
    }
    store.flush()?;
    let closed = hsm.close();
    info!(
        sessions = closed.sessions,
        finalized = closed.finalized,
        "closed the HSM sessions and finalized PKCS#11"
    );
    info!("kmsd stopped");
    Ok(())
}

/// A count as a gauge's value.
#[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
fn count(n: usize) -> f64 {
    n as f64
}

/// The keys by state, and when they were counted.
type KeyCounts = (std::time::Instant, Vec<(&'static str, usize)>);

/// Gauges read at every scrape: the HSM session pool, requests in flight, keys by state.
fn add_gauges(
    metrics: &Metrics,
    hsm: &Arc<HsmKeyStore>,
    kms: &Arc<Kms>,
    admission: &Arc<Admission>,
) {
    let hsm = Arc::clone(hsm);
    metrics.add_gauges(Box::new(move || {
        let sessions = hsm.session_stats();
        vec![
            Gauge {
                name: "kms_hsm_connected",
                help: "1 while kmsd is connected to the PKCS#11 module, else 0.",
                samples: vec![(None, f64::from(u8::from(sessions.connected)))],
            },
            Gauge {
                name: "kms_hsm_sessions",
                help: "HSM sessions of the pool: open, and lent to a call now.",
                samples: vec![
                    (Some(("state", "open")), count(sessions.open)),
                    (Some(("state", "in_use")), count(sessions.in_use)),
                ],
            },
            Gauge {
                name: "kms_hsm_sessions_max",
                help: "The most HSM sessions the pool opens (--hsm-max-sessions).",
                samples: vec![(None, count(sessions.max))],
            },
        ]
    }));
    let admission = Arc::clone(admission);
    metrics.add_gauges(Box::new(move || {
        let running = count(admission.running());
        vec![Gauge {
            name: "kms_requests_in_flight",
            help: "Requests running now (--max-concurrent-requests is the limit).",
            samples: vec![(None, running)],
        }]
    }));
    let kms = Arc::clone(kms);
    let cache: std::sync::Mutex<Option<KeyCounts>> = std::sync::Mutex::new(None);
    metrics.add_gauges(Box::new(move || {
        let mut cache = cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let fresh = cache
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < KEY_COUNT_INTERVAL);
        if !fresh {
            match kms.count_keys_by_state() {
                Ok(counts) => {
                    *cache = Some((std::time::Instant::now(), counts.into_iter().collect()));
                }
                Err(e) => warn!(error = %e, "cannot count the keys for the metrics"),
            }
        }
        let Some((_, counts)) = cache.as_ref() else {
            return Vec::new();
        };
        let samples = counts
            .iter()
            .map(|(state, n)| (Some(("state", *state)), count(*n)))
            .collect();
        vec![Gauge {
            name: "kms_keys",
            help: "Keys by state, counted at most every 30 s (Deleted keys are tombstones).",
            samples,
        }]
    }));
}

/// Runs the startup work ([`run_due_work`]) for at most `budget`; returns it, still running,
/// when it takes longer (it then finishes in the background): a store of a million keys
/// takes longer to read than a readiness probe should wait. Until reconciliation has
/// counted the keys, CreateKey and CreateAlias are refused.
fn start_due_work(
    runtime: &tokio::runtime::Runtime,
    kms: &Arc<Kms>,
    budget: Duration,
) -> anyhow::Result<Option<tokio::task::JoinHandle<anyhow::Result<()>>>> {
    kms.begin_counting();
    let mut startup = {
        let kms = Arc::clone(kms);
        runtime.spawn_blocking(move || run_due_work(&kms))
    };
    let Ok(done) = runtime.block_on(async { tokio::time::timeout(budget, &mut startup).await })
    else {
        info!(
            "the startup work (reconciliation, due deletions, expiries and rotations) continues \
             in the background; keys cannot be created until it has counted them"
        );
        return Ok(Some(startup));
    };
    done.context("the startup work panicked")??;
    Ok(None)
}

/// Makes the recorded domain key current in the HSM (for trusted custody, fails naming the
/// ceremony when the token lacks it).
fn open_domain(kms: &Kms) -> anyhow::Result<()> {
    let domain = kms
        .open_domain()
        .context("the current domain key is not usable")?;
    if let Some(domain) = domain {
        info!(
            domain = domain.version,
            rewrappable = domain.rewrappable,
            "using the current domain key"
        );
    }
    Ok(())
}

/// Reconciles the store with the HSM, then runs the deletions, expiries and rotations that
/// fell due while kmsd was down.
fn run_due_work(kms: &Kms) -> anyhow::Result<()> {
    let report = kms.reconcile().context("startup reconciliation failed")?;
    if report.abandoned_keys > 0
        || !report.unreferenced_objects.is_empty()
        || !report.missing_objects.is_empty()
    {
        warn!(
            abandoned_keys = report.abandoned_keys,
            unreferenced_objects = report.unreferenced_objects.len(),
            missing_objects = report.missing_objects.len(),
            "reconciled the store with the HSM"
        );
    }
    let done = kms
        .run_due_work()
        .context("running due deletions, expiries and rotations")?;
    if done.deleted > 0 {
        info!(
            keys = done.deleted,
            "ran the key deletions that fell due while kmsd was down"
        );
    }
    if done.expired > 0 {
        info!(
            keys = done.expired,
            "destroyed imported key material that expired while kmsd was down"
        );
    }
    if done.rotated > 0 {
        info!(
            keys = done.rotated,
            "ran the key rotations that fell due while kmsd was down"
        );
    }
    info!("startup work done: the store is reconciled and due work has run");
    Ok(())
}

/// What the server runs on.
struct Parts {
    kms: Arc<Kms>,
    audit: Arc<AuditLog>,
    metrics: Arc<Metrics>,
    admission: Arc<Admission>,
    health: Health,
    checks: Checks,
}

async fn serve(config: &Config, parts: Parts) -> anyhow::Result<()> {
    let Parts {
        kms,
        audit,
        metrics,
        admission,
        health,
        checks,
    } = parts;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;
    // grpc.health.v1: SERVING from now, NOT_SERVING as soon as shutdown starts.
    health.set(ServingStatus::Serving).await;
    // gRPC server reflection (v1), so grpcurl-style tools can list and call the API.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kms_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the reflection service")?;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let store = Arc::clone(&checks.store) as Arc<dyn kms_core::MetadataStore>;
    tokio::spawn(watch_health(health.clone(), checks, stop.clone()));
    {
        let health = health.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            health.set(ServingStatus::NotServing).await;
            let _ = stop_tx.send(true);
        });
    }
    let drain = config.drain_timeout;
    let limits = admission.limits();
    info!(
        max_concurrent_requests = limits.max_concurrent,
        rate_limit_per_principal = limits.per_caller.map_or(0.0, |r| r.per_second),
        request_timeout = ?limits.request_timeout,
        "request limits"
    );
    let service = |auth: Authenticator| {
        KmsGrpc::new(kms, Arc::new(auth), audit)
            .with_metrics(Arc::clone(&metrics))
            .with_admission(admission)
    };
    let router = |service| {
        tonic::transport::Server::builder()
            // Dead peers are found within 80 s; idle ones are closed by `Connections`.
            .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
            // tonic sets no limit unless asked; this is hyper's own default.
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .add_service(health.service())
            .add_service(reflection)
            .add_service(service)
    };
    match &config.transport {
        Transport::Dev => {
            info!(address = %local, token = %config.token_label, "kmsd listening");
            warn!(
                "DEVELOPMENT MODE: no TLS and no authentication; every caller is the \
                 administrator `dev`. Never use --dev for real keys."
            );
            let server = router(service(Authenticator::Dev).into_server())
                // Without TCP_NODELAY, a 4 KiB answer waits ~40 ms for the client's delayed ACK.
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    stopped(stop.clone()),
                );
            drain_bounded(server, stop, drain).await
        }
        Transport::Tls(files) => {
            let (acceptor, authenticator, trust) =
                auth::mtls(files, Some(store)).context("cannot set up TLS")?;
            tokio::spawn(reload_crls(trust, stop.clone()));
            let connections = Connections::new(config.connections, Some(Arc::clone(&metrics)));
            add_connection_gauge(&metrics, &connections);
            info!(address = %local, token = %config.token_label,
                max_connections = config.connections.max_connections,
                idle_timeout = ?config.connections.idle_timeout,
                "kmsd listening with mutual TLS");
            let incoming = connections.incoming(listener, acceptor);
            let server = router(
                service(authenticator)
                    .with_connections(connections)
                    .into_server(),
            )
            .serve_with_incoming_shutdown(incoming, stopped(stop.clone()));
            drain_bounded(server, stop, drain).await
        }
    }
}

/// The health of the server (`""`) and of the KMS service, for grpc.health.v1 and `/readyz`.
#[derive(Clone)]
struct Health {
    reporter: tonic_health::server::HealthReporter,
    ready: Arc<AtomicBool>,
}

impl Health {
    fn new() -> Self {
        Health {
            reporter: tonic_health::server::HealthReporter::new(),
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The grpc.health.v1 service answering from this health.
    fn service(&self) -> HealthServer<HealthService> {
        HealthServer::new(HealthService::from_health_reporter(self.reporter.clone()))
    }

    async fn set(&self, status: ServingStatus) {
        use tonic::server::NamedService as _;
        self.ready
            .store(status == ServingStatus::Serving, Ordering::SeqCst);
        self.reporter
            .set_service_status(KeyManagementServiceServer::<KmsGrpc>::NAME, status)
            .await;
        self.reporter.set_service_status("", status).await;
    }
}

/// What must work for kmsd to serve.
struct Checks {
    hsm: Arc<HsmKeyStore>,
    signer: Arc<HsmAuditSigner>,
    store: Arc<RocksStore>,
    audit: Arc<AuditLog>,
}

impl Checks {
    /// Whether the HSM signs with the audit key (an HSM operation on a token object, as every
    /// request makes), the store takes a synced write, and the audit log has not failed;
    /// else what fails. When the HSM fails, reconnects to it first (some modules, SoftHSM2
    /// among them, never see a lost token again without C_Finalize and C_Initialize).
    fn run(&self) -> Result<(), String> {
        match self.signer.probe() {
            // Every session busy for the whole wait: overloaded, not lost.
            Ok(()) | Err(kms_core::HsmError::Timeout) => {}
            Err(first) => {
                if let Err(e) = self.hsm.reconnect() {
                    return Err(format!(
                        "the HSM fails ({first}) and reconnecting failed: {e}"
                    ));
                }
                self.signer
                    .probe()
                    .map_err(|e| format!("the HSM fails after reconnecting: {e}"))?;
                info!("reconnected to the HSM");
            }
        }
        self.store
            .check_writable()
            .map_err(|e| format!("the metadata store takes no writes: {e}"))?;
        if self.audit.is_failed() {
            return Err("the audit log failed; restart kmsd".into());
        }
        Ok(())
    }
}

/// Every [`HEALTH_INTERVAL`], runs the [`Checks`] and sets the health NOT_SERVING while they
/// fail, SERVING again when they pass. Stops at shutdown, which sets NOT_SERVING itself.
async fn watch_health(
    health: Health,
    checks: Checks,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let checks = Arc::new(checks);
    let mut serving = true;
    loop {
        tokio::select! {
            () = tokio::time::sleep(HEALTH_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        let run = Arc::clone(&checks);
        let result = tokio::task::spawn_blocking(move || run.run())
            .await
            .unwrap_or_else(|e| Err(format!("the health check panicked: {e}")));
        if result.is_ok() == serving || *stop.borrow() {
            continue;
        }
        serving = result.is_ok();
        match result {
            Ok(()) => {
                info!("kmsd works again: health is SERVING");
                health.set(ServingStatus::Serving).await;
            }
            Err(problem) => {
                warn!(problem, "health is NOT_SERVING until this is fixed");
                health.set(ServingStatus::NotServing).await;
            }
        }
    }
}
/// Resolves once the shutdown signal came.
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Runs `server` until it has drained after the shutdown signal, or until `limit` after the
/// signal, when clients keep idle connections open.
async fn drain_bounded(
    server: impl Future<Output = Result<(), tonic::transport::Error>>,
    stop: tokio::sync::watch::Receiver<bool>,
    limit: Duration,
) -> anyhow::Result<()> {
    tokio::select! {
        result = server => result.context("the gRPC server failed"),
        () = async {
            stopped(stop).await;
            tokio::time::sleep(limit).await;
        } => {
            warn!(drain_timeout = ?limit, "connections still open after the drain timeout; stopping anyway");
            Ok(())
        }
    }
}

/// Writes the audit public key (PEM) next to the audit log, for `kmsctl audit verify`; the
/// HSM holds the private half. Returns the file.
fn write_audit_public_key(config: &Config, signer: &HsmAuditSigner) -> anyhow::Result<PathBuf> {
    use kms_core::audit::CheckpointSigner as _;
    let pem = signer
        .public_key()
        .to_public_key_pem()
        .context("cannot encode the audit public key")?;
    let path = config.audit_log.with_extension("pub.pem");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(pem.as_str()) {
        std::fs::write(&path, &pem).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(path)
}

/// Runs due deletions, expiries of imported material and automatic rotations every
/// [`SCHEDULER_INTERVAL`].
async fn scheduler(kms: Arc<Kms>, startup: Option<tokio::task::JoinHandle<anyhow::Result<()>>>) {
    if let Some(startup) = startup {
        match startup.await {
            Ok(Ok(())) => info!("the startup work finished in the background"),
            Ok(Err(e)) => warn!(error = %e, "the startup work failed; it is tried again"),
            Err(e) => warn!(error = %e, "the startup work panicked; it is tried again"),
        }
    }
    let mut interval = tokio::time::interval(SCHEDULER_INTERVAL);
    interval.tick().await; // the first tick is immediate; startup already ran due work
    loop {
        interval.tick().await;
        let kms = Arc::clone(&kms);
        let work = tokio::task::spawn_blocking(move || {
            if !kms.counted() {
                // The startup reconciliation failed: until it succeeds, no key is created.
                kms.reconcile()?;
            }
            kms.run_due_work()
        });
        match work.await {
            Ok(Ok(done)) if done == kms_core::service::DueWork::default() => {}
            Ok(Ok(done)) => {
                info!(
                    deleted = done.deleted,
                    expired = done.expired,
                    rotated = done.rotated,
                    "ran scheduled key work"
                );
            }
            Ok(Err(e)) => warn!(error = %e, "scheduled key work failed; will retry"),
            Err(e) => warn!(error = %e, "scheduled key work panicked"),
        }
    }
}

/// Rewraps key versions under the current domain key whenever a pass is wanted: after the
/// start (which resumes a rotation a crash interrupted) and after each domain key rotation. A
/// failed pass is tried again after [`REWRAP_RETRY`].
async fn rewrapper(kms: Arc<Kms>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if !kms.rewrap_wanted() {
            continue;
        }
        let pass = Arc::clone(&kms);
        match tokio::task::spawn_blocking(move || pass.run_rewrap_pass()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "rewrapping under the current domain key failed; will retry");
                tokio::time::sleep(REWRAP_RETRY).await;
            }
            Err(e) => {
                warn!(error = %e, "rewrapping panicked; will retry");
                tokio::time::sleep(REWRAP_RETRY).await;
            }
        }
    }
}

/// How long a failed rewrapping pass waits before the next.
const REWRAP_RETRY: Duration = Duration::from_secs(30);

/// Puts the client CRL file's revocations in force when it changes (checked every
/// [`CRL_CHECK_INTERVAL`]) and on SIGHUP, until `stop`. A file that does not load leaves the
/// revocations in force, with an error in the log.
async fn reload_crls(trust: Arc<auth::ClientTrust>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP; the CRL file is still watched");
            None
        }
    };
    let mut tick = tokio::time::interval(CRL_CHECK_INTERVAL);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async { match &mut hangup { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            _ = stop.changed() => return,
        };
        let trust = Arc::clone(&trust);
        let reloaded = tokio::task::spawn_blocking(move || {
            if forced {
                trust.reload()
            } else {
                trust.reload_if_changed()
            }
        })
        .await;
        match reloaded {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(error = %ErrorChain(&e),
                "the client CRL file could not be loaded; the revocations in force stay"),
            Err(e) => error!(error = %e, "reloading the client CRL file panicked"),
        }
    }
}

/// The gauge of open client connections.
fn add_connection_gauge(metrics: &Metrics, connections: &Arc<Connections>) {
    let connections = Arc::clone(connections);
    metrics.add_gauges(Box::new(move || {
        vec![Gauge {
            name: "kms_connections_open",
            help: "Client connections open, past their TLS handshake.",
            samples: vec![(None, count(connections.open()))],
        }]
    }));
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = terminate => {},
    }
    info!("shutting down: draining in-flight requests");
}
