//! `zdmap serve` end to end: the ingest API (good and bad input), delivery from the durable queue
//! to the emulator, Zendesk down then back, refused credentials, reload with a good and a broken
//! config, shutdown with work in flight, dead letters through `zdmap dead-letters`, and (through
//! the binary) a `kill -9` and restart with nothing lost and nothing duplicated.

use crate::support::command::{signal, zdmap};
use crate::support::http::{Metrics, get, readyz_once};
use crate::support::serving;
use crate::support::state::{count, each_ticket_once};
use crate::support::wait::eventually;

use base64::Engine as _;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;
use zdmap::emulator::{Emulator, EmulatorOptions, ForcedFault};
use zdmap::serve::{IngestOptions, Server};

use serving::{KEY, Setup, spawn_serve, spawn_serve_with};

async fn start_server(emu: &Emulator, data: &Path, mappings: &Path, watch: bool) -> Server {
    start_server_with(emu, data, mappings, watch, IngestOptions::default()).await
}

async fn start_server_with(
    emu: &Emulator,
    data: &Path,
    mappings: &Path,
    watch: bool,
    ingest: IngestOptions,
) -> Server {
    let setup = Setup {
        mappings: mappings.to_path_buf(),
        watch,
        ingest,
        ..Setup::default()
    };
    serving::start(emu, data, setup).await
}

