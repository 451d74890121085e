//! The message trigger: feeds a topic's deliveries to a component exporting
//! `berth:infra/handler`.
//!
//! A delivery is acknowledged only after the handler returns `ok`. On `err`
//! or a trap it is handed back to the broker for redelivery after an
//! exponential backoff, until the trigger's `max_deliveries`; then it is
//! dead-lettered (logged with its last error) and acknowledged.
//!
//! Each delivery gets a fresh instance, unless the trigger sets
//! `reuse_instances`: then an instance that handled a message successfully
//! goes back to a small pool of warm instances for the next one (see
//! [`WarmPool`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinSet;
use wasmtime_wasi::WasiCtxBuilder;

use super::InvocationError;
pub use super::policy::{DEFAULT_MAX_DELIVERIES, DeliveryPolicy};
use crate::app::App;
use crate::bindings::{MessageHandler, MessageHandlerPre};
use crate::manifest::MessageTrigger;
use crate::metrics::{Outcome, Trigger};
use crate::ports::logging::output::GuestOutput;
use crate::ports::messaging::host::{is_host_header, message_to_wit};
use crate::ports::messaging::{Acker, Delivery, MessagingError, Subscription};
use crate::state::InstanceState;

/// Longest error of a handler's own kept (logged, and in a dead letter's
/// `berth-error`); the rest is cut.
const MAX_GUEST_ERROR_BYTES: usize = 1024;

/// Warm instances of one trigger's handler, idle between messages (see
/// [`super::warm`]: the most recent first, each replaced after 1,000
/// messages, dropped after 30 s idle). At most
/// [`DeliveryPolicy::concurrency`] exist, since each is in use by at most
/// one delivery.
pub type WarmPool = super::warm::IdlePool<WarmInstance>;

/// An instance of a trigger's handler with its store, kept between
/// messages when the trigger sets `reuse_instances`.
pub struct WarmInstance {
    store: wasmtime::Store<InstanceState>,
    handler: MessageHandler,
    /// Its place among the app's instances, held while it is idle too.
    _app_permit: Option<crate::rate::InstancePermit>,
}

/// Subscribes every message trigger of `app`, then spawns each trigger's
/// consumer loop on `tasks`: no loop runs before every trigger subscribed,
/// so a message one handler publishes meanwhile reaches each trigger on
/// its topic.
pub async fn start(app: Arc<App>, tasks: &mut JoinSet<()>) -> anyhow::Result<()> {
    let mut loops = Vec::new();
    for trigger in app.manifest.message_triggers.clone() {
        loops.push(subscribe(app.clone(), &trigger).await?);
    }
    for consumer in loops {
        tasks.spawn(consumer);
    }
    Ok(())
}

/// Tells the app's broker its triggers, the manifest's and the schedules'
/// (see [`MessagingBackend::declare_triggers`]), once all of them
/// subscribed: nothing can fail the app's start after it, so a version
/// refused never retires the triggers of the one still serving.
///
/// [`MessagingBackend::declare_triggers`]: crate::ports::messaging::MessagingBackend::declare_triggers
pub async fn declare_triggers(app: &App) -> anyhow::Result<()> {
    let schedules = app
        .manifest
        .schedule_triggers
        .iter()
        .map(|s| s.message_trigger());
    let declared: Vec<(String, String)> = app
        .manifest
        .message_triggers
        .iter()
        .cloned()
        .chain(schedules)
        .map(|t| (t.topic, t.component))
        .collect();
    app.backends
        .messaging
        .declare_triggers(&declared)
        .await
        .context("cannot tell the broker the app's triggers")
}

/// Subscribes one trigger (a manifest's, or a schedule's tick trigger) and
/// spawns its consumer loop on `tasks`.
pub async fn start_trigger(
    app: Arc<App>,
    trigger: &MessageTrigger,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    tasks.spawn(subscribe(app, trigger).await?);
    Ok(())
}

