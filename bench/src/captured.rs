//! The `captured` row: `ringmesh` reached the way a sidecar is, by transparent capture.
//!
//! `ringmesh` gives the load generator the proxy's own listener. A sidecar's app knows nothing
//! of the proxy: it dials a service's virtual IP, and the nat rules `ringmesh iptables` installs
//! in the pod's network namespace redirect the connection to the proxy's capture listener
//! (15001), which finds the service by the connection's original destination
//! (`SO_ORIGINAL_DST`). This row measures that path beside `ringmesh`, so that what capture adds
//! (conntrack and NAT on the connection's packets, the original-destination lookup) is read off
//! one run.
//!
//! The "pod" is a network namespace the suite makes (`rmbench-<pid>`, `rmbench-<pid>-h2`, …),
//! with loopback up, a veth pair whose both ends stay inside and a route for the virtual IPs
//! (`10.96.0.0/16`) through it, so that a connection to `10.96.0.1:80` is routed (the nat rules
//! then take it; nothing inside answers that address, so a request that succeeds was captured).
//! In it: an echo of its own (the shared echo's arguments and CPU; its CPU is the row's upstream
//! CPU), the rules, and ringmesh-proxy as UID/GID 1337 (whose traffic the rules leave alone),
//! with the row's worker count and CPU. The load generator's threads join the namespace
//! ([`crate::netns::NetNs::run`]). Everything needs root: without it, or without `ip`,
//! `setpriv` or `iptables-restore`, the row is skipped with a note saying which.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::netns::{self, NetNs};
use crate::procs::{http_get, http_get_status, Proc};
use crate::protocol::Protocol;
use crate::topology::{
    loopback, parse_io_driver, probe_description, probe_through, prometheus_counter, with_suffix, Env, Kind, Place,
    ProxyAdmin, RingmeshSpec, Telemetry, Topology, READY_TIMEOUT,
};

/// The echo's virtual IP and port, as a ClusterIP Service's: what the load generator dials.
pub const VIRTUAL_IP: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 96, 0, 1)), 80);
/// The proxy's user and group (`ringmesh iptables`' default `--proxy-uid`, Istio's).
pub const PROXY_UID: u32 = 1337;
/// Names of the suite's namespaces start with this, then `-<pid>`.
pub const NETNS_PREFIX: &str = "rmbench";
/// Where the row's echo listens inside the namespace (a fresh namespace has every port free).
const ECHO: u16 = 8080;
/// The counter that shows a connection reached the proxy by capture and was served as a service.
const CAPTURED_COUNTER: &str = "ringmesh_capture_outbound_service_total";

/// The programs the row runs, found on this machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    /// iproute2's `ip`: the namespace, its links and routes, `ip netns exec`.
    pub ip: PathBuf,
    /// util-linux's `setpriv`: the proxy started as UID/GID 1337.
    pub setpriv: PathBuf,
}

impl Tools {
    /// The row's tools, or why it cannot run here (the skip note): it must run as root (`euid`
    /// 0), and `find` (a program lookup) must find `ip`, `setpriv` and an `iptables-restore`
    /// (what `ringmesh iptables` drives).
    pub fn find(euid: u32, find: &dyn Fn(&str) -> Option<PathBuf>) -> Result<Tools, String> {
        if euid != 0 {
            return Err(format!(
                "not run as root (effective UID {euid}): this row makes a network namespace, applies `ringmesh iptables` \
                 rules in it and runs the proxy as UID {PROXY_UID}; run the suite as root to measure it"
            ));
        }
        let ip = find("ip");
        let setpriv = find("setpriv");
        let restore = ["iptables-restore", "iptables-nft-restore", "iptables-legacy-restore"]
            .into_iter()
            .find_map(find);
        let mut missing = Vec::new();
        if ip.is_none() {
            missing.push("`ip` (iproute2)");
        }
        if setpriv.is_none() {
            missing.push("`setpriv` (util-linux)");
        }
        if restore.is_none() {
            missing.push("`iptables-restore` (iptables)");
        }
        match (ip, setpriv) {
            (Some(ip), Some(setpriv)) if missing.is_empty() => Ok(Tools { ip, setpriv }),
            _ => Err(format!("{} not found (install to measure it)", missing.join(", "))),
        }
    }
}

