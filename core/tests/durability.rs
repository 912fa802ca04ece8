//! Flushes that never stop writes, group commit, and corruption that is always detected.

mod common;

use std::collections::BTreeMap;
use std::io;
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::key;
use corecache_core::{Background, Db, Disk, DiskFile, Error, Options, SimDisk, SyncMode};

/// A disk whose table files block in `create` while held, so a flush can be frozen mid-way.
#[derive(Clone)]
struct HoldDisk {
    inner: SimDisk,
    held: Arc<(Mutex<bool>, Condvar)>,
    started: Arc<Mutex<Option<mpsc::Sender<String>>>>,
    sync_delay: Option<Duration>,
    syncs: Arc<AtomicUsize>,
}

impl HoldDisk {
    fn new(inner: SimDisk) -> Self {
        HoldDisk {
            inner,
            held: Arc::new((Mutex::new(false), Condvar::new())),
            started: Arc::new(Mutex::new(None)),
            sync_delay: None,
            syncs: Arc::default(),
        }
    }
    fn hold(&self) -> mpsc::Receiver<String> {
        *self.held.0.lock().unwrap() = true;
        let (tx, rx) = mpsc::channel();
        *self.started.lock().unwrap() = Some(tx);
        rx
    }
    fn release(&self) {
        *self.held.0.lock().unwrap() = false;
        self.held.1.notify_all();
    }
}

struct SlowSyncFile {
    inner: Arc<dyn DiskFile>,
    delay: Option<Duration>,
    syncs: Arc<AtomicUsize>,
}

impl DiskFile for SlowSyncFile {
    fn append(&self, data: &[u8]) -> io::Result<()> {
        self.inner.append(data)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn sync(&self) -> io::Result<()> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        if let Some(d) = self.delay {
            std::thread::sleep(d);
        }
        self.inner.sync()
    }
}

impl Disk for HoldDisk {
    fn create(&self, name: &str) -> io::Result<Arc<dyn DiskFile>> {
        if name.ends_with(".sst") {
            if let Some(tx) = self.started.lock().unwrap().as_ref() {
                let _ = tx.send(name.to_string());
            }
            let mut held = self.held.0.lock().unwrap();
            while *held {
                held = self.held.1.wait(held).unwrap();
            }
        }
        let f = self.inner.create(name)?;
        Ok(Arc::new(SlowSyncFile {
            inner: f,
            delay: self.sync_delay,
            syncs: self.syncs.clone(),
        }))
    }
    fn open(&self, name: &str) -> io::Result<Arc<dyn DiskFile>> {
        self.inner.open(name)
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.inner.remove(name)
    }
    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.inner.sync_dir()
    }
}

