//! Trace context on the wire: W3C Trace Context (`traceparent`; `tracestate` is passed on
//! untouched as any other field) and B3, single (`b3`) and multi (`x-b3-*`), read from a
//! request, and this hop's context written for the upstream.
//!
//! Read once per request, before the forwarded head is built, on the worker: one pass over the
//! request's fields picks out the seven names below (a switch on the name's length, then one
//! comparison), and the values are parsed here by hand — fixed-width lower-case hex, a few
//! separators — because a general parser would allocate and this runs for every request of a
//! tracing proxy. Nothing here allocates, and nothing fails a request: a malformed value is
//! ignored (a W3C one makes this hop start a new trace), as the W3C recommendation asks.
//!
//! **Precedence.** A valid `traceparent` wins; then `b3`; then `x-b3-traceid`/`x-b3-spanid`.
//! A sampling decision alone (`b3: 0`, `x-b3-sampled: 1` without ids) is respected for the
//! trace this hop starts.
//!
//! **What goes upstream.** The formats the request came in with, carrying this hop's span as
//! the parent: W3C in → W3C out, `b3` in → `b3` out, `x-b3-*` in → `x-b3-*` out (all of them
//! when several came). A request that carried none gets W3C *and* B3 multi, the two header
//! sets Istio tells applications to propagate, so that an app instrumented for either
//! continues the trace. Every incoming propagation field (`traceparent`, `b3`, `x-b3-*`) is
//! replaced, never duplicated.

use super::TraceContext;

/// A 128-bit trace id.
pub(crate) type TraceId = [u8; 16];
/// A 64-bit span id.
pub(crate) type SpanId = [u8; 8];

/// Which formats a request carried (and so which go upstream).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Formats(u8);

impl Formats {
    /// W3C `traceparent`.
    pub(crate) const W3C: Formats = Formats(1);
    /// B3 single header `b3`.
    pub(crate) const B3_SINGLE: Formats = Formats(2);
    /// B3 multi headers `x-b3-*`.
    pub(crate) const B3_MULTI: Formats = Formats(4);
    /// What a trace started here sends: W3C and B3 multi.
    pub(crate) const STARTED_HERE: Formats = Formats(1 | 4);

    /// Whether every format of `other` is in `self`.
    pub(crate) fn contains(self, other: Formats) -> bool {
        self.0 & other.0 == other.0
    }

    fn add(&mut self, other: Formats) {
        self.0 |= other.0;
    }

    fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// The context of the caller's span, from whichever format took precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parent {
    pub(crate) trace_id: TraceId,
    pub(crate) span_id: SpanId,
    /// The caller's decision; `None`: deferred to this hop (B3 without a sampling state).
    pub(crate) sampled: Option<bool>,
    /// B3 debug (`d`, `x-b3-flags: 1`): sampled, and said so again upstream.
    pub(crate) debug: bool,
    /// A 64-bit B3 trace id: written back upstream in 16 hex digits.
    pub(crate) short_trace_id: bool,
}

/// What a request carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Incoming {
    /// The caller's context, if a format carried a valid one.
    pub(crate) parent: Option<Parent>,
    /// A sampling decision that came without ids (`b3: 0`, `x-b3-sampled: 1` alone).
    pub(crate) decision: Option<bool>,
    /// B3 debug without ids.
    pub(crate) debug: bool,
    /// The formats present (valid or not): what the upstream gets.
    pub(crate) formats: Formats,
}

/// The raw values of the propagation fields, first of each name.
#[derive(Debug, Default, Clone, Copy)]
struct Raw<'a> {
    traceparent: Option<&'a [u8]>,
    b3: Option<&'a [u8]>,
    trace_id: Option<&'a [u8]>,
    span_id: Option<&'a [u8]>,
    sampled: Option<&'a [u8]>,
    flags: Option<&'a [u8]>,
    /// `x-b3-parentspanid` (the caller's parent): only tells that B3 multi is spoken.
    parent_span_id: Option<&'a [u8]>,
}

/// Which propagation field a name is; `None` for every other field (and for `tracestate`,
/// which passes untouched). A switch on the length first, so most fields cost one comparison
/// of two integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    TraceParent,
    B3,
    TraceId,
    SpanId,
    ParentSpanId,
    Sampled,
    Flags,
}

