//! Request and response head parsing, straight out of the connection's read buffer.
//!
//! This is the first step of every HTTP/1 exchange on a worker: the proxy loop reads into a
//! `BytesMut`, hands the whole unparsed prefix to [`RequestParser::parse`] (or the stateless
//! [`parse_request_head`]) and gets back either "need more bytes", a refusal ([`H1Error`]), or a
//! [`RequestHead`]. The head does not borrow the buffer: it stores [`Span`]s (offsets) into it, so
//! the caller can `split_to(head.len()).freeze()` and keep the bytes as a `Bytes` next to the
//! parsed head without copying anything. The only allocation is one `Vec` of header spans.
//!
//! `httparse` does the tokenising; this module adds what a proxy needs on top of it and what
//! `httparse` is deliberately lenient about (bare LF, obs-fold, framing rules, Host, request
//! target forms), because a proxy that accepts what the next hop reads differently is a request
//! smuggling vector. It must never allocate per byte, copy header bytes, or look at body bytes.

use std::mem::MaybeUninit;

use super::error::H1Error;

/// Upper bound for [`HeadLimits::max_headers`]: the parser keeps this many `httparse` header
/// slots on the stack (32 bytes each), so the number is fixed at compile time.
pub const HARD_MAX_HEADERS: usize = 256;

/// Size limits for one head. Going over either is a 431.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Largest head accepted, start line + headers + the empty line, in bytes.
    pub max_head_bytes: usize,
    /// Most header fields accepted; values above [`HARD_MAX_HEADERS`] are clamped to it.
    pub max_headers: usize,
}

impl Default for HeadLimits {
    /// 64 KiB and 100 fields: what common proxies accept, large enough for big cookies.
    fn default() -> Self {
        HeadLimits {
            max_head_bytes: 64 * 1024,
            max_headers: 100,
        }
    }
}

impl HeadLimits {
    fn head_bytes(&self) -> usize {
        // Spans are u32 offsets; a head can never be larger than that.
        self.max_head_bytes.min(u32::MAX as usize)
    }

    fn headers(&self) -> usize {
        self.max_headers.min(HARD_MAX_HEADERS)
    }
}

/// A byte range inside the buffer the head was parsed from (offsets from its first byte).
///
/// u32 offsets keep [`HeaderSpan`] at 20 bytes; heads are far smaller than 4 GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// The bytes of this span in `src`, the buffer (or the frozen head) it was parsed from.
    ///
    /// Returns an empty slice rather than panicking if `src` is not that buffer.
    #[inline]
    pub fn get<'a>(&self, src: &'a [u8]) -> &'a [u8] {
        src.get(self.start as usize..self.end as usize).unwrap_or(&[])
    }

    /// The span as a `usize` range.
    #[inline]
    pub fn range(&self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start) as usize
    }

    /// True when the span covers no byte.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Sub-span `[from, to)` relative to this span's start (clamped to the span).
    fn sub(&self, from: usize, to: usize) -> Span {
        let len = self.len();
        let to = to.min(len) as u32;
        let from = (from.min(len) as u32).min(to);
        Span {
            start: self.start + from,
            end: self.start + to,
        }
    }
}

/// Header names the proxy treats specially, classified once at parse time so that the encoder
/// can drop hop-by-hop fields without comparing strings again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HeaderKind {
    /// Any other field: forwarded as is.
    Other,
    /// `host`
    Host,
    /// `content-length`
    ContentLength,
    /// `transfer-encoding`
    TransferEncoding,
    /// `connection`
    Connection,
    /// `keep-alive`
    KeepAlive,
    /// `proxy-connection` (non-standard, still sent by some clients)
    ProxyConnection,
    /// `te`
    Te,
    /// `trailer`
    Trailer,
    /// `upgrade`
    Upgrade,
    /// `expect`
    Expect,
    /// `x-forwarded-for`
    XForwardedFor,
    /// `x-forwarded-proto`
    XForwardedProto,
    /// `x-request-id`
    XRequestId,
    /// `x-forwarded-client-cert` (who the peer of an mTLS hop was; see [`super::Xfcc`])
    XForwardedClientCert,
}

impl HeaderKind {
    /// Classify a header name (case-insensitive). Switches on length first, so most names cost
    /// one comparison.
    pub fn classify(name: &[u8]) -> HeaderKind {
        let eq = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
        match name.len() {
            2 if eq("te") => HeaderKind::Te,
            4 if eq("host") => HeaderKind::Host,
            6 if eq("expect") => HeaderKind::Expect,
            7 if eq("upgrade") => HeaderKind::Upgrade,
            7 if eq("trailer") => HeaderKind::Trailer,
            10 if eq("connection") => HeaderKind::Connection,
            10 if eq("keep-alive") => HeaderKind::KeepAlive,
            12 if eq("x-request-id") => HeaderKind::XRequestId,
            14 if eq("content-length") => HeaderKind::ContentLength,
            15 if eq("x-forwarded-for") => HeaderKind::XForwardedFor,
            16 if eq("proxy-connection") => HeaderKind::ProxyConnection,
            17 if eq("transfer-encoding") => HeaderKind::TransferEncoding,
            17 if eq("x-forwarded-proto") => HeaderKind::XForwardedProto,
            23 if eq("x-forwarded-client-cert") => HeaderKind::XForwardedClientCert,
            _ => HeaderKind::Other,
        }
    }