/// The prototype flushed under the same lock that inserts took, so writes stopped for the whole
/// flush (and raced it). Here a flush frozen in mid-air blocks no writer and loses nothing.
#[test]
fn writes_during_a_held_flush_are_neither_blocked_nor_lost() {
    let sim = SimDisk::new();
    let disk = HoldDisk::new(sim.clone());
    let opts = Options {
        sync: SyncMode::Always,
        memtable_bytes: 4096,
        // High enough that no write here can hit the stall limit, however slowly the flush
        // thread gets scheduled: this test is about the flush itself never blocking a writer.
        max_immutable_memtables: 10_000,
        background: Background::Threads,
        ..Options::tiny()
    };
    let db = Arc::new(Db::open(Arc::new(disk.clone()), opts.clone()).unwrap());
    let started = disk.hold();
    // Fill past one memtable so a flush starts, and wait until it is stuck in the disk.
    let mut i = 0u32;
    let table = loop {
        db.put(key(i), format!("v{i}").into_bytes()).unwrap();
        i += 1;
        if let Ok(name) = started.try_recv() {
            break name;
        }
        assert!(i < 10_000, "no flush started");
    };
    let held_at = i;
    // While the flush is held, keep writing (through another memtable switch) from a thread;
    // it must finish without the flush ever being released.
    let (done_tx, done_rx) = mpsc::channel();
    let writer = {
        let db = db.clone();
        std::thread::spawn(move || {
            for j in held_at..held_at + 300 {
                db.put(key(j), format!("v{j}").into_bytes()).unwrap();
            }
            done_tx.send(()).unwrap();
        })
    };
    done_rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("writes blocked while the flush of {table} was held"));
    writer.join().unwrap();
    let stats = db.stats();
    assert!(
        stats.immutable_memtables >= 1,
        "the held flush is still pending: {stats:?}"
    );
    assert_eq!(stats.flushes, 0);
    // Reads see every write, from frozen memtables.
    for j in 0..held_at + 300 {
        assert_eq!(db.get(&key(j)).unwrap(), Some(format!("v{j}").into_bytes()));
    }
    disk.release();
    db.flush().unwrap();
    assert!(db.stats().flushes >= 2);
    for j in 0..held_at + 300 {
        assert_eq!(db.get(&key(j)).unwrap(), Some(format!("v{j}").into_bytes()));
    }
    drop(db);
    sim.crash_clean();
    let db = Db::open(Arc::new(sim), opts).unwrap();
    for j in 0..held_at + 300 {
        assert_eq!(
            db.get(&key(j)).unwrap(),
            Some(format!("v{j}").into_bytes()),
            "after crash"
        );
    }
}

