//! The sql port against MySQL/MariaDB (`BERTH_TEST_MYSQL_URL`), with the
//! conventions of `services.rs`: each test skips itself without the
//! variable, fails without it under `BERTH_TEST_REQUIRE_SERVICES=1`, and
//! works in a database of its own that it drops afterwards.

use berth::ports::sql::mysql::{MysqlDatabase, MysqlSettings};
use berth::ports::sql::{SqlBackend as _, SqlError, SqlTransaction, SqlValue};
use berth::secret::Secret;
use berth_tests::relay::FreezableRelay;
use berth_tests::sql::{CAPS, one_row, unanswered_then_recovered};
use berth_tests::{
    TestApp, assert_success, connection_ids, guests, host_config, run, service,
    single_component_manifest, unique,
};
use sqlx::Connection as _;

/// A database for one test, dropped by [`Database::drop_now`].
struct Database {
    /// The server's URL, as `BERTH_TEST_MYSQL_URL` gives it.
    server: String,
    name: String,
}

impl Database {
    async fn create(server: &str) -> Database {
        let db = Database {
            server: server.to_string(),
            name: unique("berth_t_"),
        };
        let mut admin = db.admin().await;
        sqlx::query(&format!(
            "CREATE DATABASE {} CHARACTER SET utf8mb4",
            db.name
        ))
        .execute(&mut admin)
        .await
        .unwrap();
        db
    }

    /// The URL of this database on the server.
    fn url(&self) -> String {
        let (server, _db) = self.server.rsplit_once('/').expect("URL has a database");
        format!("{server}/{}", self.name)
    }

    async fn admin(&self) -> sqlx::MySqlConnection {
        sqlx::MySqlConnection::connect(&self.server)
            .await
            .expect("admin connection")
    }

    async fn drop_now(self) {
        let mut admin = self.admin().await;
        sqlx::query(&format!("DROP DATABASE {}", self.name))
            .execute(&mut admin)
            .await
            .unwrap();
    }
}

fn sql_app(app: &str) -> TestApp {
    TestApp::new(&single_component_manifest(
        app,
        guests::SQL_GUEST,
        "[sql.main]",
        "sql = [\"main\"]",
    ))
}

