//! Pagination: cursor and offset pages of ticket audits and user events.

use crate::support::oas::{Oas, Validated};
use serde_json::{Value, json};

use super::{EmulatorApi, Reply};

/// A ticket's audits come at most 100 a page, oldest first: cursor pages with `page[size]`
/// (`meta.has_more`, `meta.after_cursor`, `links.next` on the host asked), offset pages
/// otherwise; user events' next links keep their filters.
#[tokio::test]
async fn ticket_audits_and_user_events_come_in_pages() {
    let spec = Oas::load();
    let api = EmulatorApi::start().await;
    api.emu.configure(|k| k.ticket_updates_per_window = 1000);
    let uid = api.user("pages@example.com", "Pages").await;
    let tid = api.opened_ticket(uid).await;
    for n in 1..150 {
        let r = api
            .put(
                &format!("/api/v2/tickets/{tid}"),
                json!({"ticket": {"comment": {"body": format!("c{n}")},
                                  "metadata": {"zdmap_marker": format!("m-{n}")}}}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let markers = |page: &Reply| -> Vec<String> {
        page.body["audits"]
            .as_array()
            .expect("audits")
            .iter()
            .map(|a| {
                a["metadata"]["custom"]["zdmap_marker"]
                    .as_str()
                    .unwrap_or("-")
                    .to_owned()
            })
            .collect()
    };
    let path = format!("/api/v2/tickets/{tid}/audits");

    // Cursor pages: 100, then the 50 after them through the next link.
    let first = api.get(&format!("{path}?page[size]=100")).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(
        spec.validate_response("GET", &path, 200, &first.body)
            .expect("valid"),
        Validated::Valid
    );
    let seen = markers(&first);
    assert_eq!(seen.len(), 100);
    assert_eq!((seen[0].as_str(), seen[99].as_str()), ("-", "m-99"));
    assert_eq!(first.body["meta"]["has_more"], true);
    assert!(first.body["meta"]["after_cursor"].is_string());
    let next = first.body["links"]["next"].as_str().expect("a next link");
    let rest = next
        .strip_prefix(&api.emu.url())
        .expect("the link is on the host asked");
    let second = api.get(rest).await;
    let seen = markers(&second);
    assert_eq!(seen.len(), 50);
    assert_eq!((seen[0].as_str(), seen[49].as_str()), ("m-100", "m-149"));
    assert_eq!(second.body["meta"]["has_more"], false);
    assert_eq!(second.body["links"]["next"], Value::Null);
    assert_eq!(api.get(&format!("{path}?page[size]=101")).await.status, 400);

    // Offset pages of 100 when no cursor is asked for.
    let offset = api.get(&path).await;
    assert_eq!(markers(&offset).len(), 100);
    assert_eq!(offset.body["count"], 150);
    let next = offset.body["next_page"].as_str().expect("next_page");
    let page2 = api
        .get(
            next.strip_prefix(&api.emu.url())
                .expect("on the host asked"),
        )
        .await;
    assert_eq!(markers(&page2).len(), 50);
    assert_eq!(page2.body["next_page"], Value::Null);

    // Links name another base when the emulator is told to (an account behind a proxy).
    api.emu
        .configure(|k| k.links_base = Some("https://example.zendesk.com".into()));
    let proxied = api.get(&format!("{path}?page[size]=100")).await;
    assert!(
        proxied.body["links"]["next"]
            .as_str()
            .is_some_and(|l| l.starts_with("https://example.zendesk.com/api/v2/tickets/")),
        "{}",
        proxied.text
    );
    api.emu.configure(|k| k.links_base = None);

    // A user's events, filtered: the next page keeps the filter.
    for (n, kind) in ["Paid", "Viewed", "Paid", "Paid"].iter().enumerate() {
        let r = api
            .post(
                &format!("/api/v2/users/{uid}/events"),
                json!({"profile": {"source": "app", "type": "user",
                                   "identifiers": [{"type": "email", "value": "pages@example.com"}]},
                       "event": {"source": "app", "type": kind, "properties": {"n": n}}}),
            )
            .await;
        assert!(r.status < 300, "{}", r.text);
    }
    let events = format!("/api/v2/users/{uid}/events?filter[type]=Paid&page[size]=2");
    let first = api.get(&events).await;
    assert_eq!(first.body["events"].as_array().map(Vec::len), Some(2));
    let next = first.body["links"]["next"].as_str().expect("a next link");
    let second = api
        .get(
            next.strip_prefix(&api.emu.url())
                .expect("on the host asked"),
        )
        .await;
    let kinds: Vec<&str> = second.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(kinds, ["Paid"], "{next}: {}", second.text);
    assert_eq!(second.body["meta"]["has_more"], false);
}
