//! The tonic implementation of `kms.v1.KeyManagementService`.
//!
//! Every RPC goes through [`KmsGrpc::call`]: authenticate the caller, convert the request and
//! run the core on a blocking thread, write the audit record and wait until it is durable,
//! then answer. A request whose audit record cannot be written gets an error, whatever the
//! core did: kmsd never answers a call it could not audit.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use kms_core::audit::{AuditEvent, AuditKey, AuditLog, Outcome};
use kms_core::service::{CreateKeyInput, PageLimit, Plaintext, RandomLength};
use kms_core::tags::NewTags;
use kms_core::{AliasName, Caller, KeyRef, Kms, KmsError, SecretBytes};
use kms_proto::v1 as pb;
use kms_proto::v1::key_management_service_server::{
    KeyManagementService, KeyManagementServiceServer,
};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};
use tracing::{debug, error};

use crate::auth::Authenticator;
use crate::connections::Connections;
use crate::convert;
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
    audit: Arc<AuditLog>,
    metrics: Option<Arc<Metrics>>,
    admission: Arc<Admission>,
    connections: Option<Arc<Connections>>,
}

impl KmsGrpc {
    /// The service on `kms`, authenticating with `auth` and auditing to `audit`.
    pub fn new(kms: Arc<Kms>, auth: Arc<Authenticator>, audit: Arc<AuditLog>) -> Self {
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
                if matches!(e, KmsError::Internal(_)) {
                    error!(error = %ErrorChain(&e), "request failed");
                }
                Err(with_request_id(to_status(&e), &request_id))
            }
        }
    }
}

/// What an admitted request's task needs.
struct Run {
    kms: Arc<Kms>,
    audit: Arc<AuditLog>,
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

fn new_tags(tags: Vec<pb::Tag>) -> Result<NewTags, KmsError> {
    NewTags::new(tags.into_iter().map(|t| (t.tag_key, t.tag_value)))
}

fn page_token(token: String) -> Option<String> {
    (!token.is_empty()).then_some(token)
}

fn take_plaintext(secret: SecretBytes) -> Vec<u8> {
    // Moves the bytes into the response without a copy. Once tonic has encoded the response
    // it drops this Vec without zeroizing it: a known limit of prost's Vec<u8> fields.
    let mut bytes = secret.into_zeroizing();
    std::mem::take(&mut *bytes)
}

#[tonic::async_trait]
impl KeyManagementService for KmsGrpc {
    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        self.call("CreateKey", request, |kms, caller, req| {
            let input = CreateKeyInput {
                description: req.description,
                usage: convert::key_usage(req.key_usage)?,
                spec: convert::key_spec(req.key_spec)?,
                origin: convert::origin(req.origin)?,
                tags: new_tags(req.tags)?,
                policy: (!req.policy.is_empty()).then_some(req.policy),
                bypass_policy_lockout_safety_check: req.bypass_policy_lockout_safety_check,
            };
            let record = kms.create_key(caller, input)?;
            Ok(pb::CreateKeyResponse {
                key_metadata: Some(convert::key_metadata(&record)),
            })
        })
        .await
    }

    async fn describe_key(
        &self,
        request: Request<pb::DescribeKeyRequest>,
    ) -> Result<Response<pb::DescribeKeyResponse>, Status> {
        self.call("DescribeKey", request, |kms, caller, req| {
            let record = kms.describe_key(caller, &KeyRef::parse(&req.key_id, "key_id")?)?;
            Ok(pb::DescribeKeyResponse {
                key_metadata: Some(convert::key_metadata(&record)),
            })
        })
        .await
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        self.call("ListKeys", request, |kms, caller, req| {
            let limit = PageLimit::new(req.limit)?;
            let page = kms.list_keys(caller, limit, page_token(req.page_token).as_deref())?;
            Ok(pb::ListKeysResponse {
                keys: page
                    .keys
                    .into_iter()
                    .map(|id| pb::KeyListEntry {
                        key_id: id.to_string(),
                    })
                    .collect(),
                next_page_token: page.next_page_token.unwrap_or_default(),
            })
        })
        .await
    }

    async fn enable_key(
        &self,
        request: Request<pb::EnableKeyRequest>,
    ) -> Result<Response<pb::EnableKeyResponse>, Status> {
        self.call("EnableKey", request, |kms, caller, req| {
            kms.enable_key(caller, &KeyRef::parse(&req.key_id, "key_id")?)?;
            Ok(pb::EnableKeyResponse {})
        })
        .await
    }

    async fn disable_key(
        &self,
        request: Request<pb::DisableKeyRequest>,
    ) -> Result<Response<pb::DisableKeyResponse>, Status> {
        self.call("DisableKey", request, |kms, caller, req| {
            kms.disable_key(caller, &KeyRef::parse(&req.key_id, "key_id")?)?;
            Ok(pb::DisableKeyResponse {})
        })
        .await
    }

