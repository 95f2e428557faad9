//! What the server counts and how it tells: `/metrics` in Prometheus' text format, and the
//! readiness that `/readyz` reports.
//!
//! Zendesk requests (by endpoint and status, 429s, retries, latency) are counted by the
//! delivery [`Stats`]; the server adds its own counters: events accepted, delivered, skipped,
//! dead-lettered, ingest requests refused, calls refused at ingest by reason, calls dropped as sent
//! before, connections, config reloads, and two latency histograms (the ingest request, and
//! accept → delivered).

use crate::deliver::Stats;
use crate::deliver::schedule::{Status, WaitReason};
use crate::deliver::stats::Histogram;
use crate::serve::ingest::Reason;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The server's own counters.
#[derive(Debug, Default)]
pub struct Metrics {
    pub accepted: AtomicU64,
    pub delivered: AtomicU64,
    pub skipped: AtomicU64,
    /// Events that went to the dead letters (one event may leave several letters).
    pub dead_lettered: AtomicU64,
    /// Delivery attempts of an event that will be tried again later (Zendesk down, 429s).
    pub deferred: AtomicU64,
    /// Times an event waited because another replica held its organization.
    pub held_elsewhere: AtomicU64,
    pub rejected_bad_request: AtomicU64,
    pub rejected_unauthorized: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// 1 while the mappings on disk do not load (the last good config keeps running).
    pub reload_failing: AtomicU64,
    /// Calls of accepted requests refused at ingest (kept as dead letters), by [`Reason`].
    pub events_refused: [AtomicU64; Reason::ALL.len()],
    /// Calls dropped because their `messageId` was accepted within the deduplication window.
    pub duplicates: AtomicU64,
    pub connections_open: AtomicU64,
    /// Connections closed at once because the connection cap was reached and every connection
    /// had a request in flight.
    pub connections_refused: AtomicU64,
    /// Connections with no request in flight closed to give their slot to a new one.
    pub connections_evicted: AtomicU64,
    /// Connections closed because a request's head did not come within the header timeout.
    pub connections_timed_out: AtomicU64,
    /// Time to answer an ingest request (including the durable write).
    pub ingest_latency: Histogram,
    /// Time from accepting an event to Zendesk having it.
    pub delivery_latency: Histogram,
    /// What the delivery scheduler holds up (keys waiting by reason, the oldest wait).
    delivery: Mutex<Status>,
    /// When the config was last reloaded, and whether it loaded.
    last_reload: Mutex<Option<(String, bool)>>,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set_delivery(&self, status: Status) {
        *crate::base::sync::lock(&self.delivery) = status;
    }

    /// Counts a reload of the config, and when it was.
    pub(crate) fn note_reload(&self, loaded: bool) {
        let counter = if loaded {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.reload_failing
            .store(u64::from(!loaded), Ordering::Relaxed);
        let at = crate::base::time::rfc3339_utc(std::time::SystemTime::now());
        *crate::base::sync::lock(&self.last_reload) = Some((at, loaded));
    }

    /// The reloads since start, and the last one (`null` before any).
    pub fn reloads(&self) -> serde_json::Value {
        let last = crate::base::sync::lock(&self.last_reload).clone();
        serde_json::json!({
            "loaded": self.reloads_ok.load(Ordering::Relaxed),
            "refused": self.reloads_failed.load(Ordering::Relaxed),
            "last": last.map(|(at, loaded)| serde_json::json!({"at": at, "loaded": loaded})),
        })
    }

    /// What the delivery scheduler held up when it last said.
    pub fn delivery(&self) -> Status {
        crate::base::sync::lock(&self.delivery).clone()
    }
}

/// Why the server is not ready, if it is not. Each reason is set and cleared on its own.
#[derive(Debug, Default)]
pub struct Health {
    inner: Mutex<HealthState>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct HealthState {
    /// Zendesk refuses the credentials (401/403): delivery waits.
    pub zendesk_auth: Option<String>,
    /// The mappings on disk (or the credentials) do not load: reported, but the server stays
    /// ready, since the last good config keeps running.
    pub config: Option<String>,
    /// The queue could not be read or written.
    pub queue: Option<String>,
    /// The queue's storage refuses writes (disk full, read-only): reported by the queue itself,
    /// from a failed write until a write succeeds again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_write: Option<String>,
}

impl HealthState {
    pub fn ready(&self) -> bool {
        self.zendesk_auth.is_none() && self.queue.is_none() && self.queue_write.is_none()
    }
}

impl Health {
    pub fn state(&self) -> HealthState {
        self.lock().clone()
    }

