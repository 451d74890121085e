//! Tests of the embedded SQLite adapter.

use std::time::Instant;

use super::*;

const CAPS: ResultCaps = ResultCaps {
    max_rows: 100,
    max_bytes: 1 << 20,
};

fn db() -> (tempfile::TempDir, SqliteDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteDatabase::open(&dir.path().join("t.db")).unwrap();
    (dir, db)
}

#[tokio::test]
async fn dropped_transaction_rolls_back() {
    let (_d, db) = db();
    db.execute("CREATE TABLE t(x integer)".into(), vec![])
        .await
        .unwrap();
    let mut tx = db.begin().await.unwrap();
    tx.execute("INSERT INTO t VALUES (1)".into(), vec![])
        .await
        .unwrap();
    drop(tx);
    let rows = db
        .query("SELECT count(*) FROM t".into(), vec![], CAPS)
        .await
        .unwrap();
    assert_eq!(rows.rows[0][0], SqlValue::Int(0));
}

#[tokio::test]
async fn attach_is_refused() {
    let (d, db) = db();
    let other = d.path().join("other.db");
    let err = db
        .execute(
            format!("ATTACH DATABASE '{}' AS o", other.display()),
            vec![],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, SqlError::Denied(_) | SqlError::Other(_)),
        "{err:?}"
    );
    assert!(!other.exists());
}

/// Temporary objects would stay on the pooled connection for the app's
/// later calls: a temporary table hiding the real one, a trigger
/// rewriting its writes.
#[tokio::test]
async fn temporary_objects_are_refused() {
    let (_d, db) = db();
    db.execute("CREATE TABLE orders (total int)".into(), vec![])
        .await
        .unwrap();
    for statement in [
        "CREATE TEMP TABLE orders (total int)",
        "CREATE TABLE temp.scratch (v int)",
        "CREATE TEMP VIEW v AS SELECT 1",
        "CREATE TEMP TRIGGER tr AFTER INSERT ON main.orders BEGIN UPDATE orders SET total = 0; END",
        "CREATE INDEX temp.i ON orders (total)",
        "CREATE TRIGGER temp.tr2 AFTER INSERT ON main.orders BEGIN UPDATE orders SET total = 0; END",
        "CREATE VIEW temp.v2 AS SELECT 1",
        "CREATE VIRTUAL TABLE temp.orders USING fts5(total)",
        "CREATE VIRTUAL TABLE temp.boxes USING rtree(id, x0, x1)",
    ] {
        let Err(err) = db.execute(statement.into(), vec![]).await else {
            panic!("{statement} ran");
        };
        assert!(
            matches!(
                err,
                SqlError::Denied(_) | SqlError::Other(_) | SqlError::Syntax(_)
            ),
            "{statement}: {err:?}"
        );
    }
    db.execute("INSERT INTO orders VALUES (5)".into(), vec![])
        .await
        .unwrap();
    let rows = db
        .query("SELECT total FROM orders".into(), vec![], CAPS)
        .await
        .unwrap();
    assert_eq!(rows.rows, [[SqlValue::Int(5)]]);
}

/// Never ends on its own.
const RUNAWAY: &str =
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c";

fn db_with(timeouts: SqliteTimeouts) -> (tempfile::TempDir, SqliteDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteDatabase::open_with(&dir.path().join("t.db"), timeouts).unwrap();
    (dir, db)
}

const SHORT: SqliteTimeouts = SqliteTimeouts {
    statement: Duration::from_millis(200),
    acquire: Duration::from_millis(200),
};

