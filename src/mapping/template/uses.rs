//! Where a template source names a filter, a test or a function, each at its byte offset.
//!
//! minijinja looks filters, tests and functions up by name only while it renders, so a misspelt
//! one compiles and fails on every event that reaches it. This scan finds the names so that
//! loading can check them against the environment (see `strict`). It reads minijinja's token
//! rules: `| name` and `{% filter name %}` apply a filter, `is name` and `is not name` a test,
//! `name(` calls a function unless the name is an attribute (`x.items()`), a filter's or a
//! test's. Text outside tags, comments, `{% raw %}` blocks and string literals are skipped.
//! Whether a called name is a function or a name the template declares (a macro) is for the
//! caller to tell, with minijinja's own `undeclared_variables`.

/// What a name is used as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Filter,
    Test,
    Function,
}

impl Kind {
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Filter => "filter",
            Kind::Test => "test",
            Kind::Function => "function",
        }
    }
}

/// One use of a name: what it is used as, the name (dotted names whole) and its byte offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Use<'a> {
    pub kind: Kind,
    pub name: &'a str,
    pub offset: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token<'a> {
    Name(&'a str, usize),
    Punct(u8),
    /// A string or number literal.
    Literal,
}

/// The filters, tests and functions `source` names, in order.
pub fn uses(source: &str) -> Vec<Use<'_>> {
    let mut out = Vec::new();
    for tag in tags(source) {
        let tokens = tokenize(source, tag.start, tag.end);
        find_in_tag(source, &tokens, tag.block, &mut out);
    }
    out
}

/// The inside of one `{{ }}` or `{% %}` tag.
struct Tag {
    start: usize,
    end: usize,
    block: bool,
}

/// The tags of a source, in order; comments and raw blocks left out.
fn tags(source: &str) -> Vec<Tag> {
    let b = source.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] != b'{' || !matches!(b[i + 1], b'{' | b'%' | b'#') {
            i += 1;
            continue;
        }
        let open = b[i + 1];
        let start = i + 2;
        if open == b'#' {
            i = find(b, start, b"#}").map_or(b.len(), |e| e + 2);
            continue;
        }
        let end = tag_end(b, start, if open == b'{' { b'}' } else { b'%' });
        let block = open == b'%';
        if block && first_word(&source[start..end]) == Some("raw") {
            i = end_of_raw(source, end);
            continue;
        }
        out.push(Tag { start, end, block });
        i = end + 2;
    }
    out
}

/// The offset of the closing `}}` or `%}` of a tag (brackets and strings inside skipped); the
/// end of the source when there is none.
fn tag_end(b: &[u8], start: usize, close: u8) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"') => i = skip_string(b, i, q),
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' => depth = depth.saturating_sub(1),
            b'}' if depth > 0 => depth -= 1,
            c if c == close && depth == 0 && b.get(i + 1) == Some(&b'}') => return i,
            _ => {}
        }
        i += 1;
    }
    b.len()
}

/// The offset of the closing quote of the string opening at `at` (the end when unclosed).
fn skip_string(b: &[u8], at: usize, quote: u8) -> usize {
    let mut i = at + 1;
    while i < b.len() && b[i] != quote {
        i += if b[i] == b'\\' { 2 } else { 1 };
    }
    i.min(b.len())
}

fn find(b: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    b.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

fn first_word(tag: &str) -> Option<&str> {
    let t = tag.trim_start_matches(['-', '+']).trim_start();
    let end = t
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(t.len());
    Some(&t[..end]).filter(|w| !w.is_empty())
}

/// Past the `{% endraw %}` that closes a raw block whose opening tag ends at `from`.
fn end_of_raw(source: &str, from: usize) -> usize {
    let b = source.as_bytes();
    let mut i = from;
    while let Some(open) = find(b, i, b"{%") {
        let end = tag_end(b, open + 2, b'%');
        if first_word(&source[open + 2..end]) == Some("endraw") {
            return end + 2;
        }
        i = open + 2;
    }
    b.len()
}

fn tokenize(source: &str, start: usize, end: usize) -> Vec<Token<'_>> {
    let b = source.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
    let mut out = Vec::new();
    let mut i = start;
    while i < end {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'\'' || c == b'"' {
            i = skip_string(b, i, c) + 1;
            out.push(Token::Literal);
        } else if c.is_ascii_digit() {
            while i < end && (word(b[i]) || b[i] == b'.') {
                i += 1;
            }
            out.push(Token::Literal);
        } else if word(c) {
            let from = i;
            while i < end && word(b[i]) {
                i += 1;
            }
            out.push(Token::Name(&source[from..i], from));
        } else {
            out.push(Token::Punct(c));
            i += 1;
        }
    }
    out
}

