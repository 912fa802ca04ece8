//! The node: CoreCache's request logic as a state machine with one door.
//!
//! [`Node::handle`] takes an [`Input`] and pushes [`Output`]s; [`Node::next_deadline`] says when
//! the driver must call again with [`Input::Timeout`] if nothing else arrives. Time is an input
//! (`now`, wall-clock milliseconds read by the driver); the node reads no clock, draws no random
//! numbers and never waits: work it cannot do on its event loop (an fsync, a flush) leaves as an
//! output, and its completion comes back as an input.
//!
//! # Where things live
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the door: inputs, outputs, dispatch, the invariants checked after every input |
//! | `gate` | the write gate: replies held until the writes they saw are durable; persists |
//! | `exec` | running a request this node owns: conditions, versions, the engine write |
//! | `reader` | reads, also outside the door (the `Reader` a driver runs on any thread) |
//! | `routing` | who owns a key, forwarding to the owner, `NotOwner` retries, parked requests |
//! | `scan` | scans fanned out over owners and merged by key |
//! | `replica` | a replicated partition's log: primary to backups, commit, dirty keys |
//! | `leader` | leadership as one state (follower, candidate, leader) and the leader's duties |
//! | `timers` | `next_deadline` and the time-driven chores run after every input |
//! | `handoff` | moving a partition: the old owner's side, the new owner's side, the clean-up |
//!
//! The vocabulary (requests, responses, error kinds, the value envelope, the peer protocol) is
//! in [`crate::proto`]; the cluster's shared state and coordinator events in [`crate::cluster`].

mod exec;
mod gate;
mod handoff;
mod leader;
mod reader;
mod replica;
mod routing;
mod scan;
mod timers;

#[cfg(test)]
mod harness;
#[cfg(test)]
mod replica_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod transcript;

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::cluster::{ClusterState, CoordCommand, CoordEvent, Member, PartReplicas};
use crate::engine::{Background, Db, Error, SyncMode};
use crate::proto::peer::PeerMessage;
use crate::proto::{err, AdminCommand, ErrorKind, Request, Response};

pub use leader::Leadership;
pub use reader::{Reader, Routes};

use exec::VersionClock;
use gate::Gate;
use handoff::Handoffs;
use replica::{PrimaryWrite, Replication};
use routing::Forwarding;

/// Limits and identity.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: String,
    pub partitions: u16,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_batch_ops: usize,
    pub max_scan_limit: usize,
    /// A new cluster's first leader waits for this many members before dealing out the
    /// partitions, so a cluster started with several nodes starts balanced.
    pub initial_members: usize,
    /// Copies of every partition a new cluster's first leader places (primary included).
    pub replication_factor: usize,
    /// With fewer copies in sync than this (primary included), a partition refuses writes.
    pub min_insync_replicas: usize,
    /// A replica gone this long is replaced by a copy on another node.
    pub replica_timeout_ms: u64,
    /// The first id this node gives its requests to other nodes (forwards, scans, copy steps).
    /// Drivers start it from the clock (milliseconds shifted left 16 bits), so that a reply
    /// a peer still held for this node's previous run cannot match a request of this one.
    pub first_request_id: u64,
    /// This node's disk identity ([`disk_identity`]; 0: unknown, never checked). A node the
    /// state records with another disk serves none of the copies it lists it with.
    pub disk_id: u64,
    /// An earlier run of this node used this disk ([`disk_identity`] found its identity
    /// there). Entries that run sent as a primary but never made durable may sit in its
    /// backups' logs under the same numbers: it leads none of the partitions it finds itself
    /// primary of until the leader has raised their epochs (see `Replication::fences`).
    pub restarted: bool,
    /// Log entries a replicated partition keeps behind its newest (a replica further behind
    /// is sent a copy of the partition). [`crate::proto::replog::LOG_RETAIN`]; the simulation
    /// sets fewer so that copies happen.
    pub log_retain: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: "node-1".into(),
            partitions: 64,
            max_key_bytes: 8 << 10,
            max_value_bytes: 1 << 20,
            max_batch_ops: 10_000,
            max_scan_limit: 10_000,
            initial_members: 1,
            replication_factor: 1,
            min_insync_replicas: 1,
            replica_timeout_ms: 60_000,
            log_retain: crate::proto::replog::LOG_RETAIN,
            disk_id: 0,
            restarted: false,
            first_request_id: 0,
        }
    }
}

