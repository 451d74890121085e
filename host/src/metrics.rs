//! Process-wide counters, exposed in the Prometheus text format on the
//! admin listener (`[admin] listen` in the host config): invocations by
//! outcome and limits hit, per app and component.
//!
//! Counters are kept in one map behind a mutex: updates happen once per
//! invocation, far below the rate where a lock would matter.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{LazyLock, Mutex};

use crate::triggers::InvocationError;

/// What an invocation counter is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    metric: &'static str,
    labels: Vec<(&'static str, String)>,
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

/// The process's counters.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<Key, u64>>,
}

/// The counters of this process.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

impl Metrics {
    fn add(&self, metric: &'static str, labels: Vec<(&'static str, String)>) {
        if let Ok(mut counters) = self.counters.lock() {
            *counters.entry(Key { metric, labels }).or_default() += 1;
        }
    }

    /// Counts one invocation of `component` of `app` by `trigger`
    /// (`http`, `message`, `run`), and the limit it hit, if any.
    pub fn invocation(
        &self,
        app: &str,
        component: &str,
        trigger: &'static str,
        outcome: Outcome<'_>,
    ) {
        let result = match outcome {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Error(e) if e.limit_name().is_some() => "limit",
            Outcome::Error(_) => "trap",
        };
        self.add(
            "berth_invocations_total",
            vec![
                ("app", app.to_owned()),
                ("component", component.to_owned()),
                ("trigger", trigger.to_owned()),
                ("outcome", result.to_owned()),
            ],
        );
        if let Outcome::Error(e) = outcome {
            if let Some(limit) = e.limit_name() {
                self.limit(app, component, limit);
            }
        }
    }

    /// Counts a limit hit outside an invocation's trap (a request refused at
    /// capacity, an email over the app's rate).
    pub fn limit(&self, app: &str, component: &str, limit: &str) {
        crate::audit::refused(app, component, &format!("limit.{limit}"), limit);
        self.add(
            "berth_limits_exceeded_total",
            vec![
                ("app", app.to_owned()),
                ("component", component.to_owned()),
                ("limit", limit.to_owned()),
            ],
        );
    }

    /// The value of one counter (for tests and the health endpoint).
    pub fn get(&self, metric: &str, labels: &[(&str, &str)]) -> u64 {
        let Ok(counters) = self.counters.lock() else {
            return 0;
        };
        counters
            .iter()
            .filter(|(k, _)| {
                k.metric == metric
                    && labels
                        .iter()
                        .all(|(n, v)| k.labels.iter().any(|(kn, kv)| kn == n && kv == v))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// Everything, in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let Ok(counters) = self.counters.lock() else {
            return out;
        };
        let mut last = "";
        for (key, value) in counters.iter() {
            if key.metric != last {
                let help = match key.metric {
                    "berth_invocations_total" => {
                        "Invocations by app, component, trigger and outcome."
                    }
                    _ => "Limits hit by app, component and limit.",
                };
                let _ = writeln!(out, "# HELP {} {help}", key.metric);
                let _ = writeln!(out, "# TYPE {} counter", key.metric);
                last = key.metric;
            }
            let labels: Vec<String> = key
                .labels
                .iter()
                .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
                .collect();
            let _ = writeln!(out, "{}{{{}}} {value}", key.metric, labels.join(","));
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
        m.invocation("shop", "api", "http", Outcome::Ok);
        m.invocation("shop", "api", "http", Outcome::Ok);
        let limit = InvocationError::Limit(LimitExceeded::Concurrency(1));
        m.invocation("shop", "api", "http", Outcome::Error(&limit));
        assert_eq!(m.get("berth_invocations_total", &[("outcome", "ok")]), 2);
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
}
