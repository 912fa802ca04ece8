//! `/livez`, `/readyz`, `/metrics`, `/v1/status`.

use corecache_e2e::{Response, Server};

#[test]
fn livez_and_readyz_are_200() {
    let s = Server::start();
    s.get("/livez").expect(200);
    s.get("/readyz").expect(200);
}

/// The sum of all samples of `name` (with or without labels).
fn metric_sum(r: &Response, name: &str) -> Option<f64> {
    let text = r.text();
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value_part = match rest.rfind('}') {
            Some(i) => &rest[i + 1..],
            None => rest,
        };
        let Some(v) = value_part
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            panic!("unparsable sample line {line:?}: {r:?}")
        };
        *found.get_or_insert(0.0) += v;
    }
    found
}

#[test]
fn metrics_are_prometheus_text_with_request_and_memtable_counters() {
    let s = Server::start();
    for i in 0..20 {
        s.put_kv(format!("m{i}").as_bytes(), &[b'x'; 1000]);
    }
    s.get("/v1/kv/m1").expect(200);
    let r = s.get("/metrics");
    r.expect(200);
    let ct = r.header("content-type").unwrap_or_default().to_string();
    assert!(ct.starts_with("text/plain"), "content type {ct:?}: {r:?}");
    let requests = metric_sum(&r, "corecache_http_requests_total");
    assert!(
        requests.is_some_and(|n| n >= 21.0),
        "corecache_http_requests_total missing or below the 21 requests made (got {requests:?}): {r:?}"
    );
    let mem = metric_sum(&r, "corecache_memtable_bytes");
    assert!(
        mem.is_some_and(|n| n >= 20_000.0),
        "corecache_memtable_bytes missing or below the 20 KB just written (got {mem:?}): {r:?}"
    );
    // The counter counts.
    s.get("/v1/kv/m2").expect(200);
    s.get("/v1/kv/missing").expect(404);
    let again = s.get("/metrics");
    let later = metric_sum(&again, "corecache_http_requests_total");
    assert!(
        later.zip(requests).is_some_and(|(l, r)| l >= r + 2.0),
        "corecache_http_requests_total did not count 2 more requests ({requests:?} -> {later:?}): \
         {again:?}"
    );
}

#[test]
fn status_reports_a_single_leader_node() {
    let s = Server::start_with(&["--node-id", "e2e-node-7"]);
    let r = s.get("/v1/status");
    r.expect(200);
    let j = r.json();
    assert_eq!(j["node_id"].as_str(), Some("e2e-node-7"), "{r:?}");
    assert_eq!(j["role"].as_str(), Some("leader"), "{r:?}");
    assert!(
        j.get("leader").is_some_and(|l| !l.is_null()),
        "a single node has a leader: {r:?}"
    );
    assert!(
        j.get("epoch").is_some_and(|e| e.is_u64()),
        "epoch must be a non-negative integer: {r:?}"
    );
    let parts = &j["partitions"];
    let n = parts
        .as_object()
        .map(|o| o.len())
        .or_else(|| parts.as_array().map(|a| a.len()));
    assert!(
        n.is_some_and(|n| n > 0),
        "partitions must be a non-empty object or array: {r:?}"
    );
    assert!(j["engine"].is_object(), "engine must be an object: {r:?}");
}

#[test]
fn status_without_node_id_still_names_the_node() {
    let s = Server::start();
    let r = s.get("/v1/status");
    r.expect(200);
    let j = r.json();
    assert!(
        j["node_id"].as_str().is_some_and(|id| !id.is_empty()),
        "{r:?}"
    );
    assert_eq!(j["role"].as_str(), Some("leader"), "{r:?}");
}

#[test]
fn generated_node_id_survives_a_restart() {
    let mut s = Server::start();
    let id = |s: &Server| {
        let r = s.get("/v1/status");
        r.expect(200);
        r.json()["node_id"].as_str().map(str::to_string)
    };
    let before = id(&s);
    assert!(before.is_some(), "no node_id");
    s.restart();
    assert_eq!(
        id(&s),
        before,
        "the node id changed across a restart on the same data dir"
    );
}

/// Flushes are timed into a histogram, and the engine gauges follow the data: with a 1 MiB
/// memtable, 2.4 MB of writes must flush at least once.
#[test]
fn metrics_time_flushes_and_count_tables() {
    let s = Server::start_with(&["--memtable-mb", "1"]);
    let value = vec![b'v'; 8 << 10];
    for i in 0..300u32 {
        s.put_kv(format!("key{i:04}").as_bytes(), &value);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = s.get("/metrics");
        r.expect(200);
        let flushes = metric_sum(&r, "corecache_flush_duration_seconds_count").unwrap_or(0.0);
        let tables = metric_sum(&r, "corecache_tables").unwrap_or(0.0);
        if flushes >= 1.0 && tables >= 1.0 {
            assert!(
                metric_sum(&r, "corecache_disk_table_bytes").unwrap_or(0.0) > 1e6,
                "{r:?}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no flush was timed after 2.4 MB into a 1 MiB memtable: {r:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// While the engine opens (replaying its log), the node listens but is not ready: `/readyz`
/// and data routes answer 503 with `Retry-After`, `/livez` 200; then it becomes ready. The
/// replay is made long and deterministic with a test-only failpoint.
#[test]
fn not_ready_while_the_log_replays() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(corecache_e2e::require_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("CORECACHE_FAILPOINT_OPEN_DELAY_MS", "3000")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start corecache");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listening line");
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("listening on http://")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let call = |method: &str, path: &str| {
        corecache_e2e::http(addr, method, path, &[], b"").expect("HTTP request")
    };
    let ready = call("GET", "/readyz");
    let get = call("GET", "/v1/kv/k");
    let live = call("GET", "/livez");
    let result = std::panic::catch_unwind(|| {
        assert_eq!(ready.status, 503, "{ready:?}");
        assert!(ready.header("retry-after").is_some(), "{ready:?}");
        assert_eq!(get.status, 503, "{get:?}");
        assert_eq!(live.status, 200, "{live:?}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if call("GET", "/readyz").status == 200 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never became ready");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert_eq!(call("GET", "/v1/kv/k").status, 404);
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
