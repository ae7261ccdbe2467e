//! Writes the seed corpora, `corpus/<target>/`, from valid inputs the project itself makes:
//! a sealed blob, contexts, the README's policies, a signed audit log, the example configs,
//! import inputs, and one request of every RPC (naming the keys the rpc harness seeds).
//! Run by `run.sh seeds`; the corpora are kept in the repository.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kms_audit::AuditLog;
use kms_core::audit::{AuditEvent, Outcome};
use kms_core::hsm::{KeyVersionRef, MessageKey};
use kms_core::testing::{MemoryStore, SoftCheckpointSigner};
use kms_core::{EncryptionContext, KeyId, symmetric};
use kms_proto::v1 as pb;
use prost::Message as _;
use zeroize::Zeroizing;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let corpus = root.join("corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let dir = corpus.join(target);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(name), bytes)
    };

    let key = KeyVersionRef {
        key_id: KeyId::from_bytes([0x11; 16]),
        version: 1,
    };
    let k_msg = MessageKey::new(Zeroizing::new([7; 32]));
    let sealed = symmetric::seal(&k_msg, key, [3; 32], &EncryptionContext::empty(), b"seed")?;
    write("blob", "sealed", &sealed)?;
    write("blob", "header-only", &sealed[..sealed.len() - 20])?;

    write("context", "two-pairs", b"tenant\0a\0app\0billing")?;
    write("context", "empty-value", b"k\0")?;

    let readme = fs::read_to_string(root.join("../README.md"))?;
    for (i, policy) in json_blocks(&readme).into_iter().enumerate() {
        write("policy", &format!("readme-{i}"), policy.as_bytes())?;
    }

    let dir = tempfile::tempdir()?;
    let log_path = dir.path().join("audit.log");
    let log = AuditLog::open(
        &log_path,
        [9; 16],
        Arc::new(SoftCheckpointSigner::new()),
        Arc::new(MemoryStore::default()),
    )?;
    for (i, outcome) in [Outcome::Success, Outcome::Denied, Outcome::Failed]
        .into_iter()
        .enumerate()
    {
        let mut event = AuditEvent::new(1_795_428_000_000, format!("req-{i}"), "Decrypt", outcome);
        event.principal = Some("spiffe://kms.test/app".into());
        log.append(event)?;
    }
    log.close()?;
    write("audit_log", "three-batches", &fs::read(&log_path)?)?;

    // Logs signed with the audit_open target's key: whole, and with a torn last batch.
    let own_path = dir.path().join("own.log");
    let log = AuditLog::open(
        &own_path,
        kms_fuzz::AUDIT_LOG_ID,
        Arc::new(SoftCheckpointSigner::from_seed(kms_fuzz::AUDIT_SEED)),
        Arc::new(MemoryStore::default()),
    )?;
    for i in 0..3 {
        let event = AuditEvent::new(
            1_795_428_000_000,
            format!("req-{i}"),
            "Encrypt",
            Outcome::Success,
        );
        log.append(event)?;
    }
    log.close()?;
    let own = fs::read(&own_path)?;
    write("audit_open", "three-batches", &own)?;
    write("audit_open", "torn", &own[..own.len() - 40])?;
    write("audit_open", "empty", b"")?;

    for config in toml_files(&root.join("../deploy"))?
        .into_iter()
        .chain(toml_files(&root.join("../hsm-config/examples"))?)
    {
        let name = config.file_name().map(|n| n.to_string_lossy().into_owned());
        write("config", &name.unwrap_or_default(), &fs::read(&config)?)?;
    }

    let mut real_token = vec![0u8];
    real_token.extend_from_slice(&[0x42; 32]);
    write("import", "real-token", &real_token)?;
    let mut own_token = vec![1u8];
    own_token.extend_from_slice(&[0x5a; 56]);
    own_token.extend_from_slice(&[0x42; 32]);
    write("import", "own-token", &own_token)?;

    for (i, method) in kms_fuzz::rpc::METHODS.iter().enumerate() {
        let pick = u8::try_from(i)?;
        for (n, message) in requests(method, &sealed).into_iter().enumerate() {
            let mut input = vec![pick];
            input.extend_from_slice(&message);
            write("rpc", &format!("{method}-{n}"), &input)?;
        }
    }
    Ok(())
}

