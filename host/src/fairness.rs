//! CPU fairness between invocations of all tenants.
//!
//! A guest runs on the async executor's worker threads and yields at every
//! epoch tick (10 ms). Yielding alone is not enough when many guests spin:
//! each worker round-robins between them, and a short request queued
//! behind four spinners waits 40 ms for every await. So an invocation that
//! is still running guest code at its second tick (10–20 ms of CPU without
//! returning) is *long-running*, and long-running invocations take turns:
//! each must hold a [`CpuTurns`] permit to run, and at most
//! `long_running_workers` (by default one fewer than the cores) hold one at
//! a time. Short requests never need a permit, so at least one worker is
//! always free for them, however many guests of however many tenants spin.
//!
//! A permit is a lease of [`LEASE`]: returned at the holder's next tick,
//! when its invocation ends, or when the lease runs out (so a guest that
//! holds a turn and then waits in a host call cannot keep it).
//!
//! A component one of whose invocations ran for [`HEAVY_TICKS`] ticks
//! (about 100 ms) is *heavy* for [`HEAVY_FOR`] after: its new invocations
//! wait for a turn before their first instruction, so a tenant sending a
//! stream of spinning requests cannot use the free worker even for the
//! first ticks of each. Ticks count wall time, host calls included (there
//! is no cheaper clock of guest CPU time), so the bar for *heavy* is set
//! well above what a short request delayed by contention reaches.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Longest one turn lasts before it is taken back.
pub const LEASE: Duration = Duration::from_millis(20);
/// Ticks of uninterrupted guest code after which an invocation is
/// long-running.
const LONG_RUNNING_TICKS: u32 = 2;
/// Ticks after which an invocation marks its component heavy.
pub const HEAVY_TICKS: u32 = 10;
/// How long a component stays heavy after such an invocation.
pub const HEAVY_FOR: Duration = Duration::from_secs(1);

/// When a component last had a long-running invocation, shared by all of
/// its invocations.
#[derive(Debug, Default)]
pub struct Heaviness {
    /// Milliseconds after [`EPOCH`] until which the component is heavy.
    until_ms: AtomicU64,
}

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

impl Heaviness {
    /// Whether the component ran long within the last [`HEAVY_FOR`].
    pub fn is_heavy(&self) -> bool {
        now_ms() < self.until_ms.load(Ordering::Relaxed)
    }

    fn mark(&self) {
        let until = now_ms() + HEAVY_FOR.as_millis() as u64;
        self.until_ms.fetch_max(until, Ordering::Relaxed);
    }
}

/// The turns long-running invocations share, one per worker they may use.
#[derive(Clone)]
pub struct CpuTurns {
    turns: Arc<Semaphore>,
}

impl CpuTurns {
    /// Turns for `workers` worker threads at once (at least one).
    pub fn new(workers: usize) -> Self {
        Self {
            turns: Arc::new(Semaphore::new(workers.max(1))),
        }
    }

    /// One fewer than the machine's cores, at least one.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self::new(cores.saturating_sub(1))
    }
}

/// The turn an invocation holds, with the number of its lease.
type HeldTurn = Arc<Mutex<Option<(u64, OwnedSemaphorePermit)>>>;

/// One invocation's place in the [`CpuTurns`]: how long it has run, and
/// the turn it holds.
pub struct Turn {
    turns: CpuTurns,
    heaviness: Arc<Heaviness>,
    ticks: u32,
    /// The turn held and its lease number; allocated at the first
    /// long-running tick, so a short invocation allocates nothing here.
    held: Option<HeldTurn>,
    lease: u64,
}

impl Turn {
    /// A fresh invocation's place, holding nothing, of a component whose
    /// recent invocations `heaviness` records.
    pub fn new(turns: CpuTurns, heaviness: Arc<Heaviness>) -> Self {
        let mut turn = Self {
            turns,
            heaviness,
            ticks: 0,
            held: None,
            lease: 0,
        };
        turn.reset();
        turn
    }

    /// Starts a new invocation (also in a reused instance). Returns the
    /// epoch deadline to arm: 0 for a heavy component, so that its first
    /// instruction already waits for a turn, else 1.
    pub fn reset(&mut self) -> u64 {
        self.release();
        if self.heaviness.is_heavy() {
            self.ticks = LONG_RUNNING_TICKS - 1;
            0
        } else {
            self.ticks = 0;
            1
        }
    }

    /// Ends the invocation: its turn, if any, goes back at once.
    pub fn finish(&mut self) {
        self.release();
    }

    fn release(&mut self) {
        if let Some(Ok(mut held)) = self.held.as_ref().map(|h| h.lock()) {
            held.take();
        }
    }

