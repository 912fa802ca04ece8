//! A fake ZooKeeper that runs as its own host inside the simulation, and the node-side
//! [`Coordinator`] that talks to it over turmoil's network.
//!
//! It keeps what matters of ZooKeeper's behaviour for CoreCache:
//! - **Sessions** with a timeout. The server expires a session it has not heard from for the
//!   timeout (a crashed node, a node cut off from it), deleting its ephemeral entries: the
//!   member entry and the election candidacy. The client pings every third of the timeout and
//!   reports `Disconnected` after two thirds of it without hearing from the server, so a cut-off
//!   leader steps down before its session can expire. A client that comes back after expiry is
//!   told `Expired` and must open a new session.
//! - **Election** by the lowest candidacy sequence number among live sessions, as in the
//!   ZooKeeper recipe; a restarted node with its old session still alive waits behind it.
//! - **Conditional writes** of the state with a version stamp (`-1`: create).
//! - **Watches**: the server pushes the current member list and state after each change. A
//!   client that was away gets the then-current value on reconnection, never the intermediate
//!   ones, which is what a one-shot watch followed by a re-read gives. Every push crosses the
//!   simulated network, so it arrives late, or is held by a partition.
//!
//! Every successful write is logged (epoch, leader named in the state, session that wrote it)
//! for the one-leader-per-epoch check.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use corecache_core::cluster::{ClusterState, CoordCommand, CoordEvent, Member, StateStore};
use corecache_net::coord::Coordinator;
use corecache_net::zk::{state_from_json, state_to_json};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use turmoil::net::tcp::OwnedWriteHalf;
use turmoil::net::{TcpListener, TcpStream};

/// The fake's host name and port in the simulation.
pub const HOST: &str = "zk";
pub const PORT: u16 = 2181;
const MAX_FRAME: usize = 1 << 20;

#[derive(Serialize, Deserialize, Debug)]
enum ToServer {
    Connect {
        session: Option<u64>,
        member: MemberInfo,
        timeout_ms: u64,
    },
    Ping,
    Write {
        state: String,
        expected: i64,
    },
}

#[derive(Serialize, Deserialize, Debug)]
enum ToClient {
    Session { id: u64 },
    Expired,
    Pong,
    Members(Vec<MemberInfo>),
    State { state: Option<String>, stamp: i64 },
    Elected,
    WriteDone { ok: bool, message: String },
}

async fn write_frame<W: AsyncWriteExt + Unpin, T: Serialize>(w: &mut W, msg: &T) -> bool {
    let Ok(body) = serde_json::to_vec(msg) else {
        return false;
    };
    let mut buf = (body.len() as u32).to_be_bytes().to_vec();
    buf.extend_from_slice(&body);
    w.write_all(&buf).await.is_ok()
}

async fn read_frame<R: AsyncReadExt + Unpin, T: for<'a> Deserialize<'a>>(r: &mut R) -> Option<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.ok()?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return None;
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.ok()?;
    serde_json::from_slice(&body).ok()
}

/// One successful state write, as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StateWrite {
    pub epoch: u64,
    pub version: u64,
    /// The leader the state names.
    pub leader: String,
    /// The member whose session wrote it.
    pub writer: String,
    /// The partition map it holds.
    pub owners: Vec<String>,
    /// Each partition's backups (empty without replicas).
    pub backups: Vec<Vec<String>>,
    /// Each partition's learners and eligible copies.
    pub learners: Vec<Vec<String>>,
    pub eligible: Vec<Vec<String>>,
    /// When it was written (simulated milliseconds since the start).
    pub at_ms: u64,
}

/// What the server did, for the checkers and the fault counters. Lives outside the
/// simulation, so it survives the run.
#[derive(Default, Debug)]
pub struct ZkLog {
    pub writes: Vec<StateWrite>,
    pub sessions_expired: u64,
    pub sessions_opened: u64,
}

struct Session {
    member: MemberInfo,
    seq: u64,
    timeout: Duration,
    last_heard: tokio::time::Instant,
    /// The connection the session is attached to (id, outbox).
    conn: Option<(u64, mpsc::UnboundedSender<ToClient>)>,
    /// Whether this session was last told it is elected.
    elected: bool,
}

