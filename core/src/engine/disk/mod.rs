//! The `Disk` trait: every byte the engine reads or writes goes through it.
//!
//! A `Disk` is one flat directory. The engine names files inside it (`000012.sst`, `000013.wal`,
//! `MANIFEST`); it never sees paths. Two implementations ship: [`StdDisk`] over `std::fs`, and
//! [`SimDisk`], an in-memory disk that keeps durable and pending bytes apart so that
//! [`SimDisk::crash`] loses exactly what was never synced (and may tear the last write).
//!
//! The contract the engine relies on, and that both implementations honour:
//! - `append` adds bytes at the end of the file; they are durable only after `sync` on that file.
//! - A file created (or renamed) is durable in the directory only after `sync_dir`.
//! - `rename` replaces the target atomically: after a crash the directory holds the old or the new
//!   file under that name, never a mix.

mod sim;
mod std_disk;

use std::io;
use std::sync::Arc;

pub use sim::{CrashReport, SimDisk};
pub use std_disk::StdDisk;

/// An open file. Reads and appends may come from several threads at once.
#[allow(clippy::len_without_is_empty)] // an empty check would be one more fallible call
pub trait DiskFile: Send + Sync {
    /// Appends `data` at the end of the file.
    fn append(&self, data: &[u8]) -> io::Result<()>;
    /// Fills `buf` from `offset`; an error if the file is shorter than `offset + buf.len()`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Current length in bytes (including bytes not yet synced).
    fn len(&self) -> io::Result<u64>;
    /// Makes every byte appended so far durable.
    fn sync(&self) -> io::Result<()>;
}

/// One directory of files.
pub trait Disk: Send + Sync + 'static {
    /// Creates `name` empty (replacing any file of that name) and opens it for append and read.
    fn create(&self, name: &str) -> io::Result<Arc<dyn DiskFile>>;
    /// Opens an existing file for reading (and appending).
    fn open(&self, name: &str) -> io::Result<Arc<dyn DiskFile>>;
    /// Atomically renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Removes `name`. Removing a missing file is not an error.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Names of every file in the directory, sorted.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self) -> io::Result<()>;
}

/// Reads the whole of a (small) file. Callers bound the size before calling.
pub(crate) fn read_all(file: &dyn DiskFile, max_bytes: u64) -> io::Result<Vec<u8>> {
    let len = file.len()?;
    if len > max_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("file is {len} bytes, more than the {max_bytes} allowed"),
        ));
    }
    let mut buf = vec![0u8; len as usize];
    file.read_at(0, &mut buf)?;
    Ok(buf)
}
