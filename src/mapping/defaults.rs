//! The default mappings, their test cases and the JSON Schemas, as shipped in the binary.
//!
//! `zdmap init` writes them into a new mappings directory, so someone who installed only the
//! binary has what a clone of the repository has. The files are the repository's `mappings/`,
//! embedded when the binary is built; their `$schema` lines are rewritten to point into the
//! directory's own `schemas/`, so editors find the schemas wherever the directory is.

use std::path::PathBuf;

/// One embedded file: its path inside the mappings directory and its text.
macro_rules! mapping {
    ($path:literal) => {
        ($path, include_str!(concat!("../../mappings/", $path)))
    };
}

/// The files of the repository's `mappings/`, by their path inside it.
pub const MAPPINGS: [(&str, &str); 16] = [
    mapping!("destination.yaml"),
    mapping!("add_organization_member.yaml"),
    mapping!("create_ticket.yaml"),
    mapping!("track_event.yaml"),
    mapping!("update_organization_membership.yaml"),
    mapping!("update_ticket.yaml"),
    mapping!("upsert_organization.yaml"),
    mapping!("upsert_user.yaml"),
    mapping!("tests/create_ticket.yaml"),
    mapping!("tests/events.yaml"),
    mapping!("tests/peers.yaml"),
    mapping!("tests/track_event.yaml"),
    mapping!("tests/update_organization_membership.yaml"),
    mapping!("tests/update_ticket.yaml"),
    mapping!("tests/upsert_organization.yaml"),
    mapping!("tests/upsert_user.yaml"),
];

/// Where the schemas go inside a mappings directory written by `zdmap init`.
pub(crate) const SCHEMA_DIR: &str = "schemas";

const SCHEMA_LINE: &str = "# yaml-language-server: $schema=";

/// Every file of a new mappings directory: its path inside the directory and its text.
pub fn files() -> Vec<(PathBuf, String)> {
    let mappings = MAPPINGS
        .iter()
        .map(|(path, text)| (PathBuf::from(path), schema_in_dir(text)));
    let schemas = crate::mapping::schema::all()
        .into_iter()
        .map(|(name, schema)| {
            (
                PathBuf::from(SCHEMA_DIR).join(name),
                crate::mapping::schema::render(&schema),
            )
        });
    mappings.chain(schemas).collect()
}

/// The repository's files point at `schemas/` beside `mappings/` (`../schemas/...`); in a new
/// directory the schemas are inside it, one level closer.
fn schema_in_dir(text: &str) -> String {
    match text.split_once('\n') {
        Some((first, rest)) if first.starts_with(SCHEMA_LINE) => {
            let target = &first[SCHEMA_LINE.len()..];
            let target = target.strip_prefix("../").unwrap_or(target);
            format!("{SCHEMA_LINE}{target}\n{rest}")
        }
        _ => text.to_owned(),
    }
}
