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
