//! The delivery log of `zdmap serve`, read through the admin API and `zdmap events`: an event's
//! way from acceptance to its end (delivered, dead-lettered with Zendesk's error, skipped,
//! refused at ingest), search with cursor pagination, and no write key anywhere in it.

use crate::support::http::post_batch;
use crate::support::serving::{KEY, Killed, Setup, free_port, spawn_serve, start};
use crate::support::wait::eventually;
use serde_json::{Value, json};
use std::time::Duration;
use zdmap::emulator::Emulator;
use zdmap::serve::WorkerOptions;
use zdmap::serve::admin::{AdminOptions, AdminToken};

pub(crate) const TOKEN: &str = "journal-test-admin-token";

/// `GET {admin}/api/{path}` with the admin token: the status and the JSON body.
pub(crate) async fn api(admin: &str, path: &str) -> (u16, Value) {
    let answer = reqwest::Client::new()
        .get(format!("{admin}/api/{path}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("the admin listener answers");
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

/// The record of `message_id` once its state is `state`.
pub(crate) async fn record_in(admin: &str, message_id: &str, state: &str) -> Value {
    eventually(
        &format!("{message_id} is {state} in the delivery log"),
        Duration::from_secs(30),
        async || {
            let (status, body) = api(admin, &format!("events/{message_id}")).await;
            if status == 200 && body["state"] == state {
                Ok(body)
            } else {
                Err(format!("{status} {body}"))
            }
        },
    )
    .await
}

pub(crate) fn kinds(record: &Value) -> Vec<String> {
    record["timeline"]
        .as_array()
        .expect("a timeline")
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or_default().to_owned())
        .collect()
}

pub(crate) fn entries_of<'a>(record: &'a Value, kind: &str) -> Vec<&'a Value> {
    record["timeline"]
        .as_array()
        .expect("a timeline")
        .iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

fn setup() -> Setup {
    Setup {
        admin: Some(AdminOptions {
            listen: "127.0.0.1:0".parse().expect("addr"),
            token: AdminToken::new(TOKEN).expect("long enough"),
            required: true,
            allowed_hosts: Vec::new(),
        }),
        workers: WorkerOptions {
            batch_window: None,
            ..Setup::default().workers
        },
        ..Setup::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_follows_each_event_to_its_end_and_never_keeps_the_write_key() {
    let emu = Emulator::start(Default::default()).await.expect("emulator");
    let data = tempfile::tempdir().expect("tempdir");
    let server = start(&emu, data.path(), setup()).await;
    let admin = server.admin_url().expect("the admin listener runs");
    let events = [
        json!({"type": "identify", "messageId": "ok-1", "userId": "u1",
               "traits": {"email": "ada@example.com", "name": "Ada"}}),
        json!({"type": "identify", "messageId": "bad-1", "userId": "u2",
               "traits": {"email": "not-an-email", "name": "Bad"}}),
        json!({"type": "page", "messageId": "none-1", "userId": "u3", "name": "Home"}),
        json!({"messageId": "refused-1", "userId": "u4"}),
    ];
    assert_eq!(post_batch(&server.url(), Some(KEY), &events).await, 200);

    let ok = record_in(&admin, "ok-1", "delivered").await;
    let seen = kinds(&ok);
    assert_eq!(seen.first().map(String::as_str), Some("accepted"), "{ok}");
    assert_eq!(seen.last().map(String::as_str), Some("delivered"), "{ok}");
    assert_eq!(ok["actions"], json!(["upsert_user"]), "{ok}");
    assert_eq!(
        (
            ok["type"].clone(),
            ok["user_id"].clone(),
            ok["email"].clone()
        ),
        (json!("identify"), json!("u1"), json!("ada@example.com"))
    );
    let requests = entries_of(&ok, "request");
    let upsert = requests
        .iter()
        .find(|r| r["path"] == "/api/v2/users/create_or_update")
        .unwrap_or_else(|| panic!("the upsert request is recorded: {ok}"));
    assert_eq!(upsert["method"], "POST");
    assert!(
        upsert["status"]
            .as_u64()
            .is_some_and(|s| (200..300).contains(&s)),
        "{upsert}"
    );
    assert_eq!(upsert["attempt"], 1);
    assert_eq!(upsert["action"], "upsert_user");
    assert!(upsert["duration_ms"].is_u64(), "{upsert}");
    let source = ok["source"].as_str().expect("a source");
    assert!(
        !source.is_empty() && source != KEY,
        "a fingerprint, not the key: {source}"
    );

    let bad = record_in(&admin, "bad-1", "dead_lettered").await;
    let refused = entries_of(&bad, "request")
        .into_iter()
        .find(|r| r["status"] == 422)
        .unwrap_or_else(|| panic!("the refused request is recorded: {bad}"));
    assert_eq!(refused["code"], "InvalidValue", "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("not properly formatted")),
        "Zendesk's error body: {refused}"
    );
    let end = entries_of(&bad, "dead_lettered");
    assert_eq!(end.len(), 1, "{bad}");
    assert_eq!(
        (end[0]["status"].clone(), end[0]["code"].clone()),
        (json!(422), json!("InvalidValue"))
    );

    let none = record_in(&admin, "none-1", "skipped").await;
    assert_eq!(none["actions"], json!([]), "no trigger matched: {none}");
    assert!(entries_of(&none, "request").is_empty());

    let at_ingest = record_in(&admin, "refused-1", "refused").await;
    assert_eq!(kinds(&at_ingest), ["refused"], "{at_ingest}");
    assert_eq!(at_ingest["timeline"][0]["reason"], "no_type", "{at_ingest}");

    let (status, body) = api(&admin, "events/never-sent").await;
    assert_eq!(status, 404, "{body}");
    let unauthorized = reqwest::get(format!("{admin}/api/events/ok-1"))
        .await
        .expect("answers")
        .status();
    assert_eq!(unauthorized, 401, "the log is behind the admin token");

    // Search: by state, by email.
    let (_, dead) = api(&admin, "events?state=dead_lettered").await;
    let ids: Vec<&str> = dead["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["message_id"].as_str())
        .collect();
    assert_eq!(ids, ["bad-1"]);
    let (_, by_email) = api(&admin, "events?email=ada@example.com").await;
    assert_eq!(by_email["events"][0]["message_id"], "ok-1", "{by_email}");

    // A replay by `zdmap dead-letters` is recorded, then the event's new try follows.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zdmap"))
        .args(["dead-letters", "replay", "--all", "--data-dir"])
        .arg(data.path())
        .env_remove("ZDMAP_QUEUE")
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = eventually(
        "the replayed event fails again",
        Duration::from_secs(30),
        async || {
            let (_, record) = api(&admin, "events/bad-1").await;
            let seen = kinds(&record);
            let replayed = seen.iter().position(|k| k == "replayed");
            let ends = seen.iter().filter(|k| *k == "dead_lettered").count();
            if replayed.is_some() && ends == 2 && record["state"] == "dead_lettered" {
                Ok(record)
            } else {
                Err(record.to_string())
            }
        },
    )
    .await;
    let replay = entries_of(&again, "replayed");
    assert_eq!(
        (replay[0]["by"].clone(), replay[0]["action"].clone()),
        (json!("cli"), json!("upsert_user"))
    );

    server.shutdown().await;
    let log = std::fs::read(data.path().join(zdmap::queue::journal::JOURNAL_FILE))
        .expect("the log is in the data directory");
    assert!(!log.is_empty());
    assert!(
        !log.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
        "the write key is never kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_pages_through_more_events_than_a_page_with_its_cursor() {
    let emu = Emulator::start(Default::default()).await.expect("emulator");
    let data = tempfile::tempdir().expect("tempdir");
    let server = start(&emu, data.path(), setup()).await;
    let admin = server.admin_url().expect("the admin listener runs");
    let events: Vec<Value> = (0..7)
        .map(|i| {
            json!({"type": "track", "messageId": format!("p-{i}"), "userId": "pager",
                   "event": "Page Turned", "properties": {"n": i}})
        })
        .chain([json!({"type": "track", "messageId": "other", "userId": "someone", "event": "Page Turned"})])
        .collect();
    assert_eq!(post_batch(&server.url(), Some(KEY), &events).await, 200);
    eventually(
        "every event is in the log",
        Duration::from_secs(30),
        async || {
            let (_, page) = api(&admin, "events?event=Page%20Turned&limit=100").await;
            page["events"].as_array().is_some_and(|e| e.len() == 8)
        },
    )
    .await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("events?user_id=pager&limit=3&cursor={c}"),
            None => "events?user_id=pager&limit=3".to_owned(),
        };
        let (status, page) = api(&admin, &path).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        let events = page["events"].as_array().expect("events");
        assert!(events.len() <= 3);
        seen.extend(
            events
                .iter()
                .map(|e| e["message_id"].as_str().unwrap_or_default().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..7).rev().map(|i| format!("p-{i}")).collect();
    assert_eq!(seen, expected, "newest first, each once");
    let (status, body) = api(&admin, "events?cursor=abc").await;
    assert_eq!(status, 400, "{body}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zdmap_events_shows_a_record_and_tails_the_log() {
    use std::io::BufRead as _;
    use std::process::{Command, Stdio};
    let emu = Emulator::start(Default::default()).await.expect("emulator");
    let data = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (child, url) = spawn_serve(
        &emu.url(),
        data.path(),
        "mappings".as_ref(),
        &["--admin-listen", &listen, "--no-batch"],
    );
    let _server = Killed(child);
    let admin = format!("http://{listen}");
    let events = [
        json!({"type": "identify", "messageId": "cli-ok", "userId": "c1",
               "traits": {"email": "c1@example.com", "name": "C One"}}),
        json!({"type": "identify", "messageId": "cli-bad", "userId": "c2",
               "traits": {"email": "nope", "name": "C Two"}}),
    ];
    assert_eq!(post_batch(&url, Some(KEY), &events).await, 200);
    let events_cmd = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_zdmap"));
        command
            .arg("events")
            .args(args)
            .args(["--admin-url", &admin, "--data-dir"])
            .arg(data.path())
            .env_remove("ZDMAP_ADMIN_TOKEN")
            .env_remove("ZDMAP_ADMIN_URL")
            .env_remove("ZDMAP_ADMIN_TOKEN_FILE");
        command
    };
    // The token is read from the data directory, where the server kept the one it made.
    let shown = eventually(
        "zdmap events show finds the dead letter",
        Duration::from_secs(30),
        async || {
            let out = events_cmd(&["show", "cli-bad"]).output().expect("runs");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && text.contains("state dead_lettered") {
                Ok(text)
            } else {
                Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
            }
        },
    )
    .await;
    assert!(
        shown.contains("POST /api/v2/users/create_or_update 422 InvalidValue"),
        "{shown}"
    );
    assert!(shown.contains("dead-lettered upsert_user/"), "{shown}");
    assert!(shown.contains("email      nope"), "{shown}");

    let out = events_cmd(&["show", "cli-ok", "--json"])
        .output()
        .expect("runs");
    let record: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(record["message_id"], "cli-ok");

    let out = events_cmd(&["show", "never-sent"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));

    let out = events_cmd(&["show", "cli-ok"])
        .env("ZDMAP_ADMIN_TOKEN", "a-wrong-admin-token-value")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused the token"));

    let out = Command::new(env!("CARGO_BIN_EXE_zdmap"))
        .args([
            "events",
            "show",
            "x",
            "--admin-url",
            &format!("http://127.0.0.1:{}", free_port()),
        ])
        .env("ZDMAP_ADMIN_TOKEN", "some-admin-token-value")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin API"));

    // tail: the last entries of one user, then the new ones as they come.
    let mut tail = events_cmd(&["tail", "--user", "c3", "--poll", "100ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tail starts");
    let stdout = tail.stdout.take().expect("stdout");
    let tail = Killed(tail);
    let lines = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let done = line.contains("delivered");
            seen.push(line);
            if done {
                break;
            }
        }
        seen
    });
    let later = [
        json!({"type": "identify", "messageId": "cli-later", "userId": "c3",
                        "traits": {"email": "c3@example.com", "name": "C Three"}}),
    ];
    assert_eq!(post_batch(&url, Some(KEY), &later).await, 200);
    // A deadline, not a measurement: past it the tail is killed and the test fails.
    let seen = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || lines.join().expect("reads")),
    )
    .await
    .expect("tail prints the new event's entries")
    .expect("joins");
    drop(tail);
    assert!(
        seen.iter().all(|l| l.contains("cli-later")),
        "only c3's entries: {seen:?}"
    );
    assert!(
        seen.iter().any(|l| l.contains("accepted identify")),
        "{seen:?}"
    );
    assert!(
        seen.last().is_some_and(|l| l.ends_with("delivered")),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_names_the_bulk_request_and_job_an_event_joined_and_its_wait_for_a_record() {
    let emu = Emulator::start(zdmap::emulator::EmulatorOptions {
        bulk_import: true,
        ..Default::default()
    })
    .await
    .expect("emulator");
    let data = tempfile::tempdir().expect("tempdir");
    let server = start(
        &emu,
        data.path(),
        Setup {
            workers: WorkerOptions {
                batch_window: Some(Duration::from_millis(300)),
                ..Setup::default().workers
            },
            ..setup()
        },
    )
    .await;
    let admin = server.admin_url().expect("the admin listener runs");
    // Three users in one window: one bulk request, a job. And a track of a user that never
    // comes: it waits for the record, then is dead-lettered.
    let mut events: Vec<Value> = (0..3)
        .map(|i| {
            json!({"type": "identify", "messageId": format!("bulk-{i}"), "userId": format!("b{i}"),
                   "traits": {"email": format!("b{i}@example.com"), "name": format!("B {i}")}})
        })
        .collect();
    events.push(
        json!({"type": "track", "messageId": "orphan", "event": "Clicked",
                       "properties": {"email": "nobody@example.com"}, "userId": "nobody"}),
    );
    assert_eq!(post_batch(&server.url(), Some(KEY), &events).await, 200);

    let joined = record_in(&admin, "bulk-1", "delivered").await;
    let item = entries_of(&joined, "request")
        .into_iter()
        .find(|r| !r["bulk"].is_null())
        .unwrap_or_else(|| panic!("the request went in a bulk request: {joined}"));
    assert_eq!(
        item["bulk"], "/api/v2/users/create_or_update_many",
        "{item}"
    );
    assert!(
        item["job"].as_str().is_some_and(|j| !j.is_empty()),
        "the job it joined: {item}"
    );

    let orphan = record_in(&admin, "orphan", "dead_lettered").await;
    let waits = entries_of(&orphan, "waiting");
    assert!(
        waits.iter().any(|w| w["reason"] == "record"),
        "it waited for its record: {orphan}"
    );
    server.shutdown().await;
}