/// Writers that arrive while an fsync is running share the next one.
#[test]
fn concurrent_durable_writers_share_fsyncs() {
    let mut disk = HoldDisk::new(SimDisk::new());
    disk.sync_delay = Some(Duration::from_millis(3));
    let opts = Options {
        sync: SyncMode::Always,
        ..Options::default()
    };
    let db = Arc::new(Db::open(Arc::new(disk.clone()), opts).unwrap());
    let before = disk.syncs.load(Ordering::SeqCst);
    let threads: Vec<_> = (0..32u32)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..20u32 {
                    db.put(key(t * 1000 + i), b"x".to_vec()).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let syncs = disk.syncs.load(Ordering::SeqCst) - before;
    let writes = 32 * 20;
    assert!(
        syncs * 4 <= writes,
        "{syncs} fsyncs for {writes} durable writes: group commit is not grouping"
    );
    for t in 0..32u32 {
        for i in 0..20u32 {
            assert!(db.get(&key(t * 1000 + i)).unwrap().is_some());
        }
    }
}

fn snapshot_files(disk: &SimDisk) -> BTreeMap<String, Vec<u8>> {
    disk.list()
        .unwrap()
        .into_iter()
        .map(|n| {
            let b = disk.read_file(&n).unwrap();
            (n, b)
        })
        .collect()
}

fn disk_from(files: &BTreeMap<String, Vec<u8>>) -> SimDisk {
    let d = SimDisk::new();
    for (n, b) in files {
        d.write_file(n, b.clone());
    }
    d
}

fn manual() -> Options {
    Options {
        background: corecache_core::Background::Manual,
        stall: corecache_core::StallPolicy::Refuse,
        max_immutable_memtables: 64,
        l0_stop_writes: 64,
        ..Options::tiny()
    }
}

/// Flip every byte of a table, one at a time: the damage is always reported as corruption naming
/// the table (at open or at the read that touches it), and no read ever returns a wrong value.
#[test]
fn every_byte_flip_in_a_table_is_detected_and_never_served() {
    let disk = SimDisk::new();
    let db = Db::open(Arc::new(disk.clone()), manual()).unwrap();
    let mut want = BTreeMap::new();
    for i in 0..60u32 {
        let v = format!("value-{i}-{}", "x".repeat((i % 7) as usize)).into_bytes();
        db.put(key(i), v.clone()).unwrap();
        want.insert(key(i), v);
    }
    db.delete(key(5)).unwrap();
    want.remove(&key(5));
    db.compact().unwrap();
    drop(db);
    let files = snapshot_files(&disk);
    let (table, bytes) = files
        .iter()
        .find(|(n, _)| n.ends_with(".sst"))
        .map(|(n, b)| (n.clone(), b.clone()))
        .expect("a table exists");
    assert!(bytes.len() > 500, "table is {} bytes", bytes.len());
    for off in 0..bytes.len() {
        let mut damaged = files.clone();
        damaged.get_mut(&table).unwrap()[off] ^= 0x20;
        let disk = disk_from(&damaged);
        let mut detected = false;
        match Db::open(Arc::new(disk), manual()) {
            Err(Error::Corruption { file, .. }) => {
                assert_eq!(file, table, "flip at {off}");
                detected = true;
            }
            Err(e) => panic!("flip at {off}: unexpected error {e}"),
            Ok(db) => {
                for (k, v) in &want {
                    match db.get(k) {
                        Ok(got) => assert_eq!(got.as_ref(), Some(v), "flip at {off}: wrong value"),
                        Err(Error::Corruption { file, .. }) => {
                            assert_eq!(file, table);
                            detected = true;
                        }
                        Err(e) => panic!("flip at {off}: unexpected error {e}"),
                    }
                }
                assert_eq!(
                    db.get(&key(5)).ok().flatten(),
                    None,
                    "flip at {off}: deleted key back"
                );
                let items: Vec<_> = match db.scan(Bound::Unbounded, Bound::Unbounded) {
                    Ok(it) => it.collect(),
                    Err(e) => vec![Err(e)],
                };
                for item in items {
                    match item {
                        Ok((k, v)) => assert_eq!(want.get(&k), Some(&v), "flip at {off}: scan"),
                        Err(Error::Corruption { file, .. }) => {
                            assert_eq!(file, table);
                            detected = true;
                        }
                        Err(e) => panic!("flip at {off}: unexpected error {e}"),
                    }
                }
            }
        }
        assert!(detected, "flip at offset {off} of {table} went unnoticed");
    }
}

/// Flip bytes in the middle of the WAL: opening fails with a corruption error naming the log;
/// only damage to the very last record may instead be dropped as a torn tail.
#[test]
fn a_byte_flip_in_the_middle_of_the_wal_is_reported_with_file_and_offset() {
    let disk = SimDisk::new();
    let opts = Options {
        memtable_bytes: 1 << 20,
        ..manual()
    };
    let db = Db::open(Arc::new(disk.clone()), opts.clone()).unwrap();
    for i in 0..30u32 {
        db.put(key(i), format!("v{i}").into_bytes()).unwrap();
    }
    // A crash that keeps exactly what was synced: the WAL holds all 30 records.
    disk.crash_clean();
    drop(db);
    let files = snapshot_files(&disk);
    let (wal, bytes) = files
        .iter()
        .find(|(n, b)| n.ends_with(".wal") && !b.is_empty())
        .map(|(n, b)| (n.clone(), b.clone()))
        .expect("a non-empty log");
    let record = bytes.len() / 30;
    let last_record_start = bytes.len() - record;
    for off in (0..last_record_start).step_by(3) {
        let mut damaged = files.clone();
        damaged.get_mut(&wal).unwrap()[off] ^= 0x01;
        match Db::open(Arc::new(disk_from(&damaged)), opts.clone()) {
            Err(Error::Corruption { file, offset, .. }) => {
                assert_eq!(file, wal);
                assert!(
                    offset <= off as u64 && off as u64 - offset < 64,
                    "flip at {off} reported at {offset}"
                );
            }
            Err(e) => panic!("flip at {off}: unexpected error {e}"),
            Ok(_) => panic!("flip at {off} in the middle of {wal} was not reported"),
        }
    }
    // The last record's payload: dropped as a torn tail, with everything before it intact.
    let mut damaged = files.clone();
    let n = damaged.get_mut(&wal).unwrap();
    let last = n.len() - 1;
    n[last] ^= 0x01;
    let db = Db::open(Arc::new(disk_from(&damaged)), opts).unwrap();
    assert!(db.recovery().torn_tail.is_some());
    for i in 0..29u32 {
        assert_eq!(db.get(&key(i)).unwrap(), Some(format!("v{i}").into_bytes()));
    }
    assert_eq!(db.get(&key(29)).unwrap(), None);
}

/// `SyncMode::Interval` syncs the log by itself, without any write asking for it.
#[test]
fn interval_mode_syncs_the_log_in_the_background() {
    let disk = HoldDisk::new(SimDisk::new());
    let opts = Options {
        sync: SyncMode::Interval { ms: 5 },
        ..Options::default()
    };
    let db = Db::open(Arc::new(disk.clone()), opts).unwrap();
    db.put(b"k".to_vec(), b"v".to_vec()).unwrap();
    let start = disk.syncs.load(Ordering::SeqCst);
    // Wait (bounded) for the ticker; this checks that it runs, not how fast.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while disk.syncs.load(Ordering::SeqCst) < start + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the interval sync never ran"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    disk.inner.crash_clean();
    drop(db);
    let db = Db::open(Arc::new(disk.inner.clone()), Options::default()).unwrap();
    assert_eq!(db.get(b"k").unwrap(), Some(b"v".to_vec()));
}

/// A disk that fails every write: the write is refused with an error, and nothing is applied.
#[test]
fn a_failing_disk_refuses_writes_and_changes_nothing() {
    let disk = SimDisk::new();
    let db = Db::open(Arc::new(disk.clone()), manual()).unwrap();
    db.put(b"a".to_vec(), b"1".to_vec()).unwrap();
    disk.set_fail_writes(true);
    assert!(db.put(b"b".to_vec(), b"2".to_vec()).is_err());
    assert_eq!(
        db.get(b"b").unwrap(),
        None,
        "a failed write must not be visible"
    );
    disk.set_fail_writes(false);
    // After a log failure the database refuses writes instead of appending after a hole.
    assert!(db.put(b"c".to_vec(), b"3".to_vec()).is_err());
    assert_eq!(db.get(b"a").unwrap(), Some(b"1".to_vec()));
    drop(db);
    let db = Db::open(Arc::new(disk), manual()).unwrap();
    assert_eq!(db.get(b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(db.get(b"b").unwrap(), None);
    db.put(b"c".to_vec(), b"3".to_vec()).unwrap();
}

/// Deferred writes: applied at once, visible and durable only after `persist`.
#[test]
fn deferred_writes_become_visible_and_durable_at_persist() {
    let disk = SimDisk::new();
    let db = Db::open(Arc::new(disk.clone()), manual()).unwrap();
    db.put(b"k".to_vec(), b"old".to_vec()).unwrap();
    let seq = db
        .write_deferred({
            let mut b = corecache_core::WriteBatch::new();
            b.put(b"k".to_vec(), b"new".to_vec());
            b
        })
        .unwrap();
    assert_eq!(
        db.get(b"k").unwrap(),
        Some(b"old".to_vec()),
        "not visible before persist"
    );
    assert_eq!(db.get_latest(b"k").unwrap(), Some((seq, b"new".to_vec())));
    // A crash now loses it: it was never acknowledged.
    let lost = disk.clone();
    lost.crash_clean();
    drop(db);
    let db = Db::open(Arc::new(disk.clone()), manual()).unwrap();
    assert_eq!(db.get(b"k").unwrap(), Some(b"old".to_vec()));
    let seq = db
        .write_deferred({
            let mut b = corecache_core::WriteBatch::new();
            b.put(b"k".to_vec(), b"newer".to_vec());
            b
        })
        .unwrap();
    assert!(db.persist().unwrap() >= seq);
    assert_eq!(db.get(b"k").unwrap(), Some(b"newer".to_vec()));
    disk.crash_clean();
    drop(db);
    let db = Db::open(Arc::new(disk), manual()).unwrap();
    assert_eq!(
        db.get(b"k").unwrap(),
        Some(b"newer".to_vec()),
        "persisted write survives"
    );
}
