//! The PKCS#11 backend of the kms-core [`KeyStore`] trait, on cryptoki.
//!
//! One shared [`Pkcs11`](cryptoki::context::Pkcs11) context initialised with OS locking, a
//! bounded pool of logged-in read-write sessions, and the custody template of DESIGN §3 for
//! every key version. All calls block: the service runs them on blocking threads. A call
//! that finds its session or token gone drops the session, opens and logs in a new one, and
//! retries once when the call is idempotent.
//!
//! Key versions kept wrapped outside the token (the default storage) use the domain keys of
//! `domain` and the holding session and sealing of `wrapped`.
//!
//! Depends on kms-core and cryptoki only; nothing here knows about gRPC or the metadata store.
#![forbid(unsafe_code)]

mod audit_key;
mod capabilities;
mod ceremony;
mod connect;
mod domain;
mod error;
mod object_id;
mod pool;
mod templates;
mod unwrapped;
mod wrapped;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
/// The mechanism type of a wrap mechanism (see [`parse_wrap_mechanism`]).
pub use cryptoki::mechanism::MechanismType;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use kms_core::asymmetric::{self, HashAlg};
use kms_core::hsm::{DomainKeyInfo, SignMechanism, VersionObject, WrappingKeyRef};
use kms_core::key::{KeyMaterial, WrappedMaterial, WrappingAlgorithm};
use kms_core::{HsmError, KeyId, KeyStore, KeyVersionRef, MessageKey};
use tracing::{debug, warn};
use zeroize::Zeroizing;

pub use audit_key::HsmAuditSigner;
use capabilities::Capabilities;
pub use capabilities::UnservedKeySpec;
pub use ceremony::{DomainKeyRequest, make_domain_key};
use connect::connect;
pub use domain::{
    DEFAULT_WRAP, DomainCustody, DomainKeyMaker, mechanism_name, parse_wrap_mechanism,
};
pub use error::OpenError;
pub use object_id::{ObjectId, ObjectKind};
use pool::SessionPool;
use templates::PrivateUse;
use unwrapped::Unwrapped;
use wrapped::unwrap_import;

/// Where the HSM is and how to log in.
pub struct HsmConfig {
    /// Path of the PKCS#11 module (a shared library).
    pub module: PathBuf,
    /// Label of the token holding the keys.
    pub token_label: String,
    /// The slot of that token, for a module whose token information cryptoki cannot read:
    /// see [`OpenError::TokenNotFound`].
    pub slot: Option<u64>,
    /// The user PIN.
    pub pin: Zeroizing<String>,
    /// The most sessions open at once (1 or more).
    pub max_sessions: usize,
    /// How long a call waits for a free session before failing with a timeout.
    pub session_wait: Duration,
}

/// Told of every call made to the HSM: the operation's name, how long the call took (not
/// counting the wait for a session), and whether it succeeded.
pub type CallObserver = Arc<dyn Fn(&'static str, Duration, bool) + Send + Sync>;

/// The session pool's use, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionStats {
    /// Sessions open.
    pub open: usize,
    /// Sessions lent to a call now.
    pub in_use: usize,
    /// The most sessions the pool opens.
    pub max: usize,
    /// Whether kmsd is connected to the module at all.
    pub connected: bool,
}

/// What closing the HSM connection did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    /// Sessions closed.
    pub sessions: usize,
    /// Whether C_Finalize succeeded (false when already disconnected or when it failed).
    pub finalized: bool,
}

/// The HSM-backed [`KeyStore`].
pub struct HsmKeyStore {
    config: HsmConfig,
    /// The connection: the module, initialised, and its session pool. `None` after
    /// [`HsmKeyStore::close`] or a failed [`HsmKeyStore::reconnect`]. Every call holds the read
    /// lock while it runs, so a reconnection waits for calls in flight and no session of the
    /// old connection outlives C_Finalize.
    connection: RwLock<Option<SessionPool>>,
    namespace: [u8; 16],
    handles: Mutex<HashMap<(KeyVersionRef, ObjectKind), ObjectHandle>>,
    /// Changes whenever cached object handles may have gone stale (a lost session, a new
    /// connection): a handle cached under another generation must be searched again.
    generation: AtomicU64,
    observer: Option<CallObserver>,
    /// Held (shared) while objects are made and (alone) while token objects are destroyed:
    /// SoftHSM2 2.6 fails a creation (CKR_TEMPLATE_INCONSISTENT, CKR_GENERAL_ERROR) that runs
    /// while another session destroys a token object, as the fault-injection test found.
    object_store: RwLock<()>,
    /// Key versions kept wrapped, unwrapped on first use: see [`domain`].
    unwrapped: Mutex<Unwrapped>,
    /// How new domain keys come: made by kmsd (sealed) or by the ceremony (trusted).
    custody: DomainCustody,
    /// The mechanism new sealed domain keys wrap with.
    wrap_mechanism: MechanismType,
    /// The domain key new material is wrapped under.
    current_domain: AtomicU32,
    /// What the module can do, read at open.
    capabilities: Capabilities,
}

