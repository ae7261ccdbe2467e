//! Tags on keys (TagResource, UntagResource, ListResourceTags).

use crate::caller::Caller;
use crate::error::KmsError;
use crate::ids::KeyRef;
use crate::key::KeyRecord;
use crate::policy::Action;
use crate::tags::{self, NewTags};

use super::{Kms, PageLimit, TagPage};

impl Kms {
    /// Adds tags to a key, replacing the values of keys it already has.
    pub fn tag_resource(
        &self,
        caller: &Caller,
        key: &KeyRef,
        new: NewTags,
    ) -> Result<KeyRecord, KmsError> {
        self.update(caller, key, Action::TagResource, |record| record.tag(new))
    }
    /// Removes tags from a key; keys it does not have are ignored.
    pub fn untag_resource(
        &self,
        caller: &Caller,
        key: &KeyRef,
        tag_keys: &[String],
    ) -> Result<KeyRecord, KmsError> {
        for tag_key in tag_keys {
            tags::check_key(tag_key)?;
        }
        self.update(caller, key, Action::UntagResource, |record| {
            record.untag(tag_keys)
        })
    }
    /// A page of a key's tags in tag-key order.
    pub fn list_resource_tags(
        &self,
        caller: &Caller,
        key: &KeyRef,
        limit: PageLimit,
        page_token: Option<&str>,
    ) -> Result<TagPage, KmsError> {
        let record = self.authorized(caller, key, Action::ListResourceTags, None)?;
        let mut tags: Vec<(String, String)> = record
            .tags()
            .iter()
            .filter(|(k, _)| page_token.is_none_or(|after| k.as_str() > after))
            .take(limit.fetch())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let next_page_token = limit.cut(&mut tags, |(k, _)| k.clone());
        Ok(TagPage {
            tags,
            next_page_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::service::test_support::*;

    #[test]
    fn tags_are_added_replaced_removed_and_paged() {
        let (kms, _, _) = memory_kms();
        let key = new_key(&kms);
        let add = |pairs: &[(&str, &str)]| {
            ok(NewTags::new(
                pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())),
            ))
        };
        ok(kms.tag_resource(
            &admin(),
            &key,
            add(&[("team", "payments"), ("env", "prod"), ("cost", "42")]),
        ));
        ok(kms.tag_resource(&admin(), &key, add(&[("env", "staging")])));
        ok(kms.untag_resource(&admin(), &key, &["cost".into(), "absent".into()]));
        let page = ok(kms.list_resource_tags(&admin(), &key, ok(PageLimit::new(1)), None));
        assert_eq!(page.tags, [("env".to_owned(), "staging".to_owned())]);
        let rest = ok(kms.list_resource_tags(
            &admin(),
            &key,
            ok(PageLimit::new(0)),
            page.next_page_token.as_deref(),
        ));
        assert_eq!(rest.tags, [("team".to_owned(), "payments".to_owned())]);
        assert!(rest.next_page_token.is_none());
        let fifty: Vec<(String, String)> =
            (0..49).map(|i| (format!("t{i}"), String::new())).collect();
        assert!(matches!(
            kms.tag_resource(&admin(), &key, ok(NewTags::new(fifty))),
            Err(KmsError::LimitExceeded(_))
        ));
        assert_eq!(
            ok(kms.describe_key(&admin(), &key)).tags().len(),
            2,
            "a refused change changes nothing"
        );
    }
}
