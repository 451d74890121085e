//! Postgres adapter (sqlx): a connection pool owned by the host per logical
//! database; an invocation borrows pooled connections and never opens one.
//!
//! Values are mapped by the column's Postgres type: integers, floats, bool,
//! text, bytea, numeric (exact decimal text), timestamptz/timestamp/date,
//! json/jsonb (text as stored) and uuid; other types (arrays, intervals, …)
//! give `unsupported-type`. Statements may use `?` placeholders (rewritten
//! to `$n` outside literals and comments) or `$n` ones. A server-side
//! `statement_timeout` bounds every statement.

use std::str::FromStr as _;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{
    PgArgumentBuffer, PgArguments, PgConnectOptions, PgPoolOptions, PgRow, PgTypeInfo,
    PgValueFormat,
};
use sqlx::query::Query;
use sqlx::{
    Column as _, Executor as _, Postgres, Row as _, Statement as _, TypeInfo as _, ValueRef as _,
};
use tokio::sync::mpsc;

use super::{
    ResultCaps, RowSet, SqlBackend, SqlColumn, SqlCursor, SqlError, SqlTransaction, SqlValue,
};
use crate::secret::Secret;

/// Rows buffered between a cursor's reader task and the guest.
const CURSOR_BUFFER_ROWS: usize = 256;

/// Settings of a Postgres logical database.
#[derive(Debug, Clone)]
pub struct PostgresSettings {
    /// `postgres://user@host:port/db` (may carry the password).
    pub url: Secret,
    /// Password, if not in the URL.
    pub password: Option<Secret>,
    /// Schema put first on the `search_path`.
    pub schema: Option<String>,
    /// Pool size.
    pub max_connections: u32,
    /// Connections kept open when idle.
    pub min_connections: u32,
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
    /// Server-side limit per statement.
    pub statement_timeout: Duration,
    /// Shown in `pg_stat_activity` (`berth:<app>:<name>`).
    pub application_name: String,
}

/// One logical database served by a Postgres pool.
pub struct PostgresDatabase {
    pool: sqlx::PgPool,
}

impl PostgresDatabase {
    /// Builds the pool and checks the server answers, so a wrong URL or
    /// password fails at startup.
    pub async fn connect(s: &PostgresSettings) -> Result<PostgresDatabase, SqlError> {
        let mut options = PgConnectOptions::from_str(s.url.expose())
            .map_err(|_| SqlError::InvalidInput("the Postgres URL is malformed".into()))?;
        if let Some(password) = &s.password {
            options = options.password(password.expose());
        }
        let timeout_ms = s.statement_timeout.as_millis().to_string();
        let mut settings = vec![("statement_timeout", timeout_ms)];
        if let Some(schema) = &s.schema {
            settings.push((
                "search_path",
                format!("\"{}\"", schema.replace('"', "\"\"")),
            ));
        }
        options = options
            .options(settings)
            .application_name(&s.application_name);
        let pool = PgPoolOptions::new()
            .max_connections(s.max_connections.max(1))
            .min_connections(s.min_connections)
            .acquire_timeout(s.connect_timeout)
            .test_before_acquire(true)
            .connect_with(options)
            .await
            .map_err(map_error)?;
        Ok(PostgresDatabase { pool })
    }

    /// The pool (for tests and benchmarks that compare against native sqlx).
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.pool
    }
}

/// Maps a sqlx error to the port's error. Database messages are kept (they
/// name objects of the guest's own SQL); connection errors are not, since
/// they can name hosts.
pub fn map_error(e: sqlx::Error) -> SqlError {
    match e {
        sqlx::Error::Database(db) => {
            let msg = db.message().to_string();
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            match code.as_str() {
                c if c.starts_with("23") => SqlError::Constraint(msg),
                "42601" | "42P01" | "42703" | "42883" | "42P07" | "42804" | "42P18" => {
                    SqlError::Syntax(msg)
                }
                c if c.starts_with("42") && c != "42501" => SqlError::Syntax(msg),
                "42501" => SqlError::Denied(msg),
                "57014" => SqlError::Timeout,
                "40001" | "40P01" => SqlError::Conflict(msg),
                c if c.starts_with("22") => SqlError::InvalidInput(msg),
                "08P01" => SqlError::InvalidInput(msg),
                c if c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") => {
                    SqlError::Unavailable(format!("server error {c}"))
                }
                _ => SqlError::Other(msg),
            }
        }
        sqlx::Error::PoolTimedOut => {
            SqlError::Unavailable("no database connection available in time".into())
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => SqlError::Unavailable("cannot reach the database".into()),
        sqlx::Error::Configuration(_) => {
            SqlError::Unavailable("database configuration error".into())
        }
        sqlx::Error::Protocol(m) if m.contains("parameters") => SqlError::InvalidInput(m),
        sqlx::Error::ColumnDecode { source, .. } => SqlError::UnsupportedType(source.to_string()),
        other => SqlError::Other(other.to_string()),
    }
}

