//! A typed async client for the key management service.
//!
//! Wraps the generated `kms.v1` client: each call takes plain Rust values, returns the
//! response or a [`ClientError`] carrying the server's error reason (the AWS exception name),
//! and hands plaintexts back in zeroizing buffers. Used by kmsctl and the end-to-end tests.
#![forbid(unsafe_code)]

use std::collections::HashMap;

use kms_proto::v1 as pb;
use kms_proto::v1::key_management_service_client::KeyManagementServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};
use tonic_types::StatusExt;
use zeroize::Zeroizing;

pub use kms_proto::v1;

/// An encryption context: pairs of UTF-8 strings bound to a ciphertext.
pub type Context = HashMap<String, String>;

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

/// What a client needs for mutual TLS, as PEM.
pub struct ClientTls {
    /// The CA that issued kmsd's certificate.
    pub ca_pem: Vec<u8>,
    /// The client certificate chain and its private key; `None` connects without one (which
    /// kmsd refuses, with UNAUTHENTICATED).
    pub identity: Option<(Vec<u8>, Zeroizing<Vec<u8>>)>,
    /// The name to check kmsd's certificate against, when not the endpoint's host.
    pub domain: Option<String>,
}

/// The size of a data key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKeySize {
    /// 16 bytes.
    Aes128,
    /// 32 bytes.
    Aes256,
    /// 1..=1024 bytes.
    Bytes(u32),
}

impl DataKeySize {
    fn fields(self) -> (pb::DataKeySpec, Option<u32>) {
        match self {
            DataKeySize::Aes128 => (pb::DataKeySpec::Aes128, None),
            DataKeySize::Aes256 => (pb::DataKeySpec::Aes256, None),
            DataKeySize::Bytes(n) => (pb::DataKeySpec::Unspecified, Some(n)),
        }
    }
}

/// A decrypted plaintext and the key it was under.
pub struct Decrypted {
    /// The plaintext, zeroized on drop.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The key's UUID.
    pub key_id: String,
    /// The algorithm.
    pub encryption_algorithm: pb::EncryptionAlgorithm,
}

/// A data key in plaintext and encrypted.
pub struct DataKey {
    /// The data key, zeroized on drop.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The data key encrypted under the KMS key.
    pub ciphertext_blob: Vec<u8>,
    /// The KMS key's UUID.
    pub key_id: String,
}

/// A connected client.
#[derive(Clone)]
pub struct KmsClient {
    inner: KeyManagementServiceClient<Channel>,
}

impl KmsClient {
    /// Connects to `endpoint` without TLS, e.g. `http://127.0.0.1:50051` (a `kmsd --dev`).
    pub async fn connect(endpoint: &str) -> Result<Self, ClientError> {
        Self::connect_with(endpoint, None).await
    }