/// The `ringmesh` command line that applies the rules: the `ringmesh` binary next to this one
/// when it was built (as deployed), else this binary's embedded copy (`__ringmesh`), so the row
/// runs wherever the bench alone was built (`cargo test -p ringmesh-bench`).
fn ringmesh_cli(self_exe: &Path) -> (PathBuf, Vec<String>) {
    let sibling = self_exe.with_file_name("ringmesh");
    if sibling.is_file() {
        (sibling, Vec::new())
    } else {
        (self_exe.to_owned(), vec!["__ringmesh".into()])
    }
}

/// What the row runs in besides its proxy: its namespace, its echo, and the files UID 1337
/// reads. Fields drop in order: the echo stops before the namespace is deleted.
#[derive(Debug)]
pub struct Pod {
    /// The row's own echo, inside the namespace.
    pub echo: Proc,
    /// [`CAPTURED_COUNTER`] after the readiness probe: at least 1.
    pub captured_connections: u64,
    netns: NetNs,
    /// The proxy binary and its config, in a folder of mode 0755 (the output folder may lie
    /// under a home directory UID 1337 cannot enter).
    _files: tempfile::TempDir,
}

impl Pod {
    /// Runs `f` on a thread inside the namespace (see [`NetNs::run`]).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        self.netns.run(f)
    }

    /// The row's note in the report.
    pub fn describe(&self, protocol: Protocol) -> String {
        format!(
            "`ringmesh` by transparent capture: the load generator's threads and ringmesh-proxy in the network \
             namespace {ns}, `ringmesh iptables` applied there, the proxy run as UID/GID {PROXY_UID} (`spec.capture`: \
             outbound capture listener 15001); {label} requests dial the echo's virtual IP {VIRTUAL_IP} (its \
             ServiceEntry's `addresses`), the nat table redirects each connection to the proxy, which finds the service \
             by its original destination; after the readiness probe the proxy counted {n} such connection(s) \
             ({CAPTURED_COUNTER}); the row has its own echo in the namespace (same arguments and CPU as the shared \
             one), whose CPU the echo column shows; no idle-connection test and no wrk row for it",
            ns = self.netns.name(),
            label = protocol.label(),
            n = self.captured_connections,
        )
    }
}

