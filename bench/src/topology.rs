//! The topologies a scenario measures, and how each is brought up.
//!
//! Every topology puts one hop (none for `direct`, two ringmesh proxies for `mesh` and
//! `mesh-plain`, as between a client's and a server's sidecar, with mutual TLS between them or
//! without, and two haproxies with mutual TLS between them for `haproxy-mesh`) between the load
//! generator and the same shared echo upstream, so the only thing that differs between
//! scenarios is the proxying. haproxy and nginx are configured the way their own tuning guides recommend for a
//! keep-alive reverse proxy on one core (one thread/worker, keep-alive and connection reuse
//! to the upstream, no access log) — the comparison is against each proxy at its best, not
//! at its defaults. Their config files are written into the output directory beside the
//! report so that anyone can check them.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::Serialize;

use crate::pki::{IdentityFiles, MeshPki, Side};
use crate::procs::{free_port, http_get, http_get_status, Proc};
use crate::protocol::Protocol;
use crate::span_sink::SpanSink;

/// The `Host` every request carries; the ringmesh ServiceEntry is named after it.
pub const HOST: &str = "echo.bench";

/// One topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Load generator straight to the echo server: the baseline.
    Direct,
    /// Through one ringmesh-proxy (the sidecar position), its telemetry as the proxy defaults
    /// it (Istio's metrics and the reason header on, no access log, no trace export).
    Ringmesh,
    /// `ringmesh` with every telemetry off that can be: no Istio metrics, no reason header,
    /// tracing sampling 0, no access log. The floor the telemetry targets are judged from.
    #[serde(rename = "ringmesh-bare")]
    RingmeshBare,
    /// `ringmesh` with full telemetry: Istio's metrics, a JSON access log to a file, tracing at
    /// 1 % with its spans exported to a collector the suite runs. Checked after the rounds: a
    /// row that wrote no log line or exported no span fails.
    #[serde(rename = "ringmesh-telemetry")]
    RingmeshTelemetry,
    /// `ringmesh` reached as a sidecar is: the load generator dials a service's virtual IP and
    /// the nat rules of `ringmesh iptables` redirect the connection to the proxy's capture
    /// listener, all in a network namespace of the suite's (`captured.rs`). Needs root.
    Captured,
    /// Through two ringmesh-proxies: client-side sidecar → server-side sidecar, mutual TLS
    /// between them (HTTP/2 inside), the server side's inbound listener STRICT.
    Mesh,
    /// `mesh` without mTLS: the same two proxies, plaintext h2c between them, kept so that
    /// the cost of mTLS is read off one run, side by side.
    #[serde(rename = "mesh-plain")]
    MeshPlain,
    /// Through one haproxy (if installed).
    Haproxy,
    /// `mesh` built of two haproxies (if installed): client-side haproxy → mutual TLS, HTTP/2
    /// inside → server-side haproxy → echo, on `mesh`'s certificates. A third party's floor
    /// for the mesh targets, measured in the same run: what two processes in a row with an mTLS
    /// hop between them cost on this machine, whoever wrote them.
    #[serde(rename = "haproxy-mesh")]
    HaproxyMesh,
    /// Through one nginx (if installed).
    Nginx,
}

impl Kind {
    /// Every kind, in the default order.
    pub const ALL: [Kind; 10] = [
        Kind::Direct,
        Kind::Ringmesh,
        Kind::RingmeshBare,
        Kind::RingmeshTelemetry,
        Kind::Captured,
        Kind::Mesh,
        Kind::MeshPlain,
        Kind::Haproxy,
        Kind::HaproxyMesh,
        Kind::Nginx,
    ];

