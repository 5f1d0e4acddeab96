//! The echo server seen from a plain blocking client: special paths, body echo (length and
//! chunked), pipelining, keep-alive, instance header, TCP mode and shutdown.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{connect, read_response, roundtrip};
use ringmesh_loadgen::{spawn_echo, EchoConfig, EchoMode};

fn echo(cfg: EchoConfig) -> ringmesh_loadgen::EchoHandle {
    spawn_echo(cfg).expect("echo starts")
}

#[test]
fn headers_path_returns_the_request_head_verbatim() {
    let e = echo(EchoConfig {
        instance: "inst-7".into(),
        ..EchoConfig::default()
    });
    let req = b"GET /headers?q=1 HTTP/1.1\r\nHost: echo.test\r\nX-Forwarded-For: 10.1.2.3\r\nx-custom: Value\r\n\r\n";
    let r = roundtrip(e.local_addr(), req);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, req.to_vec(), "body must be the exact head received");
    assert_eq!(r.header("x-ringmesh-instance"), Some("inst-7"));
}

#[test]
fn default_body_has_configured_size_and_status_paths_work() {
    let e = echo(EchoConfig {
        body_size: 1000,
        ..EchoConfig::default()
    });
    let a = e.local_addr();
    let r = roundtrip(a, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((r.status, r.body.len()), (200, 1000));
    let r = roundtrip(a, b"GET /status/418 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 418);
    let r = roundtrip(a, b"GET /status/503 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 503);
    let r = roundtrip(a, b"GET /status/abc HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 400);
    // HEAD: content-length of the would-be body, no body bytes.
    let mut s = connect(a);
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET /status/201 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let n = s.read(&mut tmp).unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&tmp[..n]);
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = resp.parse(&buf) {
            assert_eq!(resp.code, Some(200));
            let cl = resp.headers.iter().find(|h| h.name == "content-length").unwrap();
            assert_eq!(cl.value, b"1000");
            buf.drain(..head);
            break;
        }
    }
    // The next response starts right after the HEAD response's head.
    let r = read_response(&mut s, &mut buf);
    assert_eq!(r.status, 201);
}

#[test]
fn post_and_put_bodies_are_echoed_with_length_and_chunked_framing() {
    let e = echo(EchoConfig::default());
    let a = e.local_addr();
    let r = roundtrip(
        a,
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world",
    );
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello world"[..]));

    let r = roundtrip(
        a,
        b"PUT /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1;ext=a\r\n \r\n5\r\nworld\r\n0\r\nTrailer: t\r\n\r\n",
    );
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello world"[..]));

    // A body that arrives in pieces, with Expect: 100-continue.
    let mut s = connect(a);
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    s.write_all(b"POST /big HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    for piece in big.chunks(30_000) {
        s.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).unwrap();
        s.write_all(piece).unwrap();
        s.write_all(b"\r\n").unwrap();
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let r = read_response(&mut s, &mut Vec::new());
    assert_eq!(r.status, 200);
    assert!(r.body == big, "200 kB chunked body must echo intact");

    // GET bodies are consumed but not echoed; the connection stays in sync.
    let mut s = connect(a);
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /status/202 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut s, &mut buf).body.len(), 64);
    assert_eq!(read_response(&mut s, &mut buf).status, 202);
}

