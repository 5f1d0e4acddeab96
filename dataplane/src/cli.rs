//! The `ringmesh-proxy` command line: every setting as a flag and as a `RINGMESH_*` variable.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ringmesh_api::snapshot::IoMode;

use crate::admin::app_probe::AppProbers;
use crate::config::Overrides;
use crate::control::{self, ProxyOptions};
use crate::runtime::bind::BindMode;

/// ringmesh sidecar proxy.
#[derive(Debug, Parser)]
#[command(
    name = "ringmesh-proxy",
    version,
    about = "ringmesh sidecar proxy: thread-per-core HTTP/1.1, HTTP/2, gRPC and TCP proxy with mutual TLS"
)]
pub struct Cli {
    /// Config file or directory (YAML: ProxyConfig, ServiceEntry, VirtualService, DestinationRule).
    /// Repeat for several.
    #[arg(long, short = 'c', env = "RINGMESH_CONFIG", value_delimiter = ',', required = true)]
    pub config: Vec<PathBuf>,
    /// Worker threads (default: cores this process may use, from affinity and cgroup quota).
    #[arg(long, env = "RINGMESH_WORKERS")]
    pub workers: Option<usize>,
    /// Cores to pin workers to, e.g. `0,1`.
    #[arg(long, env = "RINGMESH_CPUS", value_delimiter = ',')]
    pub cpus: Option<Vec<usize>>,
    /// I/O driver: auto (io_uring, else epoll), io_uring, epoll.
    #[arg(long, env = "RINGMESH_IO", value_parser = parse_io)]
    pub io: Option<IoMode>,
    /// Admin server address (default 127.0.0.1:15000).
    #[arg(long, env = "RINGMESH_ADMIN_ADDRESS")]
    pub admin_address: Option<SocketAddr>,
    /// Health server address (default 0.0.0.0:15020).
    #[arg(long, env = "RINGMESH_HEALTH_ADDRESS")]
    pub health_address: Option<SocketAddr>,
    /// Metrics server address (default 0.0.0.0:15090).
    #[arg(long, env = "RINGMESH_METRICS_ADDRESS")]
    pub metrics_address: Option<SocketAddr>,
    /// Largest request head in bytes (`limits.maxRequestHeadBytes`, default 65536); larger gets 431.
    #[arg(long, env = "RINGMESH_MAX_REQUEST_HEAD_BYTES", value_parser = clap::value_parser!(u32).range(1024..))]
    pub max_request_head_bytes: Option<u32>,
    /// Most header fields in a head (`limits.maxHeaders`, default 100, at most 256); more gets 431.
    #[arg(long, env = "RINGMESH_MAX_HEADERS", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub max_headers: Option<u16>,
    /// Time a client has to finish a request head (`limits.requestHeaderTimeout`, default 10s).
    #[arg(long, env = "RINGMESH_REQUEST_HEADER_TIMEOUT", value_parser = ringmesh_api::duration::parse_duration)]
    pub request_header_timeout: Option<Duration>,
    /// Close a downstream connection idle this long (`limits.idleTimeout`, default 300s).
    #[arg(long, env = "RINGMESH_IDLE_TIMEOUT", value_parser = ringmesh_api::duration::parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Longest silence between two reads of a request body before it is answered 408
    /// (`limits.requestBodyTimeout`, default 60s, positive).
    #[arg(long, env = "RINGMESH_REQUEST_BODY_TIMEOUT", value_parser = parse_positive_duration)]
    pub request_body_timeout: Option<Duration>,
    /// Downstream connections open at once over all workers; more are closed at accept and
    /// counted (`limits.maxConnections`, default half of `RLIMIT_NOFILE`'s soft limit).
    #[arg(long, env = "RINGMESH_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
    /// Time in-flight requests get to finish on shutdown (`limits.drainTimeout`, default 5s).
    #[arg(long, env = "RINGMESH_DRAIN_TIMEOUT", value_parser = ringmesh_api::duration::parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// Time an `AUTO` listener waits for a client's first bytes before it proxies the connection
    /// as TCP (`limits.protocolDetectionTimeout`, default 100ms, at least 1ms).
    #[arg(long, env = "RINGMESH_PROTOCOL_DETECTION_TIMEOUT", value_parser = parse_detection_timeout)]
    pub protocol_detection_timeout: Option<Duration>,
    /// How often to check the config files for changes, e.g. `1s`; `0s` disables (SIGHUP still reloads).
    #[arg(long, env = "RINGMESH_WATCH_INTERVAL", default_value = "1s", value_parser = ringmesh_api::duration::parse_duration)]
    pub watch_interval: Duration,
    /// Log filter: a level, or `target=level` pairs separated by commas, e.g. `info` or
    /// `info,ringmesh_proxy::tls=debug`. Span and field filters (`[span{f=v}]`) are not taken:
    /// the proxy parses the filter without a regex engine, whose code would stay resident.
    #[arg(long, env = "RINGMESH_LOG", default_value = "info", value_parser = parse_log_filter)]
    pub log: tracing_subscriber::filter::Targets,
    /// Share listener addresses another process already serves (SO_REUSEPORT), e.g. to start a
    /// successor while the old proxy drains. Without it an address in use is refused by name.
    #[arg(long, env = "RINGMESH_TAKEOVER")]
    pub takeover: bool,
    /// Node id announced to the control plane (default `<workload name>-<pid>`); the injector
    /// sets `<pod name>.<namespace>`, unique where every replica shares one file.
    #[arg(long, env = "RINGMESH_NODE_ID")]
    pub node_id: Option<String>,
    /// The workload's addresses, replacing `spec.workload.addresses` (comma-separated; the
    /// injector passes the pod's `status.podIPs`).
    #[arg(long, env = "RINGMESH_WORKLOAD_ADDRESS", value_delimiter = ',')]
    pub workload_address: Option<Vec<std::net::IpAddr>>,
    /// The app's probes the health server runs for kubelet at `:15020/app-health/...`: Istio's
    /// `ISTIO_KUBE_APP_PROBERS` JSON, which the injector writes.
    #[arg(long, env = "RINGMESH_KUBE_APP_PROBERS", value_parser = parse_app_probers)]
    pub kube_app_probers: Option<AppProbers>,
    /// Check the config and exit: 0 when it compiles, 1 with every error otherwise.
    #[arg(long)]
    pub check: bool,
}

