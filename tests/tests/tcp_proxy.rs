//! The L4 TCP proxy (splice): bytes both ways, half-close, idle timeout — on both drivers.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use ringmesh_testkit::eventually;
use ringmesh_tests::proxy::{proxy_config, TestProxy};
use ringmesh_tests::{both_io, IoMode};

/// A TCP server that reads until EOF, then answers with the reversed bytes and closes: only a
/// proxy that forwards the client's half-close lets it answer at all.
fn reverse_server() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming().take(16) {
            let Ok(mut s) = s else { continue };
            thread::spawn(move || {
                let mut all = Vec::new();
                let _ = s.read_to_end(&mut all);
                all.reverse();
                let _ = s.write_all(&all);
            });
        }
    });
    addr
}

fn tcp_docs(io: IoMode, upstream: std::net::SocketAddr, idle: &str) -> Vec<String> {
    let listener = format!("  - name: db\n    address: 127.0.0.1:0\n    protocol: TCP\n    destination: {{host: db.test, port: 5432}}\n    idleTimeout: {idle}\n");
    let se = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: db\nspec:\n  hosts: [db.test]\n  ports: [{{number: 5432, name: tcp, protocol: TCP}}]\n  resolution: STATIC\n  endpoints:\n  - {{address: 127.0.0.1, ports: {{tcp: {}}}}}\n",
        upstream.port()
    );
    vec![proxy_config(io, &listener, ""), se]
}

fn half_close_and_large_payload(io: IoMode) {
    let up = reverse_server();
    let p = TestProxy::start(&tcp_docs(io, up, "1h"));
    let mut c = TcpStream::connect(p.listener("db")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let writer = {
        let mut w = c.try_clone().unwrap();
        let payload = payload.clone();
        thread::spawn(move || {
            w.write_all(&payload).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        })
    };
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    let mut want = payload;
    want.reverse();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "payload corrupted through the TCP proxy");
}

fn idle_timeout_closes_pair(io: IoMode) {
    // An upstream that accepts and then says nothing.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = l.local_addr().unwrap();
    let _hold = thread::spawn(move || {
        let conns: Vec<_> = l.incoming().take(1).collect();
        // The silence under test (past the 300 ms idle timeout), not synchronization.
        thread::sleep(Duration::from_secs(5));
        drop(conns);
    });
    let p = TestProxy::start(&tcp_docs(io, up, "300ms"));
    let mut c = TcpStream::connect(p.listener("db")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
    let start = Instant::now();
    let mut b = [0u8; 1];
    let n = loop {
        match c.read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => break r.unwrap_or(0),
        }
    };
    assert_eq!(n, 0, "expected EOF from idle timeout");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
}

/// A server that echoes every read back at once, like a request/response protocol.
fn echo_server(conns: usize) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming().take(conns) {
            let Ok(mut s) = s else { continue };
            thread::spawn(move || {
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

/// Reads exactly `want.len()` bytes and checks them.
fn expect_bytes(c: &mut TcpStream, want: &[u8]) {
    let mut got = vec![0u8; want.len()];
    c.read_exact(&mut got).unwrap();
    assert_eq!(got, want);
}

/// Many small messages each way on one tunnel, every one waiting for its answer: each read
/// finds the socket drained and must wake on the next message, never losing one.
fn small_messages_round_trip(io: IoMode) {
    let up = echo_server(1);
    let p = TestProxy::start(&tcp_docs(io, up, "1h"));
    let mut c = TcpStream::connect(p.listener("db")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.set_nodelay(true).unwrap();
    for i in 0..2_000u32 {
        let msg = format!("ping {i}\n");
        c.write_all(msg.as_bytes()).unwrap();
        expect_bytes(&mut c, msg.as_bytes());
    }
}

/// Idle tunnels hold no kernel threads. io_uring's own splice runs on an io-wq worker that
/// blocks until the socket has bytes, two per tunnel; the proxy waits for readiness instead.
fn idle_tunnels_hold_no_kernel_threads(io: IoMode) {
    const TUNNELS: usize = 8;
    let up = echo_server(TUNNELS);
    let p = TestProxy::start(&tcp_docs(io, up, "1h"));
    let mut clients = Vec::new();
    for i in 0..TUNNELS {
        let mut c = TcpStream::connect(p.listener("db")).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let msg = format!("hello {i}");
        c.write_all(msg.as_bytes()).unwrap();
        expect_bytes(&mut c, msg.as_bytes());
        clients.push(c);
    }
    // Every tunnel is open, has carried bytes and now waits on both sides. A kernel worker
    // blocked on an idle tunnel would appear shortly after the proxy re-arms its reads, so the
    // count is watched for 100 ms: a window in which something must not happen, failing as soon
    // as it does (not a wait for anything to be ready).
    let io_workers = || {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.starts_with("iou-wrk"))
            .count()
    };
    let blocked = eventually(
        Duration::from_millis(100),
        "an io_uring worker thread per idle tunnel",
        || io_workers() >= TUNNELS,
    );
    assert!(
        blocked.is_err(),
        "{} io_uring worker threads for {TUNNELS} idle tunnels",
        io_workers()
    );
    // And they still work after idling.
    for (i, c) in clients.iter_mut().enumerate() {
        let msg = format!("again {i}");
        c.write_all(msg.as_bytes()).unwrap();
        expect_bytes(c, msg.as_bytes());
    }
}

/// An upstream that resets the connection: the client's side is closed too, not left hanging.
fn upstream_reset_closes_the_client(io: IoMode) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = l.local_addr().unwrap();
    thread::spawn(move || {
        if let Some(Ok(mut s)) = l.incoming().next() {
            let mut b = [0u8; 5];
            let _ = s.read_exact(&mut b);
            // SO_LINGER 0: close sends RST instead of FIN.
            let sock = socket2::SockRef::from(&s);
            let _ = sock.set_linger(Some(Duration::ZERO));
            drop(s);
        }
    });
    let p = TestProxy::start(&tcp_docs(io, up, "1h"));
    let mut c = TcpStream::connect(p.listener("db")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
    c.write_all(b"hello").unwrap();
    // A tunnel left hanging ends the read with the timeout's WouldBlock, and fails below.
    let mut b = [0u8; 16];
    let r = loop {
        match c.read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => break r,
        }
    };
    match r {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected EOF or reset after the upstream's RST, got {other:?}"),
    }
}

both_io!(
    half_close_and_large_payload,
    idle_timeout_closes_pair,
    small_messages_round_trip,
    idle_tunnels_hold_no_kernel_threads,
    upstream_reset_closes_the_client
);
