//! Embedded SQLite adapter: one database file per logical name per app.
//!
//! rusqlite is synchronous, so every statement runs on tokio's blocking pool
//! with a connection checked out of a small pool. A connection goes back to
//! the pool only in autocommit state: whatever left it inside a transaction
//! (a dropped transaction, a trapped guest, a cancelled call) is rolled back
//! first. `ATTACH`/`DETACH` are refused by an authorizer so a guest cannot
//! reach another file; extension loading is never enabled. The authorizer
//! also refuses every `PRAGMA` but read-only introspection (see
//! `sqlite_guard`): some pragmas change every SQLite connection of the
//! process, others the pooled connection the next caller gets. A guest's
//! statement is interrupted (`timeout`) once it runs past the pool's
//! statement timeout, and waiting for a connection is bounded too.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::config::DbConfig;
use rusqlite::hooks::AuthContext;
use rusqlite::limits::Limit;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::sqlite_guard::{Armed, Deadline, GiveUpOnDrop, authorize, with_deadline};
use super::{
    CappedRows, ResultCaps, RowSet, SqlBackend, SqlCursor, SqlError, SqlTransaction, SqlValue,
};
use values::{columns_of, held_size_at_least, read_row, to_sqlite_params};

/// Connections kept per database file.
const POOL_SIZE: usize = 8;
/// How long a guest's statement (a cursor: each step to its next row) may
/// run before it is interrupted and gives `timeout`. SQLite has no limit of
/// its own; this is the server engines' default `statement_timeout_ms`.
pub const SQLITE_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a caller waits for one of a pool's connections before it gets
/// [`SqlError::PoolExhausted`]: the server engines' default
/// `connect_timeout_ms`, and the connections' busy timeout.
pub const SQLITE_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most SQLite cursors open in the whole host: each one's reader holds a
/// blocking thread, of tokio's 512, until the cursor is dropped.
const MAX_READER_THREADS: usize = 256;
static READER_THREADS: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(MAX_READER_THREADS);

/// The time limits of a [`SqlitePool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteTimeouts {
    /// Longest a guest's statement runs before it is interrupted.
    pub statement: Duration,
    /// Longest wait for a pooled connection.
    pub acquire: Duration,
}

impl Default for SqliteTimeouts {
    fn default() -> Self {
        SqliteTimeouts {
            statement: SQLITE_STATEMENT_TIMEOUT,
            acquire: SQLITE_ACQUIRE_TIMEOUT,
        }
    }
}

/// How long a pooled connection beyond the latest may stay idle: one idle
/// longer is closed when another goes back to the pool. Each holds file
/// descriptors (the database and its WAL) of the host's, which every
/// tenant shares.
const IDLE_CLOSE: Duration = Duration::from_secs(60);

/// A small pool of connections to one SQLite file.
pub struct SqlitePool {
    path: PathBuf,
    /// Idle connections with when each went idle, the latest last.
    idle: Mutex<Vec<(Connection, std::time::Instant)>>,
    permits: Arc<Semaphore>,
    timeouts: SqliteTimeouts,
    /// Most bytes the database file may hold (`[app_limits] store_mb`).
    max_bytes: Option<u64>,
}

impl SqlitePool {
    /// Opens (creating if needed) the database at `path`, checking that it
    /// can be opened now so configuration errors surface at load.
    pub fn open(path: &Path) -> Result<Arc<SqlitePool>, SqlError> {
        SqlitePool::open_with(path, SqliteTimeouts::default(), None)
    }

