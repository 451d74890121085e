# Berth development recipes. `just --list` shows them.

# Run the whole test suite (the README's test command).
test:
    cargo test --workspace

# Lints: clippy with warnings as errors, rustfmt check (host and guests).
lint:
    cargo clippy --all-targets -- -D warnings
    cargo fmt --all -- --check
    cd guests && cargo fmt --all -- --check

# Build and serve the example app on embedded defaults.
example:
    cargo run -p berth -- up guests/example/berth.toml

# Re-render docs/ports.md from the WIT doc comments.
docs:
    BERTH_BLESS=1 cargo test -p berth-tests --test all docs

# Start the services the real-adapter suites use (idempotent); prints the
# variables to export: eval "$(just services)".
services:
    @bash .ci/services.sh

# Port benchmarks against the real servers, the noisy-neighbour benchmark,
# then the serving benchmarks (release builds; results for
# docs/benchmarks.md are printed as Markdown).
bench: && bench-serve
    eval "$(bash .ci/services.sh)" && cargo bench -p berth-tests --bench ports
    cargo bench -p berth-tests --bench tenants

# Serving benchmarks B1-B8 against `wasmtime serve` and native baselines:
# installs wasmtime-cli 48 once (into ~/.cache/berth-bench), builds the
# release `berth`, then runs them. One group: BERTH_BENCH_ONLY=b1 just bench-serve
bench-serve:
    bash scripts/bench-serve.sh

# Run the tests including the real-server suites.
test-services:
    eval "$(bash .ci/services.sh)" && BERTH_TEST_REQUIRE_SERVICES=1 cargo test --workspace
