//! Delivery and `zdmap serve` in the test process, to an emulator: the shipped mappings with no
//! request budget and quick retries, shared by the test files that deliver or start servers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use zdmap::deliver::setup::{ConnectOptions, Destination, connect};
use zdmap::deliver::{RetryPolicy, TargetOverride};
use zdmap::emulator::Emulator;
use zdmap::mapping::config::{Config, Source};
use zdmap::serve::ingest::WriteKeys;
use zdmap::serve::{IngestOptions, ServeOptions, Server, WorkerOptions};

/// The write key test servers take.
pub const KEY: &str = "wk-test-key";

/// The setting that lifts zdmap's own request budget.
pub const UNLIMITED: &str = "requests_per_minute=0";

/// Retries after 10 ms, backing off to 200 ms.
pub fn quick_retries() -> ConnectOptions {
    ConnectOptions {
        retry: RetryPolicy {
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(200),
            ..RetryPolicy::default()
        },
        ..ConnectOptions::default()
    }
}

/// Delivery to `emu` with the mappings of `mappings` and no request budget.
pub async fn destination(emu: &Emulator, mappings: &Path) -> Destination {
    destination_with(emu, mappings, quick_retries()).await
}

/// [`destination`], connected with `options` (its retries, say).
pub async fn destination_with(
    emu: &Emulator,
    mappings: &Path,
    options: ConnectOptions,
) -> Destination {
    let config = Config::load(mappings, &[UNLIMITED.to_owned()]).expect("mappings load");
    let target = TargetOverride {
        zendesk_url: Some(emu.url()),
        emulator: false,
    };
    connect(Arc::new(config), &target, options)
        .await
        .expect("connect")
}

/// How a test server runs; the default suits most tests.
pub struct Setup {
    pub mappings: PathBuf,
    pub write_keys: Vec<String>,
    pub watch: bool,
    pub workers: WorkerOptions,
    pub ingest: IngestOptions,
    /// How delivery connects: [`quick_retries`] by default.
    pub connect: ConnectOptions,
    /// The admin listener: none by default.
    pub admin: Option<zdmap::serve::admin::AdminOptions>,
    /// The delivery log: on by default, as in `zdmap serve`.
    pub journal: Option<zdmap::queue::journal::JournalOptions>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            mappings: "mappings".into(),
            write_keys: vec![KEY.to_owned()],
            watch: false,
            workers: WorkerOptions {
                concurrency: 4,
                poll: Duration::from_millis(100),
                wait_for_records: Duration::from_millis(500),
                ..WorkerOptions::default()
            },
            ingest: IngestOptions::default(),
            connect: quick_retries(),
            admin: None,
            journal: Some(zdmap::queue::journal::JournalOptions::default()),
        }
    }
}

/// A server on a free loopback port, storing in `data`, delivering to `emu`.
pub async fn start(emu: &Emulator, data: &Path, setup: Setup) -> Server {
    let dest = destination_with(emu, &setup.mappings, setup.connect).await;
    let options = ServeOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: data.to_path_buf(),
        nats: None,
        write_keys: WriteKeys::from_args_and_env(&setup.write_keys, None),
        workers: setup.workers,
        config: Source {
            mappings: setup.mappings,
            set: vec![UNLIMITED.to_owned()],
            routing: Default::default(),
        },
        watch: setup.watch,
        log_events: false,
        shutdown_timeout: Duration::from_secs(10),
        ingest: setup.ingest,
        admin: setup.admin,
        journal: setup.journal,
    };
    Server::start(options, dest).await.expect("server starts")
}

/// Starts `zdmap serve` as a process and reads its URL from the first line it prints.
pub fn spawn_serve(
    emu_url: &str,
    data: &Path,
    mappings: &Path,
    extra: &[&str],
) -> (std::process::Child, String) {
    spawn_serve_with(emu_url, data, mappings, extra, |_| {})
}

/// Like [`spawn_serve`], with the command changed by `adjust` (its environment) before it runs.
pub fn spawn_serve_with(
    emu_url: &str,
    data: &Path,
    mappings: &Path,
    extra: &[&str],
    adjust: impl FnOnce(&mut std::process::Command),
) -> (std::process::Child, String) {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut command = Command::new(env!("CARGO_BIN_EXE_zdmap"));
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-watch",
            "--set",
            "requests_per_minute=0",
            "--write-key",
            KEY,
        ])
        .arg("--zendesk-url")
        .arg(emu_url)
        .arg("--data-dir")
        .arg(data)
        .arg("--mappings")
        .arg(mappings)
        .args(extra)
        .env("ZENDESK_EMAIL", "agent@example.com")
        .env("ZENDESK_API_TOKEN", "serve-test-token-secret")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    adjust(&mut command);
    let mut child = command.spawn().expect("spawn zdmap serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut first = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut first)
        .expect("first line");
    let url = first
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{first}");
    (child, url)
}

/// A server process killed (`kill -9`) when dropped; it may already have exited.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The variables of the environment the tests run in that would choose for a `zdmap serve`
/// started by a test: they are removed, so a test sets only those it means.
const CHOOSING_VARS: [&str; 15] = [
    "ZDMAP_CONFIG",
    "ZDMAP_LISTEN",
    "ZDMAP_DATA_DIR",
    "ZDMAP_MAPPINGS",
    "ZDMAP_QUEUE",
    "ZDMAP_SET",
    "ZDMAP_WRITE_KEYS",
    "ZDMAP_ZENDESK_URL",
    "ZDMAP_LOG_FORMAT",
    "ZDMAP_TOKEN_STORE",
    "ZDMAP_ADMIN_LISTEN",
    "ZDMAP_ADMIN_TOKEN",
    "ZDMAP_ADMIN_TOKEN_FILE",
    "ZENDESK_EMAIL",
    "ZENDESK_API_TOKEN",
];

/// `zdmap ARGS` started in `dir` with only the variables `env` of those that choose (see
/// [`CHOOSING_VARS`]); its URL once it says it listens, or its exit code and standard error
/// when it stops first.
pub fn spawn_in(
    dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<(std::process::Child, String), (i32, String)> {
    use std::io::{BufRead, Read};
    use std::process::{Command, Stdio};
    let mut command = Command::new(env!("CARGO_BIN_EXE_zdmap"));
    command.current_dir(dir).args(args);
    for var in CHOOSING_VARS {
        command.env_remove(var);
    }
    command
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn zdmap");
    let stdout = child.stdout.take().expect("stdout");
    let mut first = String::new();
    let _ = std::io::BufReader::new(stdout).read_line(&mut first);
    match first.trim().strip_prefix("zdmap serve listening on ") {
        Some(url) => Ok((child, url.to_owned())),
        None => {
            let mut stderr = String::new();
            let _ = child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut stderr);
            let code = child.wait().expect("wait").code().unwrap_or(-1);
            Err((code, stderr))
        }
    }
}

/// Stops a server started with `--log-format json` (SIGTERM) and gives the fields of its
/// `zdmap serve started` line.
pub fn stop_and_read_start(child: std::process::Child) -> serde_json::Value {
    super::command::signal(&child, "TERM");
    let out = child.wait_with_output().expect("wait");
    let logs = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{logs}");
    logs.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|l| l["fields"].clone())
        .find(|f| f["message"] == "zdmap serve started")
        .unwrap_or_else(|| panic!("no start line in {logs}"))
}

/// A loopback port free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
