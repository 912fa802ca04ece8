//! The peer transport: one persistent framed connection from this node to each peer it talks to,
//! carrying `corecache_core::peer` frames.
//!
//! Messages to a peer go out over this node's own connection to it; the peer's answers come back
//! over the peer's connection to this node. Each side thus writes on one connection and reads on
//! the other, and neither needs to match requests to sockets. The reading and writing halves are
//! generic over the stream type, so the simulation runs the same code over turmoil's network.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use corecache_core::proto::peer::{
    decode_frame, encode_frame, PeerMessage, MAX_FRAME, PROTOCOL_VERSION,
};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Messages queued for one peer before sends are refused (the peer is too slow or gone).
const QUEUE: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// An idle outbound connection sends a `Hello` this often, so the reading side can tell a live
/// but quiet peer from a connection that went silent (a partition that swallows packets
/// without a reset, a peer frozen by SIGSTOP).
pub const KEEPALIVE: Duration = Duration::from_secs(1);
/// A reading side that hears nothing for this long drops the connection; the writer notices
/// the close, reports the peer `Down` and reconnects on the next send.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// A byte stream the peer transport can run over (TCP, or turmoil's in the simulation).
pub trait PeerStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> PeerStream for T {}

/// A connection in the making.
pub type Connecting = Pin<Box<dyn Future<Output = std::io::Result<Box<dyn PeerStream>>> + Send>>;

/// Opens outbound peer connections.
pub trait Connector: Send + Sync + 'static {
    fn connect(&self, addr: String) -> Connecting;
}

/// The real network.
pub struct TcpConnector;

impl Connector for TcpConnector {
    fn connect(&self, addr: String) -> Connecting {
        Box::pin(async move {
            let stream = TcpStream::connect(&addr).await?;
            let _ = stream.set_nodelay(true);
            Ok(Box::new(stream) as Box<dyn PeerStream>)
        })
    }
}

/// What the transport reports to the node's driver.
#[derive(Debug)]
pub enum PeerEvent {
    Message {
        from: String,
        message: PeerMessage,
    },
    /// The connection to `peer` failed; messages queued for it were dropped.
    Down {
        peer: String,
    },
}

/// Reads frames from `stream` until it ends, breaks, or stays silent for [`IDLE_TIMEOUT`]. The
/// first must be `Hello` naming the same cluster; later ones are keepalives; every other frame
/// is reported as from that peer.
pub async fn read_frames<S: AsyncRead + Unpin>(
    mut stream: S,
    cluster: &str,
    events: &mpsc::Sender<PeerEvent>,
) -> Result<(), String> {
    let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut from: Option<String> = None;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        loop {
            match decode_frame(&buf).map_err(|e| e.to_string())? {
                None => break,
                Some((message, used)) => {
                    buf.drain(..used);
                    match (&from, message) {
                        (
                            None,
                            PeerMessage::Hello {
                                version,
                                from: f,
                                cluster: c,
                            },
                        ) => {
                            if version != PROTOCOL_VERSION {
                                return Err(format!(
                                    "peer {f} speaks peer protocol version {version}, this node \
                                     speaks version {PROTOCOL_VERSION}; refused"
                                ));
                            }
                            if c != cluster {
                                return Err(format!(
                                    "peer {f} is in cluster `{c}`, not `{cluster}`"
                                ));
                            }
                            from = Some(f);
                        }
                        (None, _) => return Err("the first frame was not Hello".into()),
                        (Some(_), PeerMessage::Hello { .. }) => {}
                        (Some(f), message) => {
                            let ev = PeerEvent::Message {
                                from: f.clone(),
                                message,
                            };
                            if events.send(ev).await.is_err() {
                                return Ok(());
                            }
                        }
                    }
                }
            }
        }
        if buf.len() > MAX_FRAME + 8 {
            return Err("frame larger than the limit".into());
        }
        let n = tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut chunk))
            .await
            .map_err(|_| format!("no frame for {IDLE_TIMEOUT:?}"))?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Writes `Hello`, then every queued message, batching whatever is queued into one write, and
