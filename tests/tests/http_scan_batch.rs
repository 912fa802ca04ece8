//! `GET /v1/kv?prefix=…|start=…&end=…` with pagination, and `POST /v1/batch`.

use std::collections::HashMap;

use corecache_e2e::{batch, op_delete, op_put, parse_page, pct, scan_all, Item, Server};

fn keys(items: &[Item]) -> Vec<String> {
    items
        .iter()
        .map(|i| String::from_utf8_lossy(&i.key).into_owned())
        .collect()
}

#[test]
fn prefix_scan_returns_matching_keys_in_order_with_values_and_versions() {
    let s = Server::start();
    let mut versions = HashMap::new();
    // Written out of order; neighbours of the prefix on both sides.
    for k in [
        "user/c", "user/a", "users", "user", "usea", "user/b/x", "zzz", "user/b",
    ] {
        let v = s.put_kv(k.as_bytes(), format!("v-{k}").as_bytes());
        versions.insert(k.to_string(), v);
    }
    let r = s.get("/v1/kv?prefix=user%2F");
    let (items, cont) = parse_page(&r);
    assert_eq!(
        keys(&items),
        ["user/a", "user/b", "user/b/x", "user/c"],
        "{r:?}"
    );
    assert_eq!(
        cont, None,
        "everything fit in one page, yet a continuation: {r:?}"
    );
    for it in &items {
        let k = String::from_utf8_lossy(&it.key).into_owned();
        assert_eq!(it.value, format!("v-{k}").as_bytes(), "{r:?}");
        assert_eq!(Some(&it.version), versions.get(&k), "version of {k}: {r:?}");
    }
    // Prefix "user" takes "user" itself and "users".
    let r = s.get("/v1/kv?prefix=user");
    let (items, _) = parse_page(&r);
    assert_eq!(
        keys(&items),
        ["user", "user/a", "user/b", "user/b/x", "user/c", "users"],
        "{r:?}"
    );
}

#[test]
fn range_scan_is_start_inclusive_end_exclusive() {
    let s = Server::start();
    for i in 0..10 {
        s.put_kv(format!("k{i:02}").as_bytes(), b"v");
    }
    let r = s.get("/v1/kv?start=k03&end=k07");
    let (items, cont) = parse_page(&r);
    assert_eq!(keys(&items), ["k03", "k04", "k05", "k06"], "{r:?}");
    assert_eq!(cont, None, "{r:?}");
    // Bounds that are not keys themselves.
    let r = s.get("/v1/kv?start=k025&end=k055");
    let (items, _) = parse_page(&r);
    assert_eq!(keys(&items), ["k03", "k04", "k05"], "{r:?}");
    // Empty range.
    let r = s.get("/v1/kv?start=k05&end=k05");
    let (items, _) = parse_page(&r);
    assert!(items.is_empty(), "start == end must be empty: {r:?}");
}

#[test]
fn prefix_pagination_limit_3_over_10_keys_yields_each_once_in_order() {
    let s = Server::start();
    // Other keys around the prefix must not leak in.
    s.put_kv(b"p", b"before");
    s.put_kv(b"q", b"after");
    let mut expected = Vec::new();
    for i in (0..10).rev() {
        let k = format!("p/{i}");
        s.put_kv(k.as_bytes(), k.as_bytes());
        expected.push(k);
    }
    expected.sort();
    let pages = scan_all(&s, "prefix=p%2F&limit=3", 10);
    for (n, p) in pages.iter().enumerate() {
        assert!(
            p.len() <= 3,
            "page {n} has more than limit=3 items: {pages:?}"
        );
    }
    let all: Vec<Item> = pages.iter().flatten().cloned().collect();
    assert_eq!(keys(&all), expected, "pages: {pages:?}");
    for it in &all {
        assert_eq!(it.key, it.value, "{it:?}");
    }
    assert!(
        pages.len() >= 4,
        "10 keys at 3 per page need at least 4 pages: {pages:?}"
    );
}

#[test]
fn range_pagination_with_limit() {
    let s = Server::start();
    for i in 0..20 {
        s.put_kv(format!("r{i:02}").as_bytes(), b"v");
    }
    let pages = scan_all(&s, "start=r05&end=r15&limit=3", 10);
    let all: Vec<Item> = pages.iter().flatten().cloned().collect();
    let expected: Vec<String> = (5..15).map(|i| format!("r{i:02}")).collect();
    assert_eq!(keys(&all), expected, "pages: {pages:?}");
    assert!(pages.iter().all(|p| p.len() <= 3), "{pages:?}");
}

#[test]
fn scan_skips_deleted_keys_and_sees_new_values() {
    let s = Server::start();
    for k in ["d/1", "d/2", "d/3", "d/4"] {
        s.put_kv(k.as_bytes(), b"old");
    }
    s.delete("/v1/kv/d%2F2").expect(204);
    let v = s.put_kv(b"d/3", b"new");
    let r = s.get("/v1/kv?prefix=d%2F");
    let (items, _) = parse_page(&r);
    assert_eq!(keys(&items), ["d/1", "d/3", "d/4"], "{r:?}");
    assert_eq!(items[1].value, b"new", "{r:?}");
    assert_eq!(items[1].version, v, "{r:?}");
}

