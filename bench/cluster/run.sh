#!/usr/bin/env bash
# Cluster benchmark, in one run on this machine, against a real ZooKeeper:
#  1. throughput through one node of a 3-node cluster relative to a 1-node cluster (same data,
#     same load: wrk, CONNS connections, 16-byte keys uniform over KEYS, 100-byte values;
#     PUT, GET and 90/10), both with --sync none and --sync always;
#  2. the time to hand off one partition of MOVE_KEYS keys (a cluster created with one
#     partition; a second node joins; the first is decommissioned; timed from the request to
#     the flipped map).
#
#   bash bench/cluster/run.sh
#
# Settings (environment): DURATION (10s), CONNS (50), THREADS (2), KEYS (200000), MOVE_KEYS
# (100000), CARGO_TARGET_DIR, SKIP_BUILD=1. Installs wrk and zookeeper with apt-get if missing.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
HELPER="$ROOT/bench/http/helper.py"
LUA="$ROOT/bench/http/kv.lua"
DURATION="${DURATION:-10s}"
CONNS="${CONNS:-50}"
THREADS="${THREADS:-2}"
KEYS="${KEYS:-200000}"
MOVE_KEYS="${MOVE_KEYS:-100000}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
START=$(date +%s)
log() { echo "[$(($(date +%s) - START))s] $*" >&2; }

