//! Hostile and malformed requests: each gets its defined status, nothing reaches the upstream,
//! and the proxy keeps serving — on both I/O drivers.

use std::time::Duration;

use ringmesh_tests::client::Client;
use ringmesh_tests::proxy::{proxy_config, service_entry, TestProxy};
use ringmesh_tests::upstream::Upstream;
use ringmesh_tests::{both_io, IoMode};

/// (request bytes, expected status, why)
const CASES: &[(&[u8], u16, &str)] = &[
    (
        b"GET / HTTP/1.1\r\nHost: echo.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        "CL and TE together",
    ),
    (
        b"POST / HTTP/1.1\r\nHost: echo.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
        "differing duplicate CL",
    ),
    (
        b"POST / HTTP/1.1\r\nHost: echo.test\r\nContent-Length: -1\r\n\r\n",
        400,
        "negative CL",
    ),
    (
        b"POST / HTTP/1.1\r\nHost: echo.test\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        400,
        "overflowing CL",
    ),
    (
        b"POST / HTTP/1.1\r\nHost: echo.test\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        400,
        "chunked not last",
    ),
    (
        b"POST / HTTP/1.1\r\nHost: echo.test\r\nTransfer-Encoding: xchunked\r\n\r\n",
        400,
        "unknown coding",
    ),
    (
        b"GET / HTTP/1.1\r\nHost: echo.test\r\nX-Folded: a\r\n b\r\n\r\n",
        400,
        "obs-fold",
    ),
    (b"GET / HTTP/1.1\nHost: echo.test\n\n", 400, "bare LF"),
    (
        b"GET / HTTP/1.1\r\nHost: echo.test\r\nX-Nul: a\0b\r\n\r\n",
        400,
        "NUL in value",
    ),
    (b"GET / HTTP/1.1\r\nHost : echo.test\r\n\r\n", 400, "space before colon"),
    (b"G@T / HTTP/1.1\r\nHost: echo.test\r\n\r\n", 400, "bad method"),
    (b"GET / HTTP/1.1\r\n\r\n", 400, "missing Host"),
    (
        b"GET / HTTP/1.1\r\nHost: echo.test\r\nHost: other\r\n\r\n",
        400,
        "two Host headers",
    ),
    (b"GET / HTTP/2.0\r\nHost: echo.test\r\n\r\n", 505, "unsupported version"),
    (b"this is not http\r\n\r\n", 400, "garbage request line"),
];

fn smuggling_shapes_are_refused(io: IoMode) {
    let up = Upstream::named("a");
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("echo", "echo.test", 80, &[(up.addr, &[])]),
    ]);
    for (bytes, status, why) in CASES {
        let mut c = Client::connect(p.http());
        c.send(bytes);
        let r = c.response().unwrap_or_else(|| panic!("{why}: no response"));
        assert_eq!(r.status, *status, "{why}");
        assert_eq!(r.header("connection"), Some("close"), "{why}: connection must close");
        assert!(c.closed_within(Duration::from_secs(2)), "{why}: connection left open");
    }
    assert_eq!(up.count(), 0, "a malformed request reached the upstream");
    // Still serving.
    assert_eq!(Client::connect(p.http()).get("echo.test", "/").status, 200);
}

fn bad_chunk_size_closes(io: IoMode) {
    let up = Upstream::named("a");
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("echo", "echo.test", 80, &[(up.addr, &[])]),
    ]);
    let mut c = Client::connect(p.http());
    c.send(b"POST / HTTP/1.1\r\nHost: echo.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n");
    let r = c.response().expect("response");
    assert_eq!(r.status, 400);
    assert!(c.closed_within(Duration::from_secs(2)));
    assert_eq!(up.count(), 0, "request with a bad chunk reached the upstream");
}

fn oversize_head_is_431(io: IoMode) {
    let up = Upstream::named("a");
    let p = TestProxy::start(&[
        proxy_config(io, "", "  limits:\n    maxRequestHeadBytes: 2048\n    maxHeaders: 10\n"),
        service_entry("echo", "echo.test", 80, &[(up.addr, &[])]),
    ]);
    let mut c = Client::connect(p.http());
    let big = "x".repeat(4000);
    c.send(format!("GET / HTTP/1.1\r\nHost: echo.test\r\nX-Big: {big}\r\n\r\n").as_bytes());
    assert_eq!(c.response().unwrap().status, 431);
    let mut c = Client::connect(p.http());
    let many: String = (0..20).map(|i| format!("X-H{i}: v\r\n")).collect();
    c.send(format!("GET / HTTP/1.1\r\nHost: echo.test\r\n{many}\r\n").as_bytes());
    assert_eq!(c.response().unwrap().status, 431);
    assert_eq!(up.count(), 0);
}