#[derive(Default)]
struct Server {
    next_session: u64,
    next_seq: u64,
    next_conn: u64,
    sessions: BTreeMap<u64, Session>,
    /// The cluster state as JSON, with ZooKeeper's version semantics.
    state: StateStore<String>,
}

impl Server {
    fn members(&self) -> Vec<MemberInfo> {
        // One entry per node id: a newer session's entry replaces an older one's.
        let mut by_id: BTreeMap<String, (u64, MemberInfo)> = BTreeMap::new();
        for s in self.sessions.values() {
            let e = by_id
                .entry(s.member.0.clone())
                .or_insert((s.seq, s.member.clone()));
            if s.seq >= e.0 {
                *e = (s.seq, s.member.clone());
            }
        }
        by_id.into_values().map(|(_, m)| m).collect()
    }

    fn send(&self, id: u64, msg: ToClient) {
        if let Some((_, tx)) = self.sessions.get(&id).and_then(|s| s.conn.as_ref()) {
            let _ = tx.send(msg);
        }
    }

    fn broadcast_members(&self) {
        let ms = self.members();
        for id in self.sessions.keys() {
            self.send(*id, ToClient::Members(ms.clone()));
        }
    }

    fn broadcast_state(&self) {
        for id in self.sessions.keys() {
            self.send(
                *id,
                ToClient::State {
                    state: self.state.value().cloned(),
                    stamp: self.state.stamp(),
                },
            );
        }
    }

    /// Tells the lowest live candidacy it is elected, once per time it becomes the lowest (and
    /// again on each reconnection, as the recipe re-checks then).
    fn elect(&mut self) {
        let lowest = self
            .sessions
            .iter()
            .min_by_key(|(_, s)| s.seq)
            .map(|(id, _)| *id);
        if let Some(id) = lowest {
            let s = self
                .sessions
                .get_mut(&id)
                .expect("the lowest session exists");
            if !s.elected && s.conn.is_some() {
                s.elected = true;
                self.send(id, ToClient::Elected);
            }
        }
    }

    fn expire(&mut self, now: tokio::time::Instant, log: &Mutex<ZkLog>) {
        let dead: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| now.duration_since(s.last_heard) > s.timeout)
            .map(|(id, _)| *id)
            .collect();
        if dead.is_empty() {
            return;
        }
        for id in dead {
            // Dropping the outbox ends the connection task, which closes the socket.
            self.sessions.remove(&id);
            log.lock().sessions_expired += 1;
        }
        self.broadcast_members();
        self.elect();
    }
}

/// The fake's server: the software of the `zk` host.
pub async fn serve(log: Arc<Mutex<ZkLog>>) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(("0.0.0.0", PORT)).await?;
    let server = Arc::new(Mutex::new(Server::default()));
    {
        let server = server.clone();
        let log = log.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                server.lock().expire(tokio::time::Instant::now(), &log);
            }
        });
    }
    loop {
        let (stream, _) = listener.accept().await?;
        let server = server.clone();
        let log = log.clone();
        tokio::spawn(async move { connection(stream, server, log).await });
    }
}

/// The server's side of one connection: the connection half of the session protocol. What it
/// does to the server's state is in the [`Server`] methods below, each under the server lock.
async fn connection(stream: TcpStream, server: Arc<Mutex<Server>>, log: Arc<Mutex<ZkLog>>) {
    let (mut rd, mut wr) = stream.into_split();
    let Some(ToServer::Connect {
        session,
        member,
        timeout_ms,
    }) = read_frame(&mut rd).await
    else {
        return;
    };
    let (tx, mut outbox) = mpsc::unbounded_channel::<ToClient>();
    let attached = server.lock().attach(session, member, timeout_ms, &tx, &log);
    let Some((id, conn_id)) = attached else {
        // The session is gone: say so, and close.
        let _ = write_frame(&mut wr, &ToClient::Expired).await;
        return;
    };
    drop(tx);
    let writer = tokio::spawn(async move {
        while let Some(m) = outbox.recv().await {
            if !write_frame(&mut wr, &m).await {
                break;
            }
        }
    });
    while let Some(msg) = read_frame::<_, ToServer>(&mut rd).await {
        if !server.lock().handle(id, conn_id, msg, &log) {
            break;
        }
    }
    // Detach (the session itself lives on until it expires).
    server.lock().detach(id, conn_id);
    writer.abort();
}

