//! The software of one node host: the real engine on the node's `SimDisk`, the real node and
//! front-ends from [`corecache_net::assemble`], the real peer transport, all over turmoil.

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
use parking_lot::Mutex;

use crate::{fakezk, Config, Report, CLUSTER, HTTP_PORT, PEER_PORT, RESP_PORT};

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
pub(crate) type DbSlot = Arc<Mutex<Option<Arc<Db>>>>;

/// Adds a node's engine counters to the report and forgets the engine.
pub(crate) fn take_stats(slot: &DbSlot, report: &mut Report) {
    if let Some(db) = slot.lock().take() {
        let s = db.stats();
        report.flushes += s.flushes;
        report.compactions += s.compactions;
    }
}

pub(crate) async fn node_main(
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
    // A new disk gets a new identity: the time it was first used, and the node's name.
    let fresh = id.bytes().fold(crate::sim_now_ms(), |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let (disk, restarted) = corecache_core::node::disk_identity(&db, fresh)?;
    let io = ClusterIo {
        coordinator: Box::new(fakezk::FakeCoordinator {
            session_timeout: cfg.session_timeout,
        }),
        me: Member {
            id: id.clone(),
            http: format!("{id}:{HTTP_PORT}"),
            peer: format!("{id}:{PEER_PORT}"),
            disk,
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
            replication_factor: cfg.replication_factor,
            min_insync_replicas: cfg.min_insync_replicas,
            log_retain: cfg.log_retain,
            replica_timeout_ms: cfg.replica_timeout_ms,
            disk_id: disk,
            restarted,
            // A reply a peer held for this node's previous run must not match a request of
            // this one (replicated seed 859: a MSETNX answered with a stale reply's Written).
            first_request_id: crate::sim_now_ms() << 16,
            ..NodeConfig::default()
        },
        io,
        stop_rx.clone(),
        Env {
            now_ms: crate::node_clock(&cfg, &id),
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
