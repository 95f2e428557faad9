//! The dead letters as the admin API and the console read them: filtered by action, status and
//! Zendesk's error code, a page at a time behind a cursor (the last id read), and the ids a
//! filter selects for a replay or a discard of them all. Both queues' dead letters are read
//! through [`DeadLetters`], oldest first.

use crate::queue::{DeadLetters, QueueError, StoredDeadLetter};
use serde_json::{Value, json};

/// Letters read from the store at a time.
const CHUNK: usize = 500;

/// Letters one page looks through at most, so that a filter that matches little answers in
/// bounded time; the cursor goes on from where it stopped.
const SCAN: usize = 20_000;

/// The largest page.
pub(crate) const MAX_PAGE: usize = 500;

/// Which dead letters: each given part must match (an empty one matches all).
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
pub(crate) struct Filter {
    #[serde(default)]
    pub(crate) action: Option<String>,
    /// An HTTP status (`422`), or `none` for letters without one.
    #[serde(default)]
    pub(crate) status: Option<String>,
    /// Zendesk's error code (`RecordInvalid`) or the transport failure (`timeout`).
    #[serde(default)]
    pub(crate) code: Option<String>,
    /// The event's `messageId`.
    #[serde(default)]
    pub(crate) message_id: Option<String>,
}

fn given(part: &Option<String>) -> Option<&str> {
    part.as_deref().map(str::trim).filter(|p| !p.is_empty())
}

impl Filter {
    pub(crate) fn admits(&self, stored: &StoredDeadLetter) -> bool {
        let letter = &stored.letter;
        let action =
            given(&self.action).is_none_or(|a| letter.action.as_deref().unwrap_or("-") == a);
        let status = given(&self.status).is_none_or(|s| match letter.status {
            Some(status) => status.to_string() == s,
            None => s == "none",
        });
        let code = given(&self.code).is_none_or(|c| letter.code.as_deref() == Some(c));
        let message_id =
            given(&self.message_id).is_none_or(|m| letter.event["messageId"].as_str() == Some(m));
        action && status && code && message_id
    }

    pub(crate) fn is_empty(&self) -> bool {
        [&self.action, &self.status, &self.code, &self.message_id]
            .into_iter()
            .all(|part| given(part).is_none())
    }
}

/// A number in a query string or a form, given as text (an empty one is none); also as a
/// JSON number. (Query strings are all text, and `#[serde(flatten)]` hands them on as such.)
pub(crate) fn optional_number<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<u64>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Given {
        Number(u64),
        Text(String),
    }
    match <Option<Given> as serde::Deserialize>::deserialize(d)? {
        None => Ok(None),
        Some(Given::Number(n)) => Ok(Some(n)),
        Some(Given::Text(t)) if t.trim().is_empty() => Ok(None),
        Some(Given::Text(t)) => t
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("{t:?} is not a number"))),
    }
}

/// One page of letters.
#[derive(Debug, Default)]
pub(crate) struct Page {
    pub(crate) letters: Vec<StoredDeadLetter>,
    /// Where the next page starts, when there may be more.
    pub(crate) next: Option<u64>,
}

/// Up to `limit` letters that `filter` admits, with an id above `after`.
pub(crate) async fn page<L: DeadLetters>(
    store: &mut L,
    filter: &Filter,
    after: u64,
    limit: usize,
) -> Result<Page, QueueError> {
    let limit = limit.clamp(1, MAX_PAGE);
    let mut page = Page::default();
    let mut cursor = after;
    let mut scanned = 0;
    loop {
        let chunk = store.list(cursor, CHUNK).await?;
        let full = chunk.len() == CHUNK;
        for letter in chunk {
            cursor = letter.id;
            scanned += 1;
            if filter.admits(&letter) {
                page.letters.push(letter);
                if page.letters.len() == limit {
                    page.next = Some(cursor);
                    return Ok(page);
                }
            }
        }
        if !full {
            return Ok(page);
        }
        if scanned >= SCAN {
            page.next = Some(cursor);
            return Ok(page);
        }
    }
}

/// The ids of every letter `filter` admits.
pub(crate) async fn selected<L: DeadLetters>(
    store: &mut L,
    filter: &Filter,
) -> Result<Vec<u64>, QueueError> {
    let mut ids = Vec::new();
    let mut cursor = 0;
    loop {
        let chunk = store.list(cursor, CHUNK).await?;
        let full = chunk.len() == CHUNK;
        for letter in &chunk {
            cursor = letter.id;
            if filter.admits(letter) {
                ids.push(letter.id);
            }
        }
        if !full {
            return Ok(ids);
        }
    }
}

/// A letter as the API shows it: what failed and why, its event, and the event's `messageId`
/// and type on top.
pub(crate) fn json(stored: &StoredDeadLetter) -> Value {
    let letter = &stored.letter;
    json!({
        "id": stored.id,
        "at": letter.at,
        "action": letter.action.as_deref(),
        "step": letter.step,
        "status": letter.status,
        "code": letter.code,
        "message": letter.message,
        "attempts": letter.attempts,
        "message_id": letter.event["messageId"],
        "type": letter.event["type"],
        "event": letter.event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::DeadLetter;

    fn letter(id: u64, action: &str, status: Option<u16>, code: &str) -> StoredDeadLetter {
        StoredDeadLetter {
            id,
            letter: DeadLetter {
                event: json!({"type": "track", "messageId": format!("m{id}")}),
                action: Some(crate::mapping::plan::ActionName::new(action.to_owned())),
                step: "create".into(),
                status,
                code: Some(code.to_owned()),
                message: "refused".into(),
                attempts: 1,
                at: "2026-05-01T12:00:00Z".into(),
                changes: Vec::new(),
            },
        }
    }

    #[test]
    fn a_filter_admits_what_each_given_part_matches() {
        let l = letter(1, "create_ticket", Some(422), "RecordInvalid");
        let filter = |a: &str, s: &str, c: &str| Filter {
            action: Some(a.into()),
            status: Some(s.into()),
            code: Some(c.into()),
            message_id: None,
        };
        assert!(Filter::default().admits(&l) && Filter::default().is_empty());
        assert!(filter("", " ", "").admits(&l) && filter("", "", "").is_empty());
        assert!(filter("create_ticket", "422", "RecordInvalid").admits(&l));
        assert!(!filter("upsert_user", "", "").admits(&l));
        assert!(!filter("", "500", "").admits(&l));
        assert!(!filter("", "none", "").admits(&l));
        assert!(filter("", "none", "").admits(&letter(2, "a", None, "timeout")));
        assert!(!filter("", "", "DuplicateValue").admits(&l));
        let by_id = |m: &str| Filter {
            message_id: Some(m.into()),
            ..Filter::default()
        };
        assert!(by_id("m1").admits(&l) && !by_id("m2").admits(&l));
        assert_eq!(json(&l)["message_id"], "m1");
        assert_eq!(json(&l)["action"], "create_ticket");
    }
}
