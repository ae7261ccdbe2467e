//! Access: resolving the key a caller names, and authorizing the caller against the server
//! policy and the key's policy.

use std::sync::Arc;

use tracing::info;

use crate::caller::Caller;
use crate::context::EncryptionContext;
use crate::error::KmsError;
use crate::ids::{AliasName, KeyId, KeyRef};
use crate::key::KeyRecord;
use crate::policy::{AccessRequest, Action, Decision, KeyPolicy};

use super::Kms;

impl Kms {
    /// The record of a key the caller named, in any visible state.
    pub(super) fn resolve(&self, key: &KeyRef) -> Result<KeyRecord, KmsError> {
        match key {
            KeyRef::Id(id) => self
                .store
                .get_key(*id)?
                .map(|r| r.as_seen_at(self.clock.now_millis()))
                .filter(KeyRecord::is_visible)
                .ok_or_else(|| KmsError::NotFound(format!("key {id} not found"))),
            KeyRef::Alias(alias) => {
                let target = self
                    .store
                    .get_alias(alias)?
                    .ok_or_else(|| KmsError::NotFound(format!("alias {alias} not found")))?;
                self.resolve(&KeyRef::Id(target.key_id))
            }
        }
    }
    /// The record of a key that `action` with `context` is allowed on and that may be used
    /// for cryptography now.
    pub(super) fn usable(
        &self,
        caller: &Caller,
        key: &KeyRef,
        action: Action,
        context: Option<&EncryptionContext>,
    ) -> Result<KeyRecord, KmsError> {
        let record = self.authorized(caller, key, action, context)?;
        record.check_usable()?;
        Ok(record)
    }
    /// The record of a visible key that `action` is allowed on.
    pub(super) fn authorized(
        &self,
        caller: &Caller,
        key: &KeyRef,
        action: Action,
        context: Option<&EncryptionContext>,
    ) -> Result<KeyRecord, KmsError> {
        let record = self.resolve(key)?;
        caller.note_key(record.id, None);
        self.authorize(caller, action, &record, context)?;
        Ok(record)
    }
    /// Applies `change` to the record of a key that `action` is allowed on, and stores it.
    pub(super) fn update(
        &self,
        caller: &Caller,
        key: &KeyRef,
        action: Action,
        change: impl FnOnce(&mut KeyRecord) -> Result<(), KmsError>,
    ) -> Result<KeyRecord, KmsError> {
        let _guard = self.write_guard();
        let mut record = self.authorized(caller, key, action, None)?;
        change(&mut record)?;
        self.store.put_key(&record)?;
        info!(key_id = %record.id, state = record.state().as_str(), "updated key");
        Ok(record)
    }
    /// Applies `change` to the stored record of the key `id`, whatever its state, under the
    /// write lock, and stores it: for the second half of a change whose HSM work ran without
    /// the lock.
    pub(super) fn rewrite(
        &self,
        id: KeyId,
        change: impl FnOnce(&mut KeyRecord) -> Result<(), KmsError>,
    ) -> Result<KeyRecord, KmsError> {
        let _guard = self.write_guard();
        let mut record = self
            .store
            .get_key(id)?
            .ok_or_else(|| KmsError::NotFound(format!("key {id} not found")))?;
        change(&mut record)?;
        self.store.put_key(&record)?;
        Ok(record)
    }
    /// The policy that governs `record`, parsed once per text.
    pub(super) fn policy_of(&self, record: &KeyRecord) -> Result<Arc<KeyPolicy>, KmsError> {
        self.policies.get(record.policy_text())
    }
    /// What a policy is asked about `caller` doing `action`.
    pub(super) fn access_request<'a>(
        &self,
        caller: &'a Caller,
        action: Action,
        context: Option<&'a EncryptionContext>,
        alias_name: Option<&'a str>,
    ) -> AccessRequest<'a> {
        AccessRequest {
            principal: caller.principal(),
            action,
            encryption_context: context,
            secure_transport: caller.secure_transport(),
            administrator: self
                .authorization
                .administrators
                .iter()
                .any(|a| a == caller.principal()),
            alias_name,
        }
    }
    /// Allows `action` on `record` for `caller` unless the server policy denies it, then per
    /// the key's policy; or AccessDenied.
    pub(super) fn authorize(
        &self,
        caller: &Caller,
        action: Action,
        record: &KeyRecord,
        context: Option<&EncryptionContext>,
    ) -> Result<(), KmsError> {
        let request = self.access_request(caller, action, context, None);
        if let Some(server_policy) = &self.authorization.server_policy
            && let Decision::ExplicitDeny(statement) = server_policy.evaluate(&request)
        {
            caller.note_statement(format!("server policy {statement}"));
            return Err(KmsError::AccessDenied(format!(
                "{} is not allowed {action} on key {}: a statement of the server policy denies it",
                caller.principal(),
                record.id
            )));
        }
        let decision = self.policy_of(record)?.evaluate(&request);
        if let Some(statement) = decision.statement() {
            caller.note_statement(statement.to_string());
        }
        match decision {
            Decision::Allow(_) => Ok(()),
            Decision::ExplicitDeny(_) => Err(KmsError::AccessDenied(format!(
                "{} is not allowed {action} on key {}: a statement of the key policy denies it",
                caller.principal(),
                record.id
            ))),
            Decision::ImplicitDeny => Err(KmsError::AccessDenied(format!(
                "{} is not allowed {action} on key {}: no statement of the key policy allows it",
                caller.principal(),
                record.id
            ))),
        }
    }
    /// Allows a server-level action: an explicit Deny of the server policy refuses, then
    /// administrators and the server policy's Allows pass.
    pub(super) fn authorize_server(&self, caller: &Caller, action: Action) -> Result<(), KmsError> {
        self.authorize_server_for(caller, action, None)
    }
    /// Allows the alias-name half of CreateAlias, UpdateAlias or DeleteAlias: alias names are
    /// global, so who may take or change one is the server policy's to say (with a condition
    /// on kms:AliasName), not the target key's.
    pub(super) fn authorize_alias_name(
        &self,
        caller: &Caller,
        action: Action,
        name: &AliasName,
    ) -> Result<(), KmsError> {
        self.authorize_server_for(caller, action, Some(name.as_str()))
    }
    pub(super) fn authorize_server_for(
        &self,
        caller: &Caller,
        action: Action,
        alias_name: Option<&str>,
    ) -> Result<(), KmsError> {
        let request = self.access_request(caller, action, None, alias_name);
        let decision = self
            .authorization
            .server_policy
            .as_ref()
            .map(|policy| policy.evaluate(&request));
        if let Some(statement) = decision.as_ref().and_then(Decision::statement) {
            caller.note_statement(format!("server policy {statement}"));
        }
        let explicit_deny = matches!(decision, Some(Decision::ExplicitDeny(_)));
        if !explicit_deny && (request.administrator || decision.is_some_and(|d| d.is_allowed())) {
            return Ok(());
        }
        let what =
            alias_name.map_or_else(|| action.to_string(), |name| format!("{action} on {name}"));
        Err(KmsError::AccessDenied(format!(
            "{} is not allowed {what}: it is not an administrator and the server policy {}",
            caller.principal(),
            if explicit_deny {
                "denies it"
            } else {
                "does not allow it"
            }
        )))
    }
}

