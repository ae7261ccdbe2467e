//! The service logic: every operation of the API, on top of a [`KeyStore`] and a
//! [`MetadataStore`]. Transports (gRPC today) only convert requests into the inputs below and
//! results back.
//!
//! This module holds the `Kms` type, its inputs and outputs, and its wiring; one file per
//! capability holds its operations: [`keys`], [`rotation`], [`deletion`], [`aliases`],
//! [`resource_tags`], [`key_policy`], [`crypto`], [`sign`] (public-key and MAC operations),
//! [`import`] (key material), [`access`] (resolving and authorizing) and [`reconcile`].

mod access;
mod aliases;
mod crypto;
mod deletion;
mod domains;
mod import;
mod key_policy;
mod keys;
mod reconcile;
mod resource_tags;
mod rotation;
mod sign;

pub use domains::{DomainStatus, RewrapProgress};
pub use import::{ImportParametersIssued, MATERIAL_CHECK_INPUT};
pub use sign::{MacOutput, PublicKeyInfo, SignatureOutput};

use crypto::current_version;
use key_policy::check_no_lockout;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use crate::alias::AliasRecord;
use crate::asymmetric::{MessageType, SigningAlgorithm};
use crate::clock::Clock;
use crate::context::EncryptionContext;
use crate::error::KmsError;
use crate::hsm::{KeyStore, KeyVersionRef};
use crate::ids::{KeyId, KeyRef};
use crate::key::{
    EncryptionAlgorithm, ExpirationModel, KeySpec, KeyStorage, KeyUsage, KeyVersion, Origin,
};
use crate::policy::{KeyPolicy, PolicyCache};
use crate::secret::SecretBytes;
use crate::store::MetadataStore;
use crate::tags::NewTags;

/// A plaintext for Encrypt: 1..=4096 bytes.
pub struct Plaintext(SecretBytes);

impl Plaintext {
    /// The most bytes Encrypt takes.
    pub const MAX_LEN: usize = 4096;

    /// Checks the length; the message never shows the bytes.
    pub fn new(bytes: SecretBytes) -> Result<Self, KmsError> {
        if bytes.is_empty() || bytes.len() > Self::MAX_LEN {
            return Err(KmsError::validation(format!(
                "plaintext must be 1 to {} bytes, got {}",
                Self::MAX_LEN,
                bytes.len()
            )));
        }
        Ok(Plaintext(bytes))
    }
}

/// The AES key sizes GenerateDataKey names.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DataKeySpec {
    /// 16 bytes.
    Aes128,
    /// 32 bytes.
    Aes256,
}

/// The length of a data key: 1..=1024 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DataKeyLength(usize);

impl DataKeyLength {
    /// The most bytes a data key may have.
    pub const MAX: u32 = 1024;

    /// From the request's `key_spec` and `number_of_bytes`: exactly one must be given.
    pub fn new(spec: Option<DataKeySpec>, number_of_bytes: Option<u32>) -> Result<Self, KmsError> {
        match (spec, number_of_bytes) {
            (Some(DataKeySpec::Aes128), None) => Ok(DataKeyLength(16)),
            (Some(DataKeySpec::Aes256), None) => Ok(DataKeyLength(32)),
            (None, Some(n)) if (1..=Self::MAX).contains(&n) => Ok(DataKeyLength(n as usize)),
            (None, Some(n)) => Err(KmsError::validation(format!(
                "number_of_bytes must be 1 to {}, got {n}",
                Self::MAX
            ))),
            (Some(_), Some(_)) => Err(KmsError::validation(
                "give either key_spec or number_of_bytes, not both",
            )),
            (None, None) => Err(KmsError::validation(
                "one of key_spec (AES_128, AES_256) or number_of_bytes is required",
            )),
        }
    }
}

/// The number of bytes GenerateRandom returns: 1..=1024.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RandomLength(usize);

impl RandomLength {
    /// The most bytes GenerateRandom returns.
    pub const MAX: u32 = 1024;

    /// Checks the range.
    pub fn new(number_of_bytes: u32) -> Result<Self, KmsError> {
        if (1..=Self::MAX).contains(&number_of_bytes) {
            Ok(RandomLength(number_of_bytes as usize))
        } else {
            Err(KmsError::validation(format!(
                "number_of_bytes must be 1 to {}, got {number_of_bytes}",
                Self::MAX
            )))
        }
    }
}

