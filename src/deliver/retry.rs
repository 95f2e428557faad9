//! One attempt at a request and what its outcome means: done, retry later (and at which scope),
//! fatal, or not sendable ([`Disposition`]). Also the [`RetryPolicy`]: how long to wait before
//! the next attempt.
//!
//! An attempt, in this order:
//! 1. waits for the destination's [`Budget`] (quota, account-wide pause, pacing);
//! 2. the caller's `accept(&Response)` says the response is the step's answer (a 422
//!    `DuplicateValue` the mapping treats as done, a 404 a lookup expects) → [`Disposition::Done`];
//! 3. 2xx → `Done`;
//! 4. 401 / 403 → [`Disposition::Fatal`]: the destination is misconfigured, not the event bad;
//! 5. 408, 429, 5xx except 501, timeouts, connection and other transport errors →
//!    [`Disposition::Retry`], with the `Retry-After` wait and its [`PauseScope`]:
//!    - a 429 from an endpoint bucket (`Zendesk-RateLimit-<name>: ...; remaining=0`, the
//!      per-user limit of `users/create_or_update`), or while the account's headers still show
//!      requests left, is the key's limit: only that key waits;
//!    - any other 429, and a 503 with `Retry-After`, pause the whole destination through
//!      [`Budget::pause_until`], so every request waits;
//! 6. anything else (other 4xx, 501, 3xx) → `Done`: the caller reads the status and decides.
//!
//! Nothing here sleeps between attempts: the delivery scheduler sets a key aside for the wait
//! and lets other keys use the slot (see [`super::schedule`]).
//!
//! Retrying a `POST` after a timeout may repeat a write the server already did. Ticket creation
//! is made safe by the mapping's `Idempotency-Key` header, which every attempt carries unchanged
//! (docs/zendesk.md, "Tickets"). The `*create_or_update` endpoints are idempotent by nature.

use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBackoff, ExponentialBuilder};

use super::budget::Budget;
use super::http::{Client, Response, TransportError};
use super::stats::Stats;
use crate::mapping::config::ErrorFormats;
use crate::mapping::request::Request;

/// How long to wait before trying again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first backoff delay (before jitter). Default 200 ms.
    pub min_delay: Duration,
    /// The largest backoff delay (before jitter). Default 60 s.
    pub max_delay: Duration,
    /// The longest `Retry-After` honoured; a longer one is cut to this. Default 15 min.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(15 * 60),
        }
    }
}

impl RetryPolicy {
    /// The delays before each next attempt: capped exponential growth with jitter, endless.
    pub fn backoff(&self) -> ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay.max(self.min_delay))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// What a status means to the transport (before the caller's `accept`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StatusClass {
    /// 2xx.
    Success,
    /// 408, 429, 5xx except 501.
    Retryable,
    /// 401, 403: the destination's credentials or permissions.
    Fatal,
    /// Anything else: final, the caller decides.
    Final,
}

pub(crate) fn classify_status(status: u16) -> StatusClass {
    match status {
        200..=299 => StatusClass::Success,
        401 | 403 => StatusClass::Fatal,
        408 | 429 => StatusClass::Retryable,
        501 => StatusClass::Final,
        500..=599 => StatusClass::Retryable,
        _ => StatusClass::Final,
    }
}

/// Who waits after a retryable outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PauseScope {
    /// Only the entity key whose request it was (a per-user limit, a failing request).
    Key,
    /// Every request of the destination (the account's budget is spent, Zendesk unavailable).
    Destination,
}

/// How one attempt at a request ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Disposition {
    /// A final response: 2xx, one `accept` took, or a status not worth retrying (read
    /// `response.status`).
    Done { response: Response },
    /// 401 or 403: the destination refuses us (see [`Disposition::refusal`] for what to say).
    Fatal { response: Response },
    /// Worth another attempt later: after `wait` when Zendesk said (`Retry-After`, already
    /// capped), else after a backoff. With [`PauseScope::Destination`] and a `wait`, the
    /// budget is already paused.
    Retry {
        last: Result<Response, TransportError>,
        wait: Option<Duration>,
        scope: PauseScope,
    },
    /// The request cannot be sent as rendered (a reserved header, a path off the host).
    Invalid { error: TransportError },
}

