//! `zdmap serve`'s config file (`--config FILE`, or `zdmap.yaml` in the working directory), its
//! `${VAR}`s, and the order of the command line, the environment and the file.

use crate::support::http::get;
use crate::support::serving::{KEY, free_port, spawn_in, stop_and_read_start};
use crate::support::state::count;
use crate::support::wait::eventually;
use serde_json::json;
use std::path::Path;
use std::time::Duration;
use zdmap::emulator::{Emulator, EmulatorOptions};

/// The shipped mappings, by an absolute path (the servers run in a directory of their own).
fn mappings() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("mappings")
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_alone_runs_the_server() {
    let emu = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let file = dir.path().join("serve.yaml");
    std::fs::write(
        &file,
        format!(
            "# where events come in and go\n\
             listen: 127.0.0.1:{port}\n\
             data_dir: ${{TEST_DATA}}/queue\n\
             mappings: {mappings}\n\
             zendesk_url: {emu}\n\
             write_key_file: ${{TEST_DATA}}/keys\n\
             no_watch: true\n\
             log_format: json\n\
             set:\n  requests_per_minute: 0\n",
            mappings = mappings(),
            emu = emu.url(),
        ),
    )
    .expect("write");
    std::fs::write(dir.path().join("keys"), format!("{KEY}\n")).expect("keys");
    let data = dir.path().display().to_string();
    let config = file.display().to_string();
    let (child, url) = spawn_in(
        dir.path(),
        &["serve", "--config", &config],
        &[("TEST_DATA", &data)],
    )
    .expect("the server starts");
    assert_eq!(url, format!("http://127.0.0.1:{port}"), "the file's listen");
    assert_eq!(get(&format!("{url}/healthz")).await.0, 200);

    let event = json!({"type": "identify", "userId": "u1", "traits": {"email": "ada@example.com"}});
    let answer = reqwest::Client::new()
        .post(format!("{url}/v1/identify"))
        .basic_auth(KEY, Some(""))
        .json(&event)
        .send()
        .await
        .expect("post");
    assert_eq!(answer.status().as_u16(), 200, "the key of write_key_file");
    eventually("the user delivered", Duration::from_secs(30), async || {
        count(&emu.state(), "users") == 1
    })
    .await;

    let start = stop_and_read_start(child);
    assert_eq!(start["zendesk"], format!("{}/", emu.url()));
    assert_eq!(start["queue"], format!("{data}/queue"));
    assert_eq!(start["budget"], "none");
    assert!(dir.path().join("queue/zdmap.sqlite3").is_file());
}

/// Starts `zdmap serve ARGS` in `dir` with `env` and gives its start line's fields.
fn start_line(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let mut all = vec!["serve"];
    all.extend_from_slice(args);
    let (child, _) = spawn_in(dir, &all, env).unwrap_or_else(|(code, e)| panic!("{code}: {e}"));
    stop_and_read_start(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_comes_before_the_environment_before_zdmap_yaml() {
    let emu = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("zdmap.yaml"),
        format!(
            "listen: 127.0.0.1:0\ndata_dir: from-file\nmappings: {}\nzendesk_url: {}\n\
             log_format: json\nno_watch: true\nset:\n  requests_per_minute: 100\n  \
             integration_name: Zendesk\n",
            mappings(),
            emu.url()
        ),
    )
    .expect("write");
    let d = dir.path();
    let shown = |name: &str| d.join(name).display().to_string();

    let start = start_line(d, &[], &[]);
    assert_eq!(
        start["queue"], "from-file",
        "zdmap.yaml, found in the working directory"
    );
    assert_eq!(start["budget"], "100 requests a minute");

    let from_env = shown("from-env");
    let env = [
        ("ZDMAP_DATA_DIR", from_env.as_str()),
        ("ZDMAP_SET", "requests_per_minute=200"),
    ];
    let start = start_line(d, &[], &env);
    assert_eq!(
        start["queue"],
        shown("from-env"),
        "the environment over the file"
    );
    assert_eq!(start["budget"], "200 requests a minute");

    let flag_dir = shown("from-flag");
    let start = start_line(
        d,
        &["--data-dir", &flag_dir, "--set", "requests_per_minute=300"],
        &env,
    );
    assert_eq!(
        start["queue"], flag_dir,
        "the command line over the environment"
    );
    assert_eq!(start["budget"], "300 requests a minute");

    // A file's target gives way to the other one given above it.
    let start = start_line(d, &["--emulator"], &[]);
    assert!(
        start["zendesk"]
            .as_str()
            .unwrap_or_default()
            .starts_with("the built-in emulator"),
        "{start}"
    );
}

#[test]
fn the_files_problems_are_said_at_their_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("zdmap.yaml");
    let run = |text: &str, env: &[(&str, &str)]| {
        std::fs::write(&file, text).expect("write");
        match spawn_in(dir.path(), &["serve"], env) {
            Ok((mut child, url)) => {
                let _ = child.kill();
                panic!("{url}: started with {text}")
            }
            Err(failed) => failed,
        }
    };
    let (code, stderr) = run("listen: 127.0.0.1:0\nwrite_key: ${TEST_NO_SUCH_KEY}\n", &[]);
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains(
            "zdmap.yaml:2:12: `write_key`: the environment variable `TEST_NO_SUCH_KEY` is not set"
        ),
        "{stderr}"
    );

    let (code, stderr) = run("listen: 127.0.0.1:0\ndata_dri: /tmp/x\n", &[]);
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("zdmap.yaml:2:1: unknown key `data_dri`; did you mean `data_dir`?"),
        "{stderr}"
    );

    let (code, stderr) = run("retry_for: soon\n", &[]);
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("zdmap.yaml:1:12: `retry_for`: invalid value 'soon'"),
        "{stderr}"
    );

    // `$${` is a literal `${`: the data directory below is named so.
    let data = dir.path().join("data").display().to_string();
    std::fs::write(
        &file,
        format!(
            "listen: 127.0.0.1:0\ndata_dir: ${{TEST_DATA}}/$${{x}}\nmappings: {}\nemulator: true\n\
             log_format: json\nno_watch: true\n",
            mappings()
        ),
    )
    .expect("write");
    let start = start_line(dir.path(), &[], &[("TEST_DATA", &data)]);
    assert_eq!(start["queue"], format!("{data}/${{x}}"));
    assert!(Path::new(&data).join("${x}").is_dir());
}
