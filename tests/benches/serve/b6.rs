//! B6: instances held open awaiting a slow upstream, and the answer past
//! the host's capacity.

use super::*;

const B6_INSTANCES: usize = 5_000;

pub(super) async fn b6_held_instances() {
    println!("## B6: instances held open awaiting a slow upstream\n");
    let Some(berth) = berth_binary() else {
        println!("skipped: no release berth binary\n");
        return;
    };
    // Each held request is a client connection and an upstream connection
    // in this process, and an accepted and an outgoing one in the host.
    let files = open_files_limit();
    if files < (2 * B6_INSTANCES + 1_000) as u64 {
        println!(
            "skipped: needs {} open files per process, the limit here is {files} (`ulimit -n`)\n",
            2 * B6_INSTANCES + 1_000
        );
        return;
    }
    let upstream = SlowUpstream::start().await;
    let apps = tempfile::tempdir().unwrap();
    let app = apps.path().join("held");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("berth.toml"),
        format!(
            "name = \"held\"\n[component.web]\npath = {:?}\n[component.web.grants]\nhttp = [\"http://127.0.0.1:{}\"]\n[component.web.limits]\nconcurrency = {}\nmemory_mb = 16\ntimeout_ms = 300000\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"web\"\n",
            guests::HTTP_GUEST,
            upstream.port,
            B6_INSTANCES * 2
        ),
    )
    .unwrap();
    // `berth serve` loads a tenant's components from its directory only.
    berth_tests::confine_components(&app);
    let config = apps.path().join("host.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\n[engine]\nmax_instances = {B6_INSTANCES}\nmax_memory_mb = 16\nmax_timeout_ms = 300000\ncache_dir = {:?}\n[outbound]\nallow_private = [\"127.0.0.0/8\"]\nallow_private_apps = [\"held\"]\n[app_limits]\nmax_instances = {B6_INSTANCES}\nmemory_mb = 65536\n",
            // A dot-name: no app can take it.
            apps.path().join(".state"),
            bench_dir().join("b6-cache")
        ),
    )
    .unwrap();
    let addr = free_addr();
    let server = spawn_berth_serve("berth", &berth, apps.path(), &config, addr);
    wait_until_serving(addr, "/held/hello", Duration::from_secs(60)).await;
    let idle_rss = process_rss(server.pid());
    let path = format!("/held/fetch?url=http://127.0.0.1:{}/slow", upstream.port);
    let mut held = tokio::task::JoinSet::new();
    let started = Instant::now();
    for _ in 0..B6_INSTANCES {
        let path = path.clone();
        held.spawn(async move { get_status(addr, &path).await });
        if held.len() % 500 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Every instance is alive when its request reached the upstream.
    let deadline = Instant::now() + Duration::from_secs(120);
    while upstream.waiting() < B6_INSTANCES && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let filled = started.elapsed();
    let waiting = upstream.waiting();
    let full_rss = process_rss(server.pid());
    let asked = Instant::now();
    let over = get_status(addr, "/held/hello").await;
    let refused_in = asked.elapsed();
    upstream.release();
    let mut answered = std::collections::BTreeMap::<String, usize>::new();
    while let Some(status) = held.join_next().await {
        let status = match status.unwrap() {
            Some(s) => s.to_string(),
            None => "connection error".into(),
        };
        *answered.entry(status).or_default() += 1;
    }
    let per_instance = full_rss.saturating_sub(idle_rss) as f64 / waiting.max(1) as f64 / 1024.0;
    println!(
        "`berth serve` with `[engine] max_instances = {B6_INSTANCES}`, each request's guest (`guests/http_guest` `/fetch`, 16 MiB memory limit) waiting on an upstream that answers only when released.\n"
    );
    println!("| | |\n|---|---|");
    println!("| instances held open at once | **{waiting}** (goal ≥ 5,000) |");
    println!("| time to open them all | {:.1} s |", filled.as_secs_f64());
    println!(
        "| host RSS idle / with all held | {:.0} MiB / **{:.0} MiB** (budget 2,048 MiB) |",
        idle_rss as f64 / 1048576.0,
        full_rss as f64 / 1048576.0
    );
    println!("| RSS per held instance | {per_instance:.0} KiB |");
    println!(
        "| one more request at capacity | **{}** in {:.1} ms |",
        over.map_or("connection error".into(), |s| s.to_string()),
        refused_in.as_secs_f64() * 1e3
    );
    println!("| the held requests once released | {answered:?} |\n");
    drop(server);
}

/// An upstream that accepts requests and answers them all only once
/// released.
struct SlowUpstream {
    port: u16,
    waiting: Arc<AtomicUsize>,
    release: tokio::sync::watch::Sender<bool>,
}

impl SlowUpstream {
    async fn start() -> SlowUpstream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let waiting = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let counter = waiting.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (counter, mut released) = (counter.clone(), released.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    if stream.read(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let _ = released.wait_for(|r| *r).await;
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                });
            }
        });
        SlowUpstream {
            port,
            waiting,
            release,
        }
    }

    fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    fn release(&self) {
        let _ = self.release.send(true);
    }
}
