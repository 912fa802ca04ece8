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

use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::Arc;

use crate::db::{prefix_end, Db};
use crate::error::Error;
use crate::format::hash64;
use crate::options::{Background, SyncMode};
use crate::WriteBatch;

const ENVELOPE_VERSION: u8 = 1;
/// Persists (fsyncs) in flight at once.
const MAX_PERSISTS: usize = 2;
const ENVELOPE_LEN: usize = 17;

/// Limits and identity.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: String,
    pub partitions: u16,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_batch_ops: usize,
    pub max_scan_limit: usize,
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

#[derive(Debug)]
pub enum Input {
    Client {
        id: u64,
        request: Request,
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
}

/// The read side of the node: stateless over the engine, so a driver may run reads on any
/// thread, outside the node's single door. Reads see only persisted writes.
#[derive(Clone)]
pub struct Reader {
    db: Arc<Db>,
    cfg: NodeConfig,
}

impl Reader {
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
            Ok(Some((version, raw))) => {
                let s = decode_value(raw)?;
                Ok(Response::Value {
                    value: s.value,
                    version,
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
        let limit = limit.clamp(1, self.cfg.max_scan_limit);
        let snap = self.db.snapshot();
        let mut iters = Vec::with_capacity(self.cfg.partitions as usize);
        for p in 0..self.cfg.partitions {
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
            let Some((k, version, raw)) = heads[b].take() else {
                break;
            };
            heads[b] = iters[b].next().transpose().map_err(engine_err)?;
            let s = decode_value(raw)?;
            items.push(Item {
                key: k[2..].to_vec(),
                value: s.value,
                version,
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
    waiting: VecDeque<(u64, u64, Response)>,
    /// Persists running now (at most `MAX_PERSISTS`).
    persists_running: usize,
    /// The newest sequence number a requested persist is sure to cover.
    persist_requested: u64,
    persists: u64,
    durable: bool,
    cluster: ClusterView,
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

struct Stored {
    created_ms: u64,
    modified_ms: u64,
    value: Vec<u8>,
}

fn encode_value(created_ms: u64, modified_ms: u64, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(ENVELOPE_LEN + value.len());
    v.push(ENVELOPE_VERSION);
    v.extend_from_slice(&created_ms.to_le_bytes());
    v.extend_from_slice(&modified_ms.to_le_bytes());
    v.extend_from_slice(value);
    v
}

fn decode_value(mut raw: Vec<u8>) -> Result<Stored, Response> {
    if raw.len() < ENVELOPE_LEN || raw[0] != ENVELOPE_VERSION {
        return Err(err(
            ErrorKind::Internal,
            "stored value has an unknown envelope",
        ));
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&raw[1..9]);
    let created_ms = u64::from_le_bytes(a);
    a.copy_from_slice(&raw[9..17]);
    let modified_ms = u64::from_le_bytes(a);
    raw.drain(..ENVELOPE_LEN);
    Ok(Stored {
        created_ms,
        modified_ms,
        value: raw,
    })
}

impl Node {
    pub fn new(db: Arc<Db>, cfg: NodeConfig) -> Node {
        let durable = db.options().sync == SyncMode::Always;
        let drive_background = db.options().background == Background::Manual;
        let persist_every_ms = match db.options().sync {
            SyncMode::Interval { ms } if drive_background => Some(ms.max(1)),
            _ => None,
        };
        let cluster = ClusterView {
            role: Role::Leader,
            leader: Some(cfg.node_id.clone()),
            epoch: 1,
            members: vec![cfg.node_id.clone()],
            owners: vec![cfg.node_id.clone(); usize::from(cfg.partitions)],
            map_version: 1,
        };
        Node {
            reader: Reader {
                db: db.clone(),
                cfg: cfg.clone(),
            },
            cluster,
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

    pub fn cluster(&self) -> &ClusterView {
        &self.cluster
    }

    pub fn stats(&self) -> NodeStats {
        NodeStats {
            waiting_for_persist: self.waiting.len(),
            persists: self.persists,
            backgrounds: self.backgrounds,
        }
    }

    /// When the driver must call [`handle`](Self::handle) with [`Input::Timeout`] at the
    /// latest (milliseconds since the Unix epoch), if nothing else arrives first.
    pub fn next_deadline(&self) -> Option<u64> {
        match (self.persist_every_ms, self.unpersisted_since) {
            (Some(every), Some(since)) => Some(since.saturating_add(every)),
            _ => None,
        }
    }

    /// The one door. `now` is the driver's wall clock in milliseconds since the Unix epoch.
    pub fn handle(&mut self, now: u64, input: Input, out: &mut Vec<Output>) {
        match input {
            Input::Client { id, request } => self.handle_request(id, now, request, out),
            Input::Timeout => {}
            Input::BackgroundDone { result: _ } => {
                self.background_running = false;
                self.backgrounds += 1;
            }
            Input::Persisted { upto } => {
                self.persists_running = self.persists_running.saturating_sub(1);
                self.persists += 1;
                while self.waiting.front().is_some_and(|(seq, _, _)| *seq <= upto) {
                    let (_, id, response) = self.waiting.pop_front().expect("checked");
                    out.push(Output::Reply { id, response });
                }
                self.request_persist(out);
            }
            Input::PersistFailed { message } => {
                self.persists_running = self.persists_running.saturating_sub(1);
                for (_, id, _) in self.waiting.drain(..) {
                    out.push(Output::Reply {
                        id,
                        response: err(
                            ErrorKind::Unavailable,
                            format!("the write was not made durable: {message}"),
                        ),
                    });
                }
            }
        }
        self.tick(now, out);
    }

    /// Work that depends on time or on the engine's state rather than on one input: the
    /// interval persist, and background work for an engine without threads.
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

    fn handle_request(&mut self, id: u64, wall_ms: u64, request: Request, out: &mut Vec<Output>) {
        let result = match request {
            Request::Get { key } => self.reader.get(&key).map(|r| (r, None)),
            Request::Put { key, value, cond } => self.put(&key, &value, &cond, wall_ms),
            Request::Delete { key, cond } => self.delete(&key, &cond),
            Request::Scan {
                start,
                end,
                after,
                limit,
            } => self
                .reader
                .scan(start, end, after, limit)
                .map(|r| (r, None)),
            Request::Batch { ops } => self.batch(ops, wall_ms),
        };
        let (response, seq) = result.unwrap_or_else(|r| (r, None));
        if let Some(seq) = seq {
            self.last_written = self.last_written.max(seq);
        }
        match seq {
            Some(seq) if self.durable => {
                self.waiting.push_back((seq, id, response));
                self.request_persist(out);
            }
            _ => out.push(Output::Reply { id, response }),
        }
    }

    /// The latest applied state of a key (including writes not yet persisted), for conditions.
    fn latest(&self, ikey: &[u8]) -> Result<Option<(u64, Stored)>, Response> {
        match self.db.get_latest(ikey) {
            Ok(Some((v, raw))) => Ok(Some((v, decode_value(raw)?))),
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
        let created = current.map_or(wall_ms, |(_, s)| s.created_ms);
        let mut b = WriteBatch::new();
        b.put(ikey, encode_value(created, wall_ms, value));
        let seq = self.db.write_deferred(b).map_err(engine_err)?;
        Ok((Response::Written { version: seq }, Some(seq)))
    }

    fn delete(&self, key: &[u8], cond: &Condition) -> Result<(Response, Option<u64>), Response> {
        self.reader.check_key(key)?;
        let ikey = self.reader.internal_key(key);
        let current = self.latest(&ikey)?;
        Self::check_cond(cond, current.as_ref().map(|(v, _)| *v))?;
        if current.is_none() {
            return Ok((Response::NotFound, None));
        }
        let mut b = WriteBatch::new();
        b.delete(ikey);
        let seq = self.db.write_deferred(b).map_err(engine_err)?;
        Ok((Response::Deleted { version: seq }, Some(seq)))
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
        let mut b = WriteBatch::new();
        for op in ops {
            match op {
                BatchOp::Put(k, v) => {
                    self.reader.check_key(&k)?;
                    self.check_value(&v)?;
                    let ikey = self.reader.internal_key(&k);
                    let created = self.latest(&ikey)?.map_or(wall_ms, |(_, s)| s.created_ms);
                    b.put(ikey, encode_value(created, wall_ms, &v));
                }
                BatchOp::Delete(k) => {
                    self.reader.check_key(&k)?;
                    b.delete(self.reader.internal_key(&k));
                }
            }
        }
        let seq = self.db.write_deferred(b).map_err(engine_err)?;
        Ok((Response::Written { version: seq }, Some(seq)))
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
                version: 1,
                created_ms: 5,
                modified_ms: 5
            }
        );
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