impl HsmKeyStore {
    /// How many unwrapped key versions are kept by default.
    pub const DEFAULT_UNWRAPPED: usize = 10_000;

    /// Loads the module, finds the token and logs in. `namespace` is the store's instance id:
    /// only HSM objects carrying it are ever listed or destroyed.
    pub fn open(config: HsmConfig, namespace: [u8; 16]) -> Result<Self, OpenError> {
        let pool = connect(&config, false)?;
        let capabilities = {
            let session = pool.get().map_err(|e| match e {
                pool::GetError::Open(e) => OpenError::Login(e),
                pool::GetError::Timeout => OpenError::Timeout,
            })?;
            let mechanisms = pool.mechanisms().map_err(OpenError::Capabilities)?;
            Capabilities::probe(&session, mechanisms).map_err(OpenError::Capabilities)?
        };
        Ok(HsmKeyStore {
            config,
            connection: RwLock::new(Some(pool)),
            namespace,
            handles: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            observer: None,
            object_store: RwLock::new(()),
            unwrapped: Mutex::new(Unwrapped::new(Self::DEFAULT_UNWRAPPED)),
            custody: DomainCustody::Sealed,
            wrap_mechanism: domain::DEFAULT_WRAP,
            current_domain: AtomicU32::new(domain::FIRST_DOMAIN),
            capabilities,
        })
    }

    /// Keeps at most `capacity` unwrapped key versions (the least recently made go first;
    /// one goes only once no call uses it).
    #[must_use]
    pub fn with_unwrapped_capacity(self, capacity: usize) -> Self {
        *self.lock_unwrapped() = Unwrapped::new(capacity);
        self
    }

    /// The unwrapped versions, locked (a panic while they were held leaves them usable).
    pub(crate) fn lock_unwrapped(&self) -> std::sync::MutexGuard<'_, Unwrapped> {
        self.unwrapped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets how new domain keys come (sealed, made by kmsd, by default): see [`domain`].
    #[must_use]
    pub fn with_domain_custody(mut self, custody: DomainCustody) -> Self {
        self.custody = custody;
        self
    }

    /// Sets the mechanism new sealed domain keys wrap with (CKM_AES_KEY_WRAP_PAD by default;
    /// a vendor's where the HSM's differs). A domain key found on the token wraps with the
    /// mechanism it was made for, read from its CKA_ALLOWED_MECHANISMS.
    #[must_use]
    pub fn with_wrap_mechanism(mut self, mechanism: MechanismType) -> Self {
        self.wrap_mechanism = mechanism;
        self
    }

    /// The mechanisms the wrapped key storage needs that the token's module does not offer
    /// (none on SoftHSM2 2.6): kmsd refuses to start with `--key-storage wrapped` on a module
    /// that lacks any, rather than fail every key creation.
    pub fn missing_for_wrapped_storage(&self) -> Result<Vec<String>, HsmError> {
        let connection = self
            .connection
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(pool) = connection.as_ref() else {
            return Err(error::not_connected());
        };
        let offered = pool
            .mechanisms()
            .map_err(|e| error::classify("list mechanisms", e))?;
        Ok(domain::missing_for_wrapped_storage(
            &offered,
            self.wrap_mechanism,
        ))
    }

    /// The key specs the module cannot serve (none on SoftHSM2 2.6; ECC_NIST_P256 on
    /// opencryptoki's soft token, which has no EC mechanism): kmsd refuses to create them.
    pub fn unserved_key_specs(&self) -> Vec<UnservedKeySpec> {
        self.capabilities.unserved_key_specs()
    }

