//! The request pipeline and the route table. Every `/api/...` request goes through [`api`]:
//!
//! 1. a forced fault, if one matches;
//! 2. `/oauth/...` leaves here for `oauth` (no API credentials, no API budget);
//! 3. authentication: a bearer token the emulator issued is judged by `oauth` (401 when expired
//!    or replaced, 403 beyond its scopes), anything else by the static policy (`users/me`
//!    answers the anonymous user instead of 401);
//! 4. the account budget (429 beyond it; budget headers on every answer);
//! 5. a random fault (`fail_rate`);
//! 6. the JSON body (400 when unreadable);
//! 7. [`dispatch`]: the route table, `.json` suffix stripped, 404 `InvalidEndpoint` otherwise.
//!
//! Due jobs run before all of that (see `jobs`). Then the answer is written to the request log,
//! the configured latency is waited out (plus `oauth_latency_ms` for a token request), and a
//! write that was applied may lose its answer (`lost_answer_rate`; for `/oauth/tokens`,
//! `oauth_lost_answers`): a 500 goes out instead, or the connection is cut (see `connection`).

use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::auth::{AuthPolicy, Principal};
use super::connection::Cutter;
use super::errors::{ApiError, ApiResult, Reply, ReplyBody};
use super::limits::{Limits, LostAnswer};
use super::oauth::{self, Judgement, OAuth};
use super::request_log::RequestLog;
use super::state::Store;
use super::{bulk, events, fields, inspect, jobs, memberships, organizations, tickets, users};

/// Largest request body accepted (bulk calls carry up to 100 records).
const MAX_BODY: usize = 8 * 1024 * 1024;

/// Everything behind the lock: the account, the limits and the request log.
pub(crate) struct World {
    pub store: Store,
    pub limits: Limits,
    pub log: RequestLog,
    pub auth: AuthPolicy,
    /// Codes and tokens issued by `/oauth/...`.
    pub oauth: OAuth,
    /// The state loaded at start-up (`--seed-state`), restored by `POST /__emulator/reset`.
    pub initial_seed: Option<Value>,
    pub subdomain: String,
    pub seed: u64,
}

pub(crate) type Shared = Arc<Mutex<World>>;

/// Locks the world; a poisoned lock (a panic elsewhere) still gives the data.
pub(crate) fn lock(shared: &Shared) -> MutexGuard<'_, World> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A parsed API request, as handlers see it.
pub(crate) struct ApiRequest {
    pub method: String,
    /// Path segments after `/api/v2/`, percent-decoded, with a trailing `.json` removed.
    pub segments: Vec<String>,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    /// The JSON body; `Null` when there is none.
    pub body: Value,
    pub principal: Option<Principal>,
    /// The base URL the links of a paged answer name (see [`links_base`]).
    pub links: String,
}

impl ApiRequest {
    pub(crate) fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `page[size]` of a cursor-paged list: 1 to 100, `None` when not given.
    pub(crate) fn page_size(&self) -> Result<Option<usize>, ApiError> {
        self.query("page[size]")
            .map(|n| {
                n.parse()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request("page[size] must be an integer from 1 to 100")
                    })
            })
            .transpose()
    }

    /// The object under `key` in the body (`{"user": {...}}`), or a 400.
    pub(crate) fn wrapped(&self, key: &str) -> Result<&Map<String, Value>, ApiError> {
        self.body
            .get(key)
            .and_then(Value::as_object)
            .ok_or_else(|| {
                ApiError::bad_request(format!("Parameter {key} is required and must be an object"))
            })
    }
}

pub(crate) fn router(shared: Shared) -> axum::Router {
    inspect::routes().fallback(api).with_state(shared)
}

impl World {
    /// Brings the account up to the emulator's clock: runs the jobs that are due.
    pub(crate) fn catch_up(&mut self) {
        jobs::run_due(&mut self.store);
    }
}