    /// Zendesk refuses the credentials (`None`: no longer). The problem is told with what to do.
    pub(crate) fn set_zendesk_auth(&self, problem: Option<String>) {
        self.lock().zendesk_auth = problem.map(|p| {
            format!(
                "{p}. Fix the credentials (their environment variables, or the files their _FILE \
                 variables name) and reload (SIGHUP): the waiting events go then"
            )
        });
    }

    pub fn set_config(&self, problem: Option<String>) {
        self.lock().config = problem;
    }

    pub(crate) fn set_queue(&self, problem: Option<String>) {
        self.lock().queue = problem;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        crate::base::sync::lock(&self.inner)
    }
}

/// The families a server with several destinations shows once, without a destination: what
/// the ingest API and the process count. Every other family is a destination's.
const SERVER_WIDE: [&str; 12] = [
    "zdmap_events_accepted_total",
    "zdmap_ingest_rejected_total",
    "zdmap_events_refused_total",
    "zdmap_events_duplicate_total",
    "zdmap_connections_open",
    "zdmap_connections_refused_total",
    "zdmap_connections_evicted_total",
    "zdmap_connections_timed_out_total",
    "zdmap_ingest_request_duration_seconds",
    "zdmap_ready",
    "zdmap_journal_dropped_total",
    "zdmap_future_timestamps_total",
];

/// The texts of several destinations' metrics (each as [`render`] gives it, with what its
/// queue and credentials add) as one exposition: each family once, its samples labeled
/// `destination="NAME"`; the server-wide families taken from the first text only, as they are.
pub fn by_destination(texts: &[(&str, String)]) -> String {
    // Families in the order they first appear: (name, HELP and TYPE lines, samples).
    let mut families: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
    for (i, (destination, text)) in texts.iter().enumerate() {
        let mut current: Option<usize> = None;
        for line in text.lines() {
            if let Some(rest) = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "))
            {
                let name = rest.split(' ').next().unwrap_or_default();
                let at = match families.iter().position(|(n, _, _)| n == name) {
                    Some(at) => at,
                    None => {
                        families.push((name.to_owned(), Vec::new(), Vec::new()));
                        families.len() - 1
                    }
                };
                if !families[at].1.iter().any(|l| l == line) {
                    families[at].1.push(line.to_owned());
                }
                current = Some(at);
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some(at) = current else { continue };
            if SERVER_WIDE.contains(&families[at].0.as_str()) {
                if i == 0 {
                    families[at].2.push(line.to_owned());
                }
                continue;
            }
            families[at]
                .2
                .push(with_label(line, "destination", destination));
        }
    }
    let mut out = String::with_capacity(texts.iter().map(|(_, t)| t.len()).sum());
    for (_, heads, samples) in families {
        for line in heads.iter().chain(&samples) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// `sample` (`name{a="b"} 1` or `name 1`) with the label `name="value"` added first.
fn with_label(sample: &str, name: &str, value: &str) -> String {
    let label = format!("{name}=\"{}\"", escape(value));
    match sample.find(['{', ' ']) {
        Some(at) if sample[at..].starts_with("{}") => {
            format!("{}{{{label}}}{}", &sample[..at], &sample[at + 2..])
        }
        Some(at) if sample[at..].starts_with('{') => {
            format!("{}{{{label},{}", &sample[..at], &sample[at + 1..])
        }
        Some(at) => format!("{}{{{label}}}{}", &sample[..at], &sample[at..]),
        None => sample.to_owned(),
    }
}

/// Renders everything in Prometheus' text exposition format (version 0.0.4).
pub fn render(metrics: &Metrics, stats: &Stats, queue_depth: Option<u64>, ready: bool) -> String {
    let mut out = String::with_capacity(4096);
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let counters = [
        (
            "zdmap_events_accepted_total",
            "Events accepted by the ingest API and stored.",
            get(&metrics.accepted),
        ),
        (
            "zdmap_events_delivered_total",
            "Events whose actions all reached Zendesk.",
            get(&metrics.delivered),
        ),
        (
            "zdmap_events_skipped_total",
            "Events no trigger matched.",
            get(&metrics.skipped),
        ),
        (
            "zdmap_events_dead_lettered_total",
            "Events moved to the dead letters.",
            get(&metrics.dead_lettered),
        ),
        (
            "zdmap_events_deferred_total",
            "Delivery attempts put off to be tried again (Zendesk unavailable or refusing credentials).",
            get(&metrics.deferred),
        ),
        (
            "zdmap_delivery_held_elsewhere_total",
            "Times an event waited because another replica delivered an event of its organization.",
            get(&metrics.held_elsewhere),
        ),
    ];
    for (name, help, value) in counters {
        counter(&mut out, name, help, value);
    }
    labeled_counter(
        &mut out,
        "zdmap_ingest_rejected_total",
        "Ingest requests refused, by reason.",
        "reason",
        &[
            ("bad_request", get(&metrics.rejected_bad_request)),
            ("unauthorized", get(&metrics.rejected_unauthorized)),
        ],
    );
    let refused: Vec<(&str, u64)> = Reason::ALL
        .iter()
        .map(|r| (r.label(), get(&metrics.events_refused[*r as usize])))
        .collect();
    labeled_counter(
        &mut out,
        "zdmap_events_refused_total",
        "Calls refused at ingest and kept as dead letters, by reason (their batch was accepted).",
        "reason",
        &refused,
    );
    counter(
        &mut out,
        "zdmap_events_duplicate_total",
        "Calls dropped because their messageId was accepted within the deduplication window.",
        get(&metrics.duplicates),
    );
    gauge(
        &mut out,
        "zdmap_connections_open",
        "Ingest connections open.",
        get(&metrics.connections_open),
    );
    counter(
        &mut out,
        "zdmap_connections_refused_total",
        "Connections closed on arrival: the connection cap was reached and every connection had a request in flight.",
        get(&metrics.connections_refused),
    );
    counter(
        &mut out,
        "zdmap_connections_evicted_total",
        "Connections with no request in flight closed to make room for a new one at the connection cap.",
        get(&metrics.connections_evicted),
    );
    counter(
        &mut out,
        "zdmap_connections_timed_out_total",
        "Connections closed because a request's head did not come within the header timeout.",
        get(&metrics.connections_timed_out),
    );
    gauge(
        &mut out,
        "zdmap_config_reload_failing",
        "1 while the mappings on disk do not load; the last good config keeps running.",
        get(&metrics.reload_failing),
    );
    labeled_counter(
        &mut out,
        "zdmap_config_reloads_total",
        "Config reloads, by result.",
        "result",
        &[
            ("ok", get(&metrics.reloads_ok)),
            ("failed", get(&metrics.reloads_failed)),
        ],
    );
    if let Some(depth) = queue_depth {
        gauge(
            &mut out,
            "zdmap_queue_depth",
            "Events stored and not yet delivered.",
            depth,
        );
    }
    gauge(
        &mut out,
        "zdmap_ready",
        "1 when /readyz answers 200.",
        u64::from(ready),
    );
    let delivery = metrics.delivery();
    gauge(
        &mut out,
        "zdmap_delivery_events_held",
        "Events the delivery scheduler holds (running, ready, waiting).",
        delivery.events as u64,
    );
    let waiting: Vec<(&str, u64)> = WaitReason::ALL
        .iter()
        .map(|r| {
            let n = delivery.keys_waiting.get(r).copied().unwrap_or(0);
            (r.as_str(), n as u64)
        })
        .collect();
    labeled(
        &mut out,
        "gauge",
        "zdmap_delivery_keys_waiting",
        "Keys (users, organizations) whose events wait, by reason.",
        "reason",
        &waiting,
    );
    gauge(
        &mut out,
        "zdmap_delivery_parked_bytes",
        "Bytes of the events waiting for a record whose body is in memory.",
        delivery.parked_bytes,
    );
    gauge(
        &mut out,
        "zdmap_delivery_parked_in_queue",
        "Events waiting for a record whose body waits in the queue, not in memory.",
        delivery.parked_in_queue as u64,
    );
    let _ = writeln!(
        out,
        "# HELP zdmap_delivery_oldest_waiting_seconds Age of the oldest event that waits.\n# TYPE zdmap_delivery_oldest_waiting_seconds gauge\nzdmap_delivery_oldest_waiting_seconds {}",
        delivery.oldest_waiting_seconds
    );

    let snapshot = stats.snapshot();
    let _ = writeln!(
        out,
        "# HELP zdmap_zendesk_requests_total Zendesk requests by endpoint and status (or transport failure).\n# TYPE zdmap_zendesk_requests_total counter"
    );
    for (endpoint, statuses) in &snapshot.requests {
        for (status, n) in statuses {
            let _ = writeln!(
                out,
                "zdmap_zendesk_requests_total{{endpoint=\"{}\",status=\"{}\"}} {n}",
                escape(endpoint),
                escape(status)
            );
        }
    }
    counter(
        &mut out,
        "zdmap_zendesk_rate_limited_total",
        "Zendesk answers 429.",
        snapshot.rate_limited,
    );
    counter(
        &mut out,
        "zdmap_zendesk_retries_total",
        "Zendesk requests sent again.",
        snapshot.retries,
    );
    counter(
        &mut out,
        "zdmap_stale_changes_total",
        "Actions skipped because an entity they change had a newer change applied.",
        snapshot.stale,
    );
    counter(
        &mut out,
        "zdmap_unchanged_writes_skipped_total",
        "Writes not sent because they equal the last write applied to their entity (skip_unchanged).",
        snapshot.unchanged,
    );
    counter(
        &mut out,
        "zdmap_future_timestamps_total",
        "Events whose sender's time was over five minutes past their receive time, ordered by the receive time instead.",
        snapshot.future_times,
    );
    counter(
        &mut out,
        "zdmap_writes_confirmed_total",
        "Writes whose answer was lost, found applied by their check (not sent again).",
        snapshot.confirmed,
    );
    histogram(
        &mut out,
        "zdmap_zendesk_request_duration_seconds",
        "Time Zendesk took to answer a request.",
        stats.latency(),
    );
    histogram(
        &mut out,
        "zdmap_ingest_request_duration_seconds",
        "Time to answer an ingest request, durable write included.",
        &metrics.ingest_latency,
    );
    histogram(
        &mut out,
        "zdmap_delivery_latency_seconds",
        "Time from accepting an event to Zendesk having it.",
        &metrics.delivery_latency,
    );
    out
}

/// What the delivery log dropped because its writer fell behind.
pub(crate) fn render_journal(out: &mut String, journal: &crate::queue::journal::Journal) {
    counter(
        out,
        "zdmap_journal_dropped_total",
        "Entries of the delivery log dropped because its writer fell behind (delivery never waits for it).",
        journal.dropped(),
    );
}

/// The OAuth token requests and the state of the credentials.
pub(crate) fn render_oauth(out: &mut String, stats: &crate::deliver::auth::AuthStats) {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    labeled_counter(
        out,
        "zdmap_oauth_token_requests_total",
        "OAuth token requests (client credentials, refresh), by result.",
        "result",
        &[
            ("issued", get(&stats.issued)),
            ("refused", get(&stats.refused)),
            ("failed", get(&stats.failed)),
        ],
    );
    counter(
        out,
        "zdmap_oauth_invalid_grant_total",
        "Refresh tokens Zendesk refused as spent, revoked or expired.",
        get(&stats.invalid_grant),
    );
    counter(
        out,
        "zdmap_oauth_renewed_after_401_total",
        "Requests answered 401 whose access token was renewed and which were sent again.",
        get(&stats.renewed_after_401),
    );
    gauge(
        out,
        "zdmap_oauth_login_needed",
        "1 while the OAuth refresh-token chain is gone and a person must run `zdmap auth login`.",
        get(&stats.login_needed),
    );
    gauge(
        out,
        "zdmap_oauth_client_refused",
        "1 while Zendesk refuses the OAuth client.",
        get(&stats.client_refused),
    );
    gauge(
        out,
        "zdmap_oauth_token_expires_at_seconds",
        "When the access token in use expires, in Unix seconds (0: not expiring, or none yet).",
        get(&stats.expires_at),
    );
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

/// One counter with a series per value of `label`.
fn labeled_counter(out: &mut String, name: &str, help: &str, label: &str, series: &[(&str, u64)]) {
    labeled(out, "counter", name, help, label, series);
}

/// One metric of `kind` with a series per value of `label`.
fn labeled(
    out: &mut String,
    kind: &str,
    name: &str,
    help: &str,
    label: &str,
    series: &[(&str, u64)],
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (value, count) in series {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {count}");
    }
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    let (buckets, sum) = h.cumulative();
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut count = 0;
    for (bound, n) in buckets {
        let le = if bound.is_infinite() {
            "+Inf".to_owned()
        } else {
            bound.to_string()
        };
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
        count = n;
    }
    let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_destinations_metrics_are_labeled_and_each_family_said_once() {
        let eu = "# HELP zdmap_events_delivered_total D.\n# TYPE zdmap_events_delivered_total counter\nzdmap_events_delivered_total 3\n# HELP zdmap_events_accepted_total A.\n# TYPE zdmap_events_accepted_total counter\nzdmap_events_accepted_total 5\n# HELP zdmap_zendesk_requests_total R.\n# TYPE zdmap_zendesk_requests_total counter\nzdmap_zendesk_requests_total{endpoint=\"x\",status=\"200\"} 2\n";
        let us = eu.replace(" 3\n", " 1\n").replace(" 5\n", " 0\n");
        let text = by_destination(&[("eu", eu.to_owned()), ("us", us)]);
        assert_eq!(
            text.matches("# TYPE zdmap_events_delivered_total").count(),
            1
        );
        assert!(
            text.contains("zdmap_events_delivered_total{destination=\"eu\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("zdmap_events_delivered_total{destination=\"us\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("zdmap_events_accepted_total 5\n"), "{text}");
        assert!(!text.contains("zdmap_events_accepted_total 0"), "{text}");
        assert!(
            text.contains(
                "zdmap_zendesk_requests_total{destination=\"us\",endpoint=\"x\",status=\"200\"} 2\n"
            ),
            "{text}"
        );
    }

    use std::time::Duration;

    #[test]
    fn renders_counters_gauges_and_cumulative_histograms() {
        let metrics = Metrics::default();
        Metrics::add(&metrics.accepted, 3);
        metrics.delivery_latency.observe(Duration::from_millis(3));
        metrics
            .delivery_latency
            .observe(Duration::from_millis(1_300));
        metrics.delivery_latency.observe(Duration::from_secs(60));
        metrics.set_delivery(Status {
            events: 4,
            running: 1,
            keys_waiting: [(WaitReason::MissingRecord, 2)].into_iter().collect(),
            oldest_waiting_seconds: 1.5,
            parked_bytes: 2048,
            parked_in_queue: 3,
        });
        let stats = Stats::new();
        stats.stale();
        stats.confirmed();
        stats.confirmed();
        let text = render(&metrics, &stats, Some(2), false);
        assert!(text.contains("zdmap_events_accepted_total 3\n"), "{text}");
        assert!(text.contains("zdmap_stale_changes_total 1\n"), "{text}");
        assert!(text.contains("zdmap_writes_confirmed_total 2\n"), "{text}");
        assert!(
            text.contains("zdmap_delivery_keys_waiting{reason=\"missing_record\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("zdmap_delivery_keys_waiting{reason=\"retry\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("zdmap_delivery_oldest_waiting_seconds 1.5\n")
                && text.contains("zdmap_delivery_parked_bytes 2048\n")
                && text.contains("zdmap_delivery_parked_in_queue 3\n"),
            "{text}"
        );
        assert!(text.contains("zdmap_queue_depth 2\n"), "{text}");
        assert!(text.contains("zdmap_ready 0\n"), "{text}");
        assert!(
            text.contains("zdmap_delivery_latency_seconds_bucket{le=\"0.005\"} 1\n"),
            "{text}"
        );
        // Finer buckets around a batch window and its jobs: 1.3 s lies between 1.25 and 1.5.
        assert!(
            text.contains("zdmap_delivery_latency_seconds_bucket{le=\"1.25\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("zdmap_delivery_latency_seconds_bucket{le=\"1.5\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("zdmap_delivery_latency_seconds_bucket{le=\"30\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("zdmap_delivery_latency_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("zdmap_delivery_latency_seconds_count 3\n"),
            "{text}"
        );
        assert!(
            text.contains("zdmap_delivery_latency_seconds_sum 61.303\n"),
            "{text}"
        );
        // Prometheus' rules for a histogram: bounds increasing, counts cumulative, `+Inf` last
        // and equal to the count.
        let buckets: Vec<(f64, u64)> = text
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("zdmap_delivery_latency_seconds_bucket{le=\"")?;
                let (le, n) = rest.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, n.parse().ok()?))
            })
            .collect();
        assert_eq!(buckets.len(), Histogram::BOUNDS.len() + 1);
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1)
        );
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 3)));
        assert_eq!(escape("a\"b\\c"), "a\\\"b\\\\c");
    }
}
