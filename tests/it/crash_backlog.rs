//! A crash with a backlog of one busy user's events: `zdmap serve` is killed with `kill -9`
//! while hundreds of one Zendesk user's events (tracks without a `timestamp`, each a write that
//! is not idempotent) wait in memory behind each other. After the restart every event arrives
//! once: those that never reached Zendesk are sent as new, and only the one or two whose write
//! may have left are checked, so the checks cost a few requests, not thousands; nothing is
//! dead-lettered.

use crate::support::http::{Metrics, post_batch};
use crate::support::serving::{self, KEY, Killed};
use crate::support::state::{count, event_numbers};
use crate::support::wait::eventually;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use zdmap::emulator::{Emulator, EmulatorOptions};
use zdmap::queue::DeadLetterStore;

const USER: u64 = 7001;
const EVENTS: usize = 400;

fn viewed(n: usize) -> Value {
    json!({"type": "track", "event": "Viewed", "userId": "busy", "messageId": format!("view-{n}"),
        "context": {"zendesk_user_id": USER}, "properties": {"n": n}})
}

/// Requests of the log to the user's events, by method.
fn requests_to_events(emu: &Emulator, method: &str) -> usize {
    let path = format!("/api/v2/users/{USER}/events");
    emu.requests()
        .iter()
        .filter(|r| r["method"] == method && r["path"] == path.as_str())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_with_a_backlog_of_one_users_events_sends_each_once_and_checks_only_those_under_way()
 {
    let seeds = tempfile::tempdir().expect("tempdir");
    let seed = seeds.path().join("seed.json");
    let users = json!({"users": [{"id": USER, "name": "Busy", "email": "busy@example.com"}]});
    std::fs::write(&seed, users.to_string()).expect("seed");
    let emu = Emulator::start(EmulatorOptions {
        seed_state: Some(seed),
        ..Default::default()
    })
    .await
    .expect("emulator");
    emu.configure(|k| {
        k.latency_ms = 20;
        k.request_log_size = 100_000;
    });
    let data = tempfile::tempdir().expect("tempdir");
    let mappings = Path::new("mappings");
    let spawn = || {
        serving::spawn_serve_with(&emu.url(), data.path(), mappings, &[], |c| {
            c.stderr(std::process::Stdio::null());
        })
    };
    let (child, url) = spawn();
    let mut first = Killed(child);
    let events: Vec<Value> = (0..EVENTS).map(viewed).collect();
    for chunk in events.chunks(100) {
        assert_eq!(post_batch(&url, Some(KEY), chunk).await, 200);
    }
    eventually("delivery under way", Duration::from_secs(60), async || {
        count(&emu.state(), "events") >= 40
    })
    .await;
    first.0.kill().expect("kill -9");
    let _ = first.0.wait();
    let before = count(&emu.state(), "events");
    assert!(
        before < EVENTS / 2,
        "the kill came with a backlog: {before}"
    );
    let checks_before = requests_to_events(&emu, "GET");

    let (child, url) = spawn();
    let _second = Killed(child);
    eventually(
        "the backlog delivered",
        Duration::from_secs(120),
        async || Metrics::read(&url).await.get("zdmap_queue_depth") == Some(0.0),
    )
    .await;
    assert_eq!(
        event_numbers(&emu.state()),
        (0..EVENTS as u64).collect::<Vec<_>>(),
        "each event once"
    );
    let checks = requests_to_events(&emu, "GET") - checks_before;
    assert!(
        checks <= 20,
        "only the events whose write may have left are checked: {checks} check requests"
    );
    let store = DeadLetterStore::open(data.path()).expect("dead letters");
    assert_eq!(store.count().expect("count"), 0, "nothing dead-lettered");
}
