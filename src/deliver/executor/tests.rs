//! The delivery core against a scripted Zendesk: for each answer a turn can get, what the turn
//! says (settled, or why it waits), what it learned and what it sent, using the shipped
//! mappings.

use super::{BatchAnswer, Delivery, EventOutcome, Executor, LearnedKey, Turn, Wait};
use crate::deliver::retry::{self, PauseScope};
use crate::deliver::{
    Budget, Client, ClientOptions, Credentials, DeadLetter, Disposition, LookupCache, Response,
    ResponseHeaders, RetryPolicy, Stats, Target, Transport, TransportError, ZendeskApi,
};
use crate::mapping::config::Config;
use crate::mapping::event::Event;
use crate::mapping::plan::ActionName;
use crate::mapping::request::{Method, Request};
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One scripted answer: a response, or a request that got none.
type Reply = Result<Response, TransportError>;

fn reply(status: u16, body: Value) -> Reply {
    Ok(Response {
        status,
        headers: ResponseHeaders::default(),
        body,
        elapsed: Duration::ZERO,
        job: None,
    })
}

/// A 429 of the account's limit, to be tried again after `seconds`.
fn rate_limited(seconds: u64) -> Reply {
    Ok(Response {
        headers: ResponseHeaders {
            retry_after: Some(Duration::from_secs(seconds)),
            ..ResponseHeaders::default()
        },
        ..reply(429, json!({"error": "TooManyRequests"}))?
    })
}

/// A request whose answer never came: it may have been applied.
fn timeout(method: Method, path: &str) -> Reply {
    Err(TransportError::Timeout {
        method,
        url: format!("http://127.0.0.1:9{path}"),
        after: Duration::from_secs(30),
    })
}

/// Zendesk as a script: the answers to each method and path, in order, and the requests sent.
/// Each answer is judged as the transport judges it ([`retry::judge`]); a request without a
/// scripted answer fails the test.
#[derive(Debug, Default)]
struct Script {
    replies: Mutex<HashMap<(Method, String), VecDeque<Reply>>>,
    sent: Mutex<Vec<Request>>,
}

impl Script {
    /// `method path` is answered with `replies`, one per attempt, after those scripted before.
    fn on(&self, method: Method, path: &str, replies: impl IntoIterator<Item = Reply>) {
        self.replies
            .lock()
            .expect("script")
            .entry((method, path.to_owned()))
            .or_default()
            .extend(replies);
    }

    /// How many requests went to `method path`.
    fn sent(&self, method: Method, path: &str) -> usize {
        let sent = self.sent.lock().expect("script");
        sent.iter()
            .filter(|r| r.method == method && r.path == path)
            .count()
    }
}

impl ZendeskApi for Script {
    fn attempt<'a>(
        &'a self,
        req: &'a Request,
        accept: &'a (dyn Fn(&Response) -> bool + Sync),
    ) -> BoxFuture<'a, Disposition> {
        self.sent.lock().expect("script").push(req.clone());
        let reply = self
            .replies
            .lock()
            .expect("script")
            .get_mut(&(req.method, req.path.clone()))
            .and_then(VecDeque::pop_front);
        let Some(reply) = reply else {
            panic!("no answer scripted for {} {}", req.method, req.path);
        };
        let budget = Budget::unlimited();
        let disposition = retry::judge(&budget, &RetryPolicy::default(), reply, accept);
        Box::pin(std::future::ready(disposition))
    }
}

/// An executor running the shipped mappings, whose requests `script` answers.
fn executor(script: &Arc<Script>) -> Arc<Executor> {
    let mappings = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    let config = Config::load(&mappings, &[]).expect("the shipped mappings load");
    // Nothing is sent through it: turns count into its stats, and a check's next page is read
    // against its target.
    let client = Client::new(
        Target::emulator(([127, 0, 0, 1], 9).into()),
        Credentials::oauth("unused"),
        ClientOptions::default(),
    )
    .expect("a client");
    let transport = Transport::new(
        client,
        Arc::new(Budget::unlimited()),
        RetryPolicy::default(),
        Arc::new(Stats::new()),
    );
    let mut executor = Executor::new(Arc::new(config), transport, Arc::new(LookupCache::new()));
    executor.api = script.clone();
    Arc::new(executor)
}

