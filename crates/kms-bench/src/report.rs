//! Latency samples, percentiles, and the table kms-bench prints.

use std::time::Duration;

/// The latencies (microseconds) of the successful calls of a run, and its error count.
#[derive(Default)]
pub struct Sample {
    latencies_us: Vec<u64>,
    errors: u64,
    /// Calls made during the warm-up (not timed, but seen by kmsd's counters).
    warmup_calls: u64,
    /// Successful calls counted without a latency (the HSM limit).
    untimed: u64,
}

impl Sample {
    /// Records one call.
    pub fn record(&mut self, elapsed: Duration, ok: bool) {
        if ok {
            self.latencies_us
                .push(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
        } else {
            self.errors += 1;
        }
    }

    /// Counts a call made during the warm-up.
    pub fn record_warmup(&mut self) {
        self.warmup_calls += 1;
    }

    /// Adds another worker's calls.
    pub fn merge(&mut self, other: Sample) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        self.warmup_calls += other.warmup_calls;
        self.untimed += other.untimed;
    }

    /// Every call kmsd saw, warm-up included.
    pub fn total(&self) -> u64 {
        self.latencies_us.len() as u64 + self.untimed + self.errors + self.warmup_calls
    }

    /// A sample of `ops` successful and `errors` failed operations, without latencies (the
    /// HSM limit counts only).
    pub fn count_only(ops: u64, errors: u64) -> Self {
        Sample {
            errors,
            untimed: ops,
            ..Sample::default()
        }
    }
}

/// One line of the report.
#[derive(serde::Serialize)]
pub struct Row {
    pub op: String,
    pub concurrency: usize,
    pub ops_per_sec: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub errors: u64,
    /// SYMMETRIC_DEFAULT derivations (C_Sign HMAC) per call, from kmsd's counter.
    pub derivations_per_op: Option<f64>,
    /// Audit checkpoint signatures per call (one per group commit of the audit log).
    pub audit_signatures_per_op: Option<f64>,
}

impl Row {
    /// The row of `sample`, measured over `seconds`.
    pub fn new(
        op: &str,
        concurrency: usize,
        seconds: u64,
        mut sample: Sample,
        hsm_calls: Option<HsmCalls>,
    ) -> Self {
        let sample_total = sample.total().max(1);
        sample.latencies_us.sort_unstable();
        let percentile = |permille: usize| {
            let n = sample.latencies_us.len();
            (n > 0).then(|| {
                // Nearest rank.
                let rank = (permille * n).div_ceil(1000).clamp(1, n);
                sample.latencies_us[rank - 1] as f64 / 1000.0
            })
        };
        Row {
            op: op.to_owned(),
            concurrency,
            ops_per_sec: (sample.latencies_us.len() as u64 + sample.untimed) as f64
                / seconds.max(1) as f64,
            p50_ms: percentile(500),
            p99_ms: percentile(990),
            p999_ms: percentile(999),
            errors: sample.errors,
            derivations_per_op: hsm_calls.map(|c| c.derivations as f64 / sample_total as f64),
            audit_signatures_per_op: hsm_calls
                .map(|c| c.audit_signatures as f64 / sample_total as f64),
        }
    }
}

/// kmsd's HSM calls during a run.
#[derive(Clone, Copy)]
pub struct HsmCalls {
    /// `hmac` calls: SYMMETRIC_DEFAULT derivations.
    pub derivations: u64,
    /// `sign audit checkpoint` calls.
    pub audit_signatures: u64,
}

fn per_op(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"))
}

/// Prints one concurrency's rows, with each operation's throughput as a share of the empty
/// RPC's (the transport limit) and of the raw HSM's.
pub fn print(rows: &[Row]) {
    let of = |name: &str| rows.iter().find(|r| r.op == name).map(|r| r.ops_per_sec);
    let (empty, hsm) = (of("Empty"), of("HsmLimit"));
    let share = |row: &Row, limit: Option<f64>| {
        limit.filter(|l| *l > 0.0).map_or_else(
            || "-".to_owned(),
            |l| format!("{:.0}%", 100.0 * row.ops_per_sec / l),
        )
    };
    println!(
        "{:<16} {:>10} {:>9} {:>9} {:>9} {:>7} {:>9} {:>8} {:>7} {:>8}",
        "op",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "errors",
        "vs empty",
        "vs HSM",
        "HMAC/op",
        "audit/op"
    );
    for row in rows {
        println!(
            "{:<16} {:>10.0} {:>9} {:>9} {:>9} {:>7} {:>9} {:>8} {:>7} {:>8}",
            row.op,
            row.ops_per_sec,
            ms(row.p50_ms),
            ms(row.p99_ms),
            ms(row.p999_ms),
            row.errors,
            share(row, empty),
            share(row, hsm),
            per_op(row.derivations_per_op),
            per_op(row.audit_signatures_per_op),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut sample = Sample::default();
        for us in 1..=1000 {
            sample.record(Duration::from_micros(us), true);
        }
        sample.record(Duration::from_micros(5), false);
        let row = Row::new("x", 1, 10, sample, None);
        assert_eq!(row.p50_ms, Some(0.5));
        assert_eq!(row.p99_ms, Some(0.99));
        assert_eq!(row.p999_ms, Some(0.999));
        assert_eq!(row.errors, 1);
        assert!((row.ops_per_sec - 100.0).abs() < 1e-9);
    }

    #[test]
    fn count_only_samples_have_a_rate_but_no_percentiles() {
        let row = Row::new("HsmLimit", 4, 10, Sample::count_only(1_000, 2), None);
        assert!((row.ops_per_sec - 100.0).abs() < 1e-9);
        assert_eq!((row.p50_ms, row.p99_ms, row.p999_ms), (None, None, None));
        assert_eq!(row.errors, 2);
    }
}
