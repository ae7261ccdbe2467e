//! Public keys, signatures and MACs: `get-public-key`, `sign`, `verify`, `generate-mac` and
//! `verify-mac`. The private and secret keys stay in the HSM; kmsctl only moves bytes.

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use kms_client::{KmsClient, v1 as pb};
use serde_json::json;
use zeroize::Zeroizing;

use crate::KeyArg;
use crate::io::emit_bytes;
use crate::io::{pem, read_input, unb64, write_output};
use crate::names::{MacAlgorithmName, MessageTypeName, SigningAlgorithmName};
use crate::output::{self, Format};

/// The message to sign, verify or MAC: `--message`, `--message-file`, else stdin.
#[derive(Args)]
#[group(required = false, multiple = false)]
pub struct MessageArg {
    /// The message, as the UTF-8 bytes of this string.
    #[arg(long, value_name = "STRING")]
    message: Option<String>,
    /// File holding the message; `-` or neither flag reads stdin.
    #[arg(long, value_name = "FILE")]
    message_file: Option<String>,
}

impl MessageArg {
    /// Messages may be secrets of the caller's: they are zeroized after use.
    fn read(&self) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        match (&self.message, &self.message_file) {
            (Some(text), _) => Ok(Zeroizing::new(text.as_bytes().to_vec())),
            (None, file) => read_input(file.as_deref()).map(Zeroizing::new),
        }
    }

    fn reads_stdin(&self) -> bool {
        self.message.is_none() && matches!(self.message_file.as_deref(), None | Some("-"))
    }
}

/// Bytes to check (a signature or a MAC), from a file or in base64.
struct Given<'a> {
    what: &'a str,
    file: Option<&'a str>,
    base64: Option<&'a str>,
}

impl Given<'_> {
    fn read(&self, message: &MessageArg) -> anyhow::Result<Vec<u8>> {
        match (self.base64, self.file) {
            (Some(text), _) => {
                unb64(text.trim()).with_context(|| format!("--{} is not valid base64", self.what))
            }
            (None, Some(file)) => {
                if file == "-" && message.reads_stdin() {
                    bail!(
                        "the message and the {} cannot both come from stdin: give --message or \
                         --message-file",
                        self.what
                    );
                }
                read_input(Some(file))
            }
            // clap requires one of the two.
            (None, None) => bail!("give --{0}-file or --{0}", self.what),
        }
    }
}

/// How `get-public-key` writes the key.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PublicKeyFormat {
    /// "-----BEGIN PUBLIC KEY-----" (SubjectPublicKeyInfo), as OpenSSL reads it.
    Pem,
    /// The DER SubjectPublicKeyInfo bytes.
    Der,
}

#[derive(Args)]
pub struct GetPublicKeyArgs {
    #[command(flatten)]
    key: KeyArg,
    /// PEM or DER.
    #[arg(long, value_enum, default_value_t = PublicKeyFormat::Pem)]
    format: PublicKeyFormat,
    /// Write the key here [default: stdout].
    #[arg(long, value_name = "FILE")]
    out: Option<String>,
}

#[derive(Args)]
pub struct SignArgs {
    #[command(flatten)]
    key: KeyArg,
    /// The signing algorithm.
    #[arg(long, visible_alias = "signing-algorithm", value_enum)]
    algorithm: SigningAlgorithmName,
    /// RAW: the service hashes the message; DIGEST: the message is the hash.
    #[arg(long, value_enum, default_value_t = MessageTypeName(pb::MessageType::Raw))]
    message_type: MessageTypeName,
    #[command(flatten)]
    message: MessageArg,
    /// Write the raw signature here instead of printing it in base64.
    #[arg(long, value_name = "FILE")]
    out: Option<String>,
}

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    key: KeyArg,
    /// The signing algorithm.
    #[arg(long, visible_alias = "signing-algorithm", value_enum)]
    algorithm: SigningAlgorithmName,
    /// RAW: the service hashes the message; DIGEST: the message is the hash.
    #[arg(long, value_enum, default_value_t = MessageTypeName(pb::MessageType::Raw))]
    message_type: MessageTypeName,
    #[command(flatten)]
    message: MessageArg,
    #[command(flatten)]
    signature: SignatureArg,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct SignatureArg {
    /// File holding the raw signature (ECDSA: DER); `-` reads stdin.
    #[arg(long, value_name = "FILE")]
    signature_file: Option<String>,
    /// The signature in base64.
    #[arg(long, value_name = "BASE64")]
    signature: Option<String>,
}

#[derive(Args)]
pub struct GenerateMacArgs {
    #[command(flatten)]
    key: KeyArg,
    /// The MAC algorithm.
    #[arg(long, visible_alias = "mac-algorithm", value_enum)]
    algorithm: MacAlgorithmName,
    #[command(flatten)]
    message: MessageArg,
    /// Write the raw MAC here instead of printing it in base64.
    #[arg(long, value_name = "FILE")]
    out: Option<String>,
}

