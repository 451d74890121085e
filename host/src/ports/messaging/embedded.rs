//! The embedded default broker: durable, in one SQLite file
//! (`<state>/<app>/messaging.db`), so messages accepted are not lost when
//! the host stops or crashes.
//!
//! - The app's triggers are recorded in the file, and stay there between
//!   runs until a version of the app no longer has them (see
//!   `declare_triggers`); `publish` commits one row per trigger consuming
//!   the topic (by name or by a pattern; fan-out at publish) before it
//!   returns; the database runs in WAL mode with `synchronous = FULL`, so
//!   an accepted message is on disk.
//! - A message published to a topic no trigger consumes is kept
//!   unclaimed (the [`UNCLAIMED_MAX`] newest per app), and each trigger
//!   that subscribes to its topic gets a copy of what it has not seen yet.
//! - A delivery leases its row; `ack` deletes it, `nack` makes it visible
//!   again after the backoff with the attempt incremented, and a delivery
//!   dropped unsettled (its trigger stopped) is released. Rows leased when
//!   the host died are handed out again, as one more attempt, when the
//!   broker is next opened.
//! - A message published under the caller's id (a schedule tick) is
//!   stored once in [`ONCE_KEPT_S`], so a tick published twice (by the two
//!   versions of an app being reloaded) runs once, even when the first
//!   copy was handled before the second came.
//! - Request/reply is not stored: it goes through an in-process broker.
//!
//! One host process owns the file (a lock on `messaging.db.lock`): it alone
//! consumes. Another process on the same state directory (`berth run`
//! beside `berth up`) may publish; the owner picks those messages up within
//! [`IDLE_POLL`]. Hosts that share work need a broker server (NATS,
//! RabbitMQ).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt as _;
use rusqlite::{Connection, OptionalExtension as _, params};
use tokio::sync::Notify;

use super::inprocess::InProcessBroker;
use super::{Acker, Delivery, Message, MessagingBackend, MessagingError, Subscription};

/// Messages kept for topics no trigger consumes.
pub const UNCLAIMED_MAX: i64 = 10_000;

/// How long an id published with [`MessagingBackend::publish_with_id`] is
/// remembered: far longer than the minute a schedule tick may be late.
const ONCE_KEPT_S: i64 = 3600;
/// The default of the bytes an app's broker keeps undelivered (`[app_limits]
/// embedded_queue_mb`): messages waiting for a trigger that is slow or
/// failing, or kept for topics no trigger consumes, in the state directory
/// every tenant's stores share.
pub const DEFAULT_QUEUE_BYTES: i64 = 1 << 30;
/// Rows leased at once by a subscription.
const LEASE_BATCH: usize = 64;
/// The most payload bytes a subscription leases at once (beyond one row):
/// what it holds in memory for deliveries not yet handled.
const LEASE_BYTES: i64 = 4 << 20;
/// The longest a subscription sleeps without looking at the queue (what a
/// message published by another process waits at most).
pub const IDLE_POLL: Duration = Duration::from_secs(2);

/// The durable embedded broker of one app.
pub struct EmbeddedBroker {
    db: Arc<Mutex<Connection>>,
    /// Held while this process owns the file; `None` in a process that only
    /// publishes beside the owner.
    _owner: Option<std::fs::File>,
    path: PathBuf,
    /// Wakes a subscription when a message for it is stored or retried.
    wakers: Mutex<HashMap<(String, String), Arc<Notify>>>,
    requests: Arc<InProcessBroker>,
    /// Rows whose settlement and release both failed (the store took no
    /// writes: a full disk, say), released by the next lease or
    /// subscription that can write rather than only at the next start.
    /// The broker's, not a subscription's: a trigger stopped meanwhile (an
    /// app reloaded) must not take them with it.
    unreleased: Arc<Mutex<Vec<Unreleased>>>,
    /// The bytes its queue may hold (see [`DEFAULT_QUEUE_BYTES`]), if the
    /// file counts them (a file an older host owns does not).
    max_queue_bytes: Option<i64>,
}

