//! `zdmap completions SHELL` and `zdmap man`: generated from the command line's own definition,
//! so they never fall behind it.

use clap::CommandFactory as _;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell whose completion script to print.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Write zdmap.1 and a page per command (zdmap-serve.1, ...) into this directory instead of
    /// printing zdmap.1.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Prints the completion script of a shell.
pub fn completions(args: &CompletionsArgs) -> ExitCode {
    let mut command = super::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut command, "zdmap", &mut out);
    write_stdout(&out)
}

/// Prints zdmap(1), or writes every page into `--dir`.
pub fn man(args: &ManArgs) -> ExitCode {
    let mut command = super::Cli::command();
    command.build();
    let Some(dir) = &args.dir else {
        let mut out = Vec::new();
        return match clap_mangen::Man::new(command).render(&mut out) {
            Ok(()) => write_stdout(&out),
            Err(e) => fail(format!("cannot render the man page: {e}")),
        };
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        return fail(format!("cannot create {}: {e}", dir.display()));
    }
    let mut pages = vec![("zdmap".to_owned(), command.clone())];
    pages.extend(
        command
            .get_subcommands()
            .filter(|c| !c.is_hide_set())
            .map(|c| {
                let name = format!("zdmap-{}", c.get_name());
                (name.clone(), c.clone().name(name))
            }),
    );
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        if let Err(e) = clap_mangen::Man::new(page).render(&mut out) {
            return fail(format!("cannot render {name}.1: {e}"));
        }
        if let Err(e) = std::fs::write(&path, out) {
            return fail(format!("cannot write {}: {e}", path.display()));
        }
    }
    ExitCode::SUCCESS
}

fn write_stdout(bytes: &[u8]) -> ExitCode {
    use std::io::Write as _;
    // A reader that has gone (`| head`) is no error.
    let _ = std::io::stdout().lock().write_all(bytes);
    ExitCode::SUCCESS
}

fn fail(problem: String) -> ExitCode {
    super::say(format!("error: {problem}"));
    ExitCode::from(1)
}
