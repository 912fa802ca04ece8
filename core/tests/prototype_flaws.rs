//! One named test for each flaw of the Python prototype that the storage engine must not have.

mod common;

use std::ops::Bound;
use std::sync::Arc;

use common::{all, key, manual_tiny, open_sim};
use corecache_core::{Db, Options, SimDisk, SyncMode};

/// The prototype returned stale values after an update once the old value sat in an older
/// index file. Here the newest version wins through memtable, flush and compaction.
#[test]
fn updated_key_never_returns_its_old_value_after_flush_and_compaction() {
    let disk = SimDisk::new();
    let db = open_sim(&disk, manual_tiny());
    db.put(b"k".to_vec(), b"old".to_vec()).unwrap();
    db.flush().unwrap();
    db.put(b"k".to_vec(), b"new".to_vec()).unwrap();
    assert_eq!(
        db.get(b"k").unwrap(),
        Some(b"new".to_vec()),
        "memtable over table"
    );
    db.flush().unwrap();
    assert_eq!(
        db.get(b"k").unwrap(),
        Some(b"new".to_vec()),
        "newer table over older"
    );
    db.do_background_work().unwrap();
    db.compact().unwrap();
    assert_eq!(
        db.get(b"k").unwrap(),
        Some(b"new".to_vec()),
        "after compaction"
    );
    assert_eq!(all(&db), vec![(b"k".to_vec(), b"new".to_vec())]);
    drop(db);
    let db = open_sim(&disk, manual_tiny());
    assert_eq!(db.get(b"k").unwrap(), Some(b"new".to_vec()), "after reopen");
}

/// Tombstone in a newer table than the value: the key stays deleted through compaction.
#[test]
fn deleted_key_stays_deleted_tombstone_newer_than_value() {
    let disk = SimDisk::new();
    let db = open_sim(&disk, manual_tiny());
    db.put(b"k".to_vec(), b"v".to_vec()).unwrap();
    db.put(b"other".to_vec(), b"x".to_vec()).unwrap();
    db.flush().unwrap();
    db.delete(b"k".to_vec()).unwrap();
    db.flush().unwrap();
    assert_eq!(
        db.stats().tables_per_level[0],
        2,
        "value and tombstone in two tables"
    );
    assert_eq!(db.get(b"k").unwrap(), None);
    // Partial compaction first (level 0 into level 1), then a full one to the bottom.
    db.do_background_work().unwrap();
    assert_eq!(db.get(b"k").unwrap(), None);
    db.compact().unwrap();
    assert_eq!(db.get(b"k").unwrap(), None);
    assert_eq!(all(&db), vec![(b"other".to_vec(), b"x".to_vec())]);
    drop(db);
    let db = open_sim(&disk, manual_tiny());
    assert_eq!(db.get(b"k").unwrap(), None, "after reopen");
}

/// The reverse: a tombstone sits in a deeper (older) level and a newer value is written
/// after it. The value must win, and compaction must not let the tombstone eat it.
#[test]
fn rewritten_key_survives_an_older_tombstone() {
    let disk = SimDisk::new();
    let db = open_sim(&disk, manual_tiny());
    db.put(b"k".to_vec(), b"v1".to_vec()).unwrap();
    db.flush().unwrap();
    db.delete(b"k".to_vec()).unwrap();
    db.flush().unwrap();
    db.do_background_work().unwrap();
    db.put(b"k".to_vec(), b"v2".to_vec()).unwrap();
    db.flush().unwrap();
    assert_eq!(db.get(b"k").unwrap(), Some(b"v2".to_vec()));
    db.compact().unwrap();
    assert_eq!(db.get(b"k").unwrap(), Some(b"v2".to_vec()));
}

