//! Helpers shared by the integration tests: the built guests, a shared
//! engine, and manifests written into temporary directories.

pub mod portsdoc;
pub mod relay;
pub mod sql;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use berth::app::App;
use berth::config::HostConfig;
use berth::engine::{EngineSettings, HostEngine};
use berth::manifest::Manifest;
use berth::triggers::run::{RunOutput, Stdio};

/// Paths of the guest components built by `build.rs`.
pub mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

/// One engine per test binary: compiled components are cached under the
/// target directory, so each guest is compiled once across runs.
pub fn engine() -> &'static HostEngine {
    static ENGINE: OnceLock<HostEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let cache_dir = PathBuf::from(concat!(env!("OUT_DIR"), "/component-cache"));
        HostEngine::new(EngineSettings {
            max_instances: 200,
            max_memory_bytes: 512 << 20,
            cache_dir,
            ..EngineSettings::default()
        })
        .expect("engine builds")
    })
}

/// A temporary app directory with a manifest.
pub struct TestApp {
    /// The directory (removed on drop).
    pub dir: tempfile::TempDir,
    /// The manifest path.
    pub manifest: PathBuf,
}

impl TestApp {
    /// Writes `manifest` (TOML) into a fresh directory.
    pub fn new(manifest: &str) -> TestApp {
        log_to_stderr();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("berth.toml");
        std::fs::write(&path, manifest).expect("write manifest");
        TestApp {
            dir,
            manifest: path,
        }
    }

    /// The state directory the app uses.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join(".berth")
    }

    /// Loads the app with the default (embedded) host config.
    pub async fn load(&self) -> anyhow::Result<App> {
        self.load_with(&HostConfig::default()).await
    }

    /// Loads the app with `host`.
    pub async fn load_with(&self, host: &HostConfig) -> anyhow::Result<App> {
        let manifest = Manifest::load(&self.manifest)?;
        App::load(engine(), manifest, host).await
    }
}

/// Runs `component` of `app` with `args`, capturing its output.
pub async fn run(app: &App, component: &str, args: &[&str]) -> RunOutput {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    berth::triggers::run::run(app, component, &args, Stdio::Capture)
        .await
        .expect("component can be run")
}

