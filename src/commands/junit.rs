//! The results of `zdmap test` as JUnit XML, for CI systems that show test reports: one
//! `testsuite`, one `testcase` per case (`classname` its file's name, `name` the case's), and a
//! `failure` in each case that failed, with its first failure as the `message` and all of them
//! as the text. Everything written is escaped, and characters that XML 1.0 cannot carry at all
//! (control characters) are written as `\u{..}`, so any failure message gives a valid document.

use crate::mapping::cases::Report;
use std::fmt::Write as _;

/// The report as a JUnit XML document named `suite`.
pub fn render(suite: &str, report: &Report) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"0\">",
        attribute(suite),
        report.results.len(),
        report.failed()
    );
    for r in &report.results {
        let file = r
            .file
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        let _ = write!(
            out,
            "  <testcase classname=\"{}\" name=\"{}\" file=\"{}\" line=\"{}\"",
            attribute(&file),
            attribute(&r.name),
            attribute(&r.file.display().to_string()),
            r.line
        );
        match r.failures.first() {
            None => out.push_str("/>\n"),
            Some(first) => {
                let _ = writeln!(
                    out,
                    ">\n    <failure message=\"{}\" type=\"mismatch\">{}</failure>\n  </testcase>",
                    attribute(first),
                    text(&r.failures.join("\n"))
                );
            }
        }
    }
    out.push_str("</testsuite>\n");
    out
}

/// `s` as the text of an element.
fn text(s: &str) -> String {
    escape(s, false)
}

/// `s` as an attribute's value (in double quotes): line breaks and tabs kept as references, since
/// a parser turns them into spaces otherwise.
fn attribute(s: &str) -> String {
    escape(s, true)
}

fn escape(s: &str, in_attribute: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if in_attribute => out.push_str("&quot;"),
            '\'' if in_attribute => out.push_str("&apos;"),
            '\n' if in_attribute => out.push_str("&#10;"),
            '\t' if in_attribute => out.push_str("&#9;"),
            '\r' => out.push_str("&#13;"),
            '\n' | '\t' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::cases::CaseResult;
    use std::path::PathBuf;

    #[test]
    fn cases_and_failures_are_written_escaped() {
        let report = Report {
            results: vec![
                CaseResult {
                    file: PathBuf::from("mappings/tests/a.yaml"),
                    line: 3,
                    name: "passes".into(),
                    failures: Vec::new(),
                },
                CaseResult {
                    file: PathBuf::from("mappings/tests/a.yaml"),
                    line: 9,
                    name: "<b> & \"c\"".into(),
                    failures: vec!["x < y\nand 'z'\u{1b}".into(), "\r".into()],
                },
            ],
        };
        let xml = render("zdmap", &report);
        assert!(
            xml.contains("<testsuite name=\"zdmap\" tests=\"2\" failures=\"1\""),
            "{xml}"
        );
        assert!(xml.contains("<testcase classname=\"a.yaml\" name=\"passes\""));
        assert!(
            xml.contains("name=\"&lt;b&gt; &amp; &quot;c&quot;\""),
            "{xml}"
        );
        assert!(
            xml.contains("message=\"x &lt; y&#10;and &apos;z&apos;\\u{1b}\""),
            "{xml}"
        );
        assert!(
            xml.contains(">x &lt; y\nand 'z'\\u{1b}\n&#13;</failure>"),
            "{xml}"
        );
    }
}
