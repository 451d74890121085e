//! Per-component resource limits and the errors raised when a guest exceeds
//! one.
//!
//! Limits come from the manifest (`[component.<name>.limits]`) and are capped
//! by the host maxima of the host config. When a guest exceeds one, the
//! instance traps with a [`LimitExceeded`] that the triggers turn into a clear
//! message (and an HTTP 503 for HTTP triggers).

use std::time::Duration;

use wasmtime::ResourceLimiter;

/// Default linear memory a component may use.
pub const DEFAULT_MEMORY_BYTES: u64 = 128 << 20;
/// Default time an invocation may take, guest code and host calls together.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default instances of one component alive at once.
pub const DEFAULT_CONCURRENCY: u32 = 100;
/// Default outbound HTTP requests one invocation may send.
pub const DEFAULT_OUTBOUND_REQUESTS: u32 = 100;
/// Default live resources (handles) one instance may hold.
pub const DEFAULT_HANDLES: usize = 10_000;
/// Most table elements an instance may grow to.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// The limits one component runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentLimits {
    /// Linear memory, in bytes, across the instance's memories.
    pub memory_bytes: u64,
    /// Wall-clock time per invocation.
    pub timeout: Duration,
    /// Instances of the component alive at once; an HTTP request beyond
    /// it is answered 503 at once, a message waits for a free slot.
    pub concurrency: u32,
    /// Outbound HTTP requests one invocation may send.
    pub outbound_requests: u32,
    /// Live resources (handles) one instance may hold; one more traps.
    pub handles: usize,
    /// Size caps for port payloads.
    pub payloads: PayloadLimits,
}

impl Default for ComponentLimits {
    fn default() -> Self {
        Self {
            memory_bytes: DEFAULT_MEMORY_BYTES,
            timeout: DEFAULT_TIMEOUT,
            concurrency: DEFAULT_CONCURRENCY,
            outbound_requests: DEFAULT_OUTBOUND_REQUESTS,
            handles: DEFAULT_HANDLES,
            payloads: PayloadLimits::default(),
        }
    }
}

/// Size caps for values crossing a port. Values a guest sends past these get
/// the port's `too-large` (or `invalid-input`) error; nothing is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadLimits {
    /// Most rows one `query` may return (a cursor reads more).
    pub sql_max_rows: usize,
    /// Most bytes (approximate, summed over values) one `query` may return.
    pub sql_max_result_bytes: usize,
    /// Largest key-value value.
    pub kv_max_value_bytes: usize,
    /// Largest key (key-value and blob), in bytes.
    pub max_key_bytes: usize,
    /// Largest object written by a single `put` or read by a single `get`.
    pub blob_max_put_bytes: usize,
    /// Largest chunk passed to `writer.write` or asked of `reader.read`.
    pub blob_max_chunk_bytes: usize,
    /// Most bytes one blob `writer` may write in all: without it, chunks
    /// within their cap would fill the disk or the bucket without end.
    pub blob_max_object_bytes: usize,
    /// Largest message payload.
    pub message_max_bytes: usize,
    /// Largest email body (text plus HTML).
    pub email_max_body_bytes: usize,
    /// Most recipients (to, cc and bcc together) of one email.
    pub email_max_recipients: usize,
    /// Most keys or objects one listing page returns.
    pub max_page_size: u32,
}

impl Default for PayloadLimits {
    fn default() -> Self {
        Self {
            sql_max_rows: 10_000,
            sql_max_result_bytes: 16 << 20,
            kv_max_value_bytes: 1 << 20,
            max_key_bytes: 1024,
            blob_max_put_bytes: 16 << 20,
            blob_max_chunk_bytes: 4 << 20,
            blob_max_object_bytes: 5 << 30,
            message_max_bytes: 1 << 20,
            email_max_body_bytes: 1 << 20,
            email_max_recipients: 50,
            max_page_size: 1000,
        }
    }
}

