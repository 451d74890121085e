//! In-memory key-value adapter: for `memory = true` buckets and fast tests.
//! Contents are lost when the host exits, and kept across an app's
//! reloads (see [`crate::rate::AppAllowance::memory_bucket`]). An app's
//! buckets hold at most [`MAX_MEMORY_BUCKET_BYTES`] together, a
//! [`MemoryBudget`] they share: they live in the host's memory, shared by
//! every tenant, outside any guest's memory limit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{KeyPage, KvBackend, KvError, add_to_counter, page_of_live};

/// The most one app's in-memory buckets hold together, unless
/// `[app_limits] kv_memory_mb` says otherwise: their keys and values, and
/// [`ENTRY_OVERHEAD`] bytes per entry for the maps' own.
pub const MAX_MEMORY_BUCKET_BYTES: usize = 64 << 20;

/// What an entry costs beyond its key and value (the map's node, the
/// `String` and `Vec` headers, the expiry).
const ENTRY_OVERHEAD: usize = 64;

/// What an expiring entry costs more: its place in the expiry index, which
/// holds a second copy of its key.
const EXPIRY_OVERHEAD: usize = 48;

/// The bytes an app's in-memory buckets may hold together.
#[derive(Debug)]
pub struct MemoryBudget {
    used: AtomicUsize,
    limit: usize,
    /// The buckets sharing it, so a full budget can drop what expired in
    /// any of them, not only in the bucket being written.
    members: Mutex<Vec<std::sync::Weak<Mutex<Entries>>>>,
}

impl MemoryBudget {
    /// A budget of `limit` bytes, none used.
    pub fn new(limit: usize) -> Self {
        MemoryBudget {
            used: AtomicUsize::new(0),
            limit,
            members: Mutex::default(),
        }
    }

    fn join(&self, entries: &Arc<Mutex<Entries>>) {
        let mut members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        members.retain(|m| m.strong_count() > 0);
        members.push(Arc::downgrade(entries));
    }

    /// Drops the expired entries of the buckets sharing the budget, but
    /// for those another call holds now (the caller's own among them):
    /// waiting for them could deadlock two buckets purging each other.
    fn purge_members(&self, now: Instant) {
        let members: Vec<_> = self
            .members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect();
        for member in members {
            let entries = match member.try_lock() {
                Ok(entries) => entries,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => continue,
            };
            let mut entries = entries;
            entries.purge(now);
        }
    }

