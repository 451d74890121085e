//! `[app_limits]`: limits the host applies to every app as a whole.

use serde::Deserialize;

/// MiB each embedded store of a tenant's app may hold on disk when
/// `[app_limits] store_mb` is not set (`berth serve`).
pub const DEFAULT_TENANT_STORE_MB: u32 = 4096;

/// `[app_limits]`: limits the host applies to every app as a whole.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppLimitsConfig {
    /// Emails one app may send per minute (bursts up to the same number);
    /// default 120. 0 is refused at load: it would fail every send as
    /// `rate-limited`, which tells the guest to retry.
    pub emails_per_minute: Option<u32>,
    /// Recipients (to, cc and bcc together) one app's emails may have per
    /// minute, in bursts of up to the same number; default 600. A message
    /// past it is `rate-limited`, as past `emails_per_minute`. 0 is
    /// refused at load.
    pub email_recipients_per_minute: Option<u32>,
    /// Messages one app's guests may publish or send as requests per
    /// second (bursts up to the same number); unlimited if unset. The
    /// host's own publishes (dead letters, schedule ticks) do not count.
    /// 0 is refused at load.
    pub messages_per_second: Option<u32>,
    /// Lines one app's guests may write to the host's log per second,
    /// through the logging port and on stdout and stderr together (bursts
    /// up to the same number); default 1000. Lines past it are dropped and
    /// counted. 0 is refused at load.
    pub log_lines_per_second: Option<u32>,
    /// KiB one app's guests may write to the host's log per second, as for
    /// `log_lines_per_second`; default 1024. 0 is refused at load.
    pub log_kib_per_second: Option<u32>,
    /// Instances one app may run at once, all its components and versions
    /// together; past it an HTTP request gets a 503 (`"limit":
    /// "app_instances"`) and a message waits. Default: half of `[engine]
    /// max_instances` on `berth serve` (so no tenant takes every slot),
    /// no share of its own on `berth up` (the app is alone). 0 is refused
    /// at load.
    pub max_instances: Option<u32>,
    /// MiB of linear memory one app's instances may hold together; past
    /// it an instance stops with the `app_memory` limit (HTTP: 503).
    /// Default: half the machine's (or its cgroup's) memory on `berth
    /// serve`, none of its own on `berth up`. 0 is refused at load.
    pub memory_mb: Option<u32>,
    /// MiB one app's in-memory kv buckets (`memory = true`, or `type =
    /// "memory"` in the host config) may hold together, keys, values and
    /// their bookkeeping; default 64. A `set` past it is `invalid-input`
    /// once the bucket's expired keys are gone. 0 is refused at load.
    pub kv_memory_mb: Option<u32>,
    /// MiB of messages (payloads and headers, a copy per trigger) one
    /// app's embedded broker keeps undelivered; default 1024. A publish
    /// past it is `unavailable`. 0 is refused at load.
    pub embedded_queue_mb: Option<u32>,
    /// MiB each of an app's embedded stores may hold on disk: each SQLite
    /// database of the sql and kv ports (`PRAGMA max_page_count`; a write
    /// past it is `too-large` for sql, `invalid-input` for kv) and each
    /// file-backed blob container (objects, 4 KiB more each, and writes
    /// under way; a write past it is `too-large`). Default: [`DEFAULT_TENANT_STORE_MB`] on `berth
    /// serve`, none on `berth up`. 0 is refused at load.
    pub store_mb: Option<u32>,
}

impl AppLimitsConfig {
    /// Bytes each embedded store of an app (an SQLite database of the sql
    /// or kv port, a file-backed blob container) may hold on disk:
    /// `store_mb`, else [`DEFAULT_TENANT_STORE_MB`] for a tenant's app
    /// (`tenant_manifests`), else no bound (`berth up`: the app is the
    /// operator's).
    pub fn store_max_bytes(&self, tenant_manifests: bool) -> Option<u64> {
        let mb = self
            .store_mb
            .or(tenant_manifests.then_some(DEFAULT_TENANT_STORE_MB))?;
        Some(u64::from(mb) << 20)
    }

    /// Refuses a limit of 0, which would leave the app unable to do what
    /// it limits.
    pub(super) fn validate(&self) -> Result<(), String> {
        let limits = self;
        for (key, value, why) in [
            (
                "emails_per_minute",
                limits.emails_per_minute,
                "an app without a granted sender sends nothing",
            ),
            (
                "email_recipients_per_minute",
                limits.email_recipients_per_minute,
                "an app sends no email",
            ),
            (
                "messages_per_second",
                limits.messages_per_second,
                "leave it out for no limit",
            ),
            (
                "log_lines_per_second",
                limits.log_lines_per_second,
                "lines past it are dropped",
            ),
            (
                "log_kib_per_second",
                limits.log_kib_per_second,
                "lines past it are dropped",
            ),
            (
                "max_instances",
                limits.max_instances,
                "the app could run nothing",
            ),
            ("memory_mb", limits.memory_mb, "the app could run nothing"),
            (
                "kv_memory_mb",
                limits.kv_memory_mb,
                "an in-memory bucket could hold nothing",
            ),
            (
                "embedded_queue_mb",
                limits.embedded_queue_mb,
                "the embedded broker could keep no message",
            ),
            (
                "store_mb",
                limits.store_mb,
                "an embedded store could hold nothing",
            ),
        ] {
            if value == Some(0) {
                return Err(format!(
                    "`app_limits.{key}` is 0; it must be at least 1 ({why})"
                ));
            }
        }
        Ok(())
    }
}
