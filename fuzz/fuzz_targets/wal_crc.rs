#![no_main]
//! Like `wal`, but with the checksums rewritten to match first (`fixcrc::wal`), so mutations
//! reach the decoding behind the checks instead of stopping at a checksum mismatch.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.to_vec();
    corecache_fuzz::fixcrc::wal(&mut bytes);
    let _ = corecache_core::engine::decode::wal(&bytes);
});
