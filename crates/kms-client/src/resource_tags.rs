//! A key's tags.

use kms_proto::v1 as pb;

use crate::{ClientError, KmsClient};

impl KmsClient {
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
}

/// `(key, value)` pairs as the API's tags.
pub(crate) fn to_tags(tags: &[(&str, &str)]) -> Vec<pb::Tag> {
    tags.iter()
        .map(|(k, v)| pb::Tag {
            tag_key: (*k).to_owned(),
            tag_value: (*v).to_owned(),
        })
        .collect()
}
