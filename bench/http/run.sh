#!/usr/bin/env bash
# HTTP benchmark: CoreCache (--sync none and --sync always) against an axum in-memory "ceiling",
# Redis 7 (no persistence; AOF with appendfsync always) and etcd 3.4 (JSON gateway), under one
# load: 50 connections, 16-byte keys uniform over 1,000,000 (all prefilled, so reads hit),
# 100-byte values. HTTP targets are driven by wrk (PUT, GET, 90% GET / 10% PUT), Redis by
# redis-benchmark. Prints the machine, the exact commands, and markdown tables with the ratios
# the HTTP issue's targets need.
#
#   bash bench/http/run.sh
#
# Settings (environment): DURATION (wrk run, default 10s), CONNS (50), THREADS (wrk threads, 2),
# KEYS (1000000), REDIS_N (requests per redis-benchmark test, no persistence; 500000),
# REDIS_AOF_N (with appendfsync always; 200000), CARGO_TARGET_DIR (where cargo builds), SKIP_BUILD=1.
# Installs wrk, redis-server, redis-tools and etcd-server with apt-get when missing (needs root).
# Every server listens on 127.0.0.1 on a port the OS picked, and all are stopped at the end.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DURATION="${DURATION:-10s}"
CONNS="${CONNS:-50}"
THREADS="${THREADS:-2}"
KEYS="${KEYS:-1000000}"
REDIS_N="${REDIS_N:-500000}"
REDIS_AOF_N="${REDIS_AOF_N:-200000}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
HELPER="$HERE/helper.py"
START=$(date +%s)

log() { echo "[$(($(date +%s) - START))s] $*" >&2; }

