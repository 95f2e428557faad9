//! Tickets (docs/zendesk.md, "Tickets"): create (comment required; a `requester` object finds or
//! creates the user; `external_id` is not unique; `Idempotency-Key` replays with
//! `x-idempotency-lookup: hit`), update (appends comments, answers an audit, 422 on closed
//! tickets, `safe_update` 409, 30 updates per ticket per 10 minutes then 429), show, list (with
//! `?external_id=`), comments and audits. A create's or an update's `metadata` is kept in its
//! audit under `metadata.custom`, as Zendesk does ("Setting Metadata").

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::auth::Principal;
use super::errors::{ApiError, ApiResult, Invalid, Reply, ReplyBody};
use super::router::{ApiRequest, World, cursor_page, offset_page, whole_list};
use super::state::{
    Comment, IdempotentEntry, Kind, Store, Ticket, TicketKey, opt_id, opt_str, str_list,
};
use super::users;

const PRIORITIES: [&str; 4] = ["urgent", "high", "normal", "low"];
const STATUSES: [&str; 6] = ["new", "open", "pending", "hold", "solved", "closed"];
const TYPES: [&str; 4] = ["problem", "incident", "question", "task"];
/// How long an idempotency key is remembered (about two hours at Zendesk).
const IDEMPOTENCY_TTL_SECS: u64 = 2 * 60 * 60;

pub(crate) fn list(w: &mut World, req: &ApiRequest) -> ApiResult {
    let s = &w.store;
    let items = match req.query("external_id") {
        Some(ext) => s
            .tickets
            .find(&TicketKey::ExternalId(ext.to_lowercase()))
            .map(|t| s.render_ticket(t))
            .collect(),
        None => s.tickets.values().map(|t| s.render_ticket(t)).collect(),
    };
    offset_page(req, "tickets", items)
}

pub(crate) fn show(w: &mut World, id: u64) -> ApiResult {
    let s = &w.store;
    let t = s.tickets.get(&id).ok_or_else(ApiError::not_found)?;
    Ok(Reply::ok(json!({"ticket": s.render_ticket(t)})))
}

pub(crate) fn comments(w: &mut World, id: u64) -> ApiResult {
    let s = &w.store;
    let t = s.tickets.get(&id).ok_or_else(ApiError::not_found)?;
    let list: Vec<Value> = t.comments.iter().map(|c| s.render_comment(c)).collect();
    Ok(whole_list("comments", list))
}

/// A ticket's audits, oldest first, at most 100 a page: cursor pagination when `page[size]` or
/// `page[after]` is given, offset pagination otherwise.
pub(crate) fn audits(w: &mut World, req: &ApiRequest, id: u64) -> ApiResult {
    let s = &w.store;
    let t = s.tickets.get(&id).ok_or_else(ApiError::not_found)?;
    let size = req.page_size()?;
    if size.is_none() && req.query("page[after]").is_none() {
        return offset_page(req, "audits", t.audits.clone());
    }
    Ok(cursor_page(
        req,
        &format!("tickets/{id}/audits"),
        "audits",
        &t.audits,
        size.unwrap_or(100),
        Value::clone,
    ))
}

/// `POST tickets`, honouring `Idempotency-Key`.
pub(crate) fn create(w: &mut World, req: &ApiRequest) -> ApiResult {
    let key = req.header("idempotency-key").map(str::to_string);
    let obj = req.wrapped("ticket")?;
    let Some(key) = key else {
        return create_ticket(&mut w.store, obj);
    };
    let now = w.store.clock.elapsed().as_secs();
    w.store.idempotency.expire(now, IDEMPOTENCY_TTL_SECS);
    if let Some(entry) = w.store.idempotency.get(&key) {
        if entry.request_body != req.body {
            return Err(ApiError(
                Reply::json(
                    400,
                    json!({"error": "IdempotentRequestError", "description": "The idempotency key was already used with different request parameters"}),
                )
                .header("x-idempotency-lookup", "hit"),
            ));
        }
        return Ok(entry.reply.clone().header("x-idempotency-lookup", "hit"));
    }
    let reply = create_ticket(&mut w.store, obj)?;
    w.store.idempotency.insert(
        key,
        IdempotentEntry {
            request_body: req.body.clone(),
            reply: reply.clone(),
            stored_at_secs: now,
        },
    );
    Ok(reply.header("x-idempotency-lookup", "miss"))
}

