//! Input and storage that once broke zdmap, through the binary and `Server::start`: JSONPaths
//! whose work explodes, path parts that move a request to another endpoint, ids that are not
//! ids, event data in metric labels, hyphenated subdomains, two servers on one data directory,
//! a damaged database, and a queue whose disk fills up while events are delivered.

use crate::support::command::{self, zdmap};
use crate::support::http::{Metrics, get, post_batch, readyz_once};
use crate::support::mappings::{edit, mappings_copy};
use crate::support::serving;

use serde_json::{Value, json};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use zdmap::emulator::{Emulator, EmulatorOptions};
use zdmap::queue::{NewItem, Queue, SqliteQueue};
use zdmap::serve::{Server, WorkerOptions};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ndjson(events: &[Value]) -> String {
    events.iter().map(|e| format!("{e}\n")).collect()
}

fn dead_letters(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a dead-letter line"))
        .collect()
}

/// `zdmap send --emulator --json` of `events`: the summary and the dead letters.
fn send(mappings: &Path, events: &[Value]) -> (Value, Vec<Value>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let letters = dir.path().join("dead.ndjson");
    let out = zdmap(
        &[
            "send",
            "--emulator",
            "--json",
            "--no-progress",
            "--set",
            "requests_per_minute=0",
            "--mappings",
            mappings.to_str().expect("utf-8 path"),
            "--dead-letter",
            letters.to_str().expect("utf-8 path"),
        ],
        &ndjson(events),
    );
    let stdout = text(&out.stdout);
    let summary = stdout
        .lines()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| panic!("a JSON summary: {stdout} {}", text(&out.stderr)));
    (summary, dead_letters(&letters))
}

#[test]
fn endpoints_in_the_summary_never_carry_event_data() {
    let (_dir, mappings) = mappings_copy();
    // A mapping that puts event data straight into a path.
    edit(
        &mappings.join("track_event.yaml"),
        "/api/v2/users/{{ resolve('user', id=zendesk_user_id, external_id=external_id, email=email) }}/events",
        "/api/v2/users/{{ external_id }}/events",
    );
    let events: Vec<Value> = (0..20)
        .map(|i| json!({"type": "track", "event": "Viewed", "userId": format!("user-{i}-secret")}))
        .collect();
    let (summary, _) = send(&mappings, &events);
    let endpoints: Vec<&String> = summary["requests"]
        .as_object()
        .expect("requests by endpoint")
        .keys()
        .collect();
    assert_eq!(endpoints, ["POST /api/v2/users/{id}/events"], "{summary}");
    assert_eq!(summary["requests_total"], 20, "{summary}");
}

#[test]
fn dot_segments_from_event_data_are_refused_per_event() {
    let (_dir, mappings) = mappings_copy();
    edit(
        &mappings.join("track_event.yaml"),
        "/api/v2/users/{{ resolve('user', id=zendesk_user_id, external_id=external_id, email=email) }}/events",
        "/api/v2/users/{{ external_id }}/events",
    );
    let moving = ["..", ".", "%2e%2E", ".%2e", "%252e%252e"];
    let events: Vec<Value> = moving
        .iter()
        .map(|id| json!({"type": "track", "event": "Viewed", "userId": id}))
        .collect();
    let (summary, letters) = send(&mappings, &events);
    assert_eq!(summary["requests_total"], 0, "nothing sent: {summary}");
    assert_eq!(letters.len(), moving.len(), "{letters:?}");
    for letter in &letters {
        let message = letter["dead_letter"]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(message.contains("would change the endpoint"), "{letter}");
    }
}