    /// Fields that describe one connection hop and must not be forwarded (RFC 9110 §7.6.1).
    /// `Content-Length` is not hop-by-hop but the encoder rewrites it from the framing.
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            HeaderKind::Connection
                | HeaderKind::KeepAlive
                | HeaderKind::ProxyConnection
                | HeaderKind::Te
                | HeaderKind::Trailer
                | HeaderKind::TransferEncoding
                | HeaderKind::Upgrade
        )
    }
}

/// One header field: where its name and value are, and what kind of field it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderSpan {
    name: Span,
    value: Span,
    kind: HeaderKind,
}

impl HeaderSpan {
    /// Name bytes as received (original case).
    #[inline]
    pub fn name<'a>(&self, src: &'a [u8]) -> &'a [u8] {
        self.name.get(src)
    }

    /// Value bytes, without leading and trailing whitespace.
    #[inline]
    pub fn value<'a>(&self, src: &'a [u8]) -> &'a [u8] {
        self.value.get(src)
    }

    /// Name span.
    #[inline]
    pub fn name_span(&self) -> Span {
        self.name
    }

    /// Value span.
    #[inline]
    pub fn value_span(&self) -> Span {
        self.value
    }

    /// The classification of the name.
    #[inline]
    pub fn kind(&self) -> HeaderKind {
        self.kind
    }

    /// Case-insensitive name comparison.
    #[inline]
    pub fn is_named(&self, src: &[u8], name: &[u8]) -> bool {
        self.name.len() == name.len() && self.name(src).eq_ignore_ascii_case(name)
    }
}

/// Request method. Common methods are matched once so that routing and framing decisions need
/// no string comparison; anything else that is a valid token is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// CONNECT
    Connect,
    /// OPTIONS
    Options,
    /// TRACE
    Trace,
    /// PATCH
    Patch,
    /// Any other token; the span points at it in the source buffer.
    Other(Span),
}

impl Method {
    fn from_bytes(bytes: &[u8], span: Span) -> Method {
        // Methods are case-sensitive (RFC 9110 §9.1): "get" is an extension method.
        match bytes {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"CONNECT" => Method::Connect,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"PATCH" => Method::Patch,
            _ => Method::Other(span),
        }
    }

    /// The method name; `src` is only read for `Other`.
    pub fn as_bytes<'a>(&self, src: &'a [u8]) -> &'a [u8] {
        match self {
            Method::Get => b"GET",
            Method::Head => b"HEAD",
            Method::Post => b"POST",
            Method::Put => b"PUT",
            Method::Delete => b"DELETE",
            Method::Connect => b"CONNECT",
            Method::Options => b"OPTIONS",
            Method::Trace => b"TRACE",
            Method::Patch => b"PATCH",
            Method::Other(span) => span.get(src),
        }
    }
}

/// The form of the request target (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetForm {
    /// `/path?query`: the normal case.
    Origin,
    /// `http://authority/path?query`: sent to proxies; Host is then taken from the target.
    Absolute,
    /// `host:port`: CONNECT only.
    Authority,
    /// `*`: OPTIONS only.
    Asterisk,
}

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyFraming {
    /// No body at all (request without CL/TE; HEAD response; 1xx/204/304; 2xx to CONNECT).
    None,
    /// Exactly this many bytes (Content-Length; may be 0).
    Length(u64),
    /// Chunked transfer coding: feed the bytes after the head to a `ChunkedDecoder`.
    Chunked,
    /// Response body runs until the upstream closes the connection (no CL, no TE).
    CloseDelimited,
}

impl BodyFraming {
    /// True when body bytes may follow the head.
    pub fn has_body(&self) -> bool {
        !matches!(self, BodyFraming::None | BodyFraming::Length(0))
    }
}

/// What the Connection, Upgrade and Expect headers ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct ConnectionFlags {
    /// The connection may carry another message after this one (HTTP/1.1 without `close`, or
    /// HTTP/1.0 with `keep-alive`; for a response also requires a self-delimited body).
    pub keep_alive: bool,
    /// `Connection: close` was sent.
    pub close: bool,
    /// `Connection: upgrade` together with an `Upgrade` header (HTTP/1.1 only; ignored for 1.0
    /// as RFC 9110 §7.8 requires).
    pub upgrade: bool,
    /// `Expect: 100-continue` (requests only).
    pub expect_continue: bool,
    /// The Connection header names other fields, which the encoder must drop as hop-by-hop.
    pub extra_tokens: bool,
}

/// A parsed request head: offsets into the buffer it was parsed from, plus the decisions that
/// need the whole head (framing, keep-alive, authority).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    head_len: usize,
    method: Method,
    target: Span,
    target_form: TargetForm,
    /// For absolute-form: the path-and-query part of the target (may be empty).
    path: Span,
    version_minor: u8,
    headers: Vec<HeaderSpan>,
    framing: BodyFraming,
    connection: ConnectionFlags,
    host: Option<Span>,
    authority: Option<Span>,
}

