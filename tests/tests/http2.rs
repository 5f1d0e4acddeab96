//! HTTP/2 and gRPC through the proxy, end to end, on io_uring and epoll: h2c on the same
//! listener as HTTP/1.1, both translations (HTTP/2 client → HTTP/1.1 upstream, HTTP/1.1 client
//! → HTTP/2 upstream), HTTP/2 on both sides, trailers, gRPC statuses for local replies.

use std::net::SocketAddr;

use bytes::{BufMut, BytesMut};
use http::{HeaderMap, HeaderValue, Request};
use ringmesh_loadgen::{grpc, spawn_echo, EchoConfig, EchoHandle};
use ringmesh_tests::client::Client;
use ringmesh_tests::h2client::H2Client;
use ringmesh_tests::proxy::{proxy_config, service_entry, service_entry_speaking, TestProxy};
use ringmesh_tests::upstream::{Reply, Upstream};
use ringmesh_tests::{both_io, IoMode};

fn echo(instance: &str) -> EchoHandle {
    spawn_echo(EchoConfig {
        instance: instance.to_owned(),
        body_size: 5,
        ..EchoConfig::new("127.0.0.1:0".parse().unwrap())
    })
    .expect("echo starts")
}

/// A proxy in front of `addr`, whose port speaks `protocol`.
fn proxy_to(io: IoMode, addr: SocketAddr, protocol: &str) -> TestProxy {
    TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry_speaking(protocol, "svc", "svc.test", 80, &[(addr, &[])]),
    ])
}

/// An HTTP/2 client through the proxy to an HTTP/1.1 upstream: the same listener that serves
/// HTTP/1.1 answers, `:authority` becomes `Host`, the body arrives, trailers are chunked.
fn h2_client_to_h1_upstream(io: IoMode) {
    let up = Upstream::start("h1", |r| match r.target.as_str() {
        "/trailers" => Reply::Chunked {
            status: 200,
            chunks: vec![(Default::default(), b"part".to_vec())],
            trailers: vec![("x-checksum".into(), "abc".into())],
        },
        _ => Reply::Full {
            status: 201,
            headers: vec![("x-up".into(), "1".into())],
            body: r.body.clone(),
        },
    });
    let p = proxy_to(io, up.addr, "HTTP");
    // HTTP/1.1 still works on the listener.
    assert_eq!(Client::connect(p.http()).get("svc.test", "/h1").status, 201);
    let mut c = H2Client::connect(p.http());
    let req = Request::post("http://svc.test/upload?x=1")
        .header("te", "trailers")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(())
        .unwrap();
    let r = c.request(req, b"hello over h2", None);
    assert_eq!(r.status, 201);
    assert_eq!(r.text(), "hello over h2");
    assert_eq!(r.field("x-up"), Some("1"));
    let got = up.received();
    let last = got.last().unwrap();
    assert_eq!(last.method, "POST");
    assert_eq!(last.target, "/upload?x=1");
    assert_eq!(last.header("host"), Some("svc.test"));
    assert_eq!(
        last.header("cookie"),
        Some("a=1; b=2"),
        "HTTP/2 cookie fields are joined"
    );
    assert_eq!(last.header("x-forwarded-proto"), Some("http"));
    assert_eq!(last.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(last.body, b"hello over h2");
    // Chunked trailers reach the HTTP/2 client as trailers.
    let r = c.get("svc.test", "/trailers");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "part");
    assert_eq!(r.trailers.as_ref().and_then(|t| t.get("x-checksum")).unwrap(), "abc");
    // Several requests on the one connection, one after another.
    for i in 0..20 {
        assert_eq!(c.get("svc.test", &format!("/n/{i}")).status, 201);
    }
}

/// An HTTP/1.1 client through the proxy to an HTTP/2 upstream.
fn h1_client_to_h2_upstream(io: IoMode) {
    let e = echo("h2-echo");
    let p = proxy_to(io, e.local_addr(), "HTTP2");
    let mut c = Client::connect(p.http());
    for _ in 0..3 {
        let r = c.get("svc.test", "/");
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 5);
        assert_eq!(r.header("x-ringmesh-instance"), Some("h2-echo"));
    }
    // The echo dumps the head it got: HTTP/2 pseudo-fields, no connection-specific fields.
    c.send(
        b"GET /headers HTTP/1.1\r\nHost: svc.test\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nX-Keep: yes\r\n\r\n",
    );
    let r = c.response().unwrap();
    assert_eq!(r.status, 200);
    let dump = r.text();
    assert!(dump.contains(":authority: svc.test\n"), "{dump}");
    assert!(dump.contains(":path: /headers\n"), "{dump}");
    assert!(dump.contains("x-keep: yes\n"), "{dump}");
    assert!(!dump.contains("x-hop"), "a field named by Connection crossed: {dump}");
    assert!(!dump.contains("connection"), "{dump}");
    // A body of unknown length (chunked) arrives whole.
    c.send(b"POST /echo HTTP/1.1\r\nHost: svc.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    let r = c.response().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello world");
    // All of it over one multiplexed connection.
    let stats = ringmesh_tests::client::admin_get(p.admin(), "/stats/prometheus").1;
    assert!(stats.contains("ringmesh_upstream_cx_total 1\n"), "{stats}");
}

