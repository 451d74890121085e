//! Tests of the embedded broker.

use super::*;

pub(super) async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
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
    // Handled and acknowledged, it is still not stored again: the two
    // versions of a reloaded app both publish each tick.
    broker
        .publish_with_id("t", "tick-1", vec![], vec![])
        .await
        .unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(quiet.is_err(), "tick-1 was published an hour ago at most");
}

/// A delivery whose ack and release both fail (the store takes no writes:
/// a full disk; here SQLite's `query_only`) is not left leased until the
/// host restarts: once the store takes writes again, the next lease or
/// subscription releases it and it is delivered again (at least once).
#[tokio::test]
async fn a_delivery_the_store_could_not_settle_comes_back_once_it_can() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::open(&dir.path().join("m.db")).unwrap();
    let mut sub = broker.subscribe("t", "c").await.unwrap();
    let id = broker.publish("t", b"x".to_vec(), vec![]).await.unwrap();
    let writable = |on: bool| {
        let db = broker.db.lock().unwrap();
        db.pragma_update(None, "query_only", !on).unwrap();
    };
    let first = next(&mut sub).await;
    writable(false);
    first.acker.ack().await;
    let meanwhile = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(meanwhile.is_err(), "nothing can be leased meanwhile");
    writable(true);
    let again = next(&mut sub).await;
    assert_eq!(
        (again.message.id.as_str(), again.message.attempt),
        (id.as_str(), 1)
    );
    again.acker.ack().await;
    let quiet = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(quiet.is_err(), "settled once the store took writes");

    // The trigger stopped meanwhile (an app reloaded): the broker, not the
    // subscription, remembers the row, and the next subscription gets it.
    let id = broker.publish("t", b"y".to_vec(), vec![]).await.unwrap();
    let first = next(&mut sub).await;
    writable(false);
    first.acker.ack().await;
    drop(sub);
    writable(true);
    let mut sub = broker.subscribe("t", "c").await.unwrap();
    let again = next(&mut sub).await;
    assert_eq!(again.message.id, id);
    again.acker.ack().await;

    // A nack that could not be written is released as it asked: one more
    // attempt, after its backoff.
    let id = broker.publish("t", b"z".to_vec(), vec![]).await.unwrap();
    let first = next(&mut sub).await;
    writable(false);
    let nacked = std::time::Instant::now();
    first.acker.nack(Duration::from_millis(400)).await;
    writable(true);
    let again = next(&mut sub).await;
    assert_eq!(
        (again.message.id.as_str(), again.message.attempt),
        (id.as_str(), 2)
    );
    assert!(nacked.elapsed() >= Duration::from_millis(400));
    again.acker.ack().await;
}

/// A trigger stopped while its lease was being written (the consumer loop
/// dropped its `next`) does not leave the leased rows behind: the next
/// subscription gets them without a restart.
#[tokio::test(flavor = "multi_thread")]
// Holding the database across the lease's await is what this test does.
#[allow(clippy::await_holding_lock)]
async fn a_lease_cancelled_midway_gives_its_rows_back() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::open(&dir.path().join("m.db")).unwrap();
    let mut sub = broker.subscribe("t", "c").await.unwrap();
    let id = broker.publish("t", b"x".to_vec(), vec![]).await.unwrap();
    // The lease's blocking work waits for the database while `next` is
    // dropped, then runs to its end.
    let held = broker.db.lock().unwrap();
    let cancelled = tokio::time::timeout(Duration::from_millis(200), sub.next()).await;
    assert!(cancelled.is_err(), "the lease waited for the database");
    drop(sub);
    drop(held);
    // The orphaned lease takes the lock at once, runs to its end and gives
    // the row back on its own, before any other subscription could lease it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rows, leased): (i64, i64) = broker
        .db
        .lock()
        .unwrap()
        .query_row(
            "SELECT count(*), coalesce(sum(leased), 0) FROM queue",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (rows, leased),
        (1, 0),
        "the cancelled lease left its row leased"
    );
    let mut again = broker.subscribe("t", "c").await.unwrap();
    let d = next(&mut again).await;
    assert_eq!((d.message.id.as_str(), d.message.attempt), (id.as_str(), 1));
    d.acker.ack().await;
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
        unreleased: Arc::default(),
        max_queue_bytes: None,
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

