//! The memory that events waiting for a record take in `zdmap serve`, with their bodies kept
//! in the queue past `--max-parked-mb` against kept in memory, and what reading a body back
//! costs.
//!
//! Criterion measures `SqliteQueue::reread` of a 30 KB event against parsing the same body
//! with `serde_json` (the baseline, in the same run). Then two `zdmap serve` processes (the
//! built binary, each on a data directory of its own, delivering to the built-in emulator)
//! take 3 000 tracks of 30 KB for users that do not exist yet, so that every one of them
//! waits: one with the default `--max-parked-mb 64`, one with a bound too large to matter.
//! Once all of them wait, the process's resident memory (VmRSS, and its peak VmHWM, from
//! /proc) is read. Run: `cargo bench --bench parked`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a bench says what it expected

use criterion::Criterion;
use serde_json::{Value, json};
use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use zdmap::emulator::{Emulator, EmulatorOptions};
use zdmap::queue::{ItemId, NewItem, Queue, SqliteQueue};

#[path = "support/allocator.rs"]
mod allocator;

const EVENTS: usize = 3_000;
const PADDING: usize = 30_000;
const KEY: &str = "wk-bench";

fn track(n: usize) -> Value {
    json!({"type": "track", "event": "Report Exported", "userId": format!("absent-{n}"),
        "messageId": format!("export-{n}"),
        "properties": {"n": n, "report": "x".repeat(PADDING)}})
}

/// `(VmRSS, VmHWM)` of process `pid`, in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn metric(url: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Starts `zdmap serve` with `--max-parked-mb mib`, posts the tracks, waits until every one
/// waits for its user; its memory then, and how many bodies wait in the queue.
async fn waiting_memory(emu: &Emulator, mib: &str) -> ((f64, f64), f64) {
    let data = tempfile::tempdir().expect("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_zdmap"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-watch",
            "--write-key",
            KEY,
        ])
        .args(["--mappings", "mappings", "--set", "requests_per_minute=0"])
        .args(["--max-parked-mb", mib, "--zendesk-url", &emu.url()])
        .arg("--data-dir")
        .arg(data.path())
        .env("ZENDESK_EMAIL", "agent@example.com")
        .env("ZENDESK_API_TOKEN", "bench-token")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("first line");
    let url = first
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_owned();
    let client = reqwest::Client::new();
    let events: Vec<Value> = (0..EVENTS).map(track).collect();
    for chunk in events.chunks(10) {
        let status = client
            .post(format!("{url}/v1/batch"))
            .basic_auth(KEY, Some(""))
            .json(&json!({ "batch": chunk }))
            .send()
            .await
            .expect("post")
            .status();
        assert!(status.is_success(), "{status}");
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let held = metric(&url, "zdmap_delivery_events_held")
            .await
            .unwrap_or(0.0);
        let running = metric(
            &url,
            "zdmap_delivery_keys_waiting{reason=\"missing_record\"}",
        )
        .await
        .unwrap_or(0.0);
        if held >= EVENTS as f64 && running >= EVENTS as f64 {
            break;
        }
        assert!(Instant::now() < deadline, "not all waiting: {held} held");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let memory = memory_mib(child.id());
    let in_queue = metric(&url, "zdmap_delivery_parked_in_queue")
        .await
        .unwrap_or(0.0);
    let _ = child.kill();
    let _ = child.wait();
    (memory, in_queue)
}

fn main() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(30)
        .measurement_time(Duration::from_secs(5));

    let dir = tempfile::tempdir().expect("dir");
    let queue = SqliteQueue::open(dir.path()).expect("queue");
    let event = track(1);
    let body = serde_json::to_string(&event).expect("body");
    rt.block_on(queue.push(
        vec![NewItem {
            event,
            partition: Some("user:absent-1".into()),
            only: None,
            force: false,
            message_id: None,
            destinations: Vec::new(),
        }],
        Vec::new(),
    ))
    .expect("push");
    let id = rt.block_on(queue.fetch(ItemId(0), 1)).expect("fetch")[0].id;
    let mut group = c.benchmark_group("parked");
    group.bench_function("parse_30kb_body_baseline", |b| {
        b.iter(|| serde_json::from_str::<Value>(&body).expect("parse"))
    });
    group.bench_function("reread_30kb_body_from_sqlite", |b| {
        b.iter(|| rt.block_on(queue.reread(id)).expect("reread"))
    });
    group.finish();

    let emu = rt
        .block_on(Emulator::start(EmulatorOptions::default()))
        .expect("emulator");
    emu.configure(|k| k.request_log_size = 0);
    for (name, mib) in [("--max-parked-mb 64", "64"), ("unbounded", "1000000")] {
        let ((rss, peak), in_queue) = rt.block_on(waiting_memory(&emu, mib));
        println!(
            "parked: {EVENTS} tracks of 30 KB waiting, {name}: VmRSS {rss:.0} MiB, VmHWM {peak:.0} MiB, {in_queue:.0} bodies in the queue"
        );
    }
}
