//! The messaging conformance suite: the same guests (`messaging_guest`
//! publishing, `messaging_handler` consuming) against every broker backend.
//! Each broker gets the same scenarios:
//! - delivery of what a guest published, to the handler;
//! - a failed delivery redelivered with the same id;
//! - request/reply through the handler, and `no-responder` for a topic
//!   nobody consumes;
//! - dead-lettering after `max_deliveries`, with the original's headers;
//! - a schedule's ticks reaching the handler;
//! - a trigger on a topic pattern, granted to publish by a pattern:
//!   each message delivered under its own topic, retried and answered
//!   there, and topics outside the pattern left alone.
//!
//! Real brokers read their `BERTH_TEST_*` variable (see `services.rs`).

use std::time::Duration;

use berth::ports::messaging::MessagingError;
use berth_tests::{TestApp, assert_success, dry_run, guests, host_config, run, service, unique};

use crate::messaging::{
    expect_dead_letter, manifest_named, received_count, spoofed_host_headers, started_with,
    wait_for_count,
};

/// A broker backend under test.
pub(crate) enum Broker {
    Embedded,
    InProcess,
    Nats(String),
    Rabbit(String),
    Mqtt(String),
    Kafka(String),
}

impl Broker {
    /// The `[messaging]` section serving an app from this broker.
    pub(crate) fn host_toml(&self, t: &TestApp) -> String {
        match self {
            Broker::Embedded => "[messaging]\ntype = \"embedded\"\n".to_string(),
            Broker::InProcess => "[messaging]\ntype = \"in-process\"\n".to_string(),
            Broker::Nats(url) => {
                format!("[messaging]\ntype = \"nats\"\nurl = {url:?}\nack_wait_ms = 5000\n")
            }
            Broker::Kafka(url) => format!("[messaging]\ntype = \"kafka\"\nurl = {url:?}\n"),
            Broker::Mqtt(url) => format!("[messaging]\ntype = \"mqtt\"\nurl = {url:?}\n"),
            Broker::Rabbit(url) => {
                // The URL holds guest's password: a reference, as the host
                // config requires.
                let file = t.dir.path().join("amqp-url");
                std::fs::write(&file, url).unwrap();
                format!(
                    "[messaging]\ntype = \"rabbitmq\"\nurl = \"${{file:{}}}\"\n",
                    file.display()
                )
            }
        }
    }

    /// Removes what app `app` left on the broker.
    pub(crate) async fn cleanup(&self, app: &str) {
        match self {
            // MQTT keeps nothing once the app's sessions expire.
            // Kafka topics are left to the broker's retention (tansu in CI
            // keeps them in memory).
            Broker::Embedded | Broker::InProcess | Broker::Mqtt(_) | Broker::Kafka(_) => {}
            Broker::Nats(url) => crate::services::delete_nats_stream(url, app).await,
            Broker::Rabbit(url) => delete_rabbit_app(url, app).await,
        }
    }
}

async fn conformance(broker: Broker) {
    delivery_redelivery_and_request(&broker).await;
    dead_letter_after_max_deliveries(&broker).await;
    schedule_ticks(&broker).await;
    pattern_trigger(&broker).await;
    retries_stay_with_their_trigger(&broker).await;
    requests_past_their_timeout_are_not_handled(&broker).await;
}

async fn start(
    broker: &Broker,
    manifest: &str,
) -> (
    TestApp,
    std::sync::Arc<berth::app::App>,
    tokio::task::JoinSet<()>,
) {
    let t = TestApp::new(manifest);
    let host = host_config(&t, &broker.host_toml(&t));
    let app = std::sync::Arc::new(t.load_with(&host).await.unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    berth::triggers::start_background(app.clone(), &mut tasks)
        .await
        .unwrap();
    (t, app, tasks)
}

async fn delivery_redelivery_and_request(broker: &Broker) {
    let name = unique("conf");
    let t = TestApp::new(&manifest_named(&name, 5));
    let (app, tasks) = started_with(&t, &host_config(&t, &broker.host_toml(&t))).await;
    assert_success(&run(&app, "publisher", &["publish", "events", "10"]).await);
    wait_for_count(&app, 10).await;
    let kv = &app.backends.kv["received"];
    let last = String::from_utf8(kv.get("last-id").await.unwrap().unwrap()).unwrap();
    let payload = kv.get(&format!("payload/{last}")).await.unwrap().unwrap();
    assert!(payload.starts_with(b"msg-"), "{payload:?}");

    // A failed first delivery is redelivered with the same id.
    let id = app
        .backends
        .messaging
        .publish("events", b"fail-once".to_vec(), vec![])
        .await
        .unwrap();
    wait_for_count(&app, 12).await;
    let last = kv.get("last-id").await.unwrap().unwrap();
    assert_eq!(String::from_utf8(last).unwrap(), id);
    let attempt = kv.get(&format!("attempt/{id}")).await.unwrap().unwrap();
    assert_eq!(attempt, b"2", "the redelivery is the second attempt");

    assert_success(&run(&app, "publisher", &["request", "events"]).await);
    assert_eq!(
        received_count(&app).await,
        13,
        "the request reached the handler once"
    );
    let nobody = app
        .backends
        .messaging
        .request("nobody", b"ping".to_vec(), vec![], Duration::from_secs(2))
        .await
        .unwrap_err();
    assert_eq!(nobody, MessagingError::NoResponder);
    drop(tasks);
    drop(app);
    broker.cleanup(&name).await;
}

async fn dead_letter_after_max_deliveries(broker: &Broker) {
    let name = unique("confdl");
    let (_t, app, tasks) = start(broker, &manifest_named(&name, 1)).await;
    let mut dead = app
        .backends
        .messaging
        .subscribe("events.dead-letter", "dlcheck")
        .await
        .unwrap();
    // Host headers already on the message (another producer's) are
    // replaced by the dead letter's own.
    let mut headers = vec![("trace-id".to_string(), "t-1".to_string())];
    headers.extend(spoofed_host_headers());
    let id = app
        .backends
        .messaging
        .publish("events", b"fail-once".to_vec(), headers)
        .await
        .unwrap();
    wait_for_count(&app, 1).await;
    expect_dead_letter(&mut dead, &id).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        received_count(&app).await,
        1,
        "no delivery past the maximum"
    );
    // A failed request is not dead-lettered: requests are never stored or
    // redelivered, and its caller has its answer.
    let failed = app
        .backends
        .messaging
        .request(
            "events",
            b"fail-once".to_vec(),
            vec![],
            Duration::from_secs(1),
        )
        .await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(received_count(&app).await, 2, "the request was handled");
    let dead_request = tokio::time::timeout(Duration::from_secs(1), dead.next()).await;
    assert!(
        dead_request.is_err(),
        "a failed request was dead-lettered: {:?}",
        dead_request.map(|d| d.map(|d| d.message))
    );
    drop(tasks);
    drop(app);
    broker.cleanup(&name).await;
}

