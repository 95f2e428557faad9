//! Gauges that fall back when their cause ends: after the work is done, nothing reads as
//! running, held, waiting or old, in `/readyz` and in `/metrics`.

use crate::support::http::{Metrics, get, post_batch};
use crate::support::serving;
use crate::support::wait::eventually;

use serde_json::{Value, json};
use std::time::Duration;
use zdmap::deliver::RetryPolicy;
use zdmap::emulator::{Emulator, EmulatorOptions, ForcedFault};

/// An identify, a track and a group call of one user.
fn one_users_calls() -> Vec<Value> {
    ["identify", "track", "group"]
        .into_iter()
        .map(|kind| {
            json!({"type": kind, "userId": "u1", "event": "Viewed", "groupId": "acme",
                   "traits": {"email": "u1@example.com", "name": "Acme"}})
        })
        .collect()
}

/// Posts `events` to a server delivering to `emu` (set up by `setup`), sees the gauge line
/// `meanwhile` (if any) while they are delivered, waits until they are delivered, then (with no new event to wake the scheduler) reads every gauge of delivery back
/// at 0: held events, running turns, waiting keys by reason, the oldest wait.
async fn every_gauge_back_at_zero(
    emu: &Emulator,
    setup: serving::Setup,
    events: &[Value],
    meanwhile: Option<&str>,
) {
    let data = tempfile::tempdir().expect("tempdir");
    let server = serving::start(emu, data.path(), setup).await;
    let url = server.url();
    assert_eq!(post_batch(&url, Some(serving::KEY), events).await, 200);
    if let Some(line) = meanwhile {
        eventually(line, Duration::from_secs(10), async || {
            Metrics::read(&url).await.0.lines().any(|l| l == line)
        })
        .await;
    }
    let n = events.len() as f64;
    eventually(
        "the events delivered",
        Duration::from_secs(30),
        async || {
            Metrics::read(&url)
                .await
                .get("zdmap_events_delivered_total")
                == Some(n)
        },
    )
    .await;
    // A status reported during the work must not stay up: the gauges are read after more than
    // the second between two reports.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = Metrics::read(&url).await;
    assert_eq!(
        metrics.get("zdmap_delivery_events_held"),
        Some(0.0),
        "{metrics}"
    );
    let gauges: Vec<&str> = metrics
        .0
        .lines()
        .filter(|l| {
            l.starts_with("zdmap_delivery_keys_waiting")
                || l.starts_with("zdmap_delivery_oldest_waiting_seconds")
        })
        .collect();
    assert!(gauges.len() > 1, "{metrics}");
    for line in gauges {
        assert!(line.ends_with(" 0"), "a gauge left up: {line}\n{metrics}");
    }
    let (_, readyz) = get(&format!("{url}/readyz")).await;
    let readyz: Value = serde_json::from_str(&readyz).expect("JSON");
    let delivery = &readyz["delivery"];
    assert_eq!(delivery["running"], 0, "{readyz}");
    assert_eq!(delivery["events"], 0, "{readyz}");
    assert_eq!(delivery["oldest_waiting_seconds"], 0.0, "{readyz}");
    let waiting = delivery["keys_waiting"].as_object().expect("keys_waiting");
    assert!(waiting.values().all(|n| *n == 0), "{readyz}");
    server.shutdown().await;
}

/// The report: after one identify, track and group of one user, `/readyz` kept `"running": 1`
/// with nothing left to deliver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_one_users_identify_track_and_group_nothing_reads_as_running() {
    let emu = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator");
    // Slow answers: the work spans several of the scheduler's reports, the last while a turn
    // runs.
    emu.configure(|k| k.latency_ms = 400);
    every_gauge_back_at_zero(&emu, serving::Setup::default(), &one_users_calls(), None).await;
}

/// The report: after a retried event was delivered, "1 key waiting for retry, oldest 35 s"
/// stayed. The first request fails once and its key waits 3 s for the retry (long enough
/// for the gauges to show it); once delivered, every gauge is back at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_retried_event_is_delivered_no_key_reads_as_waiting() {
    let emu = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator");
    emu.configure(|k| k.forced_faults = vec![ForcedFault::new(500)]);
    let mut setup = serving::Setup::default();
    let wait = Duration::from_secs(3);
    setup.connect.retry = RetryPolicy {
        min_delay: wait,
        max_delay: wait,
        ..RetryPolicy::default()
    };
    // While the key waits, the gauge says so: that is what must fall back to 0.
    let waiting = Some(r#"zdmap_delivery_keys_waiting{reason="retry"} 1"#);
    every_gauge_back_at_zero(&emu, setup, &one_users_calls(), waiting).await;
    let statuses: Vec<Value> = emu.requests().iter().map(|r| r["status"].clone()).collect();
    assert_eq!(statuses.first(), Some(&json!(500)), "{statuses:?}");
}
