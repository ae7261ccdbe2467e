//! kmsd's configuration: command-line flags over an optional TOML file, in two stages. The raw
//! stage is what serde and clap read; [`Config`] holds only validated values.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use kms_core::key::KeyStorage;
use kms_core::policy::KeyPolicy;
use kms_hsm::{DomainCustody, HsmKeyStore, MechanismType};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::auth::{DEV_PRINCIPAL, TlsFiles};
use crate::connections::ConnectionLimits;
use crate::limits::{Limits, Rate};

/// The environment variable that may hold the HSM user PIN.
pub const PIN_ENV: &str = "KMS_HSM_PIN";

/// Command-line flags. Each overrides the same setting of `--config`.
#[derive(Parser, Debug)]
#[command(
    name = "kmsd",
    version,
    about = "The HSM-backed key management service"
)]
pub struct Args {
    /// Address to listen on [default: 127.0.0.1:50051].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Directory of the RocksDB metadata store (created if missing).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Path of the PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so.
    #[arg(long, value_name = "PATH")]
    pub pkcs11_module: Option<PathBuf>,
    /// Label of the token that holds the keys.
    #[arg(long, value_name = "LABEL")]
    pub token_label: Option<String>,
    /// The slot of that token, for a module whose token information cryptoki cannot read
    /// (opencryptoki 3.8's soft token, slot 3): kmsd then checks the label where it can.
    #[arg(long, value_name = "ID")]
    pub pkcs11_slot: Option<u64>,
    /// File holding the token's user PIN (else the KMS_HSM_PIN environment variable).
    #[arg(long, value_name = "FILE")]
    pub pin_file: Option<PathBuf>,
    /// Most HSM sessions open at once [default: 8].
    #[arg(long, value_name = "N")]
    pub hsm_max_sessions: Option<usize>,
    /// The most keys there may be [default: 100000].
    #[arg(long, value_name = "N")]
    pub max_keys: Option<usize>,
    /// Where new key versions keep their material: `wrapped` under a domain key in the
    /// metadata store (the token holds only the domain keys), or one `token` object each
    /// [default: wrapped].
    #[arg(long, value_name = "STORAGE")]
    pub key_storage: Option<KeyStorageName>,
    /// The most wrapped key versions kept unwrapped in the HSM at once [default: 10000].
    #[arg(long, value_name = "N")]
    pub unwrapped_cache: Option<usize>,
    /// How domain keys are kept: `sealed` (kmsd makes them; never rotated) or `trusted`
    /// (the token's security officer makes them with `kmsctl hsm make-domain-key`; rotated
    /// with `kmsctl hsm rotate-domain`) [default: sealed].
    #[arg(long, value_name = "CUSTODY")]
    pub domain_custody: Option<DomainCustodyName>,
    /// The mechanism new sealed domain keys wrap with: CKM_AES_KEY_WRAP_PAD, or a vendor's
    /// number (0x8000...) [default: CKM_AES_KEY_WRAP_PAD].
    #[arg(long, value_name = "MECHANISM")]
    pub wrap_mechanism: Option<String>,
    /// Log filter, e.g. info or kms_core=debug [default: info; RUST_LOG also works].
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log lines as `text` or `json` (one object a line) [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// How long a request may run before it fails with DependencyTimeoutException, e.g. 30s
    /// or 500ms [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub request_timeout: Option<String>,
    /// How long in-flight requests get to finish after SIGTERM [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub drain_timeout: Option<String>,
    /// How long kmsd waits for its startup work (reconciliation and due work) before it
    /// serves anyway and finishes the work in the background [default: 3s].
    #[arg(long, value_name = "DURATION")]
    pub startup_budget: Option<String>,
    /// The most requests running at once; more get ThrottlingException [default: 512].
    #[arg(long, value_name = "N")]
    pub max_concurrent_requests: Option<usize>,
    /// Requests a second each caller may make; more get ThrottlingException. 0 turns the
    /// limit off [default: 5000].
    #[arg(long, value_name = "N")]
    pub rate_limit_per_principal: Option<u32>,
    /// Requests a caller may make at once after a quiet spell [default: twice the rate].
    #[arg(long, value_name = "N")]
    pub rate_limit_burst: Option<u32>,
    /// CreateKey, RotateKeyOnDemand and GetParametersForImport calls a second each caller may
    /// make (they make the HSM generate key material), in bursts of four times that. 0 turns
    /// the limit off [default: 5].
    #[arg(long, value_name = "N")]
    pub key_generation_rate_per_principal: Option<u32>,
    /// The most CreateKey, RotateKeyOnDemand and GetParametersForImport calls running at once,
    /// all callers together [default: 4].
    #[arg(long, value_name = "N")]
    pub max_concurrent_key_generations: Option<usize>,
    /// TOML configuration file; flags override its settings.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Development mode: no TLS, loopback only, and every caller is the administrator `dev`.
    #[arg(long)]
    pub dev: bool,
    /// The server's certificate chain (PEM), for mutual TLS.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The server's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// The CA certificate(s) (PEM) that issue client certificates.
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM) of the client CA: revoked client certificates are
    /// refused. Reloaded when the file changes and on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub tls_client_crl: Option<PathBuf>,
    /// Accept client certificates without a URI SAN; their principal is `CN=<subject CN>`.
    /// Off by default: only URI SANs name principals.
    #[arg(long)]
    pub allow_cn_principals: bool,
    /// The most client connections open at once, TLS handshakes included [default: 4096].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Close a client connection after this long without a request, e.g. 5m [default: 5m].
    #[arg(long, value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// The most connections open at once with one client certificate [default: 64].
    #[arg(long, value_name = "N")]
    pub max_connections_per_client: Option<usize>,
    /// A principal that key policies' "#administrators" stands for (full access to keys with
    /// the default policy) and that may call the server-level actions; repeat for more.
    /// Replaces the config file's list.
    #[arg(long = "administrator", value_name = "PRINCIPAL")]
    pub administrators: Vec<String>,
    /// A JSON policy saying who else may call the server-level actions (CreateKey, ListKeys,
    /// ListAliases, GenerateRandom) and take which alias names; its Deny statements bind every
    /// action.
    #[arg(long, value_name = "FILE")]
    pub server_policy_file: Option<PathBuf>,
    /// The audit log [default: DATA_DIR/audit.log].
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics [default: none].
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Check the configuration (flags, config file, PIN, token, TLS files) and exit: 0 when
    /// kmsd could start with it, 2 with the reason when not. Opens nothing for writing.
    #[arg(long)]
    pub check_config: bool,
}