/// The brokers open in this process, by file: an app reloaded by `berth
/// serve` shares its predecessor's broker rather than opening the file
/// twice.
static OPEN: Mutex<Vec<(PathBuf, Weak<EmbeddedBroker>)>> = Mutex::new(Vec::new());

fn failure(e: impl std::fmt::Display) -> MessagingError {
    tracing::error!(error = %e, "embedded broker failure");
    MessagingError::Unavailable("the embedded broker's store failed".into())
}

/// Now, as stored in `visible_at`.
fn now_ms() -> i64 {
    crate::ports::unix_millis() as i64
}

impl EmbeddedBroker {
    /// Opens (or creates) the broker's database at `path`, or returns the
    /// broker this process already has open there.
    pub fn open(path: &Path) -> anyhow::Result<Arc<EmbeddedBroker>> {
        Self::open_bounded(path, DEFAULT_QUEUE_BYTES)
    }

    /// [`Self::open`], keeping at most `max_queue_bytes` of messages
    /// undelivered (the first open of a file in this process sets it).
    pub fn open_bounded(path: &Path, max_queue_bytes: i64) -> anyhow::Result<Arc<EmbeddedBroker>> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let path = std::path::absolute(path)?;
        let mut open = OPEN.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|(_, broker)| broker.strong_count() > 0);
        if let Some(broker) = open
            .iter()
            .find(|(p, _)| *p == path)
            .and_then(|(_, b)| b.upgrade())
        {
            return Ok(broker);
        }
        let lock_path = path.with_extension("db.lock");
        let lock = std::fs::File::create(&lock_path)?;
        let owner = match lock.try_lock() {
            Ok(()) => Some(lock),
            Err(std::fs::TryLockError::WouldBlock) => None,
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        };
        let mut db = Connection::open(&path)?;
        db.execute_batch(
            "PRAGMA busy_timeout = 5000;
             PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS queue (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 consumer TEXT,
                 trigger_topic TEXT,
                 topic TEXT NOT NULL,
                 id TEXT NOT NULL,
                 payload BLOB NOT NULL,
                 headers TEXT NOT NULL,
                 attempt INTEGER NOT NULL,
                 visible_at INTEGER NOT NULL,
                 leased INTEGER NOT NULL DEFAULT 0
             );
             CREATE TABLE IF NOT EXISTS consumers (
                 topic TEXT NOT NULL,
                 consumer TEXT NOT NULL,
                 live INTEGER NOT NULL,
                 claimed_seq INTEGER NOT NULL,
                 PRIMARY KEY (topic, consumer)
             );
             CREATE TABLE IF NOT EXISTS published_once (id TEXT PRIMARY KEY, at INTEGER NOT NULL);",
        )?;
        if owner.is_some() {
            // Only the owner changes the layout, so an older host still
            // owning the file never finds it changed under it.
            migrate_to_triggers(&mut db)?;
            // Only the owner had deliveries in flight: a lease left in the
            // file is a delivery its previous run never settled.
            db.execute(
                "UPDATE queue SET leased = 0, attempt = attempt + 1 WHERE leased = 1",
                [],
            )?;
            // The triggers stay live between runs, so that what is published
            // meanwhile (by `berth run`, or while this run's triggers start
            // one by one) keeps a copy for each; `declare_triggers` drops
            // the triggers an app no longer has.
            count_queue_bytes(&mut db)?;
        } else if !has_trigger_column(&db)? {
            anyhow::bail!(
                "{}: this app's embedded broker is owned by a running berth of an older version; stop or upgrade it before publishing from this one",
                path.display()
            );
        }
        let counted = counts_queue_bytes(&db)?;
        let broker = Arc::new(EmbeddedBroker {
            max_queue_bytes: counted.then_some(max_queue_bytes),
            db: Arc::new(Mutex::new(db)),
            _owner: owner,
            path: path.clone(),
            wakers: Mutex::default(),
            requests: InProcessBroker::new(),
            unreleased: Arc::default(),
        });
        open.push((path, Arc::downgrade(&broker)));
        Ok(broker)
    }

    /// What wakes the subscription of trigger `consumer` on `trigger` (its
    /// topic or pattern).
    fn waker(&self, consumer: &str, trigger: &str) -> Arc<Notify> {
        self.wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((consumer.to_string(), trigger.to_string()))
            .or_default()
            .clone()
    }
}

