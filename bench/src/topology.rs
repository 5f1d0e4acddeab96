//! The topologies a scenario measures, and how each is brought up.
//!
//! Every topology puts one hop (none for `direct`, two ringmesh proxies for `mesh`, as between
//! a client's and a server's sidecar) between the load generator and the same shared echo
//! upstream, so the only thing that differs between scenarios is the proxying. haproxy and nginx are configured the way their own tuning guides recommend for a
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

use crate::procs::{free_port, http_get_status, Proc};
use crate::protocol::Protocol;

/// The `Host` every request carries; the ringmesh ServiceEntry is named after it.
pub const HOST: &str = "echo.bench";

/// One topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Load generator straight to the echo server: the baseline.
    Direct,
    /// Through one ringmesh-proxy (the sidecar position).
    Ringmesh,
    /// Through two ringmesh-proxies: client-side sidecar → server-side sidecar (plaintext
    /// between them until the security issue brings mTLS).
    Mesh,
    /// Through one haproxy (if installed).
    Haproxy,
    /// Through one nginx (if installed).
    Nginx,
}

impl Kind {
    /// Every kind, in the default order.
    pub const ALL: [Kind; 5] = [Kind::Direct, Kind::Ringmesh, Kind::Mesh, Kind::Haproxy, Kind::Nginx];

    /// The scenario name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Ringmesh => "ringmesh",
            Kind::Mesh => "mesh",
            Kind::Haproxy => "haproxy",
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

    /// The external binary this kind needs on PATH, if any.
    pub fn external_binary(self) -> Option<&'static str> {
        match self {
            Kind::Haproxy => Some("haproxy"),
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
    /// ringmesh-proxy workers.
    pub proxy_workers: usize,
    /// CPU to pin proxy processes to, if pinning.
    pub proxy_cpu: Option<usize>,
    /// The open-file limit children inherit.
    pub nofile: u64,
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
    /// The proxy processes (none for `direct`, two for `mesh`: client side first). CPU time
    /// and RSS are summed over all of them.
    pub proxies: Vec<Proc>,
    /// The proxy's I/O driver when it reports one (ringmesh logs `io=…` at start-up).
    pub io_driver: Option<String>,
    /// The config file(s) written for the proxies.
    pub config_paths: Vec<PathBuf>,
    /// Version string of an external proxy.
    pub version: Option<String>,
}

/// How long a proxy may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

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

    /// Errors (with the stderr tail) if a proxy process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.proxies {
            p.check_alive()?;
        }
        Ok(())
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
            })
        }
        Kind::Ringmesh => start_ringmesh(env, protocol),
        Kind::Mesh => start_mesh(env, protocol),
        Kind::Haproxy => start_haproxy(env, protocol),
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
fn with_suffix(name: &str, protocol: Protocol) -> String {
    format!("{name}{}", protocol.suffix())
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
    /// The outbound HTTP listener (HTTP/1.1 and h2c on the same port).
    pub listener: SocketAddr,
    /// The one endpoint of `HOST`: the echo, or `mesh`'s server-side proxy.
    pub upstream: SocketAddr,
    /// Declared as the ServiceEntry port's protocol, so the proxy speaks it upstream.
    pub protocol: Protocol,
    /// Labels the endpoint `security.istio.io/tlsMode: istio`, as Istio marks an endpoint
    /// with a sidecar: the proxy then knows its peer is a proxy (`mesh`'s client side).
    pub peer_is_proxy: bool,
}

impl RingmeshSpec<'_> {
    /// The config: one outbound HTTP listener and a STATIC ServiceEntry for the upstream.
    /// HTTP/1.1 without the peer label renders what the suite always ran.
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
            peer_is_proxy,
        } = *self;
        let (port_name, port_protocol) = protocol.service_port();
        format!(
            r#"# Written by ringmesh-bench: one outbound listener in front of the echo upstream.
apiVersion: ringmesh.io/v1alpha1
kind: ProxyConfig
metadata: {{name: bench}}
spec:
  workers: {workers}{io_line}
  adminAddress: {admin}
  healthAddress: {health}
  metricsAddress: {metrics}
  listeners:
  - {{name: outbound, address: "{listener}", protocol: HTTP}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: echo}}
spec:
  hosts: [{HOST}]
  ports: [{{number: 8080, name: {port_name}, protocol: {port_protocol}}}]
  resolution: STATIC
  endpoints: [{{address: {echo_ip}, ports: {{{port_name}: {echo_port}}}{labels}}}]