/// Subscribes `trigger`; returns its consumer loop, to spawn.
async fn subscribe(
    app: Arc<App>,
    trigger: &MessageTrigger,
) -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let component = app.component(&trigger.component)?;
    let pre = MessageHandlerPre::new(component.pre.clone())
        .map_err(anyhow::Error::from)
        .with_context(|| format!("component `{}` cannot handle messages", trigger.component))?;
    let subscription = app
        .backends
        .messaging
        .subscribe(&trigger.topic, &trigger.component)
        .await
        .with_context(|| format!("cannot subscribe to topic {:?}", trigger.topic))?;
    let policy = DeliveryPolicy::of(trigger);
    let warm = trigger.reuse_instances.then(|| {
        let mut pool = WarmPool::default();
        // Its instances hold host instance slots and places of the app: a
        // trigger gone quiet gives them back, and the app may take them
        // back for its other work.
        pool.spawn_sweeper();
        pool.tell_when_idle(app.allowance.hold_idle(pool.as_idle_instances()));
        pool
    });
    let component = trigger.component.clone();
    Ok(consume(app, component, pre, subscription, policy, warm))
}

async fn consume(
    app: Arc<App>,
    component: String,
    pre: MessageHandlerPre<crate::state::InstanceState>,
    mut subscription: Box<dyn Subscription>,
    policy: DeliveryPolicy,
    warm: Option<WarmPool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(policy.concurrency));
    let policy = Arc::new(policy);
    // The handlers run on this set, so that when the host's shutdown grace
    // runs out this loop can cancel them and wait for their deliveries to
    // be handed back, rather than leave them running into a host that is
    // exiting (and, were the loop itself aborted, dropping the set still
    // cancels them).
    let mut handlers = JoinSet::new();
    // One future for the whole loop: polled again each time, not made
    // again for every delivery.
    let stopped = app.stopped();
    tokio::pin!(stopped);
    loop {
        while handlers.try_join_next().is_some() {}
        // A free slot first, then the next delivery: a delivery waiting
        // for a slot stays with the broker's client, which (NATS) keeps
        // restarting its ack wait, rather than in this loop, which would not.
        let next = async {
            let permit = slots.clone().acquire_owned().await.ok()?;
            let delivery = subscription.next().await?;
            Some((permit, delivery))
        };
        let (permit, delivery) = tokio::select! {
            biased;
            () = &mut stopped => break,
            next = next => match next {
                Some(next) => next,
                None => break,
            },
        };
        let (app, component, pre) = (app.clone(), component.clone(), pre.clone());
        let (warm, policy) = (warm.clone(), policy.clone());
        handlers.spawn(async move {
            handle_delivery(&app, &component, &pre, delivery, &policy, warm.as_ref()).await;
            drop(permit);
        });
    }
    // No more deliveries are taken, nor fetched ahead (those held go back
    // at once). The running handlers finish and settle theirs while the
    // subscription still serves their acks and progress, unless the
    // shutdown grace runs out first: then they are cancelled (their
    // deliveries handed back) and waited for. Then the subscription is
    // dropped.
    subscription.stop_fetching();
    let finished = async { while handlers.join_next().await.is_some() {} };
    let cancelled = tokio::select! {
        () = finished => false,
        () = app.cancelled() => true,
    };
    if cancelled {
        handlers.shutdown().await;
    }
    drop(subscription);
}

