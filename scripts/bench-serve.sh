#!/usr/bin/env bash
# The serving benchmarks (B1-B8 of tests/benches/serve.rs) from one command
# on a fresh machine: installs wasmtime-cli 48 once (scripts/bench-tools.sh),
# builds the release `berth` binary, then runs them and prints Markdown for
# docs/benchmarks.md. One group or several: BERTH_BENCH_ONLY=b1,b6 bash scripts/bench-serve.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
export BERTH_BENCH_WASMTIME="${BERTH_BENCH_WASMTIME:-$(bash scripts/bench-tools.sh)}"
cargo build --release -p berth
cargo bench -p berth-tests --bench serve
