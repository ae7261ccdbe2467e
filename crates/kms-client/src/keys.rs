//! Keys: creation, metadata and listing, enabling and disabling, key policies, and
//! scheduled deletion.

use kms_proto::v1 as pb;

use crate::resource_tags::to_tags;
use crate::{ClientError, KmsClient};

impl KmsClient {
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
