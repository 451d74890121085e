//! Serving benchmarks: Berth's per-request path against the reference host
//! (`wasmtime serve`, wasmtime-cli 48) and native baselines, each ratio from
//! one run of this program. Not a test: nothing here asserts a time.
//! Results go to `docs/benchmarks.md`.
//!
//! ```sh
//! just bench-serve      # installs wasmtime-cli 48 once, builds berth, then:
//! cargo bench -p berth-tests --bench serve
//! ```
//!
//! Groups (`BERTH_BENCH_ONLY=b1,b2,…` runs some):
//! - **B1** HTTP hello world: `berth serve`, `wasmtime serve` and a native
//!   hyper server, each pinned to core 0, loaded from core 1 by this
//!   process at concurrency 1, 16 and 64.
//! - **B2** instantiate + no-op call: Berth's full per-invocation path
//!   against bare wasmtime on the same engine.
//! - **B3** host-call boundary: the cheapest port call, and 1 MiB `list<u8>`
//!   each way, against memcpy.
//! - **B5** idle memory per loaded app, 1,000 small apps.
//! - **B6** instances held open awaiting a slow upstream, and the answer
//!   past the host's capacity.
//! - **B7** cold start to first byte from the compiled cache (~2 MB
//!   component).
//! - **B8** a CPU-bound guest with epoch interruption on (Berth) and off.
//!
//! B1 needs `wasmtime` (`scripts/bench-tools.sh` installs it and prints its
//! path; `BERTH_BENCH_WASMTIME` overrides) and the release `berth` binary
//! beside this one (`cargo build --release -p berth`); without them the
//! missing side is reported as skipped.

#[path = "serve/support.rs"]
mod serve_support;

#[path = "serve/b1.rs"]
mod b1;
#[path = "serve/b6.rs"]
mod b6;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth::app::App;
use berth_tests::{TestApp, guests, run, single_component_manifest};
use serve_support::*;

fn main() {
    if let Ok(role) = std::env::var("BERTH_BENCH_ROLE") {
        return serve_support::run_role(&role);
    }
    let only = std::env::var("BERTH_BENCH_ONLY").unwrap_or_default();
    let wanted = |group: &str| only.is_empty() || only.split(',').any(|g| g == group);
    println!("# Berth serving benchmarks\n");
    println!("{}\n", machine_description());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        if wanted("b2") {
            b2_instantiate_and_call().await;
        }
        if wanted("b3") {
            b3_host_call_boundary().await;
        }
        if wanted("b8") {
            b8_epoch_interruption().await;
        }
        if wanted("b5") {
            b5_idle_memory_per_app().await;
        }
        if wanted("b7") {
            b7_cold_start().await;
        }
        if wanted("b6") {
            b6::b6_held_instances().await;
        }
    });
    drop(runtime);
    if wanted("b1") {
        b1::b1_hello_world();
    }
}

// --------------------------------------------------------------------- B2

/// Alternated rounds per side, calls per round.
const B2_ROUNDS: usize = 5;
const B2_CALLS: usize = 5_000;

