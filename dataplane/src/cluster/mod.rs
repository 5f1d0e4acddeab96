//! Upstream side of step 7 ("forward"): the per-core connection pool and connecting.
//!
//! Each worker owns one [`pool::UpstreamPool`]; connections never move between cores, so a
//! checkout is a `Vec::pop` on this core's memory. Connecting has a timeout and reports
//! failures as [`crate::error::ProxyError`]s that the retry logic understands.

pub mod breaker;
pub mod pool;
