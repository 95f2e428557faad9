//! Loading `mappings/` (being written).

use std::path::PathBuf;

/// Options every command that loads the mappings takes.
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArgs {
    /// The mappings directory: action files and destination.yaml.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "mappings",
        env = "ZDMAP_MAPPINGS"
    )]
    pub mappings: PathBuf,
    /// Override a setting of destination.yaml, e.g. `--set subdomain=acme` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}
