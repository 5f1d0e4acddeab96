//! Capture listeners (`spec.capture`) without capture rules: what a connection made to a
//! capture port directly gets. Redirected connections need `ringmesh iptables` in a network
//! namespace of their own, which `tests/interop/sidecar.sh` builds (root); here, without
//! rules, a connection either has no original destination (no conntrack entry) or has the
//! listener itself as its original destination — both are refused, counted and logged, so the
//! proxy never passes a connection through to itself.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use ringmesh_testkit::eventually;
use ringmesh_tests::client::{admin_get, Client};
use ringmesh_tests::proxy::{proxy_config, service_entry, TestProxy};
use ringmesh_tests::upstream::Upstream;
use ringmesh_tests::{both_io, IoMode};

/// Two ports free on every address right now (the capture listeners bind `0.0.0.0`).
fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("0.0.0.0:0").unwrap();
    let b = TcpListener::bind("0.0.0.0:0").unwrap();
    (a.local_addr().unwrap().port(), b.local_addr().unwrap().port())
}

fn start(io: IoMode, extra_spec: &str) -> (TestProxy, u16, u16, Upstream) {
    let web = Upstream::named("web");
    let (out, inb) = free_ports();
    let spec = format!("  capture: {{outboundPort: {out}, inboundPort: {inb}, ipv6: false}}\n{extra_spec}");
    let p = TestProxy::start(&[
        proxy_config(io, "", &spec),
        service_entry("web", "web.test", 80, &[(web.addr, &[])]),
    ]);
    (p, out, inb, web)
}

/// The sum of the two refusal counters (which one counts depends on whether the kernel keeps
/// conntrack entries for loopback here).
fn refused(p: &TestProxy) -> u64 {
    let text = admin_get(p.metrics(), "/stats/prometheus").1;
    [
        "ringmesh_capture_loop_refused_total",
        "ringmesh_capture_no_original_dst_total",
    ]
    .iter()
    .map(|m| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{m} ")))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{m} missing:\n{text}"))
    })
    .sum()
}

/// A request sent straight to a capture port is answered by nothing: the connection closes
/// unanswered, and the refusal is counted; the upstream never sees it.
fn a_connection_made_to_a_capture_port_itself_is_refused(io: IoMode) {
    let (p, out, inb, web) = start(io, "");
    assert_eq!(refused(&p), 0);
    for (n, port) in [(1, out), (2, inb)] {
        let mut c = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // The request may be refused before it is all written: only the answer matters.
        let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n");
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        assert!(
            got.is_empty(),
            "port {port} answered: {:?}",
            String::from_utf8_lossy(&got)
        );
        eventually(Duration::from_secs(5), "the refusal counted", || refused(&p) == n).unwrap();
    }
    assert_eq!(web.count(), 0);
    // The config's ordinary listener still serves.
    let r = Client::connect(p.listener("http")).get("web.test", "/");
    assert_eq!((r.status, r.text()), (200, "web".to_owned()));
}

/// The capture tables are in `/config_dump` under `capture`, with the mode for unknown
/// destinations as the config says it.
fn the_capture_tables_are_shown(io: IoMode) {
    let (p, ..) = start(io, "  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n");
    let dump = admin_get(p.admin(), "/config_dump").1;
    let json: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let capture = json
        .pointer("/snapshot/capture")
        .or_else(|| json.pointer("/capture"))
        .unwrap_or_else(|| panic!("no capture in {dump}"));
    assert_eq!(capture["unknown"], "REGISTRY_ONLY", "{capture}");
}

both_io!(
    a_connection_made_to_a_capture_port_itself_is_refused,
    the_capture_tables_are_shown
);
