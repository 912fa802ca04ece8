//! The storage engine: an LSM tree (memtable → SSTable flush → leveled compaction) behind a
//! write-ahead log, usable on its own like a small RocksDB.
//!
//! This module owns every byte the engine writes and imports nothing from the node, the
//! cluster or the protocol (`crate::bugs` aside, the deliberate bugs the simulation must catch).
//! Its one public door is [`Db`]; [`format`](mod@format) describes every byte layout, including the ones the
//! node writes on top of the engine.

pub mod batch;
pub mod cache;
pub mod compaction;
pub mod db;
pub mod decode;
pub mod disk;
pub mod error;
pub mod format;
pub(crate) mod iter;
pub(crate) mod manifest;
pub(crate) mod memtable;
pub mod options;
pub mod sst;
pub mod wal;

pub use batch::WriteBatch;
pub use db::{prefix_end, Db, DbIter, Recovery, Snapshot, Stats};
pub use disk::{Disk, DiskFile, SimDisk, StdDisk};
pub use error::{Error, Result};
pub use options::{Background, EventListener, Listener, Options, StallPolicy, SyncMode};
