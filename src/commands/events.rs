//! `zdmap events`: the delivery log of a running `zdmap serve`, read through its admin API
//! (`GET /api/events/{message_id}`, `GET /api/entries`): `show` prints one event's record,
//! `tail` follows the entries as they are recorded. Event data is outside text: it is printed
//! with its control characters escaped.

use crate::base::text::escape_controls;
use crate::serve::admin::AdminToken;
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// The admin listener of the server (`--admin-listen` of `zdmap serve`).
    #[arg(
        long,
        value_name = "URL",
        default_value = "http://127.0.0.1:8089",
        env = "ZDMAP_ADMIN_URL",
        global = true
    )]
    pub admin_url: String,
    /// A file holding the admin token (when ZDMAP_ADMIN_TOKEN is not set).
    #[arg(
        long,
        value_name = "FILE",
        env = "ZDMAP_ADMIN_TOKEN_FILE",
        global = true
    )]
    pub admin_token_file: Option<PathBuf>,
    /// The data directory of the server, whose admin-token is read when neither
    /// ZDMAP_ADMIN_TOKEN nor --admin-token-file gives one.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "zdmap-data",
        env = "ZDMAP_DATA_DIR",
        global = true
    )]
    pub data_dir: PathBuf,
    #[command(subcommand)]
    pub command: EventsCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum EventsCommand {
    /// Print one event's record: what was accepted, the actions matched, every request with
    /// its status and Zendesk's error code, the waits, and its end.
    Show {
        /// The event's messageId.
        message_id: String,
        /// Print the record as the API answers it (JSON).
        #[arg(long)]
        json: bool,
    },
    /// Print the last entries of the log, then follow new ones until Ctrl-C.
    Tail {
        /// Only the events of this user (userId or anonymousId).
        #[arg(long, value_name = "ID")]
        user: Option<String>,
        /// Only the events of this email.
        #[arg(long, value_name = "EMAIL")]
        email: Option<String>,
        /// Only the track events of this name.
        #[arg(long, value_name = "NAME")]
        event: Option<String>,
        /// Only the events in this state now (accepted, delivering, waiting, delivered,
        /// skipped, dead_lettered, refused, replayed, discarded).
        #[arg(long, value_name = "STATE")]
        state: Option<String>,
        /// Entries printed from before the start.
        #[arg(long, value_name = "N", default_value_t = 10)]
        lines: usize,
        /// One JSON object per entry.
        #[arg(long)]
        json: bool,
        /// How often to ask for new entries.
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = super::serve::parse_duration)]
        poll: Duration,
    },
}

pub fn events(args: &EventsArgs) -> ExitCode {
    let token = match super::serve::read_admin_token(
        args.admin_token_file.as_deref(),
        &args.data_dir,
    ) {
        Ok(Some(token)) => token,
        Ok(None) => {
            super::say(
                "error: no admin token: set ZDMAP_ADMIN_TOKEN, give --admin-token-file, or the --data-dir of the server (its admin-token file)",
            );
            return ExitCode::from(1);
        }
        Err(e) => {
            super::say(format!("error: {e}"));
            return ExitCode::from(1);
        }
    };
    let api = Api {
        base: args.admin_url.trim_end_matches('/').to_owned(),
        token,
        client: reqwest::Client::new(),
    };
    super::block_on(async {
        let done = match &args.command {
            EventsCommand::Show { message_id, json } => show(&api, message_id, *json).await,
            EventsCommand::Tail {
                user,
                email,
                event,
                state,
                lines,
                json,
                poll,
            } => {
                let mut filters = Vec::new();
                for (name, value) in [
                    ("user_id", user),
                    ("email", email),
                    ("event", event),
                    ("state", state),
                ] {
                    if let Some(v) = value {
                        filters.push((name, v.clone()));
                    }
                }
                tail(&api, filters, *lines, *json, *poll).await
            }
        };
        match done {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                super::say(format!("error: {message}"));
                ExitCode::from(1)
            }
        }
    })
}

/// The admin API of one server.
struct Api {
    base: String,
    token: AdminToken,
    client: reqwest::Client,
}

