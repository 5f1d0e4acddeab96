//! `ringmesh-control-bench __control ARGS`: the control plane from the `ringmesh-control`
//! library, in its own process, for when the `ringmesh-control` binary is not built
//! (`cargo test -p ringmesh-bench` on a clean clone builds only this package's binaries).
//!
//! It takes the binary's flags and runs the same loop as `ringmesh-control`'s `main`: the
//! discovery and management services on one port, the watched directory polled every
//! `--watch-interval` (expiring disconnected proxies on the same tick), on a current-thread
//! runtime. Measurements against it describe the library; the report says which of the two ran.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use ringmesh_control::admin::AdminService;
use ringmesh_control::server::{ControlPlane, ServerConfig};
use ringmesh_control::store::DirStore;

/// The flags of `ringmesh-control` that the benchmark passes.
#[derive(Debug, Parser)]
#[command(name = "ringmesh-control-bench __control")]
struct Args {
    /// Directory of YAML resources, watched for changes.
    #[arg(long)]
    config_dir: PathBuf,
    /// gRPC address.
    #[arg(long, default_value = "127.0.0.1:15010")]
    listen: SocketAddr,
    /// How long a disconnected proxy's endpoints stay.
    #[arg(long, default_value = "30s", value_parser = ringmesh_loadgen::parse_duration)]
    grace: Duration,
    /// How often to check the directory for changes.
    #[arg(long, default_value = "1s", value_parser = ringmesh_loadgen::parse_duration)]
    watch_interval: Duration,
    /// Log filter.
    #[arg(long, default_value = "info")]
    log: String,
}

/// Runs the control plane until killed.
pub fn run(args: &[std::ffi::OsString]) -> anyhow::Result<()> {
    let args = Args::try_parse_from(args)?;
    let _ = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    rt.block_on(async move {
        let store = DirStore::open(&args.config_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
        let cp = ControlPlane::new(
            store.current.clone(),
            ServerConfig {
                grace: args.grace,
                ..Default::default()
            },
        );
        let admin = AdminService::new(store, cp.clone());
        let watcher = cp.clone();
        let files = admin.clone();
        let interval = args.watch_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                watcher.expire();
                if let Err(e) = files.refresh() {
                    tracing::error!("new resources refused; serving the last good set:\n{e}");
                }
            }
        });
        tonic::transport::Server::builder()
            .add_service(cp.service())
            .add_service(admin.service())
            .serve(args.listen)
            .await
            .context("gRPC server")
    })
}
