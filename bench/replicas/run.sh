#!/usr/bin/env bash
# Replication benchmark, in one run on this machine, against a real ZooKeeper and etcd:
#  1. durable PUT and GET through one node of a 3-node CoreCache cluster with three copies of
#     every partition (the default: --replication-factor 3, --min-insync-replicas 2,
#     --sync always) against a 3-member etcd cluster (every write fsynced on a quorum, its
#     default) driven through its leader; then the same CoreCache cluster with
#     --replication-factor 1, the cost of replication. wrk, CONNS connections, 16-byte keys
#     uniform over KEYS (all prefilled), 100-byte values.
#  2. failover time over KILLS kills of one node of three, and the time to give a node replaced
#     on an empty disk its copies of RESTORE_KEYS keys (target/release/replicas, from
#     bench/src/bin/replicas.rs).
#
#   bash bench/replicas/run.sh
#
# Settings (environment): DURATION (10s), CONNS (50), THREADS (2), KEYS (200000), KILLS (10),
# RESTORE_KEYS (1000000), CARGO_TARGET_DIR, SKIP_BUILD=1, ONLY=throughput|failover.
# Installs wrk, zookeeper and etcd-server with apt-get if missing.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
HELPER="$ROOT/bench/http/helper.py"
DURATION="${DURATION:-10s}"
CONNS="${CONNS:-50}"
THREADS="${THREADS:-2}"
KEYS="${KEYS:-200000}"
KILLS="${KILLS:-10}"
RESTORE_KEYS="${RESTORE_KEYS:-1000000}"
ONLY="${ONLY:-}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
START=$(date +%s)
log() { echo "[$(($(date +%s) - START))s] $*" >&2; }

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v etcd >/dev/null || missing+=(etcd-server)
[[ -f /usr/share/java/zookeeper.jar ]] || missing+=(zookeeper)
if ((${#missing[@]})); then
    log "installing: ${missing[*]}"
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [[ "${SKIP_BUILD:-}" != 1 ]]; then
    log "building corecache and the replica benchmark (release, target dir $TARGET_DIR)"
    (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -q -p corecache \
        -p corecache-bench --bin corecache --bin replicas)
fi
CC="$TARGET_DIR/release/corecache"

WORK="$(mktemp -d /tmp/corecache-replicabench.XXXXXX)"
declare -a PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop_all() { # kills every process started so far and waits for them
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    PIDS=()
}

echo "## Replication benchmark"
echo
echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r); disk $(df -h /tmp | awk 'NR==2{print $1}')"
echo "- versions: corecache $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?') (local changes: $(cd "$ROOT" && git status --porcelain | wc -l) files); $(etcd --version | head -1); $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2)"
echo

RESULTS="$WORK/results.tsv"
: >"$RESULTS"

run_wrk() { # TARGET OP URL SCRIPT
    local out="$WORK/$1-$2.wrk"
    log "$1 $2"
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$ROOT/bench/http/$4" "$3" -- "$2" "$KEYS" >"$out" 2>&1 || true
    python3 "$HELPER" wrk "$1" "$2" "$out" >>"$RESULTS"
}

start_zk() {
    local port
    port=$(python3 "$HELPER" port)
    mkdir -p "$WORK/zk"
    cat >"$WORK/zoo.cfg" <<EOF
tickTime=250
dataDir=$WORK/zk
clientPort=$port
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,mntr
EOF
    java -cp /usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar \
        org.apache.zookeeper.server.quorum.QuorumPeerMain "$WORK/zoo.cfg" >"$WORK/zk.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do
        [[ "$(exec 3<>/dev/tcp/127.0.0.1/$port && echo ruok >&3 && cat <&3)" == imok ]] 2>/dev/null && break
        sleep 0.1
    done
    ZK="127.0.0.1:$port"
}

# cc_cluster NAME RF: three nodes, as README starts them; sets A to node a's HTTP address once
# every partition has all its copies in sync.
cc_cluster() {
    local name=$1 rf=$2 id addr
    for id in a b c; do
        "$CC" serve --listen 127.0.0.1:0 --peer-listen 127.0.0.1:0 --data-dir "$WORK/$name-$id" \
            --node-id "$id" --zookeeper "$ZK" --cluster "$name" --sync always \
            --replication-factor "$rf" --initial-nodes 3 --resp-listen off \
            >"$WORK/$name-$id.out" 2>"$WORK/$name-$id.err" &
        PIDS+=($!)
    done
    A=$(python3 "$HELPER" wait-listen "$WORK/$name-a.out" 30)
    for id in b c; do python3 "$HELPER" wait-listen "$WORK/$name-$id.out" 30 >/dev/null; done
    for _ in $(seq 600); do
        ok=$(curl -s "http://$A/v1/status" | python3 -c "
import json, sys
s = json.load(sys.stdin)
r = s.get('replicas', {})
print(len(s.get('members', [])) == 3 and s.get('under_replicated_partitions') == 0
      and len(r) == s.get('partition_count') and all(len(x['in_sync']) == $rf for x in r.values()))" 2>/dev/null || echo False)
        [[ "$ok" == True ]] && return 0
        sleep 0.2
    done
    echo "cluster $name never had every copy in sync" >&2
    return 1
}

if [[ "$ONLY" != failover ]]; then
    start_zk
    for rf in 3 1; do
        log "CoreCache, 3 nodes, --replication-factor $rf: start, prefill $KEYS keys"
        cc_cluster "rf$rf" "$rf"
        "$TARGET_DIR/release/replicas" prefill "$A" --keys "$KEYS"
        python3 "$HELPER" cc-settle "$A" >&2 || true
        for op in put get; do run_wrk "corecache-rf$rf" "$op" "http://$A" kv.lua; done
        # Keep ZooKeeper (the first PID); stop the nodes.
        zk_pid=${PIDS[0]}
        PIDS=("${PIDS[@]:1}")
        stop_all
        PIDS=("$zk_pid")
    done
    stop_all

    log "etcd, 3 members"
    declare -a CPORTS=() PPORTS=()
    for i in 1 2 3; do CPORTS+=("$(python3 "$HELPER" port)"); PPORTS+=("$(python3 "$HELPER" port)"); done
    CLUSTER="e1=http://127.0.0.1:${PPORTS[0]},e2=http://127.0.0.1:${PPORTS[1]},e3=http://127.0.0.1:${PPORTS[2]}"
    for i in 0 1 2; do
        etcd --name "e$((i + 1))" --data-dir "$WORK/etcd-$i" \
            --listen-client-urls "http://127.0.0.1:${CPORTS[$i]}" --advertise-client-urls "http://127.0.0.1:${CPORTS[$i]}" \
            --listen-peer-urls "http://127.0.0.1:${PPORTS[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${PPORTS[$i]}" \
            --initial-cluster "$CLUSTER" --initial-cluster-state new --max-txn-ops 4096 \
            --logger zap --log-outputs stderr --log-level warn >"$WORK/etcd-$i.out" 2>"$WORK/etcd-$i.err" &
        PIDS+=($!)
    done
    for i in 0 1 2; do python3 "$HELPER" wait-http "http://127.0.0.1:${CPORTS[$i]}/health" 60 >/dev/null; done
    # Drive etcd through its leader: its best case (a follower forwards every write).
    LEADER=""
    for _ in $(seq 100); do
        for i in 0 1 2; do
            is=$(curl -s -X POST -d '{}' "http://127.0.0.1:${CPORTS[$i]}/v3/maintenance/status" | python3 -c "
import json, sys
s = json.load(sys.stdin)
print(s.get('header', {}).get('member_id') == s.get('leader'))" 2>/dev/null || echo False)
            if [[ "$is" == True ]]; then LEADER="127.0.0.1:${CPORTS[$i]}"; break 2; fi
        done
        sleep 0.2
    done
    [[ -n "$LEADER" ]] || { echo "etcd elected no leader" >&2; exit 1; }
    python3 "$HELPER" prefill etcd-txn "$LEADER" "$KEYS" >&2
    for op in put get; do run_wrk etcd-3 "$op" "http://$LEADER" etcd.lua; done
    stop_all

    echo "### Durable PUT and GET, 3 nodes on this machine"
    echo
    echo "- load: wrk -t$THREADS -c$CONNS -d$DURATION through one endpoint (CoreCache node a; etcd's leader), 16-byte keys uniform over $KEYS (all prefilled), 100-byte values"
    echo
    python3 - "$RESULTS" <<'EOF'
import sys
rows = {}
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    if len(f) >= 8:
        rows[(f[0], f[1])] = f
names = {"corecache-rf3": "CoreCache, 3 copies (rf 3, min in-sync 2)",
         "corecache-rf1": "CoreCache, 1 copy (rf 1)", "etcd-3": "etcd, 3 members"}
print("| target | op | req/s | p50 ms | p99 ms | non-2xx | socket errors |")
print("|---|---|---|---|---|---|---|")
for t in ["corecache-rf3", "corecache-rf1", "etcd-3"]:
    for op in ["put", "get"]:
        f = rows.get((t, op))
        if f:
            print(f"| {names[t]} | {op.upper()} | {f[2]} | {float(f[3]):.2f} | {float(f[4]):.2f} | {f[6]} | {f[7]} |")
print()
def rps(t, op):
    f = rows.get((t, op))
    return float(f[2]) if f else float("nan")
for op in ["put", "get"]:
    print(f"- {op.upper()}: CoreCache with 3 copies / etcd = {rps('corecache-rf3', op) / rps('etcd-3', op):.2f}×; "
          f"3 copies / 1 copy = {rps('corecache-rf3', op) / rps('corecache-rf1', op):.2f}×")
print()
EOF
fi

if [[ "$ONLY" != throughput ]]; then
    log "failover ($KILLS kills) and re-replication ($RESTORE_KEYS keys)"
    "$TARGET_DIR/release/replicas" --kills "$KILLS" --keys "$RESTORE_KEYS"
fi
log "done"