    /// The scenario name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Ringmesh => "ringmesh",
            Kind::RingmeshBare => "ringmesh-bare",
            Kind::RingmeshTelemetry => "ringmesh-telemetry",
            Kind::Captured => "captured",
            Kind::Mesh => "mesh",
            Kind::MeshPlain => "mesh-plain",
            Kind::Haproxy => "haproxy",
            Kind::HaproxyMesh => "haproxy-mesh",
            Kind::Nginx => "nginx",
        }
    }

    /// Parses a scenario name (`sidecar` is another name for `ringmesh`).
    pub fn parse(s: &str) -> Option<Kind> {
        match s.trim() {
            "sidecar" => Some(Kind::Ringmesh),
            s => Kind::ALL.into_iter().find(|k| k.name() == s),
        }
    }

    /// The proxy processes in a row of this kind, over which its CPU and RSS are summed.
    pub fn proxies(self) -> usize {
        match self {
            Kind::Direct => 0,
            Kind::Mesh | Kind::MeshPlain | Kind::HaproxyMesh => 2,
            Kind::Ringmesh
            | Kind::RingmeshBare
            | Kind::RingmeshTelemetry
            | Kind::Captured
            | Kind::Haproxy
            | Kind::Nginx => 1,
        }
    }

    /// True for the rows whose proxies are ringmesh-proxies, whose own view (the latency each
    /// proxy measures of itself, on its admin port) the suite reads beside the load generator's.
    pub fn is_ringmesh(self) -> bool {
        matches!(
            self,
            Kind::Ringmesh
                | Kind::RingmeshBare
                | Kind::RingmeshTelemetry
                | Kind::Captured
                | Kind::Mesh
                | Kind::MeshPlain
        )
    }

    /// The external binary this kind needs on PATH, if any.
    pub fn external_binary(self) -> Option<&'static str> {
        match self {
            Kind::Haproxy | Kind::HaproxyMesh => Some("haproxy"),
            Kind::Nginx => Some("nginx"),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Finds `name` in `$PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Why `kind` cannot run on this machine, in words for the report (`None`: it can). A row that
/// cannot is skipped with this note, never run to fail.
pub fn unavailable(kind: Kind) -> Option<String> {
    if let Some(bin) = kind.external_binary() {
        if which(bin).is_none() {
            return Some(format!("`{bin}` is not on PATH (install it to compare)"));
        }
    }
    if kind == Kind::Captured {
        // SAFETY: geteuid(2) cannot fail and touches no memory.
        let euid = unsafe { libc::geteuid() };
        return crate::captured::Tools::find(euid, &ringmesh_control::capture::find_program).err();
    }
    None
}

/// How the echo upstream is run: the shared one, and the `captured` row's own.
#[derive(Debug, Clone, PartialEq)]
pub struct Echo {
    /// Response body size, bytes.
    pub body_size: usize,
    /// CPU to pin it to, if pinning.
    pub cpu: Option<usize>,
}

impl Echo {
    /// The arguments of `ringmesh-bench __echo` listening on `listen`.
    pub fn args(&self, listen: SocketAddr) -> Vec<String> {
        let mut args = vec![
            "__echo".to_owned(),
            "--listen".into(),
            listen.to_string(),
            "--workers".into(),
            "1".into(),
            "--body-size".into(),
            self.body_size.to_string(),
            "--instance".into(),
            "bench".into(),
        ];
        if let Some(cpu) = self.cpu {
            args.extend(["--cpus".into(), cpu.to_string()]);
        }
        args
    }
}

/// What every topology shares.
#[derive(Debug, Clone)]
pub struct Env {
    /// Where configs and logs go.
    pub out_dir: PathBuf,
    /// This binary, re-executed in roles.
    pub self_exe: PathBuf,
    /// The ringmesh-proxy the ringmesh scenarios run.
    pub proxy: ProxyBinary,
    /// The shared echo upstream.
    pub echo_addr: SocketAddr,
    /// How the shared echo runs, so that a row with an echo of its own (`captured`) runs it alike.
    pub echo: Echo,
    /// ringmesh-proxy workers.
    pub proxy_workers: usize,
    /// CPU to pin proxy processes to, if pinning.
    pub proxy_cpu: Option<usize>,
    /// The open-file limit children inherit.
    pub nofile: u64,
    /// The run's mesh CA and workload certificates (`OUT/pki/`), made when `mesh` or
    /// `haproxy-mesh` is among the scenarios; they fail to start without them.
    pub pki: Option<MeshPki>,
}

/// Which ringmesh-proxy the ringmesh scenarios run.
#[derive(Debug, Clone, PartialEq)]
pub enum ProxyBinary {
    /// The `ringmesh-proxy` binary, as deployed.
    Standalone(PathBuf),
    /// This binary in its `__proxy` role: the same proxy code, but inside a larger binary (the
    /// load generator, plots, the control-plane bench), whose extra text pages add to the
    /// proxy's file-backed RSS (about 0.8 MiB here).
    Embedded(PathBuf),
}

impl ProxyBinary {
    /// `flag` if given (it must exist), else `ringmesh-proxy` next to `self_exe` if built,
    /// else `self_exe` itself.
    pub fn locate(flag: Option<&Path>, self_exe: &Path) -> anyhow::Result<ProxyBinary> {
        if let Some(path) = flag {
            anyhow::ensure!(path.is_file(), "--proxy-bin {}: no such file", path.display());
            return Ok(ProxyBinary::Standalone(path.to_owned()));
        }
        let sibling = self_exe.with_file_name("ringmesh-proxy");
        Ok(if sibling.is_file() {
            ProxyBinary::Standalone(sibling)
        } else {
            ProxyBinary::Embedded(self_exe.to_owned())
        })
    }

    /// The program file.
    pub fn path(&self) -> &Path {
        match self {
            ProxyBinary::Standalone(p) | ProxyBinary::Embedded(p) => p,
        }
    }

    /// The same kind of binary at another path (a copy of this one).
    pub fn moved_to(&self, path: PathBuf) -> ProxyBinary {
        match self {
            ProxyBinary::Standalone(_) => ProxyBinary::Standalone(path),
            ProxyBinary::Embedded(_) => ProxyBinary::Embedded(path),
        }
    }

    /// The program and arguments that run a proxy on `config`.
    pub fn command(&self, config: &Path) -> (&Path, Vec<String>) {
        let config = config.display().to_string();
        match self {
            ProxyBinary::Standalone(p) => (p, vec!["--config".into(), config]),
            ProxyBinary::Embedded(p) => (p, vec!["__proxy".into(), "--config".into(), config]),
        }
    }

    /// For the report.
    pub fn describe(&self) -> String {
        match self {
            ProxyBinary::Standalone(p) => format!("binary {}", p.display()),
            ProxyBinary::Embedded(_) => {
                "embedded in ringmesh-bench; build ringmesh-proxy to measure the binary itself".into()
            }
        }
    }
}

/// A running topology.
#[derive(Debug)]
pub struct Topology {
    /// Which one.
    pub kind: Kind,
    /// What the load generator speaks to it, and it to the echo.
    pub protocol: Protocol,
    /// Where the load generator sends requests.
    pub entry: SocketAddr,
    /// The proxy processes (none for `direct`, two for `mesh`, `mesh-plain` and
    /// `haproxy-mesh`: client side first). CPU time and RSS are summed over all of them.
    pub proxies: Vec<Proc>,
    /// The proxy's I/O driver when it reports one (ringmesh logs `io=…` at start-up).
    pub io_driver: Option<String>,
    /// The config file(s) written for the proxies.
    pub config_paths: Vec<PathBuf>,
    /// Version string of an external proxy.
    pub version: Option<String>,
    /// `mesh` and `mesh-plain`: what the proxies' counters showed of the hop between them
    /// after the readiness probe crossed it.
    pub hop: Option<HopCheck>,
    /// The admin ports of the row's ringmesh-proxies (in `proxies`' order; none for other
    /// proxies), where the suite reads each proxy's own view of its latency
    /// (`/stats/histograms`) and its counters.
    pub admins: Vec<ProxyAdmin>,
    /// `ringmesh-telemetry`: where its proxy writes its access log and sends its spans, checked
    /// after the rounds.
    pub full_telemetry: Option<FullTelemetry>,
    /// `captured`: the network namespace the row runs in, with its own echo. Last, so that the
    /// proxies above stop before the namespace is deleted.
    pub pod: Option<crate::captured::Pod>,
}

/// One ringmesh-proxy's admin address, with the role that names its files and messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyAdmin {
    /// The proxy's role (`ringmesh`, `mesh-client-h2`, …).
    pub role: String,
    /// `proxy` alone in its row, else `client side` or `server side` of a mesh.
    pub side: &'static str,
    /// Its admin address (`/stats/histograms`, `/stats/prometheus`): for `captured`, inside the
    /// row's network namespace ([`Topology::reach`]).
    pub addr: SocketAddr,
}

/// What a `ringmesh-telemetry` proxy was told to write, and where.
#[derive(Debug)]
pub struct FullTelemetry {
    /// Its access log (`OUT/<role>-access.log`, JSON lines).
    pub access_log: PathBuf,
    /// The OTLP collector its spans go to: the suite's own, one per row, which counts what
    /// it receives; it stops with the row.
    pub collector: SpanSink,
}

/// How long a proxy may take to become ready.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(10);

impl Topology {
    /// The row's name in messages and file names: the scenario, then the protocol unless it
    /// is HTTP/1.1 (`ringmesh`, `ringmesh-h2`, `mesh-grpc`).
    pub fn row_name(&self) -> String {
        format!("{}{}", self.kind, self.protocol.suffix())
    }

    /// True when there is at least one proxy process to sample.
    pub fn has_proxy(&self) -> bool {
        !self.proxies.is_empty()
    }

    /// CPU time (user + system) summed over the proxy processes (and their children).
    pub fn proxy_cpu_time(&self) -> anyhow::Result<Option<Duration>> {
        if self.proxies.is_empty() {
            return Ok(None);
        }
        let mut total = Duration::ZERO;
        for p in &self.proxies {
            total += p.cpu_time()?;
        }
        Ok(Some(total))
    }

    /// VmRSS summed over the proxy processes (and their children), KiB.
    pub fn proxy_rss_kib(&self) -> anyhow::Result<u64> {
        anyhow::ensure!(!self.proxies.is_empty(), "{} has no proxy process", self.kind);
        let mut total = 0;
        for p in &self.proxies {
            total += p.rss_kib()?;
        }
        Ok(total)
    }

    /// Number of processes summed over the proxies' process trees.
    pub fn process_count(&self) -> usize {
        self.proxies.iter().map(Proc::process_count).sum()
    }

    /// Errors (with the stderr tail) if a proxy process (or the row's own echo) has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.proxies {
            p.check_alive()?;
        }
        if let Some(pod) = &mut self.pod {
            pod.echo.check_alive()?;
        }
        Ok(())
    }

    /// Runs `f` where the row's entry is dialled from: inside the row's network namespace for
    /// `captured` (on a thread of its own, whose threads are there too), here for the others.
    pub fn reach<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        match &self.pod {
            Some(pod) => pod.run(f),
            None => Ok(f()),
        }
    }

    /// The echo this row forwards to: its own (`captured`), else `shared`.
    pub fn upstream<'a>(&'a self, shared: &'a Proc) -> &'a Proc {
        self.pod.as_ref().map_or(shared, |pod| &pod.echo)
    }
}

/// Brings up `kind` in front of the echo server, speaking `protocol` on both sides, and
/// waits until a request of that protocol through it succeeds.
pub fn start(kind: Kind, protocol: Protocol, env: &Env) -> anyhow::Result<Topology> {
    match kind {
        Kind::Direct => {
            // The echo answered HTTP/1.1 before any row started; wait until it answers this
            // protocol too (a probe is one short run, which a loaded machine may miss).
            if protocol.is_h2() {
                let deadline = std::time::Instant::now() + READY_TIMEOUT;
                let mut probe = probe_through(env.echo_addr, protocol);
                while !probe() {
                    anyhow::ensure!(
                        std::time::Instant::now() < deadline,
                        "the echo does not answer {} at {} within {READY_TIMEOUT:?}",
                        protocol.label(),
                        env.echo_addr
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Ok(Topology {
                kind,
                protocol,
                entry: env.echo_addr,
                proxies: Vec::new(),
                io_driver: None,
                config_paths: Vec::new(),
                version: None,
                hop: None,
                admins: Vec::new(),
                full_telemetry: None,
                pod: None,
            })
        }
        Kind::Ringmesh | Kind::RingmeshBare | Kind::RingmeshTelemetry => start_ringmesh(env, protocol, kind),
        Kind::Captured => crate::captured::start(env, protocol),
        Kind::Mesh => start_mesh(env, protocol, Kind::Mesh),
        Kind::MeshPlain => start_mesh(env, protocol, Kind::MeshPlain),
        Kind::Haproxy => start_haproxy(env, protocol),
        Kind::HaproxyMesh => start_haproxy_mesh(env, protocol),
        Kind::Nginx => start_nginx(env, protocol),
    }
}

/// A readiness probe through `entry`: one `GET /` answered `200` for HTTP/1.1; for HTTP/2 and
/// gRPC a short closed-loop run of the load generator on one stream, with at least one
/// success, so the probe speaks exactly what the measurement will.
pub(crate) fn probe_through(entry: SocketAddr, protocol: Protocol) -> impl FnMut() -> bool {
    move || match protocol {
        Protocol::Http1 => matches!(http_get_status(entry, HOST, "/"), Ok(200)),
        _ => crate::measure::probe(entry, protocol),
    }
}

/// The file and role name of `name` for `protocol` (`ringmesh`, `ringmesh-h2`).
pub(crate) fn with_suffix(name: &str, protocol: Protocol) -> String {
    format!("{name}{}", protocol.suffix())
}

/// Where a ringmesh-proxy stands in its topology, which decides what its config holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place<'a> {
    /// Alone in front of the echo (`ringmesh`, the per-worker CPU run): one outbound listener,
    /// the echo as a plain endpoint, no workload. What the suite always ran.
    Sidecar,
    /// One side of the hop of `mesh` or `mesh-plain`. Both sides are workloads of namespace
    /// `bench` (`spec.workload`). The client side's listener is outbound and its one endpoint,
    /// the server side, is labelled `security.istio.io/tlsMode: istio`, as Istio marks an
    /// endpoint with a sidecar: the client side then knows its peer is a proxy and talks HTTP/2
    /// to it whatever the load generator speaks (and mTLS when it has a certificate). The
    /// server side's listener is `direction: INBOUND`, where the workload's
    /// `PeerAuthentication` applies.
    Mesh {
        /// Which side.
        side: Side,
        /// What the hop between the two is.
        hop: Hop<'a>,
    },
    /// The `captured` row's proxy: no listener of its own but the capture listeners
    /// (`spec.capture`, IPv4 only), and the echo's ServiceEntry gets `listener` as its virtual
    /// IP and port, which the app (the load generator) dials and the nat rules redirect.
    Captured,
}

/// What the hop between the two proxies of a mesh topology is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop<'a> {
    /// Mutual TLS (`mesh`): each side has its workload certificate (`spec.identity`), which
    /// turns on auto mTLS towards the labelled endpoint, and the server side's
    /// `PeerAuthentication` is `STRICT`, so a hop that is not mTLS is refused, not served.
    Mtls(&'a IdentityFiles),
    /// Plaintext h2c (`mesh-plain`): no certificate on either side. A proxy without a workload
    /// identity reaches other proxies in plaintext (auto mTLS needs a certificate to prove), so
    /// no `DestinationRule` is needed; the server side's `PeerAuthentication` is `DISABLE`,
    /// saying in its config what the row measures. Everything else is `mesh`'s.
    Plaintext,
}

impl Place<'_> {
    /// Whether the proxy's own listener serves a plaintext request: all but a STRICT server
    /// side, which only the client side (with its certificate) can reach.
    pub fn serves_plaintext(&self) -> bool {
        !matches!(
            self,
            Place::Mesh {
                side: Side::Server,
                hop: Hop::Mtls(_)
            }
        )
    }
}

/// What a ringmesh-proxy's `spec.telemetry` says. The suite runs one proxy in the sidecar place
/// three ways, so that what telemetry costs is read off one run, side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Telemetry<'a> {
    /// No `spec.telemetry`: the proxy's defaults (Istio's metrics and the reason header on, no
    /// access log, no trace export). `ringmesh`, and every row but the two below.
    Default,
    /// `ringmesh-bare`: everything off that can be. Istio's metrics, the reason header and
    /// sampling off; the access log is off unless configured. (The proxy's own-latency
    /// histograms stay: they are what the suite reads of every ringmesh row.)
    Bare,
    /// `ringmesh-telemetry`: Istio's metrics, a JSON access log appended to `access_log`, and
    /// tracing at [`TRACING_SAMPLING_PERCENT`] with its spans exported to `collector`
    /// ([`tracing_lines`]).
    Full {
        /// The access log file.
        access_log: &'a Path,
        /// The OTLP/gRPC collector the spans go to.
        collector: SocketAddr,
    },
}

/// Percent of requests the `ringmesh-telemetry` row's proxy samples (Istio's default
/// `randomSamplingPercentage`).
pub const TRACING_SAMPLING_PERCENT: f64 = 1.0;

impl Telemetry<'_> {
    /// The `spec.telemetry` block (after `spec`'s addresses), or nothing for the defaults.
    fn render(&self) -> String {
        match *self {
            Telemetry::Default => String::new(),
            Telemetry::Bare => {
                "\n  telemetry:\n    metrics: {istio: false}\n    reasonHeader: false\n    tracing: {sampling: 0}"
                    .into()
            }
            Telemetry::Full { access_log, collector } => format!(
                "\n  telemetry:\n    metrics: {{istio: true}}\n    accessLog: {{path: {}, encoding: JSON}}\n{}",
                yaml_path(access_log),
                tracing_lines(collector)
            ),
        }
    }
}

/// The one place the `ringmesh-telemetry` row's tracing config is written (under
/// `spec.telemetry`, indented four spaces, one line, no final newline): sampling at
/// [`TRACING_SAMPLING_PERCENT`], spans exported over OTLP/gRPC (the proxy's default protocol,
/// and Istio's) to `collector`, the suite's [`SpanSink`]. Everything else is the proxy's
/// defaults (batches of up to 512 spans, sent at least every 5 s, a 5 s timeout per export),
/// which [`crate::telemetry`] waits out after the rounds before it counts what arrived.
pub fn tracing_lines(collector: SocketAddr) -> String {
    format!(
        "    tracing: {{sampling: {TRACING_SAMPLING_PERCENT}, opentelemetry: {{service: {}, port: {}}}}}",
        collector.ip(),
        collector.port()
    )
}

/// One ringmesh-proxy of a topology: its addresses and what it forwards `HOST` to.
#[derive(Debug, Clone, Copy)]
pub struct RingmeshSpec<'a> {
    /// Worker threads.
    pub workers: usize,
    /// Forces a driver (`epoll`); `None` leaves the proxy's default (io_uring where allowed).
    pub io: Option<&'a str>,
    /// Admin address.
    pub admin: SocketAddr,
    /// Health address (`/healthz/ready`).
    pub health: SocketAddr,
    /// Metrics address.
    pub metrics: SocketAddr,
    /// The HTTP listener (HTTP/1.1 and h2c on the same port; inbound on a mesh's server side);
    /// for [`Place::Captured`], the virtual IP and port the capture listener takes connections
    /// to.
    pub listener: SocketAddr,
    /// The one endpoint of `HOST`: the echo, or the mesh's server-side proxy.
    pub upstream: SocketAddr,
    /// Declared as the ServiceEntry port's protocol, so the proxy speaks it upstream.
    pub protocol: Protocol,
    /// Alone, or which side of a mesh hop.
    pub place: Place<'a>,
    /// Its `spec.telemetry`.
    pub telemetry: Telemetry<'a>,
}

/// A path as a YAML double-quoted scalar (JSON's string syntax is YAML's), so an output folder
/// with spaces or quotes in its name cannot break the config.
fn yaml_path(p: &Path) -> String {
    serde_json::to_string(&p.display().to_string()).expect("a string serializes")
}

impl RingmeshSpec<'_> {
    /// The config: one HTTP listener and a STATIC ServiceEntry for the upstream; for a mesh
    /// side, its workload, its certificate and (server side) its `PeerAuthentication`.
    /// `Place::Sidecar` renders what the suite always ran.
    pub fn render(&self) -> String {
        let RingmeshSpec {
            workers,
            io,
            admin,
            health,
            metrics,
            listener,
            upstream,
            protocol,
            place,
            telemetry,
        } = *self;
        let (port_name, port_protocol) = protocol.service_port();
        let outbound =
            |listener| format!("  listeners:\n  - {{name: outbound, address: \"{listener}\", protocol: HTTP}}\n");
        let (header, workload, identity, listener_line, labels, peer_authn) = match place {
            Place::Sidecar => (
                "one outbound listener in front of the echo upstream.".to_owned(),
                String::new(),
                String::new(),
                outbound(listener),
                "",
                String::new(),
            ),
            Place::Captured => (
                format!(
                    "the captured row's proxy: connections to the echo's virtual IP {listener}, redirected by `ringmesh iptables`, arrive on the capture listener."
                ),
                String::new(),
                String::new(),
                "  capture: {ipv6: false}\n".to_owned(),
                "",
                String::new(),
            ),
            Place::Mesh { side, hop } => {
                let sa = side.service_account();
                let workload = format!(
                    "\n  workload: {{name: {sa}, namespace: {ns}, serviceAccount: {sa}}}",
                    ns = crate::pki::NAMESPACE
                );
                let (identity, hop_words, mode) = match hop {
                    Hop::Mtls(files) => (
                        format!(
                            "\n  identity: {{certFile: {}, keyFile: {}, caFile: {}}}",
                            yaml_path(&files.cert),
                            yaml_path(&files.key),
                            yaml_path(&files.ca)
                        ),
                        "mutual TLS",
                        "STRICT",
                    ),
                    Hop::Plaintext => (String::new(), "plaintext h2c", "DISABLE"),
                };
                match side {
                    Side::Client => (
                        format!("the mesh's client-side proxy; its one endpoint, the server-side proxy, is reached over {hop_words}."),
                        workload,
                        identity,
                        outbound(listener),
                        ", labels: {\"security.istio.io/tlsMode\": istio}",
                        String::new(),
                    ),
                    Side::Server => (
                        format!("the mesh's server-side proxy: an inbound listener ({hop_words}) in front of the echo upstream."),
                        workload,
                        identity,
                        format!("  listeners:\n  - {{name: inbound, address: \"{listener}\", protocol: HTTP, direction: INBOUND}}\n"),
                        "",
                        format!(
                            "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: {ns}}}\nspec:\n  mtls: {{mode: {mode}}}\n",
                            ns = crate::pki::NAMESPACE
                        ),
                    ),
                }
            }
        };
        format!(
            r#"# Written by ringmesh-bench: {header}
apiVersion: ringmesh.io/v1alpha1
kind: ProxyConfig
metadata: {{name: bench}}
spec:
  workers: {workers}{io_line}
  adminAddress: {admin}
  healthAddress: {health}
  metricsAddress: {metrics}{workload}{identity}{telemetry}
{listener_line}{peer_authn}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo}}
spec:
  hosts: [{HOST}]
{addresses}  ports: [{{number: {service_port}, name: {port_name}, protocol: {port_protocol}}}]
  resolution: STATIC
  endpoints: [{{address: {echo_ip}, ports: {{{port_name}: {echo_port}}}{labels}}}]
"#,
            echo_ip = upstream.ip(),
            echo_port = upstream.port(),
            addresses = match place {
                Place::Captured => format!("  addresses: [{}]\n", listener.ip()),
                _ => String::new(),
            },
            service_port = match place {
                Place::Captured => listener.port(),
                _ => 8080,
            },
            io_line = io.map_or(String::new(), |io| format!("\n  io: {io}")),
            telemetry = telemetry.render(),
        )
    }
}

pub(crate) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A ringmesh-proxy started by [`spawn_ringmesh`].
#[derive(Debug)]
pub(crate) struct Spawned {
    /// The process.
    pub proc: Proc,
    /// Its HTTP listener.
    pub entry: SocketAddr,
    /// Its `/stats/prometheus`.
    pub metrics: SocketAddr,
    /// Its admin address (`/stats/histograms`).
    pub admin: SocketAddr,
    /// Its config file.
    pub path: PathBuf,
}

impl Spawned {
    /// Its admin port, named by its role and its `side` of the row (`proxy` alone).
    pub(crate) fn proxy_admin(&self, side: &'static str) -> ProxyAdmin {
        ProxyAdmin {
            role: self.proc.role.clone(),
            side,
            addr: self.admin,
        }
    }
}

/// Starts one ringmesh-proxy (role `role`, config `<role>.yaml`) that forwards `HOST` to
/// `upstream`, and waits until it is ready and, where its listener serves plaintext
/// ([`Place::serves_plaintext`]), a request through it succeeds.
pub(crate) fn spawn_ringmesh(
    env: &Env,
    role: &str,
    upstream: SocketAddr,
    io: Option<&str>,
    protocol: Protocol,
    place: Place<'_>,
    telemetry: Telemetry<'_>,
) -> anyhow::Result<Spawned> {
    let admin = loopback(free_port()?);
    let health = loopback(free_port()?);
    let metrics = loopback(free_port()?);
    let entry = loopback(free_port()?);
    let path = env.out_dir.join(format!("{role}.yaml"));
    let spec = RingmeshSpec {
        workers: env.proxy_workers,
        io,
        admin,
        health,
        metrics,
        listener: entry,
        upstream,
        protocol,
        place,
        telemetry,
    };
    std::fs::write(&path, spec.render()).with_context(|| format!("writing {}", path.display()))?;
    let (exe, args) = env.proxy.command(&path);
    let mut proc = Proc::spawn(role, exe, &args, &env.out_dir, env.proxy_cpu)?;
    // A STRICT inbound listener's proxy is not ready until its certificate is loaded.
    proc.wait_ready(&format!("GET http://{health}/healthz/ready"), READY_TIMEOUT, || {
        matches!(http_get_status(health, "localhost", "/healthz/ready"), Ok(200))
    })?;
    if place.serves_plaintext() {
        proc.wait_ready(
            &probe_description(entry, protocol),
            READY_TIMEOUT,
            probe_through(entry, protocol),
        )?;
    }
    Ok(Spawned {
        proc,
        entry,
        metrics,
        admin,
        path,
    })
}

/// What a readiness probe sends, for the error when it never succeeds.
pub(crate) fn probe_description(entry: SocketAddr, protocol: Protocol) -> String {
    match protocol {
        Protocol::Http1 => format!("GET http://{entry}/ with Host: {HOST}"),
        Protocol::H2 => format!("h2c GET http://{entry}/ with :authority {HOST}"),
        Protocol::Grpc => format!("gRPC unary call over h2c to {entry} with :authority {HOST}"),
    }
}

/// `ringmesh`, `ringmesh-bare` and `ringmesh-telemetry`: one ringmesh-proxy in front of the
/// echo, with the proxy's default telemetry, none, or all of it ([`Telemetry`]). The full
/// row's access log must have its first line (the readiness probe's) within
/// [`ACCESS_LOG_TIMEOUT`], or the row fails to start: its figures would not be a logging
/// proxy's.
fn start_ringmesh(env: &Env, protocol: Protocol, kind: Kind) -> anyhow::Result<Topology> {
    let role = with_suffix(kind.name(), protocol);
    let full = match kind {
        Kind::RingmeshTelemetry => {
            let access_log = env.out_dir.join(format!("{role}-access.log"));
            // The proxy appends: an earlier run's file in the same folder would count as this one's.
            match std::fs::remove_file(&access_log) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", access_log.display()))
                }
                _ => {}
            }
            Some(FullTelemetry {
                access_log,
                collector: SpanSink::start()?,
            })
        }
        _ => None,
    };
    let telemetry = match (&full, kind) {
        (Some(f), _) => Telemetry::Full {
            access_log: &f.access_log,
            collector: f.collector.addr(),
        },
        (None, Kind::RingmeshBare) => Telemetry::Bare,
        (None, _) => Telemetry::Default,
    };
    let spawned = spawn_ringmesh(env, &role, env.echo_addr, None, protocol, Place::Sidecar, telemetry)?;
    if let Some(f) = &full {
        wait_for_log_line(&f.access_log, ACCESS_LOG_TIMEOUT).map_err(|e| {
            anyhow::anyhow!(
                "{e:#}: a row of full telemetry whose proxy logs nothing would measure a proxy that does not log; \
                 its stderr:\n{}",
                spawned.proc.stderr_tail()
            )
        })?;
    }
    let admins = vec![spawned.proxy_admin("proxy")];
    let Spawned { proc, entry, path, .. } = spawned;
    let io_driver = parse_io_driver(&proc.stderr_text());
    Ok(Topology {
        kind,
        protocol,
        entry,
        proxies: vec![proc],
        io_driver,
        config_paths: vec![path],
        version: Some(format!("{} ({})", env!("CARGO_PKG_VERSION"), env.proxy.describe())),
        hop: None,
        admins,
        full_telemetry: full,
        pod: None,
    })
}

/// How long the full-telemetry row's first access-log line may take: the proxy's writer thread
/// writes what the workers hand it every 200 ms.
pub(crate) const ACCESS_LOG_TIMEOUT: Duration = Duration::from_secs(3);

/// Waits until `path` holds at least one whole line.
fn wait_for_log_line(path: &Path, timeout: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if std::fs::read(path).is_ok_and(|b| b.contains(&b'\n')) {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the access log {} has no line {timeout:?} after the readiness probe went through the proxy",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One ringmesh-proxy forced onto epoll (`io: epoll`, config `ringmesh-epoll.yaml`): what a
/// container whose seccomp profile refuses io_uring runs.
pub fn start_ringmesh_epoll(env: &Env) -> anyhow::Result<Topology> {
    let spawned = spawn_ringmesh(
        env,
        "ringmesh-epoll",
        env.echo_addr,
        Some("epoll"),
        Protocol::Http1,
        Place::Sidecar,
        Telemetry::Default,
    )?;
    let admins = vec![spawned.proxy_admin("proxy")];
    let Spawned { proc, entry, path, .. } = spawned;
    let io_driver = parse_io_driver(&proc.stderr_text());
    Ok(Topology {
        kind: Kind::Ringmesh,
        protocol: Protocol::Http1,
        entry,
        proxies: vec![proc],
        io_driver,
        config_paths: vec![path],
        version: Some(format!("{} ({})", env!("CARGO_PKG_VERSION"), env.proxy.describe())),
        hop: None,
        admins,
        full_telemetry: None,
        pod: None,
    })
}

/// Client-side proxy → server-side proxy → echo: the server side starts first (in front of
/// the echo), then the client side with the server side's listener as the endpoint of the
/// same `HOST`, so the request crosses two full proxies exactly as between two sidecars,
/// over HTTP/2 between them whatever the client speaks ([`Place::Mesh`]). `mesh` makes that
/// hop mutual TLS with the run's certificates, `mesh-plain` plaintext ([`Hop`]). Once the
/// readiness probe has crossed the hop, the proxies' counters must show it was what the row
/// says ([`check_hop`]): a row named mTLS that measured plaintext (or the reverse) fails.
fn start_mesh(env: &Env, protocol: Protocol, kind: Kind) -> anyhow::Result<Topology> {
    let pki = match kind {
        Kind::Mesh => Some(
            env.pki
                .as_ref()
                .context("no mesh certificates were made for this run")?,
        ),
        _ => None,
    };
    let hop = |side| pki.map_or(Hop::Plaintext, |p: &MeshPki| Hop::Mtls(p.identity(side)));
    let server = spawn_ringmesh(
        env,
        &with_suffix(&format!("{kind}-server"), protocol),
        env.echo_addr,
        None,
        protocol,
        Place::Mesh {
            side: Side::Server,
            hop: hop(Side::Server),
        },
        Telemetry::Default,
    )?;
    let client = spawn_ringmesh(
        env,
        &with_suffix(&format!("{kind}-client"), protocol),
        server.entry,
        None,
        protocol,
        Place::Mesh {
            side: Side::Client,
            hop: hop(Side::Client),
        },
        Telemetry::Default,
    )?;
    let scrape = |s: &Spawned| -> anyhow::Result<String> {
        let (status, body) = http_get(s.metrics, "localhost", "/stats/prometheus")
            .with_context(|| format!("reading {}'s /stats/prometheus", s.proc.role))?;
        anyhow::ensure!(status == 200, "{}'s /stats/prometheus answered {status}", s.proc.role);
        Ok(body)
    };
    // The cause first, then what the proxies logged.
    let check = check_hop(pki.is_some(), &scrape(&server)?, &scrape(&client)?).map_err(|e| {
        anyhow::anyhow!(
            "{e:#}\n{}'s stderr:\n{}\n{}'s stderr:\n{}",
            client.proc.role,
            client.proc.stderr_tail(),
            server.proc.role,
            server.proc.stderr_tail()
        )
    })?;
    let io_driver = parse_io_driver(&client.proc.stderr_text());
    let admins = vec![client.proxy_admin("client side"), server.proxy_admin("server side")];
    Ok(Topology {
        kind,
        protocol,
        entry: client.entry,
        proxies: vec![client.proc, server.proc],
        io_driver,
        config_paths: vec![client.path, server.path],
        version: Some(format!("{} ({})", env!("CARGO_PKG_VERSION"), env.proxy.describe())),
        hop: Some(check),
        admins,
        full_telemetry: None,
        pod: None,
    })
}

/// What the counters of a mesh topology's two proxies showed after the readiness probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HopCheck {
    /// Whether the hop is mutual TLS (`mesh`) or plaintext (`mesh-plain`).
    pub mtls: bool,
    /// `ringmesh_inbound_tls_handshakes_total` of the server side.
    pub inbound_handshakes: u64,
    /// `ringmesh_outbound_tls_handshakes_total` of the client side.
    pub outbound_handshakes: u64,
}

impl HopCheck {
    /// For the row's notes.
    pub fn describe(&self) -> String {
        format!(
            "after the readiness probe the server side counted {} inbound mTLS handshake(s) and the client side {} outbound",
            self.inbound_handshakes, self.outbound_handshakes
        )
    }
}

/// The value of the counter `name` in Prometheus text (summed over its label sets); `None`
/// when the text does not have it.
pub fn prometheus_counter(text: &str, name: &str) -> Option<u64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = match rest.as_bytes().first() {
            Some(b' ') => rest,
            Some(b'{') => rest.rsplit_once('}').map_or("", |(_, v)| v),
            _ => continue,
        };
        let v: f64 = value.split_whitespace().next()?.parse().ok()?;
        *found.get_or_insert(0) += v as u64;
    }
    found
}

/// Checks the hop against what the row says, from the server side's and the client side's
/// `/stats/prometheus`: with `mtls`, both sides must have completed at least one mTLS handshake
/// (the probe crossed the hop, so a working mTLS hop has); without, neither may have. A counter
/// missing from the text is an error too: an unreadable proof is no proof.
pub fn check_hop(mtls: bool, server_metrics: &str, client_metrics: &str) -> anyhow::Result<HopCheck> {
    const INBOUND: &str = "ringmesh_inbound_tls_handshakes_total";
    const OUTBOUND: &str = "ringmesh_outbound_tls_handshakes_total";
    let inbound = prometheus_counter(server_metrics, INBOUND)
        .with_context(|| format!("the server side's metrics have no {INBOUND}"))?;
    let outbound = prometheus_counter(client_metrics, OUTBOUND)
        .with_context(|| format!("the client side's metrics have no {OUTBOUND}"))?;
    let check = HopCheck {
        mtls,
        inbound_handshakes: inbound,
        outbound_handshakes: outbound,
    };
    if mtls {
        anyhow::ensure!(
            inbound >= 1 && outbound >= 1,
            "a request crossed the hop between the proxies but it was not mutual TLS: {INBOUND} {inbound} on the \
             server side, {OUTBOUND} {outbound} on the client side (each must be at least 1); this row's figures \
             would be plaintext's"
        );
    } else {
        anyhow::ensure!(
            inbound == 0 && outbound == 0,
            "the hop between the proxies of this plaintext row used TLS: {INBOUND} {inbound} on the server side, \
             {OUTBOUND} {outbound} on the client side (both must be 0)"
        );
    }
    Ok(check)
}

/// Finds `io=NAME` in the proxy's start-up log.
pub fn parse_io_driver(log: &str) -> Option<String> {
    let i = log.find("io=")?;
    let name: String = log[i + 3..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// haproxy, one thread, HTTP mode, keep-alive on both sides, `http-reuse always`; for HTTP/2
/// and gRPC, h2c on both sides (`proto h2` on the bind and the server), so the upstream
/// connections are multiplexed and shared between client streams.
pub fn haproxy_config(entry: SocketAddr, echo: SocketAddr, nofile: u64, protocol: Protocol) -> String {
    let proto = haproxy_proto(protocol);
    format!(
        r#"{head}
frontend bench
    bind {entry}{proto}
    default_backend echo

backend echo
    server echo1 {echo}{proto} maxconn 10000
"#,
        head = haproxy_head("haproxy as a one-thread keep-alive HTTP reverse proxy.", nofile)
    )
}

/// ` proto h2` (h2c) for the HTTP/2 and gRPC rows, nothing (HTTP/1.1) otherwise.
fn haproxy_proto(protocol: Protocol) -> &'static str {
    if protocol.is_h2() {
        " proto h2"
    } else {
        ""
    }
}

/// The `global` and `defaults` sections every haproxy of the suite runs with, under a comment
/// naming what the file is for.
fn haproxy_head(what: &str, nofile: u64) -> String {
    // haproxy reserves two descriptors per connection and, with its default strict-limits,
    // refuses to start when the limit cannot cover that. Idle clients need only one each (the
    // upstream side is shared through http-reuse), so relax the check and size maxconn to the
    // limit the children inherit.
    let maxconn = nofile.saturating_sub(200).clamp(256, 1_000_000);
    format!(
        r#"# Written by ringmesh-bench: {what}
global
    nbthread 1
    maxconn {maxconn}
    no strict-limits
    tune.bufsize 16384

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 120s
    timeout http-request 10s
"#
    )
}

/// A path as a double-quoted haproxy word, so an output folder with spaces, quotes or `$` in
/// its name cannot break the config (inside double quotes haproxy expands `$NAME` and takes
/// `\` as an escape).
fn haproxy_path(p: &Path) -> String {
    let mut out = String::from("\"");
    for c in p.display().to_string().chars() {
        if matches!(c, '"' | '\\' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The TLS words of both ends of `haproxy-mesh`'s hop: the side's certificate and key
/// (`crt`, one PEM file), the run's mesh root as the only trust anchor (`ca-file`), the peer's
/// certificate required and verified against it (`verify required`), HTTP/2 inside (`alpn
/// h2`), TLS 1.3 as between ringmesh's proxies. No name is checked: the workload certificates
/// carry nothing but a SPIFFE URI SAN, which haproxy cannot match (`verifyhost` compares DNS
/// names and the CN), so, as the chain check of any SPIFFE peer without a name policy, what
/// authenticates the peer is a chain to the run's own root, which signed nothing but these two
/// certificates.
fn haproxy_mtls_words(files: &IdentityFiles) -> String {
    format!(
        "ssl crt {} ca-file {} verify required alpn h2 ssl-min-ver TLSv1.3",
        haproxy_path(&files.bundle),
        haproxy_path(&files.ca)
    )
}

/// One haproxy of `haproxy-mesh`, configured as `haproxy`'s (one thread, keep-alive,
/// `http-reuse always`, `tune.bufsize 16384`) and placed as the ringmesh proxy of the same side
/// of `mesh`:
///
/// * client side: binds `listen` for the load generator (HTTP/1.1, or h2c for the HTTP/2 and
///   gRPC rows, as `haproxy`), and reaches its one server, the server side at `upstream`, over
///   mutual TLS with HTTP/2 inside, whatever the load generator speaks, as `mesh`'s client
///   side reaches its labelled endpoint;
/// * server side: its bind at `listen` speaks mutual TLS only (HTTP/2 inside), and it forwards
///   to the echo at `upstream` as `haproxy` does (HTTP/1.1, or h2c for HTTP/2 and gRPC rows).
pub fn haproxy_mesh_config(
    side: Side,
    listen: SocketAddr,
    upstream: SocketAddr,
    files: &IdentityFiles,
    nofile: u64,
    protocol: Protocol,
) -> String {
    let proto = haproxy_proto(protocol);
    let tls = haproxy_mtls_words(files);
    match side {
        Side::Client => format!(
            r#"{head}
frontend bench
    bind {listen}{proto}
    default_backend mesh_server

backend mesh_server
    server server_side {upstream} {tls} maxconn 10000
"#,
            head = haproxy_head(
                "the client-side haproxy of haproxy-mesh: the load generator in, mutual TLS (HTTP/2 inside) to the server-side haproxy out.",
                nofile
            )
        ),
        Side::Server => format!(
            r#"{head}
frontend mesh_inbound
    bind {listen} {tls}
    default_backend echo

backend echo
    server echo1 {upstream}{proto} maxconn 10000
"#,
            head = haproxy_head(
                "the server-side haproxy of haproxy-mesh: mutual TLS (HTTP/2 inside) in, the echo out.",
                nofile
            )
        ),
    }
}

fn external_version(bin: &Path, flag: &str) -> Option<String> {
    let out = std::process::Command::new(bin).arg(flag).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines().next().map(|l| l.trim().to_owned())
}

/// Writes `<role>.cfg` and starts haproxy on it in the foreground (`-db`).
fn spawn_haproxy(env: &Env, bin: &Path, role: &str, config: &str) -> anyhow::Result<(Proc, PathBuf)> {
    let path = env.out_dir.join(format!("{role}.cfg"));
    std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
    let proc = Proc::spawn(
        role,
        bin,
        &["-db".into(), "-f".into(), path.display().to_string()],
        &env.out_dir,
        env.proxy_cpu,
    )?;
    Ok((proc, path))
}

fn start_haproxy(env: &Env, protocol: Protocol) -> anyhow::Result<Topology> {
    let Some(bin) = which("haproxy") else {
        bail!("haproxy is not on PATH");
    };
    let entry = loopback(free_port()?);
    let role = with_suffix("haproxy", protocol);
    let config = haproxy_config(entry, env.echo_addr, env.nofile, protocol);
    let (mut proc, path) = spawn_haproxy(env, &bin, &role, &config)?;
    proc.wait_ready(
        &probe_description(entry, protocol),
        READY_TIMEOUT,
        probe_through(entry, protocol),
    )?;
    Ok(Topology {
        kind: Kind::Haproxy,
        protocol,
        entry,
        proxies: vec![proc],
        io_driver: Some("epoll".into()),
        config_paths: vec![path],
        version: external_version(&bin, "-v"),
        hop: None,
        admins: Vec::new(),
        full_telemetry: None,
        pod: None,
    })
}

/// `haproxy-mesh`: the server-side haproxy starts first (in front of the echo), then the client
/// side with the server side's TLS listener as its one server ([`haproxy_mesh_config`]).
///
/// The hop is proven TLS by construction, and checked: the server side's bind accepts TLS
/// only, with a client certificate that chains to the run's root (`verify required`), so the
/// readiness probe that crossed it through the client side proves the client side spoke mutual
/// TLS to it; and a plaintext `GET` sent straight to that bind must be refused, or the row fails
/// to start (its figures would not be an mTLS hop's).
fn start_haproxy_mesh(env: &Env, protocol: Protocol) -> anyhow::Result<Topology> {
    let Some(bin) = which("haproxy") else {
        bail!("haproxy is not on PATH");
    };
    let pki = env
        .pki
        .as_ref()
        .context("no mesh certificates were made for this run")?;
    let server_listen = loopback(free_port()?);
    let entry = loopback(free_port()?);
    let config =
        |side, listen, upstream| haproxy_mesh_config(side, listen, upstream, pki.identity(side), env.nofile, protocol);
    let (mut server, server_path) = spawn_haproxy(
        env,
        &bin,
        &with_suffix("haproxy-mesh-server", protocol),
        &config(Side::Server, server_listen, env.echo_addr),
    )?;
    // Its bind speaks TLS only: it is ready when it accepts a connection.
    server.wait_ready(&format!("a TCP connection to {server_listen}"), READY_TIMEOUT, || {
        std::net::TcpStream::connect_timeout(&server_listen, Duration::from_millis(200)).is_ok()
    })?;
    let (mut client, client_path) = spawn_haproxy(
        env,
        &bin,
        &with_suffix("haproxy-mesh-client", protocol),
        &config(Side::Client, entry, server_listen),
    )?;
    let ready = client.wait_ready(
        &probe_description(entry, protocol),
        READY_TIMEOUT,
        probe_through(entry, protocol),
    );
    // The cause first, then what the server side logged (a refused certificate shows there).
    if let Err(e) = ready {
        server.check_alive()?;
        bail!("{e:#}\n{}'s stderr:\n{}", server.role, server.stderr_tail());
    }
    if let Ok(status) = http_get_status(server_listen, HOST, "/") {
        bail!(
            "the server-side haproxy answered a plaintext GET on its mTLS bind {server_listen} with {status}: \
             the hop between the haproxies is not TLS-only, and this row's figures would not be an mTLS hop's"
        );
    }
    Ok(Topology {
        kind: Kind::HaproxyMesh,
        protocol,
        entry,
        proxies: vec![client, server],
        io_driver: Some("epoll".into()),
        config_paths: vec![client_path, server_path],
        version: external_version(&bin, "-v"),
        hop: None,
        admins: Vec::new(),
        full_telemetry: None,
        pod: None,
    })
}

/// nginx, one worker, upstream keep-alive pool of 64, HTTP/1.1 to the upstream. For HTTP/2
/// and gRPC: h2c downstream, and `grpc_pass` upstream, nginx's only HTTP/2 upstream module
/// (`proxy_pass` speaks HTTP/1.x only), which forwards any HTTP/2 request, gRPC or not.
/// `http2_directive` writes nginx ≥ 1.25.1's `http2 on;` instead of the older `listen … http2`.
pub fn nginx_config(
    entry: SocketAddr,
    echo: SocketAddr,
    prefix: &Path,
    nofile: u64,
    protocol: Protocol,
    http2_directive: bool,
) -> String {
    let p = prefix.display();
    let connections = nofile.saturating_sub(100).clamp(1024, 1_000_000);
    let server = if !protocol.is_h2() {
        NGINX_HTTP1_SERVER.replace("{entry}", &entry.to_string())
    } else if http2_directive {
        NGINX_H2_SERVER.replace("{listen}", &format!("listen {entry};\n        http2 on;"))
    } else {
        NGINX_H2_SERVER.replace("{listen}", &format!("listen {entry} http2;"))
    };
    format!(
        r#"# Written by ringmesh-bench: nginx as a one-worker keep-alive HTTP reverse proxy.
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {p}/nginx.pid;
error_log {p}/nginx-error.log warn;

events {{
    worker_connections {connections};
}}

http {{
    access_log off;
    keepalive_timeout 120s;
    keepalive_requests 10000000;
    client_body_temp_path {p}/tmp/client;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;

    upstream echo {{
        server {echo};
        keepalive 64;
        keepalive_requests 10000000;
    }}

{server}}}
"#
    )
}

/// The HTTP/1.1 `server` block, as the suite always wrote it.
const NGINX_HTTP1_SERVER: &str = r#"    server {
        listen {entry};
        location / {
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }
    }
