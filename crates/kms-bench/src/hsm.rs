//! The HSM limit: the SYMMETRIC_DEFAULT derivation as raw PKCS#11 calls on kmsd's token,
//! from this process, with no service in between.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use crate::report::Sample;

/// A logged-in module and an HMAC key of its own on the token, like kmsd's master secrets
/// (a token object: SoftHSM2 checks its file on every use, as it does for kmsd's keys).
/// Destroyed on drop.
pub struct Limit {
    pkcs11: Pkcs11,
    slot: Slot,
    key: ObjectHandle,
    /// Keeps the login, and destroys the key at the end.
    owner: Mutex<Session>,
}

impl Limit {
    /// Opens the module, logs in to the token labelled `label`, and makes a 256-bit secret
    /// that only signs, with kmsd's custody attributes.
    pub fn open(module: &Path, label: &str, pin_file: &Path) -> anyhow::Result<Self> {
        let pin = Zeroizing::new(
            std::fs::read_to_string(pin_file)
                .with_context(|| format!("reading {}", pin_file.display()))?
                .trim_end()
                .to_owned(),
        );
        let pkcs11 = Pkcs11::new(module)?;
        pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
        let slot = pkcs11
            .get_slots_with_token()?
            .into_iter()
            .find(|s| {
                pkcs11
                    .get_token_info(*s)
                    .is_ok_and(|i| i.label().trim_end() == label)
            })
            .with_context(|| format!("no token labelled {label}"))?;
        let session = pkcs11.open_rw_session(slot)?;
        session.login(UserType::User, Some(&AuthPin::from(pin.as_str())))?;
        let key = session.generate_key(
            &Mechanism::GenericSecretKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::ValueLen(32.into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Label(b"kms-bench/hsm-limit".to_vec()),
            ],
        )?;
        Ok(Limit {
            pkcs11,
            slot,
            key,
            owner: Mutex::new(session),
        })
    }
}

impl Drop for Limit {
    fn drop(&mut self) {
        let session = self.owner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = session.destroy_object(self.key) {
            eprintln!("kms-bench: could not destroy its HSM key kms-bench/hsm-limit: {e}");
        }
    }
}

/// `concurrency` threads, each with its own session, sign back to back: `warmup` seconds,
/// then `seconds` counted.
pub fn run(
    limit: &Arc<Limit>,
    concurrency: usize,
    warmup: u64,
    seconds: u64,
) -> anyhow::Result<Sample> {
    let input = [7u8; 69]; // the derivation input: a 37-byte label and a 32-byte nonce
    let start = Instant::now();
    let warm = start + Duration::from_secs(warmup);
    let end = warm + Duration::from_secs(seconds);
    let threads: Vec<_> = (0..concurrency)
        .map(|_| {
            let limit = Arc::clone(limit);
            std::thread::spawn(move || -> anyhow::Result<(u64, u64)> {
                let session = limit.pkcs11.open_ro_session(limit.slot)?;
                let (mut ok, mut errors) = (0u64, 0u64);
                loop {
                    let now = Instant::now();
                    if now >= end {
                        return Ok((ok, errors));
                    }
                    let result = session.sign(&Mechanism::Sha256Hmac, limit.key, &input);
                    if now >= warm {
                        if result.is_ok() {
                            ok += 1;
                        } else {
                            errors += 1;
                        }
                    }
                }
            })
        })
        .collect();
    let (mut ok, mut errors) = (0, 0);
    for thread in threads {
        let (o, e) = thread
            .join()
            .map_err(|_| anyhow::anyhow!("an HSM thread panicked"))??;
        ok += o;
        errors += e;
    }
    Ok(Sample::count_only(ok, errors))
}
