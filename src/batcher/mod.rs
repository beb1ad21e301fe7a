//! Dynamic micro-batching for one model: a worker thread owns the model's engine (its ONNX
//! session) and a bounded queue of tokenized inputs from any number of requests, and runs
//! them in batches of similar length.
//!
//! Sharing: a batch is anchored on one input of each queued request in turn, so every
//! request runs within as many runs as there are requests queued; the rest of the batch goes
//! first to small requests, those with the fewest inputs left first (shortest remaining work
//! first, which gives the least mean latency; requests of equal size one after another), then
//! to bulk inputs by how close their length is to the anchor's, whichever request they
//! belong to. A small request thus runs in the next run beside a large one (waiting for at
//! most the run in progress) instead of after it, and bulk requests share runs of similar
//! lengths: four concurrent 32-sentence requests pad 37 % fewer tokens than each run alone
//! would.
//!
//! Splitting: on the CPU a run's cost is about a fixed part plus its padded tokens, so bulk
//! inputs are cut into the runs that cost least in all (`bulk_run_lengths`) rather than
//! filling every run to the limit: even a lone request of the 32 benchmark sentences runs
//! as four batches of similar lengths, 1.55× as fast as one.
//!
//! Waiting policy: the worker takes whatever is queued the moment it is free, and never
//! waits for more. Under load, inputs pile up while a batch runs, so batches fill by
//! themselves; a lone request runs at once and pays no added latency. When a run leaves the
//! queue empty, the worker may busy-wait a moment for the next request before it sleeps
//! (`Engine::idle_spin`), so that a client's next request finds it awake. `scripts/bench`
//! measures both ends (concurrency 1 and 64) against the bare session.

use std::collections::{HashMap, VecDeque};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use tokio::sync::oneshot;

use crate::metrics::METRICS;
use crate::scheduler::Lane;

/// What a batcher runs, on its worker thread: one run over a batch of inputs. The ONNX
/// encoder is one; unit tests drive the queue with fakes.
pub trait Engine: Send + 'static {
    type Input: Send + 'static;
    type Output: Send + 'static;

    /// The input's length in tokens: batches group similar lengths, and a batch's cost is
    /// its rows times its longest input.
    fn tokens(input: &Self::Input) -> usize;

    /// One output per input of `batch`, in its order.
    fn run(&mut self, batch: &[&Self::Input]) -> anyhow::Result<Vec<Self::Output>>;

    /// How long the worker may busy-wait for the next request after a run that emptied the
    /// queue, before it sleeps. A sleeping worker must be woken for that request, on its
    /// path: on a VM whose idle vCPUs halt that costs tens of µs (docs, `performance.md`).
    fn idle_spin(&self) -> Duration {
        Duration::ZERO
    }

    /// Most rows worth running together when the longest is `columns` tokens: past it a
    /// run's cost per token grows again (activations that outgrow the caches), so more rows
    /// go in another run. Within `BatchLimits` either way.
    fn max_rows(&self, _columns: usize) -> usize {
        usize::MAX
    }
}

/// Bounds of the batches and the queue of one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most inputs in one run.
    pub max_batch_size: usize,
    /// Most padded tokens (rows × longest row) in one run; a single longer input still runs.
    pub max_batch_tokens: usize,
    /// Most inputs waiting; a request that does not fit gets 429 at once.
    pub max_queued_inputs: usize,
    /// What one more run costs, in padded tokens: bulk inputs are split into the runs that
    /// cost least in all, each run costing this plus its padded tokens. None: bulk inputs
    /// fill each run up to the limits, whatever their lengths.
    pub run_cost_tokens: Option<usize>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    #[error(
        "the queue of model `{model}` is full ({queued} inputs waiting, max_queued_inputs is {max}); retry later"
    )]
    QueueFull {
        model: String,
        queued: usize,
        max: usize,
    },
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("the model stopped before answering")]
    Stopped,
}

/// A request's outputs, in input order, and where its time went.
#[derive(Debug)]
pub struct Completed<O> {
    pub outputs: Vec<O>,
    /// From submission until its first input ran.
    pub queued: Duration,
    /// Summed duration of the runs that held its inputs.
    pub inference: Duration,
}

type Reply<O> = Result<Completed<O>, BatchError>;

