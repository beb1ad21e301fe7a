//! Accepting connections within bounds: at most `max_connections` open, at most
//! `max_connections_per_ip` of them from one address (more are closed at once), a request's
//! head must arrive within `header_read_timeout` (of the connection opening, or of its first
//! byte after an idle spell), an idle keep-alive connection closes after
//! `keep_alive_timeout`, and once the server drains, connections with no request in flight
//! close at once.
//!
//! Fairness under a flood (1,500 sockets reopened as fast as they were closed once kept a
//! fresh client waiting 8–30 s):
//! - the kernel's backlog is drained into a queue of our own at once, and the next
//!   connection admitted is the oldest of the address holding the fewest connections, so a
//!   newcomer does not wait behind a flood's backlog;
//! - when every slot is held, a connection that is not computing an answer (it has sent no
//!   complete head, idles between requests, or is still sending its body) is closed to make
//!   room: the oldest of the address holding the most (`registry`). Only connections whose
//!   requests are being answered keep their slot; when all are, the newcomer waits.
//!
//! A connection's phase is kept by its socket wrapper (`Watched`), which fails the next read
//! when the phase's deadline passes or it is shed; hyper then drops the connection. Requests
//! mark their connection busy (`mark_busy`, a middleware), so a slow model never times a
//! client out, and mark it as reading while they read their body (`reading_body`).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};

use crate::metrics::METRICS;

mod activity;
mod registry;
mod watched;

pub use activity::{ConnectionActivity, ReadingBody, mark_busy};
pub use watched::Watched;

use registry::{OpenConnections, Registration};

/// The configured bounds.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    /// 0: no bound.
    pub max_connections_per_ip: usize,
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
}

/// The listening socket, handing out connections fairly while a slot is free.
pub struct BoundedListener {
    tcp: TcpListener,
    slots: Arc<Semaphore>,
    limits: ConnectionLimits,
    draining: Arc<Draining>,
    open: Arc<OpenConnections>,
    /// Connections taken from the kernel's backlog and not yet admitted.
    waiting: VecDeque<(TcpStream, SocketAddr)>,
}

/// Most connections taken from the backlog ahead of their admission.
const MAX_WAITING: usize = 1024;

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
            open: Arc::default(),
            waiting: VecDeque::new(),
        }
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = Watched;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Watched, SocketAddr) {
        loop {
            self.drain_backlog().await;
            let (stream, address) = match self.next_waiting() {
                Some(waiting) => waiting,
                None => match self.tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        accept_failed(error).await;
                        continue;
                    }
                },
            };
            if let Some(admitted) = self.admit(stream, address).await {
                return admitted;
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

impl BoundedListener {
    /// Moves every connection the kernel holds for us into `waiting` (up to
    /// `MAX_WAITING`), without waiting for any.
    async fn drain_backlog(&mut self) {
        while self.waiting.len() < MAX_WAITING {
            let accepted = std::future::poll_fn(|cx| match self.tcp.poll_accept(cx) {
                Poll::Pending => Poll::Ready(None),
                Poll::Ready(accepted) => Poll::Ready(Some(accepted)),
            })
            .await;
            match accepted {
                None => return,
                Some(Ok((stream, address))) => {
                    // An address over its share is refused now, not after the queue.
                    let cap = self.limits.max_connections_per_ip;
                    if cap > 0 && self.open.held_by(address.ip().to_canonical()) >= cap {
                        count_refused("per_ip");
                        drop(stream);
                    } else {
                        self.waiting.push_back((stream, address));
                    }
                }
                Some(Err(error)) => {
                    accept_failed(error).await;
                    return;
                }
            }
        }
    }

    /// The waiting connection to admit next: the oldest of the address that holds the
    /// fewest connections, so a newcomer goes before a flood's backlog.
    fn next_waiting(&mut self) -> Option<(TcpStream, SocketAddr)> {
        let index = self
            .open
            .lightest(self.waiting.iter().map(|(_, address)| address.ip()))?;
        self.waiting.remove(index)
    }

    /// Gives a connection its slot, or closes it when its address holds its share already.
    /// When every slot is held, a connection that is not computing is shed for it; when all
    /// are computing, it waits for a slot.
    async fn admit(
        &mut self,
        stream: TcpStream,
        address: SocketAddr,
    ) -> Option<(Watched, SocketAddr)> {
        let ip = address.ip().to_canonical();
        let Some((id, activity)) = self.open.admit(ip, self.limits.max_connections_per_ip) else {
            count_refused("per_ip");
            return None;
        };
        let registration = Registration {
            id,
            ip,
            open: self.open.clone(),
        };
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if self.open.shed_oldest(&self.slots) {
                    count_refused("shed");
                    // Let the connections already admitted (and the one shed) run before
                    // taking more: a flood's admissions would otherwise queue hundreds of
                    // tasks ahead of a newcomer's.
                    tokio::task::yield_now().await;
                }
                self.slots
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the connection semaphore is never closed")
            }
        };
        let _ = stream.set_nodelay(true);
        METRICS.open_connections.inc();
        Some((
            Watched::new(stream, slot, activity, registration, self),
            address,
        ))
    }
}

fn count_refused(reason: &str) {
    METRICS
        .connections_refused
        .with_label_values(&[reason])
        .inc();
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