async fn schedule_ticks(broker: &Broker) {
    let name = unique("confsch");
    let manifest = manifest_named(&name, 3).replace(
        "[[trigger.message]]",
        "[[trigger.schedule]]\nname = \"every-second\"\ncron = \"* * * * * *\"\ncomponent = \"handler\"\n[[trigger.message]]",
    );
    let (_t, app, tasks) = start(broker, &manifest).await;
    let started = std::time::Instant::now();
    while received_count(&app).await < 2 {
        assert!(started.elapsed() < Duration::from_secs(10), "no ticks");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kv = &app.backends.kv["received"];
    let id = String::from_utf8(kv.get("last-id").await.unwrap().unwrap()).unwrap();
    assert!(id.starts_with("tick-every-second-"), "{id}");
    drop(tasks);
    drop(app);
    broker.cleanup(&name).await;
}

async fn pattern_trigger(broker: &Broker) {
    let name = unique("confpat");
    let manifest = manifest_named(&name, 3)
        .replace("publish = [\"events\"]", "publish = [\"orders.>\"]")
        .replace(
            "topic = \"events\"",
            "topic = \"orders.*\"\ndead_letter = \"failed-orders\"",
        );
    let (_t, app, tasks) = start(broker, &manifest).await;
    // Another app on the same broker: its `orders.eu` is not this app's.
    let neighbour_name = unique("confpatn");
    let (_n, neighbour, neighbour_tasks) = start(broker, &manifest_named(&neighbour_name, 3)).await;
    neighbour
        .backends
        .messaging
        .publish("orders.eu", b"neighbour".to_vec(), vec![])
        .await
        .unwrap();
    assert_success(&run(&app, "publisher", &["publish", "orders.eu", "2"]).await);
    // Granted by `orders.>`, but deeper than `orders.*` reaches.
    assert_success(&run(&app, "publisher", &["publish", "orders.eu.late", "1"]).await);
    assert_success(&run(&app, "publisher", &["publish", "orders.us", "1"]).await);
    wait_for_count(&app, 3).await;
    let messaging = &app.backends.messaging;
    let failing = messaging
        .publish("orders.us", b"fail-once".to_vec(), vec![])
        .await
        .unwrap();
    wait_for_count(&app, 5).await;
    let kv = &app.backends.kv["received"];
    let text = |v: Option<Vec<u8>>| String::from_utf8(v.unwrap_or_default()).unwrap();
    let topic = text(kv.get(&format!("topic/{failing}")).await.unwrap());
    let attempt = text(kv.get(&format!("attempt/{failing}")).await.unwrap());
    assert_eq!(
        (topic.as_str(), attempt.as_str()),
        ("orders.us", "2"),
        "retried under its own topic"
    );
    assert_success(&run(&app, "publisher", &["request", "orders.eu"]).await);
    let mut topics = Vec::new();
    for key in kv.list_keys("topic/", None, 100).await.unwrap().keys {
        topics.push(text(kv.get(&key).await.unwrap()));
    }
    topics.sort();
    assert_eq!(
        topics,
        [
            "orders.eu",
            "orders.eu",
            "orders.eu",
            "orders.us",
            "orders.us"
        ],
        "each message under its own topic; orders.eu.late is not in the pattern, \
         and the neighbour app's orders.eu is not this app's"
    );
    assert_eq!(received_count(&app).await, 6);
    drop((tasks, neighbour_tasks));
    drop((app, neighbour));
    broker.cleanup(&name).await;
    broker.cleanup(&neighbour_name).await;
}

/// Two triggers on one topic: when each fails a message once, each gets
/// its own retry, and neither gets the other's (2 deliveries each, never 3).
async fn retries_stay_with_their_trigger(broker: &Broker) {
    let name = unique("confretry");
    let manifest = format!(
        "{}[component.auditor]\npath = {:?}\n[component.auditor.grants]\nkv = [\"received\"]\n[[trigger.message]]\ntopic = \"events\"\ncomponent = \"auditor\"\nmax_deliveries = 3\n",
        manifest_named(&name, 3),
        guests::MESSAGING_HANDLER
    );
    let (_t, app, tasks) = start(broker, &manifest).await;
    app.backends
        .messaging
        .publish("events", b"fail-once".to_vec(), vec![])
        .await
        .unwrap();
    wait_for_count(&app, 4).await;
    // Time for a retry copy that reached the wrong trigger to be handled.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        received_count(&app).await,
        4,
        "each trigger handled the message and its own retry, nothing more"
    );
    drop(tasks);
    drop(app);
    broker.cleanup(&name).await;
}

/// Requests that waited for a busy trigger past their callers' timeout
/// are dropped, not handled late (wasting a handler, or holding the host's
/// memory for callers long gone); one asked afterwards is answered.
async fn requests_past_their_timeout_are_not_handled(broker: &Broker) {
    let name = unique("confexp");
    // One delivery at a time: the slow message holds the trigger's slot.
    let manifest = format!("{}concurrency = 1\n", manifest_named(&name, 5));
    let (_t, app, tasks) = start(broker, &manifest).await;
    let messaging = &app.backends.messaging;
    messaging
        .publish("events", b"slow-2000".to_vec(), vec![])
        .await
        .unwrap();
    wait_for_count(&app, 1).await;
    let short = Duration::from_millis(300);
    let late = futures::future::join_all(
        (0..3).map(|_| messaging.request("events", b"ping".to_vec(), vec![], short)),
    )
    .await;
    for result in late {
        assert_eq!(result.unwrap_err(), MessagingError::Timeout);
    }
    // Past the slow handler: what waited behind it was dropped.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        received_count(&app).await,
        1,
        "no request past its timeout reached the handler"
    );
    let reply = messaging
        .request("events", b"ping".to_vec(), vec![], Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(reply.payload, b"pong:ping");
    assert_eq!(received_count(&app).await, 2);
    drop(tasks);
    drop(app);
    broker.cleanup(&name).await;
}