#[tokio::test]
async fn a_pattern_trigger_gets_each_matching_topic_as_itself() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::open(&dir.path().join("m.db")).unwrap();
    // Published before the trigger subscribed: waiting, then claimed.
    broker
        .publish("orders.eu", b"1".to_vec(), vec![])
        .await
        .unwrap();
    broker
        .publish("billing.eu", b"no".to_vec(), vec![])
        .await
        .unwrap();
    let mut sub = broker.subscribe("orders.*", "c").await.unwrap();
    let mut exact = broker.subscribe("orders.us", "c").await.unwrap();
    broker
        .publish("orders.us", b"2".to_vec(), vec![])
        .await
        .unwrap();
    broker
        .publish("orders.us.late", b"no".to_vec(), vec![])
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let d = next(&mut sub).await;
        seen.push((d.message.topic.clone(), d.message.payload.clone()));
        d.acker.ack().await;
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("orders.eu".to_string(), b"1".to_vec()),
            ("orders.us".to_string(), b"2".to_vec())
        ]
    );
    let quiet = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(quiet.is_err(), "no other topic reached the pattern");
    // The same component's trigger on one of those topics has its own copy.
    let d = next(&mut exact).await;
    assert_eq!(
        (d.message.topic.as_str(), &d.message.payload[..]),
        ("orders.us", &b"2"[..])
    );
}

/// The layout of the release before topic patterns, with one message
/// waiting for trigger `c` on `t`.
fn old_layout(path: &Path) {
    let db = Connection::open(path).unwrap();
    db.execute_batch(
        "CREATE TABLE queue (
             seq INTEGER PRIMARY KEY AUTOINCREMENT, consumer TEXT, topic TEXT NOT NULL,
             id TEXT NOT NULL, payload BLOB NOT NULL, headers TEXT NOT NULL,
             attempt INTEGER NOT NULL, visible_at INTEGER NOT NULL,
             leased INTEGER NOT NULL DEFAULT 0);
         CREATE INDEX queue_ready ON queue (consumer, topic, leased, visible_at);
         CREATE UNIQUE INDEX queue_once ON queue (consumer, topic, id);
         CREATE TABLE consumers (topic TEXT NOT NULL, consumer TEXT NOT NULL,
             live INTEGER NOT NULL, claimed_seq INTEGER NOT NULL,
             PRIMARY KEY (topic, consumer));
         INSERT INTO consumers VALUES ('t', 'c', 1, 1);
         INSERT INTO queue (consumer, topic, id, payload, headers, attempt, visible_at)
             VALUES ('c', 't', 'old-1', x'6f6c64', '[]', 1, 0);",
    )
    .unwrap();
}

#[tokio::test]
async fn only_the_owner_migrates_and_others_wait_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    old_layout(&path);
    // An older host owns the file: a newer process beside it must not
    // change the layout under it.
    let lock = std::fs::File::create(path.with_extension("db.lock")).unwrap();
    lock.try_lock().unwrap();
    let refused = EmbeddedBroker::open(&path).err().expect("refused");
    assert!(refused.to_string().contains("older version"), "{refused}");
    let db = Connection::open(&path).unwrap();
    assert!(!has_trigger_column(&db).unwrap(), "the layout is unchanged");
}

#[tokio::test]
async fn a_file_from_before_patterns_keeps_its_messages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    old_layout(&path);
    let broker = EmbeddedBroker::open(&path).unwrap();
    let mut sub = broker.subscribe("t", "c").await.unwrap();
    let d = next(&mut sub).await;
    assert_eq!(
        (
            d.message.id.as_str(),
            d.message.topic.as_str(),
            &d.message.payload[..]
        ),
        ("old-1", "t", &b"old"[..])
    );
    d.acker.ack().await;
    // And the file works as a new one from then on.
    broker
        .publish_with_id("t", "new-1", b"new".to_vec(), vec![])
        .await
        .unwrap();
    broker
        .publish_with_id("t", "new-1", b"new".to_vec(), vec![])
        .await
        .unwrap();
    let d = next(&mut sub).await;
    assert_eq!(d.message.id, "new-1");
    d.acker.ack().await;
    let quiet = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(quiet.is_err(), "an id is still stored once per trigger");
    drop((sub, broker));
    // A row an older owner claimed without naming its trigger is found at
    // the next start.
    Connection::open(&path)
        .unwrap()
        .execute(
            "INSERT INTO queue (consumer, topic, id, payload, headers, attempt, visible_at)
             VALUES ('c', 't', 'old-2', x'', '[]', 1, 0)",
            [],
        )
        .unwrap();
    let broker = EmbeddedBroker::open(&path).unwrap();
    let mut sub = broker.subscribe("t", "c").await.unwrap();
    assert_eq!(next(&mut sub).await.message.id, "old-2");
}

