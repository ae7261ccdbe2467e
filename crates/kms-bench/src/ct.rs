//! kms-ct: dudect-style timing checks of the comparisons that must not leak, with a control
//! that must.
//!
//! For each check, two classes of inputs that should take the same time (a commitment, or a
//! MAC, wrong in its first byte or in its last; an OAEP block failing at its first check or
//! at its last) are run interleaved in random order, each run timed. Welch's t-statistic
//! compares the two classes' times, over all samples and over the samples below several
//! percentiles (dudect's cropping, which keeps interrupts and migrations from hiding a
//! difference). A largest |t| above [`THRESHOLD`] means the times differ: a leak. The control,
//! a byte-by-byte comparison that stops at the first difference, must be caught, or the
//! statistic proves nothing on this machine.
//!
//! `kms-ct [--samples N]` prints one line per check and exits 1 when a check leaks or the
//! control is not caught.
#![forbid(unsafe_code)]
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "statistics over at most millions of nanosecond timings"
)]

use std::hint::black_box;
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::Parser;
use kms_core::asymmetric::{self, HashAlg};
use kms_core::hsm::{KeyVersionRef, MessageKey};
use kms_core::key::{KeySpec, MacAlgorithm};
use kms_core::service::CreateKeyInput;
use kms_core::testing::{admin, memory_kms};
use kms_core::{EncryptionContext, KeyId, KeyRef, blob, symmetric};
use zeroize::Zeroizing;

/// dudect's bound for "definitely not constant time".
const THRESHOLD: f64 = 10.0;

/// The percentiles the samples are cropped at, besides taking them all.
const CROPS: [f64; 5] = [0.5, 0.75, 0.9, 0.95, 0.99];

#[derive(Parser)]
#[command(
    version,
    about = "dudect-style timing checks of kms-core's secret comparisons"
)]
struct Args {
    /// Timed runs per check (both classes together).
    #[arg(long, default_value_t = 200_000)]
    samples: usize,
}

/// One timed operation on class `false` or `true`; returns whether it ended as both classes
/// must (failing to open, failing to verify...).
type Run = Box<dyn FnMut(bool) -> bool>;