/// Deletes the exchanges and queues RabbitMQ holds for app `app`.
async fn delete_rabbit_app(url: &str, app: &str) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let properties = lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    let connection = lapin::Connection::connect(url, properties).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    for queue in [
        "handler.events",
        "dlcheck.events.dead-letter",
        "handler._schedule.every-second",
        "handler.orders.*",
        "auditor.events",
        "unrouted",
    ] {
        channel
            .queue_delete(
                &format!("berth.{app}.{queue}"),
                QueueDeleteOptions::default(),
            )
            .await
            .ok();
    }
    for exchange in ["", ".requests", ".unrouted"] {
        channel
            .exchange_delete(
                &format!("berth.{app}{exchange}"),
                ExchangeDeleteOptions::default(),
            )
            .await
            .ok();
    }
    let _ = connection.close(200, "test done").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn messaging_conformance_embedded() {
    conformance(Broker::Embedded).await;
}

/// Messages the embedded broker accepted survive the host: published
/// while no trigger ran, they are handled after a restart.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_durable_across_restart_embedded() {
    let t = TestApp::new(&manifest_named("durable", 5));
    {
        let app = t.load().await.unwrap();
        assert_success(&run(&app, "publisher", &["publish", "events", "5"]).await);
    }
    assert!(t.state_dir().join("durable/messaging.db").exists());
    let (app, _tasks) = started_with(&t, &berth::config::HostConfig::default()).await;
    wait_for_count(&app, 5).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn messaging_conformance_inprocess() {
    conformance(Broker::InProcess).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn messaging_conformance_nats() {
    let Some(url) = service("BERTH_TEST_NATS_URL") else {
        return;
    };
    conformance(Broker::Nats(url)).await;
}

/// A durable consumer named the way the previous release named it (topic
/// dots as `_`) is kept for its trigger, so an upgrade neither replays nor
/// skips the trigger's messages, and no second consumer appears.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_keeps_the_previous_releases_consumer_nats() {
    use async_nats::jetstream::consumer::{AckPolicy, pull};
    use futures::TryStreamExt as _;
    let Some(url) = service("BERTH_TEST_NATS_URL") else {
        return;
    };
    let name = unique("legacy");
    let manifest =
        manifest_named(&name, 3).replace("topic = \"events\"", "topic = \"user.created\"");
    let t = TestApp::new(&manifest);
    let broker = Broker::Nats(url.clone());
    let host = host_config(&t, &broker.host_toml(&t));
    // Loading makes the app's stream; the previous release's consumer is
    // made by hand, as that release made it.
    let app = std::sync::Arc::new(t.load_with(&host).await.unwrap());
    let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let stream = js.get_stream(format!("BERTH_{name}")).await.unwrap();
    stream
        .create_consumer(pull::Config {
            durable_name: Some("handler__user_created".into()),
            filter_subject: format!("berth.{name}.msg.user.created"),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    app.backends
        .messaging
        .publish("user.created", b"after-upgrade".to_vec(), vec![])
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    berth::triggers::start_background(app.clone(), &mut tasks)
        .await
        .unwrap();
    wait_for_count(&app, 1).await;
    let names: Vec<String> = stream.consumer_names().try_collect().await.unwrap();
    assert_eq!(names, ["handler__user_created"], "no second consumer");
    // It takes the host config's ack wait (5 s), not the server's default
    // it was made with.
    let info = stream.consumer_info("handler__user_created").await.unwrap();
    assert_eq!(info.config.ack_wait, Duration::from_secs(5));
    // Everything was delivered through it and acknowledged.
    let started = std::time::Instant::now();
    loop {
        let info = stream.consumer_info("handler__user_created").await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{info:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(tasks);
    drop(app);
    broker.cleanup(&name).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn messaging_conformance_kafka() {
    let Some(url) = service("BERTH_TEST_KAFKA_URL") else {
        return;
    };
    conformance(Broker::Kafka(url)).await;
}

/// A trigger's consumer group commits only what was handled: a restarted
/// host resumes after it, and gets what was published while it was down.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_offsets_resume_after_restart_kafka() {
    let Some(url) = service("BERTH_TEST_KAFKA_URL") else {
        return;
    };
    let broker = Broker::Kafka(url);
    let name = unique("kres");
    let manifest = manifest_named(&name, 5);
    {
        let (_t, app, tasks) = start(&broker, &manifest).await;
        assert_success(&run(&app, "publisher", &["publish", "events", "3"]).await);
        wait_for_count(&app, 3).await;
        // Past the commit interval: the offset is stored.
        tokio::time::sleep(Duration::from_millis(800)).await;
        drop(tasks);
        // Published while no host consumes.
        app.backends
            .messaging
            .publish("events", b"while-down".to_vec(), vec![])
            .await
            .unwrap();
    }
    // A new host (its kv counter starts at 0) gets only the new message.
    let (_t, app, _tasks) = start(&broker, &manifest).await;
    wait_for_count(&app, 1).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        received_count(&app).await,
        1,
        "handled messages are not redelivered"
    );
    let kv = &app.backends.kv["received"];
    let last = String::from_utf8(kv.get("last-id").await.unwrap().unwrap()).unwrap();
    let payload = kv.get(&format!("payload/{last}")).await.unwrap().unwrap();
    assert_eq!(payload, b"while-down");
}

/// An app that ran on the release before, which kept each trigger's
/// offset itself in `berth.<app>.__offsets` (topics had one partition),
/// resumes where that release left off: neither replayed nor skipped.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_adopts_the_previous_releases_offsets_kafka() {
    use krafka::admin::{CreateTopicsOptions, NewTopic};
    let Some(url) = service("BERTH_TEST_KAFKA_URL") else {
        return;
    };
    let name = unique("kold");
    let kafka = krafka::Kafka::builder(url.trim_start_matches("kafka://"))
        .connect()
        .await
        .unwrap();
    let (events, offsets) = (
        format!("berth.{name}.events"),
        format!("berth.{name}.__offsets"),
    );
    let topics = [
        NewTopic::new(&events, 1, 1).unwrap(),
        NewTopic::new(&offsets, 1, 1).unwrap(),
    ];
    let created = kafka
        .admin()
        .create_topics(topics, CreateTopicsOptions::default())
        .await
        .unwrap();
    assert!(created.values().all(Result::is_ok), "{created:?}");
    let producer = kafka.producer().build().await.unwrap();
    for i in 0..3 {
        let id = format!("old-{i}");
        let record = krafka::Record::new(events.as_str(), format!("old-{i}").into_bytes())
            .key(id.clone().into_bytes())
            .header("berth-id", id.into_bytes());
        let _ = producer.send(record).await.unwrap();
    }
    // The release before had handled the first two: its next offset is 2.
    let commit =
        krafka::Record::new(offsets.as_str(), b"2".to_vec()).key(b"handler/events".to_vec());
    let _ = producer.send(commit).await.unwrap();

    let (_t, app, _tasks) = start(&Broker::Kafka(url), &manifest_named(&name, 5)).await;
    wait_for_count(&app, 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        received_count(&app).await,
        1,
        "handled records are not replayed"
    );
    let kv = &app.backends.kv["received"];
    let last = String::from_utf8(kv.get("last-id").await.unwrap().unwrap()).unwrap();
    assert_eq!(last, "old-2");
}

/// An app has at most `max_topics` Kafka topics, and a topic Kafka would
/// take for another app's (the names differ only in `.` against `_`) is
/// refused as bad input, naming no other topic, rather than failing as a
/// retriable `unavailable` for ever (real Kafka refuses to create it).
#[tokio::test(flavor = "multi_thread")]
async fn messaging_kafka_topics_are_capped_and_refused_when_kafka_takes_them_for_another_kafka() {
    let Some(url) = service("BERTH_TEST_KAFKA_URL") else {
        return;
    };
    let name = unique("kcap");
    let t = TestApp::new(&manifest_named(&name, 5));
    let capped = format!("[messaging]\ntype = \"kafka\"\nurl = {url:?}\nmax_topics = 3\n");
    let app = t.load_with(&host_config(&t, &capped)).await.unwrap();
    let messaging = &app.backends.messaging;
    // The reply topic is the app's first; two more fit.
    for topic in ["a.x", "b"] {
        messaging
            .publish(topic, b"1".to_vec(), vec![])
            .await
            .unwrap();
    }
    let err = messaging
        .publish("c", b"1".to_vec(), vec![])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MessagingError::Other(m)
            if m.contains("\"c\"") && m.contains("3 topics") && m.contains("messaging.max_topics (3)")),
        "{err:?}"
    );
    // The topics it has take messages still.
    messaging
        .publish("a.x", b"2".to_vec(), vec![])
        .await
        .unwrap();

    // Another app's topic `x` is `berth.<name>_a.x`, which Kafka takes for
    // the first app's `berth.<name>.a.x`.
    let other = format!("{name}_a");
    let t2 = TestApp::new(&manifest_named(&other, 5));
    let broker = Broker::Kafka(url);
    let app2 = t2
        .load_with(&host_config(&t2, &broker.host_toml(&t2)))
        .await
        .unwrap();
    let err = app2
        .backends
        .messaging
        .publish("x", b"1".to_vec(), vec![])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MessagingError::InvalidInput(m)
            if m.contains("\"x\"") && m.contains("'.' against '_'")),
        "{err:?}"
    );
    assert!(
        !err.to_string().contains(&format!("berth.{name}.")),
        "the other app's topic is not named: {err}"
    );
    // Its other topics are its own.
    app2.backends
        .messaging
        .publish("y", b"1".to_vec(), vec![])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn messaging_conformance_mqtt() {
    let Some(url) = service("BERTH_TEST_MQTT_URL") else {
        return;
    };
    conformance(Broker::Mqtt(url)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn messaging_conformance_rabbitmq() {
    let Some(url) = service("BERTH_TEST_AMQP_URL") else {
        return;
    };
    conformance(Broker::Rabbit(url)).await;
}

/// A component named `req` or `once` may have no trigger on RabbitMQ: its
/// queues would take the names of the app's request queues and tick
/// claims. Refused before anything is declared, naming the component.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_components_named_like_the_apps_queues_are_refused_rabbitmq() {
    let Some(url) = service("BERTH_TEST_AMQP_URL") else {
        return;
    };
    let broker = Broker::Rabbit(url);
    let name = unique("reserved");
    let t = TestApp::new(&manifest_named(&name, 5));
    let app = t
        .load_with(&host_config(&t, &broker.host_toml(&t)))
        .await
        .unwrap();
    for component in ["req", "once"] {
        let refused = app.backends.messaging.subscribe("events", component).await;
        let err = refused.err().expect("refused");
        assert!(
            matches!(&err, MessagingError::InvalidInput(m)
                if m.contains(&format!("component `{component}`")) && m.contains("rename the component")),
            "{err:?}"
        );
    }
    // Any other name subscribes.
    drop(
        app.backends
            .messaging
            .subscribe("events", "worker")
            .await
            .unwrap(),
    );
    drop(app);
    broker.cleanup(&name).await;
}

/// A failed message waits out its backoff in a delay queue on the broker,
/// not in the host: with one delivery in flight (`prefetch = 1`) and a
/// ten-second backoff, the next message is still handled at once.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_backoff_holds_no_prefetch_slot_rabbitmq() {
    let Some(url) = service("BERTH_TEST_AMQP_URL") else {
        return;
    };
    let broker = Broker::Rabbit(url);
    let name = unique("parked");
    let manifest = format!("{}backoff_ms = 10000\n", manifest_named(&name, 3));
    let t = TestApp::new(&manifest);
    let host_toml = format!("{}prefetch = 1\n", broker.host_toml(&t));
    let (app, tasks) = started_with(&t, &host_config(&t, &host_toml)).await;
    let messaging = &app.backends.messaging;
    let failing = messaging
        .publish("events", b"fail-once".to_vec(), vec![])
        .await
        .unwrap();
    let next = messaging
        .publish("events", b"next".to_vec(), vec![])
        .await
        .unwrap();
    // Both handled long before the failed one's backoff ends (10 s); a
    // failed delivery held in the host would keep the only slot until then.
    let started = std::time::Instant::now();
    let kv = &app.backends.kv["received"];
    while kv.get(&format!("payload/{next}")).await.unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the next message waited for the failed one's backoff"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let attempt = kv.get(&format!("attempt/{failing}")).await.unwrap();
    assert_eq!(attempt.as_deref(), Some(&b"1"[..]), "not yet retried");
    drop(tasks);
    drop(app);
    broker.cleanup(&name).await;
}

