//! A bad day, in CI: `zdmap serve` (the binary, batching on) under load from several
//! concurrent clients while the emulator fails requests (500s and 503s), applies writes and
//! loses their answers (a 500 or a dropped connection), answers slowly and rate-limits
//! (account-wide and per-user 429s), and the server is killed with `kill -9` and restarted in
//! the middle of it. A bulk ticket update and some membership adds are refused outright, so
//! they land in the dead letters.
//!
//! Afterwards the emulator's state equals that of a clean run of the same events (`zdmap send`
//! to an emulator without faults): every user, organization, membership, ticket status and
//! field value the same, each user event, ticket and comment once, and a replay of the dead
//! letters applies what is still current and keeps (and lists) what is stale: the only
//! difference from the clean run is the comments of the stale ticket updates it kept.

use crate::support::command::signal;
use crate::support::http::Metrics;
use crate::support::serving::{self, Killed};
use crate::support::state::count;
use crate::support::wait::eventually;

use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use zdmap::deliver::DeadLetterWriter;
use zdmap::deliver::dispatch::{DispatchOptions, RecordWait};
use zdmap::deliver::run::run;
use zdmap::emulator::{Emulator, EmulatorOptions, ForcedFault, LostAnswer};
use zdmap::queue::DeadLetterStore;

const CLIENTS: usize = 6;
const USERS_PER_CLIENT: usize = 6;

fn at(second: usize) -> String {
    format!("2026-03-01T10:00:{second:02}Z")
}

/// One client's events, in the order it sends them: its organization, then per user an
/// identify that joins the organization, user events, a ticket, updates with comments, a
/// second identify, and (every other user) an identify that leaves the organization.
fn client_events(c: usize) -> Vec<Value> {
    let org = format!("org-{c}");
    let mut events = vec![json!({
        "type": "group", "groupId": org, "messageId": format!("g-{c}"), "timestamp": at(0),
        "traits": {"name": format!("Org {c}"), "plan": "gold"}
    })];
    for n in 0..USERS_PER_CLIENT {
        let user = format!("u-{c}-{n}");
        let email = format!("{user}@example.com");
        let ticket = format!("t-{user}");
        let id = |what: &str| format!("{what}-{user}");
        let update = |t: usize, status: &str, comment: &str| {
            json!({"type": "track", "event": "Ticket Updated", "userId": user,
                   "messageId": id(&format!("upd{t}")), "timestamp": at(t),
                   "properties": {"external_id": ticket, "status": status, "comment": comment}})
        };
        events.extend([
            json!({"type": "identify", "userId": user, "messageId": id("id1"), "timestamp": at(1),
                   "traits": {"email": email, "name": format!("{user} v1"), "company": {"id": org}}}),
            json!({"type": "track", "event": "Viewed", "userId": user, "messageId": id("view"),
                   "timestamp": at(2), "properties": {"page": "/pricing"}}),
            json!({"type": "track", "event": "Ticket Created", "userId": user,
                   "messageId": id("new"), "timestamp": at(3),
                   "context": {"traits": {"email": email, "name": format!("{user} v1")}},
                   "properties": {"subject": "Help", "comment": "opened", "external_id": ticket}}),
            update(4, "open", "first"),
            json!({"type": "identify", "userId": user, "messageId": id("id2"), "timestamp": at(5),
                   "traits": {"email": email, "name": format!("{user} v2")}}),
            update(6, "pending", "second"),
            json!({"type": "track", "event": "Purchased", "userId": user, "messageId": id("buy"),
                   "timestamp": at(7), "properties": {"amount": n}}),
        ]);
        if n % 2 == 0 {
            events.push(
                json!({"type": "identify", "userId": user, "messageId": id("id3"),
                "timestamp": at(8),
                "traits": {"email": email, "company": {"id": org, "remove": true}}}),
            );
        }
        events.push(update(9, "solved", "third"));
    }
    events
}

