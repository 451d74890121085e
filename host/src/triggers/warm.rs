//! A pool of idle warm instances (`reuse_instances = true`): the most
//! recently used is taken first, each is retired after a number of uses,
//! and one left idle too long is dropped, so a trigger that has gone quiet
//! gives its host instance slots back instead of holding them forever.
//!
//! Generic over the item so the policy is tested without a wasmtime
//! instance; the message trigger stores its `WarmInstance`s in it.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How long an instance may stay idle before it is dropped.
pub const IDLE_LIMIT: Duration = Duration::from_secs(30);

/// Uses of one instance before it is replaced, bounding what a guest that
/// leaks memory or handles can accumulate.
pub const MAX_USES: u32 = 1_000;

/// Idle items, oldest first, each with its use count and when it was last
/// given back.
pub struct IdlePool<T> {
    idle: Arc<Mutex<Vec<Idle<T>>>>,
    idle_limit: Duration,
    /// Told each time an item goes idle (see [`Self::tell_when_idle`]).
    went_idle: Option<Arc<crate::rate::WentIdle>>,
}

struct Idle<T> {
    item: T,
    uses: u32,
    since: Instant,
}

/// An item taken from the pool, with its use count so far.
pub struct Taken<T> {
    /// The warm item.
    pub item: T,
    uses: u32,
}

impl<T> Clone for IdlePool<T> {
    fn clone(&self) -> Self {
        Self {
            idle: self.idle.clone(),
            idle_limit: self.idle_limit,
            went_idle: self.went_idle.clone(),
        }
    }
}

impl<T: Send + 'static> Default for IdlePool<T> {
    fn default() -> Self {
        Self::with_idle_limit(IDLE_LIMIT)
    }
}

impl<T: Send + 'static> IdlePool<T> {
    /// A pool that drops items idle for longer than `idle_limit`.
    pub fn with_idle_limit(idle_limit: Duration) -> Self {
        Self {
            idle: Arc::default(),
            idle_limit,
            went_idle: None,
        }
    }

    /// Tells `went_idle` each time an item goes idle (for this pool and
    /// its clones made after).
    pub fn tell_when_idle(&mut self, went_idle: Arc<crate::rate::WentIdle>) {
        self.went_idle = Some(went_idle);
    }

    /// The most recently given back item that has not been idle too long.
    /// Expired items met on the way are dropped (outside the lock).
    pub fn take(&self) -> Option<Taken<T>> {
        let (expired, last) = {
            let mut idle = self.idle.lock().ok()?;
            let expired = drain_expired(&mut idle, self.idle_limit);
            (expired, idle.pop())
        };
        drop(expired);
        last.map(|idle| Taken {
            item: idle.item,
            uses: idle.uses,
        })
    }

    /// Returns `item` after a successful use, unless it has reached
    /// [`MAX_USES`] (then it is dropped).
    pub fn give_back(&self, taken: Taken<T>) {
        let uses = taken.uses + 1;
        if uses >= MAX_USES {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(Idle {
                item: taken.item,
                uses,
                since: Instant::now(),
            });
        }
        if let Some(went_idle) = &self.went_idle {
            went_idle.tell();
        }
    }

    /// Wraps a new item, never used.
    pub fn fresh(item: T) -> Taken<T> {
        Taken { item, uses: 0 }
    }

    /// Items now idle in the pool.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.len())
    }

    /// Removes the items idle for longer than the limit (the oldest, at
    /// the front) and hands them to the caller to drop.
    fn take_expired(&self) -> Vec<Idle<T>> {
        match self.idle.lock() {
            Ok(mut idle) => drain_expired(&mut idle, self.idle_limit),
            Err(_) => Vec::new(),
        }
    }

    /// The pool as idle instances its app may drop for a place (see
    /// [`crate::rate::AppAllowance::hold_idle`]).
    pub fn as_idle_instances(&self) -> Weak<dyn crate::rate::IdleInstances> {
        let idle: Weak<Mutex<Vec<Idle<T>>>> = Arc::downgrade(&self.idle);
        idle
    }

    /// Drops expired items every half idle limit until the pool itself is
    /// dropped, so a trigger that receives nothing more still lets its
    /// instances go. Needs a tokio runtime.
    pub fn spawn_sweeper(&self) -> tokio::task::JoinHandle<()> {
        let pool = Arc::downgrade(&self.idle);
        tokio::spawn(sweep(pool, self.idle_limit))
    }
}

impl<T: Send + 'static> crate::rate::IdleInstances for Mutex<Vec<Idle<T>>> {
    fn drop_oldest(&self) -> bool {
        let oldest = {
            let mut idle = self.lock().unwrap_or_else(|p| p.into_inner());
            (!idle.is_empty()).then(|| idle.remove(0))
        };
        // Dropped outside the lock: a store's drop is not instant.
        oldest.is_some()
    }
}

/// Removes the items of `idle` (oldest first) idle for longer than
/// `limit`; usually none, found by looking at the first item only.
fn drain_expired<T>(idle: &mut Vec<Idle<T>>, limit: Duration) -> Vec<Idle<T>> {
    let fresh_from = idle
        .iter()
        .position(|i| i.since.elapsed() <= limit)
        .unwrap_or(idle.len());
    idle.drain(..fresh_from).collect()
}