const AT: &str = "2026-03-01T10:00:01Z";

fn event(value: Value) -> Event {
    Event::from_value(value).expect("an event")
}

/// User `user` identified with an email and a name (`upsert_user`).
fn identify(user: &str) -> Event {
    event(
        json!({"type": "identify", "userId": user, "messageId": format!("id-{user}"),
        "timestamp": AT, "traits": {"email": format!("{user}@example.com"), "name": user}}),
    )
}

/// User `user` viewed a page (`track_event`, not idempotent: its `check` reads the user's
/// events back for the marker `view-{user}:track_event`); `zendesk_id` spares the user lookup.
fn viewed(user: &str, zendesk_id: Option<u64>) -> Event {
    event(json!({"type": "track", "event": "Viewed", "userId": user,
        "messageId": format!("view-{user}"), "timestamp": AT,
        "context": {"zendesk_user_id": zendesk_id}, "properties": {"page": "/pricing"}}))
}

/// Ticket `external_id` opened (`create_ticket`).
fn ticket_created(external_id: &str) -> Event {
    event(
        json!({"type": "track", "event": "Ticket Created", "userId": "u1",
        "messageId": format!("new-{external_id}"), "timestamp": AT,
        "context": {"traits": {"email": "u1@example.com", "name": "U1"}},
        "properties": {"subject": "S", "comment": "opened", "external_id": external_id}}),
    )
}

/// Ticket `ticket` updated (`update_ticket`, found by its external id or, as a number, by its
/// Zendesk id).
fn ticket_updated(ticket: Value) -> Event {
    let found_by = if ticket.is_number() {
        "ticket_id"
    } else {
        "external_id"
    };
    event(
        json!({"type": "track", "event": "Ticket Updated", "userId": "u1",
        "messageId": "upd-1", "timestamp": AT,
        "properties": {found_by: ticket, "status": "pending", "comment": "hi"}}),
    )
}

/// The user's events as the check reads them: with `marker`, or none.
fn user_events(marker: Option<&str>) -> Reply {
    let events: Vec<Value> = marker
        .map(|m| json!({"type": "Viewed", "properties": {"page": "/pricing", "zdmap_marker": m}}))
        .into_iter()
        .collect();
    reply(
        200,
        json!({"events": events, "meta": {"has_more": false}, "links": {"next": null}}),
    )
}

fn key(resolver: &str, by: &str, key: &str) -> LearnedKey {
    LearnedKey {
        resolver: resolver.into(),
        by: by.into(),
        key: key.into(),
    }
}

/// The turn's wait; fails the test when the event is settled.
async fn waits(delivery: &mut Delivery) -> Wait {
    match delivery.advance().await {
        Turn::Wait(wait) => wait,
        Turn::Finished(outcome) => panic!("expected a wait, the event is settled: {outcome:?}"),
    }
}

/// The turn settles the event; its outcome.
async fn settles(delivery: &mut Delivery) -> EventOutcome {
    match delivery.advance().await {
        Turn::Finished(outcome) => outcome,
        Turn::Wait(wait) => panic!("expected the event settled, it waits: {wait:?}"),
    }
}

/// The turn settles the event with one dead letter; the letter.
async fn dead_letter(delivery: &mut Delivery) -> DeadLetter {
    match settles(delivery).await {
        EventOutcome::Failed { mut letters } if letters.len() == 1 => letters.remove(0),
        other => panic!("expected one dead letter: {other:?}"),
    }
}

const UPSERT: &str = "/api/v2/users/create_or_update";
const SEARCH: &str = "/api/v2/users/search";

