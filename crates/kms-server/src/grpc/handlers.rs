//! The handlers of `kms.v1.KeyManagementService`: each converts its request, calls the core
//! through [`KmsGrpc::call`] under its operation name, and converts the answer.

use kms_core::service::{CreateKeyInput, PageLimit, Plaintext, RandomLength};
use kms_core::tags::NewTags;
use kms_core::{AliasName, KeyRef, KmsError, SecretBytes};
use kms_proto::v1 as pb;
use kms_proto::v1::key_management_service_server::KeyManagementService;
use tonic::{Request, Response, Status};

use super::KmsGrpc;
use crate::convert;

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