#[derive(Debug)]
pub enum Input {
    Client {
        id: u64,
        request: Request,
    },
    /// A message from another node.
    Peer {
        from: String,
        message: PeerMessage,
    },
    /// The connection to `peer` failed: requests forwarded to it have an unknown outcome.
    PeerDown {
        peer: String,
    },
    /// Something the coordinator observed.
    Coordinator(CoordEvent),
    /// An operator's command (answered with `Reply { id }`).
    Admin {
        id: u64,
        command: AdminCommand,
    },
    /// A `persist` finished: everything up to `upto` is durable and visible.
    Persisted {
        upto: u64,
    },
    /// A `persist` failed: writes waiting for it cannot be acknowledged.
    PersistFailed {
        message: String,
    },
    /// `next_deadline` passed (or the driver merely woke up; a timeout is never harmful).
    Timeout,
    /// The `Background` work finished (`Err` carries the engine's message; the engine has
    /// already recorded the failure and will retry).
    BackgroundDone {
        result: Result<usize, String>,
    },
}

/// What the node asks of its driver. Outputs pushed by one `handle` call are in the order the
/// driver must act on them.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Answer client request `id`. A reply to a write leaves only once the write (and every
    /// write it was decided on) is as durable as `sync` says: the gate holds it until then.
    Reply { id: u64, response: Response },
    /// Send `message` to node `to` over the peer transport. A `Reply` to a forwarded write
    /// obeys the same durability rule as a client `Reply`.
    Send { to: String, message: PeerMessage },
    /// Ask the coordinator to do something; its outcome comes back as an event.
    Coordinator(CoordCommand),
    /// Run `Db::persist` off the event loop (at most two at once) and report `Persisted` or
    /// `PersistFailed`. Replies waiting for it are released by `Persisted`, never before.
    Persist,
    /// Run `Db::do_background_work` off the event loop (one at a time) and report
    /// `BackgroundDone`. Only emitted for an engine opened with `Background::Manual`.
    Background,
}

/// The node's view of the cluster. A node without a coordinator is a cluster of one: leader of
/// epoch 1, owner of every partition. The cluster stage feeds coordinator events that change it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterView {
    pub role: Role,
    pub leader: Option<String>,
    pub epoch: u64,
    pub members: Vec<String>,
    /// Owner of each partition, indexed by partition number.
    pub owners: Vec<String>,
    /// Version of the partition map.
    pub map_version: u64,
    /// Partitions being handed off, and to whom.
    pub moving: BTreeMap<u16, String>,
    /// Nodes being decommissioned.
    pub leaving: Vec<String>,
    /// Each partition's configuration besides its primary (empty without replicas).
    pub replicas: Vec<PartReplicas>,
    /// The replication factor this node places new clusters with and counts
    /// under-replicated partitions against.
    pub replication_factor: usize,
    /// Partitions with fewer copies in sync than `replication_factor`.
    pub under_replicated: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
        }
    }
}

/// Counters a driver exports as metrics.
#[derive(Clone, Debug, Default)]
pub struct NodeStats {
    pub waiting_for_persist: usize,
    pub persists: u64,
    /// Background work units finished (only when the node drives them).
    pub backgrounds: u64,
    /// Requests forwarded to other nodes and not answered yet.
    pub forwards_in_flight: usize,
    pub replication: ReplicationStats,
}

/// Replication as this node sees it (for `/metrics`).
#[derive(Clone, Debug, Default)]
pub struct ReplicationStats {
    /// Partitions of the current state with fewer copies in sync than the factor.
    pub under_replicated: usize,
    /// Per partition this node leads: entries its slowest replica waited for is behind.
    pub lag: Vec<(u16, u64)>,
    /// Times this node took over a partition as its primary.
    pub promotions: u64,
    /// Copies of a partition received whole, and the keys they brought (as learner).
    pub copies_received: u64,
    pub copy_keys_received: u64,
    /// Pages of copies sent (as primary).
    pub copy_pages_sent: u64,
    /// Times entries a new primary lacked were undone here.
    pub truncations: u64,
}

