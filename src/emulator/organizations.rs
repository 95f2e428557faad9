//! Organizations (docs/zendesk.md, "Organizations"): `create_or_update` matched by id or
//! external_id (case-insensitive; name is not a matching key), create, update, show, `show_many`,
//! search by `external_id` or `name`. Names are unique after trimming, case-insensitively (422
//! `DuplicateValue`). `domain_names` and `tags` are replaced; `organization_fields` are merged per
//! key and filtered to defined fields.

use serde_json::{Map, Value, json};

use super::errors::{ApiError, ApiResult, Invalid, Reply};
use super::fields;
use super::router::{ApiRequest, ShowMany, World, offset_page, show_many_keys, whole_list};
use super::state::{Kind, Organization, Store, opt_id, opt_str, str_list};

pub(crate) fn list(w: &mut World) -> ApiResult {
    let s = &w.store;
    let items: Vec<Value> = s.organizations.values().map(|o| s.render_org(o)).collect();
    Ok(whole_list("organizations", items))
}

pub(crate) fn show(w: &mut World, id: u64) -> ApiResult {
    let s = &w.store;
    let o = s.organizations.get(&id).ok_or_else(ApiError::not_found)?;
    Ok(Reply::ok(json!({"organization": s.render_org(o)})))
}

fn reply(s: &Store, status: u16, id: u64) -> Reply {
    let body = s
        .organizations
        .get(&id)
        .map(|o| s.render_org(o))
        .unwrap_or(Value::Null);
    Reply::json(status, json!({"organization": body}))
}

pub(crate) fn create(w: &mut World, req: &ApiRequest) -> ApiResult {
    let obj = req.wrapped("organization")?;
    let id = create_org(&mut w.store, obj)?;
    Ok(reply(&w.store, 201, id).header("Location", format!("/api/v2/organizations/{id}.json")))
}

pub(crate) fn update(w: &mut World, req: &ApiRequest, id: u64) -> ApiResult {
    let obj = req.wrapped("organization")?;
    if !w.store.organizations.contains_key(&id) {
        return Err(ApiError::not_found());
    }
    update_org(&mut w.store, id, obj)?;
    Ok(reply(&w.store, 200, id))
}

/// `POST organizations/create_or_update`: 201 when created, 200 when updated.
pub(crate) fn create_or_update(w: &mut World, req: &ApiRequest) -> ApiResult {
    let obj = req.wrapped("organization")?;
    let s = &mut w.store;
    let found = opt_id(obj, "id")
        .filter(|id| s.organizations.contains_key(id))
        .or_else(|| opt_str(obj, "external_id").and_then(|e| s.org_by_external_id(&e)));
    match found {
        Some(id) => {
            update_org(s, id, obj)?;
            Ok(reply(s, 200, id))
        }
        None => {
            let id = create_org(s, obj)?;
            Ok(reply(s, 201, id).header("Location", format!("/api/v2/organizations/{id}.json")))
        }
    }
}

/// `GET organizations/search?external_id=X` or `?name=X` (exact, case-insensitive).
pub(crate) fn search(w: &mut World, req: &ApiRequest) -> ApiResult {
    let s = &w.store;
    let found = match (req.query("external_id"), req.query("name")) {
        (Some(ext), None) => s.org_by_external_id(ext),
        (None, Some(name)) => s.org_by_name(name),
        _ => {
            return Err(ApiError::bad_request(
                "Send exactly one of external_id or name",
            ));
        }
    };
    let items = found
        .and_then(|id| s.organizations.get(&id))
        .map(|o| s.render_org(o))
        .into_iter()
        .collect();
    offset_page(req, "organizations", items)
}

/// `GET organizations/show_many?ids=1,2` or `?external_ids=a,b`.
pub(crate) fn show_many(w: &mut World, req: &ApiRequest) -> ApiResult {
    let s = &w.store;
    let ids: Vec<u64> = match show_many_keys(req)? {
        ShowMany::Ids(ids) => ids,
        ShowMany::ExternalIds(ext) => ext.iter().filter_map(|e| s.org_by_external_id(e)).collect(),
    };
    let items: Vec<Value> = ids
        .iter()
        .filter_map(|id| s.organizations.get(id))
        .map(|o| s.render_org(o))
        .collect();
    Ok(whole_list("organizations", items))
}

