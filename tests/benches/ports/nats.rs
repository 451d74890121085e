//! The NATS JetStream cases of the port benchmarks: publish, and
//! consume → handle → ack, each through a guest and natively in this
//! process. Each case also reports the CPU time per message spent by this
//! process and by the NATS server, which tells a slower side that is short
//! of CPU from one that waits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::app::App;
use berth_tests::{TestApp, assert_success, guests, host_config, run, unique};

use super::{MESSAGES, bench_app, output_value};

fn nats_host(t: &TestApp, url: &str) -> berth::config::HostConfig {
    host_config(t, &format!("[messaging]\ntype = \"nats\"\nurl = {url:?}\n"))
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

/// One timed drain of `CONSUME_MESSAGES` messages.
#[derive(Clone, Copy)]
struct Drain {
    secs: f64,
    cpu: Cpu,
}

impl Drain {
    /// The median of each figure over `drains`.
    fn median(drains: impl Iterator<Item = Drain> + Clone) -> Drain {
        let server = drains
            .clone()
            .map(|d| d.cpu.server)
            .collect::<Option<Vec<u64>>>();
        Drain {
            secs: median(drains.clone().map(|d| d.secs)),
            cpu: Cpu {
                process: median(drains.map(|d| d.cpu.process as f64)) as u64,
                server: server.map(|s| median(s.into_iter().map(|ns| ns as f64)) as u64),
            },
        }
    }

    fn per_second(self) -> f64 {
        CONSUME_MESSAGES as f64 / self.secs
    }

    /// `| messages/s | CPU µs per message: this process | NATS server |`.
    fn row(self, label: &str) -> String {
        let per_message = |ns: u64| ns as f64 / 1e3 / CONSUME_MESSAGES as f64;
        let server = self
            .cpu
            .server
            .map_or("–".to_string(), |ns| format!("{:.1}", per_message(ns)));
        format!(
            "| {label} | {:.0} | {:.1} | {server} |",
            self.per_second(),
            per_message(self.cpu.process)
        )
    }
}

/// CPU time (ns) used during a measurement by this process and by the
/// local NATS server (`None` if it is not a process of this machine).
#[derive(Clone, Copy)]
struct Cpu {
    process: u64,
    server: Option<u64>,
}

/// Reads the CPU time of this process and of the NATS server at start,
/// and their difference when [`CpuMeter::stop`] is called.
struct CpuMeter {
    server_pid: Option<u32>,
    at_start: (u64, Option<u64>),
}

impl CpuMeter {
    fn start() -> CpuMeter {
        let server_pid = pid_of("nats-server");
        let at_start = (cpu_ns("self"), server_pid.map(|p| cpu_ns(&p.to_string())));
        CpuMeter {
            server_pid,
            at_start,
        }
    }

    fn stop(self) -> Cpu {
        let server = self.server_pid.map(|p| cpu_ns(&p.to_string()));
        Cpu {
            process: cpu_ns("self").saturating_sub(self.at_start.0),
            server: server
                .zip(self.at_start.1)
                .map(|(b, a)| b.saturating_sub(a)),
        }
    }
}

/// CPU time (ns) used so far by the live threads of process `pid` (`self`
/// or a number), from `/proc/<pid>/task/*/schedstat`; 0 where unreadable.
fn cpu_ns(pid: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The pid of the process called `name`, if one runs here.
fn pid_of(name: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            (comm.trim() == name).then_some(pid)
        })
}

/// Measured rounds of the publish and consume cases, after a warm-up.
const CONSUME_ROUNDS: usize = 5;

