//! Counters of request mirroring (VirtualService `mirror`/`mirrors`), per worker: what was
//! copied, what came back, and every copy not made, by why.

counter_set! {
    /// One worker's mirror counters.
    MirrorStats,
    /// Mirror counters summed over workers.
    MirrorTotals {
    started => "ringmesh_mirror_requests_total", "Copies of requests sent to a mirror cluster.";
    answered => "ringmesh_mirror_answered_total", "Mirrored copies whose response head came back (any status; the answer is discarded).";
    failed => "ringmesh_mirror_failed_total", "Mirrored copies that got no answer: no endpoint, connect failure, reset, or the route's timeout (15 s without one).";
    dropped_busy => "ringmesh_mirror_dropped_busy_total", "Copies not made because the worker already had its most mirrored copies in flight (a slow mirror).";
    skipped_streamed_body => "ringmesh_mirror_skipped_streamed_body_total", "Copies not made because the request's body streams (larger than 16 KiB, or not all arrived with the head).";
    skipped_unsupported => "ringmesh_mirror_skipped_unsupported_total", "Copies not made because the request came over HTTP/2, upgrades the connection, or the mirror's endpoint takes only HTTP/2 or mutual TLS.";
    }
}
