//! Redis adapter (`redis` crate, connection manager): one logical bucket is
//! a key prefix chosen by the host. TTLs are Redis expiries, `increment` is
//! `INCRBY`, compare-and-swap is a Lua script (atomic on the server), and
//! listing walks the prefix with `SCAN` (never `KEYS`), keeping only the
//! smallest keys after the cursor, so pages come in ascending order as the
//! port promises and a listing holds one page in memory.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{KeyPage, KvBackend, KvError, MAX_TTL_MS, page_from};
use crate::secret::Secret;

/// Atomic compare-and-swap: ARGV[1] is "1" when a current value is
/// expected (ARGV[2]), "0" when the key must be absent.
const CAS_SCRIPT: &str = r#"
local current = redis.call('GET', KEYS[1])
if (ARGV[1] == '0' and current == false) or (ARGV[1] == '1' and current == ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[3])
  return 1
end
return 0
"#;

/// Settings of a Redis bucket.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://host:port/db` (may carry a password).
    pub url: Secret,
    /// Prefix of every key of the bucket.
    pub prefix: String,
    /// Connect and response timeout.
    pub timeout: Duration,
}

/// A bucket stored under a key prefix in Redis.
pub struct RedisBucket {
    conn: ConnectionManager,
    prefix: String,
    cas: redis::Script,
}

impl std::fmt::Debug for RedisBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection's URL may hold a password: only the prefix.
        f.debug_struct("RedisBucket")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Redis error codes after which the same command may succeed later.
const RETRIABLE_CODES: &[&str] = &[
    "READONLY",
    "LOADING",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "BUSY",
    "OOM",
];

fn map(e: redis::RedisError) -> KvError {
    if e.kind() == redis::ErrorKind::AuthenticationFailed
        || e.code() == Some("WRONGPASS")
        || e.code() == Some("NOAUTH")
    {
        return KvError::Unavailable("the store refused the credentials".into());
    }
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return KvError::Unavailable("cannot reach the store".into());
    }
    // The server is there but cannot serve now: a replica after a failover
    // (`READONLY`), loading its data, a script running, out of memory.
    if e.code().is_some_and(|code| RETRIABLE_CODES.contains(&code)) {
        return KvError::Unavailable(format!(
            "the store cannot serve now ({})",
            e.code().unwrap_or_default()
        ));
    }
    let detail = e.detail().unwrap_or_default().to_string();
    if e.code() == Some("ERR") && (detail.contains("not an integer") || detail.contains("overflow"))
    {
        return KvError::NotANumber(
            "the stored value is not a decimal 64-bit integer, or the increment overflows".into(),
        );
    }
    KvError::Other(format!("store error {}", e.code().unwrap_or("")))
}

/// The `PX` argument for `ttl`: at least 1 (Redis refuses 0), at most
/// [`MAX_TTL_MS`], as the glue caps a guest's TTL. Redis adds `PX` to its
/// clock and answers `ERR invalid expire time` when that overflows, so
/// `i64::MAX` is no "forever" there.
fn px(ttl: Duration) -> u64 {
    // The clamped value fits in a u64.
    ttl.as_millis().clamp(1, u128::from(MAX_TTL_MS)) as u64
}

/// Escapes the glob characters of `s` for `SCAN MATCH`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl RedisBucket {
    /// Connects and pings, so a wrong URL fails at startup.
    pub async fn connect(s: &RedisSettings) -> Result<RedisBucket, KvError> {
        let client = redis::Client::open(s.url.expose())
            .map_err(|_| KvError::InvalidInput("the Redis URL is malformed".into()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(s.timeout)
            .set_response_timeout(s.timeout)
            .set_number_of_retries(2);
        // Probe once with a plain connection under one deadline: the
        // connection manager retries failed handshakes (a wrong password)
        // with backoff for minutes, which startup must not wait out.
        let probe = async {
            let mut c = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut c).await
        };
        tokio::time::timeout(s.timeout, probe)
            .await
            .map_err(|_| KvError::Unavailable("the store did not answer in time".into()))?
            .map_err(map)?;
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(map)?;
        Ok(RedisBucket {
            conn,
            prefix: s.prefix.clone(),
            cas: redis::Script::new(CAS_SCRIPT),
        })
    }

    /// Sets `key` to `value` for `ttl` unless it exists (`SET NX PX`):
    /// whether this call set it. Several hosts claiming one key get one
    /// `true` between them.
    pub async fn claim(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, KvError> {
        let set: Option<String> = redis::cmd("SET")
            .arg(self.key(key))
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(px(ttl))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(map)?;
        Ok(set.is_some())
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[async_trait]
impl KvBackend for RedisBucket {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        redis::cmd("GET")
            .arg(self.key(key))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(map)
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), KvError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(px(ttl));
        }
        cmd.query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(map)
    }

    async fn delete(&self, key: &str) -> Result<bool, KvError> {
        let n: i64 = redis::cmd("DEL")
            .arg(self.key(key))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(map)?;
        Ok(n > 0)
    }

    async fn exists(&self, key: &str) -> Result<bool, KvError> {
        let n: i64 = redis::cmd("EXISTS")
            .arg(self.key(key))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(map)?;
        Ok(n > 0)
    }

    async fn list_keys(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage, KvError> {
        let pattern = format!("{}*", glob_escape(&self.key(prefix)));
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        // Only the page (and one more key, to tell whether another page
        // follows) is held: the smallest keys after the cursor, however many
        // keys the prefix has.
        let mut keys = std::collections::BTreeSet::new();
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(map)?;
            for key in batch {
                let Some(key) = key.strip_prefix(&self.prefix) else {
                    continue;
                };
                if after.is_some_and(|a| key <= a) {
                    continue;
                }
                // SCAN may return a key twice; the set keeps it once.
                keys.insert(key.to_string());
                if keys.len() > limit.saturating_add(1) {
                    keys.pop_last();
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        Ok(page_from(keys.into_iter().collect(), limit))
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        redis::cmd("INCRBY")
            .arg(self.key(key))
            .arg(delta)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(map)
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Vec<u8>,
    ) -> Result<bool, KvError> {
        let mut invocation = self.cas.key(self.key(key));
        invocation
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or_default())
            .arg(new);
        let swapped: i64 = invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(map)?;
        Ok(swapped == 1)
    }
}

#[cfg(test)]
mod tests {
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
}
