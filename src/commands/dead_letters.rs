//! `zdmap dead-letters`: the dead letters of a `zdmap serve` data directory. Safe while the
//! server runs: a replay moves letters back into its queue, and it delivers them within a second.

use crate::queue::sqlite::Selection;
use crate::queue::{DeadLetterStore, QueueError};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct DeadLettersArgs {
    /// The data directory of `zdmap serve`.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "zdmap-data",
        env = "ZDMAP_DATA_DIR",
        global = true
    )]
    pub data_dir: PathBuf,
    #[command(subcommand)]
    pub command: DeadLettersCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum DeadLettersCommand {
    /// One line per dead letter: id, time, action/step, status, Zendesk's code and message.
    List {
        /// Print each dead letter as a JSON line instead (with the event).
        #[arg(long)]
        json: bool,
        /// Show at most this many.
        #[arg(long, value_name = "N", default_value_t = 1000)]
        limit: usize,
    },
    /// Print one dead letter with its event, as JSON.
    Show { id: u64 },
    /// Put dead letters back into the queue, each for the action that failed. A letter whose
    /// change is stale (a record it changes had a newer change applied since: a later ticket
    /// update, a membership removed after it was added) stays in the dead letters and is listed,
    /// unless --force.
    Replay {
        #[command(flatten)]
        which: Which,
        /// Replay stale changes too, applying them over the newer ones.
        #[arg(long)]
        force: bool,
    },
    /// Delete dead letters for good.
    Purge(Which),
}

#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Which {
    /// These ids.
    #[arg(value_name = "ID")]
    pub ids: Vec<u64>,
    /// All of them.
    #[arg(long)]
    pub all: bool,
}

impl Which {
    fn selection(&self) -> Selection {
        if self.all {
            Selection::All
        } else {
            Selection::Ids(self.ids.clone())
        }
    }
}

/// Exit 0 on success, 1 on a failure (or an unknown id for `show`).
pub fn dead_letters(args: &DeadLettersArgs) -> ExitCode {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &DeadLettersArgs) -> Result<ExitCode, QueueError> {
    let mut store = DeadLetterStore::open(&args.data_dir)?;
    match &args.command {
        DeadLettersCommand::List { json, limit } => {
            let letters = store.list(0, *limit)?;
            for l in &letters {
                if *json {
                    println!("{}", serde_json::to_string(l).unwrap_or_default());
                } else {
                    let status = l.letter.status.map_or("-".into(), |s| s.to_string());
                    println!(
                        "{}\t{}\t{}/{}\t{}\t{}\t{}",
                        l.id,
                        l.letter.at,
                        l.letter.action,
                        l.letter.step,
                        status,
                        l.letter.code.as_deref().unwrap_or("-"),
                        l.letter.message
                    );
                }
            }
            let total = store.count()?;
            if !*json {
                eprintln!(
                    "{} dead letter(s) shown, {total} in {}",
                    letters.len(),
                    args.data_dir.display()
                );
            }
        }
        DeadLettersCommand::Show { id } => match store.get(*id)? {
            Some(l) => println!("{}", serde_json::to_string_pretty(&l).unwrap_or_default()),
            None => {
                eprintln!("no dead letter {id} in {}", args.data_dir.display());
                return Ok(ExitCode::from(1));
            }
        },
        DeadLettersCommand::Replay { which, force } => {
            let replayed = store.replay(&which.selection(), *force)?;
            for s in &replayed.stale {
                let secs = |ms: i64| crate::time::rfc3339_from_unix_secs(ms.div_euclid(1000));
                println!(
                    "{}\t{}\tstale: {} changed at {}, a newer change (at {}) was applied{}",
                    s.id,
                    s.action,
                    s.change.entity,
                    secs(s.change.at_ms),
                    secs(s.last_ms),
                    if *force {
                        "; replayed anyway (--force)"
                    } else {
                        "; kept"
                    }
                );
            }
            eprintln!(
                "{} dead letter(s) moved back to the queue; `zdmap serve` on {} delivers them",
                replayed.moved,
                args.data_dir.display()
            );
            if !replayed.stale.is_empty() && !*force {
                eprintln!(
                    "{} stale dead letter(s) kept: replaying them would apply older changes over \
                     newer ones (--force replays them anyway)",
                    replayed.stale.len()
                );
            }
        }
        DeadLettersCommand::Purge(which) => {
            let n = store.purge(&which.selection())?;
            eprintln!("{n} dead letter(s) deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}
