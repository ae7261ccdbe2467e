//! Signing keys and MAC keys: public keys, signatures and HMACs, computed in the HSM.

use kms_proto::v1 as pb;

use crate::{ClientError, KmsClient};

impl KmsClient {
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
}
