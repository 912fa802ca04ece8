//! Leadership, as one state: [`Leadership`]. Its transitions (the `on_*` methods of the enum)
//! are the only way its fields change, and the leader's duties (claiming an epoch, planning
//! moves, writing decommissions, flipping moved partitions) are here too.
//!
//! Every state write is conditional on the stamp last read, so a deposed or paused leader
//! changes nothing; a node steps down the moment it loses the coordinator (`Disconnected`), not
//! at the later `Expired`.

use std::collections::{BTreeMap, BTreeSet};

use super::{Node, Output};
use crate::cluster::{ClusterState, CoordCommand, CoordEvent};
use crate::proto::peer::PeerMessage;
use crate::proto::{err, AdminCommand, ErrorKind, Response};

/// Where this node stands in the election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// Not connected to the coordinator (or not yet): we cannot know that nobody else leads.
    Disconnected,
    /// Connected and not elected. `state_seen`: a `State` arrived on this connection.
    Follower { state_seen: bool },
    /// The coordinator elected us; we lead once our claim of the next epoch is written. The
    /// claim is made only after a `State` was seen on this connection (it is conditional on
    /// that state's stamp), and one at a time.
    Candidate {
        state_seen: bool,
        claim_in_flight: bool,
    },
    /// We wrote the current epoch and have not lost the connection since.
    Leader(Box<LeaderDuty>),
}

/// What a leader keeps between inputs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderDuty {
    /// A state write (a plan step, a flip, a decommission) is in flight: one at a time.
    write_in_flight: bool,
    /// The map or the members changed since the last plan.
    plan_due: bool,
    /// Nodes asked to leave that the state does not show leaving yet, and the stamp of the
    /// state the last write of them was made against (written once per state seen).
    to_leave: BTreeSet<String>,
    leave_written_at: Option<i64>,
    /// Asking backups where their logs end, before promoting one (a primary is gone).
    probe: Option<Probe>,
    /// What primaries reported (partition, epoch, node): backups lagging, learners ready.
    lagging: BTreeSet<(u16, u64, String)>,
    ready: BTreeSet<(u16, u64, String)>,
    /// With replicas: nodes that hold copies but are not members, since when (seen by this
    /// leader). Each keeps its place until `replica_timeout_ms` has passed.
    gone_since: BTreeMap<String, u64>,
    /// When the next of them runs out of time (the leader plans again then).
    timeout_due: Option<u64>,
}

/// A leader's question to the live backups of partitions whose primary is gone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Probe {
    id: u64,
    /// Nodes that have not answered yet.
    asked: BTreeSet<String>,
    /// (partition, node) → (epoch, number) of its last entry.
    positions: BTreeMap<(u16, String), (u64, u64)>,
    /// When the leader decides with the answers it has.
    deadline: u64,
}

/// How long a leader waits for backups to say where their logs end.
pub(crate) const PROBE_MS: u64 = 1_000;

impl Leadership {
    /// A leader that has just won (or a cluster of one).
    pub(crate) fn leader() -> Leadership {
        Leadership::Leader(Box::new(LeaderDuty {
            plan_due: true,
            ..LeaderDuty::default()
        }))
    }

    pub fn is_leader(&self) -> bool {
        matches!(self, Leadership::Leader(_))
    }

    fn on_connected(&mut self) {
        if *self == Leadership::Disconnected {
            *self = Leadership::Follower { state_seen: false };
        }
    }

    fn on_disconnected(&mut self) {
        *self = Leadership::Disconnected;
    }

    fn on_elected(&mut self) {
        if let Leadership::Follower { state_seen } = *self {
            *self = Leadership::Candidate {
                state_seen,
                claim_in_flight: false,
            };
        }
    }

    /// A new state arrived; `names_me` whether it names this node as leader.
    fn on_state(&mut self, names_me: bool) {
        match self {
            Leadership::Disconnected => {}
            Leadership::Follower { state_seen } | Leadership::Candidate { state_seen, .. } => {
                *state_seen = true
            }
            Leadership::Leader(_) if !names_me => {
                // Someone else wrote a later epoch.
                *self = Leadership::Follower { state_seen: true };
            }
            Leadership::Leader(d) => d.plan_due = true,
        }
    }