/// Brings the row up for `protocol` and waits until a request to the virtual IP, from inside the
/// namespace, succeeds through the proxy.
pub fn start(env: &Env, protocol: Protocol) -> anyhow::Result<Topology> {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let euid = unsafe { libc::geteuid() };
    let tools = Tools::find(euid, &ringmesh_control::capture::find_program).map_err(anyhow::Error::msg)?;
    netns::sweep_stale(&tools.ip, NETNS_PREFIX);
    let netns = NetNs::create(
        &tools.ip,
        &format!("{NETNS_PREFIX}-{}{}", std::process::id(), protocol.suffix()),
    )?;
    // A route for the virtual IPs through a link other than loopback: the rules leave loopback
    // traffic alone, and a connect with no route fails before any rule sees it. Both ends of the
    // veth stay inside; nothing is ever sent through it (the rules redirect first).
    for args in [
        &["link", "set", "lo", "up"][..],
        &["link", "add", "rmbench0", "type", "veth", "peer", "name", "rmbench1"],
        &["addr", "add", "10.97.0.1/24", "dev", "rmbench0"],
        &["link", "set", "rmbench0", "up"],
        &["link", "set", "rmbench1", "up"],
        &["route", "add", "10.96.0.0/16", "dev", "rmbench0"],
    ] {
        netns.ip(args)?;
    }

    let files = tempfile::Builder::new()
        .prefix("ringmesh-bench-captured-")
        .tempdir()
        .context("making a folder for the captured row's proxy")?;
    readable(files.path(), 0o755)?;
    let proxy_name = env
        .proxy
        .path()
        .file_name()
        .context("the proxy binary has no file name")?;
    let proxy = env.proxy.moved_to(files.path().join(proxy_name));
    std::fs::copy(env.proxy.path(), proxy.path())
        .with_context(|| format!("copying {} to {}", env.proxy.path().display(), proxy.path().display()))?;
    readable(proxy.path(), 0o755)?;
    let role = with_suffix("captured", protocol);
    let health = loopback(15020);
    let spec = RingmeshSpec {
        workers: env.proxy_workers,
        io: None,
        admin: loopback(15000),
        health,
        metrics: loopback(15090),
        listener: VIRTUAL_IP,
        upstream: loopback(ECHO),
        protocol,
        place: Place::Captured,
        telemetry: Telemetry::Default,
    };
    let text = spec.render();
    // The report's copy, and the one the proxy reads.
    let config_path = env.out_dir.join(format!("{role}.yaml"));
    std::fs::write(&config_path, &text).with_context(|| format!("writing {}", config_path.display()))?;
    let read_path = files.path().join(format!("{role}.yaml"));
    std::fs::write(&read_path, &text).with_context(|| format!("writing {}", read_path.display()))?;
    readable(&read_path, 0o644)?;

    let (program, args) = netns.exec(&env.self_exe, &env.echo.args(loopback(ECHO)));
    let mut echo = Proc::spawn(&format!("{role}-echo"), &program, &args, &env.out_dir, env.echo.cpu)?;
    netns.run(|| {
        echo.wait_ready(
            &format!("GET http://{}/ in {}", loopback(ECHO), netns.name()),
            READY_TIMEOUT,
            || matches!(http_get_status(loopback(ECHO), crate::topology::HOST, "/"), Ok(200)),
        )
    })??;

    apply_rules(env, &netns, &role)?;

    let (proxy_program, proxy_args) = proxy.command(&read_path);
    let mut setpriv_args = vec![
        format!("--reuid={PROXY_UID}"),
        format!("--regid={PROXY_UID}"),
        "--clear-groups".into(),
        // The uid change clears the parent-death signal `Proc::spawn` set; set it again.
        "--pdeathsig".into(),
        "TERM".into(),
        proxy_program.display().to_string(),
    ];
    setpriv_args.extend(proxy_args);
    let (program, args) = netns.exec(&tools.setpriv, &setpriv_args);
    let mut proc = Proc::spawn(&role, &program, &args, &env.out_dir, env.proxy_cpu)?;
    netns.run(|| {
        proc.wait_ready(&format!("GET http://{health}/healthz/ready"), READY_TIMEOUT, || {
            matches!(http_get_status(health, "localhost", "/healthz/ready"), Ok(200))
        })?;
        proc.wait_ready(
            &probe_description(VIRTUAL_IP, protocol),
            READY_TIMEOUT,
            probe_through(VIRTUAL_IP, protocol),
        )
    })??;
    // The probe succeeded, and nothing but the proxy answers the virtual IP; the counter says
    // it was served as the echo's service, not passed through.
    let metrics = netns.run(|| http_get(spec.metrics, "localhost", "/stats/prometheus"))??;
    let captured_connections = prometheus_counter(&metrics.1, CAPTURED_COUNTER).unwrap_or(0);
    if captured_connections == 0 {
        bail!(
            "a request to {VIRTUAL_IP} succeeded but the proxy's {CAPTURED_COUNTER} is 0: it was not served as \
             the echo's service by capture, and this row's figures would not be capture's; the proxy's stderr:\n{}",
            proc.stderr_tail()
        );
    }
    let io_driver = parse_io_driver(&proc.stderr_text());
    Ok(Topology {
        kind: Kind::Captured,
        protocol,
        entry: VIRTUAL_IP,
        proxies: vec![proc],
        io_driver,
        config_paths: vec![config_path],
        version: Some(format!("{} ({})", env!("CARGO_PKG_VERSION"), env.proxy.describe())),
        hop: None,
        admins: vec![ProxyAdmin {
            role: role.clone(),
            side: "proxy",
            addr: spec.admin,
        }],
        full_telemetry: None,
        pod: Some(Pod {
            echo,
            captured_connections,
            netns,
            _files: files,
        }),
    })
}

/// `ringmesh iptables` inside the namespace (IPv4: the proxy listens on IPv4 only), its output
/// kept in `<role>-iptables.log`.
fn apply_rules(env: &Env, netns: &NetNs, role: &str) -> anyhow::Result<()> {
    let (cli, mut args) = ringmesh_cli(&env.self_exe);
    args.extend(["iptables", "--proxy-uid", &PROXY_UID.to_string(), "--ipv6", "off"].map(str::to_owned));
    let (program, args) = netns.exec(&cli, &args);
    let out = std::process::Command::new(&program)
        .args(&args)
        .output()
        .with_context(|| format!("running {} {}", program.display(), args.join(" ")))?;
    let log = env.out_dir.join(format!("{role}-iptables.log"));
    let text = format!(
        "$ {} {}\n{}{}",
        program.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&log, &text).with_context(|| format!("writing {}", log.display()))?;
    if !out.status.success() {
        bail!(
            "`ringmesh iptables` failed in {} ({}): {}",
            netns.name(),
            out.status,
            text.trim()
        );
    }
    Ok(())
}