/// A validated CreateKey request.
pub struct CreateKeyInput {
    /// At most 8192 characters.
    pub description: String,
    /// What the key is for; `None` gives the spec's default (ENCRYPT_DECRYPT, or SIGN_VERIFY
    /// for ECC, GENERATE_VERIFY_MAC for HMAC).
    pub usage: Option<KeyUsage>,
    /// The type of key material.
    pub spec: KeySpec,
    /// Where the material comes from.
    pub origin: Origin,
    /// Tags to attach.
    pub tags: NewTags,
    /// The key policy document (JSON), parsed once the caller may create keys; `None` gives
    /// the default policy (the creator and the administrators have full access).
    pub policy: Option<String>,
    /// Accept a policy that would not let the creator call PutKeyPolicy.
    pub bypass_policy_lockout_safety_check: bool,
}

impl CreateKeyInput {
    /// A key of `spec` made in the HSM, with the spec's default usage, no description, no
    /// tags and the default policy.
    pub fn new(spec: KeySpec) -> Self {
        CreateKeyInput {
            description: String::new(),
            usage: None,
            spec,
            origin: Origin::Kms,
            tags: NewTags::default(),
            policy: None,
            bypass_policy_lockout_safety_check: false,
        }
    }
}

/// What ReEncrypt takes besides the caller.
pub struct ReEncryptInput {
    /// The blob to move to another key.
    pub ciphertext_blob: Vec<u8>,
    /// The encryption context the blob was made with.
    pub source_context: EncryptionContext,
    /// The key the caller expects made the blob (checked when given).
    pub source_key: Option<KeyRef>,
    /// The key of the new blob.
    pub destination: KeyRef,
    /// The new blob's encryption context.
    pub destination_context: EncryptionContext,
}

impl ReEncryptInput {
    /// `ciphertext_blob`, made with `source_context` under any key, to `destination` with the
    /// same context.
    pub fn new(
        ciphertext_blob: &[u8],
        source_context: &EncryptionContext,
        destination: &KeyRef,
    ) -> Self {
        ReEncryptInput {
            ciphertext_blob: ciphertext_blob.to_vec(),
            source_context: source_context.clone(),
            source_key: None,
            destination: destination.clone(),
            destination_context: source_context.clone(),
        }
    }
}

/// What Verify takes besides the caller.
pub struct VerifyInput {
    /// The key pair whose public key checks the signature.
    pub key: KeyRef,
    /// The message, or its digest.
    pub message: Vec<u8>,
    /// Which of the two `message` is.
    pub message_type: MessageType,
    /// The signature to check.
    pub signature: Vec<u8>,
    /// The algorithm the signature was made with.
    pub algorithm: SigningAlgorithm,
}

/// What ImportKeyMaterial takes besides the caller.
pub struct ImportKeyMaterialInput {
    /// The EXTERNAL key awaiting its material.
    pub key: KeyRef,
    /// The token GetParametersForImport returned last.
    pub import_token: Vec<u8>,
    /// The material, wrapped under the parameters' public key.
    pub encrypted_key_material: Vec<u8>,
    /// Whether the material expires.
    pub expiration: ExpirationModel,
    /// When it expires (Unix milliseconds): required with KEY_MATERIAL_EXPIRES, refused
    /// without.
    pub valid_to_ms: Option<i64>,
}

/// A ListKeys page size: 1..=1000, 100 by default.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PageLimit(usize);

impl PageLimit {
    /// The page size when none is given.
    pub const DEFAULT: u32 = 100;
    /// The largest page.
    pub const MAX: u32 = 1000;

    /// 0 means the default.
    pub fn new(limit: u32) -> Result<Self, KmsError> {
        match limit {
            0 => Ok(PageLimit(Self::DEFAULT as usize)),
            1..=Self::MAX => Ok(PageLimit(limit as usize)),
            _ => Err(KmsError::validation(format!(
                "limit must be 1 to {}, got {limit}",
                Self::MAX
            ))),
        }
    }

    /// How many items to fetch for a page: one more than it holds, to tell whether another
    /// page follows.
    pub(super) fn fetch(self) -> usize {
        self.0 + 1
    }

