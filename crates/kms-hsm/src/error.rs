//! Errors of opening the HSM and of HSM calls.

use std::path::PathBuf;

use cryptoki::error::{Error as CkError, RvError};
use kms_core::HsmError;

use crate::pool::GetError;

/// Why the HSM could not be opened. Each message says what to check.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The module could not be loaded.
    #[error("cannot load the PKCS#11 module {path}: check --pkcs11-module")]
    Module {
        /// The path given.
        path: PathBuf,
        /// Why loading failed.
        #[source]
        source: CkError,
    },
    /// C_Initialize failed.
    #[error("the PKCS#11 module failed to initialise (for SoftHSM2, check SOFTHSM2_CONF)")]
    Initialize(#[source] CkError),
    /// Listing slots or reading token information failed.
    #[error("cannot list the module's slots and tokens")]
    Slots(#[source] CkError),
    /// No token has the label.
    #[error("no token labelled {label:?} (tokens present: {}): check --token-label", fmt_labels(.available))]
    TokenNotFound {
        /// The label asked for.
        label: String,
        /// The labels of the tokens present.
        available: Vec<String>,
    },
    /// The token exists but was never initialised.
    #[error("token {0:?} is not initialised")]
    TokenNotInitialized(String),
    /// Opening a session or logging in failed.
    #[error("cannot log in to the token: {}", login_hint(.0))]
    Login(#[source] CkError),
    /// Reading what the module can do (its mechanisms, the attributes it knows) failed.
    #[error("cannot read the mechanisms and attributes the PKCS#11 module supports")]
    Capabilities(#[source] CkError),
    /// No session could be opened in time.
    #[error("timed out opening a session on the token")]
    Timeout,
}

fn fmt_labels(labels: &[String]) -> String {
    if labels.is_empty() {
        "none".to_owned()
    } else {
        labels
            .iter()
            .map(|l| format!("{l:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn login_hint(error: &CkError) -> &'static str {
    match error {
        CkError::Pkcs11(RvError::PinIncorrect, _) => {
            "the PIN is wrong (check --pin-file or KMS_HSM_PIN)"
        }
        CkError::Pkcs11(RvError::PinLocked, _) => "the user PIN is locked",
        CkError::Pkcs11(RvError::UserPinNotInitialized, _) => {
            "the token's user PIN is not initialised"
        }
        CkError::Pkcs11(RvError::PinLenRange, _) => {
            "the PIN has a length the token refuses (check --pin-file or KMS_HSM_PIN)"
        }
        _ => "the module refused the session or the login",
    }
}

/// Whether the error means the session (or the token behind it) is gone.
pub(crate) fn is_session_lost(error: &CkError) -> bool {
    matches!(
        error,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::UserNotLoggedIn,
            _
        )
    )
}

pub(crate) fn unavailable(error: CkError) -> HsmError {
    HsmError::Unavailable(Box::new(error))
}

pub(crate) fn from_get(error: GetError) -> HsmError {
    match error {
        GetError::Timeout => HsmError::Timeout,
        GetError::Open(e) => unavailable(e),
    }
}

pub(crate) fn classify(operation: &'static str, error: CkError) -> HsmError {
    if is_session_lost(&error)
        || matches!(
            error,
            CkError::Pkcs11(RvError::DeviceError | RvError::TokenNotRecognized, _)
        )
    {
        unavailable(error)
    } else if is_bad_input(&error) {
        HsmError::Rejected { operation }
    } else {
        HsmError::Failed {
            operation,
            source: Box::new(error),
        }
    }
}

/// Whether the module refused the data of a decryption or unwrap (a ciphertext or wrapped key
/// that does not decrypt, or has the wrong length), or a key too short for a mechanism.
pub(crate) fn is_bad_input(error: &CkError) -> bool {
    matches!(
        error,
        CkError::Pkcs11(
            RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::WrappedKeyInvalid
                | RvError::WrappedKeyLenRange
                | RvError::DataInvalid
                | RvError::DataLenRange
                | RvError::KeySizeRange,
            _
        )
    )
}

/// Whether the module failed without saying why; SoftHSM2 does so for bad OAEP padding.
pub(crate) fn is_general_error(error: &CkError) -> bool {
    matches!(error, CkError::Pkcs11(RvError::GeneralError, _))
}

/// Whether the module refused the mechanism's parameters (as SoftHSM2 2.6 does for OAEP with
/// SHA-256) rather than the data.
pub(crate) fn is_unsupported_parameter(error: &CkError) -> bool {
    matches!(
        error,
        CkError::Pkcs11(
            RvError::ArgumentsBad | RvError::MechanismParamInvalid | RvError::MechanismInvalid,
            _
        )
    )
}

/// The error of a call made while kmsd is not connected to the HSM.
pub(crate) fn not_connected() -> HsmError {
    HsmError::Unavailable(
        "kmsd is not connected to the HSM; it reconnects when the HSM answers again".into(),
    )
}
