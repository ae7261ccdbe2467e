//! Domain keys, the first step of the key hierarchy (issue 16): AES-256 keys on the token that
//! wrap key versions kept outside it, so that the token holds a few objects whatever the number
//! of keys.
//!
//! A domain key is a sensitive, never-extractable token object that only wraps and unwraps
//! (CKM_AES_KEY_WRAP_PAD). It carries a CKA_UNWRAP_TEMPLATE, so that what a PIN holder
//! unwraps with it on a module that enforces the template (SoftHSM2 2.6 does: see the tests)
//! can never be read. It is kept one of two ways ([`DomainCustody`]):
//! - **sealed**: made by kmsd, private; a key unwrapped with it is a session object, sensitive
//!   and never extractable. Nothing can wrap it again, so a sealed domain is never rotated.
//! - **trusted**: made by the token's security officer in a ceremony (`kmsctl hsm
//!   make-domain-key`), CKA_TRUSTED; a key unwrapped with it is a private session object,
//!   sensitive, extractable only under a trusted key (CKA_WRAP_WITH_TRUSTED, which no one can
//!   clear, and which only the security officer can grant). A newer trusted domain key can
//!   therefore rewrap it, and a PIN holder cannot wrap it under a key they know.
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

use cryptoki::error::Error as CkError;
use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use kms_core::KeyVersionRef;
use kms_core::key::WrappedMaterial;

use crate::object_id::ObjectKind;
use crate::templates;

/// The names of the mechanisms the wrapped key storage needs, with `wrap` the mechanism new
/// domain keys wrap with, that `offered` lacks.
pub(crate) fn missing_for_wrapped_storage(
    offered: &[MechanismType],
    wrap: MechanismType,
) -> Vec<String> {
    [
        (MechanismType::AES_KEY_GEN, "CKM_AES_KEY_GEN".to_owned()),
        (wrap, mechanism_name(wrap)),
        (MechanismType::SHA256_HMAC, "CKM_SHA256_HMAC".to_owned()),
    ]
    .into_iter()
    .filter(|(mechanism, _)| !offered.contains(mechanism))
    .map(|(_, name)| name)
    .collect()
}

/// A wrap mechanism's name: CKM_AES_KEY_WRAP_PAD, or a vendor's number.
pub fn mechanism_name(mechanism: MechanismType) -> String {
    if mechanism == MechanismType::AES_KEY_WRAP_PAD {
        "CKM_AES_KEY_WRAP_PAD".to_owned()
    } else {
        format!("vendor mechanism {:#x}", u64::from(mechanism))
    }
}

/// The wrap mechanism named `name`: `CKM_AES_KEY_WRAP_PAD`, or a vendor-defined mechanism
/// number (`0x8000...`, at least CKM_VENDOR_DEFINED). PKCS#11 3.0's CKM_AES_KEY_WRAP_KWP
/// (0x210b) cannot be named: the cryptoki release kmsd builds on has no such mechanism.
pub fn parse_wrap_mechanism(name: &str) -> Option<MechanismType> {
    if name.eq_ignore_ascii_case("CKM_AES_KEY_WRAP_PAD") {
        return Some(MechanismType::AES_KEY_WRAP_PAD);
    }
    let hex = name
        .strip_prefix("0x")
        .or_else(|| name.strip_prefix("0X"))?;
    let value = u64::from_str_radix(hex, 16).ok()?;
    MechanismType::new_vendor_defined(value).ok()
}

/// The first bytes of a domain object's CKA_ID.
const DOMAIN_MAGIC: &[u8; 4] = b"kmsd";
/// The domain key of a deployment that never rotated one.
pub(crate) const FIRST_DOMAIN: u32 = 1;

/// How a domain keeps the keys it unwraps: see the module header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainCustody {
    /// Made by kmsd; its unwrapped keys can never be wrapped again, so it is never rotated.
    Sealed,
    /// Made (or marked CKA_TRUSTED) by the token's security officer; its unwrapped keys can
    /// be wrapped again under a trusted key only, so a newer domain key can replace it.
    Trusted,
}