    async fn update_key_description(
        &self,
        request: Request<pb::UpdateKeyDescriptionRequest>,
    ) -> Result<Response<pb::UpdateKeyDescriptionResponse>, Status> {
        self.call("UpdateKeyDescription", request, |kms, caller, req| {
            let key = KeyRef::parse(&req.key_id, "key_id")?;
            kms.update_key_description(caller, &key, req.description)?;
            Ok(pb::UpdateKeyDescriptionResponse {})
        })
        .await
    }

    async fn encrypt(
        &self,
        request: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        self.call("Encrypt", request, |kms, caller, req| {
            let plaintext = Plaintext::new(SecretBytes::new(req.plaintext))?;
            let key = KeyRef::parse(&req.key_id, "key_id")?;
            let context = convert::context(req.encryption_context, "encryption_context")?;
            let algorithm = convert::encryption_algorithm(req.encryption_algorithm)?;
            let out = kms.encrypt_with(caller, &key, &plaintext, &context, algorithm)?;
            Ok(pb::EncryptResponse {
                ciphertext_blob: out.ciphertext_blob,
                key_id: out.key_id.to_string(),
                encryption_algorithm: convert::algorithm(out.algorithm).into(),
            })
        })
        .await
    }

    async fn decrypt(
        &self,
        request: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        self.call("Decrypt", request, |kms, caller, req| {
            let key = KeyRef::parse_optional(&req.key_id, "key_id")?;
            let context = convert::context(req.encryption_context, "encryption_context")?;
            let algorithm = convert::encryption_algorithm(req.encryption_algorithm)?;
            let out = kms.decrypt_with(
                caller,
                &req.ciphertext_blob,
                &context,
                key.as_ref(),
                algorithm,
            )?;
            Ok(pb::DecryptResponse {
                key_id: out.key_id.to_string(),
                encryption_algorithm: convert::algorithm(out.algorithm).into(),
                plaintext: take_plaintext(out.plaintext),
            })
        })
        .await
    }

    async fn re_encrypt(
        &self,
        request: Request<pb::ReEncryptRequest>,
    ) -> Result<Response<pb::ReEncryptResponse>, Status> {
        self.call("ReEncrypt", request, |kms, caller, req| {
            let source_key = KeyRef::parse_optional(&req.source_key_id, "source_key_id")?;
            let destination = KeyRef::parse(&req.destination_key_id, "destination_key_id")?;
            let source_context =
                convert::context(req.source_encryption_context, "source_encryption_context")?;
            let destination_context = convert::context(
                req.destination_encryption_context,
                "destination_encryption_context",
            )?;
            let out = kms.re_encrypt(
                caller,
                &req.ciphertext_blob,
                &source_context,
                source_key.as_ref(),
                &destination,
                &destination_context,
            )?;
            Ok(pb::ReEncryptResponse {
                ciphertext_blob: out.ciphertext_blob,
                source_key_id: out.source_key_id.to_string(),
                key_id: out.key_id.to_string(),
            })
        })
        .await
    }

    async fn generate_data_key(
        &self,
        request: Request<pb::GenerateDataKeyRequest>,
    ) -> Result<Response<pb::GenerateDataKeyResponse>, Status> {
        self.call("GenerateDataKey", request, |kms, caller, req| {
            let key = KeyRef::parse(&req.key_id, "key_id")?;
            let context = convert::context(req.encryption_context, "encryption_context")?;
            let length = convert::data_key_length(req.key_spec, req.number_of_bytes)?;
            let out = kms.generate_data_key(caller, &key, &context, length)?;
            Ok(pb::GenerateDataKeyResponse {
                ciphertext_blob: out.ciphertext_blob,
                key_id: out.key_id.to_string(),
                plaintext: take_plaintext(out.plaintext),
            })
        })
        .await
    }

    async fn generate_data_key_without_plaintext(
        &self,
        request: Request<pb::GenerateDataKeyWithoutPlaintextRequest>,
    ) -> Result<Response<pb::GenerateDataKeyWithoutPlaintextResponse>, Status> {
        self.call(
            "GenerateDataKeyWithoutPlaintext",
            request,
            |kms, caller, req| {
                let key = KeyRef::parse(&req.key_id, "key_id")?;
                let context = convert::context(req.encryption_context, "encryption_context")?;
                let length = convert::data_key_length(req.key_spec, req.number_of_bytes)?;
                let out =
                    kms.generate_data_key_without_plaintext(caller, &key, &context, length)?;
                Ok(pb::GenerateDataKeyWithoutPlaintextResponse {
                    ciphertext_blob: out.ciphertext_blob,
                    key_id: out.key_id.to_string(),
                })
            },
        )
        .await
    }

    async fn generate_random(
        &self,
        request: Request<pb::GenerateRandomRequest>,
    ) -> Result<Response<pb::GenerateRandomResponse>, Status> {
        self.call("GenerateRandom", request, |kms, caller, req| {
            let length = RandomLength::new(req.number_of_bytes)?;
            let bytes = kms.generate_random(caller, length)?;
            Ok(pb::GenerateRandomResponse {
                plaintext: take_plaintext(bytes),
            })
        })
        .await
    }

