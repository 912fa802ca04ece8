//! `Db`: the storage engine's front door.
//!
//! # Write path
//! Writers queue their batches; the first writer to find no leader becomes the leader, takes every
//! queued batch, numbers them, appends them to the WAL in one `append`, fsyncs once when the sync
//! mode asks for it, inserts them into the memtable, and only then publishes the new last sequence
//! number to readers. So concurrent writers share one fsync (group commit), a reader never sees a
//! write that is not yet durable under `SyncMode::Always`, and the WAL order is the sequence order.
//!
//! # Read path
//! A reader loads the current *super version* (active memtable, frozen memtables, table set)
//! first and the published sequence number second. Every table in that super version was built
//! from writes published before it was installed, so they are all visible at that sequence
//! number, and a table holding only the newest version of each key never hides an older version
//! the reader should have seen.
//!
//! # Background work
//! A full memtable is frozen and a new one (with a new WAL file) takes writes at once. Flushing a
//! frozen memtable and compacting tables run without any lock that writers or readers take;
//! their results are installed by writing the manifest and swapping the super version. Either
//! the engine's threads do this (`Background::Threads`) or the owner calls
//! [`Db::do_background_work`] (`Background::Manual`, used by deterministic tests).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::{Condvar, Mutex};

use crate::engine::batch::WriteBatch;
use crate::engine::cache::BlockCache;
use crate::engine::compaction::{self, CompactionPlan, LevelConfig, TableShape};
use crate::engine::disk::Disk;
use crate::engine::error::{Error, Result};
use crate::engine::format::{hash64, Kind, MAX_SEQ, WAL_TYPE_BATCH};
use crate::engine::iter::{empty_range, LevelSource, MemSource, MergeIter, Source};
use crate::engine::manifest::{self, ManifestState, TableRecord};
use crate::engine::memtable::{Entry, Memtable};
use crate::engine::options::{Background, Options, StallPolicy, SyncMode};
use crate::engine::sst::{table_name, BuildOptions, Table, TableBuilder, TableIter};
use crate::engine::wal::{self, frame_record, wal_name, ReplayEnd, WalWriter};

/// The table set: level 0 newest first, deeper levels sorted by key and disjoint.
#[derive(Clone, Debug)]
pub(crate) struct Version {
    pub levels: Vec<Vec<Arc<Table>>>,
}

impl Version {
    fn shapes(&self) -> Vec<Vec<TableShape>> {
        self.levels
            .iter()
            .map(|ts| {
                ts.iter()
                    .map(|t| TableShape {
                        number: t.number,
                        size: t.size(),
                        smallest: t.props().smallest.clone(),
                        largest: t.props().largest.clone(),
                    })
                    .collect()
            })
            .collect()
    }

    fn records(&self) -> Vec<TableRecord> {
        let mut out = Vec::new();
        for (level, ts) in self.levels.iter().enumerate() {
            for t in ts {
                let p = t.props();
                out.push(TableRecord {
                    level: level as u8,
                    number: t.number,
                    size: t.size(),
                    entries: p.entries,
                    min_seq: p.min_seq,
                    max_seq: p.max_seq,
                    smallest: p.smallest.clone(),
                    largest: p.largest.clone(),
                });
            }
        }
        out
    }
}

struct SuperVersion {
    mem: Arc<Memtable>,
    /// Frozen memtables, newest first.
    imms: Vec<Arc<Memtable>>,
    version: Arc<Version>,
}

enum Op {
    /// A batch; `deferred` batches are not fsynced (nor, under `SyncMode::Always`, made visible)
    /// until [`Db::persist`].
    Write(WriteBatch, bool),
    /// Freeze the active memtable (an explicit flush).
    Rotate,
}

struct Queue {
    next_id: u64,
    pending: VecDeque<(u64, Op)>,
    leader: bool,
    done: HashMap<u64, Result<u64>>,
}

struct WalState {
    writer: WalWriter,
    /// Logs retired by a memtable switch whose tails may not be synced yet. Every sync of the
    /// log syncs these first, so "synced up to N" holds across files.
    retired: Vec<(Arc<dyn crate::engine::disk::DiskFile>, String)>,
    last_seq: u64,
    buf: Vec<u8>,
    payload: Vec<u8>,
}

#[derive(Default)]
struct BgState {
    shutdown: bool,
    /// The last failure of each background job ("flush", "compaction", "wal sync"), cleared by
    /// that job's next success.
    errors: std::collections::BTreeMap<&'static str, String>,
}

impl BgState {
    fn error(&self) -> Option<String> {
        if self.errors.is_empty() {
            return None;
        }
        Some(
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join("; "),
        )
    }
}

#[derive(Default)]
struct Counters {
    flushes: AtomicU64,
    compactions: AtomicU64,
    trivial_moves: AtomicU64,
    write_stalls: AtomicU64,
    flush_bytes: AtomicU64,
    compaction_bytes_written: AtomicU64,
    background_errors: AtomicU64,
    wal_syncs: AtomicU64,
    writes: AtomicU64,
}

struct Inner {
    disk: Arc<dyn Disk>,
    opts: Options,
    cache: Arc<BlockCache>,
    sv: ArcSwap<SuperVersion>,
    sv_lock: Mutex<()>,
    visible_seq: AtomicU64,
    /// Every write up to this number is in tables (what the manifest records as `last_seq`).
    flushed_seq: AtomicU64,
    next_file: AtomicU64,
    queue: Mutex<Queue>,
    queue_cv: Condvar,
    wal: Mutex<WalState>,
    /// Serialises table-set changes (flush and compaction installs) and holds the round-robin
    /// compaction pointers.
    versions: Mutex<Vec<Vec<u8>>>,
    flush_lock: Mutex<()>,
    compaction_lock: Mutex<()>,
    bg: Mutex<BgState>,
    bg_cv: Condvar,
    /// Set when a WAL write or sync failed: the log's tail is unknown, so no more writes.
    poisoned: Mutex<Option<String>>,
    counters: Counters,
}

/// A snapshot of engine figures, for metrics and status pages.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub last_seq: u64,
    pub memtable_bytes: u64,
    pub immutable_memtables: usize,
    pub tables_per_level: Vec<usize>,
    pub bytes_per_level: Vec<u64>,
    pub table_bytes_total: u64,
    pub pinned_index_filter_bytes: u64,
    pub block_cache_bytes: u64,
    pub flushes: u64,
    pub compactions: u64,
    pub trivial_moves: u64,
    pub write_stalls: u64,
    pub flush_bytes: u64,
    pub compaction_bytes_written: u64,
    pub background_errors: u64,
    pub last_background_error: Option<String>,
    pub wal_syncs: u64,
    pub writes: u64,
}

