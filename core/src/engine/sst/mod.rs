//! SSTables: immutable sorted files of entries (see `format` for the byte layout).
//!
//! A table holds at most one entry per user key (the newest at the time it was written); flush
//! and compaction both drop shadowed versions before writing. The index and the filter are read
//! once at open and stay in memory; data blocks are read on demand through the block cache.

pub(crate) mod block;
pub(crate) mod bloom;

use std::ops::Bound;
use std::sync::Arc;

use crate::engine::cache::BlockCache;
use crate::engine::disk::DiskFile;
use crate::engine::error::{Error, Result};
use crate::engine::format::{
    crc, le_u32, pack_trailer, put_varint, Cursor, Kind, BLOCK_CRC_LEN, FORMAT_VERSION,
    SST_FOOTER_LEN, SST_MAGIC,
};
use crate::engine::memtable::Entry;
use block::Block;
use bloom::{Bloom, BloomBuilder};

pub(crate) fn table_name(number: u64) -> String {
    format!("{number:06}.sst")
}

/// What a table's properties block says about it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableProps {
    pub entries: u64,
    pub deletes: u64,
    pub min_seq: u64,
    pub max_seq: u64,
    pub data_bytes: u64,
    pub smallest: Vec<u8>,
    pub largest: Vec<u8>,
}

impl TableProps {
    fn encode(&self, out: &mut Vec<u8>) {
        for v in [
            self.entries,
            self.deletes,
            self.min_seq,
            self.max_seq,
            self.data_bytes,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        put_varint(out, self.smallest.len() as u64);
        out.extend_from_slice(&self.smallest);
        put_varint(out, self.largest.len() as u64);
        out.extend_from_slice(&self.largest);
    }

    fn decode(b: &[u8]) -> Result<TableProps, &'static str> {
        let mut c = Cursor::new(b);
        let p = TableProps {
            entries: c.u64()?,
            deletes: c.u64()?,
            min_seq: c.u64()?,
            max_seq: c.u64()?,
            data_bytes: c.u64()?,
            smallest: c.len_prefixed()?.to_vec(),
            largest: c.len_prefixed()?.to_vec(),
        };
        if !c.is_empty() {
            return Err("trailing bytes in properties block");
        }
        if p.entries == 0 || p.smallest > p.largest || p.min_seq > p.max_seq {
            return Err("properties are inconsistent");
        }
        Ok(p)
    }
}

/// Settings a builder needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BuildOptions {
    pub block_bytes: usize,
    pub bloom_bits_per_key: u32,
}

/// Writes one table, appending to `file` in large chunks.
pub(crate) struct TableBuilder {
    file: Arc<dyn DiskFile>,
    name: String,
    opts: BuildOptions,
    out: Vec<u8>,
    written: u64,
    block: Vec<u8>,
    block_offsets: Vec<u32>,
    last_key: Vec<u8>,
    last_trailer: u64,
    index: Vec<u8>,
    index_count: u32,
    bloom: BloomBuilder,
    props: TableProps,
}

const WRITE_CHUNK: usize = 256 << 10;

impl TableBuilder {
    pub fn new(file: Arc<dyn DiskFile>, name: String, opts: BuildOptions) -> Self {
        TableBuilder {
            file,
            name,
            opts,
            out: Vec::with_capacity(WRITE_CHUNK + opts.block_bytes * 2),
            written: 0,
            block: Vec::with_capacity(opts.block_bytes * 2),
            block_offsets: Vec::new(),
            last_key: Vec::new(),
            last_trailer: 0,
            index: Vec::new(),
            index_count: 0,
            bloom: BloomBuilder::new(opts.bloom_bits_per_key),
            props: TableProps {
                min_seq: u64::MAX,
                ..TableProps::default()
            },
        }
    }

    /// Bytes the file will have if finished now (roughly).
    pub fn estimated_size(&self) -> u64 {
        self.written + self.out.len() as u64 + self.block.len() as u64
    }

