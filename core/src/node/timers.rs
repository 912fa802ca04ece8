//! Time: when the driver must call again ([`Node::next_deadline`]), and the chores that run
//! after every input because they depend on time or on the engine rather than on one input.
//!
//! | deadline | owner | what fires |
//! |---|---|---|
//! | interval persist | [`super::gate`] | the periodic `Persist` under `sync = interval` |
//! | forward timeout | [`super::routing`] | a forward unanswered 10 s after its request came: outcome unknown |
//! | commit wait | [`super::replica`] | a primary's answer waiting 8 s for its copies: outcome unknown |
//! | parked retry | [`super::routing`] | a request that met `NotOwner` or a frozen partition |
//! | hand-off step | [`super::handoff`] | a copy step unanswered, `MoveReady` repeats |
//! | clean-up | [`super::handoff`] | one chunk of a handed-away partition deleted per call |
//! | resend | [`super::replica`] | a replica behind and sent nothing for 500 ms |

use super::{Node, Output};

impl Node {
    /// When the driver must call [`handle`](Self::handle) with
    /// [`Input::Timeout`](super::Input::Timeout) at the latest (milliseconds since the Unix
    /// epoch), if nothing else arrives first.
    pub fn next_deadline(&self) -> Option<u64> {
        let persist = self.gate.deadline();
        let forward = self.fwd.next_deadline();
        let parked = self.fwd.parked.iter().map(|p| p.retry_at).min();
        let moves = self.ho.incoming.values().map(|m| m.deadline).min();
        // Cleanup runs a chunk per call: come back at once while any is left.
        let cleanup = (!self.ho.cleanup.is_empty()).then_some(0);
        let resend = self.replication_deadline();
        let probe = self.lead.deadline();
        [persist, forward, parked, moves, cleanup, resend, probe]
            .into_iter()
            .flatten()
            .min()
    }

    /// Work that depends on time or on the engine's state rather than on one input: the
    /// interval persist, background work for an engine without threads, expired forwards,
    /// parked requests to retry, hand-off chores, and the leader's duties.
    pub(crate) fn tick(&mut self, now: u64, out: &mut Vec<Output>) {
        self.gate.on_tick(now, out);
        self.on_durable_here(out);
        self.replication_tick(now, out);
        if self.drive_background && !self.background_running && self.db.background_pending() {
            self.background_running = true;
            out.push(Output::Background);
        }
        self.expire_forwards(now, out);
        if self.fwd.parked.iter().any(|p| p.retry_at <= now) {
            self.retry_parked(now, false, out);
        }
        self.handoff_tick(now, out);
        self.lead(now, out);
    }
}
