//! The load generator: configuration, threads, and the merge into one [`LoadReport`].
//!
//! Thread-per-core like the proxy it measures: each thread runs its own monoio runtime with a
//! share of the connections (connection `i` lives on thread `i % threads`) and its own HDR
//! histogram; nothing is shared between threads until the run ends and the per-thread
//! results are merged. Every loop is bounded: the schedule stops at the end of the
//! measurement window and each exchange has a timeout, so a run always ends within
//! `warmup + duration + timeout` plus connection setup.
//!
//! HTTP/1.1 runs in `conn.rs` (one request in flight per connection); HTTP/2, gRPC and TCP
//! echo run in `lanes.rs` (`streams` concurrent lanes per HTTP/2 connection, each with its own
//! open-loop schedule). Several URLs are spread over the connections round-robin.

mod conn;
mod lanes;
mod stats;

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;

use self::conn::{Plan, ThreadShared};
pub use self::lanes::Protocol;
#[cfg(test)]
pub(crate) use self::stats::new_histogram;
use self::stats::ThreadStats;
pub use self::stats::{ErrorCounts, ErrorKind};
use crate::progress::RunControl;
use crate::report::{LatencySummary, LoadMode, LoadReport};
use crate::sys;
use crate::target::{Scheme, Target, TargetError};
use crate::tls::ClientTlsOptions;

/// One load run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Where to connect, the default `Host` and the request path.
    pub target: Target,
    /// Request method.
    pub method: String,
    /// Extra request headers; a `Host` here replaces the URL's authority.
    pub headers: Vec<(String, String)>,
    /// Request body size in bytes (sent with `content-length`); 0 sends no body.
    pub body_size: usize,
    /// Target rate in requests per second over all connections; 0 means closed loop.
    pub rate: f64,
    /// Keep-alive connections, each with at most one request in flight.
    pub connections: usize,
    /// Worker threads (each its own monoio runtime).
    pub threads: usize,
    /// Length of the measurement window.
    pub duration: Duration,
    /// Load applied before the window opens and not recorded (warms caches, pools, JITs).
    pub warmup: Duration,
    /// Per-request timeout; a request still unanswered after it counts as `timeout`.
    pub timeout: Duration,
    /// Per-connect timeout.
    pub connect_timeout: Duration,
    /// Pin thread `i` to `cpus[i % cpus.len()]` when non-empty.
    pub cpus: Vec<usize>,
    /// Also record one histogram per interval of this length (for `--hlog`); `None` skips.
    pub hlog_interval: Option<Duration>,
    /// More URLs (same scheme as `target`); connection `i` uses URL `i % (1 + len)`, so
    /// requests spread round-robin, e.g. over the two sides of a canary split.
    pub extra_targets: Vec<Target>,
    /// What runs on each connection.
    pub protocol: Protocol,
    /// HTTP/2 and gRPC: concurrent streams (lanes, each with its own schedule) per connection.
    pub streams: usize,
    /// TLS client settings for `https://` targets.
    pub tls: ClientTlsOptions,
    /// Largest fraction (0–1) of failed requests a healthy run may have; default 0, so that a
    /// run whose requests fail never passes for a healthy one (see [`LoadReport::problems`]).
    pub max_error_rate: f64,
}

impl LoadConfig {
    /// A config for `url` (loopback only) with defaults: open loop at 1,000 rps over 16
    /// connections on one thread, 10 s after 1 s of warmup, `GET`, 10 s request timeout.
    pub fn new(url: &str) -> Result<Self, TargetError> {
        Ok(Self::for_target(Target::parse(url, false)?))
    }

    /// The same defaults for an already parsed target.
    pub fn for_target(target: Target) -> Self {
        let target_scheme = target.scheme;
        Self {
            target,
            method: "GET".to_owned(),
            headers: Vec::new(),
            body_size: 0,
            rate: 1000.0,
            connections: 16,
            threads: 1,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            cpus: Vec::new(),
            hlog_interval: None,
            extra_targets: Vec::new(),
            protocol: if target_scheme == Scheme::Tcp {
                Protocol::Tcp
            } else {
                Protocol::Http1
            },
            streams: 1,
            tls: ClientTlsOptions::default(),
            max_error_rate: 0.0,
        }
    }

    /// True when the run is closed loop (throughput) rather than open loop (latency).
    pub fn closed_loop(&self) -> bool {
        self.rate <= 0.0
    }

