//! Users and their identities (docs/zendesk.md, "Users"): `create_or_update` matched by
//! external_id or email (case-insensitive, 201 vs 200, `Location`, the per-user limit), create,
//! update, show, `show_many`, `search`, `users/me`, identities, merge (end users only) and
//! delete. [`upsert`] is also what each item of `create_or_update_many` goes through (see `bulk`).
//!
//! The primary email is writable on create only. On update, a new email becomes a secondary
//! identity.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::auth::Principal;
use super::errors::{ApiError, ApiResult, Invalid, Reply};
use super::events;
use super::fields;
use super::memberships;
use super::organizations;
use super::router::{ApiRequest, ShowMany, World, offset_page, show_many_keys, whole_list};
use super::state::{Identity, Kind, Store, TicketKey, User, opt_id, opt_str, str_list};

/// Roles a user can have.
const ROLES: [&str; 3] = ["end-user", "agent", "admin"];

/// `GET users/me` without credentials: Zendesk's anonymous user, with status 200.
pub(crate) fn anonymous() -> Reply {
    Reply::ok(json!({"user": {
        "id": null, "url": null, "name": "Anonymous user", "email": "invalid@example.com",
        "role": "end-user", "verified": false, "locale": "en-US", "locale_id": 1,
        "time_zone": "UTC", "user_fields": {}
    }}))
}

pub(crate) fn me(w: &mut World, req: &ApiRequest) -> ApiResult {
    let email = match &req.principal {
        Some(Principal::Agent(email)) => email.clone(),
        _ => format!("oauth-agent@{}.example", w.subdomain),
    };
    let s = &w.store;
    let now = s.now();
    Ok(Reply::ok(json!({"user": {
        "id": 8_999_999_999_999u64, "url": s.url("users", 8_999_999_999_999u64),
        "name": "Emulator Agent", "email": email, "role": "admin", "verified": true,
        "active": true, "locale": "en-US", "locale_id": 1, "time_zone": "UTC",
        "created_at": now, "updated_at": now, "user_fields": {}
    }})))
}

pub(crate) fn list(w: &mut World, req: &ApiRequest) -> ApiResult {
    let s = &w.store;
    let items = s.users.values().map(|u| s.render_user(u)).collect();
    offset_page(req, "users", items)
}

pub(crate) fn show(w: &mut World, id: u64) -> ApiResult {
    let s = &w.store;
    let u = s.users.get(&id).ok_or_else(ApiError::not_found)?;
    Ok(Reply::ok(json!({"user": s.render_user(u)})))
}

/// `POST users`: always creates; 422 `DuplicateValue` when the email is taken.
pub(crate) fn create(w: &mut World, req: &ApiRequest) -> ApiResult {
    let obj = req.wrapped("user")?;
    let id = create_user(&mut w.store, obj)?;
    Ok(created_reply(&w.store, id))
}

/// `PUT users/{id}`.
pub(crate) fn update(w: &mut World, req: &ApiRequest, id: u64) -> ApiResult {
    let obj = req.wrapped("user")?;
    if !w.store.users.contains_key(&id) {
        return Err(ApiError::not_found());
    }
    update_user(&mut w.store, id, obj)?;
    show(w, id)
}

/// `DELETE users/{id}`: removes the user, its identities (their emails and external id can be
/// used again) and its memberships; its tickets stay. Answers the user as it was, inactive.
pub(crate) fn delete(w: &mut World, id: u64) -> ApiResult {
    let s = &mut w.store;
    let user = s.users.get(&id).ok_or_else(ApiError::not_found)?;
    let mut body = s.render_user(user);
    body["active"] = json!(false);
    memberships::remove_all_of(s, id);
    s.users.remove(&id);
    Ok(Reply::ok(json!({"user": body})))
}

