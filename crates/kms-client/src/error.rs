//! [`ClientError`]: a call that failed, with the server's gRPC code and error reason.

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is malformed or could not be reached.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// The server answered with an error.
    #[error("{}: {message}", reason.as_deref().unwrap_or("error"))]
    Status {
        /// The gRPC code.
        code: Code,
        /// The `ErrorInfo` reason, e.g. `NotFoundException`.
        reason: Option<String>,
        /// The server's message.
        message: String,
    },
}

impl ClientError {
    /// The error reason the server gave, if any.
    pub fn reason(&self) -> Option<&str> {
        match self {
            ClientError::Status { reason, .. } => reason.as_deref(),
            ClientError::Connect { .. } => None,
        }
    }

    /// The gRPC code (UNAVAILABLE when the server could not be reached).
    pub fn code(&self) -> Code {
        match self {
            ClientError::Status { code, .. } => *code,
            ClientError::Connect { .. } => Code::Unavailable,
        }
    }
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        ClientError::Status {
            code: status.code(),
            reason: status.get_details_error_info().map(|info| info.reason),
            message: status.message().to_owned(),
        }
    }
}