#[test]
fn malformed_requests_get_400_and_bad_chunking_is_rejected() {
    let e = echo(EchoConfig::default());
    let a = e.local_addr();
    assert_eq!(roundtrip(a, b"NOT HTTP AT ALL\r\n\r\n").status, 400);
    assert_eq!(
        roundtrip(
            a,
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
        )
        .status,
        400
    );
    assert_eq!(
        roundtrip(
            a,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
        )
        .status,
        400
    );
    let mut huge = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 70_000));
    let mut s = connect(a);
    let _ = s.write_all(&huge);
    let r = read_response(&mut s, &mut Vec::new());
    assert_eq!(r.status, 431);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let e = echo(EchoConfig::default());
    let mut s = connect(e.local_addr());
    let mut batch = Vec::new();
    for i in 0..20 {
        batch.extend_from_slice(format!("POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n{i:04}").as_bytes());
    }
    batch.extend_from_slice(
        b"GET /delay/30 HTTP/1.1\r\nHost: x\r\n\r\nGET /status/204 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    s.write_all(&batch).unwrap();
    let mut buf = Vec::new();
    for i in 0..20 {
        let r = read_response(&mut s, &mut buf);
        assert_eq!(r.body, format!("{i:04}").into_bytes());
    }
    let started = Instant::now();
    assert_eq!(read_response(&mut s, &mut buf).status, 200);
    let last = read_response(&mut s, &mut buf);
    assert_eq!(last.status, 204);
    assert_eq!(last.header("connection"), Some("close"));
    assert!(started.elapsed() < Duration::from_secs(2));
    // The server closes after `Connection: close`.
    let mut tmp = [0u8; 16];
    assert_eq!(s.read(&mut tmp).unwrap_or(0), 0);
}

#[test]
fn configured_delay_and_delay_path_are_honoured_precisely() {
    let _g = common::timing_lock();
    let e = echo(EchoConfig {
        delay: Duration::from_millis(3),
        ..EchoConfig::default()
    });
    let mut s = connect(e.local_addr());
    let mut buf = Vec::new();
    let mut samples = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        read_response(&mut s, &mut buf);
        samples.push(t.elapsed());
    }
    samples.sort();
    let median = samples[samples.len() / 2];
    assert!(
        median >= Duration::from_millis(3) && median < Duration::from_micros(3600),
        "median {median:?} for a 3 ms delay"
    );
    let t = Instant::now();
    s.write_all(b"GET /delay/50 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    read_response(&mut s, &mut buf);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(50) && took < Duration::from_millis(500),
        "{took:?}"
    );
}

#[test]
fn error_rate_one_answers_500_and_counts_requests() {
    let e = echo(EchoConfig {
        error_rate: 1.0,
        ..EchoConfig::default()
    });
    for _ in 0..3 {
        assert_eq!(
            roundtrip(e.local_addr(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").status,
            500
        );
    }
    assert_eq!(e.requests_served(), 3);
}

#[test]
fn several_workers_share_one_port_and_shutdown_frees_it() {
    let e = echo(EchoConfig {
        workers: 3,
        instance: "multi".into(),
        ..EchoConfig::default()
    });
    let a = e.local_addr();
    assert_ne!(a.port(), 0);
    // Held-open keep-alive connection: shutdown must close it, not hang.
    let mut held = connect(a);
    held.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    read_response(&mut held, &mut Vec::new());
    for _ in 0..30 {
        let r = roundtrip(a, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.header("x-ringmesh-instance"), Some("multi"));
    }
    assert_eq!(e.requests_served(), 31);
    let t = Instant::now();
    e.shutdown();
    assert!(t.elapsed() < Duration::from_secs(3));
    let mut tmp = [0u8; 8];
    assert_eq!(held.read(&mut tmp).unwrap_or(0), 0, "held connection closed");
    assert!(TcpStream::connect(a).is_err(), "port released after shutdown");
}

#[test]
fn tcp_mode_echoes_bytes() {
    let e = echo(EchoConfig {
        mode: EchoMode::Tcp,
        ..EchoConfig::default()
    });
    let mut s = connect(e.local_addr());
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    let writer = {
        let mut w = s.try_clone().unwrap();
        let data = data.clone();
        std::thread::spawn(move || w.write_all(&data).unwrap())
    };
    let mut got = vec![0u8; data.len()];
    s.read_exact(&mut got).unwrap();
    writer.join().unwrap();
    assert!(got == data);
}

#[test]
fn bad_config_and_busy_port_are_errors_not_panics() {
    assert!(spawn_echo(EchoConfig {
        workers: 0,
        ..EchoConfig::default()
    })
    .is_err());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = spawn_echo(EchoConfig::new(taken.local_addr().unwrap())).unwrap_err();
    assert!(format!("{err:#}").contains("bind"), "{err:#}");
}
