//! # corecache-sim
//!
//! Whole CoreCache clusters inside turmoil, on simulated time, with one seed deciding
//! everything: the workload, the faults, message latencies, the order in which tokio picks
//! among ready branches (turmoil seeds tokio's RNG under `--cfg tokio_unstable`, set in
//! `.cargo/config.toml`), and what each crashed disk keeps.
//!
//! Each node is the real thing: the sans-IO [`Node`] under the real tokio driver
//! ([`corecache_net::driver`]), the real axum router behind the real server loop, and the real
//! peer transport, all over turmoil's network. Only three parts are stand-ins, and each
//! behaves like what it replaces:
//! - [`fakezk`]: a ZooKeeper with sessions that expire, ephemeral entries, the election recipe,
//!   conditional writes and late watch deliveries, running as its own host;
//! - [`SimDisk`]: a disk per node that keeps only synced bytes (plus a seeded, possibly torn,
//!   prefix of the rest) when the node crashes;
//! - the driver's blocking work runs inline on the node's event loop after a simulated fsync
//!   delay, instead of on threads that would break determinism.
//!
//! A run is [`run`]: a startup phase, a fault phase (crashes, partitions both ways and one way,
//! held messages, sessions lost to the coordinator, a node cut off from everything but its
//! clients), a healing phase, and a final check in which every key must take a write again
//! and be read back from every node. Every client operation is recorded, and the history is
//! checked for linearizability key by key ([`history`]); the coordinator's log is checked for
//! one leader per epoch.

pub mod fakezk;
mod faults;
pub mod history;
mod node;
mod resp_client;
mod workload;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use corecache_core::SimDisk;
use parking_lot::Mutex;

use faults::{draw_faults, Action, Fault, Links};
use history::{OpKind, Outcome};
use node::{node_main, take_stats, DbSlot};
use workload::{workload, Recorder};

const CLUSTER: &str = "sim";
const HTTP_PORT: u16 = 80;
const PEER_PORT: u16 = 7071;
const RESP_PORT: u16 = 6379;
/// The simulated wall clock starts here (2026-01-01), so node timestamps look like real ones.
const EPOCH_MS: u64 = 1_767_225_600_000;
/// When the client host starts its workload, leaving the cluster time to form.
const STARTUP: Duration = Duration::from_secs(3);
/// How long a client waits for an answer before recording the outcome as unknown.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// One simulated run's shape.
#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    pub nodes: usize,
    /// HTTP clients.
    pub clients: usize,
    /// Clients speaking the Redis protocol (pipelines of SET, GET, DEL, INCR, MSETNX).
    pub resp_clients: usize,
    pub keys: usize,
    pub partitions: u16,
    /// The fault phase's length; faults start and end inside it.
    pub fault_phase: Duration,
    /// The healing phase's length: no new faults, the workload goes on.
    pub heal_phase: Duration,
    pub session_timeout: Duration,
    /// Bytes of padding on every value written.
    pub value_pad: usize,
    /// Draw faults at all (a fault-free run is the baseline).
    pub faults: bool,
    /// Whether the faults drawn include node crashes.
    pub crashes: bool,
    /// Per cent of operations that are gets, puts and deletes (the rest are conditional puts).
    pub mix: (u64, u64, u64),
    /// A named scenario: scripted faults instead of drawn ones.
    pub scenario: Option<Scenario>,
    /// When one more node (`n{nodes}`) starts and joins the running cluster, taking partitions
    /// over by hand-off while the workload and the faults go on.
    pub join_at: Option<Duration>,
    /// Copies of every partition (1: no replicas), and the in-sync minimum for writes.
    pub replication_factor: usize,
    pub min_insync_replicas: usize,
    /// Log entries each partition keeps (few, with replicas, so that learners get copies).
    pub log_retain: u64,
    /// Each node's clock is off by up to ±300 ms and runs up to 2% fast or slow (drawn per
    /// node from the seed); otherwise every node reads the simulated clock as it is.
    pub clock_skew: bool,
    /// How long a gone replica keeps its place before another node is given a copy.
    pub replica_timeout_ms: u64,
}

/// The prototype's failures, replayed on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Many writers while the tiny memtables flush all the time (the prototype's flush raced
    /// inserts and stopped the world).
    InsertsRacingFlush,
    /// Deletes acknowledged but not yet flushed, then each node crashes in turn (the prototype
    /// brought deleted keys back after a restart).
    CrashAfterUnflushedDelete,
    /// Keys written, deleted and rewritten so that flushes and compactions merge tables where a
    /// key is live in one and deleted in a newer one.
    CompactionOfLiveAndDeleted,
    /// The leader is cut off from the coordinator and its peers while clients still reach it.
    LeaderCutOffFromCoordinator,
}

