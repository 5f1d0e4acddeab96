//! ringmesh-loadgen: a load generator that tells the truth, and the upstream it loads.
//!
//! * [`run_load`] drives HTTP/1.1 keep-alive connections from thread-per-core monoio workers.
//!   By default it runs **open loop** at a fixed rate and measures each request from the time
//!   it was *due* (coordinated-omission corrected, as wrk2 does), so a server that stalls is
//!   charged for every request that had to wait, not just the one that was in flight.
//!   Closed loop (`rate = 0`) measures throughput. Results merge per-thread HDR histograms
//!   into a [`LoadReport`] (summary, JSON, `.hgrm`).
//! * [`spawn_echo`] starts `ringmesh-echo`, the upstream test server behind every proxy test
//!   and benchmark, on background threads of the calling process.
//!
//! Both binaries (`ringmesh-loadgen`, `ringmesh-echo`) are thin wrappers over [`loadgen_main`]
//! and [`echo_main`], which the benchmark also calls when it re-executes itself in a role.
//!
//! # Protocols
//!
//! | `ringmesh-loadgen` | URL | on each connection |
//! |---|---|---|
//! | `--protocol http1` (default) | `http://` | HTTP/1.1 keep-alive, one request in flight |
//! | `--protocol h2` | `http://` (h2c prior knowledge) or `https://` (ALPN `h2`) | `--streams N` lanes, each with its own open-loop schedule |
//! | `--protocol grpc` | same | unary `ringmesh.echo.Echo/Unary` calls (URL path `/` picks it), `--body-size` bytes of payload |
//! | `--protocol grpc-stream` | same | one long-lived `ringmesh.echo.Echo/Stream` call per lane, one message per request |
//! | `--protocol tcp` | `tcp://host:port` | raw bytes: `--body-size` written, the same read back and compared |
//!
//! `--url URL` (repeatable) adds targets; connections are spread over them round-robin (so a
//! canary split can be driven). `https://` takes `--cacert FILE`, `--cert FILE --key FILE`
//! (mTLS) or `--insecure`; there is no system trust store. Errors are counted by kind, never
//! as latency: besides connect/reset/timeout/malformed/4xx/5xx, `grpc_status` (a non-OK
//! `grpc-status`), `stream_reset` (HTTP/2 `RST_STREAM`) and `tls` (handshake failures, no
//! `h2` in ALPN).
//!
//! `ringmesh-echo` serves HTTP/1.1, h2c (detected by the connection preface on the same port)
//! and gRPC on one port; with `--tls` (`--cert/--key`, or a self-signed certificate generated
//! at start; `--client-ca` requires client certificates) it serves TLS with ALPN `h2` and
//! `http/1.1`. Its knobs (body size, delay, error fraction, instance header) apply to every
//! protocol; the gRPC error fraction answers `grpc-status: 14` (UNAVAILABLE). HTTP/2 is `h2`
//! over `monoio-compat`'s stream wrapper and TLS is rustls (`ring` provider) through
//! tokio-rustls on that same wrapper, so no tokio runtime and no C/cmake toolchain is needed.

pub mod echo;
mod echo_h2;
pub mod grpc;
pub mod hlog;
pub mod http1;
pub mod load;
pub mod progress;
pub mod report;
pub mod target;
pub mod tls;

mod cli;
mod sys;

pub use cli::{
    echo_main, loadgen_main, parse_cpus, parse_duration, CpuList, EchoArgs, LoadArgs, EXIT_ERROR, EXIT_INTERRUPTED,
    EXIT_UNHEALTHY,
};
pub use echo::{spawn_echo, EchoConfig, EchoHandle, EchoMode};
pub use load::{run_load, run_load_with, ErrorCounts, ErrorKind, LoadConfig, Protocol};
pub use progress::RunControl;
pub use report::{hgrm_bracket, parse_hgrm, HgrmRow, LatencySummary, LoadMode, LoadReport, RunProblem};
pub use sys::{io_driver_name, pin_current_thread, raise_nofile_limit};
pub use target::{Target, TargetError};
