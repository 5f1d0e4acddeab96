//! Command lines of `ringmesh-echo` and `ringmesh-loadgen`, as library functions.
//!
//! The binaries are one-line wrappers around [`echo_main`] and [`loadgen_main`] so that the
//! benchmark can run the very same argument parsing in a re-executed copy of itself
//! (`ringmesh-bench __echo ARGS`) without a second binary on disk.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;

use crate::echo::{spawn_echo, EchoConfig, EchoMode};
use crate::load::{LoadConfig, Protocol};
use crate::sys;
use crate::target::Target;

/// Parses a duration in the grammar every ringmesh duration uses (`2ms`, `1.5s`, `1h30m`:
/// [`ringmesh_api::parse_duration`], the one YAML and every other command line speak), plus a
/// bare number of seconds (`10`, `0.5`) as a shorthand for runs typed by hand.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        if (0.0..1e9).contains(&secs) {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err(format!("invalid duration {s:?}"));
    }
    ringmesh_api::parse_duration(s).map_err(|e| e.to_string())
}

/// A parsed `--cpus` list. An alias, not `Vec<usize>` written out, because clap's derive
/// treats a literal `Option<Vec<T>>` as "many values of T" and then panics on the first use of
/// a parser that returns the whole list.
pub type CpuList = Vec<usize>;

/// Parses a CPU list such as `0,2-3`.
pub fn parse_cpus(s: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("invalid cpu list {s:?}");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b || b >= 4096 {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    Ok(cpus)
}

/// `ringmesh-echo`: an HTTP/1.1 (or raw TCP) upstream for tests and benchmarks.
#[derive(Debug, Parser)]
#[command(
    name = "ringmesh-echo",
    version,
    about = "ringmesh-echo: the upstream test server (HTTP/1.1, h2c, gRPC, TLS or raw TCP echo) behind ringmesh's tests and benchmarks"
)]
pub struct EchoArgs {
    /// Address to listen on (port 0 picks one; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:8080", env = "RINGMESH_ECHO_LISTEN")]
    pub listen: SocketAddr,
    /// Worker threads, one SO_REUSEPORT listener each.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Response body size in bytes (for requests that do not echo a body).
    #[arg(long, default_value_t = 64)]
    pub body_size: usize,
    /// Delay before each response, e.g. 2ms.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub delay: Duration,
    /// Uniform jitter around the delay (delay ± jitter).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub delay_jitter: Duration,
    /// Fraction of requests answered with 500.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Value of the x-ringmesh-instance header.
    #[arg(long, default_value = "echo")]
    pub instance: String,
    /// Raw TCP echo instead of HTTP.
    #[arg(long)]
    pub tcp: bool,
    /// Pin worker threads to these CPUs (e.g. 0,2-3).
    #[arg(long, value_parser = parse_cpus)]
    pub cpus: Option<CpuList>,
    /// Serve TLS with ALPN h2 and http/1.1 (a self-signed certificate unless --cert/--key).
    #[arg(long)]
    pub tls: bool,
    /// TLS certificate chain, PEM (with --tls).
    #[arg(long, requires_all = ["tls", "key"])]
    pub cert: Option<PathBuf>,
    /// TLS private key, PEM (with --tls).
    #[arg(long, requires_all = ["tls", "cert"])]
    pub key: Option<PathBuf>,
    /// Require client certificates signed by this CA, PEM (mTLS; with --tls).
    #[arg(long, requires = "tls")]
    pub client_ca: Option<PathBuf>,
    /// Share --listen with another process already serving it (SO_REUSEPORT); without it an
    /// address in use is refused.
    #[arg(long)]
    pub takeover: bool,
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    Protocol::parse(s).ok_or_else(|| format!("unknown protocol {s:?} (http1, h2, grpc, grpc-stream, tcp)"))
}

/// Reads a PEM file named by a flag, saying which flag when it cannot.
fn read_pem(path: &Option<PathBuf>, flag: &str) -> anyhow::Result<Option<String>> {
    path.as_ref()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("{flag} {}", p.display())))
        .transpose()
}

