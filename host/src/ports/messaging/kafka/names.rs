//! How Berth's topics and triggers are named in Kafka, and back.

/// What one of the app's Kafka topics holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A topic's messages: `berth.<app>.<t>`.
    Messages,
    /// A topic's requests: `berth.<app>.__req.<t>`.
    Requests,
}

/// The Berth topic (host topics such as `_schedule.…` included) whose
/// messages or requests Kafka topic `name` of `app` holds.
pub(super) fn topic_of(app: &str, name: &str) -> Option<(Kind, String)> {
    // The dot after the app keeps `shop` from matching `berth.shopx.…`;
    // app names have no dots, so `berth.<app>.` is never another app's.
    let rest = name
        .strip_prefix("berth.")?
        .strip_prefix(app)?
        .strip_prefix('.')?;
    match rest.strip_prefix("__req.") {
        Some(topic) => Some((Kind::Requests, topic.to_string())),
        None => Some((Kind::Messages, rest.to_string())),
    }
}

/// Whether Kafka takes topic names `a` and `b` for one: it names a topic's
/// metrics with `.` written `_`, so it refuses to create a topic whose name
/// differs from an existing one's only there.
pub(super) fn folds_alike(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .all(|(x, y)| x == y || (matches!(x, b'.' | b'_') && matches!(y, b'.' | b'_')))
}

/// A trigger as Kafka knows it.
pub(super) struct TriggerId {
    /// Its consumer group, `berth.<app>/<component>/<topic or pattern>`,
    /// which also addresses its retried copies.
    pub(super) group: String,
    pub(super) consumer: String,
    /// Its topic or pattern.
    pub(super) trigger: String,
}

impl TriggerId {
    pub(super) fn new(app: &str, consumer: &str, trigger: &str) -> TriggerId {
        TriggerId {
            group: format!("berth.{app}/{consumer}/{trigger}"),
            consumer: consumer.to_string(),
            trigger: trigger.to_string(),
        }
    }

    /// The key under which the release before kept this trigger's offset
    /// of Berth topic `topic`, and addressed its retried copies:
    /// `<consumer>/<topic>` for a topic's trigger,
    /// `<consumer>/<pattern>/<topic>` for a pattern's.
    pub(super) fn legacy_key(&self, topic: &str) -> String {
        if self.trigger == topic {
            format!("{}/{topic}", self.consumer)
        } else {
            format!("{}/{}/{topic}", self.consumer, self.trigger)
        }
    }

    /// Whether a retried copy of Berth topic `topic` addressed to `to` is
    /// this trigger's.
    pub(super) fn is_for(&self, to: &str, topic: &str) -> bool {
        to == self.group || to == self.legacy_key(topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_topics_map_back_to_berth_topics() {
        let cases = [
            ("berth.shop.orders", Some((Kind::Messages, "orders"))),
            (
                "berth.shop._schedule.nightly",
                Some((Kind::Messages, "_schedule.nightly")),
            ),
            (
                "berth.shop.__req.orders.eu",
                Some((Kind::Requests, "orders.eu")),
            ),
            ("berth.shopx.orders", None),
            ("berth.shop", None),
            ("shop.orders", None),
        ];
        for (name, expected) in cases {
            let expected = expected.map(|(kind, topic)| (kind, topic.to_string()));
            assert_eq!(topic_of("shop", name), expected, "{name}");
        }
    }

    #[test]
    fn names_differing_only_in_dots_and_underscores_fold_alike() {
        assert!(folds_alike("berth.a.b.c", "berth.a_b.c"));
        assert!(folds_alike("berth.a.b_c", "berth.a.b.c"));
        assert!(folds_alike("berth.a.b", "berth.a.b"));
        assert!(!folds_alike("berth.a.b.c", "berth.a-b.c"));
        assert!(!folds_alike("berth.a.bc", "berth.a.b.c"));
        assert!(!folds_alike("berth.a.B", "berth.a.b"));
    }

    #[test]
    fn triggers_are_named_apart_and_take_their_own_copies() {
        let t = TriggerId::new("shop", "handler", "orders");
        assert_eq!(t.group, "berth.shop/handler/orders");
        assert!(t.is_for("berth.shop/handler/orders", "orders"));
        // A copy the release before addressed by its offset key.
        assert!(t.is_for("handler/orders", "orders"));
        assert!(!t.is_for("berth.shop/other/orders", "orders"));
        let p = TriggerId::new("shop", "handler", "orders.*");
        assert_eq!(p.legacy_key("orders.eu"), "handler/orders.*/orders.eu");
        assert!(p.is_for("handler/orders.*/orders.eu", "orders.eu"));
    }
}
