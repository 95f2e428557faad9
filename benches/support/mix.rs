//! A realistic mix of events shared by the benches.
#![allow(dead_code)] // each bench uses part of it

/// A realistic mix: identifies (some with a company), tracks, groups, ticket events, pages,
/// each with the context a browser SDK sends.
pub fn mixed_events(n: usize) -> Vec<Vec<u8>> {
    mixed_events_from(0, n)
}

/// Events as NDJSON.
pub fn ndjson(events: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        out.extend_from_slice(e);
        out.push(b'\n');
    }
    out
}

/// The organizations the mix refers to, as group calls (deliver them first).
pub fn organizations() -> Vec<Vec<u8>> {
    (0..300)
        .map(|o| {
            let v = serde_json::json!({"type": "group", "groupId": format!("org-{o}"),
                                       "traits": {"name": format!("Org {o}"), "industry": "Computing"}});
            serde_json::to_vec(&v).unwrap_or_default()
        })
        .collect()
}

fn mixed_events_from(start: usize, n: usize) -> Vec<Vec<u8>> {
    // One user per block of ten events, with one email and name, as a real user has.
    let person = |i: usize| (i / 10) % 5000;
    let context = |i: usize| {
        let p = person(i);
        serde_json::json!({
            "ip": format!("10.0.{}.{}", i % 250, i % 200),
            "library": {"name": "analytics.js", "version": "5.2.0"},
            "locale": "en-GB",
            "page": {"path": "/pricing", "referrer": "https://example.com/", "title": "Pricing", "url": "https://app.example.com/pricing"},
            "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
            "traits": {"email": format!("user{p}@example.com"), "name": format!("User {p}")}
        })
    };
    (start..start + n)
        .map(|i| {
            // Each block of ten events is one user's session: identifies first, then tracks,
            // a group call and a ticket created then updated.
            let user = format!("u-{}", person(i));
            let v = match i % 10 {
                0..=2 => serde_json::json!({
                    "type": "identify", "userId": user, "messageId": format!("m-{i}"),
                    "timestamp": "2026-11-24T10:00:00Z", "context": context(i),
                    "traits": {"email": format!("user{}@example.com", person(i)), "first_name": "Ada", "last_name": format!("L{}", person(i)),
                               "plan": "pro", "accountTier": "gold", "phone": "+44 20 7946 0000",
                               "company": if i % 3 == 0 { serde_json::json!({"id": format!("org-{}", i % 300)}) } else { serde_json::Value::Null }}
                }),
                3..=5 => serde_json::json!({
                    "type": "track", "event": "Order Completed", "userId": user, "messageId": format!("m-{i}"),
                    "timestamp": "2026-11-24T10:05:00Z", "context": context(i),
                    "properties": {"order_id": format!("o-{i}"), "total": 42.5, "currency": "EUR", "items": [{"sku": "a", "qty": 1}]}
                }),
                6 => serde_json::json!({
                    "type": "group", "groupId": format!("org-{}", i % 300), "userId": user, "messageId": format!("m-{i}"),
                    "context": context(i),
                    "traits": {"name": format!("Org {}", i % 300), "domainNames": ["example.com"], "tags": ["vip"], "employees": 120, "industry": "Computing"}
                }),
                7 => serde_json::json!({
                    "type": "track", "event": "Ticket Created", "userId": user, "messageId": format!("m-{i}"), "context": context(i),
                    "properties": {"subject": "Cannot log in", "comment": "The login page says my password expired.", "priority": "High", "tags": ["login"], "external_id": format!("T-{i}")}
                }),
                8 => serde_json::json!({
                    "type": "track", "event": "Ticket Updated", "userId": user, "messageId": format!("m-{i}"), "context": context(i),
                    "properties": {"external_id": format!("T-{}", i - 1), "status": "pending", "comment": "Reset link sent.", "tags_added": ["reset"]}
                }),
                _ => serde_json::json!({
                    "type": "page", "userId": user, "messageId": format!("m-{i}"), "name": "Pricing", "context": context(i)
                }),
            };
            serde_json::to_vec(&v).unwrap_or_default()
        })
        .collect()
}

