//! Per-core keep-alive pool of upstream connections, keyed by endpoint address.
//!
//! Last-in first-out, so the warmest connection is reused and surplus ones age out. Before a
//! pooled connection is reused it is probed with a non-blocking `MSG_PEEK`: an upstream that
//! closed an idle connection is noticed here rather than by failing a request on it. The
//! `RefCell` is only borrowed synchronously, never across an `.await`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use monoio::io::Splitable;
use monoio::net::tcp::{TcpOwnedReadHalf, TcpOwnedWriteHalf};
use monoio::net::TcpStream;

use ringmesh_api::snapshot::TcpKeepalive;

use crate::error::{ErrorKind, ProxyError, Side};

/// Pooled connections idle at least this long are probed before reuse.
const PROBE_AFTER: Duration = Duration::from_millis(500);

/// An upstream connection and its history.
///
/// Split into halves once, when connected, so that a response can be read while the request
/// body is still being written (an upstream may answer early, e.g. 413 to an upload).
#[derive(Debug)]
pub struct UpstreamConn {
    /// Read half of the socket.
    pub read: TcpOwnedReadHalf,
    /// Write half of the socket.
    pub write: TcpOwnedWriteHalf,
    /// The socket's descriptor, for the liveness probe.
    fd: RawFd,
    /// Endpoint it is connected to.
    pub addr: SocketAddr,
    /// Requests it has carried.
    pub requests: u32,
    /// Whether it came from the pool (a failure on it before any response byte is retried
    /// transparently: the upstream may have closed it while idle).
    pub reused: bool,
    /// Read buffer kept with the connection, so a pooled connection reads its next response
    /// without a new allocation.
    pub buf: bytes::BytesMut,
    /// Its place under the cluster's `maxConnections` (a limited cluster only): released when
    /// the connection closes.
    pub slot: Option<super::breaker::ConnSlot>,
}

#[derive(Debug)]
struct Idle {
    conn: UpstreamConn,
    since: Instant,
}

/// One worker's pool.
#[derive(Debug, Default)]
pub struct UpstreamPool {
    idle: RefCell<HashMap<SocketAddr, Vec<Idle>>>,
}

impl UpstreamConn {
    /// The socket's descriptor (for direct sends).
    pub fn fd(&self) -> RawFd {
        self.fd
    }
}

impl UpstreamPool {
    /// A live idle connection to `addr`, if one is pooled and younger than `idle_timeout`.
    pub fn checkout(&self, addr: SocketAddr, idle_timeout: Duration) -> Option<UpstreamConn> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        while let Some(entry) = list.pop() {
            let idle_for = entry.since.elapsed();
            // Only a connection idle for a while is probed: servers close idle connections after
            // seconds, not milliseconds, and the probe is a syscall on the request path. A fresh
            // one that died anyway is caught by the transparent retry in `forward`.
            if idle_for >= idle_timeout || (idle_for >= PROBE_AFTER && !is_open(entry.conn.fd)) {
                continue; // dropped: closes the socket
            }
            let mut conn = entry.conn;
            conn.reused = true;
            return Some(conn);
        }
        None
    }

    /// Returns a connection after a complete exchange, unless the pool for it is full (or its
    /// cluster's connection limit is shared by the workers: see `breaker`). A request of the
    /// cluster waiting for a connection on this core is woken.
    pub fn checkin(&self, conn: UpstreamConn, max_idle: usize) {
        if max_idle == 0 || conn.slot.as_ref().is_some_and(|s| !s.poolable()) {
            return;
        }
        if let Some(slot) = &conn.slot {
            slot.notify();
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(conn.addr).or_default();
        if list.len() >= max_idle {
            // Drop the oldest: the newest is the one most likely to be kept open by the peer.
            list.remove(0);
        }
        list.push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// Closes the oldest idle connection counted against `cluster`'s limit, to make room for
    /// one to another endpoint; whether there was one.
    pub(crate) fn evict_one_of(&self, cluster: &crate::lb::ClusterCounters) -> bool {
        let evicted = {
            let mut idle = self.idle.borrow_mut();
            idle.values_mut().find_map(|list| {
                let i = list
                    .iter()
                    .position(|e| e.conn.slot.as_ref().is_some_and(|s| s.of(cluster)))?;
                Some(list.remove(i))
            })
        };
        // Dropped outside the borrow: its slot's release wakes a waiter.
        evicted.is_some()
    }

    /// Idle connections per endpoint (for `/clusters`).
    pub fn idle_counts(&self) -> HashMap<SocketAddr, usize> {
        self.idle.borrow().iter().map(|(a, l)| (*a, l.len())).collect()
    }

    /// Closes idle connections older than `max_age` (called periodically by the worker).
    pub fn evict_older_than(&self, max_age: Duration) {
        let mut idle = self.idle.borrow_mut();
        for list in idle.values_mut() {
            list.retain(|e| e.since.elapsed() < max_age);
        }
        idle.retain(|_, l| !l.is_empty());
    }
}

/// Whether a pooled socket is still open: a non-blocking peek sees EOF (0) or an error when the
/// peer closed or reset it, `EAGAIN` when it is open and quiet. Unexpected bytes (an upstream
/// that talks out of turn) also disqualify it.
fn is_open(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: `fd` is a valid socket owned by the pooled connection for the duration of the call, and the
    // buffer is one valid byte.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let err = std::io::Error::last_os_error();
        return err.kind() == std::io::ErrorKind::WouldBlock;
    }
    false
}

