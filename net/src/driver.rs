//! The tokio driver of the sans-IO node: one task owns the `Node`, feeds it requests, peer
//! messages, coordinator events, persist completions and timeouts, and carries out its outputs.
//! The fsync (`Db::persist`) runs on a blocking thread, never on the event loop; replies to
//! durable writes leave when it returns. Peer sends go to the [`PeerNet`], coordinator commands
//! to the [`Coordinator`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use corecache_core::cluster::{CoordCommand, CoordEvent, Member};
use corecache_core::node::{ClusterView, Input, Node, NodeStats, Output, Reader};
use corecache_core::proto::{AdminCommand, ErrorKind, Request, Response};
use corecache_core::Db;
use tokio::sync::{mpsc, oneshot, watch};

use crate::coord::Coordinator;
use crate::metrics::Metrics;
use crate::peer::{PeerEvent, PeerNet};

#[derive(Debug)]
enum Msg {
    Client {
        request: Request,
        reply: oneshot::Sender<Response>,
    },
    Persisted(Result<u64, String>),
    Coord(CoordEvent),
    Admin {
        command: AdminCommand,
        reply: oneshot::Sender<Response>,
    },
    Peer(PeerEvent),
    BackgroundDone(Result<usize, String>),
    Stats(oneshot::Sender<NodeStats>),
    Cluster(oneshot::Sender<ClusterView>),
}

/// A cheap, cloneable way to talk to the node task.
#[derive(Clone)]
pub struct NodeHandle {
    tx: mpsc::Sender<Msg>,
    /// The node's clock, for reads answered outside its task (leases are timed on it).
    now_ms: Clock,
    reader: Reader,
    db: Arc<Db>,
    node_id: String,
    partitions: u16,
    ready: Arc<AtomicBool>,
}

/// A node's first request id: the wall clock in milliseconds, shifted left 16 bits (unique
/// across restarts while a node sends fewer than 65,536 requests a millisecond).
pub fn first_request_id() -> u64 {
    wall_ms() << 16
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where the driver runs the node's blocking work (`Db::persist`, flushes, compactions).
#[derive(Clone, Copy, Debug)]
pub enum Blocking {
    /// On tokio's blocking threads: the event loop never waits for a disk.
    Threads,
    /// On the event loop itself, in a task that first sleeps `fsync_delay` (on tokio's clock).
    /// For the simulation: no threads, so one seed replays exactly, and the delay lets writes
    /// arrive while a sync is "in flight".
    Inline { fsync_delay: Duration },
}

/// What the driver takes from its surroundings: a clock and a place for blocking work. The
/// real runtime uses [`Env::real`]; the simulation passes its simulated clock.
#[derive(Clone)]
pub struct Env {
    /// Wall-clock milliseconds: the node's `now`.
    pub now_ms: Clock,
    pub blocking: Blocking,
}

/// A node's clock: wall-clock milliseconds (each simulated node may have its own).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env")
            .field("now_ms", &(self.now_ms)())
            .field("blocking", &self.blocking)
            .finish()
    }
}

impl Env {
    pub fn real() -> Env {
        Env {
            now_ms: Arc::new(wall_ms),
            blocking: Blocking::Threads,
        }
    }
}

impl NodeHandle {
    /// Sends a request and waits for its reply. Reads are answered right here, on the calling
    /// task (they need no ordering with other requests: they see persisted writes only); writes
    /// go through the node task.
    pub async fn call(&self, request: Request) -> Response {
        let request = match self.reader.try_read((self.now_ms)(), request) {
            Ok(response) => return response,
            Err(request) => request,
        };
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Client { request, reply }).await.is_err() {
            return stopped();
        }
        rx.await.unwrap_or_else(|_| lost())
    }

    /// Sends a request to the node without waiting for its answer ([`Pending::reply`] waits).
    /// Requests sent one after another are applied in that order, so a client can have several
    /// writes in flight (a pipeline) and still see them applied in its order. Not for reads,
    /// which [`call`](Self::call) answers without the node task.
    pub async fn send(&self, request: Request) -> Pending {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Client { request, reply }).await.is_err() {
            return Pending(None);
        }
        Pending(Some(rx))
    }

    /// Runs an operator command through the node.
    pub async fn admin(&self, command: AdminCommand) -> Response {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Msg::Admin { command, reply }).await.is_err() {
            return stopped();
        }
        rx.await.unwrap_or_else(|_| stopped())
    }

    pub async fn stats(&self) -> NodeStats {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Stats(tx)).await.is_err() {
            return NodeStats::default();
        }
        rx.await.unwrap_or_default()
    }

    /// The node's cluster view (`None` if the node task has stopped).
    pub async fn cluster(&self) -> Option<ClusterView> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Msg::Cluster(tx)).await.ok()?;
        rx.await.ok()
    }

    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn partitions(&self) -> u16 {
        self.partitions
    }

    /// Whether the node knows a partition map it can route by.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// A request sent with [`NodeHandle::send`], its answer still to come.
