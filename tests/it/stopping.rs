//! `zdmap send` stopped by a signal: it takes no more events, lets the requests under way end,
//! prints its summary, and writes what is left to the dead-letter file as not attempted; the
//! dead-letter file sent again finishes the work, each event applied once.

use crate::support::command::signal;
use crate::support::state::count;
use crate::support::wait::eventually;

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;
use zdmap::emulator::{Emulator, EmulatorOptions};

/// Users in the input: each has an identify, then a track.
const USERS: usize = 60;

/// The input: per user, an identify (an upsert) and a track (a user event, which is not
/// idempotent: sent twice, it is there twice).
fn input() -> String {
    (0..USERS)
        .flat_map(|i| {
            [
                json!({"type": "identify", "userId": format!("u{i}"), "messageId": format!("id-{i}"),
                       "traits": {"email": format!("u{i}@example.com"), "name": format!("U {i}")}}),
                json!({"type": "track", "userId": format!("u{i}"), "messageId": format!("tr-{i}"),
                       "event": "Viewed", "properties": {"n": i}}),
            ]
        })
        .map(|e| format!("{e}\n"))
        .collect()
}

/// `zdmap send FILE` to `emu`, its dead letters to `dead`, standard output and error piped.
fn send(emu: &Emulator, file: &Path, dead: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_zdmap"))
        .arg("send")
        .arg(file)
        .args(["--no-progress", "--json", "--mappings", "mappings"])
        .args([
            "--set",
            "requests_per_minute=0",
            "--zendesk-url",
            &emu.url(),
        ])
        .arg("--dead-letter")
        .arg(dead)
        .args(extra)
        .env_remove("ZENDESK_OAUTH_TOKEN")
        .env_remove("ZENDESK_OAUTH_CLIENT_ID")
        .env_remove("ZENDESK_OAUTH_CLIENT_SECRET")
        .env_remove("ZDMAP_TOKEN_STORE")
        .env("ZENDESK_EMAIL", "agent@example.com")
        .env("ZENDESK_API_TOKEN", "send-test-token-secret")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn zdmap send")
}

/// The dead letters of `path`.
fn letters(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Each user once, each user event once: nothing duplicated, nothing lost.
fn each_event_once(state: &Value) {
    let mut users: BTreeMap<String, usize> = BTreeMap::new();
    for u in state["users"].as_array().expect("users") {
        *users
            .entry(u["external_id"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    assert_eq!(users.len(), USERS, "every user: {users:?}");
    assert!(users.values().all(|n| *n == 1), "a user twice: {users:?}");
    let mut events: BTreeMap<u64, usize> = BTreeMap::new();
    for e in state["events"].as_array().expect("events") {
        *events
            .entry(e["properties"]["n"].as_u64().expect("n"))
            .or_default() += 1;
    }
    assert_eq!(events.len(), USERS, "every user event: {events:?}");
    assert!(
        events.values().all(|n| *n == 1),
        "a user event twice: {events:?}"
    );
}

/// Sends the input, stops the run with `name` once some of it is delivered, and sends the
/// dead-letter file again; `extra` are more arguments of the first run.
async fn stopped_by(name: &str, code: i32, extra: &[&str]) {
    let emu = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator");
    // Slow answers: the run is well under way, far from its end, when the signal comes.
    emu.configure(|k| k.latency_ms = 250);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("events.ndjson");
    std::fs::write(&file, input()).expect("input");
    let dead = dir.path().join("dead.ndjson");
    let child = send(&emu, &file, &dead, extra);
    eventually(
        "a few user events delivered",
        Duration::from_secs(30),
        async || count(&emu.state(), "events") >= 4,
    )
    .await;
    signal(&child, name);
    let out: Output = child.wait_with_output().expect("send ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    assert!(
        stderr.contains(&format!("SIG{name}: no more events")),
        "{stderr}"
    );
    assert!(stderr.contains("events: "), "the summary: {stderr}");
    assert!(stderr.contains("not attempted"), "{stderr}");
    let summary: Value = serde_json::from_str(stdout.trim()).expect("the --json summary");
    let left = summary["not_attempted"].as_u64().expect("not_attempted");
    assert!(left > 0, "{summary}");
    assert_eq!(
        summary["events_read"].as_u64(),
        Some(2 * USERS as u64),
        "the rest of the input is read into the dead letters: {summary}"
    );
    let state = emu.state();
    assert!(count(&state, "events") < USERS, "stopped before the end");
    let written = letters(&dead);
    assert!(!written.is_empty());
    for l in &written {
        assert_eq!(l["dead_letter"]["step"], "not_attempted", "{l}");
        assert!(
            l["dead_letter"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(&format!("SIG{name}"))),
            "{l}"
        );
        assert!(l["event"]["messageId"].is_string(), "{l}");
    }

    // The dead-letter file, sent again, delivers the rest.
    let again = dir.path().join("dead-again.ndjson");
    let out = send(&emu, &dead, &again, &[])
        .wait_with_output()
        .expect("replay ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(letters(&again).is_empty());
    each_event_once(&emu.state());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_send_with_a_summary_and_the_rest_as_dead_letters_that_finish_it() {
    stopped_by("INT", 130, &["--no-batch"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_send_the_same_way_with_bulk_requests_on() {
    stopped_by("TERM", 143, &[]).await;
}
