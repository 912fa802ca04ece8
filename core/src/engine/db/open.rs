//! Opening the engine: read the manifest, open and verify every table, replay the logs the
//! manifest does not cover, write what they held as a level-0 table, start a fresh log, and
//! remove leftovers.

use super::*;
use crate::engine::disk::DiskFile;

impl Db {
    /// Opens (or creates) the database on `disk`, replaying its WAL.
    pub fn open(disk: Arc<dyn Disk>, opts: Options) -> Result<Db> {
        opts.validate()?;
        let cache = Arc::new(BlockCache::new(opts.block_cache_bytes));
        disk.remove("MANIFEST.tmp")
            .map_err(|e| Error::io("MANIFEST.tmp", e))?;
        let files = disk.list().map_err(|e| Error::io(".", e))?;
        let state = read_or_create_manifest(&*disk, &files)?;
        let (levels, tables_max_seq) = open_tables(&*disk, &state, &opts, &cache)?;
        let mut last_seq = state.last_seq.max(tables_max_seq);
        let mut next_file = first_free_number(&files, state.next_file);

        let (mem, recovery, replayed_upto) = replay_logs(&*disk, &files, &state)?;
        last_seq = last_seq.max(replayed_upto);
        let mut levels = levels;

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
        let spare_number = next_file + 1;
        next_file += 2;
        let version = Version { levels };
        let logs = start_logs(
            &*disk,
            &version,
            next_file,
            last_seq,
            wal_number,
            spare_number,
        )?;
        remove_leftovers(&*disk, &files, &version, wal_number)?;

        let inner = Arc::new(new_inner(
            disk, cache, version, logs, last_seq, next_file, opts,
        ));
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

    pub(super) fn spawn_threads(&self) {
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
}

/// The next file number that nothing in the directory uses: `from` (the manifest's), or past
/// any table or log found there, so that a file the manifest does not know of (left by a crash)
/// is never overwritten.
fn first_free_number(files: &[String], from: u64) -> u64 {
    let mut next_file = from;
    for f in files {
        if let Some(n) = parse_number(f, ".sst").or_else(|| parse_number(f, ".wal")) {
            next_file = next_file.max(n + 1);
        }
    }
    next_file
}

/// The log (and its spare) that [`start_logs`] created, for the new engine's WAL state.
struct FreshLogs {
    wal: Arc<dyn DiskFile>,
    wal_number: u64,
    spare: Arc<dyn DiskFile>,
    spare_number: u64,
}

/// Writes the manifest that covers everything replayed (`version`, with the new log
/// `wal_number`), then creates that log and its spare, and syncs the directory. The manifest
/// first: once it is written it covers everything replayed, and the old logs no longer count.
fn start_logs(
    disk: &dyn Disk,
    version: &Version,
    next_file: u64,
    last_seq: u64,
    wal_number: u64,
    spare_number: u64,
) -> Result<FreshLogs> {
    manifest::write(
        disk,
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
    let spare_file = disk
        .create(&wal_name(spare_number))
        .map_err(|e| Error::io(wal_name(spare_number), e))?;
    disk.sync_dir().map_err(|e| Error::io(".", e))?;
    Ok(FreshLogs {
        wal: wal_file,
        wal_number,
        spare: spare_file,
        spare_number,
    })
}

/// Removes the logs older than `wal_number` and the tables `version` does not hold: once the
/// new manifest is written, everything older is covered by it and only takes space.
fn remove_leftovers(
    disk: &dyn Disk,
    files: &[String],
    version: &Version,
    wal_number: u64,
) -> Result<()> {
    let live: std::collections::HashSet<u64> =
        version.levels.iter().flatten().map(|t| t.number).collect();
    for f in files {
        let stale = parse_number(f, ".wal").is_some_and(|n| n < wal_number)
            || parse_number(f, ".sst").is_some_and(|n| !live.contains(&n));
        if stale {
            disk.remove(f).map_err(|e| Error::io(f, e))?;
        }
    }
    Ok(())
}

/// The engine's shared state as it starts: an empty memtable over the fresh log, every
/// sequence number up to `last_seq` visible and flushed, and no work queued. Apart from
/// [`Db::open`] because it is a long list of initial values, not a step of opening.
fn new_inner(
    disk: Arc<dyn Disk>,
    cache: Arc<BlockCache>,
    version: Version,
    logs: FreshLogs,
    last_seq: u64,
    next_file: u64,
    opts: Options,
) -> Inner {
    let sv = SuperVersion {
        mem: Arc::new(Memtable::new(logs.wal_number)),
        imms: Vec::new(),
        version: Arc::new(version),
    };
    Inner {
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
            writer: WalWriter::new(logs.wal, logs.wal_number),
            retired: Vec::new(),
            spare: Some(WalWriter::new(logs.spare, logs.spare_number)),
            last_seq,
            buf: Vec::new(),
            payload: Vec::new(),
        }),
        versions: Mutex::new(vec![Vec::new(); opts.num_levels]),
        flush_lock: Mutex::new(()),
        compaction_lock: Mutex::new(()),
        spare_lock: Mutex::new(()),
        bg: Mutex::new(BgState::default()),
        bg_cv: Condvar::new(),
        poisoned: Mutex::new(None),
        counters: Counters::default(),
        opts,
    }
}

/// The manifest, or a new one for an empty directory (a directory with tables or logs but no
/// manifest is damaged, not new).
fn read_or_create_manifest(disk: &dyn Disk, files: &[String]) -> Result<ManifestState> {
    Ok(match manifest::read(disk)? {
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
            manifest::write(disk, &s).map_err(|f| f.error)?;
            s
        }
    })
}

/// Opens and verifies every table the manifest names; returns the levels (level 0 newest
/// first, deeper levels sorted and disjoint) and the largest sequence number in them.
fn open_tables(
    disk: &dyn Disk,
    state: &ManifestState,
    opts: &Options,
    cache: &Arc<BlockCache>,
) -> Result<(Vec<Vec<Arc<Table>>>, u64)> {
    let mut levels: Vec<Vec<Arc<Table>>> = vec![Vec::new(); opts.num_levels];
    let mut max_seq = 0;
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
        max_seq = max_seq.max(p.max_seq);
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
    Ok((levels, max_seq))
}

/// Replays every log the manifest does not cover, in order, into one memtable. Returns it, what
/// recovery found, and the last sequence number replayed (the manifest's when nothing was).
fn replay_logs(
    disk: &dyn Disk,
    files: &[String],
    state: &ManifestState,
) -> Result<(Arc<Memtable>, Recovery, u64)> {
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
            recovery.batches += 1;
            Ok(())
        })?;
        if let Some(offset) = gap.take() {
            recovery.torn_tail = Some((name.clone(), offset));
        } else if let ReplayEnd::TornTail { offset, .. } = end {
            recovery.torn_tail = Some((name.clone(), offset));
        }
    }
    Ok((mem, recovery, expected - 1))
}
