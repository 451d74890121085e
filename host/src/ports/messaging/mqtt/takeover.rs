//! Finishing the session of a host that went away.
//!
//! Mosquitto deals a shared subscription's messages to each member's
//! session, and keeps the ones dealt to a member that disconnected in its
//! session until it expires; MQTT 5 lets a broker hand them to another
//! member, and Mosquitto does not. So each trigger client connects with a
//! will, and never sends DISCONNECT (which would discard it): once it goes
//! away (a crash, `kill -9`, a lost machine, or its trigger stopping: a
//! shutdown, or a reload that replaces the app) and does not come back
//! within [`WILL_DELAY`], the broker
//! publishes its client id to the trigger's orphan topic. Every host
//! watches that topic through one share, from a client whose session ends
//! with its connection (a host that is gone is not dealt the will). The
//! host that gets the will resumes the session under that client id, with
//! the same will, unsubscribes the share filters (so nothing new is dealt
//! to it), and hands out what the broker still held for it (sent again,
//! so counted as one more attempt). Once all of it is settled and nothing
//! came for [`QUIET`], it disconnects and discards the session (a clean
//! connect under the same id). Should it die meanwhile, the will it
//! connected with brings the session to another host.
//!
//! A host that comes back under its stable `client_id` while another one
//! finishes its session takes the session back (the broker disconnects the
//! other, which does not reconnect) and gets again what was not settled.

use std::sync::atomic::AtomicUsize;

use super::*;

/// How long a trigger client may be away before its session is taken
/// over: a reconnect within it cancels the will.
pub const WILL_DELAY: Duration = Duration::from_secs(5);
/// A taken-over session is ended once nothing came for this long and all
/// its deliveries were settled.
const QUIET: Duration = Duration::from_secs(2);

/// Whether `client_id` names a client of the trigger of `spec` (on any
/// host): `berth-<app>-<host>-<trigger key>[-<n>]`. Anything else on the
/// orphan topic was not published by a broker's will for this trigger.
pub(super) fn is_client_of(spec: &TriggerSpec, client_id: &str) -> bool {
    let key = trigger_key(&spec.consumer, &spec.topic);
    let Some(rest) = client_id.strip_prefix(&format!("berth-{}-", spec.app)) else {
        return false;
    };
    let names_trigger = rest
        .rsplit_once(&format!("-{key}"))
        .is_some_and(|(host, n)| {
            // A host id is escaped to hold no `-`: with one, `host` would
            // be the rest of a longer app name (`shop-eu`'s clients under
            // `shop`).
            !host.is_empty()
                && !host.contains('-')
                && (n.is_empty()
                    || n.strip_prefix('-')
                        .is_some_and(|n| n.parse::<u32>().is_ok()))
        });
    mqtt_safe(client_id) && names_trigger
}

/// Finishes the session of the trigger's client `dead`, handing what it
/// held out through `out` (the trigger's own deliveries). A session the
/// broker no longer has (its host came back, or another host finished it)
/// needs nothing.
pub(super) async fn finish(
    spec: Arc<TriggerSpec>,
    dead: String,
    out: mpsc::UnboundedSender<Delivery>,
) {
    let (deliveries, inbox) = mpsc::unbounded_channel();
    let role = Role::Trigger {
        session_expiry_secs: spec.session_expiry_secs,
        orphans: orphan_topic(&spec.app, &spec.consumer, &spec.topic),
    };
    let options = mqtt_options(&spec.target, &dead, spec.timeout, role);
    match Link::resume(options, Inbox::Deliveries(deliveries), spec.timeout).await {
        Ok((link, true)) => {
            tracing::info!(client = %dead, "finishing the mqtt session of a host that went away");
            let settled = drain(spec.clone(), link, inbox, &out).await;
            if settled {
                forget(&spec, &dead).await;
            }
        }
        Ok((link, false)) => {
            tracing::debug!(client = %dead, "the mqtt session of a host that went away is gone already");
            // Gone with DISCONNECT, before the clean connect below: else
            // that connect would publish the will this connection carries,
            // and another host would come to finish the session again.
            link.finished();
            link.close().await;
            forget(&spec, &dead).await;
        }
        Err(e) => {
            tracing::warn!(client = %dead, error = %e, "cannot take over the mqtt session of a host that went away; its messages wait in it until it expires");
        }
    }
}

/// Discards the session the broker keeps for client `id`: a clean connect
/// under that id, ended at once.
async fn forget(spec: &TriggerSpec, id: &str) {
    let options = mqtt_options(&spec.target, id, spec.timeout, Role::Forget);
    let (deliveries, _inbox) = mpsc::unbounded_channel();
    if let Err(e) = Link::resume(options, Inbox::Deliveries(deliveries), spec.timeout).await {
        tracing::debug!(client = %id, error = %e, "cannot discard a finished mqtt session; it expires by itself");
    }
}