/// The axum entry point for everything that is not `/__emulator/*`.
async fn api(State(shared): State<Shared>, req: Request) -> Response {
    let cutter = req
        .extensions()
        .get::<ConnectInfo<Cutter>>()
        .map(|c| c.0.clone());
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return to_response(ApiError::bad_request("Request body too large or unreadable").0);
        }
    };
    let method = parts.method.as_str();
    let path = parts.uri.path();
    let token_request = method == "POST" && path == "/oauth/tokens";
    let (reply, lost, latency) = {
        let mut w = lock(&shared);
        w.catch_up();
        let reply = handle(&mut w, method, &parts.uri, &parts.headers, &bytes);
        let succeeded = (200..300).contains(&reply.status);
        let applied_write = matches!(method, "POST" | "PUT" | "PATCH" | "DELETE") && succeeded;
        let lost = if token_request && succeeded {
            // Issued (and the chain rotated) all the same.
            w.limits.oauth_lost_answer()
        } else if applied_write && !path.starts_with("/oauth/") {
            w.limits.lost_answer()
        } else {
            None
        };
        let capacity = w.limits.knobs.request_log_size;
        let at = w.store.clock.elapsed();
        w.log.record(capacity, at, &parts, &bytes, &reply, lost);
        let knobs = &w.limits.knobs;
        let latency = if token_request {
            knobs.latency_ms.saturating_add(knobs.oauth_latency_ms)
        } else {
            knobs.latency_ms
        };
        (reply, lost, latency)
    };
    if latency > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
    }
    match lost {
        None => to_response(reply),
        Some(how) => {
            if let (LostAnswer::Drop, Some(cutter)) = (how, &cutter) {
                cutter.cut();
            }
            to_response(lost_answer(&reply))
        }
    }
}

/// The 500 that replaces the answer to an applied write (with the budget headers it had).
fn lost_answer(applied: &Reply) -> Reply {
    let mut reply = ApiError::fault(500).0;
    reply.headers = applied
        .headers
        .iter()
        .filter(|(name, _)| {
            let name = name.to_ascii_lowercase();
            name.starts_with("x-rate-limit") || name.starts_with("ratelimit-")
        })
        .cloned()
        .collect();
    reply
}

fn handle(
    w: &mut World,
    method: &str,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Reply {
    let path = uri.path();
    if let Some(err) = w
        .limits
        .take_forced_fault(method, path, uri.query().unwrap_or(""))
    {
        return err.0;
    }
    // Zendesk's OAuth endpoints are not part of the API: its rate limits are on the API.
    if path.starts_with("/oauth/") {
        return oauth::endpoint(w, method, uri, headers, bytes);
    }
    let segments = match api_segments(path) {
        Some(s) => s,
        None => return ApiError::invalid_endpoint().0,
    };
    let auth_header = headers.get("authorization").and_then(|v| v.to_str().ok());
    let now = w.store.clock.elapsed();
    let clients = &w.limits.knobs.oauth_clients;
    let judged = oauth::bearer(auth_header).map(|token| w.oauth.judge(token, clients, now));
    let principal = match judged {
        Some(Judgement::Live(id)) => Some(Principal::OAuth(Some(id))),
        Some(Judgement::Refused) => None,
        Some(Judgement::Unknown) | None => w.auth.check(auth_header, !clients.is_empty()),
    };
    if principal.is_none() {
        let is_me = method == "GET" && segments == ["users", "me"];
        // Zendesk answers `users/me` with the anonymous user when no credentials are sent.
        if is_me && auth_header.is_none() {
            return users::anonymous();
        }
        return ApiError::unauthorized().0;
    }
    if let Some(Principal::OAuth(Some(token))) = principal
        && !w.oauth.allows(token, method, &segments)
    {
        return ApiError::out_of_scope().0;
    }
    let budget = match w.limits.spend(now) {
        Ok(b) => b,
        Err((b, err)) => return with_budget(err.0, &b),
    };
    if let Some(err) = w.limits.random_fault() {
        return with_budget(err.0, &budget);
    }
    let body = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        match serde_json::from_slice(bytes) {
            Ok(v) => v,
            Err(e) => {
                let err = ApiError::bad_request(format!("The request body is not valid JSON: {e}"));
                return with_budget(err.0, &budget);
            }
        }
    };
    let req = ApiRequest {
        method: method.to_string(),
        segments,
        query: parse_query(uri.query().unwrap_or("")),
        headers: headers.clone(),
        body,
        principal,
        links: links_base(w, headers),
    };
    let reply = dispatch(w, &req).unwrap_or_else(|e| e.0);
    with_budget(reply, &budget)
}

fn with_budget(mut reply: Reply, budget: &super::limits::Budget) -> Reply {
    for (k, v) in budget.headers() {
        reply.headers.push((k.to_string(), v));
    }
    reply
}

