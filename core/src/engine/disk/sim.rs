//! `SimDisk`: an in-memory disk that behaves like a real one across a crash.
//!
//! Each file keeps how many of its bytes are durable (`synced`). The directory keeps the entries
//! made durable by the last `sync_dir` and the log of entry changes since. [`SimDisk::crash`]
//! models a power cut: every file keeps its synced bytes plus a seeded random prefix of the
//! unsynced ones (possibly none, possibly a torn part of the last write), and the directory keeps
//! its durable entries plus a seeded random prefix of the changes made since the last `sync_dir`.
//! Handles opened before a crash stop working, as a dead process's would.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Disk, DiskFile};

#[derive(Default)]
struct Inode {
    data: Vec<u8>,
    synced: usize,
}

type InodeRef = Arc<Mutex<Inode>>;

#[derive(Clone)]
enum DirOp {
    Link(String, InodeRef),
    Rename(String, String),
    Remove(String),
}

#[derive(Default)]
struct Dir {
    live: BTreeMap<String, InodeRef>,
    durable: BTreeMap<String, InodeRef>,
    pending: Vec<DirOp>,
}

fn apply(map: &mut BTreeMap<String, InodeRef>, op: &DirOp) {
    match op {
        DirOp::Link(name, inode) => {
            map.insert(name.clone(), inode.clone());
        }
        DirOp::Rename(from, to) => {
            if let Some(inode) = map.remove(from) {
                map.insert(to.clone(), inode);
            }
        }
        DirOp::Remove(name) => {
            map.remove(name);
        }
    }
}

/// What a [`SimDisk::crash`] threw away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Unsynced bytes lost.
    pub lost_bytes: u64,
    /// Files that kept part of their unsynced bytes: a write torn somewhere in the middle.
    pub torn_files: usize,
    /// Directory changes (creates, renames, removes) lost.
    pub lost_dir_ops: usize,
}

/// A cheap handle: clones share the same disk.
#[derive(Clone, Default)]
pub struct SimDisk {
    dir: Arc<Mutex<Dir>>,
    epoch: Arc<AtomicU64>,
    /// When set, every append and sync fails (a dead or full disk).
    fail_writes: Arc<std::sync::atomic::AtomicBool>,
    /// When set, a crash keeps any subset of the directory changes made since the last
    /// `sync_dir`, not just a prefix: POSIX does not order them.
    reorder_dir_ops: Arc<std::sync::atomic::AtomicBool>,
}

struct SimFile {
    inode: InodeRef,
    epoch: u64,
    disk_epoch: Arc<AtomicU64>,
    fail_writes: Arc<std::sync::atomic::AtomicBool>,
}

fn stale() -> io::Error {
    io::Error::other("simulated disk: handle from before a crash")
}

impl SimFile {
    fn check(&self, writing: bool) -> io::Result<()> {
        if self.disk_epoch.load(Ordering::SeqCst) != self.epoch {
            return Err(stale());
        }
        if writing && self.fail_writes.load(Ordering::SeqCst) {
            return Err(io::Error::other("simulated disk: write failure injected"));
        }
        Ok(())
    }
}

impl DiskFile for SimFile {
    fn append(&self, data: &[u8]) -> io::Result<()> {
        self.check(true)?;
        self.inode.lock().data.extend_from_slice(data);
        Ok(())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check(false)?;
        let inode = self.inode.lock();
        let start = usize::try_from(offset).map_err(|_| eof())?;
        let end = start.checked_add(buf.len()).ok_or_else(eof)?;
        if end > inode.data.len() {
            return Err(eof());
        }
        buf.copy_from_slice(&inode.data[start..end]);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        self.check(false)?;
        Ok(self.inode.lock().data.len() as u64)
    }

    fn sync(&self) -> io::Result<()> {
        self.check(true)?;
        let mut inode = self.inode.lock();
        inode.synced = inode.data.len();
        Ok(())
    }
}

fn eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "read past the end of the file",
    )
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{name}: no such file"))
}

/// splitmix64: the crash's choices come from its seed alone.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

impl SimDisk {
    pub fn new() -> Self {
        Self::default()
    }

    fn handle(&self, inode: InodeRef) -> Arc<dyn DiskFile> {
        Arc::new(SimFile {
            inode,
            epoch: self.epoch.load(Ordering::SeqCst),
            disk_epoch: self.epoch.clone(),
            fail_writes: self.fail_writes.clone(),
        })
    }

