//! # corecache-net
//!
//! The real runtime around `corecache-core`: the tokio driver of the sans-IO node, the HTTP API
//! (axum), metrics, and configuration. [`serve`] runs one node: it listens at once (answering
//! 503 on `/readyz` while the log replays), opens the engine, then serves until shutdown. With
//! `zookeeper` set it joins (or creates) a cluster through ZooKeeper and talks to the other
//! nodes over the peer transport; without it, an in-process coordinator makes it a cluster of
//! one.

pub mod assemble;
pub mod config;
pub mod coord;
pub mod driver;
pub mod http;
pub mod metrics;
pub mod peer;
pub mod resp;
pub mod server;
pub mod zk;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use corecache_core::cluster::Member;
use corecache_core::node::NodeConfig;
use corecache_core::{Db, Disk, DiskFile, Options, StdDisk};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::Config;

/// Reads the node id kept in the data directory, or stores `wanted` (or a new one) there.
/// A node keeps its id across restarts; asking for a different id than the stored one is an
/// error, not a silent rename.
pub fn node_id(data_dir: &Path, wanted: Option<&str>) -> Result<String, String> {
    let path = data_dir.join("NODE_ID");
    match std::fs::read_to_string(&path) {
        Ok(stored) => {
            let stored = stored.trim().to_string();
            if let Some(w) = wanted {
                if w != stored {
                    return Err(format!(
                        "{} belongs to node `{stored}`, not `{w}`",
                        data_dir.display()
                    ));
                }
            }
            Ok(stored)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = match wanted {
                Some(w) => w.to_string(),
                None => {
                    // Not security-relevant: a unique-enough name for a fresh node.
                    let t = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_nanos())
                        .unwrap_or(0);
                    format!(
                        "node-{:08x}",
                        (t as u64 ^ u64::from(std::process::id())) as u32
                    )
                }
            };
            let tmp = data_dir.join("NODE_ID.tmp");
            std::fs::write(&tmp, format!("{id}\n"))
                .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|()| std::fs::rename(&tmp, &path))
                .and_then(|()| std::fs::File::open(data_dir)?.sync_all())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Ok(id)
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The coordinator and peer transport: ZooKeeper and TCP peers with `zookeeper` set, the
/// in-process coordinator otherwise.
async fn cluster_io(
    cfg: &Config,
    id: &str,
    http: SocketAddr,
    disk: u64,
) -> Result<driver::ClusterIo, String> {
    let Some(hosts) = &cfg.zookeeper else {
        return Ok(driver::ClusterIo {
            coordinator: Box::new(coord::LocalCoordinator),
            me: Member {
                id: id.to_string(),
                http: http.to_string(),
                peer: String::new(),
                disk,
            },
            peers: None,
        });
    };
    let peer_listen = cfg.peer_addr(http);
    let listener = TcpListener::bind(&peer_listen).await.map_err(|e| {
        let how = if cfg.peer_listen.is_empty() {
            " (the HTTP port + 10000; set another with --peer-listen)"
        } else {
            ""
        };
        format!("cannot listen for peers on {peer_listen}{how}: {e}")
    })?;
    let peer_addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (tx, rx) = tokio::sync::mpsc::channel(8192);
    let net = peer::PeerNet::new(id.to_string(), cfg.cluster.clone(), tx);
    net.serve(listener);
    tracing::info!(%peer_addr, zookeeper = %hosts, cluster = %cfg.cluster, "joining the cluster");
    Ok(driver::ClusterIo {
        coordinator: Box::new(zk::ZkCoordinator::new(zk::ZkConfig {
            hosts: hosts.clone(),
            root: cfg.zk_root.clone(),
            cluster: cfg.cluster.clone(),
            session_timeout: std::time::Duration::from_millis(cfg.session_timeout_ms),
        })),
        me: Member {
            id: id.to_string(),
            http: http.to_string(),
            peer: peer_addr.to_string(),
            disk,
        },
        peers: Some((net, rx)),
    })
}

/// A running node: where it listens, and how to stop it.
pub struct Running {
    pub addr: SocketAddr,
    /// Where the Redis protocol front-end listens, if it does.
    pub resp_addr: Option<SocketAddr>,
    resp: Option<tokio::task::JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
    node_stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    db: Arc<OnceLock<Arc<Db>>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, then syncs the log.
    pub async fn stop(self) -> Result<(), String> {
        let _ = self.shutdown.send(true);
        match self.server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("server error: {e}")),
            Err(e) => return Err(format!("server task failed: {e}")),
        }
        if let Some(resp) = self.resp {
            let _ = resp.await;
        }
        // Only now, with every request answered, stop the node task.
        let _ = self.node_stop.send(true);
        if let Some(db) = self.db.get() {
            let db = db.clone();
            tokio::task::spawn_blocking(move || db.sync_wal())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("final log sync failed: {e}"))?;
        }
        Ok(())
    }

    /// Resolves when the server ends by itself (it should not).
    pub async fn wait(&mut self) {
        let _ = (&mut self.server).await;
    }
}

