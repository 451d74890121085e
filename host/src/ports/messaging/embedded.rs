//! The embedded default broker: durable, in one SQLite file
//! (`<state>/<app>/messaging.db`), so messages accepted are not lost when
//! the host stops or crashes.
//!
//! - The triggers of the host's current run are recorded in the file, and
//!   `publish` commits one row per trigger consuming the topic (fan-out at
//!   publish) before it returns; the database runs in WAL mode with
//!   `synchronous = FULL`, so an accepted message is on disk.
//! - A message published to a topic no trigger consumes is kept
//!   unclaimed (the [`UNCLAIMED_MAX`] newest per app), and each trigger
//!   that subscribes to its topic gets a copy of what it has not seen yet.
//! - A delivery leases its row; `ack` deletes it, `nack` makes it visible
//!   again after the backoff with the attempt incremented, and a delivery
//!   dropped unsettled (its trigger stopped) is released. Rows leased when
//!   the host died are handed out again, as one more attempt, when the
//!   broker is next opened.
//! - A message id is stored once per trigger, so a schedule tick published
//!   twice (an app being reloaded) runs once.
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
use rusqlite::{Connection, OptionalExtension as _, params};
use tokio::sync::Notify;

use super::inprocess::InProcessBroker;
use super::{Acker, Delivery, Message, MessagingBackend, MessagingError, Subscription};

/// Messages kept for topics no trigger consumes.
pub const UNCLAIMED_MAX: i64 = 10_000;
/// Rows leased at once by a subscription.
const LEASE_BATCH: usize = 64;
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
        let db = Connection::open(&path)?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS queue (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 consumer TEXT,
                 topic TEXT NOT NULL,
                 id TEXT NOT NULL,
                 payload BLOB NOT NULL,
                 headers TEXT NOT NULL,
                 attempt INTEGER NOT NULL,
                 visible_at INTEGER NOT NULL,
                 leased INTEGER NOT NULL DEFAULT 0
             );
             CREATE INDEX IF NOT EXISTS queue_ready ON queue (consumer, topic, leased, visible_at);
             CREATE UNIQUE INDEX IF NOT EXISTS queue_once ON queue (consumer, topic, id);
             CREATE TABLE IF NOT EXISTS consumers (
                 topic TEXT NOT NULL,
                 consumer TEXT NOT NULL,
                 live INTEGER NOT NULL,
                 claimed_seq INTEGER NOT NULL,
                 PRIMARY KEY (topic, consumer)
             );",
        )?;
        if owner.is_some() {
            // Only the owner had deliveries in flight: a lease left in the
            // file is a delivery its previous run never settled.
            db.execute(
                "UPDATE queue SET leased = 0, attempt = attempt + 1 WHERE leased = 1",
                [],
            )?;
            // The triggers of this run subscribe anew; one removed from the
            // manifest stops receiving copies.
            db.execute("UPDATE consumers SET live = 0", [])?;
        }
        let broker = Arc::new(EmbeddedBroker {
            db: Arc::new(Mutex::new(db)),
            _owner: owner,
            path: path.clone(),
            wakers: Mutex::default(),
            requests: InProcessBroker::new(),
        });
        open.push((path, Arc::downgrade(&broker)));
        Ok(broker)
    }

    fn waker(&self, consumer: &str, topic: &str) -> Arc<Notify> {
        self.wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((consumer.to_string(), topic.to_string()))
            .or_default()
            .clone()
    }
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

