//! The `sql` port: relational persistence behind logical database names.

mod cursor;
pub mod host;
pub mod mysql;
mod mysql_sessions;
mod mysql_values;
mod pg_sessions;
pub mod pg_tenancy;
mod pg_time;
mod pg_values;
mod placeholders;
mod pool_check;
pub mod postgres;
pub mod sqlite;
mod sqlite_guard;
mod statement;
mod watchdog;

pub(crate) use cursor::{ChannelCursor, RowSender, cursor_channel};

use async_trait::async_trait;

/// A value crossing the port, engine-neutral.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// SQL NULL.
    Null,
    /// A boolean.
    Boolean(bool),
    /// An integer.
    Int(i64),
    /// A binary float.
    Float(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
    /// RFC 3339 timestamp text.
    Timestamp(String),
    /// `YYYY-MM-DD`.
    Date(String),
    /// JSON text.
    Json(String),
    /// Hyphenated UUID text.
    Uuid(String),
    /// Exact decimal text.
    Decimal(String),
}

impl SqlValue {
    /// Approximate size in bytes, for result caps.
    pub fn approx_size(&self) -> usize {
        match self {
            SqlValue::Null | SqlValue::Boolean(_) => 1,
            SqlValue::Int(_) | SqlValue::Float(_) => 8,
            SqlValue::Blob(b) => b.len(),
            SqlValue::Text(s)
            | SqlValue::Timestamp(s)
            | SqlValue::Date(s)
            | SqlValue::Json(s)
            | SqlValue::Uuid(s)
            | SqlValue::Decimal(s) => s.len(),
        }
    }

    /// Bytes of host memory the value takes, for result caps: its payload
    /// and the value itself. A `NULL` is one byte on the wire but a whole
    /// value in the host, so a result of many `NULL`s must not pass the
    /// byte cap for nearly nothing.
    pub fn held_size(&self) -> usize {
        let payload = match self {
            SqlValue::Null | SqlValue::Boolean(_) | SqlValue::Int(_) | SqlValue::Float(_) => 0,
            _ => self.approx_size(),
        };
        std::mem::size_of::<SqlValue>() + payload
    }
}

/// A result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlColumn {
    /// Name.
    pub name: String,
    /// Declared type, lowercase; empty if unknown.
    pub type_name: String,
}

/// A materialised query result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowSet {
    /// Columns.
    pub columns: Vec<SqlColumn>,
    /// Rows.
    pub rows: Vec<Vec<SqlValue>>,
}

/// Caps applied to one materialised result.
#[derive(Debug, Clone, Copy)]
pub struct ResultCaps {
    /// Most rows.
    pub max_rows: usize,
    /// Most bytes (approximate).
    pub max_bytes: usize,
}

/// Collects a materialised result within [`ResultCaps`], refusing it (not
/// truncating it) as soon as a cap is passed. Shared by every adapter so
/// the caps mean the same on every engine.
#[derive(Debug)]
pub struct CappedRows {
    caps: ResultCaps,
    rows: Vec<Vec<SqlValue>>,
    bytes: usize,
}

impl CappedRows {
    /// An empty result bounded by `caps`.
    pub fn new(caps: ResultCaps) -> Self {
        Self {
            caps,
            rows: Vec::new(),
            bytes: 0,
        }
    }

    /// Whether another row would pass the row cap.
    pub fn full(&self) -> Result<(), SqlError> {
        if self.rows.len() >= self.caps.max_rows {
            return Err(SqlError::TooLarge(format!(
                "result exceeds {} rows; use open-cursor",
                self.caps.max_rows
            )));
        }
        Ok(())
    }

    /// Fails, before a row is read, when a lower bound of what the row
    /// will hold (`at_least` bytes, from its undecoded values) already
    /// passes the byte cap: a huge row is refused while the driver holds
    /// its only copy, instead of after a second one was made.
    pub fn room_for(&self, at_least: usize) -> Result<(), SqlError> {
        self.full()?;
        self.within_bytes(self.bytes.saturating_add(at_least))
    }