/// `PUT users/{id}/merge` with `{"user": {"id": TARGET}}`: merges end user `id` into TARGET.
/// Its identities become TARGET's (secondary where TARGET has one of the kind), its requested
/// tickets, memberships, events and profiles move over, and it is removed; TARGET keeps its own
/// name and external id. 422 for an agent or a missing target.
pub(crate) fn merge(w: &mut World, req: &ApiRequest, id: u64) -> ApiResult {
    let obj = req.wrapped("user")?;
    let s = &mut w.store;
    let source = s.users.get(&id).ok_or_else(ApiError::not_found)?;
    if source.role != "end-user" {
        return Err(ApiError::invalid(
            "base",
            "InvalidValue",
            "Only end users can be merged",
        ));
    }
    let target = opt_id(obj, "id")
        .filter(|t| *t != id && s.users.contains_key(t))
        .ok_or_else(|| ApiError::invalid("id", "InvalidValue", "User to merge into: is invalid"))?;
    for tid in s.tickets.lookup(&TicketKey::Requester(id)).to_vec() {
        s.tickets.update(tid, |t| {
            t.requester_id = target;
            if t.submitter_id == id {
                t.submitter_id = target;
            }
        });
    }
    let orgs: Vec<u64> = s
        .memberships_by_user(id)
        .map(|m| m.organization_id)
        .collect();
    memberships::remove_all_of(s, id);
    for oid in orgs {
        memberships::ensure(s, target, oid);
    }
    events::move_to_user(s, id, target);
    let Some(source) = s.users.remove(&id) else {
        return Err(ApiError::not_found());
    };
    s.users.update(target, |t| {
        for mut identity in source.identities {
            let known = t
                .identities
                .iter()
                .any(|i| i.kind == identity.kind && i.value.eq_ignore_ascii_case(&identity.value));
            if !known {
                identity.primary = !t.identities.iter().any(|i| i.kind == identity.kind);
                t.identities.push(identity);
            }
        }
    });
    show(w, target)
}

/// `POST users/create_or_update`.
pub(crate) fn create_or_update(w: &mut World, req: &ApiRequest) -> ApiResult {
    let obj = req.wrapped("user")?;
    // Zendesk limits this endpoint per end user profile: 5 a minute by default.
    let who = opt_str(obj, "external_id")
        .or_else(|| opt_str(obj, "email"))
        .or_else(|| opt_id(obj, "id").map(|i| i.to_string()))
        .unwrap_or_default()
        .to_lowercase();
    let knobs = &w.limits.knobs;
    let (limit, window) = (
        knobs.upsert_user_per_window,
        Duration::from_secs(knobs.rate_window_secs.max(1)),
    );
    let now = w.store.clock.elapsed();
    let bucket = match w
        .limits
        .bucket(format!("create-update-user:{who}"), limit, window, now)
    {
        Ok(b) => b,
        Err(retry_after) => {
            let err = ApiError::endpoint_rate_limited(
                retry_after,
                "Too many requests to create or update this user",
            );
            let header = format!("total={limit}; remaining=0; resets={retry_after}");
            return Err(ApiError(
                err.0.header("Zendesk-RateLimit-create-update-user", header),
            ));
        }
    };
    let (id, created) = upsert(&mut w.store, obj)?;
    let reply = if created {
        created_reply(&w.store, id)
    } else {
        let s = &w.store;
        let u = s.users.get(&id).ok_or_else(ApiError::not_found)?;
        Reply::ok(json!({"user": s.render_user(u)}))
            .header("Location", format!("/api/v2/users/{id}.json"))
    };
    Ok(reply.header(
        "Zendesk-RateLimit-create-update-user",
        bucket.header_value(),
    ))
}

/// `GET users/show_many?ids=1,2` or `?external_ids=a,b`.
pub(crate) fn show_many(w: &mut World, req: &ApiRequest) -> ApiResult {
    let s = &w.store;
    let ids: Vec<u64> = match show_many_keys(req)? {
        ShowMany::Ids(ids) => ids,
        ShowMany::ExternalIds(ext) => ext
            .iter()
            .filter_map(|e| s.user_by_external_id(e))
            .collect(),
    };
    let items: Vec<Value> = ids
        .iter()
        .filter_map(|id| s.users.get(id))
        .map(|u| s.render_user(u))
        .collect();
    Ok(whole_list("users", items))
}

