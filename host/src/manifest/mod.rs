//! The app manifest, `berth.toml`: what an app is made of and what each of
//! its components may use. Documented in `docs/manifest.md`.
//!
//! Parsing rejects unknown keys; [`Manifest::load`] then checks every
//! reference (granted logical names, trigger components) and names the file
//! and key of the first problem.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::limits::ComponentLimits;
use crate::outbound::AllowRule;
use limits::RawLimits;

mod limits;
mod triggers;

use triggers::RawTriggers;
pub use triggers::{
    DEFAULT_BACKOFF_MS, HttpTrigger, MessageTrigger, SCHEDULE_TOPIC_PREFIX, ScheduleTrigger,
};

/// The most components one manifest declares.
pub const MAX_COMPONENTS: usize = 256;
/// The most databases, buckets or containers (each kind) one manifest
/// declares.
pub const MAX_RESOURCES: usize = 256;
/// The most `[config]` keys one manifest declares.
pub const MAX_CONFIG_KEYS: usize = 4096;
/// The most triggers of each kind one manifest declares.
pub const MAX_TRIGGERS: usize = 1024;
/// The most names one component's grant of one kind lists.
pub const MAX_GRANTS: usize = 1024;

/// A manifest problem, naming the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read manifest {file}: {source}")]
    Read {
        /// The manifest path.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has an unknown or mistyped key.
    #[error("invalid manifest {file}: {message}")]
    Parse {
        /// The manifest path.
        file: PathBuf,
        /// The parser's message, with line, column and key.
        message: String,
    },
    /// A key holds a value that is not allowed.
    #[error("invalid manifest {file}: `{key}`: {message}")]
    Invalid {
        /// The manifest path.
        file: PathBuf,
        /// Dotted path of the offending key.
        key: String,
        /// What was wrong and what was expected.
        message: String,
    },
}

/// The manifest as written in TOML.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    sql: BTreeMap<String, SqlDecl>,
    #[serde(default)]
    kv: BTreeMap<String, KvDecl>,
    #[serde(default)]
    blob: BTreeMap<String, BlobDecl>,
    #[serde(default)]
    component: BTreeMap<String, RawComponent>,
    #[serde(default)]
    trigger: RawTriggers,
}

/// A logical SQL database the app uses.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SqlDecl {
    /// Most connections the app's pool for this database may open (pooled
    /// server backends only), capped by the host config's `max_connections`.
    pub max_connections: Option<u32>,
}

/// A logical key-value bucket the app uses.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KvDecl {
    /// Keep the embedded bucket in memory instead of SQLite (lost on exit).
    #[serde(default)]
    pub memory: bool,
}

/// A logical blob container the app uses.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BlobDecl {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComponent {
    path: PathBuf,
    build: Option<String>,
    #[serde(default)]
    grants: Grants,
    #[serde(default)]
    limits: RawLimits,
}

/// What a component may use, by logical name.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Logical SQL databases.
    #[serde(default)]
    pub sql: Vec<String>,
    /// Logical key-value buckets.
    #[serde(default)]
    pub kv: Vec<String>,
    /// Logical blob containers.
    #[serde(default)]
    pub blob: Vec<String>,
    /// Topics the component may publish (and send requests) to; patterns
    /// (`orders.*`, `orders.>`) grant every topic they match.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Sender addresses the component may send email from.
    #[serde(default)]
    pub email_senders: Vec<String>,
    /// Outbound HTTP destinations: `scheme://host[:port]`, host may start
    /// with `*.`.
    #[serde(default)]
    pub http: Vec<String>,
    /// Named upstreams (defined in the host config) the component may call
    /// as `http://<name>.upstream/…`.
    #[serde(default)]
    pub upstreams: Vec<String>,
    /// Config keys the component may read.
    #[serde(default)]
    pub config: Vec<String>,
}

/// A component of the app, resolved.
#[derive(Debug, Clone)]
pub struct ComponentDecl {
    /// Name (the key under `[component]`).
    pub name: String,
    /// Absolute path of the `.wasm`.
    pub path: PathBuf,
    /// Shell command that builds it, run in the manifest's directory.
    pub build: Option<String>,
    /// What it may use.
    pub grants: Grants,
    /// Parsed outbound HTTP allow-list.
    pub http_allow: Vec<AllowRule>,
    /// Its limits.
    pub limits: ComponentLimits,
}

