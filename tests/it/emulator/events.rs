//! Sunshine user events: recorded for a user or a profile, checked, listed.

use serde_json::json;

use super::EmulatorApi;

#[tokio::test]
async fn user_events_are_recorded_checked_and_listed() {
    let api = EmulatorApi::start().await;
    let uid = api.user("ev@example.com", "Ev").await;
    let ev = |source: &str| {
        json!({"profile": {"source": "shop", "type": "customer", "identifiers": [{"type": "email", "value": "ev@example.com"}]},
               "event": {"source": source, "type": "Order Completed", "description": "Order Completed", "properties": {"total": 3}}})
    };
    let r = api
        .post(&format!("/api/v2/users/{uid}/events"), ev("shop"))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(
        (r.body["status"].as_str(), r.body["user_id"].clone()),
        (Some("received"), json!(uid.to_string()))
    );
    let profile_id = r.body["profile_id"]
        .as_str()
        .expect("profile id")
        .to_string();
    assert_eq!(profile_id.len(), 26);

    let r = api
        .post(&format!("/api/v2/users/{uid}/events"), ev("Zendesk"))
        .await;
    assert_eq!(r.status, 400, "the zendesk source is reserved");
    assert!(r.body["errors"][0]["code"].is_string());
    for broken in [
        json!({"profile": {"source": "shop", "type": "customer", "identifiers": []}, "event": {"source": "shop", "type": "x", "properties": {}}}),
        json!({"profile": {"source": "shop", "type": "customer", "identifiers": [{"type": "email", "value": "ev@example.com"}]}, "event": {"source": "shop", "type": "x"}}),
        json!({"profile": {"type": "customer", "identifiers": [{"type": "email", "value": "ev@example.com"}]}, "event": {"source": "shop", "type": "x", "properties": {}}}),
        json!({"profile": {"source": "shop", "type": "customer", "identifiers": [{"type": "email", "value": "ev@example.com"}]}, "event": {"source": "shop", "properties": {}}}),
    ] {
        assert_eq!(
            api.post(&format!("/api/v2/users/{uid}/events"), broken)
                .await
                .status,
            400
        );
    }
    assert_eq!(
        api.post("/api/v2/users/abc/events", ev("shop"))
            .await
            .status,
        400
    );
    assert_eq!(
        api.post("/api/v2/users/777/events", ev("shop"))
            .await
            .status,
        404
    );

    // user_profiles/events links by identifier, or creates the user.
    let r = api.post("/api/v2/user_profiles/events", ev("shop")).await;
    assert_eq!(
        (
            r.status,
            r.body["user_id"].clone(),
            r.body["profile_id"].as_str()
        ),
        (202, json!(uid.to_string()), Some(profile_id.as_str()))
    );
    let mut fresh = ev("shop");
    fresh["profile"]["identifiers"] = json!([{"type": "email", "value": "new@example.com"}]);
    let r = api.post("/api/v2/user_profiles/events", fresh).await;
    assert_eq!(r.status, 202);
    let new_uid: u64 = r.body["user_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("string user id");
    assert_eq!(
        api.get(&format!("/api/v2/users/{new_uid}")).await.body["user"]["email"],
        "new@example.com"
    );

    let list = api.get(&format!("/api/v2/users/{uid}/events")).await;
    let events = list.body["events"].as_array().expect("events");
    assert_eq!(events.len(), 2);
    assert_eq!(
        (events[0]["type"].as_str(), events[0]["properties"].clone()),
        (Some("Order Completed"), json!({"total": 3}))
    );
    assert_eq!(list.body["meta"]["has_more"], false);
    let paged = api
        .get(&format!("/api/v2/users/{uid}/events?page[size]=1"))
        .await;
    assert_eq!(
        (
            paged.body["events"].as_array().map(Vec::len),
            paged.body["meta"]["has_more"].clone()
        ),
        (Some(1), json!(true))
    );
    assert_eq!(
        api.get(&format!("/api/v2/users/{uid}/events?filter[source]=other"))
            .await
            .body["events"],
        json!([])
    );
}