/// Invokes the handler once (in a warm instance from `warm`, if given and
/// one is idle) and settles the delivery.
pub async fn handle_delivery(
    app: &App,
    component: &str,
    pre: &MessageHandlerPre<crate::state::InstanceState>,
    delivery: Delivery,
    policy: &DeliveryPolicy,
    warm: Option<&WarmPool>,
) {
    let Delivery {
        message,
        reply,
        acker,
    } = delivery;
    let (id, topic, attempt) = (message.id.clone(), message.topic.clone(), message.attempt);
    if reply.as_ref().is_some_and(|reply| reply.is_closed()) {
        // A request whose caller stopped waiting (its timeout passed while
        // it waited for a handler): its answer would go nowhere.
        tracing::debug!(app = %app.manifest.name, component, %topic, message_id = %id, "a request past its caller's timeout; dropped");
        acker.ack().await;
        return;
    }
    // A request is neither stored nor redelivered on any broker: its
    // caller has its answer (an error) and decides whether to ask again, so
    // a failed one is not dead-lettered either.
    let request = reply.is_some();
    // Only the last attempt may need the message again, to dead-letter it:
    // `dead` is `Some` exactly then.
    let last_attempt = !request && attempt >= policy.max_deliveries;
    let dead = last_attempt.then(|| (message.payload.clone(), message.headers.clone()));
    let caller_gone = || reply.as_ref().is_some_and(|reply| reply.is_closed());
    let run = invoke(app, component, pre, message, warm, &caller_gone);
    let Some(outcome) = telling_progress(acker.as_ref(), run).await else {
        // Its caller gave up while the request waited for an instance:
        // handled now, it would run after its caller was told it failed
        // (and a caller that asked again would have it run twice).
        tracing::debug!(app = %app.manifest.name, component, %topic, message_id = %id, "a request past its caller's timeout; dropped");
        acker.ack().await;
        return;
    };
    // A failing handler's lines are the guest's to cause, once a delivery:
    // written at a bounded rate per app (its metrics count every one).
    let warning_due = || crate::audit::app_warning_due(&app.manifest.name);
    match (outcome, dead) {
        (Ok(answer), _) => {
            if let (Some(reply), Some(payload)) = (reply, answer) {
                send_reply(app, component, &topic, &id, reply, payload);
            }
            acker.ack().await;
            tracing::debug!(app = %app.manifest.name, component, %topic, message_id = %id, attempt, "message handled");
        }
        (Err(error), _) if request => {
            if warning_due() {
                tracing::warn!(app = %app.manifest.name, component, %topic, message_id = %id, %error, "request handler failed; its caller gets no reply");
            }
            acker.ack().await;
        }
        (Err(error), None) => {
            let backoff = policy.backoff_after(attempt);
            if warning_due() {
                tracing::warn!(app = %app.manifest.name, component, %topic, message_id = %id, attempt, %error, ?backoff, "message handler failed; will redeliver");
            }
            acker.nack(backoff).await;
        }
        (Err(error), Some(dead)) => {
            if dead_letter(app, &topic, &policy.dead_letter, &id, attempt, &error, dead).await {
                if warning_due() {
                    tracing::error!(app = %app.manifest.name, component, %topic, message_id = %id, attempt, %error, "message dead-lettered after its last delivery");
                }
                acker.ack().await;
            } else {
                // Acknowledged now, it would be lost: it comes again, and
                // its next failure tries the dead-letter topic again.
                let backoff = policy.backoff_after(attempt);
                if warning_due() {
                    tracing::error!(app = %app.manifest.name, component, %topic, message_id = %id, attempt, %error, ?backoff, "message failed its last delivery and cannot be dead-lettered; will redeliver");
                }
                acker.nack(backoff).await;
            }
        }
    }
}

/// Sends a handler's reply to its caller, unless it is larger than a
/// message may be (the component's `message_max_kb`, as for what it
/// publishes): the caller then gets no reply (a timeout, or on the
/// in-process brokers an error at once) rather than a payload of up to the
/// handler's memory copied into the host and through the broker.
fn send_reply(
    app: &App,
    component: &str,
    topic: &str,
    id: &str,
    reply: tokio::sync::oneshot::Sender<Vec<u8>>,
    payload: Vec<u8>,
) {
    let max = app
        .component(component)
        .map_or(0, |c| c.env.limits.payloads.message_max_bytes);
    if payload.len() > max {
        if crate::audit::app_warning_due(&app.manifest.name) {
            tracing::warn!(app = %app.manifest.name, component, %topic, message_id = %id, bytes = payload.len(), max,
                "a request handler's reply is larger than a message may be (message_max_kb); not sent");
        }
        return;
    }
    let _ = reply.send(payload);
}

/// Runs `work`, telling the broker every so often that the delivery is
/// still being handled (see [`Acker::progress_schedule`]): a handler slower
/// than JetStream's ack wait is not redelivered while it runs.
async fn telling_progress<T>(acker: &dyn Acker, work: impl Future<Output = T>) -> T {
    let Some((first, every)) = acker.progress_schedule().filter(|(_, d)| !d.is_zero()) else {
        return work.await;
    };
    tokio::pin!(work);
    let mut every = every;
    // A first tick already past (the delivery waited for a slot) fires at once.
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::from_std(first), every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The broker's timer can change under a running handler (NATS: another
    // host set the consumer's ack wait): looked at again now and then, and
    // when it is shorter, progress is told at once and as often from then.
    let mut recheck = tokio::time::interval(PROGRESS_RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = ticks.tick() => {
                // Bounded, so a broker that stopped answering stalls the
                // handler (not polled meanwhile) for one interval at most.
                let _ = tokio::time::timeout(every, acker.in_progress()).await;
            }
            _ = recheck.tick() => {
                let now = acker.progress_schedule().map(|(_, e)| e).filter(|e| !e.is_zero());
                if let Some(shorter) = now.filter(|e| *e < every) {
                    every = shorter;
                    ticks = tokio::time::interval(every);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                }
            }
        }
    }
}

