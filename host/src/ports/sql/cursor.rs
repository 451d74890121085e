//! The cursor every SQL adapter shares. A reader task owns the connection
//! and sends the rows through a channel bounded in rows and in bytes, so a
//! guest that opens a cursor on a huge result and reads it slowly (or
//! never) holds a bounded amount of host memory, not the result.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{Semaphore, mpsc};

use super::{SqlColumn, SqlCursor, SqlError, SqlValue};

/// Rows a reader may get ahead of the guest.
const BUFFER_ROWS: usize = 256;

/// Bytes (as [`SqlValue::held_size`] counts them) a reader may get ahead of
/// the guest. A single larger row still passes, alone.
pub(crate) const BUFFER_BYTES: usize = 8 << 20;

/// A row, or the error that ends the result.
type Item = Result<Vec<SqlValue>, SqlError>;

/// A cursor's channel: the reader's end and the cursor's.
pub(crate) fn cursor_channel() -> (RowSender, RowReceiver) {
    let (tx, rx) = mpsc::channel(BUFFER_ROWS);
    let budget = Arc::new(Semaphore::new(BUFFER_BYTES));
    (
        RowSender {
            tx,
            budget: budget.clone(),
        },
        RowReceiver { rx, budget },
    )
}

/// The reader's end of a cursor's channel.
pub(crate) struct RowSender {
    tx: mpsc::Sender<(Item, u32)>,
    /// Bytes the reader may still send before the guest takes some.
    budget: Arc<Semaphore>,
}

impl RowSender {
    /// Sends `item`, waiting while the rows sent before it fill the
    /// buffer. Fails once the cursor is gone: the reader then stops.
    pub(crate) async fn send(&self, item: Item) -> Result<(), ()> {
        let size = budgeted_size(&item);
        self.budget.acquire_many(size).await.map_err(drop)?.forget();
        self.tx.send((item, size)).await.map_err(drop)
    }

    /// Whether the cursor is gone, for a reader to look at while it works
    /// on the next row.
    pub(crate) fn closed_signal(&self) -> Arc<dyn Fn() -> bool + Send + Sync> {
        let tx = self.tx.clone();
        Arc::new(move || tx.is_closed())
    }

    /// [`RowSender::send`] from a blocking thread (SQLite's reader).
    pub(crate) fn blocking_send(&self, item: Item) -> Result<(), ()> {
        futures::executor::block_on(self.send(item))
    }
}

/// What `item` takes of the budget: its size, or the whole budget for a
/// row larger than it (which then waits for an empty buffer).
fn budgeted_size(item: &Item) -> u32 {
    let size = match item {
        Ok(row) => row.iter().map(SqlValue::held_size).sum(),
        Err(_) => 0,
    };
    size.min(BUFFER_BYTES) as u32
}

/// The cursor's end of its channel.
pub(crate) struct RowReceiver {
    rx: mpsc::Receiver<(Item, u32)>,
    budget: Arc<Semaphore>,
}

impl RowReceiver {
    /// The next item, waiting for it; `None` once the reader is done.
    async fn recv(&mut self) -> Option<Item> {
        let (item, size) = self.rx.recv().await?;
        self.budget.add_permits(size as usize);
        Some(item)
    }

    /// The next item if one is there now: `Ok(None)` once the reader is
    /// done, `Err(())` when it has sent nothing more yet.
    fn try_recv(&mut self) -> Result<Option<Item>, ()> {
        use tokio::sync::mpsc::error::TryRecvError;
        match self.rx.try_recv() {
            Ok((item, size)) => {
                self.budget.add_permits(size as usize);
                Ok(Some(item))
            }
            Err(TryRecvError::Empty) => Err(()),
            Err(TryRecvError::Disconnected) => Ok(None),
        }
    }
}

impl Drop for RowReceiver {
    /// Wakes a reader waiting for budget, whose send then fails: it stops
    /// and gives its connection back.
    fn drop(&mut self) {
        self.budget.close();
    }
}

/// A cursor fed by a reader task through a bounded channel: the reader owns
/// the connection and stops when the cursor is dropped.
pub(crate) struct ChannelCursor {
    columns: Vec<SqlColumn>,
    rows: RowReceiver,
    /// A row received but left for the next batch, which it would have
    /// taken past its byte cap.
    held: Option<Vec<SqlValue>>,
    /// The reader's error, once seen: returned after the rows before it,
    /// and by every later call, so a failure never reads as the end.
    failed: Option<SqlError>,
}