    /// Adds an entry; keys must come in strictly increasing order.
    pub fn add(&mut self, key: &[u8], seq: u64, kind: Kind, value: &[u8]) -> Result<()> {
        if self.props.entries > 0 && key <= self.last_key.as_slice() {
            // Only damaged input (a table whose keys are out of order) can get here.
            return Err(Error::corruption(
                &self.name,
                self.estimated_size(),
                "keys out of order while writing a table (an input table is damaged)",
            ));
        }
        if self.props.entries == 0 {
            self.props.smallest = key.to_vec();
        }
        self.block_offsets.push(self.block.len() as u32);
        put_varint(&mut self.block, key.len() as u64);
        self.block.extend_from_slice(key);
        let trailer = pack_trailer(seq, kind);
        self.block.extend_from_slice(&trailer.to_le_bytes());
        put_varint(&mut self.block, value.len() as u64);
        self.block.extend_from_slice(value);
        self.bloom.add(key);
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.last_trailer = trailer;
        self.props.entries += 1;
        if kind == Kind::Delete {
            self.props.deletes += 1;
        }
        self.props.min_seq = self.props.min_seq.min(seq);
        self.props.max_seq = self.props.max_seq.max(seq);
        if self.block.len() >= self.opts.block_bytes {
            self.finish_block()?;
        }
        Ok(())
    }

    fn finish_block(&mut self) -> Result<()> {
        if self.block_offsets.is_empty() {
            return Ok(());
        }
        for off in &self.block_offsets {
            self.block.extend_from_slice(&off.to_le_bytes());
        }
        self.block
            .extend_from_slice(&(self.block_offsets.len() as u32).to_le_bytes());
        let offset = self.written + self.out.len() as u64;
        put_varint(&mut self.index, self.last_key.len() as u64);
        self.index.extend_from_slice(&self.last_key);
        self.index
            .extend_from_slice(&self.last_trailer.to_le_bytes());
        put_varint(&mut self.index, offset);
        put_varint(&mut self.index, self.block.len() as u64);
        self.index_count += 1;
        self.out.extend_from_slice(&self.block);
        self.out.extend_from_slice(&crc(&self.block).to_le_bytes());
        self.props.data_bytes += self.block.len() as u64;
        self.block.clear();
        self.block_offsets.clear();
        if self.out.len() >= WRITE_CHUNK {
            self.flush_out()?;
        }
        Ok(())
    }

    fn flush_out(&mut self) -> Result<()> {
        self.file
            .append(&self.out)
            .map_err(|e| Error::io(&self.name, e))?;
        self.written += self.out.len() as u64;
        self.out.clear();
        Ok(())
    }

    fn put_block(&mut self, block: &[u8]) -> (u64, u32) {
        let offset = self.written + self.out.len() as u64;
        self.out.extend_from_slice(block);
        self.out.extend_from_slice(&crc(block).to_le_bytes());
        (offset, block.len() as u32)
    }

    /// Writes the filter, index, properties and footer, then syncs the file. Returns the file
    /// size and the properties.
    pub fn finish(mut self) -> Result<(u64, TableProps)> {
        assert!(self.props.entries > 0, "a table needs at least one entry");
        self.finish_block()?;
        self.props.largest = self.last_key.clone();
        let mut filter = Vec::new();
        self.bloom.finish(&mut filter);
        let filter_h = self.put_block(&filter);
        let mut index = Vec::with_capacity(self.index.len() + 4);
        index.extend_from_slice(&self.index_count.to_le_bytes());
        index.extend_from_slice(&self.index);
        let index_h = self.put_block(&index);
        let mut props = Vec::new();
        self.props.encode(&mut props);
        let props_h = self.put_block(&props);
        let mut footer = Vec::with_capacity(SST_FOOTER_LEN);
        for (off, len) in [filter_h, index_h, props_h] {
            footer.extend_from_slice(&off.to_le_bytes());
            footer.extend_from_slice(&len.to_le_bytes());
        }
        footer.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        let fcrc = crc(&footer);
        footer.extend_from_slice(&fcrc.to_le_bytes());
        footer.extend_from_slice(&SST_MAGIC);
        debug_assert_eq!(footer.len(), SST_FOOTER_LEN);
        self.out.extend_from_slice(&footer);
        self.flush_out()?;
        self.file.sync().map_err(|e| Error::io(&self.name, e))?;
        Ok((self.written, self.props))
    }
}

