#!/usr/bin/env bash
# Durable SET through RESP against two corecache binaries, alternated, in one session:
#   bash bench/resp/ab.sh OLD_BINARY NEW_BINARY [ROUNDS]
# Each round starts a fresh `serve --sync always` on free ports, runs redis-benchmark SET at
# -P 1 and -P 16 (100,000 requests, 50 clients, 100-byte values), and stops it.
set -u
old=$1; new=$2; rounds=${3:-2}
command -v redis-benchmark >/dev/null || { echo "needs redis-benchmark (apt-get install -y redis-tools)" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
run() {
  local bin=$1 tag=$2 d port hport pid
  d=$(mktemp -d); port=$(free_port); hport=$(free_port)
  "$bin" serve --data-dir "$d" --listen "127.0.0.1:$hport" --resp-listen "127.0.0.1:$port" --sync always >"$d/log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  for P in 1 16; do
    r=$(redis-benchmark -p "$port" -t set -n 100000 -r 1000000 -c 50 -d 100 -P "$P" -q 2>/dev/null |
      grep -o '[0-9.]* requests per second' | head -1)
    echo "$tag -P $P SET: $r"
  done
  kill "$pid"; wait "$pid" 2>/dev/null; rm -rf "$d"
}
for _ in $(seq "$rounds"); do run "$new" new; run "$old" old; done
