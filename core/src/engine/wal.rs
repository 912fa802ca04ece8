//! The write-ahead log: framing, appending, and replay (see `format` for the layout).

use std::sync::Arc;

use crate::engine::batch::{decode_batch, DecodedBatch};
use crate::engine::disk::{read_all, DiskFile};
use crate::engine::error::{Error, Result};
use crate::engine::format::{crc, le_u32, WAL_HEADER_LEN, WAL_TYPE_BATCH};

/// Largest record replay accepts; a length field above it is damage, not a record.
pub const MAX_RECORD_BYTES: usize = 512 << 20;

pub(crate) fn wal_name(number: u64) -> String {
    format!("{number:06}.wal")
}

/// Appends one framed record to `out`.
pub(crate) fn frame_record(out: &mut Vec<u8>, typ: u8, payload: &[u8]) {
    let len = payload.len() as u32;
    let mut head = [0u8; 5];
    head[..4].copy_from_slice(&len.to_le_bytes());
    head[4] = typ;
    out.extend_from_slice(&head);
    out.extend_from_slice(&crc(&head).to_le_bytes());
    out.extend_from_slice(&crc(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

pub(crate) struct WalWriter {
    pub file: Arc<dyn DiskFile>,
    pub name: String,
    pub number: u64,
    pub bytes: u64,
}

impl WalWriter {
    pub fn new(file: Arc<dyn DiskFile>, number: u64) -> Self {
        WalWriter {
            file,
            name: wal_name(number),
            number,
            bytes: 0,
        }
    }

    /// Writes already-framed records (one `append`, so one system call for a whole group).
    pub fn write(&mut self, framed: &[u8]) -> Result<()> {
        self.file
            .append(framed)
            .map_err(|e| Error::io(&self.name, e))?;
        self.bytes += framed.len() as u64;
        Ok(())
    }

    pub fn sync(&self) -> Result<()> {
        self.file.sync().map_err(|e| Error::io(&self.name, e))
    }
}

/// How a replay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayEnd {
    /// Every byte of the file was a good record.
    Clean,
    /// The file ends in an incomplete record at `offset` (a write cut short by a crash); the
    /// records before it were applied.
    TornTail { offset: u64, why: &'static str },
}

/// Replays every record of one WAL file, calling `apply` for each batch in order.
pub(crate) fn replay(
    name: &str,
    file: &dyn DiskFile,
    mut apply: impl FnMut(DecodedBatch<'_>) -> Result<()>,
) -> Result<ReplayEnd> {
    let data = read_all(file, u64::MAX >> 1).map_err(|e| Error::io(name, e))?;
    replay_bytes(name, &data, &mut apply)
}

pub(crate) fn replay_bytes(
    name: &str,
    data: &[u8],
    apply: &mut dyn FnMut(DecodedBatch<'_>) -> Result<()>,
) -> Result<ReplayEnd> {
    let mut pos = 0usize;
    let mut expected_seq: Option<u64> = None;
    while pos < data.len() {
        let rest = &data[pos..];
        let off = pos as u64;
        if rest.iter().all(|b| *b == 0) {
            return Ok(ReplayEnd::TornTail {
                offset: off,
                why: "zero-filled tail",
            });
        }
        if rest.len() < WAL_HEADER_LEN {
            return Ok(ReplayEnd::TornTail {
                offset: off,
                why: "incomplete record header",
            });
        }
        let len = le_u32(rest, 0) as usize;
        let typ = rest[4];
        let hcrc = le_u32(rest, 5);
        let pcrc = le_u32(rest, 9);
        if crc(&rest[..5]) != hcrc {
            if rest[WAL_HEADER_LEN..].iter().all(|b| *b == 0) {
                // A header torn by the crash, with only zero fill after it.
                return Ok(ReplayEnd::TornTail {
                    offset: off,
                    why: "torn record header at the end of the file",
                });
            }
            return Err(Error::corruption(
                name,
                off,
                "record header checksum mismatch",
            ));
        }
        if typ != WAL_TYPE_BATCH {
            return Err(Error::corruption(
                name,
                off,
                format!("unknown record type {typ}"),
            ));
        }
        if len > MAX_RECORD_BYTES {
            return Err(Error::corruption(
                name,
                off,
                format!("record length {len} too large"),
            ));
        }
        let end = WAL_HEADER_LEN + len;
        if end > rest.len() {
            return Ok(ReplayEnd::TornTail {
                offset: off,
                why: "record runs past the end of the file",
            });
        }
        let payload = &rest[WAL_HEADER_LEN..end];
        if crc(payload) != pcrc {
            if end == rest.len() {
                // The last record of the file: a write the crash cut short, never acknowledged
                // as durable (a synced record would have its whole payload).
                return Ok(ReplayEnd::TornTail {
                    offset: off,
                    why: "last record's checksum mismatch",
                });
            }
            return Err(Error::corruption(
                name,
                off,
                "record payload checksum mismatch with more records after it",
            ));
        }
        let mut batch = decode_batch(payload)
            .map_err(|why| Error::corruption(name, off, format!("bad batch: {why}")))?;
        if let Some(exp) = expected_seq {
            if batch.first_seq != exp {
                return Err(Error::corruption(
                    name,
                    off,
                    format!("sequence {} where {exp} was expected", batch.first_seq),
                ));
            }
        }
        expected_seq = Some(batch.first_seq + batch.ops.len() as u64);
        batch.offset = off;
        apply(batch)?;
        pos += end;
    }
    Ok(ReplayEnd::Clean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::batch::WriteBatch;

    type Pairs<'a> = &'a [(&'a [u8], &'a [u8])];

    fn log(batches: &[(u64, Pairs<'_>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (seq, ops) in batches {
            let mut b = WriteBatch::new();
            for (k, v) in *ops {
                b.put(k.to_vec(), v.to_vec());
            }
            let mut payload = Vec::new();
            b.encode(*seq, &mut payload);
            frame_record(&mut out, WAL_TYPE_BATCH, &payload);
        }
        out
    }

    fn count(data: &[u8]) -> Result<(usize, ReplayEnd)> {
        let mut n = 0;
        let end = replay_bytes("t.wal", data, &mut |b| {
            n += b.ops.len();
            Ok(())
        })?;
        Ok((n, end))
    }

    #[test]
    fn every_truncation_is_a_torn_tail_with_a_prefix_applied() {
        let data = log(&[
            (1, &[(b"a", b"1")]),
            (2, &[(b"b", b"2"), (b"c", b"3")]),
            (4, &[(b"d", b"")]),
        ]);
        let (n, end) = count(&data).unwrap();
        assert_eq!((n, end), (4, ReplayEnd::Clean));
        let mut last = 0;
        for cut in 0..data.len() {
            let (n, end) = count(&data[..cut]).unwrap();
            assert!(n >= last, "applied ops shrank at cut {cut}");
            last = n;
            if cut > 0 {
                assert!(matches!(end, ReplayEnd::TornTail { .. } | ReplayEnd::Clean));
            }
        }
    }

    #[test]
    fn a_torn_header_followed_by_zero_fill_is_a_torn_tail() {
        let mut data = log(&[(1, &[(b"a", b"1")]), (2, &[(b"b", b"2")])]);
        let second = data.len() / 2;
        data[second + 6] ^= 0xff; // damage the second header's checksum
        data.truncate(second + WAL_HEADER_LEN);
        data.extend_from_slice(&[0u8; 100]);
        let (n, end) = count(&data).unwrap();
        assert_eq!(n, 1);
        assert!(matches!(end, ReplayEnd::TornTail { .. }));
    }

    #[test]
    fn a_flip_in_the_middle_is_corruption_naming_file_and_offset() {
        let data = log(&[
            (1, &[(b"a", b"1")]),
            (2, &[(b"b", b"2")]),
            (3, &[(b"c", b"3")]),
        ]);
        let first_len = data.len() / 3;
        for i in 0..(2 * first_len) {
            let mut bad = data.clone();
            bad[i] ^= 0x40;
            match count(&bad) {
                Err(Error::Corruption { file, offset, .. }) => {
                    assert_eq!(file, "t.wal");
                    assert!(offset <= i as u64);
                }
                other => panic!("flip at {i}: expected corruption, got {other:?}"),
            }
        }
    }
}
