//! The admin server's accept loop: a connection limit, per-connection timeouts and request
//! limits, and the [access rules](super::access) in front of the router.
//!
//! - **Connection limit**: a semaphore of [`AdminConfig::max_connections`] permits. A connection
//!   accepted when none is free is sent `503` (if the socket takes it without waiting) and closed
//!   at once, so a flood of half-open connections cannot hold more than the limit.
//! - **Header timeout**: hyper's `header_read_timeout` (the head must arrive in time; slowloris
//!   clients get `408` and are dropped).
//! - **Idle timeout**: [`IdleIo`] fails a read or write that has waited, with no byte moved in
//!   either direction, longer than [`AdminConfig::idle_timeout`].
//! - **Per connection**: at most [`AdminConfig::max_requests_per_connection`] requests (the last
//!   response says `Connection: close`), a head of at most [`AdminConfig::max_header_bytes`]
//!   (`431`), at most 64 header fields.
//!
//! Stopping the server ([`AdminServer::abort`], or dropping the handle) drops every connection
//! it serves.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, Sleep};

use super::access::{Access, AdminConfig};
use super::{AdminState, router};
use crate::TelemetryError;

/// What every connection of one server shares.
struct Shared {
    app: Router,
    access: Access,
    header_timeout: Duration,
    idle_timeout: Duration,
    max_requests: u64,
    max_header_bytes: usize,
}

/// The running admin server's task (from [`serve_with`] or [`serve`](super::serve)).
///
/// Dropping the handle stops the server and every connection, as [`abort`](Self::abort) does;
/// [`detach`](Self::detach) lets it serve until the runtime shuts down.
#[derive(Debug)]
#[must_use = "dropping the handle stops the server; call `detach()` to keep it serving"]
pub struct AdminServer {
    task: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// Whether the server has stopped.
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the server and drops every connection it serves.
    pub fn abort(self) {}

    /// Lets the server run on after the handle is dropped (until the runtime shuts down).
    pub fn detach(mut self) {
        self.task = None;
    }

    /// Stops the server and waits until its task (and every connection) is gone.
    pub async fn shutdown(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Binds `addr` and serves the admin routes on the current tokio runtime with `config`'s access
/// rules and limits (see the [`access`](super::access) module docs); returns the bound address
/// (useful with port 0) and the server's handle (drop or abort it to stop the server and every
/// connection).
///
/// # Errors
/// [`TelemetryError::AdminTokenRequired`] when `addr` is not a loopback address and `config`
/// has no token; [`TelemetryError::Config`] for a setting out of range (both before binding);
/// [`TelemetryError::Io`] when the address cannot be bound.
pub async fn serve_with(
    addr: SocketAddr,
    state: AdminState,
    config: AdminConfig,
) -> Result<(SocketAddr, AdminServer), TelemetryError> {
    let mut access = config.compile(addr)?;
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    access.allow_bound(local);
    let shared = Arc::new(Shared {
        app: router(state),
        access,
        header_timeout: config.header_timeout,
        idle_timeout: config.idle_timeout,
        max_requests: config.max_requests_per_connection,
        max_header_bytes: config.max_header_bytes,
    });
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let task = tokio::spawn(accept_loop(listener, shared, permits));
    Ok((local, AdminServer { task: Some(task) }))
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, permits: Arc<Semaphore>) {
    let mut connections = JoinSet::new();
    let mut refused: u64 = 0;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => match Arc::clone(&permits).try_acquire_owned() {
                    Ok(permit) => {
                        connections.spawn(serve_connection(stream, Arc::clone(&shared), permit));
                    }
                    Err(_) => {
                        refuse(&stream);
                        refused += 1;
                        // One line per power of two: a flood is visible without flooding the log.
                        if refused.is_power_of_two() {
                            tracing::warn!(refused, "admin server: connection limit reached, refusing connections");
                        }
                    }
                },
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "admin server: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Tells a connection over the limit why it is closed, if the socket takes the bytes without
/// waiting, then closes it (when the stream is dropped).
fn refuse(stream: &TcpStream) {
    // No content-length: with `connection: close` the body runs to the end of the stream.
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nconnection: close\r\n\
        retry-after: 1\r\n\r\ntoo many admin connections, retry later\n";
    let _ = stream.try_write(BUSY);
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>, _permit: OwnedSemaphorePermit) {
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(IdleIo::new(stream, shared.idle_timeout));
    let served = Arc::new(AtomicU64::new(0));
    let conn_shared = Arc::clone(&shared);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = Arc::clone(&conn_shared);
        let n = served.fetch_add(1, Ordering::Relaxed) + 1;
        async move {
            let mut close = n >= shared.max_requests;
            let mut response: Response<Body> = match shared.access.check(&req) {
                Ok(()) => {
                    close |= shared.access.closes_after(&req);
                    let mut app = shared.app.clone();
                    match tower_service::Service::call(&mut app, req).await {
                        Ok(r) => r,
                        Err(never) => match never {},
                    }
                }
                Err(refusal) => refusal.response(),
            };
            if close {
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.header_timeout)
        .max_header_size(shared.max_header_bytes)
        .max_buf_size(shared.max_header_bytes.max(8192) * 2)
        .max_headers(64);
    if let Err(e) = builder.serve_connection(io, service).await {
        tracing::debug!(error = %e, "admin connection closed");
    }
}

/// A stream whose reads and writes fail with [`io::ErrorKind::TimedOut`] once they have waited
/// longer than the idle timeout since the last byte moved in either direction.
struct IdleIo {
    inner: TcpStream,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl IdleIo {
    fn new(inner: TcpStream, timeout: Duration) -> Self {
        Self { inner, timeout, deadline: Box::pin(tokio::time::sleep(timeout)) }
    }

    fn progressed(&mut self) {
        let next = Instant::now() + self.timeout;
        self.deadline.as_mut().reset(next);
    }

    /// Called when the inner stream is not ready: an error if the idle deadline has passed.
    fn check_idle<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "admin connection idle"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for IdleIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.progressed();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.check_idle(cx),
        }
    }
}

impl AsyncWrite for IdleIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.check_idle(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.check_idle(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.check_idle(cx),
            done => done,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_shutdown(cx) {
            Poll::Pending => self.check_idle(cx),
            done => done,
        }
    }
}
