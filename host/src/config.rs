//! The host config: owned by the operator, it says where state lives, how
//! large the engine is, and which backend serves each logical resource.
//! Without one, everything is embedded under the state directory.
//!
//! ```toml
//! state_dir = "/var/lib/berth"
//! listen = "0.0.0.0:3000"
//! public_url = "https://apps.example.com"
//! [engine]
//! max_instances = 1000
//! max_memory_mb = 1024
//! [kv.cache]
//! type = "memory"
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

use crate::engine::EngineSettings;

#[path = "config_app_limits.rs"]
mod app_limits;
#[path = "config_app_values.rs"]
mod app_values;
#[path = "config_by_type.rs"]
pub(crate) mod by_type;
#[path = "config_engine.rs"]
mod engine;
use crate::manifest::Manifest;
use crate::outbound::{OutboundConfig, UpstreamConfig};
use crate::ports::blob::BlobConfig;
use crate::ports::email::EmailConfig;
use crate::ports::kv::KvConfig;
use crate::ports::messaging::MessagingConfig;
use crate::ports::sql::SqlConfig;
use crate::secret::{SecretResolver, SecretsConfig};
pub use app_limits::{AppLimitsConfig, DEFAULT_TENANT_STORE_MB};
pub use app_values::AppConfigValues;
pub use engine::{EngineConfig, MAX_MEMORY_MB, TENANT_MAXIMA};

/// Default HTTP listen address of `berth up`.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    3000,
));

/// `[admin]`: the operators' listener (health, readiness, metrics).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener; none by default.
    pub listen: Option<SocketAddr>,
}

/// `[serve]`: how `berth serve` routes requests to apps, and how both
/// `berth serve` and `berth up` serve HTTP.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// When set, `<app>.<domain>` reaches app `<app>`, each app on an
    /// origin of its own.
    pub domain: Option<String>,
    /// Whether `/<app>/…` reaches app `<app>` too: every app then shares
    /// one origin (a tenant's page can read another's responses, set its
    /// cookies), so it is for trusted or API-only tenants. Default: on
    /// without `domain`, off with it.
    pub path_routing: Option<bool>,
    /// How long requests in flight, and message handlers running, may
    /// finish after SIGTERM/SIGINT (or, for handlers, after their app is
    /// replaced) before they are cancelled, in milliseconds; default
    /// 10 000. A cancelled handler's message is delivered again.
    pub shutdown_grace_ms: Option<u64>,
    /// Manifests come from tenants, not the operator: `${env:…}` in their
    /// config is refused. Always set by `berth serve`.
    #[serde(skip)]
    pub tenant_manifests: bool,
}

impl ServeConfig {
    /// Whether apps are reached by path prefix (see [`Self::path_routing`]).
    pub fn routes_by_path(&self) -> bool {
        self.path_routing.unwrap_or(self.domain.is_none())
    }

    /// The grace period of a graceful shutdown.
    pub fn shutdown_grace(&self) -> std::time::Duration {
        self.shutdown_grace_ms.map_or(
            crate::triggers::http::DEFAULT_SHUTDOWN_GRACE,
            std::time::Duration::from_millis,
        )
    }
}

/// The operator's configuration of a host.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Root of all embedded state; default `.berth/` beside the manifest
    /// (see [`HostConfig::state_root`]).
    pub state_dir: Option<PathBuf>,
    /// A dry run (`berth check`): the embedded stores open in this scratch
    /// directory instead of their places, which are only checked, and
    /// custom paths are not claimed. (Servers are still connected to, and
    /// components compiled into the cache, as in a load.)
    #[serde(skip)]
    pub dry_run: Option<PathBuf>,
    /// HTTP listen address; default 127.0.0.1:3000.
    pub listen: Option<SocketAddr>,
    /// Base URL clients reach the host at (for blob URLs); default
    /// `http://<listen>`.
    pub public_url: Option<String>,
    /// Engine sizing.
    #[serde(default)]
    pub engine: EngineConfig,
    /// Routing of `berth serve`.
    #[serde(default)]
    pub serve: ServeConfig,
    /// Limits per app.
    #[serde(default)]
    pub app_limits: AppLimitsConfig,
    /// The admin listener.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Backend per logical SQL database.
    #[serde(default)]
    pub sql: BTreeMap<String, SqlConfig>,
    /// Backend per logical bucket.
    #[serde(default)]
    pub kv: BTreeMap<String, KvConfig>,
    /// Backend per logical container.
    #[serde(default)]
    pub blob: BTreeMap<String, BlobConfig>,
    /// The broker.
    #[serde(default)]
    pub messaging: MessagingConfig,
    /// The mail transport.
    #[serde(default)]
    pub email: EmailConfig,
    /// Outbound HTTP timeouts, caps and address exceptions.
    #[serde(default)]
    pub outbound: OutboundConfig,
    /// Secret stores beyond env and files.
    #[serde(default)]
    pub secrets: SecretsConfig,
    /// Config values the operator sets per app (`[app_config.<app>]`),
    /// overriding the manifest's; they may reference secrets, or be
    /// literal ones (so `Debug` shows their keys only).
    #[serde(default)]
    pub app_config: AppConfigValues,
    /// Named upstreams granted components call by name, with credentials
    /// the host adds.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    #[serde(skip)]
    file: Option<PathBuf>,
}

