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
mod tests;
