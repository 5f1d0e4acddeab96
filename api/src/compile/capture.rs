//! Capture (`ProxyConfig.spec.capture`): the two listeners that take what `ringmesh iptables`
//! redirected, and the tables their connections are served by — services by virtual IP and
//! port on the way out, the app's ports on the way in. What a port carries comes from the
//! service port (its `protocol`, else Istio's port-name conventions), as Istio decides it;
//! a port that says nothing is detected from its first bytes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use super::clusters::DEFAULT_CONNECT_TIMEOUT;
use super::route_actions::default_retry_policy;
use super::virtual_service::applies_to_mesh;
use super::{Compiler, Site};
use crate::locate::FieldPath;
use crate::port_hint::PortHint;
use crate::registry::{Service, ServicePort};
use crate::resources::{ProxyConfig, VirtualService};
use crate::snapshot::{
    AppPort, Capture, CapturedEndpoint, CapturedProtocol, CapturedService, Cluster, ClusterId, Endpoint, ForwardAction,
    HeaderOps, LbPolicy, Listener, ListenerKind, ProxySettings, Route, RouteAction, UpstreamProtocol, UpstreamTls,
    VirtualHost, VirtualHostId, WeightedClusters,
};

/// `ringmesh iptables`' (and Istio's) outbound capture port.
const DEFAULT_OUTBOUND_CAPTURE_PORT: u16 = 15001;
/// `ringmesh iptables`' (and Istio's) inbound capture port.
const DEFAULT_INBOUND_CAPTURE_PORT: u16 = 15006;
/// Idle timeout of captured TCP connections (Istio's TCP proxy default).
const CAPTURED_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

impl Compiler {
    /// The capture listeners `outbound` and `inbound` on every address (`0.0.0.0`, and `[::]`
    /// unless `ipv6: false`; optional unless `ipv6: true`), or none without `spec.capture`.
    pub(super) fn capture_listeners(&mut self, pc: Option<&ProxyConfig>) -> Vec<Listener> {
        let Some(pc) = pc else { return Vec::new() };
        let Some(spec) = &pc.spec.capture else {
            return Vec::new();
        };
        let site: &Site<'_> = pc;
        let p = FieldPath::root().key("spec").key("capture");
        let outbound = match spec.outbound_port {
            Some(n) => self.port(site, &p.key("outboundPort"), n),
            None => Some(DEFAULT_OUTBOUND_CAPTURE_PORT),
        };
        let inbound = match spec.inbound_port {
            Some(n) => self.port(site, &p.key("inboundPort"), n),
            None => Some(DEFAULT_INBOUND_CAPTURE_PORT),
        };
        let (Some(outbound), Some(inbound)) = (outbound, inbound) else {
            return Vec::new();
        };
        if outbound == inbound {
            self.error(
                site,
                &p.key("inboundPort"),
                format!("inboundPort {inbound} is also the outboundPort; they must differ"),
            );
            return Vec::new();
        }
        for (i, l) in pc.spec.listeners.iter().enumerate() {
            let port = l.address.parse::<SocketAddr>().ok().map(|a| a.port());
            if port.is_some_and(|port| port == outbound || port == inbound) {
                self.error(
                    site,
                    &FieldPath::root().key("spec").key("listeners").index(i).key("address"),
                    format!(
                        "port {} is a capture port (spec.capture listens on {outbound} and {inbound} \
                         on every address)",
                        port.unwrap_or_default()
                    ),
                );
            }
        }
        let mut out = Vec::new();
        let families: &[(IpAddr, &str, bool)] = &[
            (IpAddr::V4(Ipv4Addr::UNSPECIFIED), "", false),
            (IpAddr::V6(Ipv6Addr::UNSPECIFIED), "-ipv6", true),
        ];
        for (ip, suffix, v6) in families {
            if *v6 && spec.ipv6 == Some(false) {
                continue;
            }
            for (name, port, inbound) in [("outbound", outbound, false), ("inbound", inbound, true)] {
                out.push(Listener {
                    name: format!("{name}{suffix}"),
                    address: SocketAddr::new(*ip, port),
                    kind: ListenerKind::Captured,
                    inbound,
                    optional: *v6 && spec.ipv6.is_none(),
                    local_rate_limit: None,
                });
            }
        }
        out
    }

