//! The app lifetime: a loaded manifest with its backends, compiled
//! components and `InstancePre`s. Everything here is built once per app and
//! shared by every instance through `Arc`s.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use wasmtime::component::{HasSelf, InstancePre, Linker};
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;

use crate::bindings;
use crate::config::HostConfig;
use crate::engine::HostEngine;
use crate::limits::{ComponentLimits, LimitExceeded};
use crate::manifest::{Grants, Manifest};
use crate::outbound::{OutboundGrants, Upstream};
use crate::ports::blob::BlobBackend;
use crate::ports::email::EmailBackend;
use crate::ports::kv::KvBackend;
use crate::ports::messaging::MessagingBackend;
use crate::ports::sql::SqlBackend;
use crate::secret::{Secret, SecretResolver};
use crate::state::InstanceState;

#[path = "app_tenant.rs"]
mod tenant;
use tenant::check_tenant_state;
pub(crate) use tenant::{check_tenant_directory, left_state};

/// The backends serving one app's logical names.
pub struct AppBackends {
    /// SQL databases by logical name.
    pub sql: HashMap<String, Arc<dyn SqlBackend>>,
    /// Key-value buckets by logical name.
    pub kv: HashMap<String, Arc<dyn KvBackend>>,
    /// Blob containers by logical name.
    pub blob: HashMap<String, Arc<dyn BlobBackend>>,
    /// The app's message broker.
    pub messaging: Arc<dyn MessagingBackend>,
    /// The app's mail transport.
    pub email: Arc<dyn EmailBackend>,
    /// The app's guests' publish rate (`app_limits.messages_per_second`),
    /// if the host config sets one.
    pub publish_rate: Option<Arc<crate::rate::TokenBucket>>,
    /// Verifies the signed blob URLs of the embedded blob store.
    pub url_signer: Arc<crate::ports::blob::url::UrlSigner>,
    /// The lines the app's guests may log (`app_limits.log_lines_per_second`).
    pub log_budget: Arc<crate::ports::logging::budget::LogBudget>,
}

/// Everything an instance of one component needs, built at load.
pub struct ComponentEnv {
    /// The app (tenant) name.
    pub app: String,
    /// The component name.
    pub component: String,
    /// What the component may use.
    pub grants: Grants,
    /// Outbound HTTP allow-list and upstreams.
    pub outbound: Arc<OutboundGrants>,
    /// Limits.
    pub limits: ComponentLimits,
    /// One permit per instance that may be alive at once
    /// (`limits.concurrency`).
    pub slots: Arc<tokio::sync::Semaphore>,
    /// Its invocation and limit counters (registered at load).
    pub counters: Arc<crate::metrics::ComponentCounters>,
    /// Whether it ran long lately (see [`crate::fairness`]).
    pub heaviness: Arc<crate::fairness::Heaviness>,
    /// Resolved values of the granted config keys only.
    pub config: BTreeMap<String, Secret>,
    /// The app's backends.
    pub backends: Arc<AppBackends>,
    /// Where its instances' stdout and stderr go on the HTTP and message
    /// triggers (the host's log, a line at a time).
    pub output: Arc<crate::ports::logging::output::OutputOwner>,
    /// What the app may use (`[app_limits]`: its instances' places and
    /// memory budget, its rates). Held by every store through this
    /// environment, so an app whose directory was removed and put back
    /// while its instances still ran gets back the allowance they use,
    /// not a fresh one beside it.
    pub allowance: Arc<crate::rate::AppAllowance>,
    /// The instance slots, and places among the app's instances, one
    /// instance takes (see [`HostEngine::pool_weight`]).
    pub weight: u32,
}

/// What a component exports, i.e. which triggers can invoke it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exports {
    /// `wasi:cli/run`.
    pub run: bool,
    /// `wasi:http/incoming-handler`.
    pub http: bool,
    /// `berth:infra/handler`.
    pub message: bool,
}

/// A compiled, pre-instantiated component.
pub struct LoadedComponent {
    /// Its environment.
    pub env: Arc<ComponentEnv>,
    /// Pre-instantiation against the process linker.
    pub pre: InstancePre<InstanceState>,
    /// What it exports.
    pub exports: Exports,
}