/// Who makes a trusted domain key in the ceremony.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainKeyMaker {
    /// The security officer, as a public object marked CKA_TRUSTED (SoftHSM2: the officer
    /// cannot make private objects). Usable only with a login, since what it unwraps is private.
    SecurityOfficer,
    /// The user, as a private object an administrator then marks CKA_TRUSTED with the HSM's
    /// own tool (AWS CloudHSM's crypto officer, for one); kmsd refuses it until then.
    User,
}

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

/// The message the authenticator of wrapped material covers: v1 for secrets (and key pairs
/// made before the binding), v2 with the SHA-256 of a key pair's public key.
pub(crate) fn tag_message(
    namespace: [u8; 16],
    key: KeyVersionRef,
    kind: ObjectKind,
    domain: u32,
    material: &WrappedMaterial,
) -> Vec<u8> {
    let mut message = match material.public_key_sha256 {
        None => b"kms wrapped key version v1\0".to_vec(),
        Some(_) => b"kms wrapped key version v2\0".to_vec(),
    };
    message.extend_from_slice(&namespace);
    message.extend_from_slice(key.key_id.as_bytes());
    message.extend_from_slice(&key.version.to_be_bytes());
    message.push(kind.byte());
    message.extend_from_slice(&domain.to_be_bytes());
    if let Some(hash) = &material.public_key_sha256 {
        message.extend_from_slice(hash);
    }
    // Last: the one field of variable length.
    message.extend_from_slice(&material.wrapped);
    message
}

/// CKA_UNWRAP_TEMPLATE (CKF_ARRAY_ATTRIBUTE | 0x212). cryptoki 0.12 has no variant for it.
const CKA_UNWRAP_TEMPLATE: u64 = 0x4000_0212;
/// CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_WRAP_WITH_TRUSTED.
const CKA_TOKEN: u64 = 0x01;
const CKA_PRIVATE: u64 = 0x02;
const CKA_SENSITIVE: u64 = 0x103;
const CKA_EXTRACTABLE: u64 = 0x162;
const CKA_WRAP_WITH_TRUSTED: u64 = 0x210;

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

/// What every key unwrapped with a domain key of `custody` is, whatever C_UnwrapKey's caller
/// asks: [`copy_custody`].
pub(crate) fn unwrap_template(custody: DomainCustody) -> BoolTemplate {
    match custody {
        DomainCustody::Sealed => BoolTemplate::new(&[
            (CKA_TOKEN, false),
            (CKA_SENSITIVE, true),
            (CKA_EXTRACTABLE, false),
        ]),
        DomainCustody::Trusted => BoolTemplate::new(&[
            (CKA_TOKEN, false),
            (CKA_PRIVATE, true),
            (CKA_SENSITIVE, true),
            (CKA_EXTRACTABLE, true),
            (CKA_WRAP_WITH_TRUSTED, true),
        ]),
    }
}

/// The custody of a key unwrapped with a domain key of `custody`, as C_UnwrapKey must be asked
/// for it (SoftHSM2 wants every attribute of the unwrap template in the request): a private
/// session object, sensitive; never extractable under a sealed domain, extractable only under
/// a trusted key under a trusted one.
pub(crate) fn copy_custody(custody: DomainCustody) -> Vec<Attribute> {
    let mut attributes = vec![
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(custody == DomainCustody::Trusted),
    ];
    if custody == DomainCustody::Trusted {
        attributes.push(Attribute::WrapWithTrusted(true));
    }
    attributes
}

/// The custody of fresh material, made to be wrapped at once under a domain key of `custody`:
/// extractable, and under a trusted domain only under a trusted key.
pub(crate) fn fresh_custody(custody: DomainCustody) -> Vec<Attribute> {
    let mut attributes = copy_custody(custody);
    attributes[3] = Attribute::Extractable(true);
    attributes
}

/// The template of a domain key: AES-256 on the token, sensitive, never extractable, only
/// wrapping and unwrapping with AES key wrap with padding, with `unwrapped` as its
/// CKA_UNWRAP_TEMPLATE. Sealed, or made by the user, it is private; made by the security
/// officer it is public and trusted (see [`DomainKeyMaker`]).
pub(crate) fn domain_key_template(
    id: Vec<u8>,
    label: String,
    unwrapped: &BoolTemplate,
    maker: Option<DomainKeyMaker>,
    mechanism: MechanismType,
) -> Vec<Attribute> {
    let officer = maker == Some(DomainKeyMaker::SecurityOfficer);
    let mut template = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32u64.into()),
        Attribute::Token(true),
        Attribute::Private(!officer),
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
        // The one mechanism it wraps with, which kmsd reads back to know it.
        Attribute::AllowedMechanisms(vec![mechanism]),
        Attribute::Id(id),
        Attribute::Label(label.into_bytes()),
        unwrapped.attribute(CKA_UNWRAP_TEMPLATE),
    ];
    if officer {
        template.push(Attribute::Trusted(true));
    }
    template
}

