//! Model-based test: random operations against the engine and against a `BTreeMap`, compared
//! after every step, with flushes, compactions, reopens and crashes mixed in.
//!
//! After a crash under `SyncMode::Always` the engine must hold exactly the model (every write was
//! acknowledged, so every write is durable). Under `SyncMode::None` it must hold the state after
//! some prefix of the writes issued, no shorter than the last point known durable (a flush or a
//! clean close).
//!
//! 1,000 cases by default; `CORECACHE_MODEL_CASES=N` runs more.

mod common;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use corecache_core::{Background, Db, Error, Options, SimDisk, StallPolicy, SyncMode, WriteBatch};
use proptest::prelude::*;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u16, u8),
    Delete(u8),
    Batch(Vec<(bool, u8, u16, u8)>),
    Get(u8),
    Scan(u8, u8, u8),
    Prefix(u8),
    Flush,
    Compact,
    Background,
    Reopen,
    Crash(u64),
    /// A put applied without waiting for its fsync (`write_deferred`), acknowledged only by a
    /// later `Persist`.
    Deferred(u8, u16, u8),
    Persist,
}

/// Keys from a small space, with some sharing prefixes, so updates and deletes collide.
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
    (0..len).map(|i| fill.wrapping_add(i as u8)).collect()
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        20 => (any::<u8>(), 0u16..300, any::<u8>()).prop_map(|(k, l, f)| Op::Put(k, l, f)),
        6 => any::<u8>().prop_map(Op::Delete),
        3 => prop::collection::vec((any::<bool>(), any::<u8>(), 0u16..120, any::<u8>()), 1..6)
            .prop_map(Op::Batch),
        8 => any::<u8>().prop_map(Op::Get),
        3 => (any::<u8>(), any::<u8>(), 0u8..12).prop_map(|(a, b, l)| Op::Scan(a, b, l)),
        2 => any::<u8>().prop_map(Op::Prefix),
        2 => Just(Op::Flush),
        1 => Just(Op::Compact),
        4 => Just(Op::Background),
        1 => Just(Op::Reopen),
        2 => any::<u64>().prop_map(Op::Crash),
        6 => (any::<u8>(), 0u16..300, any::<u8>()).prop_map(|(k, l, f)| Op::Deferred(k, l, f)),
        3 => Just(Op::Persist),
    ]
}

fn options(sync: SyncMode) -> Options {
    Options {
        sync,
        background: Background::Manual,
        stall: StallPolicy::Refuse,
        ..Options::tiny()
    }
}

fn open(disk: &SimDisk, sync: SyncMode) -> Db {
    Db::open(Arc::new(disk.clone()), options(sync)).expect("reopen after crash must succeed")
}

/// Runs `op` (a write), running background work when the engine refuses it for a stall, as a
/// driver would.
fn until_not_stalled(db: &Db, op: impl Fn() -> corecache_core::Result<u64>) {
    for _ in 0..100 {
        match op() {
            Ok(_) => return,
            Err(Error::WriteStall(_)) => {
                db.do_background_work().expect("background work");
            }
            Err(e) => panic!("write failed: {e}"),
        }
    }
    panic!("write still stalled after 100 rounds of background work");
}

fn write(db: &Db, batch: &WriteBatch) {
    until_not_stalled(db, || db.write(batch.clone()));
}

fn write_deferred(db: &Db, batch: &WriteBatch) {
    until_not_stalled(db, || db.write_deferred(batch.clone()));
}

fn contents(db: &Db) -> Model {
    db.scan(Bound::Unbounded, Bound::Unbounded)
        .expect("scan")
        .collect::<Result<Model, _>>()
        .expect("scan items")
}

