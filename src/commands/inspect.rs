//! Commands that read the mappings without sending anything: validate, preview, match, test, schema.

use super::args::ConfigArgs;
use crate::deliver::unchanged::{digest, now_ms};
use crate::mapping::cases;
use crate::mapping::config::Format;
use crate::mapping::event::read_events;
use crate::mapping::request::Request;
use crate::mapping::trigger::Trigger;
use crate::queue::AppliedWritesFile;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// How problems are printed: `text` (file:line:col: message), `json`, `github` (annotations) or `pretty`.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Treat warnings as errors: exit 1 when there is any.
    #[arg(long)]
    pub deny_warnings: bool,
}

#[derive(clap::Args, Debug)]
pub struct PreviewArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Events: a JSON object, a JSON array or NDJSON; `-` or nothing reads standard input.
    pub events: Option<PathBuf>,
    /// Pretty-print each event's preview instead of one JSON line per event.
    #[arg(long)]
    pub pretty: bool,
    /// The data directory of a `zdmap serve`: a write equal to the last one it applied to the
    /// same record (`skip_unchanged`) is shown as "unchanged, skipped".
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct MatchArgs {
    /// The trigger, e.g. 'type = "track" and event = "Ticket Created"'.
    pub trigger: String,
    /// Events: a JSON object, a JSON array or NDJSON; `-` or nothing reads standard input.
    pub events: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct TestArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Case files or directories (default: the mappings directory's tests/).
    pub cases: Vec<PathBuf>,
    /// Run only the cases whose name contains NAME.
    #[arg(short = 'k', long = "name", value_name = "NAME")]
    pub only: Option<String>,
    /// `text`; `github`: the same, plus an annotation at each failing case for GitHub Actions;
    /// `junit`: JUnit XML alone on standard output.
    #[arg(long, value_enum, default_value_t = TestFormat::Text)]
    pub format: TestFormat,
}

/// How `zdmap test` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TestFormat {
    Text,
    Github,
    Junit,
}

#[derive(clap::Args, Debug)]
pub struct SchemaArgs {
    /// Write every schema into this directory (e.g. `schemas`) instead of printing the action schema.
    #[arg(long, value_name = "DIR")]
    pub write: Option<PathBuf>,
}

