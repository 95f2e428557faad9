//! The mapping engine's whole path against bare serde_json, on the same realistic mixed events.
//!
//! `engine`: bytes in → event checks → all triggers → fields → every step's request rendered →
//! requests serialized to JSON bytes. `baseline`: serde_json parse + serialize of the same bytes.
//! Run: `cargo bench --bench engine`; BENCHMARKS.md records the ratio.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test or bench says what it expected

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use zdmap::mapping::config::Config;
use zdmap::mapping::event::Event;

#[path = "support/allocator.rs"]
mod allocator;
#[path = "support/mix.rs"]
mod mix;
use mix::mixed_events;

fn engine(c: &mut Criterion) {
    let config = match Config::load(std::path::Path::new("mappings"), &[]) {
        Ok(c) => c,
        Err(d) => panic!("mappings do not load: {d}"),
    };
    let events = mixed_events(2000);
    let mut group = c.benchmark_group("mixed_events");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("baseline_serde_json_parse_serialize", |b| {
        b.iter(|| {
            let mut bytes = 0;
            for e in &events {
                let v: serde_json::Value = serde_json::from_slice(e).unwrap_or_default();
                bytes += serde_json::to_vec(&v).map(|x| x.len()).unwrap_or(0);
            }
            black_box(bytes)
        })
    });
    group.bench_function("engine_whole_path", |b| {
        b.iter(|| {
            let mut bytes = 0;
            for e in &events {
                if let Ok(event) = Event::from_slice(e) {
                    let rendered = config.render_offline(&event);
                    bytes += serde_json::to_vec(&rendered.requests)
                        .map(|x| x.len())
                        .unwrap_or(0);
                }
            }
            black_box(bytes)
        })
    });
    group.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
