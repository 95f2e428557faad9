//! The admin JSON API under `/api/`: what the server runs and what became of its events, for
//! `zdmap events`, the console and tooling. Every route answers JSON; an error is
//! `{"error": "..."}` with its status.
//!
//! - `GET /api/actions`: the action table of the running mappings (name, title, trigger,
//!   enabled, steps, file), and whether the last reload was refused and why.
//! - `GET /api/status`: readiness and its reasons, the events queued, and the delivery
//!   counters since start.

use super::AdminState;
use crate::queue::Queue;
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::{Value, json};
use std::sync::Arc;

/// The routes of `/api/` (the token is checked around them).
pub(crate) fn routes<Q: Queue>() -> Router<Arc<AdminState<Q>>> {
    Router::new()
        .route("/actions", get(actions::<Q>))
        .route("/status", get(status::<Q>))
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