/// A NULL whose type the server infers from the statement.
struct UntypedNull;

impl sqlx::Type<Postgres> for UntypedNull {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(0))
    }
}

impl sqlx::Encode<'_, Postgres> for UntypedNull {
    fn encode_by_ref(
        &self,
        _: &mut PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        Ok(sqlx::encode::IsNull::Yes)
    }
}

/// JSON sent as the `json` type's wire format (its text), so a `json`
/// column keeps the guest's text exactly.
struct JsonText(String);

impl sqlx::Type<Postgres> for JsonText {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(114))
    }
}

impl sqlx::Encode<'_, Postgres> for JsonText {
    fn encode_by_ref(
        &self,
        buf: &mut PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        buf.extend_from_slice(self.0.as_bytes());
        Ok(sqlx::encode::IsNull::No)
    }
}

type PgQuery<'q> = Query<'q, Postgres, PgArguments>;

/// A parameter converted once to its Postgres type, so the statement is
/// prepared with exactly the types that are then bound.
enum PgParam {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
    TimestampTz(chrono::DateTime<chrono::Utc>),
    Timestamp(chrono::NaiveDateTime),
    Date(chrono::NaiveDate),
    Json(String),
    Uuid(sqlx::types::Uuid),
    Decimal(bigdecimal::BigDecimal),
}

impl PgParam {
    fn from_value(v: SqlValue) -> Result<PgParam, SqlError> {
        let bad =
            |what: &str, v: &str| SqlError::InvalidInput(format!("{v:?} is not a valid {what}"));
        Ok(match v {
            SqlValue::Null => PgParam::Null,
            SqlValue::Boolean(b) => PgParam::Bool(b),
            SqlValue::Int(i) => PgParam::Int(i),
            SqlValue::Float(f) => PgParam::Float(f),
            SqlValue::Text(s) => PgParam::Text(s),
            SqlValue::Blob(b) => PgParam::Bytes(b),
            SqlValue::Timestamp(s) => match chrono::DateTime::parse_from_rfc3339(&s) {
                Ok(t) => PgParam::TimestampTz(t.with_timezone(&chrono::Utc)),
                Err(_) => PgParam::Timestamp(
                    chrono::NaiveDateTime::parse_from_str(&s, "%Y-%m-%dT%H:%M:%S%.f")
                        .or_else(|_| {
                            chrono::NaiveDateTime::parse_from_str(&s, "%Y-%m-%d %H:%M:%S%.f")
                        })
                        .map_err(|_| bad("timestamp (RFC 3339)", &s))?,
                ),
            },
            SqlValue::Date(s) => PgParam::Date(
                chrono::NaiveDate::parse_from_str(&s, "%Y-%m-%d")
                    .map_err(|_| bad("date (YYYY-MM-DD)", &s))?,
            ),
            SqlValue::Json(s) => PgParam::Json(s),
            SqlValue::Uuid(s) => {
                PgParam::Uuid(sqlx::types::Uuid::parse_str(&s).map_err(|_| bad("UUID", &s))?)
            }
            SqlValue::Decimal(s) => PgParam::Decimal(
                bigdecimal::BigDecimal::from_str(&s).map_err(|_| bad("decimal", &s))?,
            ),
        })
    }

    fn type_info(&self) -> PgTypeInfo {
        use sqlx::Type;
        match self {
            PgParam::Null => UntypedNull::type_info(),
            PgParam::Bool(_) => bool::type_info(),
            PgParam::Int(_) => i64::type_info(),
            PgParam::Float(_) => f64::type_info(),
            PgParam::Text(_) => String::type_info(),
            PgParam::Bytes(_) => <Vec<u8>>::type_info(),
            PgParam::TimestampTz(_) => <chrono::DateTime<chrono::Utc>>::type_info(),
            PgParam::Timestamp(_) => chrono::NaiveDateTime::type_info(),
            PgParam::Date(_) => chrono::NaiveDate::type_info(),
            PgParam::Json(_) => JsonText::type_info(),
            PgParam::Uuid(_) => sqlx::types::Uuid::type_info(),
            PgParam::Decimal(_) => bigdecimal::BigDecimal::type_info(),
        }
    }

