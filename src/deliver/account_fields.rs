//! The account's custom user and organization fields, against what the mappings send.
//!
//! Zendesk silently drops a `user_fields` or `organization_fields` key that no field of the
//! account defines. [`sent`] runs the mappings over sample events, without any network, and
//! gathers every such key the requests would carry, with its values and the events that carry
//! it; [`Account`] reads the fields the account has and creates missing ones with a type
//! inferred from the values ([`infer_type`]) and a title from the key ([`title`]).
//! `zdmap fields check` is built from these.

use crate::deliver::{Client, Response};
use crate::mapping::config::Config;
use crate::mapping::event::Event;
use crate::mapping::request::{Method, Request};
use indexmap::IndexMap;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

/// Which kind of custom field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    User,
    Organization,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::User, Family::Organization];

    /// The body key that holds the values on a record, and the API path segment.
    pub fn plural(self) -> &'static str {
        match self {
            Family::User => "user_fields",
            Family::Organization => "organization_fields",
        }
    }

    fn singular(self) -> &'static str {
        match self {
            Family::User => "user_field",
            Family::Organization => "organization_field",
        }
    }

    /// `user` or `organization`.
    pub fn noun(self) -> &'static str {
        match self {
            Family::User => "user",
            Family::Organization => "organization",
        }
    }
}

/// A custom field key the mappings send: its values and the events that carry it.
#[derive(Clone, Debug, PartialEq)]
pub struct SentKey {
    pub family: Family,
    pub key: String,
    pub values: Vec<Value>,
    /// Labels of the events that carry it, in order, without repeats.
    pub events: Vec<String>,
}

/// Every custom field key the requests of the events would carry, by family and key, in the
/// order first seen. Events are `(label, event)`.
pub fn sent<'e>(
    config: &Config,
    events: impl IntoIterator<Item = (String, &'e Event)>,
) -> Vec<SentKey> {
    let mut found: IndexMap<(Family, String), SentKey> = IndexMap::new();
    for (label, event) in events {
        let offline = config.render_offline(event);
        for r in &offline.requests {
            let Some(body) = &r.request.body else {
                continue;
            };
            gather(body, &label, &mut found);
        }
    }
    found.into_values().collect()
}

/// Finds `user_fields` and `organization_fields` objects anywhere in a body.
fn gather(v: &Value, label: &str, found: &mut IndexMap<(Family, String), SentKey>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let family = Family::ALL.into_iter().find(|f| f.plural() == k);
                match (family, x) {
                    (Some(family), Value::Object(fields)) => {
                        for (key, value) in fields {
                            let sent =
                                found
                                    .entry((family, key.clone()))
                                    .or_insert_with(|| SentKey {
                                        family,
                                        key: key.clone(),
                                        values: Vec::new(),
                                        events: Vec::new(),
                                    });
                            if !sent.values.contains(value) {
                                sent.values.push(value.clone());
                            }
                            if !sent.events.iter().any(|e| e == label) {
                                sent.events.push(label.to_owned());
                            }
                        }
                    }
                    _ => gather(x, label, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|x| gather(x, label, found)),
        _ => {}
    }
}

pub use crate::mapping::template::field_type as infer_type;

/// A field title from its key: `plan_name` gives `Plan Name`.
pub fn title(key: &str) -> String {
    key.split(['_', '-', ' '])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut chars = w.chars();
            chars
                .next()
                .map(|c| c.to_uppercase().chain(chars).collect::<String>())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How often a request is tried when Zendesk answers 429 or 5xx, or does not answer.
const ATTEMPTS: u32 = 4;
/// The most a `Retry-After` is waited for before a request is tried again.
const LONGEST_PAUSE: Duration = Duration::from_secs(30);
/// How many pages of fields are read at most.
const MAX_PAGES: usize = 50;

/// The account, through a client.
pub struct Account<'c> {
    client: &'c Client,
}

impl<'c> Account<'c> {
    pub fn new(client: &'c Client) -> Self {
        Account { client }
    }

