//! Opening a token: loading and initialising the PKCS#11 module, finding the token by label,
//! and logging in the first session of the pool.

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use crate::pool::{self, SessionPool};
use crate::{HsmConfig, OpenError};

/// Loads and initialises the module, finds the token, and logs in one session (so that a
/// wrong PIN shows at once). When `finalize_on_failure`, a failure after C_Initialize
/// finalises the module again, so that the next try starts afresh; at start kmsd does not,
/// since it exits anyway, and C_Finalize would end every other user of the module in the
/// process.
pub(crate) fn connect(
    config: &HsmConfig,
    finalize_on_failure: bool,
) -> Result<SessionPool, OpenError> {
    let pkcs11 = Pkcs11::new(&config.module).map_err(|source| OpenError::Module {
        path: config.module.clone(),
        source,
    })?;
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(source) => return Err(OpenError::Initialize(source)),
    }
    let slot = match find_token(&pkcs11, &config.token_label, config.slot) {
        Ok(slot) => slot,
        Err(e) => {
            if finalize_on_failure {
                let _ = pkcs11.finalize();
            }
            return Err(e);
        }
    };
    let pool = SessionPool::new(
        pkcs11,
        slot,
        AuthPin::from(config.pin.as_str()),
        config.max_sessions.max(1),
        config.session_wait,
    );
    let first = match pool.get() {
        Ok(first) => {
            drop(first);
            Ok(())
        }
        Err(pool::GetError::Open(e)) => Err(OpenError::Login(e)),
        Err(pool::GetError::Timeout) => Err(OpenError::Timeout),
    };
    match first {
        Ok(()) => Ok(pool),
        Err(e) => {
            if finalize_on_failure {
                pool.close();
            }
            Err(e)
        }
    }
}

/// The slot of the token labelled `label`, in slot `wanted` when given. A token whose
/// information cryptoki cannot decode (opencryptoki 3.8's soft token writes its clock as
/// `hh:mm:ss`, where PKCS#11 wants `YYYYMMDDhhmmss`) has no readable label: it is used only
/// when its slot is named, and listed with a hint otherwise.
pub(crate) fn find_token(
    pkcs11: &Pkcs11,
    label: &str,
    wanted: Option<u64>,
) -> Result<Slot, OpenError> {
    let slots = pkcs11.get_slots_with_token().map_err(OpenError::Slots)?;
    let mut labels = Vec::new();
    for slot in slots {
        if wanted.is_some_and(|id| id != slot.id()) {
            continue;
        }
        let info = match pkcs11.get_token_info(slot) {
            Ok(info) => info,
            Err(CkError::ParseInt(_) | CkError::Utf8(_)) if wanted.is_some() => {
                tracing::warn!(
                    slot = slot.id(),
                    label,
                    "cryptoki cannot decode this slot's token information; using the slot \
                     named by --pkcs11-slot without checking its label"
                );
                return Ok(slot);
            }
            Err(CkError::ParseInt(_) | CkError::Utf8(_)) => {
                labels.push(format!(
                    "<slot {0}: token information unreadable; name it with --pkcs11-slot {0}>",
                    slot.id()
                ));
                continue;
            }
            Err(e) => return Err(OpenError::Slots(e)),
        };
        let this = info.label().trim_end();
        if this == label {
            if !info.token_initialized() {
                return Err(OpenError::TokenNotInitialized(label.to_owned()));
            }
            return Ok(slot);
        }
        labels.push(this.to_owned());
    }
    Err(OpenError::TokenNotFound {
        label: label.to_owned(),
        available: labels,
    })
}
