//! Batch work at background priority: requests are counted as they come and go, and the
//! engine starts batch lines only once none has run for `batches.idle_gap`, so an
//! interactive request never queues behind more than the lines already started.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

pub struct Activity {
    in_flight: AtomicUsize,
    /// When the last request ended, in nanoseconds after `epoch`.
    last_end: AtomicU64,
    epoch: Instant,
    ended: Notify,
}

/// The server's requests, all routes together.
pub static REQUESTS: LazyLock<Activity> = LazyLock::new(|| Activity {
    in_flight: AtomicUsize::new(0),
    last_end: AtomicU64::new(0),
    epoch: Instant::now(),
    ended: Notify::new(),
});

/// Whether requests to `route` hold batch work back: those that may run a model do;
/// polling a batch, downloading its results, health checks and metrics do not, or a client
/// watching its batch would slow it down.
pub fn holds_batches_back(route: &str) -> bool {
    const QUIET: [&str; 6] = [
        "/v1/files",
        "/v1/batches",
        "/health",
        "/ready",
        "/metrics",
        "/v1/models",
    ];
    !QUIET.iter().any(|quiet| route.starts_with(quiet))
}

/// A request in flight; it ends when dropped.
pub struct InFlight;

impl Activity {
    pub fn begin(&'static self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight
    }

    fn end(&self) {
        let now = self.epoch.elapsed().as_nanos() as u64;
        self.last_end.fetch_max(now, Ordering::SeqCst);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.ended.notify_waiters();
    }

    /// Waits until no request is in flight and none has ended for `gap`.
    pub async fn idle_for(&self, gap: Duration) {
        loop {
            let ended = self.ended.notified();
            if self.in_flight.load(Ordering::SeqCst) > 0 {
                ended.await;
                continue;
            }
            let since =
                self.epoch.elapsed() - Duration::from_nanos(self.last_end.load(Ordering::SeqCst));
            if since >= gap {
                return;
            }
            tokio::select! {
                () = ended => {}
                () = tokio::time::sleep(gap - since) => {}
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        REQUESTS.end();
    }
}
