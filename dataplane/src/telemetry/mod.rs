//! Telemetry: per-core counters and histograms, summed only when someone asks.
//!
//! Each worker owns its [`stats::WorkerStats`] shard: plain `Cell<u64>` counters and an
//! HdrHistogram, written without atomics on the request path. The admin side sends each worker a
//! query over a channel and merges the copies it gets back ([`stats::StatsTotals`]); nothing on
//! the request path ever waits for that. Log lines a worker may repeat for every request go
//! through its [`log_limit::LogLimiter`].

pub mod capture;
pub mod log_limit;
pub mod prometheus;
pub mod security;
pub mod stats;
