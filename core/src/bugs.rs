//! Deliberate bugs, for proving that the simulation's checkers catch them.
//!
//! Each is off unless the `bugs` cargo feature is compiled in *and* the bug is switched on for
//! the current thread. A simulated cluster runs entirely on the thread of the test that runs
//! it (turmoil drives every host from there, and the engine runs with no threads of its own),
//! so switching a bug on affects that one simulation and nothing else in the process. Without
//! the feature, [`on`] is a constant `false` and the bug paths compile away.

/// The bugs that can be switched on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Bug {
    /// `Db::persist` reports writes durable without syncing the log: acknowledged writes are
    /// lost in a crash.
    AckBeforeFsync = 1,
    /// A new leader takes over without advancing the epoch: two leaders share one.
    NoEpochBump = 2,
    /// Compaction drops tombstones even when a deeper level still holds older values of the
    /// key: deleted keys come back.
    DropTombstoneEarly = 4,
    /// The manifest is renamed into place without syncing the directory afterwards: a crash can
    /// bring back the old manifest, whose tables or log may be gone.
    SkipDirSyncAfterRename = 8,
    /// A write refused on state that includes writes not yet durable (a failed condition, a
    /// delete of an absent key) is answered at once: a read right after it can still see the
    /// older state. (The bug the simulation found first, put back on purpose.)
    EarlyRefusal = 16,
    /// A node that handed a partition over keeps answering reads of it from its own copy
    /// (which it is deleting, and which misses every write made at the new owner).
    StaleOwnerRead = 32,
    /// The old owner of a moving partition sends pages before the writes it applied earlier
    /// are durable: those writes reach neither the pages nor the tail. (Found by the
    /// simulation once nodes joined mid-run; put back on purpose.)
    CopyBeforeDurable = 64,
    /// A key's version is the owner's sequence number of the write (as before versions lived
    /// in the value envelope): it changes when the partition moves, so `If-Match` fails.
    VersionIsSequence = 128,
    /// A new owner restarting a partition copy wipes only the durable part of its earlier
    /// attempt: keys deleted at the old owner in between come back. (Found by a 3,000-seed
    /// sweep, seed 856; kept for the unit test that pins it.)
    WipeOnlyDurable = 256,
    /// An old owner that restarts in the middle of handing a partition over forgets that it
    /// froze it, takes writes again, and loses them when the map flips. (Found by a 3,000-seed
    /// sweep, seed 1001.)
    ForgetFreezeOnRestart = 512,
    /// RESP's INCR reads the value and writes the sum back as two requests (as a front-end
    /// without a one-step increment on the owner would): concurrent increments are lost. Only
    /// the simulation's RESP clients can see it.
    IncrOutsideOwner = 1024,
    /// A replica that undoes entries a new primary's log does not have undoes one more than
    /// that (the last entry both logs share): an acknowledged write is lost on that copy.
    TruncatePastDivergence = 2048,
    /// A replica takes entries from whoever sends them, without checking the sender's epoch
    /// against the newest it accepted or the state's: a deposed primary can still get its
    /// writes acknowledged, and its entries overwrite the new primary's.
    AcceptOldEpoch = 4096,
    /// A primary answers reads without a valid lease from its backups: a deposed primary that
    /// has not heard of its successor serves stale values.
    ReadWithoutLease = 8192,
    /// A primary acknowledges a write once it is durable on the primary alone, before every
    /// backup of the configuration has it.
    AckBeforeReplicas = 16384,
    /// The leader promotes a replica that is not in the partition's current configuration
    /// (a learner, perhaps a backup removed earlier, taken before any backup), which may lack
    /// acknowledged writes.
    PromoteOutsideConfig = 32768,
    /// A primary commits (and answers) a write while its configuration has fewer copies in
    /// sync than `min_insync_replicas`: a backup dropped below that floor, kept eligible for
    /// promotion, may lack it.
    CommitBelowFloor = 65536,
    /// The leader keeps eligible replicas after the floor is met again: writes acknowledged
    /// since then may be missing on the one it promotes.
    KeepEligible = 131072,
    /// A primary with no backups keeps serving reads while cut off from the coordinator: once
    /// an eligible copy is promoted in its place and takes writes, it serves stale values.
    LoneLeaseWithoutCoordinator = 262144,
    /// A primary back from a restart leads its partitions at the epoch it had before: entries
    /// it sent but lost (an unsynced tail) sit in a backup under the same numbers and epoch as
    /// the new entries it writes there, and the backup takes them for the same. (Replicated
    /// seed 2257 of the 10,000-seed run.)
    RestartSameEpoch = 524288,
    /// The replication log keeps its last `log_retain` entries whatever the commit point: a
    /// primary held below `min_insync_replicas` loses the entries a learner's copy needs, and
    /// the partition never gets its copies back. (Replicated seed 610 of the 10,000-seed run,
    /// which also needed copies to carry inherited keys; the unit test
    /// `the_log_keeps_every_entry_after_the_commit_point` pins it, the first 300 seeds do not.)
    TrimUncommitted = 1048576,
}

impl Bug {
    pub const ALL: [Bug; 21] = [
        Bug::AckBeforeFsync,
        Bug::NoEpochBump,
        Bug::DropTombstoneEarly,
        Bug::SkipDirSyncAfterRename,
        Bug::EarlyRefusal,
        Bug::StaleOwnerRead,
        Bug::CopyBeforeDurable,
        Bug::VersionIsSequence,
        Bug::WipeOnlyDurable,
        Bug::ForgetFreezeOnRestart,
        Bug::IncrOutsideOwner,
        Bug::TruncatePastDivergence,
        Bug::AcceptOldEpoch,
        Bug::ReadWithoutLease,
        Bug::AckBeforeReplicas,
        Bug::PromoteOutsideConfig,
        Bug::CommitBelowFloor,
        Bug::KeepEligible,
        Bug::LoneLeaseWithoutCoordinator,
        Bug::RestartSameEpoch,
        Bug::TrimUncommitted,
    ];
}

#[cfg(feature = "bugs")]
thread_local! {
    static ACTIVE: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether `bug` is switched on for this thread.
#[inline(always)]
pub fn on(bug: Bug) -> bool {
    #[cfg(feature = "bugs")]
    {
        ACTIVE.with(|a| a.get() & bug as u32 != 0)
    }
    #[cfg(not(feature = "bugs"))]
    {
        let _ = bug;
        false
    }
}

/// Switches `bug` on for this thread (only with the `bugs` feature; otherwise it panics, so a
/// test cannot believe it tested a bug that was never there).
pub fn enable(bug: Bug) {
    #[cfg(feature = "bugs")]
    ACTIVE.with(|a| a.set(a.get() | bug as u32));
    #[cfg(not(feature = "bugs"))]
    panic!("{bug:?}: corecache-core was built without the `bugs` feature");
}

/// Switches every bug off for this thread.
pub fn clear() {
    #[cfg(feature = "bugs")]
    ACTIVE.with(|a| a.set(0));
}
