//! # corecache-core
//!
//! CoreCache's sans-IO core. This crate owns the storage engine — memtable, write-ahead log,
//! SSTables, manifest, leveled compaction — and (later) the node's state machines. It does no
//! I/O of its own: every byte goes through the [`Disk`] trait, and it reads no clock and draws no
//! random numbers. Given the same inputs and the same disk, it does the same thing.
//!
//! The one concession to running by itself: with [`Background::Threads`] (the default for an
//! embedded database) the engine starts its own flush and compaction threads. With
//! [`Background::Manual`] it starts none and the owner drives background work, which is what the
//! deterministic simulation does.
//!
//! ```
//! use std::sync::Arc;
//! use corecache_core::{Db, Options, SimDisk};
//!
//! let db = Db::open(Arc::new(SimDisk::new()), Options::default()).unwrap();
//! db.put(b"greeting".to_vec(), b"hello".to_vec()).unwrap();
//! assert_eq!(db.get(b"greeting").unwrap(), Some(b"hello".to_vec()));
//! ```
//!
//! On-disk formats are described in [`format`].

pub mod batch;
pub mod bugs;
pub mod cache;
pub mod cluster;
pub mod compaction;
pub mod db;
pub mod decode;
pub mod disk;
pub mod error;
pub mod format;
pub(crate) mod iter;
pub(crate) mod manifest;
pub(crate) mod memtable;
pub mod node;
pub mod options;
pub mod peer;
pub mod sst;
pub mod wal;

pub use batch::WriteBatch;
pub use db::{prefix_end, Db, DbIter, Recovery, Snapshot, Stats};
pub use disk::{Disk, DiskFile, SimDisk, StdDisk};
pub use error::{Error, Result};
pub use options::{Background, EventListener, Listener, Options, StallPolicy, SyncMode};
