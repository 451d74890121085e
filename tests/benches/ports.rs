//! Port benchmarks against the real servers: each case runs the same work
//! through a guest on Berth and natively (sqlx, aws-sdk-s3, async-nats) in
//! this one process, and reports the ratio. Not a test: nothing here
//! asserts a time. Results go to `docs/benchmarks.md`.
//!
//! ```sh
//! just bench            # starts the services, then:
//! cargo bench -p berth-tests --bench ports
//! ```
//!
//! Needs the `BERTH_TEST_*` variables `.ci/services.sh` prints; a case
//! whose server is missing is reported as skipped.
//!
//! Profiling aids:
//! - `BERTH_BENCH_ONLY=postgres|s3|nats` runs one group;
//! - `BERTH_BENCH_ONLY=invoke` measures only the per-message invocation
//!   cost, with `BERTH_BENCH_IN_FLIGHT` deliveries at once (default 1) and,
//!   with `BERTH_BENCH_WARM=1`, warm instances;
//! - `BERTH_BENCH_SIDE=berth|native` runs one side of the point query;
//! - `BERTH_BENCH_SIDE=split` times the point query through the adapter
//!   without a guest, beside both sides; `BERTH_BENCH_SIDE=adapter` runs
//!   the adapter alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_tests::{TestApp, assert_success, guests, host_config, run, unique};
use sqlx::Connection as _;

#[path = "ports/cpu.rs"]
mod cpu;
#[path = "ports/nats.rs"]
mod nats;

/// Point queries per side, after a quarter as many warm-up queries.
const POINT_QUERIES: u64 = 20_000;
/// Blocks of the point-query benchmark, alternating sides (and which side
/// goes first), so that both sample the same noise of a shared machine.
const BLOCKS: usize = 40;
/// Rows in the point-query table.
const POINT_ROWS: u64 = 1_000;
/// The blob round trip, MiB.
const BLOB_MIB: u64 = 64;
/// Messages per NATS case.
const MESSAGES: u64 = 2_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        // `BERTH_BENCH_ONLY=postgres|s3|nats` runs one group (for profiling).
        let only = std::env::var("BERTH_BENCH_ONLY").unwrap_or_default();
        let env = |k: &str| {
            let group = k
                .trim_start_matches("BERTH_TEST_")
                .split('_')
                .next()
                .unwrap_or("");
            let wanted = only.is_empty() || group.eq_ignore_ascii_case(&only);
            std::env::var(k).ok().filter(|v| wanted && !v.is_empty())
        };
        println!("# Berth port benchmarks\n");
        if only == "invoke" {
            // Profiling aid: only Berth's per-message invocation cost.
            // `BERTH_BENCH_IN_FLIGHT` deliveries at once (default 1).
            let url = std::env::var("BERTH_TEST_NATS_URL").expect("BERTH_TEST_NATS_URL");
            let in_flight = std::env::var("BERTH_BENCH_IN_FLIGHT")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            // `BERTH_BENCH_WARM=1`: warm instances, as `reuse_instances`.
            let warm = std::env::var("BERTH_BENCH_WARM").is_ok_and(|v| v == "1");
            let (wall, cpu) = nats::invocation_cost_us(&url, in_flight, warm).await;
            // With more than one in flight, wall time per delivery is the
            // inverse of the throughput, not a latency.
            println!(
                "{wall:.2} µs of wall time and {cpu:.2} µs of CPU per delivery ({in_flight} in \
                 flight, warm instances: {warm})"
            );
            return;
        }
        match env("BERTH_TEST_POSTGRES_URL") {
            Some(url) => postgres_point_query(&url).await,
            None => println!(
                "postgres: skipped (BERTH_TEST_POSTGRES_URL not set, or another group chosen)\n"
            ),
        }
        match env("BERTH_TEST_S3_ENDPOINT") {
            Some(endpoint) => s3_round_trip(&endpoint).await,
            None => {
                println!("s3: skipped (BERTH_TEST_S3_ENDPOINT not set, or another group chosen)\n")
            }
        }
        match env("BERTH_TEST_NATS_URL") {
            Some(url) => {
                nats::nats_publish(&url).await;
                nats::nats_consume(&url, &nats::Work::Nothing).await;
                // The same drain with a handler that does a real handler's
                // work: it needs Postgres whatever `BERTH_BENCH_ONLY` says.
                match std::env::var("BERTH_TEST_POSTGRES_URL") {
                    Ok(pg) if !pg.is_empty() => {
                        let work = nats::Work::Record {
                            url: pg,
                            schema: unique("bench_record_"),
                        };
                        nats::nats_consume(&url, &work).await;
                    }
                    _ => println!(
                        "nats with Postgres work: skipped (BERTH_TEST_POSTGRES_URL not set)\n"
                    ),
                }
            }
            None => {
                println!("nats: skipped (BERTH_TEST_NATS_URL not set, or another group chosen)\n")
            }
        }
    });
}