    /// The keys of the account's fields of a family (every page).
    pub async fn keys(&self, family: Family) -> Result<HashSet<String>, String> {
        let mut keys = HashSet::new();
        let mut request = Some(get(
            &format!("/api/v2/{}", family.plural()),
            IndexMap::new(),
        ));
        for _ in 0..MAX_PAGES {
            let Some(req) = request.take() else { break };
            let response = self.send(&req).await?;
            if !response.is_success() {
                return Err(format!(
                    "GET {} answered {}: {}",
                    req.path, response.status, response.body
                ));
            }
            let items = response.body[family.plural()].as_array().cloned();
            keys.extend(
                items
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f["key"].as_str().map(str::to_owned)),
            );
            request = response.body["next_page"].as_str().and_then(next_page);
        }
        Ok(keys)
    }

    /// Creates a field; a key that exists already (`DuplicateValue`) counts as created.
    pub async fn create(&self, family: Family, key: &str, kind: &str) -> Result<(), String> {
        let request = Request {
            method: Method::Post,
            path: format!("/api/v2/{}", family.plural()),
            query: IndexMap::new(),
            headers: IndexMap::new(),
            endpoint: String::new(),
            body: Some(json!({
                family.singular(): { "key": key, "title": title(key), "type": kind, "active": true }
            })),
        };
        let response = self.send(&request).await?;
        let duplicate =
            response.status == 422 && response.body.to_string().contains("DuplicateValue");
        if response.is_success() || duplicate {
            Ok(())
        } else {
            Err(format!(
                "creating the {} field `{key}`: {} {}",
                family.noun(),
                response.status,
                response.body
            ))
        }
    }

    /// One request, tried again (a few times, with pauses) on 429, 5xx or no answer.
    async fn send(&self, request: &Request) -> Result<Response, String> {
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            let pause = match self.client.send(request).await {
                Ok(r) if r.status == 429 || r.status >= 500 => {
                    last = format!("{} {} answered {}", request.method, request.path, r.status);
                    r.headers.retry_after
                }
                Ok(r) => return Ok(r),
                Err(e) => {
                    last = e.to_string();
                    None
                }
            };
            if attempt < ATTEMPTS {
                let pause = pause.unwrap_or(Duration::from_millis(500) * attempt);
                tokio::time::sleep(pause.min(LONGEST_PAUSE)).await;
            }
        }
        Err(last)
    }
}

fn get(path: &str, query: IndexMap<String, String>) -> Request {
    Request {
        method: Method::Get,
        path: path.to_owned(),
        query,
        headers: IndexMap::new(),
        endpoint: String::new(),
        body: None,
    }
}

/// The request for a `next_page` URL of Zendesk's offset pagination (same host: only its
/// path and query are kept).
fn next_page(url: &str) -> Option<Request> {
    let at = url.find("/api/v2/")?;
    let (path, query) = url[at..].split_once('?').unwrap_or((&url[at..], ""));
    let query = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (decode(k), decode(v))
        })
        .collect();
    Some(get(path, query))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_inferred_from_values() {
        assert_eq!(infer_type(&[json!(true), json!(false)]), "checkbox");
        assert_eq!(infer_type(&[json!(3), json!(-4)]), "integer");
        assert_eq!(infer_type(&[json!(3), json!(4.5)]), "decimal");
        assert_eq!(infer_type(&[json!("2026-11-30")]), "date");
        assert_eq!(infer_type(&[json!("2026-11-30"), json!("soon")]), "text");
        assert_eq!(infer_type(&[json!(1), json!("1")]), "text");
        assert_eq!(infer_type(&[]), "text");
    }

    #[test]
    fn titles_come_from_keys() {
        assert_eq!(title("plan_name"), "Plan Name");
        assert_eq!(title("tier"), "Tier");
        assert_eq!(title("über-status"), "Über Status");
    }

    #[test]
    fn next_pages_keep_path_and_query() {
        let r = next_page("https://acme.zendesk.com/api/v2/user_fields.json?page=2&per_page=100")
            .expect("a page");
        assert_eq!(r.path, "/api/v2/user_fields.json");
        assert_eq!(r.query.get("page").map(String::as_str), Some("2"));
        assert!(next_page("https://elsewhere.example/x").is_none());
    }
}
