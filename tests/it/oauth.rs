//! Staying connected with OAuth, through `zdmap serve`, `send` and `auth` as processes, against
//! the emulator's OAuth: client credentials and refresh-token chains renewed across many token
//! lifetimes, a chain shared by two replicas on NATS, `kill -9` during refreshes, and the
//! failures that must be said once (a wrong secret, a spent chain, a lost refresh answer, a
//! missing scope). No secret may appear in anything a run writes.

use crate::support::command::signal;
use crate::support::http::{Metrics, post_batch, readyz_once};
use crate::support::mappings::{edit, mappings_copy};
use crate::support::nats;
use crate::support::serving;
use crate::support::state::count;
use crate::support::wait::eventually;

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use zdmap::emulator::{Emulator, EmulatorOptions};

const CLIENT_ID: &str = "zdmap-pipeline";
const SECRET: &str = "client-s3cr3t-7f3a9";

/// An emulator with the test's OAuth client and access tokens of `lifetime` seconds.
async fn emulator(lifetime: u64) -> Emulator {
    let emu = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator");
    configure(
        &emu,
        json!({
            "oauth_clients": [{"id": CLIENT_ID, "secret": SECRET}],
            "access_token_lifetime_secs": lifetime,
        }),
    )
    .await;
    emu
}

async fn configure(emu: &Emulator, knobs: Value) {
    let status = reqwest::Client::new()
        .post(format!("{}/__emulator/config", emu.url()))
        .json(&knobs)
        .send()
        .await
        .expect("configure")
        .status();
    assert!(status.is_success(), "{status}");
}

fn stat(emu: &Emulator, pointer: &str) -> u64 {
    emu.oauth_stats()
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} in {}", emu.oauth_stats()))
}

/// A `zdmap serve` process whose log goes to a file.
struct Serve {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Serve {
    fn start(emu: &Emulator, data: &Path, env: &[(&str, &str)]) -> Serve {
        Self::start_with(emu, data, env, Path::new("mappings"))
    }

