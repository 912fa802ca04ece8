//! The Redis protocol front-end (RESP2, and RESP3 after `HELLO 3`): a TCP listener next to the
//! HTTP API whose commands drive the same node through [`NodeHandle::call`].
//!
//! Each connection reads into one buffer, parses every whole command in it ([`parse`]), runs
//! them one after another (so replies leave in order and a connection has one request in flight
//! at a time) and writes all their replies in one write before reading again. A protocol error
//! is answered `-ERR Protocol error: ...` and the connection is closed, as Redis does.

pub mod cmd;
pub mod glob;
pub mod parse;
pub mod reply;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::driver::NodeHandle;
use crate::server::Listen;
use parse::{Limits, Parser};
use reply::Reply;

/// The Redis version we report (HELLO, INFO): clients check it for features.
pub const REDIS_VERSION: &str = "7.2.0";

/// Most connections at once; more are answered with an error and closed.
const MAX_CONNECTIONS: u64 = 10_000;
/// Replies are written once this many bytes are waiting, even mid-pipeline.
const WRITE_BATCH: usize = 64 << 10;
/// How much a read asks for.
const READ_CHUNK: usize = 16 << 10;
/// Pipelined writes one connection may have waiting at the node at once.
const MAX_IN_FLIGHT: usize = 1024;

#[derive(Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub open: AtomicU64,
    pub rejected: AtomicU64,
    pub commands: AtomicU64,
}

/// What every connection shares.
pub struct RespState {
    pub node: Arc<OnceLock<NodeHandle>>,
    pub limits: Limits,
    pub flushdb: bool,
    pub sync: String,
    pub port: u16,
    pub started: Instant,
    pub stats: Stats,
    next_id: AtomicU64,
    pub cursors: parking_lot::Mutex<Cursors>,
}

/// SCAN cursors. Redis clients treat a cursor as a decimal number (redis-cli and redis-py parse
/// it), while a position in CoreCache's ordered key space is a key; so the node keeps the key
/// under a number. Shared by every connection (clients scan through a pool), bounded by count
/// and bytes, oldest dropped first; a dropped or unknown cursor is `invalid cursor`.
#[derive(Default)]
pub struct Cursors {
    next: u64,
    bytes: usize,
    map: std::collections::BTreeMap<u64, Vec<u8>>,
}

const MAX_CURSORS: usize = 10_000;
const MAX_CURSOR_BYTES: usize = 16 << 20;

impl Cursors {
    /// A new cursor for the position after `key`.
    pub fn put(&mut self, key: Vec<u8>) -> u64 {
        self.next += 1;
        self.bytes += key.len();
        self.map.insert(self.next, key);
        while self.map.len() > MAX_CURSORS || self.bytes > MAX_CURSOR_BYTES {
            match self.map.pop_first() {
                Some((_, k)) => self.bytes -= k.len(),
                None => break,
            }
        }
        self.next
    }

    /// The position a cursor stands for (it stays valid: a client may repeat a SCAN).
    pub fn get(&self, cursor: u64) -> Option<Vec<u8>> {
        self.map.get(&cursor).cloned()
    }
}

impl RespState {
    pub fn new(
        node: Arc<OnceLock<NodeHandle>>,
        limits: Limits,
        flushdb: bool,
        sync: String,
        port: u16,
    ) -> RespState {
        RespState {
            node,
            limits,
            flushdb,
            sync,
            port,
            started: Instant::now(),
            stats: Stats::default(),
            next_id: AtomicU64::new(1),
            cursors: parking_lot::Mutex::new(Cursors::default()),
        }
    }
}

/// The parser limits for a node's key and value limits: a bulk may be a little over the value
/// limit (so the node, not the parser, answers "too large" for a value just over it).
pub fn limits_for(max_key_bytes: usize, max_value_bytes: usize, max_body_bytes: usize) -> Limits {
    Limits {
        max_bulk: max_value_bytes.max(max_key_bytes) + (64 << 10),
        max_args: 1 << 20,
        max_command_bytes: (max_body_bytes.max(max_value_bytes) + (1 << 20)) * 2,
        max_inline: 64 << 10,
    }
}

/// One client connection's state.
pub struct Conn {
    pub id: u64,
    pub name: Option<Vec<u8>>,
    /// 2 or 3 (after `HELLO 3`).
    pub proto: u8,
}