/// The name at token `i` with the dotted segments that follow it without spaces (`a.b`): the
/// whole name, its offset and the index of the token after it.
fn dotted<'a>(source: &'a str, tokens: &[Token<'a>], i: usize) -> Option<(&'a str, usize, usize)> {
    let Token::Name(first, at) = *tokens.get(i)? else {
        return None;
    };
    let mut end = i + 1;
    let mut stop = at + first.len();
    while let (Some(Token::Punct(b'.')), Some(Token::Name(n, o))) =
        (tokens.get(end), tokens.get(end + 1))
    {
        if *o != stop + 1 {
            break;
        }
        stop = o + n.len();
        end += 2;
    }
    Some((source.get(at..stop)?, at, end))
}

fn find_in_tag<'a>(source: &'a str, tokens: &[Token<'a>], block: bool, out: &mut Vec<Use<'a>>) {
    // Past a whitespace control sign (`{%- filter`), `{% filter name %}` filters the block.
    let mut i = tokens
        .iter()
        .position(|t| !matches!(t, Token::Punct(b'-' | b'+')))
        .unwrap_or(tokens.len());
    if block
        && matches!(tokens.get(i), Some(Token::Name("filter", _)))
        && let Some((name, offset, next)) = dotted(source, tokens, i + 1)
    {
        out.push(Use {
            kind: Kind::Filter,
            name,
            offset,
        });
        i = next;
    }
    while i < tokens.len() {
        match tokens[i] {
            Token::Punct(b'|') => {
                if let Some((name, offset, next)) = dotted(source, tokens, i + 1) {
                    out.push(Use {
                        kind: Kind::Filter,
                        name,
                        offset,
                    });
                    i = next;
                    continue;
                }
            }
            Token::Name("is", _) if !after_dot(tokens, i) => {
                let at = if matches!(tokens.get(i + 1), Some(Token::Name("not", _))) {
                    i + 2
                } else {
                    i + 1
                };
                if let Some((name, offset, next)) = dotted(source, tokens, at) {
                    out.push(Use {
                        kind: Kind::Test,
                        name,
                        offset,
                    });
                    i = next;
                    continue;
                }
            }
            Token::Name(name, offset)
                if !after_dot(tokens, i)
                    && matches!(tokens.get(i + 1), Some(Token::Punct(b'('))) =>
            {
                out.push(Use {
                    kind: Kind::Function,
                    name,
                    offset,
                });
            }
            _ => {}
        }
        i += 1;
    }
}

fn after_dot(tokens: &[Token], i: usize) -> bool {
    i > 0 && tokens[i - 1] == Token::Punct(b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(source: &str) -> Vec<(Kind, &str, usize)> {
        uses(source)
            .into_iter()
            .map(|u| (u.kind, u.name, u.offset))
            .collect()
    }

    #[test]
    fn filters_tests_and_calls_are_found_at_their_place() {
        let src = "{{ a | lower | join(', ') if b is not none else resolve('user', x=y) }}";
        assert_eq!(
            found(src),
            vec![
                (Kind::Filter, "lower", 7),
                (Kind::Filter, "join", 15),
                (Kind::Test, "none", src.find("none").unwrap_or(0)),
                (Kind::Function, "resolve", 48),
            ]
        );
        assert_eq!(
            found("{% filter upper %}x{% endfilter %}{{ a is odd }}"),
            vec![(Kind::Filter, "upper", 10), (Kind::Test, "odd", 42)]
        );
    }

    #[test]
    fn strings_comments_text_attributes_and_raw_blocks_are_skipped() {
        let src = "a | b is c() {# {{ x | y }} #}{{ '| s is t f(' ~ m.items() ~ \"|q\" }}\
                   {% raw %}{{ x | nope }}{% endraw %}{{ {'k': {'j': 1}} | tojson }}";
        assert_eq!(found(src), vec![(Kind::Filter, "tojson", src.len() - 9)]);
    }

    #[test]
    fn dotted_names_are_whole() {
        assert_eq!(found("{{ a | x.y }}"), vec![(Kind::Filter, "x.y", 7)]);
    }
}
