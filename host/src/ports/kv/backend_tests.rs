//! Cases every backend must pass alike, called by the memory and SQLite
//! backends' tests (Redis needs its server, so these are not run on it).

use super::{KvBackend, KvError};

/// `increment` takes what Redis's INCRBY takes and nothing else, and a
/// refused increment leaves the value as it was.
pub(super) async fn increment_takes_only_what_redis_takes(b: &dyn KvBackend) {
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
pub(super) async fn lists_keys_holding_nul(b: &dyn KvBackend) {
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
pub(super) async fn a_cursor_before_the_prefix_starts_at_the_prefix(b: &dyn KvBackend) {
    for key in ["a", "b", "p/1", "p/2", "q"] {
        b.set(key, b"x".to_vec(), None).await.unwrap();
    }
    let page = b.list_keys("p/", Some("a"), 10).await.unwrap();
    assert_eq!(page.keys, ["p/1", "p/2"]);
    assert_eq!(page.cursor, None);
    let page = b.list_keys("p/", Some("p/1"), 10).await.unwrap();
    assert_eq!(page.keys, ["p/2"]);
}
