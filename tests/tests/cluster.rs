//! The cluster against a real ZooKeeper and real `corecache` processes on loopback: routing
//! through any node, leader failover, a dead owner's keys, and a paused leader that must not
//! change anything when it wakes. Named tests replay the Python prototype's cluster flaws.

use std::collections::BTreeMap;
use std::thread;
use std::time::Duration;

use corecache_e2e::cluster::{members, owners, status, wait_for};
use corecache_e2e::zk::ZooKeeper;
use corecache_e2e::{kv_path, Server};

const SESSION_MS: u64 = 2_000;
const PARTITIONS: usize = 64;

/// Starts `ids` as one cluster named `cluster`, all at once, waiting until each is ready. The
/// first leader deals the partitions over all of them (`--initial-nodes`).
fn start_cluster(zk: &ZooKeeper, cluster: &str, ids: &[&str]) -> Vec<Server> {
    start_cluster_with(zk, cluster, ids, &[])
}

/// [`start_cluster`] with `extra` flags on every node.
fn start_cluster_with(zk: &ZooKeeper, cluster: &str, ids: &[&str], extra: &[&str]) -> Vec<Server> {
    let n = ids.len().to_string();
    thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .map(|id| {
                let n = n.clone();
                s.spawn(move || {
                    let mut args = vec!["--initial-nodes", n.as_str()];
                    args.extend_from_slice(extra);
                    node(zk, cluster, id, &args)
                })
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
        // No --peer-listen: with the HTTP port 0 the peer port is the OS's choice too, so
        // nodes side by side on one machine need nothing more (issue 16).
        "--session-timeout-ms",
        session.as_str(),
    ];
    args.extend_from_slice(extra);
    Server::start_with(&args)
}

fn key(i: usize) -> Vec<u8> {
    format!("user:{i:05}").into_bytes()
}

/// A PUT's status (a refusal's answer is printed, to say why).
fn put(s: &Server, k: &[u8], v: &[u8]) -> u16 {
    let r = s.request("PUT", &kv_path(k), &[], v);
    if r.status != 200 {
        eprintln!("PUT {}: {r:?}", String::from_utf8_lossy(k));
    }
    r.status
}

/// Every partition has exactly one owner, and that owner is a member.
fn assert_map_covers_each_partition_once(st: &serde_json::Value) {
    let o = owners(st);
    let ms = members(st);
    assert_eq!(
        o.keys().copied().collect::<Vec<_>>(),
        (0..PARTITIONS).collect::<Vec<_>>(),
        "every partition appears once: {st}"
    );
    for (p, owner) in &o {
        assert!(
            ms.contains(owner),
            "partition {p} is owned by {owner}, who is not a member ({ms:?})"
        );
    }
}

#[test]
fn three_nodes_serve_every_key_through_any_node() {
    let zk = ZooKeeper::start();
    let nodes = start_cluster(&zk, "three", &["n1", "n2", "n3"]);
    for n in &nodes {
        wait_for("3 members", Duration::from_secs(10), || {
            members(&status(n)).len() == 3
        });
    }
    let maps: Vec<_> = nodes.iter().map(|n| owners(&status(n))).collect();
    assert!(
        maps.windows(2).all(|w| w[0] == w[1]),
        "all nodes see one map"
    );
    assert_map_covers_each_partition_once(&status(&nodes[0]));
    for id in ["n1", "n2", "n3"] {
        assert!(
            maps[0].values().any(|o| o == id),
            "{id} owns no partition: {:?}",
            maps[0]
        );
    }
    for i in 0..300 {
        let via = &nodes[i % 3];
        assert_eq!(
            put(via, &key(i), format!("v{i}").as_bytes()),
            200,
            "put {i}"
        );
    }
    for i in 0..300 {
        for (j, n) in nodes.iter().enumerate() {
            let r = n.get_kv(&key(i));
            assert_eq!(r.status, 200, "key {i} through node {j}: {r:?}");
            assert_eq!(r.body, format!("v{i}").as_bytes());
        }
    }
    // A scan through any node sees every key, in order, across pages.
    for n in &nodes {
        let mut got = Vec::new();
        let mut cont: Option<String> = None;
        loop {
            let mut target = "/v1/kv?prefix=user%3A&limit=37".to_string();
            if let Some(c) = &cont {
                target.push_str(&format!("&continuation={c}"));
            }
            let r = n.get(&target);
            r.expect(200);
            let j = r.json();
            for it in j["items"].as_array().cloned().unwrap_or_default() {
                got.push(corecache_e2e::unb64(it["key"].as_str().unwrap_or("")));
            }
            match j["continuation"].as_str() {
                Some(c) => cont = Some(c.to_string()),
                None => break,
            }
        }
        assert_eq!(got, (0..300).map(key).collect::<Vec<_>>());
    }
}

/// Prototype flaw: followers answered 500 instead of forwarding.
#[test]
fn prototype_flaw_followers_forward_instead_of_answering_500() {
    let zk = ZooKeeper::start();
    let nodes = start_cluster(&zk, "forward", &["a", "b"]);
    let st = status(&nodes[0]);
    let leader = st["leader"].as_str().unwrap_or("").to_string();
    let follower = nodes
        .iter()
        .find(|n| status(n)["node_id"] != leader.as_str())
        .expect("a follower");
    assert_eq!(status(follower)["role"], "follower");
    for i in 0..100 {
        let k = key(i);
        assert_eq!(put(follower, &k, b"through a follower"), 200);
        let r = follower.get_kv(&k);
        assert_eq!(r.status, 200, "{r:?}");
        let d = follower.request("DELETE", &kv_path(&k), &[], b"");
        assert_eq!(d.status, 204, "{d:?}");
        assert_eq!(follower.get_kv(&k).status, 404);
    }
}

/// Prototype flaw: a single node served nothing.
#[test]
fn prototype_flaw_a_single_node_serves_every_key() {
    let zk = ZooKeeper::start();
    let nodes = start_cluster(&zk, "single", &["solo"]);
    let st = status(&nodes[0]);
    assert_eq!(st["role"], "leader");
    assert_map_covers_each_partition_once(&st);
    for i in 0..200 {
        assert_eq!(put(&nodes[0], &key(i), b"x"), 200);
    }
    for i in 0..200 {
        assert_eq!(nodes[0].get_kv(&key(i)).status, 200);
    }
}

/// kill -9 the leader: a new one within 2 × the session timeout; live nodes' partitions keep
/// serving; the dead node's keys answer 503 with Retry-After, and come back intact when it
/// restarts with its old id. (Also the prototype's flaw: failover left the cluster unusable.)
#[test]
fn prototype_flaw_failover_leaves_the_cluster_usable() {
    let zk = ZooKeeper::start();
    // One copy per partition (tests/tests/replicas.rs covers the default, three).
    let mut nodes = start_cluster_with(
        &zk,
        "failover",
        &["f1", "f2", "f3"],
        &["--replication-factor", "1"],
    );
    for n in &nodes {
        wait_for("3 members", Duration::from_secs(10), || {
            members(&status(n)).len() == 3
        });
    }
    let st = status(&nodes[0]);
    let leader = st["leader"].as_str().unwrap_or("").to_string();
    let epoch = st["epoch"].as_u64().unwrap_or(0);
    let map = owners(&st);
    for i in 0..200 {
        assert_eq!(put(&nodes[i % 3], &key(i), format!("v{i}").as_bytes()), 200);
    }
    let li = nodes
        .iter()
        .position(|n| status(n)["node_id"] == leader.as_str())
        .expect("the leader is one of ours");
    nodes[li].kill9();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != li).collect();
    let took = wait_for(
        "a new leader",
        Duration::from_millis(4 * SESSION_MS),
        || {
            survivors.iter().any(|&i| {
                let s = status(&nodes[i]);
                s["role"] == "leader" && s["epoch"].as_u64().unwrap_or(0) > epoch
            })
        },
    );
    assert!(
        took <= Duration::from_millis(2 * SESSION_MS),
        "a new leader took {took:?}, more than 2 × the {SESSION_MS} ms session timeout"
    );
    // Wait until the survivors see the dead node gone, then check every key.
    for &i in &survivors {
        wait_for("the dead node to leave", Duration::from_secs(10), || {
            !members(&status(&nodes[i])).contains(&leader)
        });
    }
    let probe = &nodes[survivors[0]];
    let (mut down, mut up) = (0, 0);
    for i in 0..200 {
        let k = key(i);
        let r = probe.get_kv(&k);
        let p = partition_of(probe, &k);
        if map[&p] == leader {
            assert_eq!(r.status, 503, "key {i} on the dead node: {r:?}");
            assert!(r.header("retry-after").is_some(), "503 without Retry-After");
            down += 1;
        } else {
            assert_eq!(r.status, 200, "key {i} on a live node: {r:?}");
            assert_eq!(r.body, format!("v{i}").as_bytes());
            // And live partitions still take writes.
            assert_eq!(put(probe, &k, format!("w{i}").as_bytes()), 200);
            up += 1;
        }
    }
    assert!(down > 0 && up > 0, "down {down}, up {up}");
    // The dead node returns with its id and its data.
    nodes[li].restart();
    let probe = &nodes[survivors[0]];
    // The restarted node is ready as soon as it reads the map; the others learn it is back
    // from ZooKeeper's membership watch a moment later (until then its keys answer 503).
    wait_for(
        "the others to see the node back",
        Duration::from_secs(10),
        || members(&status(probe)).contains(&leader),
    );
    for i in 0..200 {
        let k = key(i);
        let r = probe.get_kv(&k);
        assert_eq!(r.status, 200, "key {i} after the restart: {r:?}");
        let want = if map[&partition_of(probe, &k)] == leader {
            format!("v{i}")
        } else {
            format!("w{i}")
        };
        assert_eq!(r.body, want.as_bytes(), "key {i}");
    }
    let st = status(&nodes[li]);
    assert_eq!(st["node_id"], leader.as_str(), "restarted with its old id");
    assert_eq!(owners(&st), map, "and its old partitions");
}

