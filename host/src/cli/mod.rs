//! The `berth` command line: `run`, `up`, `serve`, `check` and `wit`.

/// `eprintln!` that drops what stderr cannot take (a file on a full disk)
/// rather than panicking, so the command's exit code stays its own.
macro_rules! report {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `println!` that drops what stdout cannot take (a closed pipe, as in
/// `berth check | head -1`, or a full disk) rather than panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod build;
mod logging;
pub mod new;
pub(crate) mod open_files;
pub mod wit;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};

use crate::app::App;
use crate::config::HostConfig;
use crate::engine::HostEngine;
use crate::manifest::Manifest;
use crate::triggers::run::Stdio;
pub use logging::log_filter;

/// Exit code for invalid input: manifest, host config or component.
pub const EXIT_INVALID: u8 = 65;
/// Exit code when a component trapped or hit a limit.
pub const EXIT_TRAPPED: u8 = 70;
/// Exit code for a usage error: arguments clap took but that name nothing
/// usable (the same code clap gives the ones it refuses).
pub const EXIT_USAGE: u8 = 2;

/// An error in the command's arguments found after parsing them (an
/// unknown template, a name `berth new` cannot use, a missing
/// `--component`): exits with [`EXIT_USAGE`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Berth runs WebAssembly components and serves them infrastructure ports.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a `wasi:cli/run` component once and exit with its status.
    Run(RunArgs),
    /// Build an app's components, then serve its HTTP routes and consume its messages.
    Up(UpArgs),
    /// Validate a manifest and its components without running anything.
    Check(CheckArgs),
    /// Serve every app under a directory (one subdirectory with a
    /// `berth.toml` per app), picking up added, changed and removed apps.
    Serve(ServeArgs),
    /// Print (or write with `--out DIR`) the WIT of Berth's ports and of the
    /// standard WASI packages it serves, for generating guest bindings.
    Wit(WitArgs),
    /// Create a project from a template (`--list` shows them); `berth up`
    /// in it builds and runs it.
    New(NewArgs),
    /// Run the build commands of an app's components.
    Build(BuildArgs),
}

#[derive(Debug, Args)]
struct NewArgs {
    /// The template, e.g. `rust-http` (see `--list`).
    #[arg(required_unless_present = "list")]
    template: Option<String>,
    /// The project name: lowercase letters, digits and hyphens.
    #[arg(required_unless_present = "list")]
    name: Option<String>,
    /// Directory to create [default: ./<name>].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// List the templates.
    #[arg(long)]
    list: bool,
}

#[derive(Debug, Args)]
struct BuildArgs {
    /// The app manifest.
    #[arg(default_value = "berth.toml")]
    manifest: PathBuf,
}

#[derive(Debug, Args)]
struct WitArgs {
    /// Directory to write the files into (created if missing); without it
    /// they are printed.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct HostArgs {
    /// Host config file (backends, state directory, engine sizing).
    #[arg(long, env = "BERTH_HOST_CONFIG", value_name = "FILE")]
    host_config: Option<PathBuf>,
    /// Directory for embedded state [default: .berth beside the manifest;
    /// on `serve`, .berth in the directory of apps].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// A component (`.wasm`) or an app manifest (`berth.toml`).
    target: PathBuf,
    /// Which component of the manifest to run (needed when several can run).
    #[arg(long, short)]
    component: Option<String>,
    #[command(flatten)]
    host: HostArgs,
    /// Arguments passed to the component.
    #[arg(last = true)]
    args: Vec<String>,
}

