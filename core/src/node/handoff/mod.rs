//! Moving a partition between nodes (a node joins, or is decommissioned), as peer messages
//! and node state: [`outgoing`] is the old owner's side, [`incoming`] the new owner's,
//! [`cleanup`] the deletion of what was handed away. This file reacts to new maps and holds
//! the rules shared by both sides.
//!
//! Three rules the simulation taught: the old owner answers no page until every write it
//! applied before tracking began is durable (`CopyBeforeDurable`); the new owner's wipe of a
//! stale copy deletes writes of an earlier attempt that are not durable yet (`WipeOnlyDurable`);
//! and a node that starts and finds one of its partitions moving away treats it as frozen
//! until the map flips or the move is aborted (`ForgetFreezeOnRestart`).

mod cleanup;
mod incoming;
mod outgoing;

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster::ClusterState;
use crate::node::{Node, Output};
use crate::proto::Request;

use incoming::Incoming;
use outgoing::{Frozen, Outgoing};

/// Every hand-off this node takes part in.
pub(crate) struct Handoffs {
    /// Hand-offs of partitions this node owns: keys written since the copy began.
    pub(crate) outgoing: BTreeMap<u16, Outgoing>,
    /// Hand-offs of partitions coming to this node.
    pub(crate) incoming: BTreeMap<u16, Incoming>,
    /// Partitions this node no longer owns whose local copy is still to be deleted.
    /// (With the last key deleted so far: deletes become visible only once persisted, so the
    /// next chunk starts after it rather than finding the same keys again.)
    pub(crate) cleanup: BTreeMap<u16, Option<Vec<u8>>>,
    /// By partition: owned by this node in the last map seen (`None` before the first).
    owned_before: Option<Vec<bool>>,
    /// No partition map has been seen since this node started.
    first_map: bool,
}

impl Default for Handoffs {
    fn default() -> Self {
        Handoffs {
            outgoing: BTreeMap::new(),
            incoming: BTreeMap::new(),
            cleanup: BTreeMap::new(),
            owned_before: None,
            first_map: true,
        }
    }
}

impl Handoffs {
    /// A write to user key `k` of partition `p` was applied: if `p` is being handed off, the
    /// key goes into the tail.
    pub(crate) fn track_write(&mut self, p: u16, k: Vec<u8>) {
        if let Some(o) = self.outgoing.get_mut(&p) {
            o.written.insert(k);
        }
    }

    /// Hand-offs only of partitions this node owns, towards where the map moves them;
    /// partitions coming in are moving here; a partition this node owns is not being deleted.
    pub(crate) fn check(&self, me: &str, st: &ClusterState) -> Result<(), String> {
        for (p, o) in &self.outgoing {
            let owner = st.owners.get(usize::from(*p));
            if owner.map(String::as_str) != Some(me) {
                return Err(format!("handing off partition {p}, owned by {owner:?}"));
            }
            if st.moving.get(p) != Some(&o.to) {
                return Err(format!(
                    "handing partition {p} to {}, but the map moves it to {:?}",
                    o.to,
                    st.moving.get(p)
                ));
            }
        }
        for p in self.incoming.keys() {
            if st.moving.get(p).map(String::as_str) != Some(me) {
                return Err(format!("receiving partition {p}, which is not moving here"));
            }
        }
        for p in self.cleanup.keys() {
            if st.owners.get(usize::from(*p)).map(String::as_str) == Some(me) {
                return Err(format!("cleaning up partition {p}, which this node owns"));
            }
        }
        Ok(())
    }
}

impl Node {
    /// Partition `p` is frozen here: its requests wait for the map to flip.
    pub(crate) fn frozen(&self, p: u16) -> bool {
        self.ho.outgoing.get(&p).is_some_and(|o| o.frozen.is_some())
    }

    /// The request names a key of a frozen partition.
    pub(crate) fn touches_frozen(&self, request: &Request) -> bool {
        !self.ho.outgoing.is_empty()
            && request
                .keys()
                .iter()
                .any(|k| self.frozen(self.partition_of(k)))
    }

    /// Timeouts and chores of hand-offs, after every input.
    pub(crate) fn handoff_tick(&mut self, now: u64, out: &mut Vec<Output>) {
        self.send_tails(out);
        self.incoming_tick(now, out);
        self.cleanup_tick(out);
    }

    /// Reacts to a new partition map: start receiving partitions moving here, forget moves
    /// that ended, and schedule the deletion of partitions handed away.
    pub(crate) fn on_map_change(&mut self, now: u64, out: &mut Vec<Output>) {
        let Ok(state) = self.routable().cloned() else {
            return;
        };
        let me = self.cfg.node_id.clone();
        // Outgoing moves: ended when the map no longer records them.
        let ended: Vec<u16> = self
            .ho
            .outgoing
            .iter()
            .filter(|(p, o)| state.moving.get(p) != Some(&o.to))
            .map(|(p, _)| *p)
            .collect();
        for p in ended {
            self.ho.outgoing.remove(&p);
        }
        // The first map after a (re)start: a partition of ours that is moving away may have
        // been frozen before a crash, its tail sent, and the new owner about to flip the map.
        // Taking writes for it now would lose them at the flip, so it stays frozen (writes
        // wait) until the map flips or the move is aborted. If the copy had not got that far,
        // the new owner restarts it and the freeze only delays writes.
        if std::mem::take(&mut self.ho.first_map)
            && !crate::bugs::on(crate::bugs::Bug::ForgetFreezeOnRestart)
        {
            for (p, to) in &state.moving {
                if state.owners[usize::from(*p)] == me {
                    self.ho.outgoing.insert(
                        *p,
                        Outgoing {
                            to: to.clone(),
                            since: 0,
                            written: BTreeSet::new(),
                            frozen: Some(Frozen {
                                id: u64::MAX,
                                upto: 0,
                                sent: true,
                            }),
                        },
                    );
                }
            }
        }
        // Partitions that left us: delete the local copy. Not with replicas: there a copy that
        // is not the primary is a backup, a learner, or one that may become either again, and
        // its data must stay with its log and position.
        for (p, owner) in state.owners.iter().enumerate() {
            let p = p as u16;
            if *owner != me
                && state.replicas.is_empty()
                && state.moving.get(&p).is_none_or(|t| *t != me)
            {
                // Only ones we held: a cleanup of an empty range costs one seek.
                if self.ho.incoming.remove(&p).is_some() || self.once_owned(p) {
                    self.ho.cleanup.entry(p).or_insert(None);
                }
            }
        }
        // Incoming moves: flipped (ours now) or aborted.
        let done: Vec<u16> = self
            .ho
            .incoming
            .keys()
            .filter(|p| state.moving.get(p) != Some(&me))
            .copied()
            .collect();
        for p in done {
            self.ho.incoming.remove(&p);
            if state.owners[usize::from(p)] != me {
                self.ho.cleanup.entry(p).or_insert(None);
            }
        }
        self.ho.owned_before = Some(state.owners.iter().map(|o| *o == me).collect());
        // New moves to us.
        for (p, to) in &state.moving {
            if *to == me && !self.ho.incoming.contains_key(p) {
                let from = state.owners[usize::from(*p)].clone();
                self.ho.cleanup.remove(p);
                self.start_incoming(now, *p, from, out);
            }
        }
    }

    /// Whether this node may hold data of `p` it does not own: it owned it in the map before
    /// this one, or this is the first map since the node started (a crash may have cut a
    /// cleanup short).
    fn once_owned(&self, p: u16) -> bool {
        match &self.ho.owned_before {
            None => true,
            Some(o) => o.get(usize::from(p)).copied().unwrap_or(false),
        }
    }
}
