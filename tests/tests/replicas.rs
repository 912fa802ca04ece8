//! Replication against a real ZooKeeper and real `corecache` processes on loopback: three
//! copies of every partition (`--replication-factor 3`), two in sync for a write
//! (`--min-insync-replicas 2`), every write fsynced (`--sync always`). A primary killed with -9
//! is replaced by a backup within the session timeout and loses no acknowledged write; a node
//! back on an empty disk is rebuilt; with two of three nodes gone, writes are refused and reads
//! go on.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use corecache_e2e::cluster::{
    self, fully_replicated, members, node_id, out_of_sync_everywhere, replicas, status,
    under_replicated, wait_for, wait_fully_replicated, Copies,
};
use corecache_e2e::zk::ZooKeeper;
use corecache_e2e::{kv_path, Server};

const SESSION_MS: u64 = 2_000;
const PARTITIONS: usize = 64;
/// Keys the writer cycles through.
const WRITER_KEYS: usize = 2_000;

/// Starts `ids` as one replicated cluster named `cluster`, all at once, waiting until each is
/// ready. The first leader deals the partitions over all of them (`--initial-nodes`).
fn start_cluster(zk: &ZooKeeper, cluster: &str, ids: &[&str]) -> Vec<Server> {
    let n = ids.len().to_string();
    thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .map(|id| {
                let n = n.clone();
                s.spawn(move || node(zk, cluster, id, &["--initial-nodes", &n]))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(s) => s,
                Err(_) => panic!("a node failed to start"),
            })
            .collect()
    })
}

/// One node of a replicated cluster; the replication settings are passed explicitly.
fn node(zk: &ZooKeeper, cluster: &str, id: &str, extra: &[&str]) -> Server {
    let session = SESSION_MS.to_string();
    let zks = zk.connect_string();
    let mut args = vec![
        "--zookeeper",
        zks.as_str(),
        "--cluster",
        cluster,
        "--node-id",
        id,
        "--peer-listen",
        "127.0.0.1:0",
        "--session-timeout-ms",
        session.as_str(),
        "--replication-factor",
        "3",
        "--min-insync-replicas",
        "2",
        "--sync",
        "always",
    ];
    args.extend_from_slice(extra);
    Server::start_with(&args)
}

/// The partition of a key, as the cluster computes it.
fn partition_of(k: &[u8]) -> usize {
    cluster::partition_of(k, PARTITIONS)
}

fn probe_keys() -> Vec<(Vec<u8>, Vec<u8>)> {
    cluster::probe_keys(PARTITIONS)
}

/// Writes every probe key through the nodes in turn, asserting 200.
fn write_probes(nodes: &[Server], probes: &[(Vec<u8>, Vec<u8>)]) {
    for (i, (k, v)) in probes.iter().enumerate() {
        let r = nodes[i % nodes.len()].request("PUT", &kv_path(k), &[], v);
        assert_eq!(
            r.status,
            200,
            "put {} before any fault: {r:?}",
            String::from_utf8_lossy(k)
        );
    }
}

/// A probe key through `via`: readable with its value (GET 200), then writable (PUT 200 of the
/// same value, so that an unknown outcome changes nothing). A 503 is "not yet" and comes back
/// as `Err`; any other status, or a wrong value, fails the test.
fn probe_serves(via: &Server, k: &[u8], v: &[u8]) -> Result<(), corecache_e2e::Response> {
    let name = String::from_utf8_lossy(k);
    let r = via.get_kv(k);
    match r.status {
        200 => assert_eq!(r.body, v, "{name} read back another value: {r:?}"),
        503 => return Err(r),
        _ => panic!("{name}: GET answered neither 200 nor 503: {r:?}"),
    }
    let w = via.request("PUT", &kv_path(k), &[], v);
    match w.status {
        200 => Ok(()),
        503 => Err(w),
        _ => panic!("{name}: PUT answered neither 200 nor 503: {w:?}"),
    }
}

