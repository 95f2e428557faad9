//! The delivery scheduler on realistic order: the same mixed events delivered in dependency
//! order (each user's session as it happened: identifies first) and shuffled as backfills come
//! (exported per type: every track, ticket and group call before any identify, so each waits for
//! its user), on the emulator with no rate limit.
//!
//! Reports the time of each, the ratio (target: shuffled at most 1.5× ordered), Zendesk requests
//! and dead letters (the shuffled run may leave none the ordered run does not).
//! Run: `cargo bench --bench scheduling` (`-- --quick` for fewer samples).

use criterion::{Criterion, Throughput};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, Instant};
use zdmap::deliver::dispatch::{DispatchOptions, RecordWait};
use zdmap::deliver::run::run;
use zdmap::deliver::{DeadLetter, DeadLetterWriter};

#[path = "support/allocator.rs"]
mod allocator;
#[path = "support/emulated.rs"]
mod emulated;
#[path = "support/mix.rs"]
mod mix;

struct Outcome {
    seconds: f64,
    requests: u64,
    /// (messageId, action) of each dead letter.
    dead: BTreeSet<(String, String)>,
}

/// Delivers the organizations the mix refers to (not measured), then `events` (measured).
async fn deliver(events: &[u8]) -> Outcome {
    let (emu, dest) = emulated::emulated_destination().await;
    let dir = tempfile::tempdir().expect("temp");
    let path = dir.path().join("dead.ndjson");
    let writer = Arc::new(DeadLetterWriter::open(&path).expect("dead letters"));
    let options = DispatchOptions {
        concurrency: 8,
        wait_for_records: RecordWait::AfterInput(Duration::from_secs(30)),
        ..DispatchOptions::default()
    };
    run(
        dest.executor.clone(),
        Cursor::new(ndjson(&mix::organizations())),
        writer.clone(),
        Arc::new(zdmap::deliver::Stats::new()),
        options.clone(),
    )
    .await
    .expect("organizations");
    let start = Instant::now();
    run(
        dest.executor.clone(),
        Cursor::new(events.to_vec()),
        writer,
        dest.stats.clone(),
        options,
    )
    .await
    .expect("run");
    let seconds = start.elapsed().as_secs_f64();
    let dead = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| DeadLetter::parse(&serde_json::from_str(l).ok()?))
        .map(|d| {
            let id = d.event["messageId"].as_str().unwrap_or_default().to_owned();
            (id, d.action)
        })
        .collect();
    let requests = dest.stats.snapshot().requests_total;
    emu.shutdown().await;
    Outcome {
        seconds,
        requests,
        dead,
    }
}

fn ndjson(events: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        out.extend_from_slice(e);
        out.push(b'\n');
    }
    out
}

/// Every event but the identifies first (in their order), then the identifies.
fn identifies_last(events: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let is_identify =
        |e: &Vec<u8>| serde_json::from_slice::<Value>(e).is_ok_and(|v| v["type"] == "identify");
    let (identifies, others): (Vec<_>, Vec<_>) = events.iter().cloned().partition(is_identify);
    others.into_iter().chain(identifies).collect()
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut c = Criterion::default().configure_from_args().sample_size(10);
    let events = mix::mixed_events(5_000);
    let ordered = ndjson(&events);
    let shuffled = ndjson(&identifies_last(&events));
    let mut group = c.benchmark_group("scheduling");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("ordered_5k", |b| b.iter(|| rt.block_on(deliver(&ordered))));
    group.bench_function("identifies_last_5k", |b| {
        b.iter(|| rt.block_on(deliver(&shuffled)))
    });
    group.finish();

    // One run of each on 20 000 events, for the ratio, the requests and the dead letters.
    let events = mix::mixed_events(20_000);
    let o = rt.block_on(deliver(&ndjson(&events)));
    let s = rt.block_on(deliver(&ndjson(&identifies_last(&events))));
    let extra: Vec<_> = s.dead.difference(&o.dead).collect();
    println!(
        "scheduling/20k: ordered {:.1} s ({} requests, {} dead letters); identifies last {:.1} s ({} requests, {} dead letters); shuffled/ordered = {:.2}; dead letters only the shuffled run left: {}",
        o.seconds,
        o.requests,
        o.dead.len(),
        s.seconds,
        s.requests,
        s.dead.len(),
        s.seconds / o.seconds,
        extra.len()
    );
    if !extra.is_empty() {
        println!("  for example: {:?}", &extra[..extra.len().min(5)]);
    }
    c.final_summary();
}
