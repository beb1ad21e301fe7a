//! Whether sessions should spin, for `Spinning::Adaptive`. Spinning inside runs is worth up
//! to 29 % on cores the server has to itself, but a thread that spins while another process
//! holds its partner's core mostly waits for a partner the kernel is not running (docs,
//! `performance.md`, "Spinning"). So the decision is made from what the runs meet, four times a second over
//! the last second, by a watcher thread:
//!
//! - spinning stops when the runs' threads waited for a core for at least `WAITING` of
//!   their run time (`/proc/thread-self/schedstat`, read around each run) while other
//!   processes kept at least `BUSY_CORES` busy (`/proc/stat` less `/proc/self/stat`). On
//!   the development VM runs waited 0.3 % of their time at concurrency 1 and 3 % at 64 on a
//!   quiet machine, and 18 to 32 % beside a busy loop. An idle server beside a busy
//!   neighbour runs nothing, so it keeps spinning, and its next request after the
//!   neighbour stops runs at full speed;
//! - spinning resumes once other processes keep at most `CALM_CORES` busy for a second
//!   (threads that do not spin wait for a core in bursts, so that share does not say when
//!   spinning would pay again; the neighbour's load does).
//!
//! Each change rebuilds sessions (`model::respin`), so a change is held for a while in
//! proportion to what the last rebuild took (`hold_after`), which keeps a neighbour's pauses
//! from rebuilding them back and forth.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::metrics::METRICS;

const WAITING: f64 = 0.12;
const BUSY_CORES: f64 = 0.25;
const CALM_CORES: f64 = 0.25;
/// Run time in a window that makes its share of waiting for a core worth reading.
const EVIDENCE: Duration = Duration::from_millis(100);
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Samples per decision window: one second.
const WINDOW: usize = 4;
/// Consecutive windows that must show the runs waiting before spinning stops: a
/// neighbour's burst of a second (a process starting) is not worth rebuilding sessions for.
const WAITING_WINDOWS: u32 = 5;

static CONTENDED: AtomicBool = AtomicBool::new(false);
/// Nanoseconds the longest recent session rebuild took.
static REBUILD_NANOS: AtomicU64 = AtomicU64::new(0);
static WATCHER: OnceLock<()> = OnceLock::new();
/// Nanoseconds adaptive sessions spent in runs, and those their threads waited for a core.
static RUN_NANOS: AtomicU64 = AtomicU64::new(0);
static WAITED_NANOS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's `/proc/thread-self/schedstat`, opened once: each run then reads it with
    /// one `pread` rather than an open, a read and a close.
    static SCHEDSTAT: Option<File> = File::open("/proc/thread-self/schedstat").ok();
}

/// How long the calling thread has waited, runnable, for a core since it started; None
/// where the kernel does not say.
pub fn thread_waited() -> Option<Duration> {
    SCHEDSTAT.with(|file| {
        let mut buffer = [0u8; 96];
        let read = file.as_ref()?.read_at(&mut buffer, 0).ok()?;
        let stat = std::str::from_utf8(&buffer[..read]).ok()?;
        let nanos = stat.split_whitespace().nth(1)?.parse().ok()?;
        Some(Duration::from_nanos(nanos))
    })
}

/// One run of an adaptive session: how long it took, and how long its thread waited for a
/// core meanwhile.
pub fn record_run(took: Duration, waited: Duration) {
    RUN_NANOS.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    WAITED_NANOS.fetch_add(waited.as_nanos() as u64, Ordering::Relaxed);
}

/// Whether sessions should run without spinning now. The first call starts the watcher;
/// it reports quiet until its first window, and always where `/proc` cannot be read.
pub fn contended() -> bool {
    WATCHER.get_or_init(start_watcher);
    CONTENDED.load(Ordering::Relaxed)
}

/// Tells the watcher what rebuilding a session for a change took.
pub fn rebuilt(took: Duration) {
    REBUILD_NANOS.fetch_max(took.as_nanos() as u64, Ordering::Relaxed);
}

/// How long a change holds before the next: five rebuilds' time, from one second to ten.
fn hold_after() -> Duration {
    let rebuild = Duration::from_nanos(REBUILD_NANOS.load(Ordering::Relaxed));
    (rebuild * 5).clamp(Duration::from_secs(1), Duration::from_secs(10))
}

