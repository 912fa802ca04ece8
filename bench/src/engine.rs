//! The engines under test, behind one small trait so every workload runs the same code on each.

use std::path::PathBuf;

use anyhow::{bail, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EngineKind {
    CoreCache,
    Fjall,
    RocksDb,
}

impl EngineKind {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "corecache" => Ok(EngineKind::CoreCache),
            "fjall" => Ok(EngineKind::Fjall),
            "rocksdb" if cfg!(feature = "rocksdb") => Ok(EngineKind::RocksDb),
            "rocksdb" => bail!("rocksdb needs the bench crate's `rocksdb` feature"),
            _ => bail!("unknown engine {name:?} (expected corecache, fjall or rocksdb)"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EngineKind::CoreCache => "corecache",
            EngineKind::Fjall => "fjall",
            EngineKind::RocksDb => "rocksdb",
        }
    }
}

/// What every engine is given: the same memory budgets, and whether each put must be on disk
/// before it returns.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub dir: PathBuf,
    pub memtable_bytes: usize,
    pub cache_bytes: usize,
    /// Each put returns only after its log record is fdatasync'd.
    pub durable: bool,
}

/// Bloom filter size for every engine.
pub const BLOOM_BITS_PER_KEY: u32 = 10;
/// Data block size for every engine.
pub const BLOCK_BYTES: usize = 4096;

pub trait Engine: Send + Sync {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()>;
    /// The value's length, if the key is there.
    fn get(&self, key: &[u8]) -> Result<Option<usize>>;
    /// Reads up to `limit` entries from `start` on; returns how many there were.
    fn scan(&self, start: &[u8], limit: usize) -> Result<usize>;
    /// A one-line summary of the engine's internal state, for the log.
    fn stats(&self) -> String;
    fn close(self: Box<Self>) -> Result<()>;
}

pub fn open(kind: EngineKind, config: &EngineConfig) -> Result<Box<dyn Engine>> {
    match kind {
        EngineKind::CoreCache => Ok(Box::new(corecache::CoreCache::open(config)?)),
        EngineKind::Fjall => Ok(Box::new(fjall_engine::Fjall::open(config)?)),
        #[cfg(feature = "rocksdb")]
        EngineKind::RocksDb => Ok(Box::new(rocks::Rocks::open(config)?)),
        #[cfg(not(feature = "rocksdb"))]
        EngineKind::RocksDb => bail!("rocksdb needs the bench crate's `rocksdb` feature"),
    }
}

/// One line naming each engine's settings, printed above the results.
pub fn describe(kind: EngineKind) -> &'static str {
    match kind {
        EngineKind::CoreCache => {
            "corecache: SyncMode::None (durable*: SyncMode::Always, group commit), \
             Options::memtable_bytes, block_cache_bytes, bloom 10 bits/key, 4 KiB blocks, no compression"
        }
        EngineKind::Fjall => {
            "fjall: plain insert (durable*: insert then Database::persist(SyncData), i.e. fdatasync like the others), \
             max_memtable_size, cache_size, bloom 10 bits/key on every level, 4 KiB blocks, compression off"
        }
        EngineKind::RocksDb => {
            "rocksdb: WriteOptions sync=false, WAL on (durable*: sync=true), write_buffer_size, \
             LRU block cache, bloom 10 bits/key, 4 KiB blocks, compression off"
        }
    }
}

mod corecache {
    use std::ops::Bound;
    use std::sync::Arc;

    use anyhow::Result;
    use corecache_core::{Db, Options, StdDisk, SyncMode};

    use super::{Engine, EngineConfig, BLOCK_BYTES, BLOOM_BITS_PER_KEY};

    pub struct CoreCache {
        db: Db,
    }

    impl CoreCache {
        pub fn open(config: &EngineConfig) -> Result<Self> {
            let disk = Arc::new(StdDisk::open(&config.dir)?);
            let opts = Options {
                sync: if config.durable {
                    SyncMode::Always
                } else {
                    SyncMode::None
                },
                memtable_bytes: config.memtable_bytes,
                block_cache_bytes: config.cache_bytes as u64,
                bloom_bits_per_key: BLOOM_BITS_PER_KEY,
                block_bytes: BLOCK_BYTES,
                ..Options::default()
            };
            Ok(CoreCache {
                db: Db::open(disk, opts)?,
            })
        }
    }

    impl Engine for CoreCache {
        fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
            self.db.put(key, value)?;
            Ok(())
        }

        fn get(&self, key: &[u8]) -> Result<Option<usize>> {
            Ok(self.db.get(key)?.map(|v| v.len()))
        }

        fn scan(&self, start: &[u8], limit: usize) -> Result<usize> {
            let mut n = 0;
            for entry in self
                .db
                .scan(Bound::Included(start), Bound::Unbounded)?
                .take(limit)
            {
                entry?;
                n += 1;
            }
            Ok(n)
        }