/// The TOML file, as written. Unknown fields are refused, and so is a PIN in clear.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    pkcs11_module: Option<PathBuf>,
    token_label: Option<String>,
    pkcs11_slot: Option<u64>,
    pin_file: Option<PathBuf>,
    hsm_max_sessions: Option<usize>,
    max_keys: Option<usize>,
    key_storage: Option<KeyStorageName>,
    unwrapped_cache: Option<usize>,
    domain_custody: Option<DomainCustodyName>,
    wrap_mechanism: Option<String>,
    log_level: Option<String>,
    log_format: Option<LogFormat>,
    request_timeout: Option<String>,
    drain_timeout: Option<String>,
    startup_budget: Option<String>,
    max_concurrent_requests: Option<usize>,
    rate_limit_per_principal: Option<u32>,
    rate_limit_burst: Option<u32>,
    key_generation_rate_per_principal: Option<u32>,
    max_concurrent_key_generations: Option<usize>,
    max_connections: Option<usize>,
    idle_timeout: Option<String>,
    max_connections_per_client: Option<usize>,
    #[serde(default)]
    dev: bool,
    tls: Option<RawTls>,
    administrators: Option<Vec<String>>,
    server_policy_file: Option<PathBuf>,
    audit_log: Option<PathBuf>,
    metrics_listen: Option<SocketAddr>,
}

impl RawConfig {
    /// Reads and parses the TOML file at `path`.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = read_text(path)?;
        Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text; `Err` says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.message().to_owned())
    }
}

/// The `[tls]` table.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    client_crl: Option<PathBuf>,
    #[serde(default)]
    allow_cn_principals: bool,
}

/// `key_storage`: where new key versions keep their material.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KeyStorageName {
    /// Wrapped under a domain key, in the metadata store.
    #[default]
    Wrapped,
    /// One token object per version.
    Token,
}

/// `domain_custody`: how domain keys are kept (see the README's key hierarchy).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DomainCustodyName {
    /// Made by kmsd; what they unwrap is never wrapped again, so they are never rotated.
    #[default]
    Sealed,
    /// Made by the token's security officer (CKA_TRUSTED); rotatable.
    Trusted,
}