/// One request's inputs in flight: filled in by the worker as its batches complete.
struct Request<O> {
    outputs: Mutex<Vec<Option<O>>>,
    remaining: AtomicUsize,
    /// Taken when the answer is sent. Closed when the caller dropped its `Pending`.
    reply: Mutex<Option<oneshot::Sender<Reply<O>>>>,
    submitted: Instant,
    first_run: OnceLock<Instant>,
    inference_nanos: AtomicU64,
    /// Submission order: the turn order of batch anchors.
    seq: u64,
    /// How many inputs the request brought.
    inputs: usize,
}

impl<O> Request<O> {
    fn new(inputs: usize, reply: oneshot::Sender<Reply<O>>, seq: u64) -> Self {
        Self {
            seq,
            inputs,
            outputs: Mutex::new(std::iter::repeat_with(|| None).take(inputs).collect()),
            remaining: AtomicUsize::new(inputs),
            reply: Mutex::new(Some(reply)),
            submitted: Instant::now(),
            first_run: OnceLock::new(),
            inference_nanos: AtomicU64::new(0),
        }
    }

    /// Whether its inputs are batched by length across requests (`BULK_INPUTS`).
    fn is_bulk(&self) -> bool {
        self.inputs > BULK_INPUTS
    }

    /// Nobody waits for the answer any more: the caller went away, or it failed already.
    fn abandoned(&self) -> bool {
        self.reply.lock().as_ref().is_none_or(|r| r.is_closed())
    }

    fn complete(&self, index: usize, output: O) {
        self.outputs.lock()[index] = Some(output);
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let outputs = std::mem::take(&mut *self.outputs.lock());
            let queued = self
                .first_run
                .get()
                .map_or(Duration::ZERO, |t| t.duration_since(self.submitted));
            let inference = Duration::from_nanos(self.inference_nanos.load(Ordering::Acquire));
            self.send(Ok(Completed {
                outputs: outputs.into_iter().flatten().collect(),
                queued,
                inference,
            }));
        }
    }

    fn send(&self, result: Reply<O>) {
        if let Some(reply) = self.reply.lock().take() {
            let _ = reply.send(result);
        }
    }
}

struct Item<E: Engine> {
    input: E::Input,
    index: usize,
    request: Arc<Request<E::Output>>,
}

struct Queue<E: Engine> {
    /// In submission order: a request's inputs lie together, requests in `seq` order.
    items: VecDeque<Item<E>>,
    closed: bool,
    next_seq: u64,
}

struct Shared<E: Engine> {
    model: String,
    limits: BatchLimits,
    queue: Mutex<Queue<E>>,
    ready: Condvar,
    /// Bumped under the queue's lock by every submission and by closing, so that a worker
    /// spinning without the lock sees either.
    events: AtomicU64,
}

impl<E: Engine> Shared<E> {
    fn bump_events(&self) {
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    /// Busy-waits until the queue sees an event after `seen`, for `limit` at most, and only
    /// while `device_free` holds: another model's run needs every core. The core goes to
    /// anyone else who wants it at every check of the clock.
    fn spin_for_event(&self, seen: u64, limit: Duration, device_free: impl Fn() -> bool) {
        const SPINS_PER_CHECK: u32 = 64;
        let deadline = Instant::now() + limit;
        loop {
            for _ in 0..SPINS_PER_CHECK {
                if self.events.load(Ordering::Relaxed) != seen {
                    return;
                }
                std::hint::spin_loop();
            }
            if Instant::now() >= deadline || !device_free() {
                return;
            }
            std::thread::yield_now();
        }
    }

    fn report_depth(&self, depth: usize) {
        METRICS
            .queue_depth
            .with_label_values(&[self.model.as_str()])
            .set(depth as i64);
    }
}

/// The queue and worker thread of one model.
pub struct Batcher<E: Engine> {
    shared: Arc<Shared<E>>,
    worker: Option<JoinHandle<()>>,
}

/// A submitted request's outputs, in input order. Dropping it before it resolves (the
/// client went away) withdraws the inputs that have not run yet.
pub struct Pending<O> {
    reply: oneshot::Receiver<Reply<O>>,
}

impl<O> Pending<O> {
    pub async fn wait(self) -> Reply<O> {
        self.reply.await.unwrap_or(Err(BatchError::Stopped))
    }