/// Sets `path`'s mode, so that UID 1337 can read (and enter, and run) it.
fn readable(path: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:o} on {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(missing: &'static [&'static str]) -> impl Fn(&str) -> Option<PathBuf> {
        move |name| (!missing.contains(&name)).then(|| PathBuf::from("/usr/sbin").join(name))
    }

    #[test]
    fn the_row_is_skipped_with_the_reason_unless_root_with_its_tools() {
        let everything = found(&[]);
        let e = Tools::find(1000, &everything).unwrap_err();
        assert!(e.starts_with("not run as root (effective UID 1000): "), "{e}");
        assert!(e.contains("run the suite as root"), "{e}");
        assert_eq!(
            Tools::find(0, &everything).unwrap(),
            Tools {
                ip: "/usr/sbin/ip".into(),
                setpriv: "/usr/sbin/setpriv".into()
            }
        );
        // Any iptables-restore `ringmesh iptables` can drive will do.
        let nft_only = found(&["iptables-restore", "iptables-legacy-restore"]);
        assert!(Tools::find(0, &nft_only).is_ok());
        let e = Tools::find(0, &found(&["setpriv"])).unwrap_err();
        assert_eq!(e, "`setpriv` (util-linux) not found (install to measure it)");
        let e = Tools::find(
            0,
            &found(&[
                "ip",
                "iptables-restore",
                "iptables-nft-restore",
                "iptables-legacy-restore",
            ]),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "`ip` (iproute2), `iptables-restore` (iptables) not found (install to measure it)"
        );
    }

    #[test]
    fn the_rules_come_from_the_ringmesh_binary_when_built_else_from_this_one() {
        let tmp = tempfile::tempdir().unwrap();
        let bench = tmp.path().join("ringmesh-bench");
        assert_eq!(ringmesh_cli(&bench), (bench.clone(), vec!["__ringmesh".to_owned()]));
        std::fs::write(tmp.path().join("ringmesh"), "").unwrap();
        assert_eq!(ringmesh_cli(&bench), (tmp.path().join("ringmesh"), Vec::new()));
    }

    #[test]
    fn the_captured_config_serves_the_virtual_ip_by_capture_and_compiles() {
        let spec = RingmeshSpec {
            workers: 1,
            io: None,
            admin: loopback(15000),
            health: loopback(15020),
            metrics: loopback(15090),
            listener: VIRTUAL_IP,
            upstream: loopback(ECHO),
            protocol: Protocol::Http1,
            place: Place::Captured,
            telemetry: Telemetry::Default,
        };
        let text = spec.render();
        assert!(
            text.contains("  metricsAddress: 127.0.0.1:15090\n  capture: {ipv6: false}\n---\n"),
            "{text}"
        );
        assert!(!text.contains("listeners"), "{text}");
        assert!(
            text.contains(
                "  hosts: [echo.bench]\n  addresses: [10.96.0.1]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("endpoints: [{address: 127.0.0.1, ports: {http: 8080}}]"),
            "{text}"
        );
        for protocol in Protocol::ALL {
            let text = RingmeshSpec { protocol, ..spec }.render();
            let (resources, _) = ringmesh_api::load::load_str("captured.yaml", &text)
                .unwrap_or_else(|e| panic!("config does not load: {e:?}\n{text}"));
            let snapshot = ringmesh_api::compile::compile(&ringmesh_api::compile::CompileInput {
                resources,
                extra_endpoints: Vec::new(),
                version: 1,
            })
            .unwrap_or_else(|e| panic!("config does not compile: {e:?}\n{text}"))
            .snapshot;
            let listeners: Vec<String> = snapshot.listeners.iter().map(|l| l.address.to_string()).collect();
            assert_eq!(listeners, ["0.0.0.0:15001", "0.0.0.0:15006"], "{text}");
        }
    }
}
