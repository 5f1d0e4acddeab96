//! Test harness: builders for upstreams, proxies and clients on ephemeral loopback ports.
//!
//! Every end-to-end test starts what it needs itself — a scriptable upstream
//! ([`upstream::Upstream`] for HTTP/1.1, [`h2upstream::H2Upstream`] for HTTP/2), a real proxy in this process ([`proxy::TestProxy`], the same
//! `ringmesh_proxy::start` the binary runs) and a raw HTTP/1.1 client ([`client::Client`]) or
//! an HTTP/2 one ([`h2client::H2Client`], the `h2` crate on tokio) —
//! on 127.0.0.1 with ports chosen by the kernel, so tests run in parallel and need nothing else.
//! [`both_io!`] runs a test body once on io_uring and once on the epoll fallback.

pub mod client;
pub mod control;
pub mod h2client;
pub mod h2raw;
pub mod h2upstream;
pub mod observe;
pub mod otlp;
pub mod pki;
pub mod procs;
pub mod proxy;
pub mod upstream;

pub use ringmesh_api::snapshot::IoMode;

/// Generates `io_uring` and `epoll` tests that call `$body(IoMode)`.
#[macro_export]
macro_rules! both_io {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn io_uring() {
                    super::$name($crate::IoMode::IoUring)
                }
                #[test]
                fn epoll() {
                    super::$name($crate::IoMode::Epoll)
                }
            }
        )*
    };
}