/// The comment of a create or update body: `comment.body` / `comment.html_body`, or a plain
/// `description` on create.
fn comment_of(obj: &Map<String, Value>) -> Option<(String, Option<String>, bool, Option<u64>)> {
    if let Some(c) = obj.get("comment") {
        let c = match c {
            Value::String(s) => {
                return (!s.trim().is_empty()).then(|| (s.clone(), None, true, None));
            }
            Value::Object(c) => c,
            _ => return None,
        };
        let html = opt_str(c, "html_body").filter(|h| !h.trim().is_empty());
        let body = opt_str(c, "body")
            .filter(|b| !b.trim().is_empty())
            .or_else(|| html.as_deref().map(strip_tags))?;
        let public = c.get("public").and_then(Value::as_bool).unwrap_or(true);
        return Some((body, html, public, opt_id(c, "author_id")));
    }
    opt_str(obj, "description")
        .filter(|d| !d.trim().is_empty())
        .map(|d| (d, None, true, None))
}

fn strip_tags(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

/// Checks the enum-valued fields shared by create and update.
fn check_enums(obj: &Map<String, Value>, mut inv: Invalid) -> Invalid {
    for (key, allowed) in [
        ("priority", &PRIORITIES[..]),
        ("status", &STATUSES[..]),
        ("type", &TYPES[..]),
    ] {
        if let Some(v) = opt_str(obj, key)
            && !allowed.contains(&v.as_str())
        {
            inv = inv.add(key, "InvalidValue", format!("{key}: {v} is not valid"));
        }
    }
    inv
}

/// Finds or creates the requester: `requester_id`, or `requester: {email, name}`.
fn resolve_requester(s: &mut Store, obj: &Map<String, Value>) -> Result<u64, ApiError> {
    if let Some(id) = opt_id(obj, "requester_id") {
        return s.users.contains_key(&id).then_some(id).ok_or_else(|| {
            ApiError::invalid("requester", "InvalidValue", "Requester: is invalid")
        });
    }
    let Some(r) = obj.get("requester").and_then(Value::as_object) else {
        return Err(ApiError::invalid(
            "requester",
            "BlankValue",
            "Requester: cannot be blank",
        ));
    };
    let email = opt_str(r, "email")
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty());
    if let Some(id) = email.as_deref().and_then(|e| s.user_by_email(e)) {
        return Ok(id);
    }
    let mut user = Map::new();
    let name = opt_str(r, "name")
        .filter(|n| !n.trim().is_empty())
        .or_else(|| {
            email
                .as_deref()
                .and_then(|e| e.split('@').next())
                .map(str::to_string)
        });
    user.insert("name".into(), json!(name));
    if let Some(e) = email {
        user.insert("email".into(), json!(e));
    }
    if let Some(l) = r.get("locale_id") {
        user.insert("locale_id".into(), l.clone());
    }
    users::create_user(s, &user).map_err(|e| {
        let details = e.0.body_json().get("details").cloned().unwrap_or(Value::Null);
        ApiError(Reply::json(
            422,
            json!({"error": "RecordInvalid", "description": "Record validation errors", "details": {"requester": [{"description": format!("Requester: is invalid ({details})"), "error": "InvalidValue"}]}}),
        ))
    })
}

