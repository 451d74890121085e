//! MQTT 5 adapter (`rumqttc::v5`), for brokers such as Mosquitto 2.
//!
//! - A topic `t` of app `<app>` is the MQTT topic `berth/<app>/msg/<t>`;
//!   requests to it go to `berth/<app>/req/<t>`. Topics and consumer names
//!   holding `/`, `+` or `#` are refused, so nothing names an MQTT topic
//!   outside its app's subtree.
//! - Every publish is QoS 1 and returns once the broker's PUBACK for it
//!   came. The Berth id travels as the user property `berth-id`, each
//!   header as a user property, and the attempt of a republished message
//!   as `berth-attempt`.
//! - Each message trigger gets its own MQTT client and session, subscribed
//!   to the shared subscription `$share/berth-<app>-<consumer>/berth/<app>/msg/<t>`
//!   at QoS 1: the broker hands each message to one of the app's hosts.
//!   Acks are manual, so a message is PUBACKed only once its handler
//!   succeeded. The session (clean start off, expiry [`SESSION_EXPIRY`])
//!   keeps what the broker queued for a host over a short disconnect, and
//!   the broker sends unacknowledged messages again (DUP set, counted as
//!   one more attempt) when the client comes back.
//! - MQTT (3.1.1 and 5) has no negative acknowledgement. So `nack` waits
//!   for the backoff, publishes a copy with `berth-attempt` incremented
//!   (and waits for its PUBACK), then acknowledges the original. The copy
//!   may go to another host of the share. A host that dies before that
//!   leaves the original unacknowledged in its session.
//! - Request/reply is MQTT 5's: the request carries the response topic
//!   `berth/<app>/reply/<client id>`, which the publishing client
//!   subscribes to at connect, and a fresh correlation id. Triggers take
//!   requests through `$share/berth-<app>-<consumer>-req/berth/<app>/req/<t>`
//!   at QoS 0, so requests are never stored. Plain MQTT cannot tell that
//!   nobody listens. But a broker may answer the request's PUBACK with "no
//!   matching subscribers" (Mosquitto does), and that becomes
//!   `no-responder`. On a broker that does not, a request nobody consumes
//!   ends in `timeout`.
//!
//! Limits compared with the NATS and RabbitMQ adapters:
//! - The broker keeps nothing for topics nobody subscribes to: a message
//!   published before any trigger subscribed to its topic is dropped. Its
//!   PUBACK says so, and the drop is logged at debug.
//! - There is no deduplication by id: a schedule tick published by N hosts
//!   is delivered N times, each time under the same id.
//! - Mosquitto deals out a share's messages round-robin, disconnected
//!   sessions included. Messages dealt to a host that died wait in its
//!   session until [`SESSION_EXPIRY`] and are then lost: MQTT 5 lets a
//!   broker pass them to another member, and Mosquitto does not. A
//!   subscription that is dropped unsubscribes first, so a host that stops
//!   cleanly is no longer dealt messages.
//! - A publish that ends in `unavailable` (no PUBACK in time) may still
//!   reach the broker later, because the client retransmits it when it
//!   reconnects. Delivery is at least once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnectProperties, Filter, Packet, PubAckReason, Publish, PublishProperties,
};
use rumqttc::v5::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Request, StateError,
};
use tokio::sync::{mpsc, oneshot};

use super::{Acker, Delivery, Message, MessagingBackend, MessagingError, NoAck, Subscription};
use crate::secret::Secret;

/// The port of `mqtt://host` URLs without one.
pub const DEFAULT_PORT: u16 = 1883;
/// How long the broker keeps a trigger's session (its subscription, queued
/// and unacknowledged messages) after the connection drops. It covers
/// reconnects of a running host. A dead host never comes back, because
/// every host process has its own client ids, so a longer expiry only
/// strands more of the messages dealt to it (see the module docs).
pub const SESSION_EXPIRY: Duration = Duration::from_secs(SESSION_EXPIRY_SECS as u64);
const SESSION_EXPIRY_SECS: u32 = 60;
/// User property carrying Berth's message id.
const ID_PROPERTY: &str = "berth-id";
/// User property carrying the delivery attempt of a republished message.
const ATTEMPT_PROPERTY: &str = "berth-attempt";
/// Unacknowledged messages the broker sends each trigger's client at once
/// (the MQTT 5 receive maximum, like RabbitMQ's prefetch).
const RECEIVE_MAXIMUM: u16 = 32;
/// MQTT's largest packet. Without it rumqttc refuses incoming packets over
/// 10 KiB: it drops the connection, the broker redelivers, and the client
/// reconnects forever. The host's own limits bound payloads.
const MAX_PACKET_SIZE: u32 = 268_435_455;
/// Outgoing QoS 1 publishes in flight per client. rumqttc allocates a slot
/// per packet id up to this bound (65535 slots by default).
const PUBLISHER_INFLIGHT: u16 = 256;
/// Triggers' clients only publish replies and republished copies.
const TRIGGER_INFLIGHT: u16 = 16;
/// Requests queued between an `AsyncClient` and its event loop.
const REQUEST_CAPACITY: usize = 64;
/// Keep-alive ping interval: a dead connection is noticed within about
/// twice this.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Pause between reconnect attempts.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// How long a stopping client may take to send its DISCONNECT.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Settings of an app's MQTT broker.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// `mqtt://[user[:password]@]host[:port]`. The port defaults to
    /// [`DEFAULT_PORT`], and the user and password are percent-decoded.
    /// The password must be a reference.
    pub url: Secret,
    /// The app, naming the MQTT topic subtree.
    pub app: String,
    /// The timeout for connecting (CONNACK and SUBACK) and for a PUBACK.
    pub timeout: Duration,
    /// This host process's MQTT client id, unique per process (generated at
    /// startup, say), without `/`, `+` or `#`. Triggers' clients add a
    /// suffix to it.
    pub client_id: String,
}

