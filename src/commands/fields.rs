//! `zdmap fields check [--create]`: the custom user and organization field keys the mappings
//! would send over sample events that the account does not define, and creating them.

use super::args::{ConfigArgs, TargetArgs};
use crate::deliver::account_fields::{self, Account, Family, SentKey};
use crate::mapping::event::{Event, read_events};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct FieldsArgs {
    #[command(subcommand)]
    pub command: FieldsCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum FieldsCommand {
    /// List each user or organization field key the mappings would send (over the sample
    /// events) that the account lacks, with the events that carry it; exit 1 when one is
    /// missing. Zendesk silently drops such keys.
    Check(CheckArgs),
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Sample events: a JSON object, a JSON array or NDJSON (default: the events of the
    /// mappings' test cases).
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Create the missing fields, with a type inferred from the values (text, integer,
    /// decimal, checkbox, date) and a title from the key.
    #[arg(long)]
    pub create: bool,
}

pub fn fields(args: &FieldsArgs) -> ExitCode {
    match &args.command {
        FieldsCommand::Check(a) => check(a),
    }
}

fn check(args: &CheckArgs) -> ExitCode {
    let config = match super::load_config(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let events = match sample_events(args) {
        Ok(e) => e,
        Err(code) => return code,
    };
    let sent = account_fields::sent(&config, events.iter().map(|(l, e)| (l.clone(), e)));
    super::block_on(async move {
        let (client, _emulator) = match crate::deliver::setup::open_client(
            &config,
            &args.target.wanted(),
            &Default::default(),
        )
        .await
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        };
        let account = Account::new(&client);
        let mut missing: Vec<&SentKey> = Vec::new();
        for family in Family::ALL {
            let keys = match account.keys(family).await {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("error: reading the account's {} fields: {e}", family.noun());
                    return ExitCode::from(1);
                }
            };
            missing.extend(
                sent.iter()
                    .filter(|s| s.family == family && !keys.contains(&s.key)),
            );
        }
        println!(
            "{} custom field key(s) sent over {} event(s); {} missing in the account",
            sent.len(),
            events.len(),
            missing.len()
        );
        let mut failed = false;
        for s in &missing {
            let kind = account_fields::infer_type(&s.values);
            let shown: Vec<String> = s.events.iter().take(3).cloned().collect();
            let more = s.events.len().saturating_sub(shown.len());
            let more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            println!(
                "{} field `{}` ({kind}): missing; sent by {}{more}",
                s.family.noun(),
                s.key,
                shown.join(", "),
            );
            if args.create {
                match account.create(s.family, &s.key, kind).await {
                    Ok(()) => println!(
                        "  created: `{}` \"{}\" ({kind})",
                        s.key,
                        account_fields::title(&s.key)
                    ),
                    Err(e) => {
                        eprintln!("error: {e}");
                        failed = true;
                    }
                }
            }
        }
        if !missing.is_empty() && !args.create {
            eprintln!("Zendesk drops values of fields it does not have; `--create` creates them");
        }
        if failed || (!missing.is_empty() && !args.create) {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        }
    })
}

/// The events of `--events`, labelled by line, or those of the mappings' test cases, labelled
/// by case.
fn sample_events(args: &CheckArgs) -> Result<Vec<(String, Event)>, ExitCode> {
    let Some(path) = &args.events else {
        return crate::mapping::cases::events(&args.config.mappings).map_err(|diags| {
            eprintln!("{diags}");
            ExitCode::from(1)
        });
    };
    let input = super::open_input(&Some(path.clone()))?;
    let mut events = Vec::new();
    let read = read_events(input, |item| {
        let label = match item.line {
            Some(line) => format!("{}:{line}", path.display()),
            None => format!("{} event {}", path.display(), item.index + 1),
        };
        match item.event {
            Ok(event) => events.push((label, event)),
            Err(e) => eprintln!("{label}: skipped: {e}"),
        }
        true
    });
    match read {
        Ok(()) => Ok(events),
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            Err(ExitCode::from(1))
        }
    }
}