// ---------------------------------------------------------------- helpers

/// p50 and p99 of `samples` (nanoseconds), in microseconds.
fn percentiles(mut samples: Vec<u64>) -> (f64, f64) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize] as f64 / 1e3;
    (at(0.50), at(0.99))
}

/// The `key=value` line `key` of a guest's output.
fn output_value<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("guest printed no {key}=: {stdout}"))
}

/// Resident set size of this process, bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Samples RSS every 2 ms until dropped; reports the peak above the RSS at
/// start.
struct PeakRss {
    base: u64,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl PeakRss {
    fn start() -> PeakRss {
        let base = rss_bytes();
        let peak = Arc::new(AtomicU64::new(base));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_bytes(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        PeakRss { base, peak, stop }
    }

    /// Peak growth so far, MiB.
    fn extra_mib(&self) -> f64 {
        self.peak
            .load(Ordering::Relaxed)
            .max(rss_bytes())
            .saturating_sub(self.base) as f64
            / (1 << 20) as f64
    }
}

impl Drop for PeakRss {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The bench guest imports the sql, blob and messaging ports, so every
/// case grants all three; the host config decides which are real.
fn bench_app(name: &str) -> TestApp {
    TestApp::new(&berth_tests::single_component_manifest(
        name,
        guests::BENCH_GUEST,
        "[sql.main]\n[blob.files]\n[kv.cache]\nmemory = true",
        "sql = [\"main\"]\nblob = [\"files\"]\npublish = [\"bench\"]\nkv = [\"cache\"]",
    ))
}

// ---------------------------------------------------------------- Postgres

async fn postgres_point_query(url: &str) {
    let schema = unique("bench_");
    let mut admin = sqlx::PgConnection::connect(url).await.expect("postgres");
    for statement in [
        format!("CREATE SCHEMA {schema}"),
        format!("CREATE TABLE {schema}.bench_users (id BIGINT PRIMARY KEY, name TEXT NOT NULL)"),
        format!(
            "INSERT INTO {schema}.bench_users SELECT g, 'user-' || g FROM generate_series(1, {POINT_ROWS}) g"
        ),
    ] {
        sqlx::query(&statement).execute(&mut admin).await.unwrap();
    }

    // Berth: the guest times each query with the WASI monotonic clock.
    let t = bench_app("benchpg");
    let host = host_config(
        &t,
        &format!(
            "[sql.main]\ntype = \"postgres\"\nurl = {url:?}\nschema = {schema:?}\nmax_connections = 4\n"
        ),
    );
    let app = t.load_with(&host).await.expect("app loads");
    let guest = |n: u64| {
        let app = &app;
        async move {
            let n = n.to_string();
            let rows = POINT_ROWS.to_string();
            let out = run(app, "guest", &["sql-point", "main", &rows, &n]).await;
            assert_success(&out);
            output_value(&out.stdout, "latencies_ns")
                .split(',')
                .map(|v| v.parse::<u64>().unwrap())
                .collect::<Vec<_>>()
        }
    };
    guest(POINT_QUERIES / 4).await; // warm-up: pool, prepared statements, caches

    // Native: sqlx on an identical pool, which pings a connection before
    // lending it only after a second idle (Berth's `pool_check`; Berth
    // also pings every connection for a while after one was lost, which
    // never happens here).
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                Ok(meta.idle_for < std::time::Duration::from_secs(1) || conn.ping().await.is_ok())
            })
        })
        .after_connect({
            let schema = schema.clone();
            move |conn, _| {
                let schema = schema.clone();
                Box::pin(async move {
                    sqlx::query(&format!("SET search_path TO {schema}"))
                        .execute(conn)
                        .await
                        .map(|_| ())
                })
            }
        })
        .connect(url)
        .await
        .unwrap();
    let native = |n: u64| {
        let pool = &pool;
        async move {
            let mut samples = Vec::with_capacity(n as usize);
            for i in 0..n {
                let id = (i % POINT_ROWS + 1) as i64;
                let start = Instant::now();
                let row: (i64, String) =
                    sqlx::query_as("SELECT id, name FROM bench_users WHERE id = $1")
                        .bind(id)
                        .fetch_one(pool)
                        .await
                        .unwrap();
                samples.push(start.elapsed().as_nanos() as u64);
                assert_eq!(row.0, id);
            }
            samples
        }
    };
    native(POINT_QUERIES / 4).await; // warm-up

    // Profiling aid: `BERTH_BENCH_SIDE=split` tells Berth's addition apart:
    // the same queries through the Postgres adapter called from Rust (no
    // guest), alternated with both sides.
    if let Ok(side @ ("split" | "adapter")) = std::env::var("BERTH_BENCH_SIDE").as_deref() {
        split_point_query(url, &schema, &native, &guest, side == "adapter").await;
        drop_schema(&mut admin, &schema).await;
        return;
    }

    // Profiling aid: `BERTH_BENCH_SIDE=berth|native` runs one side only.
    if let Ok(side) = std::env::var("BERTH_BENCH_SIDE") {
        let samples = match side.as_str() {
            "berth" => guest(POINT_QUERIES).await,
            _ => native(POINT_QUERIES).await,
        };
        let (p50, p99) = percentiles(samples);
        println!("{side} only: p50 {p50:.1} µs, p99 {p99:.1} µs\n");
        drop_schema(&mut admin, &schema).await;
        return;
    }

    // Alternate the two sides in short blocks (about 0.15 s each), the
    // first side changing every block, so that the hiccups of this shared
    // 2-core machine fall on both alike; then take each side's percentiles
    // over all of its samples.
    let block = POINT_QUERIES / BLOCKS as u64;
    let (mut berth, mut direct) = (Vec::new(), Vec::new());
    for b in 0..BLOCKS {
        if b % 2 == 0 {
            berth.push(guest(block).await);
            direct.push(native(block).await);
        } else {
            direct.push(native(block).await);
            berth.push(guest(block).await);
        }
    }
    let (b50, b99) = percentiles(berth.concat());
    let (n50, n99) = percentiles(direct.concat());
    println!(
        "## Postgres point query by primary key ({POINT_QUERIES} queries per side in {BLOCKS} alternated blocks; percentiles over all samples)\n"
    );
    println!("| | p50 µs | p99 µs |\n|---|---|---|");
    println!("| native sqlx pool | {n50:.1} | {n99:.1} |");
    println!("| guest through Berth | {b50:.1} | {b99:.1} |");
    println!(
        "| ratio (goal ≤ 1.1×, ≤ +30 µs) | {:.2}× (+{:.1} µs) | {:.2}× (+{:.1} µs) |",
        b50 / n50,
        b50 - n50,
        b99 / n99,
        b99 - n99
    );
    // The spread: each quarter of the run's own p99, per side.
    let spread = |blocks: &[Vec<u64>]| {
        blocks
            .chunks(BLOCKS / 4)
            .map(|quarter| format!("{:.0}", percentiles(quarter.concat()).1))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "\np99 per quarter of the run, µs: native {}; Berth {}.\n",
        spread(&direct),
        spread(&berth)
    );

    drop(app);
    pool.close().await;
    drop_schema(&mut admin, &schema).await;
}

