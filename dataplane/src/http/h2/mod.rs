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
pub mod io;
pub(crate) mod server;
pub(crate) mod upstream;

/// For the fuzz targets and property tests: an HTTP/1.1 request head through the translation to
/// HTTP/2 and back. Returns `None` when the parser refuses the head; otherwise checks that the
/// HTTP/2 request is well-formed (lower-case names, no connection-specific field) and that the
/// HTTP/1.1 head made from it parses again with the same method and path, and returns it.
///
/// `limits` are the parser's for `raw`: a head the proxy translated carries the fields it adds
/// (`host`, `x-forwarded-*`, `x-request-id`), so translating it again needs room for them.
#[doc(hidden)]
pub fn h1_head_through_h2(raw: &[u8], limits: crate::http::h1::HeadLimits) -> Option<Vec<u8>> {
    use crate::http::h1::{HeadLimits, RequestParser};
    let head = RequestParser::new(limits).parse(raw).ok()??;
    let src = &raw[..head.len()];
    let ops = ringmesh_api::snapshot::HeaderOps::default();
    let id = [b'0'; 36];
    let out = headers::Outgoing::from_h1(
        &head,
        src,
        &headers::Rewrite {
            path: None,
            authority: None,
            ops: &ops,
            client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            request_id: &id,
            xfcc: crate::http::h1::Xfcc::Sanitize,
            trace: None,
        },
    );
    let req = out.to_h2();
    for (name, _) in req.headers() {
        let n = name.as_str();
        assert!(!n.bytes().any(|b| b.is_ascii_uppercase()), "upper-case name {n}");
        assert!(
            !matches!(
                n,
                "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade" | "host"
            ),
            "connection-specific field {n} crossed"
        );
    }
    let mut again = bytes::BytesMut::new();
    out.encode_h1(&mut again);
    let back = RequestParser::new(HeadLimits {
        max_head_bytes: usize::MAX,
        max_headers: usize::MAX,
    })
    .parse(&again)
    .unwrap_or_else(|e| panic!("re-encoded head refused ({e}): {:?}", String::from_utf8_lossy(&again)))
    .expect("a whole head");
    assert_eq!(back.method().as_bytes(&again), head.method().as_bytes(src));
    Some(again.to_vec())
}