/// Makes a sealed domain key on the token that wraps with `mechanism`.
pub(crate) fn create_domain_key(
    session: &Session,
    id: Vec<u8>,
    label: String,
    mechanism: MechanismType,
) -> Result<ObjectHandle, CkError> {
    let unwrapped = unwrap_template(DomainCustody::Sealed);
    let template = domain_key_template(id, label, &unwrapped, None, mechanism);
    session.generate_key(&Mechanism::AesKeyGen, &template)
}

/// The ceremony's step: makes the wrap key of trusted domain `version` of the instance
/// `namespace` in `session` (logged in as `maker` says). Refuses when the token holds it.
pub(crate) fn create_trusted_domain_key(
    session: &Session,
    namespace: [u8; 16],
    version: u32,
    maker: DomainKeyMaker,
    mechanism: MechanismType,
) -> Result<Result<ObjectHandle, &'static str>, CkError> {
    let id = domain_id(namespace, version, DomainRole::Wrap);
    if !session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Id(id.clone()),
        ])?
        .is_empty()
    {
        return Ok(Err("the token already holds this domain key"));
    }
    let unwrapped = unwrap_template(DomainCustody::Trusted);
    let label = format!("kms/domain/{version}/wrap");
    let template = domain_key_template(id, label, &unwrapped, Some(maker), mechanism);
    session
        .generate_key(&Mechanism::AesKeyGen, &template)
        .map(Ok)
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
    /// Its version.
    pub(crate) version: u32,
    /// The AES key that wraps and unwraps.
    pub(crate) wrap: ObjectHandle,
    /// How the wrap key keeps what it unwraps.
    pub(crate) custody: DomainCustody,
    /// The mechanism it wraps with.
    pub(crate) mechanism: MechanismType,
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
    configured: MechanismType,
) -> Result<Result<Option<Domain>, Distrust>, CkError> {
    let wrap_id = domain_id(namespace, version, DomainRole::Wrap);
    let wrap = match find_trusted(session, &wrap_id, configured)? {
        Ok(found) => found,
        Err(why) => return Ok(Err(why)),
    };
    let authenticate = match find_trusted(
        session,
        &domain_id(namespace, version, DomainRole::Authenticate),
        configured,
    )? {
        Ok(found) => found,
        Err(why) => return Ok(Err(why)),
    };
    Ok(Ok(wrap.zip(authenticate).map(|(wrap, authenticate)| {
        Domain {
            version,
            wrap: wrap.handle,
            custody: wrap.custody,
            mechanism: wrap.mechanism,
            authenticate: authenticate.handle,
        }
    })))
}

/// The domain `version` of the instance `namespace`, its authenticator key made on the token
/// where it lacks one, and its wrap key too when `make_sealed` (a trusted one comes from the
/// ceremony); `None` when the wrap key is missing. Refused as [`find_domain`] refuses.
pub(crate) fn find_or_create_domain(
    session: &Session,
    namespace: [u8; 16],
    version: u32,
    make_sealed: Option<MechanismType>,
    configured: MechanismType,
) -> Result<Result<Option<Domain>, Distrust>, CkError> {
    let label = |what| format!("kms/domain/{version}/{what}");
    let wrap_id = domain_id(namespace, version, DomainRole::Wrap);
    let wrap = match (find_trusted(session, &wrap_id, configured)?, make_sealed) {
        (Ok(Some(found)), _) => found,
        (Ok(None), Some(mechanism)) => Found {
            handle: create_domain_key(session, wrap_id, label("wrap"), mechanism)?,
            custody: DomainCustody::Sealed,
            mechanism,
        },
        (Ok(None), None) => return Ok(Ok(None)),
        (Err(why), _) => return Ok(Err(why)),
    };
    let authenticate_id = domain_id(namespace, version, DomainRole::Authenticate);
    let authenticate = match find_trusted(session, &authenticate_id, configured)? {
        Ok(Some(found)) => found.handle,
        Ok(None) => session.generate_key(
            &Mechanism::GenericSecretKeyGen,
            &authenticator_template(authenticate_id, label("authenticate")),
        )?,
        Err(why) => return Ok(Err(why)),
    };
    Ok(Ok(Some(Domain {
        version,
        wrap: wrap.handle,
        custody: wrap.custody,
        mechanism: wrap.mechanism,
        authenticate,
    })))
}