        fn stats(&self) -> String {
            let s = self.db.stats();
            format!(
                "tables per level {:?}, flushes {}, compactions {} ({} trivial moves), \
                 write stalls {}, wal syncs {}, background errors {}{}",
                s.tables_per_level,
                s.flushes,
                s.compactions,
                s.trivial_moves,
                s.write_stalls,
                s.wal_syncs,
                s.background_errors,
                s.last_background_error
                    .map(|e| format!(" (last: {e})"))
                    .unwrap_or_default()
            )
        }

        fn close(self: Box<Self>) -> Result<()> {
            self.db.close()?;
            Ok(())
        }
    }
}

mod fjall_engine {
    use anyhow::Result;
    use fjall::config::{
        BlockSizePolicy, BloomConstructionPolicy, CompressionPolicy, FilterPolicy,
        FilterPolicyEntry,
    };
    use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

    use super::{Engine, EngineConfig, BLOCK_BYTES, BLOOM_BITS_PER_KEY};

    pub struct Fjall {
        db: Database,
        keyspace: Keyspace,
        durable: bool,
    }

    impl Fjall {
        pub fn open(config: &EngineConfig) -> Result<Self> {
            let db = Database::builder(&config.dir)
                .cache_size(config.cache_bytes as u64)
                .open()?;
            let memtable_bytes = config.memtable_bytes as u64;
            let keyspace = db.keyspace("bench", || {
                KeyspaceCreateOptions::default()
                    .max_memtable_size(memtable_bytes)
                    .filter_policy(FilterPolicy::all(FilterPolicyEntry::Bloom(
                        BloomConstructionPolicy::BitsPerKey(BLOOM_BITS_PER_KEY as f32),
                    )))
                    .data_block_size_policy(BlockSizePolicy::all(BLOCK_BYTES as u32))
                    .data_block_compression_policy(CompressionPolicy::disabled())
            })?;
            Ok(Fjall {
                db,
                keyspace,
                durable: config.durable,
            })
        }
    }

    impl Engine for Fjall {
        fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
            self.keyspace.insert(key, value)?;
            if self.durable {
                self.db.persist(PersistMode::SyncData)?;
            }
            Ok(())
        }

        fn get(&self, key: &[u8]) -> Result<Option<usize>> {
            Ok(self.keyspace.get(key)?.map(|v| v.len()))
        }

        fn scan(&self, start: &[u8], limit: usize) -> Result<usize> {
            let mut n = 0;
            for guard in self.keyspace.range(start..).take(limit) {
                guard.into_inner()?;
                n += 1;
            }
            Ok(n)
        }

        fn stats(&self) -> String {
            format!(
                "tables {} (L0 {}), compactions {}, journals {}",
                self.keyspace.table_count(),
                self.keyspace.l0_table_count(),
                self.db.compactions_completed(),
                self.db.journal_count()
            )
        }

        fn close(self: Box<Self>) -> Result<()> {
            // Dropping the database persists the journal too; doing it here reports errors.
            self.db.persist(PersistMode::SyncData)?;
            Ok(())
        }
    }
}

#[cfg(feature = "rocksdb")]
mod rocks {
    use anyhow::Result;
    use rocksdb::{BlockBasedOptions, Cache, DBCompressionType, Options, WriteOptions, DB};

    use super::{Engine, EngineConfig, BLOCK_BYTES, BLOOM_BITS_PER_KEY};

    pub struct Rocks {
        db: DB,
        write: WriteOptions,
    }

    impl Rocks {
        pub fn open(config: &EngineConfig) -> Result<Self> {
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&Cache::new_lru_cache(config.cache_bytes));
            table.set_bloom_filter(f64::from(BLOOM_BITS_PER_KEY), false);
            table.set_block_size(BLOCK_BYTES);
            let mut opts = Options::default();
            opts.create_if_missing(true);
            opts.set_block_based_table_factory(&table);
            opts.set_write_buffer_size(config.memtable_bytes);
            opts.set_compression_type(DBCompressionType::None);
            let mut write = WriteOptions::default();
            write.set_sync(config.durable);
            Ok(Rocks {
                db: DB::open(&opts, &config.dir)?,
                write,
            })
        }
    }

    impl Engine for Rocks {
        fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
            self.db.put_opt(key, value, &self.write)?;
            Ok(())
        }

        fn get(&self, key: &[u8]) -> Result<Option<usize>> {
            Ok(self.db.get_pinned(key)?.map(|v| v.len()))
        }

        fn scan(&self, start: &[u8], limit: usize) -> Result<usize> {
            let mut it = self.db.raw_iterator();
            it.seek(start);
            let mut n = 0;
            while n < limit && it.valid() {
                // Touch both, as the other engines hand out both.
                std::hint::black_box((it.key(), it.value()));
                n += 1;
                it.next();
            }
            it.status()?;
            Ok(n)
        }

        fn stats(&self) -> String {
            let level_files = (0..7)
                .map(|l| {
                    self.db
                        .property_int_value(&format!("rocksdb.num-files-at-level{l}"))
                        .ok()
                        .flatten()
                        .unwrap_or(0)
                })
                .collect::<Vec<_>>();
            format!("tables per level {level_files:?}")
        }

        fn close(self: Box<Self>) -> Result<()> {
            self.db.flush_wal(true)?;
            Ok(())
        }
    }
}