    /// Adds a row, or fails when it passes the row or byte cap.
    pub fn push(&mut self, values: Vec<SqlValue>) -> Result<(), SqlError> {
        self.full()?;
        self.bytes += values.iter().map(SqlValue::held_size).sum::<usize>();
        self.within_bytes(self.bytes)?;
        self.rows.push(values);
        Ok(())
    }

    fn within_bytes(&self, bytes: usize) -> Result<(), SqlError> {
        if bytes > self.caps.max_bytes {
            return Err(SqlError::TooLarge(format!(
                "result exceeds {} bytes; use open-cursor",
                self.caps.max_bytes
            )));
        }
        Ok(())
    }

    /// The collected rows.
    pub fn into_rows(self) -> Vec<Vec<SqlValue>> {
        self.rows
    }
}

/// The error of a statement the server left unanswered past its bound
/// `within` (see `watchdog::answered_by`): the server, or the way to it, is
/// gone. The bound is named, so an operator can tell it from the statement
/// timeout (which gives `timeout`).
pub(crate) fn unanswered(within: std::time::Duration) -> SqlError {
    SqlError::Unavailable(format!(
        "the database did not answer within {:.1} s; its connection was closed",
        within.as_secs_f64()
    ))
}

/// What a statement gets in a transaction the database rolled back itself
/// after an error (SQLite after a full database or an interrupted write,
/// MySQL/MariaDB after a deadlock): run outside it, each statement would be
/// committed on its own.
pub(crate) const ROLLED_BACK: &str = "the transaction was rolled back after an earlier error \
     (see that error); nothing of it was committed: roll it back and begin a new one";

impl SqlError {
    /// This error, which ended the transaction it happened in (the
    /// database rolled it back), saying so.
    pub(crate) fn ending_transaction(self) -> SqlError {
        const ENDED: &str = "; the transaction was rolled back";
        match self {
            SqlError::Constraint(m) => SqlError::Constraint(m + ENDED),
            SqlError::Syntax(m) => SqlError::Syntax(m + ENDED),
            SqlError::InvalidInput(m) => SqlError::InvalidInput(m + ENDED),
            SqlError::TooLarge(m) => SqlError::TooLarge(m + ENDED),
            SqlError::Denied(m) => SqlError::Denied(m + ENDED),
            SqlError::Conflict(m) => SqlError::Conflict(m + ENDED),
            SqlError::Unavailable(m) => SqlError::Unavailable(m + ENDED),
            SqlError::Other(m) => SqlError::Other(m + ENDED),
            // No message to add to: the next statement says it.
            other => other,
        }
    }
}

/// Refuses a decimal parameter's text past what the database stores:
/// longer than `max_chars`, or with an exponent (`e…`) past
/// `max_exponent` either way. Parsing an arbitrary-precision decimal
/// takes time quadratic in its digits (and an exponent makes digits), on
/// the thread serving the call, where no time limit of the guest's
/// reaches: a 10 MB decimal would hold it for minutes.
pub(crate) fn decimal_in_bounds(
    text: &str,
    max_chars: usize,
    max_exponent: u32,
) -> Result<(), SqlError> {
    if text.len() > max_chars {
        return Err(SqlError::InvalidInput(format!(
            "a decimal of {} characters is longer than this database takes (at most {max_chars})",
            text.len()
        )));
    }
    if let Some(at) = text.find(['e', 'E']) {
        let digits = text[at + 1..].trim_start_matches(['+', '-']);
        let past = digits.len() > 9 || digits.parse::<u32>().is_ok_and(|e| e > max_exponent);
        if past {
            return Err(SqlError::InvalidInput(format!(
                "a decimal's exponent is past what this database takes (at most {max_exponent} either way)"
            )));
        }
    }
    Ok(())
}

