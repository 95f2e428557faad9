//! The emulator driven over HTTP, one section per numbered item of the emulator issue.
//! Each test starts its own emulator in-process on port 0.

use crate::support::oas;

use std::time::{Duration, Instant};

use base64::Engine;
use clap::Parser;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use zdmap::emulator::{
    Emulator, EmulatorArgs, EmulatorOptions, ForcedFault, LostAnswer, OAuthClient, RuntimeKnobs,
    Secret,
};

const AGENT: &str = "agent@example.com/token:s3cr3t-token";

fn basic(creds: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(creds)
    )
}

/// An emulator plus an HTTP client that authenticates as an agent.
struct Z {
    emu: Emulator,
    http: reqwest::Client,
    auth: Option<String>,
}

struct Resp {
    status: u16,
    headers: HeaderMap,
    body: Value,
    text: String,
}

impl Resp {
    async fn read(resp: reqwest::Response) -> Resp {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            body,
            text,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Z {
    async fn start() -> Z {
        Z::with(EmulatorOptions::default()).await
    }

    async fn with(opts: EmulatorOptions) -> Z {
        let emu = Emulator::start(opts).await.expect("emulator starts");
        Z {
            emu,
            http: reqwest::Client::new(),
            auth: Some(basic(AGENT)),
        }
    }

    async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.emu.url()));
        if let Some(a) = &self.auth {
            rb = rb.header("authorization", a);
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        Resp::read(rb.send().await.expect("request is answered")).await
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let text = body.map(|b| b.to_string());
        self.raw(method, path, text.as_deref(), &[]).await
    }

