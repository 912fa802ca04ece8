//! Size limits, malformed input, wrong methods: the right 4xx, and the node keeps serving.

use corecache_e2e::{b64, batch, kv_path, op_put, Server};

const KEY_MAX: usize = 8 << 10;
const VALUE_MAX: usize = 1 << 20;

#[track_caller]
fn still_serving(s: &Server) {
    let v = s.put_kv(b"health-check", b"fine");
    let r = s.get("/v1/kv/health-check");
    r.expect(200);
    assert_eq!(r.body, b"fine", "{r:?}");
    assert_eq!(r.etag_version(), v, "{r:?}");
}

#[test]
fn key_of_8_kib_is_accepted_and_one_more_byte_is_rejected() {
    let s = Server::start();
    let key = vec![b'k'; KEY_MAX];
    s.put_kv(&key, b"max key");
    let r = s.get_kv(&key);
    r.expect(200);
    assert_eq!(r.body, b"max key", "{r:?}");

    let long = vec![b'k'; KEY_MAX + 1];
    let r = s.put(&kv_path(&long), b"too long");
    assert!(
        r.status == 414 || r.status == 413,
        "a {}-byte key must be 414 or 413: {r:?}",
        long.len()
    );
    let r = s.get_kv(&long);
    assert!(
        r.status == 414 || r.status == 413,
        "GET of a {}-byte key must be 414 or 413: {r:?}",
        long.len()
    );
    // Percent-encoded: 8193 bytes as %XX is 24 KiB of URL.
    let long_bin = vec![0xABu8; KEY_MAX + 1];
    let r = s.put(&kv_path(&long_bin), b"too long");
    assert!(r.status == 414 || r.status == 413, "{r:?}");
    still_serving(&s);
}

#[test]
fn value_of_1_mib_is_accepted_and_one_more_byte_is_413() {
    let s = Server::start();
    let value: Vec<u8> = (0..VALUE_MAX).map(|i| (i % 251) as u8).collect();
    s.put_kv(b"big", &value);
    let r = s.get("/v1/kv/big");
    r.expect(200);
    assert!(
        r.body == value,
        "1 MiB value came back different ({} bytes)",
        r.body.len()
    );

    let over = vec![b'x'; VALUE_MAX + 1];
    s.put("/v1/kv/too-big", &over)
        .expect_error(413, Some("too_large"));
    s.get("/v1/kv/too-big").expect_error(404, Some("not_found"));
    still_serving(&s);
}

