//! Test support for the end-to-end suite: a fresh SoftHSM2 token and data dir per test, a real
//! `kmsd` process on them, and helpers to drive it with the Rust client, kmsctl and
//! OpenSC's pkcs11-tool.
//!
//! The binaries come from the same target dir as the test (build them first:
//! `cargo build --bins`, as tests/run.sh does). Without SoftHSM2 the tests fail loudly.
#![forbid(unsafe_code)]
// Test support: a failed set-up is a failed test, so it panics.
#![allow(
    clippy::missing_panics_doc,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use kms_client::{ClientTls, KmsClient};
use tempfile::TempDir;

/// The token label every test environment uses.
pub const TOKEN_LABEL: &str = "kms-e2e";

/// The `tests/` dir of the checkout under test. Read at run time (`cargo test` sets
/// `CARGO_MANIFEST_DIR`): checkouts that share a target dir share test binaries too, and a
/// path compiled in could be another checkout's, or one deleted since.
pub fn tests_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

fn repo_root() -> PathBuf {
    tests_dir()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Path of a binary of the workspace: in `KMS_E2E_BIN_DIR` when set (to test installed
/// binaries, or a copy that another checkout's build cannot overwrite), else next to the test
/// binary's `deps/` dir.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let dir = std::env::var_os("KMS_E2E_BIN_DIR").map_or_else(
        || {
            exe.parent()
                .and_then(Path::parent)
                .unwrap_or_else(|| panic!("no target dir above {}", exe.display()))
                .to_path_buf()
        },
        PathBuf::from,
    );
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build it first with `cargo build --bins` (tests/run.sh does)",
        path.display()
    );
    path
}

/// The SoftHSM2 module: `TEST_PKCS11_MODULE`, else Debian's path.
pub fn module() -> PathBuf {
    let module = std::env::var_os("TEST_PKCS11_MODULE").map_or_else(
        || PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
        PathBuf::from,
    );
    assert!(
        module.exists(),
        "SoftHSM2 module {} not found: run deploy/install-deps.sh",
        module.display()
    );
    module
}

/// libfaketime's preload library, from Debian's libfaketime package.
fn libfaketime() -> String {
    let path = format!(
        "/usr/lib/{}-linux-gnu/faketime/libfaketimeMT.so.1",
        std::env::consts::ARCH
    );
    assert!(
        Path::new(&path).exists(),
        "{path} not found: run deploy/install-deps.sh (it installs libfaketime)"
    );
    path
}

/// The environment that makes a process see its wall clock moved by `offset`.
fn shifted_clock<'a>(preload: &'a str, offset: &'a str) -> [(&'static str, &'a str); 3] {
    [
        ("LD_PRELOAD", preload),
        ("FAKETIME", offset),
        ("FAKETIME_DONT_RESET", "1"),
    ]
}

/// The slot of opencryptoki's soft token: `OCK_SLOT`, else 3 (Debian's opencryptoki.conf).
pub fn opencryptoki_slot() -> String {
    std::env::var("OCK_SLOT").unwrap_or_else(|_| "3".to_owned())
}

/// Held by the one [`TestEnv::opencryptoki`] of this process at a time: the soft token is
/// one per machine, and each environment initialises it afresh.
static OPENCRYPTOKI: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A fresh token and data dir, in a temp dir removed at drop.
pub struct TestEnv {
    dir: TempDir,
    /// opencryptoki's module, and the hold on its one soft token, when this environment is
    /// on it instead of a SoftHSM2 token of its own.
    opencryptoki: Option<(PathBuf, std::sync::MutexGuard<'static, ()>)>,
    /// `--key-storage token` on every kmsd: one token object per key version, for the tests
    /// of those objects' life beside the records.
    token_storage: bool,
    /// `--domain-custody trusted` on every kmsd: domain keys come from the ceremony.
    trusted_domains: bool,
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl TestEnv {
    /// Initialises a fresh SoftHSM2 token with hsm-config/init-token.sh.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let status = Command::new(repo_root().join("hsm-config/init-token.sh"))
            .arg(dir.path().join("hsm"))
            .arg(TOKEN_LABEL)
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("run init-token.sh: {e}"));
        assert!(status.success(), "init-token.sh failed");
        TestEnv {
            dir,
            opencryptoki: None,
            token_storage: false,
            trusted_domains: false,
        }
    }

