//! The destination's request budget, shared by every worker: one [`Budget`] per destination.
//!
//! Three brakes, checked by [`Budget::acquire`] before every request:
//! 1. **Per-minute quota** (governor): the account's plan figure
//!    (docs/zendesk.md, "Rate limits"). Up to a sixth of a minute's requests may go in a burst;
//!    after that requests are spaced evenly. `None` or `0` means unlimited.
//! 2. **Pause** ([`Budget::pause_until`]): after a 429 with `Retry-After` every worker waits, not
//!    only the one that got the 429. Pauses only ever extend.
//! 3. **Pacing from response headers** ([`Budget::observe`]): when Zendesk reports few requests
//!    left in the window (`ratelimit-remaining` / `X-Rate-Limit-Remaining`) the remaining ones are
//!    spread over the time until `ratelimit-reset` (60 s when Zendesk does not say), so a steady
//!    stream slows down instead of hitting 429. Zero left pauses until the reset.
//!
//! 4. **Shared allowance** ([`Budget::share`]): when several processes deliver to the same account
//!    (`zdmap serve` replicas on a NATS queue), each request also takes a token of their common
//!    allowance, and a pause is told to the others ([`SharedAllowance`]).
//!
//! All waiting uses tokio's clock, so tests can run on paused time.

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use super::http::ResponseHeaders;
use crate::base::sync::lock;

/// Below this many requests left in the window, pacing starts (or a tenth of the limit, when
/// the limit is known and larger).
const LOW_WATER: u32 = 10;

/// When Zendesk reports what is left but not when the window resets, assume a whole minute.
const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// governor's clock, read from tokio's clock so paused-time tests drive it.
#[derive(Clone, Debug)]
struct TokioClock {
    origin: Instant,
}

impl Clock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        let nanos = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Nanos::from(nanos)
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>;

/// Even spacing of requests until a deadline, set from response headers.
#[derive(Clone, Copy, Debug)]
struct Pacing {
    interval: Duration,
    until: Instant,
    next_slot: Instant,
}

/// A request allowance shared with other processes delivering to the same account.
pub trait SharedAllowance: Send + Sync + std::fmt::Debug {
    /// Resolves when one more request may be sent by this process.
    fn take(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// Tells the others to pause until `until` (this process pauses by itself).
    fn pause_until(&self, until: std::time::SystemTime);
}

/// A per-minute request budget, pause and pacing shared by all workers of one destination.
#[derive(Debug)]
pub struct Budget {
    limiter: Option<(Limiter, TokioClock)>,
    requests_per_minute: Option<NonZeroU32>,
    paused_until: Mutex<Option<Instant>>,
    pacing: Mutex<Option<Pacing>>,
    shared: OnceLock<Arc<dyn SharedAllowance>>,
}

impl Budget {
    /// A budget of `requests_per_minute` (`None` or `Some(0)`: unlimited).
    pub fn new(requests_per_minute: Option<u32>) -> Self {
        let rpm = requests_per_minute.and_then(NonZeroU32::new);
        let limiter = rpm.map(|rpm| {
            let burst = NonZeroU32::new((rpm.get() / 6).max(1)).unwrap_or(NonZeroU32::MIN);
            let quota = Quota::per_minute(rpm).allow_burst(burst);
            let clock = TokioClock {
                origin: Instant::now(),
            };
            (RateLimiter::direct_with_clock(quota, clock.clone()), clock)
        });
        Budget {
            limiter,
            requests_per_minute: rpm,
            paused_until: Mutex::new(None),
            pacing: Mutex::new(None),
            shared: OnceLock::new(),
        }
    }

    /// From now on every request also takes a token of `allowance`, and pauses are told to it
    /// (set once; a second call is ignored).
    pub fn share(&self, allowance: Arc<dyn SharedAllowance>) {
        let _ = self.shared.set(allowance);
    }

    /// No limit, no pause (until one is set).
    pub fn unlimited() -> Self {
        Self::new(None)
    }

    pub fn requests_per_minute(&self) -> Option<u32> {
        self.requests_per_minute.map(NonZeroU32::get)
    }

    /// Waits until a request may be sent: after any pause, within the quota and the pacing.
    pub async fn acquire(&self) {
        loop {
            if let Some(until) = self.paused_until() {
                tokio::time::sleep_until(until).await;
                continue;
            }
            if let Some((limiter, clock)) = &self.limiter
                && let Err(not_until) = limiter.check()
            {
                tokio::time::sleep(not_until.wait_time_from(clock.now())).await;
                continue;
            }
            if let Some(slot) = self.take_pacing_slot() {
                tokio::time::sleep_until(slot).await;
                // A pause set while pacing wins; the slot is spent either way.
                if self.paused_until().is_some() {
                    continue;
                }
            }
            if let Some(shared) = self.shared.get() {
                shared.take().await;
                // A pause heard from another process while waiting wins.
                if self.paused_until().is_some() {
                    continue;
                }
            }
            return;
        }
    }