impl RequestHead {
    /// Bytes of the head, including leading empty lines and the final empty line: split this
    /// many bytes off the read buffer; the body (if any) starts right after.
    #[inline]
    pub fn len(&self) -> usize {
        self.head_len
    }

    /// Always false: a complete head has at least a request line. Here for clippy's sake.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.head_len == 0
    }

    /// The method.
    #[inline]
    pub fn method(&self) -> Method {
        self.method
    }

    /// The request target exactly as received.
    #[inline]
    pub fn target<'a>(&self, src: &'a [u8]) -> &'a [u8] {
        self.target.get(src)
    }

    /// Span of the request target.
    #[inline]
    pub fn target_span(&self) -> Span {
        self.target
    }

    /// The form of the request target.
    #[inline]
    pub fn target_form(&self) -> TargetForm {
        self.target_form
    }

    /// The target as it must be forwarded to an origin server: the target itself for
    /// origin-form, the part after the authority for absolute-form. May be empty or start with
    /// `?` for absolute-form (`http://h?q`): the encoder then writes a leading `/`.
    #[inline]
    pub fn path_and_query<'a>(&self, src: &'a [u8]) -> &'a [u8] {
        match self.target_form {
            TargetForm::Absolute => self.path.get(src),
            _ => self.target.get(src),
        }
    }

    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    #[inline]
    pub fn version_minor(&self) -> u8 {
        self.version_minor
    }

    /// All header fields in order of arrival.
    #[inline]
    pub fn headers(&self) -> &[HeaderSpan] {
        &self.headers
    }

    /// Value of the first header with this name (case-insensitive).
    pub fn header<'a>(&self, src: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
        find_header(&self.headers, src, name)
    }

    /// How the request body is delimited.
    #[inline]
    pub fn framing(&self) -> BodyFraming {
        self.framing
    }

    /// Keep-alive, close, upgrade and expect flags.
    #[inline]
    pub fn connection(&self) -> ConnectionFlags {
        self.connection
    }

    /// The client sent `Expect: 100-continue` with a body: it may hold the body back until it
    /// hears `100 Continue`. A final answer sent without reading the body leaves it unknown
    /// whether the body or the next request comes next, so such an answer must close.
    #[inline]
    pub fn awaits_continue(&self) -> bool {
        self.connection.expect_continue && self.framing.has_body()
    }

    /// The Host header value, if one was sent.
    #[inline]
    pub fn host<'a>(&self, src: &'a [u8]) -> Option<&'a [u8]> {
        self.host.map(|s| s.get(src))
    }

    /// The authority to route on: the target's authority for absolute-form and authority-form
    /// (RFC 9112 §3.2.2: a proxy MUST ignore Host then), else the Host header.
    #[inline]
    pub fn authority<'a>(&self, src: &'a [u8]) -> Option<&'a [u8]> {
        self.authority.map(|s| s.get(src))
    }
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    head_len: usize,
    version_minor: u8,
    status: u16,
    reason: Span,
    headers: Vec<HeaderSpan>,
    framing: BodyFraming,
    connection: ConnectionFlags,
}

impl ResponseHead {
    /// Bytes of the head, including the final empty line.
    #[inline]
    pub fn len(&self) -> usize {
        self.head_len
    }

    /// Always false; here for clippy's sake.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.head_len == 0
    }

    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    #[inline]
    pub fn version_minor(&self) -> u8 {
        self.version_minor
    }

    /// Status code, 100..=599.
    #[inline]
    pub fn status(&self) -> u16 {
        self.status
    }

    /// True for 1xx other than 101: another head follows on the same connection.
    #[inline]
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// Reason phrase as received (may be empty).
    #[inline]
    pub fn reason<'a>(&self, src: &'a [u8]) -> &'a [u8] {
        self.reason.get(src)
    }

    /// All header fields in order of arrival.
    #[inline]
    pub fn headers(&self) -> &[HeaderSpan] {
        &self.headers
    }

    /// Value of the first header with this name (case-insensitive).
    pub fn header<'a>(&self, src: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
        find_header(&self.headers, src, name)
    }

    /// How the response body is delimited.
    #[inline]
    pub fn framing(&self) -> BodyFraming {
        self.framing
    }

    /// Keep-alive, close and upgrade flags. `keep_alive` is false for a close-delimited body.
    #[inline]
    pub fn connection(&self) -> ConnectionFlags {
        self.connection
    }
}

fn find_header<'a>(headers: &[HeaderSpan], src: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    headers.iter().find(|h| h.is_named(src, name)).map(|h| h.value(src))
}

/// Finds where a head ends without re-reading bytes it has already checked.
///
/// The proxy calls the parser every time bytes arrive; a peer that sends its head one byte per
/// packet would otherwise make us rescan (and re-run `httparse` on) the whole prefix each time,
/// which is quadratic. The scanner remembers how far it has checked and only runs `httparse`
/// once the terminating empty line is there. On the way it rejects what `httparse` accepts but
/// we must not: bare LF line endings and lines that start with whitespace (obs-fold).
///
/// The buffer passed on each call must start with the same bytes as the previous call's; the
/// scanner resets itself after returning a head or an error.
#[derive(Debug, Clone, Default)]
pub struct HeadScanner {
    /// Bytes before this offset have been checked.
    checked: usize,
    /// Start of the start line, once past leading empty lines.
    start: Option<usize>,
}

