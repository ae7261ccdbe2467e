//! Aliases: global names for keys, given out by the server policy.

use std::sync::atomic::Ordering;

use tracing::info;

use crate::alias::{self, AliasRecord};
use crate::caller::Caller;
use crate::error::KmsError;
use crate::ids::{AliasName, KeyId, KeyRef};
use crate::key::KeyState;
use crate::policy::Action;

use super::{AliasPage, Kms, PageLimit, page_after};

impl Kms {
    /// Creates an alias pointing at `target` (a key id). Needs kms:CreateAlias on the name from
    /// the server policy (administrators have it) and on the target from its key policy.
    pub fn create_alias(
        &self,
        caller: &Caller,
        name: &AliasName,
        target: &KeyRef,
    ) -> Result<AliasRecord, KmsError> {
        alias::check_not_reserved(name)?;
        self.authorize_alias_name(caller, Action::CreateAlias, name)?;
        let _guard = self.write_guard();
        let key_id = self.alias_target(caller, Action::CreateAlias, target)?;
        if self.store.get_alias(name)?.is_some() {
            return Err(KmsError::AlreadyExists(format!(
                "alias {name} already exists"
            )));
        }
        self.check_counted()?;
        if self.alias_count.load(Ordering::SeqCst) >= self.max_keys {
            return Err(KmsError::LimitExceeded(format!(
                "the limit of {} aliases (the key limit) is reached",
                self.max_keys
            )));
        }
        let now = self.clock.now_millis();
        let record = AliasRecord {
            name: name.clone(),
            key_id,
            created_at_ms: now,
            updated_at_ms: now,
        };
        self.store.put_alias(&record)?;
        self.alias_count.fetch_add(1, Ordering::SeqCst);
        info!(alias = %name, key_id = %key_id, "created alias");
        Ok(record)
    }
    /// Points an existing alias at another key. The caller needs kms:UpdateAlias on the name
    /// (server policy) and on both keys (their key policies).
    pub fn update_alias(
        &self,
        caller: &Caller,
        name: &AliasName,
        target: &KeyRef,
    ) -> Result<AliasRecord, KmsError> {
        alias::check_not_reserved(name)?;
        self.authorize_alias_name(caller, Action::UpdateAlias, name)?;
        let _guard = self.write_guard();
        let mut record = self
            .store
            .get_alias(name)?
            .ok_or_else(|| KmsError::NotFound(format!("alias {name} not found")))?;
        self.authorized(
            caller,
            &KeyRef::Id(record.key_id),
            Action::UpdateAlias,
            None,
        )?;
        let key_id = self.alias_target(caller, Action::UpdateAlias, target)?;
        record.key_id = key_id;
        record.updated_at_ms = self.clock.now_millis();
        self.store.put_alias(&record)?;
        info!(alias = %name, key_id = %key_id, "moved alias");
        Ok(record)
    }
    /// Deletes an alias; the key is untouched. Needs kms:DeleteAlias on the name (server
    /// policy) and on its key (key policy).
    pub fn delete_alias(&self, caller: &Caller, name: &AliasName) -> Result<(), KmsError> {
        alias::check_not_reserved(name)?;
        self.authorize_alias_name(caller, Action::DeleteAlias, name)?;
        let _guard = self.write_guard();
        let Some(existing) = self.store.get_alias(name)? else {
            return Err(KmsError::NotFound(format!("alias {name} not found")));
        };
        self.authorized(
            caller,
            &KeyRef::Id(existing.key_id),
            Action::DeleteAlias,
            None,
        )?;
        self.store.delete_alias(name)?;
        self.uncount_alias();
        info!(alias = %name, "deleted alias");
        Ok(())
    }
    /// A page of aliases in name order, of every key or of `key` only.
    pub fn list_aliases(
        &self,
        caller: &Caller,
        key: Option<&KeyRef>,
        limit: PageLimit,
        page_token: Option<&str>,
    ) -> Result<AliasPage, KmsError> {
        self.authorize_server(caller, Action::ListAliases)?;
        let key_id = key.map(|k| self.resolve(k).map(|r| r.id)).transpose()?;
        let after = page_after(page_token, "ListAliases", AliasName::parse)?;
        let mut scanned = self.store.list_aliases(after.as_ref(), limit.fetch())?;
        let next_page_token = limit.cut(&mut scanned, |a| a.name.to_string());
        scanned.retain(|a| key_id.is_none_or(|k| a.key_id == k));
        Ok(AliasPage {
            aliases: scanned,
            next_page_token,
        })
    }
    /// The key an alias may point at: named by its id, visible, not pending deletion, and
    /// `action` allowed on it.
    pub(super) fn alias_target(
        &self,
        caller: &Caller,
        action: Action,
        target: &KeyRef,
    ) -> Result<KeyId, KmsError> {
        let KeyRef::Id(_) = target else {
            return Err(KmsError::validation(
                "target_key_id must be a key id, not an alias",
            ));
        };
        let record = self.authorized(caller, target, action, None)?;
        if record.state() == KeyState::PendingDeletion {
            return Err(record.refuse("the target of an alias"));
        }
        Ok(record.id)
    }
}

