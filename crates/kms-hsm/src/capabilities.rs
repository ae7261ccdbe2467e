//! What the token's module can do, read once when the store opens: the mechanisms its slot
//! lists, and which of the newer attributes of kmsd's templates it knows. kmsd offers what the
//! module can do: the key specs it can serve (the others are refused at CreateKey), the audit
//! key it can make, and templates without the attributes it does not know.
//!
//! SoftHSM2 2.6 has every mechanism and attribute kmsd uses. Debian's opencryptoki 3.8.1 soft
//! token has no elliptic-curve mechanism and no AES key wrap, and refuses CKA_ALLOWED_MECHANISMS,
//! CKA_COPYABLE and CKA_DESTROYABLE (PKCS#11 2.40 additions) with CKR_ATTRIBUTE_TYPE_INVALID.

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::Session;
use kms_core::key::KeySpec;

/// Attributes of kmsd's templates that only narrow what an object may do, which a module may
/// not know, each with a value to try: left out of every template on a module that refuses
/// them. Without them the object's usage flags (CKA_SIGN, CKA_DECRYPT, ...) still bound its
/// use, C_CopyObject cannot make a copy less sensitive or more extractable, and objects are
/// destroyable anyway.
fn narrowing() -> [Attribute; 3] {
    [
        Attribute::AllowedMechanisms(vec![MechanismType::SHA256_HMAC]),
        Attribute::Copyable(false),
        Attribute::Destroyable(true),
    ]
}

/// The key specs kmsd serves, and the mechanisms each needs of the module, by name.
const KEY_SPEC_NEEDS: [(KeySpec, &[(MechanismType, &str)]); 8] = [
    (KeySpec::SymmetricDefault, &[GENERIC_KEY_GEN, SHA256_HMAC]),
    (KeySpec::Hmac256, &[GENERIC_KEY_GEN, SHA256_HMAC]),
    (
        KeySpec::Hmac384,
        &[
            GENERIC_KEY_GEN,
            (MechanismType::SHA384_HMAC, "CKM_SHA384_HMAC"),
        ],
    ),
    (
        KeySpec::Hmac512,
        &[
            GENERIC_KEY_GEN,
            (MechanismType::SHA512_HMAC, "CKM_SHA512_HMAC"),
        ],
    ),
    (KeySpec::Rsa2048, &[RSA_KEY_GEN]),
    (KeySpec::Rsa3072, &[RSA_KEY_GEN]),
    (KeySpec::Rsa4096, &[RSA_KEY_GEN]),
    (
        KeySpec::EccNistP256,
        &[
            (MechanismType::ECC_KEY_PAIR_GEN, "CKM_EC_KEY_PAIR_GEN"),
            (MechanismType::ECDSA, "CKM_ECDSA"),
        ],
    ),
];
const GENERIC_KEY_GEN: (MechanismType, &str) = (
    MechanismType::GENERIC_SECRET_KEY_GEN,
    "CKM_GENERIC_SECRET_KEY_GEN",
);
const SHA256_HMAC: (MechanismType, &str) = (MechanismType::SHA256_HMAC, "CKM_SHA256_HMAC");
const RSA_KEY_GEN: (MechanismType, &str) = (
    MechanismType::RSA_PKCS_KEY_PAIR_GEN,
    "CKM_RSA_PKCS_KEY_PAIR_GEN",
);

/// A key spec the module cannot serve, and the mechanisms it lacks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnservedKeySpec {
    /// The spec.
    pub spec: KeySpec,
    /// The names of the mechanisms the module lacks, e.g. `CKM_ECDSA`.
    pub missing: Vec<&'static str>,
}

/// What the module can do: see the module header.
#[derive(Clone, Debug, Default)]
pub(crate) struct Capabilities {
    /// The mechanisms the token's slot lists.
    pub(crate) mechanisms: Vec<MechanismType>,
    /// The attributes of [`narrowing`] the module refuses.
    unknown: Vec<AttributeType>,
}

