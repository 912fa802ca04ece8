//! Replication of a partition from its primary to its backups (PacificA's data path).
//!
//! In a cluster with replicas (`ClusterState::replicas` not empty), every write to a partition
//! is numbered by its primary (`lsn`, one sequence per partition) and stored as one engine batch
//! with its log entry and the partition's new [`Position`] ([`crate::proto::replog`]). The
//! primary sends the entry to every backup and learner (`Replicate`); each applies it the same
//! way, and acknowledges (`ReplicaAck`) once it is as durable as `sync` says. The reply to the
//! client leaves only when the entry is durable on the primary **and** acknowledged by every
//! backup of the partition's configuration (learners are sent everything but not waited for).
//!
//! Until then the write is *dirty*: the primary's engine already holds it (a persist made it
//! visible), but no reader may see it, since a failover could still lose it. [`Dirty`] keeps
//! each such key's committed value (its before-image), and the [`super::Reader`] answers from
//! it. A refusal decided on the latest applied state (a failed condition) waits, like a write,
//! for the partition's newest entry to commit.
//!
//! A replica takes entries only in order (`lsn` = its last + 1) and only of its highest epoch
//! or a newer one; it answers a gap with `gap`, and the primary sends again from what it
//! acknowledged, read back from its log. An unanswered replica is sent its missing entries (or
//! an empty probe) again every [`RESEND_MS`].

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

mod copy;
pub(crate) use copy::{CopyAcked, Page};

use super::gate::{respond, Target};
use super::{engine_err, Node, Output};
use crate::engine::{Db, WriteBatch};
use crate::proto::envelope::PARTITION_PREFIX_LEN;
use crate::proto::peer::PeerMessage;
use crate::proto::replog::{self, LogEntry, Position};
use crate::proto::{err, ErrorKind, Response};

/// How often a primary sends a replica that is behind what it is missing (or, with nothing
/// heard from it yet, an empty `Replicate` that asks where it is).
pub(crate) const RESEND_MS: u64 = 500;
/// A primary serves reads only while every backup has taken a message from it less than this
/// long ago (by its own clock, less a tenth for clocks that run at different rates); a backup
/// promises, for this long after each message it takes, to help no newer primary. A new
/// primary waits out its own promise before it answers anything.
pub(crate) const LEASE_MS: u64 = 2_000;
/// A backup that has not caught up for this long is reported to the leader, which removes it
/// from the configuration (writes wait for it until then).
pub(crate) const LAG_TIMEOUT_MS: u64 = 2_000;
/// How long a primary holds an answer waiting for its entry to commit before it answers
/// "outcome unknown" (less than a forward's timeout, so that a forwarding node passes on this
/// answer rather than its own).
pub(crate) const COMMIT_WAIT_MS: u64 = 8_000;
/// How often a primary repeats a report to the leader that the state does not show yet.
const REPORT_EVERY_MS: u64 = 1_000;
/// How often a primary looks for replicas that are behind.
const CHECK_MS: u64 = 100;
/// At most this many entries in one `Replicate` sent from the log.
const RESEND_BATCH: usize = 256;

/// Keys of partitions this node is primary of whose newest write is not committed yet, with
/// their committed value: what readers must see instead of what the engine holds. Shared with
/// the [`super::Reader`]s, which run outside the node's door.
#[derive(Default)]
pub(crate) struct Dirty {
    /// Entries in the map (read without the lock: zero on every node without replicas).
    len: AtomicUsize,
    /// Engine key → (the newest uncommitted entry that wrote it, the committed stored value
    /// and its engine sequence number, `None` if the key was absent).
    map: Mutex<BTreeMap<Vec<u8>, DirtyKey>>,
}

/// A dirty key: its committed value, whether that value is known, and every uncommitted
/// entry that wrote it (in order, with the value each left). As entries commit, the value of
/// the newest committed one becomes the committed value (a read after an acknowledged write
/// must see it even while a later write of the key is still uncommitted). A new primary's
/// inherited entries may have been committed by the primary before it (their answers may
/// have left): until it commits them itself, a read of such a key cannot be answered either
/// way.
#[derive(Clone, Debug)]
struct DirtyKey {
    before: Before,
    inherited: bool,
    writes: VecDeque<(u64, Before)>,
}

/// A key's committed stored value and its engine sequence number (`None`: absent).
pub(crate) type Before = Option<(u64, Vec<u8>)>;

/// What a reader must answer for a key instead of the engine's value.
pub(crate) enum Committed {
    /// The key has no uncommitted write: the engine's value is the answer.
    Engine,
    /// The committed value (`None`: absent).
    Value(Before),
    /// Not known yet (a new primary still committing what it inherited): ask again soon.
    Unknown,
}

impl Dirty {
    pub(crate) fn lookup(&self, ikey: &[u8]) -> Committed {
        if self.len.load(Ordering::Acquire) == 0 {
            return Committed::Engine;
        }
        match self.map.lock().get(ikey) {
            Some(d) if d.inherited => Committed::Unknown,
            Some(d) => Committed::Value(d.before.clone()),
            None => Committed::Engine,
        }
    }

    /// The dirty keys in `[lo, hi)` with their committed values, in key order; `Err` if one
    /// of them is not known yet.
    pub(crate) fn range(
        &self,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
    ) -> Result<Vec<(Vec<u8>, Before)>, ()> {
        if self.len.load(Ordering::Acquire) == 0 {
            return Ok(Vec::new());
        }
        self.map
            .lock()
            .range::<[u8], _>((lo, hi))
            .map(|(k, d)| {
                if d.inherited {
                    Err(())
                } else {
                    Ok((k.clone(), d.before.clone()))
                }
            })
            .collect()
    }

    /// Like [`range`](Self::range), but an inherited key gives its value at the commit point
    /// (the before-image of the first entry after it that wrote the key), which reads cannot
    /// answer (the key's newest entry may have been acknowledged already) but a copy based at
    /// the commit point can carry: the learner applies every entry after the base, so it ends
    /// as the log does. (Replicated seed 610: a primary that could not commit what it
    /// inherited could never copy its partition to a learner.)
    pub(crate) fn range_at_commit(
        &self,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
    ) -> Vec<(Vec<u8>, Before)> {
        if self.len.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        self.map
            .lock()
            .range::<[u8], _>((lo, hi))
            .map(|(k, d)| (k.clone(), d.before.clone()))
            .collect()
    }

    /// Entry `lsn` wrote `after` to `ikey`, whose value before was `before` (which is the
    /// committed one only if the key is not dirty already).
    fn insert(&self, ikey: Vec<u8>, lsn: u64, before: Before, after: Before) {
        let mut m = self.map.lock();
        m.entry(ikey)
            .or_insert(DirtyKey {
                before,
                inherited: false,
                writes: VecDeque::new(),
            })
            .writes
            .push_back((lsn, after));
        self.len.store(m.len(), Ordering::Release);
    }

    /// Marks `ikey` written by inherited entry `lsn`, which left `after` and found `before`
    /// (a new primary's tail, oldest entry first: the first entry's `before` is the key's
    /// value at the commit point).
    fn inherit(&self, ikey: Vec<u8>, lsn: u64, before: Before, after: Before) {
        let mut m = self.map.lock();
        m.entry(ikey)
            .or_insert(DirtyKey {
                before,
                inherited: true,
                writes: VecDeque::new(),
            })
            .writes
            .push_back((lsn, after));
        self.len.store(m.len(), Ordering::Release);
    }

