//! `ringmesh-control`: the control plane server: `Discovery` for proxies and `Admin` for the
//! `ringmesh` CLI, on a plaintext gRPC port (15010, development) and a TLS one (15012) whose
//! certificate the mesh CA issues to the control plane itself.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use std::sync::Arc;

use ringmesh_control::admin::AdminService;
use ringmesh_control::ca::{self, Authority, CaSettings};
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
    /// gRPC over TLS for proxies and the CLI (Istio's 15012), with a certificate from the mesh
    /// CA (names: ringmesh-control, ringmesh-control.<ca-namespace>.svc, localhost, this
    /// address's IP, --tls-san); `off` serves plaintext only.
    #[arg(long, env = "RINGMESH_LISTEN_TLS", default_value = "127.0.0.1:15012", value_parser = parse_listen_tls)]
    listen_tls: ListenTls,
    /// The control plane's metrics, `GET /metrics` in Prometheus' format (Istio's monitoring
    /// port 15014): proxies connected, pushes and push time, ACKs, NACKs, certificates; `off`
    /// serves none. A port that cannot be bound is logged and skipped: discovery goes on.
    #[arg(long, env = "RINGMESH_METRICS_LISTEN", default_value = "127.0.0.1:15014", value_parser = parse_listen_tls)]
    metrics_listen: ListenTls,
    /// More names for the TLS port's certificate (DNS names or IP addresses; repeat or
    /// comma-separate).
    #[arg(long, env = "RINGMESH_TLS_SAN", value_delimiter = ',')]
    tls_san: Vec<String>,
    /// Trust domain of workload identities: spiffe://<trust-domain>/ns/<ns>/sa/<sa>.
    #[arg(long, env = "RINGMESH_TRUST_DOMAIN", default_value = ca::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Lifetime of a workload certificate when the proxy asks for none.
    #[arg(long, env = "RINGMESH_CERT_LIFETIME", default_value = "24h", value_parser = ringmesh_api::duration::parse_duration)]
    cert_lifetime: Duration,
    /// The longest lifetime a proxy may ask for.
    #[arg(long, env = "RINGMESH_MAX_CERT_LIFETIME", default_value = "24h", value_parser = ringmesh_api::duration::parse_duration)]
    max_cert_lifetime: Duration,
    /// A CA certificate of your own (PEM, a root or an intermediate) to sign with instead of
    /// the generated root; with --ca-key. Nothing is generated or stored then.
    #[arg(long, env = "RINGMESH_CA_CERT", requires = "ca_key", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// The private key of --ca-cert (PEM).
    #[arg(long, env = "RINGMESH_CA_KEY", requires = "ca_cert", value_name = "FILE")]
    ca_key: Option<PathBuf>,
    /// The roots above an intermediate --ca-cert (PEM): the trust bundle proxies get.
    #[arg(long, env = "RINGMESH_CA_BUNDLE", requires = "ca_cert", value_name = "FILE")]
    ca_bundle: Option<PathBuf>,
    /// More roots for the trust bundle (PEM, one or more), e.g. the old root during a root
    /// rotation (README, "Certificates and root rotation").
    #[arg(long, env = "RINGMESH_CA_EXTRA_ROOTS", value_name = "FILE")]
    ca_extra_roots: Option<PathBuf>,
    /// Namespace of the control plane: of the `ringmesh-ca` Secret with --kubernetes, and of
    /// the TLS port's certificate names.
    #[arg(long, env = "RINGMESH_CA_NAMESPACE", default_value = "istio-system")]
    ca_namespace: String,
    /// Refuse discovery streams whose proxy sent no valid credential (by default such a proxy
    /// gets config, but no certificate).
    #[arg(long, env = "RINGMESH_REQUIRE_CREDENTIAL")]
    require_credential: bool,
    /// Serve the sidecar injector (a mutating admission webhook, `POST /inject`) over HTTPS on
    /// this address (Istio's is 0.0.0.0:15017); with --injector-cert and --injector-key. With
    /// --kubernetes the namespaces' labels decide (ringmesh-injection, istio-injection);
    /// without it only pods labelled sidecar.istio.io/inject=true get a sidecar.
    #[arg(long, env = "RINGMESH_INJECTOR_LISTEN", requires_all = ["injector_cert", "injector_key"])]
    injector_listen: Option<SocketAddr>,
    /// The webhook's certificate chain (PEM), reloaded when the file changes.
    #[arg(long, env = "RINGMESH_INJECTOR_CERT", value_name = "FILE")]
    injector_cert: Option<PathBuf>,
    /// The webhook's private key (PEM).
    #[arg(long, env = "RINGMESH_INJECTOR_KEY", value_name = "FILE")]
    injector_key: Option<PathBuf>,
    /// The injected sidecar's image.
    #[arg(long, env = "RINGMESH_PROXY_IMAGE", default_value = ringmesh_control::inject::settings::DEFAULT_PROXY_IMAGE)]
    proxy_image: String,
    /// The injected capture init container's image.
    #[arg(long, env = "RINGMESH_INIT_IMAGE", default_value = ringmesh_control::inject::settings::DEFAULT_INIT_IMAGE)]
    init_image: String,
    /// This control plane's TLS port as injected proxies reach it.
    #[arg(long, env = "RINGMESH_DISCOVERY_ADDRESS", default_value = ringmesh_control::inject::settings::DEFAULT_DISCOVERY_ADDRESS)]
    discovery_address: String,
    /// The ConfigMap, in each injected namespace, holding the mesh root as `root-cert.pem`:
    /// what injected sidecars mount, and, with --kubernetes, what the control plane publishes
    /// in every namespace.
    #[arg(long, env = "RINGMESH_CA_ROOT_CONFIGMAP", default_value = ringmesh_control::inject::settings::DEFAULT_CA_ROOT_CONFIG_MAP)]
    ca_root_configmap: String,
    /// With --kubernetes, do not publish the mesh root: by default the control plane keeps the
    /// ConfigMap --ca-root-configmap (ringmesh-ca-root, key root-cert.pem, labelled
    /// app.kubernetes.io/managed-by=ringmesh-control) in every active namespace, as Istio does
    /// with istio-ca-root-cert; one without that label is left alone. With this flag it must be
    /// created by hand in every namespace with injected pods.
    #[arg(long, env = "RINGMESH_NO_PUBLISH_CA_ROOT")]
    no_publish_ca_root: bool,
    /// Audience of the injected proxies' service-account token (default: the API server's).
    #[arg(long, env = "RINGMESH_TOKEN_AUDIENCE")]
    token_audience: Option<String>,
    /// Injected sidecars' worker threads (default: one per core their CPU limit allows); a
    /// pod's `proxy.istio.io/config` `concurrency` wins.
    #[arg(long, env = "RINGMESH_PROXY_WORKERS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    proxy_workers: Option<u32>,
}

