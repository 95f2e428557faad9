//! One destination down, the other's delivery as it is alone: `zdmap serve` in this process
//! delivers to two destinations, `a` and `b` (each its own built-in emulator with no rate limit,
//! batching on as by default), fed by one write key, its queue SQLite in a temp dir. A steady
//! stream (ten users' sessions at a time, one identify then four tracks each, a 10-event
//! `/v1/batch` every 100 ms: 100 events/s for each destination) runs for the outage window
//! twice, each time to a fresh server and emulators: once with both emulators healthy
//! ("alone"), once with `a`'s answering 503 (with `Retry-After: 1`, as Zendesk does when it is
//! unavailable) to every request for the whole window ("a down"). Each time it measures `b`'s
//! accept → delivered time of every event (the server's own figure, from its `event delivered`
//! debug line: from the ingest taking the request, before its 200, to `b`'s emulator having
//! answered the event's last write) and the ingest's answer time of every post. Then `a`
//! recovers: the time until it has delivered every event, and both emulators are checked to
//! have every event exactly once (each user once, each track's marker once); the bench panics
//! otherwise. It reports `b`'s median and p95 alone and with `a` down, their ratios within each
//! round, `a`'s catch-up time and the counts, and the medians of the rounds.
//!
//! A `harness = false` main rather than criterion: each round is a scenario over minutes (a
//! window of a minute by default, twice, then a catch-up), not a piece of code to sample.
//!
//! `ZDMAP_BENCH_OUTAGE_SECS` sets the window (60 s), `ZDMAP_BENCH_ROUNDS` the rounds (3).
//! `ZDMAP_BENCH_FAULT=5xx` makes `a`'s emulator answer 500 or 503 without `Retry-After` instead
//! (a gateway in front of the account failing): then each of `a`'s events backs off on its own,
//! up to a minute, rather than the destination pausing as `Retry-After` says.
//! Run: `cargo bench --bench destinations`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a bench says what it expected

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use zdmap::deliver::Secret;
use zdmap::emulator::{Emulator, EmulatorOptions, ForcedFault};
use zdmap::serve::ingest::WriteKeys;
use zdmap::serve::{Server, Shared, WorkerOptions};

#[path = "support/allocator.rs"]
mod allocator;
#[path = "support/delivered.rs"]
mod delivered;
#[path = "support/emulated.rs"]
mod emulated;

use delivered::{DeliveredTimes, rank};

const KEY: &str = "bench-key";
/// Users whose sessions run side by side: each post carries one event of each.
const USERS_AT_ONCE: usize = 10;
/// A user's session: an identify, then this many tracks less one.
const SESSION: usize = 5;
/// One post every this long (10 events: 100 events/s).
const TICK: Duration = Duration::from_millis(100);
/// The outage window, unless `ZDMAP_BENCH_OUTAGE_SECS` says otherwise.
const OUTAGE_SECS: u64 = 60;
/// Rounds (each: alone, then a down), unless `ZDMAP_BENCH_ROUNDS` says how many.
const ROUNDS: usize = 3;
/// Longer than this for a destination to settle what it has is a failure of the bench.
const SETTLE_LIMIT: Duration = Duration::from_secs(600);

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// How `a`'s emulator fails while it is down.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// 503 with `Retry-After: 1` (the default).
    RetryAfter,
    /// 500 or 503 without `Retry-After` (`ZDMAP_BENCH_FAULT=5xx`).
    Plain,
}

fn fault() -> Fault {
    match std::env::var("ZDMAP_BENCH_FAULT").as_deref() {
        Ok("5xx") => Fault::Plain,
        _ => Fault::RetryAfter,
    }
}