impl HeadScanner {
    /// A scanner at the beginning of a head.
    pub fn new() -> Self {
        HeadScanner::default()
    }

    /// Forget progress (call after splitting a head off the buffer; done automatically after
    /// `scan` returns a head or an error).
    pub fn reset(&mut self) {
        *self = HeadScanner::default();
    }

    /// `Ok(Some((start, len)))` once `buf[..len]` holds a whole head whose start line begins at
    /// `start` (after any leading empty lines); `Ok(None)` when more bytes are needed.
    pub fn scan(&mut self, buf: &[u8], max_head_bytes: usize) -> Result<Option<(usize, usize)>, H1Error> {
        if buf.len() < self.checked {
            // The caller handed us a different buffer; start over rather than misread it.
            self.reset();
        }
        let out = self.scan_inner(buf, max_head_bytes);
        if !matches!(out, Ok(None)) {
            self.reset();
        }
        out
    }

    fn scan_inner(&mut self, buf: &[u8], max: usize) -> Result<Option<(usize, usize)>, H1Error> {
        let start = match self.start {
            Some(start) => start,
            None => {
                // RFC 9112 §2.2: a server SHOULD ignore empty lines before the request line
                // (clients send a stray CRLF after a POST body). Only CRLF; bare LF is refused.
                let mut p = self.checked;
                loop {
                    match buf.get(p) {
                        None => {
                            self.checked = p;
                            return too_large_or_none(buf.len(), max);
                        }
                        Some(b'\r') => match buf.get(p + 1) {
                            None => {
                                self.checked = p;
                                return too_large_or_none(buf.len(), max);
                            }
                            Some(b'\n') => p += 2,
                            Some(_) => return Err(H1Error::Malformed),
                        },
                        Some(b'\n') => return Err(H1Error::BareLf),
                        Some(_) => {
                            self.start = Some(p);
                            self.checked = p;
                            break p;
                        }
                    }
                }
            }
        };
        let from = self.checked.max(start);
        let rest = buf.get(from..).unwrap_or(&[]);
        for rel in memchr::memchr_iter(b'\n', rest) {
            let i = from + rel;
            // httparse accepts a bare LF as a line ending; a backend that does not would see
            // different header boundaries than we do, so every LF must follow a CR.
            if i <= start || buf.get(i - 1) != Some(&b'\r') {
                return Err(H1Error::BareLf);
            }
            if i >= start + 3 && buf.get(i - 3..=i) == Some(b"\r\n\r\n".as_slice()) {
                let len = i + 1;
                if len > max {
                    return Err(H1Error::HeadTooLarge);
                }
                return Ok(Some((start, len)));
            }
            // A line starting with SP/HTAB is obs-fold (or whitespace before the first header,
            // RFC 9112 §2.2); we refuse both rather than guess how the next hop unfolds it.
            if matches!(buf.get(i + 1), Some(b' ' | b'\t')) {
                return Err(H1Error::ObsFold);
            }
        }
        // Re-check the last byte next time: if it is an LF, its follower is not here yet.
        self.checked = buf.len().saturating_sub(1).max(start);
        too_large_or_none(buf.len(), max)
    }
}

fn too_large_or_none<T>(len: usize, max: usize) -> Result<Option<T>, H1Error> {
    if len > max {
        Err(H1Error::HeadTooLarge)
    } else {
        Ok(None)
    }
}

/// Incremental request head parser: one per downstream connection.
///
/// ```ignore
/// let mut parser = RequestParser::new(HeadLimits::default());
/// loop {
///     // read more bytes into `buf` ...
///     if let Some(head) = parser.parse(&buf)? { /* split_to(head.len()) */ break; }
/// }
/// ```
#[derive(Debug, Clone, Default)]
pub struct RequestParser {
    limits: HeadLimits,
    scanner: HeadScanner,
}

impl RequestParser {
    /// A parser with these limits.
    pub fn new(limits: HeadLimits) -> Self {
        RequestParser {
            limits,
            scanner: HeadScanner::new(),
        }
    }

    /// Parse the head at the start of `buf`. `buf` must extend what was passed last time until
    /// this returns `Ok(Some)` or `Err`; after that the next call starts a new head.
    pub fn parse(&mut self, buf: &[u8]) -> Result<Option<RequestHead>, H1Error> {
        parse_request_with(&mut self.scanner, buf, &self.limits)
    }

    /// Forget a partially scanned head.
    pub fn reset(&mut self) {
        self.scanner.reset();
    }
}

/// Incremental response head parser: one per upstream connection.
#[derive(Debug, Clone, Default)]
pub struct ResponseParser {
    limits: HeadLimits,
    scanner: HeadScanner,
    upgrade_requested: bool,
}

impl ResponseParser {
    /// A parser with these limits, for a request that did not ask to upgrade.
    pub fn new(limits: HeadLimits) -> Self {
        ResponseParser {
            limits,
            scanner: HeadScanner::new(),
            upgrade_requested: false,
        }
    }

    /// Whether the request asked to upgrade (`ConnectionFlags::upgrade`). Only then is a `101`
    /// accepted; otherwise it is [`H1Error::UnrequestedUpgrade`] (RFC 9110 §15.2.2: a server
    /// switches only to a protocol the client listed in `Upgrade`).
    pub fn upgrade_requested(mut self, requested: bool) -> Self {
        self.upgrade_requested = requested;
        self
    }