#[cfg(test)]
mod tests {
    use crate::service::test_support::*;

    #[test]
    fn aliases_name_keys_everywhere_and_can_move() {
        let (kms, _, _) = memory_kms();
        let a = new_key(&kms);
        let b = new_key(&kms);
        let name = alias("alias/billing");
        ok(kms.create_alias(&admin(), &name, &a));
        let via_alias = KeyRef::Alias(name.clone());
        let blob =
            ok(kms.encrypt(&admin(), &via_alias, &plaintext(b"x"), &ctx(&[]))).ciphertext_blob;
        assert_eq!(KeyRef::Id(ok(kms.describe_key(&admin(), &via_alias)).id), a);
        assert!(
            kms.decrypt(&admin(), &blob, &ctx(&[]), Some(&via_alias))
                .is_ok()
        );

        ok(kms.update_alias(&admin(), &name, &b));
        assert!(matches!(
            kms.decrypt(&admin(), &blob, &ctx(&[]), Some(&via_alias)),
            Err(KmsError::IncorrectKey(_))
        ));
        assert_eq!(KeyRef::Id(ok(kms.describe_key(&admin(), &via_alias)).id), b);

        let page = ok(kms.list_aliases(&admin(), Some(&b), ok(PageLimit::new(0)), None));
        assert_eq!(page.aliases.len(), 1);
        assert!(
            ok(kms.list_aliases(&admin(), Some(&a), ok(PageLimit::new(0)), None))
                .aliases
                .is_empty()
        );

        ok(kms.delete_alias(&admin(), &name));
        assert!(matches!(
            kms.describe_key(&admin(), &via_alias),
            Err(KmsError::NotFound(_))
        ));
        assert!(matches!(
            kms.delete_alias(&admin(), &name),
            Err(KmsError::NotFound(_))
        ));
        assert!(matches!(
            kms.update_alias(&admin(), &name, &a),
            Err(KmsError::NotFound(_))
        ));
    }

    #[test]
    fn alias_rules() {
        let (kms, _, _) = memory_kms();
        let a = new_key(&kms);
        let name = alias("alias/app");
        ok(kms.create_alias(&admin(), &name, &a));
        assert!(matches!(
            kms.create_alias(&admin(), &name, &a),
            Err(KmsError::AlreadyExists(_))
        ));
        assert!(matches!(
            kms.create_alias(&admin(), &alias("alias/kms/mine"), &a),
            Err(KmsError::Validation(_))
        ));
        assert!(matches!(
            kms.create_alias(&admin(), &alias("alias/other"), &KeyRef::Alias(name)),
            Err(KmsError::Validation(_))
        ));
        assert!(matches!(
            kms.create_alias(
                &admin(),
                &alias("alias/other"),
                &KeyRef::Id(KeyId::random())
            ),
            Err(KmsError::NotFound(_))
        ));
    }

    #[test]
    fn list_aliases_pages_in_name_order() {
        let (kms, _, _) = memory_kms();
        let a = new_key(&kms);
        for i in [3, 1, 4, 5, 2] {
            ok(kms.create_alias(&admin(), &alias(&format!("alias/a{i}")), &a));
        }
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page =
                ok(kms.list_aliases(&admin(), None, ok(PageLimit::new(2)), token.as_deref()));
            seen.extend(page.aliases.into_iter().map(|r| r.name.to_string()));
            match page.next_page_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        assert_eq!(
            seen,
            ["alias/a1", "alias/a2", "alias/a3", "alias/a4", "alias/a5"]
        );
    }

    /// Finding 5: alias names are the server policy's to give, with kms:AliasName.
    #[test]
    fn alias_names_need_the_server_policy() {
        let server_policy = ok(KeyPolicy::parse_server(
            r#"{"Statement":[
                {"Effect":"Allow","Principal":"app","Action":"kms:CreateKey"},
                {"Effect":"Allow","Principal":"app","Action":"kms:CreateAlias",
                 "Condition":{"StringLike":{"kms:AliasName":"alias/app/*"}}}]}"#,
        ));
        let kms = memory_kms().0.with_authorization(Authorization {
            administrators: vec!["admin".into()],
            server_policy: Some(server_policy),
        });
        let app = Caller::new("app", true);
        let key = KeyRef::Id(ok(kms.create_key(&app, plain_input())).id);
        assert!(denied(kms.create_alias(
            &app,
            &alias("alias/payments"),
            &key
        )));
        ok(kms.create_alias(&app, &alias("alias/app/payments"), &key));
        // The key policy still has its say: app cannot name the admin's key.
        let admins_key = new_key(&kms);
        assert!(denied(kms.create_alias(
            &app,
            &alias("alias/app/theirs"),
            &admins_key
        )));
        ok(kms.create_alias(&admin(), &alias("alias/payments"), &admins_key));
    }
}