/// How often a running handler's progress schedule is looked at again.
const PROGRESS_RECHECK: Duration = Duration::from_secs(2);

async fn invoke(
    app: &App,
    name: &str,
    pre: &MessageHandlerPre<crate::state::InstanceState>,
    message: crate::ports::messaging::Message,
    warm: Option<&WarmPool>,
    caller_gone: &(dyn Fn() -> bool + Sync),
) -> Option<Result<Option<Vec<u8>>, String>> {
    let component = match app.component(name) {
        Ok(component) => component,
        Err(e) => return Some(Err(e.to_string())),
    };
    let limit = component.env.limits.timeout;
    let handles = component.env.limits.handles;
    let msg = message_to_wit(message);
    // A delivery waits for a free slot of its component and of the host
    // before its time limit starts: waiting for capacity is neither the
    // handler's time nor a failure (which would count as an attempt).
    let _permit = component.env.slots.clone().acquire_owned().await;
    // A warm instance holds its place among the app's instances
    // (`[app_limits] max_instances`) while idle too, so idle instances
    // count against the app's share, not only against the host's slots.
    let start = match warm.and_then(WarmPool::take) {
        Some(taken) => Ok(taken),
        None => {
            let weight = component.env.weight;
            let app_permit = app.allowance.instance_permit(weight).await;
            let slot = match app.allowance.try_host_slot(app.engine(), weight) {
                Some(slot) => slot,
                None => app.engine().instance_slot(weight).await,
            };
            Err((app_permit, slot))
        }
    };
    if caller_gone() {
        if let (Some(pool), Ok(taken)) = (warm, start) {
            pool.give_back(taken);
        }
        return None;
    }
    let call = async {
        let mut taken = match start {
            Ok(mut taken) => {
                // A new invocation: a new deadline (for the epoch callback
                // and for time in host calls) and a new request count.
                let instance = &mut taken.item;
                let first_deadline = instance.store.data_mut().renew();
                instance.store.set_epoch_deadline(first_deadline);
                taken
            }
            Err((app_permit, slot)) => {
                let mut wasi = WasiCtxBuilder::new();
                let output = &component.env.output;
                wasi.stdout(GuestOutput::new(output.clone(), "stdout"))
                    .stderr(GuestOutput::new(output.clone(), "stderr"));
                let mut store = app.new_store(component, wasi, slot);
                let handler = pre.instantiate_async(&mut store).await?;
                WarmPool::fresh(WarmInstance {
                    store,
                    handler,
                    _app_permit: app_permit,
                })
            }
        };
        let instance = &mut taken.item;
        let result = instance
            .handler
            .berth_infra_handler()
            .call_handle(&mut instance.store, &msg)
            .await?;
        // Only an instance whose handler succeeded is reused: after an error
        // or a trap its state is suspect, and it is dropped here, as is one
        // still holding a port's resources.
        if let (Some(pool), Ok(_)) = (warm, &result)
            && !instance.store.data().holds_port_resources()
        {
            instance.store.data_mut().turn.finish();
            pool.give_back(taken);
        }
        wasmtime::Result::Ok(result)
    };
    let (outcome, result) = match tokio::time::timeout(limit + Duration::from_secs(1), call).await {
        // The guest's error is logged and may go into a dead letter's
        // header: bounded, and unable to start a log line of its own.
        Ok(Ok(result)) => (
            Ok(result.is_ok()),
            result.map_err(|e| {
                crate::audit::printable(crate::ports::truncate(&e, MAX_GUEST_ERROR_BYTES))
                    .into_owned()
            }),
        ),
        Ok(Err(e)) => {
            let e = InvocationError::from_error(&e, handles);
            (Err(e.clone()), Err(e.to_string()))
        }
        Err(_) => {
            let e = InvocationError::Limit(crate::limits::LimitExceeded::Timeout(limit));
            (Err(e.clone()), Err(e.to_string()))
        }
    };
    let outcome = match &outcome {
        Ok(true) => Outcome::Ok,
        Ok(false) => Outcome::Failed,
        Err(e) => Outcome::Error(e),
    };
    component.env.counters.invocation(Trigger::Message, outcome);
    Some(result)
}