impl From<DomainCustodyName> for DomainCustody {
    fn from(name: DomainCustodyName) -> Self {
        match name {
            DomainCustodyName::Sealed => DomainCustody::Sealed,
            DomainCustodyName::Trusted => DomainCustody::Trusted,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line, for log collectors.
    Json,
}

/// How callers are authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// `--dev`: plaintext on loopback, every caller is the administrator `dev`.
    Dev,
    /// Mutual TLS.
    Tls(TlsFiles),
}

/// Where the PIN comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    /// A file; its content, without a trailing newline, is the PIN.
    File(PathBuf),
    /// The `KMS_HSM_PIN` environment variable.
    Env,
}

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The metadata store's directory.
    pub data_dir: PathBuf,
    /// The PKCS#11 module.
    pub pkcs11_module: PathBuf,
    /// The token label.
    pub token_label: String,
    /// The token's slot, when given.
    pub pkcs11_slot: Option<u64>,
    /// Where the PIN comes from (never the PIN itself).
    pub pin: PinSource,
    /// Most HSM sessions.
    pub hsm_max_sessions: usize,
    /// The most keys there may be.
    pub max_keys: usize,
    /// Where new key versions keep their material.
    pub key_storage: KeyStorage,
    /// The most key versions kept unwrapped.
    pub unwrapped_cache: usize,
    /// How domain keys are kept.
    pub domain_custody: DomainCustody,
    /// The mechanism new sealed domain keys wrap with.
    pub wrap_mechanism: MechanismType,
    /// The log filter.
    pub log_level: String,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// Admission limits and the request timeout.
    pub limits: Limits,
    /// The connection limit and idle timeout (with TLS).
    pub connections: ConnectionLimits,
    /// How long in-flight requests get after SIGTERM.
    pub drain_timeout: Duration,
    /// How long startup work may hold back serving.
    pub startup_budget: Duration,
    /// TLS, or `--dev`.
    pub transport: Transport,
    /// Principals that "#administrators" stands for, allowed the server-level actions.
    pub administrators: Vec<String>,
    /// Who else may call the server-level actions.
    pub server_policy: Option<KeyPolicy>,
    /// The audit log file.
    pub audit_log: PathBuf,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
}

/// A configuration that cannot be used, with what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for kmsd.
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A required setting is missing.
    #[error("{0} is required (flag --{0}, or `{1}` in the config file)")]
    Missing(&'static str, &'static str),
    /// A setting has a bad value.
    #[error("{0}")]
    Invalid(String),
    /// The PIN could not be read.
    #[error("{0}")]
    Pin(String),
}

