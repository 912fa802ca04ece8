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
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::gate::{respond, Target};
use super::{engine_err, Node, Output};
use crate::engine::{Db, WriteBatch};
use crate::proto::envelope::PARTITION_PREFIX_LEN;
use crate::proto::peer::PeerMessage;
use crate::proto::replog::{self, LogEntry, Position, LOG_RETAIN};
use crate::proto::{err, ErrorKind, Response};

/// How often a primary sends a replica that is behind what it is missing (or, with nothing
/// heard from it yet, an empty `Replicate` that asks where it is).
pub(crate) const RESEND_MS: u64 = 500;
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
    map: Mutex<BTreeMap<Vec<u8>, (u64, Before)>>,
}

/// A key's committed stored value and its engine sequence number (`None`: absent).
pub(crate) type Before = Option<(u64, Vec<u8>)>;

/// What a reader must answer for a key instead of the engine's value.
pub(crate) enum Committed {
    /// The key has no uncommitted write: the engine's value is the answer.
    Engine,
    /// The committed value (`None`: absent).
    Value(Before),
}

impl Dirty {
    pub(crate) fn lookup(&self, ikey: &[u8]) -> Committed {
        if self.len.load(Ordering::Acquire) == 0 {
            return Committed::Engine;
        }
        match self.map.lock().get(ikey) {
            Some((_, before)) => Committed::Value(before.clone()),
            None => Committed::Engine,
        }
    }

    /// The dirty keys in `[lo, hi)` with their committed values, in key order.
    pub(crate) fn range(&self, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> Vec<(Vec<u8>, Before)> {
        if self.len.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        self.map
            .lock()
            .range::<[u8], _>((lo, hi))
            .map(|(k, (_, before))| (k.clone(), before.clone()))
            .collect()
    }

    /// Entry `lsn` wrote `ikey`, whose committed value was `before` (kept if the key is dirty
    /// already: the value before its oldest uncommitted write is the committed one).
    fn insert(&self, ikey: Vec<u8>, lsn: u64, before: Before) {
        let mut m = self.map.lock();
        m.entry(ikey)
            .and_modify(|e| e.0 = lsn)
            .or_insert((lsn, before));
        self.len.store(m.len(), Ordering::Release);
    }

    /// Entries of partition `p` up to `lsn` are committed: their keys are clean again.
    fn commit(&self, p: u16, lsn: u64) {
        if self.len.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut m = self.map.lock();
        let lo = p.to_be_bytes().to_vec();
        let keys: Vec<Vec<u8>> = m
            .range(lo.clone()..)
            .take_while(|(k, _)| k.starts_with(&lo))
            .filter(|(_, (l, _))| *l <= lsn)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            m.remove(&k);
        }
        self.len.store(m.len(), Ordering::Release);
    }
}

/// One partition's replication state on this node.
#[derive(Default)]
pub(crate) struct PartRepl {
    /// The newest entry applied here, and the highest epoch accepted (what the engine holds).
    pos: Position,
    /// As primary: entries up to this are durable here.
    local_durable: u64,
    /// As primary: entries up to this are on every copy in sync; answers up to it are sent.
    committed: u64,
    /// As primary: per replica, the entries it acknowledged (absent: not heard from yet).
    acked: BTreeMap<String, u64>,
    /// As primary: per replica, the newest entry sent, and when something was last sent.
    sent: BTreeMap<String, (u64, u64)>,
    /// As primary: answers durable here, waiting for their entry to commit, in `lsn` order.
    pending: VecDeque<(u64, Target, Response)>,
}

/// Every partition's replication state.
#[derive(Default)]
pub(crate) struct Replication {
    pub(crate) parts: BTreeMap<u16, PartRepl>,
    pub(crate) dirty: std::sync::Arc<Dirty>,
    /// When the primary next looks for replicas that are behind, and whether any was.
    pub(crate) next_check: u64,
    pub(crate) any_behind: bool,
}