fn parse_detection_timeout(s: &str) -> Result<Duration, String> {
    let d = ringmesh_api::duration::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_millis(1) {
        return Err(format!("must be at least 1ms, got {s:?}"));
    }
    Ok(d)
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = ringmesh_api::duration::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err(format!("must be positive, got {s:?}"));
    }
    Ok(d)
}

fn parse_app_probers(s: &str) -> Result<AppProbers, String> {
    AppProbers::parse(s).map_err(|e| e.to_string())
}

fn parse_io(s: &str) -> Result<IoMode, String> {
    match s {
        "auto" => Ok(IoMode::Auto),
        "io_uring" | "iouring" | "uring" => Ok(IoMode::IoUring),
        "epoll" | "legacy" => Ok(IoMode::Epoll),
        other => Err(format!("unknown io driver {other:?}: expected auto, io_uring or epoll")),
    }
}

impl Cli {
    /// The overrides these flags set.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            workers: self.workers,
            cpus: self.cpus.clone(),
            io: self.io,
            admin_address: self.admin_address,
            health_address: self.health_address,
            metrics_address: self.metrics_address,
            max_request_head_bytes: self.max_request_head_bytes.map(|v| v as usize),
            max_headers: self.max_headers.map(usize::from),
            request_header_timeout: self.request_header_timeout,
            idle_timeout: self.idle_timeout,
            drain_timeout: self.drain_timeout,
            request_body_timeout: self.request_body_timeout,
            max_connections: self.max_connections.map(|v| v as usize),
            protocol_detection_timeout: self.protocol_detection_timeout,
            node_id: self.node_id.clone().filter(|s| !s.is_empty()),
            workload_addresses: self.workload_address.clone(),
        }
    }
}

/// Runs the proxy with these arguments (`args[0]` is the program name) until it is told to
/// stop (SIGTERM, SIGINT, or `POST /drain_listeners`).
pub fn run_cli<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(args).map_err(|e| {
        // --help and --version are not errors.
        if !e.use_stderr() {
            let _ = e.print();
            std::process::exit(0);
        }
        anyhow::anyhow!("{e}")
    })?;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let _ = tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_max_level(tracing::Level::TRACE)
        .with_writer(std::io::stderr)
        .finish()
        .with(cli.log.clone())
        .try_init();
    if cli.check {
        let loaded = crate::config::load(&cli.config, 1, &cli.overrides())?;
        for w in &loaded.warnings {
            eprintln!("warning: {w}");
        }
        println!(
            "config ok: {} listener(s), {} cluster(s), {} virtual host(s)",
            loaded.snapshot.listeners.len(),
            loaded.snapshot.clusters.len(),
            loaded.snapshot.routes.virtual_hosts.len()
        );
        return Ok(());
    }
    let opts = ProxyOptions {
        config: cli.config.clone(),
        overrides: cli.overrides(),
        watch_interval: (!cli.watch_interval.is_zero()).then_some(cli.watch_interval),
        handle_signals: true,
        bind_mode: if cli.takeover {
            BindMode::Takeover
        } else {
            BindMode::Exclusive
        },
        app_probers: cli.kube_app_probers.clone().unwrap_or_default(),
    };
    let handle = control::start(opts)?;
    handle.wait();
    Ok(())
}