impl Api {
    /// `GET /api/PATH` with `query`: the JSON answer of a 200, else why not.
    async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, String> {
        let url = reqwest::Url::parse_with_params(&format!("{}/api/{path}", self.base), query)
            .map_err(|e| format!("--admin-url {:?} is not a URL: {e}", self.base))?;
        let answer = self
            .client
            .get(url)
            .bearer_auth(self.token.reveal())
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| {
                format!(
                    "cannot reach the admin API at {}: {e} (is `zdmap serve` running with its admin listener? --admin-url, ZDMAP_ADMIN_URL)",
                    self.base
                )
            })?;
        let status = answer.status();
        let body: Value = answer.json().await.unwrap_or(Value::Null);
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(format!(
                "the admin API at {} refused the token: give the server's admin token (ZDMAP_ADMIN_TOKEN, --admin-token-file, or its --data-dir)",
                self.base
            ));
        }
        if !status.is_success() {
            let why = body["error"].as_str().unwrap_or("no reason given");
            return Err(format!(
                "the admin API answered {status}: {}",
                escape_controls(why)
            ));
        }
        Ok(body)
    }
}

async fn show(api: &Api, message_id: &str, json: bool) -> Result<(), String> {
    let path = format!("events/{}", path_segment(message_id));
    let record = api.get(&path, &[]).await?;
    if json {
        print(&serde_json::to_string_pretty(&record).unwrap_or_default());
    } else {
        print(&shown_record(&record));
    }
    Ok(())
}