async fn drop_schema(admin: &mut sqlx::PgConnection, schema: &str) {
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(admin)
        .await
        .unwrap();
}

/// `BERTH_BENCH_SIDE=split`: p50 of the point query natively, through the
/// adapter called from Rust, and through a guest, in alternated blocks;
/// with `adapter_only` (`BERTH_BENCH_SIDE=adapter`), the adapter alone.
async fn split_point_query<N, G, NF, GF>(
    url: &str,
    schema: &str,
    native: &N,
    guest: &G,
    adapter_only: bool,
) where
    N: Fn(u64) -> NF,
    G: Fn(u64) -> GF,
    NF: std::future::Future<Output = Vec<u64>>,
    GF: std::future::Future<Output = Vec<u64>>,
{
    use berth::ports::sql::postgres::{PostgresDatabase, PostgresSettings};
    use berth::ports::sql::{ResultCaps, SqlBackend as _, SqlValue};
    let db = PostgresDatabase::connect(&PostgresSettings {
        url: berth::secret::Secret::new(url.to_string()),
        password: None,
        schema: Some(schema.to_string()),
        max_connections: 4,
        min_connections: 0,
        connect_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(30),
        application_name: "berth:bench:adapter".into(),
        tenant: None,
        dry_run: false,
    })
    .await
    .expect("the adapter connects");
    let adapter = |n: u64| {
        let db = &db;
        async move {
            let mut samples = Vec::with_capacity(n as usize);
            for i in 0..n {
                let id = (i % POINT_ROWS + 1) as i64;
                let start = Instant::now();
                let rows = db
                    .query(
                        "SELECT id, name FROM bench_users WHERE id = ?".into(),
                        vec![SqlValue::Int(id)],
                        ResultCaps {
                            max_rows: 100,
                            max_bytes: 1 << 20,
                        },
                    )
                    .await
                    .expect("point query")
                    .rows;
                samples.push(start.elapsed().as_nanos() as u64);
                assert_eq!(rows.len(), 1, "row {id}");
            }
            samples
        }
    };
    adapter(POINT_QUERIES / 4).await; // warm-up
    if adapter_only {
        let (p50, p99) = percentiles(adapter(POINT_QUERIES).await);
        println!("adapter only: p50 {p50:.1} µs, p99 {p99:.1} µs\n");
        return;
    }
    let block = POINT_QUERIES / BLOCKS as u64;
    let mut sides = [Vec::new(), Vec::new(), Vec::new()];
    // Each side goes first, second and third in turn.
    for b in 0..BLOCKS {
        for turn in 0..3 {
            let side = (b + turn) % 3;
            let samples = match side {
                0 => native(block).await,
                1 => adapter(block).await,
                _ => guest(block).await,
            };
            sides[side].push(samples);
        }
    }
    let [n50, a50, g50] = sides.map(|side| percentiles(side.concat()).0);
    println!(
        "p50 µs: native {n50:.1}; adapter without a guest {a50:.1} (+{:.1}); guest {g50:.1} \
         (+{:.1} over the adapter)\n",
        a50 - n50,
        g50 - a50
    );
}