/// The route table. Ids that are not numbers answer 404 `RecordNotFound` (400 on the events form).
fn dispatch(w: &mut World, req: &ApiRequest) -> ApiResult {
    let segs: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    match (req.method.as_str(), segs.as_slice()) {
        // Users
        ("GET", ["users", "me"]) => users::me(w, req),
        ("GET", ["users"]) => users::list(w, req),
        ("POST", ["users"]) => users::create(w, req),
        ("POST", ["users", "create_or_update"]) => users::create_or_update(w, req),
        ("POST", ["users", "create_or_update_many"]) => bulk::create_or_update_users(w, req),
        ("GET", ["users", "show_many"]) => users::show_many(w, req),
        ("GET", ["users", "search"]) => users::search(w, req),
        ("GET", ["users", uid]) => users::show(w, id(uid)?),
        ("PUT", ["users", uid]) => users::update(w, req, id(uid)?),
        // Only a numeric id: `DELETE users/search` and the like stay unknown endpoints.
        ("DELETE", ["users", uid]) if uid.parse::<u64>().is_ok() => users::delete(w, id(uid)?),
        ("PUT", ["users", uid, "merge"]) => users::merge(w, req, id(uid)?),
        ("GET", ["users", uid, "identities"]) => users::list_identities(w, id(uid)?),
        ("POST", ["users", uid, "identities"]) => users::create_identity(w, req, id(uid)?),
        ("GET", ["users", uid, "identities", iid]) => users::show_identity(w, id(uid)?, id(iid)?),
        ("PUT", ["users", uid, "identities", iid]) => {
            users::update_identity(w, req, id(uid)?, id(iid)?)
        }
        ("PUT", ["users", uid, "identities", iid, "make_primary"]) => {
            users::make_primary(w, id(uid)?, id(iid)?)
        }
        ("DELETE", ["users", uid, "identities", iid]) => {
            users::delete_identity(w, id(uid)?, id(iid)?)
        }
        // Memberships
        ("GET", ["organization_memberships"]) => memberships::list(w, None, None),
        ("POST", ["organization_memberships"]) => memberships::create(w, req, None),
        ("POST", ["organization_memberships", "create_many"]) => bulk::create_memberships(w, req),
        ("GET", ["organization_memberships", mid]) => memberships::show(w, None, id(mid)?),
        ("DELETE", ["organization_memberships", mid]) => memberships::delete(w, None, id(mid)?),
        ("GET", ["users", uid, "organization_memberships"]) => {
            memberships::list(w, Some(id(uid)?), None)
        }
        ("POST", ["users", uid, "organization_memberships"]) => {
            memberships::create(w, req, Some(id(uid)?))
        }
        ("GET", ["users", uid, "organization_memberships", mid]) => {
            memberships::show(w, Some(id(uid)?), id(mid)?)
        }
        ("DELETE", ["users", uid, "organization_memberships", mid]) => {
            memberships::delete(w, Some(id(uid)?), id(mid)?)
        }
        (
            "PUT",
            [
                "users",
                uid,
                "organization_memberships",
                mid,
                "make_default",
            ],
        ) => memberships::make_default_by_id(w, id(uid)?, id(mid)?),
        ("DELETE", ["users", uid, "organizations", oid]) => {
            memberships::unassign(w, id(uid)?, id(oid)?)
        }
        ("PUT", ["users", uid, "organizations", oid, "make_default"]) => {
            memberships::make_default_by_org(w, id(uid)?, id(oid)?)
        }
        ("GET", ["organizations", oid, "organization_memberships"]) => {
            memberships::list(w, None, Some(id(oid)?))
        }
        // Organizations
        ("GET", ["organizations"]) => organizations::list(w),
        ("POST", ["organizations"]) => organizations::create(w, req),
        ("POST", ["organizations", "create_or_update"]) => organizations::create_or_update(w, req),
        ("GET", ["organizations", "search"]) => organizations::search(w, req),
        ("GET", ["organizations", "show_many"]) => organizations::show_many(w, req),
        ("POST", ["organizations", "create_many"]) => bulk::create_organizations(w, req),
        ("PUT", ["organizations", "update_many"]) => bulk::update_organizations(w, req),
        ("GET", ["organizations", oid]) => organizations::show(w, id(oid)?),
        ("PUT", ["organizations", oid]) => organizations::update(w, req, id(oid)?),
        // Custom fields
        ("GET", ["user_fields"]) => fields::list(w, fields::Family::User),
        ("POST", ["user_fields"]) => fields::create(w, req, fields::Family::User),
        ("GET", ["user_fields", fid]) => fields::show(w, fields::Family::User, id(fid)?),
        ("GET", ["organization_fields"]) => fields::list(w, fields::Family::Organization),
        ("POST", ["organization_fields"]) => fields::create(w, req, fields::Family::Organization),
        ("GET", ["organization_fields", fid]) => {
            fields::show(w, fields::Family::Organization, id(fid)?)
        }
        // Tickets
        ("GET", ["tickets"]) => tickets::list(w, req),
        ("POST", ["tickets"]) => tickets::create(w, req),
        ("PUT", ["tickets", "update_many"]) => bulk::update_tickets(w, req),
        ("GET", ["tickets", tid]) => tickets::show(w, id(tid)?),
        ("PUT", ["tickets", tid]) => tickets::update(w, req, id(tid)?),
        ("GET", ["tickets", tid, "comments"]) => tickets::comments(w, id(tid)?),
        ("GET", ["tickets", tid, "audits"]) => tickets::audits(w, req, id(tid)?),
        // Sunshine profile events
        ("POST", ["user_profiles", "events"]) => events::track(w, req, None),
        ("POST", ["users", uid, "events"]) => events::track(w, req, Some(events::user_id(uid)?)),
        ("GET", ["users", uid, "events"]) => events::list_for_user(w, req, events::user_id(uid)?),
        // Jobs
        ("GET", ["job_statuses"]) => jobs::list(w, req),
        ("GET", ["job_statuses", "show_many"]) => jobs::show_many(w, req),
        ("GET", ["job_statuses", jid]) => jobs::show(w, jid),
        // OAuth
        ("GET", ["oauth", "tokens", "current"]) => oauth::current(w, req),
        _ => Err(ApiError::invalid_endpoint()),
    }
}