    /// [`SqlitePool::open`] with other time limits, and the file bounded
    /// to `max_bytes` (a write past it fails as on a full disk).
    pub fn open_with(
        path: &Path,
        timeouts: SqliteTimeouts,
        max_bytes: Option<u64>,
    ) -> Result<Arc<SqlitePool>, SqlError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                SqlError::Unavailable(format!("cannot create database directory: {e}"))
            })?;
        }
        let first = open_connection(path, max_bytes)?;
        Ok(Arc::new(SqlitePool {
            path: path.to_path_buf(),
            idle: Mutex::new(vec![(first, std::time::Instant::now())]),
            permits: Arc::new(Semaphore::new(POOL_SIZE)),
            timeouts,
            max_bytes,
        }))
    }

    /// The pool's time limits.
    pub fn timeouts(&self) -> SqliteTimeouts {
        self.timeouts
    }

    /// Checks out a connection, waiting while all are busy, up to the
    /// acquire timeout (then [`SqlError::PoolExhausted`]).
    pub async fn get(self: &Arc<Self>) -> Result<PooledConnection, SqlError> {
        let acquire = self.permits.clone().acquire_owned();
        let permit = match tokio::time::timeout(self.timeouts.acquire, acquire).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(SqlError::Unavailable("database pool closed".into())),
            Err(_) => return Err(SqlError::PoolExhausted(POOL_SIZE as u32)),
        };
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some((c, _)) => c,
            None => open_connection(&self.path, self.max_bytes)?,
        };
        Ok(PooledConnection {
            conn: Some(conn),
            pool: self.clone(),
            _permit: permit,
        })
    }

    /// Runs `f` with a pooled connection on the blocking thread pool.
    pub async fn with_conn<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Connection) -> Result<R, SqlError> + Send + 'static,
    ) -> Result<R, SqlError> {
        let mut pooled = self.get().await?;
        blocking(move || f(pooled.conn())).await
    }
}

/// A connection on loan from a [`SqlitePool`].
pub struct PooledConnection {
    conn: Option<Connection>,
    pool: Arc<SqlitePool>,
    _permit: OwnedSemaphorePermit,
}

impl PooledConnection {
    /// The connection.
    pub fn conn(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("connection present until drop")
    }
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if !conn.is_autocommit() {
            // A transaction was left open (dropped, trapped or cancelled):
            // undo it so the next user starts clean.
            if conn.execute_batch("ROLLBACK").is_err() {
                return; // discard a connection we cannot clean
            }
        }
        let now = std::time::Instant::now();
        let stale = {
            let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.push((conn, now));
            take_stale(&mut idle, now, IDLE_CLOSE)
        };
        drop(stale); // closed outside the lock
    }
}

/// Takes out of `idle` (the least recently used first) the entries idle
/// for longer than `after`, always leaving the latest.
pub(crate) fn take_stale<T>(
    idle: &mut Vec<(T, std::time::Instant)>,
    now: std::time::Instant,
    after: Duration,
) -> Vec<(T, std::time::Instant)> {
    let keep_last = idle.len().saturating_sub(1);
    let stale = idle[..keep_last]
        .iter()
        .take_while(|(_, since)| now.duration_since(*since) > after)
        .count();
    idle.drain(..stale).collect()
}

/// The default of [`limit_memory`] (`[engine] sqlite_memory_mb`).
pub const DEFAULT_MEMORY_BYTES: u64 = 1 << 30;

/// Bounds the memory all of the process's SQLite databases allocate
/// together (SQLite's heap limits are the process's): past half of `bytes`
/// SQLite trims its page caches, and an allocation past `bytes` fails, so
/// a statement making huge values (many columns of `randomblob(…)`) gets
/// `unavailable` where the host would have run out of memory. SQLite only
/// ever lowers its hard limit, so the lowest asked for holds.
pub fn limit_memory(bytes: u64) -> Result<(), SqlError> {
    let conn = Connection::open_in_memory().map_err(map_error)?;
    let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
    for (pragma, value) in [("soft_heap_limit", bytes / 2), ("hard_heap_limit", bytes)] {
        conn.query_row(&format!("PRAGMA {pragma} = {value}"), [], |_| Ok(()))
            .map_err(map_error)?;
    }
    Ok(())
}

