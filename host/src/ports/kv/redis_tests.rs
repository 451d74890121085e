//! Tests of the Redis adapter that need no server.

#[test]
fn a_server_that_cannot_serve_now_is_unavailable() {
    use super::{KvError, map};
    let known = [
        (redis::ErrorKind::ReadOnly, "READONLY"),
        (redis::ErrorKind::BusyLoadingError, "LOADING"),
        (redis::ErrorKind::MasterDown, "MASTERDOWN"),
    ]
    .map(|(kind, code)| (redis::RedisError::from((kind, "server error")), code));
    // Codes the crate has no kind for, as it parses `-OOM …` replies.
    let extension = ["OOM", "BUSY"].map(|code| {
        let error = redis::make_extension_error(code.into(), Some("detail".into()));
        (error, code)
    });
    for (error, code) in known.into_iter().chain(extension) {
        let mapped = map(error);
        assert!(
            matches!(&mapped, KvError::Unavailable(m) if m.contains(code)),
            "{code}: {mapped:?}"
        );
    }
    let wrong_type = redis::make_extension_error("WRONGTYPE".into(), None);
    assert!(matches!(map(wrong_type), KvError::Other(_)));
}

#[test]
fn listing_bounds_cover_the_prefix_after_the_cursor() {
    let range = |p, a| {
        let (min, max) = super::lex_range(p, a);
        (
            String::from_utf8(min).unwrap(),
            String::from_utf8(max).unwrap(),
        )
    };
    let own = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(range("", None), own("-", "+"));
    assert_eq!(range("a", None), own("[a", "(b"));
    assert_eq!(range("a", Some("ab")), own("(ab", "(b"));
    assert_eq!(range("a", Some("a")), own("(a", "(b"));
    // A cursor before the prefix starts at the prefix.
    assert_eq!(range("b", Some("a")), own("[b", "(c"));
    assert_eq!(range("", Some("x")), own("(x", "+"));
    // Byte order: the last byte of "é" (C3 A9) is incremented.
    assert_eq!(range("é", None), own("[é", "(\u{ea}"));
}

#[test]
fn index_keys_sit_beside_the_prefix() {
    let index = super::Index::of("p:berth:app:cache:");
    assert_eq!(index.keys, "p:berth:app:cache#keys");
    assert_eq!(index.expiry, "p:berth:app:cache#expiry");
    assert_eq!(index.done, "p:berth:app:cache#indexed");
}

#[test]
fn glob_characters_are_escaped() {
    assert_eq!(super::glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
}

#[test]
fn px_stays_within_what_redis_takes() {
    use std::time::Duration;
    assert_eq!(super::px(Duration::ZERO), 1);
    assert_eq!(super::px(Duration::from_micros(10)), 1);
    assert_eq!(super::px(Duration::from_millis(1_500)), 1_500);
    assert_eq!(super::px(Duration::MAX), super::MAX_TTL_MS);
}