    async fn get(&self, path: &str) -> Resp {
        self.call("GET", path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Resp {
        self.call("POST", path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Value) -> Resp {
        self.call("PUT", path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> Resp {
        self.call("DELETE", path, None).await
    }

    /// Creates a user through create_or_update and returns its id.
    async fn user(&self, email: &str, name: &str) -> u64 {
        let r = self
            .post(
                "/api/v2/users/create_or_update",
                json!({"user": {"email": email, "name": name}}),
            )
            .await;
        assert!(r.status == 201 || r.status == 200, "{}", r.text);
        r.body["user"]["id"].as_u64().expect("user id")
    }

    /// Creates a ticket of `requester` with the comment "opened" and returns its id.
    async fn opened_ticket(&self, requester: u64) -> u64 {
        let r = self
            .post(
                "/api/v2/tickets",
                json!({"ticket": {"requester_id": requester, "comment": {"body": "opened"}}}),
            )
            .await;
        r.body["ticket"]["id"].as_u64().expect("ticket id")
    }

    async fn org(&self, external_id: &str, name: &str) -> u64 {
        let r = self
            .post(
                "/api/v2/organizations/create_or_update",
                json!({"organization": {"external_id": external_id, "name": name}}),
            )
            .await;
        assert!(r.status == 201 || r.status == 200, "{}", r.text);
        r.body["organization"]["id"].as_u64().expect("org id")
    }
}

fn error_code<'a>(body: &'a Value, field: &str) -> Option<&'a str> {
    body["details"][field][0]["error"].as_str()
}

// ---- 1. CLI and in-process start ----

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: EmulatorArgs,
}

#[tokio::test]
async fn item1_cli_options_and_in_process_start() {
    let cli = Cli::try_parse_from([
        "zdmap",
        "--listen",
        "127.0.0.1:0",
        "--rpm",
        "5",
        "--fail-rate",
        "0.25",
        "--latency-ms",
        "3",
        "--seed",
        "7",
        "--api-token",
        "tok-abc-123",
        "--bulk-import",
    ])
    .expect("flags parse");
    assert!(
        !format!("{:?}", cli.args).contains("tok-abc-123"),
        "tokens never in Debug"
    );
    let opts = EmulatorOptions::from(cli.args);
    assert_eq!(
        (
            opts.rpm,
            opts.fail_rate,
            opts.latency_ms,
            opts.seed,
            opts.bulk_import
        ),
        (Some(5), 0.25, 3, 7, true)
    );
    assert_eq!(opts.api_token, Some(Secret::new("tok-abc-123")));
    let defaults = Cli::try_parse_from(["zdmap"]).expect("no flags");
    assert_eq!(defaults.args.listen.to_string(), "127.0.0.1:8089");

    let d = EmulatorOptions::default();
    assert_eq!(
        (
            d.listen.port(),
            d.rpm,
            d.fail_rate,
            d.seed,
            d.bulk_import,
            d.subdomain.as_str()
        ),
        (0, None, 0.0, 0, false, "example")
    );
    let z = Z::start().await;
    assert!(z.emu.url().starts_with("http://127.0.0.1:"));
    assert_ne!(z.emu.url(), "http://127.0.0.1:0");
    assert_eq!(z.get("/api/v2/users").await.status, 200);
    z.emu.shutdown().await;
}

// ---- 2. Auth ----

#[tokio::test]
async fn item2_auth_like_zendesk() {
    let mut z = Z::start().await;
    assert_eq!(
        z.get("/api/v2/users").await.status,
        200,
        "email/token Basic"
    );
    z.auth = Some("Bearer any-oauth-token".into());
    assert_eq!(z.get("/api/v2/users").await.status, 200, "Bearer");
    for bad in [
        basic("agent@example.com:password"),
        basic("agent/token:x"),
        "Token abc".into(),
        "Basic %%%".into(),
    ] {
        z.auth = Some(bad);
        let r = z.get("/api/v2/users").await;
        assert_eq!(
            (r.status, r.body.clone()),
            (401, json!({"error": "Couldn't authenticate you"}))
        );
    }
    z.auth = None;
    assert_eq!(z.get("/api/v2/users").await.status, 401);
    let me = z.get("/api/v2/users/me.json").await;
    assert_eq!(
        (
            me.status,
            me.body["user"]["name"].as_str(),
            me.body["user"]["id"].clone()
        ),
        (200, Some("Anonymous user"), Value::Null)
    );
    z.auth = Some(basic(AGENT));
    assert_eq!(
        z.get("/api/v2/users/me").await.body["user"]["email"],
        "agent@example.com"
    );

    // Restricted to configured tokens.
    let opts = EmulatorOptions {
        api_token: Some(Secret::new("right-token")),
        oauth_token: Some(Secret::new("right-oauth")),
        ..Default::default()
    };
    let mut r = Z::with(opts).await;
    r.auth = Some(basic("a@b.co/token:right-token"));
    assert_eq!(r.get("/api/v2/users").await.status, 200);
    r.auth = Some("Bearer right-oauth".into());
    assert_eq!(r.get("/api/v2/users").await.status, 200);
    r.auth = Some(basic("a@b.co/token:wrong-token"));
    assert_eq!(r.get("/api/v2/users").await.status, 401);
    r.auth = Some("Bearer wrong-oauth".into());
    assert_eq!(r.get("/api/v2/users").await.status, 401);
    // Nothing secret in the request log.
    let log = serde_json::to_string(&r.emu.requests()).expect("log");
    assert!(
        !log.contains("right-token")
            && !log.contains("right-oauth")
            && !log.contains("wrong-oauth")
    );
    assert!(!log.contains(&basic("a@b.co/token:right-token")["Basic ".len()..]));
    assert_eq!(
        r.emu.requests()[1]["headers"]["authorization"],
        "Bearer [redacted]"
    );
}

// ---- 3. Users ----

#[tokio::test]
async fn item3_create_or_update_matches_by_email_and_external_id() {
    let z = Z::start().await;
    let r = z
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
    let r = z
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
    let r = z
        .post(
            "/api/v2/users/create_or_update",
            json!({"user": {"external_id": "u-1", "email": "jane.work@example.com"}}),
        )
        .await;
    assert_eq!((r.status, r.body["user"]["id"].as_u64()), (200, Some(id)));
    assert_eq!(r.body["user"]["external_id"], "u-1");
    // The primary email is unchanged; the new one is a secondary identity.
    assert_eq!(r.body["user"]["email"], "Jane@Example.com");
    let ids = z.get(&format!("/api/v2/users/{id}/identities")).await;
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
    let r = z
        .post(
            "/api/v2/users/create_or_update",
            json!({"user": {"email": "JANE.WORK@example.com"}}),
        )
        .await;
    assert_eq!((r.status, r.body["user"]["id"].as_u64()), (200, Some(id)));

    // A new user without a name: 422 BlankValue on name.
    let r = z
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
    let r = z
        .post(
            "/api/v2/users/create_or_update",
            json!({"user": {"email": "not-an-email", "name": "X"}}),
        )
        .await;
    assert_eq!(error_code(&r.body, "email"), Some("InvalidValue"));
    // Missing wrapper: 400.
    assert_eq!(
        z.post("/api/v2/users/create_or_update", json!({"email": "a@b.co"}))
            .await
            .status,
        400
    );
}

#[tokio::test]
async fn item3_show_show_many_and_search() {
    let z = Z::start().await;
    let jane = z.user("jane@example.com", "Jane Doe").await;
    let r = z.post("/api/v2/users/create_or_update", json!({"user": {"email": "john@other.org", "name": "John Roe", "external_id": "Ext-9"}})).await;
    let john = r.body["user"]["id"].as_u64().expect("id");

    let show = z.get(&format!("/api/v2/users/{jane}.json")).await;
    assert_eq!(
        (show.status, show.body["user"]["email"].as_str()),
        (200, Some("jane@example.com"))
    );
    let missing = z.get("/api/v2/users/12345").await;
    assert_eq!(
        (missing.status, missing.body.clone()),
        (
            404,
            json!({"error": "RecordNotFound", "description": "Not found"})
        )
    );

    let many = z
        .get(&format!("/api/v2/users/show_many?ids={jane},{john},1"))
        .await;
    assert_eq!(many.body["users"].as_array().map(Vec::len), Some(2));
    let many = z.get("/api/v2/users/show_many?external_ids=EXT-9").await;
    assert_eq!(many.body["users"][0]["id"].as_u64(), Some(john));

    let ids_of = |r: &Resp| -> Vec<u64> {
        r.body["users"]
            .as_array()
            .map(|a| a.iter().filter_map(|u| u["id"].as_u64()).collect())
            .unwrap_or_default()
    };
    let search = |q: &str| format!("/api/v2/users/search?query={}", urlencode(q));
    assert_eq!(
        ids_of(&z.get(&search("jane")).await),
        vec![jane],
        "bare term, partial on name"
    );
    assert_eq!(
        ids_of(&z.get(&search("other.org")).await),
        vec![john],
        "bare term, partial on email"
    );
    assert_eq!(
        ids_of(&z.get(&search("jane@example.com")).await),
        vec![jane],
        "bare email"
    );
    assert_eq!(
        ids_of(&z.get(&search("email:JANE@example.com")).await),
        vec![jane]
    );
    assert_eq!(
        ids_of(&z.get(&search("email:\"john@other.org\"")).await),
        vec![john]
    );
    assert_eq!(
        ids_of(&z.get(&search("external_id:ext-9")).await),
        vec![john]
    );
    assert_eq!(
        ids_of(&z.get(&search("email:jane@example")).await),
        Vec::<u64>::new(),
        "field terms are exact"
    );
    let none = z.get(&search("nobody")).await;
    assert_eq!(
        none.body,
        json!({"users": [], "next_page": null, "previous_page": null, "count": 0})
    );
    assert_eq!(
        ids_of(&z.get("/api/v2/users/search?external_id=EXT-9").await),
        vec![john]
    );
    assert_eq!(
        ids_of(&z.get("/api/v2/users/search?external_id=Ext").await),
        Vec::<u64>::new(),
        "external_id= is exact"
    );
    let paged = z.get(&format!("{}&per_page=1", search("o"))).await;
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

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn item3_user_fields_only_stick_when_defined() {
    let z = Z::start().await;
    let r = z
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
    let f = z
        .post(
            "/api/v2/user_fields",
            json!({"user_field": {"type": "text", "title": "Plan", "key": "plan"}}),
        )
        .await;
    assert_eq!(f.status, 201);
    z.post(
        "/api/v2/user_fields",
        json!({"user_field": {"type": "integer", "title": "Seats", "key": "seats"}}),
    )
    .await;
    let r = z
        .post(
            "/api/v2/users/create_or_update",
            json!({"user": {"email": "a@b.co", "user_fields": {"plan": "pro", "other": 1}}}),
        )
        .await;
    assert_eq!(
        r.body["user"]["user_fields"],
        json!({"plan": "pro", "seats": null})
    );
    let r = z
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
async fn item3_create_or_update_many_needs_bulk_import() {
    let z = Z::start().await;
    let body = json!({"users": [{"email": "a@b.co", "name": "A"}, {"email": "b@b.co"}]});
    let r = z
        .post("/api/v2/users/create_or_update_many", body.clone())
        .await;
    assert_eq!(
        (r.status, r.body["error"]["title"].as_str()),
        (403, Some("Forbidden"))
    );
    z.emu.configure(|k| k.bulk_import = true);
    let r = z.post("/api/v2/users/create_or_update_many", body).await;
    assert_eq!(
        (r.status, r.body["job_status"]["status"].as_str()),
        (200, Some("queued"))
    );
    let job_id = r.body["job_status"]["id"]
        .as_str()
        .expect("job id")
        .to_string();
    assert_eq!(job_id.len(), 32);
    let job = z.get(&format!("/api/v2/job_statuses/{job_id}.json")).await;
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
async fn item3_merge_and_delete_users() {
    let z = Z::start().await;
    let keep = z.user("keep@example.com", "Keep").await;
    let dup = z.user("dup@example.com", "Dup").await;
    let org = z.org("G-M", "Merged Org").await;
    z.post(
        "/api/v2/organization_memberships",
        json!({"organization_membership": {"user_id": dup, "organization_id": org}}),
    )
    .await;
    let t = z
        .post(
            "/api/v2/tickets",
            json!({"ticket": {"requester_id": dup, "comment": {"body": "hi"}}}),
        )
        .await;
    let tid = t.body["ticket"]["id"].as_u64().expect("ticket id");
    for uid in [keep, dup] {
        let ev = json!({"profile": {"source": "shop", "type": "customer", "identifiers": [{"type": "email", "value": format!("{uid}@example.com")}]}, "event": {"source": "shop", "type": "visit", "properties": {}}});
        let r = z.post(&format!("/api/v2/users/{uid}/events"), ev).await;
        assert_eq!(r.status, 202, "{}", r.text);
    }
    let r = z
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
    assert_eq!(z.get(&format!("/api/v2/users/{dup}")).await.status, 404);
    let found = z
        .get("/api/v2/users/search?query=email:dup@example.com")
        .await;
    assert_eq!(found.body["users"][0]["id"].as_u64(), Some(keep));
    let t = z.get(&format!("/api/v2/tickets/{tid}")).await;
    assert_eq!(t.body["ticket"]["requester_id"].as_u64(), Some(keep));
    let events = z.get(&format!("/api/v2/users/{keep}/events")).await;
    assert_eq!(events.body["events"].as_array().map(Vec::len), Some(2));
    assert_eq!(z.emu.state()["profiles"].as_array().map(Vec::len), Some(1));
    let r = z
        .put(
            &format!("/api/v2/users/{keep}/merge"),
            json!({"user": {"id": keep}}),
        )
        .await;
    assert_eq!(r.status, 422);

    // A deleted user's email and external id can be used again; its tickets stay.
    let r = z.delete(&format!("/api/v2/users/{keep}")).await;
    assert_eq!(
        (r.status, r.body["user"]["active"].as_bool()),
        (200, Some(false))
    );
    assert_eq!(z.delete(&format!("/api/v2/users/{keep}")).await.status, 404);
    assert_eq!(z.get(&format!("/api/v2/tickets/{tid}")).await.status, 200);
    assert_eq!(
        z.emu.state()["memberships"].as_array().map(Vec::len),
        Some(0)
    );
    let again = z.user("dup@example.com", "Again").await;
    assert_ne!(again, keep);
}

// ---- 4. Organizations and fields ----

#[tokio::test]
async fn item4_organizations_upsert_and_search() {
    let z = Z::start().await;
    let body = json!({"organization": {"external_id": "G-1", "name": "Acme", "domain_names": ["acme.com", "acme.io"], "tags": ["a", "b"], "url": "https://ignored", "deleted": false}});
    let r = z.post("/api/v2/organizations/create_or_update", body).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["organization"]["id"].as_u64().expect("id");
    let r = z.post("/api/v2/organizations/create_or_update", json!({"organization": {"external_id": "g-1", "domain_names": ["acme.org"], "tags": ["c"]}})).await;
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
    let r = z
        .post(
            "/api/v2/organizations/create_or_update",
            json!({"organization": {"external_id": "G-2", "name": "  acme "}}),
        )
        .await;
    assert_eq!(
        (r.status, error_code(&r.body, "name")),
        (422, Some("DuplicateValue"))
    );
    let r = z
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
        z.get(&format!("/api/v2/organizations/{id}")).await.body["organization"]["external_id"],
        "g-1",
        "rewritten to the case sent"
    );
    let s = z.get("/api/v2/organizations/search?external_id=G-1").await;
    assert_eq!(
        (
            s.body["count"].as_u64(),
            s.body["organizations"][0]["id"].as_u64()
        ),
        (Some(1), Some(id))
    );
    let s = z.get("/api/v2/organizations/search?name=ACME").await;
    assert_eq!(s.body["organizations"][0]["id"].as_u64(), Some(id));
    assert_eq!(
        z.get("/api/v2/organizations/search?name=nope").await.body["count"],
        0
    );

    // organization_fields: filtered to defined fields.
    let r = z.post("/api/v2/organizations/create_or_update", json!({"organization": {"external_id": "G-1", "organization_fields": {"tier": "gold"}}})).await;
    assert_eq!(r.body["organization"]["organization_fields"], json!({}));
    assert_eq!(
        z.post(
            "/api/v2/organization_fields",
            json!({"organization_field": {"type": "text", "title": "Tier", "key": "tier"}})
        )
        .await
        .status,
        201
    );
    let r = z.post("/api/v2/organizations/create_or_update", json!({"organization": {"external_id": "G-1", "organization_fields": {"tier": "gold", "nope": 1}}})).await;
    assert_eq!(
        r.body["organization"]["organization_fields"],
        json!({"tier": "gold"})
    );
}

#[tokio::test]
async fn item4_fields_key_rule_and_duplicates() {
    let z = Z::start().await;
    for (path, wrap) in [
        ("/api/v2/user_fields", "user_field"),
        ("/api/v2/organization_fields", "organization_field"),
    ] {
        let r = z
            .post(
                path,
                json!({wrap: {"type": "text", "title": "Plan name", "key": "planName"}}),
            )
            .await;
        assert_eq!(
            (r.status, r.body[wrap]["key"].as_str()),
            (201, Some("planName"))
        );
        let r = z
            .post(
                path,
                json!({wrap: {"type": "text", "title": "Again", "key": "planName"}}),
            )
            .await;
        assert_eq!(
            (r.status, error_code(&r.body, "key")),
            (422, Some("DuplicateValue"))
        );
        for bad in ["plan-name", "plan name", "123"] {
            let r = z
                .post(
                    path,
                    json!({wrap: {"type": "text", "title": "Bad", "key": bad}}),
                )
                .await;
            assert_eq!(
                (r.status, error_code(&r.body, "key")),
                (422, Some("InvalidValue")),
                "{bad}"
            );
        }
        let list = z.get(path).await;
        let plural = format!("{wrap}s");
        assert_eq!(list.body[plural.as_str()].as_array().map(Vec::len), Some(1));
    }
}

// ---- 5. Memberships ----

#[tokio::test]
async fn item5_memberships() {
    let z = Z::start().await;
    let u = z.user("m@example.com", "Member").await;
    let (o1, o2) = (z.org("O-1", "Zeta").await, z.org("O-2", "Alpha").await);
    let add = |o: u64| json!({"organization_membership": {"user_id": u, "organization_id": o}});
    let r = z.post("/api/v2/organization_memberships", add(o1)).await;
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
    let r = z
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
    let dup = z.post("/api/v2/organization_memberships", add(o1)).await;
    assert_eq!(dup.status, 422);
    assert_eq!(
        dup.body,
        json!({"error": "RecordInvalid", "description": "Record validation errors", "details": {"user_id": [{"description": "User is already a member of this organization", "error": "DuplicateValue"}]}})
    );
    let bad = z
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
        z.get(&format!("/api/v2/users/{u}")).await.body["user"]["organization_id"].as_u64(),
        Some(o1)
    );

    // Per user: default first, then by name; per org.
    let list = z
        .get(&format!("/api/v2/users/{u}/organization_memberships"))
        .await;
    let orgs: Vec<u64> = list.body["organization_memberships"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|m| m["organization_id"].as_u64())
        .collect();
    assert_eq!(orgs, vec![o1, o2]);
    let per_org = z
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
        z.delete(&format!("/api/v2/users/{u}/organization_memberships/{m2}"))
            .await
            .status,
        204
    );
    assert_eq!(
        z.delete(&format!("/api/v2/organization_memberships/{m2}"))
            .await
            .status,
        404
    );
    assert_eq!(
        z.delete(&format!("/api/v2/organization_memberships/{m1}.json"))
            .await
            .status,
        204
    );
    assert_eq!(
        z.get(&format!("/api/v2/users/{u}")).await.body["user"]["organization_id"],
        Value::Null
    );
    z.post("/api/v2/organization_memberships", add(o2)).await;
    let r = z
        .delete(&format!("/api/v2/users/{u}/organizations/{o2}"))
        .await;
    assert_eq!((r.status, r.text.as_str()), (204, ""));
    let r = z
        .delete(&format!("/api/v2/users/{u}/organizations/{o2}"))
        .await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (404, Some("RecordNotFound"))
    );
    assert_eq!(z.emu.state()["memberships"], json!([]));
}

// ---- 6. Tickets ----

#[tokio::test]
async fn item6_ticket_create_and_list() {
    let z = Z::start().await;
    let r = z
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
    let r = z.post("/api/v2/tickets.json", body.clone()).await;
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
    let u = z.get(&format!("/api/v2/users/{requester}")).await;
    assert_eq!(
        (
            u.body["user"]["email"].as_str(),
            u.body["user"]["name"].as_str()
        ),
        (Some("rita@example.com"), Some("Rita"))
    );
    // external_id is not unique: a second POST makes a second ticket, for the same requester.
    let r2 = z.post("/api/v2/tickets", body).await;
    assert_eq!(r2.status, 201);
    assert_ne!(r2.body["ticket"]["id"].as_u64(), Some(tid));
    assert_eq!(r2.body["ticket"]["requester_id"].as_u64(), Some(requester));
    let list = z.get("/api/v2/tickets?external_id=t-1").await;
    assert_eq!(list.body["tickets"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        z.get("/api/v2/tickets?external_id=T-2").await.body["count"],
        0
    );
    assert_eq!(
        z.get(&format!("/api/v2/tickets/{tid}")).await.body["ticket"]["subject"],
        "Help"
    );
    assert_eq!(z.get("/api/v2/tickets/999").await.status, 404);
}

#[tokio::test]
async fn item6_idempotency_key() {
    let z = Z::start().await;
    let body = r#"{"ticket":{"comment":{"body":"once"},"requester":{"email":"i@example.com"}}}"#;
    let a = z
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
    let b = z
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
    assert_eq!(z.emu.state()["tickets"].as_array().map(Vec::len), Some(1));
    let other =
        r#"{"ticket":{"comment":{"body":"different"},"requester":{"email":"i@example.com"}}}"#;
    let c = z
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
    let d = z
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
async fn item6_ticket_update_audit_closed_and_limit() {
    let z = Z::start().await;
    let r = z.post("/api/v2/tickets", json!({"ticket": {"comment": {"body": "first"}, "requester": {"email": "u@example.com"}, "tags": ["a"]}})).await;
    let tid = r.body["ticket"]["id"].as_u64().expect("id");
    let r = z.put(&format!("/api/v2/tickets/{tid}.json"), json!({"ticket": {"status": "open", "comment": {"body": "second", "public": false}, "additional_tags": ["b"]}})).await;
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
    let comments = z.get(&format!("/api/v2/tickets/{tid}/comments")).await;
    assert_eq!(comments.body["count"], 2, "comments append");
    // 30 updates per ticket per window, then 429 with Retry-After (the create counted none).
    for _ in 1..30 {
        assert_eq!(
            z.put(
                &format!("/api/v2/tickets/{tid}"),
                json!({"ticket": {"priority": "low"}})
            )
            .await
            .status,
            200
        );
    }
    let limited = z
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
    z.emu.advance_clock(Duration::from_secs(600));
    // Closed tickets are immutable.
    assert_eq!(
        z.put(
            &format!("/api/v2/tickets/{tid}"),
            json!({"ticket": {"status": "closed"}})
        )
        .await
        .status,
        200
    );
    let r = z
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
        z.put(
            "/api/v2/tickets/424242",
            json!({"ticket": {"status": "open"}})
        )
        .await
        .status,
        404
    );
}

// ---- 7. User events ----

#[tokio::test]
async fn item7_user_events() {
    let z = Z::start().await;
    let uid = z.user("ev@example.com", "Ev").await;
    let ev = |source: &str| {
        json!({"profile": {"source": "shop", "type": "customer", "identifiers": [{"type": "email", "value": "ev@example.com"}]},
               "event": {"source": source, "type": "Order Completed", "description": "Order Completed", "properties": {"total": 3}}})
    };
    let r = z
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

    let r = z
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
            z.post(&format!("/api/v2/users/{uid}/events"), broken)
                .await
                .status,
            400
        );
    }
    assert_eq!(
        z.post("/api/v2/users/abc/events", ev("shop")).await.status,
        400
    );
    assert_eq!(
        z.post("/api/v2/users/777/events", ev("shop")).await.status,
        404
    );