impl Replication {
    /// The positions the engine holds (after a restart: where each partition's log ends).
    pub(crate) fn load(db: &Db, dirty: std::sync::Arc<Dirty>) -> Result<Replication, String> {
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
            parts.insert(
                p,
                PartRepl {
                    pos,
                    local_durable: pos.lsn,
                    ..PartRepl::default()
                },
            );
        }
        Ok(Replication {
            parts,
            dirty,
            next_check: 0,
            any_behind: false,
        })
    }

    /// Where partition `p`'s log ends here.
    pub(crate) fn position(&self, p: u16) -> Position {
        self.parts.get(&p).map(|r| r.pos).unwrap_or_default()
    }
}

/// A write this node is about to make as primary of a replicated partition.
pub(crate) struct PrimaryWrite {
    pub(crate) partition: u16,
    pub(crate) epoch: u64,
}

impl Node {
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
        let in_sync = 1 + st.backups(p).len();
        if in_sync < self.cfg.min_insync_replicas {
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
        let pos = self.repl.position(p);
        let lsn = pos.lsn + 1;
        let (seq, _) =
            self.apply_entry(p, w.epoch.max(pos.epoch), lsn, w.epoch, &ops, &befores, b)?;
        // A key named twice in one batch keeps its first before-image: the committed one.
        for ((k, _), before) in ops.iter().zip(befores) {
            self.repl.dirty.insert(k.clone(), lsn, before);
        }
        let entry = LogEntry {
            lsn,
            epoch: w.epoch,
            ops,
        };
        self.send_entry(now, p, w.epoch, entry, out);
        self.repl.any_behind = true;
        Ok((seq, lsn))
    }