    /// Entries of partition `p` up to `lsn` are committed: their keys are clean again.
    fn commit(&self, p: u16, lsn: u64) {
        if self.len.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut m = self.map.lock();
        let lo = p.to_be_bytes().to_vec();
        let mut clean = Vec::new();
        for (k, d) in m.range_mut(lo.clone()..) {
            if !k.starts_with(&lo) {
                break;
            }
            while d.writes.front().is_some_and(|(l, _)| *l <= lsn) {
                if let Some((_, after)) = d.writes.pop_front() {
                    d.before = after;
                    d.inherited = false;
                }
            }
            if d.writes.is_empty() {
                clean.push(k.clone());
            }
        }
        for k in clean {
            m.remove(&k);
        }
        self.len.store(m.len(), Ordering::Release);
    }
}

/// Per partition, the window in which this node may answer reads of it: from `from` (a new
/// primary waiting out the old one's lease) until `until` (its own lease). Shared with the
/// [`super::Reader`]s; every partition of a cluster without replicas is open for good.
pub(crate) struct Leases {
    from: Vec<AtomicU64>,
    until: Vec<AtomicU64>,
}

impl Leases {
    pub(crate) fn new(partitions: u16) -> Leases {
        let n = usize::from(partitions);
        Leases {
            from: (0..n).map(|_| AtomicU64::new(0)).collect(),
            until: (0..n).map(|_| AtomicU64::new(u64::MAX)).collect(),
        }
    }

    /// Whether a read of partition `p` may be answered at `now`.
    pub(crate) fn valid(&self, p: u16, now: u64) -> bool {
        let i = usize::from(p);
        match (self.from.get(i), self.until.get(i)) {
            (Some(f), Some(u)) => {
                crate::bugs::on(crate::bugs::Bug::ReadWithoutLease)
                    || (f.load(Ordering::Acquire) <= now && now < u.load(Ordering::Acquire))
            }
            _ => false,
        }
    }

    fn set(&self, p: u16, from: u64, until: u64) {
        let i = usize::from(p);
        if let (Some(f), Some(u)) = (self.from.get(i), self.until.get(i)) {
            f.store(from, Ordering::Release);
            u.store(until, Ordering::Release);
        }
    }
}

/// One partition's replication state on this node.
#[derive(Default)]
pub(crate) struct PartRepl {
    /// This node acts as the partition's primary (it was primary in the last map seen).
    primary: bool,
    /// The newest entry applied here, and the highest epoch accepted (what the engine holds).
    pos: Position,
    /// As primary: entries up to this are durable here.
    local_durable: u64,
    /// Log entries up to this are trimmed (none is left below the first one kept).
    pub(crate) trimmed: u64,
    /// As primary: entries up to this are on every copy in sync; answers up to it are sent.
    committed: u64,
    /// As primary: per replica, the entries it acknowledged (absent: not heard from yet).
    acked: BTreeMap<String, u64>,
    /// As primary: per replica, the newest entry sent, and when something was last sent.
    sent: BTreeMap<String, (u64, u64)>,
    /// As primary: answers durable here, waiting for their entry to commit, in `lsn` order,
    /// with when they started waiting.
    pending: VecDeque<(u64, Target, Response, u64)>,
    /// As primary: per replica, since when it has been behind without progress.
    behind_since: BTreeMap<String, u64>,
    /// As primary: learners that had every entry, waited for from then on (and reported
    /// ready to the leader), and when that report was last sent.
    counting: BTreeMap<String, u64>,
    /// As primary: when each lagging backup was last reported to the leader.
    reported: BTreeMap<String, u64>,
    /// As primary: per replica, the send time of the newest message it took from us.
    grants: BTreeMap<String, u64>,
    /// As primary: nothing is answered before this (the old primary's lease is over).
    serve_after: u64,
    /// As replica: until when this node promised the primary to help no newer one.
    promised_until: u64,
    /// As primary: copies in progress towards learners its log no longer reaches back for.
    copies: BTreeMap<String, copy::CopyOut>,
    /// As primary: the partition's epoch when its configuration was last looked at.
    seen_epoch: u64,
    /// As learner: the copy being received (its base, the last key applied).
    copying: Option<(u64, Option<Vec<u8>>)>,
    /// As replica of a node that started with no replication state at all (a new node, or
    /// one whose disk was wiped): it has since had every entry its primary called committed.
    caught_up: bool,
}

/// Every partition's replication state.
pub(crate) struct Replication {
    pub(crate) parts: BTreeMap<u16, PartRepl>,
    pub(crate) dirty: std::sync::Arc<Dirty>,
    /// When the primary next looks for replicas that are behind, and whether any was.
    pub(crate) next_check: u64,
    pub(crate) any_behind: bool,
    /// Times this node undid entries a new primary's log did not have.
    pub(crate) truncations: u64,
    /// Copies of a partition this node received whole (as a learner), and their keys.
    pub(crate) copies_received: u64,
    pub(crate) copy_keys_received: u64,
    /// Pages of copies this node sent (as primary).
    pub(crate) copy_pages_sent: u64,
    /// Partitions this node took over as primary.
    pub(crate) promotions: u64,
    pub(crate) leases: std::sync::Arc<Leases>,
    /// The `now` of the input being handled, and of the first input (promises made before a
    /// restart are forgotten, so a node waits a lease after it starts before it leads).
    pub(crate) now: u64,
    pub(crate) started_at: Option<u64>,
    /// The engine held no replication state when this node started: its disk is new, or was
    /// wiped. It may have acknowledged entries it no longer has, so it offers no partition
    /// for promotion until it has caught up with that partition's primary.
    pub(crate) wiped: bool,
    /// Connected to the coordinator, with a session that did not expire since the last state
    /// seen. A primary with no backups serves reads only while this holds: nothing else
    /// fences it, and the leader may promote an eligible copy once its session is gone.
    pub(crate) coordinator_ok: bool,
    /// The session expired and no state has been seen since.
    pub(crate) expired_since_state: bool,
    /// After a restart on the same disk: partition → the epoch at or below which this node
    /// must not lead it. The first state it sees after starting lists it as primary of these
    /// at that epoch; in that epoch, its previous run may have sent entries it never made
    /// durable here, which a backup still holds under the numbers this run would give its
    /// next entries (with the same epoch, so the log check takes them for the same ones). It
    /// asks the leader for a new epoch (a `ReplicaLagging` report naming itself) and leads
    /// once the state shows one: its entries then differ by epoch, and backups undo the old.
    pub(crate) fences: BTreeMap<u16, u64>,
    /// Whether the fences were set (on the first state with replicas).
    pub(crate) fences_set: bool,
    /// When the fenced partitions were last reported to the leader.
    pub(crate) fences_reported_at: u64,
}

impl Replication {
    /// The partitions this node acts as primary of.
    pub(crate) fn led(&self) -> Vec<u16> {
        self.parts
            .iter()
            .filter(|(_, x)| x.primary)
            .map(|(p, _)| *p)
            .collect()
    }

