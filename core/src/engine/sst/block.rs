//! Data blocks: decoding and search. Every accessor is bounds-checked; a damaged block gives an
//! error, never a panic.

use crate::engine::format::{le_u32, unpack_trailer, Cursor, Kind};

/// A decoded (checksum-verified) data block.
pub(crate) struct Block {
    data: Vec<u8>,
    n: usize,
    offsets_at: usize,
}

pub(crate) struct BlockEntry<'a> {
    pub key: &'a [u8],
    pub seq: u64,
    pub kind: Kind,
    pub value: &'a [u8],
}

impl Block {
    pub fn decode(data: Vec<u8>) -> Result<Block, &'static str> {
        if data.len() < 4 {
            return Err("data block shorter than its entry count");
        }
        let n = le_u32(&data, data.len() - 4) as usize;
        let offsets_len = n.checked_mul(4).ok_or("entry count overflows")?;
        let offsets_at = (data.len() - 4)
            .checked_sub(offsets_len)
            .ok_or("entry count larger than the block")?;
        if n == 0 {
            return Err("empty data block");
        }
        Ok(Block {
            data,
            n,
            offsets_at,
        })
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn size(&self) -> usize {
        self.data.len()
    }

    fn entry_at(&self, i: usize) -> Result<BlockEntry<'_>, &'static str> {
        let mut c = self.cursor_at(i)?;
        let key = c.len_prefixed()?;
        let (seq, kind) = unpack_trailer(c.u64()?).ok_or("unknown entry kind")?;
        let value = c.len_prefixed()?;
        Ok(BlockEntry {
            key,
            seq,
            kind,
            value,
        })
    }

    fn cursor_at(&self, i: usize) -> Result<Cursor<'_>, &'static str> {
        let off = le_u32(&self.data, self.offsets_at + 4 * i) as usize;
        if off >= self.offsets_at {
            return Err("entry offset outside the block");
        }
        Ok(Cursor::new(&self.data[off..self.offsets_at]))
    }

    /// Only the key of entry `i` (what a binary search needs).
    fn key_at(&self, i: usize) -> Result<&[u8], &'static str> {
        self.cursor_at(i)?.len_prefixed()
    }

    pub fn entry(&self, i: usize) -> Result<BlockEntry<'_>, &'static str> {
        if i >= self.n {
            return Err("entry index out of range");
        }
        self.entry_at(i)
    }

    /// Index of the first entry whose key is `>= key` (`len()` if none).
    pub fn seek(&self, key: &[u8]) -> Result<usize, &'static str> {
        let (mut lo, mut hi) = (0, self.n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.key_at(mid)? < key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }
}
