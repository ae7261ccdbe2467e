//! What the fuzz targets feed: each function takes the fuzzer's bytes to one parser of
//! untrusted input, and panics only when an invariant breaks (a crash for AFL++). The targets
//! in `src/bin/` are one call each; `run.sh` builds and runs them with cargo-afl.
//!
//! Depends on kms-core and the kms-server library (without RocksDB): the service runs on the
//! memory backends of `kms_core::testing`.
#![allow(
    clippy::missing_panics_doc,
    reason = "a panic is how a fuzz target reports"
)]

use std::sync::{Arc, OnceLock};

use kms_audit::AuditLog;
use kms_core::audit::{self, CheckpointSigner};
use kms_core::hsm::MessageKey;
use kms_core::key::{ExpirationModel, KeySpec, Origin, WrappingAlgorithm};
use kms_core::policy::{AccessRequest, Action, KeyPolicy};
use kms_core::service::{Authorization, CreateKeyInput};
use kms_core::testing::{MemoryStore, SoftCheckpointSigner, memory_kms};
use kms_core::{AliasName, Caller, EncryptionContext, KeyRef, Kms, blob, symmetric};
use zeroize::Zeroizing;

pub mod rpc;

/// The ciphertext blob: parsed, then opened with a fixed message key.
pub fn blob(data: &[u8]) {
    if let Ok(parsed) = blob::parse(data) {
        let k_msg = MessageKey::new(Zeroizing::new([7; 32]));
        let _ = symmetric::open(&k_msg, &parsed, &EncryptionContext::empty());
    }
}

/// The encryption context: pairs of NUL-separated strings, one value per key as a gRPC map
/// decodes them. A context that is accepted must encode the same whatever the order of its
/// pairs (the canonical encoding).
pub fn context(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let parts: Vec<&str> = text.split('\0').collect();
    let map: std::collections::HashMap<String, String> = parts
        .chunks(2)
        .map(|pair| {
            (
                pair[0].to_owned(),
                pair.get(1).copied().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let pairs: Vec<(String, String)> = map.into_iter().collect();
    let forward = EncryptionContext::new(pairs.clone(), "encryption_context");
    let backward = EncryptionContext::new(pairs.into_iter().rev(), "encryption_context");
    match (forward, backward) {
        (Ok(forward), Ok(backward)) => assert_eq!(forward.encode(), backward.encode()),
        (Err(_), Err(_)) => {}
        _ => panic!("the order of the pairs decided whether the context was accepted"),
    }
}

/// A key policy (and the server policy's parser): parsed, then asked about a few requests,
/// which runs its condition operators and wildcard matching.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = KeyPolicy::parse_server(text);
    let Ok(policy) = KeyPolicy::parse(text) else {
        return;
    };
    let context = EncryptionContext::new(
        [("tenant".to_owned(), "a*b?c".to_owned())],
        "encryption_context",
    )
    .ok();
    for (principal, action, alias_name) in [
        ("spiffe://kms.test/app", Action::Decrypt, None),
        ("CN=admin", Action::CreateAlias, Some("alias/tenant-a/x")),
        ("#administrators", Action::PutKeyPolicy, None),
    ] {
        let _ = policy.evaluate(&AccessRequest {
            principal,
            action,
            encryption_context: context.as_ref(),
            secure_transport: true,
            administrator: principal.starts_with('#'),
            alias_name,
        });
    }
}

/// An audit log: verified against a fixed key, and its events read.
pub fn audit_log(data: &[u8]) {
    static KEY: OnceLock<audit::AuditPublicKey> = OnceLock::new();
    let key = KEY.get_or_init(|| SoftCheckpointSigner::new().public_key());
    let _ = audit::verify(data, key);
    audit::read_events(data).for_each(drop);
}

/// The key of the `audit_open` target's logs (its seeds are signed with it).
pub const AUDIT_SEED: &[u8] = b"kms fuzz audit signer";

/// The log id of the `audit_open` target's logs.
pub const AUDIT_LOG_ID: [u8; 16] = [9; 16];

/// The audit log's recovery at open, on a file someone else may have written: kmsd either
/// refuses the file or leaves a log that, once it appends a record, verifies with its key.
pub fn audit_open(data: &[u8]) {
    static SIGNER: OnceLock<Arc<SoftCheckpointSigner>> = OnceLock::new();
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let signer = SIGNER.get_or_init(|| Arc::new(SoftCheckpointSigner::from_seed(AUDIT_SEED)));
    let dir = DIR.get_or_init(scratch_dir);
    let path = dir.path().join("audit.log");
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, data).expect("write the log");
    let Ok(log) = AuditLog::open(
        &path,
        AUDIT_LOG_ID,
        Arc::clone(signer) as Arc<dyn CheckpointSigner>,
        Arc::new(MemoryStore::default()),
    ) else {
        return;
    };
    let event = audit::AuditEvent::new(0, "fuzz", "Decrypt", audit::Outcome::Success);
    log.append(event).expect("append to the recovered log");
    log.close().expect("close");
    let bytes = std::fs::read(&path).expect("read the log");
    if let Err(failure) = audit::verify(&bytes, &signer.public_key()) {
        panic!("the recovered log does not verify: {failure}");
    }
}

/// kmsd's TOML configuration file.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = kms_server::config::RawConfig::parse(text);
    }
}