/// The decoded index: every block's last key in one contiguous buffer (a binary search then
/// walks one allocation instead of chasing a pointer per probe), plus block handles.
struct Index {
    keys: Vec<u8>,
    entries: Vec<IndexEntry>,
}

impl Index {
    fn len(&self) -> usize {
        self.entries.len()
    }
    fn key(&self, i: usize) -> &[u8] {
        let e = &self.entries[i];
        &self.keys[e.key_at as usize..(e.key_at + e.key_len) as usize]
    }
}

struct IndexEntry {
    key_at: u32,
    key_len: u32,
    offset: u64,
    len: u32,
}

/// An open table.
pub struct Table {
    pub number: u64,
    name: String,
    file: Arc<dyn DiskFile>,
    index: Index,
    bloom: Bloom,
    props: TableProps,
    size: u64,
    cache: Arc<BlockCache>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("number", &self.number)
            .field("size", &self.size)
            .field("props", &self.props)
            .finish()
    }
}

/// Reads one block and checks its crc. The returned vector holds exactly the block bytes (its
/// capacity keeps the 4 crc bytes, which saves a reallocation and copy per block read).
fn read_block(file: &dyn DiskFile, name: &str, offset: u64, len: u32) -> Result<Vec<u8>> {
    let total = len as usize + BLOCK_CRC_LEN;
    let mut buf = vec![0u8; total];
    file.read_at(offset, &mut buf)
        .map_err(|e| Error::corruption(name, offset, format!("block unreadable: {e}")))?;
    let stored = le_u32(&buf, len as usize);
    buf.truncate(len as usize);
    let actual = crc(&buf);
    if stored != actual {
        return Err(Error::corruption(
            name,
            offset,
            format!("block checksum mismatch: stored {stored:#010x}, computed {actual:#010x}"),
        ));
    }
    Ok(buf)
}

