//! `ringmesh-control`: the control plane server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ringmesh_control::server::{ControlPlane, ServerConfig};
use ringmesh_control::store::DirStore;

/// ringmesh control plane: serves the resources in a directory to connected proxies.
#[derive(Debug, Parser)]
#[command(name = "ringmesh-control", version)]
struct Args {
    /// Directory of YAML resources, watched for changes.
    #[arg(long, env = "RINGMESH_CONFIG_DIR")]
    config_dir: PathBuf,
    /// gRPC address (plaintext, Istio's 15010).
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
    let mut store = DirStore::open(&args.config_dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cp = ControlPlane::new(
        store.current.clone(),
        ServerConfig {
            grace: args.grace,
            ..Default::default()
        },
    );
    let watcher = cp.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(args.watch_interval);
        loop {
            tick.tick().await;
            watcher.expire();
            match store.refresh() {
                Ok(true) => {
                    tracing::info!("resources changed; pushing");
                    watcher.set_resources(store.current.clone());
                }
                Ok(false) => {}
                Err(e) => tracing::error!("new resources refused; serving the last good set:\n{e}"),
            }
        }
    });
    tracing::info!(listen = %args.listen, "ringmesh-control serving");
    tonic::transport::Server::builder()
        .add_service(cp.service())
        .serve(args.listen)
        .await
        .context("gRPC server")?;
    Ok(())
}