/// Polls every probe key through `vias` in turn (key `i` through `vias[i % len]`) until each
/// has been read and written once, or panics after `limit` naming each key still refused and
/// its last answer. Returns how long it took and, for each partition, when it was served again
/// and its last refusal before that.
fn until_served(
    vias: &[&Server],
    probes: &[(Vec<u8>, Vec<u8>)],
    limit: Duration,
) -> (Duration, BTreeMap<usize, (Duration, String)>) {
    let start = Instant::now();
    let mut served = BTreeMap::new();
    let mut last: BTreeMap<usize, String> = BTreeMap::new();
    while start.elapsed() < limit {
        for (i, (k, v)) in probes.iter().enumerate() {
            if served.contains_key(&partition_of(k)) {
                continue;
            }
            match probe_serves(vias[i % vias.len()], k, v) {
                Ok(()) => {
                    let p = partition_of(k);
                    let refusal = last.get(&p).cloned().unwrap_or_default();
                    served.insert(p, (start.elapsed(), refusal));
                }
                Err(r) => {
                    last.insert(partition_of(k), format!("{} {}", r.request, r.text()));
                }
            }
        }
        if served.len() == probes.len() {
            return (start.elapsed(), served);
        }
        thread::sleep(Duration::from_millis(20));
    }
    let refused: Vec<String> = last
        .iter()
        .filter(|(p, _)| !served.contains_key(p))
        .map(|(p, a)| format!("partition {p}: {a}"))
        .collect();
    panic!(
        "after {limit:?}, {} partitions still refused:\n{}\nstatus: {}",
        refused.len(),
        refused.join("\n"),
        status(vias[0])["replicas"]
    );
}

/// When partitions were served again, those of `dead` apart from the others, and what the
/// slowest of each kind answered last before it was served.
fn report_served(
    served: &BTreeMap<usize, (Duration, String)>,
    before: &BTreeMap<usize, Copies>,
    dead: &str,
) {
    for (whose, of_dead) in [("the dead primary's", true), ("the other", false)] {
        let mine: Vec<(&usize, &(Duration, String))> = served
            .iter()
            .filter(|(p, _)| (before[p].primary == dead) == of_dead)
            .collect();
        let Some(min) = mine.iter().map(|(_, (t, _))| *t).min() else {
            continue;
        };
        let Some((p, (max, refusal))) = mine.iter().max_by_key(|(_, (t, _))| *t) else {
            continue;
        };
        eprintln!(
            "  {whose} {} partitions served again between {min:?} and {max:?}; the last, \
             partition {p}, answered before: {refusal}",
            mine.len()
        );
    }
}

/// The first node (by position) that is primary of some partition and not the leader.
fn a_primary_that_is_not_the_leader(nodes: &[Server]) -> usize {
    let st = status(&nodes[0]);
    let leader = st["leader"].as_str().unwrap_or("").to_string();
    let r = replicas(&st);
    let ids: Vec<String> = nodes
        .iter()
        .map(|n| status(n)["node_id"].as_str().unwrap_or("").to_string())
        .collect();
    match ids
        .iter()
        .position(|id| *id != leader && r.values().any(|c| c.primary == *id))
    {
        Some(i) => i,
        None => panic!("no node other than the leader {leader} is a primary: {st}"),
    }
}

/// The partition that gets more writes than a partition's log keeps (4,096 entries), and how
/// many.
const HEAVY_PARTITION: usize = 7;
const HEAVY_WRITES: usize = 4_600;

/// `writes` PUTs to 64 keys of partition `p`, through its primary, from 4 threads at once
/// (so that they share fsyncs); each must be acknowledged. Returns each key's last value.
fn fill_partition(nodes: &[Server], p: usize, writes: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let st = status(&nodes[0]);
    let primary = replicas(&st)
        .get(&p)
        .map(|c| c.primary.clone())
        .unwrap_or_default();
    let Some(via) = nodes.iter().find(|n| node_id(n) == primary) else {
        panic!("partition {p}'s primary {primary:?} is none of ours: {st}")
    };
    let keys: Vec<Vec<u8>> = (0..)
        .map(|i| format!("heavy:{i}").into_bytes())
        .filter(|k| partition_of(k) == p)
        .take(64)
        .collect();
    const THREADS: usize = 4;
    let per_thread = writes.div_ceil(THREADS);
    thread::scope(|s| {
        for t in 0..THREADS {
            let keys = &keys;
            s.spawn(move || {
                for n in 0..per_thread {
                    let k = &keys[t + THREADS * (n % (keys.len() / THREADS))];
                    let v = format!("heavy-{t}-{n}");
                    let r = via.request("PUT", &kv_path(k), &[], v.as_bytes());
                    assert_eq!(
                        r.status,
                        200,
                        "{} before any fault: {r:?}",
                        String::from_utf8_lossy(k)
                    );
                }
            });
        }
    });
    // Key `keys[t + THREADS * j]` was last written by thread t at the last n ≡ j.
    let rounds = keys.len() / THREADS;
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            let (t, j) = (i % THREADS, i / THREADS);
            let last = (0..per_thread).rev().find(|n| n % rounds == j).unwrap_or(0);
            (k.clone(), format!("heavy-{t}-{last}").into_bytes())
        })
        .collect()
}

