//! Batching against the emulator: steps with a bulk form (`batch:` in the mappings) send their
//! requests as items of bulk requests and read each item's result from the job. The same events
//! delivered batched and unbatched end in the same state; an item that fails fails only its
//! event; failed jobs, a 429 on job creation and the job limit are waited out; with bulk user
//! imports off, users go one by one; a lone item goes as its single request; a `zdmap serve`
//! killed during a job delivers again; an event that ran behind a bulk request answered during
//! its turn holds nobody up. Ticket updates (a comment is not idempotent) go in bulk too: after
//! a lost bulk answer or a kill, the pending jobs are waited out before the markers are read
//! back, so no comment lands twice.

use crate::support::http::post_batch;
use crate::support::oas;
use crate::support::serving;
use crate::support::state::count;
use crate::support::wait::eventually;

use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use zdmap::deliver::DeadLetterWriter;
use zdmap::deliver::dispatch::{DispatchOptions, RecordWait};
use zdmap::deliver::run::{RunReport, run};
use zdmap::emulator::{Emulator, EmulatorOptions};

/// Users, organizations, memberships, tickets and user events of a small realistic mix: each
/// user's session is identifies (one with a company), tracks, a group call, a ticket created
/// then updated twice (two comments); the organizations are created first.
fn mix(users: usize, sessions: usize) -> String {
    let mut events = Vec::new();
    for o in 0..4 {
        events.push(
            json!({"type": "group", "groupId": format!("org-{o}"), "messageId": format!("g-{o}"),
                           "traits": {"name": format!("Org {o}"), "industry": "Computing"}}),
        );
    }
    for s in 0..sessions {
        let p = s % users;
        let user = format!("u-{p}");
        let email = format!("user{p}@example.com");
        let context = json!({"traits": {"email": email, "name": format!("User {p}")}});
        for k in 0..3 {
            let mut traits = json!({"email": email, "first_name": "Ada", "last_name": format!("L{p}"),
                                    "plan": format!("plan-{s}-{k}"), "phone": format!("+44 20 7946 {p:04}")});
            if k == 0 {
                traits["company"] = json!({"id": format!("org-{}", s % 4)});
            }
            events.push(
                json!({"type": "identify", "userId": user, "messageId": format!("i-{s}-{k}"),
                               "traits": traits, "context": context}),
            );
        }
        events.push(
            json!({"type": "track", "event": "Order Completed", "userId": user,
                           "messageId": format!("t-{s}"), "context": context,
                           "properties": {"order_id": format!("o-{s}")}}),
        );
        events.push(
            json!({"type": "group", "groupId": format!("org-{}", (s + 1) % 4), "userId": user,
                           "messageId": format!("gu-{s}"), "context": context,
                           "traits": {"name": format!("Org {}", (s + 1) % 4), "tags": ["vip"]}}),
        );
        events.push(json!({"type": "track", "event": "Ticket Created", "userId": user,
                           "messageId": format!("tc-{s}"), "context": context,
                           "properties": {"subject": "Cannot log in", "comment": format!("Help {s}"), "external_id": format!("T-{s}")}}));
        events.push(json!({"type": "track", "event": "Ticket Updated", "userId": user,
                           "messageId": format!("tu-{s}"), "context": context,
                           "properties": {"external_id": format!("T-{s}"), "status": "pending", "comment": format!("Reset {s}")}}));
        events.push(json!({"type": "track", "event": "Ticket Updated", "userId": user,
                           "messageId": format!("tu2-{s}"), "context": context,
                           "properties": {"external_id": format!("T-{s}"), "status": "open", "comment": format!("Still locked {s}")}}));
        events.push(
            json!({"type": "track", "event": "Order Shipped", "userId": user,
                           "messageId": format!("ts-{s}"), "context": context,
                           "properties": {"order_id": format!("o-{s}")}}),
        );
    }
    events
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// An emulator; its limit of 5 upserts per user a minute is lifted, so that the unbatched
/// runs compared with the batched ones are not slowed by a minute's wait.
async fn emulator(bulk_import: bool) -> Emulator {
    let emu = Emulator::start(EmulatorOptions {
        bulk_import,
        ..EmulatorOptions::default()
    })
    .await
    .expect("emulator starts");
    emu.configure(|k| k.upsert_user_per_window = 1000);
    emu
}

fn options(batch: Option<Duration>) -> DispatchOptions {
    DispatchOptions {
        concurrency: 4,
        wait_for_records: RecordWait::AfterInput(Duration::from_millis(500)),
        batch_window: batch,
        ..DispatchOptions::default()
    }
}

/// Delivers `input` to `emu` with the mappings of `mappings`; the report and the dead letters.
async fn send(
    emu: &Emulator,
    mappings: &Path,
    input: &str,
    options: DispatchOptions,
) -> (RunReport, Vec<Value>) {
    let dest = serving::destination(emu, mappings).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("dead.ndjson");
    let writer = Arc::new(DeadLetterWriter::open(&path).expect("dead letters"));
    let report = run(
        dest.executor.clone(),
        Cursor::new(input.as_bytes().to_vec()),
        writer,
        dest.stats.clone(),
        options,
    )
    .await
    .expect("run");
    let letters = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    (report, letters)
}

/// The requests the emulator logged to `method path` (the path without its query).
fn requests(emu: &Emulator, method: &str, path: &str) -> Vec<Value> {
    emu.requests()
        .into_iter()
        .filter(|r| {
            r["method"] == method
                && r["path"]
                    .as_str()
                    .is_some_and(|p| p.split('?').next() == Some(path))
        })
        .collect()
}

fn statuses(requests: &[Value]) -> Vec<u64> {
    requests
        .iter()
        .filter_map(|r| r["status"].as_u64())
        .collect()
}

/// The emulator's state with ids replaced by external ids, so two runs compare: users and their
/// fields, organizations, memberships, tickets (with their comments, by external id: a list,
/// so a ticket made twice shows), and each user's events in order.
fn comparable(state: &Value) -> Value {
    let list = |k: &str| state[k].as_array().cloned().unwrap_or_default();
    let user_ext: BTreeMap<String, Value> = list("users")
        .iter()
        .map(|u| (u["id"].to_string(), u["external_id"].clone()))
        .collect();
    let org_ext: BTreeMap<String, Value> = list("organizations")
        .iter()
        .map(|o| (o["id"].to_string(), o["external_id"].clone()))
        .collect();
    let ext = |map: &BTreeMap<String, Value>, id: &Value| {
        let key = match id {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        map.get(&key).cloned().unwrap_or(Value::Null)
    };
    let users: BTreeMap<String, Value> = list("users")
        .iter()
        .map(|u| {
            let identities: BTreeSet<String> = u["identities"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| format!("{}:{}:{}", i["type"], i["value"], i["primary"]))
                .collect();
            (
                u["external_id"].to_string(),
                json!({"name": u["name"], "email": u["email"], "phone": u["phone"],
                       "user_fields": u["user_fields"], "identities": identities,
                       "organization": ext(&org_ext, &u["organization_id"])}),
            )
        })
        .collect();
    let organizations: BTreeMap<String, Value> = list("organizations")
        .iter()
        .map(|o| {
            (
                o["external_id"].to_string(),
                json!({"name": o["name"], "tags": o["tags"], "domain_names": o["domain_names"],
                       "organization_fields": o["organization_fields"]}),
            )
        })
        .collect();
    let memberships: BTreeSet<String> = list("memberships")
        .iter()
        .map(|m| {
            format!(
                "{} in {} default {}",
                ext(&user_ext, &m["user_id"]),
                ext(&org_ext, &m["organization_id"]),
                m["default"]
            )
        })
        .collect();
    let mut tickets: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for t in list("tickets") {
        let comments: Vec<Value> = t["comments"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["body"].clone())
            .collect();
        tickets
            .entry(t["external_id"].to_string())
            .or_default()
            .push(json!({
            "subject": t["subject"], "status": t["status"], "tags": t["tags"],
            "requester": ext(&user_ext, &t["requester_id"]), "comments": comments}));
    }
    let mut events: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in list("events") {
        events
            .entry(ext(&user_ext, &e["user_id"]).to_string())
            .or_default()
            .push(json!([e["type"], e["properties"]]));
    }
    json!({"users": users, "organizations": organizations, "memberships": memberships,
           "tickets": tickets, "events": events})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_and_unbatched_end_in_the_same_state() {
    let input = mix(12, 36);
    let mappings = Path::new("mappings");

    let single = emulator(true).await;
    let (report, letters) = send(&single, mappings, &input, options(None)).await;
    assert!(letters.is_empty(), "{letters:?}");
    assert_eq!(report.dead_letters, 0);
    assert!(requests(&single, "POST", "/api/v2/users/create_or_update_many").is_empty());

    let batched = emulator(true).await;
    let (report, letters) = send(
        &batched,
        mappings,
        &input,
        options(Some(Duration::from_millis(200))),
    )
    .await;
    assert!(letters.is_empty(), "{letters:?}");
    assert_eq!(report.dead_letters, 0);

    let (a, b) = (comparable(&single.state()), comparable(&batched.state()));
    assert_eq!(a["users"].as_object().map(|u| u.len()), Some(12));
    assert_eq!(a["tickets"].as_object().map(|t| t.len()), Some(36));
    assert!(
        a["tickets"]
            .as_object()
            .is_some_and(|t| t.values().all(|v| v.as_array().map(Vec::len) == Some(1))),
        "one ticket per Ticket Created"
    );
    assert!(
        a["tickets"].as_object().is_some_and(|t| t
            .values()
            .all(|v| v[0]["comments"].as_array().map(Vec::len) == Some(3))),
        "each ticket has its first comment and both updates' comments"
    );
    assert_eq!(a, b);

    // The batched run used the bulk endpoints and sent fewer requests.
    let bulk_users = requests(&batched, "POST", "/api/v2/users/create_or_update_many");
    let bulk_members = requests(
        &batched,
        "POST",
        "/api/v2/organization_memberships/create_many",
    );
    assert!(!bulk_users.is_empty() && statuses(&bulk_users).iter().all(|s| *s == 200));
    assert!(!bulk_members.is_empty());
    assert!(
        requests(&batched, "POST", "/api/v2/users/create_or_update").len()
            < requests(&single, "POST", "/api/v2/users/create_or_update").len() / 2
    );
    assert!(
        !requests(&batched, "GET", "/api/v2/job_statuses").is_empty() || {
            batched.requests().iter().any(|r| {
                r["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/api/v2/job_statuses/"))
            })
        }
    );
    assert!(batched.requests().len() < single.requests().len());
    // Organizations and tickets are updated in bulk too (each ticket update its own item,
    // with its marker: two comments stay two, in order).
    assert!(!requests(&batched, "PUT", "/api/v2/organizations/update_many").is_empty());
    let ticket_updates = requests(&batched, "PUT", "/api/v2/tickets/update_many");
    assert!(!ticket_updates.is_empty());
    assert!(
        ticket_updates
            .iter()
            .flat_map(|r| r["body"]["tickets"].as_array().cloned().unwrap_or_default())
            .all(|t| t["id"].is_u64() && t["metadata"]["zdmap_marker"].is_string())
    );
    assert!(
        ticket_updates.len() < 72,
        "fewer bulk requests than ticket updates"
    );

    // Every bulk request is what Zendesk's spec says it takes.
    let oracle = oas::Oas::load();
    let mut validated = 0;
    for r in batched.requests() {
        let (method, path) = (
            r["method"].as_str().unwrap_or_default(),
            r["path"].as_str().unwrap_or_default(),
        );
        if !path.contains("_many") {
            continue;
        }
        let body = r.get("body").cloned().unwrap_or(Value::Null);
        match oracle.validate_request(method, path, &body) {
            Ok(oas::Validated::Valid) => validated += 1,
            Ok(oas::Validated::NoSchema) => {}
            Err(errs) => panic!("{method} {path}: {errs:?}"),
        }
    }
    assert!(
        validated > 0,
        "bulk requests with a body schema were checked"
    );
}

/// A copy of the shipped mappings with `edit` applied to the text of each file.
fn mappings_with(edit: impl Fn(&str, String) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir("mappings").expect("mappings") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            let text = std::fs::read_to_string(&path).expect("read");
            std::fs::write(dir.path().join(&name), edit(&name, text)).expect("write");
        }
    }
    dir
}

