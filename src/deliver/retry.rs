//! The retry policy: which outcomes are worth another attempt, how long to wait, and what a run
//! should do with the final outcome ([`Disposition`]).
//!
//! Per attempt, in this order:
//! 1. the caller's `accept(&Response)` says the response is the step's answer (e.g. a 422
//!    `DuplicateValue` the mapping treats as done, a 404 a lookup expects) → [`Disposition::Done`];
//! 2. 2xx → `Done`;
//! 3. 401 / 403 → [`Disposition::Fatal`]: the destination is misconfigured, not the event bad;
//!    the run should stop and say so instead of dead-lettering every event;
//! 4. 408, 429, 5xx except 501, timeouts, connection and other transport errors → retry, with
//!    capped exponential backoff and jitter (backon: min 200 ms, max 30 s, 6 attempts in all by
//!    default). A `Retry-After` (429, 503) pauses the whole destination through
//!    [`Budget::pause_until`], so every worker waits, and the retry then waits only for the pause;
//! 5. anything else (other 4xx, 501, 3xx) → `Done`: the caller reads the status and decides
//!    (usually a dead letter with [`super::error_body::zendesk_error`]'s code).
//!
//! When the attempts run out: [`Disposition::GaveUp`] with the last outcome. A request that
//! cannot be sent at all (bad header) gives up at once.
//!
//! Retrying a `POST` after a timeout may repeat a write the server already did; ticket creation
//! is made safe by the mapping's `Idempotency-Key` header (zendesk-api.md §2.4.1), which every
//! attempt carries unchanged; the `*create_or_update` endpoints are idempotent by nature.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};

use super::budget::Budget;
use super::error_body::zendesk_error;
use super::http::{Client, Response, TransportError};
use super::stats::Stats;
use crate::request::{Method, Request};

/// Backoff and attempt limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1). Default 6.
    pub max_attempts: u32,
    /// The first backoff delay (before jitter). Default 200 ms.
    pub min_delay: Duration,
    /// The largest backoff delay (before jitter). Default 30 s.
    pub max_delay: Duration,
    /// The longest `Retry-After` honoured; a longer one is cut to this. Default 15 min.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(15 * 60),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay.max(self.min_delay))
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(self.max_attempts.max(1) as usize - 1)
    }
}

/// What a status means to the transport (before the caller's `accept`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusClass {
    /// 2xx.
    Success,
    /// 408, 429, 5xx except 501.
    Retryable,
    /// 401, 403: the destination's credentials or permissions.
    Fatal,
    /// Anything else: final, the caller decides.
    Final,
}

pub fn classify_status(status: u16) -> StatusClass {
    match status {
        200..=299 => StatusClass::Success,
        401 | 403 => StatusClass::Fatal,
        408 | 429 => StatusClass::Retryable,
        501 => StatusClass::Final,
        500..=599 => StatusClass::Retryable,
        _ => StatusClass::Final,
    }
}

/// How sending one request ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Disposition {
    /// A final response: 2xx, one `accept` took, or a status not worth retrying (read
    /// `response.status`).
    Done { response: Response, attempts: u32 },
    /// 401 or 403: stop the run; `message` says what to fix (no secrets).
    Fatal { status: u16, message: String },
    /// Retryable failures until the attempts ran out (or a request that cannot be sent).
    GaveUp {
        last: Result<Response, TransportError>,
        attempts: u32,
    },
}

impl Disposition {
    /// True for `Done` with a 2xx status. (A non-2xx response the caller accepted is also
    /// `Done`; the caller knows it accepted it.)
    pub fn is_success(&self) -> bool {
        matches!(self, Disposition::Done { response, .. } if response.is_success())
    }

    /// The attempts made (`Fatal` counts as its one deciding attempt).
    pub fn attempts(&self) -> u32 {
        match self {
            Disposition::Done { attempts, .. } | Disposition::GaveUp { attempts, .. } => *attempts,
            Disposition::Fatal { .. } => 1,
        }
    }
}

/// A retryable outcome, carried through backon.
struct Retry(Result<Response, TransportError>);

