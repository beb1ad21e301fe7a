//! Prometheus metrics, served at `GET /metrics` in the text format: requests, latency,
//! queues, batches, inference, tokens and the model cache.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Gauge, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
    TextEncoder, register_gauge_with_registry, register_histogram_vec_with_registry,
    register_int_counter_vec_with_registry, register_int_counter_with_registry,
    register_int_gauge_vec_with_registry, register_int_gauge_with_registry,
};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub queue_depth: IntGaugeVec,
    pub batch_size: HistogramVec,
    pub batch_requests: HistogramVec,
    pub batch_tokens: HistogramVec,
    pub cancelled_inputs: IntCounterVec,
    pub inference_seconds: HistogramVec,
    pub run_wait_seconds: HistogramVec,
    pub tokens: IntCounterVec,
    pub models_loaded: IntGauge,
    pub model_device: IntGaugeVec,
    pub model_loads: IntCounterVec,
    pub model_load_seconds: HistogramVec,
    pub evictions: IntCounterVec,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub open_connections: IntGauge,
    pub connections_timed_out: IntCounter,
    pub connections_refused: IntCounterVec,
    pub body_bytes_reserved: IntGauge,
    pub bodies_refused: IntCounterVec,
    pub memory_trims: IntCounter,
    pub other_processes_cpu: Gauge,
    pub own_cpu: Gauge,
    pub run_core_wait: Gauge,
    pub cpu_contended: IntGauge,
    pub session_respins: IntCounterVec,
    pub batch_jobs: IntGaugeVec,
    pub batch_job_lines: IntCounterVec,
    pub batch_job_lines_queued: IntGauge,
    pub batch_upload_bytes: IntGauge,
}

/// Latency buckets from 1 ms to 60 s.
const SECONDS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0,
];

