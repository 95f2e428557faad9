//! The inspection and control routes, for tests and people (never rate-limited, no auth):
//!
//! - `GET /__emulator/state`: users (with identities), organizations, memberships, tickets (with
//!   comments and audits), events, profiles, user_fields, organization_fields, job_statuses
//!   (due jobs run first).
//! - `GET /__emulator/requests`: the request log, the last `request_log_size` requests (see
//!   `request_log`); `DELETE` empties it.
//! - `POST /__emulator/reset`: empties the account, the request log, the rate counters and the
//!   OAuth codes, tokens and counts, then loads the start-up seed again. Knobs (the OAuth
//!   clients among them) stay as they are.
//! - `POST /__emulator/seed`: loads a JSON document (the shape of `state`) into the account.
//! - `GET /__emulator/config`: the runtime knobs. `POST /__emulator/config`: changes the knobs
//!   given (same names), plus `"add_forced_fault": {...}` and `"advance_clock_secs": N`.
//!   Secrets of OAuth clients show as `"[redacted]"`; a change that leaves `oauth_clients` out
//!   keeps them.
//! - `GET /__emulator/oauth`: what the OAuth endpoints did (see `oauth`): token requests by
//!   grant type, refusals by error, API requests refused for an expired, replaced or
//!   out-of-scope token, live tokens.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use super::fields::{self, Family};
use super::jobs;
use super::limits::{ForcedFault, RuntimeKnobs};
use super::memberships;
use super::organizations;
use super::router::{Shared, lock};
use super::state::{Store, opt_id};
use super::tickets;
use super::users;

pub(crate) fn routes() -> axum::Router<Shared> {
    axum::Router::new()
        .route("/__emulator/state", get(get_state))
        .route(
            "/__emulator/requests",
            get(get_requests).delete(clear_requests),
        )
        .route("/__emulator/reset", post(reset))
        .route("/__emulator/seed", post(seed))
        .route("/__emulator/config", get(get_config).post(set_config))
        .route("/__emulator/oauth", get(get_oauth))
}

async fn get_oauth(State(shared): State<Shared>) -> Json<Value> {
    let w = lock(&shared);
    Json(w.oauth.stats(w.store.clock.elapsed()))
}

async fn get_state(State(shared): State<Shared>) -> Json<Value> {
    let mut w = lock(&shared);
    w.catch_up();
    Json(state_json(&w.store))
}

async fn get_requests(State(shared): State<Shared>) -> Json<Value> {
    Json(Value::Array(lock(&shared).log.entries()))
}

async fn clear_requests(State(shared): State<Shared>) -> StatusCode {
    lock(&shared).log.clear();
    StatusCode::NO_CONTENT
}

async fn reset(State(shared): State<Shared>) -> Response {
    let mut w = lock(&shared);
    let clock = w.store.clock.clone();
    w.store = Store::new(&w.subdomain, w.seed, clock);
    w.log.clear();
    w.oauth.reset();
    let now = w.store.clock.elapsed();
    w.limits.reset_counters(now);
    let seed = w.initial_seed.clone();
    if let Some(seed) = seed
        && let Err(e) = load_seed(&mut w.store, &seed)
    {
        return bad(e);
    }
    Json(json!({"reset": true})).into_response()
}

async fn seed(State(shared): State<Shared>, body: axum::body::Bytes) -> Response {
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad(format!("seed is not JSON: {e}")),
    };
    let mut w = lock(&shared);
    match load_seed(&mut w.store, &value) {
        Ok(()) => Json(state_json(&w.store)).into_response(),
        Err(e) => bad(e),
    }
}

async fn get_config(State(shared): State<Shared>) -> Json<Value> {
    Json(serde_json::to_value(&lock(&shared).limits.knobs).unwrap_or(Value::Null))
}

async fn set_config(State(shared): State<Shared>, body: axum::body::Bytes) -> Response {
    let patch: Map<String, Value> = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad(format!("config must be a JSON object: {e}")),
    };
    let mut w = lock(&shared);
    match apply_config(&w.limits.knobs, patch) {
        Ok((knobs, advance)) => {
            w.limits.knobs = knobs;
            if let Some(secs) = advance {
                w.store.clock.advance(Duration::from_secs(secs));
            }
            Json(serde_json::to_value(&w.limits.knobs).unwrap_or(Value::Null)).into_response()
        }
        Err(e) => bad(e),
    }
}

