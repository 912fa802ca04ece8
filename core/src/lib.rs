//! # corecache-core
//!
//! CoreCache's sans-IO core. This crate owns the storage engine — memtable, write-ahead log,
//! SSTables, manifest, leveled compaction — and the node's state machine. It does no
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
//! # Layout
//!
//! | module | owns | may use |
//! |---|---|---|
//! | [`engine`] | the LSM tree: WAL, memtable, tables, manifest, compaction, [`Db`] | nothing above it |
//! | [`proto`] | the vocabulary: requests, responses, error kinds, the value envelope and internal key, the peer protocol | `engine` (types only) |
//! | [`cluster`] | the cluster's shared state, coordinator events and commands, the conditional store | `proto` |
//! | [`node`] | the node's state machine: one door, split by concern | all of the above |
//! | [`bugs`] | deliberate bugs the simulation must catch | nothing |
//!
//! Every byte layout (engine files, value envelope, internal key, peer frames) is described in
//! [`engine::format`](mod@engine::format).

pub mod bugs;
pub mod cluster;
pub mod engine;
pub mod node;
pub mod proto;

pub use engine::{
    prefix_end, Background, Db, DbIter, Disk, DiskFile, Error, EventListener, Listener, Options,
    Recovery, Result, SimDisk, Snapshot, StallPolicy, Stats, StdDisk, SyncMode, WriteBatch,
};
