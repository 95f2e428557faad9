//! Delivery of a realistic mix to the built-in emulator, with no rate limit.
//!
//! Measures events/s through the whole `zdmap send` path (parse, plan, lookups with the cache,
//! HTTP to the emulator on loopback, dead letters) and Zendesk requests per event, on a 10k-event
//! mix under criterion, then 100k-event runs (unbatched; batched with bulk user imports on; and
//! off) whose request counts also give the time the same mix takes at a 700 requests/minute
//! budget. Run: `cargo bench --bench delivery`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test or bench says what it expected

use criterion::{Criterion, Throughput};
use std::time::Duration;

/// Events of the long runs (`ZDMAP_BENCH_EVENTS` to try fewer).
fn n_events() -> usize {
    std::env::var("ZDMAP_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000)
}

#[path = "support/allocator.rs"]
mod allocator;
#[path = "support/emulated.rs"]
mod emulated;
#[path = "support/mix.rs"]
mod mix;

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut c = Criterion::default().configure_from_args().sample_size(10);
    let orgs = mix::ndjson(&mix::organizations());
    let events = mix::ndjson(&mix::mixed_events(10_000));
    let mut group = c.benchmark_group("delivery");
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("send_10k_mix_to_emulator", |b| {
        b.iter(|| rt.block_on(emulated::deliver(&orgs, &events)))
    });
    group.finish();

    let big = mix::ndjson(&mix::mixed_events(n_events()));
    let runs = [
        ("unbatched", emulated::Batching::default()),
        (
            "batched, bulk user imports on",
            emulated::Batching {
                window: Some(Duration::from_secs(2)),
                bulk_import: true,
                job_delay_ms: 500,
                ..emulated::Batching::default()
            },
        ),
        (
            "batched, bulk user imports off",
            emulated::Batching {
                window: Some(Duration::from_secs(2)),
                bulk_import: false,
                job_delay_ms: 500,
                ..emulated::Batching::default()
            },
        ),
    ];
    for (name, batching) in runs {
        let o = rt.block_on(emulated::deliver_with(&orgs, &big, &batching));
        let (events, requests) = (o.stats.events_read, o.stats.requests_total);
        println!(
            "delivery/100k {name}: {events} events, {requests} requests ({:.3} per event), {:.1} s, {:.0} events/s, {} dead letters; at 700 requests/minute the same mix takes {:.2} h",
            requests as f64 / events as f64,
            o.seconds,
            events as f64 / o.seconds,
            o.dead_letters.len(),
            requests as f64 / 700.0 / 60.0
        );
        for (endpoint, statuses) in &o.stats.requests {
            println!("    {endpoint}: {statuses:?}");
        }
    }
    c.final_summary();
}
