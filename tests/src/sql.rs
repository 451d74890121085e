//! Helpers of the tests that drive a SQL adapter directly, the same for
//! every server.

use std::time::{Duration, Instant};

use berth::ports::sql::{ResultCaps, SqlBackend, SqlError, SqlValue};

use crate::relay::FreezableRelay;

/// Result caps no test result comes near.
pub const CAPS: ResultCaps = ResultCaps {
    max_rows: 100,
    max_bytes: 1 << 20,
};

/// The one row `statement` returns.
pub async fn one_row(db: &dyn SqlBackend, statement: &str) -> Vec<SqlValue> {
    let rs = db
        .query(statement.into(), vec![], CAPS)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e:?}"));
    assert_eq!(rs.rows.len(), 1, "{statement}");
    rs.rows.into_iter().next().unwrap()
}

/// With `relay` frozen, `call` on `db` (a `query`, or an `open_cursor`
/// and its first read) gives `unavailable` for an unanswered server within
/// 10 s (the adapters' statement timeout of 0.3 s, the watchdog's 1 s
/// grace and three looks of 0.25 s; TCP would take minutes). Then, with
/// the relay passing bytes on again, `db` answers again within 20 s.
pub async fn unanswered_then_recovered(relay: &FreezableRelay, db: &dyn SqlBackend, call: &str) {
    relay.set_frozen(true);
    let started = Instant::now();
    let failed = match call {
        "query" => db.query("SELECT 2".into(), vec![], CAPS).await.err(),
        "cursor" => match db.open_cursor("SELECT 4".into(), vec![], CAPS).await {
            Err(e) => Some(e),
            Ok(mut cursor) => cursor.next(10, 1 << 20).await.err(),
        },
        other => panic!("no such call: {other}"),
    };
    // The error names the bound (0.3 s + 1 s of grace + three looks of
    // 0.25 s = 2.05 s), not the statement timeout.
    assert!(
        matches!(&failed, Some(SqlError::Unavailable(m))
            if m.starts_with("the database did not answer within 2.")
                && m.ends_with(" s; its connection was closed")),
        "{call}: {failed:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{call} took {:?}",
        started.elapsed()
    );

    relay.set_frozen(false);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match db.query("SELECT 3".into(), vec![], CAPS).await {
            Ok(rs) => {
                assert_eq!(rs.rows, vec![vec![SqlValue::Int(3)]]);
                return;
            }
            Err(e) => assert!(
                Instant::now() < deadline,
                "still failing once the server answers again: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