/// A trigger's request queue deleted under it (by an operator or a
/// policy, or lost with its node) while its stored messages go on: the
/// host consumes its requests again, rather than answer none until it
/// restarts.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_request_queue_consumed_again_after_deletion_rabbitmq() {
    let Some(url) = service("BERTH_TEST_AMQP_URL") else {
        return;
    };
    use lapin::options::QueueDeleteOptions;
    let broker = Broker::Rabbit(url.clone());
    let name = unique("reqgone");
    let (_t, app, tasks) = start(&broker, &manifest_named(&name, 5)).await;
    let messaging = &app.backends.messaging;
    let ask = || messaging.request("events", b"ping".to_vec(), vec![], Duration::from_secs(2));
    assert_eq!(ask().await.unwrap().payload, b"pong:ping");
    let properties = lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    let connection = lapin::Connection::connect(&url, properties).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_delete(
            &format!("berth.{name}.req.handler.events"),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let answered = loop {
        match ask().await {
            Ok(reply) => break reply,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("requests are not answered again: {e:?}"),
        }
    };
    assert_eq!(answered.payload, b"pong:ping");
    // Stored messages go on.
    let handled = received_count(&app).await;
    messaging
        .publish("events", b"after".to_vec(), vec![])
        .await
        .unwrap();
    wait_for_count(&app, handled + 1).await;
    drop(tasks);
    drop(app);
    broker.cleanup(&name).await;
}

