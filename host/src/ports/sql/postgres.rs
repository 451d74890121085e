//! Postgres adapter (sqlx): a connection pool owned by the host per logical
//! database; an invocation borrows pooled connections and never opens one.
//!
//! Values are mapped by the column's Postgres type: integers, floats, bool,
//! text, bytea, numeric (exact decimal text), timestamptz/timestamp/date,
//! json/jsonb (text as stored) and uuid; other types (arrays, intervals, …)
//! give `unsupported-type`. Statements may use `?` placeholders (rewritten
//! to `$n` outside literals and comments) or `$n` ones. A statement with
//! parameters is sent after a comment naming their types, so sqlx's
//! per-connection statement cache (keyed by text) never reuses a statement
//! prepared for other types (see `pg_values::statement_text`). A server-side
//! `statement_timeout` bounds every statement, and the statement watchdog
//! (see [`super::watchdog`]) holds statements to it even where a guest
//! changed its session's setting.

use std::str::FromStr as _;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgTransactionManager;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{
    ConnectOptions as _, Connection as _, Postgres, Row as _, Statement as _,
    TransactionManager as _,
};
use tokio::time::timeout;

use super::{
    CappedRows, ResultCaps, RowSet, SqlBackend, SqlCursor, SqlError, SqlTransaction, SqlValue,
};
use crate::secret::Secret;

use super::pg_sessions::{PgSessions, THIS_BACKEND};
use super::watchdog::{self, SessionId, SessionIds, Watchdog};

use super::pg_tenancy::Provisioning;
use super::pg_values::{
    bind, columns_of, convert, held_size_at_least, param_types, prepare, read_row, statement_text,
};
pub use super::placeholders::rewrite_placeholders;
pub use errors::map_error;

#[path = "pg_errors.rs"]
mod errors;
use super::pool_check::PoolCheck;
use super::statement::{Dialect, changes_session};

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
    /// With role-per-app tenancy: the role the pool logs in as, provisioned
    /// first with the URL's (admin) login. Its schema is the search path.
    pub tenant: Option<TenantLogin>,
    /// A dry run (`berth check`): a tenant's provisioning is tried in a
    /// transaction rolled back ([`Provisioning::TryAndRollBack`]), and the
    /// pool logs in with the URL's login, since the role may not exist.
    pub dry_run: bool,
}

/// A tenant's own login (see [`super::pg_tenancy`]).
#[derive(Debug, Clone)]
pub struct TenantLogin {
    /// Role, and schema, name.
    pub role: String,
    /// Its derived password.
    pub password: Secret,
    /// Which app's database it serves ([`super::pg_tenancy::tenant_owner`]),
    /// recorded on the role so two names sharing a role are told apart.
    pub owner: String,
}