#[derive(Debug, Args)]
struct UpArgs {
    /// The app manifest.
    #[arg(default_value = "berth.toml")]
    manifest: PathBuf,
    /// Address to listen on [default: 127.0.0.1:3000].
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// Skip the components' build commands.
    #[arg(long)]
    no_build: bool,
    #[command(flatten)]
    host: HostArgs,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Directory of apps: each subdirectory holding a `berth.toml`.
    apps: PathBuf,
    /// Address to listen on [default: 127.0.0.1:3000].
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    host: HostArgs,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// The app manifest.
    #[arg(default_value = "berth.toml")]
    manifest: PathBuf,
    /// Check it as `berth serve` loads a tenant's manifest: no `${env:…}`
    /// in its config, and named upstreams only when the host config's
    /// `apps` lists the app and it sits in a directory named as the app.
    #[arg(long)]
    tenant: bool,
    #[command(flatten)]
    host: HostArgs,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init();
    open_files::raise_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            report!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_TRAPPED);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            report!("error: {e:#}");
            match e.downcast_ref::<UsageError>() {
                Some(_) => ExitCode::from(EXIT_USAGE),
                None => ExitCode::from(EXIT_INVALID),
            }
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run(args).await,
        Command::Up(args) => up(args).await,
        Command::Check(args) => check(args).await,
        Command::Serve(args) => serve(args).await,
        Command::Wit(args) => wit::wit(args.out.as_deref()).map(|()| ExitCode::SUCCESS),
        Command::New(args) => new_project(args),
        Command::Build(args) => {
            let manifest = Manifest::load(&args.manifest)?;
            build::build_components(&manifest)?;
            say!("berth: built app `{}`", manifest.name);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn host_config(args: &HostArgs) -> anyhow::Result<HostConfig> {
    let mut config = match &args.host_config {
        Some(path) => HostConfig::load(path)?,
        None => HostConfig::default(),
    };
    if let Some(dir) = &args.state_dir {
        config.state_dir = Some(dir.clone());
    }
    Ok(config)
}

fn is_manifest(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "toml")
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut host = host_config(&args.host)?;
    let manifest = if is_manifest(&args.target) {
        Manifest::load(&args.target)?
    } else {
        if host.state_dir.is_none() {
            host.state_dir = Some(PathBuf::from(".berth"));
        }
        Manifest::for_component(&args.target)
    };
    let engine = HostEngine::new(host.engine_settings())?;
    let app = App::load(&engine, manifest, &host).await?;
    // Without --component, the one component that can run (an app may
    // have HTTP and message components beside its command).
    let component = match args.component {
        Some(c) => c,
        None => {
            let runnable: Vec<&str> = (app.components.iter())
                .filter(|(_, c)| c.exports.run)
                .map(|(name, _)| name.as_str())
                .collect();
            match runnable.as_slice() {
                [only] => only.to_string(),
                many => {
                    return Err(UsageError(format!(
                        "{}: {} components export `wasi:cli/run` ({}); choose one with --component",
                        app.manifest.file.display(),
                        many.len(),
                        many.join(", ")
                    ))
                    .into());
                }
            }
        }
    };
    run_component(&app, &component, &args.args).await
}

/// Runs `component` of `app` once with stdio inherited; its exit status
/// becomes the process's.
async fn run_component(app: &App, component: &str, args: &[String]) -> anyhow::Result<ExitCode> {
    let output = crate::triggers::run::run(app, component, args, Stdio::Inherit).await?;
    Ok(match output.status {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            report!("error: component `{component}`: {e}");
            ExitCode::from(EXIT_TRAPPED)
        }
    })
}

async fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let mut host = host_config(&args.host)?;
    if let Some(listen) = args.listen {
        host.listen = Some(listen);
    }
    let manifest = Manifest::load(&args.manifest)?;
    if !args.no_build {
        build::build_components(&manifest)?;
    }
    let engine = HostEngine::new(host.engine_settings())?;
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let admin = start_admin(&host, ready.clone()).await?;
    let app = Arc::new(App::load(&engine, manifest, &host).await?);
    if app.manifest.http_triggers.is_empty()
        && app.manifest.message_triggers.is_empty()
        && app.manifest.schedule_triggers.is_empty()
    {
        return run_only_command(&app).await;
    }
    // The port first: a host that cannot listen must not have joined the
    // app's consumers and taken deliveries it would then abort.
    let handler = Arc::new(crate::triggers::http::HttpHandler::new(app.clone())?);
    let listener = tokio::net::TcpListener::bind(host.listen())
        .await
        .with_context(|| format!("cannot listen on {}", host.listen()))?;
    let mut tasks = tokio::task::JoinSet::new();
    crate::triggers::start_background(app.clone(), &mut tasks).await?;
    let addr = listener.local_addr()?;
    say!("berth: app `{}` is up at http://{addr}", app.manifest.name);
    for t in &app.manifest.http_triggers {
        say!("  {} -> {}", t.route, t.component);
    }
    for t in &app.manifest.message_triggers {
        say!("  topic {} -> {}", t.topic, t.component);
    }
    for t in &app.manifest.schedule_triggers {
        say!("  schedule {} ({}) -> {}", t.name(), t.cron, t.component);
    }
    say!("  state in {}", app.state_dir.display());
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    let grace = host.serve.shutdown_grace();
    let shutdown = {
        let (app, shutdown) = (app.clone(), unready_on(shutdown_signal(), ready));
        // Message handlers drain beside the HTTP requests.
        async move {
            shutdown.await;
            app.stop_taking_messages();
        }
    };
    crate::triggers::http::serve(handler, listener, shutdown, grace).await?;
    crate::triggers::stop_background(&app, tasks, grace).await;
    if let Some(admin) = admin {
        admin.abort();
    }
    Ok(ExitCode::SUCCESS)
}

fn new_project(args: NewArgs) -> anyhow::Result<ExitCode> {
    let (Some(template), Some(name)) = (args.template, args.name) else {
        print!("{}", new::list());
        return Ok(ExitCode::SUCCESS);
    };
    let dir = new::create(&template, &name, args.dir.as_deref())?;
    say!(
        "berth: created `{name}` from template `{template}` in {}\n  cd {} && berth up",
        dir.display(),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut host = host_config(&args.host)?;
    if let Some(listen) = args.listen {
        host.listen = Some(listen);
    }
    if !args.apps.is_dir() {
        bail!("{} is not a directory of apps", args.apps.display());
    }
    let engine = HostEngine::new(host.engine_settings())?;
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let admin = start_admin(&host, ready.clone()).await?;
    let listener = tokio::net::TcpListener::bind(host.listen())
        .await
        .with_context(|| format!("cannot listen on {}", host.listen()))?;
    let addr = listener.local_addr()?;
    let grace = host.serve.shutdown_grace();
    let (by_path, domain) = (host.serve.routes_by_path(), host.serve.domain.clone());
    let configured: Vec<String> = host.app_config.keys().cloned().collect();
    let tenants = Arc::new(crate::tenants::Tenants::new(
        engine,
        host,
        args.apps.clone(),
    ));
    for error in tenants.sync().await {
        report!("error: {error}");
    }
    // A misspelt app name would leave the app on its manifest's values.
    let served = tenants.app_names();
    for name in configured.iter().filter(|n| !served.contains(*n)) {
        report!(
            "warning: [app_config.{name:?}] in the host config names no app served from {} (none there, or refused above)",
            args.apps.display()
        );
    }
    say!("berth: serving {} at http://{addr}", args.apps.display());
    for name in tenants.app_names() {
        if let Some(domain) = &domain {
            say!("  {name}.{}", domain.trim_start_matches('.'));
        }
        if by_path {
            say!("  /{name}/...");
        }
    }
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    let watcher = tokio::spawn(tenants.clone().watch());
    let shutdown = {
        let (tenants, shutdown) = (tenants.clone(), unready_on(shutdown_signal(), ready));
        let rescans = watcher.abort_handle();
        // Message handlers drain beside the HTTP requests, and no app is
        // mounted (and its triggers started) any more.
        async move {
            shutdown.await;
            rescans.abort();
            tenants.stop_taking_messages();
        }
    };
    crate::triggers::http::serve(tenants.clone(), listener, shutdown, grace).await?;
    watcher.abort();
    // Ended, so that no rescan mounts an app after `stop` took them all.
    let _ = watcher.await;
    tenants.stop().await;
    if let Some(admin) = admin {
        admin.abort();
    }
    Ok(ExitCode::SUCCESS)
}

/// `berth up` of an app without triggers: runs its one command component
/// once, as `berth run` would.
async fn run_only_command(app: &App) -> anyhow::Result<ExitCode> {
    let runnable: Vec<&String> = app
        .components
        .iter()
        .filter(|(_, c)| c.exports.run)
        .map(|(name, _)| name)
        .collect();
    let [component] = runnable.as_slice() else {
        bail!(
            "{}: the app has no triggers and {} runnable components; add a [[trigger.http]], [[trigger.message]] or [[trigger.schedule]], or use `berth run --component`",
            app.manifest.file.display(),
            runnable.len()
        );
    };
    report!(
        "berth: app `{}` has no triggers: running `{component}` once",
        app.manifest.name
    );
    run_component(app, component, &[]).await
}

/// Starts the admin listener if the host config has one.
async fn start_admin(
    host: &HostConfig,
    ready: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = host.admin.listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("{}: cannot listen on `admin.listen` {addr}", host.source()))?;
    say!("berth: admin endpoints (/healthz, /readyz, /metrics) at http://{addr}");
    if !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "`admin.listen` is not a loopback address: /metrics names every app and component, \
             and the admin endpoints ask for no credential; let only the operator's network reach it"
        );
    }
    Ok(Some(tokio::spawn(crate::admin::serve(listener, ready))))
}

