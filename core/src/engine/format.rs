//! Every byte layout, in one place: the engine's files (WAL, tables, manifest), and above the
//! engine the node's internal keys and value envelopes and the peer protocol's frames.
//!
//! All integers are little-endian. `varint` is LEB128 (7 bits a byte, low bits first, at most 5
//! bytes for a u32 and 10 for a u64). CRC32C is the Castagnoli polynomial (hardware on x86/ARM).
//! Parsing is total: every decoder here takes untrusted bytes and returns a value or an error; no
//! length read from disk is used to allocate before it has been checked against the bytes that
//! are actually there.
//!
//! # Internal entries
//!
//! Each write becomes an entry `(user key, seq, kind, value)`. `seq` is a 56-bit sequence number
//! given out in write order; `kind` is 0 = delete (tombstone, no value), 1 = put. On disk the
//! pair travels as one u64 *trailer* = `seq << 8 | kind`. Entries sort by user key ascending,
//! then by seq descending, so the newest version of a key comes first.
//!
//! # Write-ahead log (`NNNNNN.wal`)
//!
//! A sequence of records, each framed as
//!
//! ```text
//! +----------+---------+------------+-------------+--------------------+
//! | len: u32 | type: u8| hcrc: u32  | pcrc: u32   | payload: len bytes |
//! +----------+---------+------------+-------------+--------------------+
//!   hcrc = crc32c(len ‖ type)        pcrc = crc32c(payload)
//! ```
//!
//! The header has its own checksum so that a damaged length is told apart from a torn tail.
//! Record type 1 is a write batch, whose payload is
//!
//! ```text
//! first_seq: u64 | count: u32 | count × ( kind: u8 | key_len: varint | key | [val_len: varint | value] )
//! ```
//!
//! (the value part only for puts). The batch's entries take `first_seq, first_seq + 1, …`.
//! A batch is one record, so it is applied whole or not at all. Replay reads records in order and:
//! - stops cleanly at a *torn tail*: a header or payload that runs past the end of the file, a
//!   header whose bytes to the end of the file are all zero (preallocated space), or a payload
//!   checksum mismatch in the very last record of the file;
//! - reports [`Corruption`](crate::Error::Corruption) with file and offset for anything else: a
//!   header checksum mismatch with non-zero bytes after it, a payload checksum mismatch followed by
//!   more records, an unknown type, a payload that does not decode, sequence numbers going back.
//!
//! # SSTable (`NNNNNN.sst`)
//!
//! ```text
//! [data block 0][crc] … [data block n-1][crc] [filter block][crc] [index block][crc]
//! [properties block][crc] [footer: 52 bytes]
//! ```
//!
//! Every block is followed by `crc: u32 = crc32c(block bytes)`. A *handle* is
//! `(offset: u64, len: u32)` and names the block bytes without their crc.
//!
//! Data block (target size `block_bytes`, default 4 KiB): entries, then an offset array for
//! binary search (a search step decodes only the key):
//!
//! ```text
//! n × ( key_len: varint | key | trailer: u64 | val_len: varint | value )
//! n × entry_offset: u32 | n: u32
//! ```
//!
//! Index block: `n: u32`, then for each data block in order
//! `key_len: varint | last user key | trailer: u64 | offset: varint | len: varint` — the last
//! entry of that block, so a point lookup binary-searches the index and reads one data block.
//!
//! Filter block: a blocked Bloom filter over the user keys of the table:
//! `k: u8 | n_lines: u32 | n_lines × 64 bytes`. A key's 64-bit hash ([`hash64`], MurmurHash64A
//! with a fixed seed, so a file means the same on every machine) picks one 512-bit line; `k` bits
//! in that line, 9 bits of a remixed hash each, must all be set. One cache line per probe.
//!
//! Properties block:
//! `entries: u64 | deletes: u64 | min_seq: u64 | max_seq: u64 | data_bytes: u64 |
//!  smallest_len: varint | smallest user key | largest_len: varint | largest user key`.
//!
//! Footer (fixed 52 bytes at the end of the file):
//!
//! ```text
//! filter: (u64, u32) | index: (u64, u32) | properties: (u64, u32) | version: u32 |
//! crc: u32 = crc32c(the 40 bytes before it) | magic: 8 bytes "CCSSTBL\x01"
//! ```
//!
//! # Manifest (`MANIFEST`)
//!
//! The whole live table set, rewritten on every change: written to `MANIFEST.tmp`, synced,
//! renamed over `MANIFEST`, directory synced. A crash leaves the old set or the new one.
//!
//! ```text
//! magic: 8 bytes "CCMANIF\x01" | version: u32 | body_len: u32 | body_crc: u32 | body
//! body = next_file: u64 | last_seq: u64 | log_number: u64 | n: u32 |
//!        n × ( level: u8 | file: u64 | size: u64 | entries: u64 | min_seq: u64 | max_seq: u64 |
//!              smallest_len: varint | smallest | largest_len: varint | largest )
//! ```
//!
//! `log_number`: every WAL numbered below it has been flushed into tables and may be deleted.
//!
//! A log file may exist before any write goes into it: the engine makes the *next* log ahead of
//! time (created, then the directory synced) so that a memtable switch does no file work on the
//! writer's path. Such a log is empty; replay finds nothing in it, and open deletes it with the
//! other logs the manifest covers.
//!
//! # Versions
//!
//! Each format carries version 1 ([`FORMAT_VERSION`]). A reader refuses a version it does not
//! know with a corruption error naming the file.
//!
//! # Above the engine: what the node stores (`crate::proto::envelope`)
//!
//! The node keeps every user key in the engine under an *internal key*, so that a hash
//! partition is one contiguous engine range (what a hand-off copies and a clean-up deletes):
//!
//! ```text
//! internal key = partition: u16 BE | user key        partition = hash64(user key) % partitions
//! ```
//!
//! Big-endian, so engine order is partition order. The value stored under it is an *envelope*
//! around the user's value; the first byte says which:
//!
//! ```text
//! envelope 2 (written today): 2: u8 | created_ms: u64 | modified_ms: u64 | version: u64 | value
//! envelope 1 (read only):     1: u8 | created_ms: u64 | modified_ms: u64 | value
//! ```
//!
//! Times are milliseconds since the Unix epoch. `version` is the key's version (its ETag), from
//! the owner's hybrid clock (`ms << 10`, then a counter), so it survives a move to another node;
//! a key in envelope 1 has the engine sequence number of its write as its version. Any other
//! first byte, or a value shorter than its envelope, is refused as an internal error (the
//! engine has already verified the bytes' checksums). The engine's own checksums cover both.
//!
//! # Replication (`crate::proto::replog`)
//!
//! In a cluster with replicas each node also keeps, under the reserved partition number
//! `FF FF` (no cluster has more than 4,096 partitions), every partition's position and log:
//!
//! ```text
//! position key = FF FF | 'M' | partition: u16 BE
//! position     = 1: u8 | epoch: u64 | lsn: u64 | lsn_epoch: u64 | commit: u64
//! log key      = FF FF | 'L' | partition: u16 BE | lsn: u64 BE
//! log entry    = 1: u8 | epoch: u64 | n: u32 | n × (key | after | before)
//!                each field len: u32 | bytes, len = u32::MAX standing for "none"
//! ```
//!
//! `epoch` in the position is the highest this node accepted for the partition; `lsn` and
//! `lsn_epoch` name its last entry; `commit` is the newest entry known to be on every copy in
//! sync. A log entry holds engine keys (all of its partition) with their stored values after
//! the write (`none`: deleted) and before it (`none`: absent), so a replica can undo an entry a
//! new primary does not have. An entry, the keys it writes and the new position are one engine
//! batch; the write of entry `lsn` deletes entry `lsn − 4096`.
//!
//! # Peer frames (`crate::proto::peer`)
//!
//! Node-to-node messages travel as frames on one TCP connection per direction:
//!
//! ```text
//! len: u32 | crc32c(payload): u32 | payload: len bytes          (len ≤ 64 MiB)
//! ```
//!
//! A bad checksum, an oversized length or a payload that does not decode drops the connection.
//! The payload is a tag byte and the message's fields. `bytes` is `len: u32 | len bytes`, `str`
//! is `bytes` holding UTF-8, `opt` is `0: u8` or `1: u8 | bytes`; integers are little-endian.
//!
//! ```text
//! 13 Hello        version: u32 | from: str | cluster: str | (fields of later versions)
//!  1 Hello (v1)   from: str | cluster: str                       (read only: version 1)
//!  2 Forward      id: u64 | map_version: u64 | request
//!  3 Reply        id: u64 | response
//!  4 NotOwner     id: u64 | map_version: u64
//!  5 ScanParts    id: u64 | map_version: u64 | n: u32 | n × partition: u16 |
//!                 start: bytes | end: opt | after: opt | limit: u64
//!  6 FetchPart    id: u64 | partition: u16 | after: opt | limit: u32
//!  7 PartPage     id: u64 | partition: u16 | n: u32 | n × (user key: bytes | envelope: bytes) |
//!                 done: u8
//!  8 FreezePart   id: u64 | partition: u16
//!  9 PartTail     id: u64 | partition: u16 | n: u32 | n × (user key: bytes | envelope: opt)
//! 10 PartRefused  id: u64 | partition: u16 | reason: str
//! 11 MoveReady    partition: u16
//! 12 Decommission node: str
//! 14 Replicate    partition: u16 | epoch: u64 | commit: u64 | prev_lsn: u64 | prev_epoch: u64 |
//!                 sent_at: u64 | n: u32 | n × (lsn: u64 | epoch: u64 | m: u32 |
//!                 m × (engine key: bytes | value: opt))
//! 15 ReplicaAck   partition: u16 | epoch: u64 | applied: u64 | gap: u8 | lease_from: u64
//! 16 PositionQuery id: u64 | n: u32 | n × partition: u16
//! 17 Positions    id: u64 | n: u32 | n × (partition: u16 | epoch: u64 | lsn: u64 | lsn_epoch: u64)
//! 18 ReplicaLagging  partition: u16 | epoch: u64 | node: str
//! 19 LearnerReady    partition: u16 | epoch: u64 | node: str
//!
//! request   = 1 Get key: bytes | 2 Put key: bytes | value: bytes | cond
//!           | 3 Delete key: bytes | cond | 4 Scan start: bytes | end: opt | after: opt | limit: u64
//!           | 5 Batch n: u32 | n × op | 6 Incr key: bytes | by: i64
//! op        = 1 Put key | value | 2 Delete key | 3 PutIfAbsent key | value     (each bytes)
//! cond      = 0 None | 1 IfMatch version: u64 | 2 IfAbsent | 3 IfExists
//! response  = 1 Value value: bytes | version: u64 | created_ms: u64 | modified_ms: u64
//!           | 2 NotFound | 3 Written version: u64 | 4 Deleted version: u64
//!           | 5 PreconditionFailed (0 | 1 current: u64)
//!           | 6 Page n: u32 | n × (key: bytes | value: bytes | version: u64) | next_after: opt
//!           | 7 Error kind: u8 | message: str | 8 Accepted
//! kind      = 1 BadRequest | 2 TooLarge | 3 Unavailable | 4 Internal | 5 SpansNodes
//!           | 6 NotReady | 7 OwnerDown | 8 Moving | 9 Stalled | 10 OutcomeUnknown
//! ```
//!
//! Every connection starts with `Hello`; a peer whose version is not this node's
//! (`PROTOCOL_VERSION`, 3) is refused, and the log line names both versions. Version 1 had no
//! version field and four error kinds; version 2 had no replication messages (14–19).

