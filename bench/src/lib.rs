//! ringmesh-bench: the benchmark suite that says what one ringmesh hop costs.
//!
//! `cargo run --release -p ringmesh-bench` starts one echo upstream and, in front of it, each
//! topology (`direct`, `ringmesh`, `captured` = `ringmesh` reached by transparent capture in a
//! network namespace, as root, `mesh` = two ringmesh proxies with mutual TLS between them,
//! `mesh-plain` = the same without it, and, when installed, `haproxy`, `haproxy-mesh` = `mesh`
//! built of two haproxies, and `nginx`) as separate processes; then, round after round
//! (A B C D A B C D …), it measures open-loop latency at a fixed rate (with the proxies' CPU
//! time) and closed-loop throughput against each; then the mesh rows' HTTP/1.1 latency again,
//! in rounds of their own, at the rate the mesh targets are stated at (`--mesh-rate`); finally
//! it measures each proxy's memory per idle connection.
//! Interleaving makes slow drift of a shared machine hit every scenario alike; medians with
//! their min–max spread and the per-round difference to `direct` make the figures
//! comparable. The report (markdown, JSON, one `.hgrm` per scenario and repeat, the
//! `latency.svg` percentile plot, the proxies' config files and logs) lands in
//! `target/ringmesh-bench/<unix-time>/` or `--out DIR`. Settings come from flags or a YAML
//! `--suite` file; Ctrl-C stops after the current measurement and still writes the report
//! of the rounds that completed.

pub mod captured;
pub mod measure;
pub mod netns;
pub mod own_view;
pub mod pki;
pub mod plot;
pub mod procs;
pub mod protocol;
pub mod report;
pub mod span_sink;
pub mod suite;
pub mod telemetry;
pub mod topology;
pub mod ui;
pub mod wake_cost;
pub mod worker_cpu;
pub mod wrk;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::parser::ValueSource;
use clap::{CommandFactory as _, FromArgMatches as _, Parser};

use crate::measure::{LoadShape, RunResult};
use crate::procs::{free_port, http_get_status, Proc};
use crate::protocol::Protocol;
use crate::report::{ScenarioSummary, Status};
use crate::topology::{Env, Kind, Topology};

/// Command line of `ringmesh-bench`. The defaults are the default suite
/// (`bench/suites/default.yaml` spells them out).
#[derive(Debug, Parser, PartialEq)]
#[command(name = "ringmesh-bench", version, about = "ringmesh benchmark suite")]
pub struct BenchArgs {
    /// Output directory (default: target/ringmesh-bench/<unix-timestamp>/).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// YAML suite file (keys as the flags below); flags typed on the command line win.
    #[arg(long)]
    pub suite: Option<PathBuf>,
    /// Scenarios, in round order (direct, ringmesh or sidecar, ringmesh-bare, ringmesh-telemetry,
    /// captured, mesh, mesh-plain, haproxy, haproxy-mesh, nginx). `captured` needs root (skipped
    /// otherwise).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,ringmesh,ringmesh-bare,ringmesh-telemetry,captured,mesh,mesh-plain,haproxy,haproxy-mesh,nginx"
    )]
    pub scenarios: Vec<String>,
    /// Protocols, each measured on every scenario (http1, h2 = h2c, grpc = gRPC unary over h2c).
    #[arg(long, value_delimiter = ',', default_value = "http1,h2,grpc")]
    pub protocols: Vec<String>,
    /// HTTP/2 and gRPC rows: streams per connection (the rows keep the HTTP/1.1 rows'
    /// requests in flight on `connections / h2-streams` connections).
    #[arg(long, default_value_t = 4)]
    pub h2_streams: usize,
    /// Rounds over all scenarios; each figure is the median over rounds.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Open-loop rate, requests per second.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// After the main rounds, the HTTP/1.1 latency of direct, mesh, mesh-plain and haproxy-mesh
    /// (those among the scenarios) again, open loop only, at this rate, in `--repeats` rounds of
    /// their own: the mesh p90/p99 targets are stated (and judged) at 1,000 rps. 0 skips the
    /// pass, and the targets are judged at `--rate`.
    #[arg(long, default_value_t = report::MTLS_TARGET_RATE)]
    pub mesh_rate: f64,
    /// Open-loop measurement window.
    #[arg(long, default_value = "4s", value_parser = ringmesh_loadgen::parse_duration)]
    pub duration: Duration,
    /// Open-loop warmup.
    #[arg(long, default_value = "500ms", value_parser = ringmesh_loadgen::parse_duration)]
    pub warmup: Duration,
    /// Open-loop connections.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Closed-loop (throughput) connections.
    #[arg(long, default_value_t = 32)]
    pub throughput_connections: usize,
    /// Closed-loop measurement window.
    #[arg(long, default_value = "1s", value_parser = ringmesh_loadgen::parse_duration)]
    pub throughput_duration: Duration,
    /// Closed-loop warmup.
    #[arg(long, default_value = "250ms", value_parser = ringmesh_loadgen::parse_duration)]
    pub throughput_warmup: Duration,
    /// ringmesh-proxy worker threads.
    #[arg(long, default_value_t = 1)]
    pub proxy_workers: usize,
    /// Load generator threads.
    #[arg(long, default_value_t = 1)]
    pub load_threads: usize,
    /// Pin processes: load generator on the 1st CPU of the list, proxies on the 2nd, echo on
    /// the 3rd (wrapping around), e.g. `0,1`. Unpinned by default.
    #[arg(long, value_parser = ringmesh_loadgen::parse_cpus)]
    pub cpus: Option<ringmesh_loadgen::CpuList>,
    /// Idle keep-alive connections opened to each proxy for the memory-per-connection figure
    /// (0 skips the test).
    #[arg(long, default_value_t = 5_000)]
    pub idle_connections: usize,
    /// Response body size of the echo upstream, bytes.
    #[arg(long, default_value_t = 64)]
    pub body_size: usize,
    /// Each run of the wrk rows (`wrk -t1 -c16` against an nginx upstream, through each proxy,
    /// `--repeats` interleaved rounds), whole seconds; 0 skips them.
    #[arg(long, default_value = "2s", value_parser = ringmesh_loadgen::parse_duration)]
    pub wrk_duration: Duration,
    /// Per-worker CPU: one HTTP/2 connection with 100 streams through a 2-worker
    /// ringmesh-proxy, closed loop for this long (0 skips it; needs the ringmesh scenario).
    #[arg(long, default_value = "3s", value_parser = ringmesh_loadgen::parse_duration)]
    pub worker_spread_duration: Duration,
    /// What that one connection carries: h2 or grpc.
    #[arg(long, default_value = "h2")]
    pub worker_spread_protocol: String,
    /// Never draw a progress bar (plain lines, as when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// The ringmesh-proxy binary the ringmesh scenarios run (default: `ringmesh-proxy` next
    /// to this binary when it was built, else this binary's embedded copy of the proxy).
    #[arg(long)]
    pub proxy_bin: Option<PathBuf>,
}

