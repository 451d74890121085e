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

/// The longest statement the port takes (1 MiB): its text is read several
/// ways before any server sees it, and values go as parameters, so no
/// statement needs more.
pub const MAX_STATEMENT_BYTES: usize = 1 << 20;

/// The most `FOR`s a MariaDB `SET STATEMENT … FOR <statement>` may hold:
/// each could end the settings, so each is checked (see
/// [`set_statement_targets`]).
const MAX_FORS: usize = 8;

/// Refuses a transaction-control statement (`BEGIN`, `COMMIT`, `SET
/// autocommit`…), whatever comments and spacing come first, and a
/// statement whose first keyword cannot be found: what the server would run
/// must be what was checked. Also refuses a statement past
/// [`MAX_STATEMENT_BYTES`], and a `SET STATEMENT … FOR` too tangled to
/// check (more than [`MAX_FORS`] `FOR`s, or one running another `SET
/// STATEMENT`, which MariaDB does not take anyway): the checks' cost
/// stays in proportion to the statement's length.
///
/// The statement is read as each server reads it (see [`Reading`]), and
/// refused if any reading finds transaction control: `/* /* */ COMMIT` is
/// a comment to Postgres and a `COMMIT` to MySQL and SQLite, `/*!x*/ BEGIN`
/// a `BEGIN` to Postgres and SQLite, `-- x\rBEGIN` a `BEGIN` to Postgres.
pub fn refuse_transaction_control(statement: &str) -> Result<(), SqlError> {
    if statement.len() > MAX_STATEMENT_BYTES {
        return Err(SqlError::InvalidInput(format!(
            "the statement is {} bytes, more than the port takes ({MAX_STATEMENT_BYTES}); pass values as parameters",
            statement.len()
        )));
    }
    for reading in READINGS {
        refuse_in(statement, reading)?;
    }
    Ok(())
}

fn refuse_in(statement: &str, comments: Reading) -> Result<(), SqlError> {
    let start = skip_blank(statement, comments);
    if start.chars().next().is_some_and(|c| !is_word_char(c)) {
        return Err(SqlError::Denied(
            "the statement must start with a keyword (after any comments)".into(),
        ));
    }
    if sets_statement(statement, comments) && set_statement_targets(statement).is_none() {
        return Err(SqlError::Denied(format!(
            "a `SET STATEMENT … FOR` may hold at most {MAX_FORS} `FOR`s, and not run another `SET STATEMENT`"
        )));
    }
    match transaction_control(statement, comments) {
        Some(keyword) => Err(SqlError::Denied(format!(
            "`{keyword}` is transaction control: use the port's begin, commit and rollback"
        ))),
        None => Ok(()),
    }
}

/// The first keyword of `statement`, upper case, when it is transaction
/// control.
fn transaction_control(statement: &str, comments: Reading) -> Option<String> {
    let mut words = keywords(statement, comments);
    let first = words.next().unwrap_or_default();
    let mut second = words.next().unwrap_or_default();
    let is = |word: &str, keyword: &str| word.eq_ignore_ascii_case(keyword);
    if is(first, "SET") && ["SESSION", "GLOBAL", "LOCAL"].iter().any(|k| is(second, k)) {
        second = words.next().unwrap_or_default();
    }
    // MySQL sets several variables in one `SET a = 1, autocommit = 0`, so
    // a `SET` naming `autocommit` anywhere counts.
    let refused = TRANSACTION_CONTROL.iter().any(|k| is(first, k))
        || (is(first, "PREPARE") && is(second, "TRANSACTION"))
        || (is(first, "SET") && holds_phrase(statement, "autocommit", comments));
    if refused {
        return Some(first.to_ascii_uppercase());
    }
    // MariaDB's `SET STATEMENT … FOR <statement>` runs any statement.
    if is(first, "SET") && is(second, "STATEMENT") {
        return match set_statement_targets(statement) {
            Some(targets) => targets
                .into_iter()
                .find_map(|rest| transaction_control(rest, comments)),
            None => Some("SET STATEMENT".into()),
        };
    }
    None
}

