//! `zdmap serve` under load: how fast events are accepted and stored, and how long they take to
//! reach the emulator.
//!
//! Criterion measures the two pieces of an ingest request on their own: turning a 100-event
//! `/v1/batch` body into queue items, and the durable write of such batches (group commit, 8
//! writers at once). Then a load run against the server (in this process, delivering to the
//! built-in emulator with no rate limit): (1) a second process on loopback (this bench binary
//! started again as a load generator) posts 30 000 events in batches of 100 over 8 connections
//! as fast as they are answered, and reports events/s accepted and stored and the p50/p99
//! latency of `/v1/batch`; (2) the backlog drains, giving delivery events/s and requests per
//! event; (3) a steady 100 events/s for 30 s gives the accept → delivered latency of each
//! event, exactly (the server's `event delivered` debug line carries it; its `/metrics`
//! histogram is checked against it). The load run goes twice: unbatched, then batching on as
//! `zdmap serve` does by default; the emulator has bulk user imports off (a new account) and
//! its jobs take 500 ms.
//! Run: `cargo bench --bench ingest`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test or bench says what it expected

use criterion::{Criterion, Throughput};
use delivered::{DeliveredTimes, rank};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zdmap::queue::{Queue, SqliteQueue};
use zdmap::serve::ingest::{Endpoint, WriteKeys, events};
use zdmap::serve::{ServeOptions, Server, WorkerOptions};

#[path = "support/allocator.rs"]
mod allocator;
#[path = "support/delivered.rs"]
mod delivered;
#[path = "support/emulated.rs"]
mod emulated;
#[path = "support/mix.rs"]
mod mix;

/// Set in the environment of the load-generator process: the server's URL.
const LOADGEN: &str = "ZDMAP_BENCH_LOADGEN_URL";
const KEY: &str = "bench-key";
const BATCH: usize = 100;
const CONNECTIONS: usize = 8;
/// Batches posted by the load generator (300 × 100 = 30 000 events).
const LOAD_BATCHES: usize = 300;

/// `{"batch":[...]}` bodies of `BATCH` mixed events each.
fn batches(n: usize) -> Vec<Vec<u8>> {
    mix::mixed_events(n * BATCH)
        .chunks(BATCH)
        .map(|chunk| {
            let mut body = b"{\"batch\":[".to_vec();
            for (i, e) in chunk.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(e);
            }
            body.extend_from_slice(b"]}");
            body
        })
        .collect()
}

fn pieces(c: &mut Criterion) {
    let bodies = batches(20);
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("parse_and_check_batch_of_100", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % bodies.len();
            events(Endpoint::Batch, &bodies[i], "2026-11-25T00:00:00Z").map(|c| c.accepted.len())
        })
    });
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp");
    // The same items are pushed again and again: no deduplication.
    let queue = Arc::new(
        SqliteQueue::open(dir.path())
            .expect("queue")
            .with_dedupe_window(Duration::ZERO),
    );
    let items = events(Endpoint::Batch, &bodies[0], "2026-11-25T00:00:00Z")
        .expect("items")
        .accepted;
    group.throughput(Throughput::Elements((BATCH * CONNECTIONS) as u64));
    group.bench_function("durable_push_8_concurrent_batches_of_100", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let pushes = (0..CONNECTIONS).map(|_| {
                    let queue = queue.clone();
                    let items = items.clone();
                    tokio::spawn(async move { queue.push(items, Vec::new()).await })
                });
                for p in pushes.collect::<Vec<_>>() {
                    let _ = p.await;
                }
            })
        })
    });
    group.finish();
}

