//! What replication keeps in the engine, beside the partitions' user keys: each partition's
//! position (the epoch it accepted, its last log entry) and its replication log. Both live
//! under the reserved prefix `FF FF`, a partition number no cluster uses (there are at most
//! 4,096), so no scan or hand-off of a partition's user keys ever meets them. The byte layouts
//! are drawn in [`crate::engine::format`] ("Replication"); this module is their only reader and
//! writer.
//!
//! A write to a replicated partition is one engine batch: the user keys, the log entry that
//! records it (its after-images for catch-up, its before-images so that a replica can undo an
//! entry that was never committed) and the partition's new position. So after any crash a
//! node's position, its log and its data agree.

use super::{err, ErrorKind, Response};

/// The reserved partition number in front of every replication key.
pub const RESERVED: [u8; 2] = [0xFF, 0xFF];
const META: u8 = b'M';
const LOG: u8 = b'L';
const DISK: u8 = b'D';
/// Version byte of a position record and of a log entry.
pub const REPLOG_V1: u8 = 1;
/// Log entries a partition keeps behind its newest (older ones are deleted by the write that
/// makes them that old): enough for a replica that missed a few seconds of writes to catch
/// up from the log instead of by a copy of the whole partition.
pub const LOG_RETAIN: u64 = 4096;

/// One op as the log stores it: the engine key, its value after the entry (`None`: deleted)
/// and before it (`None`: absent).
pub type LoggedOp = (Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>);

/// One partition's durable replication position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    /// The highest epoch this node accepted for the partition: it refuses older ones.
    pub epoch: u64,
    /// The newest log entry applied here (0: none).
    pub lsn: u64,
    /// That entry's epoch.
    pub lsn_epoch: u64,
    /// Entries up to this are known committed (on every copy in sync): never undone, and a
    /// node that becomes primary treats only the entries after it as not committed yet.
    pub commit: u64,
}

/// One write of a partition as the replication log records it: which primary (epoch) gave it
/// which number, and what it did to each key (`None`: deleted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub lsn: u64,
    pub epoch: u64,
    /// Engine keys (all of the entry's partition) and their stored values after the write.
    pub ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// The engine key of partition `p`'s position.
pub fn meta_key(p: u16) -> Vec<u8> {
    let mut k = RESERVED.to_vec();
    k.push(META);
    k.extend_from_slice(&p.to_be_bytes());
    k
}

/// The engine key of partition `p`'s log entry `lsn` (big-endian, so entries sort by number).
pub fn log_key(p: u16, lsn: u64) -> Vec<u8> {
    let mut k = RESERVED.to_vec();
    k.push(LOG);
    k.extend_from_slice(&p.to_be_bytes());
    k.extend_from_slice(&lsn.to_be_bytes());
    k
}

/// Where a node keeps its disk identity (`crate::node::disk_identity`).
pub fn disk_key() -> Vec<u8> {
    let mut k = RESERVED.to_vec();
    k.push(DISK);
    k
}

/// The engine range holding partition `p`'s log entries.
pub fn log_range(p: u16) -> (Vec<u8>, Vec<u8>) {
    (log_key(p, 0), log_key(p, u64::MAX))
}

/// The engine range holding every partition's position.
pub fn meta_range() -> (Vec<u8>, Vec<u8>) {
    let mut lo = RESERVED.to_vec();
    lo.push(META);
    let mut hi = RESERVED.to_vec();
    hi.push(META + 1);
    (lo, hi)
}

/// The entry number a log key of partition `p` names.
pub fn log_lsn(p: u16, key: &[u8]) -> Option<u64> {
    let prefix = log_key(p, 0);
    let rest = key.strip_prefix(&prefix[..prefix.len() - 8])?;
    Some(u64::from_be_bytes(rest.try_into().ok()?))
}

/// The partition a position key names.
pub fn meta_partition(key: &[u8]) -> Option<u16> {
    match key {
        [0xFF, 0xFF, META, a, b] => Some(u16::from_be_bytes([*a, *b])),
        _ => None,
    }
}

fn corrupt(what: &str) -> Response {
    err(
        ErrorKind::Internal,
        format!("a replication {what} in the engine does not decode"),
    )
}

pub fn encode_position(pos: &Position) -> Vec<u8> {
    let mut v = Vec::with_capacity(33);
    v.push(REPLOG_V1);
    v.extend_from_slice(&pos.epoch.to_le_bytes());
    v.extend_from_slice(&pos.lsn.to_le_bytes());
    v.extend_from_slice(&pos.lsn_epoch.to_le_bytes());
    v.extend_from_slice(&pos.commit.to_le_bytes());
    v
}

