//! The wrapped key storage on the HSM (see [`crate::domain`]): the session that holds the
//! unwrapped versions, the domain found or made with it, sealing new and imported material
//! under the domain key, and unwrapping a stored version on first use.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use kms_core::hsm::{DomainKeyInfo, VersionObject, WrappingKeyRef};
use kms_core::key::{KeyMaterial, WrappedMaterial, WrappingAlgorithm};
use kms_core::{HsmError, KeyStore as _, KeyVersionRef};
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::domain::{self, Domain, DomainCustody};
use crate::object_id::{self, ObjectKind};
use crate::templates::{self, PrivateUse};
use crate::unwrapped::Unwrapped;
use crate::{HsmKeyStore, error, public_key_der};

impl HsmKeyStore {
    /// Runs `f` with the unwrapped versions and the session that holds them, opened (logged in,
    /// outside the pool) on first use and replaced once if it was lost.
    fn with_holder<T>(
        &self,
        operation: &'static str,
        f: impl Fn(&mut Unwrapped, &Session) -> Result<T, CkError>,
    ) -> Result<T, HsmError> {
        let connection = self
            .connection
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(pool) = connection.as_ref() else {
            return Err(error::not_connected());
        };
        let mut unwrapped = self.lock_unwrapped();
        let mut retried = false;
        loop {
            if unwrapped.generation != self.generation() {
                unwrapped.reset();
                unwrapped.generation = self.generation();
            }
            let session = match unwrapped.holder.take() {
                Some(session) => session,
                None => pool
                    .open_dedicated()
                    .map_err(|e| error::classify(operation, e))?,
            };
            let started = Instant::now();
            let result = f(&mut unwrapped, &session);
            if let Some(observer) = &self.observer {
                observer(operation, started.elapsed(), result.is_ok());
            }
            match result {
                Err(e) if error::is_session_lost(&e) && !retried => {
                    warn!(operation, error = %e, "the HSM session of unwrapped keys was lost; reopening");
                    let _ = session.close();
                    unwrapped.reset();
                    retried = true;
                }
                other => {
                    unwrapped.holder = Some(session);
                    return other.map_err(|e| error::classify(operation, e));
                }
            }
        }
    }

    /// The domain `version`, found with the holding session (and kept); refused (logged) when
    /// the token's objects are not as kmsd makes them.
    fn domain(
        &self,
        unwrapped: &mut Unwrapped,
        session: &Session,
        version: u32,
    ) -> Result<Result<Option<Domain>, HsmError>, CkError> {
        if let Some(domain) = unwrapped.domains.get(&version) {
            return Ok(Ok(Some(*domain)));
        }
        let found =
            match domain::find_domain(session, self.namespace, version, self.wrap_mechanism)? {
                Ok(found) => found,
                Err(why) => return Ok(Err(distrusted(version, why))),
            };
        if let Some(domain) = found {
            unwrapped.domains.insert(version, domain);
        }
        Ok(Ok(found))
    }

    /// The current domain; refused as [`Self::usable_domain`].
    fn current_domain(
        &self,
        unwrapped: &mut Unwrapped,
        session: &Session,
    ) -> Result<Result<Domain, HsmError>, CkError> {
        let version = self.current_domain.load(Ordering::SeqCst);
        self.usable_domain(unwrapped, session, version)
    }

    /// The domain `version`, its authenticator key made on first use, and its wrap key too
    /// with sealed custody (a trusted one comes from the ceremony: its absence is an error
    /// that says so); refused as [`Self::domain`].
    fn usable_domain(
        &self,
        unwrapped: &mut Unwrapped,
        session: &Session,
        version: u32,
    ) -> Result<Result<Domain, HsmError>, CkError> {
        if let Some(domain) = unwrapped.domains.get(&version) {
            return Ok(Ok(*domain));
        }
        let make_sealed = (self.custody == DomainCustody::Sealed).then_some(self.wrap_mechanism);
        let domain = match domain::find_or_create_domain(
            session,
            self.namespace,
            version,
            make_sealed,
            self.wrap_mechanism,
        )? {
            Ok(Some(domain)) => domain,
            Ok(None) => return Ok(Err(missing_domain(self.namespace, version))),
            Err(why) => return Ok(Err(distrusted(version, why))),
        };
        if self.custody == DomainCustody::Trusted && domain.custody == DomainCustody::Sealed {
            // Anyone with the PIN can make a sealed key; only the officer a trusted one.
            return Ok(Err(distrusted(
                version,
                "is not trusted, where the configured custody is trusted",
            )));
        }
        unwrapped.domains.insert(version, domain);
        Ok(Ok(domain))
    }

