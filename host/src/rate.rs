//! A token bucket: a rate with bursts, for the limits the host applies to an
//! app as a whole (email sends, guest message publishes), so one tenant
//! cannot flood a relay or broker the host shares between tenants.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Allows `count` takes per `period`, in bursts of up to `count`.
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    /// Tokens left, and when they were counted.
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// `count` per `period` (both above 0: the host config refuses a 0
    /// count at load), starting full.
    pub fn new(count: u32, period: Duration) -> Self {
        let capacity = f64::from(count);
        Self {
            capacity,
            per_second: capacity / period.as_secs_f64().max(f64::MIN_POSITIVE),
            state: Mutex::new((capacity, Instant::now())),
        }
    }

    /// Takes a token if one is left.
    pub fn take(&self) -> bool {
        self.take_n(1)
    }

    /// Gives back `n` tokens taken for something that then did not happen.
    pub fn give_back(&self, n: u32) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0 = (state.0 + f64::from(n)).min(self.capacity);
    }

    /// Takes `n` tokens if as many are left (a take of more than the
    /// bucket holds when full takes what is there, once full).
    pub fn take_n(&self, n: u32) -> bool {
        // A panic while holding the lock leaves a state that is still valid.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = &mut *state;
        let now = Instant::now();
        let refill = now.duration_since(*last).as_secs_f64() * self.per_second;
        *tokens = (*tokens + refill).min(self.capacity);
        *last = now;
        let wanted = f64::from(n).min(self.capacity);
        if *tokens >= wanted {
            *tokens -= wanted;
            true
        } else {
            false
        }
    }
}

/// What an app may use whatever its version (`[app_limits]`): its
/// instances at once and its rates. The host keeps it while any version of
/// the app lives (see [`crate::engine::HostEngine::app_allowance`]), so a
/// reload (which a tenant can cause every second) never gives the app a
/// fresh allowance, and its old and new versions count together.
pub struct AppAllowance {
    /// The instances it may run at once.
    pub instances: std::sync::Arc<tokio::sync::Semaphore>,
    /// How many that is.
    pub instance_limit: u32,
    /// The linear memory its instances hold together (`memory_mb`).
    pub memory: std::sync::Arc<crate::limits::AppMemory>,
    /// Its email sends (`emails_per_minute`).
    pub emails: std::sync::Arc<TokenBucket>,
    /// Their recipients (`email_recipients_per_minute`).
    pub email_recipients: std::sync::Arc<TokenBucket>,
    /// Its guests' publishes (`messages_per_second`), if limited.
    pub publishes: Option<std::sync::Arc<TokenBucket>>,
    /// Its guests' log lines (`log_lines_per_second`).
    pub log_lines: std::sync::Arc<crate::ports::logging::budget::LogBudget>,
    /// Its name lookups for outbound HTTP, all its components together.
    pub lookups: crate::outbound::connect::AppLookups,
    /// Downloads through its signed blob URLs at once, all its versions
    /// together ([`crate::triggers::http::MAX_BLOB_DOWNLOADS`]).
    pub blob_downloads: std::sync::Arc<tokio::sync::Semaphore>,
    /// SQL cursors its instances hold open together, all its versions
    /// together ([`crate::ports::sql::host::MAX_APP_CURSORS`]): each holds a
    /// pooled connection and, on SQLite, one of the host's blocking threads.
    pub sql_cursors: std::sync::Arc<tokio::sync::Semaphore>,
    /// What its in-memory kv buckets hold together (`kv_memory_mb`).
    kv_memory: std::sync::Arc<crate::ports::kv::memory::MemoryBudget>,
    /// Its in-memory kv buckets by name, while a version of the app holds
    /// them: a reload keeps their contents.
    memory_buckets: std::sync::Mutex<MemoryBuckets>,
    /// Pools of idle instances holding places among its instances
    /// (triggers' warm instances), dropped one by one when the app needs a
    /// place and none is free.
    idle_holders: std::sync::Mutex<Vec<std::sync::Weak<dyn IdleInstances>>>,
    /// Told when one of them goes idle, so that work waiting for a place
    /// can take that instance's (it keeps its place, so the limit itself
    /// wakes no one).
    went_idle: std::sync::Arc<WentIdle>,
}