/// Creates a ticket from a `ticket` object (also used by seeding).
pub(crate) fn create_ticket(s: &mut Store, obj: &Map<String, Value>) -> ApiResult {
    let mut inv = Invalid::new();
    let comment = comment_of(obj);
    if comment.is_none() {
        inv = inv.add("base", "BlankValue", "Description: cannot be blank");
    }
    inv = check_enums(obj, inv);
    if let Some(oid) = opt_id(obj, "organization_id")
        && !s.organizations.contains_key(&oid)
    {
        inv = inv.add(
            "organization_id",
            "InvalidValue",
            "Organization: is invalid",
        );
    }
    inv.into_result()?;
    let Some((body, html, public, author_id)) = comment else {
        return Err(ApiError::not_found());
    };
    let requester_id = resolve_requester(s, obj)?;
    let organization_id = opt_id(obj, "organization_id").or_else(|| s.default_org_of(requester_id));
    let id = opt_id(obj, "id")
        .filter(|i| !s.tickets.contains_key(i))
        .unwrap_or_else(|| s.ids.next(Kind::Ticket));
    s.ids.observe(Kind::Ticket, id);
    let now = s.now();
    let comment = Comment {
        id: s.ids.next(Kind::Comment),
        // The API user is not a stored record: comments without an author are the requester's.
        author_id: author_id.unwrap_or(requester_id),
        body: body.clone(),
        html_body: html,
        public,
        created_at: now.clone(),
    };
    let mut ticket = Ticket {
        id,
        external_id: opt_str(obj, "external_id"),
        subject: opt_str(obj, "subject"),
        description: body,
        priority: opt_str(obj, "priority"),
        status: opt_str(obj, "status").unwrap_or_else(|| "new".into()),
        kind: opt_str(obj, "type"),
        requester_id,
        submitter_id: opt_id(obj, "submitter_id").unwrap_or(requester_id),
        assignee_id: opt_id(obj, "assignee_id"),
        organization_id,
        group_id: opt_id(obj, "group_id"),
        tags: obj.get("tags").map(str_list).unwrap_or_default(),
        custom_fields: custom_fields(obj.get("custom_fields"), Vec::new()),
        due_at: opt_str(obj, "due_at"),
        comments: Vec::new(),
        audits: Vec::new(),
        created_at: now.clone(),
        updated_at: now.clone(),
    };
    let mut events = vec![s.render_comment(&comment)];
    for (field, value) in [
        ("subject", json!(ticket.subject)),
        ("status", json!(ticket.status)),
        ("priority", json!(ticket.priority)),
        ("requester_id", json!(ticket.requester_id)),
    ] {
        events.push(json!({"id": s.ids.next(Kind::Comment), "type": "Create", "field_name": field, "value": value}));
    }
    let author_id = comment.author_id;
    ticket.comments.push(comment);
    let audit = audit(s, id, author_id, events, obj.get("metadata"), &now);
    ticket.audits.push(audit);
    let rendered = s.render_ticket(&ticket);
    s.tickets.insert(ticket);
    Ok(Reply::json(201, json!({"ticket": rendered}))
        .header("Location", format!("/api/v2/tickets/{id}.json")))
}

/// An audit of a ticket change. `custom` is the write's `metadata` (Zendesk's "Setting
/// Metadata"): given on a create or an update, it is read back under the audit's
/// `metadata.custom`.
fn audit(
    s: &mut Store,
    ticket_id: u64,
    author_id: u64,
    events: Vec<Value>,
    custom: Option<&Value>,
    now: &str,
) -> Value {
    let custom = custom
        .filter(|c| c.is_object())
        .cloned()
        .unwrap_or(json!({}));
    json!({
        "id": s.ids.next(Kind::Audit),
        "ticket_id": ticket_id,
        "created_at": now,
        "author_id": author_id,
        "metadata": {"system": {}, "custom": custom},
        "via": {"channel": "api", "source": {"from": {}, "to": {}, "rel": null}},
        "events": events,
    })
}

/// Merges `custom_fields: [{id, value}]` into `current` by id.
fn custom_fields(given: Option<&Value>, mut current: Vec<Value>) -> Vec<Value> {
    for item in given.and_then(Value::as_array).into_iter().flatten() {
        let Some(id) = item.get("id").and_then(Value::as_u64) else {
            continue;
        };
        let value = item.get("value").cloned().unwrap_or(Value::Null);
        match current
            .iter_mut()
            .find(|c| c.get("id").and_then(Value::as_u64) == Some(id))
        {
            Some(c) => c["value"] = value,
            None => current.push(json!({"id": id, "value": value})),
        }
    }
    current
}

/// `PUT tickets/{id}`.
pub(crate) fn update(w: &mut World, req: &ApiRequest, id: u64) -> ApiResult {
    let obj = req.wrapped("ticket")?;
    if !w.store.tickets.contains_key(&id) {
        return Err(ApiError::not_found());
    }
    // 30 updates per ticket per 10 minutes per user.
    let who = match &req.principal {
        Some(Principal::Agent(email)) => email.to_lowercase(),
        _ => "oauth".to_string(),
    };
    let knobs = &w.limits.knobs;
    let (limit, window) = (
        knobs.ticket_updates_per_window,
        Duration::from_secs(knobs.ticket_update_window_secs.max(1)),
    );
    let now_t = w.store.clock.elapsed();
    if let Err(retry_after) =
        w.limits
            .bucket(format!("ticket-update:{id}:{who}"), limit, window, now_t)
    {
        return Err(ApiError(Reply {
            status: 429,
            headers: vec![("Retry-After".into(), retry_after.to_string())],
            body: ReplyBody::Text(
                "text/html; charset=utf-8",
                "Rate limit for ticket updates exceeded, please wait before updating this ticket again".into(),
            ),
        }));
    }
    let audit = update_ticket(&mut w.store, id, obj)?;
    let s = &w.store;
    let t = s.tickets.get(&id).ok_or_else(ApiError::not_found)?;
    Ok(Reply::ok(
        json!({"ticket": s.render_ticket(t), "audit": audit}),
    ))
}

