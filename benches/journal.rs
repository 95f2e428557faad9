//! The delivery log's cost: `zdmap serve` in this process takes the bench mix (20 000 events
//! in batches of 100 over 8 connections, as fast as they are answered) and delivers it to the
//! built-in emulator (no rate limit, batching on as by default), with the log off and on, in
//! alternating rounds of the same run (fresh data directory and emulator each). It reports the
//! events/s accepted and stored, the events/s delivered (from the first post until the queue
//! is empty), their medians and the ratio on/off, the entries the log dropped, and the log's
//! bytes per event (its file once the server stopped, WAL checkpointed, over the events).
//! Run: `cargo bench --bench journal`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a bench says what it expected

use std::sync::Arc;
use std::time::{Duration, Instant};
use zdmap::queue::journal::{JOURNAL_FILE, JournalOptions};
use zdmap::serve::ingest::WriteKeys;
use zdmap::serve::{ServeOptions, Server, WorkerOptions};

#[path = "support/allocator.rs"]
mod allocator;
#[path = "support/emulated.rs"]
mod emulated;
#[path = "support/mix.rs"]
mod mix;

const KEY: &str = "bench-key";
const BATCH: usize = 100;
const CONNECTIONS: usize = 8;
const EVENTS: usize = 20_000;
/// Rounds of each (off, on, off, on, ...), unless `ZDMAP_BENCH_ROUNDS` says how many.
const ROUNDS: usize = 5;

fn rounds() -> usize {
    std::env::var("ZDMAP_BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(ROUNDS)
}

fn body<'a>(events: impl Iterator<Item = &'a Vec<u8>>) -> Vec<u8> {
    let mut body = b"{\"batch\":[".to_vec();
    for (i, e) in events.enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(e);
    }
    body.extend_from_slice(b"]}");
    body
}

async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) {
    let answer = client
        .post(format!("{url}/v1/batch"))
        .basic_auth(KEY, Some(""))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("posted");
    assert!(answer.status().is_success(), "{}", answer.status());
}

async fn metric(client: &reqwest::Client, url: &str, name: &str) -> f64 {
    let text = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// One round's figures.
struct Round {
    ingest: f64,
    delivery: f64,
    dropped: f64,
    bytes_per_event: Option<f64>,
}

async fn round(log: bool, bodies: Arc<Vec<Vec<u8>>>, orgs: Vec<u8>) -> Round {
    let (emu, dest) = emulated::emulated_destination_with(&emulated::Batching {
        window: WorkerOptions::default().batch_window,
        bulk_import: false,
        job_delay_ms: 0,
        mappings: None,
    })
    .await;
    let data = tempfile::tempdir().expect("temp");
    let options = ServeOptions {
        journal: log.then(JournalOptions::default),
        ..emulated::serve_options(
            data.path(),
            WriteKeys::from_args_and_env(&[KEY.to_owned()], None),
        )
    };
    let server = Server::start(options, dest).await.expect("server");
    let url = server.url();
    let client = reqwest::Client::new();
    post(&client, &url, orgs).await;
    while metric(&client, &url, "zdmap_queue_depth").await > 0.0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let settled_before = settled(&client, &url).await;

    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (client, url, bodies, next) =
                (client.clone(), url.clone(), bodies.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else { break };
                    post(&client, &url, body.clone()).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("poster");
    }
    let ingest = EVENTS as f64 / started.elapsed().as_secs_f64();
    while settled(&client, &url).await - settled_before < EVENTS as f64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivery = EVENTS as f64 / started.elapsed().as_secs_f64();
    let dropped = metric(&client, &url, "zdmap_journal_dropped_total").await;
    server.shutdown().await;
    emu.shutdown().await;
    let bytes_per_event = log.then(|| {
        let size = std::fs::metadata(data.path().join(JOURNAL_FILE))
            .expect("the log's file")
            .len();
        size as f64 / (EVENTS + 300) as f64
    });
    Round {
        ingest,
        delivery,
        dropped,
        bytes_per_event,
    }
}

async fn settled(client: &reqwest::Client, url: &str) -> f64 {
    metric(client, url, "zdmap_events_delivered_total").await
        + metric(client, url, "zdmap_events_skipped_total").await
        + metric(client, url, "zdmap_events_dead_lettered_total").await
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let events = mix::mixed_events(EVENTS);
    let bodies = Arc::new(
        events
            .chunks(BATCH)
            .map(|c| body(c.iter()))
            .collect::<Vec<_>>(),
    );
    let orgs = body(mix::organizations().iter());
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let rounds = rounds();
    for r in 0..rounds * 2 {
        let log = r % 2 == 1;
        let result = runtime.block_on(round(log, bodies.clone(), orgs.clone()));
        println!(
            "round {} log {}: accepted {:.0} events/s, delivered {:.0} events/s{}",
            r / 2 + 1,
            if log { "on " } else { "off" },
            result.ingest,
            result.delivery,
            match result.bytes_per_event {
                Some(b) => format!(
                    ", {b:.0} bytes/event on disk, {} entries dropped",
                    result.dropped
                ),
                None => String::new(),
            }
        );
        if log { &mut on } else { &mut off }.push(result);
    }
    let med = |rounds: &[Round], f: fn(&Round) -> f64| median(rounds.iter().map(f).collect());
    let (ingest_off, ingest_on) = (med(&off, |r| r.ingest), med(&on, |r| r.ingest));
    let (deliver_off, deliver_on) = (med(&off, |r| r.delivery), med(&on, |r| r.delivery));
    println!(
        "\nmedians of {rounds} rounds, {EVENTS} events each:\n  ingest: off {ingest_off:.0}, on {ingest_on:.0} events/s (on/off {:.3})\n  delivery: off {deliver_off:.0}, on {deliver_on:.0} events/s (on/off {:.3})\n  log on disk: {:.0} bytes/event",
        ingest_on / ingest_off,
        deliver_on / deliver_off,
        med(&on, |r| r.bytes_per_event.unwrap_or_default()),
    );
}
