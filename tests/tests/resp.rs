//! The Redis protocol front-end against the real binary: `redis-cli`, the `redis` crate, and raw
//! bytes over a TcpStream for protocol errors.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use corecache_e2e::Server;
use redis::{Commands, Connection, RedisResult};

fn client(s: &Server) -> Connection {
    let url = format!("redis://{}/", s.resp_addr());
    let c = redis::Client::open(url.as_str()).expect("client");
    c.get_connection().expect("connect to the RESP port")
}

fn err_text<T: std::fmt::Debug>(r: RedisResult<T>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

/// `redis-cli -p PORT args...`: stdout. Fails (never skips) when redis-cli is missing.
fn redis_cli(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-h")
        .arg(addr.ip().to_string())
        .arg("-p")
        .arg(addr.port().to_string())
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run redis-cli ({e}): install Debian's redis-tools \
                 (scripts/test.sh does: apt-get install -y redis-tools)"
            )
        });
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

/// Sends raw bytes and reads until the server closes the connection (or 10 s pass).
fn raw(addr: SocketAddr, bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(bytes).expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, false),
        }
    }
}

#[test]
fn redis_cli_talks_to_corecache() {
    let s = Server::start();
    let a = s.resp_addr();
    assert_eq!(redis_cli(a, &["ping"]), "PONG");
    assert_eq!(redis_cli(a, &["set", "greeting", "hello world"]), "OK");
    assert_eq!(redis_cli(a, &["get", "greeting"]), "hello world");
    assert_eq!(redis_cli(a, &["incrby", "n", "41"]), "41");
    assert_eq!(redis_cli(a, &["incr", "n"]), "42");
    assert_eq!(redis_cli(a, &["dbsize"]), "2");
    assert_eq!(redis_cli(a, &["scan", "12345"]), "ERR invalid cursor");
    assert!(redis_cli(a, &["info", "server"]).contains("redis_version:"));
    // redis-cli --scan pages with the cursors the node hands out (numbers, as it expects).
    for i in 0..30 {
        assert_eq!(redis_cli(a, &["set", &format!("page:{i:02}"), "x"]), "OK");
    }
    let listed = redis_cli(a, &["--scan", "--pattern", "page:*"]);
    let mut listed: Vec<&str> = listed.lines().collect();
    listed.sort_unstable();
    listed.dedup();
    let want: Vec<String> = (0..30).map(|i| format!("page:{i:02}")).collect();
    assert_eq!(listed, want);
    // The same data through HTTP.
    assert_eq!(s.get_kv(b"greeting").body, b"hello world");
    // Inline commands (what telnet sends).
    let (out, _) = raw(a, b"PING\r\nECHO \"a b\"\r\nQUIT\r\n");
    assert_eq!(out, b"+PONG\r\n$3\r\na b\r\n+OK\r\n");
}

