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
mod tests;
