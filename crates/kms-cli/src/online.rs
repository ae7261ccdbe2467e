//! The subcommands that call kmsd: one arm each, from the parsed arguments to the RPC and
//! its output.

use anyhow::bail;
use kms_client::{Context, KmsClient, v1 as pb};
use serde_json::json;

use crate::io::{b64, emit_blob, emit_secret, read_input, write_output};
use crate::output::{self, Format, print_aliases, print_metadata, print_rotations, print_tags};
use crate::policy::PolicyCommand;
use crate::{OnlineCommand, hsm, import, parse_context, parse_pairs, policy, read_text, sign};

/// Runs a subcommand on kmsd through `client`.
#[allow(clippy::too_many_lines)] // one arm per subcommand reads best as one match
pub(crate) async fn run_online(
    format: Format,
    client: &mut KmsClient,
    command: OnlineCommand,
) -> anyhow::Result<()> {
    match command {
        OnlineCommand::CreateKey {
            description,
            key_spec,
            key_usage,
            origin,
            tags,
            policy_file,
            bypass_policy_lockout_safety_check,
        } => {
            let tags = parse_pairs("--tag", &tags)?
                .into_iter()
                .map(|(tag_key, tag_value)| pb::Tag { tag_key, tag_value })
                .collect();
            let policy = policy_file.as_deref().map(read_text).transpose()?;
            let metadata = client
                .create_key_with(pb::CreateKeyRequest {
                    description,
                    key_usage: key_usage
                        .map_or(pb::KeyUsage::Unspecified, Into::into)
                        .into(),
                    key_spec: pb::KeySpec::from(key_spec).into(),
                    origin: pb::OriginType::from(origin).into(),
                    tags,
                    policy: policy.unwrap_or_default(),
                    bypass_policy_lockout_safety_check,
                })
                .await?;
            print_metadata(format, &metadata);
        }
        OnlineCommand::GetKeyPolicy(key) => {
            let policy = client.get_key_policy(&key.key_id).await?;
            match format {
                Format::Json => println!("{}", json!({ "key_id": key.key_id, "policy": policy })),
                Format::Text => println!("{policy}"),
            }
        }
        OnlineCommand::PutKeyPolicy {
            key,
            policy_file,
            bypass_policy_lockout_safety_check,
        } => {
            let policy = read_text(&policy_file)?;
            client
                .put_key_policy(&key.key_id, &policy, bypass_policy_lockout_safety_check)
                .await?;
            if format == Format::Json {
                println!(
                    "{}",
                    json!({ "key_id": key.key_id, "policy_replaced": true })
                );
            }
        }
        OnlineCommand::Hsm(command) => hsm::run_online(format, client, command).await?,
        OnlineCommand::Policy(PolicyCommand::Simulate(args)) => {
            // With --policy-file it ran offline above.
            let Some(key_id) = &args.key_id else {
                bail!("give --key or --policy-file");
            };
            let policy = client.get_key_policy(key_id).await?;
            policy::simulate(format, &policy, &args)?;
        }
        OnlineCommand::TagResource { key, tags } => {
            let tags = parse_pairs("--tag", &tags)?;
            let tags: Vec<(&str, &str)> =
                tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            client.tag_resource(&key.key_id, &tags).await?;
            print_tags(format, &client.list_all_tags(&key.key_id).await?);
        }
        OnlineCommand::UntagResource { key, tag_keys } => {
            let tag_keys: Vec<&str> = tag_keys.iter().map(String::as_str).collect();
            client.untag_resource(&key.key_id, &tag_keys).await?;
            print_tags(format, &client.list_all_tags(&key.key_id).await?);
        }
        OnlineCommand::ListResourceTags(key) => {
            print_tags(format, &client.list_all_tags(&key.key_id).await?);
        }
        OnlineCommand::RotateKeyOnDemand(key) => {
            client.rotate_key_on_demand(&key.key_id).await?;
            print_metadata(format, &client.describe_key(&key.key_id).await?);
        }
        OnlineCommand::EnableKeyRotation {
            key,
            rotation_period_in_days,
        } => {
            client
                .enable_key_rotation(&key.key_id, rotation_period_in_days)
                .await?;
            print_metadata(format, &client.describe_key(&key.key_id).await?);
        }
        OnlineCommand::DisableKeyRotation(key) => {
            client.disable_key_rotation(&key.key_id).await?;
            print_metadata(format, &client.describe_key(&key.key_id).await?);
        }
        OnlineCommand::GetKeyRotationStatus(key) => {
            let status = client.get_key_rotation_status(&key.key_id).await?;
            let value = json!({
                "key_id": status.key_id,
                "key_rotation_enabled": status.key_rotation_enabled,
                "rotation_period_in_days": status.rotation_period_in_days,
                "next_rotation_date": output::rfc3339(status.next_rotation_date.as_ref()),
            });
            match format {
                Format::Json => println!("{value}"),
                Format::Text => {
                    println!("RotationEnabled {}", status.key_rotation_enabled);
                    if let Some(days) = status.rotation_period_in_days {
                        println!("PeriodInDays    {days}");
                    }
                    if let Some(next) = value["next_rotation_date"].as_str() {
                        println!("NextRotation    {next}");
                    }
                }
            }
        }
        OnlineCommand::ScheduleKeyDeletion {
            key,
            pending_window_in_days,
        } => {
            client
                .schedule_key_deletion(&key.key_id, pending_window_in_days)
                .await?;
            print_metadata(format, &client.describe_key(&key.key_id).await?);
        }
        OnlineCommand::CancelKeyDeletion(key) => {
            client.cancel_key_deletion(&key.key_id).await?;
            print_metadata(format, &client.describe_key(&key.key_id).await?);
        }
        OnlineCommand::ListKeyRotations(key) => {
            print_rotations(format, &client.list_all_key_rotations(&key.key_id).await?);
        }
        OnlineCommand::DescribeKey(key) => {
            let metadata = client.describe_key(&key.key_id).await?;
            let rotations = client.list_all_key_rotations(&key.key_id).await?;
            output::print_description(format, &metadata, &rotations);
        }
        OnlineCommand::ListKeys { limit, page_token } => {
            let (keys, next) = match limit {
                Some(limit) => {
                    let page = client.list_keys(limit, &page_token).await?;
                    let keys = page.keys.into_iter().map(|k| k.key_id).collect();
                    (keys, page.next_page_token)
                }
                None => (client.list_all_keys().await?, String::new()),
            };
            match format {
                Format::Json => println!(
                    "{}",
                    json!({"keys": keys.iter().map(|k| json!({"key_id": k})).collect::<Vec<_>>(),
                           "next_page_token": next})
                ),
                Format::Text => {
                    for key in &keys {
                        println!("{key}");
                    }
                    if !next.is_empty() {
                        eprintln!("more keys: --page-token {next}");
                    }
                }
            }
        }
        OnlineCommand::EnableKey(key) => {
            client.enable_key(&key.key_id).await?;
            print_metadata(format, &client.describe_key(&key.key_id).await?);
        }
        OnlineCommand::DisableKey(key) => {
            client.disable_key(&key.key_id).await?;
            print_metadata(format, &client.describe_key(&key.key_id).await?);
        }
        OnlineCommand::UpdateKeyDescription { key, description } => {
            client
                .update_key_description(&key.key_id, &description)
                .await?;
            print_metadata(format, &client.describe_key(&key.key_id).await?);
        }
        OnlineCommand::Encrypt {
            key,
            plaintext_file,
            context,
            encryption_algorithm,
            out,
        } => {
            let plaintext = zeroize::Zeroizing::new(read_input(plaintext_file.as_deref())?);
            let context = parse_context(&context.pairs)?;
            let response = match encryption_algorithm.rsa() {
                None => client.encrypt(&key.key_id, &plaintext, &context).await?,
                Some(algorithm) => {
                    no_context_for_rsa(&context, algorithm)?;
                    client
                        .encrypt_rsa(&key.key_id, &plaintext, algorithm)
                        .await?
                }
            };
            let algorithm = output::algorithm_name(response.encryption_algorithm());
            emit_blob(
                format,
                &response.ciphertext_blob,
                out.as_deref(),
                json!({
                    "key_id": response.key_id,
                    "encryption_algorithm": algorithm,
                }),
            )?;
        }
        OnlineCommand::Decrypt {
            blob,
            key_id,
            context,
            encryption_algorithm,
            out,
        } => {
            let blob = blob.read()?;
            let context = parse_context(&context.pairs)?;
            let decrypted = match encryption_algorithm.rsa() {
                None => client.decrypt(&blob, &context, key_id.as_deref()).await?,
                Some(algorithm) => {
                    no_context_for_rsa(&context, algorithm)?;
                    let Some(key_id) = key_id else {
                        bail!(
                            "{} needs --key-id: an RSA ciphertext does not name its key",
                            output::algorithm_name(algorithm)
                        );
                    };
                    client.decrypt_rsa(&key_id, &blob, algorithm).await?
                }
            };
            let algorithm = output::algorithm_name(decrypted.encryption_algorithm);
            emit_secret(
                format,
                &decrypted.plaintext,
                out.as_deref(),
                json!({
                    "key_id": decrypted.key_id,
                    "encryption_algorithm": algorithm,
                }),
            )?;
        }
        OnlineCommand::ReEncrypt {
            blob,
            source_key_id,
            source_context,
            destination_key_id,
            destination_context,
            out,
        } => {
            let response = client
                .re_encrypt(pb::ReEncryptRequest {
                    ciphertext_blob: blob.read()?,
                    source_encryption_context: parse_context(&source_context)?,
                    source_key_id: source_key_id.unwrap_or_default(),
                    destination_key_id,
                    destination_encryption_context: parse_context(&destination_context)?,
                })
                .await?;
            emit_blob(
                format,
                &response.ciphertext_blob,
                out.as_deref(),
                json!({
                    "key_id": response.key_id,
                    "source_key_id": response.source_key_id,
                }),
            )?;
        }
        OnlineCommand::GenerateDataKey {
            key,
            size,
            context,
            out,
            plaintext_out,
        } => {
            let context = parse_context(&context.pairs)?;
            let data_key = client
                .generate_data_key(&key.key_id, &context, size.size())
                .await?;
            if let Some(path) = &plaintext_out {
                write_output(path, &data_key.plaintext)?;
            }
            if let Some(path) = &out {
                write_output(path, &data_key.ciphertext_blob)?;
            }
            match format {
                Format::Json => {
                    let mut value = json!({
                        "key_id": data_key.key_id,
                        "ciphertext_blob": b64(&data_key.ciphertext_blob),
                    });
                    if plaintext_out.is_none() {
                        value["plaintext"] = json!(b64(&data_key.plaintext));
                    }
                    println!("{value}");
                }
                Format::Text => {
                    println!("KeyId           {}", data_key.key_id);
                    if out.is_none() {
                        println!("CiphertextBlob  {}", b64(&data_key.ciphertext_blob));
                    }
                    if plaintext_out.is_none() {
                        println!("Plaintext       {}", b64(&data_key.plaintext));
                    }
                }
            }
        }
        OnlineCommand::GenerateDataKeyWithoutPlaintext {
            key,
            size,
            context,
            out,
        } => {
            let context = parse_context(&context.pairs)?;
            let response = client
                .generate_data_key_without_plaintext(&key.key_id, &context, size.size())
                .await?;
            emit_blob(
                format,
                &response.ciphertext_blob,
                out.as_deref(),
                json!({
                    "key_id": response.key_id,
                }),
            )?;
        }
        OnlineCommand::CreateAlias(a) => {
            client.create_alias(&a.alias_name, &a.target_key_id).await?;
            print_aliases(
                format,
                &client.list_all_aliases(Some(&a.target_key_id)).await?,
            );
        }
        OnlineCommand::UpdateAlias(a) => {
            client.update_alias(&a.alias_name, &a.target_key_id).await?;
            print_aliases(
                format,
                &client.list_all_aliases(Some(&a.target_key_id)).await?,
            );
        }
        OnlineCommand::DeleteAlias { alias_name } => {
            client.delete_alias(&alias_name).await?;
            if format == Format::Json {
                println!("{}", json!({ "deleted": alias_name }));
            }
        }
        OnlineCommand::ListAliases { key_id } => {
            print_aliases(format, &client.list_all_aliases(key_id.as_deref()).await?);
        }
        OnlineCommand::GetPublicKey(args) => sign::get_public_key(client, format, &args).await?,
        OnlineCommand::Sign(args) => sign::sign(client, format, &args).await?,
        OnlineCommand::Verify(args) => sign::verify(client, format, &args).await?,
        OnlineCommand::GenerateMac(args) => sign::generate_mac(client, format, &args).await?,
        OnlineCommand::VerifyMac(args) => sign::verify_mac(client, format, &args).await?,
        OnlineCommand::GetParametersForImport(args) => {
            import::get_parameters(client, format, &args).await?;
        }
        OnlineCommand::ImportKeyMaterial(args) => import::import(client, format, &args).await?,
        OnlineCommand::DeleteImportedKeyMaterial(key) => {
            client.delete_imported_key_material(&key.key_id).await?;
            print_metadata(format, &client.describe_key(&key.key_id).await?);
        }
        OnlineCommand::GenerateRandom {
            number_of_bytes,
            out,
        } => {
            let bytes = client.generate_random(number_of_bytes).await?;
            emit_secret(format, &bytes, out.as_deref(), json!({}))?;
        }
    }
    Ok(())
}

/// An RSA ciphertext carries no encryption context: refuse one rather than drop it.
fn no_context_for_rsa(context: &Context, algorithm: pb::EncryptionAlgorithm) -> anyhow::Result<()> {
    if context.is_empty() {
        Ok(())
    } else {
        bail!(
            "{} takes no --context: RSA ciphertexts carry no encryption context",
            output::algorithm_name(algorithm)
        )
    }
}
