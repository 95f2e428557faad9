//! What a server refuses before it stores anything: web pages of other origins and foreign
//! hosts on loopback; and whose messageId a dedupe window compares.

use crate::support::http::Metrics;
use crate::support::serving;

use serde_json::json;
use zdmap::emulator::{Emulator, EmulatorOptions};

/// A server on loopback taking `write_keys` (none: keyless), delivering to an emulator.
async fn server_with(write_keys: &[&str]) -> (Emulator, tempfile::TempDir, zdmap::serve::Server) {
    let emu = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator");
    let data = tempfile::tempdir().expect("tempdir");
    let setup = serving::Setup {
        write_keys: write_keys.iter().map(|k| k.to_string()).collect(),
        ..serving::Setup::default()
    };
    let server = serving::start(&emu, data.path(), setup).await;
    (emu, data, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_loopback_server_refuses_other_origins_and_foreign_hosts() {
    let (_emu, _data, server) = server_with(&[]).await;
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
    let metrics = Metrics::read(&server.url()).await;
    assert_eq!(
        metrics.get("zdmap_events_accepted_total"),
        Some(1.0),
        "only the plain call was stored:\n{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_id_from_two_sources_is_two_calls() {
    let (_emu, _data, server) = server_with(&["source-a-key", "source-b-key"]).await;
    let client = reqwest::Client::new();
    let post = |key: &'static str, user: &'static str| {
        let client = client.clone();
        let url = format!("{}/v1/identify", server.url());
        async move {
            client
                .post(url)
                .basic_auth(key, Some(""))
                .json(&json!({"messageId": "m-1", "userId": user, "traits": {"email": format!("{user}@example.com")}}))
                .send()
                .await
                .expect("post")
                .status()
                .as_u16()
        }
    };
    assert_eq!(post("source-a-key", "ua").await, 200);
    assert_eq!(post("source-b-key", "ub").await, 200);
    // The same call from the same source again is dropped.
    assert_eq!(post("source-a-key", "ua").await, 200);
    let metrics = Metrics::read(&server.url()).await;
    assert_eq!(
        metrics.get("zdmap_events_accepted_total"),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        metrics.get("zdmap_events_duplicate_total"),
        Some(1.0),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_invalid_calls_is_refused_whole_in_a_few_lines() {
    let (_emu, data, server) = server_with(&[serving::KEY]).await;
    let client = reqwest::Client::new();
    let post = |batch: Vec<serde_json::Value>| {
        let client = client.clone();
        let url = format!("{}/v1/batch", server.url());
        async move {
            let resp = client
                .post(url)
                .basic_auth(serving::KEY, Some(""))
                .json(&json!({ "batch": batch }))
                .send()
                .await
                .expect("post");
            let status = resp.status().as_u16();
            (status, resp.text().await.expect("body"))
        }
    };
    // 20 000 calls that are no events: refused whole, with a short answer, nothing kept.
    let flood: Vec<_> = (0..20_000).map(|_| json!({"x": 1})).collect();
    let (status, body) = post(flood).await;
    assert_eq!(status, 400);
    assert!(body.len() < 4096, "an answer of {} bytes", body.len());
    assert!(body.contains("20000 of 20000 calls are invalid"), "{body}");
    // A few bad calls beside good ones: the good are taken, the bad kept as dead letters.
    let mut mixed: Vec<_> = (0..5).map(|_| json!({"x": 1})).collect();
    mixed.extend((0..5).map(|i| json!({"type": "identify", "userId": format!("u{i}")})));
    let (status, body) = post(mixed).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"refused_count\":5"), "{body}");
    let store = zdmap::queue::DeadLetterStore::open(data.path()).expect("dead letters");
    assert_eq!(
        store.count().expect("count"),
        5,
        "only the mixed request's refusals kept"
    );
    server.shutdown().await;
}
