//! kmsctl: the operator and scripting command line of the key management service.
//!
//! Every subcommand is one RPC. Text output is for people; `--output json` is for scripts.
//! Binary data (plaintexts, blobs) goes to files or stdout as raw bytes, or as base64 in JSON.
//! On error kmsctl prints the server's reason and message and exits with status 1.
#![forbid(unsafe_code)]

mod audit;
mod hsm;
mod import;
mod io;
mod names;
mod online;
mod output;
mod pki;
mod policy;
mod sign;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, CommandFactory as _, Parser, Subcommand, ValueEnum};
use kms_client::{ClientError, ClientTls, Context, DataKeySize, KmsClient, v1 as pb};
use zeroize::Zeroizing;

use crate::audit::AuditCommand;
use crate::import::Hint;
use crate::io::{read_input, write_output};
use crate::names::{EncryptionAlgorithmName, KeySpecName, KeyUsageName, OriginName};
use crate::output::Format;
use crate::policy::PolicyCommand;

#[derive(Parser)]
#[command(
    name = "kmsctl",
    version,
    about = "Operate the HSM-backed key management service"
)]
struct Cli {
    /// The kmsd endpoint.
    #[arg(
        long,
        env = "KMS_ENDPOINT",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    endpoint: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text, global = true)]
    output: Format,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(subcommand)]
    command: Command,
}

/// Mutual TLS. Give these before the subcommand: `kmsctl --ca … --cert … --key … list-keys`.
#[derive(Args)]
struct TlsArgs {
    /// CA certificate (PEM) that issued kmsd's certificate; connects with TLS.
    #[arg(long, env = "KMS_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM): its URI SAN or CN is your principal.
    #[arg(long, env = "KMS_CLIENT_CERT", value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "KMS_CLIENT_KEY", value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// The name kmsd's certificate must carry [default: the endpoint's host].
    #[arg(long, env = "KMS_TLS_SERVER_NAME", value_name = "NAME")]
    tls_server_name: Option<String>,
}

impl TlsArgs {
    /// The TLS settings, or `None` for plaintext (a `kmsd --dev`).
    fn load(&self, endpoint: &str) -> anyhow::Result<Option<ClientTls>> {
        let read = |path: &PathBuf| {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
        };
        let Some(ca) = &self.ca else {
            if self.cert.is_some() {
                bail!("--cert needs --ca: the CA that issued kmsd's certificate");
            }
            if endpoint.starts_with("https:") {
                bail!("{endpoint} is TLS: give --ca (and --cert and --key)");
            }
            return Ok(None);
        };
        if endpoint.starts_with("http:") {
            bail!("--ca is given, so the endpoint must be https://…, not {endpoint}");
        }
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some((read(cert)?, Zeroizing::new(read(key)?))),
            _ => None,
        };
        Ok(Some(ClientTls {
            ca_pem: read(ca)?,
            identity,
            domain: self.tls_server_name.clone(),
        }))
    }
}

/// Every subcommand: those that need no server, and those that talk to kmsd. (One flat list
/// on the command line.)
#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Offline(OfflineCommand),
    #[command(flatten)]
    Online(OnlineCommand),
}

/// The subcommands that need no server.
#[derive(Subcommand)]
enum OfflineCommand {
    /// The audit log, read offline from its file.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print a completion script for SHELL to stdout.
    ///
    /// E.g. `kmsctl completions bash > /etc/bash_completion.d/kmsctl`.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Make a local CA and certificates for trying mutual TLS (not for production).
    DevPki {
        /// Directory of the PEM files (created if missing; an existing CA is reused).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Another DNS name or IP address for the server certificate (repeatable).
        #[arg(long = "server-name", value_name = "NAME")]
        server_names: Vec<String>,
        /// A client certificate NAME=PRINCIPAL, written to NAME.pem and NAME-key.pem
        /// (repeatable). A principal with `://` becomes a URI SAN, else the CN.
        #[arg(long = "client", value_name = "NAME=PRINCIPAL")]
        clients: Vec<String>,
        /// Validity of new certificates, in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Revoke the client certificate NAME.pem: writes crl.pem (what it revoked before and
        /// NAME), for kmsd's --tls-client-crl (repeatable).
        #[arg(long = "revoke", value_name = "NAME")]
        revoke: Vec<String>,
    },
}