/// A lost connection (the network, a broker restart) does not stop the
/// host: publishing reconnects and the trigger consumes again.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_reconnects_after_connection_loss_rabbitmq() {
    let Some(url) = service("BERTH_TEST_AMQP_URL") else {
        return;
    };
    reconnects_after_connection_loss(&url, Broker::Rabbit).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn messaging_reconnects_after_connection_loss_nats() {
    let Some(url) = service("BERTH_TEST_NATS_URL") else {
        return;
    };
    reconnects_after_connection_loss(&url, Broker::Nats).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn messaging_reconnects_after_connection_loss_mqtt() {
    let Some(url) = service("BERTH_TEST_MQTT_URL") else {
        return;
    };
    reconnects_after_connection_loss(&url, Broker::Mqtt).await;
}

/// A message the NATS server would answer by closing the app's whole
/// connection (over its `max_payload` once its headers are counted) is
/// refused before it is sent, and the connection goes on.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_oversized_messages_refused_before_the_server_nats() {
    let Some(url) = service("BERTH_TEST_NATS_URL") else {
        return;
    };
    let name = unique("confsize");
    let t = TestApp::new(&manifest_named(&name, 5));
    let host = format!("[messaging]\ntype = \"nats\"\nurl = {url:?}\n");
    let app = t.load_with(&host_config(&t, &host)).await.unwrap();
    let max = async_nats::connect(url.as_str())
        .await
        .unwrap()
        .server_info()
        .max_payload;
    let broker = &app.backends.messaging;
    let headers = vec![("x-trace".to_string(), "t".to_string())];
    // The payload alone fits; with its headers it does not.
    let err = broker
        .publish("events", vec![7; max - 8], headers.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MessagingError::TooLarge(m) if m.contains(&max.to_string())),
        "{err:?}"
    );
    broker
        .publish("events", b"small".to_vec(), headers)
        .await
        .expect("the connection is still up");
    drop(app);
    Broker::Nats(url).cleanup(&name).await;
}

/// A handler slower than JetStream's ack wait is not given its message a
/// second time while it runs: the host tells JetStream it is in progress.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_slow_handler_outlives_the_ack_wait_once_nats() {
    let Some(url) = service("BERTH_TEST_NATS_URL") else {
        return;
    };
    let name = unique("confslow");
    let t = TestApp::new(&manifest_named(&name, 5));
    let host = format!("[messaging]\ntype = \"nats\"\nurl = {url:?}\nack_wait_ms = 1000\n");
    let (app, tasks) = started_with(&t, &host_config(&t, &host)).await;
    // Three ack waits of work.
    let id = app
        .backends
        .messaging
        .publish("events", b"slow-3000".to_vec(), vec![])
        .await
        .unwrap();
    let kv = &app.backends.kv["received"];
    let done = format!("done/{id}");
    let started = std::time::Instant::now();
    while kv.get(&done).await.unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the slow handler never finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A copy redelivered late would have arrived by the next ack wait.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(kv.get(&done).await.unwrap().unwrap(), b"1");
    // The trigger's new consumer caps deliveries awaiting their ack at the
    // host's 20,000, not the server's default of 1,000.
    let js = async_nats::jetstream::new(async_nats::connect(url.as_str()).await.unwrap());
    let stream = js.get_stream(format!("BERTH_{name}")).await.unwrap();
    let info = stream.consumer_info("handler__events").await.unwrap();
    assert_eq!(info.config.max_ack_pending, 20_000);
    assert_eq!(
        received_count(&app).await,
        1,
        "the message was delivered again while its handler ran"
    );
    drop(tasks);
    drop(app);
    Broker::Nats(url).cleanup(&name).await;
}

