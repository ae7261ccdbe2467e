//! kmsd: opens the metadata store and the HSM, reconciles them, and serves gRPC until SIGTERM
//! or SIGINT.
#![forbid(unsafe_code)]

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use kms_core::audit::AuditLog;
use kms_core::service::Authorization;
use kms_core::{Kms, MetadataStore, SystemClock};
use kms_hsm::{HsmAuditSigner, HsmConfig, HsmKeyStore};
use kms_proto::v1::key_management_service_server::KeyManagementServiceServer;
use kms_server::auth::{self, Authenticator};
use kms_server::config::{Args, Config, Transport};
use kms_server::grpc::KmsGrpc;
use kms_server::metrics::{self, Metrics};
use kms_store::RocksStore;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

/// How often kmsd looks for keys whose deletion or automatic rotation is due.
const SCHEDULER_INTERVAL: Duration = Duration::from_secs(60);

/// How often the health service checks that the HSM answers.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// How long in-flight requests get to finish after SIGTERM.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// How long a request waits for a free HSM session before DependencyTimeoutException.
const HSM_SESSION_WAIT: Duration = Duration::from_secs(10);

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
        .unwrap_or_else(|| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("kmsd cannot start: {e:#}");
            eprintln!("kmsd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--check-config`: everything kmsd checks before it serves, short of opening the store and
/// the audit log: the PIN, the module, the token and the login, the TLS files, the data dir's
/// place. Prints what kmsd would use.
fn check_config(config: &Config) -> anyhow::Result<()> {
    let pin = config.read_pin()?;
    let hsm = HsmKeyStore::open(
        HsmConfig {
            module: config.pkcs11_module.clone(),
            token_label: config.token_label.clone(),
            pin,
            max_sessions: 1,
            session_wait: HSM_SESSION_WAIT,
        },
        [0; 16],
    )?;
    drop(hsm);
    if let Transport::Tls(files) = &config.transport {
        auth::mtls(files).context("cannot set up TLS")?;
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
        match config.transport {
            Transport::Dev => "--dev: no TLS, every caller is the administrator `dev`",
            Transport::Tls(_) => "mutual TLS",
        }
    );
    println!(
        "  administrators  {}",
        config.effective_administrators().join(", ")
    );
    println!("  audit log       {}", config.audit_log.display());
    if let Some(metrics) = config.metrics_listen {
        println!("  metrics         http://{metrics}/metrics");
    }
    Ok(())
}

fn run(config: &Config) -> anyhow::Result<()> {
    let store = Arc::new(RocksStore::open(&config.data_dir)?);
    let pin = config.read_pin()?;
    let hsm = Arc::new(HsmKeyStore::open(
        HsmConfig {
            module: config.pkcs11_module.clone(),
            token_label: config.token_label.clone(),
            pin,
            max_sessions: config.hsm_max_sessions,
            session_wait: HSM_SESSION_WAIT,
        },
        store.instance_id(),
    )?);
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
        AuditLog::open(&config.audit_log, store.instance_id(), signer.clone())
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
    let metrics = {
        let hsm = Arc::clone(&hsm);
        Arc::new(Metrics::new(Arc::new(move || hsm.call_counts())))
    };
    let kms = Arc::new(
        Kms::new(store.clone(), hsm, Arc::new(SystemClock))
            .with_max_keys(config.max_keys)
            .with_authorization(Authorization {
                administrators,
                server_policy: config.server_policy.clone(),
            }),
    );
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

    run_due_work(&kms)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.spawn(scheduler(Arc::clone(&kms)));
    if let Some(address) = config.metrics_listen {
        let listener = runtime
            .block_on(TcpListener::bind(address))
            .with_context(|| format!("cannot serve metrics on {address}"))?;
        runtime.spawn(metrics::serve(listener, Arc::clone(&metrics)));
    }
    runtime.block_on(serve(config, kms, Arc::clone(&audit), metrics, signer))?;
    drop(runtime);
    if let Ok(audit) = Arc::try_unwrap(audit) {
        audit.close().context("closing the audit log")?;
    } else {
        warn!("the audit log is still in use at shutdown; every record is already synced");
    }
    store.flush()?;
    info!("kmsd stopped");
    Ok(())
}

/// Runs the deletions, expiries and rotations that fell due while kmsd was down.
fn run_due_work(kms: &Kms) -> anyhow::Result<()> {
    let deleted = kms
        .run_due_deletions()
        .context("running due key deletions")?;
    if deleted > 0 {
        info!(
            keys = deleted,
            "ran the key deletions that fell due while kmsd was down"
        );
    }
    let expired = kms
        .run_due_expirations()
        .context("expiring imported key material")?;
    if expired > 0 {
        info!(
            keys = expired,
            "destroyed imported key material that expired while kmsd was down"
        );
    }
    let due = kms
        .run_due_rotations()
        .context("running due key rotations")?;
    if due > 0 {
        info!(
            keys = due,
            "ran the key rotations that fell due while kmsd was down"
        );
    }
    Ok(())
}

async fn serve(
    config: &Config,
    kms: Arc<Kms>,
    audit: Arc<AuditLog>,
    metrics: Arc<Metrics>,
    signer: Arc<HsmAuditSigner>,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;
    // grpc.health.v1: SERVING from now, NOT_SERVING as soon as shutdown starts.
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::Serving).await;
    // gRPC server reflection (v1), so grpcurl-style tools can list and call the API.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kms_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("cannot build the reflection service")?;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(watch_hsm(health.clone(), signer, stop.clone()));
    tokio::spawn(async move {
        shutdown_signal().await;
        set_health(&health, ServingStatus::NotServing).await;
        let _ = stop_tx.send(true);
    });
    match &config.transport {
        Transport::Dev => {
            info!(address = %local, token = %config.token_label, "kmsd listening");
            warn!(
                "DEVELOPMENT MODE: no TLS and no authentication; every caller is the \
                 administrator `dev`. Never use --dev for real keys."
            );
            let service = KmsGrpc::new(kms, Arc::new(Authenticator::Dev), audit)
                .with_metrics(metrics)
                .into_server();
            let server = tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(reflection)
                .add_service(service)
                // Without TCP_NODELAY, a 4 KiB answer waits ~40 ms for the client's delayed ACK.
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    stopped(stop.clone()),
                );
            drain_bounded(server, stop).await
        }
        Transport::Tls(files) => {
            let (acceptor, authenticator) = auth::mtls(files).context("cannot set up TLS")?;
            info!(address = %local, token = %config.token_label, "kmsd listening with mutual TLS");
            let service = KmsGrpc::new(kms, Arc::new(authenticator), audit)
                .with_metrics(metrics)
                .into_server();
            let server = tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(reflection)
                .add_service(service)
                .serve_with_incoming_shutdown(
                    auth::tls_incoming(listener, acceptor),
                    stopped(stop.clone()),
                );
            drain_bounded(server, stop).await
        }
    }
}