fn slow_client_is_cut_off(io: IoMode) {
    let up = Upstream::named("a");
    let p = TestProxy::start(&[
        proxy_config(
            io,
            "",
            "  limits:\n    requestHeaderTimeout: 300ms\n    idleTimeout: 1s\n",
        ),
        service_entry("echo", "echo.test", 80, &[(up.addr, &[])]),
    ]);
    // Slowloris: half a head, then silence.
    let mut c = Client::connect(p.http());
    c.send(b"GET / HTTP/1.1\r\nHost: ech");
    let r = c.response().expect("408 expected");
    assert_eq!(r.status, 408);
    assert!(c.closed_within(Duration::from_secs(2)));
    // Idle keep-alive connection: closed after the idle timeout, without a response.
    let mut idle = Client::connect(p.http());
    assert_eq!(idle.get("echo.test", "/").status, 200);
    assert!(idle.closed_within(Duration::from_secs(3)), "idle connection not closed");
}

fn random_garbage_never_kills_the_proxy(io: IoMode) {
    let up = Upstream::named("a");
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("echo", "echo.test", 80, &[(up.addr, &[])]),
    ]);
    let mut seed = 0x1234_5678_9abc_def0u64;
    for _ in 0..200 {
        let mut bytes = Vec::new();
        for _ in 0..(seed % 300) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            bytes.push((seed % 256) as u8);
        }
        let mut c = Client::connect(p.http());
        let _ = std::io::Write::write_all(&mut c.stream, &bytes);
        let _ = c.stream.shutdown(std::net::Shutdown::Write);
        let _ = c.closed_within(Duration::from_millis(200));
    }
    assert_eq!(Client::connect(p.http()).get("echo.test", "/").status, 200);
}

both_io!(
    smuggling_shapes_are_refused,
    bad_chunk_size_closes,
    oversize_head_is_431,
    slow_client_is_cut_off,
    random_garbage_never_kills_the_proxy,
);

/// Upstream answers a proxy must refuse rather than relay: each becomes a 502 (nothing was sent
/// to the client yet) or a closed client connection (the head was already relayed).
fn hostile_upstream_answers(io: IoMode) {
    let big_head = {
        let mut r = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..2000 {
            r.extend_from_slice(format!("x-filler-{i}: {}\r\n", "y".repeat(40)).as_bytes());
        }
        r.extend_from_slice(b"content-length: 0\r\n\r\n");
        r
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (big_head, "response head over the limit"),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            "CL and TE together",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello".to_vec(),
            "differing CL",
        ),
        (b"HTTP/1.1 200 OK\nbare: lf\n\n".to_vec(), "bare LF"),
        (b"SMTP ready\r\n\r\n".to_vec(), "not HTTP"),
    ];
    for (raw, why) in cases {
        let up = Upstream::start("bad", move |_| ringmesh_tests::upstream::Reply::Raw(raw.clone()));
        let p = TestProxy::start(&[
            proxy_config(io, "", ""),
            service_entry("echo", "echo.test", 80, &[(up.addr, &[])]),
        ]);
        let r = Client::connect(p.http()).get("echo.test", "/");
        assert_eq!(r.status, 502, "{why}");
    }
    // A broken chunk in the middle of a relayed body: the client sees the connection close
    // instead of a complete response.
    let up = Upstream::start("bad", |_| {
        ringmesh_tests::upstream::Reply::Raw(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n".to_vec(),
        )
    });
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("echo", "echo.test", 80, &[(up.addr, &[])]),
    ]);
    let mut c = Client::connect(p.http());
    c.send(b"GET / HTTP/1.1\r\nHost: echo.test\r\n\r\n");
    assert!(
        c.response().is_none(),
        "a truncated body must not look like a complete response"
    );
    // The proxy still serves afterwards.
    let good = Upstream::named("good");
    let p2 = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("echo", "echo.test", 80, &[(good.addr, &[])]),
    ]);
    assert_eq!(Client::connect(p2.http()).get("echo.test", "/").status, 200);
}

both_io!(hostile_upstream_answers);
