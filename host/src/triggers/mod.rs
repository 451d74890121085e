//! Triggers: the ways an instance gets invoked.
//! - [`run`]: `wasi:cli/run` commands (`berth run`);
//! - [`http`]: `wasi:http/incoming-handler` behind HTTP routes (`berth up`),
//!   on the connections [`connections`] accepts and keeps;
//! - [`message`]: `berth:infra/handler` fed by message subscriptions;
//! - [`policy`]: how a message trigger retries and gives up;
//! - [`schedule`]: the same handler run on a cron schedule;
//! - [`warm`]: the pool of warm instances a message trigger may keep.

pub mod connections;
pub mod http;
pub mod message;
pub mod policy;
pub mod run;
pub mod schedule;
pub mod warm;

/// Starts the app's message and schedule triggers on `tasks`: what runs
/// beside its HTTP routes.
pub async fn start_background(
    app: std::sync::Arc<crate::app::App>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> anyhow::Result<()> {
    message::start(app.clone(), tasks).await?;
    schedule::start(app.clone(), tasks).await?;
    message::declare_triggers(&app).await
}

/// Stops what [`start_background`] started on `tasks`, then lets go of the
/// app's broker (see [`MessagingBackend::close`]: NATS sends the acks it
/// still holds, a stopping host's Kafka triggers leave their groups so the
/// other hosts take their partitions at once).
///
/// The triggers take no more deliveries and the schedules publish no more
/// ticks at once; handlers already running have what is left of `grace`,
/// counted from [`App::stop_taking_messages`] (the signal, when the host
/// stops), to finish and settle their deliveries. Those still running then
/// are cancelled, and their deliveries, like those fetched ahead and never
/// handled, are handed back to the broker for redelivery before it is let
/// go.
///
/// [`MessagingBackend::close`]: crate::ports::messaging::MessagingBackend::close
/// [`App::stop_taking_messages`]: crate::app::App::stop_taking_messages
pub async fn stop_background(
    app: &crate::app::App,
    mut tasks: tokio::task::JoinSet<()>,
    grace: std::time::Duration,
) {
    app.stop_taking_messages();
    let ends = tokio::time::Instant::from_std(app.grace_ends(grace));
    let drained = tokio::time::timeout_at(ends, join_all(&mut tasks)).await;
    if drained.is_err() {
        tracing::warn!(app = %app.manifest.name, ?grace, "message handlers still running when the shutdown grace ran out were cancelled; their messages will be delivered again");
        // Each consumer loop cancels its handlers, waits for them (their
        // deliveries are handed back as they are dropped), then drops its
        // subscription. Bounded, should a broker not answer.
        app.cancel_handlers();
        if tokio::time::timeout(CANCEL_BOUND, join_all(&mut tasks))
            .await
            .is_err()
        {
            tasks.abort_all();
            join_all(&mut tasks).await;
        }
    }
    app.backends.messaging.close().await;
}

/// How long cancelled handlers and their consumer loops may take to end.
const CANCEL_BOUND: std::time::Duration = std::time::Duration::from_secs(5);

async fn join_all(tasks: &mut tokio::task::JoinSet<()>) {
    while tasks.join_next().await.is_some() {}
}

use crate::limits::LimitExceeded;

/// Why an invocation failed, in words for the operator and the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvocationError {
    /// The guest hit one of its limits; the instance was discarded.
    #[error("{0}")]
    Limit(LimitExceeded),
    /// The guest trapped (a panic, an invalid operation, a contract
    /// violation such as a bad handle).
    #[error("the component trapped: {0}")]
    Trap(String),
}

/// Longest text of a trap kept.
const MAX_TRAP_TEXT_BYTES: usize = 2048;

impl InvocationError {
    /// Classifies a failed call of a component allowed `handles` handles.
    pub fn from_error(error: &wasmtime::Error, handles: usize) -> InvocationError {
        if let Some(limit) = LimitExceeded::find(error) {
            return InvocationError::Limit(limit);
        }
        let table_full = error.chain().any(|e| {
            matches!(
                e.downcast_ref::<wasmtime::component::ResourceTableError>(),
                Some(wasmtime::component::ResourceTableError::Full)
            )
        });
        if table_full {
            return InvocationError::Limit(LimitExceeded::Handles(handles));
        }
        // A pool of the pooling allocator (memories, tables, stacks) ran out
        // before the host's instance slots did.
        if let Some(pool) = error
            .chain()
            .find_map(|e| e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>())
        {
            tracing::warn!(error = %pool, "the pooling allocator is exhausted");
            return InvocationError::Limit(LimitExceeded::Instances);
        }
        let mut text = error.to_string();
        if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
            text = format!("{trap}");
        }
        if let Some(root) = error.chain().last() {
            let root = root.to_string();
            if root != text {
                text = format!("{text}: {root}");
            }
        }
        // Logged, answered and put in dead letters: the names in a trap's
        // backtrace are the guest's own (its name section), so they may not
        // start lines of their own, nor run long.
        let text = crate::audit::printable(crate::ports::truncate(&text, MAX_TRAP_TEXT_BYTES));
        InvocationError::Trap(text.into_owned())
    }

    /// A short machine-readable name of the limit, if one was hit.
    pub fn limit_name(&self) -> Option<&'static str> {
        match self {
            InvocationError::Limit(LimitExceeded::Timeout(_)) => Some("time"),
            InvocationError::Limit(LimitExceeded::Memory { .. }) => Some("memory"),
            InvocationError::Limit(LimitExceeded::Table(_)) => Some("table"),
            InvocationError::Limit(LimitExceeded::Concurrency(_)) => Some("concurrency"),
            InvocationError::Limit(LimitExceeded::Handles(_)) => Some("handles"),
            InvocationError::Limit(LimitExceeded::Instances) => Some("instances"),
            InvocationError::Limit(LimitExceeded::AppInstances(_)) => Some("app_instances"),
            InvocationError::Limit(LimitExceeded::AppMemory(_)) => Some("app_memory"),
            InvocationError::Trap(_) => None,
        }
    }
}
