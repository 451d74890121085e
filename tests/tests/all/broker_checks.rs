//! What `berth check` (a dry run of a load) and a load find out about a
//! broker, and what a check leaves alone: servers of each test's own
//! started beside the shared ones (a NATS server without JetStream or
//! whose user may not use its API, an MQTT broker that lets in only the
//! host's client ids), and the shared RabbitMQ and Kafka, on which a
//! check declares and makes nothing.

use std::time::Duration;

use berth_tests::{TestApp, dry_run, host_config, service, unique};

use crate::brokers::Broker;
use crate::messaging::manifest_named;

/// A NATS server without JetStream fails a dry run (`berth check`) as it
/// fails a load, naming JetStream, rather than passing a check that
/// cannot make the app's stream. The server is one of this test's own,
/// started without `-js`, beside the shared one.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_check_needs_jetstream_nats() {
    if service("BERTH_TEST_NATS_URL").is_none() {
        return;
    }
    let Some((_server, address)) = own_nats_server(&[]).await else {
        return;
    };
    let url = format!("nats://{address}");
    let t = TestApp::new(&manifest_named(&unique("nojs"), 5));
    let plain = format!("[messaging]\ntype = \"nats\"\nurl = {url:?}\n");
    let checking = dry_run(&t, host_config(&t, &plain));
    let checked = t.load_with(&checking).await.err().expect("the check fails");
    let loaded = t
        .load_with(&host_config(&t, &plain))
        .await
        .err()
        .expect("the load fails");
    let checked = format!("{checked:#}");
    assert!(checked.contains("messaging"), "{checked}");
    assert!(checked.contains("JetStream"), "{checked}");
    let loaded = format!("{loaded:#}");
    assert!(loaded.contains("messaging"), "{loaded}");
    assert!(loaded.contains("JetStream"), "{loaded}");
}

/// A user the server does not let use the JetStream API gets no answer at
/// all (the server only logs a permissions violation): the load fails
/// after `timeout_ms`, saying so, rather than waiting for ever.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_load_ends_when_jetstream_never_answers_nats() {
    if service("BERTH_TEST_NATS_URL").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nats.conf");
    std::fs::write(
        &config,
        format!(
            "jetstream {{ store_dir: {:?} }}\nauthorization {{ users = [ {{ user: \"app\", password: \"s3cret-pw\", permissions: {{ publish: {{ deny: [\"$JS.API.>\"] }} }} }} ] }}\n",
            dir.path().join("js")
        ),
    )
    .unwrap();
    let Some((_server, address)) = own_nats_server(&["-c", config.to_str().unwrap()]).await else {
        return;
    };
    let url_file = dir.path().join("nats-url");
    std::fs::write(&url_file, format!("nats://app:s3cret-pw@{address}")).unwrap();
    let t = TestApp::new(&manifest_named(&unique("noapi"), 5));
    let host = format!(
        "[messaging]\ntype = \"nats\"\nurl = \"${{file:{}}}\"\ntimeout_ms = 500\n",
        url_file.display()
    );
    let started = std::time::Instant::now();
    let loaded = tokio::time::timeout(
        Duration::from_secs(30),
        t.load_with(&host_config(&t, &host)),
    )
    .await
    .expect("the load ends")
    .err()
    .expect("the load fails");
    let loaded = format!("{loaded:#}");
    assert!(
        loaded.contains("did not answer the JetStream API"),
        "{loaded}"
    );
    assert!(loaded.contains("500 ms"), "{loaded}");
    assert!(!loaded.contains("s3cret-pw"), "{loaded}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

/// A broker that lets in only client ids beginning with the host's
/// (Mosquitto's `clientid_prefixes`, as an ACL by client id would) lets
/// the check in too: the check connects under the host's id with a suffix
/// of its own, as the triggers' clients do, never under the running
/// host's id itself, whose client it would replace.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_check_connects_under_the_hosts_client_id_mqtt() {
    if service("BERTH_TEST_MQTT_URL").is_none() {
        return;
    }
    let name = unique("mqttchk");
    let prefix = format!("berth-{name}-edge7");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mosquitto.conf");
    let Some((_server, address)) = own_server("mosquitto", &["/usr/sbin/mosquitto"], |port| {
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nclientid_prefixes {prefix}\n"
            ),
        )
        .unwrap();
        vec!["-c".to_owned(), config.display().to_string()]
    })
    .await
    else {
        return;
    };
    let t = TestApp::new(&manifest_named(&name, 5));
    let host = |client_id: &str| {
        format!(
            "[messaging]\ntype = \"mqtt\"\nurl = \"mqtt://{address}\"\nclient_id = \"{client_id}\"\ntimeout_ms = 2000\n"
        )
    };
    let checking = |client_id: &str| dry_run(&t, host_config(&t, &host(client_id)));
    drop(t.load_with(&checking("edge7")).await.unwrap());
    drop(t.load_with(&host_config(&t, &host("edge7"))).await.unwrap());
    // The broker does refuse other ids, and both say so.
    let checked = t
        .load_with(&checking("other"))
        .await
        .err()
        .expect("refused");
    let loaded = t
        .load_with(&host_config(&t, &host("other")))
        .await
        .err()
        .expect("refused");
    // Mosquitto refuses an id outside its prefixes as not authorized.
    for refused in [format!("{checked:#}"), format!("{loaded:#}")] {
        assert!(
            refused.contains("messaging")
                && refused.contains("the MQTT broker refused the connection: NotAuthorized"),
            "{refused}"
        );
    }
}