    /// Parse the response head at the start of `buf`; `request_method` is the method of the
    /// request this answers (HEAD and CONNECT change the framing).
    pub fn parse(&mut self, buf: &[u8], request_method: Method) -> Result<Option<ResponseHead>, H1Error> {
        parse_response_with(
            &mut self.scanner,
            buf,
            &self.limits,
            request_method,
            self.upgrade_requested,
        )
    }

    /// Forget a partially scanned head.
    pub fn reset(&mut self) {
        self.scanner.reset();
    }
}

/// Parse a request head at the start of `buf` (stateless: rescans `buf` from its start; prefer
/// [`RequestParser`] on a connection).
///
/// `Ok(None)`: incomplete, read more. `Err(HeadTooLarge)` as soon as `buf` is longer than
/// `limits.max_head_bytes` without a complete head.
pub fn parse_request_head(buf: &[u8], limits: &HeadLimits) -> Result<Option<RequestHead>, H1Error> {
    parse_request_with(&mut HeadScanner::new(), buf, limits)
}

/// Parse a response head at the start of `buf` (stateless; prefer [`ResponseParser`]).
/// `request_method` is the method of the request it answers, which did not ask to upgrade (a
/// `101` is refused).
pub fn parse_response_head(
    buf: &[u8],
    limits: &HeadLimits,
    request_method: Method,
) -> Result<Option<ResponseHead>, H1Error> {
    parse_response_with(&mut HeadScanner::new(), buf, limits, request_method, false)
}

/// Offset of `part` inside `base`, which httparse guarantees for the slices it returns; checked
/// anyway so that a surprise becomes an error, not a panic or a wrong span.
fn span_of(base: &[u8], part: &[u8]) -> Result<Span, H1Error> {
    let start = (part.as_ptr() as usize)
        .checked_sub(base.as_ptr() as usize)
        .ok_or(H1Error::Malformed)?;
    let end = start.checked_add(part.len()).ok_or(H1Error::Malformed)?;
    if end > base.len() {
        return Err(H1Error::Malformed);
    }
    Ok(Span {
        start: u32::try_from(start).map_err(|_| H1Error::HeadTooLarge)?,
        end: u32::try_from(end).map_err(|_| H1Error::HeadTooLarge)?,
    })
}

fn parse_request_with(
    scanner: &mut HeadScanner,
    buf: &[u8],
    limits: &HeadLimits,
) -> Result<Option<RequestHead>, H1Error> {
    let Some((start, head_len)) = scanner.scan(buf, limits.head_bytes())? else {
        return Ok(None);
    };
    let head = buf.get(..head_len).ok_or(H1Error::Malformed)?;
    // Default ParserConfig is the strict one: no spaces before colons, no obs-fold, no multiple
    // spaces in the start line, invalid lines are errors rather than skipped.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HARD_MAX_HEADERS];
    let slots = &mut slots[..limits.headers()];
    let mut req = httparse::Request::new(&mut []);
    match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut req, head, slots) {
        Ok(httparse::Status::Complete(n)) if n == head_len => {}
        Ok(_) => return Err(H1Error::Malformed),
        Err(e) => return Err(map_request_error(e, head.get(start..).unwrap_or(&[]))),
    }
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(H1Error::Malformed);
    };
    let method_span = span_of(head, method.as_bytes())?;
    let method = Method::from_bytes(method.as_bytes(), method_span);
    let target = span_of(head, path.as_bytes())?;
    let (target_form, target_authority, path) = classify_target(method, target, head)?;

    let fields = analyze_headers(head, req.headers, version, true)?;

    let host = match fields.hosts {
        0 if version == 1 => return Err(H1Error::MissingHost),
        0 => None,
        1 => fields.host,
        _ => return Err(H1Error::MultipleHost),
    };
    // Checked last, so that a malformed CONNECT is refused for what is wrong with it. A 2xx
    // would turn the connection into a tunnel that neither this codec nor any route provides;
    // forwarding it as a request let the client's next bytes be read as HTTP.
    if method == Method::Connect {
        return Err(H1Error::ConnectNotSupported);
    }
    let framing = match fields.framing {
        Framing::Chunked => BodyFraming::Chunked,
        Framing::Length(n) => BodyFraming::Length(n),
        Framing::Unspecified => BodyFraming::None,
    };
    let mut connection = fields.connection;
    connection.keep_alive = !connection.close && (version == 1 || fields.keep_alive_token);
    connection.upgrade = version == 1 && fields.upgrade_token && fields.has_upgrade_header;
    Ok(Some(RequestHead {
        head_len,
        method,
        target,
        target_form,
        path,
        version_minor: version,
        headers: fields.spans,
        framing,
        connection,
        host,
        authority: target_authority.or(host),
    }))
}

