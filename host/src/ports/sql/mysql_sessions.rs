//! The statement watchdog's view of a MySQL/MariaDB pool (see
//! [`super::watchdog`]): which server threads are the pool's, which run an
//! overdue statement, and cancelling or ending them from a connection of
//! the watchdog's own.

use std::collections::HashMap;
use std::time::Duration;

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
}

/// MariaDB's answer to `KILL QUERY ID` for a statement that has ended.
const UNKNOWN_QUERY_ID: u16 = 1957;

impl MysqlSessions {
    async fn connection(&mut self) -> Result<&mut mysql_async::Conn, String> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => mysql_async::Conn::new(self.opts.clone())
                .await
                .map_err(|e| map_error(e).to_string())?,
        };
        Ok(self.conn.insert(conn))
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
        match self.query_ids.get(&session.id) {
            Some(query) => self.run(format!("KILL QUERY ID {query}")).await,
            None => self.run(format!("KILL QUERY {}", session.id)).await,
        }
    }

    async fn terminate(&mut self, session: &Noted, _limit: Duration) -> Result<(), String> {
        self.run(format!("KILL CONNECTION {}", session.id)).await
    }

    async fn rest(&mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.disconnect().await;
        }
    }
}