    /// Takes `bytes` from the budget, if they fit.
    fn reserve(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    /// Gives `bytes` back.
    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

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

fn cost(key: &str, entry: &Entry) -> usize {
    let expiry = entry.expires.map_or(0, |_| key.len() + EXPIRY_OVERHEAD);
    key.len() + entry.value.len() + ENTRY_OVERHEAD + expiry
}

/// The entries, what they cost together (taken from the budget), and
/// their expiries in order, so dropping the expired ones costs what they
/// are, never a walk of the whole bucket.
#[derive(Debug)]
struct Entries {
    map: BTreeMap<String, Entry>,
    expiries: BTreeSet<(Instant, String)>,
    bytes: usize,
    budget: Arc<MemoryBudget>,
}

impl Drop for Entries {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

impl Entries {
    fn new(budget: Arc<MemoryBudget>) -> Self {
        Entries {
            map: BTreeMap::new(),
            expiries: BTreeSet::new(),
            bytes: 0,
            budget,
        }
    }

    /// Takes `key`'s entry out of the map and the index, and gives its
    /// cost back to the budget.
    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.map.remove(key)?;
        if let Some(t) = entry.expires {
            self.expiries.remove(&(t, key.to_string()));
        }
        let freed = cost(key, &entry);
        self.bytes -= freed;
        self.budget.release(freed);
        Some(entry)
    }

    /// Drops the expired entries (they are otherwise dropped only when
    /// overwritten or deleted).
    fn purge(&mut self, now: Instant) {
        while let Some((t, key)) = self.expiries.first() {
            if *t > now {
                break;
            }
            let key = key.clone();
            self.remove(&key);
        }
    }

    /// Stores `entry` under `key`, unless the app's buckets would pass
    /// their budget with it once this bucket's expired entries are gone.
    fn insert(&mut self, key: &str, entry: Entry, now: Instant) -> Result<(), KvError> {
        let added = cost(key, &entry);
        let replaced = |e: &Entries| e.map.get(key).map_or(0, |old| cost(key, old));
        let fits = |e: &Entries| {
            let replaced = replaced(e);
            added <= replaced || e.budget.reserve(added - replaced)
        };
        // `fits` takes the room when it answers yes.
        if !fits(self) {
            self.purge(now);
            if !fits(self) {
                self.budget.purge_members(now);
                if !fits(self) {
                    return Err(KvError::InvalidInput(format!(
                        "the app's in-memory buckets are full (at most {} bytes of keys and values together, the host config's `[app_limits] kv_memory_mb`); delete keys or let them expire",
                        self.budget.limit
                    )));
                }
            }
        }
        // What `added` exceeds the old entry by is taken; what it falls
        // short by is given back.
        let replaced = replaced(self);
        if let Some(old) = self.map.remove(key)
            && let Some(t) = old.expires
        {
            self.expiries.remove(&(t, key.to_string()));
        }
        if replaced > added {
            self.budget.release(replaced - added);
        }
        self.bytes = self.bytes - replaced + added;
        if let Some(t) = entry.expires {
            self.expiries.insert((t, key.to_string()));
        }
        self.map.insert(key.to_string(), entry);
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
    entries: Arc<Mutex<Entries>>,
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
        Self::in_budget(Arc::new(MemoryBudget::new(capacity)))
    }

    /// An empty bucket that shares `budget` with the app's other buckets.
    pub fn in_budget(budget: Arc<MemoryBudget>) -> Self {
        let entries = Arc::new(Mutex::new(Entries::new(budget.clone())));
        budget.join(&entries);
        MemoryBucket { entries }
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
            m.insert(key, Entry { value, expires }, now)
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
            let keys = m
                .map
                .range((start, std::ops::Bound::Unbounded))
                .take_while(|(key, _)| key.starts_with(prefix))
                .map(|(key, entry)| (key.clone(), entry.live(now)));
            page_of_live(keys, limit)
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
            m.insert(key, entry, now)?;
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
            m.insert(key, entry, now)?;
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
        let entry = |key: &str, len: usize| {
            let value = vec![0; len];
            cost(
                key,
                &Entry {
                    value,
                    expires: None,
                },
            )
        };
        // Room for three entries, and for one of them to expire.
        let b = MemoryBucket::with_capacity(entry("k0", 100) * 3 + "k1".len() + EXPIRY_OVERHEAD);
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

    /// An app's buckets share one budget: what one holds, another cannot
    /// take, what expired in one makes room for another, and a bucket
    /// dropped (its app version gone) gives it back.
    #[tokio::test]
    async fn an_apps_buckets_share_one_budget() {
        let budget = Arc::new(MemoryBudget::new(1000));
        let first = MemoryBucket::in_budget(budget.clone());
        let second = MemoryBucket::in_budget(budget.clone());
        first.set("a", vec![0; 800], None).await.unwrap();
        let full = second.set("b", vec![0; 800], None).await.unwrap_err();
        assert!(
            matches!(&full, KvError::InvalidInput(m) if m.contains("full")),
            "{full:?}"
        );
        second.set("b", vec![0; 10], None).await.unwrap();
        first
            .set("a", vec![0; 800], Some(Duration::from_millis(1)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        // `first` is idle: its expired entry goes to make room in `second`.
        second.set("d", vec![0; 800], None).await.unwrap();
        assert!(!first.exists("a").await.unwrap());
        second.delete("d").await.unwrap();
        drop(first);
        second.set("c", vec![0; 800], None).await.unwrap();
        assert_eq!(
            budget.used.load(Ordering::Relaxed),
            second.with(|m, _| m.bytes)
        );
        drop(second);
        assert_eq!(budget.used.load(Ordering::Relaxed), 0);
    }

    /// Expired entries are dropped in expiry order, from the index: a
    /// purge takes what expired and keeps the rest and their index.
    #[tokio::test]
    async fn a_purge_takes_only_what_expired() {
        let b = MemoryBucket::new();
        let soon = Some(Duration::from_millis(1));
        let later = Some(Duration::from_secs(3600));
        for i in 0..100 {
            let ttl = if i % 2 == 0 { soon } else { later };
            b.set(&format!("k{i:03}"), b"v".to_vec(), ttl)
                .await
                .unwrap();
        }
        b.set("forever", b"v".to_vec(), None).await.unwrap();
        // Overwriting an expiring key with a lasting one drops its expiry.
        b.set("k000", b"w".to_vec(), None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        b.with(|m, now| {
            m.purge(now);
            assert_eq!(m.map.len(), 52);
            assert_eq!(m.expiries.len(), 50);
            let indexed: usize = m.map.iter().map(|(k, e)| cost(k, e)).sum();
            assert_eq!(m.bytes, indexed);
            assert_eq!(m.budget.used.load(Ordering::Relaxed), indexed);
        });
        assert_eq!(b.get("k000").await.unwrap(), Some(b"w".to_vec()));
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

    /// A run of expired keys longer than [`LIST_BUDGET`] gives a short
    /// page with a cursor rather than one walk over all of it; listing
    /// on from it finds every live key once.
    #[tokio::test]
    async fn a_run_of_expired_keys_gives_a_short_page() {
        use crate::ports::kv::LIST_BUDGET;
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
