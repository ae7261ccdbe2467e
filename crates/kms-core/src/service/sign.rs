//! GetPublicKey, Sign and Verify (RSA and ECC keys), GenerateMac and VerifyMac (HMAC keys).
//!
//! Private and secret keys work only in the HSM: Sign and GenerateMac are one HSM call each.
//! Verify runs in software with the public key on record; VerifyMac has the HSM compute the
//! MAC and compares it in constant time.

use subtle::ConstantTimeEq;
use tracing::debug;

use super::{Kms, VerifyInput, current_version};
use crate::asymmetric::{self, MessageType, SigningAlgorithm};
use crate::caller::Caller;
use crate::error::KmsError;
use crate::hsm::SignMechanism;
use crate::ids::{KeyId, KeyRef};
use crate::key::{KeyRecord, KeySpec, KeyUsage, MacAlgorithm};
use crate::policy::Action;

/// The most bytes GenerateMac and VerifyMac take.
pub const MAX_MAC_MESSAGE: usize = 4096;

/// GetPublicKey's answer.
pub struct PublicKeyInfo {
    /// The key, for its id, spec, usage and algorithms.
    pub record: KeyRecord,
    /// DER SubjectPublicKeyInfo.
    pub public_key: Vec<u8>,
}

/// Sign's answer.
pub struct SignatureOutput {
    /// The key's id.
    pub key_id: KeyId,
    /// RSA: the signature; ECDSA: a DER ECDSA-Sig-Value.
    pub signature: Vec<u8>,
    /// The algorithm used.
    pub algorithm: SigningAlgorithm,
}

/// GenerateMac's answer.
pub struct MacOutput {
    /// The key's id.
    pub key_id: KeyId,
    /// The MAC.
    pub mac: Vec<u8>,
    /// The algorithm used.
    pub algorithm: MacAlgorithm,
}

impl Kms {
    /// The public key of an RSA or ECC key that may be used now.
    pub fn get_public_key(&self, caller: &Caller, key: &KeyRef) -> Result<PublicKeyInfo, KmsError> {
        let record = self.usable(caller, key, Action::GetPublicKey, None)?;
        if !record.spec.is_asymmetric() {
            return Err(KmsError::UnsupportedOperation(format!(
                "key {} is {} and has no public key",
                record.id,
                record.spec.as_str()
            )));
        }
        let public_key = self.public_key_of(&record)?.to_vec();
        caller.note_key(record.id, Some(record.current_version()));
        Ok(PublicKeyInfo { record, public_key })
    }

    /// Signs `message` (or a digest) in the HSM with a SIGN_VERIFY key: one HSM operation.
    pub fn sign(
        &self,
        caller: &Caller,
        key: &KeyRef,
        message: &[u8],
        message_type: MessageType,
        algorithm: SigningAlgorithm,
    ) -> Result<SignatureOutput, KmsError> {
        let record = self.usable(caller, key, Action::Sign, None)?;
        check_signing_algorithm(&record, algorithm, "Sign")?;
        let digest = asymmetric::message_digest(algorithm, message_type, message)?;
        let version = current_version(&record)?;
        caller.note_key(record.id, Some(version.key.version));
        let signature = match algorithm {
            SigningAlgorithm::EcdsaSha256 => {
                let raw =
                    self.hsm
                        .sign(version, record.material(), SignMechanism::Ecdsa, &digest)?;
                asymmetric::ecdsa_raw_to_der(&raw)?
            }
            SigningAlgorithm::RsassaPssSha256
            | SigningAlgorithm::RsassaPssSha384
            | SigningAlgorithm::RsassaPssSha512 => self.hsm.sign(
                version,
                record.material(),
                SignMechanism::RsaPss(algorithm.hash()),
                &digest,
            )?,
            SigningAlgorithm::RsassaPkcs1V15Sha256
            | SigningAlgorithm::RsassaPkcs1V15Sha384
            | SigningAlgorithm::RsassaPkcs1V15Sha512 => self.hsm.sign(
                version,
                record.material(),
                SignMechanism::RsaPkcs1,
                &asymmetric::pkcs1_digest_info(algorithm.hash(), &digest),
            )?,
        };
        debug!(key_id = %record.id, algorithm = algorithm.as_str(), "signed");
        Ok(SignatureOutput {
            key_id: record.id,
            signature,
            algorithm,
        })
    }