impl Capabilities {
    /// Keeps the slot's `mechanisms`, and tries each attribute of [`narrowing`] on a generated
    /// session secret, destroyed at once.
    pub(crate) fn probe(
        session: &Session,
        mechanisms: Vec<MechanismType>,
    ) -> Result<Self, CkError> {
        let mut unknown = Vec::new();
        for attribute in narrowing() {
            let kind = attribute.attribute_type();
            let template = [
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::ValueLen(32u64.into()),
                Attribute::Token(false),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                attribute,
            ];
            match session.generate_key(&Mechanism::GenericSecretKeyGen, &template) {
                // A session object nothing refers to; its session would drop it anyway.
                Ok(probe) => drop(session.destroy_object(probe)),
                Err(CkError::Pkcs11(RvError::AttributeTypeInvalid, _)) => unknown.push(kind),
                Err(e) => return Err(e),
            }
        }
        Ok(Capabilities {
            mechanisms,
            unknown,
        })
    }

    /// Whether the module lists `mechanism`.
    pub(crate) fn has(&self, mechanism: MechanismType) -> bool {
        self.mechanisms.contains(&mechanism)
    }

    /// The names of the attributes of kmsd's templates the module does not know.
    pub(crate) fn unknown_attributes(&self) -> Vec<String> {
        self.unknown.iter().map(ToString::to_string).collect()
    }

    /// `template` without the attributes the module does not know (unchanged on SoftHSM2).
    pub(crate) fn fit(&self, mut template: Vec<Attribute>) -> Vec<Attribute> {
        if !self.unknown.is_empty() {
            template.retain(|a| !self.unknown.contains(&a.attribute_type()));
        }
        template
    }

    /// The key specs the module cannot serve, in the order of [`KeySpec`]'s declaration.
    pub(crate) fn unserved_key_specs(&self) -> Vec<UnservedKeySpec> {
        unserved(&self.mechanisms)
    }

    /// Whether the module can make and use an ECDSA P-256 key pair.
    pub(crate) fn has_ec(&self) -> bool {
        self.has(MechanismType::ECC_KEY_PAIR_GEN) && self.has(MechanismType::ECDSA)
    }
}

/// The key specs a module listing `offered` cannot serve.
fn unserved(offered: &[MechanismType]) -> Vec<UnservedKeySpec> {
    KEY_SPEC_NEEDS
        .iter()
        .filter_map(|(spec, needs)| {
            let missing: Vec<&'static str> = needs
                .iter()
                .filter(|(mechanism, _)| !offered.contains(mechanism))
                .map(|(_, name)| *name)
                .collect();
            (!missing.is_empty()).then_some(UnservedKeySpec {
                spec: *spec,
                missing,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mechanisms Debian's opencryptoki 3.8.1 soft token lists that kmsd's specs need.
    const OPENCRYPTOKI_SOFT: [MechanismType; 6] = [
        MechanismType::RSA_PKCS_KEY_PAIR_GEN,
        MechanismType::RSA_PKCS_PSS,
        MechanismType::SHA256_HMAC,
        MechanismType::SHA384_HMAC,
        MechanismType::SHA512_HMAC,
        MechanismType::GENERIC_SECRET_KEY_GEN,
    ];

    #[test]
    fn a_module_without_ec_cannot_serve_ecc_keys_only() {
        assert_eq!(
            unserved(&OPENCRYPTOKI_SOFT),
            vec![UnservedKeySpec {
                spec: KeySpec::EccNistP256,
                missing: vec!["CKM_EC_KEY_PAIR_GEN", "CKM_ECDSA"],
            }]
        );
    }

    #[test]
    fn a_module_without_hmac_serves_neither_symmetric_default_nor_hmac_keys() {
        let offered: Vec<MechanismType> = OPENCRYPTOKI_SOFT
            .into_iter()
            .filter(|m| *m != MechanismType::SHA256_HMAC)
            .collect();
        let specs: Vec<KeySpec> = unserved(&offered).into_iter().map(|u| u.spec).collect();
        assert_eq!(
            specs,
            vec![
                KeySpec::SymmetricDefault,
                KeySpec::Hmac256,
                KeySpec::EccNistP256
            ]
        );
    }

    #[test]
    fn fit_drops_only_the_unknown_attributes() {
        let template = vec![
            Attribute::Sign(true),
            Attribute::AllowedMechanisms(vec![MechanismType::SHA256_HMAC]),
            Attribute::Copyable(false),
        ];
        let all_known = Capabilities::default();
        assert_eq!(all_known.fit(template.clone()), template);
        let opencryptoki = Capabilities {
            mechanisms: Vec::new(),
            unknown: narrowing().map(|a| a.attribute_type()).to_vec(),
        };
        assert_eq!(opencryptoki.fit(template), vec![Attribute::Sign(true)]);
    }
}