fn field(name: &[u8]) -> Option<Field> {
    let eq = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
    match name.len() {
        2 if eq("b3") => Some(Field::B3),
        10 if eq("x-b3-flags") => Some(Field::Flags),
        11 if eq("traceparent") => Some(Field::TraceParent),
        11 if eq("x-b3-spanid") => Some(Field::SpanId),
        12 if eq("x-b3-traceid") => Some(Field::TraceId),
        12 if eq("x-b3-sampled") => Some(Field::Sampled),
        17 if eq("x-b3-parentspanid") => Some(Field::ParentSpanId),
        _ => None,
    }
}

/// Whether a request field carries a trace context the proxy replaces (`traceparent`, `b3`,
/// `x-b3-*`; not `tracestate`). Any case.
#[inline]
pub(crate) fn is_propagation_field(name: &[u8]) -> bool {
    field(name).is_some()
}

impl<'a> Raw<'a> {
    fn put(&mut self, name: &[u8], value: &'a [u8]) {
        let Some(f) = field(name) else { return };
        let slot = match f {
            Field::TraceParent => &mut self.traceparent,
            Field::B3 => &mut self.b3,
            Field::TraceId => &mut self.trace_id,
            Field::SpanId => &mut self.span_id,
            Field::ParentSpanId => &mut self.parent_span_id,
            Field::Sampled => &mut self.sampled,
            Field::Flags => &mut self.flags,
        };
        if slot.is_none() {
            *slot = Some(value);
        }
    }
}

impl Incoming {
    /// Reads a request's fields, `(name, value)` in any case, in one pass.
    pub(crate) fn from_fields<'a>(fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Incoming {
        let mut raw = Raw::default();
        for (name, value) in fields {
            raw.put(name, value);
        }
        raw.parse()
    }

    /// Reads a request through a lookup by lower-case name (seven lookups: for the rare
    /// request answered before its context was read).
    pub(crate) fn from_lookup<'a>(get: impl Fn(&str) -> Option<&'a [u8]>) -> Incoming {
        let mut raw = Raw::default();
        for name in [
            "traceparent",
            "b3",
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-parentspanid",
            "x-b3-sampled",
            "x-b3-flags",
        ] {
            if let Some(v) = get(name) {
                raw.put(name.as_bytes(), v);
            }
        }
        raw.parse()
    }
}

impl Raw<'_> {
    fn parse(&self) -> Incoming {
        let mut inc = Incoming::default();
        if self.traceparent.is_some() {
            inc.formats.add(Formats::W3C);
        }
        if self.b3.is_some() {
            inc.formats.add(Formats::B3_SINGLE);
        }
        if self.trace_id.is_some()
            || self.span_id.is_some()
            || self.sampled.is_some()
            || self.flags.is_some()
            || self.parent_span_id.is_some()
        {
            inc.formats.add(Formats::B3_MULTI);
        }
        if inc.formats.is_empty() {
            return inc;
        }
        if let Some(p) = self.traceparent.and_then(parse_traceparent) {
            inc.parent = Some(p);
            return inc;
        }
        let single = self.b3.map(parse_b3_single);
        if let Some(B3Single::Context(p)) = single {
            inc.parent = Some(p);
            return inc;
        }
        let multi_sampled = self.sampled.and_then(parse_b3_sampled);
        let multi_debug = self.flags.is_some_and(|f| f.trim_ascii() == b"1");
        if let (Some(t), Some(s)) = (self.trace_id, self.span_id) {
            if let Some((trace_id, short_trace_id)) = parse_b3_trace_id(t.trim_ascii()) {
                if let Some(span_id) = parse_id::<8>(s.trim_ascii(), true) {
                    inc.parent = Some(Parent {
                        trace_id,
                        span_id,
                        sampled: if multi_debug { Some(true) } else { multi_sampled },
                        debug: multi_debug,
                        short_trace_id,
                    });
                    return inc;
                }
            }
        }
        // No ids anywhere: a decision alone still counts.
        match single {
            Some(B3Single::Decision { sampled, debug }) => {
                inc.decision = Some(sampled);
                inc.debug = debug;
            }
            _ if multi_debug => {
                inc.decision = Some(true);
                inc.debug = true;
            }
            _ => inc.decision = multi_sampled,
        }
        inc
    }
}

/// Decodes `N` bytes of hex (`2 * N` digits, lower-case only unless `upper`), refusing an id
/// of all zeros (invalid in both W3C and B3).
fn parse_id<const N: usize>(hex: &[u8], upper: bool) -> Option<[u8; N]> {
    if hex.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *o = (nibble(pair[0], upper)? << 4) | nibble(pair[1], upper)?;
    }
    (out != [0u8; N]).then_some(out)
}

