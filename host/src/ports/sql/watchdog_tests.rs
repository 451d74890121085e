//! Tests of the statement watchdog against a scripted server.

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
