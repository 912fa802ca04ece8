//! The simulation sweep: many seeds, each a whole cluster under faults with its history
//! checked. `CORECACHE_SEEDS=N` sets how many seeds the sweep runs (default 200), starting at
//! `CORECACHE_SEED_BASE` (default 0); `CORECACHE_SEED=N` makes `replay` run that one seed.

use std::time::Instant;

use corecache_sim::{run, Config, Report};

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}")),
    )
}

#[derive(Default)]
struct Totals {
    runs: usize,
    ops: usize,
    acknowledged: usize,
    unknown: usize,
    leader_changes: usize,
    runs_with_leader_change: usize,
    crashes: usize,
    crashes_with_writes_in_flight: usize,
    partitions: usize,
    one_way: usize,
    coordinator_cut_offs: usize,
    sessions_expired: u64,
    torn_writes: usize,
    joins: usize,
    partitions_moved: usize,
    resp_ops: usize,
    resp_pipelines: usize,
    resp_incrs: usize,
    resp_msetnx: usize,
    resp_writes: usize,
    wiped_disks: usize,
    pauses: usize,
}

impl Totals {
    fn add(&mut self, r: &Report) {
        self.runs += 1;
        self.ops += r.ops;
        self.acknowledged += r.acknowledged_writes;
        self.unknown += r.unknown;
        self.leader_changes += r.leader_changes;
        self.runs_with_leader_change += usize::from(r.leader_changes > 0);
        self.crashes += r.crashes;
        self.crashes_with_writes_in_flight += r.crashes_with_writes_in_flight;
        self.partitions += r.partitions;
        self.one_way += r.one_way_partitions;
        self.coordinator_cut_offs += r.coordinator_cut_offs;
        self.sessions_expired += r.sessions_expired;
        self.torn_writes += r.torn_writes;
        self.joins += usize::from(r.joined);
        self.partitions_moved += r.partitions_moved;
        self.resp_ops += r.resp_ops;
        self.resp_pipelines += r.resp_pipelines;
        self.resp_incrs += r.resp_incrs;
        self.resp_msetnx += r.resp_msetnx;
        self.resp_writes += r.resp_writes;
        self.wiped_disks += r.wiped_disks;
        self.pauses += r.pauses;
    }
}

