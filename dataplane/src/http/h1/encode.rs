//! Writing heads: the forwarded request, the forwarded response, and locally generated answers.
//!
//! This is the last step before bytes leave the worker. The proxy loop has a parsed head and the
//! bytes it was parsed from; these functions write the head the next hop should see into a
//! `BytesMut` in one pass: start line, the original fields minus hop-by-hop ones (RFC 9110
//! §7.6.1) and minus what the route removes, the route's set/add operations, the proxy's own
//! fields (`x-forwarded-for`, `x-forwarded-proto`, `x-request-id`, `x-forwarded-client-cert`,
//! and the trace context when tracing is on) and framing fields that match how the body is actually forwarded. Hop-by-hop fields were
//! classified at parse time ([`HeaderKind`]), so the common case compares no strings. Bodies
//! are never touched here. Nothing here allocates beyond growing `dst`, reads a clock, or draws
//! random numbers (the caller passes a generated request id, the connection's XFCC element and
//! the formatted trace fields).

use std::fmt::Write as _;
use std::net::IpAddr;

use bytes::{BufMut, BytesMut};
use http::HeaderValue;

use super::head::{BodyFraming, HeaderKind, HeaderSpan, RequestHead, ResponseHead, TargetForm};
use crate::telemetry::trace::is_propagation_field;

/// Route header operations, applied to the original fields before the proxy adds its own.
///
/// Generic over the string type so that a compiled route can lend its `Vec<(String, String)>`
/// or `Vec<(Bytes, Bytes)>` without building anything per request. Names are compared
/// case-insensitively. Names and values must have been validated when the config was compiled
/// ([`valid_header_name`], [`valid_header_value`]); operations on fields the codec owns
/// (hop-by-hop fields, `host`, `content-length`) are ignored so a route can never break framing.
#[derive(Debug, Clone, Copy)]
pub struct HeaderOps<'a, N = &'a str, V = &'a str> {
    /// Drop every original field with one of these names.
    pub remove: &'a [N],
    /// Drop every original field with this name, then write this one.
    pub set: &'a [(N, V)],
    /// Write this field in addition to the originals.
    pub add: &'a [(N, V)],
}

/// No header operations.
pub const NO_HEADER_OPS: HeaderOps<'static, &'static str, &'static str> = HeaderOps {
    remove: &[],
    set: &[],
    add: &[],
};

impl<N, V> Default for HeaderOps<'_, N, V> {
    fn default() -> Self {
        HeaderOps {
            remove: &[],
            set: &[],
            add: &[],
        }
    }
}

/// What to write in the `Connection` field of a forwarded head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnectionHeader {
    /// Nothing: HTTP/1.1 persistent by default.
    #[default]
    None,
    /// `connection: close`: this is the last message on the connection.
    Close,
    /// `connection: keep-alive`: for an HTTP/1.0 peer that asked for it.
    KeepAlive,
    /// `connection: upgrade`, and the original `Upgrade` field is kept: a tunnelled upgrade.
    Upgrade,
}

/// What the proxy does with `x-forwarded-client-cert` (XFCC), the field through which an app
/// behind an Istio sidecar learns who called it (Envoy's `forward_client_cert_details`).
///
/// Istio's sidecars set it one way on each side, and so does ringmesh: an inbound listener
/// appends an element naming the peer of a mutual-TLS connection (`APPEND_FORWARD`) and removes
/// the field from plaintext requests, and an outbound listener removes what the app sent
/// (`SANITIZE`) — so that the only XFCC an app can see is one a proxy wrote after verifying a
/// certificate, never one a client made up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Xfcc<'a> {
    /// Remove every XFCC field the request carries.
    Sanitize,
    /// Keep the request's XFCC values and add this element after them, as one field (Envoy
    /// joins them with `,` too: an app that reads only the first field of a name still sees
    /// every element). The element is made once per connection (`tls::xfcc`); a
    /// `HeaderValue` because it is a checked field value, shared with the HTTP/2 encoder
    /// without a copy.
    Append(&'a HeaderValue),
}