/// Waits up to 30 s for the app's handler to have received `expected`
/// messages.
async fn wait_long_for_count(app: &berth::app::App, expected: i64) {
    let started = std::time::Instant::now();
    while received_count(app).await < expected {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{} of {expected} messages handled",
            received_count(app).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(received_count(app).await, expected);
}

/// A trigger whose durable consumer an operator deleted, or whose app's
/// whole stream, goes on: the host makes them again (a publish makes the
/// stream again too), rather than pulling from nothing for ever.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_trigger_outlives_its_deleted_consumer_and_stream_nats() {
    let Some(url) = service("BERTH_TEST_NATS_URL") else {
        return;
    };
    let name = unique("confgone");
    let t = TestApp::new(&manifest_named(&name, 5));
    let host = format!("[messaging]\ntype = \"nats\"\nurl = {url:?}\nack_wait_ms = 5000\n");
    let (app, tasks) = started_with(&t, &host_config(&t, &host)).await;
    let broker = &app.backends.messaging;
    broker
        .publish("events", b"one".to_vec(), vec![])
        .await
        .unwrap();
    wait_long_for_count(&app, 1).await;
    // The host looks at the consumer's ack floor every 2 s, once a pull
    // (at most 5 s) is over.
    tokio::time::sleep(Duration::from_secs(8)).await;

    let js = async_nats::jetstream::new(async_nats::connect(url.as_str()).await.unwrap());
    let stream_name = format!("BERTH_{name}");
    let stream = js.get_stream(&stream_name).await.unwrap();
    // NATS 2.9 sometimes fails a delete while the consumer writes its
    // state ("directory not empty"); a second try goes through.
    let mut tries = 0;
    while let Err(e) = stream.delete_consumer("handler__events").await {
        tries += 1;
        assert!(tries < 5, "cannot delete the consumer: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    broker
        .publish("events", b"two".to_vec(), vec![])
        .await
        .unwrap();
    wait_long_for_count(&app, 2).await;
    // The consumer made again starts after what was handled: "one" is not
    // delivered a second time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(received_count(&app).await, 2, "the stream was replayed");

    js.delete_stream(&stream_name).await.unwrap();
    broker
        .publish("events", b"three".to_vec(), vec![])
        .await
        .expect("the publish makes the app's stream again");
    wait_long_for_count(&app, 3).await;
    let info = js
        .get_stream(&stream_name)
        .await
        .unwrap()
        .consumer_info("handler__events")
        .await
        .unwrap();
    assert_eq!(
        info.config.max_ack_pending, 20_000,
        "made as the host makes it"
    );
    drop(tasks);
    drop(app);
    Broker::Nats(url).cleanup(&name).await;
}

/// A message that fits the broker's size limit only just still becomes a
/// dead letter: without the error text if that would not fit, without its
/// payload if even its headers would not, rather than failing to publish
/// and coming back for ever.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_dead_letter_near_the_size_limit_nats() {
    let Some(url) = service("BERTH_TEST_NATS_URL") else {
        return;
    };
    let name = unique("confdlbig");
    let t = TestApp::new(&manifest_named(&name, 1));
    let host = format!("[messaging]\ntype = \"nats\"\nurl = {url:?}\n");
    let (app, tasks) = started_with(&t, &host_config(&t, &host)).await;
    let mut dead = app
        .backends
        .messaging
        .subscribe("events.dead-letter", "dlcheck")
        .await
        .unwrap();
    let max = async_nats::connect(url.as_str())
        .await
        .unwrap()
        .server_info()
        .max_payload;
    // With its `Nats-Msg-Id` (63 bytes of headers), 110 bytes under the
    // limit: the dead letter's own headers (106 bytes more) fit, the error
    // text on top does not.
    let mut payload = b"fail-always".to_vec();
    payload.resize(max - 63 - 110, b'.');
    let id = app
        .backends
        .messaging
        .publish("events", payload.clone(), vec![])
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(15), dead.next())
        .await
        .expect("a dead letter arrives")
        .expect("subscription open");
    assert_eq!(delivery.message.payload, payload);
    let header = |name: &str| berth_tests::header(&delivery.message, name);
    assert_eq!(header("berth-original-id").as_deref(), Some(id.as_str()));
    assert_eq!(header("berth-attempts").as_deref(), Some("1"));
    assert_eq!(header("berth-error"), None, "the error text did not fit");
    // 50 bytes under the limit: not even the dead letter's own headers fit
    // on top; it goes without its payload, whose size it gives.
    let mut payload = b"fail-always".to_vec();
    payload.resize(max - 63 - 50, b'.');
    let id = app
        .backends
        .messaging
        .publish("events", payload.clone(), vec![])
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(15), dead.next())
        .await
        .expect("a dead letter arrives")
        .expect("subscription open");
    let header = |name: &str| berth_tests::header(&delivery.message, name);
    assert_eq!(header("berth-original-id").as_deref(), Some(id.as_str()));
    assert!(delivery.message.payload.is_empty());
    assert_eq!(
        header("berth-payload-dropped"),
        Some(payload.len().to_string())
    );
    drop(tasks);
    drop(app);
    Broker::Nats(url).cleanup(&name).await;
}

/// Two hosts of an app configured with different ack waits: the later one
/// sets the consumer's, shorter, while the first runs a slow handler. The
/// first follows it within seconds (progress told at once, then as often
/// as the new wait needs), so the message is not handed to the other host
/// mid-handler.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_hosts_follow_the_consumers_ack_wait_nats() {
    let Some(url) = service("BERTH_TEST_NATS_URL") else {
        return;
    };
    let name = unique("confwait");
    let host =
        |ms: u32| format!("[messaging]\ntype = \"nats\"\nurl = {url:?}\nack_wait_ms = {ms}\n");
    let first = TestApp::new(&manifest_named(&name, 5));
    let (a, a_tasks) = started_with(&first, &host_config(&first, &host(60_000))).await;
    let id = a
        .backends
        .messaging
        .publish("events", b"slow-25000".to_vec(), vec![])
        .await
        .unwrap();
    wait_for_count(&a, 1).await;
    // The second host makes the consumer's ack wait 15 s: without following
    // it, the first would tell progress only every 30 s.
    let second = TestApp::new(&manifest_named(&name, 5));
    let (b, b_tasks) = started_with(&second, &host_config(&second, &host(15_000))).await;
    let kv = &a.backends.kv["received"];
    let started = std::time::Instant::now();
    while kv.get(&format!("done/{id}")).await.unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "the slow handler never finished"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        received_count(&b).await,
        0,
        "the other host got the message mid-handler"
    );
    assert_eq!(received_count(&a).await, 1);
    drop((a_tasks, b_tasks));
    drop((a, b));
    Broker::Nats(url).cleanup(&name).await;
}

/// A trigger that stops hands the messages it fetched ahead back at once,
/// so the app's next host handles them without waiting out the ack wait.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_stopped_trigger_hands_back_what_it_fetched_nats() {
    let Some(url) = service("BERTH_TEST_NATS_URL") else {
        return;
    };
    let name = unique("confstop");
    // One handler at a time, 1.5 s a message; an ack wait of a minute.
    let (t, host) = one_at_a_time_nats(&name, &url);
    let (app, tasks) = started_with(&t, &host).await;
    let ids = publish_all(&app, &["slow-1500"; 4]).await;
    // The first is being handled, the others wait in the host's queue.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(tasks);
    drop(app);
    let (app, tasks) = started_with(&t, &host).await;
    let kv = &app.backends.kv["received"];
    let started = std::time::Instant::now();
    // The three that waited come back within seconds (the stopped host's
    // last pull request expires first), 1.5 s each, not after the minute
    // of the ack wait.
    for id in &ids[1..] {
        while kv.get(&format!("done/{id}")).await.unwrap().is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "message {id}, fetched by the stopped host, was not handed back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(tasks);
    drop(app);
    Broker::Nats(url).cleanup(&name).await;
}

/// An app on NATS whose trigger handles one message at a time, with an
/// ack wait of a minute (so only a hand-back brings a message back soon).
fn one_at_a_time_nats(name: &str, url: &str) -> (TestApp, berth::config::HostConfig) {
    let manifest = manifest_named(name, 5)
        .replace("max_deliveries = 5", "max_deliveries = 5\nconcurrency = 1");
    let t = TestApp::new(&manifest);
    let host = format!("[messaging]\ntype = \"nats\"\nurl = {url:?}\nack_wait_ms = 60000\n");
    let host = host_config(&t, &host);
    (t, host)
}

