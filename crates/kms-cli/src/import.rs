//! Key material import for keys of origin EXTERNAL: `get-parameters-for-import` and
//! `import-key-material`.
//!
//! kmsctl wraps the material itself, with the wrapping public key GetParametersForImport
//! returns (RSAES-OAEP, a public-key operation: kms-core's `oaep_encrypt`), so the plaintext
//! material never leaves this process unwrapped. The HSM unwraps it straight into the key.
//! It checks the material's length first: the HSM cannot always tell (SoftHSM2 cannot report
//! the length of what it unwrapped).

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;
use kms_client::{ClientError, KmsClient, v1 as pb};
use kms_core::asymmetric::oaep_encrypt;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use zeroize::Zeroizing;

use crate::KeyArg;
use crate::io::read_input;
use crate::names::{WrappingAlgorithmName, WrappingKeySpecName};
use crate::output::{self, Format, print_metadata};

/// The wrapping key GetParametersForImport makes.
#[derive(Args)]
pub struct WrappingArgs {
    /// How the material is wrapped. SoftHSM2 2.6 only unwraps RSAES_OAEP_SHA_1.
    #[arg(long, value_enum, default_value_t = WrappingAlgorithmName(pb::WrappingAlgorithm::RsaesOaepSha256))]
    wrapping_algorithm: WrappingAlgorithmName,
    /// The size of the RSA wrapping key.
    #[arg(long, value_enum, default_value_t = WrappingKeySpecName(pb::WrappingKeySpec::Rsa4096))]
    wrapping_key_spec: WrappingKeySpecName,
}

#[derive(Args)]
pub struct ParametersArgs {
    #[command(flatten)]
    key: KeyArg,
    #[command(flatten)]
    wrapping: WrappingArgs,
    /// Where to write wrapping-key.der (DER SubjectPublicKeyInfo) and import-token.bin;
    /// created if missing.
    #[arg(long, value_name = "DIR")]
    out_dir: PathBuf,
}

#[derive(Args)]
pub struct ImportArgs {
    #[command(flatten)]
    key: KeyArg,
    /// The plaintext key material, raw bytes (`-` reads stdin): 32 for SYMMETRIC_DEFAULT;
    /// 32..64, 48..128 and 64..128 for HMAC_256, HMAC_384 and HMAC_512. kmsctl gets import
    /// parameters and wraps it locally.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "import_token",
        conflicts_with = "import_token"
    )]
    material: Option<String>,
    #[command(flatten)]
    wrapping: WrappingArgs,
    /// Instead of --material: the import token get-parameters-for-import wrote...
    #[arg(long, value_name = "FILE", requires = "encrypted_material")]
    import_token: Option<PathBuf>,
    /// ...and the material you wrapped with its wrapping-key.der. kmsctl cannot check the
    /// length of material wrapped elsewhere: wrap only the lengths --material takes.
    #[arg(long, value_name = "FILE", requires = "import_token")]
    encrypted_material: Option<PathBuf>,
    /// The material expires then (RFC 3339, e.g. 2027-01-31T00:00:00Z) and the key becomes
    /// PendingImport [default: it does not expire].
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    valid_to: Option<prost_types::Timestamp>,
}

/// An RFC 3339 date and time as a protobuf timestamp.
fn parse_rfc3339(text: &str) -> Result<prost_types::Timestamp, String> {
    let t = OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| format!("not an RFC 3339 date and time ({e}): {text}"))?;
    Ok(prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        // Below 10^9, so it fits.
        nanos: i32::try_from(t.nanosecond()).unwrap_or_default(),
    })
}

