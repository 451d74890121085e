//! WIT glue for `berth:infra/sql`: grant checks, result caps, handle
//! bookkeeping and the mapping of [`SqlError`] to the guest's `error`.

use std::sync::Arc;

use tracing::Instrument as _;
use wasmtime::component::Resource;

use super::statement::refuse_transaction_control;
use super::{
    ResultCaps, RowSet as HostRowSet, SqlBackend, SqlColumn, SqlCursor, SqlError, SqlTransaction,
    SqlValue,
};
use crate::bindings::ports::sql::{self as wit, Column, Error, RowSet, Value};
use crate::metrics::Port;
use crate::ports::error_chain;
use crate::state::InstanceState;

/// Most rows one `cursor.next` returns.
const MAX_CURSOR_BATCH: usize = 10_000;

/// Most cursors one instance holds open: each holds a pooled connection
/// and, on SQLite, a blocking thread of the host's, for as long as the
/// guest keeps it, read or not.
pub const MAX_OPEN_CURSORS: usize = 16;

/// Most cursors an app's instances hold open together, so that one app's
/// cursors cannot take the threads and connections every tenant needs.
pub const MAX_APP_CURSORS: usize = 32;

/// Backs a guest `connection`.
pub struct ConnectionHandle {
    name: Arc<str>,
    backend: Arc<dyn SqlBackend>,
}

/// Backs a guest `transaction`; `None` once committed or rolled back.
pub struct TransactionHandle {
    db: Arc<str>,
    tx: Option<Box<dyn SqlTransaction>>,
    /// A statement of the transaction failed: it can only be rolled back.
    failed: bool,
}

/// What a statement of a transaction gets after an earlier one failed.
const FAILED_EARLIER: &str =
    "an earlier statement of this transaction failed, so it can only be rolled back";
/// What `commit` gets after a statement failed: the transaction was
/// rolled back instead.
const ROLLED_BACK: &str =
    "the transaction was rolled back, not committed: a statement in it failed";

/// Backs a guest `cursor`.
pub struct CursorHandle {
    db: Arc<str>,
    cursor: Box<dyn SqlCursor>,
    /// Its place among the app's [`MAX_APP_CURSORS`].
    _app_place: tokio::sync::OwnedSemaphorePermit,
}

type Res<T> = wasmtime::Result<Result<T, Error>>;

impl InstanceState {
    fn sql_caps(&self) -> ResultCaps {
        let p = &self.env.limits.payloads;
        ResultCaps {
            max_rows: p.sql_max_rows,
            max_bytes: p.sql_max_result_bytes,
        }
    }

    /// A place for one more cursor within the instance's and the app's
    /// bounds, or why there is none.
    fn cursor_place(&self) -> Result<tokio::sync::OwnedSemaphorePermit, SqlError> {
        if self.open_sql_cursors >= MAX_OPEN_CURSORS {
            return Err(SqlError::CursorLimit(format!(
                "an instance holds at most {MAX_OPEN_CURSORS} open cursors; drop one first"
            )));
        }
        self.env
            .allowance
            .sql_cursors
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                SqlError::CursorLimit(format!(
                    "the app's instances hold at most {MAX_APP_CURSORS} open cursors together; \
                     try again once one is dropped"
                ))
            })
    }

    fn sql_span(&self, op: &'static str) -> tracing::Span {
        tracing::debug_span!("sql", op, app = %self.env.app, component = %self.env.component)
    }

    /// The one place a [`SqlError`] becomes a guest error: logged in full,
    /// passed on with a message that holds no connection details.
    fn sql_error(&self, op: &str, e: SqlError) -> Error {
        tracing::debug!(app = %self.env.app, component = %self.env.component, op, error = %error_chain(&e), "sql error");
        let audit = |what: &str, subject: &str| {
            crate::audit::refused(&self.env.app, &self.env.component, what, subject)
        };
        match &e {
            SqlError::NotGranted(n) => audit("sql.not-granted", n),
            SqlError::Denied(m) => audit("sql.denied", m),
            SqlError::PoolExhausted(_) => self.env.counters.limit("connections"),
            SqlError::CursorLimit(_) => self.env.counters.limit("cursors"),
            SqlError::TooLarge(_) => self.env.counters.limit("payload"),
            _ => {}
        }
        match e {
            SqlError::NotGranted(n) => Error::NotGranted(n),
            SqlError::Constraint(m) => Error::Constraint(m),
            SqlError::Syntax(m) => Error::Syntax(m),
            SqlError::InvalidInput(m) => Error::InvalidInput(m),
            SqlError::UnsupportedType(m) => Error::UnsupportedType(m),
            SqlError::Timeout => Error::Timeout,
            SqlError::TooLarge(m) => Error::TooLarge(m),
            SqlError::Denied(m) => Error::Denied(m),
            SqlError::Conflict(m) => Error::Conflict(m),
            SqlError::Unavailable(_) | SqlError::ShortOfResources(_) => {
                Error::Unavailable("the database is unavailable".into())
            }
            SqlError::PoolExhausted(max) => Error::Unavailable(format!(
                "limit `connections` reached: all {max} connections of this app's pool are in use"
            )),
            SqlError::CursorLimit(m) => Error::Unavailable(format!("limit `cursors` reached: {m}")),
            SqlError::Closed => Error::Closed,
            SqlError::Other(m) => Error::Other(m),
        }
    }
}