/// An app's broker on MQTT 5.
pub struct MqttBroker {
    /// The client that publishes and receives replies.
    link: Link,
    /// Requests waiting for their reply, by correlation data.
    replies: Replies,
    /// `berth/<app>/reply/<client id>`.
    reply_topic: String,
    target: Target,
    app: String,
    client_id: String,
    timeout: Duration,
    /// Numbers the triggers' client ids.
    subscriptions: AtomicU64,
}

fn unavailable(e: impl std::fmt::Display) -> MessagingError {
    tracing::debug!(error = %e, "mqtt failure");
    MessagingError::Unavailable("the broker cannot be reached".into())
}

/// Locks `m`. A panic elsewhere must not also stop the event loops.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MqttBroker {
    /// Connects, subscribes to this host's reply topic, and waits (at most
    /// `s.timeout`) for both to be acknowledged, so a broker that is down
    /// is an error at startup.
    pub async fn connect(s: &MqttSettings) -> Result<MqttBroker, MessagingError> {
        let target = parse_url(s.url.expose())?;
        if !mqtt_safe(&s.client_id) || !mqtt_safe(&s.app) {
            return Err(MessagingError::InvalidInput(
                "the MQTT client id and the app name must be non-empty, without `/`, `+`, `#`"
                    .into(),
            ));
        }
        let reply_topic = reply_topic(&s.app, &s.client_id);
        let replies = Replies::default();
        let link = Link::connect(
            mqtt_options(&target, &s.client_id, s.timeout, Role::Publisher),
            vec![Filter::new(reply_topic.clone(), QoS::AtLeastOnce)],
            Inbox::Replies(replies.clone()),
            s.timeout,
        )
        .await?;
        Ok(MqttBroker {
            link,
            replies,
            reply_topic,
            target,
            app: s.app.clone(),
            client_id: s.client_id.clone(),
            timeout: s.timeout,
            subscriptions: AtomicU64::new(0),
        })
    }
}

/// Where to connect and as whom, from the settings' URL.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// A name or an address, IPv6 in brackets.
    host: String,
    port: u16,
    /// The user and the password. The password is a [`Secret`], so `Debug`
    /// never shows it.
    credentials: Option<(String, Secret)>,
}

/// Parses `mqtt://[user[:password]@]host[:port][/]`. Errors never repeat
/// the URL, because it may hold a password.
fn parse_url(url: &str) -> Result<Target, MessagingError> {
    let bad = || {
        MessagingError::InvalidInput(
            "the MQTT URL must be mqtt://[user[:password]@]host[:port]".into(),
        )
    };
    let rest = url.strip_prefix("mqtt://").ok_or_else(bad)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (userinfo, authority) = match rest.rsplit_once('@') {
        Some((userinfo, authority)) => (Some(userinfo), authority),
        None => (None, rest),
    };
    if authority.contains(['/', '?', '#']) {
        return Err(bad());
    }
    let (host, port) = match authority.strip_prefix('[') {
        // IPv6 keeps its brackets: rumqttc resolves `host:port`.
        Some(v6) => {
            let (address, after) = v6.split_once(']').ok_or_else(bad)?;
            if address.is_empty() {
                return Err(bad());
            }
            let port = match after {
                "" => None,
                after => Some(after.strip_prefix(':').ok_or_else(bad)?),
            };
            (format!("[{address}]"), port)
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (authority.to_string(), None),
        },
    };
    if host.is_empty() {
        return Err(bad());
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(bad)?,
    };
    let credentials = match userinfo {
        None | Some("") => None,
        Some(userinfo) => {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            let user = percent_decode(user).ok_or_else(bad)?;
            if user.is_empty() {
                return Err(bad());
            }
            let password = percent_decode(password).ok_or_else(bad)?;
            Some((user, Secret::new(password)))
        }
    };
    Ok(Target {
        host,
        port,
        credentials,
    })
}

/// Decodes `%XX` escapes. Returns `None` for a broken escape or for a
/// result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Whether `s` can be one MQTT topic level or a share name.
fn mqtt_safe(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '+', '#', '\0'])
}

fn check_topic(topic: &str) -> Result<(), MessagingError> {
    if mqtt_safe(topic) {
        Ok(())
    } else {
        Err(MessagingError::InvalidInput(format!(
            "topic {topic:?} cannot be an MQTT topic level"
        )))
    }
}

/// `berth/<app>/msg/<topic>`: where the messages of `topic` go.
fn message_topic(app: &str, topic: &str) -> String {
    format!("berth/{app}/msg/{topic}")
}

/// `berth/<app>/req/<topic>`: where requests to `topic` go.
fn request_topic(app: &str, topic: &str) -> String {
    format!("berth/{app}/req/{topic}")
}

/// `berth/<app>/reply/<client id>`: where one host's replies come back.
fn reply_topic(app: &str, client_id: &str) -> String {
    format!("berth/{app}/reply/{client_id}")
}

/// The shared subscription through which the hosts of an app divide the
/// messages of `topic` for trigger `consumer`.
fn shared_filter(app: &str, consumer: &str, topic: &str) -> String {
    format!(
        "$share/berth-{app}-{consumer}/{}",
        message_topic(app, topic)
    )
}

/// The shared subscription through which the hosts of an app divide the
/// requests to `topic` for trigger `consumer`.
fn shared_request_filter(app: &str, consumer: &str, topic: &str) -> String {
    format!(
        "$share/berth-{app}-{consumer}-req/{}",
        request_topic(app, topic)
    )
}