/// The load generator: `CONNECTIONS` clients posting `LOAD_BATCHES` batches between them as fast
/// as they are answered; prints one JSON line with what it saw.
fn loadgen(url: String) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let bodies = Arc::new(batches(LOAD_BATCHES));
        let client = reqwest::Client::new();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let started = Instant::now();
        let tasks: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                let (client, bodies, url, next) =
                    (client.clone(), bodies.clone(), url.clone(), next.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut failed = 0u64;
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(body) = bodies.get(i) else { break };
                        let t = Instant::now();
                        let ok = post(&client, &url, body.clone()).await;
                        if ok {
                            latencies.push(t.elapsed());
                        } else {
                            failed += 1;
                        }
                    }
                    (latencies, failed)
                })
            })
            .collect();
        let mut latencies = Vec::new();
        let mut failed = 0;
        for t in tasks {
            if let Ok((l, f)) = t.await {
                latencies.extend(l);
                failed += f;
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        latencies.sort_unstable();
        let q = |p: f64| {
            let i = ((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1));
            latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        let report = serde_json::json!({
            "requests": latencies.len(),
            "failed": failed,
            "events": latencies.len() * BATCH,
            "seconds": seconds,
            "events_per_second": (latencies.len() * BATCH) as f64 / seconds,
            "p50_ms": q(0.50),
            "p99_ms": q(0.99),
        });
        println!("{report}");
    });
}

