//! Domain keys, the first step of the key hierarchy (issue 16): AES-256 keys on the token that
//! wrap key versions kept outside it, so that the token holds a few objects whatever the number
//! of keys.
//!
//! A domain key is a private, sensitive, never-extractable token object that only wraps and
//! unwraps (CKM_AES_KEY_WRAP_PAD). It carries a CKA_UNWRAP_TEMPLATE: a key
//! unwrapped with it is a session object, sensitive and never extractable, whatever the caller
//! of C_UnwrapKey asks. On a module that enforces the template (SoftHSM2 2.6 does: see the
//! tests), a PIN holder who calls C_UnwrapKey on a stored wrapped version cannot get an object
//! whose value can be read or wrapped out again.
//!
//! A version's material is generated as a session object, wrapped at once, and used from that
//! object; afterwards it is unwrapped from the stored bytes into a session object. Generating
//! needs the fresh object to be extractable for the one C_WrapKey: it lives in this process's
//! session only, never on the token.
//!
//! [`Unwrapped`] keeps the unwrapped versions: session objects of one dedicated session that
//! stays open (session objects die with the session that made them, and serve every session
//! of the process meanwhile), bounded in number; the oldest is destroyed when a new one comes.
//! The wrapped bytes are bound to their key, version and kind by an HMAC-SHA-256 the HSM
//! computes with the domain's authenticator key, checked before every unwrap.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use cryptoki::error::Error as CkError;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use kms_core::{KeyId, KeyVersionRef};

use crate::object_id::ObjectKind;
use crate::templates;

/// What the wrapped key storage needs of the module, by name.
pub(crate) const WRAPPED_STORAGE_NEEDS: [(MechanismType, &str); 3] = [
    (MechanismType::AES_KEY_GEN, "CKM_AES_KEY_GEN"),
    (MechanismType::AES_KEY_WRAP_PAD, "CKM_AES_KEY_WRAP_PAD"),
    (MechanismType::SHA256_HMAC, "CKM_SHA256_HMAC"),
];

/// The names of the mechanisms of [`WRAPPED_STORAGE_NEEDS`] that `offered` lacks.
pub(crate) fn missing_for_wrapped_storage(offered: &[MechanismType]) -> Vec<&'static str> {
    WRAPPED_STORAGE_NEEDS
        .iter()
        .filter(|(mechanism, _)| !offered.contains(mechanism))
        .map(|(_, name)| *name)
        .collect()
}

/// The first bytes of a domain object's CKA_ID.
const DOMAIN_MAGIC: &[u8; 4] = b"kmsd";
/// The domain key in use for new versions.
pub(crate) const CURRENT_DOMAIN: u32 = 1;

/// What a domain object is for, the last byte of its CKA_ID.
#[derive(Clone, Copy)]
pub(crate) enum DomainRole {
    /// The AES key that wraps and unwraps.
    Wrap = 1,
    /// The HMAC key of the authenticators.
    Authenticate = 2,
}

/// CKA_ID of a domain object: `"kmsd"` || instance id (16) || domain version (u32 big-endian)
/// || role (1).
pub(crate) fn domain_id(namespace: [u8; 16], version: u32, role: DomainRole) -> Vec<u8> {
    let mut id = DOMAIN_MAGIC.to_vec();
    id.extend_from_slice(&namespace);
    id.extend_from_slice(&version.to_be_bytes());
    id.push(role as u8);
    id
}

/// The message the authenticator of wrapped material covers.
pub(crate) fn tag_message(
    namespace: [u8; 16],
    key: KeyVersionRef,
    kind: ObjectKind,
    domain: u32,
    wrapped: &[u8],
) -> Vec<u8> {
    let mut message = b"kms wrapped key version v1\0".to_vec();
    message.extend_from_slice(&namespace);
    message.extend_from_slice(key.key_id.as_bytes());
    message.extend_from_slice(&key.version.to_be_bytes());
    message.push(kind.byte());
    message.extend_from_slice(&domain.to_be_bytes());
    message.extend_from_slice(wrapped);
    message
}

/// CKA_UNWRAP_TEMPLATE (CKF_ARRAY_ATTRIBUTE | 0x212). cryptoki 0.12 has no variant for it.
const CKA_UNWRAP_TEMPLATE: u64 = 0x4000_0212;
/// CKA_TOKEN, CKA_SENSITIVE, CKA_EXTRACTABLE.
const CKA_TOKEN: u64 = 0x01;
const CKA_SENSITIVE: u64 = 0x103;
const CKA_EXTRACTABLE: u64 = 0x162;