    /// The tables captured connections are served by. Adds to `virtual_hosts` the ones the
    /// request's `Host` never selects (a service's route to a port other than its default, an
    /// app port's route), and the app ports' clusters.
    pub(super) fn capture_tables(
        &mut self,
        pc: Option<&ProxyConfig>,
        proxy: &ProxySettings,
        virtual_hosts: &mut Vec<VirtualHost>,
        virtual_services: &[&VirtualService],
    ) -> Capture {
        let Some(pc) = pc.filter(|pc| pc.spec.capture.is_some()) else {
            return Capture::default();
        };
        let unknown = pc
            .spec
            .outbound_traffic_policy
            .as_ref()
            .map(|p| p.mode)
            .unwrap_or_default();
        let mut capture = Capture {
            unknown,
            ..Capture::default()
        };
        let services: Vec<Service> = self
            .registry
            .services()
            .filter(|s| !s.addresses.is_empty())
            .cloned()
            .collect();
        for service in &services {
            let claimed = virtual_hosts
                .iter()
                .position(|vh| vh.name != service.host && vh.domains.iter().any(|d| d == &service.host))
                .map(|i| VirtualHostId(i as u32));
            let default_vhost = virtual_hosts
                .iter()
                .position(|vh| vh.name == service.host)
                .map(|i| VirtualHostId(i as u32));
            let default_port = service.default_port().map(|p| p.number);
            for port in &service.ports {
                let Some(cluster) = self.cluster_for(&service.host, port.number, None) else {
                    continue;
                };
                let vhost = match (claimed, default_vhost) {
                    (Some(vs), _) => vs,
                    (None, Some(d)) if default_port == Some(port.number) => d,
                    _ => push_vhost(
                        virtual_hosts,
                        format!("{}:{}", service.host, port.number),
                        forward_route(format!("{}:{}/default", service.host, port.number), cluster, false),
                    ),
                };
                let clusters = self
                    .tcp_routes_for(service, port.number, virtual_services)
                    .unwrap_or_else(|| WeightedClusters::single(cluster));
                let captured = CapturedService {
                    host: service.host.clone(),
                    protocol: protocol_of(port),
                    vhost,
                    default_vhost,
                    clusters,
                    idle_timeout: CAPTURED_TCP_IDLE_TIMEOUT,
                };
                for ip in &service.addresses {
                    let key = SocketAddr::new(*ip, port.number);
                    if let Some(other) = capture.services.get(&key) {
                        let (first, second) = (other.host.clone(), service.host.clone());
                        self.diags.push(crate::diagnostic::Diagnostic::warning(format!(
                            "{key} is an address of both {first} and {second} ({}); captured connections to \
                             it go to {first}",
                            service.source
                        )));
                        continue;
                    }
                    capture.services.insert(key, captured.clone());
                }
            }
        }
        // Every service's endpoints (the clusters without a subset), by their own address.
        let all: Vec<(String, u16)> = self
            .registry
            .services()
            .flat_map(|s| s.ports.iter().map(move |p| (s.host.clone(), p.number)))
            .collect();
        for (host, port) in all {
            let Some(id) = self.cluster_for(&host, port, None) else {
                continue;
            };
            for (i, e) in self.clusters[id.0 as usize].endpoints.iter().enumerate() {
                capture.endpoints.entry(e.address).or_insert(CapturedEndpoint {
                    cluster: id,
                    endpoint: i,
                });
            }
        }
        for (port, (protocol, h2)) in self.app_ports(proxy) {
            let cluster = self.app_cluster(&proxy.workload.name, port, h2);
            let vhost = push_vhost(
                virtual_hosts,
                format!("inbound|{port}||"),
                forward_route(format!("inbound|{port}||"), cluster, true),
            );
            capture.app_ports.insert(
                port,
                AppPort {
                    protocol,
                    vhost,
                    cluster,
                },
            );
        }
        capture
    }