// ---------------------------------------------------------------- S3

const PART_MIB: u64 = 8;

async fn s3_round_trip(endpoint: &str) {
    let s3 = berth_tests::s3_client(endpoint);
    let bucket = unique("berth-bench-");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let t = bench_app("benchs3");
    let key_file = t.dir.path().join("key");
    std::fs::write(&key_file, "testing").unwrap();
    let host = host_config(
        &t,
        &format!(
            "[blob.files]\ntype = \"s3\"\nendpoint = {endpoint:?}\nbucket = {bucket:?}\npath_style = true\npart_size_mb = {PART_MIB}\naccess_key_id = \"${{file:{k}}}\"\nsecret_access_key = \"${{file:{k}}}\"\n",
            k = key_file.display()
        ),
    );
    let app = t.load_with(&host).await.expect("app loads");
    let mib = BLOB_MIB.to_string();
    // Warm-up: compile cache, connections.
    assert_success(&run(&app, "guest", &["blob-roundtrip", "files", "8"]).await);

    let (mut guest_put, mut guest_get, mut guest_rss) = (Vec::new(), Vec::new(), 0f64);
    let (mut native_put, mut native_get) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let rss = PeakRss::start();
        let out = run(&app, "guest", &["blob-roundtrip", "files", &mib]).await;
        assert_success(&out);
        guest_rss = guest_rss.max(rss.extra_mib());
        guest_put.push(output_value(&out.stdout, "put_ns").parse::<f64>().unwrap() / 1e9);
        guest_get.push(output_value(&out.stdout, "get_ns").parse::<f64>().unwrap() / 1e9);
        drop(rss);

        let (put, get) = native_round_trip(&s3, &bucket).await;
        native_put.push(put);
        native_get.push(get);
    }
    let best = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
    let mb = BLOB_MIB as f64;
    let (gp, gg, np, ng) = (
        best(&guest_put),
        best(&guest_get),
        best(&native_put),
        best(&native_get),
    );
    println!("## {BLOB_MIB} MiB blob put + get on S3 (best of 3; {PART_MIB} MiB parts)\n");
    println!("| | put MiB/s | get MiB/s | put+get MiB/s |\n|---|---|---|---|");
    println!(
        "| native aws-sdk-s3 (1 MiB chunks in, streamed out) | {:.0} | {:.0} | {:.0} |",
        mb / np,
        mb / ng,
        2.0 * mb / (np + ng)
    );
    println!(
        "| guest through Berth (1 MiB writes/reads) | {:.0} | {:.0} | {:.0} |",
        mb / gp,
        mb / gg,
        2.0 * mb / (gp + gg)
    );
    println!(
        "| ratio (goal ≥ 0.8×) | {:.2}× | {:.2}× | {:.2}× |\n",
        np / gp,
        ng / gg,
        (np + ng) / (gp + gg)
    );
    println!(
        "Peak growth of this process's RSS during a guest round trip (host and guest together): \
         {guest_rss:.1} MiB for a {BLOB_MIB} MiB object ({PART_MIB} MiB parts, 1 MiB chunks).\n"
    );

    drop(app);
    let _ = s3
        .delete_object()
        .bucket(&bucket)
        .key("native")
        .send()
        .await;
    s3.delete_bucket().bucket(&bucket).send().await.unwrap();
}

