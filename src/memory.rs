//! Handing memory back to the operating system after spikes. glibc's allocator keeps what a
//! request freed for later: eight 16 MiB requests left resident memory at 810 MiB against
//! 168 MiB at start, and hostile bodies left it at gigabytes. Two things undo that:
//! - large blocks (a body, a parsed input array, a response) are mapped on their own and
//!   unmapped when freed: the mmap threshold is fixed at `MMAP_FROM` instead of growing to
//!   the largest block freed so far (glibc's default, which then serves 16 MiB blocks from
//!   the heap, where they stay);
//! - the many small blocks a large request's parsing and tokenizing leave are returned with
//!   `malloc_trim` once large requests stop: the trimmer runs every `TRIM_EVERY` while
//!   one was seen in the last `TRIMS_AFTER` periods, off the async runtime.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::metrics::METRICS;

/// A request that held this much (a body, a reservation) counts as a spike.
pub const LARGE_REQUEST_BYTES: usize = 1 << 20;

/// Blocks of this size and more are mapped on their own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_FROM: libc::c_int = 1 << 20;

const TRIM_EVERY: Duration = Duration::from_secs(2);

/// Trims after the last large request: its work (tokenizing, inference, the response) may
/// finish some seconds after its body was read.
const TRIMS_AFTER: u32 = 5;

/// Trims still to run.
static TRIMS_DUE: AtomicU32 = AtomicU32::new(0);

/// Sets the allocator up; call once at start, before threads allocate.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of glibc's allocator.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_FROM);
    }
}

/// Notes a large request: its memory is handed back once large requests stop.
pub fn large_request_seen() {
    TRIMS_DUE.store(TRIMS_AFTER, Ordering::Relaxed);
}

/// Runs the trimmer on the current tokio runtime.
pub fn spawn_trimmer() {
    tokio::spawn(async {
        let mut ticks = tokio::time::interval(TRIM_EVERY);
        loop {
            ticks.tick().await;
            let due = TRIMS_DUE.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |due| {
                due.checked_sub(1)
            });
            if due.is_ok() {
                let _ = tokio::task::spawn_blocking(trim).await;
            }
        }
    });
}

/// Hands the allocator's free memory back to the OS.
pub fn trim() {
    let started = std::time::Instant::now();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: glibc's malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
    METRICS.memory_trims.inc();
    tracing::debug!(took = ?started.elapsed(), "freed memory handed back to the OS");
}