/// Plausible requests of `method`, naming the keys the rpc harness makes.
fn requests(method: &str, blob: &[u8]) -> Vec<Vec<u8>> {
    let key = || "alias/fuzz".to_owned();
    let context = || [("tenant".to_owned(), "a".to_owned())].into();
    let one = match method {
        "CreateKey" => pb::CreateKeyRequest {
            description: "seed".into(),
            key_spec: pb::KeySpec::Hmac256.into(),
            key_usage: pb::KeyUsage::GenerateVerifyMac.into(),
            ..Default::default()
        }
        .encode_to_vec(),
        "Encrypt" => pb::EncryptRequest {
            key_id: key(),
            plaintext: b"seed".to_vec(),
            encryption_context: context(),
            ..Default::default()
        }
        .encode_to_vec(),
        "Decrypt" => pb::DecryptRequest {
            ciphertext_blob: blob.to_vec(),
            key_id: key(),
            ..Default::default()
        }
        .encode_to_vec(),
        "ReEncrypt" => pb::ReEncryptRequest {
            ciphertext_blob: blob.to_vec(),
            destination_key_id: key(),
            ..Default::default()
        }
        .encode_to_vec(),
        "GenerateDataKey" => pb::GenerateDataKeyRequest {
            key_id: key(),
            number_of_bytes: Some(32),
            encryption_context: context(),
            ..Default::default()
        }
        .encode_to_vec(),
        "GenerateMac" | "VerifyMac" => pb::VerifyMacRequest {
            key_id: "alias/fuzz-hmac".into(),
            message: b"seed".to_vec(),
            mac: vec![0; 32],
            mac_algorithm: pb::MacAlgorithm::HmacSha256.into(),
        }
        .encode_to_vec(),
        "Sign" | "Verify" => pb::VerifyRequest {
            key_id: "alias/fuzz-ec".into(),
            message: b"seed".to_vec(),
            signature: vec![1; 64],
            signing_algorithm: pb::SigningAlgorithm::EcdsaSha256.into(),
            ..Default::default()
        }
        .encode_to_vec(),
        "CreateAlias" | "UpdateAlias" => pb::CreateAliasRequest {
            alias_name: "alias/seed".into(),
            target_key_id: key(),
        }
        .encode_to_vec(),
        "PutKeyPolicy" => pb::PutKeyPolicyRequest {
            key_id: key(),
            policy: r#"{"Statement":{"Effect":"Allow","Principal":"dev","Action":"kms:*"}}"#.into(),
            bypass_policy_lockout_safety_check: false,
        }
        .encode_to_vec(),
        "TagResource" => pb::TagResourceRequest {
            key_id: key(),
            tags: vec![pb::Tag {
                tag_key: "k".into(),
                tag_value: "v".into(),
            }],
        }
        .encode_to_vec(),
        "GenerateRandom" => pb::GenerateRandomRequest { number_of_bytes: 8 }.encode_to_vec(),
        // Most other requests are a key id (field 1) and little else.
        _ => pb::DescribeKeyRequest { key_id: key() }.encode_to_vec(),
    };
    vec![Vec::new(), one]
}

/// The JSON code blocks of a Markdown text.
fn json_blocks(markdown: &str) -> Vec<String> {
    markdown
        .split("```json\n")
        .skip(1)
        .filter_map(|rest| rest.split_once("```").map(|(block, _)| block.to_owned()))
        .collect()
}

/// The .toml files under `dir`, recursively.
fn toml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(toml_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "toml") {
            found.push(path);
        }
    }
    Ok(found)
}
