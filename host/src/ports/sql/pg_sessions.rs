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
}

/// This connection's backend: its pid and its start (microseconds since
/// the epoch), which tells it from a later backend given the same pid.
pub(super) const THIS_BACKEND: &str = "SELECT pid, (extract(epoch FROM backend_start) * 1000000)::int8 \
     FROM pg_stat_activity WHERE pid = pg_backend_pid()";

/// The noted backends (pids `$1`, starts `$2`) still there, whether each
/// runs a statement, and whether that statement started more than `$3`
/// seconds ago.
const LIST_BACKENDS: &str = "SELECT a.pid, COALESCE(a.state = 'active', false), \
     COALESCE(a.state = 'active' \
       AND a.query_start < clock_timestamp() - make_interval(secs => $3), false) \
     FROM pg_stat_activity a \
     JOIN unnest($1::int4[], $2::int8[]) AS noted(pid, started) \
       ON a.pid = noted.pid \
       AND (extract(epoch FROM a.backend_start) * 1000000)::int8 = noted.started";

/// Runs `{signal}` on backend `$1` (started at `$2`) if it still runs a
/// statement started more than `$3` seconds ago, in one statement, so a
/// statement that ended meanwhile leaves a new one alone.
const SIGNAL_OVERDUE: &str = "SELECT count(*) FILTER (WHERE {signal}(pid)) \
     FROM pg_stat_activity \
     WHERE pid = $1 AND (extract(epoch FROM backend_start) * 1000000)::int8 = $2 \
       AND state = 'active' \
       AND query_start < clock_timestamp() - make_interval(secs => $3)";

impl PgSessions {
    async fn connection(&mut self) -> Result<&mut sqlx::PgConnection, String> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => sqlx::PgConnection::connect_with(&self.options)
                .await
                .map_err(|e| map_error(e).to_string())?,
        };
        Ok(self.conn.insert(conn))
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
