//! The audit log's signing key: one key pair per service instance, generated in the HSM at
//! first start: ECDSA P-256, or RSA-PSS (3072 bits, SHA-256) on a module without elliptic
//! curves (opencryptoki's soft token). The private half signs the audit log's checkpoints and
//! never leaves the HSM; the public half is read back to give to verifiers. A pair found on the
//! token is used whatever its type, so a log keeps its key.
//!
//! CKA_ID: `"kmsa"` || instance id (16 bytes); CKA_LABEL: `kms/audit/<instance id in hex>`.
//! The `kmsa` prefix keeps the pair out of the key versions that reconciliation lists.

use std::sync::{Arc, Mutex, PoisonError};

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use kms_core::HsmError;
use kms_core::audit::{AUDIT_RSA_BITS, AuditPublicKey, CheckpointSigner};
use sha2::{Digest, Sha256};
use tracing::info;

use crate::templates::{self, PrivateUse};
use crate::{HsmKeyStore, public_key_der};

/// Signs audit checkpoints with the instance's HSM-held key.
pub struct HsmAuditSigner {
    hsm: Arc<HsmKeyStore>,
    id: Vec<u8>,
    public_key: AuditPublicKey,
    /// The private key's handle, found once: searching the token for every checkpoint costs
    /// a scan of all its objects.
    /// with the HSM store's generation it was found in: a handle of an older generation may
    /// name another object now.
    handle: Mutex<Option<(u64, ObjectHandle)>>,
}

impl HsmAuditSigner {
    /// The signer of this instance, generating its key pair if the token has none yet.
    pub fn open(hsm: Arc<HsmKeyStore>) -> Result<Self, HsmError> {
        let mut id = b"kmsa".to_vec();
        id.extend_from_slice(&hsm.namespace);
        let label = format!("kms/audit/{}", hex_string(&hsm.namespace));
        let public = hsm.with_session("find audit key", true, |s| {
            find(s, &id, ObjectClass::PUBLIC_KEY)
        })?;
        let public = if let Some(handle) = public {
            handle
        } else {
            let ec = hsm.capabilities.has_ec();
            let (mechanism, public, private) = if ec {
                (
                    Mechanism::EccKeyPairGen,
                    templates::ec_public_template(id.clone(), label.clone(), true),
                    templates::private_template(
                        KeyType::EC,
                        id.clone(),
                        label.clone(),
                        PrivateUse::Sign,
                        vec![MechanismType::ECDSA],
                    ),
                )
            } else {
                (
                    Mechanism::RsaPkcsKeyPairGen,
                    templates::rsa_verify_public_template(
                        id.clone(),
                        label.clone(),
                        AUDIT_RSA_BITS,
                    ),
                    templates::private_template(
                        KeyType::RSA,
                        id.clone(),
                        label.clone(),
                        PrivateUse::Sign,
                        vec![MechanismType::RSA_PKCS_PSS],
                    ),
                )
            };
            let (public, private) = (hsm.fit(public), hsm.fit(private));
            let handle = hsm.with_session("generate audit key", false, |s| {
                s.generate_key_pair(&mechanism, &public, &private)
                    .map(|(public, _)| public)
            })?;
            let scheme = if ec { "ECDSA P-256" } else { "RSA-PSS 3072" };
            info!(
                label,
                scheme, "generated the audit signing key pair in the HSM"
            );
            handle
        };
        let public_key = hsm.with_session("read audit public key", true, |s| {
            read_public_key(s, public)
        })?;
        let public_key = public_key.ok_or_else(|| HsmError::Failed {
            operation: "read audit public key",
            source: "the HSM returned no usable P-256 point or RSA public key".into(),
        })?;
        Ok(HsmAuditSigner {
            hsm,
            id,
            public_key,
            handle: Mutex::new(None),
        })
    }
}

impl HsmAuditSigner {
    /// Whether the HSM signs with the audit key now: the health service's probe, counted
    /// apart from checkpoint signatures (`health probe` in the HSM call metrics).
    pub fn probe(&self) -> Result<(), HsmError> {
        self.sign_as("health probe", b"kms health probe")
            .map(|_| ())
    }

