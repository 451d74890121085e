//! Pattern subscriptions. Kafka has no wildcard subscriptions (and rskafka
//! no regex consumer), so a pattern trigger reads each matching topic as a
//! trigger of that topic would, and lists the cluster's topics every
//! [`DISCOVER_EVERY`] for new ones.

use super::*;

/// What one of the app's Kafka topics holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A topic's messages: `berth.<app>.<t>`.
    Messages,
    /// A topic's requests: `berth.<app>.__req.<t>`.
    Requests,
}

/// The Berth topic whose messages or requests the Kafka topic `name`
/// holds, if it is one of `app`'s; `None` for Berth's own topics
/// (`__offsets`, `__reply`), other apps' and names no Berth topic has.
pub(super) fn berth_topic_of(app: &str, name: &str) -> Option<(Kind, String)> {
    // The dot after the app keeps `shop` from matching `berth.shopx.…`;
    // app names have no dots, so `berth.<app>.` is never another app's.
    let rest = name
        .strip_prefix("berth.")?
        .strip_prefix(app)?
        .strip_prefix('.')?;
    let (kind, topic) = match rest.strip_prefix("__req.") {
        Some(topic) => (Kind::Requests, topic),
        None => (Kind::Messages, rest),
    };
    // Berth topics never start with `_` (that rules out `__offsets` and
    // `__reply`); a topic created outside Berth with a name Berth would
    // refuse (an empty segment) is not one a pattern stands for.
    super::super::validate_topic(topic).ok()?;
    Some((kind, topic.to_string()))
}

/// The readers of a pattern's topics started so far. Dropping it (when
/// the discovery task owning it is aborted) stops them all.
struct Readers {
    shared: Arc<Shared>,
    pattern: String,
    consumer: String,
    feeds: Feeds,
    /// Each started Kafka topic's tasks, by its name: a topic is started
    /// once, and its tasks live as long as the subscription.
    started: HashMap<String, Vec<AbortOnDrop>>,
}

impl Readers {
    /// Starts the readers of every topic in `listed` that the pattern
    /// matches and that has none yet, request topics from `requests_at`.
    /// Returns the topics whose readers could not start, with why: they
    /// are tried again on the next listing.
    async fn start_matching(
        &mut self,
        listed: &[String],
        requests_at: OffsetAt,
    ) -> Vec<(String, MessagingError)> {
        let mut failed = Vec::new();
        for name in listed {
            if self.started.contains_key(name) {
                continue;
            }
            let Some((kind, topic)) = berth_topic_of(&self.shared.app, name) else {
                continue;
            };
            if !pattern::matches(&self.pattern, &topic) {
                continue;
            }
            let started = match kind {
                Kind::Messages => {
                    start_messages(
                        &self.shared,
                        &self.pattern,
                        &topic,
                        &self.consumer,
                        &self.feeds,
                    )
                    .await
                }
                Kind::Requests => start_requests(&self.shared, &topic, requests_at, &self.feeds)
                    .await
                    .map(|task| vec![task]),
            };
            match started {
                Ok(tasks) => {
                    self.started.insert(name.clone(), tasks);
                }
                Err(e) => failed.push((name.clone(), e)),
            }
        }
        failed
    }
}

/// Subscribes `consumer` to the topics `pattern` matches: those that exist
/// now (failing as a topic's subscription would if one cannot be read),
/// then, through a discovery task the subscription owns, those that appear
/// later.
pub(super) async fn subscribe_pattern(
    shared: &Arc<Shared>,
    pattern: &str,
    consumer: &str,
) -> Result<Box<dyn Subscription>, MessagingError> {
    let (feeds, mut subscription) = KafkaSubscription::open();
    let mut readers = Readers {
        shared: shared.clone(),
        pattern: pattern.to_string(),
        consumer: consumer.to_string(),
        feeds,
        started: HashMap::new(),
    };
    // The broker must answer this listing: an unreachable broker fails the
    // start, as for a topic's subscription.
    let listed = shared.topic_names().await?;
    // Requests already in a request topic were sent before this trigger
    // ran, as for a topic's subscription: it answers from now on. A topic
    // that cannot be read yet is tried again by the discovery task.
    for (name, e) in readers.start_matching(&listed, OffsetAt::Latest).await {
        tracing::warn!(pattern, topic = %name, error = %e, "cannot read a kafka topic matching a pattern yet; retrying");
    }
    // Only now may a request create a request topic for this pattern: one
    // created before the listing above would be read from its end, and
    // its request lost.
    shared.add_pattern(pattern, readers.feeds.alive.clone());
    subscription
        ._tasks
        .push(AbortOnDrop(tokio::spawn(discover(readers))));
    Ok(Box::new(subscription))
}

/// Lists the cluster's topics every [`DISCOVER_EVERY`] and starts the
/// readers of the new ones `readers` matches, until aborted (which drops
/// `readers`, stopping every reader it started). A failed listing or start
/// is logged and tried again on the next round.
async fn discover(mut readers: Readers) {
    loop {
        tokio::time::sleep(DISCOVER_EVERY).await;
        let listed = match readers.shared.topic_names().await {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(pattern = %readers.pattern, error = %e, "cannot list kafka topics for a pattern trigger; retrying");
                continue;
            }
        };
        // Readers of message topics that were deleted stop (one created
        // again later is found again, from its committed offset). Request
        // topics are never deleted, and one read again would be read from
        // its start, answering old requests: their readers stay.
        let app = readers.shared.app.clone();
        readers.started.retain(|name, _| {
            listed.contains(name) || matches!(berth_topic_of(&app, name), Some((Kind::Requests, _)))
        });
        // A message topic new since the last round starts from its
        // committed offset, else its start: nothing published to it before
        // it was seen is lost. A request topic that appeared after the
        // trigger started holds only requests sent since: all are read.
        for (name, e) in readers.start_matching(&listed, OffsetAt::Earliest).await {
            tracing::warn!(pattern = %readers.pattern, topic = %name, error = %e, "cannot read a kafka topic matching a pattern yet; retrying");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_topics_map_back_to_the_apps_topics() {
        let cases = [
            ("berth.shop.orders", Some((Kind::Messages, "orders"))),
            ("berth.shop.orders.eu", Some((Kind::Messages, "orders.eu"))),
            (
                "berth.shop.__req.orders.eu",
                Some((Kind::Requests, "orders.eu")),
            ),
            ("berth.shop.__offsets", None),
            ("berth.shop.__reply", None),
            ("berth.shop.__req.", None),
            ("berth.shop.__req._x", None),
            ("berth.shop._schedule.tick", None),
            ("berth.shop.", None),
            ("berth.shop", None),
            ("berth.shop.a..b", None),
            ("berth.shopx.orders", None),
            ("berth.other.orders", None),
            ("shop.orders", None),
            ("orders", None),
        ];
        for (name, expected) in cases {
            let expected = expected.map(|(kind, topic)| (kind, topic.to_string()));
            assert_eq!(berth_topic_of("shop", name), expected, "{name}");
        }
    }
}