/// Deletes the oldest unclaimed rows (kept only for a trigger that may
/// subscribe to their topic later) until `needed` bytes are freed or none
/// is left, and returns the bytes and rows freed. Without it, messages to
/// topics no trigger consumes (dead letters, say) would fill the queue's
/// byte bound for good: nothing else takes them, so every publish of the
/// app would be refused until an operator emptied the file.
fn evict_unclaimed(tx: &rusqlite::Transaction<'_>, needed: i64) -> rusqlite::Result<(i64, usize)> {
    let mut freed = 0i64;
    let mut last = None;
    {
        let mut oldest = tx.prepare(
            "SELECT seq, length(payload) + length(CAST(headers AS BLOB)) FROM queue
             WHERE consumer IS NULL ORDER BY seq",
        )?;
        let mut rows = oldest.query([])?;
        while freed < needed {
            let Some(row) = rows.next()? else { break };
            last = Some(row.get::<_, i64>(0)?);
            freed += row.get::<_, i64>(1)?;
        }
    }
    let Some(last) = last else {
        return Ok((0, 0));
    };
    let rows = tx.execute(
        "DELETE FROM queue WHERE consumer IS NULL AND seq <= ?1",
        params![last],
    )?;
    Ok((freed, rows))
}

/// Runs `work` on the database off the async threads.
async fn with_db<T: Send + 'static>(
    db: &Arc<Mutex<Connection>>,
    work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, MessagingError> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || {
        let mut conn = db.lock().unwrap_or_else(|p| p.into_inner());
        work(&mut conn)
    })
    .await
    .map_err(failure)?
    .map_err(failure)
}

impl EmbeddedBroker {
    /// Stores a message under a new id, which is not remembered (see
    /// [`ONCE_KEPT_S`]): nothing will publish it again.
    async fn store_new(
        &self,
        topic: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
        bounded: bool,
    ) -> Result<String, MessagingError> {
        let id = uuid::Uuid::new_v4().to_string();
        self.store(topic, &id, payload, headers, bounded, false)
            .await?;
        Ok(id)
    }