/// Buckets 1, 2, 4, ... 2^(n-1).
fn powers_of_two(n: u32) -> Vec<f64> {
    (0..n).map(|i| f64::from(1u32 << i)).collect()
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new_custom(Some("embedserve".into()), None).expect("registry");
        let r = &registry;
        // Names are constants and registered once: a failure here is a programming error.
        let metrics = (|| -> prometheus::Result<Self> {
            Ok(Self {
                requests: register_int_counter_vec_with_registry!(
                    "requests_total",
                    "HTTP requests by route, model and status code",
                    &["route", "model", "status"],
                    r
                )?,
                request_seconds: register_histogram_vec_with_registry!(
                    "request_duration_seconds",
                    "HTTP request latency by route and model",
                    &["route", "model"],
                    SECONDS.to_vec(),
                    r
                )?,
                queue_depth: register_int_gauge_vec_with_registry!(
                    "queue_depth",
                    "Inputs waiting for inference, by model",
                    &["model"],
                    r
                )?,
                batch_size: register_histogram_vec_with_registry!(
                    "batch_size",
                    "Inputs per inference run",
                    &["model"],
                    powers_of_two(8),
                    r
                )?,
                batch_requests: register_histogram_vec_with_registry!(
                    "batch_requests",
                    "Requests whose inputs shared one inference run",
                    &["model"],
                    powers_of_two(8),
                    r
                )?,
                batch_tokens: register_histogram_vec_with_registry!(
                    "batch_tokens",
                    "Padded tokens (rows x longest row) per inference run",
                    &["model"],
                    powers_of_two(16),
                    r
                )?,
                cancelled_inputs: register_int_counter_vec_with_registry!(
                    "cancelled_inputs_total",
                    "Queued inputs dropped unrun because their client went away",
                    &["model"],
                    r
                )?,
                inference_seconds: register_histogram_vec_with_registry!(
                    "inference_duration_seconds",
                    "Time of one inference run, pooling included",
                    &["model"],
                    SECONDS.to_vec(),
                    r
                )?,
                run_wait_seconds: register_histogram_vec_with_registry!(
                    "run_wait_seconds",
                    "Time a batch waited for its turn on the device, while other models ran",
                    &["model"],
                    vec![
                        0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                        1.0, 2.5, 5.0
                    ],
                    r
                )?,
                tokens: register_int_counter_vec_with_registry!(
                    "tokens_total",
                    "Tokens embedded, by model",
                    &["model"],
                    r
                )?,
                models_loaded: register_int_gauge_with_registry!(
                    "models_loaded",
                    "Models in memory",
                    r
                )?,
                model_device: register_int_gauge_vec_with_registry!(
                    "model_device",
                    "Models in memory, by the device they run on (cpu, cuda:N)",
                    &["model", "device"],
                    r
                )?,
                model_loads: register_int_counter_vec_with_registry!(
                    "model_loads_total",
                    "Model loads by model and result (ok, error)",
                    &["model", "result"],
                    r
                )?,
                model_load_seconds: register_histogram_vec_with_registry!(
                    "model_load_duration_seconds",
                    "Time to load a model",
                    &["model"],
                    SECONDS.to_vec(),
                    r
                )?,
                evictions: register_int_counter_vec_with_registry!(
                    "model_evictions_total",
                    "Models evicted, by model and reason (lru, memory, idle, admin)",
                    &["model", "reason"],
                    r
                )?,
                cache_hits: register_int_counter_with_registry!(
                    "cache_hits_total",
                    "Requests for a loaded model",
                    r
                )?,
                cache_misses: register_int_counter_with_registry!(
                    "cache_misses_total",
                    "Requests that had to load a model",
                    r
                )?,
                open_connections: register_int_gauge_with_registry!(
                    "open_connections",
                    "Client connections open (at most server.max_connections)",
                    r
                )?,
                connections_timed_out: register_int_counter_with_registry!(
                    "connections_timed_out_total",
                    "Connections closed for sending no request head in time, idling past the \
                     keep-alive timeout, or idling while the server drained",
                    r
                )?,
                batch_jobs: register_int_gauge_vec_with_registry!(
                    "batch_jobs",
                    "Batch API jobs by status",
                    &["status"],
                    r
                )?,
                batch_job_lines: register_int_counter_vec_with_registry!(
                    "batch_job_lines_total",
                    "Lines of batch jobs run, by outcome: completed (answered 200) or failed",
                    &["outcome"],
                    r
                )?,
                batch_job_lines_queued: register_int_gauge_with_registry!(
                    "batch_job_lines_queued",
                    "Lines that validating and running batch jobs have left",
                    r
                )?,
                batch_upload_bytes: register_int_gauge_with_registry!(
                    "batch_upload_bytes",
                    "Bytes that Files API uploads still arriving hold against \
                     batches.max_disk_bytes (announced, or received past that)",
                    r
                )?,
                connections_refused: register_int_counter_vec_with_registry!(
                    "connections_refused_total",
                    "Connections closed at once, by reason: per_ip (the client's address held \
                     server.max_connections_per_ip) or shed (all slots held: the oldest \
                     connection with no request in flight made room for a new one)",
                    &["reason"],
                    r
                )?,
                body_bytes_reserved: register_int_gauge_with_registry!(
                    "body_bytes_reserved",
                    "Bytes of server.body_buffer_budget reserved by request bodies being read \
                     and parsed",
                    r
                )?,
                bodies_refused: register_int_counter_vec_with_registry!(
                    "bodies_refused_total",
                    "Request bodies given up, by reason: timeout (not complete within \
                     server.body_timeout, 408) or budget (no room in \
                     server.body_buffer_budget: for a body's first 64 KiB within \
                     body_timeout, at once for the rest; 503)",
                    &["reason"],
                    r
                )?,
                memory_trims: register_int_counter_with_registry!(
                    "memory_trims_total",
                    "Times freed memory was handed back to the operating system after large \
                     requests",
                    r
                )?,
                other_processes_cpu: register_gauge_with_registry!(
                    "other_processes_cpu_cores",
                    "Cores that other processes (and the host, as steal) kept busy over the \
                     last second; sampled only while runtime.spinning is adaptive",
                    r
                )?,
                own_cpu: register_gauge_with_registry!(
                    "own_cpu_cores",
                    "Cores this process kept busy over the last second",
                    r
                )?,
                run_core_wait: register_gauge_with_registry!(
                    "run_core_wait_ratio",
                    "Share of adaptive sessions' run time their thread waited for a core, over \
                     the last second in which they ran at least 100 ms",
                    r
                )?,
                cpu_contended: register_int_gauge_with_registry!(
                    "cpu_contended",
                    "1 while other processes take the cores this process's runs use, so that \
                     CPU sessions do not spin (runtime.spinning = adaptive)",
                    r
                )?,
                session_respins: register_int_counter_vec_with_registry!(
                    "session_respins_total",
                    "CPU sessions rebuilt to follow the machine's load, by the spinning they \
                     took (never while contended, adaptive once the cores are free)",
                    &["spinning"],
                    r
                )?,
                registry: registry.clone(),
            })
        })();
        metrics.expect("metric definitions are valid and unique")
    }

    /// Every metric in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding never fails");
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