#[derive(Args)]
pub struct VerifyMacArgs {
    #[command(flatten)]
    key: KeyArg,
    /// The MAC algorithm.
    #[arg(long, visible_alias = "mac-algorithm", value_enum)]
    algorithm: MacAlgorithmName,
    #[command(flatten)]
    message: MessageArg,
    #[command(flatten)]
    mac: MacArg,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct MacArg {
    /// File holding the raw MAC; `-` reads stdin.
    #[arg(long, value_name = "FILE")]
    mac_file: Option<String>,
    /// The MAC in base64.
    #[arg(long, value_name = "BASE64")]
    mac: Option<String>,
}

/// `get-public-key`.
pub async fn get_public_key(
    client: &mut KmsClient,
    format: Format,
    args: &GetPublicKeyArgs,
) -> anyhow::Result<()> {
    let response = client.get_public_key(&args.key.key_id).await?;
    let pem = pem("PUBLIC KEY", &response.public_key);
    let bytes = match args.format {
        PublicKeyFormat::Pem => pem.as_bytes(),
        PublicKeyFormat::Der => &response.public_key[..],
    };
    if let Some(path) = &args.out {
        write_output(path, bytes)?;
    }
    match format {
        Format::Json => println!(
            "{}",
            json!({
                "key_id": response.key_id,
                "key_spec": output::key_spec_name(response.key_spec()),
                "key_usage": output::key_usage_name(response.key_usage()),
                "encryption_algorithms": response
                    .encryption_algorithms()
                    .map(output::algorithm_name)
                    .collect::<Vec<_>>(),
                "signing_algorithms": response
                    .signing_algorithms()
                    .map(output::signing_algorithm_name)
                    .collect::<Vec<_>>(),
                "public_key_pem": pem,
            })
        ),
        Format::Text if args.out.is_none() => write_output("-", bytes)?,
        Format::Text => {}
    }
    Ok(())
}

/// `sign`.
pub async fn sign(client: &mut KmsClient, format: Format, args: &SignArgs) -> anyhow::Result<()> {
    let message = args.message.read()?;
    let response = client
        .sign(
            &args.key.key_id,
            &message,
            args.message_type.into(),
            args.algorithm.into(),
        )
        .await?;
    emit_bytes(
        format,
        "signature",
        &response.signature,
        args.out.as_deref(),
        json!({
            "key_id": response.key_id,
            "signing_algorithm": output::signing_algorithm_name(response.signing_algorithm()),
        }),
    )
}

/// `verify`: success only for a valid signature; the server answers an invalid one with
/// KMSInvalidSignatureException, which kmsctl reports and exits 1 on.
pub async fn verify(
    client: &mut KmsClient,
    format: Format,
    args: &VerifyArgs,
) -> anyhow::Result<()> {
    let signature = Given {
        what: "signature",
        file: args.signature.signature_file.as_deref(),
        base64: args.signature.signature.as_deref(),
    }
    .read(&args.message)?;
    let message = args.message.read()?;
    let response = client
        .verify(
            &args.key.key_id,
            &message,
            args.message_type.into(),
            &signature,
            args.algorithm.into(),
        )
        .await?;
    if !response.signature_valid {
        // The API never answers so; refuse to read it as valid if a server did.
        bail!("the server did not confirm the signature");
    }
    match format {
        Format::Json => println!(
            "{}",
            json!({
                "key_id": response.key_id,
                "signature_valid": true,
                "signing_algorithm": output::signing_algorithm_name(response.signing_algorithm()),
            })
        ),
        Format::Text => println!("valid"),
    }
    Ok(())
}

/// `generate-mac`.
pub async fn generate_mac(
    client: &mut KmsClient,
    format: Format,
    args: &GenerateMacArgs,
) -> anyhow::Result<()> {
    let message = args.message.read()?;
    let response = client
        .generate_mac(&args.key.key_id, &message, args.algorithm.into())
        .await?;
    emit_bytes(
        format,
        "mac",
        &response.mac,
        args.out.as_deref(),
        json!({
            "key_id": response.key_id,
            "mac_algorithm": output::mac_algorithm_name(response.mac_algorithm()),
        }),
    )
}

/// `verify-mac`: success only for a matching MAC (else KMSInvalidMacException, exit 1).
pub async fn verify_mac(
    client: &mut KmsClient,
    format: Format,
    args: &VerifyMacArgs,
) -> anyhow::Result<()> {
    let mac = Given {
        what: "mac",
        file: args.mac.mac_file.as_deref(),
        base64: args.mac.mac.as_deref(),
    }
    .read(&args.message)?;
    let message = args.message.read()?;
    let response = client
        .verify_mac(&args.key.key_id, &message, &mac, args.algorithm.into())
        .await?;
    if !response.mac_valid {
        bail!("the server did not confirm the MAC");
    }
    match format {
        Format::Json => println!(
            "{}",
            json!({
                "key_id": response.key_id,
                "mac_valid": true,
                "mac_algorithm": output::mac_algorithm_name(response.mac_algorithm()),
            })
        ),
        Format::Text => println!("valid"),
    }
    Ok(())
}