/// The same round trip natively: multipart upload in `PART_MIB` parts built
/// from 1 MiB chunks, then a streamed GET; returns seconds for each.
async fn native_round_trip(s3: &aws_sdk_s3::Client, bucket: &str) -> (f64, f64) {
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    let start = Instant::now();
    let upload = s3
        .create_multipart_upload()
        .bucket(bucket)
        .key("native")
        .send()
        .await
        .unwrap();
    let upload_id = upload.upload_id().unwrap().to_owned();
    let mut parts = Vec::new();
    let mut part = Vec::with_capacity((PART_MIB << 20) as usize);
    for i in 0..BLOB_MIB {
        part.extend((0..(1u64 << 20)).map(|j| ((i * (1 << 20) + j) % 251) as u8));
        if part.len() as u64 == PART_MIB << 20 || i + 1 == BLOB_MIB {
            let number = parts.len() as i32 + 1;
            let done = s3
                .upload_part()
                .bucket(bucket)
                .key("native")
                .upload_id(&upload_id)
                .part_number(number)
                .body(std::mem::take(&mut part).into())
                .send()
                .await
                .unwrap();
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(done.e_tag().map(str::to_owned))
                    .build(),
            );
        }
    }
    s3.complete_multipart_upload()
        .bucket(bucket)
        .key("native")
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let put = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut body = s3
        .get_object()
        .bucket(bucket)
        .key("native")
        .send()
        .await
        .unwrap()
        .body;
    let mut offset = 0u64;
    while let Some(chunk) = body.try_next().await.unwrap() {
        for (j, b) in chunk.iter().enumerate() {
            assert_eq!(*b, ((offset + j as u64) % 251) as u8);
        }
        offset += chunk.len() as u64;
    }
    assert_eq!(offset, BLOB_MIB << 20);
    (put, start.elapsed().as_secs_f64())
}