#[tokio::test]
async fn an_event_is_delivered_and_the_ids_its_answer_carries_are_learned() {
    let script = Arc::new(Script::default());
    let executor = executor(&script);
    script.on(
        Method::Post,
        UPSERT,
        [reply(200, json!({"user": {"id": 42}}))],
    );
    let mut delivery = executor.start(&identify("u1"), None);
    assert!(matches!(
        settles(&mut delivery).await,
        EventOutcome::Delivered
    ));
    // The step's output `id` says the user exists: the step creating one named by its email
    // is skipped.
    assert_eq!(script.sent(Method::Post, UPSERT), 1);
    let learned = delivery.take_learned();
    assert!(
        learned.contains(&key("user", "external_id", "u1")),
        "{learned:?}"
    );
    assert!(
        learned.contains(&key("user", "email", "u1@example.com")),
        "{learned:?}"
    );

    // A later event of the user finds its id in the cache: no lookup.
    script.on(
        Method::Post,
        "/api/v2/users/42/events",
        [reply(201, json!({}))],
    );
    let mut track = executor.start(&viewed("u1", None), None);
    assert!(matches!(settles(&mut track).await, EventOutcome::Delivered));
    assert_eq!(script.sent(Method::Get, SEARCH), 0);
}

#[tokio::test]
async fn a_server_error_or_a_rate_limit_makes_the_turn_wait_and_a_later_turn_sends_again() {
    let script = Arc::new(Script::default());
    let executor = executor(&script);
    script.on(
        Method::Post,
        UPSERT,
        [
            reply(503, json!({"error": "ServiceUnavailable"})),
            rate_limited(7),
            reply(200, json!({"user": {"id": 42}})),
        ],
    );
    let mut delivery = executor.start(&identify("u1"), None);
    let Wait::Retry {
        wait: None,
        scope: PauseScope::Key,
        transient: true,
        letter,
    } = waits(&mut delivery).await
    else {
        panic!("a 503 without Retry-After is tried again after a backoff");
    };
    assert_eq!(letter.status, Some(503));
    // The account's limit: the whole destination waits as long as Zendesk said.
    let Wait::Retry {
        wait: Some(wait),
        scope: PauseScope::Destination,
        transient: true,
        letter,
    } = waits(&mut delivery).await
    else {
        panic!("a 429 is tried again after its Retry-After");
    };
    assert_eq!((wait, letter.status), (Duration::from_secs(7), Some(429)));
    assert!(matches!(
        settles(&mut delivery).await,
        EventOutcome::Delivered
    ));
    assert_eq!(script.sent(Method::Post, UPSERT), 3);
    assert_eq!(executor.transport().stats().snapshot().retries, 2);
}

#[tokio::test]
async fn a_lookup_that_finds_nothing_parks_the_event_until_the_record_exists() {
    let script = Arc::new(Script::default());
    let executor = executor(&script);
    script.on(
        Method::Get,
        "/api/v2/tickets",
        [reply(200, json!({"tickets": []}))],
    );
    let mut update = executor.start(&ticket_updated(json!("t1")), None);
    let Wait::Missing { need } = waits(&mut update).await else {
        panic!("the ticket is not there yet: the update waits for it");
    };
    let awaited = LearnedKey::of_need(&need);
    assert!(
        awaited.contains(&key("ticket", "external_id", "t1")),
        "{awaited:?}"
    );

    // The event creating the ticket teaches its id.
    script.on(
        Method::Post,
        "/api/v2/tickets",
        [reply(201, json!({"ticket": {"id": 7}}))],
    );
    let mut create = executor.start(&ticket_created("t1"), None);
    assert!(matches!(
        settles(&mut create).await,
        EventOutcome::Delivered
    ));
    assert!(create.take_learned().iter().any(|k| awaited.contains(k)));

    script.on(
        Method::Put,
        "/api/v2/tickets/7",
        [reply(200, json!({"ticket": {"id": 7}}))],
    );
    assert!(matches!(
        settles(&mut update).await,
        EventOutcome::Delivered
    ));
    assert_eq!(
        script.sent(Method::Get, "/api/v2/tickets"),
        1,
        "the id came from the cache"
    );
}

#[tokio::test]
async fn a_record_still_missing_at_its_last_chance_is_dead_lettered() {
    let script = Arc::new(Script::default());
    let executor = executor(&script);
    script.on(
        Method::Get,
        "/api/v2/tickets",
        [reply(200, json!({"tickets": []}))],
    );
    let mut update = executor.start(&ticket_updated(json!("t1")), None);
    assert!(matches!(waits(&mut update).await, Wait::Missing { .. }));
    update.last_chance();
    let letter = dead_letter(&mut update).await;
    assert_eq!(
        (
            letter.action.as_deref().unwrap_or_default(),
            letter.step.as_str()
        ),
        ("update_ticket", "update")
    );
    assert_eq!(letter.status, None);
    assert_eq!(
        script.sent(Method::Get, "/api/v2/tickets"),
        1,
        "a record just found missing is not looked up again"
    );
}