    fn on_members(&mut self) {
        if let Leadership::Leader(d) = self {
            d.plan_due = true;
        }
    }

    fn on_write_done(&mut self, ok: bool) {
        match self {
            Leadership::Leader(d) => {
                d.write_in_flight = false;
                d.plan_due = true;
            }
            Leadership::Candidate {
                claim_in_flight: true,
                state_seen,
            } => {
                *self = if ok {
                    Leadership::leader()
                } else {
                    Leadership::Candidate {
                        state_seen: *state_seen,
                        claim_in_flight: false,
                    }
                };
            }
            Leadership::Candidate { .. }
            | Leadership::Follower { .. }
            | Leadership::Disconnected => {}
        }
    }

    /// A leader free to write (no state write in flight).
    fn idle_leader(&mut self) -> Option<&mut LeaderDuty> {
        match self {
            Leadership::Leader(d) if !d.write_in_flight => Some(d),
            _ => None,
        }
    }

    /// When a leader's question to backups times out, if one is out.
    pub(crate) fn deadline(&self) -> Option<u64> {
        match self {
            Leadership::Leader(d) => d.probe.as_ref().map(|p| p.deadline).or(d.timeout_due),
            _ => None,
        }
    }

    /// What must hold: a claim is only in flight after a state was seen on this connection.
    pub(crate) fn check(&self) -> Result<(), String> {
        match self {
            Leadership::Candidate {
                state_seen: false,
                claim_in_flight: true,
            } => Err("a claim in flight before any state was seen".into()),
            _ => Ok(()),
        }
    }
}

impl Node {
    pub(crate) fn on_coordinator(&mut self, now: u64, event: CoordEvent, out: &mut Vec<Output>) {
        match event {
            CoordEvent::Connected => {
                self.lead.on_connected();
                if !self.repl.expired_since_state {
                    self.on_coordinator_link(true);
                }
            }
            CoordEvent::Disconnected => {
                self.lead.on_disconnected();
                self.on_coordinator_link(false);
            }
            CoordEvent::Expired => {
                self.lead.on_disconnected();
                // The state may have moved on without us: no lone reads until we see it.
                self.repl.expired_since_state = true;
                self.on_coordinator_link(false);
            }
            CoordEvent::Elected => self.lead.on_elected(),
            CoordEvent::Members(members) => {
                self.view.members = members;
                self.lead.on_members();
            }
            CoordEvent::State { state, stamp } => {
                if let (Some(s), Some(new)) = (&self.view.state, &state) {
                    if new.version < s.version {
                        // A late event about an older state: ignore it.
                        return;
                    }
                }
                let names_me = state.as_ref().is_none_or(|s| s.leader == self.cfg.node_id);
                self.lead.on_state(names_me);
                self.view.state = state;
                self.view.stamp = stamp;
                if std::mem::take(&mut self.repl.expired_since_state) {
                    self.repl.coordinator_ok = true;
                }
                self.on_map_change(now, out);
                self.on_replica_map(out);
                self.publish_routes();
                self.retry_parked(now, true, out);
            }
            CoordEvent::WriteDone { ok, message: _ } => self.lead.on_write_done(ok),
        }
    }

