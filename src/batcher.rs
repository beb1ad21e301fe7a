//! Dynamic micro-batching for one model: a worker thread owns the model's ONNX session and
//! a bounded queue of tokenized inputs from any number of requests, and runs them in batches
//! of similar length.
//!
//! Waiting policy: the worker takes whatever is queued the moment it is free, and never
//! waits for more. Under load, inputs pile up while a batch runs, so batches fill by
//! themselves; a lone request runs at once and pays no added latency. `scripts/bench`
//! measures both ends (concurrency 1 and 64) against the bare session.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::metrics::METRICS;
use crate::model::{Encoder, TokenSeq};

/// Bounds of the batches and the queue of one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most inputs in one run.
    pub max_batch_size: usize,
    /// Most padded tokens (rows × longest row) in one run; a single longer input still runs.
    pub max_batch_tokens: usize,
    /// Most inputs waiting; a request that does not fit gets 429 at once.
    pub max_queued_inputs: usize,
}

#[derive(Debug, thiserror::Error)]
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

/// A request's vectors, in input order, and where its time went.
#[derive(Debug)]
pub struct Completed {
    pub vectors: Vec<Vec<f32>>,
    /// From submission until its first input ran.
    pub queued: Duration,
    /// Summed duration of the runs that held its inputs.
    pub inference: Duration,
}

pub type Vectors = Result<Completed, BatchError>;

/// One request's inputs in flight: filled in by the worker as its batches complete.
struct Request {
    vectors: Mutex<Vec<Vec<f32>>>,
    remaining: AtomicUsize,
    cancelled: AtomicBool,
    reply: Mutex<Option<oneshot::Sender<Vectors>>>,
    submitted: Instant,
    first_run: OnceLock<Instant>,
    inference_nanos: AtomicU64,
}

impl Request {
    fn new(inputs: usize, reply: Option<oneshot::Sender<Vectors>>) -> Self {
        Self {
            vectors: Mutex::new(vec![Vec::new(); inputs]),
            remaining: AtomicUsize::new(inputs),
            cancelled: AtomicBool::new(false),
            reply: Mutex::new(reply),
            submitted: Instant::now(),
            first_run: OnceLock::new(),
            inference_nanos: AtomicU64::new(0),
        }
    }

    fn complete(&self, index: usize, vector: Vec<f32>) {
        self.vectors.lock().unwrap_or_else(|p| p.into_inner())[index] = vector;
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let vectors =
                std::mem::take(&mut *self.vectors.lock().unwrap_or_else(|p| p.into_inner()));
            let queued = self
                .first_run
                .get()
                .map_or(Duration::ZERO, |t| t.duration_since(self.submitted));
            let inference = Duration::from_nanos(self.inference_nanos.load(Ordering::Acquire));
            self.send(Ok(Completed {
                vectors,
                queued,
                inference,
            }));
        }
    }

    fn send(&self, result: Vectors) {
        if let Some(reply) = self.reply.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = reply.send(result);
        }
    }
}

struct Item {
    seq: TokenSeq,
    index: usize,
    request: Arc<Request>,
}

struct Queue {
    items: VecDeque<Item>,
    closed: bool,
}

struct Shared {
    model: String,
    limits: BatchLimits,
    queue: Mutex<Queue>,
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn report_depth(&self, depth: usize) {
        METRICS
            .queue_depth
            .with_label_values(&[self.model.as_str()])
            .set(depth as i64);
    }
}

pub struct Batcher {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

/// A submitted request's vectors, in input order. Dropping it before it resolves (the
/// client went away) withdraws the inputs that have not run yet.
pub struct Pending {
    request: Arc<Request>,
    reply: oneshot::Receiver<Vectors>,
}

impl Pending {
    pub async fn wait(mut self) -> Vectors {
        (&mut self.reply).await.unwrap_or(Err(BatchError::Stopped))
    }

