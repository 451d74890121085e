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
            message_max_bytes: 1 << 20,
            email_max_body_bytes: 1 << 20,
            email_max_recipients: 50,
            max_page_size: 1000,
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
        "memory limit exceeded: the guest tried to grow its memory to {requested} bytes, the limit is {limit} bytes"
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

/// Enforces the memory and table limits of one instance.
#[derive(Debug)]
pub struct InstanceLimiter {
    memory_bytes: u64,
}

impl InstanceLimiter {
    /// A limiter allowing `memory_bytes` of linear memory.
    pub fn new(memory_bytes: u64) -> Self {
        Self { memory_bytes }
    }
}

impl ResourceLimiter for InstanceLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory_bytes {
            // Trapping (rather than failing the grow) gives the operator and
            // the HTTP client a clear cause instead of an allocator abort.
            return Err(wasmtime::Error::new(LimitExceeded::Memory {
                requested: desired,
                limit: self.memory_bytes,
            }));
        }
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
