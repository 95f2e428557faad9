//! Writes that change nothing (`skip_unchanged` on the user and organization upserts and on
//! adding a member), through
//! `zdmap send` and `zdmap serve` to the emulator: a repeated identical identify or group call
//! costs no upsert, a changed one is sent; a skipped upsert still gives the later steps and the
//! lookups the id its first write got, after a restart too (the records are in the data
//! directory, where a preview reads them); a write that failed is never taken for one that was applied; and a duration
//! that is not one is refused at its place.

use crate::scheduler::send;
use crate::support::command;
use crate::support::http::{Metrics, post_batch};
use crate::support::mappings::{edit, mappings_copy};
use crate::support::serving::{self, KEY};
use crate::support::state::count;
use crate::support::wait::eventually;

use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use zdmap::emulator::{Emulator, EmulatorOptions};

async fn emulator() -> Emulator {
    Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator")
}

/// The requests the emulator answered to `method path` (the path without its query).
fn requests_to(emu: &Emulator, method: &str, path: &str) -> usize {
    emu.requests()
        .iter()
        .filter(|r| {
            r["method"] == method
                && r["path"]
                    .as_str()
                    .is_some_and(|p| p.split('?').next() == Some(path))
        })
        .count()
}

/// Lookups of users by external id or email, single or in bulk.
fn user_lookups(emu: &Emulator) -> usize {
    ["/api/v2/users/search", "/api/v2/users/show_many"]
        .iter()
        .map(|p| requests_to(emu, "GET", p))
        .sum()
}

fn identify(n: usize, plan: &str) -> Value {
    identify_with(n, json!({"plan": plan}))
}

/// An identify of `u1` with its email, its name and `traits`.
fn identify_with(n: usize, traits: Value) -> Value {
    let mut all = json!({"email": "u1@example.com", "name": "Ada"});
    if let (Some(all), Some(traits)) = (all.as_object_mut(), traits.as_object()) {
        all.extend(traits.clone());
    }
    json!({"type": "identify", "userId": "u1", "messageId": format!("i-{n}"), "traits": all})
}

fn group(n: usize) -> Value {
    json!({"type": "group", "groupId": "acme", "userId": "u1", "messageId": format!("g-{n}"),
           "traits": {"name": "Acme", "industry": "Computing"}})
}

const USERS: &str = "/api/v2/users/create_or_update";
const ORGANIZATIONS: &str = "/api/v2/organizations/create_or_update";
const MEMBERSHIPS: &str = "/api/v2/organization_memberships";

#[tokio::test]
async fn repeated_identical_identifies_and_group_calls_cost_no_write() {
    let emu = emulator().await;
    let dest = serving::destination(&emu, Path::new("mappings")).await;
    let company =
        |remove: bool| json!({"plan": "enterprise", "company": {"id": "acme", "remove": remove}});
    let events = vec![
        identify(0, "pro"),
        identify(1, "pro"),
        group(0),
        identify(2, "pro"),
        group(1),
        // A change is sent; the same change again is not.
        identify(3, "enterprise"),
        identify(4, "enterprise"),
        // The membership the group call added, named by an identify: the same write.
        identify_with(5, company(false)),
        // A removal is always sent, and the membership is then added again.
        identify_with(6, company(true)),
        group(2),
    ];
    let (report, letters) = send(&dest, &events, Duration::from_secs(5)).await;
    assert_eq!(report.dead_letters, 0, "{letters:?}");
    // Had a skipped upsert not given `steps.upsert.id` to the next step, that step (run when
    // the id is none) would have sent one more create_or_update per skip.
    assert_eq!(
        requests_to(&emu, "POST", USERS),
        2,
        "the first identify and the changed one"
    );
    assert_eq!(requests_to(&emu, "POST", ORGANIZATIONS), 1);
    assert_eq!(
        requests_to(&emu, "POST", MEMBERSHIPS),
        2,
        "the first group call's, and the one after the removal"
    );
    let removals = emu
        .requests()
        .iter()
        .filter(|r| r["method"] == "DELETE")
        .count();
    assert_eq!(removals, 1);
    // Users: 1, 2, 4, 5, 6; organizations: group 1 and 2; memberships: group 1, identify 5.
    assert_eq!(dest.stats.snapshot().unchanged, 9);
    let state = emu.state();
    assert_eq!(count(&state, "users"), 1);
    assert_eq!(count(&state, "memberships"), 1);
}

