//! The tonic implementation of `kms.v1.KeyManagementService`.

use std::collections::HashMap;
use std::sync::Arc;

use kms_core::service::{CreateKeyInput, DataKey, PageLimit, Plaintext, RandomLength};
use kms_core::tags::NewTags;
use kms_core::{AliasName, KeyRef, Kms, KmsError, SecretBytes, VersionSource};
use kms_proto::v1 as pb;
use kms_proto::v1::key_management_service_server::{
    KeyManagementService, KeyManagementServiceServer,
};
use tonic::{Request, Response, Status};

use crate::convert;
use crate::status::to_status;

/// The gRPC service: each call converts, runs the core on a blocking thread, converts back.
#[derive(Clone)]
pub struct KmsGrpc {
    kms: Arc<Kms>,
}

impl KmsGrpc {
    /// The service on `kms`.
    pub fn new(kms: Arc<Kms>) -> Self {
        KmsGrpc { kms }
    }

    /// The tonic server of this service, with kmsd's message size limits.
    pub fn into_server(self) -> KeyManagementServiceServer<Self> {
        KeyManagementServiceServer::new(self)
            .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::MAX_MESSAGE_BYTES)
    }

    /// The shared part of GenerateDataKey and GenerateDataKeyWithoutPlaintext.
    async fn generate(
        &self,
        key_id: &str,
        context: HashMap<String, String>,
        key_spec: i32,
        number_of_bytes: Option<u32>,
    ) -> Result<DataKey, Status> {
        let key = key_ref(key_id, "key_id")?;
        let context = convert::context(context, "encryption_context").or_status()?;
        let length = convert::data_key_length(key_spec, number_of_bytes).or_status()?;
        self.run(move |kms| kms.generate_data_key(&key, &context, length))
            .await
    }

    /// Runs `f` on a blocking thread: HSM and store calls must not block the async workers.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Kms) -> Result<T, KmsError> + Send + 'static,
    ) -> Result<T, Status> {
        let kms = Arc::clone(&self.kms);
        tokio::task::spawn_blocking(move || f(&kms))
            .await
            .map_err(|e| KmsError::Internal(Box::new(e)))
            .and_then(|r| r)
            .or_status()
    }
}

/// `?` on a core result inside a handler.
trait OrStatus<T> {
    fn or_status(self) -> Result<T, Status>;
}

impl<T> OrStatus<T> for Result<T, KmsError> {
    fn or_status(self) -> Result<T, Status> {
        self.map_err(|e| to_status(&e))
    }
}

fn key_ref(value: &str, field: &str) -> Result<KeyRef, Status> {
    KeyRef::parse(value, field).or_status()
}

fn new_tags(tags: Vec<pb::Tag>) -> Result<NewTags, Status> {
    NewTags::new(tags.into_iter().map(|t| (t.tag_key, t.tag_value))).or_status()
}

