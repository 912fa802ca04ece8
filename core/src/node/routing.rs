//! Routing: who owns a key, running a request here or forwarding it to its owner, and what
//! happens when the owner disagrees (`NotOwner`: the request waits for a newer map and is
//! routed again), is down, or does not answer.

use std::collections::{BTreeMap, BTreeSet};

use super::gate::{respond, Target};
use super::reader::Routes;
use super::{Node, Output};
use crate::cluster::ClusterState;
use crate::proto::peer::PeerMessage;
use crate::proto::{err, ErrorKind, Request, Response};

/// How long a forwarded request may wait for its owner's answer, counted for a client's request
/// from when it arrived (so that waiting for a newer map first does not add to it).
pub(crate) const FORWARD_TIMEOUT_MS: u64 = 10_000;
/// How long a request waits for a newer partition map after `NotOwner`, and how often it retries.
const PARK_TIMEOUT_MS: u64 = 5_000;
const PARK_RETRY_MS: u64 = 50;

/// Requests in flight to other nodes, and requests waiting for a newer map.
#[derive(Default)]
pub(crate) struct Forwarding {
    /// Ids for forwards, scan parts and hand-off steps (one sequence for all of them).
    pub(crate) next_id: u64,
    /// By id, and by deadline (a request that waited for a map first has less time left).
    pub(crate) forwards: BTreeMap<u64, Forwarded>,
    pub(crate) by_deadline: BTreeSet<(u64, u64)>,
    pub(crate) scans: BTreeMap<u64, super::scan::ScanAgg>,
    /// Requests waiting for a newer partition map.
    pub(crate) parked: Vec<Parked>,
}

impl Forwarding {
    pub(crate) fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Remembers forward `id` to `to`, expiring `FORWARD_TIMEOUT_MS` after `now`, or for a
    /// client's request after it arrived (its wait for a newer map, if any, counts).
    pub(crate) fn track(&mut self, id: u64, to: String, now: u64, kind: FwdKind) {
        let mut deadline = now + FORWARD_TIMEOUT_MS;
        if let FwdKind::Single { give_up, .. } = &kind {
            let arrived = give_up.saturating_sub(PARK_TIMEOUT_MS);
            deadline = deadline.min(arrived + FORWARD_TIMEOUT_MS).max(now + 1);
        }
        self.by_deadline.insert((deadline, id));
        self.forwards.insert(id, Forwarded { to, deadline, kind });
    }

    /// Forgets forward `id` (answered, failed or expired) and returns it.
    pub(crate) fn take(&mut self, id: u64) -> Option<Forwarded> {
        let f = self.forwards.remove(&id)?;
        self.by_deadline.remove(&(f.deadline, id));
        Some(f)
    }

    /// The earliest deadline of a forward in flight.
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.by_deadline.first().map(|(d, _)| *d)
    }
}

pub(crate) struct Parked {
    pub(crate) retry_at: u64,
    pub(crate) give_up: u64,
    pub(crate) client: u64,
    pub(crate) request: Request,
}

pub(crate) struct Forwarded {
    pub(crate) to: String,
    pub(crate) deadline: u64,
    /// A whole request for one client, or one part of a fanned-out scan.
    pub(crate) kind: FwdKind,
}

pub(crate) enum FwdKind {
    Single {
        client: u64,
        request: Request,
        give_up: u64,
    },
    ScanPart {
        scan: u64,
    },
}

impl Node {
    /// Publishes which partitions this node serves, for reads outside the door.
    pub(crate) fn publish_routes(&mut self) {
        let owned = match self.routable() {
            Ok(s) => Some(
                s.owners
                    .iter()
                    .enumerate()
                    .map(|(p, o)| {
                        (*o == self.cfg.node_id && !self.frozen(p as u16))
                            || (crate::bugs::on(crate::bugs::Bug::StaleOwnerRead)
                                && self.ho.cleanup.contains_key(&(p as u16)))
                    })
                    .collect(),
            ),
            Err(_) => None,
        };
        self.reader.publish(Routes { owned });
    }