    /// [`KeyStore::use_domain`](kms_core::KeyStore::use_domain).
    pub(crate) fn use_domain(&self, version: u32) -> Result<DomainKeyInfo, HsmError> {
        // Under `creating`: it may make the domain's keys, and its probe makes objects.
        let domain = self.creating(|| {
            self.with_holder("find domain key", |unwrapped, s| {
                self.usable_domain(unwrapped, s, version)
            })
        })??;
        self.current_domain.store(version, Ordering::SeqCst);
        Ok(domain_info(version, domain.custody))
    }

    /// [`KeyStore::domain_key`](kms_core::KeyStore::domain_key).
    pub(crate) fn domain_key(&self, version: u32) -> Result<Option<DomainKeyInfo>, HsmError> {
        self.creating(|| {
            self.with_holder("find domain key", |unwrapped, s| {
                if let Some(domain) = unwrapped.domains.get(&version) {
                    return Ok(Ok(Some(domain_info(version, domain.custody))));
                }
                Ok(
                    match domain::find_wrap_key(s, self.namespace, version, self.wrap_mechanism)? {
                        Ok(custody) => Ok(custody.map(|c| domain_info(version, c))),
                        Err(why) => Err(distrusted(version, why)),
                    },
                )
            })
        })?
    }

    /// [`KeyStore::destroy_domain`](kms_core::KeyStore::destroy_domain).
    pub(crate) fn destroy_domain(&self, version: u32) -> Result<bool, HsmError> {
        if version == self.current_domain.load(Ordering::SeqCst) {
            return Err(HsmError::Failed {
                operation: "destroy domain key",
                source: format!("domain key {version} is the current one").into(),
            });
        }
        self.destroying(|| {
            self.with_holder("destroy domain key", |unwrapped, s| {
                unwrapped.domains.remove(&version);
                domain::destroy_domain(s, self.namespace, version).map(|n| n > 0)
            })
        })
    }

    /// [`KeyStore::rewrap_version`](kms_core::KeyStore::rewrap_version): wraps the unwrapped
    /// copy of `key`'s material again under the current domain key, which only a trusted
    /// domain's copies allow, and keeps the copy of the new bytes.
    pub(crate) fn rewrap(
        &self,
        key: VersionObject<'_>,
        material: KeyMaterial,
    ) -> Result<WrappedMaterial, HsmError> {
        let Some(wrapped) = key.wrapped else {
            return Err(HsmError::Unsupported {
                operation: "rewrap key version",
                detail: format!("{} is a token object, not wrapped material", key.key),
            });
        };
        let kind = ObjectKind::of(material);
        self.creating(|| {
            self.with_holder("rewrap key", |unwrapped, s| {
                let to = match self.current_domain(unwrapped, s)? {
                    Ok(domain) => domain,
                    Err(refused) => return Ok(Err(refused)),
                };
                if to.version == wrapped.domain_key {
                    return Ok(Ok(wrapped.clone()));
                }
                // A copy made only for the rewrap does not stay: the key may be disabled or
                // being deleted, whose copies are destroyed, and it would push hot keys out.
                let was_unwrapped = unwrapped.handles.get(key.key, kind).is_some();
                let (handle, from_custody) =
                    match self.unwrap_stored(unwrapped, s, key.key, kind, wrapped)? {
                        Ok(found) => found,
                        Err(refused) => return Ok(Err(refused)),
                    };
                let sealed =
                    from_custody != DomainCustody::Trusted || to.custody != DomainCustody::Trusted;
                let bytes = if sealed {
                    None
                } else {
                    Some(s.wrap_key(&domain::wrap_mechanism(to.mechanism), to.wrap, *handle))
                };
                drop(handle);
                if !was_unwrapped {
                    unwrapped.handles.forget(Some(s), key.key);
                }
                let Some(bytes) = bytes else {
                    return Ok(Err(HsmError::Unsupported {
                        operation: "rewrap key version",
                        detail: format!(
                            "domain key {} or {} is sealed: what a sealed domain key unwraps \
                             can never be wrapped again",
                            wrapped.domain_key, to.version
                        ),
                    }));
                };
                let bytes = bytes?;
                // The new bytes must unwrap before they replace the record's.
                let allowed = templates::allowed_mechanisms(kind, false);
                let check = domain::unwrap_version(s, to, &bytes, kind, allowed)?;
                let _ = s.destroy_object(check);
                let mut new = WrappedMaterial {
                    domain_key: to.version,
                    wrapped: bytes,
                    tag: Vec::new(),
                    public_key_sha256: wrapped.public_key_sha256,
                };
                let message = domain::tag_message(self.namespace, key.key, kind, to.version, &new);
                new.tag = s.sign(&Mechanism::Sha256Hmac, to.authenticate, &message)?;
                Ok(Ok(new))
            })
        })?
    }

