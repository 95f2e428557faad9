//! The web console at `/` of the admin listener, for a person: the overview (counts, rates,
//! the request budget, keys waiting, charts of the last hour), the delivery log's events and
//! their timelines ([`events`]), the dead letters with replay and discard, the event tester
//! (which actions an event matches and why the others do not, the requests it would send, and
//! sending it), and the mappings as the server runs them.
//!
//! Pages are rendered on the server from the templates of `templates/` with HTML
//! auto-escaping on (events are untrusted input: a `<script>` in a trait shows as text); the
//! only script is `assets/console.js`, and every asset is compiled into the binary, so the
//! console works offline. Forms carry the session's CSRF token (checked in
//! [`super::require_admin`]). Logging in is [`login`]: the admin token, then a session cookie.

mod events;
mod login;

use super::api::{self, By, ListQuery, SelectionBody};
use super::letters::{self, Filter};
use super::samples::{self, SERIES};
use super::{Access, AdminState};
use crate::queue::{DeadLetters, Queue};
use axum::Form;
use axum::Router;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use minijinja::{AutoEscape, Environment};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The templates, by name.
const TEMPLATES: [(&str, &str); 9] = [
    ("base.html", include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("overview.html", include_str!("templates/overview.html")),
    (
        "dead_letters.html",
        include_str!("templates/dead_letters.html"),
    ),
    (
        "dead_letter.html",
        include_str!("templates/dead_letter.html"),
    ),
    ("tester.html", include_str!("templates/tester.html")),
    ("mappings.html", include_str!("templates/mappings.html")),
    ("events.html", include_str!("templates/events.html")),
    ("event.html", include_str!("templates/event.html")),
];

const STYLE: &str = include_str!("assets/console.css");
const SCRIPT: &str = include_str!("assets/console.js");

/// The console's templates, compiled once.
pub(crate) struct Pages {
    env: Environment<'static>,
    /// Templates that did not compile (a fault of the build, shown rather than hidden).
    broken: Vec<String>,
}

impl Pages {
    pub(crate) fn new() -> Pages {
        let mut env = Environment::new();
        // Every template escapes what it shows, whatever its name.
        env.set_auto_escape_callback(|_| AutoEscape::Html);
        env.add_filter("json", |value: minijinja::Value| -> String {
            serde_json::to_string_pretty(&value).unwrap_or_default()
        });
        // A value as one segment of a URL's path (a messageId may hold `/` or `?`).
        env.add_filter("urlpath", |text: String| -> String { encode(&text) });
        env.add_filter("clip", |text: String, chars: usize| -> String {
            match text.char_indices().nth(chars) {
                Some((at, _)) => format!("{}…", &text[..at]),
                None => text,
            }
        });
        let broken = TEMPLATES
            .iter()
            .filter_map(|(name, source)| {
                env.add_template(name, source)
                    .err()
                    .map(|e| format!("{name}: {e}"))
            })
            .collect();
        Pages { env, broken }
    }

    /// `name` rendered with `context`; a template that fails is a 500 naming why.
    pub(crate) fn render(&self, name: &str, context: Value) -> Response {
        let rendered = self
            .env
            .get_template(name)
            .and_then(|t| t.render(minijinja::value::Serde(&context)));
        match rendered {
            Ok(html) => Html(html).into_response(),
            Err(e) => {
                tracing::error!(template = name, error = %e, broken = ?self.broken, "a console page did not render");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "this page did not render; the log says why",
                )
                    .into_response()
            }
        }
    }
}

/// The console's pages (behind the token or a session).
pub(crate) fn pages<Q: Queue>() -> Router<Arc<AdminState<Q>>> {
    Router::new()
        .route("/", get(overview::<Q>))
        .route("/dead-letters", get(dead_letters::<Q>))
        .route("/dead-letters/replay", post(replay_selection::<Q>))
        .route("/dead-letters/discard", post(discard_selection::<Q>))
        .route("/dead-letters/{id}", get(dead_letter::<Q>))
        .route("/dead-letters/{id}/replay", post(replay_one::<Q>))
        .route("/dead-letters/{id}/discard", post(discard_one::<Q>))
        .route("/tester", get(tester::<Q>).post(try_event::<Q>))
        .route("/tester/send", post(send::<Q>))
        .route("/mappings", get(mappings::<Q>))
        .route("/events", get(events::search::<Q>))
        .route("/events/{message_id}", get(events::timeline::<Q>))
        .route("/events/{message_id}/replay", post(events::replay::<Q>))
        .route("/logout", post(login::logout::<Q>))
}