/// Binds the listeners, calls `announce` with their addresses (HTTP, and RESP if enabled),
/// starts serving (503 / `-LOADING` until ready), opens the engine, and returns once the node is
/// ready.
pub async fn serve(
    cfg: Config,
    announce: impl FnOnce(SocketAddr, Option<SocketAddr>),
) -> Result<Running, String> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", cfg.data_dir.display()))?;
    let id = node_id(&cfg.data_dir, cfg.node_id.as_deref())?;
    let listener = TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let resp_listener = bind_resp(&cfg).await?;
    let resp_addr = match &resp_listener {
        Some(l) => Some(l.local_addr().map_err(|e| e.to_string())?),
        None => None,
    };
    announce(addr, resp_addr);

    let (shutdown, shutdown_rx) = watch::channel(false);
    let (node_stop, node_stop_rx) = watch::channel(false);
    let metrics = Arc::new(metrics::Metrics::default());
    let db_cell: Arc<OnceLock<Arc<Db>>> = Arc::new(OnceLock::new());
    let parts = assemble::Assembly::new(
        &assemble::FrontEndConfig {
            max_key_bytes: cfg.max_key_bytes,
            max_value_bytes: cfg.max_value_bytes,
            max_body_bytes: cfg.max_body_bytes,
            resp_flushdb: cfg.resp_flushdb,
            sync: cfg.sync.clone(),
            resp_port: resp_addr.map_or(0, |a| a.port()),
        },
        metrics.clone(),
    );
    let app = parts.http.clone();
    let resp = resp_listener.map(|l| {
        tokio::spawn(resp::serve(
            resp::NoDelay(l),
            parts.resp.clone(),
            shutdown_rx.clone(),
        ))
    });
    let mut stop_rx = shutdown_rx.clone();
    let server = tokio::spawn(async move {
        server::serve(listener, app, async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        })
        .await
    });

    let db = Arc::new(open_db(&cfg, &metrics).await?);
    if let Some(t) = &db.recovery().torn_tail {
        tracing::warn!(file = %t.0, offset = t.1, "dropped a torn write at the end of the log");
    }
    let _ = db_cell.set(db.clone());
    // A new number each time a node starts on a new disk (not security-relevant).
    let fresh = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ (u64::from(std::process::id()) << 32);
    let (disk, restarted) = corecache_core::node::disk_identity(&db, fresh)?;
    let io = cluster_io(&cfg, &id, addr, disk).await?;
    parts.start(
        db,
        NodeConfig {
            node_id: id.clone(),
            partitions: cfg.partitions,
            max_key_bytes: cfg.max_key_bytes,
            max_value_bytes: cfg.max_value_bytes,
            initial_members: cfg.initial_nodes,
            replication_factor: cfg.replication().0,
            min_insync_replicas: cfg.replication().1,
            replica_timeout_ms: cfg.replica_timeout_ms,
            disk_id: disk,
            restarted,
            first_request_id: driver::first_request_id(),
            ..NodeConfig::default()
        },
        io,
        node_stop_rx,
        driver::Env::real(),
    );
    tracing::info!(node_id = %id, %addr, "ready");
    Ok(Running {
        addr,
        resp_addr,
        resp,
        shutdown,
        node_stop,
        server,
        db: db_cell,
    })
}

