//! Scans over the whole key space: this node's own partitions read here, every other owner
//! asked for its part (`ScanParts`), the pages merged by key.

use std::collections::BTreeMap;

use super::gate::{respond, Target};
use super::routing::FwdKind;
use super::{Node, Output};
use crate::proto::peer::PeerMessage;
use crate::proto::{err, ErrorKind, Item, Response};

/// A scan fanned out over several owners: their pages, merged when all are in.
pub(crate) struct ScanAgg {
    client: u64,
    limit: usize,
    pending: usize,
    items: Vec<Item>,
    more: bool,
    failed: Option<Response>,
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
impl Node {
    /// A scan over every partition: this node's own part answered here, every other owner's
    /// part asked of it, the pages merged by key.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn fan_out_scan(
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
                    ErrorKind::OwnerDown,
                    format!("node {down}, which owns part of the key space, is down"),
                ),
            });
        }
        let sid = self.fwd.next_id();
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
                    self.repl.now,
                    start.clone(),
                    end.clone(),
                    after.clone(),
                    limit,
                    &parts,
                );
                merge_page(&mut agg, page.unwrap_or_else(|e| e));
                continue;
            }
            let fid = self.fwd.next_id();
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
            self.fwd
                .track(fid, owner, now, FwdKind::ScanPart { scan: sid });
        }
        if agg.pending == 0 {
            out.push(finish_scan(agg));
        } else {
            self.fwd.scans.insert(sid, agg);
        }
    }
    /// One owner's page (or error) of fanned-out scan `scan`; the merged page leaves once all
    /// are in.
    pub(crate) fn scan_part_done(&mut self, scan: u64, response: Response, out: &mut Vec<Output>) {
        let Some(agg) = self.fwd.scans.get_mut(&scan) else {
            return;
        };
        merge_page(agg, response);
        agg.pending -= 1;
        if agg.pending == 0 {
            if let Some(agg) = self.fwd.scans.remove(&scan) {
                out.push(finish_scan(agg));
            }
        }
    }

    /// One owner's part of a scan, asked by a peer: every partition named must be ours.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_scan_parts(
        &mut self,
        from: String,
        id: u64,
        partitions: &[u16],
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        after: Option<Vec<u8>>,
        limit: usize,
        out: &mut Vec<Output>,
    ) {
        let mine = partitions.iter().all(|p| {
            *p < self.cfg.partitions && self.owner(*p).is_ok_and(|o| o == self.cfg.node_id)
        });
        if !mine {
            let map_version = self.view.state.as_ref().map_or(0, |s| s.version);
            return out.push(Output::Send {
                to: from,
                message: PeerMessage::NotOwner { id, map_version },
            });
        }
        let page = self
            .reader
            .scan_parts(self.repl.now, start, end, after, limit, partitions)
            .unwrap_or_else(|e| e);
        respond(Target::Peer(from, id), page, out);
    }
}
