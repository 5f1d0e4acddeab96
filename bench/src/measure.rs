//! The measurements taken in each scenario, and how.
//!
//! * **Latency**: an open-loop run at a fixed, moderate rate (coordinated-omission corrected;
//!   see `ringmesh_loadgen`), one `.hgrm` file per scenario and repeat. The proxy process
//!   tree's CPU time (`/proc/PID/stat` utime + stime) is read before and after, and divided
//!   by the requests sent (warmup included, since the CPU time covers it too) to give CPU
//!   seconds per 1,000 requests — the same number as cores per 1,000 rps. The echo's CPU is
//!   read the same way, beside it.
//! * **Throughput**: a closed-loop run, as many requests as come back; the proxy's CPU over it
//!   gives the cores it kept busy and its CPU per request under saturation.
//! * **Memory**: VmRSS of the proxy tree when idle, and its growth while holding many idle
//!   keep-alive connections (each has carried one request, so per-connection buffers a proxy
//!   keeps after a request are counted, as they would be for a real idle client).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ringmesh_loadgen::{run_load_with, LatencySummary, LoadConfig, LoadReport, RunControl, Target};
use serde::Serialize;

use crate::own_view::{self, OwnRun};
use crate::procs::Proc;
use crate::protocol::{h2_connections, Protocol};
use crate::topology::{Topology, HOST};

/// Load shapes, from the command line.
#[derive(Debug, Clone)]
pub struct LoadShape {
    /// Open-loop rate (rps).
    pub rate: f64,
    /// Open-loop connections.
    pub latency_connections: usize,
    /// Open-loop window.
    pub duration: Duration,
    /// Open-loop warmup.
    pub warmup: Duration,
    /// Closed-loop connections.
    pub throughput_connections: usize,
    /// Closed-loop window.
    pub throughput_duration: Duration,
    /// Closed-loop warmup.
    pub throughput_warmup: Duration,
    /// Load generator threads.
    pub threads: usize,
    /// CPUs for the load generator threads (empty: unpinned).
    pub cpus: Vec<usize>,
    /// Response body size of the echo upstream (for the record).
    pub body_size: usize,
    /// HTTP/2 and gRPC rows: streams per connection. They keep the HTTP/1.1 rows' requests
    /// in flight (`connections`) on `connections / h2_streams` connections.
    pub h2_streams: usize,
    /// Whether each measurement runs the closed loop after the open loop (the main rounds), or
    /// the open loop alone (the `--mesh-rate` pass, which is about latency at another rate).
    pub closed_loop: bool,
    /// Put after the row's name in its `.hgrm` files, so that a second pass over the same rows
    /// does not overwrite the first one's (`""` for the main rounds, `-1000rps`).
    pub file_tag: String,
}

/// One repeat of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// Repeat number (0-based).
    pub repeat: usize,
    /// Closed-loop throughput, rps; none when the pass ran the open loop alone.
    pub throughput_rps: Option<f64>,
    /// Closed-loop failures.
    pub throughput_errors: u64,
    /// Open-loop latency, µs.
    pub latency_us: LatencySummary,
    /// Open-loop achieved rate, rps.
    pub latency_rate_rps: f64,
    /// Whether the open-loop run achieved ≥ 99% of its target.
    pub latency_rate_met: bool,
    /// Open-loop failures.
    pub latency_errors: u64,
    /// Open-loop unsent requests.
    pub latency_unsent: u64,
    /// Open-loop requests sent, warm-up included (what the proxy's own view counts too).
    pub latency_sent: u64,
    /// Proxy CPU seconds per 1,000 requests (= cores per 1,000 rps); none for `direct`.
    pub cpu_per_1k: Option<f64>,
    /// The echo upstream's CPU seconds per 1,000 open-loop requests. In `direct` this is what
    /// the simplest server spends to take a request and send a response at this rate: the
    /// price of one hop, against which a proxy's two are read.
    pub upstream_cpu_per_1k: Option<f64>,
    /// Proxy CPU during the closed-loop run over its wall time: cores kept busy. Near the
    /// proxy's worker count, the proxy was the bottleneck and throughput is 1 / its CPU per
    /// request; well under it, something else (load generator, echo, the machine) was.
    pub throughput_proxy_cores: Option<f64>,
    /// Proxy CPU per request in the closed-loop run, µs.
    pub throughput_cpu_us: Option<f64>,
    /// The `.hgrm` written for the open-loop run (file name in the output directory).
    pub hgrm: String,
    /// Each ringmesh-proxy's own view of the open-loop run, from its admin port (client side
    /// first; none for rows of other proxies).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub own_view: Vec<OwnRun>,
    /// The open-loop latency histogram (µs), for the percentile plot.
    #[serde(skip)]
    pub histogram: Option<hdrhistogram::Histogram<u64>>,
}

