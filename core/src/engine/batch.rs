//! `WriteBatch`: several puts and deletes applied atomically (one WAL record).

use crate::engine::format::{put_varint, Cursor, Kind};

/// An ordered list of puts and deletes. Later operations on the same key win.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    pub(crate) ops: Vec<(Kind, Vec<u8>, Vec<u8>)>,
    bytes: usize,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        let (k, v) = (key.into(), value.into());
        self.bytes += k.len() + v.len() + 16;
        self.ops.push((Kind::Put, k, v));
        self
    }

    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        let k = key.into();
        self.bytes += k.len() + 16;
        self.ops.push((Kind::Delete, k, Vec::new()));
        self
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// The operations in order: each key with its value, or `None` for a delete.
    pub fn ops(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.ops.iter().map(|(kind, k, v)| match kind {
            Kind::Put => (k.as_slice(), Some(v.as_slice())),
            _ => (k.as_slice(), None),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Approximate encoded size.
    pub fn approximate_bytes(&self) -> usize {
        self.bytes
    }

    /// Appends the WAL payload for this batch, numbered from `first_seq` (see `format`).
    pub(crate) fn encode(&self, first_seq: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(&first_seq.to_le_bytes());
        out.extend_from_slice(&(self.ops.len() as u32).to_le_bytes());
        for (kind, k, v) in &self.ops {
            out.push(*kind as u8);
            put_varint(out, k.len() as u64);
            out.extend_from_slice(k);
            if *kind == Kind::Put {
                put_varint(out, v.len() as u64);
                out.extend_from_slice(v);
            }
        }
    }
}

/// A batch decoded from a WAL record: borrowed slices into the record.
pub(crate) struct DecodedBatch<'a> {
    /// Where the record starts in its file (filled in by the log reader).
    pub offset: u64,
    pub first_seq: u64,
    pub ops: Vec<(Kind, &'a [u8], &'a [u8])>,
}

/// Decodes a batch payload. Total: any bytes give a batch or a description of what is wrong.
pub(crate) fn decode_batch(payload: &[u8]) -> Result<DecodedBatch<'_>, &'static str> {
    let mut c = Cursor::new(payload);
    let first_seq = c.u64()?;
    let count = c.u32()? as usize;
    // Each op takes at least 2 bytes, so a count larger than that is a lie; never preallocate
    // from it unchecked.
    if count > c.remaining() / 2 + 1 {
        return Err("op count larger than the record can hold");
    }
    let mut ops = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let kind = Kind::from_u8(c.u8()?).ok_or("unknown op kind")?;
        let key = c.len_prefixed()?;
        let value = match kind {
            Kind::Put => c.len_prefixed()?,
            Kind::Delete => &[][..],
        };
        ops.push((kind, key, value));
    }
    if !c.is_empty() {
        return Err("trailing bytes after the last op");
    }
    if count == 0 {
        return Err("empty batch");
    }
    if first_seq == 0
        || first_seq
            .checked_add(count as u64)
            .is_none_or(|e| e > crate::engine::format::MAX_SEQ)
    {
        return Err("sequence number out of range");
    }
    Ok(DecodedBatch {
        offset: 0,
        first_seq,
        ops,
    })
}
