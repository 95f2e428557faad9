//! A real `nats-server` with JetStream for tests (a free loopback port, a temporary store
//! directory; stopped and started again on the same port and store), and `zdmap serve` replicas
//! on it as processes of the binary, so that `kill -9` is real. Without `nats-server` the NATS
//! tests are skipped (see [`NatsServer::start`]).
#![allow(dead_code)] // the replicas bench includes this file too, and uses part of it

use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The write key the replicas take.
pub const KEY: &str = "wk-nats-key";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Why a NATS test did not run.
pub const MISSING: &str = "nats-server is not installed (run .ci/install-nats-server)";

/// The `nats-server` binary: on the PATH, else where Debian's package puts it.
fn nats_server_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("nats-server"))
            .collect::<Vec<_>>()
    });
    on_path
        .chain([PathBuf::from("/usr/sbin/nats-server")])
        .find(|p| p.is_file())
}

/// Without `nats-server`, a NATS test says it is skipped and returns; with
/// `ZDMAP_REQUIRE_NATS=1` (as `.ci/run` sets it) it fails instead.
fn skipped() -> Option<NatsServer> {
    if std::env::var_os("ZDMAP_REQUIRE_NATS").is_some_and(|v| v == "1") {
        panic!("{MISSING}");
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("a NATS test")
        .to_owned();
    // To the process's stderr, past the test harness's capture, so that a passing run says it.
    let _ = writeln!(std::io::stderr(), "{test}: skipped: {MISSING}");
    None
}

/// A JetStream server of its own.
pub struct NatsServer {
    binary: PathBuf,
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    extra: Vec<String>,
}

impl NatsServer {
    /// A server; `None` when `nats-server` is not installed, after saying the test is skipped,
    /// so that a test begins with `let Some(server) = NatsServer::start() else { return };`.
    pub fn start() -> Option<NatsServer> {
        Self::start_with(&[])
    }

    /// With more arguments (`--auth TOKEN`, `--user U --pass P`).
    pub fn start_with(extra: &[&str]) -> Option<NatsServer> {
        let Some(binary) = nats_server_binary() else {
            return skipped();
        };
        let mut server = NatsServer {
            binary,
            child: None,
            port: free_port(),
            store: tempfile::tempdir().expect("store dir"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.run();
        Some(server)
    }

    fn run(&mut self) {
        let log = std::fs::File::create(self.store.path().join("nats-server.log")).expect("log");
        let child = Command::new(&self.binary)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops it gracefully (SIGTERM), as a restart for an upgrade does.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn start_again(&mut self) {
        self.run();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `zdmap serve` process on the NATS queue.
pub struct Replica {
    pub child: Child,
    pub url: String,
    _stdout: std::io::BufReader<std::process::ChildStdout>,
    pub log: PathBuf,
    _data: tempfile::TempDir,
}

impl Replica {
    /// Starts a replica on `nats`, delivering to `emu_url`, with `extra` arguments; its log goes
    /// to a file beside its (unused) data directory.
    pub fn start(nats: &str, emu_url: &str, extra: &[&str]) -> Replica {
        Self::start_with_env(nats, emu_url, extra, &[])
    }

    /// Like [`Replica::start`], with more environment variables.
    pub fn start_with_env(
        nats: &str,
        emu_url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Replica {
        let data = tempfile::tempdir().expect("data dir");
        let log = data.path().join("serve.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_zdmap"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--no-watch",
                "--write-key",
                KEY,
                "--mappings",
                "mappings",
                "--zendesk-url",
                emu_url,
                "--queue",
                nats,
            ])
            .arg("--data-dir")
            .arg(data.path())
            // A short lease, so a killed replica's partitions move within seconds.
            .args(if extra.contains(&"--nats-lease") {
                &[][..]
            } else {
                &["--nats-lease", "2s"][..]
            })
            .args(extra)
            .env("ZENDESK_EMAIL", "agent@example.com")
            .env("ZENDESK_API_TOKEN", "nats-test-token-secret")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
            .spawn()
            .expect("spawn zdmap serve");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        stdout.read_line(&mut first).expect("first line");
        let url = first
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_owned();
        assert!(
            url.starts_with("http://127.0.0.1:"),
            "{first}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Replica {
            child,
            url,
            _stdout: stdout,
            log,
            _data: data,
        }
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for a graceful exit; returns its log.
    pub fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().expect("wait");
        let log = self.log_text();
        assert_eq!(status.code(), Some(0), "{log}");
        log
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Replica {
    /// Kills it; when the test failed, its log's last lines go to the test's output, so a
    /// failure seen only on CI says what the replica was doing.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            println!(
                "--- the last lines of the replica at {} ---\n{tail}",
                self.url
            );
        }
    }
}

/// A TCP proxy in front of a NATS server that can be frozen: it then stops forwarding, both
/// ways, while keeping the connections open, as a network partition between a replica and NATS
/// does (nothing is refused or closed: requests just get no answer).
pub struct FreezableProxy {
    port: u16,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezableProxy {
    /// A proxy on a free loopback port to `server`.
    pub async fn start(server: &NatsServer) -> FreezableProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy listens");
        let port = listener.local_addr().expect("proxy address").port();
        let upstream = server.port;
        let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = frozen.clone();
        let task = tokio::spawn(async move {
            // Aborting the proxy drops this set, and so every connection's pipes.
            let mut pipes = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                pipes.spawn(pipe(client_read, server_write, flag.clone()));
                pipes.spawn(pipe(server_read, client_write, flag.clone()));
            }
        });
        FreezableProxy { port, frozen, task }
    }

    /// `nats://127.0.0.1:PORT` of the proxy.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops forwarding (or forwards again).
    pub fn freeze(&self, frozen: bool) {
        self.frozen
            .store(frozen, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, reading nothing and writing nothing while `frozen`.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let thawed = || async {
        while frozen.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        thawed().await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Frozen while reading: what was read is held until the thaw.
        thawed().await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
