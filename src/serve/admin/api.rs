//! The admin JSON API under `/api/`: what the server runs and what became of its events, for
//! `zdmap events`, the console and tooling. Every route answers JSON; an error is
//! `{"error": "..."}` with its status.
//!
//! - `GET /api/actions`: the action table of the running mappings (name, title, description,
//!   trigger, enabled, steps, file), and whether the last reload was refused and why.
//! - `GET /api/status`: readiness and its reasons, the events queued, and the delivery
//!   counters since start.
//! - `GET /api/dead-letters?action=&status=&code=&message_id=&limit=&cursor=`: the dead letters the filter
//!   admits, oldest first, a page at a time (`next_cursor` continues); `GET
//!   /api/dead-letters/{id}` one of them with its event.
//! - `POST /api/dead-letters/{id}/replay` and `/discard`: one letter back into the queue (for
//!   the action that failed) or deleted; `POST /api/dead-letters/replay` and `/discard` with a
//!   JSON filter (`{"action": ..., "status": ..., "code": ...}`, or `{"all": true}`): every letter
//!   it admits. A replay keeps a stale letter unless `"force": true` (as `zdmap dead-letters
//!   replay`).
//! - `POST /api/preview` with an event: the actions it matches and why the others do not, and
//!   the requests it would send (as `zdmap preview`).
//! - `POST /api/send` with `{"event": ..., "confirm": true}`: the event queued as if posted to
//!   the ingest API, answering its `messageId`; `confirm` is needed when the server delivers to
//!   Zendesk itself rather than to an emulator.
//! - `GET /api/events`: the delivery log searched ([`Journal::search`]): `message_id`,
//!   `user_id` (or anonymousId), `email`, `event`, `state`, `since`/`until` (RFC 3339 or ms
//!   since the epoch, on the acceptance time), `limit` (50 by default, at most 500), `cursor`;
//!   answers `{"events": [summary...], "next_cursor": "..." | null}`, newest first.
//! - `GET /api/events/{message_id}`: one event's whole record ([`Journal::record`]): its
//!   summary, `actions` and `timeline`; 404 when the log does not have it.
//! - `GET /api/entries`: the entries recorded after `after` (a `seq`; without it the last
//!   `limit`), oldest first, of the events the same filters find ([`Journal::entries`]):
//!   `{"entries": [...], "next_cursor": "SEQ"}`, the `after` of the next call.
//!
//! The log's routes answer 404 `{"error": ...}` when the log is off (`--no-journal`).

use super::letters::{self, Filter};
use super::{AdminState, error};
use crate::base::time::rfc3339_utc;
use crate::mapping::config::Config;
use crate::mapping::event::Event;
use crate::queue::journal::{self, Journal};
use crate::queue::{
    DeadLetters, Queue, QueueError, Replayed, Selection, purge_recorded, replay_recorded,
};
use crate::serve::ingest::{self, Endpoint};
use crate::serve::metrics::Metrics;
use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// Events (or dead letters) of a page when the request names no `limit`.
const DEFAULT_LIMIT: usize = 50;

/// The routes of `/api/` (the token is checked around them).
pub(crate) fn routes<Q: Queue>() -> Router<Arc<AdminState<Q>>> {
    Router::new()
        .route("/actions", get(actions::<Q>))
        .route("/status", get(status::<Q>))
        .route("/dead-letters", get(list_letters::<Q>))
        .route("/dead-letters/replay", post(replay_selection::<Q>))
        .route("/dead-letters/discard", post(discard_selection::<Q>))
        .route("/dead-letters/{id}", get(show_letter::<Q>))
        .route("/dead-letters/{id}/replay", post(replay_one::<Q>))
        .route("/dead-letters/{id}/discard", post(discard_one::<Q>))
        .route("/preview", post(preview::<Q>))
        .route("/send", post(send::<Q>))
        .route("/events", get(events::<Q>))
        .route("/events/{message_id}", get(event::<Q>))
        .route("/entries", get(entries::<Q>))
}

/// The action table of `config` as JSON.
pub(crate) fn action_table(config: &Config) -> Vec<Value> {
    config
        .actions
        .iter()
        .map(|action| {
            json!({
                "name": action.name.as_str(),
                "title": action.title,
                "description": action.description,
                "enabled": action.enabled,
                "trigger": action.trigger.source(),
                "steps": action.steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
                "file": action.file.display().to_string(),
            })
        })
        .collect()
}