/// What the coordinator last told this node: the shared state (with the stamp its next
/// conditional write must name) and the live members.
struct CoordView {
    state: Option<ClusterState>,
    stamp: i64,
    members: Vec<Member>,
}

pub struct Node {
    db: Arc<Db>,
    cfg: NodeConfig,
    reader: Reader,
    /// Replies held until the writes they saw are durable; persists in flight.
    gate: Gate,
    /// The node drives flushes and compactions (the engine has no threads of its own).
    drive_background: bool,
    background_running: bool,
    backgrounds: u64,
    versions: VersionClock,
    view: CoordView,
    lead: Leadership,
    fwd: Forwarding,
    ho: Handoffs,
    repl: Replication,
    /// Why the replication positions could not be read at start (then no replicated
    /// partition takes writes here).
    repl_broken: Option<String>,
    /// The request being run writes as primary of this replicated partition.
    writing: Option<PrimaryWrite>,
    /// The log entry its write became.
    written_lsn: Option<u64>,
}

/// An engine error as the node reports it.
fn engine_err(e: Error) -> Response {
    match e {
        Error::WriteStall(m) => err(ErrorKind::Stalled, m),
        Error::Background(m) => err(ErrorKind::Unavailable, m),
        Error::Closed => err(ErrorKind::Unavailable, "the database is closing"),
        Error::InvalidArgument(m) => err(ErrorKind::BadRequest, m),
        other => err(ErrorKind::Internal, other.to_string()),
    }
}

/// The identity of the disk under `db`: made from `fresh` (which should differ every time a
/// node starts on a new disk; it is masked to 53 bits, exact in JSON) and stored durably the
/// first time, read back ever after. A node back under its old id on an empty disk has a new
/// one, which is how the leader knows it lost its copies. The flag says whether the identity
/// was already there (an earlier run used this disk: [`NodeConfig::restarted`]).
pub fn disk_identity(db: &Db, fresh: u64) -> Result<(u64, bool), String> {
    let key = crate::proto::replog::disk_key();
    match db.get(&key) {
        Ok(Some(raw)) => match <[u8; 8]>::try_from(raw.as_slice()) {
            Ok(b) => Ok((u64::from_le_bytes(b), true)),
            Err(_) => Err(format!(
                "the disk identity record is {} bytes long, not 8: the data directory is damaged",
                raw.len()
            )),
        },
        Ok(None) => {
            let id = (fresh & ((1 << 53) - 1)).max(1);
            db.put(key, id.to_le_bytes().to_vec())
                .and_then(|_| db.persist())
                .map_err(|e| format!("cannot record the disk identity: {e}"))?;
            Ok((id, false))
        }
        Err(e) => Err(format!("cannot read the disk identity: {e}")),
    }
}

impl Node {
    /// A node that is a cluster of one from the start: leader of epoch 1, owner of every
    /// partition, with no coordinator (unit tests, tools).
    pub fn new(db: Arc<Db>, cfg: NodeConfig) -> Node {
        let me = cfg.node_id.clone();
        let mut n = Node::new_clustered(db, cfg);
        let member = Member {
            id: me.clone(),
            http: String::new(),
            peer: String::new(),
            disk: 0,
        };
        n.lead = Leadership::leader();
        n.view.state = Some(ClusterState::initial(
            &me,
            std::slice::from_ref(&member),
            n.cfg.partitions,
            1,
        ));
        n.view.members = vec![member];
        n.publish_routes();
        n
    }