#[tokio::test]
async fn refused_credentials_make_the_event_wait_for_them_on_a_lookup_or_a_write() {
    let script = Arc::new(Script::default());
    let executor = executor(&script);
    script.on(
        Method::Get,
        SEARCH,
        [
            reply(
                403,
                json!({"error": {"title": "Forbidden", "message": "No access"}}),
            ),
            reply(200, json!({"users": [{"id": 5}]})),
        ],
    );
    script.on(
        Method::Post,
        "/api/v2/users/5/events",
        [
            reply(401, json!({"error": "Couldn't authenticate you"})),
            reply(201, json!({})),
        ],
    );
    let mut delivery = executor.start(&viewed("u1", None), None);
    // What to fix, with Zendesk's word.
    let Wait::Fatal {
        status: 403,
        message,
    } = waits(&mut delivery).await
    else {
        panic!("a lookup refused waits for the permissions");
    };
    assert!(message.contains("No access"), "{message}");
    let Wait::Fatal {
        status: 401,
        message,
    } = waits(&mut delivery).await
    else {
        panic!("a write refused waits for the credentials");
    };
    assert_eq!(message, "Couldn't authenticate you");
    assert!(matches!(
        settles(&mut delivery).await,
        EventOutcome::Delivered
    ));
    assert_eq!(script.sent(Method::Get, SEARCH), 2);
    assert_eq!(script.sent(Method::Post, "/api/v2/users/5/events"), 2);
}

#[tokio::test]
async fn a_rejected_request_is_dead_lettered_with_zendesks_code_and_message() {
    let script = Arc::new(Script::default());
    let executor = executor(&script);
    script.on(
        Method::Post,
        UPSERT,
        [reply(
            422,
            json!({"error": "RecordInvalid", "description": "Record validation errors",
                "details": {"email": [{"error": "InvalidValue",
                    "description": "Email: u1@example is not properly formatted"}]}}),
        )],
    );
    let mut delivery = executor.start(&identify("u1"), None);
    let letter = dead_letter(&mut delivery).await;
    assert_eq!(
        (
            letter.action.as_deref().unwrap_or_default(),
            letter.step.as_str()
        ),
        ("upsert_user", "upsert")
    );
    assert_eq!(letter.status, Some(422));
    assert_eq!(letter.code.as_deref(), Some("InvalidValue"));
    assert!(
        letter.message.contains("is not properly formatted"),
        "{}",
        letter.message
    );
    assert_eq!(letter.attempts, 1);
    assert_eq!(letter.changes.len(), 1, "the user it changes, for a replay");
    assert_eq!(script.sent(Method::Post, UPSERT), 1);
}

#[tokio::test]
async fn a_client_error_an_outcome_retries_is_tried_a_bounded_number_of_times() {
    let script = Arc::new(Script::default());
    let executor = executor(&script);
    let duplicate = || {
        reply(
            422,
            json!({"error": "RecordInvalid", "details": {"email": [{"error": "DuplicateValue",
                "description": "Email: u1@example.com is already being used"}]}}),
        )
    };
    script.on(
        Method::Post,
        UPSERT,
        [duplicate(), duplicate(), duplicate()],
    );
    let mut delivery = executor.start(&identify("u1"), None);
    for _ in 0..2 {
        assert!(matches!(
            waits(&mut delivery).await,
            Wait::Retry {
                transient: false,
                scope: PauseScope::Key,
                ..
            }
        ));
    }
    // `retries.client_error_tries: 3` in all.
    let letter = dead_letter(&mut delivery).await;
    assert_eq!(letter.code.as_deref(), Some("DuplicateValue"));
    assert_eq!(letter.attempts, 3);
}

