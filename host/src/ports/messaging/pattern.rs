//! Topic patterns: what a message trigger may subscribe to besides one
//! topic.
//!
//! A pattern is a topic whose segments may be wildcards: `*` stands for
//! exactly one segment, and `>`, as the last segment only, for one or more
//! (NATS's syntax and meaning; adapters translate it for their broker).
//! `orders.*` matches `orders.eu` but neither `orders` nor `orders.eu.late`;
//! `orders.>` matches `orders.eu` and `orders.eu.late`, never `orders`.
//!
//! A pattern starts with a literal segment, so it can never reach the
//! host's own topics (`_schedule.…`) nor, on brokers whose filters are
//! coarser than Berth's checks, anything outside the app's namespace.

/// The wildcard of one segment.
pub const ONE: &str = "*";
/// The wildcard of one or more trailing segments.
pub const REST: &str = ">";

/// Whether `topic` (already checked as a topic or a pattern) holds a
/// wildcard.
pub fn is_pattern(topic: &str) -> bool {
    topic.split('.').any(|s| s == ONE || s == REST)
}

/// Checks a trigger's topic: a topic (see [`super::validate_topic`]) or a
/// pattern of them.
pub fn validate_pattern(pattern: &str) -> Result<(), String> {
    let literal: String = pattern
        .split('.')
        .map(|s| if s == ONE || s == REST { "x" } else { s })
        .collect::<Vec<_>>()
        .join(".");
    super::validate_topic(&literal).map_err(|_| {
        format!(
            "topic pattern {pattern:?} is not a topic nor a pattern of topics: {}",
            RULES
        )
    })?;
    let segments: Vec<&str> = pattern.split('.').collect();
    let first_is_wild = segments.first().is_some_and(|s| *s == ONE || *s == REST);
    let rest_not_last = segments.iter().rev().skip(1).any(|s| *s == REST);
    if first_is_wild || rest_not_last {
        return Err(format!("topic pattern {pattern:?}: {RULES}"));
    }
    Ok(())
}

const RULES: &str = "segments of a-z, A-Z, 0-9, `-`, `_` separated by `.`, where `*` stands for one segment and `>`, last only, for one or more; the first segment is literal";

/// Whether `topic` is one of the topics `pattern` stands for (a pattern
/// without wildcards stands for itself).
pub fn matches(pattern: &str, topic: &str) -> bool {
    let mut topic_segments = topic.split('.');
    for wanted in pattern.split('.') {
        if wanted == REST {
            return topic_segments.next().is_some();
        }
        match topic_segments.next() {
            Some(got) if wanted == ONE || wanted == got => {}
            _ => return false,
        }
    }
    topic_segments.next().is_none()
}

/// `pattern` for a broker whose separator is `separator` and wildcards are
/// `one` and `rest` (the latter standing for one or more segments).
pub fn translate(pattern: &str, separator: &str, one: &str, rest: &str) -> String {
    pattern
        .split('.')
        .map(|s| match s {
            ONE => one,
            REST => rest,
            literal => literal,
        })
        .collect::<Vec<_>>()
        .join(separator)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_stand_for_whole_segments() {
        let cases = [
            ("orders.*", "orders.eu", true),
            ("orders.*", "orders", false),
            ("orders.*", "orders.eu.late", false),
            ("orders.>", "orders.eu", true),
            ("orders.>", "orders.eu.late", true),
            ("orders.>", "orders", false),
            ("orders.*.late", "orders.eu.late", true),
            ("orders.*.late", "orders.eu.early", false),
            ("orders.eu", "orders.eu", true),
            ("orders.eu", "orders.e", false),
            ("orders.eu", "orders.eu.x", false),
            ("orders.*", "ordersx.eu", false),
        ];
        for (pattern, topic, expected) in cases {
            assert_eq!(matches(pattern, topic), expected, "{pattern} ~ {topic}");
        }
    }

    #[test]
    fn patterns_are_checked() {
        for ok in ["orders", "orders.*", "orders.>", "a.*.b.>", "a-b.*.c_d.*"] {
            assert!(validate_pattern(ok).is_ok(), "{ok}");
        }
        for bad in [
            "*",
            ">",
            "*.orders",
            ">.x",
            "orders.>.x",
            "orders.a*",
            "orders.#",
            "orders.+",
            "_schedule.*",
            "orders..*",
            "",
            "orders.*.",
            "a.*_c",
        ] {
            assert!(validate_pattern(bad).is_err(), "{bad}");
        }
        assert!(is_pattern("a.*") && is_pattern("a.>") && !is_pattern("a.b"));
    }

    #[test]
    fn translation_to_broker_syntax() {
        assert_eq!(translate("orders.*.x", "/", "+", "+/#"), "orders/+/x");
        assert_eq!(translate("orders.>", "/", "+", "+/#"), "orders/+/#");
        assert_eq!(translate("orders.>", ".", "*", "*.#"), "orders.*.#");
    }
}
