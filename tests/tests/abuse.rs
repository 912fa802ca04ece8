//! Hostile clients against one running node, over raw TCP: a thousand-odd malformed requests of
//! every kind — bad percent-encoding, broken request lines, huge and too many headers, bodies
//! over the limit (with `Content-Length` and chunked), `Content-Length` mismatches, wrong
//! methods on every route, bad JSON to every JSON route, bad scan queries — plus connections
//! dropped mid-request, idle connections and slowloris clients sending a byte a second.
//!
//! Each malformed request must get the right 4xx (with a JSON `{"error", "code"}` body when the
//! node wrote the reply) or have its connection closed: never a 5xx, never a hang (every read
//! has a timeout). Slow clients must be cut off once the header timeout passes. Meanwhile a
//! well-behaved client does PUT/GET round trips, every one of which must succeed; at the end
//! the node's memory (VmRSS) stays bounded and it still serves.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use corecache_e2e::{http, kv_path, Server};

/// No reply may take longer than this (a hang otherwise).
const READ_TIMEOUT: Duration = Duration::from_secs(20);
/// The node cuts off a client that has not sent a whole request head by then (its header
/// timeout is 10 s; the rest is slack for a loaded machine).
const SLOWLORIS_CUTOFF: Duration = Duration::from_secs(30);
const RSS_LIMIT_KB: u64 = 200 * 1024;

/// What a probe may end in.
#[derive(Clone)]
struct Expect {
    statuses: Vec<u16>,
    /// The connection may be closed without a reply.
    may_close: bool,
}

fn status(s: &[u16]) -> Expect {
    Expect {
        statuses: s.to_vec(),
        may_close: false,
    }
}

fn status_or_close(s: &[u16]) -> Expect {
    Expect {
        statuses: s.to_vec(),
        may_close: true,
    }
}

/// Any 4xx, or a closed connection: for garbage whose exact answer is the parser's business.
fn any_4xx_or_close() -> Expect {
    Expect {
        statuses: (400..500).collect(),
        may_close: true,
    }
}

struct Probe {
    what: String,
    bytes: Vec<u8>,
    expect: Expect,
    /// Half-close after sending (the client will send nothing more).
    half_close: bool,
}

fn probe(what: impl Into<String>, bytes: impl Into<Vec<u8>>, expect: Expect) -> Probe {
    Probe {
        what: what.into(),
        bytes: bytes.into(),
        expect,
        half_close: false,
    }
}

/// A request with `Connection: close` and, when `body` is given, a matching `Content-Length`.
fn req(method: &str, target: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
    if let Some(b) = body {
        out.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body.unwrap_or_default());
    out
}

#[derive(Debug)]
enum Reply {
    Response { status: u16, body: Vec<u8> },
    Closed(String),
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response (or the connection's end). A read timeout is an error: a hang.
fn read_reply(stream: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Result<Reply, String> {
    let mut chunk = [0u8; 16 << 10];
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(Reply::Closed(format!("EOF after {} bytes", buf.len()))),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!("no reply within {READ_TIMEOUT:?} (a hang)"))
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Ok(Reply::Closed(e.to_string())),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let len: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let len = if head_only { 0 } else { len };
    buf.drain(..head_end + 4);
    while buf.len() < len {
        match stream.read(&mut chunk) {
            Ok(0) => return Err(format!("reply body cut short: {head:?}")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the reply body: {e}")),
        }
    }
    let body: Vec<u8> = buf.drain(..len).collect();
    Ok(Reply::Response { status, body })
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(READ_TIMEOUT)).unwrap();
    s
}

/// Checks a reply against what was allowed; `Ok` names the ending for the tally.
fn judge(expect: &Expect, reply: &Reply) -> Result<String, String> {
    match reply {
        Reply::Closed(_) if expect.may_close => Ok("closed".to_string()),
        Reply::Closed(why) => Err(format!(
            "connection closed without a reply ({why}); wanted {:?}",
            expect.statuses
        )),
        Reply::Response { status, body } => {
            if *status >= 500 {
                return Err(format!(
                    "a {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(300)])
                ));
            }
            if !expect.statuses.contains(status) {
                return Err(format!(
                    "status {status}, wanted {:?}: {}",
                    expect.statuses,
                    String::from_utf8_lossy(&body[..body.len().min(300)])
                ));
            }
            // A reply the node wrote has a JSON error body; hyper's own (a request it could not
            // parse) has none.
            if *status >= 400 && !body.is_empty() {
                let j: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
                    format!(
                        "a {status} whose body is not JSON ({e}): {}",
                        String::from_utf8_lossy(body)
                    )
                })?;
                if !(j.get("error").is_some_and(|e| e.is_string())
                    && j.get("code").is_some_and(|c| c.is_string()))
                {
                    return Err(format!("a {status} without string error and code: {j}"));
                }
            }
            Ok(status.to_string())
        }
    }
}