/// Asserts a run exited 0, showing its output otherwise.
pub fn assert_success(out: &RunOutput) {
    assert!(
        out.success(),
        "guest failed: {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
}

/// Asserts that `sql_guest trap-in-tx` got as far as its insert inside the
/// transaction and then trapped on purpose: a rollback test whose guest
/// failed earlier (its `CREATE TABLE` or `INSERT` refused) would otherwise
/// find no row for the wrong reason.
pub fn assert_trapped_in_transaction(out: &RunOutput) {
    assert!(
        out.status.is_err()
            && out.stdout.contains("sql: insert inside transaction ok")
            && out
                .stderr
                .contains("deliberate trap while holding a transaction"),
        "the guest inserts in a transaction, then traps: {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
}

/// The distinct numbers `statement` (`SELECT pg_backend_pid()`, `SELECT
/// CONNECTION_ID()`) printed across `runs` invocations of `sql_guest int`:
/// the server connections the app's pool served them from.
pub async fn connection_ids(app: &App, statement: &str, runs: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for _ in 0..runs {
        let out = run(app, "guest", &["int", "main", statement]).await;
        assert_success(&out);
        let id: i64 = out.stdout.trim().parse().expect("an integer id");
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    ids
}

/// TOML for a one-component app named `name` whose component `guest` is the
/// file at `wasm`, with `grants` (TOML lines) and extra top-level `decls`.
pub fn single_component_manifest(name: &str, wasm: &str, decls: &str, grants: &str) -> String {
    format!(
        "name = \"{name}\"\n{decls}\n[component.guest]\npath = {wasm:?}\n[component.guest.grants]\n{grants}\n"
    )
}

/// App `name` serving `guests/http_guest` at `/...` as component `web`,
/// with `grants` and `limits` (TOML lines of its tables).
pub fn http_guest_app(name: &str, grants: &str, limits: &str) -> TestApp {
    TestApp::new(&format!(
        "name = {name:?}\n[component.web]\npath = {path:?}\n[component.web.grants]\n{grants}\n[component.web.limits]\n{limits}\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"web\"\n",
        path = guests::HTTP_GUEST
    ))
}

/// The example app's manifest rewritten to use the guests built for tests,
/// written into a fresh directory.
pub fn example_app() -> TestApp {
    let original = Path::new(guests::REPO_ROOT).join("guests/example/berth.toml");
    let text = std::fs::read_to_string(&original).expect("example manifest");
    let text = text
        .replace(
            "../target/wasm32-wasip2/release/",
            &format!("{}/", guests::GUESTS_RELEASE_DIR),
        )
        .lines()
        .filter(|l| !l.starts_with("build = "))
        .collect::<Vec<_>>()
        .join("\n");
    TestApp::new(&text)
}

/// An app served over HTTP on an ephemeral loopback port, with its message
/// triggers running.
pub struct Server {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<anyhow::Result<()>>,
    _tasks: tokio::task::JoinSet<()>,
}

impl Server {
    /// Begins a graceful shutdown (as SIGTERM would) without waiting for
    /// it; [`Server::stop`] then waits for the end.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Whether the server has ended.
    pub fn has_ended(&self) -> bool {
        self.served.is_finished()
    }

    /// Shuts down gracefully and checks the server ended without error.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.served)
            .await
            .expect("server task")
            .expect("server ends cleanly");
    }
}

/// Loads `t` with its listen address set to a fresh loopback port and
/// serves it.
pub async fn serve(t: &TestApp) -> Server {
    serve_with(t, HostConfig::default()).await
}

/// Serves `t` with the given host config (its `listen` is replaced by a
/// free loopback port).
pub async fn serve_with(t: &TestApp, mut host: HostConfig) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    host.listen = Some(addr);
    let app = std::sync::Arc::new(t.load_with(&host).await.expect("app loads"));
    let mut tasks = tokio::task::JoinSet::new();
    berth::triggers::message::start(app.clone(), &mut tasks)
        .await
        .expect("triggers start");
    let handler =
        std::sync::Arc::new(berth::triggers::http::HttpHandler::new(app).expect("routes"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let grace = host.serve.shutdown_grace();
    let shutdown = async {
        let _ = stopped.await;
    };
    let served = tokio::spawn(berth::triggers::http::serve(
        handler, listener, shutdown, grace,
    ));
    Server {
        base: format!("http://{addr}"),
        stop: Some(stop),
        served,
        _tasks: tasks,
    }
}

/// The value of a `BERTH_TEST_*` service variable. Without it the calling
/// test reports itself skipped and returns; with
/// `BERTH_TEST_REQUIRE_SERVICES=1` a missing variable fails the test.
pub fn service(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var("BERTH_TEST_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "{var} is not set but BERTH_TEST_REQUIRE_SERVICES=1 requires the service"
            );
            eprintln!("SKIPPED: {var} is not set");
            None
        }
    }
}

/// A short random suffix that isolates a test's data on a shared server.
pub fn unique(prefix: &str) -> String {
    let n: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("{prefix}{:x}{:x}", std::process::id(), n & 0xffff_ffff)
}

/// Writes `text` as `host.toml` next to the app's manifest and loads it.
pub fn host_config(t: &TestApp, text: &str) -> HostConfig {
    let path = t.dir.path().join("host.toml");
    std::fs::write(&path, text).expect("write host config");
    HostConfig::load(&path).expect("host config loads")
}

/// `config` as `berth check` loads with it: a dry run, whose embedded
/// stores open in a scratch directory of the app's test directory (apart
/// from its state directory).
pub fn dry_run(t: &TestApp, mut config: HostConfig) -> HostConfig {
    config.dry_run = Some(t.dir.path().join("check-scratch"));
    config
}

/// An SDK client for tests' own setup and checks against the S3 server of
/// the test services (moto accepts any credentials).
pub fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .credentials_provider(aws_credential_types::Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "berth-tests",
        ))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// With `BERTH_TEST_LOG` set (a filter such as `berth=debug`), logs every
/// event it lets through to stderr, to debug a test; by default nothing is
/// logged.
fn log_to_stderr() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("BERTH_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::stderr)
                .try_init();
        }
    });
}

