//! The HTTP/1.1 server loop: the axum router on hyper connections, with the limits that
//! `axum::serve` leaves unset.
//!
//! - **Header read timeout** ([`HEADER_READ_TIMEOUT`]): a connection that does not deliver a
//!   complete request head within it — a slowloris client trickling bytes, or an idle
//!   keep-alive connection — is closed. (`axum::serve` gives hyper no timer, so hyper's own
//!   timeout never runs there and such a client holds its connection forever.)
//! - **Header size** ([`MAX_HEADER_BYTES`]): a larger request line plus headers is answered
//!   `431` (hyper's default cap is only its ~400 KiB read buffer). More than 100 headers is `431`
//!   too (hyper's default).
//! - **Connection limit** ([`MAX_CONNECTIONS`]): past it the loop stops accepting until a
//!   connection closes (new clients wait in the listen backlog), so a flood of connections
//!   cannot exhaust file descriptors or memory.
//!
//! Graceful shutdown is as with `axum::serve`: stop accepting, let every connection finish the
//! request it is serving (idle ones close at once), and return when all have closed.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// How long a client may take to send a whole request head (line and headers).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line and headers) accepted; a key of the largest size,
/// percent-encoded, takes 24 KiB of it.
pub const MAX_HEADER_BYTES: usize = 64 << 10;
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 4096;

/// Accept errors that concern one connection only (the listener itself is fine).
fn per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A source of connections: TCP here, turmoil's listener in the simulation.
pub trait Listen: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&mut self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Listen for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&mut self) -> io::Result<Self::Io> {
        let (stream, _peer) = TcpListener::accept(self).await?;
        Ok(stream)
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains connections gracefully.
pub async fn serve<L: Listen>(
    mut listener: L,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Every connection task holds a receiver of `closed`: when all are dropped, all are done.
    let (closed_tx, closed_rx) = watch::channel(());
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break, // never closed
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok(stream) => stream,
                Err(e) if per_connection(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed; pausing");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let mut stop = stop_rx.clone();
        let closed = closed_rx.clone();
        tokio::spawn(async move {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_header_size(MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let stopping = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            let finished = tokio::select! {
                r = conn.as_mut() => Some(r),
                () = stopping => None,
            };
            let r = match finished {
                Some(r) => r,
                None => {
                    // Finish the request in progress (an idle connection closes at once).
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
            drop(closed);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(closed_rx);
    closed_tx.closed().await;
    Ok(())
}
