//! `kmsctl policy simulate`: evaluates a key policy with kms-core's evaluation, the code kmsd
//! runs on every request.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use kms_core::EncryptionContext;
use kms_core::policy::{AccessRequest, Action, Decision, KeyPolicy};
use serde_json::json;

use crate::output::Format;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Would the policy allow PRINCIPAL to do ACTION? Prints Allow or Deny and the
    /// statement that decided.
    Simulate(SimulateArgs),
}

#[derive(Args)]
pub struct SimulateArgs {
    /// The key whose policy to evaluate (fetched with GetKeyPolicy).
    #[arg(
        long = "key",
        value_name = "KEY",
        required_unless_present = "policy_file"
    )]
    pub key_id: Option<String>,
    /// A policy file to evaluate instead, offline; `-` reads stdin.
    #[arg(long, value_name = "FILE", conflicts_with = "key_id")]
    pub policy_file: Option<PathBuf>,
    /// The caller's principal.
    #[arg(long)]
    pub principal: String,
    /// The action, e.g. kms:Decrypt (the `kms:` may be left out).
    #[arg(long)]
    pub action: String,
    /// An encryption context pair KEY=VALUE of the request (repeatable).
    #[arg(long = "context", value_name = "KEY=VALUE")]
    pub context: Vec<String>,
    /// The caller came without mutual TLS (kms:SecureTransport false).
    #[arg(long)]
    pub insecure_transport: bool,
    /// The caller is one of kmsd's administrators (matches the principal "#administrators").
    #[arg(long)]
    pub administrator: bool,
    /// The alias the request names (kms:AliasName), for CreateAlias, UpdateAlias and
    /// DeleteAlias.
    #[arg(long, value_name = "ALIAS")]
    pub alias_name: Option<String>,
}

/// Prints the decision of `policy` for the request `args` describes.
pub fn simulate(format: Format, policy: &str, args: &SimulateArgs) -> anyhow::Result<()> {
    let policy = KeyPolicy::parse(policy).context("the policy is invalid")?;
    let name = if args.action.contains(':') {
        args.action.clone()
    } else {
        format!("kms:{}", args.action)
    };
    let Some(action) = Action::parse(&name) else {
        bail!("{:?} is not a KMS action, e.g. kms:Decrypt", args.action);
    };
    let pairs = crate::parse_pairs("--context", &args.context)?;
    let context = (!pairs.is_empty())
        .then(|| EncryptionContext::new(pairs, "--context"))
        .transpose()?;
    let decision = policy.evaluate(&AccessRequest {
        principal: &args.principal,
        action,
        encryption_context: context.as_ref(),
        secure_transport: !args.insecure_transport,
        administrator: args.administrator,
        alias_name: args.alias_name.as_deref(),
    });
    match format {
        Format::Json => println!(
            "{}",
            json!({
                "decision": if decision.is_allowed() { "Allow" } else { "Deny" },
                "explicit_deny": matches!(decision, Decision::ExplicitDeny(_)),
                "statement": decision.statement().map(ToString::to_string),
            })
        ),
        Format::Text => println!("{decision}"),
    }
    Ok(())
}
