//! ringmesh-proxy: the sidecar data plane.
//!
//! One monoio worker per core accepts on its own `SO_REUSEPORT` socket, parses HTTP/1.1 heads
//! straight out of its read buffer, routes on an immutable snapshot, picks an endpoint with
//! per-core load-balancer state and forwards over a per-core connection pool. A tokio control
//! thread owns config loading, hot reload and the admin, health and metrics servers.
//!
//! [`start`] runs a proxy inside this process (tests, the benchmark); [`run_cli`] is the
//! `ringmesh-proxy` binary's whole `main`.

pub mod admin;
pub(crate) mod authz;
pub(crate) mod capture;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod detect;
pub mod drain;
pub mod error;
pub mod http;
pub mod identity;
pub mod lb;
pub mod listener;
pub mod probe;
pub mod rng;
pub mod runtime;
pub mod state;
pub mod tcp;
pub mod telemetry;
pub(crate) mod tls;
pub mod worker;
pub mod xds;

pub use cli::run_cli;
pub use control::{start, ProxyHandle, ProxyOptions};

/// The size of what `f` would return, without calling it: tests that hold a task's future
/// small (every spawned task is moved whole, and an idle connection keeps all of it).
#[cfg(test)]
pub(crate) fn size_of_return<R>(_f: impl FnOnce() -> R) -> usize {
    std::mem::size_of::<R>()
}