/// Tombstones must not be dropped while an older value lies deeper: compact level 0 into
/// level 1 while the value sits in level 2.
#[test]
fn tombstone_is_kept_while_older_data_lies_below() {
    let disk = SimDisk::new();
    let mut opts = manual_tiny();
    opts.l0_compaction_trigger = 1;
    opts.l0_stop_writes = 64;
    let db = open_sim(&disk, opts.clone());
    db.put(b"k".to_vec(), b"v".to_vec()).unwrap();
    db.compact().unwrap(); // value now at the bottom level (1)
                           // Push it one level deeper with a full compaction after filling level 1 above its budget
                           // is awkward; instead check the general property across many flush/compaction rounds.
    for round in 0..20u32 {
        db.delete(b"k".to_vec()).unwrap();
        for i in 0..30 {
            db.put(key(i + round * 30), vec![b'x'; 40]).unwrap();
        }
        db.flush().unwrap();
        db.do_background_work().unwrap();
        assert_eq!(db.get(b"k").unwrap(), None, "round {round}");
        db.put(b"k".to_vec(), format!("v{round}").into_bytes())
            .unwrap();
        db.flush().unwrap();
        db.do_background_work().unwrap();
        assert_eq!(
            db.get(b"k").unwrap(),
            Some(format!("v{round}").into_bytes())
        );
    }
    let levels_used = db
        .stats()
        .tables_per_level
        .iter()
        .filter(|n| **n > 0)
        .count();
    assert!(
        levels_used >= 2,
        "the test should have spread data over levels"
    );
}

/// The prototype stored "key:value" lines, so a value containing ':' broke. Keys and values
/// here are arbitrary bytes.
#[test]
fn values_with_colons_and_any_bytes_survive() {
    let disk = SimDisk::new();
    let db = open_sim(&disk, manual_tiny());
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let cases: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"a:b".to_vec(), b"c:d:e".to_vec()),
        (b"\x00".to_vec(), b"\x00\xff\n\r:".to_vec()),
        (b"".to_vec(), b"empty key".to_vec()),
        (all_bytes.clone(), all_bytes.clone()),
        (b"\xff\xff".to_vec(), Vec::new()),
    ];
    for (k, v) in &cases {
        db.put(k.clone(), v.clone()).unwrap();
    }
    let check = |db: &Db| {
        for (k, v) in &cases {
            assert_eq!(db.get(k).unwrap().as_ref(), Some(v), "key {k:?}");
        }
    };
    check(&db);
    db.flush().unwrap();
    check(&db);
    db.compact().unwrap();
    check(&db);
    drop(db);
    let db = open_sim(&disk, manual_tiny());
    check(&db);
    let mut sorted = cases.clone();
    sorted.sort();
    assert_eq!(all(&db), sorted);
}

/// The prototype kept writes in memory only: a crash before a flush lost them. Every write
/// acknowledged under `SyncMode::Always` survives a crash that drops all unsynced bytes.
#[test]
fn crash_between_memtable_write_and_flush_loses_nothing_acknowledged() {
    for seed in 0..50u64 {
        let disk = SimDisk::new();
        let db = open_sim(&disk, manual_tiny());
        let mut acked = Vec::new();
        for i in 0..40u32 {
            db.put(key(i), format!("v{i}").into_bytes()).unwrap();
            acked.push(i);
            if i % 7 == 3 {
                db.delete(key(i - 1)).unwrap();
                acked.retain(|x| *x != i - 1);
            }
            if i % 13 == 0 {
                db.do_background_work().unwrap();
            }
        }
        disk.crash(seed);
        drop(db);
        let db = open_sim(&disk, manual_tiny());
        for i in 0..40u32 {
            let want = acked.contains(&i).then(|| format!("v{i}").into_bytes());
            assert_eq!(db.get(&key(i)).unwrap(), want, "seed {seed} key {i}");
        }
    }
}

/// A crash right after a delete that was not yet flushed must not resurrect the key (the
/// prototype had no WAL, so unflushed deletes vanished and old values came back).
#[test]
fn crash_after_unflushed_delete_does_not_resurrect() {
    let disk = SimDisk::new();
    let db = open_sim(&disk, manual_tiny());
    db.put(b"k".to_vec(), b"v".to_vec()).unwrap();
    db.flush().unwrap();
    db.delete(b"k".to_vec()).unwrap();
    disk.crash_clean();
    drop(db);
    let db = open_sim(&disk, manual_tiny());
    assert_eq!(db.get(b"k").unwrap(), None);
}