/// The user properties carrying `id`, `headers` and, past the first, the
/// attempt. Headers named like Berth's own properties are left out, because
/// the host's values win.
fn publish_properties(id: &str, headers: &[(String, String)], attempt: u32) -> PublishProperties {
    let mut user_properties: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| name != ID_PROPERTY && name != ATTEMPT_PROPERTY)
        .cloned()
        .collect();
    user_properties.push((ID_PROPERTY.to_string(), id.to_string()));
    if attempt > 1 {
        user_properties.push((ATTEMPT_PROPERTY.to_string(), attempt.to_string()));
    }
    PublishProperties {
        user_properties,
        ..Default::default()
    }
}

/// The Berth id, the headers (sorted, without Berth's own properties) and
/// the attempt recorded in a message's user properties.
fn metadata(
    properties: Option<&PublishProperties>,
) -> (Option<String>, Vec<(String, String)>, u32) {
    let mut id = None;
    let mut attempt = 1;
    let mut headers = Vec::new();
    let user_properties = properties.map(|p| p.user_properties.as_slice());
    for (name, value) in user_properties.unwrap_or_default() {
        match name.as_str() {
            ID_PROPERTY => id = Some(value.clone()),
            ATTEMPT_PROPERTY => attempt = value.parse::<u32>().map_or(1, |n| n.max(1)),
            _ => headers.push((name.clone(), value.clone())),
        }
    }
    headers.sort();
    (id, headers, attempt)
}

/// What a client is for.
#[derive(Clone, Copy)]
enum Role {
    /// Publishes and receives replies. It has a clean session, because
    /// nothing it receives needs to outlive a connection.
    Publisher,
    /// Consumes one trigger's messages and requests. It has a persistent
    /// session and manual acks.
    Trigger,
}

/// The options of one client. Never `Debug`-print them: rumqttc's `Debug`
/// shows the password.
fn mqtt_options(target: &Target, client_id: &str, timeout: Duration, role: Role) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, target.host.as_str(), target.port);
    options.set_keep_alive(KEEP_ALIVE);
    // Whole seconds in rumqttc, where 0 would time out at once.
    options.set_connection_timeout(timeout.as_secs().max(1));
    if let Some((user, password)) = &target.credentials {
        options.set_credentials(user.as_str(), password.expose());
    }
    let mut properties = ConnectProperties::new();
    properties.max_packet_size = Some(MAX_PACKET_SIZE);
    match role {
        Role::Publisher => {
            options.set_clean_start(true);
            options.set_outgoing_inflight_upper_limit(PUBLISHER_INFLIGHT);
        }
        Role::Trigger => {
            options.set_clean_start(false);
            options.set_manual_acks(true);
            options.set_outgoing_inflight_upper_limit(TRIGGER_INFLIGHT);
            properties.session_expiry_interval = Some(SESSION_EXPIRY_SECS);
            properties.receive_maximum = Some(RECEIVE_MAXIMUM);
        }
    }
    options.set_connect_properties(properties);
    options
}

/// Told the broker's PUBACK reason for one publish, or why none came.
type Waiter = oneshot::Sender<Result<PubAckReason, MessagingError>>;

/// Requests waiting for their reply, by correlation data.
type Replies = Arc<Mutex<HashMap<Bytes, oneshot::Sender<Publish>>>>;

/// Matches PUBACKs to the publishes waiting for them.
///
/// `AsyncClient::publish` only queues a request. The event loop assigns the
/// packet id when it sends the publish, and reports it as
/// `Outgoing::Publish(pkid)` in sending order. So waiters queue up in the
/// order their publishes went into the client (one task sends them all),
/// the oldest takes the next packet id sent, and the PUBACK with that id
/// settles it.
#[derive(Default)]
struct Acks {
    /// In the order of the client's publish requests, not yet given an id.
    queued: VecDeque<Waiter>,
    /// By packet id. There are two waiters under one id only in the moment
    /// after rumqttc resolved a packet id collision: it reports the new
    /// publish before the PUBACK of the old one.
    inflight: HashMap<u16, VecDeque<Waiter>>,
    /// The ids of the publishes rumqttc sends again after a reconnect.
    /// Their waiters are already filed under these ids.
    resent: HashSet<u16>,
}

impl Acks {
    /// A publish request is about to go into the client.
    fn enqueue(&mut self, waiter: Waiter) {
        self.queued.push_back(waiter);
    }

    /// The last publish request never reached the client.
    fn withdraw_last(&mut self) -> Option<Waiter> {
        self.queued.pop_back()
    }

    /// The oldest publish request the event loop took but dropped unsent.
    fn unsent(&mut self) -> Option<Waiter> {
        self.queued.pop_front()
    }

    /// The event loop sent a publish with packet id `pkid`.
    fn sent(&mut self, pkid: u16) {
        // 0 is QoS 0, which this adapter never publishes.
        if pkid == 0 || self.resent.remove(&pkid) {
            return;
        }
        match self.queued.pop_front() {
            Some(waiter) => self.inflight.entry(pkid).or_default().push_back(waiter),
            None => tracing::debug!(pkid, "an mqtt publish nobody waits for"),
        }
    }

    /// The broker acknowledged packet id `pkid`.
    fn acked(&mut self, pkid: u16) -> Option<Waiter> {
        self.resent.remove(&pkid);
        let waiters = self.inflight.get_mut(&pkid)?;
        let waiter = waiters.pop_front();
        if waiters.is_empty() {
            self.inflight.remove(&pkid);
        }
        waiter
    }

    /// The client connected again and will send `resent` again. rumqttc
    /// reports a refused PUBACK only as a connection error, and drops the
    /// publish without naming its id. So a waiter filed under an id that is
    /// neither acknowledged (those PUBACKs come before the CONNACK) nor
    /// resent belongs to a publish the broker refused. Its waiter is
    /// returned.
    fn reconnected(&mut self, resent: HashSet<u16>) -> Vec<Waiter> {
        let refused: Vec<u16> = self
            .inflight
            .keys()
            .copied()
            .filter(|pkid| !resent.contains(pkid))
            .collect();
        self.resent = resent;
        refused
            .into_iter()
            .flat_map(|pkid| self.inflight.remove(&pkid).unwrap_or_default())
            .collect()
    }
}

