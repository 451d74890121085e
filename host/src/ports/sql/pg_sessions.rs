//! The statement watchdog's view of a Postgres pool (see
//! [`super::watchdog`]): which backends are the pool's, which run an
//! overdue statement, and cancelling or ending them from a connection of
//! the watchdog's own.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::Connection as _;
use sqlx::postgres::PgConnectOptions;

use super::postgres::map_error;
use super::watchdog::{self, ListedSession, Noted, SessionId};

/// The statement watchdog's view of a Postgres pool: its sessions are
/// backends, listed in `pg_stat_activity` (a role sees its own backends'
/// statements, and may cancel and end them).
pub(super) struct PgSessions {
    pub(super) pool: sqlx::PgPool,
    /// The pool's options, under an application name of its own.
    pub(super) options: PgConnectOptions,
    /// The watchdog's own connection, outside the pool (which may be
    /// exhausted by the very statements it looks for), while it watches.
    pub(super) conn: Option<sqlx::PgConnection>,
    /// Whether `options` pin the settings a role's defaults could give
    /// (see [`PgSessions::connect`]).
    pub(super) pinned: bool,
}

// Every name below is schema-qualified (`OPERATOR(pg_catalog.*)` and
// all; `unnest` of two arrays in `FROM` only as written, which the parser
// turns into the built-in's own form): `THIS_BACKEND` runs in a tenant's session, on its `search_path`,
// and Postgres takes an operator of the tenant's own schema that matches
// the argument types exactly over a built-in one reached by a cast (there
// is no built-in `numeric * int4`). A tenant's `*` returning -1 would
// make every backend's start differ from the watchdog's reading, and the
// watchdog would never find an overdue statement again.

/// This connection's backend: its pid and its start (microseconds since
/// the epoch), which tells it from a later backend given the same pid.
pub(super) const THIS_BACKEND: &str = "SELECT pid, \
     (extract(epoch FROM backend_start) OPERATOR(pg_catalog.*) 1000000::pg_catalog.numeric)::pg_catalog.int8 \
     FROM pg_catalog.pg_stat_activity WHERE pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()";

/// The noted backends (pids `$1`, starts `$2`) still there, whether each
/// runs a statement, and whether that statement started more than `$3`
/// seconds ago.
const LIST_BACKENDS: &str = "SELECT a.pid, \
     COALESCE(a.state OPERATOR(pg_catalog.=) 'active'::pg_catalog.text, false), \
     COALESCE(a.state OPERATOR(pg_catalog.=) 'active'::pg_catalog.text \
       AND a.query_start OPERATOR(pg_catalog.<) \
         (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $3)), false) \
     FROM pg_catalog.pg_stat_activity a \
     JOIN unnest($1::pg_catalog.int4[], $2::pg_catalog.int8[]) AS noted(pid, started) \
       ON a.pid OPERATOR(pg_catalog.=) noted.pid \
       AND (extract(epoch FROM a.backend_start) OPERATOR(pg_catalog.*) 1000000::pg_catalog.numeric)::pg_catalog.int8 \
         OPERATOR(pg_catalog.=) noted.started";

/// Runs `{signal}` on backend `$1` (started at `$2`) if it still runs a
/// statement started more than `$3` seconds ago, in one statement, so a
/// statement that ended meanwhile leaves a new one alone.
const SIGNAL_OVERDUE: &str = "SELECT pg_catalog.count(*) FILTER (WHERE pg_catalog.{signal}(pid)) \
     FROM pg_catalog.pg_stat_activity \
     WHERE pid OPERATOR(pg_catalog.=) $1 \
       AND (extract(epoch FROM backend_start) OPERATOR(pg_catalog.*) 1000000::pg_catalog.numeric)::pg_catalog.int8 \
         OPERATOR(pg_catalog.=) $2 \
       AND state OPERATOR(pg_catalog.=) 'active'::pg_catalog.text \
       AND query_start OPERATOR(pg_catalog.<) \
         (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $3))";

impl PgSessions {
    async fn connection(&mut self) -> Result<&mut sqlx::PgConnection, String> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.connect().await?,
        };
        Ok(self.conn.insert(conn))
    }

    /// A connection of the watchdog's own. It logs in as the tenant's
    /// role, whose defaults the tenant may set (`ALTER ROLE CURRENT_USER
    /// SET …`): a `transaction_timeout` (Postgres 17+) of 1 ms would fail
    /// every one of its statements, so on such a server it is set in the
    /// connection's options, which come after the role's defaults (as its
    /// `statement_timeout` and `search_path` are), from the first
    /// connection that tells the server's version on.
    async fn connect(&mut self) -> Result<sqlx::PgConnection, String> {
        let conn = sqlx::PgConnection::connect_with(&self.options)
            .await
            .map_err(|e| map_error(e).to_string())?;
        if self.pinned || conn.server_version_num().is_none_or(|v| v < 170_000) {
            return Ok(conn);
        }
        let _ = conn.close().await;
        self.options = self.options.clone().options([("transaction_timeout", "0")]);
        self.pinned = true;
        sqlx::PgConnection::connect_with(&self.options)
            .await
            .map_err(|e| map_error(e).to_string())
    }

    /// Runs `signal` (`pg_cancel_backend`, `pg_terminate_backend`) on the
    /// session if its statement is still overdue.
    async fn signal(
        &mut self,
        signal: &str,
        session: &Noted,
        limit: Duration,
    ) -> Result<(), String> {
        let pid = i32::try_from(session.id).map_err(|_| format!("no backend {}", session.id))?;
        let conn = self.connection().await?;
        let statement = SIGNAL_OVERDUE.replace("{signal}", signal);
        let done: Result<i64, _> = sqlx::query_scalar(&statement)
            .bind(pid)
            .bind(session.incarnation)
            .bind(limit.as_secs_f64())
            .fetch_one(conn)
            .await;
        match done {
            Ok(_) => Ok(()),
            Err(e) => {
                self.conn = None;
                Err(map_error(e).to_string())
            }
        }
    }
}

#[async_trait]
impl watchdog::Sessions for PgSessions {
    fn busy(&self) -> bool {
        self.pool.size() as usize > self.pool.num_idle()
    }

    async fn list(
        &mut self,
        noted: &[Noted],
        limit: Duration,
    ) -> Result<Vec<ListedSession>, String> {
        let (pids, starts): (Vec<i32>, Vec<i64>) = noted
            .iter()
            .filter_map(|n| Some((i32::try_from(n.id).ok()?, n.incarnation)))
            .unzip();
        let conn = self.connection().await?;
        let rows: Result<Vec<(i32, bool, bool)>, _> = sqlx::query_as(LIST_BACKENDS)
            .bind(pids)
            .bind(starts)
            .bind(limit.as_secs_f64())
            .fetch_all(conn)
            .await;
        match rows {
            Ok(rows) => Ok(rows
                .into_iter()
                .filter_map(|(pid, running, overdue)| {
                    let id = SessionId::try_from(pid).ok()?;
                    Some(ListedSession {
                        id,
                        running,
                        overdue,
                    })
                })
                .collect()),
            Err(e) => {
                self.conn = None;
                Err(map_error(e).to_string())
            }
        }
    }

    async fn cancel(&mut self, session: &Noted, limit: Duration) -> Result<(), String> {
        self.signal("pg_cancel_backend", session, limit).await
    }

    async fn terminate(&mut self, session: &Noted, limit: Duration) -> Result<(), String> {
        self.signal("pg_terminate_backend", session, limit).await
    }

    async fn rest(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }
}
