//! Prometheus metrics, served at `GET /metrics` in the text format: requests, latency,
//! queues, batches, inference, tokens and the model cache.

use std::sync::LazyLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_seconds: HistogramVec,
    pub queue_depth: IntGaugeVec,
    pub batch_size: HistogramVec,
    pub batch_tokens: HistogramVec,
    pub inference_seconds: HistogramVec,
    pub tokens: IntCounterVec,
    pub models_loaded: IntGauge,
    pub model_loads: IntCounterVec,
    pub model_load_seconds: HistogramVec,
    pub evictions: IntCounterVec,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
}

/// Latency buckets from 1 ms to 60 s.
const SECONDS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0,
];

fn histogram(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid histogram")
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter")
}

impl Metrics {
    fn new() -> Self {
        let pow2 = |n: u32| (0..n).map(|i| f64::from(1u32 << i)).collect::<Vec<_>>();
        let metrics = Self {
            registry: Registry::new_custom(Some("embedserve".into()), None).expect("registry"),
            requests: counter(
                "requests_total",
                "HTTP requests by route, model and status code",
                &["route", "model", "status"],
            ),
            request_seconds: histogram(
                "request_duration_seconds",
                "HTTP request latency by route",
                &["route"],
                SECONDS.to_vec(),
            ),
            queue_depth: IntGaugeVec::new(
                Opts::new("queue_depth", "Inputs waiting for inference, by model"),
                &["model"],
            )
            .expect("valid gauge"),
            batch_size: histogram(
                "batch_size",
                "Inputs per inference run",
                &["model"],
                pow2(8),
            ),
            batch_tokens: histogram(
                "batch_tokens",
                "Padded tokens (rows x longest row) per inference run",
                &["model"],
                pow2(16),
            ),
            inference_seconds: histogram(
                "inference_duration_seconds",
                "Time of one inference run, pooling included",
                &["model"],
                SECONDS.to_vec(),
            ),
            tokens: counter("tokens_total", "Tokens embedded, by model", &["model"]),
            models_loaded: IntGauge::new("models_loaded", "Models in memory").expect("valid gauge"),
            model_loads: counter(
                "model_loads_total",
                "Model loads by model and result (ok, error)",
                &["model", "result"],
            ),
            model_load_seconds: histogram(
                "model_load_duration_seconds",
                "Time to load a model",
                &["model"],
                SECONDS.to_vec(),
            ),
            evictions: counter(
                "model_evictions_total",
                "Models evicted, by model and reason (lru, memory, idle, admin)",
                &["model", "reason"],
            ),
            cache_hits: IntCounter::new("cache_hits_total", "Requests for a loaded model")
                .expect("valid counter"),
            cache_misses: IntCounter::new(
                "cache_misses_total",
                "Requests that had to load a model",
            )
            .expect("valid counter"),
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 13] = [
            Box::new(metrics.requests.clone()),
            Box::new(metrics.request_seconds.clone()),
            Box::new(metrics.queue_depth.clone()),
            Box::new(metrics.batch_size.clone()),
            Box::new(metrics.batch_tokens.clone()),
            Box::new(metrics.inference_seconds.clone()),
            Box::new(metrics.tokens.clone()),
            Box::new(metrics.models_loaded.clone()),
            Box::new(metrics.model_loads.clone()),
            Box::new(metrics.model_load_seconds.clone()),
            Box::new(metrics.evictions.clone()),
            Box::new(metrics.cache_hits.clone()),
            Box::new(metrics.cache_misses.clone()),
        ];
        for collector in collectors {
            metrics
                .registry
                .register(collector)
                .expect("unique metric names");
        }
        metrics
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