    /// The names of the attributes of kmsd's templates the module does not know, which kmsd
    /// leaves out (none on SoftHSM2 2.6): see `capabilities`.
    pub fn unknown_attributes(&self) -> Vec<String> {
        self.capabilities.unknown_attributes()
    }

    /// `template` without the attributes the module does not know.
    pub(crate) fn fit(&self, template: Vec<Attribute>) -> Vec<Attribute> {
        self.capabilities.fit(template)
    }

    /// How many key versions are unwrapped now.
    pub fn unwrapped_versions(&self) -> usize {
        self.lock_unwrapped().handles.len()
    }

    /// Tells `observer` of every HSM call from now on.
    #[must_use]
    pub fn with_observer(mut self, observer: CallObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The label of the token in use.
    pub fn token_label(&self) -> &str {
        &self.config.token_label
    }

    /// The session pool's use now.
    pub fn session_stats(&self) -> SessionStats {
        match self.connection.try_read() {
            Ok(connection) => connection
                .as_ref()
                .map_or(SessionStats::default(), SessionPool::stats),
            // A reconnection is under way: nothing is usable until it ends.
            Err(_) => SessionStats::default(),
        }
    }

    /// Drops the connection (closing every session and finalising the module) and makes a new
    /// one: the way back after the HSM was lost, since some modules (SoftHSM2 among them)
    /// never see a token again in the process that lost it. Waits for the calls in flight.
    /// On failure kmsd stays disconnected: calls fail with KeyUnavailableException until a
    /// later reconnection works.
    pub fn reconnect(&self) -> Result<(), OpenError> {
        let mut connection = self
            .connection
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = connection.take() {
            let closed = old.close();
            debug!(
                sessions = closed.sessions,
                finalized = closed.finalized,
                "closed the old HSM connection"
            );
        }
        self.forget_all();
        *connection = Some(connect(&self.config, true)?);
        Ok(())
    }

    /// Closes every session, logs out and finalises the module (C_Finalize): kmsd's last
    /// HSM act at shutdown. Later calls fail with KeyUnavailableException.
    pub fn close(&self) -> Closed {
        let mut connection = self
            .connection
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.forget_all();
        connection.take().map_or(
            Closed {
                sessions: 0,
                finalized: false,
            },
            SessionPool::close,
        )
    }

    /// Runs one call on a session, timing it for the observer. Operations are named for
    /// metrics: `hmac` (SYMMETRIC_DEFAULT derivations), `sign`, `RSA decrypt`, `random`,
    /// `generate key`, and so on; a retry after a lost session counts again.
    fn observed<T>(
        &self,
        operation: &'static str,
        session: &Session,
        f: &impl Fn(&Session) -> Result<T, CkError>,
    ) -> Result<T, CkError> {
        let started = Instant::now();
        let result = f(session);
        if let Some(observer) = &self.observer {
            observer(operation, started.elapsed(), result.is_ok());
        }
        result
    }

    /// Runs `f` while objects may be made, but no token object destroyed.
    pub(crate) fn creating<T>(&self, f: impl FnOnce() -> T) -> T {
        let _shared = self
            .object_store
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        f()
    }

    /// Runs `f` while no object is being made.
    pub(crate) fn destroying<T>(&self, f: impl FnOnce() -> T) -> T {
        let _alone = self
            .object_store
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        f()
    }

    /// Forgets every cached object handle, and closes the session of the unwrapped versions.
    fn forget_all(&self) {
        self.handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.lock_unwrapped().reset();
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The generation of cached handles: see the field.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn object_id(&self, key: KeyVersionRef, kind: ObjectKind) -> ObjectId {
        ObjectId::new(self.namespace, key, kind)
    }

    /// Runs `f` on a pooled session; when the session or token is gone, drops the session and,
    /// if `idempotent`, runs `f` once more on a fresh one.
    fn with_session<T>(
        &self,
        operation: &'static str,
        idempotent: bool,
        f: impl Fn(&Session) -> Result<T, CkError>,
    ) -> Result<T, HsmError> {
        let connection = self
            .connection
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(pool) = connection.as_ref() else {
            return Err(error::not_connected());
        };
        let session = pool.get().map_err(error::from_get)?;
        match self.observed(operation, &session, &f) {
            Ok(value) => Ok(value),
            Err(e) if error::is_session_lost(&e) => {
                warn!(operation, error = %e, "HSM session lost; reopening");
                session.discard();
                pool.close_idle();
                self.forget_all();
                if !idempotent {
                    return Err(error::classify(operation, e));
                }
                let session = pool.get().map_err(error::from_get)?;
                self.observed(operation, &session, &f).map_err(|e| {
                    if error::is_session_lost(&e) {
                        session.discard();
                    }
                    error::classify(operation, e)
                })
            }
            Err(e) => Err(error::classify(operation, e)),
        }
    }

    /// The key version's object of `kind`: found by its CKA_ID and class, which name the
    /// kind, or else by the legacy CKA_ID of objects made before kinds were named.
    fn find(
        &self,
        session: &Session,
        key: KeyVersionRef,
        kind: ObjectKind,
    ) -> Result<Option<ObjectHandle>, CkError> {
        let class = if kind.is_private_key() {
            ObjectClass::PRIVATE_KEY
        } else {
            ObjectClass::SECRET_KEY
        };
        for id in [
            self.object_id(key, kind),
            ObjectId::legacy(self.namespace, key),
        ] {
            let template = [Attribute::Class(class), Attribute::Id(id.to_bytes())];
            if let Some(handle) = session.find_objects(&template)?.into_iter().next() {
                return Ok(Some(handle));
            }
        }
        Ok(None)
    }

    /// The handle of the key version's object of `kind`, from the cache or a search.
    fn handle(
        &self,
        session: &Session,
        key: KeyVersionRef,
        kind: ObjectKind,
    ) -> Result<Option<ObjectHandle>, CkError> {
        let cached = self
            .handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(key, kind))
            .copied();
        if cached.is_some() {
            return Ok(cached);
        }
        let found = self.find(session, key, kind)?;
        if let Some(handle) = found {
            self.remember(key, kind, handle);
        }
        Ok(found)
    }

    fn remember(&self, key: KeyVersionRef, kind: ObjectKind, handle: ObjectHandle) {
        self.handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((key, kind), handle);
    }

    /// Forgets the cached handles of every object of the key version.
    fn forget(&self, key: KeyVersionRef) {
        self.handles
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(cached, _), _| *cached != key);
    }