    /// The leader's duties, after every input: write nodes asked to leave, then plan moves
    /// when something changed; a candidate claims the next epoch (creating the partition map
    /// if the cluster is new). Every write is conditional on the stamp last seen.
    pub(crate) fn lead(&mut self, now: u64, out: &mut Vec<Output>) {
        let stamp = self.view.stamp;
        let Some(state) = &self.view.state else {
            return self.claim(out);
        };
        let Some(duty) = self.lead.idle_leader() else {
            return self.claim(out);
        };
        // Reports are kept until the partition's epoch moves past the one they name (a write
        // of them may be refused, and the primary repeats a report only a second later).
        duty.lagging.retain(|(p, e, _)| state.part_epoch(*p) == *e);
        duty.ready.retain(|(p, e, _)| state.part_epoch(*p) == *e);
        // Gone holders of copies keep their place for `replica_timeout_ms`.
        let holders: BTreeSet<&String> = state
            .owners
            .iter()
            .chain(
                state
                    .replicas
                    .iter()
                    .flat_map(|r| r.backups.iter().chain(&r.learners)),
            )
            .collect();
        let members = &self.view.members;
        duty.gone_since
            .retain(|n, _| holders.contains(n) && !members.iter().any(|m| m.id == *n));
        for n in holders {
            if !state.replicas.is_empty() && !members.iter().any(|m| m.id == *n) {
                duty.gone_since.entry(n.clone()).or_insert(now);
            }
        }
        let timeout = self.cfg.replica_timeout_ms;
        let reserved: Vec<String> = duty
            .gone_since
            .iter()
            .filter(|(_, since)| now < *since + timeout)
            .map(|(n, _)| n.clone())
            .collect();
        let due = duty
            .gone_since
            .values()
            .map(|since| since + timeout)
            .filter(|at| *at > now)
            .min();
        if duty.timeout_due.is_some_and(|at| now >= at) {
            duty.plan_due = true; // someone's place ran out
        }
        duty.timeout_due = due;
        // A request is done once the state shows it; until then it stays, so a failed write
        // is retried. Written once per state seen: the outcome shows in the next `State`.
        duty.to_leave.retain(|n| !state.leaving.contains(n));
        let next = if !duty.to_leave.is_empty() && duty.leave_written_at != Some(stamp) {
            let mut next = state.bumped();
            next.leaving.extend(duty.to_leave.iter().cloned());
            duty.leave_written_at = Some(stamp);
            Some(next)
        } else if duty
            .probe
            .as_ref()
            .is_some_and(|p| p.asked.is_empty() || now >= p.deadline)
        {
            // Every backup asked has answered (or the time is up): promote.
            let probe = duty.probe.take().unwrap_or_default();
            let lagging: Vec<_> = duty.lagging.iter().cloned().collect();
            let ready: Vec<_> = duty.ready.iter().cloned().collect();
            let rf = self.cfg.replication_factor;
            let members = &self.view.members;
            state.reconfigure_members(members, &reserved, &probe.positions, &lagging, &ready, rf)
        } else if duty.probe.is_some() {
            None
        } else if std::mem::take(&mut duty.plan_due) {
            let live: Vec<String> = self.view.members.iter().map(|m| m.id.clone()).collect();
            if state.replicas.is_empty() {
                // Rebalance: start or abort moves as membership requires.
                state.plan(&live)
            } else {
                let orphaned = state.orphaned(&state.holding(&self.view.members));
                if orphaned.is_empty() {
                    let lagging: Vec<_> = duty.lagging.iter().cloned().collect();
                    let ready: Vec<_> = duty.ready.iter().cloned().collect();
                    let rf = self.cfg.replication_factor;
                    let members = &self.view.members;
                    let none = BTreeMap::new();
                    state.reconfigure_members(members, &reserved, &none, &lagging, &ready, rf)
                } else {
                    // Ask the live backups of each where their logs end.
                    let id = self.fwd.next_id;
                    self.fwd.next_id += 1;
                    let mut per_node: BTreeMap<String, Vec<u16>> = BTreeMap::new();
                    for (p, cands) in orphaned {
                        for c in cands {
                            per_node.entry(c).or_default().push(p);
                        }
                    }
                    duty.probe = Some(Probe {
                        id,
                        asked: per_node.keys().cloned().collect(),
                        positions: BTreeMap::new(),
                        deadline: now + PROBE_MS,
                    });
                    let me = self.cfg.node_id.clone();
                    for (to, partitions) in per_node {
                        if to == me {
                            let items = self.positions_of(&partitions);
                            self.on_positions(&me, id, items);
                        } else {
                            out.push(Output::Send {
                                to,
                                message: PeerMessage::PositionQuery { id, partitions },
                            });
                        }
                    }
                    return;
                }
            }
        } else {
            None
        };
        if let Some(next) = next {
            duty.write_in_flight = true;
            out.push(Output::Coordinator(CoordCommand::WriteState {
                state: next,
                expected: stamp,
            }));
        }
    }