    pub fn wait_blocking(self) -> Reply<O> {
        self.reply
            .blocking_recv()
            .unwrap_or(Err(BatchError::Stopped))
    }
}

impl<E: Engine> Batcher<E> {
    /// Starts the worker thread, which owns `engine` from now on.
    /// With a `lane`, every run waits for its turn on the device the lane shares with other
    /// models (`scheduler`).
    pub fn start(
        model: &str,
        mut engine: E,
        limits: BatchLimits,
        lane: Option<Lane>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            model: model.to_string(),
            limits,
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                closed: false,
                next_seq: 1,
            }),
            ready: Condvar::new(),
            events: AtomicU64::new(0),
        });
        let worker_shared = shared.clone();
        let worker = std::thread::Builder::new()
            .name(format!("batcher {model}"))
            .spawn(move || run_worker(&worker_shared, &mut engine, lane))?;
        Ok(Self {
            shared,
            worker: Some(worker),
        })
    }

    pub fn limits(&self) -> BatchLimits {
        self.shared.limits
    }

    /// Refuses `inputs` more inputs now if `submit` would: a request checks before it
    /// tokenizes, so a full queue costs it nothing but this answer.
    pub fn check_room(&self, inputs: usize) -> Result<(), BatchError> {
        let queued = self.shared.queue.lock().items.len();
        self.room_for(queued, inputs)
    }

    fn room_for(&self, queued: usize, inputs: usize) -> Result<(), BatchError> {
        let max = self.shared.limits.max_queued_inputs;
        if queued > 0 && queued + inputs > max {
            return Err(BatchError::QueueFull {
                model: self.shared.model.clone(),
                queued,
                max,
            });
        }
        Ok(())
    }

    /// Queues `inputs` as one request, or refuses at once when the queue cannot take them.
    /// A request is refused only while others wait, so even one larger than the whole queue
    /// runs on an idle model.
    pub fn submit(&self, inputs: Vec<E::Input>) -> Result<Pending<E::Output>, BatchError> {
        let (reply_tx, reply) = oneshot::channel();
        let mut queue = self.shared.queue.lock();
        queue.next_seq += 1;
        let request = Arc::new(Request::new(inputs.len(), reply_tx, queue.next_seq));
        if inputs.is_empty() {
            request.send(Ok(Completed {
                outputs: Vec::new(),
                queued: Duration::ZERO,
                inference: Duration::ZERO,
            }));
            return Ok(Pending { reply });
        }
        self.room_for(queue.items.len(), inputs.len())?;
        queue
            .items
            .extend(inputs.into_iter().enumerate().map(|(index, input)| Item {
                input,
                index,
                request: request.clone(),
            }));
        self.shared.bump_events();
        drop(queue);
        self.shared.ready.notify_one();
        Ok(Pending { reply })
    }
}