/// The subcommands that talk to kmsd.
#[derive(Subcommand)]
enum OnlineCommand {
    /// Create a key. Its material is generated in the HSM, or, with --origin EXTERNAL,
    /// imported later with import-key-material.
    CreateKey {
        /// Free text, at most 8192 characters.
        #[arg(long, default_value = "")]
        description: String,
        /// The type of key material.
        #[arg(long, value_enum, default_value_t = KeySpecName(pb::KeySpec::SymmetricDefault))]
        key_spec: KeySpecName,
        /// What the key is for [default: the server picks from the key spec].
        #[arg(long, value_enum)]
        key_usage: Option<KeyUsageName>,
        /// Where the key material comes from: KMS (generated in the HSM) or EXTERNAL (the key
        /// is PendingImport until import-key-material).
        #[arg(long, value_enum, default_value_t = OriginName(pb::OriginType::Kms))]
        origin: OriginName,
        /// A tag KEY=VALUE (repeatable).
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// The key policy (JSON) [default: you and the administrators have full access].
        #[arg(long, value_name = "FILE")]
        policy_file: Option<PathBuf>,
        /// Accept a policy that would not let you change it later.
        #[arg(long)]
        bypass_policy_lockout_safety_check: bool,
    },
    /// Print a key's policy (JSON).
    GetKeyPolicy(KeyArg),
    /// Replace a key's policy.
    PutKeyPolicy {
        #[command(flatten)]
        key: KeyArg,
        /// The new policy (JSON); `-` reads stdin.
        #[arg(long, value_name = "FILE")]
        policy_file: PathBuf,
        /// Accept a policy that would not let you change it again.
        #[arg(long)]
        bypass_policy_lockout_safety_check: bool,
    },
    /// Key policies, evaluated locally.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The key hierarchy's domain keys: status, rotation, and the ceremony that makes them.
    #[command(subcommand)]
    Hsm(hsm::HsmCommand),
    /// Show a key's metadata.
    DescribeKey(KeyArg),
    /// List key ids.
    ListKeys {
        /// Page size (1..1000); without it every page is fetched.
        #[arg(long)]
        limit: Option<u32>,
        /// The next_page_token of a previous page.
        #[arg(long, default_value = "")]
        page_token: String,
    },
    /// Enable a disabled key.
    EnableKey(KeyArg),
    /// Disable a key: it stops encrypting and decrypting.
    DisableKey(KeyArg),
    /// Replace a key's description.
    UpdateKeyDescription {
        #[command(flatten)]
        key: KeyArg,
        /// The new description.
        #[arg(long)]
        description: String,
    },
    /// Encrypt up to 4096 bytes (from a file or stdin); an RSA key takes less (e.g. 318 bytes
    /// with RSA_3072 and RSAES_OAEP_SHA_256).
    Encrypt {
        #[command(flatten)]
        key: KeyArg,
        /// Plaintext file; `-` or nothing reads stdin.
        #[arg(long, value_name = "FILE")]
        plaintext_file: Option<String>,
        #[command(flatten)]
        context: ContextArg,
        /// SYMMETRIC_DEFAULT for symmetric keys; RSAES_OAEP_SHA_1 or RSAES_OAEP_SHA_256 (no
        /// --context) for RSA ENCRYPT_DECRYPT keys.
        #[arg(long, value_enum, default_value_t = EncryptionAlgorithmName(pb::EncryptionAlgorithm::SymmetricDefault))]
        encryption_algorithm: EncryptionAlgorithmName,
        /// Write the raw blob here instead of printing it in base64.
        #[arg(long, value_name = "FILE")]
        out: Option<String>,
    },
    /// Decrypt a blob; the plaintext goes to stdout (raw bytes) or --out.
    Decrypt {
        #[command(flatten)]
        blob: BlobArg,
        /// The key the blob must be under (optional: the blob names its key; required with
        /// RSAES_OAEP_*, whose ciphertexts do not).
        #[arg(long, visible_alias = "key")]
        key_id: Option<String>,
        #[command(flatten)]
        context: ContextArg,
        /// SYMMETRIC_DEFAULT for the service's blobs; RSAES_OAEP_SHA_1 or RSAES_OAEP_SHA_256
        /// for RSA ciphertexts (needs --key-id, takes no --context).
        #[arg(long, value_enum, default_value_t = EncryptionAlgorithmName(pb::EncryptionAlgorithm::SymmetricDefault))]
        encryption_algorithm: EncryptionAlgorithmName,
        /// Write the plaintext here.
        #[arg(long, value_name = "FILE")]
        out: Option<String>,
    },
    /// Decrypt a blob and encrypt it under another key, inside the server.
    ReEncrypt {
        #[command(flatten)]
        blob: BlobArg,
        /// The key the blob must be under (optional).
        #[arg(long)]
        source_key_id: Option<String>,
        /// Encryption context of the blob, KEY=VALUE (repeatable).
        #[arg(long = "source-context", value_name = "KEY=VALUE")]
        source_context: Vec<String>,
        /// The key to encrypt under.
        #[arg(long)]
        destination_key_id: String,
        /// Encryption context of the new blob, KEY=VALUE (repeatable).
        #[arg(long = "destination-context", value_name = "KEY=VALUE")]
        destination_context: Vec<String>,
        /// Write the raw new blob here instead of printing it in base64.
        #[arg(long, value_name = "FILE")]
        out: Option<String>,
    },
    /// Generate a data key for envelope encryption.
    GenerateDataKey {
        #[command(flatten)]
        key: KeyArg,
        #[command(flatten)]
        size: SizeArg,
        #[command(flatten)]
        context: ContextArg,
        /// Write the raw encrypted data key here.
        #[arg(long, value_name = "FILE")]
        out: Option<String>,
        /// Write the raw plaintext data key here.
        #[arg(long, value_name = "FILE")]
        plaintext_out: Option<String>,
    },
    /// Generate a data key and return it only encrypted.
    GenerateDataKeyWithoutPlaintext {
        #[command(flatten)]
        key: KeyArg,
        #[command(flatten)]
        size: SizeArg,
        #[command(flatten)]
        context: ContextArg,
        /// Write the raw encrypted data key here.
        #[arg(long, value_name = "FILE")]
        out: Option<String>,
    },
    /// Add tags to a key (replacing values of tags it has).
    TagResource {
        #[command(flatten)]
        key: KeyArg,
        /// A tag KEY=VALUE (repeatable).
        #[arg(long = "tag", value_name = "KEY=VALUE", required = true)]
        tags: Vec<String>,
    },
    /// Remove tags from a key.
    UntagResource {
        #[command(flatten)]
        key: KeyArg,
        /// A tag key (repeatable).
        #[arg(long = "tag-key", value_name = "KEY", required = true)]
        tag_keys: Vec<String>,
    },
    /// List a key's tags.
    ListResourceTags(KeyArg),
    /// Make a new key version in the HSM and make it current (old blobs still decrypt).
    RotateKeyOnDemand(KeyArg),
    /// List a key's rotations.
    ListKeyRotations(KeyArg),
    /// Turn on automatic rotation.
    EnableKeyRotation {
        #[command(flatten)]
        key: KeyArg,
        /// 90..2560 [default: 365].
        #[arg(long)]
        rotation_period_in_days: Option<u32>,
    },
    /// Turn off automatic rotation.
    DisableKeyRotation(KeyArg),
    /// Show whether automatic rotation is on, its period and next date.
    GetKeyRotationStatus(KeyArg),
    /// Schedule a key's deletion; its blobs can never be decrypted after the date.
    ScheduleKeyDeletion {
        #[command(flatten)]
        key: KeyArg,
        /// 7..30 [default: 30].
        #[arg(long)]
        pending_window_in_days: Option<u32>,
    },
    /// Cancel a scheduled deletion; the key becomes Disabled.
    CancelKeyDeletion(KeyArg),
    /// Create an alias (alias/<name>) for a key.
    CreateAlias(AliasArgs),
    /// Point an alias at another key.
    UpdateAlias(AliasArgs),
    /// Delete an alias (the key is untouched).
    DeleteAlias {
        /// alias/<name>.
        #[arg(long)]
        alias_name: String,
    },
    /// List aliases, of every key or of one.
    ListAliases {
        /// Only the aliases of this key.
        #[arg(long)]
        key_id: Option<String>,
    },
    /// The public key of an RSA or ECC key: PEM (SubjectPublicKeyInfo) by default.
    GetPublicKey(sign::GetPublicKeyArgs),
    /// Sign a message or digest with a SIGN_VERIFY key; the private key works in the HSM.
    Sign(sign::SignArgs),
    /// Verify a signature: prints "valid", or fails with KMSInvalidSignatureException.
    Verify(sign::VerifyArgs),
    /// The HMAC of a message under a GENERATE_VERIFY_MAC key, computed in the HSM.
    GenerateMac(sign::GenerateMacArgs),
    /// Check an HMAC: prints "valid", or fails with KMSInvalidMacException.
    VerifyMac(sign::VerifyMacArgs),
    /// Write a wrapping public key and an import token for an EXTERNAL key, to wrap key
    /// material yourself (e.g. with OpenSSL) for import-key-material.
    GetParametersForImport(import::ParametersArgs),
    /// Import key material into an EXTERNAL key: kmsctl wraps it locally (or takes it
    /// wrapped) and the HSM unwraps it into the key, which becomes Enabled.
    ImportKeyMaterial(import::ImportArgs),
    /// Destroy an EXTERNAL key's material; the key becomes PendingImport until the same
    /// material is imported again.
    DeleteImportedKeyMaterial(KeyArg),
    /// Random bytes from the HSM; raw to stdout or --out.
    GenerateRandom {
        /// 1..1024.
        #[arg(long)]
        number_of_bytes: u32,
        /// Write the bytes here.
        #[arg(long, value_name = "FILE")]
        out: Option<String>,
    },
}

