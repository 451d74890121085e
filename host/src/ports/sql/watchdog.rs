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

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;

/// A session's server-side id (a Postgres backend pid, a MySQL connection id).
pub type SessionId = u64;

/// What the host knows of one pooled session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Noted {
    /// Its id.
    pub id: SessionId,
    /// Tells it from a later session given the same id (Postgres: its
    /// backend's start, in microseconds since the epoch); 0 where an id is
    /// not reused while the server runs (MySQL).
    pub incarnation: i64,
    /// When the host last sent it a statement, where the adapter knows
    /// which session runs a statement (MySQL).
    pub last_statement: Instant,
    /// How many statements the host sent it, where the adapter knows (as
    /// `last_statement`): tells a later statement from the one looked at
    /// even within one tick of the clock.
    pub statements: u64,
}

/// A pool's sessions, noted as they connect or are borrowed and forgotten
/// once the server no longer lists them, and when the pool last sent a
/// statement.
#[derive(Clone)]
pub struct SessionIds(Arc<Noting>);

struct Noting {
    sessions: Mutex<HashMap<SessionId, Noted>>,
    /// The origin of `last_statement_ms`.
    created: Instant,
    /// One more than the milliseconds from `created` to the pool's last
    /// statement; 0 before the first.
    last_statement_ms: AtomicU64,
}

impl Default for SessionIds {
    fn default() -> Self {
        SessionIds(Arc::new(Noting {
            sessions: Mutex::default(),
            created: Instant::now(),
            last_statement_ms: AtomicU64::new(0),
        }))
    }
}

impl SessionIds {
    /// Notes a session of the pool (as it connects).
    pub fn insert(&self, id: SessionId, incarnation: i64) {
        self.lock().insert(
            id,
            Noted {
                id,
                incarnation,
                last_statement: Instant::now(),
                statements: 0,
            },
        );
    }

