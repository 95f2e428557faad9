//! What a response status means: `ok`, `skip`, `retry`, `fail` or `fatal`.
//!
//! Rules come from `destination.yaml` (defaults for every step) and from each step
//! (`outcomes: { 404: ok, 422/DuplicateValue: ok }`). A rule names a status (`404`) or a class
//! (`4xx`), optionally with an error code read from the response body through the destination's
//! `errors.codes` paths. The step's rules are tried before the defaults, most specific first.

use crate::mapping::diagnostic::Problems;
use crate::mapping::spec::OutcomeKind;
use indexmap::IndexMap;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Status {
    Exact(u16),
    Class(u16),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rule {
    status: Status,
    code: Option<String>,
    outcome: OutcomeKind,
}

impl Rule {
    fn specificity(&self) -> u8 {
        match (&self.status, &self.code) {
            (Status::Exact(_), Some(_)) => 4,
            (Status::Exact(_), None) => 3,
            (Status::Class(_), Some(_)) => 2,
            (Status::Class(_), None) => 1,
        }
    }

    fn matches(&self, status: u16, codes: &[String]) -> bool {
        let status_ok = match self.status {
            Status::Exact(s) => s == status,
            Status::Class(c) => status / 100 == c,
        };
        status_ok
            && self
                .code
                .as_ref()
                .is_none_or(|c| codes.iter().any(|x| x == c))
    }
}

/// A list of outcome rules, most specific first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcomes(Vec<Rule>);

impl Outcomes {
    /// Parses `{ "404": ok, "4xx": fail, "422/DuplicateValue": ok }`; bad keys are reported at `pointer`.
    pub fn compile(
        map: &IndexMap<String, OutcomeKind>,
        pointer: &str,
        problems: &mut Problems,
    ) -> Outcomes {
        let mut rules = Vec::new();
        for (key, outcome) in map {
            match parse_key(key) {
                Some((status, code)) => rules.push(Rule {
                    status,
                    code,
                    outcome: *outcome,
                }),
                None => problems.at_key(
                    &format!("{pointer}/{}", key.replace('~', "~0").replace('/', "~1")),
                    format!("bad outcome key {key:?}: write a status (`404`), a class (`4xx`) or a status with an error code (`422/DuplicateValue`)"),
                ),
            }
        }
        rules.sort_by_key(|r| std::cmp::Reverse(r.specificity()));
        Outcomes(rules)
    }

    /// The outcome for a status and the error codes found in the body, if any rule matches.
    pub fn decide(&self, status: u16, codes: &[String]) -> Option<OutcomeKind> {
        self.0
            .iter()
            .find(|r| r.matches(status, codes))
            .map(|r| r.outcome)
    }
}

fn parse_key(key: &str) -> Option<(Status, Option<String>)> {
    let (status, code) = match key.split_once('/') {
        Some((s, c)) if !c.is_empty() => (s, Some(c.to_owned())),
        Some(_) => return None,
        None => (key, None),
    };
    let status = if let Some(class) = status.strip_suffix("xx") {
        let c: u16 = class.parse().ok().filter(|c| (1..=5).contains(c))?;
        Status::Class(c)
    } else {
        let s: u16 = status.parse().ok().filter(|s| (100..=599).contains(s))?;
        Status::Exact(s)
    };
    Some((status, code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_rule_wins() {
        let mut problems = Problems::detached();
        let map = IndexMap::from([
            ("4xx".to_owned(), OutcomeKind::Fail),
            ("422/DuplicateValue".to_owned(), OutcomeKind::Ok),
            ("404".to_owned(), OutcomeKind::Skip),
        ]);
        let o = Outcomes::compile(&map, "/outcomes", &mut problems);
        assert!(problems.is_empty());
        assert_eq!(
            o.decide(422, &["RecordInvalid".into(), "DuplicateValue".into()]),
            Some(OutcomeKind::Ok)
        );
        assert_eq!(
            o.decide(422, &["RecordInvalid".into()]),
            Some(OutcomeKind::Fail)
        );
        assert_eq!(o.decide(404, &[]), Some(OutcomeKind::Skip));
        assert_eq!(o.decide(500, &[]), None);
    }

    #[test]
    fn bad_keys_are_reported() {
        let mut problems = Problems::detached();
        let map = IndexMap::from([
            ("4x4".to_owned(), OutcomeKind::Fail),
            ("999".to_owned(), OutcomeKind::Ok),
        ]);
        Outcomes::compile(&map, "/outcomes", &mut problems);
        assert_eq!(problems.len(), 2);
    }
}