/// The state that must match: records by their external ids, not Zendesk's ids.
fn normalized(state: &Value) -> Value {
    let list = |what: &str| state[what].as_array().cloned().unwrap_or_default();
    let by_id = |what: &str| -> BTreeMap<u64, Value> {
        list(what)
            .into_iter()
            .filter_map(|r| Some((r["id"].as_u64()?, r["external_id"].clone())))
            .collect()
    };
    let (users, orgs) = (by_id("users"), by_id("organizations"));
    let user = |id: &Value| id.as_u64().and_then(|i| users.get(&i)).cloned();
    let sorted = |mut v: Vec<Value>| {
        v.sort_by_key(|x| x.to_string());
        Value::Array(v)
    };
    json!({
        "users": sorted(list("users").iter().map(|u| json!({
            "external_id": u["external_id"], "email": u["email"], "name": u["name"],
            "user_fields": u["user_fields"],
        })).collect()),
        "organizations": sorted(list("organizations").iter().map(|o| json!({
            "external_id": o["external_id"], "name": o["name"],
            "organization_fields": o["organization_fields"],
        })).collect()),
        "memberships": sorted(list("memberships").iter().map(|m| json!([
            user(&m["user_id"]),
            m["organization_id"].as_u64().and_then(|i| orgs.get(&i)).cloned(),
        ])).collect()),
        "tickets": sorted(list("tickets").iter().map(|t| json!({
            "external_id": t["external_id"], "status": t["status"], "subject": t["subject"],
            "requester": user(&t["requester_id"]),
            "comments": t["comments"].as_array().map(|cs| cs.iter().map(|c| c["body"].clone()).collect::<Vec<_>>()),
        })).collect()),
        "events": sorted(list("events").iter().map(|e| json!({
            "user": e["user_id"].as_str().and_then(|s| s.parse::<u64>().ok()).map(Value::from).and_then(|i| user(&i)),
            "type": e["type"], "properties": e["properties"],
        })).collect()),
    })
}