/// The load against `entry` in `protocol`, with `in_flight` requests in flight: that many
/// HTTP/1.1 connections, or `streams` streams on each of as few HTTP/2 connections as hold them.
fn load_config(entry: SocketAddr, protocol: Protocol, in_flight: usize, streams: usize) -> anyhow::Result<LoadConfig> {
    // The load generator refuses a non-loopback target unless told it is meant: the one the
    // suite means is `captured`'s virtual IP, which exists only inside that row's namespace.
    let target = Target::parse(&format!("http://{entry}/"), entry == crate::captured::VIRTUAL_IP)?;
    let mut c = LoadConfig::for_target(target);
    // `Host` becomes `:authority` on HTTP/2.
    c.headers.push(("Host".into(), HOST.into()));
    c.timeout = Duration::from_secs(5);
    c.protocol = protocol.loadgen();
    if protocol.is_h2() {
        c.streams = streams;
        c.connections = h2_connections(in_flight, streams);
    } else {
        c.connections = in_flight;
    }
    Ok(c)
}

fn shaped_config(topo: &Topology, shape: &LoadShape, in_flight: usize) -> anyhow::Result<LoadConfig> {
    let mut c = load_config(topo.entry, topo.protocol, in_flight, shape.h2_streams)?;
    c.threads = shape.threads;
    c.cpus = shape.cpus.clone();
    Ok(c)
}

/// One readiness probe of an HTTP/2 or gRPC entry: a closed-loop run of 100 ms on one stream
/// (the load generator's own client, so it checks what the measurement needs); true when at
/// least one request succeeded. Callers retry it until their deadline: on a loaded machine
/// the run's thread may start after its window closed.
pub(crate) fn probe(entry: SocketAddr, protocol: Protocol) -> bool {
    let Ok(mut c) = load_config(entry, protocol, 1, 1) else {
        return false;
    };
    c.rate = 0.0;
    c.duration = Duration::from_millis(100);
    c.warmup = Duration::ZERO;
    c.timeout = Duration::from_secs(1);
    c.connect_timeout = Duration::from_millis(500);
    matches!(run_load_with(c, Arc::new(RunControl::new())), Ok(r) if r.ok > 0)
}

