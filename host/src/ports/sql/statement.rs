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

/// Which server's rules [`changes_session`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// MySQL and MariaDB.
    Mysql,
}

/// Whether `statement` may leave state on its server session that would
/// outlast it: a setting (`SET`, `RESET`, `set_config(…)`; not `SET LOCAL`
/// or `SET TRANSACTION`), a session-level lock, a `LISTEN`, a temporary
/// table, a prepared statement or held cursor, a `DISCARD` or `DEALLOCATE`
/// of the driver's own statements, and on MySQL user variables and the
/// default database (`USE`).
///
/// Pooled connections serve the app's later calls at random, so the
/// adapters never pool such a session as it is: they reset it or close it.
/// This reads the statement's text, so code it calls (a function that sets
/// something) is not seen; that stays within the app's own pool.
pub fn changes_session(statement: &str, dialect: Dialect) -> bool {
    let words: Vec<&str> = keywords(statement).take(4).collect();
    let word = |i: usize| words.get(i).copied().unwrap_or_default();
    let (first, second) = (word(0), word(1));
    let is = |word: &str, keyword: &str| word.eq_ignore_ascii_case(keyword);
    let any = |word: &str, keywords: &[&str]| keywords.iter().any(|k| is(word, k));
    // `CREATE [OR REPLACE] [GLOBAL | LOCAL] TEMP[ORARY] …`
    let temporary =
        is(first, "CREATE") && words.iter().skip(1).any(|w| any(w, &["TEMP", "TEMPORARY"]));
    let holds = |phrase: &str| holds_phrase(statement, phrase);
    match dialect {
        Dialect::Postgres => {
            (is(first, "SET") && !any(second, &["LOCAL", "TRANSACTION", "CONSTRAINTS"]))
                || any(
                    first,
                    &[
                        "RESET",
                        "DO",
                        "LISTEN",
                        "PREPARE",
                        "DECLARE",
                        "LOAD",
                        "DISCARD",
                        "DEALLOCATE",
                    ],
                )
                || temporary
                || holds("into temp")
                || holds("set_config")
                || holds("advisory_lock")
        }
        // `SET TRANSACTION` without a scope sets the session's next
        // transaction, which would be another call's.
        Dialect::Mysql => {
            (is(first, "SET") && !is(second, "STATEMENT"))
                || any(first, &["USE", "PREPARE", "LOCK", "HANDLER", "DEALLOCATE"])
                || temporary
                || holds(":=")
                || holds("into @")
                || (is(first, "CALL") && holds("@"))
                || holds("get_lock")
        }
    }
}

/// Whether `text` holds `phrase` (lower case, words one space apart)
/// anywhere, in any case and with any run of whitespace between its words.
/// Without allocating: it runs on every statement.
fn holds_phrase(text: &str, phrase: &str) -> bool {
    let (text, phrase) = (text.as_bytes(), phrase.as_bytes());
    let matches_at = |start: usize| {
        let (mut i, mut j) = (start, 0);
        while j < phrase.len() {
            match (text.get(i), phrase[j]) {
                (Some(c), b' ') if c.is_ascii_whitespace() => {
                    while text.get(i).is_some_and(u8::is_ascii_whitespace) {
                        i += 1;
                    }
                }
                (Some(c), p) if c.to_ascii_lowercase() == p => i += 1,
                _ => return false,
            }
            j += 1;
        }
        true
    };
    (0..text.len()).any(matches_at)
}

/// The statement's words from its start, skipping whitespace, comments
/// (`-- …`, MySQL's `# …`, `/* … */`, nested as Postgres allows) and MySQL's
/// `@@` and `.` (`@@session.autocommit`); a word is a run of letters,
/// digits and `_`. What a MySQL executable comment (`/*! … */`, `/*M! … */`)
/// holds counts as words, since the server runs it.
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

/// `rest` without leading whitespace and comments, and with the opening of
/// a MySQL executable comment skipped, its contents kept.
fn skip_blank(mut rest: &str) -> &str {
    loop {
        let trimmed = rest.trim_start();
        if let Some(line) = trimmed
            .strip_prefix("--")
            .or_else(|| trimmed.strip_prefix('#'))
        {
            rest = line.find('\n').map_or("", |i| &line[i + 1..]);
        } else if let Some(inner) = executable_comment(trimmed) {
            rest = inner;
        } else if trimmed.starts_with("/*") {
            rest = after_block_comment(trimmed);
        } else {
            return trimmed;
        }
    }
}

