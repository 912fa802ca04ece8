//! The node: CoreCache's request logic as a state machine with one door.
//!
//! [`Node::handle`] takes an [`Input`] (a client request, or the completion of a `persist`) and
//! pushes [`Output`]s (replies, and requests to persist the log). The node never waits: a
//! durable write is applied to the engine at once (`Db::write_deferred`), and its reply is held
//! until the driver, having run `Db::persist` off its event loop, reports `Persisted` with a
//! sequence number at least as large. Writes that arrive while a persist runs ride on the next
//! one (group commit at the node level). Reads see only persisted writes.
//!
//! Time is an input: every call to [`Node::handle`] carries `now` (milliseconds since the Unix
//! epoch, read by the driver; it stamps `Last-Modified` and creation times), and
//! [`Node::next_deadline`] says when the driver must call again with [`Input::Timeout`] even if
//! nothing else happens. The node reads no clock and draws no random numbers.
//!
//! Work the node cannot do on its event loop leaves as outputs: [`Output::Persist`] (an fsync)
//! and, when the engine's background work is driven by its owner (`Background::Manual`, as in
//! the simulation), [`Output::Background`] (flushes and compactions). With `SyncMode::Interval`
//! and a manually driven engine, the node's timer asks for the periodic persist; an engine with
//! its own threads syncs by itself.
//!
//! # Keys and values in the engine
//! A user key `k` is stored as `partition(k): u16 BE ‖ k`, where `partition(k) = hash64(k) %
//! partitions`, so each hash partition is one contiguous key range (what the cluster stage moves
//! between nodes). A stored value is `1: u8 ‖ created_ms: u64 LE ‖ modified_ms: u64 LE ‖ value`.
//! A key's version is the engine sequence number of the write that set it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::cluster::{ClusterState, CoordCommand, CoordEvent, Member};
use crate::peer::PeerMessage;

use crate::db::{prefix_end, Db};
use crate::error::Error;
use crate::format::hash64;
use crate::options::{Background, SyncMode};
use crate::WriteBatch;

/// The value envelope: 1 = created and modified times; 2 = those and the key's version.
const ENVELOPE_VERSION: u8 = 2;
const ENVELOPE_V1: u8 = 1;
/// Persists (fsyncs) in flight at once.
const MAX_PERSISTS: usize = 2;
/// How long a forwarded request may wait for its owner's answer.
const FORWARD_TIMEOUT_MS: u64 = 10_000;
/// How long a request waits for a newer partition map after `NotOwner`, and how often it retries.
const PARK_TIMEOUT_MS: u64 = 5_000;
const PARK_RETRY_MS: u64 = 50;
/// Hand-off: keys per copied page, how long a step may wait for its answer, and how often the
/// new owner repeats `MoveReady` until the map flips.
const PART_PAGE: u32 = 2_000;
const MOVE_STEP_TIMEOUT_MS: u64 = 10_000;
const MOVE_READY_EVERY_MS: u64 = 1_000;
/// Keys deleted per step when dropping a partition this node no longer owns.
const CLEANUP_CHUNK: usize = 2_000;
const ENVELOPE_V1_LEN: usize = 17;
const ENVELOPE_LEN: usize = 25;
/// Bits of a version below the millisecond clock (writes per millisecond before the version
/// clock runs ahead of the wall clock). Versions stay below 2^53, exact in JSON everywhere.
const VERSION_COUNTER_BITS: u32 = 10;

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
        }
    }
}

/// A write's precondition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    None,
    /// The key's current version must be this one.
    IfMatch(u64),
    /// The key must not exist.
    IfAbsent,
    /// The key must exist (`If-Match: *`).
    IfExists,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    /// Put only if the key does not exist; otherwise the whole batch fails with
    /// `PreconditionFailed` and writes nothing (Redis's MSETNX).
    PutIfAbsent(Vec<u8>, Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Get {
        key: Vec<u8>,
    },
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        cond: Condition,
    },
    Delete {
        key: Vec<u8>,
        cond: Condition,
    },
    /// Keys in `[start, end)` (after `after`, when continuing), at most `limit`.
    Scan {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        after: Option<Vec<u8>>,
        limit: usize,
    },
    Batch {
        ops: Vec<BatchOp>,
    },
    /// Adds `by` to the key's value read as a decimal integer (absent: 0) in one step on the
    /// owner, and answers `Value` with the new number (Redis's INCRBY).
    Incr {
        key: Vec<u8>,
        by: i64,
    },
}

impl Request {
    /// A prefix scan as a range scan.
    pub fn scan_prefix(prefix: Vec<u8>, after: Option<Vec<u8>>, limit: usize) -> Request {
        Request::Scan {
            end: prefix_end(&prefix),
            start: prefix,
            after,
            limit,
        }
    }
}

/// Why a request failed; the HTTP layer maps each to a status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed input (400).
    BadRequest,
    /// Over a size limit (413).
    TooLarge,
    /// Temporarily unable (503 + Retry-After): stalled writes, a failed log.
    Unavailable,
    /// A bug or a damaged disk (500).
    Internal,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub version: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Value {
        value: Vec<u8>,
        version: u64,
        created_ms: u64,
        modified_ms: u64,
    },
    NotFound,
    Written {
        version: u64,
    },
    Deleted {
        version: u64,
    },
    PreconditionFailed {
        current: Option<u64>,
    },
    /// An operator's command was taken; it completes in the background.
    Accepted,
    Page {
        items: Vec<Item>,
        /// The last key returned, when more may follow.
        next_after: Option<Vec<u8>>,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

/// Operator commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminCommand {
    /// Move every partition off `node` (it may then be stopped).
    Decommission { node: String },
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
    Reply {
        id: u64,
        response: Response,
    },
    /// Send `message` to node `to` over the peer transport.
    Send {
        to: String,
        message: PeerMessage,
    },
    /// Ask the coordinator to do something; its outcome comes back as an event.
    Coordinator(CoordCommand),
    /// Run `Db::persist` off the event loop (at most `MAX_PERSISTS` at once) and report
    /// `Persisted` or `PersistFailed`.
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
}

/// The read side of the node: stateless over the engine, so a driver may run reads on any
/// thread, outside the node's single door. Reads see only persisted writes.
#[derive(Clone)]
pub struct Reader {
    db: Arc<Db>,
    cfg: NodeConfig,
    routes: Arc<ArcSwap<Routes>>,
}

/// Which partitions this node serves now, published by the node whenever the partition map
/// changes, so that reads answered outside the node's door route exactly as the node would.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    /// By partition: served here. `None` until a partition map is known.
    owned: Option<Vec<bool>>,
}

impl Routes {
    fn serves(&self, p: u16) -> bool {
        self.owned
            .as_ref()
            .is_some_and(|o| o.get(usize::from(p)).copied().unwrap_or(false))
    }

    fn serves_all(&self) -> bool {
        self.owned.as_ref().is_some_and(|o| o.iter().all(|b| *b))
    }
}

impl Reader {
    /// Answers a `Get` or `Scan` here when this node serves every partition it touches;
    /// otherwise hands the request back, to go through the node (which forwards it).
    pub fn try_read(&self, request: Request) -> Result<Response, Request> {
        let routes = self.routes.load_full();
        let local = match &request {
            Request::Get { key } => routes.serves(self.partition_of(key)),
            Request::Scan { .. } => routes.serves_all(),
            _ => false,
        };
        if !local {
            return Err(request);
        }
        // A point read borrows the key (the hot path allocates nothing for the fallback).
        let response = match &request {
            Request::Get { key } => self.get(key).unwrap_or_else(|e| e),
            _ => self.read(request.clone()),
        };
        // The node may have handed the partition over while we read, and begun deleting its
        // copy: such a read could miss keys that live on at the new owner. The node publishes
        // new routes before its first cleanup delete can become visible, so unchanged routes
        // after the read mean the read saw no cleanup. Otherwise the node routes the request.
        if Arc::ptr_eq(&routes, &self.routes.load()) {
            Ok(response)
        } else {
            Err(request)
        }
    }

    /// Answers `Get` and `Scan`; any other request is refused (it must go through the node).
    pub fn read(&self, request: Request) -> Response {
        let r = match request {
            Request::Get { key } => self.get(&key),
            Request::Scan {
                start,
                end,
                after,
                limit,
            } => self.scan(start, end, after, limit),
            _ => Err(err(ErrorKind::Internal, "a write was sent to the reader")),
        };
        r.unwrap_or_else(|e| e)
    }

    /// The partition a user key belongs to.
    pub fn partition_of(&self, key: &[u8]) -> u16 {
        (hash64(key) % u64::from(self.cfg.partitions.max(1))) as u16
    }