    /// Runs `f` with the handle of the key version's object of `kind`; a stale cached handle
    /// is searched again once. [`HsmError::ObjectNotFound`] when there is no such object.
    fn with_key<T>(
        &self,
        operation: &'static str,
        key: KeyVersionRef,
        kind: ObjectKind,
        f: impl Fn(&Session, ObjectHandle) -> Result<T, CkError>,
    ) -> Result<T, HsmError> {
        let result = self.with_session(operation, true, |s| {
            let Some(handle) = self.handle(s, key, kind)? else {
                return Ok(None);
            };
            match f(s, handle) {
                Err(CkError::Pkcs11(
                    RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid,
                    _,
                )) => {
                    self.forget(key);
                    match self.find(s, key, kind)? {
                        Some(handle) => f(s, handle).map(Some),
                        None => Ok(None),
                    }
                }
                other => other.map(Some),
            }
        })?;
        result.ok_or(HsmError::ObjectNotFound(key))
    }

    /// Generates a key pair (P-256 when `ec`, else RSA) whose private half is on the token and
    /// whose public half is a session object; reads the public key, destroys the public
    /// object, and returns the private half's handle and the public key as a DER
    /// SubjectPublicKeyInfo.
    fn generate_pair(
        &self,
        label: &str,
        ec: bool,
        public: &[Attribute],
        private: &[Attribute],
    ) -> Result<(ObjectHandle, Vec<u8>), HsmError> {
        let (mechanism, wanted) = if ec {
            (Mechanism::EccKeyPairGen, vec![AttributeType::EcPoint])
        } else {
            (
                Mechanism::RsaPkcsKeyPairGen,
                vec![AttributeType::Modulus, AttributeType::PublicExponent],
            )
        };
        // Not idempotent: a retry after a lost session could make a second pair. A failure
        // leaves at most an orphan, which startup reconciliation destroys.
        let (handle, attributes) = self.creating(|| {
            self.with_session("generate key pair", false, |s| {
                let (public_handle, private_handle) =
                    s.generate_key_pair(&mechanism, public, private)?;
                let attributes = s.get_attributes(public_handle, &wanted);
                s.destroy_object(public_handle)?;
                Ok((private_handle, attributes?))
            })
        })?;
        debug!(label, "generated HSM key pair");
        Ok((handle, public_key_der(ec, attributes)?))
    }
}

