//! B1: HTTP hello world through `berth serve`, `wasmtime serve` and a
//! native hyper server, each pinned to core 0 and loaded from core 1.

use super::*;

const B1_CONCURRENCY: [usize; 3] = [1, 16, 64];
const B1_ROUNDS: usize = 3;
const B1_WARMUP: Duration = Duration::from_millis(500);
const B1_MEASURE: Duration = Duration::from_secs(3);

pub(super) fn b1_hello_world() {
    println!("## B1: HTTP hello world (`guests/http_guest` `/hello`)\n");
    // The load generator runs on core 1, every server on core 0.
    pin_this_process("1");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let apps = tempfile::tempdir().unwrap();
        let mut servers = Vec::new();
        let addr = free_addr();
        let exe = std::env::current_exe().unwrap();
        servers.push(Server::spawn(
            "native hyper",
            Some(("BERTH_BENCH_ROLE", "hyper-hello")),
            &exe,
            &["--addr".as_ref(), addr.to_string().as_ref()],
            addr,
        ));
        match wasmtime_binary() {
            Some(wasmtime) => {
                let addr = free_addr();
                servers.push(Server::spawn(
                    "wasmtime serve",
                    None,
                    &wasmtime,
                    &[
                        "serve".as_ref(),
                        "-Scli".as_ref(),
                        "--addr".as_ref(),
                        addr.to_string().as_ref(),
                        guests::HTTP_GUEST.as_ref(),
                    ],
                    addr,
                ));
                // The same, with the pooling settings Berth's engine uses
                // (`host/src/engine.rs`), to tell the host from the tuning.
                let addr = free_addr();
                servers.push(Server::spawn(
                    "wasmtime serve, Berth's pooling settings",
                    None,
                    &wasmtime,
                    &[
                        "serve".as_ref(),
                        "-Scli".as_ref(),
                        "-O".as_ref(),
                        "pooling-allocator=y,pooling-memory-keep-resident=1048576,pooling-table-keep-resident=65536,pooling-async-stack-keep-resident=65536,pooling-decommit-batch-size=16,pooling-pagemap-scan=auto".as_ref(),
                        "--addr".as_ref(),
                        addr.to_string().as_ref(),
                        guests::HTTP_GUEST.as_ref(),
                    ],
                    addr,
                ));
            }
            None => println!("`wasmtime serve`: skipped (run `scripts/bench-tools.sh`)\n"),
        }
        match berth_binary() {
            Some(berth) => {
                let addr = free_addr();
                let app = apps.path().join("apps/hello");
                std::fs::create_dir_all(&app).unwrap();
                std::fs::write(
                    app.join("berth.toml"),
                    format!(
                        "name = \"hello\"\n[component.web]\npath = {:?}\n[component.web.grants]\nhttp = [\"https://api.example.com\"]\n[component.web.limits]\nconcurrency = 1000\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"web\"\n",
                        guests::HTTP_GUEST
                    ),
                )
                .unwrap();
                // `berth serve` loads a tenant's components from its directory only.
                berth_tests::confine_components(&app);
                let config = apps.path().join("host.toml");
                std::fs::write(
                    &config,
                    format!(
                        "state_dir = {:?}\n[engine]\ncache_dir = {:?}\n",
                        apps.path().join("state"),
                        bench_dir().join("b1-cache")
                    ),
                )
                .unwrap();
                let dir = apps.path().join("apps");
                servers.push(spawn_berth_serve("berth serve", &berth, &dir, &config, addr));
            }
            None => println!("`berth serve`: skipped (no release berth binary)\n"),
        }
        let path_of = |s: &Server| if s.name == "berth serve" { "/hello/hello" } else { "/hello" };
        for s in &servers {
            wait_until_serving(s.addr, path_of(s), Duration::from_secs(120)).await;
        }
        println!(
            "Each server pinned to core 0 (`taskset -c 0`), this load generator to core 1: one keep-alive HTTP/1.1 connection per concurrent client, each sending its next request when the previous answer is read. {B1_ROUNDS} alternated rounds of {:.1} s (after {:.1} s of warm-up) per server and concurrency; medians over rounds.\n",
            B1_MEASURE.as_secs_f64(),
            B1_WARMUP.as_secs_f64()
        );
        println!("| concurrency | server | requests/s | p50 µs | p99 µs | errors |\n|---|---|---|---|---|---|");
        let mut table: Vec<(usize, &str, f64, f64, f64)> = Vec::new();
        for &c in &B1_CONCURRENCY {
            let mut rounds: Vec<Vec<LoadResult>> = vec![Vec::new(); servers.len()];
            for _ in 0..B1_ROUNDS {
                for (i, s) in servers.iter().enumerate() {
                    load(s.addr, path_of(s), c, B1_WARMUP).await;
                    rounds[i].push(load(s.addr, path_of(s), c, B1_MEASURE).await);
                }
            }
            for (i, s) in servers.iter().enumerate() {
                let rps = median_f(rounds[i].iter().map(|r| r.rps).collect());
                let p50 = median_f(rounds[i].iter().map(|r| r.p50).collect());
                let p99 = median_f(rounds[i].iter().map(|r| r.p99).collect());
                let errors: usize = rounds[i].iter().map(|r| r.errors).sum();
                println!("| {c} | {} | {rps:.0} | {p50:.0} | {p99:.0} | {errors} |", s.name);
                table.push((c, s.name, rps, p50, p99));
            }
        }
        println!();
        let find = |c: usize, name: &str| table.iter().find(|r| r.0 == c && r.1 == name).copied();
        println!("| concurrency | Berth / wasmtime serve throughput (goal ≥ 1.0×) | Berth / wasmtime serve p99 (goal ≤ 1.1×) | the same against `wasmtime serve` with Berth's pooling settings | Berth / native hyper throughput |\n|---|---|---|---|---|");
        for &c in &B1_CONCURRENCY {
            let Some(b) = find(c, "berth serve") else {
                continue;
            };
            let ratio = |x: Option<(usize, &str, f64, f64, f64)>, f: fn(&(usize, &str, f64, f64, f64)) -> f64| {
                x.map_or("skipped".to_string(), |x| format!("{:.2}×", f(&b) / f(&x)))
            };
            let (w, tuned, h) = (
                find(c, "wasmtime serve"),
                find(c, "wasmtime serve, Berth's pooling settings"),
                find(c, "native hyper"),
            );
            println!(
                "| {c} | **{}** | **{}** | {} / {} | {} |",
                ratio(w, |r| r.2),
                ratio(w, |r| r.4),
                ratio(tuned, |r| r.2),
                ratio(tuned, |r| r.4),
                ratio(h, |r| r.2)
            );
        }
        println!();
        drop(servers);
    });
}