/// Whether `statement`, read as `comments` says, is MariaDB's `SET
/// STATEMENT … FOR <statement>`.
fn sets_statement(statement: &str, comments: Reading) -> bool {
    let mut words = keywords(statement, comments);
    let mut next_is = |keyword: &str| {
        words
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case(keyword))
    };
    next_is("SET") && next_is("STATEMENT")
}

/// The statements a `SET STATEMENT … FOR <statement>` may run: the text
/// after each of its `FOR`s ([`after_each_for`]). `None` when there are
/// more than [`MAX_FORS`], or one is itself a `SET STATEMENT` in some
/// reading: checking those would cost the square, or more, of the
/// statement's length, and [`refuse_transaction_control`] refuses them.
fn set_statement_targets(statement: &str) -> Option<Vec<&str>> {
    let targets: Vec<&str> = after_each_for(statement).take(MAX_FORS + 1).collect();
    let nested = targets
        .iter()
        .any(|rest| READINGS.iter().any(|&r| sets_statement(rest, r)));
    (targets.len() <= MAX_FORS && !nested).then_some(targets)
}

/// The text after each `FOR` of `statement` (any case) that no word
/// character follows, for MariaDB's `SET STATEMENT … FOR <statement>`.
/// Every one is returned, since a `FOR` may also stand in a value before
/// the real one; what comes before it is not looked at, since MariaDB reads
/// `1.5FOR` as a number and the keyword.
fn after_each_for(statement: &str) -> impl Iterator<Item = &str> {
    let bytes = statement.as_bytes();
    (0..bytes.len().saturating_sub(2)).filter_map(move |i| {
        let word = bytes.get(i..i + 3)?;
        let ends = bytes
            .get(i + 3)
            .is_none_or(|b| !(b.is_ascii_alphanumeric() || *b == b'_'));
        (word.eq_ignore_ascii_case(b"for") && ends)
            .then(|| statement.get(i + 3..))
            .flatten()
    })
}

/// Leading keywords of MySQL and MariaDB statements that commit the open
/// transaction implicitly (MySQL's "Statements That Cause an Implicit
/// Commit"): DDL, accounts and privileges, table locks, table maintenance.
const IMPLICIT_COMMIT: &[&str] = &[
    "ALTER",
    "CREATE",
    "DROP",
    "RENAME",
    "TRUNCATE",
    "GRANT",
    "REVOKE",
    "LOCK",
    "UNLOCK",
    "CACHE",
    "CHECK",
    "FLUSH",
    "OPTIMIZE",
    "REPAIR",
    "INSTALL",
    "UNINSTALL",
    "STOP",
];

/// Refuses, inside a MySQL or MariaDB transaction, a statement that would
/// commit it implicitly: the port's `rollback` would then undo nothing
/// written before it, and the transaction's later statements would each
/// commit on their own. Temporary tables (`CREATE [OR REPLACE] TEMPORARY`,
/// `DROP TEMPORARY`) do not commit and pass, as do MariaDB's `ANALYZE
/// SELECT …` and MySQL's `RESET PERSIST`.
pub fn refuse_implicit_commit(statement: &str) -> Result<(), SqlError> {
    for reading in [MYSQL, FLAT] {
        if let Some(first) = implicit_commit(statement, reading) {
            return Err(SqlError::Denied(format!(
                "`{first}` commits the open transaction on MySQL and MariaDB, so the transaction could not be rolled back: run it outside a transaction"
            )));
        }
    }
    Ok(())
}