#[test]
fn scan_with_binary_prefix_and_bounds() {
    let s = Server::start();
    let ks: [&[u8]; 5] = [b"\xFE\xFF", b"\xFF", b"\xFF\x00\x2F", b"\xFF\x01", b"\x00"];
    for k in ks {
        s.put_kv(k, k);
    }
    let r = s.get(&format!("/v1/kv?prefix={}", pct(b"\xFF")));
    let (items, _) = parse_page(&r);
    let got: Vec<Vec<u8>> = items.iter().map(|i| i.key.clone()).collect();
    assert_eq!(
        got,
        vec![
            b"\xFF".to_vec(),
            b"\xFF\x00\x2F".to_vec(),
            b"\xFF\x01".to_vec()
        ],
        "{r:?}"
    );
    let r = s.get(&format!(
        "/v1/kv?start={}&end={}",
        pct(b"\x00"),
        pct(b"\xFF")
    ));
    let (items, _) = parse_page(&r);
    let got: Vec<Vec<u8>> = items.iter().map(|i| i.key.clone()).collect();
    assert_eq!(got, vec![b"\x00".to_vec(), b"\xFE\xFF".to_vec()], "{r:?}");
}

#[test]
fn batch_applies_puts_and_deletes_with_consecutive_versions() {
    let s = Server::start();
    let before = s.put_kv(b"c", b"to delete");
    s.put_kv(b"a", b"old a");
    let r = batch(
        &s,
        vec![
            op_put(b"a", b"new a"),
            op_put(b"b\xFF\x00", b"\x00\x01binary"),
            op_delete(b"c"),
        ],
    );
    r.expect(200);
    let n = r.json_version();
    assert!(
        n > before,
        "batch version {n} not above an earlier write's {before}: {r:?}"
    );
    // Each op has its own version, consecutive in op order; `version` is the last one.
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("batch reply JSON");
    let versions: Vec<u64> = v["versions"]
        .as_array()
        .expect("versions array")
        .iter()
        .map(|x| x.as_u64().expect("version number"))
        .collect();
    assert_eq!(versions, vec![n - 2, n - 1, n], "{r:?}");
    let a = s.get("/v1/kv/a");
    a.expect(200);
    assert_eq!(a.body, b"new a", "{a:?}");
    assert_eq!(a.etag_version(), versions[0], "{a:?}");
    let b = s.get("/v1/kv/b%FF%00");
    b.expect(200);
    assert_eq!(b.body, b"\x00\x01binary", "{b:?}");
    assert_eq!(b.etag_version(), versions[1], "{b:?}");
    s.get("/v1/kv/c").expect_error(404, Some("not_found"));
    let after = s.put_kv(b"z", b"z");
    assert!(
        after > n,
        "a put after the batch got {after}, not above {n}"
    );
}

#[test]
fn rejected_batches_apply_nothing() {
    let s = Server::start();
    s.put_kv(b"keep", b"original");
    let good_put = op_put(b"should-not-exist", b"x");
    let good_del = op_delete(b"keep");
    let cases: Vec<(&str, String)> = vec![
        ("not JSON", "{\"ops\": [".to_string()),
        ("JSON but not an object", "[1, 2, 3]".to_string()),
        ("no ops", "{}".to_string()),
        (
            "bad base64 key after a valid put",
            serde_json::json!({"ops": [good_put, {"op": "put", "key": "!!not base64!!", "value": "eA=="}]})
                .to_string(),
        ),
        (
            "bad base64 value after a valid delete",
            serde_json::json!({"ops": [good_del, {"op": "put", "key": "eA==", "value": "%%%"}]})
                .to_string(),
        ),
        (
            "unknown op after valid ops",
            serde_json::json!({"ops": [good_put, good_del, {"op": "increment", "key": "eA=="}]})
                .to_string(),
        ),
        (
            "put without a value",
            serde_json::json!({"ops": [good_put, {"op": "put", "key": "eA=="}]}).to_string(),
        ),
        (
            "key is a number",
            serde_json::json!({"ops": [good_del, {"op": "delete", "key": 42}]}).to_string(),
        ),
    ];
    for (what, body) in cases {
        let r = s.post("/v1/batch", body.as_bytes());
        assert_eq!(r.status, 400, "{what}: expected 400 for body {body}: {r:?}");
        r.expect_error(400, None);
        s.get("/v1/kv/should-not-exist")
            .expect_error(404, Some("not_found"));
        let keep = s.get("/v1/kv/keep");
        assert_eq!(
            (keep.status, keep.body.as_slice()),
            (200, b"original".as_slice()),
            "{what}: a rejected batch changed 'keep': {keep:?}"
        );
    }
}
