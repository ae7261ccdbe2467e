//! The one mapping from [`KmsError`] to a gRPC [`Status`].

use std::collections::HashMap;

use kms_core::KmsError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub use kms_proto::ERROR_DOMAIN;

/// The status of `error`: its code, its message, and an `ErrorInfo` whose reason is the AWS
/// exception name. The message never carries an internal error's cause; the call shell
/// (`grpc.rs`) logs it, once.
pub fn to_status(error: &KmsError) -> Status {
    let code = match error {
        KmsError::NotFound(_) => Code::NotFound,
        KmsError::Disabled(_) | KmsError::InvalidState(_) => Code::FailedPrecondition,
        KmsError::InvalidCiphertext
        | KmsError::IncorrectKey(_)
        | KmsError::Validation(_)
        | KmsError::InvalidKeyUsage(_)
        | KmsError::InvalidSignature
        | KmsError::InvalidMac
        | KmsError::InvalidImportToken(_)
        | KmsError::ExpiredImportToken
        | KmsError::IncorrectKeyMaterial(_) => Code::InvalidArgument,
        KmsError::UnsupportedOperation(_) => Code::Unimplemented,
        KmsError::AlreadyExists(_) => Code::AlreadyExists,
        KmsError::AccessDenied(_) => Code::PermissionDenied,
        KmsError::Unauthenticated(_) => Code::Unauthenticated,
        KmsError::LimitExceeded(_) | KmsError::Throttling(_) => Code::ResourceExhausted,
        KmsError::KeyUnavailable(_) | KmsError::DependencyTimeout(_) | KmsError::TimedOut(_) => {
            Code::Unavailable
        }
        KmsError::Internal(_) => Code::Internal,
    };
    Status::with_error_details(
        code,
        error.to_string(),
        ErrorDetails::with_error_info(error.reason(), ERROR_DOMAIN, HashMap::new()),
    )
}

/// Displays an error with its chain of sources.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use kms_core::HsmError;

    use super::*;

    fn reason(status: &Status) -> Option<String> {
        status.get_details_error_info().map(|info| info.reason)
    }

    #[test]
    #[allow(
        clippy::too_many_lines,
        reason = "one row per error: a table reads best whole"
    )]
    fn every_error_has_its_code_and_reason() {
        let cases: Vec<(KmsError, Code, &str)> = vec![
            (
                KmsError::NotFound("x".into()),
                Code::NotFound,
                "NotFoundException",
            ),
            (
                KmsError::Disabled("x".into()),
                Code::FailedPrecondition,
                "DisabledException",
            ),
            (
                KmsError::InvalidState("x".into()),
                Code::FailedPrecondition,
                "KMSInvalidStateException",
            ),
            (
                KmsError::InvalidCiphertext,
                Code::InvalidArgument,
                "InvalidCiphertextException",
            ),
            (
                KmsError::IncorrectKey("x".into()),
                Code::InvalidArgument,
                "IncorrectKeyException",
            ),
            (
                KmsError::Validation("x".into()),
                Code::InvalidArgument,
                "ValidationException",
            ),
            (
                KmsError::InvalidKeyUsage("x".into()),
                Code::InvalidArgument,
                "InvalidKeyUsageException",
            ),
            (
                KmsError::InvalidSignature,
                Code::InvalidArgument,
                "KMSInvalidSignatureException",
            ),
            (
                KmsError::InvalidMac,
                Code::InvalidArgument,
                "KMSInvalidMacException",
            ),
            (
                KmsError::InvalidImportToken("x".into()),
                Code::InvalidArgument,
                "InvalidImportTokenException",
            ),
            (
                KmsError::ExpiredImportToken,
                Code::InvalidArgument,
                "ExpiredImportTokenException",
            ),
            (
                KmsError::IncorrectKeyMaterial("x".into()),
                Code::InvalidArgument,
                "IncorrectKeyMaterialException",
            ),
            (
                KmsError::UnsupportedOperation("x".into()),
                Code::Unimplemented,
                "UnsupportedOperationException",
            ),
            (
                HsmError::Unsupported {
                    operation: "unwrapping",
                    detail: "no OAEP SHA-256".into(),
                }
                .into(),
                Code::Unimplemented,
                "UnsupportedOperationException",
            ),
            (
                KmsError::AlreadyExists("x".into()),
                Code::AlreadyExists,
                "AlreadyExistsException",
            ),
            (
                KmsError::AccessDenied("x".into()),
                Code::PermissionDenied,
                "AccessDeniedException",
            ),
            (
                KmsError::Unauthenticated("x".into()),
                Code::Unauthenticated,
                "AccessDeniedException",
            ),
            (
                KmsError::LimitExceeded("x".into()),
                Code::ResourceExhausted,
                "LimitExceededException",
            ),
            (
                KmsError::Throttling("x".into()),
                Code::ResourceExhausted,
                "ThrottlingException",
            ),
            (
                KmsError::TimedOut("x".into()),
                Code::Unavailable,
                "DependencyTimeoutException",
            ),
            (
                KmsError::KeyUnavailable(HsmError::Unavailable("gone".into())),
                Code::Unavailable,
                "KeyUnavailableException",
            ),
            (
                KmsError::DependencyTimeout(HsmError::Timeout),
                Code::Unavailable,
                "DependencyTimeoutException",
            ),
            (
                KmsError::Internal("boom".into()),
                Code::Internal,
                "KMSInternalException",
            ),
        ];
        for (error, code, expected) in cases {
            let status = to_status(&error);
            assert_eq!(status.code(), code, "{expected}");
            assert_eq!(reason(&status).as_deref(), Some(expected));
            assert_eq!(
                status.get_details_error_info().map(|i| i.domain).as_deref(),
                Some(ERROR_DOMAIN)
            );
        }
    }

    #[test]
    fn internal_errors_do_not_show_their_cause() {
        let status = to_status(&KmsError::Internal("disk on fire at /var/secret".into()));
        assert!(!status.message().contains("disk on fire"));
    }
}