/// The RESP listener, if the front-end is on. Its own function because of the rule for a
/// failure to bind: an address that was set stops the node; the embedded default's
/// 127.0.0.1:7379 being taken (another node, a Redis) only costs the front-end.
async fn bind_resp(cfg: &Config) -> Result<Option<TcpListener>, String> {
    Ok(match cfg.resp_addr() {
        None => None,
        Some((at, set)) => match TcpListener::bind(at).await {
            Ok(l) => Some(l),
            Err(e) if set => return Err(format!("cannot listen for RESP on {at}: {e}")),
            Err(e) => {
                tracing::warn!(addr = %at, error = %e, "the Redis protocol front-end is off: cannot listen");
                None
            }
        },
    })
}

/// Opens the engine (WAL replay) off the event loop, with the options `cfg` asks for and the
/// test-only failpoints; kept apart from [`serve`] because the front-ends already answer (503
/// on `/readyz`) while this runs.
async fn open_db(cfg: &Config, metrics: &Arc<metrics::Metrics>) -> Result<Db, String> {
    // Test-only failpoint: a long replay, made deterministic, so tests can watch the node start.
    if let Some(ms) = std::env::var("CORECACHE_FAILPOINT_OPEN_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms.min(60_000))).await;
    }
    let opts = assemble::node_engine_options(Options {
        sync: cfg.sync_mode(),
        memtable_bytes: (cfg.memtable_mb as usize) << 20,
        block_cache_bytes: cfg.block_cache_mb << 20,
        max_key_bytes: cfg.max_key_bytes + 2,
        max_value_bytes: cfg.max_value_bytes + 64,
        listener: corecache_core::Listener(Some(metrics.clone())),
        ..Options::default()
    });
    let db_dir = cfg.data_dir.join("db");
    // Test-only failpoint: every table file takes this long to create, so flushes (and the
    // next log, made by the same thread) fall behind and writes stall, and a test can watch
    // the node keep answering reads meanwhile.
    let slow_tables = std::env::var("CORECACHE_FAILPOINT_TABLE_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| std::time::Duration::from_millis(ms.min(120_000)));
    tokio::task::spawn_blocking(move || -> Result<Db, String> {
        let disk = StdDisk::open(&db_dir).map_err(|e| format!("{}: {e}", db_dir.display()))?;
        let disk: Arc<dyn Disk> = match slow_tables {
            Some(delay) => Arc::new(SlowTables { disk, delay }),
            None => Arc::new(disk),
        };
        Db::open(disk, opts).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The failpoint `CORECACHE_FAILPOINT_TABLE_DELAY_MS`: a disk whose table files are slow to
/// create (everything else is the real disk).
struct SlowTables {
    disk: StdDisk,
    delay: std::time::Duration,
}

impl Disk for SlowTables {
    fn create(&self, name: &str) -> std::io::Result<Arc<dyn DiskFile>> {
        if name.ends_with(".sst") {
            std::thread::sleep(self.delay);
        }
        self.disk.create(name)
    }
    fn open(&self, name: &str) -> std::io::Result<Arc<dyn DiskFile>> {
        self.disk.open(name)
    }
    fn rename(&self, from: &str, to: &str) -> std::io::Result<()> {
        self.disk.rename(from, to)
    }
    fn remove(&self, name: &str) -> std::io::Result<()> {
        self.disk.remove(name)
    }
    fn list(&self) -> std::io::Result<Vec<String>> {
        self.disk.list()
    }
    fn sync_dir(&self) -> std::io::Result<()> {
        self.disk.sync_dir()
    }
}