/// What needs no session: the login page and the assets.
pub(crate) fn open<Q: Queue>() -> Router<Arc<AdminState<Q>>> {
    Router::new()
        .route("/login", get(login::form::<Q>).post(login::login::<Q>))
        .route("/assets/console.css", get(|| asset("text/css", STYLE)))
        .route(
            "/assets/console.js",
            get(|| asset("text/javascript", SCRIPT)),
        )
}

async fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            // The URLs carry the version, so a new build is fetched anew.
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response()
}

/// The fields of a form body (`application/x-www-form-urlencoded`), decoded.
pub(crate) fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    let decode = |part: &[u8]| {
        let spaced: Vec<u8> = part
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        percent_encoding::percent_decode(&spaced)
            .decode_utf8_lossy()
            .into_owned()
    };
    body.split(|&b| b == b'&')
        .filter(|part| !part.is_empty())
        .map(|part| match part.iter().position(|&b| b == b'=') {
            Some(at) => (decode(&part[..at]), decode(&part[at + 1..])),
            None => (decode(part), String::new()),
        })
        .collect()
}

/// What every page shows around its content.
fn frame<Q>(state: &AdminState<Q>, access: &Access, page: &str, mut content: Value) -> Value {
    let url =
        super::super::shown_target(state.shared.executor().transport().client().target(), false);
    let target = if api::real_zendesk(state) {
        url
    } else {
        format!("{url} (an emulator or a test server)")
    };
    if let Value::Object(map) = &mut content {
        map.insert("page".into(), page.into());
        map.insert("csrf".into(), access.csrf().into());
        map.insert(
            "session".into(),
            matches!(access, Access::Session(_)).into(),
        );
        map.insert("target".into(), target.into());
        map.insert("version".into(), env!("CARGO_PKG_VERSION").into());
    }
    content
}

/// The minute of `now`, since the Unix epoch.
fn minute_of(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 60
}

impl<Q: Queue> AdminState<Q> {
    /// The counters the charts follow, now.
    fn counters(&self) -> samples::Counters {
        let metrics = &self.shared.metrics;
        let stats = self.shared.stats.snapshot();
        [
            metrics.accepted.load(Ordering::Relaxed),
            metrics.delivered.load(Ordering::Relaxed),
            metrics.dead_lettered.load(Ordering::Relaxed),
            stats.requests_total,
            stats.rate_limited,
        ]
    }

    /// Records a sample of the counters for the charts.
    pub(crate) fn sample(&self) {
        self.samples
            .record(minute_of(SystemTime::now()), self.counters());
    }
}

/// How often the charts' counters are sampled.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(5);

async fn overview<Q: Queue>(
    State(state): State<Arc<AdminState<Q>>>,
    Extension(access): Extension<Access>,
) -> Response {
    state.sample();
    let minute = minute_of(SystemTime::now());
    let minutes = state.samples.per_minute(minute);
    let metrics = &state.shared.metrics;
    let stats = state.shared.stats.snapshot();
    let charts: Vec<Value> = SERIES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let values: Vec<u64> = minutes.iter().map(|m| m[i]).collect();
            json!({
                "name": name,
                // Made of numbers only (see samples::sparkline).
                "svg": samples::sparkline(&values),
                "last_minute": values.last().copied().unwrap_or(0),
                "hour": values.iter().sum::<u64>(),
            })
        })
        .collect();
    let delivery = metrics.delivery();
    let health = state.shared.health.state();
    let dead_letters = async { state.queue.dead_letters().await?.count().await }.await;
    let budget = state
        .shared
        .executor()
        .transport()
        .budget()
        .requests_per_minute();
    let content = json!({
        "counts": {
            "accepted": metrics.accepted.load(Ordering::Relaxed),
            "delivered": metrics.delivered.load(Ordering::Relaxed),
            "skipped": metrics.skipped.load(Ordering::Relaxed),
            "dead_lettered": metrics.dead_lettered.load(Ordering::Relaxed),
            "deferred": metrics.deferred.load(Ordering::Relaxed),
            "duplicates": metrics.duplicates.load(Ordering::Relaxed),
            "requests": stats.requests_total,
            "rate_limited": stats.rate_limited,
            "retries": stats.retries,
        },
        "queued": state.queue.depth().await.ok(),
        "dead_letters": dead_letters.as_ref().ok(),
        "dead_letters_problem": dead_letters.as_ref().err().map(ToString::to_string),
        "budget": budget,
        "requests_last_minute": charts[3]["last_minute"],
        "keys_waiting": delivery.keys_waiting.iter().map(|(reason, n)| json!({"reason": reason.as_str(), "keys": n})).collect::<Vec<_>>(),
        "oldest_waiting_seconds": delivery.oldest_waiting_seconds,
        "ready": health.ready(),
        "health": health,
        "charts": charts,
    });
    state
        .pages
        .render("overview.html", frame(&state, &access, "overview", content))
}