/// One logical database served by a Postgres pool.
pub struct PostgresDatabase {
    pool: sqlx::PgPool,
    max_connections: u32,
    /// The pool's sessions and its last statement, for the watchdog.
    session_ids: SessionIds,
    /// When a connection is pinged before it is lent.
    check: PoolCheck,
    /// How long a statement may go unanswered before the server is taken
    /// for gone ([`watchdog::answered_by`]).
    answer_within: Duration,
    /// Stops with the database.
    _watchdog: Watchdog,
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
        if let Some(tenant) = &s.tenant {
            let mode = if s.dry_run {
                Provisioning::TryAndRollBack
            } else {
                Provisioning::Apply
            };
            super::pg_tenancy::provision(&options, tenant, mode).await?;
            if !s.dry_run {
                options = options
                    .username(&tenant.role)
                    .password(tenant.password.expose());
            }
        }
        let timeout_ms = s.statement_timeout.as_millis().to_string();
        let mut settings = vec![("statement_timeout", timeout_ms)];
        let schema = s.tenant.as_ref().map(|t| &t.role).or(s.schema.as_ref());
        if let Some(schema) = schema {
            settings.push((
                "search_path",
                format!("\"{}\"", schema.replace('"', "\"\"")),
            ));
        }
        // sqlx would log statements over a second at `warn`, with their
        // text: a tenant's literals in the operator's log.
        options = options
            .options(settings)
            .application_name(&s.application_name)
            .disable_statement_logging();
        let max_connections = s.max_connections.max(1);
        let session_ids = SessionIds::default();
        let noted = session_ids.clone();
        let check = PoolCheck::default();
        let pinging = check.clone();
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(s.min_connections)
            .acquire_timeout(s.connect_timeout)
            // Not on every lending (a second round trip per statement):
            // see `pool_check`. One that does not answer is closed, and
            // the pool opens another.
            .test_before_acquire(false)
            .before_acquire(move |conn, meta| {
                let ping = pinging.should_ping(meta.idle_for);
                Box::pin(async move { Ok(!ping || conn.ping().await.is_ok()) })
            })
            // Each new connection's backend, for the watchdog.
            .after_connect(move |conn, _meta| {
                let noted = noted.clone();
                Box::pin(async move {
                    let (pid, started): (i32, i64) =
                        sqlx::query_as(THIS_BACKEND).fetch_one(&mut *conn).await?;
                    if let Ok(pid) = SessionId::try_from(pid) {
                        noted.insert(pid, started);
                    }
                    Ok(())
                })
            })
            .connect_with(options.clone())
            .await
            .map_err(map_error)?;
        if s.tenant.is_none() {
            warn_if_login_reaches_the_server(&pool, &s.application_name).await;
        }
        let sessions = PgSessions {
            pool: pool.clone(),
            // Only the built-in names on its path, whatever the tenant's
            // schema holds (a later `-c` overrides the pool's).
            options: options
                .options([("search_path", "pg_catalog")])
                .application_name(&format!("{}:watchdog", s.application_name)),
            conn: None,
            pinned: false,
        };
        let watchdog = watchdog::spawn(
            session_ids.clone(),
            sessions,
            s.statement_timeout,
            s.application_name.clone(),
        );
        Ok(PostgresDatabase {
            pool,
            max_connections,
            session_ids,
            check,
            answer_within: watchdog::answered_by(s.statement_timeout),
            _watchdog: watchdog,
        })
    }

    /// Maps an error of acquiring a pooled connection: a time-out while
    /// every connection of the pool is checked out is the app's connection
    /// limit, anything else a database problem.
    fn acquire_error(&self, e: sqlx::Error) -> SqlError {
        let exhausted = self.pool.size() >= self.max_connections && self.pool.num_idle() == 0;
        match e {
            sqlx::Error::PoolTimedOut if exhausted => SqlError::PoolExhausted(self.max_connections),
            e => map_error(e),
        }
    }

    /// A pooled connection for `statement`, closed when dropped if the
    /// statement may change its session ([`close_if_changes_session`]).
    async fn acquire_for(&self, statement: &str) -> Result<PoolConnection<Postgres>, SqlError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| self.acquire_error(e))?;
        close_if_changes_session(&mut conn, statement);
        self.session_ids.pool_statement();
        Ok(conn)
    }

    /// The pool (for tests and benchmarks that compare against native sqlx).
    pub fn pool(&self) -> &sqlx::PgPool {
        &self.pool
    }
}

async fn query_on(
    conn: &mut sqlx::PgConnection,
    statement: &str,
    params: Vec<SqlValue>,
    caps: ResultCaps,
) -> Result<RowSet, SqlError> {
    let params = convert(params)?;
    let sql = statement_text(statement, &params);
    let types = param_types(&params);
    // sqlx prepares the statement (once per connection: it is cached) with
    // the bound parameters' types. The columns come with the first row; only
    // an empty result needs the statement itself, from the same cache. An
    // explicit prepare before every query cost a second cache lookup, a
    // copy of the statement and a boxed future: about 15 µs a query at p50
    // on a 2-vCPU VM (B4 in docs/benchmarks.md).
    let mut columns = None;
    let mut out = CappedRows::new(caps);
    {
        let mut rows = bind(sqlx::query(&sql), params).fetch(&mut *conn);
        while let Some(row) = rows.next().await {
            let row = row.map_err(map_error)?;
            if columns.is_none() {
                columns = Some(columns_of(row.columns()));
            }
            out.room_for(held_size_at_least(&row))?;
            out.push(read_row(&row)?)?;
        }
    }
    let columns = match columns {
        Some(columns) => columns,
        None => columns_of(prepare(conn, &sql, &types).await?.columns()),
    };
    Ok(RowSet {
        columns,
        rows: out.into_rows(),
    })
}