/// Runs `f` with a current-thread runtime under a `tracing` subscriber
/// that keeps every line `filter` lets through; returns what `f` returned
/// and the captured text.
///
/// Captures take turns (a process-wide lock): `tracing` caches per call
/// site whether any thread's subscriber wants it, and two captures with
/// different filters built and dropped concurrently can leave an event
/// unrecorded.
pub fn with_captured_logs<T>(
    filter: tracing_subscriber::EnvFilter,
    f: impl FnOnce(&tokio::runtime::Runtime) -> T,
) -> (T, String) {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let logs = LogCapture::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, || {
        // Call sites first hit by other tests' threads (with no subscriber)
        // may have cached "never"; recompute with this subscriber counted.
        tracing::callsite::rebuild_interest_cache();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a test runtime");
        f(&rt)
    });
    (out, logs.text())
}

/// A `tracing` writer collecting every line into a shared buffer, for tests
/// that check what the host logs (and what it never logs).
#[derive(Clone, Default)]
pub struct LogCapture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl LogCapture {
    /// Everything written so far.
    pub fn text(&self) -> String {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The one message for `recipient` in the test SMTP server's maildir,
/// waiting up to 10 s for it; fails if none or several arrive.
pub async fn wait_for_mail(maildir: &str, recipient: &str) -> String {
    for _ in 0..100 {
        let found: Vec<String> = std::fs::read_dir(Path::new(maildir).join("new"))
            .map(|d| {
                d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                    .filter(|m| m.contains(recipient))
                    .collect()
            })
            .unwrap_or_default();
        if let [mail] = found.as_slice() {
            return mail.clone();
        }
        assert!(found.len() < 2, "more than one message for {recipient}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no message for {recipient} in {maildir}");
}

/// Serves the apps of `tenants` (as `berth serve` does) on an ephemeral
/// loopback port.
pub async fn serve_tenants(tenants: std::sync::Arc<berth::tenants::Tenants>) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("local addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async {
        let _ = stopped.await;
    };
    let served = tokio::spawn(berth::triggers::http::serve(
        tenants,
        listener,
        shutdown,
        berth::triggers::http::DEFAULT_SHUTDOWN_GRACE,
    ));
    Server {
        base,
        stop: Some(stop),
        served,
        _tasks: tokio::task::JoinSet::new(),
    }
}

/// Writes app `name` into `apps/<name>/` serving `guests/tenant_guest` at
/// `/...`: SQL database `main`, bucket `cache`, container `files`, config
/// keys `greeting` and `token`, and grants of `main` and `files`. `grants`,
/// `limits` and `extra` add lines to the component's grants, to its limits
/// and to the manifest (more declarations, components, triggers).
pub fn write_tenant_app(apps: &Path, name: &str, grants: &str, limits: &str, extra: &str) {
    let dir = apps.join(name);
    std::fs::create_dir_all(&dir).expect("app directory");
    let manifest = format!(
        r#"name = "{name}"
[sql.main]
[kv.cache]
[blob.files]
[config]
greeting = "hello"
token = "not the secret"
{extra}
[component.tenant]
path = {path:?}
[component.tenant.grants]
sql = ["main"]
blob = ["files"]
{grants}
[component.tenant.limits]
{limits}
[[trigger.http]]
route = "/..."
component = "tenant"
"#,
        path = guests::TENANT_GUEST,
    );
    std::fs::write(dir.join("berth.toml"), manifest).expect("write manifest");
    confine_components(&dir);
}

/// Copies each component that `dir/berth.toml` names by an absolute path
/// (the test guests' build output) into `dir`, and names it there:
/// `berth serve` runs a tenant's components from its own directory only.
pub fn confine_components(dir: &Path) {
    let manifest = dir.join("berth.toml");
    let text = std::fs::read_to_string(&manifest).expect("read manifest");
    let mut confined = Vec::new();
    for line in text.lines() {
        let wasm = line
            .strip_prefix("path = \"")
            .and_then(|rest| rest.strip_suffix('"'))
            .map(Path::new)
            .filter(|path| path.is_absolute() && path.extension().is_some_and(|e| e == "wasm"));
        match wasm {
            Some(path) => {
                let name = path.file_name().expect("a file name");
                std::fs::copy(path, dir.join(name)).expect("copy component");
                confined.push(format!("path = {:?}", name.to_string_lossy()));
            }
            None => confined.push(line.to_string()),
        }
    }
    std::fs::write(&manifest, confined.join("\n") + "\n").expect("write manifest");
}

/// Outbound URLs of loopback, private and link-local (metadata) addresses
/// in several spellings, each of which the host must refuse; `port` is the
/// port of the loopback ones.
pub fn special_address_urls(port: u16) -> Vec<String> {
    vec![
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
        format!("http://2130706433:{port}"),
        format!("http://0177.0.0.1:{port}"),
        format!("http://[::ffff:127.0.0.1]:{port}"),
        format!("http://[::1]:{port}"),
        "http://169.254.169.254".to_owned(),
        "http://10.1.2.3".to_owned(),
    ]
}

/// Deletes every object of `bucket`, then the bucket.
pub async fn delete_bucket(s3: &aws_sdk_s3::Client, bucket: &str) {
    let listed = s3
        .list_objects_v2()
        .bucket(bucket)
        .send()
        .await
        .expect("list objects");
    for key in listed.contents().iter().filter_map(|o| o.key()) {
        s3.delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .expect("delete object");
    }
    s3.delete_bucket()
        .bucket(bucket)
        .send()
        .await
        .expect("delete bucket");
}

/// A delivery of message `m-<i>` (64 bytes on topic `work`, first attempt)
/// whose acknowledgement does nothing: isolates the invocation in the
/// benchmarks of the message path.
pub fn unacked_delivery(i: u64) -> berth::ports::messaging::Delivery {
    berth::ports::messaging::Delivery {
        message: berth::ports::messaging::Message {
            id: format!("m-{i}"),
            topic: "work".into(),
            payload: vec![0x42; 64],
            headers: Vec::new(),
            attempt: 1,
        },
        reply: None,
        acker: Box::new(NoAck),
    }
}

/// An acker that does nothing.
struct NoAck;

#[async_trait::async_trait]
impl berth::ports::messaging::Acker for NoAck {
    async fn ack(self: Box<Self>) {}
    async fn nack(self: Box<Self>, _delay: std::time::Duration) {}
}

/// The Redis keys starting with `prefix` (KEYS is fine for tests on a
/// unique prefix; the adapter itself SCANs).
pub async fn redis_keys(url: &str, prefix: &str) -> Vec<String> {
    let mut conn = redis::Client::open(url)
        .expect("a Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis reachable");
    redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS")
}

/// Deletes the Redis keys starting with `prefix`.
pub async fn redis_delete_prefix(url: &str, prefix: &str) {
    let keys = redis_keys(url, prefix).await;
    if keys.is_empty() {
        return;
    }
    let mut conn = redis::Client::open(url)
        .expect("a Redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("Redis reachable");
    let _: i64 = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut conn)
        .await
        .expect("DEL");
}

/// A loopback HTTP server answering every request with 200 `pong`.
pub async fn pong_server() -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = stream.read(&mut head).await;
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\npong",
                    )
                    .await;
            });
        }
    });
    port
}

