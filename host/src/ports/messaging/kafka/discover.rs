//! Pattern subscriptions. Kafka's classic groups subscribe to topic names,
//! not patterns, so a pattern trigger lists the cluster's topics every
//! [`DISCOVER_EVERY`] and subscribes its group to those the pattern
//! matches.

use krafka::consumer::{OffsetAndMetadata, TopicPartition};

use super::*;

/// The Berth topic whose messages or requests the Kafka topic `name`
/// holds, if it is one of `app`'s a pattern may stand for; `None` for
/// Berth's own topics (`__reply`, `_schedule.…`), other apps' and names no
/// Berth topic has.
pub(super) fn berth_topic_of(app: &str, name: &str) -> Option<(Kind, String)> {
    let (kind, topic) = topic_of(app, name)?;
    // Berth topics never start with `_`; a topic created outside Berth
    // with a name Berth would refuse (an empty segment) is not one a
    // pattern stands for.
    super::super::validate_topic(&topic).ok()?;
    Some((kind, topic))
}

/// The Kafka topics among `listed` that the pattern trigger follows, and
/// the Berth topics of their messages.
fn matching(shared: &Shared, pattern: &str, listed: &[String]) -> (Vec<String>, Vec<String>) {
    let mut names = Vec::new();
    let mut topics = Vec::new();
    for name in listed {
        let Some((kind, topic)) = berth_topic_of(&shared.app, name) else {
            continue;
        };
        if pattern::matches(pattern, &topic) {
            names.push(name.clone());
            if kind == Kind::Messages {
                topics.push(topic);
            }
        }
    }
    names.sort();
    (names, topics)
}

/// Subscribes `consumer` to the topics `pattern` matches: those that exist
/// now, then, through a discovery task the subscription owns, those that
/// appear later.
pub(super) async fn subscribe_pattern(
    shared: &Arc<Shared>,
    pattern: &str,
    consumer: &str,
) -> Result<Box<dyn Subscription>, MessagingError> {
    let trigger = TriggerId::new(&shared.app, consumer, pattern);
    // The broker must answer this listing: an unreachable broker fails the
    // start, as for a topic's subscription.
    let listed = shared.topic_names().await?;
    let (names, topics) = matching(shared, pattern, &listed);
    legacy::adopt(shared, &trigger, &topics).await;
    let mut subscription = GroupSubscription::start(shared, trigger).await?;
    if !names.is_empty() {
        subscription.follow(names.clone()).await?;
    }
    // Requests to the topics it matches may now create their request
    // topics, which the discovery reads from their start.
    shared.add_pattern(pattern, Arc::downgrade(&subscription.alive));
    let discovery = Discovery {
        shared: shared.clone(),
        trigger: TriggerId::new(&shared.app, consumer, pattern),
        consumer: subscription.consumer.clone(),
        following: names,
    };
    subscription
        .tasks
        .push(AbortOnDrop(tokio::spawn(discovery.run())));
    Ok(Box::new(subscription))
}

/// Follows the topics a pattern trigger matches as they come and go.
struct Discovery {
    shared: Arc<Shared>,
    trigger: TriggerId,
    consumer: Arc<krafka::consumer::Consumer>,
    /// The Kafka topics the group is subscribed to.
    following: Vec<String>,
}

impl Discovery {
    /// Lists the cluster's topics every [`DISCOVER_EVERY`] and subscribes
    /// the group again when the matching ones changed, until aborted. A
    /// failed listing or subscription is logged and tried again on the next
    /// round.
    async fn run(mut self) {
        let pattern = self.trigger.trigger.clone();
        loop {
            tokio::time::sleep(DISCOVER_EVERY).await;
            let listed = match self.shared.topic_names().await {
                Ok(listed) => listed,
                Err(e) => {
                    tracing::warn!(%pattern, error = %e, "cannot list kafka topics for a pattern trigger; retrying");
                    continue;
                }
            };
            let (names, topics) = matching(&self.shared, &pattern, &listed);
            if names == self.following {
                continue;
            }
            // A topic new to the group starts where the release before
            // left it, else at its start: nothing published to it before
            // it was seen is lost.
            let new: Vec<String> = topics
                .into_iter()
                .filter(|t| !self.following.contains(&self.shared.kafka_topic(t)))
                .collect();
            self.adopt(&new).await;
            match follow(&self.consumer, names.clone()).await {
                Ok(()) => self.following = names,
                Err(e) => {
                    tracing::warn!(%pattern, error = %e, "cannot follow the kafka topics matching a pattern yet; retrying");
                }
            }
        }
    }
}

impl Discovery {
    /// Starts the group at the offsets the release before kept for the
    /// Berth `topics`, committed through this host's own member: the
    /// group is not empty, so no outside commit is taken.
    async fn adopt(&self, topics: &[String]) {
        let commits: Vec<(TopicPartition, OffsetAndMetadata)> =
            legacy::adoptable(&self.shared, &self.trigger, topics)
                .await
                .into_iter()
                .map(|(tp, offset)| (tp, OffsetAndMetadata::new(offset)))
                .collect();
        if commits.is_empty() {
            return;
        }
        let committing = self
            .consumer
            .commit_offsets(commits.iter().map(|(tp, commit)| (tp, commit)));
        if let Err(e) = self.shared.call(committing).await {
            tracing::debug!(group = %self.trigger.group, error = %e, "old offsets not adopted");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_stand_for_the_apps_own_topics_only() {
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
