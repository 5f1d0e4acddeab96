//! HTTP/1.1 codec: sans-I/O, zero-copy parsing of heads, chunked-body validation and
//! re-framing, and head encoding for the proxy's hot path.
//!
//! Where it sits: the proxy loop (`http::proxy`) owns the sockets and the `BytesMut` read
//! buffers; this module sees byte slices, and splits `Bytes` off a buffer only to re-frame a
//! chunked body without copying it. For each exchange the loop
//!
//! 1. feeds the read buffer to a [`RequestParser`] until it returns a [`RequestHead`] (offsets
//!    into the buffer), then splits the head off as `Bytes` without copying;
//! 2. writes the upstream head with [`encode_request_head`] into its write buffer;
//! 3. streams the body: `Length(n)` by counting bytes, `Chunked` through a [`Rechunker`] that
//!    validates framing and passes payload on as slices of the buffer, with every size line in
//!    canonical form (or no framing at all, for an HTTP/1.0 client);
//! 4. does the same for the response with [`ResponseParser`] and [`encode_response_head`], or
//!    answers by itself with [`write_simple_response`] when something is refused.
//!
//! ```ignore
//! use ringmesh_proxy::http::h1::*;
//!
//! let mut parser = RequestParser::new(HeadLimits::default());
//! let head = loop {
//!     // monoio: let (res, b) = conn.read(buf).await; buf = b; ...
//!     match parser.parse(&buf) {
//!         Ok(Some(head)) => break head,
//!         Ok(None) => continue, // read more
//!         Err(e) => {
//!             write_simple_response(e.status(), None, &[], e.reason().as_bytes(), true, &mut out);
//!             return; // write `out`, then close: nothing after a framing error can be trusted
//!         }
//!     }
//! };
//! let head_bytes = buf.split_to(head.len()).freeze(); // spans in `head` index into this
//! let route = routes.lookup(head.authority(&head_bytes), head.path_and_query(&head_bytes));
//! encode_request_head(&head, &head_bytes, &RequestEncode {
//!     client_ip: Some(peer.ip()), forwarded_proto: Some("http"), request_id: Some(&id),
//!     xfcc: Some(Xfcc::Sanitize),
//!     ..RequestEncode::passthrough(&head)
//! }, &mut upstream_out);
//! match head.framing() {
//!     BodyFraming::Length(mut left) => while left > 0 {
//!         // read; let n = min(left, buf.len()); forward buf.split_to(n); left -= n
//!     },
//!     BodyFraming::Chunked => {
//!         let mut re = Rechunker::new(ChunkedLimits::default(), ChunkedOut::Canonical);
//!         let mut segs = Segments::new();
//!         loop {
//!             let p = re.feed(&mut buf, &mut segs)?; // validates, splits off what may go
//!             forward(segs.drain());                 // payload as slices, canonical sizes
//!             if p.done { break; }                   // leftover bytes = next pipelined request
//!             // read more into buf
//!         }
//!     }
//!     BodyFraming::None | BodyFraming::CloseDelimited => {}
//! }
//! // response: ResponseParser::parse(&buf, head.method()) -> encode_response_head -> body
//! ```
//!
//! # What is refused
//!
//! The proxy must agree with every possible next hop about where a message ends, or an attacker
//! can hide a second request inside the first (request smuggling). Whatever the RFCs allow a
//! recipient to "handle" in several ways is refused here, and each refusal has its own
//! [`H1Error`] variant. For a request, [`H1Error::status`] gives the answer; for an upstream
//! response every error becomes a 502. After any of these, the connection is closed.
//!
//! | shape | variant | status |
//! |---|---|---|
//! | no complete head within `max_head_bytes` | `HeadTooLarge` | 431 |
//! | more than `max_headers` fields | `TooManyHeaders` | 431 |
//! | trailer section over `max_trailer_bytes` | `TrailersTooLarge` | 431 |
//! | a line ending in LF without CR (head, chunk line, trailers) | `BareLf` | 400 |
//! | a line starting with SP/HTAB: obs-fold, or whitespace before the first field | `ObsFold` | 400 |
//! | CR not followed by LF between lines | `Malformed` | 400 |
//! | method not a token (e.g. `G(T`, empty) | `InvalidMethod` | 400 |
//! | target with CTL, SP, DEL, non-ASCII or `#`; not origin-form, absolute-form (http/https, no userinfo), authority-form with port (CONNECT only) or `*` (OPTIONS only) | `InvalidTarget` | 400 |
//! | path (before `?`) with a percent-encoded control byte, `%00`-`%1F` or `%7F` | `EncodedControlInPath` | 400 |
//! | a well-formed CONNECT: a 2xx would make the connection a tunnel, which nothing here provides | `ConnectNotSupported` | 400 |
//! | version not `HTTP/d.d` (e.g. `http/1.1`, `HTTP/1`) | `InvalidVersion` | 400 |
//! | well-formed version other than 1.0 and 1.1 (`HTTP/2.0`, `HTTP/1.2`) | `UnsupportedVersion` | 505 |
//! | header name not a token, including a space before the colon | `InvalidHeaderName` | 400 |
//! | NUL or another CTL (except HTAB) in a header value | `InvalidHeaderValue` | 400 |
//! | HTTP/1.1 request without Host | `MissingHost` | 400 |
//! | more than one Host field | `MultipleHost` | 400 |
//! | Host value not an authority (`a b`, `user@h`, `h/x`, `h:port`) | `InvalidHost` | 400 |
//! | both Content-Length and Transfer-Encoding | `ContentLengthAndTransferEncoding` | 400 |
//! | Content-Length not 1*DIGIT (`+5`, `-1`, `0x5`, `5 5`, empty) or over u64 | `InvalidContentLength` | 400 |
//! | several Content-Length values that differ (`5` and `6`, or `5, 6`); identical ones are collapsed | `ConflictingContentLength` | 400 |
//! | Transfer-Encoding whose elements are not bare tokens (`chunked;x=1`, `chunked\x0b`, empty element), `chunked` missing, not last (`chunked, gzip`), or twice; `xchunked` | `InvalidTransferEncoding` | 400 |
//! | well-formed codings before a final `chunked` (`gzip, chunked`): we do not vouch for codings we do not decode | `UnsupportedTransferCoding` | 501 |
//! | Transfer-Encoding in an HTTP/1.0 message | `TransferEncodingInHttp10` | 400 |
//! | chunk size not hex, missing, whitespace after it not followed by `;` | `InvalidChunkSize` | 400 |
//! | chunk size over `max_chunk_size` ([`MAX_CHUNK_SIZE`], 2^52 - 1, by default) | `ChunkSizeTooLarge` | 400 |
//! | chunk extension not `;name[=token\|"quoted"]` with optional BWS | `InvalidChunkExtension` | 400 |
//! | chunk size line over `max_line_bytes` ([`MAX_CHUNK_LINE`], 1 KiB, by default) | `ChunkLineTooLong` | 400 |
//! | chunk data not followed by CRLF | `MissingChunkCrlf` | 400 |
//! | trailer line malformed (bad name, space before colon, CTL in value) | `InvalidTrailer` | 400 |
//! | `content-length`, `transfer-encoding`, `host` or `trailer` in trailers | `ForbiddenTrailer` | 400 |
//! | response: `101` when the request did not ask to upgrade ([`ResponseParser::upgrade_requested`]) | `UnrequestedUpgrade` | 502 |
//!
//! Re-framed rather than refused: zero-padded chunk sizes and chunk extensions are accepted and
//! forwarded as `<fewest hex digits>\r\n`, so no next hop sees a size line it could read
//! differently from us.
//!
//! Accepted on purpose: optional whitespace (SP/HTAB) around list elements (`chunked\t`,
//! ` 5 , 5`); leading empty lines (CRLF only) before a request line; `obs-text`
//! (bytes 0x80-0xFF) in header values and reason phrases, as opaque data; identical duplicate
//! Content-Length values; `HTTP/1.0` with `Connection: keep-alive`; an empty Host (a client
//! with no authority must send one); request targets with characters RFC 3986 does not allow
//! but that are harmless to framing (`|`, `{`, `"` ...), for compatibility with real clients.
//!
//! Responses follow the same rules, except that Host is not looked at, and their framing is
//! decided by the request method and status too: a response to HEAD, a 1xx, 204 or 304, and a
//! 2xx to CONNECT have no body; no Content-Length and no Transfer-Encoding means the body runs
//! until the upstream closes.

mod chunked;
mod encode;
mod error;
mod head;

pub use chunked::{
    write_chunk, write_chunk_header, ChunkedDecoder, ChunkedLimits, ChunkedOut, DecodeStep, FeedProgress, Rechunker,
    ScanProgress, Segments, COPY_BELOW, CRLF, LAST_CHUNK, MAX_CHUNK_LINE, MAX_CHUNK_SIZE,
};
pub use encode::{
    encode_request_head, encode_response_head, reason_phrase, valid_header_name, valid_header_value,
    write_simple_response, ConnectionHeader, HeaderOps, RequestEncode, ResponseEncode, Xfcc, NO_HEADER_OPS,
};
pub(crate) use encode::{put_field, put_framing};
pub use error::H1Error;
pub use head::{
    parse_request_head, parse_response_head, BodyFraming, ConnectionFlags, HeadLimits, HeadScanner, HeaderKind,
    HeaderSpan, Method, RequestHead, RequestParser, ResponseHead, ResponseParser, Span, TargetForm, HARD_MAX_HEADERS,
};