/// Runs one latency and (when `shape.closed_loop`) one throughput measurement against `topo`;
/// `watch` is handed each run's live counters (for the progress bar) and `None` when the runs
/// are over. `upstream` is the shared echo, whose CPU is read unless the row has its own. The
/// load runs where the row is reached from ([`Topology::reach`]).
pub fn run_once(
    topo: &Topology,
    upstream: &Proc,
    shape: &LoadShape,
    repeat: usize,
    out_dir: &Path,
    watch: &dyn Fn(Option<Arc<RunControl>>),
) -> anyhow::Result<RunResult> {
    let mut c = shaped_config(topo, shape, shape.latency_connections)?;
    c.rate = shape.rate;
    c.duration = shape.duration;
    c.warmup = shape.warmup;
    let upstream = topo.upstream(upstream);
    // The proxy's own view covers the same run; cleared and read outside the CPU window.
    own_view::reset(topo).context("clearing the proxy's own-latency histograms")?;
    let cpu_before = topo.proxy_cpu_time()?;
    let upstream_before = upstream.cpu_time()?;
    let control = Arc::new(RunControl::new());
    watch(Some(control.clone()));
    let lat = topo
        .reach(|| run_load_with(c, control))
        .and_then(|r| r)
        .with_context(|| format!("{} latency run", topo.row_name()));
    watch(None);
    let lat = lat?;
    require_success(&lat, "latency")?;
    let cpu_after = topo.proxy_cpu_time()?;
    let upstream_cpu = upstream.cpu_time()?.saturating_sub(upstream_before);
    anyhow::ensure!(!lat.interrupted, "interrupted");
    let own_view =
        own_view::read(topo, out_dir, &shape.file_tag, repeat).context("reading the proxy's own-latency histograms")?;
    let per_1k = |cpu: Duration| (lat.sent_total > 0).then(|| cpu.as_secs_f64() / lat.sent_total as f64 * 1000.0);
    let cpu_per_1k = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) => per_1k(a.saturating_sub(b)),
        _ => None,
    };
    let hgrm = format!("{}{}-r{}.hgrm", topo.row_name(), shape.file_tag, repeat + 1);
    write_hgrm(&lat, &out_dir.join(&hgrm))?;
    let mut result = RunResult {
        repeat,
        throughput_rps: None,
        throughput_errors: 0,
        latency_us: lat.latency_us,
        latency_rate_rps: lat.rate_rps,
        latency_rate_met: lat.met_target(),
        latency_errors: lat.errors,
        latency_unsent: lat.unsent,
        latency_sent: lat.sent_total,
        cpu_per_1k,
        upstream_cpu_per_1k: per_1k(upstream_cpu),
        throughput_proxy_cores: None,
        throughput_cpu_us: None,
        hgrm,
        own_view,
        histogram: Some(lat.histogram),
    };
    if !shape.closed_loop {
        return Ok(result);
    }

    // A short pause so the closed-loop run does not start on the open-loop run's tail.
    std::thread::sleep(Duration::from_millis(100));
    let mut c = shaped_config(topo, shape, shape.throughput_connections)?;
    c.rate = 0.0;
    c.duration = shape.throughput_duration;
    c.warmup = shape.throughput_warmup;
    let control = Arc::new(RunControl::new());
    let cpu_before = topo.proxy_cpu_time()?;
    let started = Instant::now();
    watch(Some(control.clone()));
    let thr = topo
        .reach(|| run_load_with(c, control))
        .and_then(|r| r)
        .with_context(|| format!("{} throughput run", topo.row_name()));
    watch(None);
    let thr = thr?;
    require_success(&thr, "throughput")?;
    let wall = started.elapsed();
    let cpu_after = topo.proxy_cpu_time()?;
    anyhow::ensure!(!thr.interrupted, "interrupted");
    // Warm-up included on both sides: the CPU counters cannot tell it apart.
    let thr_cpu = cpu_before
        .zip(cpu_after)
        .map(|(b, a)| a.saturating_sub(b).as_secs_f64());

    // Successful responses only: a proxy answering 503 at once must not out-run one that serves.
    result.throughput_rps = Some(thr.ok_rate_rps);
    result.throughput_errors = thr.errors;
    result.throughput_proxy_cores = thr_cpu.map(|c| c / wall.as_secs_f64());
    result.throughput_cpu_us = thr_cpu
        .filter(|_| thr.sent_total > 0)
        .map(|c| c / thr.sent_total as f64 * 1e6);
    Ok(result)
}

/// Fails a measurement in which no request succeeded: its latency and throughput would describe
/// error replies, and the scenario must show as failed, never as a healthy row with an error
/// count beside it. Partial failures are kept and reported in the `errors` column.
fn require_success(report: &LoadReport, run: &str) -> anyhow::Result<()> {
    if report.ok > 0 {
        return Ok(());
    }
    let e = &report.errors_by_kind;
    anyhow::bail!(
        "no request of the {run} run succeeded ({} of {} failed: connect {}, reset {}, unanswered {}, timeout {}, malformed {}, 4xx {}, 5xx {})",
        report.errors,
        report.requests,
        e.connect,
        e.reset,
        e.unanswered,
        e.timeout,
        e.malformed,
        e.status_4xx,
        e.status_5xx
    )
}

fn write_hgrm(report: &LoadReport, path: &Path) -> anyhow::Result<()> {
    let mut f =
        std::io::BufWriter::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?);
    report.write_hgrm(&mut f)?;
    f.flush()?;
    Ok(())
}