/// Publishes a message that exhausted its deliveries on its trigger's
/// dead-letter topic with its topic, id, attempts and last error as
/// headers (see [`dead_letter_headers`]), for an operator or a dead-letter
/// trigger to inspect. Returns whether the broker took it.
async fn dead_letter(
    app: &App,
    topic: &str,
    dl_topic: &str,
    id: &str,
    attempt: u32,
    error: &str,
    (payload, headers): (Vec<u8>, Vec<(String, String)>),
) -> bool {
    let headers = dead_letter_headers(headers, topic, id, attempt, error);
    let broker = &app.backends.messaging;
    // A fresh id for each try: with MQTT's tick claims an id is published
    // once per claim, so a retried dead letter under one id could be
    // skipped (and its message acknowledged) after a failed first try. A
    // dead letter published twice (the original's ack lost) is the lesser
    // harm.
    // Past the bounds of the broker's queue: this is what drains a full
    // one of messages that keep failing.
    let publish = |payload: Vec<u8>, headers: Vec<(String, String)>| {
        broker.publish_unbounded(dl_topic, payload, headers)
    };
    let mut published = publish(payload.clone(), headers.clone()).await;
    // A message near the broker's size limit may not take the dead letter's
    // headers on top. Rather than redelivered for ever, it goes without the
    // error text; failing that, without its payload and its own headers,
    // the payload's size in a header (on NATS and Kafka the original stays
    // in the stream or topic until retention drops it).
    if matches!(published, Err(MessagingError::TooLarge(_))) {
        let without_error: Vec<_> = headers
            .into_iter()
            .filter(|(name, _)| name != "berth-error")
            .collect();
        published = publish(payload.clone(), without_error.clone()).await;
        if matches!(published, Err(MessagingError::TooLarge(_))) {
            // The host's own headers only: the message's own may be what
            // takes the room (NATS counts headers against its limit).
            let mut dropped: Vec<_> = without_error
                .into_iter()
                .filter(|(name, _)| is_host_header(name))
                .collect();
            dropped.push(("berth-payload-dropped".into(), payload.len().to_string()));
            published = publish(Vec::new(), dropped).await;
            if published.is_ok() {
                tracing::error!(app = %app.manifest.name, %topic, message_id = %id, bytes = payload.len(),
                    "a dead letter was too large for the broker; sent without its payload and headers");
            }
        }
    }
    match published {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(app = %app.manifest.name, topic = %dl_topic, error = %e, "cannot publish to the dead-letter topic");
            false
        }
    }
}

/// A dead letter's headers: the message's own, without any in the host's
/// `berth-` namespace (it was a dead letter itself, or a producer other
/// than a guest set them), then `berth-original-id`,
/// `berth-original-topic`, `berth-attempts` and `berth-error`, each once.
fn dead_letter_headers(
    mut headers: Vec<(String, String)>,
    topic: &str,
    id: &str,
    attempt: u32,
    error: &str,
) -> Vec<(String, String)> {
    headers.retain(|(name, _)| !is_host_header(name));
    headers.push(("berth-original-id".into(), id.into()));
    headers.push(("berth-original-topic".into(), topic.into()));
    headers.push(("berth-attempts".into(), attempt.to_string()));
    headers.push((
        "berth-error".into(),
        error
            .chars()
            .filter(|c| !c.is_control())
            .take(1024)
            .collect(),
    ));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_headers_replace_any_host_headers_already_there() {
        let own = vec![
            ("trace-id".to_string(), "t-1".to_string()),
            ("berth-error".to_string(), "spoofed".to_string()),
            ("BERTH-Attempts".to_string(), "99".to_string()),
            ("berth-original-id".to_string(), "first".to_string()),
            ("Berth-Original-Topic".to_string(), "elsewhere".to_string()),
        ];
        let headers = dead_letter_headers(own, "orders", "m-2", 3, "bad\nnews");
        assert_eq!(
            headers,
            [
                ("trace-id", "t-1"),
                ("berth-original-id", "m-2"),
                ("berth-original-topic", "orders"),
                ("berth-attempts", "3"),
                ("berth-error", "badnews"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        // A dead letter of that dead letter carries each once again.
        let again = dead_letter_headers(headers, "orders.dead-letter", "m-3", 1, "x");
        for name in [
            "berth-original-id",
            "berth-original-topic",
            "berth-attempts",
            "berth-error",
        ] {
            let count = again
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .count();
            assert_eq!(count, 1, "{name} in {again:?}");
        }
        assert_eq!(again[0], ("trace-id".to_string(), "t-1".to_string()));
        let header = |name: &str| {
            again
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("berth-original-id"), Some("m-3"));
        assert_eq!(header("berth-original-topic"), Some("orders.dead-letter"));
    }
}
