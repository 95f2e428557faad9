//! `zdmap serve` on NATS JetStream with one, two and three replicas (processes of the release
//! binary on one `nats-server`, delivering to the emulator in this process with 20 ms of latency
//! a request, as a remote Zendesk has):
//! - `replicas/ingest/N`: 1000 ticket events posted in batches of 100, spread over the replicas,
//!   8 batches at once, until every batch is answered 200 (stored by JetStream);
//! - `replicas/deliver/N`: the same, until the replicas delivered all 1000;
//! - `budget/3_replicas`: three replicas under `requests_per_minute=12000` (200 a second once the
//!   burst is spent) delivering 1000 events: the time against the 5 s the budget allows is the
//!   request rate against the budget.
//!
//! Needs `nats-server` (Debian's package). Run: `cargo bench --bench replicas`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test or bench says what it expected

use criterion::{BenchmarkId, Criterion, Throughput};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use zdmap::emulator::{Emulator, EmulatorOptions};

#[path = "support/allocator.rs"]
mod allocator;
#[path = "../tests/it/support/nats.rs"]
mod nats;

use nats::{KEY, NatsServer, Replica};

const EVENTS: usize = 1000;
const BATCH: usize = 100;
const AT_ONCE: usize = 8;
/// Makes every event of every iteration new (its user, its messageId).
static NEXT: AtomicUsize = AtomicUsize::new(0);

fn ticket(n: usize) -> Value {
    json!({
        "type": "track", "event": "Ticket Created", "userId": format!("u-{n}"),
        "messageId": format!("msg-{n}"),
        "context": {"traits": {"email": format!("user{n}@example.com"), "name": format!("User {n}")}},
        "properties": {"subject": format!("Problem {n}"), "comment": "It broke.", "external_id": format!("T-{n}")}
    })
}

/// Posts `EVENTS` new events over the replicas; resolves once all are accepted.
async fn post(client: &reqwest::Client, urls: &[String]) {
    let first = NEXT.fetch_add(EVENTS, Ordering::Relaxed);
    let bodies: Vec<(String, Value)> = (0..EVENTS / BATCH)
        .map(|b| {
            let events: Vec<Value> = (0..BATCH).map(|i| ticket(first + b * BATCH + i)).collect();
            (urls[b % urls.len()].clone(), json!({ "batch": events }))
        })
        .collect();
    let mut pending = bodies.into_iter();
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < AT_ONCE {
            let Some((url, body)) = pending.next() else {
                break;
            };
            let client = client.clone();
            running.spawn(async move {
                let status = client
                    .post(format!("{url}/v1/batch"))
                    .basic_auth(KEY, Some(""))
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                assert_eq!(status, 200, "a batch was refused");
            });
        }
        match running.join_next().await {
            Some(done) => done.expect("post"),
            None => break,
        }
    }
}

/// Waits until the replicas together delivered `count` events (their counters: reading the
/// emulator's whole state this often would slow the emulator down).
async fn delivered(urls: &[String], count: usize) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let mut total = 0.0;
        for url in urls {
            total += metric(url, "zdmap_events_delivered_total").await;
        }
        if total >= count as f64 {
            return;
        }
        assert!(Instant::now() < deadline, "delivery stalled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn metric(url: &str, name: &str) -> f64 {
    let text = match reqwest::get(format!("{url}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => return 0.0,
    };
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn owned(url: &str) -> f64 {
    metric(url, "zdmap_nats_partitions_owned").await
}

/// The time `iters` postings take to be accepted and delivered, one after another.
async fn post_and_deliver(client: &reqwest::Client, urls: &[String], iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        post(client, urls).await;
        delivered(urls, NEXT.load(Ordering::Relaxed)).await;
    }
    start.elapsed()
}

/// A NATS server, an emulator and `n` replicas, every partition owned.
fn setup(
    rt: &tokio::runtime::Runtime,
    n: usize,
    settings: &[&str],
) -> (NatsServer, Emulator, Vec<Replica>, Vec<String>) {
    let server = NatsServer::start().expect(nats::MISSING);
    let emu = rt.block_on(async {
        let emu = Emulator::start(EmulatorOptions::default())
            .await
            .expect("emulator");
        emu.configure(|k| {
            k.latency_ms = 20;
            k.request_log_size = 16;
        });
        emu
    });
    let replicas: Vec<Replica> = (0..n)
        .map(|_| Replica::start(&server.url(), &emu.url(), settings))
        .collect();
    let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut total = 0.0;
            for url in &urls {
                total += owned(url).await;
            }
            if total == 32.0 {
                break;
            }
            assert!(Instant::now() < deadline, "partitions not taken");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (server, emu, replicas, urls)
}

fn replicas(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = reqwest::Client::new();
    let mut group = c.benchmark_group("replicas");
    group.throughput(Throughput::Elements(EVENTS as u64));
    for n in [1, 2, 3] {
        let (_server, _emu, _replicas, urls) = setup(&rt, n, &["--set", "requests_per_minute=0"]);
        group.bench_function(BenchmarkId::new("ingest", n), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        post(&client, &urls).await;
                        spent += start.elapsed();
                        // Not measured: the backlog drains before the next posting.
                        delivered(&urls, NEXT.load(Ordering::Relaxed)).await;
                    }
                    spent
                })
            })
        });
        group.bench_function(BenchmarkId::new("deliver", n), |b| {
            b.iter_custom(|iters| rt.block_on(post_and_deliver(&client, &urls, iters)))
        });
        NEXT.store(0, Ordering::Relaxed);
    }
    group.finish();
}

fn budget(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = reqwest::Client::new();
    let (_server, _emu, _replicas, urls) = setup(&rt, 3, &["--set", "requests_per_minute=12000"]);
    // The burst (2000) is spent before measuring.
    rt.block_on(async {
        for _ in 0..2 {
            post(&client, &urls).await;
        }
        delivered(&urls, NEXT.load(Ordering::Relaxed)).await;
    });
    let mut group = c.benchmark_group("budget");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("3_replicas", |b| {
        b.iter_custom(|iters| rt.block_on(post_and_deliver(&client, &urls, iters)))
    });
    group.finish();
    NEXT.store(0, Ordering::Relaxed);
}

fn main() {
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1));
    replicas(&mut c);
    budget(&mut c);
    c.final_summary();
}