#[test]
fn body_over_1_5_mib_is_413() {
    let s = Server::start();
    let huge = vec![b'y'; 2 << 20];
    let r = s.put("/v1/kv/huge", &huge);
    assert_eq!(r.status, 413, "{r:?}");
    still_serving(&s);

    // A batch body of ~1.6 MiB, made of values each under the value limit.
    let ops: Vec<_> = (0..4)
        .map(|i| op_put(format!("b{i}").as_bytes(), &vec![b'z'; 300 << 10]))
        .collect();
    let r = batch(&s, ops);
    assert_eq!(r.status, 413, "a 1.6 MiB batch body: {r:?}");
    s.get("/v1/kv/b0").expect_error(404, Some("not_found"));
    still_serving(&s);

    // A declared Content-Length of 100 MiB, of which 2 MiB is sent: the node must answer 413
    // once it has seen more than 1.5 MiB (or at once), not wait for the other 98 MiB.
    let r = s.request(
        "PUT",
        "/v1/kv/declared",
        &[("Content-Length", "104857600")],
        &vec![b'd'; 2 << 20],
    );
    assert_eq!(r.status, 413, "Content-Length: 100 MiB, 2 MiB sent: {r:?}");
    still_serving(&s);

    // A chunked body (no Content-Length) of 2 MiB.
    let mut chunked = Vec::new();
    for _ in 0..32 {
        chunked.extend_from_slice(b"10000\r\n");
        chunked.extend_from_slice(&vec![b'c'; 0x10000]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = s.request(
        "PUT",
        "/v1/kv/chunked",
        &[("Transfer-Encoding", "chunked")],
        &chunked,
    );
    assert_eq!(r.status, 413, "a 2 MiB chunked body: {r:?}");
    s.get("/v1/kv/chunked").expect_error(404, Some("not_found"));
    still_serving(&s);
}

#[test]
fn small_chunked_body_is_accepted() {
    let s = Server::start();
    let r = s.request(
        "PUT",
        "/v1/kv/chunked",
        &[("Transfer-Encoding", "chunked")],
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    r.expect(200);
    let g = s.get("/v1/kv/chunked");
    g.expect(200);
    assert_eq!(g.body, b"hello world", "{g:?}");
}

#[test]
fn oversized_value_or_key_inside_a_batch_rejects_the_batch() {
    let s = Server::start();
    // Body ~1.33 MiB (under the body limit), one value of 1 MiB + 1.
    let ops = vec![
        op_put(b"ok", b"small"),
        op_put(b"over", &vec![b'v'; VALUE_MAX + 1]),
    ];
    batch(&s, ops).expect_error(413, Some("too_large"));
    s.get("/v1/kv/ok").expect_error(404, Some("not_found"));

    let ops = vec![
        op_put(b"ok", b"small"),
        serde_json::json!({"op": "put", "key": b64(vec![b'k'; KEY_MAX + 1]), "value": "eA=="}),
    ];
    let r = batch(&s, ops);
    assert!(
        r.status == 413 || r.status == 400,
        "a batch with an 8 KiB + 1 key must be rejected with 413 (or 400): {r:?}"
    );
    s.get("/v1/kv/ok").expect_error(404, Some("not_found"));
    still_serving(&s);
}

#[test]
fn bad_percent_encoding_is_400() {
    let s = Server::start();
    for (method, target) in [
        ("GET", "/v1/kv/%zz"),
        ("PUT", "/v1/kv/a%zzb"),
        ("DELETE", "/v1/kv/%G0"),
        ("GET", "/v1/kv/abc%"),
        ("GET", "/v1/kv/abc%4"),
        ("GET", "/v1/kv?prefix=%zz"),
        ("GET", "/v1/kv?start=%zz&end=b"),
    ] {
        let r = s.request(method, target, &[], b"v");
        r.expect_error(400, None);
    }
    s.get("/v1/kv/a%zzb").expect(400);
    still_serving(&s);
}

#[test]
fn malformed_scan_parameters_are_400() {
    let s = Server::start();
    for target in [
        "/v1/kv?prefix=a&limit=abc",
        "/v1/kv?prefix=a&limit=-1",
        "/v1/kv?prefix=a&continuation=%%%",
    ] {
        let r = s.get(target);
        assert_eq!(r.status, 400, "{r:?}");
    }
    still_serving(&s);
}

#[test]
fn wrong_methods_are_405() {
    let s = Server::start();
    for (method, target) in [
        ("PATCH", "/v1/kv/x"),
        ("POST", "/v1/kv/x"),
        ("GET", "/add/"),
        ("GET", "/v1/batch"),
        ("DELETE", "/v1/batch"),
        ("PUT", "/v1/kv"),
    ] {
        let r = s.request(method, target, &[], b"");
        assert_eq!(r.status, 405, "{r:?}");
    }
    still_serving(&s);
}

#[test]
fn unknown_route_is_404_and_the_empty_key_is_consistent() {
    let s = Server::start();
    let r = s.get("/no/such/route");
    assert_eq!(r.status, 404, "{r:?}");
    // The contract does not say whether the empty key is a key; either way, be consistent.
    let r = s.put("/v1/kv/", b"nameless");
    if r.status == 200 {
        let g = s.get("/v1/kv/");
        g.expect(200);
        assert_eq!(
            g.body, b"nameless",
            "the empty key was accepted but reads back: {g:?}"
        );
        s.delete("/v1/kv/").expect(204);
        s.get("/v1/kv/").expect_error(404, Some("not_found"));
    } else {
        assert!(
            (400..500).contains(&r.status),
            "PUT with an empty key must be 200 or a 4xx: {r:?}"
        );
    }
    still_serving(&s);
}

#[test]
fn many_rejections_in_a_row_do_not_hurt_the_node() {
    let s = Server::start();
    let over = vec![b'x'; VALUE_MAX + 1];
    for i in 0..20 {
        match i % 4 {
            0 => assert_eq!(s.put("/v1/kv/x", &over).status, 413),
            1 => assert_eq!(s.get("/v1/kv/%zz").status, 400),
            2 => assert_eq!(s.post("/v1/batch", b"nope").status, 400),
            _ => assert_eq!(s.request("PATCH", "/v1/kv/x", &[], b"").status, 405),
        }
    }
    still_serving(&s);
}

/// (method, target, headers, body)
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, Vec<u8>);

#[test]
fn odd_requests_never_get_a_5xx() {
    let s = Server::start();
    s.put_kv(b"x", b"v");
    let cases: Vec<Case> = vec![
        ("GET", "/v1/kv/x?unknown=1", vec![], vec![]),
        ("GET", "/v1/kv?limit=0&prefix=x", vec![], vec![]),
        ("GET", "/v1/kv?limit=99999999999999999999", vec![], vec![]),
        ("GET", "/v1/kv?prefix=a&start=b", vec![], vec![]),
        ("GET", "/v1/kv?start=z&end=a", vec![], vec![]),
        ("GET", "/v1/kv?continuation=not-a-token", vec![], vec![]),
        (
            "PUT",
            "/v1/kv/x",
            vec![("If-Match", "garbage")],
            b"v".to_vec(),
        ),
        (
            "PUT",
            "/v1/kv/x",
            vec![("If-Match", "\"-1\"")],
            b"v".to_vec(),
        ),
        (
            "PUT",
            "/v1/kv/x",
            vec![("If-Match", "\"99999999999999999999999\"")],
            b"v".to_vec(),
        ),
        (
            "PUT",
            "/v1/kv/x",
            vec![("If-None-Match", "\"3\"")],
            b"v".to_vec(),
        ),
        ("DELETE", "/v1/kv/x", vec![("If-Match", "")], vec![]),
        ("POST", "/v1/batch", vec![], b"{\"ops\": []}".to_vec()),
        ("POST", "/v1/batch", vec![], b"{\"ops\": null}".to_vec()),
        ("POST", "/v1/batch", vec![], b"\xFF\xFE not utf-8".to_vec()),
        ("POST", "/v1/batch", vec![], "[".repeat(10_000).into_bytes()),
        (
            "POST",
            "/v1/batch",
            vec![],
            b"{\"ops\": [{\"op\": \"delete\", \"key\": \"\"}]}".to_vec(),
        ),
        (
            "POST",
            "/add/",
            vec![],
            b"{\"key\": \"\", \"value\": \"\"}".to_vec(),
        ),
        ("POST", "/add/", vec![], b"\xFF\xFE".to_vec()),
        ("GET", "/get/?key=", vec![], vec![]),
        ("GET", "/get/?key=a&key=b", vec![], vec![]),
        ("POST", "/delete/?key=", vec![], vec![]),
        ("GET", "/v1/status?x=%zz", vec![], vec![]),
        ("GET", "/%zz", vec![], vec![]),
        ("GET", "/v1/kv/x/../y", vec![], vec![]),
    ];
    for (method, target, headers, body) in cases {
        let r = s.request(method, target, &headers, &body);
        assert!(
            r.status < 500,
            "a 5xx for a client's mistake (headers {headers:?}, body {:?}): {r:?}",
            String::from_utf8_lossy(&body[..body.len().min(60)])
        );
    }
    still_serving(&s);
}
