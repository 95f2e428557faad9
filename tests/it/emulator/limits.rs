//! Rate limits: the account's request budget and the per-user limit of create or update.

use serde_json::json;
use std::time::Duration;
use zdmap::emulator::EmulatorOptions;

use super::EmulatorApi;

#[tokio::test]
async fn the_account_budget_answers_429_with_rate_limit_headers() {
    let api = EmulatorApi::with(EmulatorOptions {
        rpm: Some(3),
        ..Default::default()
    })
    .await;
    for remaining in ["2", "1", "0"] {
        let r = api.get("/api/v2/users").await;
        assert_eq!(
            (
                r.status,
                r.header("x-rate-limit"),
                r.header("x-rate-limit-remaining")
            ),
            (200, Some("3"), Some(remaining))
        );
        assert_eq!(
            (r.header("ratelimit-limit"), r.header("ratelimit-remaining")),
            (Some("3"), Some(remaining))
        );
        assert!(
            r.header("ratelimit-reset")
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|s| (1..=60).contains(&s))
        );
    }
    let r = api.get("/api/v2/users").await;
    assert_eq!(
        (r.status, r.header("x-rate-limit-remaining")),
        (429, Some("0"))
    );
    assert!(
        r.header("retry-after")
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|s| (1..=60).contains(&s))
    );
    // The inspection routes are never limited.
    let state = api
        .http
        .get(format!("{}/__emulator/state", api.emu.url()))
        .send()
        .await
        .expect("state");
    assert_eq!(state.status().as_u16(), 200);
    api.emu.advance_clock(Duration::from_secs(60));
    assert_eq!(api.get("/api/v2/users").await.status, 200);
    // Unlimited by default: nominal headers with the whole budget left, never 429.
    let unlimited = EmulatorApi::start().await;
    let r = unlimited.get("/api/v2/users").await;
    assert_eq!(
        (r.header("x-rate-limit"), r.header("x-rate-limit-remaining")),
        (Some("700"), Some("700"))
    );
}

#[tokio::test]
async fn create_or_update_is_limited_per_user() {
    let api = EmulatorApi::start().await;
    let body = json!({"user": {"email": "hot@example.com", "name": "Hot"}});
    for remaining in (0..5).rev() {
        let r = api
            .post("/api/v2/users/create_or_update", body.clone())
            .await;
        assert!(r.status == 200 || r.status == 201);
        let h = r
            .header("zendesk-ratelimit-create-update-user")
            .expect("endpoint header");
        assert!(
            h.starts_with(&format!("total=5; remaining={remaining}; resets=")),
            "{h}"
        );
    }
    let r = api
        .post("/api/v2/users/create_or_update", body.clone())
        .await;
    assert_eq!(
        (r.status, r.body["errors"][0]["code"].as_str()),
        (429, Some("TooManyRequests"))
    );
    assert!(r.header("retry-after").is_some());
    // Another user is not limited.
    assert_eq!(
        api.post(
            "/api/v2/users/create_or_update",
            json!({"user": {"email": "cold@example.com", "name": "C"}})
        )
        .await
        .status,
        201
    );
    api.emu.advance_clock(Duration::from_secs(61));
    assert_eq!(
        api.post("/api/v2/users/create_or_update", body)
            .await
            .status,
        200
    );
}