/// `zdmap validate`: the mappings and their test cases; exit 0 when valid (warnings alone
/// leave them valid, unless `--deny-warnings`), 1 when not.
pub fn validate(args: &ValidateArgs) -> ExitCode {
    let mappings = &args.config.mappings;
    let (problems, summary) = match args.config.load() {
        Ok(config) => {
            let mut problems = config.warnings.clone();
            problems.0.extend(cases::check(mappings, Some(&config)).0);
            // The subdomain as `send` and `serve` take it (they refuse what this refuses).
            if let Some(subdomain) = config.setting_str("subdomain").filter(|s| !s.is_empty())
                && let Err(e) = crate::deliver::Target::zendesk(subdomain)
            {
                problems.0.push(crate::mapping::diagnostic::Diagnostic::new(
                    &mappings.join(crate::mapping::config::DESTINATION_FILE),
                    crate::mapping::yaml::Loc::default(),
                    format!("setting `subdomain`: {e}"),
                ));
            }
            let summary = format!(
                "{}: {} action(s), {} resolver(s)",
                mappings.display(),
                config.actions.len(),
                config.resolvers.len()
            );
            (problems, Some(summary))
        }
        // The test cases' own shape is worth knowing even when the mappings do not load.
        Err(mut problems) => {
            if mappings.is_dir() {
                problems.0.extend(cases::check(mappings, None).0);
            }
            (problems, None)
        }
    };
    let (errors, warnings) = problems.counts();
    let denied = args.deny_warnings && warnings > 0;
    let valid = errors == 0 && !denied;
    if args.format == Format::Json || !problems.is_empty() {
        println!("{}", problems.render(args.format));
    }
    if args.format != Format::Json {
        match summary {
            Some(summary) if valid && warnings == 0 => eprintln!("{summary}: valid"),
            Some(summary) if valid => eprintln!("{summary}: valid, {warnings} warning(s)"),
            _ if errors == 0 => {
                eprintln!("0 error(s), {warnings} warning(s), denied by --deny-warnings")
            }
            _ => eprintln!("{errors} error(s), {warnings} warning(s)"),
        }
    }
    if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `zdmap preview`: one JSON line per event; exit 2 when some events have errors.
pub fn preview(args: &PreviewArgs) -> ExitCode {
    let config = match super::load_config(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let input = match super::open_input(&args.events) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let applied = match args.data_dir.as_deref().map(AppliedWritesFile::open) {
        None => None,
        Some(Ok(file)) => Some(file),
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let unchanged = |entity: &str, request: &Request, span: std::time::Duration| {
        applied
            .as_ref()
            .and_then(|file| file.last_write(entity).ok().flatten())
            .is_some_and(|last| last.holds(&digest(request), span, now_ms()))
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut had_errors = false;
    let mut write_error = None;
    let result = read_events(input, |item| {
        let value = match &item.event {
            Ok(event) => {
                let p = config.preview_knowing(event, &unchanged);
                had_errors |= !p.errors.is_empty();
                p.to_json(item.index)
            }
            Err(e) => {
                had_errors = true;
                json!({"index": item.index, "line": item.line, "errors": [{"message": e.to_string()}]})
            }
        };
        let text = if args.pretty {
            serde_json::to_string_pretty(&value)
        } else {
            serde_json::to_string(&value)
        };
        match text
            .map_err(std::io::Error::other)
            .and_then(|t| writeln!(out, "{t}"))
        {
            Ok(()) => true,
            Err(e) => {
                write_error = Some(e);
                false
            }
        }
    });
    let _ = out.flush();
    if let Some(e) = result.err().or(write_error)
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }
    if had_errors {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

/// `zdmap match`: `true`/`false` per event; exit 1 with the column on a parse error.
pub fn match_trigger(args: &MatchArgs) -> ExitCode {
    let trigger = match Trigger::parse(&args.trigger) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: bad trigger at column {}: {}", e.column, e.message);
            eprintln!("  {}", args.trigger);
            eprintln!("  {}^", " ".repeat(e.column.saturating_sub(1)));
            return ExitCode::from(1);
        }
    };
    let input = match super::open_input(&args.events) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = read_events(input, |item| {
        let line = match &item.event {
            Ok(event) => trigger.matches(event.value()).to_string(),
            Err(e) => format!("error: {e}"),
        };
        writeln!(out, "{line}").is_ok()
    });
    let _ = out.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// `zdmap test`: runs mapping test cases like a test runner; exit 1 when any fails.
pub fn test(args: &TestArgs) -> ExitCode {
    let files = match cases::find(&args.config.mappings, &args.cases) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let only = args.only.as_deref();
    let report = match cases::run(&args.config.mappings, &args.config.set, &files, only) {
        Ok(r) => r,
        Err(diags) => {
            eprintln!("{diags}");
            return ExitCode::from(1);
        }
    };
    let exit = if report.failed() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    };
    if args.format == TestFormat::Junit {
        print!("{}", super::junit::render("zdmap", &report));
        return exit;
    }
    println!("running {} mapping test case(s)", report.results.len());
    for r in &report.results {
        let name = format!(
            "{}::{}",
            r.file
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            r.name
        );
        println!(
            "test {name} ... {}",
            if r.failures.is_empty() {
                "ok"
            } else {
                "FAILED"
            }
        );
    }
    let failed: Vec<_> = report
        .results
        .iter()
        .filter(|r| !r.failures.is_empty())
        .collect();
    if !failed.is_empty() {
        println!("\nfailures:");
        for r in &failed {
            println!("\n---- {} ({}) ----", r.name, r.file.display());
            for f in &r.failures {
                println!("  {f}");
            }
        }
    }
    if args.format == TestFormat::Github && !failed.is_empty() {
        let at_each_case = failed.iter().map(|r| {
            let place = crate::mapping::yaml::Loc {
                line: r.line,
                column: 1,
            };
            let message = format!("case `{}` failed:\n{}", r.name, r.failures.join("\n"));
            crate::mapping::diagnostic::Diagnostic::new(&r.file, place, message)
        });
        let annotations = crate::mapping::diagnostic::Diagnostics(at_each_case.collect());
        println!("{}", annotations.render(Format::Github));
    }
    println!("\n{} passed, {} failed", report.passed(), report.failed());
    exit
}

/// `zdmap schema`: prints the action schema, or writes all schemas into a directory.
pub fn schema(args: &SchemaArgs) -> ExitCode {
    match &args.write {
        Some(dir) => match crate::mapping::schema::write_all(dir) {
            Ok(()) => {
                eprintln!(
                    "wrote {} schema(s) to {}",
                    crate::mapping::schema::all().len(),
                    dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {}: {e}", dir.display());
                ExitCode::from(1)
            }
        },
        None => {
            print!(
                "{}",
                crate::mapping::schema::render(&crate::mapping::schema::action_schema())
            );
            ExitCode::SUCCESS
        }
    }
}