    /// Connects to `endpoint`; with `tls`, over TLS (`https://…`), showing the client
    /// certificate if `tls` has one.
    pub async fn connect_with(
        endpoint: &str,
        tls: Option<&ClientTls>,
    ) -> Result<Self, ClientError> {
        let error = |source| ClientError::Connect {
            endpoint: endpoint.to_owned(),
            source,
        };
        let mut builder = Endpoint::from_shared(endpoint.to_owned()).map_err(error)?;
        if let Some(tls) = tls {
            let mut config =
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(cert, key.as_slice()));
            }
            if let Some(domain) = &tls.domain {
                config = config.domain_name(domain.clone());
            }
            builder = builder.tls_config(config).map_err(error)?;
        }
        let channel = builder.connect().await.map_err(error)?;
        Ok(Self::from_channel(channel))
    }

    /// A client on an open channel (which other clients, e.g. grpc.health.v1, may share).
    pub fn from_channel(channel: Channel) -> Self {
        KmsClient {
            inner: KeyManagementServiceClient::new(channel),
        }
    }

    /// The generated client, for requests this wrapper does not shape.
    pub fn raw(&mut self) -> &mut KeyManagementServiceClient<Channel> {
        &mut self.inner
    }

    /// Creates a SYMMETRIC_DEFAULT key.
    pub async fn create_key(&mut self, description: &str) -> Result<pb::KeyMetadata, ClientError> {
        self.create_key_tagged(description, &[]).await
    }

    /// Creates a SYMMETRIC_DEFAULT key with tags.
    pub async fn create_key_tagged(
        &mut self,
        description: &str,
        tags: &[(&str, &str)],
    ) -> Result<pb::KeyMetadata, ClientError> {
        self.create_key_with_policy(description, tags, "", false)
            .await
    }

    /// Creates a SYMMETRIC_DEFAULT key with tags and a key policy (empty: the default
    /// policy); `bypass_lockout_check` accepts a policy that would not let the caller change
    /// it.
    pub async fn create_key_with_policy(
        &mut self,
        description: &str,
        tags: &[(&str, &str)],
        policy: &str,
        bypass_lockout_check: bool,
    ) -> Result<pb::KeyMetadata, ClientError> {
        let response = self
            .inner
            .create_key(pb::CreateKeyRequest {
                description: description.to_owned(),
                tags: to_tags(tags),
                policy: policy.to_owned(),
                bypass_policy_lockout_safety_check: bypass_lockout_check,
                ..Default::default()
            })
            .await?;
        Ok(response.into_inner().key_metadata.unwrap_or_default())
    }

    /// Creates a key of any spec, usage and origin.
    pub async fn create_key_with(
        &mut self,
        request: pb::CreateKeyRequest,
    ) -> Result<pb::KeyMetadata, ClientError> {
        let response = self.inner.create_key(request).await?;
        Ok(response.into_inner().key_metadata.unwrap_or_default())
    }

    /// Encrypts with an RSA key's public key (RSAES_OAEP_SHA_1 or RSAES_OAEP_SHA_256); the
    /// answer is the bare RSAES-OAEP ciphertext.
    pub async fn encrypt_rsa(
        &mut self,
        key_id: &str,
        plaintext: &[u8],
        algorithm: pb::EncryptionAlgorithm,
    ) -> Result<pb::EncryptResponse, ClientError> {
        Ok(self
            .inner
            .encrypt(pb::EncryptRequest {
                key_id: key_id.to_owned(),
                plaintext: plaintext.to_vec(),
                encryption_context: Context::new(),
                encryption_algorithm: algorithm.into(),
            })
            .await?
            .into_inner())
    }

    /// Decrypts an RSAES-OAEP ciphertext with an RSA key; the private key works in the HSM.
    pub async fn decrypt_rsa(
        &mut self,
        key_id: &str,
        ciphertext: &[u8],
        algorithm: pb::EncryptionAlgorithm,
    ) -> Result<Decrypted, ClientError> {
        let response = self
            .inner
            .decrypt(pb::DecryptRequest {
                ciphertext_blob: ciphertext.to_vec(),
                encryption_context: Context::new(),
                key_id: key_id.to_owned(),
                encryption_algorithm: algorithm.into(),
            })
            .await?
            .into_inner();
        Ok(Decrypted {
            encryption_algorithm: response.encryption_algorithm(),
            plaintext: Zeroizing::new(response.plaintext),
            key_id: response.key_id,
        })
    }

    /// The public key (DER SubjectPublicKeyInfo) of an RSA or ECC key, with its spec, usage
    /// and algorithms.
    pub async fn get_public_key(
        &mut self,
        key_id: &str,
    ) -> Result<pb::GetPublicKeyResponse, ClientError> {
        Ok(self
            .inner
            .get_public_key(pb::GetPublicKeyRequest {
                key_id: key_id.to_owned(),
            })
            .await?
            .into_inner())
    }

    /// Signs a message (RAW) or its digest (DIGEST) in the HSM.
    pub async fn sign(
        &mut self,
        key_id: &str,
        message: &[u8],
        message_type: pb::MessageType,
        algorithm: pb::SigningAlgorithm,
    ) -> Result<pb::SignResponse, ClientError> {
        Ok(self
            .inner
            .sign(pb::SignRequest {
                key_id: key_id.to_owned(),
                message: message.to_vec(),
                message_type: message_type.into(),
                signing_algorithm: algorithm.into(),
            })
            .await?
            .into_inner())
    }

    /// Verifies a signature; an invalid one is the error KMSInvalidSignatureException.
    pub async fn verify(
        &mut self,
        key_id: &str,
        message: &[u8],
        message_type: pb::MessageType,
        signature: &[u8],
        algorithm: pb::SigningAlgorithm,
    ) -> Result<pb::VerifyResponse, ClientError> {
        Ok(self
            .inner
            .verify(pb::VerifyRequest {
                key_id: key_id.to_owned(),
                message: message.to_vec(),
                message_type: message_type.into(),
                signature: signature.to_vec(),
                signing_algorithm: algorithm.into(),
            })
            .await?
            .into_inner())
    }

    /// The HMAC of a message, computed in the HSM.
    pub async fn generate_mac(
        &mut self,
        key_id: &str,
        message: &[u8],
        algorithm: pb::MacAlgorithm,
    ) -> Result<pb::GenerateMacResponse, ClientError> {
        Ok(self
            .inner
            .generate_mac(pb::GenerateMacRequest {
                key_id: key_id.to_owned(),
                message: message.to_vec(),
                mac_algorithm: algorithm.into(),
            })
            .await?
            .into_inner())
    }

    /// Checks an HMAC; a wrong one is the error KMSInvalidMacException.
    pub async fn verify_mac(
        &mut self,
        key_id: &str,
        message: &[u8],
        mac: &[u8],
        algorithm: pb::MacAlgorithm,
    ) -> Result<pb::VerifyMacResponse, ClientError> {
        Ok(self
            .inner
            .verify_mac(pb::VerifyMacRequest {
                key_id: key_id.to_owned(),
                message: message.to_vec(),
                mac: mac.to_vec(),
                mac_algorithm: algorithm.into(),
            })
            .await?
            .into_inner())
    }

    /// A wrapping public key and an import token for an EXTERNAL key.
    pub async fn get_parameters_for_import(
        &mut self,
        key_id: &str,
        algorithm: pb::WrappingAlgorithm,
        wrapping_key_spec: pb::WrappingKeySpec,
    ) -> Result<pb::GetParametersForImportResponse, ClientError> {
        Ok(self
            .inner
            .get_parameters_for_import(pb::GetParametersForImportRequest {
                key_id: key_id.to_owned(),
                wrapping_algorithm: algorithm.into(),
                wrapping_key_spec: wrapping_key_spec.into(),
            })
            .await?
            .into_inner())
    }

    /// Imports wrapped key material into an EXTERNAL key.
    pub async fn import_key_material(
        &mut self,
        request: pb::ImportKeyMaterialRequest,
    ) -> Result<(), ClientError> {
        self.inner.import_key_material(request).await?;
        Ok(())
    }

    /// Destroys an EXTERNAL key's material; the key becomes PendingImport.
    pub async fn delete_imported_key_material(&mut self, key_id: &str) -> Result<(), ClientError> {
        self.inner
            .delete_imported_key_material(pb::DeleteImportedKeyMaterialRequest {
                key_id: key_id.to_owned(),
            })
            .await?;
        Ok(())
    }

    /// A key's metadata.
    pub async fn describe_key(&mut self, key_id: &str) -> Result<pb::KeyMetadata, ClientError> {
        let response = self
            .inner
            .describe_key(pb::DescribeKeyRequest {
                key_id: key_id.to_owned(),
            })
            .await?;
        Ok(response.into_inner().key_metadata.unwrap_or_default())
    }

    /// One page of key ids.
    pub async fn list_keys(
        &mut self,
        limit: u32,
        page_token: &str,
    ) -> Result<pb::ListKeysResponse, ClientError> {
        Ok(self
            .inner
            .list_keys(pb::ListKeysRequest {
                limit,
                page_token: page_token.to_owned(),
            })
            .await?
            .into_inner())
    }

    /// Every key id, following the pages.
    pub async fn list_all_keys(&mut self) -> Result<Vec<String>, ClientError> {
        let mut keys = Vec::new();
        let mut token = String::new();
        loop {
            let page = self.list_keys(1000, &token).await?;
            keys.extend(page.keys.into_iter().map(|k| k.key_id));
            if page.next_page_token.is_empty() {
                return Ok(keys);
            }
            token = page.next_page_token;
        }
    }

    /// Enables a key.
    pub async fn enable_key(&mut self, key_id: &str) -> Result<(), ClientError> {
        self.inner
            .enable_key(pb::EnableKeyRequest {
                key_id: key_id.to_owned(),
            })
            .await?;
        Ok(())
    }

    /// Disables a key.
    pub async fn disable_key(&mut self, key_id: &str) -> Result<(), ClientError> {
        self.inner
            .disable_key(pb::DisableKeyRequest {
                key_id: key_id.to_owned(),
            })
            .await?;
        Ok(())
    }

    /// Replaces a key's description.
    pub async fn update_key_description(
        &mut self,
        key_id: &str,
        description: &str,
    ) -> Result<(), ClientError> {
        self.inner
            .update_key_description(pb::UpdateKeyDescriptionRequest {
                key_id: key_id.to_owned(),
                description: description.to_owned(),
            })
            .await?;
        Ok(())
    }

    /// Encrypts up to 4096 bytes.
    pub async fn encrypt(
        &mut self,
        key_id: &str,
        plaintext: &[u8],
        context: &Context,
    ) -> Result<pb::EncryptResponse, ClientError> {
        Ok(self
            .inner
            .encrypt(pb::EncryptRequest {
                key_id: key_id.to_owned(),
                plaintext: plaintext.to_vec(),
                encryption_context: context.clone(),
                encryption_algorithm: pb::EncryptionAlgorithm::Unspecified.into(),
            })
            .await?
            .into_inner())
    }

    /// Decrypts a blob; `key_id`, when given, must be the blob's key.
    pub async fn decrypt(
        &mut self,
        ciphertext_blob: &[u8],
        context: &Context,
        key_id: Option<&str>,
    ) -> Result<Decrypted, ClientError> {
        let response = self
            .inner
            .decrypt(pb::DecryptRequest {
                ciphertext_blob: ciphertext_blob.to_vec(),
                encryption_context: context.clone(),
                key_id: key_id.unwrap_or_default().to_owned(),
                encryption_algorithm: pb::EncryptionAlgorithm::Unspecified.into(),
            })
            .await?
            .into_inner();
        Ok(Decrypted {
            encryption_algorithm: response.encryption_algorithm(),
            plaintext: Zeroizing::new(response.plaintext),
            key_id: response.key_id,
        })
    }

    /// Moves a blob under another key without the plaintext leaving the server.
    pub async fn re_encrypt(
        &mut self,
        request: pb::ReEncryptRequest,
    ) -> Result<pb::ReEncryptResponse, ClientError> {
        Ok(self.inner.re_encrypt(request).await?.into_inner())
    }

    /// A fresh data key, in plaintext and encrypted.
    pub async fn generate_data_key(
        &mut self,
        key_id: &str,
        context: &Context,
        size: DataKeySize,
    ) -> Result<DataKey, ClientError> {
        let (key_spec, number_of_bytes) = size.fields();
        let response = self
            .inner
            .generate_data_key(pb::GenerateDataKeyRequest {
                key_id: key_id.to_owned(),
                encryption_context: context.clone(),
                key_spec: key_spec.into(),
                number_of_bytes,
            })
            .await?
            .into_inner();
        Ok(DataKey {
            plaintext: Zeroizing::new(response.plaintext),
            ciphertext_blob: response.ciphertext_blob,
            key_id: response.key_id,
        })
    }

    /// A fresh data key, encrypted only.
    pub async fn generate_data_key_without_plaintext(
        &mut self,
        key_id: &str,
        context: &Context,
        size: DataKeySize,
    ) -> Result<pb::GenerateDataKeyWithoutPlaintextResponse, ClientError> {
        let (key_spec, number_of_bytes) = size.fields();
        Ok(self
            .inner
            .generate_data_key_without_plaintext(pb::GenerateDataKeyWithoutPlaintextRequest {
                key_id: key_id.to_owned(),
                encryption_context: context.clone(),
                key_spec: key_spec.into(),
                number_of_bytes,
            })
            .await?
            .into_inner())
    }

    /// 1..=1024 random bytes from the HSM.
    pub async fn generate_random(
        &mut self,
        number_of_bytes: u32,
    ) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        let response = self
            .inner
            .generate_random(pb::GenerateRandomRequest { number_of_bytes })
            .await?;
        Ok(Zeroizing::new(response.into_inner().plaintext))
    }

    /// Creates an alias pointing at a key id.
    pub async fn create_alias(
        &mut self,
        alias_name: &str,
        target_key_id: &str,
    ) -> Result<(), ClientError> {
        self.inner
            .create_alias(pb::CreateAliasRequest {
                alias_name: alias_name.to_owned(),
                target_key_id: target_key_id.to_owned(),
            })
            .await?;
        Ok(())
    }

    /// Points an alias at another key id.
    pub async fn update_alias(
        &mut self,
        alias_name: &str,
        target_key_id: &str,
    ) -> Result<(), ClientError> {
        self.inner
            .update_alias(pb::UpdateAliasRequest {
                alias_name: alias_name.to_owned(),
                target_key_id: target_key_id.to_owned(),
            })
            .await?;
        Ok(())
    }

    /// Deletes an alias.
    pub async fn delete_alias(&mut self, alias_name: &str) -> Result<(), ClientError> {
        self.inner
            .delete_alias(pb::DeleteAliasRequest {
                alias_name: alias_name.to_owned(),
            })
            .await?;
        Ok(())
    }

    /// Every alias, or every alias of `key_id`, following the pages.
    pub async fn list_all_aliases(
        &mut self,
        key_id: Option<&str>,
    ) -> Result<Vec<pb::AliasListEntry>, ClientError> {
        let mut aliases = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .inner
                .list_aliases(pb::ListAliasesRequest {
                    key_id: key_id.unwrap_or_default().to_owned(),
                    limit: 1000,
                    page_token,
                })
                .await?
                .into_inner();
            aliases.extend(page.aliases);
            if page.next_page_token.is_empty() {
                return Ok(aliases);
            }
            page_token = page.next_page_token;
        }
    }

    /// Adds tags to a key.
    pub async fn tag_resource(
        &mut self,
        key_id: &str,
        tags: &[(&str, &str)],
    ) -> Result<(), ClientError> {
        self.inner
            .tag_resource(pb::TagResourceRequest {
                key_id: key_id.to_owned(),
                tags: to_tags(tags),
            })
            .await?;
        Ok(())
    }

    /// Removes tags from a key.
    pub async fn untag_resource(
        &mut self,
        key_id: &str,
        tag_keys: &[&str],
    ) -> Result<(), ClientError> {
        self.inner
            .untag_resource(pb::UntagResourceRequest {
                key_id: key_id.to_owned(),
                tag_keys: tag_keys.iter().map(|k| (*k).to_owned()).collect(),
            })
            .await?;
        Ok(())
    }

    /// Every tag of a key, following the pages, as (key, value) in key order.
    pub async fn list_all_tags(
        &mut self,
        key_id: &str,
    ) -> Result<Vec<(String, String)>, ClientError> {
        let mut tags = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .inner
                .list_resource_tags(pb::ListResourceTagsRequest {
                    key_id: key_id.to_owned(),
                    limit: 1000,
                    page_token,
                })
                .await?
                .into_inner();
            tags.extend(page.tags.into_iter().map(|t| (t.tag_key, t.tag_value)));
            if page.next_page_token.is_empty() {
                return Ok(tags);
            }
            page_token = page.next_page_token;
        }
    }

    /// Rotates a key now; returns the new current version.
    pub async fn rotate_key_on_demand(&mut self, key_id: &str) -> Result<u32, ClientError> {
        let response = self
            .inner
            .rotate_key_on_demand(pb::RotateKeyOnDemandRequest {
                key_id: key_id.to_owned(),
            })
            .await?;
        Ok(response.into_inner().key_version)
    }

    /// Every rotation of a key, oldest first, following the pages.
    pub async fn list_all_key_rotations(
        &mut self,
        key_id: &str,
    ) -> Result<Vec<pb::KeyRotation>, ClientError> {
        let mut rotations = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .inner
                .list_key_rotations(pb::ListKeyRotationsRequest {
                    key_id: key_id.to_owned(),
                    limit: 1000,
                    page_token,
                })
                .await?
                .into_inner();
            rotations.extend(page.rotations);
            if page.next_page_token.is_empty() {
                return Ok(rotations);
            }
            page_token = page.next_page_token;
        }
    }

    /// Turns on automatic rotation; `None` means every 365 days.
    pub async fn enable_key_rotation(
        &mut self,
        key_id: &str,
        period_days: Option<u32>,
    ) -> Result<(), ClientError> {
        self.inner
            .enable_key_rotation(pb::EnableKeyRotationRequest {
                key_id: key_id.to_owned(),
                rotation_period_in_days: period_days,
            })
            .await?;
        Ok(())
    }

    /// Turns off automatic rotation.
    pub async fn disable_key_rotation(&mut self, key_id: &str) -> Result<(), ClientError> {
        self.inner
            .disable_key_rotation(pb::DisableKeyRotationRequest {
                key_id: key_id.to_owned(),
            })
            .await?;
        Ok(())
    }

    /// The automatic rotation status of a key.
    pub async fn get_key_rotation_status(
        &mut self,
        key_id: &str,
    ) -> Result<pb::GetKeyRotationStatusResponse, ClientError> {
        Ok(self
            .inner
            .get_key_rotation_status(pb::GetKeyRotationStatusRequest {
                key_id: key_id.to_owned(),
            })
            .await?
            .into_inner())
    }

    /// Schedules a key's deletion in `window_days` (7..=30; `None` means 30).
    pub async fn schedule_key_deletion(
        &mut self,
        key_id: &str,
        window_days: Option<u32>,
    ) -> Result<pb::ScheduleKeyDeletionResponse, ClientError> {
        Ok(self
            .inner
            .schedule_key_deletion(pb::ScheduleKeyDeletionRequest {
                key_id: key_id.to_owned(),
                pending_window_in_days: window_days,
            })
            .await?
            .into_inner())
    }

    /// Cancels a scheduled deletion; the key becomes Disabled.
    pub async fn cancel_key_deletion(&mut self, key_id: &str) -> Result<(), ClientError> {
        self.inner
            .cancel_key_deletion(pb::CancelKeyDeletionRequest {
                key_id: key_id.to_owned(),
            })
            .await?;
        Ok(())
    }

    /// The key's policy document (JSON).
    pub async fn get_key_policy(&mut self, key_id: &str) -> Result<String, ClientError> {
        let response = self
            .inner
            .get_key_policy(pb::GetKeyPolicyRequest {
                key_id: key_id.to_owned(),
            })
            .await?;
        Ok(response.into_inner().policy)
    }

    /// Replaces the key's policy; `bypass_lockout_check` accepts a policy that would not let
    /// the caller change it again.
    pub async fn put_key_policy(
        &mut self,
        key_id: &str,
        policy: &str,
        bypass_lockout_check: bool,
    ) -> Result<(), ClientError> {
        self.inner
            .put_key_policy(pb::PutKeyPolicyRequest {
                key_id: key_id.to_owned(),
                policy: policy.to_owned(),
                bypass_policy_lockout_safety_check: bypass_lockout_check,
            })
            .await?;
        Ok(())
    }
}

fn to_tags(tags: &[(&str, &str)]) -> Vec<pb::Tag> {
    tags.iter()
        .map(|(k, v)| pb::Tag {
            tag_key: (*k).to_owned(),
            tag_value: (*v).to_owned(),
        })
        .collect()
}
