//! Placeholder rewriting for Postgres: guests may write portable `?`
//! placeholders; Postgres wants `$1`, `$2`, ….

use std::fmt::Write as _;

/// The bytes at which [`rewrite_placeholders`] must look closer.
const SPECIAL: &[u8] = b"'\"-/$?";

/// Rewrites `?` placeholders to `$1`, `$2`, … outside string literals,
/// quoted identifiers, dollar-quoted bodies and comments. A statement that
/// already uses `$n` placeholders (outside those too) is left alone.
///
/// Runs every query a guest sends to Postgres, so text between the bytes
/// that matter is copied a run at a time rather than a character at a time.
pub fn rewrite_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    rewrite_placeholders_into(&mut out, sql);
    out
}

/// [`rewrite_placeholders`] appending to `out`, so a caller can put a
/// prefix in the same buffer. Only what this call appends is undone when
/// the statement turns out to use `$n` placeholders.
pub(super) fn rewrite_placeholders_into(out: &mut String, sql: &str) {
    let b = sql.as_bytes();
    let start = out.len();
    let (mut i, mut n) = (0, 0);
    while i < b.len() {
        let c = b[i];
        let end = match c {
            b'\'' if is_escape_string(b, i) => skip_escape_string(b, i),
            b'\'' | b'"' => skip_quoted(b, i, c),
            // Postgres ends a line comment at `\r` as at `\n`.
            b'-' if b.get(i + 1) == Some(&b'-') => b[i..]
                .iter()
                .position(|&x| matches!(x, b'\n' | b'\r'))
                .map_or(b.len(), |p| i + p),
            b'/' if b.get(i + 1) == Some(&b'*') => skip_block_comment(b, i),
            // A `$` inside an identifier (`a$1`, `a$b$`) is part of it.
            b'$' if i > 0 && is_ident_byte(b[i - 1]) => i + 1,
            b'$' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                // Already positional: keep the statement as written.
                out.truncate(start);
                out.push_str(sql);
                return;
            }
            b'$' => skip_dollar_quoted(sql, i),
            b'?' => {
                n += 1;
                // Writing to a String cannot fail.
                let _ = write!(out, "${n}");
                i += 1;
                continue;
            }
            // Up to the next byte that may start one of the cases above
            // (a lone `-` or `/` does not, so it starts a run here). Those
            // bytes are ASCII, so a run always ends on a character boundary.
            _ => b[i + 1..]
                .iter()
                .position(|x| SPECIAL.contains(x))
                .map_or(b.len(), |p| i + 1 + p),
        };
        out.push_str(&sql[i..end]);
        i = end;
    }
}

