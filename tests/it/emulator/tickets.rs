//! Tickets: created, listed, updated with audits, limited per ticket, closed; idempotency keys.

use serde_json::json;
use std::time::Duration;

use super::{EmulatorApi, error_code};

#[tokio::test]
async fn tickets_are_created_with_their_requester_and_listed_by_external_id() {
    let api = EmulatorApi::start().await;
    let r = api
        .post(
            "/api/v2/tickets",
            json!({"ticket": {"subject": "No comment"}}),
        )
        .await;
    assert_eq!(
        (r.status, error_code(&r.body, "base")),
        (422, Some("BlankValue"))
    );
    let body = json!({"ticket": {"subject": "Help", "comment": {"body": "It broke"}, "requester": {"name": "Rita", "email": "rita@example.com"}, "external_id": "T-1", "priority": "high", "tags": ["x"]}});
    let r = api.post("/api/v2/tickets.json", body.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let t = &r.body["ticket"];
    let tid = t["id"].as_u64().expect("id");
    assert_eq!(
        r.header("location"),
        Some(format!("/api/v2/tickets/{tid}.json").as_str())
    );
    assert_eq!(
        (
            t["description"].as_str(),
            t["status"].as_str(),
            t["priority"].as_str()
        ),
        (Some("It broke"), Some("new"), Some("high"))
    );
    let requester = t["requester_id"].as_u64().expect("requester");
    let u = api.get(&format!("/api/v2/users/{requester}")).await;
    assert_eq!(
        (
            u.body["user"]["email"].as_str(),
            u.body["user"]["name"].as_str()
        ),
        (Some("rita@example.com"), Some("Rita"))
    );
    // external_id is not unique: a second POST makes a second ticket, for the same requester.
    let r2 = api.post("/api/v2/tickets", body).await;
    assert_eq!(r2.status, 201);
    assert_ne!(r2.body["ticket"]["id"].as_u64(), Some(tid));
    assert_eq!(r2.body["ticket"]["requester_id"].as_u64(), Some(requester));
    let list = api.get("/api/v2/tickets?external_id=t-1").await;
    assert_eq!(list.body["tickets"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        api.get("/api/v2/tickets?external_id=T-2").await.body["count"],
        0
    );
    assert_eq!(
        api.get(&format!("/api/v2/tickets/{tid}")).await.body["ticket"]["subject"],
        "Help"
    );
    assert_eq!(api.get("/api/v2/tickets/999").await.status, 404);
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_creation_and_refuses_another_body() {
    let api = EmulatorApi::start().await;
    let body = r#"{"ticket":{"comment":{"body":"once"},"requester":{"email":"i@example.com"}}}"#;
    let a = api
        .raw(
            "POST",
            "/api/v2/tickets",
            Some(body),
            &[("Idempotency-Key", "msg-1")],
        )
        .await;
    assert_eq!(
        (a.status, a.header("x-idempotency-lookup")),
        (201, Some("miss"))
    );
    let b = api
        .raw(
            "POST",
            "/api/v2/tickets",
            Some(body),
            &[("Idempotency-Key", "msg-1")],
        )
        .await;
    assert_eq!(
        (b.status, b.header("x-idempotency-lookup")),
        (201, Some("hit"))
    );
    assert_eq!(a.body["ticket"]["id"], b.body["ticket"]["id"]);
    assert_eq!(api.emu.state()["tickets"].as_array().map(Vec::len), Some(1));
    let other =
        r#"{"ticket":{"comment":{"body":"different"},"requester":{"email":"i@example.com"}}}"#;
    let c = api
        .raw(
            "POST",
            "/api/v2/tickets",
            Some(other),
            &[("Idempotency-Key", "msg-1")],
        )
        .await;
    assert_eq!(
        (c.status, c.body["error"].as_str()),
        (400, Some("IdempotentRequestError"))
    );
    let d = api
        .raw(
            "POST",
            "/api/v2/tickets",
            Some(other),
            &[("Idempotency-Key", "msg-2")],
        )
        .await;
    assert_eq!(
        (d.status, d.header("x-idempotency-lookup")),
        (201, Some("miss"))
    );
}

#[tokio::test]
async fn ticket_updates_are_audited_limited_per_ticket_and_refused_once_closed() {
    let api = EmulatorApi::start().await;
    let r = api.post("/api/v2/tickets", json!({"ticket": {"comment": {"body": "first"}, "requester": {"email": "u@example.com"}, "tags": ["a"]}})).await;
    let tid = r.body["ticket"]["id"].as_u64().expect("id");
    let r = api.put(&format!("/api/v2/tickets/{tid}.json"), json!({"ticket": {"status": "open", "comment": {"body": "second", "public": false}, "additional_tags": ["b"]}})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        (
            r.body["ticket"]["status"].as_str(),
            r.body["ticket"]["tags"].clone()
        ),
        (Some("open"), json!(["a", "b"]))
    );
    let events = r.body["audit"]["events"].as_array().expect("audit events");
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "Comment" && e["body"] == "second" && e["public"] == false)
    );
    assert!(events.iter().any(|e| e["type"] == "Change"
        && e["field_name"] == "status"
        && e["previous_value"] == "new"));
    let comments = api.get(&format!("/api/v2/tickets/{tid}/comments")).await;
    assert_eq!(comments.body["count"], 2, "comments append");
    // 30 updates per ticket per window, then 429 with Retry-After (the create counted none).
    for _ in 1..30 {
        assert_eq!(
            api.put(
                &format!("/api/v2/tickets/{tid}"),
                json!({"ticket": {"priority": "low"}})
            )
            .await
            .status,
            200
        );
    }
    let limited = api
        .put(
            &format!("/api/v2/tickets/{tid}"),
            json!({"ticket": {"priority": "low"}}),
        )
        .await;
    assert_eq!(limited.status, 429);
    assert!(
        limited
            .text
            .contains("Rate limit for ticket updates exceeded")
    );
    assert!(
        limited
            .header("retry-after")
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|s| s > 0 && s <= 600)
    );
    api.emu.advance_clock(Duration::from_secs(600));
    // Closed tickets are immutable.
    assert_eq!(
        api.put(
            &format!("/api/v2/tickets/{tid}"),
            json!({"ticket": {"status": "closed"}})
        )
        .await
        .status,
        200
    );
    let r = api
        .put(
            &format!("/api/v2/tickets/{tid}"),
            json!({"ticket": {"comment": {"body": "again"}}}),
        )
        .await;
    assert_eq!(
        (
            r.status,
            r.body["details"]["status"][0]["description"].as_str()
        ),
        (422, Some("closed prevents ticket update"))
    );
    assert_eq!(
        api.put(
            "/api/v2/tickets/424242",
            json!({"ticket": {"status": "open"}})
        )
        .await
        .status,
        404
    );
}