/// What the validated command line asks to run.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    /// Scenarios, in round order.
    kinds: Vec<Kind>,
    /// Protocols, in round order.
    protocols: Vec<Protocol>,
    /// The per-worker CPU measurement's protocol, when it runs.
    worker_spread: Option<Protocol>,
    /// The `--mesh-rate` pass, when it runs: its rate and its scenarios, in round order.
    mesh_rate: Option<(f64, Vec<Kind>)>,
}

/// The scenarios of the `--mesh-rate` pass: the baseline, the mesh with and without mTLS, and
/// the same mTLS mesh of two haproxies (the floor).
const MESH_RATE_KINDS: [Kind; 4] = [Kind::Direct, Kind::Mesh, Kind::MeshPlain, Kind::HaproxyMesh];

impl BenchArgs {
    fn validate(&self) -> anyhow::Result<Plan> {
        let mut problems = Vec::new();
        let mut kinds = Vec::new();
        for s in &self.scenarios {
            match Kind::parse(s) {
                Some(k) if !kinds.contains(&k) => kinds.push(k),
                Some(_) => {}
                None => problems.push(format!(
                    "unknown scenario {s:?} (known: direct, ringmesh or sidecar, ringmesh-bare, ringmesh-telemetry, captured, mesh, \
                     mesh-plain, haproxy, haproxy-mesh, nginx)"
                )),
            }
        }
        if kinds.is_empty() {
            problems.push("no scenarios".into());
        }
        let mut protocols = Vec::new();
        for p in &self.protocols {
            match Protocol::parse(p) {
                Some(p) if !protocols.contains(&p) => protocols.push(p),
                Some(_) => {}
                None => problems.push(format!("unknown protocol {p:?} (known: http1, h2, grpc)")),
            }
        }
        if protocols.is_empty() {
            problems.push("no protocols".into());
        }
        if self.h2_streams == 0 || self.h2_streams > 1000 {
            problems.push(format!("--h2-streams must be 1..=1000, got {}", self.h2_streams));
        }
        let spread_protocol = match Protocol::parse(&self.worker_spread_protocol) {
            Some(p) if p.is_h2() => Some(p),
            _ => {
                problems.push(format!(
                    "--worker-spread-protocol must be h2 or grpc, got {:?}",
                    self.worker_spread_protocol
                ));
                None
            }
        };
        if self.repeats == 0 || self.repeats > 100 {
            problems.push(format!("--repeats must be 1..=100, got {}", self.repeats));
        }
        if !(self.rate > 0.0 && self.rate <= 1e6) {
            problems.push(format!("--rate must be in (0, 1e6], got {}", self.rate));
        }
        if !(self.mesh_rate >= 0.0 && self.mesh_rate <= 1e6) {
            problems.push(format!(
                "--mesh-rate must be 0 (no pass) or in (0, 1e6], got {}",
                self.mesh_rate
            ));
        }
        if self.connections == 0 || self.throughput_connections == 0 || self.load_threads == 0 {
            problems.push("--connections, --throughput-connections and --load-threads must be at least 1".into());
        }
        if self.duration.is_zero() || self.throughput_duration.is_zero() {
            problems.push("--duration and --throughput-duration must be positive".into());
        }
        if self.proxy_workers == 0 || self.proxy_workers > 256 {
            problems.push(format!("--proxy-workers must be 1..=256, got {}", self.proxy_workers));
        }
        if self.wrk_duration.subsec_nanos() != 0 {
            problems.push(format!(
                "--wrk-duration must be whole seconds (wrk's unit), got {:?}",
                self.wrk_duration
            ));
        }
        if self.idle_connections > 100_000 {
            problems.push("--idle-connections must be at most 100000".into());
        }
        if let Some(c) = &self.cpus {
            if c.is_empty() {
                problems.push("--cpus is empty".into());
            }
        }
        if problems.is_empty() {
            let worker_spread =
                spread_protocol.filter(|_| !self.worker_spread_duration.is_zero() && kinds.contains(&Kind::Ringmesh));
            // Only with HTTP/1.1 rows (Istio's figures are HTTP/1.1's) and a mesh to measure.
            let mesh_kinds: Vec<Kind> = kinds.iter().copied().filter(|k| MESH_RATE_KINDS.contains(k)).collect();
            let mesh_rate = (self.mesh_rate > 0.0
                && protocols.contains(&Protocol::Http1)
                && mesh_kinds.iter().any(|&k| k != Kind::Direct))
            .then_some((self.mesh_rate, mesh_kinds));
            Ok(Plan {
                kinds,
                protocols,
                worker_spread,
                mesh_rate,
            })
        } else {
            bail!("{}", problems.join("; "))
        }
    }

    fn cpu_for(&self, slot: usize) -> Option<usize> {
        self.cpus.as_ref().map(|c| c[slot % c.len()])
    }
}

/// Cores (and CPU model), memory and kernel of this machine, as both benchmark reports head them.
pub fn host_info() -> Vec<(String, String)> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".to_owned(), |(_, m)| m.trim().to_owned());
    let mem = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .map_or("unknown".to_owned(), |m| m.trim().to_owned());
    vec![
        ("cores available".into(), format!("{cores} ({model})")),
        ("memory".into(), mem),
        ("kernel".into(), read("/proc/sys/kernel/osrelease").trim().to_owned()),
    ]
}

fn machine_info() -> Vec<(String, String)> {
    let mut info = host_info();
    info.extend([(
        "load generator / echo io driver".into(),
        ringmesh_loadgen::io_driver_name().into(),
    )]);
    let wake =
        wake_cost::WakeCost::measure(WAKE_ROUND_TRIPS).map_or_else(|e| format!("not measured: {e}"), |c| c.describe());
    info.push(("sleep and wake-up".into(), wake));
    info
}

