//! `/v1/kv/{key}`: PUT, GET, DELETE, versions, dates, conditional writes, odd keys.

use std::thread;
use std::time::Duration;

use corecache_e2e::{kv_path, parse_http_date, unix_now, Server};

#[test]
fn put_then_get_returns_value_version_and_dates() {
    let s = Server::start();
    let put = s.put("/v1/kv/hello", b"world");
    put.expect(200);
    let v = put.etag_version();
    assert!(v > 0, "version must be positive: {put:?}");
    assert_eq!(
        put.json_version(),
        v,
        "body version differs from ETag: {put:?}"
    );

    let get = s.get("/v1/kv/hello");
    get.expect(200);
    assert_eq!(get.body, b"world", "wrong value: {get:?}");
    assert_eq!(
        get.etag_version(),
        v,
        "GET ETag differs from PUT's: {get:?}"
    );
    let now = unix_now();
    for name in ["Last-Modified", "X-Created-At"] {
        let Some(h) = get.header(name) else {
            panic!("no {name} header: {get:?}")
        };
        let Some(t) = parse_http_date(h) else {
            panic!("{name} {h:?} is not an HTTP date (IMF-fixdate): {get:?}")
        };
        assert!(
            t + 120 >= now && t <= now + 120,
            "{name} {h:?} is not close to now ({now}): {get:?}"
        );
    }
}

#[test]
fn versions_increase_with_every_write() {
    let s = Server::start();
    let mut last = 0;
    for (i, key) in ["a", "b", "a", "c", "a", "b"].iter().enumerate() {
        let v = s.put_kv(key.as_bytes(), format!("value {i}").as_bytes());
        assert!(
            v > last,
            "write {i} to {key:?} got version {v}, not above {last}"
        );
        last = v;
    }
    // A delete is a write too: the next put is still above everything before it.
    s.delete("/v1/kv/c").expect(204);
    let v = s.put_kv(b"d", b"x");
    assert!(
        v > last,
        "put after a delete got version {v}, not above {last}"
    );
    let get = s.get("/v1/kv/a");
    get.expect(200);
    assert_eq!(get.body, b"value 4", "{get:?}");
}

#[test]
fn binary_value_roundtrips_byte_for_byte() {
    let s = Server::start();
    let value: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    s.put_kv(b"bin", &value);
    let get = s.get_kv(b"bin");
    get.expect(200);
    assert_eq!(get.body, value, "binary value came back different: {get:?}");
}

#[test]
fn empty_value_is_a_value() {
    let s = Server::start();
    let v = s.put_kv(b"empty", b"");
    let get = s.get_kv(b"empty");
    get.expect(200);
    assert!(get.body.is_empty(), "expected an empty body: {get:?}");
    assert_eq!(get.etag_version(), v, "{get:?}");
}

#[test]
fn non_utf8_key_with_nul_and_slash() {
    let s = Server::start();
    let key = [0xFFu8, 0x00, b'/'];
    let put = s.put("/v1/kv/%FF%00%2F", b"odd key");
    put.expect(200);
    let get = s.get("/v1/kv/%FF%00%2F");
    get.expect(200);
    assert_eq!(get.body, b"odd key", "{get:?}");
    // Lower-case hex is the same key.
    let get = s.get("/v1/kv/%ff%00%2f");
    get.expect(200);
    assert_eq!(get.body, b"odd key", "lower-case percent-encoding: {get:?}");
    // Prefixes of it are different keys.
    s.get("/v1/kv/%FF%00").expect_error(404, Some("not_found"));
    s.get("/v1/kv/%FF").expect_error(404, Some("not_found"));
    // The scan shows the exact bytes.
    let scan = s.get("/v1/kv?prefix=%FF");
    scan.expect(200);
    let items = scan.json()["items"].clone();
    let keys: Vec<Vec<u8>> = items
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| corecache_e2e::unb64(i["key"].as_str().unwrap_or("?")))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(keys, vec![key.to_vec()], "scan of prefix 0xFF: {scan:?}");
    s.delete("/v1/kv/%FF%00%2F").expect(204);
    s.get("/v1/kv/%FF%00%2F")
        .expect_error(404, Some("not_found"));
}