#[inline]
fn nibble(c: u8, upper: bool) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' if upper => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `traceparent: {version}-{trace-id}-{parent-id}-{flags}` (W3C Trace Context §3.2): version
/// `00` is exactly 55 characters; a later version (not `ff`) may carry more after a `-`, which
/// is ignored. Lower-case hex only, ids not all zero.
fn parse_traceparent(v: &[u8]) -> Option<Parent> {
    let v = v.trim_ascii();
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = (nibble(v[0], false)? << 4) | nibble(v[1], false)?;
    match version {
        0xff => return None,
        0 if v.len() != 55 => return None,
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    let trace_id = parse_id::<16>(&v[3..35], false)?;
    let span_id = parse_id::<8>(&v[36..52], false)?;
    let flags = (nibble(v[53], false)? << 4) | nibble(v[54], false)?;
    Some(Parent {
        trace_id,
        span_id,
        sampled: Some(flags & 1 == 1),
        debug: false,
        short_trace_id: false,
    })
}

enum B3Single {
    Context(Parent),
    Decision { sampled: bool, debug: bool },
    Invalid,
}

/// `b3: {trace-id}-{span-id}[-{sampling}[-{parent-span-id}]]`, or `b3: {sampling}` alone
/// (`0`, `1`, `d`). The trace id is 16 or 32 hex digits.
fn parse_b3_single(v: &[u8]) -> B3Single {
    let v = v.trim_ascii();
    match v {
        b"0" => {
            return B3Single::Decision {
                sampled: false,
                debug: false,
            }
        }
        b"1" => {
            return B3Single::Decision {
                sampled: true,
                debug: false,
            }
        }
        b"d" => {
            return B3Single::Decision {
                sampled: true,
                debug: true,
            }
        }
        _ => {}
    }
    let mut parts = v.split(|&b| b == b'-');
    let (Some(t), Some(s)) = (parts.next(), parts.next()) else {
        return B3Single::Invalid;
    };
    let sampling = parts.next();
    let parent = parts.next();
    if parts.next().is_some() || parent.is_some_and(|p| parse_id::<8>(p, true).is_none()) {
        return B3Single::Invalid;
    }
    let (Some((trace_id, short_trace_id)), Some(span_id)) = (parse_b3_trace_id(t), parse_id::<8>(s, true)) else {
        return B3Single::Invalid;
    };
    let (sampled, debug) = match sampling {
        None => (None, false),
        Some(b"0") => (Some(false), false),
        Some(b"1") => (Some(true), false),
        Some(b"d") => (Some(true), true),
        Some(_) => return B3Single::Invalid,
    };
    B3Single::Context(Parent {
        trace_id,
        span_id,
        sampled,
        debug,
        short_trace_id,
    })
}

/// A B3 trace id: 32 hex digits, or 16 (a 64-bit id, the high half zero).
fn parse_b3_trace_id(t: &[u8]) -> Option<(TraceId, bool)> {
    match t.len() {
        32 => parse_id::<16>(t, true).map(|id| (id, false)),
        16 => parse_id::<8>(t, true).map(|low| {
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&low);
            (id, true)
        }),
        _ => None,
    }
}

/// `x-b3-sampled`: `1`/`0`, and the `true`/`false` older tracers send.
fn parse_b3_sampled(v: &[u8]) -> Option<bool> {
    match v.trim_ascii() {
        b"1" => Some(true),
        b"0" => Some(false),
        t if t.eq_ignore_ascii_case(b"true") => Some(true),
        t if t.eq_ignore_ascii_case(b"false") => Some(false),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn put_hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[(b >> 4) as usize];
        pair[1] = HEX[(b & 0xf) as usize];
    }
}

/// Lower-case hex of an id.
#[cfg(test)]
pub(crate) fn hex<const N: usize>(id: &[u8; N]) -> String {
    let mut out = vec![0u8; 2 * N];
    put_hex(&mut out, id);
    String::from_utf8(out).unwrap_or_default()
}

/// Most fields one context writes: `traceparent`, `b3`, and four `x-b3-*`.
pub(crate) const MAX_FIELDS: usize = 6;

