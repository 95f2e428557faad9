//! The OpenAPI oracle itself: loading, path matching, and known accept/reject cases.

use crate::support::oas::{Oas, Validated};
use serde_json::json;

#[test]
fn loads_and_matches_path_templates() {
    let t0 = std::time::Instant::now();
    let o = Oas::load();
    eprintln!("loaded in {:?}", t0.elapsed());
    assert_eq!(
        o.template_for("/api/v2/users/123.json"),
        Some("/api/v2/users/{user_id}")
    );
    assert_eq!(
        o.template_for("/api/v2/users/search?query=x"),
        Some("/api/v2/users/search")
    );
    assert_eq!(
        o.template_for("/api/v2/users/create_or_update.json"),
        Some("/api/v2/users/create_or_update")
    );
    assert_eq!(
        o.operation_id("POST", "/api/v2/users/create_or_update"),
        Some("CreateOrUpdateUser")
    );
    assert_eq!(o.template_for("/api/v2/user_profiles/events"), None);
}

#[test]
fn request_cases_from_the_reference() {
    let o = Oas::load();
    let ok = |m: &str, p: &str, b: serde_json::Value| o.validate_request(m, p, &b);
    assert_eq!(
        ok(
            "POST",
            "/api/v2/users/create_or_update",
            json!({"user": {"email": "a@b.co", "name": "A"}})
        ),
        Ok(Validated::Valid)
    );
    assert_eq!(
        ok(
            "POST",
            "/api/v2/users/create_or_update.json",
            json!({"user": {"external_id": "e1"}})
        ),
        Ok(Validated::Valid)
    );
    assert!(
        ok(
            "POST",
            "/api/v2/users/create_or_update",
            json!({"email": "a@b.co"})
        )
        .is_err(),
        "missing user wrapper"
    );
    assert_eq!(
        ok(
            "POST",
            "/api/v2/tickets",
            json!({"ticket": {"comment": {"body": "hi"}, "priority": "high"}})
        ),
        Ok(Validated::Valid)
    );
    assert!(
        ok(
            "POST",
            "/api/v2/tickets",
            json!({"ticket": {"comment": {"body": "hi"}, "priority": "sky-high"}})
        )
        .is_err()
    );
    assert!(
        ok(
            "POST",
            "/api/v2/tickets",
            json!({"ticket": {"subject": "no comment"}})
        )
        .is_err()
    );
    assert_eq!(
        ok(
            "PUT",
            "/api/v2/tickets/1",
            json!({"ticket": {"status": "solved"}})
        ),
        Ok(Validated::Valid)
    );
    assert_eq!(
        ok(
            "POST",
            "/api/v2/organizations/create_or_update",
            json!({"organization": {}})
        ),
        Ok(Validated::NoSchema)
    );
    assert_eq!(
        ok("POST", "/api/v2/user_profiles/events", json!({})),
        Ok(Validated::NoSchema)
    );
}