impl Disposition {
    /// True for `Done` with a 2xx status. (A non-2xx response the caller accepted is also
    /// `Done`; the caller knows it accepted it.)
    pub fn is_success(&self) -> bool {
        matches!(self, Disposition::Done { response } if response.is_success())
    }

    /// An answer that came but cannot be used (a bulk answer that gives an item no result, a
    /// job list without jobs): tried again later like a failed request, for its key only.
    pub(crate) fn retry_after_answer(response: Response) -> Disposition {
        Disposition::Retry {
            last: Ok(response),
            wait: None,
            scope: PauseScope::Key,
        }
    }
}

/// One attempt at `req` through `client` under `budget`, counted into `stats`. `accept` marks
/// responses the caller takes as final (`|_| false` for none).
pub async fn attempt(
    client: &Client,
    budget: &Budget,
    policy: &RetryPolicy,
    stats: &Stats,
    req: &Request,
    accept: impl Fn(&Response) -> bool,
) -> Disposition {
    budget.acquire().await;
    let outcome = client.send(req).await;
    // Counted under the request's endpoint (template parts as `{id}`), never its path: event
    // data must not become a counter's name.
    let counted = if req.endpoint.is_empty() {
        &req.path
    } else {
        &req.endpoint
    };
    stats.record_request(req.method, counted, &outcome);
    judge(budget, policy, outcome, accept)
}

/// What an attempt's outcome means (see the module docs); pauses `budget` for a
/// destination-wide `Retry-After`.
pub fn judge(
    budget: &Budget,
    policy: &RetryPolicy,
    outcome: Result<Response, TransportError>,
    accept: impl Fn(&Response) -> bool,
) -> Disposition {
    let response = match outcome {
        Ok(response) => response,
        Err(error) if error.is_retryable() => {
            return Disposition::Retry {
                last: Err(error),
                wait: None,
                scope: PauseScope::Key,
            };
        }
        Err(error) => return Disposition::Invalid { error },
    };
    budget.observe(&response.headers);
    if accept(&response) {
        return Disposition::Done { response };
    }
    match classify_status(response.status) {
        StatusClass::Success | StatusClass::Final => Disposition::Done { response },
        StatusClass::Fatal => Disposition::Fatal { response },
        StatusClass::Retryable => {
            let wait = response
                .headers
                .retry_after
                .map(|w| w.min(policy.max_retry_after));
            let scope = scope_of(&response);
            if let (Some(wait), PauseScope::Destination) = (wait, scope) {
                budget.pause_until(tokio::time::Instant::now() + wait);
            }
            Disposition::Retry {
                last: Ok(response),
                wait,
                scope,
            }
        }
    }
}

/// Whose limit a retryable response speaks of (see the module docs).
fn scope_of(response: &Response) -> PauseScope {
    let h = &response.headers;
    match response.status {
        429 => {
            let account_left = h
                .ratelimit_remaining
                .or(h.rate_limit_remaining)
                .is_some_and(|left| left > 0);
            if h.endpoint_limit_exhausted || account_left {
                PauseScope::Key
            } else {
                PauseScope::Destination
            }
        }
        503 if h.retry_after.is_some() => PauseScope::Destination,
        _ => PauseScope::Key,
    }
}

