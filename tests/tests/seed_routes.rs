//! The prototype's routes: `POST /add/`, `GET /get/?key=`, `POST /delete/?key=`.

use corecache_e2e::{pct, Response, Server};

fn add(s: &Server, key: &str, value: &str) -> Response {
    let body = serde_json::json!({"key": key, "value": value}).to_string();
    s.post("/add/", body.as_bytes())
}

#[track_caller]
fn check_record(r: &Response, key: &str, value: &str) {
    r.expect(200);
    let j = r.json();
    assert_eq!(j["key"].as_str(), Some(key), "{r:?}");
    assert_eq!(j["value"].as_str(), Some(value), "{r:?}");
    assert!(
        j["timestamp"].is_number() || j["timestamp"].is_string(),
        "timestamp must be a number or a string: {r:?}"
    );
    assert_eq!(j["deleted"].as_bool(), Some(false), "{r:?}");
}

#[test]
fn add_then_get() {
    let s = Server::start();
    add(&s, "k", "v").expect(200);
    check_record(&s.get("/get/?key=k"), "k", "v");
    // Overwrite.
    add(&s, "k", "v2").expect(200);
    check_record(&s.get("/get/?key=k"), "k", "v2");
}

#[test]
fn non_ascii_key_and_value() {
    let s = Server::start();
    let key = "héllo wörld/ü:1";
    let value = "välue ✓ with \"quotes\" and\nnewline";
    add(&s, key, value).expect(200);
    let r = s.get(&format!("/get/?key={}", pct(key)));
    check_record(&r, key, value);
}

#[test]
fn get_missing_is_404() {
    let s = Server::start();
    let r = s.get("/get/?key=missing");
    assert_eq!(r.status, 404, "{r:?}");
}

#[test]
fn delete_then_get_is_404_and_delete_again_is_404() {
    let s = Server::start();
    add(&s, "k", "v").expect(200);
    let r = s.post("/delete/?key=k", b"");
    r.expect(200);
    let g = s.get("/get/?key=k");
    assert_eq!(g.status, 404, "a deleted key must read as missing: {g:?}");
    let again = s.post("/delete/?key=k", b"");
    assert_eq!(again.status, 404, "deleting a deleted key: {again:?}");
    let never = s.post("/delete/?key=never-added", b"");
    assert_eq!(never.status, 404, "deleting a key never added: {never:?}");
}

#[test]
fn malformed_seed_requests_are_400_never_500() {
    let s = Server::start();
    let cases: Vec<(&str, &str, &[u8])> = vec![
        ("POST", "/add/", b"{not json"),
        ("POST", "/add/", b""),
        ("POST", "/add/", b"{\"key\": \"k\"}"),
        ("POST", "/add/", b"{\"key\": 5, \"value\": \"v\"}"),
        ("GET", "/get/", b""),
        ("GET", "/get/?key=%zz", b""),
        ("POST", "/delete/", b""),
    ];
    for (method, target, body) in cases {
        let r = s.request(
            method,
            target,
            &[("Content-Type", "application/json")],
            body,
        );
        assert_eq!(
            r.status,
            400,
            "body {:?}: {r:?}",
            String::from_utf8_lossy(body)
        );
    }
    // Still serving.
    add(&s, "k", "v").expect(200);
    check_record(&s.get("/get/?key=k"), "k", "v");
}

#[test]
fn wrong_methods_on_seed_routes_are_405() {
    let s = Server::start();
    for (method, target) in [
        ("GET", "/add/"),
        ("PUT", "/add/"),
        ("POST", "/get/?key=k"),
        ("GET", "/delete/?key=k"),
    ] {
        let r = s.request(method, target, &[], b"");
        assert_eq!(r.status, 405, "{r:?}");
    }
}
