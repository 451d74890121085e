//! The Postgres adapter straight from the host crate: what pooled sessions
//! keep between calls. (The conformance guest's runs are in `services.rs`.)

use berth::ports::sql::postgres::{PostgresDatabase, PostgresSettings};
use berth::ports::sql::{SqlBackend as _, SqlError, SqlValue};
use berth::secret::Secret;
use berth_tests::relay::FreezableRelay;
use berth_tests::service;
use berth_tests::sql::{CAPS, one_row, unanswered_then_recovered};

use crate::services::Schema;

/// The adapter on `schema` with one connection, so every call gets the
/// session the last one left, and 5 s timeouts; its sessions are named
/// `berth:test:<name>`.
async fn one_connection(url: &str, schema: &Schema, name: &str) -> PostgresDatabase {
    PostgresDatabase::connect(&PostgresSettings {
        url: Secret::new(url.to_string()),
        password: None,
        schema: Some(schema.name.clone()),
        max_connections: 1,
        min_connections: 0,
        connect_timeout: std::time::Duration::from_secs(5),
        statement_timeout: std::time::Duration::from_secs(5),
        application_name: format!("berth:test:{name}"),
        tenant: None,
        dry_run: false,
    })
    .await
    .expect("adapter connects")
}

/// A statement that changes its session (a setting, an advisory lock)
/// changes it for itself: its connection is closed rather than pooled, in
/// a transaction or not, so the next call gets a session as the host set
/// it up. Ordinary statements keep their pooled connection.
#[tokio::test(flavor = "multi_thread")]
async fn sql_session_changes_do_not_outlive_the_call_postgres() {
    let Some(url) = service("BERTH_TEST_POSTGRES_URL") else {
        return;
    };
    let schema = Schema::create(&url).await;
    let db = one_connection(&url, &schema, "sessions").await;
    const SETTINGS: &str = "SELECT current_setting('statement_timeout'), \
                            current_setting('search_path'), pg_backend_pid()";
    let first = one_row(&db, SETTINGS).await;
    assert_eq!(first[0], SqlValue::Text("5s".into()));
    assert_eq!(first[1], SqlValue::Text(format!("\"{}\"", schema.name)));
    // The host's settings are in place; returns the session's backend.
    let pristine = async |db: &PostgresDatabase| {
        let now = one_row(db, SETTINGS).await;
        assert_eq!(now[..2], first[..2], "the host's session settings");
        now[2].clone()
    };
    // Ordinary statements: the same pooled session.
    assert_eq!(pristine(&db).await, first[2]);

    let mut pids = vec![first[2].clone()];
    for change in [
        "SET statement_timeout = 0",
        "SET search_path = pg_catalog",
        "SELECT set_config('statement_timeout', '0', false)",
        "DO $$ BEGIN PERFORM set_config('search_path', 'public', false); END $$",
    ] {
        db.execute(change.into(), vec![])
            .await
            .unwrap_or_else(|e| panic!("{change}: {e:?}"));
        let pid = pristine(&db).await;
        assert!(!pids.contains(&pid), "{change}: a new session");
        pids.push(pid);
    }

    // A plain SET inside a transaction outlives its commit on the server.
    let mut tx = db.begin().await.expect("begin");
    tx.execute("SET search_path = pg_catalog".into(), vec![])
        .await
        .unwrap();
    let inside = tx
        .query("SELECT current_setting('search_path')".into(), vec![], CAPS)
        .await
        .unwrap();
    assert_eq!(inside.rows, vec![vec![SqlValue::Text("pg_catalog".into())]]);
    tx.commit().await.expect("commit");
    pristine(&db).await;
    let mut tx = db.begin().await.expect("begin");
    tx.execute("SET statement_timeout = 0".into(), vec![])
        .await
        .unwrap();
    drop(tx);
    pristine(&db).await;
    // A transaction that changed nothing of its session leaves it pooled.
    let pid = pristine(&db).await;
    let tx = db.begin().await.expect("begin");
    tx.commit().await.expect("commit");
    assert_eq!(pristine(&db).await, pid);

    // A session-level advisory lock goes with its session (the server
    // releases it as the closed session's backend exits).
    let key = i64::from(std::process::id()) * 1000 + 7;
    db.execute(format!("SELECT pg_advisory_lock({key})"), vec![])
        .await
        .unwrap();
    pristine(&db).await;
    let mut admin = schema.admin().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let taken: bool = sqlx::query_scalar(&format!("SELECT pg_try_advisory_lock({key})"))
            .fetch_one(&mut admin)
            .await
            .unwrap();
        if taken {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the guest's advisory lock is still held"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(admin);
    drop(db);
    schema.drop_now().await;
}

/// A server that stops answering without closing its connections: a
/// statement or a cursor gives `unavailable` once the server would have
/// answered any statement (the statement timeout and the watchdog's bound),
/// instead of waiting for TCP to give up; its connection is not pooled
/// again, and the adapter recovers once the server answers again.
#[tokio::test(flavor = "multi_thread")]
async fn sql_server_that_stops_answering_gives_unavailable_postgres() {
    let Some(url) = service("BERTH_TEST_POSTGRES_URL") else {
        return;
    };
    let relay = FreezableRelay::start(&url).await;
    for call in ["query", "cursor"] {
        // A pool of its own: one that found a connection lost pings every
        // connection before lending it for a while, and the ping would meet
        // the frozen server first.
        let db = PostgresDatabase::connect(&PostgresSettings {
            url: Secret::new(relay.url.clone()),
            password: None,
            schema: None,
            max_connections: 2,
            min_connections: 0,
            connect_timeout: std::time::Duration::from_secs(1),
            statement_timeout: std::time::Duration::from_millis(300),
            application_name: "berth:test:unanswered".into(),
            tenant: None,
            dry_run: false,
        })
        .await
        .expect("adapter connects");
        assert_eq!(one_row(&db, "SELECT 1").await, vec![SqlValue::Int(1)]);
        // The pool's connections back (sqlx pings them on their way) and
        // idle for less than the second after which one is pinged before
        // it is lent: the call gets one and talks to the frozen server.
        while db.pool().num_idle() < db.pool().size() as usize {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        unanswered_then_recovered(&relay, &db, call).await;
    }
}

/// A server short of resources (class 53, here a temporary file over its
/// limit) gives `unavailable` saying so, with its code; the server answered,
/// so the pool goes on as before and the next statement succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn sql_server_short_of_resources_gives_unavailable_postgres() {
    let Some(url) = service("BERTH_TEST_POSTGRES_URL") else {
        return;
    };
    let schema = Schema::create(&url).await;
    let db = one_connection(&url, &schema, "resources").await;
    let mut tx = db.begin().await.expect("begin");
    // A sort that spills to a temporary file larger than the limit: 53400.
    for setting in [
        "SET LOCAL work_mem = '64kB'",
        "SET LOCAL temp_file_limit = '64kB'",
    ] {
        tx.execute(setting.into(), vec![]).await.expect(setting);
    }
    let spilled = tx
        .query(
            "SELECT g FROM generate_series(1, 200000) g ORDER BY g DESC".into(),
            vec![],
            CAPS,
        )
        .await;
    assert_eq!(
        spilled.err(),
        Some(SqlError::ShortOfResources("53400".into()))
    );
    tx.rollback().await.expect("rollback");
    assert_eq!(one_row(&db, "SELECT 1").await, vec![SqlValue::Int(1)]);
    drop(db);
    schema.drop_now().await;
}