/// What open found in the write-ahead log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    pub wal_files: usize,
    pub batches: u64,
    /// Where a torn tail was dropped, if one was.
    pub torn_tail: Option<(String, u64)>,
    /// Later logs ignored because an earlier one ended in a torn tail.
    pub dropped_logs: Vec<String>,
}

/// An embedded LSM key-value store. Cheap to share: wrap it in an `Arc`.
pub struct Db {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    recovery: Recovery,
}

fn clone_err(e: &Error) -> Error {
    match e {
        Error::Io { file, source } => Error::Io {
            file: file.clone(),
            source: io::Error::new(source.kind(), source.to_string()),
        },
        Error::Corruption {
            file,
            offset,
            detail,
        } => Error::Corruption {
            file: file.clone(),
            offset: *offset,
            detail: detail.clone(),
        },
        Error::WriteStall(s) => Error::WriteStall(s.clone()),
        Error::Background(s) => Error::Background(s.clone()),
        Error::InvalidArgument(s) => Error::InvalidArgument(s.clone()),
        Error::Closed => Error::Closed,
    }
}

fn parse_number(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?;
    if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok().filter(|n| *n < manifest::MAX_FILE_NUMBER)
}

/// The smallest key greater than every key that starts with `prefix`, if any.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl Db {
    /// Opens (or creates) the database on `disk`, replaying its WAL.
    pub fn open(disk: Arc<dyn Disk>, opts: Options) -> Result<Db> {
        opts.validate()?;
        let cache = Arc::new(BlockCache::new(opts.block_cache_bytes));
        disk.remove("MANIFEST.tmp")
            .map_err(|e| Error::io("MANIFEST.tmp", e))?;
        let files = disk.list().map_err(|e| Error::io(".", e))?;
        let state = match manifest::read(&*disk)? {
            Some(s) => s,
            None => {
                if let Some(f) = files
                    .iter()
                    .find(|f| f.ends_with(".sst") || f.ends_with(".wal"))
                {
                    return Err(Error::corruption(
                        manifest::MANIFEST,
                        0,
                        format!("missing, but {f} exists"),
                    ));
                }
                let s = ManifestState {
                    next_file: 1,
                    ..ManifestState::default()
                };
                manifest::write(&*disk, &s).map_err(|f| f.error)?;
                s
            }
        };

        let mut levels: Vec<Vec<Arc<Table>>> = vec![Vec::new(); opts.num_levels];
        let mut last_seq = state.last_seq;
        for rec in &state.tables {
            let name = table_name(rec.number);
            if usize::from(rec.level) >= opts.num_levels {
                return Err(Error::corruption(
                    manifest::MANIFEST,
                    0,
                    format!("{name} is at level {} beyond num_levels", rec.level),
                ));
            }
            let file = disk.open(&name).map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    Error::corruption(
                        manifest::MANIFEST,
                        0,
                        format!("names {name}, which is missing"),
                    )
                } else {
                    Error::io(&name, e)
                }
            })?;
            let t = Table::open(file, rec.number, cache.clone())?;
            let p = t.props();
            if p.smallest != rec.smallest || p.largest != rec.largest || p.entries != rec.entries {
                return Err(Error::corruption(
                    &name,
                    0,
                    "table properties disagree with the manifest",
                ));
            }
            last_seq = last_seq.max(p.max_seq);
            levels[usize::from(rec.level)].push(Arc::new(t));
        }
        levels[0].sort_by_key(|t| std::cmp::Reverse(t.number));
        for (i, level) in levels.iter_mut().enumerate().skip(1) {
            level.sort_by(|a, b| a.props().smallest.cmp(&b.props().smallest));
            if level
                .windows(2)
                .any(|w| w[0].props().largest >= w[1].props().smallest)
            {
                return Err(Error::corruption(
                    manifest::MANIFEST,
                    0,
                    format!("level {i} has overlapping tables"),
                ));
            }
        }

        let mut next_file = state.next_file;
        for f in &files {
            if let Some(n) = parse_number(f, ".sst").or_else(|| parse_number(f, ".wal")) {
                next_file = next_file.max(n + 1);
            }
        }

        // Replay every WAL the manifest does not cover, in order.
        let mut wals: Vec<u64> = files
            .iter()
            .filter_map(|f| parse_number(f, ".wal"))
            .filter(|n| *n >= state.log_number)
            .collect();
        wals.sort_unstable();
        let mem = Arc::new(Memtable::new(0));
        let mut recovery = Recovery {
            wal_files: wals.len(),
            ..Recovery::default()
        };
        // Every write up to the manifest's `last_seq` is in tables; the logs continue from the
        // next number. A gap means an earlier log lost its unsynced tail (or all of it): the
        // durable log ends there, as at a torn tail.
        let mut expected = state.last_seq + 1;
        let mut gap: Option<u64> = None;
        for n in &wals {
            let name = wal_name(*n);
            let file = disk.open(&name).map_err(|e| Error::io(&name, e))?;
            if recovery.torn_tail.is_some() {
                // A log retired by a memtable switch is synced lazily, so a crash can tear it
                // while a later log kept some bytes. Nothing after a torn tail was acknowledged
                // (an acknowledged write's sync covers every earlier log): the log ends there.
                let len = file.len().map_err(|e| Error::io(&name, e))?;
                if len > 0 {
                    recovery.dropped_logs.push(name.clone());
                }
                continue;
            }
            let end = wal::replay(&name, &*file, |batch| {
                if gap.is_some() {
                    return Ok(());
                }
                if batch.first_seq != expected {
                    gap = Some(batch.offset);
                    return Ok(());
                }
                let mut seq = batch.first_seq;
                for (kind, k, v) in &batch.ops {
                    mem.insert(k.to_vec(), seq, *kind, v.to_vec());
                    seq += 1;
                }
                expected = seq;
                last_seq = last_seq.max(seq - 1);
                recovery.batches += 1;
                Ok(())
            })?;
            if let Some(offset) = gap.take() {
                recovery.torn_tail = Some((name.clone(), offset));
            } else if let ReplayEnd::TornTail { offset, .. } = end {
                recovery.torn_tail = Some((name.clone(), offset));
            }
        }

        let build = BuildOptions {
            block_bytes: opts.block_bytes,
            bloom_bits_per_key: opts.bloom_bits_per_key,
        };
        if !mem.is_empty() {
            let number = next_file;
            next_file += 1;
            let t = build_table(&*disk, &mem, number, build, &cache)?;
            levels[0].insert(0, t);
        }
        let wal_number = next_file;
        next_file += 1;
        let version = Version { levels };
        manifest::write(
            &*disk,
            &ManifestState {
                next_file,
                last_seq,
                log_number: wal_number,
                tables: version.records(),
            },
        )
        .map_err(|f| f.error)?;
        let wal_file = disk
            .create(&wal_name(wal_number))
            .map_err(|e| Error::io(wal_name(wal_number), e))?;
        disk.sync_dir().map_err(|e| Error::io(".", e))?;

        // Everything older is now covered by the manifest; remove leftovers.
        let live: std::collections::HashSet<u64> =
            version.levels.iter().flatten().map(|t| t.number).collect();
        for f in &files {
            let stale = parse_number(f, ".wal").is_some_and(|n| n < wal_number)
                || parse_number(f, ".sst").is_some_and(|n| !live.contains(&n));
            if stale {
                disk.remove(f).map_err(|e| Error::io(f, e))?;
            }
        }

        let sv = SuperVersion {
            mem: Arc::new(Memtable::new(wal_number)),
            imms: Vec::new(),
            version: Arc::new(version),
        };
        let inner = Arc::new(Inner {
            disk,
            cache,
            sv: ArcSwap::from_pointee(sv),
            sv_lock: Mutex::new(()),
            visible_seq: AtomicU64::new(last_seq),
            flushed_seq: AtomicU64::new(last_seq),
            next_file: AtomicU64::new(next_file),
            queue: Mutex::new(Queue {
                next_id: 0,
                pending: VecDeque::new(),
                leader: false,
                done: HashMap::new(),
            }),
            queue_cv: Condvar::new(),
            wal: Mutex::new(WalState {
                writer: WalWriter::new(wal_file, wal_number),
                retired: Vec::new(),
                last_seq,
                buf: Vec::new(),
                payload: Vec::new(),
            }),
            versions: Mutex::new(vec![Vec::new(); opts.num_levels]),
            flush_lock: Mutex::new(()),
            compaction_lock: Mutex::new(()),
            bg: Mutex::new(BgState::default()),
            bg_cv: Condvar::new(),
            poisoned: Mutex::new(None),
            counters: Counters::default(),
            opts,
        });
        let db = Db {
            threads: Mutex::new(Vec::new()),
            recovery,
            inner,
        };
        if db.inner.opts.background == Background::Threads {
            db.spawn_threads();
        }
        Ok(db)
    }

    fn spawn_threads(&self) {
        let mut threads = self.threads.lock();
        let i = self.inner.clone();
        threads.push(
            std::thread::Builder::new()
                .name("corecache-flush".into())
                .spawn(move || i.flush_loop())
                .expect("spawn flush thread"),
        );
        let i = self.inner.clone();
        threads.push(
            std::thread::Builder::new()
                .name("corecache-compact".into())
                .spawn(move || i.compaction_loop())
                .expect("spawn compaction thread"),
        );
        if let SyncMode::Interval { ms } = self.inner.opts.sync {
            let i = self.inner.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("corecache-wal-sync".into())
                    .spawn(move || i.interval_sync_loop(Duration::from_millis(ms)))
                    .expect("spawn sync thread"),
            );
        }
    }

    /// What open found in the log.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    pub fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<u64> {
        let mut b = WriteBatch::new();
        b.put(key, value);
        self.write(b)
    }

    pub fn delete(&self, key: impl Into<Vec<u8>>) -> Result<u64> {
        let mut b = WriteBatch::new();
        b.delete(key);
        self.write(b)
    }

    /// Applies `batch` atomically and returns the sequence number of its last operation. Under
    /// `SyncMode::Always` it returns only once the batch is on disk.
    pub fn write(&self, batch: WriteBatch) -> Result<u64> {
        self.check_batch(&batch)?;
        self.inner.submit(Op::Write(batch, false))
    }

    /// Applies `batch` to the log and the memtable without waiting for an fsync. Under
    /// `SyncMode::Always` the batch becomes visible to readers — and durable — only when a later
    /// [`persist`](Self::persist) covers its sequence number; under the other modes it is visible
    /// at once. Conditions that must see it meanwhile use [`get_latest`](Self::get_latest).
    ///
    /// This is how a driver keeps fsyncs off its event loop: apply writes as they come, run one
    /// `persist` at a time on a blocking thread, and answer each write once a `persist` returned
    /// a number at least as large as the write's.
    pub fn write_deferred(&self, batch: WriteBatch) -> Result<u64> {
        self.check_batch(&batch)?;
        self.inner.submit(Op::Write(batch, true))
    }

    /// Makes every write applied so far durable and visible (under `SyncMode::None` it only
    /// makes them visible, syncing nothing). Returns the sequence number it covers.
    pub fn persist(&self) -> Result<u64> {
        let i = &self.inner;
        if let Some(p) = i.poisoned.lock().clone() {
            return Err(Error::Background(format!(
                "writes disabled after a log failure: {p}"
            )));
        }
        let last =
            if i.opts.sync == SyncMode::None || crate::bugs::on(crate::bugs::Bug::AckBeforeFsync) {
                i.wal.lock().last_seq
            } else {
                i.sync_logs()?
            };
        i.visible_seq.fetch_max(last, Ordering::AcqRel);
        Ok(last)
    }

    /// The newest applied value of `key`, including deferred writes not yet persisted. For
    /// checking a condition in the same order the writes are applied; never for answering reads.
    pub fn get_latest(&self, key: &[u8]) -> Result<Option<(u64, Vec<u8>)>> {
        let sv = self.inner.sv.load();
        lookup(&sv, key, MAX_SEQ)
    }

    fn check_batch(&self, batch: &WriteBatch) -> Result<()> {
        let o = &self.inner.opts;
        if batch.is_empty() {
            return Err(Error::InvalidArgument("empty batch".into()));
        }
        for (_, k, v) in &batch.ops {
            if k.len() > o.max_key_bytes {
                return Err(Error::InvalidArgument(format!(
                    "key of {} bytes is over the {}-byte limit",
                    k.len(),
                    o.max_key_bytes
                )));
            }
            if v.len() > o.max_value_bytes {
                return Err(Error::InvalidArgument(format!(
                    "value of {} bytes is over the {}-byte limit",
                    v.len(),
                    o.max_value_bytes
                )));
            }
        }
        if batch.approximate_bytes() > wal::MAX_RECORD_BYTES / 2 {
            return Err(Error::InvalidArgument("batch too large".into()));
        }
        Ok(())
    }

    /// The value of `key`, if it has one.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.get_versioned(key)?.map(|(_, v)| v))
    }

    /// The value of `key` with the sequence number of the write that set it.
    pub fn get_versioned(&self, key: &[u8]) -> Result<Option<(u64, Vec<u8>)>> {
        let sv = self.inner.sv.load();
        let snap = self.inner.visible_seq.load(Ordering::Acquire);
        lookup(&sv, key, snap)
    }

    /// A consistent view at this moment, for several reads or scans.
    pub fn snapshot(&self) -> Snapshot {
        // The sequence number must belong to the super version: if a memtable switch slipped in
        // between the two loads, take both again.
        loop {
            let sv = self.inner.sv.load_full();
            let seq = self.inner.visible_seq.load(Ordering::Acquire);
            if Arc::ptr_eq(&sv, &self.inner.sv.load()) {
                return Snapshot { sv, seq };
            }
        }
    }

    /// A view of every write applied so far, durable or not (as `get_latest`): for an owner's
    /// bookkeeping on its own writes, never for answering reads.
    pub fn snapshot_latest(&self) -> Snapshot {
        Snapshot {
            sv: self.inner.sv.load_full(),
            seq: MAX_SEQ,
        }
    }

    /// Keys in `[start, end)` (per the bounds), in order, from one consistent snapshot.
    pub fn scan(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Result<DbIter> {
        self.snapshot().scan(start, end)
    }

    /// Keys that start with `prefix`, in order.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<DbIter> {
        self.snapshot().scan_prefix(prefix)
    }

    /// Freezes the memtable and waits until every frozen memtable is in a table.
    pub fn flush(&self) -> Result<()> {
        match self.inner.opts.background {
            Background::Manual => {
                // Nothing else will make room: do the pending work ourselves first.
                loop {
                    match self.inner.submit(Op::Rotate) {
                        Ok(_) => break,
                        Err(Error::WriteStall(why)) => {
                            if !(self.inner.flush_one()? || self.inner.compact_once()?) {
                                return Err(Error::WriteStall(why));
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
                while self.inner.flush_one()? {}
            }
            Background::Threads => {
                self.inner.submit(Op::Rotate)?;
                let mut bg = self.inner.bg.lock();
                loop {
                    if self.inner.sv.load().imms.is_empty() {
                        break;
                    }
                    if let Some(e) = bg.errors.get("flush") {
                        return Err(Error::Background(format!("flush: {e}")));
                    }
                    if bg.shutdown {
                        return Err(Error::Closed);
                    }
                    self.inner.bg_cv.wait(&mut bg);
                }
            }
        }
        Ok(())
    }

    /// Flushes, then merges every table into the deepest level, dropping overwritten versions
    /// and tombstones.
    pub fn compact(&self) -> Result<()> {
        self.flush()?;
        let _c = self.inner.compaction_lock.lock();
        let version = self.inner.sv.load().version.clone();
        let Some((out_level, numbers)) = compaction::plan_full(&version.shapes()) else {
            return Ok(());
        };
        let plan = CompactionPlan {
            level: out_level.saturating_sub(1),
            inputs: numbers,
            overlapping: Vec::new(),
            drop_tombstones: true,
            trivial_move: false,
            largest: Vec::new(),
        };
        self.inner.run_compaction(&plan, out_level)
    }

    /// Runs background work due now (flushes first, then compactions) until none is left.
    /// Returns how many units ran. With `Background::Threads` the threads do this already.
    pub fn do_background_work(&self) -> Result<usize> {
        let mut n = 0;
        while self.inner.flush_one()? {
            n += 1;
        }
        while self.inner.compact_once()? {
            n += 1;
        }
        Ok(n)
    }

    /// Whether a flush or a compaction is due. A driver that runs background work itself
    /// (`Background::Manual`) asks this to decide when to call
    /// [`do_background_work`](Self::do_background_work).
    pub fn background_pending(&self) -> bool {
        let i = &self.inner;
        if !i.sv.load().imms.is_empty() {
            return true;
        }
        let pointers = i.versions.lock();
        let version = i.sv.load().version.clone();
        compaction::pick(&version.shapes(), &i.level_config(), &pointers).is_some()
    }

    /// Runs at most one flush (the oldest frozen memtable). Returns whether it did.
    pub fn flush_step(&self) -> Result<bool> {
        self.inner.flush_one()
    }

    /// Runs at most one compaction. Returns whether it did.
    pub fn compact_step(&self) -> Result<bool> {
        self.inner.compact_once()
    }

    /// Makes every write so far durable (what the interval thread does each tick).
    pub fn sync_wal(&self) -> Result<()> {
        self.inner.sync_wal()
    }

    pub fn stats(&self) -> Stats {
        let i = &self.inner;
        let sv = i.sv.load();
        let c = &i.counters;
        Stats {
            last_seq: i.visible_seq.load(Ordering::Acquire),
            memtable_bytes: sv.mem.approximate_bytes() as u64
                + sv.imms
                    .iter()
                    .map(|m| m.approximate_bytes() as u64)
                    .sum::<u64>(),
            immutable_memtables: sv.imms.len(),
            tables_per_level: sv.version.levels.iter().map(Vec::len).collect(),
            bytes_per_level: sv
                .version
                .levels
                .iter()
                .map(|ts| ts.iter().map(|t| t.size()).sum())
                .collect(),
            table_bytes_total: sv.version.levels.iter().flatten().map(|t| t.size()).sum(),
            pinned_index_filter_bytes: sv
                .version
                .levels
                .iter()
                .flatten()
                .map(|t| t.pinned_bytes() as u64)
                .sum(),
            block_cache_bytes: i.cache.used_bytes(),
            flushes: c.flushes.load(Ordering::Relaxed),
            compactions: c.compactions.load(Ordering::Relaxed),
            trivial_moves: c.trivial_moves.load(Ordering::Relaxed),
            write_stalls: c.write_stalls.load(Ordering::Relaxed),
            flush_bytes: c.flush_bytes.load(Ordering::Relaxed),
            compaction_bytes_written: c.compaction_bytes_written.load(Ordering::Relaxed),
            background_errors: c.background_errors.load(Ordering::Relaxed),
            last_background_error: i.bg.lock().error(),
            wal_syncs: c.wal_syncs.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
        }
    }

    /// Stops background threads and syncs the WAL. Also done on drop.
    pub fn close(self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&self) -> Result<()> {
        {
            let mut bg = self.inner.bg.lock();
            bg.shutdown = true;
            self.inner.bg_cv.notify_all();
        }
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
        if self.inner.poisoned.lock().is_some() {
            return Ok(());
        }
        self.inner.sync_wal()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn lookup(sv: &SuperVersion, key: &[u8], snap: u64) -> Result<Option<(u64, Vec<u8>)>> {
    let found = |seq: u64, kind: Kind, v: Vec<u8>| match kind {
        Kind::Put => Some((seq, v)),
        Kind::Delete => None,
    };
    if let Some((seq, kind, v)) = sv.mem.get(key, snap) {
        return Ok(found(seq, kind, v));
    }
    for m in &sv.imms {
        if let Some((seq, kind, v)) = m.get(key, snap) {
            return Ok(found(seq, kind, v));
        }
    }
    let h = hash64(key);
    for t in &sv.version.levels[0] {
        if let Some((seq, kind, v)) = t.get(key, h)? {
            return Ok(found(seq, kind, v));
        }
    }
    for level in &sv.version.levels[1..] {
        let i = level.partition_point(|t| t.props().largest.as_slice() < key);
        if let Some(t) = level.get(i) {
            if let Some((seq, kind, v)) = t.get(key, h)? {
                return Ok(found(seq, kind, v));
            }
        }
    }
    Ok(None)
}

fn build_table(
    disk: &dyn Disk,
    mem: &Memtable,
    number: u64,
    opts: BuildOptions,
    cache: &Arc<BlockCache>,
) -> Result<Arc<Table>> {
    let name = table_name(number);
    let file = disk.create(&name).map_err(|e| Error::io(&name, e))?;
    let mut b = TableBuilder::new(file.clone(), name, opts);
    mem.for_each_newest(|k, seq, kind, v| b.add(k, seq, kind, v))?;
    b.finish()?;
    Ok(Arc::new(Table::open(file, number, cache.clone())?))
}

/// A consistent read-only view.
pub struct Snapshot {
    sv: Arc<SuperVersion>,
    seq: u64,
}

impl Snapshot {
    /// The sequence number this snapshot sees up to.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(lookup(&self.sv, key, self.seq)?.map(|(_, v)| v))
    }

    pub fn scan(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Result<DbIter> {
        let sv = &self.sv;
        let mut sources: Vec<Box<dyn Source>> = Vec::new();
        if !empty_range(start, end) {
            sources.push(Box::new(MemSource::new(
                sv.mem.clone(),
                self.seq,
                start,
                end,
            )));
            for m in &sv.imms {
                sources.push(Box::new(MemSource::new(m.clone(), self.seq, start, end)));
            }
            for t in &sv.version.levels[0] {
                sources.push(Box::new(TableIter::new(t.clone(), start, true)?));
            }
            for level in &sv.version.levels[1..] {
                if !level.is_empty() {
                    sources.push(Box::new(LevelSource::new(level.clone(), start, true)?));
                }
            }
        }
        Ok(DbIter {
            merge: MergeIter::new(sources),
            end: end.map(<[u8]>::to_vec),
            done: false,
        })
    }

    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<DbIter> {
        match prefix_end(prefix) {
            Some(end) => self.scan(Bound::Included(prefix), Bound::Excluded(&end)),
            None => self.scan(Bound::Included(prefix), Bound::Unbounded),
        }
    }
}

/// A key, the sequence number of the write that set it, and its value.
pub type Versioned = (Vec<u8>, u64, Vec<u8>);

/// Live key-value pairs in key order. Yields an error (and then stops) if a table is damaged.
pub struct DbIter {
    merge: MergeIter,
    end: Bound<Vec<u8>>,
    done: bool,
}

impl DbIter {
    /// Like `next`, but also gives each pair's sequence number.
    pub fn next_versioned(&mut self) -> Option<Result<Versioned>> {
        if self.done {
            return None;
        }
        loop {
            let e = match self.merge.next_entry() {
                Ok(Some(e)) => e,
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                Err(err) => {
                    self.done = true;
                    return Some(Err(err));
                }
            };
            let past_end = match &self.end {
                Bound::Included(end) => e.key > *end,
                Bound::Excluded(end) => e.key >= *end,
                Bound::Unbounded => false,
            };
            if past_end {
                self.done = true;
                return None;
            }
            if e.kind == Kind::Put {
                return Some(Ok((e.key, e.seq, e.value)));
            }
        }
    }
}

impl Iterator for DbIter {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_versioned().map(|r| r.map(|(k, _, v)| (k, v)))
    }
}

impl Inner {
    fn build_opts(&self) -> BuildOptions {
        BuildOptions {
            block_bytes: self.opts.block_bytes,
            bloom_bits_per_key: self.opts.bloom_bits_per_key,
        }
    }

    fn level_config(&self) -> LevelConfig {
        LevelConfig {
            l0_trigger: self.opts.l0_compaction_trigger,
            level1_bytes: self.opts.level1_bytes,
            multiplier: self.opts.level_multiplier,
            num_levels: self.opts.num_levels,
        }
    }

    /// Queues `op`, leading the group commit if no one else is.
    fn submit(&self, op: Op) -> Result<u64> {
        let mut q = self.queue.lock();
        let id = q.next_id;
        q.next_id += 1;
        if !q.leader && q.pending.is_empty() {
            // Uncontended: lead a group of one without going through the queue.
            q.leader = true;
            drop(q);
            let mut one = [(id, op)];
            let result = self.commit_group(&mut one).pop();
            let mut q = self.queue.lock();
            q.leader = false;
            // Writers that queued meanwhile wait for a leader.
            self.queue_cv.notify_all();
            drop(q);
            return result.expect("one result for a group of one");
        }
        q.pending.push_back((id, op));
        loop {
            if let Some(r) = q.done.remove(&id) {
                return r;
            }
            if !q.leader {
                break;
            }
            self.queue_cv.wait(&mut q);
        }
        q.leader = true;
        let mut group: Vec<(u64, Op)> = q.pending.drain(..).collect();
        drop(q);
        let results = self.commit_group(&mut group);
        let mut q = self.queue.lock();
        let mut mine = None;
        for ((gid, _), r) in group.iter().zip(results) {
            if *gid == id {
                mine = Some(r);
            } else {
                q.done.insert(*gid, r);
            }
        }
        q.leader = false;
        self.queue_cv.notify_all();
        drop(q);
        mine.expect("the leader's own request is in its group")
    }

    /// Logs and applies a group. The batches' keys and values move into the memtable.
    fn commit_group(&self, group: &mut [(u64, Op)]) -> Vec<Result<u64>> {
        let fail_all = |e: Error| group.iter().map(|_| Err(clone_err(&e))).collect();
        if let Some(p) = self.poisoned.lock().clone() {
            return fail_all(Error::Background(format!(
                "writes disabled after a log failure: {p}"
            )));
        }
        let rotate = group.iter().any(|(_, op)| matches!(op, Op::Rotate));
        if let Err(e) = self.make_room(rotate) {
            return fail_all(e);
        }
        let mut wal = self.wal.lock();
        let wal = &mut *wal;
        let first_seq = wal.last_seq + 1;
        let mut seq = first_seq;
        let mut results = Vec::with_capacity(group.len());
        wal.buf.clear();
        for (_, op) in group.iter() {
            match op {
                Op::Write(b, _) => {
                    wal.payload.clear();
                    b.encode(seq, &mut wal.payload);
                    frame_record(&mut wal.buf, WAL_TYPE_BATCH, &wal.payload);
                    seq += b.len() as u64;
                    results.push(Ok(seq - 1));
                }
                Op::Rotate => results.push(Ok(wal.last_seq)),
            }
        }
        if seq == first_seq {
            return results;
        }
        if seq > MAX_SEQ {
            return fail_all(Error::InvalidArgument("sequence numbers exhausted".into()));
        }
        // Deferred writes wait for `persist`; one ordinary durable write syncs the whole group.
        let sync_now = self.opts.sync == SyncMode::Always
            && group
                .iter()
                .any(|(_, op)| matches!(op, Op::Write(_, false)));
        let written = wal.writer.write(&wal.buf).and_then(|()| {
            if sync_now {
                for (file, name) in wal.retired.drain(..) {
                    file.sync().map_err(|e| Error::io(name, e))?;
                }
                self.counters.wal_syncs.fetch_add(1, Ordering::Relaxed);
                wal.writer.sync()
            } else {
                Ok(())
            }
        });
        if let Err(e) = written {
            *self.poisoned.lock() = Some(e.to_string());
            return fail_all(e);
        }
        let sv = self.sv.load();
        debug_assert!(sv.mem.max_seq() < first_seq);
        let mut s = first_seq;
        for (_, op) in group.iter_mut() {
            if let Op::Write(b, _) = op {
                for (kind, k, v) in std::mem::take(&mut b.ops) {
                    sv.mem.insert(k, s, kind, v);
                    s += 1;
                }
            }
        }
        wal.last_seq = seq - 1;
        self.counters
            .writes
            .fetch_add(group.len() as u64, Ordering::Relaxed);
        if sync_now || self.opts.sync != SyncMode::Always {
            self.visible_seq.fetch_max(seq - 1, Ordering::AcqRel);
        }
        results
    }

    /// Freezes the memtable when it is full (or `force`d and non-empty), stalling first if too
    /// much background work is pending.
    fn make_room(&self, force: bool) -> Result<()> {
        if !force && self.sv.load().mem.approximate_bytes() < self.opts.memtable_bytes {
            return Ok(());
        }
        let mut counted = false;
        loop {
            let mut bg = self.bg.lock();
            let sv = self.sv.load_full();
            let full = sv.mem.approximate_bytes() >= self.opts.memtable_bytes;
            let forced = force && !sv.mem.is_empty();
            if !full && !forced {
                return Ok(());
            }
            let l0 = sv.version.levels[0].len();
            let behind = sv.imms.len() >= self.opts.max_immutable_memtables
                || l0 >= self.opts.l0_stop_writes;
            if !behind {
                drop(bg);
                return self.rotate();
            }
            if !counted {
                self.counters.write_stalls.fetch_add(1, Ordering::Relaxed);
                counted = true;
            }
            let why = format!(
                "{} frozen memtables (limit {}) and {} level-0 tables (limit {}) await background work",
                sv.imms.len(),
                self.opts.max_immutable_memtables,
                l0,
                self.opts.l0_stop_writes
            );
            drop(sv);
            match self.opts.stall {
                StallPolicy::Refuse => return Err(Error::WriteStall(why)),
                StallPolicy::Block => {
                    if let Some(e) = bg.error() {
                        return Err(Error::Background(format!("{e} (while {why})")));
                    }
                    if bg.shutdown {
                        return Err(Error::Closed);
                    }
                    self.bg_cv.wait(&mut bg);
                }
            }
        }
    }

    fn rotate(&self) -> Result<()> {
        let mut wal = self.wal.lock();
        // The retired log is synced later, off the write path (by the next persist or sync, or
        // by the flush of its memtable), never here: an fsync here would stall every writer.
        let number = self.next_file.fetch_add(1, Ordering::SeqCst);
        let name = wal_name(number);
        let file = self.disk.create(&name).map_err(|e| Error::io(&name, e))?;
        self.disk.sync_dir().map_err(|e| Error::io(".", e))?;
        let old = std::mem::replace(&mut wal.writer, WalWriter::new(file, number));
        wal.retired.push((old.file, old.name));
        {
            let _g = self.sv_lock.lock();
            let cur = self.sv.load_full();
            let mut imms = Vec::with_capacity(cur.imms.len() + 1);
            imms.push(cur.mem.clone());
            imms.extend(cur.imms.iter().cloned());
            self.sv.store(Arc::new(SuperVersion {
                mem: Arc::new(Memtable::new(number)),
                imms,
                version: cur.version.clone(),
            }));
        }
        drop(wal);
        let _bg = self.bg.lock();
        self.bg_cv.notify_all();
        Ok(())
    }

    fn sync_wal(&self) -> Result<()> {
        self.sync_logs().map(|_| ())
    }

    /// Syncs the retired logs and the current one, outside the log's lock (writers keep
    /// appending meanwhile). Returns the sequence number now durable: every write up to it is in
    /// one of the files synced. A failure poisons writes: after a failed fsync the kernel may have
    /// dropped the dirty pages, so the log could have a hole.
    fn sync_logs(&self) -> Result<u64> {
        let (last, mut files) = {
            let wal = self.wal.lock();
            let mut files = wal.retired.clone();
            files.push((wal.writer.file.clone(), wal.writer.name.clone()));
            (wal.last_seq, files)
        };
        for (file, name) in &files {
            self.counters.wal_syncs.fetch_add(1, Ordering::Relaxed);
            file.sync()
                .map_err(|e| Error::io(name.clone(), e))
                .inspect_err(|e| self.poison(e))?;
        }
        files.pop();
        if !files.is_empty() {
            let mut wal = self.wal.lock();
            wal.retired
                .retain(|(_, n)| !files.iter().any(|(_, m)| m == n));
        }
        Ok(last)
    }

    fn poison(&self, e: &Error) {
        let mut p = self.poisoned.lock();
        if p.is_none() {
            *p = Some(e.to_string());
        }
    }

    fn manifest_state(&self, version: &Version, log_number: u64, flushed: u64) -> ManifestState {
        ManifestState {
            next_file: self.next_file.load(Ordering::SeqCst),
            last_seq: flushed,
            log_number,
            tables: version.records(),
        }
    }

    /// Installs a new table set (already written to the manifest) into the super version.
    fn swap_version(&self, version: Arc<Version>, flushed: Option<&Arc<Memtable>>) {
        {
            let _g = self.sv_lock.lock();
            let cur = self.sv.load_full();
            let imms = cur
                .imms
                .iter()
                .filter(|m| flushed.is_none_or(|f| !Arc::ptr_eq(m, f)))
                .cloned()
                .collect();
            self.sv.store(Arc::new(SuperVersion {
                mem: cur.mem.clone(),
                imms,
                version,
            }));
        }
    }

    /// Wakes background threads and stalled writers. Never called with `versions` held
    /// (the compaction thread takes `bg` then `versions`).
    fn notify_bg(&self) {
        let _bg = self.bg.lock();
        self.bg_cv.notify_all();
    }

    /// Flushes the oldest frozen memtable into a level-0 table. Returns false if there was none.
    fn flush_one(&self) -> Result<bool> {
        let Some(l) = self.opts.listener.0.clone() else {
            return self.flush_one_inner();
        };
        if self.sv.load().imms.is_empty() {
            return Ok(false);
        }
        let before = self.counters.flush_bytes.load(Ordering::Relaxed);
        l.flush_begin();
        let r = self.flush_one_inner();
        let bytes = self.counters.flush_bytes.load(Ordering::Relaxed) - before;
        l.flush_end(bytes, r.is_ok());
        r
    }

    fn flush_one_inner(&self) -> Result<bool> {
        let _f = self.flush_lock.lock();
        let Some(imm) = self.sv.load().imms.last().cloned() else {
            return Ok(false);
        };
        if self.opts.sync == SyncMode::Always {
            // The table must hold only writes its readers may see: make the frozen memtable's
            // writes durable (syncing its retired log) and publish them first.
            self.sync_logs()?;
            self.visible_seq.fetch_max(imm.max_seq(), Ordering::AcqRel);
        }
        let table = if imm.is_empty() {
            None
        } else {
            let number = self.next_file.fetch_add(1, Ordering::SeqCst);
            match build_table(&*self.disk, &imm, number, self.build_opts(), &self.cache) {
                Ok(t) => Some(t),
                Err(e) => {
                    let _ = self.disk.remove(&table_name(number));
                    return Err(e);
                }
            }
        };
        let vs = self.versions.lock();
        let cur = self.sv.load_full();
        let mut version = (*cur.version).clone();
        if let Some(t) = &table {
            version.levels[0].insert(0, t.clone());
        }
        // The oldest memtable still unflushed owns the oldest WAL still needed.
        let log_number = cur
            .imms
            .iter()
            .rev()
            .find(|m| !Arc::ptr_eq(m, &imm))
            .map(|m| m.wal_number)
            .unwrap_or(cur.mem.wal_number);
        drop(cur);
        let flushed = self.flushed_seq.load(Ordering::Acquire).max(imm.max_seq());
        let state = self.manifest_state(&version, log_number, flushed);
        if let Err(f) = manifest::write(&*self.disk, &state) {
            if f.renamed {
                // The directory may already name the new table: keep it, install it, and stop
                // writing, since the directory's state is unknown.
                self.flushed_seq.fetch_max(flushed, Ordering::AcqRel);
                self.swap_version(Arc::new(version), Some(&imm));
                drop(vs);
                self.poison(&f.error);
                self.notify_bg();
            } else if let Some(t) = &table {
                let _ = self.disk.remove(t.name());
            }
            return Err(f.error);
        }
        self.flushed_seq.fetch_max(flushed, Ordering::AcqRel);
        self.swap_version(Arc::new(version), Some(&imm));
        drop(vs);
        self.notify_bg();
        self.counters.flushes.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = &table {
            self.counters
                .flush_bytes
                .fetch_add(t.size(), Ordering::Relaxed);
        }
        // A failed removal only leaves a file that the next open deletes.
        let _ = self.disk.remove(&wal_name(imm.wal_number));
        Ok(true)
    }

    /// Runs one compaction if one is due. Returns false if none was.
    fn compact_once(&self) -> Result<bool> {
        let _c = self.compaction_lock.lock();
        let plan = {
            let pointers = self.versions.lock();
            let version = self.sv.load().version.clone();
            compaction::pick(&version.shapes(), &self.level_config(), &pointers)
        };
        let Some(plan) = plan else { return Ok(false) };
        let listener = self.opts.listener.0.clone();
        let before = self
            .counters
            .compaction_bytes_written
            .load(Ordering::Relaxed);
        if let Some(l) = &listener {
            l.compaction_begin();
        }
        let r = self.run_compaction(&plan, plan.level + 1);
        if let Some(l) = &listener {
            let bytes = self
                .counters
                .compaction_bytes_written
                .load(Ordering::Relaxed)
                - before;
            l.compaction_end(bytes, r.is_ok());
        }
        r?;
        self.versions.lock()[plan.level] = plan.largest.clone();
        Ok(true)
    }

    /// Executes `plan` into `out_level`. The caller holds `compaction_lock`.
    fn run_compaction(&self, plan: &CompactionPlan, out_level: usize) -> Result<()> {
        let version = self.sv.load().version.clone();
        let wanted: std::collections::HashSet<u64> = plan
            .inputs
            .iter()
            .chain(plan.overlapping.iter())
            .copied()
            .collect();
        // Inputs grouped by level, in the version's order.
        let by_level: Vec<Vec<Arc<Table>>> = version
            .levels
            .iter()
            .map(|ts| {
                ts.iter()
                    .filter(|t| wanted.contains(&t.number))
                    .cloned()
                    .collect()
            })
            .collect();
        let found: usize = by_level.iter().map(Vec::len).sum();
        if found != wanted.len() {
            return Err(Error::Background(
                "compaction inputs are no longer in the table set".into(),
            ));
        }

        let mut outputs: Vec<Arc<Table>> = Vec::new();
        if plan.trivial_move {
            outputs = by_level.iter().flatten().cloned().collect();
            self.counters.trivial_moves.fetch_add(1, Ordering::Relaxed);
        } else {
            let mut sources: Vec<Box<dyn Source>> = Vec::new();
            for (level, ts) in by_level.iter().enumerate() {
                if level == 0 {
                    for t in ts {
                        sources.push(Box::new(TableIter::new(
                            t.clone(),
                            Bound::Unbounded,
                            false,
                        )?));
                    }
                } else if !ts.is_empty() {
                    sources.push(Box::new(LevelSource::new(
                        ts.clone(),
                        Bound::Unbounded,
                        false,
                    )?));
                }
            }
            let mut merge = MergeIter::new(sources);
            let mut builder: Option<(u64, TableBuilder, Arc<dyn crate::engine::disk::DiskFile>)> =
                None;
            // A table taken out of `builder` and not yet in `outputs`.
            let mut pending: Option<u64> = None;
            let result = (|| -> Result<()> {
                while let Some(Entry {
                    key,
                    seq,
                    kind,
                    value,
                }) = merge.next_entry()?
                {
                    if kind == Kind::Delete
                        && (plan.drop_tombstones
                            || crate::bugs::on(crate::bugs::Bug::DropTombstoneEarly))
                    {
                        continue;
                    }
                    if builder.is_none() {
                        let number = self.next_file.fetch_add(1, Ordering::SeqCst);
                        let name = table_name(number);
                        let file = self.disk.create(&name).map_err(|e| Error::io(&name, e))?;
                        builder = Some((
                            number,
                            TableBuilder::new(file.clone(), name, self.build_opts()),
                            file,
                        ));
                    }
                    let (_, b, _) = builder.as_mut().expect("just set");
                    b.add(&key, seq, kind, &value)?;
                    if b.estimated_size() >= self.opts.table_bytes {
                        let (number, b, file) = builder.take().expect("just used");
                        pending = Some(number);
                        b.finish()?;
                        outputs.push(Arc::new(Table::open(file, number, self.cache.clone())?));
                        pending = None;
                    }
                }
                if let Some((number, b, file)) = builder.take() {
                    pending = Some(number);
                    b.finish()?;
                    outputs.push(Arc::new(Table::open(file, number, self.cache.clone())?));
                    pending = None;
                }
                Ok(())
            })();
            if let Err(e) = result {
                for t in &outputs {
                    let _ = self.disk.remove(t.name());
                }
                for number in builder.map(|(n, _, _)| n).into_iter().chain(pending) {
                    let _ = self.disk.remove(&table_name(number));
                }
                return Err(e);
            }
            let written: u64 = outputs.iter().map(|t| t.size()).sum();
            self.counters
                .compaction_bytes_written
                .fetch_add(written, Ordering::Relaxed);
        }

        // Install: inputs out, outputs in at out_level.
        let vs = self.versions.lock();
        let cur = self.sv.load_full();
        let mut next = (*cur.version).clone();
        for level in next.levels.iter_mut() {
            level.retain(|t| !wanted.contains(&t.number));
        }
        next.levels[out_level].extend(outputs.iter().cloned());
        next.levels[out_level].sort_by(|a, b| a.props().smallest.cmp(&b.props().smallest));
        debug_assert!(next.levels[out_level]
            .windows(2)
            .all(|w| w[0].props().largest < w[1].props().smallest));
        let log_number = cur
            .imms
            .last()
            .map(|m| m.wal_number)
            .unwrap_or(cur.mem.wal_number);
        drop(cur);
        let state =
            self.manifest_state(&next, log_number, self.flushed_seq.load(Ordering::Acquire));
        if let Err(f) = manifest::write(&*self.disk, &state) {
            if f.renamed {
                // The directory may name the outputs already: keep every file, install the new
                // set, and stop writing (the next open deletes what no manifest names).
                self.swap_version(Arc::new(next), None);
                drop(vs);
                self.poison(&f.error);
                self.notify_bg();
            } else if !plan.trivial_move {
                for t in &outputs {
                    let _ = self.disk.remove(t.name());
                }
            }
            return Err(f.error);
        }
        self.swap_version(Arc::new(next), None);
        drop(vs);
        self.notify_bg();
        self.counters.compactions.fetch_add(1, Ordering::Relaxed);
        if !plan.trivial_move {
            // The manifest no longer names them; open handles keep reads of older snapshots
            // working until they are dropped.
            // A failed removal only leaves a file that the next open deletes.
            for t in by_level.iter().flatten() {
                let _ = self.disk.remove(t.name());
            }
        }
        Ok(())
    }

    fn record_bg_error(&self, what: &'static str, e: &str) {
        self.counters
            .background_errors
            .fetch_add(1, Ordering::Relaxed);
        let mut bg = self.bg.lock();
        bg.errors.insert(what, e.to_string());
        self.bg_cv.notify_all();
    }

    /// Runs one background job, turning an error or a panic into a recorded error (cleared by
    /// the job's next success), so that neither the thread nor writers waiting on it silently die.
    /// Returns whether the job succeeded.
    fn run_job(&self, what: &'static str, job: impl FnOnce() -> Result<bool>) -> bool {
        let err = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)) {
            Ok(Ok(_)) => {
                self.bg.lock().errors.remove(what);
                return true;
            }
            Ok(Err(e)) => e.to_string(),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                format!("panicked: {msg}")
            }
        };
        self.record_bg_error(what, &err);
        false
    }

    /// After a failed job: pause before retrying (unless shutting down).
    fn back_off(&self, pause: Duration) {
        let mut bg = self.bg.lock();
        if !bg.shutdown {
            self.bg_cv.wait_for(&mut bg, pause);
        }
    }

    fn flush_loop(&self) {
        loop {
            {
                let mut bg = self.bg.lock();
                while !bg.shutdown && self.sv.load().imms.is_empty() {
                    self.bg_cv.wait(&mut bg);
                }
                if bg.shutdown {
                    return;
                }
            }
            if !self.run_job("flush", || self.flush_one()) {
                self.back_off(Duration::from_millis(100));
            }
        }
    }

    fn compaction_loop(&self) {
        loop {
            {
                let mut bg = self.bg.lock();
                loop {
                    if bg.shutdown {
                        return;
                    }
                    let due = {
                        let pointers = self.versions.lock();
                        let version = self.sv.load().version.clone();
                        compaction::pick(&version.shapes(), &self.level_config(), &pointers)
                            .is_some()
                    };
                    if due {
                        break;
                    }
                    self.bg_cv.wait(&mut bg);
                }
            }
            // A failed compaction leaves the old tables in place; flushes go on.
            if !self.run_job("compaction", || self.compact_once()) {
                self.back_off(Duration::from_millis(500));
            }
        }
    }

    fn interval_sync_loop(&self, every: Duration) {
        loop {
            {
                let mut bg = self.bg.lock();
                if bg.shutdown {
                    return;
                }
                self.bg_cv.wait_for(&mut bg, every);
                if bg.shutdown {
                    return;
                }
            }
            self.run_job("wal sync", || self.sync_wal().map(|()| true));
        }
    }
}
