#![no_main]
//! Raw bytes opened as an SSTable: every entry read, every key looked up. Errors are fine; a
//! panic, a hang or a huge allocation is a bug.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = corecache_core::engine::decode::sstable(data);
});
