//! Cases every kv backend must pass alike, the same calls on each: the
//! memory and SQLite buckets and Redis (whose behaviour the others copy).

use berth::ports::kv::memory::MemoryBucket;
use berth::ports::kv::redis::{RedisBucket, RedisSettings};
use berth::ports::kv::sqlite::SqliteBucket;
use berth::ports::kv::{KvBackend, KvError};
use berth_tests::{service, unique};

/// Runs every case, each on a fresh bucket from `bucket`.
async fn every_case<B: KvBackend>(mut bucket: impl AsyncFnMut() -> B) {
    increment_takes_only_what_redis_takes(&bucket().await).await;
    lists_keys_holding_nul(&bucket().await).await;
    a_cursor_before_the_prefix_starts_at_the_prefix(&bucket().await).await;
}

#[tokio::test]
async fn kv_backend_cases_memory() {
    every_case(async || MemoryBucket::new()).await;
}

#[tokio::test]
async fn kv_backend_cases_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    every_case(async || {
        n += 1;
        SqliteBucket::open(&dir.path().join(format!("kv{n}.db"))).unwrap()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kv_backend_cases_redis() {
    let Some(url) = service("BERTH_TEST_REDIS_URL") else {
        return;
    };
    let prefix = unique("kvcases");
    let mut n = 0;
    every_case(async || {
        n += 1;
        RedisBucket::connect(&RedisSettings {
            url: berth::secret::Secret::new(url.clone()),
            prefix: format!("{prefix}:{n}:"),
            timeout: std::time::Duration::from_secs(5),
        })
        .await
        .unwrap()
    })
    .await;
    berth_tests::redis_delete_prefix(&url, &prefix).await;
}

/// Keys another tool stored under a bucket's prefix before the bucket had
/// its index are indexed at startup, but not a name no guest could have
/// set (not UTF-8): listing it would fail every page that reached it.
#[tokio::test(flavor = "multi_thread")]
async fn kv_foreign_names_do_not_break_listing_redis() {
    let Some(url) = service("BERTH_TEST_REDIS_URL") else {
        return;
    };
    let prefix = format!("{}:", unique("kvforeign"));
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let not_utf8 = [prefix.as_bytes(), b"\xff\xfe"].concat();
    for (key, value) in [
        (not_utf8.clone(), "x"),
        (format!("{prefix}plain").into_bytes(), "y"),
    ] {
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
    let bucket = RedisBucket::connect(&RedisSettings {
        url: berth::secret::Secret::new(url.clone()),
        prefix: prefix.clone(),
        timeout: std::time::Duration::from_secs(5),
    })
    .await
    .unwrap();
    bucket.index_existing_keys().await.unwrap();
    let page = bucket.list_keys("", None, 10).await.unwrap();
    assert_eq!(page.keys, vec!["plain".to_string()]);
    assert_eq!(page.cursor, None);
    redis::cmd("DEL")
        .arg(&not_utf8)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    berth_tests::redis_delete_prefix(&url, &prefix).await;
}

/// `increment` takes what Redis's INCRBY takes and nothing else, and a
/// refused increment leaves the value as it was.
async fn increment_takes_only_what_redis_takes(b: &dyn KvBackend) {
    for bad in [
        " 5",
        "5 ",
        "+5",
        "007",
        "-0",
        "",
        "-",
        "1e3",
        "9223372036854775808",
    ] {
        b.set("n", bad.as_bytes().to_vec(), None).await.unwrap();
        assert!(
            matches!(b.increment("n", 1).await, Err(KvError::NotANumber(_))),
            "{bad:?}"
        );
        // A refused increment leaves the value as it was.
        assert_eq!(
            b.get("n").await.unwrap(),
            Some(bad.as_bytes().to_vec()),
            "{bad:?}"
        );
    }
    for (good, next) in [("0", 1), ("-5", -4), ("9223372036854775806", i64::MAX)] {
        b.set("n", good.as_bytes().to_vec(), None).await.unwrap();
        assert_eq!(b.increment("n", 1).await.unwrap(), next, "{good:?}");
        assert_eq!(
            b.get("n").await.unwrap(),
            Some(next.to_string().into_bytes())
        );
    }
    assert!(matches!(
        b.increment("n", 1).await,
        Err(KvError::NotANumber(_))
    ));
}

/// Prefixes holding NUL list exactly the keys that start with them, page
/// by page.
async fn lists_keys_holding_nul(b: &dyn KvBackend) {
    for k in ["ab", "a\0c", "a", "a\0b", "b\0"] {
        b.set(k, b"x".to_vec(), None).await.unwrap();
    }
    assert_eq!(b.get("a\0b").await.unwrap(), Some(b"x".to_vec()));
    let page = b.list_keys("a\0", None, 10).await.unwrap();
    assert_eq!(page.keys, ["a\0b", "a\0c"]);
    let page = b.list_keys("a", None, 10).await.unwrap();
    assert_eq!(page.keys, ["a", "a\0b", "a\0c", "ab"]);
    let page = b.list_keys("b\0", None, 10).await.unwrap();
    assert_eq!(page.keys, ["b\0"]);
    let page = b.list_keys("", None, 10).await.unwrap();
    assert_eq!(page.keys, ["a", "a\0b", "a\0c", "ab", "b\0"]);
    let first = b.list_keys("a\0", None, 1).await.unwrap();
    assert_eq!(first.keys, ["a\0b"]);
    let second = b
        .list_keys("a\0", first.cursor.as_deref(), 1)
        .await
        .unwrap();
    assert_eq!(second.keys, ["a\0c"]);
    assert_eq!(second.cursor, None);
}

/// A cursor sorting before the prefix lists the prefix's keys from their
/// start, and nothing outside the prefix (`p/` after `a`, before `q`).
async fn a_cursor_before_the_prefix_starts_at_the_prefix(b: &dyn KvBackend) {
    for key in ["a", "b", "p/1", "p/2", "q"] {
        b.set(key, b"x".to_vec(), None).await.unwrap();
    }
    let page = b.list_keys("p/", Some("a"), 10).await.unwrap();
    assert_eq!(page.keys, ["p/1", "p/2"]);
    assert_eq!(page.cursor, None);
    let page = b.list_keys("p/", Some("p/1"), 10).await.unwrap();
    assert_eq!(page.keys, ["p/2"]);
}