    /// Wraps the extractable session object `fresh` (new or imported material of `key`, of
    /// `kind`) under the current `domain`, destroys it, keeps an unwrapped copy (which proves
    /// the bytes unwrap, and has the unwrap template's custody), and returns the wrapped
    /// material with its authenticator.
    fn seal(
        &self,
        unwrapped: &mut Unwrapped,
        session: &Session,
        domain: Domain,
        key: KeyVersionRef,
        fresh: Fresh<'_>,
    ) -> Result<WrappedMaterial, CkError> {
        let Fresh {
            handle: fresh,
            kind,
            allowed,
            public_key_sha256,
        } = fresh;
        let wrapped = session.wrap_key(
            &domain::wrap_mechanism(domain.mechanism),
            domain.wrap,
            fresh,
        );
        // Nothing else refers to it; its session would drop it anyway.
        let _ = session.destroy_object(fresh);
        let wrapped = wrapped?;
        let handle = domain::unwrap_version(session, domain, &wrapped, kind, allowed.to_vec())?;
        unwrapped.handles.insert(Some(session), key, kind, handle);
        let mut material = WrappedMaterial {
            domain_key: domain.version,
            wrapped,
            tag: Vec::new(),
            public_key_sha256,
        };
        let message = domain::tag_message(self.namespace, key, kind, domain.version, &material);
        material.tag = session.sign(&Mechanism::Sha256Hmac, domain.authenticate, &message)?;
        Ok(material)
    }

    /// Refuses to import `material` unless it is a secret, and destroys what an earlier import
    /// of `key` left (material that expired but is not destroyed yet has the same CKA_ID and
    /// unwrapped copies); returns the material's kind.
    pub(crate) fn clear_for_import(
        &self,
        key: KeyVersionRef,
        material: KeyMaterial,
    ) -> Result<ObjectKind, HsmError> {
        if material.secret_len().is_none() {
            return Err(HsmError::Unsupported {
                operation: "unwrapping imported key material",
                detail: "only secret keys are imported".to_owned(),
            });
        }
        self.destroy_key_version(key)?;
        Ok(ObjectKind::of(material))
    }

    /// The unwrapped object of `key`'s `wrapped` material of `kind`: from the cache, or checked
    /// against its authenticator and unwrapped into the holding session.
    fn unwrapped_object(
        &self,
        key: KeyVersionRef,
        kind: ObjectKind,
        wrapped: &WrappedMaterial,
    ) -> Result<Arc<ObjectHandle>, HsmError> {
        {
            let unwrapped = self.lock_unwrapped();
            if unwrapped.generation == self.generation()
                && let Some(handle) = unwrapped.handles.get(key, kind)
            {
                return Ok(handle);
            }
        }
        // Under `creating`: it makes an object, and may probe a domain key (making more).
        self.creating(|| {
            self.with_holder("unwrap key", |unwrapped, s| {
                Ok(self
                    .unwrap_stored(unwrapped, s, key, kind, wrapped)?
                    .map(|(handle, _)| handle))
            })
        })?
    }

