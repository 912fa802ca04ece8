#![no_main]
//! Like `manifest`, but with the checksums rewritten to match first (`fixcrc::manifest`), so mutations
//! reach the decoding behind the checks instead of stopping at a checksum mismatch.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.to_vec();
    corecache_fuzz::fixcrc::manifest(&mut bytes);
    let _ = corecache_core::engine::decode::manifest(&bytes);
});