/// `--listen-tls` and `--metrics-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy)]
enum ListenTls {
    On(SocketAddr),
    Off,
}

fn parse_listen_tls(s: &str) -> Result<ListenTls, String> {
    if s == "off" {
        return Ok(ListenTls::Off);
    }
    s.parse()
        .map(ListenTls::On)
        .map_err(|e| format!("{s:?}: {e} (an ip:port, or `off`)"))
}

/// Where the generated root is kept.
enum RootStore<'a> {
    Dir(&'a std::path::Path),
    Etcd(&'a EtcdClient, &'a str),
    Kubernetes(&'a ringmesh_control::kubernetes::Client),
}

/// The mesh CA: the user's (--ca-cert), or the root in the store, made on first start.
async fn authority(
    args: &Args,
    store: RootStore<'_>,
    kube: Option<ringmesh_control::kubernetes::Client>,
) -> anyhow::Result<Arc<Authority>> {
    let td = &args.trust_domain;
    if td.is_empty()
        || !td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
    {
        anyhow::bail!("--trust-domain {td:?}: use lower-case letters, digits, `-`, `.` and `_`");
    }
    if args.cert_lifetime < ca::MIN_CERT_LIFETIME || args.max_cert_lifetime < ca::MIN_CERT_LIFETIME {
        anyhow::bail!("--cert-lifetime and --max-cert-lifetime must be at least 60s");
    }
    let mut settings = CaSettings {
        trust_domain: td.clone(),
        cert_lifetime: args.cert_lifetime,
        max_cert_lifetime: args.max_cert_lifetime,
        ..Default::default()
    };
    if let Some(f) = &args.ca_extra_roots {
        settings.extra_roots = ca::store::read_roots("--ca-extra-roots", f)?;
    }
    if let Some(f) = &args.ca_bundle {
        settings.upstream_roots = ca::store::read_roots("--ca-bundle", f)?;
    }
    let generate = || ca::generate_root(td);
    let material = match (&args.ca_cert, &args.ca_key) {
        (Some(cert), Some(key)) => {
            tracing::info!(cert = %cert.display(), "signing with the CA certificate given");
            ca::store::read_supplied(cert, key)?
        }
        _ => {
            let (m, created, place) = match store {
                RootStore::Dir(dir) => {
                    let (m, created) = ca::store::load_or_create_dir(dir, generate)?;
                    (m, created, ca::store::dir_paths(dir).0.display().to_string())
                }
                RootStore::Etcd(client, prefix) => {
                    let (m, created) = ca::store::load_or_create_etcd(client, prefix, generate).await?;
                    (m, created, format!("etcd {prefix}/{}/", ca::store::CA_DIR))
                }
                RootStore::Kubernetes(client) => {
                    let (m, created) = ca::store::load_or_create_secret(client, &args.ca_namespace, generate).await?;
                    (
                        m,
                        created,
                        format!("secret {}/{}", args.ca_namespace, ca::store::SECRET_NAME),
                    )
                }
            };
            tracing::info!(at = %place, "{} the mesh root CA", if created { "created" } else { "loaded" });
            m
        }
    };
    let ca = ca::Ca::new(&material, settings).context("the mesh CA")?;
    Ok(Arc::new(Authority {
        ca,
        kube,
        require_credential: args.require_credential,
    }))
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
    let mut kube_client = None;
    let (cp, admin) = match (&args.etcd, &args.config_dir) {
        _ if args.kubernetes => {
            let client = ringmesh_control::kubernetes::client().await.context("--kubernetes")?;
            kube_client = Some(client.clone());
            let authority = authority(&args, RootStore::Kubernetes(&client), Some(client.clone())).await?;
            let cp = ControlPlane::new(Default::default(), config).with_authority(authority);
            let (synced, listed) = tokio::sync::oneshot::channel();
            tokio::spawn(ringmesh_control::kubernetes::run(client.clone(), cp.clone(), synced));
            if !args.no_publish_ca_root {
                use ringmesh_control::kubernetes::ca_root::{self, RootConfigMap};
                let authority = cp.authority().context("the mesh CA")?;
                let root = RootConfigMap::of(&args.ca_root_configmap, &authority.ca);
                tokio::spawn(ca_root::run(client, root));
            }
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
            let authority = authority(&args, RootStore::Etcd(&client, store.prefix()), None).await?;
            let cp = ControlPlane::new(set, config).with_authority(authority);
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
            let authority = authority(&args, RootStore::Dir(dir), None).await?;
            let cp = ControlPlane::new(store.current.clone(), config).with_authority(authority);
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
    let tls = match args.listen_tls {
        ListenTls::Off => None,
        ListenTls::On(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (--listen-tls): {e}"))?;
            let bound = listener.local_addr()?;
            let authority = cp.authority().cloned().context("the mesh CA")?;
            let names =
                ca::tls::ServingNames::new(authority.ca.trust_domain(), &args.ca_namespace, bound, &args.tls_san);
            let cert = ca::tls::ServingCert::issue(&authority.ca, &names, args.cert_lifetime)?;
            tokio::spawn(cert.clone().renew(authority, names, args.cert_lifetime));
            let config = ca::tls::server_config(cert)?;
            tracing::info!(listen_tls = %bound, "TLS port serving");
            Some(ca::tls::incoming(listener, config))
        }
    };
    if let Some(addr) = args.injector_listen {
        injector(&args, addr, kube_client).await?;
    }
    if let ListenTls::On(addr) = args.metrics_listen {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                tracing::info!(metrics_listen = %listener.local_addr()?, "metrics serving (/metrics)");
                let cp = cp.clone();
                tokio::spawn(ringmesh_control::metrics::serve(
                    listener,
                    Arc::new(move || cp.metrics_text()),
                ));
            }
            Err(e) => tracing::warn!("metrics not served: cannot listen on {addr} (--metrics-listen): {e}"),
        }
    }
    tracing::info!(listen = %args.listen, "ringmesh-control serving");
    let plain = tonic::transport::Server::builder()
        .add_service(cp.service())
        .add_service(admin.service())
        .serve_with_incoming(incoming);
    match tls {
        None => plain.await.context("gRPC server")?,
        Some(tls) => {
            let tls = tonic::transport::Server::builder()
                .add_service(cp.service())
                .add_service(admin.service())
                .serve_with_incoming(tls);
            tokio::try_join!(async { plain.await.context("gRPC server") }, async {
                tls.await.context("gRPC server (TLS)")
            })?;
        }
    }
    Ok(())
}

/// Starts the sidecar injector's webhook (`inject::webhook`).
async fn injector(
    args: &Args,
    addr: SocketAddr,
    kube: Option<ringmesh_control::kubernetes::Client>,
) -> anyhow::Result<()> {
    use ringmesh_control::inject::webhook::{self, FileCert, Injector, Namespaces};
    let (Some(cert), Some(key)) = (&args.injector_cert, &args.injector_key) else {
        anyhow::bail!("--injector-listen needs --injector-cert and --injector-key");
    };
    let tls = webhook::server_config(FileCert::open(cert, key)?)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (--injector-listen): {e}"))?;
    let injector = Injector {
        settings: ringmesh_control::inject::InjectSettings {
            proxy_image: args.proxy_image.clone(),
            init_image: args.init_image.clone(),
            discovery_address: args.discovery_address.clone(),
            trust_domain: args.trust_domain.clone(),
            ca_root_config_map: args.ca_root_configmap.clone(),
            token_audience: args.token_audience.clone(),
            proxy_workers: args.proxy_workers,
            ..Default::default()
        },
        namespaces: match kube {
            Some(client) => Namespaces::Kubernetes(client),
            None => Namespaces::Fixed(Default::default()),
        },
    };
    tracing::info!(injector = %listener.local_addr()?, "sidecar injector serving POST {}", webhook::PATH);
    tokio::spawn(webhook::serve(listener, Arc::new(tls), Arc::new(injector)));
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
