//! A server on loopback without a write key, reached by a web page: a cross-site post and a
//! request through a rebound DNS name are refused before anything is stored.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test says what it expected

#[path = "support/serving.rs"]
mod serving;

use serde_json::json;
use zdmap::emulator::{Emulator, EmulatorOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_loopback_server_refuses_other_origins_and_foreign_hosts() {
    let emu = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator");
    let data = tempfile::tempdir().expect("tempdir");
    let server = serving::start(
        &emu,
        data.path(),
        serving::Setup {
            write_keys: Vec::new(),
            ..serving::Setup::default()
        },
    )
    .await;
    let url = format!("{}/v1/identify", server.url());
    let port = server.url().rsplit(':').next().expect("port").to_string();
    let body = json!({"userId": "u-evil", "traits": {"email": "evil@example.com"}}).to_string();
    let client = reqwest::Client::new();
    // A web page's cross-site form post: text/plain, no preflight.
    let cross_site = client
        .post(&url)
        .header("content-type", "text/plain")
        .header("origin", "https://evil.example")
        .body(body.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(cross_site.status().as_u16(), 403);
    // DNS rebinding: the page's own name, resolved to 127.0.0.1.
    let rebound = client
        .post(&url)
        .header("host", format!("evil.example:{port}"))
        .body(body.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(rebound.status().as_u16(), 403);
    let text = rebound.text().await.expect("body");
    assert!(text.contains("--allowed-host"), "{text}");
    // The same call from a client that is no web page is taken.
    let plain = client.post(&url).body(body).send().await.expect("post");
    assert_eq!(plain.status().as_u16(), 200);
    let metrics = client
        .get(format!("{}/metrics", server.url()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("zdmap_events_accepted_total 1\n"),
        "only the plain call was stored:\n{metrics}"
    );
    server.shutdown().await;
}
