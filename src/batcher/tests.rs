//! Unit tests of the batcher, driven through its seam with a fake, without ONNX Runtime.

use std::sync::mpsc;

use super::*;

/// Inputs are token counts and come back as outputs. Every run is reported on `runs`;
/// a gated engine then waits for the test to release the run.
struct Fake {
    runs: mpsc::Sender<Vec<usize>>,
    gate: Option<mpsc::Receiver<()>>,
    fails_on: Option<usize>,
    idle_spin: Duration,
}

impl Engine for Fake {
    type Input = usize;
    type Output = usize;

    fn tokens(input: &usize) -> usize {
        *input
    }

    fn run(&mut self, batch: &[&usize]) -> anyhow::Result<Vec<usize>> {
        let inputs: Vec<usize> = batch.iter().map(|&&n| n).collect();
        self.runs.send(inputs.clone())?;
        if let Some(gate) = &self.gate {
            gate.recv_timeout(Duration::from_secs(10))?;
        }
        if self.fails_on.is_some_and(|n| inputs.contains(&n)) {
            anyhow::bail!("input {} is poisoned", self.fails_on.unwrap_or_default());
        }
        Ok(inputs)
    }

    fn idle_spin(&self) -> Duration {
        self.idle_spin
    }
}

const LIMITS: BatchLimits = BatchLimits {
    max_batch_size: 3,
    max_batch_tokens: 100,
    max_queued_inputs: 10,
    run_cost_tokens: None,
};

/// Fields drop in order: the gate first, so a worker waiting in a gated run is let go
/// before the batcher joins it.
struct Harness {
    gate: mpsc::Sender<()>,
    batcher: Batcher<Fake>,
    runs: mpsc::Receiver<Vec<usize>>,
}

impl Harness {
    fn start(limits: BatchLimits, gated: bool, fails_on: Option<usize>) -> Self {
        Self::spinning(limits, gated, fails_on, Duration::ZERO)
    }

    fn spinning(
        limits: BatchLimits,
        gated: bool,
        fails_on: Option<usize>,
        idle_spin: Duration,
    ) -> Self {
        let (runs_tx, runs) = mpsc::channel();
        let (gate, gate_rx) = mpsc::channel();
        let engine = Fake {
            runs: runs_tx,
            gate: gated.then_some(gate_rx),
            fails_on,
            idle_spin,
        };
        let batcher = Batcher::start("fake", engine, limits, None).unwrap();
        Self {
            gate,
            batcher,
            runs,
        }
    }

    /// The inputs of the next run, once the worker is inside it.
    fn next_run(&self) -> Vec<usize> {
        self.runs
            .recv_timeout(Duration::from_secs(10))
            .expect("a run")
    }

    fn release(&self) {
        self.gate.send(()).unwrap();
    }

    fn submit(&self, inputs: &[usize]) -> Pending<usize> {
        self.batcher.submit(inputs.to_vec()).unwrap()
    }
}

/// The request's outputs; a batcher that never answers fails the test instead of hanging it.
fn outputs(pending: Pending<usize>) -> Vec<usize> {
    let (answer, answered) = mpsc::channel();
    std::thread::spawn(move || answer.send(pending.wait_blocking()));
    answered
        .recv_timeout(Duration::from_secs(10))
        .expect("an answer")
        .unwrap()
        .outputs
}

#[test]
fn requests_that_arrive_during_a_run_share_the_next_one() {
    let harness = Harness::start(LIMITS, true, None);
    let first = harness.submit(&[10]);
    assert_eq!(harness.next_run(), [10]);
    let second = harness.submit(&[11, 12]);
    let third = harness.submit(&[13]);
    harness.release();
    assert_eq!(harness.next_run(), [11, 12, 13]);
    harness.release();
    assert_eq!(outputs(first), [10]);
    assert_eq!(outputs(second), [11, 12]);
    assert_eq!(outputs(third), [13]);
}

#[test]
fn outputs_come_back_in_input_order_across_runs() {
    let limits = BatchLimits {
        max_batch_size: 2,
        ..LIMITS
    };
    let harness = Harness::start(limits, true, None);
    let blocker = harness.submit(&[1]);
    assert_eq!(harness.next_run(), [1]);
    let pending = harness.submit(&[50, 10, 40, 11, 45, 12]);
    harness.release();
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(harness.next_run());
        harness.release();
    }
    assert_eq!(runs, [vec![50, 45], vec![10, 11], vec![40, 12]]);
    assert_eq!(outputs(pending), [50, 10, 40, 11, 45, 12]);
    assert_eq!(outputs(blocker), [1]);
}

