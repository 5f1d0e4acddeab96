//! Protocol detection on `protocol: AUTO` listeners: HTTP served as HTTP, anything else
//! (a TLS ClientHello included) proxied as TCP with its first bytes intact, a server-first
//! protocol served once the detection timeout passes, and a port hint that skips detection —
//! on both drivers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use ringmesh_testkit::eventually;
use ringmesh_tests::client::{admin_get, Client};
use ringmesh_tests::proxy::{proxy_config, service_entry, TestProxy};
use ringmesh_tests::upstream::Upstream;
use ringmesh_tests::{both_io, IoMode};

/// A TCP upstream: writes `greeting` (if any) on accept, then echoes every read back.
fn tcp_upstream(greeting: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming().take(16) {
            let Ok(mut s) = s else { continue };
            thread::spawn(move || {
                if s.write_all(greeting).is_err() {
                    return;
                }
                let mut b = [0u8; 4096];
                while let Ok(n) = s.read(&mut b) {
                    if n == 0 || s.write_all(&b[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A proxy with an `AUTO` listener `name` whose TCP fallback is `db.test` (a port without a
/// protocol or a hinting name) at `tcp`, and the HTTP service `web.test` at `http`.
fn start(io: IoMode, name: &str, extra_spec: &str, tcp: SocketAddr, http: SocketAddr) -> TestProxy {
    let listener = format!(
        "  - name: {name}\n    address: 127.0.0.1:0\n    protocol: AUTO\n    destination: {{host: db.test, port: 5432}}\n"
    );
    let db = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: db\nspec:\n  hosts: [db.test]\n  ports: [{{number: 5432, name: db}}]\n  resolution: STATIC\n  endpoints:\n  - {{address: 127.0.0.1, ports: {{db: {}}}}}\n",
        tcp.port()
    );
    TestProxy::start(&[
        proxy_config(io, &listener, extra_spec),
        db,
        service_entry("web", "web.test", 80, &[(http, &[])]),
    ])
}

/// Waits until the proxy's metrics show `metric` at `value`.
fn metric_reaches(p: &TestProxy, metric: &str, value: u64) {
    let line = format!("{metric} {value}\n");
    let seen = eventually(Duration::from_secs(5), &line, || {
        admin_get(p.metrics(), "/stats/prometheus").1.contains(&line)
    });
    if let Err(e) = seen {
        panic!("{e}: {}", admin_get(p.metrics(), "/stats/prometheus").1);
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.set_nodelay(true).unwrap();
    c
}

fn expect_bytes(c: &mut TcpStream, want: &[u8]) {
    let mut got = vec![0u8; want.len()];
    c.read_exact(&mut got).unwrap();
    assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&got));
}

/// HTTP/1 on an AUTO listener is routed like on an HTTP listener, and the connection stays
/// HTTP for its next request.
fn http1_is_served_as_http(io: IoMode) {
    let web = Upstream::named("web");
    let p = start(io, "auto", "", tcp_upstream(b""), web.addr);
    let mut c = Client::connect(p.listener("auto"));
    for _ in 0..2 {
        let r = c.get("web.test", "/");
        assert_eq!((r.status, r.text()), (200, "web".to_owned()));
    }
    assert_eq!(web.count(), 2);
    metric_reaches(&p, "ringmesh_downstream_cx_detected_http_total", 1);
    metric_reaches(&p, "ringmesh_downstream_cx_detected_tcp_total", 0);
}

/// The HTTP/2 preface is HTTP too: the connection goes to the HTTP server, not to TCP.
fn the_http2_preface_is_http(io: IoMode) {
    let web = Upstream::named("web");
    let p = start(io, "auto", "", tcp_upstream(b"tcp upstream\n"), web.addr);
    let mut c = connect(p.listener("auto"));
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    metric_reaches(&p, "ringmesh_downstream_cx_detected_http_total", 1);
    metric_reaches(&p, "ringmesh_tcp_downstream_cx_total", 0);
}

/// An opaque protocol goes to the TCP destination, its first message (read while detecting)
/// first.
fn opaque_bytes_are_proxied_as_tcp(io: IoMode) {
    let p = start(io, "auto", "", tcp_upstream(b""), Upstream::named("web").addr);
    let mut c = connect(p.listener("auto"));
    for msg in [&b"hello\n"[..], b"SET k v\r\n", b"more bytes"] {
        c.write_all(msg).unwrap();
        expect_bytes(&mut c, msg);
    }
    metric_reaches(&p, "ringmesh_downstream_cx_detected_tcp_total", 1);
    metric_reaches(&p, "ringmesh_downstream_cx_detected_http_total", 0);
}

/// A TLS ClientHello is passed through untouched (the proxy does not terminate TLS here).
fn a_tls_client_hello_passes_through(io: IoMode) {
    let p = start(io, "auto", "", tcp_upstream(b""), Upstream::named("web").addr);
    // A record header (handshake, TLS 1.0 record version, length) and the start of a
    // ClientHello (type 1, length, version 3.3, random).
    let mut hello = vec![0x16, 0x03, 0x01, 0x00, 0x2a, 0x01, 0x00, 0x00, 0x26, 0x03, 0x03];
    hello.extend((0..32u8).map(|i| i.wrapping_mul(37)));
    hello.extend([0x00, 0x00, 0x02, 0x13, 0x01]);
    let mut c = connect(p.listener("auto"));
    c.write_all(&hello).unwrap();
    expect_bytes(&mut c, &hello);
    metric_reaches(&p, "ringmesh_downstream_cx_detected_tcp_total", 1);
}

/// A server-first protocol: the client sends nothing until the server greets it. After the
/// detection timeout the connection goes to TCP and the greeting reaches the client.
fn a_server_first_protocol_works_after_the_timeout(io: IoMode) {
    let p = start(
        io,
        "auto",
        "",
        tcp_upstream(b"220 ready\r\n"),
        Upstream::named("web").addr,
    );
    let mut c = connect(p.listener("auto"));
    expect_bytes(&mut c, b"220 ready\r\n");
    c.write_all(b"QUIT\r\n").unwrap();
    expect_bytes(&mut c, b"QUIT\r\n");
    metric_reaches(&p, "ringmesh_downstream_cx_detect_timeout_total", 1);
}

/// A listener named by Istio's port-name convention (`tcp-db`) is TCP from the start: with a
/// detection timeout far longer than the client waits, the greeting still arrives at once.
fn a_hinted_listener_skips_detection(io: IoMode) {
    let p = start(
        io,
        "tcp-db",
        "  limits: {protocolDetectionTimeout: 60s}\n",
        tcp_upstream(b"220 ready\r\n"),
        Upstream::named("web").addr,
    );
    let mut c = connect(p.listener("tcp-db"));
    expect_bytes(&mut c, b"220 ready\r\n");
    metric_reaches(&p, "ringmesh_tcp_downstream_cx_total", 1);
    let (_, metrics) = admin_get(p.metrics(), "/stats/prometheus");
    for counter in ["detected_http", "detected_tcp", "detect_timeout"] {
        let line = format!("ringmesh_downstream_cx_{counter}_total 0\n");
        assert!(metrics.contains(&line), "{line}{metrics}");
    }
}

both_io!(
    http1_is_served_as_http,
    the_http2_preface_is_http,
    opaque_bytes_are_proxied_as_tcp,
    a_tls_client_hello_passes_through,
    a_server_first_protocol_works_after_the_timeout,
    a_hinted_listener_skips_detection
);