/// Tells work waiting for a place among an app's instances that an
/// instance went idle; costs one atomic load when none waits (a warm
/// instance goes idle after every message).
#[derive(Debug, Default)]
pub struct WentIdle {
    notify: tokio::sync::Notify,
    waiting: std::sync::atomic::AtomicUsize,
}

impl WentIdle {
    /// An instance went idle (it is in its pool already).
    pub fn tell(&self) {
        if self.waiting.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }
}

/// Counts one waiter of a [`WentIdle`] while it lives.
struct Waiting<'a>(&'a WentIdle);

impl<'a> Waiting<'a> {
    fn new(went_idle: &'a WentIdle) -> Self {
        went_idle
            .waiting
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Waiting(went_idle)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0
            .waiting
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A place among an app's instances (`[app_limits] max_instances`), or
/// several for an instance that weighs more (see
/// [`crate::engine::HostEngine::pool_weight`]).
pub type InstancePermit = tokio::sync::OwnedSemaphorePermit;

/// The most places an app's share holds (a semaphore's permits).
const MAX_PLACES: u32 = u32::MAX >> 3;

/// Idle instances that each hold an [`InstancePermit`] of their app.
pub trait IdleInstances: Send + Sync {
    /// Drops the oldest idle instance, giving its place back; false when
    /// none is idle.
    fn drop_oldest(&self) -> bool;
}

type MemoryBuckets =
    std::collections::HashMap<String, std::sync::Weak<crate::ports::kv::memory::MemoryBucket>>;

impl AppAllowance {
    /// The allowance `host` gives an app: on `berth serve`
    /// (`tenant_manifests`) half of the host's `max_instances` unless
    /// `[app_limits] max_instances` says otherwise, on `berth up` no share
    /// of its own.
    pub fn new(host: &crate::config::HostConfig, max_instances: u32) -> Self {
        let limits = &host.app_limits;
        // On `berth up` the app is alone: only the host's slots bound it
        // (so a limit reached names them, not a share of them).
        let instance_limit = match limits.max_instances {
            Some(n) => n,
            None if host.serve.tenant_manifests => max_instances / 2,
            None => u32::MAX,
        }
        .max(1);
        let permits = instance_limit.min(MAX_PLACES) as usize;
        let memory = match limits.memory_mb {
            Some(mb) => u64::from(mb) << 20,
            None if host.serve.tenant_manifests => half_the_machines_memory(),
            None => u64::MAX,
        };
        let per_minute = limits
            .emails_per_minute
            .unwrap_or(crate::ports::email::rate::DEFAULT_PER_MINUTE);
        let log_lines = limits
            .log_lines_per_second
            .unwrap_or(crate::ports::logging::budget::DEFAULT_LINES_PER_SECOND);
        Self {
            instances: std::sync::Arc::new(tokio::sync::Semaphore::new(permits)),
            instance_limit,
            memory: std::sync::Arc::new(crate::limits::AppMemory::new(memory)),
            emails: std::sync::Arc::new(TokenBucket::new(per_minute, Duration::from_secs(60))),
            email_recipients: std::sync::Arc::new(TokenBucket::new(
                limits
                    .email_recipients_per_minute
                    .unwrap_or(crate::ports::email::rate::DEFAULT_RECIPIENTS_PER_MINUTE),
                Duration::from_secs(60),
            )),
            publishes: limits.messages_per_second.map(|per_second| {
                std::sync::Arc::new(TokenBucket::new(per_second, Duration::from_secs(1)))
            }),
            log_lines: std::sync::Arc::new(crate::ports::logging::budget::LogBudget::new(
                log_lines,
                limits
                    .log_kib_per_second
                    .unwrap_or(crate::ports::logging::budget::DEFAULT_KIB_PER_SECOND),
            )),
            lookups: Default::default(),
            blob_downloads: std::sync::Arc::new(tokio::sync::Semaphore::new(
                crate::triggers::http::MAX_BLOB_DOWNLOADS,
            )),
            sql_cursors: std::sync::Arc::new(tokio::sync::Semaphore::new(
                crate::ports::sql::host::MAX_APP_CURSORS,
            )),
            kv_memory: std::sync::Arc::new(crate::ports::kv::memory::MemoryBudget::new(
                limits
                    .kv_memory_mb
                    .map_or(crate::ports::kv::memory::MAX_MEMORY_BUCKET_BYTES, |mb| {
                        (mb as usize).saturating_mul(1 << 20)
                    }),
            )),
            memory_buckets: Default::default(),
            idle_holders: Default::default(),
            went_idle: Default::default(),
        }
    }

    /// Registers idle instances holding the app's places, so that
    /// [`Self::try_instance_permit`] can drop them for a place. Returns
    /// what the holder notifies (`notify_waiters`) each time an instance
    /// of its goes idle.
    pub fn hold_idle(
        &self,
        holder: std::sync::Weak<dyn IdleInstances>,
    ) -> std::sync::Arc<WentIdle> {
        let mut holders = self.idle_holders.lock().unwrap_or_else(|p| p.into_inner());
        holders.retain(|h| h.strong_count() > 0);
        holders.push(holder);
        self.went_idle.clone()
    }

    /// The places among the app's instances of an instance weighing
    /// `weight`, if they are free, or once idle instances holding them
    /// were dropped for them: the app's own idle warm instances never keep
    /// it from serving.
    pub fn try_instance_permit(&self, weight: u32) -> Option<InstancePermit> {
        let weight = self.weighed(weight);
        loop {
            if let Ok(permit) = self.instances.clone().try_acquire_many_owned(weight) {
                return Some(permit);
            }
            if !self.drop_an_idle_instance() {
                return None;
            }
        }
    }

    /// The places among the app's instances of an instance weighing
    /// `weight`, waiting for them when they are neither free nor held by
    /// idle instances: until one is given back, or an
    /// instance goes idle and can be dropped for it. `None` only if the
    /// limit was closed, which it never is.
    pub async fn instance_permit(&self, weight: u32) -> Option<InstancePermit> {
        if let Some(permit) = self.try_instance_permit(weight) {
            return Some(permit);
        }
        let weight = self.weighed(weight);
        // Counted first, then listening, then trying again: an instance
        // going idle meanwhile is either seen by the try, or tells.
        let _waiting = Waiting::new(&self.went_idle);
        loop {
            let went_idle = self.went_idle.notify.notified();
            tokio::pin!(went_idle);
            went_idle.as_mut().enable();
            if let Some(permit) = self.try_instance_permit(weight) {
                return Some(permit);
            }
            tokio::select! {
                permit = self.instances.clone().acquire_many_owned(weight) => return permit.ok(),
                () = went_idle => {}
            }
        }
    }

    /// The host's instance slots for an instance weighing `weight`,
    /// dropping the app's own idle warm instances while none are free: on
    /// `berth up` the app's share is the whole host, so its idle instances
    /// could otherwise hold every slot, and its next request get a 503.
    pub fn try_host_slot(
        &self,
        engine: &crate::engine::HostEngine,
        weight: u32,
    ) -> Option<crate::engine::InstanceSlot> {
        loop {
            if let Some(slot) = engine.try_instance_slot(weight) {
                return Some(slot);
            }
            if !self.drop_an_idle_instance() {
                return None;
            }
        }
    }

    /// The places of an instance weighing `weight` (see
    /// [`crate::engine::HostEngine::pool_weight`]), at most the app's all.
    fn weighed(&self, weight: u32) -> u32 {
        weight.clamp(1, self.instance_limit.min(MAX_PLACES))
    }

    fn drop_an_idle_instance(&self) -> bool {
        let holders: Vec<_> = self
            .idle_holders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect();
        holders.iter().any(|holder| holder.drop_oldest())
    }

    /// The app's in-memory kv bucket `name`: the one its live version
    /// holds, so a reload keeps the contents, or a new empty one sharing
    /// the app's `kv_memory_mb`. A bucket no version holds any more (its
    /// name left the manifest) is gone with its contents.
    pub fn memory_bucket(
        &self,
        name: &str,
    ) -> std::sync::Arc<crate::ports::kv::memory::MemoryBucket> {
        let mut buckets = self
            .memory_buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(live) = buckets.get(name).and_then(std::sync::Weak::upgrade) {
            return live;
        }
        buckets.retain(|_, bucket| bucket.strong_count() > 0);
        let bucket = std::sync::Arc::new(crate::ports::kv::memory::MemoryBucket::in_budget(
            self.kv_memory.clone(),
        ));
        buckets.insert(name.to_string(), std::sync::Arc::downgrade(&bucket));
        bucket
    }
}

/// Half of what memory this process may use: the machine's
/// (`/proc/meminfo`), or its cgroups' lowest limit where that is lower;
/// 4 GiB where neither can be read.
fn half_the_machines_memory() -> u64 {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            kib.checked_mul(1024)
        });
    // cgroup v2 ("max" when unlimited): the process's own group and those
    // above it (a systemd unit's `MemoryMax=`, a container's limit).
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
        })
        .unwrap_or_default();
    let cgroup = std::path::Path::new(&own)
        .ancestors()
        .filter_map(|group| {
            let group = group.strip_prefix("/").unwrap_or(group);
            let file = std::path::Path::new("/sys/fs/cgroup")
                .join(group)
                .join("memory.max");
            std::fs::read_to_string(file)
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .min();
    let total = match (machine, cgroup) {
        (Some(m), Some(c)) => m.min(c),
        (Some(m), None) => m,
        (None, Some(c)) => c,
        (None, None) => 8 << 30,
    };
    total / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_takes_as_many_places_as_it_weighs() {
        let mut host = crate::config::HostConfig::default();
        host.app_limits.max_instances = Some(3);
        let allowance = AppAllowance::new(&host, 8);
        let heavy = allowance.try_instance_permit(2).expect("2 of 3 places");
        assert!(allowance.try_instance_permit(2).is_none());
        let light = allowance.try_instance_permit(1).expect("the last place");
        drop(heavy);
        // Heavier than the whole share: it takes the whole share.
        assert!(allowance.try_instance_permit(50).is_none());
        drop(light);
        assert!(allowance.try_instance_permit(50).is_some());
    }

    #[test]
    fn bursts_up_to_the_count_then_refills_at_the_rate() {
        let bucket = TokenBucket::new(3, Duration::from_secs(3));
        assert!((0..3).all(|_| bucket.take()));
        assert!(!bucket.take(), "the burst is spent");
        // One token comes back every second (the margins are wide, so a
        // loaded machine does not fail the test).
        std::thread::sleep(Duration::from_millis(1100));
        assert!(bucket.take());
        assert!(!bucket.take());
    }

    /// An app's in-memory buckets outlive a reload (the new version gets
    /// the bucket the old one holds, contents and all) and share the app's
    /// `kv_memory_mb`; a bucket no version holds is gone.
    #[tokio::test]
    async fn memory_buckets_belong_to_the_app() {
        use crate::ports::kv::KvBackend as _;
        let mut host = crate::config::HostConfig::default();
        host.app_limits.kv_memory_mb = Some(1);
        let allowance = AppAllowance::new(&host, 8);
        let old = allowance.memory_bucket("cache");
        old.set("k", b"v".to_vec(), None).await.unwrap();
        let new = allowance.memory_bucket("cache");
        assert_eq!(new.get("k").await.unwrap(), Some(b"v".to_vec()));
        // One MiB for all of them: what one holds, another cannot take.
        let other = allowance.memory_bucket("other");
        other.set("big", vec![0; 900 << 10], None).await.unwrap();
        let full = new.set("big", vec![0; 200 << 10], None).await;
        assert!(full.is_err(), "{full:?}");
        drop((old, new, other));
        let again = allowance.memory_bucket("cache");
        assert_eq!(again.get("k").await.unwrap(), None);
        again.set("big", vec![0; 900 << 10], None).await.unwrap();
    }
}
