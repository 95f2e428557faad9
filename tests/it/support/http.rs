//! A running `zdmap serve` as the tests talk to it over HTTP: a page read, `/readyz` waited on,
//! a batch of events posted, its `/metrics` read.

use serde_json::{Value, json};
use std::fmt;
use std::time::Duration;

use super::wait::eventually;

/// `GET url`: the status and the text; `(0, "")` while nothing answers (a server starting,
/// stopping or killed).
pub async fn get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// The `/readyz` body of the server at `url` once it answers `status`; panics naming `what`
/// after 30 s.
pub async fn readyz_once(url: &str, status: u16, what: &str) -> String {
    eventually(what, Duration::from_secs(30), async || {
        let (answered, body) = get(&format!("{url}/readyz")).await;
        if answered == status {
            Ok(body)
        } else {
            Err(format!("{answered}: {body}"))
        }
    })
    .await
}

/// Posts `events` to the `/v1/batch` of the server at `url`, with the write key `key` (none for
/// a server without keys): the status of the answer, 0 when none came.
pub async fn post_batch(url: &str, key: Option<&str>, events: &[Value]) -> u16 {
    let mut request = reqwest::Client::new()
        .post(format!("{url}/v1/batch"))
        .json(&json!({ "batch": events }));
    if let Some(key) = key {
        request = request.basic_auth(key, Some(""));
    }
    match request.send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// A server's `/metrics` text.
pub struct Metrics(pub String);

impl Metrics {
    /// The `/metrics` of the server at `url` (empty while it does not answer).
    pub async fn read(url: &str) -> Metrics {
        Metrics(get(&format!("{url}/metrics")).await.1)
    }

    /// The `/metrics` of the server at `url` once the sample `name` satisfies `holds`; panics
    /// with the last text after 30 s.
    pub async fn once(url: &str, name: &str, holds: impl Fn(f64) -> bool) -> Metrics {
        eventually(name, Duration::from_secs(30), async || {
            let metrics = Metrics::read(url).await;
            if metrics.get(name).is_some_and(&holds) {
                Ok(metrics)
            } else {
                Err(metrics)
            }
        })
        .await
    }

    /// The value of the sample `name` (with its labels, if it has any:
    /// `zdmap_config_reloads_total{result="ok"}`).
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }
}

impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