/// The custody template of DESIGN §3 for a key version's master secret: a 256-bit generic
/// secret, on the token, private, sensitive, never extractable, not modifiable or copyable,
/// usable only to compute HMAC-SHA-256 (CKA_SIGN, CKA_ALLOWED_MECHANISMS). Every attribute
/// is set explicitly, since SoftHSM2's defaults are unsafe.
pub fn master_secret_template(id: &ObjectId, label: String) -> Vec<Attribute> {
    templates::secret_template(
        id.to_bytes(),
        label,
        Some(32),
        templates::allowed_mechanisms(ObjectKind::MasterSecret, false),
    )
}

fn public_key_der(ec: bool, attributes: Vec<Attribute>) -> Result<Vec<u8>, HsmError> {
    let mut modulus = None;
    let mut exponent = None;
    let mut point = None;
    for attribute in attributes {
        match attribute {
            Attribute::Modulus(m) => modulus = Some(m),
            Attribute::PublicExponent(e) => exponent = Some(e),
            Attribute::EcPoint(p) => point = Some(p),
            _ => {}
        }
    }
    let der = match (ec, modulus, exponent, point) {
        (true, _, _, Some(point)) => asymmetric::p256_spki_der(&point),
        (_, Some(modulus), Some(exponent), _) => asymmetric::rsa_spki_der(&modulus, &exponent),
        _ => {
            return Err(HsmError::Failed {
                operation: "read public key",
                source: "the HSM returned no public key".into(),
            });
        }
    };
    der.map_err(|e| HsmError::Failed {
        operation: "read public key",
        source: Box::new(e),
    })
}

impl KeyStore for HsmKeyStore {
    fn create_key_version(
        &self,
        key: KeyVersionRef,
        material: KeyMaterial,
    ) -> Result<Option<Vec<u8>>, HsmError> {
        let kind = ObjectKind::of(material);
        let id = self.object_id(key, kind);
        let (bytes, label) = (id.to_bytes(), id.label());
        let allowed = templates::allowed_mechanisms(kind, false);
        let (handle, public_key) = match material {
            KeyMaterial::MasterSecret | KeyMaterial::HmacSecret(_) => {
                let template = self.fit(templates::secret_template(
                    bytes,
                    label,
                    material.secret_len(),
                    allowed,
                ));
                // Not idempotent: see generate_pair.
                let handle = self.creating(|| {
                    self.with_session("generate key", false, |s| {
                        s.generate_key(&Mechanism::GenericSecretKeyGen, &template)
                    })
                })?;
                (handle, None)
            }
            KeyMaterial::RsaDecrypt { bits } | KeyMaterial::RsaSign { bits } => {
                let use_ = if matches!(material, KeyMaterial::RsaSign { .. }) {
                    PrivateUse::Sign
                } else {
                    PrivateUse::Decrypt
                };
                let public = templates::rsa_public_template(bytes.clone(), label.clone(), bits);
                let private = self.fit(templates::private_template(
                    KeyType::RSA,
                    bytes,
                    label.clone(),
                    use_,
                    allowed,
                ));
                let (handle, public_key) = self.generate_pair(&label, false, &public, &private)?;
                (handle, Some(public_key))
            }
            KeyMaterial::EcP256Sign => {
                let public = templates::ec_public_template(bytes.clone(), label.clone(), false);
                let private = self.fit(templates::private_template(
                    KeyType::EC,
                    bytes,
                    label.clone(),
                    PrivateUse::Sign,
                    allowed,
                ));
                let (handle, public_key) = self.generate_pair(&label, true, &public, &private)?;
                (handle, Some(public_key))
            }
        };
        self.remember(key, kind, handle);
        debug!(key_id = %key.key_id, version = key.version, "generated HSM key");
        Ok(public_key)
    }

    fn derive_message_key(
        &self,
        key: VersionObject<'_>,
        input: &[u8],
    ) -> Result<MessageKey, HsmError> {
        let mac = Zeroizing::new(self.with_version(
            "hmac",
            key,
            ObjectKind::MasterSecret,
            |s, h| s.sign(&Mechanism::Sha256Hmac, h, input),
        )?);
        let bytes: [u8; 32] = mac.as_slice().try_into().map_err(|_| HsmError::Failed {
            operation: "hmac",
            source: format!("the HSM returned {} bytes, not 32", mac.len()).into(),
        })?;
        Ok(MessageKey::new(Zeroizing::new(bytes)))
    }