    /// The app's ports, what they carry and whether that is HTTP/2: the target ports of the
    /// services the workload serves (`workload.services`) and of the services whose endpoints
    /// are the workload's addresses (their port's protocol or name says), then
    /// `workload.ports` (the port's name says).
    fn app_ports(&self, proxy: &ProxySettings) -> BTreeMap<u16, (CapturedProtocol, bool)> {
        let w = &proxy.workload;
        let mut out = BTreeMap::new();
        for host in &w.services {
            let Some(service) = self.registry.resolve(host, &w.namespace) else {
                continue;
            };
            for port in &service.ports {
                let target = w
                    .ports
                    .get(&port.name)
                    .copied()
                    .or(port.target_port)
                    .unwrap_or(port.number);
                out.entry(target)
                    .or_insert_with(|| (protocol_of(port), port.is_http2()));
            }
        }
        // Services whose endpoints are this workload's own addresses (a Kubernetes Service
        // selecting the pod): their ports say what the app's target ports carry, as Istio
        // builds a sidecar's inbound side from the services that select its pod.
        for service in self.registry.services() {
            for e in service.endpoints.iter().filter(|e| w.addresses.contains(&e.address)) {
                for port in &service.ports {
                    let target = service.endpoint_port(e, port);
                    out.entry(target)
                        .or_insert_with(|| (protocol_of(port), port.is_http2()));
                }
            }
        }
        for (name, port) in &w.ports {
            out.entry(*port).or_insert_with(|| match PortHint::of_name(name) {
                Some(h) if h.is_http() => (CapturedProtocol::Http, h == PortHint::Http2),
                Some(_) => (CapturedProtocol::Tcp, false),
                None => (CapturedProtocol::Detect, false),
            });
        }
        out
    }

    /// The app on the loopback address, port `port`: plaintext, HTTP/2 when the port says so
    /// and HTTP/1.1 otherwise (the calling proxy speaks HTTP/2 whatever its client spoke, so
    /// the client's protocol says nothing of the app's), no retries (a retry is the calling
    /// side's decision, as in Istio's inbound).
    fn app_cluster(&mut self, workload: &str, port: u16, h2: bool) -> ClusterId {
        let id = ClusterId(self.clusters.len() as u32);
        let endpoints = vec![Endpoint {
            address: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            weight: 1,
            labels: BTreeMap::new(),
            meshed: false,
        }];
        self.clusters.push(Cluster {
            name: format!("inbound|{port}||"),
            service: workload.to_owned(),
            port,
            subset: None,
            endpoints,
            lb: LbPolicy::RoundRobin,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            pool: crate::snapshot::PoolSettings::default(),
            protocol: if h2 {
                UpstreamProtocol::Http2
            } else {
                UpstreamProtocol::Http1
            },
            upgrade_meshed: false,
            host_not_found: None,
            tls: UpstreamTls::Disable,
            outlier: None,
            health_check: None,
            locality: None,
        });
        id
    }

    /// A VirtualService tcp route for `service` on `port`: one whose match names the port
    /// wins over one without a port condition.
    fn tcp_routes_for(
        &mut self,
        service: &Service,
        port: u16,
        virtual_services: &[&VirtualService],
    ) -> Option<WeightedClusters> {
        let mut by_port = None;
        let mut any_port = None;
        for vs in virtual_services.iter().filter(|vs| applies_to_mesh(vs)) {
            let claims = vs.spec.hosts.iter().any(|h| {
                self.registry
                    .resolve(h, vs.metadata.namespace())
                    .is_some_and(|s| s.host == service.host)
            });
            if !claims {
                continue;
            }
            for (i, route) in vs.spec.tcp.iter().enumerate() {
                if by_port.is_none() && route.matches.iter().any(|m| m.port == Some(i64::from(port))) {
                    by_port = Some((*vs, i));
                }
                if any_port.is_none() && route.matches.iter().all(|m| m.port.is_none()) {
                    any_port = Some((*vs, i));
                }
            }
        }
        let (vs, i) = by_port.or(any_port)?;
        self.tcp_route_clusters(vs, i)
    }
}

