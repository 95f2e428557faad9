//! The emulator's answers against Zendesk's OpenAPI spec (`tests/support/zendesk-oas.json`).

use crate::support::oas::{Oas, Validated};
use serde_json::{Value, json};

use super::{EmulatorApi, Reply};

#[tokio::test]
async fn responses_match_the_openapi_spec() {
    let spec = Oas::load();
    let api = EmulatorApi::start().await;
    api.post(
        "/api/v2/user_fields",
        json!({"user_field": {"type": "text", "title": "Plan", "key": "plan"}}),
    )
    .await;
    let mut checked = Vec::new();
    // Sends a request, validates the request body (where the spec has a schema) and the response.
    let mut exchange =
        async |method: &str, path: &str, body: Option<Value>, expect_schema: bool| -> Reply {
            if let Some(b) = &body {
                assert!(
                    spec.validate_request(method, path, b).is_ok(),
                    "request {method} {path}: {:?}",
                    spec.validate_request(method, path, b)
                );
            }
            let r = api.call(method, path, body).await;
            let verdict = spec.validate_response(method, path, r.status, &r.body);
            match (expect_schema, &verdict) {
                (true, Ok(Validated::Valid)) | (false, Ok(Validated::NoSchema)) => {}
                _ => panic!("{method} {path} -> {}: {verdict:?}\n{}", r.status, r.text),
            }
            checked.push(format!("{method} {path} {}", r.status));
            r
        };
    let upsert = json!({"user": {"email": "o@example.com", "name": "O", "external_id": "O-1", "user_fields": {"plan": "pro"}, "phone": "+15550100"}});
    let r = exchange(
        "POST",
        "/api/v2/users/create_or_update",
        Some(upsert.clone()),
        true,
    )
    .await;
    assert_eq!(r.status, 201);
    let uid = r.body["user"]["id"].as_u64().expect("id");
    assert_eq!(
        exchange(
            "POST",
            "/api/v2/users/create_or_update.json",
            Some(upsert),
            true
        )
        .await
        .status,
        200
    );
    exchange("GET", &format!("/api/v2/users/{uid}.json"), None, true).await;
    exchange(
        "GET",
        "/api/v2/users/search?query=email:o@example.com",
        None,
        true,
    )
    .await;
    exchange("GET", "/api/v2/users/search?external_id=O-1", None, true).await;
    exchange(
        "GET",
        &format!("/api/v2/users/{uid}/identities"),
        None,
        true,
    )
    .await;

    let org_body = json!({"organization": {"external_id": "OO-1", "name": "Org", "domain_names": ["o.com"], "tags": ["t"]}});
    let r = exchange(
        "POST",
        "/api/v2/organizations/create_or_update",
        Some(org_body.clone()),
        true,
    )
    .await;
    let oid = r.body["organization"]["id"].as_u64().expect("id");
    exchange(
        "POST",
        "/api/v2/organizations/create_or_update",
        Some(org_body),
        true,
    )
    .await;
    exchange("GET", &format!("/api/v2/organizations/{oid}"), None, true).await;
    exchange("GET", "/api/v2/organizations/search?name=Org", None, true).await;

    let m = json!({"organization_membership": {"user_id": uid, "organization_id": oid}});
    assert_eq!(
        exchange("POST", "/api/v2/organization_memberships", Some(m), true)
            .await
            .status,
        201
    );

    let t = json!({"ticket": {"subject": "S", "comment": {"body": "B"}, "requester": {"email": "r@example.com", "name": "R"}, "external_id": "X-1", "priority": "normal", "type": "question", "tags": ["a"]}});
    let r = exchange("POST", "/api/v2/tickets", Some(t), true).await;
    let tid = r.body["ticket"]["id"].as_u64().expect("id");
    let up = json!({"ticket": {"status": "pending", "comment": {"body": "more", "public": true}}});
    exchange(
        "PUT",
        &format!("/api/v2/tickets/{tid}.json"),
        Some(up),
        true,
    )
    .await;
    exchange("GET", &format!("/api/v2/tickets/{tid}"), None, true).await;
    exchange("GET", "/api/v2/tickets?external_id=X-1", None, true).await;
    exchange(
        "GET",
        &format!("/api/v2/users/show_many?ids={uid}"),
        None,
        true,
    )
    .await;
    exchange(
        "GET",
        "/api/v2/organizations/show_many?external_ids=OO-1",
        None,
        true,
    )
    .await;
    // Bulk writes and their jobs.
    api.emu.configure(|k| k.bulk_import = true);
    let users = json!({"users": [{"email": "b1@example.com", "name": "B1"}, {"external_id": "O-1", "name": "O2"}]});
    let r = exchange(
        "POST",
        "/api/v2/users/create_or_update_many",
        Some(users),
        true,
    )
    .await;
    let user_job = r.body["job_status"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let orgs = json!({"organizations": [{"name": "Bulk Org"}]});
    let r = exchange(
        "POST",
        "/api/v2/organizations/create_many",
        Some(orgs),
        true,
    )
    .await;
    let org_job = r.body["job_status"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let r = exchange(
        "GET",
        &format!("/api/v2/job_statuses/{user_job}"),
        None,
        true,
    )
    .await;
    assert_eq!(r.body["job_status"]["results"][1]["action"], "update");
    exchange(
        "GET",
        &format!("/api/v2/job_statuses/show_many?ids={user_job},{org_job}"),
        None,
        true,
    )
    .await;
    exchange(
        "POST",
        "/api/v2/user_fields",
        Some(json!({"user_field": {"type": "text", "title": "T2", "key": "t2"}})),
        true,
    )
    .await;
    exchange("GET", "/api/v2/user_fields", None, true).await;

    // Operations the spec does not describe: the oracle must say so, not pass silently.
    let ev = json!({"profile": {"source": "s", "type": "t", "identifiers": [{"type": "email", "value": "o@example.com"}]}, "event": {"source": "s", "type": "t", "properties": {}}});
    exchange(
        "POST",
        &format!("/api/v2/users/{uid}/events"),
        Some(ev.clone()),
        false,
    )
    .await;
    exchange("POST", "/api/v2/user_profiles/events", Some(ev), false).await;
    exchange("GET", &format!("/api/v2/users/{uid}/events"), None, false).await;
    exchange(
        "GET",
        &format!("/api/v2/users/{uid}/organization_memberships"),
        None,
        false,
    )
    .await;
    assert_eq!(checked.len(), 27);
    // And a deliberately wrong body is caught.
    assert!(
        spec.validate_response(
            "GET",
            &format!("/api/v2/users/{uid}"),
            200,
            &json!({"user": {"id": "not-a-number"}})
        )
        .is_err()
    );
}