/// Round trips of the sleep/wake measurement: about a second across CPUs on a nested VM.
const WAKE_ROUND_TRIPS: u32 = 20_000;

fn shell_quote(a: &str) -> String {
    if !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@".contains(&b)) {
        a.to_owned()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

/// Parses the command line and applies `--suite`: built-in default < suite file < typed flag.
pub fn parse_args(args: &[std::ffi::OsString]) -> anyhow::Result<BenchArgs> {
    let matches = BenchArgs::command()
        .try_get_matches_from(args)
        .unwrap_or_else(|e| e.exit());
    let mut cli = BenchArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Some(path) = cli.suite.clone() {
        let suite = suite::Suite::load(&path)?;
        suite.apply(&mut cli, |id| {
            matches!(matches.value_source(id), Some(ValueSource::CommandLine))
        })?;
    }
    Ok(cli)
}

/// Creates the output folder (`--out`, default `target/ringmesh-bench/<unix time>`) and returns
/// it as an absolute path: external proxies run with the folder as their working directory,
/// so a relative path handed to them (nginx's `-p` prefix, its error log) would be resolved a
/// second time inside it (`…/nginx/target/ringmesh-bench/…/nginx-error.log`).
fn out_dir_in(cwd: &std::path::Path, out: Option<&std::path::Path>, started_unix: u64) -> anyhow::Result<PathBuf> {
    let out = out.map_or_else(
        || PathBuf::from("target/ringmesh-bench").join(started_unix.to_string()),
        std::path::Path::to_path_buf,
    );
    let out = cwd.join(out);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    out.canonicalize()
        .with_context(|| format!("resolving {}", out.display()))
}

/// Runs the suite with the given arguments (`args[0]` is the program name).
pub fn run<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let command = args
        .iter()
        .map(|a| shell_quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ");
    let cli = parse_args(&args)?;
    let plan = cli.validate()?;
    let kinds = &plan.kinds;
    let started = Instant::now();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let out_dir = out_dir_in(&cwd, cli.out.as_deref(), started_unix)?;
    let nofile = ringmesh_loadgen::raise_nofile_limit(procs::NOFILE_WANT).context("raising RLIMIT_NOFILE")?;
    let self_exe = std::env::current_exe().context("locating own executable")?;
    // Ctrl-C: the measurement in progress stops, the report of completed rounds is written.
    ringmesh_loadgen::progress::install_interrupt_handler().context("installing the Ctrl-C handler")?;
    let interrupted = ringmesh_loadgen::progress::interrupted;
    eprintln!("ringmesh-bench: writing to {}", out_dir.display());

    // The shared upstream.
    let echo_addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let echo_spec = topology::Echo {
        body_size: cli.body_size,
        cpu: cli.cpu_for(2),
    };
    let mut echo = Proc::spawn("echo", &self_exe, &echo_spec.args(echo_addr), &out_dir, echo_spec.cpu)?;
    echo.wait_ready(&format!("GET http://{echo_addr}/"), Duration::from_secs(10), || {
        matches!(http_get_status(echo_addr, topology::HOST, "/"), Ok(200))
    })?;

    let proxy = topology::ProxyBinary::locate(cli.proxy_bin.as_deref(), &self_exe)?;
    eprintln!("ringmesh-bench: ringmesh-proxy: {}", proxy.describe());
    // `mesh`'s certificates (`haproxy-mesh` runs on the same), once per run, beside the report.
    let pki = if kinds.contains(&Kind::Mesh) || kinds.contains(&Kind::HaproxyMesh) {
        let dir = out_dir.join("pki");
        let pki = pki::write(&dir).with_context(|| format!("making the mesh certificates in {}", dir.display()))?;
        eprintln!("ringmesh-bench: mesh CA and workload certificates: {}", dir.display());
        Some(pki)
    } else {
        None
    };
    let env = Env {
        out_dir: out_dir.clone(),
        proxy,
        self_exe,
        echo_addr,
        echo: echo_spec,
        proxy_workers: cli.proxy_workers,
        proxy_cpu: cli.cpu_for(1),
        nofile,
        pki,
    };
    let mut summaries: Vec<ScenarioSummary> = Vec::new();
    let mut topologies: Vec<Topology> = Vec::new();
    let rows = plan.protocols.iter().flat_map(|&p| kinds.iter().map(move |&k| (k, p)));
    for (kind, protocol) in rows {
        if interrupted() {
            break;
        }
        let row = format!("{kind}{}", protocol.suffix());
        if let Some(why) = topology::unavailable(kind) {
            let mut s = ScenarioSummary::new(kind, protocol, Status::Skipped);
            s.notes.push(format!("skipped: {why}"));
            eprintln!("ringmesh-bench: {row}: skipped, {why}");
            summaries.push(s);
            continue;
        }
        match topology::start(kind, protocol, &env) {
            Ok(t) => {
                let mut s = ScenarioSummary::new(kind, protocol, Status::Ok);
                s.io_driver = t.io_driver.clone();
                s.version = t.version.clone();
                s.config_file = (!t.config_paths.is_empty()).then(|| {
                    t.config_paths
                        .iter()
                        .filter_map(|p| p.file_name())
                        .map(|f| f.to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join(", ")
                });
                if t.has_proxy() {
                    std::thread::sleep(Duration::from_millis(200));
                    match t.proxy_rss_kib() {
                        Ok(k) => s.idle_rss_kib = Some(k),
                        Err(e) => s.notes.push(format!("idle RSS unavailable: {e}")),
                    }
                    if let Some(hop) = &t.hop {
                        s.notes.push(format!(
                            "client-side proxy → server-side proxy → echo, {} from the load generator carried over \
                             {} between the proxies (the client side's endpoint labelled \
                             `security.istio.io/tlsMode: istio`, the server side's listener `direction: INBOUND` \
                             with PeerAuthentication {}); {}; CPU and RSS are summed over both proxies",
                            protocol.label(),
                            if hop.mtls {
                                "mutual TLS (HTTP/2 inside; certificates in pki/)"
                            } else {
                                "plaintext h2c (no workload certificates)"
                            },
                            if hop.mtls { "STRICT" } else { "DISABLE" },
                            hop.describe()
                        ));
                    } else if let Some(pod) = &t.pod {
                        s.notes.push(pod.describe(protocol));
                    } else if let Some(full) = &t.full_telemetry {
                        s.notes.push(format!(
                            "full telemetry: Istio's metrics, a JSON access log appended to {} (its first line, the \
                             readiness probe's, was there at start), `{}`: the sampled requests' spans exported over \
                             OTLP/gRPC to the suite's own collector, which counts them",
                            full.access_log
                                .file_name()
                                .map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
                            topology::tracing_lines(full.collector.addr()).trim()
                        ));
                    } else if kind == Kind::RingmeshBare {
                        s.notes.push(
                            "telemetry off: `spec.telemetry: {metrics: {istio: false}, reasonHeader: false, tracing: \
                             {sampling: 0}}`, no access log"
                                .into(),
                        );
                    } else if kind == Kind::HaproxyMesh {
                        s.notes.push(format!(
                            "client-side haproxy → server-side haproxy → echo, {} from the load generator carried \
                             over mutual TLS (HTTP/2 inside, ALPN h2; `mesh`'s certificates in pki/, `verify required` \
                             on both ends) between the haproxies, as `mesh` between its proxies; the server side's \
                             bind accepts TLS only, so the readiness probe through the client side crossed an mTLS \
                             hop, and a plaintext GET sent straight to that bind was refused; CPU and RSS are summed \
                             over both haproxies",
                            protocol.label()
                        ));
                    } else if kind == Kind::Nginx && protocol == Protocol::H2 {
                        s.notes.push(
                            "nginx cannot proxy plain HTTP/2 upstream (`proxy_pass` speaks HTTP/1.x only): this row \
                             sends the HTTP/2 GET through `grpc_pass`, nginx's HTTP/2 upstream module, which forwards \
                             any HTTP/2 request; CPU and RSS summed over master + worker"
                                .into(),
                        );
                    } else if t.process_count() > 1 {
                        s.notes.push(format!(
                            "CPU and RSS summed over {} processes (master + workers)",
                            t.process_count()
                        ));
                    }
                }
                eprintln!("ringmesh-bench: {row}: ready on {}", t.entry);
                summaries.push(s);
                topologies.push(t);
            }
            Err(e) => {
                let mut s = ScenarioSummary::new(kind, protocol, Status::Failed);
                s.notes.push(format!("failed to start: {e:#}"));
                eprintln!("ringmesh-bench: {row}: FAILED to start: {e:#}");
                summaries.push(s);
            }
        }
    }

    let shape = LoadShape {
        rate: cli.rate,
        latency_connections: cli.connections,
        duration: cli.duration,
        warmup: cli.warmup,
        throughput_connections: cli.throughput_connections,
        throughput_duration: cli.throughput_duration,
        throughput_warmup: cli.throughput_warmup,
        threads: cli.load_threads,
        cpus: cli.cpu_for(0).into_iter().collect(),
        body_size: cli.body_size,
        h2_streams: cli.h2_streams,
        closed_loop: true,
        file_tag: String::new(),
    };
    // The `--mesh-rate` pass's rows: its scenarios' HTTP/1.1 topologies that started; none
    // when no mesh of them did (`direct` alone would measure nothing the targets need).
    let mut mesh_rate_rows: Vec<usize> = plan.mesh_rate.as_ref().map_or_else(Vec::new, |(_, kinds)| {
        topologies
            .iter()
            .enumerate()
            .filter(|(_, t)| t.protocol == Protocol::Http1 && kinds.contains(&t.kind))
            .map(|(i, _)| i)
            .collect()
    });
    if mesh_rate_rows.iter().all(|&i| topologies[i].kind == Kind::Direct) {
        mesh_rate_rows.clear();
    }
    let idle_steps = if cli.idle_connections > 0 {
        topologies.iter().filter(|t| idle_test_applies(t)).count()
    } else {
        0
    };
    let spread_steps = usize::from(plan.worker_spread.is_some());
    let ui = ui::Ui::new(
        (cli.repeats * (topologies.len() + mesh_rate_rows.len()) + idle_steps + spread_steps) as u64,
        !cli.no_progress,
    );
    let all_rows: Vec<usize> = (0..topologies.len()).collect();
    let main = run_rounds(
        &mut topologies,
        &all_rows,
        &[],
        &echo,
        &shape,
        cli.repeats,
        &out_dir,
        &ui,
    );
    let (mut runs, mut failed, completed_rounds) = (main.runs, main.failed, main.completed_rounds);
    let was_interrupted = interrupted();

    // The mesh rows again, at the rate their latency targets are stated at, while their
    // topologies still run; a row that failed in the main rounds is not measured again.
    let mesh_rate_pass = match &plan.mesh_rate {
        Some((rate, _)) if !was_interrupted => {
            let pass_shape = LoadShape {
                rate: *rate,
                closed_loop: false,
                file_tag: format!("-{}rps", rate.round() as u64),
                ..shape.clone()
            };
            let pass = run_rounds(
                &mut topologies,
                &mesh_rate_rows,
                &failed,
                &echo,
                &pass_shape,
                cli.repeats,
                &out_dir,
                &ui,
            );
            Some(mesh_rate_summaries(&topologies, &mesh_rate_rows, &failed, pass, *rate))
        }
        _ => None,
    };
    let interrupted_mesh_rate = !was_interrupted && interrupted();

    // What the telemetry rows' proxies show of their telemetry, while they still run: a row
    // whose telemetry is not what its name says fails.
    let mut telemetry_checks: Vec<Option<anyhow::Result<telemetry::TelemetryCheck>>> = topologies
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if failed[i].is_some() || runs[i].is_empty() {
                None
            } else {
                telemetry::check(t)
            }
        })
        .collect();

    // Memory per idle connection, last: it leaves allocator state behind.
    let mut idle = vec![None; topologies.len()];
    if cli.idle_connections > 0 && !interrupted() {
        // Each idle connection costs this process and the proxy one descriptor each.
        let per_proxy = (nofile.saturating_sub(512) as usize).min(cli.idle_connections);
        if per_proxy < cli.idle_connections {
            ui.line(format!(
                "ringmesh-bench: RLIMIT_NOFILE is {nofile}: opening {per_proxy} idle connections per proxy instead of {}",
                cli.idle_connections
            ));
        }
        for (i, topo) in topologies.iter().enumerate() {
            if !idle_test_applies(topo) || interrupted() {
                continue;
            }
            if failed[i].is_some() {
                ui.advance();
                continue;
            }
            ui.step(format!("{}: {per_proxy} idle connections", topo.kind));
            match measure::idle_connections(topo, per_proxy, Duration::from_secs(30)) {
                Ok(r) => {
                    ui.line(format!(
                        "ringmesh-bench: {:<8} {} idle connections: RSS {} → {} KiB",
                        topo.kind.name(),
                        r.held,
                        r.rss_before_kib,
                        r.rss_after_kib
                    ));
                    idle[i] = Some(r);
                }
                Err(e) => ui.line(format!("ringmesh-bench: {}: idle test failed: {e:#}", topo.kind)),
            }
            ui.advance();
        }
    }
    // Per-worker CPU, after the rounds' figures are safe: one connection, many streams.
    let worker_spread = match plan.worker_spread {
        Some(protocol) if !interrupted() => {
            ui.step(format!(
                "per-worker CPU: one {} connection × {} streams",
                protocol.label(),
                worker_cpu::STREAMS
            ));
            let r = worker_cpu::measure(
                &env,
                protocol,
                cli.worker_spread_duration,
                cli.cpu_for(0).into_iter().collect(),
            );
            ui.line(match r.status {
                Status::Ok => format!("ringmesh-bench: per-worker CPU: {}", worker_cpu::judge(&r).value),
                _ => format!("ringmesh-bench: per-worker CPU: FAILED: {}", r.notes.join("; ")),
            });
            ui.advance();
            Some(r)
        }
        _ => None,
    };
    ui.finish();
    // Ctrl-C during the idle-connection test: its figures cover the connections opened so far.
    let interrupted_idle = !was_interrupted && !interrupted_mesh_rate && interrupted();
    let direct_runs = |protocol: Protocol| {
        topologies
            .iter()
            .position(|t| t.kind == Kind::Direct && t.protocol == protocol)
            .map(|i| runs[i].clone())
    };
    let direct_runs: Vec<(Protocol, Option<Vec<RunResult>>)> =
        plan.protocols.iter().map(|&p| (p, direct_runs(p))).collect();
    for (i, topo) in topologies.iter().enumerate() {
        let Some(s) = summaries
            .iter_mut()
            .find(|s| s.scenario == topo.kind && s.protocol == topo.protocol)
        else {
            continue;
        };
        let direct = direct_runs
            .iter()
            .find(|(p, _)| *p == topo.protocol)
            .and_then(|(_, r)| r.as_deref());
        s.runs = std::mem::take(&mut runs[i]);
        if let Some(why) = failed[i].take() {
            s.notes.push(why);
            if s.runs.is_empty() {
                s.status = Status::Failed;
            }
        }
        if let Some(r) = idle[i].take() {
            if r.held < r.requested {
                s.notes.push(format!(
                    "idle test held {} of {} connections ({} failed)",
                    r.held, r.requested, r.failed
                ));
            }
            s.idle_connections = Some(r);
        }
        s.summarise(if topo.kind == Kind::Direct { None } else { direct });
        if s.under_rate_runs > 0 {
            s.notes.push(format!(
                "{} open-loop run(s) achieved < 99% of the target rate: their latency describes a lower load",
                s.under_rate_runs
            ));
        }
        match telemetry_checks[i].take() {
            Some(Ok(check)) => {
                s.notes
                    .push(format!("telemetry after the rounds: {}", check.describe()));
                s.notes.extend(telemetry::missing_lines(&check));
                s.notes.extend(telemetry::lost_spans(&check));
                s.telemetry = Some(check);
            }
            Some(Err(e)) => {
                // Last: a failed row's last note is its reason (`report::row_or_why`).
                s.status = Status::Failed;
                s.notes.push(format!("telemetry check failed: {e:#}"));
            }
            None => {}
        }
    }
    drop(topologies);
    drop(echo);

    // The same comparison with tools no one here wrote, after the main rounds' servers stopped.
    let wrk_section = (!cli.wrk_duration.is_zero() && !interrupted()).then(|| {
        wrk::run(
            &wrk::Settings {
                duration: cli.wrk_duration,
                rounds: cli.repeats,
                out_dir: out_dir.join("wrk"),
                proxy: env.proxy.clone(),
                self_exe: env.self_exe.clone(),
                nofile,
                proxy_cpu: cli.cpu_for(1),
                upstream_cpu: cli.cpu_for(2),
            },
            &interrupted,
            &|l| eprintln!("{l}"),
        )
    });

    let plot_notes: Vec<String> = plan
        .protocols
        .iter()
        .filter_map(|&p| {
            let file = format!("latency{}.svg", p.suffix());
            write_plot(&summaries, p, &out_dir.join(&file)).err().map(|e| {
                eprintln!("ringmesh-bench: {file} not written: {e:#}");
                format!("{file} not written: {e:#}")
            })
        })
        .collect();

    // The HTTP/1.1 targets when HTTP/1.1 ran; the HTTP/2 and gRPC ones for what ran of those;
    // the cost of mTLS (`mesh` beside `mesh-plain`) for each protocol whose rows asked for it.
    let mut targets = if plan.protocols.contains(&Protocol::Http1) {
        report::judge(&summaries)
    } else {
        Vec::new()
    };
    targets.extend(report::judge_protocols(&summaries));
    targets.extend(report::judge_mtls(&summaries, cli.rate, mesh_rate_pass.as_ref()));
    targets.extend(report::judge_captured(&summaries));
    targets.extend(telemetry::judge(&summaries));
    if let Some(w) = &worker_spread {
        targets.push(worker_cpu::judge(w));
    }
    if let Some(w) = &wrk_section {
        targets.extend(wrk::judge(w));
    }
    let mut machine = machine_info();
    if let Some(d) = summaries
        .iter()
        .find_map(|s| (s.scenario == Kind::Ringmesh).then(|| s.io_driver.clone()).flatten())
    {
        machine.push(("ringmesh-proxy io driver".into(), d));
    }
    let mut settings = vec![
        (
            "open loop".into(),
            format!(
                "{} rps, {} connections, {:?} + {:?} warmup",
                cli.rate, cli.connections, cli.duration, cli.warmup
            ),
        ),
        (
            "mesh-rate pass".into(),
            match (&plan.mesh_rate, &mesh_rate_pass) {
                (Some((rate, kinds)), Some(_)) => format!(
                    "{} HTTP/1.1, open loop only, {} connections, {:?} + {:?} warmup, {} interleaved rounds ({}); \
                     judges the mesh p90/p99 targets",
                    report::fmt_rps(*rate),
                    cli.connections,
                    cli.duration,
                    cli.warmup,
                    cli.repeats,
                    kinds_line(kinds)
                ),
                (Some(_), None) => {
                    "not run (interrupted before it); the mesh p90/p99 targets are judged at --rate".into()
                }
                (None, _) if cli.mesh_rate > 0.0 => {
                    "not run (no HTTP/1.1 rows, or no mesh, mesh-plain or haproxy-mesh scenario)".into()
                }
                (None, _) => "not run (--mesh-rate 0): the mesh p90/p99 targets are judged at --rate".into(),
            },
        ),
        (
            "closed loop".into(),
            format!(
                "{} connections, {:?} + {:?} warmup",
                cli.throughput_connections, cli.throughput_duration, cli.throughput_warmup
            ),
        ),
        (
            "rounds".into(),
            format!("{} (interleaved: {})", cli.repeats, kinds_line(kinds)),
        ),
        ("protocols".into(), protocols_line(&plan.protocols, cli.h2_streams)),
        (
            "per-worker CPU".into(),
            match plan.worker_spread {
                Some(p) => format!(
                    "one {} connection × {} streams through ringmesh-proxy with {} workers, closed loop for {:?}",
                    p.label(),
                    worker_cpu::STREAMS,
                    worker_cpu::WORKERS,
                    cli.worker_spread_duration
                ),
                None => "not run (--worker-spread-duration 0, or no ringmesh scenario)".into(),
            },
        ),
        (
            "processes".into(),
            format!(
                "echo 1 worker ({}-byte body), proxies {} worker(s) each, load generator {} thread(s){}",
                cli.body_size,
                cli.proxy_workers,
                cli.load_threads,
                cli.cpus
                    .as_ref()
                    .map_or(", unpinned".to_owned(), |c| format!(", pinned over CPUs {c:?}"))
            ),
        ),
        (
            "idle connections".into(),
            format!("{} per proxy (RLIMIT_NOFILE {nofile})", cli.idle_connections),
        ),
        (
            "wrk rows".into(),
            if cli.wrk_duration.is_zero() {
                "not run (--wrk-duration 0)".into()
            } else {
                format!(
                    "wrk -t1 -c{} for {:?} per run, {} interleaved rounds, nginx upstream (see its section)",
                    wrk::CONNECTIONS,
                    cli.wrk_duration,
                    cli.repeats
                )
            },
        ),
    ];
    if let Some(path) = &cli.suite {
        settings.push(("suite".into(), path.display().to_string()));
    }
    if was_interrupted {
        settings.push((
            "INTERRUPTED".into(),
            format!(
                "Ctrl-C after {completed_rounds} of {} rounds; figures cover the completed rounds only, idle-connection test not run",
                cli.repeats
            ),
        ));
    }
    if interrupted_mesh_rate {
        settings.push((
            "INTERRUPTED".into(),
            format!(
                "Ctrl-C during the mesh-rate pass: all main rounds completed; the pass covers {} complete round(s), \
                 idle-connection test not run",
                mesh_rate_pass.as_ref().map_or(0, |p| p.completed_rounds)
            ),
        ));
    }
    if interrupted_idle {
        settings.push((
            "INTERRUPTED".into(),
            "Ctrl-C during the idle-connection test: all rounds completed; RSS per idle connection is over the \
             connections opened before the stop"
                .into(),
        ));
    }
    for n in plot_notes {
        settings.push(("plot".into(), n));
    }
    let info = report::RunInfo {
        command,
        started_unix,
        wall_seconds: started.elapsed().as_secs_f64(),
        machine,
        settings,
    };
    let mut md = report::markdown(&info, &summaries, mesh_rate_pass.as_ref(), &targets);
    if let Some(w) = &worker_spread {
        md.push_str(&worker_cpu::markdown(w));
    }
    if let Some(w) = &wrk_section {
        md.push_str(&wrk::markdown(w));
    }
    std::fs::write(out_dir.join("report.md"), &md)?;
    let json = serde_json::json!({
        "info": info,
        "interrupted": was_interrupted || interrupted_mesh_rate || interrupted_idle,
        "completed_rounds": completed_rounds,
        "scenarios": summaries,
        "mesh_rate": mesh_rate_pass,
        "targets": targets,
        "worker_spread": worker_spread,
        "wrk": wrk_section,
    });
    std::fs::write(out_dir.join("report.json"), serde_json::to_string_pretty(&json)? + "\n")?;
    println!("{md}");
    println!("Report: {}", out_dir.join("report.md").display());
    if was_interrupted || interrupted_mesh_rate || interrupted_idle {
        bail!("interrupted after {completed_rounds} complete round(s); the report covers those");
    }
    // A scenario that failed (to start, or every request) must not read as a good run.
    let failed: Vec<String> = summaries
        .iter()
        .filter(|s| s.status == Status::Failed)
        .map(ScenarioSummary::row_name)
        .chain(mesh_rate_pass.iter().flat_map(|p| {
            p.scenarios
                .iter()
                .filter(|s| s.status == Status::Failed)
                .map(move |s| format!("{} at {}", s.row_name(), report::fmt_rps(p.rate_rps)))
        }))
        .chain(
            worker_spread
                .iter()
                .filter(|w| w.status == Status::Failed)
                .map(|_| "per-worker CPU".to_owned()),
        )
        .chain(
            wrk_section
                .iter()
                .flat_map(|w| &w.rows)
                .filter(|r| r.status == Status::Failed)
                .map(|r| format!("wrk row {}", r.row.name())),
        )
        .collect();
    if !failed.is_empty() {
        bail!("failed: {} (the report says why)", failed.join(", "));
    }
    Ok(())
}

