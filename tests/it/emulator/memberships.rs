//! Organization memberships: added, listed, deleted; a user's default organization.

use serde_json::{Value, json};

use super::{EmulatorApi, error_code};

#[tokio::test]
async fn memberships_are_added_listed_and_deleted_the_first_one_the_default() {
    let api = EmulatorApi::start().await;
    let u = api.user("m@example.com", "Member").await;
    let (o1, o2) = (api.org("O-1", "Zeta").await, api.org("O-2", "Alpha").await);
    let add = |o: u64| json!({"organization_membership": {"user_id": u, "organization_id": o}});
    let r = api.post("/api/v2/organization_memberships", add(o1)).await;
    assert_eq!(
        (
            r.status,
            r.body["organization_membership"]["default"].clone()
        ),
        (201, json!(true))
    );
    let m1 = r.body["organization_membership"]["id"]
        .as_u64()
        .expect("id");
    let r = api
        .post("/api/v2/organization_memberships.json", add(o2))
        .await;
    assert_eq!(
        (
            r.status,
            r.body["organization_membership"]["default"].clone()
        ),
        (201, Value::Null)
    );
    let m2 = r.body["organization_membership"]["id"]
        .as_u64()
        .expect("id");
    let dup = api.post("/api/v2/organization_memberships", add(o1)).await;
    assert_eq!(dup.status, 422);
    assert_eq!(
        dup.body,
        json!({"error": "RecordInvalid", "description": "Record validation errors", "details": {"user_id": [{"description": "User is already a member of this organization", "error": "DuplicateValue"}]}})
    );
    let bad = api
        .post(
            "/api/v2/organization_memberships",
            json!({"organization_membership": {"user_id": o1, "organization_id": u}}),
        )
        .await;
    assert_eq!(
        (bad.status, error_code(&bad.body, "organization")),
        (422, Some("BlankValue"))
    );
    assert_eq!(
        api.get(&format!("/api/v2/users/{u}")).await.body["user"]["organization_id"].as_u64(),
        Some(o1)
    );

    // Per user: default first, then by name; per org.
    let list = api
        .get(&format!("/api/v2/users/{u}/organization_memberships"))
        .await;
    let orgs: Vec<u64> = list.body["organization_memberships"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|m| m["organization_id"].as_u64())
        .collect();
    assert_eq!(orgs, vec![o1, o2]);
    let per_org = api
        .get(&format!(
            "/api/v2/organizations/{o2}/organization_memberships"
        ))
        .await;
    assert_eq!(
        per_org.body["organization_memberships"][0]["id"].as_u64(),
        Some(m2)
    );

    // Delete by user and membership, then by id, then by user and org.
    assert_eq!(
        api.delete(&format!("/api/v2/users/{u}/organization_memberships/{m2}"))
            .await
            .status,
        204
    );
    assert_eq!(
        api.delete(&format!("/api/v2/organization_memberships/{m2}"))
            .await
            .status,
        404
    );
    assert_eq!(
        api.delete(&format!("/api/v2/organization_memberships/{m1}.json"))
            .await
            .status,
        204
    );
    assert_eq!(
        api.get(&format!("/api/v2/users/{u}")).await.body["user"]["organization_id"],
        Value::Null
    );
    api.post("/api/v2/organization_memberships", add(o2)).await;
    let r = api
        .delete(&format!("/api/v2/users/{u}/organizations/{o2}"))
        .await;
    assert_eq!((r.status, r.text.as_str()), (204, ""));
    let r = api
        .delete(&format!("/api/v2/users/{u}/organizations/{o2}"))
        .await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (404, Some("RecordNotFound"))
    );
    assert_eq!(api.emu.state()["memberships"], json!([]));
}