/// Payload caps as a manifest sets them (`[component.<name>.limits]`) or a
/// host config caps them (`[engine.max_payloads]`), in the units their
/// names say. Unset values keep the default (or leave it uncapped).
#[derive(Debug, Clone, Default, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PayloadSettings {
    /// Rows one SQL `query` may return.
    pub sql_max_rows: Option<u64>,
    /// MiB one SQL `query` may return.
    pub sql_max_result_mb: Option<u64>,
    /// KiB of one key-value value.
    pub kv_max_value_kb: Option<u64>,
    /// MiB of one blob `put` or `get`.
    pub blob_max_put_mb: Option<u64>,
    /// MiB of one blob chunk (`writer.write`, `reader.read`).
    pub blob_max_chunk_mb: Option<u64>,
    /// MiB one blob `writer` may write in all.
    pub blob_max_object_mb: Option<u64>,
    /// KiB of one message payload.
    pub message_max_kb: Option<u64>,
    /// KiB of one email body (text plus HTML).
    pub email_max_body_kb: Option<u64>,
    /// Recipients of one email (to, cc and bcc together).
    pub email_max_recipients: Option<u64>,
}

/// One payload setting: its key, the values it may take, and the limit it
/// sets (in bytes or a count).
struct PayloadKey {
    key: &'static str,
    max: u64,
    unit: u64,
    get: fn(&PayloadSettings) -> Option<u64>,
    set: fn(&mut PayloadLimits) -> &mut usize,
}

const PAYLOAD_KEYS: [PayloadKey; 9] = [
    PayloadKey {
        key: "sql_max_rows",
        max: 1_000_000,
        unit: 1,
        get: |s| s.sql_max_rows,
        set: |l| &mut l.sql_max_rows,
    },
    PayloadKey {
        key: "sql_max_result_mb",
        max: 1024,
        unit: 1 << 20,
        get: |s| s.sql_max_result_mb,
        set: |l| &mut l.sql_max_result_bytes,
    },
    PayloadKey {
        key: "kv_max_value_kb",
        max: 512 * 1024,
        unit: 1 << 10,
        get: |s| s.kv_max_value_kb,
        set: |l| &mut l.kv_max_value_bytes,
    },
    PayloadKey {
        key: "blob_max_put_mb",
        max: 1024,
        unit: 1 << 20,
        get: |s| s.blob_max_put_mb,
        set: |l| &mut l.blob_max_put_bytes,
    },
    PayloadKey {
        key: "blob_max_chunk_mb",
        max: 64,
        unit: 1 << 20,
        get: |s| s.blob_max_chunk_mb,
        set: |l| &mut l.blob_max_chunk_bytes,
    },
    PayloadKey {
        key: "blob_max_object_mb",
        // S3's largest object, 5 TiB.
        max: 5 << 20,
        unit: 1 << 20,
        get: |s| s.blob_max_object_mb,
        set: |l| &mut l.blob_max_object_bytes,
    },
    PayloadKey {
        key: "message_max_kb",
        max: 64 * 1024,
        unit: 1 << 10,
        get: |s| s.message_max_kb,
        set: |l| &mut l.message_max_bytes,
    },
    PayloadKey {
        key: "email_max_body_kb",
        max: 64 * 1024,
        unit: 1 << 10,
        get: |s| s.email_max_body_kb,
        set: |l| &mut l.email_max_body_bytes,
    },
    PayloadKey {
        key: "email_max_recipients",
        max: 1000,
        unit: 1,
        get: |s| s.email_max_recipients,
        set: |l| &mut l.email_max_recipients,
    },
];

impl PayloadSettings {
    /// Sets every given value in `limits`, or names the key out of range.
    pub fn apply(&self, limits: &mut PayloadLimits) -> Result<(), (&'static str, String)> {
        for k in &PAYLOAD_KEYS {
            if let Some(v) = (k.get)(self) {
                if v == 0 || v > k.max {
                    return Err((k.key, format!("must be 1..={}", k.max)));
                }
                *(k.set)(limits) = (v * k.unit) as usize;
            }
        }
        Ok(())
    }

    /// Lowers every limit in `limits` that is above the given maximum; a
    /// maximum not given is the default, so a manifest can raise a payload
    /// cap only as far as the operator allows. (Results and objects are
    /// buffered in host memory, outside the guest's `memory_mb`.)
    pub fn cap(&self, limits: &mut PayloadLimits) {
        let mut defaults = PayloadLimits::default();
        for k in &PAYLOAD_KEYS {
            let max = match (k.get)(self) {
                Some(v) => v.clamp(1, k.max).saturating_mul(k.unit) as usize,
                None => *(k.set)(&mut defaults),
            };
            let limit = (k.set)(limits);
            *limit = (*limit).min(max);
        }
    }
}

