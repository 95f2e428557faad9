//! A sender's clock that is far ahead cannot freeze a record: the event is ordered by the time
//! it was received, and the next change of the same user is applied.

use crate::support::http::{Metrics, post_batch};
use crate::support::serving;
use crate::support::wait::eventually;

use serde_json::json;
use std::time::Duration;
use zdmap::emulator::{Emulator, EmulatorOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stamped_far_in_the_future_freezes_no_record() {
    let emu = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator");
    let data = tempfile::tempdir().expect("tempdir");
    let server = serving::start(&emu, data.path(), serving::Setup::default()).await;
    let identify = |name: &str, timestamp: &str| {
        json!({"type": "identify", "userId": "u1", "timestamp": timestamp,
               "traits": {"email": "u1@example.com", "name": name}})
    };
    // A minute ahead: later than the first event's receive time whatever the machine's pace
    // (a timestamp of "now" could fall in the second before it), and well within the skew
    // believed, so it is not clamped itself.
    let soon =
        zdmap::base::time::rfc3339_utc(std::time::SystemTime::now() + Duration::from_secs(60));
    for event in [
        identify("Frozen", "9999-12-31T23:59:59Z"),
        identify("Ada", &soon),
    ] {
        assert_eq!(
            post_batch(&server.url(), Some(serving::KEY), &[event]).await,
            200
        );
    }
    eventually(
        "the later change applied",
        Duration::from_secs(30),
        async || {
            let state = emu.state();
            state["users"][0]["name"] == "Ada"
        },
    )
    .await;
    let metrics = Metrics::read(&server.url()).await;
    assert_eq!(
        metrics.get("zdmap_future_timestamps_total"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metrics.get("zdmap_stale_changes_total"),
        Some(0.0),
        "{metrics}"
    );
    server.shutdown().await;
}