impl EchoArgs {
    /// The library config these flags describe (reads the TLS files, if any).
    pub fn to_config(&self) -> anyhow::Result<EchoConfig> {
        let tls = if self.tls {
            Some(crate::tls::ServerTlsOptions {
                cert_pem: read_pem(&self.cert, "--cert")?,
                key_pem: read_pem(&self.key, "--key")?,
                client_ca_pem: read_pem(&self.client_ca, "--client-ca")?,
            })
        } else {
            None
        };
        Ok(EchoConfig {
            listen: self.listen,
            workers: self.workers,
            body_size: self.body_size,
            delay: self.delay,
            delay_jitter: self.delay_jitter,
            error_rate: self.error_rate,
            instance: self.instance.clone(),
            mode: if self.tcp { EchoMode::Tcp } else { EchoMode::Http },
            cpus: self.cpus.clone().unwrap_or_default(),
            tls,
            takeover: self.takeover,
        })
    }
}

/// Runs `ringmesh-echo` with `args` (including the program name) until the process is killed.
pub fn echo_main<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    // Parse errors, --help and --version print and exit like any CLI.
    let args = EchoArgs::try_parse_from(args).unwrap_or_else(|e| e.exit());
    let _ = sys::raise_nofile_limit(1 << 20);
    let handle = spawn_echo(args.to_config()?)?;
    println!(
        "ringmesh-echo listening on {} ({} workers, {} driver{})",
        handle.local_addr(),
        args.workers,
        sys::io_driver_name(),
        if args.tls {
            ", TLS with ALPN h2/http1.1"
        } else {
            ", HTTP/1.1 + h2c + gRPC"
        }
    );
    if handle.generated_cert_pem().is_some() {
        println!("ringmesh-echo: serving a self-signed certificate generated at start (clients need --insecure)");
    }
    handle.wait();
    Ok(())
}