    fn bind(self, q: PgQuery<'_>) -> PgQuery<'_> {
        match self {
            PgParam::Null => q.bind(UntypedNull),
            PgParam::Bool(v) => q.bind(v),
            PgParam::Int(v) => q.bind(v),
            PgParam::Float(v) => q.bind(v),
            PgParam::Text(v) => q.bind(v),
            PgParam::Bytes(v) => q.bind(v),
            PgParam::TimestampTz(v) => q.bind(v),
            PgParam::Timestamp(v) => q.bind(v),
            PgParam::Date(v) => q.bind(v),
            PgParam::Json(v) => q.bind(JsonText(v)),
            PgParam::Uuid(v) => q.bind(v),
            PgParam::Decimal(v) => q.bind(v),
        }
    }
}

fn convert(params: Vec<SqlValue>) -> Result<Vec<PgParam>, SqlError> {
    params.into_iter().map(PgParam::from_value).collect()
}

fn bind(mut q: PgQuery<'_>, params: Vec<PgParam>) -> PgQuery<'_> {
    for p in params {
        q = p.bind(q);
    }
    q
}

/// Prepares `sql` with the parameters' own types (so what is bound matches
/// what the server expects) and returns the statement's columns too.
async fn prepare(
    conn: &mut sqlx::PgConnection,
    sql: &str,
    params: &[PgParam],
) -> Result<sqlx::postgres::PgStatement<'static>, SqlError> {
    let types: Vec<PgTypeInfo> = params.iter().map(PgParam::type_info).collect();
    conn.prepare_with(sql, &types)
        .await
        .map(|s| sqlx::Statement::to_owned(&s))
        .map_err(map_error)
}

fn columns_of(cols: &[sqlx::postgres::PgColumn]) -> Vec<SqlColumn> {
    cols.iter()
        .map(|c| SqlColumn {
            name: c.name().to_string(),
            type_name: c.type_info().name().to_ascii_lowercase(),
        })
        .collect()
}

fn read_row(row: &PgRow) -> Result<Vec<SqlValue>, SqlError> {
    (0..row.columns().len())
        .map(|i| read_value(row, i))
        .collect()
}

fn read_value(row: &PgRow, i: usize) -> Result<SqlValue, SqlError> {
    let raw = row.try_get_raw(i).map_err(map_error)?;
    if raw.is_null() {
        return Ok(SqlValue::Null);
    }
    let type_name = raw.type_info().name().to_string();
    let get = |e: sqlx::Error| map_error(e);
    Ok(match type_name.as_str() {
        "BOOL" => SqlValue::Boolean(row.try_get(i).map_err(get)?),
        "INT2" => SqlValue::Int(row.try_get::<i16, _>(i).map_err(get)?.into()),
        "INT4" => SqlValue::Int(row.try_get::<i32, _>(i).map_err(get)?.into()),
        "INT8" => SqlValue::Int(row.try_get(i).map_err(get)?),
        "OID" => SqlValue::Int(row.try_get::<Oid, _>(i).map_err(get)?.0.into()),
        "FLOAT4" => SqlValue::Float(row.try_get::<f32, _>(i).map_err(get)?.into()),
        "FLOAT8" => SqlValue::Float(row.try_get(i).map_err(get)?),
        "NUMERIC" => {
            let bytes = raw.as_bytes().map_err(|e| SqlError::Other(e.to_string()))?;
            let text = match raw.format() {
                PgValueFormat::Binary => numeric_text(bytes)
                    .ok_or_else(|| SqlError::UnsupportedType("malformed numeric".into()))?,
                PgValueFormat::Text => String::from_utf8_lossy(bytes).into_owned(),
            };
            SqlValue::Decimal(text)
        }
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" | "CITEXT" => {
            SqlValue::Text(row.try_get(i).map_err(get)?)
        }
        "BYTEA" => SqlValue::Blob(row.try_get(i).map_err(get)?),
        "TIMESTAMPTZ" => SqlValue::Timestamp(
            row.try_get::<chrono::DateTime<chrono::Utc>, _>(i)
                .map_err(get)?
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        ),
        "TIMESTAMP" => SqlValue::Timestamp(
            row.try_get::<chrono::NaiveDateTime, _>(i)
                .map_err(get)?
                .format("%Y-%m-%dT%H:%M:%S%.f")
                .to_string(),
        ),
        "DATE" => SqlValue::Date(
            row.try_get::<chrono::NaiveDate, _>(i)
                .map_err(get)?
                .to_string(),
        ),
        "UUID" => SqlValue::Uuid(
            row.try_get::<sqlx::types::Uuid, _>(i)
                .map_err(get)?
                .hyphenated()
                .to_string(),
        ),
        "JSON" | "JSONB" => {
            let bytes = raw.as_bytes().map_err(|e| SqlError::Other(e.to_string()))?;
            // jsonb's binary format starts with a version byte.
            let text = if type_name == "JSONB" && raw.format() == PgValueFormat::Binary {
                &bytes[1.min(bytes.len())..]
            } else {
                bytes
            };
            SqlValue::Json(String::from_utf8_lossy(text).into_owned())
        }
        other => {
            return Err(SqlError::UnsupportedType(format!(
                "column {} has type {other}, which the sql port cannot carry; cast it (e.g. to text)",
                i + 1
            )));
        }
    })
}