/// `GET users/search?query=…` (bare terms, `email:`, `external_id:`, `name:`, `role:`, `phone:`)
/// or `?external_id=` (exact, case-insensitive).
pub(crate) fn search(w: &mut World, req: &ApiRequest) -> ApiResult {
    let s = &w.store;
    let matches: Vec<Value> = if let Some(ext) = req.query("external_id") {
        s.user_by_external_id(ext)
            .and_then(|id| s.users.get(&id))
            .map(|u| s.render_user(u))
            .into_iter()
            .collect()
    } else if let Some(q) = req.query("query") {
        let terms = parse_query_terms(q);
        let matches_all = |u: &&User| terms.iter().all(|t| t.matches(u));
        match exact_term_match(s, &terms) {
            Some(found) => found
                .and_then(|id| s.users.get(&id))
                .filter(matches_all)
                .map(|u| s.render_user(u))
                .into_iter()
                .collect(),
            None => s
                .users
                .values()
                .filter(matches_all)
                .map(|u| s.render_user(u))
                .collect(),
        }
    } else {
        return Err(ApiError::bad_request("query or external_id is required"));
    };
    offset_page(req, "users", matches)
}

/// The one user an exact `email:` or `external_id:` term allows, found through the index
/// (`Some(None)`: nobody); `None` when no term is exact, so every user is a candidate.
fn exact_term_match(s: &Store, terms: &[Term]) -> Option<Option<u64>> {
    terms.iter().find_map(|t| match t {
        Term::Field(field, value) if !value.contains('*') => match field.as_str() {
            "email" => Some(s.user_by_email(value)),
            "external_id" => Some(s.user_by_external_id(value)),
            _ => None,
        },
        _ => None,
    })
}

/// One term of the users search syntax.
#[derive(Debug, PartialEq)]
enum Term {
    /// A bare word: partial match on name, email, notes, phone.
    Any(String),
    /// `field:value`: exact (case-insensitive) on that field; `*` is a wildcard.
    Field(String, String),
}

impl Term {
    fn matches(&self, u: &User) -> bool {
        match self {
            Term::Any(t) => {
                let t = t.to_lowercase();
                u.name.to_lowercase().contains(&t)
                    || u.identities
                        .iter()
                        .any(|i| i.value.to_lowercase().contains(&t))
                    || u.notes.to_lowercase().contains(&t)
                    || u.phone.as_deref().is_some_and(|p| p.contains(&t))
            }
            Term::Field(field, value) => {
                let eq = |s: &str| wildcard_eq(s, value);
                match field.as_str() {
                    "email" => u
                        .identities
                        .iter()
                        .any(|i| i.kind == "email" && eq(&i.value)),
                    "external_id" => u.external_id.as_deref().is_some_and(eq),
                    "name" => eq(&u.name),
                    "role" => eq(&u.role),
                    "phone" => u.phone.as_deref().is_some_and(eq),
                    "tags" => u.tags.iter().any(|t| eq(t)),
                    "type" => value.eq_ignore_ascii_case("user"),
                    _ => false,
                }
            }
        }
    }
}

/// Case-insensitive equality where `*` in the pattern matches any run of characters.
fn wildcard_eq(text: &str, pattern: &str) -> bool {
    let (text, pattern) = (text.to_lowercase(), pattern.to_lowercase());
    if !pattern.contains('*') {
        return text == pattern;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut rest = text.as_str();
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else if let Some(pos) = rest.find(part) {
            rest = &rest[pos + part.len()..];
        } else {
            return false;
        }
    }
    rest.is_empty()
}

/// Splits a search query into terms, honouring double quotes (`email:"a b@x.com"`).
fn parse_query_terms(q: &str) -> Vec<Term> {
    let mut terms = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in q.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !current.is_empty() {
                    terms.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        terms.push(current);
    }
    terms
        .into_iter()
        .map(|t| match t.split_once(':') {
            Some((field, value)) if is_search_field(field) => {
                Term::Field(field.to_lowercase(), value.to_string())
            }
            _ => Term::Any(t),
        })
        .collect()
}

