//! `kmsctl hsm`: the key hierarchy's domain keys. `status` and `rotate-domain` call kmsd;
//! `make-domain-key` is the ceremony, run by the token's security officer against the HSM
//! directly (kmsd never holds the SO PIN).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use kms_client::{KmsClient, v1 as pb};
use kms_hsm::DomainKeyMaker;
use serde_json::json;
use zeroize::Zeroizing;

use crate::output::Format;

/// The domain keys of the key hierarchy.
#[derive(Subcommand)]
pub(crate) enum HsmCommand {
    /// Show the current domain key and the progress of rewrapping under it.
    Status,
    /// Make the next domain key current and rewrap every key version under it in the
    /// background; the old domain key is destroyed once nothing refers to it. The token's
    /// security officer makes the next domain key first (make-domain-key).
    RotateDomain {
        /// Wait until every key version is rewrapped, printing the progress.
        #[arg(long)]
        wait: bool,
    },
    /// The ceremony, run by the token's security officer without kmsd: make the wrap key of
    /// trusted domain key VERSION of a kmsd instance on the token.
    MakeDomainKey(MakeDomainKeyArgs),
}

/// Where the ceremony makes the domain key, and as whom.
#[derive(Args)]
pub(crate) struct MakeDomainKeyArgs {
    /// The PKCS#11 module (shared library) of the HSM.
    #[arg(long, value_name = "PATH")]
    module: PathBuf,
    /// The label of kmsd's token.
    #[arg(long, value_name = "LABEL")]
    token_label: String,
    /// A file holding the security officer's PIN (the user's, with --as-user).
    #[arg(long, value_name = "FILE")]
    pin_file: PathBuf,
    /// Log in as the user instead, and make a private key that an administrator then marks
    /// CKA_TRUSTED with the HSM's own tool (HSMs whose officer cannot make keys).
    #[arg(long)]
    as_user: bool,
    /// The kmsd instance id (32 hex digits), as `kmsctl hsm status` or kmsd's refusal shows.
    #[arg(long, value_name = "HEX")]
    instance: String,
    /// The domain key version: 1 for a new deployment, the current one + 1 for a rotation.
    #[arg(long, value_name = "N")]
    version: u32,
    /// The mechanism the key wraps with: CKM_AES_KEY_WRAP_PAD, or a vendor's number
    /// (0x8000...) where the HSM's AES key wrap with padding has its own.
    #[arg(long, value_name = "MECHANISM", default_value = "CKM_AES_KEY_WRAP_PAD")]
    wrap_mechanism: String,
}

/// Runs the ceremony.
pub(crate) fn make_domain_key(format: Format, args: &MakeDomainKeyArgs) -> anyhow::Result<()> {
    let instance: [u8; 16] = hex::decode(&args.instance)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .context("--instance takes the 32 hex digits of the kmsd instance id")?;
    if args.version == 0 {
        bail!("--version starts at 1");
    }
    let pin = std::fs::read_to_string(&args.pin_file)
        .with_context(|| format!("cannot read the PIN file {}", args.pin_file.display()))?;
    let pin = Zeroizing::new(pin.trim_end_matches(['\n', '\r']).to_owned());
    let maker = if args.as_user {
        DomainKeyMaker::User
    } else {
        DomainKeyMaker::SecurityOfficer
    };
    let mechanism = kms_hsm::parse_wrap_mechanism(&args.wrap_mechanism).with_context(|| {
        format!(
            "--wrap-mechanism takes CKM_AES_KEY_WRAP_PAD or a vendor mechanism number \
             (0x80000000 or more), not {}",
            args.wrap_mechanism
        )
    })?;
    kms_hsm::make_domain_key(
        &args.module,
        &args.token_label,
        &pin,
        kms_hsm::DomainKeyRequest {
            namespace: instance,
            version: args.version,
            maker,
            mechanism,
        },
    )?;
    match format {
        Format::Json => println!(
            "{}",
            json!({ "instance": args.instance, "domain_key": args.version, "made": true })
        ),
        Format::Text => {
            println!(
                "made domain key {} of instance {}",
                args.version, args.instance
            );
            if args.as_user {
                println!(
                    "an administrator must now mark it CKA_TRUSTED; kmsd refuses it until then"
                );
            }
        }
    }
    Ok(())
}

/// Runs `status` or `rotate-domain` on kmsd.
pub(crate) async fn run_online(
    format: Format,
    client: &mut KmsClient,
    command: HsmCommand,
) -> anyhow::Result<()> {
    match command {
        HsmCommand::Status => print_status(format, &client.domain_key_status().await?),
        HsmCommand::RotateDomain { wait } => {
            let mut status = client.rotate_domain_key().await?;
            print_status(format, &status);
            while wait && !status.rewrap_finished {
                tokio::time::sleep(Duration::from_millis(500)).await;
                status = client.domain_key_status().await?;
                if !status.error.is_empty() {
                    bail!("rewrapping failed (kmsd retries it): {}", status.error);
                }
                if !status.rewrap_running && !status.rewrap_finished {
                    bail!(
                        "{} key versions stay under sealed domain keys",
                        status.versions_left
                    );
                }
                print_status(format, &status);
            }
        }
        HsmCommand::MakeDomainKey(_) => unreachable!("the ceremony runs without kmsd"),
    }
    Ok(())
}

fn print_status(format: Format, status: &pb::DomainKeyStatus) {
    match format {
        Format::Json => println!(
            "{}",
            json!({
                "instance_id": status.instance_id,
                "current_domain_key": status.current_version,
                "rewrappable": status.rewrappable,
                "rewrap_running": status.rewrap_running,
                "rewrap_finished": status.rewrap_finished,
                "keys_scanned": status.keys_scanned,
                "key_count": status.key_count,
                "versions_rewrapped": status.versions_rewrapped,
                "versions_left": status.versions_left,
                "destroyed_domain_keys": status.destroyed_versions,
                "error": status.error,
            })
        ),
        Format::Text => {
            let custody = if status.rewrappable {
                "trusted, rotatable"
            } else {
                "sealed, never rotated"
            };
            println!("instance            {}", status.instance_id);
            println!("current domain key  {} ({custody})", status.current_version);
            let state = match (status.rewrap_running, status.rewrap_finished) {
                (true, _) => "running",
                (false, true) => "finished",
                (false, false) => "stopped",
            };
            println!(
                "rewrapping          {state}: {} of {} keys read, {} versions rewrapped, {} left",
                status.keys_scanned,
                status.key_count,
                status.versions_rewrapped,
                status.versions_left
            );
            if !status.destroyed_versions.is_empty() {
                println!("destroyed           {:?}", status.destroyed_versions);
            }
            if !status.error.is_empty() {
                println!("error               {}", status.error);
            }
        }
    }
}