fn identify(user: &str, email: &str, plan: &str) -> Value {
    json!({"type": "identify", "userId": user, "messageId": format!("m-{user}-{plan}"),
           "traits": {"email": email, "name": format!("User {user}"), "plan": plan}})
}

fn lines(events: &[Value]) -> String {
    events
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn with_bulk_user_imports_off_users_go_one_by_one_after_one_refusal() {
    let emu = emulator(false).await;
    let input = mix(6, 12);
    let (report, letters) = send(
        &emu,
        Path::new("mappings"),
        &input,
        options(Some(Duration::from_millis(100))),
    )
    .await;
    assert!(letters.is_empty(), "{letters:?}");
    assert_eq!(report.dead_letters, 0);
    let bulk = requests(&emu, "POST", "/api/v2/users/create_or_update_many");
    assert_eq!(
        statuses(&bulk),
        vec![403],
        "refused once, then never asked again"
    );
    assert!(!requests(&emu, "POST", "/api/v2/users/create_or_update").is_empty());
    // Memberships still go in bulk.
    assert!(!requests(&emu, "POST", "/api/v2/organization_memberships/create_many").is_empty());
    let single = emulator(true).await;
    send(&single, Path::new("mappings"), &input, options(None)).await;
    assert_eq!(comparable(&emu.state()), comparable(&single.state()));
}

#[tokio::test]
async fn a_bulk_endpoint_that_is_not_there_turns_its_items_to_single_requests() {
    for status in [404u16, 405, 501] {
        let emu = emulator(true).await;
        // A proxy or gateway without the bulk endpoints.
        emu.configure(|k| {
            k.forced_faults = [
                "/api/v2/users/create_or_update_many",
                "/api/v2/organization_memberships/create_many",
            ]
            .into_iter()
            .map(|path| zdmap::emulator::ForcedFault {
                path: Some(path.into()),
                ..zdmap::emulator::ForcedFault::new(status).times(100)
            })
            .collect();
        });
        let input = mix(6, 12);
        let (report, letters) = send(
            &emu,
            Path::new("mappings"),
            &input,
            options(Some(Duration::from_millis(100))),
        )
        .await;
        assert!(letters.is_empty(), "{status}: {letters:?}");
        assert_eq!(report.dead_letters, 0);
        // Refused once per bulk form, then never asked again: one form sends users, and the
        // two membership actions have one each.
        for (path, forms) in [
            ("/api/v2/users/create_or_update_many", 1),
            ("/api/v2/organization_memberships/create_many", 2),
        ] {
            let seen = statuses(&requests(&emu, "POST", path));
            let refused_only = seen.iter().all(|s| *s == u64::from(status));
            assert!(
                !seen.is_empty() && seen.len() <= forms && refused_only,
                "{path}: {seen:?}"
            );
        }
        let single = emulator(true).await;
        send(&single, Path::new("mappings"), &input, options(None)).await;
        assert_eq!(
            comparable(&emu.state()),
            comparable(&single.state()),
            "{status}"
        );
    }
}

#[tokio::test]
async fn an_item_that_fails_fails_only_its_own_event_with_zendesks_error() {
    // Without `item_errors`, a failed item is the event's answer (no single request).
    let mappings = mappings_with(|name, text| {
        if name == "upsert_user.yaml" {
            text.replace("item_errors: [RecordInvalid]", "item_errors: []")
        } else {
            text
        }
    });
    let emu = emulator(true).await;
    let input = lines(&[
        identify("a", "a@example.com", "pro"),
        identify("b", "not-an-email", "pro"),
        identify("c", "c@example.com", "pro"),
    ]);
    let (report, letters) = send(
        &emu,
        mappings.path(),
        &input,
        options(Some(Duration::from_millis(100))),
    )
    .await;
    assert_eq!(report.dead_letters, 1);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["event"]["userId"], "b");
    let letter = &letters[0]["dead_letter"];
    assert_eq!(letter["action"], "upsert_user");
    assert_eq!(letter["step"], "upsert");
    assert_eq!(letter["status"], 422);
    assert_eq!(letter["code"], "RecordInvalid");
    assert!(
        letter["message"]
            .as_str()
            .is_some_and(|m| m.contains("not properly formatted")),
        "Zendesk's per-item error: {letter}"
    );
    let bulk = requests(&emu, "POST", "/api/v2/users/create_or_update_many");
    assert_eq!(bulk.len(), 1, "one bulk request for the three");
    assert!(requests(&emu, "POST", "/api/v2/users/create_or_update").is_empty());
    let users = comparable(&emu.state())["users"].clone();
    assert!(users.get("\"a\"").is_some() && users.get("\"c\"").is_some());
    assert!(users.get("\"b\"").is_none());
}