/// A dry run connects to RabbitMQ but declares no exchange or queue: a
/// check of an app not yet deployed leaves nothing on the broker. The load
/// after it declares the app's exchange, which the same look then finds.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_check_declares_nothing_rabbitmq() {
    let Some(url) = service("BERTH_TEST_AMQP_URL") else {
        return;
    };
    let name = unique("rchk");
    let broker = Broker::Rabbit(url.clone());
    let t = TestApp::new(&manifest_named(&name, 5));
    let checking = dry_run(&t, host_config(&t, &broker.host_toml(&t)));
    drop(t.load_with(&checking).await.unwrap());
    let exchange = format!("berth.{name}");
    assert!(
        !exchange_exists(&url, &exchange).await,
        "the check declared"
    );
    let app = t
        .load_with(&host_config(&t, &broker.host_toml(&t)))
        .await
        .unwrap();
    assert!(exchange_exists(&url, &exchange).await, "the load declared");
    drop(app);
    broker.cleanup(&name).await;
}

/// Whether RabbitMQ has exchange `name`: a passive declare, which the
/// broker refuses (closing the channel) for an exchange it lacks.
async fn exchange_exists(url: &str, name: &str) -> bool {
    use lapin::options::ExchangeDeclareOptions;
    let properties = lapin::ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    let connection = lapin::Connection::connect(url, properties).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let found = channel
        .exchange_declare(
            name,
            lapin::ExchangeKind::Topic,
            passive,
            lapin::types::FieldTable::default(),
        )
        .await
        .is_ok();
    let _ = connection.close(200, "looked").await;
    found
}

/// A dry run connects to Kafka but makes no topic: before, each check of
/// an app not yet deployed left its reply topic on the cluster. The load
/// after it makes the reply topic, which the same listing then shows.
#[tokio::test(flavor = "multi_thread")]
async fn messaging_check_makes_no_topic_kafka() {
    let Some(url) = service("BERTH_TEST_KAFKA_URL") else {
        return;
    };
    let name = unique("kchk");
    let broker = Broker::Kafka(url.clone());
    let t = TestApp::new(&manifest_named(&name, 5));
    let checking = dry_run(&t, host_config(&t, &broker.host_toml(&t)));
    drop(t.load_with(&checking).await.unwrap());
    let kafka = krafka::Kafka::builder(url.trim_start_matches("kafka://"))
        .connect()
        .await
        .unwrap();
    let (kafka, name) = (&kafka, &name);
    let app_topics = move || async move {
        let all = kafka
            .admin()
            .list_topics(krafka::admin::ListTopicsOptions::default())
            .await
            .unwrap();
        all.into_iter()
            .filter(|topic| topic.starts_with(&format!("berth.{name}.")))
            .collect::<Vec<_>>()
    };
    assert_eq!(app_topics().await, Vec::<String>::new(), "the check made");
    let app = t
        .load_with(&host_config(&t, &broker.host_toml(&t)))
        .await
        .unwrap();
    assert_eq!(
        app_topics().await,
        [format!("berth.{name}.__reply")],
        "the load made"
    );
    drop(app);
}

/// A nats-server of the test's own, with `args` (none: without
/// JetStream), and its address (`127.0.0.1:<port>`); `None` (the test
/// skipped) where the binary is missing and services are not required.
async fn own_nats_server(args: &[&str]) -> Option<(KillOnDrop, String)> {
    own_server("nats-server", &["/usr/sbin/nats-server"], |port| {
        ["-a", "127.0.0.1", "-p", &port.to_string()]
            .into_iter()
            .chain(args.iter().copied())
            .map(str::to_owned)
            .collect()
    })
    .await
}

/// Starts `binary` (from `PATH`, else the first of `elsewhere` that
/// exists) with the arguments `args` gives for a free local port, and
/// returns it with its address once it accepts connections; `None` (the
/// test skipped) where the binary is missing and services are not
/// required. A port another process takes between its choice and the
/// server's start is chosen again.
async fn own_server(
    binary: &str,
    elsewhere: &[&str],
    mut args: impl FnMut(u16) -> Vec<String>,
) -> Option<(KillOnDrop, String)> {
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let args = args(port);
        let spawn = |binary: &str| {
            std::process::Command::new(binary)
                .args(&args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
        };
        let spawned = elsewhere.iter().fold(spawn(binary), |spawned, other| {
            spawned.or_else(|_| spawn(other))
        });
        let mut server = match spawned {
            Ok(server) => KillOnDrop(server),
            Err(e) => {
                // The shared server may be remote; this test needs the binary.
                assert!(
                    std::env::var("BERTH_TEST_REQUIRE_SERVICES").as_deref() != Ok("1"),
                    "cannot start {binary} (neither on PATH nor at {elsewhere:?}): {e}"
                );
                eprintln!("SKIPPED: cannot start {binary}: {e}");
                return None;
            }
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if server.0.try_wait().unwrap().is_some() {
                break; // the port was taken: choose another
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Some((server, format!("127.0.0.1:{port}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("{binary} did not start on any of five ports");
}

/// Kills the child process when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
