//! Reads: point lookups and ordered scans over user keys. Stateless over the engine, so a
//! driver may run them on any thread, outside the node's door; they see only durable writes
//! (under `sync = always`), so no client reads a write a crash could take back.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::replica::{Before, Committed, Dirty, Leases};
use super::{engine_err, NodeConfig};
use crate::engine::db::Versioned;
use crate::engine::{Db, DbIter};
use crate::proto::envelope::{self, decode_value};
use crate::proto::{check_size, err, ErrorKind, Item, Request, Response};

/// thread, outside the node's single door. Reads see only persisted writes.
#[derive(Clone)]
pub struct Reader {
    db: Arc<Db>,
    cfg: NodeConfig,
    routes: Arc<ArcSwap<Routes>>,
    /// Keys of replicated partitions whose newest write is not committed yet.
    dirty: Arc<Dirty>,
    /// When each partition may be read here (a primary's lease).
    leases: Arc<Leases>,
}

/// Which partitions this node serves now, published by the node whenever the partition map
/// changes, so that reads answered outside the node's door route exactly as the node would.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    /// By partition: served here. `None` until a partition map is known.
    pub(crate) owned: Option<Vec<bool>>,
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
    pub(crate) fn new(
        db: Arc<Db>,
        cfg: NodeConfig,
        routes: Arc<ArcSwap<Routes>>,
        dirty: Arc<Dirty>,
        leases: Arc<Leases>,
    ) -> Reader {
        Reader {
            db,
            cfg,
            routes,
            dirty,
            leases,
        }
    }

    /// Publishes the partitions this node serves now (the node calls it on every map change).
    pub(crate) fn publish(&self, routes: Routes) {
        self.routes.store(Arc::new(routes));
    }

    /// Answers a `Get` or `Scan` here when this node serves every partition it touches;
    /// otherwise hands the request back, to go through the node (which forwards it).
    /// `now`: the driver's wall clock (milliseconds), as handed to the node.
    pub fn try_read(&self, now: u64, request: Request) -> Result<Response, Request> {
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
            Request::Get { key } => self.get(now, key).unwrap_or_else(|e| e),
            _ => self.read(now, request.clone()),
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
    pub fn read(&self, now: u64, request: Request) -> Response {
        let r = match request {
            Request::Get { key } => self.get(now, &key),
            Request::Scan {
                start,
                end,
                after,
                limit,
            } => self.scan(now, start, end, after, limit),
            _ => Err(err(ErrorKind::Internal, "a write was sent to the reader")),
        };
        r.unwrap_or_else(|e| e)
    }

    /// The partition a user key belongs to.
    pub fn partition_of(&self, key: &[u8]) -> u16 {
        envelope::partition_of(key, self.cfg.partitions)
    }

    /// The engine key of a user key.
    pub(crate) fn internal_key(&self, key: &[u8]) -> Vec<u8> {
        envelope::internal_key(self.partition_of(key), key)
    }

    pub(crate) fn check_key(&self, key: &[u8]) -> Result<(), Response> {
        check_size("key", key.len(), self.cfg.max_key_bytes)
    }

    pub(crate) fn get(&self, now: u64, key: &[u8]) -> Result<Response, Response> {
        self.check_key(key)?;
        let p = self.partition_of(key);
        if !self.leases.valid(p, now) {
            return Err(no_lease(p));
        }
        let ikey = self.internal_key(key);
        let mut found = self.db.get_versioned(&ikey);
        // Checked after the engine read: a write the read saw is either still dirty now (and
        // the committed value is answered instead) or committed.
        match self.dirty.lookup(&ikey) {
            Committed::Engine => {}
            Committed::Value(before) => found = Ok(before),
            Committed::Unknown => return Err(catching_up()),
        }
        match found {
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
        now: u64,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Response, Response> {
        let all: Vec<u16> = (0..self.cfg.partitions).collect();
        self.scan_parts(now, start, end, after, limit, &all)
    }

    /// An ordered scan over the user keys of the partitions `parts` only.
    pub(crate) fn scan_parts(
        &self,
        now: u64,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        after: Option<Vec<u8>>,
        limit: usize,
        parts: &[u16],
    ) -> Result<Response, Response> {
        let limit = limit.clamp(1, self.cfg.max_scan_limit);
        let snap = self.db.snapshot();
        if let Some(p) = parts.iter().find(|p| !self.leases.valid(**p, now)) {
            return Err(no_lease(*p));
        }
        let mut iters = Vec::with_capacity(parts.len());
        for &p in parts {
            let (lo, hi) = envelope::partition_range(p, &start, end.as_deref(), after.as_deref());
            let it = snap
                .scan(
                    lo.as_ref().map(Vec::as_slice),
                    hi.as_ref().map(Vec::as_slice),
                )
                .map_err(engine_err)?;
            // Read after the snapshot: see `get`.
            let dirty = self
                .dirty
                .range(
                    lo.as_ref().map(Vec::as_slice),
                    hi.as_ref().map(Vec::as_slice),
                )
                .map_err(|()| catching_up())?;
            iters.push(VersionedScan {
                it,
                dirty: dirty.into(),
                next: None,
            });
        }
        let mut heads: Vec<Option<Versioned>> = Vec::with_capacity(iters.len());
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
                .filter_map(|(i, h)| h.as_ref().map(|(k, _, _)| (i, envelope::user_key(k))))
                .min_by(|a, b| a.1.cmp(b.1))
                .map(|(i, _)| i);
            let Some(b) = best else { break };
            let Some((k, seq, raw)) = heads[b].take() else {
                break;
            };
            heads[b] = iters[b].next().transpose().map_err(engine_err)?;
            let s = decode_value(raw)?;
            items.push(Item {
                key: envelope::user_key(&k).to_vec(),
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
/// One partition's engine scan with the committed values of its dirty keys in place of what
/// the engine holds for them (both in key order; merged).
/// A read of a partition whose primary holds no lease now.
fn no_lease(p: u16) -> Response {
    err(
        ErrorKind::Unavailable,
        format!(
            "partition {p}'s primary holds no read lease right now (it cannot rule out a newer \
             primary); try again"
        ),
    )
}

/// A read of a key a new primary inherited an uncommitted write of.
fn catching_up() -> Response {
    err(
        ErrorKind::Unavailable,
        "this partition's new primary is still committing what it took over; try again",
    )
}

pub(crate) struct VersionedScan {
    it: DbIter,
    dirty: std::collections::VecDeque<(Vec<u8>, Before)>,
    /// The engine's next item, read ahead.
    next: Option<Versioned>,
}

impl VersionedScan {
    /// `it` with `dirty` (the dirty keys of its range, in key order) in place.
    pub(crate) fn new(it: DbIter, dirty: Vec<(Vec<u8>, Before)>) -> VersionedScan {
        VersionedScan {
            it,
            dirty: dirty.into(),
            next: None,
        }
    }
}

impl Iterator for VersionedScan {
    type Item = crate::engine::Result<Versioned>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.next.is_none() {
                match self.it.next_versioned() {
                    Some(Ok(v)) => self.next = Some(v),
                    Some(Err(e)) => return Some(Err(e)),
                    None => {}
                }
            }
            let take_dirty = match (&self.next, self.dirty.front()) {
                (None, None) => return None,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((k, _, _)), Some((d, _))) => d <= k,
            };
            if !take_dirty {
                return self.next.take().map(Ok);
            }
            let Some((k, before)) = self.dirty.pop_front() else {
                continue;
            };
            if self.next.as_ref().is_some_and(|(n, _, _)| *n == k) {
                self.next = None; // the engine's uncommitted value of this key
            }
            if let Some((seq, raw)) = before {
                return Some(Ok((k, seq, raw)));
            }
        }
    }
}
