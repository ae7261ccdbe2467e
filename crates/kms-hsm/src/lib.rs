//! The PKCS#11 backend of the kms-core [`KeyStore`] trait, on cryptoki.
//!
//! One shared [`Pkcs11`] context initialised with OS locking, a bounded pool of logged-in
//! read-write sessions, and the custody template of DESIGN §3 for every key version. All calls
//! block: the service runs them on blocking threads. A call that finds its session or token
//! gone drops the session, opens and logs in a new one, and retries once when the call is
//! idempotent.
//!
//! Depends on kms-core and cryptoki only; nothing here knows about gRPC or the metadata store.
#![forbid(unsafe_code)]

mod audit_key;
mod error;
mod object_id;
mod pool;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use kms_core::{HsmError, KeyStore, KeyVersionRef, MessageKey};
use tracing::{debug, warn};
use zeroize::Zeroizing;

pub use audit_key::HsmAuditSigner;
pub use error::OpenError;
pub use object_id::ObjectId;
use pool::SessionPool;

/// Where the HSM is and how to log in.
pub struct HsmConfig {
    /// Path of the PKCS#11 module (a shared library).
    pub module: PathBuf,
    /// Label of the token holding the keys.
    pub token_label: String,
    /// The user PIN.
    pub pin: Zeroizing<String>,
    /// The most sessions open at once (1 or more).
    pub max_sessions: usize,
    /// How long a call waits for a free session before failing with a timeout.
    pub session_wait: Duration,
}

/// The HSM-backed [`KeyStore`].
pub struct HsmKeyStore {
    pool: SessionPool,
    namespace: [u8; 16],
    handles: Mutex<HashMap<KeyVersionRef, ObjectHandle>>,
    token_label: String,
}

impl HsmKeyStore {
    /// Loads the module, finds the token and logs in. `namespace` is the store's instance id:
    /// only HSM objects carrying it are ever listed or destroyed.
    pub fn open(config: HsmConfig, namespace: [u8; 16]) -> Result<Self, OpenError> {
        let pkcs11 = Pkcs11::new(&config.module).map_err(|source| OpenError::Module {
            path: config.module.clone(),
            source,
        })?;
        match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(source) => return Err(OpenError::Initialize(source)),
        }
        let slot = find_token(&pkcs11, &config.token_label)?;
        let pin = AuthPin::from(config.pin.as_str());
        let pool = SessionPool::new(
            pkcs11,
            slot,
            pin,
            config.max_sessions.max(1),
            config.session_wait,
        );
        // Open and log in one session now, so a wrong PIN stops the start.
        match pool.get() {
            Ok(first) => drop(first),
            Err(pool::GetError::Open(e)) => return Err(OpenError::Login(e)),
            Err(pool::GetError::Timeout) => return Err(OpenError::Timeout),
        }
        Ok(HsmKeyStore {
            pool,
            namespace,
            handles: Mutex::new(HashMap::new()),
            token_label: config.token_label,
        })
    }

    /// The label of the token in use.
    pub fn token_label(&self) -> &str {
        &self.token_label
    }

    fn object_id(&self, key: KeyVersionRef) -> ObjectId {
        ObjectId::new(self.namespace, key)
    }

    /// Runs `f` on a pooled session; when the session or token is gone, drops the session and,
    /// if `idempotent`, runs `f` once more on a fresh one.
    fn with_session<T>(
        &self,
        operation: &'static str,
        idempotent: bool,
        f: impl Fn(&Session) -> Result<T, CkError>,
    ) -> Result<T, HsmError> {
        let session = self.pool.get().map_err(error::from_get)?;
        match f(&session) {
            Ok(value) => Ok(value),
            Err(e) if error::is_session_lost(&e) => {
                warn!(operation, error = %e, "HSM session lost; reopening");
                session.discard();
                self.pool.close_idle();
                self.handles
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clear();
                if !idempotent {
                    return Err(error::classify(operation, e));
                }
                let session = self.pool.get().map_err(error::from_get)?;
                f(&session).map_err(|e| {
                    if error::is_session_lost(&e) {
                        session.discard();
                    }
                    error::classify(operation, e)
                })
            }
            Err(e) => Err(error::classify(operation, e)),
        }
    }

    fn find(&self, session: &Session, key: KeyVersionRef) -> Result<Option<ObjectHandle>, CkError> {
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Id(self.object_id(key).to_bytes()),
        ];
        Ok(session.find_objects(&template)?.into_iter().next())
    }

    /// The handle of the key version's object, from the cache or a search.
    fn handle(
        &self,
        session: &Session,
        key: KeyVersionRef,
    ) -> Result<Option<ObjectHandle>, CkError> {
        let cached = self
            .handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .copied();
        if cached.is_some() {
            return Ok(cached);
        }
        let found = self.find(session, key)?;
        if let Some(handle) = found {
            self.handles
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key, handle);
        }
        Ok(found)
    }

    fn forget(&self, key: KeyVersionRef) {
        self.handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
    }
}

