//! Admission control: a limit on the requests running at once, a rate limit per caller, and a
//! second, lower one per caller for the calls that make the HSM generate key material
//! ([`KEY_GENERATING`]: an RSA-4096 pair takes SoftHSM2 seconds). A request over any limit is
//! refused at once with ThrottlingException (RESOURCE_EXHAUSTED), before it reaches the HSM or
//! the store, so one caller's flood costs the others little.
//!
//! The per-caller rates are `governor`'s keyed rate limiters (GCRA, the token bucket's
//! equivalent); the limits on requests at once are semaphores. A request takes its places
//! among the running requests first, since those are given back when it is refused, then its
//! rates, which are not: a request refused for concurrency costs no rate, and one refused by
//! the key-generation rate has spent one request of its caller's general rate.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use kms_core::KmsError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A rate: `per_second` requests a second on average, with bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Requests a second, sustained; a fraction is allowed (0.5 is one every two seconds).
    pub per_second: f64,
    /// Requests at once after a quiet spell (the bucket's size), at least 1; a fraction of a
    /// request is dropped.
    pub burst: f64,
}

impl Rate {
    /// This rate as a governor quota: one request every `1 / per_second` seconds, in bursts
    /// of `burst` whole requests (at least 1).
    ///
    /// governor keeps times in u64 nanoseconds, since the limiter was made, up to
    /// `period × burst` ahead, so the period is kept to what leaves half of them (292 years)
    /// to the process: a rate of zero, below zero or not a number refills as slowly as that
    /// allows (once in 146 years for a burst of 1, every 2.3 s for one of 4 billion); a rate
    /// above a billion a second, once a nanosecond.
    fn quota(self) -> Quota {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a float to int `as` saturates, and NaN is 0: both then made at least 1"
        )]
        let burst = NonZeroU32::new(self.burst as u32).unwrap_or(NonZeroU32::MIN);
        let longest = Duration::from_nanos(u64::MAX / 2 / (u64::from(burst.get()) + 1));
        let period = Duration::try_from_secs_f64(self.per_second.recip())
            .unwrap_or(longest)
            .clamp(Duration::from_nanos(1), longest);
        // `with_period` refuses only a zero period, which the clamp rules out.
        Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst)
    }
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

/// The rate limiters check how many callers they remember once in this many checks, and
/// forget, when there are more than [`SWEEP_ABOVE`], those whose bucket has refilled (a full
/// bucket is what a new caller gets anyway). Memory stays bounded by the callers seen within
/// one refill time, however many distinct principals come.
const SWEEP_EVERY: usize = 1024;

/// See [`SWEEP_EVERY`].
const SWEEP_ABOVE: usize = 4096;

/// One rate per caller: a keyed governor rate limiter.
struct PerCaller<C: Clock> {
    rate: Rate,
    limiter: RateLimiter<String, DefaultKeyedStateStore<String>, C, NoOpMiddleware<C::Instant>>,
    /// Checks made, for [`SWEEP_EVERY`].
    checks: AtomicUsize,
}

impl<C: Clock> PerCaller<C> {
    fn new(rate: Rate, clock: C) -> Self {
        PerCaller {
            rate,
            limiter: RateLimiter::dashmap_with_clock(rate.quota(), clock),
            checks: AtomicUsize::new(0),
        }
    }

    /// Takes one of `caller`'s requests, or refuses with ThrottlingException, naming `what`
    /// is limited.
    fn take(&self, caller: &str, what: &str) -> Result<(), KmsError> {
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY)
            && self.limiter.len() > SWEEP_ABOVE
        {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter.check_key(&caller.to_owned()).map_err(|_| {
            KmsError::Throttling(format!(
                "rate exceeded: this caller may make {} {what} a second (bursts of {}); retry \
                 with backoff",
                self.rate.per_second, self.rate.burst
            ))
        })
    }
}