    /// The positions the engine holds (after a restart: where each partition's log ends).
    pub(crate) fn load(
        db: &Db,
        dirty: std::sync::Arc<Dirty>,
        leases: std::sync::Arc<Leases>,
    ) -> Result<Replication, String> {
        let (lo, hi) = replog::meta_range();
        let mut parts = BTreeMap::new();
        let it = db
            .scan(Bound::Included(&lo[..]), Bound::Excluded(&hi[..]))
            .map_err(|e| e.to_string())?;
        for item in it {
            let (k, v) = item.map_err(|e| e.to_string())?;
            let Some(p) = replog::meta_partition(&k) else {
                continue;
            };
            let pos = replog::decode_position(&v).map_err(|_| {
                format!("the replication position of partition {p} does not decode")
            })?;
            // Where the log starts: everything below its first entry is trimmed.
            let (lo, hi) = replog::log_range(p);
            let first = db
                .scan(Bound::Included(&lo[..]), Bound::Excluded(&hi[..]))
                .map_err(|e| e.to_string())?
                .next()
                .transpose()
                .map_err(|e| e.to_string())?
                .and_then(|(k, _)| replog::log_lsn(p, &k));
            parts.insert(
                p,
                PartRepl {
                    pos,
                    local_durable: pos.lsn,
                    trimmed: first.map_or(pos.lsn, |f| f.saturating_sub(1)),
                    ..PartRepl::default()
                },
            );
        }
        Ok(Replication {
            wiped: parts.is_empty(),
            coordinator_ok: true,
            expired_since_state: false,
            parts,
            ..Replication::empty(dirty, leases)
        })
    }

    /// No partition known yet.
    pub(crate) fn empty(
        dirty: std::sync::Arc<Dirty>,
        leases: std::sync::Arc<Leases>,
    ) -> Replication {
        Replication {
            parts: BTreeMap::new(),
            dirty,
            next_check: 0,
            any_behind: false,
            truncations: 0,
            copies_received: 0,
            copy_keys_received: 0,
            copy_pages_sent: 0,
            promotions: 0,
            leases,
            now: 0,
            started_at: None,
            wiped: false,
            coordinator_ok: true,
            expired_since_state: false,
            fences: BTreeMap::new(),
            fences_set: false,
            fences_reported_at: 0,
        }
    }

    /// Where partition `p`'s log ends here.
    pub(crate) fn position(&self, p: u16) -> Position {
        self.parts.get(&p).map(|r| r.pos).unwrap_or_default()
    }
}

/// For each op, whether it is the first of the batch to name its key.
fn b_first_ops(ops: &[(Vec<u8>, Option<Vec<u8>>)]) -> Vec<bool> {
    let mut seen = std::collections::BTreeSet::new();
    ops.iter().map(|(k, _)| seen.insert(k.as_slice())).collect()
}

/// A write this node is about to make as primary of a replicated partition.
pub(crate) struct PrimaryWrite {
    pub(crate) partition: u16,
    pub(crate) epoch: u64,
}

/// The header of a `Replicate` a replica received.
pub(crate) struct Received {
    pub(crate) partition: u16,
    pub(crate) epoch: u64,
    pub(crate) commit: u64,
    pub(crate) prev_lsn: u64,
    pub(crate) prev_epoch: u64,
    pub(crate) sent_at: u64,
}

/// A `ReplicaAck` a primary received.
pub(crate) struct Acked {
    pub(crate) partition: u16,
    pub(crate) epoch: u64,
    pub(crate) applied: u64,
    pub(crate) gap: bool,
    pub(crate) lease_from: u64,
}

impl Node {
    /// The state records this node on another disk than the one it runs on: it came back on
    /// an empty disk, and holds none of the copies the state lists it with (until the leader
    /// has taken them away and recorded this disk).
    pub(crate) fn replaced_here(&self) -> bool {
        let me = &self.cfg.node_id;
        self.cfg.disk_id != 0
            && self
                .view
                .state
                .as_ref()
                .and_then(|s| s.disks.get(me))
                .is_some_and(|d| *d != self.cfg.disk_id)
    }

    /// If this node is primary of `p` in a cluster with replicas: the partition and its
    /// epoch, after checking that enough copies are in sync to take a write.
    pub(crate) fn primary_write(&self, p: u16) -> Result<Option<PrimaryWrite>, Response> {
        let Some(st) = &self.view.state else {
            return Ok(None);
        };
        if st.replicas.is_empty() {
            return Ok(None);
        }
        if let Some(e) = &self.repl_broken {
            return Err(err(ErrorKind::Internal, e.clone()));
        }
        if self.replaced_here() || !self.repl.parts.get(&p).is_some_and(|x| x.primary) {
            return Err(err(
                ErrorKind::Unavailable,
                format!(
                    "this node is not acting as partition {p}'s primary yet (it came back on a \
                     new disk, or has not taken over); try again"
                ),
            ));
        }
        let in_sync = 1 + st.backups(p).len();
        // Never more than the nodes the cluster has given copies to: a cluster of one node
        // (or two) takes writes until it has had more.
        let floor = st.insync_floor(self.cfg.min_insync_replicas);
        if in_sync < floor {
            return Err(err(
                ErrorKind::Unavailable,
                format!(
                    "partition {p} has {in_sync} of its copies in sync, fewer than \
                     min_insync_replicas ({}): it takes no writes until another copy is",
                    self.cfg.min_insync_replicas
                ),
            ));
        }
        Ok(Some(PrimaryWrite {
            partition: p,
            epoch: st.part_epoch(p),
        }))
    }

    /// Applies batch `b` (keys of partition `w.partition` only) as the primary's next log
    /// entry: the entry, the new position and the keys in one engine batch; then sends it to
    /// the replicas and marks its keys dirty. Returns the engine sequence number and the lsn.
    pub(crate) fn write_primary(
        &mut self,
        now: u64,
        w: &PrimaryWrite,
        b: WriteBatch,
        out: &mut Vec<Output>,
    ) -> Result<(u64, u64), Response> {
        let p = w.partition;
        let mut ops = Vec::with_capacity(b.len());
        let mut befores = Vec::with_capacity(b.len());
        for (k, v) in b.ops() {
            let before = self.db.get_latest(k).map_err(engine_err)?;
            ops.push((k.to_vec(), v.map(<[u8]>::to_vec)));
            befores.push(before);
        }
        let prev = self.repl.position(p);
        let lsn = prev.lsn + 1;
        let commit = self.repl.parts.get(&p).map_or(0, |r| r.committed);
        let next = Position {
            epoch: w.epoch.max(prev.epoch),
            lsn,
            lsn_epoch: w.epoch,
            commit: commit.max(prev.commit),
        };
        let seq = self.apply_entry(p, next, &ops, &befores, b)?;
        // A key named twice in one batch: its first before-image and its last value count.
        let first_op = b_first_ops(&ops);
        for (i, ((k, _), before)) in ops.iter().zip(befores).enumerate() {
            if first_op[i] {
                let last = ops.iter().rposition(|(k2, _)| k2 == k).unwrap_or(i);
                let after = ops[last].1.clone().map(|v| (seq, v));
                self.repl.dirty.insert(k.clone(), lsn, before, after);
            }
        }
        let entry = LogEntry {
            lsn,
            epoch: w.epoch,
            ops,
        };
        self.send_entry(now, p, w.epoch, (prev.lsn, prev.lsn_epoch), entry, out);
        self.repl.any_behind = true;
        Ok((seq, lsn))
    }