/// SIGSTOP the leader past its session timeout, then SIGCONT: a new leader took over; the old
/// one, waking, changes nothing in ZooKeeper (epoch and map version stay the new leader's) and
/// every node agrees on one owner per partition, so no partition has two owners taking writes.
#[test]
fn a_paused_leader_changes_nothing_when_it_wakes() {
    let zk = ZooKeeper::start();
    // One copy per partition: with three, the new leader rightly changes the map once the old
    // one is back (it is given copies again), and this test is about the old leader alone.
    let nodes = start_cluster_with(
        &zk,
        "paused",
        &["p1", "p2", "p3"],
        &["--replication-factor", "1"],
    );
    for n in &nodes {
        wait_for("3 members", Duration::from_secs(10), || {
            members(&status(n)).len() == 3
        });
    }
    let st = status(&nodes[0]);
    let leader = st["leader"].as_str().unwrap_or("").to_string();
    let epoch = st["epoch"].as_u64().unwrap_or(0);
    let li = nodes
        .iter()
        .position(|n| status(n)["node_id"] == leader.as_str())
        .expect("the leader is one of ours");
    let pid = nodes[li].pid().expect("running") as libc::pid_t;
    // SAFETY: signals to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let other = (0..3).find(|i| *i != li).unwrap_or(0);
    wait_for(
        "a new leader while the old one sleeps",
        Duration::from_millis(6 * SESSION_MS),
        || {
            let s = status(&nodes[other]);
            s["epoch"].as_u64().unwrap_or(0) > epoch && s["leader"] != leader.as_str()
        },
    );
    thread::sleep(Duration::from_millis(SESSION_MS));
    let before = status(&nodes[other]);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    wait_for(
        "the old leader to see the new one",
        Duration::from_secs(15),
        || {
            let s = status(&nodes[li]);
            s["leader"] == before["leader"] && s["role"] == "follower"
        },
    );
    thread::sleep(Duration::from_millis(SESSION_MS));
    for n in &nodes {
        let s = status(n);
        assert_eq!(s["epoch"], before["epoch"], "the epoch moved: {s}");
        assert_eq!(
            s["partition_map_version"], before["partition_map_version"],
            "the map changed after the old leader woke: {s}"
        );
        assert_eq!(owners(&s), owners(&before), "nodes disagree on owners");
        assert_map_covers_each_partition_once(&s);
    }
    let leaders = nodes
        .iter()
        .filter(|n| status(n)["role"] == "leader")
        .count();
    assert_eq!(leaders, 1, "exactly one leader");
    // Writes through every node land once and read back the same everywhere.
    for i in 0..60 {
        let k = key(i);
        assert_eq!(put(&nodes[i % 3], &k, format!("after{i}").as_bytes()), 200);
        for n in &nodes {
            let r = n.get_kv(&k);
            assert_eq!(r.status, 200);
            assert_eq!(r.body, format!("after{i}").as_bytes());
        }
    }
}

