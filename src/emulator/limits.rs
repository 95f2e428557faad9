//! Rate limits, injected faults and latency (docs/zendesk.md, "Rate limits").
//!
//! - The account budget: `rpm` requests per window (a minute by default), reported on every API
//!   answer as `X-Rate-Limit`, `X-Rate-Limit-Remaining`, `ratelimit-limit`, `ratelimit-remaining`,
//!   `ratelimit-reset`; beyond it, 429 with `Retry-After`.
//! - Endpoint buckets: `users/create_or_update` per end user (5 a minute), ticket updates per ticket
//!   (30 per 10 minutes), each a sliding window over the emulator's clock.
//! - Faults: forced ones ("the next N requests under path P answer S", `/oauth/tokens`
//!   included), random ones (`fail_rate`, 500 or 503) and lost answers (`lost_answer_rate`: a
//!   write is applied, then answered 500 or its connection dropped; `oauth_lost_answers`: the
//!   same for the next N token answers), drawn from an RNG seeded with `--seed`.
//! - OAuth: the registered clients ([`OAuthClient`]) and token lifetimes `oauth` works by.
//!
//! The knobs are plain data ([`RuntimeKnobs`]); tests change them with `Emulator::configure` or
//! `POST /__emulator/config`.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::auth::Secret;
use super::errors::ApiError;
use super::oauth::MAX_LIFETIME_SECS;

/// Behaviour that can change while the emulator runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeKnobs {
    /// Account-wide requests per window; `None` means unlimited (headers still report 700).
    pub rpm: Option<u32>,
    /// Length of the account window in seconds (Zendesk: 60).
    pub rate_window_secs: u64,
    /// Probability (0..=1) that an API request answers 500 or 503.
    pub fail_rate: f64,
    /// Delay added to every API answer, in milliseconds.
    pub latency_ms: u64,
    /// Faults to answer before anything else, consumed in order.
    pub forced_faults: Vec<ForcedFault>,
    /// `users/create_or_update` calls allowed per end user per `rate_window_secs` (Zendesk: 5).
    pub upsert_user_per_window: u32,
    /// Updates allowed per ticket per `ticket_update_window_secs` (Zendesk: 30).
    pub ticket_updates_per_window: u32,
    /// Length of the per-ticket update window in seconds (Zendesk: 600).
    pub ticket_update_window_secs: u64,
    /// Whether bulk user imports (`users/create_or_update_many`) are enabled (Zendesk: off).
    pub bulk_import: bool,
    /// Time on the emulator's clock from a bulk request to its job's end, in milliseconds: the
    /// job is `queued` for the first half, `working` for the second, then applies its items and
    /// is `completed` (or `failed`). With 0 it ends before the next request is handled.
    pub job_delay_ms: u64,
    /// Probability (0..=1) that a job fails as a whole: it applies nothing and ends `failed`.
    pub job_fail_rate: f64,
    /// Jobs that may be queued or working at once (Zendesk: 30).
    pub job_limit: u32,
    /// The answer to a bulk request beyond `job_limit`: 429 (with `Retry-After`), 403 or 422.
    pub job_limit_status: u16,
    /// Probability (0..=1) that a write (POST, PUT, PATCH, DELETE) is applied and then its answer
    /// is lost, as `lost_answer` says.
    pub lost_answer_rate: f64,
    /// How an answer is lost after the write was applied.
    pub lost_answer: LostAnswer,
    /// Requests kept in the request log (a ring: the oldest are dropped first); 0 keeps none.
    pub request_log_size: usize,
    /// The base URL the links of paged answers name (`next_page`, `links.next`); none: the
    /// host each request was sent to. `https://example.zendesk.com` plays an account reached
    /// through a proxy, whose links name the account's own host.
    pub links_base: Option<String>,
    /// The OAuth clients `/oauth/tokens` and `/oauth/authorizations/new` know. With any, the
    /// API refuses credentials that are neither issued by the emulator nor the configured
    /// static tokens. Left out of a `POST /__emulator/config`, the clients stay as they are
    /// (their secrets are shown as `"[redacted]"`).
    pub oauth_clients: Vec<OAuthClient>,
    /// Lifetime of an access token when the token request names no `expires_in` (1800).
    pub access_token_lifetime_secs: u64,
    /// Lifetime of a refresh token when the token request names no `refresh_token_expires_in`
    /// (2 592 000: 30 days).
    pub refresh_token_lifetime_secs: u64,
    /// Delay added to `/oauth/tokens` answers, beyond `latency_ms`.
    pub oauth_latency_ms: u64,
    /// The next this many successful `/oauth/tokens` answers are lost as `lost_answer` says,
    /// after the tokens were issued (and a refresh rotated its chain).
    pub oauth_lost_answers: u32,
}