/// A notice a page shows after a form did something (by name: the page words it).
#[derive(Debug, Default, serde::Deserialize)]
struct Notice {
    #[serde(default)]
    done: Option<String>,
    #[serde(default, deserialize_with = "letters::optional_number")]
    n: Option<u64>,
    #[serde(default, deserialize_with = "letters::optional_number")]
    stale: Option<u64>,
}

impl Notice {
    fn json(&self) -> Value {
        match self.done.as_deref() {
            Some(done @ ("replayed" | "discarded")) => {
                json!({"done": done, "n": self.n.unwrap_or(0), "stale": self.stale.unwrap_or(0)})
            }
            _ => Value::Null,
        }
    }
}

#[derive(Debug, Default, serde::Deserialize)]
struct ListParams {
    #[serde(flatten)]
    list: ListQuery,
    #[serde(flatten)]
    notice: Notice,
}

/// Which destination's dead letters a page or a form is about (`?destination=NAME`; none: the
/// first destination's).
#[derive(Debug, Default, serde::Deserialize)]
struct At {
    #[serde(default)]
    destination: Option<String>,
}

impl At {
    /// The state of that destination; `None` when the name is no destination's.
    fn state<Q>(&self, state: &Arc<AdminState<Q>>) -> Option<Arc<AdminState<Q>>> {
        state.at(self.destination.as_deref())
    }

    /// The answer to a page or a form for a name that is no destination's.
    fn unknown(&self) -> Response {
        let name = self.destination.as_deref().unwrap_or_default();
        super::error(StatusCode::NOT_FOUND, format!("no destination {name:?}"))
    }

    /// What the pages of `state` add to their dead-letter links: `destination=NAME` of a
    /// destination other than the first, after `sep` (`?` or `&`); else nothing.
    fn query<Q>(first: &AdminState<Q>, state: &AdminState<Q>, sep: char) -> String {
        match state.shared.named() {
            Some(name) if Some(name) != first.shared.named() => {
                format!("{sep}destination={}", encode(name))
            }
            _ => String::new(),
        }
    }
}

/// The pages' part on destinations: which one this is, the others' links, and what its links
/// add (`dq`: `?destination=NAME` or nothing).
fn destination_view<Q>(first: &AdminState<Q>, state: &AdminState<Q>) -> Value {
    let names: Vec<&str> = first.destinations.iter().map(|(n, _)| n.as_str()).collect();
    json!({
        "destination": state.shared.named(),
        "destinations": names,
        "dq": At::query(first, state, '?'),
    })
}

async fn dead_letters<Q: Queue>(
    State(first): State<Arc<AdminState<Q>>>,
    Extension(access): Extension<Access>,
    Query(params): Query<ListParams>,
    Query(at): Query<At>,
) -> Response {
    let Some(state) = at.state(&first) else {
        return at.unknown();
    };
    let query = params.list;
    let (page, total) = match api::letters_page(&state, &query).await {
        Ok(found) => found,
        Err(e) => return api::queue_error(&e),
    };
    let view = destination_view(&first, &state);
    let content = json!({
        "letters": page.letters.iter().map(letters::json).collect::<Vec<_>>(),
        "next_url": page.next.map(|cursor| next_url(&query.filter, cursor, &At::query(&first, &state, '&'))),
        "total": total,
        "filter": query.filter,
        "filtered": !query.filter.is_empty(),
        "notice": params.notice.json(),
        "at": view,
    });
    first.pages.render(
        "dead_letters.html",
        frame(&first, &access, "dead-letters", content),
    )
}

async fn dead_letter<Q: Queue>(
    State(first): State<Arc<AdminState<Q>>>,
    Extension(access): Extension<Access>,
    Path(id): Path<u64>,
    Query(at): Query<At>,
) -> Response {
    let Some(state) = at.state(&first) else {
        return at.unknown();
    };
    let found = async { state.queue.dead_letters().await?.get(id).await }.await;
    match found {
        Ok(Some(letter)) => {
            let content = json!({
                "letter": letters::json(&letter),
                "at": destination_view(&first, &state),
            });
            first.pages.render(
                "dead_letter.html",
                frame(&first, &access, "dead-letters", content),
            )
        }
        Ok(None) => (StatusCode::NOT_FOUND, Redirect::to("/dead-letters")).into_response(),
        Err(e) => api::queue_error(&e),
    }
}