async fn b2_instantiate_and_call() {
    println!("## B2: instantiate + no-op call (`guests/bench_handler`)\n");
    let t = TestApp::new(&format!(
        "name = \"b2\"\n[component.handler]\npath = {path:?}\n[[trigger.message]]\ntopic = \"work\"\ncomponent = \"handler\"\n",
        path = guests::BENCH_HANDLER
    ));
    let app = t.load().await.expect("app loads");
    let component = app.component("handler").unwrap();
    let berth_pre = berth::bindings::MessageHandlerPre::new(component.pre.clone()).unwrap();
    let bare = BareHost::new(
        app.engine().engine(),
        Path::new(guests::BENCH_HANDLER),
        &app,
    );
    let bare_pre = berth::bindings::MessageHandlerPre::new(bare.pre.clone()).unwrap();
    let policy = berth::triggers::message::DeliveryPolicy::defaults("bench");
    let (mut berth_samples, mut bare_samples) = (Vec::new(), Vec::new());
    for round in 0..=B2_ROUNDS {
        let keep = round > 0; // round 0 warms both sides up
        let mut samples = Vec::with_capacity(B2_CALLS);
        for i in 0..B2_CALLS {
            let started = Instant::now();
            berth::triggers::message::handle_delivery(
                &app,
                "handler",
                &berth_pre,
                berth_tests::unacked_delivery(i as u64),
                &policy,
                None,
            )
            .await;
            samples.push(started.elapsed().as_nanos() as u64);
        }
        if keep {
            berth_samples.push(percentiles(samples));
        }
        let mut samples = Vec::with_capacity(B2_CALLS);
        for i in 0..B2_CALLS {
            let started = Instant::now();
            let mut store = bare.store();
            let handler = bare_pre.instantiate_async(&mut store).await.unwrap();
            let result = handler
                .berth_infra_handler()
                .call_handle(&mut store, &wit_message(i))
                .await
                .unwrap();
            drop(store);
            samples.push(started.elapsed().as_nanos() as u64);
            assert!(result.is_ok());
        }
        if keep {
            bare_samples.push(percentiles(samples));
        }
    }
    let (berth, bare) = (median_pair(&berth_samples), median_pair(&bare_samples));
    println!(
        "{B2_ROUNDS} alternated rounds of {B2_CALLS} sequential invocations per side; medians over rounds.\n"
    );
    println!("| | p50 µs | p99 µs |\n|---|---|---|");
    println!(
        "| bare wasmtime (same engine, WASI only, store + instantiate + call) | {:.2} | {:.2} |",
        bare.0, bare.1
    );
    println!(
        "| Berth (`handle_delivery`: slots, store with limits and grants, instantiate, call, metrics, settle) | {:.2} | {:.2} |",
        berth.0, berth.1
    );
    println!(
        "| ratio (goal p50 ≤ 10 µs and ≤ 1.5×) | **{:.2}×** | {:.2}× |\n",
        berth.0 / bare.0,
        berth.1 / bare.1
    );
}

fn wit_message(i: usize) -> berth::bindings::ports::messaging_types::Message {
    berth::ports::messaging::host::message_to_wit(berth_tests::unacked_delivery(i as u64).message)
}

// --------------------------------------------------------------------- B3

/// What `guests/bench_guest` imports must be declared and granted.
const BENCH_GUEST_DECLS: &str =
    "[sql.main]\n[blob.files]\n[config]\ngreeting = \"hello\"\n[kv.cache]\nmemory = true";
const BENCH_GUEST_GRANTS: &str = "sql = [\"main\"]\nblob = [\"files\"]\npublish = [\"bench\"]\nconfig = [\"greeting\"]\nkv = [\"cache\"]";

const B3_CALLS: u64 = 200_000;
const B3_MIB_ROUNDS: u64 = 200;