/// Why a SQL operation failed, as adapters report it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SqlError {
    /// The logical name is not granted.
    #[error("database {0:?} is not granted to this component")]
    NotGranted(String),
    /// Constraint violation.
    #[error("constraint violated: {0}")]
    Constraint(String),
    /// Bad statement.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// Bad parameter or value.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A column type the port cannot carry.
    #[error("unsupported column type: {0}")]
    UnsupportedType(String),
    /// Time limit hit.
    #[error("statement timed out")]
    Timeout,
    /// Result cap hit.
    #[error("result too large: {0}")]
    TooLarge(String),
    /// Refused by the engine.
    #[error("denied: {0}")]
    Denied(String),
    /// Concurrent write conflict.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Engine unreachable.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The server answered that it is short of resources (Postgres class
    /// 53, with its SQLSTATE: disk full, out of memory, too many
    /// connections). The guest sees `unavailable`; the connection is not
    /// lost (see [`pool_check::PoolCheck::note`]).
    #[error("database unavailable: the server is short of resources ({0})")]
    ShortOfResources(String),
    /// Every connection of the app's pool stayed in use until the acquire
    /// timeout: the app hit its `max_connections` limit.
    #[error("all {0} connections of the pool are in use")]
    PoolExhausted(u32),
    /// A bound on open cursors (the instance's, the app's or, on SQLite,
    /// the host's) is reached; the guest sees `unavailable`, since one
    /// closing makes room.
    #[error("{0}")]
    CursorLimit(String),
    /// Handle already finished.
    #[error("the transaction or cursor is already finished")]
    Closed,
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// A logical database, as served by one engine.
#[async_trait]
pub trait SqlBackend: Send + Sync {
    /// Runs a statement returning rows, within `caps`.
    async fn query(
        &self,
        statement: String,
        params: Vec<SqlValue>,
        caps: ResultCaps,
    ) -> Result<RowSet, SqlError>;
    /// Runs a statement; returns rows affected.
    async fn execute(&self, statement: String, params: Vec<SqlValue>) -> Result<u64, SqlError>;
    /// Starts a transaction.
    async fn begin(&self) -> Result<Box<dyn SqlTransaction>, SqlError>;
    /// Streams a result. `caps` bound each fetch as they bound a `query`'s
    /// result, so no single value past them is worth reading.
    async fn open_cursor(
        &self,
        statement: String,
        params: Vec<SqlValue>,
        caps: ResultCaps,
    ) -> Result<Box<dyn SqlCursor>, SqlError>;
}

/// An open transaction. Dropping it without `commit` rolls it back.
#[async_trait]
pub trait SqlTransaction: Send {
    /// Runs a statement returning rows, within `caps`.
    async fn query(
        &mut self,
        statement: String,
        params: Vec<SqlValue>,
        caps: ResultCaps,
    ) -> Result<RowSet, SqlError>;
    /// Runs a statement; returns rows affected.
    async fn execute(&mut self, statement: String, params: Vec<SqlValue>) -> Result<u64, SqlError>;
    /// Commits.
    async fn commit(self: Box<Self>) -> Result<(), SqlError>;
    /// Rolls back.
    async fn rollback(self: Box<Self>) -> Result<(), SqlError>;
}

/// A streamed result.
#[async_trait]
pub trait SqlCursor: Send {
    /// The columns.
    fn columns(&self) -> Vec<SqlColumn>;
    /// Up to `max_rows` further rows holding at most `max_bytes` (at least
    /// one row, however large, so a cursor always moves on); empty at the
    /// end.
    async fn next(
        &mut self,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Vec<Vec<SqlValue>>, SqlError>;
}

/// How a Postgres logical database is shared between apps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PgTenancy {
    /// Every app's pool logs in as the configured user.
    #[default]
    Shared,
    /// A role and schema per app, provisioned by the host.
    RolePerApp,
}

