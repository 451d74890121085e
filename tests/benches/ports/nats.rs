//! The NATS JetStream cases of the port benchmarks: publish, and
//! consume → handle → ack, each through a guest and natively in this
//! process. Each case also reports the CPU time per message spent by this
//! process and by the NATS server, which tells a slower side that is short
//! of CPU from one that waits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::app::App;
use berth_tests::{TestApp, assert_success, guests, host_config, run, unique};

use sqlx::Connection as _;

use super::cpu::{Cpu, CpuMeter};
use super::{MESSAGES, bench_app, output_value};

fn nats_host(t: &TestApp, url: &str) -> berth::config::HostConfig {
    nats_host_with(t, url, "")
}

/// The NATS host config followed by `more` (TOML of other resources).
fn nats_host_with(t: &TestApp, url: &str, more: &str) -> berth::config::HostConfig {
    host_config(
        t,
        &format!("[messaging]\ntype = \"nats\"\nurl = {url:?}\n{more}"),
    )
}

/// App `name`: component `handler` (`path`, with `grants` TOML lines)
/// consuming topic `work`.
fn handler_app(name: &str, path: &str, grants: &str, reuse: bool) -> TestApp {
    TestApp::new(&format!(
        "name = {name:?}\n[component.handler]\npath = {path:?}\n{grants}[[trigger.message]]\ntopic = \"work\"\ncomponent = \"handler\"\nreuse_instances = {reuse}\n"
    ))
}

async fn delete_stream(url: &str, app: &str) {
    let client = async_nats::connect(url).await.unwrap();
    let _ = async_nats::jetstream::new(client)
        .delete_stream(format!("BERTH_{app}"))
        .await;
}

