//! A reload (SIGHUP) of a server whose config file names destinations: a destination added
//! starts with the events accepted after the reload, one removed stops and keeps its dead
//! letters, and a rename is refused.

use crate::support::command::{run, signal};
use crate::support::http::get;
use crate::support::serving::{free_port, spawn_in};
use crate::support::wait::eventually;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use zdmap::emulator::{Emulator, EmulatorOptions, ForcedFault};

const WEB_KEY: &str = "web-key-0123456789";
const ADMIN_TOKEN: &str = "admin-token-0123456789";

/// How many dead letters the admin API gives for `destination`.
async fn letters_at(admin: &str, destination: &str) -> u64 {
    let answer = reqwest::Client::new()
        .get(format!(
            "{admin}/api/destinations/{destination}/dead-letters"
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin API");
    assert_eq!(answer.status().as_u16(), 200, "{destination}");
    let body: Value = answer.json().await.expect("JSON");
    body["total"].as_u64().expect("total")
}

/// The emails of the users an emulator holds.
fn emails(emu: &Emulator) -> Vec<String> {
    let state = emu.state();
    let mut emails: Vec<String> = (state["users"].as_array().into_iter().flatten())
        .filter_map(|u| u["email"].as_str().map(str::to_owned))
        .collect();
    emails.sort();
    emails
}

/// The config file: the destinations named in `destinations` (`name: url`), and one source
/// of `WEB_KEY` feeding all of them.
fn write_config(file: &Path, ports: (u16, u16), data: &Path, destinations: &[(&str, &Emulator)]) {
    let (port, admin) = ports;
    let mappings = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    let mut text = format!(
        "listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:{admin}\ndata_dir: {}\nmappings: {}\n\
         no_watch: true\nset: {{requests_per_minute: 0}}\ndestinations:\n",
        data.display(),
        mappings.display()
    );
    for (name, emu) in destinations {
        text.push_str(&format!("  {name}: {{ zendesk_url: \"{}\" }}\n", emu.url()));
    }
    let names: Vec<&str> = destinations.iter().map(|(n, _)| *n).collect();
    text.push_str(&format!(
        "sources:\n  - {{ write_key_env: WK_WEB, destinations: [{}] }}\n",
        names.join(", ")
    ));
    std::fs::write(file, text).expect("write the config file");
}

async fn identify(url: &str, user: &str) {
    let answer = reqwest::Client::new()
        .post(format!("{url}/v1/identify"))
        .basic_auth(WEB_KEY, Some(""))
        .json(&json!({"userId": user, "traits": {"email": format!("{user}@example.com")}}))
        .send()
        .await
        .expect("post");
    assert_eq!(answer.status().as_u16(), 200, "{user}");
}

/// The destinations `/readyz` names, sorted.
async fn named(url: &str) -> Vec<String> {
    let (_, body) = get(&format!("{url}/readyz")).await;
    let body: Value = serde_json::from_str(&body).unwrap_or_default();
    let mut names: Vec<String> = (body["destinations"].as_object().into_iter().flatten())
        .map(|(name, _)| name.clone())
        .collect();
    names.sort();
    names
}

/// The console's dead letters pages: the first destination's by default, another's with
/// `?destination=NAME`, and a name that is none refused.
async fn console_shows_each_destinations_letters(admin: &str) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let login = client
        .post(format!("{admin}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={ADMIN_TOKEN}"))
        .send()
        .await
        .expect("login");
    let cookie = (login.headers().get("set-cookie"))
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let page = async |path: &str| {
        let answer = (client.get(format!("{admin}{path}")))
            .header("cookie", &cookie)
            .send()
            .await
            .expect("page");
        (answer.status().as_u16(), answer.text().await.expect("body"))
    };
    let (status, first) = page("/dead-letters").await;
    assert_eq!(status, 200);
    assert!(first.contains(r#"id="destination">eu<"#), "{first}");
    assert!(first.contains(r#"id="none""#), "eu has none: {first}");
    let (status, us) = page("/dead-letters?destination=us").await;
    assert_eq!(status, 200);
    assert!(us.contains(r#"id="destination">us<"#), "{us}");
    assert!(us.contains("upsert_user"), "us's letter: {us}");
    assert!(
        us.contains("/dead-letters/replay?destination=us"),
        "its forms stay on us: {us}"
    );
    assert_eq!(page("/dead-letters?destination=nope").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_removes_and_refuses_to_rename_destinations() {
    let start = || Emulator::start(EmulatorOptions::default());
    let (eu, us, ap) = (
        start().await.expect("eu"),
        start().await.expect("us"),
        start().await.expect("ap"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (file, data, port) = (
        dir.path().join("zdmap.yaml"),
        dir.path().join("data"),
        (free_port(), free_port()),
    );
    write_config(&file, port, &data, &[("eu", &eu), ("us", &us)]);
    let config = file.display().to_string();
    let (child, url) = spawn_in(
        dir.path(),
        &["serve", "--config", &config],
        &[("WK_WEB", WEB_KEY), ("ZDMAP_ADMIN_TOKEN", ADMIN_TOKEN)],
    )
    .expect("the server starts");

    // `us` refuses the first write: a dead letter of its own.
    let fault: ForcedFault = serde_json::from_value(json!({"status": 422})).expect("fault");
    us.configure(|k| k.forced_faults.push(fault));
    identify(&url, "u1").await;
    eventually("u1 at eu", Duration::from_secs(30), async || {
        emails(&eu) == ["u1@example.com"]
    })
    .await;
    let us_letters = |dir: &Path| {
        let data = dir.join("data").display().to_string();
        run(
            &[
                "dead-letters",
                "--data-dir",
                &data,
                "--destination",
                "us",
                "list",
                "--json",
            ],
            "",
        )
    };
    eventually("us's dead letter", Duration::from_secs(30), async || {
        us_letters(dir.path()).1.contains("u1")
    })
    .await;
    let admin = format!("http://127.0.0.1:{}", port.1);
    assert_eq!(
        letters_at(&admin, "us").await,
        1,
        "the admin API names the destination"
    );
    assert_eq!(letters_at(&admin, "eu").await, 0);
    console_shows_each_destinations_letters(&admin).await;

    // `us` goes, `ap` comes: only what is accepted after the reload goes to `ap`.
    write_config(&file, port, &data, &[("eu", &eu), ("ap", &ap)]);
    signal(&child, "HUP");
    eventually(
        "ap added, us removed",
        Duration::from_secs(30),
        async || named(&url).await == ["ap", "eu"],
    )
    .await;
    identify(&url, "u2").await;
    eventually("u2 at eu and ap", Duration::from_secs(30), async || {
        emails(&eu) == ["u1@example.com", "u2@example.com"] && emails(&ap) == ["u2@example.com"]
    })
    .await;
    assert!(
        emails(&us).is_empty(),
        "nothing reaches a removed destination"
    );
    let (code, listed, _) = us_letters(dir.path());
    assert_eq!(code, 0);
    assert!(
        listed.contains("u1"),
        "a removed destination keeps its dead letters: {listed}"
    );

    // A new name for `ap`'s account is refused: `ap` keeps delivering.
    std::fs::write(
        &file,
        std::fs::read_to_string(&file)
            .expect("read")
            .replace("  ap: ", "  apac: ")
            .replace("[eu, ap]", "[eu, apac]"),
    )
    .expect("rename");
    signal(&child, "HUP");
    identify(&url, "u3").await;
    eventually("u3 at ap", Duration::from_secs(30), async || {
        emails(&ap) == ["u2@example.com", "u3@example.com"]
    })
    .await;
    assert_eq!(named(&url).await, ["ap", "eu"], "the rename was refused");

    signal(&child, "TERM");
    let out = child.wait_with_output().expect("wait");
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(
        logs.contains("renaming the destination `ap` to `apac` is refused"),
        "{logs}"
    );
}