async fn sweep<T: Send + 'static>(pool: Weak<Mutex<Vec<Idle<T>>>>, idle_limit: Duration) {
    let mut every = tokio::time::interval(idle_limit / 2);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(idle) = pool.upgrade() else { return };
        let expired = IdlePool {
            idle,
            idle_limit,
            went_idle: None,
        }
        .take_expired();
        drop(expired);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts its drops, as a warm instance gives back its slot.
    struct Item(u32, Arc<AtomicUsize>);

    impl Drop for Item {
        fn drop(&mut self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn takes_the_most_recent_and_retires_after_max_uses() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let pool = IdlePool::with_idle_limit(Duration::from_secs(60));
        pool.give_back(IdlePool::fresh(Item(1, dropped.clone())));
        pool.give_back(IdlePool::fresh(Item(2, dropped.clone())));
        assert_eq!(pool.take().map(|t| t.item.0), Some(2));
        let mut one = pool.take().expect("item 1 is idle");
        assert_eq!(one.item.0, 1);
        assert!(pool.take().is_none());
        one.uses = MAX_USES - 1;
        pool.give_back(one);
        assert_eq!(pool.idle_count(), 0, "an item at its last use is retired");
        assert_eq!(dropped.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn items_idle_too_long_are_dropped_on_take() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let pool = IdlePool::with_idle_limit(Duration::from_millis(50));
        pool.give_back(IdlePool::fresh(Item(1, dropped.clone())));
        std::thread::sleep(Duration::from_millis(80));
        pool.give_back(IdlePool::fresh(Item(2, dropped.clone())));
        assert_eq!(pool.take().map(|t| t.item.0), Some(2));
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            2,
            "1 expired, 2 used and dropped"
        );
        assert_eq!(pool.idle_count(), 0);
    }

    /// Idle items holding places of their app are dropped, oldest first,
    /// when the app needs a place and none is free; never otherwise.
    #[tokio::test]
    async fn an_app_takes_back_the_places_its_idle_instances_hold() {
        let mut host = crate::config::HostConfig::default();
        host.app_limits.max_instances = Some(2);
        let allowance = crate::rate::AppAllowance::new(&host, 8);
        let pool = IdlePool::with_idle_limit(Duration::from_secs(60));
        allowance.hold_idle(pool.as_idle_instances());
        for n in 0..2 {
            let place = allowance.instance_permit(1).await.expect("a free place");
            pool.give_back(IdlePool::fresh((n, place)));
        }
        assert_eq!(pool.idle_count(), 2, "idle items hold both places");
        let taken = allowance
            .try_instance_permit(1)
            .expect("an idle item's place");
        assert_eq!(pool.idle_count(), 1);
        let in_use = pool.take().expect("item 1 is idle");
        assert_eq!(in_use.item.0, 1, "the oldest went");
        // The last place is held by an item in use, not idle: none to take.
        assert!(allowance.try_instance_permit(1).is_none());
        drop(in_use);
        let taken_too = allowance.try_instance_permit(1).expect("a freed place");
        assert!(allowance.try_instance_permit(1).is_none());
        drop((taken, taken_too));
        assert!(allowance.try_instance_permit(1).is_some());
    }

    /// Work waiting for a place takes one as soon as an instance holding
    /// one goes idle (its place is never given back by itself while the
    /// instance is reused).
    #[tokio::test]
    async fn a_waiter_takes_the_place_of_an_instance_going_idle() {
        let mut host = crate::config::HostConfig::default();
        host.app_limits.max_instances = Some(1);
        let allowance = Arc::new(crate::rate::AppAllowance::new(&host, 8));
        let mut pool = IdlePool::with_idle_limit(Duration::from_secs(60));
        pool.tell_when_idle(allowance.hold_idle(pool.as_idle_instances()));
        let place = allowance.instance_permit(1).await.expect("a free place");
        let in_use = IdlePool::fresh(place);
        let waiter = tokio::spawn({
            let allowance = allowance.clone();
            async move { allowance.instance_permit(1).await.is_some() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "the only place is in use");
        pool.give_back(in_use);
        let took = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter is woken")
            .unwrap();
        assert!(took);
        assert_eq!(pool.idle_count(), 0, "the idle instance was dropped for it");
    }

    #[tokio::test]
    async fn the_sweeper_drops_idle_items_without_traffic_and_ends_with_the_pool() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let pool = IdlePool::with_idle_limit(Duration::from_millis(40));
        let sweeper = pool.spawn_sweeper();
        pool.give_back(IdlePool::fresh(Item(1, dropped.clone())));
        assert_eq!(pool.idle_count(), 1);
        // Nothing is taken from here on: only the sweeper can drop it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.idle_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(pool.idle_count(), 0, "the sweeper dropped the idle item");
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
        drop(pool);
        tokio::time::timeout(Duration::from_secs(5), sweeper)
            .await
            .expect("the sweeper ends once the pool is gone")
            .expect("the sweeper does not panic");
    }
}
