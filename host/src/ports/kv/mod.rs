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

/// Parses a stored counter and adds `delta` with overflow checking.
pub(crate) fn add_to_counter(current: Option<&[u8]>, delta: i64) -> Result<i64, KvError> {
    let current = match current {
        None => 0,
        Some(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .ok_or_else(|| {
                KvError::NotANumber("the stored value is not a decimal integer".into())
            })?,
    };
    current
        .checked_add(delta)
        .ok_or_else(|| KvError::NotANumber("increment overflows a 64-bit integer".into()))
}

/// Builds a page from up to `limit + 1` sorted keys: the extra key only
/// tells that there is more.
pub(crate) fn page_from(mut keys: Vec<String>, limit: usize) -> KeyPage {
    let more = keys.len() > limit;
    keys.truncate(limit);
    let cursor = if more { keys.last().cloned() } else { None };
    KeyPage { keys, cursor }
}

/// How the host serves a logical bucket (`[kv.<name>]` in the host config).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
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