#[test]
fn key_with_colon_and_spaces() {
    let s = Server::start();
    let key = b"user:42 profile name";
    let put = s.put("/v1/kv/user%3A42%20profile%20name", b"alice");
    put.expect(200);
    // Same key, with the colon unencoded (legal in a path segment).
    let get = s.get("/v1/kv/user:42%20profile%20name");
    get.expect(200);
    assert_eq!(get.body, b"alice", "{get:?}");
    let get = s.get_kv(key);
    get.expect(200);
    assert_eq!(get.body, b"alice", "{get:?}");
    // '+' is not a space in a path.
    s.get("/v1/kv/user:42+profile+name")
        .expect_error(404, Some("not_found"));
}

#[test]
fn get_missing_key_is_404_json() {
    let s = Server::start();
    let r = s.get("/v1/kv/never-written");
    r.expect_error(404, Some("not_found"));
    assert!(r.header("etag").is_none(), "a 404 has no ETag: {r:?}");
}

#[test]
fn delete_then_get_and_delete_again() {
    let s = Server::start();
    s.put_kv(b"gone", b"soon");
    let del = s.delete("/v1/kv/gone");
    del.expect(204);
    assert!(del.body.is_empty(), "204 with a body: {del:?}");
    s.get("/v1/kv/gone").expect_error(404, Some("not_found"));
    s.delete("/v1/kv/gone").expect_error(404, Some("not_found"));
    s.delete("/v1/kv/never-was")
        .expect_error(404, Some("not_found"));
    // And it can come back.
    s.put_kv(b"gone", b"back");
    let get = s.get("/v1/kv/gone");
    get.expect(200);
    assert_eq!(get.body, b"back", "{get:?}");
}

fn date(r: &corecache_e2e::Response, name: &str) -> u64 {
    match r.header(name).and_then(parse_http_date) {
        Some(t) => t,
        None => panic!("missing or malformed {name}: {r:?}"),
    }
}

#[test]
fn created_at_survives_updates_and_resets_after_delete() {
    let s = Server::start();
    s.put_kv(b"k", b"1");
    let first = s.get("/v1/kv/k");
    first.expect(200);
    let created = date(&first, "X-Created-At");
    let modified1 = date(&first, "Last-Modified");
    assert!(
        modified1 >= created,
        "Last-Modified before X-Created-At: {first:?}"
    );

    thread::sleep(Duration::from_millis(1100));
    s.put_kv(b"k", b"2");
    let second = s.get("/v1/kv/k");
    second.expect(200);
    assert_eq!(
        second.header("X-Created-At"),
        first.header("X-Created-At"),
        "an update changed X-Created-At: first {first:?}\nsecond {second:?}"
    );
    assert!(
        date(&second, "Last-Modified") > modified1,
        "Last-Modified did not move after an update 1.1 s later: first {first:?}\nsecond {second:?}"
    );

    s.delete("/v1/kv/k").expect(204);
    thread::sleep(Duration::from_millis(1100));
    s.put_kv(b"k", b"3");
    let third = s.get("/v1/kv/k");
    third.expect(200);
    assert!(
        date(&third, "X-Created-At") > created,
        "X-Created-At not reset by delete + create: first {first:?}\nthird {third:?}"
    );
}

