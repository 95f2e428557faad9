//! OAuth as Zendesk does it: client credentials, authorization codes with state and PKCE,
//! refresh-token rotation, expiry, scopes, `tokens/current`, and token answers lost, slow or
//! failing.

use clap::Parser;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use zdmap::emulator::{EmulatorOptions, OAuthClient, RuntimeKnobs};

use super::{AGENT, Cli, EmulatorApi, Reply, basic, urlencode};

const CLIENT_SECRET: &str = "cl13nt-s3cret-of-zdmap";
const REDIRECT: &str = "https://app.example/callback";
/// RFC 7636 appendix B: a verifier and its S256 challenge.
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
const INVALID_GRANT: &str = "The provided authorization grant is invalid, expired, revoked, does not match the redirection URI used in the authorization request, or was issued to another client.";

/// An emulator with a confidential client `zdmap` and a public client `mobile`.
fn oauth_options() -> EmulatorOptions {
    EmulatorOptions {
        knobs: RuntimeKnobs {
            oauth_clients: vec![
                OAuthClient::confidential("zdmap", CLIENT_SECRET),
                OAuthClient::public("mobile"),
            ],
            ..RuntimeKnobs::default()
        },
        ..Default::default()
    }
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

impl EmulatorApi {
    /// `POST /oauth/tokens` with a JSON body, no `Authorization`.
    async fn oauth_token(&self, body: Value) -> Reply {
        let sent = self
            .http
            .post(format!("{}/oauth/tokens", self.emu.url()))
            .json(&body)
            .send()
            .await
            .expect("token request answered");
        Reply::read(sent).await
    }

    /// `POST /oauth/tokens` with a form body.
    async fn oauth_token_form(&self, pairs: &[(&str, &str)]) -> Reply {
        let sent = self
            .http
            .post(format!("{}/oauth/tokens", self.emu.url()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(pairs))
            .send()
            .await
            .expect("token request answered");
        Reply::read(sent).await
    }

    /// `GET /oauth/authorizations/new` with `pairs` (response_type=code added), not following
    /// the redirect.
    async fn authorize(&self, pairs: &[(&str, &str)]) -> Reply {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let mut all = vec![("response_type", "code")];
        all.extend_from_slice(pairs);
        let url = format!("{}/oauth/authorizations/new?{}", self.emu.url(), form(&all));
        Reply::read(http.get(url).send().await.expect("answered")).await
    }

    /// Authorizes `client` (with PKCE when `challenge`) and gives the code of the redirect.
    async fn code(&self, client: &str, scope: &str, challenge: Option<&str>) -> String {
        let mut pairs = vec![
            ("client_id", client),
            ("redirect_uri", REDIRECT),
            ("scope", scope),
        ];
        if let Some(c) = challenge {
            pairs.extend([("code_challenge", c), ("code_challenge_method", "S256")]);
        }
        let r = self.authorize(&pairs).await;
        assert_eq!(r.status, 302, "{}", r.text);
        let location = r.header("location").expect("a Location");
        let code = location
            .strip_prefix(&format!("{REDIRECT}?code="))
            .expect("the code on the redirect URI");
        code.to_string()
    }

    /// An authorization code chain for `zdmap`: the token answer's JSON.
    async fn chain(&self, scope: &str) -> Value {
        let code = self.code("zdmap", scope, None).await;
        let r = self
            .oauth_token(
                json!({"grant_type": "authorization_code", "client_id": "zdmap",
                "client_secret": CLIENT_SECRET, "code": code, "redirect_uri": REDIRECT}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.body
    }

    /// `GET path` with `Authorization: Bearer token`.
    async fn get_as(&mut self, token: &str, path: &str) -> Reply {
        self.auth = Some(format!("Bearer {token}"));
        self.get(path).await
    }

    /// Refreshes with `refresh_token` (a form body, as most OAuth libraries send it).
    async fn refresh(&self, refresh_token: &str) -> Reply {
        self.oauth_token_form(&[
            ("grant_type", "refresh_token"),
            ("client_id", "zdmap"),
            ("client_secret", CLIENT_SECRET),
            ("refresh_token", refresh_token),
        ])
        .await
    }
}

fn field(body: &Value, key: &str) -> String {
    body[key].as_str().expect(key).to_string()
}

#[tokio::test]
async fn client_credentials_are_granted_to_the_clients_of_the_flags_and_knobs() {
    let cli = Cli::try_parse_from([
        "zdmap",
        "--oauth-client",
        "zdmap:cli-s3cret",
        "--oauth-client",
        "mobile",
        "--access-token-lifetime",
        "60",
        "--refresh-token-lifetime",
        "600",
    ])
    .expect("flags parse");
    assert!(!format!("{:?}", cli.args).contains("cli-s3cret"));
    let opts = EmulatorOptions::from(cli.args);
    assert_eq!(
        opts.knobs.oauth_clients,
        [
            OAuthClient::confidential("zdmap", "cli-s3cret"),
            OAuthClient::public("mobile")
        ]
    );
    assert_eq!(
        (
            opts.knobs.access_token_lifetime_secs,
            opts.knobs.refresh_token_lifetime_secs
        ),
        (60, 600)
    );
    let defaults = RuntimeKnobs::default();
    assert_eq!(
        (
            defaults.access_token_lifetime_secs,
            defaults.refresh_token_lifetime_secs
        ),
        (1800, 2_592_000)
    );

    let mut api = EmulatorApi::with(oauth_options()).await;
    // A registered client closes the API to credentials nobody issued or configured.
    assert_eq!(api.get("/api/v2/users").await.status, 401, "Basic");
    assert_eq!(api.get_as("made-up", "/api/v2/users").await.status, 401);

    let r = api
        .oauth_token(
            json!({"grant_type": "client_credentials", "client_id": "zdmap",
            "client_secret": CLIENT_SECRET}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        (
            &r.body["token_type"],
            &r.body["scope"],
            &r.body["expires_in"]
        ),
        (&json!("bearer"), &json!("read"), &json!(1800))
    );
    assert!(r.body.get("refresh_token").is_none());
    let token = field(&r.body, "access_token");
    assert!(token.len() >= 32 && token.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(api.get_as(&token, "/api/v2/users").await.status, 200);

    // A form body works the same; scopes as asked.
    let r = api
        .oauth_token_form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "zdmap"),
            ("client_secret", CLIENT_SECRET),
            ("scope", "read write"),
            ("expires_in", "300"),
        ])
        .await;
    assert_eq!(
        (
            r.status,
            r.body["scope"].as_str(),
            r.body["expires_in"].as_u64()
        ),
        (201, Some("read write"), Some(300)),
        "{}",
        r.text
    );
    let writer = field(&r.body, "access_token");
    api.auth = Some(format!("Bearer {writer}"));
    let created = api
        .post(
            "/api/v2/users/create_or_update",
            json!({"user": {"email": "cc@example.com", "name": "CC"}}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);

    // Refusals in the OAuth envelope.
    let wrong = api
        .oauth_token(
            json!({"grant_type": "client_credentials", "client_id": "zdmap",
            "client_secret": "wrong"}),
        )
        .await;
    assert_eq!(
        (wrong.status, wrong.body),
        (
            401,
            json!({"error": "invalid_client", "error_description": "Client authentication failed due to unknown client, no client authentication included, or unsupported authentication method."})
        )
    );
    let unknown = api
        .oauth_token(
            json!({"grant_type": "client_credentials", "client_id": "nobody",
            "client_secret": CLIENT_SECRET}),
        )
        .await;
    assert_eq!(unknown.status, 401);
    for body in [
        json!({"client_id": "zdmap"}),
        json!({"grant_type": "password", "client_id": "zdmap"}),
    ] {
        let r = api.oauth_token(body).await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (400, Some("unsupported_grant_type"))
        );
    }
    let missing = api
        .oauth_token(json!({"grant_type": "refresh_token", "client_id": "zdmap"}))
        .await;
    assert_eq!(
        (missing.status, missing.body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    assert!(missing.body["error_description"].is_string());

    // The token endpoint spends none of the API budget (counted from a new window).
    api.config(json!({"rpm": 2, "advance_clock_secs": 60}))
        .await;
    for _ in 0..4 {
        let r = api
            .oauth_token(
                json!({"grant_type": "client_credentials", "client_id": "zdmap",
                "client_secret": CLIENT_SECRET}),
            )
            .await;
        assert_eq!(r.status, 201);
        assert!(r.header("x-rate-limit-remaining").is_none());
    }
    let users = api.get_as(&token, "/api/v2/users").await;
    assert_eq!(
        (users.status, users.header("x-rate-limit-remaining")),
        (200, Some("1"))
    );

    // The knobs show the secret redacted, and a change that leaves the clients out keeps them.
    let knobs = api.config(json!({"rpm": null})).await;
    assert_eq!(
        knobs["oauth_clients"],
        json!([{"id": "zdmap", "secret": "[redacted]"}, {"id": "mobile", "secret": null}])
    );
    let again = api
        .oauth_token(
            json!({"grant_type": "client_credentials", "client_id": "zdmap",
            "client_secret": CLIENT_SECRET}),
        )
        .await;
    assert_eq!(again.status, 201, "{}", again.text);

    let stats = api.emu.oauth_stats();
    assert_eq!(stats["token_requests"]["client_credentials"], 9);
    assert_eq!(
        stats["refused"],
        json!({"invalid_client": 2, "invalid_grant": 0, "unsupported_grant_type": 2, "invalid_request": 1})
    );
    assert_eq!(stats["live_access_tokens"], 7);
    assert_eq!(stats["live_refresh_tokens"], 0);
}

#[tokio::test]
async fn authorization_codes_are_granted_with_state_and_pkce() {
    let api = EmulatorApi::with(oauth_options()).await;
    let r = api
        .authorize(&[
            ("client_id", "zdmap"),
            ("redirect_uri", REDIRECT),
            ("scope", "read write"),
            ("state", "st-42"),
        ])
        .await;
    assert_eq!(r.status, 302, "{}", r.text);
    let location = r.header("location").expect("Location").to_string();
    let rest = location
        .strip_prefix(&format!("{REDIRECT}?code="))
        .expect("the redirect URI with the code");
    let (code, state) = rest.split_once("&state=").expect("the state echoed");
    assert_eq!(state, "st-42");
    assert!(code.len() >= 32 && code.bytes().all(|b| b.is_ascii_alphanumeric()));
    // A redirect URI with a query keeps it; no state, none echoed.
    let r = api
        .authorize(&[
            ("client_id", "zdmap"),
            ("redirect_uri", "https://app.example/cb?tenant=7"),
        ])
        .await;
    let other = r.header("location").expect("Location");
    assert!(other.starts_with("https://app.example/cb?tenant=7&code="));
    assert!(!other.contains("state="));

    let exchange = json!({"grant_type": "authorization_code", "client_id": "zdmap",
        "client_secret": CLIENT_SECRET, "code": code, "redirect_uri": REDIRECT});
    let r = api.oauth_token(exchange.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        (
            &r.body["token_type"],
            &r.body["scope"],
            &r.body["expires_in"],
            &r.body["refresh_token_expires_in"]
        ),
        (
            &json!("bearer"),
            &json!("read write"),
            &json!(1800),
            &json!(2_592_000)
        )
    );
    assert!(field(&r.body, "refresh_token").len() >= 32);
    let mut api = api;
    let token = field(&r.body, "access_token");
    assert_eq!(api.get_as(&token, "/api/v2/users").await.status, 200);
    // A code is good once.
    let reused = api.oauth_token(exchange).await;
    assert_eq!(
        (reused.status, reused.body),
        (
            400,
            json!({"error": "invalid_grant", "error_description": INVALID_GRANT})
        )
    );

    // PKCE for the public client: a verifier that does not match is invalid_grant.
    let code = api.code("mobile", "read", Some(CHALLENGE)).await;
    let wrong = api
        .oauth_token(json!({"grant_type": "authorization_code", "client_id": "mobile",
            "code": code, "redirect_uri": REDIRECT, "code_verifier": "not-the-right-verifier-at-all-0123456789"}))
        .await;
    assert_eq!(
        (wrong.status, wrong.body),
        (
            400,
            json!({"error": "invalid_grant", "error_description": INVALID_GRANT})
        )
    );
    let code = api.code("mobile", "read", Some(CHALLENGE)).await;
    let right = api
        .oauth_token_form(&[
            ("grant_type", "authorization_code"),
            ("client_id", "mobile"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ])
        .await;
    assert_eq!(right.status, 201, "{}", right.text);
    assert_eq!(right.body["scope"], "read");
    // Another redirect URI than the authorization's is invalid_grant too.
    let code = api.code("zdmap", "read", None).await;
    let elsewhere = api
        .oauth_token(json!({"grant_type": "authorization_code", "client_id": "zdmap",
            "client_secret": CLIENT_SECRET, "code": code, "redirect_uri": "https://evil.example/cb"}))
        .await;
    assert_eq!(
        (elsewhere.status, elsewhere.body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    // A code older than 120 s on the emulator's clock.
    let code = api.code("zdmap", "read", None).await;
    api.emu.advance_clock(Duration::from_secs(121));
    let stale = api
        .oauth_token(
            json!({"grant_type": "authorization_code", "client_id": "zdmap",
            "client_secret": CLIENT_SECRET, "code": code, "redirect_uri": REDIRECT}),
        )
        .await;
    assert_eq!(stale.body["error"], "invalid_grant");

    // Authorizations Zendesk would not show anyone.
    for pairs in [
        vec![("client_id", "nobody"), ("redirect_uri", REDIRECT)],
        vec![("client_id", "zdmap")],
        vec![("client_id", "mobile"), ("redirect_uri", REDIRECT)],
        vec![
            ("client_id", "mobile"),
            ("redirect_uri", REDIRECT),
            ("code_challenge", VERIFIER),
            ("code_challenge_method", "plain"),
        ],
    ] {
        let r = api.authorize(&pairs).await;
        assert_eq!(r.status, 400, "{pairs:?}: {}", r.text);
        assert!(r.body["error"].is_string(), "{}", r.text);
    }
    let token_response = api
        .authorize(&[("response_type", "token"), ("client_id", "zdmap")])
        .await;
    assert_eq!(token_response.status, 400);

    let stats = api.emu.oauth_stats();
    assert_eq!(stats["token_requests"]["authorization_code"], 6);
    assert_eq!(stats["refused"]["invalid_grant"], 4);
}

#[tokio::test]
async fn a_refresh_rotates_the_chain_and_tokens_expire() {
    let mut api = EmulatorApi::with(oauth_options()).await;
    let first = api.chain("read write").await;
    let (a1, r1) = (
        field(&first, "access_token"),
        field(&first, "refresh_token"),
    );
    assert_eq!(api.get_as(&a1, "/api/v2/users").await.status, 200);

    let second = api.refresh(&r1).await;
    assert_eq!(second.status, 201, "{}", second.text);
    assert_eq!(
        second.body["scope"], "read write",
        "the chain keeps its scope"
    );
    let (a2, r2) = (
        field(&second.body, "access_token"),
        field(&second.body, "refresh_token"),
    );
    assert!(a2 != a1 && r2 != r1);
    let old = api.get_as(&a1, "/api/v2/users").await;
    assert_eq!(
        (old.status, old.body),
        (401, json!({"error": "Couldn't authenticate you"})),
        "the replaced access token"
    );
    let reused = api.refresh(&r1).await;
    assert_eq!(
        (reused.status, reused.body),
        (
            400,
            json!({"error": "invalid_grant", "error_description": INVALID_GRANT})
        ),
        "the spent refresh token"
    );
    assert_eq!(api.get_as(&a2, "/api/v2/users").await.status, 200);
    let third = api.refresh(&r2).await;
    assert_eq!(third.status, 201, "{}", third.text);
    let (a3, r3) = (
        field(&third.body, "access_token"),
        field(&third.body, "refresh_token"),
    );

    // Expiry on the emulator's clock: the access token goes, the refresh token stays.
    api.emu.advance_clock(Duration::from_secs(1801));
    let expired = api.get_as(&a3, "/api/v2/users").await;
    assert_eq!(
        (expired.status, expired.body),
        (401, json!({"error": "Couldn't authenticate you"}))
    );
    let fourth = api.refresh(&r3).await;
    assert_eq!(fourth.status, 201, "{}", fourth.text);
    let a4 = field(&fourth.body, "access_token");
    assert_eq!(api.get_as(&a4, "/api/v2/users").await.status, 200);

    // A lifetime asked for in the token request.
    let short = api
        .oauth_token(
            json!({"grant_type": "client_credentials", "client_id": "zdmap",
            "client_secret": CLIENT_SECRET, "expires_in": 60}),
        )
        .await;
    assert_eq!(short.body["expires_in"], 60);
    let short = field(&short.body, "access_token");
    assert_eq!(api.get_as(&short, "/api/v2/users").await.status, 200);
    api.emu.advance_clock(Duration::from_secs(61));
    assert_eq!(api.get_as(&short, "/api/v2/users").await.status, 401);

    let stats = api.emu.oauth_stats();
    assert_eq!(stats["token_requests"]["refresh_token"], 4);
    assert_eq!(stats["refused"]["invalid_grant"], 1);
    assert_eq!(stats["expired_token_rejections"], 2);
    assert_eq!(stats["revoked_token_rejections"], 1);
    assert_eq!(
        (&stats["live_access_tokens"], &stats["live_refresh_tokens"]),
        (&json!(1), &json!(1))
    );

    // A reset forgets the tokens and counts but keeps the clients.
    let reset = api
        .http
        .post(format!("{}/__emulator/reset", api.emu.url()))
        .send()
        .await
        .expect("reset");
    assert_eq!(reset.status().as_u16(), 200);
    assert_eq!(api.get_as(&a4, "/api/v2/users").await.status, 401);
    let stats: Value = api
        .http
        .get(format!("{}/__emulator/oauth", api.emu.url()))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("JSON");
    assert_eq!(stats["token_requests"]["refresh_token"], 0);
    assert_eq!(stats["live_access_tokens"], 0);
    assert_eq!(api.chain("read").await["token_type"], "bearer");
}

#[tokio::test]
async fn scopes_limit_what_a_token_grants_and_tokens_current_describes_it() {
    let mut api = EmulatorApi::with(oauth_options()).await;
    let token = |scope: &'static str| {
        json!({"grant_type": "client_credentials", "client_id": "zdmap",
            "client_secret": CLIENT_SECRET, "scope": scope})
    };
    let reader = field(&api.oauth_token(token("read")).await.body, "access_token");
    assert_eq!(api.get_as(&reader, "/api/v2/users").await.status, 200);
    let write = api
        .post(
            "/api/v2/users/create_or_update",
            json!({"user": {"email": "ro@example.com", "name": "RO"}}),
        )
        .await;
    assert_eq!(
        (write.status, write.body),
        (
            403,
            json!({"error": "Forbidden", "description": "You do not have access to this page. Please contact the account owner of this help desk for further help."})
        )
    );
    assert_eq!(api.emu.state()["users"], json!([]), "nothing written");

    // Granular scopes: one resource, one direction.
    let tickets = field(
        &api.oauth_token(token("tickets:read")).await.body,
        "access_token",
    );
    assert_eq!(api.get_as(&tickets, "/api/v2/tickets").await.status, 200);
    assert_eq!(api.get_as(&tickets, "/api/v2/users").await.status, 403);
    assert_eq!(api.get_as(&tickets, "/api/v2/users/me").await.status, 200);
    let users = field(
        &api.oauth_token(token("users:write")).await.body,
        "access_token",
    );
    api.auth = Some(format!("Bearer {users}"));
    let upsert = api
        .post(
            "/api/v2/users/create_or_update",
            json!({"user": {"email": "w@example.com", "name": "W"}}),
        )
        .await;
    assert_eq!(upsert.status, 201, "{}", upsert.text);
    assert_eq!(api.get("/api/v2/users").await.status, 403);
    // A scope Zendesk does not know: the token is issued and grants nothing.
    let odd = api.oauth_token(token("impersonate")).await;
    assert_eq!(odd.status, 201);
    let odd = field(&odd.body, "access_token");
    assert_eq!(api.get_as(&odd, "/api/v2/users").await.status, 403);
    assert_eq!(api.emu.oauth_stats()["scope_rejections"], 4);

    // tokens/current: the token by its first characters.
    let current = api
        .get_as(&reader, "/api/v2/oauth/tokens/current.json")
        .await;
    assert_eq!(current.status, 200, "{}", current.text);
    let t = &current.body["token"];
    assert_eq!(t["token"].as_str(), Some(&reader[..10]));
    assert!(!current.text.contains(&reader), "never the whole token");
    assert_eq!((&t["scopes"], &t["user_id"]), (&json!(["read"]), &json!(1)));
    let id = t["id"].as_u64().expect("an id");
    assert!(t["client_id"].as_u64().is_some(), "{t}");
    for key in ["created_at", "expires_at", "used_at"] {
        let at = t[key].as_str().expect(key);
        assert!(at.ends_with('Z') && at.len() == 20, "{key}: {at}");
    }
    assert!(
        t["url"]
            .as_str()
            .is_some_and(|u| u.ends_with(&format!("/api/v2/oauth/tokens/{id}.json"))),
        "{t}"
    );
    let again = api.get_as(&odd, "/api/v2/oauth/tokens/current").await;
    assert_eq!(
        (again.status, &again.body["token"]["scopes"]),
        (200, &json!(["impersonate"]))
    );
    assert_eq!(again.body["token"]["client_id"], t["client_id"]);

    // A bearer the emulator did not issue (open policy) reads and writes, and never expires;
    // Basic auth has no token.
    let mut open = EmulatorApi::start().await;
    let r = open
        .get_as("static-bearer-token-xyz", "/api/v2/oauth/tokens/current")
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        (
            &r.body["token"]["scopes"],
            &r.body["token"]["expires_at"],
            &r.body["token"]["token"]
        ),
        (
            &json!(["read", "write"]),
            &Value::Null,
            &json!("static-bea")
        )
    );
    open.auth = Some(basic(AGENT));
    let basic_auth = open.get("/api/v2/oauth/tokens/current").await;
    assert_eq!(
        (basic_auth.status, basic_auth.body["error"].as_str()),
        (404, Some("RecordNotFound"))
    );
}

#[tokio::test]
async fn token_answers_are_lost_slow_or_failing_as_configured() {
    let mut api = EmulatorApi::with(oauth_options()).await;
    let first = api.chain("read").await;
    let (a1, r1) = (
        field(&first, "access_token"),
        field(&first, "refresh_token"),
    );

    // The refresh is applied, its answer lost: the chain moved on without the client.
    api.config(json!({"oauth_lost_answers": 1, "lost_answer": "500"}))
        .await;
    let lost = api.refresh(&r1).await;
    assert_eq!(lost.status, 500, "{}", lost.text);
    assert!(!lost.text.contains("access_token"));
    let log = api.emu.requests();
    let entry = log.last().expect("logged");
    assert_eq!(
        (entry["status"].as_u64(), entry["lost_answer"].as_str()),
        (Some(201), Some("500"))
    );
    assert_eq!(api.refresh(&r1).await.body["error"], "invalid_grant");
    assert_eq!(api.get_as(&a1, "/api/v2/users").await.status, 401);
    assert_eq!(
        api.emu.oauth_stats()["live_refresh_tokens"],
        1,
        "the lost one"
    );
    assert_eq!(
        api.config(json!({})).await["oauth_lost_answers"],
        0,
        "used up"
    );

    // Dropped: no answer at all.
    let second = api.chain("read").await;
    api.config(json!({"oauth_lost_answers": 1, "lost_answer": "drop"}))
        .await;
    let sent = api
        .http
        .post(format!("{}/oauth/tokens", api.emu.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("grant_type", "refresh_token"),
            ("client_id", "zdmap"),
            ("refresh_token", &field(&second, "refresh_token")),
        ]))
        .send()
        .await;
    assert!(sent.is_err(), "no answer: {sent:?}");
    assert_eq!(
        api.refresh(&field(&second, "refresh_token")).await.body["error"],
        "invalid_grant"
    );

    // A token request that fails: a forced 503, and the next one answers.
    api.config(json!({"add_forced_fault": {"status": 503, "path": "/oauth/tokens"}}))
        .await;
    let cc = json!({"grant_type": "client_credentials", "client_id": "zdmap",
        "client_secret": CLIENT_SECRET});
    let failed = api.oauth_token(cc.clone()).await;
    assert_eq!(
        (failed.status, failed.header("retry-after")),
        (503, Some("1"))
    );
    assert_eq!(api.oauth_token(cc.clone()).await.status, 201);

    // A slow token request; the API is not slowed.
    api.config(json!({"oauth_latency_ms": 300})).await;
    let started = Instant::now();
    assert_eq!(api.oauth_token(cc).await.status, 201);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let started = Instant::now();
    let token = field(&api.chain("read").await, "access_token");
    assert!(started.elapsed() >= Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(api.get_as(&token, "/api/v2/users").await.status, 200);
    assert!(started.elapsed() < Duration::from_millis(300));
}

#[tokio::test]
async fn the_request_log_holds_no_oauth_secret() {
    let mut api = EmulatorApi::with(oauth_options()).await;
    let mut secrets = vec![CLIENT_SECRET.to_string(), VERIFIER.to_string()];
    let code = api.code("zdmap", "read write", None).await;
    secrets.push(code.clone());
    let chain = api
        .oauth_token_form(&[
            ("grant_type", "authorization_code"),
            ("client_id", "zdmap"),
            ("client_secret", CLIENT_SECRET),
            ("code", &code),
            ("redirect_uri", REDIRECT),
        ])
        .await;
    assert_eq!(chain.status, 201);
    let refreshed = api.refresh(&field(&chain.body, "refresh_token")).await;
    let pkce_code = api.code("mobile", "read", Some(CHALLENGE)).await;
    secrets.push(pkce_code.clone());
    let pkce = api
        .oauth_token(
            json!({"grant_type": "authorization_code", "client_id": "mobile",
            "code": pkce_code, "redirect_uri": REDIRECT, "code_verifier": VERIFIER}),
        )
        .await;
    let cc = api
        .oauth_token(
            json!({"grant_type": "client_credentials", "client_id": "zdmap",
            "client_secret": CLIENT_SECRET}),
        )
        .await;
    for answer in [&chain, &refreshed, &pkce, &cc] {
        assert_eq!(answer.status, 201, "{}", answer.text);
        for key in ["access_token", "refresh_token"] {
            if let Some(t) = answer.body[key].as_str() {
                secrets.push(t.to_string());
            }
        }
    }
    let token = field(&refreshed.body, "access_token");
    assert_eq!(api.get_as(&token, "/api/v2/users").await.status, 200);
    assert_eq!(
        api.get_as(&token, "/api/v2/oauth/tokens/current")
            .await
            .status,
        200
    );
    // Secrets sent where they do not belong are not logged either.
    let stray = format!(
        "/oauth/tokens?client_secret={CLIENT_SECRET}&refresh_token={}",
        field(&refreshed.body, "refresh_token")
    );
    api.auth = None;
    api.raw("POST", &stray, Some("not a token request"), &[])
        .await;

    let log = serde_json::to_string(&api.emu.requests()).expect("the log as JSON");
    assert_eq!(secrets.len(), 11);
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "{secret} in the log: {log}");
    }
    let entries = api.emu.requests();
    let exchange = entries
        .iter()
        .find(|e| e["body"]["grant_type"] == "authorization_code")
        .expect("the exchange is logged");
    assert_eq!(
        (
            &exchange["body"]["client_secret"],
            &exchange["body"]["code"],
            &exchange["body"]["client_id"]
        ),
        (&json!("[redacted]"), &json!("[redacted]"), &json!("zdmap"))
    );
    // Nor in the knobs, nor the stats.
    let config: Value = api
        .http
        .get(format!("{}/__emulator/config", api.emu.url()))
        .send()
        .await
        .expect("config")
        .json()
        .await
        .expect("JSON");
    let shown = format!("{config} {} {:?}", api.emu.oauth_stats(), oauth_options());
    assert!(!shown.contains(CLIENT_SECRET), "{shown}");
}