/// The contents of the MySQL or MariaDB executable comment `text` starts
/// with (`/*!SET …*/`, `/*!40101 SET …*/`, `/*M!100100 …*/`), after its
/// optional version number: the server runs them as statement text.
fn executable_comment(text: &str) -> Option<&str> {
    let inner = text
        .strip_prefix("/*!")
        .or_else(|| text.strip_prefix("/*M!"))?;
    Some(inner.trim_start_matches(|c: char| c.is_ascii_digit()))
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
            // MySQL runs what an executable comment holds, and reads `#`
            // as a comment to the end of the line.
            "/*!SET autocommit=0*/",
            "/*!40101 SET autocommit = 0 */",
            "/* x */ /*!COMMIT*/",
            "/*M!100100 ROLLBACK */",
            "# note\nCOMMIT",
        ] {
            let refused = refuse_transaction_control(statement);
            assert!(
                matches!(&refused, Err(SqlError::Denied(m)) if m.contains("transaction control")),
                "{statement}: {refused:?}"
            );
        }
    }

    #[test]
    fn statements_that_leave_session_state_are_recognised() {
        for statement in [
            "SET search_path = other",
            "set statement_timeout = 0",
            "/* x */ SET SESSION statement_timeout = 0",
            "SET ROLE app",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            "RESET ALL",
            "SELECT set_config('statement_timeout', '0', false)",
            "select SET_CONFIG('search_path', 'x', false)",
            "SELECT pg_advisory_lock(1)",
            "SELECT pg_try_advisory_lock_shared(1)",
            "DO $$ BEGIN PERFORM 1; END $$",
            "LISTEN channel",
            "PREPARE q AS SELECT 1",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "DISCARD ALL",
            "DEALLOCATE ALL",
            "CREATE TEMP TABLE t (a int)",
            "create temporary table t (a int)",
            "CREATE LOCAL TEMPORARY TABLE t (a int)",
            "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
            "SELECT * INTO  TEMP t FROM x",
        ] {
            assert!(changes_session(statement, Dialect::Postgres), "{statement}");
        }
        for statement in [
            "SET @x = 1",
            "SET SESSION max_statement_time = 0",
            "SET LOCAL sql_mode = ''",
            "SET @@session.sql_mode = ''",
            "SET NAMES latin1",
            "SELECT @x := 1",
            "SELECT GET_LOCK('a', 1)",
            "USE other_database",
            "PREPARE s FROM 'SELECT 1'",
            "LOCK TABLES t WRITE",
            "CREATE TEMPORARY TABLE t (a int)",
            "CREATE OR REPLACE TEMPORARY TABLE t (a int)",
            "SET TRANSACTION READ ONLY",
            "SELECT a INTO @v FROM t",
            "CALL p(@out)",
        ] {
            assert!(changes_session(statement, Dialect::Mysql), "{statement}");
        }
    }

    #[test]
    fn statements_confined_to_themselves_or_their_transaction_pass() {
        for statement in [
            "SELECT 1",
            "UPDATE t SET a = 1",
            "INSERT INTO settings (name) VALUES ('x')",
            "SET LOCAL statement_timeout = 0",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET CONSTRAINTS ALL DEFERRED",
            "SELECT pg_advisory_xact_lock(1)",
            "CREATE TABLE temperatures (a int)",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "",
        ] {
            assert!(
                !changes_session(statement, Dialect::Postgres),
                "{statement}"
            );
        }
        for statement in [
            "SELECT 1",
            "UPDATE t SET a = 1",
            "SET STATEMENT max_statement_time = 0 FOR SELECT 1",
            "CALL p(1)",
            "SELECT a = 1 FROM t",
            "CREATE TABLE t (a int)",
        ] {
            assert!(!changes_session(statement, Dialect::Mysql), "{statement}");
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
            "/*+ hint */ SELECT 1",
            "/*!40101 SELECT 1 */",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "",
            "/* unterminated",
        ] {
            assert_eq!(refuse_transaction_control(statement), Ok(()), "{statement}");
        }
    }
}
