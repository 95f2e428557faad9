//! The delivery scheduler on realistic traffic, in `zdmap send` and `zdmap serve`, against the
//! emulator: events that come before the records they need (tracks before identifies, group
//! calls before their users, identifies before their company's group call) wait and are woken
//! by the response that creates the record; a key that waits (a per-user 429, a retry) does not
//! hold up the others, which is measured as events delivered during the wait; an account-wide
//! 429 pauses everyone; a poison event is dead-lettered after its bounded retries; server
//! errors are retried until they pass; an organization held by another process waits at the
//! front of its lines and is let go once settled; an event its source may not own starts no
//! turn until it does (keeping its place), and one its source lost is dropped unsettled.

use crate::support::http::{Metrics, get, post_batch};
use crate::support::serving;
use crate::support::state::count;
use crate::support::wait::eventually;

use serde_json::{Value, json};
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use zdmap::deliver::EventOutcome;
use zdmap::deliver::dispatch::{DispatchOptions, Incoming, Ownership, RecordWait, Sink, dispatch};
use zdmap::deliver::holds::{Holding, KeyHolds, Taking};
use zdmap::deliver::run::{RunReport, run};
use zdmap::deliver::setup::Destination;
use zdmap::deliver::{DeadLetter, DeadLetterWriter};
use zdmap::emulator::{Emulator, EmulatorOptions, ForcedFault, RuntimeKnobs};
use zdmap::mapping::event::Event;
use zdmap::serve::{Server, WorkerOptions};

async fn emulator(knobs: RuntimeKnobs) -> Emulator {
    Emulator::start(EmulatorOptions {
        knobs,
        ..EmulatorOptions::default()
    })
    .await
    .expect("emulator")
}

async fn destination(emu: &Emulator) -> Destination {
    serving::destination(emu, Path::new("mappings")).await
}

/// `zdmap send` of `events`; a missing record may wait `grace` after the input ends.
pub(crate) async fn send(
    dest: &Destination,
    events: &[Value],
    grace: Duration,
) -> (RunReport, Vec<DeadLetter>) {
    send_with(dest, events, grace, DispatchOptions::default()).await
}

pub(crate) async fn send_with(
    dest: &Destination,
    events: &[Value],
    grace: Duration,
    options: DispatchOptions,
) -> (RunReport, Vec<DeadLetter>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dead.ndjson");
    let writer = Arc::new(DeadLetterWriter::open(&path).expect("dead letters"));
    let input: String = events.iter().map(|e| format!("{e}\n")).collect();
    let options = DispatchOptions {
        concurrency: 4,
        wait_for_records: RecordWait::AfterInput(grace),
        ..options
    };
    // A guard, not a measurement: a run that relied on its waits running out would take
    // `grace` (ten minutes below) instead of moments.
    let report = tokio::time::timeout(
        Duration::from_secs(120),
        run(
            dest.executor.clone(),
            Cursor::new(input.into_bytes()),
            writer,
            dest.stats.clone(),
            options,
        ),
    )
    .await
    .expect("the run ends without waiting out its waits")
    .expect("run");
    let letters = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| DeadLetter::parse(&serde_json::from_str(l).ok()?))
        .collect();
    (report, letters)
}

fn identify(user: &str, traits: Value) -> Value {
    json!({"type": "identify", "userId": user, "traits": traits})
}

/// Identifies of `n` users `{prefix}0`, `{prefix}1`, ..., each with an email and a name.
fn new_users(prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let user = format!("{prefix}{i}");
            let email = format!("{user}@example.com");
            identify(&user, json!({"email": email, "name": "U"}))
        })
        .collect()
}

/// The first user upsert is answered by an account-wide 429 with `Retry-After: 2`.
fn account_limited() -> RuntimeKnobs {
    RuntimeKnobs {
        forced_faults: vec![
            ForcedFault::new(429)
                .on_path("/api/v2/users/create_or_update")
                .retry_after(2),
        ],
        ..RuntimeKnobs::default()
    }
}

