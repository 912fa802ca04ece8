#!/usr/bin/env bash
# Short, bounded fuzz runs of every cargo-fuzz target in fuzz/ (part of scripts/test.sh).
#
# Installs cargo-fuzz and a C++ compiler (libfuzzer-sys builds libFuzzer) if missing, builds
# every target once (stable Rust, `--sanitizer none`), then runs each target for FUZZ_SECONDS
# (default 20) on a scratch corpus in a temporary directory, seeded from the checked-in
# fuzz/corpus/<target> (fuzz/corpus/<plain> for the *_crc targets) and fuzz/regressions/<target>;
# libFuzzer runs every seed first, so the regressions are replayed too. FUZZ_JOBS targets
# (default 2) run side by side. Nothing is written into the repository (crash artifacts go to
# the temporary directory). Exits non-zero on any crash, naming the target and the artifact.
#
#   FUZZ_SECONDS=60 FUZZ_JOBS=1 bash scripts/fuzz-smoke.sh [target...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
FUZZ_JOBS="${FUZZ_JOBS:-2}"
start=$SECONDS

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
if ! command -v c++ >/dev/null 2>&1; then
    echo "installing a C++ compiler (g++) for libfuzzer-sys"
    sudo=()
    [ "$(id -u)" -ne 0 ] && sudo=(sudo)
    "${sudo[@]}" apt-get update
    "${sudo[@]}" apt-get install -y g++
fi

# --locked: fail rather than change fuzz/Cargo.lock (cargo fuzz has no --locked of its own).
target_dir=$(cargo metadata --locked --format-version 1 --no-deps |
    grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)
host=$(rustc -vV | sed -n 's/^host: //p')
bin="$target_dir/$host/release"

cargo fuzz build --sanitizer none
built=$SECONDS

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/fuzz-smoke.XXXXXX")

# One target: copy its seeds into a scratch corpus, fuzz, write "ok"/"crash" and a summary.
run_one() {
    local t=$1 dir="$tmp/$1" plain="${1%_crc}" d
    mkdir -p "$dir/corpus" "$dir/artifacts"
    for d in "corpus/$t" "corpus/$plain" "regressions/$t"; do
        [ -d "$d" ] && cp -r "$d/." "$dir/corpus/"
    done
    if nice -n 19 "$bin/$t" -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$dir/artifacts/" "$dir/corpus" \
        >"$dir/log" 2>&1; then
        echo ok >"$dir/result"
    else
        echo crash >"$dir/result"
    fi
}

running=0
for t in "${targets[@]}"; do
    [ -x "$bin/$t" ] || { echo "fuzz-smoke: no binary $bin/$t" >&2; exit 1; }
    run_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$FUZZ_JOBS" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait

failed=()
for t in "${targets[@]}"; do
    dir="$tmp/$t"
    runs=$(grep -a 'stat::number_of_executed_units' "$dir/log" | awk '{ print $2 }' || true)
    files=$(find "$dir/corpus" -type f | wc -l)
    if [ "$(cat "$dir/result" 2>/dev/null)" = ok ]; then
        printf '%-18s ok     %10s runs, corpus %s files\n' "$t" "${runs:-?}" "$files"
    else
        printf '%-18s CRASH  (log: %s)\n' "$t" "$dir/log"
        grep -a -m1 -A3 'panicked at' "$dir/log" || tail -n 20 "$dir/log"
        for a in "$dir"/artifacts/*; do
            [ -e "$a" ] && echo "  artifact: $a (reproduce: cd fuzz && cargo fuzz run --sanitizer none $t $a)"
        done
        failed+=("$t")
    fi
done

echo "fuzz-smoke: build $((built - start)) s, fuzzing $((SECONDS - built)) s (${FUZZ_SECONDS} s per target, $FUZZ_JOBS at a time)"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz-smoke: crashes in: ${failed[*]}; inputs and logs kept in $tmp" >&2
    exit 1
fi
rm -rf "$tmp"
