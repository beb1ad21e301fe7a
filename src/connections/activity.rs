//! What a connection is doing (waiting for a head, idle, answering, reading a body), shared
//! by its socket and its requests, and the signal that sheds it.

use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::IncomingStream;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::BoundedListener;

/// Where a connection stands, and since when.
#[derive(Debug, Clone, Copy)]
pub(super) enum Phase {
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
pub(super) struct Activity {
    pub(super) phase: Phase,
    pub(super) since: Instant,
    /// Requests in flight that are still reading their bodies.
    reading_bodies: usize,
}

/// A connection's activity, shared by its socket and its requests, and the signal that
/// closes it to make room for a new one.
#[derive(Clone)]
pub struct ConnectionActivity {
    pub(super) activity: Arc<Mutex<Activity>>,
    pub(super) shed: Arc<Notify>,
    /// Set when the listener sheds it and gives its slot to another connection.
    pub(super) shed_marked: Arc<std::sync::atomic::AtomicBool>,
}

impl ConnectionActivity {
    pub(super) fn new() -> Self {
        Self {
            activity: Arc::new(Mutex::new(Activity {
                phase: Phase::Opened,
                since: Instant::now(),
                reading_bodies: 0,
            })),
            shed: Arc::default(),
            shed_marked: Arc::default(),
        }
    }

    pub(super) fn busy(&self) -> BusyGuard {
        let mut activity = self.activity.lock();
        activity.phase = match activity.phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            _ => Phase::Busy(1),
        };
        BusyGuard(self.clone())
    }

    /// Marks a request of this connection as reading its body until the guard drops: a
    /// connection whose requests all do so may be shed.
    pub fn reading_body(&self) -> ReadingBody {
        self.activity.lock().reading_bodies += 1;
        ReadingBody(self.clone())
    }

    /// Whether closing it loses no work: no request in flight, or only ones still reading
    /// their bodies.
    pub(super) fn sheddable(&self) -> bool {
        let activity = self.activity.lock();
        match activity.phase {
            Phase::Busy(n) => activity.reading_bodies >= n,
            _ => true,
        }
    }
}

/// A request reading its body (`ConnectionActivity::reading_body`).
pub struct ReadingBody(ConnectionActivity);

impl Drop for ReadingBody {
    fn drop(&mut self) {
        let mut activity = self.0.activity.lock();
        activity.reading_bodies = activity.reading_bodies.saturating_sub(1);
    }
}

pub(super) struct BusyGuard(ConnectionActivity);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let mut activity = self.0.activity.lock();
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
