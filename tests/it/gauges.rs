//! Gauges that fall back when their cause ends: after the work is done, nothing reads as
//! running, held, waiting or old.

use crate::support::http::{Metrics, get, post_batch};
use crate::support::serving;
use crate::support::state::count;
use crate::support::wait::eventually;

use serde_json::json;
use std::time::Duration;
use zdmap::emulator::{Emulator, EmulatorOptions, ForcedFault};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_work_every_waiting_running_and_oldest_gauge_reads_zero() {
    let emu = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator");
    // The first request fails once, so one key waits for a retry before all is delivered.
    emu.configure(|k| k.forced_faults = vec![ForcedFault::new(500)]);
    let data = tempfile::tempdir().expect("tempdir");
    let server = serving::start(&emu, data.path(), serving::Setup::default()).await;
    let url = server.url();
    let events: Vec<_> = ["identify", "track", "group"]
        .into_iter()
        .map(|kind| {
            json!({"type": kind, "userId": "u1", "event": "Viewed", "groupId": "acme",
                   "traits": {"email": "u1@example.com", "name": "Acme"}})
        })
        .collect();
    assert_eq!(post_batch(&url, Some(serving::KEY), &events).await, 200);
    eventually("the three delivered", Duration::from_secs(30), async || {
        Metrics::read(&url)
            .await
            .get("zdmap_events_delivered_total")
            == Some(3.0)
    })
    .await;
    assert!(count(&emu.state(), "users") >= 1);
    // Without a new event to wake it, the scheduler must still say it holds none (a status
    // reported during the work must not stay up).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = Metrics::read(&url).await;
    assert_eq!(
        metrics.get("zdmap_delivery_events_held"),
        Some(0.0),
        "{metrics}"
    );
    for line in metrics.0.lines().filter(|l| {
        l.starts_with("zdmap_delivery_keys_waiting") || l.starts_with("zdmap_delivery_oldest")
    }) {
        assert!(line.ends_with(" 0"), "a gauge left up: {line}\n{metrics}");
    }
    let (_, readyz) = get(&format!("{url}/readyz")).await;
    let readyz: serde_json::Value = serde_json::from_str(&readyz).expect("JSON");
    assert_eq!(readyz["delivery"]["running"], 0, "{readyz}");
    assert_eq!(readyz["delivery"]["events"], 0, "{readyz}");
    server.shutdown().await;
}