    /// A power cut. Unsynced bytes and directory changes are lost, except for a seeded random
    /// prefix of them, which may end in the middle of a write. Every open handle goes stale.
    /// Says what was lost.
    pub fn crash(&self, seed: u64) -> CrashReport {
        let mut report = CrashReport::default();
        let mut rng = Rng(seed);
        let mut dir = self.dir.lock();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        // Files: durable bytes plus a prefix of the pending ones. Handled through the live map
        // and the durable map both, so every inode that might survive is visited once.
        let mut seen: Vec<*const Mutex<Inode>> = Vec::new();
        let inodes: Vec<InodeRef> = dir
            .live
            .values()
            .chain(dir.durable.values())
            .chain(dir.pending.iter().filter_map(|op| match op {
                DirOp::Link(_, i) => Some(i),
                _ => None,
            }))
            .cloned()
            .collect();
        for inode in inodes {
            let ptr = Arc::as_ptr(&inode);
            if seen.contains(&ptr) {
                continue;
            }
            seen.push(ptr);
            let mut f = inode.lock();
            let pending = f.data.len() - f.synced;
            let keep = if rng.below(2) == 0 {
                0
            } else {
                rng.below(pending as u64 + 1) as usize
            };
            let new_len = f.synced + keep;
            report.lost_bytes += (pending - keep) as u64;
            if keep > 0 && keep < pending {
                report.torn_files += 1;
            }
            f.data.truncate(new_len);
            f.synced = new_len;
        }
        // Directory: durable entries plus a prefix (or, reordering, any subset) of the changes
        // since the last sync_dir.
        let pending: Vec<DirOp> = dir.pending.drain(..).collect();
        let n_pending = pending.len();
        let ops: Vec<DirOp> = if self.reorder_dir_ops.load(Ordering::SeqCst) {
            let kept: Vec<DirOp> = pending.into_iter().filter(|_| rng.below(2) == 0).collect();
            report.lost_dir_ops = n_pending - kept.len();
            kept
        } else {
            let keep_ops = rng.below(pending.len() as u64 + 1) as usize;
            let mut p = pending;
            report.lost_dir_ops = p.len() - keep_ops;
            p.truncate(keep_ops);
            p
        };
        let mut durable = std::mem::take(&mut dir.durable);
        for op in &ops {
            apply(&mut durable, op);
        }
        dir.live = durable.clone();
        dir.durable = durable;
        report
    }

    /// Lets crashes keep any subset of the unsynced directory changes (POSIX orders none of
    /// them) instead of a prefix.
    pub fn set_reorder_dir_ops(&self, on: bool) {
        self.reorder_dir_ops.store(on, Ordering::SeqCst);
    }

    /// Like [`crash`](Self::crash), but every unsynced byte and directory change is lost.
    pub fn crash_clean(&self) {
        let mut dir = self.dir.lock();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        dir.pending.clear();
        let durable = dir.durable.clone();
        for inode in durable.values() {
            let mut f = inode.lock();
            let synced = f.synced;
            f.data.truncate(synced);
        }
        dir.live = durable;
    }

    /// The disk is lost for good (a dead drive replaced by an empty one): every file goes,
    /// and every open handle goes stale.
    pub fn wipe(&self) {
        let mut dir = self.dir.lock();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        dir.pending.clear();
        dir.live.clear();
        dir.durable.clear();
    }

    /// Makes every later append and sync fail (or work again).
    pub fn set_fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::SeqCst);
    }

    /// The current bytes of `name` (a test's view).
    pub fn read_file(&self, name: &str) -> Option<Vec<u8>> {
        let dir = self.dir.lock();
        dir.live.get(name).map(|i| i.lock().data.clone())
    }

    /// Overwrites `name` with `bytes`, durably (a test's tool for corrupting files).
    pub fn write_file(&self, name: &str, bytes: Vec<u8>) {
        let mut dir = self.dir.lock();
        let synced = bytes.len();
        let inode = Arc::new(Mutex::new(Inode {
            data: bytes,
            synced,
        }));
        dir.live.insert(name.to_string(), inode.clone());
        dir.durable.insert(name.to_string(), inode);
    }

    /// Total bytes in live files.
    pub fn total_bytes(&self) -> u64 {
        let dir = self.dir.lock();
        dir.live.values().map(|i| i.lock().data.len() as u64).sum()
    }
}

