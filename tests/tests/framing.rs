//! HTTP/1 framing must not leak through the proxy: what the next hop sees is framed by us, in
//! one canonical way, and what the proxy cannot carry (tunnels, unrequested protocol switches,
//! bodies it will never read) ends the connection instead of being misread. Raw sockets on
//! both sides, each test on io_uring and on epoll.

use std::time::Duration;

use ringmesh_testkit::eventually;
use ringmesh_tests::client::{admin_get, Client};
use ringmesh_tests::proxy::{proxy_config, service_entry, TestProxy};
use ringmesh_tests::upstream::{Reply, Upstream};
use ringmesh_tests::{both_io, IoMode};

fn one_service(io: IoMode, up: &Upstream) -> TestProxy {
    TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("echo", "echo.test", 80, &[(up.addr, &[])]),
    ])
}

/// Reads a response head line by line; returns the status line and the fields, names lower case.
fn raw_head(c: &mut Client) -> (String, Vec<(String, String)>) {
    let status = c.line().expect("status line");
    let mut fields = Vec::new();
    loop {
        let l = c.line().expect("header line");
        if l.is_empty() {
            return (status, fields);
        }
        let (n, v) = l.split_once(':').expect("field");
        fields.push((n.to_ascii_lowercase(), v.trim().to_string()));
    }
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// Zero-padded sizes and extensions reach the upstream as canonical size lines; payload, chunk
/// boundaries and trailers are kept.
fn chunked_request_is_reframed(io: IoMode) {
    let up = Upstream::named("a");
    let p = one_service(io, &up);
    let mut c = Client::connect(p.http());
    let ext = "v".repeat(600);
    c.send(
        format!(
            "POST /up HTTP/1.1\r\nHost: echo.test\r\nTransfer-Encoding: chunked\r\n\r\n\
             00000000000000000000005;a={ext}\r\nhello\r\n6 ; x=\"q\"\r\n world\r\n\
             A\r\n0123456789\r\n0;end\r\nX-T: v\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(c.response().expect("response").status, 200);
    let got = &up.received()[0];
    assert_eq!(got.header("transfer-encoding"), Some("chunked"));
    assert_eq!(
        String::from_utf8_lossy(&got.raw_body),
        "5\r\nhello\r\n6\r\n world\r\nA\r\n0123456789\r\n0\r\nX-T: v\r\n\r\n"
    );
    // The connection goes on.
    assert_eq!(c.get("echo.test", "/after").status, 200);
}

/// Chunk sizes a next hop could overflow or read as negative, and size lines over the bound,
/// are answered with 400 before anything reaches the upstream.
fn chunk_sizes_and_lines_are_bounded(io: IoMode) {
    let up = Upstream::named("a");
    let p = one_service(io, &up);
    let long_ext = format!("5;a={}", "v".repeat(2000));
    for (line, why) in [
        ("ffffffffffffffff", "2^64 - 1"),
        ("8000000000000000", "2^63"),
        ("10000000000000", "2^52, one over the bound"),
        (long_ext.as_str(), "2 KB extension"),
    ] {
        let mut c = Client::connect(p.http());
        c.send(
            format!("POST / HTTP/1.1\r\nHost: echo.test\r\nTransfer-Encoding: chunked\r\n\r\n{line}\r\nhello\r\n")
                .as_bytes(),
        );
        let r = c.response().unwrap_or_else(|| panic!("{why}: no response"));
        assert_eq!(r.status, 400, "{why}");
        assert_eq!(r.header("connection"), Some("close"), "{why}");
        assert!(c.closed_within(Duration::from_secs(2)), "{why}: connection left open");
    }
    assert_eq!(up.count(), 0, "a body with an unbounded chunk reached the upstream");
}

/// A chunked response is re-framed the same way on its way to the client.
fn chunked_response_is_reframed(io: IoMode) {
    let up = Upstream::start("a", |_| {
        Reply::Raw(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n005;x=y\r\nhello\r\n00\r\nX-T: v\r\n\r\n".to_vec(),
        )
    });
    let p = one_service(io, &up);
    let mut c = Client::connect(p.http());
    c.send(b"GET / HTTP/1.1\r\nHost: echo.test\r\n\r\n");
    let (status, fields) = raw_head(&mut c);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(field(&fields, "transfer-encoding"), Some("chunked"));
    let want = b"5\r\nhello\r\n0\r\nX-T: v\r\n\r\n";
    let got = c.read_exact_bytes(want.len()).expect("body");
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
}

/// An HTTP/1.0 client cannot read chunked coding: it gets the payload alone and the connection
/// closes at its end (RFC 9112 §6.1).
fn http10_client_gets_a_close_delimited_body(io: IoMode) {
    let up = Upstream::start("a", |_| Reply::Chunked {
        status: 200,
        chunks: vec![
            (Duration::ZERO, b"hello".to_vec()),
            (Duration::ZERO, b" world".to_vec()),
        ],
        trailers: vec![("x-t".into(), "v".into())],
    });
    let p = one_service(io, &up);
    for request in [
        &b"GET / HTTP/1.0\r\nHost: echo.test\r\n\r\n"[..],
        b"GET / HTTP/1.0\r\nHost: echo.test\r\nConnection: keep-alive\r\n\r\n",
    ] {
        let mut c = Client::connect(p.http());
        c.send(request);
        let (status, fields) = raw_head(&mut c);
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert_eq!(field(&fields, "transfer-encoding"), None, "{fields:?}");
        assert_eq!(field(&fields, "content-length"), None, "{fields:?}");
        assert_eq!(field(&fields, "connection"), Some("close"));
        let body = c
            .read_until_close(Duration::from_secs(5))
            .expect("connection closed after the body");
        assert_eq!(String::from_utf8_lossy(&body), "hello world");
    }
}

/// CONNECT is refused with 400 and the connection closed: nothing after it is read as HTTP, and
/// nothing reaches the upstream, even for a host that has a route.
fn connect_is_refused(io: IoMode) {
    let up = Upstream::named("a");
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("a", "a.local", 80, &[(up.addr, &[])]),
    ]);
    let mut c = Client::connect(p.http());
    c.send(b"CONNECT a.local:80 HTTP/1.1\r\nHost: a.local:80\r\n\r\nGET / HTTP/1.1\r\nHost: a.local\r\n\r\n");
    let r = c.response().expect("response");
    assert_eq!(r.status, 400);
    assert_eq!(r.header("connection"), Some("close"));
    let rest = c.read_until_close(Duration::from_secs(2)).expect("connection closed");
    assert!(
        rest.is_empty(),
        "bytes after CONNECT were answered: {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert_eq!(up.count(), 0);
}

/// A `101` to a request that did not ask to upgrade is a 502 (`UPE`), and that upstream
/// connection is not used again.
fn unrequested_101_is_502(io: IoMode) {
    let up = Upstream::start("a", |_| Reply::UpgradeEcho);
    let p = one_service(io, &up);
    let mut c = Client::connect(p.http());
    let r = c.get("echo.test", "/plain");
    assert_eq!(r.status, 502);
    let r = c.get("echo.test", "/plain");
    assert_eq!(r.status, 502);
    assert_eq!(up.count(), 2);
    assert_eq!(
        up.connections.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the upstream connection that switched protocols was reused"
    );
    if let Err(e) = eventually(Duration::from_secs(5), "two UPE local replies counted", || {
        admin_get(p.metrics(), "/stats/prometheus")
            .1
            .contains("ringmesh_local_replies_total{response_flags=\"UPE\"} 2\n")
    }) {
        panic!("{e}: {}", admin_get(p.metrics(), "/stats/prometheus").1);
    }
    // A request that asks to upgrade still gets its tunnel.
    let mut c = Client::connect(p.http());
    c.send(b"GET /ws HTTP/1.1\r\nHost: echo.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n");
    assert_eq!(c.response().expect("101").status, 101);
    c.send(b"ping");
    assert_eq!(c.read_exact_bytes(4).as_deref(), Some(&b"ping"[..]));
}

/// A local answer to a request whose client waits for `100 Continue` closes the connection:
/// whether the body or the next request comes next cannot be known.
fn expect_continue_local_reply_closes(io: IoMode) {
    let vs = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: edge
spec:
  hosts: [edge.test]
  http:
  - match:
    - uri: {prefix: /}
    directResponse:
      status: 403
"#;
    let p = TestProxy::start(&[proxy_config(io, "", ""), vs.to_string()]);
    for (request, why) in [
        (
            &b"POST /up HTTP/1.1\r\nHost: edge.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nGET / HTTP/1.1\r\nHost: edge.test\r\n\r\n"[..],
            "next request right behind",
        ),
        (
            b"POST /up HTTP/1.1\r\nHost: edge.test\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n",
            "chunked, body held back",
        ),
        (
            b"POST /up HTTP/1.1\r\nHost: nowhere.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
            "no route, body held back",
        ),
    ] {
        let mut c = Client::connect(p.http());
        c.send(request);
        let r = c.response().unwrap_or_else(|| panic!("{why}: no response"));
        assert!(matches!(r.status, 403 | 404), "{why}: {}", r.status);
        assert_eq!(r.header("connection"), Some("close"), "{why}");
        let rest = c.read_until_close(Duration::from_secs(2)).unwrap_or_else(|| panic!("{why}: left open"));
        assert!(rest.is_empty(), "{why}: a second answer: {:?}", String::from_utf8_lossy(&rest));
    }
    // Without `Expect` a small body is read past and the connection kept.
    let mut c = Client::connect(p.http());
    c.send(b"POST /up HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 5\r\n\r\nhello");
    let r = c.response().expect("response");
    assert_eq!((r.status, r.header("connection")), (403, None));
    assert_eq!(c.get("edge.test", "/again").status, 403);
}

/// A path that percent-decodes to a control byte is a 400 before routing; the query is not
/// looked at.
fn encoded_control_in_path_is_400(io: IoMode) {
    let up = Upstream::named("a");
    let p = one_service(io, &up);
    for path in [
        "/a%00b",
        "/a%0d%0aX-Injected:%201",
        "/%1F",
        "/x%7f",
        "http://echo.test/a%00",
    ] {
        let mut c = Client::connect(p.http());
        let r = c.get("echo.test", path);
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.header("connection"), Some("close"), "{path}");
        assert!(c.closed_within(Duration::from_secs(2)), "{path}: connection left open");
    }
    assert_eq!(
        up.count(),
        0,
        "a path with an encoded control byte reached the upstream"
    );
    assert_eq!(Client::connect(p.http()).get("echo.test", "/a%20b?q=%00").status, 200);
    assert_eq!(up.received()[0].target, "/a%20b?q=%00");
}

both_io!(
    chunked_request_is_reframed,
    chunk_sizes_and_lines_are_bounded,
    chunked_response_is_reframed,
    http10_client_gets_a_close_delimited_body,
    connect_is_refused,
    unrequested_101_is_502,
    expect_continue_local_reply_closes,
    encoded_control_in_path_is_400,
);
