//! Point reads touch at most one data block per table, and the block cache serves hot blocks.

mod common;

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{key, manual_tiny};
use corecache_core::{Db, Disk, DiskFile, SimDisk};

#[derive(Clone)]
struct CountingDisk {
    inner: SimDisk,
    reads: Arc<AtomicUsize>,
}

struct CountingFile {
    inner: Arc<dyn DiskFile>,
    reads: Arc<AtomicUsize>,
}

impl DiskFile for CountingFile {
    fn append(&self, data: &[u8]) -> io::Result<()> {
        self.inner.append(data)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read_at(offset, buf)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn sync(&self) -> io::Result<()> {
        self.inner.sync()
    }
}

impl Disk for CountingDisk {
    fn create(&self, name: &str) -> io::Result<Arc<dyn DiskFile>> {
        Ok(Arc::new(CountingFile {
            inner: self.inner.create(name)?,
            reads: self.reads.clone(),
        }))
    }
    fn open(&self, name: &str) -> io::Result<Arc<dyn DiskFile>> {
        Ok(Arc::new(CountingFile {
            inner: self.inner.open(name)?,
            reads: self.reads.clone(),
        }))
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

fn loaded(cache_bytes: u64) -> (Db, Arc<AtomicUsize>) {
    let disk = CountingDisk {
        inner: SimDisk::new(),
        reads: Arc::default(),
    };
    let mut opts = manual_tiny();
    opts.block_cache_bytes = cache_bytes;
    opts.table_bytes = 1 << 20; // one table after a full compaction
    let db = Db::open(Arc::new(disk.clone()), opts).unwrap();
    for i in (0..2000u32).step_by(2) {
        db.put(key(i), vec![b'v'; 40]).unwrap();
        if i % 100 == 0 {
            db.do_background_work().unwrap();
        }
    }
    db.compact().unwrap();
    let s = db.stats();
    assert_eq!(s.tables_per_level.iter().sum::<usize>(), 1, "{s:?}");
    (db, disk.reads)
}

#[test]
fn a_point_read_reads_one_block_and_a_filtered_miss_reads_none() {
    let (db, reads) = loaded(0);
    for i in (0..2000u32).step_by(2) {
        let before = reads.load(Ordering::SeqCst);
        assert!(db.get(&key(i)).unwrap().is_some());
        assert_eq!(reads.load(Ordering::SeqCst) - before, 1, "key {i}");
    }
    // Missing keys inside the table's range: the Bloom filter turns nearly all away unread.
    let before = reads.load(Ordering::SeqCst);
    for i in (1..2000u32).step_by(2) {
        assert_eq!(db.get(&key(i)).unwrap(), None);
    }
    let misses_read = reads.load(Ordering::SeqCst) - before;
    assert!(
        misses_read <= 40,
        "{misses_read} blocks read for 1000 absent keys"
    );
}

#[test]
fn the_block_cache_serves_hot_blocks() {
    let (db, reads) = loaded(1 << 20);
    assert!(db.get(&key(100)).unwrap().is_some());
    let before = reads.load(Ordering::SeqCst);
    for _ in 0..100 {
        assert!(db.get(&key(100)).unwrap().is_some());
    }
    assert_eq!(
        reads.load(Ordering::SeqCst),
        before,
        "hot block read from disk again"
    );
    assert!(db.stats().block_cache_bytes > 0);
}