/// Parses a numeric id segment; anything else is a record that cannot exist.
pub(crate) fn id(segment: &str) -> Result<u64, ApiError> {
    segment.parse().map_err(|_| ApiError::not_found())
}

/// `/api/v2/users/create_or_update.json` → `["users", "create_or_update"]`; `None` outside `/api/v2/`.
fn api_segments(path: &str) -> Option<Vec<String>> {
    let rest = path.strip_prefix("/api/v2/")?;
    let rest = rest.trim_end_matches('/');
    let rest = rest.strip_suffix(".json").unwrap_or(rest);
    if rest.is_empty() {
        return None;
    }
    Some(rest.split('/').map(decode).collect())
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Parses a query string; `+` is a space, as browsers and reqwest send it.
pub(crate) fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(&k.replace('+', " ")), decode(&v.replace('+', " ")))
        })
        .collect()
}

fn to_response(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = match reply.body {
        ReplyBody::Json(v) => {
            let mut r = (status, Body::from(v.to_string())).into_response();
            r.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
            r
        }
        ReplyBody::Text(ct, text) => {
            let mut r = (status, text).into_response();
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static(ct));
            r
        }
        ReplyBody::Empty => status.into_response(),
    };
    let h = resp.headers_mut();
    h.insert("x-zendesk-api-version", HeaderValue::from_static("v2"));
    h.insert(
        "x-zendesk-origin-server",
        HeaderValue::from_static("zdmap-emulator"),
    );
    for (name, value) in reply.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            h.append(n, v);
        }
    }
    resp
}

/// Where the links of a paged answer point: the `links_base` knob when set, else the host the
/// request was sent to (Zendesk's links name the account they were asked on), else the
/// account's own base URL.
fn links_base(w: &World, headers: &HeaderMap) -> String {
    if let Some(base) = &w.limits.knobs.links_base {
        return base.trim_end_matches('/').to_string();
    }
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        });
    match host {
        Some(host) => format!("http://{host}"),
        None => w.store.base_url.clone(),
    }
}

