//! A port transaction on MySQL/MariaDB: its statements, its end, and what
//! happens when the server ends it first.

use std::time::Duration;

use async_trait::async_trait;
use mysql_async::consts::StatusFlags;
use mysql_async::prelude::Queryable;
use tokio::time::timeout;

use super::super::statement::{Dialect, changes_session};
use super::super::watchdog::{SessionId, SessionIds};
use super::super::{ROLLED_BACK, ResultCaps, RowSet, SqlError, SqlTransaction, SqlValue};
use super::{answered, execute_on, query_on};

/// A port transaction: `START TRANSACTION` on a pooled connection, ended
/// by `COMMIT` or `ROLLBACK`. A connection left inside it (the guest
/// dropped the handle or trapped), whose end failed, or whose session a
/// statement may have changed, is reset when it goes back to the pool:
/// `COM_RESET_CONNECTION` rolls back what is open and clears the session.
pub(super) struct MysqlTransaction {
    /// Inside the transaction while `Some`.
    conn: Option<mysql_async::Conn>,
    /// Whether a statement may have changed the session: the connection
    /// is then reset even after a successful end.
    changed_session: bool,
    /// The pool's bound on a statement's answer.
    answer_within: Duration,
    /// The pool's, for the watchdog.
    session_ids: SessionIds,
    /// The server rolled the transaction back itself after one of its
    /// statements failed (a deadlock, say): later statements are refused
    /// rather than run outside it, each committed on its own.
    rolled_back: bool,
}

impl MysqlTransaction {
    /// A transaction on `conn`, inside `START TRANSACTION` once
    /// [`MysqlTransaction::settle`] accepted that statement's answer.
    pub(super) fn new(
        conn: mysql_async::Conn,
        session_ids: SessionIds,
        answer_within: Duration,
    ) -> MysqlTransaction {
        MysqlTransaction {
            conn: Some(conn),
            changed_session: false,
            answer_within,
            session_ids,
            rolled_back: false,
        }
    }

    fn conn(&mut self, statement: &str) -> Result<&mut mysql_async::Conn, SqlError> {
        if self.rolled_back {
            return Err(SqlError::Other(ROLLED_BACK.into()));
        }
        super::super::statement::refuse_implicit_commit(statement)?;
        let conn = self.conn.as_mut().ok_or(SqlError::Closed)?;
        if changes_session(statement, Dialect::Mysql) {
            self.changed_session = true;
            conn.reset_connection(true);
        }
        self.session_ids.statement(SessionId::from(conn.id()));
        Ok(conn)
    }

    /// Ends the transaction with `statement`. Until it has ended, the
    /// connection is marked for a reset, so a call stopped half-way (or a
    /// failed end) leaves nothing open on a pooled connection.
    async fn end(&mut self, statement: &str) -> Result<(), SqlError> {
        let conn = self.conn.as_mut().ok_or(SqlError::Closed)?;
        conn.reset_connection(true);
        // The watchdog times the end from now, not from the last statement.
        self.session_ids.statement(SessionId::from(conn.id()));
        let ended = timeout(self.answer_within, conn.query_drop(statement)).await;
        if matches!(ended, Ok(Ok(()))) && !self.changed_session {
            conn.reset_connection(false);
        }
        let ended = self
            .settle(ended.map(|r| r.map_err(super::map_error)))
            .await;
        // Back to the pool: as it is after a clean end, reset otherwise.
        self.conn = None;
        ended
    }

    /// A statement's result, or `unavailable` if the server did not answer
    /// within the bound: the connection is then disconnected (see
    /// [`answered`]) and the transaction is over.
    pub(super) async fn settle<T>(
        &mut self,
        result: Result<Result<T, SqlError>, tokio::time::error::Elapsed>,
    ) -> Result<T, SqlError> {
        match result {
            Ok(result) => result,
            Err(elapsed) => match self.conn.take() {
                Some(conn) => answered(conn, Err(elapsed), self.answer_within).await,
                None => Err(SqlError::Closed),
            },
        }
    }

    /// A statement's result, as [`MysqlTransaction::settle`] gives it; a
    /// failure that ended the transaction on the server says so, and the
    /// transaction refuses its later statements.
    async fn settle_statement<T>(
        &mut self,
        result: Result<Result<T, SqlError>, tokio::time::error::Elapsed>,
    ) -> Result<T, SqlError> {
        match self.settle(result).await {
            Err(e) if self.ended_by_server().await => {
                self.rolled_back = true;
                Err(e.ending_transaction())
            }
            other => other,
        }
    }

    /// Whether the server is no longer inside the transaction after one of
    /// its statements failed. InnoDB rolls the whole transaction back on a
    /// deadlock, on a lock wait timeout under `innodb_rollback_on_timeout`
    /// and when its lock table is full, and the session goes on in
    /// autocommit. An error's answer does not carry the session's state, so
    /// it is asked with `DO 0`, whose answer does; a connection that gives
    /// no answer is taken as still inside (its next statement fails too).
    async fn ended_by_server(&mut self) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        match timeout(self.answer_within, conn.query_drop("DO 0")).await {
            Ok(Ok(())) => conn.last_ok_packet().is_some_and(|ok| {
                !ok.status_flags()
                    .contains(StatusFlags::SERVER_STATUS_IN_TRANS)
            }),
            Ok(Err(_)) => false,
            Err(elapsed) => {
                let _ = self.settle::<()>(Err(elapsed)).await;
                false
            }
        }
    }
}

impl Drop for MysqlTransaction {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            conn.reset_connection(true);
        }
    }
}

#[async_trait]
impl SqlTransaction for MysqlTransaction {
    async fn query(
        &mut self,
        statement: String,
        params: Vec<SqlValue>,
        caps: ResultCaps,
    ) -> Result<RowSet, SqlError> {
        let within = self.answer_within;
        let conn = self.conn(&statement)?;
        let result = timeout(within, query_on(conn, &statement, params, caps)).await;
        self.settle_statement(result).await
    }

    async fn execute(&mut self, statement: String, params: Vec<SqlValue>) -> Result<u64, SqlError> {
        let within = self.answer_within;
        let conn = self.conn(&statement)?;
        let result = timeout(within, execute_on(conn, &statement, params)).await;
        self.settle_statement(result).await
    }

    async fn commit(mut self: Box<Self>) -> Result<(), SqlError> {
        if self.rolled_back {
            // Nothing is open on the server; the end resets what the
            // session may hold.
            self.end("ROLLBACK AND NO CHAIN").await?;
            return Err(SqlError::Other(ROLLED_BACK.into()));
        }
        // `NO CHAIN`: a server-wide `completion_type` must not open the
        // next transaction on a connection going back to the pool.
        self.end("COMMIT AND NO CHAIN").await
    }

    async fn rollback(mut self: Box<Self>) -> Result<(), SqlError> {
        self.end("ROLLBACK AND NO CHAIN").await
    }
}