    async fn create_alias(
        &self,
        request: Request<pb::CreateAliasRequest>,
    ) -> Result<Response<pb::CreateAliasResponse>, Status> {
        self.call("CreateAlias", request, |kms, caller, req| {
            let name = AliasName::parse(&req.alias_name)?;
            let target = KeyRef::parse(&req.target_key_id, "target_key_id")?;
            kms.create_alias(caller, &name, &target)?;
            Ok(pb::CreateAliasResponse {})
        })
        .await
    }

    async fn update_alias(
        &self,
        request: Request<pb::UpdateAliasRequest>,
    ) -> Result<Response<pb::UpdateAliasResponse>, Status> {
        self.call("UpdateAlias", request, |kms, caller, req| {
            let name = AliasName::parse(&req.alias_name)?;
            let target = KeyRef::parse(&req.target_key_id, "target_key_id")?;
            kms.update_alias(caller, &name, &target)?;
            Ok(pb::UpdateAliasResponse {})
        })
        .await
    }

    async fn delete_alias(
        &self,
        request: Request<pb::DeleteAliasRequest>,
    ) -> Result<Response<pb::DeleteAliasResponse>, Status> {
        self.call("DeleteAlias", request, |kms, caller, req| {
            kms.delete_alias(caller, &AliasName::parse(&req.alias_name)?)?;
            Ok(pb::DeleteAliasResponse {})
        })
        .await
    }

    async fn list_aliases(
        &self,
        request: Request<pb::ListAliasesRequest>,
    ) -> Result<Response<pb::ListAliasesResponse>, Status> {
        self.call("ListAliases", request, |kms, caller, req| {
            let key = KeyRef::parse_optional(&req.key_id, "key_id")?;
            let limit = PageLimit::new(req.limit)?;
            let page = kms.list_aliases(
                caller,
                key.as_ref(),
                limit,
                page_token(req.page_token).as_deref(),
            )?;
            Ok(pb::ListAliasesResponse {
                aliases: page
                    .aliases
                    .into_iter()
                    .map(|a| pb::AliasListEntry {
                        alias_name: a.name.to_string(),
                        target_key_id: a.key_id.to_string(),
                        creation_date: Some(convert::timestamp(a.created_at_ms)),
                        last_updated_date: Some(convert::timestamp(a.updated_at_ms)),
                    })
                    .collect(),
                next_page_token: page.next_page_token.unwrap_or_default(),
            })
        })
        .await
    }

    async fn tag_resource(
        &self,
        request: Request<pb::TagResourceRequest>,
    ) -> Result<Response<pb::TagResourceResponse>, Status> {
        self.call("TagResource", request, |kms, caller, req| {
            let key = KeyRef::parse(&req.key_id, "key_id")?;
            kms.tag_resource(caller, &key, new_tags(req.tags)?)?;
            Ok(pb::TagResourceResponse {})
        })
        .await
    }

    async fn untag_resource(
        &self,
        request: Request<pb::UntagResourceRequest>,
    ) -> Result<Response<pb::UntagResourceResponse>, Status> {
        self.call("UntagResource", request, |kms, caller, req| {
            let key = KeyRef::parse(&req.key_id, "key_id")?;
            kms.untag_resource(caller, &key, &req.tag_keys)?;
            Ok(pb::UntagResourceResponse {})
        })
        .await
    }

    async fn list_resource_tags(
        &self,
        request: Request<pb::ListResourceTagsRequest>,
    ) -> Result<Response<pb::ListResourceTagsResponse>, Status> {
        self.call("ListResourceTags", request, |kms, caller, req| {
            let key = KeyRef::parse(&req.key_id, "key_id")?;
            let limit = PageLimit::new(req.limit)?;
            let page =
                kms.list_resource_tags(caller, &key, limit, page_token(req.page_token).as_deref())?;
            Ok(pb::ListResourceTagsResponse {
                tags: page
                    .tags
                    .into_iter()
                    .map(|(tag_key, tag_value)| pb::Tag { tag_key, tag_value })
                    .collect(),
                next_page_token: page.next_page_token.unwrap_or_default(),
            })
        })
        .await
    }

    async fn rotate_key_on_demand(
        &self,
        request: Request<pb::RotateKeyOnDemandRequest>,
    ) -> Result<Response<pb::RotateKeyOnDemandResponse>, Status> {
        self.call("RotateKeyOnDemand", request, |kms, caller, req| {
            let record =
                kms.rotate_key_on_demand(caller, &KeyRef::parse(&req.key_id, "key_id")?)?;
            Ok(pb::RotateKeyOnDemandResponse {
                key_id: record.id.to_string(),
                key_version: record.current_version,
            })
        })
        .await
    }

