//! The bulk writes (docs/zendesk.md, "Bulk writes and job statuses"):
//! `users/create_or_update_many` (403 unless bulk user imports are on),
//! `organizations/create_many`, `organizations/update_many` (`?ids=` or `?external_ids=` with one
//! `organization` change, or a batch of `organizations` each with its `id`),
//! `organization_memberships/create_many`, `tickets/update_many` (`?ids=` with one `ticket`
//! change, or a batch of `tickets` each with its `id`).
//!
//! Each takes at most 100 items and answers with a job status (see `jobs`). When the job runs,
//! its items apply in order through the same function as the single endpoint (so the same rules
//! hold), and each gets a result: `{index, id, action, status, success: true}`, or
//! `{index, id?, external_id?, action, success: false, error, details}` where `error` is the code
//! the single endpoint answers (`RecordInvalid`, `RecordNotFound`...) and `details` its
//! descriptions.

use serde_json::{Map, Value, json};

use super::errors::{ApiError, ApiResult};
use super::jobs;
use super::router::{ApiRequest, World};
use super::state::{Store, opt_id};
use super::{memberships, organizations, tickets, users};

/// Most items one bulk request may carry.
const MAX_ITEMS: usize = 100;

/// What a job does to each of its items.
#[derive(Debug, Clone, Copy)]
pub(crate) enum JobKind {
    UpsertUsers,
    CreateOrganizations,
    UpdateOrganizations,
    CreateMemberships,
    UpdateTickets,
}

impl JobKind {
    pub(crate) fn job_type(self) -> &'static str {
        match self {
            JobKind::UpsertUsers => "Bulk Create or Update Users",
            JobKind::CreateOrganizations => "Bulk Create Organizations",
            JobKind::UpdateOrganizations => "Bulk Update Organizations",
            JobKind::CreateMemberships => "Bulk Create Organization Memberships",
            JobKind::UpdateTickets => "Bulk Update Tickets",
        }
    }

    /// The `action` of a failed item's result.
    fn action(self) -> &'static str {
        match self {
            JobKind::UpsertUsers => "create_or_update",
            JobKind::CreateOrganizations | JobKind::CreateMemberships => "create",
            JobKind::UpdateOrganizations | JobKind::UpdateTickets => "update",
        }
    }
}

/// One item of a job: the record it names (updates) and its body.
#[derive(Debug, Clone)]
pub(crate) struct BulkItem {
    target: Target,
    body: Value,
}

#[derive(Debug, Clone)]
enum Target {
    /// The body says which record (creates and upserts).
    InBody,
    Id(u64),
    ExternalId(String),
    /// A batch item without an `id`.
    Unnamed,
}

/// `POST users/create_or_update_many`.
pub(crate) fn create_or_update_users(w: &mut World, req: &ApiRequest) -> ApiResult {
    if !w.limits.knobs.bulk_import {
        return Err(ApiError::forbidden(
            "Bulk user imports are not enabled for this account. Contact Zendesk Customer Support to enable them.",
        ));
    }
    let items = batch(req, "users", |_| Target::InBody)?;
    jobs::submit(w, JobKind::UpsertUsers, items)
}

/// `POST organizations/create_many`.
pub(crate) fn create_organizations(w: &mut World, req: &ApiRequest) -> ApiResult {
    let items = batch(req, "organizations", |_| Target::InBody)?;
    jobs::submit(w, JobKind::CreateOrganizations, items)
}

/// `PUT organizations/update_many`.
pub(crate) fn update_organizations(w: &mut World, req: &ApiRequest) -> ApiResult {
    let items = same_change_or_batch(req, "organization", "organizations", true)?;
    jobs::submit(w, JobKind::UpdateOrganizations, items)
}

/// `POST organization_memberships/create_many`.
pub(crate) fn create_memberships(w: &mut World, req: &ApiRequest) -> ApiResult {
    let items = batch(req, "organization_memberships", |_| Target::InBody)?;
    jobs::submit(w, JobKind::CreateMemberships, items)
}

/// `PUT tickets/update_many`.
pub(crate) fn update_tickets(w: &mut World, req: &ApiRequest) -> ApiResult {
    let items = same_change_or_batch(req, "ticket", "tickets", false)?;
    jobs::submit(w, JobKind::UpdateTickets, items)
}

/// The items of `{plural: [...]}`, each named by `target`; 400 when absent or beyond 100.
fn batch(
    req: &ApiRequest,
    plural: &str,
    target: impl Fn(&Value) -> Target,
) -> Result<Vec<BulkItem>, ApiError> {
    let list = req
        .body
        .get(plural)
        .and_then(Value::as_array)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "Parameter {plural} is required and must be an array"
            ))
        })?;
    at_most_100(list.len(), plural)?;
    Ok(list
        .iter()
        .map(|body| BulkItem {
            target: target(body),
            body: body.clone(),
        })
        .collect())
}