    /// Notes that the pool sends a statement now, on a session it cannot
    /// name (Postgres, whose server reports each statement's start).
    pub fn pool_statement(&self) {
        let ms = self.0.created.elapsed().as_millis() + 1;
        self.0
            .last_statement_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Notes that the host sends session `id` a statement now (MySQL,
    /// where the server's own figure can be moved by the session).
    pub fn statement(&self, id: SessionId) {
        self.pool_statement();
        let now = Instant::now();
        self.lock()
            .entry(id)
            .and_modify(|noted| {
                noted.last_statement = now;
                noted.statements += 1;
            })
            .or_insert(Noted {
                id,
                incarnation: 0,
                last_statement: now,
                statements: 1,
            });
    }

    /// Whether the pool sent a statement within `window`.
    fn statement_within(&self, window: Duration) -> bool {
        match self.0.last_statement_ms.load(Ordering::Relaxed) {
            0 => false,
            last => {
                let now = self.0.created.elapsed().as_millis() + 1;
                now.saturating_sub(u128::from(last)) <= window.as_millis()
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Noted>> {
        // A panic while holding the lock leaves a map that is still valid.
        self.0
            .sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the host sent the session a statement since `looked_at`
    /// was taken, or the id now names another session: then what the
    /// server listed as overdue has ended, and a cancel would hit the
    /// session's next statement instead.
    fn moved_on(&self, looked_at: &Noted) -> bool {
        self.lock().get(&looked_at.id) != Some(looked_at)
    }

    fn snapshot(&self) -> Vec<Noted> {
        self.lock().values().copied().collect()
    }

    /// Forgets the sessions last noted before `instant` (connected, or sent
    /// a statement); says whether there were any.
    fn forget_noted_before(&self, instant: Instant) -> bool {
        let mut sessions = self.lock();
        let before = sessions.len();
        sessions.retain(|_, noted| noted.last_statement >= instant);
        sessions.len() != before
    }

    /// Forgets the sessions of `looked_at` the server no longer lists
    /// (those noted since, or noted again under the same id, are kept).
    fn forget_ended(&self, looked_at: &[Noted], listed: &HashSet<SessionId>) {
        let mut sessions = self.lock();
        for noted in looked_at.iter().filter(|n| !listed.contains(&n.id)) {
            if sessions.get(&noted.id).map(|n| n.incarnation) == Some(noted.incarnation) {
                sessions.remove(&noted.id);
            }
        }
    }
}

/// One noted session as the server lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedSession {
    /// Its id.
    pub id: SessionId,
    /// Whether it runs a statement.
    pub running: bool,
    /// Whether that statement started longer ago than the limit.
    pub overdue: bool,
}

/// What the watchdog needs of an engine.
#[async_trait]
pub trait Sessions: Send + 'static {
    /// Whether any pooled connection is in use.
    fn busy(&self) -> bool;
    /// The sessions of `noted` the server still lists (the same session:
    /// its id and incarnation), whether each runs a statement, and whether
    /// that statement started longer than `limit` ago.
    async fn list(
        &mut self,
        noted: &[Noted],
        limit: Duration,
    ) -> Result<Vec<ListedSession>, String>;
    /// Cancels the session's statement, if it still runs one past `limit`.
    async fn cancel(&mut self, session: &Noted, limit: Duration) -> Result<(), String>;
    /// Ends the session, if it still runs a statement past `limit`.
    async fn terminate(&mut self, session: &Noted, limit: Duration) -> Result<(), String>;
    /// Closes the watchdog's own connection while there is nothing to watch.
    async fn rest(&mut self);
    /// When the server started, if the engine's session ids start again
    /// with the server (MySQL, where [`Noted::incarnation`] is 0) and the
    /// watchdog connected since the last call: an id noted before then may
    /// now name another session of the same login, another pool's among
    /// them.
    fn take_server_start(&mut self) -> Option<Instant> {
        None
    }
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
    let every = look_interval(statement_timeout);
    let task = tokio::spawn(watch(
        ids,
        sessions,
        statement_timeout + GRACE,
        every,
        label,
    ));
    Watchdog { task }
}

/// By when a reachable server has answered any statement: the watchdog
/// cancels one past `statement_timeout` and the grace, and ends its session
/// at most two looks later (one more look for margin). A statement still
/// unanswered then means the server, or the way to it, is gone.
pub fn answered_by(statement_timeout: Duration) -> Duration {
    statement_timeout + GRACE + look_interval(statement_timeout) * 3
}

/// Twice per statement timeout, within [`FASTEST_LOOK`] and [`SLOWEST_LOOK`].
fn look_interval(statement_timeout: Duration) -> Duration {
    (statement_timeout / 2).clamp(FASTEST_LOOK, SLOWEST_LOOK)
}

/// Looks while a pooled connection is in use, while a statement sent in
/// the last `limit` and two looks may still run (a connection whose caller
/// gave up mid-statement can leave the pool at once: mysql_async discards
/// it, sqlx closes one past its lifetime, and the server runs on), while
/// the last look saw a noted session running a statement, and while a
/// cancel awaits its check.
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
    let mut running_seen = false;
    let window = limit + every * 2;
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let active = sessions.busy()
            || ids.statement_within(window)
            || running_seen
            || !cancelled.is_empty();
        if !active {
            sessions.rest().await;
            continue;
        }
        let looked_at = ids.snapshot();
        if looked_at.is_empty() {
            running_seen = false;
            continue;
        }
        // Bounded, so a server that stopped answering delays the next look
        // by one interval at most (and its connection is replaced).
        let listed = match tokio::time::timeout(every, sessions.list(&looked_at, limit)).await {
            Ok(Ok(listed)) => listed,
            Ok(Err(error)) => {
                tracing::warn!(pool = %label, %error, "the statement watchdog cannot list the pool's sessions");
                continue;
            }
            Err(_) => {
                tracing::warn!(pool = %label, "the statement watchdog's look at the pool's sessions timed out");
                sessions.rest().await;
                continue;
            }
        };
        if let Some(start) = sessions.take_server_start()
            && ids.forget_noted_before(start)
        {
            // Ids noted before the server (re)started are not the pool's
            // sessions any more: forgotten, and the listing, which may hold
            // strangers under them, is not acted on. Look again.
            tracing::info!(pool = %label, "sessions noted before the database server started are forgotten");
            cancelled.clear();
            running_seen = true;
            continue;
        }
        let listed_ids: HashSet<SessionId> = listed.iter().map(|s| s.id).collect();
        ids.forget_ended(&looked_at, &listed_ids);
        running_seen = listed.iter().any(|s| s.running);
        let noted: HashMap<SessionId, Noted> = looked_at.into_iter().map(|n| (n.id, n)).collect();
        let mut still_cancelled = HashSet::new();
        for session in listed.into_iter().filter(|s| s.overdue) {
            let Some(noted) = noted.get(&session.id) else {
                continue;
            };
            let id = session.id;
            if ids.moved_on(noted) {
                continue;
            }
            if cancelled.contains(&id) {
                tracing::warn!(pool = %label, session = id, "a statement outlived its cancel; ending its session");
                let ended = tokio::time::timeout(every, sessions.terminate(noted, limit)).await;
                if let Ok(Err(error)) = ended {
                    tracing::warn!(pool = %label, session = id, %error, "cannot end the session");
                }
            } else {
                tracing::warn!(pool = %label, session = id, limit_ms = limit.as_millis() as u64,
                    "a statement ran past the statement timeout (its session's limit was changed); cancelling it");
                let cancel = tokio::time::timeout(every, sessions.cancel(noted, limit)).await;
                if let Ok(Err(error)) = cancel {
                    tracing::warn!(pool = %label, session = id, %error, "cannot cancel the statement");
                }
                still_cancelled.insert(id);
            }
        }
        cancelled = still_cancelled;
    }
}

#[cfg(test)]
#[path = "watchdog_tests.rs"]
mod tests;
