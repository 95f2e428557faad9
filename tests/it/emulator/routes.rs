//! Paths and error envelopes: the `.json` suffix, unknown routes, bodies that are not JSON.

use serde_json::json;

use super::EmulatorApi;

#[tokio::test]
async fn paths_take_a_json_suffix_and_unknown_routes_and_bad_bodies_get_zendesks_errors() {
    let api = EmulatorApi::start().await;
    let id = api.user("s@example.com", "S").await;
    assert_eq!(
        api.get(&format!("/api/v2/users/{id}.json")).await.status,
        200
    );
    assert_eq!(api.get(&format!("/api/v2/users/{id}")).await.status, 200);
    let invalid = json!({"error": "InvalidEndpoint", "description": "Not found"});
    for (m, p) in [
        ("GET", "/api/v2/nothing_here"),
        ("PUT", "/api/v2/organization_memberships/create_many"),
        ("GET", "/nope"),
        ("DELETE", "/api/v2/users/search"),
    ] {
        let r = api.call(m, p, None).await;
        assert_eq!(
            (r.status, r.body.clone()),
            (404, invalid.clone()),
            "{m} {p}"
        );
    }
    let r = api
        .raw(
            "POST",
            "/api/v2/users/create_or_update",
            Some("{not json"),
            &[],
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"]["title"].as_str()),
        (400, Some("Invalid attribute"))
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(r.header("x-zendesk-api-version"), Some("v2"));
    let r = api
        .raw("POST", "/api/v2/users/create_or_update", Some("[1,2"), &[])
        .await;
    assert_eq!(r.status, 400);
}