fn alias_name(value: &str) -> Result<AliasName, Status> {
    AliasName::parse(value).or_status()
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
        let req = request.into_inner();
        let input = CreateKeyInput {
            description: req.description,
            usage: convert::key_usage(req.key_usage).or_status()?,
            spec: convert::key_spec(req.key_spec).or_status()?,
            origin: convert::origin(req.origin).or_status()?,
            tags: new_tags(req.tags)?,
        };
        let record = self.run(move |kms| kms.create_key(input)).await?;
        Ok(Response::new(pb::CreateKeyResponse {
            key_metadata: Some(convert::key_metadata(&record)),
        }))
    }

    async fn describe_key(
        &self,
        request: Request<pb::DescribeKeyRequest>,
    ) -> Result<Response<pb::DescribeKeyResponse>, Status> {
        let key = key_ref(&request.into_inner().key_id, "key_id")?;
        let record = self.run(move |kms| kms.describe_key(&key)).await?;
        Ok(Response::new(pb::DescribeKeyResponse {
            key_metadata: Some(convert::key_metadata(&record)),
        }))
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let req = request.into_inner();
        let limit = PageLimit::new(req.limit).or_status()?;
        let token = (!req.page_token.is_empty()).then_some(req.page_token);
        let page = self
            .run(move |kms| kms.list_keys(limit, token.as_deref()))
            .await?;
        Ok(Response::new(pb::ListKeysResponse {
            keys: page
                .keys
                .into_iter()
                .map(|id| pb::KeyListEntry {
                    key_id: id.to_string(),
                })
                .collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn enable_key(
        &self,
        request: Request<pb::EnableKeyRequest>,
    ) -> Result<Response<pb::EnableKeyResponse>, Status> {
        let key = key_ref(&request.into_inner().key_id, "key_id")?;
        self.run(move |kms| kms.enable_key(&key)).await?;
        Ok(Response::new(pb::EnableKeyResponse {}))
    }

    async fn disable_key(
        &self,
        request: Request<pb::DisableKeyRequest>,
    ) -> Result<Response<pb::DisableKeyResponse>, Status> {
        let key = key_ref(&request.into_inner().key_id, "key_id")?;
        self.run(move |kms| kms.disable_key(&key)).await?;
        Ok(Response::new(pb::DisableKeyResponse {}))
    }

    async fn update_key_description(
        &self,
        request: Request<pb::UpdateKeyDescriptionRequest>,
    ) -> Result<Response<pb::UpdateKeyDescriptionResponse>, Status> {
        let req = request.into_inner();
        let key = key_ref(&req.key_id, "key_id")?;
        self.run(move |kms| kms.update_key_description(&key, req.description))
            .await?;
        Ok(Response::new(pb::UpdateKeyDescriptionResponse {}))
    }

    async fn encrypt(
        &self,
        request: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        let req = request.into_inner();
        let plaintext = Plaintext::new(SecretBytes::new(req.plaintext)).or_status()?;
        let key = key_ref(&req.key_id, "key_id")?;
        let context = convert::context(req.encryption_context, "encryption_context").or_status()?;
        let out = self
            .run(move |kms| kms.encrypt(&key, &plaintext, &context))
            .await?;
        Ok(Response::new(pb::EncryptResponse {
            ciphertext_blob: out.ciphertext_blob,
            key_id: out.key_id.to_string(),
            encryption_algorithm: convert::algorithm(out.algorithm).into(),
        }))
    }

    async fn decrypt(
        &self,
        request: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        let req = request.into_inner();
        let key = KeyRef::parse_optional(&req.key_id, "key_id").or_status()?;
        let context = convert::context(req.encryption_context, "encryption_context").or_status()?;
        let blob = req.ciphertext_blob;
        let out = self
            .run(move |kms| kms.decrypt(&blob, &context, key.as_ref()))
            .await?;
        Ok(Response::new(pb::DecryptResponse {
            key_id: out.key_id.to_string(),
            encryption_algorithm: convert::algorithm(out.algorithm).into(),
            plaintext: take_plaintext(out.plaintext),
        }))
    }

    async fn re_encrypt(
        &self,
        request: Request<pb::ReEncryptRequest>,
    ) -> Result<Response<pb::ReEncryptResponse>, Status> {
        let req = request.into_inner();
        let source_key = KeyRef::parse_optional(&req.source_key_id, "source_key_id").or_status()?;
        let destination = key_ref(&req.destination_key_id, "destination_key_id")?;
        let source_context =
            convert::context(req.source_encryption_context, "source_encryption_context")
                .or_status()?;
        let destination_context = convert::context(
            req.destination_encryption_context,
            "destination_encryption_context",
        )
        .or_status()?;
        let blob = req.ciphertext_blob;
        let out = self
            .run(move |kms| {
                kms.re_encrypt(
                    &blob,
                    &source_context,
                    source_key.as_ref(),
                    &destination,
                    &destination_context,
                )
            })
            .await?;
        Ok(Response::new(pb::ReEncryptResponse {
            ciphertext_blob: out.ciphertext_blob,
            source_key_id: out.source_key_id.to_string(),
            key_id: out.key_id.to_string(),
        }))
    }

    async fn generate_data_key(
        &self,
        request: Request<pb::GenerateDataKeyRequest>,
    ) -> Result<Response<pb::GenerateDataKeyResponse>, Status> {
        let req = request.into_inner();
        let out = self
            .generate(
                &req.key_id,
                req.encryption_context,
                req.key_spec,
                req.number_of_bytes,
            )
            .await?;
        Ok(Response::new(pb::GenerateDataKeyResponse {
            ciphertext_blob: out.ciphertext_blob,
            key_id: out.key_id.to_string(),
            plaintext: take_plaintext(out.plaintext),
        }))
    }

    async fn generate_data_key_without_plaintext(
        &self,
        request: Request<pb::GenerateDataKeyWithoutPlaintextRequest>,
    ) -> Result<Response<pb::GenerateDataKeyWithoutPlaintextResponse>, Status> {
        let req = request.into_inner();
        // The plaintext data key is dropped (and zeroized) here, on the server.
        let out = self
            .generate(
                &req.key_id,
                req.encryption_context,
                req.key_spec,
                req.number_of_bytes,
            )
            .await?;
        Ok(Response::new(pb::GenerateDataKeyWithoutPlaintextResponse {
            ciphertext_blob: out.ciphertext_blob,
            key_id: out.key_id.to_string(),
        }))
    }

    async fn generate_random(
        &self,
        request: Request<pb::GenerateRandomRequest>,
    ) -> Result<Response<pb::GenerateRandomResponse>, Status> {
        let length = RandomLength::new(request.into_inner().number_of_bytes).or_status()?;
        let bytes = self.run(move |kms| kms.generate_random(length)).await?;
        Ok(Response::new(pb::GenerateRandomResponse {
            plaintext: take_plaintext(bytes),
        }))
    }

    async fn create_alias(
        &self,
        request: Request<pb::CreateAliasRequest>,
    ) -> Result<Response<pb::CreateAliasResponse>, Status> {
        let req = request.into_inner();
        let name = alias_name(&req.alias_name)?;
        let target = key_ref(&req.target_key_id, "target_key_id")?;
        self.run(move |kms| kms.create_alias(&name, &target))
            .await?;
        Ok(Response::new(pb::CreateAliasResponse {}))
    }

    async fn update_alias(
        &self,
        request: Request<pb::UpdateAliasRequest>,
    ) -> Result<Response<pb::UpdateAliasResponse>, Status> {
        let req = request.into_inner();
        let name = alias_name(&req.alias_name)?;
        let target = key_ref(&req.target_key_id, "target_key_id")?;
        self.run(move |kms| kms.update_alias(&name, &target))
            .await?;
        Ok(Response::new(pb::UpdateAliasResponse {}))
    }

    async fn delete_alias(
        &self,
        request: Request<pb::DeleteAliasRequest>,
    ) -> Result<Response<pb::DeleteAliasResponse>, Status> {
        let name = alias_name(&request.into_inner().alias_name)?;
        self.run(move |kms| kms.delete_alias(&name)).await?;
        Ok(Response::new(pb::DeleteAliasResponse {}))
    }

    async fn list_aliases(
        &self,
        request: Request<pb::ListAliasesRequest>,
    ) -> Result<Response<pb::ListAliasesResponse>, Status> {
        let req = request.into_inner();
        let key = KeyRef::parse_optional(&req.key_id, "key_id").or_status()?;
        let limit = PageLimit::new(req.limit).or_status()?;
        let token = (!req.page_token.is_empty()).then_some(req.page_token);
        let page = self
            .run(move |kms| kms.list_aliases(key.as_ref(), limit, token.as_deref()))
            .await?;
        Ok(Response::new(pb::ListAliasesResponse {
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
        }))
    }

    async fn tag_resource(
        &self,
        request: Request<pb::TagResourceRequest>,
    ) -> Result<Response<pb::TagResourceResponse>, Status> {
        let req = request.into_inner();
        let key = key_ref(&req.key_id, "key_id")?;
        let tags = new_tags(req.tags)?;
        self.run(move |kms| kms.tag_resource(&key, tags)).await?;
        Ok(Response::new(pb::TagResourceResponse {}))
    }

    async fn untag_resource(
        &self,
        request: Request<pb::UntagResourceRequest>,
    ) -> Result<Response<pb::UntagResourceResponse>, Status> {
        let req = request.into_inner();
        let key = key_ref(&req.key_id, "key_id")?;
        let tag_keys = req.tag_keys;
        self.run(move |kms| kms.untag_resource(&key, &tag_keys))
            .await?;
        Ok(Response::new(pb::UntagResourceResponse {}))
    }

    async fn list_resource_tags(
        &self,
        request: Request<pb::ListResourceTagsRequest>,
    ) -> Result<Response<pb::ListResourceTagsResponse>, Status> {
        let req = request.into_inner();
        let key = key_ref(&req.key_id, "key_id")?;
        let limit = PageLimit::new(req.limit).or_status()?;
        let token = (!req.page_token.is_empty()).then_some(req.page_token);
        let page = self
            .run(move |kms| kms.list_resource_tags(&key, limit, token.as_deref()))
            .await?;
        Ok(Response::new(pb::ListResourceTagsResponse {
            tags: page
                .tags
                .into_iter()
                .map(|(tag_key, tag_value)| pb::Tag { tag_key, tag_value })
                .collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn rotate_key_on_demand(
        &self,
        request: Request<pb::RotateKeyOnDemandRequest>,
    ) -> Result<Response<pb::RotateKeyOnDemandResponse>, Status> {
        let key = key_ref(&request.into_inner().key_id, "key_id")?;
        let record = self
            .run(move |kms| kms.rotate_key(&key, VersionSource::OnDemand))
            .await?;
        Ok(Response::new(pb::RotateKeyOnDemandResponse {
            key_id: record.id.to_string(),
            key_version: record.current_version,
        }))
    }

    async fn list_key_rotations(
        &self,
        request: Request<pb::ListKeyRotationsRequest>,
    ) -> Result<Response<pb::ListKeyRotationsResponse>, Status> {
        let req = request.into_inner();
        let key = key_ref(&req.key_id, "key_id")?;
        let limit = PageLimit::new(req.limit).or_status()?;
        let token = (!req.page_token.is_empty()).then_some(req.page_token);
        let (key_id, page) = self
            .run(move |kms| {
                let id = kms.describe_key(&key)?.id;
                Ok((id, kms.list_key_rotations(&key, limit, token.as_deref())?))
            })
            .await?;
        Ok(Response::new(pb::ListKeyRotationsResponse {
            rotations: page
                .rotations
                .into_iter()
                .map(|v| pb::KeyRotation {
                    key_id: key_id.to_string(),
                    rotation_date: Some(convert::timestamp(v.created_at_ms)),
                    rotation_type: convert::rotation_type(v.source).into(),
                    key_version: v.version,
                })
                .collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn enable_key_rotation(
        &self,
        request: Request<pb::EnableKeyRotationRequest>,
    ) -> Result<Response<pb::EnableKeyRotationResponse>, Status> {
        let req = request.into_inner();
        let key = key_ref(&req.key_id, "key_id")?;
        let period = req.rotation_period_in_days;
        self.run(move |kms| kms.enable_key_rotation(&key, period))
            .await?;
        Ok(Response::new(pb::EnableKeyRotationResponse {}))
    }

    async fn disable_key_rotation(
        &self,
        request: Request<pb::DisableKeyRotationRequest>,
    ) -> Result<Response<pb::DisableKeyRotationResponse>, Status> {
        let key = key_ref(&request.into_inner().key_id, "key_id")?;
        self.run(move |kms| kms.disable_key_rotation(&key)).await?;
        Ok(Response::new(pb::DisableKeyRotationResponse {}))
    }

    async fn get_key_rotation_status(
        &self,
        request: Request<pb::GetKeyRotationStatusRequest>,
    ) -> Result<Response<pb::GetKeyRotationStatusResponse>, Status> {
        let key = key_ref(&request.into_inner().key_id, "key_id")?;
        let record = self.run(move |kms| kms.describe_key(&key)).await?;
        let metadata = convert::key_metadata(&record);
        Ok(Response::new(pb::GetKeyRotationStatusResponse {
            key_rotation_enabled: metadata.key_rotation_enabled,
            key_id: metadata.key_id,
            rotation_period_in_days: metadata.rotation_period_in_days,
            next_rotation_date: metadata.next_rotation_date,
        }))
    }

    async fn schedule_key_deletion(
        &self,
        request: Request<pb::ScheduleKeyDeletionRequest>,
    ) -> Result<Response<pb::ScheduleKeyDeletionResponse>, Status> {
        let req = request.into_inner();
        let key = key_ref(&req.key_id, "key_id")?;
        let window = req.pending_window_in_days;
        let record = self
            .run(move |kms| kms.schedule_key_deletion(&key, window))
            .await?;
        let metadata = convert::key_metadata(&record);
        Ok(Response::new(pb::ScheduleKeyDeletionResponse {
            key_id: metadata.key_id,
            deletion_date: metadata.deletion_date,
            key_state: metadata.key_state,
            pending_window_in_days: metadata.pending_deletion_window_in_days.unwrap_or_default(),
        }))
    }

    async fn cancel_key_deletion(
        &self,
        request: Request<pb::CancelKeyDeletionRequest>,
    ) -> Result<Response<pb::CancelKeyDeletionResponse>, Status> {
        let key = key_ref(&request.into_inner().key_id, "key_id")?;
        let record = self
            .run(move |kms| {
                kms.cancel_key_deletion(&key)?;
                kms.describe_key(&key)
            })
            .await?;
        Ok(Response::new(pb::CancelKeyDeletionResponse {
            key_id: record.id.to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;
    use tonic_types::StatusExt;

    use super::*;

    fn service() -> KmsGrpc {
        KmsGrpc::new(Arc::new(kms_core::testing::memory_kms().0))
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
}
