//! Redis adapter (`redis` crate, connection manager): one logical bucket is
//! a key prefix chosen by the host. TTLs are Redis expiries, `increment` is
//! `INCRBY`, compare-and-swap is a Lua script (atomic on the server).
//!
//! Listing reads a sorted-set index of the bucket's keys (`<base>#keys`,
//! every member scored 0 so `ZRANGEBYLEX` walks them in byte order), never
//! the keyspace: a page costs O(log n + page) however many keys the server
//! holds, where a `SCAN` walks the whole database for every page. Writes
//! keep the index in step inside the same Lua script, so a key and its
//! index entry never disagree. Expiring keys are also scored by their
//! expiry (ms since the epoch, by the server's clock) in `<base>#expiry`:
//! listings skip the expired ones, and every write and listing removes a
//! bounded number of them from both sets, so a cache of short-lived keys
//! does not grow the index for ever. A listing also drops members whose
//! key is gone in a way the index did not see (evicted, deleted by hand).
//! Keys a bucket held before it had an index are indexed once, when the
//! host starts (`<base>#indexed` marks a bucket done).

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{KeyPage, KvBackend, KvError, MAX_TTL_MS, page_from};
use crate::secret::Secret;

/// Helpers every script starts with: the server's clock in ms, and the
/// bounded removal of expired keys from both index sets. A key is alive
/// while its expiry is not before now, as Redis counts it.
const LUA_PRELUDE: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function sweep(keys_set, expiry_set, now, n)
  local gone = redis.call('ZRANGEBYSCORE', expiry_set, '-inf', '(' .. string.format('%.0f', now), 'LIMIT', 0, n)
  if #gone > 0 then
    redis.call('ZREM', keys_set, unpack(gone))
    redis.call('ZREM', expiry_set, unpack(gone))
  end
end
"#;

