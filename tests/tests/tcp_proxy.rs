//! The L4 TCP proxy (splice): bytes both ways, half-close, idle timeout — on both drivers.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

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

both_io!(half_close_and_large_payload, idle_timeout_closes_pair);
