//! The admin listener of `zdmap serve`: its own address, its own token (made and kept in the
//! data directory when none is given), and no way in with a write key.

use crate::support::serving::{KEY, Killed, free_port, spawn_serve, spawn_serve_with};
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
