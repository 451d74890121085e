//! `[engine]` of the host config: the engine's sizing, and the ceilings
//! on what any manifest may ask for.

use std::path::PathBuf;

use serde::Deserialize;

/// Engine sizing in the host config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Instances alive at once.
    pub max_instances: Option<u32>,
    /// Largest memory any component may be granted, in MiB.
    pub max_memory_mb: Option<u64>,
    /// Compiled-component cache directory.
    pub cache_dir: Option<PathBuf>,
    /// MiB the compiled-component cache may hold; default 10 240.
    pub cache_max_mb: Option<u64>,
    /// Longest `timeout_ms` any component may be granted.
    pub max_timeout_ms: Option<u64>,
    /// Largest `concurrency` any component may be granted.
    pub max_concurrency: Option<u32>,
    /// Largest `outbound_requests` any component may be granted.
    pub max_outbound_requests: Option<u32>,
    /// Largest component file accepted, in MiB; default 256.
    pub max_component_mb: Option<u64>,
    /// Longest compile of one component, in milliseconds; default 300 000.
    pub max_compile_ms: Option<u64>,
    /// Worker threads long-running invocations may occupy at once;
    /// default one fewer than the cores (see `docs/security.md`).
    pub long_running_workers: Option<usize>,
    /// Largest `handles` any component may be granted.
    pub max_handles: Option<usize>,
    /// MiB all of the host's SQLite databases (embedded SQL and key-value
    /// stores, the embedded broker) may allocate together; default 1024.
    /// Past half of it SQLite trims its page caches; an allocation past it
    /// fails, and the call gets `unavailable`, where a statement making
    /// huge values would otherwise exhaust the host's memory.
    pub sqlite_memory_mb: Option<u64>,
    /// Largest payload caps any component may be granted
    /// (`[engine.max_payloads]`, the manifest's payload keys).
    #[serde(default)]
    pub max_payloads: crate::limits::PayloadSettings,
}

/// The maxima `berth serve` applies where the host config sets none:
/// `max_timeout_ms`, `max_concurrency`, `max_outbound_requests` and
/// `max_handles` (see [`EngineConfig::default_tenant_maxima`]).
pub const TENANT_MAXIMA: (u64, u32, u32, usize) = (60_000, 50, 20, 10_000);

/// A component's linear memory is at most 4 GiB (wasm32), and wasmtime
/// reserves no more per memory.
pub const MAX_MEMORY_MB: u64 = 4096;

impl EngineConfig {
    /// Refuses values the host cannot use, naming the key: a 0 (no
    /// instance, no time or no compile at all would be allowed) and
    /// sizes past what the engine can give. The manifest's own bounds are
    /// the same, so a component may be granted up to what the host allows.
    pub(super) fn validate(&self) -> Result<(), String> {
        let within = |key: &str, value: Option<u64>, min: u64, max: u64| match value {
            Some(v) if !(min..=max).contains(&v) => Err(format!(
                "`engine.{key}` is {v}; it must be {min}..={max}{}",
                if key == "max_memory_mb" {
                    " (a component's memory is at most 4 GiB)"
                } else if key == "max_handles" {
                    " (the host itself holds a few handles per invocation)"
                } else {
                    ""
                }
            )),
            _ => Ok(()),
        };
        let wide = |n: Option<u32>| n.map(u64::from);
        within(
            "max_instances",
            wide(self.max_instances),
            1,
            u32::MAX.into(),
        )?;
        within("max_memory_mb", self.max_memory_mb, 1, MAX_MEMORY_MB)?;
        within("max_timeout_ms", self.max_timeout_ms, 1, u64::MAX)?;
        within(
            "max_concurrency",
            wide(self.max_concurrency),
            1,
            u32::MAX.into(),
        )?;
        within("max_component_mb", self.max_component_mb, 1, 1 << 20)?;
        within("max_compile_ms", self.max_compile_ms, 1, u64::MAX)?;
        within("cache_max_mb", self.cache_max_mb, 64, 1 << 30)?;
        // Each is a permit of a semaphore, which takes far fewer than
        // u64::MAX (and more workers than threads would mean nothing).
        within(
            "long_running_workers",
            self.long_running_workers.map(|n| n as u64),
            1,
            1 << 16,
        )?;
        within("sqlite_memory_mb", self.sqlite_memory_mb, 64, 1 << 30)?;
        within(
            "max_handles",
            self.max_handles.map(|n| n as u64),
            16,
            1_000_000,
        )?;
        self.max_payloads
            .apply(&mut crate::limits::PayloadLimits::default())
            .map_err(|(key, m)| format!("`engine.max_payloads.{key}` {m}"))
    }

    /// On `berth serve`, the maxima the operator left unset: tenants write
    /// their own manifests, so none may grant itself an hour per
    /// invocation, a million handles or unbounded concurrency only because
    /// the host config says nothing ([`TENANT_MAXIMA`]).
    pub fn default_tenant_maxima(&mut self) {
        let (timeout_ms, concurrency, outbound_requests, handles) = TENANT_MAXIMA;
        self.max_timeout_ms.get_or_insert(timeout_ms);
        self.max_concurrency.get_or_insert(concurrency);
        self.max_outbound_requests.get_or_insert(outbound_requests);
        self.max_handles.get_or_insert(handles);
    }

    /// `limits` with every value capped by this host's maxima; the caller
    /// logs what changed.
    pub fn cap(&self, limits: &crate::limits::ComponentLimits) -> crate::limits::ComponentLimits {
        let mut capped = limits.clone();
        if let Some(mb) = self.max_memory_mb {
            // Checked at load ([`HostConfig::load`]); saturating for a
            // config built in code, where a shift would silently wrap.
            capped.memory_bytes = capped.memory_bytes.min(mb.saturating_mul(1 << 20));
        }
        if let Some(ms) = self.max_timeout_ms {
            capped.timeout = capped.timeout.min(std::time::Duration::from_millis(ms));
        }
        if let Some(n) = self.max_concurrency {
            capped.concurrency = capped.concurrency.min(n.max(1));
        }
        if let Some(n) = self.max_outbound_requests {
            capped.outbound_requests = capped.outbound_requests.min(n);
        }
        if let Some(n) = self.max_handles {
            capped.handles = capped.handles.min(n.max(1));
        }
        self.max_payloads.cap(&mut capped.payloads);
        capped
    }
}