"#,
            echo_ip = upstream.ip(),
            echo_port = upstream.port(),
            io_line = io.map_or(String::new(), |io| format!("\n  io: {io}")),
            labels = if peer_is_proxy {
                ", labels: {\"security.istio.io/tlsMode\": istio}"
            } else {
                ""
            },
        )
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Starts one ringmesh-proxy (role `role`, config `<role>.yaml`) that forwards `HOST` to
/// `upstream`, and waits until it is ready and a request through it gets a `200`.
pub(crate) fn spawn_ringmesh(
    env: &Env,
    role: &str,
    upstream: SocketAddr,
    io: Option<&str>,
    protocol: Protocol,
    peer_is_proxy: bool,
) -> anyhow::Result<(Proc, SocketAddr, PathBuf)> {
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
        peer_is_proxy,
    };
    std::fs::write(&path, spec.render()).with_context(|| format!("writing {}", path.display()))?;
    let (exe, args) = env.proxy.command(&path);
    let mut proc = Proc::spawn(role, exe, &args, &env.out_dir, env.proxy_cpu)?;
    proc.wait_ready(&format!("GET http://{health}/healthz/ready"), READY_TIMEOUT, || {
        matches!(http_get_status(health, "localhost", "/healthz/ready"), Ok(200))
    })?;
    proc.wait_ready(
        &probe_description(entry, protocol),
        READY_TIMEOUT,
        probe_through(entry, protocol),
    )?;
    Ok((proc, entry, path))
}

/// What a readiness probe sends, for the error when it never succeeds.
fn probe_description(entry: SocketAddr, protocol: Protocol) -> String {
    match protocol {
        Protocol::Http1 => format!("GET http://{entry}/ with Host: {HOST}"),
        Protocol::H2 => format!("h2c GET http://{entry}/ with :authority {HOST}"),
        Protocol::Grpc => format!("gRPC unary call over h2c to {entry} with :authority {HOST}"),
    }
}

fn start_ringmesh(env: &Env, protocol: Protocol) -> anyhow::Result<Topology> {
    let role = with_suffix("ringmesh", protocol);
    let (proc, entry, path) = spawn_ringmesh(env, &role, env.echo_addr, None, protocol, false)?;
    let io_driver = parse_io_driver(&proc.stderr_text());
    Ok(Topology {
        kind: Kind::Ringmesh,
        protocol,
        entry,
        proxies: vec![proc],
        io_driver,
        config_paths: vec![path],
        version: Some(format!("{} ({})", env!("CARGO_PKG_VERSION"), env.proxy.describe())),
    })
}

/// One ringmesh-proxy forced onto epoll (`io: epoll`, config `ringmesh-epoll.yaml`): what a
/// container whose seccomp profile refuses io_uring runs.
pub fn start_ringmesh_epoll(env: &Env) -> anyhow::Result<Topology> {
    let (proc, entry, path) = spawn_ringmesh(
        env,
        "ringmesh-epoll",
        env.echo_addr,
        Some("epoll"),
        Protocol::Http1,
        false,
    )?;
    let io_driver = parse_io_driver(&proc.stderr_text());
    Ok(Topology {
        kind: Kind::Ringmesh,
        protocol: Protocol::Http1,
        entry,
        proxies: vec![proc],
        io_driver,
        config_paths: vec![path],
        version: Some(format!("{} ({})", env!("CARGO_PKG_VERSION"), env.proxy.describe())),
    })
}

