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

mod background;
mod open;
mod write;

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
    /// The next log, created and made durable in the directory ahead of time (by background
    /// work), so a memtable rotation swaps files without any file or directory work on the
    /// writer's path. Numbered above the current log; at most one.
    spare: Option<WalWriter>,
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
    /// Held while the spare log is made, and by a rotation that may make one itself: the spare
    /// must be numbered above the log it follows.
    spare_lock: Mutex<()>,
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
        let mut n = usize::from(self.inner.prepare_spare_log()?);
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
        if !i.sv.load().imms.is_empty() || i.wal.lock().spare.is_none() {
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
}