async fn actions<Q: Queue>(State(state): State<Arc<AdminState<Q>>>) -> Json<Value> {
    let executor = state.shared.executor();
    let config = executor.config();
    Json(json!({
        "destination": config.name,
        "mappings": config.dir.display().to_string(),
        "actions": action_table(config),
        "reload_problem": state.shared.health.state().config,
        "reloads": state.shared.metrics.reloads(),
    }))
}

async fn status<Q: Queue>(State(state): State<Arc<AdminState<Q>>>) -> Json<Value> {
    let health = state.shared.health.state();
    Json(json!({
        "ready": health.ready(),
        "health": health,
        "queued": state.queue.depth().await.ok(),
        "delivery": state.shared.stats.snapshot(),
    }))
}

/// A queue failure as an answer.
pub(crate) fn queue_error(e: &QueueError) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct ListQuery {
    #[serde(flatten)]
    pub(crate) filter: Filter,
    #[serde(default, deserialize_with = "letters::optional_number")]
    pub(crate) limit: Option<u64>,
    #[serde(default, deserialize_with = "letters::optional_number")]
    pub(crate) cursor: Option<u64>,
}

impl ListQuery {
    pub(crate) fn limit(&self) -> usize {
        self.limit
            .map_or(DEFAULT_LIMIT, |l| usize::try_from(l).unwrap_or(usize::MAX))
    }
}

/// The page of letters `query` asks for, and how many letters there are in all.
pub(crate) async fn letters_page<Q: Queue>(
    state: &AdminState<Q>,
    query: &ListQuery,
) -> Result<(letters::Page, u64), QueueError> {
    let mut store = state.queue.dead_letters().await?;
    let page = letters::page(
        &mut store,
        &query.filter,
        query.cursor.unwrap_or(0),
        query.limit(),
    )
    .await?;
    Ok((page, store.count().await?))
}

async fn list_letters<Q: Queue>(
    State(state): State<Arc<AdminState<Q>>>,
    Query(query): Query<ListQuery>,
) -> Response {
    match letters_page(&state, &query).await {
        Ok((page, total)) => Json(json!({
            "dead_letters": page.letters.iter().map(letters::json).collect::<Vec<_>>(),
            "next_cursor": page.next,
            "total": total,
        }))
        .into_response(),
        Err(e) => queue_error(&e),
    }
}

async fn show_letter<Q: Queue>(
    State(state): State<Arc<AdminState<Q>>>,
    Path(id): Path<u64>,
) -> Response {
    let found = async { state.queue.dead_letters().await?.get(id).await }.await;
    match found {
        Ok(Some(letter)) => Json(letters::json(&letter)).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no dead letter {id}")),
        Err(e) => queue_error(&e),
    }
}

/// A selection in a request body: a filter, or `all`.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct SelectionBody {
    #[serde(flatten)]
    pub(crate) filter: Filter,
    #[serde(default)]
    pub(crate) all: bool,
    #[serde(default)]
    pub(crate) force: bool,
}

impl SelectionBody {
    /// The letters the body selects; refused when it selects nothing in particular (an empty
    /// filter must say `all`, so that no empty form discards everything).
    pub(crate) async fn selection<Q: Queue>(
        &self,
        state: &AdminState<Q>,
    ) -> Result<Selection, Response> {
        if self.all {
            return Ok(Selection::All);
        }
        if self.filter.is_empty() {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "give a filter (action, status, code) or \"all\": true",
            ));
        }
        let ids = async {
            let mut store = state.queue.dead_letters().await?;
            letters::selected(&mut store, &self.filter).await
        }
        .await;
        ids.map(Selection::Ids).map_err(|e| queue_error(&e))
    }
}

/// What a replay did, as JSON.
pub(crate) fn replayed_json(replayed: &Replayed) -> Value {
    json!({
        "replayed": replayed.moved,
        "stale": replayed.stale.iter().map(|s| json!({
            "id": s.id,
            "action": s.action.as_deref(),
            "entity": s.change.entity,
            "changed_at_ms": s.change.at_ms,
            "newer_at_ms": s.last_ms,
        })).collect::<Vec<_>>(),
    })
}

/// Who did something to dead letters, as the delivery log says it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum By {
    Api,
    Console,
}

impl By {
    fn label(self) -> &'static str {
        match self {
            By::Api => "api",
            By::Console => "console",
        }
    }
}

