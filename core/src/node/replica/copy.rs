//! Copies of a partition for learners the primary's log no longer reaches back for (a
//! replica whose disk was wiped, a node gone for longer than `log_retain` writes), as
//! Raft's InstallSnapshot does, in pages.
//!
//! The primary fixes the copy's *base* when it starts: its commit point then. Each page is
//! read from the committed state at the moment it is sent (the engine with [`super::Dirty`]'s
//! committed values in place), so pages read later may show writes after the base: the copy
//! is fuzzy, as ZooKeeper's snapshots are. That is harmless because the learner then applies
//! every entry after the base in order, and entries carry whole values: a key written after
//! the base ends as the last entry left it, a key not written after it was the same on every
//! page. The learner's log restarts empty at the base (its position is first set to 0, so a
//! copy cut short by a crash is started again, never mistaken for a log). The primary sends
//! a page, the learner applies it and answers `CopyAck`, and so on; the last page also sets
//! the learner's position to the base, and its answer is an ordinary `ReplicaAck`. A lost
//! page is sent again by the resend timer; a learner that restarted answers a page it cannot
//! continue with the copy it has (none), and the primary starts over.
//!
//! While a copy is running the primary's log must keep the entry after the base; a copy
//! that takes longer than `log_retain` writes starts again from a newer base.

use std::ops::Bound;

use super::super::gate::Target;
use super::super::reader::VersionedScan;
use super::super::{Node, Output};
use super::{Received, LEASE_MS};
use crate::engine::WriteBatch;
use crate::proto::envelope;
use crate::proto::peer::PeerMessage;
use crate::proto::replog::{self, Position};
use crate::proto::Response;

/// At most this many keys, or about this many bytes, in one page.
const PAGE_KEYS: usize = 2_000;
const PAGE_BYTES: usize = 4 << 20;

/// As primary: a copy in progress towards one learner.
#[derive(Clone, Debug)]
pub(crate) struct CopyOut {
    pub(crate) base: u64,
    pub(crate) base_epoch: u64,
    /// The last key the learner has applied (`None`: nothing yet).
    pub(crate) after: Option<Vec<u8>>,
}

/// Keys (user keys) and their stored values.
type Items = Vec<(Vec<u8>, Vec<u8>)>;

/// A `CopyAck` a primary received.
pub(crate) struct CopyAcked {
    pub(crate) partition: u16,
    pub(crate) epoch: u64,
    pub(crate) base: u64,
    pub(crate) last: Option<Vec<u8>>,
}

/// A `CopyPage` a learner received.
pub(crate) struct Page {
    pub(crate) partition: u16,
    pub(crate) epoch: u64,
    pub(crate) base: u64,
    pub(crate) base_epoch: u64,
    pub(crate) after: Option<Vec<u8>>,
    pub(crate) items: Items,
    pub(crate) done: bool,
    pub(crate) sent_at: u64,
}

impl Node {
    /// As primary of `p`: whether learner `to` needs a copy (the entry after `prev_lsn` is
    /// gone from the log) or has one running; sends its next page if so.
    pub(crate) fn send_copy(
        &mut self,
        now: u64,
        p: u16,
        to: &str,
        prev_lsn: u64,
        out: &mut Vec<Output>,
    ) -> bool {
        let Some(part) = self.repl.parts.get(&p) else {
            return false;
        };
        if !part.copies.contains_key(to) {
            let last = part.pos.lsn;
            let trimmed = self.epoch_at(p, prev_lsn).is_none()
                || (prev_lsn < last && self.log_entry(p, prev_lsn + 1).is_none());
            let learner = self
                .view
                .state
                .as_ref()
                .and_then(|s| s.part(p))
                .is_some_and(|r| r.learners.iter().any(|l| l == to));
            if !trimmed || !learner {
                return false;
            }
            let base = part.committed;
            let Some(base_epoch) = self.epoch_at(p, base) else {
                return true; // not even the commit point is in the log: wait for it
            };
            if let Some(part) = self.repl.parts.get_mut(&p) {
                part.copies.insert(
                    to.to_string(),
                    CopyOut {
                        base,
                        base_epoch,
                        after: None,
                    },
                );
            }
        }
        self.send_page(now, p, to, out);
        true
    }