    fn sign(
        &self,
        key: VersionObject<'_>,
        material: KeyMaterial,
        mechanism: SignMechanism,
        data: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        let mechanism = templates::sign_mechanism(mechanism);
        self.with_version("sign", key, ObjectKind::of(material), |s, h| {
            s.sign(&mechanism, h, data)
        })
    }

    fn forget_unwrapped(&self, key: KeyId) {
        self.lock_unwrapped().forget_key(key);
    }

    fn create_wrapped_version(
        &self,
        key: KeyVersionRef,
        material: KeyMaterial,
    ) -> Result<(WrappedMaterial, Option<Vec<u8>>), HsmError> {
        self.create_wrapped(key, material)
    }

    fn use_domain(&self, version: u32) -> Result<DomainKeyInfo, HsmError> {
        HsmKeyStore::use_domain(self, version)
    }

    fn domain_key(&self, version: u32) -> Result<Option<DomainKeyInfo>, HsmError> {
        HsmKeyStore::domain_key(self, version)
    }

    fn rewrap_version(
        &self,
        key: VersionObject<'_>,
        material: KeyMaterial,
    ) -> Result<WrappedMaterial, HsmError> {
        self.rewrap(key, material)
    }

    fn destroy_domain(&self, version: u32) -> Result<bool, HsmError> {
        HsmKeyStore::destroy_domain(self, version)
    }

    fn rsa_decrypt(
        &self,
        key: VersionObject<'_>,
        hash: HashAlg,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let oaep = templates::oaep(hash);
        let decrypted = self.with_version("RSA decrypt", key, ObjectKind::RsaDecrypt, |s, h| {
            match s.decrypt(&oaep, h, ciphertext) {
                Ok(plaintext) => Ok(Ok(Zeroizing::new(plaintext))),
                // The module lacks OAEP with this hash (SoftHSM2 2.6 has SHA-1 only): the HSM
                // still does the private-key operation (raw RSA), and the OAEP decoding runs
                // here, in constant time.
                Err(e) if error::is_unsupported_parameter(&e) => {
                    match s.decrypt(&Mechanism::RsaX509, h, ciphertext) {
                        Ok(encoded) => {
                            let encoded = Zeroizing::new(encoded);
                            Ok(asymmetric::oaep_decode(hash, &encoded))
                        }
                        Err(e) if error::is_bad_input(&e) || error::is_general_error(&e) => {
                            Ok(Err(kms_core::KmsError::InvalidCiphertext))
                        }
                        Err(e) => Err(e),
                    }
                }
                // SoftHSM2 reports a bad OAEP padding as CKR_GENERAL_ERROR.
                Err(e) if error::is_bad_input(&e) || error::is_general_error(&e) => {
                    Ok(Err(kms_core::KmsError::InvalidCiphertext))
                }
                Err(e) => Err(e),
            }
        })?;
        decrypted.map_err(|_| HsmError::Rejected {
            operation: "RSA decrypt",
        })
    }

    fn create_wrapping_key(
        &self,
        key: WrappingKeyRef,
        bits: u32,
        algorithm: WrappingAlgorithm,
    ) -> Result<Vec<u8>, HsmError> {
        let id = object_id::wrapping_id(self.namespace, key);
        let label = object_id::wrapping_label(key);
        let oaep = templates::oaep(algorithm.hash());
        let (private, public_key) = self.generate_pair(
            &label,
            false,
            &templates::rsa_public_template(id.clone(), label.clone(), bits),
            &self.fit(templates::private_template(
                KeyType::RSA,
                id.clone(),
                label.clone(),
                PrivateUse::Unwrap,
                vec![MechanismType::RSA_PKCS_OAEP],
            )),
        )?;
        // Can the module unwrap with this algorithm? An all-zero block is never a valid
        // ciphertext, so a module that supports the parameters refuses the data instead.
        let probe_template = self.fit(templates::secret_template(
            id,
            label,
            None,
            templates::allowed_mechanisms(ObjectKind::MasterSecret, true),
        ));
        let zero = vec![0u8; bits as usize / 8];
        // It makes and destroys a token object: alone, like any destruction; and not retried
        // after a lost session, which could leave a second probe object behind.
        let supported = self.destroying(|| {
            self.with_session("probe unwrapping", false, |s| {
                match s.unwrap_key(&oaep, private, &zero, &probe_template) {
                    Ok(object) => s.destroy_object(object).map(|()| true),
                    Err(e) => Ok(!error::is_unsupported_parameter(&e)),
                }
            })
        });
        if !matches!(supported, Ok(true)) {
            self.destroy_wrapping_key(key)?;
        }
        if !supported? {
            return Err(HsmError::Unsupported {
                operation: "unwrapping imported key material",
                detail: format!(
                    "the module refuses {} (SoftHSM2 2.6 unwraps with RSAES_OAEP_SHA_1 only)",
                    algorithm.as_str()
                ),
            });
        }
        Ok(public_key)
    }