impl Scenario {
    pub const ALL: [Scenario; 4] = [
        Scenario::InsertsRacingFlush,
        Scenario::CrashAfterUnflushedDelete,
        Scenario::CompactionOfLiveAndDeleted,
        Scenario::LeaderCutOffFromCoordinator,
    ];
}

impl Config {
    pub fn new(seed: u64) -> Config {
        Config {
            seed,
            nodes: 3,
            clients: 4,
            resp_clients: 2,
            keys: 16,
            partitions: 8,
            fault_phase: Duration::from_secs(8),
            heal_phase: Duration::from_secs(5),
            session_timeout: Duration::from_millis(1500),
            value_pad: 200,
            faults: true,
            crashes: true,
            mix: (40, 30, 10),
            scenario: None,
            join_at: {
                let mut r = Rng::new(seed ^ 0x5EED_701E);
                r.chance(50).then(|| STARTUP + r.ms(500, 5000))
            },
            replication_factor: 1,
            min_insync_replicas: 1,
            log_retain: corecache_core::proto::replog::LOG_RETAIN,
            clock_skew: false,
            replica_timeout_ms: 60_000,
        }
    }

    /// A run with three copies of every partition (writes need two in sync).
    pub fn replicated(seed: u64) -> Config {
        Config {
            replication_factor: 3,
            min_insync_replicas: 2,
            clock_skew: true,
            // Short, so that runs see both a node back in time and one replaced.
            replica_timeout_ms: 2_500,
            // Half the seeds keep few entries (learners get copies), half keep the whole
            // history (replicas catch up and undo from the log).
            log_retain: if seed.is_multiple_of(2) {
                6
            } else {
                corecache_core::proto::replog::LOG_RETAIN
            },
            ..Config::new(seed)
        }
    }

    /// Every node the run ever starts.
    pub fn total_nodes(&self) -> usize {
        self.nodes + usize::from(self.join_at.is_some())
    }

    /// The nodes started by `t`.
    fn nodes_up_at(&self, t: Duration) -> usize {
        match self.join_at {
            Some(j) if t >= j => self.total_nodes(),
            _ => self.nodes,
        }
    }

    /// A named scenario's run.
    pub fn scenario(seed: u64, scenario: Scenario) -> Config {
        let mut c = Config::new(seed);
        c.scenario = Some(scenario);
        c.join_at = None;
        match scenario {
            Scenario::InsertsRacingFlush => {
                c.clients = 8;
                c.keys = 12;
                c.mix = (30, 70, 0);
            }
            Scenario::CrashAfterUnflushedDelete => c.mix = (20, 40, 40),
            Scenario::CompactionOfLiveAndDeleted => c.mix = (20, 45, 35),
            Scenario::LeaderCutOffFromCoordinator => {}
        }
        c
    }
}

/// What a run did, for the sweep's counters.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub seed: u64,
    /// A digest of everything observable: the history, the coordinator's writes, the faults.
    pub digest: u64,
    pub ops: usize,
    pub acknowledged_writes: usize,
    /// Operations sent over RESP, pipelines sent (of one to four commands), increments and
    /// MSETNX keys acknowledged, SETs and DELs acknowledged over RESP.
    pub resp_ops: usize,
    pub resp_pipelines: usize,
    pub resp_incrs: usize,
    pub resp_msetnx: usize,
    pub resp_writes: usize,
    pub acknowledged_deletes: usize,
    pub unknown: usize,
    /// Operations refused with an error that says nothing was done.
    pub failed: usize,
    /// Epochs claimed after the first.
    pub leader_changes: usize,
    pub crashes: usize,
    /// Crashes of a node that had client requests in flight.
    pub crashes_with_writes_in_flight: usize,
    /// Whether a node joined during the run, and how many partitions changed owner.
    pub joined: bool,
    pub partitions_moved: usize,
    /// Leaders isolated by a scripted fault.
    pub leader_isolations: usize,
    /// Memtable flushes and compactions, over every node and restart.
    pub flushes: u64,
    pub compactions: u64,
    pub partitions: usize,
    pub one_way_partitions: usize,
    pub coordinator_cut_offs: usize,
    pub sessions_expired: u64,
    /// Crashes whose disk kept a torn part of an unsynced write.
    pub torn_writes: usize,
    /// Crashes that lost the node's disk for good.
    pub wiped_disks: usize,
    /// Nodes paused (nothing in or out) for longer than a lease.
    pub pauses: usize,
    pub lost_unsynced_bytes: u64,
    pub sim_time: Duration,
    /// Every operation, the coordinator's writes and the faults, as text (what the digest
    /// covers), for telling two runs apart.
    pub trace: Vec<String>,
    /// Why outcomes were unknown, with counts.
    pub unknown_why: BTreeMap<String, usize>,
}

