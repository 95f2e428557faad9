//! Bulk endpoints and their job statuses: queued, working, completed or failed, per-item results,
//! the job limit.

use crate::support::oas::{Oas, Validated};
use serde_json::{Value, json};
use std::time::Duration;

use super::{EmulatorApi, Reply};

impl EmulatorApi {
    /// Polls the job a bulk answer names.
    async fn job(&self, bulk: &Reply) -> Value {
        let id = bulk.body["job_status"]["id"].as_str().expect("job id");
        let r = self.get(&format!("/api/v2/job_statuses/{id}")).await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.body["job_status"].clone()
    }
}

#[tokio::test]
async fn a_users_job_is_queued_then_working_then_completed_with_per_item_results() {
    let api = EmulatorApi::start().await;
    let existing = api.user("old@example.com", "Old").await;
    api.config(json!({"bulk_import": true, "job_delay_ms": 10_000}))
        .await;
    let body = json!({"users": [
        {"email": "new@example.com", "name": "New", "external_id": "N-1"},
        {"email": "old@example.com", "name": "Old Renamed"},
        {"email": "nameless@example.com"},
        {"external_id": "N-1", "name": "New Again"}
    ]});
    let r = api.post("/api/v2/users/create_or_update_many", body).await;
    assert_eq!(
        (r.status, r.body["job_status"]["status"].as_str()),
        (200, Some("queued")),
        "{}",
        r.text
    );
    assert_eq!(r.body["job_status"]["total"], 4);
    assert!(r.body["job_status"]["results"].is_null());
    // Nothing is applied while the job is queued, then working.
    assert_eq!(api.job(&r).await["status"], "queued");
    api.emu.advance_clock(Duration::from_secs(6));
    assert_eq!(api.job(&r).await["status"], "working");
    assert_eq!(api.emu.state()["users"].as_array().map(Vec::len), Some(1));
    api.emu.advance_clock(Duration::from_secs(5));
    let job = api.job(&r).await;
    assert_eq!(
        (job["status"].as_str(), job["progress"].as_u64()),
        (Some("completed"), Some(4))
    );
    let results = &job["results"];
    let new_id = results[0]["id"].as_u64().expect("created id");
    assert_eq!(
        results[0],
        json!({"index": 0, "id": new_id, "action": "create", "status": "Created", "success": true})
    );
    assert_eq!(
        results[1],
        json!({"index": 1, "id": existing, "action": "update", "status": "Updated", "success": true})
    );
    assert_eq!(
        (
            results[2]["index"].as_u64(),
            results[2]["success"].as_bool(),
            results[2]["error"].as_str(),
            results[2]["details"].is_string()
        ),
        (Some(2), Some(false), Some("RecordInvalid"), true)
    );
    // Items apply in order: the fourth updates the user the first created.
    assert_eq!(
        (results[3]["id"].as_u64(), results[3]["action"].as_str()),
        (Some(new_id), Some("update"))
    );
    let user = api.get(&format!("/api/v2/users/{new_id}")).await;
    assert_eq!(user.body["user"]["name"], "New Again");
    let user = api.get(&format!("/api/v2/users/{existing}")).await;
    assert_eq!(user.body["user"]["name"], "Old Renamed");

    // show_many answers the known ids in the order asked.
    let id = job["id"].as_str().expect("id");
    let many = api
        .get(&format!(
            "/api/v2/job_statuses/show_many?ids={id},00000000000000000000000000000000"
        ))
        .await;
    assert_eq!(many.body["job_statuses"].as_array().map(Vec::len), Some(1));
    assert_eq!(many.body["job_statuses"][0]["status"], "completed");
    // Ended jobs are forgotten after an hour.
    api.emu.advance_clock(Duration::from_secs(3601));
    let gone = api.get(&format!("/api/v2/job_statuses/{id}")).await;
    assert_eq!(
        (gone.status, gone.body["error"].as_str()),
        (404, Some("RecordNotFound"))
    );
    // Lookups by id and external id.
    let users = api
        .get(&format!(
            "/api/v2/users/show_many?external_ids=n-1,nobody&ids={existing}"
        ))
        .await;
    assert_eq!(users.body["users"][0]["id"].as_u64(), Some(existing));
    let users = api
        .get("/api/v2/users/show_many?external_ids=n-1,nobody")
        .await;
    assert_eq!(users.body["users"][0]["id"].as_u64(), Some(new_id));
    let too_many: Vec<String> = (0..101).map(|i| i.to_string()).collect();
    let r = api
        .get(&format!(
            "/api/v2/users/show_many?ids={}",
            too_many.join(",")
        ))
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn organizations_memberships_and_tickets_are_written_in_bulk() {
    let api = EmulatorApi::start().await;
    let taken = api.org("T-1", "Taken").await;
    let r = api
        .post(
            "/api/v2/organizations/create_many",
            json!({"organizations": [{"name": "Alpha", "external_id": "A-1"}, {"name": "Beta", "external_id": "B-1"}, {"name": "taken"}]}),
        )
        .await;
    let results = api.job(&r).await["results"].clone();
    let (alpha, beta) = (
        results[0]["id"].as_u64().expect("alpha"),
        results[1]["id"].as_u64().expect("beta"),
    );
    assert_eq!(
        (results[0]["action"].as_str(), results[0]["status"].as_str()),
        (Some("create"), Some("Created"))
    );
    assert_eq!(
        (
            results[2]["success"].as_bool(),
            results[2]["error"].as_str()
        ),
        (Some(false), Some("RecordInvalid"))
    );

    // The same change by ids, then by external ids, then a batch of different changes.
    let r = api
        .put(
            &format!("/api/v2/organizations/update_many?ids={alpha},{beta},999"),
            json!({"organization": {"notes": "Priority"}}),
        )
        .await;
    let results = api.job(&r).await["results"].clone();
    assert_eq!(
        results[1],
        json!({"index": 1, "id": beta, "action": "update", "status": "Updated", "success": true})
    );
    assert_eq!(
        (
            results[2]["id"].as_u64(),
            results[2]["success"].as_bool(),
            results[2]["error"].as_str()
        ),
        (Some(999), Some(false), Some("RecordNotFound"))
    );
    let r = api
        .put(
            "/api/v2/organizations/update_many.json?external_ids=a-1,NOPE",
            json!({"organization": {"tags": ["vip"]}}),
        )
        .await;
    let results = api.job(&r).await["results"].clone();
    assert_eq!(results[0]["id"].as_u64(), Some(alpha));
    assert_eq!(
        (
            results[1]["external_id"].as_str(),
            results[1]["success"].as_bool()
        ),
        (Some("NOPE"), Some(false))
    );
    let r = api
        .put(
            "/api/v2/organizations/update_many",
            json!({"organizations": [{"id": alpha, "notes": "Normal"}, {"id": beta, "name": "Taken"}, {"notes": "no id"}]}),
        )
        .await;
    let results = api.job(&r).await["results"].clone();
    assert_eq!(results[0]["success"], true);
    assert_eq!(
        (results[1]["id"].as_u64(), results[1]["error"].as_str()),
        (Some(beta), Some("RecordInvalid"))
    );
    assert_eq!(results[2]["error"], "RecordNotFound");
    let orgs = api
        .get(&format!(
            "/api/v2/organizations/show_many?ids={alpha},{beta},{taken}"
        ))
        .await;
    let orgs = &orgs.body["organizations"];
    assert_eq!(
        (orgs[0]["notes"].as_str(), orgs[0]["tags"].clone()),
        (Some("Normal"), json!(["vip"]))
    );
    assert_eq!(
        (orgs[1]["name"].as_str(), orgs[1]["notes"].as_str()),
        (Some("Beta"), Some("Priority"))
    );
    let by_ext = api
        .get("/api/v2/organizations/show_many?external_ids=B-1,t-1")
        .await;
    let ids: Vec<u64> = by_ext.body["organizations"]
        .as_array()
        .map(|a| a.iter().filter_map(|o| o["id"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(ids, vec![beta, taken]);

    // Memberships: the first is the user's default; a repeat fails on its own.
    let uid = api.user("m@example.com", "M").await;
    let r = api
        .post(
            "/api/v2/organization_memberships/create_many",
            json!({"organization_memberships": [
                {"user_id": uid, "organization_id": alpha},
                {"user_id": uid, "organization_id": beta},
                {"user_id": uid, "organization_id": alpha},
                {"user_id": 1, "organization_id": alpha}
            ]}),
        )
        .await;
    let results = api.job(&r).await["results"].clone();
    assert_eq!(
        (results[0]["action"].as_str(), results[0]["status"].as_str()),
        (Some("create"), Some("Created"))
    );
    assert_eq!(
        (
            results[2]["success"].as_bool(),
            results[3]["success"].as_bool()
        ),
        (Some(false), Some(false))
    );
    let user = api.get(&format!("/api/v2/users/{uid}")).await;
    assert_eq!(user.body["user"]["organization_id"].as_u64(), Some(alpha));

    // Tickets: the same change by ids, and a batch where a closed ticket fails alone.
    let mut tickets = Vec::new();
    for status in ["new", "new", "closed"] {
        let t = api
            .post(
                "/api/v2/tickets",
                json!({"ticket": {"requester_id": uid, "status": status, "comment": {"body": "hi"}}}),
            )
            .await;
        tickets.push(t.body["ticket"]["id"].as_u64().expect("ticket id"));
    }
    let r = api
        .put(
            &format!(
                "/api/v2/tickets/update_many?ids={},{}",
                tickets[0], tickets[1]
            ),
            json!({"ticket": {"status": "open"}}),
        )
        .await;
    assert_eq!(api.job(&r).await["results"][1]["status"], "Updated");
    let r = api
        .put(
            "/api/v2/tickets/update_many",
            json!({"tickets": [
                {"id": tickets[0], "comment": {"body": "first"}},
                {"id": tickets[2], "status": "open"},
                {"id": tickets[0], "comment": {"body": "second"}}
            ]}),
        )
        .await;
    let results = api.job(&r).await["results"].clone();
    assert_eq!(
        (
            results[1]["id"].as_u64(),
            results[1]["error"].as_str(),
            results[1]["details"].as_str()
        ),
        (
            Some(tickets[2]),
            Some("RecordInvalid"),
            Some("closed prevents ticket update")
        )
    );
    let comments = api
        .get(&format!("/api/v2/tickets/{}/comments", tickets[0]))
        .await;
    let bodies: Vec<&str> = comments.body["comments"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["body"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(bodies, ["hi", "first", "second"]);
    let t = api.get(&format!("/api/v2/tickets/{}", tickets[1])).await;
    assert_eq!(t.body["ticket"]["status"], "open");

    // At most 100 items; the bulk body is required; create_many is POST only.
    let many: Vec<Value> = (0..101).map(|i| json!({"name": format!("O{i}")})).collect();
    let r = api
        .post(
            "/api/v2/organizations/create_many",
            json!({"organizations": many}),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = api
        .put("/api/v2/tickets/update_many", json!({"ticket": {}}))
        .await;
    assert_eq!(r.status, 400);
}

/// `GET job_statuses`: pending jobs first, newest first, then ended ones, latest ended first; a
/// cursor; only the last 100. A bulk ticket update writes each item's `metadata` into its audit
/// and its comment, as a single update does.
#[tokio::test]
async fn job_statuses_are_listed_and_bulk_ticket_updates_keep_their_metadata() {
    let spec = Oas::load();
    let api = EmulatorApi::start().await;
    let uid = api.user("req@example.com", "Req").await;
    let tid = api.opened_ticket(uid).await;
    let bulk = |comment: &str, marker: &str| {
        json!({"tickets": [{"id": tid, "comment": {"body": comment, "public": true},
                            "metadata": {"zdmap_marker": marker}}]})
    };
    // Two jobs end, then a third is submitted with a long delay.
    let first = api
        .put("/api/v2/tickets/update_many", bulk("one", "m-1"))
        .await;
    let second = api
        .put("/api/v2/tickets/update_many", bulk("two", "m-2"))
        .await;
    assert_eq!((first.status, second.status), (200, 200));
    api.emu.advance_clock(Duration::from_millis(10));
    api.config(json!({"job_delay_ms": 60_000})).await;
    let third = api
        .put("/api/v2/tickets/update_many", bulk("three", "m-3"))
        .await;
    let ids: Vec<&str> = [&first, &second, &third]
        .iter()
        .map(|r| r.body["job_status"]["id"].as_str().expect("job id"))
        .collect();

    let list = api.get("/api/v2/job_statuses").await;
    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(
        spec.validate_response("GET", "/api/v2/job_statuses", 200, &list.body)
            .expect("valid"),
        Validated::Valid
    );
    let listed: Vec<(&str, &str)> = list.body["job_statuses"]
        .as_array()
        .expect("job_statuses")
        .iter()
        .map(|j| {
            (
                j["id"].as_str().unwrap_or_default(),
                j["status"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            (ids[2], "queued"),
            (ids[1], "completed"),
            (ids[0], "completed")
        ]
    );
    assert_eq!(list.body["meta"]["has_more"], false);

    // A page at a time.
    let page = api.get("/api/v2/job_statuses?page[size]=2").await;
    assert_eq!(page.body["job_statuses"].as_array().map(Vec::len), Some(2));
    assert_eq!(page.body["meta"]["has_more"], true);
    let after = page.body["meta"]["after_cursor"].as_str().expect("cursor");
    let rest = api
        .get(&format!(
            "/api/v2/job_statuses?page[size]=2&page[after]={after}"
        ))
        .await;
    assert_eq!(rest.body["job_statuses"][0]["id"].as_str(), Some(ids[0]));
    assert_eq!(rest.body["meta"]["has_more"], false);
    let bad = api.get("/api/v2/job_statuses?page[size]=500").await;
    assert_eq!(bad.status, 400);

    // The bulk updates' markers are in the audits, their comments on the ticket, in order.
    api.emu.advance_clock(Duration::from_secs(61));
    let audits = api.get(&format!("/api/v2/tickets/{tid}/audits")).await;
    let markers: Vec<&str> = audits.body["audits"]
        .as_array()
        .expect("audits")
        .iter()
        .filter_map(|a| a["metadata"]["custom"]["zdmap_marker"].as_str())
        .collect();
    assert_eq!(markers, ["m-1", "m-2", "m-3"]);
    let comments = api.get(&format!("/api/v2/tickets/{tid}/comments")).await;
    let bodies: Vec<&str> = comments.body["comments"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["body"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(bodies, ["opened", "one", "two", "three"]);

    // Only the last 100 jobs are listed.
    api.config(json!({"job_delay_ms": 0, "job_limit": 1000}))
        .await;
    for _ in 0..101 {
        api.put(
            "/api/v2/tickets/update_many",
            json!({"tickets": [{"id": tid, "status": "open"}]}),
        )
        .await;
    }
    let list = api.get("/api/v2/job_statuses").await;
    let listed = list.body["job_statuses"].as_array().expect("list");
    assert_eq!(listed.len(), 100);
    assert!(
        listed
            .iter()
            .all(|j| !ids.contains(&j["id"].as_str().unwrap_or_default()))
    );
}

#[tokio::test]
async fn bulk_imports_are_off_by_default_jobs_over_the_limit_are_refused_and_a_failed_one_applies_nothing()
 {
    let api = EmulatorApi::start().await;
    let r = api
        .post(
            "/api/v2/users/create_or_update_many",
            json!({"users": [{"email": "a@example.com", "name": "A"}]}),
        )
        .await;
    assert_eq!(r.status, 403, "bulk user imports are off by default");
    api.config(json!({"job_delay_ms": 60_000})).await;
    let one = |i: usize| json!({"organizations": [{"name": format!("Org {i}")}]});
    for i in 0..30 {
        let r = api.post("/api/v2/organizations/create_many", one(i)).await;
        assert_eq!(r.status, 200, "job {i}: {}", r.text);
    }
    let r = api.post("/api/v2/organizations/create_many", one(30)).await;
    assert_eq!(
        (
            r.status,
            r.header("retry-after"),
            r.body["errors"][0]["code"].as_str()
        ),
        (429, Some("60"), Some("TooManyJobs"))
    );
    api.config(json!({"job_limit_status": 422})).await;
    let r = api.post("/api/v2/organizations/create_many", one(30)).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (422, Some("TooManyJobs"))
    );
    // When the running jobs end there is room again; they created their organizations in order.
    api.emu.advance_clock(Duration::from_secs(61));
    let state = api.emu.state();
    assert_eq!(state["organizations"].as_array().map(Vec::len), Some(30));
    assert_eq!(state["organizations"][29]["name"], "Org 29");
    api.config(json!({"job_fail_rate": 1.0, "job_delay_ms": 0}))
        .await;
    let r = api.post("/api/v2/organizations/create_many", one(30)).await;
    assert_eq!(r.status, 200);
    let job = api.job(&r).await;
    assert_eq!(
        (job["status"].as_str(), job["results"].is_null()),
        (Some("failed"), true)
    );
    assert_eq!(
        api.emu.state()["organizations"].as_array().map(Vec::len),
        Some(30),
        "a failed job applies nothing"
    );
    let bad = api
        .http
        .post(format!("{}/__emulator/config", api.emu.url()))
        .json(&json!({"job_limit_status": 500}))
        .send()
        .await
        .expect("config");
    assert_eq!(bad.status().as_u16(), 400);
}
