//! MySQL/MariaDB adapter (mysql_async): a connection pool owned by the host
//! per logical database; an invocation borrows pooled connections and never
//! opens one.
//!
//! mysql_async rather than sqlx: sqlx 0.8 does not expose a result column's
//! character set, and without it `_bin`-collated text (MariaDB's `JSON`
//! among it) cannot be told from bytes (see `mysql_values`).
//!
//! Statements use `?` placeholders natively and run as prepared statements
//! (binary protocol), so values arrive typed. Each pooled connection is set
//! up with the session time zone UTC (so `TIMESTAMP` values are instants)
//! and the statement timeout: `max_statement_time` on MariaDB, which bounds
//! every statement, `max_execution_time` on MySQL, which bounds `SELECT`
//! only. The statement watchdog (see [`super::watchdog`]) holds every
//! statement to it, on MySQL too, and where a guest changed its session's
//! setting.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Opts, OptsBuilder, Params, Pool, PoolConstraints, PoolOpts, Value};
use tokio::time::timeout;

use super::mysql_sessions::MysqlSessions;
use super::mysql_values::{classify, columns_of, convert, read_row};
use super::statement::{Dialect, changes_session};
use super::watchdog::{self, SessionId, SessionIds, Watchdog};
use super::{
    CappedRows, ResultCaps, RowSet, SqlBackend, SqlCursor, SqlError, SqlTransaction, SqlValue,
};
use crate::secret::Secret;

#[path = "mysql_errors.rs"]
mod errors;
pub use errors::map_error;

#[path = "mysql_transaction.rs"]
mod transaction;
use transaction::MysqlTransaction;

/// Idle connections above `min_connections` are closed after this long.
const IDLE_TTL: Duration = Duration::from_secs(600);

/// Settings of a MySQL/MariaDB logical database.
#[derive(Debug, Clone)]
pub struct MysqlSettings {
    /// `mysql://user@host:port/db` (`mariadb://` is accepted too); the
    /// database is required.
    pub url: Secret,
    /// Password, if not in the URL.
    pub password: Option<Secret>,
    /// Pool size.
    pub max_connections: u32,
    /// Connections kept open when idle.
    pub min_connections: u32,
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
    /// Server-side limit per statement.
    pub statement_timeout: Duration,
    /// Sent as the `program_name` connection attribute (`berth:<app>:<name>`).
    pub program_name: String,
}

/// One logical database served by a MySQL/MariaDB pool.
pub struct MysqlDatabase {
    pool: Pool,
    connect_timeout: Duration,
    /// The connection ids of the pool's sessions and when each was last
    /// sent a statement, noted as they are borrowed, for the watchdog.
    session_ids: SessionIds,
    /// How long a statement may go unanswered before the server is taken
    /// for gone ([`watchdog::answered_by`]).
    answer_within: Duration,
    /// Stops with the database.
    _watchdog: Watchdog,
}

/// Which server answered, for the session settings that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flavor {
    MariaDb,
    Mysql,
}

/// The statement run on every new pooled connection.
fn session_setup(flavor: Flavor, statement_timeout: Duration) -> String {
    let ms = statement_timeout.as_millis();
    match flavor {
        // Seconds, fractional; 0 means no limit, as in the host config.
        Flavor::MariaDb => format!(
            "SET SESSION time_zone = '+00:00', max_statement_time = {}.{:03}",
            ms / 1000,
            ms % 1000
        ),
        Flavor::Mysql => {
            format!("SET SESSION time_zone = '+00:00', max_execution_time = {ms}")
        }
    }
}