fn start_watcher() {
    let spawned = std::thread::Builder::new()
        .name("contention".into())
        .spawn(|| {
            let mut state = Decision::default();
            let Some(first) = CpuTimes::read() else {
                tracing::info!("/proc/stat is unreadable: spinning will not follow other load");
                return;
            };
            let mut samples = VecDeque::from([first]);
            loop {
                std::thread::sleep(SAMPLE_EVERY);
                let Some(now) = CpuTimes::read() else { return };
                samples.push_back(now);
                if samples.len() <= WINDOW {
                    continue;
                }
                let oldest = samples.pop_front().expect("a full window");
                let load = samples[WINDOW - 1].load_since(&oldest);
                let changed = state.observe(load, Instant::now(), hold_after());
                METRICS.other_processes_cpu.set(load.others);
                METRICS.own_cpu.set(load.own);
                if let Some(waited) = load.core_wait {
                    METRICS.run_core_wait.set(waited);
                }
                if changed {
                    let contended = state.contended;
                    CONTENDED.store(contended, Ordering::Relaxed);
                    tracing::info!(
                        other_processes_cores = format!("{:.2}", load.others),
                        own_cores = format!("{:.2}", load.own),
                        "{}",
                        if contended {
                            "other processes take the cores our runs need: sessions stop spinning"
                        } else {
                            "the cores are free again: sessions spin inside runs"
                        }
                    );
                }
                METRICS.cpu_contended.set(i64::from(state.contended));
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the contention watcher");
    }
}

/// Cores kept busy over a window, by other processes (and the host, as steal) and by us.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    pub others: f64,
    pub own: f64,
    /// The share of adaptive sessions' run time their threads waited for a core, when they
    /// ran for at least `EVIDENCE`.
    pub core_wait: Option<f64>,
}

/// The spin/no-spin decision over successive windows.
#[derive(Debug, Default)]
pub struct Decision {
    pub contended: bool,
    changed_at: Option<Instant>,
    /// Consecutive windows that showed the runs waiting, while spinning.
    waiting_streak: u32,
}

impl Decision {
    /// Takes one window's load at `now`; true when the decision changed.
    pub fn observe(&mut self, load: Load, now: Instant, hold: Duration) -> bool {
        let waiting = load.others >= BUSY_CORES && load.core_wait.is_some_and(|w| w >= WAITING);
        self.waiting_streak = if waiting && !self.contended {
            self.waiting_streak + 1
        } else {
            0
        };
        if self.changed_at.is_some_and(|at| now < at + hold) {
            return false;
        }
        let change = if self.contended {
            load.others <= CALM_CORES
        } else {
            self.waiting_streak >= WAITING_WINDOWS
        };
        if change {
            self.contended = !self.contended;
            self.changed_at = Some(now);
            self.waiting_streak = 0;
        }
        change
    }
}

/// Busy and total clock ticks of the machine, and this process's own ticks.
struct CpuTimes {
    busy: u64,
    total: u64,
    own: u64,
    cores: usize,
    /// `RUN_NANOS` and `WAITED_NANOS` when read.
    ran: u64,
    waited: u64,
}

impl CpuTimes {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        Some(Self {
            ran: RUN_NANOS.load(Ordering::Relaxed),
            waited: WAITED_NANOS.load(Ordering::Relaxed),
            ..Self::parse(&stat, &own)?
        })
    }

    fn parse(stat: &str, own: &str) -> Option<Self> {
        let mut lines = stat.lines();
        let ticks: Vec<u64> = lines
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .map(|t| t.parse().ok())
            .collect::<Option<_>>()?;
        // user nice system idle iowait irq softirq steal [guest guest_nice, inside user]
        let field = |i: usize| ticks.get(i).copied().unwrap_or(0);
        let idle = field(3) + field(4);
        let total = (0..8).map(field).sum();
        let cores = lines.filter(|l| l.starts_with("cpu")).count().max(1);
        // The command name (field 2) may hold spaces: count fields after its ')'.
        let after_name = own.get(own.rfind(')')? + 1..)?;
        let mut fields = after_name.split_whitespace().skip(11);
        let utime: u64 = fields.next()?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        Some(Self {
            busy: total - idle,
            total,
            own: utime + stime,
            cores,
            ran: 0,
            waited: 0,
        })
    }

    /// Cores kept busy since `earlier`, by other processes (and the host, as steal) and by
    /// this one.
    fn load_since(&self, earlier: &Self) -> Load {
        let ran = self.ran.saturating_sub(earlier.ran);
        let waited = self.waited.saturating_sub(earlier.waited);
        let core_wait = (ran >= EVIDENCE.as_nanos() as u64).then(|| waited as f64 / ran as f64);
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return Load {
                others: 0.0,
                own: 0.0,
                core_wait,
            };
        }
        let busy = self.busy.saturating_sub(earlier.busy);
        let own = self.own.saturating_sub(earlier.own);
        let cores = |ticks: u64| ticks as f64 / total as f64 * self.cores as f64;
        Load {
            others: cores(busy.saturating_sub(own)),
            own: cores(own),
            core_wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_spinning_only_while_runs_wait_for_cores_others_hold() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let hold = Duration::from_secs(1);
        let load = |others, core_wait| Load {
            others,
            own: 1.0,
            core_wait,
        };
        let mut state = Decision::default();
        assert!(
            !state.observe(load(1.0, None), at(0), hold),
            "an idle server keeps spinning"
        );
        assert!(
            !state.observe(load(0.1, Some(0.3)), at(250), hold),
            "waits for its own threads"
        );
        assert!(
            !state.observe(load(0.9, Some(0.05)), at(250), hold),
            "runs barely wait"
        );
        for ms in [500, 750, 1000, 1250] {
            assert!(
                !state.observe(load(0.9, Some(0.2)), at(ms), hold),
                "a burst"
            );
        }
        assert!(
            !state.observe(load(0.9, None), at(1500), hold),
            "the streak ends"
        );
        for ms in [1750, 2000, 2250, 2500] {
            assert!(!state.observe(load(0.9, Some(0.2)), at(ms), hold));
        }
        let start = start + Duration::from_millis(2250);
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert!(
            state.observe(load(0.9, Some(0.2)), at(500), hold),
            "five windows in a row"
        );
        assert!(state.contended);
        assert!(
            !state.observe(load(0.0, None), at(1000), hold),
            "held for a while"
        );
        assert!(
            !state.observe(load(0.4, Some(0.0)), at(1500), hold),
            "not calm yet"
        );
        assert!(state.observe(load(0.2, Some(0.2)), at(1750), hold));
        assert!(!state.contended);
        for ms in [2000, 2250, 2500, 2750] {
            assert!(!state.observe(load(0.9, Some(0.2)), at(ms), hold));
        }
        assert!(state.observe(load(0.9, Some(0.2)), at(3000), hold));
    }

    #[test]
    fn holds_a_change_for_five_rebuilds() {
        assert_eq!(hold_after(), Duration::from_secs(1));
        rebuilt(Duration::from_millis(400));
        assert_eq!(hold_after(), Duration::from_secs(2));
        rebuilt(Duration::from_millis(100));
        assert_eq!(hold_after(), Duration::from_secs(2), "the longest counts");
    }

    #[test]
    fn other_load_is_the_machine_busy_time_less_our_own() {
        let stat = |user: u64, idle: u64, steal: u64| {
            format!(
                "cpu  {user} 0 0 {idle} 0 0 0 {steal} 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\n\
                 cpu1 0 0 0 0 0 0 0 0 0 0\nintr 1\n"
            )
        };
        let own = |ticks: u64| {
            format!("42 (embed serve) S 1 1 1 0 -1 4194560 1 0 0 0 {ticks} 0 0 0 20 0 9 0")
        };
        let before = CpuTimes::parse(&stat(100, 1000, 0), &own(50)).unwrap();
        // 200 ticks over 2 cores: we used 60, others 80 of user time and 20 of steal.
        let after = CpuTimes::parse(&stat(240, 1040, 20), &own(110)).unwrap();
        assert_eq!(after.cores, 2);
        let load = after.load_since(&before);
        assert!((load.others - 1.0).abs() < 1e-9, "{load:?}");
        assert!((load.own - 0.6).abs() < 1e-9, "{load:?}");
        assert!(CpuTimes::parse("intr 1\n", &own(1)).is_none());
    }

    #[test]
    fn a_thread_reads_its_own_wait_for_a_core_again_and_again() {
        let first = thread_waited().expect("schedstat");
        let later = thread_waited().expect("schedstat");
        assert!(later >= first);
        assert!(std::thread::spawn(thread_waited).join().unwrap().is_some());
    }
}