/// The first keyword of `statement`, upper case, when it commits a MySQL
/// transaction implicitly.
fn implicit_commit(statement: &str, reading: Reading) -> Option<String> {
    let words: Vec<&str> = keywords(statement, reading).take(4).collect();
    let word = |i: usize| words.get(i).copied().unwrap_or_default();
    let is = |word: &str, keyword: &str| word.eq_ignore_ascii_case(keyword);
    let (first, second, third, fourth) = (word(0), word(1), word(2), word(3));
    // `TEMPORARY` only as the keyword (it is no reserved word, so a table
    // or column may be named so).
    let temporary = (is(first, "CREATE") || is(first, "DROP")) && is(second, "TEMPORARY")
        || (is(first, "CREATE") && is(second, "OR") && is(third, "REPLACE"))
            && is(fourth, "TEMPORARY");
    let commits = (IMPLICIT_COMMIT.iter().any(|k| is(first, k)) && !temporary)
        || (is(first, "ANALYZE") && (is(second, "TABLE") || is(second, "TABLES")))
        || (is(first, "RESET") && !is(second, "PERSIST"))
        || (is(first, "SET") && is(second, "PASSWORD"))
        || (is(first, "LOAD") && is(second, "INDEX"))
        || (is(first, "CHANGE") && (is(second, "MASTER") || is(second, "REPLICATION")));
    if commits {
        return Some(first.to_ascii_uppercase());
    }
    // MariaDB's `SET STATEMENT … FOR <statement>` runs any statement.
    if is(first, "SET") && is(second, "STATEMENT") {
        return match set_statement_targets(statement) {
            Some(targets) => targets
                .into_iter()
                .find_map(|rest| implicit_commit(rest, reading)),
            None => Some("SET STATEMENT".into()),
        };
    }
    None
}

/// Which server's rules [`changes_session`] applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// MySQL and MariaDB.
    Mysql,
}

/// How a server reads comments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reading {
    /// Block comments nest (Postgres); elsewhere one ends at the first `*/`.
    nested: bool,
    /// What an executable comment (`/*! … */`, `/*M! … */`) holds is
    /// statement text (MySQL and MariaDB; MySQL skips one whose version is
    /// newer than the server, and other servers read it as a comment).
    executable: bool,
    /// A carriage return ends a line comment (Postgres); elsewhere only a
    /// line feed does.
    cr_ends_line: bool,
}

/// Postgres's reading.
const POSTGRES: Reading = Reading {
    nested: true,
    executable: false,
    cr_ends_line: true,
};
/// MySQL's and MariaDB's reading.
const MYSQL: Reading = Reading {
    nested: false,
    executable: true,
    cr_ends_line: false,
};
/// SQLite's, and MySQL's of an executable comment it skips.
const FLAT: Reading = Reading {
    nested: false,
    executable: false,
    cr_ends_line: false,
};
/// Every reading a statement may get from some server.
const READINGS: [Reading; 3] = [POSTGRES, MYSQL, FLAT];

/// Whether `statement` may leave state on its server session that would
/// outlast it: a setting (`SET`, `RESET`, `set_config(…)`, an `UPDATE` of
/// `pg_settings`; not `SET LOCAL` or `SET TRANSACTION`), a session-level
/// lock, a `LISTEN`, a temporary table (also one made in `pg_temp`), a
/// prepared statement or held cursor, a `DISCARD` or `DEALLOCATE` of the
/// driver's own statements, and on MySQL user variables, the default
/// database (`USE`) and any `CALL` (what a procedure runs is not seen). A Postgres statement holding Unicode escapes (`U&"…"`),
/// which can spell any name, counts too.
///
/// Pooled connections serve the app's later calls at random, so the
/// adapters never pool such a session as it is: they reset it or close it.
/// This reads the statement's text, so code it calls (a function that sets
/// something) is not seen; that stays within the app's own pool.
pub fn changes_session(statement: &str, dialect: Dialect) -> bool {
    match dialect {
        Dialect::Postgres => changes_session_in(statement, dialect, POSTGRES),
        Dialect::Mysql => [MYSQL, FLAT]
            .into_iter()
            .any(|reading| changes_session_in(statement, dialect, reading)),
    }
}

