//! The HSM limit: the SYMMETRIC_DEFAULT derivation as raw PKCS#11 calls on kmsd's token,
//! from this process, with no service in between.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::UserType;
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use crate::report::Sample;

/// A logged-in module and a session HMAC key of its own (gone when the process ends).
pub struct Limit {
    pkcs11: Pkcs11,
    slot: Slot,
    key: ObjectHandle,
}

impl Limit {
    /// Opens the module, logs in to the token labelled `label`, and makes a 256-bit session
    /// secret that only signs, like kmsd's master secrets.
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
                Attribute::Token(false),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
            ],
        )?;
        // Session objects live as long as a session of this application: keep this one open.
        std::mem::forget(session);
        Ok(Limit { pkcs11, slot, key })
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
