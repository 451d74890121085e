//! The schedule trigger: runs a component exporting `berth:infra/handler`
//! on a cron schedule (UTC), once per tick across every host serving the
//! app.
//!
//! No host is elected and no clock is shared. At each tick every host
//! publishes a tick message to the schedule's internal topic
//! `_schedule.<name>`, under an id made of the schedule's name and the
//! tick's time, `tick-<name>-<unix seconds>`, which every host computes
//! alike:
//! - NATS JetStream deduplicates by that id within its duplicate window
//!   (two minutes), so the stream holds one message per tick, and the
//!   schedule's durable consumer, shared by the hosts, hands it to one of
//!   them;
//! - RabbitMQ has no such deduplication: the first host to claim the id (an
//!   exclusive queue named after it) publishes the tick, the others skip it;
//! - on Kafka every copy of the tick lands in one partition (the id is the
//!   record key), and the schedule's consumer group delivers the first and
//!   skips the others;
//! - MQTT cannot drop a copy by id: with `messaging.tick_claims` the first
//!   host to claim the id in that Redis (`SET NX`) publishes it, the others
//!   skip it; without it every host's tick runs;
//! - the embedded broker serves one host, which publishes each tick once.
//!
//! From there a tick is a message like any other: acknowledged when the
//! handler returns `ok`, retried with backoff on an error or a trap (so a
//! host killed mid-run does not lose the tick), dead-lettered on
//! `_schedule.<name>.dead-letter` after `max_deliveries`. Each host handles
//! one tick of a schedule at a time. A tick that no host was up to publish
//! is not run later; a host that falls more than [`MAX_LATENESS`] behind
//! (a suspended machine) skips to the next tick rather than firing a burst.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::task::JoinSet;

use crate::app::App;
use crate::manifest::ScheduleTrigger;

/// How late a tick may be published; later ones are skipped.
pub const MAX_LATENESS: Duration = Duration::from_secs(60);

/// Header naming the schedule of a tick message.
pub const SCHEDULE_HEADER: &str = "berth-schedule";
/// Header carrying the tick's time (RFC 3339, UTC).
pub const TICK_HEADER: &str = "berth-tick";

/// Subscribes every schedule of `app` and spawns its ticker on `tasks`.
pub async fn start(app: Arc<App>, tasks: &mut JoinSet<()>) -> anyhow::Result<()> {
    for trigger in app.manifest.schedule_triggers.clone() {
        let schedule = trigger
            .schedule()
            .map_err(|e| anyhow::anyhow!("schedule `{}`: {e}", trigger.name()))?;
        if !app.backends.messaging.publishes_ids_once() {
            tracing::warn!(app = %app.manifest.name, schedule = %trigger.name(), "on MQTT without `messaging.tick_claims` every host serving this app runs each tick: set it to a Redis URL the hosts share");
        }
        super::message::start_trigger(app.clone(), &trigger.message_trigger(), tasks).await?;
        tasks.spawn(tick(app.clone(), trigger, schedule));
    }
    Ok(())
}

/// The id of the tick of schedule `name` at `at`: the same on every host.
pub fn tick_id(name: &str, at: DateTime<Utc>) -> String {
    format!("tick-{name}-{}", at.timestamp())
}

/// Publishes each tick of `schedule` when its time comes, until the app is
/// stopped.
async fn tick(app: Arc<App>, trigger: ScheduleTrigger, schedule: cron::Schedule) {
    tokio::select! {
        () = app.stopped() => {}
        () = publish_ticks(&app, trigger, schedule) => {}
    }
}

async fn publish_ticks(app: &App, trigger: ScheduleTrigger, schedule: cron::Schedule) {
    let (name, topic) = (trigger.name().to_string(), trigger.topic());
    let mut after = Utc::now();
    while let Some(at) = schedule.after(&after).next() {
        until(at).await;
        after = at;
        let late = (Utc::now() - at).to_std().unwrap_or_default();
        if late > MAX_LATENESS {
            tracing::warn!(app = %app.manifest.name, schedule = %name, tick = %at.to_rfc3339(), ?late, "tick skipped: the host fell behind");
            after = Utc::now();
            continue;
        }
        let headers = vec![
            (SCHEDULE_HEADER.to_string(), name.clone()),
            (TICK_HEADER.to_string(), at.to_rfc3339()),
        ];
        let id = tick_id(&name, at);
        // A broker that was briefly unreachable (a reconnect) must not cost
        // the tick: retry until the tick is too late to run.
        let mut retry = Duration::from_millis(100);
        loop {
            match app
                .backends
                .messaging
                .publish_with_id(&topic, &id, Vec::new(), headers.clone())
                .await
            {
                Ok(()) => {
                    tracing::debug!(app = %app.manifest.name, schedule = %name, tick = %at.to_rfc3339(), "tick published");
                    break;
                }
                Err(e) if (Utc::now() - at).to_std().unwrap_or_default() + retry < MAX_LATENESS => {
                    tracing::warn!(app = %app.manifest.name, schedule = %name, tick = %at.to_rfc3339(), error = %e, ?retry, "cannot publish a tick yet; retrying");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::error!(app = %app.manifest.name, schedule = %name, tick = %at.to_rfc3339(), error = %e, "cannot publish a tick; another host may still run it");
                    break;
                }
            }
        }
    }
    tracing::info!(app = %app.manifest.name, schedule = %name, "the schedule has no further ticks");
}

/// Waits until the wall clock reads `at`. Tokio's timers run on a clock
/// that stops while the machine is suspended, so one long sleep would
/// fire as late as the machine slept (and skip a tick due after it woke);
/// the wait is looked at again against the wall clock every
/// [`WALL_CLOCK_CHECK`].
async fn until(at: DateTime<Utc>) {
    loop {
        let Ok(left) = (at - Utc::now()).to_std() else {
            return;
        };
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(WALL_CLOCK_CHECK)).await;
    }
}

/// How often a wait for a tick looks at the wall clock (see [`until`]).
const WALL_CLOCK_CHECK: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_ids_are_the_schedule_and_the_second() {
        let at = DateTime::parse_from_rfc3339("2026-12-01T00:00:05Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(tick_id("nightly", at), "tick-nightly-1796083205");
    }
}
