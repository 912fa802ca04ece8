//! The write gate: no reply reveals a write before that write is as durable as `sync` says.
//!
//! A write is applied to the engine at once (`Db::write_deferred`: in the log buffer and the
//! memtable, neither durable nor visible to readers under `sync = always`), and its reply waits
//! here, in sequence order, until a persist covers it. Writes that arrive while a persist runs
//! ride on the next one: group commit at the node level, with the fsync off the event loop.
//!
//! A write that wrote nothing (a failed condition, a delete of an absent key) was decided on
//! applied state that may include writes not yet durable, so its reply waits behind the newest
//! waiting write (`core::bugs::EarlyRefusal` answers it at once, and the simulation catches it).

use std::collections::VecDeque;

use super::Output;
use crate::proto::peer::PeerMessage;
use crate::proto::{err, ErrorKind, Response};

/// Persists (fsyncs) in flight at once.
pub(crate) const MAX_PERSISTS: usize = 2;

/// Where an answer goes: a client of this node, or a peer that forwarded the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Client(u64),
    Peer(String, u64),
    /// The node's own write (hand-off copies): nobody to answer, but durability to wait for.
    Internal,
    /// A replica's acknowledgement to partition `partition`'s primary `to`, sent once what it
    /// names is as durable as `sync` says.
    Ack {
        to: String,
        partition: u16,
        epoch: u64,
        applied: u64,
        gap: bool,
        lease_from: u64,
    },
    /// The answer to a request on a replicated partition this node is primary of: once
    /// durable here it still waits until entry `lsn` is on every copy in sync
    /// ([`super::replica`]), then goes to `target`.
    Commit {
        partition: u16,
        lsn: u64,
        target: Box<Target>,
    },
    /// Inside a `Commit`: an answer that reveals state without writing (a refusal), sent only
    /// while this primary holds its read lease.
    Leased(Box<Target>),
}

impl Target {
    /// Who is answered in the end.
    fn innermost(self) -> Target {
        match self {
            Target::Commit { target, .. } | Target::Leased(target) => target.innermost(),
            t => t,
        }
    }
}

/// Sends `response` to `target` now (a `Commit` target's own target: the caller has decided
/// that the commit no longer matters, as when the write failed).
pub(crate) fn respond(target: Target, response: Response, out: &mut Vec<Output>) {
    match target.innermost() {
        Target::Client(id) => out.push(Output::Reply { id, response }),
        Target::Peer(to, id) => out.push(Output::Send {
            to,
            message: PeerMessage::Reply { id, response },
        }),
        Target::Ack {
            to,
            partition,
            epoch,
            applied,
            gap,
            lease_from,
        } => out.push(Output::Send {
            to,
            message: PeerMessage::ReplicaAck {
                partition,
                epoch,
                applied,
                gap,
                lease_from,
            },
        }),
        Target::Internal | Target::Commit { .. } | Target::Leased(_) => {}
    }
}

pub(crate) struct Gate {
    /// `sync = always`: replies wait for persists.
    durable: bool,
    /// Replies held until a persist covers their sequence number, in sequence order.
    waiting: VecDeque<(u64, Target, Response)>,
    /// Persists running now (at most `MAX_PERSISTS`).
    persists_running: usize,
    /// The newest sequence number a requested persist is sure to cover.
    persist_requested: u64,
    persists: u64,
    /// Every write up to this sequence number is durable (under `sync = always`).
    persisted_upto: u64,
    /// Sequence number of the newest write this node applied.
    last_written: u64,
    /// With `sync = interval` and no engine threads: the sync period, and when the oldest
    /// write not yet covered by a persist was applied.
    persist_every_ms: Option<u64>,
    unpersisted_since: Option<u64>,
    /// A persist failed: the log's state is unknown and the engine takes no more writes, so
    /// applied state is no longer a promise of what a crash keeps.
    log_failed: bool,
    /// Answers on replicated partitions released by a persist (durable here), for the node to
    /// hand to replication: `(partition, lsn, target, response)`.
    released: Vec<(u16, u64, Target, Response)>,
}

impl Gate {
    pub(crate) fn new(durable: bool, persist_every_ms: Option<u64>) -> Gate {
        Gate {
            durable,
            waiting: VecDeque::new(),
            persists_running: 0,
            persist_requested: 0,
            persists: 0,
            persisted_upto: 0,
            last_written: 0,
            persist_every_ms,
            unpersisted_since: None,
            log_failed: false,
            released: Vec::new(),
        }
    }

    /// Sends an answer whose writes are durable here: a `Commit` goes on to replication.
    fn release(&mut self, target: Target, response: Response, out: &mut Vec<Output>) {
        match target {
            Target::Commit {
                partition,
                lsn,
                target,
            } => self.released.push((partition, lsn, *target, response)),
            t => respond(t, response, out),
        }
    }