impl Config {
    /// Merges the flags over the config file (if any) and validates the result.
    #[allow(clippy::too_many_lines)] // one setting after another reads best as one function
    pub fn load(args: Args) -> Result<Self, ConfigError> {
        let raw = match &args.config {
            Some(path) => RawConfig::read(path)?,
            None => RawConfig::default(),
        };
        let hsm_max_sessions = hsm_max_sessions(args.hsm_max_sessions.or(raw.hsm_max_sessions))?;
        let max_keys = max_keys(args.max_keys.or(raw.max_keys))?;
        let token_label = token_label(args.token_label.or(raw.token_label))?;
        let listen = args
            .listen
            .or(raw.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 50051)));
        let raw_tls = raw.tls.unwrap_or_default();
        let tls = [
            ("tls-cert", "tls.cert", args.tls_cert.or(raw_tls.cert)),
            ("tls-key", "tls.key", args.tls_key.or(raw_tls.key)),
            (
                "tls-client-ca",
                "tls.client_ca",
                args.tls_client_ca.or(raw_tls.client_ca),
            ),
        ];
        let transport = client_checks(
            transport(args.dev || raw.dev, tls, listen)?,
            args.tls_client_crl.or(raw_tls.client_crl),
            args.allow_cn_principals || raw_tls.allow_cn_principals,
        )?;
        let connections = connection_limits(
            args.max_connections.or(raw.max_connections),
            args.idle_timeout.or(raw.idle_timeout),
            args.max_connections_per_client
                .or(raw.max_connections_per_client),
        )?;
        let administrators = administrators(if args.administrators.is_empty() {
            raw.administrators.unwrap_or_default()
        } else {
            args.administrators
        })?;
        let server_policy = args
            .server_policy_file
            .or(raw.server_policy_file)
            .map(|path| read_server_policy(&path))
            .transpose()?;
        let data_dir = args
            .data_dir
            .or(raw.data_dir)
            .ok_or(ConfigError::Missing("data-dir", "data_dir"))?;
        let startup_budget = duration_setting(
            "startup-budget",
            args.startup_budget.or(raw.startup_budget),
            Duration::from_secs(3),
        )?;
        let drain_timeout = duration_setting(
            "drain-timeout",
            args.drain_timeout.or(raw.drain_timeout),
            Duration::from_secs(10),
        )?;
        let limits = limits(
            args.request_timeout.or(raw.request_timeout),
            args.max_concurrent_requests.or(raw.max_concurrent_requests),
            args.rate_limit_per_principal
                .or(raw.rate_limit_per_principal),
            args.rate_limit_burst.or(raw.rate_limit_burst),
            args.key_generation_rate_per_principal
                .or(raw.key_generation_rate_per_principal),
            args.max_concurrent_key_generations
                .or(raw.max_concurrent_key_generations),
        )?;
        let key_storage = args.key_storage.or(raw.key_storage).unwrap_or_default();
        let custody = args.domain_custody.or(raw.domain_custody);
        let wrap_mechanism = wrap_mechanism(args.wrap_mechanism.or(raw.wrap_mechanism))?;
        Ok(Config {
            listen,
            audit_log: args
                .audit_log
                .or(raw.audit_log)
                .unwrap_or_else(|| data_dir.join("audit.log")),
            data_dir,
            pkcs11_module: args
                .pkcs11_module
                .or(raw.pkcs11_module)
                .ok_or(ConfigError::Missing("pkcs11-module", "pkcs11_module"))?,
            token_label,
            pkcs11_slot: args.pkcs11_slot.or(raw.pkcs11_slot),
            pin: args
                .pin_file
                .or(raw.pin_file)
                .map_or(PinSource::Env, PinSource::File),
            hsm_max_sessions,
            max_keys,
            key_storage: key_storage.into(),
            unwrapped_cache: unwrapped_cache(args.unwrapped_cache.or(raw.unwrapped_cache))?,
            domain_custody: custody.unwrap_or_default().into(),
            wrap_mechanism,
            log_level: args
                .log_level
                .or(raw.log_level)
                .unwrap_or_else(|| "info".into()),
            log_format: args.log_format.or(raw.log_format).unwrap_or_default(),
            limits,
            connections,
            drain_timeout,
            startup_budget,
            transport,
            administrators,
            server_policy,
            metrics_listen: args.metrics_listen.or(raw.metrics_listen),
        })
    }

    /// The principals that are administrators: the configured ones, and `dev` in `--dev`.
    pub fn effective_administrators(&self) -> Vec<String> {
        let mut admins = self.administrators.clone();
        if self.transport == Transport::Dev && !admins.iter().any(|a| a == DEV_PRINCIPAL) {
            admins.insert(0, DEV_PRINCIPAL.to_owned());
        }
        admins
    }

    /// Reads the PIN from its source.
    pub fn read_pin(&self) -> Result<Zeroizing<String>, ConfigError> {
        let pin = match &self.pin {
            PinSource::File(path) => read_pin_file(path)?,
            PinSource::Env => Zeroizing::new(std::env::var(PIN_ENV).map_err(|_| {
                ConfigError::Pin(format!("no PIN: give --pin-file FILE or set {PIN_ENV}"))
            })?),
        };
        let trimmed = pin.trim_end_matches(['\n', '\r']);
        if trimmed.is_empty() {
            return Err(ConfigError::Pin("the PIN is empty".into()));
        }
        Ok(Zeroizing::new(trimmed.to_owned()))
    }
}

/// TLS when its three files are given, `--dev` when asked for; anything else is refused.
fn transport(
    dev: bool,
    tls: [(&'static str, &'static str, Option<PathBuf>); 3],
    listen: SocketAddr,
) -> Result<Transport, ConfigError> {
    let given = tls.iter().filter(|(_, _, path)| path.is_some()).count();
    if dev {
        if given > 0 {
            return Err(ConfigError::Invalid(
                "--dev runs without TLS: remove --dev or the TLS settings".into(),
            ));
        }
        if !listen.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "listen address {listen} is not a loopback address: --dev has no \
                 authentication, so it serves only this machine"
            )));
        }
        return Ok(Transport::Dev);
    }
    if given == 0 {
        return Err(ConfigError::Invalid(
            "kmsd needs mutual TLS: give --tls-cert, --tls-key and --tls-client-ca (or the \
             [tls] table of the config file), or --dev for a loopback-only development \
             server without authentication"
                .into(),
        ));
    }
    let [cert, key, client_ca] = tls.map(|(flag, field, path)| path.ok_or((flag, field)));
    let missing = |(flag, field)| ConfigError::Missing(flag, field);
    Ok(Transport::Tls(TlsFiles {
        cert: cert.map_err(missing)?,
        key: key.map_err(missing)?,
        client_ca: client_ca.map_err(missing)?,
        client_crl: None,
        allow_cn_principals: false,
    }))
}