#[test]
fn sweep() {
    let seeds = env_u64("CORECACHE_SEEDS").unwrap_or(200);
    let base = env_u64("CORECACHE_SEED_BASE").unwrap_or(0);
    let start = Instant::now();
    let mut t = Totals::default();
    for seed in base..base + seeds {
        match run(&Config::new(seed)) {
            Ok(r) => t.add(&r),
            Err(f) => panic!("{f}"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "sweep: {} seeds in {secs:.1} s ({:.2} seeds/s); {} operations, {} acknowledged writes, {} unknown outcomes",
        t.runs,
        t.runs as f64 / secs,
        t.ops,
        t.acknowledged,
        t.unknown
    );
    println!(
        "joins: {} runs with a late joiner, {} partitions moved by hand-off",
        t.joins, t.partitions_moved
    );
    println!(
        "faults: {} runs with a leader change ({} changes), {} crashes ({} with writes in flight), {} torn writes, {} partitions, {} one-way partitions, {} coordinator cut-offs, {} sessions expired",
        t.runs_with_leader_change,
        t.leader_changes,
        t.crashes,
        t.crashes_with_writes_in_flight,
        t.torn_writes,
        t.partitions,
        t.one_way,
        t.coordinator_cut_offs,
        t.sessions_expired
    );
    println!(
        "resp: {} operations in {} pipelines, {} increments, {} MSETNX keys and {} SET/DEL acknowledged",
        t.resp_ops, t.resp_pipelines, t.resp_incrs, t.resp_msetnx, t.resp_writes
    );
    // The faults must actually fire, or the sweep proves nothing.
    if seeds >= 100 {
        assert!(t.runs_with_leader_change > 0, "no run saw a leader change");
        assert!(
            t.crashes_with_writes_in_flight > 0,
            "no run crashed a node with writes in flight"
        );
        assert!(t.partitions > 0, "no run partitioned the network");
        assert!(t.one_way > 0, "no run had a one-way partition");
        assert!(t.torn_writes > 0, "no crash tore a write");
        assert!(t.sessions_expired > 0, "no coordinator session expired");
        assert!(t.partitions_moved > 0, "no partition was handed off");
        assert!(t.resp_pipelines > 0, "no RESP pipeline was sent");
        assert!(t.resp_incrs > 0, "no RESP increment was acknowledged");
        assert!(t.resp_msetnx > 0, "no RESP MSETNX was acknowledged");
        assert!(t.resp_writes > 0, "no RESP SET or DEL was acknowledged");
        assert!(
            t.acknowledged > t.runs * 10,
            "too few acknowledged writes: {}",
            t.acknowledged
        );
    }
}

/// The sweep with three copies of every partition: crashes, partitions and cut-offs now make
/// primaries fail over, and no acknowledged write may be lost. `CORECACHE_REPLICATED_SEEDS=N`
/// (default 200) from `CORECACHE_SEED_BASE`; replay one with `CORECACHE_REPLICATED=1
/// CORECACHE_SEED=N cargo test -p corecache-sim --test sweep replay`.
#[test]
fn replicated_sweep() {
    let seeds = env_u64("CORECACHE_REPLICATED_SEEDS").unwrap_or(200);
    let base = env_u64("CORECACHE_SEED_BASE").unwrap_or(0);
    let start = Instant::now();
    let mut t = Totals::default();
    for seed in base..base + seeds {
        // Shown when the test fails: a panic inside the simulation names no seed itself.
        println!("replicated seed {seed}");
        match run(&Config::replicated(seed)) {
            Ok(r) => t.add(&r),
            Err(f) => panic!(
                "{f}\nreplay: CORECACHE_REPLICATED=1 CORECACHE_SEED={seed} cargo test -p \
                 corecache-sim --test sweep replay -- --nocapture"
            ),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "replicated sweep: {} seeds in {secs:.1} s; {} operations, {} acknowledged writes, {} unknown outcomes; {} crashes ({} with writes in flight), {} leader changes, {} partitions ({} one way), {} coordinator cut-offs, {} torn writes, {} disks wiped, {} pauses past the lease",
        t.runs,
        t.ops,
        t.acknowledged,
        t.unknown,
        t.crashes,
        t.crashes_with_writes_in_flight,
        t.leader_changes,
        t.partitions,
        t.one_way,
        t.coordinator_cut_offs,
        t.torn_writes,
        t.wiped_disks,
        t.pauses
    );
    if seeds >= 100 {
        assert!(t.wiped_disks > 0, "no run wiped a disk");
        assert!(t.pauses > 0, "no run paused a node past its lease");
        assert!(
            t.crashes_with_writes_in_flight > 0,
            "no run crashed a node with writes in flight"
        );
        assert!(
            t.coordinator_cut_offs > 0,
            "no run cut a node off from the coordinator"
        );
        assert!(t.acknowledged > 0, "no write was acknowledged");
    }
}

#[test]
fn replay() {
    let seed = env_u64("CORECACHE_SEED").unwrap_or(7);
    // `CORECACHE_REPLICATED=1`: the replicated sweep's run of that seed.
    let cfg = if env_u64("CORECACHE_REPLICATED") == Some(1) {
        Config::replicated(seed)
    } else {
        Config::new(seed)
    };
    match run(&cfg) {
        Ok(r) => println!("{r:#?}"),
        Err(f) => panic!("{f}"),
    }
}

/// A seed replays bit for bit: the whole history, the coordinator's writes and the faults.
#[test]
fn the_same_seed_gives_the_same_run() {
    let mut crashed = 0;
    for seed in [0, 3, 7, 11] {
        let cfg = Config::new(seed);
        let a = run(&cfg).unwrap_or_else(|f| panic!("{f}"));
        let b = run(&cfg).unwrap_or_else(|f| panic!("{f}"));
        if a.digest != b.digest {
            let at = a.trace.iter().zip(&b.trace).position(|(x, y)| x != y);
            let show = |t: &[String]| at.and_then(|i| t.get(i)).cloned().unwrap_or_default();
            panic!(
                "seed {seed} gave two different runs; first difference at line {at:?}:\n  {}\n  {}",
                show(&a.trace),
                show(&b.trace)
            );
        }
        assert!(a.ops > 0);
        crashed += a.crashes;
    }
    assert!(crashed > 0, "none of the seeds crashed a node");
    // And different seeds give different runs.
    let c = run(&Config::new(4)).unwrap_or_else(|f| panic!("{f}"));
    let d = run(&Config::new(5)).unwrap_or_else(|f| panic!("{f}"));
    assert_ne!(c.digest, d.digest);
}

#[test]
fn a_fault_free_run_acknowledges_almost_everything() {
    let mut cfg = Config::new(1);
    cfg.faults = false;
    let r = run(&cfg).unwrap_or_else(|f| panic!("{f}"));
    assert!(r.ops > 100, "{r:?}");
    assert_eq!(r.unknown, 0, "{r:?}");
    assert_eq!(r.leader_changes, 0, "{r:?}");
}
