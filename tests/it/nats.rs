//! `zdmap serve` on NATS JetStream, with a real `nats-server` and replicas as processes of the
//! binary: three replicas share the work and one is killed with `kill -9` (nothing lost, each
//! user's events in order, no duplicate ticket); their combined request rate stays within one
//! budget and a 429 seen by one pauses all; `nats-server` restarted during a run loses nothing
//! accepted; a fourth replica joining takes partitions while delivery goes on in order; dead
//! letters, duplicate submissions, `/readyz` and `/metrics` on NATS; Zendesk down, refused
//! credentials and `--retry-for` as on SQLite; NATS credentials from the environment or files;
//! a replay that keeps a dead letter older than a change another replica applied; the `group`
//! calls of many users for a few organizations, whose organization writes land in event order
//! across replicas (holds), and the holds themselves in JetStream KV; a repeated identical
//! identify skipped, the last write applied read by whichever replica delivers next, and no
//! record left by a replica whose later write to the entity was refused; the delivery log kept
//! in JetStream, so a replica (one started later too) answers for an event another replica
//! accepted and delivered.

use crate::support::command::zdmap;
use crate::support::http::{Metrics, get, post_batch, readyz_once};
use crate::support::nats::{self, KEY, NatsServer, Replica};
use crate::support::state::{count, each_ticket_once};
use crate::support::wait::eventually;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};
use zdmap::emulator::{Emulator, EmulatorOptions, ForcedFault};

async fn emulator(latency_ms: u64) -> Emulator {
    let emu = Emulator::start(EmulatorOptions::default())
        .await
        .expect("emulator");
    emu.configure(|k| {
        k.latency_ms = latency_ms;
        k.request_log_size = 200_000;
    });
    emu
}

/// A ticket event: user `u`'s `n`th.
fn ticket(u: usize, n: usize) -> Value {
    json!({
        "type": "track", "event": "Ticket Created", "userId": format!("u-{u}"),
        "messageId": format!("msg-{u}-{n}"),
        "context": {"traits": {"email": format!("user{u}@example.com"), "name": format!("User {u}")}},
        "properties": {"subject": format!("Problem {u}/{n}"), "comment": "It broke.", "external_id": format!("T-{u}-{n}")}
    })
}

/// `users` users with `per_user` tickets each, the users interleaved (each user's in order).
fn tickets(users: usize, per_user: usize) -> Vec<Value> {
    (0..per_user)
        .flat_map(|n| (0..users).map(move |u| ticket(u, n)))
        .collect()
}

/// Posts `events` in batches of `size`, each to the next replica in turn; every batch must be
/// accepted.
async fn post_all(urls: &[String], events: &[Value], size: usize) {
    for (i, chunk) in events.chunks(size).enumerate() {
        let url = &urls[i % urls.len()];
        assert_eq!(
            post_batch(url, Some(KEY), chunk).await,
            200,
            "batch {i} to {url}"
        );
    }
}

/// Waits until `expected` tickets exist, then checks that each was created once and that each
/// user's tickets came in order.
async fn all_delivered_once_in_order(
    emu: &Emulator,
    expected: usize,
    users: usize,
    per_user: usize,
) {
    eventually(
        "every accepted event delivered",
        Duration::from_secs(120),
        async || count(&emu.state(), "tickets") >= expected,
    )
    .await;
    // Late duplicates, if any, have time to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    each_ticket_once(&emu.state(), expected);
    each_users_tickets_in_order(emu, users, per_user);
}

/// The ticket creations of the request log, user by user, in the order they reached the
/// emulator: each user's first creation of ticket `n` comes after that of `n - 1` (a creation
/// sent again after a crash repeats one already made, which the idempotency key answers).
fn each_users_tickets_in_order(emu: &Emulator, users: usize, per_user: usize) {
    let mut seen: HashMap<String, Vec<usize>> = HashMap::new();
    for entry in emu.requests() {
        if entry["method"] != "POST" || entry["path"] != "/api/v2/tickets" {
            continue;
        }
        let Some(id) = entry["body"]["ticket"]["external_id"].as_str() else {
            continue;
        };
        let mut parts = id.trim_start_matches("T-").split('-');
        let (Some(u), Some(n)) = (parts.next(), parts.next()) else {
            continue;
        };
        let n: usize = n.parse().expect("n");
        let firsts = seen.entry(u.to_owned()).or_default();
        if !firsts.contains(&n) {
            firsts.push(n);
        }
    }
    assert_eq!(seen.len(), users, "every user's tickets were sent");
    for (u, firsts) in &seen {
        assert_eq!(
            firsts,
            &(0..per_user).collect::<Vec<_>>(),
            "user {u}'s tickets in order"
        );
    }
}

async fn owned(url: &str) -> Option<f64> {
    Metrics::read(url).await.get("zdmap_nats_partitions_owned")
}

/// `n` replicas on `server`, delivering to `emu`, started with `args`.
fn start_replicas(server: &NatsServer, emu: &Emulator, n: usize, args: &[&str]) -> Vec<Replica> {
    (0..n)
        .map(|_| Replica::start(&server.url(), &emu.url(), args))
        .collect()
}

fn urls(replicas: &[Replica]) -> Vec<String> {
    replicas.iter().map(|r| r.url.clone()).collect()
}

/// Waits until each replica owns a partition (has taken its share before the events come).
async fn each_owns_a_partition(replicas: &[Replica]) {
    for r in replicas {
        eventually("a partition owned", Duration::from_secs(30), async || {
            if owned(&r.url).await.unwrap_or(0.0) >= 1.0 {
                Ok(())
            } else {
                Err(r.log_text())
            }
        })
        .await;
    }
}

