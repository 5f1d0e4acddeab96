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

pub use cli::{echo_main, loadgen_main, parse_cpus, parse_duration, EchoArgs, LoadArgs};
pub use echo::{spawn_echo, EchoConfig, EchoHandle, EchoMode};
pub use load::{run_load, run_load_with, ErrorCounts, ErrorKind, LoadConfig, Protocol};
pub use progress::RunControl;
pub use report::{hgrm_bracket, parse_hgrm, HgrmRow, LatencySummary, LoadMode, LoadReport};
pub use sys::{io_driver_name, pin_current_thread, raise_nofile_limit};
pub use target::{Target, TargetError};