/// Overlays `patch` on the current knobs; returns the new knobs and a clock advance.
fn apply_config(
    current: &RuntimeKnobs,
    mut patch: Map<String, Value>,
) -> Result<(RuntimeKnobs, Option<u64>), String> {
    let advance = match patch.remove("advance_clock_secs") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or("advance_clock_secs must be a whole number of seconds")?,
        ),
    };
    let add_fault = match patch.remove("add_forced_fault") {
        None => None,
        Some(v) => Some(
            serde_json::from_value::<ForcedFault>(v)
                .map_err(|e| format!("add_forced_fault: {e}"))?,
        ),
    };
    let clients_given = patch.contains_key("oauth_clients");
    let mut merged = serde_json::to_value(current).map_err(|e| e.to_string())?;
    if let Some(obj) = merged.as_object_mut() {
        obj.extend(patch);
    }
    let mut knobs: RuntimeKnobs =
        serde_json::from_value(merged).map_err(|e| format!("config: {e}"))?;
    // The clients' secrets do not survive the JSON above (they serialize redacted).
    if !clients_given {
        knobs.oauth_clients = current.oauth_clients.clone();
    }
    knobs.check()?;
    knobs.forced_faults.extend(add_fault);
    Ok((knobs, advance))
}

fn bad(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "InvalidSeedOrConfig", "description": message})),
    )
        .into_response()
}

/// The whole account as JSON (`GET /__emulator/state`).
pub(crate) fn state_json(s: &Store) -> Value {
    let users: Vec<Value> = s
        .users
        .values()
        .map(|u| {
            let mut v = s.render_user(u);
            v["identities"] = u
                .identities
                .iter()
                .map(|i| s.render_identity(u.id, i))
                .collect();
            v
        })
        .collect();
    let tickets: Vec<Value> = s
        .tickets
        .values()
        .map(|t| {
            let mut v = s.render_ticket(t);
            v["comments"] = t.comments.iter().map(|c| s.render_comment(c)).collect();
            v["audits"] = json!(t.audits);
            v
        })
        .collect();
    json!({
        "users": users,
        "organizations": s.organizations.values().map(|o| s.render_org(o)).collect::<Vec<_>>(),
        "memberships": s.memberships.values().map(|m| s.render_membership(m)).collect::<Vec<_>>(),
        "tickets": tickets,
        "events": s.events.iter().map(|e| s.render_event(e)).collect::<Vec<_>>(),
        "profiles": s.profiles.iter().map(|p| s.render_profile(p)).collect::<Vec<_>>(),
        "user_fields": s.user_fields.iter().map(|f| s.render_field("user_fields", f)).collect::<Vec<_>>(),
        "organization_fields": s.organization_fields.iter().map(|f| s.render_field("organization_fields", f)).collect::<Vec<_>>(),
        "job_statuses": s.jobs.values().map(|j| jobs::render(s, j)).collect::<Vec<_>>(),
    })
}

/// Loads a seed document (the shape of [`state_json`], any subset) into the store: fields
/// first, then organizations, users, memberships and tickets. Records keep their `id` when given.
pub(crate) fn load_seed(s: &mut Store, seed: &Value) -> Result<(), String> {
    let Some(seed) = seed.as_object() else {
        return Err("the seed must be a JSON object".into());
    };
    let known = [
        "users",
        "organizations",
        "memberships",
        "tickets",
        "user_fields",
        "organization_fields",
    ];
    let ignored = ["events", "profiles", "job_statuses"];
    if let Some(k) = seed
        .keys()
        .find(|k| !known.contains(&k.as_str()) && !ignored.contains(&k.as_str()))
    {
        return Err(format!(
            "unknown seed key {k:?}; expected some of {known:?}"
        ));
    }
    let items = |key: &str| -> Result<Vec<&Map<String, Value>>, String> {
        match seed.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_object()
                        .ok_or(format!("{key}: every entry must be an object"))
                })
                .collect(),
            Some(_) => Err(format!("{key} must be an array")),
        }
    };
    let fail = |key: &str, i: usize, e: super::errors::ApiError| {
        format!("{key}[{i}]: {}", e.0.body_json())
    };
    for (key, fam) in [
        ("user_fields", Family::User),
        ("organization_fields", Family::Organization),
    ] {
        for (i, f) in items(key)?.into_iter().enumerate() {
            fields::create_field(s, fam, f).map_err(|e| fail(key, i, e))?;
        }
    }
    for (i, o) in items("organizations")?.into_iter().enumerate() {
        organizations::create_org(s, o).map_err(|e| fail("organizations", i, e))?;
    }
    for (i, u) in items("users")?.into_iter().enumerate() {
        users::create_user(s, u).map_err(|e| fail("users", i, e))?;
    }
    for (i, m) in items("memberships")?.into_iter().enumerate() {
        let (Some(uid), Some(oid)) = (opt_id(m, "user_id"), opt_id(m, "organization_id")) else {
            return Err(format!(
                "memberships[{i}]: user_id and organization_id are required"
            ));
        };
        if !s.users.contains_key(&uid) || !s.organizations.contains_key(&oid) {
            return Err(format!(
                "memberships[{i}]: unknown user {uid} or organization {oid}"
            ));
        }
        if s.membership_of(uid, oid).is_none() {
            memberships::insert(s, uid, oid, opt_id(m, "id"));
        }
    }
    for (i, t) in items("tickets")?.into_iter().enumerate() {
        tickets::create_ticket(s, t).map_err(|e| fail("tickets", i, e))?;
    }
    Ok(())
}