    /// The partition map, if the node can route by it.
    pub(crate) fn routable(&self) -> Result<&ClusterState, Response> {
        match &self.view.state {
            None => Err(err(
                ErrorKind::NotReady,
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
    pub(crate) fn owner(&self, p: u16) -> Result<String, Response> {
        let s = self.routable()?;
        Ok(s.owners[usize::from(p)].clone())
    }

    pub(crate) fn is_member(&self, id: &str) -> bool {
        self.view.members.iter().any(|m| m.id == id)
    }

    fn map_version(&self) -> u64 {
        self.view.state.as_ref().map_or(0, |s| s.version)
    }

    /// The owner of every key a request names (one owner, or an error saying why not).
    fn owner_of_request(&self, request: &Request) -> Result<String, Response> {
        if matches!(request, Request::Scan { .. }) {
            return Err(err(ErrorKind::Internal, "scans fan out"));
        }
        let mut owner: Option<String> = None;
        for k in request.keys() {
            let o = self.owner(self.partition_of(k))?;
            match &owner {
                Some(prev) if *prev != o => {
                    return Err(err(
                        ErrorKind::SpansNodes,
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
    pub(crate) fn route(
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
                self.park(now, give_up, id, request);
                return;
            }
            return self.execute(now, Target::Client(id), request, out);
        }
        if !self.is_member(&owner) {
            return out.push(Output::Reply {
                id,
                response: err(
                    ErrorKind::OwnerDown,
                    format!("node {owner}, which owns this key's partition, is down"),
                ),
            });
        }
        let fid = self.fwd.next_id();
        out.push(Output::Send {
            to: owner.clone(),
            message: PeerMessage::Forward {
                id: fid,
                map_version: self.map_version(),
                request: request.clone(),
            },
        });
        let kind = FwdKind::Single {
            client: id,
            request,
            give_up,
        };
        self.fwd.track(fid, owner, now, kind);
    }

    fn park(&mut self, now: u64, give_up: u64, client: u64, request: Request) {
        self.fwd.parked.push(Parked {
            retry_at: now + PARK_RETRY_MS,
            give_up,
            client,
            request,
        });
    }

    /// A peer forwarded a request to us as the owner: run it, or say we are not the owner.
    pub(crate) fn on_forward(
        &mut self,
        now: u64,
        from: String,
        id: u64,
        request: Request,
        out: &mut Vec<Output>,
    ) {
        match self.owner_of_request(&request) {
            Ok(o) if o == self.cfg.node_id && !self.touches_frozen(&request) => {
                self.execute(now, Target::Peer(from, id), request, out)
            }
            Ok(_) => out.push(Output::Send {
                to: from,
                message: PeerMessage::NotOwner {
                    id,
                    map_version: self.map_version(),
                },
            }),
            Err(e) => respond(Target::Peer(from, id), e, out),
        }
    }

    /// The owner answered a forward (or a scan part).
    pub(crate) fn on_forward_reply(&mut self, id: u64, response: Response, out: &mut Vec<Output>) {
        if let Some(f) = self.fwd.take(id) {
            match f.kind {
                FwdKind::Single { client, .. } => out.push(Output::Reply {
                    id: client,
                    response,
                }),
                FwdKind::ScanPart { scan } => self.scan_part_done(scan, response, out),
            }
        }
    }

    /// The node we forwarded to does not own the partition (any more, or yet).
    pub(crate) fn on_not_owner(&mut self, now: u64, id: u64, out: &mut Vec<Output>) {
        let Some(f) = self.fwd.take(id) else {
            return;
        };
        match f.kind {
            FwdKind::Single {
                client,
                request,
                give_up,
            } => {
                // Our map is behind (or theirs is): wait for a newer one and retry.
                self.park(now, give_up, client, request);
            }
            FwdKind::ScanPart { scan } => {
                let e = err(
                    ErrorKind::Moving,
                    "the partition map changed during the scan; retry",
                );
                self.scan_part_done(scan, e, out);
            }
        }
    }

    pub(crate) fn on_peer_down(&mut self, peer: &str, out: &mut Vec<Output>) {
        let lost: Vec<u64> = self
            .fwd
            .forwards
            .iter()
            .filter(|(_, f)| f.to == peer)
            .map(|(id, _)| *id)
            .collect();
        self.fail_forwards(lost, |to| format!("lost the connection to node {to}"), out);
    }

    /// Forwards whose owner did not answer in time: the front of the deadline index (every
    /// input runs this; a scan of thousands of forwards in flight each time would not do).
    pub(crate) fn expire_forwards(&mut self, now: u64, out: &mut Vec<Output>) {
        let expired: Vec<u64> = self
            .fwd
            .by_deadline
            .iter()
            .take_while(|(d, _)| *d <= now)
            .map(|(_, id)| *id)
            .collect();
        self.fail_forwards(
            expired,
            |to| format!("node {to} did not answer in time"),
            out,
        );
    }

    /// Answers forwards `ids` "outcome unknown": the owner may have carried them out.
    fn fail_forwards(
        &mut self,
        ids: Vec<u64>,
        why: impl Fn(&str) -> String,
        out: &mut Vec<Output>,
    ) {
        for fid in ids {
            if let Some(f) = self.fwd.take(fid) {
                let e = err(
                    ErrorKind::OutcomeUnknown,
                    format!("{}; the outcome is unknown", why(&f.to)),
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

    /// Re-routes parked requests whose retry time came (or all, after a map change), and
    /// fails those that waited too long.
    pub(crate) fn retry_parked(&mut self, now: u64, all: bool, out: &mut Vec<Output>) {
        let parked = std::mem::take(&mut self.fwd.parked);
        for p in parked {
            if p.give_up <= now {
                out.push(Output::Reply {
                    id: p.client,
                    response: err(
                        ErrorKind::Moving,
                        "the owner of this key's partition is changing; retry",
                    ),
                });
            } else if all || p.retry_at <= now {
                self.route(now, p.client, p.request, Some(p.give_up), out);
            } else {
                self.fwd.parked.push(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forward_after_a_wait_for_a_map_keeps_the_time_its_request_came_with() {
        let mut f = Forwarding::default();
        let get = Request::Get { key: "k".into() };
        // Came at 1,000 (gives up parking at 6,000), forwarded at 5,000 after waiting.
        let single = FwdKind::Single {
            client: 7,
            request: get,
            give_up: 1_000 + PARK_TIMEOUT_MS,
        };
        f.track(1, "b".into(), 5_000, single);
        // A scan part sent at once at 2,000.
        f.track(2, "c".into(), 2_000, FwdKind::ScanPart { scan: 3 });
        assert_eq!(f.next_deadline(), Some(1_000 + FORWARD_TIMEOUT_MS));
        assert!(f.take(1).is_some());
        assert_eq!(f.next_deadline(), Some(2_000 + FORWARD_TIMEOUT_MS));
        assert!(f.take(1).is_none(), "taken once");
        assert!(f.take(2).is_some());
        assert_eq!(f.next_deadline(), None);
        assert!(f.by_deadline.is_empty() && f.forwards.is_empty());
    }
}
