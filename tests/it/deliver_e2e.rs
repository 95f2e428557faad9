//! End-to-end delivery against the built-in emulator: every default action lands in its state,
//! and delivery holds up under 429 storms, 500s, a slow Zendesk, bad credentials, unknown users
//! and a dead-letter replay, with nothing lost and nothing duplicated.

use crate::support::oas;

use serde_json::{Value, json};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use zdmap::deliver::dispatch::{DispatchOptions, RecordWait};
use zdmap::deliver::run::{RunReport, run};
use zdmap::deliver::setup::{ConnectOptions, Destination, connect};
use zdmap::deliver::{ClientOptions, DeadLetter, DeadLetterWriter, RetryPolicy, TargetOverride};
use zdmap::emulator::{Emulator, EmulatorOptions, ForcedFault};
use zdmap::mapping::config::Config;

struct Harness {
    emu: Emulator,
    dest: Destination,
    dir: tempfile::TempDir,
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(100),
        ..RetryPolicy::default()
    }
}

/// Four at once, quick retries, and a short wait for missing records after the input.
fn dispatch_options() -> DispatchOptions {
    DispatchOptions {
        concurrency: 4,
        wait_for_records: RecordWait::AfterInput(Duration::from_millis(300)),
        ..DispatchOptions::default()
    }
}

async fn harness(opts: EmulatorOptions, connect_opts: ConnectOptions) -> Harness {
    let emu = Emulator::start(opts).await.expect("emulator starts");
    let config = Config::load(Path::new("mappings"), &["requests_per_minute=0".to_owned()])
        .expect("mappings load");
    let target = TargetOverride {
        zendesk_url: Some(emu.url()),
        emulator: false,
    };
    let dest = connect(Arc::new(config), &target, connect_opts)
        .await
        .expect("connect");
    Harness {
        emu,
        dest,
        dir: tempfile::tempdir().expect("temp dir"),
    }
}

async fn start() -> Harness {
    harness(
        EmulatorOptions::default(),
        ConnectOptions {
            retry: fast_retries(),
            ..ConnectOptions::default()
        },
    )
    .await
}

impl Harness {
    fn dead_letter_path(&self) -> PathBuf {
        self.dir.path().join("dead.ndjson")
    }

    async fn send(&self, input: &str) -> RunReport {
        self.send_with(input, dispatch_options()).await
    }

    async fn send_with(&self, input: &str, options: DispatchOptions) -> RunReport {
        let writer =
            Arc::new(DeadLetterWriter::open(self.dead_letter_path()).expect("dead letter file"));
        run(
            self.dest.executor.clone(),
            Cursor::new(input.as_bytes().to_vec()),
            writer,
            self.dest.stats.clone(),
            options,
        )
        .await
        .expect("run")
    }

    fn dead_letters(&self) -> Vec<DeadLetter> {
        std::fs::read_to_string(self.dead_letter_path())
            .unwrap_or_default()
            .lines()
            .map(|l| {
                DeadLetter::parse(&serde_json::from_str(l).expect("json")).expect("a dead letter")
            })
            .collect()
    }

    fn state(&self) -> Value {
        self.emu.state()
    }

    fn requests_to(&self, method: &str, path_prefix: &str) -> Vec<Value> {
        self.emu
            .requests()
            .into_iter()
            .filter(|r| {
                r["method"] == method
                    && r["path"]
                        .as_str()
                        .is_some_and(|p| p.starts_with(path_prefix))
            })
            .collect()
    }
}

fn find<'a>(list: &'a Value, key: &str, value: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|x| x[key] == value)
}