impl Table {
    /// Opens a table: checks the footer, then reads and verifies filter, index and properties.
    pub(crate) fn open(
        file: Arc<dyn DiskFile>,
        number: u64,
        cache: Arc<BlockCache>,
    ) -> Result<Table> {
        let name = table_name(number);
        let size = file.len().map_err(|e| Error::io(&name, e))?;
        if size < SST_FOOTER_LEN as u64 {
            return Err(Error::corruption(&name, 0, "file shorter than a footer"));
        }
        let foot_at = size - SST_FOOTER_LEN as u64;
        let mut footer = [0u8; SST_FOOTER_LEN];
        file.read_at(foot_at, &mut footer)
            .map_err(|e| Error::io(&name, e))?;
        if footer[44..52] != SST_MAGIC {
            return Err(Error::corruption(&name, foot_at + 44, "bad table magic"));
        }
        let stored = le_u32(&footer, 40);
        if crc(&footer[..40]) != stored {
            return Err(Error::corruption(
                &name,
                foot_at,
                "footer checksum mismatch",
            ));
        }
        let mut c = Cursor::new(&footer[..40]);
        let mut handles = [(0u64, 0u32); 3];
        for h in &mut handles {
            *h = (
                c.u64().map_err(|e| Error::corruption(&name, foot_at, e))?,
                c.u32().map_err(|e| Error::corruption(&name, foot_at, e))?,
            );
        }
        let version = c.u32().map_err(|e| Error::corruption(&name, foot_at, e))?;
        if version != FORMAT_VERSION {
            return Err(Error::corruption(
                &name,
                foot_at + 36,
                format!("unknown table format version {version}"),
            ));
        }
        for (off, len) in handles {
            let end = off.checked_add(u64::from(len) + BLOCK_CRC_LEN as u64);
            if end.is_none_or(|e| e > foot_at) {
                return Err(Error::corruption(
                    &name,
                    foot_at,
                    "block handle outside the file",
                ));
            }
        }
        let [filter_h, index_h, props_h] = handles;
        let filter = read_block(&*file, &name, filter_h.0, filter_h.1)?;
        let bloom = Bloom::decode(&filter).map_err(|e| Error::corruption(&name, filter_h.0, e))?;
        let props_b = read_block(&*file, &name, props_h.0, props_h.1)?;
        let props =
            TableProps::decode(&props_b).map_err(|e| Error::corruption(&name, props_h.0, e))?;
        let index_b = read_block(&*file, &name, index_h.0, index_h.1)?;
        let index = Self::decode_index(&index_b, filter_h.0)
            .map_err(|e| Error::corruption(&name, index_h.0, e))?;
        if index.key(index.len() - 1) != props.largest.as_slice() {
            return Err(Error::corruption(
                &name,
                index_h.0,
                "index disagrees with properties",
            ));
        }
        Ok(Table {
            number,
            name,
            file,
            index,
            bloom,
            props,
            size,
            cache,
        })
    }