/// A TOML error as `line L, column C: <message>`, without the excerpt of
/// the file that toml's own `Display` shows, and with the configured value
/// elided from the message (see [`elide_values`]): the offending line may
/// hold a secret (an inline value, a misspelt `password` key, an
/// unterminated string), and errors are logged.
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let Some(before) = e.span().and_then(|span| text.get(..span.start)) else {
        // Without a position toml shows no excerpt either, and its whole
        // message names the key.
        return elide_values(e.to_string().trim_end());
    };
    let message = elide_values(e.message().trim_end());
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}: {message}")
}

/// `message` without the values it repeats: serde's `invalid type: <kind>
/// <value>, expected …` and `invalid value: …` keep only the kind (a
/// password written without quotes is an `integer \`20240611\``), and the
/// text of every double-quoted string is replaced by `…`, escaped quotes
/// (`\"`) included.
fn elide_values(message: &str) -> String {
    let mut message = message.to_string();
    for lead in ["invalid type: ", "invalid value: "] {
        let Some(start) = message.find(lead).map(|at| at + lead.len()) else {
            continue;
        };
        // The last one: the value itself may hold ", expected".
        let end = message[start..]
            .rfind(", expected")
            .map_or(message.len(), |at| start + at);
        let kind = message[start..end]
            .split([' ', '`', '"'])
            .next()
            .unwrap_or_default()
            .to_string();
        message.replace_range(start..end, &format!("{kind} …"));
    }
    elide_quoted(&message)
}

/// `message` with the text between each pair of double quotes replaced by
/// `…`; a backslash inside quotes escapes the next character.
fn elide_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let (mut quoted, mut escaped) = (false, false);
    for c in message.chars() {
        if !quoted {
            out.push(c);
            quoted = c == '"';
        } else if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '"' {
            out.push_str("…\"");
            quoted = false;
        }
    }
    if quoted {
        out.push('…');
    }
    out
}

