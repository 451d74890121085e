//! Statements the port refuses before any engine sees them.
//!
//! `connection.query`/`execute`/`open-cursor` run on a pooled connection
//! that goes back to the pool afterwards. A guest's own `BEGIN` would send
//! it back inside a transaction: the next invocations to borrow it would
//! write into that transaction, and lose their writes when it ends. Inside
//! a port transaction, a guest's own `COMMIT` would end it behind the
//! port's back. So transaction control goes through the port's `begin`,
//! `commit` and `rollback` only, on every engine alike.

use super::SqlError;

/// Leading keywords of transaction-control statements (Postgres, MySQL,
/// SQLite). `PREPARE` counts only as `PREPARE TRANSACTION` (two-phase
/// commit); `PREPARE name AS …` is an ordinary prepared statement.
const TRANSACTION_CONTROL: &[&str] = &[
    "BEGIN",
    "START",
    "COMMIT",
    "END",
    "ROLLBACK",
    "ABORT",
    "SAVEPOINT",
    "RELEASE",
    "XA",
];

/// Refuses a transaction-control statement (`BEGIN`, `COMMIT`, `SET
/// autocommit`…), whatever comments and spacing come first.
pub fn refuse_transaction_control(statement: &str) -> Result<(), SqlError> {
    let mut words = keywords(statement);
    let first = words.next().unwrap_or_default();
    let mut second = words.next().unwrap_or_default();
    let is = |word: &str, keyword: &str| word.eq_ignore_ascii_case(keyword);
    if is(first, "SET") && ["SESSION", "GLOBAL", "LOCAL"].iter().any(|k| is(second, k)) {
        second = words.next().unwrap_or_default();
    }
    let refused = TRANSACTION_CONTROL.iter().any(|k| is(first, k))
        || (is(first, "PREPARE") && is(second, "TRANSACTION"))
        || (is(first, "SET") && is(second, "AUTOCOMMIT"));
    if refused {
        return Err(SqlError::Denied(format!(
            "`{}` is transaction control: use the port's begin, commit and rollback",
            first.to_ascii_uppercase()
        )));
    }
    Ok(())
}

/// The statement's words from its start, skipping whitespace, comments
/// (`-- …`, `/* … */`, nested as Postgres allows) and MySQL's `@@` and `.`
/// (`@@session.autocommit`); a word is a run of letters, digits and `_`.
fn keywords(statement: &str) -> impl Iterator<Item = &str> {
    let mut rest = statement;
    std::iter::from_fn(move || {
        rest = skip_blank(rest).trim_start_matches(['@', '.']);
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let word = &rest[..end];
        rest = &rest[end..];
        (!word.is_empty()).then_some(word)
    })
}

/// `rest` without leading whitespace and comments.
fn skip_blank(mut rest: &str) -> &str {
    loop {
        let trimmed = rest.trim_start();
        if let Some(line) = trimmed.strip_prefix("--") {
            rest = line.find('\n').map_or("", |i| &line[i + 1..]);
        } else if trimmed.starts_with("/*") {
            rest = after_block_comment(trimmed);
        } else {
            return trimmed;
        }
    }
}

/// What follows the block comment `text` starts with (nested comments
/// included); empty when it is not closed.
fn after_block_comment(text: &str) -> &str {
    let bytes = text.as_bytes();
    let (mut depth, mut i) = (0usize, 0);
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return &text[i..];
                }
            }
            _ => i += 1,
        }
    }
    ""
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_control_is_refused_in_any_spelling() {
        for statement in [
            "BEGIN",
            "begin transaction",
            "  \n\tBEGIN;",
            "-- note\nBEGIN",
            "/* a /* nested */ comment */ commit",
            "START TRANSACTION",
            "END",
            "ROLLBACK TO SAVEPOINT a",
            "abort",
            "SAVEPOINT a",
            "RELEASE SAVEPOINT a",
            "PREPARE TRANSACTION 'x'",
            "COMMIT PREPARED 'x'",
            "XA START 'x'",
            "SET autocommit = 0",
            "set session autocommit=0",
            "SET @@autocommit = 0",
            "SET @@session.autocommit = 0",
        ] {
            let refused = refuse_transaction_control(statement);
            assert!(
                matches!(&refused, Err(SqlError::Denied(m)) if m.contains("transaction control")),
                "{statement}: {refused:?}"
            );
        }
    }

    #[test]
    fn ordinary_statements_pass() {
        for statement in [
            "SELECT 1",
            "INSERT INTO beginnings VALUES (1)",
            "UPDATE t SET ended = true",
            "beginning",
            "PREPARE q AS SELECT 1",
            "SET search_path = a",
            "SET statement_timeout = 0",
            "-- BEGIN\nSELECT 1",
            "/* COMMIT */ SELECT 1",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "",
            "/* unterminated",
        ] {
            assert_eq!(refuse_transaction_control(statement), Ok(()), "{statement}");
        }
    }
}
