//! HTTP/2, gRPC, TLS and TCP echo on real loopback sockets: the echo server checked with an
//! independent h2 client (on both monoio drivers), and the load generator's new protocols
//! checked against the echo: rates and latency with several streams per connection, gRPC
//! status and TLS failures counted by kind, `--url` spreading load, and garbage from a server
//! counted as errors. Each test is bounded (a few seconds at most).

mod common;

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use http::{HeaderMap, Request};
use monoio_compat::StreamWrapper;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use ringmesh_loadgen::grpc::{self, MessageDecoder};
use ringmesh_loadgen::tls::{ClientTlsOptions, ServerTlsOptions};
use ringmesh_loadgen::{run_load, spawn_echo, EchoConfig, EchoHandle, LoadConfig, LoadReport, Protocol};

// ---------------------------------------------------------------------------------------------
// Certificates

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca() -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    Ca {
        issuer: Issuer::new(params, key),
        pem,
    }
}

/// A certificate for `127.0.0.1`/`localhost` signed by `ca`: (cert PEM, key PEM).
fn leaf(ca: &Ca) -> (String, String) {
    let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn tls_echo(ca: &Ca, client_ca: Option<&Ca>, instance: &str) -> EchoHandle {
    let (cert, key) = leaf(ca);
    spawn_echo(EchoConfig {
        instance: instance.to_owned(),
        tls: Some(ServerTlsOptions {
            cert_pem: Some(cert),
            key_pem: Some(key),
            client_ca_pem: client_ca.map(|c| c.pem.clone()),
        }),
        ..EchoConfig::default()
    })
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// An independent HTTP/2 client (h2 on monoio), run on both drivers

type BoxFut = Pin<Box<dyn Future<Output = ()>>>;

/// Runs the client on the legacy (epoll) driver and on io_uring.
fn on_both_drivers(f: impl Fn() -> BoxFut) {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("legacy runtime")
        .block_on(f());
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build()
        .expect("io_uring runtime (io_uring must work on this machine)")
        .block_on(f());
}

async fn h2c(addr: SocketAddr) -> SendRequest<Bytes> {
    let tcp = monoio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(StreamWrapper::new(tcp)).await.unwrap();
    monoio::spawn(async move {
        let _ = conn.await;
    });
    send
}

async fn h2_tls(addr: SocketAddr, ca_pem: &str) -> SendRequest<Bytes> {
    let opts = ClientTlsOptions {
        ca_pem: Some(ca_pem.to_owned()),
        ..Default::default()
    };
    let config = ringmesh_loadgen::tls::client_config(&opts, &[b"h2"]).unwrap();
    let tcp = monoio::net::TcpStream::connect(addr).await.unwrap();
    let name = ringmesh_loadgen::tls::server_name("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, StreamWrapper::new(tcp))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    monoio::spawn(async move {
        let _ = conn.await;
    });
    send
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

async fn call(send: &SendRequest<Bytes>, req: Request<()>, body: Option<Bytes>) -> Answer {
    let mut send = send.clone().ready().await.unwrap();
    let (resp, mut stream) = send.send_request(req, body.is_none()).unwrap();
    if let Some(b) = body {
        stream.send_data(b, true).unwrap();
    }
    let resp = resp.await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut recv = resp.into_body();
    let mut out = BytesMut::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.unwrap();
        let _ = recv.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    let trailers = recv.trailers().await.unwrap();
    Answer {
        status,
        headers,
        body: out.freeze(),
        trailers,
    }
}

fn get(uri: &str) -> Request<()> {
    Request::get(uri).body(()).unwrap()
}

fn grpc_request(uri: &str) -> Request<()> {
    Request::post(uri)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

fn grpc_status(a: &Answer) -> Option<String> {
    a.trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| a.headers.get("grpc-status"))
        .map(|v| v.to_str().unwrap().to_owned())
}

fn decode_all(body: &[u8]) -> Vec<Bytes> {
    let mut d = MessageDecoder::new();
    d.push(body);
    let mut out = Vec::new();
    while let Some(m) = d.next_message().unwrap() {
        out.push(grpc::decode_echo_payload(&m).unwrap());
    }
    assert!(d.is_empty(), "trailing bytes after the last message");
    out
}

// ---------------------------------------------------------------------------------------------
// The echo server

#[test]
fn h2c_by_preface_answers_with_body_instance_and_knobs() {
    let echo = spawn_echo(EchoConfig {
        instance: "h2c-a".into(),
        body_size: 100,
        ..EchoConfig::default()
    })
    .unwrap();
    let addr = echo.local_addr();
    on_both_drivers(|| {
        Box::pin(async move {
            let send = h2c(addr).await;
            let base = format!("http://{addr}");
            let a = call(&send, get(&format!("{base}/")), None).await;
            assert_eq!(a.status, 200);
            assert_eq!(a.headers["x-ringmesh-instance"], "h2c-a");
            assert_eq!(a.body.len(), 100);
            assert!(a.body.starts_with(b"ringmesh-echo "));
            // Several requests multiplexed on the one connection, with path knobs.
            let (s503, posted) = monoio::join!(
                call(&send, get(&format!("{base}/status/503")), None),
                call(
                    &send,
                    Request::post(format!("{base}/x")).body(()).unwrap(),
                    Some(Bytes::from_static(b"ping-pong")),
                ),
            );
            assert_eq!(s503.status, 503);
            assert_eq!(&posted.body[..], b"ping-pong");
            let h = call(&send, get(&format!("{base}/headers")), None).await;
            let text = String::from_utf8(h.body.to_vec()).unwrap();
            assert!(text.contains(":path: /headers"), "{text}");
        })
    });
    // The HTTP/1.1 path on the same port is untouched.
    let mut s = common::connect(addr);
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let r = common::read_response(&mut s, &mut Vec::new());
    assert_eq!((r.status, r.header("x-ringmesh-instance")), (200, Some("h2c-a")));
}

#[test]
fn tls_h2_with_alpn_and_http1_over_tls_answer() {
    let ca = ca();
    let echo = tls_echo(&ca, None, "tls-a");
    let addr = echo.local_addr();
    let ca_pem = ca.pem.clone();
    on_both_drivers(|| {
        let ca_pem = ca_pem.clone();
        Box::pin(async move {
            let send = h2_tls(addr, &ca_pem).await;
            let a = call(&send, get(&format!("https://127.0.0.1:{}/", addr.port())), None).await;
            assert_eq!(a.status, 200);
            assert_eq!(a.headers["x-ringmesh-instance"], "tls-a");
            assert_eq!(a.body.len(), 64);
        })
    });
}

#[test]
fn grpc_unary_and_stream_echo_payloads_with_status_ok() {
    let echo = spawn_echo(EchoConfig {
        instance: "grpc-a".into(),
        body_size: 10,
        ..EchoConfig::default()
    })
    .unwrap();
    let addr = echo.local_addr();
    on_both_drivers(|| {
        Box::pin(async move {
            let send = h2c(addr).await;
            // Unary: payload echoed, the default body when the request carries none.
            let unary = format!("http://{addr}{}", grpc::UNARY_PATH);
            let a = call(&send, grpc_request(&unary), Some(grpc::echo_message(b"hello grpc"))).await;
            assert_eq!(a.status, 200);
            assert_eq!(a.headers["content-type"], "application/grpc");
            assert_eq!(a.headers["x-ringmesh-instance"], "grpc-a");
            assert_eq!(decode_all(&a.body), vec![Bytes::from_static(b"hello grpc")]);
            assert_eq!(grpc_status(&a).as_deref(), Some("0"));
            let a = call(&send, grpc_request(&unary), Some(grpc::echo_message(b""))).await;
            assert_eq!(decode_all(&a.body)[0].len(), 10);
            // Streaming: three messages in one DATA frame, three echoes, then status OK.
            let mut wire = BytesMut::new();
            for p in [&b"one"[..], b"two", b"three"] {
                grpc::encode_echo_message(p, &mut wire);
            }
            let stream = format!("http://{addr}{}", grpc::STREAM_PATH);
            let a = call(&send, grpc_request(&stream), Some(wire.freeze())).await;
            assert_eq!(
                decode_all(&a.body),
                vec![Bytes::from("one"), Bytes::from("two"), Bytes::from("three")]
            );
            assert_eq!(grpc_status(&a).as_deref(), Some("0"));
            // Unknown method and a malformed message are statuses, not crashes.
            let a = call(
                &send,
                grpc_request(&format!("http://{addr}/x.Y/Z")),
                Some(grpc::echo_message(b"x")),
            )
            .await;
            assert_eq!(grpc_status(&a).as_deref(), Some("12"));
            let a = call(
                &send,
                grpc_request(&unary),
                Some(Bytes::from_static(&[0, 0, 0, 0, 2, 0x0a, 9])),
            )
            .await;
            assert_eq!(grpc_status(&a).as_deref(), Some("3"));
        })
    });
}

// ---------------------------------------------------------------------------------------------
// The load generator

fn load(url: &str, protocol: Protocol) -> LoadConfig {
    let mut c = LoadConfig::new(url).unwrap();
    c.protocol = protocol;
    c.threads = 1;
    c.connections = 2;
    c.streams = 2;
    c.rate = 400.0;
    c.duration = Duration::from_millis(1000);
    c.warmup = Duration::from_millis(200);
    c.timeout = Duration::from_secs(2);
    c
}

fn assert_no_latency(r: &LoadReport) {
    assert_eq!(r.ok, 0, "{}", r.summary());
    assert_eq!(r.histogram.len(), 0, "failures must not be recorded as latency");
}

#[test]
fn h2_with_several_streams_meets_the_open_loop_rate_and_reads_2ms_at_p50() {
    let _g = common::timing_lock();
    let echo = spawn_echo(EchoConfig {
        delay: Duration::from_millis(2),
        ..EchoConfig::default()
    })
    .unwrap();
    // Debug-built h2 costs tens of µs per request on each side: the same load shape as the
    // HTTP/1 test (500 rps over 8 schedules).
    common::assert_2ms_p50(&echo, || {
        let mut c = load(&format!("http://{}/", echo.local_addr()), Protocol::H2);
        c.connections = 2;
        c.streams = 4;
        c.rate = 500.0;
        c.duration = Duration::from_secs(2);
        c
    });
}

#[test]
fn grpc_unary_and_stream_load_round_trip_and_errors_count_as_grpc_status() {
    let _g = common::timing_lock();
    let echo = spawn_echo(EchoConfig::default()).unwrap();
    for protocol in [Protocol::Grpc, Protocol::GrpcStream] {
        let mut c = load(&format!("http://{}/", echo.local_addr()), protocol);
        c.body_size = 32;
        let r = run_load(c).unwrap();
        assert_eq!(r.errors, 0, "{protocol:?}: {}", r.summary());
        assert!(r.met_target(), "{protocol:?}: {}", r.summary());
    }
    let failing = spawn_echo(EchoConfig {
        error_rate: 0.5,
        ..EchoConfig::default()
    })
    .unwrap();
    for protocol in [Protocol::Grpc, Protocol::GrpcStream] {
        let mut c = load(&format!("http://{}/", failing.local_addr()), protocol);
        c.body_size = 16;
        let r = run_load(c).unwrap();
        let e = r.errors_by_kind;
        assert!(e.grpc_status > 100, "{protocol:?}: {}", r.summary());
        assert!(r.ok > 100, "{protocol:?}: {}", r.summary());
        assert_eq!(e.total(), e.grpc_status, "{protocol:?}: only grpc-status errors: {e:?}");
        assert_eq!(r.histogram.len(), r.ok, "errors are not latency");
        // gRPC errors are answers: they count toward the achieved rate.
        assert!(r.met_target(), "{protocol:?}: {}", r.summary());
    }
}

#[test]
fn tls_h2_load_with_the_right_ca_mtls_and_failures_counted_as_tls() {
    let _g = common::timing_lock();
    let server_ca = ca();
    let client_ca = ca();
    let other_ca = ca();
    let echo = tls_echo(&server_ca, None, "tls");
    let url = format!("https://127.0.0.1:{}/", echo.local_addr().port());

    let mut c = load(&url, Protocol::H2);
    c.duration = Duration::from_millis(500);
    c.tls.ca_pem = Some(server_ca.pem.clone());
    let r = run_load(c).unwrap();
    assert_eq!(r.errors, 0, "{}", r.summary());
    assert!(r.ok >= 190, "{}", r.summary());

    let mut c = load(&url, Protocol::Grpc);
    c.duration = Duration::from_millis(500);
    c.tls.ca_pem = Some(other_ca.pem.clone());
    let r = run_load(c).unwrap();
    assert!(r.errors_by_kind.tls > 0, "{}", r.summary());
    assert_eq!(r.errors_by_kind.total(), r.errors_by_kind.tls, "{:?}", r.errors_by_kind);
    assert_no_latency(&r);

    // mTLS: the echo requires a client certificate from client_ca.
    let mtls = tls_echo(&server_ca, Some(&client_ca), "mtls");
    let url = format!("https://127.0.0.1:{}/", mtls.local_addr().port());
    let (cert, key) = leaf(&client_ca);
    let mut c = load(&url, Protocol::H2);
    c.duration = Duration::from_millis(500);
    c.tls = ClientTlsOptions {
        ca_pem: Some(server_ca.pem.clone()),
        cert_pem: Some(cert),
        key_pem: Some(key),
        insecure: false,
    };
    let r = run_load(c).unwrap();
    assert_eq!(r.errors, 0, "{}", r.summary());
    assert!(r.ok >= 190, "{}", r.summary());
    let mut c = load(&url, Protocol::H2);
    c.duration = Duration::from_millis(500);
    c.tls.insecure = true;
    let r = run_load(c).unwrap();
    assert!(r.errors > 0, "no client certificate must fail: {}", r.summary());
    assert_no_latency(&r);
}

#[test]
fn repeated_urls_spread_requests_over_two_echos() {
    let _g = common::timing_lock();
    let a = spawn_echo(EchoConfig {
        instance: "a".into(),
        ..EchoConfig::default()
    })
    .unwrap();
    let b = spawn_echo(EchoConfig {
        instance: "b".into(),
        ..EchoConfig::default()
    })
    .unwrap();
    for protocol in [Protocol::Http1, Protocol::H2] {
        let (before_a, before_b) = (a.requests_served(), b.requests_served());
        let mut c = load(&format!("http://{}/", a.local_addr()), protocol);
        c.extra_targets
            .push(ringmesh_loadgen::Target::parse(&format!("http://{}/", b.local_addr()), false).unwrap());
        c.connections = 4;
        let r = run_load(c).unwrap();
        assert_eq!(r.errors, 0, "{}", r.summary());
        let (na, nb) = (a.requests_served() - before_a, b.requests_served() - before_b);
        assert_eq!(na + nb, r.sent_total, "{protocol:?}");
        assert!(na.abs_diff(nb) <= r.sent_total / 20, "{protocol:?}: a {na}, b {nb}");
        assert!(r.url.contains(&a.local_addr().to_string()) && r.url.contains(&b.local_addr().to_string()));
    }
}

#[test]
fn tcp_echo_load_checks_the_echoed_bytes() {
    let _g = common::timing_lock();
    let echo = spawn_echo(EchoConfig {
        mode: ringmesh_loadgen::EchoMode::Tcp,
        ..EchoConfig::default()
    })
    .unwrap();
    let mut c = load(&format!("tcp://{}", echo.local_addr()), Protocol::Tcp);
    c.body_size = 100;
    let r = run_load(c).unwrap();
    assert_eq!(r.errors, 0, "{}", r.summary());
    assert!(r.met_target(), "{}", r.summary());
    assert!(
        LoadConfig::new(&format!("tcp://{}", echo.local_addr()))
            .unwrap()
            .validate()
            .is_err(),
        "tcp needs a body size"
    );
}

/// A server that answers every connection with `reply` and closes.
fn garbage_server(reply: &'static [u8]) -> (SocketAddr, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut c, _)) => {
                    let mut buf = [0u8; 256];
                    let _ = c.set_read_timeout(Some(Duration::from_millis(100)));
                    let _ = c.read(&mut buf);
                    let _ = c.write_all(reply);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    (addr, stop)
}

#[test]
fn garbage_instead_of_http2_or_tls_is_counted_not_fatal() {
    let _g = common::timing_lock();
    // Not HTTP/2 frames at all, and a SETTINGS frame with an invalid length.
    for reply in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
        &[0, 0, 5, 4, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5][..],
    ] {
        let (addr, stop) = garbage_server(reply);
        for protocol in [Protocol::H2, Protocol::Grpc, Protocol::GrpcStream] {
            let mut c = load(&format!("http://{addr}/"), protocol);
            c.duration = Duration::from_millis(300);
            let r = run_load(c).unwrap();
            assert!(r.errors > 0, "{protocol:?}: {}", r.summary());
            assert_no_latency(&r);
        }
        let mut c = load(&format!("https://{addr}/"), Protocol::H2);
        c.duration = Duration::from_millis(300);
        c.tls.insecure = true;
        let r = run_load(c).unwrap();
        assert!(r.errors_by_kind.tls + r.errors_by_kind.reset > 0, "{}", r.summary());
        assert_no_latency(&r);
        stop.store(true, Ordering::Relaxed);
    }
}

/// The echo server and the load generator build their runtimes with monoio's fusion driver
/// (io_uring here). This re-runs the protocol tests in a child process with
/// `MONOIO_FORCE_LEGACY_DRIVER=1`, so they are also checked on the epoll driver that
/// containers without io_uring get.
#[test]
fn protocol_tests_also_pass_on_the_legacy_epoll_driver() {
    if std::env::var_os("RINGMESH_LEGACY_CHILD").is_some() {
        assert_eq!(ringmesh_loadgen::io_driver_name(), "epoll");
        return;
    }
    let _g = common::timing_lock();
    let tests = [
        "h2c_by_preface_answers_with_body_instance_and_knobs",
        "grpc_unary_and_stream_echo_payloads_with_status_ok",
        "grpc_unary_and_stream_load_round_trip_and_errors_count_as_grpc_status",
        "tls_h2_load_with_the_right_ca_mtls_and_failures_counted_as_tls",
        "protocol_tests_also_pass_on_the_legacy_epoll_driver",
    ];
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(tests)
        .args(["--exact", "--test-threads=1"])
        .env("MONOIO_FORCE_LEGACY_DRIVER", "1")
        .env("RINGMESH_LEGACY_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("{} passed", tests.len())), "{stdout}");
}