fn from_wit(v: Value) -> SqlValue {
    match v {
        Value::Null => SqlValue::Null,
        Value::Boolean(b) => SqlValue::Boolean(b),
        Value::Int(i) => SqlValue::Int(i),
        Value::Float(f) => SqlValue::Float(f),
        Value::Text(s) => SqlValue::Text(s),
        Value::Blob(b) => SqlValue::Blob(b),
        Value::Timestamp(s) => SqlValue::Timestamp(s),
        Value::Date(s) => SqlValue::Date(s),
        Value::Json(s) => SqlValue::Json(s),
        Value::Uuid(s) => SqlValue::Uuid(s),
        Value::Decimal(s) => SqlValue::Decimal(s),
    }
}

fn to_wit(v: SqlValue) -> Value {
    match v {
        SqlValue::Null => Value::Null,
        SqlValue::Boolean(b) => Value::Boolean(b),
        SqlValue::Int(i) => Value::Int(i),
        SqlValue::Float(f) => Value::Float(f),
        SqlValue::Text(s) => Value::Text(s),
        SqlValue::Blob(b) => Value::Blob(b),
        SqlValue::Timestamp(s) => Value::Timestamp(s),
        SqlValue::Date(s) => Value::Date(s),
        SqlValue::Json(s) => Value::Json(s),
        SqlValue::Uuid(s) => Value::Uuid(s),
        SqlValue::Decimal(s) => Value::Decimal(s),
    }
}

fn columns_to_wit(columns: Vec<SqlColumn>) -> Vec<Column> {
    columns
        .into_iter()
        .map(|c| Column {
            name: c.name,
            type_name: c.type_name,
        })
        .collect()
}

fn rows_to_wit(rows: Vec<Vec<SqlValue>>) -> Vec<Vec<Value>> {
    rows.into_iter()
        .map(|r| r.into_iter().map(to_wit).collect())
        .collect()
}

fn rowset_to_wit(r: HostRowSet) -> RowSet {
    RowSet {
        columns: columns_to_wit(r.columns),
        rows: rows_to_wit(r.rows),
    }
}

fn params(p: Vec<Value>) -> Vec<SqlValue> {
    p.into_iter().map(from_wit).collect()
}

/// Bytes a statement and its parameters carry into the host, for metering.
fn statement_bytes(statement: &str, params: &[SqlValue]) -> usize {
    statement.len() + params.iter().map(SqlValue::approx_size).sum::<usize>()
}

/// Bytes rows carry back to the guest, for metering.
fn rows_bytes(rows: &[Vec<SqlValue>]) -> usize {
    rows.iter().flatten().map(SqlValue::approx_size).sum()
}

impl wit::Host for InstanceState {}

impl wit::HostConnection for InstanceState {
    async fn open(&mut self, name: String) -> Res<Resource<ConnectionHandle>> {
        let started = crate::metrics::Started::now();
        let backend =
            crate::ports::granted_backend(&self.env.grants.sql, &self.env.backends.sql, &name);
        let result = match backend {
            Some(backend) => Ok(self.table.push(ConnectionHandle {
                name: name.as_str().into(),
                backend,
            })?),
            None => Err(self.sql_error("open", SqlError::NotGranted(name.clone()))),
        };
        self.meter(Port::Sql, "open", &name, started, &result, 0, |_| 0);
        Ok(result)
    }

    async fn query(
        &mut self,
        this: Resource<ConnectionHandle>,
        statement: String,
        p: Vec<Value>,
    ) -> Res<RowSet> {
        let started = crate::metrics::Started::now();
        let handle = self.table.get(&this)?;
        let (backend, db) = (handle.backend.clone(), handle.name.clone());
        let caps = self.sql_caps();
        let p = params(p);
        let bytes_in = statement_bytes(&statement, &p);
        let r = match refuse_transaction_control(&statement) {
            Err(e) => Err(e),
            Ok(()) => {
                backend
                    .query(statement, p, caps)
                    .instrument(self.sql_span("query"))
                    .await
            }
        }
        .map_err(|e| self.sql_error("query", e));
        self.meter(Port::Sql, "query", &db, started, &r, bytes_in, |r| {
            rows_bytes(&r.rows)
        });
        Ok(r.map(rowset_to_wit))
    }