/// A replica started with `args` on the NATS server at `nats`, delivering to `emu`, once it owns
/// a partition (the only replica running: it takes them all).
async fn sole_replica(nats: &str, emu: &str, args: &[&str]) -> Replica {
    let replica = Replica::start(nats, emu, args);
    each_owns_a_partition(std::slice::from_ref(&replica)).await;
    replica
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_the_work_and_a_killed_one_loses_nothing() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let emu = emulator(10).await;
    // 4800 a minute (a burst of 800, then 80 a second): the 3000 tickets take at least 27 s,
    // so the kill comes during delivery however slowly this test runs.
    let mut replicas = start_replicas(&server, &emu, 3, &["--set", "requests_per_minute=4800"]);
    each_owns_a_partition(&replicas).await;
    let (users, per_user) = (300, 10);
    let events = tickets(users, per_user);
    let urls = urls(&replicas);
    post_all(&urls, &events, 100).await;

    eventually("delivery under way", Duration::from_secs(60), async || {
        count(&emu.state(), "tickets") >= 300
    })
    .await;
    replicas[0].kill();
    assert!(
        count(&emu.state(), "tickets") < events.len(),
        "the kill came before the end"
    );
    all_delivered_once_in_order(&emu, events.len(), users, per_user).await;

    // The two left own every partition between them.
    let mut total = 0.0;
    for r in &replicas[1..] {
        total += owned(&r.url).await.unwrap_or(0.0);
    }
    assert_eq!(
        total,
        32.0,
        "{}\n----\n{}",
        replicas[1].log_text(),
        replicas[2].log_text()
    );
    let survivor = replicas.pop().expect("replica");
    let log = survivor.stop();
    assert!(!log.contains("nats-test-token-secret"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_one_request_budget_and_one_pause() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let emu = emulator(0).await;
    // 1200 a minute: a burst of 200, then 20 a second, for all replicas together.
    let replicas = start_replicas(&server, &emu, 3, &["--set", "requests_per_minute=1200"]);
    let urls = urls(&replicas);
    each_owns_a_partition(&replicas).await;
    let events = tickets(100, 5);
    post_all(&urls, &events, 50).await;
    eventually("the burst spent", Duration::from_secs(60), async || {
        count(&emu.state(), "tickets") >= 250
    })
    .await;
    // One 429 with Retry-After: 3 s reaches one replica; all of them wait.
    emu.configure(|k| k.forced_faults = vec![ForcedFault::new(429).retry_after(3)]);
    eventually("all delivered", Duration::from_secs(90), async || {
        count(&emu.state(), "tickets") >= events.len()
    })
    .await;
    each_ticket_once(&emu.state(), events.len());

    let log = emu.requests();
    let times: Vec<u64> = log
        .iter()
        .filter(|e| e["path"].as_str().is_some_and(|p| p.starts_with("/api/")))
        .filter_map(|e| e["at_ms"].as_u64())
        .collect();
    // Any window of W seconds holds at most the burst, W seconds' worth and the tokens the
    // replicas may hold (a tenth of a second's worth each).
    for w in [1u64, 3, 5] {
        let allowed = 200 + 20 * w as usize + 3 * 2;
        let most = times
            .iter()
            .map(|start| {
                times
                    .iter()
                    .filter(|t| **t >= *start && **t < start + w * 1000)
                    .count()
            })
            .max()
            .unwrap_or(0);
        assert!(
            most <= allowed,
            "{most} requests within {w} s (budget allows {allowed})"
        );
    }
    // After the 429, no replica sent anything until the pause was over (what was already on
    // its way aside).
    let at_429 = log
        .iter()
        .find(|e| e["status"] == 429)
        .and_then(|e| e["at_ms"].as_u64())
        .expect("a 429 was answered");
    let during: Vec<u64> = times
        .iter()
        .copied()
        .filter(|t| *t > at_429 + 500 && *t < at_429 + 2500)
        .collect();
    assert!(
        during.is_empty(),
        "requests during the pause at {at_429}: {during:?}"
    );
    drop(replicas);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nats_server_restart_loses_nothing_accepted() {
    let Some(mut server) = NatsServer::start() else {
        return;
    };
    let emu = emulator(5).await;
    let replicas = start_replicas(&server, &emu, 2, &["--set", "requests_per_minute=0"]);
    let urls = urls(&replicas);
    let (users, per_user) = (100, 8);
    let events = tickets(users, per_user);
    let (before, after) = events.split_at(events.len() / 2);
    post_all(&urls, before, 50).await;

    server.stop();
    // While it is down nothing is accepted (and the sender is told to send again).
    assert_eq!(post_batch(&urls[0], Some(KEY), &after[..10]).await, 503);
    assert_eq!(get(&format!("{}/readyz", urls[0])).await.0, 503);
    server.start_again();

    // Senders retry until their batches are accepted.
    for (i, chunk) in after.chunks(50).enumerate() {
        let url = &urls[i % urls.len()];
        eventually(
            &format!("batch {i} accepted"),
            Duration::from_secs(30),
            async || post_batch(url, Some(KEY), chunk).await == 200,
        )
        .await;
    }
    all_delivered_once_in_order(&emu, events.len(), users, per_user).await;
    drop(replicas);
}

/// A lease far longer than the test's waits: partitions change hands only because replicas
/// hand them over (to one that joins, or when stopping), never because a lease ran out.
const JOIN_ARGS: &[&str] = &["--set", "requests_per_minute=0", "--nats-lease", "60s"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fourth_replica_joins_and_takes_its_share() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let emu = emulator(20).await;
    let mut replicas = start_replicas(&server, &emu, 3, JOIN_ARGS);
    let urls = urls(&replicas);
    each_owns_a_partition(&replicas).await;
    let (users, per_user) = (200, 8);
    let events = tickets(users, per_user);
    post_all(&urls, &events, 100).await;
    eventually("delivery under way", Duration::from_secs(60), async || {
        count(&emu.state(), "tickets") >= 200
    })
    .await;
    replicas.push(Replica::start(&server.url(), &emu.url(), JOIN_ARGS));
    // 32 partitions over four replicas: eight each, once the others handed theirs over.
    eventually(
        "eight partitions each",
        Duration::from_secs(60),
        async || {
            let mut counts = BTreeMap::new();
            for (i, r) in replicas.iter().enumerate() {
                counts.insert(i, owned(&r.url).await.unwrap_or(0.0));
            }
            if counts.values().all(|c| *c == 8.0) {
                Ok(())
            } else {
                Err(format!("partitions: {counts:?}"))
            }
        },
    )
    .await;
    let changes = Metrics::read(&replicas[3].url)
        .await
        .get("zdmap_nats_lease_changes_total");
    assert!(changes.is_some_and(|c| c >= 8.0), "{changes:?}");
    all_delivered_once_in_order(&emu, events.len(), users, per_user).await;

    // A graceful stop hands its partitions over at once (not after the lease time, a minute).
    let leaving = replicas.remove(0);
    leaving.stop();
    eventually(
        "every partition owned",
        Duration::from_secs(20),
        async || {
            let mut total = 0.0;
            for r in &replicas {
                total += owned(&r.url).await.unwrap_or(0.0);
            }
            if total == 32.0 {
                Ok(())
            } else {
                Err(format!("{total} partitions owned"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_duplicates_and_health_on_nats() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let emu = emulator(0).await;
    let admin_port = crate::support::serving::free_port();
    let admin_listen = format!("127.0.0.1:{admin_port}");
    let admin_token = "nats-admin-token-of-the-test";
    let replica = Replica::start_with_env(
        &server.url(),
        &emu.url(),
        &[
            "--set",
            "requests_per_minute=0",
            "--wait-for-records",
            "1s",
            "--admin-listen",
            &admin_listen,
        ],
        &[("ZDMAP_ADMIN_TOKEN", admin_token)],
    );
    let url = replica.url.clone();

    // /readyz and /metrics speak of NATS.
    eventually(
        "every partition owned",
        Duration::from_secs(30),
        async || owned(&url).await == Some(32.0),
    )
    .await;
    let ready: Value = serde_json::from_str(&get(&format!("{url}/readyz")).await.1).expect("json");
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["queue"]["backend"], "nats", "{ready}");
    assert_eq!(ready["queue"]["connected"], true, "{ready}");
    let text = Metrics::read(&url).await;
    for name in [
        "zdmap_nats_partitions",
        "zdmap_nats_lease_changes_total",
        "zdmap_nats_stream_lag",
        "zdmap_nats_replicas_alive",
    ] {
        assert!(text.get(name).is_some(), "{name}: {text}");
    }

    // The same batch sent twice: its messageIds are dropped the second time.
    let batch: Vec<Value> = (0..5).map(|n| ticket(1, n)).collect();
    assert_eq!(post_batch(&url, Some(KEY), &batch).await, 200);
    assert_eq!(post_batch(&url, Some(KEY), &batch).await, 200);
    eventually("the tickets", Duration::from_secs(30), async || {
        count(&emu.state(), "tickets") >= 5
    })
    .await;
    let text = Metrics::read(&url).await;
    assert_eq!(
        text.get("zdmap_events_duplicate_total"),
        Some(5.0),
        "{text}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    each_ticket_once(&emu.state(), 5);

    // Dead letters: kept in JetStream, listed, shown, replayed and purged from another process.
    let unknown = |user: &str| json!({"type": "track", "userId": user, "event": "Signed In"});
    assert_eq!(
        post_batch(&url, Some(KEY), &[unknown("nobody"), unknown("nobody-2")]).await,
        200
    );
    let queue = server.url();
    let list = || {
        let out = zdmap(&["dead-letters", "--queue", &queue, "list", "--json"], "");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect::<Vec<_>>()
    };
    let mut letters = eventually("two dead letters", Duration::from_secs(30), async || {
        let letters = list();
        if letters.len() >= 2 {
            Ok(letters)
        } else {
            Err(format!("{letters:?}"))
        }
    })
    .await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    // Different users, different partitions: in the order they failed.
    letters.sort_by_key(|l| l["event"]["userId"].as_str().map(str::to_owned));
    assert_eq!(letters[0]["dead_letter"]["action"], "track_event");
    assert_eq!(letters[0]["event"]["userId"], "nobody");
    let first = letters[0]["id"].as_u64().expect("id").to_string();
    let second = letters[1]["id"].as_u64().expect("id").to_string();
    // The admin API reads the same dead letters from JetStream.
    let letters_url = format!("http://{admin_listen}/api/dead-letters");
    let api = |path: String| {
        let url = format!("{letters_url}{path}");
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(admin_token)
                .send()
                .await
                .expect("the admin API answers")
                .json::<Value>()
                .await
                .expect("json")
        }
    };
    let listed = api(String::new()).await;
    let mut ids: Vec<String> = listed["dead_letters"]
        .as_array()
        .expect("dead letters")
        .iter()
        .map(|l| l["id"].to_string())
        .collect();
    ids.sort();
    let mut expected = vec![first.clone(), second.clone()];
    expected.sort();
    assert_eq!(ids, expected, "{listed}");
    let one = api(format!("/{first}")).await;
    assert_eq!(one["event"]["userId"], "nobody", "{one}");
    let shown = zdmap(&["dead-letters", "--queue", &queue, "show", &first], "");
    assert!(String::from_utf8_lossy(&shown.stdout).contains("\"nobody\""));
    assert_eq!(
        zdmap(&["dead-letters", "--queue", &queue, "show", "424242"], "")
            .status
            .code(),
        Some(1)
    );

    let identify = json!({"type": "identify", "userId": "nobody", "traits": {"email": "nobody@example.com", "name": "No Body"}});
    assert_eq!(post_batch(&url, Some(KEY), &[identify]).await, 200);
    eventually("the user exists", Duration::from_secs(30), async || {
        emu.state()["users"]
            .as_array()
            .is_some_and(|u| u.iter().any(|u| u["email"] == "nobody@example.com"))
    })
    .await;
    let replayed = zdmap(&["dead-letters", "--queue", &queue, "replay", &first], "");
    assert!(replayed.status.success(), "{replayed:?}");
    eventually(
        "the replayed event recorded",
        Duration::from_secs(30),
        async || {
            emu.state()["events"]
                .as_array()
                .is_some_and(|e| e.len() == 1)
        },
    )
    .await;
    let purged = zdmap(&["dead-letters", "--queue", &queue, "purge", &second], "");
    assert!(purged.status.success(), "{purged:?}");
    assert!(list().is_empty());
    replica.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zendesk_down_and_refused_credentials_defer_events_and_retry_for_dead_letters_them() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let emu = emulator(0).await;
    emu.configure(|k| k.fail_rate = 1.0);
    let replica = Replica::start(
        &server.url(),
        &emu.url(),
        &["--set", "requests_per_minute=0"],
    );
    let url = replica.url.clone();
    let batch: Vec<Value> = (0..10).map(|u| ticket(u, 0)).collect();
    assert_eq!(post_batch(&url, Some(KEY), &batch).await, 200);

    // Zendesk down: the events wait in the stream, none is dead-lettered.
    let text = Metrics::once(&url, "zdmap_events_deferred_total", |n| n >= 3.0).await;
    assert_eq!(text.get("zdmap_nats_stream_lag"), Some(10.0), "{text}");
    assert_eq!(text.get("zdmap_events_dead_lettered_total"), Some(0.0));
    assert_eq!(count(&emu.state(), "tickets"), 0);
    emu.configure(|k| k.fail_rate = 0.0);
    eventually("the tickets", Duration::from_secs(30), async || {
        count(&emu.state(), "tickets") >= 10
    })
    .await;

    // Refused credentials: not ready, the event kept until they work again.
    emu.configure(|k| k.forced_faults = vec![ForcedFault::new(401).times(4)]);
    assert_eq!(post_batch(&url, Some(KEY), &[ticket(10, 0)]).await, 200);
    let body = readyz_once(&url, 503, "not ready").await;
    assert!(body.contains("401"), "{body}");
    eventually(
        "the ticket once the credentials work",
        Duration::from_secs(30),
        async || count(&emu.state(), "tickets") >= 11,
    )
    .await;
    readyz_once(&url, 200, "ready again").await;
    each_ticket_once(&emu.state(), 11);
    replica.stop();

    // --retry-for: past it, an event Zendesk keeps failing is dead-lettered; replayed once
    // Zendesk is back.
    emu.configure(|k| k.fail_rate = 1.0);
    let replica = Replica::start(
        &server.url(),
        &emu.url(),
        &["--set", "requests_per_minute=0", "--retry-for", "1s"],
    );
    let three: Vec<Value> = (20..23).map(|u| ticket(u, 0)).collect();
    assert_eq!(post_batch(&replica.url, Some(KEY), &three).await, 200);
    let queue = server.url();
    eventually("three dead letters", Duration::from_secs(30), async || {
        let out = zdmap(&["dead-letters", "--queue", &queue, "list", "--json"], "");
        if String::from_utf8_lossy(&out.stdout).lines().count() == 3 {
            Ok(())
        } else {
            Err(format!("{out:?}"))
        }
    })
    .await;
    emu.configure(|k| k.fail_rate = 0.0);
    let replayed = zdmap(&["dead-letters", "--queue", &queue, "replay", "--all"], "");
    assert!(replayed.status.success(), "{replayed:?}");
    eventually(
        "the replayed tickets",
        Duration::from_secs(30),
        async || count(&emu.state(), "tickets") >= 14,
    )
    .await;
    each_ticket_once(&emu.state(), 14);
    replica.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_credentials_come_from_the_environment_or_files_and_stay_out_of_logs() {
    let Some(token_server) = NatsServer::start_with(&["--auth", "nats-s3cret-token"]) else {
        return;
    };
    let queue = token_server.url();
    let list = |env: &[(&str, &str)]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_zdmap"))
            .args(["dead-letters", "--queue", &queue, "list"])
            .envs(env.iter().copied())
            .output()
            .expect("zdmap runs")
    };
    let refused = list(&[("ZDMAP_NATS_TOKEN", "wrong-token")]);
    assert_eq!(refused.status.code(), Some(1));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("refused the login"), "{said}");
    assert!(!said.contains("wrong-token"), "{said}");

    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "nats-s3cret-token\n").expect("write");
    let token_path = token_file.to_str().expect("utf-8");
    // Logged in: there is no queue yet to read (the command creates nothing).
    let out = list(&[("ZDMAP_NATS_TOKEN_FILE", token_path)]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("no zdmap queue there"), "{said}");
    let both = list(&[
        ("ZDMAP_NATS_TOKEN_FILE", token_path),
        ("ZDMAP_NATS_TOKEN", "nats-s3cret-token"),
    ]);
    assert_eq!(both.status.code(), Some(1), "{both:?}");

    // A replica logs in with a user and password; its logs hold neither.
    let Some(user_server) = NatsServer::start_with(&["--user", "zdmap", "--pass", "nats-pa55word"])
    else {
        return;
    };
    let emu = emulator(0).await;
    let replica = Replica::start_with_env(
        &user_server.url(),
        &emu.url(),
        &["--set", "requests_per_minute=0"],
        &[
            ("ZDMAP_NATS_USER", "zdmap"),
            ("ZDMAP_NATS_PASSWORD", "nats-pa55word"),
        ],
    );
    assert_eq!(
        post_batch(&replica.url, Some(KEY), &[ticket(1, 0)]).await,
        200
    );
    eventually("the ticket", Duration::from_secs(30), async || {
        count(&emu.state(), "tickets") == 1
    })
    .await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zdmap"))
        .args(["dead-letters", "--queue", &user_server.url(), "list"])
        .env("ZDMAP_NATS_USER", "zdmap")
        .env("ZDMAP_NATS_PASSWORD_FILE", {
            let path = dir.path().join("password");
            std::fs::write(&path, "nats-pa55word").expect("write");
            path
        })
        .output()
        .expect("zdmap runs");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 dead letter(s)"));
    let log = replica.stop();
    assert!(!log.contains("nats-pa55word"), "{log}");
    assert!(
        log.contains("handed this replica's partitions over"),
        "{log}"
    );
}

/// A ticket update dead-lettered by one replica, a newer update of the same ticket (another
/// user's, so maybe another replica's): `dead-letters --queue replay` keeps the older one as
/// stale (the last change times are shared in NATS), `--force` replays it anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_on_nats_applies_no_older_change_unless_forced() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let emu = emulator(0).await;
    let args = ["--set", "requests_per_minute=0", "--retry-for", "1s"];
    let replicas = start_replicas(&server, &emu, 2, &args);
    let at = |second: u32| format!("2026-03-01T10:00:{second:02}Z");
    let update = |user: &str, second: u32, status: &str, comment: &str| {
        json!({"type": "track", "event": "Ticket Updated", "userId": user,
               "messageId": format!("upd-{second}"), "timestamp": at(second),
               "properties": {"external_id": "t1", "status": status, "comment": comment}})
    };
    let ticket_t1 = || {
        emu.state()["tickets"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["external_id"] == "t1").cloned())
            .unwrap_or(Value::Null)
    };
    let created = json!({"type": "track", "event": "Ticket Created", "userId": "u1",
        "messageId": "new-t1", "timestamp": at(0),
        "context": {"traits": {"email": "u1@example.com", "name": "u1"}},
        "properties": {"subject": "S", "comment": "opened", "external_id": "t1"}});
    assert_eq!(
        post_batch(&replicas[0].url, Some(KEY), &[created]).await,
        200
    );
    eventually("the ticket", Duration::from_secs(30), async || {
        count(&emu.state(), "tickets") == 1
    })
    .await;

    emu.configure(|k| k.fail_rate = 1.0);
    assert_eq!(
        post_batch(
            &replicas[0].url,
            Some(KEY),
            &[update("u1", 10, "pending", "older")]
        )
        .await,
        200
    );
    let queue = server.url();
    eventually(
        "the older update dead-lettered",
        Duration::from_secs(30),
        async || {
            let out = zdmap(&["dead-letters", "--queue", &queue, "list", "--json"], "");
            String::from_utf8_lossy(&out.stdout).lines().count() >= 1
        },
    )
    .await;
    emu.configure(|k| k.fail_rate = 0.0);
    assert_eq!(
        post_batch(
            &replicas[1].url,
            Some(KEY),
            &[update("u2", 20, "solved", "newer")]
        )
        .await,
        200
    );
    eventually("the newer update", Duration::from_secs(30), async || {
        ticket_t1()["status"] == "solved"
    })
    .await;
    // The newer change's time reaches the bucket right after it is applied.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let replay = |extra: &[&str]| {
        let out = zdmap(
            &[&["dead-letters", "--queue", &queue, "replay"], extra].concat(),
            "",
        );
        assert!(out.status.success(), "{out:?}");
        (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (stdout, stderr) = replay(&["--all"]);
    assert!(stderr.contains("0 dead letter(s) moved back"), "{stderr}");
    assert!(stderr.contains("1 stale dead letter(s) kept"), "{stderr}");
    assert!(
        stdout.contains("update_ticket\tstale: ticket:t1"),
        "{stdout}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ticket_t1()["status"], "solved");

    let (stdout, stderr) = replay(&["--force", "--all"]);
    assert!(stderr.contains("1 dead letter(s) moved back"), "{stderr}");
    assert!(stdout.contains("replayed anyway (--force)"), "{stdout}");
    eventually(
        "the forced older update",
        Duration::from_secs(30),
        async || ticket_t1()["status"] == "pending",
    )
    .await;
    drop(replicas);
}

/// The organization writes of the request log that Zendesk took, in the order they reached the
/// emulator: (organization external id, version), the version being the `details` trait.
fn organization_writes(emu: &Emulator) -> Vec<(String, u64)> {
    let mut writes = Vec::new();
    for entry in emu.requests() {
        if entry["status"].as_u64().is_none_or(|s| s >= 300) {
            continue;
        }
        let organizations: Vec<Value> = match (entry["method"].as_str(), entry["path"].as_str()) {
            (Some("POST"), Some("/api/v2/organizations/create_or_update")) => {
                vec![entry["body"]["organization"].clone()]
            }
            (Some("PUT"), Some("/api/v2/organizations/update_many")) => {
                entry["body"]["organizations"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            }
            (_, Some(path)) if path.starts_with("/api/v2/organizations") => {
                assert!(
                    !entry["method"]
                        .as_str()
                        .is_some_and(|m| m == "PUT" || m == "POST"),
                    "an organization write this test does not read: {entry}"
                );
                continue;
            }
            _ => continue,
        };
        for o in organizations {
            let (Some(org), Some(version)) = (o["external_id"].as_str(), o["details"].as_str())
            else {
                continue;
            };
            writes.push((org.to_owned(), version.parse().expect("a version")));
        }
    }
    writes
}

/// Many users' `group` calls for a few organizations, spread over the partitions of three
/// replicas: each organization is delivered by one replica at a time (holds in NATS), so the
/// organization writes that land come in the order of the events' times, an older change that
/// comes after a newer one is skipped, each organization ends at its newest version and every
/// membership is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_organizations_events_from_many_users_land_in_order_across_replicas() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let emu = emulator(15).await;
    let replicas = start_replicas(&server, &emu, 3, &["--set", "requests_per_minute=0"]);
    let urls = urls(&replicas);
    each_owns_a_partition(&replicas).await;
    let (users, organizations, calls) = (24usize, 4usize, 240usize);
    let identifies: Vec<Value> = (0..users)
        .map(|u| {
            json!({"type": "identify", "userId": format!("u-{u}"), "messageId": format!("id-{u}"),
                   "timestamp": "2026-03-01T09:00:00Z",
                   "traits": {"email": format!("user{u}@example.com"), "name": format!("User {u}")}})
        })
        .collect();
    post_all(&urls, &identifies, 8).await;
    eventually("the users", Duration::from_secs(60), async || {
        count(&emu.state(), "users") >= users
    })
    .await;

    // Call n: organization n % 4, by user (n / 4) % 24 (so every user joins every
    // organization), its version n, its time 10:00:00 + n seconds.
    let call = |n: usize| {
        json!({"type": "group", "userId": format!("u-{}", (n / organizations) % users),
               "groupId": format!("org-{}", n % organizations), "messageId": format!("g-{n}"),
               "timestamp": format!("2026-03-01T10:{:02}:{:02}Z", n / 60, n % 60),
               "traits": {"name": format!("Organization {}", n % organizations),
                          "details": n.to_string()}})
    };
    let events: Vec<Value> = (0..calls).map(call).collect();
    post_all(&urls, &events, 6).await;

    let newest = |o: usize| (0..calls).rev().find(|n| n % organizations == o);
    let org_state = |emu: &Emulator| -> HashMap<String, String> {
        emu.state()["organizations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| {
                Some((
                    o["external_id"].as_str()?.to_owned(),
                    o["details"].as_str()?.to_owned(),
                ))
            })
            .collect()
    };
    let memberships = |emu: &Emulator| count(&emu.state(), "memberships");
    let done = || {
        let state = org_state(&emu);
        (0..organizations).all(|o| {
            state.get(&format!("org-{o}")).map(String::as_str)
                == newest(o).map(|n| n.to_string()).as_deref()
        }) && memberships(&emu) >= users * organizations
    };
    eventually(
        "every organization's newest version",
        Duration::from_secs(90),
        async || {
            if done() {
                return Ok(());
            }
            let mut waiting = format!(
                "organizations {:?}, {} memberships\n",
                org_state(&emu),
                memberships(&emu)
            );
            for r in &replicas {
                let metrics = Metrics::read(&r.url).await;
                waiting.push_str(
                    &metrics
                        .0
                        .lines()
                        .filter(|l| {
                            l.starts_with("zdmap_delivery") || l.starts_with("zdmap_nats_holds")
                        })
                        .collect::<Vec<_>>()
                        .join("\n"),
                );
                let log = r.log_text();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                waiting.push_str(&format!("\n--- log tail:\n{}\n", tail.join("\n")));
            }
            Err(waiting)
        },
    )
    .await;
    // Late writes, if any, have time to show.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let writes = organization_writes(&emu);
    let mut last: HashMap<String, u64> = HashMap::new();
    for (org, version) in &writes {
        let before = last.insert(org.clone(), *version).unwrap_or(0);
        assert!(
            *version >= before,
            "{org}: version {version} written after {before}: {writes:?}"
        );
    }
    assert_eq!(last.len(), organizations, "{writes:?}");

    // The final state again (nothing older landed after), and each membership once.
    let state = emu.state();
    let org_ids: HashMap<u64, String> = state["organizations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| Some((o["id"].as_u64()?, o["external_id"].as_str()?.to_owned())))
        .collect();
    let user_ids: HashMap<u64, String> = state["users"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| Some((u["id"].as_u64()?, u["external_id"].as_str()?.to_owned())))
        .collect();
    let pairs: Vec<(String, String)> = state["memberships"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            Some((
                user_ids.get(&m["user_id"].as_u64()?)?.clone(),
                org_ids.get(&m["organization_id"].as_u64()?)?.clone(),
            ))
        })
        .collect();
    let unique: HashSet<&(String, String)> = pairs.iter().collect();
    assert_eq!(pairs.len(), users * organizations, "{pairs:?}");
    assert_eq!(unique.len(), users * organizations, "{pairs:?}");
    assert_eq!(org_ids.len(), organizations, "one organization each");
    let state = org_state(&emu);
    for o in 0..organizations {
        assert_eq!(
            state.get(&format!("org-{o}")).map(String::as_str),
            newest(o).map(|n| n.to_string()).as_deref()
        );
    }
    // Organizations were handed between replicas: some waited for another's hold.
    let mut waits = 0.0;
    for r in &replicas {
        waits += Metrics::read(&r.url)
            .await
            .get("zdmap_delivery_held_elsewhere_total")
            .unwrap_or(0.0);
    }
    assert!(waits > 0.0, "no event waited for another replica's hold");
    for r in replicas {
        r.stop();
    }
}

/// Holds in the entities bucket, between two replicas' holds: taken by one at a time (all of
/// an event's keys or none), counted per event within a replica, renewed while held, let go
/// once the change times written under them are in the bucket (the next holder knows them at
/// once), and taken over once a replica that stopped without a word lets its time run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_in_nats_go_to_one_replica_at_a_time() {
    use zdmap::deliver::holds::{Holding, KeyHolds};
    use zdmap::deliver::order::EntityClock;
    use zdmap::queue::nats::{Layout, NatsOptions, entities::NatsClock, holds::NatsHolds};

    let Some(server) = NatsServer::start() else {
        return;
    };
    let layout = Layout::open(&NatsOptions::new(&server.url()))
        .await
        .expect("layout");
    // Long enough that a renewal (every third of it) is never late on a loaded machine.
    let lease = Duration::from_secs(3);
    let replica = |name: &str| {
        let clock = NatsClock::start(layout.entities.clone(), layout.names.clone());
        let holds = NatsHolds::start(
            layout.entities.clone(),
            clock.clone(),
            name.to_owned(),
            lease,
        );
        (clock, holds)
    };
    let (clock_a, a) = replica("a");
    let (clock_b, b) = replica("b");
    let acme = || vec!["group:acme".to_owned()];
    let both = || vec!["group:acme".to_owned(), "group:other".to_owned()];
    // Tries until `holds` gets `keys` (a hold being let go is gone in a moment): how long that
    // took.
    async fn taken(holds: &NatsHolds, keys: Vec<String>, within: Duration) -> Duration {
        let start = Instant::now();
        eventually(&format!("{keys:?} taken"), within, async || {
            holds.take(keys.clone()).await == Holding::Held
        })
        .await;
        start.elapsed()
    }

    assert_eq!(a.take(acme()).await, Holding::Held);
    assert_eq!(b.take(acme()).await, Holding::Elsewhere);
    // All or none: `group:other` is free, but not taken while `group:acme` is held elsewhere.
    assert_eq!(b.take(both()).await, Holding::Elsewhere);
    assert_eq!(b.held(), 0);
    // A second event of `a` holds it too; one release leaves the other's hold.
    assert_eq!(a.take(acme()).await, Holding::Held);
    a.release(acme());
    // Renewed: still a's after more than two lease times.
    tokio::time::sleep(lease * 2 + Duration::from_millis(300)).await;
    assert_eq!(b.take(acme()).await, Holding::Elsewhere);
    assert_eq!(a.held(), 1);

    a.release(acme());
    taken(&b, both(), lease / 2).await;
    // A change applied under b's hold is known to a as soon as a holds the key after b.
    clock_b.applied("organization:acme", 42_000);
    b.release(both());
    taken(&a, acme(), lease / 2).await;
    assert_eq!(clock_a.last_applied("organization:acme"), Some(42_000));

    // a stops without a word (its holds are neither renewed nor deleted): b takes over once
    // a's time is over, not before.
    drop(a);
    assert_eq!(b.take(acme()).await, Holding::Elsewhere);
    let waited = taken(&b, acme(), lease * 3).await;
    assert!(waited >= lease / 3, "taken over after {waited:?}");
    // A graceful close lets go at once.
    b.close().await;
    let (_clock_c, c) = replica("c");
    assert_eq!(c.take(both()).await, Holding::Held);
}

/// An event a killed replica had under way comes back redelivered to the next owner of its
/// partition, which reads a write that is not idempotent back before sending it: a user event
/// applied just before the kill (its answer never came) is not recorded twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_under_way_at_a_kill_is_checked_before_it_is_sent_again() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let emu = emulator(0).await;
    let args = ["--set", "requests_per_minute=0", "--nats-lease", "2s"];
    let mut first = sole_replica(&server.url(), &emu.url(), &args).await;
    let identify = json!({"type": "identify", "userId": "u-r", "messageId": "id-u-r",
        "traits": {"email": "u-r@example.com", "name": "R"}});
    assert_eq!(post_batch(&first.url, Some(KEY), &[identify]).await, 200);
    eventually("the user", Duration::from_secs(30), async || {
        count(&emu.state(), "users") >= 1
    })
    .await;

    // The user event is applied at once, and its answer would come a minute later.
    emu.configure(|k| k.latency_ms = 60_000);
    let viewed = json!({"type": "track", "event": "Viewed", "userId": "u-r",
        "messageId": "view-u-r", "timestamp": "2026-03-01T10:00:02Z",
        "properties": {"page": "/pricing"}});
    assert_eq!(post_batch(&first.url, Some(KEY), &[viewed]).await, 200);
    eventually(
        "the user event applied",
        Duration::from_secs(30),
        async || count(&emu.state(), "events") >= 1,
    )
    .await;
    first.kill();
    emu.configure(|k| k.latency_ms = 0);

    let second = Replica::start(&server.url(), &emu.url(), &args);
    // Until the second replica found the write applied, or recorded it again.
    eventually("the write checked", Duration::from_secs(60), async || {
        let confirmed = Metrics::read(&second.url)
            .await
            .get("zdmap_writes_confirmed_total")
            .unwrap_or(0.0);
        if confirmed >= 1.0 || count(&emu.state(), "events") >= 2 {
            Ok(())
        } else {
            Err(second.log_text())
        }
    })
    .await;
    assert_eq!(count(&emu.state(), "events"), 1, "recorded once");
    let checks = emu
        .requests()
        .iter()
        .filter(|r| {
            r["method"] == "GET"
                && r["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/api/v2/users/") && p.ends_with("/events"))
        })
        .count();
    assert_eq!(checks, 1, "the redelivered event was read back first");
    let log = second.stop();
    assert!(!log.contains("nats-test-token-secret"), "{log}");
}

/// User `u`'s `n`th user event (a track call: recording one twice records it twice).
fn viewed(u: usize, n: usize) -> Value {
    json!({"type": "track", "event": "Viewed", "userId": format!("u-{u}"),
        "messageId": format!("view-{u}-{n}"),
        "properties": {"u": u, "n": n}})
}

/// The user events recorded, as the request log shows them: `(host, user, n, seq)` of each
/// recording request, in the order they reached the emulator.
fn event_posts(emu: &Emulator) -> Vec<(String, u64, u64, u64)> {
    emu.requests()
        .iter()
        .filter(|r| {
            r["method"] == "POST"
                && r["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/api/v2/users/") && p.ends_with("/events"))
        })
        .filter_map(|r| {
            let properties = &r["body"]["event"]["properties"];
            Some((
                r["headers"]["host"].as_str()?.to_owned(),
                properties["u"].as_u64()?,
                properties["n"].as_u64()?,
                r["seq"].as_u64()?,
            ))
        })
        .collect()
}

