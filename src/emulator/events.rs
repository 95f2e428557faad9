//! Sunshine profile events (docs/zendesk.md, "User events"). `POST users/{id}/events` and
//! `POST user_profiles/events` answer 202 `{"profile_id","status":"received","user_id":"<string>"}`.
//! Both require `profile.source`, `profile.type`, at least one identifier, `event.source`,
//! `event.type` and an object `event.properties`; the source `zendesk` is reserved. The
//! `user_profiles` form links the profile to a user by its identifiers (email, external_id) and
//! creates the user when none matches. `GET users/{id}/events` reads them back (cursor envelope,
//! `filter[source]`, `filter[type]`, `filter[start_time]`, `filter[end_time]`).

use serde_json::{Map, Value, json};

use super::errors::{ApiError, ApiResult, Reply};
use super::router::{ApiRequest, World, cursor_page};
use super::state::{Profile, Store, UserEvent, opt_str};
use super::users;

/// The `{id}` of `users/{id}/events`: a bad one is a 400 in the object envelope.
pub(crate) fn user_id(segment: &str) -> Result<u64, ApiError> {
    segment.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "Invalid parameter: id must be an integer, got {segment}"
        ))
    })
}

fn invalid(s: &mut Store, title: impl Into<String>) -> ApiError {
    let id = s.hex_id();
    ApiError::errors(400, "InvalidValue", title, id)
}

/// A required non-empty string member, or a 400.
fn required(
    s: &mut Store,
    obj: &Map<String, Value>,
    what: &str,
    key: &str,
) -> Result<String, ApiError> {
    match opt_str(obj, key).filter(|v| !v.trim().is_empty()) {
        Some(v) => Ok(v),
        None => Err(invalid(s, format!("{what}.{key} is required"))),
    }
}

pub(crate) fn track(w: &mut World, req: &ApiRequest, user: Option<u64>) -> ApiResult {
    let s = &mut w.store;
    if let Some(uid) = user
        && !s.users.contains_key(&uid)
    {
        let id = s.hex_id();
        return Err(ApiError::errors(404, "NotFound", "User not found", id));
    }
    let (Some(profile), Some(event)) = (
        req.body.get("profile").and_then(Value::as_object),
        req.body.get("event").and_then(Value::as_object),
    ) else {
        return Err(invalid(s, "profile and event objects are required"));
    };
    let p_source = required(s, profile, "profile", "source")?;
    let p_type = required(s, profile, "profile", "type")?;
    let e_source = required(s, event, "event", "source")?;
    let e_type = required(s, event, "event", "type")?;
    if p_source.eq_ignore_ascii_case("zendesk") || e_source.eq_ignore_ascii_case("zendesk") {
        return Err(invalid(
            s,
            "The source 'zendesk' is reserved and cannot be used",
        ));
    }
    let Some(properties) = event.get("properties").filter(|p| p.is_object()).cloned() else {
        return Err(invalid(
            s,
            "event.properties is required and must be an object",
        ));
    };
    let identifiers: Vec<(String, String)> = profile
        .get("identifiers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| {
            Some((
                opt_str(i.as_object()?, "type")?,
                opt_str(i.as_object()?, "value")?,
            ))
        })
        .filter(|(t, v)| !t.is_empty() && !v.is_empty())
        .collect();
    if identifiers.is_empty() {
        return Err(invalid(
            s,
            "profile.identifiers must contain at least one identifier with type and value",
        ));
    }
    let name = opt_str(profile, "name");
    let uid = match user {
        Some(uid) => uid,
        None => find_or_create_user(s, &identifiers, name.as_deref())?,
    };
    let profile_id = upsert_profile(s, uid, &p_source, &p_type, name, &identifiers);
    let now = s.now();
    let ev = UserEvent {
        id: s.ulid(),
        user_id: uid,
        profile_id: profile_id.clone(),
        source: e_source,
        kind: e_type,
        description: opt_str(event, "description"),
        properties,
        created_at: opt_str(event, "created_at").unwrap_or_else(|| now.clone()),
        received_at: now,
    };
    s.events.push(ev);
    Ok(Reply::json(
        202,
        json!({"profile_id": profile_id, "status": "received", "user_id": uid.to_string()}),
    ))
}

/// Links identifiers to a user (email, then external_id), creating an end user when none matches.
fn find_or_create_user(
    s: &mut Store,
    identifiers: &[(String, String)],
    name: Option<&str>,
) -> Result<u64, ApiError> {
    let value_of = |kind: &str| {
        identifiers
            .iter()
            .find(|(t, _)| t == kind)
            .map(|(_, v)| v.clone())
    };
    let email = value_of("email");
    let external_id = value_of("external_id");
    if let Some(id) = email.as_deref().and_then(|e| s.user_by_email(e)) {
        return Ok(id);
    }
    if let Some(id) = external_id
        .as_deref()
        .and_then(|e| s.user_by_external_id(e))
    {
        return Ok(id);
    }
    let mut user = Map::new();
    let fallback = identifiers
        .first()
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    user.insert(
        "name".into(),
        json!(name.map(str::to_string).unwrap_or(fallback)),
    );
    if let Some(e) = email {
        user.insert("email".into(), json!(e));
    }
    if let Some(e) = external_id {
        user.insert("external_id".into(), json!(e));
    }
    users::create_user(s, &user)
}

