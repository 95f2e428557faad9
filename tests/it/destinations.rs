//! `zdmap serve --config FILE` with two destinations, `eu` and `us`, each an emulator of its
//! own: which write key feeds which, a destination's filter and Segment's `integrations`, a
//! `kill -9` in the middle of delivering to both, dead letters and metrics by destination, and
//! one account down while the other keeps delivering.

use crate::support::command::run;
use crate::support::fleet::{Dest, Fleet, KEY_A, KEY_B};
use crate::support::http::Metrics;
use crate::support::state::{count, each_ticket_once, event_numbers};
use crate::support::wait::eventually;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use zdmap::emulator::{Emulator, EmulatorOptions, ForcedFault};
use zdmap::queue::DeadLetterStore;

/// An emulator with bulk user imports on and a request log long enough for a test.
async fn emulator() -> Emulator {
    let emu = Emulator::start(EmulatorOptions {
        bulk_import: true,
        ..EmulatorOptions::default()
    })
    .await
    .expect("emulator");
    emu.configure(|k| k.request_log_size = 100_000);
    emu
}

/// An emulator holding the user `id` (external id `user`), for tracks that name it.
async fn emulator_with_user(id: u64, user: &str) -> Emulator {
    let emu = Emulator::start(EmulatorOptions {
        seed_json: Some(json!({"users": [
            {"id": id, "name": "Busy", "email": format!("{user}@example.com"), "external_id": user}
        ]})),
        ..EmulatorOptions::default()
    })
    .await
    .expect("emulator");
    emu.configure(|k| k.request_log_size = 100_000);
    emu
}

fn identify(user: &str, name: &str, id: &str) -> Value {
    json!({"type": "identify", "userId": user, "messageId": id,
        "traits": {"email": format!("{user}@example.com"), "name": name}})
}

/// `user`'s track numbered `n` (its `properties.n`).
fn track(user: &str, n: u64) -> Value {
    json!({"type": "track", "event": "Viewed", "userId": user,
        "messageId": format!("{user}-view-{n}"), "properties": {"n": n}})
}

/// A track of the user with the Zendesk id `id` (no lookup needed), numbered `n`.
fn track_of(id: u64, n: u64) -> Value {
    json!({"type": "track", "event": "Viewed", "userId": "busy", "messageId": format!("view-{n}"),
        "context": {"zendesk_user_id": id}, "properties": {"n": n}})
}

/// A ticket, its external id `T-{n}`.
fn ticket(n: u64) -> Value {
    json!({"type": "track", "event": "Ticket Created", "userId": format!("t{n}"),
        "messageId": format!("ticket-{n}"),
        "context": {"traits": {"email": format!("t{n}@example.com")}},
        "properties": {"subject": format!("Problem {n}"), "comment": "It broke.",
            "external_id": format!("T-{n}")}})
}

/// The `properties.n` of each user's events as the emulator recorded them (in the order they
/// came), by the user's external id.
fn tracks_by_user(emu: &Emulator) -> BTreeMap<String, Vec<u64>> {
    let state = emu.state();
    let external: BTreeMap<String, String> = (state["users"].as_array().into_iter().flatten())
        .map(|u| {
            let id = u["id"].to_string();
            (id, u["external_id"].as_str().unwrap_or("-").to_owned())
        })
        .collect();
    let mut by_user: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in state["events"].as_array().into_iter().flatten() {
        let user = external.get(e["user_id"].as_str().unwrap_or_default());
        let user = user.cloned().unwrap_or_else(|| format!("{}", e["user_id"]));
        by_user
            .entry(user)
            .or_default()
            .push(e["properties"]["n"].as_u64().expect("numbered"));
    }
    by_user
}

/// How many upserts of each user (by external id) the emulator took, alone or in a bulk
/// request.
fn upserts_by_user(emu: &Emulator) -> BTreeMap<String, usize> {
    let mut by_user: BTreeMap<String, usize> = BTreeMap::new();
    for r in emu.requests() {
        let ok = r["status"]
            .as_u64()
            .is_some_and(|s| (200..300).contains(&s));
        if r["method"] != "POST" || !ok {
            continue;
        }
        let users: Vec<&Value> = match r["path"].as_str() {
            Some("/api/v2/users/create_or_update") => vec![&r["body"]["user"]],
            Some("/api/v2/users/create_or_update_many") => r["body"]["users"]
                .as_array()
                .into_iter()
                .flatten()
                .collect(),
            _ => continue,
        };
        for u in users {
            let id = u["external_id"].as_str().unwrap_or("-").to_owned();
            *by_user.entry(id).or_default() += 1;
        }
    }
    by_user
}