/// Cursor pagination: the page of `items` after the cursor `page[after]` (the position after
/// the last item shown), `size` long, rendered under `key` with Zendesk's `meta` and `links`;
/// `path` is the list's path after `/api/v2/`.
pub(crate) fn cursor_page<T>(
    req: &ApiRequest,
    path: &str,
    key: &str,
    items: &[T],
    size: usize,
    render: impl Fn(&T) -> Value,
) -> Reply {
    let start: usize = req
        .query("page[after]")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
        .min(items.len());
    let end = (start + size).min(items.len());
    let has_more = end < items.len();
    let page: Vec<Value> = items[start..end].iter().map(render).collect();
    let after = has_more.then(|| end.to_string());
    let base_url = &req.links;
    let next = after.as_ref().map(|c| {
        // The next page keeps the request's filters.
        let mut q: Vec<String> = req
            .query
            .iter()
            .filter(|(k, _)| k != "page[size]" && k != "page[after]")
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect();
        q.push(format!("page%5Bsize%5D={size}"));
        q.push(format!("page%5Bafter%5D={c}"));
        format!("{base_url}/api/v2/{path}?{}", q.join("&"))
    });
    Reply::ok(json!({
        key: page,
        "meta": {"has_more": has_more, "after_cursor": after, "before_cursor": null},
        "links": {"next": next, "prev": null},
    }))
}

/// Offset pagination (`page`, `per_page` ≤ 100) with Zendesk's `next_page` / `previous_page` /
/// `count` envelope around `items` under `key`.
pub(crate) fn offset_page(req: &ApiRequest, key: &str, items: Vec<Value>) -> ApiResult {
    let per_page: usize = match req.query("per_page") {
        None => 100,
        Some(s) => s
            .parse()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| ApiError::bad_request("per_page must be an integer from 1 to 100"))?,
    };
    let page: usize = match req.query("page") {
        None => 1,
        Some(s) => s.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
            ApiError::bad_request(format!(
                "You passed an invalid value for the page attribute. Invalid parameter: page must be an integer from api/v2/{}",
                req.segments.join("/")
            ))
        })?,
    };
    if page > 100 {
        return Err(ApiError::errors(
            400,
            "InvalidPaginationDepth",
            "Offset pagination is limited to the first 100 pages",
            String::new(),
        ));
    }
    let base_url = &req.links;
    let count = items.len();
    let start = (page - 1).saturating_mul(per_page).min(count);
    let end = (start + per_page).min(count);
    let page_url = |n: usize| {
        let mut q: Vec<String> = req
            .query
            .iter()
            .filter(|(k, _)| k != "page")
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect();
        q.push(format!("page={n}"));
        json!(format!(
            "{base_url}/api/v2/{}.json?{}",
            req.segments.join("/"),
            q.join("&")
        ))
    };
    let mut body = Map::new();
    body.insert(key.to_string(), Value::Array(items[start..end].to_vec()));
    body.insert(
        "next_page".into(),
        if end < count {
            page_url(page + 1)
        } else {
            Value::Null
        },
    );
    body.insert(
        "previous_page".into(),
        if page > 1 {
            page_url(page - 1)
        } else {
            Value::Null
        },
    );
    body.insert("count".into(), json!(count));
    Ok(Reply::ok(Value::Object(body)))
}

/// What a `show_many` request asks for.
pub(crate) enum ShowMany {
    Ids(Vec<u64>),
    ExternalIds(Vec<String>),
}

/// `?ids=1,2` (ids that are not numbers are skipped) or `?external_ids=a,b`, at most 100.
pub(crate) fn show_many_keys(req: &ApiRequest) -> Result<ShowMany, ApiError> {
    let split = |list: &str| -> Vec<String> {
        list.split(',')
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect()
    };
    let keys = match (req.query("ids"), req.query("external_ids")) {
        (Some(ids), _) => ShowMany::Ids(split(ids).iter().filter_map(|i| i.parse().ok()).collect()),
        (None, Some(ext)) => ShowMany::ExternalIds(split(ext)),
        (None, None) => return Err(ApiError::bad_request("ids or external_ids is required")),
    };
    let n = match &keys {
        ShowMany::Ids(ids) => ids.len(),
        ShowMany::ExternalIds(ext) => ext.len(),
    };
    if n > 100 {
        return Err(ApiError::bad_request(format!("At most 100 ids, not {n}")));
    }
    Ok(keys)
}