/// Renders Postgres' binary `numeric` exactly, with its declared scale
/// (`12.50` stays `12.50`). Layout: ndigits, weight, sign, dscale (i16/u16)
/// then base-10000 digits.
fn numeric_text(b: &[u8]) -> Option<String> {
    let word = |i: usize| b.get(i..i + 2).map(|w| i16::from_be_bytes([w[0], w[1]]));
    let (ndigits, weight, sign, dscale) = (
        word(0)? as usize,
        word(2)? as i32,
        word(4)? as u16,
        word(6)? as usize,
    );
    let digits: Vec<i16> = (0..ndigits)
        .map(|k| word(8 + 2 * k))
        .collect::<Option<_>>()?;
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        _ => {}
    }
    let digit = |idx: i32| {
        if idx >= 0 && (idx as usize) < ndigits {
            digits[idx as usize]
        } else {
            0
        }
    };
    let mut out = String::new();
    if sign == 0x4000 {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for idx in 0..=weight {
            if idx == 0 {
                out.push_str(&digit(idx).to_string());
            } else {
                out.push_str(&format!("{:04}", digit(idx)));
            }
        }
    }
    if dscale > 0 {
        let mut frac = String::new();
        let mut idx = weight + 1;
        while frac.len() < dscale {
            frac.push_str(&format!("{:04}", digit(idx)));
            idx += 1;
        }
        frac.truncate(dscale);
        out.push('.');
        out.push_str(&frac);
    }
    Some(out)
}

/// Rewrites `?` placeholders to `$1`, `$2`, … outside string literals,
/// quoted identifiers, dollar-quoted bodies and comments. A statement that
/// already uses `$n` placeholders is left alone.
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
                out.push_str(&format!("${n}"));
                i += 1;
                continue;
            }
            _ => i + sql[i..].chars().next().map_or(1, char::len_utf8),
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

async fn query_on(
    conn: &mut sqlx::PgConnection,
    statement: &str,
    params: Vec<SqlValue>,
    caps: ResultCaps,
) -> Result<RowSet, SqlError> {
    let sql = rewrite_placeholders(statement);
    let params = convert(params)?;
    let prepared = prepare(conn, &sql, &params).await?;
    let columns = columns_of(prepared.columns());
    let mut rows = bind(prepared.query(), params).fetch(&mut *conn);
    let (mut out, mut bytes) = (Vec::new(), 0usize);
    while let Some(row) = rows.next().await {
        let row = row.map_err(map_error)?;
        if out.len() >= caps.max_rows {
            return Err(SqlError::TooLarge(format!(
                "result exceeds {} rows; use open-cursor",
                caps.max_rows
            )));
        }
        let values = read_row(&row)?;
        bytes += values.iter().map(SqlValue::approx_size).sum::<usize>();
        if bytes > caps.max_bytes {
            return Err(SqlError::TooLarge(format!(
                "result exceeds {} bytes; use open-cursor",
                caps.max_bytes
            )));
        }
        out.push(values);
    }
    Ok(RowSet { columns, rows: out })
}

async fn execute_on(
    conn: &mut sqlx::PgConnection,
    statement: &str,
    params: Vec<SqlValue>,
) -> Result<u64, SqlError> {
    let sql = rewrite_placeholders(statement);
    let done = bind(sqlx::query(&sql), convert(params)?)
        .execute(&mut *conn)
        .await
        .map_err(map_error)?;
    Ok(done.rows_affected())
}

#[async_trait]
impl SqlBackend for PostgresDatabase {
    async fn query(
        &self,
        statement: String,
        params: Vec<SqlValue>,
        caps: ResultCaps,
    ) -> Result<RowSet, SqlError> {
        let mut conn = self.pool.acquire().await.map_err(map_error)?;
        query_on(&mut conn, &statement, params, caps).await
    }

