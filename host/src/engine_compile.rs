//! Compiling a component that is in no cache: off the serving threads,
//! within `[engine] max_compile_ms`, and a tenant's compiles in turns.
//!
//! A compile cannot be stopped once it has started: one past its deadline
//! is abandoned (its load refused), but its thread runs to the end. So a
//! tenant's turn is held by that thread, not by the load waiting for it: a
//! tenant that ships new components too slow to compile, one after the
//! other, waits behind its own compile still running instead of starting
//! more beside it, and never keeps more than one compile busy. (`berth
//! serve` loads apps one after another; without this, each abandoned
//! compile would go on beside the next.) The host's own apps (`berth up`,
//! `berth run`) take no turns: they are the operator's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::Component;

use super::{
    COMPILE_PROGRESS_AFTER, COMPILE_PROGRESS_EVERY, HostEngine, MAX_TOO_SLOW, check_is_component,
};

/// Longest a tenant's load waits for its previous compile to end: not at
/// all, as `berth serve` loads apps one after another, so a turn held is
/// an abandoned compile's, and waiting for it would hold up every other
/// tenant's loads (a tenant touching its component every second would
/// stall each scan).
const TURN_WAIT: Duration = Duration::ZERO;

/// Each tenant's turn to compile, by the tenant's directory.
type Turns = Arc<Mutex<HashMap<PathBuf, Arc<Semaphore>>>>;

/// The tenants' turns to compile: one compile at a time each.
#[derive(Default)]
pub(super) struct CompileTurns {
    tenants: Turns,
}

/// A tenant's turn, held until its compile's thread has ended.
pub(super) struct CompileTurn {
    permit: Option<OwnedSemaphorePermit>,
    tenant: PathBuf,
    tenants: Turns,
}

impl CompileTurns {
    /// Waits until none of `tenant`'s compiles is running (an abandoned
    /// one included), for `wait` at most (`None` past it), in the order
    /// asked. A load dropped while it waits starts no compile.
    pub(super) async fn take(&self, tenant: &Path, wait: Duration) -> Option<CompileTurn> {
        let semaphore = lock(&self.tenants)
            .entry(tenant.to_path_buf())
            .or_insert_with(|| Arc::new(Semaphore::new(1)))
            .clone();
        // Whatever happens below, `turn` removes the tenant's entry once no
        // one holds or waits for it.
        let mut turn = CompileTurn {
            permit: None,
            tenant: tenant.to_path_buf(),
            tenants: self.tenants.clone(),
        };
        let acquired = tokio::time::timeout(wait, semaphore.acquire_owned()).await;
        // The semaphore is never closed; were it, the compile would go on
        // without its turn rather than never.
        turn.permit = acquired.ok()?.ok();
        Some(turn)
    }

    /// Tenants with a compile running or waiting (for tests).
    #[cfg(test)]
    pub(super) fn tenants_waiting_or_running(&self) -> usize {
        lock(&self.tenants).len()
    }
}

impl Drop for CompileTurn {
    fn drop(&mut self) {
        self.permit.take();
        let mut tenants = lock(&self.tenants);
        // Every holder and waiter clones the entry under this lock, so a
        // count of one (the map's own) means none is left.
        if tenants
            .get(&self.tenant)
            .is_some_and(|turn| Arc::strong_count(turn) == 1)
        {
            tenants.remove(&self.tenant);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A map of semaphores: no invariant a panic could break.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl HostEngine {
    /// Compiles `bytes` (read from `path`, SHA-256 `digest`), in `tenant`'s
    /// turn when it is a tenant's, refusing a compile that runs past `[engine]
    /// max_compile_ms` and, until the host restarts, those same bytes.
    pub(super) async fn compile_in_turn(
        &self,
        bytes: Vec<u8>,
        digest: String,
        path: &Path,
        tenant: Option<&Path>,
    ) -> anyhow::Result<Component> {
        let settings = self.settings();
        // Given up on before: refused without a turn.
        if self.too_slow().contains(&digest) {
            anyhow::bail!(
                "compiling component {} took longer than {:?} ([engine] max_compile_ms) before; refused without compiling it again (until the host restarts)",
                path.display(),
                settings.max_compile_time
            );
        }
        let turn = match tenant {
            Some(tenant) => {
                let turns = &self.inner.compile_turns;
                let Some(turn) = turns.take(tenant, TURN_WAIT).await else {
                    // Not this component's fault: it is not marked too slow.
                    anyhow::bail!(
                        "cannot compile component {}: the tenant's previous compile, abandoned past [engine] max_compile_ms ({:?}), is still running; refused until it ends",
                        path.display(),
                        settings.max_compile_time
                    );
                };
                Some(turn)
            }
            None => None,
        };
        let size_mib = bytes.len() as f64 / f64::from(1 << 20);
        let (engine, shown) = (self.clone(), path.display().to_string());
        let abandoned = Arc::new(AtomicBool::new(false));
        let told = abandoned.clone();
        let compiled_digest = digest.clone();
        let compile = tokio::task::spawn_blocking(move || {
            // Given back when this thread is done, whether or not anyone
            // still waits for its result.
            let _turn = turn;
            check_is_component(&bytes).with_context(|| format!("cannot load {shown}"))?;
            engine
                .compile_cached_unless(&bytes, compiled_digest, &told)
                .with_context(|| format!("cannot compile component {shown}"))
        });
        let started = Instant::now();
        let deadline = tokio::time::sleep(settings.max_compile_time);
        tokio::pin!(compile, deadline);
        let mut next_report = COMPILE_PROGRESS_AFTER;
        loop {
            tokio::select! {
                done = &mut compile => {
                    if started.elapsed() >= COMPILE_PROGRESS_AFTER {
                        tracing::info!("compiled {} in {:.1} s; later loads come from the compiled cache", path.display(), started.elapsed().as_secs_f64());
                    }
                    return match done {
                        Ok(loaded) => loaded,
                        Err(e) => Err(anyhow::anyhow!("compiling component {} failed: {e}", path.display())),
                    };
                }
                () = tokio::time::sleep(next_report.saturating_sub(started.elapsed())) => {
                    if next_report == COMPILE_PROGRESS_AFTER {
                        tracing::info!("compiling {} ({size_mib:.1} MiB), not in the compiled cache yet…", path.display());
                    } else {
                        tracing::info!("still compiling {}: {} s so far", path.display(), started.elapsed().as_secs());
                    }
                    next_report = started.elapsed() + COMPILE_PROGRESS_EVERY;
                }
                () = &mut deadline => {
                    // Refused from now on, reloads during the compile too:
                    // a tenant cannot keep the host's cores busy with it.
                    abandoned.store(true, Ordering::SeqCst);
                    let mut too_slow = self.too_slow();
                    if too_slow.len() >= MAX_TOO_SLOW {
                        too_slow.clear();
                    }
                    too_slow.insert(digest);
                    drop(too_slow);
                    anyhow::bail!(
                        "compiling component {} took longer than {:?} ([engine] max_compile_ms); refused",
                        path.display(),
                        settings.max_compile_time
                    )
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "engine_compile_tests.rs"]
mod tests;