/// A limit a guest ran into. Raised as the trap of the instance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    /// The invocation ran past its time limit.
    #[error("time limit exceeded: the invocation ran longer than {0:?}")]
    Timeout(Duration),
    /// The guest tried to grow its linear memory past its limit.
    #[error(
        "memory limit exceeded: the guest tried to grow its memory to {requested} bytes (all its memories together), the limit is {limit} bytes"
    )]
    Memory {
        /// Bytes the guest asked for.
        requested: usize,
        /// The limit.
        limit: u64,
    },
    /// The guest tried to grow a table past its limit.
    #[error("table limit exceeded: the guest asked for {0} table elements")]
    Table(usize),
    /// The instance holds as many handles (resources) as it may.
    #[error("handle limit exceeded: the instance already holds {0} handles")]
    Handles(usize),
    /// All the component's instance slots are busy.
    #[error("concurrency limit reached: {0} instances of this component are already running")]
    Concurrency(u32),
    /// The app runs as many instances as `[app_limits] max_instances`
    /// allows it.
    #[error(
        "app at capacity: {0} instances of this app are already running ([app_limits] max_instances); retry later"
    )]
    AppInstances(u32),
    /// The app's instances together would hold more linear memory than
    /// `[app_limits] memory_mb` allows.
    #[error(
        "app memory limit exceeded: this app's instances together would hold more than {0} bytes of linear memory ([app_limits] memory_mb); retry later"
    )]
    AppMemory(u64),
    /// Every instance slot of the host is in use (`[engine] max_instances`,
    /// or one of the pooling allocator's pools).
    #[error(
        "host at capacity: every instance slot of this host is in use ([engine] max_instances); retry later"
    )]
    Instances,
}

impl LimitExceeded {
    /// Finds a limit error in a trap's error chain.
    pub fn find(error: &wasmtime::Error) -> Option<LimitExceeded> {
        error
            .chain()
            .find_map(|e| e.downcast_ref::<LimitExceeded>())
            .cloned()
    }
}

/// The linear memory one app's instances hold together, all its
/// components and versions (`[app_limits] memory_mb`): each instance's own
/// limit alone lets an app with many instances hold the host's memory.
#[derive(Debug)]
pub struct AppMemory {
    limit: u64,
    used: std::sync::atomic::AtomicU64,
}

