//! The attribute templates of every object this service makes, and the mechanisms it uses.
//!
//! Custody (DESIGN §3): every secret and private key is on the token, private, sensitive,
//! never extractable, not modifiable or copyable, and has only the usage its job needs; never
//! WRAP with DECRYPT or UNWRAP with ENCRYPT. Every attribute is set explicitly, since
//! SoftHSM2's defaults are unsafe. Public halves of key versions are session objects: the
//! service reads them once and keeps the public key in the key's record.

use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use kms_core::asymmetric::HashAlg;
use kms_core::hsm::SignMechanism;
use kms_core::key::MacAlgorithm;

use crate::object_id::ObjectKind;

/// DER of the OID of NIST P-256 (prime256v1), the CKA_EC_PARAMS of P-256 pairs.
pub(crate) const P256_OID_DER: [u8; 10] =
    [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// RSA public exponent 65537.
const RSA_EXPONENT: [u8; 3] = [0x01, 0x00, 0x01];

/// What a private key may do: exactly one of these.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum PrivateUse {
    Sign,
    Decrypt,
    Unwrap,
}

/// The mechanisms an object of `kind` may be used with (CKA_ALLOWED_MECHANISMS), so that the
/// HSM, where it honours the attribute, refuses any other use. `imported` secrets also allow
/// HMAC-SHA-1, the material check of an import ([`SignMechanism::MaterialCheck`]).
pub(crate) fn allowed_mechanisms(kind: ObjectKind, imported: bool) -> Vec<MechanismType> {
    let mut allowed = match kind {
        ObjectKind::MasterSecret | ObjectKind::HmacSha256 => vec![MechanismType::SHA256_HMAC],
        ObjectKind::HmacSha384 => vec![MechanismType::SHA384_HMAC],
        ObjectKind::HmacSha512 => vec![MechanismType::SHA512_HMAC],
        // OAEP, and raw RSA for the hashes the module's OAEP lacks (decoded in software).
        ObjectKind::RsaDecrypt => vec![MechanismType::RSA_PKCS_OAEP, MechanismType::RSA_X_509],
        ObjectKind::RsaSign => vec![MechanismType::RSA_PKCS_PSS, MechanismType::RSA_PKCS],
        ObjectKind::EcP256Sign => vec![MechanismType::ECDSA],
    };
    if imported && !kind.is_private_key() {
        allowed.push(MechanismType::SHA1_HMAC);
    }
    allowed
}

/// A generic secret of `len` bytes (the material's own length when `None`) with the custody
/// attributes `custody`, that only computes HMACs (CKA_SIGN) with the mechanisms `allowed`.
fn hmac_secret(
    len: Option<usize>,
    custody: impl IntoIterator<Item = Attribute>,
    allowed: Vec<MechanismType>,
) -> Vec<Attribute> {
    let mut template = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
    ];
    if let Some(len) = len {
        template.push(Attribute::ValueLen((len as u64).into()));
    }
    template.extend(custody);
    template.extend([
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

/// A generic secret on the token that only computes HMACs (CKA_SIGN), with the mechanisms
/// `allowed`. `len` is given when generating and left out when unwrapping (the material
/// decides it).
pub(crate) fn secret_template(
    id: Vec<u8>,
    label: String,
    len: Option<usize>,
    allowed: Vec<MechanismType>,
) -> Vec<Attribute> {
    let custody = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Copyable(false),
        Attribute::Destroyable(true),
    ];
    let mut template = hmac_secret(len, custody, allowed);
    template.extend([
        Attribute::Id(id),
        Attribute::Label(label.into_bytes()),
        // Last: SoftHSM2 refuses every attribute of an unwrap template that follows it.
        Attribute::Modifiable(false),
    ]);
    template
}

/// A generic secret as a session object that only computes HMACs with `allowed`, kept as
/// `custody` says (see [`crate::domain::copy_custody`]).
pub(crate) fn session_secret_template(
    len: Option<usize>,
    allowed: Vec<MechanismType>,
    custody: Vec<Attribute>,
) -> Vec<Attribute> {
    hmac_secret(len, custody, allowed)
}

/// The private half of a key pair: one use only, with the mechanisms `allowed`.
pub(crate) fn private_template(
    key_type: KeyType,
    id: Vec<u8>,
    label: String,
    use_: PrivateUse,
    allowed: Vec<MechanismType>,
) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(key_type),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Modifiable(false),
        Attribute::Copyable(false),
        Attribute::Destroyable(true),
        Attribute::Sign(use_ == PrivateUse::Sign),
        Attribute::SignRecover(false),
        Attribute::Decrypt(use_ == PrivateUse::Decrypt),
        Attribute::Unwrap(use_ == PrivateUse::Unwrap),
        Attribute::Derive(false),
        Attribute::AllowedMechanisms(allowed),
        Attribute::Id(id),
        Attribute::Label(label.into_bytes()),
    ]
}

