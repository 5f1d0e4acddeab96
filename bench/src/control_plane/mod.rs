//! `ringmesh-control-bench`: how the control plane scales with the number of proxies.
//!
//! It starts the real `ringmesh-control` binary (the one next to this executable, or
//! `--control-bin`) as its own process on a free loopback port, serving an Istio-shaped mesh
//! from a temporary `--config-dir`, and connects N simulated proxies (see [`fleet`]) from this
//! one process. Then it measures what an operator of a large mesh asks first:
//!
//! * **apply → last ACK**: a `VirtualService`'s weights are changed through the management
//!   API's `Apply` (what `ringmesh apply -f` calls), K times; for each, the time from the call
//!   until the last of the N proxies has a snapshot of the generation `Apply` returned (each
//!   proxy ACKs on receipt), and every proxy's own delay;
//! * **memory and CPU** of the control plane process (`/proc`): RSS with no proxy and with N,
//!   hence RSS per connected proxy; CPU while idle, to connect everyone, and per apply;
//! * **churn**: workloads disconnecting and reconnecting (new connection, `Hello` again),
//!   spread evenly over a window while policy changes keep coming; the push latency to the
//!   proxies that stayed connected and the CPU the control plane burns meanwhile.
//!
//! Everything is on loopback, every wait has a bound, and the control plane is stopped at the
//! end, on error and on Ctrl-C (it is also sent `SIGTERM` if this process dies).

pub mod embedded;
pub mod fleet;
pub mod mesh;
pub mod report;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use clap::Parser;
use ringmesh_api::proto::admin_client::AdminClient;
use ringmesh_api::proto::{ApplyRequest, Document, ProxyStatusRequest, SyncState};
use ringmesh_bench::procs::{free_port, Proc};
use tonic::transport::Channel;

use fleet::{Fleet, ProxyState};
use report::{ApplyPhase, ApplyRun, ChurnPhase, Report, Resources, Stats};

