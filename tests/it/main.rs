//! The integration tests, in one binary: each module drives the built server over real HTTP
//! (or, in `in_process`, the router itself), with the models in ../shared/models.
//!
//! Tests run two at a time (one per core); those that measure the machine (CPU, memory,
//! latency) take it alone through `common::alone`.

mod common;

mod abuse;
mod api;
mod batches;
mod batching;
mod cache;
mod cli;
mod contention;
mod folders;
mod hostile;
mod hub;
mod in_process;
mod kinds;
mod ops;
mod quantize;
mod reference;
mod rerank;
mod tei;
mod truncation;
