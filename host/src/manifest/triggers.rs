//! The triggers of a manifest (`[[trigger.http]]`, `[[trigger.message]]`,
//! `[[trigger.schedule]]`) and their validation.

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
    #[serde(default)]
    pub(super) schedule: Vec<ScheduleTrigger>,
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
    /// The topic, or a pattern of topics within the app (`orders.*`: one
    /// segment; `orders.>`: one or more; see `ports::messaging::pattern`).
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
    /// `<topic>.dead-letter`, required for a pattern.
    pub dead_letter: Option<String>,
}

/// The topic prefix of schedule ticks; topics starting with `_` are the
/// host's, never a guest's or a manifest's.
pub const SCHEDULE_TOPIC_PREFIX: &str = "_schedule.";

/// Runs a component on a cron schedule, once per tick across every host
/// serving the app (see `triggers::schedule`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleTrigger {
    /// Names the schedule (its ticks' ids and topic); default: the
    /// component's name. Unique among the app's schedules.
    pub name: Option<String>,
    /// When to run, in UTC: `sec min hour day-of-month month day-of-week
    /// [year]`, the five fields without seconds (run at second 0), or
    /// `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`.
    pub cron: String,
    /// The component exporting `berth:infra/handler`.
    pub component: String,
    /// Deliveries of a tick before it is given up; default 5.
    pub max_deliveries: Option<u32>,
    /// Delay before the first retry, in ms; doubles per attempt. Default 100.
    pub backoff_ms: Option<u64>,
    /// Longest retry delay, in ms; default 30,000.
    pub max_backoff_ms: Option<u64>,
}

impl ScheduleTrigger {
    /// The schedule's name.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.component)
    }

    /// The internal topic its ticks are published to.
    pub fn topic(&self) -> String {
        format!("{SCHEDULE_TOPIC_PREFIX}{}", self.name())
    }

    /// The parsed cron expression.
    pub fn schedule(&self) -> Result<cron::Schedule, String> {
        let text = self.cron.trim();
        let fields: Vec<&str> = text.split_whitespace().collect();
        // Day-of-week numbers differ between cron dialects (Unix: 0 or 7 is
        // Sunday and 1 Monday; the `cron` crate: 1 is Sunday), so a number
        // there would silently pick the wrong days: only names are taken.
        let day_of_week = match fields.len() {
            5 => Some(fields[4]),
            6 | 7 => Some(fields[5]),
            _ => None,
        };
        if let Some(dow) = day_of_week
            && dow
                .split(',')
                .flat_map(|part| part.split('/').next().unwrap_or("").split('-'))
                .any(|bound| !bound.is_empty() && bound.chars().all(|c| c.is_ascii_digit()))
        {
            return Err(format!(
                "cron expression {:?}: write days of the week as names (MON-FRI, SUN), not numbers, which mean different days in different cron dialects",
                self.cron
            ));
        }
        let full = if fields.len() == 5 {
            format!("0 {text}")
        } else {
            text.to_string()
        };
        let schedule = full.parse::<cron::Schedule>().map_err(|e| {
            format!(
                "cron expression {:?} is invalid ({e}); expected `sec min hour day-of-month month day-of-week`, the same without seconds, or `@daily`-style",
                self.cron
            )
        })?;
        // Valid field by field, yet no date has them all (February 30th,
        // April 31st, a year gone by): the trigger would never run.
        if schedule.after(&chrono::Utc::now()).next().is_none() {
            return Err(format!(
                "cron expression {:?} never fires: no date to come has all its fields",
                self.cron
            ));
        }
        Ok(schedule)
    }

    /// The message trigger that delivers its ticks: one at a time per
    /// host, retried like any message.
    pub fn message_trigger(&self) -> MessageTrigger {
        let topic = self.topic();
        MessageTrigger {
            dead_letter: Some(format!("{topic}.dead-letter")),
            topic,
            component: self.component.clone(),
            max_deliveries: self.max_deliveries,
            reuse_instances: false,
            concurrency: Some(1),
            backoff_ms: self.backoff_ms,
            max_backoff_ms: self.max_backoff_ms,
        }
    }
}

/// Refuses a route no request could reach: one that does not start with
/// `/`, holds what a request's path never does as such (`?` and `#` end
/// it; spaces, control and non-ASCII characters arrive percent-encoded),
/// has `...` other than as its final `/...`, or lies under the host's own
/// `/_berth/`.
fn check_route(route: &str) -> Result<(), String> {
    if !route.starts_with('/') {
        return Err(format!("route {route:?} must start with `/`"));
    }
    if route.contains(['?', '#']) || !route.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "route {route:?} must be visible ASCII without `?` or `#`: a request's path arrives percent-encoded, and its query is not part of it"
        ));
    }
    if route.strip_suffix("/...").unwrap_or(route).contains("...") {
        return Err(format!(
            "route {route:?} has `...` other than at its end: only a final `/...` matches what is below"
        ));
    }
    if route == "/_berth" || route.starts_with("/_berth/") {
        return Err(format!(
            "route {route:?} lies under `/_berth/`, the host's own (signed blob URLs)"
        ));
    }
    Ok(())
}

