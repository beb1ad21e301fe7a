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

use parking_lot::{Condvar, Mutex, MutexGuard};

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
        self.wait_for_turn(&mut state, tag);
        drop(state);
        self.observe_wait(asked);
        Turn {
            lane: self,
            tag,
            started: Instant::now(),
            ended: false,
        }
    }

    /// Queues this model at `tag` and waits until it is first and the device is free.
    fn wait_for_turn(&self, state: &mut MutexGuard<'_, State>, tag: u128) {
        state.arrivals += 1;
        let key = (tag, state.arrivals);
        state.waiting.insert(key, self.wake.clone());
        let first = |state: &State| state.waiting.first_key_value().map(|(key, _)| *key);
        if !state.running && first(state) != Some(key) {
            wake_first(state);
        }
        while state.running || first(state) != Some(key) {
            self.wake.wait(state);
        }
        state.waiting.remove(&key);
        state.running = true;
        state.now = tag;
    }

    fn observe_wait(&self, asked: Instant) {
        METRICS
            .run_wait_seconds
            .with_label_values(&[self.model.as_str()])
            .observe(asked.elapsed().as_secs_f64());
    }
}

fn wake_first(state: &State) {
    if let Some(next) = state.waiting.values().next() {
        next.notify_one();
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
    /// Ends this run and asks for the model's next turn in the same step. A model with
    /// more work queued thus keeps its place: were it to ask afresh, whichever model started
    /// while its worker came back would set it level with that run, and the turns would go
    /// by runs instead of by time.
    pub fn again(&mut self) {
        self.charge_and_queue_again(self.started.elapsed());
    }

    fn charge_and_queue_again(&mut self, cost: Duration) {
        let asked = Instant::now();
        let lane = &mut *self.lane;
        lane.paid_until = self.tag + cost.as_nanos();
        let scheduler = lane.scheduler.clone();
        let mut state = scheduler.state.lock();
        state.running = false;
        self.tag = lane.paid_until.max(state.now);
        lane.wait_for_turn(&mut state, self.tag);
        drop(state);
        lane.observe_wait(asked);
        self.started = Instant::now();
    }

    fn end(&mut self, cost: Duration) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        self.lane.paid_until = self.tag + cost.as_nanos();
        let scheduler = &self.lane.scheduler;
        let mut state = scheduler.state.lock();
        state.running = false;
        scheduler.in_use.fetch_sub(1, Ordering::Relaxed);
        wake_first(&state);
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
    /// each gets half of the device's time, so the cheap one runs four times as often.
    /// Runs are charged fixed costs, so the turns are the same on a busy machine.
    #[test]
    fn turns_share_the_device_time_not_the_runs() {
        const RUNS: usize = 100;
        let scheduler = Arc::<RunScheduler>::default();
        let runs = Arc::new(Mutex::new(Vec::new()));
        let mut gate = scheduler.lane("gate");
        let held = gate.turn();
        let spawn = |name: &'static str, cost: Duration| {
            let mut lane = scheduler.lane(name);
            let runs = runs.clone();
            std::thread::spawn(move || {
                let mut turn = lane.turn();
                loop {
                    let mut runs = runs.lock();
                    if runs.len() == RUNS {
                        break;
                    }
                    runs.push(name);
                    drop(runs);
                    turn.charge_and_queue_again(cost);
                }
            })
        };
        let cheap = spawn("cheap", Duration::from_millis(1));
        let dear = spawn("dear", Duration::from_millis(4));
        // Both wait before the first turn is given, so the first is theirs by the rules too.
        while scheduler.state.lock().waiting.len() < 2 {
            std::thread::yield_now();
        }
        drop(held);
        cheap.join().unwrap();
        dear.join().unwrap();
        let runs = runs.lock();
        let cheap = runs.iter().filter(|name| **name == "cheap").count();
        assert_eq!((cheap, RUNS - cheap), (80, 20), "{runs:?}");
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
