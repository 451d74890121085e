#!/usr/bin/env bash
# Installs the reference host the serving benchmark compares against:
# wasmtime-cli 48 (the wasmtime Berth is built on) from the crate registry,
# into a local directory, with only the features `wasmtime serve` needs.
# Idempotent; prints the path of the `wasmtime` binary.
set -euo pipefail
version=48.0.8
root="${BERTH_BENCH_TOOLS:-$HOME/.cache/berth-bench}/wasmtime-cli-$version"
if [ ! -x "$root/bin/wasmtime" ]; then
  echo "installing wasmtime-cli $version into $root (a release build: ~15 min on 2 cores, once)" >&2
  cargo install wasmtime-cli --version "=$version" --locked \
    --no-default-features \
    --features run,serve,component-model-async,cranelift,pooling-allocator,parallel-compilation \
    --root "$root" \
    --target-dir "${BERTH_BENCH_TOOLS:-$HOME/.cache/berth-bench}/build" >&2
fi
echo "$root/bin/wasmtime"
