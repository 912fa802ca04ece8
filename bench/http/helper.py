#!/usr/bin/env python3
"""Helpers for bench/http/run.sh (standard library only).

  helper.py port                         a free TCP port on 127.0.0.1
  helper.py wait-listen FILE SECONDS     wait for "listening on http://ADDR" in FILE, print ADDR
  helper.py wait-http URL SECONDS        wait until URL answers (any HTTP status)
  helper.py wait-redis PORT SECONDS      wait until redis answers PING
  helper.py prefill KIND ADDR KEYS       write keys 0..KEYS-1 (16-byte zero-padded numbers for the
                                         HTTP targets, key:%012d for Redis), 100-byte values;
                                         KIND: kv-pipeline | cc-batch | etcd-txn | redis
  helper.py cc-settle ADDR               wait until CoreCache's flushes and compactions are idle
  helper.py etcd-count ADDR              how many keys etcd holds
  helper.py redis-cmd PORT ARGS...       one Redis command, print its reply
  helper.py redis-aof-settle PORT        rewrite Redis's AOF now and wait until it is done
  helper.py wrk TARGET OP FILE           parse wrk --latency output into one results row
  helper.py redis TARGET FILE            parse redis-benchmark --csv output into rows
  helper.py report RESULTS               the markdown tables and the target checks
"""

import base64
import http.client
import json
import re
import socket
import sys
import threading
import time

VALUE = (b"abcdefghijklmnopqrstuvwxyz0123456789" * 3)[:100]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def split_addr(addr):
    addr = addr.removeprefix("http://")
    host, port = addr.rsplit(":", 1)
    return host, int(port)


def wait_listen(path, seconds):
    deadline = time.time() + float(seconds)
    while time.time() < deadline:
        try:
            with open(path) as f:
                for line in f:
                    m = re.match(r"listening on http://(\S+)", line)
                    if m:
                        print(m.group(1))
                        return 0
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    print(f"no 'listening on' line in {path} after {seconds}s", file=sys.stderr)
    return 1


def wait_http(url, seconds):
    """Waits until URL answers 2xx."""
    host, rest = url.removeprefix("http://").split("/", 1)
    h, p = split_addr(host)
    deadline = time.time() + float(seconds)
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection(h, p, timeout=2)
            c.request("GET", "/" + rest)
            r = c.getresponse()
            r.read()
            if 200 <= r.status < 300:
                return 0
        except OSError:
            pass
        time.sleep(0.1)
    print(f"{url} did not answer in {seconds}s", file=sys.stderr)
    return 1


def resp_cmd(port, *args):
    with socket.create_connection(("127.0.0.1", int(port)), timeout=5) as s:
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a.encode() if isinstance(a, str) else a
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        s.sendall(out)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            # Enough for the one-line or bulk replies used here.
            if data.startswith((b"+", b"-", b":")) and data.endswith(b"\r\n"):
                break
            if data.startswith(b"$"):
                n = int(data[1 : data.index(b"\r\n")])
                if n < 0 or len(data) >= data.index(b"\r\n") + 2 + n + 2:
                    break
        return data


def wait_redis(port, seconds):
    deadline = time.time() + float(seconds)
    while time.time() < deadline:
        try:
            if resp_cmd(port, "PING").startswith(b"+PONG"):
                return 0
        except OSError:
            pass
        time.sleep(0.1)
    print(f"redis on {port} did not answer in {seconds}s", file=sys.stderr)
    return 1


def redis_aof_settle(port):
    resp_cmd(port, "BGREWRITEAOF")
    deadline = time.time() + 120
    while time.time() < deadline:
        info = resp_cmd(port, "INFO", "persistence").decode()
        busy = re.search(r"aof_rewrite_in_progress:1", info) or re.search(
            r"aof_rewrite_scheduled:1", info
        )
        if not busy:
            return 0
        time.sleep(0.2)
    print("redis AOF rewrite still running after 120s", file=sys.stderr)
    return 1


def run_threads(n, fn):
    """Runs fn(i) on n threads, re-raising the first failure."""
    errors = []

    def wrap(i):
        try:
            fn(i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]


def count_replies(sock, want, marker, ok):
    """Reads until `want` replies (counted by `marker`) arrived; returns how many were `ok`."""
    seen = good = 0
    tail = b""
    while seen < want:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise RuntimeError(f"connection closed after {seen} of {want} replies")
        data = tail + chunk
        seen += data.count(marker) - tail.count(marker)
        good += data.count(ok) - tail.count(ok)
        tail = data[-64:]
    return good