/// The custody of the wrap key of domain `version` of the instance `namespace`, if the token
/// holds it; refused as [`find_domain`] refuses.
pub(crate) fn find_wrap_key(
    session: &Session,
    namespace: [u8; 16],
    version: u32,
    configured: MechanismType,
) -> Result<Result<Option<DomainCustody>, Distrust>, CkError> {
    let id = domain_id(namespace, version, DomainRole::Wrap);
    Ok(find_trusted(session, &id, configured)?.map(|found| found.map(|found| found.custody)))
}

/// Destroys the objects of domain `version` of the instance `namespace`; returns how many
/// there were.
pub(crate) fn destroy_domain(
    session: &Session,
    namespace: [u8; 16],
    version: u32,
) -> Result<usize, CkError> {
    let mut destroyed = 0;
    for role in [DomainRole::Wrap, DomainRole::Authenticate] {
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Id(domain_id(namespace, version, role)),
        ];
        for handle in session.find_objects(&template)? {
            session.destroy_object(handle)?;
            destroyed += 1;
        }
    }
    Ok(destroyed)
}

/// The domain object whose CKA_ID is `id`, if the token holds one, checked as kmsd (or the
/// ceremony) makes it: the only object with that id; generated on the token (CKA_LOCAL),
/// always sensitive and never extractable, so that no one knows its value; not modifiable. An
/// authenticator key is private. A wrap key is trusted (CKA_TRUSTED, which only the security
/// officer can set) or else private and sealed, and holds the unwrap template of its custody:
/// an unwrapped copy asked to be readable, or wrappable under any key, is refused. Returns the
/// handle with the custody of a wrap key (sealed for an authenticator key).
fn find_trusted(
    session: &Session,
    id: &[u8],
    configured: MechanismType,
) -> Result<Result<Option<Found>, Distrust>, CkError> {
    let wrap = id.last() == Some(&(DomainRole::Wrap as u8));
    // Only private objects (which take the PIN to make) and, for a wrap key, trusted ones
    // (which take the security officer): a public object planted under the id by a process
    // without the PIN is not even looked at.
    let mut found = Vec::new();
    let mut searches = vec![Attribute::Private(true)];
    if wrap {
        searches.push(Attribute::Trusted(true));
    }
    for search in searches {
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Id(id.to_vec()),
            search,
        ];
        for handle in session.find_objects(&template)? {
            if !found.contains(&handle) {
                found.push(handle);
            }
        }
    }
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
            AttributeType::Trusted,
            AttributeType::AllowedMechanisms,
            AttributeType::Encrypt,
            AttributeType::Decrypt,
            AttributeType::Sign,
            AttributeType::Verify,
            AttributeType::Derive,
            AttributeType::Wrap,
            AttributeType::Unwrap,
        ],
    )?;
    let custody = [
        Attribute::Local(true),
        Attribute::AlwaysSensitive(true),
        Attribute::NeverExtractable(true),
        Attribute::Extractable(false),
        Attribute::Modifiable(false),
        Attribute::Token(true),
    ];
    if !custody.iter().all(|a| attributes.contains(a)) {
        return Ok(Err(
            "was not generated on the token as a never-extractable, unmodifiable key",
        ));
    }
    let trusted = wrap && attributes.contains(&Attribute::Trusted(true));
    if !trusted && !attributes.contains(&Attribute::Private(true)) {
        return Ok(Err("is public but not trusted"));
    }
    let custody = if trusted {
        DomainCustody::Trusted
    } else {
        DomainCustody::Sealed
    };
    // Its one use and mechanism: a wrap key that also decrypts (C_Decrypt with AES-ECB undoes
    // key wrap block by block) or derives would give away what it wraps.
    let (uses, mechanisms) = if wrap {
        ((true, false), [DEFAULT_WRAP, configured])
    } else {
        ((false, true), [MechanismType::SHA256_HMAC; 2])
    };
    let only = [
        Attribute::Wrap(uses.0),
        Attribute::Unwrap(uses.0),
        Attribute::Sign(uses.1),
        Attribute::Verify(uses.1),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Derive(false),
    ];
    if !only.iter().all(|a| attributes.contains(a)) {
        return Ok(Err("may be used for more than its one job"));
    }
    let mechanism = match attributes.iter().find_map(|a| match a {
        Attribute::AllowedMechanisms(allowed) => Some(allowed.as_slice()),
        _ => None,
    }) {
        Some([mechanism]) if mechanisms.contains(mechanism) => *mechanism,
        _ => return Ok(Err("is not limited to the one mechanism of its job")),
    };
    if wrap && !holds_unwrap_template(session, handle, custody, mechanism)? {
        return Ok(Err("lets a key it unwraps be read"));
    }
    Ok(Ok(Some(Found {
        handle,
        custody,
        mechanism,
    })))
}

