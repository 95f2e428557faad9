//! The console's pages of the delivery log: the search (`/events`: by `messageId`, user, email,
//! event name, state and time, newest first, a page at a time) and one event's timeline
//! (`/events/{message_id}`: what was accepted, the actions matched, each request with Zendesk's
//! answer, the waits and the end), with a replay of its dead letters when it has some. They
//! read the log through the same functions as the API ([`super::api::query_of`],
//! [`crate::queue::journal::Journal::search`] and [`crate::queue::journal::Journal::record`]).

use super::super::api::{self, By, Refusal};
use super::super::letters::{self, Filter};
use super::super::{Access, AdminState};
use super::{Notice, encode, frame};
use crate::queue::{Queue, Selection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// The search's fields, in the form's order.
const FIELDS: [&str; 7] = [
    "message_id",
    "user_id",
    "email",
    "event",
    "state",
    "since",
    "until",
];

/// The states an event can be in, for the form's list.
const STATES: [&str; 9] = [
    "accepted",
    "delivering",
    "waiting",
    "delivered",
    "skipped",
    "dead_lettered",
    "refused",
    "replayed",
    "discarded",
];

pub(super) async fn search<Q: Queue>(
    State(state): State<Arc<AdminState<Q>>>,
    Extension(access): Extension<Access>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let found = async {
        let journal = api::journal_of(&state)?;
        let query = api::query_of(&params)?;
        api::read(journal, move |j| j.search(&query)).await
    }
    .await;
    let (events, next_url, problem) = match found {
        Ok(page) => {
            let next = page.next_cursor.map(|cursor| {
                let mut url = format!("/events?cursor={}", encode(&cursor));
                for field in FIELDS {
                    if let Some(value) = params.get(field).filter(|v| !v.is_empty()) {
                        url.push_str(&format!("&{field}={}", encode(value)));
                    }
                }
                url
            });
            (page.events, next, None)
        }
        Err(Refusal(_, why)) => (Vec::new(), None, Some(why)),
    };
    let form: serde_json::Map<String, Value> = FIELDS
        .iter()
        .map(|f| {
            (
                (*f).to_owned(),
                json!(params.get(*f).cloned().unwrap_or_default()),
            )
        })
        .collect();
    let content = json!({
        "events": events,
        "next_url": next_url,
        "problem": problem,
        "form": form,
        "states": STATES,
        "searched": FIELDS.iter().any(|f| params.get(*f).is_some_and(|v| !v.is_empty())),
    });
    state
        .pages
        .render("events.html", frame(&state, &access, "events", content))
}

/// The dead letters of the event `message_id`.
async fn letters_of<Q: Queue>(state: &AdminState<Q>, message_id: &str) -> Vec<Value> {
    let filter = Filter {
        message_id: Some(message_id.to_owned()),
        ..Filter::default()
    };
    let found = async {
        let mut store = state.queue.dead_letters().await?;
        letters::page(&mut store, &filter, 0, letters::MAX_PAGE).await
    }
    .await;
    match found {
        Ok(page) => page.letters.iter().map(letters::json).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "the dead letters of an event could not be read");
            Vec::new()
        }
    }
}

pub(super) async fn timeline<Q: Queue>(
    State(state): State<Arc<AdminState<Q>>>,
    Extension(access): Extension<Access>,
    Path(message_id): Path<String>,
    Query(notice): Query<Notice>,
) -> Response {
    let found = async {
        let journal = api::journal_of(&state)?;
        let id = message_id.clone();
        api::read(journal, move |j| j.record(&id)).await
    }
    .await;
    let (record, problem) = match found {
        Ok(Some(record)) => (Some(record), None),
        Ok(None) => (
            None,
            Some(format!(
                "The delivery log has no event {message_id:?}: never accepted, or pruned."
            )),
        ),
        Err(Refusal(_, why)) => (None, Some(why)),
    };
    let letters = letters_of(&state, &message_id).await;
    let content = json!({
        "message_id": message_id,
        "record": record,
        "problem": problem,
        "letters": letters,
        "notice": notice.json(),
    });
    let mut answer = state
        .pages
        .render("event.html", frame(&state, &access, "events", content));
    if record.is_none() {
        *answer.status_mut() = StatusCode::NOT_FOUND;
    }
    answer
}

/// Replays the dead letters of the event `message_id`, and shows its timeline again.
pub(super) async fn replay<Q: Queue>(
    State(state): State<Arc<AdminState<Q>>>,
    Path(message_id): Path<String>,
) -> Response {
    let ids: Vec<u64> = letters_of(&state, &message_id)
        .await
        .iter()
        .filter_map(|l| l["id"].as_u64())
        .collect();
    let back = format!("/events/{}", encode(&message_id));
    if ids.is_empty() {
        return Redirect::to(&back).into_response();
    }
    match api::replay(&state, Ok(Selection::Ids(ids)), false, By::Console).await {
        Ok(replayed) => Redirect::to(&format!(
            "{back}?done=replayed&n={}&stale={}",
            replayed.moved,
            replayed.stale.len()
        ))
        .into_response(),
        Err(answer) => answer,
    }
}