    /// A node that learns its cluster from coordinator events; until a partition map arrives
    /// it answers `NotReady`.
    pub fn new_clustered(db: Arc<Db>, cfg: NodeConfig) -> Node {
        let first_request_id = cfg.first_request_id;
        let durable = db.options().sync == SyncMode::Always;
        let drive_background = db.options().background == Background::Manual;
        let persist_every_ms = match db.options().sync {
            SyncMode::Interval { ms } if drive_background => Some(ms.max(1)),
            _ => None,
        };
        let dirty = Arc::new(replica::Dirty::default());
        let leases = Arc::new(replica::Leases::new(cfg.partitions));
        let (repl, repl_broken) = match Replication::load(&db, dirty.clone(), leases.clone()) {
            Ok(r) => (r, None),
            Err(e) => (Replication::empty(dirty.clone(), leases.clone()), Some(e)),
        };
        Node {
            reader: Reader::new(
                db.clone(),
                cfg.clone(),
                Arc::new(ArcSwap::from_pointee(Routes::default())),
                dirty,
                leases,
            ),
            db,
            cfg,
            gate: Gate::new(durable, persist_every_ms),
            drive_background,
            background_running: false,
            backgrounds: 0,
            versions: VersionClock::default(),
            view: CoordView {
                state: None,
                stamp: -1,
                members: Vec::new(),
            },
            lead: Leadership::Disconnected,
            fwd: Forwarding {
                next_id: first_request_id,
                ..Forwarding::default()
            },
            ho: Handoffs::default(),
            repl,
            repl_broken,
            writing: None,
            written_lsn: None,
        }
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// The read side, for a driver that serves reads outside the node's door.
    pub fn reader(&self) -> Reader {
        self.reader.clone()
    }

    /// The partition a user key belongs to.
    pub fn partition_of(&self, key: &[u8]) -> u16 {
        self.reader.partition_of(key)
    }

    /// The node's view of the cluster, for status pages.
    pub fn cluster(&self) -> ClusterView {
        let st = self.view.state.as_ref();
        ClusterView {
            role: if self.lead.is_leader() {
                Role::Leader
            } else {
                Role::Follower
            },
            leader: st.map(|s| s.leader.clone()),
            epoch: st.map_or(0, |s| s.epoch),
            members: self.view.members.iter().map(|m| m.id.clone()).collect(),
            owners: st.map_or_else(Vec::new, |s| s.owners.clone()),
            map_version: st.map_or(0, |s| s.version),
            moving: st.map_or_else(BTreeMap::new, |s| s.moving.clone()),
            leaving: st.map_or_else(Vec::new, |s| s.leaving.clone()),
            replicas: st.map_or_else(Vec::new, |s| s.replicas.clone()),
            replication_factor: self.cfg.replication_factor,
            under_replicated: st.map_or(0, |s| s.under_replicated(self.cfg.replication_factor)),
        }
    }

    /// The live members as the coordinator last reported them.
    pub fn members(&self) -> &[Member] {
        &self.view.members
    }

    /// Whether the node can route requests (it knows a partition map that fits its
    /// partition count).
    pub fn ready(&self) -> bool {
        self.routable().is_ok()
    }

    /// Leadership as the node holds it now (for tests and status).
    pub fn leadership(&self) -> &Leadership {
        &self.lead
    }

    pub fn stats(&self) -> NodeStats {
        NodeStats {
            waiting_for_persist: self.gate.waiting(),
            persists: self.gate.persists(),
            backgrounds: self.backgrounds,
            forwards_in_flight: self.fwd.forwards.len(),
            replication: self.replication_stats(),
        }
    }

    /// The one door. `now` is the driver's wall clock in milliseconds since the Unix epoch.
    pub fn handle(&mut self, now: u64, input: Input, out: &mut Vec<Output>) {
        self.repl.now = now;
        self.repl.started_at.get_or_insert(now);
        match input {
            Input::Client { id, request } => self.route(now, id, request, None, out),
            Input::Peer { from, message } => self.on_peer(now, from, message, out),
            Input::PeerDown { peer } => {
                self.replica_down(&peer);
                self.on_peer_down(&peer, out)
            }
            Input::Coordinator(event) => self.on_coordinator(now, event, out),
            Input::Admin { id, command } => self.on_admin(id, command, out),
            Input::Timeout => {}
            Input::BackgroundDone { result: _ } => {
                self.background_running = false;
                self.backgrounds += 1;
            }
            Input::Persisted { upto } => self.gate.on_persisted(upto, out),
            Input::PersistFailed { message } => self.gate.on_persist_failed(&message, out),
        }
        self.tick(now, out);
        debug_assert_eq!(self.check_invariants(), Ok(()), "node {}", self.cfg.node_id);
    }

    /// A message from a peer, to the handler of its concern.
    fn on_peer(&mut self, now: u64, from: String, message: PeerMessage, out: &mut Vec<Output>) {
        match message {
            // The transport checks the version and the cluster before any other frame.
            PeerMessage::Hello { .. } => {}
            PeerMessage::Forward {
                id,
                map_version: _,
                request,
            } => self.on_forward(now, from, id, request, out),
            PeerMessage::Reply { id, response } => self.on_forward_reply(id, response, out),
            PeerMessage::NotOwner { id, map_version: _ } => self.on_not_owner(now, id, out),
            PeerMessage::ScanParts {
                id,
                map_version: _,
                partitions,
                start,
                end,
                after,
                limit,
            } => {
                let limit = usize::try_from(limit).unwrap_or(usize::MAX);
                self.on_scan_parts(from, id, &partitions, start, end, after, limit, out)
            }
            PeerMessage::FetchPart {
                id,
                partition,
                after,
                limit,
            } => self.on_fetch_part(from, id, partition, after, limit, out),
            PeerMessage::FreezePart { id, partition } => {
                self.on_freeze_part(now, from, id, partition, out)
            }
            PeerMessage::PartPage {
                id,
                partition,
                items,
                done,
            } => self.on_part_page(now, &from, id, partition, items, done, out),
            PeerMessage::PartTail {
                id,
                partition,
                items,
            } => self.on_part_tail(now, &from, id, partition, items, out),
            PeerMessage::PartRefused {
                id,
                partition,
                reason: _,
            } => self.on_part_refused(now, id, partition),
            PeerMessage::MoveReady { partition } => self.on_move_ready(&from, partition, out),
            PeerMessage::Decommission { node } => self.decommission(node),
            PeerMessage::Replicate {
                partition,
                epoch,
                commit,
                prev_lsn,
                prev_epoch,
                sent_at,
                entries,
            } => {
                let r = replica::Received {
                    partition,
                    epoch,
                    commit,
                    prev_lsn,
                    prev_epoch,
                    sent_at,
                };
                self.on_replicate(now, from, r, entries, out)
            }
            PeerMessage::ReplicaAck {
                partition,
                epoch,
                applied,
                gap,
                lease_from,
            } => {
                let ack = replica::Acked {
                    partition,
                    epoch,
                    applied,
                    gap,
                    lease_from,
                };
                self.on_replica_ack(now, from, ack, out)
            }
            PeerMessage::PositionQuery { id, partitions } => {
                let items = self.positions_of(&partitions);
                out.push(Output::Send {
                    to: from,
                    message: PeerMessage::Positions { id, items },
                });
            }
            PeerMessage::Positions { id, items } => self.on_positions(&from, id, items),
            PeerMessage::ReplicaLagging {
                partition,
                epoch,
                node,
            } => self.on_replica_report(true, partition, epoch, node),
            PeerMessage::LearnerReady {
                partition,
                epoch,
                node,
            } => self.on_replica_report(false, partition, epoch, node),
            PeerMessage::CopyPage {
                partition,
                epoch,
                base,
                base_epoch,
                after,
                items,
                done,
                sent_at,
            } => {
                let page = replica::Page {
                    partition,
                    epoch,
                    base,
                    base_epoch,
                    after,
                    items,
                    done,
                    sent_at,
                };
                self.on_copy_page(now, from, page, out)
            }
            PeerMessage::CopyAck {
                partition,
                epoch,
                base,
                last,
            } => {
                let ack = replica::CopyAcked {
                    partition,
                    epoch,
                    base,
                    last,
                };
                self.on_copy_ack(now, from, ack, out)
            }
        }
    }

    /// What must hold between any two inputs. Checked after every input in debug builds (the
    /// unit tests and the simulation); a violation names the broken rule.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.gate.check()?;
        self.lead.check()?;
        if let Some(st) = &self.view.state {
            self.ho.check(&self.cfg.node_id, st)?;
        }
        Ok(())
    }
}