#[tokio::test]
async fn a_job_that_fails_as_a_whole_is_tried_again() {
    let emu = Emulator::start(EmulatorOptions {
        bulk_import: true,
        seed: 7,
        ..EmulatorOptions::default()
    })
    .await
    .expect("emulator");
    emu.configure(|k| {
        k.job_fail_rate = 0.5;
        k.upsert_user_per_window = 1000;
    });
    let input = mix(6, 12);
    let (report, letters) = send(
        &emu,
        Path::new("mappings"),
        &input,
        options(Some(Duration::from_millis(50))),
    )
    .await;
    assert!(letters.is_empty(), "{letters:?}");
    assert_eq!(report.dead_letters, 0);
    let state = emu.state();
    let failed = state["job_statuses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|j| j["status"] == "failed")
        .count();
    assert!(failed > 0, "some jobs failed");
    let single = emulator(true).await;
    send(&single, Path::new("mappings"), &input, options(None)).await;
    assert_eq!(comparable(&state), comparable(&single.state()));
}

/// Identifies of twelve users, as input lines.
fn twelve_users() -> String {
    lines(
        &(0..12)
            .map(|u| identify(&format!("u{u}"), &format!("u{u}@example.com"), "pro"))
            .collect::<Vec<_>>(),
    )
}

/// `upsert_user.yaml` with bulk requests of two items, so that twelve users need six of them.
fn two_users_per_request(text: &str) -> String {
    text.replace(
        "      items: users\n",
        "      items: users\n      max_items: 2\n",
    )
}

#[tokio::test]
async fn a_429_on_job_creation_is_waited_out() {
    // Items go 2 per request, so 6 bulk requests go out at once, while Zendesk takes 2 jobs at
    // a time (zdmap allows 30): the others meet 429 TooManyJobs and are tried again.
    let mappings = mappings_with(|name, text| match name {
        "upsert_user.yaml" => two_users_per_request(&text),
        _ => text,
    });
    let emu = emulator(true).await;
    emu.configure(|k| {
        k.job_limit = 2;
        k.job_delay_ms = 300;
    });
    let input = twelve_users();
    let (report, letters) = send(
        &emu,
        mappings.path(),
        &input,
        options(Some(Duration::from_millis(100))),
    )
    .await;
    assert!(letters.is_empty(), "{letters:?}");
    assert_eq!(report.dead_letters, 0);
    let bulk = requests(&emu, "POST", "/api/v2/users/create_or_update_many");
    assert!(statuses(&bulk).contains(&429), "{:?}", statuses(&bulk));
    assert_eq!(
        comparable(&emu.state())["users"]
            .as_object()
            .map(|u| u.len()),
        Some(12)
    );
}

#[tokio::test]
async fn no_more_jobs_than_the_limit_are_in_flight() {
    // destination.yaml allows 2 jobs; the emulator refuses a third with 422 (which would fail
    // the events), and items go 2 per request, so many jobs are needed.
    let mappings = mappings_with(|name, text| match name {
        "destination.yaml" => text.replace("  limit: 30", "  limit: 2"),
        "upsert_user.yaml" => two_users_per_request(&text),
        _ => text,
    });
    let emu = emulator(true).await;
    emu.configure(|k| {
        k.job_limit = 2;
        k.job_limit_status = 422;
        k.job_delay_ms = 100;
    });
    let input = twelve_users();
    let (report, letters) = send(
        &emu,
        mappings.path(),
        &input,
        options(Some(Duration::from_millis(20))),
    )
    .await;
    assert!(letters.is_empty(), "{letters:?}");
    assert_eq!(report.dead_letters, 0);
    let bulk = requests(&emu, "POST", "/api/v2/users/create_or_update_many");
    assert!(bulk.len() >= 6, "{} bulk requests", bulk.len());
    assert!(
        statuses(&bulk).iter().all(|s| *s == 200),
        "{:?}",
        statuses(&bulk)
    );
    assert_eq!(
        comparable(&emu.state())["users"]
            .as_object()
            .map(|u| u.len()),
        Some(12)
    );
}

#[tokio::test]
async fn later_jobs_are_first_polled_when_the_jobs_before_them_ended() {
    // Items go 2 per request and destination.yaml allows one job at a time, so ten users make
    // five jobs in turn; each takes 600 ms. Polled every time as the first is (after 250 ms:
    // running, then 375 ms later: done), they would cost ten polls; polled first when the one
    // before was seen done, most cost one.
    let mappings = mappings_with(|name, text| match name {
        "destination.yaml" => text.replace("  limit: 30", "  limit: 1"),
        "upsert_user.yaml" => two_users_per_request(&text),
        _ => text,
    });
    let emu = emulator(true).await;
    emu.configure(|k| k.job_delay_ms = 600);
    let users: Vec<Value> = (0..10)
        .map(|u| identify(&format!("p{u}"), &format!("p{u}@example.com"), "pro"))
        .collect();
    let (report, letters) = send(
        &emu,
        mappings.path(),
        &lines(&users),
        options(Some(Duration::from_secs(1))),
    )
    .await;
    assert!(letters.is_empty(), "{letters:?}");
    assert_eq!(report.dead_letters, 0);
    let bulk = requests(&emu, "POST", "/api/v2/users/create_or_update_many");
    assert_eq!(statuses(&bulk), vec![200; 5]);
    let polls: Vec<Value> = emu
        .requests()
        .into_iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.contains("job_statuses"))
        })
        .collect();
    assert!(
        polls.iter().all(|p| p["status"] == 200),
        "{:?}",
        statuses(&polls)
    );
    assert!(polls.len() <= 8, "{} polls for 5 jobs", polls.len());
    assert_eq!(
        comparable(&emu.state())["users"]
            .as_object()
            .map(|u| u.len()),
        Some(10)
    );
}