fn is_search_field(f: &str) -> bool {
    [
        "email",
        "external_id",
        "name",
        "role",
        "phone",
        "tags",
        "type",
    ]
    .contains(&f.to_lowercase().as_str())
}

// ---- identities ----

pub(crate) fn list_identities(w: &mut World, uid: u64) -> ApiResult {
    let s = &w.store;
    let u = s.users.get(&uid).ok_or_else(ApiError::not_found)?;
    let list: Vec<Value> = u
        .identities
        .iter()
        .map(|i| s.render_identity(uid, i))
        .collect();
    Ok(whole_list("identities", list))
}

pub(crate) fn show_identity(w: &mut World, uid: u64, iid: u64) -> ApiResult {
    let s = &w.store;
    let u = s.users.get(&uid).ok_or_else(ApiError::not_found)?;
    let i = u
        .identities
        .iter()
        .find(|i| i.id == iid)
        .ok_or_else(ApiError::not_found)?;
    Ok(Reply::ok(json!({"identity": s.render_identity(uid, i)})))
}

/// `POST users/{id}/identities`: adds an email / phone_number / other identity.
pub(crate) fn create_identity(w: &mut World, req: &ApiRequest, uid: u64) -> ApiResult {
    let obj = req.wrapped("identity")?;
    if !w.store.users.contains_key(&uid) {
        return Err(ApiError::not_found());
    }
    let kind = opt_str(obj, "type").unwrap_or_default();
    let value = opt_str(obj, "value").unwrap_or_default();
    let mut inv = Invalid::new();
    if kind.is_empty() {
        inv = inv.add("type", "BlankValue", "Type: cannot be blank");
    }
    if value.trim().is_empty() {
        inv = inv.add("value", "BlankValue", "Value: cannot be blank");
    }
    inv.into_result()?;
    if kind == "email" {
        check_email(&w.store, &value, Some(uid))?;
    }
    let verified = obj
        .get("verified")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let iid = add_identity(&mut w.store, uid, &kind, value.trim(), verified)?;
    let s = &w.store;
    let u = s.users.get(&uid).ok_or_else(ApiError::not_found)?;
    let i = u
        .identities
        .iter()
        .find(|i| i.id == iid)
        .ok_or_else(ApiError::not_found)?;
    Ok(Reply::json(
        201,
        json!({"identity": s.render_identity(uid, i)}),
    ))
}

/// `PUT users/{id}/identities/{iid}`: changes `value` and/or `verified`.
pub(crate) fn update_identity(w: &mut World, req: &ApiRequest, uid: u64, iid: u64) -> ApiResult {
    let obj = req.wrapped("identity")?;
    let value = opt_str(obj, "value");
    let is_email = {
        let u = w.store.users.get(&uid).ok_or_else(ApiError::not_found)?;
        let i = u
            .identities
            .iter()
            .find(|i| i.id == iid)
            .ok_or_else(ApiError::not_found)?;
        i.kind == "email"
    };
    if let (Some(v), true) = (&value, is_email) {
        check_email(&w.store, v, Some(uid))?;
    }
    let now = w.store.now();
    let verified = obj.get("verified").and_then(Value::as_bool);
    w.store
        .users
        .update(uid, |u| {
            let i = u.identities.iter_mut().find(|i| i.id == iid)?;
            if let Some(v) = value {
                i.value = v;
            }
            if let Some(b) = verified {
                i.verified = b;
            }
            i.updated_at = now.clone();
            u.updated_at = now;
            Some(())
        })
        .flatten()
        .ok_or_else(ApiError::not_found)?;
    show_identity(w, uid, iid)
}

