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
pub mod history;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corecache_core::cluster::Member;
use corecache_core::node::NodeConfig;
use corecache_core::{Background, Db, Options, SimDisk, SyncMode};
use corecache_net::assemble::{node_engine_options, Assembly, FrontEndConfig};
use corecache_net::driver::{Blocking, ClusterIo, Env};
use corecache_net::metrics::Metrics;
use corecache_net::peer::{Connecting, Connector, PeerNet, PeerStream};
use corecache_net::server::Listen;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;

use history::{Op, OpKind, Outcome};

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
    pub clients: usize,
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

fn sim_now_ms() -> u64 {
    EPOCH_MS + turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64)
}

/// turmoil's listener as the server loop's source of connections.
struct SimListener(turmoil::net::TcpListener);

impl Listen for SimListener {
    type Io = turmoil::net::TcpStream;
    async fn accept(&mut self) -> std::io::Result<Self::Io> {
        Ok(self.0.accept().await?.0)
    }
}

/// Outbound peer connections over turmoil's network.
struct SimConnector;

impl Connector for SimConnector {
    fn connect(&self, addr: String) -> Connecting {
        Box::pin(async move {
            let s = turmoil::net::TcpStream::connect(addr.as_str()).await?;
            Ok(Box::new(s) as Box<dyn PeerStream>)
        })
    }
}

/// The software of one node host; turmoil calls it again on every restart.
/// Where the harness finds a node's open engine (for its counters).
type DbSlot = Arc<Mutex<Option<Arc<Db>>>>;

/// Adds a node's engine counters to the report and forgets the engine.
fn take_stats(slot: &DbSlot, report: &mut Report) {
    if let Some(db) = slot.lock().take() {
        let s = db.stats();
        report.flushes += s.flushes;
        report.compactions += s.compactions;
    }
}

async fn node_main(
    id: String,
    disk: SimDisk,
    cfg: Config,
    fsync_delay: Duration,
    slot: DbSlot,
    start_at: Option<Duration>,
) -> Result<(), Box<dyn std::error::Error>> {
    // A late joiner's process starts only at its time (also when restarted before it).
    if let Some(at) = start_at {
        let now = turmoil::sim_elapsed().unwrap_or_default();
        if now < at {
            tokio::time::sleep(at - now).await;
        }
    }
    let opts = node_engine_options(Options {
        sync: SyncMode::Always,
        // Tiny memtables and tables: flushes and compactions happen within a short run.
        memtable_bytes: 2048,
        max_immutable_memtables: 4,
        l0_compaction_trigger: 2,
        l0_stop_writes: 24,
        table_bytes: 1024,
        level1_bytes: 1024,
        level_multiplier: 2,
        block_bytes: 512,
        block_cache_bytes: 64 << 10,
        background: Background::Manual,
        ..Options::default()
    });
    let db = Db::open(Arc::new(disk), opts).map_err(|e| format!("{id}: open failed: {e}"))?;
    let db = Arc::new(db);
    *slot.lock() = Some(db.clone());
    let (peer_tx, peer_rx) = tokio::sync::mpsc::channel(8192);
    let net = PeerNet::with_connector(
        id.clone(),
        CLUSTER.to_string(),
        peer_tx.clone(),
        Arc::new(SimConnector),
    );
    let peer_listener = turmoil::net::TcpListener::bind(("0.0.0.0", PEER_PORT)).await?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = peer_listener.accept().await {
            let tx = peer_tx.clone();
            tokio::spawn(async move {
                let _ = corecache_net::peer::read_frames(stream, CLUSTER, &tx).await;
            });
        }
    });
    let io = ClusterIo {
        coordinator: Box::new(fakezk::FakeCoordinator {
            session_timeout: cfg.session_timeout,
        }),
        me: Member {
            id: id.clone(),
            http: format!("{id}:{HTTP_PORT}"),
            peer: format!("{id}:{PEER_PORT}"),
        },
        peers: Some((net, peer_rx)),
    };
    let parts = Assembly::new(
        &FrontEndConfig {
            max_key_bytes: 1024,
            max_value_bytes: 1 << 20,
            max_body_bytes: 64 << 10,
            resp_flushdb: false,
            sync: "always".into(),
            resp_port: RESP_PORT,
        },
        Arc::new(Metrics::default()),
    );
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    parts.start(
        db,
        NodeConfig {
            node_id: id.clone(),
            partitions: cfg.partitions,
            initial_members: cfg.nodes,
            ..NodeConfig::default()
        },
        io,
        stop_rx.clone(),
        Env {
            now_ms: sim_now_ms,
            blocking: Blocking::Inline { fsync_delay },
        },
    );
    let resp_listener = turmoil::net::TcpListener::bind(("0.0.0.0", RESP_PORT)).await?;
    tokio::spawn(corecache_net::resp::serve(
        SimListener(resp_listener),
        parts.resp.clone(),
        stop_rx,
    ));
    let app = parts.http.clone();
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", HTTP_PORT)).await?;
    corecache_net::server::serve(SimListener(listener), app, std::future::pending()).await?;
    Ok(())
}

