//! Tests of tracing: every wire format read and written (malformed values included), the
//! sampling decision, the encoders replacing the request's fields, the span's attributes and
//! name, the per-core buffer's hand-off and the exporter's queue and request.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use ringmesh_api::otlp::common::v1::any_value;
use ringmesh_api::otlp::trace::v1::{span as pb_span, status};
use ringmesh_api::snapshot::{HeaderOps, Snapshot, Tracing};

use super::context::{hex, Formats, Incoming, Outgoing};
use super::span::{SpanBuffer, SpanFacts, SpanKind, SpanRecord};
use super::stats::{ExportStats, TraceStats, TraceTotals};
use super::{begin, export, sampling, TraceContext};
use crate::rng::FastRng;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

fn fields<'a>(pairs: &'a [(&'a str, &'a str)]) -> Incoming {
    Incoming::from_fields(pairs.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
}

fn tp(flags: &str) -> String {
    format!("00-{TRACE}-{SPAN}-{flags}")
}

fn ids(inc: &Incoming) -> Option<(String, String, Option<bool>)> {
    inc.parent.map(|p| (hex(&p.trace_id), hex(&p.span_id), p.sampled))
}

// --- reading ---

#[test]
fn w3c_traceparent_gives_the_parent_and_its_decision() {
    let inc = fields(&[("traceparent", &tp("01"))]);
    assert_eq!(ids(&inc), Some((TRACE.into(), SPAN.into(), Some(true))));
    assert_eq!(inc.formats, Formats::W3C);
    let inc = fields(&[("traceparent", &tp("00"))]);
    assert_eq!(ids(&inc).map(|i| i.2), Some(Some(false)));
    // Other flag bits do not make it sampled; only bit 0 does.
    let inc = fields(&[("traceparent", &tp("02"))]);
    assert_eq!(ids(&inc).map(|i| i.2), Some(Some(false)));
    let inc = fields(&[("traceparent", &tp("03"))]);
    assert_eq!(ids(&inc).map(|i| i.2), Some(Some(true)));
}

#[test]
fn names_are_matched_in_any_case_and_the_first_value_counts() {
    let second = format!("00-{}-{SPAN}-01", "1".repeat(32));
    let inc = fields(&[("TraceParent", &tp("01")), ("traceparent", &second)]);
    assert_eq!(ids(&inc).map(|i| i.0), Some(TRACE.into()));
}

#[test]
fn malformed_traceparents_are_ignored() {
    let bad = [
        format!("00-{}-{SPAN}-01", TRACE.to_uppercase()), // upper-case hex
        format!("00-{}-{SPAN}-01", "0".repeat(32)),       // all-zero trace id
        format!("00-{TRACE}-{}-01", "0".repeat(16)),      // all-zero span id
        format!("ff-{TRACE}-{SPAN}-01"),                  // version ff
        format!("00-{TRACE}-{SPAN}-01-extra"),            // version 00 is exactly 55
        format!("01-{TRACE}-{SPAN}-01extra"),             // a later version: `-` after 55
        format!("00-{}-{SPAN}-01", &TRACE[..31]),         // short trace id
        format!("00_{TRACE}-{SPAN}-01"),                  // separator
        format!("00-{TRACE}-{SPAN}-0g"),                  // flags not hex
        format!("0x-{TRACE}-{SPAN}-01"),                  // version not hex
        String::new(),
        "garbage".into(),
        "é".repeat(30),
    ];
    for v in &bad {
        let inc = fields(&[("traceparent", v)]);
        assert_eq!(inc.parent, None, "{v:?} accepted");
        assert_eq!(inc.formats, Formats::W3C, "W3C is still what the caller speaks");
        assert_eq!(inc.decision, None);
    }
}

#[test]
fn later_traceparent_versions_are_read_by_their_first_fields() {
    let inc = fields(&[("traceparent", &format!("01-{TRACE}-{SPAN}-01-what-comes-next"))]);
    assert_eq!(ids(&inc), Some((TRACE.into(), SPAN.into(), Some(true))));
    // Surrounding whitespace is trimmed.
    let inc = fields(&[("traceparent", &format!("  {}\t", tp("01")))]);
    assert!(inc.parent.is_some());
}

#[test]
fn tracestate_is_not_a_propagation_field() {
    let inc = fields(&[("tracestate", "rojo=00f067aa0ba902b7")]);
    assert_eq!(inc, Incoming::default());
    assert!(!super::is_propagation_field(b"tracestate"));
    for n in [
        "traceparent",
        "B3",
        "x-b3-traceid",
        "X-B3-SpanId",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "x-b3-flags",
    ] {
        assert!(super::is_propagation_field(n.as_bytes()), "{n}");
    }
    for n in ["x-b3", "trace", "b4", "x-request-id", "x-b3-traceidx"] {
        assert!(!super::is_propagation_field(n.as_bytes()), "{n}");
    }
}

#[test]
fn b3_single_in_every_shape() {
    let full = format!("{TRACE}-{SPAN}-1-05e3ac9a4f6e3b90");
    let inc = fields(&[("b3", &full)]);
    assert_eq!(ids(&inc), Some((TRACE.into(), SPAN.into(), Some(true))));
    assert_eq!(inc.formats, Formats::B3_SINGLE);

    // 64-bit trace id: the high half zero, remembered as short.
    let inc = fields(&[("b3", &format!("a3ce929d0e0e4736-{SPAN}-0"))]);
    let p = inc.parent.expect("parent");
    assert_eq!(hex(&p.trace_id), "0000000000000000a3ce929d0e0e4736");
    assert!(p.short_trace_id);
    assert_eq!(p.sampled, Some(false));

    // No sampling state: deferred to this hop.
    let inc = fields(&[("b3", &format!("{TRACE}-{SPAN}"))]);
    assert_eq!(ids(&inc).map(|i| i.2), Some(None));

    // Debug.
    let p = fields(&[("b3", &format!("{TRACE}-{SPAN}-d"))]).parent.expect("parent");
    assert!(p.debug && p.sampled == Some(true));

    // A decision alone.
    let inc = fields(&[("b3", "0")]);
    assert_eq!((inc.parent, inc.decision, inc.debug), (None, Some(false), false));
    let inc = fields(&[("b3", "1")]);
    assert_eq!((inc.parent, inc.decision), (None, Some(true)));
    let inc = fields(&[("b3", "d")]);
    assert_eq!((inc.decision, inc.debug), (Some(true), true));

    for bad in [
        format!("{TRACE}-{SPAN}-x"),
        format!("{TRACE}-{SPAN}-1-{SPAN}-more"),
        format!("{TRACE}-{SPAN}-1-short"),
        TRACE.to_string(),
        format!("{}-{SPAN}-1", "0".repeat(32)),
        format!("{TRACE}-{}-1", "0".repeat(16)),
        format!("{}-{SPAN}", &TRACE[..20]),
        "2".into(),
        String::new(),
    ] {
        let inc = fields(&[("b3", &bad)]);
        assert_eq!((inc.parent, inc.decision), (None, None), "{bad:?}");
        assert_eq!(inc.formats, Formats::B3_SINGLE);
    }
}

#[test]
fn b3_multi_in_every_shape() {
    let inc = fields(&[
        ("X-B3-TraceId", TRACE),
        ("X-B3-SpanId", SPAN),
        ("X-B3-ParentSpanId", "05e3ac9a4f6e3b90"),
        ("X-B3-Sampled", "1"),
    ]);
    assert_eq!(ids(&inc), Some((TRACE.into(), SPAN.into(), Some(true))));
    assert_eq!(inc.formats, Formats::B3_MULTI);

    let p = fields(&[("x-b3-traceid", "a3ce929d0e0e4736"), ("x-b3-spanid", SPAN)])
        .parent
        .expect("64-bit");
    assert!(p.short_trace_id);
    assert_eq!(p.sampled, None, "no x-b3-sampled: deferred");

    for (v, want) in [
        ("true", Some(true)),
        ("false", Some(false)),
        ("0", Some(false)),
        ("yes", None),
    ] {
        let inc = fields(&[("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN), ("x-b3-sampled", v)]);
        assert_eq!(ids(&inc).map(|i| i.2), Some(want), "{v}");
    }
    // Debug wins over an explicit 0.
    let p = fields(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-sampled", "0"),
        ("x-b3-flags", "1"),
    ])
    .parent
    .expect("parent");
    assert!(p.debug && p.sampled == Some(true));

    // Without a span id there is no parent, but the decision counts.
    let inc = fields(&[("x-b3-traceid", TRACE), ("x-b3-sampled", "1")]);
    assert_eq!((inc.parent, inc.decision), (None, Some(true)));
    let inc = fields(&[("x-b3-flags", "1")]);
    assert_eq!((inc.decision, inc.debug), (Some(true), true));
    let inc = fields(&[("x-b3-traceid", "xyz"), ("x-b3-spanid", SPAN)]);
    assert_eq!(inc.parent, None);
}

#[test]
fn w3c_wins_over_b3_and_both_are_sent_on() {
    let other = "11111111111111111111111111111111";
    let inc = fields(&[
        ("x-b3-traceid", other),
        ("x-b3-spanid", SPAN),
        ("x-b3-sampled", "0"),
        ("b3", &format!("{other}-{SPAN}-0")),
        ("traceparent", &tp("01")),
    ]);
    assert_eq!(ids(&inc), Some((TRACE.into(), SPAN.into(), Some(true))));
    assert!(inc.formats.contains(Formats::W3C));
    assert!(inc.formats.contains(Formats::B3_SINGLE));
    assert!(inc.formats.contains(Formats::B3_MULTI));
    // A broken traceparent falls back to B3's ids.
    let inc = fields(&[("traceparent", "00-bad"), ("b3", &format!("{other}-{SPAN}-1"))]);
    assert_eq!(ids(&inc).map(|i| i.0), Some(other.into()));
}

#[test]
fn lookup_reads_the_same_as_one_pass() {
    let pairs = [("b3", "0"), ("x-b3-traceid", TRACE)];
    let by_lookup = Incoming::from_lookup(|name| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_bytes()));
    assert_eq!(by_lookup, fields(&pairs));
}

// --- sampling and ids ---

#[test]
fn sampling_rate_zero_one_and_between() {
    let rng = FastRng::with_seed(7);
    assert!((0..10_000).all(|_| !sampling::sample(&rng, 0.0)));
    assert!((0..10_000).all(|_| sampling::sample(&rng, 1.0)));
    assert!(!sampling::sample(&rng, f64::NAN));
    let hits = (0..100_000).filter(|_| sampling::sample(&rng, 0.01)).count();
    assert!((800..1200).contains(&hits), "1 % of 100000 draws: {hits}");
    let hits = (0..100_000).filter(|_| sampling::sample(&rng, 0.5)).count();
    assert!((48_500..51_500).contains(&hits), "{hits}");
}

#[test]
fn an_incoming_decision_is_respected_whatever_the_rate() {
    let rng = FastRng::with_seed(1);
    for _ in 0..100 {
        let not = sampling::begin(&rng, 1.0, &fields(&[("traceparent", &tp("00"))]));
        assert!(!not.sampled, "the caller said no");
        let yes = sampling::begin(&rng, 0.0, &fields(&[("traceparent", &tp("01"))]));
        assert!(yes.sampled, "the caller said yes");
        assert!(!sampling::begin(&rng, 1.0, &fields(&[("b3", "0")])).sampled);
        let debug = sampling::begin(&rng, 0.0, &fields(&[("x-b3-flags", "1")]));
        assert!(debug.sampled && debug.debug);
    }
    // Deferred (B3 without a sampling state): the rate decides.
    let deferred = [("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN)];
    assert!(sampling::begin(&rng, 1.0, &fields(&deferred)).sampled);
    assert!(!sampling::begin(&rng, 0.0, &fields(&deferred)).sampled);
}

#[test]
fn a_hop_keeps_the_trace_and_descends_from_the_caller() {
    let rng = FastRng::with_seed(3);
    let ctx = sampling::begin(&rng, 0.0, &fields(&[("traceparent", &tp("01"))]));
    assert_eq!(hex(&ctx.trace_id), TRACE);
    assert_eq!(ctx.parent_span_id.map(|p| hex(&p)), Some(SPAN.into()));
    assert_ne!(hex(&ctx.span_id), SPAN);
    assert_ne!(ctx.span_id, [0; 8]);
    assert_eq!(ctx.formats, Formats::W3C);

    // None in: a new trace, W3C and B3 multi out.
    let a = sampling::begin(&rng, 0.0, &Incoming::default());
    let b = sampling::begin(&rng, 0.0, &Incoming::default());
    assert_ne!(a.trace_id, b.trace_id);
    assert_ne!(a.trace_id, [0; 16]);
    assert_eq!(a.parent_span_id, None);
    assert_eq!(a.formats, Formats::STARTED_HERE);
    // A malformed traceparent: a new trace, said in W3C only.
    let c = sampling::begin(&rng, 0.0, &fields(&[("traceparent", "00-nope")]));
    assert_eq!((c.parent_span_id, c.formats), (None, Formats::W3C));
}

#[test]
fn tracing_off_reads_nothing() {
    let rng = FastRng::with_seed(3);
    let off = Tracing::default();
    assert!(begin(&rng, &off, || panic!("fields read while tracing is off")).is_none());
    let on = Tracing {
        enabled: true,
        sampling: 0.0,
        ..Tracing::default()
    };
    assert!(begin(&rng, &on, Incoming::default).is_some_and(|c| !c.sampled));
}

// --- writing ---

fn ctx(formats: Formats) -> TraceContext {
    let mut trace_id = [0u8; 16];
    trace_id.copy_from_slice(&(0x4bf92f3577b34da6a3ce929d0e0e4736u128).to_be_bytes());
    TraceContext {
        trace_id,
        span_id: 0x1111_2222_3333_4444u64.to_be_bytes(),
        parent_span_id: Some(0x00f0_67aa_0ba9_02b7u64.to_be_bytes()),
        sampled: true,
        debug: false,
        short_trace_id: false,
        formats,
        request_id: None,
    }
}

fn written(c: &TraceContext) -> Vec<(String, String)> {
    let out = Outgoing::of(c);
    let list = out.fields();
    list.as_slice()
        .iter()
        .map(|(n, v)| (n.to_string(), String::from_utf8(v.to_vec()).expect("ascii")))
        .collect()
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

#[test]
fn each_format_goes_out_as_it_came_in_with_this_hop_as_parent() {
    let span = "1111222233334444";
    assert_eq!(
        written(&ctx(Formats::W3C)),
        pairs(&[("traceparent", &format!("00-{TRACE}-{span}-01"))])
    );
    assert_eq!(
        written(&ctx(Formats::B3_SINGLE)),
        pairs(&[("b3", &format!("{TRACE}-{span}-1-{SPAN}"))])
    );
    assert_eq!(
        written(&ctx(Formats::B3_MULTI)),
        pairs(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", span),
            ("x-b3-parentspanid", SPAN),
            ("x-b3-sampled", "1"),
        ])
    );
    // Started here: W3C and B3 multi, no parent.
    let mut c = ctx(Formats::STARTED_HERE);
    c.parent_span_id = None;
    c.sampled = false;
    assert_eq!(
        written(&c),
        pairs(&[
            ("traceparent", &format!("00-{TRACE}-{span}-00")),
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", span),
            ("x-b3-sampled", "0"),
        ])
    );
}

#[test]
fn b3_keeps_its_64_bit_ids_and_debug() {
    let rng = FastRng::with_seed(9);
    let inc = fields(&[("b3", &format!("a3ce929d0e0e4736-{SPAN}-d"))]);
    let c = sampling::begin(&rng, 0.0, &inc);
    let out = written(&c);
    let span = hex(&c.span_id);
    assert_eq!(out, pairs(&[("b3", &format!("a3ce929d0e0e4736-{span}-d-{SPAN}"))]));

    let inc = fields(&[
        ("x-b3-traceid", "a3ce929d0e0e4736"),
        ("x-b3-spanid", SPAN),
        ("x-b3-flags", "1"),
    ]);
    let c = sampling::begin(&rng, 0.0, &inc);
    assert_eq!(
        written(&c),
        pairs(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", &hex(&c.span_id)),
            ("x-b3-parentspanid", SPAN),
            ("x-b3-flags", "1"),
        ]),
        "debug goes as x-b3-flags alone"
    );
    // W3C has no 64-bit ids: the high half is zeros.
    let mut w = c;
    w.formats = Formats::W3C;
    assert_eq!(written(&w)[0].1[3..35], *"0000000000000000a3ce929d0e0e4736");
}

#[test]
fn what_goes_out_reads_back_as_this_hop() {
    let rng = FastRng::with_seed(11);
    for formats in [
        Formats::W3C,
        Formats::B3_SINGLE,
        Formats::B3_MULTI,
        Formats::STARTED_HERE,
    ] {
        let c = ctx(formats);
        let out = Outgoing::of(&c);
        let list = out.fields();
        let next = Incoming::from_fields(list.as_slice().iter().map(|(n, v)| (n.as_bytes(), *v)));
        let p = next.parent.expect("the next hop reads a parent");
        assert_eq!((p.trace_id, p.span_id, p.sampled), (c.trace_id, c.span_id, Some(true)));
        assert_eq!(next.formats, formats);
        let child = sampling::begin(&rng, 0.0, &next);
        assert_eq!(child.parent_span_id, Some(c.span_id));
    }
}

// --- the encoders ---

const INCOMING: &[u8] =
    b"GET /p HTTP/1.1\r\nHost: h\r\nTraceParent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
tracestate: rojo=1\r\nX-B3-Sampled: 1\r\nb3: 0\r\nx-b3-flags: 1\r\nX-Kept: k\r\n\r\n";

#[test]
fn h1_head_carries_ours_in_place_of_the_request_s_fields() {
    use crate::http::h1::{encode_request_head, parse_request_head, HeadLimits, RequestEncode};
    let head = parse_request_head(INCOMING, &HeadLimits::default())
        .expect("parses")
        .expect("complete");
    let c = ctx(Formats::W3C);
    let out = Outgoing::of(&c);
    let list = out.fields();
    let mut dst = BytesMut::new();
    let opts = RequestEncode {
        trace: Some(list.as_slice()),
        ..RequestEncode::passthrough(&head)
    };
    encode_request_head(&head, INCOMING, &opts, &mut dst);
    assert_eq!(
        std::str::from_utf8(&dst).expect("ascii"),
        "GET /p HTTP/1.1\r\nhost: h\r\ntracestate: rojo=1\r\nX-Kept: k\r\n\
traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-1111222233334444-01\r\n\r\n"
    );
    // Tracing off: every field as it came.
    let mut dst = BytesMut::new();
    encode_request_head(&head, INCOMING, &RequestEncode::passthrough(&head), &mut dst);
    let text = std::str::from_utf8(&dst).expect("ascii");
    assert!(text.contains("TraceParent: 00-4bf9") && text.contains("b3: 0\r\n") && text.contains("x-b3-flags"));
}

#[test]
fn h2_request_carries_ours_in_place_of_the_request_s_fields() {
    use crate::http::h1::{parse_request_head, HeadLimits, Xfcc};
    use crate::http::h2::headers::{Outgoing as H2Out, Rewrite};
    let c = ctx(Formats::B3_MULTI);
    let out = Outgoing::of(&c);
    let list = out.fields();
    let ops = HeaderOps::default();
    let rw = Rewrite {
        path: None,
        authority: None,
        ops: &ops,
        client_ip: Ipv4Addr::LOCALHOST.into(),
        request_id: b"00000000-0000-4000-8000-000000000000",
        xfcc: Xfcc::Sanitize,
        trace: Some(list.as_slice()),
    };
    let want = [
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", "1111222233334444"),
        ("x-b3-parentspanid", SPAN),
        ("x-b3-sampled", "1"),
    ];
    let check = |h: &http::HeaderMap| {
        assert!(h.get("traceparent").is_none() && h.get("b3").is_none() && h.get("x-b3-flags").is_none());
        assert_eq!(h.get("tracestate").map(|v| v.as_bytes()), Some(&b"rojo=1"[..]));
        assert_eq!(h.get("x-kept").map(|v| v.as_bytes()), Some(&b"k"[..]));
        for (n, v) in want {
            let all: Vec<_> = h.get_all(n).iter().map(|v| v.as_bytes().to_vec()).collect();
            assert_eq!(all, [v.as_bytes().to_vec()], "{n}: one value, ours");
        }
    };
    // From an HTTP/1.1 head.
    let head = parse_request_head(INCOMING, &HeadLimits::default())
        .expect("parses")
        .expect("complete");
    check(&H2Out::from_h1(&head, INCOMING, &rw).to_h2().headers().clone());
    // From an HTTP/2 request.
    let req = http::Request::get("http://h/p")
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .header("tracestate", "rojo=1")
        .header("x-b3-sampled", "0")
        .header("x-b3-spanid", "aaaaaaaaaaaaaaaa")
        .header("x-kept", "k")
        .body(())
        .expect("request");
    let (parts, ()) = req.into_parts();
    check(&H2Out::from_h2(&parts, true, &rw).to_h2().headers().clone());
}

// --- spans ---

const MESH: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: shop}
spec:
  hosts: [ratings.shop.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.2}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-split, namespace: shop}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  http:
  - match: [{uri: {prefix: /api/}}]
    route:
    - destination: {host: reviews.shop.svc.cluster.local}
  - match: [{uri: {exact: /health}}]
    route:
    - destination: {host: reviews.shop.svc.cluster.local}
      weight: 50
    - destination: {host: ratings.shop.svc.cluster.local}
      weight: 50
  - route:
    - destination: {host: ratings.shop.svc.cluster.local}
";

fn mesh() -> Snapshot {
    let (resources, _) = ringmesh_api::load_str("mesh.yaml", MESH).expect("loads");
    ringmesh_api::compile(&ringmesh_api::CompileInput {
        resources,
        extra_endpoints: Vec::new(),
        version: 1,
    })
    .expect("compiles")
    .snapshot
}

fn facts<'a>(route: Option<&'a ringmesh_api::snapshot::Route>) -> SpanFacts<'a> {
    SpanFacts {
        kind: SpanKind::Client,
        start: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        duration: Duration::from_micros(1500),
        method: "GET",
        authority: "reviews.shop.svc.cluster.local:9080",
        path: b"/api/v1/books",
        query: Some(b"id=1"),
        request_id: None,
        user_agent: Some(b"curl/8"),
        downstream_cluster: None,
        protocol: "HTTP/1.1",
        peer: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        request_size: 10,
        response_size: 20,
        route,
        cluster: Some("outbound|9080||reviews.shop.svc.cluster.local"),
        status: 200,
        response_flags: None,
        grpc_status: None,
    }
}