#[tokio::test]
async fn a_request_that_cannot_be_sent_is_dead_lettered() {
    let script = Arc::new(Script::default());
    let executor = executor(&script);
    let invalid = TransportError::InvalidRequest {
        message: "the header Host is set by the transport".into(),
    };
    script.on(Method::Post, UPSERT, [Err(invalid)]);
    let mut delivery = executor.start(&identify("u1"), None);
    let letter = dead_letter(&mut delivery).await;
    assert_eq!(letter.code.as_deref(), Some("invalid"));
}

const EVENTS: &str = "/api/v2/users/5/events";

#[tokio::test]
async fn a_lost_answer_whose_check_finds_the_marker_is_not_sent_again() {
    let script = Arc::new(Script::default());
    let executor = executor(&script);
    script.on(
        Method::Post,
        EVENTS,
        [reply(500, json!({"error": "InternalError"}))],
    );
    let mut delivery = executor.start(&viewed("u1", Some(5)), None);
    let Wait::Retry {
        transient: true,
        letter,
        ..
    } = waits(&mut delivery).await
    else {
        panic!("a 500 is tried again");
    };
    // Should it be given up, the letter says the write may have been applied.
    assert!(
        letter.message.contains("not sent again"),
        "{}",
        letter.message
    );

    script.on(
        Method::Get,
        EVENTS,
        [user_events(Some("view-u1:track_event"))],
    );
    assert!(matches!(
        settles(&mut delivery).await,
        EventOutcome::Delivered
    ));
    assert_eq!(
        script.sent(Method::Post, EVENTS),
        1,
        "found applied: not sent again"
    );
    assert_eq!(executor.transport().stats().snapshot().confirmed, 1);
}

#[tokio::test]
async fn a_lost_answer_whose_check_does_not_find_the_marker_is_sent_again() {
    let script = Arc::new(Script::default());
    let executor = executor(&script);
    script.on(
        Method::Post,
        EVENTS,
        [timeout(Method::Post, EVENTS), reply(201, json!({}))],
    );
    script.on(Method::Get, EVENTS, [user_events(None)]);
    let mut delivery = executor.start(&viewed("u1", Some(5)), None);
    assert!(matches!(waits(&mut delivery).await, Wait::Retry { .. }));
    assert!(matches!(
        settles(&mut delivery).await,
        EventOutcome::Delivered
    ));
    assert_eq!(script.sent(Method::Get, EVENTS), 1);
    assert_eq!(
        script.sent(Method::Post, EVENTS),
        2,
        "not applied: sent again"
    );
    assert_eq!(executor.transport().stats().snapshot().confirmed, 0);
}

#[tokio::test]
async fn a_check_that_fails_is_asked_again_and_the_write_is_not_sent_meanwhile() {
    let script = Arc::new(Script::default());
    let executor = executor(&script);
    script.on(
        Method::Post,
        EVENTS,
        [reply(502, json!({"error": "BadGateway"}))],
    );
    script.on(
        Method::Get,
        EVENTS,
        [
            reply(503, json!({"error": "ServiceUnavailable"})),
            user_events(Some("view-u1:track_event")),
        ],
    );
    let mut delivery = executor.start(&viewed("u1", Some(5)), None);
    assert!(matches!(waits(&mut delivery).await, Wait::Retry { .. }));
    let Wait::Retry { letter, .. } = waits(&mut delivery).await else {
        panic!("a check that fails is tried again");
    };
    assert!(
        letter
            .message
            .starts_with("checking whether the write was applied"),
        "{}",
        letter.message
    );
    assert!(matches!(
        settles(&mut delivery).await,
        EventOutcome::Delivered
    ));
    assert_eq!(script.sent(Method::Get, EVENTS), 2);
    assert_eq!(script.sent(Method::Post, EVENTS), 1);
}

#[tokio::test]
async fn a_request_that_never_reached_zendesk_is_sent_again_without_a_check() {
    let script = Arc::new(Script::default());
    let executor = executor(&script);
    let refused = TransportError::Connect {
        method: Method::Post,
        url: format!("http://127.0.0.1:9{EVENTS}"),
        message: "connection refused".into(),
    };
    script.on(Method::Post, EVENTS, [Err(refused), reply(201, json!({}))]);
    let mut delivery = executor.start(&viewed("u1", Some(5)), None);
    assert!(matches!(waits(&mut delivery).await, Wait::Retry { .. }));
    assert!(matches!(
        settles(&mut delivery).await,
        EventOutcome::Delivered
    ));
    assert_eq!(script.sent(Method::Get, EVENTS), 0);
    assert_eq!(script.sent(Method::Post, EVENTS), 2);
}

