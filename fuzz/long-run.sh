#!/usr/bin/env bash
# Long fuzz runs measured in CPU time: runs each target given (default: every target) until the
# fuzzer process has used CPU_SECONDS of CPU (user + system; default 600), restarting it on the
# same scratch corpus if libFuzzer's wall-clock `-max_total_time` ran out first (on a shared
# machine, under `nice`, wall time runs ahead of CPU time). Prints one result line per target:
#
#   target  cpu_seconds  executions  corpus_files  crashes
#
# and appends it to $OUT/results.tsv. Needs the targets built already:
#
#   CARGO_TARGET_DIR=/work/target-fuzz cargo fuzz build --sanitizer none
#   OUT=/tmp/fuzz-long BIN=/work/target-fuzz/x86_64-unknown-linux-gnu/release \
#     nice -n 19 bash long-run.sh sstable wal
#
# Scratch corpora ($OUT/corpus/<target>), crash artifacts ($OUT/artifacts/<target>/) and logs
# ($OUT/log/<target>.log) all stay under $OUT, outside the repository. Seeds come from
# corpus/<target> (corpus/<plain> for the *_crc targets) next to this script.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
CPU_SECONDS="${CPU_SECONDS:-600}"
OUT="${OUT:-/tmp/fuzz-long}"
BIN="${BIN:-${CARGO_TARGET_DIR:-$here/target}/x86_64-unknown-linux-gnu/release}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cd "$here" && cargo fuzz list)
fi
mkdir -p "$OUT/corpus" "$OUT/artifacts" "$OUT/log"

for t in "${targets[@]}"; do
    corpus="$OUT/corpus/$t"
    arts="$OUT/artifacts/$t"
    log="$OUT/log/$t.log"
    mkdir -p "$corpus" "$arts"
    : >"$log"
    seeds=()
    [ -d "$here/corpus/$t" ] && seeds+=("$here/corpus/$t")
    [ "${t%_crc}" != "$t" ] && [ -d "$here/corpus/${t%_crc}" ] && seeds+=("$here/corpus/${t%_crc}")
    cpu=0 execs=0 crashes=0 round=0
    while awk -v c="$cpu" -v m="$CPU_SECONDS" 'BEGIN { exit !(c < m) }'; do
        round=$((round + 1))
        left=$(awk -v c="$cpu" -v m="$CPU_SECONDS" 'BEGIN { printf "%d", m - c + 5 }')
        # Seeds only on the first round: afterwards the scratch corpus already holds them.
        dirs=("$corpus")
        [ $round -eq 1 ] && dirs+=("${seeds[@]}")
        echo "== round $round: $left s wall budget, cpu so far $cpu s" >>"$log"
        before=$(grep -ac 'stat::number_of_executed_units' "$log")
        /usr/bin/time -f 'CPUTIME %U %S' -o "$OUT/log/$t.time" \
            "$BIN/$t" -max_total_time="$left" -timeout=10 -rss_limit_mb=2048 \
            -print_final_stats=1 -artifact_prefix="$arts/" "${dirs[@]}" >>"$log" 2>&1
        rc=$?
        c=$(awk '/^CPUTIME/ { printf "%.2f", $2 + $3 }' "$OUT/log/$t.time")
        e=0
        if [ "$(grep -ac 'stat::number_of_executed_units' "$log")" -gt "$before" ]; then
            e=$(grep -a 'stat::number_of_executed_units' "$log" | tail -1 | awk '{ print $2 }')
        fi
        cpu=$(awk -v a="$cpu" -v b="${c:-0}" 'BEGIN { printf "%.2f", a + b }')
        execs=$((execs + ${e:-0}))
        if [ $rc -ne 0 ]; then
            crashes=$((crashes + 1))
            echo "== $t: fuzzer exited $rc; artifacts in $arts" >>"$log"
            break
        fi
    done
    files=$(find "$corpus" -type f | wc -l)
    line=$(printf '%s\t%s\t%s\t%s\t%s' "$t" "$cpu" "$execs" "$files" "$crashes")
    echo "$line"
    echo "$line" >>"$OUT/results.tsv"
done