"#;

/// The h2c `server` block: HTTP/2 both sides through `grpc_pass`.
const NGINX_H2_SERVER: &str = r#"    server {
        {listen}
        location / {
            grpc_pass grpc://echo;
            grpc_set_header Host $host;
        }
    }
"#;

/// True when `nginx -v`'s line names a version with the `http2` directive (1.25.1 and later).
pub fn nginx_has_http2_directive(version_line: &str) -> bool {
    let Some(v) = version_line.split("nginx/").nth(1) else {
        return false;
    };
    let parts: Vec<u32> = v
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map_while(|n| n.parse().ok())
        .collect();
    match parts[..] {
        [major, minor, patch] => (major, minor, patch) >= (1, 25, 1),
        [major, minor] => (major, minor) > (1, 25),
        _ => false,
    }
}

/// Starts nginx as `name` with the config `config(prefix)` written to `<out_dir>/<name>.conf`,
/// its prefix (temp files) under `prefix` and its error log at `error_log` (absolute: nginx
/// resolves a relative `-e` against its prefix).
pub(crate) fn spawn_nginx(
    name: &str,
    out_dir: &Path,
    prefix: &Path,
    error_log: &Path,
    config: impl FnOnce(&Path) -> String,
    cpu: Option<usize>,
) -> anyhow::Result<Proc> {
    let Some(bin) = which("nginx") else {
        bail!("nginx is not on PATH");
    };
    std::fs::create_dir_all(prefix.join("tmp")).with_context(|| format!("creating {}", prefix.display()))?;
    let path = out_dir.join(format!("{name}.conf"));
    std::fs::write(&path, config(prefix)).with_context(|| format!("writing {}", path.display()))?;
    Proc::spawn(
        name,
        &bin,
        &[
            "-c".into(),
            path.display().to_string(),
            "-p".into(),
            prefix.display().to_string(),
            "-e".into(),
            error_log.display().to_string(),
        ],
        out_dir,
        cpu,
    )
}

