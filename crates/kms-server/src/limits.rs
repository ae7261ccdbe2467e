//! Admission control: a limit on the requests running at once, a token-bucket rate limit per
//! caller, and a second, lower one per caller for the calls that make the HSM generate key
//! material ([`KEY_GENERATING`]: an RSA-4096 pair takes SoftHSM2 seconds). A request over any
//! limit is refused at once with ThrottlingException (RESOURCE_EXHAUSTED), before it reaches
//! the HSM or the store, so one caller's flood costs the others little.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kms_core::KmsError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A rate: `per_second` requests a second on average, with bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Requests a second, sustained.
    pub per_second: f64,
    /// Requests at once after a quiet spell (the bucket's size), at least 1.
    pub burst: f64,
}

/// The operations that make the HSM generate key material.
pub const KEY_GENERATING: [&str; 3] = ["CreateKey", "RotateKeyOnDemand", "GetParametersForImport"];

/// The limits of one server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// The most requests running at once.
    pub max_concurrent: usize,
    /// Each caller's rate, or `None` for no rate limit.
    pub per_caller: Option<Rate>,
    /// How long a request may run before the caller gets DependencyTimeoutException.
    pub request_timeout: Duration,
    /// Each caller's rate of [`KEY_GENERATING`] calls, or `None` for no such limit.
    pub key_generation_per_caller: Option<Rate>,
    /// The most [`KEY_GENERATING`] calls running at once, all callers together.
    pub key_generation_concurrent: usize,
}

impl Limits {
    /// The default most requests running at once.
    pub const DEFAULT_MAX_CONCURRENT: usize = 512;
    /// The default requests a second per caller (its burst is twice that).
    pub const DEFAULT_PER_CALLER: u32 = 5000;
    /// The default request timeout.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
    /// The default [`KEY_GENERATING`] calls a second per caller (bursts of four times that),
    /// as AWS KMS's CreateKey quota.
    pub const DEFAULT_KEY_GENERATION_PER_CALLER: u32 = 5;
    /// The default most [`KEY_GENERATING`] calls at once: a few, so key pairs being made
    /// leave the HSM's sessions to everyone else.
    pub const DEFAULT_KEY_GENERATION_CONCURRENT: usize = 4;
}

impl Default for Limits {
    /// kmsd's defaults: 512 requests at once, 5000 a second per caller in bursts of 10000,
    /// a 30 s timeout, and 5 key-generating calls a second per caller in bursts of 20, 4 at
    /// once.
    fn default() -> Self {
        let per_second = f64::from(Limits::DEFAULT_PER_CALLER);
        let key_generation = f64::from(Limits::DEFAULT_KEY_GENERATION_PER_CALLER);
        Limits {
            max_concurrent: Limits::DEFAULT_MAX_CONCURRENT,
            per_caller: Some(Rate {
                per_second,
                burst: 2.0 * per_second,
            }),
            request_timeout: Limits::DEFAULT_REQUEST_TIMEOUT,
            key_generation_per_caller: Some(Rate {
                per_second: key_generation,
                burst: 4.0 * key_generation,
            }),
            key_generation_concurrent: Limits::DEFAULT_KEY_GENERATION_CONCURRENT,
        }
    }
}

