//! The embedded default broker: durable, in one SQLite file
//! (`<state>/<app>/messaging.db`), so messages accepted are not lost when
//! the host stops or crashes.
//!
//! - `publish` commits one row per trigger consuming the topic (fan-out at
//!   publish) before it returns; the database runs in WAL mode with
//!   `synchronous = FULL`, so an accepted message is on disk.
//! - A message published to a topic no trigger consumes is kept unclaimed
//!   (at most [`UNCLAIMED_MAX`] per app, oldest dropped first) and goes to
//!   the first trigger that subscribes to its topic, for instance after a
//!   restart.
//! - A delivery leases its row; `ack` deletes it, `nack` makes it visible
//!   again after the backoff with the attempt incremented. Rows leased when
//!   the host died are handed out again, as one more attempt, when the
//!   broker is next opened.
//! - Request/reply is not stored: it goes through an in-process broker.
//!
//! One host process owns the file: hosts that share work need a broker
//! server (NATS, RabbitMQ).

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension as _, params};
use tokio::sync::Notify;

use super::inprocess::InProcessBroker;
use super::{Acker, Delivery, Message, MessagingBackend, MessagingError, Subscription};

/// Messages kept for topics no trigger consumes.
pub const UNCLAIMED_MAX: i64 = 10_000;
/// Rows leased at once by a subscription.
const LEASE_BATCH: usize = 64;
/// The longest a subscription sleeps without looking at the queue.
const IDLE_POLL: Duration = Duration::from_secs(5);

/// The durable embedded broker of one app.
pub struct EmbeddedBroker {
    db: Arc<Mutex<Connection>>,
    /// Triggers subscribed in this process, by topic.
    consumers: Mutex<HashMap<String, Vec<String>>>,
    /// Wakes a subscription when a message for it is stored or retried.
    wakers: Mutex<HashMap<(String, String), Arc<Notify>>>,
    requests: Arc<InProcessBroker>,
}

fn failure(e: impl std::fmt::Display) -> MessagingError {
    tracing::error!(error = %e, "embedded broker failure");
    MessagingError::Unavailable("the embedded broker's store failed".into())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl EmbeddedBroker {
    /// Opens (or creates) the broker's database at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Arc<EmbeddedBroker>> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let db = Connection::open(path)?;
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
             UPDATE queue SET leased = 0, attempt = attempt + 1 WHERE leased = 1;",
        )?;
        Ok(Arc::new(EmbeddedBroker {
            db: Arc::new(Mutex::new(db)),
            consumers: Mutex::default(),
            wakers: Mutex::default(),
            requests: InProcessBroker::new(),
        }))
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
        let consumers = self
            .consumers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
            .cloned()
            .unwrap_or_default();
        let headers = serde_json::to_string(&headers).map_err(failure)?;
        let (topic_owned, id) = (topic.to_string(), id.to_string());
        let targets: Vec<Option<String>> = if consumers.is_empty() {
            vec![None]
        } else {
            consumers.iter().cloned().map(Some).collect()
        };
        with_db(&self.db, move |db| {
            let tx = db.transaction()?;
            for consumer in &targets {
                tx.execute(
                    "INSERT INTO queue (consumer, topic, id, payload, headers, attempt, visible_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6)",
                    params![consumer, topic_owned, id, payload, headers, now_ms()],
                )?;
            }
            if targets == [None] {
                tx.execute(
                    "DELETE FROM queue WHERE consumer IS NULL AND seq <=
                         (SELECT max(seq) FROM queue) - ?1",
                    params![UNCLAIMED_MAX],
                )?;
            }
            tx.commit()
        })
        .await?;
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
        {
            let mut consumers = self.consumers.lock().unwrap_or_else(|p| p.into_inner());
            let list = consumers.entry(topic.to_string()).or_default();
            if !list.iter().any(|c| c == consumer) {
                list.push(consumer.to_string());
            }
        }
        let (c, t) = (consumer.to_string(), topic.to_string());
        with_db(&self.db, move |db| {
            db.execute(
                "UPDATE queue SET consumer = ?1 WHERE consumer IS NULL AND topic = ?2",
                params![c, t],
            )
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

/// Settles a leased row.
struct RowAcker {
    db: Arc<Mutex<Connection>>,
    seq: i64,
    wake: Arc<Notify>,
}

#[async_trait]
impl Acker for RowAcker {
    async fn ack(self: Box<Self>) {
        let seq = self.seq;
        let _ = with_db(&self.db, move |db| {
            db.execute("DELETE FROM queue WHERE seq = ?1", params![seq])
        })
        .await;
    }

    async fn nack(self: Box<Self>, delay: Duration) {
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
            .query_row("SELECT count(*) FROM queue", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0, "acknowledged messages are deleted");
    }

    #[tokio::test]
    async fn fan_out_to_each_trigger_and_request_reply() {
        let dir = tempfile::tempdir().unwrap();
        let broker = EmbeddedBroker::open(&dir.path().join("m.db")).unwrap();
        let mut a = broker.subscribe("t", "a").await.unwrap();
        let mut b = broker.subscribe("t", "b").await.unwrap();
        broker.publish("t", b"x".to_vec(), vec![]).await.unwrap();
        assert_eq!(next(&mut a).await.message.payload, b"x");
        assert_eq!(next(&mut b).await.message.payload, b"x");
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
