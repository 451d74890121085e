//! The process-wide engine: one wasmtime `Engine` with the pooling
//! allocator and epoch interruption, one `Linker` with every port, one epoch
//! ticker thread, and the on-disk cache of compiled components.

use std::hash::{Hash, Hasher};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::state::InstanceState;

#[path = "engine_cache.rs"]
mod cache;
#[path = "engine_compile.rs"]
mod compile;
#[path = "engine_files.rs"]
mod files;
pub use cache::default_cache_dir;
use cache::{LoadedComponents, remove_stale_artifacts, write_atomically};
use files::check_is_component;

/// How often the epoch advances; the granularity of time limits and of the
/// yields that keep a spinning guest from starving its neighbours.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Sizing of the engine, from the host config.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Instances that may exist at once (pool slots).
    pub max_instances: u32,
    /// Largest linear memory any component may be granted.
    pub max_memory_bytes: u64,
    /// Where compiled components are cached.
    pub cache_dir: PathBuf,
    /// What the cache may hold: past it, the entries used least lately
    /// are removed (see [`cache::trim_cache`]).
    pub cache_max_bytes: u64,
    /// Largest component file accepted for compilation.
    pub max_component_bytes: u64,
    /// Longest a component may take to compile before its load is refused.
    pub max_compile_time: std::time::Duration,
    /// Worker threads long-running invocations may occupy at once (see
    /// [`crate::fairness`]); `None`: one fewer than the cores.
    pub long_running_workers: Option<usize>,
    /// Memory all of the process's SQLite databases may allocate together
    /// (see [`crate::ports::sql::sqlite::limit_memory`]).
    pub sqlite_memory_bytes: u64,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            max_instances: 1000,
            max_memory_bytes: 1 << 30,
            cache_dir: default_cache_dir(),
            cache_max_bytes: 10 << 30,
            max_component_bytes: 256 << 20,
            max_compile_time: std::time::Duration::from_secs(300),
            long_running_workers: None,
            sqlite_memory_bytes: crate::ports::sql::sqlite::DEFAULT_MEMORY_BYTES,
        }
    }
}

/// The apps' allowances (see [`HostEngine::app_allowance`]).
#[derive(Default)]
struct AppAllowances {
    /// Each app's, by the app's state directory (its name, on one host):
    /// kept while any version of the app, or any of its instances, lives.
    live: std::collections::HashMap<PathBuf, std::sync::Weak<crate::rate::AppAllowance>>,
    /// Those of versions dropped within the last [`ALLOWANCE_KEPT`], oldest
    /// first (see [`HostEngine::keep_allowance_a_while`]).
    kept: std::collections::VecDeque<(std::time::Instant, Arc<crate::rate::AppAllowance>)>,
}

/// How long an app's allowance outlives its last version: its rates are
/// per second or per minute, so a tenant that removes its manifest and
/// puts it back finds the buckets it had emptied still empty.
const ALLOWANCE_KEPT: std::time::Duration = std::time::Duration::from_secs(60);

/// One of the host's instance slots (`[engine] max_instances`), held by a
/// store for its whole life. Invocations take one before they build a
/// store, so a host at capacity answers at once (HTTP: 503) or waits
/// (messages, commands) instead of failing inside the pooling allocator.
pub type InstanceSlot = tokio::sync::OwnedSemaphorePermit;

/// The process-lifetime half of the host. Cheap to clone.
#[derive(Clone)]
pub struct HostEngine {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<InstanceState>,
    cache_dir: PathBuf,
    /// Whether `cache_dir` is read and written (see
    /// [`cache::secure_cache_dir`]).
    cache_usable: bool,
    engine_hash: String,
    settings: EngineSettings,
    turns: crate::fairness::CpuTurns,
    instance_slots: Arc<tokio::sync::Semaphore>,
    /// Each app's allowance (see [`AppAllowances`]).
    app_allowances: std::sync::Mutex<AppAllowances>,
    /// Components loaded lately, by the SHA-256 of their bytes: apps that
    /// ship the same component share its compiled code and metadata
    /// instead of each mapping its own copy.
    loaded: std::sync::Mutex<LoadedComponents>,
    /// Digests of components whose compile was abandoned past
    /// `max_compile_time`: refused at once from then on.
    too_slow: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The digests of component files read lately.
    known_digests: files::KnownDigests,
    /// Where tenants' compiles wait for their turn.
    compile_turns: compile::CompileTurns,
    stop_ticker: Arc<AtomicBool>,
}