/// Accepts connections until `shutdown` turns true, then waits for open connections to finish
/// the command they are running.
pub async fn serve<L: Listen>(
    mut listener: L,
    st: Arc<RespState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    let conn_stop = shutdown.clone();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok(stream) => {
                    st.stats.connections.fetch_add(1, Ordering::Relaxed);
                    let st = st.clone();
                    let stop = conn_stop.clone();
                    conns.spawn(async move {
                        let open = st.stats.open.fetch_add(1, Ordering::Relaxed) + 1;
                        if open > MAX_CONNECTIONS {
                            st.stats.rejected.fetch_add(1, Ordering::Relaxed);
                            let mut stream = stream;
                            let _ = stream.write_all(b"-ERR max number of clients reached\r\n").await;
                        } else {
                            connection(stream, &st, stop).await;
                        }
                        st.stats.open.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "resp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// A TCP listener whose connections send small writes at once (a connection writes its
/// replies whole, one write per batch, and a client waits for them).
pub struct NoDelay(pub tokio::net::TcpListener);

impl Listen for NoDelay {
    type Io = tokio::net::TcpStream;
    async fn accept(&mut self) -> std::io::Result<Self::Io> {
        let (stream, _peer) = self.0.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn write_out<S: AsyncWrite + Unpin>(
    stream: &mut S,
    out: &mut Vec<u8>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    if out.is_empty() {
        return true;
    }
    let ok = tokio::select! {
        r = stream.write_all(out) => r.is_ok(),
        // A client that stopped reading does not hold up shutdown.
        _ = async {
            stopped(stop).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        } => false,
    };
    out.clear();
    ok
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    st: &RespState,
    mut stop: watch::Receiver<bool>,
) {
    let mut conn = Conn {
        id: st.next_id.fetch_add(1, Ordering::Relaxed),
        name: None,
        proto: 2,
    };
    let mut parser = Parser::new(st.limits);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut sets: Vec<Vec<Vec<u8>>> = Vec::new();
    loop {
        // Run every whole command already here, in order. Consecutive plain SETs and INCRs go
        // to the node together (at most MAX_IN_FLIGHT), answered in order, before anything
        // after them.
        let mut at = 0;
        loop {
            match parser.parse(&buf[at..]) {
                Ok((used, cmd)) => {
                    at += used;
                    let Some(args) = cmd else { break };
                    if cmd::pipelined_write(&args) {
                        sets.push(args);
                        if sets.len() >= MAX_IN_FLIGHT {
                            for r in cmd::set_run(st, std::mem::take(&mut sets)).await {
                                r.encode(conn.proto, &mut out);
                            }
                        }
                        continue;
                    }
                    for r in cmd::set_run(st, std::mem::take(&mut sets)).await {
                        r.encode(conn.proto, &mut out);
                    }
                    let (reply, after) = cmd::exec(st, &mut conn, args).await;
                    reply.encode(conn.proto, &mut out);
                    if matches!(after, cmd::After::Close) {
                        let _ = write_out(&mut stream, &mut out, &mut stop).await;
                        return;
                    }
                    if out.len() >= WRITE_BATCH
                        && !write_out(&mut stream, &mut out, &mut stop).await
                    {
                        return;
                    }
                }
                Err(e) => {
                    for r in cmd::set_run(st, std::mem::take(&mut sets)).await {
                        r.encode(conn.proto, &mut out);
                    }
                    Reply::err(e.to_string()).encode(conn.proto, &mut out);
                    let _ = write_out(&mut stream, &mut out, &mut stop).await;
                    return;
                }
            }
        }
        // The SETs at the end of what arrived: answered before reading more.
        for r in cmd::set_run(st, std::mem::take(&mut sets)).await {
            r.encode(conn.proto, &mut out);
        }
        buf.drain(..at);
        // Do not let the capacity left by one large value linger on an idle connection.
        if buf.is_empty() && buf.capacity() > 4 * READ_CHUNK {
            buf.shrink_to(READ_CHUNK);
        }
        if !write_out(&mut stream, &mut out, &mut stop).await {
            return;
        }
        if *stop.borrow() {
            return;
        }
        // The buffer holds at most one unfinished element (bounded by the parser's limits)
        // plus one read.
        buf.reserve(READ_CHUNK);
        tokio::select! {
            r = stream.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            _ = stopped(&mut stop) => return,
        }
    }
}

#[cfg(test)]
mod cursor_tests {
    use super::*;

    #[test]
    fn cursors_are_numbers_that_stay_valid_and_the_oldest_go_first() {
        let mut c = Cursors::default();
        let first = c.put(b"a".to_vec());
        assert!(first > 0, "0 means the end of a scan");
        assert_eq!(c.get(first), Some(b"a".to_vec()));
        assert_eq!(c.get(first), Some(b"a".to_vec()), "a repeated SCAN works");
        for i in 0..MAX_CURSORS {
            c.put(format!("k{i}").into_bytes());
        }
        assert_eq!(c.get(first), None, "the oldest went first");
        assert_eq!(c.map.len(), MAX_CURSORS);
        // Bytes are bounded too.
        let mut c = Cursors::default();
        let big = c.put(vec![0; MAX_CURSOR_BYTES / 2]);
        c.put(vec![1; MAX_CURSOR_BYTES / 2]);
        c.put(vec![2; 10]);
        assert_eq!(c.get(big), None);
        assert!(c.bytes <= MAX_CURSOR_BYTES);
    }
}