fn parse_response_with(
    scanner: &mut HeadScanner,
    buf: &[u8],
    limits: &HeadLimits,
    request_method: Method,
    upgrade_requested: bool,
) -> Result<Option<ResponseHead>, H1Error> {
    let Some((start, head_len)) = scanner.scan(buf, limits.head_bytes())? else {
        return Ok(None);
    };
    let head = buf.get(..head_len).ok_or(H1Error::Malformed)?;
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HARD_MAX_HEADERS];
    let slots = &mut slots[..limits.headers()];
    let mut res = httparse::Response::new(&mut []);
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, head, slots) {
        Ok(httparse::Status::Complete(n)) if n == head_len => {}
        Ok(_) => return Err(H1Error::Malformed),
        Err(e) => return Err(map_response_error(e, head.get(start..).unwrap_or(&[]))),
    }
    let (Some(version), Some(status)) = (res.version, res.code) else {
        return Err(H1Error::Malformed);
    };
    if !(100..=599).contains(&status) {
        return Err(H1Error::InvalidStatus);
    }
    if status == 101 && !upgrade_requested {
        return Err(H1Error::UnrequestedUpgrade);
    }
    // httparse hands back a static "" for reasons with obs-text, so take the reason from the
    // status line ourselves: it is everything after "HTTP/1.x NNN " up to the CRLF.
    let line_end = memchr::memmem::find(head.get(start..).unwrap_or(&[]), b"\r\n")
        .map(|i| start + i)
        .ok_or(H1Error::Malformed)?;
    let reason_start = (start + 13).min(line_end);
    let reason = Span {
        start: u32::try_from(reason_start).map_err(|_| H1Error::HeadTooLarge)?,
        end: u32::try_from(line_end).map_err(|_| H1Error::HeadTooLarge)?,
    };

    let fields = analyze_headers(head, res.headers, version, false)?;
    let no_body = request_method == Method::Head
        || (100..200).contains(&status)
        || status == 204
        || status == 304
        || (request_method == Method::Connect && (200..300).contains(&status));
    let framing = if no_body {
        BodyFraming::None
    } else {
        match fields.framing {
            Framing::Chunked => BodyFraming::Chunked,
            Framing::Length(n) => BodyFraming::Length(n),
            Framing::Unspecified => BodyFraming::CloseDelimited,
        }
    };
    let mut connection = fields.connection;
    connection.keep_alive =
        !connection.close && (version == 1 || fields.keep_alive_token) && framing != BodyFraming::CloseDelimited;
    connection.upgrade = fields.upgrade_token && fields.has_upgrade_header;
    connection.expect_continue = false;
    Ok(Some(ResponseHead {
        head_len,
        version_minor: version,
        status,
        reason,
        headers: fields.spans,
        framing,
        connection,
    }))
}

/// httparse reports method and target errors both as `Token`, and any bad version as `Version`;
/// look at the start line again to pick the variant (only on the error path).
fn map_request_error(e: httparse::Error, line: &[u8]) -> H1Error {
    match e {
        httparse::Error::Token => {
            let method_len = memchr::memchr(b' ', line).unwrap_or(line.len());
            let method = line.get(..method_len).unwrap_or(&[]);
            if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
                H1Error::InvalidMethod
            } else {
                H1Error::InvalidTarget
            }
        }
        httparse::Error::Version => {
            // request-line = method SP request-target SP HTTP-version CRLF; httparse has read
            // method and target up to the second SP, so the version is everything after it.
            let eol = memchr::memchr(b'\r', line).unwrap_or(line.len());
            let first = line.get(..eol).unwrap_or(&[]);
            let mut parts = first.splitn(3, |&b| b == b' ');
            let rest = parts.nth(2).unwrap_or(&[]);
            if rest.contains(&b' ') {
                // `GET /a b HTTP/1.1`: a space inside the target.
                H1Error::InvalidTarget
            } else {
                version_error(rest)
            }
        }
        other => map_common_error(other),
    }
}

fn map_response_error(e: httparse::Error, line: &[u8]) -> H1Error {
    match e {
        httparse::Error::Version => {
            let end = memchr::memchr2(b' ', b'\r', line).unwrap_or(line.len());
            version_error(line.get(..end).unwrap_or(&[]))
        }
        httparse::Error::Status | httparse::Error::Token => H1Error::InvalidStatus,
        other => map_common_error(other),
    }
}

fn map_common_error(e: httparse::Error) -> H1Error {
    match e {
        httparse::Error::HeaderName => H1Error::InvalidHeaderName,
        httparse::Error::HeaderValue => H1Error::InvalidHeaderValue,
        httparse::Error::TooManyHeaders => H1Error::TooManyHeaders,
        httparse::Error::Version => H1Error::InvalidVersion,
        httparse::Error::Status => H1Error::InvalidStatus,
        httparse::Error::Token => H1Error::InvalidMethod,
        httparse::Error::NewLine => H1Error::Malformed,
    }
}

/// `HTTP/<d>.<d>` that is not 1.0/1.1 is a version we do not speak (505); anything else is not
/// a version at all (400).
fn version_error(v: &[u8]) -> H1Error {
    match v {
        [b'H', b'T', b'T', b'P', b'/', a, b'.', b] if a.is_ascii_digit() && b.is_ascii_digit() => {
            H1Error::UnsupportedVersion
        }
        _ => H1Error::InvalidVersion,
    }
}

/// tchar from RFC 9110 §5.6.2.
#[inline]
pub(crate) fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'
        | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.'
        | b'^' | b'_' | b'`' | b'|' | b'~')
}