/// The partition of a key, as the cluster computes it: asked of the node through a scan-free
/// route — the status page's partition count and the same hash the node uses.
fn partition_of(s: &Server, k: &[u8]) -> usize {
    let st = status(s);
    let n = st["partition_count"].as_u64().unwrap_or(PARTITIONS as u64);
    (corecache_core::engine::format::hash64(k) % n) as usize
}

/// What a writer learned about each key: the last acknowledged value, and values written after
/// it whose outcome is unknown (the request failed in a way that may or may not have applied).
#[derive(Default)]
struct Ledger {
    acked: BTreeMap<Vec<u8>, String>,
    maybe: BTreeMap<Vec<u8>, Vec<String>>,
    statuses: BTreeMap<u16, usize>,
    transport_errors: usize,
}

/// Writes `w:{i % keys}` = `{i}` through the nodes in turn until `stop`, recording everything.
fn writer(
    addrs: Vec<std::net::SocketAddr>,
    keys: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> thread::JoinHandle<Ledger> {
    thread::spawn(move || {
        let mut l = Ledger::default();
        let mut i = 0usize;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let k = format!("w:{:04}", i % keys).into_bytes();
            let v = i.to_string();
            let addr = addrs[i % addrs.len()];
            match corecache_e2e::http(addr, "PUT", &kv_path(&k), &[], v.as_bytes()) {
                Ok(r) => {
                    *l.statuses.entry(r.status).or_default() += 1;
                    if r.status == 200 {
                        l.maybe.remove(&k);
                        l.acked.insert(k, v);
                    } else {
                        l.maybe.entry(k).or_default().push(v);
                    }
                }
                Err(_) => {
                    l.transport_errors += 1;
                    l.maybe.entry(k).or_default().push(v);
                }
            }
            i += 1;
        }
        l
    })
}

