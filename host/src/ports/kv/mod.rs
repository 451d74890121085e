//! The `kv` port: key-value storage and caching behind logical bucket names.

pub mod host;
pub mod memory;
pub mod redis;
pub mod sqlite;
pub mod wasi;

use std::time::Duration;

use async_trait::async_trait;

/// Why a key-value operation failed, as adapters report it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The logical name is not granted.
    #[error("bucket {0:?} is not granted to this component")]
    NotGranted(String),
    /// Bad key or value.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Stored value is not an integer, or overflow.
    #[error("not a number: {0}")]
    NotANumber(String),
    /// Store unreachable.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// One page of keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPage {
    /// Keys in ascending order.
    pub keys: Vec<String>,
    /// Where the next page starts; `None` at the end.
    pub cursor: Option<String>,
}

/// A logical bucket as served by one store.
///
/// Keys are validated by the glue before they reach an adapter.
#[async_trait]
pub trait KvBackend: Send + Sync {
    /// The value of `key`, unless absent or expired.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    /// Stores `value`, optionally expiring after `ttl`.
    ///
    /// The glue caps a guest's TTL at [`MAX_TTL_MS`]; an adapter must still
    /// not overflow (nor panic) on a longer one, and keeps such a key
    /// for at least that long.
    async fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), KvError>;
    /// Removes `key`; whether it existed.
    async fn delete(&self, key: &str) -> Result<bool, KvError>;
    /// Whether `key` exists.
    async fn exists(&self, key: &str) -> Result<bool, KvError>;
    /// Keys starting with `prefix`, strictly after `after`, at most `limit`.
    async fn list_keys(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage, KvError>;
    /// Adds `delta` to the decimal integer at `key` (absent = 0).
    async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError>;
    /// Sets `key` to `new` if its value equals `expected` (`None` = absent).
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Vec<u8>,
    ) -> Result<bool, KvError>;
}

/// The longest TTL a key can have: 100 years (of 365 days) in milliseconds.
///
/// A guest's longer `ttl-ms` (`u64::MAX` being the natural "forever") is
/// capped to this at the glue, so it means "effectively forever" on every
/// backend: Redis refuses an expiry that overflows its clock (`ERR invalid
/// expire time`), and the in-memory and SQLite adapters add it to the
/// current time, which must not overflow either.
pub const MAX_TTL_MS: u64 = 100 * 365 * 24 * 60 * 60 * 1000;

/// Parses a stored counter exactly as Redis's `INCRBY` does (`string2ll`),
/// so every backend accepts and refuses the same values: an optional `-`,
/// then ASCII digits without a leading zero (but for `0` itself; `-0` is
/// refused), nothing else (no `+`, no whitespace), within `i64`.
pub(crate) fn parse_counter(bytes: &[u8]) -> Option<i64> {
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    let canonical = match digits {
        [] => false,
        // "0", but not "-0".
        [b'0'] => digits.len() == bytes.len(),
        [first, rest @ ..] => (b'1'..=b'9').contains(first) && rest.iter().all(u8::is_ascii_digit),
    };
    if !canonical {
        return None;
    }
    // Only the range is left to check: `parse` refuses what overflows.
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// Parses a stored counter and adds `delta` with overflow checking.
pub(crate) fn add_to_counter(current: Option<&[u8]>, delta: i64) -> Result<i64, KvError> {
    let current = match current {
        None => 0,
        Some(bytes) => parse_counter(bytes).ok_or_else(|| {
            KvError::NotANumber("the stored value is not a decimal 64-bit integer".into())
        })?,
    };
    current
        .checked_add(delta)
        .ok_or_else(|| KvError::NotANumber("increment overflows a 64-bit integer".into()))
}

/// Most expired entries one listing steps over beyond its page before it
/// returns a short page with a cursor, so a run of expired keys cannot hold
/// a store (or the host's memory bucket) for long.
pub(crate) const LIST_BUDGET: usize = 4096;

/// The first byte string after every string that starts with `prefix`,
/// the exclusive upper bound of a prefix's keys in byte order; `None` for
/// the empty prefix, whose keys have no such bound.
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    // Drop trailing 0xFF bytes (never in UTF-8, but any bytes work) and
    // increment the last one left.
    let mut end = prefix.to_vec();
    while end.last() == Some(&0xFF) {
        end.pop();
    }
    let last = end.last_mut()?;
    *last += 1;
    Some(end)
}