#[cfg(test)]
mod tests {
    use crate::service::test_support::*;

    #[test]
    fn policies_decide_who_may_use_a_key_and_the_caller_notes_why() {
        let (kms, _, _) = memory_kms();
        let key = new_key(&kms);
        let other = new_key(&kms);
        let app = Caller::new("app", true);
        let empty = EncryptionContext::empty();
        // Not an administrator, no server policy: no server-level action.
        assert!(denied(kms.create_key(&app, plain_input())));
        assert!(denied(kms.generate_random(&app, ok(RandomLength::new(8)))));
        assert!(denied(kms.list_keys(&app, ok(PageLimit::new(0)), None)));
        // The default policy names only the creator (and administrators).
        assert!(denied(kms.encrypt(&app, &key, &plaintext(b"x"), &empty)));
        assert!(denied(kms.describe_key(&app, &key)));
        // Authorization comes first: a caller with no right to the key learns nothing of a
        // policy document's faults, or of the key.
        assert!(denied(kms.put_key_policy(
            &app,
            &key,
            "not a policy",
            false
        )));
        assert!(denied(kms.create_key(
            &app,
            CreateKeyInput {
                policy: Some("not a policy".into()),
                ..plain_input()
            }
        )));

        let policy = r#"{"Statement":[
                {"Effect":"Allow","Principal":"admin","Action":"kms:*"},
                {"Sid":"App","Effect":"Allow","Principal":"app",
                 "Action":["kms:Encrypt","kms:ReEncryptFrom"]}]}"#;
        assert!(matches!(
            kms.put_key_policy(&admin(), &key, "not a policy", false),
            Err(KmsError::Validation(_))
        ));
        ok(kms.put_key_policy(&admin(), &key, policy, false));
        let _ = app.take_note();
        let blob = ok(kms.encrypt(&app, &key, &plaintext(b"x"), &empty)).ciphertext_blob;
        let note = app.take_note();
        assert_eq!(note.policy_statement.as_deref(), Some(r#"Sid "App""#));
        assert_eq!(note.keys.len(), 1);
        assert_eq!(note.keys[0].1, Some(1));
        assert!(denied(kms.decrypt(&app, &blob, &empty, None)));
        // ReEncrypt needs ReEncryptTo on the destination too.
        assert!(denied(
            kms.re_encrypt(&app, &ReEncryptInput::new(&blob, &empty, &other))
        ));
        assert_eq!(app.take_note().keys.len(), 2);

        // A policy that locks the caller out needs the bypass.
        let lockout = r#"{"Statement":[{"Effect":"Allow","Principal":"app","Action":"kms:*"}]}"#;
        assert!(matches!(
            kms.put_key_policy(&admin(), &key, lockout, false),
            Err(KmsError::Validation(_))
        ));
        ok(kms.put_key_policy(&admin(), &key, lockout, true));
        assert!(denied(kms.get_key_policy(&admin(), &key)));
        ok(kms.decrypt(&app, &blob, &empty, None));
    }

    #[test]
    fn the_server_policy_lets_others_create_keys_and_denies_bind_administrators() {
        let server_policy = ok(KeyPolicy::parse_server(
            r#"{"Statement":[
                {"Effect":"Allow","Principal":"app","Action":"kms:CreateKey"},
                {"Sid":"NoRandom","Effect":"Deny","Principal":"*","Action":"kms:GenerateRandom"}]}"#,
        ));
        let kms = memory_kms().0.with_authorization(Authorization {
            administrators: vec!["admin".into()],
            server_policy: Some(server_policy),
        });
        let app = Caller::new("app", true);
        let record = ok(kms.create_key(&app, plain_input()));
        let (_, policy) = ok(kms.get_key_policy(&app, &KeyRef::Id(record.id)));
        assert!(policy.text().contains("\"app\"") && policy.text().contains("\"#administrators\""));
        // The server policy's Deny binds key actions too, administrators included.
        let server_policy = ok(KeyPolicy::parse_server(
            r#"{"Statement":{"Effect":"Deny","Principal":"*","Action":"kms:Decrypt"}}"#,
        ));
        let strict = memory_kms().0.with_authorization(Authorization {
            administrators: vec!["admin".into()],
            server_policy: Some(server_policy),
        });
        let key = new_key(&strict);
        let blob = ok(strict.encrypt(&admin(), &key, &plaintext(b"x"), &ctx(&[]))).ciphertext_blob;
        assert!(denied(strict.decrypt(&admin(), &blob, &ctx(&[]), None)));
        assert!(denied(kms.list_keys(&app, ok(PageLimit::new(0)), None)));
        assert!(denied(
            kms.generate_random(&admin(), ok(RandomLength::new(8)))
        ));
        ok(kms.list_keys(&admin(), ok(PageLimit::new(0)), None));
    }
}