/// The packet ids of the publishes an event loop will send again, read
/// while the CONNACK event is handed out (before it sends them).
fn resent(pending: &VecDeque<Request>) -> HashSet<u16> {
    pending
        .iter()
        .filter_map(|request| match request {
            Request::Publish(p) if p.pkid != 0 => Some(p.pkid),
            _ => None,
        })
        .collect()
}

/// State a client's tasks share.
#[derive(Default)]
struct Shared {
    acks: Mutex<Acks>,
    /// Counts CONNACKs. A delivery is acknowledged only on the connection
    /// it came on, because after a reconnect the broker sends it again
    /// under the same packet id, and that copy is acknowledged in its turn.
    epoch: AtomicU64,
    /// The broker's maximum packet size (0: none announced).
    max_packet: AtomicU32,
}

/// A publish for the sending task.
struct Job {
    topic: String,
    payload: Bytes,
    properties: PublishProperties,
    done: Waiter,
}

/// Where a client's incoming publishes go.
enum Inbox {
    /// A trigger's client: to its subscription.
    Deliveries(mpsc::UnboundedSender<Inbound>),
    /// The publishing client: to the request whose correlation data the
    /// reply carries.
    Replies(Replies),
}

/// An incoming publish and the connection it came on.
struct Inbound {
    publish: Publish,
    epoch: u64,
}

/// One MQTT client and its two tasks. One task drives the event loop and
/// one sends the publishes. Both stop (after a DISCONNECT) once the last
/// clone is dropped.
#[derive(Clone)]
struct Link {
    client: AsyncClient,
    jobs: mpsc::Sender<Job>,
    shared: Arc<Shared>,
    /// Dropped with the last clone, which tells the event loop to stop.
    _stop: Arc<oneshot::Sender<()>>,
}

impl Link {
    /// Starts a client subscribed to `filters`, and waits (at most
    /// `timeout`) for its CONNACK and SUBACK.
    async fn connect(
        options: MqttOptions,
        filters: Vec<Filter>,
        inbox: Inbox,
        timeout: Duration,
    ) -> Result<Link, MessagingError> {
        let name = options.client_id();
        let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let shared = Arc::new(Shared::default());
        let (stop_tx, stop) = oneshot::channel();
        let (ready_tx, ready) = oneshot::channel();
        let (jobs, jobs_rx) = mpsc::channel(MAX_QUEUED_PUBLISHES);
        let driver = Driver {
            eventloop,
            client: client.clone(),
            shared: shared.clone(),
            filters,
            inbox,
            ready: Some(ready_tx),
            stop,
            name,
            first: true,
            up: false,
        };
        tokio::spawn(driver.run());
        tokio::spawn(send_publishes(client.clone(), shared.clone(), jobs_rx));
        let link = Link {
            client,
            jobs,
            shared,
            _stop: Arc::new(stop_tx),
        };
        // On failure `link` is dropped here, which stops the tasks.
        match tokio::time::timeout(timeout, ready).await {
            Ok(Ok(Ok(()))) => Ok(link),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(unavailable("the mqtt event loop stopped")),
            Err(_) => Err(unavailable("no connack or suback before the timeout")),
        }
    }

    /// Publishes at QoS 1 and waits (at most `wait`) for the PUBACK. Returns
    /// its reason, which is success or "no matching subscribers".
    async fn publish(
        &self,
        topic: String,
        payload: Bytes,
        properties: PublishProperties,
        wait: Duration,
    ) -> Result<PubAckReason, MessagingError> {
        let (done, acked) = oneshot::channel();
        // Bounded: while the broker is away, publishers are told so at once
        // rather than piling payloads up in memory.
        self.jobs
            .try_send(Job {
                topic,
                payload,
                properties,
                done,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    unavailable("too many publishes waiting for the broker")
                }
                mpsc::error::TrySendError::Closed(_) => unavailable("the mqtt client stopped"),
            })?;
        // Giving up here leaves the waiter in place: the accounting stays
        // in step with the event loop, and the late PUBACK finds nobody.
        match tokio::time::timeout(wait, acked).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(unavailable("the mqtt client stopped")),
            Err(_) => Err(unavailable("no puback before the timeout")),
        }
    }

    /// The connection the client is on.
    fn epoch(&self) -> u64 {
        self.shared.epoch.load(Ordering::SeqCst)
    }
}

/// Publishes queued per client before publishers get `unavailable`.
const MAX_QUEUED_PUBLISHES: usize = 1024;

/// Sends a client's publishes one at a time, so the order of its waiters is
/// the order of its requests. This is a task rather than a lock held by
/// each publisher: a publisher whose future is dropped between queuing its
/// waiter and sending its request would leave a waiter with no publish,
/// and every later PUBACK would then settle the wrong waiter.
async fn send_publishes(client: AsyncClient, shared: Arc<Shared>, mut jobs: mpsc::Receiver<Job>) {
    while let Some(job) = jobs.recv().await {
        // Its publisher gave up (and was told it failed): sending it now
        // would deliver a message reported as not sent.
        if job.done.is_closed() {
            continue;
        }
        // rumqttc drops a packet over the broker's maximum and then
        // reconnects, so a packet that is too large is refused here first.
        let max = shared.max_packet.load(Ordering::Relaxed) as usize;
        if max > 0 {
            let probe = Publish::new(
                job.topic.as_str(),
                QoS::AtLeastOnce,
                job.payload.clone(),
                Some(job.properties.clone()),
            );
            // + 2 for the packet id, which is assigned later.
            let size = probe.size() + 2;
            if size > max {
                let _ = job.done.send(Err(MessagingError::TooLarge(format!(
                    "the message is {size} bytes; the broker takes at most {max}"
                ))));
                continue;
            }
        }
        lock(&shared.acks).enqueue(job.done);
        let sent = client
            .publish_bytes_with_properties(
                job.topic,
                QoS::AtLeastOnce,
                false,
                job.payload,
                job.properties,
            )
            .await;
        if let Err(e) = sent {
            let waiter = lock(&shared.acks).withdraw_last();
            if let Some(waiter) = waiter {
                let _ = waiter.send(Err(unavailable(e)));
            }
        }
    }
}