/// `PUT users/{id}/identities/{iid}/make_primary`: answers the identity list.
pub(crate) fn make_primary(w: &mut World, uid: u64, iid: u64) -> ApiResult {
    w.store
        .users
        .update(uid, |u| {
            let chosen = u.identities.iter().find(|i| i.id == iid)?;
            let (kind, value) = (chosen.kind.clone(), chosen.value.clone());
            for i in u.identities.iter_mut().filter(|i| i.kind == kind) {
                i.primary = i.id == iid;
            }
            if kind == "phone_number" {
                u.phone = Some(value);
            }
            Some(())
        })
        .flatten()
        .ok_or_else(ApiError::not_found)?;
    list_identities(w, uid)
}

pub(crate) fn delete_identity(w: &mut World, uid: u64, iid: u64) -> ApiResult {
    w.store
        .users
        .update(uid, |u| {
            let pos = u.identities.iter().position(|i| i.id == iid)?;
            let removed = u.identities.remove(pos);
            if removed.primary
                && let Some(next) = u.identities.iter_mut().find(|i| i.kind == removed.kind)
            {
                next.primary = true;
            }
            Some(())
        })
        .flatten()
        .ok_or_else(ApiError::not_found)?;
    Ok(Reply::no_content())
}

// ---- the upsert logic, shared with tickets (requester) and events (profiles) ----

fn created_reply(s: &Store, id: u64) -> Reply {
    let body = s
        .users
        .get(&id)
        .map(|u| s.render_user(u))
        .unwrap_or(Value::Null);
    Reply::json(201, json!({"user": body})).header("Location", format!("/api/v2/users/{id}.json"))
}

/// Finds the user an upsert refers to: by `id`, then `external_id`, then `email`.
fn find_match(s: &Store, obj: &Map<String, Value>) -> Option<u64> {
    if let Some(id) = opt_id(obj, "id").filter(|id| s.users.contains_key(id)) {
        return Some(id);
    }
    if let Some(id) = opt_str(obj, "external_id").and_then(|e| s.user_by_external_id(&e)) {
        return Some(id);
    }
    opt_str(obj, "email").and_then(|e| s.user_by_email(e.trim()))
}

/// Creates or updates; `true` when created.
pub(crate) fn upsert(s: &mut Store, obj: &Map<String, Value>) -> Result<(u64, bool), ApiError> {
    match find_match(s, obj) {
        Some(id) => update_user(s, id, obj).map(|()| (id, false)),
        None => create_user(s, obj).map(|id| (id, true)),
    }
}

fn valid_email(e: &str) -> bool {
    let Some((local, domain)) = e.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !e.contains(char::is_whitespace)
}

/// 422 when `email` is malformed or belongs to a user other than `owner`.
fn check_email(s: &Store, email: &str, owner: Option<u64>) -> Result<(), ApiError> {
    let email = email.trim();
    if !valid_email(email) {
        return Err(ApiError::invalid(
            "email",
            "InvalidValue",
            format!("Email: {email} is not properly formatted"),
        ));
    }
    match s.user_by_email(email) {
        Some(other) if Some(other) != owner => Err(ApiError::invalid(
            "email",
            "DuplicateValue",
            format!("Email: {email} is already being used by another user"),
        )),
        _ => Ok(()),
    }
}

fn check_external_id(s: &Store, ext: &str, owner: Option<u64>) -> Result<(), ApiError> {
    match s.user_by_external_id(ext) {
        Some(other) if Some(other) != owner => Err(ApiError::invalid(
            "external_id",
            "DuplicateValue",
            format!("External ID: {ext} has already been taken"),
        )),
        _ => Ok(()),
    }
}

/// Adds an identity; the first of its kind becomes primary.
pub(crate) fn add_identity(
    s: &mut Store,
    uid: u64,
    kind: &str,
    value: &str,
    verified: bool,
) -> Result<u64, ApiError> {
    let id = s.ids.next(Kind::Identity);
    let now = s.now();
    s.users
        .update(uid, |u| {
            let primary = !u.identities.iter().any(|i| i.kind == kind);
            u.identities.push(Identity {
                id,
                kind: kind.to_string(),
                value: value.to_string(),
                verified,
                primary,
                created_at: now.clone(),
                updated_at: now,
            });
        })
        .ok_or_else(ApiError::not_found)?;
    Ok(id)
}