    pub(crate) fn internal_key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(2 + key.len());
        k.extend_from_slice(&self.partition_of(key).to_be_bytes());
        k.extend_from_slice(key);
        k
    }

    pub(crate) fn check_key(&self, key: &[u8]) -> Result<(), Response> {
        if key.len() > self.cfg.max_key_bytes {
            return Err(err(
                ErrorKind::TooLarge,
                format!(
                    "key of {} bytes is over the {}-byte limit",
                    key.len(),
                    self.cfg.max_key_bytes
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn get(&self, key: &[u8]) -> Result<Response, Response> {
        self.check_key(key)?;
        match self.db.get_versioned(&self.internal_key(key)) {
            Ok(Some((seq, raw))) => {
                let s = decode_value(raw)?;
                Ok(Response::Value {
                    version: s.version(seq),
                    value: s.value,
                    created_ms: s.created_ms,
                    modified_ms: s.modified_ms,
                })
            }
            Ok(None) => Ok(Response::NotFound),
            Err(e) => Err(engine_err(e)),
        }
    }

    /// An ordered scan over user keys: one engine scan per partition (each a contiguous range),
    /// merged by user key, all from one snapshot.
    pub(crate) fn scan(
        &self,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Response, Response> {
        let all: Vec<u16> = (0..self.cfg.partitions).collect();
        self.scan_parts(start, end, after, limit, &all)
    }

    /// An ordered scan over the user keys of the partitions `parts` only.
    pub(crate) fn scan_parts(
        &self,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        after: Option<Vec<u8>>,
        limit: usize,
        parts: &[u16],
    ) -> Result<Response, Response> {
        let limit = limit.clamp(1, self.cfg.max_scan_limit);
        let snap = self.db.snapshot();
        let mut iters = Vec::with_capacity(parts.len());
        for &p in parts {
            let pre = p.to_be_bytes();
            let lo = match &after {
                Some(a) if *a >= start => {
                    let mut k = pre.to_vec();
                    k.extend_from_slice(a);
                    Bound::Excluded(k)
                }
                _ => {
                    let mut k = pre.to_vec();
                    k.extend_from_slice(&start);
                    Bound::Included(k)
                }
            };
            let hi = match &end {
                Some(e) => {
                    let mut k = pre.to_vec();
                    k.extend_from_slice(e);
                    Bound::Excluded(k)
                }
                None => match prefix_end(&pre) {
                    Some(k) => Bound::Excluded(k),
                    None => Bound::Unbounded,
                },
            };
            let it = snap
                .scan(
                    lo.as_ref().map(Vec::as_slice),
                    hi.as_ref().map(Vec::as_slice),
                )
                .map_err(engine_err)?;
            iters.push(VersionedScan(it));
        }
        let mut heads: Vec<Option<crate::db::Versioned>> = Vec::with_capacity(iters.len());
        for it in iters.iter_mut() {
            heads.push(it.next().transpose().map_err(engine_err)?);
        }
        let mut items = Vec::new();
        loop {
            // The smallest user key among the partitions' next items (keys differ across
            // partitions, so there are no ties).
            let best = heads
                .iter()
                .enumerate()
                .filter_map(|(i, h)| h.as_ref().map(|(k, _, _)| (i, &k[2..])))
                .min_by(|a, b| a.1.cmp(b.1))
                .map(|(i, _)| i);
            let Some(b) = best else { break };
            let Some((k, seq, raw)) = heads[b].take() else {
                break;
            };
            heads[b] = iters[b].next().transpose().map_err(engine_err)?;
            let s = decode_value(raw)?;
            items.push(Item {
                key: k[2..].to_vec(),
                version: s.version(seq),
                value: s.value,
            });
            if items.len() >= limit {
                let more = heads.iter().any(Option::is_some);
                let next_after = if more {
                    items.last().map(|i| i.key.clone())
                } else {
                    None
                };
                return Ok(Response::Page { items, next_after });
            }
        }
        Ok(Response::Page {
            items,
            next_after: None,
        })
    }
}

pub struct Node {
    db: Arc<Db>,
    cfg: NodeConfig,
    reader: Reader,
    /// Replies held until a persist covers their sequence number, in sequence order.
    waiting: VecDeque<(u64, Target, Response)>,
    /// Persists running now (at most `MAX_PERSISTS`).
    persists_running: usize,
    /// The newest sequence number a requested persist is sure to cover.
    persist_requested: u64,
    persists: u64,
    durable: bool,
    /// The node drives flushes and compactions (the engine has no threads of its own).
    drive_background: bool,
    background_running: bool,
    backgrounds: u64,
    /// With `SyncMode::Interval` and no engine threads: the sync period, and when the oldest
    /// write not yet covered by a persist was applied.
    persist_every_ms: Option<u64>,
    unpersisted_since: Option<u64>,
    /// Sequence number of the newest write this node applied.
    last_written: u64,
    /// The newest version this node gave a key (see `next_version`).
    version_clock: std::cell::Cell<u64>,
    /// Every write up to this sequence number is durable (under `SyncMode::Always`).
    persisted_upto: u64,
    cl: Cluster,
}

/// Where an answer goes: a client of this node, or a peer that forwarded the request.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Client(u64),
    Peer(String, u64),
    /// The node's own write (hand-off copies): nobody to answer, but durability to wait for.
    Internal,
}

/// The node's cluster state, fed by coordinator events.
struct Cluster {
    connected: bool,
    /// The coordinator says our candidacy is the lowest.
    elected: bool,
    /// We wrote the current epoch and have not lost the connection since.
    leading: bool,
    /// Elected but our epoch is not written yet.
    need_claim: bool,
    claim_in_flight: bool,
    /// A `State` event arrived since the connection came up.
    state_seen: bool,
    state: Option<ClusterState>,
    stamp: i64,
    members: Vec<Member>,
    next_fid: u64,
    forwards: BTreeMap<u64, Forwarded>,
    scans: BTreeMap<u64, ScanAgg>,
    /// Requests waiting for a newer partition map: (retry at, give up at, client, request).
    parked: Vec<(u64, u64, u64, Request)>,
    /// Hand-offs of partitions this node owns: keys written since the copy began.
    outgoing: BTreeMap<u16, Outgoing>,
    /// Hand-offs of partitions coming to this node.
    incoming: BTreeMap<u16, Incoming>,
    /// Partitions this node no longer owns whose local copy is still to be deleted.
    /// (With the last key deleted so far: deletes become visible only once persisted, so the
    /// next chunk starts after it rather than finding the same keys again.)
    cleanup: BTreeMap<u16, Option<Vec<u8>>>,
    /// The leader has a state write in flight (a claim, a plan step, a flip).
    write_in_flight: bool,
    /// By partition: owned by this node in the last map seen (`None` before the first).
    owned_before: Option<Vec<bool>>,
    /// The map or the members changed since the leader last planned.
    plan_due: bool,
    /// No partition map has been seen since this node started.
    first_map: bool,
    /// Nodes asked to leave that the state does not show leaving yet, and the stamp of the
    /// state the last write of them was made against.
    to_leave: BTreeSet<String>,
    leave_written_at: Option<i64>,
}

/// The old owner's side of a hand-off.
struct Outgoing {
    to: String,
    /// The newest write applied when tracking began. Writes up to it are not in `written`:
    /// pages must not be read until they are all visible (durable).
    since: u64,
    /// User keys written to the partition since the copy began.
    written: BTreeSet<Vec<u8>>,
    /// Frozen: writes to the partition wait; the tail goes to `to` (request `id`) once every
    /// write up to `upto` is durable (`sent` once it has).
    frozen: Option<Frozen>,
}

#[derive(Clone, Copy, Debug)]
struct Frozen {
    id: u64,
    upto: u64,
    sent: bool,
}

/// The new owner's side of a hand-off.
struct Incoming {
    from: String,
    /// The step in flight: its request id and when to give up on it.
    req: u64,
    deadline: u64,
    phase: Phase,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Copying pages (the last key received so far).
    Copying,
    /// Waiting for the tail.
    Freezing,
    /// The tail is applied at sequence number `upto`; waiting for it to be durable.
    Applying { upto: u64 },
    /// Durable here; `MoveReady` sent to the leader (again at `deadline`).
    Ready,
}

struct Forwarded {
    to: String,
    deadline: u64,
    /// A whole request for one client, or one part of a fanned-out scan.
    kind: FwdKind,
}

enum FwdKind {
    Single {
        client: u64,
        request: Request,
        give_up: u64,
    },
    ScanPart {
        scan: u64,
    },
}

/// A scan fanned out over several owners: their pages, merged when all are in.
struct ScanAgg {
    client: u64,
    limit: usize,
    pending: usize,
    items: Vec<Item>,
    more: bool,
    failed: Option<Response>,
}

fn err(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::Error {
        kind,
        message: message.into(),
    }
}

fn engine_err(e: Error) -> Response {
    match e {
        Error::WriteStall(m) => err(ErrorKind::Unavailable, m),
        Error::Background(m) => err(ErrorKind::Unavailable, m),
        Error::Closed => err(ErrorKind::Unavailable, "the database is closing"),
        Error::InvalidArgument(m) => err(ErrorKind::BadRequest, m),
        other => err(ErrorKind::Internal, other.to_string()),
    }
}

/// The user keys a request names (none for a scan).
fn request_keys(request: &Request) -> Vec<&[u8]> {
    match request {
        Request::Get { key }
        | Request::Put { key, .. }
        | Request::Delete { key, .. }
        | Request::Incr { key, .. } => vec![key.as_slice()],
        Request::Batch { ops } => ops
            .iter()
            .map(|op| match op {
                BatchOp::Put(k, _) | BatchOp::Delete(k) | BatchOp::PutIfAbsent(k, _) => {
                    k.as_slice()
                }
            })
            .collect(),
        Request::Scan { .. } => Vec::new(),
    }
}

/// The engine key range of partition `p`: `[p ‖ after (exclusive) or p, p + 1)`.
fn partition_range(p: u16, after: Option<&[u8]>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let pre = p.to_be_bytes();
    let lo = match after {
        Some(a) => {
            let mut k = pre.to_vec();
            k.extend_from_slice(a);
            Bound::Excluded(k)
        }
        None => Bound::Included(pre.to_vec()),
    };
    let hi = match prefix_end(&pre) {
        Some(k) => Bound::Excluded(k),
        None => Bound::Unbounded,
    };
    (lo, hi)
}

fn respond(target: Target, response: Response, out: &mut Vec<Output>) {
    match target {
        Target::Client(id) => out.push(Output::Reply { id, response }),
        Target::Peer(to, id) => out.push(Output::Send {
            to,
            message: PeerMessage::Reply { id, response },
        }),
        Target::Internal => {}
    }
}

/// Adds one owner's page to a fanned-out scan.
fn merge_page(agg: &mut ScanAgg, response: Response) {
    match response {
        Response::Page { items, next_after } => {
            agg.more |= next_after.is_some();
            agg.items.extend(items);
        }
        other => {
            agg.failed.get_or_insert(other);
        }
    }
}

/// The merged page: every owner returned its smallest keys after the cursor, so the smallest
/// `limit` of their union are the true next page.
fn finish_scan(mut agg: ScanAgg) -> Output {
    if let Some(e) = agg.failed {
        return Output::Reply {
            id: agg.client,
            response: e,
        };
    }
    agg.items.sort_by(|a, b| a.key.cmp(&b.key));
    let more = agg.more || agg.items.len() > agg.limit;
    agg.items.truncate(agg.limit);
    let next_after = if more {
        agg.items.last().map(|i| i.key.clone())
    } else {
        None
    };
    Output::Reply {
        id: agg.client,
        response: Response::Page {
            items: agg.items,
            next_after,
        },
    }
}

struct Stored {
    created_ms: u64,
    modified_ms: u64,
    /// The key's version as written (envelope 2); `None` for envelope 1, whose version is the
    /// engine sequence number of the write.
    version: Option<u64>,
    value: Vec<u8>,
}

impl Stored {
    /// The version clients see: the one written, or (old envelope) the sequence number.
    fn version(&self, seq: u64) -> u64 {
        if crate::bugs::on(crate::bugs::Bug::VersionIsSequence) {
            return seq;
        }
        self.version.unwrap_or(seq)
    }
}

/// A value as a Redis integer: optional `-`, decimal digits, no leading zeros or spaces or `+`,
/// no `-0`, within i64.
pub fn parse_decimal(b: &[u8]) -> Option<i64> {
    let digits = b.strip_prefix(b"-").unwrap_or(b);
    let ok = !digits.is_empty()
        && digits.len() <= 19
        && digits.iter().all(u8::is_ascii_digit)
        && (digits.len() == 1 || digits[0] != b'0')
        && b != b"-0";
    if !ok {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn encode_value(created_ms: u64, modified_ms: u64, version: u64, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(ENVELOPE_LEN + value.len());
    v.push(ENVELOPE_VERSION);
    v.extend_from_slice(&created_ms.to_le_bytes());
    v.extend_from_slice(&modified_ms.to_le_bytes());
    v.extend_from_slice(&version.to_le_bytes());
    v.extend_from_slice(value);
    v
}

fn decode_value(mut raw: Vec<u8>) -> Result<Stored, Response> {
    let unknown = || err(ErrorKind::Internal, "stored value has an unknown envelope");
    let (len, has_version) = match raw.first() {
        Some(&ENVELOPE_VERSION) => (ENVELOPE_LEN, true),
        Some(&ENVELOPE_V1) => (ENVELOPE_V1_LEN, false),
        _ => return Err(unknown()),
    };
    if raw.len() < len {
        return Err(unknown());
    }
    let word = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&raw[at..at + 8]);
        u64::from_le_bytes(a)
    };
    let created_ms = word(1);
    let modified_ms = word(9);
    let version = has_version.then(|| word(17));
    raw.drain(..len);
    Ok(Stored {
        created_ms,
        modified_ms,
        version,
        value: raw,
    })
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
        };
        n.cl.connected = true;
        n.cl.elected = true;
        n.cl.leading = true;
        n.cl.state_seen = true;
        n.cl.state = Some(ClusterState::initial(
            &me,
            std::slice::from_ref(&member),
            n.cfg.partitions,
        ));
        n.cl.members = vec![member];
        n.publish_routes();
        n
    }

    /// A node that learns its cluster from coordinator events; until a partition map arrives
    /// it answers `Unavailable`.
    pub fn new_clustered(db: Arc<Db>, cfg: NodeConfig) -> Node {
        let durable = db.options().sync == SyncMode::Always;
        let drive_background = db.options().background == Background::Manual;
        let persist_every_ms = match db.options().sync {
            SyncMode::Interval { ms } if drive_background => Some(ms.max(1)),
            _ => None,
        };
        Node {
            reader: Reader {
                db: db.clone(),
                cfg: cfg.clone(),
                routes: Arc::new(ArcSwap::from_pointee(Routes::default())),
            },
            db,
            cfg,
            waiting: VecDeque::new(),
            persists_running: 0,
            persist_requested: 0,
            persists: 0,
            durable,
            drive_background,
            background_running: false,
            backgrounds: 0,
            persist_every_ms,
            unpersisted_since: None,
            last_written: 0,
            version_clock: std::cell::Cell::new(0),
            cl: Cluster {
                connected: false,
                elected: false,
                leading: false,
                need_claim: false,
                claim_in_flight: false,
                state_seen: false,
                state: None,
                stamp: -1,
                members: Vec::new(),
                next_fid: 0,
                forwards: BTreeMap::new(),
                scans: BTreeMap::new(),
                parked: Vec::new(),
                outgoing: BTreeMap::new(),
                incoming: BTreeMap::new(),
                cleanup: BTreeMap::new(),
                write_in_flight: false,
                owned_before: None,
                plan_due: true,
                to_leave: BTreeSet::new(),
                leave_written_at: None,
                first_map: true,
            },
            persisted_upto: 0,
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
        let st = self.cl.state.as_ref();
        ClusterView {
            role: if self.cl.leading {
                Role::Leader
            } else {
                Role::Follower
            },
            leader: st.map(|s| s.leader.clone()),
            epoch: st.map_or(0, |s| s.epoch),
            members: self.cl.members.iter().map(|m| m.id.clone()).collect(),
            owners: st.map_or_else(Vec::new, |s| s.owners.clone()),
            map_version: st.map_or(0, |s| s.version),
            moving: st.map_or_else(BTreeMap::new, |s| s.moving.clone()),
            leaving: st.map_or_else(Vec::new, |s| s.leaving.clone()),
        }
    }

    /// The live members as the coordinator last reported them.
    pub fn members(&self) -> &[Member] {
        &self.cl.members
    }

    /// Whether the node can route requests (it knows a partition map that fits its
    /// partition count).
    pub fn ready(&self) -> bool {
        self.routable().is_ok()
    }

    pub fn stats(&self) -> NodeStats {
        NodeStats {
            waiting_for_persist: self.waiting.len(),
            persists: self.persists,
            backgrounds: self.backgrounds,
            forwards_in_flight: self.cl.forwards.len(),
        }
    }

    /// When the driver must call [`handle`](Self::handle) with [`Input::Timeout`] at the
    /// latest (milliseconds since the Unix epoch), if nothing else arrives first.
    pub fn next_deadline(&self) -> Option<u64> {
        let persist = match (self.persist_every_ms, self.unpersisted_since) {
            (Some(every), Some(since)) => Some(since.saturating_add(every)),
            _ => None,
        };
        let forward = self.cl.forwards.values().next().map(|f| f.deadline);
        let parked = self.cl.parked.iter().map(|p| p.0).min();
        let moves = self.cl.incoming.values().map(|m| m.deadline).min();
        // Cleanup runs a chunk per call: come back at once while any is left.
        let cleanup = (!self.cl.cleanup.is_empty()).then_some(0);
        [persist, forward, parked, moves, cleanup]
            .into_iter()
            .flatten()
            .min()
    }

    /// The one door. `now` is the driver's wall clock in milliseconds since the Unix epoch.
    pub fn handle(&mut self, now: u64, input: Input, out: &mut Vec<Output>) {
        match input {
            Input::Client { id, request } => self.route(now, id, request, None, out),
            Input::Peer { from, message } => self.on_peer(now, from, message, out),
            Input::PeerDown { peer } => self.on_peer_down(&peer, out),
            Input::Coordinator(event) => self.on_coordinator(now, event, out),
            Input::Admin { id, command } => self.on_admin(id, command, out),
            Input::Timeout => {}
            Input::BackgroundDone { result: _ } => {
                self.background_running = false;
                self.backgrounds += 1;
            }
            Input::Persisted { upto } => {
                self.persists_running = self.persists_running.saturating_sub(1);
                self.persists += 1;
                self.persisted_upto = self.persisted_upto.max(upto);
                while self.waiting.front().is_some_and(|(seq, _, _)| *seq <= upto) {
                    let (_, target, response) = self.waiting.pop_front().expect("checked");
                    respond(target, response, out);
                }
                self.request_persist(out);
            }
            Input::PersistFailed { message } => {
                self.persists_running = self.persists_running.saturating_sub(1);
                for (_, target, _) in self.waiting.drain(..) {
                    let response = err(
                        ErrorKind::Unavailable,
                        format!("the write may not be durable ({message}); the outcome is unknown"),
                    );
                    respond(target, response, out);
                }
            }
        }
        self.tick(now, out);
        debug_assert_eq!(self.check_invariants(), Ok(()), "node {}", self.cfg.node_id);
    }

    /// What must hold between any two inputs. Checked after every input in debug builds (the
    /// unit tests and the simulation); a violation names the broken rule.
    pub fn check_invariants(&self) -> Result<(), String> {
        // Replies wait in sequence order, and none waits for more than was written.
        let mut prev = 0;
        for (seq, _, _) in &self.waiting {
            if *seq < prev {
                return Err(format!("waiting replies out of order: {seq} after {prev}"));
            }
            prev = *seq;
        }
        if prev > self.last_written {
            return Err(format!(
                "a reply waits for {prev}, past the last write {}",
                self.last_written
            ));
        }
        if self.persists_running > MAX_PERSISTS {
            return Err(format!("{} persists running", self.persists_running));
        }
        let c = &self.cl;
        // Only a connected node leads. (The map naming it arrives after its claim succeeds,
        // so a leader may briefly hold the previous map.)
        if c.leading && !c.connected {
            return Err("leading while disconnected from the coordinator".into());
        }
        if let Some(st) = &c.state {
            // Hand-offs only of partitions this node owns, towards where the map moves them;
            // partitions coming in are moving here.
            for (p, o) in &c.outgoing {
                let owner = st.owners.get(usize::from(*p));
                if owner != Some(&self.cfg.node_id) {
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
            for p in c.incoming.keys() {
                if st.moving.get(p) != Some(&self.cfg.node_id) {
                    return Err(format!("receiving partition {p}, which is not moving here"));
                }
            }
            // A partition this node owns is not being deleted here.
            for p in c.cleanup.keys() {
                if st.owners.get(usize::from(*p)) == Some(&self.cfg.node_id) {
                    return Err(format!("cleaning up partition {p}, which this node owns"));
                }
            }
        }
        Ok(())
    }

    /// Work that depends on time or on the engine's state rather than on one input: the
    /// interval persist, background work for an engine without threads, expired forwards,
    /// parked requests to retry, and the leader's duties.
    fn tick(&mut self, now: u64, out: &mut Vec<Output>) {
        if let Some(every) = self.persist_every_ms {
            match self.unpersisted_since {
                Some(since) if now >= since.saturating_add(every) => {
                    if self.persists_running < MAX_PERSISTS {
                        self.persists_running += 1;
                        self.persist_requested = self.last_written;
                        self.unpersisted_since = None;
                        out.push(Output::Persist);
                    }
                }
                Some(_) => {}
                None => {
                    if self.last_written > self.persist_requested {
                        self.unpersisted_since = Some(now);
                    }
                }
            }
        }
        if self.drive_background && !self.background_running && self.db.background_pending() {
            self.background_running = true;
            out.push(Output::Background);
        }
        // Forwards are keyed by an increasing id and all get the same timeout, so they expire
        // in key order: look only at the front (every input runs this; a scan of thousands of
        // forwards in flight each time would not do).
        let expired: Vec<u64> = self
            .cl
            .forwards
            .iter()
            .take_while(|(_, f)| f.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for fid in expired {
            if let Some(f) = self.cl.forwards.remove(&fid) {
                let e = err(
                    ErrorKind::Unavailable,
                    format!(
                        "node {} did not answer in time; the outcome is unknown",
                        f.to
                    ),
                );
                self.fail_forward(f, e, out);
            }
        }
        if self.cl.parked.iter().any(|p| p.0 <= now) {
            self.retry_parked(now, false, out);
        }
        self.handoff_tick(now, out);
        self.lead(out);
    }

    // ---- the cluster

    fn on_coordinator(&mut self, now: u64, event: CoordEvent, out: &mut Vec<Output>) {
        match event {
            CoordEvent::Connected => self.cl.connected = true,
            CoordEvent::Disconnected | CoordEvent::Expired => {
                // Step down at once: while cut off from the coordinator we cannot know that
                // nobody else leads.
                self.cl.connected = false;
                self.cl.elected = false;
                self.cl.leading = false;
                self.cl.to_leave.clear();
                self.cl.need_claim = false;
                self.cl.state_seen = false;
                self.cl.claim_in_flight = false;
                self.cl.write_in_flight = false;
            }
            CoordEvent::Elected => {
                if self.cl.connected && !self.cl.leading {
                    self.cl.elected = true;
                    self.cl.need_claim = true;
                }
            }
            CoordEvent::Members(members) => {
                self.cl.members = members;
                self.cl.plan_due = true;
            }
            CoordEvent::State { state, stamp } => {
                if let (Some(s), Some(new)) = (&self.cl.state, &state) {
                    if new.version < s.version {
                        // A late event about an older state: ignore it.
                        return;
                    }
                }
                if let Some(s) = &state {
                    if self.cl.leading && s.leader != self.cfg.node_id {
                        self.cl.leading = false;
                        self.cl.elected = false;
                        self.cl.to_leave.clear();
                    }
                }
                self.cl.state = state;
                self.cl.stamp = stamp;
                self.cl.state_seen = true;
                self.cl.plan_due = true;
                self.on_map_change(now, out);
                self.publish_routes();
                self.retry_parked(now, true, out);
            }
            CoordEvent::WriteDone { ok, message: _ } => {
                self.cl.write_in_flight = false;
                self.cl.plan_due = true;
                if self.cl.claim_in_flight {
                    self.cl.claim_in_flight = false;
                    if ok && self.cl.need_claim && self.cl.connected {
                        self.cl.need_claim = false;
                        self.cl.leading = true;
                    }
                }
            }
        }
    }

    /// The leader's duties. For now: claim a new epoch on election (creating the partition map
    /// if the cluster is new). Every write is conditional on the stamp last seen, so a deposed
    /// leader changes nothing.
    fn lead(&mut self, out: &mut Vec<Output>) {
        if self.cl.leading
            && self.cl.connected
            && self.cl.state_seen
            && !self.cl.write_in_flight
            && self.write_leaving(out)
        {
            return;
        }
        let c = &mut self.cl;
        if c.leading && c.connected && c.state_seen && !c.write_in_flight {
            // Rebalance: start or abort moves as membership requires (only when something
            // changed: this runs after every input).
            if !c.plan_due {
                return;
            }
            c.plan_due = false;
            let live: Vec<String> = c.members.iter().map(|m| m.id.clone()).collect();
            if let Some(next) = c.state.as_ref().and_then(|s| s.plan(&live)) {
                c.write_in_flight = true;
                out.push(Output::Coordinator(CoordCommand::WriteState {
                    state: next,
                    expected: c.stamp,
                }));
            }
            return;
        }
        if !(c.need_claim && c.connected && c.state_seen && !c.claim_in_flight) {
            return;
        }
        let me = &self.cfg.node_id;
        if c.state.is_none() && c.members.len() < self.cfg.initial_members {
            // A new cluster: wait for its first members (each `Members` event retries).
            return;
        }
        let state = match &c.state {
            None => ClusterState::initial(me, &c.members, self.cfg.partitions),
            Some(s) => {
                let mut next = s.next_epoch(me);
                if crate::bugs::on(crate::bugs::Bug::NoEpochBump) {
                    next.epoch = s.epoch;
                }
                next
            }
        };
        c.claim_in_flight = true;
        c.write_in_flight = true;
        out.push(Output::Coordinator(CoordCommand::WriteState {
            state,
            expected: c.stamp,
        }));
    }

    /// Publishes which partitions this node serves, for reads outside the door.
    fn publish_routes(&mut self) {
        let owned = match self.routable() {
            Ok(s) => Some(
                s.owners
                    .iter()
                    .enumerate()
                    .map(|(p, o)| {
                        (*o == self.cfg.node_id && !self.frozen(p as u16))
                            || (crate::bugs::on(crate::bugs::Bug::StaleOwnerRead)
                                && self.cl.cleanup.contains_key(&(p as u16)))
                    })
                    .collect(),
            ),
            Err(_) => None,
        };
        self.reader.routes.store(Arc::new(Routes { owned }));
    }

    /// The partition map, if the node can route by it.
    fn routable(&self) -> Result<&ClusterState, Response> {
        match &self.cl.state {
            None => Err(err(
                ErrorKind::Unavailable,
                "no partition map yet: the cluster has no leader",
            )),
            Some(s) if s.owners.len() != usize::from(self.cfg.partitions) => Err(err(
                ErrorKind::Internal,
                format!(
                    "the cluster has {} partitions but this node is configured for {}",
                    s.owners.len(),
                    self.cfg.partitions
                ),
            )),
            Some(s) => Ok(s),
        }
    }

    /// Who serves partition `p`.
    fn owner(&self, p: u16) -> Result<String, Response> {
        let s = self.routable()?;
        Ok(s.owners[usize::from(p)].clone())
    }

    fn is_member(&self, id: &str) -> bool {
        self.cl.members.iter().any(|m| m.id == id)
    }

    /// The owner of every key a request names (one owner, or an error saying why not).
    fn owner_of_request(&self, request: &Request) -> Result<String, Response> {
        if matches!(request, Request::Scan { .. }) {
            return Err(err(ErrorKind::Internal, "scans fan out"));
        }
        let keys = request_keys(request);
        let mut owner: Option<String> = None;
        for k in keys {
            let o = self.owner(self.partition_of(k))?;
            match &owner {
                Some(prev) if *prev != o => {
                    return Err(err(
                        ErrorKind::BadRequest,
                        format!(
                            "the batch spans partitions owned by different nodes ({prev} and \
                             {o}); a batch is atomic only within one node's partitions"
                        ),
                    ))
                }
                _ => owner = Some(o),
            }
        }
        owner.ok_or_else(|| err(ErrorKind::BadRequest, "a batch needs at least one op"))
    }

    /// A client request: run here, forward to the owner, or fan out (scans).
    /// `give_up`: when a request that has to wait (for a hand-off, for a newer map) fails; set
    /// on its first wait and kept through every retry.
    fn route(
        &mut self,
        now: u64,
        id: u64,
        request: Request,
        give_up: Option<u64>,
        out: &mut Vec<Output>,
    ) {
        let give_up = give_up.unwrap_or(now + PARK_TIMEOUT_MS);
        if let Request::Scan {
            start,
            end,
            after,
            limit,
        } = request
        {
            return self.fan_out_scan(now, id, start, end, after, limit, out);
        }
        let owner = match self.owner_of_request(&request) {
            Ok(o) => o,
            Err(e) => return out.push(Output::Reply { id, response: e }),
        };
        if owner == self.cfg.node_id {
            if self.touches_frozen(&request) {
                // Being handed off: wait for the map to flip, then go to the new owner.
                self.cl
                    .parked
                    .push((now + PARK_RETRY_MS, give_up, id, request));
                return;
            }
            return self.execute(now, Target::Client(id), request, out);
        }
        if !self.is_member(&owner) {
            return out.push(Output::Reply {
                id,
                response: err(
                    ErrorKind::Unavailable,
                    format!("node {owner}, which owns this key's partition, is down"),
                ),
            });
        }
        let fid = self.cl.next_fid;
        self.cl.next_fid += 1;
        let map_version = self.cl.state.as_ref().map_or(0, |s| s.version);
        out.push(Output::Send {
            to: owner.clone(),
            message: PeerMessage::Forward {
                id: fid,
                map_version,
                request: request.clone(),
            },
        });
        self.cl.forwards.insert(
            fid,
            Forwarded {
                to: owner,
                deadline: now + FORWARD_TIMEOUT_MS,
                kind: FwdKind::Single {
                    client: id,
                    request,
                    give_up,
                },
            },
        );
    }

    /// A scan over every partition: this node's own part answered here, every other owner's
    /// part asked of it, the pages merged by key.
    #[allow(clippy::too_many_arguments)]
    fn fan_out_scan(
        &mut self,
        now: u64,
        id: u64,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        after: Option<Vec<u8>>,
        limit: usize,
        out: &mut Vec<Output>,
    ) {
        let state = match self.routable() {
            Ok(s) => s.clone(),
            Err(e) => return out.push(Output::Reply { id, response: e }),
        };
        let mut by_owner: BTreeMap<String, Vec<u16>> = BTreeMap::new();
        for (p, o) in state.owners.iter().enumerate() {
            by_owner.entry(o.clone()).or_default().push(p as u16);
        }
        if let Some(down) = by_owner.keys().find(|o| !self.is_member(o)) {
            return out.push(Output::Reply {
                id,
                response: err(
                    ErrorKind::Unavailable,
                    format!("node {down}, which owns part of the key space, is down"),
                ),
            });
        }
        let sid = self.cl.next_fid;
        self.cl.next_fid += 1;
        let mut agg = ScanAgg {
            client: id,
            limit: limit.clamp(1, self.cfg.max_scan_limit),
            pending: 0,
            items: Vec::new(),
            more: false,
            failed: None,
        };
        for (owner, parts) in by_owner {
            if owner == self.cfg.node_id {
                let page = self.reader.scan_parts(
                    start.clone(),
                    end.clone(),
                    after.clone(),
                    limit,
                    &parts,
                );
                merge_page(&mut agg, page.unwrap_or_else(|e| e));
                continue;
            }
            let fid = self.cl.next_fid;
            self.cl.next_fid += 1;
            agg.pending += 1;
            out.push(Output::Send {
                to: owner.clone(),
                message: PeerMessage::ScanParts {
                    id: fid,
                    map_version: state.version,
                    partitions: parts,
                    start: start.clone(),
                    end: end.clone(),
                    after: after.clone(),
                    limit: limit as u64,
                },
            });
            self.cl.forwards.insert(
                fid,
                Forwarded {
                    to: owner,
                    deadline: now + FORWARD_TIMEOUT_MS,
                    kind: FwdKind::ScanPart { scan: sid },
                },
            );
        }
        if agg.pending == 0 {
            out.push(finish_scan(agg));
        } else {
            self.cl.scans.insert(sid, agg);
        }
    }

    fn on_peer(&mut self, now: u64, from: String, message: PeerMessage, out: &mut Vec<Output>) {
        match message {
            PeerMessage::Hello { .. } => {}
            PeerMessage::Forward {
                id,
                map_version: _,
                request,
            } => match self.owner_of_request(&request) {
                Ok(o) if o == self.cfg.node_id && !self.touches_frozen(&request) => {
                    self.execute(now, Target::Peer(from, id), request, out)
                }
                Ok(_) => out.push(Output::Send {
                    to: from,
                    message: PeerMessage::NotOwner {
                        id,
                        map_version: self.cl.state.as_ref().map_or(0, |s| s.version),
                    },
                }),
                Err(e) => respond(Target::Peer(from, id), e, out),
            },
            PeerMessage::ScanParts {
                id,
                map_version: _,
                partitions,
                start,
                end,
                after,
                limit,
            } => {
                let mine = partitions.iter().all(|p| {
                    *p < self.cfg.partitions && self.owner(*p).is_ok_and(|o| o == self.cfg.node_id)
                });
                if !mine {
                    let map_version = self.cl.state.as_ref().map_or(0, |s| s.version);
                    return out.push(Output::Send {
                        to: from,
                        message: PeerMessage::NotOwner { id, map_version },
                    });
                }
                let limit = usize::try_from(limit).unwrap_or(usize::MAX);
                let page = self
                    .reader
                    .scan_parts(start, end, after, limit, &partitions)
                    .unwrap_or_else(|e| e);
                respond(Target::Peer(from, id), page, out);
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
            } => {
                // Start over later (the leader may also abort the move).
                if let Some(m) = self.cl.incoming.get_mut(&partition) {
                    if m.req == id {
                        m.deadline = now + MOVE_READY_EVERY_MS;
                        m.req = u64::MAX;
                    }
                }
            }
            PeerMessage::MoveReady { partition } => self.on_move_ready(&from, partition, out),
            PeerMessage::Decommission { node } => self.decommission(node),
            PeerMessage::Reply { id, response } => {
                if let Some(f) = self.cl.forwards.remove(&id) {
                    match f.kind {
                        FwdKind::Single { client, .. } => out.push(Output::Reply {
                            id: client,
                            response,
                        }),
                        FwdKind::ScanPart { scan } => self.scan_part_done(scan, response, out),
                    }
                }
            }
            PeerMessage::NotOwner { id, map_version: _ } => {
                if let Some(f) = self.cl.forwards.remove(&id) {
                    match f.kind {
                        FwdKind::Single {
                            client,
                            request,
                            give_up,
                        } => {
                            // Our map is behind (or theirs is): wait for a newer one and retry.
                            self.cl
                                .parked
                                .push((now + PARK_RETRY_MS, give_up, client, request));
                        }
                        FwdKind::ScanPart { scan } => {
                            let e = err(
                                ErrorKind::Unavailable,
                                "the partition map changed during the scan; retry",
                            );
                            self.scan_part_done(scan, e, out);
                        }
                    }
                }
            }
        }
    }

    fn on_peer_down(&mut self, peer: &str, out: &mut Vec<Output>) {
        let lost: Vec<u64> = self
            .cl
            .forwards
            .iter()
            .filter(|(_, f)| f.to == peer)
            .map(|(id, _)| *id)
            .collect();
        for fid in lost {
            if let Some(f) = self.cl.forwards.remove(&fid) {
                let e = err(
                    ErrorKind::Unavailable,
                    format!("lost the connection to node {peer}; the outcome is unknown"),
                );
                self.fail_forward(f, e, out);
            }
        }
    }

    fn fail_forward(&mut self, f: Forwarded, e: Response, out: &mut Vec<Output>) {
        match f.kind {
            FwdKind::Single { client, .. } => out.push(Output::Reply {
                id: client,
                response: e,
            }),
            FwdKind::ScanPart { scan } => self.scan_part_done(scan, e, out),
        }
    }

    fn scan_part_done(&mut self, scan: u64, response: Response, out: &mut Vec<Output>) {
        let Some(agg) = self.cl.scans.get_mut(&scan) else {
            return;
        };
        merge_page(agg, response);
        agg.pending -= 1;
        if agg.pending == 0 {
            if let Some(agg) = self.cl.scans.remove(&scan) {
                out.push(finish_scan(agg));
            }
        }
    }

    /// Re-routes parked requests whose retry time came (or all, after a map change), and
    /// fails those that waited too long.
    fn retry_parked(&mut self, now: u64, all: bool, out: &mut Vec<Output>) {
        let parked = std::mem::take(&mut self.cl.parked);
        for (retry_at, give_up, client, request) in parked {
            if give_up <= now {
                out.push(Output::Reply {
                    id: client,
                    response: err(
                        ErrorKind::Unavailable,
                        "the owner of this key's partition is changing; retry",
                    ),
                });
            } else if all || retry_at <= now {
                self.route(now, client, request, Some(give_up), out);
            } else {
                self.cl.parked.push((retry_at, give_up, client, request));
            }
        }
    }

    // ---- hand-off

    fn frozen(&self, p: u16) -> bool {
        self.cl.outgoing.get(&p).is_some_and(|o| o.frozen.is_some())
    }

    fn touches_frozen(&self, request: &Request) -> bool {
        !self.cl.outgoing.is_empty()
            && request_keys(request)
                .iter()
                .any(|k| self.frozen(self.partition_of(k)))
    }

    fn on_admin(&mut self, id: u64, command: AdminCommand, out: &mut Vec<Output>) {
        match command {
            AdminCommand::Decommission { node } => {
                let response = match &self.cl.state {
                    None => err(ErrorKind::Unavailable, "the cluster has no leader yet"),
                    Some(_) if !self.is_member(&node) => err(
                        ErrorKind::BadRequest,
                        format!("{node} is not a live member"),
                    ),
                    Some(s) => {
                        let leader = s.leader.clone();
                        if self.cl.leading {
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

    /// The leader marks `node` as leaving; the plan then moves its partitions away.
    fn decommission(&mut self, node: String) {
        if !self.cl.leading {
            return;
        }
        // Recorded now; `lead` (after every input) writes it when no other state write is in
        // flight.
        self.cl.to_leave.insert(node);
    }

    /// The leader writes the nodes asked to leave into the state (one write for all of them).
    /// `false` if there was nothing to write.
    fn write_leaving(&mut self, out: &mut Vec<Output>) -> bool {
        let c = &mut self.cl;
        let Some(s) = &c.state else { return false };
        // A request is done once the state shows it; until then it stays, so a failed write
        // is retried. Written once per state seen: the outcome shows in the next `State`.
        c.to_leave.retain(|n| !s.leaving.contains(n));
        if c.to_leave.is_empty() || c.leave_written_at == Some(c.stamp) {
            return false;
        }
        let mut next = s.bumped();
        next.leaving.extend(c.to_leave.iter().cloned());
        c.leave_written_at = Some(c.stamp);
        c.write_in_flight = true;
        out.push(Output::Coordinator(CoordCommand::WriteState {
            state: next,
            expected: c.stamp,
        }));
        true
    }

    /// The leader flips partition `p` to `from` once its copy is durable there.
    fn on_move_ready(&mut self, from: &str, p: u16, out: &mut Vec<Output>) {
        let c = &mut self.cl;
        if !c.leading || c.write_in_flight {
            return; // the new owner repeats itself
        }
        let Some(s) = &c.state else { return };
        if s.moving.get(&p).map(String::as_str) != Some(from) {
            return;
        }
        let mut next = s.bumped();
        next.moving.remove(&p);
        next.owners[usize::from(p)] = from.to_string();
        c.write_in_flight = true;
        out.push(Output::Coordinator(CoordCommand::WriteState {
            state: next,
            expected: c.stamp,
        }));
    }

    /// Reacts to a new partition map: start receiving partitions moving here, forget moves
    /// that ended, and schedule the deletion of partitions handed away.
    fn on_map_change(&mut self, now: u64, out: &mut Vec<Output>) {
        let Ok(state) = self.routable().cloned() else {
            return;
        };
        let me = self.cfg.node_id.clone();
        // Outgoing moves: ended when the map no longer records them.
        let ended: Vec<u16> = self
            .cl
            .outgoing
            .iter()
            .filter(|(p, o)| state.moving.get(p) != Some(&o.to))
            .map(|(p, _)| *p)
            .collect();
        for p in ended {
            self.cl.outgoing.remove(&p);
        }
        // The first map after a (re)start: a partition of ours that is moving away may have
        // been frozen before a crash, its tail sent, and the new owner about to flip the map.
        // Taking writes for it now would lose them at the flip, so it stays frozen (writes
        // wait) until the map flips or the move is aborted. If the copy had not got that far,
        // the new owner restarts it and the freeze only delays writes.
        if std::mem::take(&mut self.cl.first_map)
            && !crate::bugs::on(crate::bugs::Bug::ForgetFreezeOnRestart)
        {
            for (p, to) in &state.moving {
                if state.owners[usize::from(*p)] == me {
                    self.cl.outgoing.insert(
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
        // Partitions that left us: delete the local copy.
        for (p, owner) in state.owners.iter().enumerate() {
            let p = p as u16;
            if *owner != me && state.moving.get(&p).is_none_or(|t| *t != me) {
                // Only ones we held: a cleanup of an empty range costs one seek.
                if self.cl.incoming.remove(&p).is_some() || self.once_owned(p) {
                    self.cl.cleanup.entry(p).or_insert(None);
                }
            }
        }
        // Incoming moves: flipped (ours now) or aborted.
        let done: Vec<u16> = self
            .cl
            .incoming
            .keys()
            .filter(|p| state.moving.get(p) != Some(&me))
            .copied()
            .collect();
        for p in done {
            self.cl.incoming.remove(&p);
            if state.owners[usize::from(p)] != me {
                self.cl.cleanup.entry(p).or_insert(None);
            }
        }
        self.cl.owned_before = Some(state.owners.iter().map(|o| *o == me).collect());
        // New moves to us.
        for (p, to) in &state.moving {
            if *to == me && !self.cl.incoming.contains_key(p) {
                let from = state.owners[usize::from(*p)].clone();
                self.cl.cleanup.remove(p);
                self.start_incoming(now, *p, from, out);
            }
        }
    }

    /// Whether this node may hold data of `p` it does not own: it owned it in the map before
    /// this one, or this is the first map since the node started (a crash may have cut a
    /// cleanup short).
    fn once_owned(&self, p: u16) -> bool {
        match &self.cl.owned_before {
            None => true,
            Some(o) => o.get(usize::from(p)).copied().unwrap_or(false),
        }
    }

    /// Clears any stale local copy of `p`, then asks its owner for the first page.
    fn start_incoming(&mut self, now: u64, p: u16, from: String, out: &mut Vec<Output>) {
        // A failure here surfaces again when the copy's own writes fail.
        let _ = self.delete_partition(p, usize::MAX, None, out);
        let id = self.cl.next_fid;
        self.cl.next_fid += 1;
        out.push(Output::Send {
            to: from.clone(),
            message: PeerMessage::FetchPart {
                id,
                partition: p,
                after: None,
                limit: PART_PAGE,
            },
        });
        self.cl.incoming.insert(
            p,
            Incoming {
                from,
                req: id,
                deadline: now + MOVE_STEP_TIMEOUT_MS,
                phase: Phase::Copying,
            },
        );
    }

    /// Deletes up to `max` keys of partition `p` (after user key `after`) from the local
    /// engine. Returns the last key deleted if more may be left.
    fn delete_partition(
        &mut self,
        p: u16,
        max: usize,
        after: Option<&[u8]>,
        out: &mut Vec<Output>,
    ) -> Result<Option<Vec<u8>>, Response> {
        let (lo, hi) = partition_range(p, after);
        // Every applied write, durable or not: a copy restarted while the previous attempt's
        // pages are not yet durable must delete those too, or keys deleted at the old owner in
        // between would outlive the restart here (the simulation found it).
        let snap = if crate::bugs::on(crate::bugs::Bug::WipeOnlyDurable) {
            self.db.snapshot()
        } else {
            self.db.snapshot_latest()
        };
        let it = snap
            .scan(
                lo.as_ref().map(Vec::as_slice),
                hi.as_ref().map(Vec::as_slice),
            )
            .map_err(engine_err)?;
        let mut b = WriteBatch::new();
        let mut n = 0;
        let mut more = None;
        let mut last: Option<Vec<u8>> = None;
        for kv in it {
            let (k, _) = kv.map_err(engine_err)?;
            if n == max {
                more = last.take().map(|k: Vec<u8>| k[2..].to_vec());
                break;
            }
            last = Some(k.clone());
            b.delete(k);
            n += 1;
        }
        if n > 0 {
            let seq = self.db.write_deferred(b).map_err(engine_err)?;
            self.last_written = self.last_written.max(seq);
            if self.durable {
                // Nobody waits for these deletes, but a persist must make them durable and
                // visible.
                self.waiting
                    .push_back((seq, Target::Internal, Response::Accepted));
                self.request_persist(out);
            }
        }
        Ok(more)
    }

    /// Timeouts and chores of hand-offs: retry a step that got no answer, repeat `MoveReady`,
    /// send tails whose writes became durable, and delete handed-away partitions.
    fn handoff_tick(&mut self, now: u64, out: &mut Vec<Output>) {
        // The old owner's frozen partitions: the tail leaves once their writes are durable.
        let durable_upto = if self.durable {
            self.persisted_upto
        } else {
            u64::MAX
        };
        let ready: Vec<u16> = self
            .cl
            .outgoing
            .iter()
            .filter(|(_, o)| o.frozen.is_some_and(|f| !f.sent && f.upto <= durable_upto))
            .map(|(p, _)| *p)
            .collect();
        for p in ready {
            let Some(o) = self.cl.outgoing.get_mut(&p) else {
                continue;
            };
            let Some(f) = o.frozen.as_mut() else { continue };
            // Sent once; stays frozen until the map flips or the move is aborted.
            f.sent = true;
            let id = f.id;
            let to = o.to.clone();
            let keys: Vec<Vec<u8>> = std::mem::take(&mut o.written).into_iter().collect();
            let mut items = Vec::with_capacity(keys.len());
            for k in keys {
                let ikey = self.reader.internal_key(&k);
                match self.db.get_latest(&ikey) {
                    Ok(v) => items.push((k, v.map(|(_, raw)| raw))),
                    Err(e) => {
                        let reason = format!("cannot read the tail: {e}");
                        out.push(Output::Send {
                            to: to.clone(),
                            message: PeerMessage::PartRefused {
                                id,
                                partition: p,
                                reason,
                            },
                        });
                        items.clear();
                        break;
                    }
                }
            }
            out.push(Output::Send {
                to,
                message: PeerMessage::PartTail {
                    id,
                    partition: p,
                    items,
                },
            });
        }
        // The new owner's side.
        let leader = self.cl.state.as_ref().map(|s| s.leader.clone());
        let parts: Vec<u16> = self.cl.incoming.keys().copied().collect();
        for p in parts {
            let Some(m) = self.cl.incoming.get(&p) else {
                continue;
            };
            match m.phase {
                Phase::Applying { upto } if upto <= durable_upto => {
                    if let Some(m) = self.cl.incoming.get_mut(&p) {
                        m.phase = Phase::Ready;
                        m.deadline = now;
                    }
                }
                _ => {}
            }
            let Some(m) = self.cl.incoming.get(&p) else {
                continue;
            };
            if m.deadline > now {
                continue;
            }
            match m.phase {
                Phase::Ready => {
                    if let Some(l) = &leader {
                        out.push(Output::Send {
                            to: l.clone(),
                            message: PeerMessage::MoveReady { partition: p },
                        });
                    }
                    if let Some(m) = self.cl.incoming.get_mut(&p) {
                        m.deadline = now + MOVE_READY_EVERY_MS;
                    }
                }
                Phase::Applying { .. } => {
                    if let Some(m) = self.cl.incoming.get_mut(&p) {
                        m.deadline = now + MOVE_READY_EVERY_MS;
                    }
                }
                Phase::Copying | Phase::Freezing => {
                    // No answer (or refused): start over from a clean copy.
                    let from = m.from.clone();
                    self.cl.incoming.remove(&p);
                    self.start_incoming(now, p, from, out);
                }
            }
        }
        // Partitions handed away: delete a chunk at a time.
        if let Some((&p, after)) = self.cl.cleanup.iter().next() {
            let after = after.clone();
            match self.delete_partition(p, CLEANUP_CHUNK, after.as_deref(), out) {
                Ok(Some(last)) => {
                    self.cl.cleanup.insert(p, Some(last));
                }
                Ok(None) | Err(_) => {
                    self.cl.cleanup.remove(&p);
                }
            }
        }
    }

    /// Old owner: a page of `p` for its new owner.
    #[allow(clippy::too_many_arguments)]
    fn on_fetch_part(
        &mut self,
        from: String,
        id: u64,
        p: u16,
        after: Option<Vec<u8>>,
        limit: u32,
        out: &mut Vec<Output>,
    ) {
        let refuse = |reason: &str, out: &mut Vec<Output>| {
            out.push(Output::Send {
                to: from.clone(),
                message: PeerMessage::PartRefused {
                    id,
                    partition: p,
                    reason: reason.to_string(),
                },
            })
        };
        let ok = self.routable().is_ok_and(|s| {
            s.owners.get(usize::from(p)) == Some(&self.cfg.node_id)
                && s.moving.get(&p) == Some(&from)
        });
        if !ok {
            return refuse("no such move in this node's partition map", out);
        }
        if after.is_none() {
            // The copy (re)starts: record writes from now on (a restart towards the same node
            // keeps what was recorded, which is still to be sent). A frozen partition stays
            // frozen.
            let last = self.last_written;
            match self.cl.outgoing.get(&p) {
                Some(o) if o.to == from => {}
                other => {
                    let frozen = other.and_then(|o| o.frozen);
                    self.cl.outgoing.insert(
                        p,
                        Outgoing {
                            to: from.clone(),
                            since: last,
                            written: BTreeSet::new(),
                            frozen,
                        },
                    );
                }
            }
            // Pages come from a snapshot of durable writes. A write applied before tracking
            // began but not yet durable would be in neither the pages nor the tail: wait
            // (the new owner asks again) until every such write is durable.
            let since = self.cl.outgoing.get(&p).map_or(0, |o| o.since);
            if self.durable
                && self.persisted_upto < since
                && !crate::bugs::on(crate::bugs::Bug::CopyBeforeDurable)
            {
                return refuse("writes made before the copy began are not durable yet", out);
            }
        } else if !self.cl.outgoing.contains_key(&p) {
            return refuse("the copy was not started", out);
        }
        let (lo, hi) = partition_range(p, after.as_deref());
        let snap = self.db.snapshot();
        let it = match snap.scan(
            lo.as_ref().map(Vec::as_slice),
            hi.as_ref().map(Vec::as_slice),
        ) {
            Ok(it) => it,
            Err(e) => return refuse(&format!("cannot read the partition: {e}"), out),
        };
        let limit = limit.clamp(1, 100_000) as usize;
        let mut items = Vec::new();
        let mut bytes = 0usize;
        let mut done = true;
        for kv in it {
            let (k, v) = match kv {
                Ok(kv) => kv,
                Err(e) => return refuse(&format!("cannot read the partition: {e}"), out),
            };
            if items.len() >= limit || bytes > (8 << 20) {
                done = false;
                break;
            }
            bytes += k.len() + v.len();
            items.push((k[2..].to_vec(), v));
        }
        out.push(Output::Send {
            to: from,
            message: PeerMessage::PartPage {
                id,
                partition: p,
                items,
                done,
            },
        });
    }

    /// Old owner: stop writes to `p`; the tail leaves once they are durable (`handoff_tick`).
    fn on_freeze_part(&mut self, now: u64, from: String, id: u64, p: u16, out: &mut Vec<Output>) {
        let upto = self.last_written;
        match self.cl.outgoing.get_mut(&p) {
            Some(o) if o.to == from => {
                o.frozen = Some(Frozen {
                    id,
                    upto,
                    sent: false,
                });
                if self.durable && upto > self.persisted_upto {
                    // Make sure a persist covers every write made before the freeze.
                    self.waiting
                        .push_back((upto, Target::Internal, Response::Accepted));
                    self.request_persist(out);
                }
                self.publish_routes();
                self.handoff_tick(now, out);
            }
            _ => out.push(Output::Send {
                to: from,
                message: PeerMessage::PartRefused {
                    id,
                    partition: p,
                    reason: "the copy was not started".into(),
                },
            }),
        }
    }

    /// New owner: apply a page, then ask for the next one or freeze.
    #[allow(clippy::too_many_arguments)]
    fn on_part_page(
        &mut self,
        now: u64,
        from: &str,
        id: u64,
        p: u16,
        items: Vec<(Vec<u8>, Vec<u8>)>,
        done: bool,
        out: &mut Vec<Output>,
    ) {
        let Some(m) = self.cl.incoming.get(&p) else {
            return;
        };
        if m.req != id || m.from != from || m.phase != Phase::Copying {
            return;
        }
        let last = items.last().map(|(k, _)| k.clone());
        if !items.is_empty() {
            let mut b = WriteBatch::new();
            for (k, v) in items {
                let mut ik = p.to_be_bytes().to_vec();
                ik.extend_from_slice(&k);
                b.put(ik, v);
            }
            match self.db.write_deferred(b) {
                Ok(seq) => self.last_written = self.last_written.max(seq),
                Err(_) => {
                    // Try again later from scratch.
                    if let Some(m) = self.cl.incoming.get_mut(&p) {
                        m.req = u64::MAX;
                        m.deadline = now + MOVE_READY_EVERY_MS;
                    }
                    return;
                }
            }
        }
        let next_id = self.cl.next_fid;
        self.cl.next_fid += 1;
        let message = if done {
            PeerMessage::FreezePart {
                id: next_id,
                partition: p,
            }
        } else {
            PeerMessage::FetchPart {
                id: next_id,
                partition: p,
                after: last,
                limit: PART_PAGE,
            }
        };
        out.push(Output::Send {
            to: from.to_string(),
            message,
        });
        if let Some(m) = self.cl.incoming.get_mut(&p) {
            m.req = next_id;
            m.deadline = now + MOVE_STEP_TIMEOUT_MS;
            if done {
                m.phase = Phase::Freezing;
            }
        }
    }

    /// New owner: apply the tail; once durable, tell the leader (`handoff_tick`).
    fn on_part_tail(
        &mut self,
        now: u64,
        from: &str,
        id: u64,
        p: u16,
        items: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        out: &mut Vec<Output>,
    ) {
        let Some(m) = self.cl.incoming.get(&p) else {
            return;
        };
        if m.req != id || m.from != from || m.phase != Phase::Freezing {
            return;
        }
        let mut upto = self.last_written;
        if !items.is_empty() {
            let mut b = WriteBatch::new();
            for (k, v) in items {
                let mut ik = p.to_be_bytes().to_vec();
                ik.extend_from_slice(&k);
                match v {
                    Some(v) => b.put(ik, v),
                    None => b.delete(ik),
                };
            }
            match self.db.write_deferred(b) {
                Ok(seq) => {
                    self.last_written = self.last_written.max(seq);
                    upto = seq;
                }
                Err(_) => {
                    if let Some(m) = self.cl.incoming.get_mut(&p) {
                        m.req = u64::MAX;
                        m.deadline = now + MOVE_READY_EVERY_MS;
                    }
                    return;
                }
            }
        }
        if self.durable && upto > self.persisted_upto {
            self.waiting
                .push_back((upto, Target::Internal, Response::Accepted));
            self.request_persist(out);
        }
        if let Some(m) = self.cl.incoming.get_mut(&p) {
            m.phase = Phase::Applying { upto };
            m.deadline = now;
        }
        self.handoff_tick(now, out);
    }

    // ---- local execution

    /// Runs a request whose partitions this node owns, answering `target`.
    fn execute(&mut self, now: u64, target: Target, request: Request, out: &mut Vec<Output>) {
        let tracked: Vec<(u16, Vec<u8>)> = if self.cl.outgoing.is_empty() {
            Vec::new()
        } else {
            request_keys(&request)
                .into_iter()
                .map(|k| (self.partition_of(k), k.to_vec()))
                .filter(|(p, _)| self.cl.outgoing.contains_key(p))
                .collect()
        };
        let is_write = matches!(
            request,
            Request::Put { .. }
                | Request::Delete { .. }
                | Request::Batch { .. }
                | Request::Incr { .. }
        );
        let result = match request {
            Request::Get { key } => self.reader.get(&key).map(|r| (r, None)),
            Request::Put { key, value, cond } => self.put(&key, &value, &cond, now),
            Request::Delete { key, cond } => self.delete(&key, &cond, now),
            Request::Scan {
                start,
                end,
                after,
                limit,
            } => self
                .reader
                .scan(start, end, after, limit)
                .map(|r| (r, None)),
            Request::Batch { ops } => self.batch(ops, now),
            Request::Incr { key, by } => self.incr(&key, by, now),
        };
        let (response, seq) = result.unwrap_or_else(|r| (r, None));
        if let Some(seq) = seq {
            self.last_written = self.last_written.max(seq);
            for (p, k) in tracked {
                if let Some(o) = self.cl.outgoing.get_mut(&p) {
                    o.written.insert(k);
                }
            }
        }
        match seq {
            Some(seq) if self.durable => {
                self.waiting.push_back((seq, target, response));
                self.request_persist(out);
            }
            None if self.durable
                && is_write
                && !crate::bugs::on(crate::bugs::Bug::EarlyRefusal) =>
            {
                // A write that wrote nothing (a failed condition, a delete of an absent key)
                // was decided on the latest applied state, which may include writes not yet
                // durable. Its answer reveals them, so it waits for them like a write: answered
                // now, a read right after it could still see the older state (reads see durable
                // writes only), or a crash could take back what it was decided on.
                match self.waiting.back() {
                    Some(&(newest, _, _)) => self.waiting.push_back((newest, target, response)),
                    None => respond(target, response, out),
                }
            }
            _ => respond(target, response, out),
        }
    }

    /// Asks for a persist when a waiting write is not covered by one already running. Two may
    /// run at once: writes that arrive during an fsync start the next one without waiting for
    /// the first to finish (the file system merges their journal commits).
    fn request_persist(&mut self, out: &mut Vec<Output>) {
        let Some(&(newest, _, _)) = self.waiting.back() else {
            return;
        };
        if newest > self.persist_requested && self.persists_running < MAX_PERSISTS {
            self.persists_running += 1;
            self.persist_requested = newest;
            out.push(Output::Persist);
        }
    }

    fn check_value(&self, value: &[u8]) -> Result<(), Response> {
        if value.len() > self.cfg.max_value_bytes {
            return Err(err(
                ErrorKind::TooLarge,
                format!(
                    "value of {} bytes is over the {}-byte limit",
                    value.len(),
                    self.cfg.max_value_bytes
                ),
            ));
        }
        Ok(())
    }

    /// The latest applied state of a key (including writes not yet persisted), for conditions.
    fn latest(&self, ikey: &[u8]) -> Result<Option<(u64, Stored)>, Response> {
        match self.db.get_latest(ikey) {
            Ok(Some((seq, raw))) => {
                let s = decode_value(raw)?;
                Ok(Some((s.version(seq), s)))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(engine_err(e)),
        }
    }

    fn check_cond(cond: &Condition, current: Option<u64>) -> Result<(), Response> {
        let ok = match cond {
            Condition::None => true,
            Condition::IfMatch(v) => current == Some(*v),
            Condition::IfAbsent => current.is_none(),
            Condition::IfExists => current.is_some(),
        };
        if ok {
            Ok(())
        } else {
            Err(Response::PreconditionFailed { current })
        }
    }

    fn put(
        &self,
        key: &[u8],
        value: &[u8],
        cond: &Condition,
        wall_ms: u64,
    ) -> Result<(Response, Option<u64>), Response> {
        self.reader.check_key(key)?;
        self.check_value(value)?;
        let ikey = self.reader.internal_key(key);
        let current = self.latest(&ikey)?;
        Self::check_cond(cond, current.as_ref().map(|(v, _)| *v))?;
        let version = self.next_version(wall_ms, current.as_ref().map(|(v, _)| *v));
        let created = current.map_or(wall_ms, |(_, s)| s.created_ms);
        let mut b = WriteBatch::new();
        b.put(ikey, encode_value(created, wall_ms, version, value));
        let seq = self.db.write_deferred(b).map_err(engine_err)?;
        Ok((Response::Written { version }, Some(seq)))
    }

    fn delete(
        &self,
        key: &[u8],
        cond: &Condition,
        wall_ms: u64,
    ) -> Result<(Response, Option<u64>), Response> {
        self.reader.check_key(key)?;
        let ikey = self.reader.internal_key(key);
        let current = self.latest(&ikey)?;
        Self::check_cond(cond, current.as_ref().map(|(v, _)| *v))?;
        let Some((prev, _)) = current else {
            return Ok((Response::NotFound, None));
        };
        let version = self.next_version(wall_ms, Some(prev));
        let mut b = WriteBatch::new();
        b.delete(ikey);
        let seq = self.db.write_deferred(b).map_err(engine_err)?;
        Ok((Response::Deleted { version }, Some(seq)))
    }

    fn incr(&self, key: &[u8], by: i64, wall_ms: u64) -> Result<(Response, Option<u64>), Response> {
        self.reader.check_key(key)?;
        let ikey = self.reader.internal_key(key);
        let current = self.latest(&ikey)?;
        let old = match &current {
            None => 0,
            Some((_, s)) => parse_decimal(&s.value).ok_or_else(|| {
                err(
                    ErrorKind::BadRequest,
                    "value is not an integer or out of range",
                )
            })?,
        };
        let new = old.checked_add(by).ok_or_else(|| {
            err(
                ErrorKind::BadRequest,
                "increment or decrement would overflow",
            )
        })?;
        let value = new.to_string().into_bytes();
        let version = self.next_version(wall_ms, current.as_ref().map(|(v, _)| *v));
        let created = current.map_or(wall_ms, |(_, s)| s.created_ms);
        let mut b = WriteBatch::new();
        b.put(ikey, encode_value(created, wall_ms, version, &value));
        let seq = self.db.write_deferred(b).map_err(engine_err)?;
        let response = Response::Value {
            value,
            version,
            created_ms: created,
            modified_ms: wall_ms,
        };
        Ok((response, Some(seq)))
    }

    /// A new version for a key whose current version is `prev`: above it, and from a hybrid
    /// clock (milliseconds, then a counter) that never goes back on this node. Versions thus
    /// survive partition moves (they live in the value envelope) and, because they follow the
    /// clock, a key deleted and written again does not reuse an old version.
    fn next_version(&self, wall_ms: u64, prev: Option<u64>) -> u64 {
        let from_clock = (wall_ms << VERSION_COUNTER_BITS).max(self.version_clock.get() + 1);
        let v = from_clock.max(prev.map_or(0, |p| p + 1));
        self.version_clock.set(v);
        v
    }

    fn batch(&self, ops: Vec<BatchOp>, wall_ms: u64) -> Result<(Response, Option<u64>), Response> {
        if ops.is_empty() {
            return Err(err(ErrorKind::BadRequest, "a batch needs at least one op"));
        }
        if ops.len() > self.cfg.max_batch_ops {
            return Err(err(
                ErrorKind::TooLarge,
                format!("more than {} ops in one batch", self.cfg.max_batch_ops),
            ));
        }
        // Check everything first, and find each put's current state.
        let mut checked = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                BatchOp::Put(k, v) => {
                    self.reader.check_key(&k)?;
                    self.check_value(&v)?;
                    let ikey = self.reader.internal_key(&k);
                    let current = self.latest(&ikey)?;
                    checked.push((ikey, Some((v, current))));
                }
                BatchOp::PutIfAbsent(k, v) => {
                    self.reader.check_key(&k)?;
                    self.check_value(&v)?;
                    let ikey = self.reader.internal_key(&k);
                    let current = self.latest(&ikey)?;
                    Self::check_cond(&Condition::IfAbsent, current.as_ref().map(|(v, _)| *v))?;
                    checked.push((ikey, Some((v, current))));
                }
                BatchOp::Delete(k) => {
                    self.reader.check_key(&k)?;
                    checked.push((self.reader.internal_key(&k), None));
                }
            }
        }
        // The ops take consecutive versions, in order (the API promises it), each above the
        // version its key had.
        let floor = checked
            .iter()
            .enumerate()
            .filter_map(|(i, (_, put))| {
                let (_, current) = put.as_ref()?;
                let (prev, _) = current.as_ref()?;
                Some((prev + 1).saturating_sub(i as u64))
            })
            .max();
        let base = self.next_version(wall_ms, floor.map(|f| f.saturating_sub(1)));
        let last = base + checked.len() as u64 - 1;
        self.version_clock.set(last);
        let mut b = WriteBatch::new();
        for (i, (ikey, put)) in checked.into_iter().enumerate() {
            match put {
                Some((v, current)) => {
                    let created = current.map_or(wall_ms, |(_, s)| s.created_ms);
                    b.put(ikey, encode_value(created, wall_ms, base + i as u64, &v));
                }
                None => {
                    b.delete(ikey);
                }
            }
        }
        let seq = self.db.write_deferred(b).map_err(engine_err)?;
        Ok((Response::Written { version: last }, Some(seq)))
    }
}

/// Adapts `DbIter` to yield versions.
struct VersionedScan(crate::DbIter);

impl Iterator for VersionedScan {
    type Item = crate::Result<crate::db::Versioned>;
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next_versioned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Background, Options, SimDisk, StallPolicy};

    fn node() -> Node {
        let opts = Options {
            background: Background::Manual,
            stall: StallPolicy::Refuse,
            ..Options::default()
        };
        let db = Arc::new(Db::open(Arc::new(SimDisk::new()), opts).unwrap());
        Node::new(
            db,
            NodeConfig {
                partitions: 8,
                ..NodeConfig::default()
            },
        )
    }

    /// Sends one request; runs persists as a driver would; returns the reply.
    fn call(n: &mut Node, wall_ms: u64, request: Request) -> Response {
        let mut out = Vec::new();
        n.handle(wall_ms, Input::Client { id: 7, request }, &mut out);
        loop {
            match out.pop() {
                Some(Output::Reply { response, .. }) => return response,
                Some(Output::Persist) => {
                    let upto = n.db().persist().unwrap();
                    n.handle(wall_ms, Input::Persisted { upto }, &mut out);
                }
                Some(Output::Background) => {
                    let result = n.db().do_background_work().map_err(|e| e.to_string());
                    n.handle(wall_ms, Input::BackgroundDone { result }, &mut out);
                }
                Some(other) => panic!("a node of one emitted {other:?}"),
                None => panic!("no reply"),
            }
        }
    }

    fn put(key: &str, value: &str) -> Request {
        Request::Put {
            key: key.into(),
            value: value.into(),
            cond: Condition::None,
        }
    }

    #[test]
    fn a_durable_write_is_answered_only_after_its_persist() {
        let mut n = node();
        let mut out = Vec::new();
        n.handle(
            5,
            Input::Client {
                id: 1,
                request: put("k", "v"),
            },
            &mut out,
        );
        assert_eq!(out, vec![Output::Persist], "no reply before the fsync");
        // A second write while the first persist runs starts a second one; a third, with two
        // running, rides on whichever comes next.
        n.handle(
            6,
            Input::Client {
                id: 2,
                request: put("k2", "v"),
            },
            &mut out,
        );
        assert_eq!(out, vec![Output::Persist, Output::Persist]);
        n.handle(
            6,
            Input::Client {
                id: 4,
                request: put("k3", "v"),
            },
            &mut out,
        );
        assert_eq!(out.len(), 2, "at most two persists at once");
        // Not visible to readers yet.
        let mut r = Vec::new();
        n.handle(
            6,
            Input::Client {
                id: 3,
                request: Request::Get { key: b"k".to_vec() },
            },
            &mut r,
        );
        assert_eq!(
            r,
            vec![Output::Reply {
                id: 3,
                response: Response::NotFound
            }]
        );
        let upto = n.db().persist().unwrap();
        out.clear();
        n.handle(0, Input::Persisted { upto }, &mut out);
        assert!(matches!(out[0], Output::Reply { id: 1, .. }));
        assert!(matches!(out[1], Output::Reply { id: 2, .. }));
        assert!(matches!(out[2], Output::Reply { id: 4, .. }));
        assert_eq!(
            out.len(),
            3,
            "the persist covered every write applied before it: {out:?}"
        );
        // The other persist finishing releases nothing more and asks for nothing.
        out.clear();
        n.handle(0, Input::Persisted { upto }, &mut out);
        assert!(out.is_empty());
    }

    fn node_with(opts: Options) -> Node {
        let db = Arc::new(Db::open(Arc::new(SimDisk::new()), opts).unwrap());
        Node::new(
            db,
            NodeConfig {
                partitions: 4,
                ..NodeConfig::default()
            },
        )
    }

    #[test]
    fn interval_mode_persists_on_the_nodes_timer() {
        let mut n = node_with(Options {
            background: Background::Manual,
            stall: StallPolicy::Refuse,
            sync: SyncMode::Interval { ms: 100 },
            ..Options::default()
        });
        assert_eq!(n.next_deadline(), None, "nothing written, nothing to sync");
        let mut out = Vec::new();
        n.handle(
            1_000,
            Input::Client {
                id: 1,
                request: put("k", "v"),
            },
            &mut out,
        );
        assert!(
            matches!(out.as_slice(), [Output::Reply { id: 1, .. }]),
            "interval mode answers at once: {out:?}"
        );
        assert_eq!(n.next_deadline(), Some(1_100));
        out.clear();
        n.handle(1_099, Input::Timeout, &mut out);
        assert!(out.is_empty(), "too early: {out:?}");
        n.handle(1_100, Input::Timeout, &mut out);
        assert_eq!(out, vec![Output::Persist]);
        assert_eq!(n.next_deadline(), None, "the persist covers every write");
        let upto = n.db().persist().unwrap();
        out.clear();
        n.handle(1_150, Input::Persisted { upto }, &mut out);
        assert!(out.is_empty());
        assert_eq!(n.next_deadline(), None);
        // A later write starts a new period from its own time.
        n.handle(
            2_000,
            Input::Client {
                id: 2,
                request: put("k", "w"),
            },
            &mut out,
        );
        assert_eq!(n.next_deadline(), Some(2_100));
    }

    #[test]
    fn an_engine_without_threads_gets_its_background_work_from_the_node() {
        let mut n = node_with(Options {
            background: Background::Manual,
            stall: StallPolicy::Refuse,
            sync: SyncMode::None,
            ..Options::tiny()
        });
        let mut out = Vec::new();
        let mut id = 0;
        while !out.contains(&Output::Background) {
            id += 1;
            assert!(id < 1_000, "no background work was ever asked for");
            let request = put(&format!("key{id:04}"), "some value bytes");
            n.handle(5, Input::Client { id, request }, &mut out);
        }
        // One at a time: more writes while it runs ask for nothing more.
        out.clear();
        for extra in 0..50 {
            let request = put(&format!("more{extra:04}"), "some value bytes");
            n.handle(
                6,
                Input::Client {
                    id: 5_000 + extra,
                    request,
                },
                &mut out,
            );
        }
        assert!(!out.contains(&Output::Background), "{out:?}");
        let result = n.db().do_background_work().map_err(|e| e.to_string());
        assert!(matches!(result, Ok(units) if units > 0));
        out.clear();
        n.handle(7, Input::BackgroundDone { result }, &mut out);
        assert_eq!(n.stats().backgrounds, 1);
        assert!(n.db().stats().flushes > 0, "the flush ran");
        assert_eq!(
            call(
                &mut n,
                8,
                Request::Get {
                    key: b"key0001".to_vec()
                }
            ),
            Response::Value {
                value: b"some value bytes".to_vec(),
                // The first version this node gave, at 5 ms.
                version: 5 << VERSION_COUNTER_BITS,
                created_ms: 5,
                modified_ms: 5
            }
        );
    }

    #[test]
    fn incr_adds_in_one_step_with_redis_integer_rules() {
        // Two nodes, and every call through the one that does not own the key half the time:
        // the increment is forwarded like any write.
        let mut net = Net::new(&["a", "b"]);
        net.input(0, Input::Coordinator(CoordEvent::Elected));
        let incr = |by| Request::Incr {
            key: b"n".to_vec(),
            by,
        };
        let value = |r: Response| match r {
            Response::Value { value, .. } => String::from_utf8(value).unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(value(net.call(0, 1, incr(5))), "5", "absent counts as 0");
        assert_eq!(value(net.call(1, 2, incr(-7))), "-2");
        net.call(0, 3, put("n", &i64::MAX.to_string()));
        let r = net.call(0, 4, incr(1));
        assert!(
            matches!(&r, Response::Error { kind: ErrorKind::BadRequest, message } if message.contains("overflow")),
            "{r:?}"
        );
        for bad in [
            "abc",
            " 1",
            "+1",
            "01",
            "-0",
            "",
            "1.5",
            "99999999999999999999",
        ] {
            net.call(0, 5, put("n", bad));
            let r = net.call(1, 6, incr(1));
            assert!(
                matches!(
                    &r,
                    Response::Error {
                        kind: ErrorKind::BadRequest,
                        ..
                    }
                ),
                "{bad:?}: {r:?}"
            );
        }
        assert_eq!(parse_decimal(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_decimal(b"0"), Some(0));
    }

    #[test]
    fn versions_go_up_per_key_and_survive_in_the_envelope() {
        let n = Node::new(
            Arc::new(Db::open(Arc::new(crate::SimDisk::new()), Options::tiny()).expect("open")),
            NodeConfig::default(),
        );
        // Above the key's previous version even when the clock is behind it.
        let v1 = n.next_version(1, None);
        let v2 = n.next_version(1, Some(v1));
        assert!(v2 > v1);
        let far = n.next_version(1, Some(u64::from(u32::MAX) << 12));
        assert!(far > u64::from(u32::MAX) << 12);
        // Never back, even when the clock is.
        assert!(n.next_version(0, None) > far);
        // Round trip through the envelope, and the old envelope's version is the sequence.
        let raw = encode_value(3, 4, 77, b"abc");
        let s = decode_value(raw).expect("decodes");
        assert_eq!((s.created_ms, s.modified_ms, s.version(9)), (3, 4, 77));
        assert_eq!(s.value, b"abc");
        let mut old = vec![ENVELOPE_V1];
        old.extend_from_slice(&3u64.to_le_bytes());
        old.extend_from_slice(&4u64.to_le_bytes());
        old.extend_from_slice(b"xyz");
        let s = decode_value(old).expect("decodes");
        assert_eq!((s.version(9), s.value.as_slice()), (9, &b"xyz"[..]));
        assert!(decode_value(vec![2, 1, 2]).is_err());
        assert!(decode_value(vec![9; 40]).is_err());
    }

    /// A tiny cluster in one thread: nodes, a coordinator store, and a queue of messages
    /// delivered in order.
    struct Net {
        nodes: Vec<Node>,
        stored: Option<ClusterState>,
        stamp: i64,
        replies: Vec<(usize, u64, Response)>,
        now: u64,
    }

    impl Net {
        fn new(ids: &[&str]) -> Net {
            let members: Vec<Member> = ids
                .iter()
                .map(|id| Member {
                    id: id.to_string(),
                    http: String::new(),
                    peer: String::new(),
                })
                .collect();
            let mut net = Net {
                nodes: Vec::new(),
                stored: None,
                stamp: -1,
                replies: Vec::new(),
                now: 1_000,
            };
            for id in ids {
                net.add_node(id);
            }
            for i in 0..ids.len() {
                net.input(i, Input::Coordinator(CoordEvent::Connected));
                net.input(i, Input::Coordinator(CoordEvent::Members(members.clone())));
                let st = CoordEvent::State {
                    state: None,
                    stamp: -1,
                };
                net.input(i, Input::Coordinator(st));
            }
            net
        }

        fn members(&self) -> Vec<Member> {
            self.nodes
                .iter()
                .map(|n| Member {
                    id: n.cfg.node_id.clone(),
                    http: String::new(),
                    peer: String::new(),
                })
                .collect()
        }

        /// A new node joins: connects, sees the members and the state; everyone sees it.
        fn join(&mut self, id: &str) {
            self.add_node(id);
            let i = self.nodes.len() - 1;
            self.input(i, Input::Coordinator(CoordEvent::Connected));
            let st = CoordEvent::State {
                state: self.stored.clone(),
                stamp: self.stamp,
            };
            self.input(i, Input::Coordinator(st));
            let ms = self.members();
            for j in 0..self.nodes.len() {
                self.input(j, Input::Coordinator(CoordEvent::Members(ms.clone())));
            }
        }

        /// Time passes: every node gets timeouts until nothing is due.
        fn settle(&mut self) {
            for _ in 0..200 {
                self.now += 100;
                for j in 0..self.nodes.len() {
                    self.input(j, Input::Timeout);
                }
            }
        }

        fn add_node(&mut self, id: &str) {
            {
                let db = Arc::new(
                    Db::open(
                        Arc::new(SimDisk::new()),
                        Options {
                            background: Background::Manual,
                            stall: StallPolicy::Refuse,
                            ..Options::default()
                        },
                    )
                    .unwrap(),
                );
                let n = Node::new_clustered(
                    db,
                    NodeConfig {
                        node_id: id.to_string(),
                        partitions: 16,
                        ..NodeConfig::default()
                    },
                );
                self.nodes.push(n);
            }
        }

        fn index(&self, id: &str) -> usize {
            self.nodes.iter().position(|n| n.cfg.node_id == id).unwrap()
        }

        /// Feeds one input and carries out every output, in FIFO order, until all is quiet.
        fn input(&mut self, i: usize, input: Input) {
            let mut queue = VecDeque::from([(i, input)]);
            let mut steps = 0;
            while let Some((i, input)) = queue.pop_front() {
                steps += 1;
                assert!(steps < 1_000_000, "the cluster never went quiet");
                let mut out = Vec::new();
                self.nodes[i].handle(self.now, input, &mut out);
                for o in out {
                    match o {
                        Output::Reply { id, response } => self.replies.push((i, id, response)),
                        Output::Persist => {
                            let upto = self.nodes[i].db().persist().unwrap();
                            queue.push_back((i, Input::Persisted { upto }));
                        }
                        Output::Background => {}
                        Output::Send { to, message } => {
                            let from = self.nodes[i].cfg.node_id.clone();
                            let j = self.index(&to);
                            queue.push_back((j, Input::Peer { from, message }));
                        }
                        Output::Coordinator(CoordCommand::WriteState { state, expected }) => {
                            let ok = expected == self.stamp;
                            if ok {
                                self.stored = Some(state);
                                self.stamp += 1;
                            }
                            let done = CoordEvent::WriteDone {
                                ok,
                                message: String::new(),
                            };
                            queue.push_back((i, Input::Coordinator(done)));
                            if ok {
                                for j in 0..self.nodes.len() {
                                    let st = CoordEvent::State {
                                        state: self.stored.clone(),
                                        stamp: self.stamp,
                                    };
                                    queue.push_back((j, Input::Coordinator(st)));
                                }
                            }
                        }
                    }
                }
            }
        }

        fn call(&mut self, i: usize, id: u64, request: Request) -> Response {
            self.input(i, Input::Client { id, request });
            let at = self
                .replies
                .iter()
                .position(|(n, r, _)| *n == i && *r == id)
                .expect("a reply");
            self.replies.remove(at).2
        }
    }

    #[test]
    fn any_node_serves_any_key_by_forwarding_to_its_owner() {
        let mut net = Net::new(&["a", "b", "c"]);
        assert!(matches!(
            net.call(1, 1, put("k", "v")),
            Response::Error {
                kind: ErrorKind::Unavailable,
                ..
            }
        ));
        net.input(0, Input::Coordinator(CoordEvent::Elected));
        assert_eq!(net.nodes[0].cluster().role, Role::Leader);
        assert_eq!(net.nodes[1].cluster().role, Role::Follower);
        let map = net.nodes[2].cluster();
        assert_eq!((map.epoch, map.leader.as_deref()), (1, Some("a")));
        for id in ["a", "b", "c"] {
            assert!(map.owners.iter().any(|o| o == id), "{id} owns nothing");
        }
        // Written through every node, read through every node.
        for k in 0..60u64 {
            let via = (k % 3) as usize;
            let key = format!("key{k:03}");
            let r = net.call(via, 100 + k, put(&key, &key));
            assert!(matches!(r, Response::Written { .. }), "{key}: {r:?}");
        }
        for k in 0..60u64 {
            let key = format!("key{k:03}");
            for via in 0..3 {
                let r = net.call(
                    via,
                    1_000 + k,
                    Request::Get {
                        key: key.clone().into(),
                    },
                );
                let Response::Value { value, .. } = r else {
                    panic!("{key} via {via}: {r:?}")
                };
                assert_eq!(value, key.as_bytes());
            }
        }
        // A scan through any node merges every owner's part, in order, across pages.
        let mut got = Vec::new();
        let mut after = None;
        loop {
            let r = net.call(1, 5_000, Request::scan_prefix(b"key".to_vec(), after, 7));
            let Response::Page { items, next_after } = r else {
                panic!("{r:?}")
            };
            got.extend(items.into_iter().map(|i| i.key));
            match next_after {
                Some(a) => after = Some(a),
                None => break,
            }
        }
        let want: Vec<Vec<u8>> = (0..60).map(|k| format!("key{k:03}").into_bytes()).collect();
        assert_eq!(got, want);
        // A batch within one owner's partitions is fine; one spanning owners is refused whole.
        let span = Request::Batch {
            ops: (0..20)
                .map(|k| BatchOp::Put(format!("b{k}").into_bytes(), b"x".to_vec()))
                .collect(),
        };
        assert!(matches!(
            net.call(0, 6_000, span),
            Response::Error {
                kind: ErrorKind::BadRequest,
                ..
            }
        ));
        assert_eq!(
            net.call(
                2,
                6_001,
                Request::Get {
                    key: b"b0".to_vec()
                }
            ),
            Response::NotFound
        );
    }

    #[test]
    fn a_joining_node_gets_partitions_by_hand_off_with_every_key_intact() {
        let mut net = Net::new(&["a", "b"]);
        net.input(0, Input::Coordinator(CoordEvent::Elected));
        for k in 0..400u64 {
            let key = format!("key{k:03}");
            let r = net.call((k % 2) as usize, k, put(&key, &format!("v{k}")));
            assert!(matches!(r, Response::Written { .. }), "{r:?}");
        }
        for k in 0..50u64 {
            let key = format!("key{k:03}");
            net.call(
                0,
                10_000 + k,
                Request::Delete {
                    key: key.into(),
                    cond: Condition::None,
                },
            );
        }
        net.join("c");
        net.settle();
        let view = net.nodes[0].cluster();
        assert!(view.moving.is_empty(), "moves left: {:?}", view.moving);
        for id in ["a", "b", "c"] {
            let n = view.owners.iter().filter(|o| *o == id).count();
            assert!((5..=6).contains(&n), "{id} owns {n} of 16");
        }
        for via in 0..3 {
            for k in 0..400u64 {
                let key = format!("key{k:03}");
                let r = net.call(
                    via,
                    20_000 + k,
                    Request::Get {
                        key: key.clone().into(),
                    },
                );
                if k < 50 {
                    assert_eq!(r, Response::NotFound, "{key} was deleted (via {via})");
                } else {
                    let Response::Value { value, .. } = r else {
                        panic!("{key} via {via}: {r:?}")
                    };
                    assert_eq!(value, format!("v{k}").as_bytes());
                }
            }
        }
        // The old owners dropped their copies of the moved partitions.
        let c_parts: Vec<u16> = (0..16u16)
            .filter(|p| view.owners[*p as usize] == "c")
            .collect();
        for n in &net.nodes[..2] {
            for p in &c_parts {
                let pre = p.to_be_bytes();
                let left = n.db().scan_prefix(&pre).unwrap().count();
                assert_eq!(left, 0, "{} still holds partition {p}", n.cfg.node_id);
            }
        }
    }

    #[test]
    fn a_decommissioned_node_is_emptied() {
        let mut net = Net::new(&["a", "b", "c"]);
        net.input(0, Input::Coordinator(CoordEvent::Elected));
        for k in 0..300u64 {
            net.call((k % 3) as usize, k, put(&format!("k{k}"), "v"));
        }
        // Asked through a follower: it goes to the leader.
        net.input(
            2,
            Input::Admin {
                id: 77,
                command: AdminCommand::Decommission { node: "c".into() },
            },
        );
        assert!(net
            .replies
            .iter()
            .any(|(_, id, r)| *id == 77 && *r == Response::Accepted));
        net.settle();
        let view = net.nodes[1].cluster();
        assert!(view.owners.iter().all(|o| o != "c"), "{:?}", view.owners);
        assert!(view.moving.is_empty());
        for k in 0..300u64 {
            let r = net.call(
                1,
                1_000 + k,
                Request::Get {
                    key: format!("k{k}").into(),
                },
            );
            assert!(matches!(r, Response::Value { .. }), "k{k}: {r:?}");
        }
        assert_eq!(
            net.nodes[2]
                .db()
                .scan(Bound::Unbounded, Bound::Unbounded)
                .unwrap()
                .count(),
            0
        );
    }

    /// Keys of partition `p` left after copying a page in (not yet durable) and wiping the
    /// partition, as a restarted copy does.
    fn left_after_wipe() -> usize {
        let mut net = Net::new(&["a"]);
        net.input(0, Input::Coordinator(CoordEvent::Elected));
        let n = &mut net.nodes[0];
        let p = 3u16;
        let mut b = WriteBatch::new();
        for k in 0..5u8 {
            let mut ik = p.to_be_bytes().to_vec();
            ik.extend_from_slice(&[b'k', k]);
            b.put(ik, encode_value(1, 1, 1, b"v"));
        }
        n.db().write_deferred(b).unwrap();
        let mut out = Vec::new();
        n.delete_partition(p, usize::MAX, None, &mut out).unwrap();
        n.db().persist().unwrap();
        let left = n.db().scan_prefix(&p.to_be_bytes()).unwrap().count();
        left
    }

    #[test]
    fn wiping_a_partition_also_deletes_writes_not_yet_durable() {
        assert_eq!(
            left_after_wipe(),
            0,
            "the wipe missed writes that were not durable yet"
        );
        // The test sees the bug it pins.
        #[cfg(feature = "bugs")]
        {
            crate::bugs::enable(crate::bugs::Bug::WipeOnlyDurable);
            let left = left_after_wipe();
            crate::bugs::clear();
            assert_eq!(left, 5);
        }
    }

    #[test]
    fn a_decommission_while_the_leader_writes_waits_for_the_next_write() {
        let mut net = Net::new(&["a", "b", "c", "d"]);
        net.input(0, Input::Coordinator(CoordEvent::Elected));
        net.settle();
        let decommission = |node: &str, id| Input::Admin {
            id,
            command: AdminCommand::Decommission { node: node.into() },
        };
        // Two requests before the coordinator answers the first one's write.
        let mut out = Vec::new();
        let now = net.now;
        net.nodes[0].handle(now, decommission("c", 1), &mut out);
        net.nodes[0].handle(now, decommission("d", 2), &mut out);
        let writes: Vec<(ClusterState, i64)> = out
            .iter()
            .filter_map(|o| match o {
                Output::Coordinator(CoordCommand::WriteState { state, expected }) => {
                    Some((state.clone(), *expected))
                }
                _ => None,
            })
            .collect();
        assert_eq!(writes.len(), 1, "one state write at a time: {out:?}");
        // The coordinator carries out that write; the second request follows in the next.
        let (state, expected) = writes[0].clone();
        assert_eq!(expected, net.stamp);
        net.stored = Some(state);
        net.stamp += 1;
        let done = CoordEvent::WriteDone {
            ok: true,
            message: String::new(),
        };
        net.input(0, Input::Coordinator(done));
        for j in 0..4 {
            let st = CoordEvent::State {
                state: net.stored.clone(),
                stamp: net.stamp,
            };
            net.input(j, Input::Coordinator(st));
        }
        net.settle();
        let owners = net.nodes[1].cluster().owners;
        assert!(
            owners.iter().all(|o| o != "c" && o != "d"),
            "both nodes were emptied: {owners:?}"
        );
    }

    #[test]
    fn a_leader_steps_down_on_disconnect_and_a_stale_claim_changes_nothing() {
        let mut net = Net::new(&["a", "b"]);
        net.input(0, Input::Coordinator(CoordEvent::Elected));
        assert_eq!(net.nodes[0].cluster().role, Role::Leader);
        net.input(0, Input::Coordinator(CoordEvent::Disconnected));
        assert_eq!(
            net.nodes[0].cluster().role,
            Role::Follower,
            "steps down on the connection loss, before any expiry"
        );
        net.input(1, Input::Coordinator(CoordEvent::Elected));
        let view = net.nodes[1].cluster();
        assert_eq!((view.role, view.epoch), (Role::Leader, 2));
        let before = net.stored.clone();
        // The old leader comes back with an old stamp: its write is refused.
        let mut out = Vec::new();
        net.nodes[0].handle(2_000, Input::Coordinator(CoordEvent::Connected), &mut out);
        assert!(
            out.is_empty(),
            "a reconnected ex-leader claims nothing unasked: {out:?}"
        );
        assert_eq!(net.stored, before);
        // The map it sees names b as leader.
        assert_eq!(net.nodes[0].cluster().leader.as_deref(), Some("b"));
    }

    #[test]
    fn a_dead_owners_keys_answer_unavailable_others_keep_serving() {
        let mut net = Net::new(&["a", "b"]);
        net.input(0, Input::Coordinator(CoordEvent::Elected));
        // b leaves the member list (its session expired).
        let only_a = vec![Member {
            id: "a".into(),
            http: String::new(),
            peer: String::new(),
        }];
        net.input(0, Input::Coordinator(CoordEvent::Members(only_a)));
        let (mut down, mut up) = (0, 0);
        for k in 0..40u64 {
            let key = format!("k{k}");
            match net.call(0, k, put(&key, "v")) {
                Response::Written { .. } => up += 1,
                Response::Error {
                    kind: ErrorKind::Unavailable,
                    message,
                } => {
                    assert!(message.contains("node b"), "{message}");
                    down += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(down > 0 && up > 0, "down {down}, up {up}");
    }

    #[test]
    fn versions_times_and_conditions() {
        let mut n = node();
        let Response::Written { version: v1 } = call(&mut n, 100, put("k", "a")) else {
            panic!()
        };
        let Response::Written { version: v2 } = call(&mut n, 200, put("k", "b")) else {
            panic!()
        };
        assert!(v2 > v1);
        assert_eq!(
            call(&mut n, 300, Request::Get { key: b"k".to_vec() }),
            Response::Value {
                value: b"b".to_vec(),
                version: v2,
                created_ms: 100,
                modified_ms: 200
            }
        );
        let stale = Request::Put {
            key: b"k".to_vec(),
            value: b"c".to_vec(),
            cond: Condition::IfMatch(v1),
        };
        assert_eq!(
            call(&mut n, 300, stale),
            Response::PreconditionFailed { current: Some(v2) }
        );
        let create_only = Request::Put {
            key: b"k".to_vec(),
            value: b"c".to_vec(),
            cond: Condition::IfAbsent,
        };
        assert!(matches!(
            call(&mut n, 300, create_only),
            Response::PreconditionFailed { .. }
        ));
        let del = Request::Delete {
            key: b"k".to_vec(),
            cond: Condition::IfMatch(v2),
        };
        assert!(matches!(call(&mut n, 400, del), Response::Deleted { .. }));
        assert_eq!(
            call(&mut n, 400, Request::Get { key: b"k".to_vec() }),
            Response::NotFound
        );
        let Response::Written { .. } = call(&mut n, 500, put("k", "again")) else {
            panic!()
        };
        let Response::Value { created_ms, .. } =
            call(&mut n, 600, Request::Get { key: b"k".to_vec() })
        else {
            panic!()
        };
        assert_eq!(
            created_ms, 500,
            "a key created again gets a new creation time"
        );
        assert_eq!(
            call(
                &mut n,
                600,
                Request::Delete {
                    key: b"missing".to_vec(),
                    cond: Condition::None
                }
            ),
            Response::NotFound
        );
    }

    #[test]
    fn scans_merge_partitions_in_key_order_and_page() {
        let mut n = node();
        let keys: Vec<String> = (0..25).map(|i| format!("user:{i:03}")).collect();
        for k in &keys {
            call(&mut n, 1, put(k, k));
        }
        call(&mut n, 1, put("other", "x"));
        let mut got = Vec::new();
        let mut after = None;
        loop {
            let r = call(
                &mut n,
                1,
                Request::scan_prefix(b"user:".to_vec(), after.clone(), 4),
            );
            let Response::Page { items, next_after } = r else {
                panic!("{r:?}")
            };
            assert!(items.len() <= 4);
            got.extend(items.into_iter().map(|i| String::from_utf8(i.key).unwrap()));
            match next_after {
                Some(a) => after = Some(a),
                None => break,
            }
        }
        assert_eq!(got, keys);
    }

    #[test]
    fn limits_are_enforced() {
        let mut n = node();
        let big = Request::Put {
            key: vec![b'k'; 9 << 10],
            value: Vec::new(),
            cond: Condition::None,
        };
        assert!(matches!(
            call(&mut n, 1, big),
            Response::Error {
                kind: ErrorKind::TooLarge,
                ..
            }
        ));
        let big = Request::Put {
            key: b"k".to_vec(),
            value: vec![0; (1 << 20) + 1],
            cond: Condition::None,
        };
        assert!(matches!(
            call(&mut n, 1, big),
            Response::Error {
                kind: ErrorKind::TooLarge,
                ..
            }
        ));
        assert_eq!(
            call(&mut n, 1, Request::Get { key: b"k".to_vec() }),
            Response::NotFound
        );
    }
}