fn find<'a>(state: &'a Value, what: &str, key: &str, value: &str) -> Option<&'a Value> {
    state[what].as_array()?.iter().find(|x| x[key] == value)
}

/// Tracks before their users' identifies, a group call before its user's identify, an
/// identify before its company's group call, and a user identified without a name.
fn shuffled_dependencies() -> Vec<Value> {
    vec![
        json!({"type": "track", "event": "Signed In", "userId": "u1", "properties": {"n": 1}}),
        json!({"type": "track", "event": "Viewed", "userId": "u1", "properties": {"n": 2}}),
        json!({"type": "group", "groupId": "org-a", "userId": "u2", "traits": {"name": "A"}}),
        identify(
            "u3",
            json!({"email": "u3@example.com", "name": "Three", "company": {"id": "org-b"}}),
        ),
        identify("u1", json!({"email": "u1@example.com"})),
        identify("u2", json!({"email": "u2@example.com", "name": "Two"})),
        json!({"type": "group", "groupId": "org-b", "userId": "u4", "traits": {"name": "B"}}),
        identify("u4", json!({"email": "u4@example.com", "name": "Four"})),
    ]
}

fn assert_shuffled_dependencies_delivered(state: &Value) {
    let u1 = find(state, "users", "external_id", "u1").expect("u1");
    assert_eq!(
        u1["name"], "u1@example.com",
        "a user without a name is named by its email"
    );
    let events: Vec<&Value> = state["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["user_id"] == u1["id"] || e["profile"].is_object())
        .collect();
    assert_eq!(
        count(state, "events"),
        2,
        "both tracks recorded: {events:?}"
    );
    let member = |user: &str, org: &str| {
        let u = find(state, "users", "external_id", user).expect("user");
        let o = find(state, "organizations", "external_id", org).expect("organization");
        state["memberships"]
            .as_array()
            .expect("memberships")
            .iter()
            .any(|m| m["user_id"] == u["id"] && m["organization_id"] == o["id"])
    };
    assert!(
        member("u2", "org-a"),
        "the group call's user joined once it existed"
    );
    assert!(
        member("u3", "org-b"),
        "the identify joined its company once it existed"
    );
    assert!(member("u4", "org-b"));
}

#[tokio::test]
async fn events_before_their_records_wait_and_are_delivered_in_send() {
    let emu = emulator(RuntimeKnobs::default()).await;
    let dest = destination(&emu).await;
    let (report, letters) = send(&dest, &shuffled_dependencies(), Duration::from_secs(600)).await;
    assert_eq!(report.dead_letters, 0, "{letters:#?}");
    assert_shuffled_dependencies_delivered(&emu.state());
}

#[tokio::test]
async fn events_held_behind_waiting_ones_never_stop_the_input() {
    // A backfill exported per type: every group call before any identify. Each organization's
    // group calls queue behind the first, which waits for its user; the users behind them wait
    // too. With room for only a few such events the input must still be read to its end, where
    // the identifies are.
    let emu = emulator(RuntimeKnobs::default()).await;
    let dest = destination(&emu).await;
    let users: Vec<String> = (0..24).map(|i| format!("u{i}")).collect();
    let mut events: Vec<Value> = users
        .iter()
        .enumerate()
        .map(|(i, u)| json!({"type": "group", "groupId": format!("org-{}", i % 3), "userId": u, "traits": {"name": format!("Org {}", i % 3)}}))
        .collect();
    events.extend(
        users
            .iter()
            .map(|u| json!({"type": "track", "event": "Viewed", "userId": u})),
    );
    events.extend(
        users
            .iter()
            .map(|u| identify(u, json!({"email": format!("{u}@example.com"), "name": "U"}))),
    );
    let options = DispatchOptions {
        max_active: 4,
        ..DispatchOptions::default()
    };
    let (report, letters) = send_with(&dest, &events, Duration::from_secs(600), options).await;
    assert_eq!(report.dead_letters, 0, "{letters:#?}");
    let state = emu.state();
    assert_eq!(count(&state, "memberships"), 24);
    assert_eq!(count(&state, "events"), 24);
}

#[tokio::test]
async fn a_record_that_never_comes_is_dead_lettered_with_its_lookup() {
    let emu = emulator(RuntimeKnobs::default()).await;
    let dest = destination(&emu).await;
    let events = [
        json!({"type": "track", "event": "Viewed", "userId": "ghost"}),
        identify("u1", json!({"email": "u1@example.com", "name": "One"})),
    ];
    let (report, letters) = send(&dest, &events, Duration::from_millis(200)).await;
    assert_eq!(report.dead_letters, 1);
    assert_eq!(letters[0].action.as_deref(), Some("track_event"));
    assert!(
        letters[0].message.contains("lookup found nothing") && letters[0].message.contains("ghost"),
        "{}",
        letters[0].message
    );
    assert!(find(&emu.state(), "users", "external_id", "u1").is_some());
}

/// The emulator's request log, in order: (user external id or path, status, at_ms).
fn upserts(emu: &Emulator) -> Vec<(String, u64, u64)> {
    emu.requests()
        .iter()
        .filter(|r| r["path"] == "/api/v2/users/create_or_update")
        .map(|r| {
            (
                r["body"]["user"]["external_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                r["status"].as_u64().unwrap_or_default(),
                r["at_ms"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_per_user_rate_limit_holds_that_user_while_the_others_flow_in_send() {
    // One upsert per user per 3 s window: a user identified twice waits out a per-user 429.
    let emu = emulator(RuntimeKnobs {
        upsert_user_per_window: 1,
        rate_window_secs: 3,
        ..RuntimeKnobs::default()
    })
    .await;
    let dest = destination(&emu).await;
    let mut events = vec![
        identify("busy", json!({"email": "busy@example.com", "name": "Busy"})),
        identify(
            "busy",
            json!({"email": "busy@example.com", "name": "Busy B."}),
        ),
    ];
    events.extend(new_users("other-", 30));
    // What the progress line shows meanwhile: the most keys it saw waiting.
    let stats = dest.stats.clone();
    let watch = tokio::spawn(async move {
        let mut most = 0;
        loop {
            most = most.max(stats.keys_waiting());
            if most > 0 {
                return most;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let (report, letters) = send(&dest, &events, Duration::from_secs(1)).await;
    assert_eq!(report.dead_letters, 0, "{letters:#?}");
    assert!(
        watch.is_finished(),
        "the progress line showed the waiting user"
    );
    assert_eq!(watch.await.expect("watch"), 1);
    let log = upserts(&emu);
    let limited = log
        .iter()
        .position(|(u, status, _)| u == "busy" && *status == 429)
        .expect("the second identify met the per-user limit");
    let retried = log
        .iter()
        .rposition(|(u, status, _)| u == "busy" && *status < 300)
        .expect("and went through after its wait");
    let delivered_before = |i: usize| {
        log[..retried]
            .iter()
            .any(|(u, status, _)| *u == format!("other-{i}") && *status < 300)
    };
    assert!(
        (0..30).all(delivered_before),
        "every other user was delivered before the busy user's wait ended: {log:?}"
    );
    let during = log[limited..retried]
        .iter()
        .filter(|(u, status, _)| u.starts_with("other-") && *status < 300)
        .count();
    assert!(during > 0, "events delivered during the wait: {log:?}");
    assert!(
        log[retried].2 >= log[limited].2 + 1000,
        "the busy user waited for its Retry-After: {log:?}"
    );
    assert!(
        dest.executor.transport().budget().paused_until().is_none(),
        "a per-user limit never pauses the destination"
    );
    let busy = find(&emu.state(), "users", "external_id", "busy").cloned();
    assert_eq!(
        busy.expect("busy")["name"],
        "Busy B.",
        "its later change applied last"
    );
}

/// Holds that another process has for a while: the first `refusals` takes are refused; every
/// take and release is recorded.
#[derive(Debug, Default)]
struct Contended {
    refusals: std::sync::Mutex<usize>,
    taken: std::sync::Mutex<Vec<Vec<String>>>,
    released: std::sync::Mutex<Vec<Vec<String>>>,
}

#[derive(Debug)]
struct ContendedHolds(Arc<Contended>);

impl KeyHolds for ContendedHolds {
    fn take(&self, keys: Vec<String>) -> Taking {
        let state = self.0.clone();
        Box::pin(async move {
            let mut refusals = state.refusals.lock().expect("lock");
            if *refusals > 0 {
                *refusals -= 1;
                return Holding::Elsewhere;
            }
            state.taken.lock().expect("lock").push(keys);
            Holding::Held
        })
    }

    fn release(&self, keys: Vec<String>) {
        self.0.released.lock().expect("lock").push(keys);
    }
}

#[tokio::test]
async fn an_organization_held_elsewhere_waits_keeping_its_place_while_the_others_flow() {
    let emu = emulator(RuntimeKnobs::default()).await;
    let dest = destination(&emu).await;
    let mut events = new_users("u", 2);
    events.push(json!({"type": "group", "groupId": "acme", "userId": "u0",
                       "traits": {"name": "Acme"}}));
    // u0's later change waits behind its group call; u1's goes on meanwhile.
    events.push(identify(
        "u0",
        json!({"email": "u0@example.com", "name": "Later"}),
    ));
    events.push(identify(
        "u1",
        json!({"email": "u1@example.com", "name": "Other"}),
    ));
    let contended = Arc::new(Contended {
        refusals: std::sync::Mutex::new(3),
        ..Contended::default()
    });
    let options = DispatchOptions {
        holds: Arc::new(ContendedHolds(contended.clone())),
        ..DispatchOptions::default()
    };
    let (report, letters) = send_with(&dest, &events, Duration::from_secs(1), options).await;
    assert_eq!(report.dead_letters, 0, "{letters:#?}");
    assert_eq!(*contended.refusals.lock().expect("lock"), 0, "tried again");
    assert_eq!(*contended.taken.lock().expect("lock"), [["group:acme"]]);
    assert_eq!(
        *contended.released.lock().expect("lock"),
        [["group:acme"]],
        "let go once settled"
    );

    let log = emu.requests();
    let at = |what: &dyn Fn(&Value) -> bool| {
        log.iter()
            .position(what)
            .unwrap_or_else(|| panic!("not in the log: {log:#?}"))
    };
    let organization = at(&|e| e["path"] == "/api/v2/organizations/create_or_update");
    let membership = at(&|e| e["path"] == "/api/v2/organization_memberships");
    let later = at(&|e| e["body"]["user"]["name"] == "Later");
    let other = at(&|e| e["body"]["user"]["name"] == "Other");
    assert!(
        other < organization,
        "u1 flowed while acme waited: {log:#?}"
    );
    assert!(
        membership < later,
        "u0's later change waited behind: {log:#?}"
    );
}

#[tokio::test]
async fn an_account_wide_429_pauses_every_key_in_send() {
    let emu = emulator(account_limited()).await;
    let dest = destination(&emu).await;
    let events: Vec<Value> = new_users("u", 12);
    let (report, letters) = send(&dest, &events, Duration::from_secs(1)).await;
    assert_eq!(report.dead_letters, 0, "{letters:#?}");
    assert_nothing_sent_during_the_account_pause(&emu, 2);
    assert_eq!(count(&emu.state(), "users"), 12);
}

/// After the account-wide 429 (whose `Retry-After` is `seconds`), no request was answered
/// during the pause but those already on the wire when it came.
fn assert_nothing_sent_during_the_account_pause(emu: &Emulator, seconds: u64) {
    let log = upserts(emu);
    let limited = log
        .iter()
        .position(|(_, status, _)| *status == 429)
        .expect("one account 429");
    let at = log[limited].2;
    let during = log[limited + 1..]
        .iter()
        .filter(|(_, _, t)| *t > at + 100 && *t + 100 < at + seconds * 1000)
        .count();
    assert_eq!(during, 0, "{log:?}");
}

#[tokio::test]
async fn a_poison_event_is_dead_lettered_after_its_bounded_retries_in_send() {
    let emu = emulator(RuntimeKnobs::default()).await;
    let dest = destination(&emu).await;
    let events = vec![
        identify("u-a", json!({"email": "taken@example.com", "name": "A"})),
        identify("u-b", json!({"email": "b@example.com", "name": "B"})),
        // The email of u-a: 422 DuplicateValue, which `upsert_user` maps to `retry`.
        identify("u-b", json!({"email": "taken@example.com", "name": "B"})),
        identify("u-c", json!({"email": "c@example.com", "name": "C"})),
        identify("u-b", json!({"email": "b@example.com", "name": "B again"})),
    ];
    let (report, letters) = send(&dest, &events, Duration::from_secs(1)).await;
    assert_eq!(report.dead_letters, 1, "{letters:#?}");
    assert_eq!(letters[0].status, Some(422));
    assert_eq!(letters[0].code.as_deref(), Some("DuplicateValue"));
    assert_eq!(
        letters[0].attempts, 3,
        "retries.client_error_tries of destination.yaml"
    );
    let state = emu.state();
    assert_eq!(count(&state, "users"), 3);
    let b = find(&state, "users", "external_id", "u-b").expect("u-b");
    assert_eq!(
        b["name"], "B again",
        "the key went on after the poison event"
    );
}

#[tokio::test]
async fn server_errors_are_retried_until_they_pass_in_send() {
    let emu = emulator(RuntimeKnobs {
        fail_rate: 0.3,
        ..RuntimeKnobs::default()
    })
    .await;
    let dest = destination(&emu).await;
    let mut events = Vec::new();
    for i in 0..60 {
        let user = format!("u{i}");
        events.push(identify(
            &user,
            json!({"email": format!("{user}@example.com"), "name": "U"}),
        ));
        events.push(json!({"type": "track", "event": "Viewed", "userId": user}));
        events.push(json!({"type": "group", "groupId": format!("org-{}", i % 7), "userId": user, "traits": {"name": format!("Org {}", i % 7)}}));
    }
    let (report, letters) = send(&dest, &events, Duration::from_secs(2)).await;
    assert_eq!(report.dead_letters, 0, "{letters:#?}");
    assert!(dest.stats.snapshot().retries > 0);
    let state = emu.state();
    assert_eq!(count(&state, "users"), 60);
    assert_eq!(count(&state, "organizations"), 7);
    assert_eq!(count(&state, "memberships"), 60);
    assert_eq!(
        count(&state, "events"),
        60,
        "a failed request applied nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// zdmap serve

async fn serve(emu: &Emulator, data: &Path, wait_for_records: Duration) -> Server {
    // These tests watch single requests (tests/it/batching.rs covers bulk requests).
    let setup = serving::Setup {
        workers: WorkerOptions {
            concurrency: 4,
            poll: Duration::from_millis(100),
            wait_for_records,
            batch_window: None,
            ..WorkerOptions::default()
        },
        ..serving::Setup::default()
    };
    serving::start(emu, data, setup).await
}

async fn readyz(server: &Server) -> (u16, Value) {
    let (status, body) = get(&format!("{}/readyz", server.url())).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn delivered(server: &Server) -> u64 {
    server
        .shared()
        .metrics
        .delivered
        .load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_before_their_records_wait_and_are_woken_by_them_in_serve() {
    let emu = emulator(RuntimeKnobs::default()).await;
    let data = tempfile::tempdir().expect("tempdir");
    // An hour's wait: only a response that creates the record can wake these in time.
    let server = serve(&emu, data.path(), Duration::from_secs(3600)).await;
    let events = shuffled_dependencies();
    let (early, late) = events.split_at(4);
    assert_eq!(
        post_batch(&server.url(), Some(serving::KEY), early).await,
        200
    );
    eventually(
        "the early events wait for their records",
        Duration::from_secs(60),
        async || {
            let (status, body) = readyz(&server).await;
            status == 200 && body["delivery"]["keys_waiting"]["missing_record"].as_u64() >= Some(3)
        },
    )
    .await;
    assert!(
        count(&emu.state(), "events") == 0,
        "the tracks wait for their user"
    );
    assert_eq!(
        post_batch(&server.url(), Some(serving::KEY), late).await,
        200
    );
    eventually(
        "everything delivered",
        Duration::from_secs(60),
        async || delivered(&server) == events.len() as u64,
    )
    .await;
    assert_shuffled_dependencies_delivered(&emu.state());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiting_user_does_not_hold_up_the_others_in_serve() {
    // One upsert per user a minute: the busy user's second identify waits about a minute.
    let emu = emulator(RuntimeKnobs {
        upsert_user_per_window: 1,
        ..RuntimeKnobs::default()
    })
    .await;
    let data = tempfile::tempdir().expect("tempdir");
    let server = serve(&emu, data.path(), Duration::from_secs(60)).await;
    assert_eq!(
        post_batch(
            &server.url(),
            Some(serving::KEY),
            &[
                identify("busy", json!({"email": "busy@example.com", "name": "Busy"})),
                identify(
                    "busy",
                    json!({"email": "busy@example.com", "name": "Busy B."}),
                ),
            ]
        )
        .await,
        200
    );
    eventually(
        "the busy user waits out a per-user 429",
        Duration::from_secs(60),
        async || {
            let (status, body) = readyz(&server).await;
            status == 200 && body["delivery"]["keys_waiting"]["rate_limited"].as_u64() == Some(1)
        },
    )
    .await;
    let before = delivered(&server);
    let others: Vec<Value> = new_users("o", 40);
    assert_eq!(
        post_batch(&server.url(), Some(serving::KEY), &others).await,
        200
    );
    eventually(
        "the others delivered",
        Duration::from_secs(60),
        async || delivered(&server) == before + 40,
    )
    .await;
    let (status, body) = readyz(&server).await;
    assert_eq!(
        status, 200,
        "one waiting key does not make the server unready"
    );
    assert_eq!(
        body["delivery"]["keys_waiting"]["rate_limited"].as_u64(),
        Some(1),
        "40 events delivered during the busy user's wait: {body}"
    );
    let metrics = Metrics::read(&server.url()).await;
    assert_eq!(
        metrics.get("zdmap_delivery_keys_waiting{reason=\"rate_limited\"}"),
        Some(1.0),
        "{metrics}"
    );
    let busy = find(&emu.state(), "users", "external_id", "busy").cloned();
    assert_eq!(
        busy.expect("busy")["name"],
        "Busy",
        "its second identify still waits"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_event_is_dead_lettered_and_its_user_goes_on_in_serve() {
    let emu = emulator(RuntimeKnobs::default()).await;
    let data = tempfile::tempdir().expect("tempdir");
    let server = serve(&emu, data.path(), Duration::from_secs(60)).await;
    let events = [
        identify("u-a", json!({"email": "taken@example.com", "name": "A"})),
        identify("u-b", json!({"email": "b@example.com", "name": "B"})),
        identify("u-b", json!({"email": "taken@example.com", "name": "B"})),
        identify("u-b", json!({"email": "b@example.com", "name": "B again"})),
    ];
    assert_eq!(
        post_batch(&server.url(), Some(serving::KEY), &events[..2]).await,
        200
    );
    eventually("the users exist", Duration::from_secs(60), async || {
        delivered(&server) == 2
    })
    .await;
    assert_eq!(
        post_batch(&server.url(), Some(serving::KEY), &events[2..]).await,
        200
    );
    eventually(
        "the poison event dead-lettered, the next delivered",
        Duration::from_secs(60),
        async || {
            delivered(&server) == 3
                && server
                    .shared()
                    .metrics
                    .dead_lettered
                    .load(std::sync::atomic::Ordering::Relaxed)
                    == 1
        },
    )
    .await;
    let b = find(&emu.state(), "users", "external_id", "u-b").cloned();
    assert_eq!(b.expect("u-b")["name"], "B again");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_account_wide_429_pauses_every_key_in_serve() {
    let emu = emulator(account_limited()).await;
    let data = tempfile::tempdir().expect("tempdir");
    let server = serve(&emu, data.path(), Duration::from_secs(60)).await;
    let events: Vec<Value> = new_users("u", 12);
    assert_eq!(
        post_batch(&server.url(), Some(serving::KEY), &events).await,
        200
    );
    eventually(
        "every user delivered after the pause",
        Duration::from_secs(60),
        async || delivered(&server) == 12,
    )
    .await;
    assert_nothing_sent_during_the_account_pause(&emu, 2);
    server.shutdown().await;
}

/// A source that owns user `u0`'s events only once `owned` is set (unsure before), has lost
/// `u1`'s, and owns the others; it records what is settled and what is dropped.
#[derive(Default)]
struct Fenced {
    owned: Arc<std::sync::atomic::AtomicBool>,
    asked_unsure: usize,
    settled: Vec<String>,
    dropped: Vec<String>,
}

impl Sink for Fenced {
    type Ticket = String;

    fn settled(&mut self, ticket: String, outcome: EventOutcome) -> bool {
        assert!(matches!(outcome, EventOutcome::Delivered), "{outcome:?}");
        self.settled.push(ticket);
        true
    }

    fn refused(&mut self, _status: u16, _message: &str) -> bool {
        false
    }

    fn ownership(&mut self, ticket: &String) -> Ownership {
        match ticket.split(':').next() {
            Some("u0") if !self.owned.load(std::sync::atomic::Ordering::SeqCst) => {
                self.asked_unsure += 1;
                Ownership::Unsure
            }
            Some("u1") => Ownership::Lost,
            _ => Ownership::Ours,
        }
    }

    fn dropped(&mut self, ticket: String) {
        self.dropped.push(ticket);
    }
}

#[tokio::test]
async fn no_turn_starts_for_an_event_its_source_may_not_own_and_a_lost_one_is_dropped() {
    let emu = emulator(RuntimeKnobs::default()).await;
    let dest = destination(&emu).await;
    let names = ["first", "second", "third"];
    let events: Vec<(String, Value)> = names
        .iter()
        .flat_map(|name| {
            (0..3).map(move |u| {
                let user = format!("u{u}");
                let email = format!("{user}@example.com");
                let event = identify(&user, json!({"email": email, "name": name}));
                (format!("{user}:{name}"), event)
            })
        })
        .collect();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for (id, (ticket, value)) in events.into_iter().enumerate() {
        let event = Event::from_value(value).expect("event");
        let incoming = Incoming {
            id: id as u64,
            delivery: dest.executor.start(&event, None),
            keys: event.ordering_keys(),
            shared: event.shared_keys(),
            since: tokio::time::Instant::now(),
            ticket,
            size: 0,
        };
        tx.send(incoming).await.expect("queued");
    }
    drop(tx);
    let mut sink = Fenced::default();
    let owned = sink.owned.clone();
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(async move {
        dispatch(rx, &mut sink, &DispatchOptions::default(), stop).await;
        sink
    });

    // u2's events go; u0's wait (asked again now and then) and u1's are dropped.
    eventually("u2 delivered", Duration::from_secs(60), async || {
        find(&emu.state(), "users", "external_id", "u2").is_some_and(|u| u["name"] == "third")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(find(&emu.state(), "users", "external_id", "u0").is_none());
    owned.store(true, std::sync::atomic::Ordering::SeqCst);
    let sink = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("dispatch ends")
        .expect("dispatch");

    assert!(sink.asked_unsure >= 2, "asked again while unsure");
    let mut dropped = sink.dropped.clone();
    dropped.sort();
    assert_eq!(dropped, ["u1:first", "u1:second", "u1:third"]);
    assert!(find(&emu.state(), "users", "external_id", "u1").is_none());
    let of = |user: &str| -> Vec<&str> {
        sink.settled
            .iter()
            .filter_map(|t| t.strip_prefix(user)?.strip_prefix(':'))
            .collect()
    };
    assert_eq!(of("u0"), names, "u0's events in order once owned");
    assert_eq!(of("u2"), names);
    let u0_names: Vec<String> = upserts_named(&emu, "u0");
    assert_eq!(u0_names, names, "u0's changes reached Zendesk in order");
}

/// The names `user`'s upserts carried, in the order they reached the emulator.
fn upserts_named(emu: &Emulator, user: &str) -> Vec<String> {
    emu.requests()
        .iter()
        .filter(|r| {
            r["path"] == "/api/v2/users/create_or_update"
                && r["body"]["user"]["external_id"] == user
        })
        .filter_map(|r| r["body"]["user"]["name"].as_str().map(str::to_owned))
        .collect()
}

/// A source that records the events settled, and how.
#[derive(Default)]
struct Recorded {
    settled: Arc<std::sync::Mutex<Vec<(String, bool)>>>,
}

impl Sink for Recorded {
    type Ticket = String;

    fn settled(&mut self, ticket: String, outcome: EventOutcome) -> bool {
        let delivered = matches!(outcome, EventOutcome::Delivered);
        self.settled.lock().expect("lock").push((ticket, delivered));
        true
    }

    fn refused(&mut self, _status: u16, _message: &str) -> bool {
        false
    }
}

#[tokio::test]
async fn a_group_call_waiting_for_its_membership_does_not_hold_up_its_organization() {
    // Once a group call's organization upsert is done, what it has left (its user's
    // membership) is ordered on the user, not on the organization: the organization's next
    // group calls go on while it waits. Here the first waits for a user that never comes.
    let emu = emulator(RuntimeKnobs::default()).await;
    let dest = destination(&emu).await;
    let mut setup = new_users("u", 6);
    setup.push(json!({"type": "group", "groupId": "acme", "traits": {"name": "Acme"}}));
    let (report, _) = send(&dest, &setup, Duration::from_secs(5)).await;
    assert_eq!(report.dead_letters, 0);

    let group = |user: &str| {
        json!({"type": "group", "groupId": "acme", "userId": user,
               "traits": {"name": "Acme", "plan": user}})
    };
    let events: Vec<Value> = std::iter::once(group("nobody"))
        .chain((0..6).map(|i| group(&format!("u{i}"))))
        .collect();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for (id, value) in events.into_iter().enumerate() {
        let event = Event::from_value(value).expect("event");
        let ticket = event.value()["userId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let incoming = Incoming {
            id: id as u64,
            delivery: dest.executor.start(&event, None),
            keys: event.ordering_keys(),
            shared: event.shared_keys(),
            since: tokio::time::Instant::now(),
            ticket,
            size: 0,
        };
        tx.send(incoming).await.expect("queued");
    }
    let sink = Recorded::default();
    let settled = sink.settled.clone();
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let options = DispatchOptions {
        concurrency: 4,
        wait_for_records: RecordWait::AfterInput(Duration::from_millis(100)),
        ..DispatchOptions::default()
    };
    let run = tokio::spawn(async move {
        let mut sink = sink;
        dispatch(rx, &mut sink, &options, stop).await;
    });

    // The input is still open, so the first waits for its user; the others are delivered.
    eventually(
        "the other members delivered",
        Duration::from_secs(30),
        async || settled.lock().expect("lock").len() == 6,
    )
    .await;
    let done = settled.lock().expect("lock").clone();
    assert!(
        done.iter()
            .all(|(user, delivered)| user != "nobody" && *delivered),
        "{done:?}"
    );
    let state = emu.state();
    assert_eq!(count(&state, "memberships"), 6, "{state}");
    assert_eq!(
        find(&state, "organizations", "external_id", "acme")
            .map(|o| o["organization_fields"]["plan"].clone()),
        Some(json!("u5")),
        "the organization's upserts applied in order: {state}"
    );

    // The input ends: the first one's wait is over, and it is dead-lettered.
    drop(tx);
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("dispatch ends")
        .expect("dispatch");
    let done = settled.lock().expect("lock").clone();
    assert_eq!(done.last(), Some(&("nobody".to_owned(), false)), "{done:?}");
}