/// `SET`, indexed. KEYS: the key, the key set, the expiry set. ARGV: the
/// bucket's key, the value, the TTL in ms or "" for none.
const SET_SCRIPT: &str = r#"
local now = now_ms()
if ARGV[3] == '' then
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('ZREM', KEYS[3], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('ZADD', KEYS[3], string.format('%.0f', now + tonumber(ARGV[3])), ARGV[1])
end
redis.call('ZADD', KEYS[2], 0, ARGV[1])
sweep(KEYS[2], KEYS[3], now, 16)
return 1
"#;

/// `DEL`, indexed: how many keys were deleted. KEYS and ARGV[1] as for
/// [`SET_SCRIPT`].
const DELETE_SCRIPT: &str = r#"
local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
sweep(KEYS[2], KEYS[3], now_ms(), 16)
return n
"#;

/// `INCRBY`, indexed: the new value as stored (text: a Lua number is a
/// double, which cannot carry every 64-bit integer), or INCRBY's own error
/// (which the adapter maps to `not-a-number`). ARGV[2] is the delta. A key INCRBY
/// made (or that had expired) has no TTL, so it leaves the expiry set.
const INCREMENT_SCRIPT: &str = r#"
local v = redis.pcall('INCRBY', KEYS[1], ARGV[2])
if type(v) == 'table' and v.err then return v end
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('ZREM', KEYS[3], ARGV[1]) end
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return redis.call('GET', KEYS[1])
"#;

/// Atomic compare-and-swap, indexed: ARGV[2] is "1" when a current value
/// is expected (ARGV[3]), "0" when the key must be absent; ARGV[4] is the
/// new value, which (as `SET` does) has no TTL.
const CAS_SCRIPT: &str = r#"
local current = redis.call('GET', KEYS[1])
if (ARGV[2] == '0' and current == false) or (ARGV[2] == '1' and current == ARGV[3]) then
  redis.call('SET', KEYS[1], ARGV[4])
  redis.call('ZADD', KEYS[2], 0, ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  return 1
end
return 0
"#;

/// One page of the key set. KEYS: the key set, the expiry set. ARGV: the
/// `ZRANGEBYLEX` bounds, how many keys are wanted, how many members may be
/// looked at (the budget bounds the time the script holds the server) and
/// the bucket's key prefix. A member whose key has expired, or is gone in
/// a way the index did not see (evicted, deleted by hand, `FLUSHDB`), is
/// skipped and removed from both sets. Answers "" then the keys when the
/// range ended or enough keys were found; otherwise the last member looked
/// at (where the next page starts) then the keys found so far.
const LIST_SCRIPT: &str = r#"
local now = now_ms()
sweep(KEYS[1], KEYS[2], now, 256)
local want = tonumber(ARGV[3])
local budget = tonumber(ARGV[4])
local min = ARGV[1]
local out = {''}
local count = 0
while count < want do
  if budget <= 0 then
    out[1] = string.sub(min, 2)
    return out
  end
  local batch = redis.call('ZRANGEBYLEX', KEYS[1], min, ARGV[2], 'LIMIT', 0, math.min(budget, want - count))
  if #batch == 0 then return out end
  budget = budget - #batch
  for _, m in ipairs(batch) do
    local expires = redis.call('ZSCORE', KEYS[2], m)
    local alive = expires == false or tonumber(expires) >= now
    if alive and redis.call('EXISTS', ARGV[5] .. m) == 1 then
      count = count + 1
      out[count + 1] = m
    else
      redis.call('ZREM', KEYS[1], m)
      redis.call('ZREM', KEYS[2], m)
    end
  end
  min = '(' .. batch[#batch]
end
return out
"#;

/// Indexes keys stored before the bucket had an index. KEYS: the key set,
/// the expiry set, then the keys; ARGV: the bucket's names of those keys.
const INDEX_SCRIPT: &str = r#"
local now = now_ms()
for i = 3, #KEYS do
  local ttl = redis.call('PTTL', KEYS[i])
  if ttl ~= -2 then
    redis.call('ZADD', KEYS[1], 0, ARGV[i - 2])
    if ttl >= 0 then
      redis.call('ZADD', KEYS[2], string.format('%.0f', now + ttl), ARGV[i - 2])
    end
  end
end
return 1
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
    index: Index,
    scripts: Scripts,
}

/// The Redis keys of a bucket's index. They sit beside the prefix, not
/// under it (`berth:app:cache#keys` beside `berth:app:cache:<key>`), so no
/// key of this bucket or of another can be one of them: the names before
/// them have no `#`.
struct Index {
    /// Every key of the bucket, scored 0 (byte order).
    keys: String,
    /// The keys that expire, scored by their expiry in ms since the epoch.
    expiry: String,
    /// Set once the keys stored before the index existed are indexed.
    done: String,
}

impl Index {
    fn of(prefix: &str) -> Index {
        let base = prefix.strip_suffix(':').unwrap_or(prefix);
        Index {
            keys: format!("{base}#keys"),
            expiry: format!("{base}#expiry"),
            done: format!("{base}#indexed"),
        }
    }
}

/// The adapter's Lua scripts, each with [`LUA_PRELUDE`].
struct Scripts {
    set: redis::Script,
    delete: redis::Script,
    increment: redis::Script,
    cas: redis::Script,
    list: redis::Script,
    index: redis::Script,
}

impl Scripts {
    fn new() -> Scripts {
        let script = |body: &str| redis::Script::new(&format!("{LUA_PRELUDE}{body}"));
        Scripts {
            set: script(SET_SCRIPT),
            delete: script(DELETE_SCRIPT),
            increment: script(INCREMENT_SCRIPT),
            cas: script(CAS_SCRIPT),
            list: script(LIST_SCRIPT),
            index: script(INDEX_SCRIPT),
        }
    }
}

/// The `ZRANGEBYLEX` bounds of the keys that start with `prefix` and come
/// after `after`.
fn lex_range(prefix: &str, after: Option<&str>) -> (Vec<u8>, Vec<u8>) {
    let min = match after {
        Some(after) if after >= prefix => [b"(", after.as_bytes()].concat(),
        _ if prefix.is_empty() => b"-".to_vec(),
        _ => [b"[", prefix.as_bytes()].concat(),
    };
    let max = match super::prefix_end(prefix.as_bytes()) {
        Some(end) => [b"(", end.as_slice()].concat(),
        None => b"+".to_vec(),
    };
    (min, max)
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
            index: Index::of(&s.prefix),
            scripts: Scripts::new(),
        })
    }

    /// A dry run's look at the bucket's keys, changing nothing: reads
    /// the index's keys, so a user whose ACL key pattern leaves the
    /// bucket out (`NOPERM`) fails the check as it would fail a load.
    pub async fn check_keys_readable(&self) -> Result<(), KvError> {
        let mut conn = self.conn.clone();
        redis::cmd("EXISTS")
            .arg(&self.index.done)
            .arg(&self.index.keys)
            .arg(&self.index.expiry)
            .query_async::<u64>(&mut conn)
            .await
            .map(drop)
            .map_err(map)
    }

    /// Indexes the keys the bucket held before it had an index (stored by
    /// an earlier Berth), once per bucket: a `SCAN` of the prefix, at
    /// startup. Later writes keep the index themselves.
    pub async fn index_existing_keys(&self) -> Result<(), KvError> {
        let mut conn = self.conn.clone();
        let done: bool = redis::cmd("EXISTS")
            .arg(&self.index.done)
            .query_async(&mut conn)
            .await
            .map_err(map)?;
        if done {
            return Ok(());
        }
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(map)?;
            let mut invocation = self.scripts.index.key(&self.index.keys);
            invocation.key(&self.index.expiry);
            for key in &batch {
                // A name another tool stored under the prefix that no guest
                // could have set (not UTF-8, or empty) would fail every
                // listing page that reached it: it is left out of the index.
                if let Some(name) = key.strip_prefix(self.prefix.as_bytes())
                    && !name.is_empty()
                    && std::str::from_utf8(name).is_ok()
                {
                    invocation.key(key).arg(name);
                }
            }
            if !batch.is_empty() {
                invocation
                    .invoke_async::<()>(&mut conn)
                    .await
                    .map_err(map)?;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        redis::cmd("SET")
            .arg(&self.index.done)
            .arg(1)
            .query_async::<()>(&mut conn)
            .await
            .map_err(map)
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

    /// Gives back a claim of [`Self::claim`]: deletes `key` if it still
    /// holds `value` (this caller's claim, not one made since it expired).
    pub async fn release_claim(&self, key: &str, value: &str) -> Result<(), KvError> {
        static RELEASE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            )
        });
        RELEASE
            .key(self.key(key))
            .arg(value)
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map(drop)
            .map_err(map)
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// A call of a script that writes `key`: KEYS are the key, the key set
    /// and the expiry set; ARGV[1] is the bucket's name of the key.
    fn indexed<'a>(&self, script: &'a redis::Script, key: &str) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.key(self.key(key));
        invocation
            .key(&self.index.keys)
            .key(&self.index.expiry)
            .arg(key);
        invocation
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
        let mut invocation = self.indexed(&self.scripts.set, key);
        invocation
            .arg(value)
            .arg(ttl.map(|ttl| px(ttl).to_string()).unwrap_or_default());
        invocation
            .invoke_async::<()>(&mut self.conn.clone())
            .await
            .map_err(map)
    }

    async fn delete(&self, key: &str) -> Result<bool, KvError> {
        let n: i64 = self
            .indexed(&self.scripts.delete, key)
            .invoke_async(&mut self.conn.clone())
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
        let (min, max) = lex_range(prefix, after);
        let want = limit.saturating_add(1);
        let mut answer: Vec<String> = self
            .scripts
            .list
            .key(&self.index.keys)
            .key(&self.index.expiry)
            .arg(min)
            .arg(max)
            .arg(want)
            .arg(super::LIST_BUDGET.saturating_add(want))
            .arg(&self.prefix)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(map)?;
        if answer.is_empty() {
            return Err(KvError::Other("the store answered a listing oddly".into()));
        }
        let stopped_at = answer.remove(0);
        if stopped_at.is_empty() {
            return Ok(page_from(answer, limit));
        }
        // The budget ran out among expired keys: a short page that
        // continues after the last key looked at.
        Ok(KeyPage {
            keys: answer,
            cursor: Some(stopped_at),
        })
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        let mut invocation = self.indexed(&self.scripts.increment, key);
        invocation.arg(delta);
        // The script answers the stored text, not INCRBY's answer: through
        // Lua that is a double, and 2^63 - 1 came back as -2^63.
        let stored: String = invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(map)?;
        stored
            .parse()
            .map_err(|_| KvError::Other(format!("Redis stored {stored:?} for an increment")))
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Vec<u8>,
    ) -> Result<bool, KvError> {
        let mut invocation = self.indexed(&self.scripts.cas, key);
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
#[path = "redis_tests.rs"]
mod tests;