fn mysql_host(t: &TestApp, db: &Database, extra: &str) -> berth::config::HostConfig {
    host_config(
        t,
        &format!(
            "[sql.main]\ntype = \"mysql\"\nurl = {:?}\nmax_connections = 4\n{extra}",
            db.url()
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_conformance_mysql() {
    let Some(server) = service("BERTH_TEST_MYSQL_URL") else {
        return;
    };
    let db = Database::create(&server).await;
    let t = sql_app("myconf");
    let app = t
        .load_with(&mysql_host(&t, &db, "statement_timeout_ms = 5000\n"))
        .await
        .unwrap();
    assert_success(&run(&app, "guest", &["conformance", "main", "mysql"]).await);
    // The guest's tables landed in the test's database, nowhere else.
    let mut admin = db.admin().await;
    let tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM information_schema.tables WHERE table_schema = ?")
            .bind(&db.name)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert!(tables >= 5, "{tables} tables in {}", db.name);
    drop(app);
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_rollback_on_trap_mysql() {
    let Some(server) = service("BERTH_TEST_MYSQL_URL") else {
        return;
    };
    let db = Database::create(&server).await;
    let t = sql_app("mytrap");
    let app = t.load_with(&mysql_host(&t, &db, "")).await.unwrap();
    let out = run(&app, "guest", &["trap-in-tx", "main"]).await;
    berth_tests::assert_trapped_in_transaction(&out);
    assert_success(&run(&app, "guest", &["count-trap-rows", "main", "0"]).await);
    // A second connection, outside Berth, sees no row either.
    let mut admin = db.admin().await;
    let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}.trap_probe", db.name))
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(n, 0);
    drop(app);
    db.drop_now().await;
}

/// Server connection ids using `db` (only the app's pool does).
async fn pool_ids(admin: &mut sqlx::MySqlConnection, db: &str) -> Vec<i64> {
    sqlx::query_scalar("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ? ORDER BY ID")
        .bind(db)
        .fetch_all(admin)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_pool_reused_and_recovers_mysql() {
    let Some(server) = service("BERTH_TEST_MYSQL_URL") else {
        return;
    };
    let db = Database::create(&server).await;
    let t = sql_app("mypool");
    let app = t.load_with(&mysql_host(&t, &db, "")).await.unwrap();
    let mut admin = db.admin().await;
    // 100 invocations, each asking the server which connection runs its
    // statement: the pool (4) may grow to its size as returned connections
    // race the next acquire, never beyond, so at most 4 connections serve
    // them all. A pool opening a connection per invocation shows 100.
    let served = connection_ids(&app, "SELECT CONNECTION_ID()", 100).await;
    assert!(
        served.len() <= 4,
        "connections were reused, not opened per invocation: {served:?}"
    );
    let after = pool_ids(&mut admin, &db.name).await;
    assert!(
        !after.is_empty() && after.len() <= 4,
        "the pool holds at most its size: {after:?}"
    );

    // Kill every pooled connection: the host recovers without a restart.
    for id in &after {
        sqlx::query(&format!("KILL {id}"))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    let _first = run(&app, "guest", &["count-trap-rows", "main", "0"]).await; // may see `unavailable`
    assert_success(&run(&app, "guest", &["count-trap-rows", "main", "0"]).await);
    let renewed = pool_ids(&mut admin, &db.name).await;
    assert!(
        renewed.iter().all(|id| !after.contains(id)),
        "killed connections are not reused: {after:?} -> {renewed:?}"
    );
    drop(app);
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_statement_timeout_mysql() {
    let Some(server) = service("BERTH_TEST_MYSQL_URL") else {
        return;
    };
    let db = Database::create(&server).await;
    let t = sql_app("mytimeout");
    let app = t
        .load_with(&mysql_host(&t, &db, "statement_timeout_ms = 300\n"))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // MariaDB's max_statement_time interrupts SLEEP with error 1969; the
    // guest then runs `SELECT 1` on the same logical connection.
    assert_success(
        &run(
            &app,
            "guest",
            &["expect-timeout", "main", "SELECT SLEEP(5)"],
        )
        .await,
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "cancelled by the server, took {:?}",
        started.elapsed()
    );
    drop(app);
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_unreachable_mysql_fails_at_startup_naming_the_key() {
    let t = sql_app("mydown");
    // Nothing listens on port 1; the error names the file, key, and says connection.
    let host = host_config(
        &t,
        "[sql.main]\ntype = \"mariadb\"\nurl = \"mysql://root@127.0.0.1:1/test\"\nconnect_timeout_ms = 2000\n",
    );
    let err = format!("{:#}", t.load_with(&host).await.err().expect("refused"));
    assert!(
        err.contains("host.toml") && err.contains("`sql.main`") && err.contains("cannot connect"),
        "{err}"
    );
    let host = host_config(
        &t,
        "[sql.main]\ntype = \"mysql\"\nurl = \"mysql://u:inline-pw@127.0.0.1/test\"\n",
    );
    let err = format!("{:#}", t.load_with(&host).await.err().expect("refused"));
    assert!(
        err.contains("inline password") && !err.contains("inline-pw@"),
        "{err}"
    );
    // A database is required (a guest's `USE` could not be undone
    // otherwise); refused before any connection is tried.
    for url in ["mysql://root@127.0.0.1:1", "mysql://root@127.0.0.1:1/"] {
        let host = host_config(
            &t,
            &format!("[sql.main]\ntype = \"mysql\"\nurl = \"{url}\"\n"),
        );
        let err = format!("{:#}", t.load_with(&host).await.err().expect("refused"));
        assert!(
            err.contains("`sql.main`")
                && err.contains("invalid setting: the MySQL URL names no database")
                && !err.contains("cannot connect"),
            "{url}: {err}"
        );
    }
}

/// The adapter's settings for `url`: 2 connections, 5 s to connect, a 5 s
/// statement timeout, and `program` shown as the connections' program.
fn settings(url: String, program: &str) -> MysqlSettings {
    MysqlSettings {
        url: Secret::new(url),
        password: None,
        max_connections: 2,
        min_connections: 0,
        connect_timeout: std::time::Duration::from_secs(5),
        statement_timeout: std::time::Duration::from_secs(5),
        program_name: program.into(),
    }
}

/// The adapter straight from the host crate, for MariaDB's types that the
/// portable conformance guest does not declare.
async fn adapter(db: &Database) -> MysqlDatabase {
    MysqlDatabase::connect(&settings(db.url(), "berth:test:values"))
        .await
        .expect("adapter connects")
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_value_mapping_mysql() {
    let Some(server) = service("BERTH_TEST_MYSQL_URL") else {
        return;
    };
    let db = Database::create(&server).await;
    let a = adapter(&db).await;
    a.execute(
        "CREATE TABLE v (
            id INT PRIMARY KEY, j JSON, u UUID, tb VARCHAR(20) COLLATE utf8mb4_bin,
            vb VARBINARY(20), dt DATETIME(3), ts TIMESTAMP(6) NULL, small TINYINT,
            flag BOOLEAN, big BIGINT UNSIGNED, y YEAR, tm TIME, e ENUM('a', 'b'),
            parent INT, CHECK (small >= 0)
        )"
        .into(),
        vec![],
    )
    .await
    .unwrap();
    let insert = "INSERT INTO v (id, j, u, tb, vb, dt, ts, small, flag, big, y, tm, e)
                  VALUES (?, ?, ?, ?, ?, ?, ?, 7, ?, ?, 2024, '10:00', 'b')";
    let n = a
        .execute(
            insert.into(),
            vec![
                SqlValue::Int(1),
                SqlValue::Json(r#"{"a": [1, 2]}"#.into()),
                SqlValue::Uuid("3F2504E0-4F89-41D3-9A0C-0305E82C3301".into()),
                SqlValue::Text("Case-Sensitive".into()),
                SqlValue::Blob(b"abc".to_vec()),
                SqlValue::Timestamp("2024-05-01T12:00:00.250".into()),
                // An offset is converted: the session time zone is UTC.
                SqlValue::Timestamp("2024-05-01T14:00:00.5+02:00".into()),
                SqlValue::Boolean(true),
                SqlValue::Int(i64::MAX),
            ],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);

    let row = one_row(
        &a,
        "SELECT j, u, tb, vb, dt, ts, small, flag, big, y, e FROM v",
    )
    .await;
    assert_eq!(
        row,
        vec![
            // MariaDB's JSON is LONGTEXT: it comes back as text, as stored.
            SqlValue::Text(r#"{"a": [1, 2]}"#.into()),
            SqlValue::Uuid("3f2504e0-4f89-41d3-9a0c-0305e82c3301".into()),
            // `_bin` collation sets the BINARY flag, yet this is text.
            SqlValue::Text("Case-Sensitive".into()),
            SqlValue::Blob(b"abc".to_vec()),
            SqlValue::Timestamp("2024-05-01T12:00:00.250".into()),
            SqlValue::Timestamp("2024-05-01T12:00:00.500Z".into()),
            SqlValue::Int(7),
            SqlValue::Boolean(true),
            SqlValue::Int(i64::MAX),
            SqlValue::Int(2024),
            SqlValue::Text("b".into()),
        ]
    );
    // Expressions: comparisons are integers on MariaDB, NOW() is DATETIME.
    let row = one_row(
        &a,
        "SELECT 1 = 1, CAST(j AS CHAR), JSON_VALUE(j, '$.a[1]') FROM v",
    )
    .await;
    assert_eq!(row[0], SqlValue::Int(1));
    assert_eq!(row[1], SqlValue::Text(r#"{"a": [1, 2]}"#.into()));
    assert_eq!(row[2], SqlValue::Text("2".into()));

    // Values the port cannot carry are refused, naming the column.
    a.execute("UPDATE v SET big = big + 1, flag = 2".into(), vec![])
        .await
        .unwrap();
    for (statement, needle) in [
        ("SELECT big FROM v", "9223372036854775808"),
        ("SELECT flag FROM v", "`flag`"),
        ("SELECT tm FROM v", "`tm`"),
    ] {
        match a.query(statement.into(), vec![], CAPS).await {
            Err(SqlError::UnsupportedType(m)) => assert!(m.contains(needle), "{m}"),
            other => panic!("{statement}: expected UnsupportedType, got {other:?}"),
        }
    }

    // Engine errors map to the port's cases.
    a.execute(
        "CREATE TABLE child (id INT PRIMARY KEY, p INT NOT NULL, FOREIGN KEY (p) REFERENCES v (id))"
            .into(),
        vec![],
    )
    .await
    .unwrap();
    for statement in [
        "INSERT INTO child (id, p) VALUES (1, 99)", // foreign key, 1452
        "INSERT INTO child (id, p) VALUES (2, NULL)", // not null, 1048
        "UPDATE v SET small = -1",                  // check, 4025
        "INSERT INTO v (id) VALUES (1)",            // duplicate key, 1062
    ] {
        match a.execute(statement.into(), vec![]).await {
            Err(SqlError::Constraint(_)) => {}
            other => panic!("{statement}: expected Constraint, got {other:?}"),
        }
    }
    a.execute("INSERT INTO child (id, p) VALUES (3, 1)".into(), vec![])
        .await
        .unwrap();
    match a.execute("DELETE FROM v".into(), vec![]).await {
        Err(SqlError::Constraint(_)) => {} // referenced row, 1451
        other => panic!("DELETE parent: expected Constraint, got {other:?}"),
    }
    for statement in ["SELECT nope FROM v", "SELECT * FROM nowhere"] {
        match a.query(statement.into(), vec![], CAPS).await {
            Err(SqlError::Syntax(_)) => {}
            other => panic!("{statement}: expected Syntax, got {other:?}"),
        }
    }
    // The driver reads `:name` as a named parameter, which the port has not.
    match a.query("SELECT :name".into(), vec![], CAPS).await {
        Err(SqlError::InvalidInput(_)) => {}
        other => panic!("SELECT :name: expected InvalidInput, got {other:?}"),
    }
    match a
        .query("SELECT ?".into(), vec![SqlValue::Uuid("nope".into())], CAPS)
        .await
    {
        Err(SqlError::InvalidInput(_)) => {}
        other => panic!("bad UUID parameter: expected InvalidInput, got {other:?}"),
    }
    drop(a);
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_ddl_commits_implicitly_mysql() {
    let Some(server) = service("BERTH_TEST_MYSQL_URL") else {
        return;
    };
    let db = Database::create(&server).await;
    let a = adapter(&db).await;
    // MySQL/MariaDB commit before and after DDL, so inside a port
    // transaction DDL is refused: the rollback still undoes the insert made
    // before it, and no table was made.
    a.execute("CREATE TABLE before_ddl (id INT)".into(), vec![])
        .await
        .unwrap();
    let mut tx = a.begin().await.unwrap();
    tx.execute("INSERT INTO before_ddl VALUES (1)".into(), vec![])
        .await
        .unwrap();
    let refused = tx
        .execute("CREATE TABLE made_in_tx (id INT)".into(), vec![])
        .await;
    assert!(
        matches!(&refused, Err(SqlError::Denied(m)) if m.contains("commits the open transaction")),
        "{refused:?}"
    );
    // A temporary table does not commit: allowed.
    tx.execute("CREATE TEMPORARY TABLE scratch (id INT)".into(), vec![])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let row = one_row(&a, "SELECT count(*) FROM before_ddl").await;
    assert_eq!(row, vec![SqlValue::Int(0)]);
    let made = a
        .query("SELECT count(*) FROM made_in_tx".into(), vec![], CAPS)
        .await;
    assert!(
        matches!(&made, Err(e) if e.to_string().contains("doesn't exist")),
        "no table made: {made:?}"
    );
    drop(a);
    db.drop_now().await;
}

/// A guest that lifts its session's statement limit (`SET SESSION
/// max_statement_time = 0`) still has its statements stopped by the host's
/// watchdog, whether the caller waits for them or has given up on them.
#[tokio::test(flavor = "multi_thread")]
async fn sql_statement_timeout_outlives_session_override_mysql() {
    let Some(server) = service("BERTH_TEST_MYSQL_URL") else {
        return;
    };
    let db = Database::create(&server).await;
    // One pooled connection: the override stays on the session that runs
    // every later statement.
    let a = MysqlDatabase::connect(&MysqlSettings {
        max_connections: 1,
        statement_timeout: std::time::Duration::from_millis(300),
        ..settings(db.url(), "berth:test:watchdog")
    })
    .await
    .expect("adapter connects");
    // Inside a transaction the session keeps the override for the
    // transaction's later statements (outside one, the connection would be
    // reset after the `SET`).
    let mut tx = lifted_transaction(&a).await;
    let started = std::time::Instant::now();
    let slept = tx.query("SELECT SLEEP(30)".into(), vec![], CAPS).await;
    // An interrupted SLEEP returns 1 (or the server reports the interrupt).
    match &slept {
        Ok(rs) => assert_eq!(rs.rows, vec![vec![SqlValue::Int(1)]]),
        Err(e) => assert_eq!(e, &SqlError::Timeout),
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "stopped by the watchdog, took {:?}",
        started.elapsed()
    );
    tx.rollback().await.expect("rollback");

    // The caller gives up (as an invocation's time limit does): mysql_async
    // drops the connection from the pool, and the statement goes on on the
    // server until the watchdog stops it. (A busy loop, since the server
    // ends a SLEEP by itself once its client is gone.)
    let mut tx = lifted_transaction(&a).await;
    let abandoned = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        tx.query(
            "SELECT BENCHMARK(50000000000, MD5('berth'))".into(),
            vec![],
            CAPS,
        ),
    )
    .await;
    assert!(abandoned.is_err(), "still sleeping: {abandoned:?}");
    drop(tx);
    let mut admin = db.admin().await;
    let sleeping = || {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
             WHERE DB = ? AND INFO LIKE 'SELECT BENCHMARK(50000000000%'",
        )
        .bind(db.name.clone())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while sleeping().fetch_one(&mut admin).await.unwrap() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned statement still runs"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The pool's connection serves the next statement.
    assert_eq!(one_row(&a, "SELECT 1").await, vec![SqlValue::Int(1)]);
    drop(a);
    db.drop_now().await;
}

/// A transaction whose session has no server-side statement limit:
/// MariaDB's name and MySQL's are both tried, one is unknown to the server.
async fn lifted_transaction(a: &MysqlDatabase) -> Box<dyn SqlTransaction> {
    let mut tx = a.begin().await.expect("begin");
    let mariadb = tx
        .execute("SET SESSION max_statement_time = 0".into(), vec![])
        .await;
    let mysql = tx
        .execute("SET SESSION max_execution_time = 0".into(), vec![])
        .await;
    assert!(mariadb.is_ok() || mysql.is_ok(), "{mariadb:?} {mysql:?}");
    tx
}

/// A statement that changes its session (a setting, a user variable, a
/// named lock) changes it for itself: the pool resets the connection
/// before the next call gets it, in a transaction or not, and the host's
/// own session setup is back.
#[tokio::test(flavor = "multi_thread")]
async fn sql_session_changes_do_not_outlive_the_call_mysql() {
    let Some(server) = service("BERTH_TEST_MYSQL_URL") else {
        return;
    };
    let db = Database::create(&server).await;
    let a = MysqlDatabase::connect(&MysqlSettings {
        // One connection: every call gets the session the last one left.
        max_connections: 1,
        ..settings(db.url(), "berth:test:sessions")
    })
    .await
    .expect("adapter connects");
    let pristine = || async {
        assert_eq!(
            one_row(
                &a,
                "SELECT @berth_leak IS NULL, @@session.time_zone, DATABASE()"
            )
            .await,
            vec![
                SqlValue::Int(1),
                SqlValue::Text("+00:00".into()),
                SqlValue::Text(db.name.clone())
            ]
        );
    };
    a.execute("SET @berth_leak = 42".into(), vec![])
        .await
        .unwrap();
    pristine().await;
    a.execute("SET SESSION time_zone = '+05:00'".into(), vec![])
        .await
        .unwrap();
    pristine().await;
    assert_eq!(
        one_row(&a, "SELECT @berth_leak := 7").await,
        vec![SqlValue::Int(7)]
    );
    pristine().await;
    a.execute("USE information_schema".into(), vec![])
        .await
        .unwrap();
    pristine().await;

    let mut tx = a.begin().await.expect("begin");
    tx.execute("SET @berth_leak = 1".into(), vec![])
        .await
        .unwrap();
    tx.commit().await.expect("commit");
    pristine().await;
    let mut tx = a.begin().await.expect("begin");
    tx.execute("SET SESSION time_zone = '+05:00'".into(), vec![])
        .await
        .unwrap();
    drop(tx);
    pristine().await;

    // A named lock goes with the reset; the next call waited for it.
    let lock = format!("'{}'", db.name);
    assert_eq!(
        one_row(&a, &format!("SELECT GET_LOCK({lock}, 0)")).await,
        vec![SqlValue::Int(1)]
    );
    pristine().await;
    let mut admin = db.admin().await;
    let free: i64 = sqlx::query_scalar(&format!("SELECT IS_FREE_LOCK({lock})"))
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(free, 1, "the named lock was released");
    drop(a);
    db.drop_now().await;
}

/// A server that stops answering without closing its connections: a
/// statement or a cursor gives `unavailable` once the server would have answered any
/// statement (the statement timeout and the watchdog's bound), instead of
/// waiting for TCP to give up, and the adapter recovers once the server
/// answers again.
#[tokio::test(flavor = "multi_thread")]
async fn sql_server_that_stops_answering_gives_unavailable_mysql() {
    let Some(server) = service("BERTH_TEST_MYSQL_URL") else {
        return;
    };
    let db = Database::create(&server).await;
    let relay = FreezableRelay::start(&db.url()).await;
    let a = MysqlDatabase::connect(&MysqlSettings {
        connect_timeout: std::time::Duration::from_secs(1),
        statement_timeout: std::time::Duration::from_millis(300),
        ..settings(relay.url.clone(), "berth:test:unanswered")
    })
    .await
    .expect("adapter connects");
    assert_eq!(one_row(&a, "SELECT 1").await, vec![SqlValue::Int(1)]);
    let idle = || {
        a.pool()
            .metrics()
            .connections_in_pool
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    for call in ["query", "cursor"] {
        // A connection back in the pool, so the call is lent it and talks
        // to the frozen server.
        while idle() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        unanswered_then_recovered(&relay, &a, call).await;
    }
    drop(a);
    db.drop_now().await;
}

/// A deadlock ends the whole transaction on the server (InnoDB rolls it
/// back and the session goes on in autocommit): the chosen transaction's
/// error says so, its later statements are refused rather than each
/// committed on its own, and its commit is refused; the other transaction
/// commits.
#[tokio::test(flavor = "multi_thread")]
async fn sql_transaction_ended_by_a_deadlock_refuses_later_statements_mysql() {
    let Some(server) = service("BERTH_TEST_MYSQL_URL") else {
        return;
    };
    let db = Database::create(&server).await;
    let a = adapter(&db).await;
    a.execute(
        "CREATE TABLE locks (id INT PRIMARY KEY, v INT) ENGINE = InnoDB".into(),
        vec![],
    )
    .await
    .unwrap();
    a.execute(
        "INSERT INTO locks VALUES (1, 0), (2, 0), (3, 0)".into(),
        vec![],
    )
    .await
    .unwrap();
    let set = |id: i64, v: i64| {
        (
            "UPDATE locks SET v = ? WHERE id = ?".to_string(),
            vec![SqlValue::Int(v), SqlValue::Int(id)],
        )
    };
    let mut first = a.begin().await.unwrap();
    let mut second = a.begin().await.unwrap();
    let (s, p) = set(1, 10);
    assert_eq!(first.execute(s, p).await, Ok(1));
    let (s, p) = set(2, 20);
    assert_eq!(second.execute(s, p).await, Ok(1));
    // Each now asks for the row the other holds: the server ends one.
    let waiting = tokio::spawn(async move {
        let (s, p) = set(2, 11);
        let r = first.execute(s, p).await;
        (first, r)
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (s, p) = set(1, 21);
    let r = second.execute(s, p).await;
    let mut outcomes = vec![waiting.await.unwrap(), (second, r)];
    let lost_at = outcomes
        .iter()
        .position(|(_, r)| r.is_err())
        .expect("one of the two deadlocked");
    let (mut ended, lost) = outcomes.remove(lost_at);
    let (survivor, won) = outcomes.remove(0);
    assert_eq!(won, Ok(1));
    assert!(
        matches!(&lost, Err(SqlError::Conflict(m))
            if m.contains("Deadlock") && m.ends_with("the transaction was rolled back")),
        "{lost:?}"
    );
    // Run outside the transaction, this would be committed at once.
    let later = ended
        .execute("UPDATE locks SET v = 99 WHERE id = 3".into(), vec![])
        .await;
    assert!(
        matches!(&later, Err(SqlError::Other(m)) if m.contains("rolled back")),
        "{later:?}"
    );
    let commit = ended.commit().await;
    assert!(
        matches!(&commit, Err(SqlError::Other(m)) if m.contains("rolled back")),
        "{commit:?}"
    );
    survivor.commit().await.unwrap();
    let v = |id: i64| {
        let a = &a;
        async move { one_row(a, &format!("SELECT v FROM locks WHERE id = {id}")).await }
    };
    assert_eq!(
        v(3).await,
        vec![SqlValue::Int(0)],
        "nothing of the ended one kept"
    );
    let survived = (v(1).await, v(2).await);
    assert!(
        survived == (vec![SqlValue::Int(10)], vec![SqlValue::Int(11)])
            || survived == (vec![SqlValue::Int(21)], vec![SqlValue::Int(20)]),
        "the survivor's two updates, nothing of the other's: {survived:?}"
    );
    drop(a);
    db.drop_now().await;
}
