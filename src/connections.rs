//! Accepting connections within bounds: at most `max_connections` open (further clients
//! wait in the kernel's backlog), a request's head must arrive within
//! `header_read_timeout` (of the connection opening, or of its first byte after an idle
//! spell), an idle keep-alive connection closes after `keep_alive_timeout`, and once the
//! server drains, connections with no request in flight close at once.
//!
//! A connection's phase is kept by its socket wrapper (`Watched`), which fails the next read
//! when the phase's deadline passes; hyper then drops the connection. Requests mark their
//! connection busy (`mark_busy`, a middleware), so a slow model never times a client out.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::IncomingStream;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::metrics::METRICS;

/// The configured bounds.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
}

/// The listening socket, handing out connections while a slot is free.
pub struct BoundedListener {
    tcp: TcpListener,
    slots: Arc<Semaphore>,
    limits: ConnectionLimits,
    draining: Arc<Draining>,
}

/// Set once the server stops taking requests: idle connections close on their next poll.
#[derive(Default)]
pub struct Draining {
    started: std::sync::atomic::AtomicBool,
    notify: Arc<Notify>,
}

impl Draining {
    pub fn start(&self) {
        self.started
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    fn started(&self) -> bool {
        self.started.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl BoundedListener {
    pub fn new(tcp: TcpListener, limits: ConnectionLimits, draining: Arc<Draining>) -> Self {
        Self {
            tcp,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            draining,
        }
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = Watched;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Watched, SocketAddr) {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the connection semaphore is never closed");
        loop {
            match self.tcp.accept().await {
                Ok((stream, address)) => {
                    let _ = stream.set_nodelay(true);
                    METRICS.open_connections.inc();
                    return (Watched::new(stream, slot, self), address);
                }
                Err(error) => accept_failed(error).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// Errors of one connection (reset before accept) are skipped; running out of file
/// descriptors or memory is waited out, as hyper's and axum's listeners do.
async fn accept_failed(error: io::Error) {
    let per_connection = matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    );
    if !per_connection {
        tracing::error!("cannot accept connections: {error}; retrying in a second");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Where a connection stands, and since when.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Opened, and its first request's head not complete.
    Opened,
    /// No request in flight and no byte since the last response.
    Idle,
    /// Bytes of a next request have come, its head not yet complete.
    ReadingHead,
    /// This many requests in flight.
    Busy(usize),
}

#[derive(Debug, Clone, Copy)]
struct Activity {
    phase: Phase,
    since: Instant,
}

/// A connection's activity, shared by its socket and its requests.
#[derive(Clone)]
pub struct ConnectionActivity(Arc<Mutex<Activity>>);

impl ConnectionActivity {
    fn busy(&self) -> BusyGuard {
        let mut activity = self.0.lock();
        activity.phase = match activity.phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            _ => Phase::Busy(1),
        };
        BusyGuard(self.clone())
    }
}

struct BusyGuard(ConnectionActivity);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut activity = self.0.0.lock();
        if let Phase::Busy(n) = activity.phase {
            activity.phase = if n > 1 {
                Phase::Busy(n - 1)
            } else {
                Phase::Idle
            };
            activity.since = Instant::now();
        }
    }
}

impl Connected<IncomingStream<'_, BoundedListener>> for ConnectionActivity {
    fn connect_info(stream: IncomingStream<'_, BoundedListener>) -> Self {
        stream.io().activity.clone()
    }
}

/// Marks the request's connection busy while the request runs (connections served without
/// a `BoundedListener`, as in tests through `oneshot`, have none).
pub async fn mark_busy(request: Request, next: Next) -> Response {
    let _busy = request
        .extensions()
        .get::<ConnectInfo<ConnectionActivity>>()
        .map(|ConnectInfo(activity)| activity.busy());
    next.run(request).await
}

/// A TCP stream that fails its next read once its phase's deadline has passed, and holds
/// its connection slot until it is dropped.
pub struct Watched {
    stream: TcpStream,
    activity: ConnectionActivity,
    limits: ConnectionLimits,
    /// Wakes the connection's task at its deadline.
    timer: Pin<Box<Sleep>>,
    draining: Arc<Draining>,
    drain_signal: Pin<Box<tokio::sync::futures::OwnedNotified>>,
    _slot: OwnedSemaphorePermit,
}

impl Watched {
    fn new(stream: TcpStream, slot: OwnedSemaphorePermit, listener: &BoundedListener) -> Self {
        let now = Instant::now();
        Self {
            stream,
            activity: ConnectionActivity(Arc::new(Mutex::new(Activity {
                phase: Phase::Opened,
                since: now,
            }))),
            limits: listener.limits,
            timer: Box::pin(tokio::time::sleep_until(
                now + listener.limits.header_read_timeout,
            )),
            drain_signal: Box::pin(listener.draining.notify.clone().notified_owned()),
            draining: listener.draining.clone(),
            _slot: slot,
        }
    }

    /// The instant this connection must have made progress by, if any; `None` while busy.
    fn deadline_of(&self, activity: &Activity) -> Option<Instant> {
        let timeout = match activity.phase {
            Phase::Opened | Phase::ReadingHead => self.limits.header_read_timeout,
            Phase::Idle => self.limits.keep_alive_timeout,
            Phase::Busy(_) => return None,
        };
        Some(activity.since + timeout)
    }

    /// Whether the connection should close now: its deadline passed, or the server drains
    /// and no request is in flight. Registers the wake-ups otherwise.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let activity = *self.activity.0.lock();
        let Some(deadline) = self.deadline_of(&activity) else {
            return false;
        };
        if self.draining.started() {
            return true;
        }
        if self.drain_signal.as_mut().poll(cx).is_ready() {
            return true;
        }
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        self.timer.as_mut().poll(cx).is_ready()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        METRICS.open_connections.dec();
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        match read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                let mut activity = this.activity.0.lock();
                if let Phase::Idle = activity.phase {
                    activity.phase = Phase::ReadingHead;
                    activity.since = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.expired(cx) => {
                let phase = this.activity.0.lock().phase;
                tracing::debug!(?phase, "closing a connection that made no progress");
                METRICS.connections_timed_out.inc();
                Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
