//! `berth serve`: many apps (tenants) in one host, loaded from a directory
//! and kept in step with it while serving.
//!
//! Each subdirectory of the apps directory holding a `berth.toml` is one
//! app. Its HTTP routes are mounted under `/<app-name>/` (the prefix is
//! stripped before the app sees the path) or, when the host config sets
//! `serve.domain`, at `<app-name>.<domain>` with the full path, an origin
//! of its own (both with `serve.path_routing = true`).
//!
//! The directory is rescanned every [`RELOAD_INTERVAL`]: a new or changed
//! app is loaded completely (validated, backends opened, compiled) before
//! it replaces the running version, so requests in flight finish on the
//! old version and new ones go to the new one. An update that fails to
//! load is refused and logged; the previous version keeps serving. A
//! removed directory unmounts its app.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use hyper::body::Incoming;
use hyper::{Request, Response};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::app::App;
use crate::config::HostConfig;
use crate::engine::HostEngine;
use crate::manifest::{Manifest, ManifestError};
use crate::ports::blob::url::URL_PREFIX;
use crate::triggers::http::{HttpHandler, HttpService, not_found};

#[path = "tenants_routing.rs"]
mod routing;
use routing::{has_dot_segment, normalized_host, request_host};
#[path = "tenants_refused.rs"]
mod refused;
use refused::Refused;

/// How often the apps directory is rescanned.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// What a change to an app looks like from the file system: the manifest's
/// bytes, the size and modification time of each component file, and
/// whether state an earlier version left in the app's directory refuses it
/// (with the two paths that tell, so a rescan of an unchanged manifest
/// need not parse it again to find them).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    manifest: Vec<u8>,
    components: Vec<(PathBuf, u64, Option<SystemTime>)>,
    left_state: bool,
    state_paths: Option<(PathBuf, PathBuf)>,
}

/// An app directory as a rescan found it: its fingerprint, and its
/// manifest, parsed only when the bytes differ from what the last scan
/// saw (a tenant's manifest can be a megabyte of declarations, and every
/// manifest is looked at every second).
struct Scanned {
    fingerprint: Fingerprint,
    manifest: Seen,
}

/// The manifest a rescan found.
enum Seen {
    /// New bytes, parsed (or the error reading or parsing them).
    Parsed(Box<Result<Manifest, ManifestError>>),
    /// The bytes the last scan saw, not parsed again: parsed only if a
    /// component or the app's state changed, so the app is loaded again.
    Unchanged(String),
}

impl Fingerprint {
    /// The app whose manifest is `manifest_path`, read once (bounded, see
    /// [`Manifest::read`]); `known` is what the last scans saw there (the
    /// running version's and a refused one's).
    fn of(manifest_path: &Path, host: &HostConfig, known: &[Fingerprint]) -> Scanned {
        let text = Manifest::read(manifest_path);
        let seen = match &text {
            Ok(text) => text.as_bytes().to_vec(),
            // Read again at each rescan: a manifest that cannot be read
            // is refused once, until what stops it changes.
            Err(e) => e.to_string().into_bytes(),
        };
        let unchanged = known.iter().find(|k| k.manifest == seen);
        let (manifest, paths, state_paths) = match (text, unchanged) {
            (Ok(text), Some(known)) => (
                Seen::Unchanged(text),
                known.components.iter().map(|(p, ..)| p.clone()).collect(),
                known.state_paths.clone(),
            ),
            (text, _) => {
                let manifest = text.and_then(|text| parse(manifest_path, &text));
                let paths = manifest.as_ref().map_or_else(
                    |_| Vec::new(),
                    |m| m.components.values().map(|c| c.path.clone()).collect(),
                );
                let state_paths = manifest
                    .as_ref()
                    .ok()
                    .map(|m| (crate::app::left_state(m), host.app_state_dir(m)));
                (Seen::Parsed(Box::new(manifest)), paths, state_paths)
            }
        };
        // State an earlier version left in the app's directory refuses the
        // app until it is removed or copied over (see `App::load`).
        let left_state = state_paths.as_ref().is_some_and(|(left, state)| {
            std::fs::symlink_metadata(left).is_ok() && !state.exists()
        });
        let components = paths
            .into_iter()
            .map(|path| {
                let meta = std::fs::metadata(&path).ok();
                let (len, modified) = (
                    meta.as_ref().map_or(0, |m| m.len()),
                    meta.and_then(|m| m.modified().ok()),
                );
                (path, len, modified)
            })
            .collect();
        Scanned {
            fingerprint: Fingerprint {
                manifest: seen,
                components,
                left_state,
                state_paths,
            },
            manifest,
        }
    }
}