/// Sends `req` through `client` under `budget` and `policy`, counting into `stats`. `accept`
/// marks responses the caller takes as final before any retry (`|_| false` for none).
pub async fn send_with_retries(
    client: &Client,
    budget: &Budget,
    policy: &RetryPolicy,
    stats: &Stats,
    req: &Request,
    accept: impl Fn(&Response) -> bool,
) -> Disposition {
    run_with_retries(budget, policy, stats, req.method, &req.path, accept, || {
        client.send(req)
    })
    .await
}

/// The retry loop of [`send_with_retries`] over any `attempt` (one send each call), so it can be
/// driven without a network.
pub async fn run_with_retries<F, Fut>(
    budget: &Budget,
    policy: &RetryPolicy,
    stats: &Stats,
    method: Method,
    path: &str,
    accept: impl Fn(&Response) -> bool,
    mut attempt: F,
) -> Disposition
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Response, TransportError>>,
{
    let attempts = AtomicU32::new(0);
    let one_attempt = || {
        let sending = attempt();
        let attempts = &attempts;
        let accept = &accept;
        async move {
            budget.acquire().await;
            let n = attempts.fetch_add(1, Ordering::Relaxed) + 1;
            let outcome = sending.await;
            stats.record_request(method, path, &outcome);
            let response = match outcome {
                Ok(response) => response,
                Err(e) if e.is_retryable() => return Err(Retry(Err(e))),
                Err(e) => {
                    return Ok(Disposition::GaveUp {
                        last: Err(e),
                        attempts: n,
                    });
                }
            };
            budget.observe(&response.headers);
            if accept(&response) {
                return Ok(Disposition::Done {
                    response,
                    attempts: n,
                });
            }
            match classify_status(response.status) {
                StatusClass::Success | StatusClass::Final => Ok(Disposition::Done {
                    response,
                    attempts: n,
                }),
                StatusClass::Fatal => Ok(Disposition::Fatal {
                    status: response.status,
                    message: fatal_message(&response),
                }),
                StatusClass::Retryable => {
                    if let Some(wait) = response.headers.retry_after {
                        let wait = wait.min(policy.max_retry_after);
                        budget.pause_until(tokio::time::Instant::now() + wait);
                    }
                    Err(Retry(Ok(response)))
                }
            }
        }
    };
    let result = one_attempt
        .retry(policy.backoff())
        .adjust(|Retry(last), delay| {
            // A Retry-After already paused the destination; the next attempt waits for that
            // pause in `Budget::acquire`, so no backoff on top.
            let paused = matches!(last, Ok(r) if r.headers.retry_after.is_some());
            delay.map(|d| if paused { Duration::ZERO } else { d })
        })
        .notify(|Retry(last), delay| {
            stats.retry();
            let what = match last {
                Ok(r) => r.status.to_string(),
                Err(e) => e.to_string(),
            };
            tracing::debug!(%method, path, outcome = %what, ?delay, "retrying");
        })
        .await;
    match result {
        Ok(disposition) => disposition,
        Err(Retry(last)) => Disposition::GaveUp {
            last,
            attempts: attempts.load(Ordering::Relaxed),
        },
    }
}