impl Xfcc<'_> {
    /// Bytes the proxy's own XFCC field may add to a head (name, separator, element): room a
    /// caller sizing the head's buffer leaves for it, so that writing it never grows the buffer.
    pub fn room(self) -> usize {
        match self {
            Xfcc::Sanitize => 0,
            Xfcc::Append(ours) => "x-forwarded-client-cert: ,\r\n".len() + ours.len(),
        }
    }
}

/// How to forward a request head upstream.
#[derive(Debug, Clone, Copy)]
pub struct RequestEncode<'a, N = &'a str, V = &'a str> {
    /// Rewritten request target (e.g. a prefix rewrite); `None` keeps the original
    /// (absolute-form is turned into origin-form).
    pub target: Option<&'a [u8]>,
    /// `host` to send (authority rewrite); `None` keeps the request's authority.
    pub authority: Option<&'a [u8]>,
    /// The route's header operations.
    pub ops: HeaderOps<'a, N, V>,
    /// Appended to `x-forwarded-for` (after any value the client sent); `None` leaves the
    /// field alone.
    pub client_ip: Option<IpAddr>,
    /// Replaces `x-forwarded-proto` (`"http"` / `"https"`); `None` leaves it alone.
    pub forwarded_proto: Option<&'a str>,
    /// Sent as `x-request-id` when the request has none (the client's id is always kept).
    pub request_id: Option<&'a [u8]>,
    /// What to do with `x-forwarded-client-cert`; `None` leaves it alone.
    pub xfcc: Option<Xfcc<'a>>,
    /// This hop's trace context (`telemetry::trace`): the request's own propagation fields
    /// (`traceparent`, `b3`, `x-b3-*`; not `tracestate`) are left out and these are written
    /// instead; `None` (tracing off) leaves them alone.
    pub trace: Option<&'a [(&'static str, &'a [u8])]>,
    /// How the body is forwarded: `Length(n)` writes `content-length: n`, `Chunked` writes
    /// `transfer-encoding: chunked`, `None` writes neither.
    pub framing: BodyFraming,
    /// What to write in `connection`.
    pub connection: ConnectionHeader,
}

impl<'a> RequestEncode<'a> {
    /// Forward as received: same target, authority and framing, no added fields. Change
    /// fields with struct update syntax, and the route's operations with [`Self::with_ops`].
    pub fn passthrough(head: &RequestHead) -> Self {
        RequestEncode {
            target: None,
            authority: None,
            ops: HeaderOps::default(),
            client_ip: None,
            forwarded_proto: None,
            request_id: None,
            xfcc: None,
            trace: None,
            framing: head.framing(),
            connection: if head.connection().upgrade {
                ConnectionHeader::Upgrade
            } else {
                ConnectionHeader::None
            },
        }
    }
}

impl<'a, N, V> RequestEncode<'a, N, V> {
    /// The same options with other header operations (of any string type).
    pub fn with_ops<N2, V2>(self, ops: HeaderOps<'a, N2, V2>) -> RequestEncode<'a, N2, V2> {
        RequestEncode {
            target: self.target,
            authority: self.authority,
            ops,
            client_ip: self.client_ip,
            forwarded_proto: self.forwarded_proto,
            request_id: self.request_id,
            xfcc: self.xfcc,
            trace: self.trace,
            framing: self.framing,
            connection: self.connection,
        }
    }
}

/// How to forward a response head downstream.
#[derive(Debug, Clone, Copy)]
pub struct ResponseEncode<'a, N = &'a str, V = &'a str> {
    /// The route's response header operations.
    pub ops: HeaderOps<'a, N, V>,
    /// How the body is forwarded (e.g. `Chunked` to re-frame a close-delimited body for a
    /// keep-alive client). `None` keeps an original `content-length` (it describes the
    /// representation in answers to HEAD and in 304s) except on 1xx and 204.
    pub framing: BodyFraming,
    /// What to write in `connection`.
    pub connection: ConnectionHeader,
}