/// A failed run: what failed, and the faults that led there.
#[derive(Debug)]
pub struct Failure {
    pub seed: u64,
    pub message: String,
    pub faults: Vec<String>,
    /// The coordinator's state writes (epoch, map), in order.
    pub coordinator: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {} failed (replay: CORECACHE_SEED={} cargo test -p corecache-sim --test sweep replay -- --nocapture)",
            self.seed, self.seed
        )?;
        writeln!(f, "{}", self.message)?;
        writeln!(f, "faults:")?;
        for x in &self.faults {
            writeln!(f, "  {x}")?;
        }
        writeln!(f, "coordinator state writes:")?;
        for x in &self.coordinator {
            writeln!(f, "  {x}")?;
        }
        Ok(())
    }
}

/// splitmix64.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    pub fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn node_name(i: usize) -> String {
    format!("n{i}")
}

/// Node `id`'s clock in a run with `cfg`: the simulated clock, skewed if the run says so.
fn node_clock(cfg: &Config, id: &str) -> Arc<dyn Fn() -> u64 + Send + Sync> {
    if !cfg.clock_skew {
        return Arc::new(sim_now_ms);
    }
    let mut r = Rng::new(
        cfg.seed
            ^ id.bytes().fold(0xC10C, |h: u64, b| {
                h.wrapping_mul(31).wrapping_add(u64::from(b))
            }),
    );
    let offset = r.below(601) as i64 - 300;
    let ppm = r.below(40_001) as i64 - 20_000;
    Arc::new(move || {
        let t = turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as i64);
        let skewed = t * (1_000_000 + ppm) / 1_000_000 + offset;
        (EPOCH_MS as i64 + skewed).max(0) as u64
    })
}

fn sim_now_ms() -> u64 {
    EPOCH_MS + turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64)
}

/// Runs one seed.
pub fn run(cfg: &Config) -> Result<Report, Failure> {
    require_tokio_unstable();
    let mut rng = Rng::new(cfg.seed);
    let faults = draw_faults(cfg, &mut rng);
    let mut report = Report {
        seed: cfg.seed,
        ..Report::default()
    };
    let fault_log: Rc<RefCell<Vec<String>>> = Rc::default();
    let zk_log = Arc::new(Mutex::new(fakezk::ZkLog::default()));
    let fail =
        |message: String, log: &Rc<RefCell<Vec<String>>>| failure(cfg.seed, message, log, &zk_log);
    let mut sim = build_sim(cfg, &mut rng);

    let (disks, slots) = add_hosts(&mut sim, cfg, &mut rng, &zk_log);
    let rec = Arc::new(Recorder::default());
    let problems: Arc<Mutex<Vec<String>>> = Arc::default();
    let resp_tally: Arc<Mutex<resp_client::RespTally>> = Arc::default();
    add_client(&mut sim, cfg, &rec, &problems, &resp_tally);

    let (mut actions, mut scheduled) = schedule(&faults);
    let all_nodes: Vec<String> = (0..cfg.total_nodes()).map(node_name).collect();
    let mut hosts = all_nodes.clone();
    hosts.push(fakezk::HOST.to_string());
    hosts.push("client".to_string());
    let mut w = World {
        sim: &mut sim,
        report: &mut report,
        rec: &rec,
        disks: &disks,
        slots: &slots,
        rng: &mut rng,
        zk_log: &zk_log,
        down: vec![false; cfg.total_nodes()],
        all_nodes,
        hosts,
        links: Links::default(),
    };
    if let Err(e) = w.run_to_end(&mut actions, &mut scheduled, &faults, &fault_log) {
        return Err(fail(e, &fault_log));
    }
    report.sim_time = sim.elapsed();
    let last_state = zk_log.lock().writes.last().cloned();
    if let Some(st) = last_state {
        if let Err(e) = copies_agree(&st, &slots) {
            return Err(fail(e, &fault_log));
        }
    }
    for slot in &slots {
        take_stats(slot, &mut report);
    }
    drop(sim);

    let ops = rec.ops.lock().clone();
    count_ops(&ops, &mut report);
    report.resp_pipelines = resp_tally.lock().pipelines;
    // A copy: `fail` reads the log too.
    let (writes, sessions_expired) = {
        let zk = zk_log.lock();
        (zk.writes.clone(), zk.sessions_expired)
    };
    if let Err(e) = count_coordinator(cfg, &writes, sessions_expired, &mut report) {
        return Err(fail(e, &fault_log));
    }
    if let Some(p) = problems.lock().first() {
        return Err(fail(p.clone(), &fault_log));
    }
    if let Err(v) = history::check(&ops) {
        return Err(fail(format!("not linearizable: {v}"), &fault_log));
    }
    digest(&ops, &writes, &fault_log, &mut report);
    Ok(report)
}