impl Disposition {
    /// For a refusal (401, 403): its status, and what a person should fix, with the code and
    /// message the destination's `errors` paths read from its body. No secret is in it.
    pub fn refusal(&self, errors: &ErrorFormats) -> Option<(u16, String)> {
        let Disposition::Fatal { response } = self else {
            return None;
        };
        let said = errors.read(&response.body).said();
        let message = match response.status {
            401 => format!(
                "Zendesk refused the credentials: 401 Unauthorized{said}. Check the credentials (OAuth \
                 client, token store, OAuth token, or API token and email) and that they belong to \
                 this subdomain."
            ),
            status => format!(
                "Zendesk denied access: {status} Forbidden{said}. The credentials lack permission \
                 (OAuth scope, agent role) or the feature is not enabled on this account."
            ),
        };
        Some((response.status, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::http::ResponseHeaders;
    use tokio::time::Instant;

    fn response(status: u16, headers: ResponseHeaders) -> Response {
        Response {
            status,
            headers,
            body: serde_json::Value::Null,
            elapsed: Duration::ZERO,
            job: None,
        }
    }

    fn judged(budget: &Budget, status: u16, headers: ResponseHeaders) -> Disposition {
        judge(
            budget,
            &RetryPolicy::default(),
            Ok(response(status, headers)),
            |_| false,
        )
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
    async fn account_429_pauses_the_destination() {
        let budget = Budget::unlimited();
        let headers = ResponseHeaders {
            retry_after: Some(Duration::from_secs(7)),
            ..Default::default()
        };
        match judged(&budget, 429, headers) {
            Disposition::Retry { wait, scope, .. } => {
                assert_eq!(wait, Some(Duration::from_secs(7)));
                assert_eq!(scope, PauseScope::Destination);
            }
            other => panic!("{other:?}"),
        }
        let until = budget.paused_until().expect("paused");
        assert_eq!(until - Instant::now(), Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn per_key_429_pauses_only_the_key() {
        for headers in [
            // An endpoint bucket is empty (the per-user limit of users/create_or_update).
            ResponseHeaders {
                retry_after: Some(Duration::from_secs(40)),
                endpoint_limit_exhausted: true,
                ..Default::default()
            },
            // The account still has requests left.
            ResponseHeaders {
                retry_after: Some(Duration::from_secs(40)),
                rate_limit_remaining: Some(650),
                ..Default::default()
            },
        ] {
            let budget = Budget::unlimited();
            match judged(&budget, 429, headers) {
                Disposition::Retry { wait, scope, .. } => {
                    assert_eq!(wait, Some(Duration::from_secs(40)));
                    assert_eq!(scope, PauseScope::Key);
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(budget.paused_until(), None, "the destination goes on");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_capped_and_server_errors_wait_for_the_key() {
        let budget = Budget::unlimited();
        let headers = ResponseHeaders {
            retry_after: Some(Duration::from_secs(86_400)),
            ..Default::default()
        };
        match judged(&budget, 503, headers) {
            Disposition::Retry { wait, scope, .. } => {
                assert_eq!(wait, Some(RetryPolicy::default().max_retry_after));
                assert_eq!(scope, PauseScope::Destination);
            }
            other => panic!("{other:?}"),
        }
        match judged(&Budget::unlimited(), 500, ResponseHeaders::default()) {
            Disposition::Retry { wait, scope, .. } => {
                assert_eq!(wait, None);
                assert_eq!(scope, PauseScope::Key);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn caller_accepts_before_retry_and_fatal_stops() {
        let budget = Budget::unlimited();
        let d = judge(
            &budget,
            &RetryPolicy::default(),
            Ok(response(503, ResponseHeaders::default())),
            |r| r.status == 503,
        );
        assert!(matches!(d, Disposition::Done { .. }), "{d:?}");
        match judged(&budget, 403, ResponseHeaders::default()) {
            fatal @ Disposition::Fatal { .. } => {
                let (status, message) = fatal.refusal(&ErrorFormats::default()).expect("a refusal");
                assert_eq!(status, 403);
                assert!(message.contains("Forbidden"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn transport_errors_retry_but_an_invalid_request_does_not() {
        let budget = Budget::unlimited();
        let policy = RetryPolicy::default();
        let timeout = TransportError::Timeout {
            method: crate::mapping::request::Method::Get,
            url: "http://x/".into(),
            after: Duration::from_secs(1),
        };
        assert!(matches!(
            judge(&budget, &policy, Err(timeout), |_| false),
            Disposition::Retry {
                scope: PauseScope::Key,
                ..
            }
        ));
        let invalid = TransportError::InvalidRequest {
            message: "bad header".into(),
        };
        assert!(matches!(
            judge(&budget, &policy, Err(invalid), |_| false),
            Disposition::Invalid { .. }
        ));
    }

    #[test]
    fn backoff_grows_and_never_ends() {
        let policy = RetryPolicy {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        let delays: Vec<Duration> = policy.backoff().take(20).collect();
        assert_eq!(delays.len(), 20);
        assert!(delays[0] >= Duration::from_millis(100) && delays[0] <= Duration::from_millis(200));
        assert!(delays[19] >= Duration::from_secs(1) && delays[19] <= Duration::from_secs(2));
    }
}
