//! The statement watchdog: holds a server database to its statement timeout
//! from outside the sessions it guards.
//!
//! The server's own limit (`statement_timeout` on Postgres,
//! `max_statement_time` on MariaDB, `max_execution_time` on MySQL) is a
//! session setting, and a guest can change it for its session (`SET`,
//! `set_config(…)`, a function's `SET` clause…). Then a statement runs on
//! the server for as long as the guest likes: the host's invocation limit
//! stops the invocation's wait, not the statement, and the pooled
//! connection stays busy until the server is done. On a server shared by
//! tenants, enough of those use up its connections for everyone.
//!
//! So the adapters note the server-side id of every pooled session
//! ([`SessionIds`]), and while their pool has work, a task looks from a
//! connection of its own for those sessions' statements that have run past
//! the limit and a grace period. It cancels such a statement (the guest
//! sees `timeout`, as with the server's own limit); if the session is still
//! running an overdue statement at the next look (server-side code can catch
//! a cancel), it ends the session. Looks are less than a limit apart, so a
//! statement overdue at two looks in a row is the same statement.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

/// A session's server-side id (a Postgres backend pid, a MySQL connection id).
pub type SessionId = u64;

/// The ids of a pool's sessions, noted as they connect (or as they are
/// borrowed) and forgotten once the server no longer lists them.
#[derive(Clone, Default)]
pub struct SessionIds(Arc<Mutex<HashSet<SessionId>>>);

impl SessionIds {
    /// Notes a session of the pool.
    pub fn insert(&self, id: SessionId) {
        self.lock().insert(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<SessionId>> {
        // A panic while holding the lock leaves a set that is still valid.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn snapshot(&self) -> HashSet<SessionId> {
        self.lock().clone()
    }

    /// Forgets the sessions of `looked_at` the server no longer lists
    /// (those noted since are kept).
    fn forget_ended(&self, looked_at: &HashSet<SessionId>, listed: &HashSet<SessionId>) {
        self.lock()
            .retain(|id| listed.contains(id) || !looked_at.contains(id));
    }
}

/// One session as the server lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedSession {
    /// Its id.
    pub id: SessionId,
    /// Whether it runs a statement started longer ago than the limit.
    pub overdue: bool,
}

/// What the watchdog needs of an engine.
#[async_trait]
pub trait Sessions: Send + 'static {
    /// Whether any pooled connection is in use. A statement whose guest
    /// gave up keeps its connection in use until the server ends it.
    fn busy(&self) -> bool;
    /// The sessions of `ids` the server still lists, and whether each runs
    /// a statement started longer than `limit` ago.
    async fn list(
        &mut self,
        ids: &[SessionId],
        limit: Duration,
    ) -> Result<Vec<ListedSession>, String>;
    /// Cancels the session's running statement.
    async fn cancel(&mut self, id: SessionId) -> Result<(), String>;
    /// Ends the session.
    async fn terminate(&mut self, id: SessionId) -> Result<(), String>;
    /// Closes the watchdog's own connection while there is nothing to watch.
    async fn rest(&mut self);
}

/// How long past the statement timeout a statement may run before the
/// watchdog steps in: the server's own limit, when the guest left it
/// alone, acts first.
const GRACE: Duration = Duration::from_secs(1);

/// How often the watchdog looks: twice per statement timeout, within
/// these bounds (always less than the timeout and the grace apart).
const FASTEST_LOOK: Duration = Duration::from_millis(250);
const SLOWEST_LOOK: Duration = Duration::from_secs(15);