/// At the end of a run, the copies of each partition in its last configuration (primary and
/// backups) that stand at the same point of its log hold the same keys and values: replicas
/// that apply the same entries in the same order end the same (a replica that undid too much,
/// or took entries from a deposed primary, does not).
fn copies_agree(st: &fakezk::StateWrite, slots: &[DbSlot]) -> Result<(), String> {
    use corecache_core::proto::replog;
    use std::ops::Bound;
    let db_of = |name: &str| -> Option<Arc<corecache_core::Db>> {
        let i = (0..slots.len()).find(|i| node_name(*i) == name)?;
        slots[i].lock().clone()
    };
    for (p, backups) in st.backups.iter().enumerate() {
        let p = p as u16;
        // The first copy read: its node, (last entry, its epoch), and its keys.
        type Copy = (String, (u64, u64), Vec<(Vec<u8>, Vec<u8>)>);
        let mut seen: Option<Copy> = None;
        // lsn → (epoch, node) of every log entry read so far.
        let mut entries: BTreeMap<u64, (u64, String)> = BTreeMap::new();
        for node in std::iter::once(&st.owners[usize::from(p)]).chain(backups) {
            let Some(db) = db_of(node) else { continue };
            let pos = match db.get(&replog::meta_key(p)) {
                Ok(Some(raw)) => replog::decode_position(&raw)
                    .map_err(|_| format!("{node}: partition {p}'s position does not decode"))?,
                Ok(None) => replog::Position::default(),
                Err(e) => return Err(format!("{node}: cannot read partition {p}'s position: {e}")),
            };
            // Its log: no holes, ending at its position, and the same entries as the others'
            // where both have one (Raft's Log Matching).
            let (llo, lhi) = replog::log_range(p);
            let mut last: Option<u64> = None;
            for kv in db
                .scan(Bound::Included(&llo[..]), Bound::Excluded(&lhi[..]))
                .map_err(|e| format!("{node}: cannot scan partition {p}'s log: {e}"))?
            {
                let (k, v) =
                    kv.map_err(|e| format!("{node}: cannot scan partition {p}'s log: {e}"))?;
                let lsn = k
                    .get(k.len().saturating_sub(8)..)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| format!("{node}: a log key of partition {p} is malformed"))?;
                let (epoch, _) = replog::decode_entry(&v)
                    .map_err(|_| format!("{node}: partition {p}'s entry {lsn} does not decode"))?;
                if let Some(l) = last {
                    if lsn != l + 1 {
                        return Err(format!(
                            "{node}: partition {p}'s log has a hole: entry {l}, then {lsn}"
                        ));
                    }
                }
                last = Some(lsn);
                match entries.get(&lsn) {
                    Some((e, other)) if *e != epoch => {
                        return Err(format!(
                            "logs differ: partition {p}'s entry {lsn} is of epoch {epoch} on \
                             {node} and {e} on {other}"
                        ))
                    }
                    Some(_) => {}
                    None => {
                        entries.insert(lsn, (epoch, node.clone()));
                    }
                }
            }
            if let Some(l) = last {
                if l != pos.lsn {
                    return Err(format!(
                        "{node}: partition {p}'s log ends at entry {l}, its position at {}",
                        pos.lsn
                    ));
                }
            }
            let lo = p.to_be_bytes().to_vec();
            let hi = (u32::from(p) + 1).to_be_bytes()[2..].to_vec();
            let hi = if p == u16::MAX {
                Bound::Unbounded
            } else {
                Bound::Excluded(&hi[..])
            };
            let keys: Vec<(Vec<u8>, Vec<u8>)> = db
                .scan(Bound::Included(&lo[..]), hi)
                .map_err(|e| format!("{node}: cannot scan partition {p}: {e}"))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{node}: cannot scan partition {p}: {e}"))?;
            match &seen {
                Some((other, at, theirs)) if *at == (pos.lsn, pos.lsn_epoch) && *theirs != keys => {
                    let differs = keys
                        .iter()
                        .map(|(k, _)| k)
                        .chain(theirs.iter().map(|(k, _)| k))
                        .find(|k| {
                            keys.iter().find(|(x, _)| x == *k)
                                != theirs.iter().find(|(x, _)| x == *k)
                        })
                        .map(|k| String::from_utf8_lossy(&k[2..]).into_owned())
                        .unwrap_or_default();
                    return Err(format!(
                        "copies differ: partition {p} on {node} and {other}, both at entry {} \
                         of epoch {}, differ at key {differs:?}",
                        pos.lsn, pos.lsn_epoch
                    ));
                }
                Some(_) => {}
                None => seen = Some((node.clone(), (pos.lsn, pos.lsn_epoch), keys)),
            }
        }
    }
    Ok(())
}