/// `ringmesh-loadgen`: open-loop (coordinated-omission corrected) or closed-loop HTTP/1.1 load.
#[derive(Debug, Parser)]
#[command(
    name = "ringmesh-loadgen",
    version,
    about = "ringmesh-loadgen: open-loop (coordinated-omission corrected) or closed-loop load over HTTP/1.1, HTTP/2, gRPC or TCP",
    after_help = EXIT_CODES
)]
pub struct LoadArgs {
    /// Target URL: http://host:port/path, https:// (TLS, with h2/gRPC) or tcp://host:port
    /// (loopback unless --allow-remote).
    pub url: Option<String>,
    /// More target URLs (repeatable); connections are spread over all URLs round-robin.
    #[arg(long = "url", value_name = "URL")]
    pub urls: Vec<String>,
    /// What to speak: http1, h2, grpc (unary), grpc-stream or tcp (default: http1; tcp for tcp://).
    #[arg(long, value_parser = parse_protocol)]
    pub protocol: Option<Protocol>,
    /// HTTP/2 and gRPC: concurrent streams per connection (each with its own schedule).
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// CA certificate(s), PEM, that an https:// server must chain to.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// Client certificate, PEM, for mTLS (with --key).
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// Client private key, PEM, for mTLS (with --cert).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Accept any server certificate (handshake signatures are still checked).
    #[arg(long)]
    pub insecure: bool,
    /// Requests per second over all connections (open loop); 0 = closed loop.
    #[arg(long, short = 'R', default_value_t = 1000.0)]
    pub rate: f64,
    /// Closed loop: as many requests as the server answers (same as --rate 0).
    #[arg(long)]
    pub max: bool,
    /// Keep-alive connections.
    #[arg(long, short = 'c', default_value_t = 16)]
    pub connections: usize,
    /// Measurement window, e.g. 10s.
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unrecorded load before the window, e.g. 1s.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Worker threads (default: CPUs, at most one per connection).
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Request timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Extra header, 'name: value' (repeatable; Host overrides the URL's).
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// Request method.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Request body size in bytes (default 0; for tcp, the message echoed: default 64).
    #[arg(long)]
    pub body_size: Option<usize>,
    /// Largest fraction of failed requests (status >= 400, non-OK grpc-status, connect, reset,
    /// timeout, malformed, TLS) a run may have and still exit 0, e.g. 0.01.
    #[arg(long, default_value_t = 0.0)]
    pub max_error_rate: f64,
    /// Write the JSON report here (`-`: to stdout, the summary then goes to stderr).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the HdrHistogram percentile distribution (.hgrm, milliseconds) here.
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
    /// Write an HdrHistogram interval log (format v1.3, one compressed histogram per interval) here.
    #[arg(long)]
    pub hlog: Option<PathBuf>,
    /// Interval length of --hlog.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub hlog_interval: Duration,
    /// Never draw a progress bar (plain progress lines on stderr instead).
    #[arg(long)]
    pub no_progress: bool,
    /// Pin load threads to these CPUs (e.g. 0,2-3).
    #[arg(long, value_parser = parse_cpus)]
    pub cpus: Option<CpuList>,
    /// Allow non-loopback targets.
    #[arg(long)]
    pub allow_remote: bool,
}

impl LoadArgs {
    /// The library config these flags describe.
    pub fn to_config(&self) -> anyhow::Result<LoadConfig> {
        let mut urls = self.url.iter().chain(&self.urls);
        let Some(first) = urls.next() else {
            bail!("no target URL (give one, or --url URL)");
        };
        let target = Target::parse(first, self.allow_remote)?;
        let mut c = LoadConfig::for_target(target);
        for u in urls {
            c.extra_targets.push(Target::parse(u, self.allow_remote)?);
        }
        if let Some(p) = self.protocol {
            c.protocol = p;
        }
        c.streams = self.streams;
        c.tls = crate::tls::ClientTlsOptions {
            ca_pem: read_pem(&self.cacert, "--cacert")?,
            cert_pem: read_pem(&self.cert, "--cert")?,
            key_pem: read_pem(&self.key, "--key")?,
            insecure: self.insecure,
        };
        c.rate = if self.max { 0.0 } else { self.rate };
        c.connections = self.connections;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        c.threads = self.threads.unwrap_or(cpus).min(self.connections.max(1));
        c.duration = self.duration;
        c.warmup = self.warmup;
        c.timeout = self.timeout;
        c.method = self.method.clone();
        c.body_size = self
            .body_size
            .unwrap_or(if c.protocol == crate::Protocol::Tcp { 64 } else { 0 });
        c.cpus = self.cpus.clone().unwrap_or_default();
        c.hlog_interval = self.hlog.is_some().then_some(self.hlog_interval);
        c.max_error_rate = self.max_error_rate;
        for h in &self.headers {
            let Some((name, value)) = h.split_once(':') else {
                bail!("header {h:?} is not 'name: value'");
            };
            c.headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        c.validate()?;
        Ok(c)
    }
}

/// The exit codes of `ringmesh-loadgen`, as `--help` prints them.
const EXIT_CODES: &str = "Exit codes:
  0    the run is healthy: error rate within --max-error-rate and (open loop) at least 99% of the target rate
  1    the run finished but is not healthy: too many failed requests, none completed, or under the target rate
  2    the run could not start: bad flags or config, an unreadable certificate, an unwritable output file
  130  interrupted (Ctrl-C); the results of the part that ran are still written";

/// Exit code of a run that finished but is not healthy (see [`LoadReport::problems`]).
pub const EXIT_UNHEALTHY: u8 = 1;
/// Exit code of a run that could not start or write its results.
pub const EXIT_ERROR: u8 = 2;
/// Exit code of a run stopped by Ctrl-C.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Runs `ringmesh-loadgen` with `args` (including the program name) and returns its exit code:
/// 0 for a healthy run, [`EXIT_UNHEALTHY`] when the run finished with more failed requests than
/// `--max-error-rate` allows, none completed or (open loop) under 99% of the target rate,
/// [`EXIT_ERROR`] (after printing the error) when it could not run, [`EXIT_INTERRUPTED`] after
/// Ctrl-C.
pub fn loadgen_main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    match run_loadgen(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ringmesh-loadgen: error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn run_loadgen<I, T>(args: I) -> anyhow::Result<ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    // Usage errors exit 2 (clap's own convention, the same as ours); --help and --version 0.
    let args = LoadArgs::try_parse_from(args).unwrap_or_else(|e| e.exit());
    let config = args.to_config()?;
    let _ = sys::raise_nofile_limit((config.connections as u64 + 1024).max(4096));
    let _ = crate::progress::install_interrupt_handler();
    let control = std::sync::Arc::new(crate::progress::RunControl::new());
    let view = crate::progress::ProgressView::spawn(control.clone(), "ringmesh-loadgen".into(), !args.no_progress);
    let report = crate::load::run_load_with(config, control);
    view.finish();
    let report = report?;
    let json_to_stdout = args.json.as_deref() == Some(std::path::Path::new("-"));
    if json_to_stdout {
        // stdout carries the JSON alone, so that it can be piped.
        eprint!("{}", report.summary());
        println!("{}", report.to_json());
    } else {
        print!("{}", report.summary());
    }
    if let Some(path) = args.json.as_ref().filter(|_| !json_to_stdout) {
        std::fs::write(path, report.to_json() + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.hgrm {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        report
            .write_hgrm(&mut f)
            .and_then(|()| std::io::Write::flush(&mut f))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let (Some(path), Some(series)) = (&args.hlog, &report.intervals) {
        let comment = format!(
            "Logged by ringmesh-loadgen {} against {}",
            env!("CARGO_PKG_VERSION"),
            report.url
        );
        crate::hlog::write_file(series, &comment, path).with_context(|| format!("writing {}", path.display()))?;
    }
    if report.interrupted {
        eprintln!("ringmesh-loadgen: interrupted — results above cover the part of the run that completed");
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    let problems = report.problems();
    if problems.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for p in &problems {
        eprintln!("ringmesh-loadgen: run is NOT healthy: {p}");
    }
    Ok(ExitCode::from(EXIT_UNHEALTHY))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_cpu_lists_parse() {
        assert_eq!(parse_duration("2ms"), Ok(Duration::from_millis(2)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
        // The grammar YAML uses: fractions and compound units.
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_cpus("0,2-3"), Ok(vec![0, 2, 3]));
        assert!(parse_cpus("3-1").is_err());
    }

    #[test]
    fn tcp_echoes_64_bytes_unless_told_and_http_sends_no_body() {
        let cfg = |args: &[&str]| LoadArgs::try_parse_from(args).unwrap().to_config().unwrap();
        assert_eq!(cfg(&["ringmesh-loadgen", "tcp://127.0.0.1:9000"]).body_size, 64);
        assert_eq!(
            cfg(&["ringmesh-loadgen", "tcp://127.0.0.1:9000", "--body-size", "7"]).body_size,
            7
        );
        assert_eq!(cfg(&["ringmesh-loadgen", "http://127.0.0.1:9000/"]).body_size, 0);
    }

    #[test]
    fn cpu_lists_and_new_protocol_flags_parse() {
        let e = EchoArgs::try_parse_from(["ringmesh-echo", "--cpus", "0,2-3", "--tls"]).unwrap();
        let c = e.to_config().unwrap();
        assert_eq!(c.cpus, vec![0, 2, 3]);
        assert!(c.tls.is_some());
        let a = LoadArgs::try_parse_from([
            "ringmesh-loadgen",
            "http://127.0.0.1:9/",
            "--url",
            "http://127.0.0.1:10/",
            "--cpus",
            "1",
            "--protocol",
            "grpc-stream",
            "--streams",
            "8",
        ])
        .unwrap();
        let c = a.to_config().unwrap();
        assert_eq!(c.cpus, vec![1]);
        assert_eq!(
            (c.protocol, c.streams, c.extra_targets.len()),
            (Protocol::GrpcStream, 8, 1)
        );
        let bad = LoadArgs::try_parse_from(["ringmesh-loadgen", "https://127.0.0.1:9/"]).unwrap();
        assert!(bad.to_config().is_err(), "https with HTTP/1.1 is refused");
        assert!(LoadArgs::try_parse_from(["ringmesh-loadgen", "http://127.0.0.1:9/", "--protocol", "quic"]).is_err());
    }

    #[test]
    fn load_args_map_to_config() {
        let a = LoadArgs::try_parse_from([
            "ringmesh-loadgen",
            "http://127.0.0.1:9/x",
            "--max",
            "-c",
            "4",
            "-H",
            "Host: echo.bench",
            "--threads",
            "8",
        ])
        .unwrap();
        let c = a.to_config().unwrap();
        assert!(c.closed_loop());
        assert_eq!(c.threads, 4);
        assert_eq!(c.headers, vec![("Host".to_owned(), "echo.bench".to_owned())]);
        let bad = LoadArgs::try_parse_from(["ringmesh-loadgen", "http://127.0.0.1:9/", "-H", "nocolon"]).unwrap();
        assert!(bad.to_config().is_err());
    }
}