/// A domain object found on the token and trusted.
struct Found {
    handle: ObjectHandle,
    /// For a wrap key: its custody (sealed for an authenticator key).
    custody: DomainCustody,
    /// For a wrap key: the mechanism it wraps with.
    mechanism: MechanismType,
}

/// Whether the wrap key `domain` of `custody` holds its unwrap template: a secret wrapped
/// under it unwraps neither into a non-sensitive copy nor (sealed) into an extractable one
/// nor (trusted) into one any key may wrap. The probe secret and any copy are destroyed.
fn holds_unwrap_template(
    session: &Session,
    domain: ObjectHandle,
    custody: DomainCustody,
    mechanism: MechanismType,
) -> Result<bool, CkError> {
    let probe = session.generate_key(
        &Mechanism::GenericSecretKeyGen,
        &fresh_secret_template(32, vec![MechanismType::SHA256_HMAC], custody),
    )?;
    let wrapped = session.wrap_key(&wrap_mechanism(mechanism), domain, probe);
    // A session object nothing else refers to; its session would drop it anyway.
    let _ = session.destroy_object(probe);
    let wrapped = wrapped?;
    let base = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Sign(true),
    ];
    // Each forbidden change alone: a template that pins only some attributes refuses a
    // request changing two of them at once, and would pass a joint probe.
    let mut changes = vec![
        (0, Attribute::Token(true)),
        (2, Attribute::Sensitive(false)),
    ];
    match custody {
        DomainCustody::Sealed => changes.push((3, Attribute::Extractable(true))),
        DomainCustody::Trusted => {
            changes.push((1, Attribute::Private(false)));
            changes.push((4, Attribute::WrapWithTrusted(false)));
        }
    }
    let requests = changes.into_iter().map(|(index, change)| {
        let mut request = copy_custody(custody);
        request[index] = change;
        request
    });
    for request in requests {
        let template: Vec<Attribute> = base.iter().cloned().chain(request).collect();
        // PKCS#11 says an unwrap template conflict is CKR_TEMPLATE_INCONSISTENT; any other
        // refusal proves nothing about the template.
        match session.unwrap_key(&wrap_mechanism(mechanism), domain, &wrapped, &template) {
            Ok(copy) => {
                let _ = session.destroy_object(copy);
                return Ok(false);
            }
            Err(CkError::Pkcs11(cryptoki::error::RvError::TemplateInconsistent, _)) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(true)
}

/// A fresh `len`-byte generic secret, a session object extractable for the one C_WrapKey
/// under a domain key of `custody` that follows its generation, that only computes HMACs with
/// `allowed`.
pub(crate) fn fresh_secret_template(
    len: usize,
    allowed: Vec<MechanismType>,
    custody: DomainCustody,
) -> Vec<Attribute> {
    templates::session_secret_template(Some(len), allowed, fresh_custody(custody))
}

/// Imported material as C_UnwrapKey makes it from the caller's wrapped bytes: a generic
/// secret, a session object extractable for the one C_WrapKey under a domain key of `custody`
/// that follows, that only computes HMACs with `allowed`.
pub(crate) fn fresh_import_template(
    allowed: Vec<MechanismType>,
    custody: DomainCustody,
) -> Vec<Attribute> {
    templates::session_secret_template(None, allowed, fresh_custody(custody))
}

/// Generates a `len`-byte secret inside the HSM as a session object and wraps it at once under
/// `domain` (CKM_AES_KEY_WRAP_PAD): returns the object and the wrapped bytes. For the module probes
/// in the tests; kmsd keeps an unwrapped copy instead of the extractable original.
#[cfg(test)]
pub(crate) fn generate_wrapped_secret(
    session: &Session,
    domain: ObjectHandle,
    custody: DomainCustody,
    len: usize,
    allowed: Vec<MechanismType>,
) -> Result<(ObjectHandle, Vec<u8>), CkError> {
    let template = fresh_secret_template(len, allowed, custody);
    let secret = session.generate_key(&Mechanism::GenericSecretKeyGen, &template)?;
    match session.wrap_key(&wrap_mechanism(DEFAULT_WRAP), domain, secret) {
        Ok(wrapped) => Ok((secret, wrapped)),
        Err(error) => {
            // Nothing refers to it; the session would drop it anyway.
            let _ = session.destroy_object(secret);
            Err(error)
        }
    }
}

/// Unwraps `wrapped` under the wrap key `domain` of `custody` into a session object that only
/// computes HMACs with `allowed`, kept as [`copy_custody`] says.
pub(crate) fn unwrap_secret(
    session: &Session,
    domain: ObjectHandle,
    custody: DomainCustody,
    mechanism: MechanismType,
    wrapped: &[u8],
    allowed: Vec<MechanismType>,
) -> Result<ObjectHandle, CkError> {
    let template = templates::session_secret_template(None, allowed, copy_custody(custody));
    session.unwrap_key(&wrap_mechanism(mechanism), domain, wrapped, &template)
}

/// The wrapping mechanism domain keys are made for unless configured otherwise: AES key wrap
/// with padding (RFC 5649), since private keys' PKCS#8 encodings and imported HMAC keys need
/// not be multiples of 8 bytes.
pub const DEFAULT_WRAP: MechanismType = MechanismType::AES_KEY_WRAP_PAD;

/// The mechanism `mechanism` as C_WrapKey and C_UnwrapKey take it: the standard one, or a
/// vendor's (which takes no parameter).
pub(crate) fn wrap_mechanism(mechanism: MechanismType) -> Mechanism<'static> {
    if mechanism == MechanismType::AES_KEY_WRAP_PAD {
        Mechanism::AesKeyWrapPad
    } else {
        Mechanism::VendorDefined(VendorDefinedMechanism::new::<()>(mechanism, None))
    }
}