impl ChannelCursor {
    pub(crate) fn new(columns: Vec<SqlColumn>, rows: RowReceiver) -> Self {
        Self {
            columns,
            rows,
            held: None,
            failed: None,
        }
    }
}

#[async_trait]
impl SqlCursor for ChannelCursor {
    fn columns(&self) -> Vec<SqlColumn> {
        self.columns.clone()
    }

    async fn next(
        &mut self,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Vec<Vec<SqlValue>>, SqlError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        while out.len() < max_rows {
            let row = match self.held.take() {
                Some(row) => row,
                None if self.failed.is_some() => break,
                None => {
                    let next = if out.is_empty() {
                        self.rows.recv().await
                    } else {
                        match self.rows.try_recv() {
                            Ok(item) => item,
                            Err(()) => break,
                        }
                    };
                    match next {
                        Some(Ok(row)) => row,
                        Some(Err(e)) => {
                            self.failed = Some(e);
                            break;
                        }
                        None => break,
                    }
                }
            };
            let size = row.iter().map(SqlValue::held_size).sum::<usize>();
            if !out.is_empty() && bytes + size > max_bytes {
                self.held = Some(row);
                break;
            }
            bytes += size;
            out.push(row);
        }
        match &self.failed {
            Some(e) if out.is_empty() => Err(e.clone()),
            _ => Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize) -> Vec<SqlValue> {
        vec![SqlValue::Text("x".repeat(n))]
    }

    #[tokio::test]
    async fn batches_stop_at_the_byte_cap_and_an_error_follows_its_rows() {
        let (tx, rx) = cursor_channel();
        for n in [10, 10, 25, 10] {
            tx.send(Ok(text(n))).await.unwrap();
        }
        tx.send(Err(SqlError::Timeout)).await.unwrap();
        drop(tx);
        let mut cursor = ChannelCursor::new(Vec::new(), rx);
        // A value counts its payload and itself (32 bytes): 84 bytes hold
        // two 10-byte rows; the third waits for the next batch.
        assert_eq!(SqlValue::Null.held_size(), 32);
        assert_eq!(cursor.next(100, 84).await.unwrap(), [text(10), text(10)]);
        // With the row after it, it would pass the cap: it comes alone.
        assert_eq!(cursor.next(100, 84).await.unwrap(), [text(25)]);
        // A row larger than the cap still comes, alone; the rows before an
        // error come first, and the error is not the end.
        assert_eq!(cursor.next(100, 20).await.unwrap(), [text(10)]);
        assert_eq!(cursor.next(100, 20).await, Err(SqlError::Timeout));
        assert_eq!(cursor.next(100, 20).await, Err(SqlError::Timeout));
    }

    #[tokio::test]
    async fn batches_stop_at_the_row_cap_and_end_empty() {
        let (tx, rx) = cursor_channel();
        for _ in 0..3 {
            tx.send(Ok(text(1))).await.unwrap();
        }
        drop(tx);
        let mut cursor = ChannelCursor::new(Vec::new(), rx);
        assert_eq!(cursor.next(2, 1000).await.unwrap().len(), 2);
        assert_eq!(cursor.next(2, 1000).await.unwrap().len(), 1);
        assert!(cursor.next(2, 1000).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_reader_gets_at_most_its_byte_budget_ahead_of_the_guest() {
        let (tx, rx) = cursor_channel();
        let row = || Ok(text(1 << 20));
        let reader = tokio::spawn(async move {
            let mut sent = 0usize;
            while tx.send(row()).await.is_ok() {
                sent += 1;
            }
            sent
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        // 1 MiB rows against an 8 MiB budget: seven wait, not 256.
        let mut cursor = ChannelCursor::new(Vec::new(), rx);
        let first = cursor.next(1000, usize::MAX).await.unwrap();
        assert_eq!(first.len(), BUFFER_BYTES / ((1 << 20) + 32));
        // Taking them frees the budget for more.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(
            cursor.next(1000, usize::MAX).await.unwrap().len(),
            first.len()
        );
        drop(cursor);
        // The reader stops once the cursor is gone.
        let sent = tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .expect("the reader stops")
            .unwrap();
        assert!(sent <= 3 * first.len() + 1, "{sent}");
        // A row larger than the whole budget still passes, alone.
        let (tx, rx) = cursor_channel();
        tx.send(Ok(text(BUFFER_BYTES * 2))).await.unwrap();
        let mut cursor = ChannelCursor::new(Vec::new(), rx);
        assert_eq!(cursor.next(10, usize::MAX).await.unwrap().len(), 1);
    }
}