pub(super) async fn nats_consume(url: &str) {
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    let mut rounds = Vec::new();
    for round in 0..=CONSUME_ROUNDS {
        // Berth: a message trigger on the no-op handler drains the topic,
        // with a fresh instance per message, then with warm instances; then
        // the native loop, so each round compares runs seconds apart.
        let guest = berth_consume(&js, url, false).await;
        let warm = berth_consume(&js, url, true).await;
        let native = native_consume(&js, url).await;
        if round > 0 {
            // Round 0 warms the compile cache and connections.
            rounds.push([native, guest, warm]);
        }
    }
    let per_invocation = invocation_cost_us(url).await;
    println!(
        "## NATS JetStream consume → handle → ack ({CONSUME_MESSAGES} messages, 16 in flight, \
         medians of {CONSUME_ROUNDS} rounds)\n"
    );
    println!(
        "| | messages/s | CPU µs per message: this process | NATS server |\n|---|---|---|---|"
    );
    let labels = [
        "native async-nats pull consumer",
        "no-op guest handler through Berth (instance per message)",
        "no-op guest handler, `reuse_instances = true` (warm instances)",
    ];
    for (side, label) in labels.iter().enumerate() {
        println!(
            "{}",
            Drain::median(rounds.iter().map(|r| r[side])).row(label)
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
    println!(
        "Berth's own cost per message, without the broker (store + instantiate + call + \
         teardown of the no-op handler, one at a time): {per_invocation:.1} µs.\n"
    );
}

/// The median of `values`.
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A native durable pull consumer on the same kind of stream as Berth's,
/// acking each message from a task, 16 at a time like Berth's trigger.
async fn native_consume(js: &async_nats::jetstream::Context, url: &str) -> Drain {
    use futures::StreamExt as _;
    let name = unique("benchnative");
    let t = bench_app(&name);
    let app = t.load_with(&nats_host(&t, url)).await.expect("stream");
    drop(app);
    let stream = format!("BERTH_{name}");
    let subject = format!("berth.{name}.msg.native");
    fill(js, &subject, CONSUME_MESSAGES).await;
    let (start, cpu) = (Instant::now(), CpuMeter::start());
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
    let slots = Arc::new(tokio::sync::Semaphore::new(16));
    let mut acks = tokio::task::JoinSet::new();
    for _ in 0..CONSUME_MESSAGES {
        let msg = messages.next().await.unwrap().unwrap();
        let permit = slots.clone().acquire_owned().await.unwrap();
        acks.spawn(async move {
            std::hint::black_box(&msg.payload);
            msg.ack().await.unwrap();
            drop(permit);
        });
    }
    while acks.join_next().await.is_some() {}
    drained(js, &stream, "native").await;
    let drain = Drain {
        secs: start.elapsed().as_secs_f64(),
        cpu: cpu.stop(),
    };
    let _ = js.delete_stream(&stream).await;
    drain
}

/// A Berth message trigger on the no-op handler draining
/// `CONSUME_MESSAGES` messages already in its stream.
async fn berth_consume(js: &async_nats::jetstream::Context, url: &str, reuse: bool) -> Drain {
    let name = unique("benchsub");
    let t = TestApp::new(&format!(
        "name = {name:?}\n[component.handler]\npath = {path:?}\n[[trigger.message]]\ntopic = \"work\"\ncomponent = \"handler\"\nreuse_instances = {reuse}\n",
        path = guests::BENCH_HANDLER
    ));
    let app: Arc<App> = Arc::new(t.load_with(&nats_host(&t, url)).await.expect("app loads"));
    let stream = format!("BERTH_{name}");
    fill(js, &format!("berth.{name}.msg.work"), CONSUME_MESSAGES).await;
    let (start, cpu) = (Instant::now(), CpuMeter::start());
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
    let _ = js.delete_stream(&stream).await;
    drain
}

/// Mean µs per `handle_delivery` of the no-op handler, sequentially.
pub(super) async fn invocation_cost_us(url: &str) -> f64 {
    let name = unique("benchcall");
    let t = TestApp::new(&format!(
        "name = {name:?}\n[component.handler]\npath = {path:?}\n[[trigger.message]]\ntopic = \"work\"\ncomponent = \"handler\"\n",
        path = guests::BENCH_HANDLER
    ));
    let app = t.load_with(&nats_host(&t, url)).await.expect("app loads");
    let component = app.component("handler").unwrap();
    let pre = berth::bindings::MessageHandlerPre::new(component.pre.clone()).unwrap();
    let policy = berth::triggers::message::DeliveryPolicy::defaults("bench");
    let call = |i: u64| {
        berth::triggers::message::handle_delivery(
            &app,
            "handler",
            &pre,
            berth_tests::unacked_delivery(i),
            &policy,
            None,
        )
    };
    const CALLS: u64 = 20_000;
    for i in 0..1_000 {
        call(i).await;
    }
    let start = Instant::now();
    for i in 0..CALLS {
        call(i).await;
    }
    let cost = start.elapsed().as_secs_f64() * 1e6 / CALLS as f64;
    drop(app);
    delete_stream(url, &name).await;
    cost
}