/// Drives one client's event loop: it reconnects, resubscribes, settles
/// publishes and hands out what comes in. It never waits on the client's
/// request channel (it is that channel's only reader), so it uses
/// `try_*` calls or spawns.
struct Driver {
    eventloop: EventLoop,
    client: AsyncClient,
    shared: Arc<Shared>,
    filters: Vec<Filter>,
    inbox: Inbox,
    /// Told the outcome of the first connect and subscribe.
    ready: Option<oneshot::Sender<Result<(), MessagingError>>>,
    stop: oneshot::Receiver<()>,
    /// The client id, for logs.
    name: String,
    first: bool,
    /// Connected, as far as logs go: a lost connection is logged once.
    up: bool,
}

impl Driver {
    async fn run(mut self) {
        loop {
            let polled = tokio::select! {
                biased;
                _ = &mut self.stop => None,
                event = self.eventloop.poll() => Some(event),
            };
            let Some(event) = polled else { break };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => self.connected(&ack),
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    // A refused filter arrives as an error, not as a SUBACK.
                    if let Some(ready) = self.ready.take() {
                        let _ = ready.send(Ok(()));
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    let waiter = lock(&self.shared.acks).acked(ack.pkid);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(Ok(ack.reason));
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => self.received(publish),
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    lock(&self.shared.acks).sent(pkid);
                }
                Ok(_) => {}
                Err(e) => {
                    if let Some(ready) = self.ready.take() {
                        let _ = ready.send(Err(unavailable(&e)));
                        return;
                    }
                    self.failed(&e);
                    // The next poll reconnects.
                    let stopped = tokio::select! {
                        biased;
                        _ = &mut self.stop => true,
                        () = tokio::time::sleep(RECONNECT_DELAY) => false,
                    };
                    if stopped {
                        break;
                    }
                }
            }
        }
        self.shutdown().await;
    }

    fn connected(&mut self, ack: &ConnAck) {
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        let max = ack
            .properties
            .as_ref()
            .and_then(|p| p.max_packet_size)
            .unwrap_or(0);
        self.shared.max_packet.store(max, Ordering::Relaxed);
        let refused = lock(&self.shared.acks).reconnected(resent(&self.eventloop.pending));
        for waiter in refused {
            let _ = waiter.send(Err(MessagingError::Unavailable(
                "the broker refused the message".into(),
            )));
        }
        if !self.first && !self.up {
            tracing::info!(client = %self.name, "mqtt connection restored");
        }
        self.up = true;
        // rumqttc does not subscribe again by itself. A session the broker
        // still had kept its subscriptions; a new one has none.
        if self.first || !ack.session_present {
            self.first = false;
            let (client, filters) = (self.client.clone(), self.filters.clone());
            tokio::spawn(async move {
                if let Err(e) = client.subscribe_many(filters).await {
                    tracing::debug!(error = %e, "cannot subscribe");
                }
            });
        }
    }

    fn failed(&mut self, e: &ConnectionError) {
        if let ConnectionError::MqttState(StateError::OutgoingPacketTooLarge { pkt_size, max }) = e
        {
            // rumqttc dropped the oldest request it had not yet sent. All
            // earlier ones were reported as sent.
            let waiter = lock(&self.shared.acks).unsent();
            if let Some(waiter) = waiter {
                let _ = waiter.send(Err(MessagingError::TooLarge(format!(
                    "the message is {pkt_size} bytes; the broker takes at most {max}"
                ))));
            }
        }
        if self.up {
            self.up = false;
            tracing::warn!(client = %self.name, error = %e, "mqtt connection lost; reconnecting");
        } else {
            tracing::debug!(client = %self.name, error = %e, "mqtt reconnect failed");
        }
    }

    fn received(&self, publish: Publish) {
        match &self.inbox {
            Inbox::Deliveries(deliveries) => {
                let epoch = self.shared.epoch.load(Ordering::SeqCst);
                // Nobody to take it once the subscription is gone. The
                // message stays unacknowledged in the session.
                let _ = deliveries.send(Inbound { publish, epoch });
            }
            Inbox::Replies(replies) => {
                let correlation = publish
                    .properties
                    .as_ref()
                    .and_then(|p| p.correlation_data.clone());
                let waiter = correlation.and_then(|c| lock(replies).remove(&c));
                match waiter {
                    Some(waiter) => {
                        let _ = waiter.send(publish);
                    }
                    None => tracing::debug!("an mqtt reply nobody waits for (late or unknown)"),
                }
            }
        }
    }

    /// Sends DISCONNECT, so the broker does not wait for the keep-alive.
    async fn shutdown(mut self) {
        let _ = self.client.try_disconnect();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            loop {
                match self.eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

/// Removes a request's reply waiter however the request ends.
struct PendingReply<'a> {
    replies: &'a Replies,
    correlation: Bytes,
}

impl<'a> PendingReply<'a> {
    fn register(
        replies: &'a Replies,
        correlation: Bytes,
        waiter: oneshot::Sender<Publish>,
    ) -> PendingReply<'a> {
        lock(replies).insert(correlation.clone(), waiter);
        PendingReply {
            replies,
            correlation,
        }
    }
}

impl Drop for PendingReply<'_> {
    fn drop(&mut self) {
        lock(self.replies).remove(&self.correlation);
    }
}

