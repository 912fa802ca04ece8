#![no_main]
//! Structured model test: a sequence of operations against a `Db` on a `SimDisk` with
//! `SyncMode::Always` and against a `BTreeMap`. Every write is acknowledged, so after a reopen
//! *or a crash* (`SimDisk::crash(seed)`: unsynced bytes and directory changes partly lost) the
//! engine must hold exactly the model. Checked (full scan + gets) after every step.
//! The logic follows `core/tests/model.rs` (the `Always` half).
use std::ops::Bound;

use arbitrary::Arbitrary;
use corecache_core::{SimDisk, SyncMode, WriteBatch};
use corecache_fuzz::{check, contents, manual_options, open, write, Model};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Operation {
    Put {
        key: u8,
        len: u16,
        fill: u8,
    },
    /// A put with raw fuzzer-chosen key and value bytes.
    PutRaw {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: u8,
    },
    Batch(Vec<(bool, u8, u16, u8)>),
    Get {
        key: u8,
    },
    Scan {
        a: u8,
        b: u8,
        limit: u8,
    },
    Flush,
    Compact,
    Background,
    Reopen,
    Crash(u64),
}

/// Keys from a small space, some sharing prefixes, so updates and deletes collide.
fn key(k: u8) -> Vec<u8> {
    let base = format!("k{:02}", k % 40);
    if k.is_multiple_of(5) {
        let mut b = base.into_bytes();
        b.truncate(2);
        b
    } else if k.is_multiple_of(7) {
        format!("{base}:{}", k % 3).into_bytes()
    } else {
        base.into_bytes()
    }
}

fn value(len: u16, fill: u8) -> Vec<u8> {
    (0..len % 400).map(|i| fill.wrapping_add(i as u8)).collect()
}

const MAX_OPS: usize = 200;

fuzz_target!(|ops: Vec<Operation>| {
    let opts = manual_options(SyncMode::Always);
    let disk = SimDisk::new();
    let mut db = open(&disk, &opts);
    let mut model = Model::new();
    let probe: Vec<Vec<u8>> = (0..=255u8)
        .map(key)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();

    for (step, op) in ops.into_iter().take(MAX_OPS).enumerate() {
        let what = format!("step {step} ({op:?})");
        match op {
            Operation::Put { key: k, len, fill } => {
                let mut b = WriteBatch::new();
                b.put(key(k), value(len, fill));
                write(&db, &b);
                model.insert(key(k), value(len, fill));
            }
            Operation::PutRaw { key: k, value: v } => {
                let mut b = WriteBatch::new();
                b.put(k.clone(), v.clone());
                write(&db, &b);
                model.insert(k, v);
            }
            Operation::Delete { key: k } => {
                let mut b = WriteBatch::new();
                b.delete(key(k));
                write(&db, &b);
                model.remove(&key(k));
            }
            Operation::Batch(items) => {
                if items.is_empty() {
                    continue;
                }
                let mut b = WriteBatch::new();
                for (put, k, len, fill) in items.into_iter().take(16) {
                    if put {
                        b.put(key(k), value(len, fill));
                        model.insert(key(k), value(len, fill));
                    } else {
                        b.delete(key(k));
                        model.remove(&key(k));
                    }
                }
                write(&db, &b);
            }
            Operation::Get { key: k } => {
                let got = db.get(&key(k)).expect("get");
                assert_eq!(got.as_ref(), model.get(&key(k)), "{what}: get");
            }
            Operation::Scan { a, b, limit } => {
                let (lo, hi) = (key(a).min(key(b)), key(a).max(key(b)));
                let got: Vec<_> = db
                    .scan(Bound::Included(&lo), Bound::Excluded(&hi))
                    .expect("scan")
                    .take(limit as usize % 16)
                    .collect::<Result<_, _>>()
                    .expect("scan items");
                let want: Vec<_> = model
                    .range::<Vec<u8>, _>((Bound::Included(&lo), Bound::Excluded(&hi)))
                    .take(limit as usize % 16)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                assert_eq!(got, want, "{what}: range scan");
            }
            Operation::Flush => db.flush().expect("flush"),
            Operation::Compact => db.compact().expect("compact"),
            Operation::Background => {
                db.do_background_work().expect("background work");
            }
            Operation::Reopen => {
                db.close().expect("close");
                db = open(&disk, &opts);
            }
            Operation::Crash(seed) => {
                disk.crash(seed);
                drop(db);
                db = open(&disk, &opts);
                let got = contents(&db);
                assert!(
                    got == model,
                    "{what}: after the crash the engine does not hold every acknowledged \
                     write: got {got:?}, want {model:?}"
                );
            }
        }
        check(&db, &model, &probe, &what);
    }
});