    /// A candidate claims the next epoch, once it has seen the state (and, for a new cluster,
    /// once `initial_members` have joined; each `Members` event retries).
    fn claim(&mut self, out: &mut Vec<Output>) {
        let Leadership::Candidate {
            state_seen: true,
            claim_in_flight,
        } = &mut self.lead
        else {
            return;
        };
        if *claim_in_flight {
            return;
        }
        let me = &self.cfg.node_id;
        let mut state = match &self.view.state {
            None if self.view.members.len() < self.cfg.initial_members => return,
            None => ClusterState::initial(
                me,
                &self.view.members,
                self.cfg.partitions,
                self.cfg.replication_factor,
            ),
            Some(s) => {
                let mut next = s.next_epoch(me);
                if crate::bugs::on(crate::bugs::Bug::NoEpochBump) {
                    next.epoch = s.epoch;
                }
                next
            }
        };
        // What the primaries commit with from now on (see `ClusterState::min_insync`).
        state.min_insync = self.cfg.min_insync_replicas;
        *claim_in_flight = true;
        out.push(Output::Coordinator(CoordCommand::WriteState {
            state,
            expected: self.view.stamp,
        }));
    }

    pub(crate) fn on_admin(&mut self, id: u64, command: AdminCommand, out: &mut Vec<Output>) {
        match command {
            AdminCommand::Decommission { node } => {
                let response = match &self.view.state {
                    None => err(ErrorKind::NotReady, "the cluster has no leader yet"),
                    Some(_) if !self.is_member(&node) => err(
                        ErrorKind::BadRequest,
                        format!("{node} is not a live member"),
                    ),
                    Some(s) => {
                        let leader = s.leader.clone();
                        if self.lead.is_leader() {
                            self.decommission(node);
                        } else {
                            out.push(Output::Send {
                                to: leader,
                                message: PeerMessage::Decommission { node },
                            });
                        }
                        Response::Accepted
                    }
                };
                out.push(Output::Reply { id, response });
            }
        }
    }

    /// The leader marks `node` as leaving; the plan then moves its partitions away. Recorded
    /// now; `lead` (after every input) writes it when no other state write is in flight.
    pub(crate) fn decommission(&mut self, node: String) {
        if let Leadership::Leader(d) = &mut self.lead {
            d.to_leave.insert(node);
        }
    }

    /// A backup's answer to the leader's question: where its logs end.
    pub(crate) fn on_positions(&mut self, from: &str, id: u64, items: Vec<(u16, u64, u64, u64)>) {
        let Leadership::Leader(d) = &mut self.lead else {
            return;
        };
        let Some(probe) = d.probe.as_mut().filter(|p| p.id == id) else {
            return;
        };
        probe.asked.remove(from);
        for (p, _epoch, lsn, lsn_epoch) in items {
            probe
                .positions
                .insert((p, from.to_string()), (lsn_epoch, lsn));
        }
    }

    /// A primary's report to the leader: a backup lagging, or a learner ready.
    pub(crate) fn on_replica_report(&mut self, lagging: bool, p: u16, epoch: u64, node: String) {
        if let Leadership::Leader(d) = &mut self.lead {
            let set = if lagging {
                &mut d.lagging
            } else {
                &mut d.ready
            };
            if set.insert((p, epoch, node)) {
                d.plan_due = true;
            }
        }
    }

    /// The leader flips partition `p` to `from` once its copy is durable there.
    pub(crate) fn on_move_ready(&mut self, from: &str, p: u16, out: &mut Vec<Output>) {
        let Some(duty) = self.lead.idle_leader() else {
            return; // the new owner repeats itself
        };
        let Some(s) = &self.view.state else { return };
        if s.moving.get(&p).map(String::as_str) != Some(from) {
            return;
        }
        let mut next = s.bumped();
        next.moving.remove(&p);
        next.owners[usize::from(p)] = from.to_string();
        duty.write_in_flight = true;
        out.push(Output::Coordinator(CoordCommand::WriteState {
            state: next,
            expected: self.view.stamp,
        }));
    }
}