/// An OAuth client registered with the account: its identifier and, for a confidential client,
/// its secret (a public one has none and must use PKCE). `Debug` and the knobs' JSON never show
/// the secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OAuthClient {
    pub id: String,
    #[serde(default)]
    pub secret: Option<Secret>,
}

impl OAuthClient {
    /// A client with a secret.
    pub fn confidential(id: impl Into<String>, secret: impl Into<String>) -> OAuthClient {
        OAuthClient {
            id: id.into(),
            secret: Some(Secret::new(secret)),
        }
    }

    /// A client without a secret, which must send a PKCE `code_challenge`.
    pub fn public(id: impl Into<String>) -> OAuthClient {
        OAuthClient {
            id: id.into(),
            secret: None,
        }
    }
}

/// `ID` or `ID:SECRET`, as `--oauth-client` takes it.
impl std::str::FromStr for OAuthClient {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let client = match s.split_once(':') {
            Some((id, secret)) => OAuthClient::confidential(id, secret),
            None => OAuthClient::public(s),
        };
        client.check()?;
        Ok(client)
    }
}

impl OAuthClient {
    fn check(&self) -> Result<(), String> {
        if self.id.trim().is_empty() {
            return Err("an OAuth client needs an id".into());
        }
        if self.secret.as_ref().is_some_and(|s| s.matches("")) {
            return Err(format!(
                "OAuth client {:?}: an empty secret (leave it out for a public client)",
                self.id
            ));
        }
        Ok(())
    }
}

/// How the emulator loses the answer to a write it applied.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LostAnswer {
    /// Answer 500 as if the write had failed.
    #[serde(rename = "500")]
    Error500,
    /// Close the connection without answering.
    Drop,
    /// One or the other, drawn per lost answer.
    Either,
}

impl Default for RuntimeKnobs {
    fn default() -> Self {
        RuntimeKnobs {
            rpm: None,
            rate_window_secs: 60,
            fail_rate: 0.0,
            latency_ms: 0,
            forced_faults: Vec::new(),
            upsert_user_per_window: 5,
            ticket_updates_per_window: 30,
            ticket_update_window_secs: 600,
            bulk_import: false,
            job_delay_ms: 0,
            job_fail_rate: 0.0,
            job_limit: 30,
            job_limit_status: 429,
            lost_answer_rate: 0.0,
            lost_answer: LostAnswer::Either,
            request_log_size: 10_000,
            links_base: None,
            oauth_clients: Vec::new(),
            access_token_lifetime_secs: 1800,
            refresh_token_lifetime_secs: 2_592_000,
            oauth_latency_ms: 0,
            oauth_lost_answers: 0,
        }
    }
}

impl RuntimeKnobs {
    /// Checks the knobs that have a range (the rates, the job-limit answer, the token
    /// lifetimes) and the OAuth clients (an id each, told apart by it; no empty secret).
    pub fn check(&self) -> Result<(), String> {
        for (name, rate) in [
            ("fail_rate", self.fail_rate),
            ("job_fail_rate", self.job_fail_rate),
            ("lost_answer_rate", self.lost_answer_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1, not {rate}"));
            }
        }
        if ![403, 422, 429].contains(&self.job_limit_status) {
            return Err(format!(
                "job_limit_status must be 403, 422 or 429, not {}",
                self.job_limit_status
            ));
        }
        for (name, secs) in [
            (
                "access_token_lifetime_secs",
                self.access_token_lifetime_secs,
            ),
            (
                "refresh_token_lifetime_secs",
                self.refresh_token_lifetime_secs,
            ),
        ] {
            if !(1..=MAX_LIFETIME_SECS).contains(&secs) {
                return Err(format!(
                    "{name} must be from 1 to {MAX_LIFETIME_SECS} seconds, not {secs}"
                ));
            }
        }
        for (i, client) in self.oauth_clients.iter().enumerate() {
            client.check()?;
            if self.oauth_clients[..i].iter().any(|c| c.id == client.id) {
                return Err(format!("OAuth client {:?} is registered twice", client.id));
            }
        }
        Ok(())
    }
}

