//! The web console in a real browser (headless Chromium over WebDriver): logging in, the
//! overview's counts of a known run, a dead letter found, shown inert and replayed, an event's
//! timeline in the delivery log with its failing request and Zendesk's error, replayed from
//! there, the event tester, the mappings; and, without a browser, what a request without the token or the CSRF
//! token gets. Each page is saved as a screenshot among the build's artifacts.

use crate::support::browser::Browser;
use crate::support::serving::{KEY, Setup, start};
use crate::support::state::ticket_created;
use crate::support::wait::eventually;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use std::time::Duration;
use zdmap::emulator::{Emulator, ForcedFault};
use zdmap::serve::admin::{AdminOptions, AdminToken};

const TOKEN: &str = "console-test-admin-token";

/// Event data that would run if a page put it in as HTML.
const HOSTILE: &str =
    r#"<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">"#;

/// A client that shows redirects instead of following them.
fn plain() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// The session cookie a login with the admin token sets (`name=value`).
async fn logged_in(admin: &str) -> String {
    let answer = plain()
        .post(format!("{admin}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={TOKEN}"))
        .send()
        .await
        .expect("login");
    assert_eq!(answer.status(), 303);
    let cookie = answer
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie")
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    cookie.split(';').next().expect("name=value").to_owned()
}