async fn b3_host_call_boundary() {
    println!("## B3: host-call boundary (`guests/bench_guest`)\n");
    let manifest = format!(
        "{}\n[component.guest.limits]\nkv_max_value_kb = 2048\n",
        single_component_manifest(
            "b3",
            guests::BENCH_GUEST,
            BENCH_GUEST_DECLS,
            BENCH_GUEST_GRANTS,
        )
    );
    let t = TestApp::new(&manifest);
    let app = t.load().await.expect("app loads");
    // Warm-up, then the measured runs.
    let n = B3_CALLS.to_string();
    run_ok(&app, &["host-calls", "greeting", "10000"]).await;
    let out = run_ok(&app, &["host-calls", "greeting", &n]).await;
    let per_call = |key| value(&out, key) as f64 / B3_CALLS as f64;
    let (config_ns, clock_ns) = (per_call("config_get_ns"), per_call("clock_now_ns"));
    let rounds = B3_MIB_ROUNDS.to_string();
    run_ok(&app, &["bytes", "cache", "20"]).await;
    let out = run_ok(&app, &["bytes", "cache", &rounds]).await;
    let mib_per_s = |key| B3_MIB_ROUNDS as f64 / (value(&out, key) as f64 / 1e9);
    let (set, get, guest_copy) = (
        mib_per_s("set_ns"),
        mib_per_s("get_ns"),
        mib_per_s("memcpy_ns"),
    );
    let native_copy = native_memcpy_mib_per_s();
    println!("| call | ns per call |\n|---|---|");
    println!(
        "| `config.get` of a granted key (a port call: grant check, lookup, metering) | **{config_ns:.0}** (goal ≤ 100) |"
    );
    println!(
        "| `wasi:clocks/monotonic-clock.now` (wasmtime-wasi's own, for scale) | {clock_ns:.0} |\n"
    );
    println!(
        "| 1 MiB `list<u8>` | MiB/s | of guest memcpy | of native memcpy |\n|---|---|---|---|"
    );
    println!(
        "| memcpy inside the guest | {guest_copy:.0} | 1.00 | {:.2} |",
        guest_copy / native_copy
    );
    println!("| memcpy native (this process) | {native_copy:.0} | | 1.00 |");
    println!(
        "| into the host: `kv.set` on the memory bucket | {set:.0} | {:.2} | **{:.2}** (goal ≥ 0.5) |",
        set / guest_copy,
        set / native_copy
    );
    println!(
        "| out of the host: `kv.get` on the memory bucket | {get:.0} | {:.2} | **{:.2}** (goal ≥ 0.5) |\n",
        get / guest_copy,
        get / native_copy
    );
}

fn native_memcpy_mib_per_s() -> f64 {
    let src: Vec<u8> = (0..1usize << 20).map(|i| (i % 251) as u8).collect();
    let mut dst = vec![0u8; 1 << 20];
    for _ in 0..20 {
        dst.copy_from_slice(&src);
    }
    let started = Instant::now();
    for _ in 0..B3_MIB_ROUNDS {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&dst);
    }
    B3_MIB_ROUNDS as f64 / started.elapsed().as_secs_f64()
}

// --------------------------------------------------------------------- B8

const B8_ROUNDS: u64 = 400_000_000;

async fn b8_epoch_interruption() {
    println!("## B8: CPU-bound guest, epoch interruption on and off\n");
    let t = TestApp::new(&single_component_manifest("b8", guests::CPU_GUEST, "", ""));
    let app = t.load().await.expect("app loads");
    let mut settings = app.engine().settings().clone();
    settings.max_instances = 8;
    let mut config = berth::engine::engine_config(&settings);
    config.epoch_interruption(false);
    let plain = wasmtime::Engine::new(&config).expect("engine without epochs");
    let bare = BareHost::new(&plain, Path::new(guests::CPU_GUEST), &app);
    let n = B8_ROUNDS.to_string();
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let out = run_ok(&app, &[&n]).await;
        on.push(value(&out, "cpu_ns"));
        let out = bare.run_command(&[&n]).await;
        off.push(value(&out, "cpu_ns"));
    }
    let (on, off) = (median(on) as f64 / 1e6, median(off) as f64 / 1e6);
    println!(
        "{B8_ROUNDS} rounds of xorshift mixing, timed inside the guest; median of 3 alternated runs.\n"
    );
    println!("| | ms |\n|---|---|");
    println!(
        "| epoch interruption off (bare wasmtime, otherwise Berth's engine config) | {off:.1} |"
    );
    println!("| epoch interruption on (Berth: 10 ms ticks, a yield per tick) | {on:.1} |");
    println!("| slowdown (goal ≤ 1.15×) | **{:.3}×** |\n", on / off);
}

// --------------------------------------------------------------------- B5

const B5_SHARED_APPS: usize = 1_000;
const B5_DISTINCT_APPS: usize = 200;