/// Parses the manifest at `manifest_path` from its `text`.
fn parse(manifest_path: &Path, text: &str) -> Result<Manifest, ManifestError> {
    let file = std::path::absolute(manifest_path).unwrap_or_else(|_| manifest_path.to_path_buf());
    Manifest::parse(text, &file)
}

/// One app as mounted: its version's handler and message triggers.
struct Mounted {
    name: String,
    handler: Arc<HttpHandler>,
    triggers: tokio::task::JoinSet<()>,
}

/// How long stopping the host waits for the requests still using an app,
/// before its message handlers get their own grace (`[serve]
/// shutdown_grace_ms`).
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The apps of a host, by the directory they were loaded from.
pub struct Tenants {
    engine: HostEngine,
    host: HostConfig,
    dir: PathBuf,
    /// Directory → what was last seen there, and the running version.
    mounted: RwLock<BTreeMap<PathBuf, (Fingerprint, Arc<Mounted>)>>,
    /// App name → directory, for routing.
    by_name: RwLock<BTreeMap<String, PathBuf>>,
    /// Directory → a version that failed to load, tried again only after
    /// a backoff (see [`Refused`]) rather than every scan.
    refused: RwLock<BTreeMap<PathBuf, Refused>>,
    /// Replaced and removed versions being stopped, which a host stopping
    /// waits for too.
    retiring: std::sync::Mutex<tokio::task::JoinSet<()>>,
}

impl Tenants {
    /// Hosts the apps under `dir`; call [`Tenants::sync`] to load them.
    /// Their manifests are treated as the tenants' (see
    /// [`crate::config::ServeConfig::tenant_manifests`]).
    pub fn new(engine: HostEngine, mut host: HostConfig, dir: PathBuf) -> Tenants {
        host.serve.tenant_manifests = true;
        host.engine.default_tenant_maxima();
        Tenants {
            engine,
            host,
            dir,
            mounted: RwLock::default(),
            by_name: RwLock::default(),
            refused: RwLock::default(),
            retiring: std::sync::Mutex::default(),
        }
    }

    /// Names of the apps being served.
    pub fn app_names(&self) -> Vec<String> {
        self.by_name
            .read()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The running version of the app called `name`.
    pub fn app(&self, name: &str) -> Option<Arc<App>> {
        self.mounted_named(name).map(|m| m.handler.app().clone())
    }

    fn mounted_named(&self, name: &str) -> Option<Arc<Mounted>> {
        let dir = self.by_name.read().ok()?.get(name)?.clone();
        Some(self.mounted.read().ok()?.get(&dir)?.1.clone())
    }

    /// Brings the mounted apps in line with the directory: loads new and
    /// changed apps, unmounts removed ones. Returns the errors of apps that
    /// could not be loaded (each also logged).
    pub async fn sync(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let mut seen = Vec::new();
        // The file-system work of the whole scan (listing, reading and
        // parsing manifests, `stat`s), off the serving threads at once.
        let scanned = crate::fairness::blocking(|| -> std::io::Result<Vec<_>> {
            let mut dirs: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("berth.toml").is_file())
                .collect();
            dirs.sort();
            Ok(dirs
                .into_iter()
                .map(|dir| {
                    let known = self.last_seen(&dir);
                    let scanned = Fingerprint::of(&dir.join("berth.toml"), &self.host, &known);
                    (dir, scanned)
                })
                .collect())
        });
        let scanned = match scanned {
            Ok(scanned) => scanned,
            Err(e) => return vec![format!("cannot read {}: {e}", self.dir.display())],
        };
        for (dir, scanned) in scanned {
            seen.push(dir.clone());
            let manifest_path = dir.join("berth.toml");
            let Scanned {
                fingerprint,
                manifest,
            } = scanned;
            let current = self
                .mounted
                .read()
                .ok()
                .and_then(|m| m.get(&dir).map(|(f, _)| f.clone()));
            let refused = self.refused.read().ok().and_then(|r| r.get(&dir).cloned());
            if current.as_ref() == Some(&fingerprint)
                || refused.as_ref().is_some_and(|r| r.holds(&fingerprint))
            {
                continue;
            }
            // The bytes are what the last scan saw, but a component or the
            // state changed: parsed now, once.
            let manifest = match manifest {
                Seen::Parsed(manifest) => *manifest,
                Seen::Unchanged(text) => crate::fairness::blocking(|| parse(&manifest_path, &text)),
            };
            match self.load(&dir, manifest).await {
                Ok(mounted) => {
                    self.mount(dir.clone(), fingerprint, mounted);
                    if let Ok(mut r) = self.refused.write() {
                        r.remove(&dir);
                    }
                }
                Err(e) => {
                    let verb = if current.is_some() { "update" } else { "app" };
                    let message = format!("{}: {verb} refused: {e:#}", manifest_path.display());
                    // The message quotes the tenant's manifest: it must not
                    // make lines of the host's log of its own.
                    tracing::error!(
                        "{}{}",
                        crate::audit::printable(&message),
                        if current.is_some() {
                            "; the previous version keeps serving"
                        } else {
                            ""
                        }
                    );
                    errors.push(crate::audit::printable(&message).into_owned());
                    if let Ok(mut r) = self.refused.write() {
                        let refused = Refused::after(fingerprint, refused.as_ref());
                        r.insert(dir.clone(), refused);
                    }
                }
            }
        }
        let gone: Vec<PathBuf> = self
            .mounted
            .read()
            .map(|m| m.keys().filter(|d| !seen.contains(d)).cloned().collect())
            .unwrap_or_default();
        for dir in gone {
            self.unmount(&dir);
        }
        errors
    }

