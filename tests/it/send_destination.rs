//! `zdmap send --destination NAME`: one destination of `serve`'s config file, its target,
//! settings and credential variables; and a name the file does not have.

use crate::support::state::count;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use zdmap::emulator::{Emulator, EmulatorOptions};

/// `us`'s API token: its emulator takes no other credentials.
const US_TOKEN: &str = "us-api-token-5e1f";

/// A config file of two destinations, `eu` on `eu`'s emulator, `us` on `us`'s with credentials
/// of its own variables, and a source sending to both.
fn config_file(dir: &Path, eu: &Emulator, us: &Emulator) -> String {
    let mappings = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings");
    let file = dir.join("serve.yaml");
    std::fs::write(
        &file,
        format!(
            "listen: 127.0.0.1:0\n\
             mappings: {mappings}\n\
             zendesk_url: {eu}\n\
             set:\n  requests_per_minute: 0\n\
             destinations:\n  \
               eu: {{ subdomain: acme-eu }}\n  \
               us:\n    \
                 subdomain: acme-us\n    \
                 zendesk_url: \"{us}\"\n    \
                 settings: {{ requests_per_minute: 0 }}\n    \
                 credentials: {{ email_env: US_EMAIL, api_token_env: US_API_TOKEN }}\n\
             sources:\n  \
               - {{ write_key_env: TEST_WK_WEB, destinations: [eu, us] }}\n",
            mappings = mappings.display(),
            eu = eu.url(),
            us = us.url(),
        ),
    )
    .expect("write the config file");
    file.display().to_string()
}

/// `zdmap send ARGS` of the example events, in `dir`, without the ZENDESK_* variables.
fn send(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let events = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/events.ndjson");
    Command::new(env!("CARGO_BIN_EXE_zdmap"))
        .args(["send", "--no-progress"])
        .args(args)
        .arg(events)
        .current_dir(dir)
        .env_remove("ZENDESK_EMAIL")
        .env_remove("ZENDESK_API_TOKEN")
        .env_remove("ZENDESK_OAUTH_TOKEN")
        .env_remove("ZENDESK_OAUTH_CLIENT_ID")
        .env_remove("ZENDESK_OAUTH_CLIENT_SECRET")
        .env_remove("ZDMAP_TOKEN_STORE")
        .env_remove("ZDMAP_CONFIG")
        .env_remove("ZDMAP_DESTINATION")
        .env_remove("ZDMAP_MAPPINGS")
        .env_remove("ZDMAP_SET")
        .env_remove("ZDMAP_ZENDESK_URL")
        .env_remove("ZDMAP_EMULATOR")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("zdmap send")
}

async fn emulators() -> (Emulator, Emulator) {
    let eu = Emulator::start(EmulatorOptions {
        bulk_import: true,
        ..EmulatorOptions::default()
    })
    .await
    .expect("eu's emulator");
    let us = Emulator::start(EmulatorOptions {
        bulk_import: true,
        api_token: US_TOKEN.parse().ok(),
        ..EmulatorOptions::default()
    })
    .await
    .expect("us's emulator");
    (eu, us)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_one_destination_reaches_only_its_account() {
    let (eu, us) = emulators().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file(dir.path(), &eu, &us);
    let env = [
        ("TEST_WK_WEB", "wk-web-1234"),
        ("US_EMAIL", "ops@acme-us.example"),
        ("US_API_TOKEN", US_TOKEN),
    ];
    let out = send(
        dir.path(),
        &["--config", &config, "--destination", "us"],
        &env,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains(US_TOKEN), "{stderr}");
    assert_eq!(count(&us.state(), "users"), 3, "{}", us.state());
    assert_eq!(count(&us.state(), "events"), 2, "{}", us.state());
    assert_eq!(count(&eu.state(), "users"), 0, "eu's account is untouched");
    assert_eq!(count(&eu.state(), "events"), 0, "eu's account is untouched");

    // Without `us`'s credential variables its emulator refuses the placeholder: the
    // destination's names were the ones read.
    let out = send(
        dir.path(),
        &[
            "--config",
            &config,
            "--destination",
            "us",
            "--dead-letter",
            "refused.ndjson",
        ],
        &[("TEST_WK_WEB", "wk-web-1234")],
    );
    assert_ne!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The command line's target wins over the destination's: `eu`'s emulator this time,
    // found as zdmap.yaml in the working directory.
    std::fs::copy(&config, dir.path().join("zdmap.yaml")).expect("copy");
    let out = send(
        dir.path(),
        &["--destination", "eu", "--zendesk-url", &eu.url()],
        &env,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(count(&eu.state(), "users"), 3, "{}", eu.state());
}

#[test]
fn an_unknown_destination_is_refused_with_the_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("zdmap.yaml");
    std::fs::write(
        &file,
        "destinations:\n  eu: { subdomain: acme-eu }\n  us: { subdomain: acme-us }\n",
    )
    .expect("write");
    let out = send(dir.path(), &["--destination", "euu"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains(
            "zdmap.yaml: --destination euu: no such destination; did you mean `eu`? (the destinations: eu, us)"
        ),
        "{stderr}"
    );

    // A mistake of the file is said at its place, as `serve` says it.
    std::fs::write(&file, "destinations:\n  eu: { subdomian: acme-eu }\n").expect("write");
    let out = send(dir.path(), &["--destination", "eu"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains(
            "zdmap.yaml:2:9: `destinations.eu`: unknown key `subdomian`; did you mean `subdomain`?"
        ),
        "{stderr}"
    );

    // No file at all.
    std::fs::remove_file(&file).expect("remove");
    let out = send(dir.path(), &["--destination", "eu"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("no config file names it"), "{stderr}");
}
