//! Effectively once and in order, through `zdmap send` and `zdmap serve` against the emulator:
//! a write whose answer is lost (applied, then a 500 or a dropped connection) is not applied
//! twice, and an older change (a replayed dead letter) is not applied over a newer one.

use crate::support::http::post_batch;
use crate::support::mappings;
use crate::support::serving;
use crate::support::wait::eventually;

use serde_json::{Value, json};
use std::io::Cursor;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use zdmap::deliver::dispatch::{DispatchOptions, RecordWait};
use zdmap::deliver::run::{RunReport, run};
use zdmap::deliver::setup::Destination;
use zdmap::deliver::{DeadLetter, DeadLetterWriter, EventOutcome, Executor, Turn, Wait};
use zdmap::emulator::{Emulator, EmulatorOptions, ForcedFault, LostAnswer};
use zdmap::mapping::event::Event;
use zdmap::queue::DeadLetterStore;
use zdmap::serve::WorkerOptions;

async fn emulator() -> Emulator {
    Emulator::start(EmulatorOptions {
        seed: 7,
        ..EmulatorOptions::default()
    })
    .await
    .expect("emulator")
}

/// `zdmap send` of `events` through `executor`; gives the report and the dead letters.
async fn send(
    dest: &Destination,
    executor: Arc<Executor>,
    events: &[Value],
) -> (RunReport, Vec<DeadLetter>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dead.ndjson");
    let writer = Arc::new(DeadLetterWriter::open(&path).expect("dead letters"));
    let input: String = events.iter().map(|e| format!("{e}\n")).collect();
    let report = run(
        executor,
        Cursor::new(input.into_bytes()),
        writer,
        dest.stats.clone(),
        DispatchOptions {
            concurrency: 4,
            retry_for: Duration::from_secs(60),
            wait_for_records: RecordWait::AfterInput(Duration::from_secs(2)),
            ..DispatchOptions::default()
        },
    )
    .await
    .expect("run");
    let letters = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .map(|l| DeadLetter::parse(&serde_json::from_str(l).expect("json")).expect("a letter"))
        .collect();
    (report, letters)
}

fn at(second: u32) -> String {
    format!("2026-03-01T10:00:{second:02}Z")
}

fn identify(user: &str, second: u32, extra: Value) -> Value {
    let mut traits = json!({"email": format!("{user}@example.com"), "name": user});
    if let (Some(t), Value::Object(extra)) = (traits.as_object_mut(), extra) {
        t.extend(extra);
    }
    json!({"type": "identify", "userId": user, "messageId": format!("id-{user}-{second}"),
           "timestamp": at(second), "traits": traits})
}

fn ticket_update(user: &str, ticket: &str, second: u32, status: &str, comment: &str) -> Value {
    json!({"type": "track", "event": "Ticket Updated", "userId": user,
           "messageId": format!("upd-{ticket}-{second}"), "timestamp": at(second),
           "properties": {"external_id": ticket, "status": status, "comment": comment}})
}

/// User u1 (named `name`) opens ticket t1 at `second`.
fn t1_created(second: u32, name: &str) -> Value {
    json!({"type": "track", "event": "Ticket Created", "userId": "u1", "messageId": "new-t1",
           "timestamp": at(second),
           "context": {"traits": {"email": "u1@example.com", "name": name}},
           "properties": {"subject": "S", "comment": "opened", "external_id": "t1"}})
}

/// `v` as an event the executor starts.
fn event(v: Value) -> Event {
    Event::from_value(v).expect("an event")
}

fn list<'a>(state: &'a Value, what: &str) -> &'a [Value] {
    state[what].as_array().map_or(&[], Vec::as_slice)
}

fn ticket<'a>(state: &'a Value, external_id: &str) -> &'a Value {
    list(state, "tickets")
        .iter()
        .find(|t| t["external_id"] == external_id)
        .expect("the ticket")
}