impl AppMemory {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            used: Default::default(),
        }
    }

    /// The budget in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes the app's live instances hold.
    pub fn used(&self) -> u64 {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes `bytes` from the budget if they fit.
    fn reserve(&self, bytes: u64) -> bool {
        use std::sync::atomic::Ordering;
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    /// Gives back `bytes` taken by [`Self::reserve`].
    fn release(&self, bytes: u64) {
        use std::sync::atomic::Ordering;
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }
}

/// Enforces the memory and table limits of one instance.
#[derive(Debug)]
pub struct InstanceLimiter {
    memory_bytes: u64,
    /// The linear memory of all the instance's memories together: a
    /// component may have several (one per core instance that defines
    /// one), and the limit is the instance's, not each memory's.
    used: u64,
    /// The app's budget, which `used` is taken from and given back to
    /// when the instance goes.
    app: Option<std::sync::Arc<AppMemory>>,
}

impl InstanceLimiter {
    /// A limiter allowing `memory_bytes` of linear memory.
    pub fn new(memory_bytes: u64) -> Self {
        Self {
            memory_bytes,
            used: 0,
            app: None,
        }
    }

    /// A limiter allowing `memory_bytes` of linear memory, as long as the
    /// app's instances together stay within `app`.
    pub fn within_app(memory_bytes: u64, app: std::sync::Arc<AppMemory>) -> Self {
        Self {
            app: Some(app),
            ..Self::new(memory_bytes)
        }
    }
}

impl Drop for InstanceLimiter {
    fn drop(&mut self) {
        if let Some(app) = &self.app {
            app.release(self.used);
        }
    }
}

impl ResourceLimiter for InstanceLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            // Past the memory's own maximum: the grow fails (the guest
            // sees -1), and nothing is counted.
            return Ok(false);
        }
        let grant = (desired as u64).saturating_sub(current as u64);
        let total = self.used.saturating_add(grant);
        if total > self.memory_bytes {
            // Trapping (rather than failing the grow) gives the operator and
            // the HTTP client a clear cause instead of an allocator abort.
            return Err(wasmtime::Error::new(LimitExceeded::Memory {
                requested: usize::try_from(total).unwrap_or(usize::MAX),
                limit: self.memory_bytes,
            }));
        }
        if let Some(app) = &self.app
            && !app.reserve(grant)
        {
            return Err(wasmtime::Error::new(LimitExceeded::AppMemory(app.limit)));
        }
        // Counted as granted: a grow that then fails (the host out of
        // memory) counts until the instance goes, which errs on the safe
        // side. (wasmtime also reports failures of grows it never asked
        // about, so taking a grant back on failure could undercount.)
        self.used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Err(wasmtime::Error::new(LimitExceeded::Table(desired)));
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_limit_counts_every_memory_of_the_instance() {
        let mib = 1 << 20;
        let mut limiter = InstanceLimiter::new(8 * mib as u64);
        // Two memories of 3 MiB each, then one grows by 2 MiB: 8 MiB.
        assert!(limiter.memory_growing(0, 3 * mib, None).unwrap());
        assert!(limiter.memory_growing(0, 3 * mib, None).unwrap());
        assert!(limiter.memory_growing(3 * mib, 5 * mib, None).unwrap());
        // Each memory alone is under the limit; together they pass it.
        let err = limiter.memory_growing(3 * mib, 4 * mib, None).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<LimitExceeded>(),
                Some(LimitExceeded::Memory { requested, .. }) if *requested == 9 * mib
            ),
            "{err}"
        );
        // A grow past the memory's own maximum fails and counts nothing.
        let mut limiter = InstanceLimiter::new(4 * mib as u64);
        assert!(!limiter.memory_growing(0, 2 * mib, Some(mib)).unwrap());
        assert!(limiter.memory_growing(0, 4 * mib, None).unwrap());
    }

    #[test]
    fn an_apps_instances_share_its_memory_budget() {
        let mib = 1 << 20;
        let app = std::sync::Arc::new(AppMemory::new(10 * mib as u64));
        let mut one = InstanceLimiter::within_app(8 * mib as u64, app.clone());
        let mut two = InstanceLimiter::within_app(8 * mib as u64, app.clone());
        assert!(one.memory_growing(0, 6 * mib, None).unwrap());
        // Within its own limit, past the app's: refused, nothing taken.
        let err = two.memory_growing(0, 5 * mib, None).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<LimitExceeded>(),
                Some(LimitExceeded::AppMemory(limit)) if *limit == 10 * mib as u64
            ),
            "{err}"
        );
        assert_eq!(app.used(), 6 * mib as u64);
        assert!(two.memory_growing(0, 4 * mib, None).unwrap());
        // An instance gone gives its memory back.
        drop(one);
        assert_eq!(app.used(), 4 * mib as u64);
        assert!(two.memory_growing(4 * mib, 8 * mib, None).unwrap());
        drop(two);
        assert_eq!(app.used(), 0);
    }

    #[test]
    fn payload_caps_are_capped_at_the_defaults_unless_the_host_raises_them() {
        let asked = PayloadSettings {
            blob_max_put_mb: Some(1024),
            kv_max_value_kb: Some(2),
            ..PayloadSettings::default()
        };
        let mut limits = PayloadLimits::default();
        asked.apply(&mut limits).unwrap();
        let mut capped = limits.clone();
        PayloadSettings::default().cap(&mut capped);
        assert_eq!(
            capped.blob_max_put_bytes,
            16 << 20,
            "no host maximum: the default"
        );
        assert_eq!(
            capped.kv_max_value_bytes,
            2 << 10,
            "lowering is always allowed"
        );
        let host = PayloadSettings {
            blob_max_put_mb: Some(256),
            ..PayloadSettings::default()
        };
        let mut raised = limits.clone();
        host.cap(&mut raised);
        assert_eq!(raised.blob_max_put_bytes, 256 << 20);
        assert_eq!(
            asked.apply(&mut PayloadLimits::default()),
            Ok(()),
            "in range"
        );
        let zero = PayloadSettings {
            sql_max_rows: Some(0),
            ..PayloadSettings::default()
        };
        assert_eq!(
            zero.apply(&mut PayloadLimits::default()).unwrap_err().0,
            "sql_max_rows"
        );
    }
}