/// A loaded app (tenant).
pub struct App {
    /// The manifest.
    pub manifest: Manifest,
    /// Where its embedded data lives.
    pub state_dir: PathBuf,
    /// Its backends.
    pub backends: Arc<AppBackends>,
    /// Its components.
    pub components: BTreeMap<String, LoadedComponent>,
    /// What it may use (`[app_limits]`), shared with its other versions
    /// alive.
    pub allowance: Arc<crate::rate::AppAllowance>,
    engine: HostEngine,
    /// Whether the host is stopping the app (see
    /// [`App::stop_taking_messages`]).
    stopping: tokio::sync::watch::Sender<Stopping>,
}

impl Drop for App {
    /// Keeps the app's allowance for a while after a version goes, so
    /// that removing an app's manifest and putting it back does not
    /// refill its rates (see [`HostEngine::keep_allowance_a_while`]).
    fn drop(&mut self) {
        self.engine.keep_allowance_a_while(&self.allowance);
    }
}

/// Where an app is in being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopping {
    /// Running.
    No,
    /// Its triggers take no more deliveries; running handlers finish.
    /// Since when.
    Draining(std::time::Instant),
    /// Running handlers are cancelled too.
    Cancelling,
}

/// Builds the process-wide linker: WASI (granting nothing by itself),
/// `wasi:http`, and every Berth port.
pub fn linker(engine: &Engine) -> anyhow::Result<Linker<InstanceState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
        .map_err(anyhow::Error::from)?;
    use bindings::ports as p;
    p::sql::add_to_linker::<_, HasSelf<_>>(&mut linker, itself).map_err(anyhow::Error::from)?;
    p::kv::add_to_linker::<_, HasSelf<_>>(&mut linker, itself).map_err(anyhow::Error::from)?;
    p::blob::add_to_linker::<_, HasSelf<_>>(&mut linker, itself).map_err(anyhow::Error::from)?;
    p::messaging_types::add_to_linker::<_, HasSelf<_>>(&mut linker, itself)
        .map_err(anyhow::Error::from)?;
    p::messaging::add_to_linker::<_, HasSelf<_>>(&mut linker, itself)
        .map_err(anyhow::Error::from)?;
    p::email::add_to_linker::<_, HasSelf<_>>(&mut linker, itself).map_err(anyhow::Error::from)?;
    p::config::add_to_linker::<_, HasSelf<_>>(&mut linker, itself).map_err(anyhow::Error::from)?;
    p::logging::add_to_linker::<_, HasSelf<_>>(&mut linker, itself).map_err(anyhow::Error::from)?;
    crate::ports::config::wasi::add_to_linker(&mut linker)?;
    crate::ports::kv::wasi::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// Resolves every upstream some component of `manifest` is granted; a
/// grant the host config does not define is an error naming both files.
async fn resolve_upstreams(
    host: &HostConfig,
    manifest: &Manifest,
    secrets: &SecretResolver,
) -> anyhow::Result<HashMap<String, Arc<Upstream>>> {
    let mut resolved = HashMap::new();
    for decl in manifest.components.values() {
        for name in &decl.grants.upstreams {
            if resolved.contains_key(name) {
                continue;
            }
            let Some(config) = host.upstreams.get(name) else {
                bail!(
                    "{}: component `{}` is granted upstream `{name}`, but {} defines no [upstreams.{name}]",
                    manifest.file.display(),
                    decl.name,
                    host.source()
                );
            };
            if !config.admits(&manifest.name, host.serve.tenant_manifests) {
                bail!(
                    "{}: component `{}` is granted upstream `{name}`, but `upstreams.{name}.apps` in {} does not list app `{}`{}",
                    manifest.file.display(),
                    decl.name,
                    host.source(),
                    manifest.name,
                    if config.apps.is_none() {
                        " (on `berth serve` an upstream's credential goes only to the apps the operator lists)"
                    } else {
                        ""
                    }
                );
            }
            let upstream = Upstream::resolve(config, secrets)
                .await
                .map_err(|m| anyhow::anyhow!("{}: `upstreams.{name}`: {m}", host.source()))?;
            resolved.insert(name.clone(), Arc::new(upstream));
        }
    }
    Ok(resolved)
}