/// Replays `which`, records it in the delivery log and says so in the server's log.
pub(crate) async fn replay<Q: Queue>(
    state: &AdminState<Q>,
    which: Result<Selection, Response>,
    force: bool,
    by: By,
) -> Result<Replayed, Response> {
    let which = which?;
    let journal = state.shared.journal.as_deref();
    let result = async {
        let mut store = state.queue.dead_letters().await?;
        replay_recorded(&mut store, &which, force, journal, by.label()).await
    }
    .await;
    let replayed = result.map_err(|e| queue_error(&e))?;
    tracing::info!(
        replayed = replayed.moved,
        stale = replayed.stale.len(),
        selection = %shown(&which),
        by = by.label(),
        "dead letters replayed from the admin listener"
    );
    Ok(replayed)
}

/// Discards `which`, records it in the delivery log and says so in the server's log.
pub(crate) async fn discard<Q: Queue>(
    state: &AdminState<Q>,
    which: Result<Selection, Response>,
    by: By,
) -> Result<u64, Response> {
    let which = which?;
    let journal = state.shared.journal.as_deref();
    let result = async {
        let mut store = state.queue.dead_letters().await?;
        purge_recorded(&mut store, &which, journal, by.label()).await
    }
    .await;
    let n = result.map_err(|e| queue_error(&e))?;
    tracing::info!(discarded = n, selection = %shown(&which), by = by.label(), "dead letters discarded from the admin listener");
    Ok(n)
}

fn shown(which: &Selection) -> String {
    match which {
        Selection::All => "all".into(),
        Selection::Ids(ids) if ids.len() <= 20 => format!("{ids:?}"),
        Selection::Ids(ids) => format!("{} letters", ids.len()),
    }
}

/// The body of a replay of one letter (optional).
#[derive(Debug, Default, serde::Deserialize)]
struct Force {
    #[serde(default)]
    force: bool,
}

/// A JSON body that may be missing: its default then.
fn or_default<T: Default>(body: Option<Json<T>>) -> T {
    body.map(|Json(b)| b).unwrap_or_default()
}

async fn replay_one<Q: Queue>(
    State(state): State<Arc<AdminState<Q>>>,
    Path(id): Path<u64>,
    body: Option<Json<Force>>,
) -> Response {
    let force = or_default(body).force;
    match replay(&state, exists(&state, id).await, force, By::Api).await {
        Ok(replayed) => Json(replayed_json(&replayed)).into_response(),
        Err(answer) => answer,
    }
}

async fn discard_one<Q: Queue>(
    State(state): State<Arc<AdminState<Q>>>,
    Path(id): Path<u64>,
) -> Response {
    match discard(&state, exists(&state, id).await, By::Api).await {
        Ok(n) => Json(json!({ "discarded": n })).into_response(),
        Err(answer) => answer,
    }
}

/// The selection of letter `id`; 404 when there is none.
pub(crate) async fn exists<Q: Queue>(
    state: &AdminState<Q>,
    id: u64,
) -> Result<Selection, Response> {
    let found = async { state.queue.dead_letters().await?.get(id).await }.await;
    match found {
        Ok(Some(_)) => Ok(Selection::Ids(vec![id])),
        Ok(None) => Err(error(StatusCode::NOT_FOUND, format!("no dead letter {id}"))),
        Err(e) => Err(queue_error(&e)),
    }
}

async fn replay_selection<Q: Queue>(
    State(state): State<Arc<AdminState<Q>>>,
    body: Option<Json<SelectionBody>>,
) -> Response {
    let body = or_default(body);
    let which = body.selection(&state).await;
    match replay(&state, which, body.force, By::Api).await {
        Ok(replayed) => Json(replayed_json(&replayed)).into_response(),
        Err(answer) => answer,
    }
}

async fn discard_selection<Q: Queue>(
    State(state): State<Arc<AdminState<Q>>>,
    body: Option<Json<SelectionBody>>,
) -> Response {
    let body = or_default(body);
    let which = body.selection(&state).await;
    match discard(&state, which, By::Api).await {
        Ok(n) => Json(json!({ "discarded": n })).into_response(),
        Err(answer) => answer,
    }
}

