//! What the verify-before-resend rule costs: one user's track events (a write that is not
//! idempotent) delivered by the delivery core to the built-in emulator, sent as new and sent
//! "resumed" (as after a restart: each reads the user's events back for its marker first).
//! Reports the time per event of both, their ratio, and the requests per event. After a crash
//! only the events whose write may have left are resumed (the SQLite queue records it before
//! the write); before that rule, every event handed out was. Run: `cargo bench --bench checks`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a bench says what it expected

use criterion::{Criterion, Throughput};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use zdmap::deliver::setup::Destination;
use zdmap::deliver::{EventOutcome, Turn};
use zdmap::emulator::{Emulator, EmulatorOptions};
use zdmap::mapping::event::Event;

#[path = "support/emulated.rs"]
mod emulated;

/// Events per user: one measured iteration delivers them, in order, as one user's are.
const PER_USER: usize = 50;
/// Users seeded, one per iteration, so every iteration's checks read the same amount.
const USERS: u64 = 2_000;

async fn destination() -> (Emulator, Destination) {
    let users: Vec<_> = (1..=USERS)
        .map(|id| json!({"id": id, "name": format!("User {id}"), "email": format!("u{id}@example.com")}))
        .collect();
    let emu = Emulator::start(EmulatorOptions {
        seed_json: Some(json!({ "users": users })),
        ..EmulatorOptions::default()
    })
    .await
    .expect("emulator");
    emu.configure(|k| k.request_log_size = 0);
    let dest = emulated::destination_to(&emu).await;
    (emu, dest)
}

/// Delivers `PER_USER` events of user `user`, each `resumed` or not.
async fn deliver_one_user(dest: &Destination, user: u64, resumed: bool) {
    for n in 0..PER_USER {
        let event = Event::from_value(json!({
            "type": "track", "event": "Viewed", "userId": format!("u{user}"),
            "messageId": format!("{user}-{n}-{resumed}"), "timestamp": "2026-03-01T10:00:00Z",
            "context": {"zendesk_user_id": user}, "properties": {"n": n}
        }))
        .expect("event");
        let mut delivery = dest.executor.start(&event, None);
        if resumed {
            delivery.resumed();
        }
        match delivery.advance().await {
            Turn::Finished(EventOutcome::Delivered) => {}
            other => panic!("not delivered: {other:?}"),
        }
    }
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    let (_emu, dest) = rt.block_on(destination());
    let next_user = AtomicU64::new(1);
    let mut group = c.benchmark_group("checks");
    group.throughput(Throughput::Elements(PER_USER as u64));
    for (name, resumed) in [("sent_as_new", false), ("resumed_checked_first", true)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let user = next_user.fetch_add(1, Ordering::Relaxed);
                    assert!(user <= USERS, "more iterations than seeded users");
                    rt.block_on(deliver_one_user(&dest, user, resumed));
                }
                start.elapsed()
            })
        });
    }
    group.finish();

    // Requests per event and the ratio of times, each kind over the same number of users.
    let mut per_event = Vec::new();
    for resumed in [false, true] {
        let before = dest.executor.transport().stats().snapshot().requests_total;
        let start = Instant::now();
        let users = 10;
        for _ in 0..users {
            let user = next_user.fetch_add(1, Ordering::Relaxed);
            rt.block_on(deliver_one_user(&dest, user, resumed));
        }
        let seconds = start.elapsed().as_secs_f64();
        let requests = dest.executor.transport().stats().snapshot().requests_total - before;
        let events = (users * PER_USER) as f64;
        per_event.push((seconds / events, requests as f64 / events));
    }
    let (new, resumed) = (per_event[0], per_event[1]);
    println!(
        "checks: sent as new {:.3} ms/event, {:.2} requests/event; resumed {:.3} ms/event, \
         {:.2} requests/event; resumed/new time ratio {:.2}",
        new.0 * 1e3,
        new.1,
        resumed.0 * 1e3,
        resumed.1,
        resumed.0 / new.0
    );
}
