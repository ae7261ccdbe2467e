//! Encryption with a key: encrypt, decrypt and re-encrypt, data keys, random bytes, and
//! RSAES-OAEP with RSA keys. Plaintexts come back in zeroizing buffers.

use kms_proto::v1 as pb;
use zeroize::Zeroizing;

use crate::{ClientError, Context, KmsClient};

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

impl KmsClient {
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
}