#[tokio::test]
async fn a_write_that_failed_is_sent_again_when_repeated() {
    let emu = emulator().await;
    let dest = serving::destination(&emu, Path::new("mappings")).await;
    let bad = |n: usize| {
        json!({"type": "identify", "userId": "u9", "messageId": format!("b-{n}"),
               "traits": {"email": "not an email", "name": "Bad"}})
    };
    let (report, _) = send(&dest, &[bad(0), bad(1)], Duration::from_secs(5)).await;
    assert_eq!(report.dead_letters, 2, "each is refused by Zendesk");
    assert_eq!(
        requests_to(&emu, "POST", USERS),
        2,
        "a refused write is never remembered as applied"
    );
    assert_eq!(dest.stats.snapshot().unchanged, 0);
}

#[tokio::test]
async fn serve_remembers_the_last_writes_and_their_ids_across_a_restart() {
    let emu = emulator().await;
    let data = tempfile::tempdir().expect("data dir");
    let server = serving::start(&emu, data.path(), serving::Setup::default()).await;
    assert_eq!(
        post_batch(&server.url(), Some(KEY), &[identify(0, "pro")]).await,
        200
    );
    eventually("the user upserted", Duration::from_secs(30), async || {
        count(&emu.state(), "users") == 1
    })
    .await;
    server.shutdown().await;
    let lookups_before = user_lookups(&emu);

    // A preview given the data directory says which write would be skipped.
    let upsert = |event: Value| {
        let dir = data.path().to_str().expect("a UTF-8 path");
        let (code, out, err) = command::run(&["preview", "--data-dir", dir], &event.to_string());
        assert_eq!(code, 0, "{err}");
        let preview: Value = serde_json::from_str(out.trim()).expect("a preview");
        preview["requests"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["step"] == "upsert").cloned())
            .expect("the upsert")
    };
    assert_eq!(upsert(identify(1, "pro"))["skipped"], "unchanged, skipped");
    assert_eq!(upsert(identify(1, "enterprise")).get("skipped"), None);

    // A new process: an empty lookup cache, the records in the data directory.
    let server = serving::start(&emu, data.path(), serving::Setup::default()).await;
    let track = json!({"type": "track", "event": "Signed In", "userId": "u1", "messageId": "t-0",
                       "properties": {"n": 1}});
    assert_eq!(
        post_batch(&server.url(), Some(KEY), &[identify(1, "pro"), track]).await,
        200
    );
    eventually("the track recorded", Duration::from_secs(30), async || {
        count(&emu.state(), "events") == 1
    })
    .await;
    let metrics = Metrics::once(&server.url(), "zdmap_unchanged_writes_skipped_total", |n| {
        n >= 1.0
    })
    .await;
    server.shutdown().await;
    assert_eq!(
        metrics.get("zdmap_unchanged_writes_skipped_total"),
        Some(1.0)
    );
    assert_eq!(
        requests_to(&emu, "POST", USERS),
        1,
        "the repeated identify was skipped"
    );
    assert_eq!(
        user_lookups(&emu),
        lookups_before,
        "the skipped upsert taught the user's id: the track looked nothing up"
    );
}

#[test]
fn a_span_that_is_not_a_duration_is_refused_at_its_place() {
    let (_tmp, dir) = mappings_copy();
    let user = dir.join("upsert_user.yaml");
    edit(&user, "skip_unchanged: 24h", "skip_unchanged: 24 hours");
    let org = dir.join("upsert_organization.yaml");
    edit(&org, "skip_unchanged: 24h", "skip_unchanged: 0h");
    let (code, out, _) = command::validate(&dir, "text");
    assert_eq!(code, 1, "{out}");
    let place = |file: &Path| {
        let line = std::fs::read_to_string(file)
            .expect("read")
            .lines()
            .position(|l| l.contains("skip_unchanged:"))
            .expect("line")
            + 1;
        format!("{}:{line}:", file.display())
    };
    for file in [&user, &org] {
        assert!(
            out.lines().any(|l| l.starts_with(&place(file))),
            "{} not located in:\n{out}",
            place(file)
        );
    }
}
