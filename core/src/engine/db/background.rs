//! Background work: flushing frozen memtables into level-0 tables, compacting tables, and
//! installing each result (manifest, then super version); the engine's own threads, when it
//! has them, are thin loops over the same functions.

use std::collections::HashSet;

use super::*;

use crate::engine::disk::DiskFile;

impl Inner {
    pub(super) fn manifest_state(
        &self,
        version: &Version,
        log_number: u64,
        flushed: u64,
    ) -> ManifestState {
        ManifestState {
            next_file: self.next_file.load(Ordering::SeqCst),
            last_seq: flushed,
            log_number,
            tables: version.records(),
        }
    }

    /// Installs a new table set (already written to the manifest) into the super version.
    pub(super) fn swap_version(&self, version: Arc<Version>, flushed: Option<&Arc<Memtable>>) {
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
    pub(super) fn notify_bg(&self) {
        let _bg = self.bg.lock();
        self.bg_cv.notify_all();
    }

    /// Flushes the oldest frozen memtable into a level-0 table. Returns false if there was none.
    pub(super) fn flush_one(&self) -> Result<bool> {
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

    pub(super) fn flush_one_inner(&self) -> Result<bool> {
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
    pub(super) fn compact_once(&self) -> Result<bool> {
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
    pub(super) fn run_compaction(&self, plan: &CompactionPlan, out_level: usize) -> Result<()> {
        let version = self.sv.load().version.clone();
        let wanted: HashSet<u64> = plan
            .inputs
            .iter()
            .chain(plan.overlapping.iter())
            .copied()
            .collect();
        let by_level = compaction_inputs(&version, &wanted)?;
        let outputs = if plan.trivial_move {
            let outputs = by_level.iter().flatten().cloned().collect();
            self.counters.trivial_moves.fetch_add(1, Ordering::Relaxed);
            outputs
        } else {
            self.merge_inputs(plan, &by_level)?
        };
        self.install_compaction(plan, out_level, &wanted, &outputs, &by_level)
    }

    /// Writes the merged inputs as new tables. A failure removes every file written so far:
    /// no manifest names them, and nothing else would remove them before the next open.
    fn merge_inputs(
        &self,
        plan: &CompactionPlan,
        by_level: &[Vec<Arc<Table>>],
    ) -> Result<Vec<Arc<Table>>> {
        let mut merge = MergeIter::new(merge_sources(by_level)?);
        let mut outputs = CompactionOutputs::default();
        if let Err(e) = self.write_compaction_outputs(plan, &mut merge, &mut outputs) {
            outputs.remove_files(&*self.disk);
            return Err(e);
        }
        let outputs = outputs.done;
        let written: u64 = outputs.iter().map(|t| t.size()).sum();
        self.counters
            .compaction_bytes_written
            .fetch_add(written, Ordering::Relaxed);
        Ok(outputs)
    }

    /// The merge loop proper, kept apart from its clean-up so that every early return on an
    /// error leaves `outputs` naming each file it created.
    fn write_compaction_outputs(
        &self,
        plan: &CompactionPlan,
        merge: &mut MergeIter,
        outputs: &mut CompactionOutputs,
    ) -> Result<()> {
        while let Some(Entry {
            key,
            seq,
            kind,
            value,
        }) = merge.next_entry()?
        {
            if kind == Kind::Delete
                && (plan.drop_tombstones || crate::bugs::on(crate::bugs::Bug::DropTombstoneEarly))
            {
                continue;
            }
            if outputs.open.is_none() {
                outputs.open = Some(self.create_compaction_output()?);
            }
            let (_, b, _) = outputs.open.as_mut().expect("just set");
            b.add(&key, seq, kind, &value)?;
            if b.estimated_size() >= self.opts.table_bytes {
                self.finish_compaction_output(outputs)?;
            }
        }
        self.finish_compaction_output(outputs)
    }

    /// Starts the next output table. Its number is taken before the file exists, so a failed
    /// create wastes a number but leaves nothing to remove.
    fn create_compaction_output(&self) -> Result<OpenOutput> {
        let number = self.next_file.fetch_add(1, Ordering::SeqCst);
        let name = table_name(number);
        let file = self.disk.create(&name).map_err(|e| Error::io(&name, e))?;
        Ok((
            number,
            TableBuilder::new(file.clone(), name, self.build_opts()),
            file,
        ))
    }

    /// Finishes the open output table, if any, and reopens it for reading. While it is neither
    /// open nor done its number stays in `pending`, so a failure here still removes its file.
    fn finish_compaction_output(&self, outputs: &mut CompactionOutputs) -> Result<()> {
        let Some((number, b, file)) = outputs.open.take() else {
            return Ok(());
        };
        outputs.pending = Some(number);
        b.finish()?;
        outputs
            .done
            .push(Arc::new(Table::open(file, number, self.cache.clone())?));
        outputs.pending = None;
        Ok(())
    }

    /// Installs the result (inputs out, outputs in at `out_level`): manifest first, super
    /// version second, and only then removes the inputs, so that a table is deleted only once
    /// no manifest names it.
    fn install_compaction(
        &self,
        plan: &CompactionPlan,
        out_level: usize,
        wanted: &HashSet<u64>,
        outputs: &[Arc<Table>],
        by_level: &[Vec<Arc<Table>>],
    ) -> Result<()> {
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
                for t in outputs {
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

    pub(super) fn record_bg_error(&self, what: &'static str, e: &str) {
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
    pub(super) fn run_job(&self, what: &'static str, job: impl FnOnce() -> Result<bool>) -> bool {
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
    pub(super) fn back_off(&self, pause: Duration) {
        let mut bg = self.bg.lock();
        if !bg.shutdown {
            self.bg_cv.wait_for(&mut bg, pause);
        }
    }

    pub(super) fn flush_loop(&self) {
        loop {
            {
                let mut bg = self.bg.lock();
                while !bg.shutdown
                    && self.sv.load().imms.is_empty()
                    && self.wal.lock().spare.is_some()
                {
                    self.bg_cv.wait(&mut bg);
                }
                if bg.shutdown {
                    return;
                }
            }
            // The next log first: writers cannot switch memtables without it.
            if !self.run_job("log preparation", || self.prepare_spare_log()) {
                self.back_off(Duration::from_millis(100));
            }
            if !self.run_job("flush", || self.flush_one()) {
                self.back_off(Duration::from_millis(100));
            }
        }
    }

    pub(super) fn compaction_loop(&self) {
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

    pub(super) fn interval_sync_loop(&self, every: Duration) {
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

/// A compaction output table being written: its number, its builder, and the file the builder
/// writes (kept to reopen the finished table for reading).
type OpenOutput = (u64, TableBuilder, Arc<dyn DiskFile>);

/// The tables a compaction has created so far, in every state, so that a failure can remove
/// each of their files.
#[derive(Default)]
struct CompactionOutputs {
    /// Finished and reopened, in key order.
    done: Vec<Arc<Table>>,
    /// The table being written.
    open: Option<OpenOutput>,
    /// A table taken out of `open` and not yet in `done`.
    pending: Option<u64>,
}

impl CompactionOutputs {
    /// Removes every file created, finished or not. A failed removal only leaves a file that
    /// the next open deletes.
    fn remove_files(self, disk: &dyn Disk) {
        for t in &self.done {
            let _ = disk.remove(t.name());
        }
        for number in self.open.map(|(n, _, _)| n).into_iter().chain(self.pending) {
            let _ = disk.remove(&table_name(number));
        }
    }
}

/// The plan's tables, grouped by level in the version's order. A plan names tables by number,
/// read from an earlier super version: check that each is still installed before merging.
fn compaction_inputs(version: &Version, wanted: &HashSet<u64>) -> Result<Vec<Vec<Arc<Table>>>> {
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
    Ok(by_level)
}

/// One merge source per level-0 table, whose key ranges overlap, but one per deeper level,
/// whose tables are disjoint and sorted and so can be read one after another.
fn merge_sources(by_level: &[Vec<Arc<Table>>]) -> Result<Vec<Box<dyn Source>>> {
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
    Ok(sources)
}