#[test]
fn spans_are_named_as_istio_names_its_routes() {
    let s = mesh();
    let vh = &s.routes.virtual_hosts[0];
    let name = |f: &SpanFacts<'_>| SpanRecord::new(&ctx(Formats::W3C), f, Some(&s), 256).name;
    assert_eq!(
        name(&facts(Some(&vh.routes[0]))),
        "reviews.shop.svc.cluster.local:9080/api/*"
    );
    assert_eq!(
        name(&facts(Some(&vh.routes[1]))),
        "reviews-split:9080/health",
        "several destinations"
    );
    assert_eq!(
        name(&facts(Some(&vh.routes[2]))),
        "ratings.shop.svc.cluster.local:9080/*"
    );
    // No route: Envoy's defaults.
    assert_eq!(name(&facts(None)), "egress reviews.shop.svc.cluster.local:9080");
    let inbound = SpanFacts {
        kind: SpanKind::Server,
        ..facts(None)
    };
    assert_eq!(name(&inbound), "ingress");
}

#[test]
fn a_span_carries_envoy_s_and_istio_s_attributes() {
    let s = mesh();
    let mut c = ctx(Formats::W3C);
    c.request_id = Some(*b"0f0e0d0c-0b0a-4000-8000-000000000001");
    let record = SpanRecord::new(&c, &facts(None), Some(&s), 256);
    assert_eq!(record.start_unix_nanos, 1_700_000_000_000_000_000);
    assert_eq!(record.end_unix_nanos - record.start_unix_nanos, 1_500_000);
    let mut tracing = Tracing::default();
    tracing.identity.service_name = "reviews.shop".into();
    tracing.identity.node_id = "sidecar~10.1.2.3~reviews-v1.shop~shop.svc.cluster.local".into();
    tracing.identity.zone = "z1".into();
    tracing.identity.canonical_service = "reviews".into();
    tracing.identity.canonical_revision = "v1".into();
    tracing.identity.mesh_id = "cluster.local".into();
    tracing.identity.namespace = "shop".into();
    let failed = SpanRecord::new(
        &ctx(Formats::W3C),
        &SpanFacts {
            status: 503,
            response_flags: Some("UF"),
            cluster: None,
            request_id: Some(b"client-id"),
            ..facts(None)
        },
        Some(&s),
        8,
    );
    let req = export::request([record, failed].into_iter(), &tracing, &s);
    let rs = &req.resource_spans[0];
    let text = |v: &Option<ringmesh_api::otlp::common::v1::AnyValue>| match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        other => panic!("not a string: {other:?}"),
    };
    let resource: Vec<(String, String)> = rs
        .resource
        .as_ref()
        .expect("resource")
        .attributes
        .iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect();
    assert!(
        resource.contains(&("service.name".into(), "reviews.shop".into())),
        "{resource:?}"
    );
    assert!(resource.contains(&("istio.canonical_service".into(), "reviews".into())));
    let spans = &rs.scope_spans[0].spans;
    let attrs = |i: usize| -> std::collections::BTreeMap<String, String> {
        spans[i]
            .attributes
            .iter()
            .map(|kv| (kv.key.clone(), text(&kv.value)))
            .collect()
    };
    let ok = attrs(0);
    let want = [
        ("node_id", "sidecar~10.1.2.3~reviews-v1.shop~shop.svc.cluster.local"),
        ("zone", "z1"),
        ("guid:x-request-id", "0f0e0d0c-0b0a-4000-8000-000000000001"),
        (
            "http.url",
            "http://reviews.shop.svc.cluster.local:9080/api/v1/books?id=1",
        ),
        ("http.method", "GET"),
        ("downstream_cluster", "-"),
        ("user_agent", "curl/8"),
        ("http.protocol", "HTTP/1.1"),
        ("peer.address", "10.1.2.3"),
        ("request_size", "10"),
        ("response_size", "20"),
        ("component", "proxy"),
        ("upstream_cluster", "outbound|9080||reviews.shop.svc.cluster.local"),
        ("upstream_cluster.name", "outbound|9080||reviews.shop.svc.cluster.local"),
        ("http.status_code", "200"),
        ("response_flags", "-"),
        ("istio.canonical_revision", "v1"),
        ("istio.canonical_service", "reviews"),
        ("istio.mesh_id", "cluster.local"),
        ("istio.namespace", "shop"),
    ];
    for (k, v) in want {
        assert_eq!(ok.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert_eq!(ok.len(), want.len(), "{ok:?}");
    assert_eq!(spans[0].kind, pb_span::SpanKind::Client as i32);
    assert_eq!(spans[0].trace_id, ctx(Formats::W3C).trace_id.to_vec());
    assert_eq!(spans[0].parent_span_id, 0x00f0_67aa_0ba9_02b7u64.to_be_bytes().to_vec());
    assert_eq!(
        spans[0].status.as_ref().map(|s| s.code),
        Some(status::StatusCode::Unset as i32)
    );

    let bad = attrs(1);
    assert_eq!(bad.get("error").map(String::as_str), Some("true"));
    assert_eq!(bad.get("response_flags").map(String::as_str), Some("UF"));
    assert_eq!(
        bad.get("guid:x-request-id").map(String::as_str),
        Some("client-id"),
        "the client's id wins"
    );
    assert_eq!(
        bad.get("http.url").map(String::as_str),
        Some("http://reviews.shop.svc.cluster.local:9080/api/v1/"),
        "the path cut at maxPathTagLength"
    );
    assert!(!bad.contains_key("upstream_cluster"));
    assert_eq!(
        spans[1].status.as_ref().map(|s| s.code),
        Some(status::StatusCode::Error as i32)
    );
}

// --- the worker's buffer and the exporter's queue ---

fn record(n: u8) -> SpanRecord {
    let mut c = ctx(Formats::W3C);
    c.span_id = [n; 8];
    SpanRecord::new(&c, &facts(None), None, 256)
}

#[test]
fn a_worker_hands_over_full_batches_and_counts_what_does_not_fit() {
    let (tx, rx) = flume::bounded(1);
    let buf = SpanBuffer::new(tx);
    let stats = TraceStats::default();
    buf.push(record(1), 2, &stats);
    assert_eq!((buf.held(), rx.len()), (1, 0), "below a batch: held");
    buf.push(record(2), 2, &stats);
    assert_eq!((buf.held(), rx.len()), (0, 1), "a full batch goes at once");
    // The hand-off is full: the next batch is dropped and counted, the worker does not wait.
    buf.push(record(3), 2, &stats);
    buf.push(record(4), 2, &stats);
    assert_eq!(buf.held(), 0);
    assert_eq!(stats.dropped.get(), 2);
    assert_eq!(stats.spans.get(), 4);
    // The timer's flush: nothing held, nothing sent.
    buf.flush(&stats);
    assert_eq!(rx.len(), 1);
    let got = rx.try_recv().expect("batch");
    assert_eq!(got.iter().map(|s| s.span_id[0]).collect::<Vec<_>>(), [1, 2]);
    // Flushing what a quiet worker holds.
    buf.push(record(5), 100, &stats);
    buf.flush(&stats);
    assert_eq!(rx.try_recv().expect("flushed").len(), 1);
    // The exporter gone (the proxy stopping): dropped and counted too.
    drop(rx);
    buf.push(record(6), 1, &stats);
    assert_eq!(stats.dropped.get(), 3);
}

#[test]
fn the_exporter_queue_is_bounded_and_counts_its_drops() {
    let stats = ExportStats::default();
    let mut queue = std::collections::VecDeque::new();
    export::enqueue(&mut queue, (0..3).map(record).collect(), 4, &stats);
    export::enqueue(&mut queue, (3..6).map(record).collect(), 4, &stats);
    assert_eq!(queue.len(), 4);
    assert_eq!(
        queue.iter().map(|s| s.span_id[0]).collect::<Vec<_>>(),
        [0, 1, 2, 3],
        "the oldest are kept"
    );
    let mut totals = TraceTotals::default();
    totals.add_exporter(&stats);
    assert_eq!(totals.dropped_queue_full, 2);
    let mut out = String::new();
    totals.write_prometheus(&mut out);
    assert!(
        out.contains("ringmesh_tracing_spans_dropped_total{reason=\"queue_full\"} 2\n"),
        "{out}"
    );
    assert!(out.contains("ringmesh_tracing_spans_exported_total 0\n"));
    assert!(out.contains("ringmesh_tracing_export_failures_total 0\n"));
}

#[test]
fn rejected_spans_and_failed_exports_are_counted() {
    use ringmesh_api::otlp::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceResponse};
    let stats = ExportStats::default();
    export::account(
        10,
        Ok(ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "too old".into(),
            }),
        }),
        &stats,
    );
    export::account(5, Err(export::ExportError::Http(503)), &stats);
    let mut t = TraceTotals::default();
    t.add_exporter(&stats);
    assert_eq!((t.exported, t.dropped_export_failed, t.export_failures), (7, 8, 1));
}

#[test]
fn retryable_errors_follow_otlp() {
    use export::ExportError;
    assert!(ExportError::Http(503).retryable());
    assert!(ExportError::Http(429).retryable());
    assert!(!ExportError::Http(400).retryable());
    assert!(ExportError::Grpc(tonic::Status::unavailable("down")).retryable());
    assert!(!ExportError::Grpc(tonic::Status::invalid_argument("bad")).retryable());
    assert!(ExportError::Timeout(Duration::from_secs(1)).retryable());
}

#[test]
fn span_time_before_the_epoch_does_not_panic() {
    let f = SpanFacts {
        start: SystemTime::UNIX_EPOCH - Duration::from_secs(5),
        ..facts(None)
    };
    let r = SpanRecord::new(&ctx(Formats::W3C), &f, None, 256);
    assert_eq!(r.start_unix_nanos, 0);
}