    fn unwrap_key_version(
        &self,
        key: KeyVersionRef,
        material: KeyMaterial,
        wrapping: WrappingKeyRef,
        algorithm: WrappingAlgorithm,
        wrapped: &[u8],
    ) -> Result<Option<usize>, HsmError> {
        let kind = self.clear_for_import(key, material)?;
        let id = self.object_id(key, kind);
        let template = self.fit(templates::secret_template(
            id.to_bytes(),
            id.label(),
            None,
            templates::allowed_mechanisms(kind, true),
        ));
        let wrapping_id = object_id::wrapping_id(self.namespace, wrapping);
        let oaep = templates::oaep(algorithm.hash());
        let (handle, length) = self.creating(|| {
            self.with_session("unwrap key", false, |s| {
                unwrap_import(s, &wrapping_id, &oaep, wrapped, &template)
            })
        })??;
        self.remember(key, kind, handle);
        Ok(length)
    }

    fn import_wrapped_version(
        &self,
        key: KeyVersionRef,
        material: KeyMaterial,
        wrapping: WrappingKeyRef,
        algorithm: WrappingAlgorithm,
        wrapped: &[u8],
    ) -> Result<(WrappedMaterial, Option<usize>), HsmError> {
        self.import_wrapped(key, material, wrapping, algorithm, wrapped)
    }

    fn destroy_wrapping_key(&self, key: WrappingKeyRef) -> Result<(), HsmError> {
        let id = object_id::wrapping_id(self.namespace, key);
        self.destroying(|| {
            self.with_session("destroy wrapping key", true, |s| {
                for handle in s.find_objects(&[Attribute::Id(id.clone())])? {
                    s.destroy_object(handle)?;
                }
                Ok(())
            })
        })
    }

    fn list_wrapping_keys(&self) -> Result<Vec<WrappingKeyRef>, HsmError> {
        self.with_session("list wrapping keys", true, |s| {
            let mut found = Vec::new();
            for handle in s.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])? {
                for attribute in s.get_attributes(handle, &[AttributeType::Id])? {
                    if let Attribute::Id(bytes) = attribute
                        && let Some((namespace, key)) = object_id::parse_wrapping_id(&bytes)
                        && namespace == self.namespace
                    {
                        found.push(key);
                    }
                }
            }
            Ok(found)
        })
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
        self.lock_unwrapped().forget(key);
        let ids: Vec<Vec<u8>> = ObjectKind::ALL
            .into_iter()
            .map(|kind| self.object_id(key, kind))
            .chain([ObjectId::legacy(self.namespace, key)])
            .map(|id| id.to_bytes())
            .collect();
        self.destroying(|| {
            self.with_session("destroy key", true, |s| {
                for id in &ids {
                    for handle in s.find_objects(&[Attribute::Id(id.clone())])? {
                        s.destroy_object(handle)?;
                    }
                }
                Ok(())
            })
        })
    }

    fn list_key_versions(&self) -> Result<Vec<KeyVersionRef>, HsmError> {
        self.with_session("list keys", true, |s| {
            let mut found = Vec::new();
            for class in [ObjectClass::SECRET_KEY, ObjectClass::PRIVATE_KEY] {
                for handle in s.find_objects(&[Attribute::Class(class)])? {
                    for attribute in s.get_attributes(handle, &[AttributeType::Id])? {
                        if let Attribute::Id(bytes) = attribute
                            && let Some(id) = ObjectId::parse(&bytes)
                            && id.namespace() == self.namespace
                        {
                            found.push(id.key());
                        }
                    }
                }
            }
            Ok(found)
        })
    }
}

#[cfg(test)]
mod tests;
