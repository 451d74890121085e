//! Embedded key-value adapter: one SQLite file per bucket, durable across
//! restarts. Expired rows are ignored on read and purged on write.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{OptionalExtension, params};

use super::{KeyPage, KvBackend, KvError, MAX_TTL_MS, add_to_counter};
use crate::ports::sql::SqlError;
use crate::ports::sql::sqlite::SqlitePool;

/// A bucket stored in a SQLite file.
pub struct SqliteBucket {
    pool: Arc<SqlitePool>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn map(e: SqlError) -> KvError {
    match e {
        SqlError::Unavailable(m) | SqlError::Conflict(m) => KvError::Unavailable(m),
        // The bucket's file at its bound (`[app_limits] store_mb`), as an
        // in-memory bucket past `kv_memory_mb` is.
        SqlError::TooLarge(m) => KvError::InvalidInput(m),
        other => KvError::Other(other.to_string()),
    }
}

fn sql(e: rusqlite::Error) -> SqlError {
    crate::ports::sql::sqlite::map_error(e)
}

const LIVE: &str = "(expires_at IS NULL OR expires_at > ?2)";

/// A listing page: keys starting with the bytes `?1` (and, as TEXT, `>= ?5`
/// and `< ?6`, the prefix's range in the key index), after `?3`, at most
/// `?4`, each with whether it is live at `?2`. Expired keys are read and
/// stepped over in Rust ([`super::page_of_live`]): filtered in SQL, every
/// expired key of the range would be read before the `LIMIT` counts.
fn list_sql() -> String {
    format!(
        "SELECT key, {LIVE} FROM kv WHERE substr(CAST(key AS BLOB), 1, length(?1)) = ?1 AND key >= ?5 AND key < ?6 AND key > ?3 ORDER BY key LIMIT ?4"
    )
}

/// Most expired rows one write purges: a million keys expiring at once
/// would otherwise hold the write lock, and every other writer, for
/// seconds.
const EXPIRED_PER_WRITE: i64 = 256;

impl SqliteBucket {
    /// Opens (creating) the bucket file at `path`.
    pub fn open(path: &Path) -> Result<SqliteBucket, KvError> {
        SqliteBucket::open_bounded(path, None)
    }

    /// [`SqliteBucket::open`], the file bounded to `max_bytes`
    /// (`[app_limits] store_mb`; a `set` past it is `invalid-input`).
    pub fn open_bounded(path: &Path, max_bytes: Option<u64>) -> Result<SqliteBucket, KvError> {
        let timeouts = crate::ports::sql::sqlite::SqliteTimeouts::default();
        let pool = SqlitePool::open_with(path, timeouts, max_bytes).map_err(map)?;
        let conn = rusqlite::Connection::open(path).map_err(|e| map(sql(e)))?;
        // Waits for another process's write rather than failing at once.
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| map(sql(e)))?;
        conn.execute_batch(
            // The index serves the removal of expired keys on every `set`,
            // which would otherwise read the whole table.
            "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at INTEGER);
             CREATE INDEX IF NOT EXISTS kv_expires_at ON kv (expires_at) WHERE expires_at IS NOT NULL;",
        )
        .map_err(|e| map(sql(e)))?;
        Ok(SqliteBucket { pool })
    }

    /// Runs `f` with a pooled connection on the blocking pool.
    async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> Result<R, KvError> + Send + 'static,
    ) -> Result<R, KvError> {
        self.pool.with_conn(move |c| Ok(f(c))).await.map_err(map)?
    }
}

fn get_live(c: &rusqlite::Connection, key: &str) -> Result<Option<Vec<u8>>, KvError> {
    c.query_row(
        &format!("SELECT value FROM kv WHERE key = ?1 AND {LIVE}"),
        params![key, now_ms()],
        |r| r.get::<_, Vec<u8>>(0),
    )
    .optional()
    .map_err(|e| map(sql(e)))
}

fn put(
    c: &rusqlite::Connection,
    key: &str,
    value: &[u8],
    expires: Option<i64>,
) -> Result<(), KvError> {
    c.execute(
        "INSERT INTO kv(key, value, expires_at) VALUES (?1, ?2, ?3) ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
        params![key, value, expires],
    )
    .map(drop)
    .map_err(|e| map(crate::ports::sql::sqlite::map_error_on(c, e)))
}

/// Runs `f` in an immediate transaction so read-modify-write is atomic
/// across connections.
fn atomically<R>(
    c: &mut rusqlite::Connection,
    f: impl FnOnce(&rusqlite::Connection) -> Result<R, KvError>,
) -> Result<R, KvError> {
    let tx = c
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| map(sql(e)))?;
    let r = f(&tx)?;
    tx.commit().map_err(|e| map(sql(e)))?;
    Ok(r)
}