fn changes_session_in(statement: &str, dialect: Dialect, comments: Reading) -> bool {
    let words: Vec<&str> = keywords(statement, comments).take(4).collect();
    let word = |i: usize| words.get(i).copied().unwrap_or_default();
    let (first, second) = (word(0), word(1));
    let is = |word: &str, keyword: &str| word.eq_ignore_ascii_case(keyword);
    let any = |word: &str, keywords: &[&str]| keywords.iter().any(|k| is(word, k));
    // `CREATE [OR REPLACE] [GLOBAL | LOCAL] TEMP[ORARY] …`
    let temporary =
        is(first, "CREATE") && words.iter().skip(1).any(|w| any(w, &["TEMP", "TEMPORARY"]));
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
                || holds_any(statement, POSTGRES_SESSION_PHRASES, comments)
        }
        // `SET TRANSACTION` without a scope sets the session's next
        // transaction, which would be another call's. MariaDB's `SET
        // STATEMENT … FOR` runs a statement that may be one of these.
        Dialect::Mysql => {
            (is(first, "SET") && !is(second, "STATEMENT"))
                || (is(first, "SET")
                    && is(second, "STATEMENT")
                    && set_statement_targets(statement).is_none_or(|targets| {
                        targets
                            .into_iter()
                            .any(|rest| changes_session(rest, dialect))
                    }))
                || any(first, &["USE", "PREPARE", "LOCK", "HANDLER", "DEALLOCATE"])
                || temporary
                || holds_any(statement, &[":=", "into @", "get_lock"], comments)
                // What a procedure runs is not seen: a `CALL` may leave a
                // transaction open, or variables set.
                || is(first, "CALL")
        }
    }
}

/// Phrases whose presence anywhere in a Postgres statement means it may
/// change its session (see [`changes_session`]). `CREATE … TEMP` also where
/// `CREATE` is not first (`EXPLAIN ANALYZE CREATE TEMP TABLE … AS` makes
/// the table).
const POSTGRES_SESSION_PHRASES: &[&str] = &[
    "create temp",
    "create local temp",
    "create global temp",
    "replace temp",
    "into temp",
    "into local temp",
    "into global temp",
    "pg_temp",
    "set_config",
    "pg_settings",
    "u&",
    "advisory_lock",
];

/// Whether `text` holds `phrase` (lower case, words one space apart)
/// anywhere, in any case, where each space of `phrase` stands for any run
/// of whitespace and comments, or none (`INTO@v`, `INTO/**/TEMP`).
/// Without allocating: it runs on every statement.
///
/// A gap may be a comment running to the end of the text, read again from
/// each place the phrase's first word is found (`into--into--into…`): the
/// bytes read are counted, and past [`PHRASE_WORK`] times the text's
/// length the phrase counts as held, which only makes the caller careful
/// (the session is reset, a `SET` is refused).
fn holds_phrase(text: &str, phrase: &str, comments: Reading) -> bool {
    holds_any(text, &[phrase], comments)
}

/// Whether `text` holds any of `phrases`, each read as [`holds_phrase`]
/// reads one, in one walk of the text: the phrases are tried only at a
/// place whose letter starts one of them. The budget is the sum of the
/// phrases' own. A phrase must not start with a space.
fn holds_any(text: &str, phrases: &[&str], comments: Reading) -> bool {
    let text = text.as_bytes();
    let mut starts = [false; 256];
    for phrase in phrases {
        if let Some(&first) = phrase.as_bytes().first() {
            starts[usize::from(first)] = true;
        }
    }
    // Each phrase's budget, as if each had its walk.
    let mut work = PHRASE_WORK
        .saturating_mul(text.len())
        .saturating_add(4096)
        .saturating_mul(phrases.len());
    // Whether `phrase` starts at `start`, and how far it read.
    let matches_at = |start: usize, phrase: &[u8]| {
        let (mut i, mut j) = (start, 0);
        while j < phrase.len() {
            match (text.get(i), phrase[j]) {
                (_, b' ') => i = skip_gap(text, i, comments),
                (Some(c), p) if c.to_ascii_lowercase() == p => i += 1,
                _ => return (false, i - start),
            }
            j += 1;
        }
        (true, i - start)
    };
    for (start, byte) in text.iter().enumerate() {
        work = work.saturating_sub(1);
        if starts[usize::from(byte.to_ascii_lowercase())] {
            for phrase in phrases {
                let (found, read) = matches_at(start, phrase.as_bytes());
                work = work.saturating_sub(read);
                if found {
                    return true;
                }
            }
        }
        if work == 0 {
            return true;
        }
    }
    false
}