async fn b5_idle_memory_per_app() {
    println!("## B5: idle memory per loaded app (`berth serve`, `guests/http_guest` apps)\n");
    let cache = bench_dir().join("b5-cache");
    let shared = apps_rss(B5_SHARED_APPS, false, &cache).await;
    let distinct = apps_rss(B5_DISTINCT_APPS, true, &cache).await;
    println!(
        "RSS of this process before and after `Tenants::sync` loaded the apps: a new engine, components compiled beforehand into the on-disk cache, so the growth is what loaded apps hold (manifest, backends, compiled code mapped from the cache, `InstancePre`s, metrics).\n"
    );
    println!("| apps | component | RSS growth MiB | per app KiB |\n|---|---|---|---|");
    for (n, what, bytes) in [
        (
            B5_SHARED_APPS,
            "the same component file for every app",
            shared,
        ),
        (B5_DISTINCT_APPS, "a distinct component per app", distinct),
    ] {
        println!(
            "| {n} | {what} | {:.1} | **{:.0}** (goal ≤ 1,024) |",
            bytes as f64 / f64::from(1 << 20),
            bytes as f64 / n as f64 / 1024.0
        );
    }
    println!();
}

/// RSS growth of loading `n` apps under one `Tenants`.
async fn apps_rss(n: usize, distinct: bool, cache: &Path) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let wasm = std::fs::read(guests::HTTP_GUEST).unwrap();
    for i in 0..n {
        let app = dir.path().join(format!("app{i:04}"));
        std::fs::create_dir_all(&app).unwrap();
        let component = app.join("web.wasm");
        if distinct {
            std::fs::write(&component, with_custom_section(&wasm, &format!("app{i}"))).unwrap();
        } else {
            std::fs::copy(guests::HTTP_GUEST, &component).unwrap();
        }
        std::fs::write(
            app.join("berth.toml"),
            format!(
                "name = \"app{i:04}\"\n[component.web]\npath = \"web.wasm\"\n[component.web.grants]\nhttp = [\"https://api.example.com\"]\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"web\"\n"
            ),
        )
        .unwrap();
    }
    let settings = berth::engine::EngineSettings {
        max_instances: 100,
        max_memory_bytes: 64 << 20,
        cache_dir: cache.to_path_buf(),
        ..Default::default()
    };
    // Compile into the on-disk cache first, on an engine dropped before the
    // measurement, so the figure is what loaded apps hold: neither the
    // compiler's transient memory nor a copy kept by that engine.
    let compiler = berth::engine::HostEngine::new(settings.clone()).unwrap();
    let components = if distinct { n } else { 1 };
    for i in 0..components {
        let path = dir.path().join(format!("app{i:04}/web.wasm"));
        compiler.load_component(&path).await.unwrap();
    }
    drop(compiler);
    let engine = berth::engine::HostEngine::new(settings).unwrap();
    let mut host = berth::config::HostConfig::default();
    host.state_dir = Some(dir.path().join(".state")); // no app can take a dot-name
    let tenants = berth::tenants::Tenants::new(engine, host, dir.path().to_path_buf());
    let before = rss_bytes();
    let errors = tenants.sync().await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(tenants.app_names().len(), n);
    let grown = rss_bytes().saturating_sub(before);
    drop(tenants);
    grown
}