pub fn decode_position(raw: &[u8]) -> Result<Position, Response> {
    let u =
        |i: usize| -> Option<u64> { Some(u64::from_le_bytes(raw.get(i..i + 8)?.try_into().ok()?)) };
    match (raw.first(), raw.len()) {
        (Some(&REPLOG_V1), 33) => Ok(Position {
            epoch: u(1).ok_or_else(|| corrupt("position"))?,
            lsn: u(9).ok_or_else(|| corrupt("position"))?,
            lsn_epoch: u(17).ok_or_else(|| corrupt("position"))?,
            commit: u(25).ok_or_else(|| corrupt("position"))?,
        }),
        _ => Err(corrupt("position")),
    }
}

/// A log entry as stored: its epoch, then each op's key, after-image and before-image.
pub fn encode_entry(epoch: u64, ops: &[LoggedOp]) -> Vec<u8> {
    let size: usize = ops
        .iter()
        .map(|(k, a, b)| {
            12 + k.len() + a.as_ref().map_or(0, Vec::len) + b.as_ref().map_or(0, Vec::len)
        })
        .sum();
    let mut v = Vec::with_capacity(13 + size);
    v.push(REPLOG_V1);
    v.extend_from_slice(&epoch.to_le_bytes());
    v.extend_from_slice(&(ops.len() as u32).to_le_bytes());
    for (k, after, before) in ops {
        put_bytes(&mut v, Some(k));
        put_bytes(&mut v, after.as_ref());
        put_bytes(&mut v, before.as_ref());
    }
    v
}

/// `None` is written as length `u32::MAX`.
fn put_bytes(v: &mut Vec<u8>, b: Option<&Vec<u8>>) {
    match b {
        None => v.extend_from_slice(&u32::MAX.to_le_bytes()),
        Some(b) => {
            v.extend_from_slice(&(b.len() as u32).to_le_bytes());
            v.extend_from_slice(b);
        }
    }
}

/// A stored log entry: its epoch and its ops (key, after-image, before-image). Every length is
/// checked against what is left before anything is allocated.
pub fn decode_entry(raw: &[u8]) -> Result<(u64, Vec<LoggedOp>), Response> {
    let mut r = raw;
    let mut take = |n: usize| -> Result<&[u8], Response> {
        if r.len() < n {
            return Err(corrupt("log entry"));
        }
        let (a, b) = r.split_at(n);
        r = b;
        Ok(a)
    };
    if take(1)? != [REPLOG_V1] {
        return Err(corrupt("log entry"));
    }
    let epoch = u64::from_le_bytes(take(8)?.try_into().map_err(|_| corrupt("log entry"))?);
    let n = u32::from_le_bytes(take(4)?.try_into().map_err(|_| corrupt("log entry"))?) as usize;
    let mut ops = Vec::with_capacity(n.min(raw.len() / 12));
    for _ in 0..n {
        let mut field = || -> Result<Option<Vec<u8>>, Response> {
            let len = u32::from_le_bytes(take(4)?.try_into().map_err(|_| corrupt("log entry"))?);
            if len == u32::MAX {
                return Ok(None);
            }
            Ok(Some(take(len as usize)?.to_vec()))
        };
        let k = field()?.ok_or_else(|| corrupt("log entry"))?;
        let after = field()?;
        let before = field()?;
        ops.push((k, after, before));
    }
    if !r.is_empty() {
        return Err(corrupt("log entry"));
    }
    Ok((epoch, ops))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_entries_round_trip_and_damage_is_an_error() {
        let pos = Position {
            epoch: 7,
            lsn: 99,
            lsn_epoch: 6,
            commit: 97,
        };
        assert_eq!(decode_position(&encode_position(&pos)).unwrap(), pos);
        assert!(decode_position(&[1, 2, 3]).is_err());
        let ops = vec![
            (b"\x00\x01k".to_vec(), Some(b"v".to_vec()), None),
            (b"\x00\x01j".to_vec(), None, Some(Vec::new())),
        ];
        let raw = encode_entry(5, &ops);
        assert_eq!(decode_entry(&raw).unwrap(), (5, ops));
        for cut in 0..raw.len() {
            assert!(decode_entry(&raw[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(meta_partition(&meta_key(513)), Some(513));
        assert_eq!(meta_partition(&log_key(513, 1)), None);
        let (lo, hi) = meta_range();
        assert!(lo <= meta_key(0) && meta_key(u16::MAX) < hi && log_key(u16::MAX, u64::MAX) < lo);
        // Log entries of one partition sort by number.
        assert!(log_key(3, 255) < log_key(3, 256) && log_key(3, u64::MAX) < log_key(4, 0));
    }
}
