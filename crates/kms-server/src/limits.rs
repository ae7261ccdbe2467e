//! Admission control: a limit on the requests running at once, and a token-bucket rate limit
//! per caller. A request over either limit is refused at once with ThrottlingException
//! (RESOURCE_EXHAUSTED), before it reaches the HSM or the store, so one caller's flood costs
//! the others little.

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

/// The limits of one server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// The most requests running at once.
    pub max_concurrent: usize,
    /// Each caller's rate, or `None` for no rate limit.
    pub per_caller: Option<Rate>,
    /// How long a request may run before the caller gets DependencyTimeoutException.
    pub request_timeout: Duration,
}

impl Limits {
    /// The default most requests running at once.
    pub const DEFAULT_MAX_CONCURRENT: usize = 512;
    /// The default requests a second per caller (its burst is twice that).
    pub const DEFAULT_PER_CALLER: u32 = 5000;
    /// The default request timeout.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
}

impl Default for Limits {
    /// kmsd's defaults: 512 requests at once, 5000 a second per caller in bursts of 10000,
    /// and a 30 s timeout.
    fn default() -> Self {
        let per_second = f64::from(Limits::DEFAULT_PER_CALLER);
        Limits {
            max_concurrent: Limits::DEFAULT_MAX_CONCURRENT,
            per_caller: Some(Rate {
                per_second,
                burst: 2.0 * per_second,
            }),
            request_timeout: Limits::DEFAULT_REQUEST_TIMEOUT,
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

/// The admission controller: see the module documentation.
pub struct Admission {
    limits: Limits,
    running: Arc<Semaphore>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// A request's place among the running requests; it frees it when dropped.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
}

impl Admission {
    /// An admission controller enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Admission {
            running: Arc::new(Semaphore::new(limits.max_concurrent)),
            limits,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Admits one request of `caller` (a principal, or the peer's address when there is none),
    /// or refuses it with ThrottlingException. The caller's rate is charged only for admitted
    /// requests.
    pub fn admit(&self, caller: &str) -> Result<Admitted, KmsError> {
        self.admit_at(caller, Instant::now())
    }

    fn admit_at(&self, caller: &str, now: Instant) -> Result<Admitted, KmsError> {
        if let Some(rate) = self.limits.per_caller {
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
                    "rate exceeded: this caller may make {} requests a second (bursts of {}); \
                     retry with backoff",
                    rate.per_second, rate.burst
                )));
            }
            let permit = self.take_permit()?;
            bucket.tokens -= 1.0;
            return Ok(permit);
        }
        self.take_permit()
    }

    fn take_permit(&self) -> Result<Admitted, KmsError> {
        Arc::clone(&self.running)
            .try_acquire_owned()
            .map(|permit| Admitted { _permit: permit })
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
            request_timeout: Duration::from_secs(30),
        }
    }

    fn is_throttled(result: &Result<Admitted, KmsError>) -> bool {
        matches!(result, Err(KmsError::Throttling(_)))
    }

    #[test]
    fn refuses_requests_over_the_concurrency_limit_until_one_ends() {
        let admission = Admission::new(limits(2, None));
        let first = admission.admit("a");
        let second = admission.admit("b");
        assert!(first.is_ok() && second.is_ok());
        assert_eq!(admission.running(), 2);
        let third = admission.admit("c");
        assert!(is_throttled(&third));
        assert_eq!(third.err().map(|e| e.reason()), Some("ThrottlingException"));
        drop(first);
        assert!(admission.admit("c").is_ok());
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
            assert!(admission.admit_at("flood", start).is_ok());
        }
        assert!(is_throttled(&admission.admit_at("flood", start)));
        // Another caller is not affected by the first one's empty bucket.
        assert!(admission.admit_at("quiet", start).is_ok());
        // A tenth of a second refills one request, not more.
        let later = start + Duration::from_millis(100);
        assert!(admission.admit_at("flood", later).is_ok());
        assert!(is_throttled(&admission.admit_at("flood", later)));
        // A long pause refills the burst, no more.
        let much_later = start + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(admission.admit_at("flood", much_later).is_ok());
        }
        assert!(is_throttled(&admission.admit_at("flood", much_later)));
    }

    #[test]
    fn a_request_refused_for_concurrency_costs_no_rate() {
        let rate = Rate {
            per_second: 1.0,
            burst: 1.0,
        };
        let admission = Admission::new(limits(1, Some(rate)));
        let now = Instant::now();
        let running = admission.admit_at("a", now);
        assert!(running.is_ok());
        assert!(is_throttled(&admission.admit_at("b", now)));
        drop(running);
        assert!(
            admission.admit_at("b", now).is_ok(),
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
            drop(admission.admit_at(&format!("caller-{i}"), start));
        }
        // Two seconds refill every bucket.
        drop(admission.admit_at("late", start + Duration::from_secs(2)));
        let remembered = admission
            .buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        assert_eq!(remembered, 1, "only the caller seen last is kept");
    }
}