/// Applies the operator's `[app_config.<app>]` values over the manifest's
/// config. Only keys the manifest declares may be set, so an operator typo
/// is an error rather than a silently ignored value.
async fn operator_config(
    host: &HostConfig,
    manifest: &Manifest,
    secrets: &SecretResolver,
    mut config: BTreeMap<String, Secret>,
) -> anyhow::Result<BTreeMap<String, Secret>> {
    let Some(values) = host.app_config.get(&manifest.name) else {
        return Ok(config);
    };
    for (key, raw) in values {
        if !manifest.config.contains_key(key) {
            bail!(
                "{}: `app_config.{}.{key}`: the app's manifest {} declares no config key `{key}`",
                host.source(),
                manifest.name,
                manifest.file.display()
            );
        }
        let value = secrets.resolve(raw).await.map_err(|m| {
            anyhow::anyhow!(
                "{}: `app_config.{}.{key}`: {m}",
                host.source(),
                manifest.name
            )
        })?;
        config.insert(key.clone(), value);
    }
    Ok(config)
}

/// The port traits are implemented on [`InstanceState`] itself.
fn itself(state: &mut InstanceState) -> &mut InstanceState {
    state
}

impl App {
    /// Loads `manifest`: resolves config, opens backends as `host` says,
    /// compiles and checks every component. Nothing runs yet.
    pub async fn load(
        engine: &HostEngine,
        manifest: Manifest,
        host: &HostConfig,
    ) -> anyhow::Result<App> {
        let state_dir = host.app_state_dir(&manifest);
        if host.serve.tenant_manifests {
            // A tenant's manifest must not read the host's environment (it
            // holds the operator's credentials); the operator sets values
            // with [app_config.<app>] instead.
            if let Some((key, _)) = manifest.config.iter().find(|(_, v)| v.contains("${env:")) {
                bail!(
                    "{}: config.{key}: `${{env:…}}` references are not allowed in the manifests of `berth serve`; the operator sets such values with [app_config.{}] in the host config",
                    manifest.file.display(),
                    manifest.name
                );
            }
            crate::fairness::blocking(|| {
                check_tenant_directory(&manifest)?;
                check_tenant_state(host, &manifest, &state_dir, &engine.settings().cache_dir)
            })?;
        }
        // Tenants' manifests see no host environment, so no operator's
        // `BERTH_CONFIG_<KEY>` override reaches them either.
        let env = crate::ports::config::host_env(host.serve.tenant_manifests);
        let config = crate::ports::config::resolve(&manifest.config, env)
            .map_err(|m| anyhow::anyhow!("{}: {m}", manifest.file.display()))?;
        // One resolver for the whole load: each AWS secret is fetched once.
        let secrets = host.secrets().await?;
        // Shared with the app's other versions alive (a reload's).
        let max_instances = engine.settings().max_instances;
        let allowance = engine.app_allowance(&state_dir, || {
            crate::rate::AppAllowance::new(host, max_instances)
        });
        let backends = Arc::new(
            crate::backends::open(
                host,
                &manifest,
                &state_dir,
                &engine.settings().cache_dir,
                &secrets,
                &allowance,
            )
            .await?,
        );
        let network = Arc::new(
            host.outbound
                .settings_for(&manifest.name, host.serve.tenant_manifests)
                .map_err(|m| anyhow::anyhow!("{}: {m}", host.source()))?,
        );
        let upstreams = resolve_upstreams(host, &manifest, &secrets).await?;
        let config = operator_config(host, &manifest, &secrets, config).await?;
        let mut components = BTreeMap::new();
        // A tenant's components come from its own directory only.
        let tenant_root = host
            .serve
            .tenant_manifests
            .then(|| manifest.file.parent())
            .flatten()
            .map(|dir| {
                if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                }
            });
        for decl in manifest.components.values() {
            let component = engine
                .load_component_within(&decl.path, tenant_root)
                .await
                .with_context(|| {
                    format!("component `{}` of {}", decl.name, manifest.file.display())
                })?;
            crate::imports::check_imports(engine.engine(), &component, &decl.name, &decl.grants)
                .map_err(|m| anyhow::anyhow!("{}: {m}", manifest.file.display()))?;
            let pre = engine
                .linker()
                .instantiate_pre(&component)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("cannot link component `{}`", decl.name))?;
            let exports = exports_of(engine.engine(), &component);
            let mut limits = host.engine.cap(&decl.limits);
            limits.memory_bytes = limits.memory_bytes.min(engine.settings().max_memory_bytes);
            if limits != decl.limits {
                tracing::info!(app = %manifest.name, component = %decl.name, ?limits, "limits capped by the host's maxima");
            }
            check_largest_objects(&backends, &decl.name, &decl.grants.blob, &limits)
                .map_err(|m| anyhow::anyhow!("{}: {m}", manifest.file.display()))?;
            let counters = crate::metrics::METRICS.component(&manifest.name, &decl.name);
            let env = Arc::new(ComponentEnv {
                app: manifest.name.clone(),
                component: decl.name.clone(),
                grants: decl.grants.clone(),
                outbound: Arc::new(OutboundGrants {
                    allow: decl.http_allow.clone(),
                    upstreams: decl
                        .grants
                        .upstreams
                        .iter()
                        .map(|name| (name.clone(), upstreams[name].clone()))
                        .collect(),
                    network: network.clone(),
                    owner: (manifest.name.clone(), decl.name.clone()),
                    counters: Some(counters.clone()),
                    lookups: allowance.lookups.clone(),
                }),
                slots: Arc::new(tokio::sync::Semaphore::new(limits.concurrency as usize)),
                counters,
                heaviness: Default::default(),
                limits,
                config: config
                    .iter()
                    .filter(|(k, _)| decl.grants.config.contains(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                output: Arc::new(crate::ports::logging::output::OutputOwner {
                    app: manifest.name.clone(),
                    component: decl.name.clone(),
                    budget: backends.log_budget.clone(),
                }),
                backends: backends.clone(),
                allowance: allowance.clone(),
                weight: HostEngine::pool_weight(&component),
            });
            components.insert(decl.name.clone(), LoadedComponent { env, pre, exports });
        }
        let app = App {
            manifest,
            state_dir,
            backends,
            components,
            allowance,
            engine: engine.clone(),
            stopping: tokio::sync::watch::Sender::new(Stopping::No),
        };
        app.check_triggers()?;
        Ok(app)
    }

