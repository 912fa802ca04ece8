//! Background work: flushing frozen memtables into level-0 tables, compacting tables, and
//! installing each result (manifest, then super version); the engine's own threads, when it
//! has them, are thin loops over the same functions.

use super::*;

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
