//! Domain keys, the first step of the key hierarchy (issue 16): AES-256 keys on the token that
//! wrap key versions kept outside it, so that the token holds a few objects whatever the number
//! of keys.
//!
//! A domain key is a private, sensitive, never-extractable token object that only wraps and
//! unwraps (CKM_AES_KEY_WRAP, CKM_AES_KEY_WRAP_PAD). It carries a CKA_UNWRAP_TEMPLATE: a key
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
//! Not wired into the service yet: the records, the KeyStore calls and the handle cache come
//! next.

use cryptoki::error::Error as CkError;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

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
/// only wrapping and unwrapping with AES key wrap, with [`unwrap_template`] as its
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
        Attribute::AllowedMechanisms(vec![
            MechanismType::AES_KEY_WRAP,
            MechanismType::AES_KEY_WRAP_PAD,
        ]),
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

/// A generic secret of `len` bytes that only computes HMACs with `allowed`, as a session
/// object: `extractable` only for the one C_WrapKey after generation.
fn session_secret_template(
    len: Option<usize>,
    allowed: Vec<MechanismType>,
    extractable: bool,
) -> Vec<Attribute> {
    let mut template = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
    ];
    if let Some(len) = len {
        template.push(Attribute::ValueLen((len as u64).into()));
    }
    template.extend([
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(extractable),
        Attribute::Sign(true),
        Attribute::Verify(false),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
        Attribute::AllowedMechanisms(allowed),
    ]);
    template
}

/// Generates a `len`-byte secret inside the HSM as a session object and wraps it at once under
/// `domain` (CKM_AES_KEY_WRAP): returns the object, ready to use, and the wrapped bytes.
pub(crate) fn generate_wrapped_secret(
    session: &Session,
    domain: ObjectHandle,
    len: usize,
    allowed: Vec<MechanismType>,
) -> Result<(ObjectHandle, Vec<u8>), CkError> {
    let template = session_secret_template(Some(len), allowed, true);
    let secret = session.generate_key(&Mechanism::GenericSecretKeyGen, &template)?;
    match session.wrap_key(&Mechanism::AesKeyWrap, domain, secret) {
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
    let template = session_secret_template(None, allowed, false);
    session.unwrap_key(&Mechanism::AesKeyWrap, domain, wrapped, &template)
}
