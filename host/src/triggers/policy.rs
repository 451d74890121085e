//! How a message trigger's deliveries are spread, retried and given up:
//! its manifest settings with their defaults filled in.

use std::time::Duration;

use crate::manifest::{DEFAULT_BACKOFF_MS, MessageTrigger};

/// Deliveries before giving up, unless the trigger says otherwise.
pub const DEFAULT_MAX_DELIVERIES: u32 = 5;
/// Longest redelivery delay, unless the trigger says otherwise.
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Deliveries handled at once per trigger, unless it says otherwise.
const DEFAULT_CONCURRENCY: usize = 16;

/// How a trigger's deliveries are spread, retried and given up: its
/// manifest settings with their defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// Deliveries before a message is dead-lettered.
    pub max_deliveries: u32,
    /// Delay before the first redelivery; doubles per attempt.
    pub backoff: Duration,
    /// Longest redelivery delay.
    pub max_backoff: Duration,
    /// The topic of messages that exhausted their deliveries.
    pub dead_letter: String,
    /// Deliveries handled at once (and warm instances kept at most).
    pub concurrency: usize,
}

impl DeliveryPolicy {
    /// The policy of `trigger` (validated by the manifest).
    pub fn of(trigger: &MessageTrigger) -> Self {
        let mut policy = Self::defaults(&trigger.topic);
        if let Some(max) = trigger.max_deliveries {
            policy.max_deliveries = max;
        }
        if let Some(ms) = trigger.backoff_ms {
            policy.backoff = Duration::from_millis(ms);
            // A first delay above the default longest one is not cut to it.
            policy.max_backoff = policy.max_backoff.max(policy.backoff);
        }
        if let Some(ms) = trigger.max_backoff_ms {
            policy.max_backoff = Duration::from_millis(ms);
        }
        if let Some(dead) = &trigger.dead_letter {
            policy.dead_letter.clone_from(dead);
        }
        if let Some(c) = trigger.concurrency {
            policy.concurrency = c as usize;
        }
        policy
    }

    /// The defaults for a trigger on `topic`.
    pub fn defaults(topic: &str) -> Self {
        Self {
            max_deliveries: DEFAULT_MAX_DELIVERIES,
            backoff: Duration::from_millis(DEFAULT_BACKOFF_MS),
            max_backoff: DEFAULT_MAX_BACKOFF,
            dead_letter: format!("{topic}.dead-letter"),
            concurrency: DEFAULT_CONCURRENCY,
        }
    }

    /// The delay before redelivering after failed delivery `attempt` (from 1).
    pub fn backoff_after(&self, attempt: u32) -> Duration {
        self.backoff
            .saturating_mul(1 << attempt.saturating_sub(1).min(16))
            .min(self.max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_trigger_setting_up_to_its_cap() {
        let mut policy = DeliveryPolicy::defaults("events");
        assert_eq!(policy.dead_letter, "events.dead-letter");
        assert_eq!(policy.backoff_after(1), Duration::from_millis(100));
        assert_eq!(policy.backoff_after(3), Duration::from_millis(400));
        assert_eq!(policy.backoff_after(40), DEFAULT_MAX_BACKOFF);
        policy.backoff = Duration::from_millis(10);
        policy.max_backoff = Duration::from_millis(50);
        let delays: Vec<u128> = (1..=5)
            .map(|a| policy.backoff_after(a).as_millis())
            .collect();
        assert_eq!(delays, [10, 20, 40, 50, 50]);
    }

    #[test]
    fn a_first_delay_above_the_default_cap_is_kept() {
        let trigger = |extra: &str| -> MessageTrigger {
            toml::from_str(&format!("topic = \"t\"\ncomponent = \"c\"\n{extra}")).unwrap()
        };
        let policy = DeliveryPolicy::of(&trigger("backoff_ms = 60000"));
        assert_eq!(policy.backoff_after(1), Duration::from_secs(60));
        assert_eq!(policy.backoff_after(3), Duration::from_secs(60));
        let policy = DeliveryPolicy::of(&trigger("backoff_ms = 60000\nmax_backoff_ms = 120000"));
        assert_eq!(policy.backoff_after(3), Duration::from_secs(120));
        let policy = DeliveryPolicy::of(&trigger("backoff_ms = 10"));
        assert_eq!(policy.max_backoff, DEFAULT_MAX_BACKOFF);
    }
}