/// A complete (single-page) list in the offset envelope: `{key: items, next_page: null,
/// previous_page: null, count}`.
pub(crate) fn whole_list(key: &str, items: Vec<Value>) -> Reply {
    let count = items.len();
    let mut body = Map::new();
    body.insert(key.to_string(), Value::Array(items));
    body.insert("next_page".into(), Value::Null);
    body.insert("previous_page".into(), Value::Null);
    body.insert("count".into(), json!(count));
    Reply::ok(Value::Object(body))
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_strip_json_and_prefix() {
        assert_eq!(
            api_segments("/api/v2/users/create_or_update.json").unwrap_or_default(),
            ["users", "create_or_update"]
        );
        assert_eq!(
            api_segments("/api/v2/users/12").unwrap_or_default(),
            ["users", "12"]
        );
        assert_eq!(api_segments("/api/v1/users"), None);
        assert_eq!(
            parse_query("query=email%3Aa%40b.co&x=a+b"),
            vec![
                ("query".into(), "email:a@b.co".into()),
                ("x".into(), "a b".into())
            ]
        );
    }
}

/// The indexes behind lookups by email, external id, name, owner and profile stay in step with
/// the records through every kind of change the API can make: updates, merges, deletes.
#[cfg(test)]
mod index_tests {
    use super::*;
    use crate::emulator::clock::Clock;
    use crate::emulator::limits::RuntimeKnobs;

    fn world() -> World {
        let knobs = RuntimeKnobs {
            bulk_import: true,
            ..RuntimeKnobs::default()
        };
        World {
            store: Store::new("example", 0, Clock::new()),
            limits: Limits::new(knobs, 0),
            log: RequestLog::default(),
            auth: AuthPolicy {
                api_token: None,
                oauth_token: None,
            },
            oauth: OAuth::new(0),
            initial_seed: None,
            subdomain: "example".into(),
            seed: 0,
        }
    }