/// How many times its length [`holds_phrase`] may read of a statement.
const PHRASE_WORK: usize = 4;

/// The index after the whitespace and comments at `text[i..]`. The
/// markers of a MySQL executable comment (`/*!40101`, `/*M!`, `*/`) count
/// as a gap, what it holds as text, since the server runs it.
fn skip_gap(text: &[u8], mut i: usize, comments: Reading) -> usize {
    loop {
        let rest = &text[i.min(text.len())..];
        let opener = [&b"/*!"[..], b"/*M!"]
            .into_iter()
            .find(|o| rest.starts_with(o));
        if let Some(opener) = opener.filter(|_| comments.executable) {
            i += opener.len();
            while text.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            continue;
        }
        if comments.executable && rest.starts_with(b"*/") {
            i += 2;
            continue;
        }
        match (text.get(i), text.get(i + 1)) {
            (Some(c), _) if c.is_ascii_whitespace() => i += 1,
            (Some(b'/'), Some(b'*')) => {
                // Through the matching `*/`, nested as `comments` says.
                let mut depth = 0usize;
                while i < text.len() {
                    if text[i] == b'/' && text.get(i + 1) == Some(&b'*') {
                        if depth == 0 || comments.nested {
                            depth += 1;
                        }
                        i += 2;
                    } else if text[i] == b'*' && text.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            (Some(b'-'), Some(b'-')) | (Some(b'#'), _) => {
                while i < text.len()
                    && !(text[i] == b'\n' || (comments.cr_ends_line && text[i] == b'\r'))
                {
                    i += 1;
                }
            }
            _ => return i,
        }
    }
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The statement's words from its start, skipping whitespace, comments
/// (`-- …`, MySQL's `# …`, `/* … */`, as `comments` reads them),
/// empty statements (`;`), opening parentheses and MySQL's `@@` and `.`
/// (`@@session.autocommit`); a word is a run of letters, digits and `_`.
/// What a MySQL executable comment (`/*! … */`, `/*M! … */`) holds counts
/// as words, since the server runs it.
fn keywords(statement: &str, comments: Reading) -> impl Iterator<Item = &str> {
    let mut rest = statement;
    std::iter::from_fn(move || {
        rest = skip_blank(rest, comments).trim_start_matches(['@', '.']);
        let end = rest.find(|c| !is_word_char(c)).unwrap_or(rest.len());
        let word = &rest[..end];
        rest = &rest[end..];
        (!word.is_empty()).then_some(word)
    })
}

/// `rest` without leading whitespace, comments, `;` and `(`, with the
/// opening of a MySQL executable comment skipped (its contents kept) and
/// the `*/` that closes one.
fn skip_blank(mut rest: &str, comments: Reading) -> &str {
    loop {
        let trimmed = rest.trim_start().trim_start_matches([';', '(']);
        if trimmed.len() != rest.trim_start().len() {
            rest = trimmed;
            continue;
        }
        if let Some(line) = trimmed
            .strip_prefix("--")
            .or_else(|| trimmed.strip_prefix('#'))
        {
            let end = if comments.cr_ends_line {
                line.find(['\n', '\r'])
            } else {
                line.find('\n')
            };
            rest = end.map_or("", |i| &line[i + 1..]);
        } else if let Some(inner) = executable_comment(trimmed).filter(|_| comments.executable) {
            rest = inner;
        } else if let Some(after) = trimmed.strip_prefix("*/") {
            // The end of an executable comment whose contents were read.
            rest = after;
        } else if trimmed.starts_with("/*") {
            rest = after_block_comment(trimmed, comments);
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
/// included when `comments` says so); empty when it is not closed.
fn after_block_comment(text: &str, comments: Reading) -> &str {
    let bytes = text.as_bytes();
    let (mut depth, mut i) = (0usize, 0);
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') if depth == 0 || comments.nested => {
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
#[path = "statement_tests.rs"]
mod tests;
