//! The same conformance guests against real servers (see
//! `../shared/SERVICES.md`): each test skips itself without its
//! `BERTH_TEST_*` variable, and fails without it under
//! `BERTH_TEST_REQUIRE_SERVICES=1` (as in CI). Each test works in its own
//! schema or key prefix and removes it afterwards.

use berth_tests::{
    TestApp, assert_success, connection_ids, dry_run, guests, host_config, run, service,
    single_component_manifest, unique,
};
use sqlx::Connection as _;

/// A Postgres schema for one test, dropped by [`Schema::drop_now`].
pub(crate) struct Schema {
    url: String,
    /// The schema's name.
    pub(crate) name: String,
}

impl Schema {
    pub(crate) async fn create(url: &str) -> Schema {
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

    pub(crate) async fn admin(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.url)
            .await
            .expect("admin connection")
    }

    pub(crate) async fn drop_now(self) {
        let mut admin = self.admin().await;
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.name))
            .execute(&mut admin)
            .await
            .unwrap();
    }
}

pub(crate) fn sql_app(app: &str) -> TestApp {
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
    let out = run(&app, "guest", &["conformance", "main", "postgres"]).await;
    assert_success(&out);
    for step in [
        "postgres arrays as json",
        "numeric NaN and infinities round-trip as decimal",
        "json arrays keep their numbers exactly",
        "a single row over the byte cap is too-large",
    ] {
        assert!(
            out.stdout.contains(&format!("sql: {step} ok")),
            "{step}: {}",
            out.stdout
        );
    }
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
    berth_tests::assert_trapped_in_transaction(&out);
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
    // 100 invocations, each asking the server which connection runs its
    // statement: the pool (4) may grow to its size as returned connections
    // race the next acquire, never beyond, so at most 4 backends serve
    // them all. A pool opening a connection per invocation shows 100.
    let served = connection_ids(&app, "SELECT pg_backend_pid()", 100).await;
    assert!(
        served.len() <= 4,
        "connections were reused, not opened per invocation: {served:?}"
    );
    let open = pool_pids(&mut admin, &app_name).await;
    assert!(
        !open.is_empty() && open.len() <= 4,
        "the pool holds at most its size: {open:?}"
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

/// Zero timeouts and pool sizes are refused before any connection, naming
/// their key: 0 would make every call fail or wait forever.
#[tokio::test(flavor = "multi_thread")]
async fn zero_timeouts_and_pool_sizes_name_the_key() {
    let sql = sql_app("zerosettings");
    let kv = TestApp::new(&single_component_manifest(
        "zerokv",
        guests::KV_GUEST,
        "[kv.cache]",
        "kv = [\"cache\"]",
    ));
    let pg = "[sql.main]\ntype = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:1/test\"\n";
    let my = "[sql.main]\ntype = \"mysql\"\nurl = \"mysql://root@127.0.0.1:1/test\"\n";
    let redis = "[kv.cache]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:1\"\n";
    for (t, settings, key, why) in [
        (
            &sql,
            format!("{pg}connect_timeout_ms = 0"),
            "sql.main.connect_timeout_ms",
            "is 0; it must be at least 1 (milliseconds)",
        ),
        (
            &sql,
            format!("{my}statement_timeout_ms = 0"),
            "sql.main.statement_timeout_ms",
            "is 0; it must be at least 1 (milliseconds)",
        ),
        (
            &sql,
            format!("{pg}max_connections = 0"),
            "sql.main.max_connections",
            "is 0; it must be at least 1",
        ),
        (
            &sql,
            format!("{my}max_connections = 2\nmin_connections = 3"),
            "sql.main.min_connections",
            "is 3; it must be at most `max_connections` (2)",
        ),
        (
            &kv,
            format!("{redis}timeout_ms = 0"),
            "kv.cache.timeout_ms",
            "is 0; it must be at least 1 (milliseconds)",
        ),
        (
            &kv,
            "[email]\ntype = \"smtp\"\nhost = \"127.0.0.1\"\nport = 1\ntimeout_ms = 0".to_string(),
            "email.timeout_ms",
            "is 0; it must be at least 1 (milliseconds)",
        ),
        (
            &kv,
            "[email]\ntype = \"smtp\"\nhost = \"smtp.example.com\"\ntls = \"none\"\nusername = \"berth\"\npassword = \"${env:HOME}\"".to_string(),
            "email.tls",
            "the password would cross the network unencrypted",
        ),
    ] {
        let host = host_config(t, &settings);
        let Err(err) = t.load_with(&host).await else {
            panic!("{settings} loaded");
        };
        let text = format!("{err:#}");
        assert!(
            text.contains(&format!("`{key}`"))
                && text.contains(why)
                && !text.contains("cannot connect"),
            "{settings}: {text}"
        );
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
    berth_tests::redis_delete_prefix(&url, &prefix).await;
}

/// A tick claim (MQTT's `messaging.tick_claims`) given back after its
/// publish failed can be claimed again, so the retry publishes the tick;
/// giving back another host's claim does nothing.
#[tokio::test(flavor = "multi_thread")]
async fn tick_claims_are_given_back_only_by_their_holder_redis() {
    use berth::ports::kv::redis::{RedisBucket, RedisSettings};
    let Some(url) = service("BERTH_TEST_REDIS_URL") else {
        return;
    };
    let prefix = unique("claims");
    let claims = RedisBucket::connect(&RedisSettings {
        url: berth::secret::Secret::new(url.clone()),
        prefix: format!("{prefix}:"),
        timeout: std::time::Duration::from_secs(5),
    })
    .await
    .unwrap();
    let ttl = std::time::Duration::from_secs(60);
    assert!(claims.claim("tick-1", "host-a", ttl).await.unwrap());
    assert!(!claims.claim("tick-1", "host-b", ttl).await.unwrap());
    claims.release_claim("tick-1", "host-b").await.unwrap();
    assert!(
        !claims.claim("tick-1", "host-b", ttl).await.unwrap(),
        "still host-a's"
    );
    claims.release_claim("tick-1", "host-a").await.unwrap();
    assert!(
        claims.claim("tick-1", "host-b", ttl).await.unwrap(),
        "given back"
    );
    berth_tests::redis_delete_prefix(&url, &prefix).await;
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
    berth_tests::redis_delete_prefix(&url, &prefix).await;
}

/// A dry run (`berth check`) reads the bucket's index keys without
/// indexing: a Redis user whose ACL key pattern leaves the bucket out
/// fails the check as it fails a load (which indexes the bucket), and a
/// check that passes marks nothing indexed.
#[tokio::test(flavor = "multi_thread")]
async fn kv_check_reads_the_bucket_keys_redis() {
    let Some(url) = service("BERTH_TEST_REDIS_URL") else {
        return;
    };
    let (prefix, user) = (unique("t"), unique("berth_chk_"));
    let mut admin = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            user.as_str(),
            "on",
            ">chk-pw-0123",
            "~elsewhere:*",
            "+@all",
            "-@dangerous",
        ])
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    let mut user_url = reqwest::Url::parse(&url).unwrap();
    user_url.set_username(&user).unwrap();
    user_url.set_password(Some("chk-pw-0123")).unwrap();
    let t = TestApp::new(&single_component_manifest(
        "kvchk",
        guests::KV_GUEST,
        "[kv.cache]",
        "kv = [\"cache\"]",
    ));
    let url_file = t.dir.path().join("redis-url");
    std::fs::write(&url_file, user_url.as_str()).unwrap();
    let bucket = |url: &str| {
        format!("[kv.cache]\ntype = \"redis\"\nurl = {url:?}\nprefix = \"{prefix}:\"\n")
    };
    let fenced = bucket(&format!("${{file:{}}}", url_file.display()));
    let checking = |text: &str| dry_run(&t, host_config(&t, text));
    let checked = t
        .load_with(&checking(&fenced))
        .await
        .err()
        .expect("refused");
    let loaded = t
        .load_with(&host_config(&t, &fenced))
        .await
        .err()
        .expect("refused");
    for refused in [format!("{checked:#}"), format!("{loaded:#}")] {
        assert!(refused.contains("kv.cache"), "{refused}");
        assert!(refused.contains("NOPERM"), "{refused}");
        assert!(
            refused.contains(&format!("the keys `{prefix}:berth:*`")),
            "{refused}"
        );
        assert!(!refused.contains("chk-pw-0123"), "{refused}");
    }

    drop(t.load_with(&checking(&bucket(&url))).await.unwrap());
    let indexed: bool = redis::cmd("EXISTS")
        .arg(format!("{prefix}:berth:kvchk:cache#indexed"))
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(!indexed, "the check marked the bucket indexed");
    redis::cmd("ACL")
        .arg(&["DELUSER", user.as_str()])
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    berth_tests::redis_delete_prefix(&url, &prefix).await;
}

/// Redis listings read the bucket's sorted index, not the keyspace: every
/// write keeps it in step, expired keys are skipped and swept from it, a
/// run of expired entries longer than a listing's budget gives short
/// pages that still end at the live keys, and keys stored before the
/// index existed are indexed when the host starts.
#[tokio::test(flavor = "multi_thread")]
async fn kv_listing_reads_the_index_redis() {
    use std::time::Duration;
    let Some(url) = service("BERTH_TEST_REDIS_URL") else {
        return;
    };
    let prefix = unique("t");
    let data = format!("{prefix}:berth:kvindex:cache:");
    let (index, expiry) = (
        format!("{prefix}:berth:kvindex:cache#keys"),
        format!("{prefix}:berth:kvindex:cache#expiry"),
    );
    let mut redis = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // Stored before the bucket had an index: one lasting, one expiring.
    let _: () = redis::cmd("SET")
        .arg(format!("{data}old"))
        .arg("1")
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{data}old-expiring"))
        .arg("1")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut redis)
        .await
        .unwrap();
    let t = TestApp::new(&single_component_manifest(
        "kvindex",
        guests::KV_GUEST,
        "[kv.cache]",
        "kv = [\"cache\"]",
    ));
    let host = host_config(
        &t,
        &format!("[kv.cache]\ntype = \"redis\"\nurl = {url:?}\nprefix = \"{prefix}:\"\n"),
    );
    let app = t.load_with(&host).await.unwrap();
    let b = &app.backends.kv["cache"];
    let counting = redis.clone();
    let zcard = |key: String| {
        let mut redis = counting.clone();
        async move {
            redis::cmd("ZCARD")
                .arg(key)
                .query_async::<usize>(&mut redis)
                .await
                .unwrap()
        }
    };
    let list = |p: &'static str| async move { b.list_keys(p, None, 100).await.unwrap().keys };
    assert_eq!(list("old").await, ["old", "old-expiring"]);
    assert_eq!(
        zcard(expiry.clone()).await,
        1,
        "the old key's TTL is indexed"
    );

    // Every kind of write indexes its key; a delete removes it.
    b.set("k-set", b"v".to_vec(), None).await.unwrap();
    b.increment("k-incr", 2).await.unwrap();
    assert!(
        b.compare_and_swap("k-cas", None, b"v".to_vec())
            .await
            .unwrap()
    );
    b.set("k-gone", b"v".to_vec(), None).await.unwrap();
    assert!(b.delete("k-gone").await.unwrap());
    assert_eq!(list("k-").await, ["k-cas", "k-incr", "k-set"]);
    // A key set again without a TTL (by set, increment or swap) leaves the
    // expiry set, so it is not swept when its old TTL would have passed.
    b.set("k-set", b"v".to_vec(), Some(Duration::from_millis(100)))
        .await
        .unwrap();
    b.set("k-set", b"w".to_vec(), None).await.unwrap();
    b.set("k-cas", b"v".to_vec(), Some(Duration::from_millis(100)))
        .await
        .unwrap();
    assert!(
        b.compare_and_swap("k-cas", Some(b"v"), b"w".to_vec())
            .await
            .unwrap()
    );

    // Expired keys are skipped, then swept from both sets.
    b.set("e-short", b"v".to_vec(), Some(Duration::from_millis(50)))
        .await
        .unwrap();
    b.set("e-long", b"v".to_vec(), Some(Duration::from_secs(60)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(list("e-").await, ["e-long"]);
    assert_eq!(list("k-").await, ["k-cas", "k-incr", "k-set"]);
    let all = list("").await;
    assert_eq!(
        all,
        ["e-long", "k-cas", "k-incr", "k-set", "old", "old-expiring"]
    );
    assert_eq!(zcard(index.clone()).await, all.len(), "expired keys swept");
    assert_eq!(zcard(expiry.clone()).await, 2, "e-long and old-expiring");
    // A key gone behind the index's back (evicted, deleted by hand) is
    // not listed, and leaves the index.
    let _: () = redis::cmd("DEL")
        .arg(format!("{data}k-incr"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(list("k-").await, ["k-cas", "k-set"]);
    assert_eq!(zcard(index.clone()).await, all.len() - 1);

    // A run of expired entries longer than a listing looks at: pages may
    // be short, even empty, but keep a cursor until the live keys.
    let mut pipe = redis::pipe();
    for i in 0..6_000 {
        let member = format!("r-{i:05}");
        pipe.cmd("ZADD").arg(&index).arg(0).arg(&member).ignore();
        pipe.cmd("ZADD").arg(&expiry).arg(1).arg(&member).ignore();
    }
    pipe.query_async::<()>(&mut redis).await.unwrap();
    b.set("r-zz", b"v".to_vec(), None).await.unwrap();
    let (mut found, mut cursor, mut pages) = (Vec::new(), None, 0);
    loop {
        let page = b.list_keys("r-", cursor.as_deref(), 10).await.unwrap();
        found.extend(page.keys);
        pages += 1;
        assert!(pages < 10, "the listing ends");
        cursor = page.cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(found, ["r-zz"]);
    assert!(pages > 1, "the budget cut the listing into pages");

    // A second host finds the bucket indexed and does not index it again.
    let marker: bool = redis::cmd("EXISTS")
        .arg(format!("{prefix}:berth:kvindex:cache#indexed"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(marker);
    drop(app);
    berth_tests::redis_delete_prefix(&url, &prefix).await;
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
    let mail = &berth_tests::wait_for_mail(&maildir, &recipient).await;
    assert!(mail.contains("Subject: Welcome"), "{mail}");
    assert!(mail.contains("From: app@berth.example"), "{mail}");
    assert!(mail.contains(&format!("To: {recipient}")), "{mail}");
    assert!(mail.contains("Hello from Berth"), "{mail}");
    assert!(!mail.contains("evil@example.com"), "{mail}");
}

/// `[blob.files]` on S3, with the credentials in files next to the manifest
/// (so the test does not touch the environment).
fn s3_host(t: &TestApp, endpoint: &str, bucket: &str, key: &str, secret: &str) -> String {
    let key_file = t.dir.path().join("s3-key-id");
    let secret_file = t.dir.path().join("s3-secret");
    std::fs::write(&key_file, key).unwrap();
    std::fs::write(&secret_file, secret).unwrap();
    format!(
        "[blob.files]\ntype = \"s3\"\nendpoint = {endpoint:?}\nbucket = {bucket:?}\npath_style = true\npart_size_mb = 5\ntimeout_ms = 5000\naccess_key_id = \"${{file:{}}}\"\nsecret_access_key = \"${{file:{}}}\"\n",
        key_file.display(),
        secret_file.display()
    )
}

fn blob_app(app: &str) -> TestApp {
    TestApp::new(&single_component_manifest(
        app,
        guests::BLOB_GUEST,
        "[blob.files]",
        "blob = [\"files\"]",
    ))
}

/// The multipart uploads still in progress in `bucket`: polled until there
/// are none, for up to 10 s, since the host aborts uploads in the background.
async fn uploads_once_settled(s3: &aws_sdk_s3::Client, bucket: &str) -> usize {
    let mut uploads = 0;
    for _ in 0..100 {
        let listed = s3.list_multipart_uploads().bucket(bucket).send().await;
        uploads = listed.unwrap().uploads().len();
        if uploads == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    uploads
}

/// A `blob_max_object_mb` past what an S3 container can store in one
/// object (10,000 parts of `part_size_mb`) is refused at load, naming both
/// settings, rather than failing a writer once it got there.
#[tokio::test(flavor = "multi_thread")]
async fn blob_max_object_past_the_part_count_is_refused_s3() {
    let Some(endpoint) = service("BERTH_TEST_S3_ENDPOINT") else {
        return;
    };
    let s3 = berth_tests::s3_client(&endpoint);
    let bucket = unique("berth-t-");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let manifest = |most_mb: u32| {
        single_component_manifest(
            &unique("blobparts"),
            guests::BLOB_GUEST,
            "[blob.files]",
            &format!(
                "blob = [\"files\"]\n[component.guest.limits]\nblob_max_object_mb = {most_mb}"
            ),
        )
    };
    // 5 MiB parts: at most 50,000 MiB. The host's own cap (5 GiB by
    // default) is raised, or it would bound the manifest's first.
    let raised = "[engine.max_payloads]\nblob_max_object_mb = 100000\n";
    let t = TestApp::new(&manifest(60_000));
    let text = s3_host(&t, &endpoint, &bucket, "k", "s") + raised;
    let refused = match t.load_with(&host_config(&t, &text)).await {
        Ok(_) => panic!("loaded a writer limit S3 cannot store"),
        Err(e) => format!("{e:#}"),
    };
    for part in [
        "blob_max_object_mb` (60000 MiB)",
        "container `files`",
        "(50000 MiB",
        "10000 parts",
        "part_size_mb",
    ] {
        assert!(refused.contains(part), "{part}: {refused}");
    }
    let t = TestApp::new(&manifest(50_000));
    let text = s3_host(&t, &endpoint, &bucket, "k", "s") + raised;
    drop(t.load_with(&host_config(&t, &text)).await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn blob_reads_resume_after_the_connection_breaks_s3() {
    let Some(endpoint) = service("BERTH_TEST_S3_ENDPOINT") else {
        return;
    };
    let s3 = berth_tests::s3_client(&endpoint);
    let bucket = unique("berth-t-");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let server = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let proxy = berth_tests::CuttableProxy::start(server).await;
    let through_proxy = format!("http://127.0.0.1:{}", proxy.port);
    let t = blob_app(&unique("blobresume"));
    let text = s3_host(&t, &through_proxy, &bucket, "k", "s");
    let app = t.load_with(&host_config(&t, &text)).await.unwrap();
    let files = &app.backends.blob["files"];
    let data: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    files.put("big", data.clone()).await.unwrap();
    let read_rest = async |reader: &mut Box<dyn berth::ports::blob::BlobReader>| {
        let mut rest = Vec::new();
        loop {
            match reader.read(1 << 20).await {
                Ok(chunk) if chunk.is_empty() => return Ok(rest),
                Ok(chunk) => rest.extend(chunk),
                Err(e) => return Err(e),
            }
        }
    };

    // Cut off after 64 KiB: the reader goes on where it stopped, on a new
    // connection, and the guest sees every byte once.
    let mut reader = files.read("big").await.unwrap();
    let mut got = reader.read(64 << 10).await.unwrap();
    let before = proxy.accepted();
    proxy.cut();
    got.extend(read_rest(&mut reader).await.unwrap());
    assert!(proxy.accepted() > before, "the read was resumed");
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the bytes read are the object's");

    // Replaced while being read: the read stops rather than mix versions.
    let mut reader = files.read("big").await.unwrap();
    let first = reader.read(64 << 10).await.unwrap();
    assert_eq!(first[..], data[..64 << 10]);
    files.put("big", vec![1u8; 16 << 20]).await.unwrap();
    proxy.cut();
    match read_rest(&mut reader).await {
        Err(berth::ports::blob::BlobError::Unavailable(why)) => {
            assert!(why.contains("replaced"), "{why}")
        }
        other => panic!(
            "a read of a replaced object went on: {:?}",
            other.map(|r| r.len())
        ),
    }
}

/// A part upload cut off half-way (the writer's call dropped while the
/// part is on its way) leaves the writer failed: that part's bytes went
/// with the call, so later writes and `finish` are refused rather than
/// completing an object a part short, and no object appears.
#[tokio::test(flavor = "multi_thread")]
async fn blob_writer_cut_off_mid_part_cannot_finish_s3() {
    let Some(endpoint) = service("BERTH_TEST_S3_ENDPOINT") else {
        return;
    };
    let s3 = berth_tests::s3_client(&endpoint);
    let bucket = unique("berth-t-");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let relay = berth_tests::relay::FreezableRelay::start(&endpoint).await;
    let t = blob_app(&unique("blobcut"));
    let text = s3_host(&t, relay.url.trim_end_matches('/'), &bucket, "k", "s");
    let app = t.load_with(&host_config(&t, &text)).await.unwrap();
    let files = &app.backends.blob["files"];
    let part = vec![3u8; 5 << 20];
    let mut writer = files.write("cut").await.unwrap();
    writer.write(&part).await.expect("the first part goes up");
    relay.set_frozen(true);
    let cut = tokio::time::timeout(std::time::Duration::from_secs(1), writer.write(&part)).await;
    assert!(cut.is_err(), "the second part stalled: {cut:?}");
    relay.set_frozen(false);
    let later = writer.write(b"more").await;
    assert!(
        matches!(&later, Err(berth::ports::blob::BlobError::Other(m)) if m.contains("earlier write failed")),
        "{later:?}"
    );
    let finished = writer.finish().await;
    assert!(finished.is_err(), "finished a part short: {finished:?}");
    let stat = files.stat("cut").await;
    assert!(
        matches!(stat, Err(berth::ports::blob::BlobError::NotFound)),
        "{stat:?}"
    );
    assert_eq!(
        uploads_once_settled(&s3, &bucket).await,
        0,
        "upload aborted"
    );
    berth_tests::delete_bucket(&s3, &bucket).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn blob_conformance_s3() {
    let Some(endpoint) = service("BERTH_TEST_S3_ENDPOINT") else {
        return;
    };
    let s3 = berth_tests::s3_client(&endpoint);
    let bucket = unique("berth-t-");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let app_name = unique("blobs3");
    let t = blob_app(&app_name);
    let text = s3_host(
        &t,
        &endpoint,
        &bucket,
        "berth-test-key",
        "berth-test-secret",
    );
    let app = t.load_with(&host_config(&t, &text)).await.unwrap();
    let out = run(&app, "guest", &["conformance", "files"]).await;
    assert_success(&out);
    // The guest's URL gives the object itself, from the S3 server, to a
    // client holding no credential.
    let url = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("blob: url "))
        .expect("the guest prints its URL");
    let fetched = reqwest::get(url).await.unwrap();
    assert_eq!(fetched.status(), 200, "{url}");
    assert_eq!(fetched.text().await.unwrap(), "dir/o00", "{url}");
    // A writer dropped after a full part has started a multipart upload:
    // dropping it aborts the upload in the background.
    let mut w = app.backends.blob["files"]
        .write("dropped/big")
        .await
        .unwrap();
    w.write(&vec![7u8; 5 << 20]).await.unwrap();
    let started = s3.list_multipart_uploads().bucket(&bucket).send().await;
    assert_eq!(
        started.unwrap().uploads().len(),
        1,
        "one upload in progress"
    );
    drop(w);
    drop(app);

    // Every object landed under the app's and container's prefix.
    let prefix = format!("berth/{app_name}/files/");
    let listed = s3.list_objects_v2().bucket(&bucket).send().await.unwrap();
    let keys: Vec<String> = listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    assert!(keys.contains(&format!("{prefix}big/object")), "{keys:?}");
    assert!(keys.iter().all(|k| k.starts_with(&prefix)), "{keys:?}");
    // 8 MiB in 5 MiB parts went up as a two-part multipart upload, and the
    // dropped writers left no object and no upload behind.
    let big = s3
        .head_object()
        .bucket(&bucket)
        .key(format!("{prefix}big/object"))
        .send()
        .await
        .unwrap();
    let etag = big
        .e_tag()
        .unwrap_or_default()
        .trim_matches('"')
        .to_string();
    assert!(etag.ends_with("-2"), "multipart ETag {etag}");
    assert_eq!(
        uploads_once_settled(&s3, &bucket).await,
        0,
        "the dropped writer's upload was aborted"
    );

    // A write cancelled while S3 creates the upload (an invocation's time
    // limit cuts it off at any point): whatever upload S3 created is
    // aborted all the same. The delays spread the cancellation over the
    // create request's life.
    let app = t.load_with(&host_config(&t, &text)).await.unwrap();
    for delay_ms in [0, 1, 2, 3, 5, 8, 12, 20, 30, 50] {
        let mut w = app.backends.blob["files"]
            .write(&format!("cancelled/{delay_ms}"))
            .await
            .unwrap();
        let part = vec![9u8; 5 << 20];
        let delay = std::time::Duration::from_millis(delay_ms);
        let _ = tokio::time::timeout(delay, w.write(&part)).await;
        drop(w);
    }
    drop(app);
    assert_eq!(
        uploads_once_settled(&s3, &bucket).await,
        0,
        "the cancelled writes' uploads were aborted"
    );

    berth_tests::delete_bucket(&s3, &bucket).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn blob_s3_unreachable_fails_at_startup_naming_the_key() {
    let t = blob_app("blobs3down");
    // Nothing listens on port 1: the error names the file and key, says
    // connection, and shows neither secret.
    let text = s3_host(
        &t,
        "http://127.0.0.1:1",
        "b",
        "canary-key-id",
        "canary-secret",
    );
    let err = format!(
        "{:#}",
        t.load_with(&host_config(&t, &text))
            .await
            .err()
            .expect("refused")
    );
    assert!(
        err.contains("host.toml") && err.contains("`blob.files`") && err.contains("cannot connect"),
        "{err}"
    );
    assert!(!err.contains("canary"), "{err}");
    // Secrets are references, never inline values.
    let inline = text.replace(
        &format!("\"${{file:{}}}\"", t.dir.path().join("s3-secret").display()),
        "\"canary-inline\"",
    );
    let err = format!(
        "{:#}",
        t.load_with(&host_config(&t, &inline))
            .await
            .err()
            .expect("refused")
    );
    assert!(
        err.contains("`blob.files.secret_access_key`") && !err.contains("canary-inline"),
        "{err}"
    );
    // A part larger than half the host's budget of writer buffers.
    for (size, why) in [(4, "between 5 and 1024"), (2048, "out of 2048 MiB")] {
        let big = text.replace("part_size_mb = 5", &format!("part_size_mb = {size}"));
        let err = format!(
            "{:#}",
            t.load_with(&host_config(&t, &big))
                .await
                .err()
                .expect("refused")
        );
        assert!(
            err.contains("`blob.files.part_size_mb`") && err.contains(why),
            "{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_statement_timeout_postgres() {
    let Some(url) = service("BERTH_TEST_POSTGRES_URL") else {
        return;
    };
    let schema = Schema::create(&url).await;
    let t = sql_app("pgtimeout");
    let host = host_config(
        &t,
        &format!(
            "[sql.main]\ntype = \"postgres\"\nurl = {url:?}\nschema = {:?}\nstatement_timeout_ms = 300\n",
            schema.name
        ),
    );
    let app = t.load_with(&host).await.unwrap();
    let started = std::time::Instant::now();
    assert_success(
        &run(
            &app,
            "guest",
            &["expect-timeout", "main", "SELECT pg_sleep(5)"],
        )
        .await,
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "cancelled by the server, took {:?}",
        started.elapsed()
    );
    schema.drop_now().await;
}

/// A statement that escapes the server's `statement_timeout` (by catching
/// its cancel) is still stopped, by the host's watchdog: cancelled
/// (`timeout`), and one that catches every cancel has its session ended.
#[tokio::test(flavor = "multi_thread")]
async fn sql_statement_timeout_outlives_session_override_postgres() {
    let Some(url) = service("BERTH_TEST_POSTGRES_URL") else {
        return;
    };
    let schema = Schema::create(&url).await;
    let app_name = unique("pgwatch");
    let t = sql_app(&app_name);
    let host = host_config(
        &t,
        &format!(
            "[sql.main]\ntype = \"postgres\"\nurl = {url:?}\nschema = {:?}\nmax_connections = 1\nstatement_timeout_ms = 300\n",
            schema.name
        ),
    );
    let app = t.load_with(&host).await.unwrap();
    // The server's own limit cancels the first sleep; the statement
    // catches that and sleeps again, which only the watchdog stops. (A
    // session-level override would not outlive its call: the connection
    // is closed after it.)
    let started = std::time::Instant::now();
    assert_success(
        &run(
            &app,
            "guest",
            &[
                "expect-timeout",
                "main",
                "DO $$ BEGIN BEGIN PERFORM pg_sleep(30); \
                 EXCEPTION WHEN query_canceled THEN NULL; END; \
                 PERFORM pg_sleep(30); END $$",
            ],
        )
        .await,
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "cancelled by the watchdog, took {:?}",
        started.elapsed()
    );

    let started = std::time::Instant::now();
    let stubborn = try_sql(
        &app,
        "DO $$ BEGIN LOOP BEGIN PERFORM pg_sleep(30); \
         EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END $$",
    )
    .await;
    assert!(stubborn.contains("Unavailable"), "{stubborn}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "ended by the watchdog, took {:?}",
        started.elapsed()
    );
    // The pool replaces the ended connection.
    assert_eq!(try_sql(&app, "SELECT 1").await, "ok 1");
    let mut admin = schema.admin().await;
    let sleeping: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND query LIKE '%pg_sleep%'",
    )
    .bind(format!("berth:{app_name}:main"))
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(sleeping, 0, "no statement of the guest's is left running");
    drop(app);
    schema.drop_now().await;
}

/// Removes the stream Berth created for `app`.
pub(crate) async fn delete_nats_stream(url: &str, app: &str) {
    let client = async_nats::connect(url).await.unwrap();
    async_nats::jetstream::new(client)
        .delete_stream(format!("BERTH_{app}"))
        .await
        .unwrap();
}

/// Runs `statement` as the app's guest through `sql_guest try` and returns
/// what it printed: `ok <rows>` or `error <variant>(…)`.
pub(crate) async fn try_sql(app: &berth::app::App, statement: &str) -> String {
    let out = run(app, "guest", &["try", "main", statement]).await;
    assert_success(&out);
    out.stdout.trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_tenants_isolated_postgres() {
    let Some(url) = service("BERTH_TEST_POSTGRES_URL") else {
        return;
    };
    let (name_a, name_b) = (unique("tena_"), unique("tenb_"));
    let (role_a, role_b) = (
        berth::ports::sql::pg_tenancy::tenant_role(&name_a, "main"),
        berth::ports::sql::pg_tenancy::tenant_role(&name_b, "main"),
    );
    let host = |t: &TestApp| {
        let key = t.dir.path().join("tenant-key");
        std::fs::write(&key, "tenant-key-for-tests").unwrap();
        host_config(
            t,
            &format!(
                "[sql.main]\ntype = \"postgres\"\nurl = {url:?}\ntenancy = \"role-per-app\"\ntenant_password_key = \"${{file:{}}}\"\nmax_connections = 2\n",
                key.display()
            ),
        )
    };
    let (ta, tb) = (sql_app(&name_a), sql_app(&name_b));
    let a = ta.load_with(&host(&ta)).await.unwrap();
    let b = tb.load_with(&host(&tb)).await.unwrap();

    // The server holds the SCRAM verifier the host computed, as sent: a
    // password sent in clear would have been hashed with the server's own
    // salt and settings.
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    let stored: String = sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
        .bind(&role_a)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    let salt = stored
        .strip_prefix("SCRAM-SHA-256$4096:")
        .and_then(|rest| rest.split_once('$'))
        .map(|(salt, _)| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(salt)
                .unwrap()
        })
        .unwrap_or_else(|| panic!("not a SCRAM verifier: {stored}"));
    let password = berth::ports::sql::pg_tenancy::tenant_password(
        &berth::secret::Secret::new("tenant-key-for-tests"),
        &role_a,
    );
    assert_eq!(
        stored,
        berth::ports::sql::pg_tenancy::scram_verifier(&password, &salt, 4096)
    );

    assert_eq!(try_sql(&b, "CREATE TABLE secrets (v text)").await, "ok 0");
    assert_eq!(
        try_sql(&b, "INSERT INTO secrets VALUES ('b-secret')").await,
        "ok 0"
    );
    // Each tenant works in its own schema, as its own role.
    assert_eq!(try_sql(&a, "CREATE TABLE mine (v text)").await, "ok 0");
    let whoami =
        format!("SELECT 1 WHERE current_user = '{role_a}' AND current_schema() = '{role_a}'");
    assert_eq!(try_sql(&a, &whoami).await, "ok 1");
    // Values past chrono's range come back as Postgres spells them, not as
    // a panic of the host.
    assert_eq!(
        try_sql(&a, "SELECT 'infinity'::timestamptz, '-infinity'::date").await,
        "ok 1"
    );

    // Everything tenant A tries against B, or to leave its sandbox, is
    // refused by the server.
    let attacks = [
        format!("SELECT v FROM \"{role_b}\".secrets"),
        format!("SET ROLE \"{role_b}\""),
        format!("SET SESSION AUTHORIZATION \"{role_b}\""),
        "SET ROLE postgres".to_owned(),
        "SELECT pg_read_file('/etc/hostname')".to_owned(),
        "COPY (SELECT 1) TO PROGRAM 'true'".to_owned(),
        "CREATE EXTENSION IF NOT EXISTS citext".to_owned(),
        "DO $$ BEGIN PERFORM 1; END $$".to_owned(),
        "CREATE TABLE public.planted (v int)".to_owned(),
        "CREATE TEMP TABLE scratch (v int)".to_owned(),
        format!("ALTER ROLE \"{role_a}\" SUPERUSER"),
        format!("GRANT \"{role_b}\" TO \"{role_a}\""),
    ];
    for attack in &attacks {
        let outcome = try_sql(&a, attack).await;
        assert!(
            outcome.starts_with("error Error::Denied("),
            "{attack}: {outcome}"
        );
    }
    // Resetting the role or the search path changes nothing A can see.
    assert_eq!(try_sql(&a, "RESET ROLE").await, "ok 0");
    assert_eq!(try_sql(&a, &whoami).await, "ok 1");
    let moved = format!("SET search_path = \"{role_b}\", public");
    assert_eq!(try_sql(&a, &moved).await, "ok 0");
    let outcome = try_sql(&a, "SELECT v FROM secrets").await;
    assert!(outcome.starts_with("error "), "{outcome}");

    // B's data is intact and B still reads it.
    assert_eq!(try_sql(&b, "SELECT v FROM secrets").await, "ok 1");

    // Each role carries the mark of the app's database it serves, and a
    // load finding a role marked for another (two names sharing a role
    // name) is refused rather than given that role and its data.
    let mark = |role: &str| {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
        )
        .bind(role.to_owned())
    };
    assert_eq!(
        mark(&role_b).fetch_one(&mut admin).await.unwrap(),
        Some(berth::ports::sql::pg_tenancy::tenant_owner(&name_b, "main"))
    );
    let other = berth::ports::sql::pg_tenancy::tenant_owner("another", "main");
    sqlx::query(&format!("COMMENT ON ROLE \"{role_b}\" IS '{other}'"))
        .execute(&mut admin)
        .await
        .unwrap();
    let refused = tb
        .load_with(&host(&tb))
        .await
        .err()
        .expect("a role marked for another app's database is refused");
    let refused = format!("{refused:#}");
    assert!(
        refused.contains("belongs to another app's database"),
        "{refused}"
    );
    assert_eq!(
        mark(&role_b).fetch_one(&mut admin).await.unwrap(),
        Some(other)
    );

    drop((a, b));
    for role in [role_a, role_b] {
        for statement in [
            format!("DROP SCHEMA IF EXISTS \"{role}\" CASCADE"),
            format!("DROP ROLE IF EXISTS \"{role}\""),
        ] {
            sqlx::query(&statement).execute(&mut admin).await.unwrap();
        }
    }
}

/// Connections per tenant pool: the manifest's `max_connections` sizes the
/// app's pool, the host config's caps it, and a guest past it gets
/// `unavailable` naming the `connections` limit, counted in the metrics.
#[tokio::test(flavor = "multi_thread")]
async fn sql_connection_limit_per_tenant_postgres() {
    let Some(url) = service("BERTH_TEST_POSTGRES_URL") else {
        return;
    };
    let schema = Schema::create(&url).await;
    // (what the manifest asks, what the host allows): a pool of 2 each time.
    for (asked, host_max) in [(2, 4), (50, 2)] {
        let app_name = unique("pglimit");
        let t = TestApp::new(&single_component_manifest(
            &app_name,
            guests::SQL_GUEST,
            &format!("[sql.main]\nmax_connections = {asked}"),
            "sql = [\"main\"]",
        ));
        let host = host_config(
            &t,
            &format!(
                "[sql.main]\ntype = \"postgres\"\nurl = {url:?}\nschema = {:?}\nmax_connections = {host_max}\nconnect_timeout_ms = 500\n",
                schema.name
            ),
        );
        let app = std::sync::Arc::new(t.load_with(&host).await.unwrap());
        // Three guests at once each hold a connection for 2 s.
        let mut runs = tokio::task::JoinSet::new();
        for _ in 0..3 {
            let app = app.clone();
            runs.spawn(async move {
                run(&app, "guest", &["try", "main", "SELECT 1 FROM pg_sleep(2)"])
                    .await
                    .stdout
            });
        }
        let mut outputs = Vec::new();
        while let Some(out) = runs.join_next().await {
            outputs.push(out.unwrap());
        }
        let ok = outputs.iter().filter(|o| o.contains("ok 1")).count();
        let limited = outputs
            .iter()
            .filter(|o| {
                o.contains("Unavailable")
                    && o.contains("limit `connections` reached: all 2 connections")
            })
            .count();
        assert_eq!(
            (ok, limited),
            (2, 1),
            "asked {asked}, host {host_max}: {outputs:?}"
        );
        assert_eq!(
            berth::metrics::METRICS.get(
                "berth_limits_exceeded_total",
                &[("app", &app_name), ("limit", "connections")]
            ),
            1
        );
        // The pool is usable again once connections come back.
        let out = run(&app, "guest", &["try", "main", "SELECT 1"]).await;
        assert!(out.stdout.contains("ok 1"), "{}", out.stdout);
    }
    schema.drop_now().await;
}

/// The total lag of Kafka consumer group `group` on Kafka topic `topic`
/// (created with Berth's default partitions): how many records lie past
/// its committed offsets. `None` while a partition holding records has no
/// commit, or when the broker cannot be asked.
pub(crate) async fn kafka_group_lag(url: &str, group: &str, topic: &str) -> Option<i64> {
    use krafka::admin::ConsumerGroupLagOptions;
    use krafka::consumer::TopicPartition;
    let brokers = url.strip_prefix("kafka://").unwrap_or(url);
    let kafka = krafka::Kafka::builder(brokers).connect().await.ok()?;
    let partitions = (0..berth::ports::messaging::kafka::DEFAULT_PARTITIONS)
        .map(|p| TopicPartition::new(topic, p))
        .collect();
    let options = ConsumerGroupLagOptions::default().partitions(partitions);
    let lags = kafka
        .admin()
        .consumer_group_lag(group, options)
        .await
        .ok()?;
    let mut total = 0;
    for lag in lags.into_values() {
        let lag = lag.ok()?;
        total += match lag.lag {
            Some(lag) => lag,
            None if lag.end_offset == 0 => 0,
            None => return None,
        };
    }
    Some(total)
}
