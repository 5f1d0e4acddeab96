//! `ringmesh-control`: the control plane server: `Discovery` for proxies and `Admin` for the
//! `ringmesh` CLI on one gRPC port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use std::sync::Arc;

use ringmesh_control::admin::AdminService;
use ringmesh_control::etcd::{run_registry, EtcdClient, EtcdStore};
use ringmesh_control::server::{ControlPlane, ServerConfig};
use ringmesh_control::store::DirStore;

/// ringmesh control plane: serves the resources in a directory to connected proxies, and the
/// management API (`ringmesh apply/get/delete/proxy-status/proxy-config`) on the same port.
/// Applied resources are written to DIR/applied/<kind>.<namespace>.<name>.yaml, or with --etcd
/// to etcd, which several replicas then share (resources and the workload registry).
#[derive(Debug, Parser)]
#[command(name = "ringmesh-control", version)]
struct Args {
    /// Directory of YAML resources, watched for changes; also where applied resources are kept
    /// (in its `applied/` subdirectory), so it must be writable for `ringmesh apply`. Required
    /// unless --etcd is given.
    #[arg(
        long,
        env = "RINGMESH_CONFIG_DIR",
        required_unless_present_any = ["etcd", "kubernetes"],
        conflicts_with_all = ["etcd", "kubernetes"]
    )]
    config_dir: Option<PathBuf>,
    /// Read Istio's VirtualService, DestinationRule, ServiceEntry and WorkloadEntry objects
    /// (networking.istio.io/v1) from the Kubernetes API server: in-cluster service account, or
    /// KUBECONFIG / ~/.kube/config. `ringmesh apply/delete` are refused (use kubectl); a set of
    /// objects that does not compile is logged and the last good set keeps being served.
    #[arg(long, env = "RINGMESH_KUBERNETES", conflicts_with = "etcd")]
    kubernetes: bool,
    /// etcd members (comma-separated http://host:port; etcd 3.4+, over its gRPC API on one
    /// connection): resources live under PREFIX/resources/<kind>/<namespace>/<name>, and each
    /// replica publishes its proxies' workloads under PREFIX/workloads/<node id> with a lease of
    /// --grace, so every replica serves the same config and endpoints. Calls time out after 3s
    /// and move on to the next member; when etcd is lost the last known sets keep being served
    /// and retries back off up to 5s.
    #[arg(long, env = "RINGMESH_ETCD", value_name = "URLS")]
    etcd: Option<String>,
    /// Key prefix in etcd.
    #[arg(long, env = "RINGMESH_ETCD_PREFIX", default_value = ringmesh_control::etcd::DEFAULT_PREFIX, value_name = "PREFIX")]
    etcd_prefix: String,
    /// gRPC address for proxies and the CLI (plaintext, Istio's 15010).
    #[arg(long, env = "RINGMESH_LISTEN", default_value = "127.0.0.1:15010")]
    listen: SocketAddr,
    /// How long a disconnected proxy's endpoints stay (with --etcd also the registry lease's
    /// TTL: how long the workloads of a replica that died stay; whole seconds, at least 1s).
    #[arg(long, env = "RINGMESH_GRACE", default_value = "30s", value_parser = ringmesh_api::duration::parse_duration)]
    grace: Duration,
    /// How often to check the directory for changes.
    #[arg(long, env = "RINGMESH_WATCH_INTERVAL", default_value = "1s", value_parser = ringmesh_api::duration::parse_duration)]
    watch_interval: Duration,
    /// Log filter.
    #[arg(long, env = "RINGMESH_LOG", default_value = "info")]
    log: String,
}

// One runtime thread per core: a push is one send per proxy stream, and with 1,000 proxies the
// sends of one push take ~100 ms of CPU; spread over the cores, the last ACK comes sooner
// (measured with `ringmesh-control-bench`: p99 311 ms on one thread, 184 ms on two).
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .try_init();
    let config = ServerConfig {
        grace: args.grace,
        ..Default::default()
    };
    let (cp, admin) = match (&args.etcd, &args.config_dir) {
        _ if args.kubernetes => {
            let client = ringmesh_control::kubernetes::client().await.context("--kubernetes")?;
            let cp = ControlPlane::new(Default::default(), config);
            let (synced, listed) = tokio::sync::oneshot::channel();
            tokio::spawn(ringmesh_control::kubernetes::run(client, cp.clone(), synced));
            tracing::info!("listing resources from the Kubernetes API server before serving");
            listed
                .await
                .context("Kubernetes watch ended before the first listing")?;
            (cp.clone(), AdminService::with_kubernetes(cp))
        }
        (Some(urls), _) => {
            let client = EtcdClient::new(urls)?;
            let (store, set) = EtcdStore::open(client.clone(), &args.etcd_prefix)
                .await
                .with_context(|| format!("--etcd {}", client.endpoints()))?;
            let store = Arc::new(store);
            let cp = ControlPlane::new(set, config);
            tokio::spawn(store.clone().follow(cp.clone()));
            // One id per process: a restarted replica is a new one, and its predecessor's
            // records expire with its lease.
            let replica = format!("{}-{}", args.listen, std::process::id());
            tokio::spawn(run_registry(
                client.clone(),
                store.prefix().to_owned(),
                replica.clone(),
                args.grace,
                cp.clone(),
            ));
            tracing::info!(etcd = %client.endpoints(), prefix = %store.prefix(), replica = %replica, "resources and registry in etcd");
            (cp.clone(), AdminService::with_etcd(store, cp))
        }
        (None, Some(dir)) => {
            let store = DirStore::open(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
            let cp = ControlPlane::new(store.current.clone(), config);
            (cp.clone(), AdminService::new(store, cp))
        }
        (None, None) => anyhow::bail!("--config-dir, --etcd or --kubernetes is required"),
    };
    let watcher = cp.clone();
    let files = admin.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(args.watch_interval);
        let (mut generation, mut trimmed) = (watcher.generation(), true);
        loop {
            tick.tick().await;
            watcher.expire();
            match files.refresh() {
                Ok(true) => tracing::info!("resources changed; pushing"),
                Ok(false) => {}
                Err(e) => tracing::error!("new resources refused; serving the last good set:\n{e}"),
            }
            // Once a burst of pushes is over (no change for a whole tick), hand the memory it
            // freed back to the system.
            let now = watcher.generation();
            if now != generation {
                (generation, trimmed) = (now, false);
            } else if !trimmed {
                trimmed = true;
                release_free_memory();
            }
        }
    });
    // Bound here rather than by `serve`, whose error would not name the address.
    let incoming = tonic::transport::server::TcpIncoming::bind(args.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?
        .with_nodelay(Some(true));
    tracing::info!(listen = %args.listen, "ringmesh-control serving");
    tonic::transport::Server::builder()
        .add_service(cp.service())
        .add_service(admin.service())
        .serve_with_incoming(incoming)
        .await
        .context("gRPC server")?;
    Ok(())
}

/// Returns the heap's free pages to the system. A push to every proxy allocates one snapshot
/// per generation and view and frees them when the proxies move on; glibc keeps freed memory
/// in its arenas (one per thread that allocated), so after a burst of connects RSS would stay
/// at the burst's peak, not at what the proxies in sync need.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