fn main() -> anyhow::Result<std::process::ExitCode> {
    let args = Args::parse();
    let checks: [(&str, bool, Run); 6] = [
        ("commitment (blob open)", false, commitment()?),
        ("MAC (VerifyMac)", false, mac(false)?),
        ("OAEP decoding (failures)", false, oaep()?),
        ("control: early exit, 4 KiB", true, control(4096)),
        ("control: early exit, 32 B", true, control(32)),
        ("control: VerifyMac, early exit", true, mac(true)?),
    ];
    let mut ok = true;
    for (name, should_leak, mut run) in checks {
        let times = measure(args.samples, &mut *run).with_context(|| name.to_owned())?;
        let t = max_abs_t(&times);
        let leaks = t > THRESHOLD;
        let verdict = match (leaks, should_leak) {
            (false, false) => "constant time",
            (true, true) => "caught (as it must be)",
            (true, false) => "LEAKS",
            (false, true) => "NOT CAUGHT: the statistic sees nothing here",
        };
        ok &= leaks == should_leak;
        println!(
            "kms-ct: {name:<30} n={:<8} max |t| = {t:>8.2} (threshold {THRESHOLD}): {verdict}",
            args.samples
        );
    }
    Ok(if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// Times `run` `samples` times, each on a random class; returns the times of class `false`
/// and of class `true`, in nanoseconds.
fn measure(samples: usize, run: &mut dyn FnMut(bool) -> bool) -> anyhow::Result<[Vec<f64>; 2]> {
    let mut classes = vec![0u8; samples];
    getrandom::fill(&mut classes)?;
    let mut times = [
        Vec::with_capacity(samples / 2),
        Vec::with_capacity(samples / 2),
    ];
    let mut as_expected = true;
    // Warm up caches and branch predictors on both classes.
    for class in classes.iter().take(1000) {
        as_expected &= run(class & 1 == 1);
    }
    for class in classes {
        let class = class & 1 == 1;
        let started = Instant::now();
        let done = run(class);
        let elapsed = started.elapsed().as_nanos() as f64;
        as_expected &= done;
        times[usize::from(class)].push(elapsed);
    }
    if !as_expected {
        bail!("an operation did not end as its class must");
    }
    Ok(times)
}

/// The largest |t| over all samples and each cropping.
fn max_abs_t(times: &[Vec<f64>; 2]) -> f64 {
    let mut all: Vec<f64> = times.iter().flatten().copied().collect();
    all.sort_by(f64::total_cmp);
    let mut limits = vec![f64::INFINITY];
    for crop in CROPS {
        let index = ((all.len() as f64 * crop) as usize).min(all.len().saturating_sub(1));
        limits.push(all.get(index).copied().unwrap_or(f64::INFINITY));
    }
    limits
        .into_iter()
        .map(|limit| {
            let [a, b] = times.each_ref().map(|t| {
                t.iter()
                    .copied()
                    .filter(|&x| x <= limit)
                    .collect::<Vec<_>>()
            });
            welch_t(&a, &b).abs()
        })
        .fold(0.0, f64::max)
}

/// Welch's t-statistic of two samples (0 when either has fewer than two values).
fn welch_t(a: &[f64], b: &[f64]) -> f64 {
    let stats = |x: &[f64]| {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (n, mean, var)
    };
    if a.len() < 2 || b.len() < 2 {
        return 0.0;
    }
    let (na, ma, va) = stats(a);
    let (nb, mb, vb) = stats(b);
    let se = (va / na + vb / nb).sqrt();
    if se == 0.0 { 0.0 } else { (ma - mb) / se }
}

/// Opening a blob whose commitment is wrong in its first byte, or in its last.
fn commitment() -> anyhow::Result<Run> {
    let key = KeyVersionRef {
        key_id: KeyId::from_bytes([1; 16]),
        version: 1,
    };
    let k_msg = MessageKey::new(Zeroizing::new([7; 32]));
    let context = EncryptionContext::empty();
    let sealed = symmetric::seal(&k_msg, key, [3; 32], &context, &[0; 64])?;
    // The commitment is the last 32 bytes of the header.
    let end = blob::HEADER_LEN;
    let wrong = |at: usize| {
        let mut blob = sealed.clone();
        blob[at] ^= 1;
        blob
    };
    let blobs = [wrong(end - 32), wrong(end - 1)];
    Ok(Box::new(move |class| {
        blob::parse(black_box(&blobs[usize::from(class)]))
            .is_ok_and(|parsed| symmetric::open(&k_msg, &parsed, &context).is_err())
    }))
}

/// VerifyMac with a MAC wrong in its first byte, or in its last. With `leaky`, the control:
/// the same work (the HSM's HMAC, the policy, the store), then the MACs compared byte by
/// byte with an early exit, which the statistic must see through that work's noise.
fn mac(leaky: bool) -> anyhow::Result<Run> {
    let (kms, _, _) = memory_kms();
    let record = kms.create_key(&admin(), CreateKeyInput::new(KeySpec::Hmac256))?;
    let key = KeyRef::Id(record.id());
    let message = b"timed message";
    let mac = kms
        .generate_mac(&admin(), &key, message, MacAlgorithm::HmacSha256)?
        .mac;
    let wrong = |at: usize| {
        let mut mac = mac.clone();
        mac[at] ^= 1;
        mac
    };
    let macs = [wrong(0), wrong(31)];
    let caller = admin();
    Ok(Box::new(move |class| {
        let given = black_box(&macs[usize::from(class)]);
        if !leaky {
            return kms
                .verify_mac(&caller, &key, message, given, MacAlgorithm::HmacSha256)
                .is_err();
        }
        kms.generate_mac(&caller, &key, message, MacAlgorithm::HmacSha256)
            .is_ok_and(|expected| {
                !expected
                    .mac
                    .iter()
                    .zip(given.iter())
                    .all(|(a, b)| black_box(a) == black_box(b))
            })
    }))
}

/// OAEP decoding of a 2048-bit block that fails at its first check (Y is not 0) or past it
/// (Y is 0; the label hash and separator are random, so they fail): Manger's attack needs
/// exactly this difference.
fn oaep() -> anyhow::Result<Run> {
    let mut blocks = [[0u8; 256]; 2];
    for block in &mut blocks {
        getrandom::fill(block)?;
    }
    blocks[0][0] = 1;
    blocks[1][0] = 0;
    Ok(Box::new(move |class| {
        asymmetric::oaep_decode(HashAlg::Sha256, black_box(&blocks[usize::from(class)])).is_err()
    }))
}

/// The control: comparing `len` bytes one by one, stopping at the first difference, which is
/// the first byte or the last. At 32 bytes (a MAC's length) the difference is a few
/// nanoseconds: what the statistic must still see.
fn control(len: usize) -> Run {
    let reference = vec![0x5au8; len];
    let wrong = |at: usize| {
        let mut other = reference.clone();
        other[at] ^= 1;
        other
    };
    let others = [wrong(0), wrong(len - 1)];
    Box::new(move |class| {
        let other = black_box(&others[usize::from(class)]);
        !reference
            .iter()
            .zip(other.iter())
            .all(|(a, b)| black_box(a) == black_box(b))
    })
}