    /// One engine batch: `b`'s keys, log entry `pos.lsn` (numbered in `pos.lsn_epoch`, with
    /// the keys' before-images), the trimming of the entry `log_retain` older, and the
    /// position `pos`.
    fn apply_entry(
        &mut self,
        p: u16,
        pos: Position,
        ops: &[(Vec<u8>, Option<Vec<u8>>)],
        befores: &[Before],
        mut b: WriteBatch,
    ) -> Result<u64, Response> {
        let logged: Vec<replog::LoggedOp> = ops
            .iter()
            .zip(befores)
            .map(|((k, v), before)| {
                let before = before.as_ref().map(|(_, raw)| raw.clone());
                (k.clone(), v.clone(), before)
            })
            .collect();
        let lsn = pos.lsn;
        b.put(
            replog::log_key(p, lsn),
            replog::encode_entry(pos.lsn_epoch, &logged),
        );
        // The log keeps `log_retain` entries, and every entry after the commit point: a
        // replica may have to undo those (from their before-images), and a learner's copy
        // (based at the primary's commit point) needs all of them. Trimming only by count let
        // a primary whose commit point was held by too few copies in sync lose the entries
        // after it, and no learner could ever be copied the partition (replicated seed 610).
        let retain = self.cfg.log_retain.max(1);
        let keep_after = if crate::bugs::on(crate::bugs::Bug::TrimUncommitted) {
            lsn.saturating_sub(retain)
        } else {
            lsn.saturating_sub(retain).min(pos.commit)
        };
        let trimmed = self.repl.parts.get(&p).map_or(0, |x| x.trimmed);
        for old in (trimmed + 1).max(1)..=keep_after {
            b.delete(replog::log_key(p, old));
        }
        b.put(replog::meta_key(p), replog::encode_position(&pos));
        let seq = self.db.write_deferred(b).map_err(engine_err)?;
        self.gate.applied(seq);
        let part = self.repl.parts.entry(p).or_default();
        part.pos = pos;
        // (Only once the batch is in: a refused one trims nothing.)
        part.trimmed = part.trimmed.max(keep_after);
        Ok(seq)
    }

    /// Writes partition `p`'s position alone (a newer epoch accepted, a commit point learnt).
    fn write_position(&mut self, p: u16, pos: Position) -> Result<(), Response> {
        let mut b = WriteBatch::new();
        b.put(replog::meta_key(p), replog::encode_position(&pos));
        let seq = self.db.write_deferred(b).map_err(engine_err)?;
        self.gate.applied(seq);
        self.repl.parts.entry(p).or_default().pos = pos;
        Ok(())
    }

    /// Partition `p`'s log entry `lsn` as stored here: its epoch and ops (key, after,
    /// before). `None` if it is not here (trimmed, or never written).
    fn log_entry(&self, p: u16, lsn: u64) -> Option<(u64, Vec<replog::LoggedOp>)> {
        match self.db.get_latest(&replog::log_key(p, lsn)) {
            Ok(Some((_, raw))) => replog::decode_entry(&raw).ok(),
            _ => None,
        }
    }

    /// The epoch of entry `lsn` in this node's log of `p` (0 for "before the first entry"),
    /// `None` if this node does not have it.
    fn epoch_at(&self, p: u16, lsn: u64) -> Option<u64> {
        let pos = self.repl.position(p);
        if lsn == 0 {
            Some(0)
        } else if lsn == pos.lsn {
            Some(pos.lsn_epoch)
        } else if lsn > pos.lsn {
            None
        } else {
            self.log_entry(p, lsn).map(|(e, _)| e)
        }
    }

    /// Undoes partition `p`'s entries after `keep` (newest first, from their before-images)
    /// in one engine batch: what a replica does with entries a new primary's log does not
    /// have. Never below the commit point: committed entries are on every copy in sync and
    /// never differ.
    fn truncate(&mut self, p: u16, keep: u64) -> Result<(), String> {
        let pos = self.repl.position(p);
        if keep >= pos.lsn {
            return Ok(());
        }
        let keep = if crate::bugs::on(crate::bugs::Bug::TruncatePastDivergence) {
            keep.saturating_sub(1)
        } else {
            keep
        };
        if keep < pos.commit && !crate::bugs::on(crate::bugs::Bug::TruncatePastDivergence) {
            return Err(format!(
                "partition {p}: asked to undo entries after {keep}, below the commit point {}",
                pos.commit
            ));
        }
        let mut b = WriteBatch::new();
        for lsn in (keep + 1..=pos.lsn).rev() {
            let Some((_, ops)) = self.log_entry(p, lsn) else {
                return Err(format!(
                    "partition {p}: entry {lsn} to undo is not in the log any more"
                ));
            };
            for (k, _, before) in ops.into_iter().rev() {
                match before {
                    Some(v) => b.put(k, v),
                    None => b.delete(k),
                };
            }
            b.delete(replog::log_key(p, lsn));
        }
        let lsn_epoch = self
            .epoch_at(p, keep)
            .ok_or_else(|| format!("partition {p}: entry {keep} is not in the log"))?;
        let new = Position {
            lsn: keep,
            lsn_epoch,
            ..pos
        };
        b.put(replog::meta_key(p), replog::encode_position(&new));
        let seq = self.db.write_deferred(b).map_err(|e| e.to_string())?;
        self.gate.applied(seq);
        self.repl.parts.entry(p).or_default().pos = new;
        self.repl.truncations += 1;
        Ok(())
    }

