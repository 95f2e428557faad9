//! The run's counters: events (read, delivered, skipped, failed), requests by endpoint and
//! status, retries and 429s, and the elapsed time. Thread-safe (`&Stats` from every worker),
//! printed by [`Stats::summary`] and serialized (through [`StatsSnapshot`]) for `--json`.
//!
//! Endpoints are counted as `METHOD endpoint`: the request's path with every template part as
//! `{id}` (`POST /api/v2/users/{id}/events`, see [`crate::mapping::request::Request::endpoint`]), so the
//! table stays small and holds no event data; in a path not rendered from a template, id-like
//! segments are replaced by `{id}` too.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::http::{Response, TransportError};
use crate::mapping::request::Method;

/// Counters shared by every worker of a run.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    events_read: AtomicU64,
    delivered: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicU64,
    not_attempted: AtomicU64,
    retries: AtomicU64,
    rate_limited: AtomicU64,
    stale: AtomicU64,
    unchanged: AtomicU64,
    future_times: AtomicU64,
    confirmed: AtomicU64,
    /// Keys (users, organizations) whose events wait now: a gauge, for the progress line.
    keys_waiting: AtomicU64,
    /// `METHOD endpoint` → status (`"200"`, `"timeout"`, ...) → count.
    requests: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
    /// How long Zendesk took to answer, per response.
    latency: Histogram,
}

