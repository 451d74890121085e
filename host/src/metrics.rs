//! Process-wide counters, exposed in the Prometheus text format on the
//! admin listener (`[admin] listen` in the host config), per app (tenant)
//! and component: invocations by outcome, limits hit, port operations by
//! outcome, bytes in and out per port, and outbound HTTP requests.
//!
//! Each component's counters are registered once, when its app loads
//! ([`Metrics::component`]), and counted with atomics: an invocation takes
//! no lock and allocates nothing. A reloaded app keeps counting into the
//! same counters.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use crate::triggers::InvocationError;

/// What invoked a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// An HTTP request.
    Http,
    /// A message delivery.
    Message,
    /// A `wasi:cli/run` command.
    Run,
}

const TRIGGERS: [&str; 3] = ["http", "message", "run"];
const OUTCOMES: [&str; 4] = ["ok", "failed", "trap", "limit"];
/// The names [`InvocationError::limit_name`] and the triggers use.
const LIMITS: [&str; 14] = [
    "time",
    "memory",
    "table",
    "handles",
    "concurrency",
    "outbound_requests",
    "connections",
    "cursors",
    "payload",
    "email_rate",
    "message_rate",
    "instances",
    "app_instances",
    "app_memory",
];

/// Components whose counters are kept before those of components no loaded
/// app has are dropped.
const MAX_SERIES: usize = 4096;

/// A port whose calls are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// `berth:infra/sql`.
    Sql,
    /// `berth:infra/kv`.
    Kv,
    /// `berth:infra/blob`.
    Blob,
    /// `berth:infra/messaging`.
    Messaging,
    /// `berth:infra/email`.
    Email,
    /// `berth:infra/config`.
    Config,
    /// `berth:infra/logging`.
    Logging,
}

const PORTS: [&str; 7] = [
    "sql",
    "kv",
    "blob",
    "messaging",
    "email",
    "config",
    "logging",
];

impl Port {
    /// The port's name in metrics and audit events.
    pub fn name(self) -> &'static str {
        PORTS[self as usize]
    }
}

/// How an outbound HTTP request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Egress {
    /// It was sent and a response head came back.
    Sent,
    /// The host refused it (not allowed, prohibited address, request cap).
    Refused,
    /// It was allowed but failed (connect, TLS, timeout, upstream error).
    Failed,
}

const EGRESS: [&str; 3] = ["sent", "refused", "failed"];

/// The counters of one port of one component.
#[derive(Debug, Default)]
struct PortCounters {
    ok: AtomicU64,
    error: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// One finished port call, as [`ComponentCounters::port_call`] records it.
#[derive(Debug, Clone, Copy)]
pub struct PortCall<'a> {
    /// The port.
    pub port: Port,
    /// The operation (`query`, `tx.commit`, `get`…).
    pub op: &'static str,
    /// The logical resource (database, bucket, container, topic, key), or
    /// `""` where the port has none.
    pub resource: &'a str,
    /// `None` on success, else the guest error's case (`not-granted`…).
    pub error: Option<&'a str>,
    /// When the call started.
    pub started: Started,
    /// Payload bytes the guest sent.
    pub bytes_in: usize,
    /// Payload bytes returned to the guest.
    pub bytes_out: usize,
}

/// How an invocation ended.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// It succeeded.
    Ok,
    /// The guest reported a failure (an `err` result, a non-zero exit).
    Failed,
    /// It trapped or hit a limit.
    Error(&'a InvocationError),
}

/// The counters of one component of one app.
#[derive(Debug)]
pub struct ComponentCounters {
    app: String,
    component: String,
    invocations: [[AtomicU64; OUTCOMES.len()]; TRIGGERS.len()],
    limits: [AtomicU64; LIMITS.len()],
    ports: [PortCounters; PORTS.len()],
    egress: [AtomicU64; EGRESS.len()],
}

impl ComponentCounters {
    /// Counts one invocation, and the limit it hit, if any.
    pub fn invocation(&self, trigger: Trigger, outcome: Outcome<'_>) {
        let result = match outcome {
            Outcome::Ok => 0,
            Outcome::Failed => 1,
            Outcome::Error(e) if e.limit_name().is_some() => 3,
            Outcome::Error(_) => 2,
        };
        self.invocations[trigger as usize][result].fetch_add(1, Ordering::Relaxed);
        if let Outcome::Error(e) = outcome
            && let Some(limit) = e.limit_name()
        {
            self.limit(limit);
        }
    }