/// The private key template of a wrapped key pair's unwrapped half: a session object kept as
/// [`copy_custody`] says, that only signs or only decrypts, as `kind` says.
fn unwrapped_private_template(
    kind: ObjectKind,
    allowed: Vec<MechanismType>,
    custody: DomainCustody,
) -> Vec<Attribute> {
    let key_type = if kind == ObjectKind::EcP256Sign {
        KeyType::EC
    } else {
        KeyType::RSA
    };
    let mut template = vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(key_type),
    ];
    template.extend(copy_custody(custody));
    template.extend([
        Attribute::Sign(kind != ObjectKind::RsaDecrypt),
        Attribute::SignRecover(false),
        Attribute::Decrypt(kind == ObjectKind::RsaDecrypt),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::AllowedMechanisms(allowed),
    ]);
    template
}

/// Unwraps a version's `wrapped` material of `kind` under `domain` into a session object kept
/// as [`copy_custody`] says, with only the use and `allowed` mechanisms of its kind.
pub(crate) fn unwrap_version(
    session: &Session,
    domain: Domain,
    wrapped: &[u8],
    kind: ObjectKind,
    allowed: Vec<MechanismType>,
) -> Result<ObjectHandle, CkError> {
    if kind.is_private_key() {
        let template = unwrapped_private_template(kind, allowed, domain.custody);
        session.unwrap_key(
            &wrap_mechanism(domain.mechanism),
            domain.wrap,
            wrapped,
            &template,
        )
    } else {
        unwrap_secret(
            session,
            domain.wrap,
            domain.custody,
            domain.mechanism,
            wrapped,
            allowed,
        )
    }
}
