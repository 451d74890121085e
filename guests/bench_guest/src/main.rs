//! Benchmark guest (`wasi:cli/run` command): runs one port operation in a
//! loop and prints its timings, measured inside the guest with the WASI
//! monotonic clock, as `key=value` lines for the benchmark harness
//! (`tests/benches/ports.rs`).
//!
//! Modes (argv[1..]):
//! - `sql-point <db> <rows> <n>`: `n` point queries by primary key on table
//!   `bench_users` (ids `1..=rows`); prints `latencies_ns=<comma list>`.
//! - `blob-roundtrip <container> <mib>`: writes `mib` MiB in 1 MiB chunks,
//!   reads it back in 1 MiB reads, checks every byte; prints `put_ns=` and
//!   `get_ns=`.
//! - `publish <topic> <n>`: publishes `n` 64-byte messages, each waiting for
//!   the broker's ack; prints `publish_ns=`.
//! - `host-calls <key> <n>`: `n` calls of the cheapest port call,
//!   `config::get(key)`, and `n` reads of the WASI monotonic clock; prints
//!   `config_get_ns=` and `clock_now_ns=` (totals).
//! - `bytes <bucket> <n>`: `n` times each: a 1 MiB `list<u8>` into the host
//!   (`kv` `set`), one out of it (`kv` `get`), and a 1 MiB copy inside the
//!   guest; prints `set_ns=`, `get_ns=` and `memcpy_ns=` (totals).

use std::time::Instant;

use berth_bindings::blob::Container;
use berth_bindings::config;
use berth_bindings::kv::Bucket;
use berth_bindings::messaging;
use berth_bindings::sql::{Connection, Value};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let int = |s: &str| -> u64 { s.parse().expect("a number") };
    match args.get(1..).unwrap_or_default() {
        ["sql-point", db, rows, n] => sql_point(db, int(rows), int(n)),
        ["blob-roundtrip", container, mib] => blob_roundtrip(container, int(mib)),
        ["publish", topic, n] => publish(topic, int(n)),
        ["host-calls", key, n] => host_calls(key, int(n)),
        ["bytes", bucket, n] => bytes(bucket, int(n)),
        other => panic!("usage: see the module docs; got {other:?}"),
    }
}

fn sql_point(db: &str, rows: u64, n: u64) {
    let conn = Connection::open(db).expect("open db");
    let mut latencies = Vec::with_capacity(n as usize);
    for i in 0..n {
        let id = (i % rows + 1) as i64;
        let start = Instant::now();
        let rs = conn
            .query(
                "SELECT id, name FROM bench_users WHERE id = ?",
                &[Value::Int(id)],
            )
            .expect("point query");
        latencies.push(start.elapsed().as_nanos() as u64);
        assert_eq!(rs.rows.len(), 1, "row {id}");
    }
    // Formatted only at the end: allocating per query would grow the heap
    // (and linear memory) inside later timed calls, which the native side
    // of the benchmark does not do either.
    let text: Vec<String> = latencies.iter().map(u64::to_string).collect();
    println!("latencies_ns={}", text.join(","));
}

/// The byte at `offset` of the benchmark object: varied, cheap, checkable.
fn byte_at(offset: u64) -> u8 {
    (offset % 251) as u8
}

fn blob_roundtrip(container: &str, mib: u64) {
    const CHUNK: u64 = 1 << 20;
    let c = Container::open(container).expect("open container");
    let mut chunk = vec![0u8; CHUNK as usize];
    let start = Instant::now();
    let writer = c.write("bench/object").expect("writer");
    for i in 0..mib {
        for (j, b) in chunk.iter_mut().enumerate() {
            *b = byte_at(i * CHUNK + j as u64);
        }
        writer.write(&chunk).expect("write chunk");
    }
    let info = writer.finish().expect("finish");
    let put = start.elapsed();
    assert_eq!(info.size, mib * CHUNK);

    let start = Instant::now();
    let reader = c.read("bench/object").expect("reader");
    let mut offset = 0u64;
    loop {
        let part = reader.read(CHUNK as u32).expect("read");
        if part.is_empty() {
            break;
        }
        for (j, b) in part.iter().enumerate() {
            assert_eq!(*b, byte_at(offset + j as u64), "byte {}", offset + j as u64);
        }
        offset += part.len() as u64;
    }
    let get = start.elapsed();
    assert_eq!(offset, mib * CHUNK);
    c.delete("bench/object").expect("delete");
    println!("put_ns={}", put.as_nanos());
    println!("get_ns={}", get.as_nanos());
}

fn publish(topic: &str, n: u64) {
    let payload = [0x42u8; 64];
    let start = Instant::now();
    for _ in 0..n {
        messaging::publish(topic, &payload, &[]).expect("publish");
    }
    println!("publish_ns={}", start.elapsed().as_nanos());
}

fn host_calls(key: &str, n: u64) {
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(config::get(key).expect("config get"));
    }
    println!("config_get_ns={}", start.elapsed().as_nanos());
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(Instant::now());
    }
    println!("clock_now_ns={}", start.elapsed().as_nanos());
}

fn bytes(bucket: &str, n: u64) {
    const MIB: usize = 1 << 20;
    let bucket = Bucket::open(bucket).expect("open bucket");
    let value: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
    let start = Instant::now();
    for _ in 0..n {
        bucket.set("bench", &value, None).expect("set");
    }
    println!("set_ns={}", start.elapsed().as_nanos());
    let start = Instant::now();
    for _ in 0..n {
        let got = bucket.get("bench").expect("get").expect("present");
        assert_eq!(got.len(), MIB);
        std::hint::black_box(got);
    }
    println!("get_ns={}", start.elapsed().as_nanos());
    let mut copy = vec![0u8; MIB];
    let start = Instant::now();
    for _ in 0..n {
        copy.copy_from_slice(std::hint::black_box(&value));
        std::hint::black_box(&copy);
    }
    println!("memcpy_ns={}", start.elapsed().as_nanos());
}
