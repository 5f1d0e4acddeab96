//! HTTP/1.1 proxying end to end: keep-alive, bodies, streaming, pipelining, upgrades and the
//! headers a proxy adds and removes — each on io_uring and on the epoll fallback.

use std::time::{Duration, Instant};

use ringmesh_tests::client::{self, Client};
use ringmesh_tests::proxy::{proxy_config, service_entry, TestProxy};
use ringmesh_tests::upstream::{Reply, Upstream};
use ringmesh_tests::{both_io, IoMode};

fn one_service(io: IoMode, up: &Upstream) -> TestProxy {
    TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("echo", "echo.test", 80, &[(up.addr, &[])]),
    ])
}

fn get_keepalive_and_pooling(io: IoMode) {
    let up = Upstream::named("a");
    let p = one_service(io, &up);
    let mut c = Client::connect(p.http());
    for i in 0..5 {
        let r = c.get("echo.test", &format!("/n/{i}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "a");
        assert_eq!(r.header("x-upstream"), Some("a"));
    }
    // A second client reuses the pooled upstream connection too.
    let r = client::get(p.http(), "echo.test", "/again");
    assert_eq!(r.status, 200);
    assert_eq!(up.count(), 6);
    assert_eq!(
        up.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "upstream connection not reused"
    );
    assert_eq!(up.received()[2].target, "/n/2");
}

fn forwarded_headers(io: IoMode) {
    let up = Upstream::named("a");
    let p = one_service(io, &up);
    let mut c = Client::connect(p.http());
    c.send(b"GET /h HTTP/1.1\r\nHost: echo.test\r\nX-Forwarded-For: 10.1.2.3\r\nConnection: keep-alive, x-secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nX-Keep: yes\r\n\r\n");
    assert_eq!(c.response().unwrap().status, 200);
    c.send(b"GET /h2 HTTP/1.1\r\nHost: echo.test\r\nX-Request-Id: my-id\r\n\r\n");
    assert_eq!(c.response().unwrap().status, 200);
    let got = up.received();
    let r = &got[0];
    assert_eq!(r.header("x-forwarded-for"), Some("10.1.2.3, 127.0.0.1"));
    assert_eq!(r.header("x-forwarded-proto"), Some("http"));
    let id = r.header("x-request-id").expect("generated request id");
    assert_eq!(id.len(), 36, "uuid form: {id}");
    assert_eq!(r.header("x-keep"), Some("yes"));
    for hop in ["x-secret", "keep-alive", "proxy-connection", "te"] {
        assert!(r.header(hop).is_none(), "hop-by-hop header {hop} was forwarded");
    }
    assert_eq!(got[1].header("x-request-id"), Some("my-id"));
    assert_ne!(got[0].header("x-request-id"), got[1].header("x-request-id"));
}

fn content_length_body_both_ways(io: IoMode) {
    let up = Upstream::start("a", |r| Reply::Full {
        status: 201,
        headers: vec![],
        body: r.body.iter().rev().cloned().collect(),
    });
    let p = one_service(io, &up);
    let mut c = Client::connect(p.http());
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut req = format!(
        "POST /upload HTTP/1.1\r\nHost: echo.test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    c.send(&req);
    let r = c.response().unwrap();
    assert_eq!(r.status, 201);
    let expect: Vec<u8> = body.iter().rev().cloned().collect();
    assert_eq!(r.body, expect);
    assert_eq!(up.received()[0].body, body);
}

fn chunked_with_trailers_both_ways(io: IoMode) {
    let up = Upstream::start("a", |r| Reply::Chunked {
        status: 200,
        chunks: vec![(Duration::ZERO, r.body.clone()), (Duration::ZERO, b"-tail".to_vec())],
        trailers: vec![("x-checksum".into(), "42".into())],
    });
    let p = one_service(io, &up);
    let mut c = Client::connect(p.http());
    c.send(b"POST /c HTTP/1.1\r\nHost: echo.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: t1\r\n\r\n");
    c.send(b"");
    // Read the chunked response by hand to see its trailers.
    let status = c.line().unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let mut te = false;
    loop {
        let l = c.line().unwrap();
        if l.is_empty() {
            break;
        }
        te |= l.eq_ignore_ascii_case("transfer-encoding: chunked");
    }
    assert!(te);
    let (body, trailers) = c.read_chunked().unwrap();
    assert_eq!(body, b"hello world-tail");
    assert_eq!(trailers, vec!["x-checksum: 42".to_string()]);
    let got = &up.received()[0];
    assert_eq!(got.body, b"hello world");
    assert_eq!(got.trailers, vec!["x-trailer: t1".to_string()]);
    // The connection still works afterwards.
    assert_eq!(c.get("echo.test", "/after").status, 200);
}

fn streaming_is_not_delayed(io: IoMode) {
    let up = Upstream::start("a", |_| Reply::Chunked {
        status: 200,
        chunks: vec![
            (Duration::ZERO, b"data: one\n\n".to_vec()),
            (Duration::from_millis(600), b"data: two\n\n".to_vec()),
        ],
        trailers: vec![],
    });
    let p = one_service(io, &up);
    let mut c = Client::connect(p.http());
    let start = Instant::now();
    c.send(b"GET /events HTTP/1.1\r\nHost: echo.test\r\nAccept: text/event-stream\r\n\r\n");
    loop {
        if c.line().unwrap().is_empty() {
            break;
        }
    }
    let size = c.line().unwrap();
    assert_eq!(size, "b");
    let first = c.read_exact_bytes(13).unwrap();
    let t_first = start.elapsed();
    assert_eq!(&first[..11], b"data: one\n\n");
    assert!(
        t_first < Duration::from_millis(400),
        "first event held back for {t_first:?}"
    );
    let (rest, _) = c.read_chunked().unwrap();
    assert_eq!(rest, b"data: two\n\n");
    assert!(start.elapsed() >= Duration::from_millis(550));
}

fn pipelined_in_order(io: IoMode) {
    let up = Upstream::start("a", |r| {
        // Make the first answer slow: order must still hold.
        let delay = if r.target == "/1" {
            Duration::from_millis(100)
        } else {
            Duration::ZERO
        };
        Reply::Delay(delay, Box::new(Reply::ok(&r.target)))
    });
    let p = one_service(io, &up);
    let mut c = Client::connect(p.http());
    c.send(b"GET /1 HTTP/1.1\r\nHost: echo.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: echo.test\r\n\r\nPOST /3 HTTP/1.1\r\nHost: echo.test\r\nContent-Length: 3\r\n\r\nabcGET /4 HTTP/1.1\r\nHost: echo.test\r\n\r\n");
    for want in ["/1", "/2", "/3", "/4"] {
        let r = c.response().unwrap();
        assert_eq!(r.text(), want);
    }
    assert_eq!(up.received()[2].body, b"abc");
}

fn upgrade_is_tunnelled(io: IoMode) {
    let up = Upstream::start("a", |_| Reply::UpgradeEcho);
    let p = one_service(io, &up);
    let mut c = Client::connect(p.http());
    c.send(b"GET /ws HTTP/1.1\r\nHost: echo.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n");
    let r = c.response_to(true).unwrap();
    assert_eq!(r.status, 101);
    assert_eq!(r.header("upgrade"), Some("echo"));
    let got = &up.received()[0];
    assert_eq!(got.header("upgrade"), Some("echo"));
    c.send(b"ping-1");
    assert_eq!(c.read_exact_bytes(6).unwrap(), b"ping-1");
    c.send(b"ping-22");
    assert_eq!(c.read_exact_bytes(7).unwrap(), b"ping-22");
}

fn expect_continue(io: IoMode) {
    let up = Upstream::start("a", |r| Reply::ok(&String::from_utf8_lossy(&r.body)));
    let p = one_service(io, &up);
    let mut c = Client::connect(p.http());
    c.send(b"PUT /x HTTP/1.1\r\nHost: echo.test\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    let interim = c.response_to(true).unwrap();
    assert_eq!(interim.status, 100);
    c.send(b"body");
    let r = c.response().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "body");
    assert!(up.received()[0].header("expect").is_none());
}

fn close_delimited_response(io: IoMode) {
    let up = Upstream::start("a", |_| Reply::UntilClose {
        status: 200,
        body: b"until-close".to_vec(),
    });
    let p = one_service(io, &up);
    let mut c = Client::connect(p.http());
    let r = c.get("echo.test", "/");
    assert_eq!(r.text(), "until-close");
    assert_eq!(r.header("connection"), Some("close"));
}

fn head_request_has_no_body(io: IoMode) {
    let up = Upstream::start("a", |_| Reply::Full {
        status: 200,
        headers: vec![],
        body: b"12345".to_vec(),
    });
    let p = one_service(io, &up);
    let mut c = Client::connect(p.http());
    c.send(b"HEAD / HTTP/1.1\r\nHost: echo.test\r\n\r\n");
    let r = c.response_to(true).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("5"));
    // Next request on the same connection parses cleanly: no stray body bytes.
    assert_eq!(c.get("echo.test", "/").text(), "12345");
}

both_io!(
    get_keepalive_and_pooling,
    forwarded_headers,
    content_length_body_both_ways,
    chunked_with_trailers_both_ways,
    streaming_is_not_delayed,
    pipelined_in_order,
    upgrade_is_tunnelled,
    expect_continue,
    close_delimited_response,
    head_request_has_no_body,
);

fn http10_keep_alive(io: IoMode) {
    let up = Upstream::named("a");
    let p = one_service(io, &up);
    let mut c = Client::connect(p.http());
    c.send(b"GET /1 HTTP/1.0\r\nHost: echo.test\r\nConnection: keep-alive\r\n\r\n");
    let r = c.response().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("keep-alive"));
    c.send(b"GET /2 HTTP/1.0\r\nHost: echo.test\r\n\r\n");
    let r = c.response().unwrap();
    assert_eq!(r.header("connection"), Some("close"));
    assert!(
        c.closed_within(Duration::from_secs(2)),
        "HTTP/1.0 without keep-alive must be closed"
    );
}

both_io!(http10_keep_alive);

/// An upstream that refuses an upload before reading it (413) gets its answer relayed to the
/// client at once, not after the body (which it never reads) or as a 503.
fn early_response_to_upload_is_relayed(io: IoMode) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).map(|n| n == 1).unwrap_or(false) {
                head.push(b[0]);
            }
            let _ = s.write_all(
                b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big\n",
            );
            let _ = s.shutdown(std::net::Shutdown::Write);
            // Read nothing more for a while: a proxy that insists on sending the whole body
            // first stalls here until the socket closes.
            std::thread::sleep(Duration::from_secs(3));
        }
    });
    let p = TestProxy::start(&[
        proxy_config(io, "", ""),
        service_entry("echo", "echo.test", 80, &[(addr, &[])]),
    ]);
    let mut c = Client::connect(p.http());
    let total = 8 * 1024 * 1024;
    c.send(format!("POST /upload HTTP/1.1\r\nHost: echo.test\r\nContent-Length: {total}\r\n\r\n").as_bytes());
    let mut w = c.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..(total / chunk.len()) {
            if w.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let r = c.response().expect("the upstream's early answer");
    assert_eq!(r.status, 413);
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "answer held back for {:?}",
        start.elapsed()
    );
    assert_eq!(r.text(), "too big\n");
    assert_eq!(r.header("connection"), Some("close"));
    drop(c);
    let _ = writer.join();
}

both_io!(early_response_to_upload_is_relayed);