    /// One engine batch: `b`'s keys, log entry `lsn` (numbered in `entry_epoch`, with the
    /// keys' before-images), the trimming of the entry `LOG_RETAIN` older, and the position.
    #[allow(clippy::too_many_arguments)]
    fn apply_entry(
        &mut self,
        p: u16,
        accepted_epoch: u64,
        lsn: u64,
        entry_epoch: u64,
        ops: &[(Vec<u8>, Option<Vec<u8>>)],
        befores: &[Before],
        mut b: WriteBatch,
    ) -> Result<(u64, Position), Response> {
        let logged: Vec<replog::LoggedOp> = ops
            .iter()
            .zip(befores)
            .map(|((k, v), before)| {
                (
                    k.clone(),
                    v.clone(),
                    before.as_ref().map(|(_, raw)| raw.clone()),
                )
            })
            .collect();
        b.put(
            replog::log_key(p, lsn),
            replog::encode_entry(entry_epoch, &logged),
        );
        if lsn > LOG_RETAIN {
            b.delete(replog::log_key(p, lsn - LOG_RETAIN));
        }
        let pos = Position {
            epoch: accepted_epoch,
            lsn,
            lsn_epoch: entry_epoch,
        };
        b.put(replog::meta_key(p), replog::encode_position(&pos));
        let seq = self.db.write_deferred(b).map_err(engine_err)?;
        self.gate.applied(seq);
        self.repl.parts.entry(p).or_default().pos = pos;
        Ok((seq, pos))
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

    /// Sends a new entry to every replica that has everything before it (the others are
    /// sent from the log when they answer, or by the resend timer).
    fn send_entry(&mut self, now: u64, p: u16, epoch: u64, entry: LogEntry, out: &mut Vec<Output>) {
        let replicas = self.replicas_of(p);
        let commit = self.repl.parts.get(&p).map_or(0, |r| r.committed);
        let part = self.repl.parts.entry(p).or_default();
        for to in replicas {
            let caught_up = part.sent.get(&to).is_some_and(|(s, _)| *s + 1 == entry.lsn);
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
        for (p, lsn, target, response) in released {
            let part = self.repl.parts.entry(p).or_default();
            part.local_durable = part.local_durable.max(lsn);
            part.pending.push_back((lsn, target, response));
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
        let backups: Vec<String> = self
            .view
            .state
            .as_ref()
            .map(|s| s.backups(p).iter().filter(|b| **b != me).cloned().collect())
            .unwrap_or_default();
        let Some(part) = self.repl.parts.get_mut(&p) else {
            return;
        };
        let mut point = part.local_durable;
        for b in &backups {
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
            .is_some_and(|(l, _, _)| *l <= committed)
        {
            if let Some((_, target, response)) = part.pending.pop_front() {
                respond(target, response, out);
            }
        }
    }

    /// Primary → this replica: entries to apply in order.
    pub(crate) fn on_replicate(
        &mut self,
        from: String,
        p: u16,
        epoch: u64,
        entries: Vec<LogEntry>,
        out: &mut Vec<Output>,
    ) {
        let state_epoch = self.view.state.as_ref().map_or(0, |s| s.part_epoch(p));
        let mut pos = self.repl.position(p);
        let known = pos.epoch.max(state_epoch);
        if epoch < known || usize::from(p) >= usize::from(self.cfg.partitions) {
            // A deposed primary: tell it the epoch that replaced it, acknowledge nothing.
            out.push(Output::Send {
                to: from,
                message: PeerMessage::ReplicaAck {
                    partition: p,
                    epoch: known,
                    applied: pos.lsn,
                    gap: false,
                },
            });
            return;
        }
        let mut gap = false;
        for e in entries {
            if e.lsn <= pos.lsn {
                continue;
            }
            if e.lsn != pos.lsn + 1 {
                gap = true;
                break;
            }
            let prefix = p.to_be_bytes();
            if e.ops.iter().any(|(k, _)| {
                k.len() <= PARTITION_PREFIX_LEN || k[..PARTITION_PREFIX_LEN] != prefix
            }) {
                // Not from a node of this cluster's code: drop it, acknowledge nothing.
                return;
            }
            let mut b = WriteBatch::new();
            let mut befores = Vec::with_capacity(e.ops.len());
            let mut failed = false;
            for (k, v) in &e.ops {
                match self.db.get_latest(k) {
                    Ok(before) => befores.push(before),
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
                match v {
                    Some(v) => b.put(k.clone(), v.clone()),
                    None => b.delete(k.clone()),
                };
            }
            if failed {
                return;
            }
            match self.apply_entry(p, epoch.max(pos.epoch), e.lsn, e.epoch, &e.ops, &befores, b) {
                Ok((_, new)) => pos = new,
                // The engine cannot take it now (a stall, a failed log): acknowledge what is
                // here; the primary sends the rest again.
                Err(_) => break,
            }
        }
        if epoch > pos.epoch {
            // A newer epoch with nothing new to apply: make it durable before acknowledging
            // anything in it.
            pos.epoch = epoch;
            let mut b = WriteBatch::new();
            b.put(replog::meta_key(p), replog::encode_position(&pos));
            if let Ok(seq) = self.db.write_deferred(b) {
                self.gate.applied(seq);
                self.repl.parts.entry(p).or_default().pos = pos;
            }
        }
        let target = Target::Ack {
            to: from,
            partition: p,
            epoch: pos.epoch,
            applied: pos.lsn,
            gap,
        };
        self.gate.after_applied(target, Response::Accepted, out);
    }

    /// Replica → this primary: what it has.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_replica_ack(
        &mut self,
        now: u64,
        from: String,
        p: u16,
        epoch: u64,
        applied: u64,
        gap: bool,
        out: &mut Vec<Output>,
    ) {
        let my_epoch = self.view.state.as_ref().map_or(0, |s| s.part_epoch(p));
        if epoch > my_epoch || self.owner(p).ok().as_deref() != Some(self.cfg.node_id.as_str()) {
            return; // deposed, or no longer primary: the next state says what we are
        }
        let Some(part) = self.repl.parts.get_mut(&p) else {
            return;
        };
        let acked = part.acked.entry(from.clone()).or_insert(0);
        *acked = (*acked).max(applied);
        let sent = part.sent.get(&from).map(|(s, _)| *s);
        if gap || sent.is_none_or(|s| s <= applied) {
            // Nothing in flight past what it has: send the rest now.
            part.sent.insert(from.clone(), (applied, now));
            if applied < part.pos.lsn {
                self.send_from_log(now, p, &from, out);
            }
        }
        self.advance_commit(p, out);
    }

    /// Sends replica `to` the entries after the newest it was sent, read back from the log
    /// (at most [`RESEND_BATCH`]).
    fn send_from_log(&mut self, now: u64, p: u16, to: &str, out: &mut Vec<Output>) {
        let epoch = self.view.state.as_ref().map_or(0, |s| s.part_epoch(p));
        let Some(part) = self.repl.parts.get(&p) else {
            return;
        };
        let from_lsn = part.sent.get(to).map_or(0, |(s, _)| *s) + 1;
        let last = part.pos.lsn;
        let commit = part.committed;
        let mut entries = Vec::new();
        let mut lsn = from_lsn;
        while lsn <= last && entries.len() < RESEND_BATCH {
            let raw = match self.db.get_latest(&replog::log_key(p, lsn)) {
                Ok(Some((_, raw))) => raw,
                _ => break, // trimmed (or unreadable): a copy of the partition is the way on
            };
            let Ok((epoch, ops)) = replog::decode_entry(&raw) else {
                break;
            };
            entries.push(LogEntry {
                lsn,
                epoch,
                ops: ops.into_iter().map(|(k, after, _)| (k, after)).collect(),
            });
            lsn += 1;
        }
        let sent_upto = from_lsn + entries.len() as u64 - 1;
        if let Some(part) = self.repl.parts.get_mut(&p) {
            part.sent.insert(to.to_string(), (sent_upto, now));
        }
        out.push(Output::Send {
            to: to.to_string(),
            message: PeerMessage::Replicate {
                partition: p,
                epoch,
                commit,
                entries,
            },
        });
    }

    /// As primary: replicas that are behind and were sent nothing for [`RESEND_MS`] are sent
    /// their missing entries again (or, never heard from, an empty probe).
    pub(crate) fn replication_tick(&mut self, now: u64, out: &mut Vec<Output>) {
        let Some(st) = &self.view.state else { return };
        if st.replicas.is_empty() || now < self.repl.next_check {
            return;
        }
        // At most every `CHECK_MS`, not after every input: a walk over every partition.
        self.repl.next_check = now + CHECK_MS;
        self.repl.any_behind = false;
        let me = self.cfg.node_id.clone();
        let mine: Vec<(u16, u64)> = (0..st.owners.len())
            .filter(|&p| st.owners[p] == me)
            .map(|p| (p as u16, st.part_epoch(p as u16)))
            .collect();
        for (p, epoch) in mine {
            for to in self.replicas_of(p) {
                let part = self.repl.parts.entry(p).or_default();
                let behind = part.acked.get(&to).is_none_or(|a| *a < part.pos.lsn);
                let last_sent = part.sent.get(&to).map_or(0, |(_, at)| *at);
                self.repl.any_behind |= behind;
                if !behind || now < last_sent.saturating_add(RESEND_MS) {
                    continue;
                }
                let acked = part.acked.get(&to).copied();
                match acked {
                    None => {
                        part.sent.insert(to.clone(), (part.pos.lsn, now));
                        let commit = part.committed;
                        out.push(Output::Send {
                            to,
                            message: PeerMessage::Replicate {
                                partition: p,
                                epoch,
                                commit,
                                entries: Vec::new(),
                            },
                        });
                    }
                    Some(a) => {
                        part.sent.insert(to.clone(), (a, now));
                        self.send_from_log(now, p, &to, out);
                    }
                }
            }
        }
    }

    /// The connection to `peer` broke: what was sent to it since its last acknowledgement
    /// may be lost, so the resend timer starts again from that acknowledgement.
    pub(crate) fn replica_down(&mut self, peer: &str) {
        for part in self.repl.parts.values_mut() {
            if let Some(a) = part.acked.get(peer).copied() {
                part.sent.insert(peer.to_string(), (a, 0));
            } else {
                part.sent.remove(peer);
            }
        }
    }

    /// When the resend timer next fires, if any replica is behind.
    pub(crate) fn replication_deadline(&self) -> Option<u64> {
        let st = self.view.state.as_ref()?;
        (!st.replicas.is_empty() && (self.repl.any_behind || self.repl.next_check == 0))
            .then_some(self.repl.next_check)
    }
}