fn open_connection(path: &Path, max_bytes: Option<u64>) -> Result<Connection, SqlError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| SqlError::Unavailable(format!("cannot open database: {e}")))?;
    // The host's own settings, made before the authorizer is installed: it
    // refuses these pragmas to everyone after.
    // The busy timeout first, so that switching to WAL waits for another
    // process's write rather than failing; `synchronous` is FULL whatever
    // the SQLite build's default, so a committed write survives a power
    // cut (docs/operating.md).
    conn.execute_batch(
        "PRAGMA busy_timeout=5000; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
         PRAGMA foreign_keys=ON;",
    )
    .map_err(map_error)?;
    if let Some(max) = max_bytes {
        errors::bound_size(&conn, max)?;
    }
    // Defensive mode: no `writable_schema`, no `journal_mode=OFF`, no direct
    // writes to shadow tables, so SQL cannot corrupt the file.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)
        .map_err(map_error)?;
    conn.authorizer(Some(|ctx: AuthContext<'_>| authorize(ctx)));
    Ok(conn)
}

async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, SqlError> + Send + 'static,
) -> Result<R, SqlError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SqlError::Other(format!("database task failed: {e}")))?
}

/// `statement` prepared, refusing a second statement after it: SQLite
/// prepares the first and would leave the rest unrun without a word
/// (`INSERT …; INSERT …` answering `Ok(1)`), where Postgres and MySQL
/// refuse it.
fn prepare_one<'c>(
    conn: &'c Connection,
    statement: &str,
) -> Result<rusqlite::Statement<'c>, SqlError> {
    let mut batch = rusqlite::Batch::new(conn, statement);
    let first = batch
        .next()
        .map_err(map_error)?
        .ok_or_else(|| SqlError::Syntax("the statement is empty".into()))?;
    match batch.next() {
        Ok(None) => Ok(first),
        Ok(Some(_)) | Err(_) => Err(SqlError::InvalidInput("only one statement per call".into())),
    }
}

/// The longest value a `query` or cursor reads or makes on SQLite when its
/// result cap is smaller (see [`ValueCap`]).
pub const SQLITE_VALUE_FLOOR: usize = 64 << 20;

/// While it lives, the longest string, blob or row SQLite reads or makes
/// on `conn` is the result cap's byte count, or [`SQLITE_VALUE_FLOOR`] if
/// that is more. A value made whole (`SELECT randomblob(900000000)`)
/// would be copied into the host before the cap is checked; SQLite refuses
/// it instead (`too-large`). The floor leaves stored values under it
/// readable by functions (`substr(doc, 1, 100)`, `doc LIKE ?`) however
/// small the cap. Restored when dropped: the pooled connection serves
/// calls with other caps.
struct ValueCap<'c> {
    conn: &'c Connection,
    previous: i32,
}

impl<'c> ValueCap<'c> {
    fn new(conn: &'c Connection, caps: ResultCaps) -> Self {
        let cap = i32::try_from(caps.max_bytes.max(SQLITE_VALUE_FLOOR)).unwrap_or(i32::MAX);
        let previous = conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, cap);
        ValueCap { conn, previous }
    }
}

impl Drop for ValueCap<'_> {
    fn drop(&mut self) {
        self.conn
            .set_limit(Limit::SQLITE_LIMIT_LENGTH, self.previous);
    }
}

fn run_query(
    conn: &Connection,
    statement: &str,
    params: Vec<SqlValue>,
    caps: ResultCaps,
) -> Result<RowSet, SqlError> {
    let _value_cap = ValueCap::new(conn, caps);
    let mut stmt = prepare_one(conn, statement)?;
    let columns = columns_of(&stmt);
    let params = to_sqlite_params(params)?;
    let mut rows = stmt
        .query(rusqlite::params_from_iter(params))
        .map_err(map_error)?;
    let mut out = CappedRows::new(caps);
    while let Some(row) = rows.next().map_err(|e| map_error_on(conn, e))? {
        out.room_for(held_size_at_least(row, columns.len()))?;
        out.push(read_row(row, &columns)?)?;
    }
    Ok(RowSet {
        columns,
        rows: out.into_rows(),
    })
}

fn run_execute(conn: &Connection, statement: &str, params: Vec<SqlValue>) -> Result<u64, SqlError> {
    let mut stmt = prepare_one(conn, statement)?;
    let params = to_sqlite_params(params)?;
    let n = stmt
        .execute(rusqlite::params_from_iter(params))
        .map_err(|e| map_error_on(conn, e))?;
    Ok(n as u64)
}