/// `text` percent-encoded, to stand in a URL's path segment or query.
fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The link to the page of letters after `cursor` under `filter` (`at`: the destination's
/// part of the query, `&destination=NAME`, or nothing).
fn next_url(filter: &Filter, cursor: u64, at: &str) -> String {
    let part = |part: &Option<String>| encode(part.as_deref().unwrap_or_default());
    format!(
        "/dead-letters?cursor={cursor}&action={}&status={}&code={}&message_id={}{at}",
        part(&filter.action),
        part(&filter.status),
        part(&filter.code),
        part(&filter.message_id)
    )
}

/// Where a form sends the person after a replay or a discard (back to the destination's
/// letters).
fn after<Q>(
    first: &AdminState<Q>,
    state: &AdminState<Q>,
    done: &str,
    n: u64,
    stale: usize,
) -> Response {
    let at = At::query(first, state, '&');
    Redirect::to(&format!(
        "/dead-letters?done={done}&n={n}&stale={stale}{at}"
    ))
    .into_response()
}

async fn replay_one<Q: Queue>(
    State(first): State<Arc<AdminState<Q>>>,
    Path(id): Path<u64>,
    Query(at): Query<At>,
) -> Response {
    let Some(state) = at.state(&first) else {
        return at.unknown();
    };
    match api::replay(&state, api::exists(&state, id).await, false, By::Console).await {
        Ok(replayed) => after(
            &first,
            &state,
            "replayed",
            replayed.moved,
            replayed.stale.len(),
        ),
        Err(answer) => answer,
    }
}

async fn discard_one<Q: Queue>(
    State(first): State<Arc<AdminState<Q>>>,
    Path(id): Path<u64>,
    Query(at): Query<At>,
) -> Response {
    let Some(state) = at.state(&first) else {
        return at.unknown();
    };
    match api::discard(&state, api::exists(&state, id).await, By::Console).await {
        Ok(n) => after(&first, &state, "discarded", n, 0),
        Err(answer) => answer,
    }
}

#[derive(Debug, serde::Deserialize)]
struct SelectionForm {
    #[serde(flatten)]
    filter: Filter,
    #[serde(default)]
    all: Option<String>,
}

impl SelectionForm {
    fn body(self) -> SelectionBody {
        SelectionBody {
            filter: self.filter,
            all: self.all.is_some_and(|a| a == "yes"),
            force: false,
        }
    }
}

async fn replay_selection<Q: Queue>(
    State(first): State<Arc<AdminState<Q>>>,
    Query(at): Query<At>,
    Form(form): Form<SelectionForm>,
) -> Response {
    let Some(state) = at.state(&first) else {
        return at.unknown();
    };
    let which = form.body().selection(&state).await;
    match api::replay(&state, which, false, By::Console).await {
        Ok(replayed) => after(
            &first,
            &state,
            "replayed",
            replayed.moved,
            replayed.stale.len(),
        ),
        Err(answer) => answer,
    }
}

async fn discard_selection<Q: Queue>(
    State(first): State<Arc<AdminState<Q>>>,
    Query(at): Query<At>,
    Form(form): Form<SelectionForm>,
) -> Response {
    let Some(state) = at.state(&first) else {
        return at.unknown();
    };
    let which = form.body().selection(&state).await;
    match api::discard(&state, which, By::Console).await {
        Ok(n) => after(&first, &state, "discarded", n, 0),
        Err(answer) => answer,
    }
}

/// The event the tester shows before anything is pasted.
const SAMPLE_EVENT: &str = r#"{
  "type": "identify",
  "userId": "u-1001",
  "traits": {
    "email": "ada@example.com",
    "name": "Ada Lovelace"
  }
}"#;

/// Dead letters the tester offers to pick from, the newest.
const PICKS: usize = 10;

/// The newest dead letters (their events can be picked in the tester; the delivery log keeps
/// no bodies).
async fn recent_letters<Q: Queue>(state: &AdminState<Q>) -> Vec<Value> {
    let found = async {
        let mut store = state.queue.dead_letters().await?;
        letters::page(&mut store, &Filter::default(), 0, letters::MAX_PAGE).await
    }
    .await;
    let letters = found.map(|page| page.letters).unwrap_or_default();
    letters
        .iter()
        .rev()
        .take(PICKS)
        .map(|l| {
            json!({
                "id": l.id,
                "at": l.letter.at,
                "action": l.letter.action.as_deref(),
                "message_id": l.letter.event["messageId"],
                "type": l.letter.event["type"],
                "event": l.letter.event["event"],
            })
        })
        .collect()
}