impl HostConfig {
    /// Reads a host config file; errors name the file and key.
    pub fn load(path: &Path) -> anyhow::Result<HostConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read host config {}", path.display()))?;
        let mut config: HostConfig = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "invalid host config {}: {}",
                path.display(),
                toml_error(&text, &e)
            )
        })?;
        config
            .validate()
            .map_err(|m| anyhow::anyhow!("invalid host config {}: {m}", path.display()))?;
        config
            .resolve_relative_paths(path.parent().unwrap_or(Path::new(".")))
            .map_err(|m| anyhow::anyhow!("invalid host config {}: {m}", path.display()))?;
        config.file = Some(path.to_path_buf());
        Ok(config)
    }

    /// Makes `state_dir` and `engine.cache_dir`, when relative, relative
    /// to `base`, the file's directory, not to the directory the host
    /// happens to start in. A relative path of a store (`sql.*.path`,
    /// `kv.*.path`, `blob.*.root`) is refused instead: earlier versions
    /// read it from the working directory, and reading it from here would
    /// open an empty store in place of the one holding the data.
    fn resolve_relative_paths(&mut self, base: &Path) -> Result<(), String> {
        let rebase = |p: &mut PathBuf| *p = base.join(&*p);
        self.state_dir.iter_mut().for_each(rebase);
        self.engine.cache_dir.iter_mut().for_each(rebase);
        let stores = self
            .sql
            .iter()
            .filter_map(|(name, c)| match c {
                SqlConfig::Sqlite { path: Some(p) } => Some((format!("sql.{name}.path"), p)),
                _ => None,
            })
            .chain(self.kv.iter().filter_map(|(name, c)| match c {
                KvConfig::Sqlite { path: Some(p) } => Some((format!("kv.{name}.path"), p)),
                _ => None,
            }))
            .chain(self.blob.iter().filter_map(|(name, c)| match c {
                BlobConfig::Fs { root: Some(p) } => Some((format!("blob.{name}.root"), p)),
                _ => None,
            }));
        let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
        for (key, path) in stores {
            if path.is_relative() {
                return Err(format!(
                    "`{key}` is the relative path `{}`; give it absolute: `{}` is where earlier versions (and this host's working directory) put it, `{}` is beside this file",
                    path.display(),
                    absolute(path.clone()).display(),
                    absolute(base.join(path)).display()
                ));
            }
        }
        Ok(())
    }

    /// Checks values the file's syntax allows but the host cannot use (the
    /// backends' settings are checked when an app opens them); the error
    /// names the key.
    fn validate(&self) -> Result<(), String> {
        self.engine.validate()?;
        self.app_limits.validate()?;
        if let Some(aws) = &self.secrets.aws {
            aws.timeout()?;
            if aws.region.trim().is_empty() {
                return Err(
                    "`secrets.aws.region` is empty; give the AWS region, e.g. \"eu-west-1\"".into(),
                );
            }
            let endpoint_ok = aws.endpoint.as_deref().is_none_or(|e| {
                e.parse::<hyper::Uri>().is_ok_and(|u| {
                    matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
                })
            });
            if !endpoint_ok {
                return Err("`secrets.aws.endpoint` must be an http:// or https:// URL".into());
            }
            if let Some(host) = aws.endpoint.as_deref().and_then(plain_http_remote_host) {
                tracing::warn!(
                    %host,
                    "`secrets.aws.endpoint` is plain http:// to a host other than this machine: secret values cross the network unencrypted; use https://"
                );
            }
        }
        self.validate_email()
    }

    /// What can be checked of `[email]` without connecting, so a mistake
    /// fails the host's start rather than each app's load.
    fn validate_email(&self) -> Result<(), String> {
        let EmailConfig::Smtp {
            username,
            password,
            senders,
            ..
        } = &self.email
        else {
            return Ok(());
        };
        if username.is_some() != password.is_some() {
            return Err("`email`: give both `username` and `password`, or neither".into());
        }
        if password
            .as_deref()
            .is_some_and(|p| !SecretResolver::is_only_references(p))
        {
            return Err("`email.password`: secrets are never inlined; reference it as ${env:NAME} or ${file:/path}, with no text around it".into());
        }
        for (app, entries) in senders.iter().flatten() {
            for entry in entries {
                crate::ports::email::validate_sender_entry(entry)
                    .map_err(|m| format!("`email.senders.{app}`: {m}"))?;
            }
        }
        Ok(())
    }

    /// The listen address.
    pub fn listen(&self) -> SocketAddr {
        self.listen.unwrap_or(DEFAULT_LISTEN)
    }

    /// Engine settings derived from the config.
    pub fn engine_settings(&self) -> EngineSettings {
        let mut s = EngineSettings::default();
        if let Some(n) = self.engine.max_instances {
            s.max_instances = n;
        }
        if let Some(mb) = self.engine.max_memory_mb {
            // Checked at load; saturating, as in [`EngineConfig::cap`].
            s.max_memory_bytes = mb.saturating_mul(1 << 20);
        }
        if let Some(dir) = &self.engine.cache_dir {
            s.cache_dir = dir.clone();
        }
        if let Some(mb) = self.engine.cache_max_mb {
            s.cache_max_bytes = mb.saturating_mul(1 << 20);
        }
        if let Some(mb) = self.engine.max_component_mb {
            s.max_component_bytes = mb.clamp(1, 1 << 20) << 20;
        }
        if let Some(n) = self.engine.long_running_workers {
            s.long_running_workers = Some(n.max(1));
        }
        if let Some(ms) = self.engine.max_compile_ms {
            s.max_compile_time = std::time::Duration::from_millis(ms.max(1));
        }
        if let Some(mb) = self.engine.sqlite_memory_mb {
            s.sqlite_memory_bytes = mb.saturating_mul(1 << 20);
        }
        s
    }

    /// The state root for `manifest`: `state_dir`, or else `.berth/`
    /// beside the manifest, or on `berth serve` `.berth/` in the directory
    /// of apps, beside the app's directory: never inside it, since its
    /// tenant writes there (a link planted in its state would lead the
    /// host into another app's data).
    pub fn state_root(&self, manifest: &Manifest) -> PathBuf {
        if let Some(dir) = &self.state_dir {
            return dir.clone();
        }
        let dir = manifest.dir();
        match dir.parent() {
            Some(apps) if self.serve.tenant_manifests => apps.join(".berth"),
            _ => dir.join(".berth"),
        }
    }

    /// Where `manifest`'s app keeps its embedded data.
    pub fn app_state_dir(&self, manifest: &Manifest) -> PathBuf {
        self.state_root(manifest).join(&manifest.name)
    }

    /// The file this config was read from, or a description of defaults.
    pub fn source(&self) -> String {
        self.file
            .as_ref()
            .map_or("host config (defaults)".into(), |f| f.display().to_string())
    }

    /// Resolves `${env:…}`/`${file:…}` references, with the `.env` file
    /// beside the host config as a fallback for `env`, and `${aws-sm:…}`
    /// when `[secrets.aws]` is configured.
    pub async fn secrets(&self) -> anyhow::Result<SecretResolver> {
        let dotenv = self
            .file
            .as_ref()
            .and_then(|f| f.parent())
            .map(|d| d.join(".env"));
        let resolver = SecretResolver::new(dotenv.as_deref())
            .map_err(|m| anyhow::anyhow!("{}: {m}", self.source()))?;
        match &self.secrets.aws {
            Some(aws) => resolver
                .with_aws(aws)
                .await
                .map_err(|m| anyhow::anyhow!("{}: {m}", self.source())),
            None => Ok(resolver),
        }
    }

    /// The key signing blob URLs, kept in the state root so URLs survive a
    /// restart. Created with owner-only permissions.
    pub fn url_signing_key(&self, manifest: &Manifest) -> anyhow::Result<Vec<u8>> {
        if self.dry_run.is_some() {
            return Ok(rand::random::<[u8; 32]>().to_vec());
        }
        let path = self.state_root(manifest).join("url-signing.key");
        let read = |path: &Path| -> anyhow::Result<Option<Vec<u8>>> {
            match std::fs::read(path) {
                Ok(key) if key.len() >= 32 => Ok(Some(key)),
                // What an older Berth's write, cut off by a crash, left: no
                // URL can have been signed with it.
                Ok(key) if key.is_empty() => {
                    std::fs::remove_file(path)
                        .with_context(|| format!("cannot replace empty {}", path.display()))?;
                    Ok(None)
                }
                // Never replaced silently: every URL signed with it would
                // stop working without a word.
                Ok(key) => anyhow::bail!(
                    "{} holds {} bytes, not a signing key of 32 or more: remove it to make a new \
                     one (blob URLs signed with the old key then stop working)",
                    path.display(),
                    key.len()
                ),
                // Missing, or a file where a directory on its way should
                // be: making it says what is wrong.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                    ) =>
                {
                    Ok(None)
                }
                Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
            }
        };
        if let Some(key) = read(&path)? {
            return Ok(key);
        }
        let key: [u8; 32] = rand::random();
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))
            .with_context(|| format!("cannot create state directory for {}", path.display()))?;
        let created = crate::state_file::create_once(&path, &key, 0o600)
            .with_context(|| format!("cannot write {}", path.display()))?;
        if created {
            return Ok(key.to_vec());
        }
        // Another process made it meanwhile: its key is the one.
        read(&path)?.with_context(|| format!("{} went away as it was made", path.display()))
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;

/// The host of `url` if it is plain `http://` to anywhere but a loopback
/// address or `localhost`.
fn plain_http_remote_host(url: &str) -> Option<String> {
    let uri = url.parse::<hyper::Uri>().ok()?;
    if !uri.scheme_str()?.eq_ignore_ascii_case("http") {
        return None;
    }
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (!loopback).then(|| host.to_string())
}
