//! Opens an app's messaging backend as the host config's `[messaging]`
//! section says: the embedded or in-process broker, or NATS, Kafka, MQTT or
//! RabbitMQ, checking every setting before connecting.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::settings::{
    Origin, connection_failure, url_setting, url_setting_to_last_at, warn_if_unencrypted,
};
use crate::ports::kv::redis::{RedisBucket, RedisSettings};
use crate::ports::messaging::embedded::EmbeddedBroker;
use crate::ports::messaging::kafka::{KafkaBroker, KafkaSettings, parse_url as parse_kafka_url};
use crate::ports::messaging::mqtt::{MqttBroker, MqttSettings};
use crate::ports::messaging::nats::{NatsBroker, NatsSettings};
use crate::ports::messaging::rabbitmq::{RabbitBroker, RabbitSettings};
use crate::ports::messaging::{
    MessagingBackend, MessagingConfig, MessagingError, inprocess::InProcessBroker,
};
use crate::secret::SecretResolver;

/// Opens the broker `config` names for the app of `origin`, under `state`.
/// A dry run (`berth check`) connects to each server but changes nothing
/// there: a NATS stream is only read, no Kafka topic is made, no RabbitMQ
/// exchange or queue declared, and MQTT is connected to under an id no
/// running host uses.
pub(super) async fn open(
    origin: &Origin<'_>,
    config: &MessagingConfig,
    state: &Path,
    secrets: &SecretResolver,
    dry_run: bool,
    queue_bytes: i64,
) -> anyhow::Result<Arc<dyn MessagingBackend>> {
    let app = origin.app;
    Ok(match config.clone() {
        MessagingConfig::Embedded {} => crate::fairness::blocking(|| {
            EmbeddedBroker::open_bounded(&state.join("messaging.db"), queue_bytes)
        })
        .map_err(|e| origin.err("messaging", e))?,
        MessagingConfig::InProcess {} => InProcessBroker::new(),
        MessagingConfig::Nats {
            url,
            timeout_ms,
            ack_wait_ms,
            prefetch,
            max_bytes,
            max_age_s,
        } => {
            let settings = NatsSettings {
                url: url_setting_to_last_at(origin, "messaging.url", &url, secrets, true).await?,
                app: app.to_string(),
                timeout: origin.millis("messaging.timeout_ms", timeout_ms, 5000)?,
                ack_wait: nats_ack_wait(origin, ack_wait_ms)?,
                prefetch: origin.at_least_one("messaging.prefetch", prefetch, 200)?,
                max_bytes: nats_max_bytes(origin, max_bytes)?,
                max_age: nats_max_age(origin, max_age_s)?,
                dry_run,
            };
            Arc::new(
                NatsBroker::connect(&settings)
                    .await
                    .map_err(|e| broker_failure(origin, e))?,
            )
        }
        MessagingConfig::Kafka {
            url,
            timeout_ms,
            replication_factor,
            partitions,
            session_timeout_ms,
            max_topics,
        } => {
            let replication_factor = match replication_factor {
                None => 1,
                Some(r) if r >= 1 => r,
                Some(r) => {
                    return Err(origin.err(
                        "messaging.replication_factor",
                        format!("is {r}; it must be at least 1"),
                    ));
                }
            };
            let partitions = in_range(
                origin,
                "messaging.partitions",
                partitions,
                1..=10_000,
                crate::ports::messaging::kafka::DEFAULT_PARTITIONS,
                "",
            )?;
            let session_timeout = Duration::from_millis(in_range(
                origin,
                "messaging.session_timeout_ms",
                session_timeout_ms,
                6_000..=1_800_000,
                crate::ports::messaging::kafka::DEFAULT_SESSION_TIMEOUT.as_millis() as u64,
                " (Kafka's default bounds)",
            )?);
            let max_topics = in_range(
                origin,
                "messaging.max_topics",
                max_topics,
                1..=1_000_000,
                crate::ports::messaging::kafka::DEFAULT_MAX_TOPICS,
                "",
            )?;
            // Resolved like the other brokers' URLs, so the host list may
            // come from `${env:…}`; it holds no credentials either way.
            let url = url_setting(origin, "messaging.url", &url, secrets).await?;
            let settings = KafkaSettings {
                brokers: parse_kafka_url(url.expose())
                    .map_err(|m| origin.err("messaging.url", m))?,
                app: app.to_string(),
                timeout: origin.millis("messaging.timeout_ms", timeout_ms, 5000)?,
                replication_factor,
                partitions,
                session_timeout,
                max_topics,
                dry_run,
            };
            Arc::new(
                KafkaBroker::connect(&settings)
                    .await
                    .map_err(|e| broker_failure(origin, e))?,
            )
        }
        MessagingConfig::Mqtt {
            url,
            timeout_ms,
            client_id,
            session_expiry_s,
            tick_claims,
        } => {
            let max = crate::ports::messaging::mqtt::MAX_SESSION_EXPIRY.as_secs();
            let session_expiry = match session_expiry_s {
                None => crate::ports::messaging::mqtt::SESSION_EXPIRY,
                Some(s) if (1..=max).contains(&s) => Duration::from_secs(s),
                Some(s) => {
                    return Err(origin.err(
                        "messaging.session_expiry_s",
                        format!("is {s}; it must be 1 to {max} seconds (a week)"),
                    ));
                }
            };
            // Unique per host: each host has its own sessions.
            let host_id = match client_id {
                Some(raw) => {
                    let id = secrets
                        .resolve(&raw)
                        .await
                        .map_err(|m| origin.err("messaging.client_id", m))?
                        .expose()
                        .to_string();
                    // Checked here, where the key is known: the broker's
                    // own check would be reported as `messaging.url`. The
                    // id is not repeated, since it may come from a secret.
                    if id.is_empty() || id.contains(['/', '+', '#', '\0']) {
                        return Err(origin.err(
                            "messaging.client_id",
                            "must be non-empty, without `/`, `+`, `#` or NUL (it is part of MQTT topic names)",
                        ));
                    }
                    id
                }
                None => uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            };
            // Connecting under the running host's id would take its
            // client's place at the broker. A suffix, as the triggers'
            // clients have, so a broker that lets the host's ids in by
            // their beginning lets the check in too.
            let host_id = if dry_run {
                format!(
                    "{host_id}-check-{}",
                    &uuid::Uuid::new_v4().simple().to_string()[..8]
                )
            } else {
                host_id
            };
            let timeout = origin.millis("messaging.timeout_ms", timeout_ms, 5000)?;
            let tick_claims = match tick_claims {
                None => None,
                Some(raw) => {
                    let url = url_setting(origin, "messaging.tick_claims", &raw, secrets).await?;
                    warn_if_unencrypted("messaging.tick_claims", &url, "Redis");
                    let settings = RedisSettings {
                        url,
                        prefix: format!("berth/{app}/ticks/"),
                        timeout,
                    };
                    let claims = RedisBucket::connect(&settings)
                        .await
                        .map_err(|e| origin.err("messaging.tick_claims", connection_failure(e)))?;
                    Some(Arc::new(claims))
                }
            };
            let url = url_setting_to_last_at(origin, "messaging.url", &url, secrets, false).await?;
            warn_if_unencrypted("messaging.url", &url, "MQTT");
            let settings = MqttSettings {
                url,
                app: app.to_string(),
                timeout,
                client_id: format!("berth-{app}-{}", escaped_host_id(&host_id)),
                session_expiry,
                tick_claims,
            };
            Arc::new(
                MqttBroker::connect(&settings)
                    .await
                    .map_err(|e| broker_failure(origin, e))?,
            )
        }
        MessagingConfig::Rabbitmq {
            url,
            timeout_ms,
            prefetch,
        } => {
            let url = url_setting(origin, "messaging.url", &url, secrets).await?;
            warn_if_unencrypted("messaging.url", &url, "RabbitMQ");
            let settings = RabbitSettings {
                url,
                app: app.to_string(),
                timeout: origin.millis("messaging.timeout_ms", timeout_ms, 5000)?,
                prefetch: origin.at_least_one("messaging.prefetch", prefetch, 32)?,
                dry_run,
            };
            Arc::new(
                RabbitBroker::connect(&settings)
                    .await
                    .map_err(|e| broker_failure(origin, e))?,
            )
        }
    })
}