/// Sets how TLS checks clients: the CRL file and whether CN principals are accepted. Both are
/// TLS settings, refused with `--dev`.
fn client_checks(
    transport: Transport,
    client_crl: Option<PathBuf>,
    allow_cn_principals: bool,
) -> Result<Transport, ConfigError> {
    match transport {
        Transport::Tls(files) => Ok(Transport::Tls(TlsFiles {
            client_crl,
            allow_cn_principals,
            ..files
        })),
        Transport::Dev if client_crl.is_some() || allow_cn_principals => Err(ConfigError::Invalid(
            "--dev runs without TLS: remove --dev or the TLS settings".into(),
        )),
        Transport::Dev => Ok(Transport::Dev),
    }
}

/// The HSM session pool's size: 1 to 256, 8 by default.
fn hsm_max_sessions(sessions: Option<usize>) -> Result<usize, ConfigError> {
    match sessions.unwrap_or(8) {
        n @ 1..=256 => Ok(n),
        n => Err(ConfigError::Invalid(format!(
            "hsm-max-sessions must be 1 to 256, got {n}"
        ))),
    }
}

/// The token label: required, 1 to 32 characters (PKCS#11's limit).
fn token_label(label: Option<String>) -> Result<String, ConfigError> {
    let label = label.ok_or(ConfigError::Missing("token-label", "token_label"))?;
    if label.is_empty() || label.len() > 32 {
        return Err(ConfigError::Invalid(
            "token-label must have 1 to 32 characters".into(),
        ));
    }
    Ok(label)
}

/// The wrap mechanism of new sealed domain keys: CKM_AES_KEY_WRAP_PAD unless named.
fn wrap_mechanism(name: Option<String>) -> Result<MechanismType, ConfigError> {
    let Some(name) = name else {
        return Ok(kms_hsm::DEFAULT_WRAP);
    };
    kms_hsm::parse_wrap_mechanism(&name).ok_or_else(|| {
        ConfigError::Invalid(format!(
            "wrap-mechanism takes CKM_AES_KEY_WRAP_PAD or a vendor mechanism number (0x80000000 \
             or more), not {name}"
        ))
    })
}

/// The key limit (which aliases share): at least 1.
fn unwrapped_cache(capacity: Option<usize>) -> Result<usize, ConfigError> {
    match capacity.unwrap_or(HsmKeyStore::DEFAULT_UNWRAPPED) {
        0 => Err(ConfigError::Invalid(
            "unwrapped-cache must be at least 1".into(),
        )),
        n => Ok(n),
    }
}

impl From<KeyStorageName> for KeyStorage {
    fn from(name: KeyStorageName) -> Self {
        match name {
            KeyStorageName::Wrapped => KeyStorage::Wrapped,
            KeyStorageName::Token => KeyStorage::Token,
        }
    }
}

fn max_keys(max_keys: Option<usize>) -> Result<usize, ConfigError> {
    match max_keys.unwrap_or(kms_core::Kms::DEFAULT_MAX_KEYS) {
        0 => Err(ConfigError::Invalid("max-keys must be at least 1".into())),
        n => Ok(n),
    }
}

/// The connection limit and idle timeout: defaults, and the checks of each.
fn connection_limits(
    max_connections: Option<usize>,
    idle_timeout: Option<String>,
    per_client: Option<usize>,
) -> Result<ConnectionLimits, ConfigError> {
    let max_connections = max_connections.unwrap_or(ConnectionLimits::DEFAULT_MAX_CONNECTIONS);
    if !(1..=1_000_000).contains(&max_connections) {
        return Err(ConfigError::Invalid(format!(
            "max-connections must be 1 to 1000000, got {max_connections}"
        )));
    }
    let per_client = per_client
        .unwrap_or(ConnectionLimits::DEFAULT_MAX_CONNECTIONS_PER_CLIENT.min(max_connections));
    if !(1..=max_connections).contains(&per_client) {
        return Err(ConfigError::Invalid(format!(
            "max-connections-per-client must be 1 to max-connections ({max_connections}), got \
             {per_client}"
        )));
    }
    Ok(ConnectionLimits {
        max_connections,
        max_connections_per_client: per_client,
        idle_timeout: duration_setting(
            "idle-timeout",
            idle_timeout,
            ConnectionLimits::DEFAULT_IDLE_TIMEOUT,
        )?,
    })
}

