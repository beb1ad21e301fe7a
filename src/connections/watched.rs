//! The socket of one connection: it fails its next read once its phase's deadline passes,
//! the server drains, or the listener sheds it; hyper then drops the connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use super::activity::{Activity, ConnectionActivity, Phase};
use super::registry::Registration;
use super::{BoundedListener, ConnectionLimits, Draining};
use crate::metrics::METRICS;

/// A TCP stream that fails its next read once its phase's deadline has passed or it is
/// shed, and holds its connection slot (and its place in the registry) until it is dropped.
pub struct Watched {
    stream: TcpStream,
    pub(super) activity: ConnectionActivity,
    limits: ConnectionLimits,
    /// Wakes the connection's task at its deadline.
    timer: Pin<Box<Sleep>>,
    draining: Arc<Draining>,
    drain_signal: Pin<Box<tokio::sync::futures::OwnedNotified>>,
    shed_signal: Pin<Box<tokio::sync::futures::OwnedNotified>>,
    shed: bool,
    registration: Option<Registration>,
    slot: Option<OwnedSemaphorePermit>,
}

impl Watched {
    pub(super) fn new(
        stream: TcpStream,
        slot: OwnedSemaphorePermit,
        activity: ConnectionActivity,
        registration: Registration,
        listener: &BoundedListener,
    ) -> Self {
        let opened = activity.activity.lock().since;
        Self {
            stream,
            shed_signal: Box::pin(activity.shed.clone().notified_owned()),
            shed: false,
            activity,
            limits: listener.limits,
            timer: Box::pin(tokio::time::sleep_until(
                opened + listener.limits.header_read_timeout,
            )),
            drain_signal: Box::pin(listener.draining.notify.clone().notified_owned()),
            draining: listener.draining.clone(),
            registration: Some(registration),
            slot: Some(slot),
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

    /// Whether the listener closed this connection to make room for a new one.
    fn is_shed(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.shed {
            self.shed = self.shed_signal.as_mut().poll(cx).is_ready();
        }
        self.shed
    }

    /// Whether the connection should close now: its deadline passed, or the server drains
    /// and no request is in flight. Registers the wake-ups otherwise.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let activity = *self.activity.activity.lock();
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
        // Out of the registry first: the listener sheds only what the registry holds, under
        // its lock, so from here on this connection cannot be shed. Checked before that, a
        // shed in between handed its slot on while the slot went back too, one permit more
        // than max_connections each time.
        drop(self.registration.take());
        // A shed connection's slot was handed on already.
        if self
            .activity
            .shed_marked
            .load(std::sync::atomic::Ordering::SeqCst)
            && let Some(slot) = self.slot.take()
        {
            slot.forget();
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.is_shed(cx) {
            tracing::debug!("closing a connection to make room for a new one");
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        match read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                let mut activity = this.activity.activity.lock();
                if let Phase::Idle = activity.phase {
                    activity.phase = Phase::ReadingHead;
                    activity.since = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.expired(cx) => {
                let phase = this.activity.activity.lock().phase;
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