fn start_nginx(env: &Env, protocol: Protocol) -> anyhow::Result<Topology> {
    let Some(bin) = which("nginx") else {
        bail!("nginx is not on PATH");
    };
    let version = external_version(&bin, "-v");
    let http2_directive = version.as_deref().is_some_and(nginx_has_http2_directive);
    let entry = loopback(free_port()?);
    let role = with_suffix("nginx", protocol);
    let prefix = env.out_dir.join(&role);
    let path = env.out_dir.join(format!("{role}.conf"));
    let mut proc = spawn_nginx(
        &role,
        &env.out_dir,
        &prefix,
        &prefix.join("nginx-error.log"),
        |prefix| nginx_config(entry, env.echo_addr, prefix, env.nofile, protocol, http2_directive),
        env.proxy_cpu,
    )?;
    proc.wait_ready(
        &probe_description(entry, protocol),
        READY_TIMEOUT,
        probe_through(entry, protocol),
    )?;
    Ok(Topology {
        kind: Kind::Nginx,
        protocol,
        entry,
        proxies: vec![proc],
        io_driver: Some("epoll".into()),
        config_paths: vec![path],
        version,
        hop: None,
        admins: Vec::new(),
        full_telemetry: None,
        pod: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_binary_is_the_built_one_when_present() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let bench = dir.join("ringmesh-bench");
        std::fs::write(&bench, "").unwrap();
        let embedded = ProxyBinary::locate(None, &bench).unwrap();
        assert_eq!(embedded, ProxyBinary::Embedded(bench.clone()));
        let config = Path::new("/x/ringmesh.yaml");
        assert_eq!(embedded.command(config).1, ["__proxy", "--config", "/x/ringmesh.yaml"]);
        assert!(embedded.describe().contains("embedded"));

        std::fs::write(dir.join("ringmesh-proxy"), "").unwrap();
        let built = ProxyBinary::locate(None, &bench).unwrap();
        assert_eq!(built, ProxyBinary::Standalone(dir.join("ringmesh-proxy")));
        assert_eq!(built.command(config).1, ["--config", "/x/ringmesh.yaml"]);

        let missing = ProxyBinary::locate(Some(&dir.join("nope")), &bench).unwrap_err();
        assert!(missing.to_string().contains("no such file"), "{missing}");
    }

    #[test]
    fn kinds_round_trip_and_io_driver_is_found() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.name()), Some(k));
            // report.json names a row as the flag does.
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
        }
        assert_eq!(Kind::parse("mesh-plain"), Some(Kind::MeshPlain));
        assert_eq!(Kind::parse("envoy"), None);
        assert_eq!(Kind::parse("sidecar"), Some(Kind::Ringmesh));
        assert_eq!(
            parse_io_driver("2024 INFO ringmesh: worker 0 started io=io_uring cpu=1"),
            Some("io_uring".into())
        );
        assert_eq!(parse_io_driver("nothing here"), None);
    }

    #[test]
    fn ringmesh_config_points_at_the_echo() {
        let a = |p| SocketAddr::from(([127, 0, 0, 1], p));
        let http1 = |workers, io| RingmeshSpec {
            workers,
            io,
            admin: a(1),
            health: a(2),
            metrics: a(3),
            listener: a(4),
            upstream: a(18080),
            protocol: Protocol::Http1,
            place: Place::Sidecar,
            telemetry: Telemetry::Default,
        };
        let c = http1(2, None).render();
        assert!(c.contains("workers: 2"));
        assert!(!c.contains("io:"));
        let e = http1(1, Some("epoll")).render();
        assert!(e.contains("workers: 1\n  io: epoll\n  adminAddress"), "{e}");
        assert!(c.contains("address: \"127.0.0.1:4\""));
        assert!(c.contains("endpoints: [{address: 127.0.0.1, ports: {http: 18080}}]"));
        assert!(!c.contains("15000") && !c.contains("15020") && !c.contains("15090"));
    }

    fn spec(protocol: Protocol, place: Place<'_>) -> RingmeshSpec<'_> {
        let a = |p| SocketAddr::from(([127, 0, 0, 1], p));
        RingmeshSpec {
            workers: 1,
            io: None,
            admin: a(1),
            health: a(2),
            metrics: a(3),
            listener: a(4),
            upstream: a(18080),
            protocol,
            place,
            telemetry: Telemetry::Default,
        }
    }

    /// Loads and compiles `text` as the proxy does.
    fn compile(text: &str) -> ringmesh_api::snapshot::Snapshot {
        let (resources, _) = ringmesh_api::load::load_str("bench.yaml", text)
            .unwrap_or_else(|e| panic!("config does not load: {e:?}\n{text}"));
        ringmesh_api::compile::compile(&ringmesh_api::compile::CompileInput {
            resources,
            extra_endpoints: Vec::new(),
            version: 1,
        })
        .unwrap_or_else(|e| panic!("config does not compile: {e:?}\n{text}"))
        .snapshot
    }

    fn echo_cluster(snapshot: &ringmesh_api::snapshot::Snapshot) -> &ringmesh_api::snapshot::Cluster {
        snapshot
            .clusters
            .iter()
            .find(|c| c.service == HOST && c.host_not_found.is_none())
            .unwrap_or_else(|| panic!("no cluster for {HOST}"))
    }

    fn client(hop: Hop<'_>) -> Place<'_> {
        Place::Mesh {
            side: Side::Client,
            hop,
        }
    }

    #[test]
    fn the_http1_ringmesh_config_is_the_one_the_suite_always_ran() {
        let expected = r#"# Written by ringmesh-bench: one outbound listener in front of the echo upstream.
apiVersion: ringmesh.io/v1alpha1
kind: ProxyConfig
metadata: {name: bench}
spec:
  workers: 1
  adminAddress: 127.0.0.1:1
  healthAddress: 127.0.0.1:2
  metricsAddress: 127.0.0.1:3
  listeners:
  - {name: outbound, address: "127.0.0.1:4", protocol: HTTP}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: echo}
spec:
  hosts: [echo.bench]
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 18080}}]
"#;
        assert_eq!(spec(Protocol::Http1, Place::Sidecar).render(), expected);
    }

    #[test]
    fn http2_and_grpc_ringmesh_configs_declare_the_port_protocol_and_compile() {
        let h2 = spec(Protocol::H2, Place::Sidecar).render();
        assert!(
            h2.contains("ports: [{number: 8080, name: http2, protocol: HTTP2}]"),
            "{h2}"
        );
        assert!(h2.contains("ports: {http2: 18080}}]"), "{h2}");
        let grpc = spec(Protocol::Grpc, Place::Sidecar).render();
        assert!(
            grpc.contains("ports: [{number: 8080, name: grpc, protocol: GRPC}]"),
            "{grpc}"
        );
        assert!(!grpc.contains("tlsMode"));
        // `mesh-plain`'s client side: its one endpoint is the server-side proxy.
        let client_side = spec(Protocol::Grpc, client(Hop::Plaintext)).render();
        assert!(
            client_side.contains(
                "endpoints: [{address: 127.0.0.1, ports: {grpc: 18080}, labels: {\"security.istio.io/tlsMode\": istio}}]"
            ),
            "{client_side}"
        );
        // Every config the suite writes loads and compiles as the proxy reads it, and the
        // label reaches the endpoint.
        for (protocol, peer) in [
            (Protocol::Http1, false),
            (Protocol::H2, false),
            (Protocol::H2, true),
            (Protocol::Grpc, false),
            (Protocol::Grpc, true),
        ] {
            let place = if peer { client(Hop::Plaintext) } else { Place::Sidecar };
            let text = spec(protocol, place).render();
            let snapshot = compile(&text);
            let endpoint = &echo_cluster(&snapshot).endpoints[0];
            assert_eq!(endpoint.address, SocketAddr::from(([127, 0, 0, 1], 18080)));
            assert_eq!(
                endpoint.labels.get("security.istio.io/tlsMode").map(String::as_str),
                peer.then_some("istio"),
                "{text}"
            );
        }
    }

    /// Identity files under a folder whose name has a space: the config must quote the paths.
    fn identity(side: Side) -> IdentityFiles {
        let name = side.service_account();
        IdentityFiles {
            cert: PathBuf::from(format!("/run dir/pki/{name}-cert.pem")),
            key: PathBuf::from(format!("/run dir/pki/{name}-key.pem")),
            bundle: PathBuf::from(format!("/run dir/pki/{name}.pem")),
            ca: PathBuf::from("/run dir/pki/ca.pem"),
        }
    }

    #[test]
    fn mesh_configs_make_the_hop_mutual_tls_and_mesh_plain_configs_plaintext() {
        use ringmesh_api::snapshot::MtlsMode;
        let (server_id, client_id) = (identity(Side::Server), identity(Side::Client));
        let server = |hop| Place::Mesh {
            side: Side::Server,
            hop,
        };
        let inbound_line = r#"  - {name: inbound, address: "127.0.0.1:4", protocol: HTTP, direction: INBOUND}"#;
        let outbound_line = r#"  - {name: outbound, address: "127.0.0.1:4", protocol: HTTP}"#;
        let api_files = |f: &IdentityFiles| ringmesh_api::snapshot::IdentityFiles {
            cert: f.cert.clone(),
            key: f.key.clone(),
            ca: f.ca.clone(),
        };
        for protocol in Protocol::ALL {
            // mesh, server side: inbound, STRICT for its workload's namespace, its certificate.
            let text = spec(protocol, server(Hop::Mtls(&server_id))).render();
            assert!(text.contains(inbound_line), "{text}");
            assert!(
                text.contains("kind: PeerAuthentication\nmetadata: {name: default, namespace: bench}\nspec:\n  mtls: {mode: STRICT}\n"),
                "{text}"
            );
            assert!(
                text.contains("  workload: {name: server, namespace: bench, serviceAccount: server}\n"),
                "{text}"
            );
            assert!(
                text.contains(r#"  identity: {certFile: "/run dir/pki/server-cert.pem", keyFile: "/run dir/pki/server-key.pem", caFile: "/run dir/pki/ca.pem"}"#),
                "{text}"
            );
            assert!(!text.contains("tlsMode"), "its endpoint is the echo: {text}");
            let snapshot = compile(&text);
            let listener = &snapshot.listeners[0];
            assert!(listener.inbound && listener.name == "inbound", "{listener:?}");
            assert_eq!(snapshot.security.peer_authn.mode_for(4), MtlsMode::Strict);
            let workload = &snapshot.proxy.workload;
            assert_eq!(
                (workload.namespace.as_str(), workload.service_account.as_str()),
                ("bench", "server")
            );
            assert_eq!(snapshot.proxy.identity.files, Some(api_files(&server_id)));
            assert!(!echo_cluster(&snapshot).endpoints[0].meshed);

            // mesh, client side: outbound, its certificate, its endpoint a proxy's: mTLS, HTTP/2.
            let text = spec(protocol, client(Hop::Mtls(&client_id))).render();
            assert!(text.contains(outbound_line) && !text.contains("INBOUND"), "{text}");
            assert!(!text.contains("PeerAuthentication"), "{text}");
            assert!(
                text.contains("  workload: {name: client, namespace: bench, serviceAccount: client}\n"),
                "{text}"
            );
            assert!(text.contains(r#"certFile: "/run dir/pki/client-cert.pem""#), "{text}");
            let snapshot = compile(&text);
            assert!(!snapshot.listeners[0].inbound);
            assert_eq!(snapshot.proxy.identity.files, Some(api_files(&client_id)));
            let cluster = echo_cluster(&snapshot);
            assert!(cluster.endpoints[0].meshed);
            assert!(
                cluster.mtls_to(0) && cluster.h2_to(0, false),
                "{protocol}: the hop to the server side is mutual TLS over HTTP/2"
            );

            // mesh-plain: the same proxies without certificates; the server side DISABLE.
            let text = spec(protocol, server(Hop::Plaintext)).render();
            assert!(text.contains(inbound_line), "{text}");
            assert!(text.contains("  mtls: {mode: DISABLE}\n"), "{text}");
            assert!(!text.contains("identity") && !text.contains(".pem"), "{text}");
            let snapshot = compile(&text);
            assert!(snapshot.listeners[0].inbound);
            assert_eq!(snapshot.security.peer_authn.mode_for(4), MtlsMode::Disable);
            assert_eq!(snapshot.proxy.identity.files, None);
            let text = spec(protocol, client(Hop::Plaintext)).render();
            assert!(!text.contains("identity") && !text.contains(".pem"), "{text}");
            assert!(text.contains("  workload: {name: client, namespace: bench"), "{text}");
            let snapshot = compile(&text);
            let cluster = echo_cluster(&snapshot);
            assert!(
                !cluster.mtls_to(0) && cluster.h2_to(0, false),
                "{protocol}: the same HTTP/2 hop, in plaintext"
            );
        }
        // Only the STRICT server side cannot be probed in plaintext.
        assert!(!server(Hop::Mtls(&server_id)).serves_plaintext());
        assert!(server(Hop::Plaintext).serves_plaintext());
        assert!(client(Hop::Mtls(&client_id)).serves_plaintext());
        assert!(Place::Sidecar.serves_plaintext());
    }

    #[test]
    fn a_mesh_hop_must_be_what_its_row_says() {
        let metrics = |inbound: u64, outbound: u64| {
            format!(
                "# HELP ringmesh_inbound_tls_handshakes_total mTLS handshakes.\n# TYPE ringmesh_inbound_tls_handshakes_total counter\n\
                 ringmesh_inbound_tls_handshakes_total {inbound}\nringmesh_inbound_tls_handshake_failed_total 3\n\
                 ringmesh_outbound_tls_handshakes_total {outbound}\n"
            )
        };
        // mesh: both sides handshook.
        assert_eq!(
            check_hop(true, &metrics(1, 0), &metrics(0, 2)).unwrap(),
            HopCheck {
                mtls: true,
                inbound_handshakes: 1,
                outbound_handshakes: 2
            }
        );
        // An "mTLS" row whose probe crossed a plaintext hop fails, naming the counters.
        let e = check_hop(true, &metrics(0, 0), &metrics(0, 0)).unwrap_err().to_string();
        assert!(
            e.contains("not mutual TLS") && e.contains("ringmesh_inbound_tls_handshakes_total 0"),
            "{e}"
        );
        // The client side's handshake alone proves nothing about the server side's listener.
        assert!(check_hop(true, &metrics(0, 0), &metrics(0, 1)).is_err());
        assert!(check_hop(true, &metrics(1, 0), &metrics(0, 0)).is_err());
        // mesh-plain: no handshake anywhere.
        assert!(!check_hop(false, &metrics(0, 0), &metrics(0, 0)).unwrap().mtls);
        let e = check_hop(false, &metrics(1, 0), &metrics(0, 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("used TLS"), "{e}");
        // A counter missing from the text is no proof either way.
        let e = check_hop(true, "ringmesh_downstream_rq_total 5\n", &metrics(0, 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no ringmesh_inbound_tls_handshakes_total"), "{e}");
        assert!(check_hop(false, &metrics(0, 0), "").is_err());
        // A longer name is another counter; labelled series add up; comments are not values.
        assert_eq!(prometheus_counter("m_x 5\n", "m"), None);
        assert_eq!(prometheus_counter("# m 9\nm{a=\"1\"} 2\nm{a=\"2\"} 3\n", "m"), Some(5));
        assert_eq!(prometheus_counter("m not-a-number\n", "m"), None);
    }

    #[test]
    fn haproxy_and_nginx_speak_http2_on_both_sides_for_http2_rows() {
        let entry: SocketAddr = "127.0.0.1:4".parse().unwrap();
        let echo: SocketAddr = "127.0.0.1:5".parse().unwrap();
        let h1 = haproxy_config(entry, echo, 4096, Protocol::Http1);
        assert!(
            h1.contains("    bind 127.0.0.1:4\n") && h1.contains("server echo1 127.0.0.1:5 maxconn"),
            "{h1}"
        );
        for p in [Protocol::H2, Protocol::Grpc] {
            let h = haproxy_config(entry, echo, 4096, p);
            assert!(h.contains("    bind 127.0.0.1:4 proto h2\n"), "{h}");
            assert!(h.contains("server echo1 127.0.0.1:5 proto h2 maxconn"), "{h}");
        }

        let prefix = Path::new("/p");
        let n1 = nginx_config(entry, echo, prefix, 4096, Protocol::Http1, false);
        assert!(
            n1.contains("listen 127.0.0.1:4;\n        location / {\n            proxy_pass http://echo;"),
            "{n1}"
        );
        assert!(!n1.contains("grpc_pass") && !n1.contains("http2"));
        let old = nginx_config(entry, echo, prefix, 4096, Protocol::H2, false);
        assert!(
            old.contains("listen 127.0.0.1:4 http2;\n        location / {\n            grpc_pass grpc://echo;"),
            "{old}"
        );
        assert!(!old.contains("proxy_pass"));
        let new = nginx_config(entry, echo, prefix, 4096, Protocol::Grpc, true);
        assert!(
            new.contains(
                "listen 127.0.0.1:4;\n        http2 on;\n        location / {\n            grpc_pass grpc://echo;"
            ),
            "{new}"
        );

        assert!(!nginx_has_http2_directive("nginx version: nginx/1.22.1"));
        assert!(!nginx_has_http2_directive("nginx version: nginx/1.25.0"));
        assert!(nginx_has_http2_directive("nginx version: nginx/1.25.1"));
        assert!(nginx_has_http2_directive("nginx version: nginx/1.27.4 (Ubuntu)"));
        assert!(nginx_has_http2_directive("nginx version: nginx/2.0"));
        assert!(!nginx_has_http2_directive("nginx version: openresty"));
        assert!(!nginx_has_http2_directive(""));
    }

    #[test]
    fn haproxy_mesh_runs_mutual_tls_with_http2_inside_between_its_two_haproxies() {
        let entry: SocketAddr = "127.0.0.1:4".parse().unwrap();
        let server_side: SocketAddr = "127.0.0.1:6".parse().unwrap();
        let echo: SocketAddr = "127.0.0.1:5".parse().unwrap();
        let (client_id, server_id) = (identity(Side::Client), identity(Side::Server));
        // The hop's words on both ends: the side's own bundle, the run's root, the peer's
        // certificate required, HTTP/2 inside, TLS 1.3; paths quoted (the folder has a space).
        let tls = |side: &str| {
            format!(
                "ssl crt \"/run dir/pki/{side}.pem\" ca-file \"/run dir/pki/ca.pem\" verify required alpn h2 ssl-min-ver TLSv1.3"
            )
        };
        for protocol in Protocol::ALL {
            let proto = if protocol.is_h2() { " proto h2" } else { "" };
            let client = haproxy_mesh_config(Side::Client, entry, server_side, &client_id, 4096, protocol);
            // The load generator's side is what `haproxy` binds: HTTP/1.1, or h2c.
            assert!(client.contains(&format!("\n    bind 127.0.0.1:4{proto}\n")), "{client}");
            // Whatever the load generator speaks, the hop is mTLS with HTTP/2 inside.
            assert!(
                client.contains(&format!(
                    "\n    server server_side 127.0.0.1:6 {} maxconn 10000\n",
                    tls("client")
                )),
                "{protocol}: {client}"
            );
            assert!(
                !client.contains("127.0.0.1:5"),
                "the client side never reaches the echo: {client}"
            );
            let server = haproxy_mesh_config(Side::Server, server_side, echo, &server_id, 4096, protocol);
            assert!(
                server.contains(&format!("\n    bind 127.0.0.1:6 {}\n", tls("server"))),
                "{server}"
            );
            // To the echo as `haproxy` speaks to it: HTTP/1.1, or h2c.
            assert!(
                server.contains(&format!("\n    server echo1 127.0.0.1:5{proto} maxconn 10000\n")),
                "{protocol}: {server}"
            );
            // Tuned as `haproxy`: the same global and defaults sections.
            let single = haproxy_config(entry, echo, 4096, protocol);
            let tuning = |c: &str| c[c.find("\nglobal\n").unwrap()..c.find("\nfrontend ").unwrap()].to_owned();
            assert_eq!(tuning(&client), tuning(&single));
            assert_eq!(tuning(&server), tuning(&single));
            for line in [
                "    nbthread 1\n",
                "    http-reuse always\n",
                "    tune.bufsize 16384\n",
                "    option http-keep-alive\n",
            ] {
                assert!(client.contains(line) && server.contains(line), "{line}");
            }
        }
        // Paths haproxy would otherwise split or expand.
        assert_eq!(haproxy_path(Path::new("/a b/$x\"q\\.pem")), r#""/a b/\$x\"q\\.pem""#);
    }

    #[test]
    fn captured_is_a_one_proxy_scenario_right_after_the_ringmesh_rows() {
        assert_eq!(Kind::parse("captured"), Some(Kind::Captured));
        assert_eq!(Kind::Captured.proxies(), 1);
        assert_eq!(Kind::Captured.external_binary(), None);
        assert_eq!(
            Kind::ALL[1..5],
            [
                Kind::Ringmesh,
                Kind::RingmeshBare,
                Kind::RingmeshTelemetry,
                Kind::Captured
            ]
        );
        // The other kinds' availability does not depend on who runs the suite.
        assert_eq!(unavailable(Kind::Direct), None);
        assert_eq!(unavailable(Kind::Ringmesh), None);
    }

    #[test]
    fn haproxy_mesh_is_a_two_proxy_scenario_that_needs_haproxy() {
        assert_eq!(Kind::parse("haproxy-mesh"), Some(Kind::HaproxyMesh));
        assert_eq!(Kind::HaproxyMesh.proxies(), 2);
        assert_eq!(Kind::HaproxyMesh.external_binary(), Some("haproxy"));
        assert_eq!(serde_json::to_value(Kind::HaproxyMesh).unwrap(), "haproxy-mesh");
        let order: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(
            order,
            [
                "direct",
                "ringmesh",
                "ringmesh-bare",
                "ringmesh-telemetry",
                "captured",
                "mesh",
                "mesh-plain",
                "haproxy",
                "haproxy-mesh",
                "nginx"
            ]
        );
    }

    #[test]
    fn the_telemetry_rows_differ_from_ringmesh_by_spec_telemetry_alone() {
        assert_eq!(Kind::parse("ringmesh-bare"), Some(Kind::RingmeshBare));
        assert_eq!(Kind::parse("ringmesh-telemetry"), Some(Kind::RingmeshTelemetry));
        assert_eq!(
            serde_json::to_value(Kind::RingmeshTelemetry).unwrap(),
            "ringmesh-telemetry"
        );
        for k in [Kind::RingmeshBare, Kind::RingmeshTelemetry] {
            assert_eq!(k.proxies(), 1);
            assert_eq!(k.external_binary(), None);
            assert_eq!(unavailable(k), None);
            assert!(k.is_ringmesh());
        }
        assert!(!Kind::Haproxy.is_ringmesh() && !Kind::Direct.is_ringmesh());
        let log = Path::new("/run dir/ringmesh-telemetry-h2-access.log");
        for protocol in Protocol::ALL {
            let default = spec(protocol, Place::Sidecar).render();
            let with = |telemetry| {
                RingmeshSpec {
                    telemetry,
                    ..spec(protocol, Place::Sidecar)
                }
                .render()
            };
            let bare = with(Telemetry::Bare);
            let full = with(Telemetry::Full {
                access_log: log,
                collector: "127.0.0.1:4317".parse().unwrap(),
            });
            assert!(!default.contains("telemetry"), "{default}");
            let bare_block = "  metricsAddress: 127.0.0.1:3\n  telemetry:\n    metrics: {istio: false}\n    \
                              reasonHeader: false\n    tracing: {sampling: 0}\n  listeners:\n";
            assert!(bare.contains(bare_block), "{bare}");
            assert!(
                full.contains(
                    "  telemetry:\n    metrics: {istio: true}\n    accessLog: {path: \"/run dir/ringmesh-telemetry-h2-access.log\", encoding: JSON}\n    tracing: {sampling: 1, opentelemetry: {service: 127.0.0.1, port: 4317}}\n  listeners:\n"
                ),
                "{full}"
            );
            // Nothing else differs: the same listener, the same ServiceEntry.
            let without = |text: &str| {
                text.lines()
                    .filter(|l| !l.starts_with("    ") && *l != "  telemetry:")
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            assert_eq!(without(&bare), without(&default));
            assert_eq!(without(&full), without(&default));

            // As the proxy compiles them.
            let t = compile(&default).telemetry;
            assert!(
                t.istio_metrics == ringmesh_api::snapshot::PerDirection::both(true)
                    && t.reason_header
                    && t.access_log.is_none(),
                "{t:?}"
            );
            let t = compile(&bare).telemetry;
            assert!(
                t.istio_metrics == ringmesh_api::snapshot::PerDirection::both(false)
                    && !t.reason_header
                    && t.access_log.is_none(),
                "{t:?}"
            );
            assert_eq!(t.tracing.sampling, 0.0);
            let t = compile(&full).telemetry;
            assert!(
                t.istio_metrics == ringmesh_api::snapshot::PerDirection::both(true) && t.reason_header,
                "{t:?}"
            );
            assert_eq!(t.access_log.as_ref().map(|a| a.path.as_path()), Some(log));
            assert!(matches!(
                t.access_log.as_ref().map(|a| &a.format),
                Some(ringmesh_api::access_log::LogFormat::Json(_))
            ));
            assert_eq!(t.tracing.sampling, TRACING_SAMPLING_PERCENT / 100.0);
            assert!(t.tracing.enabled);
            let export = t.tracing.export.as_ref().expect("spans exported");
            assert_eq!(
                (export.service.as_str(), export.port, &export.protocol),
                ("127.0.0.1", 4317, &ringmesh_api::snapshot::OtlpProtocol::Grpc)
            );
            // After the rounds the check waits for the last batch: at most one schedule delay,
            // then one export's three tries.
            assert!(
                export.schedule_delay + 3 * export.timeout < crate::telemetry::SPANS_SETTLE_TIMEOUT,
                "{export:?}"
            );
        }
    }
}