    // user_profiles/events links by identifier, or creates the user.
    let r = z.post("/api/v2/user_profiles/events", ev("shop")).await;
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
    let r = z.post("/api/v2/user_profiles/events", fresh).await;
    assert_eq!(r.status, 202);
    let new_uid: u64 = r.body["user_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("string user id");
    assert_eq!(
        z.get(&format!("/api/v2/users/{new_uid}")).await.body["user"]["email"],
        "new@example.com"
    );

    let list = z.get(&format!("/api/v2/users/{uid}/events")).await;
    let events = list.body["events"].as_array().expect("events");
    assert_eq!(events.len(), 2);
    assert_eq!(
        (events[0]["type"].as_str(), events[0]["properties"].clone()),
        (Some("Order Completed"), json!({"total": 3}))
    );
    assert_eq!(list.body["meta"]["has_more"], false);
    let paged = z
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
        z.get(&format!("/api/v2/users/{uid}/events?filter[source]=other"))
            .await
            .body["events"],
        json!([])
    );
}

// ---- 8. Rate limits, faults, latency ----

#[tokio::test]
async fn item8_account_budget_and_headers() {
    let z = Z::with(EmulatorOptions {
        rpm: Some(3),
        ..Default::default()
    })
    .await;
    for remaining in ["2", "1", "0"] {
        let r = z.get("/api/v2/users").await;
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
    let r = z.get("/api/v2/users").await;
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
    let state = z
        .http
        .get(format!("{}/__emulator/state", z.emu.url()))
        .send()
        .await
        .expect("state");
    assert_eq!(state.status().as_u16(), 200);
    z.emu.advance_clock(Duration::from_secs(60));
    assert_eq!(z.get("/api/v2/users").await.status, 200);
    // Unlimited by default: nominal headers with the whole budget left, never 429.
    let u = Z::start().await;
    let r = u.get("/api/v2/users").await;
    assert_eq!(
        (r.header("x-rate-limit"), r.header("x-rate-limit-remaining")),
        (Some("700"), Some("700"))
    );
}

#[tokio::test]
async fn item8_create_or_update_per_user_limit() {
    let z = Z::start().await;
    let body = json!({"user": {"email": "hot@example.com", "name": "Hot"}});
    for remaining in (0..5).rev() {
        let r = z.post("/api/v2/users/create_or_update", body.clone()).await;
        assert!(r.status == 200 || r.status == 201);
        let h = r
            .header("zendesk-ratelimit-create-update-user")
            .expect("endpoint header");
        assert!(
            h.starts_with(&format!("total=5; remaining={remaining}; resets=")),
            "{h}"
        );
    }
    let r = z.post("/api/v2/users/create_or_update", body.clone()).await;
    assert_eq!(
        (r.status, r.body["errors"][0]["code"].as_str()),
        (429, Some("TooManyRequests"))
    );
    assert!(r.header("retry-after").is_some());
    // Another user is not limited.
    assert_eq!(
        z.post(
            "/api/v2/users/create_or_update",
            json!({"user": {"email": "cold@example.com", "name": "C"}})
        )
        .await
        .status,
        201
    );
    z.emu.advance_clock(Duration::from_secs(61));
    assert_eq!(
        z.post("/api/v2/users/create_or_update", body).await.status,
        200
    );
}

#[tokio::test]
async fn item8_forced_faults_random_faults_and_latency() {
    let z = Z::start().await;
    z.emu.configure(|k| {
        k.forced_faults
            .push(ForcedFault::new(503).times(2).on_path("/api/v2/tickets"))
    });
    assert_eq!(
        z.get("/api/v2/users").await.status,
        200,
        "other paths unaffected"
    );
    let r = z.get("/api/v2/tickets").await;
    assert_eq!((r.status, r.header("retry-after")), (503, Some("1")));
    assert_eq!(z.get("/api/v2/tickets").await.status, 503);
    assert_eq!(z.get("/api/v2/tickets").await.status, 200, "consumed");

    // Over HTTP: the next request answers 429 with Retry-After 7; then a fault removed by configure.
    let cfg = z
        .http
        .post(format!("{}/__emulator/config", z.emu.url()))
        .json(&json!({"add_forced_fault": {"status": 429, "retry_after": 7}}))
        .send()
        .await
        .expect("config");
    let knobs: Value = cfg.json().await.expect("knobs");
    assert_eq!(knobs["forced_faults"][0]["status"], 429);
    let r = z.get("/api/v2/users").await;
    assert_eq!((r.status, r.header("retry-after")), (429, Some("7")));
    z.emu.configure(|k| {
        k.forced_faults = vec![ForcedFault::new(500).times(100), ForcedFault::new(401)]
    });
    assert_eq!(z.get("/api/v2/users").await.status, 500);
    z.emu.configure(|k| k.forced_faults.clear());
    assert_eq!(
        z.get("/api/v2/users").await.status,
        200,
        "replay after removing the fault"
    );
    let bad = z
        .http
        .post(format!("{}/__emulator/config", z.emu.url()))
        .json(&json!({"no_such_knob": 1}))
        .send()
        .await
        .expect("config");
    assert_eq!(bad.status().as_u16(), 400);

    // fail_rate 1: every request 500 or 503; deterministic under the seed.
    let statuses = |seed: u64| async move {
        let z = Z::with(EmulatorOptions {
            fail_rate: 0.5,
            seed,
            ..Default::default()
        })
        .await;
        let mut out = Vec::new();
        for _ in 0..16 {
            out.push(z.get("/api/v2/users").await.status);
        }
        out
    };
    let (a, b) = (statuses(42).await, statuses(42).await);
    assert_eq!(a, b);
    assert!(
        a.contains(&200) && a.iter().any(|s| *s == 500 || *s == 503),
        "{a:?}"
    );
    z.emu.configure(|k| k.fail_rate = 1.0);
    assert!([500, 503].contains(&z.get("/api/v2/users").await.status));
    z.emu.configure(|k| {
        k.fail_rate = 0.0;
        k.latency_ms = 120;
    });
    let t0 = Instant::now();
    assert_eq!(z.get("/api/v2/users").await.status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(120));
}

// ---- 9. Paths and envelopes ----

#[tokio::test]
async fn item9_json_suffix_unknown_routes_and_envelopes() {
    let z = Z::start().await;
    let id = z.user("s@example.com", "S").await;
    assert_eq!(z.get(&format!("/api/v2/users/{id}.json")).await.status, 200);
    assert_eq!(z.get(&format!("/api/v2/users/{id}")).await.status, 200);
    let invalid = json!({"error": "InvalidEndpoint", "description": "Not found"});
    for (m, p) in [
        ("GET", "/api/v2/nothing_here"),
        ("PUT", "/api/v2/organization_memberships/create_many"),
        ("GET", "/nope"),
        ("DELETE", "/api/v2/users/search"),
    ] {
        let r = z.call(m, p, None).await;
        assert_eq!(
            (r.status, r.body.clone()),
            (404, invalid.clone()),
            "{m} {p}"
        );
    }
    let r = z
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
    let r = z
        .raw("POST", "/api/v2/users/create_or_update", Some("[1,2"), &[])
        .await;
    assert_eq!(r.status, 400);
}

// ---- 10. Inspection, reset, seed ----

#[tokio::test]
async fn item10_inspection_reset_and_seed() {
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
    let z = Z::with(EmulatorOptions {
        seed_state: Some(seed_path),
        ..Default::default()
    })
    .await;
    let state = z.emu.state();
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
    let uid = z.user("new@example.com", "New").await;
    assert_ne!(uid, 777);
    let http_state: Value = z
        .http
        .get(format!("{}/__emulator/state", z.emu.url()))
        .send()
        .await
        .expect("state")
        .json()
        .await
        .expect("json");
    assert_eq!(http_state, z.emu.state());
    assert_eq!(http_state["users"].as_array().map(Vec::len), Some(2));

    let log: Value = z
        .http
        .get(format!("{}/__emulator/requests", z.emu.url()))
        .send()
        .await
        .expect("log")
        .json()
        .await
        .expect("json");
    assert_eq!(Value::Array(z.emu.requests()), log);
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
    z.get("/api/v2/users/search?query=x").await;
    assert_eq!(z.emu.requests()[1]["query"], "query=x");

    // Reset: back to the seed, log emptied.
    let r = z
        .http
        .post(format!("{}/__emulator/reset", z.emu.url()))
        .send()
        .await
        .expect("reset");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(z.emu.state()["users"].as_array().map(Vec::len), Some(1));
    assert!(z.emu.requests().is_empty());
    // Seeding over HTTP adds to the state.
    let r = z
        .http
        .post(format!("{}/__emulator/seed", z.emu.url()))
        .json(&json!({"organizations": [{"name": "Other"}]}))
        .send()
        .await
        .expect("seed");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        z.emu.state()["organizations"].as_array().map(Vec::len),
        Some(2)
    );
    let bad = z
        .http
        .post(format!("{}/__emulator/seed", z.emu.url()))
        .json(&json!({"usres": []}))
        .send()
        .await
        .expect("seed");
    assert_eq!(bad.status().as_u16(), 400);
}