/// The one format version every file of this release writes.
pub const FORMAT_VERSION: u32 = 1;
pub const SST_MAGIC: [u8; 8] = *b"CCSSTBL\x01";
pub const MANIFEST_MAGIC: [u8; 8] = *b"CCMANIF\x01";
pub const SST_FOOTER_LEN: usize = 52;
pub const WAL_HEADER_LEN: usize = 13;
pub const WAL_TYPE_BATCH: u8 = 1;
pub const BLOCK_CRC_LEN: usize = 4;

/// The largest sequence number (56 bits).
pub const MAX_SEQ: u64 = (1 << 56) - 1;

/// Kind of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kind {
    Delete = 0,
    Put = 1,
}

impl Kind {
    pub fn from_u8(b: u8) -> Option<Kind> {
        match b {
            0 => Some(Kind::Delete),
            1 => Some(Kind::Put),
            _ => None,
        }
    }
}

pub fn pack_trailer(seq: u64, kind: Kind) -> u64 {
    (seq << 8) | kind as u64
}

pub fn unpack_trailer(t: u64) -> Option<(u64, Kind)> {
    Kind::from_u8((t & 0xff) as u8).map(|k| (t >> 8, k))
}

pub fn crc(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// A bounds-checked cursor over untrusted bytes. Every read fails with a description instead of
/// panicking; the caller turns it into a corruption error with the file and offset.
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }
    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if n > self.remaining() {
            return Err("length runs past the end of the block");
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.bytes(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, &'static str> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self) -> Result<u64, &'static str> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    pub fn varint(&mut self) -> Result<u64, &'static str> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8()?;
            if i == 9 && b > 1 {
                return Err("varint overflows 64 bits");
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes")
    }
    /// A varint length followed by that many bytes; the length is checked against what remains.
    pub fn len_prefixed(&mut self) -> Result<&'a [u8], &'static str> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| "length does not fit in memory")?;
        self.bytes(n)
    }
}

