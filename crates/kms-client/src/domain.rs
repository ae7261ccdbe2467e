//! The key hierarchy's domain keys: rotation and its progress (administrators only).

use kms_proto::v1 as pb;

use crate::{ClientError, KmsClient};

impl KmsClient {
    /// Makes the next domain key current (the token's security officer made it first) and
    /// starts rewrapping every key version under it; returns where that stands.
    pub async fn rotate_domain_key(&mut self) -> Result<pb::DomainKeyStatus, ClientError> {
        let response = self
            .inner
            .rotate_domain_key(pb::RotateDomainKeyRequest {})
            .await?;
        Ok(response.into_inner().status.unwrap_or_default())
    }

    /// The current domain key and the progress of rewrapping under it.
    pub async fn domain_key_status(&mut self) -> Result<pb::DomainKeyStatus, ClientError> {
        let response = self
            .inner
            .get_domain_key_status(pb::GetDomainKeyStatusRequest {})
            .await?;
        Ok(response.into_inner().status.unwrap_or_default())
    }
}