impl MqttBroker {
    /// Publishes a request and waits for its reply (the caller bounds the
    /// wait). A PUBACK saying nobody subscribes means no responder.
    async fn exchange(
        &self,
        topic: &str,
        payload: Bytes,
        properties: PublishProperties,
        reply: oneshot::Receiver<Publish>,
    ) -> Result<Publish, MessagingError> {
        let reason = self
            .link
            .publish(
                request_topic(&self.app, topic),
                payload,
                properties,
                self.timeout,
            )
            .await?;
        if reason == PubAckReason::NoMatchingSubscribers {
            return Err(MessagingError::NoResponder);
        }
        reply
            .await
            .map_err(|_| MessagingError::Unavailable("the reply channel closed".into()))
    }
}

#[async_trait]
impl MessagingBackend for MqttBroker {
    async fn publish_with_id(
        &self,
        topic: &str,
        id: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> Result<(), MessagingError> {
        check_topic(topic)?;
        let reason = self
            .link
            .publish(
                message_topic(&self.app, topic),
                Bytes::from(payload),
                publish_properties(id, &headers, 1),
                self.timeout,
            )
            .await?;
        if reason == PubAckReason::NoMatchingSubscribers {
            tracing::debug!(
                topic,
                id,
                "no trigger subscribes to this topic: the broker dropped the message"
            );
        }
        Ok(())
    }

    async fn request(
        &self,
        topic: &str,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<Message, MessagingError> {
        check_topic(topic)?;
        let id = uuid::Uuid::new_v4().to_string();
        let correlation = Bytes::from(uuid::Uuid::new_v4().to_string());
        let (reply_tx, reply_rx) = oneshot::channel();
        let _pending = PendingReply::register(&self.replies, correlation.clone(), reply_tx);
        let mut properties = publish_properties(&id, &headers, 1);
        properties.response_topic = Some(self.reply_topic.clone());
        properties.correlation_data = Some(correlation);
        let exchange = self.exchange(topic, Bytes::from(payload), properties, reply_rx);
        let reply = match tokio::time::timeout(timeout, exchange).await {
            Err(_) => return Err(MessagingError::Timeout),
            Ok(reply) => reply?,
        };
        let (id, headers, _) = metadata(reply.properties.as_ref());
        Ok(Message {
            id: id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            topic: topic.to_string(),
            payload: reply.payload.to_vec(),
            headers,
            attempt: 1,
        })
    }

    async fn subscribe(
        &self,
        topic: &str,
        consumer: &str,
    ) -> Result<Box<dyn Subscription>, MessagingError> {
        check_topic(topic)?;
        if !mqtt_safe(consumer) {
            return Err(MessagingError::InvalidInput(format!(
                "consumer {consumer:?} cannot name an MQTT shared subscription"
            )));
        }
        // Its own client id, so its session is its own. It is stable
        // within this process, so a reconnect finds the session again.
        let n = self.subscriptions.fetch_add(1, Ordering::Relaxed);
        let client_id = format!("{}-s{n}", self.client_id);
        let filters = vec![
            Filter::new(shared_filter(&self.app, consumer, topic), QoS::AtLeastOnce),
            // Requests at QoS 0: the broker neither stores them nor waits
            // for acks, so they never queue behind stored messages.
            Filter::new(
                shared_request_filter(&self.app, consumer, topic),
                QoS::AtMostOnce,
            ),
        ];
        let paths = filters.iter().map(|f| f.path.clone()).collect();
        let (deliveries, inbox) = mpsc::unbounded_channel();
        let link = Link::connect(
            mqtt_options(&self.target, &client_id, self.timeout, Role::Trigger),
            filters,
            Inbox::Deliveries(deliveries),
            self.timeout,
        )
        .await?;
        Ok(Box::new(MqttSubscription {
            link,
            inbox,
            topic: topic.to_string(),
            message_topic: message_topic(&self.app, topic),
            request_topic: request_topic(&self.app, topic),
            reply_prefix: format!("berth/{}/reply/", self.app),
            filters: paths,
            timeout: self.timeout,
        }))
    }
}

/// A trigger's deliveries: its stored messages and its requests, both from
/// its own client.
struct MqttSubscription {
    link: Link,
    inbox: mpsc::UnboundedReceiver<Inbound>,
    topic: String,
    /// `berth/<app>/msg/<topic>`, where failed messages are republished.
    message_topic: String,
    /// `berth/<app>/req/<topic>`, which tells requests apart.
    request_topic: String,
    /// The app's reply topics. Replies go nowhere else, whatever a request
    /// names.
    reply_prefix: String,
    /// The subscribed filters, to unsubscribe when dropped.
    filters: Vec<String>,
    timeout: Duration,
}

#[async_trait]
impl Subscription for MqttSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            let Inbound { publish, epoch } = self.inbox.recv().await?;
            if &publish.topic[..] == self.request_topic.as_bytes() {
                // Requests are not stored, so there is nothing to hold
                // back. They come at QoS 0, where this does nothing.
                if publish.qos != QoS::AtMostOnce {
                    let _ = self.link.client.ack(&publish).await;
                }
                if let Some(delivery) = self.request(publish) {
                    return Some(delivery);
                }
            } else {
                return Some(self.stored(publish, epoch));
            }
        }
    }
}

impl Drop for MqttSubscription {
    fn drop(&mut self) {
        // The session outlives the connection. Without this, the broker
        // would keep dealing this host a share of the messages until the
        // session expires, and they would be lost.
        for filter in &self.filters {
            let _ = self.link.client.try_unsubscribe(filter.clone());
        }
    }
}