#[tokio::test]
async fn every_default_action_lands_in_the_emulator_state() {
    let h = start().await;
    let events = std::fs::read_to_string("examples/events.ndjson").expect("examples");
    let report = h.send(&events).await;
    assert_eq!(report.dead_letters, 0, "{:#?}", h.dead_letters());
    assert!(report.fatal.is_none());
    let s = h.state();

    // Upsert User: name, or first + last name; custom traits only where a field exists.
    let ada = find(&s["users"], "external_id", "u-1001").expect("ada");
    assert_eq!(ada["email"], "ada@example.com");
    assert_eq!(ada["name"], "Ada Lovelace");
    let grace = find(&s["users"], "external_id", "u-1002").expect("grace");
    assert_eq!(grace["name"], "Grace Hopper");
    let alan = find(&s["users"], "external_id", "u-1003").expect("alan (traits in context.traits)");
    assert_eq!(alan["email"], "alan@example.com");

    // Upsert Organization: fields created first, values kept; the group's user joined it.
    let org = find(&s["organizations"], "external_id", "org-42").expect("org");
    assert_eq!(org["name"], "Analytical Engines Ltd");
    assert_eq!(org["domain_names"], json!(["engines.example"]));
    assert_eq!(org["organization_fields"]["industry"], "Computing");
    let keys: Vec<&str> = s["organization_fields"]
        .as_array()
        .expect("fields")
        .iter()
        .filter_map(|f| f["key"].as_str())
        .collect();
    assert!(
        keys.contains(&"industry") && keys.contains(&"employees"),
        "{keys:?}"
    );
    let members: Vec<&Value> = s["memberships"]
        .as_array()
        .expect("memberships")
        .iter()
        .collect();
    assert!(
        members
            .iter()
            .any(|m| m["user_id"] == ada["id"] && m["organization_id"] == org["id"])
    );

    // Update Organization Membership: grace was added, then removed.
    assert!(
        !members.iter().any(|m| m["user_id"] == grace["id"]),
        "grace removed: {members:?}"
    );
    assert_eq!(
        h.requests_to("POST", "/api/v2/organization_memberships")
            .len(),
        2
    );
    assert_eq!(h.requests_to("DELETE", "/api/v2/users/").len(), 1);

    // Create Ticket, then Update Ticket found by its external id.
    let tickets = s["tickets"].as_array().expect("tickets");
    assert_eq!(tickets.len(), 1);
    assert_eq!(tickets[0]["external_id"], "T-1");
    assert_eq!(tickets[0]["subject"], "Cannot log in");
    assert_eq!(tickets[0]["status"], "pending");
    assert_eq!(tickets[0]["priority"], "high");
    assert_eq!(tickets[0]["requester_id"], alan["id"]);

    // Track Event: recorded for the users found by userId.
    let events = s["events"].as_array().expect("events");
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(
        types.contains(&"Order Completed") && types.contains(&"Signed In"),
        "{events:?}"
    );
    assert_eq!(
        events.len(),
        2,
        "ticket events are not user events: {types:?}"
    );

    let snap = h.dest.stats.snapshot();
    assert_eq!(snap.events_read, 11);
    assert_eq!(snap.skipped, 1, "the page call matches nothing");
}

#[tokio::test]
async fn repeated_events_for_one_user_do_not_repeat_lookups() {
    let h = start().await;
    let mut input = String::from(
        r#"{"type":"identify","userId":"u-7","traits":{"email":"seven@example.com","name":"Seven"}}"#,
    );
    input.push('\n');
    for i in 0..5 {
        input.push_str(&format!(
            r#"{{"type":"track","event":"Viewed","userId":"u-7","properties":{{"n":{i}}}}}"#
        ));
        input.push('\n');
    }
    let report = h.send(&input).await;
    assert_eq!(report.dead_letters, 0, "{:#?}", h.dead_letters());
    assert_eq!(
        h.requests_to("GET", "/api/v2/users/search").len(),
        0,
        "the upsert taught the user id"
    );
    assert_eq!(h.requests_to("POST", "/api/v2/users/").len(), 6);
    let events = h.state()["events"].as_array().expect("events").len();
    assert_eq!(events, 5);
}

#[tokio::test]
async fn a_ticket_is_created_once_even_when_the_event_comes_twice() {
    let h = start().await;
    let ev = r#"{"type":"track","event":"Ticket Created","messageId":"msg-1","userId":"u-1","context":{"traits":{"email":"t@example.com","name":"T"}},"properties":{"subject":"S","comment":"C"}}"#;
    let report = h.send(&format!("{ev}\n{ev}\n")).await;
    assert_eq!(report.dead_letters, 0, "{:#?}", h.dead_letters());
    assert_eq!(h.state()["tickets"].as_array().expect("tickets").len(), 1);
    let posts = h.requests_to("POST", "/api/v2/tickets");
    assert_eq!(posts.len(), 2);
    assert!(
        posts
            .iter()
            .all(|r| r["headers"]["idempotency-key"] == "msg-1"
                || r["headers"]["Idempotency-Key"] == "msg-1"),
        "{posts:?}"
    );
}