#[test]
fn every_command_with_redis_semantics() {
    let s = Server::start();
    let mut c = client(&s);
    let q = |c: &mut Connection, args: &[&[u8]]| -> RedisResult<redis::Value> {
        let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap_or("?"));
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(c)
    };

    // PING, ECHO, SELECT, CLIENT, COMMAND.
    let pong: String = redis::cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG");
    let echo: Vec<u8> = redis::cmd("ECHO")
        .arg(&b"\0\xff"[..])
        .query(&mut c)
        .unwrap();
    assert_eq!(echo, b"\0\xff");
    let _: () = redis::cmd("SELECT").arg(0).query(&mut c).unwrap();
    assert!(err_text(q(&mut c, &[b"SELECT", b"1"])).contains("DB index is out of range"));
    let _: () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("tester")
        .query(&mut c)
        .unwrap();
    let name: String = redis::cmd("CLIENT").arg("GETNAME").query(&mut c).unwrap();
    assert_eq!(name, "tester");
    let id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut c).unwrap();
    assert!(id > 0);
    let count: i64 = redis::cmd("COMMAND").arg("COUNT").query(&mut c).unwrap();
    assert!(count >= 25, "{count}");
    let _: redis::Value = redis::cmd("COMMAND").arg("DOCS").query(&mut c).unwrap();
    let all: Vec<redis::Value> = redis::cmd("COMMAND").query(&mut c).unwrap();
    assert_eq!(all.len() as i64, count);
    let conf: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .arg("append*")
        .query(&mut c)
        .unwrap();
    assert_eq!(
        conf,
        ["save", "", "appendonly", "yes", "appendfsync", "always"]
    );
    let info: String = redis::cmd("INFO").query(&mut c).unwrap();
    for section in ["# Server", "# Persistence", "# Stats", "# Keyspace"] {
        assert!(info.contains(section), "{info}");
    }

    // Errors as Redis words them.
    let e = err_text(q(&mut c, &[b"NOSUCH", b"a", b"b"]));
    assert!(
        e.contains("unknown command 'NOSUCH', with args beginning with: 'a' 'b'"),
        "{e}"
    );
    let e = err_text(q(&mut c, &[b"GET"]));
    assert!(
        e.contains("wrong number of arguments for 'get' command"),
        "{e}"
    );

    // GET / SET and its options, binary keys and values.
    let key: &[u8] = b"bin\0\xffkey";
    let value: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    let _: () = c.set(key, &value).unwrap();
    let got: Vec<u8> = c.get(key).unwrap();
    assert_eq!(got, value);
    let missing: Option<Vec<u8>> = c.get("missing").unwrap();
    assert_eq!(missing, None);
    let r: Option<String> = redis::cmd("SET")
        .arg("k")
        .arg("1")
        .arg("NX")
        .query(&mut c)
        .unwrap();
    assert_eq!(r.as_deref(), Some("OK"));
    let r: Option<String> = redis::cmd("SET")
        .arg("k")
        .arg("2")
        .arg("NX")
        .query(&mut c)
        .unwrap();
    assert_eq!(r, None);
    let r: Option<String> = redis::cmd("SET")
        .arg("k")
        .arg("3")
        .arg("XX")
        .query(&mut c)
        .unwrap();
    assert_eq!(r.as_deref(), Some("OK"));
    let r: Option<String> = redis::cmd("SET")
        .arg("nx")
        .arg("3")
        .arg("XX")
        .query(&mut c)
        .unwrap();
    assert_eq!(r, None);
    let old: Option<String> = redis::cmd("SET")
        .arg("k")
        .arg("4")
        .arg("GET")
        .query(&mut c)
        .unwrap();
    assert_eq!(old.as_deref(), Some("3"));
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("5")
        .arg("KEEPTTL")
        .query(&mut c)
        .unwrap();
    let e = err_text(q(&mut c, &[b"SET", b"k", b"v", b"EX", b"10"]));
    assert!(e.contains("expiry not supported"), "{e}");
    let e = err_text(q(&mut c, &[b"SET", b"k", b"v", b"NX", b"XX"]));
    assert!(e.contains("syntax error"), "{e}");
    let n: i64 = redis::cmd("SETNX").arg("k").arg("x").query(&mut c).unwrap();
    assert_eq!(n, 0);
    let n: i64 = redis::cmd("SETNX")
        .arg("fresh")
        .arg("x")
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 1);
    let old: Option<String> = redis::cmd("GETSET")
        .arg("k")
        .arg("6")
        .query(&mut c)
        .unwrap();
    assert_eq!(old.as_deref(), Some("5"));
    let old: Option<String> = redis::cmd("GETDEL").arg("k").query(&mut c).unwrap();
    assert_eq!(old.as_deref(), Some("6"));
    let old: Option<String> = redis::cmd("GETDEL").arg("k").query(&mut c).unwrap();
    assert_eq!(old, None);

    // DEL, UNLINK, EXISTS.
    let _: () = c.set("d1", "x").unwrap();
    let _: () = c.set("d2", "x").unwrap();
    let n: i64 = redis::cmd("EXISTS")
        .arg("d1")
        .arg("d2")
        .arg("d1")
        .arg("no")
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 3);
    let n: i64 = redis::cmd("DEL").arg("d1").arg("no").query(&mut c).unwrap();
    assert_eq!(n, 1);
    let n: i64 = redis::cmd("UNLINK")
        .arg("d2")
        .arg("d1")
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 1);

    // MSET, MGET, MSETNX.
    let _: () = redis::cmd("MSET")
        .arg("m1")
        .arg("a")
        .arg("m2")
        .arg(&b"\0"[..])
        .query(&mut c)
        .unwrap();
    let got: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
        .arg("m1")
        .arg("nope")
        .arg("m2")
        .query(&mut c)
        .unwrap();
    assert_eq!(got, vec![Some(b"a".to_vec()), None, Some(b"\0".to_vec())]);
    let e = err_text(q(&mut c, &[b"MSET", b"a", b"1", b"b"]));
    assert!(
        e.contains("wrong number of arguments for 'mset' command"),
        "{e}"
    );
    let n: i64 = redis::cmd("MSETNX")
        .arg("m1")
        .arg("z")
        .arg("m3")
        .arg("z")
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 0);
    let n: i64 = redis::cmd("MSETNX")
        .arg("m3")
        .arg("z")
        .arg("m4")
        .arg("z")
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 1);

    // STRLEN, APPEND.
    let n: i64 = redis::cmd("STRLEN").arg("m1").query(&mut c).unwrap();
    assert_eq!(n, 1);
    let n: i64 = redis::cmd("STRLEN").arg("nope").query(&mut c).unwrap();
    assert_eq!(n, 0);
    let n: i64 = redis::cmd("APPEND")
        .arg("m1")
        .arg("bc")
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 3);
    let n: i64 = redis::cmd("APPEND")
        .arg("new")
        .arg("xy")
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 2);
    let v: String = c.get("m1").unwrap();
    assert_eq!(v, "abc");

    // INCR family.
    let n: i64 = redis::cmd("INCR").arg("ctr").query(&mut c).unwrap();
    assert_eq!(n, 1);
    let n: i64 = redis::cmd("INCRBY")
        .arg("ctr")
        .arg(10)
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 11);
    let n: i64 = redis::cmd("DECR").arg("ctr").query(&mut c).unwrap();
    assert_eq!(n, 10);
    let n: i64 = redis::cmd("DECRBY")
        .arg("ctr")
        .arg(20)
        .query(&mut c)
        .unwrap();
    assert_eq!(n, -10);
    let e = err_text(q(&mut c, &[b"INCR", b"m1"]));
    assert!(e.contains("value is not an integer or out of range"), "{e}");
    let e = err_text(q(&mut c, &[b"INCRBY", b"ctr", b"x"]));
    assert!(e.contains("value is not an integer or out of range"), "{e}");
    let _: () = c.set("big", i64::MAX.to_string()).unwrap();
    let e = err_text(q(&mut c, &[b"INCR", b"big"]));
    assert!(e.contains("overflow"), "{e}");

    // Limits map to errors, and the connection goes on.
    let e = err_text(q(&mut c, &[b"SET", &vec![b'k'; 9000], b"v"]));
    assert!(e.contains("too large") || e.contains("too long"), "{e}");
    let e = err_text(q(&mut c, &[b"SET", b"k", &vec![b'v'; (1 << 20) + 10]]));
    assert!(e.contains("too large"), "{e}");
    let pong: String = redis::cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG");

    // SCAN, KEYS, DBSIZE.
    let mut want = BTreeSet::new();
    for i in 0..25 {
        let k = format!("scan:{i:02}");
        let _: () = c.set(&k, "v").unwrap();
        want.insert(k);
    }
    let mut seen = BTreeSet::new();
    let mut cursor = "0".to_string();
    let mut rounds = 0;
    loop {
        let (next, keys): (String, Vec<String>) = redis::cmd("SCAN")
            .arg(&cursor)
            .arg("MATCH")
            .arg("scan:*")
            .arg("COUNT")
            .arg(7)
            .query(&mut c)
            .unwrap();
        seen.extend(keys);
        rounds += 1;
        // A decimal number, as every Redis client expects.
        assert!(
            next.parse::<u64>().is_ok(),
            "cursor {next:?} is not a number"
        );
        if next == "0" {
            break;
        }
        cursor = next;
        assert!(rounds < 100);
    }
    assert_eq!(seen, want);
    let e = err_text(q(&mut c, &[b"SCAN", b"zz"]));
    assert!(e.contains("invalid cursor"), "{e}");
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("scan:1?").query(&mut c).unwrap();
    keys.sort();
    let want1: Vec<String> = (10..20).map(|i| format!("scan:{i}")).collect();
    assert_eq!(keys, want1);
    let keys: Vec<String> = redis::cmd("KEYS").arg("scan:[0]*").query(&mut c).unwrap();
    assert_eq!(keys.len(), 10);
    let all: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
    let n: i64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
    assert_eq!(n, all.len() as i64);

    // FLUSHDB is off unless the node allows it.
    let e = err_text(q(&mut c, &[b"FLUSHDB"]));
    assert!(e.contains("FLUSHDB is disabled"), "{e}");

    // QUIT closes.
    let _: () = redis::cmd("QUIT").query(&mut c).unwrap();
}

