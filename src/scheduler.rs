//! One run at a time on a device, across every loaded model: the shared engine.
//!
//! Each model keeps its own queue and forms its own batches (`batcher`), but before a run
//! its worker takes a turn here. A run of a transformer already spreads over every core
//! (ONNX Runtime's intra-op pool), so two runs at once only make each wait for the other's
//! threads at every operator: three busy models on two cores served 0.57× what one did.
//! Taking turns, N busy models cost what one costs.
//!
//! Turns go by start-time fair queuing on measured run time: a model's next turn is tagged
//! with the virtual time at which its earlier runs are paid for, and the lowest tag runs
//! next. A model whose runs take 5 ms thus gets ten turns for each of a 50 ms model's, so
//! that both get the same share of the cores; a model that was idle starts level with the
//! run in progress and banks no credit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::metrics::METRICS;

/// The turns of one device.
#[derive(Default)]
pub struct RunScheduler {
    state: Mutex<State>,
    /// Turns running or waiting, readable without the lock.
    in_use: AtomicUsize,
}

#[derive(Default)]
struct State {
    running: bool,
    /// The start tag of the run in progress, or of the last one.
    now: u128,
    /// Waiting turns by (start tag, arrival), each with its lane's wake-up: the first runs
    /// next, and only it is woken when the device frees.
    waiting: BTreeMap<(u128, u64), Arc<Condvar>>,
    arrivals: u64,
}

impl RunScheduler {
    /// A model's handle on the turns.
    pub fn lane(self: &Arc<Self>, model: &str) -> Lane {
        Lane {
            scheduler: self.clone(),
            model: model.to_string(),
            paid_until: 0,
            wake: Arc::default(),
        }
    }
}

/// One model's place in the turns. Its worker thread holds it.
pub struct Lane {
    scheduler: Arc<RunScheduler>,
    model: String,
    /// Virtual time up to which this model's runs are paid for.
    paid_until: u128,
    wake: Arc<Condvar>,
}

impl Lane {
    /// Whether any model runs on the device or waits to: a worker with nothing to do must
    /// not busy-wait beside its run.
    pub fn device_in_use(&self) -> bool {
        self.scheduler.in_use.load(Ordering::Relaxed) > 0
    }

    /// Waits for this model's turn; the run happens while the returned `Turn` lives.
    pub fn turn(&mut self) -> Turn<'_> {
        let asked = Instant::now();
        let scheduler = self.scheduler.clone();
        scheduler.in_use.fetch_add(1, Ordering::Relaxed);
        let mut state = scheduler.state.lock();
        let tag = self.paid_until.max(state.now);
        state.arrivals += 1;
        let key = (tag, state.arrivals);
        state.waiting.insert(key, self.wake.clone());
        while state.running || state.waiting.keys().next() != Some(&key) {
            self.wake.wait(&mut state);
        }
        state.waiting.remove(&key);
        state.running = true;
        state.now = tag;
        drop(state);
        METRICS
            .run_wait_seconds
            .with_label_values(&[self.model.as_str()])
            .observe(asked.elapsed().as_secs_f64());
        Turn {
            lane: self,
            tag,
            started: Instant::now(),
            ended: false,
        }
    }
}

/// The device is this model's until dropped; its run is charged what it took.
pub struct Turn<'a> {
    lane: &'a mut Lane,
    tag: u128,
    started: Instant,
    ended: bool,
}

impl Turn<'_> {
    fn end(&mut self, cost: Duration) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        self.lane.paid_until = self.tag + cost.as_nanos();
        let scheduler = &self.lane.scheduler;
        let mut state = scheduler.state.lock();
        state.running = false;
        scheduler.in_use.fetch_sub(1, Ordering::Relaxed);
        if let Some(next) = state.waiting.values().next() {
            next.notify_one();
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let cost = self.started.elapsed();
        self.end(cost);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn a_lone_model_never_waits_and_runs_never_overlap() {
        let scheduler = Arc::<RunScheduler>::default();
        let busy = Arc::new(AtomicBool::new(false));
        let overlaps = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..4)
            .map(|i| {
                let mut lane = scheduler.lane(&format!("m{i}"));
                let (busy, overlaps) = (busy.clone(), overlaps.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let _turn = lane.turn();
                        if busy.swap(true, Ordering::SeqCst) {
                            overlaps.fetch_add(1, Ordering::SeqCst);
                        }
                        std::hint::black_box((0..1000).sum::<u64>());
                        busy.store(false, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        assert_eq!(overlaps.load(Ordering::SeqCst), 0);
    }

    /// Two models always wanting the device, one whose runs cost four times the other's:
    /// each gets about half of the device's time, so the cheap one runs four times as often.
    #[test]
    fn turns_share_the_device_time_not_the_runs() {
        let scheduler = Arc::<RunScheduler>::default();
        let stop = Arc::new(AtomicBool::new(false));
        let spawn = |cost: Duration| {
            let mut lane = scheduler.lane(&format!("{cost:?}"));
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut busy = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    let turn = lane.turn();
                    let started = Instant::now();
                    while started.elapsed() < cost {
                        std::hint::spin_loop();
                    }
                    busy += started.elapsed();
                    drop(turn);
                }
                busy
            })
        };
        let cheap = spawn(Duration::from_micros(500));
        let dear = spawn(Duration::from_millis(2));
        // Both threads are started and compete for the whole window; its length only sets
        // how many turns the shares are measured over.
        let window = Instant::now();
        while window.elapsed() < Duration::from_millis(600) {
            std::thread::yield_now();
        }
        stop.store(true, Ordering::Relaxed);
        let (cheap, dear) = (cheap.join().unwrap(), dear.join().unwrap());
        let share = cheap.as_secs_f64() / (cheap + dear).as_secs_f64();
        assert!((0.35..0.65).contains(&share), "cheap model's share {share}");
    }

    #[test]
    fn a_model_back_from_idle_banks_no_credit() {
        let scheduler = Arc::<RunScheduler>::default();
        let mut busy = scheduler.lane("busy");
        let mut idle = scheduler.lane("idle");
        for _ in 0..3 {
            let mut turn = busy.turn();
            turn.end(Duration::from_secs(1));
        }
        assert!(!idle.device_in_use());
        let turn = idle.turn();
        assert_eq!(turn.tag, 2_000_000_000, "starts level with the last run");
        assert!(busy.device_in_use());
    }
}
