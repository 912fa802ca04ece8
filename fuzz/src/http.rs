//! Properties of the HTTP request decoders in `corecache_net::http`, shared by the `http_*` fuzz
//! targets and by `net/tests/fuzz_corpus.rs` (which includes this file with `#[path]` and replays
//! the checked-in inputs through it, so it may use only `corecache_core`, `corecache_net`,
//! `base64` and `serde_json`). Each `check_*` takes the raw fuzzer input and panics when a
//! property fails; an input the decoder refuses is fine, a panic inside the decoder is not.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use corecache_core::proto::{BatchOp, Request};
use corecache_net::http::{
    decode_key_path, parse_batch_body, parse_scan_query, parse_seed_add, percent_decode,
    query_params, seed_query_key, KeyError,
};

/// `%XX` for every byte (`upper`: hex digits `A-F`, else `a-f`).
pub fn encode_all(bytes: &[u8], upper: bool) -> String {
    bytes
        .iter()
        .map(|b| {
            if upper {
                format!("%{b:02X}")
            } else {
                format!("%{b:02x}")
            }
        })
        .collect()
}

/// A plain reference for `percent_decode(s, false)`: `%` must be followed by two ASCII hex
/// digits (and nothing else: no sign, no space); every other byte stands for itself.
fn reference_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = *b.get(i + 1)?;
            let l = *b.get(i + 2)?;
            if !h.is_ascii_hexdigit() || !l.is_ascii_hexdigit() {
                return None;
            }
            let s = std::str::from_utf8(&b[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(s, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Splits `data` into a flags byte, a 16-bit little-endian limit and the rest as text (lossy
/// UTF-8: a request path or query is always text by the time the router sees it).
fn header(data: &[u8]) -> (u8, usize, String) {
    let flags = data.first().copied().unwrap_or(0);
    let max = match data.get(1..3) {
        Some(m) => u16::from_le_bytes([m[0], m[1]]) as usize,
        None => 8192,
    };
    let rest = data.get(3..).unwrap_or_default();
    (flags, max, String::from_utf8_lossy(rest).into_owned())
}

/// `http_key`: `[flags, max_lo, max_hi, raw path...]` through `decode_key_path(raw, max)`.
pub fn check_key_path(data: &[u8]) {
    let (flags, max, raw) = header(data);
    let upper = flags & 1 == 1;
    let full = percent_decode(&raw, false);
    assert_eq!(
        full.as_ref().ok(),
        reference_decode(&raw).as_ref(),
        "percent_decode disagrees with the reference on {raw:?}"
    );
    match decode_key_path(&raw, max) {
        Ok(key) => {
            assert_eq!(Some(&key), full.as_ref().ok());
            assert!(
                key.len() <= max,
                "{} bytes over the {max}-byte limit",
                key.len()
            );
            assert!(key.len() <= raw.len(), "decoding made the key longer");
            // Any key the server accepts, spelled with every byte escaped, comes back the same.
            let enc = encode_all(&key, upper);
            assert_eq!(decode_key_path(&enc, max), Ok(key.clone()));
            assert_eq!(decode_key_path(&enc, usize::MAX), Ok(key));
        }
        Err(KeyError::TooLong { len, max: m }) => {
            assert_eq!(m, max);
            assert!(len > max);
            assert_eq!(full.as_ref().map(Vec::len).ok(), Some(len));
        }
        Err(KeyError::Malformed(_)) => {
            assert!(full.is_err());
            assert!(raw.contains('%'), "refused {raw:?}, which has no escape");
        }
    }
    if !raw.contains('%') {
        assert_eq!(full.as_deref().ok(), Some(raw.as_bytes()));
    }
    // In queries `+` is a space: the same as a path decode with every literal `+` spelled `%20`.
    assert_eq!(
        percent_decode(&raw, true).ok(),
        percent_decode(&raw.replace('+', "%20"), false).ok()
    );
}

/// The query `params` spelled canonically: names and values with every byte escaped.
fn canonical_query(params: &[(String, Vec<u8>)], upper: bool) -> String {
    params
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                encode_all(k.as_bytes(), upper),
                encode_all(v, upper)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// `http_scan`: the whole input as the query of `GET /v1/kv`.
pub fn check_scan_query(data: &[u8]) {
    let q = String::from_utf8_lossy(data);
    let parsed = parse_scan_query(Some(&q));
    let Ok(params) = query_params(Some(&q)) else {
        assert!(parsed.is_err(), "a malformed query parsed: {q:?}");
        return;
    };
    // The same parameters spelled differently ask for the same scan (or fail the same way).
    let canon = canonical_query(&params, data.len() & 1 == 0);
    assert_eq!(query_params(Some(&canon)).as_ref(), Ok(&params));
    assert_eq!(parse_scan_query(Some(&canon)), parsed);
    let has = |name: &str| params.iter().any(|(k, _)| k == name);
    let first = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let Ok(request) = parsed else {
        return;
    };
    let Request::Scan {
        start,
        end,
        after,
        limit,
    } = request
    else {
        panic!("a scan query gave a non-scan request: {request:?}");
    };
    assert!(limit >= 1);
    if !has("limit") {
        assert_eq!(limit, 100);
    }
    assert!(!(has("prefix") && has("start")));
    match first("continuation") {
        None => assert_eq!(after, None),
        Some(token) => {
            let after = after.unwrap_or_else(|| panic!("continuation {token:?} dropped"));
            assert_eq!(
                URL_SAFE_NO_PAD.decode(URL_SAFE_NO_PAD.encode(&after)).ok(),
                Some(after)
            );
        }
    }
    if let Some(prefix) = first("prefix") {
        // [start, end) holds exactly the keys that start with the prefix.
        assert_eq!(start, prefix);
        match end {
            None => assert!(prefix.iter().all(|b| *b == 0xff)),
            Some(e) => {
                assert!(
                    e > prefix && !e.starts_with(&prefix),
                    "end {e:?} for {prefix:?}"
                );
                let mut longest = prefix.clone();
                longest.extend_from_slice(&[0xff; 8]);
                assert!(longest < e);
            }
        }
    } else {
        assert_eq!(start, first("start").unwrap_or_default());
        assert_eq!(end, first("end"));
    }
}

/// `http_batch`: the whole input as the body of `POST /v1/batch`.
pub fn check_batch_body(data: &[u8]) {
    let Ok(ops) = parse_batch_body(data) else {
        return;
    };
    // The shortest op, `{"op":"delete","key":""}`, and its comma take 25 bytes: the body limit
    // bounds the number of ops, and the decoded keys and values (base64 only shrinks).
    assert!(
        ops.len() * 25 <= data.len() + 1,
        "{} ops from {} bytes",
        ops.len(),
        data.len()
    );
    let decoded: usize = ops
        .iter()
        .map(|op| match op {
            BatchOp::Put(k, v) | BatchOp::PutIfAbsent(k, v) => k.len() + v.len(),
            BatchOp::Delete(k) => k.len(),
        })
        .sum();
    assert!(decoded <= data.len());
    // The ops, written back out as a client would, parse to the same ops.
    let json: Vec<serde_json::Value> = ops
        .iter()
        .map(|op| match op {
            BatchOp::Put(k, v) => serde_json::json!({
                "op": "put", "key": STANDARD.encode(k), "value": STANDARD.encode(v)
            }),
            BatchOp::Delete(k) => serde_json::json!({"op": "delete", "key": STANDARD.encode(k)}),
            BatchOp::PutIfAbsent(..) => unreachable!("the HTTP batch has no put-if-absent op"),
        })
        .collect();
    let body = serde_json::json!({ "ops": json }).to_string();
    assert_eq!(parse_batch_body(body.as_bytes()), Ok(ops));
}

/// `http_seed`: `[flags, max_lo, max_hi, rest...]`; an even `flags` makes `rest` the JSON body
/// of `POST /add/`, an odd one the query of `GET /get/` and `POST /delete/` (limit `max`).
pub fn check_seed(data: &[u8]) {
    let (flags, max, rest) = header(data);
    if flags & 1 == 0 {
        let body = data.get(3..).unwrap_or_default();
        let Ok((key, value)) = parse_seed_add(body) else {
            return;
        };
        // JSON escapes only lengthen a string.
        assert!(key.len() + value.len() <= body.len());
        let again = serde_json::json!({"key": key, "value": value}).to_string();
        assert_eq!(parse_seed_add(again.as_bytes()), Ok((key, value)));
        return;
    }
    let params = query_params(Some(&rest));
    let first_key = params
        .as_ref()
        .ok()
        .and_then(|p| p.iter().find(|(k, _)| k == "key").map(|(_, v)| v.clone()));
    match seed_query_key(Some(&rest), max) {
        Ok(key) => {
            assert!(key.len() <= max);
            assert_eq!(Some(&key), first_key.as_ref());
            let q = format!("key={}", encode_all(&key, flags & 2 == 2));
            assert_eq!(seed_query_key(Some(&q), max), Ok(key));
        }
        Err(KeyError::TooLong { len, max: m }) => {
            assert_eq!(m, max);
            assert!(len > max);
            assert_eq!(first_key.map(|k| k.len()), Some(len));
        }
        Err(KeyError::Malformed(_)) => assert!(first_key.is_none()),
    }
}
