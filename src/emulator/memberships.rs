//! Organization memberships (docs/zendesk.md, "Organization memberships"): create (422
//! `DuplicateValue` when already a member; the user's first membership is the default), show,
//! list (account, per user with the default first then by organization name, per organization),
//! delete by id, by user and membership, and by user and organization (204; 404 when absent),
//! make default.
//!
//! Removing a membership clears `organization_id` on that user's tickets in that organization,
//! and promotes another membership to default when the default goes.

use serde_json::{Map, Value, json};

use super::errors::{ApiError, ApiResult, Invalid, Reply};
use super::router::{ApiRequest, World, whole_list};
use super::state::{Kind, Membership, MembershipKey, Store, TicketKey, opt_id};

pub(crate) fn list(w: &mut World, user: Option<u64>, org: Option<u64>) -> ApiResult {
    let s = &w.store;
    let items: Vec<&Membership> = match (user, org) {
        (Some(uid), _) => {
            if !s.users.contains_key(&uid) {
                return Err(ApiError::not_found());
            }
            s.memberships_of_user(uid)
        }
        (None, Some(oid)) => {
            if !s.organizations.contains_key(&oid) {
                return Err(ApiError::not_found());
            }
            s.memberships
                .find(&MembershipKey::Organization(oid))
                .collect()
        }
        (None, None) => s.memberships.values().collect(),
    };
    let items: Vec<Value> = items.into_iter().map(|m| s.render_membership(m)).collect();
    Ok(whole_list("organization_memberships", items))
}

pub(crate) fn show(w: &mut World, user: Option<u64>, mid: u64) -> ApiResult {
    let s = &w.store;
    let m = s
        .memberships
        .get(&mid)
        .filter(|m| user.is_none_or(|u| m.user_id == u))
        .ok_or_else(ApiError::not_found)?;
    Ok(Reply::ok(
        json!({"organization_membership": s.render_membership(m)}),
    ))
}

/// `POST organization_memberships` (or the user-scoped form, where the path gives the user).
pub(crate) fn create(w: &mut World, req: &ApiRequest, path_user: Option<u64>) -> ApiResult {
    let obj = req.wrapped("organization_membership")?;
    let s = &mut w.store;
    let mid = create_membership(s, path_user, obj)?;
    let m = s.memberships.get(&mid).ok_or_else(ApiError::not_found)?;
    Ok(Reply::json(
        201,
        json!({"organization_membership": s.render_membership(m)}),
    )
    .header(
        "Location",
        format!("/api/v2/organization_memberships/{mid}.json"),
    ))
}

/// Creates a membership from `{user_id, organization_id}` (the user may come from the path):
/// 422 `BlankValue` for an unknown user or organization, `DuplicateValue` when already a
/// member. Also what each item of `create_many` goes through (see `bulk`).
pub(crate) fn create_membership(
    s: &mut Store,
    path_user: Option<u64>,
    obj: &Map<String, Value>,
) -> Result<u64, ApiError> {
    let user_id = path_user.or_else(|| opt_id(obj, "user_id"));
    let org_id = opt_id(obj, "organization_id");
    let mut inv = Invalid::new();
    if !user_id.is_some_and(|u| s.users.contains_key(&u)) {
        inv = inv.add("user", "BlankValue", "User cannot be blank");
    }
    if !org_id.is_some_and(|o| s.organizations.contains_key(&o)) {
        inv = inv.add("organization", "BlankValue", "Organization cannot be blank");
    }
    inv.into_result()?;
    let (Some(uid), Some(oid)) = (user_id, org_id) else {
        return Err(ApiError::not_found());
    };
    if s.membership_of(uid, oid).is_some() {
        return Err(ApiError::invalid(
            "user_id",
            "DuplicateValue",
            "User is already a member of this organization",
        ));
    }
    Ok(insert(s, uid, oid, None))
}

