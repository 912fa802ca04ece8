#![no_main]
//! Raw bytes decoded as a MANIFEST.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = corecache_core::engine::decode::manifest(data);
});
