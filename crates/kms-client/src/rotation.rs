//! Key rotation: on demand, and automatic with its period and status.

use kms_proto::v1 as pb;

use crate::{ClientError, KmsClient};

impl KmsClient {
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
}