/// What a writer learned about each key: the last acknowledged value, and values written after
/// it whose outcome is unknown (the request failed in a way that may or may not have applied).
#[derive(Default)]
struct Ledger {
    acked: BTreeMap<Vec<u8>, String>,
    maybe: BTreeMap<Vec<u8>, Vec<String>>,
    statuses: BTreeMap<u16, usize>,
    /// Transport errors by the index of the address they happened on.
    transport_errors: BTreeMap<usize, usize>,
    slowest: Duration,
}

/// The addresses a writer sends through; a test replaces a restarted node's (its port changes).
type Addrs = Arc<Mutex<Vec<SocketAddr>>>;

/// Writes `w:{i % keys}` = `{i}` through the addresses in turn until `stop`, recording
/// everything. A transport error (a killed node among the addresses) is an unknown outcome.
fn writer(addrs: Addrs, keys: usize, stop: Arc<AtomicBool>) -> thread::JoinHandle<Ledger> {
    thread::spawn(move || {
        let mut l = Ledger::default();
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let k = format!("w:{:04}", i % keys).into_bytes();
            let v = i.to_string();
            let (at, addr) = match addrs.lock() {
                Ok(a) => (i % a.len(), a[i % a.len()]),
                Err(_) => panic!("the address list is poisoned"),
            };
            let began = Instant::now();
            match corecache_e2e::http(addr, "PUT", &kv_path(&k), &[], v.as_bytes()) {
                Ok(r) => {
                    l.slowest = l.slowest.max(began.elapsed());
                    *l.statuses.entry(r.status).or_default() += 1;
                    if r.status == 200 {
                        l.maybe.remove(&k);
                        l.acked.insert(k, v);
                    } else {
                        l.maybe.entry(k).or_default().push(v);
                    }
                }
                Err(_) => {
                    *l.transport_errors.entry(at).or_default() += 1;
                    l.maybe.entry(k).or_default().push(v);
                }
            }
            i += 1;
        }
        l
    })
}

fn addrs_of(nodes: &[Server]) -> Addrs {
    Arc::new(Mutex::new(nodes.iter().map(|n| n.addr()).collect()))
}

/// Transport errors happened only on address `victim` (the killed node's).
fn assert_transport_errors_only_on(l: &Ledger, victim: usize) {
    let bad: Vec<_> = l
        .transport_errors
        .keys()
        .filter(|&&i| i != victim)
        .collect();
    assert!(
        bad.is_empty(),
        "transport errors on live nodes {bad:?}: {:?}",
        l.transport_errors
    );
}