    fn start_with(emu: &Emulator, data: &Path, env: &[(&str, &str)], mappings: &Path) -> Serve {
        let log = data.with_extension("log");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let (child, url) = serving::spawn_serve_with(&emu.url(), data, mappings, &[], |c| {
            c.env_remove("ZENDESK_EMAIL")
                .env_remove("ZENDESK_API_TOKEN")
                .envs(env.iter().copied())
                .stderr(Stdio::from(file));
        });
        Serve { child, url, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn hup(&self) {
        signal(&self.child, "HUP");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

fn client_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("ZENDESK_OAUTH_CLIENT_ID", CLIENT_ID),
        ("ZENDESK_OAUTH_CLIENT_SECRET", SECRET),
    ]
}

fn identify(n: usize) -> Value {
    json!({
        "type": "identify",
        "messageId": format!("m-{n}"),
        "userId": format!("u-{n}"),
        "traits": {"email": format!("u{n}@example.com"), "name": format!("User {n}")},
    })
}

/// Identifies of new users from `first` on, `per_second` a second for `seconds`, spread over
/// `urls` in turn; returns the next user number.
async fn steady_stream(
    urls: &[&str],
    key: &str,
    first: usize,
    seconds: u64,
    per_second: usize,
) -> usize {
    let ticks = seconds * 5;
    let per_tick = (per_second / 5).max(1);
    let mut n = first;
    let start = Instant::now();
    for tick in 0..ticks {
        let events: Vec<Value> = (n..n + per_tick).map(identify).collect();
        n += per_tick;
        let url = urls[tick as usize % urls.len()];
        assert_eq!(post_batch(url, Some(key), &events).await, 200);
        let next = start + Duration::from_millis(200 * (tick + 1));
        tokio::time::sleep_until(next.into()).await;
    }
    n
}

async fn all_delivered(emu: &Emulator, n: usize) {
    eventually(
        &format!("{n} users in the emulator"),
        Duration::from_secs(60),
        async || count(&emu.state(), "users") >= n,
    )
    .await;
}

/// `zdmap auth login` against `emu` into the store `store_args`, approved by following the URL
/// it prints (the emulator approves at once and redirects to the login's listener).
async fn login(emu: &Emulator, store_args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zdmap"))
        .args(["auth", "login", "--no-browser", "--listen", "127.0.0.1:0"])
        .args(["--client-id", CLIENT_ID, "--zendesk-url", &emu.url()])
        .args(store_args)
        .env_remove("ZENDESK_OAUTH_CLIENT_SECRET")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn login");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut url = String::new();
    let mut printed = String::new();
    while !url.starts_with("http") {
        url.clear();
        assert!(
            out.read_line(&mut url).expect("line") > 0,
            "no URL: {printed}"
        );
        printed.push_str(&url);
        url = url.trim().to_string();
    }
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    let approved = reqwest::get(&url).await.expect("approve");
    assert!(approved.status().is_success(), "{}", approved.status());
    let output = child.wait_with_output().expect("login ends");
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut out, &mut rest);
    printed.push_str(&rest);
    printed.push_str(&String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "login failed: {printed}");
    printed
}

/// The tokens in a token-store file.
fn stored(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("store");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("a whole store ({e}): {text:?}"))
}

/// Every file a run wrote under `dir` but the token store itself (queue, dead letters, logs),
/// and the emulator's request log, as text.
fn written(dir: &Path, emu: &Emulator) -> Vec<(String, String)> {
    let mut out = vec![(
        "the emulator's request log".to_string(),
        serde_json::to_string(&emu.requests()).expect("json"),
    )];
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).expect("dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().is_some_and(|n| n != "oauth-tokens.json") {
                let bytes = std::fs::read(&path).unwrap_or_default();
                out.push((
                    path.display().to_string(),
                    String::from_utf8_lossy(&bytes).into_owned(),
                ));
            }
        }
    }
    out
}

