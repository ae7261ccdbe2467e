//! The handlers of `kms.v1.KeyManagementService`: each converts its request, calls the core
//! through [`KmsGrpc::call`] under its operation name, and converts the answer.

use kms_core::service::{
    CreateKeyInput, ImportKeyMaterialInput, PageLimit, Plaintext, RandomLength, ReEncryptInput,
    VerifyInput,
};
use kms_core::{AliasName, KeyRef, KmsError, SecretBytes};
use kms_proto::v1 as pb;
use kms_proto::v1::key_management_service_server::KeyManagementService;
use tonic::{Request, Response, Status};

use super::KmsGrpc;
use crate::convert::{self, FromRequest};

/// The key a request's `key_id` field names.
fn key_id(text: &str) -> Result<KeyRef, KmsError> {
    KeyRef::parse(text, "key_id")
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

/// The handler shells, one per RPC: `name: Operation(Request) -> Response |kms, caller, req|
/// { body }` answers `pb::Request` with `pb::Response` through [`KmsGrpc::call`] under the
/// operation name `Operation` (its metrics, audit records and logs), the body converting the
/// request, calling the core and converting its answer.
macro_rules! handlers {
    ($(
        $name:ident: $op:ident($req:ident $(,)?) -> $resp:ident
        |$kms:ident, $caller:ident, $r:ident| $body:block
    )*) => {
        /// Every RPC's operation name, in the table's order: the names of metrics, audit
        /// records and logs, each the policy action of the same name (ReEncrypt takes two):
        /// a test holds the table and the action list to each other.
        #[cfg(test)]
        pub(crate) const OPERATIONS: &[&str] = &[$(stringify!($op)),*];

        #[tonic::async_trait]
        impl KeyManagementService for KmsGrpc {
            $(
                async fn $name(
                    &self,
                    request: Request<pb::$req>,
                ) -> Result<Response<pb::$resp>, Status> {
                    self.call(stringify!($op), request, |$kms, $caller, $r| $body)
                        .await
                }
            )*
        }
    };
}

handlers! {
    create_key: CreateKey(CreateKeyRequest) -> CreateKeyResponse
    |kms, caller, req| {
        let record = kms.create_key(caller, CreateKeyInput::from_request(req)?)?;
        Ok(pb::CreateKeyResponse {
            key_metadata: Some(convert::key_metadata(&record)),
        })
    }

    describe_key: DescribeKey(DescribeKeyRequest) -> DescribeKeyResponse
    |kms, caller, req| {
        let record = kms.describe_key(caller, &key_id(&req.key_id)?)?;
        Ok(pb::DescribeKeyResponse {
            key_metadata: Some(convert::key_metadata(&record)),
        })
    }

    list_keys: ListKeys(ListKeysRequest) -> ListKeysResponse
    |kms, caller, req| {
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
    }

    enable_key: EnableKey(EnableKeyRequest) -> EnableKeyResponse
    |kms, caller, req| {
        kms.enable_key(caller, &key_id(&req.key_id)?)?;
        Ok(pb::EnableKeyResponse {})
    }

    disable_key: DisableKey(DisableKeyRequest) -> DisableKeyResponse
    |kms, caller, req| {
        kms.disable_key(caller, &key_id(&req.key_id)?)?;
        Ok(pb::DisableKeyResponse {})
    }

    update_key_description: UpdateKeyDescription(
        UpdateKeyDescriptionRequest,
    ) -> UpdateKeyDescriptionResponse
    |kms, caller, req| {
        let key = key_id(&req.key_id)?;
        kms.update_key_description(caller, &key, req.description)?;
        Ok(pb::UpdateKeyDescriptionResponse {})
    }

    encrypt: Encrypt(EncryptRequest) -> EncryptResponse
    |kms, caller, req| {
        let plaintext = Plaintext::new(SecretBytes::new(req.plaintext))?;
        let key = key_id(&req.key_id)?;
        let context = convert::context(req.encryption_context, "encryption_context")?;
        let algorithm = convert::encryption_algorithm(req.encryption_algorithm)?;
        let out = kms.encrypt_with(caller, &key, &plaintext, &context, algorithm)?;
        Ok(pb::EncryptResponse {
            ciphertext_blob: out.ciphertext_blob,
            key_id: out.key_id.to_string(),
            encryption_algorithm: convert::algorithm(out.algorithm).into(),
        })
    }

    decrypt: Decrypt(DecryptRequest) -> DecryptResponse
    |kms, caller, req| {
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
    }

    re_encrypt: ReEncrypt(ReEncryptRequest) -> ReEncryptResponse
    |kms, caller, req| {
        let out = kms.re_encrypt(caller, &ReEncryptInput::from_request(req)?)?;
        Ok(pb::ReEncryptResponse {
            ciphertext_blob: out.ciphertext_blob,
            source_key_id: out.source_key_id.to_string(),
            key_id: out.key_id.to_string(),
        })
    }

    generate_data_key: GenerateDataKey(GenerateDataKeyRequest) -> GenerateDataKeyResponse
    |kms, caller, req| {
        let key = key_id(&req.key_id)?;
        let context = convert::context(req.encryption_context, "encryption_context")?;
        let length = convert::data_key_length(req.key_spec, req.number_of_bytes)?;
        let out = kms.generate_data_key(caller, &key, &context, length)?;
        Ok(pb::GenerateDataKeyResponse {
            ciphertext_blob: out.ciphertext_blob,
            key_id: out.key_id.to_string(),
            plaintext: take_plaintext(out.plaintext),
        })
    }

    generate_data_key_without_plaintext: GenerateDataKeyWithoutPlaintext(
        GenerateDataKeyWithoutPlaintextRequest,
    ) -> GenerateDataKeyWithoutPlaintextResponse
    |kms, caller, req| {
        let key = key_id(&req.key_id)?;
        let context = convert::context(req.encryption_context, "encryption_context")?;
        let length = convert::data_key_length(req.key_spec, req.number_of_bytes)?;
        let out = kms.generate_data_key_without_plaintext(caller, &key, &context, length)?;
        Ok(pb::GenerateDataKeyWithoutPlaintextResponse {
            ciphertext_blob: out.ciphertext_blob,
            key_id: out.key_id.to_string(),
        })
    }

    generate_random: GenerateRandom(GenerateRandomRequest) -> GenerateRandomResponse
    |kms, caller, req| {
        let length = RandomLength::new(req.number_of_bytes)?;
        let bytes = kms.generate_random(caller, length)?;
        Ok(pb::GenerateRandomResponse {
            plaintext: take_plaintext(bytes),
        })
    }

    create_alias: CreateAlias(CreateAliasRequest) -> CreateAliasResponse
    |kms, caller, req| {
        let name = AliasName::parse(&req.alias_name)?;
        let target = KeyRef::parse(&req.target_key_id, "target_key_id")?;
        kms.create_alias(caller, &name, &target)?;
        Ok(pb::CreateAliasResponse {})
    }

    update_alias: UpdateAlias(UpdateAliasRequest) -> UpdateAliasResponse
    |kms, caller, req| {
        let name = AliasName::parse(&req.alias_name)?;
        let target = KeyRef::parse(&req.target_key_id, "target_key_id")?;
        kms.update_alias(caller, &name, &target)?;
        Ok(pb::UpdateAliasResponse {})
    }

    delete_alias: DeleteAlias(DeleteAliasRequest) -> DeleteAliasResponse
    |kms, caller, req| {
        kms.delete_alias(caller, &AliasName::parse(&req.alias_name)?)?;
        Ok(pb::DeleteAliasResponse {})
    }

    list_aliases: ListAliases(ListAliasesRequest) -> ListAliasesResponse
    |kms, caller, req| {
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
    }

    tag_resource: TagResource(TagResourceRequest) -> TagResourceResponse
    |kms, caller, req| {
        let key = key_id(&req.key_id)?;
        kms.tag_resource(caller, &key, convert::new_tags(req.tags)?)?;
        Ok(pb::TagResourceResponse {})
    }

    untag_resource: UntagResource(UntagResourceRequest) -> UntagResourceResponse
    |kms, caller, req| {
        let key = key_id(&req.key_id)?;
        kms.untag_resource(caller, &key, &req.tag_keys)?;
        Ok(pb::UntagResourceResponse {})
    }

    list_resource_tags: ListResourceTags(ListResourceTagsRequest) -> ListResourceTagsResponse
    |kms, caller, req| {
        let key = key_id(&req.key_id)?;
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
    }

    rotate_key_on_demand: RotateKeyOnDemand(RotateKeyOnDemandRequest) -> RotateKeyOnDemandResponse
    |kms, caller, req| {
        let record = kms.rotate_key_on_demand(caller, &key_id(&req.key_id)?)?;
        Ok(pb::RotateKeyOnDemandResponse {
            key_id: record.id().to_string(),
            key_version: record.current_version(),
        })
    }

    list_key_rotations: ListKeyRotations(ListKeyRotationsRequest) -> ListKeyRotationsResponse
    |kms, caller, req| {
        let key = key_id(&req.key_id)?;
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
    }

    enable_key_rotation: EnableKeyRotation(EnableKeyRotationRequest) -> EnableKeyRotationResponse
    |kms, caller, req| {
        let key = key_id(&req.key_id)?;
        kms.enable_key_rotation(caller, &key, req.rotation_period_in_days)?;
        Ok(pb::EnableKeyRotationResponse {})
    }

    disable_key_rotation: DisableKeyRotation(
        DisableKeyRotationRequest,
    ) -> DisableKeyRotationResponse
    |kms, caller, req| {
        kms.disable_key_rotation(caller, &key_id(&req.key_id)?)?;
        Ok(pb::DisableKeyRotationResponse {})
    }

    get_key_rotation_status: GetKeyRotationStatus(
        GetKeyRotationStatusRequest,
    ) -> GetKeyRotationStatusResponse
    |kms, caller, req| {
        let record = kms.get_key_rotation_status(caller, &key_id(&req.key_id)?)?;
        Ok(pb::GetKeyRotationStatusResponse {
            key_rotation_enabled: record.rotation().is_some(),
            key_id: record.id().to_string(),
            rotation_period_in_days: record.rotation().map(|r| r.period_days),
            next_rotation_date: record.rotation().map(|r| convert::timestamp(r.next_rotation_ms)),
        })
    }

    schedule_key_deletion: ScheduleKeyDeletion(
        ScheduleKeyDeletionRequest,
    ) -> ScheduleKeyDeletionResponse
    |kms, caller, req| {
        let key = key_id(&req.key_id)?;
        let record = kms.schedule_key_deletion(caller, &key, req.pending_window_in_days)?;
        Ok(pb::ScheduleKeyDeletionResponse {
            key_id: record.id().to_string(),
            deletion_date: record.deletion().map(|d| convert::timestamp(d.deletion_date_ms)),
            key_state: convert::key_state(record.state()).into(),
            pending_window_in_days: record.deletion().map_or(0, |d| d.window_days),
        })
    }

    cancel_key_deletion: CancelKeyDeletion(CancelKeyDeletionRequest) -> CancelKeyDeletionResponse
    |kms, caller, req| {
        let record = kms.cancel_key_deletion(caller, &key_id(&req.key_id)?)?;
        Ok(pb::CancelKeyDeletionResponse {
            key_id: record.id().to_string(),
        })
    }

    get_key_policy: GetKeyPolicy(GetKeyPolicyRequest) -> GetKeyPolicyResponse
    |kms, caller, req| {
        let key = key_id(&req.key_id)?;
        let (key_id, policy) = kms.get_key_policy(caller, &key)?;
        Ok(pb::GetKeyPolicyResponse {
            policy: policy.text().to_owned(),
            key_id: key_id.to_string(),
        })
    }

    put_key_policy: PutKeyPolicy(PutKeyPolicyRequest) -> PutKeyPolicyResponse
    |kms, caller, req| {
        let key = key_id(&req.key_id)?;
        kms.put_key_policy(
            caller,
            &key,
            &req.policy,
            req.bypass_policy_lockout_safety_check,
        )?;
        Ok(pb::PutKeyPolicyResponse {})
    }

    get_public_key: GetPublicKey(GetPublicKeyRequest) -> GetPublicKeyResponse
    |kms, caller, req| {
        let key = key_id(&req.key_id)?;
        Ok(convert::public_key(kms.get_public_key(caller, &key)?))
    }

    sign: Sign(SignRequest) -> SignResponse
    |kms, caller, req| {
        let key = key_id(&req.key_id)?;
        let message_type = convert::message_type(req.message_type)?;
        let algorithm = convert::signing_algorithm(req.signing_algorithm)?;
        let out = kms.sign(caller, &key, &req.message, message_type, algorithm)?;
        Ok(pb::SignResponse {
            key_id: out.key_id.to_string(),
            signature: out.signature,
            signing_algorithm: convert::pb_signing_algorithm(out.algorithm).into(),
        })
    }

    verify: Verify(VerifyRequest) -> VerifyResponse
    |kms, caller, req| {
        let input = VerifyInput::from_request(req)?;
        let key_id = kms.verify(caller, &input)?;
        Ok(pb::VerifyResponse {
            key_id: key_id.to_string(),
            signature_valid: true,
            signing_algorithm: convert::pb_signing_algorithm(input.algorithm).into(),
        })
    }

    generate_mac: GenerateMac(GenerateMacRequest) -> GenerateMacResponse
    |kms, caller, req| {
        let key = key_id(&req.key_id)?;
        let algorithm = convert::mac_algorithm(req.mac_algorithm)?;
        let out = kms.generate_mac(caller, &key, &req.message, algorithm)?;
        Ok(pb::GenerateMacResponse {
            key_id: out.key_id.to_string(),
            mac: out.mac,
            mac_algorithm: convert::pb_mac_algorithm(out.algorithm).into(),
        })
    }

    verify_mac: VerifyMac(VerifyMacRequest) -> VerifyMacResponse
    |kms, caller, req| {
        let key = key_id(&req.key_id)?;
        let algorithm = convert::mac_algorithm(req.mac_algorithm)?;
        let key_id = kms.verify_mac(caller, &key, &req.message, &req.mac, algorithm)?;
        Ok(pb::VerifyMacResponse {
            key_id: key_id.to_string(),
            mac_valid: true,
            mac_algorithm: convert::pb_mac_algorithm(algorithm).into(),
        })
    }

    get_parameters_for_import: GetParametersForImport(
        GetParametersForImportRequest,
    ) -> GetParametersForImportResponse
    |kms, caller, req| {
        let key = key_id(&req.key_id)?;
        let algorithm = convert::wrapping_algorithm(req.wrapping_algorithm)?;
        let bits = convert::wrapping_key_bits(req.wrapping_key_spec)?;
        let out = kms.get_parameters_for_import(caller, &key, algorithm, bits)?;
        Ok(pb::GetParametersForImportResponse {
            key_id: out.key_id.to_string(),
            import_token: out.import_token,
            public_key: out.public_key,
            parameters_valid_to: Some(convert::timestamp(out.valid_to_ms)),
        })
    }

    import_key_material: ImportKeyMaterial(ImportKeyMaterialRequest) -> ImportKeyMaterialResponse
    |kms, caller, req| {
        kms.import_key_material(caller, &ImportKeyMaterialInput::from_request(req)?)?;
        Ok(pb::ImportKeyMaterialResponse {})
    }

    delete_imported_key_material: DeleteImportedKeyMaterial(
        DeleteImportedKeyMaterialRequest,
    ) -> DeleteImportedKeyMaterialResponse
    |kms, caller, req| {
        let key = key_id(&req.key_id)?;
        kms.delete_imported_key_material(caller, &key)?;
        Ok(pb::DeleteImportedKeyMaterialResponse {})
    }

    rotate_domain_key: RotateDomainKey(RotateDomainKeyRequest) -> RotateDomainKeyResponse
    |kms, caller, _req| {
        let status = kms.rotate_domain(caller)?;
        Ok(pb::RotateDomainKeyResponse {
            status: Some(convert::domain_status(status)),
        })
    }

    get_domain_key_status: GetDomainKeyStatus(
        GetDomainKeyStatusRequest,
    ) -> GetDomainKeyStatusResponse
    |kms, caller, _req| {
        let status = kms.domain_status(caller)?;
        Ok(pb::GetDomainKeyStatusResponse {
            status: Some(convert::domain_status(status)),
        })
    }
}
