//! The statement watchdog's view of a MySQL/MariaDB pool (see
//! [`super::watchdog`]): which server threads are the pool's, which run an
//! overdue statement, and cancelling or ending them from a connection of
//! the watchdog's own.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use mysql_async::prelude::Queryable;
use mysql_async::{Opts, Pool};

use super::mysql::{Flavor, map_error};
use super::watchdog::{self, ListedSession, Noted, SessionId};

/// The statement watchdog's view of a MySQL/MariaDB pool: its sessions are
/// server threads, listed in `information_schema.PROCESSLIST` (a user sees
/// its own threads, and may `KILL` them).
pub(super) struct MysqlSessions {
    pub(super) pool: Pool,
    /// The pool's connection options, without its session setup.
    pub(super) opts: Opts,
    /// The watchdog's own connection, outside the pool, while it watches.
    pub(super) conn: Option<mysql_async::Conn>,
    /// MariaDB names each statement (`QUERY_ID`) and can cancel exactly
    /// that one; MySQL cancels whatever its session runs at the time.
    pub(super) flavor: Flavor,
    /// The statement each session ran at the last look (MariaDB).
    pub(super) query_ids: HashMap<SessionId, u64>,
    /// When the server started, on this host's clock, as read with the
    /// watchdog's last connection: a restart numbers threads from 1 again,
    /// so a session noted before it is no longer the pool's.
    pub(super) server_started: Option<Instant>,
    /// `server_started` was read since the watchdog last asked.
    pub(super) start_unreported: bool,
}

/// MariaDB's answer to `KILL QUERY ID` for a statement that has ended.
const UNKNOWN_QUERY_ID: u16 = 1957;

impl MysqlSessions {
    /// The watchdog's own connection. A new one reads when the server
    /// started: a restart breaks the connection open at the time, or comes
    /// while the watchdog rests without one.
    async fn connection(&mut self) -> Result<&mut mysql_async::Conn, String> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => {
                let mut conn = mysql_async::Conn::new(self.opts.clone())
                    .await
                    .map_err(|e| map_error(e).to_string())?;
                self.server_started = server_started(&mut conn).await?;
                self.start_unreported = true;
                conn
            }
        };
        Ok(self.conn.insert(conn))
    }

    /// Sends `KILL …` about `session`, unless the server started after the
    /// session was last noted (the connection made for this statement can
    /// be the first to see a restart): its id may name a stranger now.
    async fn kill(&mut self, session: &Noted, statement: String) -> Result<(), String> {
        self.connection().await?;
        if self
            .server_started
            .is_some_and(|start| session.last_statement < start)
        {
            return Ok(());
        }
        self.run(statement).await
    }

    async fn run(&mut self, statement: String) -> Result<(), String> {
        let conn = self.connection().await?;
        match conn.query_drop(statement).await {
            Ok(()) => Ok(()),
            Err(mysql_async::Error::Server(e)) if e.code == UNKNOWN_QUERY_ID => Ok(()),
            Err(e) => {
                self.conn = None;
                Err(map_error(e).to_string())
            }
        }
    }
}

/// When the server started, on this host's monotonic clock (`Uptime` is
/// readable by any login, on MySQL and MariaDB alike). It counts whole
/// seconds, so the start is taken as the latest it can be: a session noted
/// in the second after a restart may be forgotten (and noted again with
/// its next statement), one noted before it never kept. `None` if the
/// server started before this host's clock began.
async fn server_started(conn: &mut mysql_async::Conn) -> Result<Option<Instant>, String> {
    let uptime: Option<(String, String)> = conn
        .query_first("SHOW GLOBAL STATUS LIKE 'Uptime'")
        .await
        .map_err(|e| map_error(e).to_string())?;
    let uptime: u64 = uptime
        .and_then(|(_, value)| value.parse().ok())
        .ok_or("the server did not give its uptime")?;
    Ok(Instant::now().checked_sub(Duration::from_secs(uptime)))
}

#[async_trait]
impl watchdog::Sessions for MysqlSessions {
    fn busy(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        // Connections neither idle in the pool nor closed: borrowed, or
        // being drained on their way back.
        let metrics = self.pool.metrics();
        metrics.connection_count.load(Relaxed) > metrics.connections_in_pool.load(Relaxed)
    }

    async fn list(
        &mut self,
        noted: &[Noted],
        limit: Duration,
    ) -> Result<Vec<ListedSession>, String> {
        // Ids are numbers, written into the statement as such. A statement
        // run with parameters shows as `Execute`, and first as `Prepare`
        // (which can wait on a metadata lock). Only the pool's login's
        // own threads: ids are the server's, for every login. A statement
        // is overdue by when the host sent it, not by the server's `TIME`,
        // which a session can move (`SET timestamp`).
        let ids: Vec<String> = noted.iter().map(|n| n.id.to_string()).collect();
        let query_id = match self.flavor {
            Flavor::MariaDb => "QUERY_ID",
            Flavor::Mysql => "0",
        };
        let statement = format!(
            "SELECT ID, COMMAND IN ('Query', 'Execute', 'Prepare'), {query_id} \
             FROM information_schema.PROCESSLIST \
             WHERE ID IN ({}) AND USER = SUBSTRING_INDEX(USER(), '@', 1)",
            ids.join(",")
        );
        let conn = self.connection().await?;
        let rows: Result<Vec<(u64, i64, u64)>, _> = conn.query(statement).await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                self.conn = None;
                return Err(map_error(e).to_string());
            }
        };
        let sent: HashMap<SessionId, tokio::time::Instant> =
            noted.iter().map(|n| (n.id, n.last_statement)).collect();
        self.query_ids = rows
            .iter()
            .filter(|&&(_, _, query)| self.flavor == Flavor::MariaDb && query != 0)
            .map(|&(id, _, query)| (id, query))
            .collect();
        Ok(rows
            .into_iter()
            .map(|(id, running, _)| {
                let running = running != 0;
                let overdue = running && sent.get(&id).is_some_and(|at| at.elapsed() > limit);
                ListedSession {
                    id,
                    running,
                    overdue,
                }
            })
            .collect())
    }

    async fn cancel(&mut self, session: &Noted, _limit: Duration) -> Result<(), String> {
        // MariaDB: the statement seen overdue, or none if it has ended. On
        // MySQL a statement the host sent the session in the instant since
        // the look could be cancelled instead (the watchdog skips sessions
        // it knows were sent one since).
        let statement = match self.query_ids.get(&session.id) {
            Some(query) => format!("KILL QUERY ID {query}"),
            None => format!("KILL QUERY {}", session.id),
        };
        self.kill(session, statement).await
    }

    async fn terminate(&mut self, session: &Noted, _limit: Duration) -> Result<(), String> {
        self.kill(session, format!("KILL CONNECTION {}", session.id))
            .await
    }

    async fn rest(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.disconnect().await;
        }
    }

    fn take_server_start(&mut self) -> Option<Instant> {
        if std::mem::take(&mut self.start_unreported) {
            self.server_started
        } else {
            None
        }
    }
}