/// A validated app manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Where it was read from (absolute).
    pub file: PathBuf,
    /// The app (tenant) name.
    pub name: String,
    /// Config values, unresolved (`${env:NAME}` references kept).
    pub config: BTreeMap<String, String>,
    /// Logical SQL databases.
    pub sql: BTreeMap<String, SqlDecl>,
    /// Logical key-value buckets.
    pub kv: BTreeMap<String, KvDecl>,
    /// Logical blob containers.
    pub blob: BTreeMap<String, BlobDecl>,
    /// Components by name.
    pub components: BTreeMap<String, ComponentDecl>,
    /// HTTP routes.
    pub http_triggers: Vec<HttpTrigger>,
    /// Message subscriptions.
    pub message_triggers: Vec<MessageTrigger>,
    /// Cron schedules.
    pub schedule_triggers: Vec<ScheduleTrigger>,
}

/// The largest manifest read.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;

impl Manifest {
    /// Reads and validates the manifest at `file`.
    pub fn load(file: &Path) -> Result<Manifest, ManifestError> {
        let text = Self::read(file)?;
        let file = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
        Self::parse(&text, &file)
    }

    /// The text of the manifest at `file`: a regular file of at most
    /// [`MAX_MANIFEST_BYTES`], opened without waiting (a FIFO without a
    /// writer would block the open for ever) and read with that bound, so
    /// that a tenant's manifest (read at every rescan of `berth serve`)
    /// cannot make the host read or hold more.
    pub fn read(file: &Path) -> Result<String, ManifestError> {
        use std::io::Read as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let failed = |source| ManifestError::Read {
            file: file.to_path_buf(),
            source,
        };
        let handle = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(file)
            .map_err(failed)?;
        if !handle.metadata().map_err(failed)?.is_file() {
            return Err(failed(std::io::Error::other("not a regular file")));
        }
        let mut bytes = Vec::new();
        handle
            .take(MAX_MANIFEST_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(failed)?;
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(failed(std::io::Error::other(format!(
                "larger than {} KiB",
                MAX_MANIFEST_BYTES >> 10
            ))));
        }
        String::from_utf8(bytes).map_err(|_| failed(std::io::Error::other("not UTF-8 text")))
    }

    /// Parses and validates manifest `text` as if read from `file`.
    pub fn parse(text: &str, file: &Path) -> Result<Manifest, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
            file: file.to_path_buf(),
            message: crate::config::toml_error(text, &e),
        })?;
        let base = file.parent().unwrap_or(Path::new("."));
        Validator { file }.validate(raw, base)
    }

    /// A manifest for running a lone component with no grants.
    pub fn for_component(path: &Path) -> Manifest {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "component".into());
        let component = ComponentDecl {
            name: name.clone(),
            path: path.clone(),
            build: None,
            grants: Grants::default(),
            http_allow: Vec::new(),
            limits: ComponentLimits::default(),
        };
        Manifest {
            file: path,
            name: name.clone(),
            config: BTreeMap::new(),
            sql: BTreeMap::new(),
            kv: BTreeMap::new(),
            blob: BTreeMap::new(),
            components: BTreeMap::from([(name, component)]),
            http_triggers: Vec::new(),
            message_triggers: Vec::new(),
            schedule_triggers: Vec::new(),
        }
    }

    /// The directory the manifest lives in.
    pub fn dir(&self) -> &Path {
        self.file.parent().unwrap_or(Path::new("."))
    }
}

struct Validator<'a> {
    file: &'a Path,
}