    /// Tells the app's message triggers to take no more deliveries and its
    /// schedules to publish no more ticks: the host is stopping or
    /// replacing the app. Handlers already running finish (see
    /// [`crate::triggers::stop_background`]). The first call starts the
    /// shutdown grace; later ones change nothing.
    pub fn stop_taking_messages(&self) {
        self.stopping.send_if_modified(|state| {
            let first = *state == Stopping::No;
            if first {
                *state = Stopping::Draining(std::time::Instant::now());
            }
            first
        });
    }

    /// When a shutdown grace of `grace` runs out: counted from the first
    /// [`App::stop_taking_messages`] (the signal), so that the HTTP drain
    /// and the handlers' share one grace.
    pub(crate) fn grace_ends(&self, grace: std::time::Duration) -> std::time::Instant {
        match *self.stopping.borrow() {
            Stopping::Draining(since) => since + grace,
            Stopping::No | Stopping::Cancelling => std::time::Instant::now(),
        }
    }

    /// Tells the app's message triggers to cancel the handlers still
    /// running: the shutdown grace ran out.
    pub(crate) fn cancel_handlers(&self) {
        self.stopping.send_replace(Stopping::Cancelling);
    }

    /// Resolves once [`App::stop_taking_messages`] was called.
    pub(crate) async fn stopped(&self) {
        let mut stopping = self.stopping.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = stopping.wait_for(|s| *s != Stopping::No).await;
    }

    /// Resolves once [`App::cancel_handlers`] was called.
    pub(crate) async fn cancelled(&self) {
        let mut stopping = self.stopping.subscribe();
        let _ = stopping.wait_for(|s| *s == Stopping::Cancelling).await;
    }