impl<E: Engine> Drop for Batcher<E> {
    /// Lets the worker finish what is queued, then stops it.
    fn drop(&mut self) {
        let mut queue = self.shared.queue.lock();
        queue.closed = true;
        self.shared.bump_events();
        drop(queue);
        self.shared.ready.notify_all();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

fn run_worker<E: Engine>(shared: &Shared<E>, engine: &mut E, mut lane: Option<Lane>) {
    let mut last_anchor = 0;
    while wait_for_work(shared, engine, lane.as_ref()) {
        // The batch is taken once the turn comes, so that it holds what arrived meanwhile.
        let mut turn = lane.as_mut().map(Lane::turn);
        while let Some(batch) = take_queued_batch(shared, engine, &mut last_anchor) {
            run_batch(shared, engine, batch);
            if let Some(turn) = &mut turn {
                if shared.queue.lock().items.is_empty() {
                    break;
                }
                turn.again();
            }
        }
    }
}

fn take_queued_batch<E: Engine>(
    shared: &Shared<E>,
    engine: &E,
    last_anchor: &mut u64,
) -> Option<Vec<Item<E>>> {
    let mut queue = shared.queue.lock();
    drop_abandoned(shared, &mut queue.items);
    if queue.items.is_empty() {
        return None;
    }
    let max_rows = |columns| engine.max_rows(columns);
    let batch = take_batch(&mut queue.items, &shared.limits, &max_rows, last_anchor);
    shared.report_depth(queue.items.len());
    Some(batch)
}

/// Waits until inputs are queued (true) or the batcher closes with none left (false).
fn wait_for_work<E: Engine>(shared: &Shared<E>, engine: &E, lane: Option<&Lane>) -> bool {
    let mut may_spin = true;
    let mut queue = shared.queue.lock();
    loop {
        drop_abandoned(shared, &mut queue.items);
        if !queue.items.is_empty() {
            return true;
        }
        shared.report_depth(0);
        if queue.closed {
            return false;
        }
        if std::mem::take(&mut may_spin) {
            let spin = engine.idle_spin();
            let device_free = || lane.is_none_or(|lane| !lane.device_in_use());
            if !spin.is_zero() && device_free() {
                let seen = shared.events.load(Ordering::Relaxed);
                MutexGuard::unlocked(&mut queue, || {
                    shared.spin_for_event(seen, spin, device_free)
                });
                continue;
            }
        }
        shared.ready.wait(&mut queue);
    }
}

fn drop_abandoned<E: Engine>(shared: &Shared<E>, items: &mut VecDeque<Item<E>>) {
    let before = items.len();
    items.retain(|item| !item.request.abandoned());
    let dropped = before - items.len();
    if dropped > 0 {
        METRICS
            .cancelled_inputs
            .with_label_values(&[shared.model.as_str()])
            .inc_by(dropped as u64);
    }
}

/// Requests of more inputs than this are bulk work: their inputs are batched by length
/// across requests rather than one request after another. Four 32-sentence requests
/// then pad 640 tokens per 32 inputs instead of 1,024 (benches/corpus.txt).
const BULK_INPUTS: usize = 4;

/// The first input of the request after `last_anchor` (in turn, so no request waits
/// forever), then the inputs of requests of at most `BULK_INPUTS` inputs, by how few their
/// request has left (requests with as many left in submission order), then the rest by how
/// close their length is to the anchor's (similar lengths keep padding small), within the
/// limits and, given `run_cost_tokens`, within the anchor's run of the cheapest split of
/// the bulk inputs (`bulk_run_lengths`).
fn take_batch<E: Engine>(
    items: &mut VecDeque<Item<E>>,
    limits: &BatchLimits,
    max_rows: &dyn Fn(usize) -> usize,
    last_anchor: &mut u64,
) -> Vec<Item<E>> {
    let seq = |i: usize| items[i].request.seq;
    let mut left: HashMap<u64, usize> = HashMap::new();
    for item in items.iter() {
        *left.entry(item.request.seq).or_default() += 1;
    }
    // A request's inputs lie together, requests in `seq` order.
    let anchor = (0..items.len())
        .find(|&i| seq(i) > *last_anchor)
        .unwrap_or(0);
    *last_anchor = seq(anchor);
    let anchor_tokens = E::tokens(&items[anchor].input);
    let mut candidates: Vec<usize> = (0..items.len()).filter(|&i| i != anchor).collect();
    candidates.sort_by_key(|&i| {
        let left = left[&seq(i)];
        let closeness = E::tokens(&items[i].input).abs_diff(anchor_tokens) as u64;
        if items[i].request.is_bulk() {
            // Bulk work: by length alone, across requests, so that runs pad little.
            (usize::MAX, closeness, seq(i), i)
        } else {
            // Requests with as many inputs left go one after another (so each finishes
            // sooner); single inputs, by length alone.
            let turn = if left > 1 { seq(i) } else { 0 };
            (left, turn, closeness, i)
        }
    });

    let bulk_lengths = match limits.run_cost_tokens {
        Some(run_cost) => {
            let mut lengths: Vec<usize> = (0..items.len())
                .filter(|&i| i == anchor || items[i].request.is_bulk())
                .map(|i| E::tokens(&items[i].input))
                .collect();
            bulk_run_lengths(&mut lengths, anchor_tokens, limits, max_rows, run_cost)
        }
        None => 0..=usize::MAX,
    };

    let mut chosen = vec![anchor];
    let mut longest = anchor_tokens;
    for i in candidates {
        if chosen.len() == limits.max_batch_size {
            break;
        }
        let tokens = E::tokens(&items[i].input);
        if items[i].request.is_bulk() && !bulk_lengths.contains(&tokens) {
            continue;
        }
        let longer = longest.max(tokens);
        if (chosen.len() + 1) * longer > limits.max_batch_tokens
            || chosen.len() + 1 > max_rows(longer)
        {
            continue;
        }
        longest = longer;
        chosen.push(i);
    }
    chosen.sort_unstable();
    let mut batch = Vec::with_capacity(chosen.len());
    for &i in chosen.iter().rev() {
        batch.extend(items.remove(i));
    }
    batch.reverse();
    batch
}

/// The lengths of the run that holds `anchor` (one of `lengths`) when `lengths` are split,
/// shortest first, into the runs that cost least in all: each run costs `run_cost` plus its
/// rows times its longest input, and keeps within the limits. A run's fixed cost weighed
/// against padding: the 32 benchmark sentences (4 to 32 tokens) run in 140 ms as one batch
/// and in 90 ms as four of similar lengths (all-MiniLM-L6-v2, two threads; any run cost
/// from 8 to 32 tokens gave 90–91 ms).
fn bulk_run_lengths(
    lengths: &mut [usize],
    anchor: usize,
    limits: &BatchLimits,
    max_rows: &dyn Fn(usize) -> usize,
    run_cost: usize,
) -> RangeInclusive<usize> {
    lengths.sort_unstable();
    let n = lengths.len();
    // cheapest[j]: the cost of the cheapest split of the j shortest, and where its last run
    // starts.
    let mut cheapest = vec![(0usize, 0usize); n + 1];
    for end in 1..=n {
        let longest = lengths[end - 1];
        let most_rows = limits.max_batch_size.min(max_rows(longest)).max(1);
        let mut best = (usize::MAX, end - 1);
        for start in (end.saturating_sub(most_rows)..end).rev() {
            let rows = end - start;
            if rows > 1 && rows * longest > limits.max_batch_tokens {
                break;
            }
            let cost = cheapest[start].0 + run_cost + rows * longest;
            // On a tie, the longer run: fewer runs for the same cost.
            if cost <= best.0 {
                best = (cost, start);
            }
        }
        cheapest[end] = best;
    }
    let at = lengths.partition_point(|&l| l < anchor);
    let mut end = n;
    loop {
        let start = cheapest[end].1;
        if start <= at {
            return lengths[start]..=lengths[end - 1];
        }
        end = start;
    }
}

fn run_batch<E: Engine>(shared: &Shared<E>, engine: &mut E, batch: Vec<Item<E>>) {
    let inputs: Vec<&E::Input> = batch.iter().map(|item| &item.input).collect();
    let lengths = inputs.iter().map(|input| E::tokens(input));
    let (tokens, columns) = lengths.fold((0, 0), |(sum, max), n| (sum + n, max.max(n)));
    let mut requests: Vec<&Arc<Request<E::Output>>> =
        batch.iter().map(|item| &item.request).collect();
    requests.sort_unstable_by_key(|r| Arc::as_ptr(r));
    requests.dedup_by_key(|r| Arc::as_ptr(r));
    tracing::debug!(
        model = %shared.model,
        rows = batch.len(),
        padded_tokens = batch.len() * columns,
        requests = requests.len(),
        "running batch"
    );
    let model = [shared.model.as_str()];
    METRICS
        .batch_size
        .with_label_values(&model)
        .observe(batch.len() as f64);
    METRICS
        .batch_tokens
        .with_label_values(&model)
        .observe((batch.len() * columns) as f64);
    METRICS
        .batch_requests
        .with_label_values(&model)
        .observe(requests.len() as f64);
    let started = Instant::now();
    for request in &requests {
        request.first_run.get_or_init(|| started);
    }
    let result = engine.run(&inputs);
    let elapsed = started.elapsed();
    METRICS
        .inference_seconds
        .with_label_values(&model)
        .observe(elapsed.as_secs_f64());
    for request in requests {
        request
            .inference_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::AcqRel);
    }
    match result {
        Ok(outputs) if outputs.len() == batch.len() => {
            METRICS
                .tokens
                .with_label_values(&model)
                .inc_by(tokens as u64);
            for (item, output) in batch.into_iter().zip(outputs) {
                item.request.complete(item.index, output);
            }
        }
        result => {
            let error = match result {
                Ok(outputs) => format!(
                    "the engine returned {} outputs for {} inputs",
                    outputs.len(),
                    batch.len()
                ),
                Err(error) => format!("{error:#}"),
            };
            tracing::error!(model = %shared.model, %error, "batch failed");
            for item in batch {
                item.request.send(Err(BatchError::Inference(error.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests;