    async fn execute(
        &mut self,
        this: Resource<ConnectionHandle>,
        statement: String,
        p: Vec<Value>,
    ) -> Res<u64> {
        let started = crate::metrics::Started::now();
        let handle = self.table.get(&this)?;
        let (backend, db) = (handle.backend.clone(), handle.name.clone());
        let p = params(p);
        let bytes_in = statement_bytes(&statement, &p);
        let r = match refuse_transaction_control(&statement) {
            Err(e) => Err(e),
            Ok(()) => {
                backend
                    .execute(statement, p)
                    .instrument(self.sql_span("execute"))
                    .await
            }
        }
        .map_err(|e| self.sql_error("execute", e));
        self.meter(Port::Sql, "execute", &db, started, &r, bytes_in, |_| 0);
        Ok(r)
    }

    async fn begin(
        &mut self,
        this: Resource<ConnectionHandle>,
    ) -> Res<Resource<TransactionHandle>> {
        let started = crate::metrics::Started::now();
        let handle = self.table.get(&this)?;
        let (backend, db) = (handle.backend.clone(), handle.name.clone());
        let r = match backend.begin().instrument(self.sql_span("begin")).await {
            Ok(tx) => {
                let pushed = self.table.push(TransactionHandle {
                    failed: false,
                    db: db.clone(),
                    tx: Some(tx),
                })?;
                self.open_sql_transactions += 1;
                Ok(pushed)
            }
            Err(e) => Err(self.sql_error("begin", e)),
        };
        self.meter(Port::Sql, "begin", &db, started, &r, 0, |_| 0);
        Ok(r)
    }

    async fn open_cursor(
        &mut self,
        this: Resource<ConnectionHandle>,
        statement: String,
        p: Vec<Value>,
    ) -> Res<Resource<CursorHandle>> {
        let started = crate::metrics::Started::now();
        let handle = self.table.get(&this)?;
        let (backend, db) = (handle.backend.clone(), handle.name.clone());
        let caps = self.sql_caps();
        let p = params(p);
        let bytes_in = statement_bytes(&statement, &p);
        let opened = match refuse_transaction_control(&statement).and_then(|()| self.cursor_place())
        {
            Err(e) => Err(e),
            Ok(app_place) => backend
                .open_cursor(statement, p, caps)
                .instrument(self.sql_span("open-cursor"))
                .await
                .map(|cursor| (cursor, app_place)),
        };
        let r = match opened {
            Ok((cursor, app_place)) => {
                let pushed = self.table.push(CursorHandle {
                    db: db.clone(),
                    cursor,
                    _app_place: app_place,
                })?;
                self.open_sql_cursors += 1;
                Ok(pushed)
            }
            Err(e) => Err(self.sql_error("open-cursor", e)),
        };
        self.meter(Port::Sql, "open-cursor", &db, started, &r, bytes_in, |_| 0);
        Ok(r)
    }

    async fn drop(&mut self, rep: Resource<ConnectionHandle>) -> wasmtime::Result<()> {
        let handle = self.table.delete(rep)?;
        tracing::trace!(db = %handle.name, "sql connection closed");
        Ok(())
    }
}

impl wit::HostTransaction for InstanceState {
    async fn query(
        &mut self,
        this: Resource<TransactionHandle>,
        statement: String,
        p: Vec<Value>,
    ) -> Res<RowSet> {
        let started = crate::metrics::Started::now();
        let caps = self.sql_caps();
        let span = self.sql_span("tx.query");
        let p = params(p);
        let bytes_in = statement_bytes(&statement, &p);
        let handle = self.table.get_mut(&this)?;
        let db = handle.db.clone();
        let refused = refuse_transaction_control(&statement);
        let r = match (handle.tx.as_mut(), refused) {
            (None, _) => Err(SqlError::Closed),
            (Some(_), _) if handle.failed => Err(SqlError::Other(FAILED_EARLIER.into())),
            (Some(_), Err(e)) => Err(e),
            (Some(tx), Ok(())) => tx.query(statement, p, caps).instrument(span).await,
        };
        handle.failed |= r.is_err();
        let r = r.map_err(|e| self.sql_error("tx.query", e));
        self.meter(Port::Sql, "tx.query", &db, started, &r, bytes_in, |r| {
            rows_bytes(&r.rows)
        });
        Ok(r.map(rowset_to_wit))
    }

