//! The admin JSON API under `/api/`: what the server runs and what became of its events, for
//! `zdmap events`, the console and tooling. Every route answers JSON; an error is
//! `{"error": "..."}` with its status.
//!
//! - `GET /api/actions`: the action table of the running mappings (name, title, trigger,
//!   enabled, steps, file), and whether the last reload was refused and why.
//! - `GET /api/status`: readiness and its reasons, the events queued, and the delivery
//!   counters since start.
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
//! The log's routes answer 404 `{"error": ...}` when the log is off (`--no-journal`, NATS).

use super::{AdminState, error};
use crate::queue::Queue;
use crate::queue::journal::{Journal, Query};
use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// Events of a page when the request names no `limit`.
const DEFAULT_LIMIT: usize = 50;

/// The routes of `/api/` (the token is checked around them).
pub(crate) fn routes<Q: Queue>() -> Router<Arc<AdminState<Q>>> {
    Router::new()
        .route("/actions", get(actions::<Q>))
        .route("/status", get(status::<Q>))
        .route("/events", get(events::<Q>))
        .route("/events/{message_id}", get(event::<Q>))
        .route("/entries", get(entries::<Q>))
}

async fn actions<Q: Queue>(State(state): State<Arc<AdminState<Q>>>) -> Json<Value> {
    let executor = state.shared.executor();
    let config = executor.config();
    let actions: Vec<Value> = config
        .actions
        .iter()
        .map(|action| {
            json!({
                "name": action.name.as_str(),
                "title": action.title,
                "enabled": action.enabled,
                "trigger": action.trigger.source(),
                "steps": action.steps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
                "file": action.file.display().to_string(),
            })
        })
        .collect();
    Json(json!({
        "destination": config.name,
        "mappings": config.dir.display().to_string(),
        "actions": actions,
        "reload_problem": state.shared.health.state().config,
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

/// Why a request of the log's routes was not answered: the status and what to say.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

/// The delivery log, or the refusal that it is off.
fn journal_of<Q>(state: &AdminState<Q>) -> Result<Arc<Journal>, Refusal> {
    state.journal.clone().ok_or_else(|| {
        Refusal(
            StatusCode::NOT_FOUND,
            "the delivery log is off (--no-journal, or a NATS queue)".to_owned(),
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
fn query_of(params: &HashMap<String, String>) -> Result<Query, Refusal> {
    let text = |name: &str| params.get(name).filter(|v| !v.is_empty()).cloned();
    let limit = number(params, "limit")?
        .map_or(DEFAULT_LIMIT, |n| usize::try_from(n).unwrap_or(usize::MAX));
    Ok(Query {
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
async fn read<T: Send + 'static>(
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