#[tokio::test]
async fn runaway_statements_time_out_and_give_their_connection_back() {
    let (_d, db) = db_with(SHORT);
    // More runaways than the pool has connections: each one's
    // connection comes back, so the database stays usable.
    for _ in 0..POOL_SIZE + 1 {
        let started = Instant::now();
        let err = db.query(RUNAWAY.into(), vec![], CAPS).await.unwrap_err();
        assert_eq!(err, SqlError::Timeout);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
    let rows = db.query("SELECT 1".into(), vec![], CAPS).await.unwrap();
    assert_eq!(rows.rows[0][0], SqlValue::Int(1));

    let mut tx = db.begin().await.unwrap();
    let err = tx.query(RUNAWAY.into(), vec![], CAPS).await.unwrap_err();
    assert_eq!(err, SqlError::Timeout);
    drop(tx);

    let mut cursor = db.open_cursor(RUNAWAY.into(), vec![], CAPS).await.unwrap();
    assert_eq!(cursor.next(10, 1 << 20).await, Err(SqlError::Timeout));
    drop(cursor);

    // Host code on a connection that timed out is not limited: a long
    // statement outside a guest's call runs to its end.
    let pool = db.pool.clone();
    let n = pool
        .with_conn(|c| {
            c.query_row(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 3000000) SELECT count(*) FROM c",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(map_error)
        })
        .await
        .unwrap();
    assert_eq!(n, 3_000_000);
}

/// A guest whose invocations time out drops its calls: their statements
/// must stop then, not run on to the statement limit holding connections
/// and blocking threads.
#[tokio::test]
async fn statements_of_calls_given_up_stop_at_once() {
    let long = SqliteTimeouts {
        statement: Duration::from_secs(60),
        acquire: Duration::from_millis(200),
    };
    let (_d, db) = db_with(long);
    for _ in 0..POOL_SIZE {
        let call = db.query(RUNAWAY.into(), vec![], CAPS);
        let gone = tokio::time::timeout(Duration::from_millis(50), call).await;
        assert!(gone.is_err(), "the runaway was still running");
    }
    let mut tx = db.begin().await.unwrap();
    let call = tx.query(RUNAWAY.into(), vec![], CAPS);
    assert!(
        tokio::time::timeout(Duration::from_millis(50), call)
            .await
            .is_err()
    );
    drop(tx);
    let mut cursor = db.open_cursor(RUNAWAY.into(), vec![], CAPS).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(50), cursor.next(10, 1 << 20))
            .await
            .is_err()
    );
    drop(cursor);
    // Every connection is back well before the 60 s limit.
    let started = Instant::now();
    while db.pool.permits.available_permits() < POOL_SIZE {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{} of {POOL_SIZE} connections back",
            db.pool.permits.available_permits()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rows = db.query("SELECT 1".into(), vec![], CAPS).await.unwrap();
    assert_eq!(rows.rows[0][0], SqlValue::Int(1));
}

#[tokio::test]
async fn waiting_for_a_connection_is_bounded() {
    let (_d, db) = db_with(SHORT);
    let mut held = Vec::new();
    for _ in 0..POOL_SIZE {
        held.push(db.begin().await.unwrap());
    }
    let started = Instant::now();
    let err = db.query("SELECT 1".into(), vec![], CAPS).await.unwrap_err();
    assert_eq!(err, SqlError::PoolExhausted(POOL_SIZE as u32));
    assert!(started.elapsed() < Duration::from_secs(5));
    held.pop();
    db.query("SELECT 1".into(), vec![], CAPS).await.unwrap();
}

#[tokio::test]
async fn guest_pragmas_are_limited_to_introspection() {
    let (_d, db) = db();
    db.execute("CREATE TABLE t(x integer)".into(), vec![])
        .await
        .unwrap();
    for pragma in [
        "PRAGMA hard_heap_limit=1",
        "PRAGMA soft_heap_limit=1",
        "PRAGMA foreign_keys=OFF",
        "PRAGMA writable_schema=ON",
        "PRAGMA journal_mode=OFF",
        "PRAGMA synchronous=OFF",
        "PRAGMA query_only=ON",
        "PRAGMA database_list",
        "PRAGMA main.application_id=5",
    ] {
        let err = db.query(pragma.into(), vec![], CAPS).await.unwrap_err();
        assert!(matches!(err, SqlError::Denied(_)), "{pragma}: {err:?}");
        // The connection still works.
        let rows = db
            .query("SELECT count(*) FROM t".into(), vec![], CAPS)
            .await
            .unwrap();
        assert_eq!(rows.rows[0][0], SqlValue::Int(0), "after {pragma}");
    }
    // The table-valued form is refused too.
    let r = db
        .query("SELECT * FROM pragma_database_list".into(), vec![], CAPS)
        .await;
    assert!(r.is_err(), "{r:?}");

    let rows = db
        .query("PRAGMA table_info(t)".into(), vec![], CAPS)
        .await
        .unwrap();
    assert_eq!(rows.rows.len(), 1);
    assert_eq!(rows.rows[0][1], SqlValue::Text("x".into()));
    let rows = db
        .query(
            "SELECT name FROM pragma_table_info('t')".into(),
            vec![],
            CAPS,
        )
        .await
        .unwrap();
    assert_eq!(rows.rows, vec![vec![SqlValue::Text("x".into())]]);
    let rows = db
        .query("PRAGMA user_version".into(), vec![], CAPS)
        .await
        .unwrap();
    assert_eq!(rows.rows[0][0], SqlValue::Int(0));
    db.execute("PRAGMA user_version = 7".into(), vec![])
        .await
        .unwrap();
    let rows = db
        .query("PRAGMA user_version".into(), vec![], CAPS)
        .await
        .unwrap();
    assert_eq!(rows.rows[0][0], SqlValue::Int(7));
    // The refused `foreign_keys=OFF` left the setting on.
    let rows = db
        .query("PRAGMA foreign_keys".into(), vec![], CAPS)
        .await
        .unwrap();
    assert_eq!(rows.rows[0][0], SqlValue::Int(1));
}

