//! A sender's clock that is far ahead cannot freeze a record: the event is ordered by the time
//! it was received, and the next change of the same user is applied.

use crate::support::serving;

use serde_json::json;
use std::time::{Duration, Instant};
use zdmap::emulator::{Emulator, EmulatorOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stamped_far_in_the_future_freezes_no_record() {
    let emu = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator");
    let data = tempfile::tempdir().expect("tempdir");
    let server = serving::start(&emu, data.path(), serving::Setup::default()).await;
    let client = reqwest::Client::new();
    let identify = |name: &str, timestamp: &str| {
        json!({"type": "identify", "userId": "u1", "timestamp": timestamp,
               "traits": {"email": "u1@example.com", "name": name}})
    };
    let now = zdmap::time::rfc3339_utc(std::time::SystemTime::now());
    for event in [
        identify("Frozen", "9999-12-31T23:59:59Z"),
        identify("Ada", &now),
    ] {
        let status = client
            .post(format!("{}/v1/batch", server.url()))
            .basic_auth(serving::KEY, Some(""))
            .json(&json!({"batch": [event]}))
            .send()
            .await
            .expect("post")
            .status();
        assert_eq!(status.as_u16(), 200);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = emu.state();
        let name = state["users"]
            .as_array()
            .and_then(|users| users.first())
            .and_then(|u| u["name"].as_str())
            .map(str::to_string);
        if name.as_deref() == Some("Ada") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the later change was not applied: {name:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = client
        .get(format!("{}/metrics", server.url()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("zdmap_future_timestamps_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("zdmap_stale_changes_total 0\n"),
        "{metrics}"
    );
    server.shutdown().await;
}