    async fn execute(
        &mut self,
        this: Resource<TransactionHandle>,
        statement: String,
        p: Vec<Value>,
    ) -> Res<u64> {
        let started = crate::metrics::Started::now();
        let span = self.sql_span("tx.execute");
        let p = params(p);
        let bytes_in = statement_bytes(&statement, &p);
        let handle = self.table.get_mut(&this)?;
        let db = handle.db.clone();
        let refused = refuse_transaction_control(&statement);
        let r = match (handle.tx.as_mut(), refused) {
            (None, _) => Err(SqlError::Closed),
            (Some(_), _) if handle.failed => Err(SqlError::Other(FAILED_EARLIER.into())),
            (Some(_), Err(e)) => Err(e),
            (Some(tx), Ok(())) => tx.execute(statement, p).instrument(span).await,
        };
        handle.failed |= r.is_err();
        let r = r.map_err(|e| self.sql_error("tx.execute", e));
        self.meter(Port::Sql, "tx.execute", &db, started, &r, bytes_in, |_| 0);
        Ok(r)
    }

    async fn commit(&mut self, this: Resource<TransactionHandle>) -> Res<()> {
        self.sql_finish(this, "tx.commit").await
    }

    async fn rollback(&mut self, this: Resource<TransactionHandle>) -> Res<()> {
        self.sql_finish(this, "tx.rollback").await
    }

    async fn drop(&mut self, rep: Resource<TransactionHandle>) -> wasmtime::Result<()> {
        // Dropping an unfinished transaction rolls it back (adapter Drop).
        let handle = self.table.delete(rep)?;
        if handle.tx.is_some() {
            self.open_sql_transactions -= 1;
        }
        Ok(())
    }
}

impl InstanceState {
    /// Commits (`tx.commit`) or rolls back (`tx.rollback`) a transaction.
    /// A transaction with a failed statement is rolled back even when asked
    /// to commit, on every engine: Postgres can commit nothing after an
    /// error (its `COMMIT` then rolls back, and says so only in its command
    /// tag), and MySQL and SQLite are held to the same rule so that a guest
    /// behaves the same on each.
    async fn sql_finish(&mut self, this: Resource<TransactionHandle>, op: &'static str) -> Res<()> {
        let started = crate::metrics::Started::now();
        let span = self.sql_span(op);
        let handle = self.table.get_mut(&this)?;
        let db = handle.db.clone();
        let failed = handle.failed;
        let taken = handle.tx.take();
        if taken.is_some() {
            // Finished (or, cut off half-way, rolled back by its Drop).
            self.open_sql_transactions -= 1;
        }
        let r = match taken {
            None => Err(SqlError::Closed),
            Some(tx) if op == "tx.commit" && failed => {
                // Its own failure, if any, leaves the rollback queued on
                // the connection (the adapters' `Drop`).
                let _ = tx.rollback().instrument(span).await;
                Err(SqlError::Other(ROLLED_BACK.into()))
            }
            Some(tx) if op == "tx.commit" => tx.commit().instrument(span).await,
            Some(tx) => tx.rollback().instrument(span).await,
        };
        let r = r.map_err(|e| self.sql_error(op, e));
        self.meter(Port::Sql, op, &db, started, &r, 0, |_| 0);
        Ok(r)
    }
}

impl wit::HostCursor for InstanceState {
    async fn columns(&mut self, this: Resource<CursorHandle>) -> wasmtime::Result<Vec<Column>> {
        Ok(columns_to_wit(self.table.get(&this)?.cursor.columns()))
    }

    async fn next(&mut self, this: Resource<CursorHandle>, max_rows: u32) -> Res<Vec<Vec<Value>>> {
        let started = crate::metrics::Started::now();
        let span = self.sql_span("cursor.next");
        let max = (max_rows as usize).clamp(1, MAX_CURSOR_BATCH);
        let max_bytes = self.sql_caps().max_bytes;
        let handle = self.table.get_mut(&this)?;
        let db = handle.db.clone();
        let r = handle.cursor.next(max, max_bytes).instrument(span).await;
        let r = r.map_err(|e| self.sql_error("cursor.next", e));
        self.meter(Port::Sql, "cursor.next", &db, started, &r, 0, |rows| {
            rows_bytes(rows)
        });
        Ok(r.map(rows_to_wit))
    }

    async fn drop(&mut self, rep: Resource<CursorHandle>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        self.open_sql_cursors -= 1;
        Ok(())
    }
}
