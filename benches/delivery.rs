//! Delivery of a realistic mix to the built-in emulator, with no rate limit.
//!
//! Measures events/s through the whole `zdmap send` path (parse, plan, lookups with the cache,
//! HTTP to the emulator on loopback, dead letters) and Zendesk requests per event, on a 10k-event
//! mix under criterion, then one 100k-event run whose request count also gives the time the same
//! mix takes at a 700 requests/minute budget. Run: `cargo bench --bench delivery`.

use criterion::{Criterion, Throughput};

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

    let o = rt.block_on(emulated::deliver(
        &orgs,
        &mix::ndjson(&mix::mixed_events(100_000)),
    ));
    let (events, requests) = (o.stats.events_read, o.stats.requests_total);
    println!(
        "delivery/100k: {events} events, {requests} requests ({:.2} per event), {:.1} s, {:.0} events/s, {} dead letters; at 700 requests/minute the same mix takes {:.1} h",
        requests as f64 / events as f64,
        o.seconds,
        events as f64 / o.seconds,
        o.dead_letters.len(),
        requests as f64 / 700.0 / 60.0
    );
    c.final_summary();
}