/// Refuses to run without `--cfg tokio_unstable`: without it tokio's choices are not seeded,
/// and a seed would not replay.
fn require_tokio_unstable() {
    if !cfg!(tokio_unstable) {
        panic!(
            "corecache-sim must be built with `--cfg tokio_unstable` (set in .cargo/config.toml; \
             a RUSTFLAGS environment variable overrides it) or runs are not reproducible"
        );
    }
}

/// A failed run: `message`, with the faults so far and the coordinator's state writes, so
/// that every way a run can fail reports the same context.
fn failure(
    seed: u64,
    message: String,
    log: &Rc<RefCell<Vec<String>>>,
    zk_log: &Mutex<fakezk::ZkLog>,
) -> Failure {
    Failure {
        seed,
        message,
        faults: log.borrow().clone(),
        coordinator: zk_log
            .lock()
            .writes
            .iter()
            .map(|w| {
                let mut line = format!(
                    "{:>6} ms epoch {} version {} leader {} owners {:?}",
                    w.at_ms, w.epoch, w.version, w.leader, w.owners
                );
                if !w.backups.is_empty() {
                    let b: Vec<String> = w.backups.iter().map(|b| b.join("+")).collect();
                    line.push_str(&format!(" backups {b:?}"));
                    for (name, lists) in [("learners", &w.learners), ("eligible", &w.eligible)] {
                        if lists.iter().any(|l| !l.is_empty()) {
                            let l: Vec<String> = lists.iter().map(|x| x.join("+")).collect();
                            line.push_str(&format!(" {name} {l:?}"));
                        }
                    }
                }
                line
            })
            .collect(),
    }
}

/// The turmoil simulation, its latency and its seed drawn from `rng` (in this order: the
/// maximum latency, then turmoil's seed), kept together so the draws stay in one place.
fn build_sim<'a>(cfg: &Config, rng: &mut Rng) -> turmoil::Sim<'a> {
    let max_latency = rng.ms(1, 20);
    let total = STARTUP + cfg.fault_phase + cfg.heal_phase + Duration::from_secs(60);
    turmoil::Builder::new()
        .simulation_duration(total)
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(max_latency)
        .rng_seed(rng.next_u64())
        .build()
}

/// The client host, which runs the workload and records every operation in `rec`.
fn add_client(
    sim: &mut turmoil::Sim<'_>,
    cfg: &Config,
    rec: &Arc<Recorder>,
    problems: &Arc<Mutex<Vec<String>>>,
    tally: &Arc<Mutex<resp_client::RespTally>>,
) {
    let rec = rec.clone();
    let c = cfg.clone();
    let problems = problems.clone();
    let tally = tally.clone();
    sim.client("client", async move {
        workload(rec, c, problems, tally).await;
        Ok(())
    });
}

/// Every fault's start and end as actions, keyed by (when, order of scheduling) so that
/// actions due at the same time run in the order they were drawn; and how many were scheduled
/// (the next action's order).
fn schedule(
    faults: &[(Duration, Duration, Fault)],
) -> (BTreeMap<(Duration, usize), Action>, usize) {
    let mut actions: BTreeMap<(Duration, usize), Action> = BTreeMap::new();
    for (s, e, f) in faults {
        let n = actions.len();
        actions.insert((*s, n), Action::Start(f.clone()));
        actions.insert((*e, n + 1), Action::End(f.clone()));
    }
    let scheduled = actions.len();
    (actions, scheduled)
}

