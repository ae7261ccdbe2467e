//! HKDF-SHA256 (RFC 5869) for the per-message keys, with every secret intermediate wiped.
//!
//! The `hkdf` and `hmac` crates keep the PRK as a SHA-256 chaining state inside structs that
//! have no `zeroize` support, so it stayed in memory after every call. Here the PRK, the HMAC
//! pads, the chaining states and the message blocks all live in [`Zeroizing`] buffers of ours;
//! `sha2` provides only the SHA-256 compression function. Inputs are short (a 32-byte key and
//! a label), so one HMAC call never needs more than a few blocks.

use sha2::digest::consts::U64;
use sha2::digest::generic_array::GenericArray;
use zeroize::Zeroizing;

const BLOCK: usize = 64;

/// SHA-256's initial chaining value (FIPS 180-4, 5.3.3).
const H0: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// A SHA-256 computation whose state and buffered block are wiped when dropped.
struct Sha256 {
    state: Zeroizing<[u32; 8]>,
    block: Zeroizing<[u8; BLOCK]>,
    filled: usize,
    /// Bytes hashed so far.
    len: u64,
}

impl Sha256 {
    fn new() -> Self {
        Sha256 {
            state: Zeroizing::new(H0),
            block: Zeroizing::new([0; BLOCK]),
            filled: 0,
            len: 0,
        }
    }

    fn compress(&mut self) {
        let block: &GenericArray<u8, U64> = GenericArray::from_slice(self.block.as_slice());
        sha2::compress256(&mut self.state, std::slice::from_ref(block));
        self.filled = 0;
    }

    fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        while !data.is_empty() {
            let take = (BLOCK - self.filled).min(data.len());
            let (now, rest) = data.split_at(take);
            self.block[self.filled..self.filled + take].copy_from_slice(now);
            self.filled += take;
            data = rest;
            if self.filled == BLOCK {
                self.compress();
            }
        }
    }

    fn finalize(mut self) -> Zeroizing<[u8; 32]> {
        let bits = self.len.wrapping_mul(8);
        self.update(&[0x80]);
        if self.filled > BLOCK - 8 {
            self.block[self.filled..].fill(0);
            self.compress();
        }
        self.block[self.filled..BLOCK - 8].fill(0);
        self.block[BLOCK - 8..].copy_from_slice(&bits.to_be_bytes());
        self.compress();
        let mut out = Zeroizing::new([0u8; 32]);
        for (chunk, word) in out.chunks_exact_mut(4).zip(self.state.iter()) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        out
    }
}

/// HMAC-SHA256 (RFC 2104) with a 32-byte key over the concatenation of `parts`.
fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let mut pad = Zeroizing::new([0u8; BLOCK]);
    let pad_with = |pad: &mut [u8; BLOCK], byte: u8| {
        pad.fill(byte);
        for (p, k) in pad.iter_mut().zip(key) {
            *p ^= k;
        }
    };
    pad_with(&mut pad, 0x36);
    let mut inner = Sha256::new();
    inner.update(pad.as_slice());
    for part in parts {
        inner.update(part);
    }
    let inner = inner.finalize();
    pad_with(&mut pad, 0x5c);
    let mut outer = Sha256::new();
    outer.update(pad.as_slice());
    outer.update(inner.as_slice());
    outer.finalize()
}

/// HKDF-SHA256 with no salt (so a salt of 32 zero bytes), input key material `ikm`, and
/// `info`, giving 32 bytes (one block of the expansion: T(1) = HMAC(PRK, info || 0x01)).
pub fn hkdf_sha256_32(ikm: &[u8; 32], info: &[u8]) -> Zeroizing<[u8; 32]> {
    let prk = hmac(&[0; 32], &[ikm]);
    hmac(&prk, &[info, &[1]])
}

#[cfg(test)]
mod tests {
    use hkdf::Hkdf;
    use sha2::Digest;

    use super::*;

    #[test]
    fn sha256_matches_the_sha2_crate_at_every_length_around_the_blocks() {
        for len in 0..200 {
            let data: Vec<u8> = (0..len)
                .map(|i| u8::try_from((i * 7 + 3) % 256).unwrap())
                .collect();
            let mut ours = Sha256::new();
            // Fed in two pieces, to cross block boundaries mid-update.
            let (a, b) = data.split_at(len / 3);
            ours.update(a);
            ours.update(b);
            assert_eq!(
                ours.finalize().as_slice(),
                sha2::Sha256::digest(&data).as_slice(),
                "length {len}"
            );
        }
    }

    #[test]
    fn hkdf_matches_rfc_5869_and_the_hkdf_crate() {
        // RFC 5869, test case 3: SHA-256, no salt, no info; the first 32 bytes of the OKM.
        let ikm = [0x0b; 22];
        let prk = hmac(&[0; 32], &[&ikm]);
        assert_eq!(
            hex::encode(prk.as_slice()),
            "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04"
        );
        let okm = hmac(&prk, &[&[1]]);
        assert_eq!(
            hex::encode(okm.as_slice()),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
        );
        for n in 0u8..50 {
            let ikm = [n; 32];
            let info: Vec<u8> = (0..n).collect();
            let mut expected = [0u8; 32];
            Hkdf::<sha2::Sha256>::new(None, &ikm)
                .expand(&info, &mut expected)
                .unwrap();
            assert_eq!(hkdf_sha256_32(&ikm, &info).as_slice(), expected);
        }
    }
}
