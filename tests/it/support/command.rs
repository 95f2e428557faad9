//! The `zdmap` binary run by a test: its arguments and standard input, without the Zendesk
//! credentials of the environment the tests run in; and signals to the processes a test started.

use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// Runs `zdmap` with `args`, writes `stdin` to it and waits for it to end.
pub fn zdmap(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zdmap"))
        .args(args)
        .env_remove("ZENDESK_EMAIL")
        .env_remove("ZENDESK_API_TOKEN")
        .env_remove("ZENDESK_OAUTH_TOKEN")
        .env_remove("ZENDESK_OAUTH_CLIENT_ID")
        .env_remove("ZENDESK_OAUTH_CLIENT_SECRET")
        .env_remove("ZDMAP_TOKEN_STORE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn zdmap");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

/// Runs `zdmap` as [`zdmap`] does: its exit code (-1 for a signal), its stdout and its stderr.
pub fn run(args: &[&str], stdin: &str) -> (i32, String, String) {
    let out = zdmap(args, stdin);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `zdmap validate --format FORMAT` on the mappings directory `mappings`: as [`run`] gives it.
pub fn validate(mappings: &Path, format: &str) -> (i32, String, String) {
    let dir = mappings.to_str().expect("a UTF-8 path");
    run(&["validate", "--format", format, "--mappings", dir], "")
}

/// Sends the signal `name` (`TERM`, `HUP`) to `child`.
pub fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(ok.success(), "kill -{name}");
}
