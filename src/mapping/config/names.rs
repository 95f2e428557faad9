//! The names a template reads must exist where it is used: the action's fields and the scope's
//! own names (`settings`, `message`, `steps`, `item`, `key`), and, as `steps.STEP.OUTPUT`, an
//! output of an earlier step. Each unknown name is reported at its place in the string, with
//! the closest existing name. (Filters, tests, functions and settings are checked as a template
//! compiles, in `template`.)

use crate::mapping::diagnostic::{Problems, did_you_mean};
use crate::mapping::plan::Step;
use crate::mapping::template::{Templates, Text, reference_offset};
use crate::mapping::yaml::NodeValue;

/// Names a template reads must be fields or the scope's own names.
pub(super) fn check_names(
    templates: &Templates,
    text: &Text,
    allowed: &[&str],
    at: &str,
    p: &mut Problems,
) {
    let mut vars: Vec<String> = templates.variables(text).into_iter().collect();
    vars.sort();
    for v in vars {
        if !allowed.contains(&v.as_str()) {
            let hint = did_you_mean(&v, allowed.iter().copied());
            let message =
                format!("unknown name `{v}` in a template: it is not a field of this action{hint}");
            report(p, at, &v, 0, message);
        }
    }
}

/// `steps.NAME` must name an earlier step, and `steps.NAME.OUTPUT` one of its outputs.
pub(super) fn check_steps(
    templates: &Templates,
    text: &Text,
    earlier: &[Step],
    at: &str,
    p: &mut Problems,
) {
    let mut read = templates.nested_variables(text);
    read.sort();
    for v in read {
        let mut parts = v.split('.');
        if parts.next() != Some("steps") {
            continue;
        }
        let Some(step) = parts.next() else { continue };
        let Some(found) = earlier.iter().find(|s| s.name == step) else {
            let hint = did_you_mean(step, earlier.iter().map(|s| s.name.as_str()));
            let message = format!("`steps.{step}` is not an earlier step of this action{hint}");
            report(p, at, &format!("steps.{step}"), "steps.".len(), message);
            continue;
        };
        let Some(output) = parts.next() else { continue };
        if !found.outputs.iter().any(|(n, _)| n == output) {
            let hint = did_you_mean(output, found.outputs.iter().map(|(n, _)| n.as_str()));
            let message = format!("step `{step}` has no output `{output}`{hint}");
            let reference = format!("steps.{step}.{output}");
            report(p, at, &reference, reference.len() - output.len(), message);
        }
    }
}

/// Reports `message` at `reference` in the string at `at` (`skip` bytes into it, at the part
/// that is unknown), or at the string when the reference is not found in it as written.
fn report(p: &mut Problems, at: &str, reference: &str, skip: usize, message: String) {
    let offset = p
        .root()
        .and_then(|r| r.find(at))
        .and_then(|n| match &n.value {
            NodeValue::Str(s) => reference_offset(s, reference),
            _ => None,
        });
    match offset {
        Some(offset) => p.at_offset(at, offset + skip, message),
        None => p.at(at, message),
    }
}
