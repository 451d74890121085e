//! Noisy-neighbour benchmark: the p50/p99 latency of one tenant's requests
//! while it is alone, and while another tenant of the same `berth serve`
//! host spins to its time limit, allocates to its memory limit, hoards
//! handles and calls the host in a loop, all at its full concurrency.
//! Goal (PERFORMANCE.md, B8): p99 under attack ≤ 2× quiet. Not a test:
//! nothing here asserts a time. Results go to `docs/benchmarks.md`.
//!
//! ```sh
//! cargo bench -p berth-tests --bench tenants
//! ```
//!
//! The host runs on its own multi-threaded runtime (one worker per core,
//! as `berth serve`); the clients run on a separate thread.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth::config::HostConfig;
use berth::tenants::Tenants;
use berth_tests::engine;

/// Victim requests per measurement (`BERTH_BENCH_REQUESTS` overrides).
fn requests() -> usize {
    std::env::var("BERTH_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
}
/// Alternated quiet/attacked rounds.
const ROUNDS: usize = 5;
/// Attacker requests in flight at once (its concurrency limit).
const ATTACKERS: usize = 8;

fn write_app(apps: &Path, name: &str, limits: &str) {
    let grants = format!(
        "kv = [\"cache\"]\npublish = [\"jobs\"]\nemail_senders = [\"app@{name}.test\"]\nconfig = [\"greeting\"]"
    );
    berth_tests::write_tenant_app(apps, name, &grants, limits, "");
}

/// p50 and p99 in microseconds.
fn percentiles(mut samples: Vec<u64>) -> (f64, f64) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize] as f64 / 1e3;
    (at(0.50), at(0.99))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// [`requests`] sequential victim requests; their latencies in ns and how
/// many did not answer `intact`.
async fn measure(http: &reqwest::Client, url: &str) -> (Vec<u64>, usize) {
    let mut samples = Vec::with_capacity(requests());
    let mut failed = 0;
    for _ in 0..requests() {
        let started = Instant::now();
        let ok = match http.get(url).send().await {
            Ok(r) => r.status() == 200 && r.text().await.is_ok_and(|t| t == "intact"),
            Err(_) => false,
        };
        samples.push(started.elapsed().as_nanos() as u64);
        failed += usize::from(!ok);
    }
    (samples, failed)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let apps = dir.path().join("apps");
    write_app(&apps, "victim", "timeout_ms = 5000");
    write_app(
        &apps,
        "attacker",
        &format!("timeout_ms = 1000\nmemory_mb = 32\nconcurrency = {ATTACKERS}"),
    );
    let host = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = host.block_on(async {
        let tenants = Arc::new(Tenants::new(
            engine().clone(),
            HostConfig::default(),
            apps.clone(),
        ));
        let errors = tenants.sync().await;
        assert!(errors.is_empty(), "{errors:?}");
        berth_tests::serve_tenants(tenants).await
    });
    let base = server.base.clone();

    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    clients.block_on(async {
        let http = reqwest::Client::new();
        let victim = format!("{base}/victim/check?v=bench");
        let seeded = http.get(format!("{base}/victim/seed?v=bench")).send().await.unwrap();
        assert_eq!(seeded.status(), 200);
        measure(&http, &victim).await;

        println!("# Noisy neighbour (victim p50/p99 quiet vs under attack)\n");
        println!(
            "{} sequential victim requests per measurement (`/check`: one SQL query, one kv get, one blob get and stat on the embedded backends); the attacker keeps {ATTACKERS} requests in flight (spin to its 1 s limit, allocate to 32 MiB, hoard handles, call the host in a loop).\n",
            requests()
        );
        println!("| round | quiet p50 µs | quiet p99 µs | attacked p50 µs | attacked p99 µs | attacker requests | victim failures |");
        println!("|---|---|---|---|---|---|---|");
        let (mut quiet99, mut attacked99, mut quiet50, mut attacked50) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 1..=ROUNDS {
            // The last round's attack has ended server-side (its time limit
            // is 1 s) and its component is no longer heavy.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            let (quiet, quiet_failed) = measure(&http, &victim).await;
            let attacking = Arc::new(AtomicBool::new(true));
            let sent = Arc::new(AtomicU64::new(0));
            let mut attack = tokio::task::JoinSet::new();
            for i in 0..ATTACKERS {
                let (http, base, attacking, sent) =
                    (http.clone(), base.clone(), attacking.clone(), sent.clone());
                attack.spawn(async move {
                    let routes = ["loop", "memory", "handles", "host-call-loop"];
                    let mut n = i;
                    while attacking.load(Ordering::Relaxed) {
                        let route = routes[n % routes.len()];
                        let _ = http.get(format!("{base}/attacker/{route}")).send().await;
                        sent.fetch_add(1, Ordering::Relaxed);
                        n += 1;
                    }
                });
            }
            // Let the attack reach its full concurrency first.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (attacked, attacked_failed) = measure(&http, &victim).await;
            attacking.store(false, Ordering::Relaxed);
            while attack.join_next().await.is_some() {}
            let ((q50, q99), (a50, a99)) = (percentiles(quiet), percentiles(attacked));
            println!(
                "| {round} | {q50:.0} | {q99:.0} | {a50:.0} | {a99:.0} | {} | {} |",
                sent.load(Ordering::Relaxed),
                quiet_failed + attacked_failed
            );
            quiet50.push(q50);
            quiet99.push(q99);
            attacked50.push(a50);
            attacked99.push(a99);
        }
        let (q50, q99, a50, a99) = (
            median(quiet50),
            median(quiet99),
            median(attacked50),
            median(attacked99),
        );
        println!(
            "\nMedian over rounds: quiet p50 {q50:.0} µs, p99 {q99:.0} µs; under attack p50 {a50:.0} µs, p99 {a99:.0} µs.\n\
             **p99 under attack / quiet p99: {:.2}×** (goal ≤ 2×); p50 ratio {:.2}×.\n",
            a99 / q99,
            a50 / q50
        );
    });
    host.block_on(server.stop());
}