    /// The answers on replicated partitions that became durable here since the last call.
    pub(crate) fn take_released(&mut self) -> Vec<(u16, u64, Target, Response)> {
        std::mem::take(&mut self.released)
    }

    /// Sends `target` its answer once every write applied so far is as durable as `sync`
    /// says (a replica's acknowledgement).
    pub(crate) fn after_applied(
        &mut self,
        target: Target,
        response: Response,
        out: &mut Vec<Output>,
    ) {
        if !self.durable || self.last_written <= self.persisted_upto {
            return self.release(target, response, out);
        }
        self.waiting
            .push_back((self.last_written, target, response));
        self.request_persist(out);
    }

    /// A persist failed. From then on the node takes no writes: each would be decided on
    /// applied state that may hold a write whose outcome is unknown (a 412 would reveal it as
    /// if it were kept), and the engine refuses them anyway.
    pub(crate) fn log_failed(&self) -> bool {
        self.log_failed
    }

    pub(crate) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    pub(crate) fn persists(&self) -> u64 {
        self.persists
    }

    /// The newest write applied here (durable or not).
    pub(crate) fn last_written(&self) -> u64 {
        self.last_written
    }

    /// Every write up to this sequence number is durable (everything, without `sync = always`:
    /// then nothing waits for an fsync).
    pub(crate) fn durable_upto(&self) -> u64 {
        if self.durable {
            self.persisted_upto
        } else {
            u64::MAX
        }
    }

    /// A write was applied at `seq`.
    pub(crate) fn applied(&mut self, seq: u64) {
        self.last_written = self.last_written.max(seq);
    }

    /// The reply to a request that ran here: `seq` is its write (if it wrote), `is_write`
    /// whether it could have written. Sent now, or held until what it saw is durable.
    pub(crate) fn answer(
        &mut self,
        seq: Option<u64>,
        is_write: bool,
        target: Target,
        response: Response,
        out: &mut Vec<Output>,
    ) {
        if let Some(seq) = seq {
            self.applied(seq);
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
                // Decided on the latest applied state: answered now, a read right after it
                // could still see the older state (reads see durable writes only), or a crash
                // could take back what it was decided on.
                match self.waiting.back() {
                    Some(&(newest, _, _)) => self.waiting.push_back((newest, target, response)),
                    None => self.release(target, response, out),
                }
            }
            _ => self.release(target, response, out),
        }
    }

    /// Makes sure a persist will cover every write up to `upto` (the node's own writes, which
    /// nobody waits for but which must become durable and visible).
    pub(crate) fn persist_upto(&mut self, upto: u64, out: &mut Vec<Output>) {
        if self.durable && upto > self.persisted_upto {
            self.waiting
                .push_back((upto, Target::Internal, Response::Accepted));
            self.request_persist(out);
        }
    }

    pub(crate) fn on_persisted(&mut self, upto: u64, out: &mut Vec<Output>) {
        self.persists_running = self.persists_running.saturating_sub(1);
        self.persists += 1;
        self.persisted_upto = self.persisted_upto.max(upto);
        while self.waiting.front().is_some_and(|(seq, _, _)| *seq <= upto) {
            if let Some((_, target, response)) = self.waiting.pop_front() {
                self.release(target, response, out);
            }
        }
        self.request_persist(out);
    }

    /// The bytes may be on disk after all: every waiting write's outcome is unknown.
    pub(crate) fn on_persist_failed(&mut self, message: &str, out: &mut Vec<Output>) {
        self.persists_running = self.persists_running.saturating_sub(1);
        self.log_failed = true;
        for (_, target, _) in self.waiting.drain(..) {
            if matches!(target, Target::Ack { .. }) {
                // A replica acknowledges only what is durable: it says nothing, and the
                // primary's timeout deals with it.
                continue;
            }
            let response = err(
                ErrorKind::OutcomeUnknown,
                format!("the write may not be durable ({message}); the outcome is unknown"),
            );
            respond(target, response, out);
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

    /// When the interval persist is due, if one is.
    pub(crate) fn deadline(&self) -> Option<u64> {
        match (self.persist_every_ms, self.unpersisted_since) {
            (Some(every), Some(since)) => Some(since.saturating_add(every)),
            _ => None,
        }
    }

    /// `sync = interval` with no engine threads: the periodic persist, timed from the oldest
    /// write it must cover.
    pub(crate) fn on_tick(&mut self, now: u64, out: &mut Vec<Output>) {
        let Some(every) = self.persist_every_ms else {
            return;
        };
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

    /// Replies wait in sequence order, none for more than was written, and no more persists
    /// run than allowed.
    pub(crate) fn check(&self) -> Result<(), String> {
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
        Ok(())
    }
}