/// Stops the session's share subscriptions and hands out what the broker
/// held for it until all of it is settled and nothing more comes; then
/// drops the link. Returns whether all of it was settled (the connection
/// may be lost first, the session then keeping the rest).
async fn drain(
    spec: Arc<TriggerSpec>,
    link: Link,
    inbox: mpsc::UnboundedReceiver<Inbound>,
    out: &mpsc::UnboundedSender<Delivery>,
) -> bool {
    // Subscribed first, so that each unsubscribe finds its filter: the
    // session's own client may have unsubscribed them as it stopped, or
    // another host finished part of it, and rumqttc ends the connection
    // on an unsubscribe the broker refuses (no such subscription).
    let filters = spec
        .filters
        .iter()
        .map(|f| Filter::new(f.clone(), QoS::AtLeastOnce));
    if let Err(e) = link.client.subscribe_many(filters).await {
        tracing::debug!(error = %e, "cannot subscribe a taken-over mqtt session");
    }
    for filter in &spec.filters {
        if let Err(e) = link.client.unsubscribe(filter.clone()).await {
            tracing::debug!(error = %e, "cannot unsubscribe a taken-over mqtt session");
        }
    }
    let mut session = MqttSubscription::new(spec, link, inbox, false);
    let tally = Arc::new(Tally::default());
    loop {
        let next = tokio::select! {
            // This host's trigger stopped: the rest stays in the session,
            // and this connection's will (it leaves without DISCONNECT)
            // brings it to another host.
            () = out.closed() => return false,
            next = tokio::time::timeout(QUIET, session.inbox.recv()) => next,
        };
        let inbound = match next {
            Ok(Some(inbound)) => inbound,
            // The connection is gone: what was not settled stays in the
            // session for whoever resumes it.
            Ok(None) => return false,
            // Quiet, and every delivery settled with the broker told:
            // closed with DISCONNECT (its will discarded) before the
            // caller's clean connect under its id. (`abandoned` is read
            // after the count: a delivery marks it before it counts itself
            // settled.)
            Err(_)
                if tally.unsettled.load(Ordering::SeqCst) == 0
                    && !tally.abandoned.load(Ordering::SeqCst) =>
            {
                let link = session.link.clone();
                link.finished();
                drop(session);
                link.close().await;
                return true;
            }
            // A delivery dropped unsettled (its handler cancelled, or the
            // trigger's queue dropped), or one the broker was not told of:
            // its message waits in the session, for the will.
            Err(_) if tally.abandoned.load(Ordering::SeqCst) => return false,
            Err(_) => continue,
        };
        let Inbound { publish, epoch, .. } = inbound;
        let Some(Received::Stored(topic)) = session.received(&publish.topic) else {
            // Requests are never stored; anything else is not the
            // trigger's.
            session.ack_now(&publish, epoch).await;
            continue;
        };
        let (message, acker) = session.stored_parts(publish, epoch, topic);
        tally.unsettled.fetch_add(1, Ordering::SeqCst);
        let acker = Counted {
            inner: Some(Box::new(acker)),
            tally: tally.clone(),
        };
        let delivery = Delivery {
            message,
            reply: None,
            acker: Box::new(acker),
        };
        if out.send(delivery).is_err() {
            // This host's trigger stopped: the rest stays in the session,
            // and this connection's will brings it to another host.
            return false;
        }
    }
}

/// The deliveries of a taken-over session not yet settled, and whether one
/// was dropped unsettled.
#[derive(Default)]
struct Tally {
    unsettled: AtomicUsize,
    abandoned: std::sync::atomic::AtomicBool,
}

impl Tally {
    /// One delivery less to wait for; one the broker was not told of
    /// (its ack or its retry's copy failed) stays in the session, which
    /// must then be left for the will rather than ended and forgotten.
    fn count_settled(&self, settled: bool) {
        if !settled {
            self.abandoned.store(true, Ordering::SeqCst);
        }
        self.unsettled.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Settles a delivery of a taken-over session and counts it settled once
/// the broker was told (after a retry's copy, for a failure); dropped
/// unsettled, it marks the session abandoned.
struct Counted {
    /// `None` once settling began.
    inner: Option<Box<MqttAcker>>,
    tally: Arc<Tally>,
}

#[async_trait]
impl Acker for Counted {
    async fn ack(mut self: Box<Self>) {
        if let Some(inner) = self.inner.take() {
            let settled = inner.settle().await;
            self.tally.count_settled(settled);
        }
    }

    async fn nack(mut self: Box<Self>, delay: Duration) {
        let (inner, tally) = (self.inner.take(), self.tally.clone());
        tokio::spawn(async move {
            if let Some(inner) = inner {
                tally.count_settled(inner.retry_after(delay).await);
            }
        });
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if self.inner.is_some() {
            self.tally.abandoned.store(true, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TriggerSpec {
        TriggerSpec {
            target: parse_url("mqtt://127.0.0.1:1883").unwrap(),
            app: "shop".into(),
            consumer: "handler".into(),
            topic: "orders".into(),
            client_id: "berth-shop-h1-x".into(),
            filters: Vec::new(),
            timeout: Duration::from_secs(1),
            session_expiry_secs: 60,
        }
    }

    #[test]
    fn only_the_triggers_own_clients_are_taken_over() {
        let spec = spec();
        let key = trigger_key("handler", "orders");
        for ok in [
            format!("berth-shop-a1b2c3-{key}"),
            format!("berth-shop-pod_d7-{key}-2"),
        ] {
            assert!(is_client_of(&spec, &ok), "{ok}");
        }
        let other = trigger_key("handler", "payments");
        for bad in [
            format!("berth-other-a1b2c3-{key}"),
            format!("berth-shop-a1b2c3-{other}"),
            format!("berth-shop--{key}"),
            // App `shop-eu`'s client: host ids hold no `-`.
            format!("berth-shop-eu-a1b2c3-{key}"),
            format!("berth-shop-a1b2c3-{key}-x"),
            format!("berth-shop-a/b-{key}"),
            "berth-shop".to_string(),
            String::new(),
        ] {
            assert!(!is_client_of(&spec, &bad), "{bad}");
        }
    }
}