impl MysqlDatabase {
    /// Builds the pool and checks the server answers, so a wrong URL or
    /// password fails at startup.
    pub async fn connect(s: &MysqlSettings) -> Result<MysqlDatabase, SqlError> {
        let url = s.url.expose();
        // mysql_async knows only the `mysql` scheme.
        let url = match url.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => url.to_string(),
        };
        let opts = Opts::from_url(&url)
            .map_err(|_| SqlError::InvalidInput("the MySQL URL is malformed".into()))?;
        // The URL's database is the session's default, chosen again after
        // every reset (below). Without one, a guest's `USE` would outlive
        // its call: a reset keeps the current database and nothing can
        // unselect it. So a Berth database is always one MySQL database.
        let database = match opts.db_name() {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => {
                return Err(SqlError::InvalidInput(
                    "the MySQL URL names no database: give it as the URL's path, as in \
                     mysql://user@host:3306/orders"
                        .into(),
                ));
            }
        };
        let mut base = OptsBuilder::from_opts(opts)
            // Keep the transport the operator configured: on a loopback
            // address mysql_async would otherwise move to the server's
            // Unix socket.
            .prefer_socket(false)
            // Rows affected counts the rows an UPDATE matched, as on
            // Postgres and SQLite, not only those whose value changed.
            .client_found_rows(true)
            .connect_attributes(HashMap::from([(
                "program_name".to_string(),
                s.program_name.clone(),
            )]));
        if let Some(password) = &s.password {
            base = base.pass(Some(password.expose()));
        }

        // One connection first: it proves the server is reachable and says
        // which server it is, which decides the session settings.
        let (flavor, grants) = within(s.connect_timeout, async {
            let mut probe = mysql_async::Conn::new(base.clone()).await?;
            let version: Option<String> = probe.query_first("SELECT VERSION()").await?;
            // Read as bytes: a row `String` cannot hold would panic.
            let grants: Vec<String> = probe
                .query::<mysql_async::Row, _>("SHOW GRANTS")
                .await
                .unwrap_or_default()
                .into_iter()
                .filter_map(|row| row.get_opt::<Vec<u8>, usize>(0)?.ok())
                .map(|g| String::from_utf8_lossy(&g).into_owned())
                .collect();
            probe.disconnect().await?;
            let flavor = match version {
                Some(v) if v.contains("MariaDB") => Flavor::MariaDb,
                _ => Flavor::Mysql,
            };
            Ok((flavor, grants))
        })
        .await?;
        warn_if_login_reaches_the_server(&grants, &s.program_name);

        let max = s.max_connections.max(1) as usize;
        let min = (s.min_connections as usize).min(max);
        let constraints = PoolConstraints::new(min, max).ok_or_else(|| {
            SqlError::InvalidInput("min_connections exceeds max_connections".into())
        })?;
        let pool_opts = PoolOpts::new()
            .with_constraints(constraints)
            .with_inactive_connection_ttl(IDLE_TTL)
            // Connections keep their session between invocations (and
            // their prepared-statement cache); one whose session a
            // statement may have changed, or left inside a transaction, is
            // reset on its way back (`conn_for`, `MysqlTransaction`), and
            // an unread result left behind is drained.
            .with_reset_connection(false);
        // No default database: the watchdog needs none (it reads
        // `information_schema` and sends `KILL`), and without one it is not
        // counted among the connections using the app's database.
        let watchdog_opts = base
            .clone()
            .db_name(None::<String>)
            .connect_attributes(HashMap::from([(
                "program_name".to_string(),
                format!("{}:watchdog", s.program_name),
            )]));
        // Run on every new connection and after every reset. A reset
        // keeps the session's current database (a guest's `USE`), so the
        // URL's is chosen again.
        let setup = vec![
            session_setup(flavor, s.statement_timeout),
            format!("USE `{}`", database.replace('`', "``")),
        ];
        let opts = base.setup(setup).pool_opts(pool_opts);
        let pool = Pool::new(opts);
        let session_ids = SessionIds::default();
        let sessions = MysqlSessions {
            pool: pool.clone(),
            opts: watchdog_opts.into(),
            conn: None,
            flavor,
            query_ids: HashMap::new(),
            server_started: None,
            start_unreported: false,
        };
        let db = MysqlDatabase {
            pool,
            connect_timeout: s.connect_timeout,
            session_ids: session_ids.clone(),
            answer_within: watchdog::answered_by(s.statement_timeout),
            _watchdog: watchdog::spawn(
                session_ids,
                sessions,
                s.statement_timeout,
                s.program_name.clone(),
            ),
        };
        // A pooled connection runs the session setup: a server refusing it
        // fails here, not in the first invocation.
        drop(db.conn().await?);
        Ok(db)
    }

    /// A pooled connection, checked alive by the pool (a connection the
    /// server closed is replaced), within the connect timeout.
    async fn conn(&self) -> Result<mysql_async::Conn, SqlError> {
        let conn = within(self.connect_timeout, self.pool.get_conn()).await?;
        // A borrowed connection is sent its statement at once.
        self.session_ids.statement(SessionId::from(conn.id()));
        Ok(conn)
    }

    /// A pooled connection for `statement`. If the statement may change
    /// its session (a `SET`, a user variable, `USE`, a lock: see
    /// [`changes_session`]), the pool resets the connection when it comes
    /// back (`COM_RESET_CONNECTION`, then the session setup again), so
    /// nothing of it reaches a later call of the app.
    async fn conn_for(&self, statement: &str) -> Result<mysql_async::Conn, SqlError> {
        let mut conn = self.conn().await?;
        if changes_session(statement, Dialect::Mysql) {
            conn.reset_connection(true);
        }
        Ok(conn)
    }

    /// The pool (for tests that compare against the adapter).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