impl Disk for SimDisk {
    fn create(&self, name: &str) -> io::Result<Arc<dyn DiskFile>> {
        let inode: InodeRef = Arc::default();
        let mut dir = self.dir.lock();
        let op = DirOp::Link(name.to_string(), inode.clone());
        apply(&mut dir.live, &op);
        dir.pending.push(op);
        drop(dir);
        Ok(self.handle(inode))
    }

    fn open(&self, name: &str) -> io::Result<Arc<dyn DiskFile>> {
        let dir = self.dir.lock();
        let inode = dir.live.get(name).cloned().ok_or_else(|| not_found(name))?;
        drop(dir);
        Ok(self.handle(inode))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut dir = self.dir.lock();
        if !dir.live.contains_key(from) {
            return Err(not_found(from));
        }
        let op = DirOp::Rename(from.to_string(), to.to_string());
        apply(&mut dir.live, &op);
        dir.pending.push(op);
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut dir = self.dir.lock();
        if dir.live.contains_key(name) {
            let op = DirOp::Remove(name.to_string());
            apply(&mut dir.live, &op);
            dir.pending.push(op);
        }
        Ok(())
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.dir.lock().live.keys().cloned().collect())
    }

    fn sync_dir(&self) -> io::Result<()> {
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(io::Error::other("simulated disk: write failure injected"));
        }
        let mut dir = self.dir.lock();
        dir.pending.clear();
        dir.durable = dir.live.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_keeps_synced_bytes_and_at_most_a_prefix_of_the_rest() {
        for seed in 0..200 {
            let d = SimDisk::new();
            let f = d.create("a").unwrap();
            d.sync_dir().unwrap();
            f.append(b"durable").unwrap();
            f.sync().unwrap();
            f.append(b"-pending-bytes").unwrap();
            d.crash(seed);
            let got = d.read_file("a").unwrap();
            assert!(got.starts_with(b"durable"), "seed {seed}: {got:?}");
            assert!(
                b"durable-pending-bytes".starts_with(&got),
                "seed {seed}: not a prefix"
            );
            // The old handle is dead, as a crashed process's would be.
            assert!(f.append(b"x").is_err());
            assert!(f.len().is_err());
        }
    }

    #[test]
    fn a_crash_clean_drops_every_unsynced_byte_and_entry() {
        let d = SimDisk::new();
        let f = d.create("kept").unwrap();
        f.append(b"abc").unwrap();
        f.sync().unwrap();
        d.sync_dir().unwrap();
        f.append(b"def").unwrap();
        let g = d.create("lost").unwrap();
        g.append(b"x").unwrap();
        g.sync().unwrap(); // synced data, but its directory entry never was
        d.crash_clean();
        assert_eq!(d.read_file("kept").unwrap(), b"abc");
        assert_eq!(d.read_file("lost"), None);
    }

    #[test]
    fn unsynced_rename_may_or_may_not_survive_but_never_half() {
        let mut saw_old = false;
        let mut saw_new = false;
        for seed in 0..64 {
            let d = SimDisk::new();
            for (name, body) in [("M", b"old".as_slice()), ("M.tmp", b"new".as_slice())] {
                let f = d.create(name).unwrap();
                f.append(body).unwrap();
                f.sync().unwrap();
            }
            d.remove("M.tmp").unwrap();
            d.write_file("M.tmp", b"new".to_vec());
            d.sync_dir().unwrap();
            d.rename("M.tmp", "M").unwrap();
            d.crash(seed);
            match d.read_file("M").as_deref() {
                Some(b"old") => saw_old = true,
                Some(b"new") => saw_new = true,
                other => panic!("seed {seed}: {other:?}"),
            }
        }
        assert!(
            saw_old && saw_new,
            "crashes should sometimes keep and sometimes lose the rename"
        );
    }

    #[test]
    fn removed_files_stay_readable_through_open_handles() {
        let d = SimDisk::new();
        let f = d.create("t").unwrap();
        f.append(b"data").unwrap();
        d.remove("t").unwrap();
        let mut buf = [0u8; 4];
        f.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf, b"data");
        assert!(d.open("t").is_err());
    }
}
