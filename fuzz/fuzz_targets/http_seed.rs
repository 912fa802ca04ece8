#![no_main]
//! The prototype routes: `POST /add/` JSON bodies (`parse_seed_add`) and the `?key=` query of
//! `GET /get/` and `POST /delete/` (`seed_query_key`). Never panics; the limit holds; what
//! parses, written back out, parses the same.
//! The properties are in `src/http.rs` (shared with `net/tests/fuzz_corpus.rs`).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    corecache_fuzz::http::check_seed(data);
});