/// What `event` would do under `config`: the preview of `zdmap preview`, and for every action
/// whether it matches and, if not, why.
pub(crate) fn preview_json(config: &Config, event: Value) -> Result<Value, String> {
    let event = Event::from_value(event).map_err(|e| format!("not a Segment event: {e}"))?;
    let preview = config.preview(&event);
    let mut out = preview.to_json(0);
    let mut actions: Vec<Value> = config
        .actions
        .iter()
        .map(|action| {
            let name = action.name.as_str();
            let matched = preview.matched.iter().any(|m| m == name);
            let problem = preview.errors.iter().find(|e| e.action == name);
            let why = if let Some(problem) = problem {
                format!(
                    "matched, but cannot run{}: {}",
                    problem
                        .step
                        .as_deref()
                        .map(|s| format!(" (step {s})"))
                        .unwrap_or_default(),
                    problem.message
                )
            } else if matched {
                "matched".to_owned()
            } else if !action.enabled {
                "disabled".to_owned()
            } else if !action.trigger.matches(event.value()) {
                format!("trigger not matched: {}", action.trigger.source())
            } else {
                "the event's `integrations` keeps it from this destination".to_owned()
            };
            json!({
                "name": name,
                "title": action.title,
                "matched": matched && problem.is_none(),
                "why": why,
            })
        })
        .collect();
    // The matched first, each part in the order of the config.
    actions.sort_by_key(|a| a["matched"] != true);
    if let Value::Object(map) = &mut out {
        map.remove("index");
        map.insert("actions".into(), Value::Array(actions));
    }
    Ok(out)
}

async fn preview<Q: Queue>(
    State(state): State<Arc<AdminState<Q>>>,
    Json(event): Json<Value>,
) -> Response {
    let executor = state.shared.executor();
    match preview_json(executor.config(), event) {
        Ok(preview) => Json(preview).into_response(),
        Err(why) => error(StatusCode::UNPROCESSABLE_ENTITY, why),
    }
}

/// Whether events go to Zendesk itself (not to an emulator or a test server's URL).
pub(crate) fn real_zendesk<Q>(state: &AdminState<Q>) -> bool {
    !state
        .shared
        .executor()
        .transport()
        .client()
        .target()
        .allows_placeholder_credentials()
}

/// Why an event sent from the admin listener was not queued.
#[derive(Debug)]
pub(crate) enum NotSent {
    /// The event is not one the ingest API takes.
    Refused(String),
    /// The queue did not store it.
    Queue(QueueError),
}

impl NotSent {
    pub(crate) fn answer(&self) -> Response {
        match self {
            NotSent::Refused(why) => error(StatusCode::UNPROCESSABLE_ENTITY, why.clone()),
            NotSent::Queue(e) => queue_error(e),
        }
    }
}

/// The source the delivery log gives an event sent from the admin listener (a write key's
/// would be its fingerprint).
const SOURCE: &str = "admin";

/// Queues `event` as the ingest API would (checked, stamped with a `messageId` when it has
/// none and with `receivedAt`), and answers its `messageId`. It is not deduplicated: the tester
/// may send one event twice on purpose.
pub(crate) async fn send_event<Q: Queue>(
    state: &AdminState<Q>,
    event: Value,
) -> Result<String, NotSent> {
    let body = serde_json::to_vec(&json!({ "batch": [event] }))
        .map_err(|e| NotSent::Refused(e.to_string()))?;
    let calls = ingest::events(
        Endpoint::Batch,
        &body,
        &rfc3339_utc(std::time::SystemTime::now()),
    )
    .map_err(|e| NotSent::Refused(e.0))?;
    if let Some(refused) = calls.refused.first() {
        return Err(NotSent::Refused(refused.message.clone()));
    }
    let mut items = calls.accepted;
    for item in &mut items {
        item.message_id = None;
    }
    let message_id = items
        .first()
        .and_then(|item| item.event["messageId"].as_str())
        .unwrap_or_default()
        .to_owned();
    let offered = items.len() as u64;
    crate::serve::store(&*state.queue, &state.shared, items, &[], SOURCE)
        .await
        .map_err(NotSent::Queue)?;
    Metrics::add(&state.shared.metrics.accepted, offered);
    tracing::info!(message_id = %message_id, "an event was sent from the admin listener");
    Ok(message_id)
}

#[derive(Debug, serde::Deserialize)]
struct SendBody {
    event: Value,
    #[serde(default)]
    confirm: bool,
}