fn fatal_message(response: &Response) -> String {
    let (code, zendesk_message) = zendesk_error(&response.body);
    let said = match (code, zendesk_message) {
        (Some(c), Some(m)) => format!(" ({c}: {m})"),
        (Some(t), None) | (None, Some(t)) => format!(" ({t})"),
        (None, None) => String::new(),
    };
    match response.status {
        401 => format!(
            "Zendesk refused the credentials: 401 Unauthorized{said}. Check the API token or OAuth \
             token and the email, and that they belong to this subdomain."
        ),
        status => format!(
            "Zendesk denied access: {status} Forbidden{said}. The credentials lack permission \
             (OAuth scope, agent role) or the feature is not enabled on this account."
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::http::ResponseHeaders;
    use std::sync::Mutex;
    use tokio::time::Instant;

    fn response(status: u16, retry_after: Option<u64>) -> Response {
        Response {
            status,
            headers: ResponseHeaders {
                retry_after: retry_after.map(Duration::from_secs),
                ..Default::default()
            },
            body: serde_json::Value::Null,
            elapsed: Duration::ZERO,
        }
    }

    /// Runs the loop over scripted outcomes; returns the disposition and when each attempt began.
    async fn script(
        budget: &Budget,
        outcomes: Vec<Result<Response, TransportError>>,
    ) -> (Disposition, Vec<Duration>) {
        let start = Instant::now();
        let outcomes = Mutex::new(outcomes.into_iter());
        let times = Mutex::new(Vec::new());
        let stats = Stats::new();
        let disposition = run_with_retries(
            budget,
            &RetryPolicy::default(),
            &stats,
            Method::Post,
            "/api/v2/users/1/events",
            |_| false,
            || {
                let next = outcomes.lock().expect("lock").next();
                let times = &times;
                async move {
                    times.lock().expect("lock").push(start.elapsed());
                    next.unwrap_or_else(|| Ok(response(200, None)))
                }
            },
        )
        .await;
        let times = times.into_inner().expect("lock");
        (disposition, times)
    }

    #[test]
    fn classes() {
        assert_eq!(classify_status(204), StatusClass::Success);
        for s in [408, 429, 500, 502, 503, 504] {
            assert_eq!(classify_status(s), StatusClass::Retryable, "{s}");
        }
        for s in [400, 404, 409, 422, 501, 302] {
            assert_eq!(classify_status(s), StatusClass::Final, "{s}");
        }
        assert_eq!(classify_status(401), StatusClass::Fatal);
        assert_eq!(classify_status(403), StatusClass::Fatal);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_pauses_then_succeeds() {
        let budget = Budget::unlimited();
        let (d, times) = script(&budget, vec![Ok(response(429, Some(7)))]).await;
        assert!(d.is_success(), "{d:?}");
        assert_eq!(d.attempts(), 2);
        assert_eq!(times, vec![Duration::ZERO, Duration::from_secs(7)]);
    }

    #[tokio::test(start_paused = true)]
    async fn one_workers_429_holds_the_others() {
        let budget = std::sync::Arc::new(Budget::unlimited());
        let limited = {
            let budget = std::sync::Arc::clone(&budget);
            tokio::spawn(async move { script(&budget, vec![Ok(response(429, Some(5)))]).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        // A second worker arriving during the pause sends nothing until it ends (t = 5 s).
        let (d, times) = script(&budget, vec![]).await;
        assert!(d.is_success());
        assert_eq!(times, vec![Duration::from_secs(4)]);
        let (d, times) = limited.await.expect("worker");
        assert_eq!(d.attempts(), 2);
        assert_eq!(times[1], Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_with_jitter_and_gives_up() {
        let budget = Budget::unlimited();
        let outcomes = (0..6).map(|_| Ok(response(503, None))).collect();
        let (d, times) = script(&budget, outcomes).await;
        match d {
            Disposition::GaveUp { last, attempts } => {
                assert_eq!(attempts, 6);
                assert_eq!(last.map(|r| r.status), Ok(503));
            }
            other => panic!("{other:?}"),
        }
        // Delays 200, 400, 800, 1600, 3200 ms, each plus up to 100% jitter.
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        for (i, gap) in gaps.iter().enumerate() {
            let base = Duration::from_millis(200 << i);
            assert!(*gap >= base && *gap <= base * 2, "gap {i}: {gap:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn caller_accepts_before_retry_and_fatal_stops() {
        let budget = Budget::unlimited();
        let stats = Stats::new();
        let d = run_with_retries(
            &budget,
            &RetryPolicy::default(),
            &stats,
            Method::Get,
            "/x",
            |r| r.status == 503,
            || async { Ok(response(503, None)) },
        )
        .await;
        assert!(matches!(d, Disposition::Done { attempts: 1, .. }), "{d:?}");

        let (d, _) = script(&budget, vec![Ok(response(403, None))]).await;
        match d {
            Disposition::Fatal { status, message } => {
                assert_eq!(status, 403);
                assert!(message.contains("Forbidden"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn invalid_request_gives_up_at_once() {
        let budget = Budget::unlimited();
        let (d, times) = script(
            &budget,
            vec![Err(TransportError::InvalidRequest {
                message: "bad header".into(),
            })],
        )
        .await;
        assert!(
            matches!(d, Disposition::GaveUp { attempts: 1, .. }),
            "{d:?}"
        );
        assert_eq!(times.len(), 1);
    }
}