/// `signal`, after which `/readyz` answers 503, so a load balancer stops
/// sending requests while those in flight drain.
async fn unready_on(
    signal: impl std::future::Future<Output = ()>,
    ready: Arc<std::sync::atomic::AtomicBool>,
) {
    signal.await;
    ready.store(false, std::sync::atomic::Ordering::Relaxed);
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let mut host = host_config(&args.host)?;
    // Validation opens backends like a real load would, but the embedded
    // ones in a scratch directory: the state directory and custom paths
    // are checked, and nothing is created or claimed there.
    let scratch = std::env::temp_dir().join(format!("berth-check-{}", uuid::Uuid::new_v4()));
    host.dry_run = Some(scratch.clone());
    host.serve.tenant_manifests = args.tenant;
    let manifest = Manifest::load(&args.manifest)?;
    let engine = HostEngine::new(host.engine_settings())?;
    let result = App::load(&engine, manifest, &host).await;
    let _ = std::fs::remove_dir_all(&scratch);
    let app = result?;
    say!(
        "{}: app `{}` is valid",
        app.manifest.file.display(),
        app.manifest.name
    );
    for (name, c) in &app.components {
        let mut exports = Vec::new();
        if c.exports.run {
            exports.push("wasi:cli/run")
        }
        if c.exports.http {
            exports.push("wasi:http/incoming-handler")
        }
        if c.exports.message {
            exports.push("berth:infra/handler")
        }
        say!(
            "  component {name}: exports {}",
            if exports.is_empty() {
                "nothing runnable".into()
            } else {
                exports.join(", ")
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn readiness_ends_with_the_shutdown_signal() {
        let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (signal, signalled) = tokio::sync::oneshot::channel::<()>();
        let shutdown = tokio::spawn(super::unready_on(
            async move {
                let _ = signalled.await;
            },
            ready.clone(),
        ));
        tokio::task::yield_now().await;
        assert!(ready.load(std::sync::atomic::Ordering::Relaxed));
        signal.send(()).unwrap();
        shutdown.await.unwrap();
        assert!(!ready.load(std::sync::atomic::Ordering::Relaxed));
    }
}