/// Every secret of a run: the client secret and the tokens seen in the store.
fn assert_no_secret(texts: &[(&str, &str)], secrets: &[String]) {
    for (what, text) in texts {
        for secret in secrets.iter().filter(|s| s.len() >= 8) {
            assert!(!text.contains(secret.as_str()), "a secret in {what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_deliver_a_steady_stream_for_ten_token_lifetimes() {
    let emu = emulator(2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let serve = Serve::start(&emu, &dir.path().join("data"), &client_env());
    let sent = steady_stream(&[&serve.url], serving::KEY, 0, 20, 10).await;
    all_delivered(&emu, sent).await;
    let metrics = Metrics::read(&serve.url).await;
    assert_eq!(metrics.get("zdmap_events_dead_lettered_total"), Some(0.0));
    assert_eq!(
        metrics.get("zdmap_events_deferred_total"),
        Some(0.0),
        "no event waited because of a token"
    );
    // About one token a lifetime (renewed a fifth to three tenths before expiry), not one a
    // request: 20 s of 2 s tokens.
    let tokens = stat(&emu, "/token_requests/client_credentials");
    assert!(
        (9..=20).contains(&tokens),
        "{tokens} token requests for {sent} events"
    );
    assert_eq!(stat(&emu, "/expired_token_rejections"), 0);
    let log = serve.log_text();
    assert!(log.contains("OAuth client credentials"), "{log}");
    assert!(log.contains("scopes cover every request"), "{log}");
    assert_no_secret(
        &[("the log", &log), ("the metrics", &metrics.0)],
        &[SECRET.to_string()],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_chain_rotates_on_every_refresh_and_keeps_delivering() {
    let emu = emulator(2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let printed = login(&emu, &["--data-dir", data.to_str().expect("utf-8")]).await;
    let store = data.join("oauth-tokens.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&store)
            .expect("store")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let serve = Serve::start(&emu, &data, &[]);
    let mut seen: Vec<String> = Vec::new();
    let watching = async {
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            let token = stored(&store)["refresh_token"]
                .as_str()
                .expect("refresh")
                .to_string();
            if seen.last() != Some(&token) {
                seen.push(token);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let urls = [serve.url.as_str()];
    let (sent, ()) = tokio::join!(steady_stream(&urls, serving::KEY, 0, 20, 10), watching);
    all_delivered(&emu, sent).await;
    assert!(
        seen.len() >= 8,
        "the refresh token changed {} times",
        seen.len() - 1
    );
    let mut distinct = seen.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), seen.len(), "a new refresh token every time");
    assert_eq!(stat(&emu, "/refused/invalid_grant"), 0);
    let metrics = Metrics::read(&serve.url).await;
    assert_eq!(metrics.get("zdmap_events_dead_lettered_total"), Some(0.0));
    assert_eq!(metrics.get("zdmap_oauth_login_needed"), Some(0.0));
    let status = Command::new(env!("CARGO_BIN_EXE_zdmap"))
        .args(["auth", "status", "--zendesk-url", &emu.url(), "--data-dir"])
        .arg(&data)
        .output()
        .expect("auth status");
    let status_text = String::from_utf8_lossy(&status.stdout).to_string()
        + &String::from_utf8_lossy(&status.stderr);
    assert!(status.status.success(), "{status_text}");
    assert!(status_text.contains("refresh-token chain"), "{status_text}");
    assert!(
        status_text.contains("scopes:      read write"),
        "{status_text}"
    );
    assert!(status_text.contains("expires at:"), "{status_text}");
    let last = stored(&store);
    seen.push(last["access_token"].as_str().expect("access").to_string());
    drop(serve);
    let files = written(dir.path(), &emu);
    let mut texts: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    texts.extend([
        ("the metrics", metrics.0.as_str()),
        ("auth status", status_text.as_str()),
        ("auth login", printed.as_str()),
    ]);
    seen.push(SECRET.to_string());
    assert_no_secret(&texts, &seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_refreshes_loses_no_event_and_leaves_a_whole_store() {
    let emu = emulator(1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    login(&emu, &["--data-dir", data.to_str().expect("utf-8")]).await;
    let store = data.join("oauth-tokens.json");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    println!("kill times drawn with seed {seed}");
    let mut state = u64::from(seed) | 1;
    let mut next = 0;
    for _ in 0..6 {
        let mut serve = Serve::start(&emu, &data, &[]);
        next = steady_stream(&[&serve.url], serving::KEY, next, 1, 20).await;
        // A random moment within the next two lifetimes: before, during or after a refresh.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        tokio::time::sleep(Duration::from_millis(200 + state % 2000)).await;
        serve.kill();
        let chain = stored(&store);
        assert!(chain["refresh_token"].is_string(), "{chain}");
    }
    let serve = Serve::start(&emu, &data, &[]);
    let login_needed = eventually(
        "delivered, or a login asked for",
        Duration::from_secs(60),
        async || {
            if count(&emu.state(), "users") >= next {
                return Some(false);
            }
            serve
                .log_text()
                .contains("must run `zdmap auth login` again")
                .then_some(true)
        },
    )
    .await;
    if login_needed {
        // The chain was lost at a kill: a person logs in again and nothing was lost meanwhile.
        login(&emu, &["--data-dir", data.to_str().expect("utf-8")]).await;
    }
    all_delivered(&emu, next).await;
    let metrics = Metrics::read(&serve.url).await;
    assert_eq!(metrics.get("zdmap_events_dead_lettered_total"), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_nats_share_one_chain_for_ten_lifetimes() {
    let Some(server) = nats::NatsServer::start() else {
        return;
    };
    let emu = emulator(2).await;
    login(&emu, &["--queue", &server.url()]).await;
    let env: &[(&str, &str)] = &[];
    let a = nats::Replica::start_with_env(
        &server.url(),
        &emu.url(),
        &["--set", "requests_per_minute=0"],
        env,
    );
    let b = nats::Replica::start_with_env(
        &server.url(),
        &emu.url(),
        &["--set", "requests_per_minute=0"],
        env,
    );
    let sent = steady_stream(&[&a.url, &b.url], nats::KEY, 0, 20, 10).await;
    all_delivered(&emu, sent).await;
    assert_eq!(
        stat(&emu, "/refused/invalid_grant"),
        0,
        "no replica spent the other's chain"
    );
    let refreshes = stat(&emu, "/token_requests/refresh_token");
    assert!(
        (9..=24).contains(&refreshes),
        "{refreshes} refreshes for two replicas in 20 s"
    );
    for replica in [&a, &b] {
        let metrics = Metrics::read(&replica.url).await;
        assert_eq!(metrics.get("zdmap_events_dead_lettered_total"), Some(0.0));
        assert_eq!(metrics.get("zdmap_oauth_invalid_grant_total"), Some(0.0));
        assert!(
            replica
                .log_text()
                .contains("refresh-token chain in the NATS key-value bucket")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_secret_is_said_once_and_the_fixed_secret_is_read_on_reload() {
    let emu = emulator(60).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "wrong-s3cr3t-value\n").expect("secret");
    let env = [
        ("ZENDESK_OAUTH_CLIENT_ID", CLIENT_ID),
        (
            "ZENDESK_OAUTH_CLIENT_SECRET_FILE",
            secret_file.to_str().expect("utf-8"),
        ),
    ];
    let serve = Serve::start(&emu, &dir.path().join("data"), &env);
    assert_eq!(
        post_batch(
            &serve.url,
            Some(serving::KEY),
            &(0..5).map(identify).collect::<Vec<_>>()
        )
        .await,
        200
    );
    let readyz = readyz_once(&serve.url, 503, "/readyz refuses").await;
    assert!(
        readyz.contains("refused the client_credentials grant")
            && readyz.contains("invalid_client"),
        "{readyz}"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let log = serve.log_text();
    let said = log
        .lines()
        .filter(|l| l.contains("refused the client_credentials grant") && l.contains("ERROR"))
        .count();
    assert_eq!(said, 1, "said {said} times:\n{log}");
    let asked = stat(&emu, "/refused/invalid_client");
    assert!(asked <= 4, "asked {asked} times in about 5 s: a loop");
    let metrics = Metrics::read(&serve.url).await;
    assert_eq!(metrics.get("zdmap_oauth_client_refused"), Some(1.0));
    assert_eq!(count(&emu.state(), "users"), 0);
    // The secret fixed in its file, and a reload: the waiting events go.
    std::fs::write(&secret_file, format!("{SECRET}\n")).expect("secret");
    serve.hup();
    all_delivered(&emu, 5).await;
    assert_eq!(
        Metrics::read(&serve.url)
            .await
            .get("zdmap_events_dead_lettered_total"),
        Some(0.0)
    );
    // One dead letter, so that the grep below reads one too.
    configure(
        &emu,
        json!({"forced_faults": [{"status": 422, "path": "/api/v2/users/create_or_update"}]}),
    )
    .await;
    assert_eq!(
        post_batch(&serve.url, Some(serving::KEY), &[identify(5)]).await,
        200
    );
    let metrics = Metrics::once(&serve.url, "zdmap_events_dead_lettered_total", |n| n == 1.0).await;
    drop(serve);
    let files = written(dir.path(), &emu);
    let mut texts: Vec<(&str, &str)> = files
        .iter()
        .filter(|(p, _)| !p.ends_with("secret"))
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    texts.extend([
        ("the metrics", metrics.0.as_str()),
        ("/readyz", readyz.as_str()),
    ]);
    assert_no_secret(
        &texts,
        &[SECRET.to_string(), "wrong-s3cr3t-value".to_string()],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_refresh_token_asks_for_a_login_once_and_loses_nothing() {
    let emu = emulator(60).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    login(&emu, &["--data-dir", data.to_str().expect("utf-8")]).await;
    let store = data.join("oauth-tokens.json");
    // Another tool refreshes the same chain: the pair in the store is spent.
    let chain = stored(&store);
    let other = reqwest::Client::new()
        .post(format!("{}/oauth/tokens", emu.url()))
        .json(&json!({"grant_type": "refresh_token", "client_id": CLIENT_ID, "refresh_token": chain["refresh_token"]}))
        .send()
        .await
        .expect("refresh");
    assert!(other.status().is_success());
    let serve = Serve::start(&emu, &data, &[]);
    assert_eq!(
        post_batch(
            &serve.url,
            Some(serving::KEY),
            &(0..5).map(identify).collect::<Vec<_>>()
        )
        .await,
        200
    );
    let readyz = readyz_once(&serve.url, 503, "/readyz asks for a login").await;
    assert!(readyz.contains("zdmap auth login"), "{readyz}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = Metrics::read(&serve.url).await;
    assert_eq!(metrics.get("zdmap_oauth_login_needed"), Some(1.0));
    let log = serve.log_text();
    let said = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("must run `zdmap auth login` again"))
        .count();
    assert_eq!(said, 1, "said {said} times:\n{log}");
    assert_eq!(
        stat(&emu, "/refused/invalid_grant"),
        1,
        "not asked again in a loop"
    );
    // `send` with the same store says so with its own exit code.
    let send = send_one(
        &emu,
        &["--token-store", store.to_str().expect("utf-8")],
        &[],
        dir.path(),
    );
    let send_err = String::from_utf8_lossy(&send.stderr).to_string();
    assert_eq!(send.status.code(), Some(77), "{send_err}");
    assert!(send_err.contains("zdmap auth login"), "{send_err}");
    // A person logs in again; the running server picks the new chain up.
    login(&emu, &["--data-dir", data.to_str().expect("utf-8")]).await;
    all_delivered(&emu, 5).await;
    let fresh = stored(&store);
    let secrets: Vec<String> = ["access_token", "refresh_token"]
        .iter()
        .flat_map(|k| [chain[k].as_str(), fresh[k].as_str()])
        .flatten()
        .map(str::to_string)
        .collect();
    assert_no_secret(
        &[
            ("the log", &serve.log_text()),
            ("/readyz", &readyz),
            ("send", &send_err),
        ],
        &secrets,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_whose_answer_was_lost_says_the_chain_is_gone_without_a_loop() {
    let emu = emulator(1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    login(&emu, &["--data-dir", data.to_str().expect("utf-8")]).await;
    configure(&emu, json!({"oauth_lost_answers": 1, "lost_answer": "500"})).await;
    let serve = Serve::start(&emu, &data, &[]);
    let _ = steady_stream(&[&serve.url], serving::KEY, 0, 3, 5).await;
    eventually("the chain said gone", Duration::from_secs(30), async || {
        serve
            .log_text()
            .contains("was lost after Zendesk had rotated them")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let refreshes = stat(&emu, "/token_requests/refresh_token");
    assert!(refreshes <= 3, "{refreshes} refreshes: a loop");
    let metrics = Metrics::read(&serve.url).await;
    assert_eq!(metrics.get("zdmap_oauth_login_needed"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_slow_token_endpoint_delays_delivery_and_loses_nothing() {
    let emu = emulator(60).await;
    configure(
        &emu,
        json!({
            "oauth_latency_ms": 300,
            "forced_faults": [{"status": 503, "count": 3, "path": "/oauth/tokens"}],
        }),
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let serve = Serve::start(&emu, &dir.path().join("data"), &client_env());
    assert_eq!(
        post_batch(
            &serve.url,
            Some(serving::KEY),
            &(0..20).map(identify).collect::<Vec<_>>()
        )
        .await,
        200
    );
    all_delivered(&emu, 20).await;
    let metrics = Metrics::read(&serve.url).await;
    assert_eq!(metrics.get("zdmap_events_dead_lettered_total"), Some(0.0));
    assert!(
        metrics
            .get("zdmap_oauth_token_requests_total{result=\"failed\"}")
            .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_scope_is_named_by_auth_check_and_at_serve_start() {
    let emu = emulator(60).await;
    let (_copy, mappings) = mappings_with_scope("read");
    let check = Command::new(env!("CARGO_BIN_EXE_zdmap"))
        .args(["auth", "check", "--zendesk-url", &emu.url(), "--mappings"])
        .arg(&mappings)
        .args(["--token-store", "/nonexistent/zdmap-oauth.json"])
        .envs(client_env())
        .output()
        .expect("auth check");
    let said = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{said}");
    assert!(said.contains("scopes:      read\n"), "{said}");
    assert!(
        said.contains("write /api/v2/users/create_or_update (action upsert_user"),
        "{said}"
    );
    assert!(said.contains("needs write or users:write"), "{said}");
    assert!(!said.contains(SECRET));
    let with_write = Command::new(env!("CARGO_BIN_EXE_zdmap"))
        .args(["auth", "check", "--zendesk-url", &emu.url()])
        .args(["--token-store", "/nonexistent/zdmap-oauth.json"])
        .envs(client_env())
        .output()
        .expect("auth check");
    assert!(
        with_write.status.success(),
        "{}",
        String::from_utf8_lossy(&with_write.stderr)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let serve = Serve::start_with(&emu, &dir.path().join("data"), &client_env(), &mappings);
    let log = eventually(
        "the scope check at start",
        Duration::from_secs(30),
        async || {
            let log = serve.log_text();
            log.contains("do not cover every request").then_some(log)
        },
    )
    .await;
    assert!(log.contains("needs write or users:write"), "{log}");
}

/// A copy of the shipped mappings whose OAuth grant asks for `scope`.
fn mappings_with_scope(scope: &str) -> (tempfile::TempDir, PathBuf) {
    let (dir, mappings) = mappings_copy();
    edit(
        &mappings.join("destination.yaml"),
        "    # scope: read write",
        &format!("    scope: {scope}"),
    );
    (dir, mappings)
}

/// `zdmap send` of one identify to `emu`, with `args` and `env`, its dead letters in `dir`.
fn send_one(
    emu: &Emulator,
    args: &[&str],
    env: &[(&str, &str)],
    dir: &Path,
) -> std::process::Output {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_zdmap"))
        .args(["send", "--no-progress", "--zendesk-url", &emu.url()])
        .args(args)
        .arg("--dead-letter")
        .arg(dir.join("dead.ndjson"))
        .env_remove("ZENDESK_OAUTH_CLIENT_ID")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn send");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(identify(99).to_string().as_bytes())
        .expect("write");
    child.wait_with_output().expect("send")
}

#[test]
fn an_api_token_warns_of_the_day_api_tokens_end() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let emu = runtime
        .block_on(Emulator::start(EmulatorOptions::default()))
        .expect("emulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let output = send_one(
        &emu,
        &[],
        &[
            ("ZENDESK_EMAIL", "agent@example.com"),
            ("ZENDESK_API_TOKEN", "api-t0ken-s3cr3t"),
        ],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stderr.matches("2027-04-30").count(), 1, "{stderr}");
    assert!(stderr.contains("Connecting to Zendesk"), "{stderr}");
    assert!(!stderr.contains("api-t0ken-s3cr3t"));
    let basic = base64::engine::general_purpose::STANDARD
        .encode("agent@example.com/token:api-t0ken-s3cr3t");
    assert!(!stderr.contains(&basic));
}
