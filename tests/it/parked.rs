//! Events that wait for a record keep their bodies in the queue, not in memory, past
//! `--max-parked-mb`: hundreds of large tracks for a user that does not exist yet hold at most
//! that much memory in bodies, and once the user's identify creates the user every one of them
//! is read back and delivered once. The scenario runs on SQLite here and on NATS in
//! `nats.rs`.

use crate::support::http::{Metrics, post_batch};
use crate::support::serving::{self, KEY, Killed};
use crate::support::state::{count, event_numbers};
use crate::support::wait::eventually;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use zdmap::emulator::{Emulator, EmulatorOptions};
use zdmap::queue::DeadLetterStore;

/// About 20 KB per event: 200 of them are about 4 MB of bodies.
const PADDING: usize = 20_000;

fn track(n: usize) -> Value {
    json!({"type": "track", "event": "Report Exported", "userId": "late",
        "messageId": format!("export-{n}"),
        "properties": {"n": n, "report": "x".repeat(PADDING)}})
}

/// Posts `tracks` large tracks for a user not there yet to the server at `url` (started with
/// `--max-parked-mb 1`, taking the write key `key`) and checks that at least `in_queue` of them wait with their body in the
/// queue and at most 1 MiB of bodies in memory; then the user's identify comes, and every track
/// is delivered once.
pub async fn parked_bodies_wait_in_the_queue_until_the_record_appears(
    url: &str,
    key: &str,
    emu: &Emulator,
    tracks: usize,
    in_queue: usize,
) {
    let events: Vec<Value> = (0..tracks).map(track).collect();
    for chunk in events.chunks(10) {
        assert_eq!(post_batch(url, Some(key), chunk).await, 200);
    }
    // Every track waits for its user; past 1 MiB their bodies wait in the queue.
    let metrics = Metrics::once(url, "zdmap_delivery_parked_in_queue", |n| {
        n >= in_queue as f64
    })
    .await;
    let in_memory = metrics
        .get("zdmap_delivery_parked_bytes")
        .expect("parked bytes");
    assert!(in_memory <= (1 << 20) as f64, "{in_memory} bytes in memory");
    assert_eq!(count(&emu.state(), "events"), 0);

    // The user appears: every track is read back and delivered, once.
    let identify = json!({"type": "identify", "userId": "late",
        "traits": {"email": "late@example.com", "name": "Late"}});
    assert_eq!(post_batch(url, Some(key), &[identify]).await, 200);
    eventually(
        "every track delivered",
        Duration::from_secs(120),
        async || count(&emu.state(), "events") >= tracks,
    )
    .await;
    assert_eq!(
        event_numbers(&emu.state()),
        (0..tracks as u64).collect::<Vec<_>>(),
        "each track once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_waiting_for_a_record_keep_their_bodies_in_the_queue_and_are_all_delivered() {
    let emu = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator");
    let data = tempfile::tempdir().expect("tempdir");
    let (child, url) = serving::spawn_serve_with(
        &emu.url(),
        data.path(),
        Path::new("mappings"),
        &["--max-parked-mb", "1"],
        |c| {
            c.stderr(std::process::Stdio::null());
        },
    );
    let _server = Killed(child);
    parked_bodies_wait_in_the_queue_until_the_record_appears(&url, KEY, &emu, 200, 140).await;
    eventually("the queue empty", Duration::from_secs(120), async || {
        Metrics::read(&url).await.get("zdmap_queue_depth") == Some(0.0)
    })
    .await;
    let last = Metrics::read(&url).await;
    assert_eq!(last.get("zdmap_delivery_parked_in_queue"), Some(0.0));
    assert_eq!(last.get("zdmap_delivery_parked_bytes"), Some(0.0));
    let store = DeadLetterStore::open(data.path()).expect("dead letters");
    assert_eq!(store.count().expect("count"), 0);
}
