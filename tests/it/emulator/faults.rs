//! Faults on demand: forced and random failures, latency, and writes applied whose answer is lost.

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use zdmap::emulator::{EmulatorOptions, ForcedFault};

use super::{AGENT, EmulatorApi, basic};

#[tokio::test]
async fn forced_faults_random_faults_and_latency_as_configured() {
    let api = EmulatorApi::start().await;
    api.emu.configure(|k| {
        k.forced_faults
            .push(ForcedFault::new(503).times(2).on_path("/api/v2/tickets"))
    });
    assert_eq!(
        api.get("/api/v2/users").await.status,
        200,
        "other paths unaffected"
    );
    let r = api.get("/api/v2/tickets").await;
    assert_eq!((r.status, r.header("retry-after")), (503, Some("1")));
    assert_eq!(api.get("/api/v2/tickets").await.status, 503);
    assert_eq!(api.get("/api/v2/tickets").await.status, 200, "consumed");

    // Over HTTP: the next request answers 429 with Retry-After 7; then a fault removed by configure.
    let cfg = api
        .http
        .post(format!("{}/__emulator/config", api.emu.url()))
        .json(&json!({"add_forced_fault": {"status": 429, "retry_after": 7}}))
        .send()
        .await
        .expect("config");
    let knobs: Value = cfg.json().await.expect("knobs");
    assert_eq!(knobs["forced_faults"][0]["status"], 429);
    let r = api.get("/api/v2/users").await;
    assert_eq!((r.status, r.header("retry-after")), (429, Some("7")));
    api.emu.configure(|k| {
        k.forced_faults = vec![ForcedFault::new(500).times(100), ForcedFault::new(401)]
    });
    assert_eq!(api.get("/api/v2/users").await.status, 500);
    api.emu.configure(|k| k.forced_faults.clear());
    assert_eq!(
        api.get("/api/v2/users").await.status,
        200,
        "replay after removing the fault"
    );
    let bad = api
        .http
        .post(format!("{}/__emulator/config", api.emu.url()))
        .json(&json!({"no_such_knob": 1}))
        .send()
        .await
        .expect("config");
    assert_eq!(bad.status().as_u16(), 400);

    // fail_rate 1: every request 500 or 503; deterministic under the seed.
    let statuses = |seed: u64| async move {
        let api = EmulatorApi::with(EmulatorOptions {
            fail_rate: 0.5,
            seed,
            ..Default::default()
        })
        .await;
        let mut out = Vec::new();
        for _ in 0..16 {
            out.push(api.get("/api/v2/users").await.status);
        }
        out
    };
    let (a, b) = (statuses(42).await, statuses(42).await);
    assert_eq!(a, b);
    assert!(
        a.contains(&200) && a.iter().any(|s| *s == 500 || *s == 503),
        "{a:?}"
    );
    api.emu.configure(|k| k.fail_rate = 1.0);
    assert!([500, 503].contains(&api.get("/api/v2/users").await.status));
    api.emu.configure(|k| {
        k.fail_rate = 0.0;
        k.latency_ms = 120;
    });
    let t0 = Instant::now();
    assert_eq!(api.get("/api/v2/users").await.status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(120));
}

#[tokio::test]
async fn a_write_is_applied_and_its_answer_lost() {
    let api = EmulatorApi::start().await;
    api.config(json!({"lost_answer_rate": 1.0, "lost_answer": "500"}))
        .await;
    let r = api
        .post(
            "/api/v2/users/create_or_update",
            json!({"user": {"email": "lost@example.com", "name": "Lost"}}),
        )
        .await;
    assert_eq!(r.status, 500, "the client sees a failure");
    assert!(r.header("x-rate-limit").is_some(), "budget headers stay");
    let state = api.emu.state();
    assert_eq!(
        state["users"][0]["email"], "lost@example.com",
        "yet it applied"
    );
    let log = api.emu.requests();
    assert_eq!(
        (log[0]["status"].as_u64(), log[0]["lost_answer"].as_str()),
        (Some(201), Some("500"))
    );
    // Reads never lose their answer.
    assert_eq!(api.get("/api/v2/users").await.status, 200);

    // Dropped: the connection closes without an answer, and the ticket exists.
    api.config(json!({"lost_answer": "drop"})).await;
    let sent = api
        .http
        .post(format!("{}/api/v2/tickets", api.emu.url()))
        .header("authorization", basic(AGENT))
        .json(&json!({"ticket": {"requester": {"email": "r@example.com", "name": "R"}, "comment": {"body": "once"}}}))
        .send()
        .await;
    assert!(sent.is_err(), "no answer: {sent:?}");
    let state = api.emu.state();
    assert_eq!(state["tickets"][0]["comments"][0]["body"], "once");
    assert_eq!(api.emu.requests()[2]["lost_answer"], "drop");
    // The emulator keeps serving other connections.
    api.config(json!({"lost_answer_rate": 0.0})).await;
    assert_eq!(
        api.post(
            "/api/v2/users/create_or_update",
            json!({"user": {"email": "ok@example.com", "name": "Ok"}})
        )
        .await
        .status,
        201
    );

    // Deterministic under the seed: the same requests lose the same answers.
    let lost = |seed: u64| async move {
        let api = EmulatorApi::with(EmulatorOptions {
            seed,
            ..Default::default()
        })
        .await;
        api.config(json!({"lost_answer_rate": 0.5, "lost_answer": "500"}))
            .await;
        let mut statuses = Vec::new();
        for i in 0..16 {
            let body = json!({"user": {"email": format!("u{i}@example.com"), "name": "U"}});
            statuses.push(
                api.post("/api/v2/users/create_or_update", body)
                    .await
                    .status,
            );
        }
        (statuses, api.emu.state()["users"].as_array().map(Vec::len))
    };
    let (a, b) = (lost(9).await, lost(9).await);
    assert_eq!(a, b);
    assert!(a.0.contains(&500) && a.0.contains(&201), "{a:?}");
    assert_eq!(a.1, Some(16), "every write applied");
}