/// Each user's name in the emulator, by external id.
fn names(emu: &Emulator) -> BTreeMap<String, String> {
    (emu.state()["users"].as_array().into_iter().flatten())
        .map(|u| {
            let id = u["external_id"].as_str().unwrap_or("-").to_owned();
            (id, u["name"].as_str().unwrap_or_default().to_owned())
        })
        .collect()
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn tracks(pairs: &[(&str, std::ops::Range<u64>)]) -> BTreeMap<String, Vec<u64>> {
    pairs
        .iter()
        .map(|(k, r)| (k.to_string(), r.clone().collect()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_destinations_fed_by_one_key_each_get_every_event_once_in_order_and_a_third_key_reaches_one()
 {
    let (eu, us) = (emulator().await, emulator().await);
    let fleet = Fleet::new(
        &[Dest::new("eu", &eu), Dest::new("us", &us)],
        &["eu", "us"],
        &["eu"],
        "",
    );
    let server = fleet.start();

    // Key A: three users, each named, tracked four times and renamed; some of it one call at
    // a time, the rest in batches that interleave the users.
    for u in ["a0", "a1", "a2"] {
        server
            .post_one(
                KEY_A,
                &identify(u, &format!("{u} first"), &format!("{u}-id-0")),
            )
            .await;
    }
    server.post_one(KEY_A, &track("a0", 0)).await;
    let mut batch = Vec::new();
    for n in 0..4 {
        for u in ["a0", "a1", "a2"] {
            if (u, n) != ("a0", 0) {
                batch.push(track(u, n));
            }
        }
    }
    server.post(KEY_A, &batch[..5]).await;
    server.post(KEY_A, &batch[5..]).await;
    let renames: Vec<Value> = ["a0", "a1", "a2"]
        .iter()
        .map(|u| identify(u, &format!("{u} second"), &format!("{u}-id-1")))
        .collect();
    server.post(KEY_A, &renames).await;
    // Key B: two users of `eu` alone.
    let mut of_b = Vec::new();
    for u in ["b0", "b1"] {
        of_b.push(identify(u, &format!("{u} only"), &format!("{u}-id-0")));
        of_b.extend((0..3).map(|n| track(u, n)));
    }
    server.post(KEY_B, &of_b[..4]).await;
    for e in &of_b[4..] {
        server.post_one(KEY_B, e).await;
    }

    server.drained(&["eu", "us"]).await;

    let eu_upserts = counts(&[("a0", 2), ("a1", 2), ("a2", 2), ("b0", 1), ("b1", 1)]);
    assert_eq!(upserts_by_user(&eu), eu_upserts, "eu: each identify once");
    assert_eq!(
        tracks_by_user(&eu),
        tracks(&[
            ("a0", 0..4),
            ("a1", 0..4),
            ("a2", 0..4),
            ("b0", 0..3),
            ("b1", 0..3)
        ]),
        "eu: each track once, each user's in the order sent"
    );
    let eu_names = names(&eu);
    assert_eq!(eu_names.len(), 5, "{eu_names:?}");
    assert_eq!(eu_names["a1"], "a1 second", "the rename came last");
    assert_eq!(eu_names["b0"], "b0 only");

    let us_upserts = counts(&[("a0", 2), ("a1", 2), ("a2", 2)]);
    assert_eq!(
        upserts_by_user(&us),
        us_upserts,
        "us: A's identifies once each, none of B's"
    );
    assert_eq!(
        tracks_by_user(&us),
        tracks(&[("a0", 0..4), ("a1", 0..4), ("a2", 0..4)]),
        "us: A's tracks once each, in order; none of B's"
    );
    let us_names = names(&us);
    assert_eq!(
        us_names.keys().collect::<Vec<_>>(),
        ["a0", "a1", "a2"],
        "{us_names:?}"
    );
    assert_eq!(us_names["a2"], "a2 second");
    assert!(
        !us.requests()
            .iter()
            .any(|r| r.to_string().contains("b0@example.com")
                || r.to_string().contains("b1@example.com")),
        "us was never asked about B's users"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_filter_and_integrations_narrow_what_a_destination_receives() {
    let (eu, us) = (emulator().await, emulator().await);
    let fleet = Fleet::new(
        &[
            Dest::new("eu", &eu),
            Dest::new("us", &us).with("filter: 'type = \"identify\"'"),
        ],
        &["eu", "us"],
        &[],
        "",
    );
    let server = fleet.start();
    let with = |mut event: Value, integrations: Value| {
        event["integrations"] = integrations;
        event
    };
    let events = vec![
        // Both.
        identify("both", "Both", "i-both"),
        // A track: `us`'s filter keeps it from `us`, even named there.
        track("both", 0),
        with(track("both", 1), json!({"us": true})),
        // Named off for `us`.
        with(identify("eu-only", "Eu", "i-eu-only"), json!({"us": false})),
        // All off but `eu`.
        with(
            identify("eu-named", "Eu", "i-eu-named"),
            json!({"All": false, "eu": true}),
        ),
        // All off but `US` (names match as Segment's do, whatever the case).
        with(
            identify("us-named", "Us", "i-us-named"),
            json!({"All": false, "US": true}),
        ),
        // Off for the integration, and so for every destination not named.
        with(
            identify("nowhere", "No", "i-nowhere"),
            json!({"Zendesk": false}),
        ),
        with(
            identify("us-over-zendesk", "Us", "i-us-over-zendesk"),
            json!({"Zendesk": false, "us": true}),
        ),
    ];
    server.post(KEY_A, &events).await;
    server.drained(&["eu", "us"]).await;

    let eu_users: Vec<String> = names(&eu).into_keys().collect();
    assert_eq!(eu_users, ["both", "eu-named", "eu-only"], "eu's users");
    assert_eq!(
        tracks_by_user(&eu),
        tracks(&[("both", 0..2)]),
        "eu took the tracks"
    );
    let us_users: Vec<String> = names(&us).into_keys().collect();
    assert_eq!(
        us_users,
        ["both", "us-named", "us-over-zendesk"],
        "us's users"
    );
    assert_eq!(
        count(&us.state(), "events"),
        0,
        "us's filter keeps tracks out"
    );
    assert!(
        !us.requests()
            .iter()
            .any(|r| r["path"].as_str().is_some_and(|p| p.ends_with("/events"))),
        "us was never sent a track"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_during_delivery_to_two_destinations_nothing_is_lost_or_sent_twice() {
    const USER: u64 = 7001;
    const TRACKS: u64 = 200;
    const TICKETS: u64 = 30;
    let eu = emulator_with_user(USER, "busy").await;
    let us = emulator_with_user(USER, "busy").await;
    for emu in [&eu, &us] {
        emu.configure(|k| k.latency_ms = 20);
    }
    let fleet = Fleet::new(
        &[Dest::new("eu", &eu), Dest::new("us", &us)],
        &["eu", "us"],
        &[],
        "",
    );
    let mut first = fleet.start();
    // One user's tracks (each a write that is not idempotent, one after the other) and tickets
    // of other users beside them.
    let mut events: Vec<Value> = (0..TRACKS).map(|n| track_of(USER, n)).collect();
    events.extend((0..TICKETS).map(ticket));
    for chunk in events.chunks(50) {
        first.post(KEY_A, chunk).await;
    }
    eventually(
        "delivery under way to both",
        Duration::from_secs(60),
        async || count(&eu.state(), "events") >= 20 && count(&us.state(), "events") >= 20,
    )
    .await;
    first.kill();
    let before = (count(&eu.state(), "events"), count(&us.state(), "events"));
    assert!(
        before.0 < TRACKS as usize && before.1 < TRACKS as usize,
        "the kill came with a backlog for both: {before:?}"
    );

    let second = fleet.start();
    second.drained(&["eu", "us"]).await;
    for (name, emu) in [("eu", &eu), ("us", &us)] {
        assert_eq!(
            event_numbers(&emu.state()),
            (0..TRACKS).collect::<Vec<_>>(),
            "{name}: each track once"
        );
        each_ticket_once(&emu.state(), TICKETS as usize);
        let store = DeadLetterStore::open_for(&fleet.data(), name).expect("dead letters");
        assert_eq!(
            store.count().expect("count"),
            0,
            "{name}: nothing dead-lettered"
        );
    }
    // The one user's tracks kept their order across the kill (a track sent again after it is
    // one whose write may have left, found by its marker, not recorded twice).
    for (name, emu) in [("eu", &eu), ("us", &us)] {
        assert_eq!(
            tracks_by_user(emu)["busy"],
            (0..TRACKS).collect::<Vec<_>>(),
            "{name}: in order"
        );
    }
}

/// `zdmap dead-letters --data-dir DATA --destination NAME ARGS`: its exit code and output.
fn dead_letters(data: &std::path::Path, name: &str, args: &[&str]) -> (i32, String, String) {
    let data = data.display().to_string();
    let mut all = vec!["dead-letters", "--data-dir", &data, "--destination", name];
    all.extend_from_slice(args);
    run(&all, "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_dead_letters_name_their_destination_and_a_replay_reaches_only_its_own() {
    let (eu, us) = (emulator().await, emulator().await);
    // `eu`'s account refuses the first ticket.
    eu.configure(|k| {
        k.forced_faults
            .push(ForcedFault::new(422).on_exact_path("/api/v2/tickets"));
    });
    let fleet = Fleet::new(
        &[Dest::new("eu", &eu), Dest::new("us", &us)],
        &["eu", "us"],
        &[],
        "",
    );
    let server = fleet.start();
    server.post(KEY_A, &[ticket(1)]).await;

    Metrics::once(
        &server.url,
        "zdmap_events_dead_lettered_total{destination=\"eu\"}",
        |n| n == 1.0,
    )
    .await;
    server.drained(&["eu", "us"]).await;
    let metrics = Metrics::read(&server.url).await;
    assert_eq!(
        metrics.get("zdmap_events_dead_lettered_total{destination=\"eu\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metrics.get("zdmap_events_dead_lettered_total{destination=\"us\"}"),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        metrics.get("zdmap_events_delivered_total{destination=\"us\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(count(&us.state(), "tickets"), 1, "us took the ticket");
    assert_eq!(count(&eu.state(), "tickets"), 0, "eu refused it");
    let readyz = server.readyz().await;
    let named: Vec<&String> = readyz["destinations"]
        .as_object()
        .map(|d| d.keys().collect())
        .unwrap_or_default();
    assert_eq!(named, ["eu", "us"], "{readyz}");

    let (code, listed, stderr) = dead_letters(&fleet.data(), "eu", &["list"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.contains("create_ticket/create\t422"), "{listed}");
    let (code, listed, stderr) = dead_letters(&fleet.data(), "us", &["list"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(listed, "", "us has no dead letter");
    assert!(stderr.contains("0 dead letter(s) shown, 0 in"), "{stderr}");

    // The fault was the account's one refusal: a replay for `eu` reaches `eu` alone.
    let us_requests = us.requests().len();
    let (code, out, stderr) = dead_letters(&fleet.data(), "eu", &["replay", "--all"]);
    assert_eq!(code, 0, "{out}{stderr}");
    eventually(
        "eu takes the replayed ticket",
        Duration::from_secs(30),
        async || count(&eu.state(), "tickets") == 1,
    )
    .await;
    server.drained(&["eu", "us"]).await;
    each_ticket_once(&eu.state(), 1);
    assert_eq!(
        us.requests().len(),
        us_requests,
        "us was asked nothing more"
    );
    each_ticket_once(&us.state(), 1);
    let metrics = Metrics::read(&server.url).await;
    assert_eq!(
        metrics.get("zdmap_events_delivered_total{destination=\"eu\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metrics.get("zdmap_events_delivered_total{destination=\"us\"}"),
        Some(1.0),
        "{metrics}"
    );
    let (code, listed, stderr) = dead_letters(&fleet.data(), "eu", &["list"]);
    assert_eq!((code, listed.as_str()), (0, ""), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_destination_down_does_not_hold_up_the_other_and_catches_up() {
    let (eu, us) = (emulator().await, emulator().await);
    // `eu`'s account answers 503 to everything.
    eu.configure(|k| {
        k.forced_faults
            .push(ForcedFault::new(503).times(u32::MAX).retry_after(1));
    });
    let fleet = Fleet::new(
        &[Dest::new("eu", &eu), Dest::new("us", &us)],
        &["eu", "us"],
        &[],
        "",
    );
    let server = fleet.start();
    let users = ["d0", "d1", "d2", "d3"];
    let mut events: Vec<Value> = users
        .iter()
        .map(|u| identify(u, u, &format!("{u}-id")))
        .collect();
    for n in 0..5 {
        events.extend(users.iter().map(|u| track(u, n)));
    }
    events.extend((0..10).map(ticket));
    for chunk in events.chunks(10) {
        server.post(KEY_A, chunk).await;
    }

    // `us` delivers everything while `eu` is down.
    server.drained(&["us"]).await;
    let five = tracks(&[("d0", 0..5), ("d1", 0..5), ("d2", 0..5), ("d3", 0..5)]);
    assert_eq!(tracks_by_user(&us), five, "us: every track once, in order");
    each_ticket_once(&us.state(), 10);
    assert!(
        server.depth("eu").await.is_some_and(|d| d > 0.0),
        "eu still has its events"
    );
    assert_eq!(count(&eu.state(), "users"), 0, "eu is down");
    assert!(
        eu.requests().iter().any(|r| r["status"] == 503),
        "eu was tried"
    );

    // `eu` recovers and catches up, nothing lost.
    eu.configure(|k| k.forced_faults.clear());
    server.drained(&["eu"]).await;
    assert_eq!(tracks_by_user(&eu), five, "eu: every track once, in order");
    each_ticket_once(&eu.state(), 10);
    assert_eq!(count(&eu.state(), "users"), 4 + 10, "eu: every user");
    assert_eq!(
        tracks_by_user(&us),
        five,
        "us: nothing more after eu's recovery"
    );
    for name in ["eu", "us"] {
        let store = DeadLetterStore::open_for(&fleet.data(), name).expect("dead letters");
        assert_eq!(
            store.count().expect("count"),
            0,
            "{name}: nothing dead-lettered"
        );
    }
}