// The array attribute below is laid out for LP64 (CK_ULONG and pointers of 8 bytes), as on
// every 64-bit Linux and macOS the service builds for.
const _: () = assert!(size_of::<usize>() == 8);

/// Boolean attributes as the value of an array attribute such as CKA_UNWRAP_TEMPLATE: the
/// bytes of a C array of `CK_ATTRIBUTE { type, pValue, ulValueLen }`, each `pValue` the address
/// of a `CK_BBOOL` this value owns. cryptoki offers no array attributes and the crate forbids
/// `unsafe`, so the array is written out here; the module reads through the addresses while
/// the object is made, and copies what it keeps.
pub(crate) struct BoolTemplate {
    /// The CK_BBOOLs the array points at (heap memory: moving the struct does not move them).
    values: Box<[u8]>,
    /// The array's bytes.
    array: Vec<u8>,
}

impl BoolTemplate {
    /// The template `attributes` (type, value).
    pub(crate) fn new(attributes: &[(u64, bool)]) -> Self {
        let values: Box<[u8]> = attributes.iter().map(|&(_, v)| u8::from(v)).collect();
        let mut array = Vec::with_capacity(attributes.len() * 24);
        for (i, (kind, _)) in attributes.iter().enumerate() {
            let address = std::ptr::from_ref(&values[i]) as usize;
            array.extend_from_slice(&kind.to_ne_bytes());
            array.extend_from_slice(&(address as u64).to_ne_bytes());
            array.extend_from_slice(&1u64.to_ne_bytes());
        }
        BoolTemplate { values, array }
    }

    /// The attribute `kind` with this template as its value. Keep `self` alive until the call
    /// that takes the attribute returns.
    fn attribute(&self, kind: u64) -> Attribute {
        debug_assert!(!self.values.is_empty());
        Attribute::VendorDefined((AttributeType::VendorDefined(kind), self.array.clone()))
    }
}

/// What every key unwrapped with a domain key is, whatever C_UnwrapKey's caller asks: a
/// session object, sensitive, never extractable.
pub(crate) fn unwrap_template() -> BoolTemplate {
    BoolTemplate::new(&[
        (CKA_TOKEN, false),
        (CKA_SENSITIVE, true),
        (CKA_EXTRACTABLE, false),
    ])
}

/// The template of a domain key: AES-256 on the token, private, sensitive, never extractable,
/// only wrapping and unwrapping with AES key wrap with padding, with [`unwrap_template`] as its
/// CKA_UNWRAP_TEMPLATE.
pub(crate) fn domain_key_template(
    id: Vec<u8>,
    label: String,
    unwrapped: &BoolTemplate,
) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32u64.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Copyable(false),
        Attribute::Modifiable(false),
        Attribute::Destroyable(true),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
        Attribute::AllowedMechanisms(vec![MechanismType::AES_KEY_WRAP_PAD]),
        Attribute::Id(id),
        Attribute::Label(label.into_bytes()),
        unwrapped.attribute(CKA_UNWRAP_TEMPLATE),
    ]
}

/// Makes a domain key on the token.
pub(crate) fn create_domain_key(
    session: &Session,
    id: Vec<u8>,
    label: String,
) -> Result<ObjectHandle, CkError> {
    let unwrapped = unwrap_template();
    let template = domain_key_template(id, label, &unwrapped);
    session.generate_key(&Mechanism::AesKeyGen, &template)
}

/// The authenticator key of a domain: an HMAC-SHA-256 generic secret on the token, private,
/// sensitive, never extractable, that only signs and verifies.
fn authenticator_template(id: Vec<u8>, label: String) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::ValueLen(32u64.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Copyable(false),
        Attribute::Modifiable(false),
        Attribute::Destroyable(true),
        Attribute::Sign(true),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::AllowedMechanisms(vec![MechanismType::SHA256_HMAC]),
        Attribute::Id(id),
        Attribute::Label(label.into_bytes()),
    ]
}

/// A domain's two token objects, as handles of the holding session.
#[derive(Clone, Copy)]
pub(crate) struct Domain {
    /// The AES key that wraps and unwraps.
    pub(crate) wrap: ObjectHandle,
    /// The HMAC key of the authenticators.
    pub(crate) authenticate: ObjectHandle,
}

/// Why kmsd refuses a domain object it found on the token: a PIN holder may have planted it
/// under the CKA_ID kmsd looks for, so that new versions get wrapped under a key they know or
/// whose unwrapped copies they can read.
pub(crate) type Distrust = &'static str;