async fn send<Q: Queue>(
    State(state): State<Arc<AdminState<Q>>>,
    Json(body): Json<SendBody>,
) -> Response {
    if real_zendesk(&state) && !body.confirm {
        return error(
            StatusCode::CONFLICT,
            "this server delivers to Zendesk itself: send again with \"confirm\": true",
        );
    }
    match send_event(&state, body.event).await {
        Ok(message_id) => Json(json!({ "message_id": message_id })).into_response(),
        Err(e) => e.answer(),
    }
}

/// Why a request of the log's routes was not answered: the status and what to say.
pub(crate) struct Refusal(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

/// The delivery log, or the refusal that it is off.
pub(crate) fn journal_of<Q>(state: &AdminState<Q>) -> Result<Arc<Journal>, Refusal> {
    state.shared.journal.clone().ok_or_else(|| {
        Refusal(
            StatusCode::NOT_FOUND,
            "the delivery log is off (--no-journal)".to_owned(),
        )
    })
}

/// The parameter `name` read by `parse`; a 400 saying it is not `what` when it does not read.
fn param<T>(
    params: &HashMap<String, String>,
    name: &str,
    what: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<Option<T>, Refusal> {
    match params.get(name).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => parse(v).map(Some).ok_or_else(|| {
            Refusal(
                StatusCode::BAD_REQUEST,
                format!("{name}: {v:?} is not {what}"),
            )
        }),
    }
}

fn number(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, Refusal> {
    param(params, name, "a number", |v| v.parse().ok())
}

fn time(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, Refusal> {
    param(
        params,
        name,
        "an RFC 3339 time or milliseconds since the epoch",
        |v| {
            v.parse().ok().or_else(|| {
                crate::base::time::parse_rfc3339(v).and_then(|ms| u64::try_from(ms).ok())
            })
        },
    )
}

/// A search's parameters.
pub(crate) fn query_of(params: &HashMap<String, String>) -> Result<journal::Query, Refusal> {
    let text = |name: &str| params.get(name).filter(|v| !v.is_empty()).cloned();
    let limit = number(params, "limit")?
        .map_or(DEFAULT_LIMIT, |n| usize::try_from(n).unwrap_or(usize::MAX));
    Ok(journal::Query {
        message_id: text("message_id"),
        user_id: text("user_id"),
        email: text("email"),
        event: text("event"),
        state: text("state"),
        since_ms: time(params, "since")?,
        until_ms: time(params, "until")?,
        limit,
        cursor: number(params, "cursor")?,
    })
}

/// Runs a read of the log off the async threads; a failure is a 500 saying why.
pub(crate) async fn read<T: Send + 'static>(
    journal: Arc<Journal>,
    read: impl FnOnce(&Journal) -> Result<T, crate::queue::QueueError> + Send + 'static,
) -> Result<T, Refusal> {
    match tokio::task::spawn_blocking(move || read(&journal)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        Err(e) => Err(Refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// The answer of a log's route: its JSON, or its refusal.
fn answered<T: serde::Serialize>(answer: Result<T, Refusal>) -> Response {
    match answer {
        Ok(value) => Json(value).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

async fn events<Q: Queue>(
    State(state): State<Arc<AdminState<Q>>>,
    axum::extract::Query(params): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    answered(
        async {
            let journal = journal_of(&state)?;
            let query = query_of(&params)?;
            read(journal, move |j| j.search(&query)).await
        }
        .await,
    )
}

async fn event<Q: Queue>(
    State(state): State<Arc<AdminState<Q>>>,
    Path(message_id): Path<String>,
) -> Response {
    answered(
        async {
            let journal = journal_of(&state)?;
            let id = message_id.clone();
            read(journal, move |j| j.record(&id)).await?.ok_or_else(|| {
                Refusal(
                    StatusCode::NOT_FOUND,
                    format!(
                        "the delivery log has no event {message_id:?} (never accepted, or pruned)"
                    ),
                )
            })
        }
        .await,
    )
}

async fn entries<Q: Queue>(
    State(state): State<Arc<AdminState<Q>>>,
    axum::extract::Query(params): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    answered(
        async {
            let journal = journal_of(&state)?;
            let query = query_of(&params)?;
            let after = number(&params, "after")?;
            let limit = query.limit;
            let entries = read(journal, move |j| j.entries(after, &query, limit)).await?;
            let next = entries.last().map(|n| n.seq).or(after).unwrap_or(0);
            Ok(json!({"entries": entries, "next_cursor": next.to_string()}))
        }
        .await,
    )
}