async fn execute_on(
    conn: &mut sqlx::PgConnection,
    statement: &str,
    params: Vec<SqlValue>,
) -> Result<u64, SqlError> {
    let params = convert(params)?;
    let sql = statement_text(statement, &params);
    let done = bind(sqlx::query(&sql), params)
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
        let mut conn = self.acquire_for(&statement).await?;
        let within = self.answer_within;
        let result = timeout(within, query_on(&mut conn, &statement, params, caps)).await;
        self.check.note(answered(&mut conn, result, within))
    }

    async fn execute(&self, statement: String, params: Vec<SqlValue>) -> Result<u64, SqlError> {
        let mut conn = self.acquire_for(&statement).await?;
        let within = self.answer_within;
        let result = timeout(within, execute_on(&mut conn, &statement, params)).await;
        self.check.note(answered(&mut conn, result, within))
    }

    async fn begin(&self) -> Result<Box<dyn SqlTransaction>, SqlError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| self.acquire_error(e))?;
        let begun = timeout(self.answer_within, async {
            PgTransactionManager::begin(&mut conn, None)
                .await
                .map_err(map_error)
        })
        .await;
        self.check
            .note(answered(&mut conn, begun, self.answer_within))?;
        Ok(Box::new(PostgresTransaction {
            conn: Some(conn),
            session_ids: self.session_ids.clone(),
            check: self.check.clone(),
            answer_within: self.answer_within,
        }))
    }

    async fn open_cursor(
        &self,
        statement: String,
        params: Vec<SqlValue>,
        _caps: ResultCaps,
    ) -> Result<Box<dyn SqlCursor>, SqlError> {
        let mut conn = self.acquire_for(&statement).await?;
        let (check, within) = (self.check.clone(), self.answer_within);
        let (columns_tx, columns_rx) = tokio::sync::oneshot::channel();
        let (rows_tx, rows_rx) = super::cursor_channel();
        // The reader task owns the connection and stops when the cursor is
        // dropped (its sends fail); the pool then gets the connection back.
        tokio::spawn(async move {
            let cursor = CursorReader {
                columns_tx,
                rows_tx,
                check,
                within,
            };
            if cursor.read(&mut conn, statement, params).await == Answered::No {
                conn.close_on_drop();
            }
        });
        let columns = columns_rx
            .await
            .map_err(|_| SqlError::Other("cursor reader stopped".into()))?;
        let columns = self.check.note(columns)?;
        Ok(Box::new(super::ChannelCursor::new(columns, rows_rx)))
    }
}

/// Whether the server answered a cursor's reads in time.
#[derive(Debug, PartialEq, Eq)]
enum Answered {
    Yes,
    No,
}

/// Where a cursor's reader sends what it reads.
struct CursorReader {
    columns_tx: tokio::sync::oneshot::Sender<Result<Vec<super::SqlColumn>, SqlError>>,
    rows_tx: super::RowSender,
    check: PoolCheck,
    /// The bound on each answer of the server.
    within: Duration,
}

impl CursorReader {
    /// Sends the cursor's columns, then its rows, until the guest drops it.
    /// Every wait on the server is bounded: past the bound the guest gets
    /// `unavailable`, and the connection must not be pooled again.
    async fn read(
        self,
        conn: &mut sqlx::PgConnection,
        statement: String,
        params: Vec<SqlValue>,
    ) -> Answered {
        let CursorReader {
            columns_tx,
            rows_tx,
            check,
            within,
        } = self;
        let params = match convert(params) {
            Ok(p) => p,
            Err(e) => {
                let _ = columns_tx.send(Err(e));
                return Answered::Yes;
            }
        };
        let sql = statement_text(&statement, &params);
        let prepared = match timeout(within, prepare(conn, &sql, &param_types(&params))).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                let _ = columns_tx.send(Err(e));
                return Answered::Yes;
            }
            Err(_) => {
                let _ = columns_tx.send(check.note(Err(super::unanswered(within))));
                return Answered::No;
            }
        };
        let query = bind(prepared.query(), params);
        if columns_tx.send(Ok(columns_of(prepared.columns()))).is_err() {
            return Answered::Yes;
        }
        let mut rows = query.fetch(&mut *conn);
        loop {
            let (item, answered) = match timeout(within, rows.next()).await {
                Ok(None) => return Answered::Yes,
                // The statement is prepared from the connection's cache
                // without a word to the server, so a lost connection shows
                // here first.
                Ok(Some(row)) => (
                    check
                        .note(row.map_err(map_error))
                        .and_then(|r| read_row(&r)),
                    Answered::Yes,
                ),
                Err(_) => (check.note(Err(super::unanswered(within))), Answered::No),
            };
            let failed = item.is_err();
            if rows_tx.send(item).await.is_err() || failed {
                return answered;
            }
        }
    }
}

/// Warns when the login of a shared database (no role per app) reaches
/// beyond the database: a superuser, or a member of the roles that read or
/// write the server's files or run programs on it. Every app opening the
/// database has its rights, so `pg_read_file` or `COPY … TO PROGRAM`
/// would work for their guests too.
async fn warn_if_login_reaches_the_server(pool: &sqlx::PgPool, application_name: &str) {
    // The three roles exist from Postgres 11 on; looked up by name, so an
    // older server still answers for `rolsuper`.
    const REACH: &str = "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) \
        OR EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname IN ('pg_read_server_files', \
        'pg_write_server_files', 'pg_execute_server_program') \
        AND pg_has_role(current_user, r.oid, 'USAGE'))";
    let reaches: Result<Option<bool>, _> = sqlx::query_scalar(REACH).fetch_one(pool).await;
    let reaches = matches!(reaches, Ok(Some(true)));
    if reaches && crate::audit::first_time(&format!("postgres login {application_name}")) {
        tracing::warn!(
            database = application_name,
            "the login of a shared Postgres database is a superuser, or may read or write the \
             server's files or run programs there: every app that opens the database can do so \
             through its guests; give it a login with rights on its own schema only, or use \
             tenancy = \"role-per-app\" (docs/security.md)"
        );
    }
}