/// A 1-input request queued behind a large one runs in the next run, beside it: it once
/// waited 83 s for a 1,100-input request to finish.
#[test]
fn a_small_request_runs_in_the_next_run_beside_a_large_one() {
    let harness = Harness::start(LIMITS, true, None);
    let blocker = harness.submit(&[1]);
    assert_eq!(harness.next_run(), [1]);
    let large = harness.submit(&[20; 9]);
    let small = harness.submit(&[5]);
    harness.release();
    assert_eq!(harness.next_run(), [20, 20, 5]);
    harness.release();
    assert_eq!(outputs(small), [5]);
    for _ in 0..2 {
        assert_eq!(harness.next_run(), [20, 20, 20]);
        harness.release();
    }
    assert_eq!(harness.next_run(), [20]);
    harness.release();
    assert_eq!(outputs(large), [20; 9]);
    assert_eq!(outputs(blocker), [1]);
}

/// Requests of equal size finish one after another, not all at the end: the first is done
/// after one run instead of sharing every run with the second.
#[test]
fn equal_requests_finish_one_after_another() {
    let harness = Harness::start(LIMITS, true, None);
    let blocker = harness.submit(&[1]);
    assert_eq!(harness.next_run(), [1]);
    let first = harness.submit(&[10, 11, 12]);
    let second = harness.submit(&[10, 11, 12]);
    harness.release();
    assert_eq!(harness.next_run(), [10, 11, 12]);
    harness.release();
    assert_eq!(outputs(first), [10, 11, 12]);
    assert_eq!(harness.next_run(), [10, 11, 12]);
    harness.release();
    assert_eq!(outputs(second), [10, 11, 12]);
    assert_eq!(outputs(blocker), [1]);
}

/// Requests of more than `BULK_INPUTS` inputs share runs by length: every run here holds
/// only short or only long inputs, where taking each request in turn would pad every run to
/// the long ones.
#[test]
fn bulk_requests_share_runs_of_similar_length() {
    let limits = BatchLimits {
        max_batch_tokens: 1000,
        max_queued_inputs: 100,
        ..LIMITS
    };
    let harness = Harness::start(limits, true, None);
    let blocker = harness.submit(&[1]);
    assert_eq!(harness.next_run(), [1]);
    let first = harness.submit(&[10, 40, 11, 41, 12, 42]);
    let second = harness.submit(&[40, 10, 41, 11, 42, 12]);
    for _ in 0..4 {
        harness.release();
        let run = harness.next_run();
        assert_eq!(run.len(), 3);
        assert!(
            run.iter().all(|&n| n <= 12) || run.iter().all(|&n| n >= 40),
            "a run mixed lengths: {run:?}"
        );
    }
    harness.release();
    assert_eq!(outputs(first), [10, 40, 11, 41, 12, 42]);
    assert_eq!(outputs(second), [40, 10, 41, 11, 42, 12]);
    assert_eq!(outputs(blocker), [1]);
}

/// With more requests queued than a batch has rows, batches are anchored on each request in
/// turn: every request runs within as many runs as there are requests.
#[test]
fn requests_take_turns_when_they_outnumber_the_rows() {
    let limits = BatchLimits {
        max_batch_size: 2,
        max_queued_inputs: 100,
        ..LIMITS
    };
    let harness = Harness::start(limits, true, None);
    let blocker = harness.submit(&[1]);
    assert_eq!(harness.next_run(), [1]);
    let large: Vec<_> = (0..3).map(|_| harness.submit(&[10; 8])).collect();
    let odd_one = harness.submit(&[40]);
    let mut runs_before_it = 0;
    loop {
        harness.release();
        let run = harness.next_run();
        if run.contains(&40) {
            break;
        }
        runs_before_it += 1;
    }
    assert!(
        runs_before_it < 4,
        "the odd request waited {runs_before_it} runs"
    );
    harness.release();
    assert_eq!(outputs(odd_one), [40]);
    drop(large);
    assert_eq!(outputs(blocker), [1]);
}

