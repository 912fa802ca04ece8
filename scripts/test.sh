#!/usr/bin/env bash
# Runs every test on a fresh machine that has only the Rust toolchain.
# Installs what the tests need (none beyond Rust yet; ZooKeeper arrives with the cluster stage),
# checks formatting and lints, builds the binary the end-to-end tests start, and runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
cargo --version
rustc --version

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build (the end-to-end tests start the real binary)"
cargo build --locked -p corecache
cargo build --release --locked -p corecache  # tests/tests/crash_loop.rs runs the release binary

step "tests"
cargo test --locked --workspace --exclude corecache-bench

step "fuzz smoke (every fuzz target for FUZZ_SECONDS, default 20; scripts/fuzz-smoke.sh)"
bash scripts/fuzz-smoke.sh