/// `Hello` again as a keepalive whenever nothing was queued for [`KEEPALIVE`].
pub async fn write_frames<S: AsyncWrite + Unpin>(
    mut stream: S,
    hello: PeerMessage,
    rx: &mut mpsc::Receiver<PeerMessage>,
) -> Result<(), String> {
    let mut buf = Vec::with_capacity(64 << 10);
    encode_frame(&hello, &mut buf);
    stream
        .write_all(&buf)
        .await
        .map_err(|e| format!("write: {e}"))?;
    loop {
        let first = match tokio::time::timeout(KEEPALIVE, rx.recv()).await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(_) => hello.clone(),
        };
        buf.clear();
        encode_frame(&first, &mut buf);
        while buf.len() < (1 << 20) {
            match rx.try_recv() {
                Ok(m) => encode_frame(&m, &mut buf),
                Err(_) => break,
            }
        }
        stream
            .write_all(&buf)
            .await
            .map_err(|e| format!("write: {e}"))?;
    }
    Ok(())
}

/// Runs one outbound connection: writes queued messages, and watches the other direction,
/// on which the peer never writes, so that a peer that closed or crashed is noticed at once
/// rather than on the next write (which the kernel would accept into a dead socket).
pub async fn run_outbound<S: AsyncRead + AsyncWrite>(
    stream: S,
    hello: PeerMessage,
    rx: &mut mpsc::Receiver<PeerMessage>,
) -> Result<(), String> {
    let (mut rd, wr) = tokio::io::split(stream);
    let closed = async move {
        let mut b = [0u8; 64];
        loop {
            match rd.read(&mut b).await {
                Ok(0) => return "the peer closed the connection".to_string(),
                Ok(_) => {}
                Err(e) => return format!("read: {e}"),
            }
        }
    };
    tokio::select! {
        r = write_frames(wr, hello, rx) => r,
        why = closed => Err(why),
    }
}

/// This node's side of the peer network over TCP.
#[derive(Clone)]
pub struct PeerNet {
    me: String,
    cluster: String,
    events: mpsc::Sender<PeerEvent>,
    /// Peer id → its peer address, from the coordinator's member list.
    addrs: Arc<Mutex<BTreeMap<String, String>>>,
    /// Peer id → the queue of its open (or opening) connection.
    conns: Arc<Mutex<BTreeMap<String, mpsc::Sender<PeerMessage>>>>,
    connector: Arc<dyn Connector>,
}

impl PeerNet {
    pub fn new(me: String, cluster: String, events: mpsc::Sender<PeerEvent>) -> PeerNet {
        PeerNet::with_connector(me, cluster, events, Arc::new(TcpConnector))
    }

    /// A transport whose outbound connections come from `connector`.
    pub fn with_connector(
        me: String,
        cluster: String,
        events: mpsc::Sender<PeerEvent>,
        connector: Arc<dyn Connector>,
    ) -> PeerNet {
        PeerNet {
            me,
            cluster,
            events,
            addrs: Arc::default(),
            conns: Arc::default(),
            connector,
        }
    }