async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> bool {
    client
        .post(format!("{url}/v1/batch"))
        .basic_auth(KEY, Some(""))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// A server's `/metrics`, read.
struct Metrics(String);

impl Metrics {
    async fn read(url: &str) -> Metrics {
        static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
        let client = CLIENT.get_or_init(reqwest::Client::new);
        let text = match client.get(format!("{url}/metrics")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        Metrics(text)
    }

    fn value(&self, name: &str) -> f64 {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    fn settled(&self) -> f64 {
        self.value("zdmap_events_delivered_total")
            + self.value("zdmap_events_skipped_total")
            + self.value("zdmap_events_dead_lettered_total")
    }

    fn requests(&self) -> f64 {
        self.requests_to(|_| true)
    }

    /// Zendesk requests to the endpoints `which` picks (any status).
    fn requests_to(&self, which: impl Fn(&str) -> bool) -> f64 {
        self.0
            .lines()
            .filter_map(|l| l.strip_prefix("zdmap_zendesk_requests_total{endpoint=\""))
            .filter(|l| which(l.split('"').next().unwrap_or_default()))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Bulk requests and job polls.
    fn bulk_and_polls(&self) -> (f64, f64) {
        (
            self.requests_to(|e| e.contains("_many")),
            self.requests_to(|e| e.contains("job_statuses")),
        )
    }

    /// Cumulative (bound, count) of the accept → delivered histogram.
    fn delivery_buckets(&self) -> Vec<(String, f64)> {
        self.0
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("zdmap_delivery_latency_seconds_bucket{le=\"")?;
                let (le, n) = rest.split_once("\"} ")?;
                Some((le.to_owned(), n.trim().parse::<f64>().ok()?))
            })
            .collect()
    }
}

/// Waits until the queue is empty; returns the metrics then.
async fn drained(url: &str) -> Metrics {
    loop {
        let m = Metrics::read(url).await;
        if m.value("zdmap_queue_depth") == 0.0 {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The upper bound of the `/metrics` bucket holding quantile `p` of the observations between
/// two readings (a check of the histogram against the exact figures).
fn bucket_of(before: &Metrics, after: &Metrics, p: f64) -> String {
    let (b, a) = (before.delivery_buckets(), after.delivery_buckets());
    let deltas: Vec<(String, f64)> = a
        .iter()
        .zip(b.iter().map(|(_, n)| *n).chain(std::iter::repeat(0.0)))
        .map(|((le, n), m)| (le.clone(), n - m))
        .collect();
    let total = deltas.last().map_or(0.0, |(_, n)| *n);
    deltas
        .into_iter()
        .find(|(_, n)| *n >= p * total && total > 0.0)
        .map_or_else(|| "?".into(), |(le, _)| le)
}

/// `{"batch":[...]}` of the given events.
fn batch_body<'a>(events: impl Iterator<Item = &'a Vec<u8>>) -> Vec<u8> {
    let calls: Vec<serde_json::Value> = events
        .filter_map(|e| serde_json::from_slice(e).ok())
        .collect();
    serde_json::to_vec(&serde_json::json!({ "batch": calls })).unwrap_or_default()
}

/// What a paced phase measured: each delivered event's time (ms, sorted) and `/metrics`
/// before and after.
struct Paced {
    events: usize,
    exact: Vec<u64>,
    before: Metrics,
    after: Metrics,
}

/// Posts `bodies` one every 100 ms and waits until they are all settled.
async fn paced(
    url: &str,
    client: &reqwest::Client,
    times: &DeliveredTimes,
    bodies: Vec<Vec<u8>>,
) -> Paced {
    times.take();
    let before = drained(url).await;
    let events = bodies.len() * 10;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for body in bodies {
        tick.tick().await;
        let (client, url) = (client.clone(), url.to_owned());
        tokio::spawn(async move { post(&client, &url, body).await });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = drained(url).await;
    let mut exact = times.take();
    exact.sort_unstable();
    Paced {
        events,
        exact,
        before,
        after,
    }
}

impl Paced {
    fn report(&self, what: &str, batch_window: Option<Duration>) {
        let (exact, before, after) = (&self.exact, &self.before, &self.after);
        let delta = |name: &str| after.value(name) - before.value(name);
        let mean = exact.iter().sum::<u64>() as f64 / exact.len().max(1) as f64;
        let (bulk, polls) = after.bulk_and_polls();
        let (bulk_before, polls_before) = before.bulk_and_polls();
        println!(
            "  accept -> delivered at a steady 100 events/s for {PACED_SECONDS} s, {what}: {} events delivered ({:.0} skipped, {:.0} dead-lettered), {:.2} requests/event ({:.0} bulk requests, {:.0} job polls); mean {mean:.0} ms, p50 {} ms, p90 {} ms, p99 {} ms, max {} ms (exact); /metrics histogram: p50 <= {} s, p99 <= {} s",
            exact.len(),
            delta("zdmap_events_skipped_total"),
            delta("zdmap_events_dead_lettered_total"),
            (after.requests() - before.requests()) / self.events as f64,
            bulk - bulk_before,
            polls - polls_before,
            rank(exact, 0.50),
            rank(exact, 0.90),
            rank(exact, 0.99),
            exact.last().copied().unwrap_or(0),
            bucket_of(before, after, 0.5),
            bucket_of(before, after, 0.99),
        );
        if let Some(w) = batch_window {
            let target = w.as_millis() as u64 + 1000;
            let p99 = rank(exact, 0.99);
            println!(
                "    p99 {p99} ms against the target of window + 1 s ({target} ms): {}",
                if p99 <= target { "met" } else { "not met" }
            );
        }
    }
}

/// How the emulator's jobs behave in both runs: they end this long after their bulk request
/// (as in the delivery bench).
const JOB_DELAY_MS: u64 = 500;
/// The steady phase: `PACED_SECONDS` s of one 10-event request every 100 ms.
const PACED_SECONDS: usize = 30;

/// One load run against a fresh server and emulator, batching (window `batch_window`) or not.
fn load_run(batch_window: Option<Duration>, times: &DeliveredTimes) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let (emu, dest) = emulated::emulated_destination_with(&emulated::Batching {
            window: batch_window,
            bulk_import: false,
            job_delay_ms: JOB_DELAY_MS,
            ..emulated::Batching::default()
        })
        .await;
        let data = tempfile::tempdir().expect("temp");
        let options = ServeOptions {
            workers: WorkerOptions {
                batch_window,
                ..WorkerOptions::default()
            },
            ..emulated::serve_options(
                data.path(),
                WriteKeys::from_args_and_env(&[KEY.to_owned()], None),
            )
        };
        let server = Server::start(options, dest).await.expect("server");
        let url = server.url();
        let client = reqwest::Client::new();

        // The organizations the mix refers to (not measured).
        let mut orgs = b"{\"batch\":[".to_vec();
        orgs.extend(mix::organizations().join(&b','));
        orgs.extend_from_slice(b"]}");
        assert!(post(&client, &url, orgs).await, "organizations accepted");
        let before_load = drained(&url).await;

        // 1. Ingest at full speed from a second process.
        let exe = std::env::current_exe().expect("bench binary");
        let started = Instant::now();
        let out = tokio::process::Command::new(exe)
            .env(LOADGEN, &url)
            .output()
            .await
            .expect("load generator");
        let load: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        let at_end_of_load = Metrics::read(&url).await;

        // 2. The backlog drains.
        let after_load = drained(&url).await;
        let seconds = started.elapsed().as_secs_f64();
        let settled = after_load.settled() - before_load.settled();
        let requests = after_load.requests() - before_load.requests();

        // 3. Accept → delivered at a steady 100 events/s (a 10-event request every 100 ms),
        // well below capacity, twice: each request one user's session, then each request one
        // event of each of ten users' sessions (so ten users' items may meet in bulk requests).
        // Users the load did not touch: Zendesk allows 5 user upserts per user per minute.
        let paced_events = PACED_SECONDS * 100;
        let fresh = mix::mixed_events(LOAD_BATCHES * BATCH + 2 * paced_events);
        let sessions: Vec<Vec<u8>> = fresh[LOAD_BATCHES * BATCH..][..paced_events]
            .chunks(10)
            .map(|chunk| batch_body(chunk.iter()))
            .collect();
        let interleaved: Vec<Vec<u8>> = fresh[LOAD_BATCHES * BATCH + paced_events..]
            .chunks(100)
            .flat_map(|ten| (0..10).map(move |k| batch_body(ten.iter().skip(k).step_by(10))))
            .collect();
        let by_session = paced(&url, &client, times, sessions).await;
        let by_event = paced(&url, &client, times, interleaved).await;

        println!(
            "\n{} (emulator: bulk user imports off, jobs take {JOB_DELAY_MS} ms):",
            match batch_window {
                Some(w) => format!("batching on, window {} ms", w.as_millis()),
                None => "unbatched".to_owned(),
            }
        );
        println!(
            "  load ({CONNECTIONS} connections from a second process on loopback, {LOAD_BATCHES} batches of {BATCH}): accepted and stored {:.0} events/s ({} requests, {} failed); /v1/batch latency p50 {:.1} ms, p99 {:.1} ms",
            load["events_per_second"].as_f64().unwrap_or(0.0),
            load["requests"],
            load["failed"],
            load["p50_ms"].as_f64().unwrap_or(0.0),
            load["p99_ms"].as_f64().unwrap_or(0.0),
        );
        let (bulk, polls) = after_load.bulk_and_polls();
        let (bulk_before, polls_before) = before_load.bulk_and_polls();
        println!(
            "  backlog delivered to the emulator: {settled:.0} events in {seconds:.1} s from the start of the load ({:.0} events/s, {:.2} requests/event, of which {:.0} bulk requests and {:.0} job polls; {:.0} were queued when the load ended)",
            settled / seconds,
            requests / settled.max(1.0),
            bulk - bulk_before,
            polls - polls_before,
            at_end_of_load.value("zdmap_queue_depth"),
        );
        for (what, run) in [
            ("one user's session per request", by_session),
            ("ten users' sessions interleaved", by_event),
        ] {
            run.report(what, batch_window);
        }
        server.shutdown().await;
        emu.shutdown().await;
    });
}

fn main() {
    if let Ok(url) = std::env::var(LOADGEN) {
        loadgen(url);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    pieces(&mut c);
    c.final_summary();
    if std::env::args().any(|a| a == "--bench") {
        let times = DeliveredTimes::install();
        load_run(None, &times);
        load_run(WorkerOptions::default().batch_window, &times);
    }
}
