use berth_tests::{
    TestApp, assert_success, assert_trapped_in_transaction, guests, run, single_component_manifest,
};

fn sql_app() -> TestApp {
    TestApp::new(&single_component_manifest(
        "sqltest",
        guests::SQL_GUEST,
        "[sql.main]",
        "sql = [\"main\"]",
    ))
}

#[tokio::test]
async fn sql_conformance_sqlite() {
    let t = sql_app();
    let app = t.load().await.unwrap();
    let out = run(&app, "guest", &["conformance", "main"]).await;
    assert_success(&out);
    assert!(t.state_dir().join("sqltest/sql/main.db").exists());
}

#[tokio::test]
async fn sql_rollback_on_trap_sqlite() {
    let t = sql_app();
    let app = t.load().await.unwrap();
    let out = run(&app, "guest", &["trap-in-tx", "main"]).await;
    assert_trapped_in_transaction(&out);
    let err = out.status.expect_err("the guest traps on purpose");
    assert!(err.to_string().contains("trapped"), "{err}");
    // Seen through the port by a new instance, and by a second connection
    // straight to the file: the insert of the trapped transaction is gone.
    assert_success(&run(&app, "guest", &["count-trap-rows", "main", "0"]).await);
    let conn = rusqlite::Connection::open(t.state_dir().join("sqltest/sql/main.db")).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM trap_probe", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
}

/// `[app_limits] store_mb` bounds an app's SQLite database: a statement
/// that would grow it past the bound is `too-large`, naming the setting,
/// and leaves the database as it was (statements under it still run);
/// the file stays within the bound.
#[tokio::test]
async fn sql_store_bound_sqlite() {
    let t = sql_app();
    let host = berth_tests::host_config(&t, "[app_limits]\nstore_mb = 1\n");
    let app = t.load_with(&host).await.unwrap();
    let try_sql = async |statement: &str| {
        let out = run(&app, "guest", &["try", "main", statement]).await;
        assert_success(&out);
        out.stdout.trim().to_owned()
    };
    assert_eq!(try_sql("CREATE TABLE big (b BLOB)").await, "ok 0");
    let rows = |n: u32| {
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) \
             INSERT INTO big SELECT zeroblob(1024) FROM n RETURNING 1"
        )
    };
    assert_eq!(try_sql(&rows(256)).await, "ok 256", "256 KiB fit in 1 MiB");
    let refused = try_sql(&rows(2048)).await;
    assert!(
        refused.starts_with("error Error::TooLarge(") && refused.contains("store_mb"),
        "2 MiB more: {refused}"
    );
    assert_eq!(
        try_sql("SELECT 1 FROM big").await,
        "ok 256",
        "nothing of it kept"
    );
    assert_eq!(try_sql(&rows(16)).await, "ok 16", "room under the bound");
    let file = t.state_dir().join("sqltest/sql/main.db");
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size <= 1 << 20, "{} holds {size} bytes", file.display());
}

#[tokio::test]
async fn sql_escapes_refused_sqlite() {
    // Another app's database file, and a shared library, for the guest to
    // try to reach.
    let t = sql_app();
    let app = t.load().await.unwrap();
    let other = t.dir.path().join("other.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE secrets (v TEXT); INSERT INTO secrets VALUES ('x');")
        .unwrap();
    let attempts = [
        format!("ATTACH DATABASE '{}' AS o", other.display()),
        "ATTACH DATABASE ':memory:' AS m".to_owned(),
        "SELECT load_extension('/usr/lib/x86_64-linux-gnu/libm.so.6')".to_owned(),
        "VACUUM INTO '/tmp/berth-sqlite-copy.db'".to_owned(),
    ];
    for statement in &attempts {
        let out = run(&app, "guest", &["try", "main", statement]).await;
        assert_success(&out);
        let printed = out.stdout.trim();
        assert!(
            printed.starts_with("error ") && printed.contains("Denied("),
            "{statement}: {printed}"
        );
    }
    assert!(!std::path::Path::new("/tmp/berth-sqlite-copy.db").exists());
}

/// An instance holds at most 16 open cursors, an app's instances 32
/// together; past either, `open-cursor` is `unavailable` at once, naming
/// the limit, and dropped cursors give their places back.
#[tokio::test(flavor = "multi_thread")]
async fn sql_cursors_are_bounded_per_instance_and_app() {
    let t = sql_app();
    let app = std::sync::Arc::new(t.load().await.unwrap());
    let holding = |n: &'static str| {
        let app = app.clone();
        tokio::spawn(async move { run(&app, "guest", &["cursors", "main", n, "15000"]).await })
    };
    let (first, second) = (holding("17"), holding("16"));
    let places = &app.allowance.sql_cursors;
    let waited = std::time::Instant::now();
    while places.available_permits() > 0 {
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(60),
            "two instances hold 32 cursors: {} places left",
            places.available_permits()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let third = run(&app, "guest", &["cursors", "main", "1", "0"]).await;
    assert_success(&third);
    assert!(
        third
            .stdout
            .starts_with("opened 0\nerror Error::Unavailable(")
            && third.stdout.contains("limit `cursors` reached")
            && third.stdout.contains("at most 32 open cursors together"),
        "{}",
        third.stdout
    );
    let first = first.await.unwrap();
    assert_success(&first);
    assert!(
        first
            .stdout
            .starts_with("opened 16\nerror Error::Unavailable(")
            && first
                .stdout
                .contains("at most 16 open cursors; drop one first"),
        "{}",
        first.stdout
    );
    let second = second.await.unwrap();
    assert_success(&second);
    assert_eq!(second.stdout.trim(), "opened 16");
    assert_eq!(places.available_permits(), 32, "the places came back");
}