impl Server {
    /// Attaches a new connection (outbox `tx`) to the session it names, or to a new session if
    /// it names none, and sends it what a client learns on connecting. `None`: the session it
    /// names has expired. Else (session id, connection id).
    fn attach(
        &mut self,
        session: Option<u64>,
        member: MemberInfo,
        timeout_ms: u64,
        tx: &mpsc::UnboundedSender<ToClient>,
        log: &Mutex<ZkLog>,
    ) -> Option<(u64, u64)> {
        let conn_id = self.next_conn;
        self.next_conn += 1;
        let now = tokio::time::Instant::now();
        let id = match session {
            Some(id) => match self.sessions.get_mut(&id) {
                Some(sess) => {
                    sess.conn = Some((conn_id, tx.clone()));
                    sess.last_heard = now;
                    sess.elected = false;
                    Some(id)
                }
                None => None,
            },
            None => Some(self.open_session(member, timeout_ms, now, (conn_id, tx.clone()), log)),
        };
        if let Some(id) = id {
            self.send(id, ToClient::Session { id });
            self.broadcast_members();
            self.send(
                id,
                ToClient::State {
                    state: self.state.value().cloned(),
                    stamp: self.state.stamp(),
                },
            );
            self.elect();
        }
        id.map(|id| (id, conn_id))
    }

    /// A new session, attached to `conn`, with the next candidacy sequence number (so it
    /// waits behind every older live session in the election). Returns its id.
    fn open_session(
        &mut self,
        member: MemberInfo,
        timeout_ms: u64,
        now: tokio::time::Instant,
        conn: (u64, mpsc::UnboundedSender<ToClient>),
        log: &Mutex<ZkLog>,
    ) -> u64 {
        let id = self.next_session;
        self.next_session += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.sessions.insert(
            id,
            Session {
                member,
                seq,
                timeout: Duration::from_millis(timeout_ms),
                last_heard: now,
                conn: Some(conn),
                elected: false,
            },
        );
        log.lock().sessions_opened += 1;
        id
    }

    /// One message from connection `conn_id` of session `id`. `false`: stop reading it (the
    /// session expired or moved to a newer connection, or the client said hello again).
    fn handle(&mut self, id: u64, conn_id: u64, msg: ToServer, log: &Mutex<ZkLog>) -> bool {
        let attached = self
            .sessions
            .get(&id)
            .and_then(|x| x.conn.as_ref())
            .is_some_and(|(c, _)| *c == conn_id);
        if !attached {
            return false; // expired, or replaced by a newer connection of the same session
        }
        if let Some(sess) = self.sessions.get_mut(&id) {
            sess.last_heard = tokio::time::Instant::now();
        }
        match msg {
            ToServer::Ping => self.send(id, ToClient::Pong),
            ToServer::Connect { .. } => return false,
            ToServer::Write { state, expected } => self.write_state(id, state, expected, log),
        }
        true
    }

    /// A conditional write of the state by session `id`: logged for the one-leader-per-epoch
    /// check if it succeeds, answered, and then pushed to every session.
    fn write_state(&mut self, id: u64, state: String, expected: i64, log: &Mutex<ZkLog>) {
        let parsed = state_from_json(state.as_bytes());
        let ok = parsed.is_ok() && self.state.write(state, expected);
        if ok {
            if let Ok(st) = parsed {
                let writer = self
                    .sessions
                    .get(&id)
                    .map(|x| x.member.0.clone())
                    .unwrap_or_default();
                log.lock().writes.push(StateWrite {
                    epoch: st.epoch,
                    version: st.version,
                    leader: st.leader,
                    writer,
                    backups: st.replicas.iter().map(|r| r.backups.clone()).collect(),
                    learners: st.replicas.iter().map(|r| r.learners.clone()).collect(),
                    eligible: st.replicas.iter().map(|r| r.eligible.clone()).collect(),
                    at_ms: turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64),
                    owners: st.owners,
                });
            }
        }
        let message = StateStore::<String>::write_message(ok).to_string();
        self.send(id, ToClient::WriteDone { ok, message });
        if ok {
            self.broadcast_state();
        }
    }

    /// Detaches connection `conn_id` from session `id` if it is still the session's one (a
    /// newer connection may have taken over); the session lives on until it expires.
    fn detach(&mut self, id: u64, conn_id: u64) {
        if let Some(sess) = self.sessions.get_mut(&id) {
            if sess.conn.as_ref().is_some_and(|(c, _)| *c == conn_id) {
                sess.conn = None;
            }
        }
    }
}