fn grpc_request(path: &str, payload: &[u8]) -> (Request<()>, BytesMut) {
    let req = Request::post(format!("http://svc.test{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let mut body = BytesMut::new();
    grpc::encode_echo_message(payload, &mut body);
    (req, body)
}

/// HTTP/2 on both sides: a gRPC call and its trailers, and a local reply as a gRPC status.
fn grpc_through_h2_both_sides(io: IoMode) {
    let e = echo("grpc-echo");
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry_speaking("GRPC", "svc", "svc.test", 80, &[(e.local_addr(), &[])]),
        service_entry("nothing", "empty.test", 80, &[]),
    ]);
    let mut c = H2Client::connect(p.http());
    let (req, body) = grpc_request(grpc::UNARY_PATH, b"ping");
    let r = c.request(req, &body, None);
    assert_eq!(r.status, 200);
    assert_eq!(r.field("grpc-status"), Some("0"), "{r:?}");
    assert!(r.trailers.is_some(), "the status came as a trailer");
    let mut expect = BytesMut::new();
    grpc::encode_echo_message(b"ping", &mut expect);
    assert_eq!(&r.body[..], &expect[..]);

    // No endpoint: a gRPC status, not a bare 503.
    let req = Request::post("http://empty.test/x.Y/Z")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let r = c.request(req, &body, None);
    assert_eq!(r.status, 200);
    assert_eq!(r.field("grpc-status"), Some("14"), "{r:?}");
    assert!(
        r.field("grpc-message")
            .is_some_and(|m| m.contains("no healthy upstream")),
        "{r:?}"
    );
    // No route: UNIMPLEMENTED.
    let req = Request::post("http://unknown.test/x.Y/Z")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    assert_eq!(c.request(req, b"", None).field("grpc-status"), Some("12"));
    // A plain HTTP/2 request still gets an HTTP status.
    assert_eq!(c.get("unknown.test", "/").status, 404);
}

/// Request trailers from an HTTP/2 client reach an HTTP/2 upstream; the echo answers the
/// stream with its own trailers.
fn request_trailers_cross(io: IoMode) {
    let e = echo("t");
    let p = proxy_to(io, e.local_addr(), "HTTP2");
    let mut c = H2Client::connect(p.http());
    let mut t = HeaderMap::new();
    t.insert("x-client-trailer", HeaderValue::from_static("1"));
    let (req, body) = grpc_request(grpc::UNARY_PATH, b"with trailers");
    let r = c.request(req, &body, Some(t));
    assert_eq!(r.field("grpc-status"), Some("0"), "{r:?}");
    let mut big = BytesMut::new();
    big.put_bytes(b'x', 300_000);
    let r = c.request(Request::post("http://svc.test/echo").body(()).unwrap(), &big, None);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 300_000, "a body larger than the windows arrives whole");
}

/// A counter's value in a proxy's `/stats/prometheus`.
fn counter(p: &TestProxy, name: &str) -> u64 {
    let text = ringmesh_tests::client::admin_get(p.admin(), "/stats/prometheus").1;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in {text}"))
}

/// Two proxies (the `mesh` topology): HTTP/1.1 from many client connections reaches the
/// server-side proxy over one multiplexed HTTP/2 connection (one per worker), because the
/// endpoint is labelled as a sidecar; `h2UpgradePolicy: DO_NOT_UPGRADE` keeps HTTP/1.1.
fn proxies_talk_http2_to_each_other(io: IoMode) {
    let up = Upstream::named("app");
    let server = proxy_to(io, up.addr, "HTTP");
    let meshed: &[(&str, &str)] = &[("security.istio.io/tlsMode", "istio")];
    let client = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("svc", "svc.test", 80, &[(server.http(), meshed)]),
    ]);
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let addr = client.http();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for i in 0..10 {
                    let r = c.get("svc.test", &format!("/t{t}/{i}"));
                    assert_eq!((r.status, r.text()), (200, "app".to_string()));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    assert_eq!(up.count(), 160);
    assert_eq!(up.received()[0].header("host"), Some("svc.test"));
    assert_eq!(
        counter(&server, "ringmesh_downstream_cx_h2_total"),
        1,
        "one HTTP/2 connection"
    );
    assert_eq!(counter(&server, "ringmesh_downstream_cx_total"), 1);
    assert_eq!(counter(&client, "ringmesh_downstream_cx_total"), 16);

    // Opting out keeps HTTP/1.1 between the proxies.
    let server = proxy_to(io, up.addr, "HTTP");
    let client = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("svc", "svc.test", 80, &[(server.http(), meshed)]),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: svc\nspec:\n  host: svc.test\n  trafficPolicy:\n    connectionPool:\n      http:\n        h2UpgradePolicy: DO_NOT_UPGRADE\n".to_string(),
    ]);
    assert_eq!(Client::connect(client.http()).get("svc.test", "/x").status, 200);
    assert_eq!(counter(&server, "ringmesh_downstream_cx_h2_total"), 0);
}

