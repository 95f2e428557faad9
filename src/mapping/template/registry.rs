//! What a template environment registers: its filters, tests and functions, asked of the
//! environment itself, so that load-time checks know exactly what rendering will find.
//!
//! Whether a name is registered is asked through minijinja's public API (`is_filter` and
//! `is_test`, the functions behind Jinja's `is filter` and `is test`; `globals` for functions).
//! minijinja 3 has no public way to list filters and tests, so the names offered as
//! suggestions are read from the environment's `Debug` form, and kept only when the API
//! confirms them: a form that changes loses the suggestions, never the check.

use super::uses::Kind;
use minijinja::Environment;

/// The names an environment registers, for suggestions; [`knows`] is the check.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    filters: Vec<String>,
    tests: Vec<String>,
    functions: Vec<String>,
}

impl Registry {
    /// The names `env` registers now (call it after the last `add_filter`, `add_test` and
    /// `add_function`).
    pub fn of(env: &Environment) -> Registry {
        let listed = format!("{env:?}");
        let confirmed = |field: &str, kind: Kind| -> Vec<String> {
            debug_list(&listed, field)
                .into_iter()
                .filter(|n| knows(env, kind, n))
                .collect()
        };
        Registry {
            filters: confirmed("filters", Kind::Filter),
            tests: confirmed("tests", Kind::Test),
            functions: env.globals().map(|(n, _)| n.to_owned()).collect(),
        }
    }

    /// The registered names of a kind, for suggestions.
    pub fn names(&self, kind: Kind) -> impl Iterator<Item = &str> {
        match kind {
            Kind::Filter => &self.filters,
            Kind::Test => &self.tests,
            Kind::Function => &self.functions,
        }
        .iter()
        .map(String::as_str)
    }
}

/// Whether `env` has a filter, a test or a function called `name`.
pub fn knows(env: &Environment, kind: Kind, name: &str) -> bool {
    let state = env.empty_state();
    match kind {
        Kind::Filter => minijinja::tests::is_filter(&state, name),
        Kind::Test => minijinja::tests::is_test(&state, name),
        Kind::Function => env.globals().any(|(n, _)| n == name),
    }
}

/// The strings of the list `field: ["a", "b"]` in a `Debug` form; none when it is not there.
fn debug_list(debug: &str, field: &str) -> Vec<String> {
    let Some(start) = debug.find(&format!("{field}: [")) else {
        return Vec::new();
    };
    let rest = &debug[start + field.len() + 2..];
    let Some(end) = rest.find(']') else {
        return Vec::new();
    };
    serde_json::from_str(&rest[..=end]).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::template::Templates;

    #[test]
    fn the_registry_lists_what_the_environment_registers() {
        let r = Registry::of(&Templates::new().env);
        let has = |kind, name: &str| r.names(kind).any(|n| n == name);
        for name in [
            "snake_case",
            "keys_as",
            "without",
            "field_type",
            "lower",
            "join",
        ] {
            assert!(has(Kind::Filter, name), "filter {name}");
        }
        for name in ["none", "defined", "odd"] {
            assert!(has(Kind::Test, name), "test {name}");
        }
        for name in ["resolve", "try_resolve", "range"] {
            assert!(has(Kind::Function, name), "function {name}");
        }
        assert!(!has(Kind::Filter, "snakecase") && !has(Kind::Function, "resolv"));
    }
}
