#![no_main]
//! The body of `POST /v1/batch` through `parse_batch_body`. Never panics; the ops and their
//! decoded bytes are bounded by the body size; the ops written back out parse the same.
//! The properties are in `src/http.rs` (shared with `net/tests/fuzz_corpus.rs`).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    corecache_fuzz::http::check_batch_body(data);
});
