//! What the node stores in the engine: the internal key (`partition ‖ user key`) and the value
//! envelope (times and version around the user's value). The byte layouts are drawn in
//! [`crate::engine::format`]; this module is their only reader and writer.

use std::ops::Bound;

use super::{err, ErrorKind, Response};
use crate::engine::format::hash64;
use crate::engine::prefix_end;

/// Envelope 2: created and modified times, and the key's version.
pub const ENVELOPE_V2: u8 = 2;
/// Envelope 1: created and modified times only (the version is the engine sequence number).
pub const ENVELOPE_V1: u8 = 1;
pub const ENVELOPE_V1_LEN: usize = 17;
pub const ENVELOPE_V2_LEN: usize = 25;
/// Bytes of the partition prefix in front of every internal key.
pub const PARTITION_PREFIX_LEN: usize = 2;

/// The partition a user key belongs to: `hash64(key) % partitions`.
pub fn partition_of(key: &[u8], partitions: u16) -> u16 {
    (hash64(key) % u64::from(partitions.max(1))) as u16
}

/// The engine key of user key `key` in partition `p`: `p: u16 BE ‖ key`, so a partition is one
/// contiguous engine range.
pub fn internal_key(p: u16, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(PARTITION_PREFIX_LEN + key.len());
    k.extend_from_slice(&p.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// The user key inside an engine key (the engine holds only keys this module wrote, each
/// longer than the prefix; a shorter one yields the empty key rather than a panic).
pub fn user_key(ikey: &[u8]) -> &[u8] {
    ikey.get(PARTITION_PREFIX_LEN..).unwrap_or(&[])
}

/// The engine range of partition `p`'s user keys in `[start, end)`, after `after` (exclusive)
/// when given: `start` and `after` as in a scan (`after` counts only when `>= start`).
pub fn partition_range(
    p: u16,
    start: &[u8],
    end: Option<&[u8]>,
    after: Option<&[u8]>,
) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let lo = match after {
        Some(a) if a >= start => Bound::Excluded(internal_key(p, a)),
        _ => Bound::Included(internal_key(p, start)),
    };
    let hi = match end {
        Some(e) => Bound::Excluded(internal_key(p, e)),
        None => match prefix_end(&p.to_be_bytes()) {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        },
    };
    (lo, hi)
}

/// A stored value, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub created_ms: u64,
    pub modified_ms: u64,
    /// The key's version as written (envelope 2); `None` for envelope 1, whose version is the
    /// engine sequence number of the write.
    pub version: Option<u64>,
    pub value: Vec<u8>,
}

impl Stored {
    /// The version clients see: the one written, or (old envelope) the sequence number.
    pub fn version(&self, seq: u64) -> u64 {
        if crate::bugs::on(crate::bugs::Bug::VersionIsSequence) {
            return seq;
        }
        self.version.unwrap_or(seq)
    }
}

/// Envelope 2 around `value`.
pub fn encode_value(created_ms: u64, modified_ms: u64, version: u64, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(ENVELOPE_V2_LEN + value.len());
    v.push(ENVELOPE_V2);
    v.extend_from_slice(&created_ms.to_le_bytes());
    v.extend_from_slice(&modified_ms.to_le_bytes());
    v.extend_from_slice(&version.to_le_bytes());
    v.extend_from_slice(value);
    v
}

/// Opens an envelope (1 or 2). Anything else is an internal error: the engine verified the
/// bytes' checksums, so a bad envelope is a bug, not a torn disk.
pub fn decode_value(mut raw: Vec<u8>) -> Result<Stored, Response> {
    let unknown = || err(ErrorKind::Internal, "stored value has an unknown envelope");
    let (len, has_version) = match raw.first() {
        Some(&ENVELOPE_V2) => (ENVELOPE_V2_LEN, true),
        Some(&ENVELOPE_V1) => (ENVELOPE_V1_LEN, false),
        _ => return Err(unknown()),
    };
    if raw.len() < len {
        return Err(unknown());
    }
    let word = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&raw[at..at + 8]);
        u64::from_le_bytes(a)
    };
    let created_ms = word(1);
    let modified_ms = word(9);
    let version = has_version.then(|| word(17));
    raw.drain(..len);
    Ok(Stored {
        created_ms,
        modified_ms,
        version,
        value: raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_the_old_one_takes_the_sequence() {
        let s = decode_value(encode_value(3, 4, 77, b"abc")).expect("decodes");
        assert_eq!((s.created_ms, s.modified_ms, s.version(9)), (3, 4, 77));
        assert_eq!(s.value, b"abc");
        let mut old = vec![ENVELOPE_V1];
        old.extend_from_slice(&3u64.to_le_bytes());
        old.extend_from_slice(&4u64.to_le_bytes());
        old.extend_from_slice(b"xyz");
        let s = decode_value(old).expect("decodes");
        assert_eq!((s.version(9), s.value.as_slice()), (9, &b"xyz"[..]));
        assert!(decode_value(vec![2, 1, 2]).is_err());
        assert!(decode_value(vec![9; 40]).is_err());
        assert!(decode_value(Vec::new()).is_err());
    }

    #[test]
    fn internal_keys_keep_a_partition_contiguous() {
        let k = internal_key(0x0102, b"user");
        assert_eq!(k, b"\x01\x02user");
        assert_eq!(user_key(&k), b"user");
        assert_eq!(user_key(b"x"), b"");
        let (lo, hi) = partition_range(7, b"", None, None);
        assert_eq!(lo, Bound::Included(vec![0, 7]));
        assert_eq!(hi, Bound::Excluded(vec![0, 8]));
        let (lo, hi) = partition_range(7, b"b", Some(b"d"), Some(b"c"));
        assert_eq!(lo, Bound::Excluded(internal_key(7, b"c")));
        assert_eq!(hi, Bound::Excluded(internal_key(7, b"d")));
        // `after` before `start` counts for nothing.
        let (lo, _) = partition_range(7, b"b", None, Some(b"a"));
        assert_eq!(lo, Bound::Included(internal_key(7, b"b")));
        assert_eq!(
            partition_range(u16::MAX, b"", None, None).1,
            Bound::Unbounded
        );
        assert!(partition_of(b"anything", 16) < 16);
        assert_eq!(partition_of(b"anything", 0), 0);
    }
}