    /// Checks every field and reports all problems at once.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        if self.connections == 0 || self.connections > 100_000 {
            problems.push(format!("connections must be 1..=100000, got {}", self.connections));
        }
        if self.threads == 0 || self.threads > 1024 {
            problems.push(format!("threads must be 1..=1024, got {}", self.threads));
        }
        if !self.rate.is_finite() || self.rate < 0.0 || self.rate > 10_000_000.0 {
            problems.push(format!("rate must be 0..=10000000, got {}", self.rate));
        }
        if self.duration.is_zero() || self.duration > Duration::from_secs(24 * 3600) {
            problems.push(format!("duration must be in (0, 24h], got {:?}", self.duration));
        }
        if !(0.0..=1.0).contains(&self.max_error_rate) {
            problems.push(format!("max-error-rate must be in [0, 1], got {}", self.max_error_rate));
        }
        if self.warmup > Duration::from_secs(3600) {
            problems.push(format!("warmup must be at most 1h, got {:?}", self.warmup));
        }
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            problems.push("timeouts must be positive".to_owned());
        }
        if let Some(i) = self.hlog_interval {
            if i < crate::hlog::MIN_INTERVAL
                || self.duration.as_nanos() / i.as_nanos() >= u128::from(crate::hlog::MAX_INTERVALS)
            {
                problems.push(format!(
                    "hlog interval must be at least {:?} and give at most {} intervals, got {i:?}",
                    crate::hlog::MIN_INTERVAL,
                    crate::hlog::MAX_INTERVALS
                ));
            }
        }
        problems.extend(self.protocol_problems());
        if self.body_size > 64 << 20 {
            problems.push(format!("body-size must be at most 64 MiB, got {}", self.body_size));
        }
        if self.method.is_empty() || !self.method.bytes().all(is_tchar) {
            problems.push(format!("method {:?} is not an HTTP token", self.method));
        }
        for (name, value) in &self.headers {
            if name.is_empty() || !name.bytes().all(is_tchar) {
                problems.push(format!("header name {name:?} is not an HTTP token"));
            }
            if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                problems.push(format!("header {name:?} has control characters in its value"));
            }
            if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding") {
                problems.push(format!("header {name:?} is set by the generator (use --body-size)"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("invalid load config: {}", problems.join("; "))
        }
    }

    /// Every URL: `target` first, then `extra_targets`.
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        std::iter::once(&self.target).chain(&self.extra_targets)
    }

    /// Scheme/protocol combinations that cannot work, and HTTP/2's stricter header rules.
    fn protocol_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let scheme = self.target.scheme;
        if self.targets().any(|t| t.scheme != scheme) {
            problems.push("all URLs must have the same scheme".to_owned());
        }
        let fits = match scheme {
            Scheme::Tcp => self.protocol == Protocol::Tcp,
            Scheme::Http => self.protocol != Protocol::Tcp,
            // HTTP/1.1 over TLS would measure a second TLS client, not ours; h2 needs ALPN.
            Scheme::Https => self.protocol.is_h2(),
        };
        if !fits {
            problems.push(match scheme {
                Scheme::Https => "https:// URLs need --protocol h2, grpc or grpc-stream".to_owned(),
                _ => "tcp:// URLs and --protocol tcp go together".to_owned(),
            });
        }
        if self.streams == 0 || self.streams > 10_000 {
            problems.push(format!("streams must be 1..=10000, got {}", self.streams));
        }
        if self.protocol == Protocol::Tcp && self.body_size == 0 {
            problems.push("--protocol tcp needs --body-size > 0 (the bytes echoed)".to_owned());
        }
        if self.protocol.is_h2() {
            for (name, _) in &self.headers {
                let n = name.to_ascii_lowercase();
                if [
                    "connection",
                    "keep-alive",
                    "proxy-connection",
                    "transfer-encoding",
                    "upgrade",
                ]
                .contains(&n.as_str())
                {
                    problems.push(format!("header {name:?} is not allowed in HTTP/2"));
                }
            }
        }
        problems
    }

    /// The exact bytes of the request every connection sends.
    pub fn request_bytes(&self) -> Bytes {
        self.request_bytes_for(&self.target)
    }

    /// The HTTP/1.1 request bytes for one of the URLs.
    fn request_bytes_for(&self, target: &Target) -> Bytes {
        let mut r = Vec::with_capacity(128 + self.body_size);
        r.extend_from_slice(self.method.as_bytes());
        r.push(b' ');
        r.extend_from_slice(target.path.as_bytes());
        r.extend_from_slice(b" HTTP/1.1\r\n");
        if !self.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            r.extend_from_slice(b"host: ");
            r.extend_from_slice(target.authority.as_bytes());
            r.extend_from_slice(b"\r\n");
        }
        for (name, value) in &self.headers {
            r.extend_from_slice(name.as_bytes());
            r.extend_from_slice(b": ");
            r.extend_from_slice(value.as_bytes());
            r.extend_from_slice(b"\r\n");
        }
        if !self.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("user-agent")) {
            r.extend_from_slice(b"user-agent: ringmesh-loadgen\r\n");
        }
        let method_has_body = matches!(self.method.as_str(), "POST" | "PUT" | "PATCH");
        if self.body_size > 0 || method_has_body {
            r.extend_from_slice(b"content-length: ");
            r.extend_from_slice(itoa::Buffer::new().format(self.body_size).as_bytes());
            r.extend_from_slice(b"\r\n");
        }
        r.extend_from_slice(b"\r\n");
        r.extend(b"0123456789abcdef".iter().copied().cycle().take(self.body_size));
        Bytes::from(r)
    }
}

