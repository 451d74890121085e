//! WIT glue for `berth:infra/sql`: grant checks, result caps, handle
//! bookkeeping and the mapping of [`SqlError`] to the guest's `error`.

use std::sync::Arc;

use tracing::Instrument as _;
use wasmtime::component::Resource;

use super::{
    ResultCaps, RowSet as HostRowSet, SqlBackend, SqlColumn, SqlCursor, SqlError, SqlTransaction,
    SqlValue,
};
use crate::bindings::ports::sql::{self as wit, Column, Error, RowSet, Value};
use crate::ports::error_chain;
use crate::state::InstanceState;

/// Most rows one `cursor.next` returns.
const MAX_CURSOR_BATCH: usize = 10_000;

/// Backs a guest `connection`.
pub struct ConnectionHandle {
    name: String,
    backend: Arc<dyn SqlBackend>,
}

/// Backs a guest `transaction`; `None` once committed or rolled back.
pub struct TransactionHandle {
    tx: Option<Box<dyn SqlTransaction>>,
}

/// Backs a guest `cursor`.
pub struct CursorHandle {
    cursor: Box<dyn SqlCursor>,
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
            SqlError::Unavailable(_) => Error::Unavailable("the database is unavailable".into()),
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

impl wit::Host for InstanceState {}

impl wit::HostConnection for InstanceState {
    async fn open(&mut self, name: String) -> Res<Resource<ConnectionHandle>> {
        if !self.env.grants.sql.contains(&name) {
            return Ok(Err(self.sql_error("open", SqlError::NotGranted(name))));
        }
        let Some(backend) = self.env.backends.sql.get(&name).cloned() else {
            return Ok(Err(self.sql_error("open", SqlError::NotGranted(name))));
        };
        Ok(Ok(self.table.push(ConnectionHandle { name, backend })?))
    }

    async fn query(
        &mut self,
        this: Resource<ConnectionHandle>,
        statement: String,
        p: Vec<Value>,
    ) -> Res<RowSet> {
        let backend = self.table.get(&this)?.backend.clone();
        let caps = self.sql_caps();
        let r = backend
            .query(statement, params(p), caps)
            .instrument(self.sql_span("query"))
            .await;
        Ok(r.map(rowset_to_wit).map_err(|e| self.sql_error("query", e)))
    }

    async fn execute(
        &mut self,
        this: Resource<ConnectionHandle>,
        statement: String,
        p: Vec<Value>,
    ) -> Res<u64> {
        let backend = self.table.get(&this)?.backend.clone();
        let r = backend
            .execute(statement, params(p))
            .instrument(self.sql_span("execute"))
            .await;
        Ok(r.map_err(|e| self.sql_error("execute", e)))
    }

    async fn begin(
        &mut self,
        this: Resource<ConnectionHandle>,
    ) -> Res<Resource<TransactionHandle>> {
        let backend = self.table.get(&this)?.backend.clone();
        match backend.begin().instrument(self.sql_span("begin")).await {
            Ok(tx) => Ok(Ok(self.table.push(TransactionHandle { tx: Some(tx) })?)),
            Err(e) => Ok(Err(self.sql_error("begin", e))),
        }
    }

    async fn open_cursor(
        &mut self,
        this: Resource<ConnectionHandle>,
        statement: String,
        p: Vec<Value>,
    ) -> Res<Resource<CursorHandle>> {
        let backend = self.table.get(&this)?.backend.clone();
        match backend
            .open_cursor(statement, params(p))
            .instrument(self.sql_span("open-cursor"))
            .await
        {
            Ok(cursor) => Ok(Ok(self.table.push(CursorHandle { cursor })?)),
            Err(e) => Ok(Err(self.sql_error("open-cursor", e))),
        }
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
        let caps = self.sql_caps();
        let span = self.sql_span("tx.query");
        let Some(tx) = self.table.get_mut(&this)?.tx.as_mut() else {
            return Ok(Err(Error::Closed));
        };
        let r = tx.query(statement, params(p), caps).instrument(span).await;
        Ok(r.map(rowset_to_wit)
            .map_err(|e| self.sql_error("tx.query", e)))
    }

    async fn execute(
        &mut self,
        this: Resource<TransactionHandle>,
        statement: String,
        p: Vec<Value>,
    ) -> Res<u64> {
        let span = self.sql_span("tx.execute");
        let Some(tx) = self.table.get_mut(&this)?.tx.as_mut() else {
            return Ok(Err(Error::Closed));
        };
        let r = tx.execute(statement, params(p)).instrument(span).await;
        Ok(r.map_err(|e| self.sql_error("tx.execute", e)))
    }

    async fn commit(&mut self, this: Resource<TransactionHandle>) -> Res<()> {
        let span = self.sql_span("tx.commit");
        let Some(tx) = self.table.get_mut(&this)?.tx.take() else {
            return Ok(Err(Error::Closed));
        };
        Ok(tx
            .commit()
            .instrument(span)
            .await
            .map_err(|e| self.sql_error("tx.commit", e)))
    }

    async fn rollback(&mut self, this: Resource<TransactionHandle>) -> Res<()> {
        let span = self.sql_span("tx.rollback");
        let Some(tx) = self.table.get_mut(&this)?.tx.take() else {
            return Ok(Err(Error::Closed));
        };
        Ok(tx
            .rollback()
            .instrument(span)
            .await
            .map_err(|e| self.sql_error("tx.rollback", e)))
    }

    async fn drop(&mut self, rep: Resource<TransactionHandle>) -> wasmtime::Result<()> {
        // Dropping an unfinished transaction rolls it back (adapter Drop).
        self.table.delete(rep)?;
        Ok(())
    }
}

impl wit::HostCursor for InstanceState {
    async fn columns(&mut self, this: Resource<CursorHandle>) -> wasmtime::Result<Vec<Column>> {
        Ok(columns_to_wit(self.table.get(&this)?.cursor.columns()))
    }

    async fn next(&mut self, this: Resource<CursorHandle>, max_rows: u32) -> Res<Vec<Vec<Value>>> {
        let span = self.sql_span("cursor.next");
        let max = (max_rows as usize).clamp(1, MAX_CURSOR_BATCH);
        let cursor = &mut self.table.get_mut(&this)?.cursor;
        let r = cursor.next(max).instrument(span).await;
        Ok(r.map(rows_to_wit)
            .map_err(|e| self.sql_error("cursor.next", e)))
    }

    async fn drop(&mut self, rep: Resource<CursorHandle>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        Ok(())
    }
}