/// A point-in-time copy of [`Stats`], the shape of `--json` output.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatsSnapshot {
    pub events_read: u64,
    pub delivered: u64,
    /// No trigger matched.
    pub skipped: u64,
    /// Dead-lettered.
    pub failed: u64,
    /// Left when the run was stopped (a signal): written to the dead-letter file as "not
    /// attempted", for a replay to deliver.
    pub not_attempted: u64,
    pub requests_total: u64,
    /// `METHOD endpoint` → status → count. Statuses are HTTP codes, or `timeout`, `connect`,
    /// `error`, `invalid` for requests that got no response.
    pub requests: BTreeMap<String, BTreeMap<String, u64>>,
    pub retries: u64,
    pub rate_limited: u64,
    /// Changes skipped because their entity had a newer change applied (see `entities:`).
    pub stale: u64,
    /// Writes skipped because they equal the last write applied to their entity
    /// (`skip_unchanged`).
    pub unchanged: u64,
    /// Events whose sender's time was too far ahead, ordered by their receive time instead.
    pub future_times: u64,
    /// Writes found applied by their step's `check` after an ambiguous failure (not sent again).
    pub confirmed: u64,
    pub elapsed_seconds: f64,
    pub events_per_second: f64,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// Starts the clock.
    pub fn new() -> Self {
        Stats {
            started: Instant::now(),
            events_read: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            not_attempted: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            unchanged: AtomicU64::new(0),
            future_times: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            keys_waiting: AtomicU64::new(0),
            requests: Mutex::new(BTreeMap::new()),
            latency: Histogram::new(),
        }
    }

    pub(crate) fn event_read(&self) {
        self.events_read.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn event_delivered(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }

    /// No trigger matched the event.
    pub(crate) fn event_skipped(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// The event went to the dead letters.
    pub(crate) fn event_failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// The run stopped before the event was delivered: it went to the dead letters as "not
    /// attempted".
    pub(crate) fn event_not_attempted(&self) {
        self.not_attempted.fetch_add(1, Ordering::Relaxed);
    }

    /// How many keys wait now (set by the scheduler's dispatcher).
    pub(crate) fn set_keys_waiting(&self, n: u64) {
        self.keys_waiting.store(n, Ordering::Relaxed);
    }

    pub fn keys_waiting(&self) -> u64 {
        self.keys_waiting.load(Ordering::Relaxed)
    }

    /// A request is about to be sent again.
    pub fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// An action was skipped: an entity it changes had a newer change applied.
    pub fn stale(&self) {
        self.stale.fetch_add(1, Ordering::Relaxed);
    }

    /// A write was skipped: the last write applied to its entity was the same.
    pub(crate) fn unchanged(&self) {
        self.unchanged.fetch_add(1, Ordering::Relaxed);
    }

    /// An event's time was too far in the future and its receive time ordered it.
    pub(crate) fn future_time(&self) {
        self.future_times.fetch_add(1, Ordering::Relaxed);
    }

    /// A write whose answer was lost was found applied by its check.
    pub fn confirmed(&self) {
        self.confirmed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one attempt of `method path` and how it ended.
    pub(crate) fn record_request(
        &self,
        method: Method,
        path: &str,
        outcome: &Result<Response, TransportError>,
    ) {
        let status = match outcome {
            Ok(r) => {
                self.latency.observe(r.elapsed);
                if r.status == 429 {
                    self.rate_limited.fetch_add(1, Ordering::Relaxed);
                }
                r.status.to_string()
            }
            Err(e) => e.kind().to_string(),
        };
        let key = format!("{method} {}", normalize_endpoint(path));
        let mut requests = self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *requests.entry(key).or_default().entry(status).or_default() += 1;
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// How long Zendesk took to answer.
    pub fn latency(&self) -> &Histogram {
        &self.latency
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let elapsed = self.elapsed().as_secs_f64();
        let events_read = self.events_read.load(Ordering::Relaxed);
        StatsSnapshot {
            events_read,
            delivered: self.delivered.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            not_attempted: self.not_attempted.load(Ordering::Relaxed),
            requests_total: requests.values().flat_map(BTreeMap::values).sum(),
            requests,
            retries: self.retries.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            unchanged: self.unchanged.load(Ordering::Relaxed),
            future_times: self.future_times.load(Ordering::Relaxed),
            confirmed: self.confirmed.load(Ordering::Relaxed),
            elapsed_seconds: elapsed,
            events_per_second: if elapsed > 0.0 {
                events_read as f64 / elapsed
            } else {
                0.0
            },
        }
    }

    /// A readable multi-line summary for the end of a run.
    pub fn summary(&self) -> String {
        self.snapshot().summary()
    }
}

impl StatsSnapshot {
    /// See [`Stats::summary`].
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "events: {} read, {} delivered, {} skipped (no trigger matched), {} failed (dead-lettered)",
            self.events_read, self.delivered, self.skipped, self.failed
        );
        if self.not_attempted > 0 {
            let _ = writeln!(
                out,
                "stopped: {} events not attempted (written to the dead-letter file; replay it to deliver them)",
                self.not_attempted
            );
        }
        let _ = writeln!(
            out,
            "requests: {} attempted, {} retries, {} rate-limited (429)",
            self.requests_total, self.retries, self.rate_limited
        );
        if self.stale > 0 || self.confirmed > 0 || self.unchanged > 0 {
            let _ = writeln!(
                out,
                "changes: {} stale skipped (an entity had a newer change applied; --force applies them), \
                 {} writes found applied by their check after a lost answer, \
                 {} unchanged skipped (the same as the last write applied)",
                self.stale, self.confirmed, self.unchanged
            );
        }
        let width = self.requests.keys().map(String::len).max().unwrap_or(0);
        for (endpoint, statuses) in &self.requests {
            let statuses = statuses
                .iter()
                .map(|(status, n)| format!("{status} ×{n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(out, "  {endpoint:<width$}  {statuses}");
        }
        let _ = write!(
            out,
            "elapsed: {:.1} s ({:.1} events/s)",
            self.elapsed_seconds, self.events_per_second
        );
        out
    }
}

/// A latency histogram with fixed buckets (seconds), lock-free, in Prometheus' shape.
#[derive(Debug)]
pub struct Histogram {
    /// Count per bucket of [`Histogram::BOUNDS`], plus one for `+Inf`.
    buckets: [AtomicU64; Histogram::BOUNDS.len() + 1],
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// Upper bounds of the buckets, in seconds.
    /// Finer between 0.5 s and 2.5 s, where a batch window and its jobs put an event's delivery.
    pub const BOUNDS: [f64; 18] = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5,
        5.0, 10.0, 30.0,
    ];

    pub fn new() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = Self::BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(Self::BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Cumulative counts per upper bound (the last is `+Inf`, i.e. the total), and the sum in
    /// seconds.
    pub fn cumulative(&self) -> (Vec<(f64, u64)>, f64) {
        let mut total = 0;
        let mut out = Vec::with_capacity(self.buckets.len());
        for (i, bucket) in self.buckets.iter().enumerate() {
            total += bucket.load(Ordering::Relaxed);
            out.push((Self::BOUNDS.get(i).copied().unwrap_or(f64::INFINITY), total));
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (out, sum)
    }
}

impl Serialize for Stats {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.snapshot().serialize(serializer)
    }
}

/// The path with ids replaced by `{id}`: numeric segments (`123`, `123.json`), long hex ids
/// (job statuses) and percent-encoded values (an email, an external id). The query is dropped.
pub fn normalize_endpoint(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    path.split('/')
        .map(|segment| {
            let (stem, suffix) = match segment.strip_suffix(".json") {
                Some(stem) => (stem, ".json"),
                None => (segment, ""),
            };
            if is_id(stem) {
                format!("{{id}}{suffix}")
            } else {
                segment.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn is_id(segment: &str) -> bool {
    if segment.is_empty() {
        return false;
    }
    let all_digits = segment.bytes().all(|b| b.is_ascii_digit());
    let long_hex = segment.len() >= 16
        && segment.bytes().all(|b| b.is_ascii_hexdigit())
        && segment.bytes().any(|b| b.is_ascii_digit());
    let ulid = segment.len() == 26
        && segment
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
    all_digits || long_hex || ulid || segment.contains('%') || segment.contains('@')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::http::ResponseHeaders;

    #[test]
    fn endpoints_are_normalized() {
        for (path, want) in [
            (
                "/api/v2/users/8929981612030/events",
                "/api/v2/users/{id}/events",
            ),
            (
                "/api/v2/users/create_or_update",
                "/api/v2/users/create_or_update",
            ),
            ("/api/v2/tickets/42.json", "/api/v2/tickets/{id}.json"),
            (
                "/api/v2/job_statuses/8b726e606741012ffc2d782bcb7848fe",
                "/api/v2/job_statuses/{id}",
            ),
            ("/api/v2/users/search?query=x", "/api/v2/users/search"),
            (
                "/api/v2/organizations/1/organization_memberships/2",
                "/api/v2/organizations/{id}/organization_memberships/{id}",
            ),
            (
                "/api/v2/users/a%40b.co/identities",
                "/api/v2/users/{id}/identities",
            ),
            ("/api/v2/user_fields", "/api/v2/user_fields"),
        ] {
            assert_eq!(normalize_endpoint(path), want, "{path}");
        }
    }

    #[test]
    fn counts_and_summary() {
        let stats = Stats::new();
        stats.event_read();
        stats.event_read();
        stats.event_delivered();
        stats.event_skipped();
        let ok = |status| {
            Ok(Response {
                status,
                headers: ResponseHeaders::default(),
                body: serde_json::Value::Null,
                elapsed: Duration::ZERO,
                job: None,
            })
        };
        stats.record_request(Method::Post, "/api/v2/users/1/events", &ok(429));
        stats.retry();
        stats.record_request(Method::Post, "/api/v2/users/2/events", &ok(202));
        stats.record_request(
            Method::Get,
            "/api/v2/users/search",
            &Err(TransportError::InvalidRequest {
                message: "x".into(),
            }),
        );
        let snap = stats.snapshot();
        assert_eq!(snap.events_read, 2);
        assert_eq!(snap.requests_total, 3);
        assert_eq!(snap.rate_limited, 1);
        assert_eq!(snap.requests["POST /api/v2/users/{id}/events"]["429"], 1);
        assert_eq!(snap.requests["POST /api/v2/users/{id}/events"]["202"], 1);
        assert_eq!(snap.requests["GET /api/v2/users/search"]["invalid"], 1);
        let summary = stats.summary();
        assert!(
            summary.contains("2 read, 1 delivered, 1 skipped"),
            "{summary}"
        );
        assert!(
            summary.contains("POST /api/v2/users/{id}/events  202 ×1, 429 ×1"),
            "{summary}"
        );
        let json = serde_json::to_value(&stats).expect("serializes");
        assert_eq!(json["retries"], 1);
    }
}