    /// What the last scans saw in `dir`: the running version's
    /// fingerprint and a refused one's.
    fn last_seen(&self, dir: &Path) -> Vec<Fingerprint> {
        let refused =
            (self.refused.read().ok()).and_then(|r| r.get(dir).map(|r| r.fingerprint.clone()));
        let mounted = self
            .mounted
            .read()
            .ok()
            .and_then(|m| m.get(dir).map(|(f, _)| f.clone()));
        mounted.into_iter().chain(refused).collect()
    }

    async fn load(
        &self,
        dir: &Path,
        manifest: Result<Manifest, ManifestError>,
    ) -> anyhow::Result<Mounted> {
        let manifest = manifest?;
        // Before the name is looked up: a tenant claiming another's name
        // is refused for that, not reported as a second copy.
        crate::fairness::blocking(|| crate::app::check_tenant_directory(&manifest))?;
        let name = manifest.name.clone();
        // Host names are matched in lower case (`Shop.example.com` is
        // `shop.example.com`): an app named otherwise could not be reached.
        if self.host.serve.domain.is_some() && name.bytes().any(|b| b.is_ascii_uppercase()) {
            anyhow::bail!(
                "app name `{name}` has upper-case letters, but apps are reached at `<app>.{}`, a host name matched in lower case; rename the app and its directory in lower case",
                self.host.serve.domain.as_deref().unwrap_or_default()
            );
        }
        let claimed = self
            .by_name
            .read()
            .ok()
            .and_then(|m| m.get(&name).cloned())
            .filter(|d| d != dir);
        if let Some(other) = claimed {
            anyhow::bail!(
                "app name `{name}` is already served from {}",
                other.display()
            );
        }
        let app = Arc::new(App::load(&self.engine, manifest, &self.host).await?);
        let handler = Arc::new(HttpHandler::new(app.clone())?);
        let mut triggers = tokio::task::JoinSet::new();
        crate::triggers::start_background(app, &mut triggers).await?;
        Ok(Mounted {
            name,
            handler,
            triggers,
        })
    }

    fn mount(&self, dir: PathBuf, fingerprint: Fingerprint, new: Mounted) {
        let name = new.name.clone();
        let old = self
            .mounted
            .write()
            .ok()
            .and_then(|mut m| m.insert(dir.clone(), (fingerprint, Arc::new(new))));
        if let Ok(mut names) = self.by_name.write() {
            if let Some((_, old)) = &old {
                names.remove(&old.name);
            }
            names.insert(name.clone(), dir);
        }
        if let Some((_, old)) = old {
            self.stop_triggers(old);
            tracing::info!(app = %name, "app updated");
        } else {
            tracing::info!(app = %name, "app mounted");
        }
    }

    fn unmount(&self, dir: &Path) {
        let old = self.mounted.write().ok().and_then(|mut m| m.remove(dir));
        if let Some((_, old)) = old {
            if let Ok(mut names) = self.by_name.write() {
                names.remove(&old.name);
            }
            tracing::info!(app = %old.name, "app removed");
            self.stop_triggers(old);
        }
    }

    /// Stops every app, for a host that is shutting down: their triggers
    /// end and their brokers are let go (see
    /// [`crate::triggers::stop_background`]).
    pub async fn stop(&self) {
        self.stop_taking_messages();
        let mounted: Vec<Arc<Mounted>> = match self.mounted.write() {
            Ok(mut mounted) => std::mem::take(&mut *mounted)
                .into_values()
                .map(|(_, m)| m)
                .collect(),
            Err(_) => return,
        };
        let grace = self.host.serve.shutdown_grace();
        let mut retiring = match self.retiring.lock() {
            Ok(mut retiring) => std::mem::take(&mut *retiring),
            Err(_) => tokio::task::JoinSet::new(),
        };
        let stopping = futures::future::join_all(
            mounted
                .into_iter()
                .map(|mounted| stop_when_unused(mounted, grace)),
        );
        // Versions replaced or removed shortly before are still draining.
        let retired = async { while retiring.join_next().await.is_some() {} };
        if tokio::time::timeout(STOP_GRACE + grace, futures::future::join(stopping, retired))
            .await
            .is_err()
        {
            tracing::warn!("some apps were still in use when the host stopped");
        }
    }

