//! The emulator driven over HTTP, a module per part of the API it emulates; each test starts
//! its own emulator in the test process, on a free port.

mod auth;
mod events;
mod faults;
mod fields;
mod inspection;
mod jobs;
mod limits;
mod memberships;
mod oauth;
mod openapi;
mod options;
mod organizations;
mod pages;
mod routes;
mod tickets;
mod users;

use base64::Engine;
use clap::Parser;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use zdmap::commands::emulator::EmulatorArgs;
use zdmap::emulator::{Emulator, EmulatorOptions};

const AGENT: &str = "agent@example.com/token:s3cr3t-token";

/// A Basic `Authorization` header of `creds` (`email/token:TOKEN` for an API token).
fn basic(creds: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(creds)
    )
}

/// An emulator plus an HTTP client that authenticates as an agent.
struct EmulatorApi {
    emu: Emulator,
    http: reqwest::Client,
    auth: Option<String>,
}

/// An answer: its status, headers and text, and the text as JSON (null when it is not).
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Value,
    text: String,
}

impl Reply {
    async fn read(resp: reqwest::Response) -> Reply {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
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

impl EmulatorApi {
    async fn start() -> EmulatorApi {
        EmulatorApi::with(EmulatorOptions::default()).await
    }

    async fn with(opts: EmulatorOptions) -> EmulatorApi {
        let emu = Emulator::start(opts).await.expect("emulator starts");
        EmulatorApi {
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
    ) -> Reply {
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
        Reply::read(rb.send().await.expect("request is answered")).await
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        let text = body.map(|b| b.to_string());
        self.raw(method, path, text.as_deref(), &[]).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> Reply {
        self.call("POST", path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Value) -> Reply {
        self.call("PUT", path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> Reply {
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

    /// Creates an organization through create_or_update and returns its id.
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
}

/// The error Zendesk names for `field` in a 422's `details` (`DuplicateValue`, `BlankValue`...).
fn error_code<'a>(body: &'a Value, field: &str) -> Option<&'a str> {
    body["details"][field][0]["error"].as_str()
}

/// `s` percent-encoded for a query string or a form body.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The emulator's flags, parsed as `zdmap emulator` parses them.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: EmulatorArgs,
}
