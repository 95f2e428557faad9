//! The admin listener of `zdmap serve`: its own address, its own token (made and kept in the
//! data directory when none is given), and no way in with a write key.

use crate::support::serving::{KEY, Killed, free_port, spawn_serve, spawn_serve_with};
use crate::support::state::ticket_created;
use crate::support::wait::eventually;
use serde_json::Value;
use std::time::Duration;

/// `GET url` with `auth` applied: the status and the JSON body (`null` when not JSON).
async fn get_json(
    url: &str,
    auth: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> (u16, Value) {
    let answer = auth(reqwest::Client::new().get(url))
        .send()
        .await
        .expect("the admin listener answers");
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

/// The admin URL once the listener on `port` answers.
async fn admin_up(port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}");
    eventually(
        "the admin listener answers",
        Duration::from_secs(30),
        async || {
            reqwest::get(format!("{url}/api/actions"))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )
    .await;
    url
}

#[tokio::test]
async fn the_admin_api_takes_only_the_admin_token_it_made_and_kept() {
    let emu = zdmap::emulator::Emulator::start(Default::default())
        .await
        .expect("emulator");
    let data = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (child, _) = spawn_serve(
        &emu.url(),
        data.path(),
        "mappings".as_ref(),
        &["--admin-listen", &listen],
    );
    let _server = Killed(child);
    let admin = admin_up(port).await;

    let kept = data.path().join("admin-token");
    let token = std::fs::read_to_string(&kept).expect("the token is kept in the data directory");
    assert_eq!(token.trim().len(), 32, "a generated token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&kept)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "only its owner reads the token file");
    }

    let actions = format!("{admin}/api/actions");
    let (status, body) = get_json(&actions, |r| r).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("admin token")),
        "{body}"
    );
    let (status, _) = get_json(&actions, |r| r.basic_auth(KEY, Some(""))).await;
    assert_eq!(status, 401, "a write key does not open the admin API");
    let (status, _) = get_json(&actions, |r| r.bearer_auth(KEY)).await;
    assert_eq!(status, 401, "nor does a write key as a bearer token");
    let (status, _) = get_json(&actions, |r| r.bearer_auth(format!("{}x", token.trim()))).await;
    assert_eq!(status, 401);

    let (status, body) = get_json(&actions, |r| r.bearer_auth(token.trim())).await;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert!(
        names.contains(&"upsert_user") && names.contains(&"create_ticket"),
        "{names:?}"
    );
    let upsert = &body["actions"][names
        .iter()
        .position(|n| *n == "upsert_user")
        .expect("listed")];
    assert_eq!(upsert["trigger"], "type = \"identify\"");
    assert_eq!(upsert["enabled"], true);
    assert_eq!(body["reload_problem"], Value::Null);
    let (status, body) = get_json(&format!("{admin}/api/status"), |r| {
        r.bearer_auth(token.trim())
    })
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["ready"].clone(), body["queued"].clone()),
        (Value::Bool(true), 0.into()),
        "{body}"
    );

    let (status, _) = get_json(&actions, |r| {
        r.bearer_auth(token.trim())
            .header("host", "attacker.example")
    })
    .await;
    assert_eq!(
        status, 403,
        "a loopback admin listener answers only to loopback names"
    );
}

#[tokio::test]
async fn an_admin_token_from_the_environment_and_a_chosen_address_that_is_taken() {
    let emu = zdmap::emulator::Emulator::start(Default::default())
        .await
        .expect("emulator");
    let data = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let token = "an-admin-token-of-the-operator";
    let (child, _) = spawn_serve_with(
        &emu.url(),
        data.path(),
        "mappings".as_ref(),
        &["--admin-listen", &listen],
        |c| {
            c.env("ZDMAP_ADMIN_TOKEN", token);
        },
    );
    let _server = Killed(child);
    let admin = admin_up(port).await;
    assert!(
        !data.path().join("admin-token").exists(),
        "a given token is not written anywhere"
    );
    let (status, _) = get_json(&format!("{admin}/api/actions"), |r| r.bearer_auth(token)).await;
    assert_eq!(status, 200);

    // A second server on the same chosen address does not start: the operator asked for it.
    let other = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zdmap"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-watch",
            "--emulator",
        ])
        .args(["--admin-listen", &listen, "--data-dir"])
        .arg(other.path())
        .env("ZDMAP_ADMIN_TOKEN", "short")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("too short"), "{stderr}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zdmap"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-watch",
            "--emulator",
        ])
        .args(["--admin-listen", &listen, "--data-dir"])
        .arg(other.path())
        .env("ZDMAP_ADMIN_TOKEN", token)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&listen), "{stderr}");
    assert!(
        !stderr.contains(token),
        "the token is never shown: {stderr}"
    );
}

/// `method url` with the admin token and a JSON body: the status and the JSON answer.
async fn call(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let answer = request.send().await.expect("the admin listener answers");
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or(Value::Null))
}

const ADMIN_TOKEN: &str = "an-admin-token-for-the-api";