    /// The unwrapped object of `key`'s `wrapped` material of `kind` in the holding session
    /// `s`, with the custody of the domain it was wrapped under: from the cache, or checked
    /// against its authenticator and unwrapped.
    fn unwrap_stored(
        &self,
        unwrapped: &mut Unwrapped,
        s: &Session,
        key: KeyVersionRef,
        kind: ObjectKind,
        wrapped: &WrappedMaterial,
    ) -> Result<Result<(Arc<ObjectHandle>, DomainCustody), HsmError>, CkError> {
        let refused = |why: &str| HsmError::Failed {
            operation: "unwrap key version",
            source: format!("the wrapped material of {key} {why}").into(),
        };
        let domain = match self.domain(unwrapped, s, wrapped.domain_key)? {
            Ok(Some(domain)) => domain,
            Ok(None) => return Ok(Err(refused("names a domain key the HSM does not hold"))),
            Err(distrust) => return Ok(Err(distrust)),
        };
        if let Some(handle) = unwrapped.handles.get(key, kind) {
            return Ok(Ok((handle, domain.custody)));
        }
        if !self.authenticates(s, domain, key, kind, wrapped)? {
            return Ok(Err(refused("does not authenticate")));
        }
        let allowed = templates::allowed_mechanisms(kind, false);
        match domain::unwrap_version(s, domain, &wrapped.wrapped, kind, allowed) {
            Ok(handle) => Ok(Ok((
                unwrapped.handles.insert(Some(s), key, kind, handle),
                domain.custody,
            ))),
            Err(e) if error::is_bad_input(&e) => Ok(Err(refused("does not unwrap"))),
            Err(e) => Err(e),
        }
    }