    /// Stores a copy for every live trigger whose topic or pattern
    /// matches (or one unclaimed), within the queue's byte bound if
    /// `bounded`; with `once`, only if no message of the same `id` was
    /// stored in the last [`ONCE_KEPT_S`] seconds.
    async fn store(
        &self,
        topic: &str,
        id: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
        bounded: bool,
        once: bool,
    ) -> Result<(), MessagingError> {
        let headers = serde_json::to_string(&headers).map_err(failure)?;
        let (topic_owned, id) = (topic.to_string(), id.to_string());
        let max_bytes = self.max_queue_bytes.filter(|_| bounded);
        let stored = with_db(&self.db, move |db| {
            // Immediate: a deferred transaction that reads, then writes after
            // another process (`berth run`) committed, fails at once
            // (SQLITE_BUSY_SNAPSHOT) rather than waiting its turn.
            let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            if once {
                let now_s = now_ms() / 1000;
                tx.execute(
                    "DELETE FROM published_once WHERE at < ?1",
                    params![now_s - ONCE_KEPT_S],
                )?;
                let first = tx.execute(
                    "INSERT OR IGNORE INTO published_once (id, at) VALUES (?1, ?2)",
                    params![id, now_s],
                )?;
                if first == 0 {
                    return Ok(Ok((Vec::new(), 0)));
                }
            }
            // Every live trigger whose topic or pattern matches.
            let consumers: Vec<(String, String)> = tx
                .prepare("SELECT consumer, topic FROM consumers WHERE live = 1")?
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                .filter(|row| {
                    row.as_ref().map_or(true, |(_, trigger)| {
                        super::pattern::matches(trigger, &topic_owned)
                    })
                })
                .collect::<rusqlite::Result<_>>()?;
            let targets: Vec<(Option<&str>, Option<&str>)> = if consumers.is_empty() {
                vec![(None, None)]
            } else {
                consumers
                    .iter()
                    .map(|(c, trigger)| (Some(c.as_str()), Some(trigger.as_str())))
                    .collect()
            };
            let mut evicted = 0;
            if let Some(max) = max_bytes {
                let held: i64 =
                    tx.query_row("SELECT bytes FROM queue_bytes WHERE id = 0", [], |r| r.get(0))?;
                let adding = ((payload.len() + headers.len()) * targets.len()) as i64;
                let held = if held.saturating_add(adding) > max {
                    let (freed, rows) = evict_unclaimed(&tx, held.saturating_add(adding) - max)?;
                    evicted = rows;
                    held - freed
                } else {
                    held
                };
                // One message passes into an empty queue, whatever its size.
                if held > 0 && held.saturating_add(adding) > max {
                    return Ok(Err(held));
                }
            }
            for (consumer, trigger) in &targets {
                tx.execute(
                    "INSERT OR IGNORE INTO queue (consumer, trigger_topic, topic, id, payload, headers, attempt, visible_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7)",
                    params![consumer, trigger, topic_owned, id, payload, headers, now_ms()],
                )?;
            }
            let dropped = evicted
                + if consumers.is_empty() {
                    tx.execute(
                        "DELETE FROM queue WHERE seq IN (
                         SELECT seq FROM queue WHERE consumer IS NULL
                         ORDER BY seq DESC LIMIT -1 OFFSET ?1)",
                        params![UNCLAIMED_MAX],
                    )?
                } else {
                    0
                };
            tx.commit()?;
            Ok(Ok((consumers, dropped)))
        })
        .await?;
        let (consumers, dropped) = stored.map_err(|held| {
            // Keyed by the file, which is the app's.
            if crate::audit::app_warning_due(&self.path.to_string_lossy()) {
                tracing::warn!(file = %self.path.display(), held_mib = held >> 20, "an app's embedded broker is full ([app_limits] embedded_queue_mb): publishes are refused until its triggers take messages");
            }
            MessagingError::Unavailable(format!(
                "the app's embedded broker holds {} MiB of undelivered messages, as much as the host allows ([app_limits] embedded_queue_mb); retry once its triggers took some",
                held >> 20
            ))
        })?;
        // A guest publishing at the bound causes one at will.
        if dropped > 0 && crate::audit::app_warning_due(&self.path.to_string_lossy()) {
            tracing::warn!(file = %self.path.display(), dropped, "the oldest messages of topics no trigger consumes were dropped");
        }
        for (consumer, trigger) in &consumers {
            self.waker(consumer, trigger).notify_one();
        }
        Ok(())
    }
}