#[tokio::test]
async fn caps_and_typed_columns() {
    let (_d, db) = db();
    db.execute(
        "CREATE TABLE t(b boolean, ts timestamp, d decimal(10,2))".into(),
        vec![],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO t VALUES (?, ?, ?)".into(),
        vec![
            SqlValue::Boolean(true),
            SqlValue::Timestamp("2024-05-01T12:00:00Z".into()),
            SqlValue::Decimal("12.5".into()),
        ],
    )
    .await
    .unwrap();
    let rows = db
        .query("SELECT * FROM t".into(), vec![], CAPS)
        .await
        .unwrap();
    assert_eq!(
        rows.rows[0],
        vec![
            SqlValue::Boolean(true),
            SqlValue::Timestamp("2024-05-01T12:00:00Z".into()),
            SqlValue::Decimal("12.5".into())
        ]
    );
    let tight = ResultCaps {
        max_rows: 0,
        max_bytes: 10,
    };
    let err = db
        .query("SELECT * FROM t".into(), vec![], tight)
        .await
        .unwrap_err();
    assert!(matches!(err, SqlError::TooLarge(_)));
}

/// A second statement in one call is refused, and nothing of the call
/// runs; a trailing `;`, blank or comment is no statement.
#[tokio::test]
async fn one_statement_per_call() {
    let (_d, db) = db();
    db.execute("CREATE TABLE a(x integer); ".into(), vec![])
        .await
        .unwrap();
    db.execute("CREATE TABLE b(x integer) -- the second".into(), vec![])
        .await
        .unwrap();
    let two = "INSERT INTO a VALUES (1); INSERT INTO b VALUES (2)";
    assert_eq!(
        db.execute(two.into(), vec![]).await,
        Err(SqlError::InvalidInput("only one statement per call".into()))
    );
    let err = db
        .query(format!("SELECT 1; {two}"), vec![], CAPS)
        .await
        .unwrap_err();
    assert!(matches!(err, SqlError::InvalidInput(_)), "{err:?}");
    let err = match db.open_cursor(two.into(), vec![], CAPS).await {
        Err(e) => e,
        Ok(_) => panic!("a cursor over two statements was opened"),
    };
    assert!(matches!(err, SqlError::InvalidInput(_)), "{err:?}");
    for table in ["a", "b"] {
        let rows = db
            .query(format!("SELECT count(*) FROM {table}"), vec![], CAPS)
            .await
            .unwrap();
        assert_eq!(rows.rows[0][0], SqlValue::Int(0), "{table}");
    }
}