#[tokio::test]
async fn the_admin_api_pages_replays_and_discards_dead_letters_and_tries_events() {
    use crate::support::serving::{Setup, start};
    use reqwest::Method;
    use serde_json::json;
    use zdmap::emulator::{Emulator, ForcedFault};

    let emu = Emulator::start(Default::default()).await.expect("emulator");
    let data = tempfile::tempdir().expect("tempdir");
    let server = start(
        &emu,
        data.path(),
        Setup {
            admin: Some(zdmap::serve::admin::AdminOptions {
                listen: "127.0.0.1:0".parse().expect("addr"),
                token: zdmap::serve::admin::AdminToken::new(ADMIN_TOKEN).expect("token"),
                required: true,
                allowed_hosts: Vec::new(),
            }),
            ..Setup::default()
        },
    )
    .await;
    let admin = server.admin_url().expect("the admin listener runs");
    emu.configure(|k| {
        k.forced_faults.push(
            ForcedFault::new(422)
                .times(2)
                .on_exact_path("/api/v2/tickets")
                .on_method("POST"),
        )
    });
    let ticket = |n: u32| {
        json!({"type": "track", "event": "Ticket Created", "userId": "u-1",
               "messageId": format!("ticket-{n}"),
               "properties": {"subject": format!("Ticket {n}"), "comment": "Broken",
                              "requester_email": "ada@example.com"}})
    };
    let answer = reqwest::Client::new()
        .post(format!("{}/v1/batch", server.url()))
        .basic_auth(KEY, Some(""))
        .json(&json!({"batch": [ticket(1), ticket(2)]}))
        .send()
        .await
        .expect("ingest");
    assert_eq!(answer.status(), 200);
    let letters = format!("{admin}/api/dead-letters");
    let all = eventually(
        "both tickets are dead letters",
        Duration::from_secs(60),
        async || {
            let (_, body) = call(Method::GET, &letters, None).await;
            (body["dead_letters"].as_array().map(Vec::len) == Some(2)).then_some(body)
        },
    )
    .await;
    assert_eq!(all["total"], 2);
    assert_eq!(all["next_cursor"], Value::Null);
    let first = &all["dead_letters"][0];
    assert_eq!(first["message_id"], "ticket-1");
    assert_eq!(first["action"], "create_ticket");
    assert_eq!(first["status"], 422);
    let (first_id, code) = (
        first["id"].as_u64().expect("id"),
        first["code"].as_str().expect("code").to_owned(),
    );

    // A page at a time, by a filter.
    let (_, page) = call(
        Method::GET,
        &format!("{letters}?code={code}&status=422&limit=1"),
        None,
    )
    .await;
    assert_eq!(page["dead_letters"][0]["message_id"], "ticket-1");
    let cursor = page["next_cursor"].as_u64().expect("more");
    let (_, page) = call(
        Method::GET,
        &format!("{letters}?code={code}&limit=1&cursor={cursor}"),
        None,
    )
    .await;
    assert_eq!(page["dead_letters"][0]["message_id"], "ticket-2");
    let (_, none) = call(Method::GET, &format!("{letters}?action=upsert_user"), None).await;
    assert_eq!(none["dead_letters"], json!([]));
    let (status, shown) = call(Method::GET, &format!("{letters}/{first_id}"), None).await;
    assert_eq!(
        (status, &shown["event"]["messageId"]),
        (200, &json!("ticket-1"))
    );
    let (status, _) = call(Method::GET, &format!("{letters}/999999"), None).await;
    assert_eq!(status, 404);
    let (status, _) = call(Method::GET, &format!("{letters}?limit=many"), None).await;
    assert_eq!(status, 400);

    // A selection must be named: an empty filter replays nothing.
    let (status, _) = call(Method::POST, &format!("{letters}/replay"), Some(json!({}))).await;
    assert_eq!(status, 400);
    let (status, replayed) =
        call(Method::POST, &format!("{letters}/{first_id}/replay"), None).await;
    assert_eq!(
        (status, &replayed["replayed"]),
        (200, &json!(1)),
        "{replayed}"
    );
    ticket_created(&emu, "Ticket 1").await;
    let (status, discarded) = call(
        Method::POST,
        &format!("{letters}/discard"),
        Some(json!({"action": "create_ticket"})),
    )
    .await;
    assert_eq!(
        (status, &discarded["discarded"]),
        (200, &json!(1)),
        "{discarded}"
    );
    let (_, left) = call(Method::GET, &letters, None).await;
    assert_eq!(left["total"], 0, "{left}");

    // The tester's routes: a preview, then the event sent through the queue.
    let (status, preview) = call(
        Method::POST,
        &format!("{admin}/api/preview"),
        Some(ticket(3)),
    )
    .await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["matched"], json!(["create_ticket"]));
    assert_eq!(preview["requests"][0]["path"], "/api/v2/tickets");
    let upsert = preview["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .find(|a| a["name"] == "upsert_user")
        .expect("listed");
    assert_eq!(upsert["matched"], false);
    assert!(
        upsert["why"]
            .as_str()
            .is_some_and(|w| w.starts_with("trigger not matched")),
        "{upsert}"
    );
    let (status, _) = call(
        Method::POST,
        &format!("{admin}/api/preview"),
        Some(json!([1])),
    )
    .await;
    assert_eq!(status, 422);
    let (status, sent) = call(
        Method::POST,
        &format!("{admin}/api/send"),
        Some(json!({"event": ticket(3)})),
    )
    .await;
    assert_eq!(
        (status, &sent["message_id"]),
        (200, &json!("ticket-3")),
        "{sent}"
    );
    ticket_created(&emu, "Ticket 3").await;
    server.shutdown().await;
}
