//! Config problems with their place: `file:line:col: message`.
//!
//! Every stage that compiles part of a mapping (fields, steps, outcomes, resolvers, schema
//! checks) reports into a file's [`Problems`], located through its YAML tree; loading collects
//! them into [`Diagnostics`] rather than stopping at the first, so `zdmap validate` can report
//! them all at once, as text, JSON, GitHub annotations or miette's rendered snippets. This
//! module sits below all of them, so stages import it and never each other upward.

use crate::mapping::yaml::{Loc, Node};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One problem in one config file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub severity: Severity,
    pub message: String,
}

/// An error keeps the mappings from loading; a warning is shown and loading goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
}

impl Diagnostic {
    pub fn new(file: &Path, loc: Loc, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: file.to_path_buf(),
            line: loc.line,
            column: loc.column,
            severity: Severity::Error,
            message: message.into(),
        }
    }

    /// The same problem as a warning.
    pub fn warning(self) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..self
        }
    }

    pub(crate) fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let warning = if self.is_error() { "" } else { "warning: " };
        if self.line == 0 {
            // Not in a file's text (a directory, a `--set`): no line or column to give.
            return write!(f, "{}: {warning}{}", self.file.display(), self.message);
        }
        write!(
            f,
            "{}:{}:{}: {warning}{}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Problems found in one file, located through its YAML tree.
#[derive(Debug)]
pub struct Problems {
    file: PathBuf,
    root: Option<Arc<Node>>,
    found: Vec<Diagnostic>,
}

impl Problems {
    pub fn new(file: &Path, root: Option<Arc<Node>>) -> Problems {
        Problems {
            file: file.to_path_buf(),
            root,
            found: Vec::new(),
        }
    }

    /// Problems not tied to a file (unit tests).
    #[cfg(test)]
    pub(crate) fn detached() -> Problems {
        Problems::new(Path::new("-"), None)
    }

    fn loc(&self, pointer: &str, key: bool) -> Loc {
        self.root
            .as_ref()
            .map(|r| r.locate(pointer, key))
            .unwrap_or_default()
    }

    /// A problem with the value at a JSON pointer.
    pub fn at(&mut self, pointer: &str, message: impl Into<String>) {
        let loc = self.loc(pointer, false);
        self.found.push(Diagnostic::new(&self.file, loc, message));
    }

    /// A problem with the key at a JSON pointer.
    pub(crate) fn at_key(&mut self, pointer: &str, message: impl Into<String>) {
        let loc = self.loc(pointer, true);
        self.found.push(Diagnostic::new(&self.file, loc, message));
    }

    /// A problem at a place inside the string at a JSON pointer, `offset` bytes into it: the
    /// column is exact for strings written on one line, plain or quoted; a block scalar
    /// (`>-`, `|`) is located at its start.
    pub(crate) fn at_offset(&mut self, pointer: &str, offset: usize, message: impl Into<String>) {
        let d = Diagnostic::new(&self.file, self.place(pointer, offset), message);
        self.found.push(d);
    }

    /// A warning about the value at a JSON pointer.
    pub(crate) fn warn_at(&mut self, pointer: &str, message: impl Into<String>) {
        let loc = self.loc(pointer, false);
        self.found
            .push(Diagnostic::new(&self.file, loc, message).warning());
    }

    /// A warning at a place inside the string at a JSON pointer, as [`Problems::at_offset`].
    pub(crate) fn warn_at_offset(
        &mut self,
        pointer: &str,
        offset: usize,
        message: impl Into<String>,
    ) {
        let d = Diagnostic::new(&self.file, self.place(pointer, offset), message);
        self.found.push(d.warning());
    }

    fn place(&self, pointer: &str, offset: usize) -> Loc {
        let loc = self.loc(pointer, false);
        self.place_in_string(pointer, loc, offset).unwrap_or(loc)
    }

    /// The line and column of `offset` bytes into the string at `pointer`, which starts at
    /// `loc`. A quoted string is taken as written on one line; a plain or block string is
    /// followed over the lines it is folded from, as long as its text matches them (otherwise
    /// `None`: the string's start is the place).
    fn place_in_string(&self, pointer: &str, loc: Loc, offset: usize) -> Option<Loc> {
        let crate::mapping::yaml::NodeValue::Str(text) = &self.root.as_ref()?.find(pointer)?.value
        else {
            return None;
        };
        let mut rest = text.get(..offset)?;
        let source = std::fs::read_to_string(&self.file).ok()?;
        let mut lines = source.lines().skip(loc.line.checked_sub(1)?);
        let first = lines.next()?;
        let start = first.char_indices().nth(loc.column.checked_sub(1)?)?.0;
        let mut content = &first[start..];
        match content.chars().next()? {
            '"' | '\'' if !rest.contains('\n') => {
                return Some(Loc {
                    column: loc.column + 1 + rest.chars().count(),
                    ..loc
                });
            }
            '"' | '\'' | '|' | '>' => return None,
            _ => {}
        }
        let (mut line, mut column) = (loc.line, loc.column);
        loop {
            content = content.trim_end();
            if rest.len() <= content.len() {
                return content.starts_with(rest).then(|| Loc {
                    line,
                    column: column + rest.chars().count(),
                });
            }
            rest = rest.strip_prefix(content)?.strip_prefix([' ', '\n'])?;
            let next = lines.next()?;
            content = next.trim_start();
            line += 1;
            column = next[..next.len() - content.len()].chars().count() + 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    pub fn len(&self) -> usize {
        self.found.len()
    }

    /// The YAML tree of the file, when it parsed.
    pub fn root(&self) -> Option<&Arc<Node>> {
        self.root.as_ref()
    }

    /// The problems found, in order.
    pub(crate) fn into_found(self) -> Vec<Diagnostic> {
        self.found
    }
}

/// Every problem found while loading a mappings directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl std::error::Error for Diagnostics {}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// How `zdmap validate` prints problems.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// `file:line:col: message`, one per line.
    #[default]
    Text,
    /// One JSON object per problem, in a JSON array.
    Json,
    /// GitHub Actions annotations: `::error file=…,line=…,col=…::message`.
    Github,
    /// Rendered snippets of the files, with the place marked.
    Pretty,
}

impl Diagnostics {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether any problem is an error (warnings alone do not keep mappings from loading).
    pub(crate) fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }

    /// How many are errors and how many warnings.
    pub fn counts(&self) -> (usize, usize) {
        let errors = self.0.iter().filter(|d| d.is_error()).count();
        (errors, self.0.len() - errors)
    }

    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    /// Renders all problems in the given format (no trailing newline for text formats).
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Text => self.to_string(),
            Format::Json => serde_json::to_string_pretty(&self.0).unwrap_or_else(|_| "[]".into()),
            Format::Github => self
                .0
                .iter()
                .map(|d| {
                    format!(
                        "::{} file={},line={},col={}::{}",
                        if d.is_error() { "error" } else { "warning" },
                        d.file.display(),
                        d.line,
                        d.column,
                        github_escape(&d.message)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Format::Pretty => self
                .0
                .iter()
                .map(render_pretty)
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

fn github_escape(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// A miette report of one problem, with the source line marked (its header names the file,
/// line and column, so the problem is said once); the text form when the line cannot be shown.
fn render_pretty(d: &Diagnostic) -> String {
    #[derive(Debug, thiserror::Error, miette::Diagnostic)]
    #[error("{message}")]
    struct Report {
        message: String,
        #[source_code]
        src: miette::NamedSource<String>,
        #[label("here")]
        at: Option<miette::SourceSpan>,
    }
    let source = std::fs::read_to_string(&d.file).unwrap_or_default();
    let offset = offset_of(&source, d.line, d.column);
    let warning = if d.is_error() { "" } else { "warning: " };
    let report = Report {
        message: format!("{warning}{}", d.message),
        src: miette::NamedSource::new(d.file.display().to_string(), source),
        at: offset.map(|o| miette::SourceSpan::new(o.into(), 1)),
    };
    let mut out = String::new();
    let handler =
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor());
    if offset.is_none() || handler.render_report(&mut out, &report).is_err() {
        return d.to_string();
    }
    out
}

fn offset_of(source: &str, line: usize, column: usize) -> Option<usize> {
    if line == 0 {
        return None;
    }
    let mut offset = 0;
    for (i, l) in source.split_inclusive('\n').enumerate() {
        if i + 1 == line {
            let col = l
                .char_indices()
                .nth(column.saturating_sub(1))
                .map_or(0, |(b, _)| b);
            return Some(offset + col.min(l.trim_end_matches('\n').len()));
        }
        offset += l.len();
    }
    None
}

/// The byte offset of a 1-based column (in characters) of `text`, as parsers report places; the
/// end of `text` past its last character.
pub(crate) fn byte_offset(text: &str, column: usize) -> usize {
    text.char_indices()
        .nth(column.saturating_sub(1))
        .map_or(text.len(), |(b, _)| b)
}

/// The closest of `candidates` to `word`, if it is close enough to be a likely typo.
pub(crate) fn suggest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1) + 1)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `; did you mean `x`?` when one of `candidates` is close to `word`, else nothing: the end of a
/// message about an unknown name.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> String {
    suggest(word, candidates)
        .map(|h| format!("; did you mean `{h}`?"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_find_typos_only() {
        assert_eq!(
            suggest("requried", ["required", "default", "path"]),
            Some("required")
        );
        assert_eq!(suggest("trigger", ["trigger"]), Some("trigger"));
        assert_eq!(suggest("zzzzzz", ["path", "template"]), None);
    }

    #[test]
    fn formats() {
        let ds = Diagnostics(vec![Diagnostic::new(
            Path::new("mappings/a.yaml"),
            Loc { line: 3, column: 7 },
            "bad\nthing",
        )]);
        assert_eq!(ds.render(Format::Text), "mappings/a.yaml:3:7: bad\nthing");
        assert_eq!(
            ds.render(Format::Github),
            "::error file=mappings/a.yaml,line=3,col=7::bad%0Athing"
        );
        assert!(ds.render(Format::Json).contains("\"line\": 3"));
    }
}