impl Validator<'_> {
    /// Checks every trigger: its component exists, its route or topic is
    /// well formed, and its delivery settings are in range.
    pub(super) fn check_triggers(
        &self,
        triggers: &RawTriggers,
        components: &BTreeMap<String, ComponentDecl>,
    ) -> Result<(), ManifestError> {
        let mut routes = std::collections::BTreeSet::new();
        for (i, t) in triggers.http.iter().enumerate() {
            let key = format!("trigger.http[{i}]");
            self.check_component(&key, &t.component, components)?;
            check_route(&t.route).map_err(|m| self.invalid(format!("{key}.route"), m))?;
            // The first of two would take every request: the other could
            // never be reached.
            if !routes.insert(&t.route) {
                return Err(self.invalid(
                    format!("{key}.route"),
                    format!(
                        "route {:?} is defined twice; one trigger per route",
                        t.route
                    ),
                ));
            }
        }
        let mut consumers = std::collections::BTreeSet::new();
        for (i, t) in triggers.message.iter().enumerate() {
            let key = format!("trigger.message[{i}]");
            self.check_component(&key, &t.component, components)?;
            // Brokers name a trigger's queue or group by its component and
            // topic: two such triggers would share one, each message going
            // to one of them only.
            if !consumers.insert((&t.component, &t.topic)) {
                return Err(self.invalid(
                    format!("{key}.topic"),
                    format!(
                        "component `{}` already has a trigger on {:?}; one trigger per component and topic",
                        t.component, t.topic
                    ),
                ));
            }
            crate::ports::messaging::pattern::validate_pattern(&t.topic)
                .map_err(|m| self.invalid(format!("{key}.topic"), m))?;
            match &t.dead_letter {
                Some(dead) => crate::ports::messaging::validate_topic(dead)
                    .map_err(|m| self.invalid(format!("{key}.dead_letter"), m))?,
                // `<pattern>.dead-letter` is no topic, and a default built
                // from each message's topic could match the pattern again.
                None if crate::ports::messaging::pattern::is_pattern(&t.topic) => {
                    return Err(self.invalid(
                        format!("{key}.dead_letter"),
                        format!(
                            "a trigger on the pattern {:?} needs a `dead_letter` topic (one the pattern does not match)",
                            t.topic
                        ),
                    ));
                }
                // The default, `<topic>.dead-letter`, must be a topic
                // too (a topic near the length limit makes one too long,
                // and its messages could never leave the trigger).
                None => crate::ports::messaging::validate_topic(&format!(
                    "{}.dead-letter",
                    t.topic
                ))
                .map_err(|m| {
                    self.invalid(
                        format!("{key}.dead_letter"),
                        format!("the default dead-letter topic `<topic>.dead-letter` is not a valid topic ({m}); set `dead_letter`"),
                    )
                })?,
            }
            self.check_delivery(&key, t)?;
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, t) in triggers.schedule.iter().enumerate() {
            let key = format!("trigger.schedule[{i}]");
            self.check_component(&key, &t.component, components)?;
            if let Some(name) = &t.name {
                self.check_name(&format!("{key}.name"), name)?;
            }
            if !names.insert(t.name()) {
                return Err(self.invalid(
                    format!("{key}.name"),
                    format!(
                        "schedule {:?} is defined twice; give each `[[trigger.schedule]]` of a component its own `name`",
                        t.name()
                    ),
                ));
            }
            t.schedule()
                .map_err(|m| self.invalid(format!("{key}.cron"), m))?;
            self.check_delivery(&key, &t.message_trigger())?;
        }
        Ok(())
    }

    /// Checks a trigger's delivery settings (`key` names it in errors).
    fn check_delivery(&self, key: &str, t: &MessageTrigger) -> Result<(), ManifestError> {
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
        if let Some(dead) = &t.dead_letter
            && crate::ports::messaging::pattern::matches(&t.topic, dead)
        {
            return Err(self.invalid(
                format!("{key}.dead_letter"),
                "must differ from the trigger's topic and not match its pattern, or failed messages would come back",
            ));
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
    fn pattern_triggers_need_a_dead_letter_topic_outside_the_pattern() {
        let trigger = |rest: &str| {
            parse(&format!(
                "{GOOD}[[trigger.message]]\ncomponent = \"api\"\n{rest}\n"
            ))
        };
        let ok = trigger("topic = \"events.>\"\ndead_letter = \"failed.events\"").unwrap();
        assert_eq!(ok.message_triggers[0].topic, "events.>");
        let long = "e".repeat(250);
        let ok = trigger(&format!("topic = \"{long}\"\ndead_letter = \"failed\"")).unwrap();
        assert_eq!(ok.message_triggers[0].topic, long);
        for (setting, key, why) in [
            (
                "topic = \"events.*\"",
                "dead_letter",
                "needs a `dead_letter`",
            ),
            (
                "topic = \"events.>\"\ndead_letter = \"events.x.failed\"",
                "dead_letter",
                "not match its pattern",
            ),
            ("topic = \"*.events\"", "topic", "first segment is literal"),
            ("topic = \"events.#\"", "topic", "not a topic nor a pattern"),
            // 250 characters: a topic, but `<topic>.dead-letter` is not.
            (
                format!("topic = \"{}\"", "e".repeat(250)).as_str(),
                "dead_letter",
                "default dead-letter topic",
            ),
        ] {
            let msg = trigger(setting).unwrap_err().to_string();
            assert!(
                msg.contains(&format!("trigger.message[0].{key}")) && msg.contains(why),
                "{setting}: {msg}"
            );
        }
    }

    #[test]
    fn one_trigger_per_component_and_topic() {
        let trigger = "[[trigger.message]]\ntopic = \"events\"\ncomponent = \"api\"\n";
        let msg = parse(&format!("{GOOD}{trigger}{trigger}"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("trigger.message[1].topic") && msg.contains("already has a trigger"),
            "{msg}"
        );
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

    #[test]
    fn schedule_triggers_are_checked() {
        let base = format!("{GOOD}[[trigger.schedule]]\ncomponent = \"api\"\n");
        let ok = parse(&format!(
            "{base}cron = \"*/5 * * * *\"\n[[trigger.schedule]]\nname = \"nightly\"\ncomponent = \"api\"\ncron = \"@daily\"\nmax_deliveries = 2\n"
        ))
        .unwrap();
        let every5 = &ok.schedule_triggers[0];
        assert_eq!(
            (every5.name(), every5.topic().as_str()),
            ("api", "_schedule.api")
        );
        // Five fields run at second 0.
        let after = chrono::DateTime::parse_from_rfc3339("2026-01-01T10:02:30Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let next = every5.schedule().unwrap().after(&after).next().unwrap();
        assert_eq!(next.to_rfc3339(), "2026-01-01T10:05:00+00:00");
        // Names mean what they say: MON-FRI skips the weekend (2026-01-03
        // is a Saturday).
        let weekdays = parse(&format!("{base}cron = \"0 9 * * MON-FRI\"\n")).unwrap();
        let saturday = chrono::DateTime::parse_from_rfc3339("2026-01-03T10:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let next = weekdays.schedule_triggers[0]
            .schedule()
            .unwrap()
            .after(&saturday)
            .next()
            .unwrap();
        assert_eq!(next.to_rfc3339(), "2026-01-05T09:00:00+00:00");
        let nightly = ok.schedule_triggers[1].message_trigger();
        assert_eq!(nightly.topic, "_schedule.nightly");
        assert_eq!(nightly.max_deliveries, Some(2));
        assert_eq!(nightly.concurrency, Some(1));

        for (settings, key, why) in [
            (
                "cron = \"every minute\"",
                "cron",
                "cron expression \"every minute\" is invalid",
            ),
            ("cron = \"61 * * * * *\"", "cron", "is invalid"),
            ("cron = \"0 9 * * 1-5\"", "cron", "names (MON-FRI, SUN)"),
            ("cron = \"0 0 0 30 2 *\"", "cron", "never fires"),
            ("cron = \"0 0 12 * * * 2024\"", "cron", "never fires"),
            ("cron = \"0 0 9 * * MON,3\"", "cron", "not numbers"),
            (
                "cron = \"* * * * *\"\nmax_deliveries = 0",
                "max_deliveries",
                "at least 1",
            ),
            (
                "cron = \"* * * * *\"\nname = \"a.b\"",
                "name",
                "1-64 characters",
            ),
        ] {
            let msg = parse(&format!("{base}{settings}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains(&format!("trigger.schedule[0].{key}")) && msg.contains(why),
                "{settings}: {msg}"
            );
        }
        let twice = format!(
            "{base}cron = \"@hourly\"\n[[trigger.schedule]]\ncomponent = \"api\"\ncron = \"@daily\"\n"
        );
        let msg = parse(&twice).unwrap_err().to_string();
        assert!(
            msg.contains("trigger.schedule[1].name") && msg.contains("defined twice"),
            "{msg}"
        );
        let missing = parse(&base).unwrap_err().to_string();
        assert!(missing.contains("cron"), "{missing}");
    }

    #[test]
    fn host_topics_are_reserved() {
        let msg = parse(&format!(
            "{GOOD}[[trigger.message]]\ntopic = \"_schedule.api\"\ncomponent = \"api\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(msg.contains("trigger.message[0].topic"), "{msg}");
    }
}