#[test]
fn if_match_on_put() {
    let s = Server::start();
    let v1 = s.put_kv(b"k", b"one");
    let wrong = format!("\"{}\"", v1 + 1000);
    s.request("PUT", "/v1/kv/k", &[("If-Match", &wrong)], b"bad")
        .expect_error(412, Some("precondition_failed"));
    let get = s.get("/v1/kv/k");
    assert_eq!(
        get.body, b"one",
        "a failed If-Match changed the value: {get:?}"
    );

    let ok = s.request(
        "PUT",
        "/v1/kv/k",
        &[("If-Match", &format!("\"{v1}\""))],
        b"two",
    );
    ok.expect(200);
    let v2 = ok.etag_version();
    assert!(v2 > v1, "{ok:?}");

    // v1 is stale now.
    s.request(
        "PUT",
        "/v1/kv/k",
        &[("If-Match", &format!("\"{v1}\""))],
        b"three",
    )
    .expect_error(412, Some("precondition_failed"));
    let get = s.get("/v1/kv/k");
    get.expect(200);
    assert_eq!(get.body, b"two", "{get:?}");
    assert_eq!(get.etag_version(), v2, "{get:?}");
}

#[test]
fn if_match_on_missing_key_fails() {
    let s = Server::start();
    s.request("PUT", "/v1/kv/nope", &[("If-Match", "\"1\"")], b"x")
        .expect_error(412, Some("precondition_failed"));
    s.get("/v1/kv/nope").expect_error(404, Some("not_found"));
}

#[test]
fn if_match_on_delete() {
    let s = Server::start();
    let v1 = s.put_kv(b"k", b"one");
    let v2 = s.put_kv(b"k", b"two");
    s.request(
        "DELETE",
        "/v1/kv/k",
        &[("If-Match", &format!("\"{v1}\""))],
        b"",
    )
    .expect_error(412, Some("precondition_failed"));
    let get = s.get("/v1/kv/k");
    get.expect(200);
    assert_eq!(
        get.body, b"two",
        "a failed conditional delete deleted: {get:?}"
    );
    s.request(
        "DELETE",
        "/v1/kv/k",
        &[("If-Match", &format!("\"{v2}\""))],
        b"",
    )
    .expect(204);
    s.get("/v1/kv/k").expect_error(404, Some("not_found"));
}

#[test]
fn if_none_match_star_is_create_only() {
    let s = Server::start();
    let first = s.request("PUT", "/v1/kv/once", &[("If-None-Match", "*")], b"first");
    first.expect(200);
    let v = first.etag_version();
    s.request("PUT", "/v1/kv/once", &[("If-None-Match", "*")], b"second")
        .expect_error(412, Some("precondition_failed"));
    let get = s.get("/v1/kv/once");
    get.expect(200);
    assert_eq!(get.body, b"first", "create-only overwrote: {get:?}");
    assert_eq!(get.etag_version(), v, "{get:?}");
    // After a delete the key may be created again.
    s.delete("/v1/kv/once").expect(204);
    s.request("PUT", "/v1/kv/once", &[("If-None-Match", "*")], b"third")
        .expect(200);
    let get = s.get("/v1/kv/once");
    assert_eq!(get.body, b"third", "{get:?}");
}

#[test]
fn concurrent_writers_get_distinct_versions() {
    let s = Server::start();
    let addr = s.addr();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            thread::spawn(move || {
                let mut got = Vec::new();
                for i in 0..25 {
                    let key = format!("t{t}/k{i:02}");
                    let r = corecache_e2e::http(
                        addr,
                        "PUT",
                        &kv_path(key.as_bytes()),
                        &[],
                        key.as_bytes(),
                    );
                    match r {
                        Ok(r) if r.status == 200 => got.push((key, r.etag_version())),
                        other => panic!("PUT {key}: {other:?}"),
                    }
                }
                got
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        match h.join() {
            Ok(v) => all.extend(v),
            Err(_) => panic!("a writer thread failed (see its message above)"),
        }
    }
    let mut versions: Vec<u64> = all.iter().map(|(_, v)| *v).collect();
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(versions.len(), 100, "versions were reused: {all:?}");
    for (key, v) in &all {
        let get = s.get_kv(key.as_bytes());
        get.expect(200);
        assert_eq!(get.body, key.as_bytes(), "{get:?}");
        assert_eq!(get.etag_version(), *v, "{get:?}");
    }
}
