//! Listener binding: a second proxy on an address another one serves is refused by name (with
//! `SO_REUSEPORT` the kernel would otherwise split the traffic between both), unless it asks to
//! take over; a proxy's own workers still share each address — on both drivers.

use std::net::SocketAddr;

use ringmesh_proxy::runtime::bind::BindMode;
use ringmesh_tests::client::Client;
use ringmesh_tests::proxy::{proxy_config, TestProxy};
use ringmesh_tests::{both_io, IoMode};

/// A proxy config whose `http` listener binds `addr`, with `workers` workers.
fn config_on(io: IoMode, addr: SocketAddr, workers: usize) -> Vec<String> {
    let c = proxy_config(io, "", "")
        .replacen("workers: 1", &format!("workers: {workers}"), 1)
        .replacen(
            "- name: http\n    address: 127.0.0.1:0",
            &format!("- name: http\n    address: {addr}"),
            1,
        );
    vec![c]
}

fn second_proxy_on_a_used_address(io: IoMode) {
    let first = TestProxy::start(&config_on(io, "127.0.0.1:0".parse().unwrap(), 2));
    let addr = first.http();
    let err =
        TestProxy::try_start(&config_on(io, addr, 1)).expect_err("a second proxy on an address in use must not start");
    let msg = format!("{err:#}");
    assert!(msg.contains(&addr.to_string()), "{msg}");
    assert!(msg.contains("already in use") && msg.contains("--takeover"), "{msg}");
    assert!(msg.contains("listener http"), "{msg}");
    // The first proxy still serves, on all of its workers' sockets.
    let mut c = Client::connect(addr);
    assert_eq!(c.get("nothing.test", "/").status, 404);
}

fn takeover_shares_the_address(io: IoMode) {
    let first = TestProxy::start(&config_on(io, "127.0.0.1:0".parse().unwrap(), 2));
    let addr = first.http();
    let successor = TestProxy::try_start_with(&config_on(io, addr, 2), |o| o.bind_mode = BindMode::Takeover)
        .unwrap_or_else(|e| panic!("a takeover must start: {e:#}"));
    assert_eq!(successor.http(), addr);
    drop(first);
    // With the predecessor gone, the successor serves the address alone.
    let mut c = Client::connect(addr);
    assert_eq!(c.get("nothing.test", "/").status, 404);
}

both_io!(second_proxy_on_a_used_address, takeover_shares_the_address);
