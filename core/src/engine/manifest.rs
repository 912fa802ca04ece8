//! The manifest: the live table set, rewritten whole on every change and swapped in by rename.

use crate::engine::disk::{read_all, Disk};
use crate::engine::error::{Error, Result};
use crate::engine::format::{crc, le_u32, put_varint, Cursor, FORMAT_VERSION, MANIFEST_MAGIC};

pub(crate) const MANIFEST: &str = "MANIFEST";
const MANIFEST_TMP: &str = "MANIFEST.tmp";
const MAX_MANIFEST_BYTES: u64 = 256 << 20;
/// File numbers stay far below u64::MAX so that counting up never overflows.
pub(crate) const MAX_FILE_NUMBER: u64 = 1 << 48;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TableRecord {
    pub level: u8,
    pub number: u64,
    pub size: u64,
    pub entries: u64,
    pub min_seq: u64,
    pub max_seq: u64,
    pub smallest: Vec<u8>,
    pub largest: Vec<u8>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ManifestState {
    pub next_file: u64,
    pub last_seq: u64,
    pub log_number: u64,
    pub tables: Vec<TableRecord>,
}

impl ManifestState {
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&self.next_file.to_le_bytes());
        body.extend_from_slice(&self.last_seq.to_le_bytes());
        body.extend_from_slice(&self.log_number.to_le_bytes());
        body.extend_from_slice(&(self.tables.len() as u32).to_le_bytes());
        for t in &self.tables {
            body.push(t.level);
            for v in [t.number, t.size, t.entries, t.min_seq, t.max_seq] {
                body.extend_from_slice(&v.to_le_bytes());
            }
            put_varint(&mut body, t.smallest.len() as u64);
            body.extend_from_slice(&t.smallest);
            put_varint(&mut body, t.largest.len() as u64);
            body.extend_from_slice(&t.largest);
        }
        let mut out = Vec::with_capacity(body.len() + 20);
        out.extend_from_slice(&MANIFEST_MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    pub fn decode(name: &str, b: &[u8]) -> Result<ManifestState> {
        let bad = |off: usize, what: &str| Error::corruption(name, off as u64, what);
        if b.len() < 20 {
            return Err(bad(0, "manifest shorter than its header"));
        }
        if b[..8] != MANIFEST_MAGIC {
            return Err(bad(0, "bad manifest magic"));
        }
        let version = le_u32(b, 8);
        if version != FORMAT_VERSION {
            return Err(bad(8, "unknown manifest format version"));
        }
        let len = le_u32(b, 12) as usize;
        if len != b.len() - 20 {
            return Err(bad(12, "manifest body length does not match the file"));
        }
        if crc(&b[20..]) != le_u32(b, 16) {
            return Err(bad(16, "manifest checksum mismatch"));
        }
        let mut c = Cursor::new(&b[20..]);
        let at = |c: &Cursor| c.pos() + 20;
        let mut st = ManifestState {
            next_file: c.u64().map_err(|e| bad(at(&c), e))?,
            last_seq: c.u64().map_err(|e| bad(at(&c), e))?,
            log_number: c.u64().map_err(|e| bad(at(&c), e))?,
            tables: Vec::new(),
        };
        if st.next_file > MAX_FILE_NUMBER {
            return Err(bad(20, "next file number out of range"));
        }
        let n = c.u32().map_err(|e| bad(at(&c), e))? as usize;
        if n > c.remaining() / 40 {
            return Err(bad(at(&c), "table count larger than the manifest can hold"));
        }
        for _ in 0..n {
            let rec = (|| -> Result<TableRecord, &'static str> {
                let level = c.u8()?;
                Ok(TableRecord {
                    level,
                    number: c.u64()?,
                    size: c.u64()?,
                    entries: c.u64()?,
                    min_seq: c.u64()?,
                    max_seq: c.u64()?,
                    smallest: c.len_prefixed()?.to_vec(),
                    largest: c.len_prefixed()?.to_vec(),
                })
            })()
            .map_err(|e| bad(at(&c), e))?;
            if rec.number >= st.next_file {
                return Err(bad(at(&c), "table number not below next_file"));
            }
            if st.tables.iter().any(|t| t.number == rec.number) {
                return Err(bad(at(&c), "table number listed twice"));
            }
            st.tables.push(rec);
        }
        if !c.is_empty() {
            return Err(bad(at(&c), "trailing bytes in manifest"));
        }
        Ok(st)
    }
}