impl MqttSubscription {
    fn stored(&self, publish: Publish, epoch: u64) -> Delivery {
        let (id, headers, attempt) = metadata(publish.properties.as_ref());
        // A message sent again by the broker (after a reconnect) is at
        // least one more attempt.
        let attempt = attempt.saturating_add(u32::from(publish.dup));
        let message = Message {
            id: id.unwrap_or_else(|| {
                super::content_id("mqtt", &self.topic, &publish.payload, &headers)
            }),
            topic: self.topic.clone(),
            payload: publish.payload.to_vec(),
            headers,
            attempt,
        };
        // Acknowledging takes only the packet id and the QoS.
        let token = Publish {
            pkid: publish.pkid,
            qos: publish.qos,
            ..Default::default()
        };
        Delivery {
            message: message.clone(),
            reply: None,
            acker: Box::new(MqttAcker {
                link: self.link.clone(),
                token,
                epoch,
                message,
                topic: self.message_topic.clone(),
                timeout: self.timeout,
            }),
        }
    }

    /// A request. The handler's answer is published to the request's
    /// response topic with its correlation data.
    fn request(&self, publish: Publish) -> Option<Delivery> {
        let properties = publish.properties.unwrap_or_default();
        let reply_to = properties
            .response_topic
            .clone()
            .filter(|t| t.starts_with(&self.reply_prefix));
        let Some(reply_to) = reply_to else {
            tracing::debug!(topic = %self.topic, "a request without a reply topic of this app; ignored");
            return None;
        };
        let correlation = properties.correlation_data.clone();
        let (id, headers, _) = metadata(Some(&properties));
        let message = Message {
            id: id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            topic: self.topic.clone(),
            payload: publish.payload.to_vec(),
            headers,
            attempt: 1,
        };
        let (reply_tx, reply_rx) = oneshot::channel::<Vec<u8>>();
        let (link, timeout) = (self.link.clone(), self.timeout);
        tokio::spawn(async move {
            if let Ok(payload) = reply_rx.await {
                let properties = PublishProperties {
                    correlation_data: correlation,
                    ..Default::default()
                };
                if let Err(e) = link
                    .publish(reply_to, Bytes::from(payload), properties, timeout)
                    .await
                {
                    tracing::warn!(error = %e, "cannot send a reply");
                }
            }
        });
        Some(Delivery {
            message,
            reply: Some(reply_tx),
            acker: Box::new(NoAck),
        })
    }
}

/// Settles a stored message: a PUBACK once its handler succeeded.
struct MqttAcker {
    link: Link,
    /// The delivery's packet id and QoS.
    token: Publish,
    /// The connection the delivery came on.
    epoch: u64,
    message: Message,
    /// The MQTT topic, for the copy `nack` publishes.
    topic: String,
    timeout: Duration,
}

impl MqttAcker {
    /// Whether the delivery's connection is still the client's.
    fn current(&self) -> bool {
        self.link.epoch() == self.epoch
    }

    async fn settle(&self) {
        if !self.current() {
            // The broker has sent the message again on the new connection,
            // where that copy is settled in its turn. This packet id may
            // now stand for another message.
            tracing::debug!(
                "the connection was renewed since this delivery; the broker redelivers it"
            );
            return;
        }
        if let Err(e) = self.link.client.ack(&self.token).await {
            tracing::warn!(error = %e, "cannot acknowledge a message; it will be redelivered");
        }
    }
}

#[async_trait]
impl Acker for MqttAcker {
    async fn ack(self: Box<Self>) {
        self.settle().await;
    }

