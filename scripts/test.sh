#!/usr/bin/env bash
# Runs every test on a fresh machine that has only the Rust toolchain.
# Installs what the tests need (ZooKeeper and a JRE from Debian's packages, for the cluster
# tests), checks formatting and lints, builds the binaries the end-to-end tests start, and runs
# the suite.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
cargo --version
rustc --version

step "ZooKeeper (Debian's zookeeper package; tests/src/zk.rs starts private servers from it)"
if [ ! -f /usr/share/java/zookeeper.jar ] || ! command -v java >/dev/null; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq zookeeper >/dev/null
fi
ls -l /usr/share/java/zookeeper.jar
java -version 2>&1 | head -1

step "redis-cli (Debian's redis-tools; tests/tests/resp.rs drives the RESP front-end with it)"
if ! command -v redis-cli >/dev/null; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-tools >/dev/null
fi
command -v redis-cli >/dev/null || { echo "redis-cli is missing: apt-get install -y redis-tools" >&2; exit 1; }
redis-cli --version

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