#[test]
fn flushdb_when_enabled() {
    let s = Server::start_with(&["--resp-flushdb", "true"]);
    let mut c = client(&s);
    for i in 0..2500 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg("v")
            .query(&mut c)
            .unwrap();
    }
    let n: i64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
    assert_eq!(n, 2500);
    let _: () = redis::cmd("FLUSHDB").query(&mut c).unwrap();
    let n: i64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
    assert_eq!(n, 0);
}

#[test]
fn a_pipeline_of_a_thousand_commands_answers_in_order() {
    let s = Server::start_with(&["--sync", "none"]);
    let mut c = client(&s);
    let mut p = redis::pipe();
    for i in 0..500 {
        p.cmd("SET").arg(format!("p{i}")).arg(i).ignore();
        p.cmd("INCR").arg(format!("p{i}"));
    }
    let got: Vec<i64> = p.query(&mut c).unwrap();
    assert_eq!(got, (1..=500).collect::<Vec<i64>>());
    let mut p = redis::pipe();
    for i in 0..1000 {
        p.cmd("GET").arg(format!("p{}", i % 500));
    }
    let got: Vec<i64> = p.query(&mut c).unwrap();
    assert_eq!(got, (0..1000).map(|i| i % 500 + 1).collect::<Vec<i64>>());
    // The same pipeline as one write of raw bytes.
    let mut bytes = Vec::new();
    for _ in 0..1000 {
        bytes.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
    }
    bytes.extend_from_slice(b"QUIT\r\n");
    let (out, closed) = raw(s.resp_addr(), &bytes);
    assert!(closed);
    assert_eq!(out.len(), 1000 * 7 + 5);
}