/// Result of the idle-connection memory test.
#[derive(Debug, Clone, Serialize)]
pub struct IdleResult {
    /// Connections asked for.
    pub requested: usize,
    /// Connections open (each after one successful request) when RSS was read.
    pub held: usize,
    /// Connections that failed to open or answer.
    pub failed: usize,
    /// Proxy RSS before, KiB.
    pub rss_before_kib: u64,
    /// Proxy RSS while holding them, KiB.
    pub rss_after_kib: u64,
    /// (after − before) / held, bytes.
    pub bytes_per_connection: Option<f64>,
    /// Seconds spent opening them.
    pub open_seconds: f64,
}

/// Opens `n` keep-alive connections to the proxy (each carries one request, then stays idle),
/// reads the proxy's RSS growth, and closes them. Bounded by `budget`; if the budget or the
/// proxy's limits stop it early, the figure is computed over the connections actually held.
pub fn idle_connections(topo: &Topology, n: usize, budget: Duration) -> anyhow::Result<IdleResult> {
    anyhow::ensure!(topo.has_proxy(), "idle-connection test needs a proxy");
    // Its connections speak HTTP/1.1; an HTTP/2 row's entry may not (haproxy's `proto h2`).
    anyhow::ensure!(
        topo.protocol == Protocol::Http1,
        "idle-connection test is for HTTP/1.1 rows"
    );
    std::thread::sleep(Duration::from_millis(200));
    let rss_before = topo.proxy_rss_kib()?;
    let started = Instant::now();
    let deadline = started + budget;
    let mut held = Vec::with_capacity(n);
    let mut failed = 0usize;
    let request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: ringmesh-bench\r\n\r\n");
    let mut consecutive_failures = 0;
    while held.len() < n
        && Instant::now() < deadline
        && consecutive_failures < 5
        && !ringmesh_loadgen::progress::interrupted()
    {
        match one_request_conn(topo.entry, request.as_bytes()) {
            Ok(s) => {
                held.push(s);
                consecutive_failures = 0;
            }
            Err(_) => {
                failed += 1;
                consecutive_failures += 1;
            }
        }
    }
    let open_seconds = started.elapsed().as_secs_f64();
    // Let the proxy finish any bookkeeping triggered by the last requests.
    std::thread::sleep(Duration::from_millis(300));
    let rss_after = topo.proxy_rss_kib()?;
    let count = held.len();
    for s in held {
        // Reset instead of FIN so thousands of loopback sockets do not linger in TIME_WAIT.
        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    }
    Ok(IdleResult {
        requested: n,
        held: count,
        failed,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        bytes_per_connection: (count > 0).then(|| (rss_after as f64 - rss_before as f64) * 1024.0 / count as f64),
        open_seconds,
    })
}

fn one_request_conn(addr: SocketAddr, request: &[u8]) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.set_nodelay(true)?;
    s.write_all(request)?;
    let mut buf = Vec::with_capacity(512);
    let mut tmp = [0u8; 2048];
    loop {
        let n = s.read(&mut tmp)?;
        anyhow::ensure!(n > 0, "closed before the response");
        buf.extend_from_slice(&tmp[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            anyhow::ensure!(head.starts_with("http/1.1 200"), "status: {head:?}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .context("response without content-length")?;
            while buf.len() < end + 4 + len {
                let n = s.read(&mut tmp)?;
                anyhow::ensure!(n > 0, "closed mid-body");
                buf.extend_from_slice(&tmp[..n]);
            }
            return Ok(s);
        }
        anyhow::ensure!(buf.len() < 64 * 1024, "response head too large");
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringmesh_loadgen::{run_load, spawn_echo, EchoConfig};

    #[test]
    fn a_run_whose_requests_all_fail_fails_the_measurement() {
        let echo = spawn_echo(EchoConfig {
            error_rate: 1.0,
            ..EchoConfig::default()
        })
        .unwrap();
        let mut c = LoadConfig::new(&format!("http://{}/", echo.local_addr())).unwrap();
        c.rate = 200.0;
        c.connections = 2;
        c.duration = Duration::from_millis(200);
        c.warmup = Duration::from_millis(50);
        let r = run_load(c).unwrap();
        assert!(r.requests > 0 && r.ok == 0, "{}", r.summary());
        let e = require_success(&r, "latency").unwrap_err().to_string();
        assert!(
            e.contains("no request of the latency run succeeded") && e.contains("5xx"),
            "{e}"
        );
    }
}
