#![no_main]
//! The query of `GET /v1/kv` through `parse_scan_query`. Never panics; `limit` is positive
//! (100 by default); the continuation token and prefix range are consistent; the parameters
//! spelled canonically give the same scan.
//! The properties are in `src/http.rs` (shared with `net/tests/fuzz_corpus.rs`).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    corecache_fuzz::http::check_scan_query(data);
});
