//! `zdmap serve --config FILE` delivering to several Zendesk accounts, each an emulator: the
//! config file of its `destinations:` and `sources:` written, the server started in a directory
//! of its own (its log in a file, shown when the test fails), killed and started again on the
//! same data, and asked how far each destination got.

use super::http::Metrics;
use super::wait::eventually;
use serde_json::{Value, json};
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The write key of the source `WK_A` (the first source of the tests' files).
pub const KEY_A: &str = "wk-fleet-a-7d21";
/// The write key of the source `WK_B`.
pub const KEY_B: &str = "wk-fleet-b-93ce";

/// A destination of the file: its name, its emulator's URL and more of its keys, as YAML
/// (`filter: 'type = "identify"'`), or nothing.
pub struct Dest<'a> {
    pub name: &'a str,
    pub url: String,
    pub keys: &'a str,
}

impl<'a> Dest<'a> {
    pub fn new(name: &'a str, emu: &zdmap::emulator::Emulator) -> Dest<'a> {
        Dest {
            name,
            url: emu.url(),
            keys: "",
        }
    }

    /// With more keys of the destination (`filter: 'type = "identify"'`).
    pub fn with(mut self, keys: &'a str) -> Dest<'a> {
        self.keys = keys;
        self
    }
}

/// A config file with its data directory, for servers started (and started again) on it.
pub struct Fleet {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Fleet {
    /// A file of `destinations`, with the sources `WK_A` (its key [`KEY_A`]) feeding the
    /// destinations `a` and `WK_B` ([`KEY_B`]) feeding `b` (none when `b` is empty), and the
    /// top-level keys `top` (YAML lines) over the tests' own (no request budget, no watching,
    /// a data directory of its own).
    pub fn new(destinations: &[Dest], a: &[&str], b: &[&str], top: &str) -> Fleet {
        let dir = tempfile::tempdir().expect("tempdir");
        let mappings = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
        let mut text = format!(
            "listen: 127.0.0.1:0\n\
             data_dir: {data}\n\
             mappings: {mappings}\n\
             no_watch: true\n\
             set:\n  requests_per_minute: 0\n\
             {top}\
             destinations:\n",
            data = dir.path().join("data").display(),
            mappings = mappings.display(),
        );
        for d in destinations {
            text.push_str(&format!("  {}:\n    zendesk_url: \"{}\"\n", d.name, d.url));
            for line in d.keys.lines() {
                text.push_str(&format!("    {line}\n"));
            }
        }
        text.push_str("sources:\n");
        text.push_str(&format!(
            "  - {{ write_key_env: WK_A, destinations: [{}] }}\n",
            a.join(", ")
        ));
        if !b.is_empty() {
            text.push_str(&format!(
                "  - {{ write_key_env: WK_B, destinations: [{}] }}\n",
                b.join(", ")
            ));
        }
        let config = dir.path().join("serve.yaml");
        std::fs::write(&config, text).expect("write the config file");
        Fleet { dir, config }
    }

    /// The server's data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `zdmap serve --config FILE`, once it listens.
    pub fn start(&self) -> Served {
        let log = self.dir.path().join(format!(
            "serve-{}.log",
            std::fs::read_dir(self.dir.path()).map_or(0, Iterator::count)
        ));
        let mut child = Command::new(env!("CARGO_BIN_EXE_zdmap"))
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("WK_A", KEY_A)
            .env("WK_B", KEY_B)
            .env("ZENDESK_EMAIL", "agent@example.com")
            .env("ZENDESK_API_TOKEN", "fleet-test-token-secret")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
            .spawn()
            .expect("spawn zdmap serve");
        let mut first = String::new();
        let _ = std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut first);
        let Some(url) = first.trim().strip_prefix("zdmap serve listening on ") else {
            let _ = child.wait();
            panic!(
                "the server did not start: {first}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        Served {
            url: url.to_owned(),
            child,
            log,
        }
    }
}

/// A running `zdmap serve` of a [`Fleet`]; killed (`kill -9`) when dropped, its log's last lines
/// shown when the test failed.
pub struct Served {
    pub url: String,
    child: Child,
    log: PathBuf,
}

impl Served {
    /// `kill -9`, and waits for it to be gone.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
    }

    /// Posts `events` to `/v1/batch` with the write key `key`; they must be accepted.
    pub async fn post(&self, key: &str, events: &[Value]) {
        let status = super::http::post_batch(&self.url, Some(key), events).await;
        assert_eq!(status, 200, "the batch is accepted");
    }

    /// Posts `event` alone to its type's endpoint (`/v1/identify`...) with the write key `key`.
    pub async fn post_one(&self, key: &str, event: &Value) {
        let kind = event["type"].as_str().expect("a type");
        let answer = reqwest::Client::new()
            .post(format!("{}/v1/{kind}", self.url))
            .basic_auth(key, Some(""))
            .json(event)
            .send()
            .await
            .expect("post");
        assert_eq!(answer.status().as_u16(), 200, "{event} is accepted");
    }

    /// The queue depth of `destination` (`None` while the server does not answer).
    pub async fn depth(&self, destination: &str) -> Option<f64> {
        Metrics::read(&self.url).await.get(&format!(
            "zdmap_queue_depth{{destination=\"{destination}\"}}"
        ))
    }

    /// Waits until each of `destinations` has nothing left to deliver.
    pub async fn drained(&self, destinations: &[&str]) {
        for d in destinations {
            eventually(
                &format!("{d} has delivered everything"),
                Duration::from_secs(120),
                async || self.depth(d).await == Some(0.0),
            )
            .await;
        }
    }

    /// The server's `/readyz` body.
    pub async fn readyz(&self) -> Value {
        let (_, body) = super::http::get(&format!("{}/readyz", self.url)).await;
        serde_json::from_str(&body).unwrap_or_else(|_| json!({ "unreadable": body }))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            println!(
                "--- the last lines of the server at {} ---\n{tail}",
                self.url
            );
        }
    }
}