    fn decode_index(b: &[u8], data_end: u64) -> Result<Index, &'static str> {
        let mut c = Cursor::new(b);
        let n = c.u32()? as usize;
        if n == 0 || n > b.len() / 4 {
            return Err("index entry count out of range");
        }
        let mut index = Index {
            keys: Vec::with_capacity(b.len()),
            entries: Vec::with_capacity(n),
        };
        let mut next_off = 0u64;
        for i in 0..n {
            let key = c.len_prefixed()?;
            let _trailer = c.u64()?;
            let offset = c.varint()?;
            let len = u32::try_from(c.varint()?).map_err(|_| "block length too large")?;
            if offset != next_off {
                return Err("index blocks are not contiguous");
            }
            next_off = offset + u64::from(len) + BLOCK_CRC_LEN as u64;
            if next_off > data_end {
                return Err("index points past the data");
            }
            if i > 0 && index.key(i - 1) >= key {
                return Err("index keys out of order");
            }
            // Fits: the keys buffer never exceeds the index block, which is under 4 GiB.
            let key_at = index.keys.len() as u32;
            index.keys.extend_from_slice(key);
            index.entries.push(IndexEntry {
                key_at,
                key_len: key.len() as u32,
                offset,
                len,
            });
        }
        if !c.is_empty() {
            return Err("trailing bytes in index");
        }
        Ok(index)
    }

    pub fn props(&self) -> &TableProps {
        &self.props
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes this table keeps in memory for its whole life (index and filter).
    pub fn pinned_bytes(&self) -> usize {
        self.bloom.bytes()
            + self.index.keys.len()
            + self.index.entries.len() * std::mem::size_of::<IndexEntry>()
    }

    fn block(&self, i: usize, fill_cache: bool) -> Result<Arc<Block>> {
        let h = &self.index.entries[i];
        if let Some(b) = self.cache.get(self.number, h.offset) {
            return Ok(b);
        }
        let raw = read_block(&*self.file, &self.name, h.offset, h.len)?;
        let block =
            Arc::new(Block::decode(raw).map_err(|e| Error::corruption(&self.name, h.offset, e))?);
        if fill_cache {
            self.cache.insert(self.number, h.offset, block.clone());
        }
        Ok(block)
    }

    /// Index of the first block whose last key is `>= key`.
    fn block_for(&self, key: &[u8]) -> usize {
        let (mut lo, mut hi) = (0, self.index.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.index.key(mid) < key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Point lookup with the key's precomputed hash. Reads at most one data block, and none when
    /// the filter rules the key out.
    pub(crate) fn get(&self, key: &[u8], hash: u64) -> Result<Option<(u64, Kind, Vec<u8>)>> {
        if key < self.props.smallest.as_slice() || key > self.props.largest.as_slice() {
            return Ok(None);
        }
        if !self.bloom.may_contain_hash(hash) {
            return Ok(None);
        }
        let bi = self.block_for(key);
        if bi >= self.index.len() {
            return Ok(None);
        }
        let block = self.block(bi, true)?;
        let off = self.index.entries[bi].offset;
        let i = block
            .seek(key)
            .map_err(|e| Error::corruption(&self.name, off, e))?;
        if i >= block.len() {
            return Ok(None);
        }
        let e = block
            .entry(i)
            .map_err(|e| Error::corruption(&self.name, off, e))?;
        if e.key == key {
            Ok(Some((e.seq, e.kind, e.value.to_vec())))
        } else {
            Ok(None)
        }
    }

    /// Does the table's key range touch `[lo, hi]`?
    pub fn overlaps(&self, lo: &[u8], hi: &[u8]) -> bool {
        self.props.smallest.as_slice() <= hi && self.props.largest.as_slice() >= lo
    }
}

/// Walks one table in key order.
pub(crate) struct TableIter {
    table: Arc<Table>,
    block_idx: usize,
    block: Option<Arc<Block>>,
    pos: usize,
    current: Option<Entry>,
    fill_cache: bool,
}

impl TableIter {
    /// Positions at the first entry at or after `start`.
    pub fn new(table: Arc<Table>, start: Bound<&[u8]>, fill_cache: bool) -> Result<Self> {
        let block_idx = match start {
            Bound::Unbounded => 0,
            Bound::Included(k) | Bound::Excluded(k) => table.block_for(k),
        };
        let mut it = TableIter {
            table,
            block_idx,
            block: None,
            pos: 0,
            current: None,
            fill_cache,
        };
        if it.block_idx < it.table.index.len() {
            let block = it.table.block(it.block_idx, fill_cache)?;
            let off = it.table.index.entries[it.block_idx].offset;
            it.pos = match start {
                Bound::Unbounded => Ok(0),
                Bound::Included(k) => block.seek(k),
                Bound::Excluded(k) => block.seek(k).and_then(|i| {
                    if i < block.len() && block.entry(i)?.key == k {
                        Ok(i + 1)
                    } else {
                        Ok(i)
                    }
                }),
            }
            .map_err(|e| Error::corruption(&it.table.name, off, e))?;
            it.block = Some(block);
        }
        it.load()?;
        Ok(it)
    }

    fn load(&mut self) -> Result<()> {
        loop {
            let Some(block) = &self.block else {
                self.current = None;
                return Ok(());
            };
            if self.pos < block.len() {
                let off = self.table.index.entries[self.block_idx].offset;
                let e = block
                    .entry(self.pos)
                    .map_err(|e| Error::corruption(&self.table.name, off, e))?;
                self.current = Some(Entry {
                    key: e.key.to_vec(),
                    seq: e.seq,
                    kind: e.kind,
                    value: e.value.to_vec(),
                });
                return Ok(());
            }
            self.block_idx += 1;
            self.pos = 0;
            self.block = if self.block_idx < self.table.index.len() {
                Some(self.table.block(self.block_idx, self.fill_cache)?)
            } else {
                None
            };
        }
    }

    pub fn current(&self) -> Option<&Entry> {
        self.current.as_ref()
    }

    pub fn take_current(&mut self) -> Option<Entry> {
        self.current.take()
    }

    pub fn advance(&mut self) -> Result<()> {
        self.pos += 1;
        self.load()
    }
}