    fn sign_as(&self, operation: &'static str, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        let digest = Sha256::digest(message);
        let mechanism = match self.public_key {
            AuditPublicKey::P256(_) => Mechanism::Ecdsa,
            AuditPublicKey::RsaPss(_) => Mechanism::RsaPkcsPss(PkcsPssParams {
                hash_alg: MechanismType::SHA256,
                mgf: PkcsMgfType::MGF1_SHA256,
                s_len: 32u64.into(),
            }),
        };
        let signature = self.hsm.with_session(operation, true, |s| {
            let generation = self.hsm.generation();
            let cached = *self.handle.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, key)) = cached.filter(|(g, _)| *g == generation) {
                match s.sign(&mechanism, key, &digest) {
                    Err(CkError::Pkcs11(
                        RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid,
                        _,
                    )) => {} // stale: search again below
                    other => return other.map(Some),
                }
            }
            let found = find(s, &self.id, ObjectClass::PRIVATE_KEY)?;
            *self.handle.lock().unwrap_or_else(PoisonError::into_inner) =
                found.map(|key| (generation, key));
            match found {
                Some(key) => s.sign(&mechanism, key, &digest).map(Some),
                None => Ok(None),
            }
        })?;
        let signature = signature.ok_or_else(|| HsmError::Failed {
            operation,
            source: "the audit signing key is gone from the HSM".into(),
        })?;
        // The HSM may return either of the two valid ECDSA `s`; verifiers want the low one.
        self.public_key
            .normalize(&signature)
            .ok_or_else(|| HsmError::Failed {
                operation,
                source: "the HSM returned a malformed signature".into(),
            })
    }
}

impl CheckpointSigner for HsmAuditSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, HsmError> {
        self.sign_as("sign audit checkpoint", message)
    }

    fn public_key(&self) -> AuditPublicKey {
        self.public_key.clone()
    }
}

fn find(session: &Session, id: &[u8], class: ObjectClass) -> Result<Option<ObjectHandle>, CkError> {
    let template = [Attribute::Class(class), Attribute::Id(id.to_vec())];
    Ok(session.find_objects(&template)?.into_iter().next())
}

/// The public key of the audit pair's public half `public`: a P-256 point, or an RSA modulus
/// and exponent; `None` when the HSM returns neither in a usable form.
fn read_public_key(
    session: &Session,
    public: ObjectHandle,
) -> Result<Option<AuditPublicKey>, CkError> {
    let key_type = session
        .get_attributes(public, &[AttributeType::KeyType])?
        .into_iter()
        .find_map(|a| match a {
            Attribute::KeyType(key_type) => Some(key_type),
            _ => None,
        });
    if key_type == Some(KeyType::RSA) {
        let attributes = session.get_attributes(
            public,
            &[AttributeType::Modulus, AttributeType::PublicExponent],
        )?;
        return Ok(public_key_der(false, attributes)
            .ok()
            .and_then(|der| AuditPublicKey::from_public_key_der(&der).ok()));
    }
    let attributes = session.get_attributes(public, &[AttributeType::EcPoint])?;
    Ok(attributes
        .into_iter()
        .find_map(|a| match a {
            Attribute::EcPoint(point) => Some(point),
            _ => None,
        })
        .as_deref()
        .and_then(unwrap_octet_string)
        .and_then(|sec1| p256::PublicKey::from_sec1_bytes(sec1).ok())
        .map(AuditPublicKey::P256))
}

/// The uncompressed P-256 point in CKA_EC_POINT: a DER OCTET STRING around it (PKCS#11
/// 2.40), or the raw 65 bytes (some modules).
fn unwrap_octet_string(der: &[u8]) -> Option<&[u8]> {
    match der {
        [0x04, 0x41, point @ ..] if point.len() == 65 => Some(point),
        raw if raw.len() == 65 => Some(raw),
        _ => None,
    }
}

fn hex_string(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}