/// The running watchdog of one pool; stopped when dropped.
pub struct Watchdog {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching `ids`' statements for running past `statement_timeout`.
/// `label` names the pool in log lines (`berth:<app>:<name>`).
pub fn spawn(
    ids: SessionIds,
    sessions: impl Sessions,
    statement_timeout: Duration,
    label: String,
) -> Watchdog {
    let every = (statement_timeout / 2).clamp(FASTEST_LOOK, SLOWEST_LOOK);
    let task = tokio::spawn(watch(
        ids,
        sessions,
        statement_timeout + GRACE,
        every,
        label,
    ));
    Watchdog { task }
}

async fn watch(
    ids: SessionIds,
    mut sessions: impl Sessions,
    limit: Duration,
    every: Duration,
    label: String,
) {
    // Sessions whose statement was cancelled at the last look: overdue
    // again at this one, the statement ignored the cancel.
    let mut cancelled: HashSet<SessionId> = HashSet::new();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if !sessions.busy() && cancelled.is_empty() {
            sessions.rest().await;
            continue;
        }
        let looked_at = ids.snapshot();
        if looked_at.is_empty() {
            continue;
        }
        let query_ids: Vec<SessionId> = looked_at.iter().copied().collect();
        let listed = match sessions.list(&query_ids, limit).await {
            Ok(listed) => listed,
            Err(error) => {
                tracing::warn!(pool = %label, %error, "the statement watchdog cannot list the pool's sessions");
                continue;
            }
        };
        let listed_ids: HashSet<SessionId> = listed.iter().map(|s| s.id).collect();
        ids.forget_ended(&looked_at, &listed_ids);
        let mut still_cancelled = HashSet::new();
        for session in listed.into_iter().filter(|s| s.overdue) {
            let id = session.id;
            if cancelled.contains(&id) {
                tracing::warn!(pool = %label, session = id, "a statement outlived its cancel; ending its session");
                if let Err(error) = sessions.terminate(id).await {
                    tracing::warn!(pool = %label, session = id, %error, "cannot end the session");
                }
            } else {
                tracing::warn!(pool = %label, session = id, limit_ms = limit.as_millis() as u64,
                    "a statement ran past the statement timeout (its session's limit was changed); cancelling it");
                if let Err(error) = sessions.cancel(id).await {
                    tracing::warn!(pool = %label, session = id, %error, "cannot cancel the statement");
                }
                still_cancelled.insert(id);
            }
        }
        cancelled = still_cancelled;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted server: sessions in `running` run an overdue statement;
    /// actions are recorded.
    #[derive(Clone, Default)]
    struct Script {
        state: Arc<Mutex<ScriptState>>,
    }

    #[derive(Default)]
    struct ScriptState {
        busy: bool,
        open: HashSet<SessionId>,
        running: HashSet<SessionId>,
        /// Sessions whose statements ignore a cancel.
        stubborn: HashSet<SessionId>,
        actions: Vec<String>,
    }

    #[async_trait]
    impl Sessions for Script {
        fn busy(&self) -> bool {
            self.state.lock().unwrap().busy
        }
        async fn list(
            &mut self,
            ids: &[SessionId],
            _limit: Duration,
        ) -> Result<Vec<ListedSession>, String> {
            let s = self.state.lock().unwrap();
            Ok(ids
                .iter()
                .copied()
                .filter(|id| s.open.contains(id))
                .map(|id| ListedSession {
                    id,
                    overdue: s.running.contains(&id),
                })
                .collect())
        }
        async fn cancel(&mut self, id: SessionId) -> Result<(), String> {
            let mut s = self.state.lock().unwrap();
            s.actions.push(format!("cancel {id}"));
            if !s.stubborn.contains(&id) {
                s.running.remove(&id);
            }
            Ok(())
        }
        async fn terminate(&mut self, id: SessionId) -> Result<(), String> {
            let mut s = self.state.lock().unwrap();
            s.actions.push(format!("terminate {id}"));
            s.running.remove(&id);
            s.open.remove(&id);
            Ok(())
        }
        async fn rest(&mut self) {
            self.state.lock().unwrap().actions.push("rest".into());
        }
    }

    /// Lets `n` more looks happen. Called first, right after `spawn`, it
    /// also lets the first look (at once) happen; every wait ends half a
    /// period after a look, so no wait ends at the instant of one.
    async fn looks(n: u32) {
        tokio::time::sleep(SLOWEST_LOOK * n + SLOWEST_LOOK / 2).await;
    }

    #[tokio::test(start_paused = true)]
    async fn cancels_an_overdue_statement_then_ends_a_stubborn_one() {
        let script = Script::default();
        let ids = SessionIds::default();
        {
            let mut s = script.state.lock().unwrap();
            s.busy = true;
            s.open.extend([1, 2, 3]);
            s.running.extend([1, 2]);
            s.stubborn.insert(2);
        }
        for id in [1, 2, 3] {
            ids.insert(id);
        }
        let _dog = spawn(
            ids.clone(),
            script.clone(),
            Duration::from_secs(60),
            "test".into(),
        );
        // Looks at 0 s (both cancelled), 15 s (the stubborn one ended).
        looks(1).await;
        let mut actions = script.state.lock().unwrap().actions.clone();
        actions.sort();
        assert_eq!(actions, ["cancel 1", "cancel 2", "terminate 2"]);
        // The ended session is forgotten at the next look.
        tokio::time::sleep(SLOWEST_LOOK).await;
        assert_eq!(ids.snapshot(), HashSet::from([1, 3]));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_pool_is_not_looked_at() {
        let script = Script::default();
        let ids = SessionIds::default();
        {
            let mut s = script.state.lock().unwrap();
            s.open.insert(1);
            s.running.insert(1);
        }
        ids.insert(1);
        let _dog = spawn(
            ids.clone(),
            script.clone(),
            Duration::from_secs(60),
            "test".into(),
        );
        looks(3).await;
        let actions = script.state.lock().unwrap().actions.clone();
        assert!(actions.iter().all(|a| a == "rest"), "{actions:?}");
    }

    /// Looks closer together than a statement can become overdue, so an
    /// overdue statement at two looks in a row is one statement.
    #[test]
    fn looks_twice_per_timeout_within_bounds() {
        let every = |ms: u64| (Duration::from_millis(ms) / 2).clamp(FASTEST_LOOK, SLOWEST_LOOK);
        assert_eq!(every(100), FASTEST_LOOK);
        assert_eq!(every(2_000), Duration::from_secs(1));
        assert_eq!(every(30_000), SLOWEST_LOOK);
        assert_eq!(every(3_600_000), SLOWEST_LOOK);
        for ms in [1, 100, 499, 500, 2_000, 30_000, 31_000, 3_600_000] {
            assert!(every(ms) < Duration::from_millis(ms) + GRACE, "{ms}");
        }
    }
}
