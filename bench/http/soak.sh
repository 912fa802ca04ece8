#!/usr/bin/env bash
# Memory soak: one release node under sustained load, its resident memory sampled throughout.
# The load writes new keys the whole time (so data, flushes and compactions keep growing) with
# 10% reads; the node's budgets are memtable_mb and block_cache_mb. Prints a table of VmRSS over
# time, the peak (VmHWM), and what the budgets allow.
#
#   bash bench/http/soak.sh
#
# Settings (environment): DURATION (seconds, 600), CONNS (50), THREADS (2), KEYS (50000000: the
# key space the load draws from, larger than what fits in the run), MEMTABLE_MB (16),
# BLOCK_CACHE_MB (16), SYNC (none), CARGO_TARGET_DIR, SKIP_BUILD=1.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
HELPER="$HERE/helper.py"
DURATION="${DURATION:-600}"
CONNS="${CONNS:-50}"
THREADS="${THREADS:-2}"
KEYS="${KEYS:-50000000}"
MEMTABLE_MB="${MEMTABLE_MB:-16}"
BLOCK_CACHE_MB="${BLOCK_CACHE_MB:-16}"
SYNC="${SYNC:-none}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

command -v wrk >/dev/null || {
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq wrk >/dev/null
}
if [[ "${SKIP_BUILD:-}" != 1 ]]; then
    (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -q -p corecache)
fi
WORK="$(mktemp -d /tmp/corecache-soak.XXXXXX)"
trap 'kill -KILL $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
"$TARGET_DIR/release/corecache" serve --listen 127.0.0.1:0 --data-dir "$WORK/data" \
    --sync "$SYNC" --memtable-mb "$MEMTABLE_MB" --block-cache-mb "$BLOCK_CACHE_MB" \
    >"$WORK/out" 2>"$WORK/err" &
PID=$!
ADDR=$(python3 "$HELPER" wait-listen "$WORK/out" 30)
python3 "$HELPER" wait-http "http://$ADDR/readyz" 30 >/dev/null

echo "## Memory soak"
echo "$(nproc) cores, $(uname -sr); sync=$SYNC memtable_mb=$MEMTABLE_MB block_cache_mb=$BLOCK_CACHE_MB"
echo "load: wrk -t$THREADS -c$CONNS -d${DURATION}s -s bench/http/kv.lua -- mix $KEYS (90% GET, 10% PUT of 100 B)"
echo "      plus a second wrk PUTting new keys the whole time"
echo
wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$HERE/kv.lua" "http://$ADDR" -- mix "$KEYS" >"$WORK/wrk-mix" 2>&1 &
W1=$!
wrk -t1 -c10 -d"${DURATION}s" -s "$HERE/kv.lua" "http://$ADDR" -- put "$KEYS" >"$WORK/wrk-put" 2>&1 &
W2=$!
echo "| t (s) | VmRSS MiB | table MiB on disk | tables | memtable MiB |"
echo "|---|---|---|---|---|"
t=0
step=$((DURATION / 20))
((step > 0)) || step=1
while kill -0 $W1 2>/dev/null; do
    rss=$(awk '/VmRSS/{printf "%.0f", $2/1024}' /proc/$PID/status)
    read -r disk tables mem < <(curl -s "http://$ADDR/v1/status" | python3 -c "
import json,sys; e=json.load(sys.stdin)['engine']
print(round(e['table_bytes_total']/2**20), sum(e['tables_per_level']), round(e['memtable_bytes']/2**20))")
    echo "| $t | $rss | $disk | $tables | $mem |"
    sleep "$step"
    t=$((t + step))
done
wait $W1 $W2 || true
hwm=$(awk '/VmHWM/{printf "%.0f", $2/1024}' /proc/$PID/status)
echo
echo "peak resident (VmHWM): $hwm MiB"
grep -h "Requests/sec" "$WORK/wrk-mix" "$WORK/wrk-put" | sed 's/^/wrk: /'