/// What trigger `consumer` on `topic` gets within a short while: the
/// payloads, each acknowledged.
async fn drain(broker: &EmbeddedBroker, topic: &str, consumer: &str) -> Vec<String> {
    let mut sub = broker.subscribe(topic, consumer).await.unwrap();
    let mut got = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        got.push(String::from_utf8(d.message.payload.clone()).unwrap());
        d.acker.ack().await;
    }
    got
}

#[tokio::test]
async fn triggers_stay_subscribed_across_a_restart_until_the_app_drops_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let triggers = |names: &[&str]| -> Vec<(String, String)> {
        names
            .iter()
            .map(|c| ("t".to_string(), c.to_string()))
            .collect()
    };
    let broker = EmbeddedBroker::open(&path).unwrap();
    broker
        .declare_triggers(&triggers(&["a", "b"]))
        .await
        .unwrap();
    drop(broker);

    // A restart: trigger `a` subscribes and publishes before `b` does;
    // `b` still gets its copy.
    let broker = EmbeddedBroker::open(&path).unwrap();
    let sub_a = broker.subscribe("t", "a").await.unwrap();
    broker
        .publish("t", b"early".to_vec(), vec![])
        .await
        .unwrap();
    drop(sub_a);
    assert_eq!(drain(&broker, "t", "b").await, ["early"]);
    assert_eq!(drain(&broker, "t", "a").await, ["early"]);

    // The next version has no trigger `b`: it gets no more copies, and
    // what it had not taken is dropped.
    broker
        .publish("t", b"pending".to_vec(), vec![])
        .await
        .unwrap();
    broker.declare_triggers(&triggers(&["a"])).await.unwrap();
    broker.publish("t", b"late".to_vec(), vec![]).await.unwrap();
    let rows_of_b: i64 = broker
        .db
        .lock()
        .unwrap()
        .query_row("SELECT count(*) FROM queue WHERE consumer = 'b'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(rows_of_b, 0);
    assert_eq!(drain(&broker, "t", "a").await, ["pending", "late"]);
}

#[tokio::test]
async fn a_request_is_not_kept_behind_stored_messages() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::open(&dir.path().join("m.db")).unwrap();
    let mut sub = broker.subscribe("t", "c").await.unwrap();
    for i in 0..5 {
        broker
            .publish("t", format!("m{i}").into_bytes(), vec![])
            .await
            .unwrap();
    }
    // The first delivery leases the whole backlog.
    let first = next(&mut sub).await;
    assert_eq!(first.message.payload, b"m0");
    let requester = {
        let broker = broker.clone();
        tokio::spawn(async move {
            broker
                .request("t", b"ping".to_vec(), vec![], Duration::from_secs(5))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let d = next(&mut sub).await;
    assert_eq!(d.message.payload, b"ping", "the request comes first");
    d.reply.unwrap().send(b"pong".to_vec()).unwrap();
    assert_eq!(requester.await.unwrap().unwrap().payload, b"pong");
}

#[tokio::test]
async fn a_stopping_trigger_hands_back_what_it_leased_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::open(&dir.path().join("m.db")).unwrap();
    let mut old = broker.subscribe("t", "c").await.unwrap();
    for i in 0..3 {
        broker
            .publish("t", format!("m{i}").into_bytes(), vec![])
            .await
            .unwrap();
    }
    let running = next(&mut old).await;
    // The old version stops taking deliveries while `running` is handled;
    // the next version gets the rest at once.
    old.stop_fetching();
    let mut new = broker.subscribe("t", "c").await.unwrap();
    for expected in ["m1", "m2"] {
        let d = next(&mut new).await;
        assert_eq!(d.message.payload, expected.as_bytes());
        d.acker.ack().await;
    }
    running.acker.ack().await;
}