/// Applies a ticket update and gives its audit: 404 for no such ticket, 422 on a closed one,
/// 409 for a stale `safe_update`. Also what each item of `update_many` goes through (see
/// `bulk`).
pub(crate) fn update_ticket(
    s: &mut Store,
    id: u64,
    obj: &Map<String, Value>,
) -> Result<Value, ApiError> {
    let (status, updated_at, requester_id) = match s.tickets.get(&id) {
        Some(t) => (t.status.clone(), t.updated_at.clone(), t.requester_id),
        None => return Err(ApiError::not_found()),
    };
    if status == "closed" {
        return Err(ApiError(Reply::json(
            422,
            json!({"error": "RecordInvalid", "description": "Record validation errors", "details": {"status": [{"description": "closed prevents ticket update"}]}}),
        )));
    }
    if obj.get("safe_update").and_then(Value::as_bool) == Some(true)
        && opt_str(obj, "updated_stamp").is_some_and(|stamp| stamp != updated_at)
    {
        return Err(ApiError(Reply::json(
            409,
            json!({"error": "UpdateConflict", "description": "Safe Update prevented the update due to outdated ticket data. Please fetch the latest ticket data and try again."}),
        )));
    }
    let mut inv = check_enums(obj, Invalid::new());
    if let Some(Value::String(c)) = obj.get("comment").and_then(|c| c.get("body"))
        && c.trim().is_empty()
    {
        inv = inv.add("comment", "BlankValue", "Comment: cannot be blank");
    }
    inv.into_result()?;
    let now = s.now();
    let mut events = Vec::new();
    let comment = comment_of(obj).filter(|_| obj.contains_key("comment"));
    let comment = comment.map(|(body, html, public, author_id)| Comment {
        id: s.ids.next(Kind::Comment),
        // The API user is not a stored record: comments without an author are the requester's.
        author_id: author_id.unwrap_or(requester_id),
        body,
        html_body: html,
        public,
        created_at: now.clone(),
    });
    if let Some(c) = &comment {
        events.push(s.render_comment(c));
    }
    let Some(mut t) = s.tickets.remove(&id) else {
        return Err(ApiError::not_found());
    };
    let mut changes: Vec<(&str, Value, Value)> = Vec::new();
    let mut set_str = |field: &'static str, slot: &mut Option<String>| {
        if let Some(v) = opt_str(obj, field)
            && slot.as_deref() != Some(v.as_str())
        {
            changes.push((field, json!(v), json!(slot)));
            *slot = Some(v);
        }
    };
    set_str("subject", &mut t.subject);
    set_str("priority", &mut t.priority);
    set_str("type", &mut t.kind);
    set_str("external_id", &mut t.external_id);
    set_str("due_at", &mut t.due_at);
    if let Some(v) = opt_str(obj, "status")
        && v != t.status
    {
        changes.push(("status", json!(v), json!(t.status)));
        t.status = v;
    }
    for (field, slot) in [
        ("assignee_id", &mut t.assignee_id),
        ("group_id", &mut t.group_id),
        ("organization_id", &mut t.organization_id),
    ] {
        if obj.contains_key(field) {
            let v = opt_id(obj, field);
            if v != *slot {
                changes.push((field, json!(v), json!(slot)));
                *slot = v;
            }
        }
    }
    let old_tags = t.tags.clone();
    if let Some(tags) = obj.get("tags") {
        t.tags = str_list(tags);
    }
    for tag in obj.get("additional_tags").map(str_list).unwrap_or_default() {
        if !t.tags.contains(&tag) {
            t.tags.push(tag);
        }
    }
    let remove = obj.get("remove_tags").map(str_list).unwrap_or_default();
    t.tags.retain(|tag| !remove.contains(tag));
    if t.tags != old_tags {
        changes.push(("tags", json!(t.tags), json!(old_tags)));
    }
    t.custom_fields = custom_fields(
        obj.get("custom_fields"),
        std::mem::take(&mut t.custom_fields),
    );
    for (field, value, previous) in changes {
        events.push(json!({"id": s.ids.next(Kind::Comment), "type": "Change", "field_name": field, "value": value, "previous_value": previous}));
    }
    if let Some(c) = comment {
        t.comments.push(c);
    }
    t.updated_at = now.clone();
    let author_id = t.comments.last().map_or(requester_id, |c| c.author_id);
    let audit = audit(s, id, author_id, events, obj.get("metadata"), &now);
    t.audits.push(audit.clone());
    s.tickets.insert(t);
    Ok(audit)
}