    fn check_triggers(&self) -> anyhow::Result<()> {
        let file = self.manifest.file.display();
        for t in &self.manifest.http_triggers {
            if !self.components[&t.component].exports.http {
                bail!(
                    "{file}: HTTP route {:?} targets component `{}`, which does not export wasi:http/incoming-handler",
                    t.route,
                    t.component
                );
            }
        }
        for t in &self.manifest.message_triggers {
            if !self.components[&t.component].exports.message {
                bail!(
                    "{file}: message topic {:?} targets component `{}`, which does not export berth:infra/handler",
                    t.topic,
                    t.component
                );
            }
        }
        for t in &self.manifest.schedule_triggers {
            if !self.components[&t.component].exports.message {
                bail!(
                    "{file}: schedule `{}` targets component `{}`, which does not export berth:infra/handler",
                    t.name(),
                    t.component
                );
            }
        }
        Ok(())
    }

    /// The component called `name`.
    pub fn component(&self, name: &str) -> anyhow::Result<&LoadedComponent> {
        self.components
            .get(name)
            .with_context(|| format!("app `{}` has no component `{name}`", self.manifest.name))
    }

    /// The engine the app was loaded into.
    pub fn engine(&self) -> &HostEngine {
        &self.engine
    }

    /// A fresh store for one invocation of `component`, with its limits
    /// armed: memory via the limiter, time via the epoch callback, which
    /// also yields to other tasks every tick so a spinning guest cannot
    /// starve its neighbours. The store holds `slot` until it is dropped.
    pub fn new_store(
        &self,
        component: &LoadedComponent,
        wasi: WasiCtxBuilder,
        slot: crate::engine::InstanceSlot,
    ) -> Store<InstanceState> {
        new_store(
            self.engine.engine(),
            self.engine.cpu_turns(),
            component.env.clone(),
            wasi,
            slot,
        )
    }
}

/// See [`App::new_store`].
pub fn new_store(
    engine: &Engine,
    turns: &crate::fairness::CpuTurns,
    env: Arc<ComponentEnv>,
    mut wasi: WasiCtxBuilder,
    slot: crate::engine::InstanceSlot,
) -> Store<InstanceState> {
    let timeout = env.limits.timeout;
    let state = InstanceState::new(env, locked_down(&mut wasi).build(), turns.clone(), slot);
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    let first_deadline = store.data_mut().turn.reset();
    store.set_epoch_deadline(first_deadline);
    store.epoch_deadline_callback(move |mut ctx| {
        if Instant::now() >= ctx.data().deadline {
            return Err(wasmtime::Error::new(LimitExceeded::Timeout(timeout)));
        }
        // A long-running guest waits for its turn (crate::fairness);
        // any other just lets the executor run other tasks.
        Ok(match ctx.data_mut().turn.tick() {
            Some(wait) => UpdateDeadline::YieldCustom(1, wait),
            None => UpdateDeadline::Yield(1),
        })
    });
    store
}

/// Refuses a component whose `blob_max_object_mb` lets a writer pass what
/// a granted container can store: it would fail only once it got there,
/// after uploading all of it, and with the store's reason, not the setting.
fn check_largest_objects(
    backends: &AppBackends,
    component: &str,
    containers: &[String],
    limits: &crate::limits::ComponentLimits,
) -> Result<(), String> {
    let most = limits.payloads.blob_max_object_bytes as u64;
    for name in containers {
        let Some(backend) = backends.blob.get(name) else {
            continue;
        };
        if let Some((largest, why)) = backend.largest_object()
            && largest < most
        {
            return Err(format!(
                "component `{component}`: its `blob_max_object_mb` ({} MiB) is more than blob container `{name}` can store in one object ({} MiB: {why}); lower the component's `blob_max_object_mb` or raise `blob.{name}.part_size_mb` in the host config",
                most >> 20,
                largest >> 20
            ));
        }
    }
    Ok(())
}

/// Denies every network use through `wasi:sockets`, whatever the caller set.
fn locked_down(wasi: &mut WasiCtxBuilder) -> &mut WasiCtxBuilder {
    wasi.allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }))
}

fn exports_of(engine: &Engine, component: &wasmtime::component::Component) -> Exports {
    let mut exports = Exports::default();
    for (name, _) in component.component_type().exports(engine) {
        let name = name.split('@').next().unwrap_or(name);
        match name {
            "wasi:cli/run" => exports.run = true,
            "wasi:http/incoming-handler" => exports.http = true,
            "berth:infra/handler" => exports.message = true,
            _ => {}
        }
    }
    exports
}
