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
mod tests {
    use super::*;

    /// A scripted server: sessions in `running` run an overdue statement;
    /// actions are recorded. Time is tokio's, paused.
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
        /// Sessions whose overdue statement ends as the server lists it,
        /// the host sending them the next one at once (through `ids`).
        finishing: Option<(SessionIds, HashSet<SessionId>)>,
        /// The server (re)started then, as the next look finds.
        started: Option<Instant>,
        actions: Vec<String>,
    }

    #[async_trait]
    impl Sessions for Script {
        fn busy(&self) -> bool {
            self.state.lock().unwrap().busy
        }
        async fn list(
            &mut self,
            noted: &[Noted],
            _limit: Duration,
        ) -> Result<Vec<ListedSession>, String> {
            let mut s = self.state.lock().unwrap();
            if let Some((ids, finishing)) = s.finishing.take() {
                for &id in &finishing {
                    ids.statement(id);
                }
            }
            Ok(noted
                .iter()
                .map(|n| n.id)
                .filter(|id| s.open.contains(id))
                .map(|id| ListedSession {
                    id,
                    running: s.running.contains(&id),
                    overdue: s.running.contains(&id),
                })
                .collect())
        }
        async fn cancel(&mut self, session: &Noted, _limit: Duration) -> Result<(), String> {
            let id = session.id;
            let mut s = self.state.lock().unwrap();
            s.actions.push(format!("cancel {id}"));
            if !s.stubborn.contains(&id) {
                s.running.remove(&id);
            }
            Ok(())
        }
        async fn terminate(&mut self, session: &Noted, _limit: Duration) -> Result<(), String> {
            let id = session.id;
            let mut s = self.state.lock().unwrap();
            s.actions.push(format!("terminate {id}"));
            s.running.remove(&id);
            s.open.remove(&id);
            Ok(())
        }
        async fn rest(&mut self) {
            self.state.lock().unwrap().actions.push("rest".into());
        }
        fn take_server_start(&mut self) -> Option<Instant> {
            self.state.lock().unwrap().started.take()
        }
    }

    /// A watchdog over `ids` on `script`'s server, with a 60 s statement
    /// timeout: it looks every 15 s, the first look at once.
    fn watch_script(ids: &SessionIds, script: &Script) -> Watchdog {
        spawn(
            ids.clone(),
            script.clone(),
            Duration::from_secs(60),
            "test".into(),
        )
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
            ids.insert(id, 0);
        }
        let _dog = watch_script(&ids, &script);
        // Looks at 0 s (both cancelled), 15 s (the stubborn one ended).
        looks(1).await;
        let mut actions = script.state.lock().unwrap().actions.clone();
        actions.sort();
        assert_eq!(actions, ["cancel 1", "cancel 2", "terminate 2"]);
        // The ended session is forgotten at the next look.
        tokio::time::sleep(SLOWEST_LOOK).await;
        let left: HashSet<SessionId> = ids.snapshot().iter().map(|n| n.id).collect();
        assert_eq!(left, HashSet::from([1, 3]));
    }

    /// The overdue statement ends between the server's answer and the
    /// cancel, and the host sends the session its next statement: that
    /// one is not cancelled (nor its session ended at the next look).
    #[tokio::test(start_paused = true)]
    async fn a_session_sent_a_statement_since_the_look_is_left_alone() {
        let script = Script::default();
        let ids = SessionIds::default();
        ids.statement(5);
        ids.statement(6);
        {
            let mut s = script.state.lock().unwrap();
            s.busy = true;
            s.open.extend([5, 6]);
            s.running.extend([5, 6]);
            s.stubborn.insert(5);
            s.finishing = Some((ids.clone(), HashSet::from([5])));
        }
        let _dog = watch_script(&ids, &script);
        looks(0).await;
        assert_eq!(script.state.lock().unwrap().actions, ["cancel 6"]);
        // Still listed as overdue at the next look (in this script), it is
        // a first cancel for the statement the host sent since, not a
        // session that ignored one.
        looks(1).await;
        assert_eq!(
            script.state.lock().unwrap().actions,
            ["cancel 6", "cancel 5"]
        );
    }

    /// After a restart, ids noted before it may name a stranger's sessions
    /// (MySQL numbers them from 1 again): none is cancelled on their
    /// account, while a session noted since the start is watched.
    #[tokio::test(start_paused = true)]
    async fn ids_noted_before_the_server_started_are_forgotten() {
        let script = Script::default();
        let ids = SessionIds::default();
        ids.statement(7);
        ids.statement(8);
        tokio::time::sleep(Duration::from_secs(1)).await;
        ids.statement(9);
        {
            let mut s = script.state.lock().unwrap();
            s.busy = true;
            s.started = Some(Instant::now() - Duration::from_millis(500));
            // 7 and 8 now name another pool's sessions, running
            // statements as overdue as the pool's own 9.
            s.open.extend([7, 8, 9]);
            s.running.extend([7, 8, 9]);
        }
        let _dog = watch_script(&ids, &script);
        looks(0).await;
        let left: HashSet<SessionId> = ids.snapshot().iter().map(|n| n.id).collect();
        assert_eq!(left, HashSet::from([9]));
        assert!(script.state.lock().unwrap().actions.is_empty());
        looks(1).await;
        assert_eq!(script.state.lock().unwrap().actions, ["cancel 9"]);
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
        ids.insert(1, 0);
        let _dog = watch_script(&ids, &script);
        looks(3).await;
        let actions = script.state.lock().unwrap().actions.clone();
        assert!(!actions.is_empty(), "the watchdog ran");
        assert!(actions.iter().all(|a| a == "rest"), "{actions:?}");
    }

    /// A connection can leave the pool while its statement still runs on
    /// the server (its caller gave up): a recent statement keeps the
    /// watchdog looking, and a running one keeps it looking after that.
    #[tokio::test(start_paused = true)]
    async fn a_statement_abandoned_outside_the_pool_is_still_watched() {
        let script = Script::default();
        let ids = SessionIds::default();
        script.state.lock().unwrap().open.insert(4);
        ids.statement(4);
        let _dog = watch_script(&ids, &script);
        // Not yet overdue at the first looks, then overdue: cancelled,
        // though the pool was never busy.
        looks(1).await;
        script.state.lock().unwrap().running.insert(4);
        tokio::time::sleep(SLOWEST_LOOK).await;
        assert_eq!(script.state.lock().unwrap().actions, ["cancel 4"]);
        // Long after the statement, with nothing running, it rests.
        tokio::time::sleep(SLOWEST_LOOK * 8).await;
        let actions = script.state.lock().unwrap().actions.clone();
        assert_eq!(
            actions.last().map(String::as_str),
            Some("rest"),
            "{actions:?}"
        );
    }

    #[test]
    fn a_session_noted_again_under_its_id_is_not_forgotten() {
        let ids = SessionIds::default();
        ids.insert(9, 100);
        let looked_at = ids.snapshot();
        // The server ended it and a new backend got the same pid.
        ids.insert(9, 200);
        ids.forget_ended(&looked_at, &HashSet::new());
        assert_eq!(ids.snapshot().first().map(|n| n.incarnation), Some(200));
        ids.forget_ended(&ids.snapshot(), &HashSet::new());
        assert!(ids.snapshot().is_empty());
    }

    /// Looks closer together than a statement can become overdue, so an
    /// overdue statement at two looks in a row is one statement.
    #[test]
    fn looks_twice_per_timeout_within_bounds() {
        let every = |ms: u64| look_interval(Duration::from_millis(ms));
        assert_eq!(every(100), FASTEST_LOOK);
        assert_eq!(every(2_000), Duration::from_secs(1));
        assert_eq!(every(30_000), SLOWEST_LOOK);
        assert_eq!(every(3_600_000), SLOWEST_LOOK);
        for ms in [1, 100, 499, 500, 2_000, 30_000, 31_000, 3_600_000] {
            assert!(every(ms) < Duration::from_millis(ms) + GRACE, "{ms}");
        }
    }
}
