//! The run trigger: invokes a component's `wasi:cli/run` export once with
//! the given arguments, as `berth run` does.

use crate::metrics::{Outcome, Trigger};
use std::time::Duration;

use anyhow::{Context as _, bail};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use super::InvocationError;
use crate::app::App;

/// Most output kept per stream when capturing.
const CAPTURE_BYTES: usize = 4 << 20;
/// Slack over the component's own time limit before the host stops waiting
/// (the epoch deadline normally fires first).
const WALL_CLOCK_GRACE: Duration = Duration::from_secs(1);

/// Where a run's stdout and stderr go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdio {
    /// The host's own stdio.
    Inherit,
    /// Kept in memory and returned (tests).
    Capture,
}

/// How a run ended.
#[derive(Debug)]
pub struct RunOutput {
    /// Exit code the component returned, or the failure.
    pub status: Result<i32, InvocationError>,
    /// Captured stdout (empty when inherited).
    pub stdout: String,
    /// Captured stderr (empty when inherited).
    pub stderr: String,
}

impl RunOutput {
    /// Whether the component exited with status 0.
    pub fn success(&self) -> bool {
        matches!(self.status, Ok(0))
    }
}

/// Runs component `name` of `app` with `args` (argv\[0\] is the component
/// name).
///
/// # Errors
/// Only when the component cannot be run at all (no such component, no
/// `wasi:cli/run` export); what happens inside the run is in [`RunOutput`].
pub async fn run(
    app: &App,
    name: &str,
    args: &[String],
    stdio: Stdio,
) -> anyhow::Result<RunOutput> {
    let component = app.component(name)?;
    if !component.exports.run {
        bail!("component `{name}` does not export wasi:cli/run, so it cannot be run as a command");
    }
    let pre = CommandPre::new(component.pre.clone())
        .map_err(anyhow::Error::from)
        .context("cannot prepare the command")?;
    let mut wasi = WasiCtxBuilder::new();
    wasi.arg(name).args(args);
    let pipes = (stdio == Stdio::Capture).then(|| {
        let out = MemoryOutputPipe::new(CAPTURE_BYTES);
        let err = MemoryOutputPipe::new(CAPTURE_BYTES);
        wasi.stdout(out.clone()).stderr(err.clone());
        (out, err)
    });
    if pipes.is_none() {
        wasi.inherit_stdio();
    }
    let _permit = component.env.slots.clone().acquire_owned().await;
    let slot = app.engine().instance_slot(component.env.weight).await;
    let mut store = app.new_store(component, wasi, slot);
    let limit = component.env.limits.timeout;
    let handles = component.env.limits.handles;
    let call = async {
        let command = pre.instantiate_async(&mut store).await?;
        command.wasi_cli_run().call_run(&mut store).await
    };
    let status = match tokio::time::timeout(limit + WALL_CLOCK_GRACE, call).await {
        Ok(Ok(Ok(()))) => Ok(0),
        Ok(Ok(Err(()))) => Ok(1),
        Ok(Err(e)) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(exit) => Ok(exit.0),
            None => Err(InvocationError::from_error(&e, handles)),
        },
        Err(_) => Err(InvocationError::Limit(
            crate::limits::LimitExceeded::Timeout(limit),
        )),
    };
    if let Err(e) = &status {
        tracing::warn!(app = %app.manifest.name, component = name, error = %e, "run failed");
    }
    let outcome = match &status {
        Ok(0) => Outcome::Ok,
        Ok(_) => Outcome::Failed,
        Err(e) => Outcome::Error(e),
    };
    component.env.counters.invocation(Trigger::Run, outcome);
    let (stdout, stderr) = match pipes {
        Some((o, e)) => (
            String::from_utf8_lossy(&o.contents()).into_owned(),
            String::from_utf8_lossy(&e.contents()).into_owned(),
        ),
        None => (String::new(), String::new()),
    };
    Ok(RunOutput {
        status,
        stdout,
        stderr,
    })
}
