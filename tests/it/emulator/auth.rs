//! Authentication as Zendesk does it: API tokens, bearer tokens, anonymous reads.

use serde_json::{Value, json};
use zdmap::emulator::{EmulatorOptions, Secret};

use super::{AGENT, EmulatorApi, basic};

#[tokio::test]
async fn basic_and_bearer_auth_are_checked_as_zendesk_checks_them() {
    let mut api = EmulatorApi::start().await;
    assert_eq!(
        api.get("/api/v2/users").await.status,
        200,
        "email/token Basic"
    );
    api.auth = Some("Bearer any-oauth-token".into());
    assert_eq!(api.get("/api/v2/users").await.status, 200, "Bearer");
    for bad in [
        basic("agent@example.com:password"),
        basic("agent/token:x"),
        "Token abc".into(),
        "Basic %%%".into(),
    ] {
        api.auth = Some(bad);
        let r = api.get("/api/v2/users").await;
        assert_eq!(
            (r.status, r.body.clone()),
            (401, json!({"error": "Couldn't authenticate you"}))
        );
    }
    api.auth = None;
    assert_eq!(api.get("/api/v2/users").await.status, 401);
    let me = api.get("/api/v2/users/me.json").await;
    assert_eq!(
        (
            me.status,
            me.body["user"]["name"].as_str(),
            me.body["user"]["id"].clone()
        ),
        (200, Some("Anonymous user"), Value::Null)
    );
    api.auth = Some(basic(AGENT));
    assert_eq!(
        api.get("/api/v2/users/me").await.body["user"]["email"],
        "agent@example.com"
    );

    // Restricted to configured tokens.
    let opts = EmulatorOptions {
        api_token: Some(Secret::new("right-token")),
        oauth_token: Some(Secret::new("right-oauth")),
        ..Default::default()
    };
    let mut restricted = EmulatorApi::with(opts).await;
    restricted.auth = Some(basic("a@b.co/token:right-token"));
    assert_eq!(restricted.get("/api/v2/users").await.status, 200);
    restricted.auth = Some("Bearer right-oauth".into());
    assert_eq!(restricted.get("/api/v2/users").await.status, 200);
    restricted.auth = Some(basic("a@b.co/token:wrong-token"));
    assert_eq!(restricted.get("/api/v2/users").await.status, 401);
    restricted.auth = Some("Bearer wrong-oauth".into());
    assert_eq!(restricted.get("/api/v2/users").await.status, 401);
    // Nothing secret in the request log.
    let log = serde_json::to_string(&restricted.emu.requests()).expect("log");
    assert!(
        !log.contains("right-token")
            && !log.contains("right-oauth")
            && !log.contains("wrong-oauth")
    );
    assert!(!log.contains(&basic("a@b.co/token:right-token")["Basic ".len()..]));
    assert_eq!(
        restricted.emu.requests()[1]["headers"]["authorization"],
        "Bearer [redacted]"
    );
}