/// The domain `version` of the instance `namespace`, if the token holds it; refused when one
/// of its objects is not as kmsd makes them (see [`find_trusted`]).
pub(crate) fn find_domain(
    session: &Session,
    namespace: [u8; 16],
    version: u32,
) -> Result<Result<Option<Domain>, Distrust>, CkError> {
    let wrap = match find_trusted(session, domain_id(namespace, version, DomainRole::Wrap))? {
        Ok(found) => found,
        Err(why) => return Ok(Err(why)),
    };
    let authenticate = match find_trusted(
        session,
        domain_id(namespace, version, DomainRole::Authenticate),
    )? {
        Ok(found) => found,
        Err(why) => return Ok(Err(why)),
    };
    Ok(Ok(wrap
        .zip(authenticate)
        .map(|(wrap, authenticate)| Domain { wrap, authenticate })))
}

/// The domain `version` of the instance `namespace`, made on the token where it lacks any of
/// its two keys; refused as [`find_domain`] refuses.
pub(crate) fn find_or_create_domain(
    session: &Session,
    namespace: [u8; 16],
    version: u32,
) -> Result<Result<Domain, Distrust>, CkError> {
    let label = |what| format!("kms/domain/{version}/{what}");
    let wrap_id = domain_id(namespace, version, DomainRole::Wrap);
    let wrap = match find_trusted(session, wrap_id.clone())? {
        Ok(Some(handle)) => handle,
        Ok(None) => create_domain_key(session, wrap_id, label("wrap"))?,
        Err(why) => return Ok(Err(why)),
    };
    let authenticate_id = domain_id(namespace, version, DomainRole::Authenticate);
    let authenticate = match find_trusted(session, authenticate_id.clone())? {
        Ok(Some(handle)) => handle,
        Ok(None) => session.generate_key(
            &Mechanism::GenericSecretKeyGen,
            &authenticator_template(authenticate_id, label("authenticate")),
        )?,
        Err(why) => return Ok(Err(why)),
    };
    Ok(Ok(Domain { wrap, authenticate }))
}

/// The domain object whose CKA_ID is `id`, if the token holds one, checked as kmsd makes it:
/// the only object with that id; generated on the token (CKA_LOCAL), always sensitive and never
/// extractable, so that no one knows its value; not modifiable; and, for a wrap key, holding its
/// unwrap template (an unwrapped copy asked to be readable is refused).
fn find_trusted(
    session: &Session,
    id: Vec<u8>,
) -> Result<Result<Option<ObjectHandle>, Distrust>, CkError> {
    let wrap = id.last() == Some(&(DomainRole::Wrap as u8));
    let template = [Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Id(id)];
    let found = session.find_objects(&template)?;
    let handle = match found.as_slice() {
        [] => return Ok(Ok(None)),
        [handle] => *handle,
        _ => return Ok(Err("is on the token more than once")),
    };
    let attributes = session.get_attributes(
        handle,
        &[
            AttributeType::Local,
            AttributeType::AlwaysSensitive,
            AttributeType::NeverExtractable,
            AttributeType::Extractable,
            AttributeType::Modifiable,
            AttributeType::Token,
            AttributeType::Private,
        ],
    )?;
    let custody = [
        Attribute::Local(true),
        Attribute::AlwaysSensitive(true),
        Attribute::NeverExtractable(true),
        Attribute::Extractable(false),
        Attribute::Modifiable(false),
        Attribute::Token(true),
        Attribute::Private(true),
    ];
    if !custody.iter().all(|a| attributes.contains(a)) {
        return Ok(Err(
            "was not generated on the token as a never-extractable, unmodifiable key",
        ));
    }
    if wrap && !holds_unwrap_template(session, handle)? {
        return Ok(Err("lets a key it unwraps be read"));
    }
    Ok(Ok(Some(handle)))
}