/// Connects to `addr` within `timeout`, with `TCP_NODELAY` set (we write whole heads and
/// chunks; Nagle would only add latency) and the cluster's keep-alive. `slot` is the
/// connection's place under its cluster's `maxConnections`, held for its life.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    keepalive: Option<&TcpKeepalive>,
    slot: Option<super::breaker::ConnSlot>,
) -> Result<UpstreamConn, ProxyError> {
    match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            let fd = stream.as_raw_fd();
            set_keepalive(fd, keepalive);
            let (read, write) = stream.into_split();
            Ok(UpstreamConn {
                read,
                write,
                fd,
                addr,
                requests: 0,
                reused: false,
                buf: bytes::BytesMut::new(),
                slot,
            })
        }
        Ok(Err(_)) => Err(ProxyError::new(
            ErrorKind::ConnectFailed,
            Side::Upstream,
            "upstream connect failed",
        )),
        Err(_) => Err(ProxyError::new(
            ErrorKind::ConnectTimeout,
            Side::Upstream,
            "upstream connect timed out",
        )),
    }
}

/// Istio's `tcpKeepalive` on an upstream socket: `SO_KEEPALIVE`, and `TCP_KEEPCNT`,
/// `TCP_KEEPIDLE`, `TCP_KEEPINTVL` where set (the kernel's defaults otherwise: 9 probes, 7200 s,
/// 75 s). A failure is logged at debug and ignored: the connection works without probes.
pub(crate) fn set_keepalive(fd: RawFd, keepalive: Option<&TcpKeepalive>) {
    let Some(k) = keepalive else {
        return;
    };
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs().clamp(1, i32::MAX as u64) as i32);
    for (level, name, value) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, Some(1)),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, k.probes.map(|p| p as i32)),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs(k.time)),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, secs(k.interval)),
    ] {
        let Some(value) = value else {
            continue;
        };
        // SAFETY: `fd` is a socket owned by the caller for the duration of the call; the value
        // is a valid `c_int` whose size is passed.
        let r = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if r != 0 {
            tracing::debug!(
                "setting TCP keep-alive option {name}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(fd: RawFd, level: i32, name: i32) -> i32 {
        let mut v: i32 = -1;
        let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
        // SAFETY: a valid socket and an `i32` with its size.
        let r = unsafe { libc::getsockopt(fd, level, name, (&mut v as *mut i32).cast(), &mut len) };
        assert_eq!(r, 0);
        v
    }

    #[test]
    fn keepalive_settings_reach_the_socket() {
        let s = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let fd = s.as_raw_fd();
        assert_eq!(get(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 0);
        set_keepalive(
            fd,
            Some(&TcpKeepalive {
                probes: Some(3),
                time: Some(Duration::from_secs(10)),
                interval: Some(Duration::from_secs(2)),
            }),
        );
        assert_ne!(get(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 0);
        assert_eq!(get(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT), 3);
        assert_eq!(get(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 10);
        assert_eq!(get(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL), 2);
    }
}
