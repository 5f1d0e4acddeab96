//! What the injector puts into every pod unless the pod's annotations say otherwise: images,
//! the control plane's address, the trust domain, the proxy's user, resources.

/// The control plane's TLS port inside the cluster (the base install's Service).
pub const DEFAULT_DISCOVERY_ADDRESS: &str = "ringmesh-control.ringmesh-system.svc:15012";
/// The proxy's image (`deploy/docker/ringmesh-proxy.Dockerfile`).
pub const DEFAULT_PROXY_IMAGE: &str = "ringmesh/ringmesh-proxy:latest";
/// The capture init container's image: the `ringmesh` CLI with iptables
/// (`deploy/docker/ringmesh-init.Dockerfile`).
pub const DEFAULT_INIT_IMAGE: &str = "ringmesh/ringmesh-init:latest";
/// The ConfigMap, in the pod's namespace, holding the mesh root as `root-cert.pem`: what the
/// control plane's TLS certificate must chain to (README, "Kubernetes: injection").
pub const DEFAULT_CA_ROOT_CONFIG_MAP: &str = "ringmesh-ca-root";
/// The proxy's user and group (Istio's): `ringmesh iptables -u` never captures its traffic.
pub const DEFAULT_PROXY_UID: i64 = 1337;

/// Requests and limits of the sidecar, as Kubernetes quantities.
///
/// The defaults come from the benchmark (`bench/RESULTS.md`): an idle proxy's RSS is 8.7 MiB,
/// each idle connection adds 14.5 KiB, and an HTTP/1.1 request costs 14–17.5 µs of CPU.
/// * memory request 32Mi: idle RSS plus ~1,500 open connections' state;
/// * memory limit 256Mi: ~16,000 connections, or bursts of large bodies in flight, before the
///   kernel ends the proxy rather than the node running short;
/// * CPU request 10m: an idle proxy uses next to none, and 10m is ~600 requests a second of
///   HTTP/1.1 at 16 µs each; a busier workload should say `sidecar.istio.io/proxyCPU`;
/// * CPU limit 2: the proxy starts one worker per core its cgroup allows (`cpu.max`), so
///   without a limit a sidecar on a 64-core node would start 64 workers; two is Istio's
///   sidecar concurrency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyResources {
    /// `requests.cpu` (`sidecar.istio.io/proxyCPU`).
    pub cpu_request: Option<String>,
    /// `requests.memory` (`sidecar.istio.io/proxyMemory`).
    pub memory_request: Option<String>,
    /// `limits.cpu` (`sidecar.istio.io/proxyCPULimit`).
    pub cpu_limit: Option<String>,
    /// `limits.memory` (`sidecar.istio.io/proxyMemoryLimit`).
    pub memory_limit: Option<String>,
}

impl Default for ProxyResources {
    fn default() -> Self {
        ProxyResources {
            cpu_request: Some("10m".into()),
            memory_request: Some("32Mi".into()),
            cpu_limit: Some("2".into()),
            memory_limit: Some("256Mi".into()),
        }
    }
}

/// The injector's settings (`ringmesh inject` flags, `ringmesh-control --injector-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectSettings {
    /// The sidecar's image.
    pub proxy_image: String,
    /// The init container's image.
    pub init_image: String,
    /// `host:port` of the control plane's TLS port, as proxies reach it.
    pub discovery_address: String,
    /// The mesh's trust domain (`ringmesh-control --trust-domain`).
    pub trust_domain: String,
    /// The proxy's UID and GID.
    pub proxy_uid: i64,
    /// The ConfigMap holding the mesh root (`root-cert.pem`).
    pub ca_root_config_map: String,
    /// The audience of the projected service-account token the proxy sends as its credential;
    /// `None`: the API server's own (what `ringmesh-control`'s TokenReview checks today).
    pub token_audience: Option<String>,
    /// The sidecar's resources unless the pod's annotations say otherwise.
    pub resources: ProxyResources,
    /// The sidecar's worker threads (`RINGMESH_WORKERS`) unless the pod's
    /// `proxy.istio.io/config` says `concurrency`; `None`: one per core its CPU limit allows.
    pub proxy_workers: Option<u32>,
}

impl Default for InjectSettings {
    fn default() -> Self {
        InjectSettings {
            proxy_image: DEFAULT_PROXY_IMAGE.into(),
            init_image: DEFAULT_INIT_IMAGE.into(),
            discovery_address: DEFAULT_DISCOVERY_ADDRESS.into(),
            trust_domain: crate::ca::DEFAULT_TRUST_DOMAIN.into(),
            proxy_uid: DEFAULT_PROXY_UID,
            ca_root_config_map: DEFAULT_CA_ROOT_CONFIG_MAP.into(),
            token_audience: None,
            resources: ProxyResources::default(),
            proxy_workers: None,
        }
    }
}
