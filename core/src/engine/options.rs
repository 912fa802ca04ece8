//! Engine settings.

use crate::engine::error::{Error, Result};

/// When an acknowledged write is on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// Every write returns only after its WAL record is fsynced. Concurrent writers share one
    /// fsync (group commit).
    Always,
    /// Writes reach the operating system at once; the WAL is fsynced every `ms` milliseconds by a
    /// background thread (or by the driver calling [`Db::sync_wal`](crate::Db::sync_wal)).
    Interval { ms: u64 },
    /// Writes reach the operating system at once and survive a process crash, but not a power
    /// loss until the next flush.
    None,
}

/// Who runs flushes and compactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Background {
    /// The engine's own threads (one for flushes, one for compactions).
    Threads,
    /// Nothing runs by itself: the owner calls [`Db::do_background_work`](crate::Db::do_background_work)
    /// (the deterministic simulation and tests do this).
    Manual,
}

/// What a write does when flushes or compactions are behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StallPolicy {
    /// Wait until background work catches up (like RocksDB). Needs `Background::Threads`.
    Block,
    /// Fail at once with [`Error::WriteStall`].
    Refuse,
}

/// Hooks the engine calls around its background work, so a driver that owns a clock can time
/// flushes and compactions (the engine reads none). Called on the background thread; keep them
/// cheap.
pub trait EventListener: Send + Sync {
    fn flush_begin(&self) {}
    /// `bytes` written (0 when it failed).
    fn flush_end(&self, _bytes: u64, _ok: bool) {}
    fn compaction_begin(&self) {}
    fn compaction_end(&self, _bytes: u64, _ok: bool) {}
}

/// An optional listener, in a form `Options` can derive `Clone` and `Debug` with.
#[derive(Clone, Default)]
pub struct Listener(pub Option<std::sync::Arc<dyn EventListener>>);

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Listener(set)"
        } else {
            "Listener(none)"
        })
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub sync: SyncMode,
    /// The memtable is frozen and flushed when it holds this many bytes.
    pub memtable_bytes: usize,
    /// Frozen memtables waiting for flush before writes stall.
    pub max_immutable_memtables: usize,
    /// Level-0 tables that trigger a compaction into level 1.
    pub l0_compaction_trigger: usize,
    /// Level-0 tables at which writes stall.
    pub l0_stop_writes: usize,
    pub block_bytes: usize,
    pub bloom_bits_per_key: u32,
    pub block_cache_bytes: u64,
    /// Compaction output files are cut at this size.
    pub table_bytes: u64,
    pub level1_bytes: u64,
    pub level_multiplier: u64,
    pub num_levels: usize,
    pub background: Background,
    pub stall: StallPolicy,
    /// A memtable switch finds its next log made ahead of time by background work. With
    /// `true`, a switch that finds none makes it itself (a file create and a directory sync on
    /// the writer's path); with `false` it stalls instead (blocks or refuses, as `stall` says)
    /// until background work has made it. A driver whose event loop must never wait on the
    /// disk (the node) sets `false` together with `StallPolicy::Refuse`.
    pub inline_log_files: bool,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub listener: Listener,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sync: SyncMode::Always,
            memtable_bytes: 64 << 20,
            max_immutable_memtables: 2,
            l0_compaction_trigger: 4,
            l0_stop_writes: 20,
            block_bytes: 4096,
            bloom_bits_per_key: 10,
            block_cache_bytes: 64 << 20,
            table_bytes: 32 << 20,
            level1_bytes: 256 << 20,
            level_multiplier: 10,
            num_levels: 7,
            background: Background::Threads,
            stall: StallPolicy::Block,
            inline_log_files: true,
            max_key_bytes: 64 << 10,
            max_value_bytes: 64 << 20,
            listener: Listener::default(),
        }
    }
}

impl Options {
    /// Checks the settings, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::InvalidArgument(what.to_string()));
        if self.memtable_bytes < 1024 {
            return bad("memtable_bytes must be at least 1024");
        }
        if self.max_immutable_memtables == 0 {
            return bad("max_immutable_memtables must be at least 1");
        }
        if self.l0_compaction_trigger < 1 || self.l0_stop_writes <= self.l0_compaction_trigger {
            return bad("l0_stop_writes must be above l0_compaction_trigger (which must be >= 1)");
        }
        if !(64..=(16 << 20)).contains(&self.block_bytes) {
            return bad("block_bytes must be between 64 and 16 MiB");
        }
        if !(1..=32).contains(&self.bloom_bits_per_key) {
            return bad("bloom_bits_per_key must be between 1 and 32");
        }
        if self.table_bytes < 1024 || self.level1_bytes < 1024 {
            return bad("table_bytes and level1_bytes must be at least 1024");
        }
        if self.level_multiplier < 2 {
            return bad("level_multiplier must be at least 2");
        }
        if !(2..=16).contains(&self.num_levels) {
            return bad("num_levels must be between 2 and 16");
        }
        if self.max_key_bytes == 0 || self.max_key_bytes > (16 << 20) {
            return bad("max_key_bytes must be between 1 and 16 MiB");
        }
        if self.max_value_bytes > (256 << 20) {
            return bad("max_value_bytes must be at most 256 MiB");
        }
        if let SyncMode::Interval { ms: 0 } = self.sync {
            return bad("sync interval must be at least 1 ms");
        }
        if self.stall == StallPolicy::Block && self.background == Background::Manual {
            return bad("stall = Block needs background = Threads (nothing else would unblock it)");
        }
        Ok(())
    }

    /// Small sizes that make every flush and compaction path run in a few writes: for tests.
    pub fn tiny() -> Self {
        Options {
            memtable_bytes: 1024,
            block_bytes: 128,
            table_bytes: 2048,
            level1_bytes: 4096,
            level_multiplier: 4,
            l0_compaction_trigger: 2,
            l0_stop_writes: 6,
            block_cache_bytes: 16 << 10,
            num_levels: 4,
            ..Options::default()
        }
    }
}
