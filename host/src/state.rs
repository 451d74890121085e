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
            http: WasiHttpCtx::new(),
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
            kv_draft_cursors: Default::default(),
            env,
            _slot: slot,
        }
    }
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