    async fn nack(self: Box<Self>, delay: Duration) {
        // The original stays unacknowledged (and so safe) during the
        // backoff.
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if !self.current() {
                tracing::debug!(
                    "the connection was renewed; the broker redelivers the failed message"
                );
                return;
            }
            let m = &self.message;
            let copy = self
                .link
                .publish(
                    self.topic.clone(),
                    Bytes::from(m.payload.clone()),
                    publish_properties(&m.id, &m.headers, m.attempt.saturating_add(1)),
                    self.timeout,
                )
                .await;
            match copy {
                Ok(_) => self.settle().await,
                Err(e) => tracing::warn!(
                    error = %e,
                    "cannot republish a failed message; the broker redelivers it when the session reconnects"
                ),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_and_without_credentials() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1883").unwrap(),
            Target {
                host: "127.0.0.1".into(),
                port: 1883,
                credentials: None,
            }
        );
        assert_eq!(parse_url("mqtt://broker").unwrap().port, DEFAULT_PORT);
        assert_eq!(parse_url("mqtt://broker/").unwrap().host, "broker");
        let t = parse_url("mqtt://berth:p%40ss:w0rd@broker:1884").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("broker", 1884));
        let (user, password) = t.credentials.unwrap();
        assert_eq!((user.as_str(), password.expose()), ("berth", "p@ss:w0rd"));
        let (user, password) = parse_url("mqtt://only@broker")
            .unwrap()
            .credentials
            .unwrap();
        assert_eq!((user.as_str(), password.expose()), ("only", ""));
        let t = parse_url("mqtt://[::1]:1885").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("[::1]", 1885));
        assert_eq!(parse_url("mqtt://[::1]").unwrap().port, DEFAULT_PORT);
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_them() {
        for bad in [
            "tcp://h:1883",
            "mqtts://u:s3cret@h",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:x",
            "mqtt://h:70000",
            "mqtt://h/path",
            "mqtt://h?client_id=x",
            "mqtt://:s3cret@h",
            "mqtt://u:s3cret%zz@h",
            "mqtt://u:s3cret@",
            "mqtt://[::1",
            "mqtt://[::1]x",
        ] {
            let e = parse_url(bad).unwrap_err();
            assert!(matches!(e, MessagingError::InvalidInput(_)), "{bad}");
            assert!(!e.to_string().contains("s3cret"), "{bad}: {e}");
        }
        let t = parse_url("mqtt://u:s3cret@h").unwrap();
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn topics_map_into_the_app_subtree() {
        assert_eq!(
            message_topic("shop", "user.created"),
            "berth/shop/msg/user.created"
        );
        assert_eq!(
            request_topic("shop", "user.created"),
            "berth/shop/req/user.created"
        );
        assert_eq!(reply_topic("shop", "host-1"), "berth/shop/reply/host-1");
        assert_eq!(
            shared_filter("shop", "handler", "user.created"),
            "$share/berth-shop-handler/berth/shop/msg/user.created"
        );
        assert_eq!(
            shared_request_filter("shop", "handler", "user.created"),
            "$share/berth-shop-handler-req/berth/shop/req/user.created"
        );
        for ok in ["user.created", "_schedule.tick", "a-b_c"] {
            assert!(check_topic(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "a.+", "#", "a\0"] {
            assert!(check_topic(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn user_properties_round_trip_headers_id_and_attempt() {
        let headers = vec![
            ("trace".to_string(), "t-1".to_string()),
            ("a".into(), "x y".into()),
            ("a".into(), "again".into()),
        ];
        let mut sorted = headers.clone();
        sorted.sort();
        let props = publish_properties("id-1", &headers, 3);
        assert_eq!(
            metadata(Some(&props)),
            (Some("id-1".into()), sorted.clone(), 3)
        );
        let props = publish_properties("id-1", &headers, 1);
        assert!(
            props
                .user_properties
                .iter()
                .all(|(k, _)| k != ATTEMPT_PROPERTY)
        );
        assert_eq!(metadata(Some(&props)), (Some("id-1".into()), sorted, 1));
        // The host's id and attempt win over headers named like them.
        let spoofed = vec![
            (ID_PROPERTY.to_string(), "fake".to_string()),
            (ATTEMPT_PROPERTY.to_string(), "9".to_string()),
        ];
        let props = publish_properties("id-2", &spoofed, 1);
        assert_eq!(metadata(Some(&props)), (Some("id-2".into()), vec![], 1));
    }

    #[test]
    fn metadata_defaults() {
        assert_eq!(metadata(None), (None, vec![], 1));
        for (value, attempt) in [("0", 1), ("x", 1), ("2", 2)] {
            let props = PublishProperties {
                user_properties: vec![(ATTEMPT_PROPERTY.into(), value.into())],
                ..Default::default()
            };
            assert_eq!(metadata(Some(&props)).2, attempt, "{value}");
        }
    }

    type Outcome = oneshot::Receiver<Result<PubAckReason, MessagingError>>;

    fn waiters(acks: &mut Acks, n: usize) -> Vec<Outcome> {
        (0..n)
            .map(|_| {
                let (tx, rx) = oneshot::channel();
                acks.enqueue(tx);
                rx
            })
            .collect()
    }

    fn settle(acks: &mut Acks, pkid: u16) {
        let waiter = acks.acked(pkid).expect("a waiter for this id");
        waiter.send(Ok(PubAckReason::Success)).unwrap();
    }

    #[test]
    fn pubacks_settle_the_publishes_in_sending_order() {
        let mut acks = Acks::default();
        let mut rx = waiters(&mut acks, 2);
        acks.sent(1);
        acks.sent(2);
        settle(&mut acks, 2);
        assert!(rx[1].try_recv().is_ok());
        assert!(rx[0].try_recv().is_err());
        settle(&mut acks, 1);
        assert!(rx[0].try_recv().is_ok());
        assert!(acks.acked(1).is_none());
        assert!(acks.inflight.is_empty() && acks.queued.is_empty());
    }

    #[test]
    fn a_collided_id_settles_the_older_publish_first() {
        let mut acks = Acks::default();
        let mut rx = waiters(&mut acks, 2);
        acks.sent(1);
        // rumqttc reports the collided publish going out under id 1 before
        // it hands out the PUBACK for the first one.
        acks.sent(1);
        settle(&mut acks, 1);
        assert!(rx[0].try_recv().is_ok());
        assert!(rx[1].try_recv().is_err());
        settle(&mut acks, 1);
        assert!(rx[1].try_recv().is_ok());
    }

    #[test]
    fn reconnects_resend_and_refuse() {
        let mut acks = Acks::default();
        let mut rx = waiters(&mut acks, 3);
        acks.sent(1);
        acks.sent(2);
        // Reconnected: 1 is sent again, 2 was refused (its PUBACK was an
        // error), and the third request had not been sent yet.
        let refused = acks.reconnected(HashSet::from([1]));
        assert_eq!(refused.len(), 1);
        for waiter in refused {
            waiter
                .send(Err(MessagingError::Unavailable("refused".into())))
                .unwrap();
        }
        assert!(matches!(
            rx[1].try_recv(),
            Ok(Err(MessagingError::Unavailable(_)))
        ));
        acks.sent(1);
        acks.sent(3);
        settle(&mut acks, 3);
        assert!(rx[2].try_recv().is_ok());
        settle(&mut acks, 1);
        assert!(rx[0].try_recv().is_ok());
    }

    #[test]
    fn an_unsent_request_is_withdrawn() {
        let mut acks = Acks::default();
        let mut rx = waiters(&mut acks, 2);
        assert!(acks.withdraw_last().is_some());
        acks.sent(4);
        settle(&mut acks, 4);
        assert!(rx[0].try_recv().is_ok());
        assert!(acks.unsent().is_none());
    }

    #[test]
    fn resent_ids_come_from_pending_qos1_publishes() {
        let publish = |pkid| {
            Request::Publish(Publish {
                pkid,
                qos: if pkid == 0 {
                    QoS::AtMostOnce
                } else {
                    QoS::AtLeastOnce
                },
                ..Default::default()
            })
        };
        let pending = VecDeque::from([publish(3), publish(0), Request::PingReq, publish(7)]);
        assert_eq!(resent(&pending), HashSet::from([3, 7]));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb%40c").as_deref(), Some("a/b@c"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%+1"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