fn upsert_profile(
    s: &mut Store,
    uid: u64,
    source: &str,
    kind: &str,
    name: Option<String>,
    identifiers: &[(String, String)],
) -> String {
    let idents = identifiers
        .iter()
        .map(|(t, v)| json!({"type": t, "value": v}));
    let key = (uid, source.to_string(), kind.to_string());
    if let Some(p) = s
        .profile_index
        .get(&key)
        .and_then(|i| s.profiles.get_mut(*i))
    {
        for i in idents {
            if !p.identifiers.contains(&i) {
                p.identifiers.push(i);
            }
        }
        if name.is_some() {
            p.name = name;
        }
        return p.id.clone();
    }
    let id = s.ulid();
    s.profile_index.insert(key, s.profiles.len());
    s.profiles.push(Profile {
        id: id.clone(),
        user_id: uid,
        source: source.to_string(),
        kind: kind.to_string(),
        name,
        identifiers: idents.collect(),
    });
    id
}

/// Moves a user's events and profiles to another user (a merge). A profile whose source and
/// type the other user already has joins that one: its identifiers and its events go over.
pub(crate) fn move_to_user(s: &mut Store, from: u64, to: u64) {
    let mut joined: Vec<(String, String)> = Vec::new();
    for i in 0..s.profiles.len() {
        let p = &s.profiles[i];
        if p.user_id != from {
            continue;
        }
        let key = (to, p.source.clone(), p.kind.clone());
        match s.profile_index.get(&key).copied() {
            Some(kept) => {
                let (old_id, identifiers) = (p.id.clone(), p.identifiers.clone());
                let kept = &mut s.profiles[kept];
                for identifier in identifiers {
                    if !kept.identifiers.contains(&identifier) {
                        kept.identifiers.push(identifier);
                    }
                }
                joined.push((old_id, kept.id.clone()));
            }
            None => s.profiles[i].user_id = to,
        }
    }
    s.profiles
        .retain(|p| !joined.iter().any(|(old, _)| *old == p.id));
    s.profile_index = s
        .profiles
        .iter()
        .enumerate()
        .map(|(i, p)| ((p.user_id, p.source.clone(), p.kind.clone()), i))
        .collect();
    for e in s.events.iter_mut().filter(|e| e.user_id == from) {
        e.user_id = to;
        if let Some((_, kept)) = joined.iter().find(|(old, _)| *old == e.profile_id) {
            e.profile_id = kept.clone();
        }
    }
}

/// `GET users/{id}/events` with `filter[source]`, `filter[type]`, `filter[start_time]` and
/// `filter[end_time]` (on the event's `created_at`, both inclusive) and `page[size]`.
pub(crate) fn list_for_user(w: &mut World, req: &ApiRequest, uid: u64) -> ApiResult {
    let s = &w.store;
    if !s.users.contains_key(&uid) {
        return Err(ApiError::errors(
            404,
            "NotFound",
            "User not found",
            String::new(),
        ));
    }
    let source = req.query("filter[source]");
    let kind = req.query("filter[type]");
    let time = |name: &str| req.query(name).map(crate::base::time::parse_rfc3339);
    let (start, end) = (time("filter[start_time]"), time("filter[end_time]"));
    if matches!(start, Some(None)) || matches!(end, Some(None)) {
        return Err(ApiError::errors(
            400,
            "InvalidParameter",
            "filter[start_time] and filter[end_time] must be ISO 8601 times",
            String::new(),
        ));
    }
    let (start, end) = (start.flatten(), end.flatten());
    let size: usize = req
        .query("page[size]")
        .and_then(|n| n.parse().ok())
        .unwrap_or(100)
        .clamp(1, 1000);
    let matching: Vec<&UserEvent> = s
        .events
        .iter()
        .filter(|e| {
            e.user_id == uid
                && source.is_none_or(|x| e.source == x)
                && kind.is_none_or(|x| e.kind == x)
                && (start.is_none() && end.is_none() || {
                    let at = crate::base::time::parse_rfc3339(&e.created_at);
                    start.is_none_or(|s| at.is_some_and(|at| at >= s))
                        && end.is_none_or(|t| at.is_some_and(|at| at <= t))
                })
        })
        .collect();
    Ok(cursor_page(
        req,
        &format!("users/{uid}/events"),
        "events",
        &matching,
        size,
        |e| s.render_event(e),
    ))
}
