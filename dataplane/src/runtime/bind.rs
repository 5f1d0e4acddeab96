//! Binding the workers' listening sockets: one `SO_REUSEPORT` socket per worker per listener,
//! and never, unless asked, an address another process is already serving.
//!
//! `SO_REUSEPORT` lets every worker have its own socket on one address, so the kernel spreads
//! connections over cores and no lock is taken to accept. It also lets a *second process* of
//! the same user bind that address without error and silently take its share of the traffic
//! (a second proxy with another config once took half of a canary's). So the first socket of
//! each listener is bound **without** `SO_REUSEPORT` — the kernel then refuses it with
//! `EADDRINUSE` while any other socket holds the address — and only after that bind succeeded
//! is `SO_REUSEPORT` turned on, so this proxy's other workers can join. That claim is atomic:
//! of two ringmesh processes starting on one address at the same moment, exactly one binds.
//!
//! What it cannot stop: a program that binds with `SO_REUSEPORT` from the start (as a
//! `--takeover` successor does, on purpose) still joins a group it finds, since the kernel
//! allows it; only that program can decline.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections each listening socket queues before the kernel refuses more.
const BACKLOG: i32 = 4096;

/// Whether a listener may join sockets another process already has on its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BindMode {
    /// Refuse an address in use (the default).
    #[default]
    Exclusive,
    /// Share it with `SO_REUSEPORT`: a deliberate successor started while its predecessor
    /// drains (both serve until the old one exits).
    Takeover,
}

/// Why a listener could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Another socket already holds the address.
    #[error(
        "{addr} is already in use by another process; refusing to share it (with SO_REUSEPORT the kernel would \
         silently split the traffic between both). Stop the other process or pick another address; to share it \
         on purpose (a successor during a drain) start with --takeover (RINGMESH_TAKEOVER=true)"
    )]
    InUse {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// Any other socket error.
    #[error("bind {addr}: {source}")]
    Io {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's answer.
        source: std::io::Error,
    },
}

/// Binds `count` (at least one) listening sockets on `addr`, all in one `SO_REUSEPORT` group.
/// The first resolves port 0; the rest bind the port it got.
pub(crate) fn bind_group(
    addr: SocketAddr,
    count: usize,
    mode: BindMode,
) -> Result<Vec<std::net::TcpListener>, BindError> {
    let io = |addr| move |source| BindError::Io { addr, source };
    let first = socket(addr).map_err(io(addr))?;
    first.set_reuse_port(mode == BindMode::Takeover).map_err(io(addr))?;
    match first.bind(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Err(BindError::InUse { addr }),
        Err(e) => return Err(io(addr)(e)),
    }
    // The address is ours now; let this proxy's other workers join it.
    first.set_reuse_port(true).map_err(io(addr))?;
    let actual = first.local_addr().ok().and_then(|a| a.as_socket()).unwrap_or(addr);
    first.listen(BACKLOG).map_err(io(addr))?;
    let mut sockets = vec![std::net::TcpListener::from(first)];
    for _ in 1..count {
        let s = socket(actual).map_err(io(actual))?;
        s.set_reuse_port(true).map_err(io(actual))?;
        s.bind(&actual.into()).map_err(io(actual))?;
        s.listen(BACKLOG).map_err(io(actual))?;
        sockets.push(s.into());
    }
    Ok(sockets)
}

/// Whether a bind failed because the host lacks the address's family (no IPv6).
pub(crate) fn family_missing(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::EPROTONOSUPPORT)
    )
}

/// A non-blocking TCP socket for `addr` with `SO_REUSEADDR` (so a restart is not refused
/// for connections of the previous run still in `TIME_WAIT`).
fn socket(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    #[test]
    fn a_group_shares_one_port() {
        let group = bind_group(loopback(), 3, BindMode::Exclusive).unwrap();
        let port = group[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert!(group.iter().all(|s| s.local_addr().unwrap().port() == port));
    }

    #[test]
    fn a_second_group_on_the_same_address_is_refused_by_name() {
        let first = bind_group(loopback(), 2, BindMode::Exclusive).unwrap();
        let addr = first[0].local_addr().unwrap();
        let err = bind_group(addr, 2, BindMode::Exclusive).unwrap_err();
        assert!(matches!(err, BindError::InUse { addr: a } if a == addr), "{err}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        assert!(err.to_string().contains("--takeover"), "{err}");
    }

    #[test]
    fn a_takeover_joins_the_group() {
        let first = bind_group(loopback(), 2, BindMode::Exclusive).unwrap();
        let addr = first[0].local_addr().unwrap();
        let successor = bind_group(addr, 2, BindMode::Takeover).unwrap();
        assert_eq!(successor[0].local_addr().unwrap(), addr);
        // Even with a successor in the group, a third, exclusive bind is refused.
        assert!(matches!(
            bind_group(addr, 1, BindMode::Exclusive),
            Err(BindError::InUse { .. })
        ));
    }

    #[test]
    fn a_takeover_cannot_join_a_socket_without_reuseport() {
        let plain = std::net::TcpListener::bind(loopback()).unwrap();
        let addr = plain.local_addr().unwrap();
        assert!(matches!(
            bind_group(addr, 1, BindMode::Takeover),
            Err(BindError::InUse { .. })
        ));
    }
}
