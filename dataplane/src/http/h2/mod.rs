//! HTTP/2: client connections (h2c with prior knowledge, told from HTTP/1.1 by the preface),
//! upstream connections shared per core, translation to and from HTTP/1.1, and the hand-off
//! of streams between workers.
//!
//! | module | holds |
//! |---|---|
//! | `io` | the preface sniff, and the socket as `h2` drives it (`monoio-compat`) |
//! | `server` | one client connection: settings, limits, keep-alive, dispatch of its streams |
//! | `handoff` | which worker serves a new stream; the workers' inboxes |
//! | `call` | one stream: routing, local answers (gRPC statuses for gRPC), the try loop |
//! | `upstream` | one try of a call, over an HTTP/2 or an HTTP/1.1 upstream |
//! | `from_h1` | one try of an HTTP/1.1 request over an HTTP/2 upstream |
//! | `client` | the per-core pool of HTTP/2 upstream connections |
//! | `headers` | header translation both ways |
//! | `bodies` | bodies across protocols, under flow control, with trailers |
//!
//! TLS with ALPN `h2` will enter at `server::serve` (a TLS stream instead of the sniffed
//! socket) and at `client::connect`; nothing else depends on the transport.

pub(crate) mod bodies;
pub(crate) mod call;
pub(crate) mod client;
pub(crate) mod from_h1;
pub mod handoff;
pub(crate) mod headers;
pub(crate) mod io;
pub(crate) mod server;
pub(crate) mod upstream;

use ringmesh_api::snapshot::Cluster;

/// Whether requests to this endpoint of `cluster` go over HTTP/2. `client_h2`: the request
/// came over HTTP/2 (for `useClientProtocol`).
// MERGE-SHIM: becomes `cluster.h2_to(endpoint, client_h2)` from the compiler.
pub(crate) fn upstream_is_h2(cluster: &Cluster, endpoint: usize, client_h2: bool) -> bool {
    let _ = client_h2;
    cluster.endpoints[endpoint]
        .labels
        .get("security.istio.io/tlsMode")
        .is_some_and(|v| v == "istio")
        || cluster.endpoints[endpoint]
            .labels
            .get("ringmesh.io/protocol")
            .is_some_and(|v| v == "h2")
}

/// Streams one upstream HTTP/2 connection may carry at once (`maxConcurrentStreams`).
// MERGE-SHIM: becomes `cluster.pool.max_concurrent_streams`.
pub(crate) fn max_concurrent_streams(cluster: &Cluster) -> u32 {
    let _ = cluster;
    u32::MAX
}
