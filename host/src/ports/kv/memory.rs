//! In-memory key-value adapter: for `memory = true` buckets and fast tests.
//! Contents are lost when the host exits. A bucket holds at most
//! [`MAX_MEMORY_BUCKET_BYTES`]: it lives in the host's memory, shared by
//! every tenant, outside any guest's memory limit.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{KeyPage, KvBackend, KvError, LIST_BUDGET, add_to_counter, page_from};

/// The most one in-memory bucket holds: its keys and values, and
/// [`ENTRY_OVERHEAD`] bytes per entry for the map's own.
pub const MAX_MEMORY_BUCKET_BYTES: usize = 64 << 20;

/// What an entry costs beyond its key and value (the map's node, the
/// `String` and `Vec` headers, the expiry).
const ENTRY_OVERHEAD: usize = 64;

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

fn cost(key: &str, value: &[u8]) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

/// The entries, and what they cost together.
#[derive(Debug, Default)]
struct Entries {
    map: BTreeMap<String, Entry>,
    bytes: usize,
    /// No entry expires before this (it may be earlier than the earliest
    /// left): a full bucket with nothing expired refuses a write without
    /// walking every entry.
    next_expiry: Option<Instant>,
}

impl Entries {
    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.map.remove(key)?;
        self.bytes -= cost(key, &entry.value);
        Some(entry)
    }

    /// Drops the expired entries (they are otherwise dropped only when
    /// overwritten or deleted).
    fn purge(&mut self, now: Instant) {
        if self.next_expiry.is_none_or(|t| t > now) {
            return;
        }
        let mut freed = 0;
        let mut next_expiry = None;
        self.map.retain(|key, entry| {
            let live = entry.live(now);
            if !live {
                freed += cost(key, &entry.value);
            } else if let Some(t) = entry.expires {
                next_expiry = Some(next_expiry.map_or(t, |n: Instant| n.min(t)));
            }
            live
        });
        self.bytes -= freed;
        self.next_expiry = next_expiry;
    }

    /// Stores `entry` under `key`, unless the bucket would pass `capacity`
    /// with it once the expired entries are gone.
    fn insert(
        &mut self,
        key: &str,
        entry: Entry,
        now: Instant,
        capacity: usize,
    ) -> Result<(), KvError> {
        let added = cost(key, &entry.value);
        let fits = |e: &Entries| {
            let replaced = e.map.get(key).map_or(0, |old| cost(key, &old.value));
            e.bytes - replaced + added <= capacity
        };
        if !fits(self) {
            self.purge(now);
            if !fits(self) {
                return Err(KvError::InvalidInput(format!(
                    "the in-memory bucket is full (at most {capacity} bytes of keys and values); delete keys or let them expire"
                )));
            }
        }
        if let Some(t) = entry.expires {
            self.next_expiry = Some(self.next_expiry.map_or(t, |n| n.min(t)));
        }
        if let Some(old) = self.map.insert(key.to_string(), entry) {
            self.bytes -= cost(key, &old.value);
        }
        self.bytes += added;
        Ok(())
    }

    fn live_value(&self, key: &str, now: Instant) -> Option<Vec<u8>> {
        self.map
            .get(key)
            .filter(|e| e.live(now))
            .map(|e| e.value.clone())
    }
}

/// A bucket held in a sorted map.
#[derive(Debug)]
pub struct MemoryBucket {
    entries: Mutex<Entries>,
    capacity: usize,
}

impl Default for MemoryBucket {
    fn default() -> Self {
        Self::with_capacity(MAX_MEMORY_BUCKET_BYTES)
    }
}

impl MemoryBucket {
    /// An empty bucket holding at most [`MAX_MEMORY_BUCKET_BYTES`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty bucket holding at most `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        MemoryBucket {
            entries: Mutex::default(),
            capacity,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Entries, Instant) -> R) -> R {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut entries, Instant::now())
    }
}

