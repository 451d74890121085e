//! A trigger's deliveries from the embedded broker: the rows it leases,
//! in-process requests taking turns with them, and how each row is settled
//! or given back.

use super::*;

/// A trigger's deliveries: its stored rows and in-process requests.
pub(super) struct EmbeddedSubscription {
    pub(super) db: Arc<Mutex<Connection>>,
    pub(super) consumer: String,
    /// The trigger's topic or pattern.
    pub(super) trigger: String,
    pub(super) wake: Arc<Notify>,
    pub(super) requests: Box<dyn Subscription>,
    pub(super) leased: VecDeque<Delivery>,
    /// The broker's [`EmbeddedBroker::unreleased`].
    pub(super) unreleased: Arc<Mutex<Vec<Unreleased>>>,
    /// Whether the last delivery was a request (see `next`).
    pub(super) request_last: bool,
}

/// seq, id, topic, payload, headers, attempt.
type Row = (i64, String, String, Vec<u8>, String, u32);

impl EmbeddedSubscription {
    /// Leases the next visible rows; returns when the next hidden one
    /// becomes visible.
    ///
    /// The rows become deliveries (each with the [`RowAcker`] that
    /// releases its row if dropped unsettled) on the blocking thread that
    /// leased them: if this future is dropped midway (the trigger stopped),
    /// the blocking work still finishes, and its deliveries, dropped with
    /// the result no one awaits, give their rows back at once rather than
    /// leaving them leased until the host restarts.
    async fn lease(&mut self) -> Result<Option<i64>, MessagingError> {
        let (c, t) = (self.consumer.clone(), self.trigger.clone());
        let (db, wake) = (self.db.clone(), self.wake.clone());
        let unreleased = self.unreleased.clone();
        let (rows, next) = with_db(&self.db, move |conn| {
            release_again(conn, &unreleased)?;
            let now = now_ms();
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            // The next visible rows, as many as fit in LEASE_BYTES (one at
            // least, whatever its size): their payloads are held here
            // until handled.
            let visible: Vec<(i64, i64)> = tx
                .prepare(
                    "SELECT seq, length(payload) FROM queue
                     WHERE consumer = ?1 AND trigger_topic = ?2 AND leased = 0 AND visible_at <= ?3
                     ORDER BY seq LIMIT ?4",
                )?
                .query_map(params![c, t, now, LEASE_BATCH as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut bytes = 0i64;
            let mut rows: Vec<Row> = Vec::new();
            for (seq, size) in visible {
                if !rows.is_empty() && bytes.saturating_add(size) > LEASE_BYTES {
                    break;
                }
                bytes = bytes.saturating_add(size);
                let row = tx.query_row(
                    "UPDATE queue SET leased = 1 WHERE seq = ?1
                     RETURNING seq, id, topic, payload, headers, attempt",
                    params![seq],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
                )?;
                rows.push(row);
            }
            let next: Option<i64> = tx
                .query_row(
                    "SELECT min(visible_at) FROM queue WHERE consumer = ?1 AND trigger_topic = ?2 AND leased = 0",
                    params![c, t],
                    |r| r.get(0),
                )
                .optional()?
                .flatten();
            tx.commit()?;
            // RETURNING does not promise an order.
            rows.sort_by_key(|r| r.0);
            let deliveries: Vec<Delivery> = rows
                .into_iter()
                .map(|(seq, id, topic, payload, headers, attempt)| Delivery {
                    message: Message {
                        id,
                        topic,
                        payload,
                        headers: serde_json::from_str(&headers).unwrap_or_default(),
                        attempt,
                    },
                    reply: None,
                    acker: Box::new(RowAcker {
                        db: db.clone(),
                        seq,
                        wake: wake.clone(),
                        settled: false,
                        retry_at: None,
                        unreleased: unreleased.clone(),
                    }),
                })
                .collect();
            Ok((deliveries, next))
        })
        .await?;
        self.leased.extend(rows);
        Ok(next)
    }
}

#[async_trait]
impl Subscription for EmbeddedSubscription {
    /// The app is stopping, or its next version takes over: the rows
    /// leased ahead go back at once (dropped unsettled, each is released),
    /// and requests go to the next version's trigger.
    fn stop_fetching(&mut self) {
        let leased = std::mem::take(&mut self.leased);
        crate::fairness::blocking(|| drop(leased));
        self.requests.stop_fetching();
        self.wake.notify_waiters();
    }

    async fn next(&mut self) -> Option<Delivery> {
        loop {
            // A waiting request and a stored message take turns: a backlog
            // of either must not keep the other from the handler (requests
            // until their callers give up). (Receiving is cancel-safe.)
            if !self.request_last
                && let Some(Some(request)) = self.requests.next().now_or_never()
            {
                self.request_last = true;
                return Some(request);
            }
            if let Some(delivery) = self.leased.pop_front() {
                self.request_last = false;
                return Some(delivery);
            }
            self.request_last = false;
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
                request = self.requests.next() => {
                    self.request_last = true;
                    return request;
                }
            }
        }
    }
}

/// Releases the rows of `unreleased` (see [`EmbeddedBroker::unreleased`]),
/// forgetting each once its release is written.
pub(super) fn release_again(
    conn: &Connection,
    unreleased: &Mutex<Vec<Unreleased>>,
) -> rusqlite::Result<()> {
    let mut unreleased = unreleased.lock().unwrap_or_else(|p| p.into_inner());
    while let Some(&row) = unreleased.last() {
        row.release(conn)?;
        unreleased.pop();
    }
    Ok(())
}

/// A leased row to give back: as is, or as a failed attempt visible again
/// at a time (what a `nack` asked for).
#[derive(Debug, Clone, Copy)]
pub(super) struct Unreleased {
    seq: i64,
    retry_at: Option<i64>,
}

impl Unreleased {
    fn release(self, conn: &Connection) -> rusqlite::Result<usize> {
        match self.retry_at {
            None => conn.execute(
                "UPDATE queue SET leased = 0 WHERE seq = ?1",
                params![self.seq],
            ),
            Some(at) => conn.execute(
                "UPDATE queue SET leased = 0, attempt = attempt + 1, visible_at = ?2 WHERE seq = ?1",
                params![self.seq, at],
            ),
        }
    }
}

/// Settles a leased row; releases it if dropped unsettled.
struct RowAcker {
    db: Arc<Mutex<Connection>>,
    seq: i64,
    wake: Arc<Notify>,
    settled: bool,
    /// When a `nack` that could not be written asked the row to be
    /// visible again: kept for its release.
    retry_at: Option<i64>,
    /// The broker's rows to release again.
    unreleased: Arc<Mutex<Vec<Unreleased>>>,
}

impl RowAcker {
    fn row(&self) -> Unreleased {
        Unreleased {
            seq: self.seq,
            retry_at: self.retry_at,
        }
    }
}

#[async_trait]
impl Acker for RowAcker {
    // A settlement that cannot be written (logged by `failure`) leaves the
    // acker unsettled, so that dropping it releases the row: the message is
    // delivered again rather than left leased until the host restarts.
    async fn ack(mut self: Box<Self>) {
        let seq = self.seq;
        let deleted = with_db(&self.db, move |db| {
            db.execute("DELETE FROM queue WHERE seq = ?1", params![seq])
        })
        .await;
        self.settled = deleted.is_ok();
    }

    async fn nack(mut self: Box<Self>, delay: Duration) {
        self.retry_at = Some(now_ms() + delay.as_millis() as i64);
        let row = self.row();
        let released = with_db(&self.db, move |db| row.release(db)).await;
        self.settled = released.is_ok();
        // The subscription may be sleeping past the new visibility time.
        self.wake.notify_one();
    }
}

impl Drop for RowAcker {
    /// A delivery dropped without being settled (its trigger was stopped
    /// while it waited) is released for the next subscription, without
    /// counting as an attempt; one whose `nack` could not be written, as
    /// that `nack` asked.
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.row().release(&db) {
            tracing::error!(error = %e, "cannot release an unsettled delivery; it is released again at the app's next lease or subscription");
            self.unreleased
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(self.row());
        }
        drop(db);
        self.wake.notify_one();
    }
}