/// What one pass of interleaved rounds measured, indexed as the topologies.
struct PassRuns {
    /// Each topology's runs (none for a topology outside the pass).
    runs: Vec<Vec<RunResult>>,
    /// Why a topology's measurement failed in the pass (it is not measured again in it).
    failed: Vec<Option<String>>,
    /// Rounds the pass completed.
    completed_rounds: usize,
}

/// One pass of `rounds` interleaved rounds (A B C A B C …) over the topologies `rows` names
/// (indices into `topologies`), each measurement as `shape` says: the main rounds over every
/// topology, and the `--mesh-rate` pass over some of the same running topologies, at its own
/// rate, open loop only. A row failed before the pass (`failed_before[i]`) or in it is not
/// measured again. A Ctrl-C stops the pass after the measurement in progress, and only whole
/// rounds are kept, so every row has the same rounds and added latency stays paired by round.
#[allow(clippy::too_many_arguments)]
fn run_rounds(
    topologies: &mut [Topology],
    rows: &[usize],
    failed_before: &[Option<String>],
    echo: &Proc,
    shape: &LoadShape,
    rounds: usize,
    out_dir: &std::path::Path,
    ui: &ui::Ui,
) -> PassRuns {
    let interrupted = ringmesh_loadgen::progress::interrupted;
    let mut runs: Vec<Vec<RunResult>> = vec![Vec::new(); topologies.len()];
    let mut failed: Vec<Option<String>> = vec![None; topologies.len()];
    // The main rounds say nothing of their rate (the settings do); another pass names its own.
    let pass = if shape.closed_loop {
        String::new()
    } else {
        format!(" at {}", report::fmt_rps(shape.rate))
    };
    let mut completed_rounds = 0;
    'rounds: for repeat in 0..rounds {
        for &i in rows {
            let topo = &mut topologies[i];
            if interrupted() {
                break 'rounds;
            }
            if failed[i].is_some() || failed_before.get(i).is_some_and(Option::is_some) {
                ui.advance();
                continue;
            }
            if let Err(e) = topo.check_alive() {
                failed[i] = Some(format!("{e:#}"));
                ui.advance();
                continue;
            }
            ui.step(format!("round {}/{rounds}{pass} · {}", repeat + 1, topo.row_name()));
            match measure::run_once(topo, echo, shape, repeat, out_dir, &|c| ui.watch(c)) {
                Ok(r) => {
                    ui.line(format!(
                        "ringmesh-bench: [{}/{rounds}{pass}] {:<8} {}p50 {} p90 {} p99 {} max {}{}",
                        repeat + 1,
                        topo.row_name(),
                        r.throughput_rps
                            .map_or(String::new(), |t| format!("throughput {t:>7.0} rps | ")),
                        report::fmt_us(r.latency_us.p50 as f64),
                        report::fmt_us(r.latency_us.p90 as f64),
                        report::fmt_us(r.latency_us.p99 as f64),
                        report::fmt_us(r.latency_us.max as f64),
                        if r.latency_rate_met {
                            ""
                        } else {
                            "  (UNDER TARGET RATE)"
                        }
                    ));
                    runs[i].push(r);
                }
                Err(_) if interrupted() => break 'rounds,
                Err(e) => {
                    ui.line(format!(
                        "ringmesh-bench: {}{pass}: measurement failed: {e:#}",
                        topo.row_name()
                    ));
                    failed[i] = Some(format!("measurement failed: {e:#}"));
                }
            }
            ui.advance();
        }
        completed_rounds = repeat + 1;
    }
    if interrupted() {
        for r in &mut runs {
            r.retain(|run| run.repeat < completed_rounds);
        }
        ui.line(format!(
            "ringmesh-bench: interrupted: reporting the {completed_rounds} complete round(s) of {rounds}{pass}"
        ));
    }
    PassRuns {
        runs,
        failed,
        completed_rounds,
    }
}

