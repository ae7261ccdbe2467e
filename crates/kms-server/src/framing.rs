//! Checks a request's gRPC framing before tonic reads it: one uncompressed message, whose
//! length prefix matches the body, arriving within 10 s. tonic answers an empty body, a cut frame or a compressed
//! one with INTERNAL; they are the caller's fault: INVALID_ARGUMENT (ValidationException). A
//! body longer than the largest message is OUT_OF_RANGE, as tonic says of a large message.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::{BodyExt as _, Full, Limited};
use kms_proto::ERROR_DOMAIN;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::MAX_MESSAGE_BYTES;

/// The gRPC message prefix: a compression flag and a 4-byte length.
const PREFIX: usize = 5;

/// How long a request's body may take to arrive.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `S` behind the framing check.
#[derive(Clone)]
pub struct Framed<S>(pub S);

impl<S: NamedService> NamedService for Framed<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for Framed<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The service that was polled ready serves this request; a clone takes its place.
        let clone = self.0.clone();
        let mut inner = std::mem::replace(&mut self.0, clone);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let collected = tokio::time::timeout(
                BODY_TIMEOUT,
                Limited::new(body, PREFIX + MAX_MESSAGE_BYTES).collect(),
            )
            .await;
            let Ok(collected) = collected else {
                return Ok(refusal(
                    Code::DeadlineExceeded,
                    format!("the request did not arrive within {BODY_TIMEOUT:?}"),
                ));
            };
            let bytes = match collected {
                Ok(collected) => collected.to_bytes(),
                Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                    return Ok(refusal(
                        Code::OutOfRange,
                        format!("the message is larger than {MAX_MESSAGE_BYTES} bytes"),
                    ));
                }
                // The client went away or broke the stream: nobody reads this answer.
                Err(error) => return Ok(refusal(Code::Cancelled, error.to_string())),
            };
            if let Err(problem) = check(&bytes) {
                return Ok(refusal(Code::InvalidArgument, problem.to_owned()));
            }
            let request = http::Request::from_parts(parts, Body::new(Full::new(bytes)));
            inner.call(request).await
        })
    }
}

/// Whether `body` is exactly one uncompressed gRPC message.
fn check(body: &[u8]) -> Result<(), &'static str> {
    let Some((prefix, message)) = body.split_first_chunk::<PREFIX>() else {
        return Err("the request has no message");
    };
    let [flag, length @ ..] = *prefix;
    if flag != 0 {
        return Err("the message is compressed, or its frame is malformed: send it uncompressed");
    }
    if usize::try_from(u32::from_be_bytes(length)).ok() != Some(message.len()) {
        return Err("the message's length prefix does not match the body: send one whole message");
    }
    Ok(())
}

/// A gRPC error answer, with the ErrorInfo of a ValidationException (OUT_OF_RANGE and
/// INVALID_ARGUMENT are both the caller's input).
fn refusal(code: Code, message: String) -> http::Response<Body> {
    let status = Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info("ValidationException", ERROR_DOMAIN, HashMap::new()),
    );
    status.into_http()
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn one_whole_uncompressed_message_passes_and_nothing_else() {
        assert!(check(&[0, 0, 0, 0, 0]).is_ok());
        assert!(check(&[0, 0, 0, 0, 2, 8, 1]).is_ok());
        for bad in [
            &[][..],
            &[0, 0, 0],
            &[1, 0, 0, 0, 0],
            &[0, 0, 0, 0, 3, 8, 1],
            &[0, 0, 0, 0, 1, 8, 1],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
    }
}
