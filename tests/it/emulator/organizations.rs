//! Organizations: create or update, show and search.

use serde_json::json;

use super::{EmulatorApi, error_code};

#[tokio::test]
async fn organizations_are_upserted_and_searched() {
    let api = EmulatorApi::start().await;
    let body = json!({"organization": {"external_id": "G-1", "name": "Acme", "domain_names": ["acme.com", "acme.io"], "tags": ["a", "b"], "url": "https://ignored", "deleted": false}});
    let r = api
        .post("/api/v2/organizations/create_or_update", body)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["organization"]["id"].as_u64().expect("id");
    let r = api.post("/api/v2/organizations/create_or_update", json!({"organization": {"external_id": "g-1", "domain_names": ["acme.org"], "tags": ["c"]}})).await;
    assert_eq!(
        (r.status, r.body["organization"]["id"].as_u64()),
        (200, Some(id))
    );
    assert_eq!(
        r.body["organization"]["domain_names"],
        json!(["acme.org"]),
        "replaced"
    );
    assert_eq!(r.body["organization"]["tags"], json!(["c"]), "replaced");
    assert_eq!(r.body["organization"]["name"], "Acme");

    // A new org with a taken name (trimmed, any case): 422 DuplicateValue.
    let r = api
        .post(
            "/api/v2/organizations/create_or_update",
            json!({"organization": {"external_id": "G-2", "name": "  acme "}}),
        )
        .await;
    assert_eq!(
        (r.status, error_code(&r.body, "name")),
        (422, Some("DuplicateValue"))
    );
    let r = api
        .post(
            "/api/v2/organizations/create_or_update",
            json!({"organization": {"external_id": "G-3"}}),
        )
        .await;
    assert_eq!(
        (r.status, error_code(&r.body, "name")),
        (422, Some("BlankValue"))
    );

    assert_eq!(
        api.get(&format!("/api/v2/organizations/{id}")).await.body["organization"]["external_id"],
        "g-1",
        "rewritten to the case sent"
    );
    let s = api
        .get("/api/v2/organizations/search?external_id=G-1")
        .await;
    assert_eq!(
        (
            s.body["count"].as_u64(),
            s.body["organizations"][0]["id"].as_u64()
        ),
        (Some(1), Some(id))
    );
    let s = api.get("/api/v2/organizations/search?name=ACME").await;
    assert_eq!(s.body["organizations"][0]["id"].as_u64(), Some(id));
    assert_eq!(
        api.get("/api/v2/organizations/search?name=nope").await.body["count"],
        0
    );

    // organization_fields: filtered to defined fields.
    let r = api.post("/api/v2/organizations/create_or_update", json!({"organization": {"external_id": "G-1", "organization_fields": {"tier": "gold"}}})).await;
    assert_eq!(r.body["organization"]["organization_fields"], json!({}));
    assert_eq!(
        api.post(
            "/api/v2/organization_fields",
            json!({"organization_field": {"type": "text", "title": "Tier", "key": "tier"}})
        )
        .await
        .status,
        201
    );
    let r = api.post("/api/v2/organizations/create_or_update", json!({"organization": {"external_id": "G-1", "organization_fields": {"tier": "gold", "nope": 1}}})).await;
    assert_eq!(
        r.body["organization"]["organization_fields"],
        json!({"tier": "gold"})
    );
}