/// The admission controller: see the module documentation. `C` is the clock of the rates
/// (a fake one in tests).
pub struct Admission<C: Clock = DefaultClock> {
    limits: Limits,
    running: Arc<Semaphore>,
    per_caller: Option<PerCaller<C>>,
    key_generation: Option<PerCaller<C>>,
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
        Admission::with_clock(limits, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Admission<C> {
    /// An admission controller enforcing `limits`, its rates read on `clock`.
    fn with_clock(limits: Limits, clock: C) -> Self {
        Admission {
            running: Arc::new(Semaphore::new(limits.max_concurrent)),
            per_caller: limits
                .per_caller
                .map(|rate| PerCaller::new(rate, clock.clone())),
            key_generation: limits
                .key_generation_per_caller
                .map(|rate| PerCaller::new(rate, clock)),
            generating: Arc::new(Semaphore::new(limits.key_generation_concurrent)),
            limits,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Admits one `operation` request of `caller` (a principal, or the peer's address when
    /// there is none), or refuses it with ThrottlingException. A request refused for
    /// concurrency costs no rate (see the module documentation).
    pub fn admit(&self, caller: &str, operation: &str) -> Result<Admitted, KmsError> {
        let key_generating = KEY_GENERATING.contains(&operation);
        let generating = if key_generating {
            let permit = Arc::clone(&self.generating)
                .try_acquire_owned()
                .map_err(|_| {
                    KmsError::Throttling(format!(
                        "the HSM is generating its limit of {} keys at once; retry with backoff",
                        self.limits.key_generation_concurrent
                    ))
                })?;
            Some(permit)
        } else {
            None
        };
        let permit = Arc::clone(&self.running).try_acquire_owned().map_err(|_| {
            KmsError::Throttling(format!(
                "the server is running its limit of {} requests at once; retry with backoff",
                self.limits.max_concurrent
            ))
        })?;
        if let Some(per_caller) = &self.per_caller {
            per_caller.take(caller, "requests")?;
        }
        if key_generating && let Some(key_generation) = &self.key_generation {
            key_generation.take(caller, "key-generating calls")?;
        }
        Ok(Admitted {
            _permit: permit,
            _generating: generating,
        })
    }

    /// Requests running now.
    pub fn running(&self) -> usize {
        self.limits.max_concurrent - self.running.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

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

    /// An admission controller whose rates read a clock the test moves.
    fn on_fake_clock(limits: Limits) -> (Admission<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (Admission::with_clock(limits, clock.clone()), clock)
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
        let (admission, clock) = on_fake_clock(limits(100, Some(rate)));
        for _ in 0..3 {
            assert!(admission.admit("flood", "Encrypt").is_ok());
        }
        let refused = admission.admit("flood", "Encrypt");
        assert!(is_throttled(&refused));
        assert_eq!(
            refused.err().map(|e| e.to_string()),
            Some(
                "rate exceeded: this caller may make 10 requests a second (bursts of 3); retry \
                 with backoff"
                    .to_owned()
            )
        );
        // Another caller is not affected by the first one's empty bucket.
        assert!(admission.admit("quiet", "Encrypt").is_ok());
        // A tenth of a second refills one request, not more.
        clock.advance(Duration::from_millis(100));
        assert!(admission.admit("flood", "Encrypt").is_ok());
        assert!(is_throttled(&admission.admit("flood", "Encrypt")));
        // A long pause refills the burst, no more.
        clock.advance(Duration::from_secs(60));
        for _ in 0..3 {
            assert!(admission.admit("flood", "Encrypt").is_ok());
        }
        assert!(is_throttled(&admission.admit("flood", "Encrypt")));
    }

    #[test]
    fn a_fractional_rate_refills_once_a_period() {
        let rate = Rate {
            per_second: 0.5,
            burst: 1.0,
        };
        let (admission, clock) = on_fake_clock(limits(100, Some(rate)));
        assert!(admission.admit("slow", "Encrypt").is_ok());
        assert!(is_throttled(&admission.admit("slow", "Encrypt")));
        clock.advance(Duration::from_millis(1_999));
        assert!(is_throttled(&admission.admit("slow", "Encrypt")));
        clock.advance(Duration::from_millis(1));
        assert!(admission.admit("slow", "Encrypt").is_ok());
        assert!(is_throttled(&admission.admit("slow", "Encrypt")));
    }

    #[test]
    fn rates_governor_cannot_hold_become_the_nearest_it_can() {
        for (per_second, burst) in [
            (0.0, 1.0),
            (-1.0, 1.0),
            (f64::NAN, f64::NAN),
            (f64::INFINITY, f64::INFINITY),
            (1e-30, 4e9),
            (1e30, 0.0),
        ] {
            let (admission, _) = on_fake_clock(limits(100, Some(Rate { per_second, burst })));
            assert!(
                admission.admit("a", "Encrypt").is_ok(),
                "{per_second}/s, bursts of {burst}"
            );
        }
        let never = Rate {
            per_second: 0.0,
            burst: 1.0,
        };
        let (admission, clock) = on_fake_clock(limits(100, Some(never)));
        assert!(admission.admit("a", "Encrypt").is_ok());
        clock.advance(Duration::from_secs(100 * 365 * 86_400));
        assert!(is_throttled(&admission.admit("a", "Encrypt")));
    }

    #[test]
    fn a_request_refused_for_concurrency_costs_no_rate() {
        let rate = Rate {
            per_second: 1.0,
            burst: 1.0,
        };
        let (admission, _) = on_fake_clock(limits(1, Some(rate)));
        let running = admission.admit("a", "Encrypt");
        assert!(running.is_ok());
        assert!(is_throttled(&admission.admit("b", "Encrypt")));
        drop(running);
        assert!(
            admission.admit("b", "Encrypt").is_ok(),
            "b's token was not spent"
        );
    }

    #[test]
    fn refilled_callers_are_forgotten_when_there_are_many_and_the_others_kept() {
        let rate = Rate {
            per_second: 1.0,
            burst: 2.0,
        };
        let (admission, clock) = on_fake_clock(limits(10_000, Some(rate)));
        let remembered = || admission.per_caller.as_ref().map(|p| p.limiter.len());
        for i in 0..=SWEEP_ABOVE {
            drop(admission.admit(&format!("caller-{i}"), "Encrypt"));
        }
        // Sweeps run, but every bucket is still refilling: none is forgotten.
        for _ in 0..SWEEP_EVERY {
            drop(admission.admit("late", "Encrypt"));
        }
        assert_eq!(remembered(), Some(SWEEP_ABOVE + 2));
        // Two seconds refill every bucket but late's, which is empty. (governor forgets a
        // bucket one period after it refilled: one second here.)
        clock.advance(Duration::from_secs(2));
        for _ in 0..SWEEP_EVERY {
            drop(admission.admit("late", "Encrypt"));
        }
        assert_eq!(remembered(), Some(1), "only the caller seen last is kept");
    }

    /// Finding 6 of the security review: the calls that make the HSM generate key material
    /// have a rate of their own, far below the general one, and a limit on how many run at
    /// once.
    #[test]
    fn key_generating_calls_have_their_own_lower_rate_and_concurrency() {
        let (admission, clock) = on_fake_clock(Limits::default());
        // The burst is 20.
        for operation in KEY_GENERATING.iter().cycle().take(20) {
            assert!(admission.admit("tenant", operation).is_ok());
        }
        for operation in KEY_GENERATING {
            let refused = admission.admit("tenant", operation);
            assert!(is_throttled(&refused), "{operation}");
        }
        // Other calls of the same caller, and another caller's, still pass.
        assert!(admission.admit("tenant", "Encrypt").is_ok());
        assert!(admission.admit("other", "CreateKey").is_ok());
        clock.advance(Duration::from_millis(200));
        assert!(admission.admit("tenant", "CreateKey").is_ok());

        // Four at once, whoever calls; the fifth waits for one to end.
        let running: Vec<_> = (0..4)
            .map(|i| admission.admit(&format!("caller-{i}"), "CreateKey"))
            .collect();
        assert!(running.iter().all(Result::is_ok));
        assert!(is_throttled(&admission.admit("caller-5", "CreateKey")));
        assert!(admission.admit("caller-5", "Encrypt").is_ok());
        drop(running);
        assert!(admission.admit("caller-5", "CreateKey").is_ok());
    }

    /// The general rate is taken before the key-generation rate: a key-generating call it
    /// refuses spends none of the scarcer key-generation rate, and one the key-generation rate
    /// refuses has spent a request of the general rate.
    #[test]
    fn the_general_rate_is_taken_before_the_key_generation_rate() {
        let (admission, clock) = on_fake_clock(Limits {
            per_caller: Some(Rate {
                per_second: 1.0,
                burst: 2.0,
            }),
            key_generation_per_caller: Some(Rate {
                per_second: 0.01,
                burst: 1.0,
            }),
            ..Limits::default()
        });
        let is_refused_by = |result: Result<Admitted, KmsError>, what: &str| matches!(result, Err(KmsError::Throttling(m)) if m.contains(what));
        assert!(admission.admit("a", "Encrypt").is_ok());
        assert!(admission.admit("a", "Encrypt").is_ok());
        assert!(is_refused_by(
            admission.admit("a", "CreateKey"),
            " requests "
        ));
        clock.advance(Duration::from_secs(1));
        assert!(admission.admit("a", "CreateKey").is_ok(), "not spent");

        clock.advance(Duration::from_secs(2));
        assert!(is_refused_by(
            admission.admit("a", "CreateKey"),
            "key-generating calls"
        ));
        assert!(admission.admit("a", "Encrypt").is_ok());
        assert!(is_refused_by(admission.admit("a", "Encrypt"), " requests "));
    }
}