    /// Pauses every worker until `until` (extends a running pause, never shortens it), and
    /// the processes sharing the allowance too.
    pub fn pause_until(&self, until: Instant) {
        if self.pause_here(until)
            && let Some(shared) = self.shared.get()
        {
            let left = until.saturating_duration_since(Instant::now());
            shared.pause_until(std::time::SystemTime::now() + left);
        }
    }

    /// Pauses this process's workers until `until` (a pause another process heard); `true`
    /// when that extends the pause.
    pub fn pause_here(&self, until: Instant) -> bool {
        let mut paused = lock(&self.paused_until);
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
            true
        } else {
            false
        }
    }

    /// When the current pause ends, if one is running.
    pub fn paused_until(&self) -> Option<Instant> {
        let mut paused = lock(&self.paused_until);
        match *paused {
            Some(until) if until > Instant::now() => Some(until),
            Some(_) => {
                *paused = None;
                None
            }
            None => None,
        }
    }

    /// Adjusts to what Zendesk says about the rate-limit window (see the module docs).
    pub fn observe(&self, headers: &ResponseHeaders) {
        let Some(remaining) = headers.ratelimit_remaining.or(headers.rate_limit_remaining) else {
            return;
        };
        let now = Instant::now();
        let window = headers
            .ratelimit_reset
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_WINDOW);
        if remaining == 0 {
            self.pause_until(now + window);
            return;
        }
        let limit = headers.ratelimit_limit.or(headers.rate_limit).unwrap_or(0);
        if remaining > LOW_WATER.max(limit / 10) {
            return;
        }
        let interval = window / remaining;
        let mut pacing = lock(&self.pacing);
        let next_slot = pacing
            .filter(|p| p.until > now)
            .map_or(now, |p| p.next_slot.max(now));
        *pacing = Some(Pacing {
            interval,
            until: now + window,
            next_slot,
        });
    }

    /// The spacing currently imposed by response headers, if any.
    #[cfg(test)]
    fn pacing_interval(&self) -> Option<Duration> {
        let pacing = lock(&self.pacing);
        pacing
            .filter(|p| p.until > Instant::now())
            .map(|p| p.interval)
    }

    /// Reserves the next paced slot and returns when it starts (`None`: no pacing, go now).
    fn take_pacing_slot(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut pacing = lock(&self.pacing);
        let p = pacing.as_mut()?;
        if p.until <= now {
            *pacing = None;
            return None;
        }
        let slot = p.next_slot.max(now);
        p.next_slot = slot + p.interval;
        (slot > now).then_some(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_waits() {
        let budget = Budget::new(Some(0));
        let start = Instant::now();
        for _ in 0..1000 {
            budget.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn quota_spaces_requests_after_the_burst() {
        // 60/min: a burst of 10, then one a second.
        let budget = Budget::new(Some(60));
        let start = Instant::now();
        for _ in 0..10 {
            budget.acquire().await;
        }
        assert!(start.elapsed() < Duration::from_millis(1));
        for _ in 0..5 {
            budget.acquire().await;
        }
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pause_holds_every_worker() {
        let budget = Arc::new(Budget::unlimited());
        let start = Instant::now();
        budget.pause_until(start + Duration::from_secs(7));
        budget.pause_until(start + Duration::from_secs(3)); // never shortens
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let budget = Arc::clone(&budget);
                tokio::spawn(async move {
                    budget.acquire().await;
                    Instant::now()
                })
            })
            .collect();
        for w in workers {
            let went = w.await.expect("worker");
            assert_eq!(went - start, Duration::from_secs(7));
        }
        assert_eq!(budget.paused_until(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn low_remaining_paces_and_zero_pauses() {
        let budget = Budget::unlimited();
        budget.observe(&ResponseHeaders {
            rate_limit: Some(700),
            rate_limit_remaining: Some(500),
            ..Default::default()
        });
        assert_eq!(budget.pacing_interval(), None);

        budget.observe(&ResponseHeaders {
            ratelimit_limit: Some(700),
            ratelimit_remaining: Some(5),
            ratelimit_reset: Some(Duration::from_secs(10)),
            ..Default::default()
        });
        assert_eq!(budget.pacing_interval(), Some(Duration::from_secs(2)));
        let start = Instant::now();
        for _ in 0..3 {
            budget.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(4));

        budget.observe(&ResponseHeaders {
            ratelimit_remaining: Some(0),
            ratelimit_reset: Some(Duration::from_secs(30)),
            ..Default::default()
        });
        let paused = budget.paused_until().expect("paused");
        assert_eq!(paused - Instant::now(), Duration::from_secs(30));
    }
}