/// Whether the wrap key `domain` holds its unwrap template: a secret wrapped under it does not
/// unwrap into an extractable, non-sensitive copy. The probe secret and any copy are destroyed.
fn holds_unwrap_template(session: &Session, domain: ObjectHandle) -> Result<bool, CkError> {
    let probe = session.generate_key(
        &Mechanism::GenericSecretKeyGen,
        &fresh_secret_template(32, vec![MechanismType::SHA256_HMAC]),
    )?;
    let wrapped = session.wrap_key(&wrap_mechanism(), domain, probe);
    // A session object nothing else refers to; its session would drop it anyway.
    let _ = session.destroy_object(probe);
    let readable = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
        Attribute::Sign(true),
    ];
    // PKCS#11 says an unwrap template conflict is CKR_TEMPLATE_INCONSISTENT; any other
    // refusal proves nothing about the template.
    match session.unwrap_key(&wrap_mechanism(), domain, &wrapped?, &readable) {
        Ok(copy) => {
            let _ = session.destroy_object(copy);
            Ok(false)
        }
        Err(CkError::Pkcs11(cryptoki::error::RvError::TemplateInconsistent, _)) => Ok(true),
        Err(error) => Err(error),
    }
}

/// The unwrapped key versions: session objects of `holder`, the oldest destroyed past the
/// capacity. Made afresh (the old objects gone with their session) when the connection's
/// generation changes.
pub(crate) struct Unwrapped {
    /// The session the objects live in; `None` until first needed.
    pub(crate) holder: Option<Session>,
    /// The connection generation `holder` belongs to.
    pub(crate) generation: u64,
    /// The domains found, by version, as handles of `holder`.
    pub(crate) domains: HashMap<u32, Domain>,
    /// The unwrapped objects.
    pub(crate) handles: Handles,
}

/// Unwrapped objects by key version and kind, oldest first. A caller holds an object's
/// [`Arc`] while it uses the handle; an object evicted or forgotten meanwhile waits in the
/// graveyard until no one holds it, so a handle is never destroyed (and its number perhaps
/// reused by the module for another key) under a call that is using it.
pub(crate) struct Handles {
    objects: HashMap<(KeyVersionRef, ObjectKind), Arc<ObjectHandle>>,
    order: VecDeque<(KeyVersionRef, ObjectKind)>,
    graveyard: Vec<Arc<ObjectHandle>>,
    capacity: usize,
}

impl Unwrapped {
    /// An empty cache of at most `capacity` objects (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        Unwrapped {
            holder: None,
            generation: 0,
            domains: HashMap::new(),
            handles: Handles {
                objects: HashMap::new(),
                order: VecDeque::new(),
                graveyard: Vec::new(),
                capacity: capacity.max(1),
            },
        }
    }

    /// Closes the holding session (its objects go with it) and forgets everything.
    pub(crate) fn reset(&mut self) {
        if let Some(holder) = self.holder.take() {
            // A dead session fails to close; its objects are gone either way.
            let _ = holder.close();
        }
        self.domains.clear();
        self.handles.objects.clear();
        self.handles.order.clear();
        self.handles.graveyard.clear();
    }
}

impl Handles {
    /// The object of `key`'s material of `kind`, if it is unwrapped: hold it while using it.
    pub(crate) fn get(&self, key: KeyVersionRef, kind: ObjectKind) -> Option<Arc<ObjectHandle>> {
        self.objects.get(&(key, kind)).cloned()
    }

    /// Keeps `handle`; the oldest objects past the capacity go to the graveyard.
    pub(crate) fn insert(
        &mut self,
        holder: Option<&Session>,
        key: KeyVersionRef,
        kind: ObjectKind,
        handle: ObjectHandle,
    ) -> Arc<ObjectHandle> {
        let handle = Arc::new(handle);
        if let Some(old) = self.objects.insert((key, kind), Arc::clone(&handle)) {
            self.graveyard.push(old);
        } else {
            self.order.push_back((key, kind));
        }
        while self.objects.len() > self.capacity {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(old) = self.objects.remove(&oldest) {
                self.graveyard.push(old);
            }
        }
        self.bury(holder);
        handle
    }

    /// Forgets the unwrapped objects of `key`: they are destroyed once no call uses them (a
    /// deleted key's material must not stay usable).
    pub(crate) fn forget(&mut self, holder: Option<&Session>, key: KeyVersionRef) {
        self.order.retain(|(k, _)| *k != key);
        let gone: Vec<_> = self
            .objects
            .keys()
            .filter(|(k, _)| *k == key)
            .copied()
            .collect();
        for entry in gone {
            if let Some(old) = self.objects.remove(&entry) {
                self.graveyard.push(old);
            }
        }
        self.bury(holder);
    }

    /// Destroys, in `holder`, the forgotten objects no call holds any more.
    fn bury(&mut self, holder: Option<&Session>) {
        let Some(holder) = holder else {
            return;
        };
        self.graveyard.retain(|handle| {
            if Arc::strong_count(handle) > 1 {
                return true;
            }
            // A failure leaves a session object that goes with its session.
            let _ = holder.destroy_object(**handle);
            false
        });
    }

