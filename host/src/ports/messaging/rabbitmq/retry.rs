//! Redelivery after a backoff without holding the failed delivery: its
//! copy waits in a delay queue on the broker, whose message TTL is the
//! backoff and whose dead-letter target is the trigger's queue.
//!
//! Holding the original unacknowledged through the backoff would keep one
//! of the trigger's `prefetch` slots per failed message, so a burst of
//! failures with long backoffs would stall the trigger. A delay queue is
//! RabbitMQ's own mechanism for this: the copy is stored (publisher
//! confirm) before the original is acknowledged, and when its TTL passes
//! RabbitMQ moves it back into the trigger's queue.
//!
//! That move must not lose the copy. A classic queue dead-letters at most
//! once (without confirms), so delay queues are quorum queues with the
//! `at-least-once` dead-letter strategy (RabbitMQ 3.10 and later), which
//! keeps a copy until the trigger's queue has confirmed it. A broker that
//! cannot declare one (older, or quorum queues disabled) makes `park` fail,
//! and the caller falls back to holding the original through the backoff.

use super::*;

/// Headers RabbitMQ adds when it dead-letters a message (here: a copy
/// leaving its delay queue); they are the broker's, not the guest's.
pub(super) fn is_dead_letter_header(name: &str) -> bool {
    name == "x-death" || name.starts_with("x-first-death-") || name.starts_with("x-last-death-")
}

/// How long an unused delay queue outlives the last copy put in it.
const DELAY_QUEUE_SPARE: Duration = Duration::from_secs(60);

/// The delay queue of `queue` for copies waiting `delay_ms`:
/// `berth.<app>.~delay.<hash of the queue>.<ms>`. `~` is in no component
/// name, so it is no trigger's queue; the hash keeps it under AMQP's 255
/// bytes whatever the trigger's queue is called.
pub(super) fn delay_queue(app: &str, queue: &str, delay_ms: u64) -> String {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(queue.as_bytes());
    format!("berth.{app}.~delay.{}.{delay_ms}", hex::encode(&hash[..8]))
}

/// The arguments of a delay queue: a quorum queue whose copies expire
/// after `delay_ms` into the default exchange under `queue`'s name, that
/// is into `queue`, at least once (which requires `reject-publish`
/// overflow), and which goes once unused for longer than any copy waits
/// in it.
pub(super) fn delay_queue_arguments(queue: &str, delay_ms: u64) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        "x-dead-letter-strategy".into(),
        AMQPValue::LongString("at-least-once".into()),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let ttl = delay_ms.min(i64::MAX as u64) as i64;
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
    args.insert(
        "x-expires".into(),
        AMQPValue::LongLongInt(ttl.saturating_add(DELAY_QUEUE_SPARE.as_millis() as i64)),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(queue.into()),
    );
    args
}

/// Stores the copy of failed `message` (attempt incremented, its topic in
/// `berth-topic`) in `queue`'s delay queue for `delay`. Once this returns
/// `Ok`, the original may be acknowledged.
pub(super) async fn park(
    shared: &Shared,
    queue: &str,
    message: &Message,
    delay: Duration,
) -> Result<(), MessagingError> {
    let delay_ms = (delay.as_millis() as u64).max(1);
    let name = delay_queue(&shared.settings.app, queue, delay_ms);
    // Declared on a channel of its own, and again before every copy: a
    // declaration restarts the queue's `x-expires` clock, so it cannot
    // expire (dropping what it holds) before this copy's TTL has passed.
    let channel = shared.channel().await?;
    let declared = channel
        .queue_declare(
            &name,
            durable_queue(),
            delay_queue_arguments(queue, delay_ms),
        )
        .await
        .map_err(unavailable);
    let _ = channel.close(200, "declared").await;
    declared?;
    let routed = publish_confirmed(
        &shared.link().await?.publisher,
        "",
        &name,
        true,
        &message.payload,
        retry_properties(message),
    )
    .await?;
    if routed {
        Ok(())
    } else {
        Err(MessagingError::Unavailable(
            "the delay queue took no copy".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_queues_are_per_trigger_and_delay() {
        let a = delay_queue("shop", "berth.shop.handler.orders", 100);
        assert!(
            a.starts_with("berth.shop.~delay.") && a.ends_with(".100"),
            "{a}"
        );
        assert_eq!(a, delay_queue("shop", "berth.shop.handler.orders", 100));
        assert_ne!(a, delay_queue("shop", "berth.shop.handler.orders", 200));
        assert_ne!(a, delay_queue("shop", "berth.shop.handler.users", 100));
        let long = format!("berth.shop.handler.{}", "x".repeat(230));
        assert!(delay_queue("shop", &long, 30_000).len() < 64);
        assert!(is_dead_letter_header("x-death"));
        assert!(is_dead_letter_header("x-first-death-reason"));
        assert!(!is_dead_letter_header("x-request-id"));
    }
}