/// Sends one probe on a fresh connection and judges the reply.
fn run_probe(addr: SocketAddr, p: &Probe) -> Result<String, String> {
    let mut s = connect(addr);
    // The node may answer (413) and close before it has read everything: a failed write is
    // fine as long as the reply arrives.
    let _ = s.write_all(&p.bytes);
    if p.half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    let mut buf = Vec::new();
    let reply = read_reply(&mut s, &mut buf, p.bytes.starts_with(b"HEAD "))?;
    judge(&p.expect, &reply)
}

// ---------------------------------------------------------------------------------------------
// The probes

const ROUTES: &[(&str, &[&str])] = &[
    // (path, methods the route answers)
    ("/v1/kv", &["GET", "HEAD"]),
    ("/v1/kv/some-key", &["GET", "HEAD", "PUT", "DELETE"]),
    ("/v1/batch", &["POST"]),
    ("/add/", &["POST"]),
    ("/get/?key=a", &["GET", "HEAD"]),
    ("/delete/?key=a", &["POST"]),
    ("/livez", &["GET", "HEAD"]),
    ("/readyz", &["GET", "HEAD"]),
    ("/metrics", &["GET", "HEAD"]),
    ("/v1/status", &["GET", "HEAD"]),
];

const METHODS: &[&str] = &[
    "GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "TRACE", "PURGE", "FROB",
];