    /// Called at each epoch tick: `None` to simply yield, or the future to
    /// await instead (give back the turn, wait for the next one).
    pub fn tick(&mut self) -> Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>> {
        self.ticks = self.ticks.saturating_add(1);
        if self.ticks < LONG_RUNNING_TICKS {
            return None;
        }
        if self.ticks >= HEAVY_TICKS {
            self.heaviness.mark();
        }
        self.release();
        self.lease += 1;
        let held = self.held.get_or_insert_with(Default::default).clone();
        let (lease, turns) = (self.lease, self.turns.turns.clone());
        Some(Box::pin(async move {
            tokio::task::yield_now().await;
            let Ok(permit) = turns.acquire_owned().await else {
                return;
            };
            if let Ok(mut slot) = held.lock() {
                *slot = Some((lease, permit));
            }
            // The lease runs out even if the holder never ticks again.
            tokio::spawn(async move {
                tokio::time::sleep(LEASE).await;
                if let Ok(mut slot) = held.lock()
                    && slot.as_ref().is_some_and(|(l, _)| *l == lease)
                {
                    slot.take();
                }
            });
        }))
    }
}

impl Drop for Turn {
    /// An invocation that ends gives its turn back at once.
    fn drop(&mut self) {
        self.release();
    }
}

/// Drops a finished invocation's store: on a blocking thread when its
/// component is heavy (returning a large instance's memory to the pool or
/// the kernel can take milliseconds, which must not delay the short
/// requests on the worker threads), else right here.
/// The store's data, and with it the instance's host slot, goes after its
/// instances went back to the pool (`into_data`; a plain drop gives the
/// slot back first), so whoever takes the slot finds the pool's room free.
pub fn retire(store: wasmtime::Store<crate::state::InstanceState>) {
    if store.data().turn.heaviness.is_heavy() {
        tokio::task::spawn_blocking(move || drop(store.into_data()));
    } else {
        drop(store.into_data());
    }
}

/// Runs `work` that blocks on the file system (an app's embedded stores
/// opened, a custom path's search for other apps' markers, which reads up
/// to 100,000 directory entries) without holding a worker thread of a
/// multi-threaded runtime: the worker's other tasks (other tenants'
/// requests, on `berth serve`) move to a new worker meanwhile. On a
/// current-thread runtime (`berth run`, tests), where nothing else could
/// take them, `work` simply runs.
pub fn blocking<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permits(turns: &CpuTurns) -> usize {
        turns.turns.available_permits()
    }

    #[tokio::test]
    async fn long_running_invocations_take_turns_and_mark_their_component() {
        let turns = CpuTurns::new(1);
        let heaviness = Arc::new(Heaviness::default());
        let mut a = Turn::new(turns.clone(), heaviness.clone());
        // The first tick only yields; from the second on, a turn is needed.
        assert!(a.tick().is_none());
        a.tick().expect("long-running now").await;
        assert_eq!(permits(&turns), 0, "a holds the only turn");
        // Its next tick gives the turn back before waiting for one.
        let next = a.tick().expect("still long-running");
        assert_eq!(permits(&turns), 1);
        next.await;
        assert_eq!(permits(&turns), 0);
        // A lease runs out even if its holder never ticks again.
        for _ in 0..100 {
            if permits(&turns) == 1 {
                break;
            }
            tokio::time::sleep(LEASE).await;
        }
        assert_eq!(permits(&turns), 1, "the lease expired");

        assert!(!heaviness.is_heavy(), "short of HEAVY_TICKS");
        for _ in 3..HEAVY_TICKS {
            a.tick().expect("long-running").await;
        }
        assert!(heaviness.is_heavy());
        // The component's next invocation waits for a turn at once.
        let mut b = Turn::new(turns.clone(), heaviness.clone());
        assert_eq!(b.reset(), 0);
        assert!(b.tick().is_some(), "gated from its first tick");
        // A component that never ran long starts on the fast lane.
        let mut c = Turn::new(turns, Arc::new(Heaviness::default()));
        assert_eq!(c.reset(), 1);
        assert!(c.tick().is_none());
    }

    #[test]
    fn blocking_work_leaves_the_worker_to_other_tasks() {
        use std::sync::atomic::AtomicBool;
        // One worker: without handing it over, the task that sets the flag
        // could not run while `blocking` waits for it.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        let seen = runtime.block_on(async {
            let flag = Arc::new(AtomicBool::new(false));
            let set = flag.clone();
            let waiter = tokio::spawn(async move {
                blocking(|| {
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while !flag.load(Ordering::SeqCst) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    flag.load(Ordering::SeqCst)
                })
            });
            // Spawned after the waiter took the only worker.
            tokio::time::sleep(Duration::from_millis(20)).await;
            tokio::spawn(async move { set.store(true, Ordering::SeqCst) });
            waiter.await.unwrap()
        });
        assert!(seen, "the other task ran while `blocking` waited");
        // Outside a runtime, and on a current-thread one, it runs in place.
        assert_eq!(blocking(|| 7), 7);
        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(current.block_on(async { blocking(|| 8) }), 8);
    }
}
