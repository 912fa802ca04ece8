#![no_main]
//! Structured round trip: arbitrary keys and values (or deletes) written into a fresh `Db` on a
//! `SimDisk`, with small, fuzzed table settings; then `flush()` and `compact()`, and every `get`
//! and a full scan compared against a `BTreeMap` (the last write of a key wins; deleted keys are
//! absent). Checked also after the flush and before the compaction, and after a reopen.
use std::collections::BTreeSet;

use arbitrary::Arbitrary;
use corecache_core::{SimDisk, SyncMode, WriteBatch};
use corecache_fuzz::{check, manual_options, open, write, Model};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Entry {
    key: Vec<u8>,
    /// `None` = delete.
    value: Option<Vec<u8>>,
    /// Freeze and flush the memtable after this entry (more, smaller tables).
    flush_after: bool,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Data block target: 64 + (block % 512) bytes.
    block: u16,
    /// Bloom filter bits per key: 1 + (bloom % 32).
    bloom: u8,
    /// Memtable size: 1024 + (memtable % 8192) bytes.
    memtable: u16,
    /// Compaction output files are cut at 1024 + (table % 8192) bytes.
    table: u16,
    /// Write entries in batches of 1 + (batch % 8).
    batch: u8,
    entries: Vec<Entry>,
}

fuzz_target!(|input: Input| {
    let mut opts = manual_options(SyncMode::None);
    opts.block_bytes = 64 + (input.block as usize % 512);
    opts.bloom_bits_per_key = 1 + (input.bloom as u32 % 32);
    opts.memtable_bytes = 1024 + (input.memtable as usize % 8192);
    opts.table_bytes = 1024 + (input.table as u64 % 8192);
    opts.validate().expect("fuzzed options are valid");
    let per_batch = 1 + (input.batch as usize % 8);

    let disk = SimDisk::new();
    let db = open(&disk, &opts);
    let mut model = Model::new();
    let mut probe = BTreeSet::new();

    for chunk in input.entries.chunks(per_batch) {
        let mut b = WriteBatch::new();
        let mut flush = false;
        for e in chunk {
            probe.insert(e.key.clone());
            match &e.value {
                Some(v) => {
                    b.put(e.key.clone(), v.clone());
                    model.insert(e.key.clone(), v.clone());
                }
                None => {
                    b.delete(e.key.clone());
                    model.remove(&e.key);
                }
            }
            flush |= e.flush_after;
        }
        write(&db, &b);
        if flush {
            db.flush().expect("flush");
        }
    }
    let probe: Vec<Vec<u8>> = probe.into_iter().collect();
    check(&db, &model, &probe, "after the writes");
    db.flush().expect("flush");
    check(&db, &model, &probe, "after flush");
    db.compact().expect("compact");
    check(&db, &model, &probe, "after compact");
    db.close().expect("close");
    let db = open(&disk, &opts);
    check(&db, &model, &probe, "after reopen");
});