    /// Forgets the unwrapped objects of every version of `key_id`, as [`Handles::forget`].
    pub(crate) fn forget_key(&mut self, holder: Option<&Session>, key_id: KeyId) {
        let versions: Vec<KeyVersionRef> = self
            .objects
            .keys()
            .filter(|(k, _)| k.key_id == key_id)
            .map(|(k, _)| *k)
            .collect();
        for version in versions {
            self.forget(holder, version);
        }
    }

    /// How many versions are unwrapped.
    pub(crate) fn len(&self) -> usize {
        self.objects.len()
    }
}

/// A fresh `len`-byte generic secret, a session object extractable for the one C_WrapKey that
/// follows its generation, that only computes HMACs with `allowed`.
pub(crate) fn fresh_secret_template(len: usize, allowed: Vec<MechanismType>) -> Vec<Attribute> {
    templates::session_secret_template(Some(len), allowed, true)
}

/// Imported material as C_UnwrapKey makes it from the caller's wrapped bytes: a generic
/// secret, a session object extractable for the one C_WrapKey under the domain key that
/// follows, that only computes HMACs with `allowed`.
pub(crate) fn fresh_import_template(allowed: Vec<MechanismType>) -> Vec<Attribute> {
    templates::session_secret_template(None, allowed, true)
}

/// Generates a `len`-byte secret inside the HSM as a session object and wraps it at once under
/// `domain` (CKM_AES_KEY_WRAP_PAD): returns the object and the wrapped bytes. For the module probes
/// in the tests; kmsd keeps an unwrapped copy instead of the extractable original.
#[cfg(test)]
pub(crate) fn generate_wrapped_secret(
    session: &Session,
    domain: ObjectHandle,
    len: usize,
    allowed: Vec<MechanismType>,
) -> Result<(ObjectHandle, Vec<u8>), CkError> {
    let template = templates::session_secret_template(Some(len), allowed, true);
    let secret = session.generate_key(&Mechanism::GenericSecretKeyGen, &template)?;
    match session.wrap_key(&wrap_mechanism(), domain, secret) {
        Ok(wrapped) => Ok((secret, wrapped)),
        Err(error) => {
            // Nothing refers to it; the session would drop it anyway.
            let _ = session.destroy_object(secret);
            Err(error)
        }
    }
}

/// Unwraps `wrapped` under `domain` into a session object that only computes HMACs with
/// `allowed`, sensitive and never extractable.
pub(crate) fn unwrap_secret(
    session: &Session,
    domain: ObjectHandle,
    wrapped: &[u8],
    allowed: Vec<MechanismType>,
) -> Result<ObjectHandle, CkError> {
    let template = templates::session_secret_template(None, allowed, false);
    session.unwrap_key(&wrap_mechanism(), domain, wrapped, &template)
}

/// The wrapping mechanism of every kind: AES key wrap with padding (RFC 5649), since private
/// keys' PKCS#8 encodings and imported HMAC keys need not be multiples of 8 bytes.
pub(crate) fn wrap_mechanism() -> Mechanism<'static> {
    Mechanism::AesKeyWrapPad
}

/// The private key template of a wrapped key pair's unwrapped half: a session object,
/// sensitive, never extractable, that only signs or only decrypts, as `kind` says.
fn unwrapped_private_template(kind: ObjectKind, allowed: Vec<MechanismType>) -> Vec<Attribute> {
    let key_type = if kind == ObjectKind::EcP256Sign {
        KeyType::EC
    } else {
        KeyType::RSA
    };
    vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(key_type),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(kind != ObjectKind::RsaDecrypt),
        Attribute::SignRecover(false),
        Attribute::Decrypt(kind == ObjectKind::RsaDecrypt),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::AllowedMechanisms(allowed),
    ]
}

/// Unwraps a version's `wrapped` material of `kind` under `domain` into a session object,
/// sensitive and never extractable, with only the use and `allowed` mechanisms of its kind.
pub(crate) fn unwrap_version(
    session: &Session,
    domain: ObjectHandle,
    wrapped: &[u8],
    kind: ObjectKind,
    allowed: Vec<MechanismType>,
) -> Result<ObjectHandle, CkError> {
    if kind.is_private_key() {
        let template = unwrapped_private_template(kind, allowed);
        session.unwrap_key(&wrap_mechanism(), domain, wrapped, &template)
    } else {
        unwrap_secret(session, domain, wrapped, allowed)
    }
}
