//! Text from outside (events, Zendesk's answers) as a terminal or a log line may show it.
//!
//! A newline in an event's email would start a new log line whose time and level the sender
//! chose; an escape sequence would drive the reader's terminal; a bidi override would show a
//! line in another order than it is read. [`escape_controls`] writes each such character as an
//! escape (`\n`, `\u{1b}`), so one record stays one line and shows what it holds.

use std::borrow::Cow;

/// Whether `c` must not reach a terminal or a log line as it is.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `text` with its control characters and bidi controls escaped; unchanged (and not copied)
/// when it has none.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_bidi_characters_are_escaped_and_plain_text_is_not_copied() {
        assert!(matches!(
            escape_controls("ada@example.com"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            escape_controls("a\nb\r\tc\u{1b}[31m\u{0}\u{202e}d é"),
            "a\\nb\\r\\tc\\u{1b}[31m\\u{0}\\u{202e}d é"
        );
    }
}
