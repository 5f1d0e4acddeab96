//! The `ringmesh-proxy` command line: every setting as a flag and as a `RINGMESH_*` variable.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ringmesh_api::snapshot::IoMode;

use crate::config::Overrides;
use crate::control::{self, ProxyOptions};

/// ringmesh sidecar proxy.
#[derive(Debug, Parser)]
#[command(
    name = "ringmesh-proxy",
    version,
    about = "ringmesh sidecar proxy: thread-per-core HTTP/1.1 and TCP proxy"
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
    /// How often to check the config files for changes, e.g. `1s`; `0s` disables (SIGHUP still reloads).
    #[arg(long, env = "RINGMESH_WATCH_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub watch_interval: Duration,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `ringmesh_proxy=debug`.
    #[arg(long, env = "RINGMESH_LOG", default_value = "info")]
    pub log: String,
    /// Check the config and exit: 0 when it compiles, 1 with every error otherwise.
    #[arg(long)]
    pub check: bool,
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
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
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
    };
    let handle = control::start(opts)?;
    handle.wait();
    Ok(())
}