/// The posts of a window of `seconds`: groups of `USERS_AT_ONCE` users, `SESSION` posts a
/// group, post `k` of a group carrying event `k` of each of its users' sessions.
fn stream(seconds: u64) -> Vec<Vec<u8>> {
    let posts = (seconds as usize * 1000 / TICK.as_millis() as usize).div_ceil(SESSION) * SESSION;
    (0..posts)
        .map(|p| {
            let (group, k) = (p / SESSION, p % SESSION);
            let batch: Vec<serde_json::Value> = (0..USERS_AT_ONCE)
                .map(|i| {
                    let u = group * USERS_AT_ONCE + i;
                    if k == 0 {
                        serde_json::json!({
                            "type": "identify", "userId": format!("u-{u}"), "messageId": format!("m-{u}-0"),
                            "traits": {"email": format!("user{u}@example.com"), "name": format!("User {u}"), "plan": "pro"}
                        })
                    } else {
                        serde_json::json!({
                            "type": "track", "event": "Order Completed", "userId": format!("u-{u}"),
                            "messageId": format!("m-{u}-{k}"),
                            "properties": {"order_id": format!("o-{u}-{k}"), "total": 42.5, "currency": "EUR"}
                        })
                    }
                })
                .collect();
            serde_json::to_vec(&serde_json::json!({ "batch": batch })).expect("body")
        })
        .collect()
}

/// Posts `body`; its answer time.
async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Duration {
    let started = Instant::now();
    let answer = client
        .post(format!("{url}/v1/batch"))
        .basic_auth(KEY, Some(""))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("posted");
    assert!(answer.status().is_success(), "{}", answer.status());
    started.elapsed()
}

/// Events a destination has settled (delivered, skipped or dead-lettered).
fn settled(shared: &Shared) -> u64 {
    let m = &shared.metrics;
    m.delivered.load(Ordering::Relaxed)
        + m.skipped.load(Ordering::Relaxed)
        + m.dead_lettered.load(Ordering::Relaxed)
}