    /// As primary: the page of the copy towards `to` after the last key it applied.
    fn send_page(&mut self, now: u64, p: u16, to: &str, out: &mut Vec<Output>) {
        let epoch = self.view.state.as_ref().map_or(0, |s| s.part_epoch(p));
        let Some(c) = self
            .repl
            .parts
            .get(&p)
            .and_then(|x| x.copies.get(to))
            .cloned()
        else {
            return;
        };
        if let Some(part) = self.repl.parts.get_mut(&p) {
            // Sent now (or tried): the resend timer waits from here.
            part.sent.insert(to.to_string(), (c.base, now));
        }
        let Some((items, done)) = self.read_page(p, c.after.as_deref()) else {
            return; // a key not known yet, or the engine failed: the timer tries again
        };
        self.repl.copy_pages_sent += 1;
        out.push(Output::Send {
            to: to.to_string(),
            message: PeerMessage::CopyPage {
                partition: p,
                epoch,
                base: c.base,
                base_epoch: c.base_epoch,
                after: c.after,
                items,
                done,
                sent_at: now,
            },
        });
    }

    /// Up to a page of partition `p`'s committed keys after `after`, and whether they are
    /// the last.
    fn read_page(&self, p: u16, after: Option<&[u8]>) -> Option<(Items, bool)> {
        let (lo, hi) = envelope::partition_range(p, &[], None, after);
        let snap = self.db.snapshot();
        let it = snap
            .scan(
                lo.as_ref().map(Vec::as_slice),
                hi.as_ref().map(Vec::as_slice),
            )
            .ok()?;
        // Read after the snapshot, as the reader does: a write the snapshot holds is either
        // still dirty now or committed.
        let dirty = self.repl.dirty.range_at_commit(
            lo.as_ref().map(Vec::as_slice),
            hi.as_ref().map(Vec::as_slice),
        );
        let mut items = Vec::new();
        let mut bytes = 0usize;
        for kv in VersionedScan::new(it, dirty) {
            let (k, _, v) = kv.ok()?;
            if items.len() >= PAGE_KEYS || bytes >= PAGE_BYTES {
                return Some((items, false));
            }
            bytes += k.len() + v.len();
            items.push((envelope::user_key(&k).to_vec(), v));
        }
        Some((items, true))
    }

    /// As primary: learner `from` applied the copy up to `last`.
    pub(crate) fn on_copy_ack(
        &mut self,
        now: u64,
        from: String,
        ack: CopyAcked,
        out: &mut Vec<Output>,
    ) {
        let CopyAcked {
            partition: p,
            epoch,
            base,
            last,
        } = ack;
        let my_epoch = self.view.state.as_ref().map_or(0, |s| s.part_epoch(p));
        let Some(part) = self.repl.parts.get_mut(&p) else {
            return;
        };
        if epoch > my_epoch || !part.primary {
            return;
        }
        let Some(c) = part.copies.get_mut(&from) else {
            return;
        };
        if c.base == base {
            c.after = last;
        } else {
            // The learner has another copy (or none, after a restart): start again.
            part.copies.remove(&from);
            let prev = part.acked.get(&from).copied().unwrap_or(0);
            self.send_copy(now, p, &from, prev, out);
            return;
        }
        self.send_page(now, p, &from, out);
    }