#[async_trait]
impl KvBackend for MemoryBucket {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.with(|m, now| m.live_value(key, now)))
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<(), KvError> {
        self.with(|m, now| {
            // `Instant + Duration` panics on overflow: a TTL past what the
            // clock can hold (only when called past the glue, which caps
            // TTLs at `MAX_TTL_MS`) never expires.
            let expires = ttl.and_then(|t| now.checked_add(t));
            m.insert(key, Entry { value, expires }, now, self.capacity)
        })
    }

    async fn delete(&self, key: &str) -> Result<bool, KvError> {
        Ok(self.with(|m, now| m.remove(key).is_some_and(|e| e.live(now))))
    }

    async fn exists(&self, key: &str) -> Result<bool, KvError> {
        Ok(self.with(|m, now| m.map.get(key).is_some_and(|e| e.live(now))))
    }

    async fn list_keys(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<KeyPage, KvError> {
        Ok(self.with(|m, now| {
            // From the prefix, or from a cursor past it: a cursor sorting
            // before the prefix must not make the walk start there.
            let start = match after {
                Some(a) if a >= prefix => std::ops::Bound::Excluded(a.to_string()),
                _ => std::ops::Bound::Included(prefix.to_string()),
            };
            let mut keys = Vec::new();
            let mut expired = 0;
            for (key, entry) in m.map.range((start, std::ops::Bound::Unbounded)) {
                if !key.starts_with(prefix) {
                    break;
                }
                if entry.live(now) {
                    keys.push(key.clone());
                    if keys.len() > limit {
                        break;
                    }
                } else {
                    expired += 1;
                    if expired == LIST_BUDGET {
                        // A short page, to go on from here.
                        return KeyPage {
                            keys,
                            cursor: Some(key.clone()),
                        };
                    }
                }
            }
            page_from(keys, limit)
        }))
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        self.with(|m, now| {
            let current = m.live_value(key, now);
            let next = add_to_counter(current.as_deref(), delta)?;
            let expires = m
                .map
                .get(key)
                .filter(|e| e.live(now))
                .and_then(|e| e.expires);
            let entry = Entry {
                value: next.to_string().into_bytes(),
                expires,
            };
            m.insert(key, entry, now, self.capacity)?;
            Ok(next)
        })
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Vec<u8>,
    ) -> Result<bool, KvError> {
        self.with(|m, now| {
            if m.live_value(key, now).as_deref() != expected {
                return Ok(false);
            }
            let entry = Entry {
                value: new,
                expires: None,
            };
            m.insert(key, entry, now, self.capacity)?;
            Ok(true)
        })
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

    /// A bucket takes what fits; expired entries make room, overwrites
    /// count once, and deletes give their room back.
    #[tokio::test]
    async fn a_full_bucket_refuses_until_room_is_made() {
        let entry = |key: &str, len: usize| cost(key, &vec![0; len]);
        let b = MemoryBucket::with_capacity(entry("k0", 100) * 3);
        for i in 0..3 {
            b.set(&format!("k{i}"), vec![0; 100], None).await.unwrap();
        }
        let full = b.set("k3", vec![0; 100], None).await.unwrap_err();
        assert!(
            matches!(&full, KvError::InvalidInput(m) if m.contains("full")),
            "{full:?}"
        );
        assert!(b.increment("n", 1).await.is_err());
        // An overwrite of the same size fits; a delete makes room.
        b.set("k0", vec![1; 100], None).await.unwrap();
        assert!(b.delete("k0").await.unwrap());
        b.set("k3", vec![0; 100], None).await.unwrap();
        // Expired entries are dropped to make room.
        b.set("k1", vec![0; 100], Some(Duration::from_millis(10)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        b.set("k4", vec![0; 100], None).await.unwrap();
        let page = b.list_keys("k", None, 10).await.unwrap();
        assert_eq!(page.keys, ["k2", "k3", "k4"]);
        assert_eq!(b.with(|m, _| m.bytes), entry("k0", 100) * 3);
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

    #[tokio::test]
    async fn a_cursor_before_the_prefix_starts_at_the_prefix() {
        let b = MemoryBucket::new();
        super::super::backend_tests::a_cursor_before_the_prefix_starts_at_the_prefix(&b).await;
    }

    /// A run of expired keys longer than [`LIST_BUDGET`] gives a short
    /// page with a cursor rather than one walk over all of it; listing
    /// on from it finds every live key once.
    #[tokio::test]
    async fn a_run_of_expired_keys_gives_a_short_page() {
        let b = MemoryBucket::new();
        b.set("p/0", b"x".to_vec(), None).await.unwrap();
        for i in 1..=LIST_BUDGET + 10 {
            let ttl = Some(Duration::from_millis(1));
            b.set(&format!("p/{i:05}"), b"x".to_vec(), ttl)
                .await
                .unwrap();
        }
        b.set("p/z", b"x".to_vec(), None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let first = b.list_keys("p/", None, 10).await.unwrap();
        assert_eq!(first.keys, ["p/0"]);
        assert_eq!(
            first.cursor.as_deref(),
            Some(&*format!("p/{LIST_BUDGET:05}"))
        );
        let next = b
            .list_keys("p/", first.cursor.as_deref(), 10)
            .await
            .unwrap();
        assert_eq!(next.keys, ["p/z"]);
        assert_eq!(next.cursor, None);
    }
}