    /// Cuts `fetched` (at most [`PageLimit::fetch`] items, in page order) to the page, and
    /// returns the token of the next page, made from the page's last item by `token`, if
    /// another page follows.
    pub(super) fn cut<T>(
        self,
        fetched: &mut Vec<T>,
        token: impl Fn(&T) -> String,
    ) -> Option<String> {
        if fetched.len() > self.0 {
            fetched.truncate(self.0);
            fetched.last().map(token)
        } else {
            None
        }
    }
}

/// Where the page a token names starts: after the item `parse` reads from the token (the
/// previous page's last item). A token it cannot read is a ValidationException naming
/// `operation`, whose tokens it is not.
pub(super) fn page_after<T, E>(
    page_token: Option<&str>,
    operation: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<Option<T>, KmsError> {
    page_token
        .map(|token| {
            parse(token).map_err(|_| {
                KmsError::validation(format!("page_token is not a token {operation} returned"))
            })
        })
        .transpose()
}

/// One page of ListKeys.
pub struct KeyPage {
    /// Key ids in ascending order.
    pub keys: Vec<KeyId>,
    /// The token of the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// One page of ListKeyRotations.
pub struct RotationPage {
    /// The key.
    pub key_id: KeyId,
    /// Versions after the first, oldest first.
    pub rotations: Vec<KeyVersion>,
    /// The token of the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// One page of ListResourceTags.
pub struct TagPage {
    /// (tag key, tag value) in tag-key order.
    pub tags: Vec<(String, String)>,
    /// The token of the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// One page of ListAliases.
pub struct AliasPage {
    /// Aliases in name order.
    pub aliases: Vec<AliasRecord>,
    /// The token of the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// The result of Encrypt.
pub struct Encrypted {
    /// The v1 blob.
    pub ciphertext_blob: Vec<u8>,
    /// The key's id.
    pub key_id: KeyId,
    /// The algorithm used.
    pub algorithm: EncryptionAlgorithm,
}

/// The result of Decrypt.
pub struct Decrypted {
    /// The plaintext.
    pub plaintext: SecretBytes,
    /// The key the blob was made under.
    pub key_id: KeyId,
    /// The algorithm used.
    pub algorithm: EncryptionAlgorithm,
}

/// The result of ReEncrypt.
pub struct ReEncrypted {
    /// The new blob.
    pub ciphertext_blob: Vec<u8>,
    /// The key the old blob was made under.
    pub source_key_id: KeyId,
    /// The key of the new blob.
    pub key_id: KeyId,
}

/// The result of GenerateDataKey.
pub struct DataKey {
    /// The data key encrypted under the KMS key.
    pub ciphertext_blob: Vec<u8>,
    /// The data key itself.
    pub plaintext: SecretBytes,
    /// The KMS key's id.
    pub key_id: KeyId,
}

/// What startup reconciliation found and did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Keys whose creation never finished; removed with their HSM objects.
    pub abandoned_keys: usize,
    /// HSM objects of this instance that no key record names. Kept, not destroyed: key
    /// creation records a key before making its object, so only a store restored from an old
    /// backup leaves such objects, and destroying them would destroy keys that blobs need.
    pub unreferenced_objects: Vec<KeyVersionRef>,
    /// Key versions whose HSM object is missing (the key cannot be used).
    pub missing_objects: Vec<KeyVersionRef>,
}

/// What one pass of due work did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DueWork {
    /// Keys whose deletion date had passed, deleted.
    pub deleted: usize,
    /// Keys whose imported material expired, now PendingImport.
    pub expired: usize,
    /// Keys whose automatic rotation was due, rotated.
    pub rotated: usize,
}

/// The key management service.
pub struct Kms {
    store: Arc<dyn MetadataStore>,
    hsm: Arc<dyn KeyStore>,
    clock: Arc<dyn Clock>,
    /// Serialises read-modify-write of key records.
    write_lock: Mutex<()>,
    /// The most keys (not deleted) there may be.
    max_keys: usize,
    /// Keys that count against `max_keys`; set by `reconcile`, kept by create and delete.
    key_count: AtomicUsize,
    /// Aliases, which count against `max_keys` too (alias names are global: each takes a
    /// place in the store and in every scan of it); kept like `key_count`.
    alias_count: AtomicUsize,
    /// Who are administrators, and who else may call the server-level actions.
    authorization: Authorization,
    /// Key policies, parsed once per text.
    policies: PolicyCache,
    /// Where new key versions keep their material.
    storage: KeyStorage,
    /// The key specs the HSM cannot make, each with why (refused at CreateKey).
    unserved: Vec<(KeySpec, String)>,
    /// The pending versions whose rotation is under way in this process. A pending version
    /// not in here is left from a rotation whose cleanup failed: the next rotation or
    /// deletion of the key removes it, rather than waiting for a restart.
    rotations: Mutex<HashSet<KeyVersionRef>>,
    /// The keys whose due deletion is destroying their HSM objects in this process:
    /// CancelKeyDeletion is refused for them even if the clock stepped back meanwhile.
    deletions: Mutex<HashSet<KeyId>>,
    /// The domain key new material is wrapped under (0 until `open_domain`: the first).
    current_domain: AtomicU32,
    /// Key pair versions whose public key was proven to be their private key's.
    proven_public_keys: Mutex<HashSet<crypto::ProvenPublicKey>>,
    /// Whether `key_count` and `alias_count` are known: false from
    /// [`Kms::begin_counting`] until [`Kms::reconcile`] has counted.
    counted: AtomicBool,
    /// Whether the current domain key lets a newer one rewrap what it wraps.
    rewrappable: AtomicBool,
    /// Shared while material is made and recorded, alone while the domain key changes.
    domain_switch: RwLock<()>,
    /// The rewrapping under the current domain key.
    rewrap: Mutex<RewrapProgress>,
}

/// The server-level part of authorization, from the configuration.
#[derive(Clone, Debug, Default)]
pub struct Authorization {
    /// Principals in every default key policy, allowed every server-level action.
    pub administrators: Vec<String>,
    /// Who else may call the server-level actions (CreateKey, ListKeys, ListAliases,
    /// GenerateRandom). An explicit Deny here binds administrators too.
    pub server_policy: Option<KeyPolicy>,
}

impl Kms {
    /// A service on these backends.
    pub fn new(
        store: Arc<dyn MetadataStore>,
        hsm: Arc<dyn KeyStore>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Kms {
            store,
            hsm,
            clock,
            write_lock: Mutex::new(()),
            max_keys: Self::DEFAULT_MAX_KEYS,
            key_count: AtomicUsize::new(0),
            alias_count: AtomicUsize::new(0),
            authorization: Authorization::default(),
            policies: PolicyCache::default(),
            storage: KeyStorage::default(),
            unserved: Vec::new(),
            rotations: Mutex::new(HashSet::new()),
            deletions: Mutex::new(HashSet::new()),
            current_domain: AtomicU32::new(0),
            rewrappable: AtomicBool::new(false),
            counted: AtomicBool::new(true),
            proven_public_keys: Mutex::new(HashSet::new()),
            domain_switch: RwLock::new(()),
            rewrap: Mutex::new(RewrapProgress::default()),
        }
    }

    /// Holds the write lock, which serialises the read-modify-write of key and alias records,
    /// until the guard is dropped. A panic while it was held leaves no half-made change in
    /// memory (records live in the store), so a poisoned lock is taken as it is.
    pub(super) fn write_guard(&self) -> MutexGuard<'_, ()> {
        self.write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the administrators and the server-level policy.
    #[must_use]
    pub fn with_authorization(mut self, authorization: Authorization) -> Self {
        self.authorization = authorization;
        self
    }

    /// The key limit when none is configured.
    pub const DEFAULT_MAX_KEYS: usize = 100_000;

    /// Sets where new key versions keep their material (wrapped under a domain key by
    /// default; versions already made stay where they are).
    #[must_use]
    pub fn with_key_storage(mut self, storage: KeyStorage) -> Self {
        self.storage = storage;
        self
    }

    /// Refuses to create keys of these specs, each with why (the HSM's module lacks what they
    /// need): CreateKey fails with UnsupportedOperationException saying so.
    #[must_use]
    pub fn with_unserved_key_specs(mut self, unserved: Vec<(KeySpec, String)>) -> Self {
        self.unserved = unserved;
        self
    }

    /// Sets the most keys there may be (LimitExceededException beyond).
    #[must_use]
    pub fn with_max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }
}

#[cfg(test)]
mod faults_tests;

#[cfg(test)]
mod race_tests;

#[cfg(test)]
mod storage_tests;

#[cfg(test)]
mod test_support;