#[test]
fn a_direct_id_lookup_takes_only_positive_integers() {
    let bad = ["../../tickets", "0", "-3", "12abc", "007", "1.5"];
    let mut events: Vec<Value> = bad
        .iter()
        .map(|id| json!({"type": "track", "event": "Viewed", "context": {"zendesk_user_id": id}}))
        .collect();
    // A well-formed id is sent (the emulator has no such user: a 404, not a refusal).
    events
        .push(json!({"type": "track", "event": "Viewed", "context": {"zendesk_user_id": 424242}}));
    let (summary, letters) = send(Path::new("mappings"), &events);
    assert_eq!(
        summary["requests"]
            .as_object()
            .map(|m| m.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["POST /api/v2/users/{id}/events".to_owned()]),
        "{summary}"
    );
    assert_eq!(summary["requests_total"], 1, "{summary}");
    assert_eq!(letters.len(), bad.len() + 1, "{letters:?}");
    for letter in letters
        .iter()
        .filter(|l| l["dead_letter"]["status"].is_null())
    {
        let id = letter["event"]["context"]["zendesk_user_id"]
            .as_str()
            .unwrap_or_default();
        let message = letter["dead_letter"]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(
            message.contains(&format!("the `by: id` key {id:?}")),
            "{id}: {letter}"
        );
    }
}

fn validate(mappings: &Path) -> (i32, String) {
    let (code, out, _) = command::validate(mappings, "text");
    (code, out)
}

#[test]
fn validate_requires_a_key_form_on_direct_lookups() {
    let (_dir, mappings) = mappings_copy();
    let destination = mappings.join("destination.yaml");
    edit(
        &destination,
        "      - by: id\n        key: { type: integer, minimum: 1 }   # Zendesk ids are positive integers\n",
        "      - by: id\n",
    );
    edit(
        &destination,
        "key: { type: integer, minimum: 1 }",
        "key: { type: string, minimum: 1 }",
    );
    let (code, out) = validate(&mappings);
    assert_eq!(code, 1, "{out}");
    let text = std::fs::read_to_string(&destination).expect("read");
    let line = 1 + text
        .lines()
        .position(|l| l == "      - by: id")
        .expect("a direct lookup");
    assert!(
        out.contains(&format!(
            "destination.yaml:{line}:9: a lookup without a `request` gives its key as the value"
        )),
        "{out}"
    );
    assert!(
        out.contains("`minimum` is for `type: integer` keys"),
        "{out}"
    );
}

#[test]
fn validate_refuses_jsonpaths_whose_work_explodes_and_a_single_descent_stays_cheap() {
    let (_dir, mappings) = mappings_copy();
    let file = mappings.join("track_event.yaml");
    edit(
        &file,
        "properties: { path: $.properties, type: object, default: {} }",
        "properties: { path: \"$..*..*..*..*..*..*..*..*\", type: array }",
    );
    let (code, out) = validate(&mappings);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("track_event.yaml:23:") && out.contains("`..*` selects every node"),
        "{out}"
    );
    // `..*` alone copies every node with all it holds: refused too.
    edit(&file, "$..*..*..*..*..*..*..*..*", "$.properties..*");
    let (code, out) = validate(&mappings);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("name what to find"), "{out}");
    edit(&file, "$.properties..*", "$..a..b");
    let (code, out) = validate(&mappings);
    assert!(code == 1 && out.contains("may use `..` once"), "{out}");

    // One `..` naming what it finds, over a 30-level event within the ingest limits: each
    // node once.
    edit(&file, "$..a..b", "$.properties..b");
    assert_eq!(validate(&mappings).0, 0);
    let mut deep = json!([1, 2, 3]);
    for _ in 0..30 {
        deep = json!({"a": deep, "b": [1, 2, 3], "c": "x"});
    }
    let event = json!({"type": "track", "event": "Viewed", "userId": "u1", "properties": deep});
    let out = zdmap(
        &[
            "preview",
            "--mappings",
            mappings.to_str().expect("utf-8 path"),
        ],
        &event.to_string(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let preview: Value = serde_json::from_slice(&out.stdout).expect("a preview line");
    let selected = &preview["requests"][0]["body"]["event"]["properties"];
    assert_eq!(selected.as_array().map(Vec::len), Some(30), "{preview}");
}

#[test]
fn validate_refuses_a_repeated_list_literal_before_compiling_it() {
    // Found by fuzzing template compilation: minijinja folds this into a 46-million-item
    // string while compiling. Refused at once with its place instead.
    let (_dir, mappings) = mappings_copy();
    edit(
        &mappings.join("update_organization_membership.yaml"),
        "when: not remove",
        "when: \"[0]*6006*7731 ~ '' > 'x'\"",
    );
    let (code, out) = validate(&mappings);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("update_organization_membership.yaml:29:")
            && out.contains("a list literal cannot be repeated"),
        "{out}"
    );
}