/// An EXTERNAL key awaiting material, and its import token.
struct Import {
    kms: Kms,
    key: KeyRef,
    token: Vec<u8>,
}

/// `ImportKeyMaterial`'s import token and wrapped material. The first byte chooses the token:
/// the real one (even) or the next 56 bytes of input (odd); the rest is the wrapped material
/// (the memory HSM's unwrapping is the identity, so it is the material itself).
pub fn import(data: &[u8]) {
    static IMPORT: OnceLock<Import> = OnceLock::new();
    let import = IMPORT.get_or_init(|| {
        let (kms, _, _) = memory_kms();
        let admin = kms_core::testing::admin();
        let record = kms
            .create_key(
                &admin,
                CreateKeyInput {
                    origin: Origin::External,
                    ..CreateKeyInput::new(KeySpec::SymmetricDefault)
                },
            )
            .expect("create an EXTERNAL key");
        let key = KeyRef::Id(record.id());
        let token = kms
            .get_parameters_for_import(&admin, &key, WrappingAlgorithm::RsaesOaepSha1, 3072)
            .expect("import parameters")
            .import_token;
        Import { kms, key, token }
    });
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let (token, material) = if choice % 2 == 0 {
        (import.token.as_slice(), rest)
    } else {
        rest.split_at(rest.len().min(56))
    };
    let input = kms_core::service::ImportKeyMaterialInput {
        key: import.key.clone(),
        import_token: token.to_vec(),
        encrypted_key_material: material.to_vec(),
        expiration: ExpirationModel::KeyMaterialDoesNotExpire,
        valid_to_ms: None,
    };
    let _ = import
        .kms
        .import_key_material(&kms_core::testing::admin(), &input);
}

/// A memory-backed KMS whose administrator is `principal`, with a `SYMMETRIC_DEFAULT` key
/// (`alias/fuzz`), an `HMAC_256` key (`alias/fuzz-hmac`) and a P-256 key (`alias/fuzz-ec`)
/// for requests to name.
fn seeded_kms(principal: &str) -> Kms {
    let kms = memory_kms().0.with_authorization(Authorization {
        administrators: vec![principal.to_owned()],
        server_policy: None,
    });
    let caller = Caller::new(principal, true);
    for (alias, spec) in [
        ("alias/fuzz", KeySpec::SymmetricDefault),
        ("alias/fuzz-hmac", KeySpec::Hmac256),
        ("alias/fuzz-ec", KeySpec::EccNistP256),
    ] {
        let record = kms
            .create_key(&caller, CreateKeyInput::new(spec))
            .expect("create a fuzz key");
        let name = AliasName::parse(alias).expect("an alias name");
        kms.create_alias(&caller, &name, &KeyRef::Id(record.id()))
            .expect("create a fuzz alias");
    }
    kms
}

/// A temporary directory, on /dev/shm when there is one, so that syncs cost little.
fn scratch_dir() -> tempfile::TempDir {
    let base = std::path::Path::new("/dev/shm");
    if base.is_dir() {
        tempfile::tempdir_in(base)
    } else {
        tempfile::tempdir()
    }
    .expect("a temporary directory")
}

/// A fresh audit log in a [`scratch_dir`].
fn scratch_audit_log() -> (Arc<AuditLog>, tempfile::TempDir) {
    let dir = scratch_dir();
    let log = AuditLog::open(
        &dir.path().join("audit.log"),
        [9; 16],
        Arc::new(SoftCheckpointSigner::new()),
        Arc::new(MemoryStore::default()),
    )
    .expect("open the audit log");
    (Arc::new(log), dir)
}