fn name_taken(s: &Store, name: &str, owner: Option<u64>) -> Result<(), ApiError> {
    match s.org_by_name(name) {
        Some(other) if Some(other) != owner => Err(ApiError::invalid(
            "name",
            "DuplicateValue",
            format!("Name: {} has already been taken", name.trim()),
        )),
        _ => Ok(()),
    }
}

/// Creates an organization; 422 `BlankValue` without a name, `DuplicateValue` on a taken one.
pub(crate) fn create_org(s: &mut Store, obj: &Map<String, Value>) -> Result<u64, ApiError> {
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
    name_taken(s, &name, None)?;
    if let Some(ext) = opt_str(obj, "external_id")
        && s.org_by_external_id(&ext).is_some()
    {
        return Err(ApiError::invalid(
            "external_id",
            "DuplicateValue",
            format!("External ID: {ext} has already been taken"),
        ));
    }
    let mut inv = Invalid::new();
    let org_fields = fields::clean_values(
        &s.organization_fields,
        obj.get("organization_fields"),
        &mut inv,
    );
    inv.into_result()?;
    let id = opt_id(obj, "id")
        .filter(|i| !s.organizations.contains_key(i))
        .unwrap_or_else(|| s.ids.next(Kind::Organization));
    s.ids.observe(Kind::Organization, id);
    let now = s.now();
    s.organizations.insert(Organization {
        id,
        name,
        external_id: opt_str(obj, "external_id"),
        domain_names: obj.get("domain_names").map(str_list).unwrap_or_default(),
        tags: obj.get("tags").map(str_list).unwrap_or_default(),
        details: opt_str(obj, "details"),
        notes: opt_str(obj, "notes"),
        group_id: opt_id(obj, "group_id"),
        shared_tickets: obj
            .get("shared_tickets")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        shared_comments: obj
            .get("shared_comments")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        organization_fields: org_fields,
        created_at: now.clone(),
        updated_at: now,
    });
    Ok(id)
}

/// Updates an organization (404 when there is none). Unknown and read-only keys (`url`,
/// `deleted`) are ignored. Also what each item of `update_many` goes through (see `bulk`).
pub(crate) fn update_org(s: &mut Store, id: u64, obj: &Map<String, Value>) -> Result<(), ApiError> {
    if !s.organizations.contains_key(&id) {
        return Err(ApiError::not_found());
    }
    let name = opt_str(obj, "name").map(|n| n.trim().to_string());
    if let Some(n) = &name {
        if n.is_empty() {
            return Err(ApiError::invalid(
                "name",
                "BlankValue",
                "Name: cannot be blank",
            ));
        }
        name_taken(s, n, Some(id))?;
    }
    let mut inv = Invalid::new();
    let org_fields = fields::clean_values(
        &s.organization_fields,
        obj.get("organization_fields"),
        &mut inv,
    );
    inv.into_result()?;
    let now = s.now();
    s.organizations
        .update(id, |o| {
            if let Some(n) = name {
                o.name = n;
            }
            if let Some(ext) = opt_str(obj, "external_id") {
                o.external_id = Some(ext);
            }
            if let Some(v) = obj.get("domain_names") {
                o.domain_names = str_list(v);
            }
            if let Some(v) = obj.get("tags") {
                o.tags = str_list(v);
            }
            if obj.contains_key("details") {
                o.details = opt_str(obj, "details");
            }
            if obj.contains_key("notes") {
                o.notes = opt_str(obj, "notes");
            }
            if obj.contains_key("group_id") {
                o.group_id = opt_id(obj, "group_id");
            }
            for (key, slot) in [
                ("shared_tickets", &mut o.shared_tickets),
                ("shared_comments", &mut o.shared_comments),
            ] {
                if let Some(b) = obj.get(key).and_then(Value::as_bool) {
                    *slot = b;
                }
            }
            o.organization_fields.extend(org_fields);
            o.updated_at = now;
        })
        .ok_or_else(ApiError::not_found)
}