    /// Verifies a signature with the key's public key. An invalid signature is
    /// KMSInvalidSignatureException.
    pub fn verify(&self, caller: &Caller, input: &VerifyInput) -> Result<KeyId, KmsError> {
        let record = self.usable(caller, &input.key, Action::Verify, None)?;
        let algorithm = input.algorithm;
        check_signing_algorithm(&record, algorithm, "Verify")?;
        let digest = asymmetric::message_digest(algorithm, input.message_type, &input.message)?;
        caller.note_key(record.id, Some(record.current_version()));
        if asymmetric::verify(
            self.public_key_of(&record)?,
            algorithm,
            &digest,
            &input.signature,
        )? {
            Ok(record.id)
        } else {
            Err(KmsError::InvalidSignature)
        }
    }

    /// The HMAC of `message` under an HMAC key, computed by the HSM: one HSM operation.
    pub fn generate_mac(
        &self,
        caller: &Caller,
        key: &KeyRef,
        message: &[u8],
        algorithm: MacAlgorithm,
    ) -> Result<MacOutput, KmsError> {
        let record = self.usable(caller, key, Action::GenerateMac, None)?;
        let mac = self.mac(caller, &record, message, algorithm)?;
        Ok(MacOutput {
            key_id: record.id,
            mac,
            algorithm,
        })
    }

    /// Checks `mac` against the HMAC the HSM computes, in constant time. A wrong MAC is
    /// KMSInvalidMacException.
    pub fn verify_mac(
        &self,
        caller: &Caller,
        key: &KeyRef,
        message: &[u8],
        mac: &[u8],
        algorithm: MacAlgorithm,
    ) -> Result<KeyId, KmsError> {
        let record = self.usable(caller, key, Action::VerifyMac, None)?;
        let expected = self.mac(caller, &record, message, algorithm)?;
        // `ct_eq` on slices of different lengths is false without looking at the bytes.
        if bool::from(expected.as_slice().ct_eq(mac)) {
            Ok(record.id)
        } else {
            Err(KmsError::InvalidMac)
        }
    }

    fn mac(
        &self,
        caller: &Caller,
        record: &KeyRecord,
        message: &[u8],
        algorithm: MacAlgorithm,
    ) -> Result<Vec<u8>, KmsError> {
        record.check_usage(
            KeyUsage::GenerateVerifyMac,
            |spec| spec.mac_algorithm().is_some(),
            "a MAC",
        )?;
        if record.spec.mac_algorithm() != Some(algorithm) {
            return Err(KmsError::InvalidKeyUsage(format!(
                "key {} is {} and does not support {}; use {}",
                record.id,
                record.spec.as_str(),
                algorithm.as_str(),
                record
                    .spec
                    .mac_algorithm()
                    .map_or("no MAC algorithm", MacAlgorithm::as_str)
            )));
        }
        if message.is_empty() || message.len() > MAX_MAC_MESSAGE {
            return Err(KmsError::validation(format!(
                "message must be 1 to {MAX_MAC_MESSAGE} bytes, got {}",
                message.len()
            )));
        }
        let version = current_version(record)?;
        caller.note_key(record.id, Some(version.key.version));
        Ok(self.hsm.sign(
            version,
            record.material(),
            SignMechanism::Hmac(algorithm),
            message,
        )?)
    }
}

/// Fails with InvalidKeyUsageException unless the key signs with `algorithm`.
fn check_signing_algorithm(
    record: &KeyRecord,
    algorithm: SigningAlgorithm,
    operation: &str,
) -> Result<(), KmsError> {
    record.check_usage(KeyUsage::SignVerify, KeySpec::is_asymmetric, operation)?;
    let supported = record.signing_algorithms();
    if supported.contains(&algorithm) {
        return Ok(());
    }
    let names: Vec<&str> = supported.iter().map(|a| a.as_str()).collect();
    Err(KmsError::InvalidKeyUsage(format!(
        "key {} is {} and does not support {}; use {}",
        record.id,
        record.spec.as_str(),
        algorithm.as_str(),
        names.join(", ")
    )))
}