/// The lengths of material a key spec takes, or `None` for specs that take no import.
pub fn material_lengths(spec: pb::KeySpec) -> Option<RangeInclusive<usize>> {
    match spec {
        pb::KeySpec::Unspecified | pb::KeySpec::SymmetricDefault => Some(32..=32),
        pb::KeySpec::Hmac256 => Some(32..=64),
        pb::KeySpec::Hmac384 => Some(48..=128),
        pb::KeySpec::Hmac512 => Some(64..=128),
        pb::KeySpec::Rsa2048
        | pb::KeySpec::Rsa3072
        | pb::KeySpec::Rsa4096
        | pb::KeySpec::EccNistP256 => None,
    }
}

/// Refuses material whose length `spec` does not take, with a message saying what it takes.
fn check_material(spec: pb::KeySpec, len: usize) -> anyhow::Result<()> {
    let name = output::key_spec_name(spec);
    let Some(lengths) = material_lengths(spec) else {
        bail!("{name} keys take no imported material: only SYMMETRIC_DEFAULT and HMAC keys do");
    };
    if lengths.contains(&len) {
        return Ok(());
    }
    let wanted = if lengths.start() == lengths.end() {
        format!("exactly {} bytes", lengths.start())
    } else {
        format!("{} to {} bytes", lengths.start(), lengths.end())
    };
    bail!("the key material is {len} bytes long; a {name} key takes {wanted}")
}

/// A note printed after the error, for an error the user can work around.
#[derive(Debug)]
pub struct Hint(String);

impl std::fmt::Display for Hint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// GetParametersForImport, with a hint when the HSM cannot unwrap with the algorithm.
async fn parameters(
    client: &mut KmsClient,
    key_id: &str,
    wrapping: &WrappingArgs,
) -> anyhow::Result<pb::GetParametersForImportResponse> {
    let result = client
        .get_parameters_for_import(
            key_id,
            wrapping.wrapping_algorithm.into(),
            wrapping.wrapping_key_spec.into(),
        )
        .await;
    result.map_err(|error| {
        let hint = match &error {
            ClientError::Status {
                reason: Some(reason),
                message,
                ..
            } if reason == "UnsupportedOperationException"
                && wrapping.wrapping_algorithm.0 == pb::WrappingAlgorithm::RsaesOaepSha256
                && message.contains("RSAES_OAEP_SHA_256") =>
            {
                Some(Hint(
                    "this HSM cannot unwrap with RSAES_OAEP_SHA_256: retry with \
                     --wrapping-algorithm RSAES_OAEP_SHA_1"
                        .to_owned(),
                ))
            }
            _ => None,
        };
        let error = anyhow::Error::from(error);
        match hint {
            Some(hint) => error.context(hint),
            None => error,
        }
    })
}