/// Without the token: the API refuses, pages lead to the login, posts without the session's
/// CSRF token are refused; and every answer carries the content security policy.
async fn refusals(admin: &str) {
    let client = plain();
    let api = client
        .get(format!("{admin}/api/dead-letters"))
        .send()
        .await
        .expect("api");
    assert_eq!(api.status(), 401);
    let csp = api
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    for page in ["/", "/dead-letters", "/tester", "/mappings"] {
        let answer = client
            .get(format!("{admin}{page}"))
            .send()
            .await
            .expect("page");
        assert_eq!(answer.status(), 303, "{page}");
        assert_eq!(
            answer
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok()),
            Some("/login"),
            "{page}"
        );
    }
    let answer = client
        .post(format!("{admin}/dead-letters/replay"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("all=yes")
        .send()
        .await
        .expect("post");
    assert_eq!(answer.status(), 401, "a post without a session");
    let answer = client
        .post(format!("{admin}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=not-the-admin-token")
        .send()
        .await
        .expect("login");
    assert_eq!(answer.status(), 401);
    assert!(answer.headers().get("set-cookie").is_none());

    let cookie = logged_in(admin).await;
    let answer = client
        .post(format!("{admin}/dead-letters/replay"))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("all=yes")
        .send()
        .await
        .expect("post");
    assert_eq!(
        answer.status(),
        403,
        "a session's post without its CSRF token"
    );
    let answer = client
        .post(format!("{admin}/api/dead-letters/replay"))
        .header("cookie", &cookie)
        .header("x-csrf-token", "a-guess")
        .json(&json!({"all": true}))
        .send()
        .await
        .expect("post");
    assert_eq!(answer.status(), 403, "nor with a wrong one");
    let answer = client
        .get(format!("{admin}/api/dead-letters"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("get");
    assert_eq!(answer.status(), 200, "a session reads the API");
}

/// Nothing of the event data became an element or ran: the console's script is the page's
/// only one, and no image has an `onerror`.
async fn inert(browser: &Browser) {
    let found = browser
        .eval(
            "return [document.querySelectorAll('script').length, \
             document.querySelectorAll('img[onerror]').length, \
             window.__pwned === undefined];",
        )
        .await;
    assert_eq!(found, json!([1, 0, true]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_run_replays_its_dead_letter_and_tests_events() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let emu = Emulator::start(Default::default()).await.expect("emulator");
    let data = tempfile::tempdir().expect("tempdir");
    let server = start(
        &emu,
        data.path(),
        Setup {
            admin: Some(AdminOptions {
                listen: "127.0.0.1:0".parse().expect("addr"),
                token: AdminToken::new(TOKEN).expect("a token"),
                required: true,
                allowed_hosts: Vec::new(),
            }),
            ..Setup::default()
        },
    )
    .await;
    let admin = server.admin_url().expect("the admin listener runs");
    refusals(&admin).await;

    // A known run: two users delivered, two tickets that Zendesk refuses (the first one's
    // subject carries HTML, as a trait could).
    emu.configure(|k| {
        k.forced_faults.push(
            ForcedFault::new(422)
                .times(2)
                .on_exact_path("/api/v2/tickets")
                .on_method("POST"),
        )
    });
    let events = json!({"batch": [
        {"type": "identify", "userId": "u-1", "messageId": "console-u1",
         "traits": {"email": "ada@example.com", "name": "Ada"}},
        {"type": "identify", "userId": "u-2", "messageId": "console-u2",
         "traits": {"email": "grace@example.com", "name": "Grace"}},
        {"type": "track", "event": "Ticket Created", "userId": "u-1", "messageId": "console-ticket",
         "properties": {"subject": HOSTILE, "comment": "It broke", "requester_email": "ada@example.com"}},
        {"type": "track", "event": "Ticket Created", "userId": "u-2", "messageId": "console-ticket-2",
         "properties": {"subject": "Second", "comment": "Also broke", "requester_email": "grace@example.com"}},
    ]});
    let answer = reqwest::Client::new()
        .post(format!("{}/v1/batch", server.url()))
        .basic_auth(KEY, Some(""))
        .json(&events)
        .send()
        .await
        .expect("ingest");
    assert_eq!(answer.status(), 200);
    let metrics = &server.shared().metrics;
    eventually("the run is settled", Duration::from_secs(60), async || {
        metrics.delivered.load(Ordering::Relaxed) + metrics.dead_lettered.load(Ordering::Relaxed)
            == 4
    })
    .await;

    // Logging in: a wrong token gets the form again, the right one the overview.
    browser.open(&format!("{admin}/dead-letters")).await;
    browser.find("#token").await;
    assert_eq!(browser.path().await, "/login");
    browser.screenshot("login").await;
    browser.fill("#token", "not-the-admin-token").await;
    browser.click("#login").await;
    assert!(
        browser
            .text("#problem")
            .await
            .contains("not the admin token")
    );
    browser.fill("#token", TOKEN).await;
    browser.click("#login").await;
    browser.find("#counts").await;
    assert_eq!(browser.text("#count-accepted").await, "4");
    assert_eq!(browser.text("#count-delivered").await, "2");
    assert_eq!(browser.text("#count-dead-lettered").await, "2");
    assert_eq!(browser.text("#count-dead-letters").await, "2");
    assert_eq!(browser.text("#count-queued").await, "0");
    assert!(browser.has("#chart-accepted svg").await);
    browser.screenshot_for_docs("overview").await;

    // The dead letter: listed with Zendesk's answer, its event shown as text.
    browser.open(&format!("{admin}/dead-letters")).await;
    let row = browser.text("#letters tbody tr").await;
    assert!(
        row.contains("console-ticket") && row.contains("create_ticket") && row.contains("422"),
        "{row}"
    );
    browser.screenshot_for_docs("dead_letters").await;

    // The tester offers the dead letters' events to start from.
    browser.open(&format!("{admin}/tester")).await;
    let picks = browser.text("#pick").await;
    assert!(picks.contains("console-ticket-2"), "{picks}");
    // The letters' ids follow the order the two tickets failed in, which delivery does not fix.
    let letter: Value = reqwest::Client::new()
        .get(format!(
            "{admin}/api/dead-letters?message_id=console-ticket"
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("api")
        .json()
        .await
        .expect("json");
    let letter_id = letter["dead_letters"][0]["id"].clone();
    assert!(letter_id.is_u64(), "{letter}");
    browser
        .click(&format!("#pick a[href='/tester?letter={letter_id}']"))
        .await;
    let loaded = eventually(
        "the picked event is loaded",
        Duration::from_secs(20),
        async || {
            let text = browser
                .eval("return document.getElementById('event').value;")
                .await;
            text.as_str()
                .filter(|t| t.contains("\"console-ticket\""))
                .map(str::to_owned)
        },
    )
    .await;
    let picked: Value = serde_json::from_str(&loaded).expect("the event as JSON");
    assert_eq!(picked["properties"]["subject"], HOSTILE);

    browser.open(&format!("{admin}/dead-letters")).await;
    browser
        .click(&format!("#letters a[href='/dead-letters/{letter_id}']"))
        .await;
    let letter: Value = reqwest::Client::new()
        .get(format!("{admin}/api/dead-letters/{letter_id}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("api")
        .json()
        .await
        .expect("json");
    assert_eq!(letter["message_id"], "console-ticket");
    let message = letter["message"].as_str().expect("Zendesk's message");
    assert_eq!(browser.text("#letter-message").await, message);
    let facts = browser.text("#letter").await;
    for fact in [&letter["status"], &letter["code"]] {
        assert!(
            facts.contains(&fact.to_string().replace('"', "")),
            "{facts}"
        );
    }
    let event = browser.text("#event").await;
    assert!(
        event.contains(HOSTILE.replace('"', "\\\"").as_str()),
        "{event}"
    );
    inert(&browser).await;
    browser.screenshot_for_docs("dead_letter").await;

    // Replayed from the page (the fault was Zendesk's once): the ticket is created.
    browser.click("#replay").await;
    assert!(
        browser
            .text("#notice")
            .await
            .contains("1 dead letter(s) replayed")
    );
    ticket_created(&emu, HOSTILE).await;
    browser.open(&format!("{admin}/dead-letters")).await;
    let left = browser.text("#letters tbody").await;
    assert!(
        left.contains("console-ticket-2") && left.lines().count() == 1,
        "{left}"
    );

    // The delivery log: the other dead-lettered event found by its messageId, its timeline
    // with the failing request and Zendesk's error, then replayed from there.
    browser.open(&format!("{admin}/events")).await;
    browser.fill("#search-message-id", "console-ticket-2").await;
    browser.click("#search-button").await;
    let row = browser.text("#events tbody tr").await;
    assert!(
        row.contains("console-ticket-2") && row.contains("dead lettered"),
        "{row}"
    );
    assert!(browser.has("#events tbody tr:only-child").await);
    browser.screenshot_for_docs("events").await;
    browser.click("#events tbody tr a").await;
    let timeline = browser.text("#timeline").await;
    let record: Value = reqwest::Client::new()
        .get(format!("{admin}/api/events/console-ticket-2"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("api")
        .json()
        .await
        .expect("json");
    let failed = record["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .find(|e| e["kind"] == "request" && e["status"] == 422)
        .expect("the failing request is recorded");
    assert!(timeline.contains("POST /api/v2/tickets"), "{timeline}");
    for said in [&failed["code"], &failed["error"]] {
        let said = said.as_str().expect("Zendesk's code and error");
        assert!(timeline.contains(said), "{said} in {timeline}");
    }
    assert_eq!(browser.text("#state").await, "dead lettered");
    inert(&browser).await;
    browser.screenshot_for_docs("event").await;
    browser.click("#replay").await;
    assert!(
        browser
            .text("#notice")
            .await
            .contains("1 dead letter(s) replayed")
    );
    ticket_created(&emu, "Second").await;
    let url = format!("{admin}/events/console-ticket-2");
    let shown = &browser;
    eventually(
        "the timeline ends delivered",
        Duration::from_secs(60),
        async || {
            shown.open(&url).await;
            shown.text("#state").await == "delivered"
        },
    )
    .await;
    let timeline = browser.text("#timeline").await;
    assert!(
        timeline.contains("Replayed for create_ticket by console"),
        "{timeline}"
    );
    browser.open(&format!("{admin}/dead-letters")).await;
    browser.find("#none").await;

    // The tester: a pasted event's actions, inert, then sent to the emulator.
    browser.open(&format!("{admin}/tester")).await;
    let pasted = json!({"type": "identify", "userId": "u-3", "messageId": "console-tester",
        "traits": {"email": "hopper@example.com", "name": HOSTILE}});
    browser
        .fill(
            "#event",
            &serde_json::to_string_pretty(&pasted).expect("json"),
        )
        .await;
    browser.click("#try").await;
    let actions = browser.text("#actions").await;
    let line = |name: &str| {
        actions
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(line("upsert_user").contains("yes"), "{actions}");
    assert!(
        line("create_ticket").contains("trigger not matched"),
        "{actions}"
    );
    assert!(
        browser
            .text("main")
            .await
            .contains("/api/v2/users/create_or_update")
    );
    inert(&browser).await;
    browser.screenshot_for_docs("tester").await;
    browser.click("#send").await;
    assert!(browser.text("#sent").await.contains("console-tester"));
    eventually(
        "the sent event is delivered",
        Duration::from_secs(60),
        async || {
            emu.state()["users"]
                .as_array()
                .is_some_and(|u| u.iter().any(|u| u["email"] == "hopper@example.com"))
        },
    )
    .await;

    // The mappings as the server runs them.
    browser.open(&format!("{admin}/mappings")).await;
    let table = browser.text("#mapping-actions").await;
    assert!(
        table.contains("upsert_user") && table.contains("type = \"identify\""),
        "{table}"
    );
    browser.screenshot_for_docs("mappings").await;

    // Logged out, the pages lead to the login again.
    browser.click("header .logout button").await;
    browser.find("#token").await;
    browser.open(&format!("{admin}/")).await;
    browser.find("#token").await;
    assert_eq!(browser.path().await, "/login");

    browser.close().await;
    server.shutdown().await;
}
