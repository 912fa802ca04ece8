//! The node's door never blocks: when writes stall (background work behind), they are refused
//! at once (HTTP 503 with `Retry-After`, RESP `TRYAGAIN`), change nothing, and the same node
//! keeps answering reads and `/v1/status`.
//!
//! The failpoint `CORECACHE_FAILPOINT_TABLE_DELAY_MS` makes every table file slow to create, so
//! the first flush holds the engine's flush thread far longer than this test waits for an
//! answer: a node that waited inside its door for room would answer nothing until then.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use corecache_e2e::{kv_path, Server};

/// Far longer than any answer below may take.
const TABLE_DELAY_MS: &str = "60000";
/// What "promptly" means here: a generous bound, far below the flush's hold-up.
const PROMPT: Duration = Duration::from_secs(10);

fn resp_call(s: &Server, args: &[&[u8]]) -> String {
    let mut c = TcpStream::connect(s.resp_addr()).expect("connect to RESP");
    c.set_read_timeout(Some(PROMPT)).expect("timeout");
    let mut cmd = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        cmd.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        cmd.extend_from_slice(a);
        cmd.extend_from_slice(b"\r\n");
    }
    c.write_all(&cmd).expect("send");
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).expect("a RESP reply in time");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn while_writes_stall_the_node_answers_reads_and_status_promptly() {
    let s = Server::start_with_env(
        &["--memtable-mb", "1", "--resp-listen", "127.0.0.1:0"],
        &[("CORECACHE_FAILPOINT_TABLE_DELAY_MS", TABLE_DELAY_MS)],
    );
    s.put_kv(b"before", b"kept");
    let value = vec![b'x'; 200 << 10];
    let mut refused = None;
    for i in 0..100 {
        let r = s.put(&kv_path(format!("fill{i}").as_bytes()), &value);
        if r.status == 503 {
            refused = Some((i, r));
            break;
        }
        r.expect(200);
    }
    let (at, r) = refused.expect("writes stall once the first flush is held up");
    assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
    let j = r.json();
    assert_eq!(j["code"], "unavailable", "{r:?}");
    assert_eq!(j["reason"], "stalled", "{r:?}");

    // The same node answers reads, status and metrics while writes stall.
    let t = Instant::now();
    let got = s.get_kv(b"before");
    got.expect(200);
    assert_eq!(got.body, b"kept");
    s.get(&kv_path(b"fill0")).expect(200);
    let status = s.get("/v1/status");
    status.expect(200);
    s.get("/metrics").expect(200);
    assert!(
        t.elapsed() < PROMPT,
        "reads took {:?} while writes stalled",
        t.elapsed()
    );

    // A refused write changed nothing; later ones are refused too, and promptly.
    s.get_kv(format!("fill{at}").as_bytes()).expect(404);
    let t = Instant::now();
    let again = s.put(&kv_path(b"later"), b"small");
    assert_eq!(again.status, 503, "{again:?}");
    assert!(
        t.elapsed() < PROMPT,
        "a stalled write took {:?}",
        t.elapsed()
    );
    s.get_kv(b"later").expect(404);

    // RESP: the same refusal as a retryable error reply, and reads still answer.
    let set = resp_call(&s, &[b"SET", b"viaresp", &value]);
    assert!(set.starts_with("-TRYAGAIN"), "{set:?}");
    assert_eq!(resp_call(&s, &[b"GET", b"before"]), "$4\r\nkept\r\n");
    assert_eq!(resp_call(&s, &[b"EXISTS", b"viaresp"]), ":0\r\n");
}