fn run(ops: Vec<Op>, always: bool) -> Result<(), TestCaseError> {
    let sync = if always {
        SyncMode::Always
    } else {
        SyncMode::None
    };
    let disk = SimDisk::new();
    let mut db = open(&disk, sync);
    let mut model = Model::new();
    // States after each write, for the prefix check after a crash without fsync.
    let mut history: Vec<Model> = vec![Model::new()];
    let mut durable = 0usize;
    // With SyncMode::Always: the longest prefix of writes readers have been shown.
    let mut visible = 0usize;
    for (step, op) in ops.into_iter().enumerate() {
        // What readers may see now: everything, or with SyncMode::Always the visible prefix.
        let view = if always {
            history[visible].clone()
        } else {
            model.clone()
        };
        match op {
            Op::Put(k, l, f) => {
                let mut b = WriteBatch::new();
                b.put(key(k), value(l, f));
                write(&db, &b);
                model.insert(key(k), value(l, f));
                history.push(model.clone());
                if always {
                    // Acknowledged, and (synced with it) every deferred write before it.
                    durable = history.len() - 1;
                }
            }
            Op::Deferred(k, l, f) => {
                let mut b = WriteBatch::new();
                b.put(key(k), value(l, f));
                write_deferred(&db, &b);
                model.insert(key(k), value(l, f));
                history.push(model.clone());
            }
            Op::Persist => {
                db.persist().unwrap();
                // Under SyncMode::None nothing is synced: persist only publishes.
                if always {
                    durable = history.len() - 1;
                }
            }
            Op::Delete(k) => {
                let mut b = WriteBatch::new();
                b.delete(key(k));
                write(&db, &b);
                model.remove(&key(k));
                history.push(model.clone());
                if always {
                    durable = history.len() - 1;
                }
            }
            Op::Batch(ops) => {
                let mut b = WriteBatch::new();
                for (put, k, l, f) in ops {
                    if put {
                        b.put(key(k), value(l, f));
                        model.insert(key(k), value(l, f));
                    } else {
                        b.delete(key(k));
                        model.remove(&key(k));
                    }
                }
                write(&db, &b);
                history.push(model.clone());
                if always {
                    durable = history.len() - 1;
                }
            }
            Op::Get(k) => {
                prop_assert_eq!(
                    db.get(&key(k)).unwrap(),
                    view.get(&key(k)).cloned(),
                    "step {}",
                    step
                );
            }
            Op::Scan(a, b, limit) => {
                let (lo, hi) = (key(a).min(key(b)), key(a).max(key(b)));
                let got: Vec<_> = db
                    .scan(Bound::Included(&lo), Bound::Excluded(&hi))
                    .unwrap()
                    .take(limit as usize)
                    .collect::<Result<_, _>>()
                    .unwrap();
                let want: Vec<_> = view
                    .range::<Vec<u8>, _>((Bound::Included(&lo), Bound::Excluded(&hi)))
                    .take(limit as usize)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                prop_assert_eq!(got, want, "scan at step {}", step);
            }
            Op::Prefix(k) => {
                let p = key(k)[..2].to_vec();
                let got: Vec<_> = db
                    .scan_prefix(&p)
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                let want: Vec<_> = view
                    .iter()
                    .filter(|(k, _)| k.starts_with(&p))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                prop_assert_eq!(got, want, "prefix scan at step {}", step);
            }
            Op::Flush => {
                db.flush().unwrap();
                durable = history.len() - 1;
            }
            Op::Compact => {
                db.compact().unwrap();
                durable = history.len() - 1;
            }
            Op::Background => {
                db.do_background_work().unwrap();
            }
            Op::Reopen => {
                db.close().unwrap();
                db = open(&disk, sync);
                durable = history.len() - 1;
            }
            Op::Crash(seed) => {
                disk.crash(seed);
                drop(db);
                db = open(&disk, sync);
                let got = contents(&db);
                {
                    let k = (durable..history.len()).rev().find(|k| history[*k] == got);
                    let Some(k) = k else {
                        return Err(TestCaseError::fail(format!(
                            "after the crash at step {step} the state is no prefix of the writes \
                             from {durable} on: {got:?}"
                        )));
                    };
                    history.truncate(k + 1);
                    model = got;
                }
                durable = history.len() - 1;
                visible = durable;
            }
        }
        // After every step the contents are the state after some prefix of the writes: all of
        // them without `SyncMode::Always`; with it, at least every acknowledged one (deferred
        // writes become visible at a persist, or earlier once a flush has made them durable).
        let got = contents(&db);
        if always {
            let lo = visible.max(durable);
            let k = (lo..history.len()).rev().find(|k| history[*k] == got);
            let Some(k) = k else {
                return Err(TestCaseError::fail(format!(
                    "contents after step {step} are no prefix of the writes from {lo} on: {got:?}"
                )));
            };
            visible = k;
        } else {
            prop_assert_eq!(got, model.clone(), "contents after step {}", step);
        }
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("CORECACHE_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn engine_matches_model(ops in prop::collection::vec(op(), 1..80), always in any::<bool>()) {
        run(ops, always)?;
    }
}