/// Waits until `shared` has settled `events`; how long that took.
async fn settled_all(shared: &Shared, events: u64) -> Duration {
    let started = Instant::now();
    while settled(shared) < events {
        assert!(
            started.elapsed() < SETTLE_LIMIT,
            "destination {} settled {} of {events} events in {SETTLE_LIMIT:?}",
            shared.destination,
            settled(shared)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

/// Checks that `emu` has each of `users` users once and each of their tracks once; panics
/// naming what is lost or doubled.
fn check_exactly_once(name: &str, emu: &Emulator, users: usize) {
    let state = emu.state();
    let mut seen_users: HashMap<String, usize> = HashMap::new();
    for user in state["users"].as_array().expect("users") {
        if let Some(id) = user["external_id"].as_str() {
            *seen_users.entry(id.to_owned()).or_default() += 1;
        }
    }
    let mut seen_tracks: HashMap<String, usize> = HashMap::new();
    for event in state["events"].as_array().expect("events") {
        if let Some(marker) = event["properties"]["zdmap_marker"].as_str() {
            *seen_tracks.entry(marker.to_owned()).or_default() += 1;
        }
    }
    let mut wrong = Vec::new();
    for u in 0..users {
        let n = seen_users.get(&format!("u-{u}")).copied().unwrap_or(0);
        if n != 1 {
            wrong.push(format!("user u-{u} {n} times"));
        }
        for k in 1..SESSION {
            let marker = format!("m-{u}-{k}:track_event");
            let n = seen_tracks.get(&marker).copied().unwrap_or(0);
            if n != 1 {
                wrong.push(format!("track {marker} {n} times"));
            }
        }
    }
    let extra_users = seen_users.len().saturating_sub(users);
    let extra_tracks = seen_tracks.len().saturating_sub(users * (SESSION - 1));
    assert!(
        wrong.is_empty() && extra_users == 0 && extra_tracks == 0,
        "destination {name}: {} wrong ({}), {extra_users} users and {extra_tracks} tracks not posted",
        wrong.len(),
        wrong
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// What one window measured.
struct Window {
    /// `b`'s accept → delivered times (ms), sorted.
    b: Vec<u64>,
    /// The ingest's answer times of the posts (ms), sorted.
    posts: Vec<f64>,
    /// Events posted (each for both destinations).
    events: u64,
    /// With `a` down: the requests `a`'s emulator was sent meanwhile, the events waiting for
    /// `a` when it recovered, and the time from then until `a` had settled every event.
    outage: Option<Outage>,
}

struct Outage {
    requests: u64,
    waiting: u64,
    catch_up: Duration,
}

/// One window of `seconds` to a fresh server and emulators, `a`'s emulator answering 503 to
/// every request throughout when `a_down`.
async fn window(a_down: bool, seconds: u64, times: &DeliveredTimes) -> Window {
    let emu_a = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator a");
    let emu_b = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator b");
    let outlets = vec![
        emulated::outlet("a", &emu_a, WorkerOptions::default()).await,
        emulated::outlet("b", &emu_b, WorkerOptions::default()).await,
    ];
    let mut keys = WriteKeys::default();
    keys.add_source(Secret::new(KEY), vec!["a".to_owned(), "b".to_owned()]);
    let data = tempfile::tempdir().expect("temp");
    let server = Server::start_outlets(emulated::serve_options(data.path(), keys), outlets)
        .await
        .expect("server");
    let destinations = server.destinations();
    let of = |name: &str| -> Arc<Shared> {
        destinations
            .iter()
            .find(|d| d.destination == name)
            .expect("destination")
            .clone()
    };
    let (a, b) = (of("a"), of("b"));
    if a_down {
        emu_a.configure(|k| match fault() {
            Fault::RetryAfter => k.forced_faults = vec![ForcedFault::new(503).times(u32::MAX)],
            Fault::Plain => k.fail_rate = 1.0,
        });
    }
    let a_requests_before = a.stats.snapshot().requests_total;

    let url = server.url();
    let client = reqwest::Client::new();
    let bodies = stream(seconds);
    let users = bodies.len() / SESSION * USERS_AT_ONCE;
    let events = (bodies.len() * USERS_AT_ONCE) as u64;
    times.take_each();
    let mut tick = tokio::time::interval(TICK);
    let mut posts = tokio::task::JoinSet::new();
    for body in bodies {
        tick.tick().await;
        let (client, url) = (client.clone(), url.clone());
        posts.spawn(async move { post(&client, &url, body).await });
    }
    let mut answered: Vec<f64> = posts
        .join_all()
        .await
        .into_iter()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    answered.sort_by(f64::total_cmp);
    settled_all(&b, events).await;
    let mut b_times: Vec<u64> = times
        .take_each()
        .into_iter()
        .filter(|(d, _)| d.as_deref() == Some("b"))
        .map(|(_, ms)| ms)
        .collect();
    b_times.sort_unstable();
    assert_eq!(b_times.len() as u64, events, "b delivered every event");

    let outage = if a_down {
        assert_eq!(settled(&a), 0, "a settled nothing while down");
        let requests = a.stats.snapshot().requests_total - a_requests_before;
        let waiting = events - settled(&a);
        emu_a.configure(|k| {
            k.forced_faults.clear();
            k.fail_rate = 0.0;
        });
        let catch_up = settled_all(&a, events).await;
        Some(Outage {
            requests,
            waiting,
            catch_up,
        })
    } else {
        settled_all(&a, events).await;
        None
    };
    for (name, shared, emu) in [("a", &a, &emu_a), ("b", &b, &emu_b)] {
        let m = &shared.metrics;
        assert_eq!(
            (
                m.delivered.load(Ordering::Relaxed),
                m.skipped.load(Ordering::Relaxed),
                m.dead_lettered.load(Ordering::Relaxed)
            ),
            (events, 0, 0),
            "destination {name}: delivered, skipped, dead-lettered"
        );
        check_exactly_once(name, emu, users);
    }
    server.shutdown().await;
    emu_a.shutdown().await;
    emu_b.shutdown().await;
    Window {
        b: b_times,
        posts: answered,
        events,
        outage,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn quantile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(i).copied().unwrap_or(0.0)
}

fn mean(values: &[u64]) -> f64 {
    values.iter().sum::<u64>() as f64 / values.len().max(1) as f64
}

/// One round's figures: `b`'s median, p95 and mean alone and with `a` down (ms; the server
/// counts whole milliseconds, the mean shows less than one), the posts' answer times (ms), and
/// `a`'s catch-up (s).
struct Round {
    alone: (f64, f64, f64),
    down: (f64, f64, f64),
    posts_alone: (f64, f64),
    posts_down: (f64, f64),
    catch_up: f64,
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let seconds = env_number("ZDMAP_BENCH_OUTAGE_SECS", OUTAGE_SECS);
    let rounds = env_number("ZDMAP_BENCH_ROUNDS", ROUNDS as u64) as usize;
    let times = DeliveredTimes::install();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut all = Vec::new();
    for r in 1..=rounds {
        let alone = runtime.block_on(window(false, seconds, &times));
        let down = runtime.block_on(window(true, seconds, &times));
        let outage = down.outage.as_ref().expect("the outage's figures");
        let b = |w: &Window| (rank(&w.b, 0.5) as f64, rank(&w.b, 0.95) as f64, mean(&w.b));
        let posts = |w: &Window| (quantile(&w.posts, 0.5), quantile(&w.posts, 0.95));
        let round = Round {
            alone: b(&alone),
            down: b(&down),
            posts_alone: posts(&alone),
            posts_down: posts(&down),
            catch_up: outage.catch_up.as_secs_f64(),
        };
        println!(
            "round {r}: b's accept -> delivered alone p50 {:.0} ms, p95 {:.0} ms, mean {:.2} ms; a down p50 {:.0} ms, p95 {:.0} ms, mean {:.2} ms (ratios {:.2}, {:.2}, {:.2}); \
             posts answered alone p50 {:.1} ms, p95 {:.1} ms, a down p50 {:.1} ms, p95 {:.1} ms; \
             a down {seconds} s: {} requests to it, {} events waiting, caught up in {:.1} s; \
             {} events each window, every one at a and at b exactly once",
            round.alone.0,
            round.alone.1,
            round.alone.2,
            round.down.0,
            round.down.1,
            round.down.2,
            round.down.0 / round.alone.0,
            round.down.1 / round.alone.1,
            round.down.2 / round.alone.2,
            round.posts_alone.0,
            round.posts_alone.1,
            round.posts_down.0,
            round.posts_down.1,
            outage.requests,
            outage.waiting,
            round.catch_up,
            down.events,
        );
        all.push(round);
    }
    let med = |f: fn(&Round) -> f64| median(all.iter().map(f).collect());
    println!(
        "\nmedians of {rounds} rounds (a down for {seconds} s, {}, 100 events/s to each destination):\n\
         | | alone | a down | ratio |\n|---|---|---|---|\n\
         | b p50 accept -> delivered | {:.0} ms | {:.0} ms | {:.2} |\n\
         | b p95 accept -> delivered | {:.0} ms | {:.0} ms | {:.2} |\n\
         | b mean accept -> delivered | {:.2} ms | {:.2} ms | {:.2} |\n\
         | posts answered p50 | {:.1} ms | {:.1} ms | {:.2} |\n\
         | posts answered p95 | {:.1} ms | {:.1} ms | {:.2} |\n\
         | a's catch-up after the outage | | {:.1} s | |",
        match fault() {
            Fault::RetryAfter => "503 with Retry-After: 1",
            Fault::Plain => "500 or 503 without Retry-After",
        },
        med(|r| r.alone.0),
        med(|r| r.down.0),
        med(|r| r.down.0 / r.alone.0),
        med(|r| r.alone.1),
        med(|r| r.down.1),
        med(|r| r.down.1 / r.alone.1),
        med(|r| r.alone.2),
        med(|r| r.down.2),
        med(|r| r.down.2 / r.alone.2),
        med(|r| r.posts_alone.0),
        med(|r| r.posts_down.0),
        med(|r| r.posts_down.0 / r.posts_alone.0),
        med(|r| r.posts_alone.1),
        med(|r| r.posts_down.1),
        med(|r| r.posts_down.1 / r.posts_alone.1),
        med(|r| r.catch_up),
    );
}
