//! Credentials that Zendesk refuses and renewing cannot fix: `zdmap serve` holds the events and
//! tries again less and less often (up to a minute apart), saying so once, not once per try.

use crate::support::command::signal;
use crate::support::http::{post_batch, readyz_once};
use crate::support::serving::{KEY, spawn_serve_with};

use serde_json::json;
use std::path::Path;
use std::time::Duration;
use zdmap::emulator::{Emulator, EmulatorOptions, Secret};

/// How long the test watches the refusals.
const WINDOW: Duration = Duration::from_secs(12);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_api_token_is_tried_again_with_a_growing_pause_and_logged_once() {
    // The emulator takes only its own token: serve's is answered 401 every time.
    let emu = Emulator::start(EmulatorOptions {
        api_token: Some(Secret::new("the-only-token")),
        ..EmulatorOptions::default()
    })
    .await
    .expect("emulator");
    let data = tempfile::tempdir().expect("tempdir");
    let (child, url) = spawn_serve_with(
        &emu.url(),
        data.path(),
        Path::new("mappings"),
        &["--log-format", "text"],
        |cmd| {
            cmd.env("ZENDESK_API_TOKEN", "a-token-zendesk-refuses");
        },
    );
    // Three users' events, so that each pause is tried by several events at once.
    let events: Vec<_> = (0..3)
        .map(|i| {
            json!({"type": "identify", "userId": format!("r{i}"),
                        "traits": {"email": format!("r{i}@example.com")}})
        })
        .collect();
    assert_eq!(post_batch(&url, Some(KEY), &events).await, 200);
    readyz_once(&url, 503, "not ready while Zendesk refuses the credentials").await;
    tokio::time::sleep(WINDOW).await;

    let api: Vec<_> = emu
        .requests()
        .into_iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/api/v2/"))
        })
        .collect();
    assert!(!api.is_empty(), "it tried");
    assert!(
        api.iter().all(|r| r["status"] == 401),
        "every try refused: {api:?}"
    );
    // The tries come in bursts (the events held, each tried once when the pause ends). A pause
    // of a second would make 12 bursts in the window; one that doubles (1 s, 2 s, 4 s, ...)
    // makes a few: here 2 (at 0 s and 4 s, the next at 36 s), 6 requests.
    let at: Vec<u64> = api.iter().filter_map(|r| r["at_ms"].as_u64()).collect();
    let bursts = 1 + at
        .windows(2)
        .filter(|w| w[1].saturating_sub(w[0]) > 500)
        .count();
    assert!(
        bursts <= 4 && api.len() <= 6,
        "{} requests in {bursts} bursts in {WINDOW:?}: the pause does not grow: {at:?} (ms)",
        api.len()
    );

    signal(&child, "TERM");
    let out = child.wait_with_output().expect("serve ends");
    let logs = String::from_utf8_lossy(&out.stderr);
    let about_it: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("401") || l.to_lowercase().contains("refus"))
        .collect();
    assert!(
        !about_it.is_empty() && about_it.len() <= 2,
        "one line when the refusal starts, not one per try: {about_it:#?}"
    );
}