    /// Sends one request through the whole pipeline; gives the status and JSON body.
    fn send(w: &mut World, method: &str, path: &str, body: Value) -> (u16, Value) {
        let uri: axum::http::Uri = path.parse().expect("a valid path");
        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            HeaderValue::from_static("Basic YWdlbnRAeC5jby90b2tlbjp0"),
        );
        let bytes = Bytes::from(if body.is_null() {
            String::new()
        } else {
            body.to_string()
        });
        w.catch_up();
        let reply = handle(w, method, &uri, &headers, &bytes);
        assert!(
            w.store.indexes_agree(),
            "indexes disagree after {method} {path}"
        );
        (reply.status, reply.body_json())
    }

    #[test]
    fn indexes_agree_with_records_after_updates_merges_and_deletes() {
        let mut w = world();
        let w = &mut w;
        let upsert = "/api/v2/users/create_or_update";
        let (_, a) = send(
            w,
            "POST",
            upsert,
            json!({"user": {"email": "a@x.co", "name": "A", "external_id": "E-A"}}),
        );
        let a = a["user"]["id"].as_u64().expect("id");
        let (_, b) = send(
            w,
            "POST",
            upsert,
            json!({"user": {"email": "b@x.co", "name": "B", "phone": "+1555"}}),
        );
        let b = b["user"]["id"].as_u64().expect("id");
        // Merged by email into A: a new external id and a second email.
        let (status, _) = send(
            w,
            "POST",
            upsert,
            json!({"user": {"email": "a@x.co", "external_id": "E-A2"}}),
        );
        assert_eq!(status, 200);
        send(
            w,
            "PUT",
            &format!("/api/v2/users/{a}"),
            json!({"user": {"email": "a2@x.co"}}),
        );
        assert_eq!(w.store.user_by_external_id("e-a"), None);
        assert_eq!(w.store.user_by_external_id("E-A2"), Some(a));
        assert_eq!(w.store.user_by_email("A2@x.co"), Some(a));
        // An identity's value changes, and B's email is deleted.
        let second = w.store.users.get(&a).and_then(|u| {
            u.identities
                .iter()
                .find(|i| i.value == "a2@x.co")
                .map(|i| i.id)
        });
        let second = second.expect("second email");
        send(
            w,
            "PUT",
            &format!("/api/v2/users/{a}/identities/{second}"),
            json!({"identity": {"value": "a3@x.co"}}),
        );
        assert_eq!(w.store.user_by_email("a2@x.co"), None);
        assert_eq!(w.store.user_by_email("a3@x.co"), Some(a));
        let b_email = w.store.users.get(&b).and_then(|u| {
            u.identities
                .iter()
                .find(|i| i.kind == "email")
                .map(|i| i.id)
        });
        let b_email = b_email.expect("b's email");
        send(
            w,
            "DELETE",
            &format!("/api/v2/users/{b}/identities/{b_email}"),
            Value::Null,
        );
        assert_eq!(w.store.user_by_email("b@x.co"), None);
        // Organizations renamed; memberships added, made default and deleted.
        let (_, o) = send(
            w,
            "POST",
            "/api/v2/organizations/create_or_update",
            json!({"organization": {"external_id": "G-1", "name": "Acme"}}),
        );
        let o = o["organization"]["id"].as_u64().expect("id");
        send(
            w,
            "PUT",
            &format!("/api/v2/organizations/{o}"),
            json!({"organization": {"name": "Acme 2", "external_id": "G-2"}}),
        );
        assert_eq!(w.store.org_by_name("acme"), None);
        assert_eq!(w.store.org_by_name(" ACME 2 "), Some(o));
        assert_eq!(w.store.org_by_external_id("g-2"), Some(o));
        send(
            w,
            "POST",
            "/api/v2/organization_memberships",
            json!({"organization_membership": {"user_id": a, "organization_id": o}}),
        );
        send(
            w,
            "PUT",
            &format!("/api/v2/users/{a}/organizations/{o}/make_default"),
            Value::Null,
        );
        // A ticket whose requester is created on the way; its external id changes; then the
        // membership goes and the ticket loses its organization.
        let (_, t) = send(
            w,
            "POST",
            "/api/v2/tickets",
            json!({"ticket": {"comment": {"body": "hi"}, "requester_id": a, "external_id": "T-1"}}),
        );
        let t = t["ticket"]["id"].as_u64().expect("id");
        send(
            w,
            "PUT",
            &format!("/api/v2/tickets/{t}"),
            json!({"ticket": {"external_id": "T-2"}}),
        );
        send(
            w,
            "DELETE",
            &format!("/api/v2/users/{a}/organizations/{o}"),
            Value::Null,
        );
        assert_eq!(w.store.membership_of(a, o), None);
        assert_eq!(
            w.store.tickets.get(&t).and_then(|t| t.organization_id),
            None
        );
        // Bulk jobs go through the same functions.
        send(
            w,
            "POST",
            "/api/v2/users/create_or_update_many",
            json!({"users": [{"email": "c@x.co", "name": "C", "external_id": "E-C"}, {"external_id": "E-A2", "name": "A again"}]}),
        );
        send(
            w,
            "PUT",
            "/api/v2/organizations/update_many?external_ids=G-2",
            json!({"organization": {"name": "Acme 3"}}),
        );
        send(w, "GET", "/api/v2/users", Value::Null);
        let c = w.store.user_by_email("c@x.co").expect("c was created");
        // B is merged into C: its phone identity and membership move, B goes.
        send(
            w,
            "POST",
            "/api/v2/organization_memberships",
            json!({"organization_membership": {"user_id": b, "organization_id": o}}),
        );
        let (status, _) = send(
            w,
            "PUT",
            &format!("/api/v2/users/{b}/merge"),
            json!({"user": {"id": c}}),
        );
        assert_eq!(status, 200);
        assert!(!w.store.users.contains_key(&b));
        assert!(w.store.membership_of(c, o).is_some());
        // C is deleted: its email and external id are free again.
        let (status, _) = send(w, "DELETE", &format!("/api/v2/users/{c}"), Value::Null);
        assert_eq!(status, 200);
        assert_eq!(
            (
                w.store.user_by_email("c@x.co"),
                w.store.user_by_external_id("E-C")
            ),
            (None, None)
        );
        assert_eq!(w.store.org_by_name("acme 3"), Some(o));
        // Profiles of tracked events.
        let event = json!({"profile": {"source": "s", "type": "t", "identifiers": [{"type": "email", "value": "a@x.co"}]}, "event": {"source": "s", "type": "t", "properties": {}}});
        send(w, "POST", "/api/v2/user_profiles/events", event.clone());
        send(w, "POST", "/api/v2/user_profiles/events", event);
        assert_eq!(w.store.profiles.len(), 1);
    }
}