/// A value past the result cap and [`SQLITE_VALUE_FLOOR`] is refused by
/// SQLite before it is made, in a query and in a cursor; under the floor,
/// values are made and read whatever the cap, and the limit holds for the
/// call only.
#[tokio::test]
async fn values_past_the_result_cap_are_never_made() {
    let (_d, db) = db();
    let huge = "SELECT randomblob(900000000)";
    let err = db.query(huge.into(), vec![], CAPS).await.unwrap_err();
    assert!(matches!(err, SqlError::TooLarge(_)), "{err:?}");
    let mut cursor = db.open_cursor(huge.into(), vec![], CAPS).await.unwrap();
    let err = cursor.next(10, 1 << 20).await.unwrap_err();
    assert!(matches!(err, SqlError::TooLarge(_)), "{err:?}");
    drop(cursor);
    // Under the floor, values are read and made whatever the cap: a
    // stored document longer than the cap is still read by functions.
    db.execute("CREATE TABLE d(doc blob)".into(), vec![])
        .await
        .unwrap();
    db.execute(
        "INSERT INTO d VALUES (?)".into(),
        vec![SqlValue::Blob(vec![7; 5 << 20])],
    )
    .await
    .unwrap();
    let small = ResultCaps {
        max_rows: 10,
        max_bytes: 1 << 20,
    };
    for _ in 0..8 {
        let rows = db
            .query(
                "SELECT length(randomblob(2000000)), length(substr(doc, 1, 100)) FROM d".into(),
                vec![],
                small,
            )
            .await
            .unwrap();
        assert_eq!(rows.rows, [[SqlValue::Int(2_000_000), SqlValue::Int(100)]]);
    }
    // A value past the floor is refused, and one under it is not.
    let floor = SQLITE_VALUE_FLOOR as i64;
    for (size, made) in [(floor + 1, false), (floor - 1024, true)] {
        let rows = db
            .query(
                "SELECT length(zeroblob(?))".into(),
                vec![SqlValue::Int(size)],
                small,
            )
            .await;
        assert_eq!(rows.is_ok(), made, "{size}: {rows:?}");
    }
}

/// A decimal SQLite would round (more than 15 significant digits, not an
/// integer within 64 bits) is refused as a parameter, not stored rounded;
/// what SQLite keeps exactly passes and reads back as written.
#[tokio::test]
async fn decimals_sqlite_would_round_are_refused() {
    let (_d, db) = db();
    db.execute("CREATE TABLE m(v decimal(40, 10))".into(), vec![])
        .await
        .unwrap();
    for exact in [
        "12.5",
        "-9223372036854775808",
        "123456789012345",
        "0.000000000000001",
        "1e300",
    ] {
        let stored = db
            .execute(
                "INSERT INTO m VALUES (?)".into(),
                vec![SqlValue::Decimal(exact.into())],
            )
            .await;
        assert_eq!(stored, Ok(1), "{exact}");
    }
    for rounded in [
        "12345678901234567890.12",
        "0.1234567890123456",
        "-1234567890123456e3",
        "12345678901234567.00",
        " 12345678901234567.5",
        "\u{b}12345678901234567.5\u{c}",
    ] {
        let err = db
            .execute(
                "INSERT INTO m VALUES (?)".into(),
                vec![SqlValue::Decimal(rounded.into())],
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, SqlError::InvalidInput(m) if m.contains("15 significant digits")),
            "{rounded}: {err:?}"
        );
    }
    let rows = db
        .query("SELECT v FROM m WHERE v = 12.5".into(), vec![], CAPS)
        .await
        .unwrap();
    assert_eq!(rows.rows, [[SqlValue::Decimal("12.5".into())]]);
}

/// A boolean column holding another integer than 0 or 1 is refused when
/// read, not read as `true`.
#[tokio::test]
async fn booleans_are_zero_or_one() {
    let (_d, db) = db();
    db.execute("CREATE TABLE f(b boolean)".into(), vec![])
        .await
        .unwrap();
    db.execute("INSERT INTO f VALUES (0), (1)".into(), vec![])
        .await
        .unwrap();
    let rows = db
        .query("SELECT b FROM f ORDER BY b".into(), vec![], CAPS)
        .await
        .unwrap();
    assert_eq!(
        rows.rows,
        [[SqlValue::Boolean(false)], [SqlValue::Boolean(true)]]
    );
    db.execute("INSERT INTO f VALUES (2)".into(), vec![])
        .await
        .unwrap();
    let err = db
        .query("SELECT b FROM f".into(), vec![], CAPS)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SqlError::UnsupportedType(m) if m.contains("holds 2")),
        "{err:?}"
    );
}

