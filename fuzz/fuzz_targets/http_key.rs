#![no_main]
//! The raw path of `/v1/kv/{key}` through `decode_key_path`: `[flags, max_lo, max_hi,
//! path...]`. Never panics; agrees with a reference decoder; a decoded key is within the limit
//! and decodes again, unchanged, from its every-byte-escaped spelling.
//! The properties are in `src/http.rs` (shared with `net/tests/fuzz_corpus.rs`).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    corecache_fuzz::http::check_key_path(data);
});
