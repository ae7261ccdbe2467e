//! Keys: creation, description, listing, enabling and disabling.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::{info, warn};

use crate::caller::Caller;
use crate::error::KmsError;
use crate::hsm::{HsmError, KeyVersionRef};
use crate::ids::{KeyId, KeyRef};
use crate::key::{KeyMaterial, KeyRecord, KeyStorage, KeyUsage, Origin, WrappedMaterial};
use crate::policy::{Action, KeyPolicy};

use super::{CreateKeyInput, KeyPage, Kms, PageLimit, check_no_lockout, page_after};

impl Kms {
    /// Creates a key and its first version inside the HSM.
    ///
    /// Crash-safe: the record is stored as `Creating` before the HSM object exists and becomes
    /// `Enabled` only after; [`Kms::reconcile`] removes what a crash left in between.
    pub fn create_key(
        &self,
        caller: &Caller,
        input: CreateKeyInput,
    ) -> Result<KeyRecord, KmsError> {
        self.authorize_server(caller, Action::CreateKey)?;
        let policy = input
            .policy
            .as_deref()
            .map(|text| KeyPolicy::parse(text).map(Arc::new))
            .transpose()?;
        KeyRecord::validate_description(&input.description)?;
        let usage = input.spec.usage(input.usage)?;
        if let Some((spec, why)) = self.unserved.iter().find(|(spec, _)| *spec == input.spec) {
            return Err(KmsError::UnsupportedOperation(format!(
                "{} keys cannot be created on this HSM: {why}",
                spec.as_str()
            )));
        }
        if input.origin == Origin::External && input.spec.is_asymmetric() {
            return Err(KmsError::UnsupportedOperation(format!(
                "key material of {} keys cannot be imported; only SYMMETRIC_DEFAULT and HMAC keys \
                 take origin EXTERNAL",
                input.spec.as_str()
            )));
        }
        if let Some(policy) = &policy
            && !input.bypass_policy_lockout_safety_check
        {
            check_no_lockout(
                &self.access_request(caller, Action::PutKeyPolicy, None, None),
                policy,
            )?;
        }
        // Reserve a place under the limit; given back if creation fails.
        self.check_counted()?;
        self.key_count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max_keys).then_some(n + 1)
            })
            .map_err(|_| {
                KmsError::LimitExceeded(format!("the limit of {} keys is reached", self.max_keys))
            })?;
        let created = self.create_key_reserved(caller, input, usage, policy);
        if created.is_err() {
            self.key_count.fetch_sub(1, Ordering::SeqCst);
        }
        created
    }
    pub(super) fn create_key_reserved(
        &self,
        caller: &Caller,
        input: CreateKeyInput,
        usage: KeyUsage,
        policy: Option<Arc<KeyPolicy>>,
    ) -> Result<KeyRecord, KmsError> {
        let now = self.clock.now_millis();
        let policy = policy.unwrap_or_else(|| Arc::new(KeyPolicy::default_for(caller.principal())));
        let mut record = KeyRecord::new(KeyId::random(), now, input.spec, usage, input.origin);
        record.set_description(input.description)?;
        record.tag(input.tags)?;
        record.set_policy(&policy);
        self.policies.insert(&policy);
        caller.note_key(record.id, Some(1));
        if input.origin == Origin::External {
            // No material until ImportKeyMaterial: nothing in the HSM yet.
            record.await_import()?;
            self.store.put_key(&record)?;
            info!(key_id = %record.id, "created key awaiting imported material");
            return Ok(record);
        }
        self.store.put_key(&record)?;
        let first = KeyVersionRef {
            key_id: record.id,
            version: 1,
        };
        let _making = self.making_material();
        let (public_key, wrapped) = match self.make_material(first, record.material()) {
            Ok(made) => made,
            Err(error) => {
                // The HSM may have made the object before failing (a lost session). Destroy it,
                // then drop the record; if either step fails, the `Creating` record stays and
                // startup reconciliation finishes the job.
                let cleanup = self
                    .hsm
                    .destroy_key_version(first)
                    .map_err(KmsError::from)
                    .and_then(|()| self.store.delete_key(record.id).map_err(KmsError::from));
                if let Err(cleanup) = cleanup {
                    warn!(key_id = %record.id, error = %cleanup,
                        "a failed key creation is left for startup reconciliation");
                }
                return Err(error.into());
            }
        };
        record.created(public_key, wrapped)?;
        self.store.put_key(&record)?;
        info!(key_id = %record.id, spec = record.spec.as_str(), "created key");
        Ok(record)
    }
    /// Makes a key version's material in the HSM where the configured storage says: wrapped
    /// under the domain key (returned for the record), or a token object. A key pair's public
    /// key is returned either way.
    pub(super) fn make_material(
        &self,
        key: KeyVersionRef,
        material: KeyMaterial,
    ) -> Result<(Option<Vec<u8>>, Option<WrappedMaterial>), HsmError> {
        if self.storage == KeyStorage::Wrapped {
            let (wrapped, public_key) = self.hsm.create_wrapped_version(key, material)?;
            Ok((public_key, Some(wrapped)))
        } else {
            Ok((self.hsm.create_key_version(key, material)?, None))
        }
    }
    /// The record of a visible key.
    pub fn describe_key(&self, caller: &Caller, key: &KeyRef) -> Result<KeyRecord, KmsError> {
        self.authorized(caller, key, Action::DescribeKey, None)
    }
    /// A page of key ids, ascending. `page_token` is the previous page's `next_page_token`.
    pub fn list_keys(
        &self,
        caller: &Caller,
        limit: PageLimit,
        page_token: Option<&str>,
    ) -> Result<KeyPage, KmsError> {
        self.authorize_server(caller, Action::ListKeys)?;
        let after = page_after(page_token, "ListKeys", str::parse::<KeyId>)?;
        let mut scanned = self.store.list_keys(after, limit.fetch())?;
        let next_page_token = limit.cut(&mut scanned, |r| r.id.to_string());
        let now = self.clock.now_millis();
        let keys = scanned
            .iter()
            .filter(|r| r.is_visible() && !r.deletion_due(now))
            .map(|r| r.id)
            .collect();
        Ok(KeyPage {
            keys,
            next_page_token,
        })
    }
    /// Makes a Disabled key Enabled (a no-op on an Enabled key).
    pub fn enable_key(&self, caller: &Caller, key: &KeyRef) -> Result<KeyRecord, KmsError> {
        self.update(caller, key, Action::EnableKey, KeyRecord::enable)
    }
    /// Makes an Enabled key Disabled (a no-op on a Disabled key).
    pub fn disable_key(&self, caller: &Caller, key: &KeyRef) -> Result<KeyRecord, KmsError> {
        let record = self.update(caller, key, Action::DisableKey, KeyRecord::disable)?;
        self.hsm.forget_unwrapped(record.id);
        Ok(record)
    }
    /// Replaces the description.
    pub fn update_key_description(
        &self,
        caller: &Caller,
        key: &KeyRef,
        description: String,
    ) -> Result<KeyRecord, KmsError> {
        KeyRecord::validate_description(&description)?;
        self.update(caller, key, Action::UpdateKeyDescription, |record| {
            record.set_description(description)
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::service::test_support::*;

    #[test]
    fn list_keys_pages_through_every_key_once() {
        let (kms, _, _) = memory_kms();
        let mut created: Vec<KeyId> = (0..7)
            .map(|_| match new_key(&kms) {
                KeyRef::Id(id) => id,
                KeyRef::Alias(_) => unreachable!(),
            })
            .collect();
        created.sort();
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = ok(kms.list_keys(&admin(), ok(PageLimit::new(3)), token.as_deref()));
            assert!(page.keys.len() <= 3);
            seen.extend(page.keys);
            match page.next_page_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        assert_eq!(seen, created);
        assert!(matches!(
            kms.list_keys(&admin(), ok(PageLimit::new(3)), Some("garbage")),
            Err(KmsError::Validation(_))
        ));
        assert!(matches!(PageLimit::new(1001), Err(KmsError::Validation(_))));
    }

    #[test]
    fn a_failed_hsm_creation_leaves_no_key() {
        let (kms, store, hsm) = memory_kms();
        hsm.set_fail_creation(true);
        let result = kms.create_key(&admin(), plain_input());
        assert!(matches!(result, Err(KmsError::Internal(_))));
        assert!(ok(store.list_keys(None, 10).map_err(KmsError::from)).is_empty());
        assert!(ok(hsm.list_key_versions().map_err(KmsError::from)).is_empty());
    }

    #[test]
    fn descriptions_are_bounded() {
        let (kms, _, _) = memory_kms();
        let key = new_key(&kms);
        assert!(
            kms.update_key_description(&admin(), &key, "é".repeat(8192))
                .is_ok()
        );
        assert!(matches!(
            kms.update_key_description(&admin(), &key, "x".repeat(8193)),
            Err(KmsError::Validation(_))
        ));
        assert_eq!(
            ok(kms.describe_key(&admin(), &key)).description(),
            "é".repeat(8192)
        );
    }

    #[test]
    fn the_key_limit_is_enforced_and_counts_from_the_store() {
        let store = Arc::new(crate::testing::MemoryStore::default());
        let hsm = Arc::new(crate::testing::SoftKeyStore::default());
        let clock = Arc::new(crate::testing::ManualClock::default());
        let kms = Kms::new(store.clone(), hsm.clone(), clock.clone())
            .with_authorization(crate::testing::authorization())
            .with_max_keys(2);
        new_key(&kms);
        new_key(&kms);
        assert!(matches!(
            kms.create_key(&admin(), plain_input()),
            Err(KmsError::LimitExceeded(_))
        ));
        // A restarted service counts the keys in the store.
        let restarted = Kms::new(store.clone(), hsm.clone(), clock.clone())
            .with_authorization(crate::testing::authorization())
            .with_max_keys(3);
        ok(restarted.reconcile());
        let key = new_key(&restarted);
        assert!(restarted.create_key(&admin(), plain_input()).is_err());

        // Aliases share the limit, counted from the store after a restart too.
        for name in ["alias/a", "alias/b", "alias/c"] {
            ok(restarted.create_alias(&admin(), &alias(name), &key));
        }
        assert!(matches!(
            restarted.create_alias(&admin(), &alias("alias/d"), &key),
            Err(KmsError::LimitExceeded(_))
        ));
        ok(restarted.delete_alias(&admin(), &alias("alias/c")));
        ok(restarted.create_alias(&admin(), &alias("alias/d"), &key));
        let again = Kms::new(store, hsm, clock)
            .with_authorization(crate::testing::authorization())
            .with_max_keys(3);
        ok(again.reconcile());
        assert!(matches!(
            again.create_alias(&admin(), &alias("alias/e"), &key),
            Err(KmsError::LimitExceeded(_))
        ));
    }
}
