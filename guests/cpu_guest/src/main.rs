//! Benchmark guest (`wasi:cli/run` command) importing nothing but WASI, so
//! bare wasmtime and Berth run it alike: `cpu_guest <n>` runs `n` rounds of
//! integer mixing with no host call, timed with the WASI monotonic clock,
//! and prints `cpu_ns=` and the result (epoch interruption's cost, B8 in
//! `tests/benches/serve.rs`).

use std::time::Instant;

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("usage: cpu_guest <rounds>");
    let start = Instant::now();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = x.wrapping_add(std::hint::black_box(i));
    }
    println!("cpu_ns={}", start.elapsed().as_nanos());
    println!("result={x}");
}