/// Every acknowledged key reads back, one by one through `via`, with its last acknowledged
/// value or a later one whose outcome was unknown. A 503 (a partition whose primary just
/// changed waits out the old one's lease) is asked again, for up to 10 s.
fn check_ledger(l: &Ledger, via: &Server) {
    assert!(!l.acked.is_empty(), "the writer got nothing acknowledged");
    for (k, v) in &l.acked {
        let start = std::time::Instant::now();
        let mut r = via.get_kv(k);
        while r.status == 503 && start.elapsed() < Duration::from_secs(10) {
            thread::sleep(Duration::from_millis(100));
            r = via.get_kv(k);
        }
        assert_eq!(r.status, 200, "{}: {r:?}", String::from_utf8_lossy(k));
        let got = String::from_utf8_lossy(&r.body).into_owned();
        let later = l.maybe.get(k).is_some_and(|m| m.contains(&got));
        assert!(
            got == *v || later,
            "{}: read {got}, last acknowledged {v}",
            String::from_utf8_lossy(k)
        );
    }
}

/// Lets the writer run a little longer, stops it, and checks that no request got a server
/// error other than 503 (an owner briefly unreachable is allowed to say so).
fn finish_writer(stop: &std::sync::atomic::AtomicBool, w: thread::JoinHandle<Ledger>) -> Ledger {
    thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let Ok(ledger) = w.join() else {
        panic!("the writer panicked")
    };
    eprintln!(
        "writer: {:?}, transport errors {}",
        ledger.statuses, ledger.transport_errors
    );
    let server_errors: Vec<_> = ledger
        .statuses
        .iter()
        .filter(|(s, _)| **s >= 500 && **s != 503)
        .collect();
    assert!(
        server_errors.is_empty(),
        "server errors during the move: {:?}",
        ledger.statuses
    );
    ledger
}