async fn tail(
    api: &Api,
    filters: Vec<(&'static str, String)>,
    lines: usize,
    json: bool,
    poll: Duration,
) -> Result<(), String> {
    let mut after: Option<String> = None;
    let mut first = true;
    loop {
        let mut query = filters.clone();
        match &after {
            Some(seq) => query.push(("after", seq.clone())),
            None => query.push(("limit", lines.max(1).to_string())),
        }
        let page = api.get("entries", &query).await?;
        if let Some(entries) = page["entries"].as_array() {
            for entry in entries.iter().skip(usize::from(first && lines == 0)) {
                if json {
                    print(&entry.to_string());
                } else {
                    print(&format!(
                        "{} {} {}",
                        text(&entry["at"]),
                        text(&entry["message_id"]),
                        shown_entry(entry)
                    ));
                }
            }
        }
        first = false;
        after = page["next_cursor"].as_str().map(str::to_owned).or(after);
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// Writes a line to standard output; a reader that has gone is no error.
fn print(text: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{text}");
}

/// A message id as one path segment (percent-encoded).
fn path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A JSON value as text to show: strings without their quotes, control characters escaped.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => escape_controls(s).into_owned(),
        Value::Null => String::new(),
        other => escape_controls(&other.to_string()).into_owned(),
    }
}

/// An event's record as the lines `zdmap events show` prints.
fn shown_record(record: &Value) -> String {
    let mut out = format!("event {}\n", text(&record["message_id"]));
    let facts = [
        ("type", "type"),
        ("user", "user_id"),
        ("anonymous", "anonymous_id"),
        ("email", "email"),
        ("event", "event"),
        ("source", "source"),
    ];
    for (label, key) in facts {
        if !record[key].is_null() {
            out.push_str(&format!("  {label:<10} {}\n", text(&record[key])));
        }
    }
    if let Some(size) = record["size"].as_u64() {
        out.push_str(&format!("  {:<10} {size} bytes\n", "size"));
    }
    out.push_str(&format!(
        "  {:<10} {}\n",
        "accepted",
        text(&record["accepted_at"])
    ));
    match record["actions"].as_array() {
        Some(actions) if actions.is_empty() => {
            out.push_str(&format!("  {:<10} no trigger matched\n", "actions"));
        }
        Some(actions) => {
            let names: Vec<String> = actions.iter().map(text).collect();
            out.push_str(&format!("  {:<10} {}\n", "actions", names.join(", ")));
        }
        None => {}
    }
    out.push_str("timeline\n");
    if let Some(timeline) = record["timeline"].as_array() {
        for entry in timeline {
            out.push_str(&format!(
                "  {} {}\n",
                text(&entry["at"]),
                shown_entry(entry)
            ));
        }
    }
    out.push_str(&format!(
        "state {} (since {})",
        text(&record["state"]),
        text(&record["updated_at"])
    ));
    out
}

/// One entry of the log on one line, after the destination it happened at (`[eu]`) on a
/// server with several.
fn shown_entry(entry: &Value) -> String {
    match entry["destination"].as_str() {
        Some(destination) => format!("[{destination}] {}", entry_line(entry)),
        None => entry_line(entry),
    }
}

fn entry_line(entry: &Value) -> String {
    let field = |key: &str| text(&entry[key]);
    let kind = field("kind");
    match kind.as_str() {
        "accepted" => {
            let mut line = format!("accepted {}", field("type"));
            if !entry["event"].is_null() {
                line.push_str(&format!(" {:?}", field("event")));
            }
            line
        }
        "refused" => format!(
            "refused at ingest ({}): {}",
            field("reason"),
            field("message")
        ),
        "matched" => match entry["actions"].as_array() {
            Some(a) if a.is_empty() => "matched no trigger".to_owned(),
            Some(a) => format!(
                "matched {}",
                a.iter().map(text).collect::<Vec<_>>().join(", ")
            ),
            None => "matched".to_owned(),
        },
        "request" => {
            let status = match entry["status"].as_u64() {
                Some(s) => s.to_string(),
                None => "---".to_owned(),
            };
            let mut line = format!("{} {} {status}", field("method"), field("path"),);
            if !entry["code"].is_null() {
                line.push_str(&format!(" {}", field("code")));
            }
            line.push_str(&format!(
                " {}ms {}/{} attempt {}",
                entry["duration_ms"].as_u64().unwrap_or_default(),
                field("action"),
                field("step"),
                entry["attempt"].as_u64().unwrap_or(1)
            ));
            if !entry["bulk"].is_null() {
                line.push_str(&format!(" bulk {}", field("bulk")));
            }
            if !entry["job"].is_null() {
                line.push_str(&format!(" job {}", field("job")));
            }
            if !entry["error"].is_null() {
                line.push_str(&format!("\n      {}", field("error")));
            }
            line
        }
        "waiting" => {
            let mut line = format!("waiting ({})", field("reason"));
            if let Some(s) = entry["seconds"].as_f64() {
                line.push_str(&format!(" {s:.1}s"));
            }
            if !entry["detail"].is_null() {
                line.push_str(&format!(": {}", field("detail")));
            }
            line
        }
        "unchanged" => format!(
            "unchanged, skipped {} {} ({}/{})",
            field("method"),
            field("path"),
            field("action"),
            field("step")
        ),
        "delivered" => "delivered".to_owned(),
        "skipped" => format!("skipped: {}", field("reason")),
        "dead_lettered" => {
            let mut line = "dead-lettered".to_owned();
            if !entry["action"].is_null() {
                line.push_str(&format!(" {}/{}", field("action"), field("step")));
            } else {
                line.push_str(&format!(" at {}", field("step")));
            }
            if let Some(s) = entry["status"].as_u64() {
                line.push_str(&format!(" {s}"));
            }
            if !entry["code"].is_null() {
                line.push_str(&format!(" {}", field("code")));
            }
            line.push_str(&format!(": {}", field("reason")));
            line
        }
        "replayed" | "discarded" => {
            let mut line = format!("{kind} by {}", field("by"));
            if !entry["action"].is_null() {
                line.push_str(&format!(" ({})", field("action")));
            }
            line
        }
        _ => kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_record_prints_its_requests_with_status_and_code_and_escapes_event_text() {
        let record = json!({
            "message_id": "m1", "type": "identify", "user_id": "u\u{1b}[31m1", "state": "dead_lettered",
            "accepted_at": "2026-01-01T00:00:00.000Z", "updated_at": "2026-01-01T00:00:01.000Z",
            "actions": ["upsert_user"],
            "timeline": [
                {"seq": 1, "at": "2026-01-01T00:00:00.000Z", "kind": "accepted", "type": "identify", "size": 10, "source": "-"},
                {"seq": 2, "at": "2026-01-01T00:00:00.100Z", "kind": "request", "action": "upsert_user", "step": "create_or_update",
                 "method": "POST", "path": "/api/v2/users/create_or_update", "status": 422, "duration_ms": 12, "attempt": 1,
                 "code": "RecordInvalid", "error": "{\"error\":\"RecordInvalid\"}"},
                {"seq": 3, "at": "2026-01-01T00:00:01.000Z", "kind": "dead_lettered", "action": "upsert_user", "step": "create_or_update",
                 "status": 422, "code": "RecordInvalid", "reason": "Email is invalid"}
            ]
        });
        let shown = shown_record(&record);
        assert!(
            shown.contains("POST /api/v2/users/create_or_update 422 RecordInvalid 12ms upsert_user/create_or_update attempt 1"),
            "{shown}"
        );
        assert!(
            shown.contains(
                "dead-lettered upsert_user/create_or_update 422 RecordInvalid: Email is invalid"
            ),
            "{shown}"
        );
        assert!(
            shown.ends_with("state dead_lettered (since 2026-01-01T00:00:01.000Z)"),
            "{shown}"
        );
        assert!(
            !shown.contains('\u{1b}'),
            "control characters are escaped: {shown}"
        );
        assert_eq!(path_segment("src/m 1"), "src%2Fm%201");
    }
}