/// How a manifest write failed.
pub(crate) struct WriteFailure {
    pub error: Error,
    /// The rename happened: the directory's `MANIFEST` may already be the new state, so files it
    /// names must not be removed.
    pub renamed: bool,
}

/// Writes the new state so that a crash at any point leaves the old one or the new one.
pub(crate) fn write(disk: &dyn Disk, state: &ManifestState) -> Result<(), WriteFailure> {
    let before = |error| WriteFailure {
        error,
        renamed: false,
    };
    let bytes = state.encode();
    let f = disk
        .create(MANIFEST_TMP)
        .map_err(|e| before(Error::io(MANIFEST_TMP, e)))?;
    f.append(&bytes)
        .map_err(|e| before(Error::io(MANIFEST_TMP, e)))?;
    f.sync().map_err(|e| before(Error::io(MANIFEST_TMP, e)))?;
    drop(f);
    // Make the new tables' directory entries durable before the manifest can name them: POSIX
    // does not order directory changes between two syncs.
    disk.sync_dir().map_err(|e| before(Error::io(".", e)))?;
    disk.rename(MANIFEST_TMP, MANIFEST)
        .map_err(|e| before(Error::io(MANIFEST, e)))?;
    if crate::bugs::on(crate::bugs::Bug::SkipDirSyncAfterRename) {
        return Ok(());
    }
    disk.sync_dir().map_err(|e| WriteFailure {
        error: Error::io(".", e),
        renamed: true,
    })
}

/// Reads the manifest, or `None` for a directory that has none yet.
pub(crate) fn read(disk: &dyn Disk) -> Result<Option<ManifestState>> {
    let f = match disk.open(MANIFEST) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(MANIFEST, e)),
    };
    let bytes = read_all(&*f, MAX_MANIFEST_BYTES).map_err(|e| Error::io(MANIFEST, e))?;
    ManifestState::decode(MANIFEST, &bytes).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_flip_is_detected() {
        let st = ManifestState {
            next_file: 9,
            last_seq: 100,
            log_number: 7,
            tables: vec![TableRecord {
                level: 1,
                number: 3,
                size: 4096,
                entries: 10,
                min_seq: 1,
                max_seq: 50,
                smallest: b"a".to_vec(),
                largest: b"z".to_vec(),
            }],
        };
        let b = st.encode();
        assert_eq!(ManifestState::decode("M", &b).unwrap(), st);
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 1;
            assert!(
                ManifestState::decode("M", &bad).is_err(),
                "flip at {i} undetected"
            );
        }
        for cut in 0..b.len() {
            assert!(ManifestState::decode("M", &b[..cut]).is_err());
        }
    }

    #[test]
    fn duplicate_tables_and_huge_file_numbers_are_refused() {
        let rec = TableRecord {
            level: 0,
            number: 3,
            size: 1,
            entries: 1,
            min_seq: 1,
            max_seq: 1,
            smallest: b"a".to_vec(),
            largest: b"a".to_vec(),
        };
        let dup = ManifestState {
            next_file: 9,
            last_seq: 1,
            log_number: 1,
            tables: vec![rec.clone(), rec],
        };
        assert!(ManifestState::decode("M", &dup.encode()).is_err());
        let huge = ManifestState {
            next_file: u64::MAX,
            ..ManifestState::default()
        };
        assert!(ManifestState::decode("M", &huge.encode()).is_err());
    }
}
