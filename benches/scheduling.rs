//! The delivery scheduler on realistic order: the same mixed events delivered in dependency
//! order (each user's session as it happened: identifies first) and as backfills come, exported
//! per type (every track, ticket and group call before any identify, so each waits for its
//! user), on the emulator with no rate limit.
//!
//! Reports the time of each, the ratio (target: identifies last at most 1.5× ordered), Zendesk
//! requests and dead letters (the reordered run may leave none the ordered run does not).
//! Run: `cargo bench --bench scheduling`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test or bench says what it expected

use criterion::{Criterion, Throughput};
use serde_json::Value;
use std::collections::BTreeSet;

#[path = "support/allocator.rs"]
mod allocator;
#[path = "support/emulated.rs"]
mod emulated;
#[path = "support/mix.rs"]
mod mix;

/// Every event but the identifies first (in their order), then the identifies.
fn identifies_last(events: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let is_identify =
        |e: &Vec<u8>| serde_json::from_slice::<Value>(e).is_ok_and(|v| v["type"] == "identify");
    let (identifies, others): (Vec<_>, Vec<_>) = events.iter().cloned().partition(is_identify);
    others.into_iter().chain(identifies).collect()
}

/// (messageId, action) of each dead letter.
fn letters(d: &emulated::Delivered) -> BTreeSet<(String, String)> {
    d.dead_letters
        .iter()
        .map(|l| {
            let id = l.event["messageId"].as_str().unwrap_or_default();
            (
                id.to_owned(),
                l.action.clone().map(String::from).unwrap_or_default(),
            )
        })
        .collect()
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut c = Criterion::default().configure_from_args().sample_size(10);
    let orgs = mix::ndjson(&mix::organizations());
    let events = mix::mixed_events(5_000);
    let ordered = mix::ndjson(&events);
    let reordered = mix::ndjson(&identifies_last(&events));
    let mut group = c.benchmark_group("scheduling");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("ordered_5k", |b| {
        b.iter(|| rt.block_on(emulated::deliver(&orgs, &ordered)))
    });
    group.bench_function("identifies_last_5k", |b| {
        b.iter(|| rt.block_on(emulated::deliver(&orgs, &reordered)))
    });
    group.finish();

    // One run of each on 20 000 events, for the ratio, the requests and the dead letters.
    let events = mix::mixed_events(20_000);
    let o = rt.block_on(emulated::deliver(&orgs, &mix::ndjson(&events)));
    let r = rt.block_on(emulated::deliver(
        &orgs,
        &mix::ndjson(&identifies_last(&events)),
    ));
    let (ordered_letters, reordered_letters) = (letters(&o), letters(&r));
    let extra: Vec<_> = reordered_letters.difference(&ordered_letters).collect();
    println!(
        "scheduling/20k: ordered {:.2} s ({} requests, {} dead letters); identifies last {:.2} s ({} requests, {} dead letters); identifies last / ordered = {:.2}; dead letters only the reordered run left: {}",
        o.seconds,
        o.stats.requests_total,
        ordered_letters.len(),
        r.seconds,
        r.stats.requests_total,
        reordered_letters.len(),
        r.seconds / o.seconds,
        extra.len()
    );
    if !extra.is_empty() {
        println!("  for example: {:?}", &extra[..extra.len().min(5)]);
    }
    c.final_summary();
}