/// The administrators, each checked to be a possible principal.
fn administrators(administrators: Vec<String>) -> Result<Vec<String>, ConfigError> {
    if let Some(bad) = administrators
        .iter()
        .find(|p| p.is_empty() || p.len() > 1024 || p.contains('*'))
    {
        return Err(ConfigError::Invalid(format!(
            "administrator {bad:?} is not a principal: give a certificate's URI SAN or CN, \
             1 to 1024 characters, without wildcards"
        )));
    }
    Ok(administrators)
}

/// The admission limits: defaults, and the checks of each.
fn limits(
    request_timeout: Option<String>,
    max_concurrent: Option<usize>,
    per_second: Option<u32>,
    burst: Option<u32>,
    key_generation: Option<u32>,
    key_generation_concurrent: Option<usize>,
) -> Result<Limits, ConfigError> {
    let request_timeout = duration_setting(
        "request-timeout",
        request_timeout,
        Limits::DEFAULT_REQUEST_TIMEOUT,
    )?;
    let max_concurrent = max_concurrent.unwrap_or(Limits::DEFAULT_MAX_CONCURRENT);
    if !(1..=65_536).contains(&max_concurrent) {
        return Err(ConfigError::Invalid(format!(
            "max-concurrent-requests must be 1 to 65536, got {max_concurrent}"
        )));
    }
    let per_second = per_second.unwrap_or(Limits::DEFAULT_PER_CALLER);
    let per_caller = match (per_second, burst) {
        (0, Some(_)) => {
            return Err(ConfigError::Invalid(
                "rate-limit-burst needs a rate: rate-limit-per-principal is 0 (off)".into(),
            ));
        }
        (0, None) => None,
        (_, Some(0)) => {
            return Err(ConfigError::Invalid(
                "rate-limit-burst must be at least 1".into(),
            ));
        }
        (per_second, burst) => Some(Rate {
            per_second: f64::from(per_second),
            burst: f64::from(burst.unwrap_or(per_second.saturating_mul(2))),
        }),
    };
    let key_generation = key_generation.unwrap_or(Limits::DEFAULT_KEY_GENERATION_PER_CALLER);
    let key_generation_concurrent =
        key_generation_concurrent.unwrap_or(Limits::DEFAULT_KEY_GENERATION_CONCURRENT);
    if !(1..=max_concurrent).contains(&key_generation_concurrent) {
        return Err(ConfigError::Invalid(format!(
            "max-concurrent-key-generations must be 1 to max-concurrent-requests \
             ({max_concurrent}), got {key_generation_concurrent}"
        )));
    }
    Ok(Limits {
        max_concurrent,
        per_caller,
        request_timeout,
        key_generation_per_caller: (key_generation > 0).then(|| Rate {
            per_second: f64::from(key_generation),
            burst: f64::from(key_generation.saturating_mul(4)),
        }),
        key_generation_concurrent,
    })
}

/// A duration setting in humantime's syntax (`500ms`, `30s`, `5m`, `1h 30m`); more than zero
/// and at most a day.
fn duration_setting(
    name: &str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(text) = value else {
        return Ok(default);
    };
    humantime::parse_duration(&text)
        .ok()
        .filter(|d| !d.is_zero() && *d <= Duration::from_secs(24 * 3600))
        .ok_or_else(|| {
            ConfigError::Invalid(format!(
                "{name} must be a duration such as 500ms, 30s, 5m or 1h (more than zero, at \
                 most 24h), got {text:?}"
            ))
        })
}

/// The text of a configuration file (the TOML file, the server policy).
fn read_text(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_server_policy(path: &Path) -> Result<KeyPolicy, ConfigError> {
    let text = read_text(path)?;
    KeyPolicy::parse_server(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn read_pin_file(path: &Path) -> Result<Zeroizing<String>, ConfigError> {
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|e| ConfigError::Pin(format!("cannot read PIN file {}: {e}", path.display())))
}

#[cfg(test)]
mod tests;