/// Bytes allowed in an authority (RFC 3986 reg-name / IP-literal / port): unreserved,
/// pct-encoded, sub-delims, ':' and brackets. No '@' (userinfo is refused, RFC 9110 §4.2.4),
/// no '/', '?', '#', whitespace or non-ASCII.
#[inline]
fn is_authority_byte(b: u8) -> bool {
    matches!(b,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'
        | b'-' | b'.' | b'_' | b'~' | b'%'
        | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
        | b':' | b'[' | b']')
}

/// An authority (`host[:port]`) as used in Host and in absolute-/authority-form targets.
fn valid_authority(a: &[u8]) -> bool {
    if !a.iter().all(|&b| is_authority_byte(b)) {
        return false;
    }
    // The port, if any, is what follows the last ':' after any IPv6 literal.
    let host_end = match memchr::memrchr(b']', a) {
        Some(i) => {
            if a.first() != Some(&b'[') {
                return false;
            }
            i + 1
        }
        None => 0,
    };
    let tail = a.get(host_end..).unwrap_or(&[]);
    match memchr::memrchr(b':', tail) {
        Some(i) => {
            let port = tail.get(i + 1..).unwrap_or(&[]);
            let host = a.get(..host_end + i).unwrap_or(&[]);
            // Without brackets a host holds no ':'.
            port.iter().all(u8::is_ascii_digit) && (host_end > 0 || !host.contains(&b':'))
        }
        None => host_end == 0 || host_end == a.len(),
    }
}

/// Decide the target form and check it fits the method (RFC 9112 §3.2). Returns the form, the
/// authority inside the target (absolute- and authority-form) and, for absolute-form, the
/// path-and-query span.
fn classify_target(method: Method, target: Span, head: &[u8]) -> Result<(TargetForm, Option<Span>, Span), H1Error> {
    let t = target.get(head);
    // httparse lets through any byte >= 0x21 but DEL, including non-ASCII; a fragment is never
    // part of a request target. Both mean the client is broken or probing: refuse.
    if t.iter().any(|&b| b >= 0x7f || b <= b' ' || b == b'#') {
        return Err(H1Error::InvalidTarget);
    }
    if method == Method::Connect {
        // CONNECT takes authority-form only, with a port.
        if !valid_authority(t) || !has_port(t) {
            return Err(H1Error::InvalidTarget);
        }
        return Ok((TargetForm::Authority, Some(target), Span::default()));
    }
    match t.first() {
        Some(b'/') => {
            check_encoded_path(t)?;
            Ok((TargetForm::Origin, None, Span::default()))
        }
        Some(b'*') if t.len() == 1 && method == Method::Options => Ok((TargetForm::Asterisk, None, Span::default())),
        _ => {
            // absolute-form: only http and https make sense for this proxy.
            let scheme_len = if t.len() >= 7 && t[..7].eq_ignore_ascii_case(b"http://") {
                7
            } else if t.len() >= 8 && t[..8].eq_ignore_ascii_case(b"https://") {
                8
            } else {
                return Err(H1Error::InvalidTarget);
            };
            let rest = &t[scheme_len..];
            let auth_len = memchr::memchr2(b'/', b'?', rest).unwrap_or(rest.len());
            let authority = target.sub(scheme_len, scheme_len + auth_len);
            if auth_len == 0 || !valid_authority(authority.get(head)) {
                return Err(H1Error::InvalidTarget);
            }
            let path = target.sub(scheme_len + auth_len, t.len());
            check_encoded_path(path.get(head))?;
            Ok((TargetForm::Absolute, Some(authority), path))
        }
    }
}

/// Refuses a path (up to `?`) holding a percent-encoded control byte: `%00`-`%1F` or `%7F`.
///
/// The raw bytes were already checked for CTLs; an encoded one survives that check and turns
/// back into a NUL or a line break wherever the path is decoded (route matching, a file name, a
/// log line, the next hop). No legitimate path needs one, so it is a 400 before routing. The
/// query is left alone: it is the application's data, not something we route or decode.
fn check_encoded_path(pq: &[u8]) -> Result<(), H1Error> {
    let path = &pq[..memchr::memchr(b'?', pq).unwrap_or(pq.len())];
    for i in memchr::memchr_iter(b'%', path) {
        if let [hi, lo] = path.get(i + 1..i + 3).unwrap_or(&[]) {
            let (hi, lo) = (hi.to_ascii_uppercase(), lo.to_ascii_uppercase());
            if matches!((hi, lo), (b'0' | b'1', b'0'..=b'9' | b'A'..=b'F') | (b'7', b'F')) {
                return Err(H1Error::EncodedControlInPath);
            }
        }
    }
    Ok(())
}

fn has_port(a: &[u8]) -> bool {
    let tail_start = memchr::memrchr(b']', a).map_or(0, |i| i + 1);
    let tail = a.get(tail_start..).unwrap_or(&[]);
    matches!(memchr::memrchr(b':', tail), Some(i) if i + 1 < tail.len())
}

enum Framing {
    Unspecified,
    Length(u64),
    Chunked,
}

