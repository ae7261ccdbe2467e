//! Key policies: reading and replacing them, never into a lockout.

use std::sync::Arc;

use crate::caller::Caller;
use crate::error::KmsError;
use crate::ids::{KeyId, KeyRef};
use crate::key::KeyRecord;
use crate::policy::{AccessRequest, Action, KeyPolicy};

use super::Kms;

impl Kms {
    /// The key's id and policy (the legacy policy for keys made before policies existed).
    pub fn get_key_policy(
        &self,
        caller: &Caller,
        key: &KeyRef,
    ) -> Result<(KeyId, Arc<KeyPolicy>), KmsError> {
        let record = self.authorized(caller, key, Action::GetKeyPolicy, None)?;
        Ok((record.id, self.policy_of(&record)?))
    }
    /// Replaces the key's policy with the document `policy` (JSON), parsed once the caller
    /// may call PutKeyPolicy on the key. Refused, unless `bypass_lockout_check`, when the new
    /// policy would not let the caller call PutKeyPolicy again.
    pub fn put_key_policy(
        &self,
        caller: &Caller,
        key: &KeyRef,
        policy: &str,
        bypass_lockout_check: bool,
    ) -> Result<KeyRecord, KmsError> {
        self.authorized(caller, key, Action::PutKeyPolicy, None)?;
        let policy = Arc::new(KeyPolicy::parse(policy)?);
        if !bypass_lockout_check {
            check_no_lockout(
                &self.access_request(caller, Action::PutKeyPolicy, None, None),
                &policy,
            )?;
        }
        let record = self.update(caller, key, Action::PutKeyPolicy, |record| {
            record.set_policy(&policy);
            Ok(())
        })?;
        self.policies.insert(&policy);
        Ok(record)
    }
}

/// Refuses a policy that would not let `caller` call PutKeyPolicy.
pub(super) fn check_no_lockout(
    request: &AccessRequest<'_>,
    policy: &KeyPolicy,
) -> Result<(), KmsError> {
    let decision = policy.evaluate(request);
    if decision.is_allowed() {
        return Ok(());
    }
    Err(KmsError::Validation(format!(
        "the policy would not allow you ({}) to call PutKeyPolicy, so you could never change \
         it again; set bypass_policy_lockout_safety_check to apply it anyway",
        request.principal
    )))
}