/// A statement's result, or `unavailable` if the server did not answer
/// within its bound. The connection goes back to the pool when answered;
/// otherwise it is disconnected (in a bounded time: the server may be
/// gone), so it neither returns to the pool nor holds the pool's slot while
/// mysql_async would drain it from a server that never answers.
async fn answered<T>(
    conn: mysql_async::Conn,
    result: Result<Result<T, SqlError>, tokio::time::error::Elapsed>,
    within: Duration,
) -> Result<T, SqlError> {
    match result {
        Ok(result) => result,
        Err(_) => {
            disconnect(conn).await;
            Err(super::unanswered(within))
        }
    }
}

/// Warns when the login (as `SHOW GRANTS` lists its rights) holds
/// privileges on every database (`ON *.*`): every app opening the database
/// has them, so its guests could read the server's files (`FILE`), other
/// databases or the user table. Only the privilege names are logged: a
/// grant line can carry a password hash.
fn warn_if_login_reaches_the_server(grants: &[String], program_name: &str) {
    if let Some(privileges) = global_privileges(grants)
        && crate::audit::first_time(&format!("mysql login {program_name}"))
    {
        tracing::warn!(
            database = program_name,
            privileges = %crate::audit::printable(crate::audit::bounded(privileges)),
            "the MySQL/MariaDB login holds privileges on every database (ON *.*): every app that \
             opens this database can use them through its guests; give it a login with rights on \
             its own database only (docs/security.md)"
        );
    }
}

/// The privileges a login's grants give it on every database, if any.
fn global_privileges(grants: &[String]) -> Option<&str> {
    grants.iter().find_map(|g| {
        let privileges = g.strip_prefix("GRANT ")?.split_once(" ON *.* ")?.0;
        (privileges != "USAGE").then_some(privileges)
    })
}

/// Disconnects a connection the server left unanswered, within a second:
/// marked disconnected as it starts, dropped on the way the pool discards
/// it without a word to the server (draining it would wait on a server
/// that never answers, holding the pool's slot).
async fn disconnect(conn: mysql_async::Conn) {
    let _ = timeout(Duration::from_secs(1), conn.disconnect()).await;
}

/// Runs `fut`, mapping its error, or gives `unavailable` after `limit`.
async fn within<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = mysql_async::Result<T>>,
) -> Result<T, SqlError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(map_error),
        Err(_) => Err(SqlError::Unavailable(
            "no database connection available in time".into(),
        )),
    }
}

fn params_of(values: Vec<Value>) -> Params {
    if values.is_empty() {
        Params::Empty
    } else {
        Params::Positional(values)
    }
}

async fn query_on(
    conn: &mut impl Queryable,
    statement: &str,
    params: Vec<SqlValue>,
    caps: ResultCaps,
) -> Result<RowSet, SqlError> {
    let params = params_of(convert(params)?);
    let mut result = conn.exec_iter(statement, params).await.map_err(map_error)?;
    let kinds = classify(result.columns_ref());
    let mut out = CappedRows::new(caps);
    // Rows left unread after a cap is passed are drained by the driver
    // before the connection runs anything else.
    while let Some(row) = result.next().await.map_err(map_error)? {
        out.full()?;
        out.push(read_row(&kinds, row)?)?;
    }
    Ok(RowSet {
        columns: columns_of(&kinds),
        rows: out.into_rows(),
    })
}

