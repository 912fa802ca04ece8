//! `StdDisk`: the real disk, over `std::fs`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Disk, DiskFile};

/// A directory on the real file system. Holds an exclusive lock on `LOCK` inside it for as long
/// as it lives, so two processes never open the same database.
pub struct StdDisk {
    root: PathBuf,
    _lock: File,
}

impl StdDisk {
    /// Opens (creating if needed) the directory `root` and locks it.
    pub fn open(root: impl AsRef<Path>) -> io::Result<Self> {
        let root = root.as_ref().to_path_buf();
        fs::create_dir_all(&root)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join("LOCK"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("{} is locked by another process", root.display()),
                ))
            }
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
        Ok(StdDisk { root, _lock: lock })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Appends go through the file's cursor (created files start empty and are only appended to)
/// or `O_APPEND` (reopened files); reads use `pread`, which leaves the cursor alone.
struct StdFile {
    file: File,
}

impl DiskFile for StdFile {
    fn append(&self, data: &[u8]) -> io::Result<()> {
        (&self.file).write_all(data)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

impl Disk for StdDisk {
    fn create(&self, name: &str) -> io::Result<Arc<dyn DiskFile>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(self.root.join(name))?;
        Ok(Arc::new(StdFile { file }))
    }

    fn open(&self, name: &str) -> io::Result<Arc<dyn DiskFile>> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(self.root.join(name))?;
        Ok(Arc::new(StdFile { file }))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.root.join(from), self.root.join(to))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        match fs::remove_file(self.root.join(name)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.root)?.sync_all()
    }
}
