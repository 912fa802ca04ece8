//! Failover and re-replication of a real 3-node cluster with three copies of every partition,
//! against a real ZooKeeper, every write fsynced (`--sync always`), with the flags README shows
//! and the defaults (`replication_factor` 3, `min_insync_replicas` 2, a 6 s session):
//!
//! 1. **Failover** over `--kills` kills (default 10): one node after another is killed with -9
//!    while one writer per partition (a probe key each) writes through the two survivors; for
//!    each kill, the time from the kill to the first acknowledged write on every partition the
//!    dead node was primary of (and on every partition at all). The node is then restarted on
//!    its disk and the time until it is back in sync everywhere is measured too.
//! 2. **Re-replication**: `--keys` keys (default 1,000,000; 16-byte keys, 100-byte values) are
//!    written, one node is killed and its data directory deleted, and a fresh node is started
//!    under the same id on the empty directory (README's "replace a dead machine"); the time
//!    from its start until every partition has three copies in sync again.
//!
//! `bash bench/replicas/run.sh` builds it and runs it after the throughput comparison with
//! etcd; alone: `cargo build --release -p corecache -p corecache-bench && target/release/replicas`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use corecache_e2e::cluster::{
    members, node_id, partition_count, partition_of, probe_keys, replicas, status, wait_for,
    wait_fully_replicated,
};
use corecache_e2e::zk::ZooKeeper;
use corecache_e2e::{b64, http, kv_path, Server};

const IDS: [&str; 3] = ["a", "b", "c"];