/// SplitMix64, for the random probes (fixed seed: the same probes every run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn probes() -> Vec<Probe> {
    let mut rng = Rng(0xab05e);
    let mut out = Vec::new();
    let bad_request = || status(&[400]);

    // Bad percent-encoding in keys, on every key method.
    let bad_escapes = ["%zz", "%4", "%", "%G0", "%%", "%0g", "%-1", "%+1", "% 1"];
    for i in 0..300 {
        let esc = bad_escapes[i % bad_escapes.len()];
        let esc = if esc.contains(' ') { "%%20" } else { esc };
        let pre: String = (0..rng.below(6))
            .map(|_| (b'a' + rng.below(26) as u8) as char)
            .collect();
        let post = if i % 2 == 0 { "" } else { "tail%41" };
        let target = format!("/v1/kv/{pre}{esc}{post}");
        let method = ["GET", "PUT", "DELETE"][i % 3];
        let body = (method == "PUT").then_some(&b"v"[..]);
        out.push(probe(
            format!("bad escape {method} {target}"),
            req(method, &target, &[], body),
            bad_request(),
        ));
    }
    for (i, target) in [
        "/get/?key=%zz",
        "/delete/?key=a%4",
        "/get/?key=%",
        "/get/",
        "/delete/",
    ]
    .iter()
    .enumerate()
    {
        let method = if target.starts_with("/get") {
            "GET"
        } else {
            "POST"
        };
        let body = (method == "POST").then_some(&b""[..]);
        out.push(probe(
            format!("seed route bad key {i} {target}"),
            req(method, target, &[], body),
            bad_request(),
        ));
    }

    // Broken request lines.
    let lines: &[&[u8]] = &[
        b"GET\r\n\r\n",
        b"GET /v1/kv/a\r\n\r\n",
        b"GET /v1/kv/a HTTP/9.9\r\nHost: t\r\n\r\n",
        b"GET /v1/kv/a HTTP/1.1 extra\r\nHost: t\r\n\r\n",
        b"GET  /v1/kv/a  HTTP/1.1\r\nHost: t\r\n\r\n",
        b"G@T /v1/kv/a HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET v1/kv/a HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /v1/kv/a\x00b HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /v1/kv/\xff\xfe HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /v1/kv/a b HTTP/1.1\r\nHost: t\r\n\r\n",
        b"\r\n\r\n\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"GET /v1/kv/a HTTP/1.1\r\nHost t\r\n\r\n",
        b"GET /v1/kv/a HTTP/1.1\r\n: empty-name\r\n\r\n",
        b"GET /v1/kv/a HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"GET /v1/kv/a HTTP/1.1\r\nX: \x01\x02\r\n\r\n",
        b"GET /v1/kv/a HTTP/1.1\r\n Folded: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"CONNECT /v1/kv HTTP/1.1\r\nHost: t\r\n\r\n",
    ];
    for (i, l) in lines.iter().enumerate() {
        let mut p = probe(
            format!("request line {i}: {:?}", String::from_utf8_lossy(l)),
            *l,
            any_4xx_or_close(),
        );
        p.half_close = true;
        out.push(p);
    }
    // Random garbage heads.
    for i in 0..260 {
        let n = 1 + rng.below(300);
        let mut bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        if i % 2 == 0 {
            // Something that starts like a request.
            let mut b = b"GET /v1/kv/".to_vec();
            b.append(&mut bytes);
            bytes = b;
        }
        bytes.extend_from_slice(b"\r\n\r\n");
        let mut p = probe(format!("garbage {i}"), bytes, any_4xx_or_close());
        p.half_close = true;
        out.push(p);
    }

    // Huge headers and too many headers.
    for (i, size) in [70 << 10, 100 << 10, 200 << 10, 1 << 20].iter().enumerate() {
        let big = "h".repeat(*size);
        out.push(probe(
            format!("one {size}-byte header"),
            req("GET", "/v1/kv/a", &[("X-Big", &big)], None),
            status_or_close(&[431]),
        ));
        let name = format!("X-{}", "n".repeat(*size));
        out.push(probe(
            format!("a {size}-byte header name {i}"),
            req("GET", "/v1/kv/a", &[(&name, "v")], None),
            status_or_close(&[431]),
        ));
    }
    for n in [101, 150, 500, 5000] {
        let headers: Vec<(String, String)> = (0..n)
            .map(|i| (format!("X-H{i}"), "v".to_string()))
            .collect();
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        out.push(probe(
            format!("{n} headers"),
            req("GET", "/v1/kv/a", &h, None),
            status_or_close(&[431]),
        ));
    }
    // A URL over 64 KiB.
    let long = format!("/v1/kv/{}", "k".repeat(70 << 10));
    out.push(probe(
        "a 70 KiB URL",
        req("GET", &long, &[], None),
        status_or_close(&[414, 431]),
    ));

    // Bodies over the limit (1.5 MiB), declared and chunked, on every body route.
    let too_big = vec![b'x'; 2 << 20];
    for target in ["/v1/kv/big", "/v1/batch", "/add/"] {
        let method = if target.starts_with("/v1/kv") {
            "PUT"
        } else {
            "POST"
        };
        out.push(probe(
            format!("2 MiB body to {method} {target}"),
            req(method, target, &[], Some(&too_big)),
            status_or_close(&[413]),
        ));
        let declared = format!(
            "{method} {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 104857600\r\n\r\n"
        );
        let mut bytes = declared.into_bytes();
        bytes.extend_from_slice(&too_big);
        out.push(probe(
            format!("100 MiB declared, 2 MiB sent, {method} {target}"),
            bytes,
            status_or_close(&[413]),
        ));
        let mut chunked = format!(
            "{method} {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .into_bytes();
        for _ in 0..32 {
            chunked.extend_from_slice(b"10000\r\n");
            chunked.extend_from_slice(&[b'c'; 0x10000]);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        out.push(probe(
            format!("2 MiB chunked, {method} {target}"),
            chunked,
            status_or_close(&[413]),
        ));
        let huge_chunk = format!(
            "{method} {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFF\r\nabc"
        );
        let mut p = probe(
            format!("a 2^48-byte chunk, {method} {target}"),
            huge_chunk,
            status_or_close(&[400, 413]),
        );
        p.half_close = true;
        out.push(p);
    }

    // Content-Length mismatches and malformed framing.
    for (i, (headers, body)) in [
        // Fewer bytes than declared, then the client says it is done.
        ("Content-Length: 10\r\n", &b"short"[..]),
        ("Content-Length: 1000000\r\n", &b"short"[..]),
        // Malformed lengths.
        ("Content-Length: abc\r\n", &b"abc"[..]),
        ("Content-Length: -1\r\n", &b""[..]),
        ("Content-Length: 1.5\r\n", &b"x"[..]),
        ("Content-Length: 99999999999999999999999\r\n", &b"x"[..]),
        ("Content-Length: 3\r\nContent-Length: 4\r\n", &b"abcd"[..]),
        ("Content-Length: 3, 4\r\n", &b"abcd"[..]),
        (
            "Transfer-Encoding: chunked\r\n",
            &b"zz\r\nabc\r\n0\r\n\r\n"[..],
        ),
        ("Transfer-Encoding: chunked\r\n", &b"3\r\nabc"[..]),
        ("Transfer-Encoding: gzip\r\n", &b"abc"[..]),
        (
            "Transfer-Encoding: chunked, identity\r\n",
            &b"3\r\nabc\r\n0\r\n\r\n"[..],
        ),
    ]
    .iter()
    .enumerate()
    {
        for (j, target) in ["/v1/kv/cl", "/v1/batch", "/add/"].iter().enumerate() {
            let method = if j == 0 { "PUT" } else { "POST" };
            let mut bytes = format!(
                "{method} {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{headers}\r\n"
            )
            .into_bytes();
            bytes.extend_from_slice(body);
            let mut p = probe(
                format!("framing {i} {method} {target}: {headers:?}"),
                bytes,
                // A body cut short or framed wrong is unreadable: 400 (413 is only for a body
                // over the limit), or hyper closes the connection.
                status_or_close(&[400]),
            );
            p.half_close = true;
            out.push(p);
        }
    }

    // Wrong methods on every route.
    for (path, allowed) in ROUTES {
        for m in METHODS {
            if allowed.contains(m) {
                continue;
            }
            let body = (!matches!(*m, "GET" | "HEAD")).then_some(&b"{}"[..]);
            out.push(probe(
                format!("{m} {path}"),
                req(m, path, &[], body),
                status(&[405]),
            ));
        }
    }
    for path in [
        "/",
        "/v1",
        "/v1/kvx",
        "/v2/kv/a",
        "/add",
        "/metrics/x",
        "/../etc/passwd",
    ] {
        out.push(probe(
            format!("GET {path}"),
            req("GET", path, &[], None),
            status(&[404]),
        ));
    }

    // Bad JSON and wrong JSON types to every JSON route.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_obj = format!("{}1{}", "{\"ops\":".repeat(5000), "}".repeat(5000));
    let batch_bodies: Vec<Vec<u8>> = [
        "",
        " ",
        "{",
        "}",
        "null",
        "true",
        "42",
        "\"ops\"",
        "[]",
        "{}",
        "{\"ops\":null}",
        "{\"ops\":{}}",
        "{\"ops\":\"x\"}",
        "{\"ops\":[1]}",
        "{\"ops\":[null]}",
        "{\"ops\":[[]]}",
        "{\"ops\":[{}]}",
        "{\"ops\":[{\"op\":\"put\"}]}",
        "{\"ops\":[{\"op\":\"put\",\"key\":\"YQ==\"}]}",
        "{\"ops\":[{\"op\":\"put\",\"key\":\"!!!\",\"value\":\"YQ==\"}]}",
        "{\"ops\":[{\"op\":\"put\",\"key\":\"YQ==\",\"value\":\"***\"}]}",
        "{\"ops\":[{\"op\":\"put\",\"key\":\"YQ==\",\"value\":5}]}",
        "{\"ops\":[{\"op\":\"put\",\"key\":5,\"value\":\"YQ==\"}]}",
        "{\"ops\":[{\"op\":5,\"key\":\"YQ==\"}]}",
        "{\"ops\":[{\"op\":\"frob\",\"key\":\"YQ==\"}]}",
        "{\"ops\":[{\"op\":\"delete\",\"key\":\"YQ==\",\"value\":\"YQ==\"}]}",
        "{\"ops\":[{\"op\":\"put\",\"key\":\"YQ==\",\"value\":\"YQ==\",\"extra\":1}]}",
        "{\"ops\":[],\"extra\":1}",
        "{\"ops\":[{\"op\":\"put\",\"key\":\"YQ==\",\"value\":\"YQ==\"}]} trailing",
        "{\"ops\":[{\"op\":\"put\",\"key\":\"YQ=\",\"value\":\"YQ==\"}]}",
        "{\"ops\":[{\"op\":\"put\",\"key\":\"YQ==\",\"value\":\"YQ==\"},]}",
        "{'ops':[]}",
        "{\"ops\":[{\"op\":\"put\",\"key\":\"\\ud800\",\"value\":\"YQ==\"}]}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .chain([
        deep.clone().into_bytes(),
        deep_obj.into_bytes(),
        b"{\"ops\":\xff\xfe}".to_vec(),
    ])
    .collect();
    for (i, b) in batch_bodies.iter().enumerate() {
        out.push(probe(
            format!(
                "batch JSON {i}: {:?}",
                String::from_utf8_lossy(&b[..b.len().min(60)])
            ),
            req(
                "POST",
                "/v1/batch",
                &[("Content-Type", "application/json")],
                Some(b),
            ),
            bad_request(),
        ));
    }
    let add_bodies: Vec<Vec<u8>> = [
        "",
        "{",
        "null",
        "[]",
        "42",
        "{}",
        "{\"key\":\"a\"}",
        "{\"value\":\"a\"}",
        "{\"key\":1,\"value\":\"a\"}",
        "{\"key\":\"a\",\"value\":1}",
        "{\"key\":null,\"value\":\"a\"}",
        "{\"key\":\"a\",\"value\":null}",
        "{\"key\":[\"a\"],\"value\":\"b\"}",
        "{\"key\":\"a\",\"value\":{\"x\":1}}",
        // (`["a","b"]` is taken as {"key":"a","value":"b"}: serde reads a struct from a
        // sequence too. Shorter or longer sequences are refused.)
        "[\"a\"]",
        "[\"a\",\"b\",\"c\"]",
        "{\"key\":\"a\" \"value\":\"b\"}",
        "{\"key\":\"\\ud800\",\"value\":\"b\"}",
        "key=a&value=b",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .chain([
        deep.into_bytes(),
        b"{\"key\":\"\xff\",\"value\":\"b\"}".to_vec(),
    ])
    .collect();
    for (i, b) in add_bodies.iter().enumerate() {
        out.push(probe(
            format!(
                "add JSON {i}: {:?}",
                String::from_utf8_lossy(&b[..b.len().min(60)])
            ),
            req(
                "POST",
                "/add/",
                &[("Content-Type", "application/json")],
                Some(b),
            ),
            bad_request(),
        ));
    }
    // Random bytes as JSON, to both routes.
    for i in 0..200 {
        let n = rng.below(200);
        let mut b: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        if i % 2 == 0 {
            b.insert(0, b'{');
        }
        let target = if i % 4 < 2 { "/v1/batch" } else { "/add/" };
        out.push(probe(
            format!("random JSON {i} to {target}"),
            req("POST", target, &[], Some(&b)),
            bad_request(),
        ));
    }

    // Bad scan queries.
    for q in [
        "limit=abc",
        "limit=0",
        "limit=-1",
        "limit=1.5",
        "limit=",
        "limit=99999999999999999999999",
        "limit=%zz",
        "prefix=%zz",
        "prefix=a%",
        "start=%G1",
        "end=%4",
        "prefix=a&start=b",
        "continuation=!!!",
        "continuation=%zz",
        "continuation=a=b",
        "%ff=1",
        "%zz=1",
        "start=a&prefix=",
    ] {
        out.push(probe(
            format!("scan ?{q}"),
            req("GET", &format!("/v1/kv?{q}"), &[], None),
            bad_request(),
        ));
    }
    // Bad conditions.
    for (h, v) in [
        ("If-Match", "\"abc\""),
        ("If-Match", "1 2"),
        ("If-None-Match", "\"3\""),
        ("If-Match", ""),
    ] {
        out.push(probe(
            format!("PUT with {h}: {v}"),
            req("PUT", "/v1/kv/cond", &[(h, v)], Some(b"v")),
            status(&[400]),
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------------

/// `SO_LINGER` with a zero timeout: closing the socket sends a reset, not a FIN.
fn reset_on_close(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor we own, and a pointer to a live `linger` of the size
    // passed.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn vm_rss_kb(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A client that sends a request head one byte a second (or nothing at all, for `idle`).
/// Returns how long the node let it go on before closing the connection, or an error when it
/// was not cut off within `SLOWLORIS_CUTOFF`.
fn slow_client(addr: SocketAddr, idle: bool) -> Result<Duration, String> {
    let start = Instant::now();
    let mut s = connect(addr);
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let head = b"PUT /v1/kv/slowloris HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\nx";
    let mut i = 0;
    let mut buf = [0u8; 1024];
    loop {
        if start.elapsed() > SLOWLORIS_CUTOFF {
            return Err(format!(
                "{} client still connected after {:?} ({i} bytes sent)",
                if idle { "an idle" } else { "a slowloris" },
                start.elapsed()
            ));
        }
        if !idle && i < head.len() {
            if s.write_all(&head[i..i + 1]).is_err() {
                return Ok(start.elapsed());
            }
            i += 1;
        }
        // Doubles as the one-second pause.
        match s.read(&mut buf) {
            Ok(0) => return Ok(start.elapsed()),
            Ok(n) => {
                // A reply (408, say) before the close is fine; a 5xx is not.
                let text = String::from_utf8_lossy(&buf[..n]);
                if text.starts_with("HTTP/1.1 5") {
                    return Err(format!("slow client answered {text:?}"));
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Ok(start.elapsed()),
        }
    }
}

#[test]
fn malformed_requests_get_4xx_and_the_node_keeps_serving() {
    let s = Server::start();
    let addr = s.addr();
    let pid = s.pid().expect("pid");
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));

    // The well-behaved client: PUT then GET, over and over; every one must succeed.
    let good = {
        let stop = stop.clone();
        thread::spawn(move || -> Result<u64, String> {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("good/{}", n % 50).into_bytes();
                let value = format!("value {n}").into_bytes();
                let r = http(addr, "PUT", &kv_path(&key), &[], &value)
                    .map_err(|e| format!("round trip {n}: PUT failed: {e}"))?;
                if r.status != 200 {
                    return Err(format!("round trip {n}: PUT answered {r:?}"));
                }
                let r = http(addr, "GET", &kv_path(&key), &[], b"")
                    .map_err(|e| format!("round trip {n}: GET failed: {e}"))?;
                if r.status != 200 || r.body != value {
                    return Err(format!("round trip {n}: GET answered {r:?}"));
                }
                n += 1;
            }
            Ok(n)
        })
    };
    // RSS, sampled while the abuse runs.
    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak_rss.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(vm_rss_kb(pid), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // Slow clients: two slowloris, one idle connection.
    let slow: Vec<_> = [false, false, true]
        .into_iter()
        .map(|idle| thread::spawn(move || slow_client(addr, idle)))
        .collect();

    // Connections opened and dropped mid-request.
    let dropped = thread::spawn(move || {
        let partials: [&[u8]; 6] = [
            b"",
            b"PU",
            b"PUT /v1/kv/dropped HTTP/1.1\r\nHost: t\r\nContent-Le",
            b"PUT /v1/kv/dropped HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nhalf",
            b"POST /v1/batch HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"ops\":",
            b"GET /v1/kv?prefix=a HTTP/1.1\r\nHost: t\r\n",
        ];
        let mut n = 0;
        for round in 0..50 {
            // Hold a batch of them open at once, then drop them all.
            let mut open = Vec::new();
            for p in partials {
                let mut c = connect(addr);
                let _ = c.write_all(p);
                open.push(c);
                n += 1;
            }
            if round % 2 == 0 {
                // Some with a reset instead of a clean close.
                for c in &open {
                    reset_on_close(c);
                }
            }
            drop(open);
        }
        n
    });

    // The malformed requests, from four threads.
    let all = probes();
    let total = all.len();
    let queue = Arc::new(Mutex::new(all.into_iter().enumerate().collect::<Vec<_>>()));
    let tally = Arc::new(Mutex::new(
        std::collections::BTreeMap::<String, usize>::new(),
    ));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (queue, tally, failures) = (queue.clone(), tally.clone(), failures.clone());
            thread::spawn(move || loop {
                let Some((i, p)) = queue.lock().unwrap().pop() else {
                    return;
                };
                match run_probe(addr, &p) {
                    Ok(ending) => *tally.lock().unwrap().entry(ending).or_default() += 1,
                    Err(why) => failures
                        .lock()
                        .unwrap()
                        .push(format!("#{i} {}: {why}", p.what)),
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("probe worker");
    }
    let dropped = dropped.join().expect("dropping thread");
    let slow: Vec<Result<Duration, String>> = slow
        .into_iter()
        .map(|h| h.join().expect("slow client"))
        .collect();
    stop.store(true, Ordering::Relaxed);
    let round_trips = good.join().expect("good client");
    sampler.join().unwrap();

    let failures = failures.lock().unwrap().clone();
    println!(
        "{total} malformed requests in {:.1} s; endings: {:?}",
        started.elapsed().as_secs_f64(),
        tally.lock().unwrap()
    );
    println!("{dropped} connections dropped mid-request");
    println!("slow clients: {slow:?}");
    println!("good client: {round_trips:?} PUT+GET round trips");
    let rss = vm_rss_kb(pid);
    let peak = peak_rss.load(Ordering::Relaxed).max(rss);
    println!(
        "node VmRSS: {:.1} MB now, {:.1} MB peak sampled",
        rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    for f in failures.iter().take(60) {
        println!("FAIL {f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {total} probes failed (above)",
        failures.len()
    );
    assert!(total >= 1000, "only {total} probes");
    match round_trips {
        Ok(n) => assert!(n > 0, "the good client made no round trip"),
        Err(e) => panic!("the good client failed: {e}"),
    }
    for r in &slow {
        if let Err(e) = r {
            panic!("{e}");
        }
    }
    assert!(
        peak < RSS_LIMIT_KB,
        "node VmRSS peaked at {peak} kB (limit {RSS_LIMIT_KB} kB)"
    );
    // Still serving, and still knows what the good client wrote.
    let r = s.get("/readyz");
    r.expect(200);
    let v = s.put_kv(b"after-abuse", b"fine");
    let r = s.get_kv(b"after-abuse");
    r.expect(200);
    assert_eq!(r.body, b"fine");
    assert_eq!(r.etag_version(), v);
}

/// A client that sends its head at once and then its body one byte a second gets 408 once the
/// body read timeout passes (and the connection closes); the key is not written.
#[test]
fn a_body_sent_one_byte_a_second_is_cut_off_with_408() {
    let s = Server::start();
    let start = Instant::now();
    let mut c = connect(s.addr());
    c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    c.write_all(b"PUT /v1/kv/trickle HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let limit = Duration::from_secs(45);
    loop {
        assert!(
            start.elapsed() < limit,
            "still reading a trickled body after {:?}",
            start.elapsed()
        );
        if c.write_all(b"x").is_err() {
            break;
        }
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
        if find(&got, b"\r\n\r\n").is_some() {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "got {text:?}");
    assert!(
        start.elapsed() >= Duration::from_secs(25),
        "cut off after only {:?}",
        start.elapsed()
    );
    s.get_kv(b"trickle").expect(404);
}
