//! Helpers of the serving benchmark: statistics, child servers pinned to a
//! core, a keep-alive HTTP load generator, bare wasmtime hosts, and the
//! native hyper server this binary runs as a child (`BERTH_BENCH_ROLE`).

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth::app::App;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use wasmtime::component::{Component, InstancePre, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

// ------------------------------------------------------------- statistics

/// p50 and p99 of `samples` (nanoseconds), in microseconds.
pub fn percentiles(mut samples: Vec<u64>) -> (f64, f64) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize] as f64 / 1e3;
    (at(0.50), at(0.99))
}

/// Median of each half of `pairs`.
pub fn median_pair(pairs: &[(f64, f64)]) -> (f64, f64) {
    (
        median_f(pairs.iter().map(|p| p.0).collect()),
        median_f(pairs.iter().map(|p| p.1).collect()),
    )
}

/// The median of `values`.
pub fn median_f(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The median of `values`.
pub fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values[values.len() / 2]
}

/// CPU model, cores, memory and kernel, for the results' header.
pub fn machine_description() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1048576.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "Machine: `{model}`, {cores} cores, {mem_gib:.0} GiB, Linux {}.",
        kernel.trim()
    )
}

// ------------------------------------------------------------------ memory

/// Resident set size of this process, bytes.
pub fn rss_bytes() -> u64 {
    process_rss(std::process::id())
}

/// Resident set size of process `pid`, bytes.
pub fn process_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

// ---------------------------------------------------------------- processes

/// A server process pinned to core 0, killed on drop.
pub struct Server {
    /// What the tables call it.
    pub name: &'static str,
    /// Where it listens.
    pub addr: SocketAddr,
    child: std::process::Child,
}

impl Server {
    /// Starts `program args` on core 0 (it inherits this process's limit
    /// of open files); its output goes to `<bench dir>/<name>.log`.
    pub fn spawn(
        name: &'static str,
        env: Option<(&str, &str)>,
        program: &Path,
        args: &[&OsStr],
        addr: SocketAddr,
    ) -> Server {
        let log = super::bench_dir().join(format!("{}.log", name.replace(' ', "-")));
        let log = std::fs::File::create(log).unwrap();
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "0"])
            .arg(program)
            .args(args)
            .env("BERTH_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Server { name, addr, child }
    }

    /// The server's process id (taskset execs it in place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `berth serve <apps> --listen <addr> --host-config <config>` on core 0.
pub fn spawn_berth_serve(
    name: &'static str,
    berth: &Path,
    apps: &Path,
    config: &Path,
    addr: SocketAddr,
) -> Server {
    let listen = addr.to_string();
    Server::spawn(
        name,
        None,
        berth,
        &[
            "serve".as_ref(),
            apps.as_os_str(),
            "--listen".as_ref(),
            listen.as_ref(),
            "--host-config".as_ref(),
            config.as_os_str(),
        ],
        addr,
    )
}

/// Pins every thread of this process to `cores` (taskset syntax).
pub fn pin_this_process(cores: &str) {
    let pid = std::process::id().to_string();
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cores, &pid])
        .stdout(Stdio::null())
        .status()
        .expect("taskset");
    assert!(status.success(), "taskset failed");
}

/// This process's soft limit of open files (children inherit it).
pub fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A loopback address nothing listens on (yet).
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// The release `berth` binary beside this benchmark, built if missing.
pub fn berth_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let release = exe.parent()?.parent()?;
    let berth = release.join("berth");
    if !berth.exists() {
        let target = release.parent()?;
        let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args([
                "build",
                "--release",
                "-p",
                "berth",
                "--bin",
                "berth",
                "--target-dir",
            ])
            .arg(target)
            .current_dir(berth_tests::guests::REPO_ROOT)
            .status()
            .ok()?;
        if !status.success() {
            return None;
        }
    }
    berth.exists().then_some(berth)
}

/// `wasmtime` 48 from `BERTH_BENCH_WASMTIME` or where
/// `scripts/bench-tools.sh` installs it.
pub fn wasmtime_binary() -> Option<PathBuf> {
    let path = std::env::var_os("BERTH_BENCH_WASMTIME")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::bench_dir().join("wasmtime-cli-48.0.8/bin/wasmtime"));
    path.exists().then_some(path)
}

/// `guests/big_guest` (a ~2 MB `wasi:http` component), built into the
/// benchmark directory on first use.
pub fn big_guest() -> PathBuf {
    let target = super::bench_dir().join("big-guest-target");
    let wasm = target.join("wasm32-wasip2/release/big_guest.wasm");
    let manifest = Path::new(berth_tests::guests::REPO_ROOT).join("guests/big_guest/Cargo.toml");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .status()
        .expect("cargo");
    assert!(status.success(), "building guests/big_guest failed");
    wasm
}

// ------------------------------------------------------------- HTTP client

/// A one-request connection's status, or `None` if it failed.
pub async fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let response = send.send_request(get(addr, path)).await.ok()?;
    let status = response.status().as_u16();
    response.into_body().collect().await.ok()?;
    Some(status)
}

/// The status of `GET path` once its response head arrives.
pub async fn first_byte(addr: SocketAddr, path: &str) -> u16 {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = send.send_request(get(addr, path)).await.unwrap();
    response.status().as_u16()
}