#[async_trait]
impl MessagingBackend for EmbeddedBroker {
    async fn publish_with_id(
        &self,
        topic: &str,
        id: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> Result<(), MessagingError> {
        let headers = serde_json::to_string(&headers).map_err(failure)?;
        let (topic_owned, id) = (topic.to_string(), id.to_string());
        let (consumers, dropped) = with_db(&self.db, move |db| {
            let tx = db.transaction()?;
            let consumers: Vec<String> = tx
                .prepare("SELECT consumer FROM consumers WHERE topic = ?1 AND live = 1")?
                .query_map(params![topic_owned], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let targets: Vec<Option<&str>> = if consumers.is_empty() {
                vec![None]
            } else {
                consumers.iter().map(|c| Some(c.as_str())).collect()
            };
            for consumer in &targets {
                tx.execute(
                    "INSERT OR IGNORE INTO queue (consumer, topic, id, payload, headers, attempt, visible_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6)",
                    params![consumer, topic_owned, id, payload, headers, now_ms()],
                )?;
            }
            let dropped = if consumers.is_empty() {
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
            Ok((consumers, dropped))
        })
        .await?;
        if dropped > 0 {
            tracing::warn!(file = %self.path.display(), dropped, "the oldest messages of topics no trigger consumes were dropped");
        }
        for consumer in &consumers {
            self.waker(consumer, topic).notify_one();
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
        with_db(&self.db, move |db| {
            let tx = db.transaction()?;
            tx.execute(
                "INSERT INTO consumers (topic, consumer, live, claimed_seq) VALUES (?1, ?2, 1, 0)
                 ON CONFLICT (topic, consumer) DO UPDATE SET live = 1",
                params![t, c],
            )?;
            // The trigger gets a copy of what waited for its topic since it
            // last subscribed (everything, the first time).
            tx.execute(
                "INSERT OR IGNORE INTO queue (consumer, topic, id, payload, headers, attempt, visible_at)
                 SELECT ?1, topic, id, payload, headers, attempt, visible_at FROM queue
                 WHERE consumer IS NULL AND topic = ?2 AND seq > (
                     SELECT claimed_seq FROM consumers WHERE topic = ?2 AND consumer = ?1)
                 ORDER BY seq",
                params![c, t],
            )?;
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
            topic: topic.to_string(),
            wake: self.waker(consumer, topic),
            requests,
            leased: VecDeque::new(),
        }))
    }
}

/// A trigger's deliveries: its stored rows and in-process requests.
struct EmbeddedSubscription {
    db: Arc<Mutex<Connection>>,
    consumer: String,
    topic: String,
    wake: Arc<Notify>,
    requests: Box<dyn Subscription>,
    leased: VecDeque<Delivery>,
}

type Row = (i64, String, Vec<u8>, String, u32);

impl EmbeddedSubscription {
    /// Leases the next visible rows; returns when the next hidden one
    /// becomes visible.
    async fn lease(&mut self) -> Result<Option<i64>, MessagingError> {
        let (c, t) = (self.consumer.clone(), self.topic.clone());
        let (rows, next) = with_db(&self.db, move |db| {
            let now = now_ms();
            let tx = db.transaction()?;
            let rows: Vec<Row> = tx
                .prepare(
                    "UPDATE queue SET leased = 1 WHERE seq IN (
                         SELECT seq FROM queue
                         WHERE consumer = ?1 AND topic = ?2 AND leased = 0 AND visible_at <= ?3
                         ORDER BY seq LIMIT ?4)
                     RETURNING seq, id, payload, headers, attempt",
                )?
                .query_map(params![c, t, now, LEASE_BATCH as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let next: Option<i64> = tx
                .query_row(
                    "SELECT min(visible_at) FROM queue WHERE consumer = ?1 AND topic = ?2 AND leased = 0",
                    params![c, t],
                    |r| r.get(0),
                )
                .optional()?
                .flatten();
            tx.commit()?;
            Ok((rows, next))
        })
        .await?;
        let mut rows = rows;
        // RETURNING does not promise an order.
        rows.sort_by_key(|r| r.0);
        for (seq, id, payload, headers, attempt) in rows {
            let headers = serde_json::from_str(&headers).unwrap_or_default();
            let message = Message {
                id,
                topic: self.topic.clone(),
                payload,
                headers,
                attempt,
            };
            self.leased.push_back(Delivery {
                message,
                reply: None,
                acker: Box::new(RowAcker {
                    db: self.db.clone(),
                    seq,
                    wake: self.wake.clone(),
                    settled: false,
                }),
            });
        }
        Ok(next)
    }
}

#[async_trait]
impl Subscription for EmbeddedSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            if let Some(delivery) = self.leased.pop_front() {
                return Some(delivery);
            }
            let next = match self.lease().await {
                Ok(next) => next,
                // Logged by `failure`; try again shortly.
                Err(_) => Some(now_ms() + 1000),
            };
            if !self.leased.is_empty() {
                continue;
            }
            let idle = next.map_or(IDLE_POLL, |at| {
                Duration::from_millis((at - now_ms()).max(0) as u64).min(IDLE_POLL)
            });
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(idle) => {}
                request = self.requests.next() => return request,
            }
        }
    }
}

/// Settles a leased row; releases it if dropped unsettled.
struct RowAcker {
    db: Arc<Mutex<Connection>>,
    seq: i64,
    wake: Arc<Notify>,
    settled: bool,
}

#[async_trait]
impl Acker for RowAcker {
    async fn ack(mut self: Box<Self>) {
        self.settled = true;
        let seq = self.seq;
        let _ = with_db(&self.db, move |db| {
            db.execute("DELETE FROM queue WHERE seq = ?1", params![seq])
        })
        .await;
    }

    async fn nack(mut self: Box<Self>, delay: Duration) {
        self.settled = true;
        let seq = self.seq;
        let visible_at = now_ms() + delay.as_millis() as i64;
        let _ = with_db(&self.db, move |db| {
            db.execute(
                "UPDATE queue SET leased = 0, attempt = attempt + 1, visible_at = ?2 WHERE seq = ?1",
                params![seq, visible_at],
            )
        })
        .await;
        // The subscription may be sleeping past the new visibility time.
        self.wake.notify_one();
    }
}