/// Command line of `ringmesh-control-bench`.
#[derive(Debug, Parser)]
#[command(
    name = "ringmesh-control-bench",
    version,
    about = "ringmesh control plane scale benchmark"
)]
pub struct Args {
    /// Simulated proxies (one discovery stream and connection each).
    #[arg(long, default_value_t = 1000)]
    pub proxies: usize,
    /// Applies measured for apply → last ACK.
    #[arg(long, default_value_t = 20)]
    pub repeats: usize,
    /// Services in the mesh (ServiceEntry + DestinationRule v1/v2 + weighted VirtualService each).
    #[arg(long, default_value_t = 4)]
    pub services: usize,
    /// Workloads that disconnect and reconnect during the churn phase (0 skips it).
    #[arg(long, default_value_t = 700)]
    pub churn: usize,
    /// Window over which the reconnects are spread evenly.
    #[arg(long, default_value = "60s", value_parser = ringmesh_loadgen::parse_duration)]
    pub churn_window: Duration,
    /// Time between policy changes during the churn window.
    #[arg(long, default_value = "3s", value_parser = ringmesh_loadgen::parse_duration)]
    pub churn_apply_every: Duration,
    /// Bound on the wait, after the churn window, for every proxy to have the last change and
    /// every endpoint (longer than the control plane's 30 s grace, so that endpoints it
    /// wrongly withdraws show).
    #[arg(long, default_value = "45s", value_parser = ringmesh_loadgen::parse_duration)]
    pub churn_settle: Duration,
    /// How long a reconnecting proxy stays away before it connects again.
    #[arg(long, default_value = "0s", value_parser = ringmesh_loadgen::parse_duration)]
    pub churn_downtime: Duration,
    /// The control plane's `--watch-interval` (default: its own). Applies go through the API,
    /// so this only sets how often it polls its directory and expires disconnected proxies.
    #[arg(long, value_parser = ringmesh_loadgen::parse_duration)]
    pub watch_interval: Option<Duration>,
    /// Length of each idle CPU sample (no proxy; all proxies in sync).
    #[arg(long, default_value = "2s", value_parser = ringmesh_loadgen::parse_duration)]
    pub idle_sample: Duration,
    /// Bound on every wait for the proxies to be in sync (connecting, each apply, after churn).
    #[arg(long, default_value = "300s", value_parser = ringmesh_loadgen::parse_duration)]
    pub sync_timeout: Duration,
    /// Proxies connecting at the same time.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Threads of this process's runtime, which runs every simulated proxy (default: cores).
    #[arg(long)]
    pub client_threads: Option<usize>,
    /// The `ringmesh-control` binary (default: next to this executable).
    #[arg(long, conflicts_with = "embedded_control")]
    pub control_bin: Option<PathBuf>,
    /// Run the control plane from the ringmesh-control library in a child process of this
    /// binary instead of the `ringmesh-control` binary (for tests without that binary).
    #[arg(long)]
    pub embedded_control: bool,
    /// Output directory (default: target/ringmesh-control-bench/<unix-timestamp>/).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs the benchmark with the command line `args` (program name first).
pub fn run(args: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    let command = args
        .iter()
        .map(|a| shell_quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ");
    let cli = Args::try_parse_from(&args).unwrap_or_else(|e| e.exit());
    if cli.proxies == 0 || cli.repeats == 0 {
        bail!("--proxies and --repeats must be at least 1");
    }
    if cli.churn > 0 && (cli.churn_window.is_zero() || cli.churn_apply_every.is_zero()) {
        bail!("--churn-window and --churn-apply-every must be positive when --churn is not 0");
    }
    let threads = cli
        .client_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("sim-proxy")
        .enable_all()
        .build()
        .context("building the runtime")?;
    rt.block_on(async move {
        tokio::select! {
            r = bench(cli, command, threads) => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted (Ctrl-C): the control plane was stopped, no report written"),
        }
    })
}

fn shell_quote(a: &str) -> String {
    if !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@".contains(&b)) {
        a.to_owned()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

/// Where the control plane comes from.
enum ControlSource {
    Binary(PathBuf),
    Embedded(PathBuf),
}

fn locate_control(cli: &Args) -> anyhow::Result<ControlSource> {
    let exe = std::env::current_exe().context("locating this executable")?;
    if cli.embedded_control {
        return Ok(ControlSource::Embedded(exe));
    }
    if let Some(p) = &cli.control_bin {
        if !p.is_file() {
            bail!("--control-bin {}: no such file", p.display());
        }
        return Ok(ControlSource::Binary(p.clone()));
    }
    let dir = exe.parent().context("this executable has no directory")?;
    let mut candidates = vec![dir.join("ringmesh-control")];
    // A test binary lives in target/<profile>/deps/; the binaries are one level up.
    if dir.file_name().is_some_and(|n| n == "deps") {
        if let Some(up) = dir.parent() {
            candidates.push(up.join("ringmesh-control"));
        }
    }
    match candidates.into_iter().find(|c| c.is_file()) {
        Some(c) => Ok(ControlSource::Binary(c)),
        None => bail!(
            "ringmesh-control not found next to {} — build both first: \
             `cargo build --release -p ringmesh-control -p ringmesh-bench` \
             (or pass --control-bin PATH, or --embedded-control)",
            exe.display()
        ),
    }
}

/// Raises this process's open-file limit to hold `want` descriptors (the control plane child
/// inherits it); fails naming both numbers when the hard limit is lower.
fn raise_nofile(want: u64) -> anyhow::Result<u64> {
    let got = ringmesh_loadgen::raise_nofile_limit(want).context("raising RLIMIT_NOFILE")?;
    if got < want {
        bail!("{want} open files are needed but the hard limit is {got}: raise it (ulimit -Hn) or use fewer --proxies");
    }
    Ok(got)
}

/// CPU seconds of the control plane so far.
fn cpu_s(cp: &Proc) -> anyhow::Result<f64> {
    Ok(cp.cpu_time()?.as_secs_f64())
}

/// Cores the control plane uses over `window` (nothing else happening).
async fn idle_cores(cp: &Proc, window: Duration) -> anyhow::Result<f64> {
    let (c0, t0) = (cpu_s(cp)?, Instant::now());
    tokio::time::sleep(window).await;
    Ok((cpu_s(cp)? - c0) / t0.elapsed().as_secs_f64())
}

/// Waits (polling every 10 ms, at most `timeout`) until `done` holds for every proxy; fails
/// at once when a proxy gave up or the control plane died.
async fn wait_all(
    cp: &mut Proc,
    fleet: &Fleet,
    what: &str,
    timeout: Duration,
    done: impl Fn(&ProxyState) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(f) = fleet.failure() {
            bail!("{what}: {f}");
        }
        if fleet.proxies.iter().all(|p| done(p)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let behind: Vec<usize> = (0..fleet.proxies.len()).filter(|&i| !done(&fleet.proxies[i])).collect();
            let p = &fleet.proxies[behind[0]];
            bail!(
                "{what}: {} of {} proxies still not there after {timeout:?}; e.g. proxy {} has version {}, \
                 {} endpoints after {} snapshots",
                behind.len(),
                fleet.proxies.len(),
                behind[0],
                p.version.load(Ordering::Acquire),
                p.endpoints.load(Ordering::Acquire),
                p.snapshots.load(Ordering::Acquire)
            );
        }
        cp.check_alive()?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until no proxy has received a snapshot for 200 ms (at most `timeout`), so the next
/// measurement starts from a quiet control plane.
async fn wait_quiet(fleet: &Fleet, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut last = fleet.snapshots();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = fleet.snapshots();
        if now == last {
            return true;
        }
        last = now;
    }
    false
}

/// Which control plane ran, for the report.
fn describe(source: &ControlSource) -> String {
    match source {
        ControlSource::Binary(p) => {
            let version = std::process::Command::new(p)
                .arg("--version")
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default();
            format!("binary `{}` ({version})", p.display())
        }
        ControlSource::Embedded(_) => {
            "embedded: the ringmesh-control library run by `ringmesh-control-bench __control` (the binary was not used)"
                .into()
        }
    }
}

async fn start_control(
    source: &ControlSource,
    config_dir: &Path,
    out: &Path,
    watch_interval: Option<Duration>,
) -> anyhow::Result<(Proc, SocketAddr)> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut args = vec![
        "--config-dir".to_string(),
        config_dir.display().to_string(),
        "--listen".into(),
        addr.to_string(),
    ];
    if let Some(w) = watch_interval {
        args.extend(["--watch-interval".into(), format!("{}ms", w.as_millis().max(1))]);
    }
    let program = match source {
        ControlSource::Binary(p) => p.clone(),
        ControlSource::Embedded(exe) => {
            args.insert(0, "__control".into());
            exe.clone()
        }
    };
    let mut cp = Proc::spawn("ringmesh-control", &program, &args, out, None)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        cp.check_alive()?;
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok((cp, addr));
        }
        if Instant::now() >= deadline {
            bail!(
                "ringmesh-control not listening on {addr} after 10 s; its stderr:\n{}",
                cp.stderr_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Changes the benchmark's `VirtualService` through the management API, as `ringmesh apply -f`.
struct Applier {
    client: AdminClient<Channel>,
    host: String,
    /// Number of the last change (its weights are [`mesh::weight_of`] it).
    last: u64,
}

impl Applier {
    async fn connect(addr: SocketAddr, host: &str) -> anyhow::Result<Applier> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to the management API at {addr}"))?;
        Ok(Applier {
            client: AdminClient::new(channel),
            host: host.to_owned(),
            last: 0,
        })
    }

    /// Applies change number `last + 1`; returns the generation the proxies will be sent and
    /// when the call was made.
    async fn next(&mut self) -> anyhow::Result<(u64, Instant)> {
        let n = self.last + 1;
        let request = ApplyRequest {
            files: vec![Document {
                source: format!("bench-change-{n}.yaml"),
                yaml: mesh::virtual_service(&self.host, mesh::weight_of(n)),
            }],
            dry_run: false,
        };
        let at = Instant::now();
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.apply(request))
            .await
            .with_context(|| format!("Apply of change {n}: no answer within 30 s"))?
            .with_context(|| format!("Apply of change {n}"))?
            .into_inner();
        if !response.applied {
            bail!("Apply of change {n} was refused: {:?}", response);
        }
        self.last = n;
        Ok((response.generation, at))
    }
}

impl Applier {
    /// Proxies the control plane's registry counts as connected (any state but DISCONNECTED),
    /// as `ringmesh proxy-status` lists them.
    async fn connected_in_registry(&mut self) -> anyhow::Result<usize> {
        let response = tokio::time::timeout(
            Duration::from_secs(30),
            self.client.proxy_status(ProxyStatusRequest::default()),
        )
        .await
        .context("ProxyStatus: no answer within 30 s")?
        .context("ProxyStatus")?
        .into_inner();
        Ok(response
            .proxies
            .iter()
            .filter(|p| p.state() != SyncState::Disconnected)
            .count())
    }
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("ringmesh-control-bench: {}", msg.as_ref());
}

async fn bench(cli: Args, command: String, client_threads: usize) -> anyhow::Result<()> {
    let started_unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let out = cli
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/ringmesh-control-bench").join(started_unix.to_string()));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let config_dir = out.join("config");
    let _ = std::fs::remove_dir_all(&config_dir);
    std::fs::create_dir_all(&config_dir).with_context(|| format!("creating {}", config_dir.display()))?;
    let hosts = mesh::hosts(cli.services);
    mesh::write_mesh(&config_dir, &hosts)?;
    let source = locate_control(&cli)?;
    let nofile = raise_nofile(2 * cli.proxies as u64 + 1024)?;
    let control_plane = describe(&source);
    progress(format!("control plane: {control_plane}"));

    let (mut cp, addr) = start_control(&source, &config_dir, &out, cli.watch_interval).await?;
    let mut applier = Applier::connect(addr, &hosts[0]).await?;
    // The changed VirtualService exists from the start, applied as every later change is.
    let (first_generation, _) = applier.next().await?;
    progress(format!(
        "listening on {addr} (generation {first_generation}); sampling idle"
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle_kib = cp.rss_kib()?;
    let cpu_idle_cores = idle_cores(&cp, cli.idle_sample).await?;

    // Connect everyone and wait until every proxy has every endpoint at the same version.
    let n = cli.proxies;
    progress(format!("connecting {n} proxies"));
    let identities = (0..n).map(|i| fleet::identity(i, &hosts)).collect();
    let (cpu0, t0) = (cpu_s(&cp)?, Instant::now());
    let fleet = Fleet::start(addr, identities, cli.connect_concurrency, cli.churn_downtime);
    wait_all(&mut cp, &fleet, "connecting", cli.sync_timeout, |p| {
        p.endpoints.load(Ordering::Acquire) as usize == n
    })
    .await?;
    let connect_s = t0.elapsed().as_secs_f64();
    wait_quiet(&fleet, cli.sync_timeout).await;
    let cpu_connect_s = cpu_s(&cp)? - cpu0;
    let connect_snapshots = fleet.snapshots();
    let v0 = fleet.proxies[0].version.load(Ordering::Acquire);
    if let Some(i) = fleet
        .proxies
        .iter()
        .position(|p| p.version.load(Ordering::Acquire) != v0)
    {
        bail!("after connecting, proxy {i} serves another version than proxy 0 although all are quiet");
    }
    progress(format!(
        "{n} proxies in sync after {connect_s:.2} s ({connect_snapshots} snapshots); sampling memory"
    ));
    // Steady state: the control plane hands memory freed by the connect burst back to the
    // system one quiet `--watch-interval` tick (1 s) after the last change.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_connected_kib = cp.rss_kib()?;
    let cpu_connected_idle_cores = idle_cores(&cp, cli.idle_sample).await?;

    // Apply → last ACK, K times.
    let mut runs = Vec::new();
    let mut all_delays = Vec::new();
    let (cpu_a0, snaps_a0) = (cpu_s(&cp)?, fleet.snapshots());
    for _ in 0..cli.repeats {
        let before = fleet.snapshots();
        let (generation, t_apply) = applier.next().await?;
        let apply = applier.last;
        wait_all(&mut cp, &fleet, &format!("apply {apply}"), cli.sync_timeout, |p| {
            p.version.load(Ordering::Acquire) >= generation
        })
        .await?;
        wait_quiet(&fleet, cli.sync_timeout).await;
        let mut delays = Vec::with_capacity(n);
        for p in &fleet.proxies {
            let log = p.log();
            if let Some(r) = log.receipts.iter().find(|r| r.version >= generation && r.at >= t_apply) {
                delays.push((r.at - t_apply).as_secs_f64() * 1e3);
            }
        }
        let st = Stats::of(&delays);
        progress(format!(
            "apply {apply}: last ACK {:.1} ms, p50 {:.1} ms ({} of {n} proxies)",
            st.max,
            st.p50,
            delays.len()
        ));
        all_delays.extend_from_slice(&delays);
        runs.push(ApplyRun {
            apply,
            last_ms: st.max,
            per_proxy_ms: st,
            acked: delays.len(),
            snapshots: fleet.snapshots() - before,
        });
    }
    let cpu_apply_s = cpu_s(&cp)? - cpu_a0;
    let apply_snapshots = fleet.snapshots() - snaps_a0;
    let rss_after_applies_kib = cp.rss_kib()?;
    let last: Vec<f64> = runs.iter().map(|r| r.last_ms).collect();
    let apply_phase = ApplyPhase {
        all_acked: runs.iter().all(|r| r.acked == n),
        last_ms: Stats::of(&last),
        per_proxy_ms: Stats::of(&all_delays),
        runs,
    };
    let resources = Resources {
        rss_idle_kib,
        rss_connected_kib,
        rss_per_proxy_kib: (rss_connected_kib as f64 - rss_idle_kib as f64) / n as f64,
        rss_after_applies_kib,
        cpu_idle_cores,
        cpu_connected_idle_cores,
        cpu_connect_s,
        cpu_per_apply_ms: cpu_apply_s * 1e3 / cli.repeats as f64,
        cpu_per_snapshot_us: cpu_apply_s * 1e6 / apply_snapshots.max(1) as f64,
    };

    let churn = if cli.churn > 0 {
        Some(churn_phase(&cli, &mut cp, &fleet, &mut applier).await?)
    } else {
        None
    };

    fleet.stop().await;
    drop(cp);

    let targets = report::judge(&apply_phase, &resources);
    let mut settings = vec![
        ("proxies".to_string(), n.to_string()),
        (
            "services".into(),
            format!(
                "{} (ServiceEntry + DestinationRule v1/v2 + weighted VirtualService each)",
                hosts.len()
            ),
        ),
        ("applies".into(), cli.repeats.to_string()),
        (
            "control plane --watch-interval".into(),
            cli.watch_interval.map_or("its default".into(), |w| format!("{w:?}")),
        ),
        ("simulated proxies' runtime threads".into(), client_threads.to_string()),
        ("proxies connecting at once".into(), cli.connect_concurrency.to_string()),
        ("open-file limit".into(), nofile.to_string()),
    ];
    if cli.churn > 0 {
        settings.push((
            "churn".into(),
            format!(
                "{} reconnects over {:?}, an apply every {:?}, downtime {:?}",
                cli.churn, cli.churn_window, cli.churn_apply_every, cli.churn_downtime
            ),
        ));
    }
    let notes = vec![
        "An apply is one `Admin/Apply` call (as `ringmesh apply -f` makes) changing the weights of one \
         VirtualService; apply → ACK runs from the call until a proxy has a snapshot of the generation the call \
         returned, so it includes the control plane's compile of the whole set and its push debounce (50 ms, \
         `ServerConfig::default`)."
            .into(),
        "ACK time is when the simulated proxy had the whole snapshot decoded (the last part, or the delta, applied); it sends the ACK at once.".into(),
        format!(
            "All {n} simulated proxies run in this process ({client_threads} runtime threads) and share the \
             machine's cores with the control plane; they decode only version, nonce and the \
             endpoints' keys, so most of the CPU goes to the control plane."
        ),
        "RSS per proxy = (RSS with every proxy in sync, 3 s after the last snapshot − RSS before any) / proxies: the registry entry, the \
         stream task, the HTTP/2 connection and its buffers (kernel socket buffers are not in RSS)."
            .into(),
        "CPU per apply is the control plane's CPU from the first apply until the last one was quiet, divided \
         by the applies; it includes the idle polling between them (see CPU idle)."
            .into(),
    ];
    let report = Report {
        command,
        started_unix,
        machine: ringmesh_bench::host_info(),
        settings,
        control_plane,
        proxies: n,
        connect_s,
        connect_snapshots,
        apply: apply_phase,
        resources,
        churn,
        targets,
        notes,
    };
    let md = report::markdown(&report);
    std::fs::write(out.join("report.md"), &md).context("writing report.md")?;
    std::fs::write(out.join("report.json"), serde_json::to_string_pretty(&report)? + "\n")
        .context("writing report.json")?;
    println!("{md}");
    println!("Report: {}", out.display());
    Ok(())
}

/// One thing that happens at a time in the churn window.
#[derive(Debug, Clone, Copy)]
enum Event {
    Reconnect(usize),
    Apply,
}

async fn churn_phase(cli: &Args, cp: &mut Proc, fleet: &Fleet, applier: &mut Applier) -> anyhow::Result<ChurnPhase> {
    let n = fleet.proxies.len();
    let window = cli.churn_window;
    // Reconnects evenly spread (the i-th in the middle of its slot), over distinct proxies
    // spread across the fleet while there are fewer reconnects than proxies.
    let mut events: Vec<(Duration, Event)> = (0..cli.churn)
        .map(|i| {
            let at = window.mul_f64((i as f64 + 0.5) / cli.churn as f64);
            (at, Event::Reconnect((i * n / cli.churn.min(n)) % n))
        })
        .collect();
    let mut k = 1;
    while cli.churn_apply_every * k < window {
        events.push((cli.churn_apply_every * k, Event::Apply));
        k += 1;
    }
    events.sort_by_key(|e| e.0);
    progress(format!(
        "churn: {} reconnects and {} applies over {window:?}",
        cli.churn,
        k - 1
    ));
    let streams0: u64 = fleet
        .proxies
        .iter()
        .map(|p| p.streams.load(Ordering::Relaxed) as u64)
        .sum();
    let snaps0 = fleet.snapshots();
    let (cpu0, start) = (cpu_s(cp)?, tokio::time::Instant::now());
    let mut applies: Vec<(u64, Instant)> = Vec::new(); // (generation, call time)
    for (at, ev) in events {
        tokio::time::sleep_until(start + at).await;
        match ev {
            Event::Reconnect(i) => fleet.reconnect(i),
            Event::Apply => applies.push(applier.next().await?),
        }
        if let Some(f) = fleet.failure() {
            bail!("churn: {f}");
        }
    }
    tokio::time::sleep_until(start + window).await;
    let cpu_cores = (cpu_s(cp)? - cpu0) / window.as_secs_f64();
    let snapshots = fleet.snapshots() - snaps0;
    let last = applies.last().map_or(0, |a| a.0);
    let final_synced = wait_all(cp, fleet, "after churn", cli.churn_settle, |p| {
        p.version.load(Ordering::Acquire) >= last && p.endpoints.load(Ordering::Acquire) as usize == n
    })
    .await
    .is_ok();
    if let Some(f) = fleet.failure() {
        bail!("churn: {f}");
    }
    wait_quiet(fleet, cli.sync_timeout).await;
    let open = fleet
        .proxies
        .iter()
        .filter(|p| p.log().streams.last().is_some_and(|s| s.closed.is_none()))
        .count();
    let registered = applier.connected_in_registry().await?;
    let streams1: u64 = fleet
        .proxies
        .iter()
        .map(|p| p.streams.load(Ordering::Relaxed) as u64)
        .sum();

    let (mut delays, mut excluded, mut interrupted, mut missing) = (Vec::new(), 0, 0, 0);
    for p in &fleet.proxies {
        let log = p.log();
        for &(a, t) in &applies {
            // The stream that was open and in sync when the change was applied.
            let Some(stream) = log
                .streams
                .iter()
                .position(|s| s.synced.is_some_and(|x| x <= t) && s.closed.is_none_or(|c| c > t))
            else {
                excluded += 1;
                continue;
            };
            match log.receipts.iter().find(|r| r.stream == stream && r.version >= a) {
                Some(r) => delays.push((r.at - t).as_secs_f64() * 1e3),
                None if log.streams[stream].closed.is_some() => interrupted += 1,
                None => missing += 1,
            }
        }
    }
    let phase = ChurnPhase {
        reconnects: cli.churn,
        reconnects_done: streams1 - streams0,
        applies: applies.len(),
        window_s: window.as_secs_f64(),
        push_ms: Stats::of(&delays),
        excluded_reconnected: excluded,
        interrupted,
        missing,
        cpu_cores,
        snapshots,
        final_synced,
        open_streams: open,
        connected_in_registry: registered,
        final_endpoints_min: fleet
            .proxies
            .iter()
            .map(|p| p.endpoints.load(Ordering::Acquire))
            .min()
            .unwrap_or(0),
        rss_after_kib: cp.rss_kib()?,
    };
    progress(format!(
        "churn: push p99 {:.1} ms over {} receipts, control plane {:.3} cores",
        phase.push_ms.p99, phase.push_ms.count, phase.cpu_cores
    ));
    Ok(phase)
}