/// Creates a user from a `user` object; 422 on a blank name or a taken email / external_id.
pub(crate) fn create_user(s: &mut Store, obj: &Map<String, Value>) -> Result<u64, ApiError> {
    let name = opt_str(obj, "name")
        .map(|n| n.trim().to_string())
        .unwrap_or_default();
    if name.is_empty() {
        return Err(ApiError::invalid(
            "name",
            "BlankValue",
            "Name: cannot be blank",
        ));
    }
    let email = opt_str(obj, "email")
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty());
    if let Some(e) = &email {
        check_email(s, e, None)?;
    }
    if let Some(ext) = opt_str(obj, "external_id") {
        check_external_id(s, &ext, None)?;
    }
    let mut inv = Invalid::new();
    let user_fields = fields::clean_values(&s.user_fields, obj.get("user_fields"), &mut inv);
    let role = opt_str(obj, "role").unwrap_or_else(|| "end-user".into());
    if !ROLES.contains(&role.as_str()) {
        inv = inv.add("role", "InvalidValue", format!("Role: {role} is invalid"));
    }
    inv.into_result()?;
    let org = resolve_org(s, obj)?;
    let id = opt_id(obj, "id")
        .filter(|i| !s.users.contains_key(i))
        .unwrap_or_else(|| s.ids.next(Kind::User));
    s.ids.observe(Kind::User, id);
    let now = s.now();
    let user = User {
        id,
        name,
        external_id: opt_str(obj, "external_id"),
        phone: None,
        role,
        verified: obj
            .get("verified")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        time_zone: opt_str(obj, "time_zone").unwrap_or_else(|| "UTC".into()),
        locale: opt_str(obj, "locale").unwrap_or_else(|| "en-US".into()),
        tags: obj.get("tags").map(str_list).unwrap_or_default(),
        notes: opt_str(obj, "notes").unwrap_or_default(),
        details: opt_str(obj, "details").unwrap_or_default(),
        alias: opt_str(obj, "alias").unwrap_or_default(),
        user_fields,
        identities: Vec::new(),
        created_at: now.clone(),
        updated_at: now,
    };
    let verified = user.verified;
    s.users.insert(user);
    if let Some(e) = email {
        add_identity(s, id, "email", &e, verified)?;
    }
    if let Some(p) = opt_str(obj, "phone").filter(|p| !p.trim().is_empty()) {
        set_phone(s, id, p.trim())?;
    }
    add_listed_identities(s, id, obj)?;
    if let Some(oid) = org {
        memberships::ensure(s, id, oid);
    }
    Ok(id)
}

/// Applies an update; email adds a secondary identity, external_id is rewritten to the case sent.
pub(crate) fn update_user(
    s: &mut Store,
    id: u64,
    obj: &Map<String, Value>,
) -> Result<(), ApiError> {
    let mut inv = Invalid::new();
    if let Some(Value::String(n)) = obj.get("name")
        && n.trim().is_empty()
    {
        inv = inv.add("name", "BlankValue", "Name: cannot be blank");
    }
    let email = opt_str(obj, "email")
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty());
    if let Some(e) = &email {
        check_email(s, e, Some(id))?;
    }
    let ext = opt_str(obj, "external_id");
    if let Some(e) = &ext {
        check_external_id(s, e, Some(id))?;
    }
    let user_fields = fields::clean_values(&s.user_fields, obj.get("user_fields"), &mut inv);
    let role = opt_str(obj, "role");
    if let Some(r) = &role
        && !ROLES.contains(&r.as_str())
    {
        inv = inv.add("role", "InvalidValue", format!("Role: {r} is invalid"));
    }
    inv.into_result()?;
    let org = resolve_org(s, obj)?;
    let now = s.now();
    let (verified, has_email) = s
        .users
        .update(id, |u| {
            if let Some(n) = opt_str(obj, "name") {
                u.name = n.trim().to_string();
            }
            if ext.is_some() {
                u.external_id = ext;
            }
            if let Some(r) = role {
                u.role = r;
            }
            if let Some(b) = obj.get("verified").and_then(Value::as_bool) {
                u.verified = b;
            }
            for (key, slot) in [("time_zone", &mut u.time_zone), ("locale", &mut u.locale)] {
                if let Some(v) = opt_str(obj, key) {
                    *slot = v;
                }
            }
            for (key, slot) in [
                ("notes", &mut u.notes),
                ("details", &mut u.details),
                ("alias", &mut u.alias),
            ] {
                if let Some(v) = obj.get(key) {
                    *slot = v.as_str().unwrap_or_default().to_string();
                }
            }
            if let Some(t) = obj.get("tags") {
                u.tags = str_list(t);
            }
            u.user_fields.extend(user_fields);
            u.updated_at = now;
            (u.verified, email.as_deref().is_none_or(|e| u.has_email(e)))
        })
        .ok_or_else(ApiError::not_found)?;
    if !has_email && let Some(e) = email {
        add_identity(s, id, "email", &e, verified)?;
    }
    if let Some(p) = opt_str(obj, "phone").filter(|p| !p.trim().is_empty()) {
        set_phone(s, id, p.trim())?;
    }
    add_listed_identities(s, id, obj)?;
    if let Some(oid) = org {
        memberships::ensure(s, id, oid);
    }
    Ok(())
}

