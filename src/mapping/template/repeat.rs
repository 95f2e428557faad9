//! Refusing list literals that are repeated (`[0] * 6006`) in template sources.
//!
//! minijinja folds constant expressions while it compiles, and bounds what folding builds,
//! except lists repeated by `*`: those are lazy, so `[0] * 6006 * 7731 ~ ''` folds into a
//! 46-million-item string at load time (found by fuzzing template compilation). Mappings have
//! no use for repeating a list literal, so such a source is refused before minijinja sees it.

/// The byte offset of a `*` that repeats a list literal (`[..] * n`, `n * [..]`, also
/// parenthesized: `([..]) * n`), if there is one. String literals are skipped.
pub(crate) fn repeated_list_literal(source: &str) -> Option<usize> {
    let bytes = source.as_bytes();
    let (partner, stars) = scan(bytes);
    stars.into_iter().find(|&i| {
        let left = bytes[..i].iter().rposition(|c| !c.is_ascii_whitespace());
        let right = (i + 1..bytes.len()).find(|&j| !bytes[j].is_ascii_whitespace());
        let lists = |at: Option<usize>, closing: bool| {
            at.is_some_and(|at| is_list_literal(bytes, &partner, at, closing))
        };
        lists(left, true) || lists(right, false)
    })
}

/// Outside string literals: the matching bracket of each `[`/`(` and `]`/`)` (`usize::MAX` when
/// it has none), and the offsets of each `*` that is not part of `**`.
fn scan(bytes: &[u8]) -> (Vec<usize>, Vec<usize>) {
    let mut partner = vec![usize::MAX; bytes.len()];
    let mut stars = Vec::new();
    let mut open: Vec<usize> = Vec::new();
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(_) if b == b'\\' => i += 1,
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None => match b {
                b'\'' | b'"' => quote = Some(b),
                b'[' | b'(' => open.push(i),
                b']' | b')' => {
                    if let Some(o) = open.pop() {
                        partner[o] = i;
                        partner[i] = o;
                    }
                }
                b'*' if bytes.get(i + 1) != Some(&b'*') && (i == 0 || bytes[i - 1] != b'*') => {
                    stars.push(i);
                }
                _ => {}
            },
        }
        i += 1;
    }
    (partner, stars)
}

/// Whether the bracket at `at` (a closing one when `closing`, else an opening one) delimits a
/// list literal, possibly in parentheses. A `[` right after a name, `)` or `]` is a subscript,
/// not a list.
fn is_list_literal(bytes: &[u8], partner: &[usize], at: usize, closing: bool) -> bool {
    let expected: &[u8] = if closing { b"])" } else { b"[(" };
    if !expected.contains(&bytes[at]) || partner[at] == usize::MAX {
        return false;
    }
    let (start, end) = (at.min(partner[at]), at.max(partner[at]));
    match bytes[start] {
        b'[' => !is_subscript(bytes, start),
        _ => {
            let inner = (start + 1..end).find(|&j| !bytes[j].is_ascii_whitespace());
            let last = (start + 1..end)
                .rev()
                .find(|&j| !bytes[j].is_ascii_whitespace());
            match (inner, last) {
                (Some(a), Some(b)) if bytes[a] == b'[' || bytes[a] == b'(' => {
                    partner[a] == b && is_list_literal(bytes, partner, a, false)
                }
                _ => false,
            }
        }
    }
}

/// Whether the `[` at `at` follows a value (`x[0]`, `f()[0]`, `a[0][1]`), not an operator or
/// a keyword (`if [0]`).
fn is_subscript(bytes: &[u8], at: usize) -> bool {
    const KEYWORDS: [&str; 9] = ["and", "or", "not", "in", "is", "if", "else", "elif", "for"];
    let Some(end) = bytes[..at].iter().rposition(|c| !c.is_ascii_whitespace()) else {
        return false;
    };
    let word = |c: &u8| c.is_ascii_alphanumeric() || *c == b'_';
    match bytes[end] {
        b')' | b']' => true,
        c if word(&c) => {
            let start = bytes[..end]
                .iter()
                .rposition(|c| !word(c))
                .map_or(0, |i| i + 1);
            let name = &bytes[start..=end];
            !KEYWORDS.iter().any(|k| k.as_bytes() == name)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_list_literals_are_found() {
        for (source, at) in [
            ("{{ [0] * 6006 * 7731 ~ '' }}", 7),
            ("{{ 3 * [1, 2] }}", 5),
            ("{{ ([0]) * 9 }}", 9),
            ("{{ 'x' if [0]*9 else 'y' }}", 13),
        ] {
            assert_eq!(repeated_list_literal(source), Some(at), "{source}");
        }
        for source in [
            "{{ x[0] * 2 }}",
            "{{ (a + b) * 2 }}",
            "{{ 2 ** 8 }}",
            "{{ '[0] * 9' }}",
            "{{ items[1:] }}",
            "{{ f(x)[0] * 3 }}",
            "{{ ([0], 1) * 9 }}",
        ] {
            assert_eq!(repeated_list_literal(source), None, "{source}");
        }
    }
}
