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