pub(super) async fn nats_publish(url: &str) {
    let name = unique("benchpub");
    let t = bench_app(&name);
    let app = t.load_with(&nats_host(&t, url)).await.expect("app loads");
    let n = MESSAGES.to_string();
    assert_success(&run(&app, "guest", &["publish", "bench", "100"]).await); // warm-up

    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    let subject = format!("berth.{name}.msg.bench");
    let native = || async {
        let start = Instant::now();
        for _ in 0..MESSAGES {
            js.publish(subject.clone(), vec![0x42u8; 64].into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        start.elapsed().as_secs_f64()
    };
    native().await; // warm-up

    // Alternated rounds; each round's ratio compares runs seconds apart,
    // and the median of those ratios is reported (as for consume).
    let (mut guest_s, mut native_s) = (Vec::new(), Vec::new());
    for _ in 0..CONSUME_ROUNDS {
        let out = run(&app, "guest", &["publish", "bench", &n]).await;
        assert_success(&out);
        guest_s.push(
            output_value(&out.stdout, "publish_ns")
                .parse::<f64>()
                .unwrap()
                / 1e9,
        );
        native_s.push(native().await);
    }
    let m = MESSAGES as f64;
    let ratios = native_s.iter().zip(&guest_s).map(|(n, g)| n / g);
    println!(
        "## NATS JetStream publish, each awaiting the stream ack ({MESSAGES} × 64 B, medians of \
         {CONSUME_ROUNDS} rounds)\n"
    );
    println!("| | messages/s |\n|---|---|");
    println!(
        "| native async-nats | {:.0} |",
        m / median(native_s.iter().copied())
    );
    println!(
        "| guest through Berth | {:.0} |",
        m / median(guest_s.iter().copied())
    );
    println!(
        "| ratio (goal ≥ 0.7×), median of the rounds' ratios | {:.2}× |\n",
        median(ratios)
    );
    drop(app);
    delete_stream(url, &name).await;
}

/// Publishes `count` messages for the topic natively, awaiting the
/// stream's acks 500 at a time (the JetStream context caps the acks in
/// flight, so awaiting none until the end would stall).
async fn fill(js: &async_nats::jetstream::Context, subject: &str, count: u64) {
    let mut acks = Vec::with_capacity(500);
    for i in 0..count {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{subject}-{i}").as_str());
        acks.push(
            js.publish_with_headers(subject.to_owned(), headers, vec![0x42u8; 64].into())
                .await
                .unwrap(),
        );
        if acks.len() == 500 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

/// Waits until consumer `durable` of `stream` has acknowledged everything.
async fn drained(js: &async_nats::jetstream::Context, stream: &str, durable: &str) {
    loop {
        if let Ok(info) = js
            .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
                durable, stream,
            )
            .await
        {
            let mut consumer = info;
            let info = consumer.info().await.unwrap();
            if info.num_pending == 0
                && info.num_ack_pending == 0
                && info.delivered.stream_sequence > 0
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Messages per consume case: enough that the drain takes long enough
/// (a fraction of a second) for start-up costs and scheduling noise not to
/// decide the ratio.
const CONSUME_MESSAGES: u64 = 10_000;

/// Measured rounds of the publish and consume cases, after a warm-up.
const CONSUME_ROUNDS: usize = 5;

/// Deliveries in flight on each side (the trigger's default concurrency).
const IN_FLIGHT: usize = 16;
/// Connections in each side's Postgres pool when the handler records.
const RECORD_CONNECTIONS: u32 = 8;

/// What each side's handler does with a message before acknowledging it.
pub(super) enum Work {
    /// Nothing (`guests/bench_handler`): the case measures the consume →
    /// invoke → ack path alone, the worst case for a fresh instance per
    /// message.
    Nothing,
    /// Inserts the message id into table `effects` of Postgres schema
    /// `schema` once, `ON CONFLICT DO NOTHING` (`guests/bench_recorder`;
    /// the native loop runs the same statement with sqlx): the idempotent
    /// effect of a real handler, as in the scale-out test.
    Record { url: String, schema: String },
}

impl Work {
    /// Creates what the work needs (the schema and its table).
    async fn prepare(&self) {
        if let Work::Record { url, schema } = self {
            let mut admin = sqlx::PgConnection::connect(url).await.expect("postgres");
            for statement in [
                format!("CREATE SCHEMA {schema}"),
                format!("CREATE TABLE {schema}.effects (id TEXT PRIMARY KEY)"),
            ] {
                sqlx::query(&statement).execute(&mut admin).await.unwrap();
            }
        }
    }

    /// Drops what [`Work::prepare`] created.
    async fn clean_up(&self) {
        if let Work::Record { url, schema } = self {
            let mut admin = sqlx::PgConnection::connect(url).await.expect("postgres");
            let drop_schema = format!("DROP SCHEMA {schema} CASCADE");
            sqlx::query(&drop_schema).execute(&mut admin).await.unwrap();
        }
    }

    /// The handler component doing this work.
    fn handler(&self) -> &'static str {
        match self {
            Work::Nothing => guests::BENCH_HANDLER,
            Work::Record { .. } => guests::BENCH_RECORDER,
        }
    }

    /// The manifest lines the handler needs: its database and grant.
    fn grants(&self) -> &'static str {
        match self {
            Work::Nothing => "",
            Work::Record { .. } => "[sql.main]\n[component.handler.grants]\nsql = [\"main\"]\n",
        }
    }

    /// The host config lines the handler needs besides the broker.
    fn host_config(&self) -> String {
        match self {
            Work::Nothing => String::new(),
            Work::Record { url, schema } => format!(
                "[sql.main]\ntype = \"postgres\"\nurl = {url:?}\nschema = {schema:?}\n\
                 max_connections = {RECORD_CONNECTIONS}\n"
            ),
        }
    }

    /// The servers whose CPU time a drain reports besides this process's.
    fn servers(&self) -> &'static [&'static str] {
        match self {
            Work::Nothing => &["nats-server"],
            Work::Record { .. } => &["nats-server", "postgres"],
        }
    }

    /// Checks that every message of `subject`'s drain had its effect
    /// recorded exactly once.
    async fn assert_done(&self, subject: &str) {
        if let Work::Record { url, schema } = self {
            let mut admin = sqlx::PgConnection::connect(url).await.expect("postgres");
            let count: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM {schema}.effects WHERE id LIKE $1"
            ))
            .bind(format!("{subject}-%"))
            .fetch_one(&mut admin)
            .await
            .unwrap();
            assert_eq!(count, CONSUME_MESSAGES as i64, "effects of {subject}");
        }
    }
}

/// One timed drain of `CONSUME_MESSAGES` messages.
#[derive(Clone)]
struct Drain {
    secs: f64,
    cpu: Cpu,
}

impl Drain {
    /// The median of each figure over `drains`.
    fn median<'a>(drains: impl Iterator<Item = &'a Drain> + Clone) -> Drain {
        let servers = drains.clone().next().map_or(0, |d| d.cpu.servers.len());
        let server = |i: usize| {
            let each = drains.clone().map(|d| d.cpu.servers[i]);
            each.collect::<Option<Vec<u64>>>()
                .map(|ns| median(ns.into_iter().map(|ns| ns as f64)) as u64)
        };
        Drain {
            secs: median(drains.clone().map(|d| d.secs)),
            cpu: Cpu {
                process: median(drains.clone().map(|d| d.cpu.process as f64)) as u64,
                servers: (0..servers).map(server).collect(),
            },
        }
    }

    fn per_second(&self) -> f64 {
        CONSUME_MESSAGES as f64 / self.secs
    }

    /// `| label | messages/s | CPU µs per message: this process | each server |`.
    fn row(&self, label: &str) -> String {
        let per_message = |ns: u64| ns as f64 / 1e3 / CONSUME_MESSAGES as f64;
        let servers: Vec<String> = (self.cpu.servers.iter())
            .map(|ns| ns.map_or("–".to_string(), |ns| format!("{:.1}", per_message(ns))))
            .collect();
        format!(
            "| {label} | {:.0} | {:.1} | {} |",
            self.per_second(),
            per_message(self.cpu.process),
            servers.join(" | ")
        )
    }
}