/// Every file under `dir` that `keep` accepts: path relative to `dir`, and
/// contents (for comparing generated trees with the repository's).
pub fn files_under(
    dir: &Path,
    keep: impl Fn(&Path) -> bool,
) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if keep(&path) {
                let rel = path.strip_prefix(dir).unwrap().to_path_buf();
                files.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// The value of header `name` of a delivered message, if it has one.
pub fn header(message: &berth::ports::messaging::Message, name: &str) -> Option<String> {
    message
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

/// Whether a guest toolchain the test needs was `found`. When it was not,
/// the test reports itself skipped, or fails under
/// `BERTH_TEST_REQUIRE_TOOLCHAINS` (set by `.ci/run`).
pub fn toolchain_found(tool: &str, found: bool) -> bool {
    if !found {
        assert!(
            std::env::var_os("BERTH_TEST_REQUIRE_TOOLCHAINS").is_none(),
            "{tool} was not found, and BERTH_TEST_REQUIRE_TOOLCHAINS is set"
        );
        eprintln!("SKIPPED: {tool} not found");
    }
    found
}

/// A TCP proxy on loopback to `target` whose connections a test can cut,
/// as a network failure or a broker restart would.
pub struct CuttableProxy {
    /// The port it listens on.
    pub port: u16,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

impl CuttableProxy {
    /// Starts forwarding to `target` (`host:port`).
    pub async fn start(target: &str) -> CuttableProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> =
            Default::default();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (target, open, count) = (target.to_string(), connections.clone(), accepted.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                open.lock().unwrap().push(task.abort_handle());
            }
        });
        CuttableProxy {
            port,
            connections,
            accepted,
            accept,
        }
    }

    /// How many connections it has accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Closes every connection open now; new ones are forwarded again.
    pub fn cut(&self) {
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