/// "The next `count` requests (whose path starts with `path_prefix`, or is `path`, whose query
/// string contains `query`, and whose method is `method`, when given) answer `status`."
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ForcedFault {
    pub status: u16,
    #[serde(default = "one")]
    pub count: u32,
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Only this path (`/api/v2/organization_memberships`, not its `create_many`).
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    /// Only requests whose query string, as sent, contains this (`page%5Bafter%5D`: the
    /// later pages of a cursor-paged list).
    #[serde(default)]
    pub query: Option<String>,
    /// `Retry-After` seconds; 429 and 503 default to 1.
    #[serde(default)]
    pub retry_after: Option<u64>,
}

fn one() -> u32 {
    1
}

impl ForcedFault {
    /// A fault answering `status` to the next request.
    pub fn new(status: u16) -> ForcedFault {
        ForcedFault {
            status,
            count: 1,
            path_prefix: None,
            path: None,
            method: None,
            query: None,
            retry_after: None,
        }
    }

    pub fn times(mut self, count: u32) -> ForcedFault {
        self.count = count;
        self
    }

    pub fn on_path(mut self, prefix: impl Into<String>) -> ForcedFault {
        self.path_prefix = Some(prefix.into());
        self
    }

    /// Only requests to exactly this path.
    pub fn on_exact_path(mut self, path: impl Into<String>) -> ForcedFault {
        self.path = Some(path.into());
        self
    }

    /// Only requests of this method (`PUT`).
    pub fn on_method(mut self, method: impl Into<String>) -> ForcedFault {
        self.method = Some(method.into());
        self
    }

    /// Only requests whose query string contains `part`.
    pub fn on_query(mut self, part: impl Into<String>) -> ForcedFault {
        self.query = Some(part.into());
        self
    }

    pub fn retry_after(mut self, secs: u64) -> ForcedFault {
        self.retry_after = Some(secs);
        self
    }

    fn matches(&self, method: &str, path: &str, query: &str) -> bool {
        self.count > 0
            && self.query.as_deref().is_none_or(|q| query.contains(q))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path.starts_with(p))
            && self.path.as_deref().is_none_or(|p| path == p)
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
    }

    fn answer(&self) -> ApiError {
        let mut err = match self.status {
            401 => ApiError::unauthorized(),
            403 => ApiError::forbidden("You do not have access to this page (emulated fault)"),
            404 => ApiError::not_found(),
            429 => ApiError::account_rate_limited(self.retry_after.unwrap_or(1)),
            s => ApiError::fault(s),
        };
        if self.status != 429
            && let Some(secs) = self.retry_after.or((self.status == 503).then_some(1))
        {
            err.0 = err.0.header("Retry-After", secs.to_string());
        }
        err
    }
}

/// Headers describing the account budget after this request.
pub(crate) struct Budget {
    pub limit: u32,
    pub remaining: u32,
    pub reset_secs: u64,
}