/// Publishes each payload on `events`, in order; their ids.
async fn publish_all(app: &berth::app::App, payloads: &[&str]) -> Vec<String> {
    let mut ids = Vec::new();
    for payload in payloads {
        let id = app
            .backends
            .messaging
            .publish("events", payload.as_bytes().to_vec(), vec![])
            .await
            .unwrap();
        ids.push(id);
    }
    ids
}

/// A version that stops while a handler still runs (a reload under `berth
/// serve`) hands back what it fetched ahead at once, not when that handler
/// ends: the next version handles those messages meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_draining_version_hands_back_what_it_fetched_nats() {
    let Some(url) = service("BERTH_TEST_NATS_URL") else {
        return;
    };
    let name = unique("confdrain");
    let (t, host) = one_at_a_time_nats(&name, &url);
    let (old, tasks) = started_with(&t, &host).await;
    let mut ids = publish_all(&old, &["slow-20000", "slow-500", "slow-500", "slow-500"]).await;
    let long = ids.remove(0);
    // The long one runs, the others wait in the old version's queue.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let stopping = {
        let old = old.clone();
        tokio::spawn(async move {
            berth::triggers::stop_background(&old, tasks, Duration::from_secs(40)).await;
        })
    };
    let (new, new_tasks) = started_with(&t, &host).await;
    let kv = &new.backends.kv["received"];
    let started = std::time::Instant::now();
    // Handed back within seconds (the old version's last pull request
    // expires first), while the long handler still has 19 s to run.
    for id in &ids {
        while kv.get(&format!("done/{id}")).await.unwrap().is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "message {id}, fetched by the draining version, was not handed back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(!stopping.is_finished(), "the long handler still runs");
    // The long handler finishes in the old version and is acknowledged.
    stopping.await.unwrap();
    assert_eq!(
        old.backends.kv["received"]
            .get(&format!("done/{long}"))
            .await
            .unwrap(),
        Some(b"1".to_vec())
    );
    drop(new_tasks);
    drop((old, new));
    Broker::Nats(url).cleanup(&name).await;
}

/// An app's stream keeps messages a week unless the host config says
/// otherwise; `max_bytes` caps it, dropping its oldest messages (handled
/// ones stay in the stream until they age out, so refusing new ones would
/// stop the app). The limits apply to a stream made before them too.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_stream_limits_apply_to_new_and_old_streams_nats() {
    let Some(url) = service("BERTH_TEST_NATS_URL") else {
        return;
    };
    let name = unique("conflimit");
    let t = TestApp::new(&manifest_named(&name, 5));
    let js = async_nats::jetstream::new(async_nats::connect(url.as_str()).await.unwrap());
    let stream_name = format!("BERTH_{name}");

    let plain = format!("[messaging]\ntype = \"nats\"\nurl = {url:?}\n");
    // A dry run (`berth check`) before the stream exists makes none.
    let checking = dry_run(&t, host_config(&t, &plain));
    drop(t.load_with(&checking).await.unwrap());
    let looked_up = js.get_stream(&stream_name).await.err();
    assert!(
        looked_up.is_some_and(|e| matches!(
            e.kind(),
            async_nats::jetstream::context::GetStreamErrorKind::JetStream(ref j)
                if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
        )),
        "a dry run made the stream"
    );

    let app = t.load_with(&host_config(&t, &plain)).await.unwrap();
    let config = js
        .get_stream(&stream_name)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    assert_eq!(config.max_age, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(config.max_bytes, -1);
    drop(app);

    // A dry run connects, but leaves the stream's limits as they are:
    // lower ones would drop messages a running host keeps.
    let checking = dry_run(&t, host_config(&t, &format!("{plain}max_age_s = 60\n")));
    drop(t.load_with(&checking).await.unwrap());
    let stream = js.get_stream(&stream_name).await.unwrap();
    let week = Duration::from_secs(7 * 24 * 3600);
    assert_eq!(stream.cached_info().config.max_age, week);

    // A minute: shorter than the two minutes JetStream remembers message
    // ids for, which must then shrink with it.
    let capped = format!("{plain}max_bytes = 1048576\nmax_age_s = 60\n");
    let app = t.load_with(&host_config(&t, &capped)).await.unwrap();
    let config = js
        .get_stream(&stream_name)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    assert_eq!(config.max_age, Duration::from_secs(60));
    assert_eq!(config.max_bytes, 1 << 20);
    assert_eq!(
        config.discard,
        async_nats::jetstream::stream::DiscardPolicy::Old
    );
    assert!(config.duplicate_window <= Duration::from_secs(60));
    let broker = &app.backends.messaging;
    for i in 0..40 {
        broker
            .publish("events", vec![7; 64 << 10], vec![])
            .await
            .unwrap_or_else(|e| panic!("message {i}: {e:?}"));
    }
    let state = js
        .get_stream(&stream_name)
        .await
        .unwrap()
        .cached_info()
        .state
        .clone();
    assert!(state.bytes <= 1 << 20, "{state:?}");
    assert_eq!(state.last_sequence, 40);
    assert!(
        state.first_sequence > 20,
        "the oldest messages were dropped: {state:?}"
    );
    drop(app);
    Broker::Nats(url).cleanup(&name).await;
}

/// Messages fetched ahead of a busy handler wait in the host's queue past
/// JetStream's ack wait without being delivered again: the host tells
/// JetStream they are in progress while they wait.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_messages_waiting_in_the_host_are_not_redelivered_nats() {
    let Some(url) = service("BERTH_TEST_NATS_URL") else {
        return;
    };
    let name = unique("confheld");
    // One handler at a time, 800 ms a message: the fourth waits 2.4 s.
    let manifest = manifest_named(&name, 5)
        .replace("max_deliveries = 5", "max_deliveries = 5\nconcurrency = 1");
    let t = TestApp::new(&manifest);
    let host = format!("[messaging]\ntype = \"nats\"\nurl = {url:?}\nack_wait_ms = 1000\n");
    let (app, tasks) = started_with(&t, &host_config(&t, &host)).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let id = app
            .backends
            .messaging
            .publish("events", b"slow-800".to_vec(), vec![])
            .await
            .unwrap();
        ids.push(id);
    }
    let kv = &app.backends.kv["received"];
    let started = std::time::Instant::now();
    for id in &ids {
        while kv.get(&format!("done/{id}")).await.unwrap().is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "message {id} was never handled"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // A copy redelivered late would have arrived by the next ack wait.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for id in &ids {
        assert_eq!(
            kv.get(&format!("done/{id}")).await.unwrap().unwrap(),
            b"1",
            "message {id} was handled on its first delivery"
        );
    }
    assert_eq!(
        received_count(&app).await,
        4,
        "a message was delivered again while it waited in the host"
    );
    drop(tasks);
    drop(app);
    Broker::Nats(url).cleanup(&name).await;
}

