//! The transport against a scripted HTTP server on 127.0.0.1: what each attempt's outcome means
//! (done, retry and at which scope, fatal, invalid), headers, timeouts, non-JSON bodies, and
//! dead letters written and read back.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method as HttpMethod, StatusCode, Uri};
use axum::response::{IntoResponse, Response as AxumResponse};
use base64::Engine as _;
use serde_json::{Value, json};

use zdmap::deliver::{
    Budget, Client, ClientOptions, Credentials, DeadLetter, DeadLetterWriter, Disposition,
    PauseScope, RetryPolicy, Stats, Target, Transport, TransportError, unwrap_dead_letter,
};
use zdmap::mapping::request::{Method, Request};

/// One scripted answer.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static str,
    delay: Duration,
}

fn reply(status: u16, body: &'static str) -> Reply {
    Reply {
        status,
        headers: vec![("content-type", "application/json")],
        body,
        delay: Duration::ZERO,
    }
}

/// What the server saw.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone, Default)]
struct Server {
    script: Arc<Mutex<HashMap<String, VecDeque<Reply>>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    async fn start() -> (Server, Target) {
        let server = Server::default();
        let state = server.clone();
        let app = axum::Router::new().fallback(
            move |method: HttpMethod, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move { state.answer(method, uri, headers, body).await }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (server, Target::emulator(addr))
    }

    fn script(&self, path: &str, replies: Vec<Reply>) {
        self.script
            .lock()
            .expect("lock")
            .insert(path.to_string(), replies.into());
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    async fn answer(
        &self,
        method: HttpMethod,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> AxumResponse {
        self.seen.lock().expect("lock").push(Seen {
            method: method.to_string(),
            path: uri
                .path_and_query()
                .map_or_else(String::new, |p| p.to_string()),
            headers,
            body,
        });
        let next = self
            .script
            .lock()
            .expect("lock")
            .get_mut(uri.path())
            .and_then(VecDeque::pop_front)
            .unwrap_or_else(|| reply(200, "{}"));
        if !next.delay.is_zero() {
            tokio::time::sleep(next.delay).await;
        }
        let mut response = (
            StatusCode::from_u16(next.status).expect("status"),
            next.body,
        )
            .into_response();
        for (name, value) in next.headers {
            response
                .headers_mut()
                .insert(name, value.parse().expect("header value"));
        }
        response
    }
}

fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        min_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        ..RetryPolicy::default()
    }
}

fn transport(target: Target, credentials: Credentials, timeout: Duration) -> Transport {
    let client = Client::new(
        target,
        credentials,
        ClientOptions {
            timeout,
            ..ClientOptions::default()
        },
    )
    .expect("client");
    Transport::new(
        client,
        Arc::new(Budget::unlimited()),
        fast_policy(),
        Arc::new(Stats::new()),
    )
}

fn post(path: &str, body: Value) -> Request {
    Request {
        method: Method::Post,
        path: path.into(),
        endpoint: String::new(),
        query: Default::default(),
        headers: Default::default(),
        body: Some(body),
    }
}

fn get(path: &str) -> Request {
    Request {
        method: Method::Get,
        path: path.into(),
        endpoint: String::new(),
        query: Default::default(),
        headers: Default::default(),
        body: None,
    }
}

/// Attempts `req` until an attempt is not `Retry` (at most 5): the last disposition and the
/// attempts made. (Delivery waits between attempts; the transport itself never does.)
async fn attempts(t: &Transport, req: &Request) -> (Disposition, u32) {
    let mut n = 0;
    loop {
        n += 1;
        let d = t.attempt(req, |_| false).await;
        if n == 5 || !matches!(d, Disposition::Retry { .. }) {
            return (d, n);
        }
    }
}

fn done(d: &(Disposition, u32)) -> (u16, u32) {
    match d {
        (Disposition::Done { response }, n) => (response.status, *n),
        other => panic!("expected Done, got {other:?}"),
    }
}

#[tokio::test]
async fn rate_limited_then_ok() {
    let (server, target) = Server::start().await;
    let mut limited = reply(429, "Rate limit exceeded, please wait");
    limited.headers = vec![("retry-after", "0"), ("content-type", "text/html")];
    server.script("/api/v2/users/1/events", vec![limited]);
    let t = transport(
        target,
        Credentials::api_token("a@b.co", "tok"),
        Duration::from_secs(5),
    );
    let req = post("/api/v2/users/1/events", json!({"event":{}}));
    match t.attempt(&req, |_| false).await {
        Disposition::Retry { wait, scope, .. } => {
            assert_eq!(wait, Some(Duration::ZERO));
            assert_eq!(
                scope,
                PauseScope::Destination,
                "no account headers: assume the account"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(done(&attempts(&t, &req).await), (200, 1));
    let stats = t.stats().snapshot();
    assert_eq!(stats.rate_limited, 1);
    assert_eq!(stats.requests["POST /api/v2/users/{id}/events"]["429"], 1);
    assert_eq!(stats.requests["POST /api/v2/users/{id}/events"]["200"], 1);
}

#[tokio::test]
async fn server_errors_are_retried_until_ok() {
    let (server, target) = Server::start().await;
    server.script(
        "/api/v2/users/create_or_update",
        vec![
            reply(500, ""),
            reply(500, "{}"),
            reply(201, r#"{"user":{"id":7}}"#),
        ],
    );
    let t = transport(target, Credentials::oauth("tok"), Duration::from_secs(5));
    let d = attempts(
        &t,
        &post("/api/v2/users/create_or_update", json!({"user":{}})),
    )
    .await;
    assert_eq!(done(&d), (201, 3));
    if let (Disposition::Done { response }, _) = d {
        assert_eq!(response.body, json!({"user":{"id":7}}));
    }
    assert_eq!(server.seen().len(), 3);
}

#[tokio::test]
async fn not_implemented_and_client_errors_are_not_retried() {
    let (server, target) = Server::start().await;
    server.script("/a", vec![reply(501, "")]);
    server.script(
        "/b",
        vec![reply(
            422,
            r#"{"error":"RecordInvalid","details":{"email":[{"error":"DuplicateValue","description":"taken"}]}}"#,
        )],
    );
    let t = transport(target, Credentials::oauth("tok"), Duration::from_secs(5));
    assert_eq!(done(&attempts(&t, &get("/a")).await), (501, 1));
    let d = attempts(&t, &post("/b", json!({}))).await;
    assert_eq!(done(&d), (422, 1));
    let letter = DeadLetter::from_disposition(
        json!({"type":"identify"}),
        "identify_user",
        "upsert",
        &d.0,
        d.1,
        &shipped_errors(),
    );
    assert_eq!(letter.code.as_deref(), Some("DuplicateValue"));
    assert_eq!(letter.status, Some(422));
    assert_eq!(server.seen().len(), 2);
}

/// How the shipped destination reads Zendesk's error bodies.
fn shipped_errors() -> Arc<zdmap::mapping::config::ErrorFormats> {
    zdmap::mapping::config::Config::load(std::path::Path::new("mappings"), &[])
        .expect("mappings")
        .errors
}

#[tokio::test]
async fn unauthorized_is_fatal() {
    let (server, target) = Server::start().await;
    server.script(
        "/api/v2/tickets",
        vec![reply(401, r#"{"error":"Couldn't authenticate you"}"#)],
    );
    let t = transport(
        target,
        Credentials::api_token("a@b.co", "s3cr3t"),
        Duration::from_secs(5),
    );
    match t
        .attempt(&post("/api/v2/tickets", json!({"ticket":{}})), |_| false)
        .await
    {
        fatal @ Disposition::Fatal { .. } => {
            let (status, message) = fatal.refusal(&shipped_errors()).expect("a refusal");
            assert_eq!(status, 401);
            assert!(message.contains("Couldn't authenticate you"), "{message}");
            assert!(!message.contains("s3cr3t"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test]
async fn slow_response_times_out_and_is_retried() {
    let (server, target) = Server::start().await;
    let mut slow = reply(200, "{}");
    slow.delay = Duration::from_millis(600);
    server.script("/slow", vec![slow]);
    let t = transport(
        target,
        Credentials::oauth("tok"),
        Duration::from_millis(150),
    );
    match t.attempt(&get("/slow"), |_| false).await {
        Disposition::Retry {
            last: Err(TransportError::Timeout { .. }),
            scope: PauseScope::Key,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(done(&attempts(&t, &get("/slow")).await), (200, 1));
    assert_eq!(t.stats().snapshot().requests["GET /slow"]["timeout"], 1);
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    // Bind then drop a listener to get a port nobody listens on.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let client = Client::new(
        Target::emulator(addr),
        Credentials::emulator_placeholder(),
        ClientOptions::default(),
    )
    .expect("client");
    let t = Transport::new(
        client,
        Arc::new(Budget::unlimited()),
        fast_policy(),
        Arc::new(Stats::new()),
    );
    match t.attempt(&get("/api/v2/users/1"), |_| false).await {
        Disposition::Retry {
            last: Err(e @ TransportError::Connect { .. }),
            ..
        } => assert_eq!(e.kind(), "connect"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        t.stats().snapshot().requests["GET /api/v2/users/{id}"]["connect"],
        1
    );
}

#[tokio::test]
async fn non_json_body_becomes_a_string() {
    let (server, target) = Server::start().await;
    let mut html = reply(404, "<html><body>Not here</body></html>");
    html.headers = vec![("content-type", "text/html")];
    server.script("/html", vec![html]);
    let t = transport(target, Credentials::oauth("tok"), Duration::from_secs(5));
    match t.attempt(&get("/html"), |_| false).await {
        Disposition::Done { response, .. } => {
            assert_eq!(response.status, 404);
            assert_eq!(response.body, json!("<html><body>Not here</body></html>"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn request_headers_on_the_wire() {
    let (server, target) = Server::start().await;
    server.script("/api/v2/tickets", vec![reply(503, "")]);
    let t = transport(
        target.clone(),
        Credentials::api_token("agent@acme.co", "tok123"),
        Duration::from_secs(5),
    );
    let mut create = post("/api/v2/tickets", json!({"ticket":{"subject":"Hi"}}));
    create
        .headers
        .insert("Idempotency-Key".into(), "msg-1".into());
    create.query.insert("async".into(), "a b".into());
    assert_eq!(done(&attempts(&t, &create).await), (200, 2));
    t.attempt(&get("/api/v2/users/me"), |_| false).await;

    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("agent@acme.co/token:tok123")
    );
    for s in &seen {
        assert_eq!(s.headers["authorization"], basic.as_str());
        assert_eq!(s.headers["accept"], "application/json");
        let agent = s.headers["user-agent"].to_str().expect("ascii");
        assert!(agent.starts_with("zdmap/"), "{agent}");
    }
    // Both attempts of the POST carry the same key and body.
    for s in &seen[..2] {
        assert_eq!(s.method, "POST");
        assert_eq!(s.path, "/api/v2/tickets?async=a%20b");
        assert_eq!(s.headers["content-type"], "application/json");
        assert_eq!(s.headers["idempotency-key"], "msg-1");
        let body: Value = serde_json::from_slice(&s.body).expect("json body");
        assert_eq!(body, json!({"ticket":{"subject":"Hi"}}));
    }
    assert!(!seen[2].headers.contains_key("content-type"));

    let bearer = transport(
        target,
        Credentials::oauth("oauth-tok"),
        Duration::from_secs(5),
    );
    bearer.attempt(&get("/x"), |_| false).await;
    let last = server.seen().pop().expect("seen");
    assert_eq!(last.headers["authorization"], "Bearer oauth-tok");
}

#[tokio::test]
async fn mappings_cannot_set_transport_headers_or_leave_the_host() {
    let (server, target) = Server::start().await;
    let t = transport(target, Credentials::oauth("tok"), Duration::from_secs(5));
    let mut req = get("/api/v2/users/1");
    req.headers
        .insert("Authorization".into(), "Bearer other".into());
    assert!(matches!(
        t.attempt(&req, |_| false).await,
        Disposition::Invalid {
            error: TransportError::InvalidRequest { .. }
        }
    ));
    assert!(matches!(
        t.attempt(&get("//evil.example/steal"), |_| false).await,
        Disposition::Invalid {
            error: TransportError::InvalidRequest { .. }
        }
    ));
    assert!(server.seen().is_empty());
}

#[test]
fn debug_output_holds_no_secret() {
    let creds = Credentials::api_token("a@b.co", "very-secret-token");
    let client = Client::new(
        Target::zendesk("acme").expect("subdomain"),
        creds.clone(),
        ClientOptions::default(),
    )
    .expect("client");
    for text in [format!("{creds:?}"), format!("{client:?}")] {
        assert!(!text.contains("very-secret-token"), "{text}");
    }
}

#[test]
fn dead_letters_round_trip_through_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nested/dir/dead.ndjson");
    let writer = DeadLetterWriter::open(&path).expect("open");
    let events = [
        json!({"type":"identify","userId":"u1","traits":{"email":"a@b.co"}}),
        json!({"type":"track","event":"Order Completed","userId":"u2"}),
    ];
    for (i, event) in events.iter().enumerate() {
        let letter = DeadLetter::without_response(
            event.clone(),
            "identify_user",
            format!("step{i}"),
            "could not render",
        );
        writer.write(&letter).expect("write");
    }
    drop(writer);
    // Appending keeps what was there.
    DeadLetterWriter::open(&path).expect("reopen");
    let text = std::fs::read_to_string(&path).expect("read");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    for (line, event) in lines.iter().zip(&events) {
        let value: Value = serde_json::from_str(line).expect("json line");
        assert!(
            value["dead_letter"]["at"]
                .as_str()
                .expect("at")
                .ends_with('Z')
        );
        assert_eq!(&unwrap_dead_letter(value), event);
    }
}