/// The newest request's number in the emulator's log.
fn last_seq(emu: &Emulator) -> u64 {
    emu.requests()
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_cut_off_from_nats_stops_delivering_before_its_partitions_move() {
    let lease = Duration::from_secs(3);
    let Some(server) = NatsServer::start() else {
        return;
    };
    let emu = emulator(0).await;
    let proxy = nats::FreezableProxy::start(&server).await;
    let args = ["--set", "requests_per_minute=0", "--nats-lease", "3s"];
    // Replica A reaches NATS through the proxy and the emulator as `localhost` (its requests
    // show that `Host`); B reaches both directly.
    let a_host = emu.url().replace("127.0.0.1", "localhost");
    let a = Replica::start(&proxy.url(), &a_host, &args);
    let b = Replica::start(&server.url(), &emu.url(), &args);
    let a_host = a_host.trim_start_matches("http://").to_owned();
    eventually(
        "half the partitions each",
        Duration::from_secs(30),
        async || {
            if owned(&a.url).await == Some(16.0) && owned(&b.url).await == Some(16.0) {
                Ok(())
            } else {
                Err(a.log_text())
            }
        },
    )
    .await;

    let users = 40;
    let identifies: Vec<Value> = (0..users)
        .map(|u| {
            json!({"type": "identify", "userId": format!("u-{u}"),
            "traits": {"email": format!("u{u}@example.com"), "name": format!("U {u}")}})
        })
        .collect();
    assert_eq!(post_batch(&b.url, Some(KEY), &identifies).await, 200);
    eventually("the users", Duration::from_secs(30), async || {
        count(&emu.state(), "users") >= users
    })
    .await;

    // Slow answers, so that A still has many events to deliver when it is cut off: at 100 ms
    // an answer and 8 at once, its 600 or so take at least 7 s.
    emu.configure(|k| k.latency_ms = 100);
    let per_user = 30;
    let events: Vec<Value> = (0..per_user)
        .flat_map(|n| (0..users).map(move |u| viewed(u, n)))
        .collect();
    post_all(std::slice::from_ref(&b.url), &events, 100).await;
    eventually("A delivering", Duration::from_secs(60), async || {
        event_posts(&emu).iter().filter(|p| p.0 == a_host).count() >= 40
    })
    .await;
    proxy.freeze(true);
    let frozen_at = Instant::now();
    assert!(
        count(&emu.state(), "events") < events.len() / 2,
        "cut off mid-stream"
    );

    // A's last renewal was sent before the freeze, so its fence is at most four fifths of the
    // lease later (a turn started just before it may still send its requests a little after);
    // without the fence A would go on for seconds more.
    tokio::time::sleep_until((frozen_at + lease + Duration::from_secs(1)).into()).await;
    let fence_seq = last_seq(&emu);
    // B delivers the rest (A's checked first, as redelivered) without waiting on slow answers.
    emu.configure(|k| k.latency_ms = 0);
    eventually(
        "every event recorded",
        Duration::from_secs(60),
        async || count(&emu.state(), "events") >= events.len(),
    )
    .await;

    // A comes back: its leases are gone, so it drops what it held back and delivers nothing.
    proxy.freeze(false);
    eventually("A's leases lost", Duration::from_secs(30), async || {
        let log = a.log_text();
        if log.contains("lost the lease of a partition") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Each event recorded once.
    let state = emu.state();
    let mut recorded: HashMap<(u64, u64), usize> = HashMap::new();
    for e in state["events"].as_array().expect("events") {
        let key = (
            e["properties"]["u"].as_u64().expect("u"),
            e["properties"]["n"].as_u64().expect("n"),
        );
        *recorded.entry(key).or_default() += 1;
    }
    assert_eq!(recorded.len(), events.len(), "every event recorded");
    let twice: Vec<_> = recorded.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "recorded twice: {twice:?}");

    // Each user's events in order; nothing from A after its fence; some users' events were
    // delivered by A up to the cut and by B after it.
    let posts = event_posts(&emu);
    let mut by_user: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut hosts: HashMap<u64, HashSet<&str>> = HashMap::new();
    for (host, u, n, seq) in &posts {
        assert!(
            host != &a_host || *seq <= fence_seq,
            "A recorded user {u}'s event {n} after its fence\n{}",
            a.log_text()
        );
        by_user.entry(*u).or_default().push(*n);
        hosts.entry(*u).or_default().insert(host);
    }
    for (u, ns) in &by_user {
        assert_eq!(
            ns,
            &(0..per_user as u64).collect::<Vec<_>>(),
            "user {u}'s events, in order, once each"
        );
    }
    assert!(
        hosts.values().any(|h| h.len() == 2),
        "B delivered the rest of users A had begun"
    );

    let a_metrics = Metrics::read(&a.url).await;
    assert!(
        a_metrics.get("zdmap_nats_fenced_total").unwrap_or(0.0) > 0.0,
        "{a_metrics}"
    );
    let log = a.log_text();
    assert!(log.contains("was not renewed in time"), "{log}");
    assert!(!log.contains("nats-test-token-secret"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_waiting_for_a_record_keep_their_bodies_in_jetstream_past_the_bound() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let emu = emulator(0).await;
    let args = ["--set", "requests_per_minute=0", "--max-parked-mb", "1"];
    let replica = Replica::start(&server.url(), &emu.url(), &args);
    crate::parked::parked_bodies_wait_in_the_queue_until_the_record_appears(
        &replica.url,
        KEY,
        &emu,
        100,
        40,
    )
    .await;
}

const SKIPPED: &str = "zdmap_unchanged_writes_skipped_total";

/// An identify of `u1` with `plan`.
fn identify(n: usize, plan: &str) -> Value {
    json!({"type": "identify", "userId": "u1", "messageId": format!("i-{n}"),
           "traits": {"email": "u1@example.com", "name": "Ada", "plan": plan}})
}

/// A track of `u1`: once Zendesk has it, the identifies posted before it were delivered.
fn track(n: usize) -> Value {
    json!({"type": "track", "event": "Signed In", "userId": "u1", "messageId": format!("t-{n}"),
           "properties": {"n": n}})
}

/// User upserts Zendesk was sent, single or in bulk.
fn user_upserts(emu: &Emulator) -> usize {
    emu.requests()
        .iter()
        .filter(|r| {
            r["method"] == "POST"
                && r["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/api/v2/users/create_or_update"))
        })
        .count()
}

/// Posts `identify` then a track of `u1` to `url`, and waits until Zendesk has the track (the
/// `n`th user event).
async fn identify_then_track(emu: &Emulator, url: &str, identify: Value, n: usize) {
    assert_eq!(post_batch(url, Some(KEY), &[identify, track(n)]).await, 200);
    eventually("the track recorded", Duration::from_secs(30), async || {
        count(&emu.state(), "events") == n + 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeated_identical_identify_on_nats_costs_no_second_upsert() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let emu = emulator(0).await;
    let replica = sole_replica(&server.url(), &emu.url(), &[]).await;
    identify_then_track(&emu, &replica.url, identify(0, "pro"), 0).await;
    identify_then_track(&emu, &replica.url, identify(1, "pro"), 1).await;
    assert_eq!(user_upserts(&emu), 1, "the repeated identify was skipped");
    let metrics = Metrics::once(&replica.url, SKIPPED, |n| n >= 1.0).await;
    assert_eq!(metrics.get(SKIPPED), Some(1.0));
    identify_then_track(&emu, &replica.url, identify(2, "enterprise"), 2).await;
    assert_eq!(user_upserts(&emu), 2, "a changed identify is sent");
    replica.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_last_write_one_replica_applied_is_the_one_the_next_replica_reads() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let emu = emulator(0).await;
    let first = sole_replica(&server.url(), &emu.url(), &[]).await;
    identify_then_track(&emu, &first.url, identify(0, "pro"), 0).await;
    assert_eq!(user_upserts(&emu), 1);
    // Its partitions hand over to the next replica.
    first.stop();

    let second = sole_replica(&server.url(), &emu.url(), &[]).await;
    identify_then_track(&emu, &second.url, identify(1, "pro"), 1).await;
    assert_eq!(
        user_upserts(&emu),
        1,
        "the identify the first replica applied is not sent again by the second"
    );
    assert_eq!(
        Metrics::once(&second.url, SKIPPED, |n| n >= 1.0)
            .await
            .get(SKIPPED),
        Some(1.0)
    );
    identify_then_track(&emu, &second.url, identify(2, "enterprise"), 2).await;
    assert_eq!(user_upserts(&emu), 2, "a changed identify is sent");
    second.stop();

    // The first identify again: the last write applied is the second replica's changed one.
    let third = sole_replica(&server.url(), &emu.url(), &[]).await;
    identify_then_track(&emu, &third.url, identify(3, "pro"), 3).await;
    assert_eq!(
        user_upserts(&emu),
        3,
        "an identify equal to an older write is sent"
    );
    identify_then_track(&emu, &third.url, identify(4, "pro"), 4).await;
    assert_eq!(user_upserts(&emu), 3, "and then skipped when repeated");
    third.stop();
    let state = emu.state();
    assert_eq!(count(&state, "users"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_refused_on_one_replica_leaves_no_record_for_the_next() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let emu = emulator(0).await;
    let first = sole_replica(&server.url(), &emu.url(), &[]).await;
    identify_then_track(&emu, &first.url, identify(0, "pro"), 0).await;
    // Another write to the user, refused by Zendesk: the record is forgotten before it goes out.
    let refused = json!({"type": "identify", "userId": "u1", "messageId": "i-bad",
                         "traits": {"email": "not an email", "name": "Ada"}});
    identify_then_track(&emu, &first.url, refused, 1).await;
    assert_eq!(user_upserts(&emu), 2);
    first.stop();

    let second = sole_replica(&server.url(), &emu.url(), &[]).await;
    identify_then_track(&emu, &second.url, identify(1, "pro"), 2).await;
    assert_eq!(
        user_upserts(&emu),
        3,
        "no record is left to skip by once another write to the entity went out"
    );
    second.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_replica_answers_for_an_event_another_accepted_and_delivered() {
    use crate::journal::{TOKEN, api, entries_of, kinds, record_in};
    let Some(server) = NatsServer::start() else {
        return;
    };
    let emu = emulator(0).await;
    let start = || {
        let listen = format!("127.0.0.1:{}", crate::support::serving::free_port());
        let replica = Replica::start_with_env(
            &server.url(),
            &emu.url(),
            &["--admin-listen", &listen],
            &[("ZDMAP_ADMIN_TOKEN", TOKEN)],
        );
        (replica, format!("http://{listen}"))
    };
    let (a, _) = start();
    let (_b, b_admin) = start();

    let events: Vec<Value> = (0..3).map(|n| ticket(7, n)).collect();
    assert_eq!(post_batch(&a.url, Some(KEY), &events).await, 200);

    // B neither accepted the events nor (necessarily) delivered them: it reads the shared log.
    for n in 0..3 {
        let record = record_in(&b_admin, &format!("msg-7-{n}"), "delivered").await;
        let seen = kinds(&record);
        assert_eq!(
            seen.first().map(String::as_str),
            Some("accepted"),
            "{record}"
        );
        assert!(seen.iter().any(|k| k == "matched"), "{record}");
        assert_eq!(
            seen.last().map(String::as_str),
            Some("delivered"),
            "{record}"
        );
        assert_eq!(record["user_id"], "u-7", "{record}");
        assert_eq!(record["email"], "user7@example.com", "{record}");
        let requests = entries_of(&record, "request");
        assert!(
            requests.iter().any(|r| r["status"]
                .as_u64()
                .is_some_and(|s| (200..300).contains(&s))),
            "a request Zendesk took: {record}"
        );
    }
    let (status, found) = api(&b_admin, "events?user_id=u-7").await;
    assert_eq!(status, 200, "{found}");
    let mut ids: Vec<&str> = found["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["message_id"].as_str())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["msg-7-0", "msg-7-1", "msg-7-2"], "{found}");

    // A replica started afterwards builds its copy from the stream.
    let (_c, c_admin) = start();
    let record = record_in(&c_admin, "msg-7-2", "delivered").await;
    assert_eq!(
        kinds(&record).first().map(String::as_str),
        Some("accepted"),
        "{record}"
    );
}

/// Destinations on one NATS account: each delivers every event routed to it on its own, with
/// its own subjects, consumers, leases, dead letters and deduplication; the default destination
/// keeps the names of a deployment from before destinations.
mod destinations {
    use super::*;
    use futures_util::StreamExt as _;
    use zdmap::deliver::DeadLetter;
    use zdmap::queue::{
        DeadLetters, Item, ItemId, NatsOptions, NatsQueue, NewItem, Queue, Selection,
    };

    /// The queue of `destination` on `server`, with few partitions (quick to take).
    async fn queue(server: &NatsServer, destination: &str) -> NatsQueue {
        let options = NatsOptions {
            partitions: 4,
            ..NatsOptions::new(&server.url())
        }
        .for_destination(destination);
        NatsQueue::open(&options).await.expect("the queue opens")
    }

    /// User `u`'s event, with the sender's `messageId` `id`, routed to `destinations`.
    fn item(u: usize, id: &str, destinations: &[&str]) -> NewItem {
        NewItem {
            event: ticket(u, 0),
            partition: Some(format!("user:u-{u}")),
            only: None,
            force: false,
            message_id: Some(id.to_owned()),
            destinations: destinations.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn letter(u: usize) -> DeadLetter {
        DeadLetter {
            event: ticket(u, 0),
            action: Some("create_ticket".into()),
            step: "create".into(),
            status: Some(422),
            code: Some("RecordInvalid".into()),
            message: "refused".into(),
            attempts: 1,
            at: "2026-12-06T00:00:00Z".into(),
            changes: Vec::new(),
        }
    }

    /// Everything `queue` hands out within `within`.
    async fn fetched(queue: &NatsQueue, within: Duration) -> Vec<Item> {
        let deadline = Instant::now() + within;
        let mut items = Vec::new();
        while Instant::now() < deadline {
            items.extend(queue.fetch(ItemId(0), 100).await.expect("fetch"));
            queue.changed(Duration::from_millis(100)).await;
        }
        items
    }

    /// Waits until `queue` has handed out `n` items, then a while longer for any more.
    async fn fetched_n(queue: &NatsQueue, n: usize) -> Vec<Item> {
        let mut items = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while items.len() < n && Instant::now() < deadline {
            items.extend(queue.fetch(ItemId(0), 100).await.expect("fetch"));
            queue.changed(Duration::from_millis(100)).await;
        }
        items.extend(fetched(queue, Duration::from_millis(700)).await);
        items
    }

    async fn depth_becomes(queue: &NatsQueue, n: u64) {
        eventually(
            &format!("{n} waiting"),
            Duration::from_secs(10),
            async || queue.depth().await.expect("depth") == n,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_event_for_two_destinations_is_delivered_by_each_on_its_own() {
        let Some(server) = NatsServer::start() else {
            return;
        };
        let (eu, us) = (queue(&server, "eu").await, queue(&server, "us").await);
        let pushed = eu
            .push(vec![item(1, "m-1", &["eu", "us"])], Vec::new())
            .await
            .expect("push");
        assert_eq!(pushed.duplicates, 0);

        let (from_eu, from_us) = (fetched_n(&eu, 1).await, fetched_n(&us, 1).await);
        assert_eq!(from_eu.len(), 1, "eu fetches the event once");
        assert_eq!(from_us.len(), 1, "us fetches the event once");
        assert_eq!(from_eu[0].event, ticket(1, 0));
        assert_eq!(from_us[0].event, ticket(1, 0));
        assert_eq!(from_eu[0].partition.as_deref(), Some("user:u-1"));

        // Settled by eu: gone for eu, still waiting for us.
        eu.finish(from_eu[0].id, Vec::new()).expect("finish");
        depth_becomes(&eu, 0).await;
        assert_eq!(us.depth().await.expect("depth"), 1);
        us.finish(from_us[0].id, Vec::new()).expect("finish");
        depth_becomes(&us, 0).await;

        // Each destination's partitions are leased apart: both hold all four.
        let keys: HashSet<String> = eu
            .layout()
            .leases
            .keys()
            .await
            .expect("keys")
            .filter_map(|k| async { k.ok() })
            .collect()
            .await;
        for p in 0..4 {
            assert!(keys.contains(&format!("d.eu.p.{p}")), "{keys:?}");
            assert!(keys.contains(&format!("d.us.p.{p}")), "{keys:?}");
        }
        eu.close().await;
        us.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_letter_is_its_destinations_alone_and_replays_to_it_only() {
        let Some(server) = NatsServer::start() else {
            return;
        };
        let (eu, us) = (queue(&server, "eu").await, queue(&server, "us").await);
        eu.push(Vec::new(), vec![letter(2)]).await.expect("push");
        let (mut eu_letters, mut us_letters) = (
            eu.dead_letters().await.expect("letters"),
            us.dead_letters().await.expect("letters"),
        );
        let listed = eu_letters.list(0, 10).await.expect("list");
        assert_eq!(listed.len(), 1);
        let id = listed[0].id;
        assert_eq!(eu_letters.count().await.expect("count"), 1);
        assert!(us_letters.list(0, 10).await.expect("list").is_empty());
        assert_eq!(us_letters.count().await.expect("count"), 0);
        assert!(us_letters.get(id).await.expect("get").is_none());
        assert_eq!(us_letters.purge(&Selection::All).await.expect("purge"), 0);
        assert_eq!(
            us_letters
                .replay(&Selection::Ids(vec![id]), false)
                .await
                .expect("replay")
                .moved,
            0,
            "us cannot replay eu's letter"
        );

        let replayed = eu_letters
            .replay(&Selection::Ids(vec![id]), false)
            .await
            .expect("replay");
        assert_eq!(replayed.moved, 1);
        assert_eq!(eu_letters.count().await.expect("count"), 0);
        let from_eu = fetched_n(&eu, 1).await;
        assert_eq!(from_eu.len(), 1);
        assert_eq!(
            from_eu[0].only.as_ref().map(|a| a.as_str()),
            Some("create_ticket")
        );
        assert!(fetched(&us, Duration::from_secs(1)).await.is_empty());
        assert_eq!(us.depth().await.expect("depth"), 0);

        // `zdmap dead-letters --destination` opens the same: a letter `us` refused is listed
        // for `us` only.
        us.push(Vec::new(), vec![letter(3)]).await.expect("push");
        let listed = |destination: &str| {
            let url = server.url();
            let args = [
                "dead-letters",
                "--queue",
                &url,
                "--destination",
                destination,
                "list",
            ];
            let output = zdmap(&args, "");
            assert!(output.status.success(), "{output:?}");
            String::from_utf8_lossy(&output.stdout).lines().count()
        };
        assert_eq!(listed("us"), 1);
        assert_eq!(listed("eu"), 0);
        assert_eq!(listed("default"), 0);
        eu.close().await;
        us.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_id_sent_again_is_stored_once_per_destination() {
        let Some(server) = NatsServer::start() else {
            return;
        };
        let (eu, us) = (queue(&server, "eu").await, queue(&server, "us").await);
        // A first send stored for eu only (the sender's process stopped before us had it)...
        let first = eu
            .push(vec![item(4, "m-4", &["eu"])], Vec::new())
            .await
            .expect("push");
        assert_eq!(first.duplicates, 0);
        // ...then the same call for both: stored for us, not again for eu.
        let again = eu
            .push(vec![item(4, "m-4", &["eu", "us"])], Vec::new())
            .await
            .expect("push");
        assert_eq!(again.duplicates, 0, "us lacked it");
        // And once more: a duplicate everywhere.
        let third = us
            .push(vec![item(4, "m-4", &["eu", "us"])], Vec::new())
            .await
            .expect("push");
        assert_eq!(third.duplicates, 1);
        assert_eq!(fetched_n(&eu, 1).await.len(), 1);
        assert_eq!(fetched_n(&us, 1).await.len(), 1);
        eu.close().await;
        us.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_destination_keeps_its_own_token_chain() {
        use zdmap::deliver::auth::{Chain, Secret};
        let Some(server) = NatsServer::start() else {
            return;
        };
        let store = async |destination: Option<&str>| {
            zdmap::commands::auth::open_store(
                None,
                std::path::Path::new("unused"),
                Some(&server.url()),
                destination,
                Duration::from_secs(5),
            )
            .await
            .expect("the store opens")
        };
        let chain = |refresh: &str| Chain {
            client_id: "app".into(),
            scope: "read write".into(),
            access_token: Secret::new("access"),
            access_expires_at: None,
            refresh_token: Secret::new(refresh),
            refresh_expires_at: None,
            issued_at: std::time::SystemTime::now(),
            login_needed: None,
            in_doubt: false,
            refreshing: None,
        };
        let (default, eu) = (store(None).await, store(Some("eu")).await);
        eu.write(&chain("refresh-eu"), Some(0))
            .await
            .expect("write");
        assert!(default.read().await.expect("read").is_none());
        default
            .write(&chain("refresh-default"), Some(0))
            .await
            .expect("write");
        let read = |v: Option<zdmap::deliver::auth::Versioned>| {
            v.expect("a chain").chain.refresh_token.expose().to_owned()
        };
        assert_eq!(read(eu.read().await.expect("read")), "refresh-eu");
        assert_eq!(read(default.read().await.expect("read")), "refresh-default");
        assert!(eu.place().contains("d.eu.chain"), "{}", eu.place());

        // The default's chain is at the key it always had.
        let js =
            async_nats::jetstream::new(async_nats::connect(server.url()).await.expect("connect"));
        let bucket = js.get_key_value("zdmap_oauth").await.expect("bucket");
        assert!(bucket.get("chain").await.expect("get").is_some());
        assert!(bucket.get("d.eu.chain").await.expect("get").is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_destination_shares_its_own_request_budget_and_pauses() {
        use std::sync::Arc;
        use zdmap::deliver::Budget;
        use zdmap::deliver::budget::SharedAllowance as _;
        use zdmap::queue::nats::{Layout, budget::NatsAllowance};
        let Some(server) = NatsServer::start() else {
            return;
        };
        let layout = async |destination: &str| {
            Layout::open(&NatsOptions::new(&server.url()).for_destination(destination))
                .await
                .expect("layout")
        };
        let (default, eu) = (layout("default").await, layout("eu").await);
        // Two replicas of eu, one of the default destination.
        let budget = || Arc::new(Budget::new(Some(600)));
        let (eu_a, eu_b, default_budget) = (budget(), budget(), budget());
        let shared_a = NatsAllowance::share(eu.settings.clone(), &eu.names, &eu_a);
        let _shared_b = NatsAllowance::share(eu.settings.clone(), &eu.names, &eu_b);
        let _shared_default =
            NatsAllowance::share(default.settings.clone(), &default.names, &default_budget);

        eu_a.acquire().await;
        let keys = async || -> HashSet<String> {
            eu.settings
                .keys()
                .await
                .expect("keys")
                .filter_map(|k| async { k.ok() })
                .collect()
                .await
        };
        let written = keys().await;
        assert!(written.contains("d.eu.budget"), "{written:?}");
        assert!(!written.contains("budget"), "{written:?}");

        // A 429 seen by one replica of eu pauses the other, not the default destination.
        shared_a.pause_until(std::time::SystemTime::now() + Duration::from_secs(5));
        eventually(
            "eu's other replica paused",
            Duration::from_secs(5),
            async || eu_b.paused_until().is_some(),
        )
        .await;
        assert!(keys().await.contains("d.eu.pause"));
        assert!(default_budget.paused_until().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deployment_from_before_destinations_keeps_its_names() {
        use async_nats::jetstream::{self, stream};
        let Some(server) = NatsServer::start() else {
            return;
        };
        // The streams as a deployment from before destinations made them.
        let js = jetstream::new(async_nats::connect(server.url()).await.expect("connect"));
        for (name, subject) in [
            ("ZDMAP_EVENTS", "zdmap.events.*"),
            ("ZDMAP_DEAD_LETTERS", "zdmap.dead_letters"),
        ] {
            js.create_stream(stream::Config {
                name: name.into(),
                subjects: vec![subject.into()],
                retention: if name == "ZDMAP_EVENTS" {
                    stream::RetentionPolicy::WorkQueue
                } else {
                    stream::RetentionPolicy::Limits
                },
                ..Default::default()
            })
            .await
            .expect("stream");
        }
        let old = js
            .publish(
                "zdmap.events.1",
                serde_json::to_vec(&ticket(9, 0)).expect("json").into(),
            )
            .await
            .expect("publish");
        old.await.expect("stored");

        let default = queue(&server, "default").await;
        let eu = queue(&server, "eu").await;
        default
            .push(vec![item(5, "m-5", &[])], vec![letter(5)])
            .await
            .expect("push");
        // The event waiting from before, and the new one, both the default destination's.
        assert_eq!(fetched_n(&default, 2).await.len(), 2);
        assert!(fetched(&eu, Duration::from_millis(500)).await.is_empty());

        let events = js.get_stream("ZDMAP_EVENTS").await.expect("stream");
        let info = events.get_info().await.expect("info");
        assert_eq!(info.config.subjects, ["zdmap.events.*", "zdmap.events.*.*"]);
        let mut subjects = events
            .info_with_subjects("zdmap.>")
            .await
            .expect("subjects");
        let mut seen = Vec::new();
        while let Some(s) = subjects.next().await {
            seen.push(s.expect("subject").0);
        }
        assert!(
            seen.iter()
                .all(|s| s.split('.').count() == 3 && s.starts_with("zdmap.events.")),
            "{seen:?}"
        );
        let newest = events
            .get_raw_message(info.state.last_sequence)
            .await
            .expect("the event");
        assert_eq!(
            newest
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str()),
            Some("m-5"),
            "the sender's messageId itself"
        );
        let consumers: Vec<String> = events
            .consumer_names()
            .filter_map(|n| async { n.ok() })
            .collect()
            .await;
        assert!(
            consumers.iter().any(|c| c.starts_with('p'))
                && consumers.iter().any(|c| c.starts_with("eu@p")),
            "{consumers:?}"
        );
        let leases: HashSet<String> = default
            .layout()
            .leases
            .keys()
            .await
            .expect("keys")
            .filter_map(|k| async { k.ok() })
            .collect()
            .await;
        assert!(
            leases.contains("p.0") && leases.iter().any(|k| k.starts_with("r.")),
            "{leases:?}"
        );

        let letters = js.get_stream("ZDMAP_DEAD_LETTERS").await.expect("stream");
        assert_eq!(
            letters.cached_info().config.subjects,
            ["zdmap.dead_letters", "zdmap.dead_letters.*"]
        );
        let letter = letters
            .get_last_raw_message_by_subject("zdmap.dead_letters")
            .await
            .expect("the letter");
        assert!(String::from_utf8_lossy(&letter.payload).contains("refused"));
        default.close().await;
        eu.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serve_on_nats_delivers_each_event_once_to_each_of_two_destinations() {
        use crate::support::fleet::{Dest, Fleet, KEY_A};
        let Some(server) = NatsServer::start() else {
            return;
        };
        let (eu, us) = (emulator(5).await, emulator(5).await);
        let fleet = Fleet::new(
            &[Dest::new("eu", &eu), Dest::new("us", &us)],
            &["eu", "us"],
            &[],
            &format!(
                "queue: {}\nnats_partitions: 4\nnats_lease: 2s\n",
                server.url()
            ),
        );
        let serve = fleet.start();
        let (users, per_user) = (4, 8);
        let events = tickets(users, per_user);
        for chunk in events.chunks(10) {
            serve.post(KEY_A, chunk).await;
        }
        for emu in [&eu, &us] {
            all_delivered_once_in_order(emu, users * per_user, users, per_user).await;
        }
        serve.drained(&["eu", "us"]).await;
        for emu in [&eu, &us] {
            each_ticket_once(&emu.state(), users * per_user);
        }
    }
}
