//! Merging iterators: memtables, tables and levels combined into one ordered stream in which
//! each user key appears once, as its newest visible version.

use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::Arc;

use crate::engine::error::Result;
use crate::engine::memtable::{Entry, Memtable};
use crate::engine::sst::{Table, TableIter};

/// One ordered input. Within a source every user key appears at most once.
pub(crate) trait Source: Send {
    fn peek(&self) -> Option<&Entry>;
    /// Returns the current entry and moves to the next.
    fn pop(&mut self) -> Result<Option<Entry>>;
}

impl Source for TableIter {
    fn peek(&self) -> Option<&Entry> {
        self.current()
    }
    fn pop(&mut self) -> Result<Option<Entry>> {
        let e = self.take_current();
        if e.is_some() {
            self.advance()?;
        }
        Ok(e)
    }
}

const MEM_CHUNK: usize = 128;

/// A memtable read in chunks under its lock, so a long scan never holds the lock for long.
pub(crate) struct MemSource {
    mem: Arc<Memtable>,
    snap: u64,
    end: Bound<Vec<u8>>,
    buf: VecDeque<Entry>,
    exhausted: bool,
}

fn as_ref_bound(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(e) => Bound::Included(e.as_slice()),
        Bound::Excluded(e) => Bound::Excluded(e.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// True when no key can lie between `start` and `end`.
pub(crate) fn empty_range(start: Bound<&[u8]>, end: Bound<&[u8]>) -> bool {
    match (start, end) {
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Included(s) | Bound::Excluded(s), Bound::Excluded(e))
        | (Bound::Excluded(s), Bound::Included(e)) => s >= e,
        _ => false,
    }
}

impl MemSource {
    pub fn new(mem: Arc<Memtable>, snap: u64, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Self {
        let mut s = MemSource {
            mem,
            snap,
            end: end.map(<[u8]>::to_vec),
            buf: VecDeque::new(),
            exhausted: false,
        };
        s.fill(start);
        s
    }

    fn fill(&mut self, start: Bound<&[u8]>) {
        let end = as_ref_bound(&self.end);
        if empty_range(start, end) {
            self.exhausted = true;
            return;
        }
        let chunk = self.mem.chunk(start, end, self.snap, MEM_CHUNK);
        if chunk.len() < MEM_CHUNK {
            self.exhausted = true;
        }
        self.buf.extend(chunk);
    }
}

impl Source for MemSource {
    fn peek(&self) -> Option<&Entry> {
        self.buf.front()
    }
    fn pop(&mut self) -> Result<Option<Entry>> {
        let e = self.buf.pop_front();
        if self.buf.is_empty() && !self.exhausted {
            if let Some(last) = &e {
                let key = last.key.clone();
                self.fill(Bound::Excluded(&key));
            }
        }
        Ok(e)
    }
}

/// The tables of one level >= 1 (disjoint, sorted), opened one at a time.
pub(crate) struct LevelSource {
    tables: Vec<Arc<Table>>,
    next: usize,
    iter: Option<TableIter>,
    fill_cache: bool,
}

impl LevelSource {
    pub fn new(tables: Vec<Arc<Table>>, start: Bound<&[u8]>, fill_cache: bool) -> Result<Self> {
        // Skip tables entirely before the start.
        let first = match start {
            Bound::Unbounded => 0,
            Bound::Included(k) | Bound::Excluded(k) => {
                tables.partition_point(|t| t.props().largest.as_slice() < k)
            }
        };
        let mut s = LevelSource {
            tables,
            next: first,
            iter: None,
            fill_cache,
        };
        if s.next < s.tables.len() {
            let t = s.tables[s.next].clone();
            s.next += 1;
            s.iter = Some(TableIter::new(t, start, fill_cache)?);
            s.skip_empty()?;
        }
        Ok(s)
    }

    fn skip_empty(&mut self) -> Result<()> {
        while self.iter.as_ref().is_some_and(|i| i.current().is_none()) {
            self.iter = if self.next < self.tables.len() {
                let t = self.tables[self.next].clone();
                self.next += 1;
                Some(TableIter::new(t, Bound::Unbounded, self.fill_cache)?)
            } else {
                None
            };
        }
        Ok(())
    }
}

impl Source for LevelSource {
    fn peek(&self) -> Option<&Entry> {
        self.iter.as_ref().and_then(|i| i.current())
    }
    fn pop(&mut self) -> Result<Option<Entry>> {
        let Some(it) = self.iter.as_mut() else {
            return Ok(None);
        };
        let e = it.take_current();
        it.advance()?;
        self.skip_empty()?;
        Ok(e)
    }
}

/// Merges sources; yields each user key once, as its newest version (tombstones included).
pub(crate) struct MergeIter {
    sources: Vec<Box<dyn Source>>,
}

impl MergeIter {
    pub fn new(sources: Vec<Box<dyn Source>>) -> Self {
        MergeIter { sources }
    }

    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        // Few sources (memtables, level-0 tables, one per deeper level): a linear scan for the
        // smallest key beats a heap that would have to clone keys.
        let mut best: Option<usize> = None;
        for (i, s) in self.sources.iter().enumerate() {
            let Some(e) = s.peek() else { continue };
            best = match best {
                None => Some(i),
                Some(b) => {
                    let be = self.sources[b].peek().expect("best has an entry");
                    if e.key < be.key || (e.key == be.key && e.seq > be.seq) {
                        Some(i)
                    } else {
                        Some(b)
                    }
                }
            };
        }
        let Some(b) = best else { return Ok(None) };
        let winner = self.sources[b].pop()?.expect("peeked entry");
        for (i, s) in self.sources.iter_mut().enumerate() {
            if i != b && s.peek().is_some_and(|e| e.key == winner.key) {
                s.pop()?;
            }
        }
        Ok(Some(winner))
    }
}