    /// Initialises opencryptoki's soft token afresh with hsm-config/init-opencryptoki.sh
    /// (starting pkcsslotd when it is not running), and keeps key versions as token objects:
    /// the soft token has no AES key wrap and no unwrap template. Fails, with the script's
    /// reason, when the token cannot be set up; waits while another environment of this
    /// process uses the token.
    pub fn opencryptoki() -> Self {
        let hold = OPENCRYPTOKI
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let hsm = dir.path().join("hsm");
        let out = Command::new(repo_root().join("hsm-config/init-opencryptoki.sh"))
            .arg(&hsm)
            .arg(TOKEN_LABEL)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run init-opencryptoki.sh: {e}"));
        assert!(
            out.status.success(),
            "init-opencryptoki.sh failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let module = std::fs::read_to_string(hsm.join("module"))
            .unwrap_or_else(|e| panic!("read the module path: {e}"));
        TestEnv {
            dir,
            opencryptoki: Some((PathBuf::from(module.trim()), hold)),
            token_storage: true,
            trusted_domains: false,
        }
    }

    /// Whether kmsd keeps key versions as token objects here.
    pub fn token_storage(&self) -> bool {
        self.token_storage
    }

    /// Every kmsd of this environment keeps key versions as token objects
    /// (`--key-storage token`) instead of wrapped under the domain key.
    #[must_use]
    pub fn with_token_storage(mut self) -> Self {
        self.token_storage = true;
        self
    }

    /// Every kmsd of this environment takes its domain keys from the ceremony
    /// (`--domain-custody trusted`): see [`TestEnv::make_domain_key`].
    #[must_use]
    pub fn with_trusted_domains(mut self) -> Self {
        self.trusted_domains = true;
        self
    }

    /// The ceremony: `kmsctl hsm make-domain-key` as the token's security officer, for the
    /// kmsd instance `instance` (hex) and domain key `version`.
    pub fn make_domain_key(&self, instance: &str, version: u32) -> Output {
        Command::new(bin("kmsctl"))
            .args(["hsm", "make-domain-key", "--module"])
            .arg(module())
            .args(["--token-label", TOKEN_LABEL, "--pin-file"])
            .arg(self.path().join("hsm/so-pin"))
            .args(["--instance", instance, "--version", &version.to_string()])
            .env("SOFTHSM2_CONF", self.softhsm_conf())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("kmsctl hsm make-domain-key: {e}"))
    }

    /// The PKCS#11 module kmsd loads here: SoftHSM2's, or opencryptoki's.
    pub fn module(&self) -> PathBuf {
        self.opencryptoki
            .as_ref()
            .map_or_else(module, |(path, _)| path.clone())
    }

    /// The temp dir.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The SoftHSM2 configuration of this environment's token.
    pub fn softhsm_conf(&self) -> PathBuf {
        self.path().join("hsm/softhsm2.conf")
    }

    /// The file holding the user PIN.
    pub fn pin_file(&self) -> PathBuf {
        self.path().join("hsm/pin")
    }

    /// The user PIN.
    pub fn pin(&self) -> String {
        std::fs::read_to_string(self.pin_file())
            .unwrap_or_else(|e| panic!("read pin: {e}"))
            .trim()
            .to_owned()
    }

