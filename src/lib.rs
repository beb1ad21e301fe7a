//! embedserve: an OpenAI-compatible embedding server for sentence-transformers models
//! exported to ONNX. A request goes `api` → `cache` (via `catalog`) → `model` (tokenize) → `batcher` → back to `api`.

pub mod api;
pub mod batch;
pub mod batcher;
pub mod cache;
pub mod catalog;
pub mod commands;
pub mod config;
pub mod connections;
pub mod contention;
pub mod echo;
pub mod loader;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod quantize;
pub mod runtime;
pub mod scheduler;
pub mod server;
pub mod units;
