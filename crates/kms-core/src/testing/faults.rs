//! [`FaultyKeyStore`]: a [`KeyStore`] wrapper that fails, delays or loses chosen HSM calls,
//! to show that every answered call is right, every failed one has a clear status, and a
//! restart leaves nothing half-made.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use zeroize::Zeroizing;

use crate::asymmetric::HashAlg;
use crate::hsm::{
    HsmError, KeyStore, KeyVersionRef, MessageKey, SignMechanism, VersionObject, WrappingKeyRef,
};
use crate::key::{KeyMaterial, WrappedMaterial, WrappingAlgorithm};

/// What happens to a call the plan picks.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fault {
    /// The call fails before it reaches the HSM, as when the token is gone.
    Unavailable,
    /// The call waits for a session until it gives up.
    Timeout,
    /// The HSM does the work, then the session is lost before the answer: the caller sees
    /// the HSM unavailable although, say, the key was made.
    LostAfter,
    /// The call is slow, then goes through.
    Delay(Duration),
}

/// A [`KeyStore`] that applies `fault` to every `every`-th call (1 = every call) whose
/// operation name `picks` accepts; the others go through to `inner`. Operation names are the
/// trait's method names (`create_key_version`, `derive_message_key`, `sign`, ...).
pub struct FaultyKeyStore {
    inner: Arc<dyn KeyStore>,
    picks: fn(&str) -> bool,
    fault: Fault,
    every: u64,
    calls: AtomicU64,
    injected: AtomicU64,
}

impl FaultyKeyStore {
    /// Wraps `inner`.
    pub fn new(
        inner: Arc<dyn KeyStore>,
        picks: fn(&str) -> bool,
        fault: Fault,
        every: u64,
    ) -> Self {
        FaultyKeyStore {
            inner,
            picks,
            fault,
            every: every.max(1),
            calls: AtomicU64::new(0),
            injected: AtomicU64::new(0),
        }
    }

    /// How many faults were injected.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// Runs `call` on the inner store unless the plan picks this call for a fault.
    fn call<T>(
        &self,
        operation: &'static str,
        call: impl FnOnce(&dyn KeyStore) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let picked = (self.picks)(operation)
            && self.calls.fetch_add(1, Ordering::SeqCst) % self.every == self.every - 1;
        if !picked {
            return call(self.inner.as_ref());
        }
        self.injected.fetch_add(1, Ordering::SeqCst);
        let lost =
            || HsmError::Unavailable(format!("injected: session lost in {operation}").into());
        match self.fault {
            Fault::Unavailable => Err(lost()),
            Fault::Timeout => Err(HsmError::Timeout),
            Fault::LostAfter => {
                let _ = call(self.inner.as_ref());
                Err(lost())
            }
            Fault::Delay(delay) => {
                std::thread::sleep(delay);
                call(self.inner.as_ref())
            }
        }
    }
}

impl KeyStore for FaultyKeyStore {
    fn create_key_version(
        &self,
        key: KeyVersionRef,
        material: KeyMaterial,
    ) -> Result<Option<Vec<u8>>, HsmError> {
        self.call("create_key_version", |k| {
            k.create_key_version(key, material)
        })
    }

    fn sign(
        &self,
        key: VersionObject<'_>,
        material: KeyMaterial,
        mechanism: SignMechanism,
        data: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        self.call("sign", |k| k.sign(key, material, mechanism, data))
    }

    fn rsa_decrypt(
        &self,
        key: VersionObject<'_>,
        hash: HashAlg,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        self.call("rsa_decrypt", |k| k.rsa_decrypt(key, hash, ciphertext))
    }

    fn create_wrapping_key(
        &self,
        key: WrappingKeyRef,
        bits: u32,
        algorithm: WrappingAlgorithm,
    ) -> Result<Vec<u8>, HsmError> {
        self.call("create_wrapping_key", |k| {
            k.create_wrapping_key(key, bits, algorithm)
        })
    }

    fn unwrap_key_version(
        &self,
        key: KeyVersionRef,
        material: KeyMaterial,
        wrapping: WrappingKeyRef,
        algorithm: WrappingAlgorithm,
        wrapped: &[u8],
    ) -> Result<Option<usize>, HsmError> {
        self.call("unwrap_key_version", |k| {
            k.unwrap_key_version(key, material, wrapping, algorithm, wrapped)
        })
    }

    fn import_wrapped_version(
        &self,
        key: KeyVersionRef,
        material: KeyMaterial,
        wrapping: WrappingKeyRef,
        algorithm: WrappingAlgorithm,
        wrapped: &[u8],
    ) -> Result<(WrappedMaterial, Option<usize>), HsmError> {
        self.call("unwrap_key_version", |k| {
            k.import_wrapped_version(key, material, wrapping, algorithm, wrapped)
        })
    }

    fn destroy_wrapping_key(&self, key: WrappingKeyRef) -> Result<(), HsmError> {
        self.call("destroy_wrapping_key", |k| k.destroy_wrapping_key(key))
    }

    fn list_wrapping_keys(&self) -> Result<Vec<WrappingKeyRef>, HsmError> {
        self.call("list_wrapping_keys", |k| k.list_wrapping_keys())
    }

    fn derive_message_key(
        &self,
        key: VersionObject<'_>,
        input: &[u8],
    ) -> Result<MessageKey, HsmError> {
        self.call("derive_message_key", |k| k.derive_message_key(key, input))
    }

    fn forget_unwrapped(&self, key: crate::ids::KeyId) {
        self.inner.forget_unwrapped(key);
    }

    fn create_wrapped_version(
        &self,
        key: KeyVersionRef,
        material: KeyMaterial,
    ) -> Result<(WrappedMaterial, Option<Vec<u8>>), HsmError> {
        self.call("create_key_version", |k| {
            k.create_wrapped_version(key, material)
        })
    }

    fn use_domain(&self, version: u32) -> Result<crate::hsm::DomainKeyInfo, HsmError> {
        self.call("use_domain", |k| k.use_domain(version))
    }

    fn domain_key(&self, version: u32) -> Result<Option<crate::hsm::DomainKeyInfo>, HsmError> {
        self.call("domain_key", |k| k.domain_key(version))
    }

    fn rewrap_version(
        &self,
        key: VersionObject<'_>,
        material: KeyMaterial,
    ) -> Result<WrappedMaterial, HsmError> {
        self.call("rewrap_version", |k| k.rewrap_version(key, material))
    }

    fn destroy_domain(&self, version: u32) -> Result<bool, HsmError> {
        self.call("destroy_domain", |k| k.destroy_domain(version))
    }

    fn random_bytes(&self, len: usize) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        self.call("random_bytes", |k| k.random_bytes(len))
    }

    fn destroy_key_version(&self, key: KeyVersionRef) -> Result<(), HsmError> {
        self.call("destroy_key_version", |k| k.destroy_key_version(key))
    }

    fn list_key_versions(&self) -> Result<Vec<KeyVersionRef>, HsmError> {
        self.call("list_key_versions", |k| k.list_key_versions())
    }
}
