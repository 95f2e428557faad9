//! `zdmap send`: deliver events to Zendesk (or the emulator), with a summary at the end.

use super::args::{ConfigArgs, TargetArgs};
use crate::deliver::dispatch::{DispatchOptions, RecordWait};
use crate::deliver::run::run;
use crate::deliver::{DeadLetterWriter, Progress};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct SendArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Events: a JSON object, a JSON array or NDJSON (a dead-letter file is fine too); `-` or
    /// nothing reads standard input. Streamed: memory stays flat on any size.
    pub events: Option<PathBuf>,
    /// Where events that could not be delivered go (NDJSON; give it back to `zdmap send` to replay).
    #[arg(long, value_name = "FILE", default_value = "zdmap-dead-letters.ndjson")]
    pub dead_letter: PathBuf,
    /// How many events are delivered at once. The events of one user (or one organization)
    /// always go in order; a user that must wait (a retry, a rate limit, a record that does
    /// not exist yet) is set aside while the others go on.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub concurrency: usize,
    /// How long an event keeps being tried while Zendesk fails (server errors, timeouts, 429s)
    /// before it is dead-lettered, e.g. `90s`, `30m`, `1h`.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = super::serve::parse_duration)]
    pub retry_for: Duration,
    /// An event that needs a record that does not exist yet (a track before its user's
    /// identify) waits for it: until another event creates it, or until this long after the
    /// input has ended; then it is dead-lettered with the lookup that failed.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = super::serve::parse_duration)]
    pub wait_for_records: Duration,
    /// Apply changes even where a record they change (a user, an organization, a ticket, a
    /// membership: the action's `entities`) already had a newer change applied in this run.
    /// Without it such a stale change (an older dead letter replayed after newer events) is
    /// skipped, logged and counted in the summary.
    #[arg(long)]
    pub force: bool,
    /// How long an item of a bulk request waits for others to join it (steps with a `batch`
    /// form: users, organizations, memberships upserted up to 100 per request). Bulk
    /// requests also go out when full, or when the input has ended and nothing else runs.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = super::serve::parse_duration)]
    pub batch_window: Duration,
    /// Send every request on its own: no bulk requests, no jobs.
    #[arg(long)]
    pub no_batch: bool,
    /// Also print the summary as JSON on standard output.
    #[arg(long)]
    pub json: bool,
    /// Never show the progress bar (it shows only on a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
    /// A token store from `zdmap auth login`: its OAuth refresh-token chain is used (and kept
    /// refreshed) instead of the credentials of the environment.
    #[arg(long, value_name = "FILE", env = "ZDMAP_TOKEN_STORE")]
    pub token_store: Option<PathBuf>,
}

/// Exit 0 when everything was delivered, 2 when some events were dead-lettered, 1 on a fatal
/// error, 77 when a person must run `zdmap auth login` again (the OAuth chain is spent).
pub fn send(args: &SendArgs) -> ExitCode {
    crate::serve::logs::init_at(crate::serve::logs::LogFormat::Text, "warn");
    super::block_on(send_async(args))
}

async fn send_async(args: &SendArgs) -> ExitCode {
    let destination = match super::load_and_connect(
        &args.config,
        &args.target,
        args.token_store.as_deref(),
    )
    .await
    {
        Ok(d) => d,
        Err(code) => return code,
    };
    if let Some(emulator) = &destination.emulator {
        super::say(format!("emulator: listening on {}", emulator.url()));
    }
    let input = match super::open_input(&args.events) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let existed = args.dead_letter.exists();
    let writer = match DeadLetterWriter::open(&args.dead_letter) {
        Ok(w) => Arc::new(w),
        Err(e) => {
            super::say(format!("error: {e}"));
            return ExitCode::from(1);
        }
    };
    let progress = Progress::with_visibility(
        destination.stats.clone(),
        !args.no_progress && std::io::stderr().is_terminal(),
    );
    let options = DispatchOptions {
        concurrency: args.concurrency,
        retry_for: args.retry_for,
        wait_for_records: RecordWait::AfterInput(args.wait_for_records),
        batch_window: (!args.no_batch).then_some(args.batch_window),
        ..DispatchOptions::default()
    };
    let result = run(
        Arc::new(destination.executor.with_force(args.force)),
        input,
        writer,
        destination.stats.clone(),
        options,
    )
    .await;
    progress.finish();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            super::say(format!("error: {e}"));
            return ExitCode::from(1);
        }
    };
    if report.dead_letters == 0 && !existed {
        let _ = std::fs::remove_file(&args.dead_letter);
    }
    let snapshot = destination.stats.snapshot();
    super::say(snapshot.summary());
    if report.dead_letters > 0 {
        super::say(format!(
            "{} dead letter(s) written to {}; fix the cause, then run `zdmap send {}` to replay them",
            report.dead_letters,
            args.dead_letter.display(),
            args.dead_letter.display()
        ));
    }
    if let Some(emulator) = &destination.emulator {
        super::say(format!(
            "emulator state: {}",
            emulator_counts(&emulator.state())
        ));
    }
    if args.json {
        super::Out::new().line(serde_json::to_string(&snapshot).unwrap_or_default());
    }
    if let Some(fatal) = report.fatal {
        super::say(format!("error: {fatal}"));
        let login_needed = destination
            .executor
            .transport()
            .client()
            .authorizer()
            .stats()
            .login_needed
            .load(std::sync::atomic::Ordering::Relaxed);
        if login_needed == 1 {
            return ExitCode::from(super::auth::EXIT_LOGIN_NEEDED);
        }
        return ExitCode::from(1);
    }
    if report.dead_letters > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

/// "3 users, 1 organizations, ..." from the emulator's state.
fn emulator_counts(state: &serde_json::Value) -> String {
    let Some(map) = state.as_object() else {
        return "unavailable".into();
    };
    map.iter()
        .filter_map(|(k, v)| v.as_array().map(|a| format!("{} {k}", a.len())))
        .collect::<Vec<_>>()
        .join(", ")
}
