//! Entry points that feed raw bytes to each on-disk decoder, for fuzzing and corruption tests.
//! Each returns `Ok` with a small summary or the decoder's error; none may panic, hang, or
//! allocate more than a small multiple of its input, whatever the bytes.

use std::ops::Bound;
use std::sync::Arc;

use crate::engine::cache::BlockCache;
use crate::engine::disk::{Disk, SimDisk};
use crate::engine::error::Result;
use crate::engine::sst::{Table, TableIter};

/// Opens `bytes` as an SSTable, then reads every entry in order and looks up each key.
/// Returns the number of entries read.
pub fn sstable(bytes: &[u8]) -> Result<usize> {
    let disk = SimDisk::new();
    disk.write_file("000001.sst", bytes.to_vec());
    let file = disk
        .open("000001.sst")
        .map_err(|e| crate::Error::io("000001.sst", e))?;
    let table = Arc::new(Table::open(file, 1, Arc::new(BlockCache::new(1 << 20)))?);
    let mut it = TableIter::new(table.clone(), Bound::Unbounded, true)?;
    let mut n = 0;
    let mut keys = Vec::new();
    while let Some(e) = it.take_current() {
        keys.push(e.key);
        n += 1;
        it.advance()?;
    }
    for k in keys {
        table.get(&k, crate::engine::format::hash64(&k))?;
    }
    Ok(n)
}

/// Replays `bytes` as a WAL file. Returns the number of batches applied.
pub fn wal(bytes: &[u8]) -> Result<usize> {
    let mut n = 0;
    crate::engine::wal::replay_bytes("000001.wal", bytes, &mut |_| {
        n += 1;
        Ok(())
    })?;
    Ok(n)
}

/// Decodes `bytes` as a manifest. Returns the number of tables it names.
pub fn manifest(bytes: &[u8]) -> Result<usize> {
    Ok(
        crate::engine::manifest::ManifestState::decode("MANIFEST", bytes)?
            .tables
            .len(),
    )
}

/// Opens a whole database from a set of files (name, bytes), then scans it.
pub fn database(files: &[(String, Vec<u8>)]) -> Result<usize> {
    let disk = SimDisk::new();
    for (name, bytes) in files {
        disk.write_file(name, bytes.clone());
    }
    let opts = crate::Options {
        background: crate::Background::Manual,
        stall: crate::StallPolicy::Refuse,
        ..crate::Options::tiny()
    };
    let db = crate::Db::open(Arc::new(disk), opts)?;
    let mut n = 0;
    for item in db.scan(Bound::Unbounded, Bound::Unbounded)? {
        item?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for len in [0usize, 1, 7, 52, 53, 200, 4096] {
            let junk: Vec<u8> = (0..len).map(|i| (i * 131 % 251) as u8).collect();
            assert!(super::sstable(&junk).is_err());
            assert!(super::manifest(&junk).is_err());
            let _ = super::wal(&junk);
        }
    }
}