/// Client-side proxy → server-side proxy → echo: the server side starts first (in front of
/// the echo), then the client side with the server side's listener as the endpoint of the
/// same `HOST`, so the request crosses two full proxies exactly as between two sidecars.
/// The client side's endpoint is labelled as a proxy's (`security.istio.io/tlsMode: istio`), so
/// the two proxies talk HTTP/2 to each other whatever the client speaks, as two sidecars do.
fn start_mesh(env: &Env, protocol: Protocol) -> anyhow::Result<Topology> {
    let (server, server_entry, server_path) = spawn_ringmesh(
        env,
        &with_suffix("mesh-server", protocol),
        env.echo_addr,
        None,
        protocol,
        false,
    )?;
    let (client, entry, client_path) = spawn_ringmesh(
        env,
        &with_suffix("mesh-client", protocol),
        server_entry,
        None,
        protocol,
        true,
    )?;
    let io_driver = parse_io_driver(&client.stderr_text());
    Ok(Topology {
        kind: Kind::Mesh,
        protocol,
        entry,
        proxies: vec![client, server],
        io_driver,
        config_paths: vec![client_path, server_path],
        version: Some(format!("{} ({})", env!("CARGO_PKG_VERSION"), env.proxy.describe())),
    })
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
    let proto = if protocol.is_h2() { " proto h2" } else { "" };
    // haproxy reserves two descriptors per connection and, with its default strict-limits,
    // refuses to start when the limit cannot cover that. Idle clients need only one each (the
    // upstream side is shared through http-reuse), so relax the check and size maxconn to the
    // limit the children inherit.
    let maxconn = nofile.saturating_sub(200).clamp(256, 1_000_000);
    format!(
        r#"# Written by ringmesh-bench: haproxy as a one-thread keep-alive HTTP reverse proxy.
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

frontend bench
    bind {entry}{proto}
    default_backend echo

backend echo
    server echo1 {echo}{proto} maxconn 10000
"#
    )
}

fn external_version(bin: &Path, flag: &str) -> Option<String> {
    let out = std::process::Command::new(bin).arg(flag).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    text.lines().next().map(|l| l.trim().to_owned())
}

fn start_haproxy(env: &Env, protocol: Protocol) -> anyhow::Result<Topology> {
    let Some(bin) = which("haproxy") else {
        bail!("haproxy is not on PATH");
    };
    let entry = loopback(free_port()?);
    let role = with_suffix("haproxy", protocol);
    let path = env.out_dir.join(format!("{role}.cfg"));
    std::fs::write(&path, haproxy_config(entry, env.echo_addr, env.nofile, protocol))
        .with_context(|| format!("writing {}", path.display()))?;
    let mut proc = Proc::spawn(
        &role,
        &bin,
        &["-db".into(), "-f".into(), path.display().to_string()],
        &env.out_dir,
        env.proxy_cpu,
    )?;
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
        }
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
            peer_is_proxy: false,
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

    fn spec(protocol: Protocol, peer_is_proxy: bool) -> RingmeshSpec<'static> {
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
            peer_is_proxy,
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
        assert_eq!(spec(Protocol::Http1, false).render(), expected);
    }

    #[test]
    fn http2_and_grpc_ringmesh_configs_declare_the_port_protocol_and_compile() {
        let h2 = spec(Protocol::H2, false).render();
        assert!(
            h2.contains("ports: [{number: 8080, name: http2, protocol: HTTP2}]"),
            "{h2}"
        );
        assert!(h2.contains("ports: {http2: 18080}}]"), "{h2}");
        let grpc = spec(Protocol::Grpc, false).render();
        assert!(
            grpc.contains("ports: [{number: 8080, name: grpc, protocol: GRPC}]"),
            "{grpc}"
        );
        assert!(!grpc.contains("tlsMode"));
        // `mesh`'s client side: its one endpoint is the server-side proxy.
        let client = spec(Protocol::Grpc, true).render();
        assert!(
            client.contains(
                "endpoints: [{address: 127.0.0.1, ports: {grpc: 18080}, labels: {\"security.istio.io/tlsMode\": istio}}]"
            ),
            "{client}"
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
            let text = spec(protocol, peer).render();
            let (resources, _) = ringmesh_api::load::load_str("bench.yaml", &text)
                .unwrap_or_else(|e| panic!("{protocol} config does not load: {e:?}\n{text}"));
            let compiled = ringmesh_api::compile::compile(&ringmesh_api::compile::CompileInput {
                resources,
                extra_endpoints: Vec::new(),
                version: 1,
            })
            .unwrap_or_else(|e| panic!("{protocol} config does not compile: {e:?}\n{text}"));
            let cluster = compiled
                .snapshot
                .clusters
                .iter()
                .find(|c| c.service == HOST && c.host_not_found.is_none())
                .unwrap_or_else(|| panic!("no cluster for {HOST}: {text}"));
            let endpoint = &cluster.endpoints[0];
            assert_eq!(endpoint.address, SocketAddr::from(([127, 0, 0, 1], 18080)));
            assert_eq!(
                endpoint.labels.get("security.istio.io/tlsMode").map(String::as_str),
                peer.then_some("istio"),
                "{text}"
            );
        }
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
}