/// A statement's result, or `unavailable` if the server did not answer
/// within its bound: the connection, whose exchange was cut off, is then
/// closed rather than pooled (returned, it would be pinged, and a server
/// that is gone would hold the pool's slot until TCP gives up).
fn answered<T>(
    conn: &mut PoolConnection<Postgres>,
    result: Result<Result<T, SqlError>, tokio::time::error::Elapsed>,
    within: Duration,
) -> Result<T, SqlError> {
    result.unwrap_or_else(|_| {
        conn.close_on_drop();
        Err(super::unanswered(within))
    })
}

/// Makes `conn` close, rather than go back to the pool, when it is
/// dropped, if `statement` may change its session: a setting, a lock or a
/// `LISTEN` left on it would reach a later call of the app at random (see
/// [`changes_session`]). Decided before the statement runs, so a call
/// stopped half-way (its time limit) still closes it; the pool opens
/// another when needed.
fn close_if_changes_session(conn: &mut PoolConnection<Postgres>, statement: &str) {
    if changes_session(statement, Dialect::Postgres) {
        conn.close_on_drop();
    }
}

/// A port transaction on a pooled connection, driven by sqlx's transaction
/// manager (rather than `sqlx::Transaction`) so that the adapter keeps the
/// connection and can close it instead of pooling it: a plain `SET` inside
/// a transaction outlives it.
struct PostgresTransaction {
    /// Inside the transaction while `Some`. Dropped unfinished (the guest
    /// dropped the handle or trapped, or its commit was stopped half-way),
    /// a `ROLLBACK` is queued on it, which runs before the connection's
    /// next use.
    conn: Option<PoolConnection<Postgres>>,
    /// The pool's, for the watchdog.
    session_ids: SessionIds,
    /// The pool's, told of lost connections.
    check: PoolCheck,
    /// The pool's bound on a statement's answer.
    answer_within: Duration,
}

impl PostgresTransaction {
    fn conn(&mut self, statement: &str) -> Result<&mut PoolConnection<Postgres>, SqlError> {
        let conn = self.conn.as_mut().ok_or(SqlError::Closed)?;
        close_if_changes_session(conn, statement);
        self.session_ids.pool_statement();
        Ok(conn)
    }

    /// Ends the transaction with `end` (commit or rollback). The connection
    /// stays in `self.conn` while it ends, so a call stopped half-way is
    /// covered by `Drop`; a failed end leaves a rollback queued.
    async fn end(
        &mut self,
        end: for<'c> fn(
            &'c mut sqlx::PgConnection,
        ) -> futures::future::BoxFuture<'c, sqlx::Result<()>>,
    ) -> Result<(), SqlError> {
        let conn = self.conn.as_mut().ok_or(SqlError::Closed)?;
        let ended = timeout(self.answer_within, async {
            end(conn).await.map_err(map_error)
        })
        .await;
        let ended = self.check.note(answered(conn, ended, self.answer_within));
        if ended.is_ok() {
            // Out of the transaction: the connection goes back as it is.
            self.conn = None;
        }
        ended
    }
}

impl Drop for PostgresTransaction {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            PgTransactionManager::start_rollback(conn);
        }
    }
}

#[async_trait]
impl SqlTransaction for PostgresTransaction {
    async fn query(
        &mut self,
        statement: String,
        params: Vec<SqlValue>,
        caps: ResultCaps,
    ) -> Result<RowSet, SqlError> {
        let within = self.answer_within;
        let conn = self.conn(&statement)?;
        let result = timeout(within, query_on(conn, &statement, params, caps)).await;
        let result = answered(conn, result, within);
        self.check.note(result)
    }

    async fn execute(&mut self, statement: String, params: Vec<SqlValue>) -> Result<u64, SqlError> {
        let within = self.answer_within;
        let conn = self.conn(&statement)?;
        let result = timeout(within, execute_on(conn, &statement, params)).await;
        let result = answered(conn, result, within);
        self.check.note(result)
    }

    async fn commit(mut self: Box<Self>) -> Result<(), SqlError> {
        self.end(PgTransactionManager::commit).await
    }

    async fn rollback(mut self: Box<Self>) -> Result<(), SqlError> {
        self.end(PgTransactionManager::rollback).await
    }
}