/// Sets the primary phone, keeping a `phone_number` identity in sync.
fn set_phone(s: &mut Store, id: u64, phone: &str) -> Result<(), ApiError> {
    let known = s
        .users
        .update(id, |u| {
            u.phone = Some(phone.to_string());
            u.identities
                .iter()
                .any(|i| i.kind == "phone_number" && i.value == phone)
        })
        .ok_or_else(ApiError::not_found)?;
    if !known {
        add_identity(s, id, "phone_number", phone, false)?;
    }
    Ok(())
}

/// `identities: [{type, value}]` on a user body.
fn add_listed_identities(s: &mut Store, id: u64, obj: &Map<String, Value>) -> Result<(), ApiError> {
    let Some(list) = obj.get("identities").and_then(Value::as_array) else {
        return Ok(());
    };
    for item in list.iter().filter_map(Value::as_object) {
        let (Some(kind), Some(value)) = (opt_str(item, "type"), opt_str(item, "value")) else {
            continue;
        };
        let known = s.users.get(&id).is_some_and(|u| {
            u.identities
                .iter()
                .any(|i| i.kind == kind && i.value.eq_ignore_ascii_case(&value))
        });
        if known {
            continue;
        }
        if kind == "email" {
            check_email(s, &value, Some(id))?;
        }
        add_identity(s, id, &kind, &value, false)?;
    }
    Ok(())
}

/// `organization_id` (must exist) or `organization: {name}` (found or created by name).
fn resolve_org(s: &mut Store, obj: &Map<String, Value>) -> Result<Option<u64>, ApiError> {
    if let Some(oid) = opt_id(obj, "organization_id") {
        if !s.organizations.contains_key(&oid) {
            return Err(ApiError::invalid(
                "organization_id",
                "InvalidValue",
                "Organization: is invalid",
            ));
        }
        return Ok(Some(oid));
    }
    let Some(name) = obj
        .get("organization")
        .and_then(|o| o.get("name"))
        .and_then(Value::as_str)
    else {
        return Ok(None);
    };
    if let Some(oid) = s.org_by_name(name) {
        return Ok(Some(oid));
    }
    let mut org = Map::new();
    org.insert("name".into(), json!(name));
    organizations::create_org(s, &org).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_terms() {
        assert_eq!(
            parse_query_terms(r#"jane email:"a b@x.co" external_id:E1"#),
            vec![
                Term::Any("jane".into()),
                Term::Field("email".into(), "a b@x.co".into()),
                Term::Field("external_id".into(), "E1".into())
            ]
        );
        assert!(wildcard_eq("Jane@Example.com", "jane@*"));
        assert!(wildcard_eq("jane@example.com", "*@example.com"));
        assert!(!wildcard_eq("jane@example.com", "john*"));
    }
}