/// Whether `b` may continue an identifier (Postgres allows `$` after the
/// first character, and any non-ASCII letter).
fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Whether the `'` at `i` opens an escape string (`E'…'` or `e'…'`, the
/// `E` not ending a longer word such as `date'…'`).
fn is_escape_string(b: &[u8], i: usize) -> bool {
    i > 0 && matches!(b[i - 1], b'E' | b'e') && (i < 2 || !is_ident_byte(b[i - 2]))
}

fn skip_quoted(b: &[u8], start: usize, quote: u8) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

/// The end of an escape string: a backslash escapes the next byte (a
/// quote too), and `''` is a quote as in any literal. Skipping a byte after
/// a backslash may land inside a multi-byte character, but only ASCII bytes
/// are compared and the returned end follows a quote.
fn skip_escape_string(b: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// The end of the block comment opening at `start`: Postgres nests them,
/// so `/* /* */ ? */` is one comment.
fn skip_block_comment(b: &[u8], start: usize) -> usize {
    let (mut i, mut depth) = (start + 2, 1usize);
    while let Some(p) = b[i..].iter().position(|&x| x == b'*' || x == b'/') {
        i += p;
        match (b[i], b.get(i + 1)) {
            (b'*', Some(b'/')) => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            (b'/', Some(b'*')) => {
                depth += 1;
                i += 2;
            }
            _ => i += 1,
        }
    }
    b.len()
}

fn skip_dollar_quoted(sql: &str, start: usize) -> usize {
    let rest = &sql[start + 1..];
    let tag_len = rest
        .find('$')
        // As Postgres reads a tag: ASCII letters, digits, `_` and any
        // character past ASCII.
        .filter(|&p| {
            rest[..p]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || !c.is_ascii())
        });
    match tag_len {
        Some(p) => {
            let tag = &sql[start..start + p + 2];
            sql[start + tag.len()..]
                .find(tag)
                .map_or(sql.len(), |q| start + tag.len() + q + tag.len())
        }
        None => start + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::rewrite_placeholders as r;

    #[test]
    fn placeholders_outside_literals_and_comments() {
        assert_eq!(r("SELECT ?, ?"), "SELECT $1, $2");
        assert_eq!(
            r("SELECT '?', \"a?\", ? -- ?\n, ?"),
            "SELECT '?', \"a?\", $1 -- ?\n, $2"
        );
        assert_eq!(
            r("SELECT 'it''s ?', ? /* ? */"),
            "SELECT 'it''s ?', $1 /* ? */"
        );
        assert_eq!(
            r("SELECT $$ ? $$, $tag$ ? $tag$, ?"),
            "SELECT $$ ? $$, $tag$ ? $tag$, $1"
        );
        assert_eq!(r("SELECT $1, ?"), "SELECT $1, ?");
        assert_eq!(r("SELECT 'é', ?"), "SELECT 'é', $1");
        assert_eq!(
            r("SELECT a-b, c/d, ünï ?-? FROM t WHERE x = ? -- é ?"),
            "SELECT a-b, c/d, ünï $1-$2 FROM t WHERE x = $3 -- é ?"
        );
        assert_eq!(r("?"), "$1");
        assert_eq!(r(""), "");
        assert_eq!(r("SELECT 1 -"), "SELECT 1 -");
    }

    #[test]
    fn backslash_escapes_only_in_escape_strings() {
        assert_eq!(r("SELECT E'it\\'s ?', ?"), "SELECT E'it\\'s ?', $1");
        assert_eq!(r("SELECT e'a\\\\', ?"), "SELECT e'a\\\\', $1");
        assert_eq!(r("SELECT E'a''?', ?"), "SELECT E'a''?', $1");
        // A standard literal ends at its quote, backslash or not.
        assert_eq!(r("SELECT 'a\\', ?"), "SELECT 'a\\', $1");
        // `date'…'` is not an escape string.
        assert_eq!(r("SELECT date'\\', ?"), "SELECT date'\\', $1");
        assert_eq!(r("SELECT E'\\"), "SELECT E'\\");
    }

    #[test]
    fn comments_and_dollar_tags_end_where_postgres_ends_them() {
        assert_eq!(r("SELECT ? --c\r, ?"), "SELECT $1 --c\r, $2");
        assert_eq!(r("SELECT $€$ ? $€$, ?"), "SELECT $€$ ? $€$, $1");
        assert_eq!(r("SELECT $é1$ ? $é1$, ?"), "SELECT $é1$ ? $é1$, $1");
    }

    #[test]
    fn block_comments_nest() {
        assert_eq!(r("SELECT /* /* */ ? */ ?"), "SELECT /* /* */ ? */ $1");
        assert_eq!(
            r("SELECT /* a /* b /* c */ ? */ ? */ ?, ?"),
            "SELECT /* a /* b /* c */ ? */ ? */ $1, $2"
        );
        assert_eq!(r("SELECT /*/ ? */ ?"), "SELECT /*/ ? */ $1");
        assert_eq!(r("SELECT /* /* */ ?"), "SELECT /* /* */ ?");
        assert_eq!(r("SELECT a/b/*c*/, ?"), "SELECT a/b/*c*/, $1");
    }

    #[test]
    fn positional_placeholders_only_count_outside_literals() {
        assert_eq!(r("SELECT '$5', ?"), "SELECT '$5', $1");
        assert_eq!(r("SELECT \"$1\", ?"), "SELECT \"$1\", $1");
        assert_eq!(r("SELECT ? -- $1\n"), "SELECT $1 -- $1\n");
        assert_eq!(r("SELECT /* $2 */ ?"), "SELECT /* $2 */ $1");
        assert_eq!(r("SELECT $$ $1 $$, ?"), "SELECT $$ $1 $$, $1");
        assert_eq!(r("SELECT E'\\'$1', ?"), "SELECT E'\\'$1', $1");
        // `$` inside an identifier is neither a placeholder nor a quote.
        assert_eq!(r("SELECT a$1, ?"), "SELECT a$1, $1");
        assert_eq!(
            r("SELECT a$b$ FROM t WHERE x = ?"),
            "SELECT a$b$ FROM t WHERE x = $1"
        );
        // Real positional placeholders, before or after a `?`.
        assert_eq!(r("SELECT ?, $1"), "SELECT ?, $1");
        assert_eq!(r("SELECT '?', $2, ?"), "SELECT '?', $2, ?");
    }

    #[test]
    fn appends_after_a_prefix() {
        let mut out = String::from("/*p*/ ");
        super::rewrite_placeholders_into(&mut out, "SELECT ?, '?'");
        assert_eq!(out, "/*p*/ SELECT $1, '?'");
        let mut out = String::from("/*p*/ ");
        super::rewrite_placeholders_into(&mut out, "SELECT ?, $1");
        assert_eq!(out, "/*p*/ SELECT ?, $1");
    }
}
