//! The sampling decision and the ids of a hop, drawn from the worker's generator.
//!
//! A decision that came with the request is kept (W3C's `sampled` flag, B3's sampling state or
//! debug flag), so every hop of a trace agrees; only a request without one is sampled here,
//! with probability `spec.telemetry.tracing.sampling`. One draw of the per-core generator (no
//! shared state, no syscall) per decision.

use super::context::{Formats, Incoming};
use super::TraceContext;
use crate::rng::FastRng;

/// `true` with probability `rate` (0..=1): one 64-bit draw compared against `rate` scaled to
/// 2⁶⁴; 0 and 1 draw nothing.
pub(crate) fn sample(rng: &FastRng, rate: f64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    if rate <= 0.0 || rate.is_nan() {
        return false;
    }
    // 53 random bits as a fraction in [0, 1): exact in an f64.
    ((rng.next_u64() >> 11) as f64) * (1.0 / (1u64 << 53) as f64) < rate
}

/// A random non-zero 64-bit id (zero is invalid in W3C and B3).
fn nonzero(rng: &FastRng) -> u64 {
    rng.next_u64().max(1)
}

/// This hop's context: the caller's trace with a new span whose parent is the caller's span,
/// or a new trace. The decision is the caller's when it made one, else sampled at `rate`.
pub(crate) fn begin(rng: &FastRng, rate: f64, incoming: &Incoming) -> TraceContext {
    let span_id = nonzero(rng).to_be_bytes();
    let formats = if incoming.formats == Formats::default() {
        Formats::STARTED_HERE
    } else {
        incoming.formats
    };
    match incoming.parent {
        Some(p) => TraceContext {
            trace_id: p.trace_id,
            span_id,
            parent_span_id: Some(p.span_id),
            sampled: p.debug || p.sampled.unwrap_or_else(|| sample(rng, rate)),
            debug: p.debug,
            short_trace_id: p.short_trace_id,
            formats,
            request_id: None,
        },
        None => {
            let mut trace_id = [0u8; 16];
            trace_id[..8].copy_from_slice(&rng.next_u64().to_be_bytes());
            trace_id[8..].copy_from_slice(&nonzero(rng).to_be_bytes());
            TraceContext {
                trace_id,
                span_id,
                parent_span_id: None,
                sampled: incoming.debug || incoming.decision.unwrap_or_else(|| sample(rng, rate)),
                debug: incoming.debug,
                short_trace_id: false,
                formats,
                request_id: None,
            }
        }
    }
}