#[async_trait]
impl KvBackend for SqliteBucket {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let key = key.to_string();
        self.run(move |c| get_live(c, &key)).await
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), KvError> {
        let key = key.to_string();
        // Capped as the glue caps a guest's TTL, so the sum cannot overflow
        // (saturating all the same).
        let expires =
            ttl.map(|t| now_ms().saturating_add(t.as_millis().min(u128::from(MAX_TTL_MS)) as i64));
        self.run(move |c| {
            c.execute(
                "DELETE FROM kv WHERE rowid IN (SELECT rowid FROM kv WHERE expires_at <= ?1 LIMIT ?2)",
                params![now_ms(), EXPIRED_PER_WRITE],
            )
            .map_err(|e| map(sql(e)))?;
            put(c, &key, &value, expires)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool, KvError> {
        let key = key.to_string();
        // One statement: an expired entry goes too, and a failure (a full
        // disk) leaves the key as it was rather than deleted under an error.
        self.run(move |c| {
            let live: Option<bool> = c
                .query_row(
                    &format!("DELETE FROM kv WHERE key = ?1 RETURNING {LIVE}"),
                    params![key, now_ms()],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| map(sql(e)))?;
            Ok(live == Some(true))
        })
        .await
    }

    async fn exists(&self, key: &str) -> Result<bool, KvError> {
        Ok(self.get(key).await?.is_some())
    }

    async fn list_keys(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage, KvError> {
        let prefix = prefix.to_string();
        let after = after.unwrap_or("").to_string();
        self.run(move |c| {
            // The prefix test is on bytes: the key cast to a BLOB against
            // the prefix bound as one (?1). On TEXT, length() and substr()
            // stop at the first NUL, so a prefix holding one ("a\0") would
            // match nothing; LIKE would treat `%`/`_` as wildcards and fold
            // case. `key >= ?5` and `key < ?6` (TEXT, which compares with
            // memcmp as the BLOB does) let the key index read the prefix's
            // range only: without the upper bound, a page that is not full
            // would read every key sorting after the prefix.
            let mut stmt = c.prepare(&list_sql()).map_err(|e| map(sql(e)))?;
            let end = super::prefix_end(prefix.as_bytes());
            let end = ToSqlOutput::Borrowed(match &end {
                // The bound may not be UTF-8; SQLite compares TEXT as bytes.
                Some(end) => ValueRef::Text(end),
                // Every BLOB sorts after every TEXT.
                None => ValueRef::Blob(&[]),
            });
            let keys = stmt
                .query_map(
                    params![
                        prefix.as_bytes(),
                        now_ms(),
                        after,
                        (limit + 1 + super::LIST_BUDGET) as i64,
                        prefix,
                        end
                    ],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?)),
                )
                .map_err(|e| map(sql(e)))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| map(sql(e)))?;
            Ok(super::page_of_live(keys, limit))
        })
        .await
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        let key = key.to_string();
        self.run(move |c| {
            atomically(c, |tx| {
                let current = get_live(tx, &key)?;
                let next = add_to_counter(current.as_deref(), delta)?;
                let expires: Option<i64> = tx
                    .query_row(
                        "SELECT expires_at FROM kv WHERE key = ?1",
                        params![key],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(|e| map(sql(e)))?
                    .flatten();
                put(
                    tx,
                    &key,
                    next.to_string().as_bytes(),
                    if current.is_some() { expires } else { None },
                )?;
                Ok(next)
            })
        })
        .await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Vec<u8>,
    ) -> Result<bool, KvError> {
        let key = key.to_string();
        let expected = expected.map(<[u8]>::to_vec);
        self.run(move |c| {
            atomically(c, |tx| {
                if get_live(tx, &key)? != expected {
                    return Ok(false);
                }
                put(tx, &key, &new, None)?;
                Ok(true)
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bucket whose file reached `[app_limits] store_mb` refuses the
    /// `set` that would grow it as `invalid-input` naming the setting (as
    /// an in-memory bucket past its budget does) and keeps what it holds.
    #[tokio::test]
    async fn a_bounded_bucket_refuses_to_grow_past_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let b = SqliteBucket::open_bounded(&dir.path().join("b.db"), Some(128 << 10)).unwrap();
        let mut written = 0;
        let err = loop {
            match b.set(&format!("k{written}"), vec![1; 8 << 10], None).await {
                Ok(()) => written += 1,
                Err(e) => break e,
            }
            assert!(written < 100, "800 KiB written into a 128 KiB bucket");
        };
        let KvError::InvalidInput(m) = &err else {
            panic!("{err:?}");
        };
        assert!(m.contains("store_mb"), "{m}");
        assert!(written >= 4, "room for {written} values only");
        assert_eq!(b.get("k0").await.unwrap(), Some(vec![1; 8 << 10]));
        assert!(b.delete("k0").await.unwrap(), "deletes go on at the bound");
        b.set("again", vec![2; 1 << 10], None).await.unwrap();
    }

    /// A page reads the prefix's range of the key index only, not every
    /// key sorting after the prefix.
    #[test]
    fn listing_reads_only_the_prefix_range() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        drop(SqliteBucket::open(&path).unwrap());
        let c = rusqlite::Connection::open(&path).unwrap();
        let plan: Vec<String> = c
            .prepare(&format!("EXPLAIN QUERY PLAN {}", list_sql()))
            .unwrap()
            .query_map(params!["p/".as_bytes(), 0, "", 11, "p/", "p0"], |r| {
                r.get::<_, String>(3)
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().any(|step| step.contains("(key>? AND key<?)")),
            "{plan:?}"
        );
    }

    #[tokio::test]
    async fn survives_reopen_and_pages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        let b = SqliteBucket::open(&path).unwrap();
        for i in 0..5 {
            b.set(&format!("p/{i}"), b"x".to_vec(), None).await.unwrap();
        }
        b.set("p%", b"x".to_vec(), None).await.unwrap();
        assert_eq!(b.increment("n", 2).await.unwrap(), 2);
        drop(b);
        let b = SqliteBucket::open(&path).unwrap();
        let page = b.list_keys("p/", None, 3).await.unwrap();
        assert_eq!(page.keys, ["p/0", "p/1", "p/2"]);
        let page = b.list_keys("p/", page.cursor.as_deref(), 3).await.unwrap();
        assert_eq!(page.keys, ["p/3", "p/4"]);
        assert_eq!(b.increment("n", 1).await.unwrap(), 3);
        assert!(
            b.compare_and_swap("n", Some(b"3"), b"9".to_vec())
                .await
                .unwrap()
        );
        assert!(
            !b.compare_and_swap("n", Some(b"3"), b"1".to_vec())
                .await
                .unwrap()
        );
    }

    fn bucket() -> (tempfile::TempDir, SqliteBucket) {
        let dir = tempfile::tempdir().unwrap();
        let b = SqliteBucket::open(&dir.path().join("b.db")).unwrap();
        (dir, b)
    }

    #[tokio::test]
    async fn huge_ttls_mean_forever() {
        let (_dir, b) = bucket();
        b.set(
            "max",
            b"v".to_vec(),
            Some(Duration::from_millis(MAX_TTL_MS)),
        )
        .await
        .unwrap();
        b.set("huge", b"v".to_vec(), Some(Duration::MAX))
            .await
            .unwrap();
        assert_eq!(b.get("max").await.unwrap(), Some(b"v".to_vec()));
        assert_eq!(b.get("huge").await.unwrap(), Some(b"v".to_vec()));
        // Another set purges expired rows: these are not.
        b.set("other", b"w".to_vec(), None).await.unwrap();
        assert!(b.exists("max").await.unwrap());
        assert!(b.exists("huge").await.unwrap());
    }

    /// A run of expired keys longer than [`super::super::LIST_BUDGET`]
    /// gives a short page with a cursor, rather than a read of every
    /// expired key in the prefix's range; listing on from it finds every
    /// live key once.
    #[tokio::test]
    async fn a_run_of_expired_keys_gives_a_short_page() {
        use super::super::LIST_BUDGET;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        let b = SqliteBucket::open(&path).unwrap();
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        // More than the two sets below purge, and the budget besides.
        for i in 1..=LIST_BUDGET + 2 * EXPIRED_PER_WRITE as usize + 10 {
            tx.execute(
                "INSERT INTO kv (key, value, expires_at) VALUES (?1, x'00', 1)",
                params![format!("p/{i:05}")],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        drop(conn);
        b.set("p/0", b"x".to_vec(), None).await.unwrap();
        b.set("p/z", b"x".to_vec(), None).await.unwrap();
        // Each set purged a few of the expired rows, the earliest first.
        let first = b.list_keys("p/", None, 10).await.unwrap();
        assert_eq!(first.keys, ["p/0"]);
        let stepped = first.cursor.expect("a short page has a cursor");
        assert!(stepped.as_str() < "p/z", "{stepped}");
        let next = b.list_keys("p/", Some(&stepped), 10).await.unwrap();
        assert_eq!(next.keys, ["p/z"]);
        assert_eq!(next.cursor, None);
    }

    /// The removal of expired keys on every `set` reads the index, not the
    /// whole table.
    #[test]
    fn expired_keys_are_found_by_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        drop(SqliteBucket::open(&path).unwrap());
        let conn = rusqlite::Connection::open(&path).unwrap();
        let plan: Vec<String> = conn
            .prepare("EXPLAIN QUERY PLAN DELETE FROM kv WHERE expires_at <= ?1")
            .unwrap()
            .query_map(params![0], |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().any(|step| step.contains("kv_expires_at")),
            "{plan:?}"
        );
    }
}