/// Consecutive SETs of a pipeline go to the node together (under `--sync always`, one group
/// commit); they still apply in order, and a read after them sees the last.
#[test]
fn pipelined_sets_apply_in_order_and_reads_after_them_see_them() {
    let s = Server::start_with(&["--sync", "always"]);
    let mut c = client(&s);
    let mut p = redis::pipe();
    for i in 0..2500 {
        p.cmd("SET").arg(format!("o{}", i % 7)).arg(i);
        if i % 500 == 499 {
            p.cmd("GET").arg(format!("o{}", i % 7));
        }
    }
    let got: Vec<redis::Value> = p.query(&mut c).unwrap();
    let mut want_gets = Vec::new();
    for i in 0..2500 {
        if i % 500 == 499 {
            want_gets.push(i.to_string());
        }
    }
    let gets: Vec<String> = got
        .iter()
        .filter_map(|v| match v {
            redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(gets, want_gets);
    assert_eq!(got.len(), 2505);
    // Every key holds the last value the pipeline gave it.
    for k in 0..7 {
        let last = (0..2500).rev().find(|i| i % 7 == k).unwrap();
        let v: i64 = c.get(format!("o{k}")).unwrap();
        assert_eq!(v, last, "o{k}");
    }
}

#[test]
fn incr_is_atomic_under_concurrent_clients() {
    let s = Server::start();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let mut c = client(&s);
            std::thread::spawn(move || {
                for _ in 0..50 {
                    let _: i64 = redis::cmd("INCR").arg("shared").query(&mut c).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut c = client(&s);
    let n: i64 = c.get("shared").unwrap();
    assert_eq!(n, 200);
}

/// MSETNX is one batch with its existence checks inside: of two racing MSETNX that share a
/// key, never both succeed, and a failed one writes nothing.
#[test]
fn msetnx_is_atomic_under_concurrent_clients() {
    let s = Server::start();
    for round in 0..40 {
        let (a, b, c) = (
            format!("nx{round}:a"),
            format!("nx{round}:b"),
            format!("nx{round}:c"),
        );
        let go = |k1: String, k2: String, v: &'static str| {
            let mut conn = client(&s);
            std::thread::spawn(move || -> i64 {
                redis::cmd("MSETNX")
                    .arg(&k1)
                    .arg(v)
                    .arg(&k2)
                    .arg(v)
                    .query(&mut conn)
                    .unwrap()
            })
        };
        let t1 = go(a.clone(), b.clone(), "1");
        let t2 = go(b.clone(), c.clone(), "2");
        let (r1, r2) = (t1.join().unwrap(), t2.join().unwrap());
        assert_eq!(r1 + r2, 1, "round {round}: exactly one wins ({r1}, {r2})");
        let mut conn = client(&s);
        let got: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&a)
            .arg(&b)
            .arg(&c)
            .query(&mut conn)
            .unwrap();
        let want = if r1 == 1 {
            vec![Some("1".into()), Some("1".into()), None]
        } else {
            vec![None, Some("2".into()), Some("2".into())]
        };
        assert_eq!(got, want, "round {round}");
    }
}

#[test]
fn resp3_after_hello_3() {
    let s = Server::start();
    let (out, _) = raw(
        s.resp_addr(),
        b"HELLO 3\r\nGET missing\r\nHELLO 2\r\nGET missing\r\nHELLO 4\r\nQUIT\r\n",
    );
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("%8\r\n$6\r\nserver\r\n$5\r\nredis\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\n_\r\n*16\r\n"), "{text}");
    assert!(text.contains("\r\n$-1\r\n-NOPROTO"), "{text}");
}

#[test]
fn protocol_errors_close_only_that_connection() {
    let s = Server::start();
    let a = s.resp_addr();
    let mut other = client(&s);
    let cases: &[(&[u8], &str)] = &[
        (
            b"*2\r\n$3\r\nGET\r\n$-4\r\n",
            "-ERR Protocol error: invalid bulk length",
        ),
        (
            b"*1\r\n$99999999999999\r\n",
            "-ERR Protocol error: invalid bulk length",
        ),
        (
            b"*99999999999\r\n",
            "-ERR Protocol error: invalid multibulk length",
        ),
        (b"*x\r\n", "-ERR Protocol error: invalid multibulk length"),
        (
            b"*1\r\n:5\r\n",
            "-ERR Protocol error: expected '$', got ':'",
        ),
        (
            b"*1\r\n$3\r\nGETXX\r\n",
            "-ERR Protocol error: expected CRLF after bulk string",
        ),
        (
            b"GET \"unbalanced\r\n",
            "-ERR Protocol error: unbalanced quotes",
        ),
    ];
    for (input, want) in cases {
        let (out, closed) = raw(a, input);
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with(want), "{input:?}: {text:?}");
        assert!(closed, "{input:?}: connection left open");
    }
    // An inline request with no end past 64 KiB.
    let (out, closed) = raw(a, &vec![b'a'; 70 << 10]);
    assert!(
        String::from_utf8_lossy(&out).starts_with("-ERR Protocol error: too big inline request")
    );
    assert!(closed);
    // An unterminated bulk: the server waits for the rest; the client gives up; nothing breaks.
    {
        let mut t = TcpStream::connect(a).unwrap();
        t.write_all(b"*2\r\n$3\r\nSET\r\n$100000\r\nabc").unwrap();
    }
    // Everyone else is still served.
    let _: () = other.set("still", "here").unwrap();
    let v: String = other.get("still").unwrap();
    assert_eq!(v, "here");
    assert_eq!(redis_cli(a, &["ping"]), "PONG");
}
