//! The write path: the group-commit queue, one WAL append (and fsync when asked) per group,
//! memtable insertion, publication to readers; memtable rotation and log syncs.

use super::*;

impl Inner {
    /// Queues `op`, leading the group commit if no one else is.
    pub(super) fn submit(&self, op: Op) -> Result<u64> {
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
    pub(super) fn commit_group(&self, group: &mut [(u64, Op)]) -> Vec<Result<u64>> {
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
    pub(super) fn make_room(&self, force: bool) -> Result<()> {
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
            // A forced switch (`Db::flush`) is an explicit, blocking call and may make the
            // next log itself; an automatic one does only when `inline_log_files` allows it.
            let no_log = !force && !self.opts.inline_log_files && self.wal.lock().spare.is_none();
            let behind = sv.imms.len() >= self.opts.max_immutable_memtables
                || l0 >= self.opts.l0_stop_writes
                || no_log;
            if !behind {
                drop(bg);
                return self.rotate();
            }
            if !counted {
                self.counters.write_stalls.fetch_add(1, Ordering::Relaxed);
                counted = true;
            }
            let why = if no_log {
                "the memtable is full and background work has not made the next log file yet"
                    .to_string()
            } else {
                format!(
                    "{} frozen memtables (limit {}) and {} level-0 tables (limit {}) await \
                     background work",
                    sv.imms.len(),
                    self.opts.max_immutable_memtables,
                    l0,
                    self.opts.l0_stop_writes
                )
            };
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

    /// Switches to the next log and freezes the memtable. The next log is the spare made
    /// ahead of time; without one (only when `make_room` allows it) it is made here.
    pub(super) fn rotate(&self) -> Result<()> {
        let _spare = self.spare_lock.lock();
        let mut wal = self.wal.lock();
        let next = match wal.spare.take() {
            Some(spare) => spare,
            None => {
                let number = self.next_file.fetch_add(1, Ordering::SeqCst);
                let name = wal_name(number);
                let file = self.disk.create(&name).map_err(|e| Error::io(&name, e))?;
                self.disk.sync_dir().map_err(|e| Error::io(".", e))?;
                WalWriter::new(file, number)
            }
        };
        let number = next.number;
        // The retired log is synced later, off the write path (by the next persist or sync, or
        // by the flush of its memtable), never here: an fsync here would stall every writer.
        let old = std::mem::replace(&mut wal.writer, next);
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

    pub(super) fn sync_wal(&self) -> Result<()> {
        self.sync_logs().map(|_| ())
    }

    /// Syncs the retired logs and the current one, outside the log's lock (writers keep
    /// appending meanwhile). Returns the sequence number now durable: every write up to it is in
    /// one of the files synced. A failure poisons writes: after a failed fsync the kernel may have
    /// dropped the dirty pages, so the log could have a hole.
    pub(super) fn sync_logs(&self) -> Result<u64> {
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

    pub(super) fn poison(&self, e: &Error) {
        let mut p = self.poisoned.lock();
        if p.is_none() {
            *p = Some(e.to_string());
        }
    }

    /// Makes the spare log if there is none: created and made durable in the directory, off
    /// the write path. Returns whether it made one.
    pub(super) fn prepare_spare_log(&self) -> Result<bool> {
        let _g = self.spare_lock.lock();
        if self.wal.lock().spare.is_some() {
            return Ok(false);
        }
        // Numbered after the current log (taken after it, under `spare_lock`, which every
        // rotation that makes a log itself also holds).
        let number = self.next_file.fetch_add(1, Ordering::SeqCst);
        let name = wal_name(number);
        let file = self.disk.create(&name).map_err(|e| Error::io(&name, e))?;
        self.disk.sync_dir().map_err(|e| Error::io(".", e))?;
        self.wal.lock().spare = Some(WalWriter::new(file, number));
        self.notify_bg();
        Ok(true)
    }
}