fn owned_by(st: &serde_json::Value, id: &str) -> usize {
    owners(st).values().filter(|o| *o == id).count()
}

fn moving(st: &serde_json::Value) -> usize {
    st["moving"].as_object().map_or(usize::MAX, |m| m.len())
}

/// A 4th node joins while a writer runs: it gets its share (by configuration changes with the
/// default three copies; by hand-off with one), every acknowledged key
/// keeps its last value, and no request is answered 500. (Also the prototype's flaw: nodes
/// that joined late were never used.)
#[test]
fn prototype_flaw_a_late_joiner_gets_partitions_while_a_writer_runs() {
    let zk = ZooKeeper::start();
    let mut nodes = start_cluster(&zk, "join", &["j1", "j2", "j3"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w = writer(
        nodes.iter().map(|n| n.addr()).collect(),
        2_000,
        stop.clone(),
    );
    thread::sleep(Duration::from_millis(1_500));
    nodes.push(node(&zk, "join", "j4", &[]));
    wait_for("j4 to receive its share", Duration::from_secs(120), || {
        let st = status(&nodes[0]);
        ["j1", "j2", "j3", "j4"]
            .iter()
            .all(|id| owned_by(&st, id) == PARTITIONS / 4)
            && moving(&st) == 0
    });
    let ledger = finish_writer(&stop, w);
    assert_eq!(ledger.transport_errors, 0);
    for n in &nodes {
        let st = status(n);
        assert_map_covers_each_partition_once(&st);
        for id in ["j1", "j2", "j3", "j4"] {
            assert_eq!(owned_by(&st, id), PARTITIONS / 4, "{id}: {st}");
        }
    }
    check_ledger(&ledger, &nodes[3]);
    check_ledger(&ledger, &nodes[0]);
}

/// Decommission a node while a writer runs (`corecache decommission`): it ends owning nothing,
/// every acknowledged key keeps its last value, and after it is stopped every key still reads.
#[test]
fn decommissioning_a_node_while_a_writer_runs_keeps_every_key() {
    let zk = ZooKeeper::start();
    let mut nodes = start_cluster(&zk, "decom", &["d1", "d2", "d3"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w = writer(
        nodes[..2].iter().map(|n| n.addr()).collect(),
        2_000,
        stop.clone(),
    );
    thread::sleep(Duration::from_millis(1_500));
    let out = std::process::Command::new(corecache_e2e::require_bin())
        .args([
            "decommission",
            "--endpoint",
            &nodes[0].endpoint(),
            "--node",
            "d3",
        ])
        .args(["--timeout-secs", "120"])
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => panic!("cannot run corecache decommission: {e}"),
    };
    assert!(
        out.status.success(),
        "decommission failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ledger = finish_writer(&stop, w);
    let st = status(&nodes[0]);
    assert_eq!(owned_by(&st, "d3"), 0, "{st}");
    assert_map_covers_each_partition_once(&st);
    nodes[2].kill9();
    check_ledger(&ledger, &nodes[0]);
    check_ledger(&ledger, &nodes[1]);
}