/// The coordinator's side of the report: sessions expired, leader changes (an error if its log
/// shows more than one leader in an epoch), and partitions moved between state writes.
fn count_coordinator(
    cfg: &Config,
    writes: &[fakezk::StateWrite],
    sessions_expired: u64,
    report: &mut Report,
) -> Result<(), String> {
    report.sessions_expired = sessions_expired;
    report.leader_changes = leaders_per_epoch(writes)?.saturating_sub(1);
    report.joined = cfg.join_at.is_some();
    for pair in writes.windows(2) {
        report.partitions_moved += pair[0]
            .owners
            .iter()
            .zip(&pair[1].owners)
            .filter(|(a, b)| a != b)
            .count();
    }
    Ok(())
}

/// The report's trace and digest of everything observable (the history, the coordinator's
/// writes, the faults, the simulated time), which the determinism test compares across runs.
fn digest(
    ops: &[history::Op],
    writes: &[fakezk::StateWrite],
    fault_log: &RefCell<Vec<String>>,
    report: &mut Report,
) {
    let mut h = DefaultHasher::new();
    ops.hash(&mut h);
    for w in writes {
        w.hash(&mut h);
    }
    fault_log.borrow().hash(&mut h);
    report.trace = ops.iter().map(|o| o.to_string()).collect();
    report.trace.extend(writes.iter().map(|w| format!("{w:?}")));
    report.trace.extend(fault_log.borrow().iter().cloned());
    report.sim_time.hash(&mut h);
    report.digest = h.finish();
}

/// A run's simulation and bookkeeping, as faults change them.
struct World<'w, 'a> {
    sim: &'w mut turmoil::Sim<'a>,
    report: &'w mut Report,
    rec: &'w Recorder,
    disks: &'w [SimDisk],
    slots: &'w [DbSlot],
    rng: &'w mut Rng,
    zk_log: &'w Mutex<fakezk::ZkLog>,
    down: Vec<bool>,
    all_nodes: Vec<String>,
    hosts: Vec<String>,
    links: Links,
}