impl Budget {
    pub(crate) fn headers(&self) -> [(&'static str, String); 5] {
        [
            ("X-Rate-Limit", self.limit.to_string()),
            ("X-Rate-Limit-Remaining", self.remaining.to_string()),
            ("ratelimit-limit", self.limit.to_string()),
            ("ratelimit-remaining", self.remaining.to_string()),
            ("ratelimit-reset", self.reset_secs.to_string()),
        ]
    }
}

/// Outcome of an endpoint bucket check that let the request through.
pub(crate) struct Bucket {
    pub total: u32,
    pub remaining: u32,
    pub resets: u64,
}

impl Bucket {
    /// The `Zendesk-RateLimit-<name>` header value.
    pub(crate) fn header_value(&self) -> String {
        format!(
            "total={}; remaining={}; resets={}",
            self.total, self.remaining, self.resets
        )
    }
}

/// Nominal plan limit shown when no budget is configured (Suite Enterprise).
const NOMINAL_RPM: u32 = 700;

/// Counters and the fault RNG.
#[derive(Debug)]
pub(crate) struct Limits {
    pub knobs: RuntimeKnobs,
    rng: StdRng,
    window_start: Duration,
    used: u32,
    buckets: HashMap<String, VecDeque<Duration>>,
}

impl Limits {
    pub(crate) fn new(knobs: RuntimeKnobs, seed: u64) -> Limits {
        Limits {
            knobs,
            rng: StdRng::seed_from_u64(seed),
            window_start: Duration::ZERO,
            used: 0,
            buckets: HashMap::new(),
        }
    }

    /// Forgets all counters (not the knobs).
    pub(crate) fn reset_counters(&mut self, now: Duration) {
        self.window_start = now;
        self.used = 0;
        self.buckets.clear();
    }

    /// Consumes the first forced fault matching this request, if any.
    pub(crate) fn take_forced_fault(
        &mut self,
        method: &str,
        path: &str,
        query: &str,
    ) -> Option<ApiError> {
        let idx = self
            .knobs
            .forced_faults
            .iter()
            .position(|f| f.matches(method, path, query))?;
        let fault = &mut self.knobs.forced_faults[idx];
        fault.count -= 1;
        let answer = fault.answer();
        if fault.count == 0 {
            self.knobs.forced_faults.remove(idx);
        }
        Some(answer)
    }

    /// Counts one request against the account budget.
    pub(crate) fn spend(&mut self, now: Duration) -> Result<Budget, (Budget, ApiError)> {
        let window = Duration::from_secs(self.knobs.rate_window_secs.max(1));
        if now.saturating_sub(self.window_start) >= window {
            // Windows are aligned to the emulator's start, like Zendesk's minute boundaries.
            let n = now.as_secs() / window.as_secs();
            self.window_start = Duration::from_secs(n * window.as_secs());
            self.used = 0;
        }
        let reset_secs = (self.window_start + window)
            .saturating_sub(now)
            .as_secs()
            .max(1);
        let limit = self.knobs.rpm.unwrap_or(NOMINAL_RPM);
        if let Some(rpm) = self.knobs.rpm
            && self.used >= rpm
        {
            let budget = Budget {
                limit,
                remaining: 0,
                reset_secs,
            };
            return Err((budget, ApiError::account_rate_limited(reset_secs)));
        }
        self.used = self.used.saturating_add(1);
        // Without a budget the emulator has no limit to run out of: it reports the nominal
        // plan figure as fully available, so clients that pace by these headers never slow down.
        let remaining = match self.knobs.rpm {
            Some(_) => limit.saturating_sub(self.used),
            None => limit,
        };
        Ok(Budget {
            limit,
            remaining,
            reset_secs,
        })
    }

    /// One draw from the seeded RNG: true with probability `p` (no draw when `p` is 0).
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random::<f64>() < p
    }

    /// Draws against `fail_rate`: `Some(500 or 503)` when this request should fail.
    pub(crate) fn random_fault(&mut self) -> Option<ApiError> {
        if !self.chance(self.knobs.fail_rate) {
            return None;
        }
        let status = if self.rng.random::<bool>() { 500 } else { 503 };
        Some(ApiError::fault(status))
    }

    /// Draws against `lost_answer_rate` for a write that was applied: how its answer is lost.
    pub(crate) fn lost_answer(&mut self) -> Option<LostAnswer> {
        if !self.chance(self.knobs.lost_answer_rate) {
            return None;
        }
        Some(self.how_lost())
    }

    /// For a token answer that succeeded: how it is lost while `oauth_lost_answers` lasts
    /// (one is used up), else `None`.
    pub(crate) fn oauth_lost_answer(&mut self) -> Option<LostAnswer> {
        if self.knobs.oauth_lost_answers == 0 {
            return None;
        }
        self.knobs.oauth_lost_answers -= 1;
        Some(self.how_lost())
    }

