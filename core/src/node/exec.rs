//! Running a request whose partitions this node owns: limits, conditions against the latest
//! applied state, a new version from the node's clock, one engine write. The reply goes to the
//! write gate ([`super::gate`]), which holds it until what it saw is durable.

use std::cell::Cell;

use super::gate::{respond, Target};
use super::{engine_err, Node, Output};
use crate::engine::WriteBatch;
use crate::proto::envelope::{encode_value, Stored};
use crate::proto::{check_size, err, int, BatchOp, Condition, ErrorKind, Request, Response};

/// Bits of a version below the millisecond clock (writes per millisecond before the version
/// clock runs ahead of the wall clock). Versions stay below 2^53, exact in JSON everywhere.
pub(crate) const VERSION_COUNTER_BITS: u32 = 10;

/// A request's result: the reply, and the sequence number of its write if it wrote.
type Ran = Result<(Response, Option<u64>), Response>;

/// The hybrid clock versions come from: milliseconds shifted left by
/// [`VERSION_COUNTER_BITS`], then a counter; never back on this node.
#[derive(Default)]
pub(crate) struct VersionClock {
    last: Cell<u64>,
}

impl VersionClock {
    /// A new version for a key whose current version is `prev`: above it, and above every
    /// version this node gave out. Versions thus survive partition moves (they live in the
    /// value envelope) and, because they follow the clock, a key deleted and written again
    /// does not reuse an old version.
    pub(crate) fn next(&self, wall_ms: u64, prev: Option<u64>) -> u64 {
        let from_clock = (wall_ms << VERSION_COUNTER_BITS).max(self.last.get() + 1);
        let v = from_clock.max(prev.map_or(0, |p| p + 1));
        self.last.set(v);
        v
    }

    /// Versions up to `v` are given out (a batch takes a run of them).
    fn taken_upto(&self, v: u64) {
        self.last.set(self.last.get().max(v));
    }
}

impl Node {
    /// Runs a request whose partitions this node owns, answering `target`.
    pub(crate) fn execute(
        &mut self,
        now: u64,
        target: Target,
        request: Request,
        out: &mut Vec<Output>,
    ) {
        let tracked: Vec<(u16, Vec<u8>)> = if self.ho.outgoing.is_empty() {
            Vec::new()
        } else {
            request
                .keys()
                .into_iter()
                .map(|k| (self.partition_of(k), k.to_vec()))
                .filter(|(p, _)| self.ho.outgoing.contains_key(p))
                .collect()
        };
        let is_write = request.is_write();
        if is_write && self.gate.log_failed() {
            let e = err(
                ErrorKind::Unavailable,
                "the write-ahead log failed: this node takes no writes until it restarts",
            );
            return respond(target, e, out);
        }
        // A write to a replicated partition this node is primary of goes through its log.
        let primary = match request.keys().first() {
            Some(k) if is_write => match self.primary_write(self.partition_of(k)) {
                Ok(pw) => pw,
                Err(e) => return respond(target, e, out),
            },
            _ => None,
        };
        if let Some(pw) = &primary {
            if request
                .keys()
                .iter()
                .any(|k| self.partition_of(k) != pw.partition)
            {
                let e = err(
                    ErrorKind::SpansNodes,
                    "the batch spans partitions: with replicas, a batch is atomic only within                      one partition",
                );
                return respond(target, e, out);
            }
        }
        self.writing = primary;
        self.written_lsn = None;
        let result = match request {
            Request::Get { key } => self.reader.get(now, &key).map(|r| (r, None)),
            Request::Put { key, value, cond } => self.put(&key, &value, &cond, now, out),
            Request::Delete { key, cond } => self.delete(&key, &cond, now, out),
            Request::Scan {
                start,
                end,
                after,
                limit,
            } => self
                .reader
                .scan(now, start, end, after, limit)
                .map(|r| (r, None)),
            Request::Batch { ops } => self.batch(ops, now, out),
            Request::Incr { key, by } => self.incr(&key, by, now, out),
        };
        let (response, seq) = result.unwrap_or_else(|r| (r, None));
        // On a replicated partition the answer also waits for its entry to commit (a refusal:
        // for the newest entry, which it may have been decided on).
        // A write that wrote nothing (a failed condition, a delete of an absent key) reveals
        // state as a read does: it is answered only under a valid lease.
        let target = match self.writing.take() {
            Some(pw) => Target::Commit {
                partition: pw.partition,
                lsn: self
                    .written_lsn
                    .take()
                    .unwrap_or_else(|| self.repl.position(pw.partition).lsn),
                target: Box::new(if seq.is_none() && is_write {
                    Target::Leased(Box::new(target))
                } else {
                    target
                }),
            },
            None => target,
        };
        if seq.is_some() {
            for (p, k) in tracked {
                self.ho.track_write(p, k);
            }
        }
        self.gate.answer(seq, is_write, target, response, out);
    }