    /// Tells every app's message triggers to take no more deliveries (see
    /// [`App::stop_taking_messages`]): the host is shutting down.
    pub fn stop_taking_messages(&self) {
        if let Ok(mounted) = self.mounted.read() {
            for (_, app) in mounted.values() {
                app.handler.app().stop_taking_messages();
            }
        }
    }

    /// Rescans every [`RELOAD_INTERVAL`] until dropped.
    pub async fn watch(self: Arc<Self>) {
        loop {
            tokio::time::sleep(RELOAD_INTERVAL).await;
            self.sync().await;
        }
    }

    /// Which app a request is for, and the path it should see. A path
    /// with a dot segment, and a request whose URI and `Host` name
    /// different hosts, reach no app: a proxy in front, normalizing one of
    /// them, would judge the request by another app than the one it
    /// reaches.
    fn route(&self, req: &Request<Incoming>) -> Option<(Arc<Mounted>, Option<String>)> {
        let path = req.uri().path();
        if has_dot_segment(path) {
            return None;
        }
        // Two `Host` lines (RFC 9112 wants a 400): a proxy in front judging
        // the request by the other one would judge it by another app.
        if req
            .headers()
            .get_all(hyper::header::HOST)
            .iter()
            .nth(1)
            .is_some()
        {
            return None;
        }
        // Signed blob URLs carry the app name: /_berth/blob/<app>/…
        if let Some(rest) = path.strip_prefix(URL_PREFIX) {
            let app = rest.split('/').next()?;
            return Some((self.mounted_named(app)?, None));
        }
        if let Some(domain) = &self.host.serve.domain {
            let header = req
                .headers()
                .get(hyper::header::HOST)
                .map(|h| h.to_str().ok());
            let host = request_host(req.uri().authority().map(|a| a.as_str()), header)?;
            let domain = normalized_host(domain.trim_start_matches('.'));
            if let Some(app) = host
                .strip_suffix(domain.as_str())
                .and_then(|h| h.strip_suffix('.'))
            {
                return Some((self.mounted_named(app)?, None));
            }
        }
        // By path, every app is on one origin: only where the operator
        // wants it (by default, without a domain).
        if !self.host.serve.routes_by_path() {
            return None;
        }
        let rest = path.strip_prefix('/')?;
        let (app, tail) = rest.split_once('/').unwrap_or((rest, ""));
        Some((self.mounted_named(app)?, Some(format!("/{tail}"))))
    }
}

impl Tenants {
    /// Stops the message triggers of a replaced or removed version: they
    /// take no more deliveries at once (the new version's take them), and
    /// once the last request using it has finished, its running handlers
    /// get the shutdown grace to finish.
    fn stop_triggers(&self, old: Arc<Mounted>) {
        old.handler.app().stop_taking_messages();
        let stopping = stop_when_unused(old, self.host.serve.shutdown_grace());
        match self.retiring.lock() {
            Ok(mut retiring) => {
                while retiring.try_join_next().is_some() {}
                retiring.spawn(stopping);
            }
            Err(_) => {
                tokio::spawn(stopping);
            }
        }
    }
}

/// Waits for the last request using `old` to finish, then stops its
/// triggers (their running handlers having `grace` to finish) and lets go
/// of its broker.
async fn stop_when_unused(mut old: Arc<Mounted>, grace: Duration) {
    loop {
        match Arc::try_unwrap(old) {
            Ok(mounted) => {
                let app = mounted.handler.app().clone();
                crate::triggers::stop_background(&app, mounted.triggers, grace).await;
                return;
            }
            Err(still_shared) => {
                old = still_shared;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

impl HttpService for Tenants {
    async fn call(self: Arc<Self>, mut req: Request<Incoming>) -> Response<HyperOutgoingBody> {
        let Some((mounted, path)) = self.route(&req) else {
            return not_found();
        };
        let by_path = path.is_some();
        if let Some(path) = path {
            let path_and_query = match req.uri().query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query = path_and_query.parse().ok();
            match hyper::Uri::from_parts(parts) {
                Ok(uri) => *req.uri_mut() = uri,
                Err(_) => return not_found(),
            }
        }
        let mut response = mounted.handler.clone().call(req).await;
        if by_path {
            // A service worker's scope stays within the path of its script
            // (`/<app>/…`) unless this header widens it: to `/`, one
            // tenant's worker would sit in front of every tenant's pages in
            // that browser, for as long as it stays installed.
            response.headers_mut().remove("service-worker-allowed");
        }
        response
    }
}