async fn execute_on(
    conn: &mut impl Queryable,
    statement: &str,
    params: Vec<SqlValue>,
) -> Result<u64, SqlError> {
    let params = params_of(convert(params)?);
    let result = conn.exec_iter(statement, params).await.map_err(map_error)?;
    let affected = result.affected_rows();
    result.drop_result().await.map_err(map_error)?;
    Ok(affected)
}

#[async_trait]
impl SqlBackend for MysqlDatabase {
    async fn query(
        &self,
        statement: String,
        params: Vec<SqlValue>,
        caps: ResultCaps,
    ) -> Result<RowSet, SqlError> {
        let mut conn = self.conn_for(&statement).await?;
        let result = timeout(
            self.answer_within,
            query_on(&mut conn, &statement, params, caps),
        )
        .await;
        answered(conn, result, self.answer_within).await
    }

    async fn execute(&self, statement: String, params: Vec<SqlValue>) -> Result<u64, SqlError> {
        let mut conn = self.conn_for(&statement).await?;
        let result = timeout(
            self.answer_within,
            execute_on(&mut conn, &statement, params),
        )
        .await;
        answered(conn, result, self.answer_within).await
    }

    async fn begin(&self) -> Result<Box<dyn SqlTransaction>, SqlError> {
        let mut conn = self.conn().await?;
        let begun = timeout(self.answer_within, conn.query_drop("START TRANSACTION")).await;
        // Should `START TRANSACTION` fail, the transaction's `Drop` has the
        // connection reset (one stopped half-way is discarded by the pool).
        let mut tx = MysqlTransaction::new(conn, self.session_ids.clone(), self.answer_within);
        tx.settle(begun.map(|r| r.map_err(map_error))).await?;
        Ok(Box::new(tx))
    }

    async fn open_cursor(
        &self,
        statement: String,
        params: Vec<SqlValue>,
        _caps: ResultCaps,
    ) -> Result<Box<dyn SqlCursor>, SqlError> {
        let params = params_of(convert(params)?);
        let mut conn = self.conn_for(&statement).await?;
        let within = self.answer_within;
        let (columns_tx, columns_rx) = tokio::sync::oneshot::channel();
        let (rows_tx, rows_rx) = super::cursor_channel();
        // The reader task owns the connection and stops when the cursor is
        // dropped (its sends fail); the pool then gets the connection back
        // and drains what was not read. Every wait on the server is
        // bounded: past the bound the guest gets `unavailable` and the
        // connection is dropped.
        tokio::spawn(async move {
            // Whether the server left a read unanswered.
            let unanswered = async {
                let mut result =
                    match timeout(within, conn.exec_iter(statement.as_str(), params)).await {
                        Ok(Ok(r)) => r,
                        Ok(Err(e)) => {
                            let _ = columns_tx.send(Err(map_error(e)));
                            return false;
                        }
                        Err(_) => {
                            let _ = columns_tx.send(Err(super::unanswered(within)));
                            return true;
                        }
                    };
                let kinds = classify(result.columns_ref());
                if columns_tx.send(Ok(columns_of(&kinds))).is_err() {
                    return false;
                }
                loop {
                    let (item, unanswered) = match timeout(within, result.next()).await {
                        Ok(Ok(Some(row))) => (read_row(&kinds, row), false),
                        Ok(Ok(None)) => return false,
                        Ok(Err(e)) => (Err(map_error(e)), false),
                        Err(_) => (Err(super::unanswered(within)), true),
                    };
                    let failed = item.is_err();
                    if rows_tx.send(item).await.is_err() || failed {
                        return unanswered;
                    }
                }
            }
            .await;
            if unanswered {
                disconnect(conn).await;
            }
        });
        let columns = columns_rx
            .await
            .map_err(|_| SqlError::Other("cursor reader stopped".into()))??;
        Ok(Box::new(super::ChannelCursor::new(columns, rows_rx)))
    }
}

#[cfg(test)]
#[path = "mysql_tests.rs"]
mod tests;