fn comments(ticket: &Value) -> Vec<String> {
    ticket["comments"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| c["body"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Users, user events, tickets and comments, in order per user, while 40% of the writes the
/// emulator applies lose their answer (a 500 or a dropped connection).
#[tokio::test]
async fn lost_answers_duplicate_no_user_event_and_no_comment() {
    let emu = emulator().await;
    let dest = serving::destination(&emu, Path::new("mappings")).await;
    emu.configure(|k| {
        k.lost_answer_rate = 0.4;
        k.lost_answer = LostAnswer::Either;
        k.upsert_user_per_window = 1000;
    });
    let mut events = Vec::new();
    for u in 0..12 {
        let user = format!("u{u}");
        events.push(identify(&user, 0, json!({})));
        for n in 0..4 {
            events.push(json!({"type": "track", "event": "Viewed", "userId": user,
                "messageId": format!("view-{user}-{n}"), "timestamp": at(1 + n),
                "properties": {"n": n}}));
        }
        let t = format!("t-{user}");
        events.push(
            json!({"type": "track", "event": "Ticket Created", "userId": user,
            "messageId": format!("new-{t}"), "timestamp": at(10),
            "context": {"traits": {"email": format!("{user}@example.com"), "name": user}},
            "properties": {"subject": "S", "comment": "opened", "external_id": t}}),
        );
        for (n, status) in ["open", "pending", "solved"].iter().enumerate() {
            events.push(ticket_update(
                &user,
                &t,
                11 + n as u32,
                status,
                &format!("c{n}"),
            ));
        }
    }
    let (report, letters) = send(&dest, dest.executor.clone(), &events).await;
    assert_eq!(report.dead_letters, 0, "{letters:#?}");
    let stats = dest.stats.snapshot();
    assert!(
        stats.confirmed > 0,
        "some writes were found applied by their check: {stats:?}"
    );

    let state = emu.state();
    assert_eq!(list(&state, "users").len(), 12);
    let recorded = list(&state, "events");
    let mut markers: Vec<&str> = recorded
        .iter()
        .map(|e| e["properties"]["zdmap_marker"].as_str().expect("a marker"))
        .collect();
    markers.sort_unstable();
    markers.dedup();
    assert_eq!(recorded.len(), 48, "each user event recorded once");
    assert_eq!(markers.len(), 48);
    assert_eq!(
        list(&state, "tickets").len(),
        12,
        "each ticket created once"
    );
    for u in 0..12 {
        let t = ticket(&state, &format!("t-u{u}"));
        assert_eq!(
            comments(t),
            ["opened", "c0", "c1", "c2"],
            "each comment once: {t}"
        );
        assert_eq!(t["status"], "solved");
    }
}

/// The shipped track_event without its check: a lost answer dead-letters the event instead of
/// recording it twice, and the dead letter says why.
#[tokio::test]
async fn without_a_check_a_lost_answer_is_dead_lettered_not_repeated() {
    let (_dir, mappings) = mappings::mappings_copy();
    let file = mappings.join("track_event.yaml");
    let text = std::fs::read_to_string(&file).expect("track_event");
    let check = &text[text.find("    check:\n").expect("the check")..];
    mappings::edit(&file, check, "");
    let out = Command::new(env!("CARGO_BIN_EXE_zdmap"))
        .args(["validate", "--mappings"])
        .arg(&mappings)
        .output()
        .expect("validate runs");
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("track_event.yaml:")
            && said.contains("is not idempotent")
            && said.contains("has no `check`"),
        "{said}"
    );

    let emu = emulator().await;
    let dest = serving::destination(&emu, &mappings).await;
    let (report, _) = send(
        &dest,
        dest.executor.clone(),
        &[identify("u1", 0, json!({}))],
    )
    .await;
    assert_eq!(report.dead_letters, 0);
    emu.configure(|k| {
        k.lost_answer_rate = 1.0;
        k.lost_answer = LostAnswer::Error500;
    });
    let track = json!({"type": "track", "event": "Paid", "userId": "u1", "messageId": "p1",
                       "properties": {"amount": 3}});
    let (report, letters) = send(&dest, dest.executor.clone(), &[track]).await;
    assert_eq!(report.dead_letters, 1, "{letters:#?}");
    assert_eq!(letters[0].action.as_deref(), Some("track_event"));
    assert_eq!(letters[0].status, Some(500));
    assert!(
        letters[0].message.contains("may have been applied"),
        "{}",
        letters[0].message
    );
    assert_eq!(
        list(&emu.state(), "events").len(),
        1,
        "recorded once, not sent again"
    );
}

/// In one `zdmap send` run, a dead letter of an older ticket update that comes after a newer
/// update is skipped and counted; with --force it is applied.
#[tokio::test]
async fn send_skips_a_stale_change_unless_forced() {
    let emu = emulator().await;
    let dest = serving::destination(&emu, Path::new("mappings")).await;
    let created = t1_created(1, "One");
    let older = ticket_update("u1", "t1", 2, "pending", "older");
    let newer = ticket_update("u1", "t1", 3, "solved", "newer");
    let letter = DeadLetter::without_response(older, "update_ticket", "update", "HTTP 500");
    let replayed: Value = serde_json::from_str(&letter.to_line()).expect("a record");
    let events = [created, newer, replayed.clone()];
    let (report, letters) = send(&dest, dest.executor.clone(), &events).await;
    assert_eq!(report.dead_letters, 0, "{letters:#?}");
    assert_eq!(dest.stats.snapshot().stale, 1);
    let state = emu.state();
    let t = ticket(&state, "t1");
    assert_eq!(t["status"], "solved");
    assert_eq!(comments(t), ["opened", "newer"]);

    // --force: the stale change is applied over the newer one.
    let forced = Arc::new(dest.executor.with_force(true));
    let (report, _) = send(&dest, forced, &[replayed]).await;
    assert_eq!(report.dead_letters, 0);
    let state = emu.state();
    let t = ticket(&state, "t1");
    assert_eq!(t["status"], "pending");
    assert_eq!(comments(t), ["opened", "newer", "older"]);
}

/// `zdmap serve`: an older ticket update and an older membership add fail into the dead
/// letters; newer events solve the ticket and remove the membership. `zdmap dead-letters
/// replay` keeps both stale letters and says so (the time of each entity's last change is in
/// the data directory); `--force` replays one anyway and the server applies it.
#[tokio::test]
async fn a_replay_applies_no_older_ticket_update_and_re_adds_no_removed_membership() {
    let emu = emulator().await;
    let data = tempfile::tempdir().expect("tempdir");
    let mut setup = serving::Setup::default();
    setup.workers = WorkerOptions {
        retry_for: Duration::from_millis(300),
        ..setup.workers
    };
    let server = serving::start(&emu, data.path(), setup).await;
    let url = server.url();
    let post = async |events: &[Value]| {
        assert_eq!(post_batch(&url, Some(serving::KEY), events).await, 200);
    };

    post(&[
        identify("u1", 0, json!({})),
        json!({"type": "group", "groupId": "acme", "messageId": "g0",
               "timestamp": at(0), "traits": {"name": "Acme"}}),
        t1_created(0, "u1"),
    ])
    .await;
    wait_for(&emu, "the organization and the ticket", |s| {
        list(s, "organizations").len() == 1 && list(s, "tickets").len() == 1
    })
    .await;

    // Zendesk fails everything: the older changes are dead-lettered (changes, so that none is
    // skipped as the same as the last write applied).
    emu.configure(|k| k.fail_rate = 1.0);
    post(&[
        ticket_update("u1", "t1", 10, "pending", "older"),
        identify(
            "u1",
            10,
            json!({"company": {"id": "acme"}, "plan": "older"}),
        ),
    ])
    .await;
    let store = DeadLetterStore::open(data.path()).expect("dead letters");
    eventually("three dead letters", Duration::from_secs(15), async || {
        store.count().unwrap_or(0) >= 3
    })
    .await;
    emu.configure(|k| k.fail_rate = 0.0);

    // Newer changes: the ticket is solved, the user leaves the organization.
    post(&[
        ticket_update("u1", "t1", 20, "solved", "newer"),
        identify("u1", 20, json!({"company": {"id": "acme", "remove": true}})),
    ])
    .await;
    wait_for(&emu, "the newer changes", |s| {
        list(s, "memberships").is_empty() && ticket(s, "t1")["status"] == "solved"
    })
    .await;

    let replay = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_zdmap"))
            .args(["dead-letters", "replay", "--data-dir"])
            .arg(data.path())
            .args(args)
            .output()
            .expect("replay runs");
        assert!(out.status.success(), "{out:?}");
        (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (stdout, stderr) = replay(&["--all"]);
    assert!(stderr.contains("0 dead letter(s) moved back"), "{stderr}");
    assert!(stderr.contains("3 stale dead letter(s) kept"), "{stderr}");
    assert!(
        stdout.contains("update_ticket\tstale: ticket:t1 changed at 2026-03-01T10:00:10Z"),
        "{stdout}"
    );
    assert!(
        stdout.contains("update_organization_membership\tstale: membership:u1/acme"),
        "{stdout}"
    );
    assert_eq!(store.count().expect("count"), 3, "stale letters are kept");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let state = emu.state();
    assert!(list(&state, "memberships").is_empty(), "not re-added");
    assert_eq!(ticket(&state, "t1")["status"], "solved");
    assert_eq!(comments(ticket(&state, "t1")), ["opened", "newer"]);

    // --force on the ticket's letter: the server applies the older update anyway.
    let id = store
        .list(0, 10)
        .expect("list")
        .into_iter()
        .find(|l| l.letter.action.as_deref() == Some("update_ticket"))
        .expect("the ticket's letter")
        .id;
    let (stdout, stderr) = replay(&["--force", &id.to_string()]);
    assert!(stderr.contains("1 dead letter(s) moved back"), "{stderr}");
    assert!(stdout.contains("replayed anyway (--force)"), "{stdout}");
    wait_for(&emu, "the forced older update", |s| {
        ticket(s, "t1")["status"] == "pending"
    })
    .await;
    assert_eq!(
        comments(ticket(&emu.state(), "t1")),
        ["opened", "newer", "older"]
    );
    server.shutdown().await;
}

/// Waits until the emulator's state satisfies `done`; panics with the state after 15 s.
async fn wait_for(emu: &Emulator, what: &str, done: impl Fn(&Value) -> bool) {
    eventually(what, Duration::from_secs(15), async || {
        let state = emu.state();
        if done(&state) {
            Ok(())
        } else {
            Err(format!("{state:#}"))
        }
    })
    .await;
}

/// A late retry: an update of a ticket waits to be tried again while another user's newer
/// update of the same ticket is applied; when it comes back it is stale and skipped.
#[tokio::test]
async fn a_late_retry_is_not_applied_over_a_newer_change() {
    let emu = emulator().await;
    let dest = serving::destination(&emu, Path::new("mappings")).await;
    let created = t1_created(1, "One");
    let (report, _) = send(&dest, dest.executor.clone(), &[created]).await;
    assert_eq!(report.dead_letters, 0);

    emu.configure(|k| {
        k.forced_faults = vec![
            ForcedFault::new(429)
                .on_path("/api/v2/tickets/")
                .on_method("PUT"),
        ];
    });
    let mut late = dest.executor.start(
        &event(ticket_update("u1", "t1", 2, "pending", "late")),
        None,
    );
    assert!(matches!(
        late.advance().await,
        Turn::Wait(Wait::Retry { .. })
    ));
    let mut newer = dest.executor.start(
        &event(ticket_update("u2", "t1", 3, "solved", "on time")),
        None,
    );
    assert!(matches!(
        newer.advance().await,
        Turn::Finished(EventOutcome::Delivered)
    ));
    assert!(matches!(
        late.advance().await,
        Turn::Finished(EventOutcome::Delivered)
    ));
    assert_eq!(dest.stats.snapshot().stale, 1);
    let state = emu.state();
    let t = ticket(&state, "t1");
    assert_eq!(t["status"], "solved");
    assert_eq!(comments(t), ["opened", "on time"]);
}

/// A resumed event (it may have been sent before a restart) checks its write before the first
/// send even when a lookup it needed failed first and another event's answer filled the cache
/// meanwhile: the failed lookup is no attempt at the write.
#[tokio::test]
async fn a_resumed_write_is_checked_first_even_after_a_failed_lookup() {
    let emu = emulator().await;
    let before = serving::destination(&emu, Path::new("mappings")).await;
    let viewed = json!({"type": "track", "event": "Viewed", "userId": "u1",
        "messageId": "view-u1", "timestamp": at(2), "properties": {"page": "/pricing"}});
    let (report, _) = send(
        &before,
        before.executor.clone(),
        &[identify("u1", 1, json!({})), viewed.clone()],
    )
    .await;
    assert_eq!(report.dead_letters, 0);
    assert_eq!(list(&emu.state(), "events").len(), 1);

    // After a restart: nothing cached. The first lookup of the user fails.
    let after = serving::destination(&emu, Path::new("mappings")).await;
    emu.configure(|k| {
        k.forced_faults = vec![
            ForcedFault::new(503)
                .on_exact_path("/api/v2/users/search")
                .times(1),
        ];
    });
    let mut resumed = after.executor.start(&event(viewed), None);
    resumed.resumed();
    assert!(matches!(
        resumed.advance().await,
        Turn::Wait(Wait::Retry { .. })
    ));
    // Meanwhile another event of the user teaches its id.
    let mut other = after
        .executor
        .start(&event(identify("u1", 3, json!({}))), None);
    assert!(matches!(
        other.advance().await,
        Turn::Finished(EventOutcome::Delivered)
    ));
    assert!(matches!(
        resumed.advance().await,
        Turn::Finished(EventOutcome::Delivered)
    ));
    assert_eq!(
        list(&emu.state(), "events").len(),
        1,
        "the resumed write was found applied, not recorded again"
    );
    assert_eq!(after.stats.snapshot().confirmed, 1);
}

/// A request to the emulator's API as an agent; gives the answer's status and body.
async fn api(emu: &Emulator, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let answer = reqwest::Client::new()
        .request(method, format!("{}{path}", emu.url()))
        .basic_auth("agent@example.com/token", Some("t"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("answered");
    let status = answer.status().as_u16();
    let text = answer.text().await.expect("a body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Ticket `external_id` with `audits` audits (created, then updated with a comment each
/// time), made through the emulator's API; gives its id.
async fn busy_ticket(emu: &Emulator, external_id: &str, audits: usize) -> u64 {
    emu.configure(|k| k.ticket_updates_per_window = 10_000);
    let (_, created) = api(
        emu,
        reqwest::Method::POST,
        "/api/v2/tickets",
        json!({"ticket": {"external_id": external_id, "subject": "S",
                          "comment": {"body": "opened"},
                          "requester": {"email": "busy@example.com", "name": "Busy"}}}),
    )
    .await;
    let id = created["ticket"]["id"].as_u64().expect("the ticket's id");
    for n in 1..audits {
        let (status, _) = api(
            emu,
            reqwest::Method::PUT,
            &format!("/api/v2/tickets/{id}"),
            json!({"ticket": {"comment": {"body": format!("note {n}")}}}),
        )
        .await;
        assert_eq!(status, 200);
    }
    id
}

/// The check's reads of the ticket's audits, in order.
fn audit_reads(emu: &Emulator, id: u64) -> Vec<Value> {
    let path = format!("/api/v2/tickets/{id}/audits");
    emu.requests()
        .into_iter()
        .filter(|r| r["method"] == "GET" && r["path"] == path.as_str())
        .collect()
}

/// The writes that carried `comment` (single updates or bulk items).
fn writes_of(emu: &Emulator, comment: &str) -> usize {
    emu.requests()
        .iter()
        .filter(|r| r["method"] == "PUT" && r["body"].to_string().contains(comment))
        .count()
}

/// A lost update of `t-busy` (120 audits before it) and the dead letters of its delivery.
async fn lose_an_update_of_a_busy_ticket(
    mappings: &Path,
    knobs: impl FnOnce(&mut zdmap::emulator::RuntimeKnobs),
) -> (Emulator, u64, RunReport, Vec<DeadLetter>) {
    let emu = emulator().await;
    let dest = serving::destination(&emu, mappings).await;
    let id = busy_ticket(&emu, "t-busy", 120).await;
    emu.configure(|k| {
        k.lost_answer_rate = 1.0;
        k.lost_answer = LostAnswer::Error500;
        knobs(k);
    });
    let update = ticket_update("u1", "t-busy", 30, "open", "the lost update");
    let (report, letters) = send(&dest, dest.executor.clone(), &[update]).await;
    (emu, id, report, letters)
}

fn comment_count(emu: &Emulator, comment: &str) -> usize {
    comments(ticket(&emu.state(), "t-busy"))
        .iter()
        .filter(|c| *c == comment)
        .count()
}

/// A ticket with more audits than a page holds: the marker of a lost update is on the second
/// page, which the check reads, so the comment is added once.
#[tokio::test]
async fn a_lost_update_of_a_busy_ticket_is_found_on_a_later_page() {
    let (emu, id, report, letters) =
        lose_an_update_of_a_busy_ticket(Path::new("mappings"), |_| {}).await;
    assert_eq!(report.dead_letters, 0, "{letters:#?}");
    assert_eq!(comment_count(&emu, "the lost update"), 1);
    assert_eq!(writes_of(&emu, "the lost update"), 1, "not sent again");
    let reads = audit_reads(&emu, id);
    assert_eq!(reads.len(), 2, "{reads:#?}");
    assert!(
        reads[1]["query"]
            .as_str()
            .is_some_and(|q| q.contains("page%5Bafter%5D")),
        "the second read follows the next link: {reads:#?}"
    );
}

/// A check that reads its most pages without reaching the end cannot tell: the update is
/// dead-lettered as one that may have been applied, and not sent again.
#[tokio::test]
async fn a_check_that_reads_its_most_pages_without_the_end_sends_nothing_again() {
    let (_dir, mappings) = mappings::mappings_copy();
    mappings::edit(
        &mappings.join("update_ticket.yaml"),
        "has_more, most: 20 }",
        "has_more, most: 1 }",
    );
    let (emu, id, report, letters) = lose_an_update_of_a_busy_ticket(&mappings, |_| {}).await;
    assert_eq!(report.dead_letters, 1, "{letters:#?}");
    let message = &letters[0].message;
    assert!(
        message.contains("read 1 page(s)")
            && message.contains("without reaching the end")
            && message.contains("may have been applied, and is not sent again"),
        "{message}"
    );
    assert_eq!(audit_reads(&emu, id).len(), 1);
    assert_eq!(writes_of(&emu, "the lost update"), 1, "not sent again");
    assert_eq!(comment_count(&emu, "the lost update"), 1);
}

/// A next link that is not on the destination's host (an account reached through a proxy
/// names its own host) is not followed: the update is dead-lettered, not sent again.
#[tokio::test]
async fn a_next_page_off_the_destination_host_is_not_followed() {
    let (emu, id, report, letters) = lose_an_update_of_a_busy_ticket(Path::new("mappings"), |k| {
        k.links_base = Some("https://example.zendesk.com".into());
    })
    .await;
    assert_eq!(report.dead_letters, 1, "{letters:#?}");
    let message = &letters[0].message;
    assert!(
        message.contains("next page is not followed")
            && message.contains("not on the destination host")
            && message.contains("may have been applied, and is not sent again"),
        "{message}"
    );
    assert_eq!(
        audit_reads(&emu, id).len(),
        1,
        "only the first page was read"
    );
    assert_eq!(writes_of(&emu, "the lost update"), 1, "not sent again");
    assert_eq!(comment_count(&emu, "the lost update"), 1);
}

/// A later page that answers 503 is a retry of the check, the write still in doubt: read again
/// from the first page, the marker is found and the update is not sent again.
#[tokio::test]
async fn a_later_page_that_fails_is_checked_again_not_sent_again() {
    let (emu, id, report, letters) = lose_an_update_of_a_busy_ticket(Path::new("mappings"), |k| {
        k.forced_faults.push(
            ForcedFault::new(503)
                .on_method("GET")
                .on_path("/api/v2/tickets/")
                .on_query("page%5Bafter%5D")
                .retry_after(0),
        );
    })
    .await;
    assert_eq!(report.dead_letters, 0, "{letters:#?}");
    let statuses: Vec<u64> = audit_reads(&emu, id)
        .iter()
        .filter_map(|r| r["status"].as_u64())
        .collect();
    assert_eq!(
        statuses,
        [200, 503, 200, 200],
        "page 2 failed, then all read again"
    );
    assert_eq!(writes_of(&emu, "the lost update"), 1, "not sent again");
    assert_eq!(comment_count(&emu, "the lost update"), 1);
}

/// A user with more events of a kind since an event's time than a page holds: the marker of
/// the event whose answer was lost is on the second page of the check, which reads it.
#[tokio::test]
async fn a_lost_user_event_is_found_on_a_later_page_of_the_users_events() {
    let emu = emulator().await;
    let dest = serving::destination(&emu, Path::new("mappings")).await;
    let (report, _) = send(
        &dest,
        dest.executor.clone(),
        &[identify("u1", 0, json!({}))],
    )
    .await;
    assert_eq!(report.dead_letters, 0);
    let uid = list(&emu.state(), "users")[0]["id"]
        .as_u64()
        .expect("the user's id");
    for n in 0..120 {
        let (status, _) = api(
            &emu,
            reqwest::Method::POST,
            &format!("/api/v2/users/{uid}/events"),
            json!({"profile": {"source": "zdmap", "type": "user",
                               "identifiers": [{"type": "email", "value": "u1@example.com"}]},
                   "event": {"source": "zdmap", "type": "Paid", "created_at": at(5),
                             "properties": {"n": n}}}),
        )
        .await;
        assert!(status < 300, "{status}");
    }
    emu.configure(|k| {
        k.lost_answer_rate = 1.0;
        k.lost_answer = LostAnswer::Error500;
    });
    let paid = json!({"type": "track", "event": "Paid", "userId": "u1", "messageId": "p-busy",
                      "timestamp": at(5), "properties": {"amount": 3}});
    let (report, letters) = send(&dest, dest.executor.clone(), &[paid]).await;
    assert_eq!(report.dead_letters, 0, "{letters:#?}");
    let recorded = list(&emu.state(), "events")
        .iter()
        .filter(|e| e["properties"]["zdmap_marker"] == "p-busy:track_event")
        .count();
    assert_eq!(recorded, 1, "recorded once");
    let path = format!("/api/v2/users/{uid}/events");
    let reads: Vec<Value> = emu
        .requests()
        .into_iter()
        .filter(|r| r["method"] == "GET" && r["path"] == path.as_str())
        .collect();
    assert_eq!(reads.len(), 2, "{reads:#?}");
    assert!(
        reads[1]["query"]
            .as_str()
            .is_some_and(|q| q.contains("page%5Bafter%5D") && q.contains("filter%5Btype%5D=Paid")),
        "the second page keeps the filters: {reads:#?}"
    );
}