/// One logical database in a SQLite file.
pub struct SqliteDatabase {
    pool: Arc<SqlitePool>,
}

impl SqliteDatabase {
    /// Opens the database file at `path`, with the default time limits.
    pub fn open(path: &Path) -> Result<SqliteDatabase, SqlError> {
        SqliteDatabase::open_with(path, SqliteTimeouts::default())
    }

    /// Opens the database file at `path` with the given time limits.
    pub fn open_with(path: &Path, timeouts: SqliteTimeouts) -> Result<SqliteDatabase, SqlError> {
        SqliteDatabase::open_bounded(path, timeouts, None)
    }

    /// [`SqliteDatabase::open_with`], the file bounded to `max_bytes`
    /// (`[app_limits] store_mb`).
    pub fn open_bounded(
        path: &Path,
        timeouts: SqliteTimeouts,
        max_bytes: Option<u64>,
    ) -> Result<SqliteDatabase, SqlError> {
        Ok(SqliteDatabase {
            pool: SqlitePool::open_with(path, timeouts, max_bytes)?,
        })
    }

    fn statement_timeout(&self) -> Duration {
        self.pool.timeouts().statement
    }
}

#[async_trait]
impl SqlBackend for SqliteDatabase {
    async fn query(
        &self,
        statement: String,
        params: Vec<SqlValue>,
        caps: ResultCaps,
    ) -> Result<RowSet, SqlError> {
        let limit = self.statement_timeout();
        let call = GiveUpOnDrop::new();
        let given_up = call.given_up();
        self.pool
            .with_conn(move |c| {
                with_deadline(c, limit, given_up, |c| {
                    run_query(c, &statement, params, caps)
                })
            })
            .await
    }

    async fn execute(&self, statement: String, params: Vec<SqlValue>) -> Result<u64, SqlError> {
        let limit = self.statement_timeout();
        let call = GiveUpOnDrop::new();
        let given_up = call.given_up();
        self.pool
            .with_conn(move |c| {
                with_deadline(c, limit, given_up, |c| run_execute(c, &statement, params))
            })
            .await
    }

    async fn begin(&self) -> Result<Box<dyn SqlTransaction>, SqlError> {
        let mut pooled = self.pool.get().await?;
        let pooled = blocking(move || {
            pooled.conn().execute_batch("BEGIN").map_err(map_error)?;
            Ok(pooled)
        })
        .await?;
        Ok(Box::new(SqliteTransaction {
            conn: Some(pooled),
            statement_timeout: self.statement_timeout(),
            rolled_back: false,
        }))
    }