/// Scans see one snapshot even while writes and flushes go on.
#[test]
fn scan_sees_one_snapshot_while_writes_and_compactions_go_on() {
    let disk = SimDisk::new();
    let db = open_sim(&disk, manual_tiny());
    for i in 0..200u32 {
        db.put(key(i), b"before".to_vec()).unwrap();
        if i % 50 == 0 {
            db.do_background_work().unwrap();
        }
    }
    let mut it = db.scan(Bound::Unbounded, Bound::Unbounded).unwrap();
    let first = it.next().unwrap().unwrap();
    assert_eq!(first.1, b"before".to_vec());
    for i in 0..200u32 {
        if i % 2 == 0 {
            db.put(key(i), b"after".to_vec()).unwrap();
        } else {
            db.delete(key(i)).unwrap();
        }
        if i % 40 == 0 {
            db.do_background_work().unwrap();
        }
    }
    db.compact().unwrap();
    let rest: Vec<_> = it.collect::<Result<Vec<_>, _>>().unwrap();
    assert_eq!(rest.len(), 199);
    assert!(rest.iter().all(|(_, v)| v == b"before"));
    let now = all(&db);
    assert_eq!(now.len(), 100);
    assert!(now.iter().all(|(_, v)| v == b"after"));
}

/// Prefix scans and limits.
#[test]
fn prefix_scan_returns_exactly_the_prefix() {
    let disk = SimDisk::new();
    let db = open_sim(&disk, manual_tiny());
    for k in ["a", "ab", "abc", "abd", "ac", "b", "ab\u{ff}"] {
        db.put(k.as_bytes().to_vec(), b"1".to_vec()).unwrap();
    }
    db.put(b"ab\xff\xff".to_vec(), b"1".to_vec()).unwrap();
    db.put(b"ac".to_vec(), b"1".to_vec()).unwrap();
    db.flush().unwrap();
    let keys: Vec<Vec<u8>> = db
        .scan_prefix(b"ab")
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect();
    let want: Vec<Vec<u8>> = vec![
        b"ab".to_vec(),
        b"abc".to_vec(),
        b"abd".to_vec(),
        "ab\u{ff}".as_bytes().to_vec(),
        b"ab\xff\xff".to_vec(),
    ];
    let mut want = want;
    want.sort();
    assert_eq!(keys, want);
    let two: Vec<_> = db
        .scan_prefix(b"a")
        .unwrap()
        .take(2)
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(two, vec![b"a".to_vec(), b"ab".to_vec()]);
}

/// Space is reclaimed: overwrites and deletes shrink the table set after compaction.
#[test]
fn compaction_reclaims_space_of_overwrites_and_deletes() {
    let disk = SimDisk::new();
    let db = open_sim(&disk, manual_tiny());
    for round in 0..5 {
        for i in 0..100u32 {
            db.put(key(i), vec![round as u8; 50]).unwrap();
        }
        db.flush().unwrap();
    }
    let before = db.stats().table_bytes_total;
    db.do_background_work().unwrap();
    for i in 0..100u32 {
        db.delete(key(i)).unwrap();
    }
    db.compact().unwrap();
    let after = db.stats();
    assert_eq!(all(&db), vec![]);
    assert_eq!(
        after.table_bytes_total, 0,
        "all tombstones dropped at the bottom: {after:?}"
    );
    assert!(before > 10_000);
    // Old files are gone from the disk too.
    drop(db);
    assert!(
        disk.total_bytes() < 2_000,
        "{} bytes still on disk",
        disk.total_bytes()
    );
}

/// Sanity of the real disk: a database on std::fs round-trips through close and reopen.
#[test]
fn std_disk_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let disk = corecache_core::StdDisk::open(dir.path()).unwrap();
        let opts = Options {
            sync: SyncMode::Always,
            ..Options::tiny()
        };
        Db::open(Arc::new(disk), opts).unwrap()
    };
    let db = open();
    for i in 0..500u32 {
        db.put(key(i), format!("value{i}").into_bytes()).unwrap();
    }
    db.flush().unwrap();
    for i in (0..500u32).step_by(3) {
        db.delete(key(i)).unwrap();
    }
    db.close().unwrap();
    let db = open();
    for i in 0..500u32 {
        let want = (i % 3 != 0).then(|| format!("value{i}").into_bytes());
        assert_eq!(db.get(&key(i)).unwrap(), want);
    }
    // A second open of the same directory is refused while the first holds it.
    assert!(corecache_core::StdDisk::open(dir.path()).is_err());
}