/// The node's side: a [`Coordinator`] over the fake.
pub struct FakeCoordinator {
    pub session_timeout: Duration,
}

impl Coordinator for FakeCoordinator {
    fn start(
        self: Box<Self>,
        me: Member,
        events: mpsc::UnboundedSender<CoordEvent>,
    ) -> mpsc::UnboundedSender<CoordCommand> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(client(me, self.session_timeout, events, rx));
        tx
    }
}

/// A member entry as the fake keeps it: id, HTTP and peer addresses, disk identity.
pub(crate) type MemberInfo = (String, String, String, u64);

fn to_member(m: MemberInfo) -> Member {
    Member {
        id: m.0,
        http: m.1,
        peer: m.2,
        disk: m.3,
    }
}

/// The node's session with the fake: connects (again and again), says hello, then serves the
/// connection until it is lost. Each step is a helper below; this is the reconnect loop.
async fn client(
    me: Member,
    timeout: Duration,
    events: mpsc::UnboundedSender<CoordEvent>,
    mut commands: mpsc::UnboundedReceiver<CoordCommand>,
) {
    let mut session: Option<u64> = None;
    let member = (me.id.clone(), me.http.clone(), me.peer.clone(), me.disk);
    let silence = timeout * 2 / 3;
    loop {
        if events.is_closed() {
            return;
        }
        // Connect (or reconnect to the same session).
        let Some(stream) = dial(&mut commands, &events).await else {
            continue;
        };
        let (mut rd, mut wr) = stream.into_split();
        let hello = ToServer::Connect {
            session,
            member: member.clone(),
            timeout_ms: timeout.as_millis() as u64,
        };
        if !write_frame(&mut wr, &hello).await {
            continue;
        }
        let (in_tx, mut inbox) = mpsc::unbounded_channel::<ToClient>();
        let reader = tokio::spawn(async move {
            while let Some(m) = read_frame::<_, ToClient>(&mut rd).await {
                if in_tx.send(m).is_err() {
                    return;
                }
            }
        });
        if !handshake(
            &mut inbox,
            &reader,
            &mut session,
            silence,
            &mut commands,
            &events,
        )
        .await
        {
            continue;
        }
        let Some((lost, in_flight)) = converse(
            &mut wr,
            &mut inbox,
            &mut commands,
            &events,
            timeout,
            silence,
        )
        .await
        else {
            return;
        };
        reader.abort();
        if lost {
            report_lost(&events, in_flight);
        }
    }
}

/// Connects to the fake within a second. On failure, answers the commands waiting (no write
/// can be made) and backs off before the caller tries again.
async fn dial(
    commands: &mut mpsc::UnboundedReceiver<CoordCommand>,
    events: &mpsc::UnboundedSender<CoordEvent>,
) -> Option<TcpStream> {
    match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect((HOST, PORT))).await {
        Ok(Ok(s)) => Some(s),
        _ => {
            fail_pending(commands, events);
            tokio::time::sleep(Duration::from_millis(200)).await;
            None
        }
    }
}