/// One client connection with 100 concurrent streams through a proxy with two workers: the
/// worker holding the connection serves about half of the streams and hands the rest to the
/// other (no hot core).
fn one_connections_streams_use_both_workers(io: IoMode) {
    let e = spawn_echo(EchoConfig {
        delay: std::time::Duration::from_millis(20),
        body_size: 5,
        ..EchoConfig::new("127.0.0.1:0".parse().unwrap())
    })
    .expect("echo starts");
    let p = TestProxy::start(&[
        proxy_config(io, "", "").replace("workers: 1", "workers: 2"),
        service_entry_speaking("HTTP2", "svc", "svc.test", 80, &[(e.local_addr(), &[])]),
    ]);
    let c = H2Client::connect(p.http());
    let sender = c.sender();
    let statuses = c.block_on(async move {
        let calls = (0..100).map(|i| {
            let send = sender.clone();
            async move {
                let mut send = send.ready().await.expect("ready");
                let req = Request::get(format!("http://svc.test/s/{i}")).body(()).unwrap();
                let (resp, _) = send.send_request(req, true).expect("send");
                let resp = resp.await.expect("response");
                ringmesh_tests::h2client::read_response(resp)
                    .await
                    .expect("body")
                    .status
            }
        });
        let handles: Vec<_> = calls.map(tokio::spawn).collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.expect("call task"));
        }
        out
    });
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let moved = counter(&p, "ringmesh_h2_streams_handed_off_total");
    assert!(
        (30..=70).contains(&moved),
        "{moved} of 100 streams were served by the other worker"
    );
}

/// `http2MaxRequests` bounds the requests in flight to a cluster: one more is refused at once
/// with 503 `UO` (a gRPC call with `UNAVAILABLE`), not queued.
fn http2_max_requests_refuses_the_one_too_many(io: IoMode) {
    let go = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let release = go.clone();
    let up = Upstream::start("slow", move |_| {
        // Held until the test has seen the refusal; bounded so a failing test ends.
        let _ = ringmesh_testkit::eventually(std::time::Duration::from_secs(10), "release", || {
            release.load(std::sync::atomic::Ordering::SeqCst)
        });
        Reply::ok("late")
    });
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("svc", "svc.test", 80, &[(up.addr, &[])]),
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: svc\nspec:\n  host: svc.test\n  trafficPolicy:\n    connectionPool:\n      http:\n        http2MaxRequests: 2\n".to_string(),
    ]);
    let held: Vec<_> = (0..2)
        .map(|i| {
            let addr = p.http();
            std::thread::spawn(move || Client::connect(addr).get("svc.test", &format!("/held/{i}")).status)
        })
        .collect();
    ringmesh_testkit::eventually(
        std::time::Duration::from_secs(10),
        "two requests at the upstream",
        || up.count() == 2,
    )
    .unwrap();
    let r = Client::connect(p.http()).get("svc.test", "/third");
    assert_eq!(r.status, 503);
    assert!(r.text().contains("overflow"), "{}", r.text());
    let req = Request::post("http://svc.test/x.Y/Z")
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let g = H2Client::connect(p.http()).request(req, b"", None);
    assert_eq!(g.field("grpc-status"), Some("14"), "{g:?}");
    go.store(true, std::sync::atomic::Ordering::SeqCst);
    for h in held {
        assert_eq!(h.join().unwrap(), 200);
    }
    assert_eq!(counter(&p, "ringmesh_upstream_rq_pending_overflow_total"), 2);
    assert_eq!(Client::connect(p.http()).get("svc.test", "/after").status, 200);
}

both_io!(
    http2_max_requests_refuses_the_one_too_many,
    one_connections_streams_use_both_workers,
    proxies_talk_http2_to_each_other,
    h2_client_to_h1_upstream,
    h1_client_to_h2_upstream,
    grpc_through_h2_both_sides,
    request_trailers_cross,
);