impl Drop for RowAcker {
    /// A delivery dropped without being settled (its trigger was stopped
    /// while it waited) is released for the next subscription, without
    /// counting as an attempt.
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = db.execute(
            "UPDATE queue SET leased = 0 WHERE seq = ?1",
            params![self.seq],
        ) {
            tracing::error!(error = %e, "cannot release an unsettled delivery; it is redelivered at the next start");
        }
        drop(db);
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
        tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("a delivery")
            .expect("subscription open")
    }

    #[tokio::test]
    async fn messages_survive_a_restart_and_unacked_ones_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("messaging.db");
        let broker = EmbeddedBroker::open(&path).unwrap();
        // Published before any trigger consumes the topic: kept.
        let early = broker
            .publish("t", b"early".to_vec(), vec![])
            .await
            .unwrap();
        let mut sub = broker.subscribe("t", "c").await.unwrap();
        let headers = vec![("k".to_string(), "v".to_string())];
        let id = broker
            .publish("t", b"x".to_vec(), headers.clone())
            .await
            .unwrap();
        let first = next(&mut sub).await;
        assert_eq!(
            (first.message.id.as_str(), first.message.payload.as_slice()),
            (early.as_str(), &b"early"[..])
        );
        first.acker.ack().await;
        let d = next(&mut sub).await;
        assert_eq!((d.message.id.as_str(), d.message.attempt), (id.as_str(), 1));
        assert_eq!(d.message.headers, headers);
        d.acker.nack(Duration::from_millis(10)).await;
        let again = next(&mut sub).await;
        assert_eq!(
            (again.message.id.as_str(), again.message.attempt),
            (id.as_str(), 2)
        );
        // The host "dies" holding the delivery, and a message is queued.
        std::mem::forget(again);
        broker
            .publish("t", b"queued".to_vec(), vec![])
            .await
            .unwrap();
        drop(sub);
        drop(broker);

        let broker = EmbeddedBroker::open(&path).unwrap();
        let mut sub = broker.subscribe("t", "c").await.unwrap();
        let mut seen = Vec::new();
        for _ in 0..2 {
            let d = next(&mut sub).await;
            seen.push((
                String::from_utf8(d.message.payload.clone()).unwrap(),
                d.message.attempt,
            ));
            d.acker.ack().await;
        }
        seen.sort();
        assert_eq!(seen, [("queued".to_string(), 1), ("x".to_string(), 3)]);
        let rows: i64 = broker
            .db
            .lock()
            .unwrap()
            .query_row(
                "SELECT count(*) FROM queue WHERE consumer IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(rows, 0, "acknowledged messages are deleted");
    }

    #[tokio::test]
    async fn unsettled_deliveries_are_released_and_ticks_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let broker = EmbeddedBroker::open(&dir.path().join("m.db")).unwrap();
        let mut sub = broker.subscribe("t", "c").await.unwrap();
        broker
            .publish_with_id("t", "tick-1", vec![], vec![])
            .await
            .unwrap();
        broker
            .publish_with_id("t", "tick-1", vec![], vec![])
            .await
            .unwrap();
        // Dropped without ack or nack: handed out again, same attempt.
        drop(next(&mut sub).await);
        let again = next(&mut sub).await;
        assert_eq!(
            (again.message.id.as_str(), again.message.attempt),
            ("tick-1", 1)
        );
        again.acker.ack().await;
        let quiet = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
        assert!(quiet.is_err(), "the second tick-1 was stored once");
    }

    #[tokio::test]
    async fn one_process_owns_the_file_and_others_only_publish() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let owner = EmbeddedBroker::open(&path).unwrap();
        // The same file in the same process is the same broker.
        assert!(Arc::ptr_eq(&owner, &EmbeddedBroker::open(&path).unwrap()));
        let mut sub = owner.subscribe("t", "c").await.unwrap();
        // Another process: its own connection, no ownership.
        let lock = std::fs::File::open(path.with_extension("db.lock")).unwrap();
        assert!(lock.try_lock().is_err(), "the owner holds the lock");
        let other = EmbeddedBroker {
            db: Arc::new(Mutex::new(Connection::open(&path).unwrap())),
            _owner: None,
            path: path.clone(),
            wakers: Mutex::default(),
            requests: InProcessBroker::new(),
        };
        let refused = other.subscribe("t", "c").await.err().unwrap();
        assert!(
            refused.to_string().contains("another berth process"),
            "{refused}"
        );
        other
            .publish("t", b"from-run".to_vec(), vec![])
            .await
            .unwrap();
        // The owner finds it without a wake-up, within its idle poll.
        let d = next(&mut sub).await;
        assert_eq!(d.message.payload, b"from-run");
        d.acker.ack().await;
    }

    #[tokio::test]
    async fn fan_out_to_each_trigger_and_request_reply() {
        let dir = tempfile::tempdir().unwrap();
        let broker = EmbeddedBroker::open(&dir.path().join("m.db")).unwrap();
        let mut a = broker.subscribe("t", "a").await.unwrap();
        let mut b = broker.subscribe("t", "b").await.unwrap();
        broker.publish("t", b"x".to_vec(), vec![]).await.unwrap();
        for sub in [&mut a, &mut b] {
            let d = next(sub).await;
            assert_eq!(d.message.payload, b"x");
            d.acker.ack().await;
        }
        let responder = tokio::spawn(async move {
            let d = next(&mut a).await;
            d.reply.unwrap().send(b"pong".to_vec()).unwrap();
        });
        let reply = broker
            .request("t", b"ping".to_vec(), vec![], Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(reply.payload, b"pong");
        responder.await.unwrap();
    }
}
