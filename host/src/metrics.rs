//! Process-wide counters, exposed in the Prometheus text format on the
//! admin listener (`[admin] listen` in the host config): invocations by
//! outcome and limits hit, per app and component.
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
const LIMITS: [&str; 6] = [
    "time",
    "memory",
    "table",
    "handles",
    "concurrency",
    "outbound_requests",
];

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
pub struct ComponentCounters {
    app: String,
    component: String,
    invocations: [[AtomicU64; OUTCOMES.len()]; TRIGGERS.len()],
    limits: [AtomicU64; LIMITS.len()],
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
        if let Outcome::Error(e) = outcome {
            if let Some(limit) = e.limit_name() {
                self.limit(limit);
            }
        }
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

/// One exported value: metric name, labels, value.
type Sample = (&'static str, Vec<(&'static str, String)>, u64);

/// The process's counters, by app and component.
#[derive(Default)]
pub struct Metrics {
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
        components
            .entry((app.to_owned(), component.to_owned()))
            .or_insert_with(|| {
                Arc::new(ComponentCounters {
                    app: app.to_owned(),
                    component: component.to_owned(),
                    invocations: Default::default(),
                    limits: Default::default(),
                })
            })
            .clone()
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
        ] {
            let name = InvocationError::Limit(e).limit_name().unwrap();
            assert!(LIMITS.contains(&name), "{name}");
        }
    }
}