#[tokio::test]
async fn a_resumed_event_checks_its_write_before_the_first_attempt() {
    let script = Arc::new(Script::default());
    let executor = executor(&script);
    script.on(
        Method::Get,
        EVENTS,
        [user_events(Some("view-u1:track_event"))],
    );
    let mut delivery = executor.start(&viewed("u1", Some(5)), None);
    delivery.resumed();
    assert!(matches!(
        settles(&mut delivery).await,
        EventOutcome::Delivered
    ));
    assert_eq!(
        script.sent(Method::Post, EVENTS),
        0,
        "applied before: not sent"
    );
}

#[tokio::test]
async fn with_batching_a_write_with_a_bulk_form_is_handed_over_and_its_answer_judged() {
    let script = Arc::new(Script::default());
    let executor = executor(&script);
    let mut update = executor.start(&ticket_updated(json!(7)), None);
    update.batching(true);
    let Wait::Batch(item) = waits(&mut update).await else {
        panic!("the update goes as an item of a bulk request");
    };
    assert_eq!(item.single.path, "/api/v2/tickets/7");
    assert_eq!(item.item["comment"]["body"], "hi");
    update.answer(BatchAnswer::Answered(Box::new(Disposition::Done {
        response: reply(200, json!({"ticket": {"id": 7}})).expect("a response"),
    })));
    assert!(matches!(
        settles(&mut update).await,
        EventOutcome::Delivered
    ));
    assert!(
        script.sent.lock().expect("script").is_empty(),
        "nothing sent by the core"
    );
}

#[tokio::test]
async fn a_turn_that_may_only_join_bulk_requests_sends_nothing_else() {
    let script = Arc::new(Script::default());
    let executor = executor(&script);
    let mut delivery = executor.start(&viewed("u1", Some(5)), None);
    delivery.batching(true);
    delivery.join_only(true);
    assert!(matches!(waits(&mut delivery).await, Wait::Behind));
    assert_eq!(script.sent(Method::Post, EVENTS), 0);

    script.on(Method::Post, EVENTS, [reply(201, json!({}))]);
    delivery.join_only(false);
    assert!(matches!(
        settles(&mut delivery).await,
        EventOutcome::Delivered
    ));
}

/// A mark that counts its calls, failing the first `failures` of them.
fn counting_mark(failures: usize) -> (super::FirstWrite, Arc<Mutex<usize>>) {
    let calls = Arc::new(Mutex::new(0));
    let counted = calls.clone();
    let mark = super::FirstWrite::new(move || {
        let mut calls = counted.lock().expect("calls");
        *calls += 1;
        let result = if *calls <= failures {
            Err("disk full".to_string())
        } else {
            Ok(())
        };
        Box::pin(std::future::ready(result))
    });
    (mark, calls)
}

#[tokio::test]
async fn the_queue_is_told_once_before_the_first_write_that_is_not_idempotent() {
    let script = Arc::new(Script::default());
    let executor = executor(&script);
    script.on(Method::Post, EVENTS, [reply(201, json!({}))]);
    let mut delivery = executor.start(&viewed("u1", Some(5)), None);
    let (mark, calls) = counting_mark(0);
    delivery.before_first_write(mark);
    assert!(matches!(
        settles(&mut delivery).await,
        EventOutcome::Delivered
    ));
    assert_eq!(*calls.lock().expect("calls"), 1);
    assert_eq!(script.sent(Method::Get, EVENTS), 0, "nothing checked");

    // An upsert is idempotent: nothing to tell.
    script.on(
        Method::Post,
        UPSERT,
        [reply(
            200,
            json!({"user": {"id": 9, "email": "u1@example.com"}}),
        )],
    );
    let mut delivery = executor.start(&identify("u1"), None);
    let (mark, calls) = counting_mark(0);
    delivery.before_first_write(mark);
    assert!(matches!(
        settles(&mut delivery).await,
        EventOutcome::Delivered
    ));
    assert_eq!(*calls.lock().expect("calls"), 0);
}