    fn check_value(&self, value: &[u8]) -> Result<(), Response> {
        check_size("value", value.len(), self.cfg.max_value_bytes)
    }

    /// The latest applied state of a key (including writes not yet persisted), for conditions.
    fn latest(&self, ikey: &[u8]) -> Result<Option<(u64, Stored)>, Response> {
        match self.db.get_latest(ikey) {
            Ok(Some((seq, raw))) => {
                let s = crate::proto::envelope::decode_value(raw)?;
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

    /// Applies `b`: through the partition's log when this request writes as primary of a
    /// replicated partition (`self.writing`), else straight to the engine.
    fn write_batch(
        &mut self,
        now: u64,
        b: WriteBatch,
        out: &mut Vec<Output>,
    ) -> Result<u64, Response> {
        match self.writing.take() {
            Some(pw) => {
                let r = self.write_primary(now, &pw, b, out);
                self.writing = Some(pw);
                let (seq, lsn) = r?;
                self.written_lsn = Some(lsn);
                Ok(seq)
            }
            None => self.db.write_deferred(b).map_err(engine_err),
        }
    }

    fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        cond: &Condition,
        wall_ms: u64,
        out: &mut Vec<Output>,
    ) -> Ran {
        self.reader.check_key(key)?;
        self.check_value(value)?;
        let ikey = self.reader.internal_key(key);
        let current = self.latest(&ikey)?;
        Self::check_cond(cond, current.as_ref().map(|(v, _)| *v))?;
        let version = self
            .versions
            .next(wall_ms, current.as_ref().map(|(v, _)| *v));
        let created = current.map_or(wall_ms, |(_, s)| s.created_ms);
        let mut b = WriteBatch::new();
        b.put(ikey, encode_value(created, wall_ms, version, value));
        let seq = self.write_batch(wall_ms, b, out)?;
        Ok((Response::Written { version }, Some(seq)))
    }

    fn delete(&mut self, key: &[u8], cond: &Condition, wall_ms: u64, out: &mut Vec<Output>) -> Ran {
        self.reader.check_key(key)?;
        let ikey = self.reader.internal_key(key);
        let current = self.latest(&ikey)?;
        Self::check_cond(cond, current.as_ref().map(|(v, _)| *v))?;
        let Some((prev, _)) = current else {
            return Ok((Response::NotFound, None));
        };
        let version = self.versions.next(wall_ms, Some(prev));
        let mut b = WriteBatch::new();
        b.delete(ikey);
        let seq = self.write_batch(wall_ms, b, out)?;
        Ok((Response::Deleted { version }, Some(seq)))
    }

    fn incr(&mut self, key: &[u8], by: i64, wall_ms: u64, out: &mut Vec<Output>) -> Ran {
        self.reader.check_key(key)?;
        let ikey = self.reader.internal_key(key);
        let current = self.latest(&ikey)?;
        let old = match &current {
            None => 0,
            Some((_, s)) => int::parse_decimal(&s.value).ok_or_else(|| {
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
        let version = self
            .versions
            .next(wall_ms, current.as_ref().map(|(v, _)| *v));
        let created = current.map_or(wall_ms, |(_, s)| s.created_ms);
        let mut b = WriteBatch::new();
        b.put(ikey, encode_value(created, wall_ms, version, &value));
        let seq = self.write_batch(wall_ms, b, out)?;
        let response = Response::Value {
            value,
            version,
            created_ms: created,
            modified_ms: wall_ms,
        };
        Ok((response, Some(seq)))
    }

    fn batch(&mut self, ops: Vec<BatchOp>, wall_ms: u64, out: &mut Vec<Output>) -> Ran {
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
        let base = self
            .versions
            .next(wall_ms, floor.map(|f| f.saturating_sub(1)));
        let last = base + checked.len() as u64 - 1;
        self.versions.taken_upto(last);
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
        let seq = self.write_batch(wall_ms, b, out)?;
        Ok((Response::Written { version: last }, Some(seq)))
    }
}
