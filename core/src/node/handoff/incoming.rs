//! The new owner's side of a hand-off: clear any stale copy, pull pages, freeze the old
//! owner, apply the tail, wait for it to be durable here, then tell the leader (`MoveReady`,
//! repeated) until the map flips.

use crate::engine::WriteBatch;
use crate::node::{Node, Output};
use crate::proto::envelope;
use crate::proto::peer::PeerMessage;

/// Keys per copied page, how long a step may wait for its answer, and how often the new owner
/// repeats `MoveReady` until the map flips.
const PART_PAGE: u32 = 2_000;
const MOVE_STEP_TIMEOUT_MS: u64 = 10_000;
const MOVE_READY_EVERY_MS: u64 = 1_000;

/// The new owner's side of a hand-off.
pub(crate) struct Incoming {
    pub(crate) from: String,
    /// The step in flight: its request id and when to give up on it.
    pub(crate) req: u64,
    pub(crate) deadline: u64,
    pub(crate) phase: Phase,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Copying pages (the last key received so far).
    Copying,
    /// Waiting for the tail.
    Freezing,
    /// The tail is applied at sequence number `upto`; waiting for it to be durable.
    Applying { upto: u64 },
    /// Durable here; `MoveReady` sent to the leader (again at `deadline`).
    Ready,
}

impl Node {
    /// Clears any stale local copy of `p`, then asks its owner for the first page.
    pub(crate) fn start_incoming(&mut self, now: u64, p: u16, from: String, out: &mut Vec<Output>) {
        // A failure here surfaces again when the copy's own writes fail.
        let _ = self.delete_partition(p, usize::MAX, None, out);
        let id = self.fwd.next_id();
        out.push(Output::Send {
            to: from.clone(),
            message: PeerMessage::FetchPart {
                id,
                partition: p,
                after: None,
                limit: PART_PAGE,
            },
        });
        self.ho.incoming.insert(
            p,
            Incoming {
                from,
                req: id,
                deadline: now + MOVE_STEP_TIMEOUT_MS,
                phase: Phase::Copying,
            },
        );
    }

    /// New owner: apply a page, then ask for the next one or freeze.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_part_page(
        &mut self,
        now: u64,
        from: &str,
        id: u64,
        p: u16,
        items: Vec<(Vec<u8>, Vec<u8>)>,
        done: bool,
        out: &mut Vec<Output>,
    ) {
        let Some(m) = self.ho.incoming.get(&p) else {
            return;
        };
        if m.req != id || m.from != from || m.phase != Phase::Copying {
            return;
        }
        let last = items.last().map(|(k, _)| k.clone());
        if !items.is_empty() {
            let mut b = WriteBatch::new();
            for (k, v) in items {
                b.put(envelope::internal_key(p, &k), v);
            }
            match self.db.write_deferred(b) {
                Ok(seq) => self.gate.applied(seq),
                Err(_) => {
                    // Try again later from scratch.
                    if let Some(m) = self.ho.incoming.get_mut(&p) {
                        m.req = u64::MAX;
                        m.deadline = now + MOVE_READY_EVERY_MS;
                    }
                    return;
                }
            }
        }
        let next_id = self.fwd.next_id();
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
        if let Some(m) = self.ho.incoming.get_mut(&p) {
            m.req = next_id;
            m.deadline = now + MOVE_STEP_TIMEOUT_MS;
            if done {
                m.phase = Phase::Freezing;
            }
        }
    }

    /// New owner: apply the tail; once durable, tell the leader (`handoff_tick`).
    pub(crate) fn on_part_tail(
        &mut self,
        now: u64,
        from: &str,
        id: u64,
        p: u16,
        items: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        out: &mut Vec<Output>,
    ) {
        let Some(m) = self.ho.incoming.get(&p) else {
            return;
        };
        if m.req != id || m.from != from || m.phase != Phase::Freezing {
            return;
        }
        let mut upto = self.gate.last_written();
        if !items.is_empty() {
            let mut b = WriteBatch::new();
            for (k, v) in items {
                let ik = envelope::internal_key(p, &k);
                match v {
                    Some(v) => b.put(ik, v),
                    None => b.delete(ik),
                };
            }
            match self.db.write_deferred(b) {
                Ok(seq) => {
                    self.gate.applied(seq);
                    upto = seq;
                }
                Err(_) => {
                    if let Some(m) = self.ho.incoming.get_mut(&p) {
                        m.req = u64::MAX;
                        m.deadline = now + MOVE_READY_EVERY_MS;
                    }
                    return;
                }
            }
        }
        self.gate.persist_upto(upto, out);
        if let Some(m) = self.ho.incoming.get_mut(&p) {
            m.phase = Phase::Applying { upto };
            m.deadline = now;
        }
        self.handoff_tick(now, out);
    }

    /// The old owner refused a step: start over later (the leader may also abort the move).
    pub(crate) fn on_part_refused(&mut self, now: u64, id: u64, p: u16) {
        if let Some(m) = self.ho.incoming.get_mut(&p) {
            if m.req == id {
                m.deadline = now + MOVE_READY_EVERY_MS;
                m.req = u64::MAX;
            }
        }
    }

    /// The new owner's chores: a copy durable here is announced (`MoveReady`, repeated until
    /// the map flips); a step that got no answer starts the copy over.
    pub(crate) fn incoming_tick(&mut self, now: u64, out: &mut Vec<Output>) {
        let durable_upto = self.gate.durable_upto();
        let leader = self.view.state.as_ref().map(|s| s.leader.clone());
        let parts: Vec<u16> = self.ho.incoming.keys().copied().collect();
        for p in parts {
            let Some(m) = self.ho.incoming.get(&p) else {
                continue;
            };
            match m.phase {
                Phase::Applying { upto } if upto <= durable_upto => {
                    if let Some(m) = self.ho.incoming.get_mut(&p) {
                        m.phase = Phase::Ready;
                        m.deadline = now;
                    }
                }
                _ => {}
            }
            let Some(m) = self.ho.incoming.get(&p) else {
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
                    if let Some(m) = self.ho.incoming.get_mut(&p) {
                        m.deadline = now + MOVE_READY_EVERY_MS;
                    }
                }
                Phase::Applying { .. } => {
                    if let Some(m) = self.ho.incoming.get_mut(&p) {
                        m.deadline = now + MOVE_READY_EVERY_MS;
                    }
                }
                Phase::Copying | Phase::Freezing => {
                    // No answer (or refused): start over from a clean copy.
                    let from = m.from.clone();
                    self.ho.incoming.remove(&p);
                    self.start_incoming(now, p, from, out);
                }
            }
        }
    }
}