/// This hop's context as fields for the upstream request, formatted on the stack.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    /// `00-` trace `-` span `-` flags.
    traceparent: Option<[u8; 55]>,
    /// trace `-` span `-` state [`-` parent]: at most 32 + 1 + 16 + 1 + 1 + 1 + 16.
    b3: Option<([u8; 68], u8)>,
    /// `x-b3-*`.
    multi: Option<Multi>,
}

#[derive(Debug, Clone)]
struct Multi {
    trace_id: ([u8; 32], u8),
    span_id: [u8; 16],
    parent: Option<[u8; 16]>,
    debug: bool,
    sampled: bool,
}

impl Outgoing {
    /// The fields that carry `ctx` to the next hop, in the formats `ctx` came with.
    pub(crate) fn of(ctx: &TraceContext) -> Outgoing {
        let formats = ctx.formats;
        let trace_hex_len = if ctx.short_trace_id { 16 } else { 32 };
        let trace_bytes: &[u8] = if ctx.short_trace_id {
            &ctx.trace_id[8..]
        } else {
            &ctx.trace_id
        };
        let traceparent = formats.contains(Formats::W3C).then(|| {
            let mut v = [b'-'; 55];
            v[0] = b'0';
            v[1] = b'0';
            put_hex(&mut v[3..35], &ctx.trace_id);
            put_hex(&mut v[36..52], &ctx.span_id);
            v[53] = b'0';
            v[54] = if ctx.sampled { b'1' } else { b'0' };
            v
        });
        let b3 = formats.contains(Formats::B3_SINGLE).then(|| {
            let mut v = [0u8; 68];
            let mut n = trace_hex_len;
            put_hex(&mut v[..n], trace_bytes);
            v[n] = b'-';
            put_hex(&mut v[n + 1..n + 17], &ctx.span_id);
            n += 17;
            v[n] = b'-';
            v[n + 1] = match (ctx.debug, ctx.sampled) {
                (true, _) => b'd',
                (false, true) => b'1',
                (false, false) => b'0',
            };
            n += 2;
            if let Some(parent) = &ctx.parent_span_id {
                v[n] = b'-';
                put_hex(&mut v[n + 1..n + 17], parent);
                n += 17;
            }
            (v, n as u8)
        });
        let multi = formats.contains(Formats::B3_MULTI).then(|| {
            let mut trace_id = [0u8; 32];
            put_hex(&mut trace_id[..trace_hex_len], trace_bytes);
            let mut span_id = [0u8; 16];
            put_hex(&mut span_id, &ctx.span_id);
            let parent = ctx.parent_span_id.map(|p| {
                let mut h = [0u8; 16];
                put_hex(&mut h, &p);
                h
            });
            Multi {
                trace_id: (trace_id, trace_hex_len as u8),
                span_id,
                parent,
                debug: ctx.debug,
                sampled: ctx.sampled,
            }
        });
        Outgoing { traceparent, b3, multi }
    }

    /// The fields, lower-case names, in the order they are written.
    pub(crate) fn fields(&self) -> FieldList<'_> {
        let mut list = FieldList {
            items: [("", &[][..]); MAX_FIELDS],
            len: 0,
        };
        if let Some(v) = &self.traceparent {
            list.push("traceparent", v);
        }
        if let Some((v, n)) = &self.b3 {
            list.push("b3", &v[..*n as usize]);
        }
        if let Some(m) = &self.multi {
            list.push("x-b3-traceid", &m.trace_id.0[..m.trace_id.1 as usize]);
            list.push("x-b3-spanid", &m.span_id);
            if let Some(p) = &m.parent {
                list.push("x-b3-parentspanid", p);
            }
            // Debug implies sampled; B3 says not to send both.
            if m.debug {
                list.push("x-b3-flags", b"1");
            } else {
                list.push("x-b3-sampled", if m.sampled { b"1" } else { b"0" });
            }
        }
        list
    }
}

/// Up to [`MAX_FIELDS`] `(name, value)` pairs borrowed from an [`Outgoing`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct FieldList<'a> {
    items: [(&'static str, &'a [u8]); MAX_FIELDS],
    len: usize,
}

impl<'a> FieldList<'a> {
    fn push(&mut self, name: &'static str, value: &'a [u8]) {
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = (name, value);
            self.len += 1;
        }
    }

    /// The pairs.
    pub(crate) fn as_slice(&self) -> &[(&'static str, &'a [u8])] {
        &self.items[..self.len]
    }
}
