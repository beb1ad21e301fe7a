//! Whether other processes compete for this machine's CPUs, for `Spinning::Adaptive`: a
//! session's threads that spin while another process wants their cores mostly wait for a
//! partner the kernel is not running (README, "Spinning"). Once a second a watcher thread
//! compares the machine's busy time (`/proc/stat`, steal included) with this process's own
//! (`/proc/self/stat`); what is left is other processes' load.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::metrics::METRICS;

/// Other processes keeping at least `BUSY_CORES` busy for `BUSY_SAMPLES` seconds in a row
/// make the machine contended; at most `CALM_CORES` for `CALM_SAMPLES` seconds make it quiet
/// again. Each change rebuilds sessions (`model::respin`): leaving takes longer than
/// entering, so that a neighbour's pauses do not rebuild them back and forth.
const BUSY_CORES: f64 = 0.5;
const BUSY_SAMPLES: u32 = 3;
const CALM_CORES: f64 = 0.25;
const CALM_SAMPLES: u32 = 10;
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

static CONTENDED: AtomicBool = AtomicBool::new(false);
static WATCHER: OnceLock<()> = OnceLock::new();

/// Whether other processes keep the cores busy now. The first call starts the watcher; it
/// reports quiet until its first samples, and always where `/proc` cannot be read.
pub fn contended() -> bool {
    WATCHER.get_or_init(start_watcher);
    CONTENDED.load(Ordering::Relaxed)
}

fn start_watcher() {
    let spawned = std::thread::Builder::new()
        .name("contention".into())
        .spawn(|| {
            let mut state = Hysteresis::default();
            let Some(mut last) = CpuTimes::read() else {
                tracing::info!("/proc/stat is unreadable: spinning will not follow other load");
                return;
            };
            loop {
                std::thread::sleep(SAMPLE_EVERY);
                let Some(now) = CpuTimes::read() else { return };
                let others = now.others_cores_since(&last);
                last = now;
                METRICS.other_processes_cpu.set(others);
                if state.observe(others) {
                    let contended = state.contended;
                    CONTENDED.store(contended, Ordering::Relaxed);
                    METRICS.cpu_contended.set(i64::from(contended));
                    tracing::info!(
                        other_processes_cores = format!("{others:.2}"),
                        "{}",
                        if contended {
                            "other processes keep the cores busy: sessions stop spinning"
                        } else {
                            "the cores are free again: sessions spin inside runs"
                        }
                    );
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the contention watcher");
    }
}

/// The contended/quiet decision over successive samples of other processes' load.
#[derive(Debug, Default)]
pub struct Hysteresis {
    pub contended: bool,
    streak: u32,
}

impl Hysteresis {
    /// Takes one sample (cores kept busy by other processes); true when the state changed.
    pub fn observe(&mut self, others_cores: f64) -> bool {
        let (against, needed) = if self.contended {
            (others_cores <= CALM_CORES, CALM_SAMPLES)
        } else {
            (others_cores >= BUSY_CORES, BUSY_SAMPLES)
        };
        self.streak = if against { self.streak + 1 } else { 0 };
        if self.streak < needed {
            return false;
        }
        self.contended = !self.contended;
        self.streak = 0;
        true
    }
}

/// Busy and total clock ticks of the machine, and this process's own ticks.
struct CpuTimes {
    busy: u64,
    total: u64,
    own: u64,
    cores: usize,
}

impl CpuTimes {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        Self::parse(&stat, &own)
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
        })
    }

    /// Cores other processes (and the host, as steal) kept busy since `earlier`.
    fn others_cores_since(&self, earlier: &Self) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        let busy = self.busy.saturating_sub(earlier.busy);
        let own = self.own.saturating_sub(earlier.own);
        busy.saturating_sub(own) as f64 / total as f64 * self.cores as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enters_after_three_busy_samples_and_leaves_after_ten_calm_ones() {
        let mut state = Hysteresis::default();
        assert!(!state.observe(0.9));
        assert!(!state.observe(0.9));
        assert!(!state.observe(0.1), "a pause restarts the count");
        assert!(!state.observe(0.9));
        assert!(!state.observe(0.5));
        assert!(state.observe(0.6));
        assert!(state.contended);
        for _ in 0..9 {
            assert!(!state.observe(0.1));
        }
        assert!(!state.observe(0.4), "between the thresholds is not calm");
        for _ in 0..9 {
            assert!(!state.observe(0.0));
        }
        assert!(state.observe(0.25));
        assert!(!state.contended);
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
        let others = after.others_cores_since(&before);
        assert!((others - 1.0).abs() < 1e-9, "{others}");
        assert!(CpuTimes::parse("intr 1\n", &own(1)).is_none());
    }
}