/// The public half of an RSA pair, a session object.
pub(crate) fn rsa_public_template(id: Vec<u8>, label: String, bits: u32) -> Vec<Attribute> {
    rsa_public(id, label, bits, false)
}

/// The public half of an RSA pair that only verifies, on the token: the audit key's, which
/// verifiers read back.
pub(crate) fn rsa_verify_public_template(id: Vec<u8>, label: String, bits: u32) -> Vec<Attribute> {
    rsa_public(id, label, bits, true)
}

/// The public half of an RSA pair: on the token and only verifying for the audit key, a
/// session object that also encrypts and wraps otherwise.
fn rsa_public(id: Vec<u8>, label: String, bits: u32, audit: bool) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::RSA),
        Attribute::ModulusBits(u64::from(bits).into()),
        Attribute::PublicExponent(RSA_EXPONENT.to_vec()),
        Attribute::Token(audit),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::VerifyRecover(false),
        Attribute::Encrypt(!audit),
        Attribute::Wrap(!audit),
        Attribute::Derive(false),
        Attribute::Id(id),
        Attribute::Label(label.into_bytes()),
    ]
}

/// The public half of a P-256 pair: verify only; a session object unless `on_token` (the
/// audit key's, which verifiers read back).
pub(crate) fn ec_public_template(id: Vec<u8>, label: String, on_token: bool) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::EC),
        Attribute::EcParams(P256_OID_DER.to_vec()),
        Attribute::Token(on_token),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::VerifyRecover(false),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
        Attribute::Derive(false),
        Attribute::Id(id),
        Attribute::Label(label.into_bytes()),
    ]
}

fn hash_params(hash: HashAlg) -> (MechanismType, PkcsMgfType) {
    match hash {
        HashAlg::Sha1 => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
        HashAlg::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
        HashAlg::Sha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
        HashAlg::Sha512 => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512),
    }
}

/// RSAES-OAEP with `hash` for the hash and MGF1, and an empty label.
pub(crate) fn oaep(hash: HashAlg) -> Mechanism<'static> {
    let (hash_alg, mgf) = hash_params(hash);
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(hash_alg, mgf, PkcsOaepSource::empty()))
}

/// The mechanism of a signature or MAC.
pub(crate) fn sign_mechanism(mechanism: SignMechanism) -> Mechanism<'static> {
    match mechanism {
        SignMechanism::Hmac(MacAlgorithm::HmacSha256) => Mechanism::Sha256Hmac,
        SignMechanism::Hmac(MacAlgorithm::HmacSha384) => Mechanism::Sha384Hmac,
        SignMechanism::Hmac(MacAlgorithm::HmacSha512) => Mechanism::Sha512Hmac,
        SignMechanism::RsaPss(hash) => {
            let (hash_alg, mgf) = hash_params(hash);
            Mechanism::RsaPkcsPss(PkcsPssParams {
                hash_alg,
                mgf,
                s_len: (hash.output_len() as u64).into(),
            })
        }
        SignMechanism::RsaPkcs1 => Mechanism::RsaPkcs,
        SignMechanism::Ecdsa => Mechanism::Ecdsa,
        SignMechanism::MaterialCheck => Mechanism::Sha1Hmac,
    }
}