impl World<'_, '_> {
    /// Steps the simulation until it ends, first applying every action that is due (and
    /// logging it in `fault_log`). The error says why turmoil failed.
    fn run_to_end(
        &mut self,
        actions: &mut BTreeMap<(Duration, usize), Action>,
        scheduled: &mut usize,
        faults: &[(Duration, Duration, Fault)],
        fault_log: &RefCell<Vec<String>>,
    ) -> Result<(), String> {
        loop {
            while let Some((&(at, _), _)) = actions.first_key_value() {
                if self.sim.elapsed() < at {
                    break;
                }
                let Some((_, action)) = actions.pop_first() else {
                    break;
                };
                let line = match &action {
                    Action::Start(f) => format!("{:>6} ms start {f:?}", at.as_millis()),
                    Action::End(f) => format!("{:>6} ms end   {f:?}", at.as_millis()),
                };
                fault_log.borrow_mut().push(line);
                self.apply(at, action, actions, scheduled, faults);
            }
            match self.sim.step() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(format!("the simulation failed: {e}")),
            }
        }
    }

    /// Starts or ends one fault at `at`.
    fn apply(
        &mut self,
        at: Duration,
        action: Action,
        actions: &mut BTreeMap<(Duration, usize), Action>,
        scheduled: &mut usize,
        faults: &[(Duration, Duration, Fault)],
    ) {
        match action {
            Action::Start(Fault::Crash { node }) => self.crash(node),
            Action::End(Fault::Crash { node }) => {
                if self.down[node] {
                    self.sim.bounce(node_name(node));
                    self.down[node] = false;
                }
            }
            Action::Start(Fault::Partition { a, b }) => {
                self.report.partitions += 1;
                self.links.hold(self.sim, &a, &b);
            }
            Action::End(Fault::Partition { a, b }) => self.links.release(self.sim, &a, &b),
            Action::Start(Fault::OneWay { from, to }) => {
                self.report.one_way_partitions += 1;
                self.links.cut(self.sim, &from, &to);
            }
            Action::End(Fault::OneWay { from, to }) => self.links.mend(self.sim, &from, &to),
            Action::Start(Fault::CoordinatorCutOff { node }) => {
                self.report.coordinator_cut_offs += 1;
                self.links.hold(self.sim, &node_name(node), fakezk::HOST);
            }
            Action::End(Fault::CoordinatorCutOff { node }) => {
                self.links.release(self.sim, &node_name(node), fakezk::HOST)
            }
            Action::Start(Fault::IsolateLeader) => {
                self.isolate_leader(at, actions, scheduled, faults)
            }
            Action::End(Fault::IsolateLeader) => {}
            Action::Start(Fault::Isolate { node }) => self.isolate(node),
            Action::End(Fault::Isolate { node }) => self.end_isolation(node),
            Action::Start(Fault::Wipe { node }) => {
                // A lost disk is a fault to survive only while every copy it holds has another
                // in its configuration, and only once per run (a second lost disk could take a
                // partition's last copy): otherwise this is a crash that keeps the disk.
                let safe = self.report.wiped_disks == 0 && self.copies_elsewhere(node);
                if !self.down[node] {
                    self.crash(node);
                    if safe {
                        self.disks[node].wipe();
                        self.report.wiped_disks += 1;
                    }
                }
            }
            Action::End(Fault::Wipe { node }) => {
                if self.down[node] {
                    self.sim.bounce(node_name(node));
                    self.down[node] = false;
                }
            }
            Action::Start(Fault::Pause { node }) => {
                self.report.pauses += 1;
                let me = node_name(node);
                for o in self.hosts.clone().iter().filter(|o| **o != me) {
                    self.links.hold(self.sim, &me, o);
                }
            }
            Action::End(Fault::Pause { node }) => {
                let me = node_name(node);
                for o in self.hosts.clone().iter().filter(|o| **o != me) {
                    self.links.release(self.sim, &me, o);
                }
            }
        }
    }

    /// Whether every partition `node` holds a copy of (as primary or backup, in the last
    /// state written) has another copy in its configuration.
    fn copies_elsewhere(&self, node: usize) -> bool {
        let me = node_name(node);
        let Some(st) = self.zk_log.lock().writes.last().cloned() else {
            return false;
        };
        st.owners.iter().enumerate().all(|(p, owner)| {
            let backups = st.backups.get(p).cloned().unwrap_or_default();
            let copies: Vec<&String> = std::iter::once(owner).chain(&backups).collect();
            !copies.contains(&&me) || copies.len() >= 2
        })
    }

    /// A power cut of `node` (unless it is down already): its disk keeps what the crash leaves,
    /// and it goes without sending a word. The longest fault, hence its own method; the order of
    /// its steps (the disk's seeded crash first) is what keeps a run reproducible.
    fn crash(&mut self, node: usize) {
        if self.down[node] {
            return;
        }
        self.report.crashes += 1;
        if self
            .rec
            .in_flight
            .lock()
            .get(&node_name(node))
            .copied()
            .unwrap_or(0)
            > 0
        {
            self.report.crashes_with_writes_in_flight += 1;
        }
        // The disk first: the dying process's handles go stale, so nothing it
        // does while being torn down reaches the disk.
        let r = self.disks[node].crash(self.rng.next_u64());
        if r.torn_files > 0 {
            self.report.torn_writes += 1;
        }
        self.report.lost_unsynced_bytes += r.lost_bytes;
        // A power cut sends nothing: the node's sockets close without a word to
        // anyone (peers find out by timeouts, or by a reset when they next send).
        // This also keeps the run reproducible: tokio drops a runtime's tasks in
        // an order that depends on process-wide task ids.
        let me = node_name(node);
        for o in self.hosts.iter().filter(|o| **o != me) {
            self.sim.partition(me.as_str(), o.as_str());
        }
        take_stats(&self.slots[node], self.report);
        self.sim.crash(me.as_str());
        for o in self.hosts.iter().filter(|o| **o != me) {
            self.sim.repair(me.as_str(), o.as_str());
        }
        self.links.restore(self.sim, &me);
        self.down[node] = true;
    }

    /// The scripted `IsolateLeader`: only now is it known who leads, so it schedules an
    /// [`Fault::Isolate`] of that node at `at`, ending when the scripted fault ends.
    fn isolate_leader(
        &mut self,
        at: Duration,
        actions: &mut BTreeMap<(Duration, usize), Action>,
        scheduled: &mut usize,
        faults: &[(Duration, Duration, Fault)],
    ) {
        // Whoever wrote the state last leads; turn this into an isolation of it
        // (ended when the scripted fault ends).
        let leader = self.zk_log.lock().writes.last().map(|w| w.leader.clone());
        let node = leader.and_then(|l| l.strip_prefix('n').and_then(|i| i.parse::<usize>().ok()));
        if let Some(node) = node {
            self.report.leader_isolations += 1;
            let end = faults
                .iter()
                .find(|(_, _, f)| matches!(f, Fault::IsolateLeader))
                .map_or(at, |(_, e, _)| *e);
            actions.insert((at, *scheduled), Action::Start(Fault::Isolate { node }));
            actions.insert((end, *scheduled + 1), Action::End(Fault::Isolate { node }));
            *scheduled += 2;
        }
    }

    /// Cuts `node` off from the coordinator and every other node (its clients still reach
    /// it); [`World::end_isolation`] undoes it link by link.
    fn isolate(&mut self, node: usize) {
        self.report.partitions += 1;
        self.report.coordinator_cut_offs += 1;
        let me = node_name(node);
        self.links.hold(self.sim, &me, fakezk::HOST);
        for other in self.all_nodes.iter().filter(|o| **o != me) {
            self.links.hold(self.sim, &me, other);
        }
    }

    /// Ends [`World::isolate`]: releases the links it held, in the same order.
    fn end_isolation(&mut self, node: usize) {
        let me = node_name(node);
        self.links.release(self.sim, &me, fakezk::HOST);
        for other in self.all_nodes.iter().filter(|o| **o != me) {
            self.links.release(self.sim, &me, other);
        }
    }
}