#[test]
fn idle_connections_past_their_time_are_closed_but_the_latest() {
    use std::time::{Duration, Instant};
    let start = Instant::now();
    let now = start + Duration::from_secs(600);
    let ago = |s: u64| start + Duration::from_secs(600 - s);
    let mut idle = vec![(1, ago(300)), (2, ago(90)), (3, ago(30)), (4, ago(0))];
    let stale = super::take_stale(&mut idle, now, Duration::from_secs(60));
    assert_eq!(stale.iter().map(|(c, _)| *c).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(idle.iter().map(|(c, _)| *c).collect::<Vec<_>>(), [3, 4]);
    // The latest stays, however long it has been idle.
    let mut idle = vec![(5, ago(600))];
    assert!(super::take_stale(&mut idle, now, Duration::from_secs(60)).is_empty());
    assert_eq!(idle.len(), 1);
}

/// A database bounded by `[app_limits] store_mb` refuses the write that
/// would grow it past the bound as `too-large`, naming the bound, on every
/// connection of its pool, and stays readable and writable within it.
#[tokio::test]
async fn a_bounded_database_refuses_to_grow_past_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let db =
        SqliteDatabase::open_bounded(&path, SqliteTimeouts::default(), Some(256 << 10)).unwrap();
    db.execute("CREATE TABLE t (v BLOB)".into(), vec![])
        .await
        .unwrap();
    // A reading transaction holds the pool's first connection: the
    // writes below go through a second one.
    let mut reading = db.begin().await.unwrap();
    reading
        .query("SELECT count(*) FROM t".into(), vec![], CAPS)
        .await
        .unwrap();
    let row = || vec![SqlValue::Blob(vec![7; 16 << 10])];
    let mut written: i64 = 0;
    let err = loop {
        match db.execute("INSERT INTO t VALUES (?)".into(), row()).await {
            Ok(_) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 100, "1.6 MiB written into a 256 KiB database");
    };
    let SqlError::TooLarge(m) = &err else {
        panic!("{err:?}");
    };
    assert!(m.contains("store_mb"), "{m}");
    assert!(written >= 8, "room for {written} rows only");
    reading.rollback().await.unwrap();
    let rows = db
        .query("SELECT count(*) FROM t".into(), vec![], CAPS)
        .await
        .unwrap();
    assert_eq!(rows.rows[0][0], SqlValue::Int(written));
    // Room made, rows fit again.
    db.execute("DELETE FROM t".into(), vec![]).await.unwrap();
    db.execute("INSERT INTO t VALUES (?)".into(), row())
        .await
        .unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() <= 256 << 10);
}

/// A transaction SQLite rolls back itself (here: a write past the
/// database's bound) is over: its later statements are refused, not run
/// outside it one by one committed, and nothing of it is kept.
#[tokio::test]
async fn a_transaction_sqlite_rolled_back_refuses_its_later_statements() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let db =
        SqliteDatabase::open_bounded(&path, SqliteTimeouts::default(), Some(128 << 10)).unwrap();
    db.execute("CREATE TABLE t (v BLOB)".into(), vec![])
        .await
        .unwrap();
    let mut tx = db.begin().await.unwrap();
    tx.execute("INSERT INTO t VALUES (x'01')".into(), vec![])
        .await
        .unwrap();
    let big = || vec![SqlValue::Blob(vec![7; 16 << 10])];
    let mut failed = None;
    for _ in 0..100 {
        if let Err(e) = tx.execute("INSERT INTO t VALUES (?)".into(), big()).await {
            failed = Some(e);
            break;
        }
    }
    let failed = failed.expect("the bound is reached within 1.6 MiB");
    assert!(
        failed.to_string().contains("rolled back"),
        "the error says the transaction ended: {failed}"
    );
    let after = tx
        .execute("INSERT INTO t VALUES (x'02')".into(), vec![])
        .await
        .unwrap_err();
    assert!(after.to_string().contains("rolled back"), "{after}");
    tx.rollback().await.unwrap();
    let rows = db
        .query("SELECT count(*) FROM t".into(), vec![], CAPS)
        .await
        .unwrap();
    assert_eq!(rows.rows[0][0], SqlValue::Int(0), "nothing of it kept");
}