    /// `lost_answer`, with `either` drawn.
    fn how_lost(&mut self) -> LostAnswer {
        match self.knobs.lost_answer {
            LostAnswer::Either if self.rng.random::<bool>() => LostAnswer::Error500,
            LostAnswer::Either => LostAnswer::Drop,
            chosen => chosen,
        }
    }

    /// A sliding-window bucket: lets the request through (and counts it) when fewer than `limit`
    /// requests with this key happened in the last `window`; else gives the seconds to wait.
    pub(crate) fn bucket(
        &mut self,
        key: String,
        limit: u32,
        window: Duration,
        now: Duration,
    ) -> Result<Bucket, u64> {
        let log = self.buckets.entry(key).or_default();
        while log
            .front()
            .is_some_and(|t| now.saturating_sub(*t) >= window)
        {
            log.pop_front();
        }
        let resets = |log: &VecDeque<Duration>| {
            log.front().map_or(window.as_secs(), |t| {
                (*t + window).saturating_sub(now).as_secs().max(1)
            })
        };
        if log.len() >= limit as usize {
            return Err(resets(log));
        }
        log.push_back(now);
        Ok(Bucket {
            total: limit,
            remaining: limit - log.len() as u32,
            resets: resets(log),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_bucket_refills_after_the_window() {
        let mut l = Limits::new(RuntimeKnobs::default(), 0);
        let w = Duration::from_secs(60);
        for i in 0..5 {
            assert_eq!(
                l.bucket("u".into(), 5, w, Duration::from_secs(i))
                    .map(|b| b.remaining),
                Ok(4 - i as u32)
            );
        }
        assert_eq!(
            l.bucket("u".into(), 5, w, Duration::from_secs(10)).err(),
            Some(50)
        );
        assert!(l.bucket("u".into(), 5, w, Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn forced_faults_are_consumed_in_order_and_by_prefix() {
        let knobs = RuntimeKnobs {
            forced_faults: vec![ForcedFault::new(503).times(2).on_path("/api/v2/tickets")],
            ..RuntimeKnobs::default()
        };
        let mut l = Limits::new(knobs, 0);
        assert!(l.take_forced_fault("GET", "/api/v2/users/1", "").is_none());
        assert_eq!(
            l.take_forced_fault("POST", "/api/v2/tickets", "")
                .map(|e| e.0.status),
            Some(503)
        );
        assert_eq!(
            l.take_forced_fault("POST", "/api/v2/tickets.json", "")
                .map(|e| e.0.status),
            Some(503)
        );
        assert!(l.take_forced_fault("POST", "/api/v2/tickets", "").is_none());
        assert!(l.knobs.forced_faults.is_empty());
    }

    #[test]
    fn oauth_clients_parse_check_and_hide_their_secret() {
        let c: OAuthClient = "zdmap:s3cret-value"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c, OAuthClient::confidential("zdmap", "s3cret-value"));
        assert_eq!("app".parse(), Ok(OAuthClient::public("app")));
        assert!("app:".parse::<OAuthClient>().is_err());
        assert!(":x".parse::<OAuthClient>().is_err());
        let knobs = RuntimeKnobs {
            oauth_clients: vec![c.clone(), OAuthClient::public("zdmap")],
            ..RuntimeKnobs::default()
        };
        assert!(knobs.check().is_err(), "the same id twice");
        let shown = format!("{knobs:?} {}", serde_json::json!(knobs));
        assert!(!shown.contains("s3cret-value"), "{shown}");
        let zero = RuntimeKnobs {
            access_token_lifetime_secs: 0,
            ..RuntimeKnobs::default()
        };
        assert!(zero.check().is_err());
    }

    #[test]
    fn oauth_lost_answers_are_used_up() {
        let knobs = RuntimeKnobs {
            oauth_lost_answers: 2,
            lost_answer: LostAnswer::Drop,
            ..RuntimeKnobs::default()
        };
        let mut l = Limits::new(knobs, 0);
        assert_eq!(l.oauth_lost_answer(), Some(LostAnswer::Drop));
        assert_eq!(l.oauth_lost_answer(), Some(LostAnswer::Drop));
        assert_eq!(l.oauth_lost_answer(), None);
    }
}