def prefill_pipeline(addr, keys, make, marker, ok, conns=4, chunk=2000):
    """Pipelines `chunk` requests at a time on each of `conns` connections."""
    h, p = split_addr(addr)
    per = (keys + conns - 1) // conns
    bad = [0]

    def worker(i):
        lo, hi = i * per, min(keys, (i + 1) * per)
        with socket.create_connection((h, p), timeout=60) as s:
            for start in range(lo, hi, chunk):
                end = min(hi, start + chunk)
                s.sendall(b"".join(make(k) for k in range(start, end)))
                good = count_replies(s, end - start, marker, ok)
                bad[0] += (end - start) - good

    run_threads(conns, worker)
    return bad[0]


def prefill(kind, addr, keys):
    keys = int(keys)
    t0 = time.time()
    if kind == "kv-pipeline":
        head = b"PUT /v1/kv/%016d HTTP/1.1\r\nHost: bench\r\nContent-Length: 100\r\n\r\n"
        bad = prefill_pipeline(
            addr,
            keys,
            lambda k: head % k + VALUE,
            b"HTTP/1.1 ",
            b"HTTP/1.1 200",
        )
    elif kind == "redis":
        cmd = b"*3\r\n$3\r\nSET\r\n$16\r\nkey:%012d\r\n$100\r\n" + VALUE + b"\r\n"
        bad = prefill_pipeline(
            "127.0.0.1:" + addr,
            keys,
            lambda k: cmd % k,
            b"\r\n",
            b"+OK\r\n",
            conns=2,
            chunk=10000,
        )
    elif kind in ("cc-batch", "etcd-txn"):
        h, p = split_addr(addr)
        vb = base64.b64encode(VALUE).decode()
        per_req = 4000 if kind == "cc-batch" else 2000
        starts = list(range(0, keys, per_req))
        bad = [0]

        def worker(i):
            c = http.client.HTTPConnection(h, p, timeout=120)
            for start in starts[i::2]:
                ks = [
                    base64.b64encode(b"%016d" % k).decode()
                    for k in range(start, min(keys, start + per_req))
                ]
                if kind == "cc-batch":
                    path = "/v1/batch"
                    body = {"ops": [{"op": "put", "key": k, "value": vb} for k in ks]}
                else:
                    path = "/v3/kv/txn"
                    body = {"success": [{"requestPut": {"key": k, "value": vb}} for k in ks]}
                c.request(
                    "POST",
                    path,
                    json.dumps(body),
                    {"Content-Type": "application/json"},
                )
                r = c.getresponse()
                text = r.read()
                if r.status != 200:
                    raise RuntimeError(f"{path}: HTTP {r.status}: {text[:300]!r}")

        run_threads(2, worker)
        bad = bad[0]
    else:
        raise SystemExit(f"unknown prefill kind {kind}")
    dt = time.time() - t0
    print(f"prefill {kind}: {keys} keys in {dt:.1f}s, {bad} failed")
    return 1 if bad else 0


def cc_settle(addr, seconds=60):
    """Waits until CoreCache has no frozen memtable and its table set stopped changing for 1.5 s,
    so that the prefill's flushes and compactions do not run during the measurement."""
    h, p = split_addr(addr)
    t0 = time.time()
    last, same = None, 0
    while time.time() - t0 < float(seconds):
        c = http.client.HTTPConnection(h, p, timeout=10)
        c.request("GET", "/v1/status")
        eng = json.loads(c.getresponse().read())["engine"]
        now = (eng["flushes"], eng["compactions"], eng["table_bytes_total"])
        if eng["immutable_memtables"] == 0 and now == last:
            same += 1
            if same >= 3:
                print(f"background work idle after {time.time() - t0:.1f}s")
                return 0
        else:
            same = 0
        last = now
        time.sleep(0.5)
    print(f"background work still busy after {seconds}s; measuring anyway")
    return 0


def etcd_count(addr):
    h, p = split_addr(addr)
    c = http.client.HTTPConnection(h, p, timeout=30)
    body = {"key": base64.b64encode(b"\0").decode(), "range_end": base64.b64encode(b"\0").decode(),
            "count_only": True}
    c.request("POST", "/v3/kv/range", json.dumps(body), {"Content-Type": "application/json"})
    print(json.loads(c.getresponse().read()).get("count", "0"))
    return 0