    /// The data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.path().join("data")
    }

    /// The standard flags for kmsd on this environment, on a random loopback port, in
    /// `--dev` mode (no TLS; every caller is the administrator `dev`).
    pub fn kmsd_args(&self) -> Vec<String> {
        let mut args = self.base_args();
        args.push("--dev".to_owned());
        args
    }

    /// [`TestEnv::kmsd_args`] without the limits on key-generating calls, for tests that
    /// create keys in bulk.
    pub fn bulk_key_args(&self) -> Vec<String> {
        let mut args = self.kmsd_args();
        args.extend(
            [
                "--key-generation-rate-per-principal",
                "0",
                "--max-concurrent-key-generations",
                "64",
            ]
            .map(str::to_owned),
        );
        args
    }

    /// The flags for kmsd with mutual TLS from `pki`, administrators `admins`.
    pub fn tls_args(&self, pki: &Pki, admins: &[&str]) -> Vec<String> {
        let mut args = self.base_args();
        for (flag, path) in [
            ("--tls-cert", pki.dir.join("server.pem")),
            ("--tls-key", pki.dir.join("server-key.pem")),
            ("--tls-client-ca", pki.ca()),
        ] {
            args.push(flag.to_owned());
            args.push(path.to_string_lossy().into_owned());
        }
        for admin in admins {
            args.push("--administrator".to_owned());
            args.push((*admin).to_owned());
        }
        args
    }

    /// A CA, a server certificate and client certificates (name, principal) in `subdir`,
    /// made with `kmsctl dev-pki`; `days` of validity (0: expired a second later).
    pub fn dev_pki(&self, subdir: &str, clients: &[(&str, &str)], days: u32) -> Pki {
        let dir = self.path().join(subdir);
        let mut command = Command::new(bin("kmsctl"));
        command
            .args(["dev-pki", "--dir"])
            .arg(&dir)
            .args(["--days", &days.to_string()]);
        for (name, principal) in clients {
            command.arg("--client").arg(format!("{name}={principal}"));
        }
        let out = command
            .output()
            .unwrap_or_else(|e| panic!("kmsctl dev-pki: {e}"));
        assert!(
            out.status.success(),
            "kmsctl dev-pki failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Pki { dir }
    }

    fn base_args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &self.data_dir().to_string_lossy(),
            "--pkcs11-module",
            &self.module().to_string_lossy(),
            "--token-label",
            TOKEN_LABEL,
            "--pin-file",
            &self.pin_file().to_string_lossy(),
        ]
        .map(str::to_owned)
        .to_vec();
        if self.opencryptoki.is_some() {
            args.extend(["--pkcs11-slot".to_owned(), opencryptoki_slot()]);
        }
        if self.token_storage {
            args.extend(["--key-storage".to_owned(), "token".to_owned()]);
        }
        if self.trusted_domains {
            args.extend(["--domain-custody".to_owned(), "trusted".to_owned()]);
        }
        args
    }

    /// Starts kmsd with the standard flags; panics with its log if it does not come up.
    pub fn start(&self) -> Kmsd {
        self.start_with(&self.kmsd_args(), &[])
            .unwrap_or_else(|log| panic!("kmsd did not start:\n{log}"))
    }

    /// Starts kmsd with these flags and extra environment; `Err` carries its log when it
    /// exits instead of listening.
    pub fn start_with(&self, args: &[String], env: &[(&str, &str)]) -> Result<Kmsd, String> {
        let mut kmsd = self.spawn_with(args, env);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = kmsd.log();
            // A text line (`address=127.0.0.1:5 `) or a JSON one (`"address":"127.0.0.1:5"`).
            if let Some(address) = log
                .lines()
                .find(|l| l.contains("kmsd listening"))
                .and_then(|l| {
                    l.split("address=")
                        .nth(1)
                        .or_else(|| l.split("\"address\":\"").nth(1))
                })
                .and_then(|rest| rest.split([' ', '"']).next())
            {
                let scheme = if log.contains("mutual TLS") {
                    "https"
                } else {
                    "http"
                };
                kmsd.endpoint = format!("{scheme}://{address}");
                return Ok(kmsd);
            }
            if let Ok(Some(status)) = kmsd.child.try_wait() {
                return Err(format!("kmsd exited with {status}:\n{log}"));
            }
            assert!(
                Instant::now() < deadline,
                "kmsd did not listen within 60 s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts kmsd with the standard flags, its wall clock moved by `offset` (libfaketime's
    /// syntax, e.g. `+8d`).
    pub fn start_shifted(&self, offset: &str) -> Kmsd {
        let preload = libfaketime();
        self.start_with(&self.kmsd_args(), &shifted_clock(&preload, offset))
            .unwrap_or_else(|log| panic!("kmsd did not start:\n{log}"))
    }

    /// Spawns kmsd like [`TestEnv::start_shifted`], without waiting for it to listen.
    pub fn spawn_shifted(&self, offset: &str) -> Kmsd {
        let preload = libfaketime();
        self.spawn_with(&self.kmsd_args(), &shifted_clock(&preload, offset))
    }

    /// Spawns kmsd with these flags and extra environment, without waiting for it to listen
    /// (its `endpoint` stays empty).
    pub fn spawn_with(&self, args: &[String], env: &[(&str, &str)]) -> Kmsd {
        static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log_path = self.path().join(format!("kmsd-{n}.log"));
        let log = std::fs::File::create(&log_path).unwrap_or_else(|e| panic!("log: {e}"));
        let err = log.try_clone().unwrap_or_else(|e| panic!("log: {e}"));
        let mut command = Command::new(bin("kmsd"));
        command
            .args(args)
            .env("SOFTHSM2_CONF", self.softhsm_conf())
            .env_remove("RUST_LOG")
            .env_remove("KMS_HSM_PIN")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn kmsd: {e}"));
        Kmsd {
            child,
            endpoint: String::new(),
            log_path,
        }
    }

    /// Runs kmsd with these flags and environment, expecting it to refuse to start; returns
    /// its exit code and output.
    pub fn expect_refusal(&self, args: &[String], env: &[(&str, &str)]) -> (Option<i32>, String) {
        match self.start_with(args, env) {
            Ok(kmsd) => panic!("kmsd started, but should have refused:\n{}", kmsd.log()),
            Err(log) => {
                let code = log
                    .lines()
                    .next()
                    .and_then(|l| l.strip_prefix("kmsd exited with exit status: "))
                    .and_then(|c| c.trim_end_matches(':').parse().ok());
                (code, log)
            }
        }
    }

    /// Runs OpenSC's pkcs11-tool on this environment's token, logged in.
    pub fn pkcs11_tool(&self, args: &[&str]) -> Output {
        Command::new("pkcs11-tool")
            .arg("--module")
            .arg(module())
            .args([
                "--token-label",
                TOKEN_LABEL,
                "--login",
                "--pin",
                &self.pin(),
            ])
            .args(args)
            .env("SOFTHSM2_CONF", self.softhsm_conf())
            .output()
            .unwrap_or_else(|e| panic!("pkcs11-tool (apt-get install opensc): {e}"))
    }

    /// The CKA_IDs (hex) of the secret keys on the token that have one.
    pub fn hsm_key_ids(&self) -> Vec<String> {
        // Domain keys' ids start with "kmsd" (6b6d7364).
        self.secret_key_field("ID:")
            .into_iter()
            .filter(|id| !id.is_empty() && !id.starts_with("6b6d7364"))
            .collect()
    }

    /// The labels of the secret keys on the token, as pkcs11-tool lists them.
    pub fn hsm_key_labels(&self) -> Vec<String> {
        self.secret_key_field("label:")
            .into_iter()
            .filter(|label| !label.starts_with("kms/domain/"))
            .collect()
    }

    /// The labels of the domain keys on the token (`kms/domain/<version>/<role>`).
    pub fn hsm_domain_labels(&self) -> Vec<String> {
        self.secret_key_field("label:")
            .into_iter()
            .filter(|label| label.starts_with("kms/domain/"))
            .collect()
    }

    /// One field (`label:`, `ID:`) of every secret key pkcs11-tool lists.
    fn secret_key_field(&self, field: &str) -> Vec<String> {
        let out = self.pkcs11_tool(&["--list-objects", "--type", "secrkey"]);
        assert!(
            out.status.success(),
            "pkcs11-tool failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().strip_prefix(field))
            .map(|v| v.trim().to_owned())
            .collect()
    }
}

/// A running kmsd; killed at drop.
pub struct Kmsd {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    log_path: PathBuf,
}

impl Kmsd {
    /// Everything kmsd wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The gRPC endpoint, e.g. `https://127.0.0.1:40123`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A connected client.
    pub async fn client(&self) -> KmsClient {
        KmsClient::connect(&self.endpoint)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"))
    }

    /// A client over TLS with `tls`.
    pub async fn client_with(&self, tls: &ClientTls) -> KmsClient {
        KmsClient::connect_with(&self.endpoint, Some(tls))
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"))
    }

    /// The audit log in `data_dir`, and its public key.
    pub fn audit_files(data_dir: &Path) -> (PathBuf, PathBuf) {
        (data_dir.join("audit.log"), data_dir.join("audit.pub.pem"))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        self.sigterm();
        self.child.wait().is_ok_and(|s| s.success())
    }

    /// Sends SIGTERM and returns at once, while kmsd drains; see [`Kmsd::wait_exit`].
    pub fn sigterm(&self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM failed");
    }

    /// Waits up to `limit` for kmsd to exit: its exit status, or `None` if it still runs.
    /// Blocks the thread (in an async test, call it inside `block_in_place`).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => return None,
                Err(e) => panic!("wait for kmsd: {e}"),
            }
        }
    }

    /// The URL of the metrics endpoint (kmsd started with `--metrics-listen`), from its log.
    pub fn metrics_url(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(url) = self.log().lines().find_map(|l| {
                l.split("metrics at ")
                    .nth(1)?
                    .split_whitespace()
                    .next()
                    .map(str::to_owned)
            }) {
                return url;
            }
            assert!(
                Instant::now() < deadline,
                "no metrics line in kmsd's log (was it started with --metrics-listen?):\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs kmsctl against this kmsd with `args` and `stdin`.
    pub fn kmsctl(&self, args: &[&str], stdin: &[u8]) -> Output {
        self.kmsctl_tls(&[], args, stdin)
    }

    /// Runs kmsctl with TLS flags `tls` (given before the subcommand), `args` and `stdin`.
    pub fn kmsctl_tls(&self, tls: &[String], args: &[&str], stdin: &[u8]) -> Output {
        use std::io::Write as _;
        let mut child = Command::new(bin("kmsctl"))
            .arg("--endpoint")
            .arg(&self.endpoint)
            .args(tls)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn kmsctl: {e}"));
        if let Some(mut input) = child.stdin.take() {
            input
                .write_all(stdin)
                .unwrap_or_else(|e| panic!("kmsctl stdin: {e}"));
        }
        child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("kmsctl: {e}"))
    }
}

impl Drop for Kmsd {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// PEM files made by `kmsctl dev-pki`.
pub struct Pki {
    /// Their directory.
    pub dir: PathBuf,
}

impl Pki {
    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// TLS for the client certificate `name` (`None`: no client certificate).
    pub fn client_tls(&self, name: Option<&str>) -> ClientTls {
        let read = |path: PathBuf| {
            std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        ClientTls {
            ca_pem: read(self.ca()),
            identity: name.map(|n| {
                (
                    read(self.dir.join(format!("{n}.pem"))),
                    zeroize::Zeroizing::new(read(self.dir.join(format!("{n}-key.pem")))),
                )
            }),
            domain: None,
        }
    }

    /// kmsctl's TLS flags for the client certificate `name`.
    pub fn kmsctl_flags(&self, name: &str) -> Vec<String> {
        let path = |file: String| self.dir.join(file).to_string_lossy().into_owned();
        vec![
            "--ca".into(),
            path("ca.pem".into()),
            "--cert".into(),
            path(format!("{name}.pem")),
            "--key".into(),
            path(format!("{name}-key.pem")),
        ]
    }
}
