//! How `zdmap serve` logs to standard error: text (coloured only when standard error is a
//! terminal) or one JSON object per line, for log collectors.
//!
//! Field values often carry outside text (Zendesk's error messages echo event data). In text
//! logs their control characters are escaped (`\n`, `\u{1b}`), so a value can neither start a
//! line of its own nor drive the terminal; JSON lines escape them by being JSON.
//!
//! A JSON line is `{"timestamp", "level", "target", "fields"}`, where `fields.message` is the
//! event's text. A field that an event names `message` beside its text is kept as `detail`, so
//! no line has two `message` keys. With JSON logs a panic is logged as a JSON line too.

use crate::base::time::rfc3339_utc;
use serde_json::{Map, Value, json};
use std::fmt;
use std::io::IsTerminal as _;
use std::time::SystemTime;
use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The log format on standard error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Sends the process' logs to standard error, level from `ZDMAP_LOG` (default `info`).
pub fn init(format: LogFormat) {
    init_at(format, "info");
}

/// Like [`init`], at `level` unless `ZDMAP_LOG` says otherwise (`zdmap send` logs warnings only:
/// its summary says the rest).
pub fn init_at(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ZDMAP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .fmt_fields(escaped_fields())
            .try_init(),
        LogFormat::Json => builder.event_format(JsonLines).try_init(),
    };
    if installed.is_ok() && format == LogFormat::Json {
        std::panic::set_hook(Box::new(|panic| {
            tracing::error!(panic = %panic, "zdmap panicked");
        }));
    }
}

/// Text fields as tracing writes them (`message`, then `name=value`), with control
/// characters escaped.
fn escaped_fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    use tracing_subscriber::field::MakeExt as _;
    tracing_subscriber::fmt::format::debug_fn(|writer, field, value| {
        let text = format!("{value:?}");
        let text = crate::base::text::escape_controls(&text);
        match field.name() {
            "message" => write!(writer, "{text}"),
            name => write!(writer, "{name}={text}"),
        }
    })
    .delimited(" ")
}

/// One JSON object per event.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let line = json!({
            "timestamp": rfc3339_utc(SystemTime::now()),
            "level": meta.level().as_str(),
            "target": meta.target(),
            "fields": fields.0,
        });
        writeln!(writer, "{line}")
    }
}

/// An event's fields as JSON values.
#[derive(Default)]
struct Fields(Map<String, Value>);

impl Fields {
    fn insert(&mut self, field: &Field, value: Value) {
        // tracing records the event's text first; a field also named `message` comes after it.
        let name = match field.name() {
            "message" if self.0.contains_key("message") => "detail",
            name => name,
        };
        self.0.insert(name.to_owned(), value);
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.insert(field, Value::String(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.insert(field, Value::String(value.to_owned()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.insert(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.insert(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.insert(field, value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.insert(field, value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_text_line_cannot_be_split_or_steer_the_terminal_by_its_data() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .fmt_fields(escaped_fields())
            .finish();
        let forged = "x\n2026-12-06T00:00:00Z ERROR forged line \u{1b}[2J";
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(zendesk_message = %forged, "event dead-lettered: {forged}");
        });
        let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(text.contains("zendesk_message=x\\n2026"), "{text}");
    }

    #[test]
    fn a_message_field_beside_the_text_becomes_detail() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(message = "HTTP 500", status = 500u64, "not taken yet");
        });
        let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
        assert_eq!(text.matches("\"message\"").count(), 1, "{text}");
        let line: Value = serde_json::from_str(text.trim()).expect("one JSON line");
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["fields"]["message"], "not taken yet");
        assert_eq!(line["fields"]["detail"], "HTTP 500");
        assert_eq!(line["fields"]["status"], 500);
    }
}