pub struct Pending(Option<oneshot::Receiver<Response>>);

impl Pending {
    pub async fn reply(self) -> Response {
        match self.0 {
            Some(rx) => rx.await.unwrap_or_else(|_| lost()),
            None => stopped(),
        }
    }
}

/// The request never reached the node task.
/// `CORECACHE_TRACE_IO=FROM-TO` (node clock ms): every input and output of the node in that
/// window goes to stderr, cut to 600 characters. A debugging aid for simulated runs.
fn trace_window() -> Option<(u64, u64)> {
    static WINDOW: std::sync::OnceLock<Option<(u64, u64)>> = std::sync::OnceLock::new();
    *WINDOW.get_or_init(|| {
        let v = std::env::var("CORECACHE_TRACE_IO").ok()?;
        let (a, b) = v.split_once('-')?;
        Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
    })
}

fn trace_line(node: &str, now: u64, dir: &str, what: &dyn std::fmt::Debug) {
    let mut line = format!("{what:?}");
    if line.len() > 600 {
        let mut cut = 600;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
    eprintln!("io {now} {node} {dir} {line}");
}

fn stopped() -> Response {
    Response::Error {
        kind: ErrorKind::Unavailable,
        message: "the node is shutting down".into(),
    }
}

/// The node task took the request and stopped before answering: it may have been applied.
fn lost() -> Response {
    Response::Error {
        kind: ErrorKind::OutcomeUnknown,
        message: "the node stopped before answering; the outcome is unknown".into(),
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs `work` (a persist, a flush) where `blocking` says, and feeds its result to the node.
fn run_blocking(
    blocking: Blocking,
    tx: mpsc::Sender<Msg>,
    work: impl FnOnce() -> Msg + Send + 'static,
) {
    match blocking {
        Blocking::Threads => {
            tokio::task::spawn_blocking(move || {
                let _ = tx.blocking_send(work());
            });
        }
        Blocking::Inline { fsync_delay } => {
            tokio::spawn(async move {
                tokio::time::sleep(fsync_delay).await;
                let _ = tx.send(work()).await;
            });
        }
    }
}

/// How the node reaches the rest of its cluster.
pub struct ClusterIo {
    pub coordinator: Box<dyn Coordinator>,
    /// This node as it registers with the coordinator.
    pub me: Member,
    /// The peer transport and its events (none for the embedded one-node cluster).
    pub peers: Option<(PeerNet, mpsc::Receiver<PeerEvent>)>,
}

/// Starts the node task on the real clock and blocking threads. It ends when `shutdown` turns
/// true.
pub fn spawn(
    node: Node,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
    io: ClusterIo,
) -> NodeHandle {
    spawn_with(node, metrics, shutdown, io, Env::real())
}

/// Starts the node task with the given clock and blocking-work policy.
pub fn spawn_with(
    node: Node,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
    io: ClusterIo,
    env: Env,
) -> NodeHandle {
    let (tx, rx) = mpsc::channel::<Msg>(8192);
    let ready = Arc::new(AtomicBool::new(false));
    let handle = NodeHandle {
        tx: tx.clone(),
        now_ms: env.now_ms.clone(),
        reader: node.reader(),
        db: node.db().clone(),
        node_id: node.config().node_id.clone(),
        partitions: node.config().partitions,
        ready: ready.clone(),
    };
    let (coord_tx, coord_rx) = mpsc::unbounded_channel::<CoordEvent>();
    let commands = io.coordinator.start(io.me, coord_tx);
    let peer_net = join_queue(&tx, coord_rx, io.peers);
    let task = NodeTask {
        node,
        metrics,
        env,
        tx,
        ready,
        peer_net,
        commands,
        next_id: 0,
        replies: HashMap::new(),
        out: Vec::new(),
    };
    tokio::spawn(task.run(rx, shutdown));
    handle
}

/// Feeds coordinator events and peer messages into the node's one queue, so that the node task
/// takes every input from one place, in one order. Returns the peer transport, for the sends.
fn join_queue(
    tx: &mpsc::Sender<Msg>,
    mut coord_rx: mpsc::UnboundedReceiver<CoordEvent>,
    peers: Option<(PeerNet, mpsc::Receiver<PeerEvent>)>,
) -> Option<PeerNet> {
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(ev) = coord_rx.recv().await {
                if tx.send(Msg::Coord(ev)).await.is_err() {
                    return;
                }
            }
        });
    }
    match peers {
        Some((net, mut events)) => {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(ev) = events.recv().await {
                    if tx.send(Msg::Peer(ev)).await.is_err() {
                        return;
                    }
                }
            });
            Some(net)
        }
        None => None,
    }
}

