//! Users: create or update matched by email or external id, show, show many, search, user fields,
//! merge and delete.

use serde_json::{Value, json};

use super::{EmulatorApi, Reply, error_code, urlencode};

#[tokio::test]
async fn create_or_update_matches_by_email_and_external_id() {
    let api = EmulatorApi::start().await;
    let r = api
        .post(
            "/api/v2/users/create_or_update.json",
            json!({"user": {"email": "Jane@Example.com", "name": "Jane", "external_id": "U-1"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["user"]["id"].as_u64().expect("id");
    assert!(id > 1_000_000_000_000, "ids look real");
    assert_eq!(
        r.header("location"),
        Some(format!("/api/v2/users/{id}.json").as_str())
    );
    assert_eq!(
        r.body["user"]["url"],
        format!("https://example.zendesk.com/api/v2/users/{id}.json")
    );
    assert!(
        r.body["user"]["created_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 20)
    );

    // Same email, different case: 200, same user, Location too.
    let r = api
        .post(
            "/api/v2/users/create_or_update",
            json!({"user": {"email": "jane@example.COM", "name": "Jane D"}}),
        )
        .await;
    assert_eq!((r.status, r.body["user"]["id"].as_u64()), (200, Some(id)));
    assert_eq!(
        r.header("location"),
        Some(format!("/api/v2/users/{id}.json").as_str())
    );
    assert_eq!(r.body["user"]["name"], "Jane D");

    // Match by external_id, case-insensitively; the case sent is written back.
    let r = api
        .post(
            "/api/v2/users/create_or_update",
            json!({"user": {"external_id": "u-1", "email": "jane.work@example.com"}}),
        )
        .await;
    assert_eq!((r.status, r.body["user"]["id"].as_u64()), (200, Some(id)));
    assert_eq!(r.body["user"]["external_id"], "u-1");
    // The primary email is unchanged; the new one is a secondary identity.
    assert_eq!(r.body["user"]["email"], "Jane@Example.com");
    let ids = api.get(&format!("/api/v2/users/{id}/identities")).await;
    let values: Vec<(&str, bool)> = ids.body["identities"]
        .as_array()
        .expect("identities")
        .iter()
        .map(|i| {
            (
                i["value"].as_str().unwrap_or(""),
                i["primary"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        values,
        vec![("Jane@Example.com", true), ("jane.work@example.com", false)]
    );
    // Either email now finds the user.
    let r = api
        .post(
            "/api/v2/users/create_or_update",
            json!({"user": {"email": "JANE.WORK@example.com"}}),
        )
        .await;
    assert_eq!((r.status, r.body["user"]["id"].as_u64()), (200, Some(id)));

    // A new user without a name: 422 BlankValue on name.
    let r = api
        .post(
            "/api/v2/users/create_or_update",
            json!({"user": {"email": "noname@example.com"}}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (422, Some("RecordInvalid"))
    );
    assert_eq!(error_code(&r.body, "name"), Some("BlankValue"));
    // A malformed email: 422 InvalidValue.
    let r = api
        .post(
            "/api/v2/users/create_or_update",
            json!({"user": {"email": "not-an-email", "name": "X"}}),
        )
        .await;
    assert_eq!(error_code(&r.body, "email"), Some("InvalidValue"));
    // Missing wrapper: 400.
    assert_eq!(
        api.post("/api/v2/users/create_or_update", json!({"email": "a@b.co"}))
            .await
            .status,
        400
    );
}

#[tokio::test]
async fn users_are_shown_one_or_many_and_searched() {
    let api = EmulatorApi::start().await;
    let jane = api.user("jane@example.com", "Jane Doe").await;
    let r = api.post("/api/v2/users/create_or_update", json!({"user": {"email": "john@other.org", "name": "John Roe", "external_id": "Ext-9"}})).await;
    let john = r.body["user"]["id"].as_u64().expect("id");

    let show = api.get(&format!("/api/v2/users/{jane}.json")).await;
    assert_eq!(
        (show.status, show.body["user"]["email"].as_str()),
        (200, Some("jane@example.com"))
    );
    let missing = api.get("/api/v2/users/12345").await;
    assert_eq!(
        (missing.status, missing.body.clone()),
        (
            404,
            json!({"error": "RecordNotFound", "description": "Not found"})
        )
    );

    let many = api
        .get(&format!("/api/v2/users/show_many?ids={jane},{john},1"))
        .await;
    assert_eq!(many.body["users"].as_array().map(Vec::len), Some(2));
    let many = api.get("/api/v2/users/show_many?external_ids=EXT-9").await;
    assert_eq!(many.body["users"][0]["id"].as_u64(), Some(john));

    let ids_of = |r: &Reply| -> Vec<u64> {
        r.body["users"]
            .as_array()
            .map(|a| a.iter().filter_map(|u| u["id"].as_u64()).collect())
            .unwrap_or_default()
    };
    let search = |q: &str| format!("/api/v2/users/search?query={}", urlencode(q));
    assert_eq!(
        ids_of(&api.get(&search("jane")).await),
        vec![jane],
        "bare term, partial on name"
    );
    assert_eq!(
        ids_of(&api.get(&search("other.org")).await),
        vec![john],
        "bare term, partial on email"
    );
    assert_eq!(
        ids_of(&api.get(&search("jane@example.com")).await),
        vec![jane],
        "bare email"
    );
    assert_eq!(
        ids_of(&api.get(&search("email:JANE@example.com")).await),
        vec![jane]
    );
    assert_eq!(
        ids_of(&api.get(&search("email:\"john@other.org\"")).await),
        vec![john]
    );
    assert_eq!(
        ids_of(&api.get(&search("external_id:ext-9")).await),
        vec![john]
    );
    assert_eq!(
        ids_of(&api.get(&search("email:jane@example")).await),
        Vec::<u64>::new(),
        "field terms are exact"
    );
    let none = api.get(&search("nobody")).await;
    assert_eq!(
        none.body,
        json!({"users": [], "next_page": null, "previous_page": null, "count": 0})
    );
    assert_eq!(
        ids_of(&api.get("/api/v2/users/search?external_id=EXT-9").await),
        vec![john]
    );
    assert_eq!(
        ids_of(&api.get("/api/v2/users/search?external_id=Ext").await),
        Vec::<u64>::new(),
        "external_id= is exact"
    );
    let paged = api.get(&format!("{}&per_page=1", search("o"))).await;
    assert_eq!(
        (
            paged.body["count"].as_u64(),
            paged.body["users"].as_array().map(Vec::len)
        ),
        (Some(2), Some(1))
    );
    assert!(
        paged.body["next_page"]
            .as_str()
            .is_some_and(|u| u.contains("page=2"))
    );
}

#[tokio::test]
async fn user_fields_only_stick_when_defined() {
    let api = EmulatorApi::start().await;
    let r = api
        .post(
            "/api/v2/users/create_or_update",
            json!({"user": {"email": "a@b.co", "name": "A", "user_fields": {"plan": "pro"}}}),
        )
        .await;
    assert_eq!(
        r.body["user"]["user_fields"],
        json!({}),
        "undefined keys are dropped"
    );
    let f = api
        .post(
            "/api/v2/user_fields",
            json!({"user_field": {"type": "text", "title": "Plan", "key": "plan"}}),
        )
        .await;
    assert_eq!(f.status, 201);
    api.post(
        "/api/v2/user_fields",
        json!({"user_field": {"type": "integer", "title": "Seats", "key": "seats"}}),
    )
    .await;
    let r = api
        .post(
            "/api/v2/users/create_or_update",
            json!({"user": {"email": "a@b.co", "user_fields": {"plan": "pro", "other": 1}}}),
        )
        .await;
    assert_eq!(
        r.body["user"]["user_fields"],
        json!({"plan": "pro", "seats": null})
    );
    let r = api
        .post(
            "/api/v2/users/create_or_update",
            json!({"user": {"email": "a@b.co", "user_fields": {"seats": "many"}}}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["details"]["base"][0]["error"].as_str()),
        (422, Some("InvalidValue"))
    );
    assert_eq!(
        r.body["details"]["base"][0]["field_key"],
        f.body["user_field"]["id"]
            .as_u64()
            .map(|i| i + 1)
            .map_or(Value::Null, |i| json!(i))
    );
}

#[tokio::test]
async fn create_or_update_many_needs_bulk_import() {
    let api = EmulatorApi::start().await;
    let body = json!({"users": [{"email": "a@b.co", "name": "A"}, {"email": "b@b.co"}]});
    let r = api
        .post("/api/v2/users/create_or_update_many", body.clone())
        .await;
    assert_eq!(
        (r.status, r.body["error"]["title"].as_str()),
        (403, Some("Forbidden"))
    );
    api.emu.configure(|k| k.bulk_import = true);
    let r = api.post("/api/v2/users/create_or_update_many", body).await;
    assert_eq!(
        (r.status, r.body["job_status"]["status"].as_str()),
        (200, Some("queued"))
    );
    let job_id = r.body["job_status"]["id"]
        .as_str()
        .expect("job id")
        .to_string();
    assert_eq!(job_id.len(), 32);
    let job = api
        .get(&format!("/api/v2/job_statuses/{job_id}.json"))
        .await;
    assert_eq!(job.body["job_status"]["status"], "completed");
    let results = &job.body["job_status"]["results"];
    assert_eq!(
        (results[0]["action"].as_str(), results[0]["status"].as_str()),
        (Some("create"), Some("Created"))
    );
    assert_eq!(
        (
            results[1]["success"].as_bool(),
            results[1]["error"].as_str()
        ),
        (Some(false), Some("RecordInvalid"))
    );
}

#[tokio::test]
async fn users_are_merged_and_deleted() {
    let api = EmulatorApi::start().await;
    let keep = api.user("keep@example.com", "Keep").await;
    let dup = api.user("dup@example.com", "Dup").await;
    let org = api.org("G-M", "Merged Org").await;
    api.post(
        "/api/v2/organization_memberships",
        json!({"organization_membership": {"user_id": dup, "organization_id": org}}),
    )
    .await;
    let t = api
        .post(
            "/api/v2/tickets",
            json!({"ticket": {"requester_id": dup, "comment": {"body": "hi"}}}),
        )
        .await;
    let tid = t.body["ticket"]["id"].as_u64().expect("ticket id");
    for uid in [keep, dup] {
        let ev = json!({"profile": {"source": "shop", "type": "customer", "identifiers": [{"type": "email", "value": format!("{uid}@example.com")}]}, "event": {"source": "shop", "type": "visit", "properties": {}}});
        let r = api.post(&format!("/api/v2/users/{uid}/events"), ev).await;
        assert_eq!(r.status, 202, "{}", r.text);
    }
    let r = api
        .put(
            &format!("/api/v2/users/{dup}/merge"),
            json!({"user": {"id": keep}}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["user"]["id"].as_u64()),
        (200, Some(keep)),
        "{}",
        r.text
    );
    assert_eq!(r.body["user"]["email"], "keep@example.com");
    assert_eq!(r.body["user"]["organization_id"].as_u64(), Some(org));
    assert_eq!(api.get(&format!("/api/v2/users/{dup}")).await.status, 404);
    let found = api
        .get("/api/v2/users/search?query=email:dup@example.com")
        .await;
    assert_eq!(found.body["users"][0]["id"].as_u64(), Some(keep));
    let t = api.get(&format!("/api/v2/tickets/{tid}")).await;
    assert_eq!(t.body["ticket"]["requester_id"].as_u64(), Some(keep));
    let events = api.get(&format!("/api/v2/users/{keep}/events")).await;
    assert_eq!(events.body["events"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        api.emu.state()["profiles"].as_array().map(Vec::len),
        Some(1)
    );
    let r = api
        .put(
            &format!("/api/v2/users/{keep}/merge"),
            json!({"user": {"id": keep}}),
        )
        .await;
    assert_eq!(r.status, 422);

    // A deleted user's email and external id can be used again; its tickets stay.
    let r = api.delete(&format!("/api/v2/users/{keep}")).await;
    assert_eq!(
        (r.status, r.body["user"]["active"].as_bool()),
        (200, Some(false))
    );
    assert_eq!(
        api.delete(&format!("/api/v2/users/{keep}")).await.status,
        404
    );
    assert_eq!(api.get(&format!("/api/v2/tickets/{tid}")).await.status, 200);
    assert_eq!(
        api.emu.state()["memberships"].as_array().map(Vec::len),
        Some(0)
    );
    let again = api.user("dup@example.com", "Again").await;
    assert_ne!(again, keep);
}