/// RFC 9110 token characters (methods, header names).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Runs one load and returns the merged report. Blocks the calling thread for about
/// `warmup + duration` (plus at most one request timeout for responses still in flight).
/// Ctrl-C (once [`crate::progress::install_interrupt_handler`] ran) ends it early with the
/// results so far.
pub fn run_load(config: LoadConfig) -> anyhow::Result<LoadReport> {
    run_load_with(config, Arc::new(RunControl::new()))
}

/// [`run_load`] with a caller-held [`RunControl`]: watch its counters while the run goes on,
/// or [`RunControl::stop`] it early; the report then covers the window up to the stop and
/// says `interrupted`.
pub fn run_load_with(config: LoadConfig, control: Arc<RunControl>) -> anyhow::Result<LoadReport> {
    config.validate()?;
    let threads = config.threads.min(config.connections);
    let is_head = config.method == "HEAD";
    // Built once: a bad certificate or header is reported before any thread starts.
    let proto = lanes::build_proto(&config)?.map(Arc::new);
    let lanes_per_conn = if proto.is_some() && config.protocol != Protocol::Tcp {
        config.streams
    } else {
        1
    };
    // A short lead lets every thread build its runtime and connect before the first due time.
    let t0 = Instant::now() + Duration::from_millis(50);
    let start = t0 + config.warmup;
    let plan = Plan {
        t0,
        start,
        end: start + config.duration,
        rate: config.rate,
        connections: config.connections * lanes_per_conn,
    };
    control.set_timeline(crate::progress::Timeline {
        t0,
        start,
        end: plan.end,
    });
    let window_start = std::time::SystemTime::now() + start.saturating_duration_since(Instant::now());
    let config = Arc::new(config);
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let config = config.clone();
        let proto = proto.clone();
        let control = control.clone();
        let h = std::thread::Builder::new()
            .name(format!("loadgen-{t}"))
            .spawn(move || run_thread(t, threads, &config, proto, is_head, plan, control))
            .context("spawning load thread")?;
        handles.push(h);
    }
    let mut total = ThreadStats::new();
    let mut first_error = None;
    for h in handles {
        match h.join() {
            Ok(Ok(st)) => total.merge(&st),
            Ok(Err(e)) => first_error = first_error.or(Some(e)),
            Err(_) => first_error = first_error.or(Some(anyhow!("a load thread panicked"))),
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let stopped_at = control.stopped_at();
    Ok(build_report(&config, threads, total, plan, stopped_at, window_start))
}

fn run_thread(
    index: usize,
    threads: usize,
    config: &LoadConfig,
    proto: Option<Arc<lanes::ProtoShared>>,
    is_head: bool,
    plan: Plan,
    control: Arc<RunControl>,
) -> anyhow::Result<ThreadStats> {
    sys::tighten_timer_slack();
    if !config.cpus.is_empty() {
        let cpu = config.cpus[index % config.cpus.len()];
        sys::pin_current_thread(cpu).with_context(|| format!("pinning load thread to cpu {cpu}"))?;
    }
    let mut rt = sys::build_runtime().context("building monoio runtime")?;
    let shared = std::rc::Rc::new(ThreadShared {
        routes: config
            .targets()
            .map(|t| (t.addr, config.request_bytes_for(t)))
            .collect(),
        is_head,
        timeout: config.timeout,
        connect_timeout: config.connect_timeout,
        plan,
        stats: RefCell::new(ThreadStats::with_intervals(config.hlog_interval)),
        control,
        thread: index,
    });
    let closed = config.closed_loop();
    let connections = config.connections;
    let stats = rt.block_on({
        let shared = shared.clone();
        async move {
            let mut tasks = Vec::new();
            for c in (index..connections).step_by(threads) {
                let shared = shared.clone();
                if let Some(proto) = &proto {
                    tasks.push(monoio::spawn(lanes::run_connection(shared, proto.clone(), c, closed)));
                    continue;
                }
                tasks.push(monoio::spawn(async move {
                    if closed {
                        conn::closed_loop(&shared, c).await;
                    } else {
                        conn::open_loop(&shared, c).await;
                    }
                }));
            }
            for t in tasks {
                t.await;
            }
            std::mem::replace(&mut *shared.stats.borrow_mut(), ThreadStats::new())
        }
    });
    Ok(stats)
}

fn build_report(
    config: &LoadConfig,
    threads: usize,
    mut total: ThreadStats,
    plan: Plan,
    stopped_at: Option<Instant>,
    window_start: std::time::SystemTime,
) -> LoadReport {
    // A stopped run's window ends at the stop (never before it opened).
    let window_end = stopped_at.map_or(plan.end, |t| t.clamp(plan.start, plan.end));
    let duration_s = (window_end - plan.start).as_secs_f64();
    let answered = total.ok + total.errors.answered();
    let per_second = |n: u64| if duration_s > 0.0 { n as f64 / duration_s } else { 0.0 };
    let requests = total.ok + total.errors.total();
    let latency_us = LatencySummary::of(&total.hist);
    let error_latency_us = LatencySummary::of(&total.error_hist);
    let mut report = LoadReport {
        success_rate: if requests == 0 {
            0.0
        } else {
            total.ok as f64 / requests as f64
        },
        max_error_rate: config.max_error_rate,
        healthy: false,
        mode: if config.closed_loop() {
            LoadMode::Closed
        } else {
            LoadMode::Open
        },
        url: config
            .targets()
            .map(|t| {
                let scheme = match t.scheme {
                    Scheme::Http => "http",
                    Scheme::Https => "https",
                    Scheme::Tcp => "tcp",
                };
                format!("{scheme}://{}{}", t.authority, t.path)
            })
            .collect::<Vec<_>>()
            .join(" "),
        target_rate_rps: (!config.closed_loop()).then_some(config.rate),
        connections: config.connections,
        threads,
        requests,
        ok: total.ok,
        errors: total.errors.total(),
        errors_by_kind: total.errors,
        unsent: total.unsent,
        reconnects: total.reconnects,
        retried_unprocessed: total.retried_unprocessed,
        warmup_requests: total.warmup,
        late_from_warmup: total.late_from_warmup,
        sent_total: total.sent,
        duration_s,
        warmup_s: config.warmup.as_secs_f64(),
        rate_rps: per_second(answered),
        ok_rate_rps: per_second(total.ok),
        latency_us,
        error_latency_us,
        interrupted: stopped_at.is_some(),
        intervals: total.intervals.take().map(|(interval, mut histograms)| {
            // Every interval of the window gets a line, empty ones included.
            let n = (window_end - plan.start)
                .as_nanos()
                .div_ceil(interval.as_nanos().max(1)) as usize;
            while histograms.len() < n {
                histograms.push(crate::hlog::new_interval_histogram());
            }
            crate::hlog::IntervalSeries {
                interval,
                window_start,
                histograms,
            }
        }),
        histogram: total.hist,
        error_histogram: total.error_hist,
    };
    report.healthy = report.problems().is_empty();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bytes_carry_host_override_and_body() {
        let mut c = LoadConfig::new("http://127.0.0.1:1/p").unwrap();
        c.method = "POST".into();
        c.body_size = 4;
        c.headers.push(("Host".into(), "echo.bench".into()));
        let r = c.request_bytes();
        let s = std::str::from_utf8(&r).unwrap();
        assert!(s.starts_with("POST /p HTTP/1.1\r\nHost: echo.bench\r\n"), "{s}");
        assert!(!s.contains("host: 127.0.0.1"));
        assert!(s.ends_with("content-length: 4\r\n\r\n0123"), "{s}");
    }

    #[test]
    fn validation_reports_every_problem() {
        let mut c = LoadConfig::new("http://127.0.0.1:1/").unwrap();
        c.connections = 0;
        c.rate = f64::NAN;
        c.method = "G ET".into();
        c.headers.push(("content-length".into(), "1".into()));
        let msg = c.validate().unwrap_err().to_string();
        for needle in ["connections", "rate", "method", "content-length"] {
            assert!(msg.contains(needle), "{needle} missing from {msg}");
        }
    }
}
