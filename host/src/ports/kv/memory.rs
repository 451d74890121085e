//! In-memory key-value adapter: for `memory = true` buckets and fast tests.
//! Contents are lost when the host exits.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{KeyPage, KvBackend, KvError, add_to_counter, page_from};

#[derive(Debug, Clone)]
struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|t| t > now)
    }
}

/// A bucket held in a sorted map.
#[derive(Debug, Default)]
pub struct MemoryBucket {
    entries: Mutex<BTreeMap<String, Entry>>,
}

impl MemoryBucket {
    /// An empty bucket.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, Entry>, Instant) -> R) -> R {
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut map, Instant::now())
    }
}

fn live_value(map: &BTreeMap<String, Entry>, key: &str, now: Instant) -> Option<Vec<u8>> {
    map.get(key)
        .filter(|e| e.live(now))
        .map(|e| e.value.clone())
}

#[async_trait]
impl KvBackend for MemoryBucket {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.with(|m, now| live_value(m, key, now)))
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), KvError> {
        self.with(|m, now| {
            // `Instant + Duration` panics on overflow: a TTL past what the
            // clock can hold (only when called past the glue, which caps
            // TTLs at `MAX_TTL_MS`) never expires.
            let expires = ttl.and_then(|t| now.checked_add(t));
            m.insert(key.to_string(), Entry { value, expires });
        });
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool, KvError> {
        Ok(self.with(|m, now| m.remove(key).is_some_and(|e| e.live(now))))
    }

    async fn exists(&self, key: &str) -> Result<bool, KvError> {
        Ok(self.with(|m, now| m.get(key).is_some_and(|e| e.live(now))))
    }

    async fn list_keys(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage, KvError> {
        let keys = self.with(|m, now| {
            m.retain(|_, e| e.live(now));
            let start = match after {
                Some(a) => std::ops::Bound::Excluded(a.to_string()),
                None => std::ops::Bound::Included(prefix.to_string()),
            };
            m.range((start, std::ops::Bound::Unbounded))
                .map(|(k, _)| k)
                .skip_while(|k| !k.starts_with(prefix) && k.as_str() < prefix)
                .take_while(|k| k.starts_with(prefix))
                .take(limit + 1)
                .cloned()
                .collect()
        });
        Ok(page_from(keys, limit))
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        self.with(|m, now| {
            let current = live_value(m, key, now);
            let next = add_to_counter(current.as_deref(), delta)?;
            let expires = m.get(key).filter(|e| e.live(now)).and_then(|e| e.expires);
            m.insert(
                key.to_string(),
                Entry {
                    value: next.to_string().into_bytes(),
                    expires,
                },
            );
            Ok(next)
        })
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Vec<u8>,
    ) -> Result<bool, KvError> {
        Ok(self.with(|m, now| {
            if live_value(m, key, now).as_deref() != expected {
                return false;
            }
            m.insert(
                key.to_string(),
                Entry {
                    value: new,
                    expires: None,
                },
            );
            true
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ttl_counter_cas_and_listing() {
        let b = MemoryBucket::new();
        b.set("t", b"v".to_vec(), Some(Duration::from_millis(20)))
            .await
            .unwrap();
        assert!(b.exists("t").await.unwrap());
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(b.get("t").await.unwrap(), None);
        assert_eq!(b.increment("n", 5).await.unwrap(), 5);
        assert_eq!(b.increment("n", -7).await.unwrap(), -2);
        assert!(b.compare_and_swap("c", None, b"1".to_vec()).await.unwrap());
        assert!(!b.compare_and_swap("c", None, b"2".to_vec()).await.unwrap());
        for i in 0..5 {
            b.set(&format!("p/{i}"), vec![], None).await.unwrap();
        }
        let first = b.list_keys("p/", None, 3).await.unwrap();
        assert_eq!(first.keys, ["p/0", "p/1", "p/2"]);
        let second = b.list_keys("p/", first.cursor.as_deref(), 3).await.unwrap();
        assert_eq!(second.keys, ["p/3", "p/4"]);
        assert_eq!(second.cursor, None);
    }

    #[tokio::test]
    async fn huge_ttls_mean_forever() {
        let b = MemoryBucket::new();
        b.set(
            "max",
            b"v".to_vec(),
            Some(Duration::from_millis(crate::ports::kv::MAX_TTL_MS)),
        )
        .await
        .unwrap();
        b.set("huge", b"v".to_vec(), Some(Duration::MAX))
            .await
            .unwrap();
        assert_eq!(b.get("max").await.unwrap(), Some(b"v".to_vec()));
        assert_eq!(b.get("huge").await.unwrap(), Some(b"v".to_vec()));
        assert!(b.exists("huge").await.unwrap());
    }

    #[tokio::test]
    async fn increment_takes_only_what_redis_takes() {
        let b = MemoryBucket::new();
        super::super::backend_tests::increment_takes_only_what_redis_takes(&b).await;
    }

    #[tokio::test]
    async fn lists_keys_holding_nul() {
        let b = MemoryBucket::new();
        super::super::backend_tests::lists_keys_holding_nul(&b).await;
    }
}
