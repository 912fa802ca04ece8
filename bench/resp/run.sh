#!/usr/bin/env bash
# RESP benchmark: redis-benchmark against CoreCache's Redis protocol front-end and against
# redis-server, in the same run, under the same load:
#
#   redis-benchmark -t set,get,incr,mset -n N -r 1000000 -c 50 -d 100 -P {1,16}
#
# 1. CoreCache --sync none vs redis-server without persistence (-P 1 and -P 16), N = N (1,000,000).
# 2. CoreCache --sync always vs redis-server with appendonly yes / appendfsync always (-P 1 and
#    -P 16, set and incr), N = N_ALWAYS (200,000 by default: each write waits for an fsync, so a
#    million would take many minutes on a slow disk and measure the same thing).
#
#   bash bench/resp/run.sh
#
# Settings (environment): N, N_ALWAYS, CONNS (50), CARGO_TARGET_DIR (default /work/target-bench),
# SKIP_BUILD=1. Every server listens on 127.0.0.1 on a free port and runs in a temporary
# directory; all are stopped at the end. Prints the machine, the commands and a markdown table
# with requests/s and the ratio CoreCache / Redis.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
N="${N:-1000000}"
N_ALWAYS="${N_ALWAYS:-200000}"
CONNS="${CONNS:-50}"
TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-bench}"
START=$(date +%s)
log() { echo "[$(($(date +%s) - START))s] $*" >&2; }

for t in redis-server redis-benchmark redis-cli python3; do
    command -v "$t" >/dev/null || { echo "missing $t (apt-get install -y redis-server redis-tools)" >&2; exit 1; }
done

if [[ "${SKIP_BUILD:-}" != 1 ]]; then
    log "building corecache (release, $TARGET_DIR)"
    (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -q -p corecache)
fi
CORECACHE="$TARGET_DIR/release/corecache"

WORK="$(mktemp -d /tmp/corecache-respbench.XXXXXX)"
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_ping() {
    for _ in $(seq 200); do
        redis-cli -p "$1" ping 2>/dev/null | grep -q PONG && return 0
        sleep 0.1
    done
    echo "server on port $1 did not answer PING" >&2
    exit 1
}

start_corecache() { # sync -> port
    local sync="$1" dir="$WORK/cc-$1" port
    mkdir -p "$dir"
    port=$(free_port)
    "$CORECACHE" serve --listen 127.0.0.1:0 --resp-listen "127.0.0.1:$port" --data-dir "$dir/data" \
        --sync "$sync" >"$dir/stdout" 2>"$dir/stderr" &
    PIDS+=($!)
    wait_ping "$port"
    echo "$port"
}

start_redis() { # appendfsync (none|always) -> port
    local mode="$1" dir="$WORK/redis-$1" port
    mkdir -p "$dir"
    port=$(free_port)
    if [[ $mode == none ]]; then
        redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no >"$dir/log" 2>&1 &
    else
        redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly yes \
            --appendfsync always >"$dir/log" 2>&1 &
    fi
    PIDS+=($!)
    wait_ping "$port"
    echo "$port"
}

# run NAME PORT N TESTS PIPELINE
run() {
    local name="$1" port="$2" n="$3" tests="$4" p="$5"
    local cmd="redis-benchmark -p PORT -t $tests -n $n -r 1000000 -c $CONNS -d 100 -P $p --csv"
    log "$name -P $p: $cmd"
    echo "$cmd" >>"$WORK/commands.txt"
    redis-benchmark -p "$port" -t "$tests" -n "$n" -r 1000000 -c "$CONNS" -d 100 -P "$p" --csv -q 2>/dev/null |
        tr -d '"' | awk -F, -v name="$name" -v p="$p" '$1 != "test" { print name "\t" p "\t" $1 "\t" $2 }' >>"$RESULTS"
}

CC=$(start_corecache none)
RD=$(start_redis none)
for p in 1 16; do
    run corecache-none "$CC" "$N" set,get,incr,mset "$p"
    run redis-none "$RD" "$N" set,get,incr,mset "$p"
done
CCA=$(start_corecache always)
RDA=$(start_redis always)
for p in 1 16; do
    run corecache-always "$CCA" "$N_ALWAYS" set,incr "$p"
    run redis-always "$RDA" "$N_ALWAYS" set,incr "$p"
done

echo
echo "## Machine"
echo
echo "- $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
echo "- $(free -g | awk '/Mem:/ {print $2}') GiB RAM; $(uname -sr); $(redis-server --version | cut -d' ' -f1-3)"
echo "- data on $(df -h "$WORK" | awk 'NR==2 {print $1 " (" $2 ")"}')"
echo
echo "## Commands"
echo
sed 's/^/    /' "$WORK/commands.txt" | sort -u
echo
echo "## Results (requests/s)"
echo
python3 - "$RESULTS" <<'EOF'
import sys, collections
rows = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    name, p, test, rps = line.rstrip("\n").split("\t")
    rows[(name.split("-")[1], p, test)][name.split("-")[0]] = float(rps)
print("| durability | -P | test | CoreCache | Redis | ratio |")
print("|---|---|---|---:|---:|---:|")
for (mode, p, test), v in sorted(rows.items(), key=lambda kv: (kv[0][0] != "none", int(kv[0][1]), kv[0][2])):
    cc, rd = v.get("corecache"), v.get("redis")
    ratio = f"{cc / rd:.2f}x" if cc and rd else "-"
    label = "sync none / no persistence" if mode == "none" else "sync always / appendfsync always"
    print(f"| {label} | {p} | {test} | {cc or 0:,.0f} | {rd or 0:,.0f} | {ratio} |")
EOF
log "done (work dir $WORK)"
