//! Opens the backends of an app's logical resources as the host config
//! says: embedded defaults (SQLite, memory, directories, in-process broker,
//! email files) or real servers. Everything is connected and checked here,
//! before any guest runs; errors name the host-config file and key, and
//! whether the server could not be reached.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::app::AppBackends;
use crate::config::HostConfig;
use crate::fairness::blocking;
use crate::manifest::Manifest;
use crate::ports::blob::s3::{S3Container, S3Settings};
use crate::ports::blob::url::UrlSigner;
use crate::ports::blob::{BlobBackend, BlobConfig, fs::FsContainer};
use crate::ports::email::smtp::{SmtpSender, SmtpSettings, SmtpTls};
use crate::ports::email::{EmailBackend, EmailConfig, file::FileSink};
use crate::ports::kv::redis::{RedisBucket, RedisSettings};
use crate::ports::kv::{KvBackend, KvConfig, sqlite::SqliteBucket};
use crate::ports::sql::PgTenancy;
use crate::ports::sql::mysql::{MysqlDatabase, MysqlSettings};
use crate::ports::sql::pg_tenancy::{tenant_owner, tenant_password, tenant_role};
use crate::ports::sql::postgres::{PostgresDatabase, PostgresSettings, TenantLogin};
use crate::ports::sql::{SqlBackend, SqlConfig, sqlite::SqliteDatabase};
use crate::secret::SecretResolver;

mod messaging;
mod ownership;
mod places;
mod settings;

use ownership::PathKind;
use places::{Places, embedded_path};
pub use places::{check_cache_beside_apps, check_state_beside_apps};
use settings::{
    Origin, connection_failure, optional_secret, secret_setting, sql_startup_failure, url_setting,
};

/// Pool size of a server database when neither config names one.
const DEFAULT_MAX_CONNECTIONS: u32 = 10;

/// The shortest `tenant_password_key` accepted: tenant passwords are HMACs
/// of public role names under it, so a short (or empty) key would make every
/// tenant's password computable.
const MIN_TENANT_KEY_BYTES: usize = 16;

/// A server database's `connect_timeout_ms` (default 5 s) and
/// `statement_timeout_ms` (default 30 s) under `key`.
fn sql_timeouts(
    origin: &Origin<'_>,
    key: &str,
    connect_ms: Option<u64>,
    statement_ms: Option<u64>,
) -> anyhow::Result<(Duration, Duration)> {
    Ok((
        origin.millis(&format!("{key}.connect_timeout_ms"), connect_ms, 5000)?,
        origin.millis(&format!("{key}.statement_timeout_ms"), statement_ms, 30_000)?,
    ))
}

/// Whether `host` names this machine: `localhost` or a loopback address.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Refuses an app whose components grant themselves a sender the operator's
/// `email.senders.<app>` does not allow (see [`EmailConfig::Smtp`]): the
/// operator's relay must not send as anyone a tenant names. On `berth
/// serve` the list is required for every app that grants a sender.
fn check_email_senders(
    origin: &Origin<'_>,
    manifest: &Manifest,
    senders: Option<&std::collections::BTreeMap<String, Vec<String>>>,
    host: &HostConfig,
) -> anyhow::Result<()> {
    for (app, entries) in senders.into_iter().flatten() {
        for entry in entries {
            crate::ports::email::validate_sender_entry(entry)
                .map_err(|m| origin.err(&format!("email.senders.{app}"), m))?;
        }
    }
    let granted = manifest
        .components
        .values()
        .flat_map(|c| c.grants.email_senders.iter().map(move |s| (&c.name, s)));
    let allowed = senders.and_then(|s| s.get(&manifest.name));
    for (component, sender) in granted {
        let admitted = match allowed {
            Some(list) => crate::ports::email::sender_allowed(list, sender),
            None => senders.is_none() && !host.serve.tenant_manifests,
        };
        if !admitted {
            return Err(origin.err(
                &format!("email.senders.{}", manifest.name),
                format!(
                    "component `{component}` is granted sender {sender:?}, which the operator does not allow this app{}",
                    if host.serve.tenant_manifests && allowed.is_none() {
                        " (on `berth serve` the senders each app may use are listed in the host config)"
                    } else {
                        ""
                    }
                ),
            ));
        }
    }
    Ok(())
}