#[test]
fn subdomains_take_hyphens_inside_the_name_only() {
    let (code, out) = {
        let o = zdmap(&["validate", "--set", "subdomain=acme-support"], "");
        (o.status.code(), text(&o.stdout))
    };
    assert_eq!(code, Some(0), "{out}");
    for good in ["acme-support", "d3v-foo"] {
        let out = zdmap(&["send", "--set", &format!("subdomain={good}")], "");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        // The subdomain is taken; what stops the run is that no credentials are set.
        assert!(!err.contains("invalid Zendesk subdomain"), "{good}: {err}");
        assert!(err.contains("ZENDESK_"), "{good}: {err}");
    }
    for bad in ["-acme", "acme-"] {
        let out = zdmap(&["send", "--set", &format!("subdomain={bad}")], "");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("invalid Zendesk subdomain"), "{bad}: {err}");
    }
}

/// `zdmap serve --emulator` on `data`, on any free port.
fn serve_command(data: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_zdmap"));
    command
        .args([
            "serve",
            "--emulator",
            "--listen",
            "127.0.0.1:0",
            "--no-watch",
        ])
        .arg("--data-dir")
        .arg(data);
    command
}

/// Starts the server and waits until it listens (its first line says where).
fn spawn_serve(data: &Path) -> std::process::Child {
    use std::io::BufRead;
    let mut child = serve_command(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn zdmap serve");
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("first line");
    assert!(first.contains("listening on http://127.0.0.1:"), "{first}");
    child
}

fn serve_once(data: &Path) -> Output {
    serve_command(data).output().expect("run zdmap serve")
}

#[test]
fn a_second_server_on_a_data_directory_stops_at_start() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut first = spawn_serve(data.path());
    let second = serve_once(data.path());
    let err = text(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(err.contains("is in use by another zdmap process"), "{err}");
    assert!(err.contains(&data.path().display().to_string()), "{err}");
    // Reading the dead letters needs no lock.
    let list = Command::new(env!("CARGO_BIN_EXE_zdmap"))
        .args(["dead-letters", "list", "--data-dir"])
        .arg(data.path())
        .output()
        .expect("run zdmap dead-letters");
    assert_eq!(list.status.code(), Some(0), "{}", text(&list.stderr));
    first.kill().expect("stop the first server");
    let _ = first.wait();
}

fn item(n: usize) -> NewItem {
    NewItem {
        force: false,
        event: ticket(n),
        partition: Some(format!("user{n}")),
        only: None,
        message_id: None,
        destinations: Vec::new(),
    }
}

fn ticket(n: usize) -> Value {
    json!({
        "type": "track", "event": "Ticket Created", "userId": format!("u-{n}"),
        "messageId": format!("ticket-msg-{n}"),
        "context": {"traits": {"email": format!("user{n}@example.com"), "name": format!("User {n}")}},
        "properties": {"subject": format!("Problem {n}"), "comment": "It broke.", "external_id": format!("T-{n}")}
    })
}

#[tokio::test]
async fn a_damaged_database_is_refused_at_start() {
    let data = tempfile::tempdir().expect("tempdir");
    {
        let queue = SqliteQueue::open(data.path()).expect("open");
        queue
            .push((0..200).map(item).collect(), Vec::new())
            .await
            .expect("push");
        queue.close();
    }
    let file = data.path().join(zdmap::queue::sqlite::DATABASE_FILE);
    let mut bytes = std::fs::read(&file).expect("read the database");
    assert!(bytes.len() > 4 * 4096, "a database of several pages");
    // Page 3 onwards: the events' pages, overwritten with garbage.
    for (i, b) in bytes[2 * 4096..4 * 4096].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    std::fs::write(&file, bytes).expect("write");
    let out = serve_once(data.path());
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is damaged"), "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");
}

/// A small tmpfs mounted for one test (CI runs as root), unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs needs root");
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).expect("create the filler");
        let chunk = vec![0u8; 64 * 1024];
        while file
            .write_all(&chunk)
            .and_then(|()| file.sync_data())
            .is_ok()
        {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A server without write keys (it listens on loopback only).
async fn start_server(emu: &Emulator, data: &Path, mappings: &Path) -> Server {
    let setup = serving::Setup {
        mappings: mappings.to_path_buf(),
        write_keys: Vec::new(),
        workers: WorkerOptions {
            poll: Duration::from_millis(50),
            wait_for_records: Duration::from_secs(1),
            ..WorkerOptions::default()
        },
        ..serving::Setup::default()
    };
    serving::start(emu, data, setup).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn endpoint_labels_in_metrics_never_carry_event_data() {
    let (_dir, mappings) = mappings_copy();
    edit(
        &mappings.join("track_event.yaml"),
        "/api/v2/users/{{ resolve('user', id=zendesk_user_id, external_id=external_id, email=email) }}/events",
        "/api/v2/users/{{ external_id }}/events",
    );
    let emu = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator");
    let data = tempfile::tempdir().expect("tempdir");
    let server = start_server(&emu, data.path(), &mappings).await;
    let url = server.url();
    let events: Vec<Value> = (0..50)
        .map(|i| json!({"type": "track", "event": "Viewed", "userId": format!("user-{i}-secret")}))
        .collect();
    assert_eq!(post_batch(&url, None, &events).await, 200);
    let text = Metrics::once(&url, "zdmap_queue_depth", |n| n == 0.0).await;
    let labels: Vec<&str> = text
        .0
        .lines()
        .filter(|l| l.starts_with("zdmap_zendesk_requests_total{"))
        .collect();
    assert!(!labels.is_empty(), "{text}");
    for line in &labels {
        assert!(
            line.contains("endpoint=\"POST /api/v2/users/{id}/events\""),
            "{line}"
        );
    }
    assert!(!text.0.contains("secret"), "{text}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_is_reported_until_writes_work_and_delivered_events_are_not_sent_again() {
    let emu = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator");
    let disk = SmallDisk::mount("8m");
    let data = disk.path().join("data");
    let server = start_server(&emu, &data, Path::new("mappings")).await;
    let url = server.url();

    // Ten events wait while Zendesk is down; then the disk fills up.
    emu.configure(|k| k.fail_rate = 1.0);
    let ten: Vec<Value> = (0..10).map(ticket).collect();
    assert_eq!(post_batch(&url, None, &ten).await, 200);
    Metrics::once(&url, "zdmap_events_deferred_total", |n| n >= 1.0).await;
    let filler = disk.fill();
    assert_eq!(post_batch(&url, None, &[ticket(10)]).await, 503);
    let (status, body) = get(&format!("{url}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("queue_write"), "{body}");
    // /healthz says the same of readiness.
    let (_, health) = get(&format!("{url}/healthz")).await;
    assert!(health.contains("\"ready\":false"), "{health}");

    // Zendesk is back: the ten are delivered while their removal from the queue cannot be
    // written. Reads keep working; readiness stays down until a write succeeds.
    emu.configure(|k| k.fail_rate = 0.0);
    Metrics::once(&url, "zdmap_events_delivered_total", |n| n == 10.0).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // several polls of the queue
    let (status, body) = get(&format!("{url}/readyz")).await;
    assert_eq!(
        status, 503,
        "a read does not clear a write's problem: {body}"
    );
    assert!(body.contains("queue_write"), "{body}");

    // Room again: the removals are written, the queue is empty and the server ready.
    std::fs::remove_file(filler).expect("free the disk");
    readyz_once(&url, 200, "ready again").await;
    assert_eq!(
        Metrics::read(&url).await.get("zdmap_queue_depth"),
        Some(0.0)
    );
    server.shutdown().await;

    // A restart sends nothing again: only a new event is delivered.
    let server = start_server(&emu, &data, Path::new("mappings")).await;
    let url = server.url();
    assert_eq!(
        Metrics::read(&url).await.get("zdmap_queue_depth"),
        Some(0.0)
    );
    assert_eq!(post_batch(&url, None, &[ticket(10)]).await, 200);
    Metrics::once(&url, "zdmap_events_delivered_total", |n| n == 1.0).await;
    assert_eq!(
        emu.state()["tickets"].as_array().map(Vec::len),
        Some(11),
        "each ticket once"
    );
    server.shutdown().await;
}
