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

/// The delivery log, or the answer that it is off.
fn journal_of<Q>(state: &AdminState<Q>) -> Result<Arc<Journal>, Response> {
    state.journal.clone().ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "the delivery log is off (--no-journal, or a NATS queue)",
        )
    })
}

/// A search's parameters; a 400 answer says which one is wrong.
fn query_of(params: &HashMap<String, String>) -> Result<Query, Response> {
    let text = |name: &str| params.get(name).filter(|v| !v.is_empty()).cloned();
    let bad = |name: &str, what: &str| {
        error(
            StatusCode::BAD_REQUEST,
            format!(
                "{name}: {:?} is not {what}",
                params.get(name).map(String::as_str).unwrap_or_default()
            ),
        )
    };
    let number = |name: &str| -> Result<Option<u64>, Response> {
        text(name)
            .map(|v| v.parse::<u64>().map_err(|_| bad(name, "a number")))
            .transpose()
    };
    let time = |name: &str| -> Result<Option<u64>, Response> {
        text(name)
            .map(|v| {
                v.parse::<u64>()
                    .ok()
                    .or_else(|| {
                        crate::base::time::parse_rfc3339(&v).and_then(|ms| u64::try_from(ms).ok())
                    })
                    .ok_or_else(|| bad(name, "an RFC 3339 time or milliseconds since the epoch"))
            })
            .transpose()
    };
    let limit =
        number("limit")?.map_or(DEFAULT_LIMIT, |n| usize::try_from(n).unwrap_or(usize::MAX));
    Ok(Query {
        message_id: text("message_id"),
        user_id: text("user_id"),
        email: text("email"),
        event: text("event"),
        state: text("state"),
        since_ms: time("since")?,
        until_ms: time("until")?,
        limit,
        cursor: number("cursor")?,
    })
}

/// Runs a read of the log off the async threads; a failure is a 500 saying why.
async fn read<T: Send + 'static>(
    journal: Arc<Journal>,
    read: impl FnOnce(&Journal) -> Result<T, crate::queue::QueueError> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(move || read(&journal)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

async fn events<Q: Queue>(
    State(state): State<Arc<AdminState<Q>>>,
    axum::extract::Query(params): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let answer = async {
        let journal = journal_of(&state)?;
        let query = query_of(&params)?;
        read(journal, move |j| j.search(&query)).await
    };
    match answer.await {
        Ok(page) => Json(page).into_response(),
        Err(response) => response,
    }
}

async fn event<Q: Queue>(
    State(state): State<Arc<AdminState<Q>>>,
    Path(message_id): Path<String>,
) -> Response {
    let answer = async {
        let journal = journal_of(&state)?;
        let id = message_id.clone();
        read(journal, move |j| j.record(&id)).await
    };
    match answer.await {
        Ok(Some(record)) => Json(record).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("the delivery log has no event {message_id:?} (never accepted, or pruned)"),
        ),
        Err(response) => response,
    }
}

async fn entries<Q: Queue>(
    State(state): State<Arc<AdminState<Q>>>,
    axum::extract::Query(params): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let answer = async {
        let journal = journal_of(&state)?;
        let query = query_of(&params)?;
        let after = match params.get("after").filter(|v| !v.is_empty()) {
            Some(v) => Some(v.parse::<u64>().map_err(|_| {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("after: {v:?} is not a number"),
                )
            })?),
            None => None,
        };
        let limit = query.limit;
        let found = read(journal, move |j| j.entries(after, &query, limit)).await?;
        Ok::<_, Response>((after, found))
    };
    match answer.await {
        Ok((after, entries)) => {
            let next = entries.last().map(|n| n.seq).or(after).unwrap_or(0);
            Json(json!({"entries": entries, "next_cursor": next.to_string()})).into_response()
        }
        Err(response) => response,
    }
}
