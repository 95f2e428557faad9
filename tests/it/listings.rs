//! What `zdmap dead-letters list` prints: one line a letter whatever Zendesk's message holds,
//! and a quiet end when its reader goes away (`| head`).

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use zdmap::deliver::DeadLetter;
use zdmap::queue::{Queue, SqliteQueue};

fn letter(i: usize, message: &str) -> DeadLetter {
    DeadLetter {
        event: serde_json::json!({"type": "identify", "userId": format!("u{i}")}),
        action: Some("upsert_user".into()),
        step: "upsert".into(),
        status: Some(422),
        code: Some("RecordInvalid".into()),
        message: message.into(),
        attempts: 1,
        at: "2026-12-06T00:00:00Z".into(),
        changes: Vec::new(),
    }
}

async fn data_dir_with(letters: Vec<DeadLetter>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = SqliteQueue::open(dir.path()).expect("queue");
    queue.push(Vec::new(), letters).await.expect("push");
    queue.close();
    dir
}

fn list(dir: &std::path::Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_zdmap"))
        .args(["dead-letters", "list", "--limit", "5000", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
}

#[tokio::test]
async fn a_message_with_newlines_and_escapes_stays_on_its_line_and_inert() {
    let forged = "Email is invalid\n2026-12-06T00:00:00Z ERROR forged \u{1b}[2J\u{202e}txt.exe";
    let dir = data_dir_with(vec![letter(1, forged), letter(2, "plain")]).await;
    let output = list(dir.path()).wait_with_output().expect("list");
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).expect("utf-8");
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.lines().all(|l| l.split('\t').count() == 6),
        "columns stay columns: {text}"
    );
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{202e}'),
        "{text}"
    );
    assert!(text.contains("Email is invalid\\n2026"), "{text}");
}

#[tokio::test]
async fn a_listing_whose_reader_goes_away_ends_quietly() {
    let dir = data_dir_with((0..3000).map(|i| letter(i, "Email is invalid")).collect()).await;
    let mut child = list(dir.path());
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("a line");
    // The reader is gone (as `head -1` goes); the listing must notice and end.
    let output = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
}

#[test]
fn a_data_directory_without_zdmap_data_is_refused_not_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let typo = dir.path().join("zdmap-dta");
    let output = list(&typo).wait_with_output().expect("list");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("holds no zdmap data"), "{stderr}");
    assert!(!typo.exists(), "nothing created at the typo");
}

#[test]
fn an_unreachable_nats_queue_is_said_in_seconds_not_waited_for() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let output = Command::new(env!("CARGO_BIN_EXE_zdmap"))
        .args([
            "dead-letters",
            "list",
            "--queue",
            &format!("nats://127.0.0.1:{port}"),
        ])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("answered within 5s"), "{stderr}");
}
