//! The old owner's side of a hand-off: pages of the partition from a snapshot of durable
//! writes while it keeps serving, every key written from the first page on recorded, then a
//! freeze (writes wait) and the tail (each recorded key's value now, or its deletion) once
//! every write made before the freeze is durable. The freeze ends only through the map.

use std::collections::BTreeSet;

use crate::node::{Node, Output};
use crate::proto::envelope;
use crate::proto::peer::PeerMessage;

/// The old owner's side of a hand-off.
pub(crate) struct Outgoing {
    pub(crate) to: String,
    /// The newest write applied when tracking began. Writes up to it are not in `written`:
    /// pages must not be read until they are all visible (durable).
    pub(crate) since: u64,
    /// User keys written to the partition since the copy began.
    pub(crate) written: BTreeSet<Vec<u8>>,
    /// Frozen: writes to the partition wait; the tail goes to `to` (request `id`) once every
    /// write up to `upto` is durable (`sent` once it has).
    pub(crate) frozen: Option<Frozen>,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Frozen {
    pub(crate) id: u64,
    pub(crate) upto: u64,
    pub(crate) sent: bool,
}

impl Node {
    /// Frozen partitions whose writes are all durable: their tails leave (once each).
    pub(crate) fn send_tails(&mut self, out: &mut Vec<Output>) {
        // The old owner's frozen partitions: the tail leaves once their writes are durable.
        let durable_upto = self.gate.durable_upto();
        let ready: Vec<u16> = self
            .ho
            .outgoing
            .iter()
            .filter(|(_, o)| o.frozen.is_some_and(|f| !f.sent && f.upto <= durable_upto))
            .map(|(p, _)| *p)
            .collect();
        for p in ready {
            let Some(o) = self.ho.outgoing.get_mut(&p) else {
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
    }

    /// Old owner: a page of `p` for its new owner.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_fetch_part(
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
            let last = self.gate.last_written();
            match self.ho.outgoing.get(&p) {
                Some(o) if o.to == from => {}
                other => {
                    let frozen = other.and_then(|o| o.frozen);
                    self.ho.outgoing.insert(
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
            let since = self.ho.outgoing.get(&p).map_or(0, |o| o.since);
            if self.gate.durable_upto() < since
                && !crate::bugs::on(crate::bugs::Bug::CopyBeforeDurable)
            {
                return refuse("writes made before the copy began are not durable yet", out);
            }
        } else if !self.ho.outgoing.contains_key(&p) {
            return refuse("the copy was not started", out);
        }
        let (lo, hi) = envelope::partition_range(p, &[], None, after.as_deref());
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
            items.push((envelope::user_key(&k).to_vec(), v));
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
    pub(crate) fn on_freeze_part(
        &mut self,
        now: u64,
        from: String,
        id: u64,
        p: u16,
        out: &mut Vec<Output>,
    ) {
        let upto = self.gate.last_written();
        match self.ho.outgoing.get_mut(&p) {
            Some(o) if o.to == from => {
                o.frozen = Some(Frozen {
                    id,
                    upto,
                    sent: false,
                });
                // Make sure a persist covers every write made before the freeze.
                self.gate.persist_upto(upto, out);
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
}
