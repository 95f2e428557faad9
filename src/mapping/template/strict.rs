//! Load-time checks of a compiled template: every filter, test and function it names is
//! registered in its environment, and every `settings.NAME` it reads is a declared setting.
//!
//! minijinja compiles a template without looking names up: a misspelt filter fails on every
//! event that reaches it, and a misspelt setting reads as nothing. These checks make both load
//! errors, each at the unknown name, with the closest registered or declared name.

use super::TemplateError;
use super::registry::{Registry, knows};
use super::uses::{Kind, uses};
use crate::mapping::diagnostic::did_you_mean as hint;
use minijinja::Template;

/// The problems of `template` (compiled in `registry`'s environment); `settings` are the declared
/// settings, when known. `back` maps an offset in the template to one in the mapping's string.
pub fn check(
    template: &Template,
    registry: &Registry,
    settings: Option<&[String]>,
    back: &dyn Fn(usize) -> usize,
) -> Vec<TemplateError> {
    let source = template.source();
    let env = template.new_state().env();
    let undeclared = template.undeclared_variables(false);
    let mut found: Vec<TemplateError> = Vec::new();
    for u in uses(source) {
        // A called name the template declares itself (a macro) is no function of the environment.
        let declared = u.kind == Kind::Function && !undeclared.contains(u.name);
        if declared || knows(env, u.kind, u.name) {
            continue;
        }
        found.push(TemplateError::at(
            format!(
                "unknown {} `{}`{}",
                u.kind.noun(),
                u.name,
                hint(u.name, registry.names(u.kind))
            ),
            back(u.offset),
        ));
    }
    if let Some(settings) = settings {
        let mut read: Vec<String> = template.undeclared_variables(true).into_iter().collect();
        read.sort();
        for name in read.iter().filter_map(|v| setting_of(v)) {
            if settings.iter().any(|s| s == name) {
                continue;
            }
            let message = format!(
                "unknown setting `{name}`{}",
                hint(name, settings.iter().map(String::as_str))
            );
            let offset = reference_offset(source, &format!("settings.{name}"))
                .map(|o| back(o + "settings.".len()));
            found.push(TemplateError::new(message, offset));
        }
    }
    found.sort_by_key(|e| e.offset);
    found
}

/// `NAME` of `settings.NAME` or `settings.NAME.more`.
fn setting_of(dotted: &str) -> Option<&str> {
    dotted.strip_prefix("settings.")?.split('.').next()
}

/// Where the dotted name `reference` first stands whole in `source`: not as part of a longer
/// name, nor as an attribute (`x.settings.a`).
pub fn reference_offset(source: &str, reference: &str) -> Option<usize> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    source.match_indices(reference).map(|(i, _)| i).find(|&i| {
        let before = source[..i].chars().next_back();
        let after = source[i + reference.len()..].chars().next();
        !before.is_some_and(|c| ident(c) || c == '.') && !after.is_some_and(ident)
    })
}

#[cfg(test)]
mod tests {
    use crate::mapping::template::Templates;

    fn problems(source: &str) -> Vec<(String, Option<usize>)> {
        let mut t = Templates::new();
        t.declare_settings(vec!["source".into(), "subdomain".into()]);
        match t.text(source) {
            Ok(_) => Vec::new(),
            Err(e) => e.all().map(|e| (e.message.clone(), e.offset)).collect(),
        }
    }

    #[test]
    fn unknown_names_are_found_at_their_place_with_a_suggestion() {
        let src =
            "{{ a | snakecase }} {{ b is nnone }} {{ resolv('user', x=a) }} {{ settings.sorce }}";
        let found = problems(src);
        let at = |s: &str| src.find(s);
        assert_eq!(
            found,
            vec![
                (
                    "unknown filter `snakecase`; did you mean `snake_case`?".into(),
                    at("snakecase")
                ),
                (
                    "unknown test `nnone`; did you mean `none`?".into(),
                    at("nnone")
                ),
                (
                    "unknown function `resolv`; did you mean `resolve`?".into(),
                    at("resolv(")
                ),
                (
                    "unknown setting `sorce`; did you mean `source`?".into(),
                    at("sorce")
                ),
            ]
        );
    }

    #[test]
    fn single_expressions_and_bare_expressions_are_located_in_the_mapping_string() {
        assert_eq!(
            problems("{{ x | lowr }}"),
            vec![(
                "unknown filter `lowr`; did you mean `lower`?".into(),
                Some(7)
            )]
        );
        let mut t = Templates::new();
        let e = t
            .expression("x is odd and y is evn")
            .expect_err("unknown test");
        assert_eq!(e.offset, Some(18));
        assert!(e.message.contains("did you mean `even`?"), "{}", e.message);
    }

    #[test]
    fn registered_and_declared_names_pass() {
        for ok in [
            "{{ a | lower | snake_case | keys_as([]) | without([]) | field_type }}",
            "{{ a is none or a is not defined }}",
            "{{ try_resolve('user', id=a) }} {{ range(3) | list }} {{ message.items() }}",
            "{% macro m(x) %}{{ x }}{% endmacro %}{{ m(1) }}",
            "{{ settings.source ~ settings.subdomain.upper() }} {{ settings['x'] }}",
            "{% filter upper %}x{% endfilter %}",
        ] {
            assert_eq!(problems(ok), Vec::new(), "{ok}");
        }
        // Without declared settings (a template compiled outside a mappings directory), settings
        // are not checked.
        assert!(Templates::new().text("{{ settings.anything }}").is_ok());
    }
}