/// Reads a little-endian u32 at `at` (caller has checked bounds).
pub fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// MurmurHash64A with a fixed seed: the Bloom filter's hash. Fixed so that a filter written on one
/// machine answers the same on every other.
pub fn hash64(data: &[u8]) -> u64 {
    const M: u64 = 0xc6a4_a793_5bd1_e995;
    const R: u32 = 47;
    const SEED: u64 = 0x2545_f491_4f6c_dd1d;
    let mut h: u64 = SEED ^ (data.len() as u64).wrapping_mul(M);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let mut k = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h ^= k;
        h = h.wrapping_mul(M);
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, b) in tail.iter().enumerate() {
            h ^= u64::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> R;
    h = h.wrapping_mul(M);
    h ^= h >> R;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trips_and_rejects_garbage() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v));
            let mut c = Cursor::new(&b);
            assert_eq!(c.varint(), Ok(v));
            assert!(c.is_empty());
        }
        assert!(Cursor::new(&[0xff; 11]).varint().is_err());
        assert!(Cursor::new(&[0x80]).varint().is_err());
        assert!(Cursor::new(&[5, 1, 2]).len_prefixed().is_err());
    }

    #[test]
    fn hash_is_fixed() {
        // Pinned values: a change here silently breaks every filter already on disk.
        assert_eq!(hash64(b"corecache"), 0x5861_0375_28fc_1d7a);
        assert_eq!(hash64(b""), 0x4182_f089_23a1_434b);
        assert_ne!(hash64(b"a"), hash64(b"b"));
    }
}
