//! What the service's tests share: helpers, and the names they use.

pub(super) use super::{
    Authorization, CreateKeyInput, DataKeyLength, DataKeySpec, Kms, PageLimit, Plaintext,
    RandomLength, ReEncryptInput,
};
pub(super) use crate::blob;
pub(super) use crate::caller::Caller;
pub(super) use crate::context::EncryptionContext;
pub(super) use crate::error::KmsError;
pub(super) use crate::hsm::{KeyStore, KeyVersionRef};
pub(super) use crate::ids::{AliasName, KeyId, KeyRef};
pub(super) use crate::key::{
    KeyMaterial, KeyRecord, KeySpec, KeyState, KeyUsage, Origin, VersionSource,
};
pub(super) use crate::policy::KeyPolicy;
pub(super) use crate::secret::SecretBytes;
pub(super) use crate::store::MetadataStore;
pub(super) use crate::symmetric;
pub(super) use crate::tags::NewTags;
pub(super) use crate::testing::admin;
pub(super) use crate::testing::memory_kms;
pub(super) use std::sync::Arc;

/// A SYMMETRIC_DEFAULT key without description, tags or policy.
pub(super) fn plain_input() -> CreateKeyInput {
    CreateKeyInput::new(KeySpec::SymmetricDefault)
}

pub(super) fn ok<T>(r: Result<T, KmsError>) -> T {
    r.unwrap_or_else(|e| panic!("unexpected {}: {e}", e.reason()))
}

pub(super) fn new_key(kms: &Kms) -> KeyRef {
    let record = ok(kms.create_key(
        &admin(),
        CreateKeyInput {
            description: "test".into(),
            ..plain_input()
        },
    ));
    KeyRef::Id(record.id)
}

pub(super) fn plaintext(bytes: &[u8]) -> Plaintext {
    ok(Plaintext::new(SecretBytes::new(bytes.to_vec())))
}

pub(super) fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
    ok(EncryptionContext::new(
        pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())),
        "encryption_context",
    ))
}

pub(super) fn alias(name: &str) -> AliasName {
    ok(AliasName::parse(name))
}

#[allow(clippy::needless_pass_by_value)] // reads best around a call
pub(super) fn denied<T>(result: Result<T, KmsError>) -> bool {
    matches!(result, Err(KmsError::AccessDenied(_)))
}