#[tokio::test]
async fn a_track_call_for_an_unknown_user_is_a_clear_dead_letter() {
    let h = start().await;
    let report = h
        .send(r#"{"type":"track","event":"Viewed","userId":"ghost","properties":{}}"#)
        .await;
    assert_eq!(report.dead_letters, 1);
    let letters = h.dead_letters();
    assert_eq!(letters[0].action.as_deref(), Some("track_event"));
    assert!(
        letters[0].message.contains("lookup found nothing") && letters[0].message.contains("ghost"),
        "{}",
        letters[0].message
    );
    assert_eq!(letters[0].event["userId"], "ghost");
    assert!(
        h.state()["users"].as_array().expect("users").is_empty(),
        "no user is created from a track call"
    );
}

#[tokio::test]
async fn a_429_storm_is_waited_out() {
    let h = start().await;
    h.emu.configure(|k| {
        k.forced_faults
            .push(ForcedFault::new(429).times(3).retry_after(1))
    });
    let report = h
        .send(r#"{"type":"identify","userId":"u-1","traits":{"email":"a@example.com","name":"A"}}"#)
        .await;
    assert_eq!(report.dead_letters, 0, "{:#?}", h.dead_letters());
    let snap = h.dest.stats.snapshot();
    assert!(snap.rate_limited >= 3, "{snap:?}");
    assert_eq!(h.state()["users"].as_array().expect("users").len(), 1);
}

#[tokio::test]
async fn injected_500s_are_retried() {
    let h = start().await;
    h.emu
        .configure(|k| k.forced_faults.push(ForcedFault::new(500).times(2)));
    let report = h
        .send(r#"{"type":"group","groupId":"g-1","traits":{"name":"G"}}"#)
        .await;
    assert_eq!(report.dead_letters, 0, "{:#?}", h.dead_letters());
    assert!(h.dest.stats.snapshot().retries >= 2);
    assert_eq!(
        h.state()["organizations"].as_array().expect("orgs").len(),
        1
    );
}

#[tokio::test]
async fn bad_credentials_stop_the_run_instead_of_failing_every_event() {
    let opts = EmulatorOptions {
        api_token: Some("the-right-token".parse().expect("secret")),
        ..EmulatorOptions::default()
    };
    let h = harness(
        opts,
        ConnectOptions {
            retry: fast_retries(),
            ..ConnectOptions::default()
        },
    )
    .await;
    let mut input = String::new();
    for i in 0..20 {
        input.push_str(&format!(r#"{{"type":"identify","userId":"u-{i}","traits":{{"email":"u{i}@example.com","name":"U"}}}}"#));
        input.push('\n');
    }
    let report = h.send(&input).await;
    let fatal = report.fatal.expect("a fatal error");
    assert!(
        fatal.contains("401") && fatal.contains("ZENDESK_API_TOKEN"),
        "{fatal}"
    );
    assert_eq!(
        report.dead_letters, 0,
        "events are kept out of the dead letters"
    );
    assert!(h.emu.requests().len() < 20, "the run stopped early");
}

#[tokio::test]
async fn a_slow_zendesk_times_out_then_the_dead_letters_replay_without_duplicates() {
    let opts = EmulatorOptions::default();
    let connect_opts = ConnectOptions {
        retry: fast_retries(),
        client: ClientOptions {
            timeout: Duration::from_millis(150),
            ..ClientOptions::default()
        },
        ..ConnectOptions::default()
    };
    let h = harness(opts, connect_opts).await;
    let input = concat!(
        r#"{"type":"identify","userId":"u-1","traits":{"email":"one@example.com","name":"One"}}"#,
        "\n",
        r#"{"type":"track","event":"Ticket Created","messageId":"m-t1","userId":"u-1","context":{"traits":{"email":"one@example.com","name":"One"}},"properties":{"subject":"S","comment":"C"}}"#,
        "\n",
        r#"{"type":"track","event":"Paid","userId":"u-1","properties":{"amount":3}}"#,
        "\n",
    );
    // First pass: Zendesk is too slow for every request, for longer than `retry_for`. (The
    // emulator applies what times out: a short `retry_for` keeps the user's upserts under its
    // limit of 5 a minute, so the replay is not held up by it.)
    h.emu.configure(|k| k.latency_ms = 400);
    let first = h
        .send_with(
            input,
            DispatchOptions {
                retry_for: Duration::from_millis(300),
                ..dispatch_options()
            },
        )
        .await;
    assert_eq!(first.dead_letters, 3, "{:#?}", h.dead_letters());
    assert!(
        h.dead_letters()
            .iter()
            .all(|d| d.code.as_deref() == Some("timeout")),
        "{:#?}",
        h.dead_letters()
    );

    // The fault goes away; replay the dead letters into a new file.
    h.emu.configure(|k| k.latency_ms = 0);
    let replay_input = std::fs::read_to_string(h.dead_letter_path()).expect("dead letters");
    std::fs::remove_file(h.dead_letter_path()).expect("rm");
    let second = h.send(&replay_input).await;
    assert_eq!(second.dead_letters, 0, "{:#?}", h.dead_letters());

    // Replay once more: nothing is duplicated (upsert, idempotent ticket).
    let s = h.state();
    assert_eq!(s["users"].as_array().expect("users").len(), 1);
    assert_eq!(s["tickets"].as_array().expect("tickets").len(), 1);
    assert_eq!(s["events"].as_array().expect("events").len(), 1);
}

#[tokio::test]
async fn a_replay_runs_only_the_action_that_failed() {
    let h = start().await;
    // The organization does not exist yet: the membership fails, the user upsert succeeds.
    let ev = r#"{"type":"identify","userId":"u-1","traits":{"email":"one@example.com","name":"One","company":{"id":"org-9"}}}"#;
    let first = h.send(ev).await;
    assert_eq!(first.dead_letters, 1);
    let letters = h.dead_letters();
    assert_eq!(
        letters[0].action.as_deref(),
        Some("update_organization_membership")
    );
    assert!(
        letters[0].message.contains("org-9"),
        "{}",
        letters[0].message
    );
    h.send(r#"{"type":"group","groupId":"org-9","traits":{"name":"Nine"}}"#)
        .await;
    let upserts_before = h
        .requests_to("POST", "/api/v2/users/create_or_update")
        .len();
    let replay = std::fs::read_to_string(h.dead_letter_path()).expect("dead letters");
    std::fs::remove_file(h.dead_letter_path()).expect("rm");
    let second = h.send(&replay).await;
    assert_eq!(second.dead_letters, 0, "{:#?}", h.dead_letters());
    assert_eq!(
        h.requests_to("POST", "/api/v2/users/create_or_update")
            .len(),
        upserts_before,
        "the user upsert is not replayed"
    );
    assert_eq!(
        h.state()["memberships"]
            .as_array()
            .expect("memberships")
            .len(),
        1
    );
}

#[tokio::test]
async fn every_request_sent_validates_against_the_zendesk_spec() {
    let h = start().await;
    let events = std::fs::read_to_string("examples/events.ndjson").expect("examples");
    h.send(&events).await;
    let oracle = oas::Oas::load();
    let mut problems = Vec::new();
    let mut validated = 0;
    for r in h.emu.requests() {
        let method = r["method"].as_str().unwrap_or_default();
        let path = r["path"].as_str().unwrap_or_default();
        let body = r.get("body").cloned().unwrap_or(Value::Null);
        match oracle.validate_request(method, path, &body) {
            Ok(oas::Validated::Valid) => validated += 1,
            Ok(oas::Validated::NoSchema) => {}
            Err(errs) => problems.push(format!("{method} {path}: {errs:?}")),
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(
        validated >= 5,
        "requests with a body schema were checked: {validated}"
    );
}
