//! The block cache: decoded data blocks, shared by every table, bounded by a byte budget.

use std::sync::Arc;

use crate::engine::sst::block::Block;

#[derive(Clone)]
struct BlockWeighter;

impl quick_cache::Weighter<(u64, u64), Arc<Block>> for BlockWeighter {
    fn weight(&self, _key: &(u64, u64), val: &Arc<Block>) -> u64 {
        val.size() as u64 + 64
    }
}

/// Keyed by (table number, block offset). Table numbers are never reused, so a stale entry can
/// only waste space until evicted, never answer for another table.
pub struct BlockCache {
    inner: quick_cache::sync::Cache<(u64, u64), Arc<Block>, BlockWeighter>,
    capacity: u64,
}

impl BlockCache {
    pub fn new(capacity_bytes: u64) -> Self {
        let items = (capacity_bytes / 4096).max(16) as usize;
        BlockCache {
            inner: quick_cache::sync::Cache::with_weighter(
                items,
                capacity_bytes.max(1),
                BlockWeighter,
            ),
            capacity: capacity_bytes,
        }
    }

    pub(crate) fn get(&self, table: u64, offset: u64) -> Option<Arc<Block>> {
        if self.capacity == 0 {
            return None;
        }
        self.inner.get(&(table, offset))
    }

    pub(crate) fn insert(&self, table: u64, offset: u64, block: Arc<Block>) {
        if self.capacity == 0 {
            return;
        }
        self.inner.insert((table, offset), block);
    }

    /// Bytes currently held.
    pub fn used_bytes(&self) -> u64 {
        self.inner.weight()
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.capacity
    }
}