/// The custody template of DESIGN §3 for a key version's master secret: a 256-bit generic
/// secret, on the token, private, sensitive, never extractable, not modifiable or copyable,
/// usable only to compute HMACs (CKA_SIGN). Every attribute is set explicitly, since
/// SoftHSM2's defaults are unsafe.
pub fn master_secret_template(id: &ObjectId, label: String) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::ValueLen(32.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Modifiable(false),
        Attribute::Copyable(false),
        Attribute::Destroyable(true),
        Attribute::Sign(true),
        Attribute::Verify(false),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::Id(id.to_bytes()),
        Attribute::Label(label.into_bytes()),
    ]
}

impl KeyStore for HsmKeyStore {
    fn create_key_version(&self, key: KeyVersionRef) -> Result<(), HsmError> {
        let id = self.object_id(key);
        let template = master_secret_template(&id, id.label());
        // Not idempotent: a retry after a lost session could make a second object. A failure
        // leaves at most an orphan, which startup reconciliation destroys.
        let handle = self.with_session("generate key", false, |s| {
            s.generate_key(&Mechanism::GenericSecretKeyGen, &template)
        })?;
        self.handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, handle);
        debug!(key_id = %key.key_id, version = key.version, "generated HSM key");
        Ok(())
    }

    fn derive_message_key(&self, key: KeyVersionRef, input: &[u8]) -> Result<MessageKey, HsmError> {
        let mac = self.with_session("hmac", true, |s| {
            let Some(handle) = self.handle(s, key)? else {
                return Ok(None);
            };
            match s.sign(&Mechanism::Sha256Hmac, handle, input) {
                Err(CkError::Pkcs11(
                    RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid,
                    _,
                )) => {
                    // A stale cached handle: search again once.
                    self.forget(key);
                    match self.find(s, key)? {
                        Some(handle) => s.sign(&Mechanism::Sha256Hmac, handle, input).map(Some),
                        None => Ok(None),
                    }
                }
                other => other.map(Some),
            }
        })?;
        let mac = Zeroizing::new(mac.ok_or(HsmError::ObjectNotFound(key))?);
        let bytes: [u8; 32] = mac.as_slice().try_into().map_err(|_| HsmError::Failed {
            operation: "hmac",
            source: format!("the HSM returned {} bytes, not 32", mac.len()).into(),
        })?;
        Ok(MessageKey::new(Zeroizing::new(bytes)))
    }

    fn random_bytes(&self, len: usize) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let len = u32::try_from(len).map_err(|e| HsmError::Failed {
            operation: "random",
            source: Box::new(e),
        })?;
        self.with_session("random", true, |s| s.generate_random_vec(len))
            .map(Zeroizing::new)
    }

    fn destroy_key_version(&self, key: KeyVersionRef) -> Result<(), HsmError> {
        self.forget(key);
        self.with_session("destroy key", true, |s| {
            for handle in s.find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Id(self.object_id(key).to_bytes()),
            ])? {
                s.destroy_object(handle)?;
            }
            Ok(())
        })
    }

    fn list_key_versions(&self) -> Result<Vec<KeyVersionRef>, HsmError> {
        self.with_session("list keys", true, |s| {
            let mut found = Vec::new();
            for handle in s.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])? {
                for attribute in s.get_attributes(handle, &[AttributeType::Id])? {
                    if let Attribute::Id(bytes) = attribute
                        && let Some(id) = ObjectId::parse(&bytes)
                        && id.namespace() == self.namespace
                    {
                        found.push(id.key());
                    }
                }
            }
            Ok(found)
        })
    }
}

fn find_token(pkcs11: &Pkcs11, label: &str) -> Result<Slot, OpenError> {
    let slots = pkcs11.get_slots_with_token().map_err(OpenError::Slots)?;
    let mut labels = Vec::new();
    for slot in slots {
        let info = pkcs11.get_token_info(slot).map_err(OpenError::Slots)?;
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

#[cfg(test)]
mod tests;