/// `wasm` with a custom section appended: the same code under new bytes.
fn with_custom_section(wasm: &[u8], name: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut payload = Vec::new();
    leb("berth-bench".len(), &mut payload);
    payload.extend_from_slice(b"berth-bench");
    payload.extend_from_slice(name.as_bytes());
    let mut out = wasm.to_vec();
    out.push(0);
    leb(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

// --------------------------------------------------------------------- B7

const B7_RUNS: usize = 20;

async fn b7_cold_start() {
    println!("## B7: cold start to first byte from the compiled cache\n");
    let wasm = big_guest();
    let size = std::fs::metadata(&wasm).unwrap().len();
    let cache = bench_dir().join("b7-cache");
    let t = TestApp::new(&format!(
        "name = \"b7\"\n[component.web]\npath = {wasm:?}\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"web\"\n"
    ));
    let settings = berth::engine::EngineSettings {
        max_instances: 16,
        max_memory_bytes: 64 << 20,
        cache_dir: cache.clone(),
        ..Default::default()
    };
    // Fill the cache once.
    berth::engine::HostEngine::new(settings.clone())
        .unwrap()
        .load_component(&wasm)
        .await
        .unwrap();
    let mut in_host = Vec::new();
    for _ in 0..B7_RUNS {
        // A new engine each time, so nothing is reused in memory: the app
        // comes from the on-disk cache, as after a restart.
        let engine = berth::engine::HostEngine::new(settings.clone()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let started = Instant::now();
        let mut host = berth::config::HostConfig::default();
        host.state_dir = Some(t.state_dir());
        let manifest = berth::manifest::Manifest::load(&t.manifest).unwrap();
        let app = Arc::new(App::load(&engine, manifest, &host).await.unwrap());
        let handler = Arc::new(berth::triggers::http::HttpHandler::new(app).unwrap());
        let server = tokio::spawn(berth::triggers::http::serve(
            handler,
            listener,
            std::future::pending(),
            Duration::ZERO,
        ));
        let status = first_byte(addr, "/hello").await;
        in_host.push(started.elapsed().as_nanos() as u64);
        assert_eq!(status, 200);
        server.abort();
    }
    let (p50, p99) = percentiles(in_host);
    println!(
        "Component: `{}` ({:.2} MB), compiled cache on disk, a new engine per run (no in-memory reuse); {B7_RUNS} runs.\n",
        wasm.file_name().unwrap().to_string_lossy(),
        size as f64 / 1e6
    );
    println!("| | p50 ms | worst ms |\n|---|---|---|");
    println!(
        "| app load from the cache + first request, to the response head (goal ≤ 5 ms) | **{:.2}** | {:.2} |",
        p50 / 1e3,
        p99 / 1e3
    );
    match berth_binary() {
        Some(berth) => {
            let mut process = Vec::new();
            for _ in 0..5 {
                let addr = free_addr();
                let apps = tempfile::tempdir().unwrap();
                let app = apps.path().join("b7");
                std::fs::create_dir_all(&app).unwrap();
                std::fs::copy(&t.manifest, app.join("berth.toml")).unwrap();
                let config = apps.path().join("host.toml");
                std::fs::write(
                    &config,
                    format!("state_dir = {:?}\n[engine]\nmax_instances = 16\nmax_memory_mb = 64\ncache_dir = {cache:?}\n", apps.path().join(".state")),
                )
                .unwrap();
                let started = Instant::now();
                let _server = spawn_berth_serve("berth", &berth, apps.path(), &config, addr);
                wait_until_serving(addr, "/b7/hello", Duration::from_secs(60)).await;
                process.push(started.elapsed().as_nanos() as u64);
            }
            let (p50, p99) = percentiles(process);
            println!(
                "| `berth serve` process start to the first response (polling connects every 1 ms) | {:.2} | {:.2} |\n",
                p50 / 1e3,
                p99 / 1e3
            );
        }
        None => println!("\n`berth serve` process start: skipped (no release berth binary)\n"),
    }
}

/// `.ci`-independent scratch space for benchmark caches.
fn bench_dir() -> PathBuf {
    let dir = std::env::var_os("BERTH_BENCH_TOOLS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/berth-bench")))
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the bench guest's command and returns its stdout.
async fn run_ok(app: &App, args: &[&str]) -> String {
    let out = run(app, "guest", args).await;
    berth_tests::assert_success(&out);
    out.stdout
}

/// The number after `key=` in `stdout`.
fn value(stdout: &str, key: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {stdout}"))
        .parse()
        .unwrap()
}
