//! # corecache-sim
//!
//! Whole clusters under turmoil with a fake coordinator and a simulated disk. Empty until the
//! simulation issue lands; the simulated disk it will use is `corecache_core::SimDisk`.

pub use corecache_core::SimDisk;