    /// Whether `wrapped`'s tag is the HSM's HMAC, under `domain`'s authenticator key, of what
    /// it binds `key`'s material of `kind` to.
    fn authenticates(
        &self,
        s: &Session,
        domain: Domain,
        key: KeyVersionRef,
        kind: ObjectKind,
        wrapped: &WrappedMaterial,
    ) -> Result<bool, CkError> {
        let message = domain::tag_message(self.namespace, key, kind, wrapped.domain_key, wrapped);
        match s.verify(
            &Mechanism::Sha256Hmac,
            domain.authenticate,
            &message,
            &wrapped.tag,
        ) {
            Ok(()) => Ok(true),
            Err(CkError::Pkcs11(RvError::SignatureInvalid | RvError::SignatureLenRange, _)) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Runs `f` with the object of `key`'s material of `kind`: its token object, or its
    /// unwrapped session object, unwrapped again once if it went meanwhile.
    pub(crate) fn with_version<T>(
        &self,
        operation: &'static str,
        key: VersionObject<'_>,
        kind: ObjectKind,
        f: impl Fn(&Session, ObjectHandle) -> Result<T, CkError>,
    ) -> Result<T, HsmError> {
        let Some(wrapped) = key.wrapped else {
            return self.with_key(operation, key.key, kind, f);
        };
        for _ in 0..2 {
            let handle = self.unwrapped_object(key.key, kind, wrapped)?;
            let result = self.with_session(operation, true, |s| match f(s, *handle) {
                Err(CkError::Pkcs11(
                    RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid,
                    _,
                )) => Ok(None),
                other => other.map(Some),
            })?;
            if let Some(value) = result {
                return Ok(value);
            }
            drop(handle);
            self.lock_unwrapped().forget(key.key);
        }
        Err(HsmError::ObjectNotFound(key.key))
    }

    /// [`KeyStore::create_wrapped_version`](kms_core::KeyStore::create_wrapped_version).
    pub(crate) fn create_wrapped(
        &self,
        key: KeyVersionRef,
        material: KeyMaterial,
    ) -> Result<(WrappedMaterial, Option<Vec<u8>>), HsmError> {
        let kind = ObjectKind::of(material);
        let allowed = templates::allowed_mechanisms(kind, false);
        // Made as an extractable session object for the one C_WrapKey, then destroyed: the
        // object kept for use is unwrapped from the stored bytes, like any later one, so it
        // has the unwrap template's custody and the bytes are known to unwrap.
        self.creating(|| {
            self.with_holder("generate key", |unwrapped, s| {
                let domain = match self.current_domain(unwrapped, s)? {
                    Ok(domain) => domain,
                    Err(distrust) => return Ok(Err(distrust)),
                };
                let (fresh, public_key) = if let Some(len) = material.secret_len() {
                    let template =
                        domain::fresh_secret_template(len, allowed.clone(), domain.custody);
                    (
                        s.generate_key(&Mechanism::GenericSecretKeyGen, &template)?,
                        None,
                    )
                } else {
                    let (fresh, attributes) =
                        fresh_pair(s, material, kind, &allowed, domain.custody)?;
                    match public_key_der(kind == ObjectKind::EcP256Sign, attributes) {
                        Ok(der) => (fresh, Some(der)),
                        Err(error) => {
                            let _ = s.destroy_object(fresh);
                            return Ok(Err(error));
                        }
                    }
                };
                // A key pair's public key is bound to its material by the tag.
                let fresh = Fresh {
                    handle: fresh,
                    kind,
                    allowed: &allowed,
                    public_key_sha256: public_key.as_deref().map(|der| Sha256::digest(der).into()),
                };
                let wrapped = self.seal(unwrapped, s, domain, key, fresh)?;
                Ok(Ok((wrapped, public_key)))
            })
        })?
    }

    /// The tag of `key`'s wrapped material, checked in the HSM without unwrapping (for the
    /// tests of the public key's binding).
    #[cfg(test)]
    pub(crate) fn check_wrapped(
        &self,
        key: VersionObject<'_>,
        material: KeyMaterial,
    ) -> Result<(), HsmError> {
        let Some(wrapped) = key.wrapped else {
            return Ok(());
        };
        let kind = ObjectKind::of(material);
        let refused = |why: &str| HsmError::Failed {
            operation: "check key version",
            source: format!("the wrapped material of {} {why}", key.key).into(),
        };
        self.creating(|| {
            self.with_holder("check key version", |unwrapped, s| {
                let domain = match self.domain(unwrapped, s, wrapped.domain_key)? {
                    Ok(Some(domain)) => domain,
                    Ok(None) => {
                        return Ok(Err(refused("names a domain key the HSM does not hold")));
                    }
                    Err(distrust) => return Ok(Err(distrust)),
                };
                Ok(if self.authenticates(s, domain, key.key, kind, wrapped)? {
                    Ok(())
                } else {
                    Err(refused("does not authenticate"))
                })
            })
        })?
    }

    /// [`KeyStore::import_wrapped_version`](kms_core::KeyStore::import_wrapped_version).
    pub(crate) fn import_wrapped(
        &self,
        key: KeyVersionRef,
        material: KeyMaterial,
        wrapping: WrappingKeyRef,
        algorithm: WrappingAlgorithm,
        wrapped: &[u8],
    ) -> Result<(WrappedMaterial, Option<usize>), HsmError> {
        let kind = self.clear_for_import(key, material)?;
        let allowed = templates::allowed_mechanisms(kind, true);
        let wrapping_id = object_id::wrapping_id(self.namespace, wrapping);
        let oaep = templates::oaep(algorithm.hash());
        self.creating(|| {
            self.with_holder("unwrap key", |unwrapped, s| {
                let domain = match self.current_domain(unwrapped, s)? {
                    Ok(domain) => domain,
                    Err(refused) => return Ok(Err(refused)),
                };
                // Extractable for the one C_WrapKey under the domain key, then destroyed.
                let template = domain::fresh_import_template(allowed.clone(), domain.custody);
                let (fresh, length) =
                    match unwrap_import(s, &wrapping_id, &oaep, wrapped, &template)? {
                        Ok(unwrapped) => unwrapped,
                        Err(refused) => return Ok(Err(refused)),
                    };
                let fresh = Fresh {
                    handle: fresh,
                    kind,
                    allowed: &allowed,
                    public_key_sha256: None,
                };
                let wrapped = self.seal(unwrapped, s, domain, key, fresh)?;
                Ok(Ok((wrapped, length)))
            })
        })?
    }
}

/// Unwraps a caller's `wrapped` material with the import's wrapping key (CKA_ID
/// `wrapping_id`) into an object of `template`, and returns it with the material's length
/// when the module reports it (SoftHSM2 leaves CKA_VALUE_LEN at 0 on unwrapped keys). Data
/// that does not unwrap is [`HsmError::Rejected`]; a wrapping key gone from the HSM fails.
pub(crate) fn unwrap_import(
    session: &Session,
    wrapping_id: &[u8],
    oaep: &Mechanism<'_>,
    wrapped: &[u8],
    template: &[Attribute],
) -> Result<Result<(ObjectHandle, Option<usize>), HsmError>, CkError> {
    let Some(unwrapping) = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(wrapping_id.to_vec()),
        ])?
        .into_iter()
        .next()
    else {
        return Ok(Err(HsmError::Failed {
            operation: "unwrap key",
            source: "the wrapping key is gone from the HSM".into(),
        }));
    };
    let handle = match session.unwrap_key(oaep, unwrapping, wrapped, template) {
        Ok(handle) => handle,
        // SoftHSM2 reports a bad OAEP padding as CKR_GENERAL_ERROR.
        Err(e) if error::is_bad_input(&e) || error::is_general_error(&e) => {
            return Ok(Err(HsmError::Rejected {
                operation: "unwrap key",
            }));
        }
        Err(e) => return Err(e),
    };
    let length = session
        .get_attributes(handle, &[AttributeType::ValueLen])?
        .into_iter()
        .find_map(|a| match a {
            Attribute::ValueLen(len) => usize::try_from(u64::from(len)).ok(),
            _ => None,
        })
        .filter(|len| *len > 0);
    Ok(Ok((handle, length)))
}