/// Serves an app from `broker(url)` through a proxy, cuts every connection
/// once a message was handled, and expects the next one handled too.
async fn reconnects_after_connection_loss(url: &str, broker: fn(String) -> Broker) {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = after_scheme
        .rsplit('@')
        .next()
        .unwrap()
        .trim_end_matches('/');
    let proxy = berth_tests::CuttableProxy::start(authority).await;
    let proxied = url.replace(authority, &format!("127.0.0.1:{}", proxy.port));
    let through_proxy = broker(proxied);
    let name = unique("confrc");
    let (_t, app, tasks) = start(&through_proxy, &manifest_named(&name, 5)).await;
    let messaging = &app.backends.messaging;
    messaging
        .publish("events", b"before".to_vec(), vec![])
        .await
        .unwrap();
    wait_for_count(&app, 1).await;

    proxy.cut();
    // The first publish may see the dead connection; a retry reconnects.
    let started = std::time::Instant::now();
    let after = loop {
        match messaging.publish("events", b"after".to_vec(), vec![]).await {
            Ok(id) => break id,
            Err(MessagingError::Unavailable(_)) if started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("publish after the cut: {e}"),
        }
    };
    // The consumer resumed: the new message is handled. (The first one may
    // be handled again: its acknowledgement may have been lost in the cut.)
    let kv = &app.backends.kv["received"];
    let key = format!("payload/{after}");
    while kv.get(&key).await.unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the trigger did not consume again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(tasks);
    drop(app);
    broker(url.to_string()).cleanup(&name).await;
}

/// A broker URL Berth cannot use is a load error naming `messaging.url`,
/// not a connection failure, and never repeats the URL's password.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_bad_broker_urls_name_the_key() {
    for (kind, url) in [
        ("rabbitmq", "rabbit://guest@127.0.0.1:5672"),
        ("mqtt", "http://127.0.0.1:1883"),
        ("kafka", "kafka://user@127.0.0.1:9092"),
        // A malformed %-escape in the user name: refused before connecting.
        ("nats", "nats://us%zzer@127.0.0.1:4222"),
    ] {
        let t = TestApp::new(&manifest_named("badurl", 5));
        let host = host_config(
            &t,
            &format!("[messaging]\ntype = {kind:?}\nurl = {url:?}\n"),
        );
        let Err(err) = t.load_with(&host).await else {
            panic!("{kind}: an unusable URL loaded");
        };
        let text = format!("{err:#}");
        assert!(text.contains("`messaging.url`"), "{kind}: {text}");
        assert!(!text.contains("cannot connect"), "{kind}: {text}");
        assert!(text.contains("host.toml"), "{kind}: {text}");
        assert!(!text.contains("us%zzer"), "{kind}: {text}");
    }
}

/// Broker settings out of range are refused before any connection, naming
/// their key and the range.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_broker_settings_out_of_range_name_the_key() {
    for (settings, key, why) in [
        (
            "type = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1\"\nsession_expiry_s = 0",
            "messaging.session_expiry_s",
            "is 0; it must be 1 to 604800",
        ),
        (
            "type = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1\"\nsession_expiry_s = 604801",
            "messaging.session_expiry_s",
            "is 604801; it must be 1 to 604800",
        ),
        (
            "type = \"kafka\"\nurl = \"kafka://127.0.0.1:1\"\nreplication_factor = 0",
            "messaging.replication_factor",
            "is 0; it must be at least 1",
        ),
        (
            "type = \"kafka\"\nurl = \"kafka://127.0.0.1:1\"\npartitions = 0",
            "messaging.partitions",
            "is 0; it must be 1 to 10000",
        ),
        (
            "type = \"kafka\"\nurl = \"kafka://127.0.0.1:1\"\nsession_timeout_ms = 500",
            "messaging.session_timeout_ms",
            "is 500; it must be 6000 to 1800000",
        ),
        (
            "type = \"kafka\"\nurl = \"kafka://127.0.0.1:1\"\nmax_topics = 0",
            "messaging.max_topics",
            "is 0; it must be 1 to 1000000",
        ),
        (
            "type = \"nats\"\nurl = \"nats://127.0.0.1:1\"\nprefetch = 0",
            "messaging.prefetch",
            "is 0; it must be at least 1",
        ),
        (
            "type = \"rabbitmq\"\nurl = \"amqp://127.0.0.1:1\"\nprefetch = 0",
            "messaging.prefetch",
            "is 0; it must be at least 1",
        ),
        (
            "type = \"nats\"\nurl = \"nats://127.0.0.1:1\"\nack_wait_ms = 0",
            "messaging.ack_wait_ms",
            "is 0; it must be at least 1 (milliseconds)",
        ),
        (
            "type = \"nats\"\nurl = \"nats://127.0.0.1:1\"\nack_wait_ms = 500",
            "messaging.ack_wait_ms",
            "is 500; it must be at least 1000 (a second)",
        ),
        (
            "type = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1\"\ntimeout_ms = 0",
            "messaging.timeout_ms",
            "is 0; it must be at least 1 (milliseconds)",
        ),
        (
            "type = \"nats\"\nurl = \"nats://127.0.0.1:1\"\nmax_bytes = 4096",
            "messaging.max_bytes",
            "is 4096; it must be at least 1048576 (a MiB)",
        ),
        (
            "type = \"nats\"\nurl = \"nats://127.0.0.1:1\"\nmax_age_s = 4000000000",
            "messaging.max_age_s",
            "is 4000000000; it must be at most 3153600000 (a century), or 0 for ever",
        ),
        (
            "type = \"nats\"\nurl = \"nats://s3cret@127.0.0.1:1\"",
            "messaging.url",
            "inline token; reference it",
        ),
    ] {
        let t = TestApp::new(&manifest_named("badsetting", 5));
        let host = host_config(&t, &format!("[messaging]\n{settings}\n"));
        let Err(err) = t.load_with(&host).await else {
            panic!("{settings} loaded");
        };
        let text = format!("{err:#}");
        assert!(
            text.contains(&format!("`{key}`")) && text.contains(why),
            "{settings}: {text}"
        );
        assert!(!text.contains("s3cret"), "{text}");
    }
}