    pub fn wait_blocking(mut self) -> Vectors {
        let reply = std::mem::replace(&mut self.reply, oneshot::channel().1);
        reply.blocking_recv().unwrap_or(Err(BatchError::Stopped))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.request.cancelled.store(true, Ordering::Release);
    }
}

impl Batcher {
    /// Starts the worker thread, which owns `encoder` from now on.
    pub fn start(model: &str, mut encoder: Encoder, limits: BatchLimits) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            model: model.to_string(),
            limits,
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
        });
        let worker_shared = shared.clone();
        let worker = std::thread::Builder::new()
            .name(format!("batcher {model}"))
            .spawn(move || run_worker(&worker_shared, &mut encoder))?;
        Ok(Self {
            shared,
            worker: Some(worker),
        })
    }

    /// Queues `seqs` as one request, or refuses at once when the queue cannot take them. A
    /// request is refused only while others wait, so even one larger than the whole queue
    /// runs on an idle model.
    pub fn submit(&self, seqs: Vec<TokenSeq>) -> Result<Pending, BatchError> {
        let (reply_tx, reply) = oneshot::channel();
        let request = Arc::new(Request::new(seqs.len(), Some(reply_tx)));
        if seqs.is_empty() {
            request.send(Ok(Completed {
                vectors: Vec::new(),
                queued: Duration::ZERO,
                inference: Duration::ZERO,
            }));
        } else {
            let mut queue = self.shared.lock();
            let queued = queue.items.len();
            let max = self.shared.limits.max_queued_inputs;
            if queued > 0 && queued + seqs.len() > max {
                return Err(BatchError::QueueFull {
                    model: self.shared.model.clone(),
                    queued,
                    max,
                });
            }
            queue
                .items
                .extend(seqs.into_iter().enumerate().map(|(index, seq)| Item {
                    seq,
                    index,
                    request: request.clone(),
                }));
            drop(queue);
            self.shared.ready.notify_one();
        }
        Ok(Pending { request, reply })
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_all();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

fn run_worker(shared: &Shared, encoder: &mut Encoder) {
    loop {
        let batch = {
            let mut queue = shared.lock();
            loop {
                let before = queue.items.len();
                queue
                    .items
                    .retain(|item| !item.request.cancelled.load(Ordering::Acquire));
                let dropped = before - queue.items.len();
                if dropped > 0 {
                    tracing::debug!(model = %shared.model, dropped, "dropped inputs of cancelled requests");
                }
                if !queue.items.is_empty() {
                    break;
                }
                if queue.closed {
                    return;
                }
                queue = shared.ready.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
            let batch = take_batch(&mut queue.items, &shared.limits);
            shared.report_depth(queue.items.len());
            batch
        };
        run_batch(shared, encoder, batch);
    }
}

/// The oldest input and the queued inputs closest to it in length, within the limits: the
/// oldest always goes (no input waits forever), and similar lengths keep padding small.
fn take_batch(items: &mut VecDeque<Item>, limits: &BatchLimits) -> Vec<Item> {
    let anchor = items[0].seq.len();
    let mut candidates: Vec<usize> = (1..items.len()).collect();
    candidates.sort_by_key(|&i| (items[i].seq.len().abs_diff(anchor), i));
    let mut chosen = vec![0];
    let mut longest = anchor;
    for i in candidates {
        if chosen.len() == limits.max_batch_size {
            break;
        }
        let longer = longest.max(items[i].seq.len());
        if (chosen.len() + 1) * longer > limits.max_batch_tokens {
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

fn run_batch(shared: &Shared, encoder: &mut Encoder, batch: Vec<Item>) {
    let seqs: Vec<&TokenSeq> = batch.iter().map(|item| &item.seq).collect();
    let columns = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut requests: Vec<&Arc<Request>> = batch.iter().map(|item| &item.request).collect();
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
    let started = Instant::now();
    for request in &requests {
        request.first_run.get_or_init(|| started);
    }
    let result = encoder.embed(&seqs);
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
        Ok(vectors) => {
            let tokens: usize = seqs.iter().map(|s| s.len()).sum();
            METRICS
                .tokens
                .with_label_values(&model)
                .inc_by(tokens as u64);
            for (item, vector) in batch.into_iter().zip(vectors) {
                item.request.complete(item.index, vector);
            }
        }
        Err(error) => {
            tracing::error!(model = %shared.model, %error, "batch failed");
            for item in batch {
                item.request
                    .send(Err(BatchError::Inference(error.to_string())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(lengths: &[usize]) -> VecDeque<Item> {
        let request = Arc::new(Request::new(0, None));
        lengths
            .iter()
            .enumerate()
            .map(|(index, &len)| Item {
                seq: TokenSeq {
                    ids: vec![1; len],
                    pool_from: 0,
                },
                index,
                request: request.clone(),
            })
            .collect()
    }

    fn lengths(batch: &[Item]) -> Vec<usize> {
        batch.iter().map(|i| i.seq.len()).collect()
    }

    const LIMITS: BatchLimits = BatchLimits {
        max_batch_size: 3,
        max_batch_tokens: 100,
        max_queued_inputs: 10,
    };

    #[test]
    fn groups_the_oldest_with_inputs_of_similar_length() {
        let mut queue = items(&[10, 50, 11, 30, 9, 12]);
        let batch = take_batch(&mut queue, &LIMITS);
        assert_eq!(lengths(&batch), [10, 11, 9]);
        assert_eq!(
            queue.iter().map(|i| i.seq.len()).collect::<Vec<_>>(),
            [50, 30, 12]
        );
    }

    #[test]
    fn respects_the_token_budget_but_always_takes_the_oldest() {
        let mut queue = items(&[60, 45, 40]);
        assert_eq!(lengths(&take_batch(&mut queue, &LIMITS)), [60]);
        assert_eq!(lengths(&take_batch(&mut queue, &LIMITS)), [45, 40]);
        let mut long = items(&[500]);
        assert_eq!(lengths(&take_batch(&mut long, &LIMITS)), [500]);
    }
}