impl<'a> ResponseEncode<'a> {
    /// Forward as received; see [`RequestEncode::passthrough`].
    pub fn passthrough(head: &ResponseHead) -> Self {
        ResponseEncode {
            ops: HeaderOps::default(),
            framing: head.framing(),
            connection: if head.status() == 101 {
                ConnectionHeader::Upgrade
            } else {
                ConnectionHeader::None
            },
        }
    }
}

impl<'a, N, V> ResponseEncode<'a, N, V> {
    /// The same options with other header operations (of any string type).
    pub fn with_ops<N2, V2>(self, ops: HeaderOps<'a, N2, V2>) -> ResponseEncode<'a, N2, V2> {
        ResponseEncode {
            ops,
            framing: self.framing,
            connection: self.connection,
        }
    }
}

/// Write the request head to send upstream. `src` is the buffer (or frozen head) `head` was
/// parsed from. Always speaks HTTP/1.1 to the next hop.
pub fn encode_request_head<N: AsRef<[u8]>, V: AsRef<[u8]>>(
    head: &RequestHead,
    src: &[u8],
    opts: &RequestEncode<'_, N, V>,
    dst: &mut BytesMut,
) {
    let trace_room: usize = opts
        .trace
        .map_or(0, |t| t.iter().map(|(n, v)| n.len() + v.len() + 4).sum());
    dst.reserve(head.len() + 128 + opts.xfcc.map_or(0, Xfcc::room) + trace_room);
    dst.put_slice(head.method().as_bytes(src));
    dst.put_u8(b' ');
    match opts.target {
        Some(t) => dst.put_slice(t),
        None => {
            let t = head.path_and_query(src);
            // absolute-form `http://h` or `http://h?q` has an empty path: origin-form needs '/'.
            if head.target_form() == TargetForm::Absolute && !t.starts_with(b"/") {
                dst.put_u8(b'/');
            }
            dst.put_slice(t);
        }
    }
    dst.put_slice(b" HTTP/1.1\r\n");

    // Host first, as RFC 9112 §3.2 asks; always present in HTTP/1.1 even if empty.
    dst.put_slice(b"host: ");
    if let Some(a) = opts.authority.or_else(|| head.authority(src)) {
        dst.put_slice(a);
    }
    dst.put_slice(CRLF);

    let keep_upgrade = opts.connection == ConnectionHeader::Upgrade;
    let mut has_request_id = false;
    for h in head.headers() {
        match h.kind() {
            HeaderKind::Host | HeaderKind::ContentLength => continue,
            HeaderKind::Upgrade if keep_upgrade => {}
            k if k.is_hop_by_hop() => continue,
            HeaderKind::XForwardedFor if opts.client_ip.is_some() => continue, // merged below
            HeaderKind::XForwardedProto if opts.forwarded_proto.is_some() => continue,
            HeaderKind::XForwardedClientCert if opts.xfcc.is_some() => continue, // dropped or merged below
            HeaderKind::Other if opts.trace.is_some() && is_propagation_field(h.name(src)) => continue, // ours below
            _ => {}
        }
        if head.connection().extra_tokens && named_by_connection(head.headers(), src, h) {
            continue;
        }
        if removed_by_ops(&opts.ops, src, h) {
            continue;
        }
        has_request_id |= h.kind() == HeaderKind::XRequestId;
        put_field(dst, h.name(src), h.value(src));
    }
    has_request_id |= write_ops(&opts.ops, dst);

    if let Some(ip) = opts.client_ip {
        dst.put_slice(b"x-forwarded-for: ");
        for h in head.headers() {
            if h.kind() == HeaderKind::XForwardedFor && !removed_by_ops(&opts.ops, src, h) {
                let v = h.value(src);
                if !v.is_empty() {
                    dst.put_slice(v);
                    dst.put_slice(b", ");
                }
            }
        }
        // IpAddr's Display writes straight into the buffer; no String in between.
        let _ = write!(dst, "{ip}");
        dst.put_slice(CRLF);
    }
    if let Some(Xfcc::Append(ours)) = opts.xfcc {
        dst.put_slice(b"x-forwarded-client-cert: ");
        for h in head.headers() {
            if h.kind() == HeaderKind::XForwardedClientCert && !removed_by_ops(&opts.ops, src, h) {
                let v = h.value(src);
                if !v.is_empty() {
                    dst.put_slice(v);
                    dst.put_u8(b',');
                }
            }
        }
        dst.put_slice(ours.as_bytes());
        dst.put_slice(CRLF);
    }
    if let Some(proto) = opts.forwarded_proto {
        put_field(dst, b"x-forwarded-proto", proto.as_bytes());
    }
    if let (false, Some(id)) = (has_request_id, opts.request_id) {
        put_field(dst, b"x-request-id", id);
    }
    for (name, value) in opts.trace.unwrap_or_default() {
        put_field(dst, name.as_bytes(), value);
    }
    put_framing(dst, opts.framing);
    put_connection(dst, opts.connection);
    dst.put_slice(CRLF);
}

/// Write the response head to send downstream. `src` is the buffer `head` was parsed from.
pub fn encode_response_head<N: AsRef<[u8]>, V: AsRef<[u8]>>(
    head: &ResponseHead,
    src: &[u8],
    opts: &ResponseEncode<'_, N, V>,
    dst: &mut BytesMut,
) {
    dst.reserve(head.len() + 64);
    let status = head.status();
    put_status_line(dst, status, head.reason(src));

    // 1xx and 204 never carry content-length (RFC 9110 §8.6); a HEAD answer or a 304 keeps the
    // original one, which describes the representation rather than this message's body.
    let keep_content_length = opts.framing == BodyFraming::None && !(100..200).contains(&status) && status != 204;
    let keep_upgrade = opts.connection == ConnectionHeader::Upgrade;
    for h in head.headers() {
        match h.kind() {
            HeaderKind::ContentLength if keep_content_length => {}
            HeaderKind::ContentLength => continue,
            HeaderKind::Upgrade if keep_upgrade => {}
            k if k.is_hop_by_hop() => continue,
            _ => {}
        }
        if head.connection().extra_tokens && named_by_connection(head.headers(), src, h) {
            continue;
        }
        if removed_by_ops(&opts.ops, src, h) {
            continue;
        }
        put_field(dst, h.name(src), h.value(src));
    }
    write_ops(&opts.ops, dst);
    put_framing(dst, opts.framing);
    put_connection(dst, opts.connection);
    dst.put_slice(CRLF);
}

/// Write a whole response the proxy answers by itself (errors, redirects, direct responses):
/// status line, `extra_headers`, `content-length` (except for 1xx/204/304), `connection: close`
/// when `close`, and `body`. `reason` defaults to [`reason_phrase`].
///
/// The caller answering a HEAD request should pass an empty body.
pub fn write_simple_response(
    status: u16,
    reason: Option<&str>,
    extra_headers: &[(&str, &str)],
    body: &[u8],
    close: bool,
    dst: &mut BytesMut,
) {
    dst.reserve(64 + body.len());
    let reason = reason.unwrap_or_else(|| reason_phrase(status));
    put_status_line(dst, status, reason.as_bytes());
    for (name, value) in extra_headers {
        debug_assert!(valid_header_name(name.as_bytes()) && valid_header_value(value.as_bytes()));
        put_field(dst, name.as_bytes(), value.as_bytes());
    }
    let bodiless = (100..200).contains(&status) || status == 204 || status == 304;
    if !bodiless {
        dst.put_slice(b"content-length: ");
        dst.put_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        dst.put_slice(CRLF);
    }
    if close {
        dst.put_slice(b"connection: close\r\n");
    }
    dst.put_slice(CRLF);
    if !bodiless {
        dst.put_slice(body);
    }
}

/// Standard reason phrase for a status code (RFC 9110 §15, from the `http` crate's table),
/// `""` when there is none.
pub fn reason_phrase(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// A field name we may write: a non-empty token (RFC 9110 §5.1). For config validation.
pub fn valid_header_name(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| super::head::is_tchar(b))
}

/// A field value we may write: no CR, LF, NUL or other control bytes except HTAB, and no
/// leading or trailing whitespace (RFC 9110 §5.5). For config validation: a value with CRLF
/// would let config inject fields.
pub fn valid_header_value(value: &[u8]) -> bool {
    let edges_ok = !matches!(value.first(), Some(b' ' | b'\t')) && !matches!(value.last(), Some(b' ' | b'\t'));
    edges_ok && value.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

const CRLF: &[u8] = b"\r\n";

fn put_status_line(dst: &mut BytesMut, status: u16, reason: &[u8]) {
    dst.put_slice(b"HTTP/1.1 ");
    dst.put_slice(itoa::Buffer::new().format(status).as_bytes());
    dst.put_u8(b' ');
    if reason.is_empty() {
        dst.put_slice(reason_phrase(status).as_bytes());
    } else {
        dst.put_slice(reason);
    }
    dst.put_slice(CRLF);
}

#[inline]
pub(crate) fn put_field(dst: &mut BytesMut, name: &[u8], value: &[u8]) {
    dst.reserve(name.len() + value.len() + 4);
    dst.put_slice(name);
    dst.put_slice(b": ");
    dst.put_slice(value);
    dst.put_slice(CRLF);
}

pub(crate) fn put_framing(dst: &mut BytesMut, framing: BodyFraming) {
    match framing {
        BodyFraming::Length(n) => {
            dst.put_slice(b"content-length: ");
            dst.put_slice(itoa::Buffer::new().format(n).as_bytes());
            dst.put_slice(CRLF);
        }
        BodyFraming::Chunked => dst.put_slice(b"transfer-encoding: chunked\r\n"),
        BodyFraming::None | BodyFraming::CloseDelimited => {}
    }
}

fn put_connection(dst: &mut BytesMut, c: ConnectionHeader) {
    match c {
        ConnectionHeader::None => {}
        ConnectionHeader::Close => dst.put_slice(b"connection: close\r\n"),
        ConnectionHeader::KeepAlive => dst.put_slice(b"connection: keep-alive\r\n"),
        ConnectionHeader::Upgrade => dst.put_slice(b"connection: upgrade\r\n"),
    }
}

/// Fields the codec owns; route operations on them are ignored.
fn is_managed(name: &[u8]) -> bool {
    let k = HeaderKind::classify(name);
    k.is_hop_by_hop() || matches!(k, HeaderKind::Host | HeaderKind::ContentLength)
}

fn removed_by_ops<N: AsRef<[u8]>, V: AsRef<[u8]>>(ops: &HeaderOps<'_, N, V>, src: &[u8], h: &HeaderSpan) -> bool {
    ops.remove.iter().any(|n| h.is_named(src, n.as_ref())) || ops.set.iter().any(|(n, _)| h.is_named(src, n.as_ref()))
}

/// Writes `set` then `add` fields; returns whether one of them was `x-request-id`.
fn write_ops<N: AsRef<[u8]>, V: AsRef<[u8]>>(ops: &HeaderOps<'_, N, V>, dst: &mut BytesMut) -> bool {
    let mut request_id = false;
    for (name, value) in ops.set.iter().chain(ops.add.iter()) {
        let (name, value) = (name.as_ref(), value.as_ref());
        if is_managed(name) {
            continue;
        }
        debug_assert!(valid_header_name(name) && valid_header_value(value));
        request_id |= name.eq_ignore_ascii_case(b"x-request-id");
        put_field(dst, name, value);
    }
    request_id
}

/// Whether a `Connection` field lists this field's name (RFC 9110 §7.6.1: such fields are
/// hop-by-hop too). Only called when the head saw tokens other than close/keep-alive/upgrade.
fn named_by_connection(headers: &[HeaderSpan], src: &[u8], h: &HeaderSpan) -> bool {
    headers
        .iter()
        .filter(|c| c.kind() == HeaderKind::Connection)
        .flat_map(|c| c.value(src).split(|&b| b == b','))
        .any(|token| {
            let token = trim(token);
            !token.is_empty() && h.is_named(src, token)
        })
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

#[cfg(test)]
#[path = "encode_tests.rs"]
mod tests;
