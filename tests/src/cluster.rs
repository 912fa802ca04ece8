//! Reading a cluster's state from `/v1/status`, shared by the cluster and replica tests and the
//! replica benchmark (`bench/src/bin/replicas.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::thread;
use std::time::{Duration, Instant};

use crate::Server;

/// `GET /v1/status` as JSON; panics unless it answers 200.
pub fn status(s: &Server) -> serde_json::Value {
    let r = s.get("/v1/status");
    r.expect(200);
    r.json()
}

/// The node's own id, from its status page.
pub fn node_id(s: &Server) -> String {
    status(s)["node_id"].as_str().unwrap_or("").to_string()
}

/// The members (live nodes) a status page lists.
pub fn members(st: &serde_json::Value) -> Vec<String> {
    strings(&st["members"])
}

/// A JSON array of strings as a `Vec` (anything else: empty).
pub fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Partition → owner (primary), from a status page's `partitions`.
pub fn owners(st: &serde_json::Value) -> BTreeMap<usize, String> {
    let Some(map) = st["partitions"].as_object() else {
        panic!("status has no partitions object: {st}")
    };
    map.iter()
        .map(|(p, o)| {
            let p: usize = p.parse().unwrap_or(usize::MAX);
            (p, o.as_str().unwrap_or("").to_string())
        })
        .collect()
}

/// One partition's copies, from the status page's `replicas`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copies {
    pub primary: String,
    pub configuration: Vec<String>,
    pub in_sync: Vec<String>,
    pub learners: Vec<String>,
    pub epoch: u64,
}

/// Partition → its copies, from a status page.
pub fn replicas(st: &serde_json::Value) -> BTreeMap<usize, Copies> {
    let Some(map) = st["replicas"].as_object() else {
        panic!("status has no replicas object: {st}")
    };
    map.iter()
        .map(|(p, r)| {
            let p: usize = p.parse().unwrap_or(usize::MAX);
            let copies = Copies {
                primary: r["primary"].as_str().unwrap_or("").to_string(),
                configuration: strings(&r["configuration"]),
                in_sync: strings(&r["in_sync"]),
                learners: strings(&r["learners"]),
                epoch: r["epoch"].as_u64().unwrap_or(0),
            };
            (p, copies)
        })
        .collect()
}

/// `under_replicated_partitions` (`u64::MAX` when the page lacks it).
pub fn under_replicated(st: &serde_json::Value) -> u64 {
    st["under_replicated_partitions"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

/// The page's `partition_count`.
pub fn partition_count(st: &serde_json::Value) -> usize {
    st["partition_count"].as_u64().unwrap_or(0) as usize
}

/// Every one of the page's partitions has exactly `ids` in sync and no learner, and none is
/// under-replicated.
pub fn fully_replicated(st: &serde_json::Value, ids: &[&str]) -> bool {
    let want: BTreeSet<&str> = ids.iter().copied().collect();
    let r = replicas(st);
    under_replicated(st) == 0
        && r.keys().copied().eq(0..partition_count(st))
        && r.values().all(|c| {
            c.learners.is_empty()
                && c.in_sync.len() == ids.len()
                && c.in_sync
                    .iter()
                    .map(String::as_str)
                    .collect::<BTreeSet<_>>()
                    == want
        })
}

/// `id` is no partition's primary and in no partition's `in_sync` (it may still be a learner).
pub fn out_of_sync_everywhere(st: &serde_json::Value, id: &str) -> bool {
    replicas(st)
        .values()
        .all(|c| c.primary != id && !c.in_sync.iter().any(|n| n == id))
}

/// Waits until every node sees all of `ids` as members with every partition fully replicated;
/// panics after `limit`.
pub fn wait_fully_replicated(nodes: &[Server], ids: &[&str], limit: Duration) -> Duration {
    let start = Instant::now();
    for n in nodes {
        wait_for("every partition in sync on every node", limit, || {
            let st = status(n);
            members(&st).len() == ids.len() && fully_replicated(&st, ids)
        });
    }
    start.elapsed()
}

/// Polls every 50 ms until `f` holds, or panics with `what` after `limit`. Returns how long it
/// took.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return start.elapsed();
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

/// The partition of a key among `partitions`, computed as the node computes it.
pub fn partition_of(k: &[u8], partitions: usize) -> usize {
    (corecache_core::engine::format::hash64(k) % partitions.max(1) as u64) as usize
}

/// One probe key per partition, with its value: the first `probe:{i}` that falls in it, in
/// partition order.
pub fn probe_keys(partitions: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut found: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
    let mut i = 0usize;
    while found.len() < partitions {
        let k = format!("probe:{i}").into_bytes();
        found.entry(partition_of(&k, partitions)).or_insert(k);
        i += 1;
    }
    found
        .into_iter()
        .map(|(p, k)| (k, format!("probe-value-{p}").into_bytes()))
        .collect()
}