/// How long an app's NATS stream keeps a message unless the host config
/// says otherwise: a week, as Kafka keeps its topics.
const NATS_MAX_AGE_S: u64 = 7 * 24 * 60 * 60;

/// `messaging.max_age_s`: a week when unset, 0 for ever, at most a century
/// (JetStream counts it in nanoseconds, in an `i64`).
fn nats_max_age(origin: &Origin<'_>, value: Option<u64>) -> anyhow::Result<Duration> {
    const CENTURY_S: u64 = 100 * 365 * 24 * 60 * 60;
    match value.unwrap_or(NATS_MAX_AGE_S) {
        s if s > CENTURY_S => Err(origin.err(
            "messaging.max_age_s",
            format!("is {s}; it must be at most {CENTURY_S} (a century), or 0 for ever"),
        )),
        s => Ok(Duration::from_secs(s)),
    }
}

/// `messaging.max_bytes`: at least a MiB (JetStream needs room for a message
/// and its bookkeeping), and within what JetStream takes (an `i64`).
fn nats_max_bytes(origin: &Origin<'_>, value: Option<u64>) -> anyhow::Result<Option<i64>> {
    let key = "messaging.max_bytes";
    match value {
        None => Ok(None),
        Some(bytes) if bytes < 1 << 20 => Err(origin.err(
            key,
            format!("is {bytes}; it must be at least 1048576 (a MiB)"),
        )),
        Some(bytes) => i64::try_from(bytes)
            .map(Some)
            .map_err(|_| origin.err(key, format!("is {bytes}; it must be at most {}", i64::MAX))),
    }
}

