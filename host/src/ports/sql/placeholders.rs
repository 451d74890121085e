//! Placeholder rewriting for Postgres: guests may write portable `?`
//! placeholders; Postgres wants `$1`, `$2`, ….

use std::fmt::Write as _;

/// The bytes at which [`rewrite_placeholders`] must look closer.
const SPECIAL: &[u8] = b"'\"-/$?";

/// Rewrites `?` placeholders to `$1`, `$2`, … outside string literals,
/// quoted identifiers, dollar-quoted bodies and comments. A statement that
/// already uses `$n` placeholders is left alone.
///
/// Runs every query a guest sends to Postgres, so text between the bytes
/// that matter is copied a run at a time rather than a character at a time.
pub fn rewrite_placeholders(sql: &str) -> String {
    let b = sql.as_bytes();
    if b.windows(2).any(|w| w[0] == b'$' && w[1].is_ascii_digit()) {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let (mut i, mut n) = (0, 0);
    while i < b.len() {
        let c = b[i];
        let end = match c {
            b'\'' | b'"' => skip_quoted(b, i, c),
            b'-' if b.get(i + 1) == Some(&b'-') => b[i..]
                .iter()
                .position(|&x| x == b'\n')
                .map_or(b.len(), |p| i + p),
            b'/' if b.get(i + 1) == Some(&b'*') => {
                sql[i + 2..].find("*/").map_or(b.len(), |p| i + 2 + p + 2)
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
    out
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

fn skip_dollar_quoted(sql: &str, start: usize) -> usize {
    let rest = &sql[start + 1..];
    let tag_len = rest
        .find('$')
        .filter(|&p| rest[..p].chars().all(|c| c.is_alphanumeric() || c == '_'));
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
}