/// `get-parameters-for-import`.
pub async fn get_parameters(
    client: &mut KmsClient,
    format: Format,
    args: &ParametersArgs,
) -> anyhow::Result<()> {
    let response = parameters(client, &args.key.key_id, &args.wrapping).await?;
    let dir = &args.out_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let wrapping_key = dir.join("wrapping-key.der");
    let import_token = dir.join("import-token.bin");
    write(&wrapping_key, &response.public_key)?;
    write(&import_token, &response.import_token)?;
    let valid_to = output::rfc3339(response.parameters_valid_to.as_ref());
    let algorithm = args.wrapping.wrapping_algorithm;
    match format {
        Format::Json => println!(
            "{}",
            json!({
                "key_id": response.key_id,
                "wrapping_key_file": wrapping_key,
                "import_token_file": import_token,
                "parameters_valid_to": valid_to,
                "wrapping_algorithm": pb::WrappingAlgorithm::from(algorithm)
                    .as_str_name()
                    .trim_start_matches("WRAPPING_ALGORITHM_"),
            })
        ),
        Format::Text => {
            println!("wrote {}", wrapping_key.display());
            println!("wrote {}", import_token.display());
            if let Some(valid_to) = valid_to {
                println!("valid until {valid_to}");
            }
            let md = algorithm.openssl_md();
            println!(
                "wrap the material with:\n  openssl pkeyutl -encrypt -pubin -keyform DER \
                 -inkey {} -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:{md} \
                 -pkeyopt rsa_mgf1_md:{md} -in MATERIAL -out WRAPPED\nthen:\n  kmsctl \
                 import-key-material --key-id {} --import-token {} --encrypted-material WRAPPED",
                wrapping_key.display(),
                response.key_id,
                import_token.display()
            );
        }
    }
    Ok(())
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// `import-key-material`.
pub async fn import(
    client: &mut KmsClient,
    format: Format,
    args: &ImportArgs,
) -> anyhow::Result<()> {
    let (key_id, import_token, encrypted_key_material) = match (
        &args.material,
        &args.import_token,
        &args.encrypted_material,
    ) {
        (Some(material), _, _) => {
            // Resolve an alias once, so every call below is about the same key.
            let metadata = client.describe_key(&args.key.key_id).await?;
            if metadata.origin() != pb::OriginType::External {
                bail!(
                    "key {} was not created with --origin EXTERNAL: it takes no imported material",
                    metadata.key_id
                );
            }
            let material = Zeroizing::new(read_input(Some(material))?);
            check_material(metadata.key_spec(), material.len())?;
            let response = parameters(client, &metadata.key_id, &args.wrapping).await?;
            let wrapped = oaep_encrypt(
                &response.public_key,
                args.wrapping.wrapping_algorithm.hash(),
                &material,
            )
            .context("cannot wrap the key material with the wrapping key")?;
            (metadata.key_id, response.import_token, wrapped)
        }
        (None, Some(token), Some(wrapped)) => {
            (args.key.key_id.clone(), read(token)?, read(wrapped)?)
        }
        // clap requires --material or both of the others.
        _ => bail!("give --material, or --import-token and --encrypted-material"),
    };
    let expiration_model = if args.valid_to.is_some() {
        pb::ExpirationModel::KeyMaterialExpires
    } else {
        pb::ExpirationModel::KeyMaterialDoesNotExpire
    };
    client
        .import_key_material(pb::ImportKeyMaterialRequest {
            key_id: key_id.clone(),
            import_token,
            encrypted_key_material,
            expiration_model: expiration_model.into(),
            valid_to: args.valid_to,
        })
        .await?;
    print_metadata(format, &client.describe_key(&key_id).await?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn material_lengths_follow_the_key_spec() {
        let ok = |spec, len| check_material(spec, len).is_ok();
        assert!(ok(pb::KeySpec::SymmetricDefault, 32));
        assert!(!ok(pb::KeySpec::SymmetricDefault, 16));
        assert!(!ok(pb::KeySpec::SymmetricDefault, 33));
        for (spec, min, max) in [
            (pb::KeySpec::Hmac256, 32, 64),
            (pb::KeySpec::Hmac384, 48, 128),
            (pb::KeySpec::Hmac512, 64, 128),
        ] {
            assert!(ok(spec, min) && ok(spec, max), "{spec:?}");
            assert!(!ok(spec, min - 1) && !ok(spec, max + 1), "{spec:?}");
        }
        assert!(!ok(pb::KeySpec::Rsa2048, 32));
        assert!(!ok(pb::KeySpec::EccNistP256, 32));
        let message = check_material(pb::KeySpec::SymmetricDefault, 16)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            message.as_deref(),
            Some(
                "the key material is 16 bytes long; a SYMMETRIC_DEFAULT key takes exactly 32 bytes"
            )
        );
    }

    #[test]
    fn valid_to_parses_rfc3339() {
        let t = parse_rfc3339("2027-01-31T00:00:00Z").ok();
        assert_eq!(t.map(|t| t.seconds), Some(1_801_353_600));
        let t = parse_rfc3339("2027-01-31T01:00:00.5+01:00").ok();
        assert_eq!(
            t.map(|t| (t.seconds, t.nanos)),
            Some((1_801_353_600, 500_000_000))
        );
        assert!(parse_rfc3339("2027-01-31").is_err());
    }
}