/// Material just made or imported as an extractable session object, before it is sealed.
#[derive(Clone, Copy)]
struct Fresh<'a> {
    /// The object.
    handle: ObjectHandle,
    /// Its kind.
    kind: ObjectKind,
    /// The mechanisms its unwrapped copy may be used with.
    allowed: &'a [MechanismType],
    /// For a key pair, the SHA-256 of its public key, bound by the tag.
    public_key_sha256: Option<[u8; 32]>,
}

/// Generates a key pair of `material` whose private half is an extractable session object (to
/// be wrapped at once, then destroyed); returns it and the public key's attributes. The public
/// half is read and destroyed.
fn fresh_pair(
    session: &Session,
    material: KeyMaterial,
    kind: ObjectKind,
    allowed: &[MechanismType],
    custody: DomainCustody,
) -> Result<(ObjectHandle, Vec<Attribute>), CkError> {
    let (mechanism, public, key_type, wanted) = match material {
        KeyMaterial::EcP256Sign => (
            Mechanism::EccKeyPairGen,
            templates::ec_public_template(Vec::new(), String::new(), false),
            KeyType::EC,
            vec![AttributeType::EcPoint],
        ),
        KeyMaterial::RsaDecrypt { bits } | KeyMaterial::RsaSign { bits } => (
            Mechanism::RsaPkcsKeyPairGen,
            templates::rsa_public_template(Vec::new(), String::new(), bits),
            KeyType::RSA,
            vec![AttributeType::Modulus, AttributeType::PublicExponent],
        ),
        KeyMaterial::MasterSecret | KeyMaterial::HmacSecret(_) => {
            return Err(CkError::Pkcs11(
                RvError::KeyTypeInconsistent,
                cryptoki::context::Function::GenerateKeyPair,
            ));
        }
    };
    let use_ = if kind == ObjectKind::RsaDecrypt {
        PrivateUse::Decrypt
    } else {
        PrivateUse::Sign
    };
    let mut private =
        templates::private_template(key_type, Vec::new(), String::new(), use_, allowed.to_vec());
    let fresh = domain::fresh_custody(custody);
    private.retain(|a| {
        !fresh
            .iter()
            .any(|f| f.attribute_type() == a.attribute_type())
    });
    private.extend(fresh);
    let (public_handle, private_handle) =
        session.generate_key_pair(&mechanism, &public, &private)?;
    let attributes = session.get_attributes(public_handle, &wanted);
    let _ = session.destroy_object(public_handle);
    match attributes {
        Ok(attributes) => Ok((private_handle, attributes)),
        Err(error) => {
            // The extractable private half must not outlive the failure in the held session.
            let _ = session.destroy_object(private_handle);
            Err(error)
        }
    }
}

/// What kmsd tells of domain key `version` of `custody`.
fn domain_info(version: u32, custody: DomainCustody) -> DomainKeyInfo {
    DomainKeyInfo {
        version,
        rewrappable: custody == DomainCustody::Trusted,
    }
}

/// The refusal of a domain whose wrap key is missing, with what makes it.
fn missing_domain(namespace: [u8; 16], version: u32) -> HsmError {
    let instance = hex::encode(namespace);
    HsmError::Failed {
        operation: "find domain key",
        source: format!(
            "domain key {version} is not on the token; with trusted domain keys the token's \
             security officer makes it: kmsctl hsm make-domain-key --instance {instance} \
             --version {version} (see the README's key hierarchy)"
        )
        .into(),
    }
}

/// The refusal of a domain key found on the token, logged: see [`domain::Distrust`].
fn distrusted(version: u32, why: domain::Distrust) -> HsmError {
    warn!(
        domain = version,
        why,
        "refusing the token's domain key: it is not as kmsd made it (planted by a PIN holder?)"
    );
    HsmError::Failed {
        operation: "find domain key",
        source: format!("domain key {version} {why}").into(),
    }
}
