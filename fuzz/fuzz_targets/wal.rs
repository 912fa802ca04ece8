#![no_main]
//! Raw bytes replayed as a write-ahead log file.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = corecache_core::engine::decode::wal(data);
});
