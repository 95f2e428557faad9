//! `zdmap init [DIR]`: writes the default mappings, their test cases and the JSON Schemas into
//! a new mappings directory; refuses to overwrite a file without `--force`.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// The mappings directory to write (created when missing).
    #[arg(default_value = "mappings")]
    pub dir: PathBuf,
    /// Overwrite files that are already there.
    #[arg(long)]
    pub force: bool,
}

pub fn init(args: &InitArgs) -> ExitCode {
    let files = crate::mapping::defaults::files();
    let existing: Vec<String> = files
        .iter()
        .map(|(path, _)| args.dir.join(path))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !existing.is_empty() && !args.force {
        let more = existing.len().saturating_sub(3);
        let shown = existing
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        eprintln!(
            "error: {shown}{more} already exist; nothing was written. Give --force to overwrite them."
        );
        return ExitCode::from(1);
    }
    for (path, text) in &files {
        let path = args.dir.join(path);
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, text));
        if let Err(e) = written {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    let dir = args.dir.display();
    eprintln!(
        "wrote {} file(s) to {dir}; check them with `zdmap validate --mappings {dir}` and `zdmap test --mappings {dir}`",
        files.len()
    );
    ExitCode::SUCCESS
}
