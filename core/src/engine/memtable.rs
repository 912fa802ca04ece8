//! The memtable: the newest writes, in memory, ordered by key.
//!
//! A `BTreeMap` from user key to that key's versions (newest last), behind a reader-writer lock.
//! Only the write leader inserts (one thread at a time), so the lock is uncontended between
//! writers; readers take it shared for a lookup or for one chunk of a scan. Several versions of
//! a key are kept so that a reader holding an older snapshot still sees the version it should.
//! A flush writes only the newest version of each key: a reader with an older snapshot keeps the
//! memtable itself alive, so it never needs the older versions from the table.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::RwLock;

use crate::engine::format::Kind;

/// Bookkeeping bytes per entry beyond its key and value: the entry's share of a B-tree node
/// (about 70 bytes at typical fill) plus two heap allocations' headers and rounding. Measured
/// against RSS so that `memtable_bytes` is close to the memory a memtable really takes.
const ENTRY_OVERHEAD: usize = 96;

#[derive(Debug)]
pub(crate) struct Version {
    pub seq: u64,
    pub kind: Kind,
    pub value: Box<[u8]>,
}

enum Versions {
    One(Version),
    Many(Vec<Version>),
}

impl Versions {
    fn visible(&self, snap: u64) -> Option<&Version> {
        match self {
            Versions::One(v) => (v.seq <= snap).then_some(v),
            Versions::Many(vs) => vs.iter().rev().find(|v| v.seq <= snap),
        }
    }
    fn newest(&self) -> &Version {
        match self {
            Versions::One(v) => v,
            Versions::Many(vs) => vs.last().expect("a Many holds at least two versions"),
        }
    }
}

/// One entry as the rest of the engine sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: Vec<u8>,
    pub seq: u64,
    pub kind: Kind,
    pub value: Vec<u8>,
}

pub(crate) struct Memtable {
    map: RwLock<BTreeMap<Box<[u8]>, Versions>>,
    bytes: AtomicUsize,
    max_seq: AtomicU64,
    /// The WAL file that logs this memtable's writes.
    pub wal_number: u64,
}

impl Memtable {
    pub fn new(wal_number: u64) -> Self {
        Memtable {
            map: RwLock::new(BTreeMap::new()),
            bytes: AtomicUsize::new(0),
            max_seq: AtomicU64::new(0),
            wal_number,
        }
    }

    /// Inserts a version, taking ownership of the key and value bytes.
    pub fn insert(&self, key: Vec<u8>, seq: u64, kind: Kind, value: Vec<u8>) {
        let bytes = key.len() + value.len() + ENTRY_OVERHEAD;
        let version = Version {
            seq,
            kind,
            value: value.into_boxed_slice(),
        };
        let mut map = self.map.write();
        match map.entry(key.into_boxed_slice()) {
            std::collections::btree_map::Entry::Occupied(mut e) => match e.get_mut() {
                vs @ Versions::One(_) => {
                    let Versions::One(old) = std::mem::replace(vs, Versions::Many(Vec::new()))
                    else {
                        unreachable!("matched One above");
                    };
                    *vs = Versions::Many(vec![old, version]);
                }
                Versions::Many(list) => list.push(version),
            },
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(Versions::One(version));
            }
        }
        drop(map);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.max_seq.fetch_max(seq, Ordering::Relaxed);
    }

    /// The newest version of `key` with `seq <= snap`.
    pub fn get(&self, key: &[u8], snap: u64) -> Option<(u64, Kind, Vec<u8>)> {
        let map = self.map.read();
        let v = map.get(key)?.visible(snap)?;
        Some((v.seq, v.kind, v.value.to_vec()))
    }

    /// Up to `max` entries (newest visible version of each key, tombstones included) with keys
    /// after `after` (or from `start`) and before `end`.
    pub fn chunk(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        snap: u64,
        max: usize,
    ) -> Vec<Entry> {
        let map = self.map.read();
        let mut out = Vec::new();
        for (k, vs) in map.range::<[u8], _>((start, end)) {
            if let Some(v) = vs.visible(snap) {
                out.push(Entry {
                    key: k.to_vec(),
                    seq: v.seq,
                    kind: v.kind,
                    value: v.value.to_vec(),
                });
                if out.len() >= max {
                    break;
                }
            }
        }
        out
    }

    /// Calls `f` on the newest version of every key, in key order (for a flush).
    pub fn for_each_newest(
        &self,
        mut f: impl FnMut(&[u8], u64, Kind, &[u8]) -> crate::Result<()>,
    ) -> crate::Result<()> {
        let map = self.map.read();
        for (k, vs) in map.iter() {
            let v = vs.newest();
            f(k, v.seq, v.kind, &v.value)?;
        }
        Ok(())
    }

    pub fn approximate_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.map.read().is_empty()
    }

    pub fn max_seq(&self) -> u64 {
        self.max_seq.load(Ordering::Relaxed)
    }
}