/// Every [`HEALTH_INTERVAL`], signs a probe with the audit key (an HSM operation on a token
/// object, as every request makes) and sets the health service NOT_SERVING while it fails,
/// SERVING again when it works. Stops at shutdown, which sets NOT_SERVING itself.
async fn watch_hsm(
    health: tonic_health::server::HealthReporter,
    signer: Arc<HsmAuditSigner>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut serving = true;
    loop {
        tokio::select! {
            () = tokio::time::sleep(HEALTH_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        let signer = Arc::clone(&signer);
        let answers = tokio::task::spawn_blocking(move || signer.probe())
            .await
            .unwrap_or(false);
        if answers == serving || *stop.borrow() {
            continue;
        }
        serving = answers;
        if answers {
            info!("the HSM answers again: health is SERVING");
            set_health(&health, ServingStatus::Serving).await;
        } else {
            warn!("the HSM does not answer: health is NOT_SERVING until it does");
            set_health(&health, ServingStatus::NotServing).await;
        }
    }
}

/// Sets the health of the server (`""`) and of the KMS service.
async fn set_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    use tonic::server::NamedService as _;
    health
        .set_service_status(KeyManagementServiceServer::<KmsGrpc>::NAME, status)
        .await;
    health.set_service_status("", status).await;
}

/// Resolves once the shutdown signal came.
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Runs `server` until it has drained after the shutdown signal, or until
/// [`DRAIN_LIMIT`] after the signal, when clients keep idle connections open.
async fn drain_bounded(
    server: impl Future<Output = Result<(), tonic::transport::Error>>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    tokio::select! {
        result = server => result.context("the gRPC server failed"),
        () = async {
            stopped(stop).await;
            tokio::time::sleep(DRAIN_LIMIT).await;
        } => {
            warn!("connections still open {} s after the shutdown signal; stopping anyway",
                DRAIN_LIMIT.as_secs());
            Ok(())
        }
    }
}

/// Writes the audit public key (PEM) next to the audit log, for `kmsctl audit verify`; the
/// HSM holds the private half. Returns the file.
fn write_audit_public_key(config: &Config, signer: &HsmAuditSigner) -> anyhow::Result<PathBuf> {
    use kms_core::audit::CheckpointSigner as _;
    use p256::pkcs8::{EncodePublicKey as _, LineEnding};
    let pem = signer
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .context("cannot encode the audit public key")?;
    let path = config.audit_log.with_extension("pub.pem");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(pem.as_str()) {
        std::fs::write(&path, &pem).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(path)
}

/// Runs due deletions, expiries of imported material and automatic rotations every
/// [`SCHEDULER_INTERVAL`].
async fn scheduler(kms: Arc<Kms>) {
    let mut interval = tokio::time::interval(SCHEDULER_INTERVAL);
    interval.tick().await; // the first tick is immediate; startup already ran due work
    loop {
        interval.tick().await;
        let kms = Arc::clone(&kms);
        let work = tokio::task::spawn_blocking(move || {
            Ok::<_, kms_core::KmsError>((
                kms.run_due_deletions()?,
                kms.run_due_expirations()?,
                kms.run_due_rotations()?,
            ))
        });
        match work.await {
            Ok(Ok((0, 0, 0))) => {}
            Ok(Ok((deleted, expired, rotated))) => {
                info!(deleted, expired, rotated, "ran scheduled key work");
            }
            Ok(Err(e)) => warn!(error = %e, "scheduled key work failed; will retry"),
            Err(e) => warn!(error = %e, "scheduled key work panicked"),
        }
    }
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