    /// Accepts peers' connections on `listener` until the task is dropped.
    pub fn serve(&self, listener: TcpListener) -> tokio::task::JoinHandle<()> {
        let cluster = self.cluster.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, addr)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let cluster = cluster.clone();
                let events = events.clone();
                tokio::spawn(async move {
                    if let Err(e) = read_frames(stream, &cluster, &events).await {
                        tracing::warn!(%addr, error = %e, "dropped a peer connection");
                    }
                });
            }
        })
    }

    /// Replaces the address book (called on every membership change). Connections to peers
    /// that left, or came back at another address, are dropped; the next send reconnects.
    /// (Dropping one that was waiting for its first address lost what was queued on it: at a
    /// cluster's start a forward then failed as "lost the connection".)
    pub fn set_addrs(&self, addrs: impl IntoIterator<Item = (String, String)>) {
        let new: BTreeMap<String, String> = addrs.into_iter().collect();
        // Lock order everywhere: `conns`, then `addrs`.
        let mut conns = self.conns.lock();
        let mut old = self.addrs.lock();
        // A connection made before its peer's address was known is still waiting for it
        // (a reply owed to a peer heard from first): it stays, and finds the address now.
        conns.retain(|id, _| {
            new.contains_key(id) && old.get(id).is_none_or(|o| Some(o) == new.get(id))
        });
        *old = new;
    }

    /// Queues `message` for `to`, connecting first if needed. A peer that cannot take it is
    /// reported `Down` (asynchronously, through the event channel).
    pub fn send(&self, to: String, message: PeerMessage) {
        let tx = {
            let mut conns = self.conns.lock();
            match conns.get(&to) {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let (tx, rx) = mpsc::channel(QUEUE);
                    conns.insert(to.clone(), tx.clone());
                    self.spawn_connection(to.clone(), rx);
                    tx
                }
            }
        };
        if tx.try_send(message).is_err() {
            self.conns.lock().remove(&to);
            let events = self.events.clone();
            tokio::spawn(async move {
                let _ = events.send(PeerEvent::Down { peer: to }).await;
            });
        }
    }

    fn spawn_connection(&self, to: String, mut rx: mpsc::Receiver<PeerMessage>) {
        let addrs = self.addrs.clone();
        let hello = PeerMessage::Hello {
            version: PROTOCOL_VERSION,
            from: self.me.clone(),
            cluster: self.cluster.clone(),
        };
        let events = self.events.clone();
        let conns = self.conns.clone();
        let connector = self.connector.clone();
        tokio::spawn(async move {
            let r = async {
                // A node can hear from a peer (and owe it a reply) before the coordinator's
                // member list has told it where that peer listens: wait for the address a
                // little rather than drop the reply.
                let mut waited = Duration::ZERO;
                let addr = loop {
                    if let Some(a) = addrs.lock().get(&to).cloned() {
                        break a;
                    }
                    if waited >= CONNECT_TIMEOUT {
                        return Err(format!("no address known for {to}"));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    waited += Duration::from_millis(20);
                };
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(addr.clone()))
                    .await
                    .map_err(|_| format!("connecting to {addr} timed out"))?
                    .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
                run_outbound(stream, hello, &mut rx).await
            }
            .await;
            if let Err(e) = r {
                tracing::warn!(peer = %to, error = %e, "peer connection failed");
            }
            rx.close();
            {
                let mut c = conns.lock();
                if c.get(&to).is_some_and(|tx| tx.is_closed()) {
                    c.remove(&to);
                }
            }
            let _ = events.send(PeerEvent::Down { peer: to }).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `read_frames` over `frames` and returns how it ended and what it reported.
    async fn read(frames: &[PeerMessage]) -> (Result<(), String>, Vec<PeerEvent>) {
        let mut bytes = Vec::new();
        for f in frames {
            encode_frame(f, &mut bytes);
        }
        let (tx, mut rx) = mpsc::channel(16);
        let r = read_frames(&bytes[..], "c", &tx).await;
        drop(tx);
        let mut got = Vec::new();
        while let Some(ev) = rx.recv().await {
            got.push(ev);
        }
        (r, got)
    }

    fn hello(version: u32, cluster: &str) -> PeerMessage {
        PeerMessage::Hello {
            version,
            from: "n9".into(),
            cluster: cluster.into(),
        }
    }

    /// A connection opened to a peer before its address was known survives the first address
    /// book that names it (and one to a peer whose address changed does not).
    #[tokio::test]
    async fn a_connection_waiting_for_its_address_survives_the_first_address_book() {
        let (tx, _rx) = mpsc::channel(16);
        let net = PeerNet::new("a".into(), "c".into(), tx);
        net.send("b".into(), PeerMessage::MoveReady { partition: 1 });
        assert!(net.conns.lock().contains_key("b"));
        net.set_addrs([("b".to_string(), "127.0.0.1:9".to_string())]);
        assert!(
            net.conns.lock().contains_key("b"),
            "dropped while waiting for its address"
        );
        net.set_addrs([("b".to_string(), "127.0.0.1:10".to_string())]);
        assert!(
            !net.conns.lock().contains_key("b"),
            "kept after its address changed"
        );
    }

    #[tokio::test]
    async fn a_peer_of_another_protocol_version_is_refused_naming_both() {
        let note = PeerMessage::MoveReady { partition: 3 };
        let (r, got) = read(&[hello(PROTOCOL_VERSION, "c"), note.clone()]).await;
        assert_eq!(r, Ok(()));
        assert!(
            matches!(got.as_slice(), [PeerEvent::Message { from, message }] if from == "n9" && *message == note),
            "{got:?}"
        );
        let (r, got) = read(&[hello(1, "c"), note.clone()]).await;
        let e = r.expect_err("refused");
        assert!(
            e.contains("version 1") && e.contains(&format!("version {PROTOCOL_VERSION}")),
            "{e}"
        );
        assert!(got.is_empty(), "nothing from a refused peer: {got:?}");
        let (r, _) = read(&[hello(PROTOCOL_VERSION, "other"), note]).await;
        assert!(r.expect_err("refused").contains("cluster"));
    }
}