/// Drains `CONSUME_MESSAGES` messages per side: a Berth message trigger
/// with a fresh instance per message (the default), one with warm
/// instances, and a native async-nats loop, each doing `work`.
pub(super) async fn nats_consume(url: &str, work: &Work) {
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    work.prepare().await;
    let mut rounds = Vec::new();
    for round in 0..=CONSUME_ROUNDS {
        // Berth's sides, then the native loop, so each round compares runs
        // seconds apart.
        let guest = berth_consume(&js, url, false, work).await;
        let warm = berth_consume(&js, url, true, work).await;
        let native = native_consume(&js, url, work).await;
        if round > 0 {
            // Round 0 warms the compile cache and connections.
            rounds.push([native, guest, warm]);
        }
    }
    work.clean_up().await;
    let (what, labels, servers) = match work {
        Work::Nothing => (
            "handle (no-op)",
            [
                "native async-nats pull consumer",
                "no-op guest handler through Berth (instance per message)",
                "no-op guest handler, `reuse_instances = true` (warm instances)",
            ],
            "NATS server |\n|---|---|---|---|",
        ),
        Work::Record { .. } => (
            "record the id in Postgres",
            [
                "native async-nats pull consumer + sqlx insert",
                "recording guest through Berth (instance per message)",
                "recording guest, `reuse_instances = true` (warm instances)",
            ],
            "NATS server | Postgres |\n|---|---|---|---|---|",
        ),
    };
    println!(
        "## NATS JetStream consume → {what} → ack ({CONSUME_MESSAGES} messages, {IN_FLIGHT} in \
         flight, medians of {CONSUME_ROUNDS} rounds)\n"
    );
    println!("| | messages/s | CPU µs per message: this process | {servers}");
    for (side, label) in labels.iter().enumerate() {
        println!(
            "{}",
            Drain::median(rounds.iter().map(|r| &r[side])).row(label)
        );
    }
    let ratio = |side: usize| median(rounds.iter().map(|r| r[0].secs / r[side].secs));
    let each = |side: usize| {
        let ratios: Vec<String> = rounds
            .iter()
            .map(|r| format!("{:.2}", r[0].secs / r[side].secs))
            .collect();
        ratios.join(", ")
    };
    println!(
        "\nRatio to native, median of the rounds' ratios (goal ≥ 0.7×): **{:.2}×** with an instance \
         per message (rounds: {}), **{:.2}×** with warm instances (rounds: {}).\n",
        ratio(1),
        each(1),
        ratio(2),
        each(2)
    );
    if let Work::Nothing = work {
        let (alone, _) = invocation_cost_us(url, 1, false).await;
        let (_, cpu) = invocation_cost_us(url, IN_FLIGHT, false).await;
        println!(
            "Berth's own cost per message, without the broker (store + instantiate + call + \
             teardown of the no-op handler): {alone:.1} µs one at a time; {cpu:.1} µs of CPU with \
             {IN_FLIGHT} at once.\n"
        );
    }
}