    /// Counts one port call and writes its audit event (target
    /// `berth::audit`, level debug: tenant, component, port, operation,
    /// resource, outcome and duration; never a payload).
    pub fn port_call(&self, call: PortCall<'_>) {
        let c = &self.ports[call.port as usize];
        match call.error {
            None => c.ok.fetch_add(1, Ordering::Relaxed),
            Some(_) => c.error.fetch_add(1, Ordering::Relaxed),
        };
        c.bytes_in
            .fetch_add(call.bytes_in as u64, Ordering::Relaxed);
        c.bytes_out
            .fetch_add(call.bytes_out as u64, Ordering::Relaxed);
        tracing::debug!(
            target: "berth::audit",
            app = self.app.as_str(),
            component = self.component.as_str(),
            port = call.port.name(),
            op = call.op,
            resource = crate::audit::bounded(call.resource),
            outcome = call.error.unwrap_or("ok"),
            duration_us = call.started.elapsed_us(),
            bytes_in = call.bytes_in,
            bytes_out = call.bytes_out,
            "call"
        );
    }

    /// Counts one outbound HTTP request to `authority` (host and port,
    /// never the path or query) and writes its audit event.
    pub fn egress(&self, authority: &str, outcome: Egress, started: std::time::Instant) {
        self.egress[outcome as usize].fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            target: "berth::audit",
            app = self.app.as_str(),
            component = self.component.as_str(),
            port = "http",
            op = "send",
            resource = crate::audit::bounded(authority),
            outcome = EGRESS[outcome as usize],
            duration_us = started.elapsed().as_micros() as u64,
            "call"
        );
    }

    /// Counts (and audits) a limit hit, in or outside an invocation's trap
    /// (a request refused at capacity).
    pub fn limit(&self, limit: &str) {
        crate::audit::refused(&self.app, &self.component, &format!("limit.{limit}"), limit);
        if let Some(i) = LIMITS.iter().position(|l| *l == limit) {
            self.limits[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// When a port call started, read only if its audit event will be written:
/// a clock read costs tens of nanoseconds, a noticeable share of a cheap
/// port call (B3 in `docs/benchmarks.md`), and only the audit event uses it.
#[derive(Debug, Clone, Copy)]
pub struct Started(Option<std::time::Instant>);

impl Started {
    /// Now, if `berth::audit` debug events are enabled.
    pub fn now() -> Started {
        Started(
            tracing::enabled!(target: "berth::audit", tracing::Level::DEBUG)
                .then(std::time::Instant::now),
        )
    }

    /// Microseconds since then (0 when the clock was not read).
    pub fn elapsed_us(&self) -> u64 {
        self.0.map_or(0, |t| t.elapsed().as_micros() as u64)
    }
}

/// One exported value: metric name, labels, value.
type Sample = (&'static str, Vec<(&'static str, String)>, u64);

/// The process's counters, by app and component.
#[derive(Default)]
pub struct Metrics {
    /// Kept after their app is unloaded (a scraper still reads them), but
    /// past [`MAX_SERIES`] components those no loaded app holds are
    /// dropped, so tenants renaming components cannot grow it without end.
    components: Mutex<BTreeMap<(String, String), Arc<ComponentCounters>>>,
}

/// The counters of this process.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

impl Metrics {
    /// The counters of `component` of `app`, created on first use (at load).
    pub fn component(&self, app: &str, component: &str) -> Arc<ComponentCounters> {
        let mut components = self
            .components
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = (app.to_owned(), component.to_owned());
        if let Some(live) = components.get(&key) {
            return live.clone();
        }
        if components.len() >= MAX_SERIES {
            // Held by the map alone: no loaded app has the component.
            components.retain(|_, counters| Arc::strong_count(counters) > 1);
        }
        let counters = Arc::new(ComponentCounters {
            app: app.to_owned(),
            component: component.to_owned(),
            invocations: Default::default(),
            limits: Default::default(),
            ports: Default::default(),
            egress: Default::default(),
        });
        components.insert(key, counters.clone());
        counters
    }

    /// Every sample as (metric, labels, value).
    fn samples(&self) -> Vec<Sample> {
        let components = self
            .components
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut out = Vec::new();
        for c in components.values() {
            let who = || vec![("app", c.app.clone()), ("component", c.component.clone())];
            for (t, trigger) in TRIGGERS.iter().enumerate() {
                for (o, outcome) in OUTCOMES.iter().enumerate() {
                    let value = c.invocations[t][o].load(Ordering::Relaxed);
                    if value > 0 {
                        let mut labels = who();
                        labels.push(("trigger", (*trigger).to_owned()));
                        labels.push(("outcome", (*outcome).to_owned()));
                        out.push(("berth_invocations_total", labels, value));
                    }
                }
            }
            for (l, limit) in LIMITS.iter().enumerate() {
                let value = c.limits[l].load(Ordering::Relaxed);
                if value > 0 {
                    let mut labels = who();
                    labels.push(("limit", (*limit).to_owned()));
                    out.push(("berth_limits_exceeded_total", labels, value));
                }
            }
            for (p, port) in PORTS.iter().enumerate() {
                let counters = &c.ports[p];
                for (metric, label, value) in [
                    (
                        "berth_port_operations_total",
                        ("outcome", "ok"),
                        &counters.ok,
                    ),
                    (
                        "berth_port_operations_total",
                        ("outcome", "error"),
                        &counters.error,
                    ),
                    (
                        "berth_port_bytes_total",
                        ("direction", "in"),
                        &counters.bytes_in,
                    ),
                    (
                        "berth_port_bytes_total",
                        ("direction", "out"),
                        &counters.bytes_out,
                    ),
                ] {
                    let value = value.load(Ordering::Relaxed);
                    if value > 0 {
                        let mut labels = who();
                        labels.push(("port", (*port).to_owned()));
                        labels.push((label.0, label.1.to_owned()));
                        out.push((metric, labels, value));
                    }
                }
            }
            for (e, outcome) in EGRESS.iter().enumerate() {
                let value = c.egress[e].load(Ordering::Relaxed);
                if value > 0 {
                    let mut labels = who();
                    labels.push(("outcome", (*outcome).to_owned()));
                    out.push(("berth_egress_requests_total", labels, value));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(b.0));
        out
    }

    /// The sum of `metric` over the samples carrying all of `labels` (for
    /// tests and operators' scripts).
    pub fn get(&self, metric: &str, labels: &[(&str, &str)]) -> u64 {
        self.samples()
            .into_iter()
            .filter(|(m, l, _)| {
                *m == metric
                    && labels
                        .iter()
                        .all(|(n, v)| l.iter().any(|(ln, lv)| ln == n && lv == v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// Everything, in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut last = "";
        for (metric, labels, value) in self.samples() {
            if metric != last {
                let help = match metric {
                    "berth_invocations_total" => {
                        "Invocations by app, component, trigger and outcome."
                    }
                    "berth_port_operations_total" => {
                        "Port calls by app, component, port and outcome."
                    }
                    "berth_port_bytes_total" => {
                        "Payload bytes by app, component, port and direction (in: from the guest)."
                    }
                    "berth_egress_requests_total" => {
                        "Outbound HTTP requests by app, component and outcome."
                    }
                    _ => "Limits hit by app, component and limit.",
                };
                let _ = writeln!(out, "# HELP {metric} {help}");
                let _ = writeln!(out, "# TYPE {metric} counter");
                last = metric;
            }
            let labels: Vec<String> = labels
                .iter()
                .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
                .collect();
            let _ = writeln!(out, "{metric}{{{}}} {value}", labels.join(","));
        }
        out
    }
}

/// Escapes a label value (`\`, `"` and newlines).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::LimitExceeded;

    #[test]
    fn counts_and_renders() {
        let m = Metrics::default();
        let api = m.component("shop", "api");
        api.invocation(Trigger::Http, Outcome::Ok);
        m.component("shop", "api")
            .invocation(Trigger::Http, Outcome::Ok);
        let limit = InvocationError::Limit(LimitExceeded::Concurrency(1));
        api.invocation(Trigger::Http, Outcome::Error(&limit));
        assert_eq!(m.get("berth_invocations_total", &[("outcome", "ok")]), 2);
        assert_eq!(m.get("berth_invocations_total", &[("outcome", "limit")]), 1);
        assert_eq!(
            m.get("berth_limits_exceeded_total", &[("limit", "concurrency")]),
            1
        );
        let text = m.render();
        assert!(
            text.contains("# TYPE berth_invocations_total counter"),
            "{text}"
        );
        assert!(
            text.contains(
                "berth_invocations_total{app=\"shop\",component=\"api\",trigger=\"http\",outcome=\"ok\"} 2"
            ),
            "{text}"
        );
        assert_eq!(escape("a\"b\\"), "a\\\"b\\\\");
    }

    #[test]
    fn every_limit_name_has_a_counter() {
        use std::time::Duration;
        for e in [
            LimitExceeded::Timeout(Duration::ZERO),
            LimitExceeded::Memory {
                requested: 0,
                limit: 0,
            },
            LimitExceeded::Table(0),
            LimitExceeded::Handles(0),
            LimitExceeded::Concurrency(0),
            LimitExceeded::Instances,
            LimitExceeded::AppInstances(0),
            LimitExceeded::AppMemory(0),
        ] {
            let name = InvocationError::Limit(e).limit_name().unwrap();
            assert!(LIMITS.contains(&name), "{name}");
        }
    }
}
