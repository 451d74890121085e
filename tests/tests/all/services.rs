//! The same conformance guests against real servers (see
//! `../shared/SERVICES.md`): each test skips itself without its
//! `BERTH_TEST_*` variable, and fails without it under
//! `BERTH_TEST_REQUIRE_SERVICES=1` (as in CI). Each test works in its own
//! schema or key prefix and removes it afterwards.

use berth_tests::{
    TestApp, assert_success, guests, host_config, run, service, single_component_manifest, unique,
};
use sqlx::Connection as _;

/// A Postgres schema for one test, dropped by [`Schema::drop_now`].
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    async fn create(url: &str) -> Schema {
        let name = unique("berth_t_");
        let mut admin = sqlx::PgConnection::connect(url)
            .await
            .expect("admin connection");
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        Schema {
            url: url.to_string(),
            name,
        }
    }

    async fn admin(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.url)
            .await
            .expect("admin connection")
    }

    async fn drop_now(self) {
        let mut admin = self.admin().await;
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.name))
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

fn pg_host(t: &TestApp, url: &str, schema: &str) -> berth::config::HostConfig {
    host_config(
        t,
        &format!(
            "[sql.main]\ntype = \"postgres\"\nurl = {url:?}\nschema = {schema:?}\nmax_connections = 4\nstatement_timeout_ms = 5000\n"
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_conformance_postgres() {
    let Some(url) = service("BERTH_TEST_POSTGRES_URL") else {
        return;
    };
    let schema = Schema::create(&url).await;
    let t = sql_app("pgconf");
    let app = t.load_with(&pg_host(&t, &url, &schema.name)).await.unwrap();
    assert_success(&run(&app, "guest", &["conformance", "main", "postgres"]).await);
    // The guest's tables landed in the test's schema, nowhere else.
    let mut admin = schema.admin().await;
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1",
    )
    .bind(&schema.name)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(tables >= 5, "{tables} tables in {}", schema.name);
    schema.drop_now().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_rollback_on_trap_postgres() {
    let Some(url) = service("BERTH_TEST_POSTGRES_URL") else {
        return;
    };
    let schema = Schema::create(&url).await;
    let t = sql_app("pgtrap");
    let app = t.load_with(&pg_host(&t, &url, &schema.name)).await.unwrap();
    let out = run(&app, "guest", &["trap-in-tx", "main"]).await;
    assert!(out.status.is_err(), "the guest traps on purpose");
    assert_success(&run(&app, "guest", &["count-trap-rows", "main", "0"]).await);
    // A second connection, outside Berth, sees no row either.
    let mut admin = schema.admin().await;
    let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}.trap_probe", schema.name))
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(n, 0);
    schema.drop_now().await;
}

/// Distinct backend pids the app's pool has open, from `pg_stat_activity`.
async fn pool_pids(admin: &mut sqlx::PgConnection, app: &str) -> Vec<i32> {
    sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = $1 ORDER BY pid")
        .bind(format!("berth:{app}:main"))
        .fetch_all(admin)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_pool_reused_and_recovers_postgres() {
    let Some(url) = service("BERTH_TEST_POSTGRES_URL") else {
        return;
    };
    let schema = Schema::create(&url).await;
    let app_name = unique("pgpool");
    let t = sql_app(&app_name);
    let app = t.load_with(&pg_host(&t, &url, &schema.name)).await.unwrap();
    let mut admin = schema.admin().await;
    assert_success(&run(&app, "guest", &["count-trap-rows", "main", "0"]).await);
    let before = pool_pids(&mut admin, &app_name).await;
    assert!(!before.is_empty(), "the pool holds a connection");
    for _ in 0..100 {
        assert_success(&run(&app, "guest", &["count-trap-rows", "main", "0"]).await);
    }
    // 100 invocations, each several statements: the pool may grow to its
    // size (4) as returned connections race the next acquire, never beyond.
    let after = pool_pids(&mut admin, &app_name).await;
    assert!(after.len() <= 4, "at most the pool size is open: {after:?}");
    let opened = after.iter().filter(|p| !before.contains(p)).count();
    assert!(
        opened <= 4 - before.len(),
        "connections were reused, not opened per invocation: {before:?} -> {after:?}"
    );

    // Kill every pooled connection: the host recovers without a restart.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(format!("berth:{app_name}:main"))
    .execute(&mut admin)
    .await
    .unwrap();
    let _first = run(&app, "guest", &["count-trap-rows", "main", "0"]).await; // may see `unavailable`
    assert_success(&run(&app, "guest", &["count-trap-rows", "main", "0"]).await);
    drop(app);
    schema.drop_now().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_unreachable_postgres_fails_at_startup_naming_the_key() {
    let t = sql_app("pgdown");
    // Nothing listens on port 1; the error names the file, key, and says connection.
    let host = host_config(
        &t,
        "[sql.main]\ntype = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:1/test\"\nconnect_timeout_ms = 2000\n",
    );
    let err = format!("{:#}", t.load_with(&host).await.err().expect("refused"));
    assert!(
        err.contains("host.toml") && err.contains("`sql.main`") && err.contains("cannot connect"),
        "{err}"
    );
    let host = host_config(
        &t,
        "[sql.main]\ntype = \"postgres\"\nurl = \"postgres://u:inline-pw@127.0.0.1/test\"\n",
    );
    let err = format!("{:#}", t.load_with(&host).await.err().expect("refused"));
    assert!(
        err.contains("inline password") && !err.contains("inline-pw@"),
        "{err}"
    );
}

async fn redis_cleanup(url: &str, prefix: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kv_conformance_redis() {
    let Some(url) = service("BERTH_TEST_REDIS_URL") else {
        return;
    };
    let prefix = unique("t");
    let t = TestApp::new(&single_component_manifest(
        "kvredis",
        guests::KV_GUEST,
        "[kv.cache]",
        "kv = [\"cache\"]",
    ));
    let host = host_config(
        &t,
        &format!("[kv.cache]\ntype = \"redis\"\nurl = {url:?}\nprefix = \"{prefix}:\"\n"),
    );
    let app = t.load_with(&host).await.unwrap();
    assert_success(&run(&app, "guest", &["conformance", "cache"]).await);
    redis_cleanup(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kv_apps_do_not_share_keys_redis() {
    let Some(url) = service("BERTH_TEST_REDIS_URL") else {
        return;
    };
    let prefix = unique("t");
    let host_text =
        format!("[kv.cache]\ntype = \"redis\"\nurl = {url:?}\nprefix = \"{prefix}:\"\n");
    let a = TestApp::new(&single_component_manifest(
        "a",
        guests::KV_GUEST,
        "[kv.cache]",
        "kv = [\"cache\"]",
    ));
    let b = TestApp::new(&single_component_manifest(
        "b",
        guests::KV_GUEST,
        "[kv.cache]",
        "kv = [\"cache\"]",
    ));
    let app_a = a.load_with(&host_config(&a, &host_text)).await.unwrap();
    let app_b = b.load_with(&host_config(&b, &host_text)).await.unwrap();
    app_a.backends.kv["cache"]
        .set("shared-name", b"a".to_vec(), None)
        .await
        .unwrap();
    assert_eq!(
        app_b.backends.kv["cache"].get("shared-name").await.unwrap(),
        None
    );
    assert!(
        app_b.backends.kv["cache"]
            .list_keys("", None, 10)
            .await
            .unwrap()
            .keys
            .is_empty()
    );
    redis_cleanup(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn email_delivered_smtp() {
    let Some(server) = service("BERTH_TEST_SMTP") else {
        return;
    };
    let Some(maildir) = service("BERTH_TEST_MAILDIR") else {
        return;
    };
    let (host, port) = server.rsplit_once(':').expect("host:port");
    let recipient = format!("{}@example.org", unique("u"));
    let t = TestApp::new(&single_component_manifest(
        "mailsmtp",
        guests::EMAIL_GUEST,
        "",
        "email_senders = [\"app@berth.example\"]",
    ));
    let config = host_config(
        &t,
        &format!("[email]\ntype = \"smtp\"\nhost = {host:?}\nport = {port}\ntls = \"none\"\n"),
    );
    let app = t.load_with(&config).await.unwrap();
    assert_success(&run(&app, "guest", &["send", "app@berth.example", &recipient]).await);
    // Exactly the valid message arrived: the rejected ones were never sent.
    let mut delivered = Vec::new();
    for _ in 0..50 {
        delivered = std::fs::read_dir(std::path::Path::new(&maildir).join("new"))
            .map(|d| {
                d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                    .filter(|m| m.contains(&recipient))
                    .collect()
            })
            .unwrap_or_default();
        if !delivered.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(delivered.len(), 1, "one message for {recipient}");
    let mail = &delivered[0];
    assert!(mail.contains("Subject: Welcome"), "{mail}");
    assert!(mail.contains("From: app@berth.example"), "{mail}");
    assert!(mail.contains(&format!("To: {recipient}")), "{mail}");
    assert!(mail.contains("Hello from Berth"), "{mail}");
    assert!(!mail.contains("evil@example.com"), "{mail}");
}