/// The coordinator's log shows one leader per epoch, each state written by the leader it
/// names, and epochs that never go back. Returns how many epochs there were.
fn leaders_per_epoch(writes: &[fakezk::StateWrite]) -> Result<usize, String> {
    let mut epochs: BTreeMap<u64, String> = BTreeMap::new();
    let mut last_epoch = 0;
    for w in writes {
        if w.writer != w.leader {
            return Err(format!(
                "{} wrote the state of {}'s epoch {}",
                w.writer, w.leader, w.epoch
            ));
        }
        if w.epoch < last_epoch {
            return Err(format!("epoch went back from {last_epoch} to {}", w.epoch));
        }
        last_epoch = w.epoch;
        if let Some(l) = epochs.insert(w.epoch, w.leader.clone()) {
            if l != w.leader {
                return Err(format!(
                    "two leaders in epoch {}: {l} and {}",
                    w.epoch, w.leader
                ));
            }
        }
    }
    Ok(epochs.len())
}

/// The report's counts of what the clients did.
fn count_ops(ops: &[history::Op], report: &mut Report) {
    report.ops = ops.len();
    report.acknowledged_deletes = ops
        .iter()
        .filter(|o| matches!(o.kind, OpKind::Delete) && o.outcome == Outcome::Ok)
        .count();
    report.unknown = ops.iter().filter(|o| o.outcome == Outcome::Unknown).count();
    report.failed = ops.iter().filter(|o| o.outcome == Outcome::Failed).count();
    for o in ops
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Unknown | Outcome::Failed))
    {
        *report.unknown_why.entry(o.detail.clone()).or_default() += 1;
    }
    report.acknowledged_writes = ops
        .iter()
        .filter(|o| {
            !matches!(o.kind, OpKind::Get) && matches!(o.outcome, Outcome::Ok | Outcome::Counted(_))
        })
        .count();
    let resp: Vec<&history::Op> = ops.iter().filter(|o| o.resp).collect();
    report.resp_ops = resp.len();
    report.resp_incrs = resp
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Counted(_)))
        .count();
    report.resp_msetnx = resp
        .iter()
        .filter(|o| matches!(o.kind, OpKind::Cas { .. }) && o.outcome == Outcome::Ok)
        .count();
    report.resp_writes = resp
        .iter()
        .filter(|o| matches!(o.kind, OpKind::Put(_) | OpKind::Delete) && o.outcome == Outcome::Ok)
        .count();
}

/// The coordinator's host and every node's, each node with a disk that outlives its crashes
/// and a slot where the harness finds its engine.
fn add_hosts(
    sim: &mut turmoil::Sim<'_>,
    cfg: &Config,
    rng: &mut Rng,
    zk_log: &Arc<Mutex<fakezk::ZkLog>>,
) -> (Vec<SimDisk>, Vec<DbSlot>) {
    {
        let zk_log = zk_log.clone();
        sim.host(fakezk::HOST, move || fakezk::serve(zk_log.clone()));
    }
    let disks: Vec<SimDisk> = (0..cfg.total_nodes())
        .map(|_| {
            let d = SimDisk::new();
            d.set_reorder_dir_ops(true);
            d
        })
        .collect();
    let slots: Vec<DbSlot> = (0..cfg.total_nodes()).map(|_| DbSlot::default()).collect();
    for (i, disk) in disks.iter().enumerate() {
        let disk = disk.clone();
        let c = cfg.clone();
        let fsync_delay = rng.ms(1, 20);
        let slot = slots[i].clone();
        let start_at = if i >= cfg.nodes { cfg.join_at } else { None };
        sim.host(node_name(i), move || {
            node_main(
                node_name(i),
                disk.clone(),
                c.clone(),
                fsync_delay,
                slot.clone(),
                start_at,
            )
        });
    }
    (disks, slots)
}