#[derive(Args)]
struct KeyArg {
    /// Key UUID or alias/<name>.
    #[arg(long, visible_alias = "key")]
    key_id: String,
}

#[derive(Args)]
struct AliasArgs {
    /// alias/<name>: 1..250 of [A-Za-z0-9/_-] after "alias/".
    #[arg(long)]
    alias_name: String,
    /// The key's UUID.
    #[arg(long)]
    target_key_id: String,
}

#[derive(Args)]
struct ContextArg {
    /// Encryption context pair KEY=VALUE (repeatable).
    #[arg(long = "context", value_name = "KEY=VALUE")]
    pairs: Vec<String>,
}

#[derive(Args)]
#[group(required = false, multiple = false)]
struct BlobArg {
    /// File holding the raw blob; `-` reads stdin (the default).
    #[arg(long, value_name = "FILE")]
    ciphertext_file: Option<String>,
    /// The blob in base64.
    #[arg(long, value_name = "BASE64")]
    ciphertext: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum KeySpecArg {
    #[value(name = "AES_128")]
    Aes128,
    #[value(name = "AES_256")]
    Aes256,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct SizeArg {
    /// AES_128 or AES_256.
    #[arg(long, value_enum)]
    key_spec: Option<KeySpecArg>,
    /// 1..1024.
    #[arg(long)]
    number_of_bytes: Option<u32>,
}

impl SizeArg {
    fn size(&self) -> DataKeySize {
        match (self.key_spec, self.number_of_bytes) {
            (Some(KeySpecArg::Aes128), _) => DataKeySize::Aes128,
            (_, Some(n)) => DataKeySize::Bytes(n),
            _ => DataKeySize::Aes256,
        }
    }
}

fn parse_context(pairs: &[String]) -> anyhow::Result<Context> {
    parse_pairs("--context", pairs).map(|pairs| pairs.into_iter().collect())
}

/// KEY=VALUE arguments of `flag`, split at the first `=`, no key twice.
fn parse_pairs(flag: &str, pairs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in pairs {
        let Some((k, v)) = pair.split_once('=') else {
            bail!("{flag} takes KEY=VALUE, got {pair:?}");
        };
        if out.iter().any(|(seen, _)| seen == k) {
            bail!("{flag} key {k:?} is given twice");
        }
        out.push((k.to_owned(), v.to_owned()));
    }
    Ok(out)
}

impl BlobArg {
    fn read(&self) -> anyhow::Result<Vec<u8>> {
        match (&self.ciphertext, &self.ciphertext_file) {
            (Some(text), _) => io::unb64(text.trim()).context("--ciphertext is not valid base64"),
            (None, file) => read_input(file.as_deref()),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<ClientError>() {
                Some(ClientError::Status {
                    reason, message, ..
                }) => eprintln!(
                    "kmsctl: {}: {message}",
                    reason.as_deref().unwrap_or("error")
                ),
                _ => eprintln!("kmsctl: {e:#}"),
            }
            if let Some(hint) = e.downcast_ref::<Hint>() {
                eprintln!("kmsctl: hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let format = cli.output;
    let command = match cli.command {
        Command::Offline(command) => return run_offline(format, command),
        // A policy given as a file is evaluated without the server.
        Command::Online(OnlineCommand::Policy(PolicyCommand::Simulate(
            ref args @ policy::SimulateArgs {
                policy_file: Some(ref file),
                ..
            },
        ))) => return policy::simulate(format, &read_text(file)?, args),
        // The ceremony talks to the HSM, not to kmsd.
        Command::Online(OnlineCommand::Hsm(hsm::HsmCommand::MakeDomainKey(ref args))) => {
            return hsm::make_domain_key(format, args);
        }
        Command::Online(command) => command,
    };
    let tls = cli.tls.load(&cli.endpoint)?;
    let mut client = KmsClient::connect_with(&cli.endpoint, tls.as_ref()).await?;
    online::run_online(format, &mut client, command).await
}

/// Runs a subcommand that needs no server.
fn run_offline(format: Format, command: OfflineCommand) -> anyhow::Result<()> {
    match command {
        OfflineCommand::Audit(command) => audit::run(format, &command),
        OfflineCommand::Completions { shell } => {
            // Into a buffer first: clap_complete panics on a failed write (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "kmsctl", &mut script);
            write_output("-", &script)
        }
        OfflineCommand::DevPki {
            dir,
            server_names,
            clients,
            days,
            revoke,
        } => {
            let clients = parse_pairs("--client", &clients)?;
            let written = pki::run(&pki::Request {
                dir: &dir,
                server_names: &server_names,
                clients: &clients,
                days,
                revoke: &revoke,
            })?;
            for path in written {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
    }
}
/// A UTF-8 file, or stdin for `-`.
fn read_text(path: &Path) -> anyhow::Result<String> {
    let bytes = read_input(path.to_str())?;
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_pairs_split_at_the_first_equals() -> anyhow::Result<()> {
        let context = parse_context(&["a=b=c".into(), "empty=".into()])?;
        assert_eq!(context.get("a").map(String::as_str), Some("b=c"));
        assert_eq!(context.get("empty").map(String::as_str), Some(""));
        assert!(parse_context(&["novalue".into()]).is_err());
        assert!(parse_context(&["k=1".into(), "k=2".into()]).is_err());
        Ok(())
    }

    #[test]
    fn every_shell_gets_a_script_naming_the_subcommands() {
        Cli::command().debug_assert();
        for &shell in clap_complete::Shell::value_variants() {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "kmsctl", &mut script);
            let script = String::from_utf8_lossy(&script);
            for name in [
                "create-key",
                "schedule-key-deletion",
                "dev-pki",
                "completions",
            ] {
                assert!(script.contains(name), "{shell}: no {name}");
            }
        }
    }
}