/// Opens every logical resource `manifest` declares, under `state`, kept
/// apart from the engine's compiled-component cache `cache_dir`.
pub async fn open(
    host: &HostConfig,
    manifest: &Manifest,
    state: &Path,
    cache_dir: &Path,
    secrets: &SecretResolver,
    allowance: &crate::rate::AppAllowance,
) -> anyhow::Result<AppBackends> {
    let app = manifest.name.as_str();
    let origin = Origin {
        source: host.source(),
        app,
    };
    let places = Places {
        state,
        open_in: host
            .dry_run
            .as_ref()
            .map_or_else(|| state.to_path_buf(), |scratch| scratch.join(app)),
        tenant_dir: host.serve.tenant_manifests.then(|| manifest.dir()),
        custom: Default::default(),
        cache_dir: cache_dir.to_path_buf(),
    };
    // The app's state directory is written through its stores too.
    places::keep_off_the_cache(state, cache_dir)
        .map_err(|m| anyhow::anyhow!("{}: `state_dir`: {m}", host.source()))?;
    // A dry run opens its stores in a scratch directory: a state directory
    // a load could not create or write is found here instead.
    if places.dry_run() {
        blocking(|| places::check_state_writable(state))?;
    }
    // Before anything is opened: a refusal costs no connection.
    if let EmailConfig::Smtp { senders, .. } = &host.email {
        check_email_senders(&origin, manifest, senders.as_ref(), host)?;
    }
    // Each embedded store's room on disk.
    let store_max = host.app_limits.store_max_bytes(host.serve.tenant_manifests);
    let mut sql: HashMap<String, Arc<dyn SqlBackend>> = HashMap::new();
    for (name, decl) in &manifest.sql {
        let key = format!("sql.{name}");
        // The host config's `max_connections` caps what the manifest asks
        // (the manifest's own 0 is refused when it is parsed).
        let pool_size = |host_max: Option<u32>, host_min: Option<u32>| {
            let max_key = format!("{key}.max_connections");
            let host_max = origin.at_least_one(&max_key, host_max, DEFAULT_MAX_CONNECTIONS)?;
            let min = host_min.unwrap_or(0);
            if min > host_max {
                return Err(origin.err(
                    &format!("{key}.min_connections"),
                    format!("is {min}; it must be at most `max_connections` ({host_max})"),
                ));
            }
            let max = decl
                .max_connections
                .map_or(host_max, |m| m.clamp(1, host_max));
            // A manifest asking for fewer connections than the host keeps
            // open lowers the minimum with it.
            anyhow::Ok((max, min.min(max)))
        };
        let cfg = host
            .sql
            .get(name)
            .cloned()
            .unwrap_or(SqlConfig::Sqlite { path: None });
        let db: Arc<dyn SqlBackend> = match cfg {
            SqlConfig::Sqlite { path } => blocking(|| {
                let path = embedded_path(
                    &origin,
                    &format!("{key}.path"),
                    path,
                    PathKind::File,
                    &places,
                    &Path::new("sql").join(format!("{name}.db")),
                )?;
                let db = SqliteDatabase::open_bounded(&path, Default::default(), store_max)
                    .map_err(|e| origin.err(&key, e))?;
                anyhow::Ok(Arc::new(db) as Arc<dyn SqlBackend>)
            })?,
            SqlConfig::Postgres {
                url,
                password,
                schema,
                max_connections,
                min_connections,
                connect_timeout_ms,
                statement_timeout_ms,
                tenancy,
                tenant_password_key,
                apps,
            } => {
                if tenancy == PgTenancy::Shared {
                    SqlConfig::check_shared(apps.as_deref(), app, host.serve.tenant_manifests)
                        .map_err(|m| origin.err(&format!("{key}.apps"), m))?;
                } else if apps.is_some() {
                    return Err(origin.err(
                        &format!("{key}.apps"),
                        "only used with `tenancy = \"shared\"`: with `role-per-app` every app gets its own role and schema",
                    ));
                }
                let tenant = match (tenancy, tenant_password_key) {
                    (PgTenancy::Shared, None) => None,
                    (PgTenancy::Shared, Some(_)) => {
                        return Err(origin.err(
                            &format!("{key}.tenant_password_key"),
                            "only used with `tenancy = \"role-per-app\"`",
                        ));
                    }
                    (PgTenancy::RolePerApp, None) => {
                        return Err(origin.err(
                            &key,
                            "`tenancy = \"role-per-app\"` needs `tenant_password_key` (a secret reference)",
                        ));
                    }
                    (PgTenancy::RolePerApp, Some(_)) if schema.is_some() => {
                        return Err(origin.err(
                            &format!("{key}.schema"),
                            "with `tenancy = \"role-per-app\"` each app gets its own schema; remove `schema`",
                        ));
                    }
                    (PgTenancy::RolePerApp, Some(raw)) => {
                        let secret = secret_setting(
                            &origin,
                            &format!("{key}.tenant_password_key"),
                            &raw,
                            secrets,
                        )
                        .await?;
                        if secret.expose().len() < MIN_TENANT_KEY_BYTES {
                            return Err(origin.err(
                                &format!("{key}.tenant_password_key"),
                                format!(
                                    "resolves to fewer than {MIN_TENANT_KEY_BYTES} bytes; tenant passwords derived from it could be computed by anyone (use e.g. 32 random bytes, hex-encoded)"
                                ),
                            ));
                        }
                        let role = tenant_role(app, name);
                        Some(TenantLogin {
                            password: tenant_password(&secret, &role),
                            role,
                            owner: tenant_owner(app, name),
                        })
                    }
                };
                let (max_connections, min_connections) =
                    pool_size(max_connections, min_connections)?;
                let (connect_timeout, statement_timeout) =
                    sql_timeouts(&origin, &key, connect_timeout_ms, statement_timeout_ms)?;
                let settings = PostgresSettings {
                    url: url_setting(&origin, &format!("{key}.url"), &url, secrets).await?,
                    password: optional_secret(&origin, &key, password, secrets).await?,
                    // A dry run tries the role's provisioning and rolls
                    // it back: committed, it would set the role's password,
                    // which a check with another key would change under a
                    // running host.
                    tenant,
                    dry_run: places.dry_run(),
                    schema,
                    max_connections,
                    min_connections,
                    connect_timeout,
                    statement_timeout,
                    application_name: format!("berth:{app}:{name}"),
                };
                Arc::new(
                    PostgresDatabase::connect(&settings)
                        .await
                        .map_err(|e| origin.err(&key, sql_startup_failure(e)))?,
                )
            }
            SqlConfig::Mysql {
                url,
                password,
                max_connections,
                min_connections,
                connect_timeout_ms,
                statement_timeout_ms,
                apps,
            } => {
                SqlConfig::check_shared(apps.as_deref(), app, host.serve.tenant_manifests)
                    .map_err(|m| origin.err(&format!("{key}.apps"), m))?;
                let (max_connections, min_connections) =
                    pool_size(max_connections, min_connections)?;
                let (connect_timeout, statement_timeout) =
                    sql_timeouts(&origin, &key, connect_timeout_ms, statement_timeout_ms)?;
                let settings = MysqlSettings {
                    url: url_setting(&origin, &format!("{key}.url"), &url, secrets).await?,
                    password: optional_secret(&origin, &key, password, secrets).await?,
                    max_connections,
                    min_connections,
                    connect_timeout,
                    statement_timeout,
                    program_name: format!("berth:{app}:{name}"),
                };
                Arc::new(
                    MysqlDatabase::connect(&settings)
                        .await
                        .map_err(|e| origin.err(&key, sql_startup_failure(e)))?,
                )
            }
        };
        sql.insert(name.clone(), db);
    }
    let mut kv: HashMap<String, Arc<dyn KvBackend>> = HashMap::new();
    for (name, decl) in &manifest.kv {
        let key = format!("kv.{name}");
        let default = if decl.memory {
            KvConfig::Memory {}
        } else {
            KvConfig::Sqlite { path: None }
        };
        let bucket: Arc<dyn KvBackend> = match host.kv.get(name).cloned().unwrap_or(default) {
            KvConfig::Memory {} => allowance.memory_bucket(name),
            KvConfig::Sqlite { path } => blocking(|| {
                let path = embedded_path(
                    &origin,
                    &format!("{key}.path"),
                    path,
                    PathKind::File,
                    &places,
                    &Path::new("kv").join(format!("{name}.db")),
                )?;
                let bucket = SqliteBucket::open_bounded(&path, store_max)
                    .map_err(|e| origin.err(&key, e))?;
                anyhow::Ok(Arc::new(bucket) as Arc<dyn KvBackend>)
            })?,
            KvConfig::Redis {
                url,
                prefix,
                timeout_ms,
            } => {
                // App and bucket names cannot contain `:`, so this prefix
                // cannot collide between apps or buckets.
                let prefix = settings::redis_prefix(prefix.unwrap_or_default())
                    .map_err(|m| origin.err(&format!("{key}.prefix"), m))?;
                let url = url_setting(&origin, &format!("{key}.url"), &url, secrets).await?;
                settings::warn_if_unencrypted(&format!("{key}.url"), &url, "Redis");
                let settings = RedisSettings {
                    url,
                    prefix: format!("{prefix}berth:{app}:{name}:"),
                    timeout: origin.millis(&format!("{key}.timeout_ms"), timeout_ms, 5000)?,
                };
                let bucket = RedisBucket::connect(&settings)
                    .await
                    .map_err(|e| origin.err(&key, connection_failure(e)))?;
                // Not on a dry run: a check marking the index done while
                // hosts of an older version still write unindexed keys
                // would leave those keys out of listings. It only reads.
                // What the Redis user's ACL must allow (docs/security.md).
                let keys = settings
                    .prefix
                    .strip_suffix(&format!("{app}:{name}:"))
                    .unwrap_or(&settings.prefix);
                let refused = |what: &str, e: crate::ports::kv::KvError| {
                    let e = e.to_string();
                    let hint = match e.contains("NOPERM") {
                        true => format!(" (the Redis user's ACL must allow the keys `{keys}*`)"),
                        false => String::new(),
                    };
                    origin.err(&key, format!("{what}: {e}{hint}"))
                };
                if places.dry_run() {
                    bucket
                        .check_keys_readable()
                        .await
                        .map_err(|e| refused("cannot read the bucket's keys", e))?;
                } else {
                    bucket
                        .index_existing_keys()
                        .await
                        .map_err(|e| refused("cannot index the bucket's keys at startup", e))?;
                }
                Arc::new(bucket)
            }
        };
        kv.insert(name.clone(), bucket);
    }
    let url_signer = Arc::new(UrlSigner::new(
        blocking(|| host.url_signing_key(manifest))?,
        host.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", host.listen())),
    ));
    let mut blob: HashMap<String, Arc<dyn BlobBackend>> = HashMap::new();
    // One share of the host's S3 upload buffers for all the app's containers.
    let upload_buffers = crate::ports::blob::s3::app_write_buffers(app);
    for name in manifest.blob.keys() {
        let key = format!("blob.{name}");
        let cfg = host
            .blob
            .get(name)
            .cloned()
            .unwrap_or(BlobConfig::Fs { root: None });
        let container: Arc<dyn BlobBackend> = match cfg {
            BlobConfig::Fs { root } => blocking(|| {
                let custom = root.clone();
                let root = embedded_path(
                    &origin,
                    &format!("{key}.root"),
                    root,
                    PathKind::Directory,
                    &places,
                    &Path::new("blob").join(name),
                )?;
                // A dry run opens the store in its scratch directory, where
                // the load's rename probe cannot see the real filesystems.
                if let Some(custom) = custom.filter(|_| places.dry_run()) {
                    places::check_blob_root_filesystem(
                        &origin,
                        &format!("{key}.root"),
                        &custom,
                        &places,
                    )?;
                }
                let container = FsContainer::open(
                    root,
                    places.open_in.join("tmp"),
                    app,
                    name,
                    url_signer.clone(),
                    store_max,
                )
                .map_err(|e| origin.err(&key, e))?;
                anyhow::Ok(Arc::new(container) as Arc<dyn BlobBackend>)
            })?,
            BlobConfig::S3 {
                endpoint,
                region,
                bucket,
                prefix,
                path_style,
                access_key_id,
                secret_access_key,
                part_size_mb,
                timeout_ms,
            } => {
                let part_size_mb = part_size_mb.unwrap_or(8);
                // S3 takes parts of 5 MiB or more; a writer buffers one in
                // host memory, out of a budget all writers share.
                let budget_mb = crate::ports::blob::s3::WRITE_BUFFER_BUDGET >> 20;
                let most = budget_mb / 2;
                if !(5..=most).contains(&(part_size_mb as usize)) {
                    return Err(origin.err(
                        &format!("{key}.part_size_mb"),
                        format!("must be between 5 and {most} (S3 takes 5 or more; a writer buffers a part in host memory, out of {budget_mb} MiB all writers of the host share)"),
                    ));
                }
                // App and container names cannot contain `/`, and the
                // operator's prefix holds no `berth` segment, so the first
                // `berth/` of a key ends the prefix: no two apps or
                // containers share a place, whatever their prefixes.
                let prefix = settings::s3_prefix(prefix.unwrap_or_default())
                    .map_err(|why| origin.err(&format!("{key}.prefix"), why))?;
                let settings = S3Settings {
                    endpoint,
                    region: region.unwrap_or_else(|| "us-east-1".into()),
                    bucket,
                    prefix: format!("{prefix}berth/{app}/{name}/"),
                    path_style: path_style.unwrap_or(false),
                    access_key_id: secret_setting(
                        &origin,
                        &format!("{key}.access_key_id"),
                        &access_key_id,
                        secrets,
                    )
                    .await?,
                    secret_access_key: secret_setting(
                        &origin,
                        &format!("{key}.secret_access_key"),
                        &secret_access_key,
                        secrets,
                    )
                    .await?,
                    part_size: (part_size_mb as usize) << 20,
                    timeout: origin.millis(&format!("{key}.timeout_ms"), timeout_ms, 30_000)?,
                    app_buffers: upload_buffers.clone(),
                };
                Arc::new(
                    S3Container::connect(&settings)
                        .await
                        .map_err(|e| origin.err(&key, connection_failure(e)))?,
                )
            }
        };
        blob.insert(name.clone(), container);
    }
    let messaging = messaging::open(
        &origin,
        &host.messaging,
        &places.open_in,
        secrets,
        places.dry_run(),
        host.app_limits.embedded_queue_mb.map_or(
            crate::ports::messaging::embedded::DEFAULT_QUEUE_BYTES,
            |mb| i64::from(mb) << 20,
        ),
    )
    .await?;
    let transport: Arc<dyn EmailBackend> = match host.email.clone() {
        EmailConfig::File {} => Arc::new(
            blocking(|| FileSink::open(places.open_in.join("email")))
                .map_err(|e| origin.err("email", e))?,
        ),
        EmailConfig::Smtp {
            host: server,
            port,
            tls,
            username,
            password,
            timeout_ms,
            senders: _,
        } => {
            let tls = tls.unwrap_or(SmtpTls::Starttls);
            let credentials = match (username, password) {
                (Some(user), Some(pw)) => Some((
                    user,
                    secret_setting(&origin, "email.password", &pw, secrets).await?,
                )),
                (None, None) => None,
                _ => {
                    return Err(
                        origin.err("email", "give both `username` and `password`, or neither")
                    );
                }
            };
            // lettre logs in over plain SMTP too: the password would cross
            // the network in clear text.
            if tls == SmtpTls::None && credentials.is_some() && !is_loopback_host(&server) {
                return Err(origin.err(
                    "email.tls",
                    "is \"none\" with a `username` and `password`: the password would cross the network unencrypted; use \"starttls\" or \"tls\" (plain SMTP with a login only to a relay on loopback)",
                ));
            }
            let settings = SmtpSettings {
                host: server,
                port: port.unwrap_or(if tls == SmtpTls::Tls { 465 } else { 587 }),
                tls,
                credentials,
                timeout: origin.millis("email.timeout_ms", timeout_ms, 10_000)?,
            };
            // An app no component of which may send mail does not depend
            // on the relay: its load does not fail when the relay is down.
            let sends = manifest
                .components
                .values()
                .any(|c| !c.grants.email_senders.is_empty());
            Arc::new(
                SmtpSender::connect(&settings, sends)
                    .await
                    .map_err(|e| origin.err("email", connection_failure(e)))?,
            )
        }
    };
    let email: Arc<dyn EmailBackend> = Arc::new(crate::ports::email::rate::RateLimited::new(
        app,
        transport,
        allowance.emails.clone(),
        allowance.email_recipients.clone(),
    ));
    let publish_rate = allowance.publishes.clone();
    let log_budget = allowance.log_lines.clone();
    Ok(AppBackends {
        sql,
        kv,
        blob,
        messaging,
        email,
        publish_rate,
        url_signer,
        log_budget,
    })
}
