//! The tonic implementation of `kms.v1.KeyManagementService`.
//!
//! Every RPC goes through [`KmsGrpc::call`]: authenticate the caller, convert the request and
//! run the core on a blocking thread, write the audit record and wait until it is durable,
//! then answer. A request whose audit record cannot be written gets an error, whatever the
//! core did: kmsd never answers a call it could not audit.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use kms_core::audit::{AuditEvent, AuditKey, AuditSink, Outcome};
use kms_core::{Caller, Kms, KmsError};
use kms_proto::v1::key_management_service_server::KeyManagementServiceServer;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};
use tracing::{debug, error};

use crate::auth::Authenticator;
use crate::connections::Connections;
use crate::framing::Framed;
use crate::limits::{Admission, Admitted, Limits};
use crate::metrics::Metrics;
use crate::status::{ErrorChain, to_status};

/// The metadata key of the request id, read from requests and set on every answer.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The gRPC service.
#[derive(Clone)]
pub struct KmsGrpc {
    kms: Arc<Kms>,
    auth: Arc<Authenticator>,
    audit: Arc<dyn AuditSink>,
    metrics: Option<Arc<Metrics>>,
    admission: Arc<Admission>,
    connections: Option<Arc<Connections>>,
}

impl KmsGrpc {
    /// The service on `kms`, authenticating with `auth` and auditing to `audit`.
    pub fn new(kms: Arc<Kms>, auth: Arc<Authenticator>, audit: Arc<dyn AuditSink>) -> Self {
        KmsGrpc {
            kms,
            auth,
            audit,
            metrics: None,
            admission: Arc::new(Admission::new(Limits::default())),
            connections: None,
        }
    }

    /// Tells `connections` of every request, so that its connection is not idle.
    #[must_use]
    pub fn with_connections(mut self, connections: Arc<Connections>) -> Self {
        self.connections = Some(connections);
        self
    }

    /// Admits requests within `admission`'s limits and times them out after its request
    /// timeout.
    #[must_use]
    pub fn with_admission(mut self, admission: Arc<Admission>) -> Self {
        self.admission = admission;
        self
    }

    /// Counts every request, its outcome and its latency in `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The tonic server of this service, with kmsd's message size limits, behind the check
    /// of the requests' gRPC framing ([`Framed`]).
    pub fn into_server(self) -> Framed<KeyManagementServiceServer<Self>> {
        Framed(
            KeyManagementServiceServer::new(self)
                .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(crate::MAX_MESSAGE_BYTES),
        )
    }

    /// Runs one RPC named `operation`: authenticates the caller, admits the request (or
    /// refuses it with ThrottlingException, unaudited: it did nothing), then runs the rest on
    /// one blocking thread, as HSM, store and audit log calls must not block the async workers:
    /// `body` (conversion and the core), then the audit record's commit. A blocking task runs
    /// to its end, so a caller who hangs up or a timeout never stops a request halfway or
    /// leaves it unaudited. The caller gets the answer, with its request id, once the record is
    /// durable, or DependencyTimeoutException once the request timeout has passed.
    async fn call<Req, Resp>(
        &self,
        operation: &'static str,
        request: Request<Req>,
        body: impl FnOnce(&Kms, &Caller, Req) -> Result<Resp, KmsError> + Send + 'static,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        let started = Instant::now();
        let request_id = request_id(request.metadata());
        let span = tracing::info_span!("request", request_id = %request_id, rpc = operation);
        let peer = request.remote_addr();
        if let Some(connections) = &self.connections {
            connections.touch(peer);
        }
        let peer_certs = request.peer_certs();
        let caller = self
            .auth
            .authenticate(peer_certs.as_deref().map(Vec::as_slice));
        // Unauthenticated callers share a bucket per address.
        let admitted = match &caller {
            Ok(caller) => self.admission.admit(caller.principal(), operation),
            Err(_) => self.admission.admit(
                &peer.map_or_else(String::new, |a| a.ip().to_string()),
                operation,
            ),
        };
        let answer = match admitted {
            Err(throttled) => {
                debug!(parent: &span, reason = throttled.reason(), "throttled");
                if let Some(metrics) = &self.metrics {
                    metrics.record(operation, "throttled", started.elapsed());
                }
                return Err(with_request_id(to_status(&throttled), &request_id));
            }
            Ok(admitted) => {
                let run = Run {
                    kms: Arc::clone(&self.kms),
                    audit: Arc::clone(&self.audit),
                    operation,
                    request_id: request_id.clone(),
                    peer: peer.map(|a| a.to_string()),
                };
                let (answer_tx, answer_rx) = tokio::sync::oneshot::channel();
                let run_span = span.clone();
                let req = request.into_inner();
                // A blocking task runs to its end even when nobody awaits it any more.
                drop(tokio::task::spawn_blocking(move || {
                    let _entered = run_span.enter();
                    run.execute(caller, req, body, admitted, answer_tx);
                }));
                let timeout = self.admission.limits().request_timeout;
                match tokio::time::timeout(timeout, answer_rx).await {
                    Ok(Ok(answer)) => answer,
                    Ok(Err(_)) => Err(KmsError::Internal(
                        "the request's task stopped without an answer (kmsd is shutting down)"
                            .into(),
                    )),
                    Err(_) => Err(KmsError::TimedOut(format!(
                        "the request did not finish within the server's request timeout of \
                         {timeout:?}; it may still complete, and its audit record says how"
                    ))),
                }
            }
        };
        if let Some(metrics) = &self.metrics {
            metrics.record(operation, outcome(&answer).as_str(), started.elapsed());
        }
        match answer {
            Ok(resp) => {
                let mut response = Response::new(resp);
                if let Ok(id) = MetadataValue::try_from(request_id.as_str()) {
                    response.metadata_mut().insert(REQUEST_ID_HEADER, id);
                }
                Ok(response)
            }
            Err(e) => {
                let _entered = span.enter();
                // The one log line of a failure the caller cannot fix: the cause, which the
                // status never carries, under the request's span.
                if matches!(
                    e,
                    KmsError::Internal(_)
                        | KmsError::KeyUnavailable(_)
                        | KmsError::DependencyTimeout(_)
                ) {
                    error!(reason = e.reason(), error = %ErrorChain(&e), "request failed");
                }
                Err(with_request_id(to_status(&e), &request_id))
            }
        }
    }
}