/// Builds a page from up to `limit + 1` sorted keys: the extra key only
/// tells that there is more.
pub(crate) fn page_from(mut keys: Vec<String>, limit: usize) -> KeyPage {
    let more = keys.len() > limit;
    keys.truncate(limit);
    let cursor = if more { keys.last().cloned() } else { None };
    KeyPage { keys, cursor }
}

/// A page of at most `limit` live keys from `keys` (sorted, each with
/// whether it is live), stepping over at most [`LIST_BUDGET`] expired
/// ones: past them, a short page (perhaps empty) with a cursor at the last
/// one stepped over, to go on from there.
pub(crate) fn page_of_live(
    keys: impl IntoIterator<Item = (String, bool)>,
    limit: usize,
) -> KeyPage {
    let mut live = Vec::new();
    let mut expired = 0;
    for (key, is_live) in keys {
        if is_live {
            live.push(key);
            if live.len() > limit {
                break;
            }
        } else {
            expired += 1;
            if expired == LIST_BUDGET {
                return KeyPage {
                    keys: live,
                    cursor: Some(key),
                };
            }
        }
    }
    page_from(live, limit)
}

/// How the host serves a logical bucket (`[kv.<name>]` in the host config).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(remote = "Self", rename_all = "kebab-case", deny_unknown_fields)]
pub enum KvConfig {
    /// Embedded SQLite; `path` defaults to `<state>/<app>/kv/<name>.db`.
    Sqlite {
        /// Database file.
        path: Option<std::path::PathBuf>,
    },
    /// In memory, lost on exit. (A struct variant so unknown keys are
    /// rejected: serde ignores them on unit variants of tagged enums.)
    Memory {},
    /// Redis, under a key prefix per app and bucket.
    Redis {
        /// `redis://host:port/db`; a password in it must be a reference.
        url: String,
        /// Prepended to Berth's own `berth:<app>:<bucket>:` prefix.
        prefix: Option<String>,
        /// Connect and response timeout, in ms; default 5000.
        timeout_ms: Option<u64>,
    },
}

crate::config::by_type::deserialize_by_type!(KvConfig);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_parse_as_redis_does() {
        let table: &[(&str, Option<i64>)] = &[
            ("0", Some(0)),
            ("7", Some(7)),
            ("-7", Some(-7)),
            ("10", Some(10)),
            ("-100", Some(-100)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
            ("-9223372036854775809", None),
            ("99999999999999999999", None),
            ("", None),
            ("-", None),
            ("--5", None),
            ("-0", None),
            ("00", None),
            ("007", None),
            ("-07", None),
            ("+5", None),
            ("+0", None),
            (" 5", None),
            ("5 ", None),
            ("5\n", None),
            ("\t5", None),
            ("1_000", None),
            ("1,000", None),
            ("1e3", None),
            ("0x10", None),
            ("5.0", None),
            ("\u{663}", None), // ARABIC-INDIC DIGIT THREE: a digit, not ASCII
        ];
        for (text, want) in table {
            assert_eq!(parse_counter(text.as_bytes()), *want, "{text:?}");
        }
        assert_eq!(parse_counter(&[b'1', 0xff]), None);
        assert_eq!(parse_counter(b"1\0"), None);
    }

    #[test]
    fn counters_add_with_overflow_checks() {
        assert_eq!(add_to_counter(None, -3), Ok(-3));
        assert_eq!(add_to_counter(Some(&b"41"[..]), 1), Ok(42));
        assert_eq!(add_to_counter(Some(&b"-1"[..]), i64::MIN + 1), Ok(i64::MIN));
        assert!(matches!(
            add_to_counter(Some(&b" 41"[..]), 1),
            Err(KvError::NotANumber(_))
        ));
        assert!(matches!(
            add_to_counter(Some(&b"9223372036854775807"[..]), 1),
            Err(KvError::NotANumber(_))
        ));
    }

    #[test]
    fn max_ttl_is_a_century_and_fits_every_clock() {
        assert_eq!(MAX_TTL_MS, 3_153_600_000_000);
        // SQLite stores `now_ms + ttl` in an i64; Redis adds it to its
        // clock in ms as a signed 64-bit integer.
        let now_ms = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap();
        assert!(now_ms.checked_add(MAX_TTL_MS as i64).is_some());
        assert!(
            std::time::Instant::now()
                .checked_add(Duration::from_millis(MAX_TTL_MS))
                .is_some()
        );
    }
}