/// The node task: it alone owns the `Node`, so the node needs no lock, and it keeps what
/// carrying out the node's outputs needs.
struct NodeTask {
    node: Node,
    metrics: Arc<Metrics>,
    env: Env,
    /// The node's own queue, on which blocking work reports back.
    tx: mpsc::Sender<Msg>,
    ready: Arc<AtomicBool>,
    peer_net: Option<PeerNet>,
    commands: mpsc::UnboundedSender<CoordCommand>,
    next_id: u64,
    /// The callers waiting for an `Output::Reply`, by the id the node was given.
    replies: HashMap<u64, oneshot::Sender<Response>>,
    /// The node's outputs, one buffer reused for every input.
    out: Vec<Output>,
}

impl NodeTask {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>, mut shutdown: watch::Receiver<bool>) {
        let wall_ms = self.env.now_ms.clone();
        loop {
            // The node's own deadline, as a sleep on tokio's clock.
            let deadline = self.node.next_deadline().map(|at| {
                let wait = at.saturating_sub(wall_ms());
                tokio::time::Instant::now() + Duration::from_millis(wait)
            });
            let msg = tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => Some(m),
                    None => break,
                },
                _ = shutdown.changed() => break,
                _ = sleep_until(deadline) => None,
            };
            let now = wall_ms();
            let window = trace_window();
            let traced = window.is_some_and(|(a, b)| (a..=b).contains(&now));
            if traced && !matches!(msg, None | Some(Msg::Stats(_)) | Some(Msg::Cluster(_))) {
                trace_line(self.node.config().node_id.as_str(), now, "in ", &msg);
            }
            self.feed(now, msg);
            if traced {
                for o in &self.out {
                    trace_line(self.node.config().node_id.as_str(), now, "out", o);
                }
            }
            self.ready.store(self.node.ready(), Ordering::Release);
            self.carry_out();
        }
        // Answer whatever is still waiting rather than leaving clients hanging.
        for (_, r) in self.replies.drain() {
            let _ = r.send(lost());
        }
    }

    /// Turns one message (`None`: the deadline passed) into the node's input. Callers that
    /// wait for an answer get an id here, which the node's `Output::Reply` names.
    fn feed(&mut self, now: u64, msg: Option<Msg>) {
        let node = &mut self.node;
        let out = &mut self.out;
        match msg {
            None => node.handle(now, Input::Timeout, out),
            Some(Msg::Client { request, reply }) => {
                let id = self.next_id;
                self.next_id += 1;
                self.replies.insert(id, reply);
                node.handle(now, Input::Client { id, request }, out);
            }
            Some(Msg::Persisted(Ok(upto))) => node.handle(now, Input::Persisted { upto }, out),
            Some(Msg::Persisted(Err(message))) => {
                node.handle(now, Input::PersistFailed { message }, out)
            }
            Some(Msg::BackgroundDone(result)) => {
                node.handle(now, Input::BackgroundDone { result }, out)
            }
            Some(Msg::Admin { command, reply }) => {
                let id = self.next_id;
                self.next_id += 1;
                self.replies.insert(id, reply);
                node.handle(now, Input::Admin { id, command }, out);
            }
            Some(Msg::Coord(event)) => {
                if let (CoordEvent::Members(ms), Some(net)) = (&event, &self.peer_net) {
                    net.set_addrs(ms.iter().map(|m| (m.id.clone(), m.peer.clone())));
                }
                node.handle(now, Input::Coordinator(event), out);
            }
            Some(Msg::Peer(PeerEvent::Message { from, message })) => {
                node.handle(now, Input::Peer { from, message }, out)
            }
            Some(Msg::Peer(PeerEvent::Down { peer })) => {
                node.handle(now, Input::PeerDown { peer }, out)
            }
            Some(Msg::Stats(tx)) => {
                let _ = tx.send(node.stats());
            }
            Some(Msg::Cluster(tx)) => {
                let _ = tx.send(node.cluster());
            }
        }
    }

    /// Carries out the outputs of the last input, in the order the node gave them. Blocking
    /// work goes where `env.blocking` says and reports back on the node's queue.
    fn carry_out(&mut self) {
        for o in self.out.drain(..) {
            match o {
                Output::Send { to, message } => match &self.peer_net {
                    Some(net) => net.send(to, message),
                    None => tracing::error!(%to, "no peer transport for a peer message"),
                },
                Output::Coordinator(cmd) => {
                    let _ = self.commands.send(cmd);
                }
                Output::Reply { id, response } => {
                    if let Some(r) = self.replies.remove(&id) {
                        let _ = r.send(response);
                    }
                }
                Output::Persist => {
                    let db = self.node.db().clone();
                    let metrics = self.metrics.clone();
                    run_blocking(self.env.blocking, self.tx.clone(), move || {
                        let start = Instant::now();
                        let r = db.persist().map_err(|e| e.to_string());
                        metrics.observe_fsync(start.elapsed());
                        Msg::Persisted(r)
                    });
                }
                Output::Background => {
                    let db = self.node.db().clone();
                    run_blocking(self.env.blocking, self.tx.clone(), move || {
                        Msg::BackgroundDone(db.do_background_work().map_err(|e| e.to_string()))
                    });
                }
            }
        }
    }
}