def to_ms(s):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", s)
    if not m:
        return float("nan")
    v, u = float(m.group(1)), m.group(2)
    return v * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[u]


def parse_wrk(target, op, path):
    text = open(path).read()

    def grab(pattern, default="0"):
        m = re.search(pattern, text)
        return m.group(1) if m else default

    rps = float(grab(r"Requests/sec:\s+([\d.]+)", "nan"))
    p50 = to_ms(grab(r"\n\s+50%\s+(\S+)", "nan"))
    p99 = to_ms(grab(r"\n\s+99%\s+(\S+)", "nan"))
    total = int(grab(r"(\d+) requests in"))
    non2xx = int(grab(r"Non-2xx or 3xx responses:\s+(\d+)"))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errs = sum(int(x) for x in m.groups()) if m else 0
    print(f"{target}\t{op}\t{rps:.0f}\t{p50:.3f}\t{p99:.3f}\t{total}\t{non2xx}\t{errs}")
    return 0


def parse_redis(target, path):
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",
    # "p99_latency_ms","max_latency_ms"
    for line in open(path):
        f = [x.strip('"') for x in line.strip().split(",")]
        if len(f) < 7 or f[0] == "test":
            continue
        op = {"SET": "put", "GET": "get"}.get(f[0], f[0].lower())
        print(f"{target}\t{op}\t{float(f[1]):.0f}\t{float(f[4]):.3f}\t{float(f[6]):.3f}\t-\t-\t-")
    return 0


def report(path):
    rows = {}
    order = []
    for line in open(path):
        f = line.rstrip("\n").split("\t")
        if len(f) < 8:
            continue
        target, op = f[0], f[1]
        if target not in order:
            order.append(target)
        rows[(target, op)] = {
            "rps": float(f[2]),
            "p50": float(f[3]),
            "p99": float(f[4]),
            "total": f[5],
            "non2xx": f[6],
            "errs": f[7],
        }

    print("| target | op | req/s | p50 ms | p99 ms | requests | non-2xx | socket errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for t in order:
        for op in ("put", "get", "mix"):
            r = rows.get((t, op))
            if r:
                print(
                    f"| {t} | {op} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
                    f"{r['total']} | {r['non2xx']} | {r['errs']} |"
                )

    def rps(t, op):
        r = rows.get((t, op))
        return r["rps"] if r else float("nan")

    checks = [
        ("CoreCache none PUT ÷ ceiling PUT", rps("corecache-none", "put"),
         rps("ceiling", "put"), 0.7),
        ("CoreCache none GET ÷ ceiling GET", rps("corecache-none", "get"),
         rps("ceiling", "get"), 0.7),
        ("CoreCache always PUT ÷ etcd put", rps("corecache-always", "put"),
         rps("etcd", "put"), 5.0),
        ("CoreCache always PUT ÷ Redis appendfsync-always SET",
         rps("corecache-always", "put"), rps("redis-aof-always", "put"), 0.5),
    ]
    print()
    print("| check | ratio | target | met |")
    print("|---|---:|---:|---|")
    for name, a, b, want in checks:
        ratio = a / b if b and b == b and a == a else float("nan")
        met = "yes" if ratio >= want else "NO"
        print(f"| {name} | {ratio:.2f} | ≥ {want} | {met} |")
    for t in ("corecache-none", "corecache-always"):
        for op in ("put", "get", "mix"):
            r = rows.get((t, op))
            if r:
                met = "yes" if r["p99"] < 5.0 else "NO"
                print(f"| {t} {op} p99 | {r['p99']:.2f} ms | < 5 ms | {met} |")
    return 0


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0
    cmd, args = argv[1], argv[2:]
    if cmd == "port":
        print(free_port())
        return 0
    table = {
        "wait-listen": wait_listen,
        "wait-http": wait_http,
        "wait-redis": wait_redis,
        "prefill": prefill,
        "etcd-count": etcd_count,
        "cc-settle": cc_settle,
        "redis-aof-settle": redis_aof_settle,
        "redis-cmd": lambda port, *a: print(resp_cmd(port, *a).decode().strip()) or 0,
        "wrk": parse_wrk,
        "redis": parse_redis,
        "report": report,
    }
    if cmd not in table:
        print(__doc__, file=sys.stderr)
        return 2
    return table[cmd](*args)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