/// Adds a membership (default when it is the user's first); `id` keeps a seeded id.
pub(crate) fn insert(s: &mut Store, uid: u64, oid: u64, id: Option<u64>) -> u64 {
    let id = id
        .filter(|i| !s.memberships.contains_key(i))
        .unwrap_or_else(|| s.ids.next(Kind::Membership));
    s.ids.observe(Kind::Membership, id);
    let default = s.memberships_by_user(uid).next().is_none();
    let now = s.now();
    s.memberships.insert(Membership {
        id,
        user_id: uid,
        organization_id: oid,
        default,
        created_at: now.clone(),
        updated_at: now,
    });
    id
}

/// Makes sure the user is a member (used by `organization_id` on users and tickets).
pub(crate) fn ensure(s: &mut Store, uid: u64, oid: u64) {
    if s.membership_of(uid, oid).is_none() {
        insert(s, uid, oid, None);
    }
}

fn remove(s: &mut Store, mid: u64) -> ApiResult {
    let m = s.memberships.remove(&mid).ok_or_else(ApiError::not_found)?;
    if m.default
        && let Some(next) = s.memberships_of_user(m.user_id).first().map(|n| n.id)
    {
        s.memberships.update(next, |n| n.default = true);
    }
    let requested: Vec<u64> = s.tickets.lookup(&TicketKey::Requester(m.user_id)).to_vec();
    for tid in requested {
        s.tickets.update(tid, |t| {
            if t.organization_id == Some(m.organization_id) {
                t.organization_id = None;
            }
        });
    }
    Ok(Reply::no_content())
}

/// Removes all of a user's memberships (a user deleted or merged away).
pub(crate) fn remove_all_of(s: &mut Store, uid: u64) {
    for mid in s.memberships.lookup(&MembershipKey::User(uid)).to_vec() {
        s.memberships.remove(&mid);
    }
}

/// `DELETE organization_memberships/{id}` and `DELETE users/{uid}/organization_memberships/{id}`.
pub(crate) fn delete(w: &mut World, user: Option<u64>, mid: u64) -> ApiResult {
    let s = &mut w.store;
    if s.memberships
        .get(&mid)
        .is_none_or(|m| user.is_some_and(|u| m.user_id != u))
    {
        return Err(ApiError::not_found());
    }
    remove(s, mid)
}

/// `DELETE users/{uid}/organizations/{oid}`: 204, or 404 when the user is not a member.
pub(crate) fn unassign(w: &mut World, uid: u64, oid: u64) -> ApiResult {
    let s = &mut w.store;
    let mid = find(s, uid, oid)?;
    remove(s, mid)
}

fn find(s: &Store, uid: u64, oid: u64) -> Result<u64, ApiError> {
    s.membership_of(uid, oid).ok_or_else(ApiError::not_found)
}

fn make_default(s: &mut Store, uid: u64, mid: u64) -> ApiResult {
    let own: Vec<u64> = s.memberships.lookup(&MembershipKey::User(uid)).to_vec();
    for id in own {
        s.memberships.update(id, |m| m.default = m.id == mid);
    }
    let m = s.memberships.get(&mid).ok_or_else(ApiError::not_found)?;
    Ok(Reply::ok(
        json!({"organization_membership": s.render_membership(m)}),
    ))
}

/// `PUT users/{uid}/organization_memberships/{id}/make_default`: answers the user's list.
pub(crate) fn make_default_by_id(w: &mut World, uid: u64, mid: u64) -> ApiResult {
    if w.store
        .memberships
        .get(&mid)
        .is_none_or(|m| m.user_id != uid)
    {
        return Err(ApiError::not_found());
    }
    make_default(&mut w.store, uid, mid)?;
    list(w, Some(uid), None)
}

/// `PUT users/{uid}/organizations/{oid}/make_default`.
pub(crate) fn make_default_by_org(w: &mut World, uid: u64, oid: u64) -> ApiResult {
    let mid = find(&w.store, uid, oid)?;
    make_default(&mut w.store, uid, mid)
}