    async fn open_cursor(
        &self,
        statement: String,
        params: Vec<SqlValue>,
        caps: ResultCaps,
    ) -> Result<Box<dyn SqlCursor>, SqlError> {
        let limit = self.statement_timeout();
        let mut pooled = self.pool.get().await?;
        // Taken once the connection is: a wait for one holds no thread.
        // The reader holds a blocking thread for as long as the cursor is
        // open; the host's other blocking work (every tenant's SQLite
        // calls, files, name lookups) needs the rest.
        let reader_place = READER_THREADS.try_acquire().map_err(|_| {
            SqlError::CursorLimit(format!(
                "the host's SQLite cursors ({MAX_READER_THREADS}) are all open; try again later"
            ))
        })?;
        let (columns_tx, columns_rx) = tokio::sync::oneshot::channel();
        let (rows_tx, rows_rx) = super::cursor_channel();
        // The reader owns the connection and statement on a blocking thread and
        // stops as soon as the cursor is dropped (its sends fail, and a
        // step under way is interrupted).
        let cursor_gone = rows_tx.closed_signal();
        tokio::task::spawn_blocking(move || {
            let _reader_place = reader_place;
            let conn: &Connection = pooled.conn();
            // Each step to the next row gets the whole limit, so a guest
            // that reads slowly does not use it up; the handler is removed
            // (after the statement) before the connection goes back.
            let deadline = Deadline::new(limit).or_given_up(cursor_gone);
            let _armed = Armed::new(conn, deadline.clone());
            let _value_cap = ValueCap::new(conn, caps);
            let mut stmt = match prepare_one(conn, &statement) {
                Ok(s) => s,
                Err(e) => return drop(columns_tx.send(Err(e))),
            };
            let columns = columns_of(&stmt);
            let params = match to_sqlite_params(params) {
                Ok(p) => p,
                Err(e) => return drop(columns_tx.send(Err(e))),
            };
            let mut rows = match stmt.query(rusqlite::params_from_iter(params)) {
                Ok(r) => r,
                Err(e) => return drop(columns_tx.send(Err(map_error_on(conn, e)))),
            };
            if columns_tx.send(Ok(columns.clone())).is_err() {
                return;
            }
            loop {
                deadline.rearm();
                let item = match rows.next() {
                    Ok(Some(row)) => read_row(row, &columns),
                    Ok(None) => return,
                    // A writing statement (`INSERT … RETURNING`) may reach
                    // the database's bound.
                    Err(e) => Err(map_error_on(conn, e)),
                };
                let failed = item.is_err();
                if rows_tx.blocking_send(item).is_err() || failed {
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

struct SqliteTransaction {
    conn: Option<PooledConnection>,
    /// The limit of each of the guest's statements in it.
    statement_timeout: Duration,
    /// SQLite rolled the transaction back itself (a full database or
    /// disk, an interrupted statement, …): its statements are refused
    /// from then on rather than run outside it, one by one committed.
    rolled_back: bool,
}

impl SqliteTransaction {
    /// Runs `f` on the transaction's connection on the blocking pool. If the
    /// call is cancelled, the connection is dropped with the closure and
    /// rolled back by [`PooledConnection`]'s drop.
    async fn run<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Connection) -> Result<R, SqlError> + Send + 'static,
    ) -> Result<R, SqlError> {
        if self.rolled_back {
            return Err(SqlError::Other(super::ROLLED_BACK.into()));
        }
        let mut pooled = self.conn.take().ok_or(SqlError::Closed)?;
        let (pooled, result, ended) = tokio::task::spawn_blocking(move || {
            let r = f(pooled.conn());
            let ended = pooled.conn().is_autocommit();
            (pooled, r, ended)
        })
        .await
        .map_err(|e| SqlError::Other(format!("database task failed: {e}")))?;
        self.conn = Some(pooled);
        match result {
            Err(e) if ended => {
                self.rolled_back = true;
                Err(e.ending_transaction())
            }
            other => other,
        }
    }
}

#[async_trait]
impl SqlTransaction for SqliteTransaction {
    async fn query(
        &mut self,
        statement: String,
        params: Vec<SqlValue>,
        caps: ResultCaps,
    ) -> Result<RowSet, SqlError> {
        let limit = self.statement_timeout;
        let call = GiveUpOnDrop::new();
        let given_up = call.given_up();
        self.run(move |c| {
            with_deadline(c, limit, given_up, |c| {
                run_query(c, &statement, params, caps)
            })
        })
        .await
    }

    async fn execute(&mut self, statement: String, params: Vec<SqlValue>) -> Result<u64, SqlError> {
        let limit = self.statement_timeout;
        let call = GiveUpOnDrop::new();
        let given_up = call.given_up();
        self.run(move |c| with_deadline(c, limit, given_up, |c| run_execute(c, &statement, params)))
            .await
    }

    async fn commit(mut self: Box<Self>) -> Result<(), SqlError> {
        self.run(|c| c.execute_batch("COMMIT").map_err(map_error))
            .await
    }

    async fn rollback(mut self: Box<Self>) -> Result<(), SqlError> {
        if self.rolled_back {
            return Ok(());
        }
        self.run(|c| c.execute_batch("ROLLBACK").map_err(map_error))
            .await
    }
}

#[path = "sqlite_values.rs"]
mod values;

#[path = "sqlite_errors.rs"]
mod errors;
pub use errors::{map_error, map_error_on};

#[cfg(test)]
#[path = "sqlite_tests.rs"]
mod tests;