/// The `--mesh-rate` pass's rows (`rows` of `topologies`, all HTTP/1.1), summarised apart from
/// the main rows: added latency against this pass's `direct`. A row that failed in the main
/// rounds (`failed_before`) or in the pass reads as failed here too, never as a measured row.
fn mesh_rate_summaries(
    topologies: &[Topology],
    rows: &[usize],
    failed_before: &[Option<String>],
    mut pass: PassRuns,
    rate: f64,
) -> report::MeshRatePass {
    let direct: Option<Vec<RunResult>> = rows
        .iter()
        .find(|&&i| topologies[i].kind == Kind::Direct)
        .map(|&i| pass.runs[i].clone());
    let scenarios = rows
        .iter()
        .map(|&i| {
            let topo = &topologies[i];
            let mut s = ScenarioSummary::new(topo.kind, topo.protocol, Status::Ok);
            s.version = topo.version.clone();
            s.io_driver = topo.io_driver.clone();
            s.runs = std::mem::take(&mut pass.runs[i]);
            // The targets are judged from these rows: one whose rounds are not all there fails,
            // rather than be judged from the rounds it survived.
            if let Some(why) = &failed_before[i] {
                s.status = Status::Failed;
                s.notes.push(format!("not measured: failed in the main rounds ({why})"));
            }
            if let Some(why) = pass.failed[i].take() {
                s.status = Status::Failed;
                s.notes.push(why);
            }
            s.summarise(if topo.kind == Kind::Direct {
                None
            } else {
                direct.as_deref()
            });
            if s.under_rate_runs > 0 {
                s.notes.push(format!(
                    "{} open-loop run(s) achieved < 99% of the target rate: their latency describes a lower load",
                    s.under_rate_runs
                ));
            }
            s
        })
        .collect();
    report::MeshRatePass {
        rate_rps: rate,
        completed_rounds: pass.completed_rounds,
        scenarios,
    }
}