    async fn list_key_rotations(
        &self,
        request: Request<pb::ListKeyRotationsRequest>,
    ) -> Result<Response<pb::ListKeyRotationsResponse>, Status> {
        self.call("ListKeyRotations", request, |kms, caller, req| {
            let key = KeyRef::parse(&req.key_id, "key_id")?;
            let limit = PageLimit::new(req.limit)?;
            let page =
                kms.list_key_rotations(caller, &key, limit, page_token(req.page_token).as_deref())?;
            let key_id = page.key_id.to_string();
            Ok(pb::ListKeyRotationsResponse {
                rotations: page
                    .rotations
                    .into_iter()
                    .map(|v| pb::KeyRotation {
                        key_id: key_id.clone(),
                        rotation_date: Some(convert::timestamp(v.created_at_ms)),
                        rotation_type: convert::rotation_type(v.source).into(),
                        key_version: v.version,
                    })
                    .collect(),
                next_page_token: page.next_page_token.unwrap_or_default(),
            })
        })
        .await
    }

    async fn enable_key_rotation(
        &self,
        request: Request<pb::EnableKeyRotationRequest>,
    ) -> Result<Response<pb::EnableKeyRotationResponse>, Status> {
        self.call("EnableKeyRotation", request, |kms, caller, req| {
            let key = KeyRef::parse(&req.key_id, "key_id")?;
            kms.enable_key_rotation(caller, &key, req.rotation_period_in_days)?;
            Ok(pb::EnableKeyRotationResponse {})
        })
        .await
    }

    async fn disable_key_rotation(
        &self,
        request: Request<pb::DisableKeyRotationRequest>,
    ) -> Result<Response<pb::DisableKeyRotationResponse>, Status> {
        self.call("DisableKeyRotation", request, |kms, caller, req| {
            kms.disable_key_rotation(caller, &KeyRef::parse(&req.key_id, "key_id")?)?;
            Ok(pb::DisableKeyRotationResponse {})
        })
        .await
    }

    async fn get_key_rotation_status(
        &self,
        request: Request<pb::GetKeyRotationStatusRequest>,
    ) -> Result<Response<pb::GetKeyRotationStatusResponse>, Status> {
        self.call("GetKeyRotationStatus", request, |kms, caller, req| {
            let record =
                kms.get_key_rotation_status(caller, &KeyRef::parse(&req.key_id, "key_id")?)?;
            let metadata = convert::key_metadata(&record);
            Ok(pb::GetKeyRotationStatusResponse {
                key_rotation_enabled: metadata.key_rotation_enabled,
                key_id: metadata.key_id,
                rotation_period_in_days: metadata.rotation_period_in_days,
                next_rotation_date: metadata.next_rotation_date,
            })
        })
        .await
    }

    async fn schedule_key_deletion(
        &self,
        request: Request<pb::ScheduleKeyDeletionRequest>,
    ) -> Result<Response<pb::ScheduleKeyDeletionResponse>, Status> {
        self.call("ScheduleKeyDeletion", request, |kms, caller, req| {
            let key = KeyRef::parse(&req.key_id, "key_id")?;
            let record = kms.schedule_key_deletion(caller, &key, req.pending_window_in_days)?;
            let metadata = convert::key_metadata(&record);
            Ok(pb::ScheduleKeyDeletionResponse {
                key_id: metadata.key_id,
                deletion_date: metadata.deletion_date,
                key_state: metadata.key_state,
                pending_window_in_days: metadata
                    .pending_deletion_window_in_days
                    .unwrap_or_default(),
            })
        })
        .await
    }

    async fn cancel_key_deletion(
        &self,
        request: Request<pb::CancelKeyDeletionRequest>,
    ) -> Result<Response<pb::CancelKeyDeletionResponse>, Status> {
        self.call("CancelKeyDeletion", request, |kms, caller, req| {
            let record = kms.cancel_key_deletion(caller, &KeyRef::parse(&req.key_id, "key_id")?)?;
            Ok(pb::CancelKeyDeletionResponse {
                key_id: record.id.to_string(),
            })
        })
        .await
    }

    async fn get_key_policy(
        &self,
        request: Request<pb::GetKeyPolicyRequest>,
    ) -> Result<Response<pb::GetKeyPolicyResponse>, Status> {
        self.call("GetKeyPolicy", request, |kms, caller, req| {
            let key = KeyRef::parse(&req.key_id, "key_id")?;
            let (key_id, policy) = kms.get_key_policy(caller, &key)?;
            Ok(pb::GetKeyPolicyResponse {
                policy: policy.text().to_owned(),
                key_id: key_id.to_string(),
            })
        })
        .await
    }

    async fn put_key_policy(
        &self,
        request: Request<pb::PutKeyPolicyRequest>,
    ) -> Result<Response<pb::PutKeyPolicyResponse>, Status> {
        self.call("PutKeyPolicy", request, |kms, caller, req| {
            let key = KeyRef::parse(&req.key_id, "key_id")?;
            kms.put_key_policy(
                caller,
                &key,
                &req.policy,
                req.bypass_policy_lockout_safety_check,
            )?;
            Ok(pb::PutKeyPolicyResponse {})
        })
        .await
    }