/// NATS's `ack_wait_ms`: at least a second, since a handler still running
/// sends a progress ack twice per ack wait.
fn nats_ack_wait(origin: &Origin<'_>, value: Option<u64>) -> anyhow::Result<Duration> {
    let key = "messaging.ack_wait_ms";
    match origin.millis(key, value, 60_000)? {
        wait if wait < Duration::from_secs(1) => Err(origin.err(
            key,
            format!(
                "is {}; it must be at least 1000 (a second): a handler still running says so twice per ack wait",
                wait.as_millis()
            ),
        )),
        wait => Ok(wait),
    }
}

/// A broker that could not be set up: a URL it cannot use names
/// `messaging.url`; anything else is a failure to connect.
fn broker_failure(origin: &Origin<'_>, e: MessagingError) -> anyhow::Error {
    match e {
        MessagingError::InvalidInput(m) => origin.err("messaging.url", m),
        e => origin.err("messaging", connection_failure(e)),
    }
}

/// `value` (or `default` when unset) if within `range`; else an error
/// naming `key`, the range and `why`.
fn in_range<T>(
    origin: &Origin<'_>,
    key: &str,
    value: Option<T>,
    range: std::ops::RangeInclusive<T>,
    default: T,
    why: &str,
) -> anyhow::Result<T>
where
    T: PartialOrd + std::fmt::Display + Copy,
{
    match value {
        None => Ok(default),
        Some(v) if range.contains(&v) => Ok(v),
        Some(v) => Err(origin.err(
            key,
            format!(
                "is {v}; it must be {} to {}{why}",
                range.start(),
                range.end()
            ),
        )),
    }
}

/// A host's MQTT client id part without `-` (written `_d`, and `_` as
/// `__`, so that no two ids come out alike): app names may hold `-`, so
/// `berth-a-b-h` would be both app `a` on host `b-h` and app `a-b` on host
/// `h`, two tenants resuming each other's sessions.
fn escaped_host_id(id: &str) -> String {
    id.replace('_', "__").replace('-', "_d")
}

#[cfg(test)]
mod tests {
    /// Ids that differ stay apart, and none holds `-`.
    #[test]
    fn escaped_host_ids_hold_no_dash_and_stay_apart() {
        let ids = ["web-1", "web_1", "web_d1", "web.1", "a-_b", "a_-b"];
        let escaped: Vec<String> = ids.iter().map(|id| super::escaped_host_id(id)).collect();
        assert!(escaped.iter().all(|e| !e.contains('-')), "{escaped:?}");
        let distinct: std::collections::HashSet<_> = escaped.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "{escaped:?}");
        assert_eq!(super::escaped_host_id("edge7"), "edge7");
    }
}