/// The median of `values`.
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A native durable pull consumer on the same kind of stream as Berth's,
/// doing `work` and acking each message from a task, `IN_FLIGHT` at a
/// time like Berth's trigger.
async fn native_consume(js: &async_nats::jetstream::Context, url: &str, work: &Work) -> Drain {
    use futures::StreamExt as _;
    let name = unique("benchnative");
    let t = bench_app(&name);
    let app = t.load_with(&nats_host(&t, url)).await.expect("stream");
    drop(app);
    let stream = format!("BERTH_{name}");
    let subject = format!("berth.{name}.msg.native");
    fill(js, &subject, CONSUME_MESSAGES).await;
    // Like Berth's, the pool is open before the drain starts.
    let record = match work {
        Work::Nothing => None,
        Work::Record { url, schema } => Some((
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(RECORD_CONNECTIONS)
                .connect(url)
                .await
                .expect("postgres"),
            Arc::new(format!(
                "INSERT INTO {schema}.effects (id) VALUES ($1) ON CONFLICT (id) DO NOTHING"
            )),
        )),
    };
    let (start, cpu) = (Instant::now(), CpuMeter::start(work.servers()));
    let consumer = js
        .get_stream(&stream)
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("native".into()),
            filter_subject: subject.clone(),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut acks = tokio::task::JoinSet::new();
    for _ in 0..CONSUME_MESSAGES {
        let msg = messages.next().await.unwrap().unwrap();
        let permit = slots.clone().acquire_owned().await.unwrap();
        let record = record.clone();
        acks.spawn(async move {
            std::hint::black_box(&msg.payload);
            if let Some((pool, insert)) = record {
                // The message id, found the way Berth's NATS adapter finds it.
                let id = (msg.headers.iter().flat_map(|h| h.iter()))
                    .find(|(name, _)| AsRef::<str>::as_ref(*name) == "Nats-Msg-Id")
                    .and_then(|(_, values)| values.first())
                    .map(|id| id.to_string())
                    .expect("fill sets a message id");
                sqlx::query(&insert).bind(id).execute(&pool).await.unwrap();
            }
            msg.ack().await.unwrap();
            drop(permit);
        });
    }
    while let Some(handled) = acks.join_next().await {
        handled.expect("the native handler");
    }
    drained(js, &stream, "native").await;
    let drain = Drain {
        secs: start.elapsed().as_secs_f64(),
        cpu: cpu.stop(),
    };
    work.assert_done(&subject).await;
    let _ = js.delete_stream(&stream).await;
    drain
}