// ---- 12. Bulk endpoints and job statuses ----

impl Z {
    /// `POST /__emulator/config` with `patch`; gives the knobs it answers.
    async fn config(&self, patch: Value) -> Value {
        let r = self
            .http
            .post(format!("{}/__emulator/config", self.emu.url()))
            .json(&patch)
            .send()
            .await
            .expect("config");
        assert_eq!(r.status().as_u16(), 200, "config {patch}");
        r.json().await.expect("knobs")
    }

    /// Polls the job a bulk answer names.
    async fn job(&self, bulk: &Resp) -> Value {
        let id = bulk.body["job_status"]["id"].as_str().expect("job id");
        let r = self.get(&format!("/api/v2/job_statuses/{id}")).await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.body["job_status"].clone()
    }
}

#[tokio::test]
async fn item12_users_job_queued_working_completed_with_per_item_results() {
    let z = Z::start().await;
    let existing = z.user("old@example.com", "Old").await;
    z.config(json!({"bulk_import": true, "job_delay_ms": 10_000}))
        .await;
    let body = json!({"users": [
        {"email": "new@example.com", "name": "New", "external_id": "N-1"},
        {"email": "old@example.com", "name": "Old Renamed"},
        {"email": "nameless@example.com"},
        {"external_id": "N-1", "name": "New Again"}
    ]});
    let r = z.post("/api/v2/users/create_or_update_many", body).await;
    assert_eq!(
        (r.status, r.body["job_status"]["status"].as_str()),
        (200, Some("queued")),
        "{}",
        r.text
    );
    assert_eq!(r.body["job_status"]["total"], 4);
    assert!(r.body["job_status"]["results"].is_null());
    // Nothing is applied while the job is queued, then working.
    assert_eq!(z.job(&r).await["status"], "queued");
    z.emu.advance_clock(Duration::from_secs(6));
    assert_eq!(z.job(&r).await["status"], "working");
    assert_eq!(z.emu.state()["users"].as_array().map(Vec::len), Some(1));
    z.emu.advance_clock(Duration::from_secs(5));
    let job = z.job(&r).await;
    assert_eq!(
        (job["status"].as_str(), job["progress"].as_u64()),
        (Some("completed"), Some(4))
    );
    let results = &job["results"];
    let new_id = results[0]["id"].as_u64().expect("created id");
    assert_eq!(
        results[0],
        json!({"index": 0, "id": new_id, "action": "create", "status": "Created", "success": true})
    );
    assert_eq!(
        results[1],
        json!({"index": 1, "id": existing, "action": "update", "status": "Updated", "success": true})
    );
    assert_eq!(
        (
            results[2]["index"].as_u64(),
            results[2]["success"].as_bool(),
            results[2]["error"].as_str(),
            results[2]["details"].is_string()
        ),
        (Some(2), Some(false), Some("RecordInvalid"), true)
    );
    // Items apply in order: the fourth updates the user the first created.
    assert_eq!(
        (results[3]["id"].as_u64(), results[3]["action"].as_str()),
        (Some(new_id), Some("update"))
    );
    let user = z.get(&format!("/api/v2/users/{new_id}")).await;
    assert_eq!(user.body["user"]["name"], "New Again");
    let user = z.get(&format!("/api/v2/users/{existing}")).await;
    assert_eq!(user.body["user"]["name"], "Old Renamed");

    // show_many answers the known ids in the order asked.
    let id = job["id"].as_str().expect("id");
    let many = z
        .get(&format!(
            "/api/v2/job_statuses/show_many?ids={id},00000000000000000000000000000000"
        ))
        .await;
    assert_eq!(many.body["job_statuses"].as_array().map(Vec::len), Some(1));
    assert_eq!(many.body["job_statuses"][0]["status"], "completed");
    // Ended jobs are forgotten after an hour.
    z.emu.advance_clock(Duration::from_secs(3601));
    let gone = z.get(&format!("/api/v2/job_statuses/{id}")).await;
    assert_eq!(
        (gone.status, gone.body["error"].as_str()),
        (404, Some("RecordNotFound"))
    );
    // Lookups by id and external id.
    let users = z
        .get(&format!(
            "/api/v2/users/show_many?external_ids=n-1,nobody&ids={existing}"
        ))
        .await;
    assert_eq!(users.body["users"][0]["id"].as_u64(), Some(existing));
    let users = z
        .get("/api/v2/users/show_many?external_ids=n-1,nobody")
        .await;
    assert_eq!(users.body["users"][0]["id"].as_u64(), Some(new_id));
    let too_many: Vec<String> = (0..101).map(|i| i.to_string()).collect();
    let r = z
        .get(&format!(
            "/api/v2/users/show_many?ids={}",
            too_many.join(",")
        ))
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn item12_organizations_memberships_and_tickets_in_bulk() {
    let z = Z::start().await;
    let taken = z.org("T-1", "Taken").await;
    let r = z
        .post(
            "/api/v2/organizations/create_many",
            json!({"organizations": [{"name": "Alpha", "external_id": "A-1"}, {"name": "Beta", "external_id": "B-1"}, {"name": "taken"}]}),
        )
        .await;
    let results = z.job(&r).await["results"].clone();
    let (alpha, beta) = (
        results[0]["id"].as_u64().expect("alpha"),
        results[1]["id"].as_u64().expect("beta"),
    );
    assert_eq!(
        (results[0]["action"].as_str(), results[0]["status"].as_str()),
        (Some("create"), Some("Created"))
    );
    assert_eq!(
        (
            results[2]["success"].as_bool(),
            results[2]["error"].as_str()
        ),
        (Some(false), Some("RecordInvalid"))
    );

    // The same change by ids, then by external ids, then a batch of different changes.
    let r = z
        .put(
            &format!("/api/v2/organizations/update_many?ids={alpha},{beta},999"),
            json!({"organization": {"notes": "Priority"}}),
        )
        .await;
    let results = z.job(&r).await["results"].clone();
    assert_eq!(
        results[1],
        json!({"index": 1, "id": beta, "action": "update", "status": "Updated", "success": true})
    );
    assert_eq!(
        (
            results[2]["id"].as_u64(),
            results[2]["success"].as_bool(),
            results[2]["error"].as_str()
        ),
        (Some(999), Some(false), Some("RecordNotFound"))
    );
    let r = z
        .put(
            "/api/v2/organizations/update_many.json?external_ids=a-1,NOPE",
            json!({"organization": {"tags": ["vip"]}}),
        )
        .await;
    let results = z.job(&r).await["results"].clone();
    assert_eq!(results[0]["id"].as_u64(), Some(alpha));
    assert_eq!(
        (
            results[1]["external_id"].as_str(),
            results[1]["success"].as_bool()
        ),
        (Some("NOPE"), Some(false))
    );
    let r = z
        .put(
            "/api/v2/organizations/update_many",
            json!({"organizations": [{"id": alpha, "notes": "Normal"}, {"id": beta, "name": "Taken"}, {"notes": "no id"}]}),
        )
        .await;
    let results = z.job(&r).await["results"].clone();
    assert_eq!(results[0]["success"], true);
    assert_eq!(
        (results[1]["id"].as_u64(), results[1]["error"].as_str()),
        (Some(beta), Some("RecordInvalid"))
    );
    assert_eq!(results[2]["error"], "RecordNotFound");
    let orgs = z
        .get(&format!(
            "/api/v2/organizations/show_many?ids={alpha},{beta},{taken}"
        ))
        .await;
    let orgs = &orgs.body["organizations"];
    assert_eq!(
        (orgs[0]["notes"].as_str(), orgs[0]["tags"].clone()),
        (Some("Normal"), json!(["vip"]))
    );
    assert_eq!(
        (orgs[1]["name"].as_str(), orgs[1]["notes"].as_str()),
        (Some("Beta"), Some("Priority"))
    );
    let by_ext = z
        .get("/api/v2/organizations/show_many?external_ids=B-1,t-1")
        .await;
    let ids: Vec<u64> = by_ext.body["organizations"]
        .as_array()
        .map(|a| a.iter().filter_map(|o| o["id"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(ids, vec![beta, taken]);

    // Memberships: the first is the user's default; a repeat fails on its own.
    let uid = z.user("m@example.com", "M").await;
    let r = z
        .post(
            "/api/v2/organization_memberships/create_many",
            json!({"organization_memberships": [
                {"user_id": uid, "organization_id": alpha},
                {"user_id": uid, "organization_id": beta},
                {"user_id": uid, "organization_id": alpha},
                {"user_id": 1, "organization_id": alpha}
            ]}),
        )
        .await;
    let results = z.job(&r).await["results"].clone();
    assert_eq!(
        (results[0]["action"].as_str(), results[0]["status"].as_str()),
        (Some("create"), Some("Created"))
    );
    assert_eq!(
        (
            results[2]["success"].as_bool(),
            results[3]["success"].as_bool()
        ),
        (Some(false), Some(false))
    );
    let user = z.get(&format!("/api/v2/users/{uid}")).await;
    assert_eq!(user.body["user"]["organization_id"].as_u64(), Some(alpha));

    // Tickets: the same change by ids, and a batch where a closed ticket fails alone.
    let mut tickets = Vec::new();
    for status in ["new", "new", "closed"] {
        let t = z
            .post(
                "/api/v2/tickets",
                json!({"ticket": {"requester_id": uid, "status": status, "comment": {"body": "hi"}}}),
            )
            .await;
        tickets.push(t.body["ticket"]["id"].as_u64().expect("ticket id"));
    }
    let r = z
        .put(
            &format!(
                "/api/v2/tickets/update_many?ids={},{}",
                tickets[0], tickets[1]
            ),
            json!({"ticket": {"status": "open"}}),
        )
        .await;
    assert_eq!(z.job(&r).await["results"][1]["status"], "Updated");
    let r = z
        .put(
            "/api/v2/tickets/update_many",
            json!({"tickets": [
                {"id": tickets[0], "comment": {"body": "first"}},
                {"id": tickets[2], "status": "open"},
                {"id": tickets[0], "comment": {"body": "second"}}
            ]}),
        )
        .await;
    let results = z.job(&r).await["results"].clone();
    assert_eq!(
        (
            results[1]["id"].as_u64(),
            results[1]["error"].as_str(),
            results[1]["details"].as_str()
        ),
        (
            Some(tickets[2]),
            Some("RecordInvalid"),
            Some("closed prevents ticket update")
        )
    );
    let comments = z
        .get(&format!("/api/v2/tickets/{}/comments", tickets[0]))
        .await;
    let bodies: Vec<&str> = comments.body["comments"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["body"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(bodies, ["hi", "first", "second"]);
    let t = z.get(&format!("/api/v2/tickets/{}", tickets[1])).await;
    assert_eq!(t.body["ticket"]["status"], "open");

    // At most 100 items; the bulk body is required; create_many is POST only.
    let many: Vec<Value> = (0..101).map(|i| json!({"name": format!("O{i}")})).collect();
    let r = z
        .post(
            "/api/v2/organizations/create_many",
            json!({"organizations": many}),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = z
        .put("/api/v2/tickets/update_many", json!({"ticket": {}}))
        .await;
    assert_eq!(r.status, 400);
}

/// `GET job_statuses`: pending jobs first, newest first, then ended ones, latest ended first; a
/// cursor; only the last 100. A bulk ticket update writes each item's `metadata` into its audit
/// and its comment, as a single update does.
#[tokio::test]
async fn item12_job_statuses_are_listed_and_bulk_ticket_updates_keep_their_metadata() {
    use oas::{Oas, Validated};
    let spec = Oas::load();
    let z = Z::start().await;
    let uid = z.user("req@example.com", "Req").await;
    let tid = z.opened_ticket(uid).await;
    let bulk = |comment: &str, marker: &str| {
        json!({"tickets": [{"id": tid, "comment": {"body": comment, "public": true},
                            "metadata": {"zdmap_marker": marker}}]})
    };
    // Two jobs end, then a third is submitted with a long delay.
    let first = z
        .put("/api/v2/tickets/update_many", bulk("one", "m-1"))
        .await;
    let second = z
        .put("/api/v2/tickets/update_many", bulk("two", "m-2"))
        .await;
    assert_eq!((first.status, second.status), (200, 200));
    z.emu.advance_clock(Duration::from_millis(10));
    z.config(json!({"job_delay_ms": 60_000})).await;
    let third = z
        .put("/api/v2/tickets/update_many", bulk("three", "m-3"))
        .await;
    let ids: Vec<&str> = [&first, &second, &third]
        .iter()
        .map(|r| r.body["job_status"]["id"].as_str().expect("job id"))
        .collect();

    let list = z.get("/api/v2/job_statuses").await;
    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(
        spec.validate_response("GET", "/api/v2/job_statuses", 200, &list.body)
            .expect("valid"),
        Validated::Valid
    );
    let listed: Vec<(&str, &str)> = list.body["job_statuses"]
        .as_array()
        .expect("job_statuses")
        .iter()
        .map(|j| {
            (
                j["id"].as_str().unwrap_or_default(),
                j["status"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            (ids[2], "queued"),
            (ids[1], "completed"),
            (ids[0], "completed")
        ]
    );
    assert_eq!(list.body["meta"]["has_more"], false);

    // A page at a time.
    let page = z.get("/api/v2/job_statuses?page[size]=2").await;
    assert_eq!(page.body["job_statuses"].as_array().map(Vec::len), Some(2));
    assert_eq!(page.body["meta"]["has_more"], true);
    let after = page.body["meta"]["after_cursor"].as_str().expect("cursor");
    let rest = z
        .get(&format!(
            "/api/v2/job_statuses?page[size]=2&page[after]={after}"
        ))
        .await;
    assert_eq!(rest.body["job_statuses"][0]["id"].as_str(), Some(ids[0]));
    assert_eq!(rest.body["meta"]["has_more"], false);
    let bad = z.get("/api/v2/job_statuses?page[size]=500").await;
    assert_eq!(bad.status, 400);

    // The bulk updates' markers are in the audits, their comments on the ticket, in order.
    z.emu.advance_clock(Duration::from_secs(61));
    let audits = z.get(&format!("/api/v2/tickets/{tid}/audits")).await;
    let markers: Vec<&str> = audits.body["audits"]
        .as_array()
        .expect("audits")
        .iter()
        .filter_map(|a| a["metadata"]["custom"]["zdmap_marker"].as_str())
        .collect();
    assert_eq!(markers, ["m-1", "m-2", "m-3"]);
    let comments = z.get(&format!("/api/v2/tickets/{tid}/comments")).await;
    let bodies: Vec<&str> = comments.body["comments"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["body"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(bodies, ["opened", "one", "two", "three"]);

    // Only the last 100 jobs are listed.
    z.config(json!({"job_delay_ms": 0, "job_limit": 1000}))
        .await;
    for _ in 0..101 {
        z.put(
            "/api/v2/tickets/update_many",
            json!({"tickets": [{"id": tid, "status": "open"}]}),
        )
        .await;
    }
    let list = z.get("/api/v2/job_statuses").await;
    let listed = list.body["job_statuses"].as_array().expect("list");
    assert_eq!(listed.len(), 100);
    assert!(
        listed
            .iter()
            .all(|j| !ids.contains(&j["id"].as_str().unwrap_or_default()))
    );
}

#[tokio::test]
async fn item12_job_limit_failed_jobs_and_bulk_import_off() {
    let z = Z::start().await;
    let r = z
        .post(
            "/api/v2/users/create_or_update_many",
            json!({"users": [{"email": "a@example.com", "name": "A"}]}),
        )
        .await;
    assert_eq!(r.status, 403, "bulk user imports are off by default");
    z.config(json!({"job_delay_ms": 60_000})).await;
    let one = |i: usize| json!({"organizations": [{"name": format!("Org {i}")}]});
    for i in 0..30 {
        let r = z.post("/api/v2/organizations/create_many", one(i)).await;
        assert_eq!(r.status, 200, "job {i}: {}", r.text);
    }
    let r = z.post("/api/v2/organizations/create_many", one(30)).await;
    assert_eq!(
        (
            r.status,
            r.header("retry-after"),
            r.body["errors"][0]["code"].as_str()
        ),
        (429, Some("60"), Some("TooManyJobs"))
    );
    z.config(json!({"job_limit_status": 422})).await;
    let r = z.post("/api/v2/organizations/create_many", one(30)).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (422, Some("TooManyJobs"))
    );
    // When the running jobs end there is room again; they created their organizations in order.
    z.emu.advance_clock(Duration::from_secs(61));
    let state = z.emu.state();
    assert_eq!(state["organizations"].as_array().map(Vec::len), Some(30));
    assert_eq!(state["organizations"][29]["name"], "Org 29");
    z.config(json!({"job_fail_rate": 1.0, "job_delay_ms": 0}))
        .await;
    let r = z.post("/api/v2/organizations/create_many", one(30)).await;
    assert_eq!(r.status, 200);
    let job = z.job(&r).await;
    assert_eq!(
        (job["status"].as_str(), job["results"].is_null()),
        (Some("failed"), true)
    );
    assert_eq!(
        z.emu.state()["organizations"].as_array().map(Vec::len),
        Some(30),
        "a failed job applies nothing"
    );
    let bad = z
        .http
        .post(format!("{}/__emulator/config", z.emu.url()))
        .json(&json!({"job_limit_status": 500}))
        .send()
        .await
        .expect("config");
    assert_eq!(bad.status().as_u16(), 400);
}

// ---- 13. Lost answers and the bounded request log ----

#[tokio::test]
async fn item13_a_write_is_applied_and_its_answer_lost() {
    let z = Z::start().await;
    z.config(json!({"lost_answer_rate": 1.0, "lost_answer": "500"}))
        .await;
    let r = z
        .post(
            "/api/v2/users/create_or_update",
            json!({"user": {"email": "lost@example.com", "name": "Lost"}}),
        )
        .await;
    assert_eq!(r.status, 500, "the client sees a failure");
    assert!(r.header("x-rate-limit").is_some(), "budget headers stay");
    let state = z.emu.state();
    assert_eq!(
        state["users"][0]["email"], "lost@example.com",
        "yet it applied"
    );
    let log = z.emu.requests();
    assert_eq!(
        (log[0]["status"].as_u64(), log[0]["lost_answer"].as_str()),
        (Some(201), Some("500"))
    );
    // Reads never lose their answer.
    assert_eq!(z.get("/api/v2/users").await.status, 200);

    // Dropped: the connection closes without an answer, and the ticket exists.
    z.config(json!({"lost_answer": "drop"})).await;
    let sent = z
        .http
        .post(format!("{}/api/v2/tickets", z.emu.url()))
        .header("authorization", basic(AGENT))
        .json(&json!({"ticket": {"requester": {"email": "r@example.com", "name": "R"}, "comment": {"body": "once"}}}))
        .send()
        .await;
    assert!(sent.is_err(), "no answer: {sent:?}");
    let state = z.emu.state();
    assert_eq!(state["tickets"][0]["comments"][0]["body"], "once");
    assert_eq!(z.emu.requests()[2]["lost_answer"], "drop");
    // The emulator keeps serving other connections.
    z.config(json!({"lost_answer_rate": 0.0})).await;
    assert_eq!(
        z.post(
            "/api/v2/users/create_or_update",
            json!({"user": {"email": "ok@example.com", "name": "Ok"}})
        )
        .await
        .status,
        201
    );

    // Deterministic under the seed: the same requests lose the same answers.
    let lost = |seed: u64| async move {
        let z = Z::with(EmulatorOptions {
            seed,
            ..Default::default()
        })
        .await;
        z.config(json!({"lost_answer_rate": 0.5, "lost_answer": "500"}))
            .await;
        let mut statuses = Vec::new();
        for i in 0..16 {
            let body = json!({"user": {"email": format!("u{i}@example.com"), "name": "U"}});
            statuses.push(z.post("/api/v2/users/create_or_update", body).await.status);
        }
        (statuses, z.emu.state()["users"].as_array().map(Vec::len))
    };
    let (a, b) = (lost(9).await, lost(9).await);
    assert_eq!(a, b);
    assert!(a.0.contains(&500) && a.0.contains(&201), "{a:?}");
    assert_eq!(a.1, Some(16), "every write applied");
}

#[tokio::test]
async fn item13_flags_and_a_bounded_request_log() {
    let cli = Cli::try_parse_from([
        "zdmap",
        "--lost-answer-rate",
        "0.3",
        "--lost-answer",
        "drop",
        "--job-delay-ms",
        "1500",
        "--job-limit",
        "5",
        "--job-limit-status",
        "403",
        "--job-fail-rate",
        "0.1",
        "--request-log-size",
        "3",
    ])
    .expect("flags parse");
    let opts = EmulatorOptions::from(cli.args);
    let k = &opts.knobs;
    assert_eq!(
        (
            k.lost_answer_rate,
            k.lost_answer,
            k.job_delay_ms,
            k.job_limit,
            k.job_limit_status,
            k.job_fail_rate,
            k.request_log_size
        ),
        (0.3, LostAnswer::Drop, 1500, 5, 403, 0.1, 3)
    );
    let bad = Cli::try_parse_from(["zdmap", "--lost-answer", "sometimes"]);
    assert!(bad.is_err());

    let z = Z::with(EmulatorOptions {
        knobs: RuntimeKnobs {
            request_log_size: 3,
            ..RuntimeKnobs::default()
        },
        ..Default::default()
    })
    .await;
    for _ in 0..5 {
        z.get("/api/v2/users").await;
    }
    let seqs: Vec<u64> = z
        .emu
        .requests()
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .collect();
    assert_eq!(seqs, [3, 4, 5], "the newest three");
}

// ---- 11. Responses against the OpenAPI spec ----

#[tokio::test]
async fn item11_responses_match_the_openapi_spec() {
    use oas::{Oas, Validated};
    let spec = Oas::load();
    let z = Z::start().await;
    z.post(
        "/api/v2/user_fields",
        json!({"user_field": {"type": "text", "title": "Plan", "key": "plan"}}),
    )
    .await;
    let mut checked = Vec::new();
    // Sends a request, validates the request body (where the spec has a schema) and the response.
    let mut exchange =
        async |method: &str, path: &str, body: Option<Value>, expect_schema: bool| -> Resp {
            if let Some(b) = &body {
                assert!(
                    spec.validate_request(method, path, b).is_ok(),
                    "request {method} {path}: {:?}",
                    spec.validate_request(method, path, b)
                );
            }
            let r = z.call(method, path, body).await;
            let verdict = spec.validate_response(method, path, r.status, &r.body);
            match (expect_schema, &verdict) {
                (true, Ok(Validated::Valid)) | (false, Ok(Validated::NoSchema)) => {}
                _ => panic!("{method} {path} -> {}: {verdict:?}\n{}", r.status, r.text),
            }
            checked.push(format!("{method} {path} {}", r.status));
            r
        };
    let upsert = json!({"user": {"email": "o@example.com", "name": "O", "external_id": "O-1", "user_fields": {"plan": "pro"}, "phone": "+15550100"}});
    let r = exchange(
        "POST",
        "/api/v2/users/create_or_update",
        Some(upsert.clone()),
        true,
    )
    .await;
    assert_eq!(r.status, 201);
    let uid = r.body["user"]["id"].as_u64().expect("id");
    assert_eq!(
        exchange(
            "POST",
            "/api/v2/users/create_or_update.json",
            Some(upsert),
            true
        )
        .await
        .status,
        200
    );
    exchange("GET", &format!("/api/v2/users/{uid}.json"), None, true).await;
    exchange(
        "GET",
        "/api/v2/users/search?query=email:o@example.com",
        None,
        true,
    )
    .await;
    exchange("GET", "/api/v2/users/search?external_id=O-1", None, true).await;
    exchange(
        "GET",
        &format!("/api/v2/users/{uid}/identities"),
        None,
        true,
    )
    .await;

    let org_body = json!({"organization": {"external_id": "OO-1", "name": "Org", "domain_names": ["o.com"], "tags": ["t"]}});
    let r = exchange(
        "POST",
        "/api/v2/organizations/create_or_update",
        Some(org_body.clone()),
        true,
    )
    .await;
    let oid = r.body["organization"]["id"].as_u64().expect("id");
    exchange(
        "POST",
        "/api/v2/organizations/create_or_update",
        Some(org_body),
        true,
    )
    .await;
    exchange("GET", &format!("/api/v2/organizations/{oid}"), None, true).await;
    exchange("GET", "/api/v2/organizations/search?name=Org", None, true).await;

    let m = json!({"organization_membership": {"user_id": uid, "organization_id": oid}});
    assert_eq!(
        exchange("POST", "/api/v2/organization_memberships", Some(m), true)
            .await
            .status,
        201
    );

    let t = json!({"ticket": {"subject": "S", "comment": {"body": "B"}, "requester": {"email": "r@example.com", "name": "R"}, "external_id": "X-1", "priority": "normal", "type": "question", "tags": ["a"]}});
    let r = exchange("POST", "/api/v2/tickets", Some(t), true).await;
    let tid = r.body["ticket"]["id"].as_u64().expect("id");
    let up = json!({"ticket": {"status": "pending", "comment": {"body": "more", "public": true}}});
    exchange(
        "PUT",
        &format!("/api/v2/tickets/{tid}.json"),
        Some(up),
        true,
    )
    .await;
    exchange("GET", &format!("/api/v2/tickets/{tid}"), None, true).await;
    exchange("GET", "/api/v2/tickets?external_id=X-1", None, true).await;
    exchange(
        "GET",
        &format!("/api/v2/users/show_many?ids={uid}"),
        None,
        true,
    )
    .await;
    exchange(
        "GET",
        "/api/v2/organizations/show_many?external_ids=OO-1",
        None,
        true,
    )
    .await;
    // Bulk writes and their jobs.
    z.emu.configure(|k| k.bulk_import = true);
    let users = json!({"users": [{"email": "b1@example.com", "name": "B1"}, {"external_id": "O-1", "name": "O2"}]});
    let r = exchange(
        "POST",
        "/api/v2/users/create_or_update_many",
        Some(users),
        true,
    )
    .await;
    let user_job = r.body["job_status"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let orgs = json!({"organizations": [{"name": "Bulk Org"}]});
    let r = exchange(
        "POST",
        "/api/v2/organizations/create_many",
        Some(orgs),
        true,
    )
    .await;
    let org_job = r.body["job_status"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let r = exchange(
        "GET",
        &format!("/api/v2/job_statuses/{user_job}"),
        None,
        true,
    )
    .await;
    assert_eq!(r.body["job_status"]["results"][1]["action"], "update");
    exchange(
        "GET",
        &format!("/api/v2/job_statuses/show_many?ids={user_job},{org_job}"),
        None,
        true,
    )
    .await;
    exchange(
        "POST",
        "/api/v2/user_fields",
        Some(json!({"user_field": {"type": "text", "title": "T2", "key": "t2"}})),
        true,
    )
    .await;
    exchange("GET", "/api/v2/user_fields", None, true).await;

    // Operations the spec does not describe: the oracle must say so, not pass silently.
    let ev = json!({"profile": {"source": "s", "type": "t", "identifiers": [{"type": "email", "value": "o@example.com"}]}, "event": {"source": "s", "type": "t", "properties": {}}});
    exchange(
        "POST",
        &format!("/api/v2/users/{uid}/events"),
        Some(ev.clone()),
        false,
    )
    .await;
    exchange("POST", "/api/v2/user_profiles/events", Some(ev), false).await;
    exchange("GET", &format!("/api/v2/users/{uid}/events"), None, false).await;
    exchange(
        "GET",
        &format!("/api/v2/users/{uid}/organization_memberships"),
        None,
        false,
    )
    .await;
    assert_eq!(checked.len(), 27);
    // And a deliberately wrong body is caught.
    assert!(
        spec.validate_response(
            "GET",
            &format!("/api/v2/users/{uid}"),
            200,
            &json!({"user": {"id": "not-a-number"}})
        )
        .is_err()
    );
}

/// A ticket's audits come at most 100 a page, oldest first: cursor pages with `page[size]`
/// (`meta.has_more`, `meta.after_cursor`, `links.next` on the host asked), offset pages
/// otherwise; user events' next links keep their filters.
#[tokio::test]
async fn ticket_audits_and_user_events_come_in_pages() {
    use oas::{Oas, Validated};
    let spec = Oas::load();
    let z = Z::start().await;
    z.emu.configure(|k| k.ticket_updates_per_window = 1000);
    let uid = z.user("pages@example.com", "Pages").await;
    let tid = z.opened_ticket(uid).await;
    for n in 1..150 {
        let r = z
            .put(
                &format!("/api/v2/tickets/{tid}"),
                json!({"ticket": {"comment": {"body": format!("c{n}")},
                                  "metadata": {"zdmap_marker": format!("m-{n}")}}}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let markers = |page: &Resp| -> Vec<String> {
        page.body["audits"]
            .as_array()
            .expect("audits")
            .iter()
            .map(|a| {
                a["metadata"]["custom"]["zdmap_marker"]
                    .as_str()
                    .unwrap_or("-")
                    .to_owned()
            })
            .collect()
    };
    let path = format!("/api/v2/tickets/{tid}/audits");

    // Cursor pages: 100, then the 50 after them through the next link.
    let first = z.get(&format!("{path}?page[size]=100")).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(
        spec.validate_response("GET", &path, 200, &first.body)
            .expect("valid"),
        Validated::Valid
    );
    let seen = markers(&first);
    assert_eq!(seen.len(), 100);
    assert_eq!((seen[0].as_str(), seen[99].as_str()), ("-", "m-99"));
    assert_eq!(first.body["meta"]["has_more"], true);
    assert!(first.body["meta"]["after_cursor"].is_string());
    let next = first.body["links"]["next"].as_str().expect("a next link");
    let rest = next
        .strip_prefix(&z.emu.url())
        .expect("the link is on the host asked");
    let second = z.get(rest).await;
    let seen = markers(&second);
    assert_eq!(seen.len(), 50);
    assert_eq!((seen[0].as_str(), seen[49].as_str()), ("m-100", "m-149"));
    assert_eq!(second.body["meta"]["has_more"], false);
    assert_eq!(second.body["links"]["next"], Value::Null);
    assert_eq!(z.get(&format!("{path}?page[size]=101")).await.status, 400);

    // Offset pages of 100 when no cursor is asked for.
    let offset = z.get(&path).await;
    assert_eq!(markers(&offset).len(), 100);
    assert_eq!(offset.body["count"], 150);
    let next = offset.body["next_page"].as_str().expect("next_page");
    let page2 = z
        .get(next.strip_prefix(&z.emu.url()).expect("on the host asked"))
        .await;
    assert_eq!(markers(&page2).len(), 50);
    assert_eq!(page2.body["next_page"], Value::Null);

    // Links name another base when the emulator is told to (an account behind a proxy).
    z.emu
        .configure(|k| k.links_base = Some("https://example.zendesk.com".into()));
    let proxied = z.get(&format!("{path}?page[size]=100")).await;
    assert!(
        proxied.body["links"]["next"]
            .as_str()
            .is_some_and(|l| l.starts_with("https://example.zendesk.com/api/v2/tickets/")),
        "{}",
        proxied.text
    );
    z.emu.configure(|k| k.links_base = None);

    // A user's events, filtered: the next page keeps the filter.
    for (n, kind) in ["Paid", "Viewed", "Paid", "Paid"].iter().enumerate() {
        let r = z
            .post(
                &format!("/api/v2/users/{uid}/events"),
                json!({"profile": {"source": "app", "type": "user",
                                   "identifiers": [{"type": "email", "value": "pages@example.com"}]},
                       "event": {"source": "app", "type": kind, "properties": {"n": n}}}),
            )
            .await;
        assert!(r.status < 300, "{}", r.text);
    }
    let events = format!("/api/v2/users/{uid}/events?filter[type]=Paid&page[size]=2");
    let first = z.get(&events).await;
    assert_eq!(first.body["events"].as_array().map(Vec::len), Some(2));
    let next = first.body["links"]["next"].as_str().expect("a next link");
    let second = z
        .get(next.strip_prefix(&z.emu.url()).expect("on the host asked"))
        .await;
    let kinds: Vec<&str> = second.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(kinds, ["Paid"], "{next}: {}", second.text);
    assert_eq!(second.body["meta"]["has_more"], false);
}

// ---- 14. OAuth ----

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

impl Z {
    /// `POST /oauth/tokens` with a JSON body, no `Authorization`.
    async fn oauth_token(&self, body: Value) -> Resp {
        let sent = self
            .http
            .post(format!("{}/oauth/tokens", self.emu.url()))
            .json(&body)
            .send()
            .await
            .expect("token request answered");
        Resp::read(sent).await
    }

    /// `POST /oauth/tokens` with a form body.
    async fn oauth_token_form(&self, pairs: &[(&str, &str)]) -> Resp {
        let sent = self
            .http
            .post(format!("{}/oauth/tokens", self.emu.url()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(pairs))
            .send()
            .await
            .expect("token request answered");
        Resp::read(sent).await
    }

    /// `GET /oauth/authorizations/new` with `pairs` (response_type=code added), not following
    /// the redirect.
    async fn authorize(&self, pairs: &[(&str, &str)]) -> Resp {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let mut all = vec![("response_type", "code")];
        all.extend_from_slice(pairs);
        let url = format!("{}/oauth/authorizations/new?{}", self.emu.url(), form(&all));
        Resp::read(http.get(url).send().await.expect("answered")).await
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
    async fn get_as(&mut self, token: &str, path: &str) -> Resp {
        self.auth = Some(format!("Bearer {token}"));
        self.get(path).await
    }

    /// Refreshes with `refresh_token` (a form body, as most OAuth libraries send it).
    async fn refresh(&self, refresh_token: &str) -> Resp {
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
async fn item14_client_credentials_flags_and_knobs() {
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

    let mut z = Z::with(oauth_options()).await;
    // A registered client closes the API to credentials nobody issued or configured.
    assert_eq!(z.get("/api/v2/users").await.status, 401, "Basic");
    assert_eq!(z.get_as("made-up", "/api/v2/users").await.status, 401);

    let r = z
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
    assert_eq!(z.get_as(&token, "/api/v2/users").await.status, 200);

    // A form body works the same; scopes as asked.
    let r = z
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
    z.auth = Some(format!("Bearer {writer}"));
    let created = z
        .post(
            "/api/v2/users/create_or_update",
            json!({"user": {"email": "cc@example.com", "name": "CC"}}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);

    // Refusals in the OAuth envelope.
    let wrong = z
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
    let unknown = z
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
        let r = z.oauth_token(body).await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (400, Some("unsupported_grant_type"))
        );
    }
    let missing = z
        .oauth_token(json!({"grant_type": "refresh_token", "client_id": "zdmap"}))
        .await;
    assert_eq!(
        (missing.status, missing.body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    assert!(missing.body["error_description"].is_string());

    // The token endpoint spends none of the API budget (counted from a new window).
    z.config(json!({"rpm": 2, "advance_clock_secs": 60})).await;
    for _ in 0..4 {
        let r = z
            .oauth_token(
                json!({"grant_type": "client_credentials", "client_id": "zdmap",
                "client_secret": CLIENT_SECRET}),
            )
            .await;
        assert_eq!(r.status, 201);
        assert!(r.header("x-rate-limit-remaining").is_none());
    }
    let api = z.get_as(&token, "/api/v2/users").await;
    assert_eq!(
        (api.status, api.header("x-rate-limit-remaining")),
        (200, Some("1"))
    );

    // The knobs show the secret redacted, and a change that leaves the clients out keeps them.
    let knobs = z.config(json!({"rpm": null})).await;
    assert_eq!(
        knobs["oauth_clients"],
        json!([{"id": "zdmap", "secret": "[redacted]"}, {"id": "mobile", "secret": null}])
    );
    let again = z
        .oauth_token(
            json!({"grant_type": "client_credentials", "client_id": "zdmap",
            "client_secret": CLIENT_SECRET}),
        )
        .await;
    assert_eq!(again.status, 201, "{}", again.text);

    let stats = z.emu.oauth_stats();
    assert_eq!(stats["token_requests"]["client_credentials"], 9);
    assert_eq!(
        stats["refused"],
        json!({"invalid_client": 2, "invalid_grant": 0, "unsupported_grant_type": 2, "invalid_request": 1})
    );
    assert_eq!(stats["live_access_tokens"], 7);
    assert_eq!(stats["live_refresh_tokens"], 0);
}

#[tokio::test]
async fn item14_authorization_code_with_state_and_pkce() {
    let z = Z::with(oauth_options()).await;
    let r = z
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
    let r = z
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
    let r = z.oauth_token(exchange.clone()).await;
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
    let mut z = z;
    let token = field(&r.body, "access_token");
    assert_eq!(z.get_as(&token, "/api/v2/users").await.status, 200);
    // A code is good once.
    let reused = z.oauth_token(exchange).await;
    assert_eq!(
        (reused.status, reused.body),
        (
            400,
            json!({"error": "invalid_grant", "error_description": INVALID_GRANT})
        )
    );

    // PKCE for the public client: a verifier that does not match is invalid_grant.
    let code = z.code("mobile", "read", Some(CHALLENGE)).await;
    let wrong = z
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
    let code = z.code("mobile", "read", Some(CHALLENGE)).await;
    let right = z
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
    let code = z.code("zdmap", "read", None).await;
    let elsewhere = z
        .oauth_token(json!({"grant_type": "authorization_code", "client_id": "zdmap",
            "client_secret": CLIENT_SECRET, "code": code, "redirect_uri": "https://evil.example/cb"}))
        .await;
    assert_eq!(
        (elsewhere.status, elsewhere.body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    // A code older than 120 s on the emulator's clock.
    let code = z.code("zdmap", "read", None).await;
    z.emu.advance_clock(Duration::from_secs(121));
    let stale = z
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
        let r = z.authorize(&pairs).await;
        assert_eq!(r.status, 400, "{pairs:?}: {}", r.text);
        assert!(r.body["error"].is_string(), "{}", r.text);
    }
    let token_response = z
        .authorize(&[("response_type", "token"), ("client_id", "zdmap")])
        .await;
    assert_eq!(token_response.status, 400);

    let stats = z.emu.oauth_stats();
    assert_eq!(stats["token_requests"]["authorization_code"], 6);
    assert_eq!(stats["refused"]["invalid_grant"], 4);
}

#[tokio::test]
async fn item14_refresh_rotates_the_chain_and_tokens_expire() {
    let mut z = Z::with(oauth_options()).await;
    let first = z.chain("read write").await;
    let (a1, r1) = (
        field(&first, "access_token"),
        field(&first, "refresh_token"),
    );
    assert_eq!(z.get_as(&a1, "/api/v2/users").await.status, 200);

    let second = z.refresh(&r1).await;
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
    let old = z.get_as(&a1, "/api/v2/users").await;
    assert_eq!(
        (old.status, old.body),
        (401, json!({"error": "Couldn't authenticate you"})),
        "the replaced access token"
    );
    let reused = z.refresh(&r1).await;
    assert_eq!(
        (reused.status, reused.body),
        (
            400,
            json!({"error": "invalid_grant", "error_description": INVALID_GRANT})
        ),
        "the spent refresh token"
    );
    assert_eq!(z.get_as(&a2, "/api/v2/users").await.status, 200);
    let third = z.refresh(&r2).await;
    assert_eq!(third.status, 201, "{}", third.text);
    let (a3, r3) = (
        field(&third.body, "access_token"),
        field(&third.body, "refresh_token"),
    );

    // Expiry on the emulator's clock: the access token goes, the refresh token stays.
    z.emu.advance_clock(Duration::from_secs(1801));
    let expired = z.get_as(&a3, "/api/v2/users").await;
    assert_eq!(
        (expired.status, expired.body),
        (401, json!({"error": "Couldn't authenticate you"}))
    );
    let fourth = z.refresh(&r3).await;
    assert_eq!(fourth.status, 201, "{}", fourth.text);
    let a4 = field(&fourth.body, "access_token");
    assert_eq!(z.get_as(&a4, "/api/v2/users").await.status, 200);

    // A lifetime asked for in the token request.
    let short = z
        .oauth_token(
            json!({"grant_type": "client_credentials", "client_id": "zdmap",
            "client_secret": CLIENT_SECRET, "expires_in": 60}),
        )
        .await;
    assert_eq!(short.body["expires_in"], 60);
    let short = field(&short.body, "access_token");
    assert_eq!(z.get_as(&short, "/api/v2/users").await.status, 200);
    z.emu.advance_clock(Duration::from_secs(61));
    assert_eq!(z.get_as(&short, "/api/v2/users").await.status, 401);

    let stats = z.emu.oauth_stats();
    assert_eq!(stats["token_requests"]["refresh_token"], 4);
    assert_eq!(stats["refused"]["invalid_grant"], 1);
    assert_eq!(stats["expired_token_rejections"], 2);
    assert_eq!(stats["revoked_token_rejections"], 1);
    assert_eq!(
        (&stats["live_access_tokens"], &stats["live_refresh_tokens"]),
        (&json!(1), &json!(1))
    );

    // A reset forgets the tokens and counts but keeps the clients.
    let reset = z
        .http
        .post(format!("{}/__emulator/reset", z.emu.url()))
        .send()
        .await
        .expect("reset");
    assert_eq!(reset.status().as_u16(), 200);
    assert_eq!(z.get_as(&a4, "/api/v2/users").await.status, 401);
    let stats: Value = z
        .http
        .get(format!("{}/__emulator/oauth", z.emu.url()))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("JSON");
    assert_eq!(stats["token_requests"]["refresh_token"], 0);
    assert_eq!(stats["live_access_tokens"], 0);
    assert_eq!(z.chain("read").await["token_type"], "bearer");
}

#[tokio::test]
async fn item14_scopes_and_the_current_token() {
    let mut z = Z::with(oauth_options()).await;
    let token = |scope: &'static str| {
        json!({"grant_type": "client_credentials", "client_id": "zdmap",
            "client_secret": CLIENT_SECRET, "scope": scope})
    };
    let reader = field(&z.oauth_token(token("read")).await.body, "access_token");
    assert_eq!(z.get_as(&reader, "/api/v2/users").await.status, 200);
    let write = z
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
    assert_eq!(z.emu.state()["users"], json!([]), "nothing written");

    // Granular scopes: one resource, one direction.
    let tickets = field(
        &z.oauth_token(token("tickets:read")).await.body,
        "access_token",
    );
    assert_eq!(z.get_as(&tickets, "/api/v2/tickets").await.status, 200);
    assert_eq!(z.get_as(&tickets, "/api/v2/users").await.status, 403);
    assert_eq!(z.get_as(&tickets, "/api/v2/users/me").await.status, 200);
    let users = field(
        &z.oauth_token(token("users:write")).await.body,
        "access_token",
    );
    z.auth = Some(format!("Bearer {users}"));
    let upsert = z
        .post(
            "/api/v2/users/create_or_update",
            json!({"user": {"email": "w@example.com", "name": "W"}}),
        )
        .await;
    assert_eq!(upsert.status, 201, "{}", upsert.text);
    assert_eq!(z.get("/api/v2/users").await.status, 403);
    // A scope Zendesk does not know: the token is issued and grants nothing.
    let odd = z.oauth_token(token("impersonate")).await;
    assert_eq!(odd.status, 201);
    let odd = field(&odd.body, "access_token");
    assert_eq!(z.get_as(&odd, "/api/v2/users").await.status, 403);
    assert_eq!(z.emu.oauth_stats()["scope_rejections"], 4);

    // tokens/current: the token by its first characters.
    let current = z.get_as(&reader, "/api/v2/oauth/tokens/current.json").await;
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
    let again = z.get_as(&odd, "/api/v2/oauth/tokens/current").await;
    assert_eq!(
        (again.status, &again.body["token"]["scopes"]),
        (200, &json!(["impersonate"]))
    );
    assert_eq!(again.body["token"]["client_id"], t["client_id"]);

    // A bearer the emulator did not issue (open policy) reads and writes, and never expires;
    // Basic auth has no token.
    let mut open = Z::start().await;
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
async fn item14_lost_slow_and_failing_token_answers() {
    let mut z = Z::with(oauth_options()).await;
    let first = z.chain("read").await;
    let (a1, r1) = (
        field(&first, "access_token"),
        field(&first, "refresh_token"),
    );

    // The refresh is applied, its answer lost: the chain moved on without the client.
    z.config(json!({"oauth_lost_answers": 1, "lost_answer": "500"}))
        .await;
    let lost = z.refresh(&r1).await;
    assert_eq!(lost.status, 500, "{}", lost.text);
    assert!(!lost.text.contains("access_token"));
    let log = z.emu.requests();
    let entry = log.last().expect("logged");
    assert_eq!(
        (entry["status"].as_u64(), entry["lost_answer"].as_str()),
        (Some(201), Some("500"))
    );
    assert_eq!(z.refresh(&r1).await.body["error"], "invalid_grant");
    assert_eq!(z.get_as(&a1, "/api/v2/users").await.status, 401);
    assert_eq!(
        z.emu.oauth_stats()["live_refresh_tokens"],
        1,
        "the lost one"
    );
    assert_eq!(
        z.config(json!({})).await["oauth_lost_answers"],
        0,
        "used up"
    );

    // Dropped: no answer at all.
    let second = z.chain("read").await;
    z.config(json!({"oauth_lost_answers": 1, "lost_answer": "drop"}))
        .await;
    let sent = z
        .http
        .post(format!("{}/oauth/tokens", z.emu.url()))
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
        z.refresh(&field(&second, "refresh_token")).await.body["error"],
        "invalid_grant"
    );

    // A token request that fails: a forced 503, and the next one answers.
    z.config(json!({"add_forced_fault": {"status": 503, "path": "/oauth/tokens"}}))
        .await;
    let cc = json!({"grant_type": "client_credentials", "client_id": "zdmap",
        "client_secret": CLIENT_SECRET});
    let failed = z.oauth_token(cc.clone()).await;
    assert_eq!(
        (failed.status, failed.header("retry-after")),
        (503, Some("1"))
    );
    assert_eq!(z.oauth_token(cc.clone()).await.status, 201);

    // A slow token request; the API is not slowed.
    z.config(json!({"oauth_latency_ms": 300})).await;
    let started = Instant::now();
    assert_eq!(z.oauth_token(cc).await.status, 201);
    assert!(started.elapsed() >= Duration::from_millis(300));
    let started = Instant::now();
    let token = field(&z.chain("read").await, "access_token");
    assert!(started.elapsed() >= Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(z.get_as(&token, "/api/v2/users").await.status, 200);
    assert!(started.elapsed() < Duration::from_millis(300));
}

#[tokio::test]
async fn item14_the_request_log_holds_no_oauth_secret() {
    let mut z = Z::with(oauth_options()).await;
    let mut secrets = vec![CLIENT_SECRET.to_string(), VERIFIER.to_string()];
    let code = z.code("zdmap", "read write", None).await;
    secrets.push(code.clone());
    let chain = z
        .oauth_token_form(&[
            ("grant_type", "authorization_code"),
            ("client_id", "zdmap"),
            ("client_secret", CLIENT_SECRET),
            ("code", &code),
            ("redirect_uri", REDIRECT),
        ])
        .await;
    assert_eq!(chain.status, 201);
    let refreshed = z.refresh(&field(&chain.body, "refresh_token")).await;
    let pkce_code = z.code("mobile", "read", Some(CHALLENGE)).await;
    secrets.push(pkce_code.clone());
    let pkce = z
        .oauth_token(
            json!({"grant_type": "authorization_code", "client_id": "mobile",
            "code": pkce_code, "redirect_uri": REDIRECT, "code_verifier": VERIFIER}),
        )
        .await;
    let cc = z
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
    assert_eq!(z.get_as(&token, "/api/v2/users").await.status, 200);
    assert_eq!(
        z.get_as(&token, "/api/v2/oauth/tokens/current")
            .await
            .status,
        200
    );
    // Secrets sent where they do not belong are not logged either.
    let stray = format!(
        "/oauth/tokens?client_secret={CLIENT_SECRET}&refresh_token={}",
        field(&refreshed.body, "refresh_token")
    );
    z.auth = None;
    z.raw("POST", &stray, Some("not a token request"), &[])
        .await;

    let log = serde_json::to_string(&z.emu.requests()).expect("the log as JSON");
    assert_eq!(secrets.len(), 11);
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "{secret} in the log: {log}");
    }
    let entries = z.emu.requests();
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
    let config: Value = z
        .http
        .get(format!("{}/__emulator/config", z.emu.url()))
        .send()
        .await
        .expect("config")
        .json()
        .await
        .expect("JSON");
    let shown = format!("{config} {} {:?}", z.emu.oauth_stats(), oauth_options());
    assert!(!shown.contains(CLIENT_SECRET), "{shown}");
}