# --- tools ------------------------------------------------------------------------------------
missing=()
command -v python3 >/dev/null || missing+=(python3)
command -v wrk >/dev/null || missing+=(wrk)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-benchmark >/dev/null || missing+=(redis-tools)
command -v etcd >/dev/null || missing+=(etcd-server)
if ((${#missing[@]})); then
    log "installing: ${missing[*]}"
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian's packages start their own services on install where they can; ours use other ports.

if [[ "${SKIP_BUILD:-}" != 1 ]]; then
    log "building corecache and the ceiling (release, target dir $TARGET_DIR)"
    (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -q -p corecache -p corecache-bench)
fi
CORECACHE="$TARGET_DIR/release/corecache"
CEILING="$TARGET_DIR/release/ceiling"

# --- servers ----------------------------------------------------------------------------------
WORK="$(mktemp -d /tmp/corecache-httpbench.XXXXXX)"
RESULTS="$WORK/results.tsv"
COMMANDS="$WORK/commands.txt"
NOTES="$WORK/notes.txt"
: >"$RESULTS"
: >"$COMMANDS"
: >"$NOTES"
declare -a PIDS=()

# quoted CMD...: the command as one line a shell would read back the same.
quoted() {
    local out
    printf -v out '%q ' "$@"
    echo "${out% }"
}

stop_pid() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: runs CMD in the background (stdout/stderr in $WORK/NAME.out/.err), sets PID.
start() {
    local name=$1
    shift
    quoted "$@" >>"$COMMANDS"
    "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PID=$!
    PIDS+=("$PID")
}

port() { python3 "$HELPER" port; }

# wrk_run TARGET OP URL SCRIPT: one wrk run, its parsed row appended to the results.
wrk_run() {
    local target=$1 op=$2 url=$3 script=$4
    local cmd=(wrk "-t$THREADS" "-c$CONNS" "-d$DURATION" --latency -s "$HERE/$script" "$url" -- "$op" "$KEYS")
    quoted "${cmd[@]}" >>"$COMMANDS"
    log "$target $op"
    "${cmd[@]}" >"$WORK/$target-$op.wrk" 2>&1 || true
    if ! python3 "$HELPER" wrk "$target" "$op" "$WORK/$target-$op.wrk" >>"$RESULTS"; then
        echo "$target $op: wrk output not understood:" >>"$NOTES"
        cat "$WORK/$target-$op.wrk" >>"$NOTES"
    fi
    # Keep wrk's own word about errors and non-2xx answers.
    if grep -qE "Socket errors|Non-2xx" "$WORK/$target-$op.wrk"; then
        { echo "$target $op:"; grep -E "Socket errors|Non-2xx" "$WORK/$target-$op.wrk"; } >>"$NOTES"
    fi
}

prefill() {
    local kind=$1 addr=$2 cmd=(python3 "$HELPER" prefill "$1" "$2" "$KEYS")
    quoted "${cmd[@]}" >>"$COMMANDS"
    log "prefill $kind ($KEYS keys)"
    "${cmd[@]}" | tee -a "$NOTES" >&2
}

# server_errors NAME PID: did the server die or log errors?
check_server() {
    local name=$1 pid=$2
    if [[ -r /proc/$pid/status ]]; then
        # Memory after the prefill and all three load runs: peak and current resident set.
        echo "$name memory: $(grep -E '^(VmHWM|VmRSS)' "/proc/$pid/status" | tr -s ' \t' ' ' | tr '\n' ' ')" >>"$NOTES"
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "$name DIED during the run; its stderr:" >>"$NOTES"
        tail -20 "$WORK/$name.err" >>"$NOTES"
    fi
    local n
    n=$(grep -ciE "error|panic" "$WORK/$name.err" || true)
    if [[ "$n" != 0 ]]; then
        { echo "$name: $n error/panic lines on stderr, e.g.:"; grep -iE "error|panic" "$WORK/$name.err" | head -3; } >>"$NOTES"
    fi
}

kv_target() {
    local name=$1
    shift
    start "$name" "$@"
    local pid=$PID addr
    addr=$(python3 "$HELPER" wait-listen "$WORK/$name.out" 60)
    if [[ $name == corecache-* ]]; then
        python3 "$HELPER" wait-http "http://$addr/readyz" 60
        prefill cc-batch "$addr"
        echo "$name after the prefill: $(python3 "$HELPER" cc-settle "$addr")" >>"$NOTES"
    else
        prefill kv-pipeline "$addr"
    fi
    for op in put get mix; do wrk_run "$name" "$op" "http://$addr" kv.lua; done
    check_server "$name" "$pid"
    stop_pid "$pid"
}

# --- CoreCache and the ceiling ------------------------------------------------------------------
for mode in none always; do
    kv_target "corecache-$mode" "$CORECACHE" serve --listen "127.0.0.1:$(port)" \
        --data-dir "$WORK/corecache-$mode" --sync "$mode"
done
kv_target ceiling "$CEILING" --listen "127.0.0.1:$(port)"

# --- etcd ---------------------------------------------------------------------------------------
cport=$(port)
pport=$(port)
start etcd etcd --name bench --data-dir "$WORK/etcd" \
    --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "bench=http://127.0.0.1:$pport" --max-txn-ops 4096 \
    --logger zap --log-outputs stderr --log-level warn
etcd_pid=$PID
python3 "$HELPER" wait-http "http://127.0.0.1:$cport/health" 60
prefill etcd-txn "127.0.0.1:$cport"
echo "etcd holds $(python3 "$HELPER" etcd-count "127.0.0.1:$cport") keys before the runs" >>"$NOTES"
for op in put get mix; do wrk_run etcd "$op" "http://127.0.0.1:$cport" etcd.lua; done
check_server etcd "$etcd_pid"
stop_pid "$etcd_pid"

# --- Redis ----------------------------------------------------------------------------------------
redis_target() {
    local name=$1 n=$2
    shift 2
    local rport
    rport=$(port)
    mkdir -p "$WORK/$name"
    start "$name" redis-server --port "$rport" --bind 127.0.0.1 --dir "$WORK/$name" \
        --daemonize no --logfile "" "$@"
    local pid=$PID
    python3 "$HELPER" wait-redis "$rport" 30
    prefill redis "$rport"
    if [[ " $* " == *" --appendonly yes "* ]]; then
        log "$name: rewriting the AOF after the prefill, so no rewrite runs while measuring"
        python3 "$HELPER" redis-aof-settle "$rport"
    fi
    echo "$name DBSIZE before the runs: $(python3 "$HELPER" redis-cmd "$rport" DBSIZE)" >>"$NOTES"
    local cmd=(redis-benchmark -h 127.0.0.1 -p "$rport" -t set,get -n "$n" -r "$KEYS" -c "$CONNS" -d 100 --csv)
    quoted "${cmd[@]}" >>"$COMMANDS"
    log "$name set,get (-n $n)"
    "${cmd[@]}" >"$WORK/$name.csv" 2>"$WORK/$name.bench.err" || true
    python3 "$HELPER" redis "$name" "$WORK/$name.csv" >>"$RESULTS"
    check_server "$name" "$pid"
    stop_pid "$pid"
}
redis_target redis-none "$REDIS_N" --save '' --appendonly no
redis_target redis-aof-always "$REDIS_AOF_N" --save '' --appendonly yes --appendfsync always

# --- report -------------------------------------------------------------------------------------
echo "## CoreCache HTTP benchmark"
echo
echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r)"
echo "- disk: $(df -h /tmp | awk 'NR==2{print $1" "$6}')"
echo "- versions: $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2); $(redis-server --version | cut -d' ' -f1-3); $(etcd --version | head -1); $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?') (corecache, with local changes: $(cd "$ROOT" && git status --porcelain | wc -l) files)"
echo "- load: $CONNS connections, wrk -t$THREADS -d$DURATION, 16-byte keys uniform over $KEYS (all prefilled), 100-byte values; mix = 90% GET / 10% PUT"
echo "- total wall time: $(($(date +%s) - START)) s"
echo
echo "### Commands"
echo
echo '```'
cat "$COMMANDS"
echo '```'
echo
echo "### Results"
echo
python3 "$HELPER" report "$RESULTS"
echo
echo "### Notes (prefills, key counts, errors)"
echo
echo '```'
cat "$NOTES"
echo '```'