/// A Berth message trigger on the handler of `work` draining
/// `CONSUME_MESSAGES` messages already in its stream.
async fn berth_consume(
    js: &async_nats::jetstream::Context,
    url: &str,
    reuse: bool,
    work: &Work,
) -> Drain {
    let name = unique("benchsub");
    let t = handler_app(&name, work.handler(), work.grants(), reuse);
    let host = nats_host_with(&t, url, &work.host_config());
    let app: Arc<App> = Arc::new(t.load_with(&host).await.expect("app loads"));
    let stream = format!("BERTH_{name}");
    let subject = format!("berth.{name}.msg.work");
    fill(js, &subject, CONSUME_MESSAGES).await;
    let (start, cpu) = (Instant::now(), CpuMeter::start(work.servers()));
    let mut tasks = tokio::task::JoinSet::new();
    berth::triggers::message::start(app.clone(), &mut tasks)
        .await
        .expect("trigger starts");
    // Watch the host's own count of handled messages (in this process)
    // rather than ask the server every few milliseconds while the trigger
    // runs: the native loop is not polled either, and each poll costs the
    // server and this process CPU the two sides share.
    let handled = || {
        berth::metrics::METRICS.get(
            "berth_invocations_total",
            &[("app", name.as_str()), ("outcome", "ok")],
        )
    };
    while handled() < CONSUME_MESSAGES {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drained(js, &stream, "handler__work").await;
    let drain = Drain {
        secs: start.elapsed().as_secs_f64(),
        cpu: cpu.stop(),
    };
    tasks.abort_all();
    drop(app);
    work.assert_done(&subject).await;
    let _ = js.delete_stream(&stream).await;
    drain
}

/// The no-op handler's cost per `handle_delivery`, without a broker:
/// wall-clock µs per delivery, and this process's CPU µs per delivery.
/// `in_flight` deliveries run at once, each in its own task as the trigger
/// runs them (1: one after another, in this task).
pub(super) async fn invocation_cost_us(url: &str, in_flight: usize, warm: bool) -> (f64, f64) {
    let name = unique("benchcall");
    let t = handler_app(&name, guests::BENCH_HANDLER, "", false);
    let app = Arc::new(t.load_with(&nats_host(&t, url)).await.expect("app loads"));
    let component = app.component("handler").unwrap();
    let pre = berth::bindings::MessageHandlerPre::new(component.pre.clone()).unwrap();
    let policy = Arc::new(berth::triggers::message::DeliveryPolicy::defaults("bench"));
    let pool = warm.then(berth::triggers::message::WarmPool::default);
    let calls = |count: u64| {
        let (app, pre, policy, pool) = (app.clone(), pre.clone(), policy.clone(), pool.clone());
        async move {
            if in_flight <= 1 {
                for i in 0..count {
                    deliver(&app, &pre, &policy, pool.as_ref(), i).await;
                }
                return;
            }
            let slots = Arc::new(tokio::sync::Semaphore::new(in_flight));
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..count {
                let permit = slots.clone().acquire_owned().await.unwrap();
                let (app, pre, policy, pool) =
                    (app.clone(), pre.clone(), policy.clone(), pool.clone());
                tasks.spawn(async move {
                    deliver(&app, &pre, &policy, pool.as_ref(), i).await;
                    drop(permit);
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.expect("a delivery");
            }
        }
    };
    const CALLS: u64 = 20_000;
    calls(1_000).await;
    let (start, cpu) = (Instant::now(), CpuMeter::start(&[]));
    calls(CALLS).await;
    let wall = start.elapsed().as_secs_f64() * 1e6 / CALLS as f64;
    let cpu = cpu.stop().process as f64 / 1e3 / CALLS as f64;
    drop(app);
    delete_stream(url, &name).await;
    (wall, cpu)
}

/// Delivery `i` (acked by no broker) to the no-op handler of `app`.
async fn deliver(
    app: &App,
    pre: &berth::bindings::MessageHandlerPre<berth::state::InstanceState>,
    policy: &berth::triggers::message::DeliveryPolicy,
    warm: Option<&berth::triggers::message::WarmPool>,
    i: u64,
) {
    let delivery = berth_tests::unacked_delivery(i);
    berth::triggers::message::handle_delivery(app, "handler", pre, delivery, policy, warm).await;
}