/// What one pass over the header fields found.
struct Fields {
    spans: Vec<HeaderSpan>,
    framing: Framing,
    hosts: usize,
    host: Option<Span>,
    connection: ConnectionFlags,
    keep_alive_token: bool,
    upgrade_token: bool,
    has_upgrade_header: bool,
}

/// One pass over the fields: record spans, classify names, and apply the framing rules that
/// keep us in agreement with the next hop about where this message ends (RFC 9112 §6).
fn analyze_headers(
    head: &[u8],
    headers: &[httparse::Header<'_>],
    version: u8,
    is_request: bool,
) -> Result<Fields, H1Error> {
    let mut spans = Vec::with_capacity(headers.len());
    let mut content_length: Option<u64> = None;
    let mut te = TeState::default();
    let mut f = Fields {
        spans: Vec::new(),
        framing: Framing::Unspecified,
        hosts: 0,
        host: None,
        connection: ConnectionFlags::default(),
        keep_alive_token: false,
        upgrade_token: false,
        has_upgrade_header: false,
    };
    for h in headers {
        let name = span_of(head, h.name.as_bytes())?;
        let value = span_of(head, h.value)?;
        let kind = HeaderKind::classify(h.name.as_bytes());
        match kind {
            HeaderKind::ContentLength => {
                let v = parse_content_length(h.value)?;
                match content_length {
                    Some(prev) if prev != v => return Err(H1Error::ConflictingContentLength),
                    _ => content_length = Some(v),
                }
            }
            HeaderKind::TransferEncoding => te.add(h.value)?,
            HeaderKind::Host if is_request => {
                if !valid_authority(h.value) {
                    return Err(H1Error::InvalidHost);
                }
                f.hosts += 1;
                f.host = Some(value);
            }
            HeaderKind::Connection => {
                for token in list_elements(h.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        f.connection.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        f.keep_alive_token = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        f.upgrade_token = true;
                    } else if !token.is_empty() {
                        f.connection.extra_tokens = true;
                    }
                }
            }
            HeaderKind::Upgrade => f.has_upgrade_header = true,
            HeaderKind::Expect if h.value.eq_ignore_ascii_case(b"100-continue") => {
                f.connection.expect_continue = true;
            }
            _ => {}
        }
        spans.push(HeaderSpan { name, value, kind });
    }
    f.spans = spans;
    f.framing = match (te.seen, content_length) {
        (true, Some(_)) => return Err(H1Error::ContentLengthAndTransferEncoding),
        // RFC 9112 §6.1: TE in an HTTP/1.0 message means its framing is faulty.
        (true, None) if version == 0 => return Err(H1Error::TransferEncodingInHttp10),
        (true, None) => te.finish()?,
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::Unspecified,
    };
    Ok(f)
}

/// Comma-separated list elements with optional whitespace trimmed (RFC 9110 §5.6.1).
fn list_elements(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(trim_ows)
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Content-Length = 1*DIGIT. A list of identical values (`42, 42`) is accepted as RFC 9110
/// §8.6 allows; signs, spaces inside, empty elements, hex and overflow are refused.
fn parse_content_length(v: &[u8]) -> Result<u64, H1Error> {
    let mut out: Option<u64> = None;
    for el in list_elements(v) {
        if el.is_empty() {
            return Err(H1Error::InvalidContentLength);
        }
        let mut n: u64 = 0;
        for &b in el {
            if !b.is_ascii_digit() {
                return Err(H1Error::InvalidContentLength);
            }
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(b - b'0')))
                .ok_or(H1Error::InvalidContentLength)?;
        }
        match out {
            Some(prev) if prev != n => return Err(H1Error::ConflictingContentLength),
            _ => out = Some(n),
        }
    }
    out.ok_or(H1Error::InvalidContentLength)
}

/// Transfer-Encoding across all TE fields, in order (they form one list).
#[derive(Default)]
struct TeState {
    seen: bool,
    chunked: usize,
    last_is_chunked: bool,
    other: bool,
}

impl TeState {
    fn add(&mut self, v: &[u8]) -> Result<(), H1Error> {
        self.seen = true;
        for el in list_elements(v) {
            // Only bare tokens: an empty element, a parameter (`chunked;q=1`) or odd bytes are
            // places where two parsers can disagree, so they are refused outright.
            if el.is_empty() || !el.iter().all(|&b| is_tchar(b)) {
                return Err(H1Error::InvalidTransferEncoding);
            }
            if el.eq_ignore_ascii_case(b"chunked") {
                self.chunked += 1;
                self.last_is_chunked = true;
            } else {
                self.other = true;
                self.last_is_chunked = false;
            }
        }
        Ok(())
    }

    /// Only exactly one `chunked`, last, is accepted. `gzip, chunked` is well-formed but we do
    /// not forward codings we cannot vouch for (501); chunked twice, not last, or missing means
    /// the length cannot be determined (400, RFC 9112 §6.3).
    fn finish(&self) -> Result<Framing, H1Error> {
        if self.chunked != 1 || !self.last_is_chunked {
            return Err(H1Error::InvalidTransferEncoding);
        }
        if self.other {
            return Err(H1Error::UnsupportedTransferCoding);
        }
        Ok(Framing::Chunked)
    }
}

#[cfg(test)]
#[path = "head_tests.rs"]
mod tests;