#[tokio::test]
async fn a_write_the_queue_cannot_record_as_leaving_waits_unsent() {
    let script = Arc::new(Script::default());
    let executor = executor(&script);
    let mut delivery = executor.start(&viewed("u1", Some(5)), None);
    let (mark, calls) = counting_mark(1);
    delivery.before_first_write(mark);
    assert!(matches!(
        waits(&mut delivery).await,
        Wait::Retry {
            transient: true,
            ..
        }
    ));
    assert_eq!(script.sent(Method::Post, EVENTS), 0);
    script.on(Method::Post, EVENTS, [reply(201, json!({}))]);
    assert!(matches!(
        settles(&mut delivery).await,
        EventOutcome::Delivered
    ));
    assert_eq!(*calls.lock().expect("calls"), 2);
}

#[tokio::test]
async fn a_replayed_write_whose_check_cannot_conclude_is_sent() {
    let script = Arc::new(Script::default());
    let executor = executor(&script);
    // Every page of the user's events says there is more, up to the check's most (10).
    let page = || {
        reply(
            200,
            json!({"events": [], "meta": {"has_more": true},
                "links": {"next": format!("http://127.0.0.1:9{EVENTS}")}}),
        )
    };
    script.on(Method::Get, EVENTS, (0..10).map(|_| page()));
    script.on(Method::Post, EVENTS, [reply(201, json!({}))]);
    let replayed = Some(vec![ActionName::new("track_event")]);
    let mut delivery = executor.start(&viewed("u1", Some(5)), replayed);
    assert!(matches!(
        settles(&mut delivery).await,
        EventOutcome::Delivered
    ));
    assert_eq!(script.sent(Method::Get, EVENTS), 10);
    assert_eq!(script.sent(Method::Post, EVENTS), 1, "sent once");

    // Resumed after a restart instead, the same doubt is a dead letter, not sent.
    script.on(Method::Get, EVENTS, (0..10).map(|_| page()));
    let mut delivery = executor.start(&viewed("u1", Some(5)), None);
    delivery.resumed();
    let letter = dead_letter(&mut delivery).await;
    assert!(
        letter.message.contains("may have been under way"),
        "{}",
        letter.message
    );
    assert_eq!(script.sent(Method::Post, EVENTS), 1, "not sent again");
}

#[tokio::test]
async fn a_shed_event_is_read_back_and_planned_again_on_its_next_turn() {
    let script = Arc::new(Script::default());
    let executor = executor(&script);
    let event = viewed("u1", Some(5));
    let mut delivery = executor.start(&event, None);
    assert!(!delivery.can_shed(), "nowhere to read it back from");
    let body = event.value().clone();
    let reads = Arc::new(Mutex::new(0));
    let counted = reads.clone();
    delivery.reloadable(super::Reload::new(move || {
        *counted.lock().expect("reads") += 1;
        Box::pin(std::future::ready(Ok(body.clone())))
    }));
    assert!(delivery.can_shed());
    delivery.shed();
    assert!(delivery.is_shed());
    assert!(delivery.event().is_null(), "its body is let go");
    script.on(Method::Post, EVENTS, [reply(201, json!({}))]);
    assert!(matches!(
        settles(&mut delivery).await,
        EventOutcome::Delivered
    ));
    assert_eq!(*reads.lock().expect("reads"), 1);
    assert_eq!(script.sent(Method::Post, EVENTS), 1);
}

#[tokio::test]
async fn an_event_whose_write_was_tried_is_not_shed() {
    let script = Arc::new(Script::default());
    let executor = executor(&script);
    let mut delivery = executor.start(&viewed("u1", Some(5)), None);
    delivery.reloadable(super::Reload::new(|| {
        Box::pin(std::future::ready(Err("not read".to_string())))
    }));
    script.on(Method::Post, EVENTS, [timeout(Method::Post, EVENTS)]);
    assert!(matches!(waits(&mut delivery).await, Wait::Retry { .. }));
    assert!(
        !delivery.can_shed(),
        "its answer was lost: the doubt must stay"
    );
    delivery.shed();
    assert!(!delivery.is_shed());
}
