//! Delivery of a realistic mix to the built-in emulator, with no rate limit.
//!
//! Measures events/s through the whole `zdmap send` path (parse, plan, lookups with the cache,
//! HTTP to the emulator on loopback, dead letters) and Zendesk requests per event, on a 10k-event
//! mix under criterion, then one 100k-event run whose request count also gives the time the same
//! mix takes at a 700 requests/minute budget. Run: `cargo bench --bench delivery`.

use criterion::{Criterion, Throughput};
use std::io::Cursor;
use std::sync::Arc;
use std::time::Instant;
use zdmap::deliver::DeadLetterWriter;
use zdmap::deliver::dispatch::{DispatchOptions, RecordWait};
use zdmap::deliver::run::run;

#[path = "support/allocator.rs"]
mod allocator;
#[path = "support/emulated.rs"]
mod emulated;
#[path = "support/mix.rs"]
mod mix;

struct Outcome {
    events: u64,
    requests: u64,
    seconds: f64,
    dead: u64,
}

/// Delivers the organizations the mix refers to (not measured), then the mix (measured).
async fn deliver(events: &[u8]) -> Outcome {
    let (emu, dest) = emulated::emulated_destination().await;
    let dir = tempfile::tempdir().expect("temp");
    let writer =
        Arc::new(DeadLetterWriter::open(dir.path().join("dead.ndjson")).expect("dead letters"));
    let options = DispatchOptions {
        concurrency: 8,
        wait_for_records: RecordWait::AfterInput(std::time::Duration::from_secs(30)),
        ..DispatchOptions::default()
    };
    run(
        dest.executor.clone(),
        Cursor::new(ndjson(mix::organizations())),
        writer.clone(),
        Arc::new(zdmap::deliver::Stats::new()),
        options.clone(),
    )
    .await
    .expect("organizations");
    let start = Instant::now();
    let report = run(
        dest.executor.clone(),
        Cursor::new(events.to_vec()),
        writer,
        dest.stats.clone(),
        options,
    )
    .await
    .expect("run");
    let seconds = start.elapsed().as_secs_f64();
    let snap = dest.stats.snapshot();
    emu.shutdown().await;
    Outcome {
        events: snap.events_read,
        requests: snap.requests_total,
        seconds,
        dead: report.dead_letters,
    }
}

fn ndjson(events: Vec<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        out.extend_from_slice(&e);
        out.push(b'\n');
    }
    out
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut c = Criterion::default().configure_from_args().sample_size(10);
    let mix = ndjson(mix::mixed_events(10_000));
    let mut group = c.benchmark_group("delivery");
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("send_10k_mix_to_emulator", |b| {
        b.iter(|| rt.block_on(deliver(&mix)))
    });
    group.finish();

    let big = ndjson(mix::mixed_events(100_000));
    let o = rt.block_on(deliver(&big));
    let per_event = o.requests as f64 / o.events as f64;
    println!(
        "delivery/100k: {} events, {} requests ({per_event:.2} per event), {:.1} s, {:.0} events/s, {} dead letters; at 700 requests/minute the same mix takes {:.1} h",
        o.events,
        o.requests,
        o.seconds,
        o.events as f64 / o.seconds,
        o.dead,
        o.requests as f64 / 700.0 / 60.0
    );
    c.final_summary();
}