/// Writes `path`: the open-loop histograms of each measured scenario of `protocol`, merged
/// over repeats (`latency.svg` for HTTP/1.1, `latency-h2.svg`, `latency-grpc.svg`).
fn write_plot(summaries: &[ScenarioSummary], protocol: Protocol, path: &std::path::Path) -> anyhow::Result<()> {
    let mut merged: Vec<(&'static str, hdrhistogram::Histogram<u64>)> = Vec::new();
    for s in summaries
        .iter()
        .filter(|s| !s.runs.is_empty() && s.protocol == protocol)
    {
        let mut h: Option<hdrhistogram::Histogram<u64>> = None;
        for r in s.runs.iter().filter_map(|r| r.histogram.as_ref()) {
            match &mut h {
                None => h = Some(r.clone()),
                Some(acc) => acc.add(r).context("merging histograms")?,
            }
        }
        if let Some(h) = h {
            merged.push((s.scenario.name(), h));
        }
    }
    let series: Vec<plot::Series<'_>> = merged
        .iter()
        .map(|(name, h)| plot::Series { name, histogram: h })
        .collect();
    let title = match protocol {
        Protocol::Http1 => "open-loop latency by percentile (all repeats merged)".to_owned(),
        p => format!("{}: open-loop latency by percentile (all repeats merged)", p.label()),
    };
    plot::write_svg(&series, &title, path)
}

fn kinds_line(kinds: &[Kind]) -> String {
    kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(" → ")
}

fn protocols_line(protocols: &[Protocol], streams: usize) -> String {
    protocols
        .iter()
        .map(|p| match p {
            Protocol::Http1 => format!("{} (one request per connection)", p.label()),
            p => format!("{} (h2c, {streams} streams per connection)", p.label()),
        })
        .collect::<Vec<_>>()
        .join(", then ")
}

/// The idle-connection test holds HTTP/1.1 connections, so it runs on the HTTP/1.1 rows with
/// a proxy (the HTTP/2 rows' proxies are the same programs, differently configured), but not
/// `captured`'s, `ringmesh-bare`'s or `ringmesh-telemetry`'s: their proxy is `ringmesh`'s,
/// differently reached or configured, and an idle connection's state is the same in each (the
/// telemetry buffers are per worker, not per connection).
fn idle_test_applies(topo: &Topology) -> bool {
    topo.has_proxy()
        && topo.protocol == Protocol::Http1
        && !matches!(topo.kind, Kind::Captured | Kind::RingmeshBare | Kind::RingmeshTelemetry)
}

/// Dispatches the hidden roles (`__echo`, `__proxy`, `__ringmesh`: the `ringmesh` command line,
/// for `captured`'s rules when the `ringmesh` binary was not built) this binary is re-executed
/// in; returns `None` when `args` is an ordinary invocation.
pub fn run_role(args: &[std::ffi::OsString]) -> Option<anyhow::Result<()>> {
    let role = args.get(1)?.to_str()?;
    let rest = args.iter().skip(2).cloned();
    match role {
        "__echo" => Some(ringmesh_loadgen::echo_main(
            std::iter::once(std::ffi::OsString::from("ringmesh-echo")).chain(rest),
        )),
        "__proxy" => {
            let _ = ringmesh_loadgen::raise_nofile_limit(procs::NOFILE_WANT);
            Some(ringmesh_proxy::run_cli(
                std::iter::once(std::ffi::OsString::from("ringmesh-proxy")).chain(rest),
            ))
        }
        "__ringmesh" => Some(
            match ringmesh_control::cli::run(std::iter::once(std::ffi::OsString::from("ringmesh")).chain(rest)) {
                0 => Ok(()),
                code => Err(anyhow::anyhow!("ringmesh exited with status {code}")),
            },
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_folder_is_absolute_even_when_given_relative() {
        let cwd = tempfile::tempdir().unwrap();
        let out = out_dir_in(cwd.path(), Some(std::path::Path::new("rel/run")), 7).unwrap();
        assert!(out.is_absolute(), "{}", out.display());
        assert!(out.ends_with("rel/run") && out.is_dir());
        let default = out_dir_in(cwd.path(), None, 7).unwrap();
        assert!(default.is_absolute() && default.ends_with("target/ringmesh-bench/7"));
        // What nginx is given: every path in its config and on its command line is absolute.
        for protocol in Protocol::ALL {
            let conf = topology::nginx_config(
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
                &default.join("nginx"),
                1024,
                protocol,
                false,
            );
            for line in conf.lines().filter(|l| l.contains("nginx") && l.contains('/')) {
                let path = line.split_whitespace().find(|w| w.contains('/')).unwrap();
                assert!(path.starts_with('/'), "relative path in nginx config: {line}");
            }
        }
    }

    fn plan(args: &[&str]) -> anyhow::Result<Plan> {
        BenchArgs::try_parse_from(std::iter::once("ringmesh-bench").chain(args.iter().copied()))
            .unwrap()
            .validate()
    }

    #[test]
    fn the_mesh_rate_pass_runs_over_the_http1_mesh_rows_unless_asked_not_to() {
        // The default suite: haproxy-mesh after haproxy, and the pass at 1,000 rps over the
        // four mesh scenarios, in round order.
        let p = plan(&[]).unwrap();
        // Every kind, in `Kind::ALL`'s order (whose names topology.rs's tests spell out).
        assert_eq!(p.kinds, Kind::ALL);
        assert_eq!(
            p.mesh_rate,
            Some((
                1000.0,
                vec![Kind::Direct, Kind::Mesh, Kind::MeshPlain, Kind::HaproxyMesh]
            ))
        );
        let p = plan(&["--scenarios", "haproxy-mesh,direct,ringmesh", "--mesh-rate", "500"]).unwrap();
        assert_eq!(p.mesh_rate, Some((500.0, vec![Kind::HaproxyMesh, Kind::Direct])));
        // Not run: asked not to, no HTTP/1.1 rows (Istio's figures are HTTP/1.1's), no mesh.
        assert_eq!(plan(&["--mesh-rate", "0"]).unwrap().mesh_rate, None);
        assert_eq!(plan(&["--protocols", "h2,grpc"]).unwrap().mesh_rate, None);
        assert_eq!(
            plan(&["--scenarios", "direct,ringmesh,haproxy"]).unwrap().mesh_rate,
            None
        );
        let e = plan(&["--mesh-rate=-5"]).unwrap_err().to_string();
        assert!(
            e.contains("--mesh-rate must be 0 (no pass) or in (0, 1e6], got -5"),
            "{e}"
        );
        let e = plan(&["--scenarios", "direct,istio"]).unwrap_err().to_string();
        assert!(e.contains("haproxy, haproxy-mesh, nginx)"), "{e}");
    }

    #[test]
    fn cpus_flag_parses_as_one_list() {
        let a = BenchArgs::try_parse_from(["ringmesh-bench", "--cpus", "0,1"]).unwrap();
        assert_eq!(a.cpus, Some(vec![0, 1]));
        assert_eq!(a.cpu_for(2), Some(0), "echo wraps around to the load generator's CPU");
        assert!(BenchArgs::try_parse_from(["ringmesh-bench", "--cpus", "1-0"]).is_err());
        assert_eq!(BenchArgs::try_parse_from(["ringmesh-bench"]).unwrap().cpus, None);
    }
}
