//! Aliases: names that point at a key.

use kms_proto::v1 as pb;

use crate::{ClientError, KmsClient};

impl KmsClient {
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
}