    async fn get_public_key(
        &self,
        request: Request<pb::GetPublicKeyRequest>,
    ) -> Result<Response<pb::GetPublicKeyResponse>, Status> {
        self.call("GetPublicKey", request, |kms, caller, req| {
            let key = KeyRef::parse(&req.key_id, "key_id")?;
            Ok(convert::public_key(kms.get_public_key(caller, &key)?))
        })
        .await
    }

    async fn sign(
        &self,
        request: Request<pb::SignRequest>,
    ) -> Result<Response<pb::SignResponse>, Status> {
        self.call("Sign", request, |kms, caller, req| {
            let key = KeyRef::parse(&req.key_id, "key_id")?;
            let message_type = convert::message_type(req.message_type)?;
            let algorithm = convert::signing_algorithm(req.signing_algorithm)?;
            let out = kms.sign(caller, &key, &req.message, message_type, algorithm)?;
            Ok(pb::SignResponse {
                key_id: out.key_id.to_string(),
                signature: out.signature,
                signing_algorithm: convert::pb_signing_algorithm(out.algorithm).into(),
            })
        })
        .await
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        self.call("Verify", request, |kms, caller, req| {
            let key = KeyRef::parse(&req.key_id, "key_id")?;
            let message_type = convert::message_type(req.message_type)?;
            let algorithm = convert::signing_algorithm(req.signing_algorithm)?;
            let key_id = kms.verify(
                caller,
                &key,
                &req.message,
                message_type,
                &req.signature,
                algorithm,
            )?;
            Ok(pb::VerifyResponse {
                key_id: key_id.to_string(),
                signature_valid: true,
                signing_algorithm: convert::pb_signing_algorithm(algorithm).into(),
            })
        })
        .await
    }

    async fn generate_mac(
        &self,
        request: Request<pb::GenerateMacRequest>,
    ) -> Result<Response<pb::GenerateMacResponse>, Status> {
        self.call("GenerateMac", request, |kms, caller, req| {
            let key = KeyRef::parse(&req.key_id, "key_id")?;
            let algorithm = convert::mac_algorithm(req.mac_algorithm)?;
            let out = kms.generate_mac(caller, &key, &req.message, algorithm)?;
            Ok(pb::GenerateMacResponse {
                key_id: out.key_id.to_string(),
                mac: out.mac,
                mac_algorithm: convert::pb_mac_algorithm(out.algorithm).into(),
            })
        })
        .await
    }

    async fn verify_mac(
        &self,
        request: Request<pb::VerifyMacRequest>,
    ) -> Result<Response<pb::VerifyMacResponse>, Status> {
        self.call("VerifyMac", request, |kms, caller, req| {
            let key = KeyRef::parse(&req.key_id, "key_id")?;
            let algorithm = convert::mac_algorithm(req.mac_algorithm)?;
            let key_id = kms.verify_mac(caller, &key, &req.message, &req.mac, algorithm)?;
            Ok(pb::VerifyMacResponse {
                key_id: key_id.to_string(),
                mac_valid: true,
                mac_algorithm: convert::pb_mac_algorithm(algorithm).into(),
            })
        })
        .await
    }

    async fn get_parameters_for_import(
        &self,
        request: Request<pb::GetParametersForImportRequest>,
    ) -> Result<Response<pb::GetParametersForImportResponse>, Status> {
        self.call("GetParametersForImport", request, |kms, caller, req| {
            let key = KeyRef::parse(&req.key_id, "key_id")?;
            let algorithm = convert::wrapping_algorithm(req.wrapping_algorithm)?;
            let bits = convert::wrapping_key_bits(req.wrapping_key_spec)?;
            let out = kms.get_parameters_for_import(caller, &key, algorithm, bits)?;
            Ok(pb::GetParametersForImportResponse {
                key_id: out.key_id.to_string(),
                import_token: out.import_token,
                public_key: out.public_key,
                parameters_valid_to: Some(convert::timestamp(out.valid_to_ms)),
            })
        })
        .await
    }

    async fn import_key_material(
        &self,
        request: Request<pb::ImportKeyMaterialRequest>,
    ) -> Result<Response<pb::ImportKeyMaterialResponse>, Status> {
        self.call("ImportKeyMaterial", request, |kms, caller, req| {
            let key = KeyRef::parse(&req.key_id, "key_id")?;
            let expiration = convert::expiration_model(req.expiration_model)?;
            kms.import_key_material(
                caller,
                &key,
                &req.import_token,
                &req.encrypted_key_material,
                expiration,
                req.valid_to.as_ref().map(convert::millis),
            )?;
            Ok(pb::ImportKeyMaterialResponse {})
        })
        .await
    }