/// Waits until `GET path` answers 200, polling every millisecond.
pub async fn wait_until_serving(addr: SocketAddr, path: &str, timeout: Duration) {
    let started = Instant::now();
    loop {
        if get_status(addr, path).await == Some(200) {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "{addr}{path} did not answer 200 within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn get(addr: SocketAddr, path: &str) -> hyper::Request<Empty<Bytes>> {
    hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::new())
        .unwrap()
}

/// What one load run measured.
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// Successful requests per second.
    pub rps: f64,
    /// Latency percentiles, µs.
    pub p50: f64,
    /// Latency percentiles, µs.
    pub p99: f64,
    /// Failed requests and connections.
    pub errors: usize,
}

/// `connections` keep-alive clients, each sending `GET path` again as soon
/// as the previous answer is read, for `duration`.
pub async fn load(
    addr: SocketAddr,
    path: &str,
    connections: usize,
    duration: Duration,
) -> LoadResult {
    let until = Instant::now() + duration;
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let path = path.to_string();
        clients.spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut errors = 0;
            let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                return (latencies, 1);
            };
            let _ = stream.set_nodelay(true);
            let Ok((mut send, conn)) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
            else {
                return (latencies, 1);
            };
            tokio::spawn(conn);
            while Instant::now() < until {
                let started = Instant::now();
                let answered = async {
                    send.ready().await.ok()?;
                    let response = send.send_request(get(addr, &path)).await.ok()?;
                    let ok = response.status() == 200;
                    response.into_body().collect().await.ok()?;
                    ok.then_some(())
                };
                match answered.await {
                    Some(()) => latencies.push(started.elapsed().as_nanos() as u64),
                    None => {
                        errors += 1;
                        break;
                    }
                }
            }
            (latencies, errors)
        });
    }
    let mut all = Vec::new();
    let mut errors = 0;
    while let Some(done) = clients.join_next().await {
        let (latencies, e) = done.unwrap();
        all.extend(latencies);
        errors += e;
    }
    let rps = all.len() as f64 / duration.as_secs_f64();
    let (p50, p99) = if all.is_empty() {
        (f64::NAN, f64::NAN)
    } else {
        percentiles(all)
    };
    LoadResult {
        rps,
        p50,
        p99,
        errors,
    }
}

// -------------------------------------------------------------- bare hosts

/// The state of a bare wasmtime store: WASI only.
pub struct Bare {
    ctx: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Bare {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// One component pre-instantiated on a bare wasmtime linker (WASI p2; if
/// it imports anything else, every unresolved import traps).
pub struct BareHost {
    engine: Engine,
    /// The pre-instantiated component.
    pub pre: InstancePre<Bare>,
}

impl BareHost {
    /// Prepares `wasm` on `engine` (from `app`'s compiled cache when it is
    /// `app`'s engine).
    pub fn new(engine: &Engine, wasm: &Path, app: &App) -> BareHost {
        let component = if std::ptr::eq(engine, app.engine().engine()) {
            app.engine().load_component_blocking(wasm).unwrap()
        } else {
            Component::from_file(engine, wasm).unwrap()
        };
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        // Stubbing shadows WASI's semver-matched instances with exact-name
        // ones, so only a component with non-WASI imports gets stubs (and
        // then must not call WASI functions its stubs replaced).
        let pre = linker.instantiate_pre(&component).unwrap_or_else(|_| {
            linker.define_unknown_imports_as_traps(&component).unwrap();
            linker.instantiate_pre(&component).unwrap()
        });
        BareHost {
            engine: engine.clone(),
            pre,
        }
    }

    /// A store with a default WASI context and, when the engine interrupts
    /// on epochs, a deadline no run reaches.
    pub fn store(&self) -> Store<Bare> {
        self.store_with(WasiCtx::builder().build())
    }

    fn store_with(&self, ctx: WasiCtx) -> Store<Bare> {
        let mut store = Store::new(
            &self.engine,
            Bare {
                ctx,
                table: ResourceTable::new(),
            },
        );
        store.set_epoch_deadline(1 << 40);
        store
    }

    /// Runs the component's `wasi:cli/run` with `args`; returns its stdout.
    pub async fn run_command(&self, args: &[&str]) -> String {
        let stdout = wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(1 << 20);
        let mut ctx = WasiCtx::builder();
        ctx.arg("guest").args(args).stdout(stdout.clone());
        let mut store = self.store_with(ctx.build());
        let command = wasmtime_wasi::p2::bindings::CommandPre::new(self.pre.clone())
            .unwrap()
            .instantiate_async(&mut store)
            .await
            .unwrap();
        command
            .wasi_cli_run()
            .call_run(&mut store)
            .await
            .unwrap()
            .expect("the command succeeds");
        String::from_utf8_lossy(&stdout.contents()).into_owned()
    }
}

// ------------------------------------------------------------- child roles

/// Runs this binary as a helper process (`BERTH_BENCH_ROLE`).
pub fn run_role(role: &str) {
    match role {
        "hyper-hello" => hyper_hello(),
        other => panic!("unknown BERTH_BENCH_ROLE {other}"),
    }
}

/// A native hyper server answering every request as `guests/http_guest`
/// answers `/hello` (same status, header and body), on the same
/// multi-threaded tokio runtime and hyper-util connection builder as Berth.
fn hyper_hello() {
    let args: Vec<String> = std::env::args().collect();
    let addr: SocketAddr = args
        .iter()
        .position(|a| a == "--addr")
        .and_then(|i| args.get(i + 1))
        .and_then(|a| a.parse().ok())
        .expect("--addr ADDR");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let builder = builder.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    let mut response =
                        hyper::Response::new(Full::new(Bytes::from_static(b"hello from berth")));
                    response.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("text/plain"),
                    );
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