    /// As learner: a page of a copy from the partition's primary.
    pub(crate) fn on_copy_page(
        &mut self,
        now: u64,
        from: String,
        page: Page,
        out: &mut Vec<Output>,
    ) {
        let p = page.partition;
        let r = Received {
            partition: p,
            epoch: page.epoch,
            commit: page.base,
            prev_lsn: 0,
            prev_epoch: 0,
            sent_at: page.sent_at,
        };
        if self.refuse_stale(&from, &r, out) {
            return;
        }
        let part = self.repl.parts.entry(p).or_default();
        part.promised_until = part.promised_until.max(now + LEASE_MS);
        let continues = match (&part.copying, &page.after) {
            (_, None) => true,
            (Some((base, last)), Some(a)) => {
                *base == page.base && last.as_ref().is_some_and(|l| l >= a)
            }
            (None, Some(_)) => false,
        };
        if !continues {
            let (base, last) = part.copying.clone().unwrap_or((0, None));
            out.push(Output::Send {
                to: from,
                message: PeerMessage::CopyAck {
                    partition: p,
                    epoch: page.epoch,
                    base,
                    last,
                },
            });
            return;
        }
        let pos = self.repl.position(p);
        let mut b = WriteBatch::new();
        if page.after.is_none() {
            // A new copy: the old log goes (entries of it could name another history), and
            // the position says "nothing here" until the last page.
            let (lo, hi) = replog::log_range(p);
            let Ok(it) = self
                .db
                .scan(Bound::Included(&lo[..]), Bound::Excluded(&hi[..]))
            else {
                return;
            };
            for kv in it {
                let Ok((k, _)) = kv else { return };
                b.delete(k);
            }
        }
        if page.after.is_none() && !page.done {
            b.put(
                replog::meta_key(p),
                replog::encode_position(&Position {
                    epoch: pos.epoch.max(page.epoch),
                    ..Position::default()
                }),
            );
        }
        // This node's keys in the range the page covers that the page lacks are gone.
        let end = if page.done {
            None
        } else {
            page.items.last().map(|(k, _)| envelope::internal_key(p, k))
        };
        let (lo, hi) = envelope::partition_range(p, &[], None, page.after.as_deref());
        let Ok(it) = self.db.scan(
            lo.as_ref().map(Vec::as_slice),
            hi.as_ref().map(Vec::as_slice),
        ) else {
            return;
        };
        let mut theirs = page
            .items
            .iter()
            .map(|(k, _)| envelope::internal_key(p, k))
            .peekable();
        for kv in it {
            let Ok((k, _)) = kv else { return };
            if end.as_ref().is_some_and(|e| k > *e) {
                break;
            }
            while theirs.peek().is_some_and(|t| *t < k) {
                theirs.next();
            }
            if theirs.peek() != Some(&k) {
                b.delete(k);
            }
        }
        for (k, v) in &page.items {
            b.put(envelope::internal_key(p, k), v.clone());
        }
        let last = page
            .items
            .last()
            .map(|(k, _)| k.clone())
            .or(page.after.clone());
        let next = Position {
            epoch: pos.epoch.max(page.epoch),
            lsn: page.base,
            lsn_epoch: page.base_epoch,
            commit: page.base,
        };
        if page.done {
            // The base as an entry of the log (with nothing to undo: it is committed), so that
            // this node, once primary, can still name the entry its replicas follow on from.
            b.put(
                replog::log_key(p, page.base),
                replog::encode_entry(page.base_epoch, &[]),
            );
            b.put(replog::meta_key(p), replog::encode_position(&next));
        }
        let Ok(seq) = self.db.write_deferred(b) else {
            return; // the primary sends the page again
        };
        self.gate.applied(seq);
        self.repl.copy_keys_received += page.items.len() as u64;
        if page.done {
            self.repl.copies_received += 1;
        }
        let part = self.repl.parts.entry(p).or_default();
        if page.done {
            part.copying = None;
            part.pos = next;
            part.trimmed = page.base.saturating_sub(1);
            part.caught_up = true;
            let target = Target::Ack {
                to: from,
                partition: p,
                epoch: next.epoch,
                applied: page.base,
                gap: false,
                lease_from: page.sent_at,
            };
            self.gate.after_applied(target, Response::Accepted, out);
        } else {
            if page.after.is_none() {
                // The log was emptied with the first page.
                part.pos = Position {
                    epoch: pos.epoch.max(page.epoch),
                    ..Position::default()
                };
            }
            part.copying = Some((page.base, last.clone()));
            out.push(Output::Send {
                to: from,
                message: PeerMessage::CopyAck {
                    partition: p,
                    epoch: page.epoch,
                    base: page.base,
                    last,
                },
            });
        }
    }
}
