//! Per-instance state: the data of one `Store`, created for each run,
//! request or message. Building it only clones `Arc`s from the component's
//! [`ComponentEnv`]; nothing is opened.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::app::ComponentEnv;
use crate::limits::InstanceLimiter;
use crate::outbound::OutboundPolicy;

/// The data of one instance's `Store`.
pub struct InstanceState {
    /// Handles given to the guest: WASI streams, port resources.
    pub table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    outbound: OutboundPolicy,
    /// What the component may use and how it is configured.
    pub env: Arc<ComponentEnv>,
    /// Enforces memory and table limits.
    pub limiter: InstanceLimiter,
    /// When the invocation must end.
    pub deadline: Instant,
    /// Its place among long-running invocations (see [`crate::fairness`]).
    pub turn: crate::fairness::Turn,
    /// Blob writers it holds open (at most
    /// [`crate::ports::blob::host::MAX_OPEN_WRITERS`]): each may buffer a
    /// whole multipart part in host memory.
    pub(crate) open_blob_writers: usize,
    /// Blob readers it holds open (at most
    /// [`crate::ports::blob::host::MAX_OPEN_READERS`]): each holds a
    /// connection or a file descriptor.
    pub(crate) open_blob_readers: usize,
    /// `wasi:keyvalue` compare-and-swap handles it holds open (at most
    /// [`crate::ports::kv::wasi::MAX_OPEN_CAS`]): each keeps a value in
    /// host memory.
    pub(crate) open_kv_cas: usize,
    /// SQL transactions it holds open (neither committed nor rolled back).
    pub(crate) open_sql_transactions: usize,
    /// SQL cursors it holds open (at most
    /// [`crate::ports::sql::host::MAX_OPEN_CURSORS`]).
    pub(crate) open_sql_cursors: usize,
    /// Where its `wasi:keyvalue` (`0.2.0-draft`) listings stand.
    pub(crate) kv_draft_cursors: crate::ports::kv::wasi::DraftCursors,
    /// The host instance slot it occupies, freed with the store.
    _slot: crate::engine::InstanceSlot,
}

impl InstanceState {
    /// State for one invocation of the component described by `env`, with
    /// the given WASI context (arguments, stdio).
    pub fn new(
        env: Arc<ComponentEnv>,
        wasi: WasiCtx,
        turns: crate::fairness::CpuTurns,
        slot: crate::engine::InstanceSlot,
    ) -> Self {
        let mut table = ResourceTable::new();
        table.set_max_capacity(env.limits.handles);
        Self {
            table,
            wasi,
            http: http_ctx(),
            outbound: OutboundPolicy::new(env.outbound.clone(), env.limits.outbound_requests),
            limiter: InstanceLimiter::within_app(
                env.limits.memory_bytes,
                env.allowance.memory.clone(),
            ),
            deadline: Instant::now() + env.limits.timeout,
            turn: crate::fairness::Turn::new(turns, env.heaviness.clone()),
            open_blob_writers: 0,
            open_blob_readers: 0,
            open_kv_cas: 0,
            open_sql_transactions: 0,
            open_sql_cursors: 0,
            kv_draft_cursors: Default::default(),
            env,
            _slot: slot,
        }
    }
}

/// Host memory one `wasi:http` `fields` a guest builds or changes may hold
/// (wasmtime counts names and values with their in-memory overhead): each
/// such header map lives in the host, outside the guest's `memory_mb`, and
/// an instance may hold as many as its `handles`. wasmtime's default is
/// 128 KiB; requests and responses rarely carry more than 8 KiB of headers.
const MAX_GUEST_FIELDS_BYTES: usize = 32 << 10;

fn http_ctx() -> WasiHttpCtx {
    let mut http = WasiHttpCtx::new();
    http.set_field_size_limit(MAX_GUEST_FIELDS_BYTES);
    http
}

impl InstanceState {
    /// Readies a warm instance for its next invocation: a new deadline, a
    /// new request count, a new turn. Returns the epoch deadline to set on
    /// the store.
    pub fn renew(&mut self) -> u64 {
        self.deadline = Instant::now() + self.env.limits.timeout;
        self.outbound.renew();
        self.turn.reset()
    }

    /// Whether it holds what should not outlive an invocation: a SQL
    /// transaction or cursor, a blob reader or writer, a compare-and-swap
    /// handle, an outbound request on its way, or a response not read to its end nor dropped. A
    /// warm instance holding any is dropped rather than reused: kept, it
    /// would hold a connection, a lock or a socket between messages, past
    /// the bounds each invocation's own count gives.
    pub fn holds_port_resources(&self) -> bool {
        self.open_sql_transactions > 0
            || self.open_sql_cursors > 0
            || self.open_blob_readers > 0
            || self.open_blob_writers > 0
            || self.open_kv_cas > 0
            || self.outbound.open_responses() > 0
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}