/// An HTTP answer as the workload sees it.
struct Answer {
    status: u16,
    body: Vec<u8>,
    etag: Option<u64>,
}

async fn request(
    node: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Option<Answer> {
    let go = async {
        let stream = turmoil::net::TcpStream::connect((node, HTTP_PORT))
            .await
            .ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", node);
        for (k, v) in headers {
            b = b.header(*k, v.as_str());
        }
        let req = b.body(Full::new(hyper::body::Bytes::from(body))).ok()?;
        let resp = sender.send_request(req).await.ok()?;
        let status = resp.status().as_u16();
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim_matches('"').parse().ok());
        let body = resp.into_body().collect().await.ok()?.to_bytes().to_vec();
        Some(Answer { status, body, etag })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, go)
        .await
        .ok()
        .flatten()
}

/// The recorded history, shared by the client tasks.
#[derive(Default)]
struct Recorder {
    clock: AtomicU64,
    ops: Mutex<Vec<Op>>,
    /// Requests in flight per node (for "a crash with writes in flight").
    in_flight: Mutex<BTreeMap<String, usize>>,
}

impl Recorder {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// Runs one operation against `node` and records it.
async fn perform(
    rec: &Recorder,
    client: usize,
    node: &str,
    key: &str,
    kind: OpKind,
    cas_version: Option<u64>,
) -> (Outcome, Option<u64>) {
    let path = format!("/v1/kv/{key}");
    *rec.in_flight.lock().entry(node.to_string()).or_default() += 1;
    let call = rec.tick();
    let answer = match &kind {
        OpKind::Get => request(node, "GET", &path, &[], Vec::new()).await,
        OpKind::Put(v) => request(node, "PUT", &path, &[], v.clone().into_bytes()).await,
        OpKind::Delete => request(node, "DELETE", &path, &[], Vec::new()).await,
        OpKind::Cas { expect, new } => {
            let h = match (expect, cas_version) {
                (None, _) => vec![("if-none-match", "*".to_string())],
                (Some(_), Some(v)) => vec![("if-match", format!("\"{v}\""))],
                (Some(_), None) => vec![("if-match", "\"0\"".to_string())],
            };
            request(node, "PUT", &path, &h, new.clone().into_bytes()).await
        }
    };
    let ret = rec.tick();
    if let Some(n) = rec.in_flight.lock().get_mut(node) {
        *n -= 1;
    }
    let (outcome, etag) = match (&kind, &answer) {
        (OpKind::Get, Some(a)) if a.status == 200 => (
            Outcome::Read(Some(String::from_utf8_lossy(&a.body).into_owned())),
            a.etag,
        ),
        (OpKind::Get, Some(a)) if a.status == 404 => (Outcome::Read(None), None),
        (OpKind::Put(_), Some(a)) if a.status == 200 => (Outcome::Ok, a.etag),
        (OpKind::Delete, Some(a)) if a.status == 204 => (Outcome::Ok, None),
        (OpKind::Delete, Some(a)) if a.status == 404 => (Outcome::NotFound, None),
        (OpKind::Cas { .. }, Some(a)) if a.status == 200 => (Outcome::Ok, a.etag),
        (OpKind::Cas { .. }, Some(a)) if a.status == 412 => (Outcome::CasFailed, None),
        // The node says when an outcome is unknown (a forward lost on the way, a failed
        // fsync: `reason` "outcome_unknown"); any other 503 means it was not carried out.
        (_, Some(a))
            if a.status == 503
                && !String::from_utf8_lossy(&a.body).contains(r#""reason":"outcome_unknown""#) =>
        {
            (Outcome::Failed, None)
        }
        _ => (Outcome::Unknown, None),
    };
    let known = !matches!(outcome, Outcome::Unknown | Outcome::Failed);
    let detail = match &answer {
        None => "no answer".to_string(),
        Some(a) if a.status >= 300 => format!(
            "{} {}",
            a.status,
            String::from_utf8_lossy(&a.body[..a.body.len().min(200)])
        ),
        Some(a) => a.status.to_string(),
    };
    rec.ops.lock().push(Op {
        client,
        node: node.to_string(),
        key: key.to_string(),
        kind,
        call,
        ret: known.then_some(ret),
        outcome: outcome.clone(),
        detail,
    });
    (outcome, etag)
}

/// One client: random operations on random keys through random nodes until `until`.
async fn client_loop(rec: Arc<Recorder>, cfg: Config, client: usize, until: Duration) {
    let mut rng = Rng::new(cfg.seed ^ (0xC11E_0000 + client as u64).wrapping_mul(0x9E37_79B9));
    // The last value (and its version) this client saw or wrote per key, for If-Match.
    let mut known: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let mut n = 0u64;
    while turmoil::sim_elapsed().unwrap_or_default() < until {
        let up = cfg.nodes_up_at(turmoil::sim_elapsed().unwrap_or_default());
        let node = node_name(rng.below(up as u64) as usize);
        let key = format!("k{}", rng.below(cfg.keys as u64));
        n += 1;
        // Unique, and long enough that a few keys fill several levels of the tree.
        let value = format!("c{client}-{n}-{}", "v".repeat(cfg.value_pad));
        let pick = rng.below(100);
        let (g, p, d) = cfg.mix;
        let (kind, version) = if pick < g {
            (OpKind::Get, None)
        } else if pick < g + p {
            (OpKind::Put(value.clone()), None)
        } else if pick < g + p + d {
            (OpKind::Delete, None)
        } else {
            // If-Match in every run: versions live in the value envelope, so they survive
            // partition moves. (Before they did, this sweep failed on its first run with a
            // late joiner.)
            let if_match = rng.chance(70);
            match known.get(&key) {
                Some((v, ver)) if if_match => (
                    OpKind::Cas {
                        expect: Some(v.clone()),
                        new: value.clone(),
                    },
                    Some(*ver),
                ),
                _ => (
                    OpKind::Cas {
                        expect: None,
                        new: value.clone(),
                    },
                    None,
                ),
            }
        };
        let (outcome, etag) = perform(&rec, client, &node, &key, kind.clone(), version).await;
        match (&kind, outcome, etag) {
            (OpKind::Get, Outcome::Read(Some(v)), Some(e)) => {
                known.insert(key, (v, e));
            }
            (OpKind::Put(v), Outcome::Ok, Some(e)) => {
                known.insert(key, (v.clone(), e));
            }
            (OpKind::Cas { new, .. }, Outcome::Ok, Some(e)) => {
                known.insert(key, (new.clone(), e));
            }
            (OpKind::Delete, Outcome::Ok, _) => {
                known.remove(&key);
            }
            _ => {}
        }
        tokio::time::sleep(rng.ms(0, 40)).await;
    }
}

/// The client host: wait for the cluster, run the clients, then check that every key takes a
/// write again and reads back the same through every node.
async fn workload(rec: Arc<Recorder>, cfg: Config, problems: Arc<Mutex<Vec<String>>>) {
    tokio::time::sleep(STARTUP).await;
    let until = STARTUP + cfg.fault_phase + cfg.heal_phase;
    let tasks: Vec<_> = (0..cfg.clients)
        .map(|c| tokio::spawn(client_loop(rec.clone(), cfg.clone(), c, until)))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    // Progress after healing: every key must take a write within the deadline.
    let mut rng = Rng::new(cfg.seed ^ 0xF1AA_1000);
    let deadline = turmoil::sim_elapsed().unwrap_or_default() + Duration::from_secs(30);
    for k in 0..cfg.keys {
        let key = format!("k{k}");
        let mut done = false;
        let mut attempt = 0;
        while !done && turmoil::sim_elapsed().unwrap_or_default() < deadline {
            attempt += 1;
            let node = node_name(rng.below(cfg.total_nodes() as u64) as usize);
            let value = format!("final-{k}-{attempt}");
            let (o, _) = perform(&rec, usize::MAX, &node, &key, OpKind::Put(value), None).await;
            done = o == Outcome::Ok;
            if !done {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        if !done {
            problems.lock().push(format!(
                "no progress after healing: no write to {key} succeeded within 30 s"
            ));
        }
    }
    // Read every key back through every node.
    for k in 0..cfg.keys {
        for i in 0..cfg.total_nodes() {
            let key = format!("k{k}");
            perform(&rec, usize::MAX, &node_name(i), &key, OpKind::Get, None).await;
        }
    }
}

/// A fault and when it starts and ends (relative to the start of the run).
#[derive(Clone, Debug)]
enum Fault {
    Crash {
        node: usize,
    },
    /// Both ways: messages are held, then delivered on release (TCP retransmits after a
    /// partition heals).
    Partition {
        a: String,
        b: String,
    },
    /// One way: messages from `from` to `to` are dropped.
    OneWay {
        from: String,
        to: String,
    },
    /// The node's session traffic is held: its session expires if this lasts.
    CoordinatorCutOff {
        node: usize,
    },
    /// The node reaches only its clients: not the coordinator, not the other nodes.
    Isolate {
        node: usize,
    },
    /// `Isolate` of whichever node leads when the fault starts.
    IsolateLeader,
}

fn scripted_faults(cfg: &Config, scenario: Scenario) -> Vec<(Duration, Duration, Fault)> {
    let at = |ms: u64| STARTUP + Duration::from_millis(ms);
    match scenario {
        Scenario::InsertsRacingFlush | Scenario::CompactionOfLiveAndDeleted => Vec::new(),
        Scenario::CrashAfterUnflushedDelete => (0..cfg.nodes)
            .map(|n| {
                let start = 1500 + 2000 * n as u64;
                (at(start), at(start + 800), Fault::Crash { node: n })
            })
            .collect(),
        Scenario::LeaderCutOffFromCoordinator => {
            vec![(at(2000), at(6000), Fault::IsolateLeader)]
        }
    }
}

fn draw_faults(cfg: &Config, rng: &mut Rng) -> Vec<(Duration, Duration, Fault)> {
    if let Some(s) = cfg.scenario {
        return scripted_faults(cfg, s);
    }
    let mut out = Vec::new();
    if !cfg.faults {
        return out;
    }
    let phase = cfg.fault_phase.as_millis() as u64;
    let count = 1 + rng.below(4);
    for _ in 0..count {
        let start = STARTUP + Duration::from_millis(rng.below(phase * 2 / 3));
        let n = cfg.total_nodes();
        let node = rng.below(n as u64) as usize;
        let other = (node + 1 + rng.below(n as u64 - 1) as usize) % n;
        let (fault, len) = match rng.below(100) {
            0..=29 if cfg.crashes => (Fault::Crash { node }, rng.ms(300, 3000)),
            0..=29 => (Fault::CoordinatorCutOff { node }, rng.ms(300, 3000)),
            30..=49 => {
                let b = if rng.chance(25) {
                    "client".to_string()
                } else {
                    node_name(other)
                };
                (
                    Fault::Partition {
                        a: node_name(node),
                        b,
                    },
                    rng.ms(300, 4000),
                )
            }
            50..=64 => (
                Fault::OneWay {
                    from: node_name(node),
                    to: node_name(other),
                },
                rng.ms(300, 3000),
            ),
            65..=84 => (Fault::CoordinatorCutOff { node }, rng.ms(500, 4000)),
            _ => (Fault::Isolate { node }, rng.ms(500, 4000)),
        };
        let end = (start + len).min(STARTUP + cfg.fault_phase);
        out.push((start, end, fault));
    }
    out.sort_by_key(|(s, _, _)| *s);
    out
}

/// The network faults in force, counted per link, so that overlapping faults on one link end
/// when the last of them does.
#[derive(Default)]
struct Links {
    /// Both ways, held (sorted pair).
    held: BTreeMap<(String, String), usize>,
    /// One way, dropped (from, to).
    cut: BTreeMap<(String, String), usize>,
}

fn sorted(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

impl Links {
    fn hold(&mut self, sim: &turmoil::Sim<'_>, a: &str, b: &str) {
        let n = self.held.entry(sorted(a, b)).or_default();
        if *n == 0 {
            sim.hold(a, b);
        }
        *n += 1;
    }

    fn release(&mut self, sim: &turmoil::Sim<'_>, a: &str, b: &str) {
        let key = sorted(a, b);
        if let Some(n) = self.held.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&key);
                sim.release(a, b);
            }
        }
    }

    fn cut(&mut self, sim: &turmoil::Sim<'_>, from: &str, to: &str) {
        let n = self
            .cut
            .entry((from.to_string(), to.to_string()))
            .or_default();
        if *n == 0 {
            sim.partition_oneway(from, to);
        }
        *n += 1;
    }

    fn mend(&mut self, sim: &turmoil::Sim<'_>, from: &str, to: &str) {
        let key = (from.to_string(), to.to_string());
        if let Some(n) = self.cut.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.cut.remove(&key);
                sim.repair_oneway(from, to);
            }
        }
    }