/// `GET` of `k` through `via`; a 503 (a new primary waiting out its lease promise, a
/// partition changing hands) is asked again until `patience` has passed.
fn read_settled(via: &Server, k: &[u8], patience: Duration) -> corecache_e2e::Response {
    let start = Instant::now();
    loop {
        let r = via.get_kv(k);
        if r.status != 503 || start.elapsed() >= patience {
            return r;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The failure message for a read that was not 200: the key, its partition as `via` sees it.
fn unreadable(via: &Server, k: &[u8], r: &corecache_e2e::Response) -> String {
    format!(
        "{} (partition {}) through {}: {r:?}\nits copies as {} sees them: {}",
        String::from_utf8_lossy(k),
        partition_of(k),
        node_id(via),
        node_id(via),
        status(via)["replicas"][partition_of(k).to_string()]
    )
}

/// Every acknowledged key reads back, one by one through `via`, with its last acknowledged
/// value or a later one whose outcome was unknown (503s retried for `patience`).
fn check_ledger(l: &Ledger, via: &Server, patience: Duration) {
    assert!(!l.acked.is_empty(), "the writer got nothing acknowledged");
    for (k, v) in &l.acked {
        let r = read_settled(via, k, patience);
        assert_eq!(r.status, 200, "{}", unreadable(via, k, &r));
        let got = String::from_utf8_lossy(&r.body).into_owned();
        let later = l.maybe.get(k).is_some_and(|m| m.contains(&got));
        assert!(
            got == *v || later,
            "{}: read {got}, last acknowledged {v}",
            String::from_utf8_lossy(k)
        );
    }
}

/// Every key reads back through `via` with exactly its value (503s retried for `patience`).
fn check_values(kvs: &[(Vec<u8>, Vec<u8>)], via: &Server, patience: Duration) {
    for (k, v) in kvs {
        let r = read_settled(via, k, patience);
        assert_eq!(r.status, 200, "{}", unreadable(via, k, &r));
        assert_eq!(&r.body, v, "{}", unreadable(via, k, &r));
    }
}

/// Lets the writer run `more`, stops it, and checks that no request got a server error other
/// than 503 (a partition failing over is allowed to say so).
fn finish_writer(stop: &AtomicBool, w: thread::JoinHandle<Ledger>, more: Duration) -> Ledger {
    thread::sleep(more);
    stop.store(true, Ordering::Relaxed);
    let Ok(ledger) = w.join() else {
        panic!("the writer panicked")
    };
    eprintln!(
        "writer: statuses {:?}, transport errors by address {:?}, {} keys acknowledged, \
         slowest answer {:?}",
        ledger.statuses,
        ledger.transport_errors,
        ledger.acked.len(),
        ledger.slowest
    );
    let server_errors: Vec<_> = ledger
        .statuses
        .iter()
        .filter(|(s, _)| **s >= 500 && **s != 503)
        .collect();
    assert!(
        server_errors.is_empty(),
        "server errors other than 503: {:?}",
        ledger.statuses
    );
    ledger
}

/// kill -9 a primary while a writer runs: within the session timeout + 3 s every partition
/// (one probe key each) is readable and writable through a survivor again, the dead node is in
/// sync for no partition (it keeps a learner's place until `replica_timeout_ms`), no request gets
/// a 5xx other than 503, and every acknowledged write reads back through both survivors.
#[test]
fn killing_any_one_node_of_three_loses_no_acknowledged_write() {
    let zk = ZooKeeper::start();
    let ids = ["k1", "k2", "k3"];
    let mut nodes = start_cluster(&zk, "kill-one", &ids);
    let took = wait_fully_replicated(&nodes, &ids, Duration::from_secs(20));
    eprintln!("three copies of every partition after {took:?}");
    let probes = probe_keys();
    write_probes(&nodes, &probes);

    let stop = Arc::new(AtomicBool::new(false));
    let addrs = addrs_of(&nodes);
    let w = writer(addrs.clone(), WRITER_KEYS, stop.clone());
    thread::sleep(Duration::from_millis(1_500));

    let victim = a_primary_that_is_not_the_leader(&nodes);
    let dead = node_id(&nodes[victim]);
    let before = replicas(&status(&nodes[victim]));
    let primaries = before.values().filter(|c| c.primary == dead).count();
    nodes[victim].kill9();
    let killed_at = Instant::now();
    eprintln!("killed {dead}, primary of {primaries} partitions");
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();

    let vias: Vec<&Server> = survivors.iter().map(|&i| &nodes[i]).collect();
    let (took, served) = until_served(&vias, &probes, Duration::from_secs(30));
    let limit = Duration::from_millis(SESSION_MS + 3_000);
    eprintln!(
        "failover: every partition readable and writable {took:?} after the kill (limit \
         {limit:?})"
    );
    report_served(&served, &before, &dead);
    assert!(
        took <= limit,
        "failover took {took:?}, more than the {SESSION_MS} ms session timeout + 3 s"
    );

    let after = status(&nodes[survivors[0]]);
    for (p, c) in replicas(&after) {
        assert_ne!(
            c.primary, dead,
            "partition {p} still has the dead primary: {after}"
        );
        if before[&p].primary == dead {
            assert!(
                c.epoch > before[&p].epoch,
                "partition {p} changed primary without a new epoch: {c:?} (was {:?})",
                before[&p]
            );
        }
    }
    // The dead node leaves the copies writes wait for at once; it keeps its place as a learner
    // until `replica_timeout_ms` (60 s), so that back in time it would catch up from the log.
    wait_for(
        "the dead node to leave every partition's copies in sync",
        Duration::from_secs(10),
        || {
            survivors
                .iter()
                .all(|&i| out_of_sync_everywhere(&status(&nodes[i]), &dead))
        },
    );
    let st = status(&nodes[survivors[0]]);
    eprintln!(
        "{dead} in no partition's in_sync {:?} after the kill; still a learner of {}",
        killed_at.elapsed(),
        replicas(&st)
            .values()
            .filter(|c| c.learners.contains(&dead))
            .count()
    );

    let ledger = finish_writer(&stop, w, Duration::from_secs(1));
    assert_transport_errors_only_on(&ledger, victim);
    // Primaries are moved between the survivors to balance them (role swaps); a partition whose
    // primary just changed answers 503 until the new primary's lease holds.
    let patience = Duration::from_secs(5);
    for &i in &survivors {
        check_ledger(&ledger, &nodes[i], patience);
        check_values(&probes, &nodes[i], patience);
    }
}

/// kill -9 a node while a writer runs, wipe its data directory and start it again under the
/// same id: it drops out of the copies in sync, is rebuilt as a learner (one partition has had
/// more writes than its log keeps, so that one needs a copy), and within 60 s is a backup of
/// every partition again (three copies in sync, none under-replicated) and primary of its share.
/// Meanwhile no read answers anything but the right value or 503, and afterwards every
/// acknowledged write reads back through all three nodes, the rebuilt one included.
#[test]
fn a_node_replaced_on_an_empty_disk_is_rebuilt_and_nothing_is_lost() {
    let zk = ZooKeeper::start();
    let ids = ["e1", "e2", "e3"];
    let mut nodes = start_cluster(&zk, "empty-disk", &ids);
    wait_fully_replicated(&nodes, &ids, Duration::from_secs(20));
    let probes = probe_keys();
    write_probes(&nodes, &probes);
    // One partition gets more writes than its log keeps, so that the wiped node cannot be
    // rebuilt from that log alone: it needs a copy of the partition.
    let began = Instant::now();
    let heavy = fill_partition(&nodes, HEAVY_PARTITION, HEAVY_WRITES);
    eprintln!(
        "{HEAVY_WRITES} writes to partition {HEAVY_PARTITION} in {:?}",
        began.elapsed()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let addrs = addrs_of(&nodes);
    let w = writer(addrs.clone(), WRITER_KEYS, stop.clone());
    thread::sleep(Duration::from_millis(1_500));

    let victim = a_primary_that_is_not_the_leader(&nodes);
    let wiped = node_id(&nodes[victim]);
    let leader = status(&nodes[0])["leader"]
        .as_str()
        .unwrap_or("")
        .to_string();
    // Each partition's epoch before: the node's leaving and coming back each raise it.
    let epochs_before: BTreeMap<usize, u64> = replicas(&status(&nodes[victim]))
        .into_iter()
        .map(|(p, c)| (p, c.epoch))
        .collect();
    nodes[victim].kill9();
    let data = nodes[victim].data_dir();
    if let Err(e) = std::fs::remove_dir_all(&data).and_then(|_| std::fs::create_dir_all(&data)) {
        panic!("cannot empty {}: {e}", data.display());
    }
    nodes[victim].restart();
    let restarted_at = Instant::now();
    match addrs.lock() {
        Ok(mut a) => a[victim] = nodes[victim].addr(),
        Err(_) => panic!("the address list is poisoned"),
    }
    assert_eq!(node_id(&nodes[victim]), wiped, "restarted under its old id");
    eprintln!("{wiped} restarted on an empty disk (the leader is {leader})");

    // Until the leader sees the new disk, the old configurations still list the node; then it
    // leaves each of them, comes back as a learner (a copy for the heavy partition, the log
    // for the others), becomes a backup, and takes back primaries (role swaps).
    let survivor = (0..3).find(|i| *i != victim).unwrap_or(0);
    let share = PARTITIONS / ids.len();
    // Partitions seen without the node in sync, and when each had it in sync again (with the
    // primary that brought it back).
    let mut dropped = BTreeSet::new();
    let mut back_at: BTreeMap<usize, (f64, String)> = BTreeMap::new();
    let mut early_503s = [0usize; 2];
    let mut learner_at = None;
    let mut late_dump = false;
    let took = wait_for(
        "the rebuilt node in sync for every partition and primary of its share",
        Duration::from_secs(60),
        || {
            // Meanwhile nothing is served from the empty disk: every probe key reads its
            // value or 503, through the rebuilt node and through a survivor.
            for (k, v) in &probes {
                for (j, via) in [&nodes[victim], &nodes[survivor]].into_iter().enumerate() {
                    let r = via.get_kv(k);
                    match r.status {
                        200 => assert_eq!(&r.body, v, "{}", unreadable(via, k, &r)),
                        503 => early_503s[j] += 1,
                        _ => panic!("during the rebuild: {}", unreadable(via, k, &r)),
                    }
                }
            }
            let st = status(&nodes[survivor]);
            let r = replicas(&st);
            for (p, c) in &r {
                if !c.in_sync.contains(&wiped) {
                    dropped.insert(*p);
                } else if dropped.contains(p) && !back_at.contains_key(p) {
                    let t = restarted_at.elapsed().as_secs_f64();
                    back_at.insert(*p, (t, c.primary.clone()));
                }
            }
            if learner_at.is_none() && r.values().any(|c| c.learners.contains(&wiped)) {
                learner_at = Some(restarted_at.elapsed());
            }
            let primary_of = r.values().filter(|c| c.primary == wiped).count();
            if restarted_at.elapsed() > Duration::from_secs(58) && !late_dump {
                // About to time out: say where the rebuild stands.
                late_dump = true;
                eprintln!(
                    "at {:?}: members {:?}, under-replicated {}, {wiped} primary of {primary_of}",
                    restarted_at.elapsed(),
                    members(&st),
                    under_replicated(&st)
                );
                for (p, c) in &r {
                    if c.in_sync.len() != 3 || !c.learners.is_empty() {
                        eprintln!("  partition {p}: {c:?}");
                    }
                }
            }
            // Left and came back everywhere (the epochs moved), possibly faster than this
            // loop polls, and the cluster is whole again.
            let rejoined = r
                .iter()
                .all(|(p, c)| epochs_before.get(p).is_some_and(|e| c.epoch >= e + 2));
            rejoined
                && members(&st).len() == 3
                && fully_replicated(&st, &ids)
                && primary_of >= share
        },
    );
    let heavy_at = back_at.get(&HEAVY_PARTITION).map(|(t, _)| *t);
    eprintln!(
        "rebuilt: taken back as a learner {learner_at:?}, in sync for every partition and \
         primary of its share ({share}) {took:?} after the restart; in sync for the heavy \
         partition {HEAVY_PARTITION} at {heavy_at:?} s"
    );
    let mut by_primary: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (t, primary) in back_at.values() {
        by_primary
            .entry(primary)
            .or_default()
            .push(format!("{t:.2}"));
    }
    for (primary, times) in &by_primary {
        eprintln!(
            "{wiped} in sync again for {} partitions whose primary is {primary}, at ({}) s",
            times.len(),
            times.join(" ")
        );
    }
    eprintln!(
        "probe reads answered 503 during the rebuild: {} through {wiped}, {} through a survivor",
        early_503s[0], early_503s[1]
    );
    for n in &nodes {
        let refused = n
            .stderr_log()
            .matches("a conditional cluster-state write was refused")
            .count();
        eprintln!("{}: {refused} cluster-state writes refused", node_id(n));
    }
    wait_fully_replicated(&nodes, &ids, Duration::from_secs(10));

    let ledger = finish_writer(&stop, w, Duration::from_secs(1));
    assert_transport_errors_only_on(&ledger, victim);
    let patience = Duration::from_secs(5);
    for n in &nodes {
        check_ledger(&ledger, n, patience);
        check_values(&heavy, n, patience);
        check_values(&probes, n, patience);
    }
    let st = status(&nodes[victim]);
    for (p, c) in replicas(&st) {
        assert!(
            c.configuration.contains(&wiped) && c.in_sync.contains(&wiped),
            "partition {p} does not list the rebuilt node {wiped}: {c:?}"
        );
    }
}

/// Three nodes, 64 probe keys (one per partition); kill -9 one node, wait until every key is
/// served again, then kill -9 a second. The survivor is then the only copy: every partition
/// refuses writes (503 with Retry-After: fewer than `min_insync_replicas` copies in sync) and
/// goes on serving reads with the acknowledged values.
#[test]
fn with_two_of_three_nodes_gone_writes_are_refused_and_reads_go_on() {
    let zk = ZooKeeper::start();
    let ids = ["t1", "t2", "t3"];
    let mut nodes = start_cluster(&zk, "two-gone", &ids);
    wait_fully_replicated(&nodes, &ids, Duration::from_secs(20));
    let probes = probe_keys();
    write_probes(&nodes, &probes);

    let first = a_primary_that_is_not_the_leader(&nodes);
    let first_id = node_id(&nodes[first]);
    nodes[first].kill9();
    let rest: Vec<usize> = (0..3).filter(|i| *i != first).collect();
    let vias: Vec<&Server> = rest.iter().map(|&i| &nodes[i]).collect();
    let (took, _) = until_served(&vias, &probes, Duration::from_secs(30));
    eprintln!("first kill ({first_id}): every probe key served again after {took:?}");
    wait_for(
        "the first dead node to leave every partition's copies in sync",
        Duration::from_secs(10),
        || {
            rest.iter()
                .all(|&i| out_of_sync_everywhere(&status(&nodes[i]), &first_id))
        },
    );

    // Kill the leader of the two, so that the survivor must take over the cluster too.
    let st = status(&nodes[rest[0]]);
    let leader = st["leader"].as_str().unwrap_or("").to_string();
    let (second, last) = if node_id(&nodes[rest[0]]) == leader {
        (rest[0], rest[1])
    } else {
        (rest[1], rest[0])
    };
    let second_id = node_id(&nodes[second]);
    let last_id = node_id(&nodes[last]);
    let before = replicas(&status(&nodes[last]));
    let own = before.values().filter(|c| c.primary == last_id).count();
    eprintln!("killing {second_id} (the leader); {last_id}, primary of {own}, survives");
    nodes[second].kill9();
    let second_killed_at = Instant::now();
    let survivor = &nodes[last];
    let took = wait_for(
        "the survivor to lead a cluster of one",
        Duration::from_secs(20),
        || {
            let st = status(survivor);
            st["role"] == "leader" && members(&st) == [last_id.clone()]
        },
    );
    eprintln!("{last_id} leads alone {took:?} after the second kill");

    // Every partition was in sync on the survivor; it must become primary of each.
    let promoted = wait_for(
        "the survivor to be primary of every partition",
        Duration::from_secs(20),
        || {
            replicas(&status(survivor))
                .values()
                .all(|c| c.primary == last_id)
        },
    );
    eprintln!(
        "{last_id} primary of every partition {:?} after it led",
        promoted
    );
    let st = status(survivor);
    eprintln!(
        "survivor's view: under_replicated_partitions {}, partition 0: {:?}",
        under_replicated(&st),
        replicas(&st).get(&0)
    );

    // Reads go on: every probe key, with its value (the new primary may wait out its lease
    // promise first, answering 503 meanwhile).
    let mut unread: BTreeSet<usize> = (0..probes.len()).collect();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let took = wait_for(
        "every probe key readable through the survivor",
        Duration::from_secs(10),
        || {
            unread.retain(|&i| {
                let (k, v) = &probes[i];
                let r = survivor.get_kv(k);
                match r.status {
                    200 => {
                        assert_eq!(&r.body, v, "{}: {r:?}", String::from_utf8_lossy(k));
                        false
                    }
                    503 => {
                        let why = r.text();
                        if seen.insert(why.clone()) {
                            eprintln!("  {}: 503 {why}", String::from_utf8_lossy(k));
                        }
                        true
                    }
                    _ => panic!(
                        "{}: GET answered neither 200 nor 503: {r:?}",
                        String::from_utf8_lossy(k)
                    ),
                }
            });
            unread.is_empty()
        },
    );
    eprintln!(
        "every probe key readable on the survivor {took:?} after it was primary, {:?} after \
         the second kill",
        second_killed_at.elapsed()
    );

    // Writes are refused (a definite refusal, with Retry-After) and change nothing.
    let mut example = None;
    for (k, v) in &probes {
        let r = survivor.request("PUT", &kv_path(k), &[], b"refused");
        assert_eq!(
            r.status,
            503,
            "{}: a write with one copy in sync: {r:?}",
            String::from_utf8_lossy(k)
        );
        assert!(
            r.header("retry-after").is_some(),
            "503 without Retry-After: {r:?}"
        );
        assert_eq!(
            r.json()["reason"],
            "unavailable",
            "not a definite refusal: {r:?}"
        );
        let g = survivor.get_kv(k);
        assert_eq!(g.status, 200, "{}: {g:?}", String::from_utf8_lossy(k));
        assert_eq!(&g.body, v, "{}", String::from_utf8_lossy(k));
        example.get_or_insert(r);
    }
    if let Some(r) = example {
        eprintln!("a refused write: {} {}", r.status, r.text());
    }
}

/// SIGSTOP a primary past its lease and the session timeout, write a key of one of its
/// partitions through the new primary, then SIGCONT it: a read through the woken node never
/// answers the value from before the new primary's write (it forwards, or says 503), and a
/// write sent to it while it slept is acknowledged only if the cluster kept it.
#[test]
fn a_paused_primary_acknowledges_nothing_and_serves_no_stale_read_after_it_wakes() {
    let zk = ZooKeeper::start();
    let ids = ["s1", "s2", "s3"];
    let nodes = start_cluster(&zk, "paused-primary", &ids);
    wait_fully_replicated(&nodes, &ids, Duration::from_secs(20));
    let probes = probe_keys();
    write_probes(&nodes, &probes);
    let victim = a_primary_that_is_not_the_leader(&nodes);
    let paused = node_id(&nodes[victim]);
    let before = replicas(&status(&nodes[victim]));
    let (k, old) = probes
        .iter()
        .find(|(k, _)| {
            before
                .get(&partition_of(k))
                .is_some_and(|c| c.primary == paused)
        })
        .cloned()
        .expect("a probe key the paused node leads");
    let p = partition_of(&k);
    let survivor = (0..3).find(|i| *i != victim).unwrap_or(0);
    let pid = nodes[victim].pid().expect("running") as libc::pid_t;
    // SAFETY: a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let stopped_at = Instant::now();
    // A write sent to the sleeping node: it waits in the socket until the node wakes.
    let addr = nodes[victim].addr();
    let key = k.clone();
    let during = thread::spawn(move || {
        corecache_e2e::http(addr, "PUT", &kv_path(&key), &[], b"during-the-pause")
            .map(|r| r.status)
            .unwrap_or(0)
    });
    let took = wait_for(
        "a new primary for the paused node's partition",
        Duration::from_millis(6 * SESSION_MS),
        || {
            replicas(&status(&nodes[survivor]))
                .get(&p)
                .is_some_and(|c| c.primary != paused && !c.in_sync.contains(&paused))
        },
    );
    eprintln!("partition {p} has a new primary {took:?} after the SIGSTOP");
    // The new primary's first write of the key.
    let start = Instant::now();
    let mut status_new = 0;
    while start.elapsed() < Duration::from_secs(10) {
        status_new = nodes[survivor]
            .request("PUT", &kv_path(&k), &[], b"after-the-pause")
            .status;
        if status_new != 503 {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status_new, 200, "the new primary takes the write");
    // Paused past its read lease (2 s) for sure.
    if let Some(rest) = Duration::from_millis(2_500).checked_sub(stopped_at.elapsed()) {
        thread::sleep(rest);
    }
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    // Read through the woken node at once and for a while: never the old value.
    let mut answers: BTreeMap<u16, usize> = BTreeMap::new();
    let woke = Instant::now();
    while woke.elapsed() < Duration::from_secs(3) {
        let r = nodes[victim].get_kv(&k);
        *answers.entry(r.status).or_default() += 1;
        match r.status {
            200 => assert!(
                r.body == b"after-the-pause" || r.body == b"during-the-pause",
                "the woken node answered {:?} (before the pause: {:?})",
                String::from_utf8_lossy(&r.body),
                String::from_utf8_lossy(&old)
            ),
            503 => {}
            _ => panic!("the woken node answered {r:?}"),
        }
        thread::sleep(Duration::from_millis(20));
    }
    eprintln!("reads through the woken node: {answers:?}");
    let during = match during.join() {
        Ok(s) => s,
        Err(_) => panic!("the writer thread panicked"),
    };
    eprintln!("the write sent during the pause was answered {during}");
    let last = read_settled(&nodes[survivor], &k, Duration::from_secs(10));
    assert_eq!(last.status, 200, "{last:?}");
    if during == 200 {
        // Acknowledged, so applied after the new primary's write (it was taken after waking).
        assert_eq!(
            last.body, b"during-the-pause",
            "an acknowledged write was lost"
        );
    } else {
        assert!(
            last.body == b"after-the-pause" || last.body == b"during-the-pause",
            "{:?}",
            String::from_utf8_lossy(&last.body)
        );
    }
}