    async fn execute(&self, statement: String, params: Vec<SqlValue>) -> Result<u64, SqlError> {
        let mut conn = self.pool.acquire().await.map_err(map_error)?;
        execute_on(&mut conn, &statement, params).await
    }

    async fn begin(&self) -> Result<Box<dyn SqlTransaction>, SqlError> {
        let tx = self.pool.begin().await.map_err(map_error)?;
        Ok(Box::new(PostgresTransaction { tx: Some(tx) }))
    }

    async fn open_cursor(
        &self,
        statement: String,
        params: Vec<SqlValue>,
    ) -> Result<Box<dyn SqlCursor>, SqlError> {
        let mut conn = self.pool.acquire().await.map_err(map_error)?;
        let (columns_tx, columns_rx) = tokio::sync::oneshot::channel();
        let (rows_tx, rows_rx) = mpsc::channel(CURSOR_BUFFER_ROWS);
        // The reader task owns the connection and stops when the cursor is
        // dropped (its sends fail); the pool then gets the connection back.
        tokio::spawn(async move {
            let sql = rewrite_placeholders(&statement);
            let params = match convert(params) {
                Ok(p) => p,
                Err(e) => return drop(columns_tx.send(Err(e))),
            };
            let prepared = match prepare(&mut conn, &sql, &params).await {
                Ok(p) => p,
                Err(e) => return drop(columns_tx.send(Err(e))),
            };
            let query = bind(prepared.query(), params);
            if columns_tx.send(Ok(columns_of(prepared.columns()))).is_err() {
                return;
            }
            let mut rows = query.fetch(&mut *conn);
            while let Some(row) = rows.next().await {
                let item = row.map_err(map_error).and_then(|r| read_row(&r));
                let failed = item.is_err();
                if rows_tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        let columns = columns_rx
            .await
            .map_err(|_| SqlError::Other("cursor reader stopped".into()))??;
        Ok(Box::new(super::ChannelCursor::new(columns, rows_rx)))
    }
}

struct PostgresTransaction {
    /// Dropping a sqlx transaction without commit rolls it back before the
    /// connection is reused.
    tx: Option<sqlx::Transaction<'static, Postgres>>,
}

#[async_trait]
impl SqlTransaction for PostgresTransaction {
    async fn query(
        &mut self,
        statement: String,
        params: Vec<SqlValue>,
        caps: ResultCaps,
    ) -> Result<RowSet, SqlError> {
        let tx = self.tx.as_mut().ok_or(SqlError::Closed)?;
        query_on(tx, &statement, params, caps).await
    }

    async fn execute(&mut self, statement: String, params: Vec<SqlValue>) -> Result<u64, SqlError> {
        let tx = self.tx.as_mut().ok_or(SqlError::Closed)?;
        execute_on(tx, &statement, params).await
    }

    async fn commit(mut self: Box<Self>) -> Result<(), SqlError> {
        self.tx
            .take()
            .ok_or(SqlError::Closed)?
            .commit()
            .await
            .map_err(map_error)
    }

    async fn rollback(mut self: Box<Self>) -> Result<(), SqlError> {
        self.tx
            .take()
            .ok_or(SqlError::Closed)?
            .rollback()
            .await
            .map_err(map_error)
    }
}

#[cfg(test)]
mod tests {
    use super::rewrite_placeholders as r;

    fn numeric(ndigits: i16, weight: i16, sign: u16, dscale: u16, digits: &[i16]) -> Vec<u8> {
        let mut b = Vec::new();
        for w in [ndigits, weight, sign as i16, dscale as i16]
            .into_iter()
            .chain(digits.iter().copied())
        {
            b.extend_from_slice(&w.to_be_bytes());
        }
        b
    }

    #[test]
    fn numeric_keeps_its_scale() {
        assert_eq!(
            super::numeric_text(&numeric(2, 0, 0, 2, &[12, 5000])).unwrap(),
            "12.50"
        );
        assert_eq!(
            super::numeric_text(&numeric(1, -1, 0x4000, 5, &[5])).unwrap(),
            "-0.00050"
        );
        assert_eq!(
            super::numeric_text(&numeric(2, 1, 0, 0, &[1, 2])).unwrap(),
            "10002"
        );
        assert_eq!(
            super::numeric_text(&numeric(0, 0, 0, 3, &[])).unwrap(),
            "0.000"
        );
    }

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
    }
}