    /// Puts back the faults in force on `host`'s links (after they were partitioned and
    /// repaired around a crash).
    fn restore(&self, sim: &turmoil::Sim<'_>, host: &str) {
        for (a, b) in self.held.keys() {
            if a == host || b == host {
                sim.hold(a.as_str(), b.as_str());
            }
        }
        for (from, to) in self.cut.keys() {
            if from == host || to == host {
                sim.partition_oneway(from.as_str(), to.as_str());
            }
        }
    }
}

enum Action {
    Start(Fault),
    End(Fault),
}

/// Runs one seed.
pub fn run(cfg: &Config) -> Result<Report, Failure> {
    if !cfg!(tokio_unstable) {
        panic!(
            "corecache-sim must be built with `--cfg tokio_unstable` (set in .cargo/config.toml; \
             a RUSTFLAGS environment variable overrides it) or runs are not reproducible"
        );
    }
    let mut rng = Rng::new(cfg.seed);
    let faults = draw_faults(cfg, &mut rng);
    let mut report = Report {
        seed: cfg.seed,
        ..Report::default()
    };
    let fault_log: Rc<RefCell<Vec<String>>> = Rc::default();
    let zk_log = Arc::new(Mutex::new(fakezk::ZkLog::default()));
    let fail = |message: String, log: &Rc<RefCell<Vec<String>>>| Failure {
        seed: cfg.seed,
        message,
        faults: log.borrow().clone(),
        coordinator: zk_log
            .lock()
            .writes
            .iter()
            .map(|w| {
                format!(
                    "epoch {} version {} leader {} owners {:?}",
                    w.epoch, w.version, w.leader, w.owners
                )
            })
            .collect(),
    };
    let max_latency = rng.ms(1, 20);
    let total = STARTUP + cfg.fault_phase + cfg.heal_phase + Duration::from_secs(60);
    let mut sim = turmoil::Builder::new()
        .simulation_duration(total)
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(max_latency)
        .rng_seed(rng.next_u64())
        .build();

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
    let rec = Arc::new(Recorder::default());
    let problems: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let rec = rec.clone();
        let c = cfg.clone();
        let problems = problems.clone();
        sim.client("client", async move {
            workload(rec, c, problems).await;
            Ok(())
        });
    }

    // (when, order of scheduling) → action.
    let mut actions: BTreeMap<(Duration, usize), Action> = BTreeMap::new();
    for (s, e, f) in &faults {
        let n = actions.len();
        actions.insert((*s, n), Action::Start(f.clone()));
        actions.insert((*e, n + 1), Action::End(f.clone()));
    }
    let mut scheduled = actions.len();
    let mut down = vec![false; cfg.total_nodes()];
    let all_nodes: Vec<String> = (0..cfg.total_nodes()).map(node_name).collect();
    let mut hosts = all_nodes.clone();
    hosts.push(fakezk::HOST.to_string());
    hosts.push("client".to_string());
    let mut links = Links::default();
    loop {
        while let Some((&(at, _), _)) = actions.first_key_value() {
            if sim.elapsed() < at {
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
            match action {
                Action::Start(Fault::Crash { node }) => {
                    if down[node] {
                        continue;
                    }
                    report.crashes += 1;
                    if rec
                        .in_flight
                        .lock()
                        .get(&node_name(node))
                        .copied()
                        .unwrap_or(0)
                        > 0
                    {
                        report.crashes_with_writes_in_flight += 1;
                    }
                    // The disk first: the dying process's handles go stale, so nothing it
                    // does while being torn down reaches the disk.
                    let r = disks[node].crash(rng.next_u64());
                    if r.torn_files > 0 {
                        report.torn_writes += 1;
                    }
                    report.lost_unsynced_bytes += r.lost_bytes;
                    // A power cut sends nothing: the node's sockets close without a word to
                    // anyone (peers find out by timeouts, or by a reset when they next send).
                    // This also keeps the run reproducible: tokio drops a runtime's tasks in
                    // an order that depends on process-wide task ids.
                    let me = node_name(node);
                    for o in hosts.iter().filter(|o| **o != me) {
                        sim.partition(me.as_str(), o.as_str());
                    }
                    take_stats(&slots[node], &mut report);
                    sim.crash(me.as_str());
                    for o in hosts.iter().filter(|o| **o != me) {
                        sim.repair(me.as_str(), o.as_str());
                    }
                    links.restore(&sim, &me);
                    down[node] = true;
                }
                Action::End(Fault::Crash { node }) => {
                    if down[node] {
                        sim.bounce(node_name(node));
                        down[node] = false;
                    }
                }
                Action::Start(Fault::Partition { a, b }) => {
                    report.partitions += 1;
                    links.hold(&sim, &a, &b);
                }
                Action::End(Fault::Partition { a, b }) => links.release(&sim, &a, &b),
                Action::Start(Fault::OneWay { from, to }) => {
                    report.one_way_partitions += 1;
                    links.cut(&sim, &from, &to);
                }
                Action::End(Fault::OneWay { from, to }) => links.mend(&sim, &from, &to),
                Action::Start(Fault::CoordinatorCutOff { node }) => {
                    report.coordinator_cut_offs += 1;
                    links.hold(&sim, &node_name(node), fakezk::HOST);
                }
                Action::End(Fault::CoordinatorCutOff { node }) => {
                    links.release(&sim, &node_name(node), fakezk::HOST)
                }
                Action::Start(Fault::IsolateLeader) => {
                    // Whoever wrote the state last leads; turn this into an isolation of it
                    // (ended when the scripted fault ends).
                    let leader = zk_log.lock().writes.last().map(|w| w.leader.clone());
                    let node = leader
                        .and_then(|l| l.strip_prefix('n').and_then(|i| i.parse::<usize>().ok()));
                    if let Some(node) = node {
                        report.leader_isolations += 1;
                        let end = faults
                            .iter()
                            .find(|(_, _, f)| matches!(f, Fault::IsolateLeader))
                            .map_or(at, |(_, e, _)| *e);
                        actions.insert((at, scheduled), Action::Start(Fault::Isolate { node }));
                        actions.insert((end, scheduled + 1), Action::End(Fault::Isolate { node }));
                        scheduled += 2;
                    }
                }
                Action::End(Fault::IsolateLeader) => {}
                Action::Start(Fault::Isolate { node }) => {
                    report.partitions += 1;
                    report.coordinator_cut_offs += 1;
                    let me = node_name(node);
                    links.hold(&sim, &me, fakezk::HOST);
                    for other in all_nodes.iter().filter(|o| **o != me) {
                        links.hold(&sim, &me, other);
                    }
                }
                Action::End(Fault::Isolate { node }) => {
                    let me = node_name(node);
                    links.release(&sim, &me, fakezk::HOST);
                    for other in all_nodes.iter().filter(|o| **o != me) {
                        links.release(&sim, &me, other);
                    }
                }
            }
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return Err(fail(format!("the simulation failed: {e}"), &fault_log)),
        }
    }
    report.sim_time = sim.elapsed();
    for slot in &slots {
        take_stats(slot, &mut report);
    }
    drop(sim);

    let ops = rec.ops.lock().clone();
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
        .filter(|o| !matches!(o.kind, OpKind::Get) && o.outcome == Outcome::Ok)
        .count();
    // A copy: `fail` reads the log too.
    let (writes, sessions_expired) = {
        let zk = zk_log.lock();
        (zk.writes.clone(), zk.sessions_expired)
    };
    report.sessions_expired = sessions_expired;
    let mut epochs: BTreeMap<u64, String> = BTreeMap::new();
    let mut last_epoch = 0;
    for w in &writes {
        if w.writer != w.leader {
            return Err(fail(
                format!(
                    "{} wrote the state of {}'s epoch {}",
                    w.writer, w.leader, w.epoch
                ),
                &fault_log,
            ));
        }
        if w.epoch < last_epoch {
            return Err(fail(
                format!("epoch went back from {last_epoch} to {}", w.epoch),
                &fault_log,
            ));
        }
        last_epoch = w.epoch;
        if let Some(l) = epochs.insert(w.epoch, w.leader.clone()) {
            if l != w.leader {
                return Err(fail(
                    format!("two leaders in epoch {}: {l} and {}", w.epoch, w.leader),
                    &fault_log,
                ));
            }
        }
    }
    report.leader_changes = epochs.len().saturating_sub(1);
    report.joined = cfg.join_at.is_some();
    for pair in writes.windows(2) {
        report.partitions_moved += pair[0]
            .owners
            .iter()
            .zip(&pair[1].owners)
            .filter(|(a, b)| a != b)
            .count();
    }
    if let Some(p) = problems.lock().first() {
        return Err(fail(p.clone(), &fault_log));
    }
    if let Err(v) = history::check(&ops) {
        return Err(fail(format!("not linearizable: {v}"), &fault_log));
    }
    let mut h = DefaultHasher::new();
    ops.hash(&mut h);
    for w in &writes {
        w.hash(&mut h);
    }
    fault_log.borrow().hash(&mut h);
    report.trace = ops.iter().map(|o| o.to_string()).collect();
    report.trace.extend(writes.iter().map(|w| format!("{w:?}")));
    report.trace.extend(fault_log.borrow().iter().cloned());
    report.sim_time.hash(&mut h);
    report.digest = h.finish();
    Ok(report)
}
