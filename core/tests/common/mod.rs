#![allow(dead_code)]

use std::ops::Bound;
use std::sync::Arc;

use corecache_core::{Background, Db, Options, SimDisk, StallPolicy};

/// Small sizes so that flushes and compactions happen within a few writes; nothing runs by
/// itself (the test drives background work).
pub fn manual_tiny() -> Options {
    Options {
        background: Background::Manual,
        stall: StallPolicy::Refuse,
        max_immutable_memtables: 64,
        l0_stop_writes: 64,
        ..Options::tiny()
    }
}

pub fn open_sim(disk: &SimDisk, opts: Options) -> Db {
    Db::open(Arc::new(disk.clone()), opts).expect("open")
}

pub fn all(db: &Db) -> Vec<(Vec<u8>, Vec<u8>)> {
    db.scan(Bound::Unbounded, Bound::Unbounded)
        .expect("scan")
        .collect::<Result<Vec<_>, _>>()
        .expect("scan items")
}

pub fn key(i: u32) -> Vec<u8> {
    format!("key{i:06}").into_bytes()
}
