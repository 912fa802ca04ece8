//! # corecache-net
//!
//! The real runtime around `corecache-core`: the tokio driver, the HTTP API, the peer transport
//! and the ZooKeeper coordinator. Empty until the node issue lands; the storage engine it will
//! drive is `corecache_core::Db`.

pub use corecache_core as core;