missing=()
command -v wrk >/dev/null || missing+=(wrk)
[[ -f /usr/share/java/zookeeper.jar ]] || missing+=(zookeeper)
if ((${#missing[@]})); then
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [[ "${SKIP_BUILD:-}" != 1 ]]; then
    log "building corecache (release, target dir $TARGET_DIR)"
    (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -q -p corecache)
fi
CC="$TARGET_DIR/release/corecache"

WORK="$(mktemp -d /tmp/corecache-clusterbench.XXXXXX)"
declare -a PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# ZooKeeper, standalone, on a free port.
ZKPORT=$(python3 "$HELPER" port)
mkdir -p "$WORK/zk"
cat >"$WORK/zoo.cfg" <<EOF
tickTime=250
dataDir=$WORK/zk
clientPort=$ZKPORT
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,mntr
EOF
java -cp /usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar \
    org.apache.zookeeper.server.quorum.QuorumPeerMain "$WORK/zoo.cfg" >"$WORK/zk.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    [[ "$(exec 3<>/dev/tcp/127.0.0.1/$ZKPORT && echo ruok >&3 && cat <&3)" == imok ]] 2>/dev/null && break
    sleep 0.1
done
ZK="127.0.0.1:$ZKPORT"

# start_node CLUSTER ID SYNC [extra flags...]: prints the HTTP address.
start_node() {
    local cluster=$1 id=$2 sync=$3
    shift 3
    "$CC" serve --listen 127.0.0.1:0 --peer-listen 127.0.0.1:0 --data-dir "$WORK/$cluster-$id" \
        --node-id "$id" --zookeeper "$ZK" --cluster "$cluster" --sync "$sync" "$@" \
        >"$WORK/$cluster-$id.out" 2>"$WORK/$cluster-$id.err" &
    PIDS+=($!)
    local addr
    addr=$(python3 "$HELPER" wait-listen "$WORK/$cluster-$id.out" 30)
    python3 "$HELPER" wait-http "http://$addr/readyz" 30 >/dev/null
    for _ in $(seq 300); do
        [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://$addr/readyz")" == 200 ]] && break
        sleep 0.1
    done
    echo "$addr"
}

# status ADDR FIELD-EXPRESSION (python over the status JSON `s`)
status() {
    curl -s "http://$1/v1/status" | python3 -c "import json,sys; s=json.load(sys.stdin); print($2)"
}

wait_balanced() { # ADDR NODES
    for _ in $(seq 1200); do
        local ok
        ok=$(status "$1" "len(s['moving'])==0 and len(set(s['partitions'].values()))==$2")
        [[ "$ok" == True ]] && return 0
        sleep 0.25
    done
    echo "never balanced" >&2
    return 1
}

run_wrk() { # ADDR OP -> "req/s p50 p99"
    local out="$WORK/wrk.txt"
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$LUA" "http://$1" -- "$2" "$KEYS" >"$out" 2>&1
    python3 - "$out" <<'EOF'
import re, sys
t = open(sys.argv[1]).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
def lat(p):
    m = re.search(r"\s%s%%\s+([\d.]+)(us|ms|s)\b" % p, t)
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v
errs = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
print(f"{rps:.0f} {lat(50):.2f} {lat(99):.2f} {errs.group(1) if errs else 0}")
EOF
}

echo "## Machine"
echo "$(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr); corecache $("$CC" --version)"
echo
echo "| sync | op | 1 node req/s | 3 nodes, through one node req/s | ratio | 1 node p50/p99 ms | 3 nodes p50/p99 ms | non-2xx |"
echo "|---|---|---|---|---|---|---|---|"
for sync in none always; do
    log "sync=$sync: one node, prefill $KEYS keys"
    A=$(start_node "tp-$sync" a "$sync")
    python3 "$HELPER" prefill cc-batch "$A" "$KEYS" >/dev/null
    python3 "$HELPER" cc-settle "$A" >/dev/null || true
    declare -A ONE=()
    for op in put get mix; do ONE[$op]=$(run_wrk "$A" "$op"); done
    log "sync=$sync: two more nodes join; waiting for the hand-off"
    start_node "tp-$sync" b "$sync" >/dev/null
    start_node "tp-$sync" c "$sync" >/dev/null
    wait_balanced "$A" 3
    for op in put get mix; do
        read -r r1 p50a p99a e1 <<<"${ONE[$op]}"
        read -r r3 p50b p99b e3 <<<"$(run_wrk "$A" "$op")"
        ratio=$(python3 -c "print(f'{$r3/$r1:.2f}')")
        echo "| $sync | $op | $r1 | $r3 | ${ratio}× | $p50a / $p99a | $p50b / $p99b | $e1 / $e3 |"
    done
    unset ONE
done
echo

log "hand-off of one partition of $MOVE_KEYS keys"
M1=$(start_node move m1 always --partitions 1)
python3 "$HELPER" prefill cc-batch "$M1" "$MOVE_KEYS" >/dev/null
M2=$(start_node move m2 always --partitions 1)
t0=$(date +%s.%N)
"$CC" decommission --endpoint "http://$M1" --node m1 --timeout-secs 600 2>/dev/null
t1=$(date +%s.%N)
count=$(curl -s "http://$M2/v1/kv?prefix=&limit=1" >/dev/null; status "$M2" "s['partitions']['0']")
secs=$(python3 -c "print(f'{$t1-$t0:.2f}')")
echo "| partition move | keys | seconds (decommission request → map flipped) | keys/s | new owner |"
echo "|---|---|---|---|---|"
echo "| 1 of 1, --sync always | $MOVE_KEYS | $secs | $(python3 -c "print(f'{$MOVE_KEYS/($t1-$t0):.0f}')") | $count |"
# Every key made it.
got=$(python3 - "$M2" "$MOVE_KEYS" <<'EOF'
import http.client, sys, json
h, p = sys.argv[1].rsplit(":", 1)
c = http.client.HTTPConnection(h, int(p))
n, cont = 0, None
while True:
    q = "/v1/kv?prefix=&limit=10000" + (f"&continuation={cont}" if cont else "")
    c.request("GET", q)
    j = json.loads(c.getresponse().read())
    n += len(j["items"])
    cont = j["continuation"]
    if not cont:
        break
print(n)
EOF
)
echo
echo "keys readable on the new owner after the move: $got of $MOVE_KEYS"
[[ "$got" == "$MOVE_KEYS" ]]