/// The tester's page: the pasted text, and what became of it.
async fn tester_page<Q: Queue>(
    state: &AdminState<Q>,
    access: &Access,
    text: &str,
    outcome: Value,
) -> Response {
    let content = json!({
        "event_text": text,
        "real_zendesk": api::real_zendesk(state),
        "outcome": outcome,
        "recent": recent_letters(state).await,
    });
    state
        .pages
        .render("tester.html", frame(state, access, "tester", content))
}

#[derive(Debug, Default, serde::Deserialize)]
struct Pick {
    /// A dead letter whose event the tester starts from.
    #[serde(default, deserialize_with = "letters::optional_number")]
    letter: Option<u64>,
}

async fn tester<Q: Queue>(
    State(state): State<Arc<AdminState<Q>>>,
    Extension(access): Extension<Access>,
    Query(pick): Query<Pick>,
) -> Response {
    let picked = match pick.letter {
        Some(id) => async { state.queue.dead_letters().await?.get(id).await }
            .await
            .ok()
            .flatten()
            .map(|l| serde_json::to_string_pretty(&l.letter.event).unwrap_or_default()),
        None => None,
    };
    let text = picked.as_deref().unwrap_or(SAMPLE_EVENT);
    tester_page(&state, &access, text, Value::Null).await
}

#[derive(Debug, serde::Deserialize)]
struct EventForm {
    #[serde(default)]
    event: String,
    #[serde(default)]
    confirm: Option<String>,
}

/// The pasted text as a JSON value, or why it is not one.
fn pasted(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))
}

async fn try_event<Q: Queue>(
    State(state): State<Arc<AdminState<Q>>>,
    Extension(access): Extension<Access>,
    Form(form): Form<EventForm>,
) -> Response {
    let executor = state.shared.executor();
    let outcome =
        match pasted(&form.event).and_then(|event| api::preview_json(executor.config(), event)) {
            Ok(preview) => json!({ "preview": preview }),
            Err(why) => json!({ "problem": why }),
        };
    tester_page(&state, &access, &form.event, outcome).await
}

async fn send<Q: Queue>(
    State(state): State<Arc<AdminState<Q>>>,
    Extension(access): Extension<Access>,
    Form(form): Form<EventForm>,
) -> Response {
    let confirmed = form.confirm.as_deref() == Some("yes");
    let outcome = if api::real_zendesk(&state) && !confirmed {
        json!({ "problem": "this server delivers to Zendesk itself: tick the confirmation to send the event there" })
    } else {
        match pasted(&form.event) {
            Err(why) => json!({ "problem": why }),
            Ok(event) => match api::send_event(&state, event).await {
                Ok(message_id) => json!({ "sent": message_id }),
                Err(api::NotSent::Refused(why)) => json!({ "problem": why }),
                Err(api::NotSent::Queue(e)) => json!({ "problem": e.to_string() }),
            },
        }
    };
    tester_page(&state, &access, &form.event, outcome).await
}

async fn mappings<Q: Queue>(
    State(state): State<Arc<AdminState<Q>>>,
    Extension(access): Extension<Access>,
) -> Response {
    let executor = state.shared.executor();
    let config = executor.config();
    let content = json!({
        "destination": config.name,
        "mappings": config.dir.display().to_string(),
        "actions": api::action_table(config),
        "reload_problem": state.shared.health.state().config,
        "reloads": state.shared.metrics.reloads(),
    });
    state
        .pages
        .render("mappings.html", frame(&state, &access, "mappings", content))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_compiles_and_event_data_renders_inert() {
        let pages = Pages::new();
        assert!(pages.broken.is_empty(), "{:?}", pages.broken);
        let hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>";
        let tmpl = pages.env.get_template("tester.html").expect("the tester");
        let html = tmpl
            .render(minijinja::value::Serde(json!({
                "page": "tester",
                "csrf": "c\"srf",
                "event_text": hostile,
                "outcome": {"problem": hostile},
                "target": hostile,
            })))
            .expect("renders");
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<img src=x"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
            "{html}"
        );
        assert!(html.contains("value=\"c&quot;srf\""), "{html}");
    }

    #[test]
    fn a_form_body_decodes() {
        assert_eq!(
            form_fields(b"csrf=ab%2Bc&event=%7B%22a%22+%3A+1%7D&empty&x="),
            vec![
                ("csrf".to_owned(), "ab+c".to_owned()),
                ("event".to_owned(), "{\"a\" : 1}".to_owned()),
                ("empty".to_owned(), String::new()),
                ("x".to_owned(), String::new()),
            ]
        );
    }
}