#[async_trait]
impl MessagingBackend for EmbeddedBroker {
    async fn publish_with_id(
        &self,
        topic: &str,
        id: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> Result<(), MessagingError> {
        self.store(topic, id, payload, headers, true, true).await
    }

    async fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> Result<String, MessagingError> {
        self.store_new(topic, payload, headers, true).await
    }

    async fn publish_unbounded(
        &self,
        topic: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> Result<String, MessagingError> {
        self.store_new(topic, payload, headers, false).await
    }

    /// Marks exactly `triggers` live, before they subscribe: every
    /// message published from now on keeps a copy for each of them, even
    /// one published by a trigger that subscribed first while another has
    /// not yet. A trigger no longer among them (removed from the manifest,
    /// or given another topic or component) stops getting copies, and the
    /// copies it had not taken are dropped, so they do not stay in the file
    /// for ever.
    async fn declare_triggers(&self, triggers: &[(String, String)]) -> Result<(), MessagingError> {
        if self._owner.is_none() {
            // Its subscriptions are refused anyway (see `subscribe`).
            return Ok(());
        }
        let declared = triggers.to_vec();
        let dropped = with_db(&self.db, move |db| {
            let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for (topic, consumer) in &declared {
                tx.execute(
                    "INSERT INTO consumers (topic, consumer, live, claimed_seq) VALUES (?1, ?2, 1, 0)
                     ON CONFLICT (topic, consumer) DO UPDATE SET live = 1",
                    params![topic, consumer],
                )?;
            }
            let known: Vec<(String, String)> = tx
                .prepare("SELECT topic, consumer FROM consumers")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut dropped = Vec::new();
            for (topic, consumer) in known.into_iter().filter(|t| !declared.contains(t)) {
                tx.execute(
                    "UPDATE consumers SET live = 0 WHERE topic = ?1 AND consumer = ?2",
                    params![topic, consumer],
                )?;
                // Rows still leased are being handled by the version
                // replaced; they go with their settlement, or at the next
                // declaration.
                let n = tx.execute(
                    "DELETE FROM queue WHERE consumer = ?1 AND trigger_topic = ?2 AND leased = 0",
                    params![consumer, topic],
                )?;
                if n > 0 {
                    dropped.push((topic, consumer, n));
                }
            }
            tx.commit()?;
            Ok(dropped)
        })
        .await?;
        for (topic, consumer, n) in dropped {
            tracing::warn!(file = %self.path.display(), component = %consumer, %topic, dropped = n, "a trigger is no longer in the manifest; the messages it had not taken were dropped");
        }
        Ok(())
    }

    async fn request(
        &self,
        topic: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<Message, MessagingError> {
        self.requests
            .request(topic, payload, headers, timeout)
            .await
    }

    async fn subscribe(
        &self,
        topic: &str,
        consumer: &str,
    ) -> Result<Box<dyn Subscription>, MessagingError> {
        if self._owner.is_none() {
            return Err(MessagingError::Unavailable(format!(
                "another berth process consumes this app's embedded broker ({}); stop it, or give this one its own --state-dir",
                self.path.display()
            )));
        }
        let (c, t) = (consumer.to_string(), topic.to_string());
        let unreleased = self.unreleased.clone();
        with_db(&self.db, move |db| {
            release_again(db, &unreleased)?;
            // Immediate: a deferred transaction that reads and then writes
            // fails at once (SQLITE_BUSY_SNAPSHOT) when another process
            // committed between the two, whatever the busy timeout.
            let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO consumers (topic, consumer, live, claimed_seq) VALUES (?1, ?2, 1, 0)
                 ON CONFLICT (topic, consumer) DO UPDATE SET live = 1",
                params![t, c],
            )?;
            // The trigger gets a copy of what waited for its topics since
            // it last subscribed (everything, the first time).
            let waiting: Vec<i64> = tx
                .prepare(
                    "SELECT seq, topic FROM queue WHERE consumer IS NULL AND seq > (
                         SELECT claimed_seq FROM consumers WHERE topic = ?2 AND consumer = ?1)
                     ORDER BY seq",
                )?
                .query_map(params![c, t], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
                .filter_map(|row| match row {
                    Ok((seq, topic)) => super::pattern::matches(&t, &topic).then_some(Ok(seq)),
                    Err(e) => Some(Err(e)),
                })
                .collect::<rusqlite::Result<_>>()?;
            for seq in waiting {
                tx.execute(
                    "INSERT OR IGNORE INTO queue (consumer, trigger_topic, topic, id, payload, headers, attempt, visible_at)
                     SELECT ?1, ?2, topic, id, payload, headers, attempt, visible_at FROM queue
                     WHERE seq = ?3",
                    params![c, t, seq],
                )?;
            }
            tx.execute(
                "UPDATE consumers SET claimed_seq = (SELECT coalesce(max(seq), 0) FROM queue)
                 WHERE topic = ?2 AND consumer = ?1",
                params![c, t],
            )?;
            tx.commit()
        })
        .await?;
        let requests = self.requests.subscribe(topic, consumer).await?;
        Ok(Box::new(EmbeddedSubscription {
            db: self.db.clone(),
            consumer: consumer.to_string(),
            trigger: topic.to_string(),
            wake: self.waker(consumer, topic),
            requests,
            leased: VecDeque::new(),
            unreleased: self.unreleased.clone(),
            request_last: false,
        }))
    }
}

#[path = "embedded_layout.rs"]
mod layout;
use layout::{count_queue_bytes, counts_queue_bytes, has_trigger_column, migrate_to_triggers};

#[path = "embedded_subscription.rs"]
mod subscription;
use subscription::{EmbeddedSubscription, Unreleased, release_again};

#[cfg(test)]
#[path = "embedded_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "embedded_bound_tests.rs"]
mod bound_tests;