/// What an admitted request's task needs.
struct Run {
    kms: Arc<Kms>,
    audit: Arc<dyn AuditSink>,
    operation: &'static str,
    request_id: String,
    peer: Option<String>,
}

impl Run {
    /// Runs on a blocking thread: `body` for an authenticated caller, then the audit record of
    /// the outcome (also of a failed authentication). Sends the answer once the record is
    /// durable, from whichever thread committed it (this one, when no commit was running). A
    /// request whose record cannot be written fails, whatever the core did.
    fn execute<Req, Resp>(
        self,
        caller: Result<Caller, KmsError>,
        req: Req,
        body: impl FnOnce(&Kms, &Caller, Req) -> Result<Resp, KmsError>,
        admitted: Admitted,
        answer: tokio::sync::oneshot::Sender<Result<Resp, KmsError>>,
    ) where
        Resp: Send + 'static,
    {
        let time_ms = now_ms();
        let (result, principal, note) = match caller {
            Err(e) => (Err(e), None, kms_core::CallNote::default()),
            Ok(caller) => {
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    body(&self.kms, &caller, req)
                }));
                let result = ran.unwrap_or_else(|_| {
                    Err(KmsError::Internal("the request's handler panicked".into()))
                });
                (
                    result,
                    Some(caller.principal().to_owned()),
                    caller.take_note(),
                )
            }
        };
        // The request no longer runs in the core; waiting for the audit record does not count
        // against the limit, since the log's group commit batches every waiting record.
        drop(admitted);
        let event = AuditEvent {
            time_ms,
            request_id: self.request_id,
            principal,
            peer: self.peer,
            operation: self.operation.to_owned(),
            keys: note
                .keys
                .iter()
                .map(|(key_id, version)| AuditKey {
                    key_id: key_id.to_string(),
                    version: *version,
                })
                .collect(),
            encryption_context: note.encryption_context,
            destination_encryption_context: note.destination_encryption_context,
            outcome: outcome(&result),
            error: result.as_ref().err().map(|e| e.reason().to_owned()),
            policy_statement: note.policy_statement,
        };
        self.audit.submit(
            event,
            Box::new(move |durable| {
                let audited = durable.map(|_| ()).map_err(KmsError::from);
                // The caller may have hung up or timed out: nobody is left to tell.
                let _ = answer.send(audited.and(result));
            }),
        );
    }
}

fn with_request_id(mut status: Status, request_id: &str) -> Status {
    if let Ok(id) = MetadataValue::try_from(request_id) {
        status.metadata_mut().insert(REQUEST_ID_HEADER, id);
    }
    status
}

/// The caller's `x-request-id` when it is a sane token, else a new UUID.
fn request_id(metadata: &MetadataMap) -> String {
    metadata
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            (1..=128).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The audit outcome of a result.
fn outcome<T>(result: &Result<T, KmsError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Success,
        Err(KmsError::AccessDenied(_) | KmsError::Unauthenticated(_)) => Outcome::Denied,
        Err(_) => Outcome::Failed,
    }
}

mod handlers;

#[cfg(test)]
mod tests;