/// Buckets are swept when there are more than this many: a caller whose bucket has refilled
/// is forgotten, since a full bucket is what a new caller gets anyway.
const SWEEP_ABOVE: usize = 4096;

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// One token bucket per caller, at one rate.
struct Buckets {
    rate: Rate,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Buckets {
    fn new(rate: Rate) -> Self {
        Buckets {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Refills `caller`'s bucket to `now`; if it holds a token, runs `admit` and, if that
    /// admits, takes the token. Otherwise ThrottlingException, naming `what` is limited.
    fn take<T>(
        &self,
        caller: &str,
        now: Instant,
        what: &str,
        admit: impl FnOnce() -> Result<T, KmsError>,
    ) -> Result<T, KmsError> {
        let rate = self.rate;
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() > SWEEP_ABOVE {
            buckets.retain(|_, bucket| {
                let idle = now.saturating_duration_since(bucket.updated).as_secs_f64();
                bucket.tokens + idle * rate.per_second < rate.burst
            });
        }
        let bucket = buckets.entry(caller.to_owned()).or_insert(Bucket {
            tokens: rate.burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate.per_second).min(rate.burst);
        bucket.updated = now;
        if bucket.tokens < 1.0 {
            return Err(KmsError::Throttling(format!(
                "rate exceeded: this caller may make {} {what} a second (bursts of {}); retry \
                 with backoff",
                rate.per_second, rate.burst
            )));
        }
        let admitted = admit()?;
        bucket.tokens -= 1.0;
        Ok(admitted)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// The admission controller: see the module documentation.
pub struct Admission {
    limits: Limits,
    running: Arc<Semaphore>,
    per_caller: Option<Buckets>,
    key_generation: Option<Buckets>,
    generating: Arc<Semaphore>,
}

/// A request's place among the running requests (and the key-generating ones); it frees it
/// when dropped.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    _generating: Option<OwnedSemaphorePermit>,
}

impl Admission {
    /// An admission controller enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Admission {
            running: Arc::new(Semaphore::new(limits.max_concurrent)),
            per_caller: limits.per_caller.map(Buckets::new),
            key_generation: limits.key_generation_per_caller.map(Buckets::new),
            generating: Arc::new(Semaphore::new(limits.key_generation_concurrent)),
            limits,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Admits one `operation` request of `caller` (a principal, or the peer's address when
    /// there is none), or refuses it with ThrottlingException. The caller's rates are charged
    /// only for admitted requests.
    pub fn admit(&self, caller: &str, operation: &str) -> Result<Admitted, KmsError> {
        self.admit_at(caller, operation, Instant::now())
    }

    fn admit_at(&self, caller: &str, operation: &str, now: Instant) -> Result<Admitted, KmsError> {
        let admit = || match &self.per_caller {
            Some(buckets) => buckets.take(caller, now, "requests", || self.take_permit()),
            None => self.take_permit(),
        };
        if !KEY_GENERATING.contains(&operation) {
            return admit();
        }
        let generating = Arc::clone(&self.generating)
            .try_acquire_owned()
            .map_err(|_| {
                KmsError::Throttling(format!(
                    "the HSM is generating its limit of {} keys at once; retry with backoff",
                    self.limits.key_generation_concurrent
                ))
            })?;
        let admitted = match &self.key_generation {
            Some(buckets) => buckets.take(caller, now, "key-generating calls", admit),
            None => admit(),
        }?;
        Ok(Admitted {
            _generating: Some(generating),
            ..admitted
        })
    }

    fn take_permit(&self) -> Result<Admitted, KmsError> {
        Arc::clone(&self.running)
            .try_acquire_owned()
            .map(|permit| Admitted {
                _permit: permit,
                _generating: None,
            })
            .map_err(|_| {
                KmsError::Throttling(format!(
                    "the server is running its limit of {} requests at once; retry with backoff",
                    self.limits.max_concurrent
                ))
            })
    }

    /// Requests running now.
    pub fn running(&self) -> usize {
        self.limits.max_concurrent - self.running.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_concurrent: usize, per_caller: Option<Rate>) -> Limits {
        Limits {
            max_concurrent,
            per_caller,
            ..Limits::default()
        }
    }

    fn is_throttled(result: &Result<Admitted, KmsError>) -> bool {
        matches!(result, Err(KmsError::Throttling(_)))
    }

    #[test]
    fn refuses_requests_over_the_concurrency_limit_until_one_ends() {
        let admission = Admission::new(limits(2, None));
        let first = admission.admit("a", "Encrypt");
        let second = admission.admit("b", "Encrypt");
        assert!(first.is_ok() && second.is_ok());
        assert_eq!(admission.running(), 2);
        let third = admission.admit("c", "Encrypt");
        assert!(is_throttled(&third));
        assert_eq!(third.err().map(|e| e.reason()), Some("ThrottlingException"));
        drop(first);
        assert!(admission.admit("c", "Encrypt").is_ok());
    }

    #[test]
    fn each_caller_has_its_own_bucket_that_refills_at_the_rate() {
        let rate = Rate {
            per_second: 10.0,
            burst: 3.0,
        };
        let admission = Admission::new(limits(100, Some(rate)));
        let start = Instant::now();
        for _ in 0..3 {
            assert!(admission.admit_at("flood", "Encrypt", start).is_ok());
        }
        assert!(is_throttled(&admission.admit_at("flood", "Encrypt", start)));
        // Another caller is not affected by the first one's empty bucket.
        assert!(admission.admit_at("quiet", "Encrypt", start).is_ok());
        // A tenth of a second refills one request, not more.
        let later = start + Duration::from_millis(100);
        assert!(admission.admit_at("flood", "Encrypt", later).is_ok());
        assert!(is_throttled(&admission.admit_at("flood", "Encrypt", later)));
        // A long pause refills the burst, no more.
        let much_later = start + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(admission.admit_at("flood", "Encrypt", much_later).is_ok());
        }
        assert!(is_throttled(
            &admission.admit_at("flood", "Encrypt", much_later)
        ));
    }

    #[test]
    fn a_request_refused_for_concurrency_costs_no_rate() {
        let rate = Rate {
            per_second: 1.0,
            burst: 1.0,
        };
        let admission = Admission::new(limits(1, Some(rate)));
        let now = Instant::now();
        let running = admission.admit_at("a", "Encrypt", now);
        assert!(running.is_ok());
        assert!(is_throttled(&admission.admit_at("b", "Encrypt", now)));
        drop(running);
        assert!(
            admission.admit_at("b", "Encrypt", now).is_ok(),
            "b's token was not spent"
        );
    }

    #[test]
    fn refilled_callers_are_forgotten_when_there_are_many() {
        let rate = Rate {
            per_second: 1.0,
            burst: 2.0,
        };
        let admission = Admission::new(limits(10_000, Some(rate)));
        let start = Instant::now();
        for i in 0..=SWEEP_ABOVE {
            drop(admission.admit_at(&format!("caller-{i}"), "Encrypt", start));
        }
        // Two seconds refill every bucket.
        drop(admission.admit_at("late", "Encrypt", start + Duration::from_secs(2)));
        let remembered = admission.per_caller.as_ref().map(Buckets::len);
        assert_eq!(remembered, Some(1), "only the caller seen last is kept");
    }

    /// Finding 6 of the security review: the calls that make the HSM generate key material
    /// have a rate of their own, far below the general one, and a limit on how many run at
    /// once.
    #[test]
    fn key_generating_calls_have_their_own_lower_rate_and_concurrency() {
        let admission = Admission::new(Limits::default());
        let now = Instant::now();
        // The burst is 20.
        for operation in KEY_GENERATING.iter().cycle().take(20) {
            assert!(admission.admit_at("tenant", operation, now).is_ok());
        }
        for operation in KEY_GENERATING {
            let refused = admission.admit_at("tenant", operation, now);
            assert!(is_throttled(&refused), "{operation}");
        }
        // Other calls of the same caller, and another caller's, still pass.
        assert!(admission.admit_at("tenant", "Encrypt", now).is_ok());
        assert!(admission.admit_at("other", "CreateKey", now).is_ok());
        let later = now + Duration::from_millis(200);
        assert!(admission.admit_at("tenant", "CreateKey", later).is_ok());

        // Four at once, whoever calls; the fifth waits for one to end.
        let running: Vec<_> = (0..4)
            .map(|i| admission.admit_at(&format!("caller-{i}"), "CreateKey", now))
            .collect();
        assert!(running.iter().all(Result::is_ok));
        assert!(is_throttled(&admission.admit_at(
            "caller-5",
            "CreateKey",
            now
        )));
        assert!(admission.admit_at("caller-5", "Encrypt", now).is_ok());
        drop(running);
        assert!(admission.admit_at("caller-5", "CreateKey", now).is_ok());
    }
}
