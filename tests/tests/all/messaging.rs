use std::sync::Arc;
use std::time::Duration;

use berth::app::App;
use berth_tests::{TestApp, assert_success, guests, run};

pub(crate) fn manifest(max_deliveries: u32) -> String {
    manifest_named("msgtest", max_deliveries)
}

pub(crate) fn manifest_named(name: &str, max_deliveries: u32) -> String {
    format!(
        r#"
name = "{name}"
[kv.received]
memory = true
[component.publisher]
path = {publisher:?}
[component.publisher.grants]
publish = ["events"]
[component.handler]
path = {handler:?}
[component.handler.grants]
kv = ["received"]
[[trigger.message]]
topic = "events"
component = "handler"
max_deliveries = {max_deliveries}
"#,
        publisher = guests::MESSAGING_GUEST,
        handler = guests::MESSAGING_HANDLER,
    )
}

/// Headers a producer other than a guest (the port refuses `berth-` names
/// from guests) put on a message, posing as the host's dead-letter
/// headers: its dead letter must carry the host's own, each once.
pub(crate) fn spoofed_host_headers() -> Vec<(String, String)> {
    [
        ("berth-error", "spoofed"),
        ("BERTH-Attempts", "99"),
        ("berth-original-id", "not-the-id"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .to_vec()
}

/// Waits for the dead letter of message `id` (payload `fail-once`, header
/// `trace-id: t-1`, one failed delivery, maybe [`spoofed_host_headers`])
/// on `dead`, checks what it carries and acknowledges it.
pub(crate) async fn expect_dead_letter(
    dead: &mut Box<dyn berth::ports::messaging::Subscription>,
    id: &str,
) {
    let delivery = tokio::time::timeout(Duration::from_secs(10), dead.next())
        .await
        .expect("a dead letter arrives")
        .expect("subscription open");
    assert_eq!(delivery.message.payload, b"fail-once");
    for name in [
        "berth-original-id",
        "berth-original-topic",
        "berth-attempts",
        "berth-error",
    ] {
        let count = delivery
            .message
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .count();
        assert_eq!(count, 1, "{name} once in {:?}", delivery.message.headers);
    }
    let header = |name: &str| berth_tests::header(&delivery.message, name);
    assert_eq!(header("berth-original-id").as_deref(), Some(id));
    assert_eq!(header("berth-original-topic").as_deref(), Some("events"));
    assert_eq!(header("berth-attempts").as_deref(), Some("1"));
    assert_eq!(
        header("trace-id").as_deref(),
        Some("t-1"),
        "the message's own headers are kept"
    );
    assert!(
        header("berth-error")
            .unwrap()
            .contains("deliberate failure")
    );
    delivery.acker.ack().await;
}

pub(crate) async fn started(t: &TestApp) -> (Arc<App>, tokio::task::JoinSet<()>) {
    started_with(t, &berth::config::HostConfig::default()).await
}

pub(crate) async fn started_with(
    t: &TestApp,
    host: &berth::config::HostConfig,
) -> (Arc<App>, tokio::task::JoinSet<()>) {
    let app = Arc::new(t.load_with(host).await.unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    berth::triggers::message::start(app.clone(), &mut tasks)
        .await
        .unwrap();
    (app, tasks)
}

pub(crate) async fn received_count(app: &App) -> i64 {
    let value = app.backends.kv["received"].get("count").await.unwrap();
    value.map_or(0, |v| String::from_utf8(v).unwrap().parse().unwrap())
}

/// Waits up to 30 s for `expected` messages handled: a Kafka pattern
/// trigger finds new topics every 2 s and then rebalances its group, which
/// took over 10 s once with the whole suite running on two cores.
pub(crate) async fn wait_for_count(app: &App, expected: i64) {
    for _ in 0..1200 {
        if received_count(app).await >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(received_count(app).await, expected);
}

/// `[app_limits] messages_per_second` bounds what one app's guests publish,
/// as a retriable `unavailable`, and leaves other apps alone.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_publish_rate_limited_per_app() {
    let (ta, tb) = (
        TestApp::new(&manifest_named("ratea", 5)),
        TestApp::new(&manifest_named("rateb", 5)),
    );
    let a = ta
        .load_with(&berth_tests::host_config(
            &ta,
            "[app_limits]\nmessages_per_second = 5\n",
        ))
        .await
        .unwrap();
    let b = tb
        .load_with(&berth::config::HostConfig::default())
        .await
        .unwrap();
    async fn burst(app: &App) -> String {
        let out = run(app, "publisher", &["publish-burst", "events", "20"]).await;
        assert_success(&out);
        out.stdout.trim().to_owned()
    }
    // The burst of 5 is taken, and what refills while the guest runs (one
    // token per 200 ms); the rest is refused.
    let limited = burst(&a).await;
    let taken: u32 = limited
        .strip_prefix("taken ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{limited}"));
    assert!((5..=12).contains(&taken), "{limited}");
    assert_eq!(burst(&b).await, "taken 20 refused 0");
    let hits = |app| {
        berth::metrics::METRICS.get(
            "berth_limits_exceeded_total",
            &[("app", app), ("limit", "message_rate")],
        )
    };
    assert_eq!((hits("ratea"), hits("rateb")), (u64::from(20 - taken), 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn messaging_delivered_to_handler_embedded() {
    let t = TestApp::new(&manifest(5));
    let (app, _tasks) = started(&t).await;
    assert_success(&run(&app, "publisher", &["publish", "events", "10"]).await);
    wait_for_count(&app, 10).await;
    let kv = &app.backends.kv["received"];
    let last = String::from_utf8(kv.get("last-id").await.unwrap().unwrap()).unwrap();
    let payload = kv.get(&format!("payload/{last}")).await.unwrap().unwrap();
    assert!(payload.starts_with(b"msg-"), "{payload:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn messaging_request_reply_embedded() {
    let t = TestApp::new(&manifest(5));
    let (app, _tasks) = started(&t).await;
    assert_success(&run(&app, "publisher", &["request", "events"]).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn messaging_not_granted_topic_embedded() {
    let t = TestApp::new(&manifest(5));
    let (app, _tasks) = started(&t).await;
    assert_success(&run(&app, "publisher", &["not-granted", "other.topic"]).await);
}

/// Headers in JetStream's namespace (`Nats-Rollup`, `Nats-Msg-Id`…) would
/// steer the stream on NATS; the port refuses them on every backend, and
/// nothing is published.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_broker_headers_refused_embedded() {
    let t = TestApp::new(&manifest(5));
    let (app, _tasks) = started(&t).await;
    assert_success(&run(&app, "publisher", &["reserved-header", "events"]).await);
    assert_success(&run(&app, "publisher", &["publish", "events", "1"]).await);
    wait_for_count(&app, 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn messaging_redelivered_after_handler_error_embedded() {
    let t = TestApp::new(&manifest(5));
    let (app, _tasks) = started(&t).await;
    let id = app
        .backends
        .messaging
        .publish("events", b"fail-once".to_vec(), vec![])
        .await
        .unwrap();
    // First delivery fails, the second succeeds: two deliveries recorded,
    // both with the same message id.
    wait_for_count(&app, 2).await;
    let last = app.backends.kv["received"]
        .get("last-id")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8(last).unwrap(), id);
}

#[tokio::test(flavor = "multi_thread")]
async fn messaging_gives_up_after_max_deliveries_embedded() {
    let t = TestApp::new(&manifest(1));
    let (app, _tasks) = started(&t).await;
    app.backends
        .messaging
        .publish("events", b"fail-once".to_vec(), vec![])
        .await
        .unwrap();
    wait_for_count(&app, 1).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        received_count(&app).await,
        1,
        "no redelivery past max_deliveries = 1"
    );
}

/// What `instance-seq/<id>` says: how many messages the handling instance
/// had handled when it got message `id`.
async fn instance_seq(app: &App, id: &str) -> u32 {
    let value = app.backends.kv["received"]
        .get(&format!("instance-seq/{id}"))
        .await
        .unwrap()
        .expect("recorded");
    String::from_utf8(value).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn messaging_fresh_or_warm_instances_embedded() {
    for (reuse, expected) in [(false, [1, 1, 1, 1]), (true, [1, 2, 1, 2])] {
        let text = manifest(5).replace(
            "max_deliveries = 5",
            &format!("max_deliveries = 5\nreuse_instances = {reuse}"),
        );
        let t = TestApp::new(&text);
        let (app, _tasks) = started(&t).await;
        // One message at a time, so a warm instance is idle for the next.
        // `fail-once` fails its first delivery, which discards a warm
        // instance: its redelivery and the next message start afresh.
        let mut seen = Vec::new();
        let mut count = 0;
        for payload in ["a", "b", "fail-once", "c"] {
            let id = app
                .backends
                .messaging
                .publish("events", payload.as_bytes().to_vec(), vec![])
                .await
                .unwrap();
            count += if payload == "fail-once" { 2 } else { 1 };
            wait_for_count(&app, count).await;
            seen.push(instance_seq(&app, &id).await);
        }
        assert_eq!(seen, expected, "reuse_instances = {reuse}");
    }
}

/// A warm instance whose handler left an outbound request on its way
/// (sent, its answer not in) is not reused: the request would outlive its
/// message, and the next message's request count would start beside it.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_warm_instance_with_a_request_on_its_way_is_not_reused_embedded() {
    // A server that takes connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let text = manifest(5)
        .replace(guests::MESSAGING_HANDLER, guests::OUTBOUND_HANDLER)
        .replace(
            "max_deliveries = 5",
            "max_deliveries = 5\nreuse_instances = true",
        )
        .replace(
            "kv = [\"received\"]",
            &format!("kv = [\"received\"]\nhttp = [\"http://127.0.0.1:{port}\"]"),
        );
    let t = TestApp::new(&text);
    let host = berth_tests::host_config(&t, "[outbound]\nallow_private = [\"127.0.0.0/8\"]\n");
    let (app, _tasks) = started_with(&t, &host).await;
    let fire = format!("fire-127.0.0.1:{port}");
    let mut seen = Vec::new();
    for (count, payload) in ["a", "b", fire.as_str(), "c"].into_iter().enumerate() {
        let id = app
            .backends
            .messaging
            .publish("events", payload.as_bytes().to_vec(), vec![])
            .await
            .unwrap();
        wait_for_count(&app, count as i64 + 1).await;
        seen.push(instance_seq(&app, &id).await);
    }
    // Reused after `a`; not after the request left on its way.
    assert_eq!(seen, [1, 2, 3, 1]);
    silent.abort();
}

#[tokio::test]
async fn messaging_trigger_settings_and_dead_letter_topic_embedded() {
    let text = manifest(1).replace(
        "max_deliveries = 1",
        "max_deliveries = 1\nconcurrency = 2\nbackoff_ms = 10\nmax_backoff_ms = 50\ndead_letter = \"events.failed\"",
    );
    let t = TestApp::new(&text);
    let (app, _tasks) = started(&t).await;
    let messaging = &app.backends.messaging;
    let mut dead = messaging
        .subscribe("events.failed", "dlcheck")
        .await
        .unwrap();
    let mut headers = vec![("trace-id".to_owned(), "t-1".to_owned())];
    headers.extend(spoofed_host_headers());
    let id = messaging
        .publish("events", b"fail-once".to_vec(), headers)
        .await
        .unwrap();
    expect_dead_letter(&mut dead, &id).await;
    assert_eq!(
        received_count(&app).await,
        1,
        "delivered once, then dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn schedule_runs_handler_every_tick_embedded() {
    let manifest = manifest_named("schedtest", 3).replace(
        "[[trigger.message]]\ntopic = \"events\"",
        "[[trigger.schedule]]\nname = \"every-second\"\ncron = \"* * * * * *\"\ncomponent = \"handler\"\n[[trigger.message]]\ntopic = \"events\"",
    );
    let t = TestApp::new(&manifest);
    let app = Arc::new(t.load().await.unwrap());
    assert_eq!(app.manifest.schedule_triggers.len(), 1);
    let mut tasks = tokio::task::JoinSet::new();
    berth::triggers::start_background(app.clone(), &mut tasks)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    while received_count(&app).await < 2 {
        assert!(started.elapsed() < Duration::from_secs(10), "no ticks");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kv = &app.backends.kv["received"];
    let id = String::from_utf8(kv.get("last-id").await.unwrap().unwrap()).unwrap();
    let second: u64 = id
        .strip_prefix("tick-every-second-")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("tick id {id:?}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(second) <= 5, "tick {second} at {now}");
    // A tick carries no payload.
    let payload = kv.get(&format!("payload/{id}")).await.unwrap().unwrap();
    assert!(payload.is_empty());
    tasks.abort_all();
}

/// Stopping an app (a host shutting down, a version replaced) takes no
/// more deliveries but lets a running handler finish and acknowledge its
/// message within the grace; one still running when the grace runs out is
/// cancelled and its message delivered again, not counted as an attempt.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_stopping_drains_running_handlers_embedded() {
    let t = TestApp::new(&manifest_named("drain", 3));
    let app = Arc::new(t.load().await.unwrap());
    let messaging = &app.backends.messaging;
    let kv = &app.backends.kv["received"];

    // Finishes within the grace.
    let mut tasks = tokio::task::JoinSet::new();
    berth::triggers::start_background(app.clone(), &mut tasks)
        .await
        .unwrap();
    let slow = messaging
        .publish("events", b"slow-1500".to_vec(), vec![])
        .await
        .unwrap();
    wait_for_count(&app, 1).await;
    let started = std::time::Instant::now();
    berth::triggers::stop_background(&app, tasks, Duration::from_secs(10)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopping waited for the handler, not the whole grace"
    );
    assert_eq!(
        kv.get(&format!("done/{slow}")).await.unwrap(),
        Some(b"1".to_vec()),
        "the running handler finished before the app stopped"
    );
    // Published after the stop: left for the next host.
    let late = messaging
        .publish("events", b"late".to_vec(), vec![])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        received_count(&app).await,
        1,
        "a stopped app took a delivery"
    );
    let mut next = messaging.subscribe("events", "handler").await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(5), next.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.message.id, late, "the slow message was acknowledged");
    d.acker.ack().await;
    drop(next);

    // Still running when the grace runs out: cancelled, delivered again.
    let t = TestApp::new(&manifest_named("drain2", 3));
    let app = Arc::new(t.load().await.unwrap());
    let messaging = &app.backends.messaging;
    let mut tasks = tokio::task::JoinSet::new();
    berth::triggers::start_background(app.clone(), &mut tasks)
        .await
        .unwrap();
    let stuck = messaging
        .publish("events", b"slow-4000".to_vec(), vec![])
        .await
        .unwrap();
    wait_for_count(&app, 1).await;
    let started = std::time::Instant::now();
    berth::triggers::stop_background(&app, tasks, Duration::from_millis(300)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the grace bounds the stop"
    );
    let mut next = messaging.subscribe("events", "handler").await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(5), next.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (d.message.id.as_str(), d.message.attempt),
        (stuck.as_str(), 1)
    );
    d.acker.ack().await;
    assert_eq!(
        app.backends.kv["received"]
            .get(&format!("done/{stuck}"))
            .await
            .unwrap(),
        None,
        "the cancelled handler did not finish"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn schedule_refuses_a_component_that_is_not_a_handler_embedded() {
    let manifest = format!(
        "{}[[trigger.schedule]]\ncron = \"@hourly\"\ncomponent = \"publisher\"\n",
        manifest_named("schedbad", 3)
    );
    let Err(err) = TestApp::new(&manifest).load().await else {
        panic!("an app scheduling a command loaded");
    };
    let text = format!("{err:#}");
    assert!(
        text.contains("schedule `publisher`")
            && text.contains("does not export berth:infra/handler"),
        "{text}"
    );
}
