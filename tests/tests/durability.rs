//! Acknowledged writes survive `kill -9` (with `--sync always`) and SIGTERM (any sync mode).

use std::collections::BTreeMap;

use corecache_e2e::{kv_path, scan_all, Server};

/// Writes a mix of puts, overwrites and deletes; returns what must be there afterwards
/// (key -> (value, version); `None` for deleted keys) and the highest version acknowledged.
/// key -> Some((value, version)), or None for a deleted key.
type Expected = BTreeMap<Vec<u8>, Option<(Vec<u8>, u64)>>;

fn write_mix(s: &Server, n: usize) -> (Expected, u64) {
    let mut expect = BTreeMap::new();
    let mut max = 0;
    for i in 0..n {
        let key = format!("dur/{:04}", i % (n * 3 / 4).max(1)).into_bytes();
        let value = format!("value {i} {}", "x".repeat(i % 97)).into_bytes();
        let v = s.put_kv(&key, &value);
        max = max.max(v);
        expect.insert(key, Some((value, v)));
        if i % 10 == 9 {
            let victim = format!("dur/{:04}", i - 5).into_bytes();
            let r = s.delete(&kv_path(&victim));
            match r.status {
                204 => {
                    expect.insert(victim, None);
                }
                404 => {}
                _ => panic!("unexpected delete reply: {r:?}"),
            }
        }
    }
    // A binary key and a batch, acknowledged like the rest.
    let v = s.put_kv(b"\xFF\x00bin", b"\x00\x01\x02");
    expect.insert(b"\xFF\x00bin".to_vec(), Some((b"\x00\x01\x02".to_vec(), v)));
    let r = corecache_e2e::batch(
        s,
        vec![
            corecache_e2e::op_put(b"batch/1", b"one"),
            corecache_e2e::op_put(b"batch/2", b"two"),
        ],
    );
    r.expect(200);
    let bv = r.json_version();
    // What version each batched key carries is http_scan_batch's business; here the versions
    // read before the crash must be the ones read after it.
    for (k, val) in [(&b"batch/1"[..], &b"one"[..]), (b"batch/2", b"two")] {
        let g = s.get_kv(k);
        g.expect(200);
        assert_eq!(g.body, val, "{g:?}");
        expect.insert(k.to_vec(), Some((val.to_vec(), g.etag_version())));
    }
    (expect, max.max(bv).max(v))
}

#[track_caller]
fn verify(s: &Server, expect: &Expected, max: u64, when: &str) {
    let mut lost = Vec::new();
    for (key, want) in expect {
        let r = s.get_kv(key);
        match want {
            Some((value, version)) => {
                if r.status != 200 || &r.body != value || r.etag_version_opt() != Some(*version) {
                    lost.push(format!(
                        "{}: want {:?} (version {version}), got {r:?}",
                        String::from_utf8_lossy(key),
                        String::from_utf8_lossy(value)
                    ));
                }
            }
            None => {
                if r.status != 404 {
                    lost.push(format!(
                        "{}: deleted, yet {r:?}",
                        String::from_utf8_lossy(key)
                    ));
                }
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{when}: {} of {} keys wrong:\n{}",
        lost.len(),
        expect.len(),
        lost.join("\n")
    );
    // The scan agrees.
    let pages = scan_all(s, "prefix=dur%2F&limit=1000", 10);
    let scanned: Vec<Vec<u8>> = pages.iter().flatten().map(|i| i.key.clone()).collect();
    let live: Vec<Vec<u8>> = expect
        .iter()
        .filter(|(k, v)| k.starts_with(b"dur/") && v.is_some())
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(scanned, live, "{when}: scan after restart differs");
    // Versions keep increasing across the restart.
    let v = s.put_kv(b"after-restart", b"x");
    assert!(
        v > max,
        "{when}: a new write got version {v}, not above {max}"
    );
}

trait EtagOpt {
    fn etag_version_opt(&self) -> Option<u64>;
}

impl EtagOpt for corecache_e2e::Response {
    fn etag_version_opt(&self) -> Option<u64> {
        let t = self.header("etag")?.trim();
        t.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
    }
}

#[test]
fn kill_9_loses_no_acknowledged_write_with_sync_always() {
    let mut s = Server::start_with(&["--sync", "always"]);
    let (expect, max) = write_mix(&s, 300);
    s.kill9();
    s.restart();
    verify(&s, &expect, max, "after kill -9");
    // Twice in a row, with more writes in between.
    let v = s.put_kv(b"dur/second-life", b"2");
    let mut expect = expect;
    expect.insert(b"dur/second-life".to_vec(), Some((b"2".to_vec(), v)));
    s.kill9();
    s.restart();
    verify(&s, &expect, v.max(max), "after the second kill -9");
}

#[test]
fn kill_9_with_the_default_sync_mode() {
    // The default is `always`: no --sync flag.
    let mut s = Server::start();
    let (expect, max) = write_mix(&s, 120);
    s.kill9();
    s.restart();
    verify(&s, &expect, max, "after kill -9 (default sync)");
}

#[test]
fn sigterm_exits_0_and_keeps_everything() {
    let mut s = Server::start();
    let (expect, max) = write_mix(&s, 150);
    let status = s.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status:?}"
    );
    s.restart();
    verify(&s, &expect, max, "after SIGTERM");
}

#[test]
fn sigterm_keeps_everything_with_sync_none_and_interval() {
    for mode in ["none", "interval"] {
        let mut s = Server::start_with(&["--sync", mode]);
        let (expect, max) = write_mix(&s, 100);
        let status = s.terminate();
        assert_eq!(
            status.code(),
            Some(0),
            "--sync {mode}: exit status after SIGTERM: {status:?}"
        );
        s.restart();
        verify(
            &s,
            &expect,
            max,
            &format!("after SIGTERM with --sync {mode}"),
        );
    }
}

#[test]
fn kill_9_during_concurrent_writes_keeps_every_acknowledged_one() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::thread;
    use std::time::{Duration, Instant};

    let mut s = Server::start();
    let addr = s.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let stop = stop.clone();
            thread::spawn(move || {
                // Each key is written once, so what is read back must be exactly what was acked.
                let mut acked = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(10);
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    let key = format!("conc/{t}/{i:05}").into_bytes();
                    let value = format!("{t}-{i}").into_bytes();
                    match corecache_e2e::http(addr, "PUT", &kv_path(&key), &[], &value) {
                        Ok(r) if r.status == 200 => {
                            let v = r.etag_version();
                            acked.push((key, value, v));
                        }
                        // The kill: connection refused or reset.
                        Err(_) => break,
                        Ok(r) => panic!("unexpected reply while writing: {r:?}"),
                    }
                }
                acked
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(800));
    s.kill9();
    stop.store(true, Ordering::Relaxed);
    let mut expect = Expected::new();
    let mut max = 0;
    for w in writers {
        match w.join() {
            Ok(acked) => {
                for (k, v, ver) in acked {
                    max = max.max(ver);
                    expect.insert(k, Some((v, ver)));
                }
            }
            Err(_) => panic!("a writer thread failed (see its message above)"),
        }
    }
    assert!(
        expect.len() >= 20,
        "only {} writes were acknowledged in 0.8 s",
        expect.len()
    );
    s.restart();
    verify(&s, &expect, max, "after kill -9 during concurrent writes");
}