/// With a run's cost given, a lone bulk request is split where padding would cost more
/// than another run, and kept whole where it would not.
#[test]
fn bulk_inputs_are_split_where_padding_costs_more_than_a_run() {
    let limits = BatchLimits {
        max_batch_size: 8,
        max_batch_tokens: 1000,
        max_queued_inputs: 100,
        run_cost_tokens: Some(32),
    };
    let harness = Harness::start(limits, true, None);
    let blocker = harness.submit(&[1]);
    assert_eq!(harness.next_run(), [1]);
    // One run: 32 + 8 × 40 = 352 tokens' cost; two: 32 + 4 × 10 + 32 + 4 × 40 = 264.
    let split = harness.submit(&[10, 40, 10, 40, 10, 40, 10, 40]);
    harness.release();
    assert_eq!(harness.next_run(), [10, 10, 10, 10]);
    harness.release();
    assert_eq!(harness.next_run(), [40, 40, 40, 40]);
    harness.release();
    assert_eq!(outputs(split), [10, 40, 10, 40, 10, 40, 10, 40]);
    // One run: 32 + 8 × 12 = 128; two: 32 + 40 + 32 + 48 = 152.
    let whole = harness.submit(&[10, 12, 10, 12, 10, 12, 10, 12]);
    assert_eq!(harness.next_run(), [10, 12, 10, 12, 10, 12, 10, 12]);
    harness.release();
    assert_eq!(outputs(whole), [10, 12, 10, 12, 10, 12, 10, 12]);
    assert_eq!(outputs(blocker), [1]);
}

#[test]
fn the_cheapest_split_keeps_similar_lengths_together() {
    let limits = BatchLimits {
        max_batch_size: 32,
        max_batch_tokens: 16_384,
        max_queued_inputs: 100,
        run_cost_tokens: Some(32),
    };
    // The benchmark corpus's lengths (benches/corpus.txt, all-MiniLM-L6-v2's tokenizer).
    let corpus = [
        18, 12, 5, 22, 18, 18, 9, 18, 9, 21, 5, 22, 32, 7, 18, 14, 5, 27, 21, 19, 15, 20, 14, 16,
        21, 6, 23, 18, 11, 19, 4, 26,
    ];
    let run_of = |anchor: usize, run_cost: usize| {
        bulk_run_lengths(
            &mut corpus.to_vec(),
            anchor,
            &limits,
            &|_| usize::MAX,
            run_cost,
        )
    };
    assert_eq!(run_of(4, 32), 4..=9);
    assert_eq!(run_of(18, 32), 11..=18);
    assert_eq!(run_of(23, 32), 19..=23);
    assert_eq!(run_of(32, 32), 26..=32);
    // No cost to another run: each length its own run.
    assert_eq!(run_of(18, 0), 18..=18);
    // A run costs more than any padding: one run.
    assert_eq!(run_of(18, 100_000), 4..=32);
    // Equal lengths share a run.
    assert_eq!(
        bulk_run_lengths(&mut [7; 40], 7, &limits, &|_| usize::MAX, 32),
        7..=7
    );
}

#[test]
fn a_dropped_request_never_runs() {
    let harness = Harness::start(LIMITS, true, None);
    let first = harness.submit(&[10]);
    assert_eq!(harness.next_run(), [10]);
    let abandoned = harness.submit(&[20, 21]);
    let kept = harness.submit(&[30]);
    drop(abandoned);
    harness.release();
    assert_eq!(harness.next_run(), [30]);
    harness.release();
    assert_eq!(outputs(kept), [30]);
    assert_eq!(outputs(first), [10]);
}

#[test]
fn a_full_queue_refuses_at_once_but_an_idle_model_takes_any_request() {
    let limits = BatchLimits {
        max_queued_inputs: 2,
        ..LIMITS
    };
    let harness = Harness::start(limits, true, None);
    let running = harness.submit(&[1, 2, 3]);
    assert_eq!(harness.next_run(), [1, 2, 3]);
    let waiting = harness.submit(&[4, 5]);
    let refused = harness.batcher.submit(vec![7]);
    assert!(
        matches!(
            refused,
            Err(BatchError::QueueFull {
                queued: 2,
                max: 2,
                ..
            })
        ),
        "{:?}",
        refused.err()
    );
    harness.release();
    assert_eq!(harness.next_run(), [4, 5]);
    harness.release();
    assert_eq!(outputs(running), [1, 2, 3]);
    assert_eq!(outputs(waiting), [4, 5]);
}

#[test]
fn a_failed_run_fails_its_requests_only() {
    let harness = Harness::start(LIMITS, true, Some(13));
    let first = harness.submit(&[1]);
    assert_eq!(harness.next_run(), [1]);
    let poisoned = harness.submit(&[13, 14]);
    let beside_it = harness.submit(&[15]);
    harness.release();
    assert_eq!(harness.next_run(), [13, 14, 15]);
    harness.release();
    let after = harness.submit(&[16]);
    assert_eq!(harness.next_run(), [16]);
    harness.release();
    for failed in [poisoned, beside_it] {
        match failed.wait_blocking() {
            Err(BatchError::Inference(message)) => {
                assert!(message.contains("input 13 is poisoned"), "{message}")
            }
            other => panic!("expected an inference error, got {other:?}"),
        }
    }
    assert_eq!(outputs(first), [1]);
    assert_eq!(outputs(after), [16]);
}