impl Validator<'_> {
    fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> ManifestError {
        ManifestError::Invalid {
            file: self.file.to_path_buf(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn validate(&self, raw: RawManifest, base: &Path) -> Result<Manifest, ManifestError> {
        self.check_name("name", &raw.name)?;
        // How much one manifest may declare: each component is compiled
        // and checked, each database, bucket and container opened, and a
        // tenant's manifest is read again at every rescan.
        for (key, count, most) in [
            ("component", raw.component.len(), MAX_COMPONENTS),
            ("sql", raw.sql.len(), MAX_RESOURCES),
            ("kv", raw.kv.len(), MAX_RESOURCES),
            ("blob", raw.blob.len(), MAX_RESOURCES),
            ("config", raw.config.len(), MAX_CONFIG_KEYS),
            ("trigger.http", raw.trigger.http.len(), MAX_TRIGGERS),
            ("trigger.message", raw.trigger.message.len(), MAX_TRIGGERS),
            ("trigger.schedule", raw.trigger.schedule.len(), MAX_TRIGGERS),
        ] {
            if count > most {
                return Err(self.invalid(
                    key,
                    format!("{count} declared; a manifest declares at most {most}"),
                ));
            }
        }
        for (name, decl) in &raw.sql {
            if decl.max_connections == Some(0) {
                return Err(
                    self.invalid(format!("sql.{name}.max_connections"), "must be at least 1")
                );
            }
        }
        for (kind, names) in [
            ("sql", raw.sql.keys().collect::<Vec<_>>()),
            ("kv", raw.kv.keys().collect()),
            ("blob", raw.blob.keys().collect()),
            ("config", raw.config.keys().collect()),
        ] {
            for name in names {
                self.check_name(&format!("{kind}.{name}"), name)?;
            }
        }
        let mut components = BTreeMap::new();
        for (name, rc) in raw.component {
            let key = format!("component.{name}");
            self.check_name(&key, &name)?;
            let grants = &rc.grants;
            self.check_refs(&key, "sql", &grants.sql, &raw.sql)?;
            self.check_refs(&key, "kv", &grants.kv, &raw.kv)?;
            self.check_refs(&key, "blob", &grants.blob, &raw.blob)?;
            self.check_refs(&key, "config", &grants.config, &raw.config)?;
            for (port, count) in [
                ("publish", grants.publish.len()),
                ("email_senders", grants.email_senders.len()),
                ("upstreams", grants.upstreams.len()),
                ("http", grants.http.len()),
            ] {
                if count > MAX_GRANTS {
                    return Err(self.invalid(
                        format!("{key}.grants.{port}"),
                        format!("{count} names; a grant lists at most {MAX_GRANTS}"),
                    ));
                }
            }
            for topic in &grants.publish {
                crate::ports::messaging::pattern::validate_pattern(topic)
                    .map_err(|m| self.invalid(format!("{key}.grants.publish"), m))?;
            }
            for sender in &grants.email_senders {
                crate::ports::email::validate_address(sender)
                    .map_err(|m| self.invalid(format!("{key}.grants.email_senders"), m))?;
            }
            for name in &grants.upstreams {
                if crate::outbound::upstream::upstream_name(&format!("{name}.upstream")).as_deref()
                    != Some(name.as_str())
                {
                    return Err(self.invalid(
                        format!("{key}.grants.upstreams"),
                        format!("{name:?} must be a lowercase name without dots"),
                    ));
                }
            }
            let http_allow = grants
                .http
                .iter()
                .map(|rule| AllowRule::parse(rule))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|m| self.invalid(format!("{key}.grants.http"), m))?;
            let limits = self.limits(&key, &rc.limits)?;
            components.insert(
                name.clone(),
                ComponentDecl {
                    name,
                    path: base.join(&rc.path),
                    build: rc.build,
                    grants: rc.grants,
                    http_allow,
                    limits,
                },
            );
        }
        self.check_triggers(&raw.trigger, &components)?;
        Ok(Manifest {
            file: self.file.to_path_buf(),
            name: raw.name,
            config: raw.config,
            sql: raw.sql,
            kv: raw.kv,
            blob: raw.blob,
            components,
            http_triggers: raw.trigger.http,
            message_triggers: raw.trigger.message,
            schedule_triggers: raw.trigger.schedule,
        })
    }

    /// Names become directory and file names of the embedded backends, so
    /// they are kept to a safe alphabet.
    fn check_name(&self, key: &str, name: &str) -> Result<(), ManifestError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !name.starts_with('-');
        if ok {
            Ok(())
        } else {
            Err(self.invalid(
                key,
                format!(
                    "name {name:?} must be 1-64 characters of a-z, A-Z, 0-9, `-`, `_`, not starting with `-`"
                ),
            ))
        }
    }

    /// Checks that each name `granted` is declared: a lookup each, so a
    /// long grant list against many declarations costs no more than its
    /// length.
    fn check_refs<V>(
        &self,
        component_key: &str,
        port: &str,
        granted: &[String],
        declared: &BTreeMap<String, V>,
    ) -> Result<(), ManifestError> {
        if granted.len() > MAX_GRANTS {
            return Err(self.invalid(
                format!("{component_key}.grants.{port}"),
                format!(
                    "{} names; a grant lists at most {MAX_GRANTS}",
                    granted.len()
                ),
            ));
        }
        for name in granted {
            if !declared.contains_key(name) {
                let mut known: Vec<_> = declared.keys().take(20).map(String::as_str).collect();
                if declared.len() > known.len() {
                    known.push("…");
                }
                let section = if port == "config" { "[config]" } else { port };
                return Err(self.invalid(
                    format!("{component_key}.grants.{port}"),
                    format!(
                        "unknown {port} name {name:?}; declare it in {section} (declared: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "manifest_tests.rs"]
mod tests;
