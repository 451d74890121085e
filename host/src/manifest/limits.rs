//! `[component.<name>.limits]`: parsing and range checks of a component's
//! limits; the host maxima cap them later (`config::EngineConfig::cap`).

use std::time::Duration;

use serde::Deserialize;

use super::{ManifestError, Validator};
use crate::limits::{ComponentLimits, PayloadSettings};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    memory_mb: Option<u64>,
    timeout_ms: Option<u64>,
    concurrency: Option<u32>,
    outbound_requests: Option<u32>,
    handles: Option<u64>,
    // The payload caps, spelled out rather than flattened: serde cannot
    // deny unknown keys across a flattened struct.
    sql_max_rows: Option<u64>,
    sql_max_result_mb: Option<u64>,
    kv_max_value_kb: Option<u64>,
    blob_max_put_mb: Option<u64>,
    blob_max_chunk_mb: Option<u64>,
    blob_max_object_mb: Option<u64>,
    message_max_kb: Option<u64>,
    email_max_body_kb: Option<u64>,
    email_max_recipients: Option<u64>,
}

impl Validator<'_> {
    pub(super) fn limits(
        &self,
        key: &str,
        raw: &RawLimits,
    ) -> Result<ComponentLimits, ManifestError> {
        let mut limits = ComponentLimits::default();
        if let Some(mb) = raw.memory_mb {
            if mb == 0 || mb > 4096 {
                return Err(self.invalid(format!("{key}.limits.memory_mb"), "must be 1..=4096"));
            }
            limits.memory_bytes = mb << 20;
        }
        if let Some(ms) = raw.timeout_ms {
            if ms == 0 || ms > 3_600_000 {
                return Err(self.invalid(format!("{key}.limits.timeout_ms"), "must be 1..=3600000"));
            }
            limits.timeout = Duration::from_millis(ms);
        }
        if let Some(n) = raw.concurrency {
            if n == 0 || n > 100_000 {
                return Err(self.invalid(format!("{key}.limits.concurrency"), "must be 1..=100000"));
            }
            limits.concurrency = n;
        }
        if let Some(n) = raw.outbound_requests {
            if n > 100_000 {
                return Err(self.invalid(
                    format!("{key}.limits.outbound_requests"),
                    "must be 0..=100000",
                ));
            }
            limits.outbound_requests = n;
        }
        if let Some(n) = raw.handles {
            // The host itself holds a few handles per invocation (the HTTP
            // request and response), so a handful is the floor.
            if !(16..=1_000_000).contains(&n) {
                return Err(self.invalid(format!("{key}.limits.handles"), "must be 16..=1000000"));
            }
            limits.handles = n as usize;
        }
        let payloads = PayloadSettings {
            sql_max_rows: raw.sql_max_rows,
            sql_max_result_mb: raw.sql_max_result_mb,
            kv_max_value_kb: raw.kv_max_value_kb,
            blob_max_put_mb: raw.blob_max_put_mb,
            blob_max_chunk_mb: raw.blob_max_chunk_mb,
            blob_max_object_mb: raw.blob_max_object_mb,
            message_max_kb: raw.message_max_kb,
            email_max_body_kb: raw.email_max_body_kb,
            email_max_recipients: raw.email_max_recipients,
        };
        payloads
            .apply(&mut limits.payloads)
            .map_err(|(k, m)| self.invalid(format!("{key}.limits.{k}"), &m))?;
        Ok(limits)
    }
}
