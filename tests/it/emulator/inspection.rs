//! The emulator's own routes: its state and request log, a reset, a seed.

use serde_json::{Value, json};
use zdmap::emulator::EmulatorOptions;

use super::EmulatorApi;

#[tokio::test]
async fn the_state_and_request_log_are_inspected_reset_and_seeded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seed_path = dir.path().join("seed.json");
    let seed = json!({
        "user_fields": [{"key": "plan", "type": "text", "title": "Plan"}],
        "organization_fields": [{"key": "tier", "type": "text", "title": "Tier"}],
        "organizations": [{"id": 555, "name": "Seeded Org", "external_id": "SO-1", "organization_fields": {"tier": "gold"}}],
        "users": [{"id": 777, "name": "Seeded", "email": "seed@example.com", "external_id": "SU-1", "organization_id": 555, "user_fields": {"plan": "pro"}}],
        "memberships": [{"user_id": 777, "organization_id": 555}],
        "tickets": [{"requester_id": 777, "subject": "Seeded", "comment": {"body": "hello"}}]
    });
    std::fs::write(&seed_path, seed.to_string()).expect("write seed");
    let api = EmulatorApi::with(EmulatorOptions {
        seed_state: Some(seed_path),
        ..Default::default()
    })
    .await;
    let state = api.emu.state();
    for key in [
        "users",
        "organizations",
        "memberships",
        "tickets",
        "events",
        "user_fields",
        "organization_fields",
    ] {
        assert!(state[key].is_array(), "{key}");
    }
    assert_eq!(state["users"][0]["id"], 777);
    assert_eq!(state["users"][0]["user_fields"], json!({"plan": "pro"}));
    assert_eq!(
        state["users"][0]["identities"][0]["value"],
        "seed@example.com"
    );
    assert_eq!(
        state["organizations"][0]["organization_fields"],
        json!({"tier": "gold"})
    );
    assert_eq!(state["memberships"].as_array().map(Vec::len), Some(1));
    assert_eq!(state["tickets"][0]["comments"][0]["body"], "hello");

    // New ids never collide with seeded ones.
    let uid = api.user("new@example.com", "New").await;
    assert_ne!(uid, 777);
    let http_state: Value = api
        .http
        .get(format!("{}/__emulator/state", api.emu.url()))
        .send()
        .await
        .expect("state")
        .json()
        .await
        .expect("json");
    assert_eq!(http_state, api.emu.state());
    assert_eq!(http_state["users"].as_array().map(Vec::len), Some(2));

    let log: Value = api
        .http
        .get(format!("{}/__emulator/requests", api.emu.url()))
        .send()
        .await
        .expect("log")
        .json()
        .await
        .expect("json");
    assert_eq!(Value::Array(api.emu.requests()), log);
    let entry = &log[0];
    assert_eq!(
        (
            entry["method"].as_str(),
            entry["path"].as_str(),
            entry["status"].as_u64()
        ),
        (
            Some("POST"),
            Some("/api/v2/users/create_or_update"),
            Some(201)
        )
    );
    assert_eq!(entry["body"]["user"]["email"], "new@example.com");
    assert_eq!(entry["headers"]["authorization"], "Basic [redacted]");
    api.get("/api/v2/users/search?query=x").await;
    assert_eq!(api.emu.requests()[1]["query"], "query=x");

    // Reset: back to the seed, log emptied.
    let r = api
        .http
        .post(format!("{}/__emulator/reset", api.emu.url()))
        .send()
        .await
        .expect("reset");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(api.emu.state()["users"].as_array().map(Vec::len), Some(1));
    assert!(api.emu.requests().is_empty());
    // Seeding over HTTP adds to the state.
    let r = api
        .http
        .post(format!("{}/__emulator/seed", api.emu.url()))
        .json(&json!({"organizations": [{"name": "Other"}]}))
        .send()
        .await
        .expect("seed");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        api.emu.state()["organizations"].as_array().map(Vec::len),
        Some(2)
    );
    let bad = api
        .http
        .post(format!("{}/__emulator/seed", api.emu.url()))
        .json(&json!({"usres": []}))
        .send()
        .await
        .expect("seed");
    assert_eq!(bad.status().as_u16(), 400);
}