/// `zdmap serve` as a child process delivering to `emu` with a short batch window: the child
/// and its URL.
fn spawn_serve(emu: &Emulator, data: &Path) -> (std::process::Child, String) {
    serving::spawn_serve_with(
        &emu.url(),
        data,
        Path::new("mappings"),
        &["--batch-window", "100ms"],
        |c| {
            c.stderr(std::process::Stdio::null());
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serve_killed_during_a_job_delivers_its_events_again_at_the_next_start() {
    let emu = emulator(true).await;
    emu.configure(|k| k.job_delay_ms = 3_000);
    let data = tempfile::tempdir().expect("temp dir");
    let (mut child, url) = spawn_serve(&emu, data.path());
    let users: Vec<Value> = (0..10)
        .map(|u| identify(&format!("k{u}"), &format!("k{u}@example.com"), "gold"))
        .collect();
    assert_eq!(post_batch(&url, Some(serving::KEY), &users).await, 200);
    let bulk = || requests(&emu, "POST", "/api/v2/users/create_or_update_many");
    eventually(
        "the bulk request is sent",
        Duration::from_secs(30),
        async || !bulk().is_empty(),
    )
    .await;
    child.kill().expect("kill -9");
    let _ = child.wait();
    assert_eq!(
        emu.state()["users"].as_array().map(Vec::len),
        Some(0),
        "killed while the job was running"
    );

    emu.configure(|k| k.job_delay_ms = 0);
    let (mut child, _) = spawn_serve(&emu, data.path());
    let users = || comparable(&emu.state())["users"].clone();
    eventually(
        "every user delivered again",
        Duration::from_secs(30),
        async || users().as_object().map(|u| u.len()) == Some(10),
    )
    .await;
    // The first job ends too (3 s after it began): the same upserts again, nothing doubled.
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    let users = users();
    assert_eq!(users.as_object().map(|u| u.len()), Some(10));
    assert!(
        users.as_object().is_some_and(|u| u
            .iter()
            .all(|(ext, v)| v["name"] == format!("User {}", ext.trim_matches('"')))),
        "{users}"
    );
    assert!(bulk().len() >= 2, "sent again after the restart");
    child.kill().expect("kill");
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_serve_that_keeps_up_an_event_behind_a_job_sends_its_request_single() {
    // Two users' identifies go in one bulk request whose job takes 800 ms; their next
    // identifies come 200 ms later and wait behind it. In a bulk request of their own (a
    // second job) they would wait as long again: they go single.
    let emu = emulator(true).await;
    emu.configure(|k| k.job_delay_ms = 800);
    let data = tempfile::tempdir().expect("temp dir");
    let (mut child, url) = spawn_serve(&emu, data.path());
    let first = vec![
        identify("late-a", "late-a@example.com", "gold"),
        identify("late-b", "late-b@example.com", "gold"),
    ];
    assert_eq!(post_batch(&url, Some(serving::KEY), &first).await, 200);
    let bulk = || requests(&emu, "POST", "/api/v2/users/create_or_update_many");
    eventually(
        "the first bulk request is sent",
        Duration::from_secs(30),
        async || !bulk().is_empty(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let renamed = |user: &str| {
        json!({"type": "identify", "userId": user, "messageId": format!("{user}-2"),
               "traits": {"email": format!("{user}@example.com"), "name": format!("{user} renamed")}})
    };
    assert_eq!(
        post_batch(
            &url,
            Some(serving::KEY),
            &[renamed("late-a"), renamed("late-b")]
        )
        .await,
        200
    );
    let users = || comparable(&emu.state())["users"].clone();
    eventually(
        "both renames delivered",
        Duration::from_secs(30),
        async || {
            let users = users();
            ["late-a", "late-b"]
                .iter()
                .all(|u| users[format!("\"{u}\"")]["name"] == format!("{u} renamed"))
        },
    )
    .await;
    assert_eq!(
        bulk().len(),
        1,
        "the late identifies made no second bulk request"
    );
    assert_eq!(
        statuses(&requests(&emu, "POST", "/api/v2/users/create_or_update")),
        vec![200, 200],
        "each late identify went as its single request"
    );
    child.kill().expect("kill");
    let _ = child.wait();
}

/// Five identifies of one user and one of another, sent together.
fn busy_user() -> String {
    let mut events: Vec<Value> = (1..=5)
        .map(|n| {
            let mut traits = json!({"email": "c1@example.com", "name": format!("Name {n}")});
            if n == 2 {
                traits["phone"] = json!("+44 20 7946 0002");
            }
            json!({"type": "identify", "userId": "c1", "messageId": format!("c1-{n}"), "traits": traits})
        })
        .collect();
    events.push(identify("c2", "c2@example.com", "pro"));
    lines(&events)
}

fn items_sent(emu: &Emulator) -> usize {
    requests(emu, "POST", "/api/v2/users/create_or_update_many")
        .iter()
        .filter(|r| r["status"] == 200)
        .filter_map(|r| r["body"]["users"].as_array().map(Vec::len))
        .sum()
}

#[tokio::test]
async fn several_upserts_of_one_user_in_a_window_become_one_item() {
    let emu = emulator(true).await;
    let (report, letters) = send(
        &emu,
        Path::new("mappings"),
        &busy_user(),
        options(Some(Duration::from_millis(300))),
    )
    .await;
    assert!(letters.is_empty(), "{letters:?}");
    assert_eq!(report.dead_letters, 0);
    assert_eq!(items_sent(&emu), 2, "one item per user");
    let users = comparable(&emu.state())["users"].clone();
    // Later values win field by field: the last name, the phone only the second event had.
    assert_eq!(users["\"c1\""]["name"], "Name 5");
    assert_eq!(users["\"c1\""]["phone"], "+44 20 7946 0002");

    // With bulk user imports off, the coalesced item is one single request.
    let off = emulator(false).await;
    let (report, _) = send(
        &off,
        Path::new("mappings"),
        &busy_user(),
        options(Some(Duration::from_millis(300))),
    )
    .await;
    assert_eq!(report.dead_letters, 0);
    assert_eq!(
        requests(&off, "POST", "/api/v2/users/create_or_update").len(),
        2,
        "one upsert per user"
    );
    assert_eq!(comparable(&off.state())["users"], users);
}

#[tokio::test]
async fn lookups_in_one_window_go_out_as_one_request() {
    let emu = emulator(true).await;
    let users: Vec<Value> = (0..30)
        .map(|u| identify(&format!("l{u}"), &format!("l{u}@example.com"), "pro"))
        .collect();
    let (report, _) = send(&emu, Path::new("mappings"), &lines(&users), options(None)).await;
    assert_eq!(report.dead_letters, 0);
    // A new run (an empty cache): 30 users to find, and one that does not exist.
    let mut tracks: Vec<Value> = (0..30)
        .map(|u| json!({"type": "track", "event": "Signed In", "userId": format!("l{u}"), "messageId": format!("s{u}")}))
        .collect();
    tracks.push(
        json!({"type": "track", "event": "Signed In", "userId": "nobody", "messageId": "s-nobody"}),
    );
    let (report, letters) = send(
        &emu,
        Path::new("mappings"),
        &lines(&tracks),
        options(Some(Duration::from_millis(200))),
    )
    .await;
    assert_eq!(report.dead_letters, 1, "{letters:?}");
    assert_eq!(letters[0]["event"]["userId"], "nobody");
    let show_many = requests(&emu, "GET", "/api/v2/users/show_many");
    assert_eq!(show_many.len(), 1, "one request for the 31 keys");
    assert!(requests(&emu, "GET", "/api/v2/users/search").is_empty());
    let state = comparable(&emu.state());
    assert_eq!(
        state["events"].as_object().map(|e| e.len()),
        Some(30),
        "every user found got its event"
    );
}

#[tokio::test]
async fn a_lone_item_goes_as_its_single_request_with_no_job_to_wait_for() {
    // A bulk request of one item would cost itself and at least one poll of its job (here a job
    // takes 500 ms); its single request costs one request and is answered at once.
    let emu = emulator(true).await;
    emu.configure(|k| k.job_delay_ms = 500);
    let job_polls = |emu: &Emulator| {
        emu.requests()
            .iter()
            .filter(|r| {
                r["path"]
                    .as_str()
                    .is_some_and(|p| p.contains("job_statuses"))
            })
            .count()
    };
    let (report, letters) = send(
        &emu,
        Path::new("mappings"),
        &lines(&[identify("solo", "solo@example.com", "pro")]),
        options(Some(Duration::from_millis(100))),
    )
    .await;
    assert!(letters.is_empty(), "{letters:?}");
    assert_eq!(report.dead_letters, 0);
    assert!(requests(&emu, "POST", "/api/v2/users/create_or_update_many").is_empty());
    assert_eq!(
        statuses(&requests(&emu, "POST", "/api/v2/users/create_or_update")),
        vec![201],
        "created by its single request"
    );
    assert_eq!(job_polls(&emu), 0);
    let users = comparable(&emu.state())["users"].clone();
    assert_eq!(users["\"solo\""]["name"], "User solo");

    // Three upserts of one user coalesced into one lone item: one single request, later
    // values winning.
    let renames: Vec<Value> = (1..=3)
        .map(|n| {
            json!({"type": "identify", "userId": "solo", "messageId": format!("r-{n}"),
                        "traits": {"email": "solo@example.com", "name": format!("Solo {n}")}})
        })
        .collect();
    let (report, _) = send(
        &emu,
        Path::new("mappings"),
        &lines(&renames),
        options(Some(Duration::from_millis(300))),
    )
    .await;
    assert_eq!(report.dead_letters, 0);
    assert!(requests(&emu, "POST", "/api/v2/users/create_or_update_many").is_empty());
    assert_eq!(
        requests(&emu, "POST", "/api/v2/users/create_or_update").len(),
        2,
        "one more single request for the three"
    );
    assert_eq!(job_polls(&emu), 0);
    assert_eq!(
        comparable(&emu.state())["users"]["\"solo\""]["name"],
        "Solo 3"
    );

    // Two users in one window still share a bulk request.
    let (report, _) = send(
        &emu,
        Path::new("mappings"),
        &lines(&[
            identify("duo1", "duo1@example.com", "pro"),
            identify("duo2", "duo2@example.com", "pro"),
        ]),
        options(Some(Duration::from_millis(300))),
    )
    .await;
    assert_eq!(report.dead_letters, 0);
    let bulk = requests(&emu, "POST", "/api/v2/users/create_or_update_many");
    assert_eq!(bulk.len(), 1);
    assert_eq!(bulk[0]["body"]["users"].as_array().map(Vec::len), Some(2));
    assert!(job_polls(&emu) >= 1);
}

/// Input that gives its lines one at a time, each after its pause (events that arrive while
/// earlier ones are being delivered).
struct Paced {
    lines: std::collections::VecDeque<(Duration, String)>,
}

impl std::io::Read for Paced {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some((pause, line)) = self.lines.pop_front() else {
            return Ok(0);
        };
        std::thread::sleep(pause);
        let bytes = format!("{line}\n").into_bytes();
        let n = bytes.len().min(buf.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        if n < bytes.len() {
            let rest = String::from_utf8_lossy(&bytes[n..bytes.len() - 1]).into_owned();
            self.lines.push_front((Duration::ZERO, rest));
        }
        Ok(n)
    }
}

#[tokio::test]
async fn an_event_behind_a_bulk_request_answered_during_its_turn_does_not_hold_its_user() {
    // u1's identify is an item of a bulk request that fails at once (503); u1's track arrives
    // while that request is out, so it may run only to join it: it cannot (the request is
    // gone), and its turn lasts while the bulk request is answered, because it checks first
    // whether its event was recorded (it is a dead letter being replayed). When it steps
    // back, the identify must go on, and then the track: the run ends, nothing held.
    let emu = emulator(true).await;
    let dest = serving::destination(&emu, Path::new("mappings")).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let writer = Arc::new(DeadLetterWriter::open(dir.path().join("dead.ndjson")).expect("dl"));
    // u1 exists and is cached, so the track's turn needs no lookup.
    let first = identify("u1", "u1@example.com", "free");
    run(
        dest.executor.clone(),
        Cursor::new(first.to_string().into_bytes()),
        writer.clone(),
        dest.stats.clone(),
        options(None),
    )
    .await
    .expect("run");

    emu.configure(|k| {
        k.latency_ms = 400;
        k.forced_faults = vec![
            zdmap::emulator::ForcedFault::new(503).on_path("/api/v2/users/create_or_update_many"),
        ];
    });
    let renamed = json!({"type": "identify", "userId": "u1", "messageId": "m-u1-renamed",
        "traits": {"email": "u1@example.com", "name": "User One"}});
    let track = json!({"type": "track", "event": "Plan Viewed", "userId": "u1",
        "messageId": "m-u1-track", "properties": {"plan": "pro"}});
    let replayed =
        zdmap::deliver::DeadLetter::without_response(track, "track_event", "record", "HTTP 500");
    // Another user's identify comes with u1's, so that they make a bulk request (a lone item
    // would go as its single request).
    let other = identify("u2", "u2@example.com", "free");
    let input = Paced {
        lines: [
            (Duration::ZERO, renamed.to_string()),
            (Duration::ZERO, other.to_string()),
            (Duration::from_millis(200), replayed.to_line()),
        ]
        .into(),
        // The identifies' bulk request goes out after 10 ms and is answered after 410 ms; the
        // track starts at 200 ms and its check is answered at 600 ms.
    };
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        run(
            dest.executor.clone(),
            input,
            writer,
            dest.stats.clone(),
            options(Some(Duration::from_millis(10))),
        ),
    )
    .await
    .expect("every event is settled: none is held for good")
    .expect("run");
    assert_eq!(report.dead_letters, 0);
    let bulk = requests(&emu, "POST", "/api/v2/users/create_or_update_many");
    // Tried again after the 503: in bulk again, or each alone as its single request (the two
    // wait their own backoffs).
    assert_eq!(statuses(&bulk).first(), Some(&503), "{:?}", statuses(&bulk));
    let state = comparable(&emu.state());
    assert_eq!(state["users"]["\"u1\""]["name"], "User One");
    assert_eq!(state["users"]["\"u2\""]["name"], "User u2");
    let checks = emu
        .requests()
        .into_iter()
        .filter(|r| {
            r["method"] == "GET" && r["path"].as_str().is_some_and(|p| p.contains("/events"))
        })
        .count();
    assert_eq!(checks, 1, "the replayed track checked first");
    assert_eq!(
        emu.state()["events"].as_array().map(Vec::len),
        Some(1),
        "the track is recorded once"
    );
}

/// An emulator (bulk user imports on) where tickets `T-0` … `T-{n-1}` of user `u` exist.
async fn emulator_with_tickets(n: usize) -> Emulator {
    let emu = emulator(true).await;
    let (report, _) = send(
        &emu,
        Path::new("mappings"),
        &tickets_created(n),
        options(None),
    )
    .await;
    assert_eq!(report.dead_letters, 0);
    emu
}

/// Tickets `T-0` … `T-{n-1}` of user `u`, created (single requests) before the updates.
fn tickets_created(n: usize) -> String {
    let events: Vec<Value> = (0..n)
        .map(|t| {
            json!({"type": "track", "event": "Ticket Created", "userId": "u", "messageId": format!("tc-{t}"),
                   "context": {"traits": {"email": "u@example.com", "name": "U"}},
                   "properties": {"subject": "S", "comment": "opened", "external_id": format!("T-{t}")}})
        })
        .collect();
    lines(&events)
}

/// Two updates (two comments) of each of tickets `T-0` … `T-{n-1}`, tagged `tag`.
fn ticket_updates(n: usize, tag: &str) -> Vec<Value> {
    (0..2)
        .flat_map(|k| {
            (0..n).map(move |t| {
                json!({"type": "track", "event": "Ticket Updated", "userId": "u",
                       "messageId": format!("{tag}-{t}-{k}"),
                       "properties": {"external_id": format!("T-{t}"), "comment": format!("{tag} {k}")}})
            })
        })
        .collect()
}

/// Each ticket's comments after the first, by external id.
fn comments_by_ticket(emu: &Emulator) -> BTreeMap<String, Vec<String>> {
    emu.state()["tickets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let comments = t["comments"]
                .as_array()
                .into_iter()
                .flatten()
                .skip(1)
                .filter_map(|c| c["body"].as_str().map(str::to_owned))
                .collect();
            (
                t["external_id"].as_str().unwrap_or_default().to_owned(),
                comments,
            )
        })
        .collect()
}

fn each_comment_once(n: usize, tag: &str) -> BTreeMap<String, Vec<String>> {
    (0..n)
        .map(|t| {
            (
                format!("T-{t}"),
                vec![format!("{tag} 0"), format!("{tag} 1")],
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_to_a_bulk_ticket_update_adds_every_comment_once() {
    // Every bulk answer is lost (a 500 or a cut connection) while its job waits 1.5 s to run:
    // a check made at once would find no marker, send the updates again, and then the first
    // job would add the comments too. The check waits for the pending jobs to end.
    let emu = emulator_with_tickets(4).await;
    emu.configure(|k| {
        k.job_delay_ms = 1_500;
        k.lost_answer_rate = 1.0;
        k.lost_answer = zdmap::emulator::LostAnswer::Either;
    });
    let (report, letters) = send(
        &emu,
        Path::new("mappings"),
        &lines(&ticket_updates(4, "lost")),
        options(Some(Duration::from_millis(200))),
    )
    .await;
    assert!(letters.is_empty(), "{letters:?}");
    assert_eq!(report.dead_letters, 0);
    // Any job sent again would end within its delay: wait it out.
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    assert_eq!(comments_by_ticket(&emu), each_comment_once(4, "lost"));
    let bulk = requests(&emu, "PUT", "/api/v2/tickets/update_many");
    assert!(!bulk.is_empty());
    let items: usize = bulk
        .iter()
        .map(|r| r["body"]["tickets"].as_array().map_or(0, Vec::len))
        .sum();
    // A lone item goes as its single request.
    let singles = emu
        .requests()
        .iter()
        .filter(|r| {
            r["method"] == "PUT"
                && r["path"].as_str().is_some_and(|p| {
                    p.starts_with("/api/v2/tickets/") && !p.contains("update_many")
                })
        })
        .count();
    assert_eq!(items + singles, 8, "no update was sent twice");
    assert!(
        !requests(&emu, "GET", "/api/v2/job_statuses").is_empty(),
        "the pending jobs were listed"
    );
    assert!(
        emu.requests()
            .iter()
            .any(|r| r["method"] == "GET"
                && r["path"].as_str().is_some_and(|p| p.ends_with("/audits"))),
        "each update was read back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_ticket_update_whose_job_is_gone_when_polled_adds_every_comment_once() {
    // The jobs apply at once, but polling them answers 404 (a job Zendesk no longer knows):
    // what they applied is unknown, so each update is read back before it is sent again.
    let emu = emulator_with_tickets(4).await;
    emu.configure(|k| {
        k.forced_faults = vec![
            zdmap::emulator::ForcedFault::new(404)
                .on_path("/api/v2/job_statuses/")
                .times(1000),
        ];
    });
    let (report, letters) = send(
        &emu,
        Path::new("mappings"),
        &lines(&ticket_updates(4, "gone")),
        options(Some(Duration::from_millis(200))),
    )
    .await;
    assert!(letters.is_empty(), "{letters:?}");
    assert_eq!(report.dead_letters, 0);
    assert!(
        requests(&emu, "PUT", "/api/v2/tickets/update_many")
            .iter()
            .any(|r| r["status"] == 200),
        "a bulk update was accepted as a job"
    );
    assert!(
        emu.requests().iter().any(|r| r["status"] == 404
            && r["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/api/v2/job_statuses/"))),
        "its poll found no job"
    );
    assert_eq!(comments_by_ticket(&emu), each_comment_once(4, "gone"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serve_killed_during_a_bulk_ticket_update_adds_no_comment_twice() {
    let emu = emulator_with_tickets(3).await;
    emu.configure(|k| k.job_delay_ms = 3_000);
    let data = tempfile::tempdir().expect("temp dir");
    let (mut child, url) = spawn_serve(&emu, data.path());
    assert_eq!(
        post_batch(&url, Some(serving::KEY), &ticket_updates(3, "kill")).await,
        200
    );
    let bulk = || requests(&emu, "PUT", "/api/v2/tickets/update_many");
    eventually(
        "a bulk ticket update is sent",
        Duration::from_secs(30),
        async || !bulk().is_empty(),
    )
    .await;
    child.kill().expect("kill -9");
    let _ = child.wait();

    // The job still runs for a while; updates sent from now on apply at once.
    emu.configure(|k| k.job_delay_ms = 0);
    let (mut child, _) = spawn_serve(&emu, data.path());
    eventually("every comment added", Duration::from_secs(30), async || {
        comments_by_ticket(&emu)
            .values()
            .map(Vec::len)
            .sum::<usize>()
            >= 6
    })
    .await;
    // The first job has ended by now; give anything sent again the time to apply.
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    assert_eq!(comments_by_ticket(&emu), each_comment_once(3, "kill"));
    assert!(
        !requests(&emu, "GET", "/api/v2/job_statuses").is_empty(),
        "the restarted serve listed the pending jobs before checking"
    );
    child.kill().expect("kill");
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_ticket_update_whose_job_outlasts_the_retries_is_dead_lettered_not_sent_again() {
    let emu = emulator_with_tickets(2).await;
    emu.configure(|k| {
        k.job_delay_ms = 60_000;
        k.lost_answer_rate = 1.0;
        k.lost_answer = zdmap::emulator::LostAnswer::Error500;
    });
    let (report, letters) = send(
        &emu,
        Path::new("mappings"),
        &lines(&ticket_updates(2, "late")),
        DispatchOptions {
            retry_for: Duration::from_secs(1),
            ..options(Some(Duration::from_millis(100)))
        },
    )
    .await;
    // The first updates' jobs never ended within --retry-for: dead-lettered, saying the
    // write may have been applied; the second updates of each ticket waited behind them.
    assert!(report.dead_letters >= 2, "{letters:?}");
    for l in &letters {
        let message = l["dead_letter"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("may have been applied") && message.contains("not sent again"),
            "{l}"
        );
    }
    assert!(
        letters.iter().any(|l| l["dead_letter"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("bulk job(s) that may carry the write had not ended"))),
        "the letters say which jobs were waited for: {letters:?}"
    );
    // Nothing was sent twice: when the jobs run, each comment lands once.
    emu.advance_clock(Duration::from_secs(61));
    let comments = comments_by_ticket(&emu);
    for (ticket, cs) in &comments {
        let mut unique = cs.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), cs.len(), "{ticket}: {cs:?}");
    }
    assert!(comments.values().all(|cs| !cs.is_empty()));
}

/// A job this process has polled to its end is not waited for, even while the last listing of
/// pending jobs (reused for a poll interval) still shows it: only jobs not known to have ended
/// hold a check back.
#[tokio::test]
async fn a_job_known_to_have_ended_is_not_waited_for() {
    let emu = emulator_with_tickets(1).await;
    emu.configure(|k| k.job_delay_ms = 60_000);
    let started = reqwest::Client::new()
        .put(format!("{}/api/v2/tickets/update_many", emu.url()))
        .basic_auth("agent@example.com/token", Some("secret"))
        .json(&json!({"tickets": [{"external_id": "T-0", "status": "open"}]}))
        .send()
        .await
        .expect("answered")
        .json::<Value>()
        .await
        .expect("json");
    let job = started["job_status"]["id"]
        .as_str()
        .expect("a job")
        .to_owned();

    // A listing is reused for a poll interval: a minute here, however slowly this test runs.
    let mappings = mappings_with(|name, text| {
        if name == "destination.yaml" {
            text.replace("  limit: 30\n", "  limit: 30\n  poll_ms: 60000\n")
        } else {
            text
        }
    });
    let dest = serving::destination(&emu, mappings.path()).await;
    let (config, transport) = (dest.executor.config(), dest.executor.transport());
    assert_eq!(config.jobs.as_ref().map(|j| j.poll_ms), Some(60_000));
    let doubt = std::time::Instant::now();
    let mut awaited = zdmap::deliver::jobs::Awaited::default();
    let settled = transport
        .jobs()
        .settled(config, transport, doubt, &mut awaited)
        .await
        .expect("listed");
    assert!(!settled, "the job is pending");
    assert_eq!(awaited.len(), 1);

    transport.jobs().ended(&job);
    let settled = transport
        .jobs()
        .settled(config, transport, doubt, &mut awaited)
        .await
        .expect("listed");
    assert!(settled, "the job is known to have ended");
    assert_eq!(
        requests(&emu, "GET", "/api/v2/job_statuses").len(),
        1,
        "the listing was reused: the job still shows as pending there"
    );
}

#[tokio::test]
async fn memberships_that_waited_for_their_users_go_in_bulk_once_the_users_exist() {
    // A backfill exported by type: every group call before any identify. Each membership
    // looks its user up (in bulk), finds nothing and waits; once the identifies create the
    // users, the memberships share a bulk request rather than going one by one.
    let emu = emulator(true).await;
    let mut events: Vec<Value> = (0..12)
        .map(|u| {
            json!({"type": "group", "groupId": format!("org-{}", u / 6), "userId": format!("m-{u}"),
                   "messageId": format!("g-{u}"), "traits": {"name": format!("Org {}", u / 6)}})
        })
        .collect();
    events
        .extend((0..12).map(|u| identify(&format!("m-{u}"), &format!("m{u}@example.com"), "pro")));
    let (report, letters) = send(
        &emu,
        Path::new("mappings"),
        &lines(&events),
        options(Some(Duration::from_millis(300))),
    )
    .await;
    assert_eq!(report.dead_letters, 0, "{letters:?}");
    assert_eq!(count(&emu.state(), "memberships"), 12);
    assert!(
        requests(&emu, "POST", "/api/v2/organization_memberships").is_empty(),
        "no membership went single"
    );
    assert!(!requests(&emu, "POST", "/api/v2/organization_memberships/create_many").is_empty());
}