#[test]
fn stopping_finishes_what_is_queued() {
    let harness = Harness::start(LIMITS, false, None);
    let pending = harness.submit(&[1, 2, 3, 4]);
    drop(harness.batcher);
    assert_eq!(outputs(pending), [1, 2, 3, 4]);
    let runs: Vec<Vec<usize>> = harness.runs.try_iter().collect();
    assert_eq!(runs, [vec![1, 2, 3], vec![4]]);
}

/// Fails the test instead of hanging it if the worker does not stop.
fn stop(batcher: Batcher<Fake>) {
    let (stopped, joined) = mpsc::channel();
    std::thread::spawn(move || {
        drop(batcher);
        stopped.send(())
    });
    joined
        .recv_timeout(Duration::from_secs(10))
        .expect("the worker stops");
}

#[test]
fn a_spinning_worker_takes_the_next_request_and_stops_when_asked() {
    // Spinning far longer than the test: only the queue's events can end each spin.
    let harness = Harness::spinning(LIMITS, false, None, Duration::from_secs(3600));
    assert_eq!(outputs(harness.submit(&[1])), [1]);
    assert_eq!(outputs(harness.submit(&[2, 3])), [2, 3]);
    let runs: Vec<Vec<usize>> = harness.runs.try_iter().collect();
    assert_eq!(runs, [vec![1], vec![2, 3]]);
    stop(harness.batcher);
}

#[test]
fn a_worker_that_spun_in_vain_still_wakes_for_the_next_request() {
    let harness = Harness::spinning(LIMITS, false, None, Duration::from_nanos(1));
    assert_eq!(outputs(harness.submit(&[1])), [1]);
    assert_eq!(outputs(harness.submit(&[2])), [2]);
    stop(harness.batcher);
}

#[test]
fn an_empty_request_is_answered_without_a_run() {
    let harness = Harness::start(LIMITS, false, None);
    assert!(outputs(harness.submit(&[])).is_empty());
    assert!(harness.runs.try_recv().is_err());
}

fn items(lengths: &[usize]) -> VecDeque<Item<Fake>> {
    let request = Arc::new(Request::new(lengths.len(), oneshot::channel().0, 1));
    lengths
        .iter()
        .enumerate()
        .map(|(index, &input)| Item {
            input,
            index,
            request: request.clone(),
        })
        .collect()
}

fn lengths(batch: &[Item<Fake>]) -> Vec<usize> {
    batch.iter().map(|i| i.input).collect()
}

#[test]
fn groups_the_oldest_with_inputs_of_similar_length() {
    let mut queue = items(&[10, 50, 11, 30, 9, 12]);
    let batch = take_batch(&mut queue, &LIMITS, &|_| usize::MAX, &mut 0);
    assert_eq!(lengths(&batch), [10, 11, 9]);
    assert_eq!(
        queue.iter().map(|i| i.input).collect::<Vec<_>>(),
        [50, 30, 12]
    );
}

#[test]
fn respects_the_token_budget_but_always_takes_the_oldest() {
    let mut queue = items(&[60, 45, 40]);
    assert_eq!(
        lengths(&take_batch(&mut queue, &LIMITS, &|_| usize::MAX, &mut 0)),
        [60]
    );
    assert_eq!(
        lengths(&take_batch(&mut queue, &LIMITS, &|_| usize::MAX, &mut 0)),
        [45, 40]
    );
    let mut long = items(&[500]);
    assert_eq!(
        lengths(&take_batch(&mut long, &LIMITS, &|_| usize::MAX, &mut 0)),
        [500]
    );
}

#[test]
fn long_inputs_run_in_the_rows_their_length_is_cheapest_in() {
    let limits = BatchLimits {
        max_batch_size: 32,
        max_batch_tokens: 16_384,
        max_queued_inputs: 100,
        run_cost_tokens: Some(32),
    };
    // Eight rows at most once the longest reaches 200 tokens; short inputs are not capped.
    let max_rows = |columns: usize| if columns >= 200 { 8 } else { usize::MAX };
    let mut passages = items(&[256; 20]);
    let runs: Vec<usize> = std::iter::from_fn(|| {
        (!passages.is_empty()).then(|| take_batch(&mut passages, &limits, &max_rows, &mut 0).len())
    })
    .collect();
    assert_eq!(runs, [8, 8, 4]);
    let mut sentences = items(&[20; 40]);
    assert_eq!(
        take_batch(&mut sentences, &limits, &max_rows, &mut 0).len(),
        32
    );
    let mut lengths = vec![256; 20];
    let run = bulk_run_lengths(&mut lengths, 256, &limits, &max_rows, 32);
    assert_eq!(run, 256..=256);
}