/// Posts a client's events in batches of 4, each batch again until the server takes it (it
/// may be down, or killed between storing the batch and answering: the server drops the
/// calls it has already taken by their messageIds).
async fn client(url: Arc<RwLock<String>>, events: Vec<Value>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    for batch in events.chunks(4) {
        let body = json!({"batch": batch});
        loop {
            let target = format!("{}/v1/batch", url.read().expect("url").clone());
            let sent = http
                .post(target)
                .basic_auth(serving::KEY, Some(""))
                .json(&body)
                .send()
                .await;
            if sent.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Waits until the server's queue is empty: every event it took is settled.
async fn queue_empty(url: &str) {
    eventually("the queue emptied", Duration::from_secs(150), async || {
        let metrics = Metrics::read(url).await;
        if metrics.get("zdmap_queue_depth") == Some(0.0) {
            Ok(())
        } else {
            Err(metrics)
        }
    })
    .await;
}

fn server_logs(dir: &Path) -> String {
    (1..=2)
        .map(|n| std::fs::read_to_string(dir.join(format!("serve-{n}.log"))).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// The same events through `zdmap send` to an emulator without faults.
async fn clean_run(events: &[Value]) -> Value {
    let emu = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator");
    let dest = serving::destination(&emu, Path::new("mappings")).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let writer = Arc::new(DeadLetterWriter::open(dir.path().join("dead.ndjson")).expect("file"));
    let input: String = events.iter().map(|e| format!("{e}\n")).collect();
    let report = run(
        dest.executor.clone(),
        Cursor::new(input.into_bytes()),
        writer,
        dest.stats.clone(),
        DispatchOptions {
            wait_for_records: RecordWait::AfterInput(Duration::from_secs(5)),
            ..DispatchOptions::default()
        },
    )
    .await
    .expect("clean run");
    assert_eq!(report.dead_letters, 0, "the clean run delivers everything");
    normalized(&emu.state())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_under_faults_and_a_kill_ends_as_a_clean_run_does() {
    let per_client: Vec<Vec<Value>> = (0..CLIENTS).map(client_events).collect();
    let all: Vec<Value> = per_client.iter().flatten().cloned().collect();
    let expected = clean_run(&all).await;

    let emu = Emulator::start(EmulatorOptions {
        seed: 15,
        ..EmulatorOptions::default()
    })
    .await
    .expect("emulator");
    emu.configure(|k| {
        k.fail_rate = 0.08;
        k.lost_answer_rate = 0.15;
        k.lost_answer = LostAnswer::Either;
        k.latency_ms = 3;
        // 429s: the account's budget over a one-second window, and each user's upserts in it.
        k.rpm = Some(80);
        k.rate_window_secs = 1;
        k.upsert_user_per_window = 2;
        // Refused outright (dead-lettered at once): the first bulk ticket update (each of its
        // items) and the first membership adds.
        k.forced_faults = vec![
            // At least these 429s, however slowly a loaded machine sends.
            ForcedFault::new(429)
                .on_path("/api/v2/users/create_or_update")
                .retry_after(1)
                .times(3),
            ForcedFault::new(422)
                .on_exact_path("/api/v2/tickets/update_many")
                .on_method("PUT"),
            ForcedFault::new(400)
                .on_exact_path("/api/v2/organization_memberships")
                .on_method("POST")
                .times(3),
        ];
    });
    let data = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("tempdir");
    let mappings = Path::new("mappings");
    let spawn = |n: usize| {
        // Logs go to a file, so a long run never blocks on a full pipe.
        let log = std::fs::File::create(logs.path().join(format!("serve-{n}.log"))).expect("log");
        serving::spawn_serve_with(&emu.url(), data.path(), mappings, &[], |c| {
            c.stderr(log);
        })
    };
    let (child, first_url) = spawn(1);
    let mut first = Killed(child);
    let url = Arc::new(RwLock::new(first_url));
    let clients: Vec<_> = per_client
        .into_iter()
        .map(|events| tokio::spawn(client(url.clone(), events)))
        .collect();

    // kill -9 once some of it is delivered, then start again on the same data directory.
    eventually("delivery under way", Duration::from_secs(60), async || {
        count(&emu.state(), "tickets") >= 8
    })
    .await;
    first.0.kill().expect("kill -9");
    let _ = first.0.wait();
    let tickets = count(&emu.state(), "tickets");
    assert!(
        tickets < CLIENTS * USERS_PER_CLIENT,
        "the kill came before the end"
    );
    let (child, second_url) = spawn(2);
    // Killed if an assertion fails before the end, so no server outlives the test.
    let mut child = Killed(child);
    *url.write().expect("url") = second_url.clone();
    for c in clients {
        c.await.expect("client");
    }

    // Everything accepted is settled: delivered, or dead-lettered (the refused ones).
    let store = DeadLetterStore::open(data.path()).expect("dead letters");
    queue_empty(&second_url).await;
    let during = normalized(&emu.state());
    // Every fault happened: 500s and 503s, lost answers, 429s.
    let log = emu.requests();
    let seen = |f: &dyn Fn(&Value) -> bool| log.iter().filter(|r| f(r)).count();
    assert!(seen(&|r| r["status"] == 429) > 0, "429s");
    assert!(
        seen(&|r| r["status"] == 500 || r["status"] == 503) > 0,
        "server errors"
    );
    assert!(
        seen(&|r| r["lost_answer"] == "500") > 0,
        "answers lost as a 500"
    );
    assert!(
        seen(&|r| r["lost_answer"] == "drop") > 0,
        "connections dropped"
    );
    // Only the refused writes failed: the items of the refused bulk ticket update and the three
    // membership adds (one refused just before the kill may have been delivered again after the
    // restart, and then taken).
    let refused_items: u64 = log
        .iter()
        .filter(|r| r["status"] == 422 && r["path"] == "/api/v2/tickets/update_many")
        .map(|r| r["body"]["tickets"].as_array().map_or(0, Vec::len) as u64)
        .sum();
    assert!(refused_items > 0, "a bulk ticket update was refused");
    let failed = store.count().expect("count");
    assert!(
        (1..=refused_items + 3).contains(&failed),
        "{failed} dead letters: {}",
        server_logs(logs.path())
    );
    for l in store.list(0, 1000).expect("list") {
        assert!(
            ["update_ticket", "update_organization_membership"]
                .contains(&l.letter.action.as_deref().unwrap_or_default())
                && matches!(l.letter.status, Some(400 | 422)),
            "only the refused writes failed: {l:?}"
        );
    }

    // Replay the dead letters (faults off): the current ones are applied, the stale kept.
    emu.configure(|k| {
        k.fail_rate = 0.0;
        k.lost_answer_rate = 0.0;
        k.rpm = None;
    });
    let letters = store.list(0, 1000).expect("list");
    let out = Command::new(env!("CARGO_BIN_EXE_zdmap"))
        .args(["dead-letters", "replay", "--all", "--data-dir"])
        .arg(data.path())
        .output()
        .expect("replay");
    assert!(out.status.success(), "{out:?}");
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    let kept: BTreeSet<u64> = listed
        .lines()
        .filter_map(|l| l.split('\t').next()?.parse().ok())
        .collect();
    assert_eq!(
        store.count().expect("count"),
        kept.len() as u64,
        "the stale letters stay: {listed}"
    );
    queue_empty(&second_url).await;
    let after = normalized(&emu.state());
    assert!(!kept.is_empty(), "stale letters were kept: {listed}");
    // A current letter's write may have been applied after all: a membership add sent in a
    // bulk request whose answer was lost, tried again as a duplicate item, then as its single
    // request, which was refused. Replaying it changes nothing; any other current letter does.
    let members = during["memberships"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let applied = |event: &Value| {
        members.contains(&json!([event["userId"], event["traits"]["company"]["id"]]))
    };
    if letters.iter().filter(|l| !kept.contains(&l.id)).any(|l| {
        l.letter.action.as_deref() != Some("update_organization_membership")
            || !applied(&l.letter.event)
    }) {
        assert_ne!(during, after, "the replay applied the current letters");
    }

    // What the stale letters would have added is missing, and nothing else differs.
    let mut expected = expected;
    for l in letters.iter().filter(|l| kept.contains(&l.id)) {
        let event = &l.letter.event;
        assert!(
            l.letter
                .changes
                .iter()
                .any(|c| { store_time(data.path(), &c.entity).is_some_and(|last| last > c.at_ms) }),
            "a kept letter is stale: {l:?}"
        );
        if l.letter.action.as_deref() == Some("update_ticket") {
            let (ticket, comment) = (
                &event["properties"]["external_id"],
                &event["properties"]["comment"],
            );
            let tickets = expected["tickets"].as_array_mut().expect("tickets");
            let t = tickets
                .iter_mut()
                .find(|t| &t["external_id"] == ticket)
                .expect("ticket");
            t["comments"]
                .as_array_mut()
                .expect("comments")
                .retain(|c| c != comment);
        }
    }
    for what in ["users", "organizations", "memberships", "tickets", "events"] {
        assert_eq!(
            after[what], expected[what],
            "{what} differ from the clean run; replay said: {listed}"
        );
    }

    // The server went on after its restart and stops cleanly.
    serving_stop(&mut child.0);
}

/// The time of the last change applied to `entity`, as the data directory keeps it.
fn store_time(data: &Path, entity: &str) -> Option<i64> {
    let conn = rusqlite::Connection::open(data.join("zdmap.sqlite3")).ok()?;
    conn.query_row(
        "SELECT at FROM entity_times WHERE entity = ?1",
        [entity],
        |r| r.get(0),
    )
    .ok()
}

fn serving_stop(child: &mut std::process::Child) {
    signal(child, "TERM");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
}
