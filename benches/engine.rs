//! The mapping engine's whole path against bare serde_json, on the same realistic mixed events.
//!
//! `engine`: bytes in → event checks → all triggers → fields → every step's request rendered →
//! requests serialized to JSON bytes. `baseline`: serde_json parse + serialize of the same bytes.
//! Run: `cargo bench --bench engine`; BENCHMARKS.md records the ratio.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use zdmap::config::Config;
use zdmap::event::Event;

/// A realistic mix: identifies (some with a company), tracks, groups, ticket events, pages,
/// each with the context a browser SDK sends.
pub fn mixed_events(n: usize) -> Vec<Vec<u8>> {
    let context = |i: usize| {
        serde_json::json!({
            "ip": format!("10.0.{}.{}", i % 250, i % 200),
            "library": {"name": "analytics.js", "version": "5.2.0"},
            "locale": "en-GB",
            "page": {"path": "/pricing", "referrer": "https://example.com/", "title": "Pricing", "url": "https://app.example.com/pricing"},
            "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
            "traits": {"email": format!("user{i}@example.com"), "name": format!("User {i}")}
        })
    };
    (0..n)
        .map(|i| {
            let user = format!("u-{}", i % 5000);
            let v = match i % 10 {
                0..=2 => serde_json::json!({
                    "type": "identify", "userId": user, "messageId": format!("m-{i}"),
                    "timestamp": "2026-11-24T10:00:00Z", "context": context(i),
                    "traits": {"email": format!("user{i}@example.com"), "first_name": "Ada", "last_name": format!("L{i}"),
                               "plan": "pro", "accountTier": "gold", "phone": "+44 20 7946 0000",
                               "company": if i % 3 == 0 { serde_json::json!({"id": format!("org-{}", i % 300)}) } else { serde_json::Value::Null }}
                }),
                3..=5 => serde_json::json!({
                    "type": "track", "event": "Order Completed", "userId": user, "messageId": format!("m-{i}"),
                    "timestamp": "2026-11-24T10:05:00Z", "context": context(i),
                    "properties": {"order_id": format!("o-{i}"), "total": 42.5, "currency": "EUR", "items": [{"sku": "a", "qty": 1}]}
                }),
                6 => serde_json::json!({
                    "type": "group", "groupId": format!("org-{}", i % 300), "userId": user, "messageId": format!("m-{i}"),
                    "context": context(i),
                    "traits": {"name": format!("Org {}", i % 300), "domainNames": ["example.com"], "tags": ["vip"], "employees": 120, "industry": "Computing"}
                }),
                7 => serde_json::json!({
                    "type": "track", "event": "Ticket Created", "userId": user, "messageId": format!("m-{i}"), "context": context(i),
                    "properties": {"subject": "Cannot log in", "comment": "The login page says my password expired.", "priority": "High", "tags": ["login"], "external_id": format!("T-{i}")}
                }),
                8 => serde_json::json!({
                    "type": "track", "event": "Ticket Updated", "userId": user, "messageId": format!("m-{i}"), "context": context(i),
                    "properties": {"external_id": format!("T-{}", i - 1), "status": "pending", "comment": "Reset link sent.", "tags_added": ["reset"]}
                }),
                _ => serde_json::json!({
                    "type": "page", "userId": user, "messageId": format!("m-{i}"), "name": "Pricing", "context": context(i)
                }),
            };
            serde_json::to_vec(&v).unwrap_or_default()
        })
        .collect()
}

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