/// A compile running longer than this is announced, then reported on every
/// [`COMPILE_PROGRESS_EVERY`] until it ends (large Python or JavaScript
/// guests take seconds to compile the first time).
const COMPILE_PROGRESS_AFTER: Duration = Duration::from_secs(1);
/// The most core instances, memories and tables one component may have.
const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 64;
const MAX_MEMORIES_PER_COMPONENT: u32 = 8;
const MAX_TABLES_PER_COMPONENT: u32 = 32;
/// The memories and tables the pooling allocator holds per instance slot.
const MEMORIES_PER_SLOT: u32 = 2;
const TABLES_PER_SLOT: u32 = 4;
/// Pool slots beyond `[engine] max_instances`, for instances whose host
/// slot is free but whose store is still being dropped (see
/// [`engine_config`]; [`crate::fairness::retire`] frees the pool's first,
/// other drops may not); never taken otherwise, since the host's slots
/// gate every instantiation.
const RETIRING_SLOTS: u32 = 64;

/// Components refused as too slow to compile that are remembered.
const MAX_TOO_SLOW: usize = 4096;
const COMPILE_PROGRESS_EVERY: Duration = Duration::from_secs(5);

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl HostEngine {
    /// Builds the engine, its linker and starts the epoch ticker.
    pub fn new(settings: EngineSettings) -> anyhow::Result<HostEngine> {
        // SQLite's heap limit is the process's, whichever engine sets it.
        crate::ports::sql::sqlite::limit_memory(settings.sqlite_memory_bytes)
            .map_err(|e| anyhow::anyhow!("cannot bound SQLite's memory: {e}"))?;
        let cache_usable = cache::secure_cache_dir(&settings.cache_dir)?;
        let engine = Engine::new(&engine_config(&settings)).map_err(anyhow::Error::from)?;
        let linker = crate::app::linker(&engine)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        let engine_hash = format!("{:016x}", hasher.finish());
        let stop_ticker = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(engine.weak(), stop_ticker.clone())?;
        Ok(HostEngine {
            inner: Arc::new(Inner {
                engine,
                linker,
                cache_dir: settings.cache_dir.clone(),
                cache_usable,
                engine_hash,
                turns: match settings.long_running_workers {
                    Some(n) => crate::fairness::CpuTurns::new(n),
                    None => crate::fairness::CpuTurns::for_this_machine(),
                },
                instance_slots: Arc::new(tokio::sync::Semaphore::new(
                    settings.max_instances.max(1) as usize,
                )),
                loaded: Default::default(),
                too_slow: Default::default(),
                known_digests: Default::default(),
                compile_turns: Default::default(),
                app_allowances: Default::default(),
                settings,
                stop_ticker,
            }),
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The linker holding every WASI interface and port.
    pub fn linker(&self) -> &Linker<InstanceState> {
        &self.inner.linker
    }

    /// The turns long-running invocations share.
    pub fn cpu_turns(&self) -> &crate::fairness::CpuTurns {
        &self.inner.turns
    }

    /// The instance slots (`weight`, see [`Self::pool_weight`]) of one
    /// instance, if they are free now.
    pub fn try_instance_slot(&self, weight: u32) -> Option<InstanceSlot> {
        let weight = weight.clamp(1, self.inner.settings.max_instances.max(1));
        self.inner
            .instance_slots
            .clone()
            .try_acquire_many_owned(weight)
            .ok()
    }

    /// The instance slots (`weight`) of one instance, waiting for them to
    /// be freed if the host is at capacity.
    pub async fn instance_slot(&self, weight: u32) -> InstanceSlot {
        let weight = weight.clamp(1, self.inner.settings.max_instances.max(1));
        self.inner
            .instance_slots
            .clone()
            .acquire_many_owned(weight)
            .await
            .expect("the instance-slot semaphore is never closed")
    }

    /// How many instance slots an instance of `component` takes: one,
    /// or more for a component with more memories or tables than the
    /// pooling allocator holds per slot (2 and 4), so that no component
    /// can use up the allocator's memories or tables while slots are
    /// free, and other tenants' instances fail for want of them.
    pub fn pool_weight(component: &Component) -> u32 {
        let Some(needs) = component.resources_required() else {
            // Core modules it imports: as many as any component may have.
            return MAX_MEMORIES_PER_COMPONENT
                .div_ceil(MEMORIES_PER_SLOT)
                .max(MAX_TABLES_PER_COMPONENT.div_ceil(TABLES_PER_SLOT));
        };
        needs
            .num_memories
            .div_ceil(MEMORIES_PER_SLOT)
            .max(needs.num_tables.div_ceil(TABLES_PER_SLOT))
            .max(1)
    }

    /// The allowance of the app whose state lies in `state_dir` (see
    /// [`crate::rate::AppAllowance`]): the same for every version of the
    /// app alive at once, made with `make` for the first.
    pub fn app_allowance(
        &self,
        state_dir: &Path,
        make: impl FnOnce() -> crate::rate::AppAllowance,
    ) -> Arc<crate::rate::AppAllowance> {
        let mut apps = self
            .inner
            .app_allowances
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(live) = apps.live.get(state_dir).and_then(std::sync::Weak::upgrade) {
            return live;
        }
        apps.live
            .retain(|_, allowance| allowance.strong_count() > 0);
        let allowance = Arc::new(make());
        apps.live
            .insert(state_dir.to_path_buf(), Arc::downgrade(&allowance));
        allowance
    }

    /// Keeps `allowance`, whose app version is being dropped, for
    /// [`ALLOWANCE_KEPT`], so the app's next version gets it back even when
    /// none of its instances outlives this one.
    pub fn keep_allowance_a_while(&self, allowance: &Arc<crate::rate::AppAllowance>) {
        let mut apps = self
            .inner
            .app_allowances
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        while apps
            .kept
            .front()
            .is_some_and(|(since, _)| now.duration_since(*since) > ALLOWANCE_KEPT)
        {
            apps.kept.pop_front();
        }
        // One entry per app at most: a newer drop renews it.
        apps.kept.retain(|(_, kept)| !Arc::ptr_eq(kept, allowance));
        apps.kept.push_back((now, allowance.clone()));
    }

    /// Instance slots free now (for tests and metrics).
    pub fn free_instance_slots(&self) -> usize {
        self.inner.instance_slots.available_permits()
    }

    /// The settings the engine was built with.
    pub fn settings(&self) -> &EngineSettings {
        &self.inner.settings
    }

    /// Loads the component at `path`, from the compiled cache when this
    /// engine compiled the same bytes before. Compilation runs on a
    /// blocking thread, never on the threads serving requests; a file over
    /// `max_component_bytes` or a compile past `max_compile_time` is
    /// refused. (A compile past its time is abandoned, not stopped: its
    /// thread finishes in the background and the result is dropped; a
    /// tenant's compiles take turns, see `engine_compile.rs`.)
    pub async fn load_component(&self, path: &Path) -> anyhow::Result<Component> {
        self.load_component_within(path, None).await
    }

    /// [`HostEngine::load_component`], refusing a file that does not lie
    /// in directory `root` (when given) once every link on its way is
    /// followed: a tenant's manifest (`berth serve`) names components in
    /// its own directory only, never another tenant's code (which would
    /// run under this tenant's grants and config).
    pub async fn load_component_within(
        &self,
        path: &Path,
        root: Option<&Path>,
    ) -> anyhow::Result<Component> {
        let settings = self.settings();
        let max = settings.max_component_bytes;
        let read = crate::fairness::blocking(|| {
            let (file, identity) = files::open_component(path, max, root)?;
            // Unchanged since it was last read, and still loaded: neither
            // read nor hashed again.
            let known = self.inner.known_digests.get(&identity);
            if let Some(component) = known.and_then(|digest| self.reused(&digest)) {
                return anyhow::Ok(ControlFlow::Break(component));
            }
            let bytes = files::read_opened(file, path, max)?;
            let digest = hex::encode(Sha256::digest(&bytes));
            self.inner.known_digests.remember(identity, digest.clone());
            // Compiled before: no compile, so no turn to wait for.
            if let Some(component) = self.cached(&digest) {
                return anyhow::Ok(ControlFlow::Break(component));
            }
            anyhow::Ok(ControlFlow::Continue((bytes, digest)))
        })?;
        let (bytes, digest) = match read {
            ControlFlow::Break(loaded) => return Ok(loaded),
            ControlFlow::Continue(read) => read,
        };
        self.compile_in_turn(bytes, digest, path, root).await
    }

    /// [`Self::load_component`] on the calling thread, without its caps
    /// (for the host's own tools and tests).
    pub fn load_component_blocking(&self, path: &Path) -> anyhow::Result<Component> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read component {}", path.display()))?;
        check_is_component(&bytes).with_context(|| format!("cannot load {}", path.display()))?;
        self.compile_cached(&bytes)
            .with_context(|| format!("cannot compile component {}", path.display()))
    }

    /// Compiles `bytes`, reusing first a component this engine loaded
    /// lately from the same bytes, then the cached artifact this engine's
    /// configuration produced for them. The artifact's name carries the
    /// content digest and the engine hash (wasmtime's compatibility hash
    /// and Berth's version), so a new wasmtime, a changed engine config or
    /// a new Berth never picks up a stale one; wasmtime also checks each
    /// artifact's header, and one it refuses (or a damaged file) is
    /// recompiled and replaced. Artifacts of other engine hashes for the
    /// same bytes are removed when a new one is written. Only artifacts
    /// written by this function are ever deserialized.
    pub fn compile_cached(&self, bytes: &[u8]) -> anyhow::Result<Component> {
        let digest = hex::encode(Sha256::digest(bytes));
        if let Some(component) = self.cached(&digest) {
            return Ok(component);
        }
        self.compile_cached_unless(bytes, digest, &AtomicBool::new(false))
    }

    /// Compiles `bytes`, whose SHA-256 is `digest` and which are not in the
    /// cache (see [`Self::cached`]), unless a load of the same bytes did
    /// meanwhile, keeping nothing of a compile that was `abandoned` (past
    /// `[engine] max_compile_ms`) by the time it ended: neither the
    /// artifact, which the next load would take at once, nor the component.
    fn compile_cached_unless(
        &self,
        bytes: &[u8],
        digest: String,
        abandoned: &AtomicBool,
    ) -> anyhow::Result<Component> {
        let engine = &self.inner.engine;
        if let Some(component) = self.reused(&digest) {
            return Ok(component);
        }
        let path = self.artifact_path(&digest);
        let usable = self.inner.cache_usable;
        let started = std::time::Instant::now();
        let compiled = engine
            .precompile_component(bytes)
            .map_err(anyhow::Error::from)?;
        tracing::debug!(elapsed = ?started.elapsed(), "compiled component");
        if abandoned.load(Ordering::SeqCst) {
            anyhow::bail!("compile abandoned past [engine] max_compile_ms");
        }
        if usable {
            if let Err(e) = write_atomically(&path, &compiled) {
                tracing::warn!(path = %path.display(), error = %e, "cannot write compiled-component cache");
            }
            remove_stale_artifacts(&self.inner.cache_dir, &digest, &path);
            cache::trim_cache(
                &self.inner.cache_dir,
                &path,
                self.inner.settings.cache_max_bytes,
            );
        }
        let component = deserialize_own_bytes(engine, &compiled)?;
        self.loaded().insert(digest, component.clone());
        Ok(component)
    }

    /// Where the compiled artifact of the component with SHA-256 `digest`
    /// is cached for this engine.
    pub fn artifact_path(&self, digest: &str) -> PathBuf {
        self.inner
            .cache_dir
            .join(format!("{digest}-{}.cwasm", self.inner.engine_hash))
    }

    /// The component of `digest` loaded lately, if still kept, its cache
    /// entry marked used (see [`cache::trim_cache`]).
    fn reused(&self, digest: &str) -> Option<Component> {
        let component = self.loaded().get(digest)?;
        if self.inner.cache_usable {
            cache::mark_used(&self.artifact_path(digest));
        }
        Some(component)
    }

    /// The component of `digest` compiled before: loaded lately, or in the
    /// cache (an entry that does not load is logged, and `None`). Does
    /// file I/O: call it on a blocking thread.
    fn cached(&self, digest: &str) -> Option<Component> {
        if let Some(component) = self.reused(digest) {
            return Some(component);
        }
        let path = self.artifact_path(digest);
        if !self.inner.cache_usable || !path.exists() {
            return None;
        }
        match deserialize_own_artifact(&self.inner.engine, &path) {
            Ok(component) => {
                // Its time of use: the cache is trimmed by it.
                cache::mark_used(&path);
                self.loaded().insert(digest.to_owned(), component.clone());
                Some(component)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "discarding unusable cached component; recompiling");
                None
            }
        }
    }

    fn too_slow(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        // A set of digests: no invariant a panic could break.
        self.inner
            .too_slow
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn loaded(&self) -> std::sync::MutexGuard<'_, LoadedComponents> {
        // The map holds no invariant a panic could break.
        self.inner
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The wasmtime configuration of [`HostEngine`] (public so benchmarks can
/// compare against bare wasmtime with the same settings).
pub fn engine_config(settings: &EngineSettings) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.memory_init_cow(true);
    // Only the proposals wasip2 guests use, whatever wasmtime's defaults
    // or crate features become: each one more is more of the compiler a
    // tenant's component can reach, and 64-bit or several memories per
    // module would meet limits sized for one 32-bit memory.
    config
        .wasm_memory64(false)
        .wasm_multi_memory(false)
        .wasm_gc(false)
        .wasm_wide_arithmetic(false)
        .wasm_custom_page_sizes(false);
    // The host's slots, plus room for stores being dropped: a store gives
    // its host slot back (with its data) just before wasmtime returns its
    // memories and tables to the pool, so without the spare an invocation
    // let in by that slot could find the pool still full and fail.
    let n = settings.max_instances.max(1).saturating_add(RETIRING_SLOTS);
    let mut pool = PoolingAllocationConfig::default();
    // Core instances are only counted (memories and tables are reserved
    // slots): every instance may have as many as any component.
    // Memories and tables are weighed per instance ([`HostEngine::pool_weight`]).
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(MAX_CORE_INSTANCES_PER_COMPONENT))
        .total_memories(n.saturating_mul(MEMORIES_PER_SLOT))
        .total_tables(n.saturating_mul(TABLES_PER_SLOT))
        .total_stacks(n)
        .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
        .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
        .max_memory_size(settings.max_memory_bytes as usize)
        .max_component_instance_size(4 << 20)
        .max_core_instance_size(4 << 20)
        // Instance per request/message: reuse slots without returning their
        // pages to the kernel each time. Resetting up to 1 MiB of linear
        // memory (and the tables and stacks) with memset, batching the
        // remaining decommits, and scanning for dirty pages (Linux 6.7+)
        // avoids the madvise calls and TLB shootdowns that otherwise
        // dominate a short invocation.
        .linear_memory_keep_resident(1 << 20)
        .table_keep_resident(64 << 10)
        .async_stack_keep_resident(64 << 10)
        .decommit_batch_size(16)
        .pagemap_scan(wasmtime::Enabled::Auto);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// Starts the thread whose ticks bound guests' time: without it no time
/// limit holds, so failing to start it fails the host.
fn spawn_epoch_ticker(engine: wasmtime::EngineWeak, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("berth-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                match engine.upgrade() {
                    Some(e) => e.increment_epoch(),
                    None => return,
                }
            }
        })
        .map(drop)
        .map_err(|e| anyhow::anyhow!("cannot start the thread that bounds guests' time: {e}"))
}

#[expect(unsafe_code, reason = "deserializing artifacts this host wrote itself")]
fn deserialize_own_artifact(engine: &Engine, path: &Path) -> anyhow::Result<Component> {
    // SAFETY: the file is in Berth's cache directory, named by the content
    // hash and engine hash, and was produced by `precompile_component` of an
    // engine with the same configuration. wasmtime also checks its header.
    unsafe { Component::deserialize_file(engine, path) }.map_err(anyhow::Error::from)
}

#[expect(unsafe_code, reason = "deserializing bytes this host just compiled")]
fn deserialize_own_bytes(engine: &Engine, bytes: &[u8]) -> anyhow::Result<Component> {
    // SAFETY: `bytes` come straight from `Engine::precompile_component`.
    unsafe { Component::deserialize(engine, bytes) }.map_err(anyhow::Error::from)
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
