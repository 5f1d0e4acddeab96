//! `ringmesh-control`: the control plane server: `Discovery` for proxies and `Admin` for the
//! `ringmesh` CLI on one gRPC port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ringmesh_control::admin::AdminService;
use ringmesh_control::server::{ControlPlane, ServerConfig};
use ringmesh_control::store::DirStore;

/// ringmesh control plane: serves the resources in a directory to connected proxies, and the
/// management API (`ringmesh apply/get/delete/proxy-status/proxy-config`) on the same port.
/// Applied resources are written to DIR/applied/<kind>.<namespace>.<name>.yaml.
#[derive(Debug, Parser)]
#[command(name = "ringmesh-control", version)]
struct Args {
    /// Directory of YAML resources, watched for changes; also where applied resources are kept
    /// (in its `applied/` subdirectory), so it must be writable for `ringmesh apply`.
    #[arg(long, env = "RINGMESH_CONFIG_DIR")]
    config_dir: PathBuf,
    /// gRPC address for proxies and the CLI (plaintext, Istio's 15010).
    #[arg(long, env = "RINGMESH_LISTEN", default_value = "127.0.0.1:15010")]
    listen: SocketAddr,
    /// How long a disconnected proxy's endpoints stay.
    #[arg(long, env = "RINGMESH_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// How often to check the directory for changes.
    #[arg(long, env = "RINGMESH_WATCH_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    watch_interval: Duration,
    /// Log filter.
    #[arg(long, env = "RINGMESH_LOG", default_value = "info")]
    log: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .try_init();
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
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(args.watch_interval);
        loop {
            tick.tick().await;
            watcher.expire();
            match files.refresh() {
                Ok(true) => tracing::info!("resources changed; pushing"),
                Ok(false) => {}
                Err(e) => tracing::error!("new resources refused; serving the last good set:\n{e}"),
            }
        }
    });
    tracing::info!(listen = %args.listen, "ringmesh-control serving");
    tonic::transport::Server::builder()
        .add_service(cp.service())
        .add_service(admin.service())
        .serve(args.listen)
        .await
        .context("gRPC server")?;
    Ok(())
}
