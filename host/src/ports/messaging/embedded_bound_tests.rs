//! Tests of what the embedded broker holds: the payload bytes a
//! subscription leases at once, and the queue's byte bound.

use super::tests::next;
use super::*;

#[tokio::test]
async fn a_subscription_holds_a_bounded_number_of_payload_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::open(&dir.path().join("m.db")).unwrap();
    let mut sub = broker.subscribe("t", "c").await.unwrap();
    for _ in 0..3 {
        broker
            .publish("t", vec![7u8; 3 << 20], vec![])
            .await
            .unwrap();
    }
    let leased = || -> i64 {
        broker
            .db
            .lock()
            .unwrap()
            .query_row("SELECT count(*) FROM queue WHERE leased = 1", [], |r| {
                r.get(0)
            })
            .unwrap()
    };
    let first = next(&mut sub).await;
    assert_eq!(leased(), 1, "3 MiB more would pass the 4 MiB held at once");
    first.acker.ack().await;
    for _ in 0..2 {
        next(&mut sub).await.acker.ack().await;
    }
    assert_eq!(leased(), 0);
}

/// The queue keeps at most its byte bound of undelivered messages (a copy
/// per trigger): a publish past it is `unavailable` and stores nothing,
/// and what a trigger takes and acknowledges makes room again. The count
/// is the file's, so it holds across a restart.
#[tokio::test]
async fn undelivered_messages_are_bounded_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let broker = EmbeddedBroker::open_bounded(&path, 1000).unwrap();
    let mut a = broker.subscribe("t", "a").await.unwrap();
    let mut b = broker.subscribe("t", "b").await.unwrap();
    // 2 × (300 + "[]") bytes.
    broker.publish("t", vec![1; 300], vec![]).await.unwrap();
    let err = broker.publish("t", vec![2; 300], vec![]).await.unwrap_err();
    assert!(
        matches!(&err, MessagingError::Unavailable(m) if m.contains("embedded_queue_mb")),
        "{err:?}"
    );
    // Taken but not settled: still held.
    let first = next(&mut a).await;
    assert!(broker.publish("t", vec![2; 300], vec![]).await.is_err());
    first.acker.ack().await;
    next(&mut b).await.acker.ack().await;
    broker.publish("t", vec![3; 300], vec![]).await.unwrap();
    drop((a, b));
    drop(broker);
    let again = EmbeddedBroker::open_bounded(&path, 1000).unwrap();
    let err = again.publish("t", vec![4; 300], vec![]).await.unwrap_err();
    assert!(matches!(err, MessagingError::Unavailable(_)), "{err:?}");
    // One message larger than the bound passes into an empty queue.
    let mut a = again.subscribe("t", "a").await.unwrap();
    let mut b = again.subscribe("t", "b").await.unwrap();
    next(&mut a).await.acker.ack().await;
    next(&mut b).await.acker.ack().await;
    again.publish("t", vec![5; 4000], vec![]).await.unwrap();
    assert_eq!(next(&mut a).await.message.payload.len(), 4000);
    // Full again; the host's dead letters pass: they are what drains a
    // full queue.
    assert!(again.publish("t", vec![6; 10], vec![]).await.is_err());
    again
        .publish_unbounded("t.dead-letter", vec![9; 300], vec![])
        .await
        .unwrap();
}

/// Messages kept for topics no trigger consumes (dead letters, say) give
/// way, oldest first, to new ones at the byte bound: nothing else would
/// ever take them, so they would otherwise refuse every publish for good.
#[tokio::test]
async fn unclaimed_messages_give_way_at_the_byte_bound() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::open_bounded(&dir.path().join("m.db"), 1000).unwrap();
    for n in 0..3u8 {
        broker
            .publish_unbounded("t.dead-letter", vec![n; 300], vec![])
            .await
            .unwrap();
    }
    let mut sub = broker.subscribe("t", "c").await.unwrap();
    // 906 bytes held, all unclaimed: the two oldest make room for this one.
    broker.publish("t", vec![9; 600], vec![]).await.unwrap();
    let remaining: Vec<u8> = {
        let db = broker.db.lock().unwrap();
        let mut rows = db
            .prepare("SELECT payload FROM queue WHERE consumer IS NULL ORDER BY seq")
            .unwrap();
        rows.query_map([], |r| r.get::<_, Vec<u8>>(0))
            .unwrap()
            .map(|p| p.unwrap()[0])
            .collect()
    };
    assert_eq!(remaining, vec![2], "the oldest unclaimed went first");
    assert_eq!(next(&mut sub).await.message.payload, vec![9; 600]);
    // Claimed messages never give way: once the last unclaimed one is
    // gone, a full queue refuses, and a refused publish evicts nothing.
    let mut other = broker.subscribe("u", "c").await.unwrap();
    broker.publish("u", vec![1; 300], vec![]).await.unwrap();
    broker
        .publish_unbounded("x", vec![3; 100], vec![])
        .await
        .unwrap();
    let err = broker.publish("u", vec![2; 700], vec![]).await.unwrap_err();
    assert!(matches!(err, MessagingError::Unavailable(_)), "{err:?}");
    let unclaimed: i64 = broker
        .db
        .lock()
        .unwrap()
        .query_row(
            "SELECT count(*) FROM queue WHERE consumer IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        unclaimed, 1,
        "evicted only to make room that was then taken"
    );
    assert_eq!(next(&mut other).await.message.payload, vec![1; 300]);
}