    /// The replicas of partition `p` (backups and learners) other than this node.
    fn replicas_of(&self, p: u16) -> Vec<String> {
        let me = &self.cfg.node_id;
        self.view
            .state
            .as_ref()
            .and_then(|s| s.part(p))
            .map(|r| {
                r.backups
                    .iter()
                    .chain(&r.learners)
                    .filter(|n| *n != me)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sends a new entry (following `prev`, as `(lsn, epoch)`) to every replica that has
    /// everything before it (the others are sent from the log when they answer, or by the
    /// resend timer).
    fn send_entry(
        &mut self,
        now: u64,
        p: u16,
        epoch: u64,
        prev: (u64, u64),
        entry: LogEntry,
        out: &mut Vec<Output>,
    ) {
        let replicas = self.replicas_of(p);
        let part = self.repl.parts.entry(p).or_default();
        let commit = part.committed;
        for to in replicas {
            let caught_up = part.sent.get(&to).is_some_and(|(s, _)| *s == prev.0)
                && !part.copies.contains_key(&to);
            if !caught_up {
                continue;
            }
            part.sent.insert(to.clone(), (entry.lsn, now));
            out.push(Output::Send {
                to,
                message: PeerMessage::Replicate {
                    partition: p,
                    epoch,
                    commit,
                    prev_lsn: prev.0,
                    prev_epoch: prev.1,
                    sent_at: now,
                    entries: vec![entry.clone()],
                },
            });
        }
    }

    /// Answers on replicated partitions that became durable here: each waits for its entry
    /// to commit.
    pub(crate) fn on_durable_here(&mut self, out: &mut Vec<Output>) {
        let released = self.gate.take_released();
        if released.is_empty() {
            return;
        }
        let mut touched = Vec::new();
        let now = self.repl.now;
        for (p, lsn, target, response) in released {
            let part = self.repl.parts.entry(p).or_default();
            part.local_durable = part.local_durable.max(lsn);
            part.pending.push_back((lsn, target, response, now));
            touched.push(p);
        }
        touched.dedup();
        for p in touched {
            self.advance_commit(p, out);
        }
    }

    /// Moves partition `p`'s commit point to the newest entry durable here and acknowledged
    /// by every backup, and sends the answers it covers.
    fn advance_commit(&mut self, p: u16, out: &mut Vec<Output>) {
        let me = self.cfg.node_id.clone();
        let (backups, learners, eligible): (Vec<String>, Vec<String>, bool) = self
            .view
            .state
            .as_ref()
            .and_then(|s| s.part(p))
            .map(|r| {
                (
                    r.backups.clone(),
                    r.learners.clone(),
                    !r.eligible.is_empty(),
                )
            })
            .unwrap_or_default();
        // Nothing commits with fewer copies in sync than the floor while the leader keeps
        // backups it dropped below it eligible for promotion, trusting that they miss nothing
        // acknowledged (the answers wait, and after `COMMIT_WAIT_MS` say "outcome unknown").
        // With none eligible, no copy outside the configuration can be promoted, and a new
        // primary alone commits what it took over, so that its reads go on.
        let floor = self
            .view
            .state
            .as_ref()
            .map_or(1, |s| s.insync_floor(self.cfg.min_insync_replicas));
        if eligible
            && 1 + backups.len() < floor
            && !crate::bugs::on(crate::bugs::Bug::CommitBelowFloor)
        {
            return;
        }
        let Some(part) = self.repl.parts.get_mut(&p) else {
            return;
        };
        if !part.primary || self.repl.now < part.serve_after {
            return;
        }
        // Learners reported ready count from the report on (until the state makes them
        // backups, or drops them).
        part.counting.retain(|l, _| learners.contains(l));
        let backups: Vec<String> = backups
            .into_iter()
            .chain(part.counting.keys().cloned())
            .filter(|b| *b != me)
            .collect();
        let mut point = part.local_durable;
        for b in &backups {
            if crate::bugs::on(crate::bugs::Bug::AckBeforeReplicas) {
                break;
            }
            point = point.min(part.acked.get(b).copied().unwrap_or(0));
        }
        if point > part.committed {
            part.committed = point;
            self.repl.dirty.commit(p, point);
        }
        let committed = part.committed;
        while part
            .pending
            .front()
            .is_some_and(|(l, _, _, _)| *l <= committed)
        {
            if let Some((_, target, response, _)) = part.pending.pop_front() {
                let lost_lease = matches!(target, Target::Leased(_))
                    && !self.repl.leases.valid(p, self.repl.now);
                if lost_lease {
                    let e = err(
                        ErrorKind::Unavailable,
                        format!(
                            "partition {p}'s primary lost its lease before it could answer; \
                             nothing was written, try again"
                        ),
                    );
                    respond(target, e, out);
                } else {
                    respond(target, response, out);
                }
            }
        }
    }

    /// Primary → this replica: entries to apply in order, after checking that they follow on
    /// from this node's log; entries of its own that differ from the primary's are undone
    /// first (never more than those).
    pub(crate) fn on_replicate(
        &mut self,
        now: u64,
        from: String,
        r: Received,
        entries: Vec<LogEntry>,
        out: &mut Vec<Output>,
    ) {
        let p = r.partition;
        if self.refuse_stale(&from, &r, out) {
            return;
        }
        // Taken from the partition's primary: promise it the lease.
        let part = self.repl.parts.entry(p).or_default();
        part.promised_until = part.promised_until.max(now + LEASE_MS);
        let (applied, gap) = match self.follow(p, &r, entries) {
            Ok(upto) => (upto, false),
            Err(hint) => (hint, true),
        };
        if !gap && applied >= r.commit {
            self.repl.parts.entry(p).or_default().caught_up = true;
        }
        let pos = self.repl.position(p);
        let target = Target::Ack {
            to: from,
            partition: p,
            epoch: pos.epoch,
            applied,
            gap,
            lease_from: r.sent_at,
        };
        self.gate.after_applied(target, Response::Accepted, out);
    }

    /// Refuses (and answers) a message from `from` that is not partition `r.partition`'s
    /// primary in its epoch: the answer names the epoch that replaced it, and acknowledges
    /// nothing.
    fn refuse_stale(&self, from: &str, r: &Received, out: &mut Vec<Output>) -> bool {
        let p = r.partition;
        let (state_epoch, owner) = match &self.view.state {
            Some(s) if usize::from(p) < s.owners.len() => {
                (s.part_epoch(p), Some(s.owners[usize::from(p)].clone()))
            }
            _ => (0, None),
        };
        let pos = self.repl.position(p);
        let known = pos.epoch.max(state_epoch);
        let stale = r.epoch < known
            || (r.epoch == state_epoch && owner.as_deref() != Some(from))
            || self.repl.parts.get(&p).is_some_and(|x| x.primary) && r.epoch <= state_epoch;
        let stale = (stale && !crate::bugs::on(crate::bugs::Bug::AcceptOldEpoch))
            || usize::from(p) >= usize::from(self.cfg.partitions);
        if stale {
            // Not this partition's primary in its epoch: tell the sender the epoch that
            // replaced it, acknowledge nothing.
            let ack = PeerMessage::ReplicaAck {
                partition: p,
                epoch: known,
                applied: pos.lsn,
                gap: true,
                lease_from: 0,
            };
            out.push(Output::Send {
                to: from.to_string(),
                message: ack,
            });
            return true;
        }
        false
    }

    /// Applies what follows on from this node's log; `Ok(upto)`: every entry up to `upto` is
    /// here as in the primary's log; `Err(hint)`: it does not follow on, send from
    /// `hint + 1`.
    fn follow(&mut self, p: u16, r: &Received, entries: Vec<LogEntry>) -> Result<u64, u64> {
        let pos = self.repl.position(p);
        let mut accepted = pos;
        accepted.epoch = pos.epoch.max(r.epoch);
        match self.epoch_at(p, r.prev_lsn) {
            None if r.prev_lsn > pos.lsn => return Err(pos.lsn),
            Some(e) if e == r.prev_epoch => {}
            // Another entry there (or one this node cannot read back): step back by one.
            _ => return Err(r.prev_lsn.saturating_sub(1).max(pos.commit)),
        }
        let prefix = p.to_be_bytes();
        let foreign = entries
            .iter()
            .flat_map(|e| &e.ops)
            .any(|(k, _)| k.len() <= PARTITION_PREFIX_LEN || k[..PARTITION_PREFIX_LEN] != prefix);
        if foreign {
            // Not from a node of this cluster's code: drop it whole.
            return Err(pos.lsn);
        }
        let mut upto = r.prev_lsn;
        for e in entries {
            if e.lsn != upto + 1 {
                break;
            }
            match self.epoch_at(p, e.lsn) {
                Some(mine) if mine == e.epoch => {
                    upto = e.lsn;
                    continue;
                }
                // Histories differ from here: undo ours from this entry on.
                Some(_) if self.truncate(p, e.lsn - 1).is_err() => return Err(upto),
                Some(_) | None => {}
            }
            let mut b = WriteBatch::new();
            let mut befores = Vec::with_capacity(e.ops.len());
            for (k, v) in &e.ops {
                match self.db.get_latest(k) {
                    Ok(before) => befores.push(before),
                    Err(_) => return Err(upto),
                }
                match v {
                    Some(v) => b.put(k.clone(), v.clone()),
                    None => b.delete(k.clone()),
                };
            }
            let next = Position {
                epoch: accepted.epoch,
                lsn: e.lsn,
                lsn_epoch: e.epoch,
                commit: accepted.commit.max(r.commit.min(e.lsn)),
            };
            // The engine cannot take it now (a stall, a failed log): acknowledge what is
            // here; the primary sends the rest again.
            if self.apply_entry(p, next, &e.ops, &befores, b).is_err() {
                return Ok(upto);
            }
            accepted = next;
            upto = e.lsn;
        }
        let commit = accepted.commit.max(r.commit.min(upto));
        if accepted.epoch > self.repl.position(p).epoch || commit > accepted.commit {
            // A newer epoch (made durable before anything in it is acknowledged), or a
            // newer commit point.
            let mut pos = self.repl.position(p);
            pos.epoch = accepted.epoch;
            pos.commit = commit;
            if self.write_position(p, pos).is_err() {
                return Err(upto);
            }
        }
        Ok(upto)
    }

    /// Replica → this primary: what it has.
    pub(crate) fn on_replica_ack(
        &mut self,
        now: u64,
        from: String,
        ack: Acked,
        out: &mut Vec<Output>,
    ) {
        let Acked {
            partition: p,
            epoch,
            applied,
            gap,
            lease_from,
        } = ack;
        let my_epoch = self.view.state.as_ref().map_or(0, |s| s.part_epoch(p));
        let Some(part) = self.repl.parts.get_mut(&p) else {
            return;
        };
        if epoch > my_epoch || !part.primary {
            return; // deposed, or no longer primary: the next state says what we are
        }
        if epoch == my_epoch && lease_from > 0 {
            let g = part.grants.entry(from.clone()).or_insert(0);
            *g = (*g).max(lease_from);
        }
        let last = part.pos.lsn;
        if gap && part.copies.contains_key(&from) {
            return; // being copied: entries sent before the copy began do not follow on
        }
        if part.copies.get(&from).is_some_and(|c| applied >= c.base) {
            part.copies.remove(&from); // the copy is in: entries from its base on now
        }
        if gap {
            // Start again from where it says. Below what it acknowledged, it lost entries (a
            // wiped disk): it no longer counts as having them.
            if let Some(a) = part.acked.get_mut(&from) {
                *a = (*a).min(applied);
            }
            part.sent.insert(from.clone(), (applied.min(last), now));
            self.send_from_log(now, p, &from, out);
            self.update_lease(p);
            return;
        }
        let acked = part.acked.entry(from.clone()).or_insert(0);
        if applied > *acked || applied >= last {
            part.behind_since.remove(&from);
        }
        *acked = (*acked).max(applied);
        let sent = part.sent.get(&from).map(|(s, _)| *s);
        if sent.is_none_or(|s| s <= applied) {
            // Nothing in flight past what it has: send the rest now.
            part.sent.insert(from.clone(), (applied, now));
            if applied < last {
                self.send_from_log(now, p, &from, out);
            }
        }
        self.update_lease(p);
        self.advance_commit(p, out);
    }

    /// The replicas a primary of `p` waits for, commits and leases alike: the backups, and
    /// learners it reported ready.
    fn waited_for(&self, p: u16) -> Vec<String> {
        let me = &self.cfg.node_id;
        let (backups, learners) = self
            .view
            .state
            .as_ref()
            .and_then(|s| s.part(p))
            .map(|r| (r.backups.clone(), r.learners.clone()))
            .unwrap_or_default();
        let counting = self.repl.parts.get(&p).map(|x| &x.counting);
        backups
            .into_iter()
            .chain(
                learners
                    .into_iter()
                    .filter(|l| counting.is_some_and(|c| c.contains_key(l))),
            )
            .filter(|n| n != me)
            .collect()
    }

    /// Publishes partition `p`'s read window: from when the old primary's lease is over,
    /// until the oldest grant of a replica waited for runs out (for good with none).
    fn update_lease(&mut self, p: u16) {
        let members = self.waited_for(p);
        let Some(part) = self.repl.parts.get(&p) else {
            return;
        };
        if !part.primary {
            return;
        }
        // With none to wait for, only the coordinator fences this primary: the node hears
        // `Disconnected` two thirds into its session, before the leader can see it gone.
        let lone = if self.repl.coordinator_ok
            || crate::bugs::on(crate::bugs::Bug::LoneLeaseWithoutCoordinator)
        {
            u64::MAX
        } else {
            0
        };
        let until = members
            .iter()
            .map(|m| {
                part.grants
                    .get(m)
                    .map_or(0, |g| g + LEASE_MS - LEASE_MS / 10)
            })
            .min()
            .unwrap_or(lone);
        self.repl.leases.set(p, part.serve_after, until);
    }

    /// The coordinator connection changed: every led partition's read window again.
    pub(crate) fn on_coordinator_link(&mut self, ok: bool) {
        self.repl.coordinator_ok = ok;
        let led = self.repl.led();
        for p in led {
            self.update_lease(p);
        }
    }

    /// Sends replica `to` the entries after the newest it was sent, read back from the log
    /// (at most [`RESEND_BATCH`]); none when it has them all (a probe that asks it to
    /// confirm where it is).
    fn send_from_log(&mut self, now: u64, p: u16, to: &str, out: &mut Vec<Output>) {
        let epoch = self.view.state.as_ref().map_or(0, |s| s.part_epoch(p));
        let Some(part) = self.repl.parts.get(&p) else {
            return;
        };
        let prev_lsn = part.sent.get(to).map_or(part.pos.lsn, |(s, _)| *s);
        let last = part.pos.lsn;
        let commit = part.committed;
        if self.send_copy(now, p, to, prev_lsn, out) {
            return; // a learner the log no longer reaches back for: a copy of the partition
        }
        let Some(prev_epoch) = self.epoch_at(p, prev_lsn) else {
            // Trimmed from the log, and a backup: it lags, and leaves the configuration.
            return;
        };
        let mut entries = Vec::new();
        let mut lsn = prev_lsn + 1;
        while lsn <= last && entries.len() < RESEND_BATCH {
            let Some((epoch, ops)) = self.log_entry(p, lsn) else {
                break;
            };
            entries.push(LogEntry {
                lsn,
                epoch,
                ops: ops.into_iter().map(|(k, after, _)| (k, after)).collect(),
            });
            lsn += 1;
        }
        let sent_upto = prev_lsn + entries.len() as u64;
        if let Some(part) = self.repl.parts.get_mut(&p) {
            part.sent.insert(to.to_string(), (sent_upto, now));
        }
        out.push(Output::Send {
            to: to.to_string(),
            message: PeerMessage::Replicate {
                partition: p,
                epoch,
                commit,
                prev_lsn,
                prev_epoch,
                sent_at: now,
                entries,
            },
        });
    }

    /// A new map: partitions this node became primary of start acting so (their entries
    /// after the known commit point are dirty until committed again, every replica is asked
    /// where it is), and partitions it no longer leads stop (their answers waiting for a
    /// commit have an unknown outcome).
    pub(crate) fn on_replica_map(&mut self, out: &mut Vec<Output>) {
        let Some(st) = self.view.state.clone() else {
            return;
        };
        if st.replicas.is_empty() {
            return;
        }
        let me = self.cfg.node_id.clone();
        let replaced = self.replaced_here();
        if !self.repl.fences_set {
            self.repl.fences_set = true;
            if self.cfg.restarted && !crate::bugs::on(crate::bugs::Bug::RestartSameEpoch) {
                for p in 0..st.owners.len() as u16 {
                    if st.owners[usize::from(p)] == me {
                        self.repl.fences.insert(p, st.part_epoch(p));
                    }
                }
            }
        }
        // A fence is done once the partition has a newer epoch (or another primary). Leading
        // it again then is no failover.
        let retaken: Vec<u16> = self
            .repl
            .fences
            .iter()
            .filter(|(p, e)| st.part_epoch(**p) > **e && st.owners[usize::from(**p)] == me)
            .map(|(p, _)| *p)
            .collect();
        self.repl
            .fences
            .retain(|p, e| st.part_epoch(*p) <= *e && st.owners[usize::from(*p)] == me);
        for p in 0..st.owners.len() as u16 {
            let owner = st.owners[usize::from(p)] == me;
            let fenced = self.repl.fences.contains_key(&p);
            let lead = owner && !replaced && !fenced;
            if owner && (replaced || fenced) {
                // Listed as primary of copies this disk never had, or in an epoch this node
                // may have written entries in that it lost: answer nothing of it.
                self.repl.leases.set(p, u64::MAX, 0);
            }
            let was = self.repl.parts.get(&p).is_some_and(|x| x.primary);
            if lead && !was {
                self.become_primary(p, !retaken.contains(&p), out);
            } else if !lead && was {
                self.stop_leading(p, out);
            }
        }
        self.repl.next_check = 0;
        self.repl.fences_reported_at = 0;
        self.report_fences(out);
        // What a primary knows of a node that left a partition's configuration is forgotten:
        // if it comes back (as a learner, perhaps on an empty disk), it starts from nothing.
        let led = self.repl.led();
        for p in led {
            let replicas = self.replicas_of(p);
            let (epoch, learners) = st
                .part(p)
                .map(|r| (r.epoch, r.learners.clone()))
                .unwrap_or_default();
            if let Some(part) = self.repl.parts.get_mut(&p) {
                if part.seen_epoch != epoch {
                    // A new configuration: a learner proves again what it has (one that was a
                    // backup and is gone must not be reported ready from its old answers).
                    part.seen_epoch = epoch;
                    for l in &learners {
                        part.acked.remove(l);
                        part.counting.remove(l);
                    }
                }
                let keep = |n: &String| replicas.contains(n);
                part.acked.retain(|n, _| keep(n));
                part.sent.retain(|n, _| keep(n));
                part.grants.retain(|n, _| keep(n));
                part.counting.retain(|n, _| keep(n));
                part.behind_since.retain(|n, _| keep(n));
                part.reported.retain(|n, _| keep(n));
                part.copies.retain(|n, _| keep(n));
            }
        }
        // The configuration may have shrunk: answers waiting for a removed backup can go.
        let mine = self.repl.led();
        for p in mine {
            self.advance_commit(p, out);
        }
    }

    /// What `/metrics` shows of replication.
    pub(crate) fn replication_stats(&self) -> super::ReplicationStats {
        let lag = self
            .repl
            .parts
            .iter()
            .filter(|(_, x)| x.primary)
            .map(|(p, x)| {
                let behind = self
                    .waited_for(*p)
                    .iter()
                    .map(|r| {
                        x.pos
                            .lsn
                            .saturating_sub(x.acked.get(r).copied().unwrap_or(0))
                    })
                    .max()
                    .unwrap_or(0);
                (*p, behind)
            })
            .collect();
        let rf = self.cfg.replication_factor;
        super::ReplicationStats {
            under_replicated: self
                .view
                .state
                .as_ref()
                .map_or(0, |s| s.under_replicated(rf)),
            lag,
            promotions: self.repl.promotions,
            copies_received: self.repl.copies_received,
            copy_keys_received: self.repl.copy_keys_received,
            copy_pages_sent: self.repl.copy_pages_sent,
            truncations: self.repl.truncations,
        }
    }

    /// `failover`: taking over from another primary (counted), not leading again after a
    /// restart.
    fn become_primary(&mut self, p: u16, failover: bool, out: &mut Vec<Output>) {
        if failover
            && self
                .view
                .state
                .as_ref()
                .is_some_and(|s| s.part_epoch(p) > 1)
        {
            self.repl.promotions += 1; // not the first primary of a new cluster
        }
        let pos = self.repl.position(p);
        // Entries after the known commit point (this node's own, from before a restart, or an
        // old primary's it received) may or may not have been acknowledged: their keys answer
        // no read until this primary has committed them.
        for lsn in pos.commit + 1..=pos.lsn {
            if let Some((_, ops)) = self.log_entry(p, lsn) {
                for (k, after, before) in ops {
                    let before = before.map(|v| (0, v));
                    self.repl
                        .dirty
                        .inherit(k, lsn, before, after.map(|v| (0, v)));
                }
            }
        }
        let started = self.repl.started_at.unwrap_or(self.repl.now);
        let first_epoch = self
            .view
            .state
            .as_ref()
            .is_some_and(|s| s.part_epoch(p) <= 1);
        let part = self.repl.parts.entry(p).or_default();
        part.primary = true;
        part.acked.clear();
        part.sent.clear();
        part.grants.clear();
        part.counting.clear();
        part.copies.clear();
        part.committed = pos.commit;
        part.local_durable = 0;
        // Promises this node made to the old primary (and any made before it started) hold
        // until they run out. A partition's first configuration (epoch 1) never had another
        // primary: nothing to wait for.
        part.serve_after = if first_epoch {
            0
        } else {
            part.promised_until.max(started + LEASE_MS)
        };
        self.update_lease(p);
        // Durable here once everything applied so far is.
        let target = Target::Commit {
            partition: p,
            lsn: pos.lsn,
            target: Box::new(Target::Internal),
        };
        self.gate.after_applied(target, Response::Accepted, out);
    }

    fn stop_leading(&mut self, p: u16, out: &mut Vec<Output>) {
        self.repl.leases.set(p, 0, u64::MAX);
        let Some(part) = self.repl.parts.get_mut(&p) else {
            return;
        };
        part.primary = false;
        part.acked.clear();
        part.sent.clear();
        part.copies.clear();
        for (_, target, _, _) in part.pending.drain(..) {
            let e = err(
                ErrorKind::OutcomeUnknown,
                format!(
                    "this node stopped being partition {p}'s primary before the write reached \
                     every copy; the outcome is unknown"
                ),
            );
            respond(target, e, out);
        }
        self.repl.dirty.commit(p, u64::MAX);
    }

    /// As primary: replicas that are behind and were sent nothing for [`RESEND_MS`] are sent
    /// their missing entries again (or, never heard from, a probe).
    pub(crate) fn replication_tick(&mut self, now: u64, out: &mut Vec<Output>) {
        let Some(st) = &self.view.state else { return };
        if st.replicas.is_empty() || now < self.repl.next_check {
            return;
        }
        // At most every `CHECK_MS`, not after every input: a walk over every partition.
        self.repl.next_check = now + CHECK_MS;
        self.report_fences(out);
        self.repl.any_behind = false;
        let mine = self.repl.led();
        for p in mine {
            self.report_replicas(now, p, out);
            for to in self.replicas_of(p) {
                let part = self.repl.parts.entry(p).or_default();
                let behind = part.acked.get(&to).is_none_or(|a| *a < part.pos.lsn);
                let last_sent = part.sent.get(&to).map_or(0, |(_, at)| *at);
                self.repl.any_behind |= behind;
                // Behind: send again; caught up: an empty message renews the lease.
                if now < last_sent.saturating_add(RESEND_MS) {
                    continue;
                }
                // From what it acknowledged (never heard from: ask where it is).
                match part.acked.get(&to).copied() {
                    Some(a) => part.sent.insert(to.clone(), (a, now)),
                    None => part.sent.remove(&to),
                };
                self.send_from_log(now, p, &to, out);
            }
            self.update_lease(p);
            self.advance_commit(p, out);
            self.expire_pending(now, p, out);
        }
    }

    /// As primary of `p`: answers that have waited [`COMMIT_WAIT_MS`] for their entry to reach
    /// every copy go out as "outcome unknown" (the entry may still commit), so that no client
    /// waits without bound, say while this primary is cut off from its backups and from the
    /// leader that would drop them.
    fn expire_pending(&mut self, now: u64, p: u16, out: &mut Vec<Output>) {
        let due = |part: &PartRepl| {
            part.pending
                .front()
                .is_some_and(|(_, _, _, at)| now >= at + COMMIT_WAIT_MS)
        };
        // Every led partition, every `CHECK_MS`: nothing to look up unless an answer is due.
        if !self.repl.parts.get(&p).is_some_and(due) {
            return;
        }
        let waited: Vec<String> = self.waited_for(p);
        let Some(part) = self.repl.parts.get_mut(&p) else {
            return;
        };
        while due(part) {
            let Some((lsn, target, _, at)) = part.pending.pop_front() else {
                break;
            };
            let missing: Vec<String> = waited
                .iter()
                .filter(|n| part.acked.get(*n).is_none_or(|a| *a < lsn))
                .cloned()
                .collect();
            let why = format!(
                "partition {p}'s primary waited {} ms for entry {lsn} to reach its copies on {}",
                now - at,
                if missing.is_empty() {
                    "every replica".to_string()
                } else {
                    missing.join(", ")
                }
            );
            let e = if matches!(target, Target::Leased(_)) {
                err(
                    ErrorKind::Unavailable,
                    format!("{why}; nothing was written, try again"),
                )
            } else {
                err(
                    ErrorKind::OutcomeUnknown,
                    format!("{why}; the outcome is unknown"),
                )
            };
            respond(target, e, out);
        }
    }

    /// As primary of `p`: backups behind for [`LAG_TIMEOUT_MS`] are reported lagging, and
    /// learners that have every entry are counted from now on and reported ready (each
    /// report repeated every [`REPORT_EVERY_MS`] until the state shows it).
    fn report_replicas(&mut self, now: u64, p: u16, out: &mut Vec<Output>) {
        let Some((epoch, backups, learners)) = self.view.state.as_ref().and_then(|s| {
            s.part(p)
                .map(|r| (r.epoch, r.backups.clone(), r.learners.clone()))
        }) else {
            return;
        };
        let mut reports = Vec::new();
        let Some(part) = self.repl.parts.get_mut(&p) else {
            return;
        };
        let last = part.pos.lsn;
        for b in &backups {
            let behind = part.acked.get(b).is_none_or(|a| *a < last);
            if !behind {
                part.behind_since.remove(b);
                continue;
            }
            let since = *part.behind_since.entry(b.clone()).or_insert(now);
            let due = part
                .reported
                .get(b)
                .is_none_or(|at| now >= at + REPORT_EVERY_MS);
            if now >= since + LAG_TIMEOUT_MS && due {
                part.reported.insert(b.clone(), now);
                reports.push((true, b.clone()));
            }
        }
        for l in &learners {
            let caught_up = part.acked.get(l).is_some_and(|a| *a >= last);
            let due = match part.counting.get(l) {
                Some(at) => now >= at + REPORT_EVERY_MS,
                None => caught_up,
            };
            if due {
                part.counting.insert(l.clone(), now);
                reports.push((false, l.clone()));
            }
        }
        for (lagging, node) in reports {
            self.report(lagging, p, epoch, node, out);
        }
    }

    /// Where this node's logs of `partitions` end: (partition, accepted epoch, last entry,
    /// its epoch).
    pub(crate) fn positions_of(&self, partitions: &[u16]) -> Vec<(u16, u64, u64, u64)> {
        // A node that may have lost entries it acknowledged offers none of its copies.
        let replaced = self.replaced_here();
        // Nor does a partition whose copy is under way (its log was emptied for it).
        let trusted = |p: &u16| {
            let part = self.repl.parts.get(p);
            !replaced
                && part.is_none_or(|x| x.copying.is_none())
                && (!self.repl.wiped || part.is_some_and(|x| x.caught_up))
        };
        partitions
            .iter()
            .filter(|p| trusted(p))
            .map(|p| {
                let pos = self.repl.position(*p);
                (*p, pos.epoch, pos.lsn, pos.lsn_epoch)
            })
            .collect()
    }

    /// Asks the leader (again, at most every [`REPORT_EVERY_MS`]) for a new epoch of each partition
    /// this node is fenced from leading.
    fn report_fences(&mut self, out: &mut Vec<Output>) {
        let now = self.repl.now;
        if self.repl.fences.is_empty()
            || (self.repl.fences_reported_at != 0
                && now < self.repl.fences_reported_at + REPORT_EVERY_MS)
        {
            return;
        }
        self.repl.fences_reported_at = now.max(1);
        let me = self.cfg.node_id.clone();
        let fences: Vec<(u16, u64)> = self.repl.fences.iter().map(|(p, e)| (*p, *e)).collect();
        for (p, e) in fences {
            self.report(true, p, e, me.clone(), out);
        }
    }

    /// Tells the leader (which may be this node) about a replica of partition `p`.
    fn report(&mut self, lagging: bool, p: u16, epoch: u64, node: String, out: &mut Vec<Output>) {
        let Some(leader) = self.view.state.as_ref().map(|s| s.leader.clone()) else {
            return;
        };
        if leader == self.cfg.node_id {
            return self.on_replica_report(lagging, p, epoch, node);
        }
        let message = if lagging {
            PeerMessage::ReplicaLagging {
                partition: p,
                epoch,
                node,
            }
        } else {
            PeerMessage::LearnerReady {
                partition: p,
                epoch,
                node,
            }
        };
        out.push(Output::Send {
            to: leader,
            message,
        });
    }

    /// The connection to `peer` broke: what was sent to it since its last acknowledgement
    /// may be lost, so the resend timer starts again from that acknowledgement, a resend
    /// period from now (not at once: against a peer that refuses connections, an immediate
    /// resend would fail, report it down again, and spin).
    pub(crate) fn replica_down(&mut self, peer: &str) {
        let now = self.repl.now;
        for part in self.repl.parts.values_mut() {
            if let Some(a) = part.acked.get(peer).copied() {
                part.sent.insert(peer.to_string(), (a, now));
            } else if part.sent.contains_key(peer) {
                part.sent.insert(peer.to_string(), (part.pos.lsn, now));
                part.acked.remove(peer);
            }
        }
    }

    /// A primary of a replicated partition comes back every `CHECK_MS` (leases to renew).
    pub(crate) fn replication_deadline(&self) -> Option<u64> {
        let st = self.view.state.as_ref()?;
        let leads = self.repl.parts.values().any(|x| x.primary) || !self.repl.fences.is_empty();
        (!st.replicas.is_empty() && (leads || self.repl.next_check == 0))
            .then_some(self.repl.next_check)
    }
}