/// How the host serves a logical database (`[sql.<name>]` in the host config).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(remote = "Self", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SqlConfig {
    /// Embedded SQLite; `path` defaults to `<state>/<app>/sql/<name>.db`.
    Sqlite {
        /// Database file.
        path: Option<std::path::PathBuf>,
    },
    /// A Postgres database reached through a host-owned pool.
    Postgres {
        /// `postgres://user@host:port/db`; a password in it must be a
        /// `${env:…}`/`${file:…}` reference.
        url: String,
        /// Password reference (`${env:PGPASSWORD}`, `${file:/run/secrets/pg}`).
        password: Option<String>,
        /// Schema searched first (`search_path`).
        schema: Option<String>,
        /// Pool size; default 10.
        max_connections: Option<u32>,
        /// Idle connections kept open; default 0.
        min_connections: Option<u32>,
        /// Wait for a connection, in ms; default 5000.
        connect_timeout_ms: Option<u64>,
        /// Server-side statement timeout, in ms; default 30000.
        statement_timeout_ms: Option<u64>,
        /// `"shared"` (default): the pool logs in as the URL's user.
        /// `"role-per-app"`: the URL's user is an admin that provisions a
        /// role and schema per app, and each app's pool logs in as its own
        /// role (see `pg_tenancy`).
        #[serde(default)]
        tenancy: PgTenancy,
        /// With `role-per-app`: the secret tenant role passwords are derived
        /// from (a `${env:…}`/`${file:…}` reference).
        tenant_password_key: Option<String>,
        /// With `shared` tenancy, the apps that may open this database:
        /// required on `berth serve`, where tenants write their own
        /// manifests (see [`SqlConfig::check_shared`]).
        apps: Option<Vec<String>>,
    },
    /// A MySQL or MariaDB database reached through a host-owned pool
    /// (`type = "mysql"`, or `"mariadb"`).
    #[serde(alias = "mariadb")]
    Mysql {
        /// `mysql://user@host:port/db`; a password in it must be a
        /// `${env:…}`/`${file:…}` reference.
        url: String,
        /// Password reference (`${env:MYSQL_PASSWORD}`, `${file:/run/secrets/db}`).
        password: Option<String>,
        /// Pool size; default 10.
        max_connections: Option<u32>,
        /// Idle connections kept open; default 0.
        min_connections: Option<u32>,
        /// Wait for a connection, in ms; default 5000.
        connect_timeout_ms: Option<u64>,
        /// Server-side statement timeout, in ms; default 30000 (MariaDB:
        /// every statement; MySQL: `SELECT` only).
        statement_timeout_ms: Option<u64>,
        /// The apps that may open this database (every app that declares
        /// it shares the URL's login): required on `berth serve` (see
        /// [`SqlConfig::check_shared`]).
        apps: Option<Vec<String>>,
    },
}

crate::config::by_type::deserialize_by_type!(SqlConfig);

impl SqlConfig {
    /// Whether `app` may open a database every app declaring it would
    /// share (Postgres with `tenancy = "shared"`, MySQL): only if `apps`
    /// lists it, or, when `apps` is absent, outside `berth serve`
    /// (`tenants`), where the operator wrote every manifest. A tenant
    /// declaring the logical name must not reach another's tables.
    pub fn check_shared(apps: Option<&[String]>, app: &str, tenants: bool) -> Result<(), String> {
        match apps {
            Some(apps) if apps.iter().any(|a| a == app) => Ok(()),
            Some(_) => Err(format!("does not list app `{app}`")),
            None if tenants => Err(format!(
                "is needed on `berth serve` to open this shared database for app `{app}`: list the apps that may use it (every app declaring it shares its login), or give Postgres `tenancy = \"role-per-app\"`"
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_rows_refuse_what_passes_a_cap_before_or_after_reading() {
        let each = std::mem::size_of::<SqlValue>();
        let caps = ResultCaps {
            max_rows: 2,
            max_bytes: 3 * each + 10,
        };
        let mut rows = CappedRows::new(caps);
        // A row whose undecoded size alone passes the byte cap is refused
        // before it is read.
        assert!(matches!(
            rows.room_for(caps.max_bytes + 1),
            Err(SqlError::TooLarge(m)) if m.contains("bytes")
        ));
        rows.room_for(each + 4).unwrap();
        rows.push(vec![SqlValue::Text("abcd".into())]).unwrap();
        // What is held counts: the next row has room for 2 * each + 6 bytes.
        assert!(rows.room_for(2 * each + 6).is_ok());
        assert!(rows.room_for(2 * each + 7).is_err());
        rows.push(vec![SqlValue::Null]).unwrap();
        // Two rows: a third passes the row cap whatever its size.
        assert!(matches!(rows.room_for(0), Err(SqlError::TooLarge(m)) if m.contains("rows")));
        assert_eq!(rows.into_rows().len(), 2);
        // A row that passes the byte cap once read is refused too.
        let mut rows = CappedRows::new(caps);
        let over = vec![SqlValue::Blob(vec![0; 2 * each + 11])];
        assert!(matches!(rows.push(over), Err(SqlError::TooLarge(m)) if m.contains("bytes")));
    }
}