struct Args {
    /// `prefill ENDPOINT`: only fill a running cluster (for `bench/replicas/run.sh`).
    prefill: Option<SocketAddr>,
    kills: usize,
    keys: usize,
    failover: bool,
    restore: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        prefill: None,
        kills: 10,
        keys: 1_000_000,
        failover: true,
        restore: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = |name: &str| -> Result<usize, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or(format!("{name} needs a number"))
        };
        match flag.as_str() {
            "--kills" => a.kills = num("--kills")?,
            "--keys" => a.keys = num("--keys")?,
            "--only-failover" => a.restore = false,
            "prefill" => {
                let addr = it.next().ok_or("prefill needs HOST:PORT")?;
                a.prefill = Some(addr.parse().map_err(|e| format!("prefill {addr}: {e}"))?);
            }
            "--only-restore" => a.failover = false,
            "-h" | "--help" => {
                return Err("usage: replicas [--kills N] [--keys N] [--only-failover | --only-restore]\n       replicas prefill HOST:PORT --keys N".into())
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Some(addr) = args.prefill {
        let st = match http(addr, "GET", "/v1/status", &[], b"") {
            Ok(r) if r.status == 200 => r.json(),
            other => {
                eprintln!("cannot read http://{addr}/v1/status: {other:?}");
                std::process::exit(1);
            }
        };
        let took = prefill(&[addr], args.keys, partition_count(&st));
        eprintln!("prefill: {} keys in {} s", args.keys, secs(took));
        return;
    }
    let zk = ZooKeeper::start();
    if args.failover {
        failover(&zk, args.kills);
    }
    if args.restore {
        restore(&zk, args.keys);
    }
}

/// Three nodes of `cluster`, started at once, each ready.
fn start_cluster(zk: &ZooKeeper, cluster: &str) -> Vec<Server> {
    let zks = zk.connect_string();
    thread::scope(|s| {
        let handles: Vec<_> = IDS
            .iter()
            .map(|id| {
                let zks = zks.clone();
                s.spawn(move || {
                    Server::start_with(&[
                        "--zookeeper",
                        &zks,
                        "--cluster",
                        cluster,
                        "--node-id",
                        id,
                        "--peer-listen",
                        "127.0.0.1:0",
                        "--sync",
                        "always",
                        "--initial-nodes",
                        "3",
                    ])
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

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

/// One kill's figures.
struct Kill {
    victim: String,
    was_leader: bool,
    primaries: usize,
    /// Kill → first acknowledged write on the first and on the last of the victim's primaries.
    own_first: Duration,
    own_last: Duration,
    /// Kill → the last partition of all accepting a write.
    all_last: Duration,
    /// Restart → back in sync on every partition.
    resync: Duration,
}

fn failover(zk: &ZooKeeper, kills: usize) {
    let mut nodes = start_cluster(zk, "failover");
    wait_fully_replicated(&nodes, &IDS, Duration::from_secs(120));
    let parts = partition_count(&status(&nodes[0]));
    let probes = probe_keys(parts);
    for (i, (k, v)) in probes.iter().enumerate() {
        let r = nodes[i % 3].request("PUT", &kv_path(k), &[], v);
        assert_eq!(r.status, 200, "a probe write before any kill: {r:?}");
    }
    eprintln!("failover: 3 nodes, {parts} partitions, 3 copies each; {kills} kills");
    let mut rows = Vec::new();
    for n in 0..kills {
        let v = n % 3;
        let survivors: Vec<usize> = (0..3).filter(|&i| i != v).collect();
        let st = status(&nodes[survivors[0]]);
        let victim = node_id(&nodes[v]);
        let was_leader = st["leader"].as_str() == Some(victim.as_str());
        let before = replicas(&st);
        let addrs: Vec<_> = survivors.iter().map(|&i| nodes[i].addr()).collect();
        nodes[v].kill9();
        let t0 = Instant::now();
        // One writer per partition, through the survivors in turn, until one write is
        // acknowledged (200); 503 and transport errors are retried every 20 ms.
        let served: Mutex<Vec<(usize, Duration)>> = Mutex::new(Vec::new());
        let give_up = AtomicBool::new(false);
        thread::scope(|s| {
            for (p, (k, val)) in probes.iter().enumerate() {
                let (addrs, served, give_up) = (&addrs, &served, &give_up);
                s.spawn(move || {
                    let path = kv_path(k);
                    let mut i = p;
                    while !give_up.load(Ordering::Relaxed) {
                        let a = addrs[i % addrs.len()];
                        i += 1;
                        if let Ok(r) = http(a, "PUT", &path, &[], val) {
                            if r.status == 200 {
                                if let Ok(mut s) = served.lock() {
                                    s.push((p, t0.elapsed()));
                                }
                                return;
                            }
                            assert_eq!(r.status, 503, "a write during failover: {r:?}");
                        }
                        if t0.elapsed() > Duration::from_secs(120) {
                            give_up.store(true, Ordering::Relaxed);
                        }
                        thread::sleep(Duration::from_millis(20));
                    }
                });
            }
        });
        let served = served.into_inner().unwrap_or_default();
        assert_eq!(
            served.len(),
            parts,
            "after 120 s only {} of {parts} partitions took a write",
            served.len()
        );
        let own: Vec<Duration> = served
            .iter()
            .filter(|(p, _)| before.get(p).is_some_and(|c| c.primary == victim))
            .map(|(_, t)| *t)
            .collect();
        let all_last = served.iter().map(|(_, t)| *t).max().unwrap_or_default();
        let restart = Instant::now();
        nodes[v].restart();
        wait_fully_replicated(&nodes, &IDS, Duration::from_secs(180));
        let k = Kill {
            victim,
            was_leader,
            primaries: own.len(),
            own_first: own.iter().min().copied().unwrap_or_default(),
            own_last: own.iter().max().copied().unwrap_or_default(),
            all_last,
            resync: restart.elapsed(),
        };
        eprintln!(
            "  kill {}: node {}{} ({} primaries): its partitions wrote again after {}–{} s, all after {} s; back in sync {} s after its restart",
            n + 1,
            k.victim,
            if k.was_leader { ", the leader" } else { "" },
            k.primaries,
            secs(k.own_first),
            secs(k.own_last),
            secs(k.all_last),
            secs(k.resync)
        );
        rows.push(k);
    }
    println!("### Failover: kill -9 of one node of three, {kills} kills");
    println!();
    println!("| kill | node | leader? | its primaries | first of its partitions writable (s) | last of its partitions writable (s) | every partition writable (s) | restart → in sync again (s) |");
    println!("|---|---|---|---|---|---|---|---|");
    for (i, k) in rows.iter().enumerate() {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            i + 1,
            k.victim,
            if k.was_leader { "yes" } else { "no" },
            k.primaries,
            secs(k.own_first),
            secs(k.own_last),
            secs(k.all_last),
            secs(k.resync)
        );
    }
    let with_own: Vec<&Kill> = rows.iter().filter(|k| k.primaries > 0).collect();
    let mut own: Vec<Duration> = with_own.iter().map(|k| k.own_last).collect();
    let mut all: Vec<Duration> = rows.iter().map(|k| k.all_last).collect();
    let mut resync: Vec<Duration> = rows.iter().map(|k| k.resync).collect();
    println!();
    keep_logs(&nodes, "failover");
    println!(
        "kill → a write acknowledged on every partition the dead node led: median {} s, max {} s (over {} kills of a primary); on every partition: median {} s, max {} s; restart → in sync: median {} s, max {} s",
        secs(median(&mut own)),
        secs(own.iter().max().copied().unwrap_or_default()),
        own.len(),
        secs(median(&mut all)),
        secs(all.iter().max().copied().unwrap_or_default()),
        secs(median(&mut resync)),
        secs(resync.iter().max().copied().unwrap_or_default()),
    );
    println!();
}

/// Keys `0..keys` (as `%016d`, the keys of `bench/http/kv.lua`) with 100-byte values, through
/// the batch API from 4 connections to `addrs` in turn: a batch holds up to 2,000 keys of one
/// partition, since a batch is atomic only within one node's partitions.
fn prefill(addrs: &[SocketAddr], keys: usize, parts: usize) -> Duration {
    const BATCH: usize = 2_000;
    let value = b64([b'v'; 100]);
    let mut by_part: Vec<Vec<usize>> = vec![Vec::new(); parts.max(1)];
    for k in 0..keys {
        by_part[partition_of(format!("{k:016}").as_bytes(), parts)].push(k);
    }
    let batches: Vec<&[usize]> = by_part.iter().flat_map(|ks| ks.chunks(BATCH)).collect();
    let t = Instant::now();
    thread::scope(|s| {
        for w in 0..4 {
            let (batches, value) = (&batches, &value);
            let addr = addrs[w % addrs.len()];
            s.spawn(move || {
                for batch in batches.iter().skip(w).step_by(4) {
                    let ops: Vec<serde_json::Value> = batch
                        .iter()
                        .map(|k| {
                            serde_json::json!({"op": "put", "key": b64(format!("{k:016}")), "value": value})
                        })
                        .collect();
                    let body = serde_json::json!({ "ops": ops }).to_string();
                    // A batch is retried on 503 (a partition between configurations).
                    let mut tries = 0;
                    loop {
                        let r = http(
                            addr,
                            "POST",
                            "/v1/batch",
                            &[("Content-Type", "application/json")],
                            body.as_bytes(),
                        );
                        match r {
                            Ok(r) if r.status == 200 => break,
                            Ok(r) if r.status != 503 => {
                                panic!("a prefill batch was refused: {r:?}")
                            }
                            other if tries < 50 => {
                                tries += 1;
                                eprintln!("  a prefill batch: {other:?}; retrying");
                                thread::sleep(Duration::from_millis(200));
                            }
                            other => panic!("a prefill batch failed 50 times: {other:?}"),
                        }
                    }
                }
            });
        }
    });
    t.elapsed()
}

/// `name value` of one unlabelled metric line of `/metrics`.
fn metric(s: &Server, name: &str) -> u64 {
    let text = s.get("/metrics").text();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map(|v| v as u64)
        .unwrap_or(0)
}

/// Kills node `victim`, empties its data directory, waits until the survivors have dropped it
/// from every partition's in-sync set, and starts it again on the empty directory. Returns the
/// time from that start until every partition has its three copies in sync, the whole-partition
/// copies it received and the keys they held.
fn replace(nodes: &mut [Server], victim: usize) -> (Duration, u64, u64) {
    let id = node_id(&nodes[victim]);
    nodes[victim].kill9();
    let dir = nodes[victim].data_dir();
    if let Err(e) = std::fs::remove_dir_all(&dir).and_then(|()| std::fs::create_dir_all(&dir)) {
        panic!("cannot empty {}: {e}", dir.display());
    }
    let other = (victim + 1) % nodes.len();
    wait_for(
        "the dead node to leave every in-sync set",
        Duration::from_secs(120),
        || {
            let st = status(&nodes[other]);
            members(&st).len() == nodes.len() - 1
                && replicas(&st)
                    .values()
                    .all(|c| c.primary != id && !c.in_sync.contains(&id))
        },
    );
    let t0 = Instant::now();
    nodes[victim].restart();
    wait_fully_replicated(nodes, &IDS, Duration::from_secs(1800));
    let took = t0.elapsed();
    let copies = metric(
        &nodes[victim],
        "corecache_replication_copies_received_total",
    );
    let copied = metric(
        &nodes[victim],
        "corecache_replication_copy_keys_received_total",
    );
    (took, copies, copied)
}

/// `per_partition` single PUTs to every partition (cycling over its keys among `0..keys`), from
/// 32 threads through `addrs`: more than a partition's log keeps, so a replaced node must get a
/// whole copy.
fn overwrite(addrs: &[SocketAddr], keys: usize, parts: usize, per_partition: usize) -> Duration {
    let mut by_part: Vec<Vec<usize>> = vec![Vec::new(); parts.max(1)];
    for k in 0..keys {
        by_part[partition_of(format!("{k:016}").as_bytes(), parts)].push(k);
    }
    let t = Instant::now();
    thread::scope(|s| {
        for w in 0..32 {
            let by_part = &by_part;
            let addr = addrs[w % addrs.len()];
            s.spawn(move || {
                for ks in by_part.iter().skip(w).step_by(32) {
                    for i in 0..per_partition {
                        let Some(k) = ks.get(i % ks.len().max(1)) else {
                            break;
                        };
                        let path = kv_path(format!("{k:016}").as_bytes());
                        let value = format!("{i:0100}");
                        for tries in 0.. {
                            match http(addr, "PUT", &path, &[], value.as_bytes()) {
                                Ok(r) if r.status == 200 => break,
                                other if tries < 50 => {
                                    eprintln!(
                                        "  an overwrite through {addr} at {:.3} s: {other:?}; retrying",
                                        t.elapsed().as_secs_f64()
                                    );
                                    thread::sleep(Duration::from_millis(200));
                                }
                                other => panic!("an overwrite failed 50 times: {other:?}"),
                            }
                        }
                    }
                }
            });
        }
    });
    t.elapsed()
}

fn restore(zk: &ZooKeeper, keys: usize) {
    let mut nodes = start_cluster(zk, "restore");
    wait_fully_replicated(&nodes, &IDS, Duration::from_secs(120));
    eprintln!("re-replication: writing {keys} keys");
    let parts = partition_count(&status(&nodes[0]));
    let addrs: Vec<SocketAddr> = nodes.iter().map(Server::addr).collect();
    let fill = prefill(&addrs, keys, parts);
    wait_fully_replicated(&nodes, &IDS, Duration::from_secs(300));
    let table_mb = |s: &Server| {
        status(s)["engine"]["table_bytes_total"]
            .as_u64()
            .unwrap_or(0) as f64
            / 1e6
    };
    println!("### Re-replication: a node replaced on an empty disk (same node id)");
    println!();
    println!("| keys | how they were written | empty node start → 3 copies in sync (s) | keys/s | whole-partition copies | keys received by copy | tables on the new node / on a survivor (MB) |");
    println!("|---|---|---|---|---|---|---|");
    eprintln!("re-replication: replacing node c (its partitions' logs still hold the bulk load)");
    let (took, copies, copied) = replace(&mut nodes, 2);
    println!(
        "| {keys} | batches of 2,000 ({} s): the log still holds them | {} | {:.0} | {copies} | {copied} | {:.1} / {:.1} |",
        secs(fill),
        secs(took),
        keys as f64 / took.as_secs_f64(),
        table_mb(&nodes[2]),
        table_mb(&nodes[0]),
    );
    let addrs: Vec<SocketAddr> = nodes.iter().map(Server::addr).collect();
    const PER_PARTITION: usize = 4_200;
    eprintln!(
        "re-replication: {PER_PARTITION} single PUTs to each partition, then replacing node b"
    );
    let over = overwrite(&addrs, keys, parts, PER_PARTITION);
    wait_fully_replicated(&nodes, &IDS, Duration::from_secs(300));
    let (took, copies, copied) = replace(&mut nodes, 1);
    println!(
        "| {keys} | then {} single PUTs ({} s), more than a log keeps | {} | {:.0} | {copies} | {copied} | {:.1} / {:.1} |",
        PER_PARTITION * parts,
        secs(over),
        secs(took),
        keys as f64 / took.as_secs_f64(),
        table_mb(&nodes[1]),
        table_mb(&nodes[0]),
    );
    println!();
    keep_logs(&nodes, "restore");
}

/// Copies each node's stderr to `$TMPDIR/corecache-replicas-bench/{run}-{id}.log` (the nodes'
/// own directories go when they stop).
fn keep_logs(nodes: &[Server], run: &str) {
    let dir = std::env::temp_dir().join("corecache-replicas-bench");
    let _ = std::fs::create_dir_all(&dir);
    for n in nodes {
        let to = dir.join(format!("{run}-{}.log", node_id(n)));
        if std::fs::write(&to, n.stderr_log()).is_ok() {
            eprintln!("  log: {}", to.display());
        }
    }
}