/// `--log`: `tracing_subscriber`'s `Targets` syntax; a typo is refused with the parser's reason
/// rather than silently logging at another level.
fn parse_log_filter(s: &str) -> Result<tracing_subscriber::filter::Targets, String> {
    s.parse()
        .map_err(|e| format!("{e} (expected a level such as `info`, or `target=level` pairs separated by commas)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let cli = Cli::try_parse_from([
            "ringmesh-proxy",
            "--config",
            "a.yaml,b.yaml",
            "--workers",
            "3",
            "--cpus",
            "0,1",
            "--io",
            "epoll",
            "--max-headers",
            "50",
            "--idle-timeout",
            "30s",
        ])
        .unwrap();
        assert_eq!(cli.config.len(), 2);
        let o = cli.overrides();
        assert_eq!(o.workers, Some(3));
        assert_eq!(o.cpus, Some(vec![0, 1]));
        assert_eq!(o.io, Some(IoMode::Epoll));
        assert_eq!(o.max_headers, Some(50));
        assert_eq!(o.idle_timeout, Some(Duration::from_secs(30)));
    }

    #[test]
    fn bad_flags_are_refused_by_name() {
        let e = Cli::try_parse_from(["ringmesh-proxy", "--config", "x", "--io", "kqueue"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("kqueue") && e.contains("--io"), "{e}");
        let e = Cli::try_parse_from(["ringmesh-proxy", "--config", "x", "--max-headers", "1000"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--max-headers"), "{e}");
    }

    #[test]
    fn durations_on_the_command_line_use_the_yaml_grammar() {
        let cli = Cli::try_parse_from([
            "ringmesh-proxy",
            "--config",
            "x",
            "--drain-timeout",
            "1.5s",
            "--idle-timeout",
            "1m30s",
            "--protocol-detection-timeout",
            "250ms",
        ])
        .unwrap();
        let o = cli.overrides();
        assert_eq!(o.protocol_detection_timeout, Some(Duration::from_millis(250)));
        let e = Cli::try_parse_from(["ringmesh-proxy", "--config", "x", "--protocol-detection-timeout", "0s"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be at least 1ms"), "{e}");
        assert_eq!(o.drain_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(o.idle_timeout, Some(Duration::from_secs(90)));
        let e = Cli::try_parse_from(["ringmesh-proxy", "--config", "x", "--drain-timeout", "5"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no unit"), "{e}");
    }

    #[test]
    fn slow_client_limits_on_the_command_line() {
        let cli = Cli::try_parse_from([
            "ringmesh-proxy",
            "--config",
            "x",
            "--request-body-timeout",
            "2s",
            "--max-connections",
            "4000",
        ])
        .unwrap();
        let o = cli.overrides();
        assert_eq!(o.request_body_timeout, Some(Duration::from_secs(2)));
        assert_eq!(o.max_connections, Some(4000));
        for (flag, value, want) in [
            ("--request-body-timeout", "0s", "must be positive"),
            ("--max-connections", "0", "--max-connections"),
        ] {
            let e = Cli::try_parse_from(["ringmesh-proxy", "--config", "x", flag, value])
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{flag} {value}: {e}");
        }
    }

    #[test]
    fn pod_facts_come_from_flags_or_the_environment() {
        let cli = Cli::try_parse_from([
            "ringmesh-proxy",
            "--config",
            "x",
            "--node-id",
            "reviews-7d9f.shop",
            "--workload-address",
            "10.1.2.3,fd00::3",
            "--kube-app-probers",
            r#"{"/app-health/web/readyz": {"tcpSocket": {"port": 8080}}}"#,
        ])
        .unwrap();
        let o = cli.overrides();
        assert_eq!(o.node_id.as_deref(), Some("reviews-7d9f.shop"));
        let want: Vec<std::net::IpAddr> = vec!["10.1.2.3".parse().unwrap(), "fd00::3".parse().unwrap()];
        assert_eq!(o.workload_addresses, Some(want.clone()));
        assert_eq!(cli.kube_app_probers.as_ref().map(AppProbers::len), Some(1));
        let yaml = "apiVersion: ringmesh.io/v1alpha1\nkind: ProxyConfig\nspec:\n  controlPlane: {address: 'cp:15010'}\n  workload: {name: reviews, addresses: [10.9.9.9]}\n";
        let (resources, _) = ringmesh_api::load_str("p.yaml", yaml).unwrap();
        let input = ringmesh_api::CompileInput {
            resources,
            ..Default::default()
        };
        let mut snapshot = ringmesh_api::compile(&input).unwrap().snapshot;
        o.apply(&mut snapshot);
        assert_eq!(snapshot.proxy.control_plane.unwrap().node_id, "reviews-7d9f.shop");
        assert_eq!(snapshot.proxy.workload.addresses, want);
        let e = Cli::try_parse_from(["ringmesh-proxy", "--config", "x", "--kube-app-probers", "{"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("RINGMESH_KUBE_APP_PROBERS"), "{e}");
    }

    #[test]
    fn the_log_filter_is_checked() {
        use tracing::Level;
        let cli = Cli::try_parse_from([
            "ringmesh-proxy",
            "--config",
            "x",
            "--log",
            "warn,ringmesh_proxy::tls=debug",
        ])
        .unwrap();
        assert!(cli.log.would_enable("ringmesh_proxy::tls::inbound", &Level::DEBUG));
        assert!(!cli.log.would_enable("ringmesh_proxy::worker", &Level::INFO));
        assert!(cli.log.would_enable("h2", &Level::WARN));
        let e = Cli::try_parse_from(["ringmesh-proxy", "--config", "x", "--log", "ringmesh_proxy=loud"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--log") && e.contains("loud"), "{e}");
    }
}