/// The bulk form (`?ids=` or, when allowed, `?external_ids=`, with one `{single: change}` for
/// all) or the batch form (`{plural: [{id, ...}]}`).
fn same_change_or_batch(
    req: &ApiRequest,
    single: &str,
    plural: &str,
    by_external_id: bool,
) -> Result<Vec<BulkItem>, ApiError> {
    let external_ids = req.query("external_ids").filter(|_| by_external_id);
    let targets: Option<Vec<Target>> = match (req.query("ids"), external_ids) {
        (Some(ids), _) => Some(
            ids.split(',')
                .map(|i| i.trim().parse().map(Target::Id))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| ApiError::bad_request("ids must be a comma-separated list of ids"))?,
        ),
        (None, Some(ext)) => Some(
            ext.split(',')
                .map(|e| Target::ExternalId(e.trim().to_string()))
                .collect(),
        ),
        (None, None) => None,
    };
    let Some(targets) = targets else {
        return batch(req, plural, |body| {
            body.as_object()
                .and_then(|o| opt_id(o, "id"))
                .map_or(Target::Unnamed, Target::Id)
        });
    };
    at_most_100(targets.len(), "ids")?;
    let change = Value::Object(req.wrapped(single)?.clone());
    Ok(targets
        .into_iter()
        .map(|target| BulkItem {
            target,
            body: change.clone(),
        })
        .collect())
}

fn at_most_100(n: usize, what: &str) -> Result<(), ApiError> {
    if n > MAX_ITEMS {
        return Err(ApiError::bad_request(format!(
            "Too many {what}: at most {MAX_ITEMS} per request, not {n}"
        )));
    }
    Ok(())
}

/// Applies one item of a job and gives its result.
pub(crate) fn apply(s: &mut Store, kind: JobKind, index: usize, item: BulkItem) -> Value {
    let Some(obj) = item.body.as_object() else {
        let e = ApiError::bad_request("The item is not an object");
        return failure(kind, index, &item.target, None, &e);
    };
    let outcome = match kind {
        JobKind::UpsertUsers => users::upsert(s, obj).map_err(|e| (None, e)),
        JobKind::CreateOrganizations => organizations::create_org(s, obj)
            .map(|id| (id, true))
            .map_err(|e| (None, e)),
        JobKind::CreateMemberships => memberships::create_membership(s, None, obj)
            .map(|id| (id, true))
            .map_err(|e| (None, e)),
        JobKind::UpdateOrganizations => update_named(s, &item.target, obj, |s, id, obj| {
            organizations::update_org(s, id, obj)
        }),
        JobKind::UpdateTickets => update_named(s, &item.target, obj, |s, id, obj| {
            tickets::update_ticket(s, id, obj).map(|_| ())
        }),
    };
    match outcome {
        Ok((id, created)) => {
            let (action, status) = if created {
                ("create", "Created")
            } else {
                ("update", "Updated")
            };
            json!({"index": index, "id": id, "action": action, "status": status, "success": true})
        }
        Err((id, e)) => failure(kind, index, &item.target, id, &e),
    }
}

/// Finds the record an update item names and applies `update` to it.
fn update_named(
    s: &mut Store,
    target: &Target,
    obj: &Map<String, Value>,
    update: impl FnOnce(&mut Store, u64, &Map<String, Value>) -> Result<(), ApiError>,
) -> Result<(u64, bool), (Option<u64>, ApiError)> {
    let id = match target {
        Target::Id(id) => Some(*id),
        Target::ExternalId(e) => s.org_by_external_id(e),
        Target::InBody | Target::Unnamed => None,
    };
    let Some(id) = id else {
        return Err((None, ApiError::not_found()));
    };
    update(s, id, obj)
        .map(|()| (id, false))
        .map_err(|e| (Some(id), e))
}

/// A failed item's result, with the single endpoint's error code and descriptions.
fn failure(kind: JobKind, index: usize, target: &Target, id: Option<u64>, e: &ApiError) -> Value {
    let (error, details) = error_parts(&e.0.body_json());
    let mut result = json!({"index": index, "action": kind.action(), "success": false, "error": error, "details": details});
    if let Some(id) = id.or(match target {
        Target::Id(id) => Some(*id),
        _ => None,
    }) {
        result["id"] = json!(id);
    }
    if let Target::ExternalId(e) = target {
        result["external_id"] = json!(e);
    }
    result
}

/// `(error code, details)` of an error body in any of Zendesk's envelopes.
fn error_parts(body: &Value) -> (String, String) {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    match body.get("error") {
        Some(Value::String(code)) => {
            let descriptions: Vec<String> = body
                .get("details")
                .and_then(Value::as_object)
                .into_iter()
                .flat_map(|d| d.values())
                .filter_map(Value::as_array)
                .flatten()
                .map(|entry| text(&entry["description"]))
                .collect();
            let details = if descriptions.is_empty() {
                text(&body["description"])
            } else {
                descriptions.join("; ")
            };
            (code.clone(), details)
        }
        Some(Value::Object(e)) => (
            text(e.get("title").unwrap_or(&Value::Null)),
            text(e.get("message").unwrap_or(&Value::Null)),
        ),
        _ => ("InvalidValue".into(), body.to_string()),
    }
}