/// What a service port carries: HTTP by its protocol or name, TCP when it declares another
/// protocol (or a `tcp-` name), else unknown (detected).
fn protocol_of(port: &ServicePort) -> CapturedProtocol {
    if port.is_http() {
        return CapturedProtocol::Http;
    }
    if !port.protocol.is_empty() {
        return match PortHint::of_protocol(&port.protocol) {
            Some(h) if h.is_http() => CapturedProtocol::Http,
            _ => CapturedProtocol::Tcp,
        };
    }
    match PortHint::of_name(&port.name) {
        Some(h) if h.is_http() => CapturedProtocol::Http,
        Some(_) => CapturedProtocol::Tcp,
        None => CapturedProtocol::Detect,
    }
}

/// A virtual host without domains (only a captured connection's table points at it).
fn push_vhost(virtual_hosts: &mut Vec<VirtualHost>, name: String, route: Route) -> VirtualHostId {
    virtual_hosts.push(VirtualHost::new(name, Vec::new(), vec![route]));
    VirtualHostId(virtual_hosts.len() as u32 - 1)
}

fn forward_route(name: String, cluster: ClusterId, inbound: bool) -> Route {
    let mut retry = default_retry_policy();
    if inbound {
        retry.attempts = 0;
    }
    Route {
        name,
        matches: Vec::new(),
        action: RouteAction::Forward(ForwardAction {
            clusters: WeightedClusters::single(cluster),
            path_rewrite: None,
            host_rewrite: None,
            timeout: None,
            retry,
            mirrors: Vec::new(),
        }),
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
        fault: None,
        local_rate_limit: None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use crate::compile::{compile, CompileInput, Compiled};
    use crate::diagnostic::Diagnostic;
    use crate::load::load_str;
    use crate::resources::OutboundTrafficMode;
    use crate::snapshot::{CapturedProtocol, ListenerKind, RouteAction, UpstreamProtocol};

    fn compile_yaml(text: &str) -> Result<Compiled, Vec<Diagnostic>> {
        let (resources, _) = load_str("mesh.yaml", text)?;
        compile(&CompileInput {
            resources,
            extra_endpoints: Vec::new(),
            version: 1,
        })
    }

    const SERVICES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  addresses: [10.96.0.7, "fd00::7"]
  ports:
  - {number: 9080, name: http}
  - {number: 9090, name: grpc-admin, protocol: GRPC}
  - {number: 5432, name: db, protocol: TCP}
  - {number: 7000, name: other}
  endpoints:
  - {address: 10.1.0.1, labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: shop}
spec:
  hosts: [ratings.shop.svc.cluster.local]
  addresses: [10.96.0.8]
  ports: [{number: 80, name: http, targetPort: 8080}]
  endpoints: [{address: 10.1.0.2}]
"#;

    fn proxy(extra: &str) -> String {
        format!(
            "apiVersion: ringmesh.io/v1alpha1\nkind: ProxyConfig\nmetadata: {{name: p}}\nspec:\n  capture: {{}}\n  \
             workload:\n    name: ratings\n    namespace: shop\n    addresses: [10.1.0.2]\n    services: [ratings.shop.svc.cluster.local]\n    \
             ports: {{metrics: 9100, http-admin: 8081}}\n{extra}---\n{SERVICES}"
        )
    }

    #[test]
    fn capture_listens_on_both_ports_and_families_instead_of_the_default_listener() {
        let c = compile_yaml(&proxy("")).unwrap();
        let ls: Vec<(String, SocketAddr, bool, bool)> = c
            .snapshot
            .listeners
            .iter()
            .map(|l| {
                assert!(matches!(l.kind, ListenerKind::Captured));
                (l.name.clone(), l.address, l.inbound, l.optional)
            })
            .collect();
        assert_eq!(
            ls,
            [
                ("outbound".into(), "0.0.0.0:15001".parse().unwrap(), false, false),
                ("inbound".into(), "0.0.0.0:15006".parse().unwrap(), true, false),
                ("outbound-ipv6".into(), "[::]:15001".parse().unwrap(), false, true),
                ("inbound-ipv6".into(), "[::]:15006".parse().unwrap(), true, true),
            ]
        );
        let c = compile_yaml(&proxy("  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n").replace(
            "capture: {}",
            "capture: {outboundPort: 16001, inboundPort: 16006, ipv6: false}",
        ))
        .unwrap();
        let addrs: Vec<String> = c.snapshot.listeners.iter().map(|l| l.address.to_string()).collect();
        assert_eq!(addrs, ["0.0.0.0:16001", "0.0.0.0:16006"]);
        assert_eq!(c.snapshot.capture.unknown, OutboundTrafficMode::RegistryOnly);
    }

    #[test]
    fn services_are_found_by_virtual_ip_and_port_with_the_port_protocol() {
        let c = compile_yaml(&proxy("")).unwrap();
        let s = &c.snapshot;
        assert_eq!(s.capture.unknown, OutboundTrafficMode::AllowAny);
        let at = |a: &str| s.capture.services.get(&a.parse::<SocketAddr>().unwrap());
        let http = at("10.96.0.7:9080").unwrap();
        assert_eq!(http.host, "reviews.shop.svc.cluster.local");
        assert_eq!(http.protocol, CapturedProtocol::Http);
        assert_eq!(at("[fd00::7]:9080").unwrap().protocol, CapturedProtocol::Http);
        assert_eq!(at("10.96.0.7:9090").unwrap().protocol, CapturedProtocol::Http);
        assert_eq!(at("10.96.0.7:5432").unwrap().protocol, CapturedProtocol::Tcp);
        assert_eq!(at("10.96.0.7:7000").unwrap().protocol, CapturedProtocol::Detect);
        assert!(at("10.96.0.7:80").is_none(), "not a port of the service");
        assert!(at("10.1.0.1:9080").is_none(), "an endpoint is not a virtual IP");
        // Each port's fallback route goes to that very port.
        for (addr, port) in [("10.96.0.7:9080", 9080), ("10.96.0.7:9090", 9090)] {
            let svc = at(addr).unwrap();
            let vh = s.routes.virtual_host(svc.vhost).unwrap();
            let RouteAction::Forward(f) = &vh.routes[0].action else {
                panic!("{vh:?}")
            };
            assert_eq!(s.cluster(f.clusters.entries[0].0).port, port, "{addr}");
        }
        // TCP goes to the port's cluster.
        let tcp = at("10.96.0.7:5432").unwrap();
        assert_eq!(
            s.cluster(tcp.clusters.entries[0].0).name,
            "outbound|5432||reviews.shop.svc.cluster.local"
        );
    }

    #[test]
    fn a_virtual_service_claiming_the_service_routes_its_captured_requests() {
        let vs = "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: shop}\n\
                  spec:\n  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews, port: {number: 9080}}}]\n  \
                  tcp:\n  - match: [{port: 5432}]\n    route: [{destination: {host: ratings.shop.svc.cluster.local}}]\n";
        let c = compile_yaml(&format!("{}{vs}", proxy(""))).unwrap();
        let s = &c.snapshot;
        let svc = &s.capture.services[&"10.96.0.7:9080".parse::<SocketAddr>().unwrap()];
        assert_eq!(s.routes.virtual_host(svc.vhost).unwrap().name, "shop/reviews");
        let tcp = &s.capture.services[&"10.96.0.7:5432".parse::<SocketAddr>().unwrap()];
        assert_eq!(
            s.cluster(tcp.clusters.entries[0].0).service,
            "ratings.shop.svc.cluster.local"
        );
    }

    #[test]
    fn the_apps_ports_come_from_its_services_and_its_named_ports() {
        let c = compile_yaml(&proxy("")).unwrap();
        let s = &c.snapshot;
        let ports: Vec<(u16, CapturedProtocol)> = s.capture.app_ports.iter().map(|(p, a)| (*p, a.protocol)).collect();
        assert_eq!(
            ports,
            [
                (8080, CapturedProtocol::Http),
                (8081, CapturedProtocol::Http),
                (9100, CapturedProtocol::Detect)
            ]
        );
        let app = &s.capture.app_ports[&8080];
        let cluster = s.cluster(app.cluster);
        assert_eq!(cluster.name, "inbound|8080||");
        assert_eq!(cluster.endpoints[0].address, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(cluster.protocol, UpstreamProtocol::Http1);
        assert!(!cluster.mtls_to(0), "the app is reached in plaintext");
        let vh = s.routes.virtual_host(app.vhost).unwrap();
        let RouteAction::Forward(f) = &vh.routes[0].action else {
            panic!("{vh:?}")
        };
        assert_eq!(f.clusters.entries[0].0, app.cluster);
        assert_eq!(f.retry.attempts, 0);
        // Never found by a `Host`.
        assert!(s.routes.find_host("inbound|8080||").is_none());
    }

    #[test]
    fn a_service_whose_endpoint_is_the_workload_names_an_app_port() {
        // reviews' endpoint 10.1.0.1 is this workload: its ports become app ports, the gRPC
        // one reached over HTTP/2.
        let c = compile_yaml(
            &proxy("")
                .replace("addresses: [10.1.0.2]", "addresses: [10.1.0.1]")
                .replace("    services: [ratings.shop.svc.cluster.local]\n", ""),
        )
        .unwrap();
        let s = &c.snapshot;
        let ports: Vec<(u16, CapturedProtocol)> = s.capture.app_ports.iter().map(|(p, a)| (*p, a.protocol)).collect();
        assert_eq!(
            ports,
            [
                (5432, CapturedProtocol::Tcp),
                (7000, CapturedProtocol::Detect),
                (8081, CapturedProtocol::Http),
                (9080, CapturedProtocol::Http),
                (9090, CapturedProtocol::Http),
                (9100, CapturedProtocol::Detect),
            ]
        );
        assert_eq!(
            s.cluster(s.capture.app_ports[&9090].cluster).protocol,
            UpstreamProtocol::Http2
        );
        assert_eq!(
            s.cluster(s.capture.app_ports[&9080].cluster).protocol,
            UpstreamProtocol::Http1
        );
    }

    #[test]
    fn endpoints_are_found_by_their_own_address() {
        let c = compile_yaml(&proxy("")).unwrap();
        let s = &c.snapshot;
        let e = s.capture.endpoints[&"10.1.0.1:9080".parse::<SocketAddr>().unwrap()];
        let cluster = s.cluster(e.cluster);
        assert_eq!(cluster.name, "outbound|9080||reviews.shop.svc.cluster.local");
        assert_eq!(cluster.endpoints[e.endpoint].address, "10.1.0.1:9080".parse().unwrap());
        // The target port, not the service port.
        assert!(s
            .capture
            .endpoints
            .contains_key(&"10.1.0.2:8080".parse::<SocketAddr>().unwrap()));
        assert!(!s
            .capture
            .endpoints
            .contains_key(&"10.1.0.2:80".parse::<SocketAddr>().unwrap()));
    }

    #[test]
    fn mistakes_are_named() {
        let e = compile_yaml(&proxy("").replace("capture: {}", "capture: {outboundPort: 15006}")).unwrap_err();
        assert!(
            e.iter()
                .any(|d| d.message.contains("inboundPort 15006 is also the outboundPort")),
            "{e:?}"
        );
        let e = compile_yaml(&proxy("  listeners: [{name: web, address: \"127.0.0.1:15001\"}]\n")).unwrap_err();
        assert!(
            e.iter().any(|d| d.message.contains("port 15001 is a capture port")),
            "{e:?}"
        );
        let e = compile_yaml(&proxy("").replace("10.96.0.7, ", "10.96.0.300, ")).unwrap_err();
        assert!(
            e.iter()
                .any(|d| d.message.contains("\"10.96.0.300\" is not an IP address")),
            "{e:?}"
        );
        let e = compile_yaml(&proxy("").replace("capture: {}", "capture: {ipv6: maybe}")).unwrap_err();
        assert!(!e.is_empty());
        let e = compile_yaml(&proxy("  outboundTrafficPolicy: {mode: ALLOW_ALL}\n")).unwrap_err();
        assert!(!e.is_empty());
    }
}