/// Events of a mix with the requests it cannot do without.
pub struct Traffic {
    pub events: Vec<Vec<u8>>,
    /// Requests with no bulk form: user events, ticket creations, new organizations.
    pub singles: usize,
    /// Writes that change something, which a bulk form may carry: a new user, a new
    /// membership (mix (b) only counts them; mix (a)'s go in bulk).
    pub changed: usize,
}

fn json_bytes(v: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap_or_default()
}

fn user_traits(u: usize) -> serde_json::Value {
    serde_json::json!({"email": format!("member{u}@example.com"), "first_name": "Ada",
                       "last_name": format!("M{u}"), "plan": "pro", "phone": "+44 20 7946 0000"})
}

fn organization_traits(o: usize) -> serde_json::Value {
    serde_json::json!({"name": format!("Member Org {o}"), "domainNames": ["example.com"],
                       "industry": "Computing", "employees": 120})
}

/// Mix (a): `organizations` organizations of `members` users each, as a backfill exports them,
/// by type: each user's own group call (with its `userId`), then two identifies per user (the
/// second names the company), then three tracks and a ticket per user.
pub fn members_backfill(organizations: usize, members: usize) -> Traffic {
    let users = organizations * members;
    let org = |u: usize| u / members;
    let mut events = Vec::new();
    for u in 0..users {
        events.push(json_bytes(serde_json::json!({
            "type": "group", "groupId": format!("member-org-{}", org(u)), "userId": format!("m-{u}"),
            "messageId": format!("a-g-{u}"), "traits": organization_traits(org(u))})));
    }
    for k in 0..2 {
        for u in 0..users {
            let mut traits = user_traits(u);
            if k == 1 {
                traits["company"] = serde_json::json!({"id": format!("member-org-{}", org(u))});
            }
            events.push(json_bytes(serde_json::json!({
                "type": "identify", "userId": format!("m-{u}"), "messageId": format!("a-i-{u}-{k}"),
                "traits": traits})));
        }
    }
    for u in 0..users {
        for t in 0..3 {
            events.push(json_bytes(serde_json::json!({
                "type": "track", "event": "Order Completed", "userId": format!("m-{u}"),
                "messageId": format!("a-t-{u}-{t}"), "properties": {"order_id": format!("o-{u}-{t}")}})));
        }
        events.push(json_bytes(serde_json::json!({
            "type": "track", "event": "Ticket Created", "userId": format!("m-{u}"),
            "messageId": format!("a-k-{u}"), "context": {"traits": user_traits(u)},
            "properties": {"subject": "Cannot log in", "comment": "The login page fails.",
                           "external_id": format!("AT-{u}")}})));
    }
    Traffic {
        events,
        singles: users * 4 + organizations,
        changed: 0,
    }
}

/// Mix (b): `users` users of `organizations` organizations, in three sessions as browser SDKs
/// send them (every user's first session, then every user's second, then third). Each session
/// repeats the same identify on each of its two page loads, with a track after each; the first
/// two sessions also send the same group call.
pub fn repeating_sessions(users: usize, organizations: usize) -> Traffic {
    let mut events = Vec::new();
    for s in 0..3 {
        for u in 0..users {
            let user = format!("s-{u}");
            let o = u % organizations;
            for page in 0..2 {
                events.push(json_bytes(serde_json::json!({
                    "type": "identify", "userId": user, "messageId": format!("b-i-{s}-{u}-{page}"),
                    "traits": user_traits(u)})));
                events.push(json_bytes(serde_json::json!({
                    "type": "track", "event": "Page Viewed", "userId": user,
                    "messageId": format!("b-t-{s}-{u}-{page}"), "properties": {"page": page}})));
            }
            if s < 2 {
                events.push(json_bytes(serde_json::json!({
                    "type": "group", "groupId": format!("session-org-{o}"), "userId": user,
                    "messageId": format!("b-g-{s}-{u}"), "traits": organization_traits(o)})));
            }
        }
    }
    Traffic {
        events,
        singles: users * 6 + organizations,
        // Each user created once and added to its organization once.
        changed: users * 2,
    }
}
