//! The triggers of a manifest (`[[trigger.http]]`, `[[trigger.message]]`)
//! and their validation.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{ComponentDecl, ManifestError, Validator};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTriggers {
    #[serde(default)]
    pub(super) http: Vec<HttpTrigger>,
    #[serde(default)]
    pub(super) message: Vec<MessageTrigger>,
}

/// Routes HTTP requests to a component.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpTrigger {
    /// `/exact/path`, or `/prefix/...` for everything below a prefix.
    pub route: String,
    /// The component exporting `wasi:http/incoming-handler`.
    pub component: String,
}

/// Default first redelivery delay of a message trigger, in ms.
pub const DEFAULT_BACKOFF_MS: u64 = 100;

/// Delivers the messages of a topic to a component.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MessageTrigger {
    /// The topic.
    pub topic: String,
    /// The component exporting `berth:infra/handler`.
    pub component: String,
    /// Deliveries before a message is given up (dead-lettered); default 5.
    pub max_deliveries: Option<u32>,
    /// Handle consecutive messages in warm instances instead of a fresh
    /// instance per message (default `false`). An instance that fails,
    /// traps or has handled its share of messages is discarded.
    #[serde(default)]
    pub reuse_instances: bool,
    /// Deliveries of this trigger handled at once; default 16.
    pub concurrency: Option<u32>,
    /// Delay before the first redelivery, in ms; doubles per attempt.
    /// Default 100.
    pub backoff_ms: Option<u64>,
    /// Longest redelivery delay, in ms; default 30,000.
    pub max_backoff_ms: Option<u64>,
    /// Where messages that exhausted their deliveries go; default
    /// `<topic>.dead-letter`.
    pub dead_letter: Option<String>,
}

impl Validator<'_> {
    /// Checks every trigger: its component exists, its route or topic is
    /// well formed, and its delivery settings are in range.
    pub(super) fn check_triggers(
        &self,
        triggers: &RawTriggers,
        components: &BTreeMap<String, ComponentDecl>,
    ) -> Result<(), ManifestError> {
        for (i, t) in triggers.http.iter().enumerate() {
            let key = format!("trigger.http[{i}]");
            self.check_component(&key, &t.component, components)?;
            if !t.route.starts_with('/') {
                return Err(self.invalid(
                    format!("{key}.route"),
                    format!("route {:?} must start with `/`", t.route),
                ));
            }
        }
        for (i, t) in triggers.message.iter().enumerate() {
            let key = format!("trigger.message[{i}]");
            self.check_component(&key, &t.component, components)?;
            crate::ports::messaging::validate_topic(&t.topic)
                .map_err(|m| self.invalid(format!("{key}.topic"), m))?;
            if t.max_deliveries == Some(0) {
                return Err(self.invalid(format!("{key}.max_deliveries"), "must be at least 1"));
            }
            if t.concurrency.is_some_and(|c| !(1..=1024).contains(&c)) {
                return Err(self.invalid(format!("{key}.concurrency"), "must be 1 to 1024"));
            }
            if t.backoff_ms.is_some_and(|b| !(1..=3_600_000).contains(&b)) {
                return Err(self.invalid(
                    format!("{key}.backoff_ms"),
                    "must be 1 to 3600000 (an hour)",
                ));
            }
            let backoff = t.backoff_ms.unwrap_or(DEFAULT_BACKOFF_MS);
            if let Some(max) = t.max_backoff_ms
                && !(backoff..=86_400_000).contains(&max)
            {
                return Err(self.invalid(
                    format!("{key}.max_backoff_ms"),
                    format!("must be at least backoff_ms ({backoff}) and at most 86400000 (a day)"),
                ));
            }
            if let Some(dead) = &t.dead_letter {
                crate::ports::messaging::validate_topic(dead)
                    .map_err(|m| self.invalid(format!("{key}.dead_letter"), m))?;
                if *dead == t.topic {
                    return Err(self.invalid(
                        format!("{key}.dead_letter"),
                        "must differ from the trigger's topic, or failed messages would come back",
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_component(
        &self,
        key: &str,
        name: &str,
        components: &BTreeMap<String, ComponentDecl>,
    ) -> Result<(), ManifestError> {
        if components.contains_key(name) {
            return Ok(());
        }
        let known: Vec<_> = components.keys().map(String::as_str).collect();
        Err(self.invalid(
            format!("{key}.component"),
            format!(
                "unknown component {name:?} (components: {})",
                known.join(", ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::manifest::tests::GOOD;
    use crate::manifest::{Manifest, ManifestError};

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, Path::new("/app/berth.toml"))
    }

    #[test]
    fn message_trigger_settings_are_checked() {
        let base = format!("{GOOD}[[trigger.message]]\ntopic = \"events\"\ncomponent = \"api\"\n");
        let ok = parse(&format!(
            "{base}concurrency = 4\nbackoff_ms = 10\nmax_backoff_ms = 500\ndead_letter = \"events.failed\"\n"
        ))
        .unwrap();
        assert_eq!(ok.message_triggers[0].concurrency, Some(4));
        for (setting, key, why) in [
            ("concurrency = 0", "concurrency", "1 to 1024"),
            ("concurrency = 5000", "concurrency", "1 to 1024"),
            ("backoff_ms = 0", "backoff_ms", "1 to 3600000"),
            (
                "backoff_ms = 200\nmax_backoff_ms = 100",
                "max_backoff_ms",
                "at least backoff_ms (200)",
            ),
            (
                "max_backoff_ms = 50",
                "max_backoff_ms",
                "at least backoff_ms (100)",
            ),
            ("dead_letter = \"events\"", "dead_letter", "must differ"),
            ("dead_letter = \"bad topic\"", "dead_letter", ""),
        ] {
            let msg = parse(&format!("{base}{setting}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains(&format!("trigger.message[0].{key}")) && msg.contains(why),
                "{setting}: {msg}"
            );
        }
    }
}