fn basic(key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

/// The headers of a plain JSON body.
const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

/// Posts `body` to `path` with `headers`, and with the write key `key` (if any) as the Basic
/// user: the status and the answer (null when it is not JSON).
async fn post_raw(
    url: &str,
    path: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .body(body);
    if let Some(k) = key {
        req = req.header("authorization", basic(k));
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Posts `body` as JSON to `path` with the write key.
async fn post(url: &str, path: &str, body: &Value) -> (u16, Value) {
    let body = serde_json::to_vec(body).expect("json");
    post_raw(url, path, Some(KEY), JSON, body).await
}

/// Waits until the emulator holds `n` tickets, then checks each external id is there once.
async fn all_tickets_once(emu: &Emulator, n: usize) {
    eventually("all the tickets", Duration::from_secs(30), async || {
        count(&emu.state(), "tickets") >= n
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    each_ticket_once(&emu.state(), n);
}

fn ticket(n: usize) -> Value {
    json!({
        "type": "track", "event": "Ticket Created", "userId": format!("u-{n}"),
        "messageId": format!("ticket-msg-{n}"),
        "context": {"traits": {"email": format!("user{n}@example.com"), "name": format!("User {n}")}},
        "properties": {"subject": format!("Problem {n}"), "comment": "It broke.", "external_id": format!("T-{n}")}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ingest_api_stores_and_delivers_good_input_and_refuses_bad_input() {
    let emu = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator");
    let data = tempfile::tempdir().expect("tempdir");
    let server = start_server(&emu, data.path(), Path::new("mappings"), false).await;
    let url = server.url();

    let ok = json!({"success": true});
    let identify = json!({"userId": "u-1", "traits": {"email": "ada@example.com", "name": "Ada"}});
    assert_eq!(
        post(&url, "/v1/identify", &identify).await,
        (200, ok.clone())
    );
    let group = json!({"groupId": "org-1", "traits": {"name": "Engines"}});
    assert_eq!(post(&url, "/v1/group", &group).await, (200, ok.clone()));
    let batch = json!({"batch": [
        {"type": "track", "userId": "u-1", "event": "Order Completed", "properties": {"total": 3}},
        {"action": "identify", "userId": "u-2", "traits": {"email": "grace@example.com", "name": "Grace"}}
    ]});
    assert_eq!(post(&url, "/v1/batch", &batch).await, (200, ok.clone()));
    let import = json!({"batch": [ticket(1)]});
    assert_eq!(post(&url, "/v1/import", &import).await, (200, ok.clone()));
    let track = json!({"userId": "u-2", "event": "Signed In", "writeKey": KEY});
    let body = serde_json::to_vec(&track).expect("json");
    let (status, _) = post_raw(&url, "/v1/track", None, JSON, body).await;
    assert_eq!(status, 200, "the write key may come in the body");

    eventually(
        "all six events delivered",
        Duration::from_secs(30),
        async || {
            let s = emu.state();
            count(&s, "users") >= 3
                && count(&s, "organizations") == 1
                && count(&s, "tickets") == 1
                && count(&s, "events") == 2
        },
    )
    .await;
    let state = emu.state();
    let users = state["users"].as_array().expect("users");
    assert!(
        users
            .iter()
            .any(|u| u["email"] == "ada@example.com" && u["external_id"] == "u-1")
    );
    assert!(users.iter().any(|u| u["email"] == "grace@example.com"));
    assert_eq!(state["tickets"][0]["external_id"], "T-1");
    let created: Vec<Value> = emu
        .requests()
        .into_iter()
        .filter(|r| r["method"] == "POST" && r["path"] == "/api/v2/tickets")
        .collect();
    assert_eq!(created.len(), 1);
    assert_eq!(
        created[0]["headers"]["idempotency-key"], "ticket-msg-1",
        "the event's messageId is the ticket's idempotency key"
    );

    // Bad input: each refused with a message, nothing stored.
    let big = "x".repeat(33 * 1024);
    let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
    type Case<'a> = (&'a str, Vec<u8>, Option<&'a str>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("/v1/track", b"{nope".to_vec(), Some(KEY), 400, "not valid JSON"),
        ("/v1/batch", br#"{"batch":[{"userId":"u"}]}"#.to_vec(), Some(KEY), 400, "no `type`"),
        ("/v1/batch", br#"{"batch":[{"type":"purchase","userId":"u"}]}"#.to_vec(), Some(KEY), 400, "unknown event type"),
        ("/v1/track", format!(r#"{{"userId":"u","event":"{big}"}}"#).into_bytes(), Some(KEY), 400, "32 KB"),
        (
            "/v1/batch",
            serde_json::to_vec(&json!({"batch": (0..20).map(|_| json!({"type": "track", "event": "x".repeat(30_000)})).collect::<Vec<_>>()})).expect("json"),
            Some(KEY), 400, "500 KB",
        ),
        ("/v1/track", format!(r#"{{"userId":"u","properties":{{"a":{deep}}}}}"#).into_bytes(), Some(KEY), 400, "nested deeper"),
        ("/v1/track", br#"{"userId":"u","event":"E"}"#.to_vec(), Some("wrong-key"), 401, "write key"),
        ("/v1/track", br#"{"userId":"u","event":"E"}"#.to_vec(), None, 401, "write key"),
    ];
    for (path, body, key, want_status, want_message) in cases {
        let (status, answer) = post_raw(&url, path, key, JSON, body).await;
        assert_eq!(status, want_status, "{path} {want_message}: {answer}");
        assert_eq!(answer["success"], false);
        let message = answer["message"].as_str().unwrap_or_default();
        assert!(message.contains(want_message), "{message} / {want_message}");
    }

    let (status, body) = get(&format!("{url}/healthz")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""status":"ok""#), "{body}");
    let (status, body) = get(&format!("{url}/readyz")).await;
    assert_eq!(status, 200, "{body}");
    let text = Metrics::read(&server.url()).await;
    assert_eq!(text.get("zdmap_events_accepted_total"), Some(6.0), "{text}");
    assert_eq!(
        text.get("zdmap_events_delivered_total"),
        Some(6.0),
        "{text}"
    );
    assert_eq!(text.get("zdmap_queue_depth"), Some(0.0), "{text}");
    assert_eq!(
        text.get("zdmap_ingest_rejected_total{reason=\"bad_request\"}"),
        Some(6.0),
        "{text}"
    );
    assert_eq!(
        text.get("zdmap_ingest_rejected_total{reason=\"unauthorized\"}"),
        Some(2.0),
        "{text}"
    );
    assert!(
        text.0.contains(
            "zdmap_zendesk_requests_total{endpoint=\"POST /api/v2/tickets\",status=\"201\"} 1"
        ),
        "{text}"
    );
    assert_eq!(
        text.get("zdmap_delivery_latency_seconds_count"),
        Some(6.0),
        "{text}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_wait_while_zendesk_is_down_then_go() {
    let emu = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator");
    emu.configure(|k| k.fail_rate = 1.0);
    let data = tempfile::tempdir().expect("tempdir");
    let server = start_server(&emu, data.path(), Path::new("mappings"), false).await;
    let batch = json!({"batch": (0..10).map(ticket).collect::<Vec<_>>()});
    assert_eq!(post(&server.url(), "/v1/batch", &batch).await.0, 200);

    let text = Metrics::once(&server.url(), "zdmap_events_deferred_total", |n| n >= 3.0).await;
    assert_eq!(
        text.get("zdmap_queue_depth"),
        Some(10.0),
        "events wait in the queue: {text}"
    );
    assert_eq!(
        text.get("zdmap_events_dead_lettered_total"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(count(&emu.state(), "tickets"), 0);

    emu.configure(|k| k.fail_rate = 0.0);
    all_tickets_once(&emu, 10).await;
    Metrics::once(&server.url(), "zdmap_queue_depth", |n| n == 0.0).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_credentials_make_it_not_ready_and_keep_the_events() {
    let emu = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator");
    emu.configure(|k| k.forced_faults.push(ForcedFault::new(401).times(4)));
    let data = tempfile::tempdir().expect("tempdir");
    let server = start_server(&emu, data.path(), Path::new("mappings"), false).await;
    let url = server.url();
    assert_eq!(post(&url, "/v1/track", &json!({"userId": "u-9", "event": "Ticket Created", "context": {"traits": {"email": "n@example.com", "name": "N"}}, "properties": {"subject": "S", "comment": "C"}})).await.0, 200);
    let body = readyz_once(&url, 503, "not ready while Zendesk refuses the credentials").await;
    assert!(body.contains("401"), "{body}");
    eventually(
        "the ticket once the credentials work again",
        Duration::from_secs(30),
        async || count(&emu.state(), "tickets") == 1,
    )
    .await;
    let (status, body) = get(&format!("{url}/readyz")).await;
    assert_eq!(status, 200, "ready again: {body}");
    let text = Metrics::read(&server.url()).await;
    assert_eq!(
        text.get("zdmap_events_dead_lettered_total"),
        Some(0.0),
        "{text}"
    );
    server.shutdown().await;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let path = entry.path();
        if path.is_file() {
            std::fs::copy(&path, to.join(entry.file_name())).expect("copy");
        }
    }
}

/// A server (watching its mappings or not) on a copy of the shipped mappings, to change them
/// while it runs: the emulator, the data and mappings directories, and the server.
async fn serve_a_copy(watch: bool) -> (Emulator, tempfile::TempDir, tempfile::TempDir, Server) {
    let emu = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator");
    let data = tempfile::tempdir().expect("tempdir");
    let mappings = tempfile::tempdir().expect("tempdir");
    copy_dir(Path::new("mappings"), mappings.path());
    let server = start_server(&emu, data.path(), mappings.path(), watch).await;
    (emu, data, mappings, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_changed_config_is_swapped_in_and_a_broken_one_is_refused() {
    let (emu, _data, mappings, server) = serve_a_copy(true).await;
    let url = server.url();
    let ticket_file = mappings.path().join("create_ticket.yaml");
    let original = std::fs::read_to_string(&ticket_file).expect("read");

    // Broken: refused with validate's messages, reported by /healthz and a metric; the running
    // config goes on and the server stays ready (one typo must not empty a load balancer).
    std::fs::write(&ticket_file, format!("{original}\nthis is: [not valid\n")).expect("write");
    let text = Metrics::once(&url, "zdmap_config_reload_failing", |n| n == 1.0).await;
    assert_eq!(text.get("zdmap_ready"), Some(1.0), "{text}");
    let (status, body) = get(&format!("{url}/healthz")).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("create_ticket.yaml:"),
        "a located message: {body}"
    );
    let body = readyz_once(&url, 200, "still ready").await;
    assert!(body.contains("create_ticket.yaml:"), "{body}");
    assert_eq!(
        post(&url, "/v1/import", &json!({"batch": [ticket(1)]}))
            .await
            .0,
        200
    );
    eventually(
        "a ticket from the last good config",
        Duration::from_secs(30),
        async || count(&emu.state(), "tickets") == 1,
    )
    .await;

    // Good: tickets switched off; swapped in, ready again.
    let disabled = original.replacen("\ntrigger:", "\nenabled: false\ntrigger:", 1);
    assert_ne!(
        disabled, original,
        "create_ticket.yaml has a top-level trigger"
    );
    std::fs::write(&ticket_file, disabled).expect("write");
    let text = Metrics::once(&url, "zdmap_config_reload_failing", |n| n == 0.0).await;
    assert!(
        text.get("zdmap_config_reloads_total{result=\"ok\"}")
            .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    assert!(
        text.get("zdmap_config_reloads_total{result=\"failed\"}")
            .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    assert_eq!(
        post(&url, "/v1/import", &json!({"batch": [ticket(2)]}))
            .await
            .0,
        200
    );
    Metrics::once(&url, "zdmap_events_skipped_total", |n| n == 1.0).await;
    assert_eq!(count(&emu.state(), "tickets"), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_of_deeply_nested_mappings_is_refused_and_the_server_stays_up() {
    let (_emu, _data, mappings, server) = serve_a_copy(false).await;
    let url = server.url();
    let ticket_file = mappings.path().join("create_ticket.yaml");
    let original = std::fs::read_to_string(&ticket_file).expect("read");
    let trigger = "trigger: type = \"track\" and event = \"Ticket Created\"";
    assert!(original.contains(trigger));
    for depth in [2_000, 10_000] {
        let deep = format!(
            "trigger: {}type = \"track\"{}",
            "(".repeat(depth),
            ")".repeat(depth)
        );
        std::fs::write(&ticket_file, original.replacen(trigger, &deep, 1)).expect("write");
        let shared = server.shared().clone();
        let refused = tokio::task::spawn_blocking(move || shared.reload())
            .await
            .expect("the reload returns");
        let diags = refused.expect_err("refused");
        assert!(
            diags.to_string().contains("nests deeper than 64"),
            "{diags}"
        );
        let (status, health) = get(&format!("{url}/healthz")).await;
        assert_eq!(status, 200);
        assert!(health.contains("deeper than 64"), "reported: {health}");
        readyz_once(&url, 200, "the last good config keeps the server ready").await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_with_work_in_flight_keeps_the_rest_for_the_next_start() {
    let emu = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator");
    emu.configure(|k| k.latency_ms = 150);
    let data = tempfile::tempdir().expect("tempdir");
    let server = start_server(&emu, data.path(), Path::new("mappings"), false).await;
    let batch = json!({"batch": (0..30).map(ticket).collect::<Vec<_>>()});
    assert_eq!(post(&server.url(), "/v1/batch", &batch).await.0, 200);
    eventually(
        "some tickets on their way",
        Duration::from_secs(30),
        async || count(&emu.state(), "tickets") >= 2,
    )
    .await;
    server.shutdown().await;
    let after_shutdown = count(&emu.state(), "tickets");
    assert!(
        after_shutdown < 30,
        "shutdown stopped delivery before the end ({after_shutdown})"
    );

    emu.configure(|k| k.latency_ms = 0);
    let server = start_server(&emu, data.path(), Path::new("mappings"), false).await;
    all_tickets_once(&emu, 30).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_are_listed_shown_replayed_and_purged() {
    let emu = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator");
    let data = tempfile::tempdir().expect("tempdir");
    let dir = data.path().to_str().expect("utf-8 path");
    let server = start_server(&emu, data.path(), Path::new("mappings"), false).await;
    let url = server.url();
    let unknown =
        json!({"userId": "nobody", "event": "Signed In", "properties": {"method": "sso"}});
    assert_eq!(post(&url, "/v1/track", &unknown).await.0, 200);
    let unknown2 = json!({"userId": "nobody-2", "event": "Signed In"});
    assert_eq!(post(&url, "/v1/track", &unknown2).await.0, 200);
    Metrics::once(&url, "zdmap_events_dead_lettered_total", |n| n == 2.0).await;

    let listed = zdmap(&["dead-letters", "--data-dir", dir, "list", "--json"], "");
    assert!(listed.status.success());
    let lines: Vec<Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["dead_letter"]["action"], "track_event");
    assert_eq!(lines[0]["event"]["userId"], "nobody");
    let first = lines[0]["id"].as_u64().expect("id").to_string();
    let second = lines[1]["id"].as_u64().expect("id").to_string();
    let shown = zdmap(&["dead-letters", "--data-dir", dir, "show", &first], "");
    assert!(String::from_utf8_lossy(&shown.stdout).contains("\"nobody\""));
    assert_eq!(
        zdmap(&["dead-letters", "--data-dir", dir, "show", "424242"], "")
            .status
            .code(),
        Some(1)
    );
    let text = zdmap(&["dead-letters", "--data-dir", dir, "list"], "");
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("track_event/"),
        "{text:?}"
    );

    // The user appears; the first letter is replayed into the running server and delivered.
    let identify =
        json!({"userId": "nobody", "traits": {"email": "nobody@example.com", "name": "No Body"}});
    assert_eq!(post(&url, "/v1/identify", &identify).await.0, 200);
    eventually("the user exists", Duration::from_secs(30), async || {
        count(&emu.state(), "users") == 1
    })
    .await;
    assert!(
        zdmap(&["dead-letters", "--data-dir", dir, "replay", &first], "")
            .status
            .success()
    );
    eventually(
        "the replayed event recorded",
        Duration::from_secs(30),
        async || count(&emu.state(), "events") == 1,
    )
    .await;
    assert_eq!(
        zdmap(&["dead-letters", "--data-dir", dir, "replay"], "")
            .status
            .code(),
        Some(64),
        "replay needs ids or --all (a usage error)"
    );
    assert!(
        zdmap(&["dead-letters", "--data-dir", dir, "purge", &second], "")
            .status
            .success()
    );
    let listed = zdmap(&["dead-letters", "--data-dir", dir, "list", "--json"], "");
    assert!(
        listed.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&listed.stdout)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_and_a_restart_lose_nothing_and_duplicate_nothing() {
    let emu = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator");
    emu.configure(|k| k.latency_ms = 200);
    let data = tempfile::tempdir().expect("tempdir");
    let mappings: PathBuf = Path::new("mappings").to_path_buf();

    let (mut child, url) = spawn_serve(&emu.url(), data.path(), &mappings, &[]);
    for chunk in 0..4 {
        let batch = json!({"batch": (chunk * 10..chunk * 10 + 10).map(ticket).collect::<Vec<_>>()});
        assert_eq!(post(&url, "/v1/batch", &batch).await.0, 200);
    }
    eventually("delivery under way", Duration::from_secs(30), async || {
        count(&emu.state(), "tickets") >= 1
    })
    .await;
    child.kill().expect("kill -9");
    let _ = child.wait();
    assert!(
        count(&emu.state(), "tickets") < 40,
        "the crash came before the end"
    );

    emu.configure(|k| k.latency_ms = 0);
    let (child, url) = spawn_serve(
        &emu.url(),
        data.path(),
        &mappings,
        &["--log-format", "json"],
    );
    all_tickets_once(&emu, 40).await;

    // SIGHUP reloads; SIGTERM stops gracefully with exit 0; JSON logs without secrets or events.
    signal(&child, "HUP");
    Metrics::once(&url, "zdmap_config_reloads_total{result=\"ok\"}", |n| {
        n == 1.0
    })
    .await;
    signal(&child, "TERM");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.contains("mappings reloaded"), "{logs}");
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let entry: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            entry["level"].is_string() && entry["fields"].is_object(),
            "{line}"
        );
        assert!(
            line.matches("\"message\"").count() <= 1,
            "one message key: {line}"
        );
    }
    assert!(!logs.contains("serve-test-token-secret"), "{logs}");
    assert!(
        !logs.contains("user1@example.com"),
        "no event data in the logs: {logs}"
    );
}

/// What real senders do, one habit at a time: compression, partly invalid and repeated batches,
/// analytics.js from a web page, and the abuse a public endpoint gets.
mod senders {
    use super::*;
    use flate2::Compression;
    use std::io::Write as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use zdmap::serve::connections::ConnectionLimits;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).expect("gzip");
        e.finish().expect("gzip")
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).expect("zlib");
        e.finish().expect("zlib")
    }

    /// An emulator, a data directory and a server delivering to the emulator.
    async fn serving(ingest: IngestOptions) -> (Emulator, tempfile::TempDir, Server) {
        let emu = Emulator::start(EmulatorOptions::default())
            .await
            .expect("emulator");
        let data = tempfile::tempdir().expect("tempdir");
        let server =
            start_server_with(&emu, data.path(), Path::new("mappings"), false, ingest).await;
        (emu, data, server)
    }

    /// Checks the server's counters: each name has the value given.
    async fn counters_are(server: &Server, expected: &[(&str, f64)]) {
        let text = Metrics::read(&server.url()).await;
        for (name, value) in expected {
            assert_eq!(text.get(name), Some(*value), "{name}: {text}");
        }
    }

    fn dead_letters(data: &Path) -> Vec<Value> {
        let dir = data.to_str().expect("utf-8 path");
        let listed = zdmap(&["dead-letters", "--data-dir", dir, "list", "--json"], "");
        assert!(listed.status.success());
        String::from_utf8_lossy(&listed.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// A batch as `@rudderstack/rudder-sdk-node` 3.x sends every request: gzipped JSON with
    /// `sentAt`, `context.library` on each call, and the write key as the Basic user.
    fn rudderstack_batch(users: std::ops::Range<usize>) -> Vec<u8> {
        let calls: Vec<Value> = users
            .map(|n| {
                json!({
                    "type": "identify", "userId": format!("rs-{n}"), "messageId": format!("node-{n}-3f2a"),
                    "anonymousId": format!("anon-{n}"), "channel": "server",
                    "originalTimestamp": "2026-11-30T06:00:00.000Z", "sentAt": "2026-11-30T06:00:01.000Z",
                    "context": {"library": {"name": "@rudderstack/rudder-sdk-node", "version": "3.0.0"}},
                    "traits": {"email": format!("rs{n}@example.com"), "name": format!("Rudder {n}")},
                    "integrations": {"All": true}, "_metadata": {"nodeVersion": "22.11.0"}
                })
            })
            .collect();
        gzip(
            &serde_json::to_vec(&json!({"batch": calls, "sentAt": "2026-11-30T06:00:01.000Z"}))
                .expect("json"),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn gzip_and_deflate_bodies_are_taken_and_bombs_and_garbage_refused() {
        let (emu, _data, server) = serving(IngestOptions::default()).await;
        let url = server.url();
        let gz = [
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
            ("user-agent", "RudderStack/3.0.0"),
        ];
        assert_eq!(
            post_raw(&url, "/v1/batch", Some(KEY), &gz, rudderstack_batch(0..3)).await,
            (200, json!({"success": true}))
        );
        // Segment's Python SDK with gzip=True, and a deflate sender, on single-call endpoints.
        let identify =
            json!({"userId": "py-1", "traits": {"email": "py@example.com", "name": "Py"}});
        let body = gzip(&serde_json::to_vec(&identify).expect("json"));
        assert_eq!(
            post_raw(&url, "/v1/identify", Some(KEY), &gz, body).await.0,
            200
        );
        let identify =
            json!({"userId": "zl-1", "traits": {"email": "zl@example.com", "name": "Zl"}});
        let deflate = [
            ("content-type", "application/json"),
            ("content-encoding", "deflate"),
        ];
        let body = zlib(&serde_json::to_vec(&identify).expect("json"));
        assert_eq!(
            post_raw(&url, "/v1/identify", Some(KEY), &deflate, body)
                .await
                .0,
            200
        );
        eventually("five users", Duration::from_secs(30), async || {
            count(&emu.state(), "users") == 5
        })
        .await;

        // 50 MB of spaces inside a valid batch: about 50 KB on the wire, refused at the limit.
        let mut bomb = b"{\"batch\":[".to_vec();
        bomb.resize(50 * 1024 * 1024, b' ');
        bomb.extend_from_slice(b"]}");
        let br = [("content-encoding", "br")];
        type Case<'a> = (&'a [(&'a str, &'a str)], Vec<u8>, u16, &'a str);
        let cases: Vec<Case> = vec![
            (&gz, gzip(&bomb), 400, "500 KB"),
            (&gz, br#"{"batch":[]}"#.to_vec(), 400, "not valid gzip data"),
            (
                &deflate,
                b"not deflate".to_vec(),
                400,
                "not valid deflate data",
            ),
            (&br, b"...".to_vec(), 415, "\"br\""),
        ];
        for (headers, body, want_status, want_message) in cases {
            let (status, answer) = post_raw(&url, "/v1/batch", Some(KEY), headers, body).await;
            assert_eq!(status, want_status, "{want_message}: {answer}");
            let message = answer["message"].as_str().unwrap_or_default();
            assert!(message.contains(want_message), "{message} / {want_message}");
        }
        let counters = [
            ("zdmap_events_accepted_total", 5.0),
            ("zdmap_ingest_rejected_total{reason=\"bad_request\"}", 4.0),
        ];
        counters_are(&server, &counters).await;
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_partly_invalid_batch_is_taken_for_its_valid_calls_and_the_rest_kept_as_dead_letters()
    {
        let (emu, data, server) = serving(IngestOptions::default()).await;
        let url = server.url();
        let batch = json!({"batch": [
            ticket(1),
            {"userId": "u-x", "event": "No Type", "properties": {"secret": "personal-data-7"}},
            ticket(2),
            {"type": "purchase", "userId": "u-y"},
            {"type": "track", "userId": "u-z", "event": "x".repeat(33 * 1024)},
            ticket(3)
        ]});
        let (status, answer) = post(&url, "/v1/batch", &batch).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["success"], true);
        let reasons: Vec<&str> = answer["refused"]
            .as_array()
            .expect("refused")
            .iter()
            .filter_map(|r| r["reason"].as_str())
            .collect();
        assert_eq!(reasons, ["no_type", "bad_type", "too_large"]);
        assert_eq!(answer["refused"][0]["index"], 1);
        all_tickets_once(&emu, 3).await;

        let counters = [
            ("zdmap_events_accepted_total", 3.0),
            ("zdmap_events_refused_total{reason=\"no_type\"}", 1.0),
            ("zdmap_events_refused_total{reason=\"bad_type\"}", 1.0),
            ("zdmap_events_refused_total{reason=\"too_large\"}", 1.0),
            ("zdmap_ingest_rejected_total{reason=\"bad_request\"}", 0.0),
        ];
        counters_are(&server, &counters).await;
        server.shutdown().await;

        let letters = dead_letters(data.path());
        assert_eq!(letters.len(), 3, "{letters:?}");
        assert!(
            letters.iter().all(|l| l["dead_letter"]["step"] == "ingest"),
            "{letters:?}"
        );
        assert_eq!(letters[0]["dead_letter"]["code"], "no_type");
        assert!(
            letters[0]["dead_letter"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("refused at ingest: batch[1]"))
        );
        assert_eq!(
            letters[0]["event"]["properties"]["secret"],
            "personal-data-7"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_batch_sent_again_is_recorded_once_even_after_a_restart() {
        let emu = Emulator::start(EmulatorOptions::default())
            .await
            .expect("emulator");
        let data = tempfile::tempdir().expect("tempdir");
        let identify = json!({"type": "identify", "userId": "u-again", "messageId": "id-again",
            "traits": {"email": "again@example.com", "name": "Again"}});
        let signed_in = json!({"type": "track", "userId": "u-again", "event": "Signed In", "messageId": "ev-again"});
        let batch = json!({"batch": [identify, ticket(1), ticket(2)]});
        let server = start_server(&emu, data.path(), Path::new("mappings"), false).await;
        let url = server.url();
        assert_eq!(post(&url, "/v1/batch", &batch).await.0, 200);
        eventually("the user", Duration::from_secs(30), async || {
            count(&emu.state(), "users") >= 1
        })
        .await;
        let events = json!({"batch": [signed_in]});
        assert_eq!(post(&url, "/v1/batch", &events).await.0, 200);
        // The SDK did not hear back in time and sends both again.
        assert_eq!(post(&url, "/v1/batch", &batch).await.0, 200);
        assert_eq!(post(&url, "/v1/batch", &events).await.0, 200);
        let counters = [
            ("zdmap_events_duplicate_total", 4.0),
            ("zdmap_events_accepted_total", 4.0),
        ];
        counters_are(&server, &counters).await;
        server.shutdown().await;

        let server = start_server(&emu, data.path(), Path::new("mappings"), false).await;
        assert_eq!(post(&server.url(), "/v1/batch", &events).await.0, 200);
        // Remembered across a restart.
        counters_are(&server, &[("zdmap_events_duplicate_total", 1.0)]).await;
        // A call without a messageId gets a new one each time: it is never a duplicate.
        let anonymous = json!({"userId": "u-again", "event": "Signed In"});
        assert_eq!(post(&server.url(), "/v1/track", &anonymous).await.0, 200);
        eventually("two user events", Duration::from_secs(30), async || {
            count(&emu.state(), "events") == 2
        })
        .await;
        all_tickets_once(&emu, 2).await;
        Metrics::once(&server.url(), "zdmap_queue_depth", |n| n == 0.0).await;
        assert_eq!(
            count(&emu.state(), "events"),
            2,
            "the resent track was not recorded again"
        );
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn analytics_js_posts_text_plain_from_an_allowed_origin() {
        let ingest = IngestOptions {
            cors_origins: vec!["https://shop.example.com".into()],
            ..IngestOptions::default()
        };
        let (emu, data, server) = serving(ingest).await;
        let url = server.url();
        let client = reqwest::Client::new();
        let preflight = |origin: &'static str| {
            client
                .request(reqwest::Method::OPTIONS, format!("{url}/v1/i"))
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "content-type")
                .send()
        };
        let allowed = preflight("https://shop.example.com")
            .await
            .expect("preflight");
        assert!(allowed.status().is_success(), "{}", allowed.status());
        assert_eq!(
            allowed.headers()["access-control-allow-origin"],
            "https://shop.example.com"
        );
        let other = preflight("https://evil.example.net")
            .await
            .expect("preflight");
        assert!(other.headers().get("access-control-allow-origin").is_none());

        // analytics.js: text/plain (no preflight needed), the write key in the body.
        let call = |path: &str, body: Value| {
            client
                .post(format!("{url}{path}"))
                .header("origin", "https://shop.example.com")
                .header("content-type", "text/plain")
                .body(body.to_string())
                .send()
        };
        let identify = json!({"userId": "web-1", "traits": {"email": "web@example.com", "name": "Web"},
            "writeKey": KEY, "context": {"library": {"name": "analytics.js", "version": "next-1.70.0"}}});
        let resp = call("/v1/i", identify).await.expect("identify");
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(
            resp.headers()["access-control-allow-origin"],
            "https://shop.example.com"
        );
        let page = json!({"userId": "web-1", "name": "Pricing", "writeKey": KEY});
        assert_eq!(
            call("/v1/p", page).await.expect("page").status().as_u16(),
            200
        );
        let track = json!({"userId": "web-nobody", "event": "Signed In", "writeKey": KEY});
        assert_eq!(
            call("/v1/t", track).await.expect("track").status().as_u16(),
            200
        );
        let wrong = json!({"userId": "web-1", "event": "Signed In", "writeKey": "not-the-key"});
        assert_eq!(
            call("/v1/t", wrong).await.expect("track").status().as_u16(),
            401
        );
        eventually("the web user", Duration::from_secs(30), async || {
            count(&emu.state(), "users") == 1
        })
        .await;
        Metrics::once(&url, "zdmap_events_dead_lettered_total", |n| n == 1.0).await;
        server.shutdown().await;
        let letters = dead_letters(data.path());
        assert_eq!(letters[0]["event"]["userId"], "web-nobody");
        assert!(
            letters[0]["event"].get("writeKey").is_none(),
            "the write key is not stored: {letters:?}"
        );
    }

    /// Sends a request head to the server over a raw connection and reads what comes back.
    async fn raw_exchange(url: &str, head: &str) -> String {
        let addr = url.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut answer = vec![0u8; 4096];
        let n = stream.read(&mut answer).await.unwrap_or(0);
        String::from_utf8_lossy(&answer[..n]).into_owned()
    }

    /// Reads an answer's head (up to its blank line) from `stream`; what came if it closed
    /// before.
    pub(super) async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&head).into_owned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_wrong_key_gets_401_before_its_body_is_uploaded() {
        let (_emu, _data, server) = serving(IngestOptions::default()).await;
        let head = |key: &str| {
            format!(
                "POST /v1/batch HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
                 content-length: 500000\r\nexpect: 100-continue\r\nauthorization: {}\r\n\r\n",
                basic(key)
            )
        };
        let answer = raw_exchange(&server.url(), &head("wrong-key")).await;
        assert!(
            answer.starts_with("HTTP/1.1 401"),
            "no 100 Continue, no upload: {answer}"
        );
        assert!(!answer.contains("100 Continue"), "{answer}");
        let answer = raw_exchange(&server.url(), &head(KEY)).await;
        assert!(
            answer.starts_with("HTTP/1.1 100 Continue"),
            "the right key may upload: {answer}"
        );
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn unfinished_headers_time_out_and_when_every_slot_is_busy_newcomers_are_closed() {
        let ingest = IngestOptions {
            connections: ConnectionLimits {
                max_connections: 3,
                header_timeout: Duration::from_millis(500),
                idle_timeout: Duration::from_secs(30),
            },
            ..IngestOptions::default()
        };
        let (_emu, _data, server) = serving(ingest).await;
        let addr = server.url().trim_start_matches("http://").to_owned();
        // Three uploads in flight (their heads sent, their bodies not yet) take every slot.
        let call = br#"{"userId": "u-busy", "event": "Signed In"}"#;
        let mut busy = Vec::new();
        for _ in 0..3 {
            let mut s = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect");
            let head = format!(
                "POST /v1/track HTTP/1.1\r\nhost: localhost\r\nauthorization: {}\r\n\
                 content-type: application/json\r\ncontent-length: {}\r\n\
                 expect: 100-continue\r\n\r\n",
                basic(KEY),
                call.len()
            );
            s.write_all(head.as_bytes()).await.expect("write");
            // Asked for its body: the request is in flight.
            let answer = read_head(&mut s).await;
            assert!(answer.starts_with("HTTP/1.1 100 Continue"), "{answer}");
            busy.push(s);
        }
        // Once they hold the slots, a newcomer is closed on arrival: nobody is evicted for it.
        eventually(
            "a connection refused over the cap",
            Duration::from_secs(30),
            async || {
                let mut s = tokio::net::TcpStream::connect(&addr).await.ok()?;
                let _ = s
                    .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
                    .await;
                let mut buf = [0u8; 64];
                let closed = matches!(s.read(&mut buf).await, Ok(0) | Err(_));
                closed.then_some(())
            },
        )
        .await;
        // Past the header timeout, the uploads are answered: a request in flight has no head
        // deadline.
        tokio::time::sleep(Duration::from_millis(600)).await;
        for mut s in busy {
            s.write_all(call).await.expect("body");
            let mut buf = [0u8; 256];
            let n = s.read(&mut buf).await.expect("answer");
            let got = String::from_utf8_lossy(&buf[..n]);
            assert!(got.starts_with("HTTP/1.1 200"), "{got}");
        }
        let text = Metrics::once(&server.url(), "zdmap_connections_refused_total", |n| {
            n >= 1.0
        })
        .await;
        assert!(text.get("zdmap_connections_open").is_some(), "{text}");
        assert_eq!(
            text.get("zdmap_connections_evicted_total"),
            Some(0.0),
            "{text}"
        );
        // A head left unfinished, and no head at all, are closed at the header timeout.
        let mut unfinished = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        unfinished
            .write_all(b"POST /v1/track HTTP/1.1\r\nhost: localhost\r\n")
            .await
            .expect("write");
        let silent = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        for mut s in [unfinished, silent] {
            let mut buf = [0u8; 256];
            let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
                .await
                .expect("closed")
                .unwrap_or(0);
            let got = String::from_utf8_lossy(&buf[..n]);
            assert!(n == 0 || got.starts_with("HTTP/1.1 408"), "closed: {got}");
        }
        // A kept-alive connection that goes quiet is closed too.
        let mut idle = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .expect("write");
        let mut buf = vec![0u8; 4096];
        let n = idle.read(&mut buf).await.expect("answer");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(30), idle.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the idle connection was closed");
        Metrics::once(&server.url(), "zdmap_connections_timed_out_total", |n| {
            n >= 3.0
        })
        .await;
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn credentials_come_from_files_read_again_on_reload_and_logs_stay_clean() {
        let emu = Emulator::start(EmulatorOptions {
            api_token: Some(zdmap::emulator::Secret::new("rotated-token-2")),
            ..EmulatorOptions::default()
        })
        .await
        .expect("emulator");
        let data = tempfile::tempdir().expect("tempdir");
        let secrets = tempfile::tempdir().expect("tempdir");
        let token_file = secrets.path().join("zendesk-api-token");
        std::fs::write(&token_file, "expired-token-1\n").expect("write");
        let (child, url) = spawn_serve_with(
            &emu.url(),
            data.path(),
            Path::new("mappings"),
            // A call for nobody waits a second for its user, then is dead-lettered.
            &["--log-events", "--wait-for-records", "1s"],
            |cmd| {
                cmd.env_remove("ZENDESK_API_TOKEN")
                    .env("ZENDESK_API_TOKEN_FILE", &token_file);
            },
        );
        let identify = json!({"userId": "f-1", "traits": {"email": "f@example.com", "name": "F"}, "writeKey": "body-key-9f"});
        assert_eq!(post(&url, "/v1/identify", &identify).await.0, 200);
        let body = readyz_once(&url, 503, "the expired token refused").await;
        assert!(body.contains("401"), "{body}");
        std::fs::write(&token_file, "rotated-token-2\n").expect("write");
        signal(&child, "HUP");
        eventually(
            "delivered with the rotated token",
            Duration::from_secs(30),
            async || count(&emu.state(), "users") == 1,
        )
        .await;
        readyz_once(&url, 200, "ready again").await;
        // A call for nobody is dead-lettered and, with --log-events, logged with its event.
        let unknown = json!({"userId": "f-nobody", "event": "Signed In", "writeKey": KEY});
        assert_eq!(
            post_raw(
                &url,
                "/v1/track",
                None,
                JSON,
                serde_json::to_vec(&unknown).expect("json")
            )
            .await
            .0,
            200
        );
        Metrics::once(&url, "zdmap_events_dead_lettered_total", |n| n == 1.0).await;
        signal(&child, "TERM");
        let out = child.wait_with_output().expect("wait");
        assert_eq!(out.status.code(), Some(0));
        let logs = String::from_utf8_lossy(&out.stderr);
        assert!(logs.contains("f-nobody"), "the event is logged: {logs}");
        for secret in ["expired-token-1", "rotated-token-2", KEY, "body-key-9f"] {
            assert!(!logs.contains(secret), "{secret} in the logs: {logs}");
        }
        assert!(
            !logs.contains('\u{1b}'),
            "no colour codes when standard error is not a terminal"
        );
    }
}

/// Hostile and unlucky connections: hundreds of clients that connect and send nothing, or a
/// byte a second, against a small connection cap. Real senders are still answered, the
/// hostile sockets are closed, and a request in flight is never cut off to make room.
mod crowded {
    use super::senders::read_head;
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;
    use zdmap::serve::connections::ConnectionLimits;

    /// The cap of these tests' servers.
    const CAP: usize = 20;

    async fn serving(header_timeout: Duration) -> (Emulator, tempfile::TempDir, Server) {
        let emu = Emulator::start(EmulatorOptions::default())
            .await
            .expect("emulator");
        let data = tempfile::tempdir().expect("tempdir");
        let ingest = IngestOptions {
            connections: ConnectionLimits {
                max_connections: CAP,
                header_timeout,
                idle_timeout: Duration::from_secs(60),
            },
            ..IngestOptions::default()
        };
        let server =
            start_server_with(&emu, data.path(), Path::new("mappings"), false, ingest).await;
        (emu, data, server)
    }

    /// How the clients of a flood behave once connected.
    #[derive(Clone, Copy)]
    enum Client {
        /// Sends nothing.
        Silent,
        /// Sends a request head one byte a second, never finishing it (slowloris).
        Trickle,
    }

    /// Clients connecting one after another (one every 20 ms, up to 500), each kept open
    /// until the server closes it.
    struct Flood {
        opened: Arc<AtomicUsize>,
        closed: Arc<AtomicUsize>,
        stop: Arc<AtomicBool>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Flood {
        fn start(addr: &str, client: Client) -> Flood {
            let opened = Arc::new(AtomicUsize::new(0));
            let closed = Arc::new(AtomicUsize::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let task = tokio::spawn({
                let (addr, opened, closed, stop) = (
                    addr.to_owned(),
                    opened.clone(),
                    closed.clone(),
                    stop.clone(),
                );
                async move {
                    for _ in 0..500 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        if let Ok(stream) = TcpStream::connect(&addr).await {
                            opened.fetch_add(1, Ordering::Relaxed);
                            tokio::spawn(hold(stream, client, closed.clone()));
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            });
            Flood {
                opened,
                closed,
                stop,
                task,
            }
        }

        /// Waits until `n` clients have connected: more than the cap.
        async fn opened(&self, n: usize) {
            eventually("the flood's clients", Duration::from_secs(30), async || {
                self.opened.load(Ordering::Relaxed) >= n
            })
            .await;
        }

        /// Stops connecting, then waits until the server has closed every client.
        async fn all_closed(self) {
            self.stop.store(true, Ordering::Relaxed);
            self.task.await.expect("flood");
            let opened = self.opened.load(Ordering::Relaxed);
            eventually(
                "every client of the flood closed by the server",
                Duration::from_secs(30),
                async || {
                    let closed = self.closed.load(Ordering::Relaxed);
                    (closed == opened)
                        .then_some(())
                        .ok_or(format!("{closed} of {opened}"))
                },
            )
            .await;
        }
    }

    /// One client of a flood, until the server closes its connection.
    async fn hold(mut stream: TcpStream, client: Client, closed: Arc<AtomicUsize>) {
        let head = b"POST /v1/track HTTP/1.1\r\nhost: localhost\r\nx-slow: ";
        let mut sent = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut buf = [0u8; 256];
        loop {
            tokio::select! {
                read = stream.read(&mut buf) => {
                    if matches!(read, Ok(0) | Err(_)) {
                        break;
                    }
                }
                _ = tick.tick(), if matches!(client, Client::Trickle) => {
                    let byte = head.get(sent).copied().unwrap_or(b'a');
                    if stream.write_all(&[byte]).await.is_err() {
                        break;
                    }
                    sent += 1;
                }
            }
        }
        closed.fetch_add(1, Ordering::Relaxed);
    }

    /// A sender's track call over a connection of its own, as raw HTTP/1.1: the answer's
    /// head, empty when the connection was closed instead.
    async fn track(addr: &str, n: usize) -> String {
        let call = format!(r#"{{"userId": "u-real-{n}", "event": "Signed In"}}"#);
        let request = format!(
            "POST /v1/track HTTP/1.1\r\nhost: localhost\r\nauthorization: {}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{call}",
            basic(KEY),
            call.len()
        );
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            return String::new();
        };
        if stream.write_all(request.as_bytes()).await.is_err() {
            return String::new();
        }
        read_head(&mut stream).await
    }

    /// Ten senders, one after another, each on a new connection: every one is answered 200.
    async fn ten_senders_answered(server: &Server) {
        let addr = server.url().trim_start_matches("http://").to_owned();
        let mut answers = Vec::new();
        for n in 0..10 {
            answers.push(track(&addr, n).await);
        }
        let answered = answers
            .iter()
            .filter(|a| a.starts_with("HTTP/1.1 200"))
            .count();
        assert_eq!(answered, 10, "senders answered: {answers:?}");
        let text = Metrics::read(&server.url()).await;
        assert_eq!(
            text.get("zdmap_events_accepted_total"),
            Some(10.0),
            "{text}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn silent_sockets_over_the_cap_do_not_keep_senders_out_and_are_closed() {
        let (_emu, _data, server) = serving(Duration::from_secs(2)).await;
        let addr = server.url().trim_start_matches("http://").to_owned();
        let flood = Flood::start(&addr, Client::Silent);
        flood.opened(2 * CAP).await;
        ten_senders_answered(&server).await;
        flood.all_closed().await;
        let text = Metrics::read(&server.url()).await;
        // The oldest silent sockets made room for newcomers; the last ones hit the deadline.
        assert!(
            text.get("zdmap_connections_evicted_total")
                .is_some_and(|n| n >= CAP as f64),
            "{text}"
        );
        assert!(
            text.get("zdmap_connections_timed_out_total")
                .is_some_and(|n| n >= 1.0),
            "{text}"
        );
        assert_eq!(
            text.get("zdmap_connections_refused_total"),
            Some(0.0),
            "{text}"
        );
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn slowloris_clients_over_the_cap_do_not_keep_senders_out_and_are_closed() {
        // A byte a second keeps bytes flowing: only the deadline from the accept ends them.
        let (_emu, _data, server) = serving(Duration::from_secs(3)).await;
        let addr = server.url().trim_start_matches("http://").to_owned();
        let flood = Flood::start(&addr, Client::Trickle);
        flood.opened(3 * CAP).await;
        ten_senders_answered(&server).await;
        flood.all_closed().await;
        let text = Metrics::read(&server.url()).await;
        assert!(
            text.get("zdmap_connections_timed_out_total")
                .is_some_and(|n| n >= 1.0),
            "{text}"
        );
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_slow_upload_in_flight_is_not_evicted_by_a_flood() {
        let (_emu, _data, server) = serving(Duration::from_secs(2)).await;
        let addr = server.url().trim_start_matches("http://").to_owned();
        let call = br#"{"userId": "u-slow", "event": "Signed In", "properties": {"plan": "pro"}}"#;
        let mut upload = TcpStream::connect(&addr).await.expect("connect");
        let head = format!(
            "POST /v1/track HTTP/1.1\r\nhost: localhost\r\nauthorization: {}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n",
            basic(KEY),
            call.len()
        );
        upload.write_all(head.as_bytes()).await.expect("head");
        let answer = read_head(&mut upload).await;
        assert!(answer.starts_with("HTTP/1.1 100 Continue"), "{answer}");
        let (first, rest) = call.split_at(call.len() / 2);
        upload.write_all(first).await.expect("first half");
        // While its body is half sent, every other slot changes hands, more than twice over.
        let flood = Flood::start(&addr, Client::Silent);
        flood.opened(3 * CAP).await;
        Metrics::once(&server.url(), "zdmap_connections_evicted_total", |n| {
            n >= (2 * CAP) as f64
        })
        .await;
        // Senders get in meanwhile.
        ten_senders_answered(&server).await;
        upload.write_all(rest).await.expect("the rest");
        let answer = read_head(&mut upload).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "the upload is answered: {answer}"
        );
        Metrics::once(&server.url(), "zdmap_events_accepted_total", |n| n == 11.0).await;
        flood.all_closed().await;
        server.shutdown().await;
    }
}
