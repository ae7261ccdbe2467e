//! The one error type of the service, with the AWS KMS exception name of each case.

use crate::hsm::HsmError;
use crate::store::StoreError;

/// Why a request failed. Each variant is one AWS KMS exception; [`KmsError::reason`] gives its
/// name. Messages are for humans and never contain plaintext or key material.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    /// The key (or alias) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The key is Disabled.
    #[error("{0}")]
    Disabled(String),
    /// The key is in a state that does not allow the operation.
    #[error("{0}")]
    InvalidState(String),
    /// Every decryption failure: one message, no detail that could serve as an oracle.
    #[error("the ciphertext is invalid, was altered, or does not match the encryption context")]
    InvalidCiphertext,
    /// The ciphertext was made under another key than the one the caller named.
    #[error("{0}")]
    IncorrectKey(String),
    /// A request field is missing, malformed or out of range.
    #[error("{0}")]
    Validation(String),
    /// The key's usage does not allow the operation.
    #[error("{0}")]
    InvalidKeyUsage(String),
    /// Verify: the signature is not valid for the message and key.
    #[error("the signature is not valid for this message, key and signing algorithm")]
    InvalidSignature,
    /// VerifyMac: the MAC is not the message's MAC under the key.
    #[error("the MAC is not valid for this message, key and MAC algorithm")]
    InvalidMac,
    /// ImportKeyMaterial: the import token is not the key's current one.
    #[error("{0}")]
    InvalidImportToken(String),
    /// ImportKeyMaterial: the import token's 24 hours are over.
    #[error("the import token has expired; call GetParametersForImport again")]
    ExpiredImportToken,
    /// ImportKeyMaterial: the material differs from what the key had before.
    #[error("{0}")]
    IncorrectKeyMaterial(String),
    /// The operation is not supported for this key, or by this HSM.
    #[error("{0}")]
    UnsupportedOperation(String),
    /// The resource already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The caller is authenticated but no policy allows the operation, or one denies it.
    #[error("{0}")]
    AccessDenied(String),
    /// The caller could not be authenticated.
    #[error("{0}")]
    Unauthenticated(String),
    /// A configured limit was reached.
    #[error("{0}")]
    LimitExceeded(String),
    /// The caller sent more requests than the server admits (its rate limit, or the server's
    /// limit of concurrent requests); retry with backoff.
    #[error("{0}")]
    Throttling(String),
    /// The request did not finish within the server's request timeout. It may still complete.
    #[error("{0}")]
    TimedOut(String),
    /// The HSM cannot be reached.
    #[error("the HSM is unavailable; retry later")]
    KeyUnavailable(#[source] HsmError),
    /// The HSM did not answer in time.
    #[error("the HSM did not answer in time; retry later")]
    DependencyTimeout(#[source] HsmError),
    /// Anything else: a bug or a failing dependency. The source is logged, not returned.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl KmsError {
    /// The AWS KMS exception name, used as the `google.rpc.ErrorInfo` reason.
    pub fn reason(&self) -> &'static str {
        match self {
            KmsError::NotFound(_) => "NotFoundException",
            KmsError::Disabled(_) => "DisabledException",
            KmsError::InvalidState(_) => "KMSInvalidStateException",
            KmsError::InvalidCiphertext => "InvalidCiphertextException",
            KmsError::IncorrectKey(_) => "IncorrectKeyException",
            KmsError::Validation(_) => "ValidationException",
            KmsError::InvalidKeyUsage(_) => "InvalidKeyUsageException",
            KmsError::InvalidSignature => "KMSInvalidSignatureException",
            KmsError::InvalidMac => "KMSInvalidMacException",
            KmsError::InvalidImportToken(_) => "InvalidImportTokenException",
            KmsError::ExpiredImportToken => "ExpiredImportTokenException",
            KmsError::IncorrectKeyMaterial(_) => "IncorrectKeyMaterialException",
            KmsError::UnsupportedOperation(_) => "UnsupportedOperationException",
            KmsError::AlreadyExists(_) => "AlreadyExistsException",
            KmsError::AccessDenied(_) | KmsError::Unauthenticated(_) => "AccessDeniedException",
            KmsError::LimitExceeded(_) => "LimitExceededException",
            KmsError::Throttling(_) => "ThrottlingException",
            KmsError::KeyUnavailable(_) => "KeyUnavailableException",
            KmsError::DependencyTimeout(_) | KmsError::TimedOut(_) => "DependencyTimeoutException",
            KmsError::Internal(_) => "KMSInternalException",
        }
    }

    pub(crate) fn validation(message: impl Into<String>) -> Self {
        KmsError::Validation(message.into())
    }
}

impl From<StoreError> for KmsError {
    fn from(error: StoreError) -> Self {
        KmsError::Internal(Box::new(error))
    }
}

impl From<HsmError> for KmsError {
    fn from(error: HsmError) -> Self {
        match error {
            HsmError::Unavailable(_) => KmsError::KeyUnavailable(error),
            HsmError::Timeout => KmsError::DependencyTimeout(error),
            HsmError::Unsupported { operation, detail } => KmsError::UnsupportedOperation(format!(
                "the HSM does not support {operation}: {detail}"
            )),
            other => KmsError::Internal(Box::new(other)),
        }
    }
}

/// `error` and its sources, `: `-separated, for a log line or a test's message.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