    async fn delete_imported_key_material(
        &self,
        request: Request<pb::DeleteImportedKeyMaterialRequest>,
    ) -> Result<Response<pb::DeleteImportedKeyMaterialResponse>, Status> {
        self.call("DeleteImportedKeyMaterial", request, |kms, caller, req| {
            let key = KeyRef::parse(&req.key_id, "key_id")?;
            kms.delete_imported_key_material(caller, &key)?;
            Ok(pb::DeleteImportedKeyMaterialResponse {})
        })
        .await
    }
}

/// The audit outcome of a result.
fn outcome<T>(result: &Result<T, KmsError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Success,
        Err(KmsError::AccessDenied(_) | KmsError::Unauthenticated(_)) => Outcome::Denied,
        Err(_) => Outcome::Failed,
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;
    use tonic_types::StatusExt;

    use super::*;

    /// A `--dev` service on memory backends, auditing to a temporary file.
    fn service_with_log() -> (KmsGrpc, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let kms = kms_core::testing::memory_kms().0.with_authorization(
            kms_core::service::Authorization {
                administrators: vec![crate::auth::DEV_PRINCIPAL.to_owned()],
                server_policy: None,
            },
        );
        let audit = AuditLog::open(
            &dir.path().join("audit.log"),
            [7; 16],
            Arc::new(kms_core::testing::SoftCheckpointSigner::new()),
            Arc::new(kms_core::testing::MemoryStore::default()),
        )
        .unwrap();
        let svc = KmsGrpc::new(Arc::new(kms), Arc::new(Authenticator::Dev), Arc::new(audit));
        (svc, dir)
    }

    fn service() -> KmsGrpc {
        // The log's directory may go: the open file stays writable.
        service_with_log().0
    }

    /// A body that is not one whole protobuf message of the RPC is the caller's fault: found
    /// by the rpc fuzz target, which got INTERNAL from tonic for each of these.
    #[tokio::test]
    async fn a_body_that_is_not_one_message_is_the_callers_fault() {
        use http_body_util::BodyExt as _;
        use tower::Service as _;
        let mut server = service().into_server();
        let oversized = [&[0, 0, 1, 0, 1][..], &vec![0; 65_537]].concat();
        for (body, code) in [
            // A field tag with no value.
            (vec![0, 0, 0, 0, 1, 0x21], Code::InvalidArgument),
            (Vec::new(), Code::InvalidArgument),
            (vec![0, 0, 0, 0, 10, 8, 1], Code::InvalidArgument),
            (vec![1, 0, 0, 0, 2, 8, 1], Code::InvalidArgument),
            (vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0], Code::InvalidArgument),
            (oversized, Code::OutOfRange),
        ] {
            let length = body.len();
            let request = http::Request::post("/kms.v1.KeyManagementService/CancelKeyDeletion")
                .header("content-type", "application/grpc")
                .body(tonic::body::Body::new(http_body_util::Full::new(
                    hyper::body::Bytes::from(body),
                )))
                .unwrap();
            let response = server.call(request).await.unwrap();
            let (parts, body) = response.into_parts();
            let trailers = body.collect().await.unwrap().trailers().cloned();
            let headers = trailers.unwrap_or(parts.headers);
            let status = Status::from_header_map(&headers).unwrap();
            assert_eq!(status.code(), code, "{length} bytes: {status:?}");
            assert_eq!(reason(&status), "ValidationException");
        }
    }

    fn reason(status: &Status) -> String {
        status
            .get_details_error_info()
            .map(|i| i.reason)
            .unwrap_or_default()
    }

    async fn new_key(svc: &KmsGrpc) -> String {
        svc.create_key(Request::new(pb::CreateKeyRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .key_metadata
            .unwrap()
            .key_id
    }

    #[tokio::test]
    async fn sign_and_verify_handlers_convert_and_delegate() {
        let svc = service();
        let create = |spec: pb::KeySpec| {
            Request::new(pb::CreateKeyRequest {
                key_spec: spec.into(),
                ..Default::default()
            })
        };
        let ec = svc
            .create_key(create(pb::KeySpec::EccNistP256))
            .await
            .unwrap()
            .into_inner()
            .key_metadata
            .unwrap();
        assert_eq!(ec.key_usage(), pb::KeyUsage::SignVerify);
        assert_eq!(
            ec.signing_algorithms().collect::<Vec<_>>(),
            [pb::SigningAlgorithm::EcdsaSha256]
        );
        let public = svc
            .get_public_key(Request::new(pb::GetPublicKeyRequest {
                key_id: ec.key_id.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(public.key_spec(), pb::KeySpec::EccNistP256);
        assert_eq!(public.public_key.len(), 91, "a P-256 SubjectPublicKeyInfo");

        let sign = |message: &[u8], algorithm: pb::SigningAlgorithm| {
            Request::new(pb::SignRequest {
                key_id: ec.key_id.clone(),
                message: message.to_vec(),
                signing_algorithm: algorithm.into(),
                ..Default::default()
            })
        };
        let signature = svc
            .sign(sign(b"hello", pb::SigningAlgorithm::EcdsaSha256))
            .await
            .unwrap()
            .into_inner()
            .signature;
        let verify = |message: &[u8]| {
            Request::new(pb::VerifyRequest {
                key_id: ec.key_id.clone(),
                message: message.to_vec(),
                signature: signature.clone(),
                signing_algorithm: pb::SigningAlgorithm::EcdsaSha256.into(),
                ..Default::default()
            })
        };
        assert!(
            svc.verify(verify(b"hello"))
                .await
                .unwrap()
                .into_inner()
                .signature_valid
        );
        let bad = svc.verify(verify(b"hellO")).await.unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
        assert_eq!(reason(&bad), "KMSInvalidSignatureException");
        let unspecified = svc
            .sign(sign(b"hello", pb::SigningAlgorithm::Unspecified))
            .await
            .unwrap_err();
        assert_eq!(reason(&unspecified), "ValidationException");
        let wrong = svc
            .sign(sign(b"hello", pb::SigningAlgorithm::RsassaPssSha256))
            .await
            .unwrap_err();
        assert_eq!(reason(&wrong), "InvalidKeyUsageException");
    }

    #[tokio::test]
    async fn mac_handlers_convert_and_delegate() {
        let svc = service();
        let hmac = svc
            .create_key(Request::new(pb::CreateKeyRequest {
                key_spec: pb::KeySpec::Hmac256.into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .key_metadata
            .unwrap()
            .key_id;
        let mac = svc
            .generate_mac(Request::new(pb::GenerateMacRequest {
                key_id: hmac.clone(),
                message: b"m".to_vec(),
                mac_algorithm: pb::MacAlgorithm::HmacSha256.into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .mac;
        let verify_mac = |mac: Vec<u8>| {
            Request::new(pb::VerifyMacRequest {
                key_id: hmac.clone(),
                message: b"m".to_vec(),
                mac,
                mac_algorithm: pb::MacAlgorithm::HmacSha256.into(),
            })
        };
        assert!(
            svc.verify_mac(verify_mac(mac.clone()))
                .await
                .unwrap()
                .into_inner()
                .mac_valid
        );
        let mut flipped = mac;
        flipped[31] ^= 1;
        let bad = svc.verify_mac(verify_mac(flipped)).await.unwrap_err();
        assert_eq!(reason(&bad), "KMSInvalidMacException");
    }

    #[tokio::test]
    async fn handlers_map_errors_to_codes_and_reasons() {
        let svc = service();
        let key_id = new_key(&svc).await;

        let too_big = svc
            .encrypt(Request::new(pb::EncryptRequest {
                key_id: key_id.clone(),
                plaintext: vec![0; 4097],
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(too_big.code(), Code::InvalidArgument);
        assert_eq!(reason(&too_big), "ValidationException");
        assert!(
            !too_big.message().contains("\0\0"),
            "no plaintext in the message"
        );

        let garbage = svc
            .decrypt(Request::new(pb::DecryptRequest {
                ciphertext_blob: vec![1; 200],
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(garbage.code(), Code::InvalidArgument);
        assert_eq!(reason(&garbage), "InvalidCiphertextException");

        let missing = svc
            .describe_key(Request::new(pb::DescribeKeyRequest {
                key_id: "6f1c2e3a-9b7d-4c5e-8f01-23456789abcd".into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);
        assert_eq!(reason(&missing), "NotFoundException");

        svc.disable_key(Request::new(pb::DisableKeyRequest {
            key_id: key_id.clone(),
        }))
        .await
        .unwrap();
        let disabled = svc
            .generate_data_key(Request::new(pb::GenerateDataKeyRequest {
                key_id,
                key_spec: pb::DataKeySpec::Aes256.into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(disabled.code(), Code::FailedPrecondition);
        assert_eq!(reason(&disabled), "DisabledException");

        let zero = svc
            .generate_random(Request::new(pb::GenerateRandomRequest {
                number_of_bytes: 0,
            }))
            .await
            .unwrap_err();
        assert_eq!(reason(&zero), "ValidationException");
    }

    #[tokio::test]
    async fn generate_data_key_without_plaintext_returns_a_decryptable_blob() {
        let svc = service();
        let key_id = new_key(&svc).await;
        let out = svc
            .generate_data_key_without_plaintext(Request::new(
                pb::GenerateDataKeyWithoutPlaintextRequest {
                    key_id: key_id.clone(),
                    number_of_bytes: Some(24),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(out.key_id, key_id);
        let plaintext = svc
            .decrypt(Request::new(pb::DecryptRequest {
                ciphertext_blob: out.ciphertext_blob,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .plaintext;
        assert_eq!(plaintext.len(), 24);
    }

    #[tokio::test]
    async fn every_call_is_audited_with_its_key_and_request_id() {
        let (svc, dir) = service_with_log();
        let key_id = new_key(&svc).await;
        let mut request = Request::new(pb::EncryptRequest {
            key_id: key_id.clone(),
            plaintext: b"audit me not".to_vec(),
            encryption_context: [("tenant".to_owned(), "a".to_owned())].into(),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert(REQUEST_ID_HEADER, "req-42".parse().unwrap());
        let response = svc.encrypt(request).await.unwrap();
        assert_eq!(
            response.metadata().get(REQUEST_ID_HEADER).unwrap(),
            "req-42"
        );
        let missing = svc
            .describe_key(Request::new(pb::DescribeKeyRequest {
                key_id: "not-a-key".into(),
            }))
            .await
            .unwrap_err();
        assert!(missing.metadata().get(REQUEST_ID_HEADER).is_some());

        let bytes = std::fs::read(dir.path().join("audit.log")).unwrap();
        assert!(!bytes.windows(12).any(|w| w == b"audit me not"));
        let events: Vec<_> = kms_core::audit::read_events(&bytes)
            .map(|e| e.unwrap().1.event)
            .collect();
        let ops: Vec<_> = events.iter().map(|e| e.operation.as_str()).collect();
        assert_eq!(ops, ["CreateKey", "Encrypt", "DescribeKey"]);
        let encrypt = &events[1];
        assert_eq!(encrypt.request_id, "req-42");
        assert_eq!(encrypt.principal.as_deref(), Some("dev"));
        assert_eq!(encrypt.keys[0].key_id, key_id);
        assert_eq!(encrypt.keys[0].version, Some(1));
        assert_eq!(encrypt.encryption_context.as_ref().unwrap()["tenant"], "a");
        assert_eq!(events[2].outcome, kms_core::audit::Outcome::Failed);
        assert_eq!(events[2].error.as_deref(), Some("ValidationException"));
    }

    /// The audited operations in the log of `dir`, waiting up to 5 s for `wanted` of them.
    async fn audited(dir: &tempfile::TempDir, wanted: usize) -> Vec<kms_core::audit::AuditEvent> {
        for _ in 0..100 {
            let bytes = std::fs::read(dir.path().join("audit.log")).unwrap();
            let events: Vec<_> = kms_core::audit::read_events(&bytes)
                .map(|e| e.unwrap().1.event)
                .collect();
            if events.len() >= wanted {
                return events;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("fewer than {wanted} audit records");
    }

    fn limited(svc: KmsGrpc, max_concurrent: usize, timeout_ms: u64) -> KmsGrpc {
        svc.with_admission(Arc::new(Admission::new(Limits {
            max_concurrent,
            per_caller: None,
            request_timeout: std::time::Duration::from_millis(timeout_ms),
            ..Limits::default()
        })))
    }

    #[allow(clippy::unnecessary_wraps, reason = "the shape of an RPC body")]
    fn slow(_: &Kms, _: &Caller, (): ()) -> Result<(), KmsError> {
        std::thread::sleep(std::time::Duration::from_millis(300));
        Ok(())
    }

    #[tokio::test]
    async fn a_request_past_the_timeout_fails_unavailable_and_is_audited_when_it_ends() {
        let (svc, dir) = service_with_log();
        let svc = limited(svc, 8, 50);
        let status = svc.call("Slow", Request::new(()), slow).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(reason(&status), "DependencyTimeoutException");
        assert!(status.metadata().get(REQUEST_ID_HEADER).is_some());
        // The work went on and its record tells how it ended.
        let events = audited(&dir, 1).await;
        assert_eq!(events[0].operation, "Slow");
        assert_eq!(events[0].outcome, kms_core::audit::Outcome::Success);
    }

    #[tokio::test]
    async fn a_caller_that_hangs_up_mid_request_is_still_audited() {
        let (svc, dir) = service_with_log();
        let call = svc.call("Slow", Request::new(()), slow);
        // The caller goes away (tonic drops the handler's future) while the work runs.
        let gone = tokio::time::timeout(std::time::Duration::from_millis(50), call).await;
        assert!(gone.is_err());
        let events = audited(&dir, 1).await;
        assert_eq!(events[0].operation, "Slow");
        assert_eq!(events[0].outcome, kms_core::audit::Outcome::Success);
    }

    #[tokio::test]
    async fn requests_over_the_concurrency_limit_are_throttled_unaudited() {
        let (svc, dir) = service_with_log();
        let svc = limited(svc, 1, 5_000);
        let running = tokio::spawn({
            let svc = svc.clone();
            async move { svc.call("Slow", Request::new(()), slow).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let status = svc
            .create_key(Request::new(pb::CreateKeyRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(reason(&status), "ThrottlingException");
        assert!(running.await.unwrap().is_ok());
        // Once the slow call is done, the next one runs.
        new_key(&svc).await;
        let ops: Vec<_> = audited(&dir, 2)
            .await
            .into_iter()
            .map(|e| e.operation)
            .collect();
        assert_eq!(ops, ["Slow", "CreateKey"], "the refused call did nothing");
    }
}