/// Waits (up to `silence`) for the server's answer to the hello. `true`: a session, told to the
/// node as `Connected`. `false` (the caller starts over): the session expired (told to the
/// node; the next hello opens a new one), or no answer came (after a back-off, same session).
async fn handshake(
    inbox: &mut mpsc::UnboundedReceiver<ToClient>,
    reader: &tokio::task::JoinHandle<()>,
    session: &mut Option<u64>,
    silence: Duration,
    commands: &mut mpsc::UnboundedReceiver<CoordCommand>,
    events: &mpsc::UnboundedSender<CoordEvent>,
) -> bool {
    match tokio::time::timeout(silence, inbox.recv()).await {
        Ok(Some(ToClient::Session { id })) => {
            *session = Some(id);
            let _ = events.send(CoordEvent::Connected);
            true
        }
        Ok(Some(ToClient::Expired)) => {
            reader.abort();
            *session = None;
            let _ = events.send(CoordEvent::Expired);
            false
        }
        _ => {
            // Could not tell: try again (same session).
            reader.abort();
            fail_pending(commands, events);
            tokio::time::sleep(Duration::from_millis(100)).await;
            false
        }
    }
}

/// Serves an established connection: the server's pushes go to the node, the node's writes to
/// the server, and a ping every third of the timeout. `None`: the node is gone (its event or
/// command channel closed), so the client ends. Else whether the connection was lost, and how
/// many writes it left unanswered.
async fn converse(
    wr: &mut OwnedWriteHalf,
    inbox: &mut mpsc::UnboundedReceiver<ToClient>,
    commands: &mut mpsc::UnboundedReceiver<CoordCommand>,
    events: &mpsc::UnboundedSender<CoordEvent>,
    timeout: Duration,
    silence: Duration,
) -> Option<(bool, usize)> {
    let mut in_flight = 0usize;
    let mut last_heard = tokio::time::Instant::now();
    let mut ping = tokio::time::interval(timeout / 3);
    let lost = loop {
        tokio::select! {
            m = inbox.recv() => {
                let Some(m) = m else { break true };
                last_heard = tokio::time::Instant::now();
                let ev = match m {
                    ToClient::Members(ms) => {
                        Some(CoordEvent::Members(ms.into_iter().map(to_member).collect()))
                    }
                    ToClient::State { state, stamp } => {
                        let state: Option<ClusterState> =
                            state.and_then(|s| state_from_json(s.as_bytes()).ok());
                        Some(CoordEvent::State { state, stamp })
                    }
                    ToClient::Elected => Some(CoordEvent::Elected),
                    ToClient::WriteDone { ok, message } => {
                        in_flight = in_flight.saturating_sub(1);
                        Some(CoordEvent::WriteDone { ok, message })
                    }
                    ToClient::Pong | ToClient::Session { .. } => None,
                    ToClient::Expired => break true,
                };
                if let Some(ev) = ev {
                    if events.send(ev).is_err() {
                        return None;
                    }
                }
            }
            c = commands.recv() => {
                let Some(CoordCommand::WriteState { state, expected }) = c else { return None };
                let body = String::from_utf8_lossy(&state_to_json(&state)).into_owned();
                in_flight += 1;
                if !write_frame(wr, &ToServer::Write { state: body, expected }).await {
                    break true;
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > silence {
                    break true;
                }
                if !write_frame(wr, &ToServer::Ping).await {
                    break true;
                }
            }
        }
    };
    Some((lost, in_flight))
}

/// After a lost connection: a write whose answer never came is a connection loss to the
/// caller (it may or may not have happened), and then the node is told `Disconnected`.
fn report_lost(events: &mpsc::UnboundedSender<CoordEvent>, in_flight: usize) {
    for _ in 0..in_flight {
        let _ = events.send(CoordEvent::WriteDone {
            ok: false,
            message: "connection lost".into(),
        });
    }
    let _ = events.send(CoordEvent::Disconnected);
}

/// Answers commands that arrive while there is no connection: a write cannot be made.
fn fail_pending(
    commands: &mut mpsc::UnboundedReceiver<CoordCommand>,
    events: &mpsc::UnboundedSender<CoordEvent>,
) {
    while let Ok(CoordCommand::WriteState { .. }) = commands.try_recv() {
        let _ = events.send(CoordEvent::WriteDone {
            ok: false,
            message: "not connected".into(),
        });
    }
}
